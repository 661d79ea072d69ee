//! `scripts/deploy` against test hosts that run a real sshd: over pdsh and over clush it starts an agent
//! on every host, the agents form the tree at the root, and `--stop` leaves no agent running.
//!
//! Each test makes its own test hosts, starts `sshd` in each (own host key, a test key in its own
//! `AuthorizedKeysFile`, each under `unshare --uts` with the host's name as host name), writes an
//! ssh_config naming the hosts, and starts `banyan-root` in the machine's own namespace on the bridge
//! address. The hosts share this machine's filesystem, so every agent gets its own state dir through
//! `--state-dir DIR/%h`, and the agent binary is the one in `target/debug`.
//!
//! Needs root (namespaces) and `pdsh`, `clush`, `sshd`, `ssh`: without them the tests print `SKIPPED`,
//! or fail (strict by default; `BANYAN_TEST_LENIENT=1` skips) (Debian packages: pdsh clustershell openssh-server openssh-client).
//!
//! The agents are started through ssh sessions and detach from them, so when their launching shell exits
//! they are orphans. This process makes itself a child subreaper, so that orphans come to it rather than to
//! PID 1 (which does not reap on some machines), and reaps the agents whose PIDs it read from their pid
//! files: stopped agents leave no zombie behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use banyan_tests::support::{binaries, free_port, http_request, tail, workspace_root, Binaries};
use banyan_tests::testnet::Testnet;
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::Value;

/// The bridge's address in the machine's own namespace: every test host routes to it.
const BRIDGE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// How long sshd and the root may take to listen after they are started.
const READY: Duration = Duration::from_secs(20);

/// Four agents joining, on a machine busy with other tests.
const FORM: Duration = Duration::from_secs(30);

/// Stopped agents are noticed by the root within 3 s; room for a loaded machine.
const LOST: Duration = Duration::from_secs(30);

/// A deploy command may not take longer (it has its own timeouts; this catches a hang).
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(60);

const POLL_EVERY: Duration = Duration::from_millis(100);

/// Counts the fixtures of this process, for unique directories.
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// The programs a deploy test runs, besides the deploy tool itself.
type Tools = banyan_tests::sshd::SshTools;

/// Finds sshd, ssh and `tool` (pdsh or clush). `Ok(None)`: missing, and not in CI (the test is skipped);
/// an error when missing (unless `BANYAN_TEST_LENIENT=1`).
fn require_tools(tool: &str) -> Result<Option<Tools>> {
    let package = if tool == "clush" {
        "clustershell"
    } else {
        tool
    };
    banyan_tests::sshd::require(&format!("deploy test over {tool}"), &[(tool, package)])
}

/// Whether `pid` is a live process (a zombie is not: it has exited and waits to be reaped).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// Reaps `pid` if it is (or becomes within `timeout`) an exited child of this process; returns whether
/// it is gone from the process table. Not a child: nothing to do here.
fn reap(pid: u32, timeout: Duration) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    loop {
        match waitpid(Pid::from_raw(raw), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => thread::sleep(POLL_EVERY),
            Ok(WaitStatus::StillAlive) => return false,
            Ok(_) => return true,
            Err(Errno::ECHILD) => return !Path::new(&format!("/proc/{pid}")).exists(),
            Err(_) => return false,
        }
    }
}

/// The command line of `pid`, one string per argument.
fn cmdline(pid: u32) -> Result<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline"))
        .with_context(|| format!("reading the command line of pid {pid}"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect())
}

/// The network namespace of `path` (`/proc/PID/ns/net` or `/run/netns/NAME`) as (device, inode).
fn netns_id(path: &str) -> Result<(u64, u64)> {
    let m = fs::metadata(path).with_context(|| format!("stat {path}"))?;
    Ok((m.dev(), m.ino()))
}

/// `GET path` on the root's API: the JSON body of a 200, an error otherwise.
fn http_get(addr: SocketAddr, path: &str) -> Result<Value> {
    let (status, body) = http_request(addr, "GET", path, None, None, Duration::from_secs(5))?;
    ensure!(
        status == 200,
        "GET {path}: HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).with_context(|| format!("GET {path}: the body is not JSON"))
}

/// Test hosts with sshd, a root, and the files `scripts/deploy` is given. Dropping it stops the root and
/// every sshd by PID, kills and reaps any agent still recorded in a pid file, and removes the hosts and
/// (unless the test failed) the directory.
struct Fixture {
    /// `None` only while dropping: the hosts go after the processes in them have been stopped.
    net: Option<Testnet>,
    names: Vec<String>,
    dir: PathBuf,
    sshd: Vec<u32>,
    root: Option<Child>,
    http: SocketAddr,
    mesh: SocketAddr,
    agent_bin: PathBuf,
    keep: bool,
    /// When the fixture was made and when [`Fixture::mark`] was last called.
    born: Instant,
    last_mark: Instant,
}

impl Fixture {
    /// Makes `hosts` test hosts, starts sshd on the first `with_sshd` of them, and the root.
    fn start(tools: &Tools, hosts: usize, with_sshd: usize) -> Result<Fixture> {
        // Orphaned agents come to this process, which reaps them (see the module documentation).
        nix::sys::prctl::set_child_subreaper(true).context("becoming a child subreaper")?;
        let Binaries {
            root: root_bin,
            agent: agent_bin,
        } = binaries()?;
        // Until `fx` exists, an error drops `net`, which removes the hosts.
        let net = Testnet::up(hosts)?;
        let names = net.hosts().iter().map(|h| h.name.clone()).collect();
        // The bridge exists once a net is up.
        let mesh = SocketAddr::from((BRIDGE, free_port(BRIDGE, true)?));
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST, false)?));
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("banyan-deploy-{}-{n}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut fx = Fixture {
            net: Some(net),
            names,
            dir,
            sshd: Vec::new(),
            root: None,
            http,
            mesh,
            agent_bin,
            keep: false,
            born: Instant::now(),
            last_mark: Instant::now(),
        };
        if let Err(e) = fx
            .start_sshd(tools, with_sshd)
            .and_then(|()| fx.start_root(&root_bin))
        {
            fx.keep = true;
            return Err(e.context(format!("setting up (logs in {})", fx.dir.display())));
        }
        fx.mark("hosts, sshd and root ready");
        Ok(fx)
    }

    /// Prints how long the test has run and how long since the last mark (shown with --nocapture or
    /// when the test fails): figures, not assertions.
    fn mark(&mut self, what: &str) {
        let now = Instant::now();
        println!(
            "deploy test: {what} at {:.1} s (+{:.1} s)",
            (now - self.born).as_secs_f64(),
            (now - self.last_mark).as_secs_f64()
        );
        self.last_mark = now;
    }

    fn net(&mut self) -> &mut Testnet {
        self.net.as_mut().expect("the testnet lives until drop")
    }

    /// sshd in the first `count` hosts and the client's ssh_config (see `banyan_tests::sshd`).
    fn start_sshd(&mut self, tools: &Tools, count: usize) -> Result<()> {
        let dir = self.dir.clone();
        let pids = banyan_tests::sshd::start(self.net(), tools, &dir, count)?;
        self.sshd = pids;
        Ok(())
    }

    fn start_root(&mut self, root_bin: &Path) -> Result<()> {
        let log = self.dir.join("root.log");
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(root_bin)
            .arg("--mesh")
            .arg(self.mesh.to_string())
            .arg("--http")
            .arg(self.http.to_string())
            .arg("--state-dir")
            .arg(self.root_state())
            .args(["--period", "1s"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", root_bin.display()))?;
        self.root = Some(child);
        let deadline = Instant::now() + READY;
        loop {
            if let Some(status) = self.root.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.root = None;
                bail!(
                    "banyan-root exited at start ({status}); its log:\n{}",
                    tail(&log, 20)
                );
            }
            let token =
                fs::metadata(self.root_state().join("join-token")).is_ok_and(|m| m.len() > 0);
            if token && http_get(self.http, "/status").is_ok() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "banyan-root not ready after {READY:?}; its log:\n{}",
                tail(&log, 20)
            );
            thread::sleep(POLL_EVERY);
        }
    }

    fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    fn root_state(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The `--state-dir` given to deploy: one directory per host on the shared filesystem.
    fn state_template(&self) -> PathBuf {
        self.dir.join("agents").join("%h")
    }

    fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.join("agents").join(name)
    }

    /// The node set of hosts `1..=n`: `<prefix>[1-n]`.
    fn nodeset(&mut self, n: usize) -> String {
        format!("{}[1-{n}]", self.net().prefix())
    }

    /// Runs `scripts/deploy --via VIA --ssh-config F --state-dir DIR/%h ARGS... NODESET` and returns its
    /// output, whatever its exit status.
    fn deploy(&self, via: &str, args: &[&str], nodeset: &str) -> Result<Output> {
        let script = workspace_root().join("scripts/deploy");
        let mut child = Command::new(&script)
            .args(["--via", via, "--ssh-config"])
            .arg(self.ssh_config())
            .arg("--state-dir")
            .arg(self.state_template())
            .args(args)
            .arg(nodeset)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", script.display()))?;
        // Read both pipes while waiting, with a budget: a hung deploy fails the test instead of hanging it.
        let mut stdout = child.stdout.take().context("deploy's stdout")?;
        let mut stderr = child.stderr.take().context("deploy's stderr")?;
        let out_reader = thread::spawn(move || {
            let mut s = Vec::new();
            stdout.read_to_end(&mut s).map(|_| s)
        });
        let err_reader = thread::spawn(move || {
            let mut s = Vec::new();
            stderr.read_to_end(&mut s).map(|_| s)
        });
        let deadline = Instant::now() + DEPLOY_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "scripts/deploy {} {nodeset} took more than {DEPLOY_TIMEOUT:?}",
                    args.join(" ")
                );
            }
            thread::sleep(POLL_EVERY);
        };
        let join = |h: thread::JoinHandle<std::io::Result<Vec<u8>>>| -> Result<Vec<u8>> {
            h.join()
                .map_err(|_| anyhow!("reader thread panicked"))?
                .context("reading deploy's output")
        };
        Ok(Output {
            status,
            stdout: join(out_reader)?,
            stderr: join(err_reader)?,
        })
    }

    /// Starts agents on `nodeset` through `via`, with `extra` options.
    fn deploy_start(&self, via: &str, extra: &[&str], nodeset: &str) -> Result<Output> {
        let mesh = self.mesh.to_string();
        let root_state = self.root_state();
        let agent = self.agent_bin.clone();
        let mut args = vec![
            "--root",
            &mesh,
            "--root-state",
            path_str(&root_state)?,
            "--agent",
            path_str(&agent)?,
        ];
        args.extend_from_slice(extra);
        self.deploy(via, &args, nodeset)
    }

    /// The agents the root shows attached, and its `/status`.
    fn attached(&self) -> Result<(BTreeSet<String>, Value)> {
        let topo = http_get(self.http, "/topology")?;
        let root = topo["root"].as_str().unwrap_or_default().to_owned();
        let names = topo["nodes"]
            .as_array()
            .ok_or_else(|| anyhow!("/topology has no nodes: {topo}"))?
            .iter()
            .filter(|n| n["status"] == "up" && n["name"] != root.as_str())
            .filter_map(|n| n["name"].as_str().map(str::to_owned))
            .collect();
        Ok((names, http_get(self.http, "/status")?))
    }

    /// Waits until exactly `names` are attached and `/status` counts them up.
    fn wait_tree(&self, names: &[String]) -> Result<()> {
        let want: BTreeSet<String> = names.iter().cloned().collect();
        let deadline = Instant::now() + FORM;
        loop {
            let last = self.attached();
            if let Ok((up, status)) = &last {
                if *up == want && status["nodes_up"].as_u64() == Some(want.len() as u64) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "after {FORM:?} the root does not show {want:?} attached; last seen: {last:?}"
                );
            }
            thread::sleep(POLL_EVERY);
        }
    }

    /// Waits until the root shows no agent up and `n` lost or stale.
    fn wait_all_gone(&self, n: u64) -> Result<()> {
        let deadline = Instant::now() + LOST;
        loop {
            let last = http_get(self.http, "/status");
            if let Ok(s) = &last {
                let gone =
                    s["nodes_lost"].as_u64().unwrap_or(0) + s["nodes_stale"].as_u64().unwrap_or(0);
                if s["nodes_up"].as_u64() == Some(0) && gone == n {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("after {LOST:?} the root still shows agents up (want 0 up, {n} lost or stale): {last:?}");
            }
            thread::sleep(POLL_EVERY);
        }
    }

    /// Reads the pid file of each of `names` and checks that the PID is a live banyan-agent running in
    /// that host's network namespace, named after it, with the token in a file and not on its command
    /// line. Returns the PIDs by name.
    fn check_agents(&self, names: &[String]) -> Result<BTreeMap<String, u32>> {
        let token = fs::read_to_string(self.root_state().join("join-token"))?
            .trim()
            .to_owned();
        let mut pids = BTreeMap::new();
        for name in names {
            let state = self.state_dir(name);
            let pidfile = state.join("banyan-agent.pid");
            let text = fs::read_to_string(&pidfile)
                .with_context(|| format!("{name}: reading {}", pidfile.display()))?;
            let pid: u32 = text
                .trim()
                .parse()
                .with_context(|| format!("{name}: {} holds {text:?}", pidfile.display()))?;
            ensure!(
                alive(pid),
                "{name}: pid {pid} from {} is not running",
                pidfile.display()
            );
            let args = cmdline(pid)?;
            let has =
                |flag: &str, value: &str| args.windows(2).any(|w| w[0] == flag && w[1] == value);
            ensure!(
                args.first().is_some_and(|a| a.ends_with("banyan-agent"))
                    && has("--name", name)
                    && has("--state-dir", path_str(&state)?),
                "{name}: pid {pid} is not the agent deploy should have started: {args:?}"
            );
            ensure!(
                !args.iter().any(|a| a.contains(&token)),
                "{name}: the join token is on the agent's command line"
            );
            let token_file = state.join("join-token");
            let mode = fs::metadata(&token_file)
                .with_context(|| format!("{name}: stat {}", token_file.display()))?
                .permissions()
                .mode();
            ensure!(
                mode & 0o077 == 0,
                "{name}: {} has mode {:o}, readable by others",
                token_file.display(),
                mode & 0o777
            );
            ensure!(
                netns_id(&format!("/proc/{pid}/ns/net"))?
                    == netns_id(&format!("/run/netns/{name}"))?,
                "{name}: pid {pid} does not run in {name}'s network namespace"
            );
            pids.insert(name.clone(), pid);
        }
        Ok(pids)
    }

    /// Checks that none of `pids` runs any more (reaping them: they are orphans of this process) and
    /// that their pid files are gone.
    fn check_stopped(&self, pids: &BTreeMap<String, u32>) -> Result<()> {
        for (name, &pid) in pids {
            reap(pid, Duration::from_secs(5));
            ensure!(
                !alive(pid),
                "{name}: agent pid {pid} still runs after deploy --stop"
            );
            let pidfile = self.state_dir(name).join("banyan-agent.pid");
            ensure!(
                !pidfile.exists(),
                "{name}: {} is still there after --stop",
                pidfile.display()
            );
        }
        Ok(())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(mut root) = self.root.take() {
            let pgid = Pid::from_raw(root.id() as i32);
            let _ = killpg(pgid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(root.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = root.wait();
        }
        // Agents a failed test left running: by the PIDs in their pid files, only if they are ours.
        let mut leftovers = Vec::new();
        for name in &self.names {
            let state = self.state_dir(name);
            let Ok(text) = fs::read_to_string(state.join("banyan-agent.pid")) else {
                continue;
            };
            let Ok(pid) = text.trim().parse::<u32>() else {
                continue;
            };
            let ours =
                cmdline(pid).is_ok_and(|args| args.iter().any(|a| Path::new(a) == state.as_path()));
            if ours && alive(pid) {
                if let Ok(raw) = i32::try_from(pid) {
                    let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
                }
                leftovers.push(pid);
            }
        }
        for pid in leftovers {
            reap(pid, Duration::from_secs(2));
        }
        if let Some(net) = self.net.as_mut() {
            for pid in self.sshd.drain(..) {
                if let Err(e) = net.terminate(pid) {
                    eprintln!("deploy test: stopping sshd {pid}: {e:#}");
                }
            }
        }
        // Removes the namespaces and kills, by PID, whatever still runs in them.
        drop(self.net.take());
        if self.keep || thread::panicking() {
            eprintln!("deploy test: logs kept in {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
}

/// Deploy's report: host -> the rest of its line ("ok: started (pid ...)", "failed: ...").
fn report(out: &Output) -> BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(h, rest)| (h.to_owned(), rest.to_owned()))
        .collect()
}

fn show(out: &Output) -> String {
    format!(
        "exit {}\nstdout:\n{}stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Checks that every one of `names` reported a line starting with `want`.
fn expect_lines(out: &Output, names: &[String], want: &str) -> Result<()> {
    let lines = report(out);
    for name in names {
        ensure!(
            lines.get(name).is_some_and(|l| l.starts_with(want)),
            "{name} should report {want:?}; deploy said:\n{}",
            show(out)
        );
    }
    Ok(())
}

/// Runs `body` on a fixture; keeps its directory when it fails and names it in the error.
fn with_fixture(
    tools: &Tools,
    hosts: usize,
    with_sshd: usize,
    body: impl FnOnce(&mut Fixture) -> Result<()>,
) -> Result<()> {
    let mut fx = Fixture::start(tools, hosts, with_sshd)?;
    let result = body(&mut fx);
    if result.is_err() {
        fx.keep = true;
    }
    result.with_context(|| format!("deploy test files and logs in {}", fx.dir.display()))
}

#[test]
fn deploy_over_pdsh_starts_a_tree_reports_a_dead_host_and_stop_leaves_no_agent() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let Some(tools) = require_tools("pdsh")? else {
        return Ok(());
    };
    // Five hosts, sshd on four: the fifth refuses connections and must be reported, not hide the others.
    with_fixture(&tools, 5, 4, |fx| {
        let names: Vec<String> = fx.names[..4].to_vec();
        let dead = fx.names[4].clone();
        let all = fx.nodeset(5);
        let live = fx.nodeset(4);

        let out = fx.deploy_start("pdsh", &[], &all)?;
        fx.mark("deploy over pdsh returned");
        ensure!(
            out.status.code() == Some(1),
            "deploy with an unreachable host should exit 1:\n{}",
            show(&out)
        );
        expect_lines(&out, &names, "ok: started")?;
        let lines = report(&out);
        ensure!(
            lines
                .get(&dead)
                .is_some_and(|l| l.starts_with("failed: ") && l.contains("ssh")),
            "{dead} (no sshd) should report an ssh failure:\n{}",
            show(&out)
        );
        fx.wait_tree(&names)?;
        fx.mark("tree of 4 formed");
        let pids = fx.check_agents(&names)?;

        let out = fx.deploy("pdsh", &["--stop"], &live)?;
        fx.mark("deploy --stop over pdsh returned");
        ensure!(
            out.status.success(),
            "deploy --stop failed:\n{}",
            show(&out)
        );
        expect_lines(&out, &names, "ok: stopped")?;
        fx.check_stopped(&pids)?;
        fx.wait_all_gone(names.len() as u64)?;
        fx.mark("root shows 0 up");
        Ok(())
    })
}

#[test]
fn deploy_over_clush_names_agents_by_hostname_is_idempotent_and_stop_leaves_no_agent() -> Result<()>
{
    if !Testnet::require()? {
        return Ok(());
    }
    let Some(tools) = require_tools("clush")? else {
        return Ok(());
    };
    with_fixture(&tools, 4, 4, |fx| {
        let names = fx.names.clone();
        let set = fx.nodeset(4);
        // Each sshd runs with its host's name as host name, so the names come out the same.
        let by_hostname = ["--name-from", "hostname"];

        let out = fx.deploy_start("clush", &by_hostname, &set)?;
        fx.mark("deploy over clush returned");
        ensure!(
            out.status.success(),
            "deploy over clush failed:\n{}",
            show(&out)
        );
        expect_lines(&out, &names, "ok: started")?;
        fx.wait_tree(&names)?;
        fx.mark("tree of 4 formed");
        let pids = fx.check_agents(&names)?;

        // A second deploy finds them running and starts nothing.
        let out = fx.deploy_start("clush", &by_hostname, &set)?;
        ensure!(
            out.status.success(),
            "second deploy failed:\n{}",
            show(&out)
        );
        expect_lines(&out, &names, "ok: already running")?;
        ensure!(
            fx.check_agents(&names)? == pids,
            "a second deploy changed the agents' PIDs"
        );

        let out = fx.deploy("clush", &["--stop", "--name-from", "hostname"], &set)?;
        fx.mark("deploy --stop over clush returned");
        ensure!(
            out.status.success(),
            "deploy --stop over clush failed:\n{}",
            show(&out)
        );
        expect_lines(&out, &names, "ok: stopped")?;
        fx.check_stopped(&pids)?;
        fx.wait_all_gone(names.len() as u64)?;
        fx.mark("root shows 0 up");
        Ok(())
    })
}

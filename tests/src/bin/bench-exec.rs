//! bench-exec: how long it takes to run a command on every host, banyan against clush and pdsh.
//!
//! Part 1, on real test hosts (network namespaces, 15 by default), each running a banyan agent and
//! an sshd: `true`, and a command printing 1 KiB, run by
//! - banyan through its tree: `POST /actions` with the admin token, then long polls of
//!   `GET /actions/ID?wait_ms=5000&since=V` until the action is over (timed from before the POST
//!   to the final answer; the time until every target had answered is shown too);
//! - `clush -b -f 64 -S -w HOSTS CMD` over ssh;
//! - `pdsh -S -R ssh -w HOSTS CMD` over ssh.
//!
//! `-S` makes both return the largest remote exit status, which the check needs. The ssh sessions
//! get an empty home, so that this machine's `/root/.bashrc` (pyenv) is not timed with them: see
//! [`empty_ssh_home`].
//!
//! The three tools take turns (banyan, clush, pdsh, banyan, ...) so that whatever else loads the
//! machine falls on all of them alike, after one untimed warm-up round. Every run's answers are
//! checked (one per host, exit 0, the exact output) and a wrong one stops the benchmark: it must
//! not time wrong answers.
//!
//! Part 2, in the simulator (`banyan_tests::sim`, the tree's real state machines in virtual time):
//! the time for a command to reach every node and for every answer to reach the root, at 10,000
//! and 100,000 nodes, with a per-hop latency measured in part 1, beside the goal of answering from
//! 10,000 nodes in under a second. The simulator routes a `Ping` command, which travels the tree
//! exactly as an action does but is answered by the tree itself.
//!
//! A benchmark, not a test: it prints figures and asserts nothing about time. Run it as root with
//! `scripts/bench-exec`, which installs pdsh, clustershell and openssh-server and builds the
//! daemons and this program in release.

use banyan_tests::support::percentile;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use banyan_protocol::action::{NodeResult, Receipt};
use banyan_protocol::identity::NodeKey;
use banyan_protocol::nodeset::NodeSet;
use banyan_protocol::seal::{Purpose, Signer, Verifier};
use banyan_protocol::wire::{Answer, CommandBody};
use banyan_tests::cluster::{Cluster, ClusterOptions};
use banyan_tests::sim::{Sim, SimConfig};
use banyan_tests::support::{binaries, http_request};
use banyan_tests::testnet::Testnet;
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

const USAGE: &str = "\
usage: bench-exec [--runs N] [--hosts N] [--sizes N,N,...] [--seed S]
  --runs   timed runs per tool and command (default 20), after one untimed warm-up round
  --hosts  test hosts (default 15)
  --sizes  simulated tree sizes (default 10000,100000; 0 skips the simulator)
  --seed   simulator seed (default 1)
example: scripts/bench-exec --runs 20";

/// The agents joining at once on a busy two-core machine.
const FORM: Duration = Duration::from_secs(120);
/// One run of any tool: seconds at most; this only turns a hang into a failure.
const RUN_BUDGET: Duration = Duration::from_secs(60);
/// Budget of one HTTP request to the root (a long poll waits up to 5 s).
const HTTP: Duration = Duration::from_secs(15);
/// Pings through the tree for the per-hop estimate.
const PINGS: usize = 40;
/// The goal of part 2.
const GOAL_NODES: usize = 10_000;
const GOAL_MS: f64 = 1000.0;
/// Simulator: steps and limit while the tree forms, quiet time after, and commands per latency.
const SIM_JOIN_STEP_MS: u64 = 100;
const SIM_JOIN_LIMIT_MS: u64 = 600_000;
const SIM_SETTLE_MS: u64 = 5_000;
const SIM_COMMANDS: usize = 3;
/// Seal checks timed for the root's cost per answer.
const SEAL_CHECKS: usize = 5_000;

struct Args {
    runs: usize,
    hosts: usize,
    sizes: Vec<usize>,
    seed: u64,
}

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        runs: 20,
        hosts: 15,
        sizes: vec![10_000, 100_000],
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| anyhow!("{flag} needs a value (try --help)"))
        };
        let number = |v: String, what: &str| -> Result<u64> {
            v.replace('_', "")
                .parse()
                .map_err(|_| anyhow!("{what}: '{v}' is not a whole number"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--runs" => args.runs = number(value()?, "--runs")?.max(1) as usize,
            "--hosts" => args.hosts = number(value()?, "--hosts")?.clamp(1, 500) as usize,
            "--seed" => args.seed = number(value()?, "--seed")?,
            "--sizes" => {
                let v = value()?;
                args.sizes = v
                    .split(',')
                    .map(|s| number(s.trim().to_string(), "--sizes").map(|n| n as usize))
                    .filter(|n| !matches!(n, Ok(0)))
                    .collect::<Result<_>>()?;
            }
            other => bail!("unknown argument '{other}' (try --help)"),
        }
    }
    Ok(Some(args))
}

// ----- Figures -------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Stats {
    median: f64,
    p99: f64,
    min: f64,
    max: f64,
}

fn stats(v: &[f64]) -> Stats {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    Stats {
        median: percentile(&s, 0.5),
        p99: percentile(&s, 0.99),
        min: s.first().copied().unwrap_or(f64::NAN),
        max: s.last().copied().unwrap_or(f64::NAN),
    }
}

// ----- What is run -------------------------------------------------------------------------------------

/// One benchmarked command, the same on every tool.
struct Cmd {
    label: &'static str,
    /// The command line: given to the remote shell by ssh, to `/bin/sh -c` by banyan when `shell`.
    line: &'static str,
    /// Banyan's argv (without `shell`, the program is executed directly, as `exec true` does).
    argv: &'static [&'static str],
    shell: bool,
    /// What every host must print, exactly.
    output: String,
}

fn commands() -> Vec<Cmd> {
    vec![
        Cmd {
            label: "true",
            line: "true",
            argv: &["true"],
            shell: false,
            output: String::new(),
        },
        Cmd {
            label: "1 KiB out",
            line: "head -c 1024 /dev/zero | tr '\\0' x",
            argv: &["head -c 1024 /dev/zero | tr '\\0' x"],
            shell: true,
            output: "x".repeat(1024),
        },
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tool {
    Banyan,
    Clush,
    Pdsh,
}

const TOOLS: [Tool; 3] = [Tool::Banyan, Tool::Clush, Tool::Pdsh];

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Banyan => "banyan",
            Tool::Clush => "clush",
            Tool::Pdsh => "pdsh",
        }
    }
}

/// Everything the runs need: the cluster, the ssh client's config, clush's config dir.
struct Bench<'a> {
    cluster: &'a Cluster,
    hosts: BTreeSet<String>,
    nodeset: String,
    ssh_config: PathBuf,
    clush_dir: PathBuf,
    /// Hosts whose output pdsh printed in more than one labelled piece, over all runs.
    pdsh_split: Cell<usize>,
}

/// One banyan run: total (POST to final answer), until every target had answered, the root's
/// own figure (ended_ms - started_ms), the slowest target's run time of the command.
#[derive(Debug, Clone, Copy)]
struct BanyanRun {
    total_ms: f64,
    answered_ms: f64,
    root_ms: f64,
    exec_ms: f64,
}

impl Bench<'_> {
    fn run(&self, tool: Tool, cmd: &Cmd) -> Result<(f64, Option<BanyanRun>)> {
        match tool {
            Tool::Banyan => self.banyan(cmd).map(|r| (r.total_ms, Some(r))),
            Tool::Clush => self.clush(cmd).map(|t| (t, None)),
            Tool::Pdsh => self.pdsh(cmd).map(|t| (t, None)),
        }
        .with_context(|| format!("{} running {:?}", tool.name(), cmd.line))
    }

    fn banyan(&self, cmd: &Cmd) -> Result<BanyanRun> {
        let c = self.cluster;
        let body = json!({
            "nodes": self.nodeset,
            "for_real": true,
            "task": {"exec": {"argv": cmd.argv, "shell": cmd.shell}},
        });
        let t0 = Instant::now();
        let (status, bytes) = http_request(
            c.http_addr(),
            "POST",
            "/actions",
            Some(c.admin_token()),
            Some(&body),
            HTTP,
        )?;
        let started: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        ensure!(
            status == 202,
            "POST /actions: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
        let id = started["id"]
            .as_str()
            .with_context(|| format!("POST /actions answered no id: {started}"))?
            .to_string();
        let mut since = 0;
        let mut answered = None;
        let record = loop {
            let path = format!("/actions/{id}?wait_ms=5000&since={since}");
            let (status, bytes) = http_request(c.http_addr(), "GET", &path, None, None, HTTP)?;
            let elapsed = t0.elapsed();
            ensure!(
                status == 200,
                "GET {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
            let v: Value =
                serde_json::from_slice(&bytes).with_context(|| format!("GET {path}: not JSON"))?;
            let all_answered = v["targets"]
                .as_object()
                .is_some_and(|t| t.values().all(|t| t["state"] != "pending"));
            if all_answered && answered.is_none() {
                answered = Some(elapsed);
            }
            if v["state"] != "running" {
                break (v, elapsed);
            }
            since = v["version"].as_u64().unwrap_or(since);
            ensure!(
                elapsed < RUN_BUDGET,
                "action {id} still running after {RUN_BUDGET:?}: {v}"
            );
        };
        let (v, total) = record;
        let exec_ms = self.check_banyan(&v, cmd)?;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let root_ms = match (v["started_ms"].as_f64(), v["ended_ms"].as_f64()) {
            (Some(a), Some(b)) => b - a,
            _ => f64::NAN,
        };
        Ok(BanyanRun {
            total_ms: ms(total),
            answered_ms: ms(answered.unwrap_or(total)),
            root_ms,
            exec_ms,
        })
    }

    /// Checks a finished action: done, one answer per host, each a real run that exited 0 and
    /// printed exactly the expected output. Returns the slowest target's run time.
    fn check_banyan(&self, v: &Value, cmd: &Cmd) -> Result<f64> {
        ensure!(v["state"] == "done", "the action ended {}: {v}", v["state"]);
        let targets = v["targets"]
            .as_object()
            .with_context(|| format!("no targets in {v}"))?;
        let names: BTreeSet<String> = targets.keys().cloned().collect();
        ensure!(
            names == self.hosts,
            "the action's targets are {names:?}, not the {} hosts",
            self.hosts.len()
        );
        let mut slowest = 0.0f64;
        for (node, t) in targets {
            ensure!(t["state"] == "ok", "{node}: {t}");
            let r: NodeResult = serde_json::from_value(t["result"].clone())
                .with_context(|| format!("{node}: no result in {t}"))?;
            ensure!(
                r.ok && !r.dry_run && r.exit == Some(0) && r.signal.is_none() && !r.truncated,
                "{node} did not run the command to a clean exit: {}",
                r.summary
            );
            ensure!(
                r.stdout == cmd.output && r.stderr.is_empty(),
                "{node} printed {} bytes on stdout ({} expected) and {:?} on stderr",
                r.stdout.len(),
                cmd.output.len(),
                r.stderr
            );
            slowest = slowest.max(r.duration_ms as f64);
        }
        Ok(slowest)
    }

    fn clush(&self, cmd: &Cmd) -> Result<f64> {
        let mut c = Command::new("clush");
        c.args(["-b", "-f", "64", "-S", "-w", &self.nodeset, cmd.line])
            .env("CLUSTERSHELL_CFGDIR", &self.clush_dir);
        let ran = run_tool(c)?;
        ran.expect_clean("clush")?;
        // `-b` gathers hosts with the same output under one header:
        // "---------------\nNODESET (COUNT)\n---------------\nOUTPUT\n"; no output, no block.
        let mut seen = BTreeSet::new();
        let lines: Vec<&str> = ran.stdout.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let is_rule = |l: &str| !l.is_empty() && l.bytes().all(|b| b == b'-');
            ensure!(
                i + 3 < lines.len() && is_rule(lines[i]) && is_rule(lines[i + 2]),
                "clush printed something else than gathered blocks:\n{}",
                ran.stdout
            );
            let header = lines[i + 1];
            let (set, count) = header
                .rsplit_once(" (")
                .with_context(|| format!("clush header {header:?}"))?;
            let set = NodeSet::parse(set).with_context(|| format!("clush header {header:?}"))?;
            ensure!(
                count.trim_end_matches(')').parse::<usize>().ok() == Some(set.len()),
                "clush header {header:?}: the count is not the set's"
            );
            let mut j = i + 3;
            let mut body = Vec::new();
            while j < lines.len() && !(is_rule(lines[j]) && j + 2 < lines.len()) {
                body.push(lines[j]);
                j += 1;
            }
            let body = body.join("\n");
            ensure!(
                body == cmd.output,
                "clush: {header} printed {} bytes, {} expected",
                body.len(),
                cmd.output.len()
            );
            seen.extend(set.iter().map(str::to_string));
            i = j;
        }
        self.expect_hosts("clush", &seen, cmd, &ran)?;
        Ok(ran.ms)
    }

    fn pdsh(&self, cmd: &Cmd) -> Result<f64> {
        let mut c = Command::new("pdsh");
        c.args(["-S", "-R", "ssh", "-w", &self.nodeset, cmd.line])
            .env(
                "PDSH_SSH_ARGS_APPEND",
                format!("-F {}", self.ssh_config.display()),
            );
        let ran = run_tool(c)?;
        ran.expect_clean("pdsh")?;
        // "HOST: " before every line of a host's output; a last line without a newline is
        // printed without one, so the next host's output may follow on the same line. Now and
        // then (seen under load) pdsh prints one host's output in two labelled pieces, one of
        // them empty: a host's answer is all its pieces together.
        let parts = split_by_host(&ran.stdout, &self.hosts)?;
        let mut answers: BTreeMap<&str, String> = BTreeMap::new();
        let mut pieces: BTreeMap<&str, usize> = BTreeMap::new();
        for &(host, text) in &parts {
            answers
                .entry(host)
                .or_default()
                .push_str(text.strip_suffix('\n').unwrap_or(text));
            *pieces.entry(host).or_default() += 1;
        }
        for host in &self.hosts {
            let got = answers.get(host.as_str()).map_or("", String::as_str);
            ensure!(
                got == cmd.output,
                "pdsh: {host} printed {} bytes, {} expected; pdsh's output, piece by piece: {}",
                got.len(),
                cmd.output.len(),
                parts
                    .iter()
                    .map(|(h, t)| format!("{h}: {} bytes", t.len()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let split = pieces.values().filter(|&&k| k > 1).count();
        self.pdsh_split.set(self.pdsh_split.get() + split);
        Ok(ran.ms)
    }

    /// With output, every host must have printed it; without, there is nothing to count and the
    /// exit status (the largest of the remote ones, `-S`) is the answer.
    fn expect_hosts(
        &self,
        tool: &str,
        seen: &BTreeSet<String>,
        cmd: &Cmd,
        ran: &Ran,
    ) -> Result<()> {
        let want = if cmd.output.is_empty() {
            BTreeSet::new()
        } else {
            self.hosts.clone()
        };
        ensure!(
            *seen == want,
            "{tool}: answers from {seen:?}, expected {want:?}; it printed:\n{}",
            ran.stdout
        );
        Ok(())
    }
}

/// pdsh's output cut at each `HOST: ` (for the known hosts): `(host, what follows up to the
/// next one)`. Anything before the first is an error.
fn split_by_host<'a>(out: &'a str, hosts: &'a BTreeSet<String>) -> Result<Vec<(&'a str, &'a str)>> {
    let markers: Vec<(String, &str)> = hosts
        .iter()
        .map(|h| (format!("{h}: "), h.as_str()))
        .collect();
    let next_marker = |from: usize| {
        markers
            .iter()
            .filter_map(|(m, h)| {
                out[from..]
                    .find(m.as_str())
                    .map(|at| (from + at, m.len(), *h))
            })
            .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)))
    };
    let mut parts = Vec::new();
    let mut at = 0;
    while at < out.len() {
        let Some((start, len, host)) = next_marker(at) else {
            bail!("pdsh printed {:?} without a host in front", &out[at..]);
        };
        ensure!(
            start == at,
            "pdsh printed {:?} without a host in front",
            &out[at..start]
        );
        let body = start + len;
        let end = next_marker(body).map_or(out.len(), |(next, _, _)| next);
        parts.push((host, &out[body..end]));
        at = end;
    }
    Ok(parts)
}

/// A finished tool run.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    ms: f64,
}

impl Ran {
    fn expect_clean(&self, tool: &str) -> Result<()> {
        ensure!(
            self.status.success() && without_progress(&self.stderr).is_empty(),
            "{tool} exited with {} (the largest remote exit status); stderr:\n{}",
            self.status,
            self.stderr
        );
        Ok(())
    }
}

/// `text` without clush's progress meter (`clush:  3/15`, overwritten in place with spaces and
/// carriage returns), which it writes to stderr in gathered mode even when that is not a terminal.
fn without_progress(text: &str) -> String {
    let mut rest = text;
    let mut out = String::new();
    while let Some(at) = rest.find("clush:") {
        let after = &rest[at + "clush:".len()..];
        let counter = after.trim_start_matches(' ');
        let digits = |s: &str| s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let (a, tail) = counter.split_at(digits(counter));
        let meter = !a.is_empty() && tail.starts_with('/') && digits(&tail[1..]) > 0;
        if meter {
            out.push_str(&rest[..at]);
            rest = &tail[1 + digits(&tail[1..])..];
        } else {
            out.push_str(&rest[..at + "clush:".len()]);
            rest = after;
        }
    }
    out.push_str(rest);
    out.trim_matches(|c: char| c.is_whitespace()).to_string()
}

/// Runs a tool in its own process group and times it until it has exited and its output is read.
/// A watchdog kills the group after [`RUN_BUDGET`].
fn run_tool(mut cmd: Command) -> Result<Ran> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id();
    let done = Arc::new(Mutex::new(false));
    let watchdog = {
        let done = done.clone();
        thread::spawn(move || {
            while t0.elapsed() < RUN_BUDGET {
                thread::sleep(Duration::from_millis(50));
                if *done.lock().unwrap_or_else(|e| e.into_inner()) {
                    return false;
                }
            }
            let finished = done.lock().unwrap_or_else(|e| e.into_inner());
            if !*finished {
                if let Ok(raw) = i32::try_from(pid) {
                    match killpg(Pid::from_raw(raw), Signal::SIGKILL) {
                        Ok(()) | Err(Errno::ESRCH) => {}
                        Err(e) => eprintln!("bench-exec: killing group {pid}: {e}"),
                    }
                }
            }
            true
        })
    };
    let read = |r: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err = read(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let status = child.wait();
    // Set under the lock the watchdog holds while it kills: no signal after the reap.
    *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
    let status = status.context("waiting for the tool")?;
    let join = |h: thread::JoinHandle<Vec<u8>>| h.join().map_err(|_| anyhow!("reader panicked"));
    let stdout = String::from_utf8_lossy(&join(out)?).into_owned();
    let stderr = String::from_utf8_lossy(&join(err)?).into_owned();
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    if watchdog.join().unwrap_or(false) {
        bail!("{cmd:?} took more than {RUN_BUDGET:?} and was killed");
    }
    Ok(Ran {
        status,
        stdout,
        stderr,
        ms,
    })
}

/// Gives ssh sessions an empty home. This machine's `/root/.bashrc` runs `pyenv init` (and
/// `pyenv rehash`, which races with itself when 15 hosts share one filesystem), and bash reads
/// it for every command sshd starts: clush and pdsh would be timed running pyenv, and fail now
/// and then on its errors, which says nothing of them. banyan runs commands without a login
/// shell. Each sshd gets `SetEnv HOME=<empty dir>` in its config and rereads it on SIGHUP
/// (it executes itself again, same PID); the new home is then checked over ssh on every host.
fn empty_ssh_home(dir: &Path, ssh_config: &Path, hosts: &[String], sshd: &[u32]) -> Result<()> {
    let home = dir.join("ssh-home");
    fs::create_dir_all(&home).context("creating the ssh sessions' home")?;
    for h in hosts {
        // The file banyan_tests::sshd::start wrote for this host.
        let conf = dir.join(format!("sshd_{h}.conf"));
        let mut text =
            fs::read_to_string(&conf).with_context(|| format!("reading {}", conf.display()))?;
        text.push_str(&format!("SetEnv HOME={}\n", home.display()));
        fs::write(&conf, text).with_context(|| format!("writing {}", conf.display()))?;
    }
    for &pid in sshd {
        let raw = i32::try_from(pid).context("sshd PID out of range")?;
        nix::sys::signal::kill(Pid::from_raw(raw), Signal::SIGHUP)
            .with_context(|| format!("SIGHUP to sshd {pid}"))?;
    }
    let want = home.display().to_string();
    for h in hosts {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("ssh")
                .arg("-F")
                .arg(ssh_config)
                .args([h.as_str(), "echo \"$HOME\""])
                .stdin(Stdio::null())
                .output()
                .context("running ssh")?;
            let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() && got == want {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "ssh to {h} still has HOME={got:?} (not {want}) after its sshd was told to reread its config; stderr: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

// ----- Part 1 ------------------------------------------------------------------------------------------

/// What part 1 hands to part 2.
struct Measured {
    depth: u32,
    /// banyan's `true`: median until every target answered, and median total.
    banyan_answered_ms: f64,
    banyan_total_ms: f64,
    /// One-way per-hop time from the slope of ping round trips against depth.
    hop_ping_ms: f64,
    /// The ping fit's intercept: round-trip time that does not grow with depth.
    ping_fixed_ms: f64,
    ping_points: usize,
}

fn part1(args: &Args) -> Result<Measured> {
    let tools =
        banyan_tests::sshd::require("bench-exec", &[("clush", "clustershell"), ("pdsh", "pdsh")])?
            .context(
                "bench-exec needs sshd, ssh, clush and pdsh (scripts/bench-exec installs them)",
            )?;
    let mut cluster = Cluster::start(args.hosts, ClusterOptions::default())?;
    let result = part1_on(&mut cluster, &tools, args);
    if result.is_err() {
        cluster.keep_logs();
    }
    result.with_context(|| format!("logs in {}", cluster.dir().display()))
}

fn part1_on(
    cluster: &mut Cluster,
    tools: &banyan_tests::sshd::SshTools,
    args: &Args,
) -> Result<Measured> {
    let dir = cluster.dir().to_path_buf();
    let n = args.hosts;
    // The tree first, so that its formation is timed alone.
    let names = cluster.names();
    let formed = cluster.wait_healthy(&names, FORM)?;
    let sshd = banyan_tests::sshd::start(cluster.testnet(), tools, &dir, n)?;
    let ssh_config = banyan_tests::sshd::ssh_config(&dir);
    empty_ssh_home(&dir, &ssh_config, &names, &sshd)?;
    let clush_dir = dir.join("clustershell");
    fs::create_dir_all(&clush_dir).context("creating clush's config dir")?;
    // ConfigParser wants % doubled; the paths here have none.
    fs::write(
        clush_dir.join("clush.conf"),
        format!(
            "[Main]\nfanout: 64\nconnect_timeout: 10\ncommand_timeout: 0\ncolor: never\n\
             ssh_options: -F {}\n",
            ssh_config.display()
        ),
    )
    .context("writing clush.conf")?;
    let topo = cluster.topology()?;
    let depth = topo.depth();
    let cluster: &Cluster = cluster;
    let bench = Bench {
        cluster,
        hosts: names.iter().cloned().collect(),
        nodeset: cluster.all_nodes(),
        ssh_config,
        clush_dir,
        pdsh_split: Cell::new(0),
    };
    part1_runs(&bench, args, depth, formed)
}

fn part1_runs(bench: &Bench, args: &Args, depth: u32, formed: Duration) -> Result<Measured> {
    let cmds = commands();
    let n = bench.hosts.len();
    let version = |prog: &str, flag: &str| {
        Command::new(prog)
            .arg(flag)
            .output()
            .map(|o| {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                text.lines().next().unwrap_or("?").trim().to_string()
            })
            .unwrap_or_else(|e| format!("? ({e})"))
    };
    println!(
        "bench-exec: {n} test hosts, each with a banyan agent and an sshd; banyan's tree formed in {:.1} s, depth {depth}",
        formed.as_secs_f64()
    );
    println!(
        "tools: {}, {}, {}; daemons from {}",
        version("clush", "--version"),
        version("pdsh", "-V"),
        version("ssh", "-V"),
        binaries()?
            .root
            .parent()
            .map_or("?".into(), |p| p.display().to_string())
    );
    println!(
        "{} timed runs per tool and command after one untimed warm-up round, taking turns: banyan, clush, pdsh, banyan, ...",
        args.runs
    );
    println!("commands: `true` (banyan: argv [\"true\"], no shell) and `{}` (banyan: \"shell\": true); ssh runs both through the remote login shell", cmds[1].line);

    // times[(cmd, tool)] in ms; banyan's details per command.
    let mut times: BTreeMap<(usize, Tool), Vec<f64>> = BTreeMap::new();
    let mut banyan_runs: BTreeMap<usize, Vec<BanyanRun>> = BTreeMap::new();
    for round in 0..=args.runs {
        for (ci, cmd) in cmds.iter().enumerate() {
            for tool in TOOLS {
                let (ms, detail) = bench.run(tool, cmd).with_context(|| {
                    if round == 0 {
                        "in the warm-up round".to_string()
                    } else {
                        format!("in run {round}")
                    }
                })?;
                if round == 0 {
                    continue;
                }
                times.entry((ci, tool)).or_default().push(ms);
                if let Some(d) = detail {
                    banyan_runs.entry(ci).or_default().push(d);
                }
            }
        }
        if round > 0 && round % 5 == 0 {
            eprintln!("bench-exec: {round}/{} runs done", args.runs);
        }
    }

    println!();
    println!("every run checked: {n} answers, exit 0, exactly the expected output (0 or 1024 bytes) from each host");
    println!(
        "{:<10} {:<7} {:>10} {:>10} {:>10} {:>10}   {:>16} {:>13}",
        "command", "tool", "median", "p99", "min", "max", "median x banyan", "p99 x banyan"
    );
    for (ci, cmd) in cmds.iter().enumerate() {
        let base = stats(times.get(&(ci, Tool::Banyan)).map_or(&[][..], |v| v));
        for tool in TOOLS {
            let s = stats(times.get(&(ci, tool)).map_or(&[][..], |v| v));
            println!(
                "{:<10} {:<7} {:>7.1} ms {:>7.1} ms {:>7.1} ms {:>7.1} ms   {:>15.1}x {:>12.1}x",
                cmd.label,
                tool.name(),
                s.median,
                s.p99,
                s.min,
                s.max,
                s.median / base.median,
                s.p99 / base.p99
            );
        }
    }
    println!("(p99 is the nearest rank: below 51 runs it is the slowest run; banyan is timed from before its POST to the last answer of the long poll, from this process; clush and pdsh from their start to their exit, as an operator runs them)");
    println!();
    println!("banyan in detail (median / p99 / max over the runs, ms):");
    for (ci, cmd) in cmds.iter().enumerate() {
        let runs = banyan_runs.get(&ci).map_or(&[][..], |v| v);
        let line = |f: &dyn Fn(&BanyanRun) -> f64| {
            let s = stats(&runs.iter().map(f).collect::<Vec<_>>());
            format!("{:.1} / {:.1} / {:.1}", s.median, s.p99, s.max)
        };
        println!(
            "  {:<10} every target answered (as the long poll saw it): {}; POST to final answer: {}; inside the root (ended_ms - started_ms, ms clock): {}; slowest target's own run of the command: {}",
            cmd.label,
            line(&|r| r.answered_ms),
            line(&|r| r.total_ms),
            line(&|r| r.root_ms),
            line(&|r| r.exec_ms)
        );
    }

    let split = bench.pdsh_split.get();
    if split > 0 {
        println!("note: pdsh printed a host's output in two or more labelled pieces {split} time(s), warm-up included (taken as that host's answer: the pieces together are exactly the expected output)");
    }
    println!("every run, in order (ms):");
    for (ci, cmd) in cmds.iter().enumerate() {
        for tool in TOOLS {
            let runs = times.get(&(ci, tool)).map_or(&[][..], |v| v);
            println!(
                "  {:<10} {:<7} {}",
                cmd.label,
                tool.name(),
                runs.iter()
                    .map(|ms| format!("{ms:.0}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }

    // Per-hop time: ping round trips (measured by the root, whole ms) against each node's depth.
    let mut points = Vec::new();
    for _ in 0..PINGS {
        let depths = bench.cluster.agent_depths()?;
        let r = bench.cluster.ping(&bench.nodeset)?;
        let answered = r["answered"]
            .as_object()
            .with_context(|| format!("POST /ping: {r}"))?;
        ensure!(
            answered.len() == n,
            "POST /ping: {} of {n} answered: {r}",
            answered.len()
        );
        for (node, v) in answered {
            let d = *depths
                .get(node)
                .with_context(|| format!("{node} has no depth"))?;
            let rtt = v["rtt_ms"]
                .as_f64()
                .with_context(|| format!("no rtt_ms: {v}"))?;
            points.push((f64::from(d), rtt));
        }
    }
    let (slope, intercept) = fit(&points);
    let (hop_ping_ms, ping_fixed_ms) = if slope.is_finite() {
        (slope.max(0.0) / 2.0, intercept)
    } else {
        // Every node at one depth: nothing to fit; all of the round trip is charged to the hops.
        let mean = points.iter().map(|p| p.1).sum::<f64>() / points.len().max(1) as f64;
        (mean / (2.0 * f64::from(depth.max(1))), 0.0)
    };
    let median_of = |ci: usize, f: &dyn Fn(&BanyanRun) -> f64| {
        stats(
            &banyan_runs
                .get(&ci)
                .map_or(&[][..], |v| v)
                .iter()
                .map(f)
                .collect::<Vec<_>>(),
        )
        .median
    };
    let by_depth: BTreeMap<u32, (f64, usize)> = points.iter().fold(BTreeMap::new(), |mut m, p| {
        let e = m.entry(p.0 as u32).or_insert((0.0, 0));
        e.0 += p.1;
        e.1 += 1;
        m
    });
    println!();
    println!(
        "ping through the tree ({PINGS} pings to all {n}, round trips as the root measures them, whole ms): mean rtt by depth {}",
        by_depth
            .iter()
            .map(|(d, (sum, k))| format!("{d}: {:.2} ms", sum / *k as f64))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Measured {
        depth,
        banyan_answered_ms: median_of(0, &|r| r.answered_ms),
        banyan_total_ms: median_of(0, &|r| r.total_ms),
        hop_ping_ms,
        ping_fixed_ms,
        ping_points: points.len(),
    })
}

/// Least-squares line through `(x, y)`: (slope, intercept); NaN when every x is the same.
fn fit(points: &[(f64, f64)]) -> (f64, f64) {
    let k = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / k;
    let my = points.iter().map(|p| p.1).sum::<f64>() / k;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    if sxx == 0.0 {
        return (f64::NAN, f64::NAN);
    }
    let slope = sxy / sxx;
    (slope, my - slope * mx)
}

// ----- Part 2 ------------------------------------------------------------------------------------------

/// The root's cost per answer that the simulator does not model: checking the answer's seal
/// (ECDSA P-256) and decoding it, in µs, timed here on a receipt carrying `stdout`.
fn seal_check_us(stdout: &str) -> Result<f64> {
    let key = NodeKey::generate().map_err(|e| anyhow!("{e}"))?;
    let signer = Signer::from_pem(&key.pem()).map_err(|e| anyhow!("{e}"))?;
    let receipt = Receipt {
        order: "0123456789abcdef".into(),
        node: "bench1".into(),
        result: NodeResult {
            ok: true,
            summary: "exit 0".into(),
            exit: Some(0),
            stdout: stdout.to_string(),
            ..NodeResult::default()
        },
    };
    let sealed = signer
        .seal(Purpose::Receipt, &receipt)
        .map_err(|e| anyhow!("{e}"))?;
    let verifier = Verifier::from_raw(signer.public_key_raw(), "bench1");
    let check = || -> Result<()> {
        let r: Receipt = verifier
            .open(Purpose::Receipt, &sealed)
            .map_err(|e| anyhow!("{e}"))?;
        ensure!(r == receipt, "the receipt changed on the way");
        Ok(())
    };
    // Caches and clock speed settle first.
    for _ in 0..SEAL_CHECKS / 10 {
        check()?;
    }
    let t0 = Instant::now();
    for _ in 0..SEAL_CHECKS {
        check()?;
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / SEAL_CHECKS as f64)
}

/// One simulated command: the time until every target had it and until every answer was in.
struct SimRun {
    reach_ms: u64,
    answers_ms: u64,
}

struct SimSize {
    nodes: usize,
    depth: u32,
    formed_wall_s: f64,
    /// Per simulated hop latency (ms): the slowest of the commands run with it.
    runs: Vec<(u64, SimRun)>,
}

fn sim_size(n: usize, seed: u64, hops: &[u64]) -> Result<SimSize> {
    let wall = Instant::now();
    let mut sim = Sim::new(SimConfig::new(seed));
    sim.add_agents(n);
    eprintln!("bench-exec: simulating {n} nodes: forming the tree");
    sim.run_until_cond(SIM_JOIN_STEP_MS, SIM_JOIN_LIMIT_MS, |s| {
        s.check(false).is_ok()
    })
    .with_context(|| {
        format!(
            "the simulated tree of {n} did not form in {} s: {}",
            SIM_JOIN_LIMIT_MS / 1000,
            sim.check(false).err().unwrap_or_default()
        )
    })?;
    let formed_wall_s = wall.elapsed().as_secs_f64();
    eprintln!("bench-exec: simulating {n} nodes: formed in {formed_wall_s:.1} s wall");
    sim.run_for(SIM_SETTLE_MS);
    let shape = sim
        .check(false)
        .map_err(|e| anyhow!("the simulated tree of {n} after settling: {e}"))?;
    let targets: Vec<String> = (0..n).map(Sim::name_of).collect();
    let mut runs = Vec::new();
    for &hop in hops {
        sim.set_latency(hop, hop);
        // Messages sent with the old latency land first.
        sim.run_for(1_000);
        let mut slowest: Option<SimRun> = None;
        for _ in 0..SIM_COMMANDS {
            let t0 = sim.now();
            let id = sim.start_command(&targets, CommandBody::Ping);
            let mut report = None;
            sim.run_until_cond(1, 60_000, |s| {
                while let Some(r) = s.root().poll_command_report() {
                    if r.id == id {
                        report = Some(r);
                    }
                }
                report.is_some()
            });
            let report = report.with_context(|| {
                format!("{n} simulated nodes: no report of the command within 60 s (hop {hop} ms)")
            })?;
            let pongs = report
                .answers
                .values()
                .filter(|(a, _)| matches!(a, Ok(Answer::Pong)))
                .count();
            ensure!(
                pongs == n && report.unreachable.is_empty(),
                "{n} simulated nodes, hop {hop} ms: {pongs} answered, {} failed, {} unreachable",
                report.answers.len() - pongs,
                report.unreachable.len()
            );
            let answers_ms = report
                .answers
                .values()
                .map(|(_, rtt)| *rtt)
                .max()
                .unwrap_or(0);
            let (reached, last) = sim.command_reached(id).unwrap_or((0, t0));
            ensure!(
                reached == n,
                "{n} simulated nodes: the command reached {reached}"
            );
            let run = SimRun {
                reach_ms: last - t0,
                answers_ms,
            };
            if slowest
                .as_ref()
                .is_none_or(|s| run.answers_ms > s.answers_ms)
            {
                slowest = Some(run);
            }
            sim.run_for(500);
        }
        if let Some(s) = slowest {
            runs.push((hop, s));
        }
    }
    Ok(SimSize {
        nodes: n,
        depth: shape.max_depth,
        formed_wall_s,
        runs,
    })
}

fn part2(args: &Args, m: &Measured, hosts: usize) -> Result<()> {
    let d = f64::from(m.depth.max(1));
    // Two ways to the per-hop time, both printed: the ping slope (the network and a node's
    // forwarding only) and an upper bound that charges all of banyan's 15-host time to its hops.
    let hop_upper_ms = m.banyan_answered_ms / (2.0 * d);
    let fixed_ms = (m.banyan_total_ms - 2.0 * d * m.hop_ping_ms).max(0.0);
    let sim_hop = |ms: f64| (ms.ceil() as u64).max(1);
    let hop_ping = sim_hop(m.hop_ping_ms);
    let hop_upper = sim_hop(hop_upper_ms);
    let seal_us = seal_check_us("")?;
    let seal_kib_us = seal_check_us(&"x".repeat(1024))?;
    println!();
    println!("per-hop time, one way:");
    println!(
        "  from ping: {:.3} ms = half the slope of round trip against depth over {} answers (fit: rtt = {:.2} ms + {:.2} ms x depth)",
        m.hop_ping_ms,
        m.ping_points,
        m.ping_fixed_ms,
        2.0 * m.hop_ping_ms
    );
    println!(
        "  upper bound from the action: {hop_upper_ms:.3} ms = banyan's median `true` until all {hosts} answered ({:.1} ms) / (2 x depth {})",
        m.banyan_answered_ms, m.depth
    );
    println!(
        "  simulated as {hop_ping} ms and {hop_upper} ms (the simulator's clock counts whole ms: rounded up, at least 1)"
    );
    println!(
        "  what does not grow with depth: {fixed_ms:.1} ms = banyan's median `true` total ({:.1} ms) - 2 x {} x {:.3} ms (HTTP, audit fsync, sealing, the command, the long poll)",
        m.banyan_total_ms, m.depth, m.hop_ping_ms
    );
    println!(
        "  not in the simulator: the root checks every answer's seal in turn (ECDSA P-256, then decoding), measured here: {seal_us:.0} us for the receipt of `true`, {seal_kib_us:.0} us with 1 KiB of output"
    );
    let mut hops = vec![hop_ping];
    if hop_upper != hop_ping {
        hops.push(hop_upper);
    }
    let mut sizes = Vec::new();
    for &n in &args.sizes {
        sizes.push(sim_size(n, args.seed, &hops)?);
    }
    println!();
    println!("simulated tree (tests/src/sim.rs: the tree's state machines in virtual time; a Ping command routed to every node as an action is, answered by the tree; slowest of {SIM_COMMANDS} commands per row):");
    println!(
        "{:>7} {:>5} {:>6} {:<12} {:>10} {:>12} {:>9} {:>12} {:>10} {:>10}",
        "nodes",
        "depth",
        "hop",
        "hop from",
        "reach all",
        "all answers",
        "+ fixed",
        "+ seal checks",
        "projected",
        "goal < 1 s"
    );
    let yes = |ms: f64| if ms < GOAL_MS { "yes" } else { "NO" };
    let mut goal_lines = Vec::new();
    for s in &sizes {
        for (hop, r) in &s.runs {
            let (from, fixed) = if *hop == hop_ping {
                ("ping", fixed_ms)
            } else {
                // The upper bound already holds the fixed part.
                ("action bound", 0.0)
            };
            let seals = s.nodes as f64 * seal_us / 1000.0;
            let tree = r.answers_ms as f64;
            let projected = tree + fixed + seals;
            println!(
                "{:>7} {:>5} {:>3} ms {:<12} {:>7} ms {:>9} ms {:>6.0} ms {:>10.0} ms {:>7.0} ms {:>10}",
                s.nodes,
                s.depth,
                hop,
                from,
                r.reach_ms,
                r.answers_ms,
                fixed,
                seals,
                projected,
                yes(projected)
            );
            if s.nodes == GOAL_NODES {
                let budget_us = (GOAL_MS - tree - fixed) * 1000.0 / s.nodes as f64;
                goal_lines.push(format!(
                    "  goal, under 1 s to answer from 10,000 simulated nodes ({hop} ms per hop, {from}): the tree alone {tree:.0} ms ({}); projected with the root's work {projected:.0} ms ({}): it holds while a seal check costs under {budget_us:.0} us (here {seal_us:.0} us)",
                    if tree < GOAL_MS { "met" } else { "NOT met" },
                    if projected < GOAL_MS { "met" } else { "NOT met" }
                ));
            }
        }
    }
    for line in goal_lines {
        println!("{line}");
    }
    println!("  reach all: until the last target had the command; all answers: until the root had every answer (both simulated)");
    println!("  projected = all answers + what does not grow with depth (measured on the hosts; already inside the action bound) + the root's seal checks for `true` receipts, one after another as the root's event loop does them");
    println!("  not modelled: bandwidth and queueing (each answer travels up alone; with 1 KiB of output that is 10 MB into the root at 10,000 nodes), the root's other per-answer work, the command's own run time");
    for s in &sizes {
        println!(
            "  {} simulated nodes: tree formed in {:.1} s wall",
            s.nodes, s.formed_wall_s
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let Some(args) = parse_args()? else {
        println!("{USAGE}");
        return Ok(());
    };
    if !Testnet::require()? {
        bail!("bench-exec needs root and network namespaces");
    }
    let measured = part1(&args)?;
    if !args.sizes.is_empty() {
        part2(&args, &measured, args.hosts)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdsh_output_without_newlines_splits_at_each_host() {
        let hosts: BTreeSet<String> = ["h1", "h11", "h2"].iter().map(|s| s.to_string()).collect();
        let parts = split_by_host("h11: xxh1: xx\nh2: xx", &hosts).unwrap();
        assert_eq!(parts, vec![("h11", "xx"), ("h1", "xx\n"), ("h2", "xx")]);
        assert!(split_by_host("junk h1: xx", &hosts).is_err());
    }

    #[test]
    fn clush_progress_is_dropped_and_other_text_kept() {
        assert_eq!(without_progress("clush:  1/15clush: 15/15   \r"), "");
        assert_eq!(
            without_progress("clush:  3/15clush: h1: exited with exit code 1\n"),
            "clush: h1: exited with exit code 1"
        );
    }
}

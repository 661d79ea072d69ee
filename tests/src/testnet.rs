//! Test hosts for integration tests: network namespaces on a bridge, made and removed by
//! `scripts/testnet`.
//!
//! [`Testnet::up`] makes `n` hosts, each with its own address in 198.18.0.0/15, so every program under
//! test can use the default port of its own host. The net has a prefix of its own (`bny` + the process id
//! in base 36 + a counter), so tests running at the same time in one process or several never collide.
//! Programs started with [`Testnet::spawn`] run in a process group of their own inside a host; dropping the
//! [`Testnet`] kills those groups and runs `scripts/testnet down` for the prefix, also when the test panics.
//! Should the test process be killed outright, the next `scripts/testnet up` reclaims the net, because it
//! is registered with this process as its owner.
//!
//! Making namespaces needs root and iproute2. Tests call [`Testnet::require`] first: where test hosts cannot
//! be made it fails (unless BANYAN_TEST_LENIENT=1), and otherwise prints `SKIPPED: <why>` and lets the test return.

use std::collections::HashMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::support::{note_skip, strict};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Pid, Uid};

/// Exit status of `scripts/testnet up` when a net with that prefix already exists.
const EXISTS: i32 = 3;

/// How long [`Testnet::terminate`] waits after SIGTERM before it sends SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(5);

/// Counts the nets this process has made, for unique prefixes.
static NEXT_NET: AtomicU32 = AtomicU32::new(0);

/// One test host: a network namespace whose `eth0` has `addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestHost {
    /// The host's name, which is also its namespace's name (e.g. `bny0fka3`).
    pub name: String,
    /// Its address on the test bridge.
    pub addr: Ipv4Addr,
}

/// A set of test hosts, removed with everything started in them when dropped.
#[derive(Debug)]
pub struct Testnet {
    prefix: String,
    hosts: Vec<TestHost>,
    /// Programs started by [`Testnet::spawn`], by PID, each the leader of its own process group.
    children: HashMap<u32, Child>,
}

/// The path of `scripts/testnet` in this repository.
pub fn script() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .unwrap_or(manifest)
        .join("scripts/testnet")
}

/// Why test hosts cannot be made on this machine, or `None` when they can.
fn unavailable() -> Option<String> {
    if !Uid::effective().is_root() {
        return Some("test hosts (network namespaces) need root".into());
    }
    let script = script();
    if !script.is_file() {
        return Some(format!("{} is missing", script.display()));
    }
    match Command::new("ip").arg("-V").output() {
        Ok(out) if out.status.success() => {}
        _ => return Some("`ip` (iproute2) is not installed".into()),
    }
    // Root in a container may still lack the right to make namespaces; `unshare -n` tells without making
    // anything. Without util-linux's unshare, assume it works and let `up` say otherwise.
    match Command::new("unshare").args(["--net", "true"]).output() {
        Ok(out) if !out.status.success() => Some(format!(
            "cannot make network namespaces here: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        _ => None,
    }
}

/// The counter `k` as lowercase letters (a, b, ..., z, aa, ab, ...): a prefix must end with a letter.
fn letters(mut k: u32) -> String {
    let mut s = Vec::new();
    loop {
        s.push(b'a' + (k % 26) as u8);
        k /= 26;
        if k == 0 {
            break;
        }
        k -= 1;
    }
    s.reverse();
    String::from_utf8(s).expect("ASCII letters")
}

/// `n` in base 36, at least `width` digits.
fn base36(mut n: u32, width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    while n > 0 || s.len() < width {
        s.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    s.reverse();
    String::from_utf8(s).expect("ASCII digits")
}

/// Runs `scripts/testnet ARGS`, failing with its stderr when it fails.
fn run_script(args: &[&str]) -> Result<Output> {
    let out = Command::new(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running scripts/testnet {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "scripts/testnet {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Sends `signal` to the process group led by `pid`. A group that is already gone is not an error.
fn signal_group(pid: u32, signal: Signal) -> Result<()> {
    let pgid = Pid::from_raw(i32::try_from(pid).context("PID out of range")?);
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow!("sending {signal} to process group {pid}: {e}")),
    }
}

impl Testnet {
    /// Whether test hosts can be made here (root, iproute2, the right to make namespaces). When they cannot:
    /// an error unless `BANYAN_TEST_LENIENT=1`, so that no run passes without running the test;
    /// otherwise prints `SKIPPED: <why>` and returns `Ok(false)`, and the test should return.
    pub fn require() -> Result<bool> {
        match unavailable() {
            None => Ok(true),
            Some(why) if strict() => Err(anyhow!(
                "test hosts are unavailable (BANYAN_TEST_LENIENT=1 skips instead): {why}"
            )),
            Some(why) => {
                note_skip(&why);
                Ok(false)
            }
        }
    }

    /// Creates `n` hosts (1 to 506) with a prefix unique to this net, by running `scripts/testnet up`.
    pub fn up(n: usize) -> Result<Testnet> {
        let pid = std::process::id();
        // Three base-36 digits of the PID keep names short (`bny` + 3 + counter + host number); two
        // processes whose PIDs agree there get EXISTS from the script, which serialises `up`, and move on
        // to the next counter.
        let pid36 = base36(pid % (36 * 36 * 36), 3);
        for _ in 0..64 {
            let prefix = format!(
                "bny{pid36}{}",
                letters(NEXT_NET.fetch_add(1, Ordering::Relaxed))
            );
            let out = Command::new(script())
                .args(["up", &n.to_string(), "--prefix", &prefix])
                .args(["--owner", &pid.to_string()])
                .stdin(Stdio::null())
                .output()
                .context("running scripts/testnet up")?;
            if out.status.code() == Some(EXISTS) {
                continue;
            }
            // From here the prefix is ours: dropping `net` removes whatever `up` made, even if it failed.
            let mut net = Testnet {
                prefix,
                hosts: Vec::new(),
                children: HashMap::new(),
            };
            if !out.status.success() {
                bail!(
                    "scripts/testnet up {n} --prefix {} failed ({}): {}",
                    net.prefix,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            net.hosts = net.read_hosts()?;
            if net.hosts.len() != n {
                bail!("scripts/testnet up {n} made {} hosts", net.hosts.len());
            }
            return Ok(net);
        }
        bail!("scripts/testnet up: every prefix tried is taken")
    }

    /// The hosts of this net as `scripts/testnet list` shows them, in order.
    fn read_hosts(&self) -> Result<Vec<TestHost>> {
        let out = run_script(&["list", "--prefix", &self.prefix])?;
        let text = String::from_utf8(out.stdout).context("scripts/testnet list: not UTF-8")?;
        text.lines()
            .skip(1) // the header
            .map(|line| {
                let mut cols = line.split_whitespace();
                let (Some(name), Some(addr)) = (cols.next(), cols.next()) else {
                    bail!("scripts/testnet list: bad line {line:?}");
                };
                let addr = addr
                    .parse()
                    .with_context(|| format!("scripts/testnet list: bad address in {line:?}"))?;
                Ok(TestHost {
                    name: name.to_owned(),
                    addr,
                })
            })
            .collect()
    }

    /// This net's name prefix: its hosts are `<prefix>1` to `<prefix>N`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hosts, in order: index `i` is host `<prefix>{i+1}`. Methods taking `host: usize` take this index.
    pub fn hosts(&self) -> &[TestHost] {
        &self.hosts
    }

    fn host(&self, host: usize) -> Result<&TestHost> {
        self.hosts.get(host).ok_or_else(|| {
            anyhow!(
                "no host {host} in net {} ({} hosts)",
                self.prefix,
                self.hosts.len()
            )
        })
    }

    /// Starts `program` with `args` and `envs` (and `BANYAN_HOST=<host name>`) inside host `host`, with
    /// stdout and stderr to `log`. It runs in a process group of its own, so that [`Testnet::kill`],
    /// [`Testnet::terminate`] and dropping the net also stop whatever it starts. Returns its PID, the
    /// handle for those calls.
    pub fn spawn(
        &mut self,
        host: usize,
        program: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> Result<u32> {
        let name = self.host(host)?.name.clone();
        let stdout =
            File::create(log).with_context(|| format!("creating log {}", log.display()))?;
        let stderr = stdout.try_clone()?;
        // `scripts/testnet exec` execs `ip netns exec`, which execs the program: the PID we get is the
        // program's own.
        let child = Command::new(script())
            .arg("exec")
            .arg(&name)
            .arg(program)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} on {name}", program.display()))?;
        let pid = child.id();
        self.children.insert(pid, child);
        Ok(pid)
    }

    fn take_child(&mut self, pid: u32) -> Result<Child> {
        self.children.remove(&pid).ok_or_else(|| {
            anyhow!("process {pid} was not started by this testnet, or is already stopped")
        })
    }

    /// Kills a process started by [`Testnet::spawn`] and its process group with SIGKILL, and reaps it.
    pub fn kill(&mut self, pid: u32) -> Result<()> {
        let mut child = self.take_child(pid)?;
        signal_group(pid, Signal::SIGKILL)?;
        child.wait().with_context(|| format!("reaping {pid}"))?;
        Ok(())
    }

    /// Stops a process started by [`Testnet::spawn`]: SIGTERM to its group, up to 5 s for it to exit, then
    /// SIGKILL. Whatever else of its group is left is killed too.
    pub fn terminate(&mut self, pid: u32) -> Result<()> {
        let mut child = self.take_child(pid)?;
        signal_group(pid, Signal::SIGTERM)?;
        let deadline = Instant::now() + TERMINATE_GRACE;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                signal_group(pid, Signal::SIGKILL)?;
                child.wait().with_context(|| format!("reaping {pid}"))?;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // The PID cannot be reused while it still names a live group, so this reaches only our stragglers.
        signal_group(pid, Signal::SIGKILL)
    }

    /// Cuts host `host` off the bridge: packets to and from it are silently dropped.
    pub fn cut(&self, host: usize) -> Result<()> {
        run_script(&["cut", &self.host(host)?.name]).map(drop)
    }

    /// Reconnects a host cut off by [`Testnet::cut`].
    pub fn restore(&self, host: usize) -> Result<()> {
        run_script(&["restore", &self.host(host)?.name]).map(drop)
    }

    /// Runs `cmd` to completion inside host `host` and returns its output, whatever its exit status.
    pub fn exec(&self, host: usize, cmd: &[&str]) -> Result<Output> {
        let name = &self.host(host)?.name;
        if cmd.is_empty() {
            bail!("exec on {name}: empty command");
        }
        Command::new(script())
            .arg("exec")
            .arg(name)
            .args(cmd)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {cmd:?} on {name}"))
    }
}

impl Drop for Testnet {
    fn drop(&mut self) {
        for (pid, mut child) in self.children.drain() {
            if let Err(e) = signal_group(pid, Signal::SIGKILL) {
                eprintln!("testnet: {e}");
            }
            let _ = child.wait();
        }
        // `down` also kills, by PID, anything still inside the namespaces that escaped its group.
        if let Err(e) = run_script(&["down", "--prefix", &self.prefix]) {
            eprintln!("testnet: removing net {}: {e:#}", self.prefix);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_become_distinct_letters() {
        assert_eq!(letters(0), "a");
        assert_eq!(letters(25), "z");
        assert_eq!(letters(26), "aa");
        assert_eq!(letters(27), "ab");
        assert_eq!(letters(26 + 26 * 26), "aaa");
        let all: std::collections::HashSet<_> = (0..2000).map(letters).collect();
        assert_eq!(all.len(), 2000);
    }

    #[test]
    fn base36_pads() {
        assert_eq!(base36(0, 3), "000");
        assert_eq!(base36(35, 3), "00z");
        assert_eq!(base36(36 * 36 * 36 - 1, 3), "zzz");
    }
}

//! A private single-node Slurm for integration tests: munged, slurmctld and slurmd started by the
//! test, everything (keys, sockets, config, state, spool, logs) in a directory of its own, and
//! ports picked free, so several test processes can each run one at the same time.
//!
//! [`Slurm::require`] checks the packages and starts one: a missing package is an error under
//! strict mode (the default) and otherwise records a skip and gives `Ok(None)`, and the test returns.
//! [`Slurm::srun`] runs a step (the caller's environment goes to the tasks, as srun does);
//! [`Slurm::env`] and [`Slurm::command`] point other Slurm clients at this cluster. Dropping the
//! [`Slurm`] cancels what is still queued, stops the daemons by PID, waits until they are gone and
//! removes the directory. A directory left behind by a test process that was killed outright is
//! reclaimed (its daemons killed by PID, after checking their command line names that directory) by
//! the next [`Slurm::start`] on the machine.
//!
//! What the configuration needs on a machine without systemd is in ../shared/TESTING.md. Job ids
//! start at a number derived from the process id, so clusters side by side do not hand out the
//! same ids (Open MPI and PMIx name their scratch directories after them).

use std::fs::{self, File};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid};

use crate::mpi::run_bounded;
use crate::support::{find_program, free_port, note_skip, strict, tail};

/// How long [`Slurm::start`] waits for the node to show `idle` (about 1 s here).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Slurm::srun`] lets a step take before it stops srun (which cancels the step).
pub const SRUN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a Slurm client (sinfo, squeue, scancel) may take in the harness's own calls.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a daemon gets after SIGTERM before SIGKILL (signalled together, they are gone within
/// a few tenths of a second here; one at a time, each took up to 2 s).
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Counts the clusters this process has started, for unique directories and job ids.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// The programs a cluster needs, each with the Debian package that has it.
const PROGRAMS: [(&str, &str); 9] = [
    ("mungekey", "munge"),
    ("munged", "munge"),
    ("slurmctld", "slurmctld (slurm-wlm)"),
    ("slurmd", "slurmd (slurm-wlm)"),
    ("srun", "slurm-client (slurm-wlm)"),
    ("sinfo", "slurm-client (slurm-wlm)"),
    ("squeue", "slurm-client (slurm-wlm)"),
    ("scancel", "slurm-client (slurm-wlm)"),
    ("scontrol", "slurm-client (slurm-wlm)"),
];

/// The daemons, in the order they are stopped.
const DAEMONS: [&str; 3] = ["slurmd", "slurmctld", "munged"];

/// A running private Slurm cluster of one node; stopped and removed when dropped.
#[derive(Debug)]
pub struct Slurm {
    dir: PathBuf,
    conf: PathBuf,
    node: String,
    /// munged, slurmctld and slurmd, each with its name, as they were started (in that order).
    daemons: Vec<(&'static str, Child)>,
}

/// Whether `libpmix.so` (unversioned: what slurmd's pmix plugin dlopens) is installed.
fn have_libpmix() -> bool {
    let lib = Path::new("/usr/lib");
    let multiarch = fs::read_dir(lib)
        .map(|dirs| dirs.flatten().any(|d| d.path().join("libpmix.so").exists()))
        .unwrap_or(false);
    multiarch || lib.join("libpmix.so").exists()
}

/// The node's name: the short host name, which slurmd and slurmctld take as theirs.
fn short_hostname() -> Result<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname").context("reading the host name")?;
    let short = name.trim().split('.').next().unwrap_or_default();
    if short.is_empty() {
        bail!("the host name is empty");
    }
    Ok(short.to_owned())
}

/// Sends `signal` to `pid`; one that is already gone is not an error.
fn signal_pid(pid: u32, signal: Signal) -> Result<()> {
    let raw = Pid::from_raw(i32::try_from(pid).context("PID out of range")?);
    match kill(raw, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow!("sending {signal} to {pid}: {e}")),
    }
}

fn alive(pid: u32) -> bool {
    i32::try_from(pid).is_ok_and(|p| kill(Pid::from_raw(p), None).is_ok())
}

/// Removes from `cmd`'s environment what a Slurm job around the tests (a developer running them
/// inside `salloc`, say) would pass down: `SLURM_*` and the clients' input variables. srun would
/// otherwise take them for its own job, and mpirun and mpiexec would launch through that Slurm.
pub fn clear_outer_slurm(cmd: &mut Command) {
    const PREFIXES: [&str; 6] = ["SLURM_", "SRUN_", "SALLOC_", "SBATCH_", "SQUEUE_", "SINFO_"];
    for (name, _) in std::env::vars_os() {
        if PREFIXES
            .iter()
            .any(|p| name.to_string_lossy().starts_with(p))
        {
            cmd.env_remove(name);
        }
    }
}

/// Where the clusters' directories live: `<temp>/banyan-slurm/<pid>-<n>`.
fn base_dir() -> PathBuf {
    std::env::temp_dir().join("banyan-slurm")
}

/// Kills, by PID, the daemons of directories whose test process is gone, and removes those
/// directories. A PID is killed only while its command line still names the directory.
fn reclaim_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if owner == std::process::id() || alive(owner) {
            continue;
        }
        let marker = dir.to_string_lossy().into_owned();
        let pids = fs::read_to_string(dir.join("daemons.pid")).unwrap_or_default();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<u32>().ok())
        {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                let _ = signal_pid(pid, Signal::SIGKILL);
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// What is missing for a cluster here, or `None`.
fn missing() -> Option<String> {
    if !Uid::effective().is_root() {
        return Some("a private Slurm runs its daemons as root (SlurmUser=root)".into());
    }
    let mut missing: Vec<String> = PROGRAMS
        .iter()
        .filter(|(prog, _)| find_program(prog).is_none())
        .map(|(prog, pkg)| format!("{prog} (Debian package {pkg})"))
        .collect();
    if !have_libpmix() {
        missing.push("libpmix.so for srun --mpi=pmix (Debian package libpmix-dev)".into());
    }
    (!missing.is_empty()).then(|| format!("missing {}", missing.join(", ")))
}

impl Slurm {
    /// Starts a cluster if Slurm, munge and libpmix-dev are installed (and we are root). When they
    /// are not: an error (unless BANYAN_TEST_LENIENT=1) (scripts/test installs them); otherwise prints `SKIPPED:
    /// ...` and returns `Ok(None)`, and the test should return.
    pub fn require() -> Result<Option<Slurm>> {
        match missing() {
            None => Slurm::start().map(Some),
            Some(why) if strict() => {
                bail!("a private Slurm cannot run (BANYAN_TEST_LENIENT=1 skips instead): {why}")
            }
            Some(why) => {
                note_skip(&why);
                Ok(None)
            }
        }
    }

    /// Starts munged, slurmctld and slurmd in a new private directory and waits (up to 30 s) until
    /// `sinfo` shows the node idle. On failure everything started is stopped again and the error
    /// carries the daemons' log tails.
    pub fn start() -> Result<Slurm> {
        if let Some(why) = missing() {
            bail!("cannot start a private Slurm: {why}");
        }
        let base = base_dir();
        fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        reclaim_stale(&base);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("{pid}-{n}"));
        // A directory of that name can only be a leftover of an earlier process with our PID.
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        // From here, dropping `slurm` removes the directory and stops whatever was started.
        let mut slurm = Slurm {
            conf: dir.join("slurm.conf"),
            dir,
            node: short_hostname()?,
            daemons: Vec::new(),
        };
        slurm.launch(pid, n)?;
        Ok(slurm)
    }

    fn launch(&mut self, pid: u32, n: u32) -> Result<()> {
        let dir = self.dir.clone();
        // munged checks that its directories are not writable by others.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        for sub in ["state", "spool", "tmp"] {
            fs::create_dir(dir.join(sub))?;
            fs::set_permissions(dir.join(sub), fs::Permissions::from_mode(0o755))?;
        }
        let key = dir.join("munge.key");
        let out = Command::new("mungekey")
            .arg("-c")
            .arg("-k")
            .arg(&key)
            .stdin(Stdio::null())
            .output()
            .context("running mungekey")?;
        if !out.status.success() {
            bail!(
                "mungekey -c failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let socket = dir.join("munge.sock");
        self.spawn(
            "munged",
            Command::new("munged")
                .arg("--foreground")
                .arg("--key-file")
                .arg(&key)
                .arg("--socket")
                .arg(&socket)
                .arg("--pid-file")
                .arg(dir.join("munged.pid"))
                .arg("--seed-file")
                .arg(dir.join("munge.seed")),
        )?;
        self.wait_for(Duration::from_secs(10), "munged's socket", |s| {
            Ok(s.dir.join("munge.sock").exists())
        })?;

        let localhost = Ipv4Addr::LOCALHOST;
        let ctld_port = free_port(localhost, false)?;
        let mut slurmd_port = free_port(localhost, false)?;
        while slurmd_port == ctld_port {
            slurmd_port = free_port(localhost, false)?;
        }
        // Distinct ids for clusters side by side (MaxJobId is 67,043,328 by default).
        let first_job = 1 + (u64::from(pid) * 997 + u64::from(n) * 100_003) % 60_000_000;
        let conf = self.config(ctld_port, slurmd_port, first_job);
        File::create(&self.conf)
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .with_context(|| format!("writing {}", self.conf.display()))?;

        self.spawn(
            "slurmctld",
            Command::new("slurmctld")
                .arg("-D")
                .arg("-f")
                .arg(&self.conf),
        )?;
        self.spawn(
            "slurmd",
            Command::new("slurmd")
                .arg("-D")
                .arg("-f")
                .arg(&self.conf)
                .arg("-N")
                .arg(&self.node),
        )?;
        // sinfo itself waits while the controller is not answering yet: bounded too.
        self.wait_for(START_TIMEOUT, "the node to show idle in sinfo", |s| {
            let mut sinfo = s.command("sinfo");
            let out = run_bounded(sinfo.args(["-h", "-N", "-o", "%t"]), CLIENT_TIMEOUT)?;
            Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "idle")
        })
    }

    /// slurm.conf for this cluster.
    fn config(&self, ctld_port: u16, slurmd_port: u16, first_job: u64) -> String {
        let d = self.dir.display();
        let node = &self.node;
        format!(
            "# A private single-node cluster made by banyan-tests (tests/src/slurm.rs).\n\
             ClusterName=banyan\n\
             SlurmctldHost={node}(127.0.0.1)\n\
             SlurmctldPort={ctld_port}\n\
             SlurmdPort={slurmd_port}\n\
             AuthType=auth/munge\n\
             AuthInfo=socket={d}/munge.sock\n\
             SlurmUser=root\n\
             SlurmdUser=root\n\
             ProctrackType=proctrack/linuxproc\n\
             TaskPlugin=task/none\n\
             JobAcctGatherType=jobacct_gather/none\n\
             AccountingStorageType=accounting_storage/none\n\
             SelectType=select/cons_tres\n\
             SlurmdParameters=config_overrides\n\
             MailProg=/bin/true\n\
             MpiDefault=none\n\
             ReturnToService=2\n\
             FirstJobId={first_job}\n\
             StateSaveLocation={d}/state\n\
             SlurmdSpoolDir={d}/spool\n\
             TmpFS={d}/tmp\n\
             SlurmctldPidFile={d}/slurmctld.pid\n\
             SlurmdPidFile={d}/slurmd.pid\n\
             SlurmctldLogFile={d}/slurmctld.log\n\
             SlurmdLogFile={d}/slurmd.log\n\
             NodeName={node} NodeAddr=127.0.0.1 CPUs=4 State=UNKNOWN\n\
             PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP\n"
        )
    }

    /// Starts one daemon in the foreground (so it stays our child), its stdout and stderr to
    /// `<dir>/<name>.out`, and records its PID in `<dir>/daemons.pid` for [`reclaim_stale`].
    fn spawn(&mut self, name: &'static str, cmd: &mut Command) -> Result<()> {
        let out_path = self.dir.join(format!("{name}.out"));
        let out =
            File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let pid = child.id();
        self.daemons.push((name, child));
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemons.pid"))
            .and_then(|mut f| writeln!(f, "{pid}"))
            .context("recording the daemons' PIDs")?;
        Ok(())
    }

    /// Polls `ready` every 50 ms until it holds, a daemon exits, or `timeout` passes; the errors
    /// carry the log tails.
    fn wait_for(
        &mut self,
        timeout: Duration,
        what: &str,
        mut ready: impl FnMut(&Slurm) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if ready(self)? {
                return Ok(());
            }
            let mut exited = None;
            for (name, child) in &mut self.daemons {
                if let Some(status) = child.try_wait()? {
                    exited = Some((*name, status));
                    break;
                }
            }
            if let Some((name, status)) = exited {
                bail!(
                    "{name} exited ({status}) while waiting for {what}\n{}",
                    self.log_tails()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.log_tails()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of every daemon's log, for error messages: `<name>.log`, or what it printed
    /// (`<name>.out`) when it has no log file yet (munged in the foreground never has one; the
    /// Slurm daemons print there what they log, and errors from before their log file opened).
    pub fn log_tails(&self) -> String {
        let mut text = String::new();
        for name in ["munged", "slurmctld", "slurmd"] {
            let log = self.dir.join(format!("{name}.log"));
            let path = if log.exists() {
                log
            } else {
                self.dir.join(format!("{name}.out"))
            };
            text += &format!("--- {}:\n{}\n", path.display(), tail(&path, 20));
        }
        text
    }

    /// The cluster's private directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its slurm.conf.
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The name of its one node (the short host name).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The environment that points Slurm's clients at this cluster: `SLURM_CONF`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SLURM_CONF".into(), self.conf.display().to_string())]
    }

    /// `program` (a Slurm client: srun, sbatch, squeue, scontrol, ...) with [`Slurm::env`] set and
    /// the variables of an enclosing Slurm job removed (see [`clear_outer_slurm`]).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        clear_outer_slurm(&mut cmd);
        cmd.envs(self.env());
        cmd
    }

    /// Runs `srun ARGS` on this cluster and returns its output whatever its exit status; an error
    /// if it cannot start or takes longer than [`SRUN_TIMEOUT`] (it is then stopped, which cancels
    /// the step). The tasks get this process's environment.
    pub fn srun(&self, args: &[&str]) -> Result<Output> {
        self.srun_env(args, &[])
    }

    /// [`Slurm::srun`] with `env` added to srun's environment, which srun passes to the tasks.
    pub fn srun_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
        let mut cmd = self.command("srun");
        cmd.args(args).envs(env.iter().copied());
        run_bounded(&mut cmd, SRUN_TIMEOUT)
    }

    /// Cancels the jobs still known to the controller and waits up to 5 s for them to leave. Each
    /// client call is bounded, so a controller that stopped answering costs at most a few seconds.
    fn cancel_all(&self) {
        let jobs = |s: &Slurm| -> Vec<String> {
            let mut squeue = s.command("squeue");
            match run_bounded(squeue.args(["-h", "-o", "%i"]), CLIENT_TIMEOUT) {
                Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect(),
                _ => Vec::new(),
            }
        };
        let pending = jobs(self);
        if pending.is_empty() {
            return;
        }
        let mut scancel = self.command("scancel");
        let _ = run_bounded(scancel.args(&pending), CLIENT_TIMEOUT);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !jobs(self).is_empty() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        // Only while the controller runs: otherwise there is nobody to ask.
        let controller_up = self
            .daemons
            .iter_mut()
            .any(|(name, child)| *name == "slurmctld" && matches!(child.try_wait(), Ok(None)));
        if controller_up {
            self.cancel_all();
        }
        // All at once, then wait for each; SIGKILL after the grace. Only children not reaped yet
        // are signalled (`try_wait` remembers a status it has seen), so a PID is never reused.
        for name in DAEMONS {
            for (n, child) in &mut self.daemons {
                if *n == name && matches!(child.try_wait(), Ok(None)) {
                    if let Err(e) = signal_pid(child.id(), Signal::SIGTERM) {
                        eprintln!("slurm: stopping {name}: {e:#}");
                    }
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (name, child) in &mut self.daemons {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(20))
                    }
                    Ok(None) => {
                        eprintln!("slurm: {name} ({}) ignored SIGTERM; killing it", child.id());
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Err(e) => {
                        eprintln!("slurm: waiting for {name}: {e}");
                        break;
                    }
                }
            }
        }
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("slurm: removing {}: {e}", self.dir.display());
        }
    }
}

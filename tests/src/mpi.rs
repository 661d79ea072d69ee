//! Real MPI for integration tests: Open MPI and MPICH side by side, each called by name
//! (`mpicc.openmpi`/`mpirun.openmpi`, `mpicc.mpich`/`mpiexec.mpich`), never through the
//! alternatives.
//!
//! [`Mpi::require`] (or [`require_openmpi`], [`require_mpich`]) first: a missing package is an
//! error (unless BANYAN_TEST_LENIENT=1) and otherwise prints `SKIPPED: ...` and gives `Ok(None)`, and the test
//! returns. [`Mpi::compile`] builds a C program once per test process; [`Mpi::exact`] builds
//! `tests/mpi/exact.c`, whose communication is known exactly from its arguments, and
//! [`exact_report`] reads the JSON line it prints. [`Mpi::run`] runs a program under the MPI's own
//! launcher, as root too, with a bound on its time; [`run_bounded`] does the same for any command
//! (srun included).

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::{find_program, note_skip, strict, workspace_root};

/// How long [`Mpi::run`] lets a run take before it stops the launcher.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long [`run_bounded`] waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One of the two MPI implementations Debian installs side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mpi {
    OpenMpi,
    Mpich,
}

impl Mpi {
    /// Both, in a fixed order.
    pub const ALL: [Mpi; 2] = [Mpi::OpenMpi, Mpi::Mpich];

    /// A short name: `openmpi` or `mpich` (also the suffix of its commands and binaries).
    pub fn name(self) -> &'static str {
        match self {
            Mpi::OpenMpi => "openmpi",
            Mpi::Mpich => "mpich",
        }
    }

    /// The compiler wrapper and the Debian package that has it.
    pub fn mpicc(self) -> (&'static str, &'static str) {
        match self {
            Mpi::OpenMpi => ("mpicc.openmpi", "libopenmpi-dev"),
            Mpi::Mpich => ("mpicc.mpich", "libmpich-dev"),
        }
    }

    /// The launcher and the Debian package that has it.
    pub fn launcher(self) -> (&'static str, &'static str) {
        match self {
            Mpi::OpenMpi => ("mpirun.openmpi", "openmpi-bin"),
            Mpi::Mpich => ("mpiexec.mpich", "mpich"),
        }
    }

    /// The `srun --mpi=` plugin for programs built with this MPI. MPICH under `--mpi=pmix` runs
    /// N single-rank jobs without a word, so it must be `pmi2`.
    pub fn srun_mpi(self) -> &'static str {
        match self {
            Mpi::OpenMpi => "pmix",
            Mpi::Mpich => "pmi2",
        }
    }

    /// What is missing for this MPI here (`name (package)`, ...), or `None`.
    pub fn missing(self) -> Option<String> {
        // The mpicc wrappers run gcc, which libopenmpi-dev does not depend on.
        let missing: Vec<String> = [self.mpicc(), self.launcher(), ("gcc", "gcc")]
            .into_iter()
            .filter(|(prog, _)| find_program(prog).is_none())
            .map(|(prog, pkg)| format!("{prog} (Debian package {pkg})"))
            .collect();
        (!missing.is_empty()).then(|| missing.join(", "))
    }

    /// Whether this MPI can be used here. Missing: an error (unless BANYAN_TEST_LENIENT=1) (scripts/test installs
    /// it); otherwise prints `SKIPPED: ...` and returns `Ok(None)`, and the test should return.
    pub fn require(self) -> Result<Option<Mpi>> {
        match self.missing() {
            None => Ok(Some(self)),
            Some(what) if strict() => {
                bail!(
                    "{} is not installed (BANYAN_TEST_LENIENT=1 skips instead): missing {what}",
                    self.name()
                )
            }
            Some(what) => {
                note_skip(&format!("{} is not installed: missing {what}", self.name()));
                Ok(None)
            }
        }
    }

    /// Compiles the C program `source` with this MPI's `mpicc` into `dir` as
    /// `<stem>.<name()>` (e.g. `exact.openmpi`) and returns its path. Once per test process for
    /// each (MPI, source, dir): later calls return the same path, or the same error. The binary is
    /// written under a temporary name and renamed, so processes sharing `dir` never run half a file.
    pub fn compile(self, source: &Path, dir: &Path) -> Result<PathBuf> {
        type Cache = Mutex<HashMap<(Mpi, PathBuf, PathBuf), Result<PathBuf, String>>>;
        static BUILT: OnceLock<Cache> = OnceLock::new();
        let key = (self, source.to_path_buf(), dir.to_path_buf());
        // Held while compiling: a second test thread waits for the first build instead of racing it.
        let mut built = BUILT
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        built
            .entry(key)
            .or_insert_with(|| self.compile_now(source, dir).map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(|e| anyhow!(e))
    }

    fn compile_now(self, source: &Path, dir: &Path) -> Result<PathBuf> {
        let (mpicc, package) = self.mpicc();
        let stem = source
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| anyhow!("{}: no file name", source.display()))?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let bin = dir.join(format!("{stem}.{}", self.name()));
        let tmp = dir.join(format!(
            ".{stem}.{}.{}.tmp",
            self.name(),
            std::process::id()
        ));
        let out = Command::new(mpicc)
            .args(["-O2", "-g", "-Wall", "-Wextra", "-o"])
            .arg(&tmp)
            .arg(source)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {mpicc} (Debian package {package})"))?;
        if !out.status.success() {
            let _ = fs::remove_file(&tmp);
            bail!(
                "{mpicc} {} failed ({}):\n{}{}",
                source.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        fs::rename(&tmp, &bin)
            .with_context(|| format!("renaming {} to {}", tmp.display(), bin.display()))?;
        Ok(bin)
    }

    /// `tests/mpi/exact.c` built with this MPI into `dir` (see [`Mpi::compile`]).
    pub fn exact(self, dir: &Path) -> Result<PathBuf> {
        self.compile(&exact_source(), dir)
    }

    /// The launcher's command line for `np` ranks of `program args`, with `env` set for the
    /// launcher and passed explicitly to every rank (`-x NAME=VALUE` for Open MPI, `-genv NAME
    /// VALUE` for MPICH), and without the variables of a Slurm job around the tests (both MPIs
    /// would launch through it; see [`crate::slurm::clear_outer_slurm`]). Open MPI gets `--allow-run-as-root --oversubscribe` (more ranks than
    /// cores); MPICH's Hydra gets `-launcher fork` (one host, never ssh).
    pub fn command(
        self,
        np: usize,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Command {
        let (launcher, _) = self.launcher();
        let mut cmd = Command::new(launcher);
        crate::slurm::clear_outer_slurm(&mut cmd);
        match self {
            Mpi::OpenMpi => {
                cmd.args(["--allow-run-as-root", "--oversubscribe"]);
                for (name, value) in env {
                    cmd.arg("-x").arg(format!("{name}={value}"));
                }
            }
            Mpi::Mpich => {
                cmd.args(["-launcher", "fork"]);
                for (name, value) in env {
                    cmd.args(["-genv", name, value]);
                }
            }
        }
        cmd.arg("-np")
            .arg(np.to_string())
            .arg(program)
            .args(args)
            .envs(env.iter().copied());
        cmd
    }

    /// Runs `np` ranks of `program args` under this MPI's launcher (see [`Mpi::command`]) and
    /// returns its output whatever its exit status; an error if it cannot start or takes longer
    /// than [`RUN_TIMEOUT`] (it is then stopped, and the error shows what it printed).
    pub fn run(
        self,
        np: usize,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Output> {
        run_bounded(&mut self.command(np, program, args, env), RUN_TIMEOUT)
    }
}

/// [`Mpi::OpenMpi`] if it is installed (see [`Mpi::require`]).
pub fn require_openmpi() -> Result<Option<Mpi>> {
    Mpi::OpenMpi.require()
}

/// [`Mpi::Mpich`] if it is installed (see [`Mpi::require`]).
pub fn require_mpich() -> Result<Option<Mpi>> {
    Mpi::Mpich.require()
}

/// The path of `tests/mpi/exact.c`.
pub fn exact_source() -> PathBuf {
    workspace_root().join("tests/mpi/exact.c")
}

/// The JSON line `exact` prints from rank 0 (the one starting with `{"exact":`), parsed. Its shape:
/// `{"exact": {iter, bytes, size}, "ranks": [{rank, counts}], "total": counts}` where `counts` is
/// `{"mpi": {FUNCTION: {calls, sent_bytes, recv_bytes}}, "io": {"write"|"read": {calls, bytes}}}`;
/// tests/mpi/exact.c says what is counted and how.
pub fn exact_report(stdout: &[u8]) -> Result<Value> {
    let text = String::from_utf8_lossy(stdout);
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("{\"exact\":"));
    let line = lines
        .next()
        .ok_or_else(|| anyhow!("no `{{\"exact\":` line in the output:\n{text}"))?;
    if lines.next().is_some() {
        bail!("more than one `{{\"exact\":` line (more than one rank 0?):\n{text}");
    }
    serde_json::from_str(line).with_context(|| format!("parsing exact's line {line}"))
}

/// A pipe read to its end by a thread, into a buffer readable at any time.
struct Drain {
    buf: Arc<Mutex<Vec<u8>>>,
    done: Arc<Mutex<bool>>,
}

impl Drain {
    fn new(pipe: Option<impl Read + Send + 'static>) -> Drain {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(Mutex::new(pipe.is_none()));
        if let Some(mut pipe) = pipe {
            let (buf, done) = (buf.clone(), done.clone());
            thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(&chunk[..n]);
                }
                *done.lock().unwrap_or_else(|p| p.into_inner()) = true;
            });
        }
        Drain { buf, done }
    }

    /// What was read once the pipe is closed, or by `deadline` (a process the command started and
    /// left behind may hold the pipe open).
    fn take(self, deadline: Instant) -> Vec<u8> {
        while !*self.done.lock().unwrap_or_else(|p| p.into_inner()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Sends `signal` to `child` by its PID; one that is already gone is not an error.
fn signal(child: &Child, signal: Signal) -> Result<()> {
    let pid = Pid::from_raw(i32::try_from(child.id()).context("PID out of range")?);
    match kill(pid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow!("sending {signal} to {pid}: {e}")),
    }
}

/// Runs `cmd` (stdin closed, stdout and stderr captured) and returns its output whatever its exit
/// status. If it takes longer than `timeout` it gets SIGTERM (srun cancels its step, mpirun and
/// mpiexec stop their ranks), then SIGKILL after 5 s, and the error shows what it printed.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let stdout = Drain::new(child.stdout.take());
    let stderr = Drain::new(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {what}"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            signal(&child, Signal::SIGTERM)?;
            let grace = Instant::now() + STOP_GRACE;
            while child.try_wait()?.is_none() && Instant::now() < grace {
                thread::sleep(Duration::from_millis(20));
            }
            signal(&child, Signal::SIGKILL)?;
            let status = child.wait()?;
            let drained = Instant::now() + Duration::from_secs(2);
            bail!(
                "{what} did not finish within {timeout:?} and was stopped ({status}).\n\
                 stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&stdout.take(drained)),
                String::from_utf8_lossy(&stderr.take(drained))
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    let drained = Instant::now() + Duration::from_secs(10);
    Ok(Output {
        status,
        stdout: stdout.take(drained),
        stderr: stderr.take(drained),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_report_finds_its_line() {
        let out = b"noise\n{\"exact\":{\"iter\":1,\"bytes\":2,\"size\":2},\"ranks\":[],\"total\":{}}\nmore\n";
        let v = exact_report(out).unwrap();
        assert_eq!(v["exact"]["size"], 2);
        assert!(exact_report(b"nothing here\n").is_err());
        let twice = b"{\"exact\":{}}\n{\"exact\":{}}\n";
        assert!(exact_report(twice).is_err());
    }

    #[test]
    fn run_bounded_stops_what_runs_too_long() {
        let started = Instant::now();
        let err = run_bounded(
            Command::new("sh").args(["-c", "echo started; exec sleep 30"]),
            Duration::from_millis(300),
        )
        .unwrap_err();
        // Liveness, not timing: stopped long before the 30 s sleep would have ended.
        assert!(started.elapsed() < Duration::from_secs(20));
        let text = format!("{err:#}");
        assert!(text.contains("did not finish"), "{text}");
        assert!(text.contains("started"), "{text}");
    }

    #[test]
    fn run_bounded_returns_the_output() {
        let out = run_bounded(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }
}

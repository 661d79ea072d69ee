//! What the benchmarks read of a running process in `/proc`: the CPU time it has used (all its
//! threads, user and system, from `/proc/PID/stat`), how many times its threads were put on a CPU
//! (wake-ups, from `/proc/PID/task/*/schedstat`) and its memory (`VmRSS`, `VmHWM`, `RssAnon`
//! from `/proc/PID/status`).
//!
//! CPU times come in clock ticks (`sysconf(_SC_CLK_TCK)`, 100 per second on Linux), so a window
//! measures to 10 ms: over 60 s that is 0.017% of one core.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::unistd::{sysconf, SysconfVar};

/// Clock ticks per second, the unit of `utime` and `stime` in `/proc/PID/stat`.
pub fn clock_ticks() -> Result<u64> {
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => Ok(t as u64),
        Ok(_) => bail!("sysconf(_SC_CLK_TCK) gave no value"),
        Err(e) => Err(anyhow!("sysconf(_SC_CLK_TCK): {e}")),
    }
}

/// How many times the threads of process `pid` have run on a CPU so far (the third field of each
/// thread's `/proc/PID/task/TID/schedstat`): each is a wake-up, from a timer, a packet or another
/// thread. Threads that exited are not counted, so read it over a window of a steady process.
pub fn wakeups(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .nth(2)
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("{}: no run count", path.display()))?;
    }
    Ok(total)
}

/// The time the threads of process `pid` have run on a CPU so far, in nanoseconds (the first
/// field of each thread's `/proc/PID/task/TID/schedstat`): the scheduler's own account, not
/// rounded to clock ticks, so a window of a quiet process measures to the microsecond. Threads
/// that exited are not counted, as in [`wakeups`].
pub fn run_time(pid: u32) -> Result<Duration> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0u64;
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = entry?.path().join("schedstat");
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("{}: no run time", path.display()))?;
    }
    Ok(Duration::from_nanos(total))
}

/// The CPU time (user + system, every thread) process `pid` has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces or ')': the fields that
    // follow start after the last ')'. utime and stime are fields 14 and 15, so the 12th and 13th
    // after it (the state, field 3, is the first).
    let rest = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize, what: &str| -> Result<u64> {
        fields
            .get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path}: no {what}"))
    };
    let ticks = field(11, "utime")? + field(12, "stime")?;
    let per_s = clock_ticks()?;
    Ok(Duration::from_secs(ticks / per_s)
        + Duration::from_nanos(ticks % per_s * 1_000_000_000 / per_s))
}

/// A process's memory at one moment, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Resident set size (`VmRSS`).
    pub rss_kib: u64,
    /// The highest resident set size since the process started (`VmHWM`).
    pub peak_kib: u64,
    /// The anonymous part of the resident set (`RssAnon`: heap, stacks), as opposed to the pages
    /// of the program and its libraries, which are clean and shared with the page cache.
    pub anon_kib: u64,
}

impl Memory {
    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }

    pub fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }

    pub fn anon_mib(&self) -> f64 {
        self.anon_kib as f64 / 1024.0
    }
}

/// `VmRSS`, `VmHWM` and `RssAnon` of process `pid`.
pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib = |key: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("{path}: no {key}"))
    };
    Ok(Memory {
        rss_kib: kib("VmRSS:")?,
        peak_kib: kib("VmHWM:")?,
        anon_kib: kib("RssAnon:")?,
    })
}

/// The CPU a process uses over a window of wall time: [`CpuWindow::start`], then
/// [`CpuWindow::finish`].
#[derive(Debug, Clone, Copy)]
pub struct CpuWindow {
    pid: u32,
    cpu: Duration,
    at: Instant,
}

/// What [`CpuWindow::finish`] measured.
#[derive(Debug, Clone, Copy)]
pub struct CpuUse {
    /// CPU time used in the window.
    pub cpu: Duration,
    /// The window's wall time.
    pub wall: Duration,
}

impl CpuUse {
    /// The CPU used as a percentage of one core.
    pub fn percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// The CPU time per event in microseconds, for `events` in the window (NaN when none).
    pub fn micros_per(&self, events: u64) -> f64 {
        if events == 0 {
            return f64::NAN;
        }
        self.cpu.as_secs_f64() * 1e6 / events as f64
    }
}

impl CpuWindow {
    pub fn start(pid: u32) -> Result<CpuWindow> {
        Ok(CpuWindow {
            pid,
            cpu: cpu_time(pid)?,
            at: Instant::now(),
        })
    }

    pub fn finish(&self) -> Result<CpuUse> {
        let cpu = cpu_time(self.pid)?;
        Ok(CpuUse {
            cpu: cpu.saturating_sub(self.cpu),
            wall: self.at.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        // Burn CPU until the kernel has counted some (its resolution is a clock tick, 10 ms): how
        // much CPU a stretch of wall time gives depends on the machine's load, so the loop waits
        // for the count itself, bounded by a liveness deadline that only turns a hang into a
        // failure.
        const LIVENESS: Duration = Duration::from_secs(60);
        let start = Instant::now();
        let mut x = 0u64;
        loop {
            for _ in 0..1_000_000 {
                x = x.wrapping_add(std::hint::black_box(1));
            }
            if cpu_time(pid).expect("own /proc/self/stat") >= Duration::from_millis(20) {
                break;
            }
            assert!(
                start.elapsed() < LIVENESS,
                "no CPU time counted after {LIVENESS:?} of burning it"
            );
        }
        assert!(x > 0);
        let m = memory(pid).expect("own /proc/self/status");
        assert!(m.rss_kib > 0 && m.peak_kib >= m.rss_kib);
    }
}

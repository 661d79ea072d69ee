//! Time for the hot path: raw ticks, and their rate.
//!
//! On x86-64 a tick is a time-stamp-counter cycle (`rdtsc`, about 20 cycles, no system call, no
//! vDSO page to touch). The rate is not read from `/proc/cpuinfo` (its "MHz" is the current core
//! clock, not the TSC's): it is measured against `CLOCK_MONOTONIC` over the process's own life,
//! from the library's constructor to the moment a report needs it, and frozen once that span
//! reaches [`FREEZE_AFTER_NS`] (so every later report converts with the same rate and seconds
//! never go backwards). A process that reports before then (it exited within 100 ms) converts with
//! the rate measured so far: a few microseconds of span already give it to better than 1%.
//! This assumes an invariant TSC, which every x86-64 server of the last decade has and which
//! Linux itself relies on when its clocksource is `tsc`.
//!
//! Elsewhere a tick is a nanosecond of `CLOCK_MONOTONIC` (through the vDSO).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Span of calibration after which the rate is frozen.
const FREEZE_AFTER_NS: u64 = 100_000_000;

static T0_TICKS: AtomicU64 = AtomicU64::new(0);
static T0_NS: AtomicU64 = AtomicU64::new(0);
/// The frozen rate (f64 bits), 0 until frozen.
static FROZEN: AtomicU64 = AtomicU64::new(0);

/// The current tick.
#[inline(always)]
pub fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions; every x86-64 CPU has it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        mono_ns()
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// Milliseconds since the Unix epoch (gauge timestamps).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts the calibration span; called from the library's constructor.
pub fn start() {
    T0_NS.store(mono_ns(), Relaxed);
    T0_TICKS.store(ticks(), Relaxed);
}

/// Ticks per second.
pub fn ticks_per_second() -> f64 {
    if cfg!(not(target_arch = "x86_64")) {
        return 1e9;
    }
    let frozen = FROZEN.load(Relaxed);
    if frozen != 0 {
        return f64::from_bits(frozen);
    }
    let (t0, n0) = (T0_TICKS.load(Relaxed), T0_NS.load(Relaxed));
    let (t1, n1) = (ticks(), mono_ns());
    let span_ns = n1.saturating_sub(n0);
    let span_ticks = t1.saturating_sub(t0);
    if n0 == 0 || span_ns < 1_000 || span_ticks == 0 {
        // Not started, or no span yet: a guess that is right within a factor of two or so.
        return 2.5e9;
    }
    let rate = span_ticks as f64 * 1e9 / span_ns as f64;
    if span_ns >= FREEZE_AFTER_NS {
        FROZEN.store(rate.to_bits(), Relaxed);
    }
    rate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_measured_rate_converts_ticks_to_about_real_time() {
        start();
        let (t0, n0) = (ticks(), mono_ns());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (t1, n1) = (ticks(), mono_ns());
        let secs = (t1 - t0) as f64 / ticks_per_second();
        let real = (n1 - n0) as f64 / 1e9;
        assert!((secs - real).abs() < real * 0.05, "{secs} s vs {real} s");
    }
}

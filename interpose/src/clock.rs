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
    let (rate, freeze) = rate_over((t0, n0), (t1, n1));
    if freeze {
        FROZEN.store(rate.to_bits(), Relaxed);
    }
    rate
}

/// Ticks per second over the span from `(ticks, ns)` reading `start` to `now`, and whether the
/// span is long enough to freeze it.
fn rate_over(start: (u64, u64), now: (u64, u64)) -> (f64, bool) {
    let span_ticks = now.0.saturating_sub(start.0);
    let span_ns = now.1.saturating_sub(start.1);
    if start.1 == 0 || span_ns < 1_000 || span_ticks == 0 {
        // Not started, or no span yet: a guess that is right within a factor of two or so.
        return (2.5e9, false);
    }
    (
        span_ticks as f64 * 1e9 / span_ns as f64,
        span_ns >= FREEZE_AFTER_NS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_ticks_over_nanoseconds_and_freezes_after_the_span() {
        // 3 GHz over 1 ms: measured, not yet frozen.
        assert_eq!(
            rate_over((1_000, 5_000_000), (3_001_000, 6_000_000)),
            (3e9, false)
        );
        // 2.2 GHz over exactly the freezing span.
        assert_eq!(
            rate_over((0, 1), (220_000_000, 1 + FREEZE_AFTER_NS)),
            (2.2e9, true)
        );
        // Not started, too short a span, or no ticks: the guess, never frozen.
        assert_eq!(rate_over((5, 0), (3_000_005, 1_000_000)), (2.5e9, false));
        assert_eq!(rate_over((0, 1_000), (3_000, 1_999)), (2.5e9, false));
        assert_eq!(rate_over((7, 1_000), (7, 1_000_000)), (2.5e9, false));
        // A clock read before the start (another thread's) is no span, not a negative one.
        assert_eq!(rate_over((100, 2_000_000), (50, 1_000_000)), (2.5e9, false));
    }

    /// With the real clocks: once the process has lived past the span, the rate is frozen, so
    /// every later report converts with the same rate (seconds never go backwards). Nothing here
    /// depends on how long anything took: the sleep only makes the span at least that long.
    #[test]
    fn the_rate_is_frozen_once_the_process_lived_past_the_span() {
        start();
        std::thread::sleep(std::time::Duration::from_nanos(FREEZE_AFTER_NS));
        let first = ticks_per_second();
        assert!(first.is_finite() && first > 0.0, "{first}");
        let later = ticks_per_second();
        assert_eq!(first.to_bits(), later.to_bits());
        if cfg!(target_arch = "x86_64") {
            assert_eq!(FROZEN.load(Relaxed), first.to_bits());
        }
    }
}

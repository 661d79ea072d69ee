//! [`Cumulative`]: a kernel counter (since boot, since the device appeared) turned into a count
//! since the agent first saw it, and [`per_second`] for the rates derived from such counts.

use std::collections::HashMap;

/// Counts what a kernel counter gained since the first [`Cumulative::update`].
///
/// The first value seen is the baseline: a restarted agent starts again at zero, because the tree
/// keeps a dead agent's last counts and would otherwise count the time before the restart twice.
/// When the kernel's value goes backwards (a 32-bit wrap, a device reset, an interface deleted and
/// created again under the same name) the counter started again from zero in between, so the new
/// value is all new counts: it is added, and the total never goes backwards.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Cumulative {
    last: Option<u64>,
    total: u64,
}

impl Cumulative {
    /// Takes the kernel's current value; returns the count since the baseline.
    pub fn update(&mut self, raw: u64) -> u64 {
        if let Some(last) = self.last {
            let gained = if raw >= last { raw - last } else { raw };
            self.total = self.total.saturating_add(gained);
        }
        self.last = Some(raw);
        self.total
    }

    /// Like [`Cumulative::update`], for a kernel counter that never starts again from zero but may
    /// step back a little: proc(5) warns that `/proc/stat`'s iowait "will decrease in certain
    /// conditions", and idle has been seen to do the same. A step back counts nothing, and counting
    /// resumes once the kernel passes the highest value seen, so the total is the kernel's growth
    /// since the baseline and never jumps by the whole value since boot, as a reset would.
    pub fn update_no_reset(&mut self, raw: u64) -> u64 {
        match self.last {
            Some(last) if raw <= last => {}
            Some(last) => {
                self.total = self.total.saturating_add(raw - last);
                self.last = Some(raw);
            }
            None => self.last = Some(raw),
        }
        self.total
    }

    /// The count since the baseline, as of the last update.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// `delta` per second over `elapsed_ms`; `None` when no time passed (two samples in the same
/// millisecond, or a wall clock that stepped back), so a rate is never infinite or negative.
pub fn per_second(delta: u64, elapsed_ms: u64) -> Option<f64> {
    (elapsed_ms > 0).then(|| delta as f64 * 1000.0 / elapsed_ms as f64)
}

/// Keeps the state of at most `max_gone` devices not seen in the current `wave` (the most recently
/// seen ones), so hosts that churn through devices (containers' veths, LVM snapshots) do not grow
/// the map forever. `seen` gives the wave a device was last seen in.
pub(crate) fn forget_gone<T>(
    map: &mut HashMap<String, T>,
    wave: u64,
    max_gone: usize,
    seen: impl Fn(&T) -> u64,
) {
    let gone = map.values().filter(|v| seen(v) < wave).count();
    if gone <= max_gone {
        return;
    }
    let mut by_age: Vec<(u64, String)> = map
        .iter()
        .filter(|(_, v)| seen(v) < wave)
        .map(|(name, v)| (seen(v), name.clone()))
        .collect();
    by_age.sort_unstable();
    for (_, name) in by_age.into_iter().take(gone - max_gone) {
        map.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_is_the_baseline() {
        let mut c = Cumulative::default();
        assert_eq!(c.update(1_000_000), 0);
        assert_eq!(c.update(1_000_250), 250);
        assert_eq!(c.update(1_000_250), 250);
        assert_eq!(c.total(), 250);
    }

    #[test]
    fn counter_going_backwards_keeps_counting_from_the_new_value() {
        let mut c = Cumulative::default();
        c.update(5_000);
        assert_eq!(c.update(5_100), 100);
        // Reset (interface re-created): 40 counted since, added to the 100 already counted.
        assert_eq!(c.update(40), 140);
        assert_eq!(c.update(60), 160);
        // A 32-bit wrap: what is past zero is counted, the total never goes back.
        c.update(u32::MAX as u64 - 10);
        let before = c.total();
        assert_eq!(c.update(5), before + 5);
    }

    #[test]
    fn a_counter_that_never_resets_ignores_steps_back() {
        let mut c = Cumulative::default();
        assert_eq!(c.update_no_reset(27_278), 0);
        assert_eq!(c.update_no_reset(27_300), 22);
        // A tick back (iowait on some kernels): nothing counted, and not the 27,299 since boot.
        assert_eq!(c.update_no_reset(27_299), 22);
        // Counting resumes above the highest value seen.
        assert_eq!(c.update_no_reset(27_300), 22);
        assert_eq!(c.update_no_reset(27_310), 32);
    }

    #[test]
    fn rates_use_elapsed_time() {
        assert_eq!(per_second(3_000, 1_500), Some(2_000.0));
        assert_eq!(per_second(10, 250), Some(40.0));
        assert_eq!(per_second(10, 0), None);
    }
}

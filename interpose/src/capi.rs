//! The C API a program may call to report its own metrics (see `include/banyan.h`).
//!
//! `banyan_counter_add` and `banyan_gauge_set` take a lock (these are the program's own,
//! occasional calls, not the hot path of an intercepted function) and keep what arrived since
//! the last update; the reporter drains it into every update. Names must be valid Prometheus
//! metric names, must not start with `banyan_` (the library's own series), and keep the kind of
//! their first use; at most [`MAX_SERIES`] names per process. Without `banyan-run` the calls
//! succeed and report nothing.

use crate::clock::unix_ms;
use banyan_protocol::exposition::is_metric_name;
use banyan_protocol::metric::{Gauge, MetricSet, Value};
use libc::{c_char, c_int};
use std::collections::BTreeMap;
use std::ffi::CStr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

/// Names one process may define.
pub const MAX_SERIES: usize = 1000;
/// Longest name accepted.
pub const MAX_NAME: usize = 200;

#[derive(Default)]
struct User {
    /// Every name seen, and whether it is a counter.
    kinds: BTreeMap<String, bool>,
    counters: BTreeMap<String, f64>,
    gauges: BTreeMap<String, Gauge>,
}

static USER: AtomicPtr<Mutex<User>> = AtomicPtr::new(std::ptr::null_mut());

fn user() -> &'static Mutex<User> {
    let p = USER.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: leaked boxes, never freed.
        return unsafe { &*p };
    }
    let fresh = Box::into_raw(Box::new(Mutex::new(User::default())));
    match USER.compare_exchange(
        std::ptr::null_mut(),
        fresh,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // SAFETY: just published, never freed.
        Ok(_) => unsafe { &*fresh },
        Err(other) => {
            // SAFETY: ours lost the race and was never shared.
            drop(unsafe { Box::from_raw(fresh) });
            // SAFETY: the winner's box, never freed.
            unsafe { &*other }
        }
    }
}

/// In a forked child: the parent's lock may be held by a thread that does not exist here, and
/// what the parent collected is the parent's to report.
pub fn after_fork_child() {
    let fresh = Box::into_raw(Box::new(Mutex::new(User::default())));
    USER.store(fresh, Ordering::Release);
}

/// Whether `name` may be used through the C API.
pub fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME && is_metric_name(name) && !name.starts_with("banyan_")
}

fn record(name: *const c_char, counter: bool, value: f64) -> c_int {
    if name.is_null() || !value.is_finite() || (counter && value < 0.0) {
        return -1;
    }
    // SAFETY: the caller passes a NUL-terminated string (the API's contract).
    let Ok(name) = unsafe { CStr::from_ptr(name) }.to_str() else {
        return -1;
    };
    if !valid_name(name) {
        return -1;
    }
    let mut u = match user().lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    match u.kinds.get(name) {
        Some(&was_counter) if was_counter != counter => return -1,
        Some(_) => {}
        None => {
            if u.kinds.len() >= MAX_SERIES {
                return -1;
            }
            u.kinds.insert(name.to_string(), counter);
        }
    }
    if counter {
        *u.counters.entry(name.to_string()).or_insert(0.0) += value;
    } else {
        let sample = Gauge::sample(value, unix_ms());
        match u.gauges.get_mut(name) {
            Some(g) => g.merge(&sample),
            None => {
                u.gauges.insert(name.to_string(), sample);
            }
        }
    }
    0
}

/// Adds `value` (finite, >= 0) to the counter `name`. 0 on success, -1 on a bad name or value.
#[no_mangle]
pub unsafe extern "C" fn banyan_counter_add(name: *const c_char, value: f64) -> c_int {
    std::panic::catch_unwind(|| record(name, true, value)).unwrap_or(-1)
}

/// Sets the gauge `name` to `value` (finite). 0 on success, -1 on a bad name or value.
#[no_mangle]
pub unsafe extern "C" fn banyan_gauge_set(name: *const c_char, value: f64) -> c_int {
    std::panic::catch_unwind(|| record(name, false, value)).unwrap_or(-1)
}

/// Moves what arrived since the last call into `set`.
pub fn drain(set: &mut MetricSet) {
    let mut u = match user().lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    for (name, v) in std::mem::take(&mut u.counters) {
        if v > 0.0 {
            set.add_counter(&name, v);
        }
    }
    for (name, g) in std::mem::take(&mut u.gauges) {
        set.merge_value(&name, &Value::Gauge(g));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(name: &str, v: f64) -> c_int {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: a valid C string.
        unsafe { banyan_counter_add(c.as_ptr(), v) }
    }

    fn set(name: &str, v: f64) -> c_int {
        let c = std::ffi::CString::new(name).unwrap();
        // SAFETY: a valid C string.
        unsafe { banyan_gauge_set(c.as_ptr(), v) }
    }

    #[test]
    fn only_prometheus_names_outside_banyans_prefix_are_accepted() {
        for ok in ["app_iterations_total", "_x", "a:b_c9", "Solver:residual"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "9lives",
            "has space",
            "dash-ed",
            "é",
            "banyan_mpi_calls_total",
            "x{label=\"v\"}",
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(!valid_name(&"x".repeat(MAX_NAME + 1)));
        // SAFETY: a null name is refused before it is read.
        assert_eq!(unsafe { banyan_counter_add(std::ptr::null(), 1.0) }, -1);
        // SAFETY: as above.
        assert_eq!(unsafe { banyan_gauge_set(std::ptr::null(), 1.0) }, -1);
        assert_eq!(add("not valid", 1.0), -1);
    }

    #[test]
    fn values_are_checked_and_kinds_stay_what_they_were() {
        assert_eq!(add("capi_test_steps_total", 2.0), 0);
        assert_eq!(add("capi_test_steps_total", 0.5), 0);
        assert_eq!(add("capi_test_steps_total", -1.0), -1);
        assert_eq!(add("capi_test_steps_total", f64::NAN), -1);
        assert_eq!(add("capi_test_steps_total", f64::INFINITY), -1);
        assert_eq!(
            set("capi_test_steps_total", 1.0),
            -1,
            "a counter cannot become a gauge"
        );
        assert_eq!(set("capi_test_temperature", -3.5), 0);
        assert_eq!(set("capi_test_temperature", 4.0), 0);
        assert_eq!(set("capi_test_temperature", f64::NAN), -1);
        assert_eq!(
            add("capi_test_temperature", 1.0),
            -1,
            "a gauge cannot become a counter"
        );
        let mut out = MetricSet::new();
        drain(&mut out);
        assert_eq!(out.counter("capi_test_steps_total"), 2.5);
        match out.get("capi_test_temperature") {
            Some(Value::Gauge(g)) => {
                assert_eq!((g.min, g.max, g.hits, g.last), (-3.5, 4.0, 2, 4.0));
            }
            other => panic!("{other:?}"),
        }
        let mut again = MetricSet::new();
        drain(&mut again);
        assert!(again.get("capi_test_steps_total").is_none(), "drained once");
    }
}

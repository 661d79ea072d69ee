//! Jobs: what describes one, how its metrics travel inside a [`MetricSet`], and how its id may be
//! used outside.
//!
//! A job's series ride in the same metric sets as the node's own, under a scoped key
//! `"\u{1}" + job id + "\u{1}" + series key`. The control character cannot start a metric name nor
//! appear in a job id, so the two never mix, and every rule of the reduction (cumulative counters,
//! frozen values of dead children, debt of moved subtrees) holds for jobs with no extra code. The
//! keys of one job are contiguous in the set's order, so a job's view is one range scan.
//!
//! Job ids come from users' environments and from ranks: they are checked here ([`check_job_id`])
//! and turned into file names only through [`file_stem`].

use crate::metric::MetricSet;
use serde::{Deserialize, Serialize};

/// Opens and closes the job id in a scoped key.
pub const SCOPE: char = '\u{1}';

/// Longest job id accepted.
pub const MAX_JOB_ID: usize = 128;

/// Counters the agents keep for every job (scoped to it), from which the root decides its end.
pub const RANKS_STARTED: &str = "banyan_job_ranks_started_total";
/// Ranks that ended, whatever way (crashed ones included).
pub const RANKS_ENDED: &str = "banyan_job_ranks_ended_total";
/// Ranks that ended by a signal, an abort, or a lost connection.
pub const RANKS_CRASHED: &str = "banyan_job_ranks_crashed_total";
/// The same for the processes the ranks started (forked or executed), which are not ranks.
pub const PROCESSES_STARTED: &str = "banyan_job_processes_started_total";
pub const PROCESSES_ENDED: &str = "banyan_job_processes_ended_total";
pub const PROCESSES_CRASHED: &str = "banyan_job_processes_crashed_total";
/// Every counter above: the book's, not the job's own series.
pub const LIFECYCLE: [&str; 6] = [
    RANKS_STARTED,
    RANKS_ENDED,
    RANKS_CRASHED,
    PROCESSES_STARTED,
    PROCESSES_ENDED,
    PROCESSES_CRASHED,
];

/// A job as `banyan-run` describes it; the Metric Proxy's `/job/list` shape, plus the user.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct JobDesc {
    pub jobid: String,
    pub command: String,
    /// Ranks the launcher started (0: not known).
    pub size: u64,
    pub nodelist: String,
    pub partition: String,
    pub cluster: String,
    pub run_dir: String,
    /// Unix seconds.
    pub start_time: u64,
    /// Unix seconds; 0 while running.
    pub end_time: u64,
    /// The uid the ranks run as, as the kernel told the agent (not as the rank claimed).
    #[serde(default)]
    pub uid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobIdError {
    #[error("empty job id")]
    Empty,
    #[error("job id longer than {MAX_JOB_ID} bytes")]
    TooLong,
    #[error("job id {0:?} has a control character")]
    Control(String),
    #[error("job id {0:?} is reserved (main, and names starting with \"Node: \")")]
    Reserved(String),
}

/// Checks a job id from outside: 1 to [`MAX_JOB_ID`] bytes of printable text, not `main` and not
/// `Node: ...` (those name the cluster's sum and the nodes in the Metric Proxy's routes). Quotes,
/// slashes, `<`, `&` and spaces are allowed: they are escaped wherever the id is used.
pub fn check_job_id(id: &str) -> Result<(), JobIdError> {
    if id.is_empty() {
        return Err(JobIdError::Empty);
    }
    if id.len() > MAX_JOB_ID {
        return Err(JobIdError::TooLong);
    }
    if id.chars().any(char::is_control) {
        return Err(JobIdError::Control(id.to_string()));
    }
    if id == "main" || id.starts_with("Node: ") {
        return Err(JobIdError::Reserved(id.to_string()));
    }
    Ok(())
}

/// The key of `series` scoped to `job`.
pub fn scoped_key(job: &str, series: &str) -> String {
    let mut k = String::with_capacity(job.len() + series.len() + 2);
    k.push(SCOPE);
    k.push_str(job);
    k.push(SCOPE);
    k.push_str(series);
    k
}

/// `(job, series)` of a scoped key; `None` for a node's own series.
pub fn split_scoped(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(SCOPE)?.split_once(SCOPE)
}

fn prefix(job: &str) -> String {
    scoped_key(job, "")
}

/// One job's series, unscoped.
pub fn job_view(set: &MetricSet, job: &str) -> MetricSet {
    let p = prefix(job);
    let mut out = MetricSet::new();
    for (k, v) in set.values.range(p.clone()..) {
        let Some(series) = k.strip_prefix(p.as_str()) else {
            break;
        };
        out.values.insert(series.to_string(), v.clone());
    }
    out
}

/// The series that belong to no job (the nodes' own).
pub fn node_view(set: &MetricSet) -> MetricSet {
    let mut out = MetricSet::new();
    out.values.extend(
        set.values
            .iter()
            .filter(|(k, _)| !k.starts_with(SCOPE))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    out
}

/// The ids of the jobs that have series in `set`.
pub fn jobs_in(set: &MetricSet) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for k in set.values.keys() {
        if let Some((job, _)) = split_scoped(k) {
            if out.last().map(String::as_str) != Some(job) {
                out.push(job.to_string());
            }
        }
    }
    out
}

/// Drops every series of `job` from `set`.
pub fn remove_job(set: &mut MetricSet, job: &str) {
    let p = prefix(job);
    let doomed: Vec<String> = set
        .values
        .range(p.clone()..)
        .take_while(|(k, _)| k.starts_with(p.as_str()))
        .map(|(k, _)| k.clone())
        .collect();
    for k in doomed {
        set.values.remove(&k);
    }
}

/// A file name for `job` that is safe anywhere: ASCII letters, digits, `-` and `_` as they are,
/// every other byte as `%XX` (so `.`, `/` and `%` itself are escaped, and two ids never share a
/// name).
pub fn file_stem(job: &str) -> String {
    let mut out = String::with_capacity(job.len());
    for b in job.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn job_series_and_node_series_stay_apart() {
        let mut set = MetricSet::new();
        set.set_counter("cpu_total", 1.0);
        set.set_counter(&scoped_key("42.0", "mpi_send_calls_total"), 7.0);
        set.set_counter(&scoped_key("42.0", "io_write_bytes_total"), 9.0);
        set.set_counter(&scoped_key("42.01", "mpi_send_calls_total"), 5.0);
        assert_eq!(job_view(&set, "42.0").len(), 2);
        assert_eq!(job_view(&set, "42.0").counter("mpi_send_calls_total"), 7.0);
        assert_eq!(job_view(&set, "42.01").len(), 1);
        assert_eq!(node_view(&set).len(), 1);
        assert_eq!(jobs_in(&set), vec!["42.0".to_string(), "42.01".to_string()]);
        remove_job(&mut set, "42.0");
        assert_eq!(jobs_in(&set), vec!["42.01".to_string()]);
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn hostile_ids_are_refused_or_escaped() {
        assert!(check_job_id("").is_err());
        assert!(check_job_id("main").is_err());
        assert!(check_job_id("Node: cn1").is_err());
        assert!(check_job_id("a\nb").is_err());
        assert!(check_job_id(&"x".repeat(MAX_JOB_ID + 1)).is_err());
        for ok in ["1234.0", "../../etc/passwd", "<script>", "a \"b\" & 'c'"] {
            assert!(check_job_id(ok).is_ok(), "{ok}");
        }
        assert_eq!(file_stem("../x/y"), "%2E%2E%2Fx%2Fy");
        assert_eq!(file_stem("1234.0"), "1234%2E0");
    }

    proptest! {
        #[test]
        fn file_stems_are_safe_and_distinct(a in "\\PC{1,40}", b in "\\PC{1,40}") {
            let (sa, sb) = (file_stem(&a), file_stem(&b));
            prop_assert!(sa.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'%'));
            prop_assert!(!sa.starts_with('.'));
            prop_assert_eq!(a == b, sa == sb);
        }

        #[test]
        fn any_checked_id_round_trips_through_a_scoped_key(id in "\\PC{1,40}", series in "[a-z_]{1,20}") {
            prop_assume!(check_job_id(&id).is_ok());
            let k = scoped_key(&id, &series);
            prop_assert_eq!(split_scoped(&k), Some((id.as_str(), series.as_str())));
        }
    }
}

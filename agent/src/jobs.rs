//! The jobs whose ranks run on this node: their merged metrics and their ranks' lifecycle.
//!
//! Ranks report deltas ([`banyan_protocol::ingest::RankMsg::Update`]); this keeps each job's
//! cumulative values, merged over its ranks on the node (and over the processes the ranks
//! started, [`Member::Process`]), and counts ranks started, ended and crashed, and processes
//! apart. At every wave the jobs' series join the node's own metrics under scoped keys
//! ([`banyan_protocol::job`]), so they reduce up the tree like everything else. The node's digest
//! says how many ranks of each job still run here, which is how the root accounts for ranks on a
//! node that died.
//!
//! Pure state: no sockets, no clock. [`crate::ingest`] feeds it.

use banyan_protocol::job::{self, JobDesc};
use banyan_protocol::metric::{MetricSet, Value};
use banyan_protocol::wire::JobOnNode;
use std::collections::BTreeMap;

/// Series one job may have on one node: a rank cannot flood the tree.
pub const MAX_SERIES_PER_JOB: usize = 10_000;

/// Waves after a job appears on a node during which its full description rides in every digest;
/// after that, once every [`DESC_EVERY`] waves (a root that restarted learns it again).
const DESC_FIRST: u32 = 3;
const DESC_EVERY: u32 = 60;

/// What a stream is to its job: a rank (a process the launcher started) or a process a rank
/// started (forked or executed). Both add their counts to the job; they are counted apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member {
    Rank,
    Process,
}

/// One kind of member's lifecycle on this node.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    running: u32,
    started: u64,
    ended: u64,
    crashed: u64,
}

#[derive(Debug)]
struct LocalJob {
    desc: JobDesc,
    metrics: MetricSet,
    ranks: Tally,
    processes: Tally,
    waves: u32,
}

impl LocalJob {
    fn tally(&mut self, member: Member) -> &mut Tally {
        match member {
            Member::Rank => &mut self.ranks,
            Member::Process => &mut self.processes,
        }
    }

    /// Ranks and processes still running here: the job is over on this node only when both are,
    /// so a rank's end never overtakes the last counts of a process it started.
    fn running(&self) -> u32 {
        self.ranks.running.saturating_add(self.processes.running)
    }
}

#[derive(Debug, Default)]
pub struct LocalJobs {
    jobs: BTreeMap<String, LocalJob>,
}

/// Why a rank's hello or update was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadJobId(String),
    #[error("job {job:?} belongs to uid {owner}; a rank of uid {uid} cannot report into it")]
    OtherUser { job: String, owner: u32, uid: u32 },
}

/// Series of an update that were dropped, with why (logged by the caller).
#[derive(Debug, Default, PartialEq)]
pub struct Dropped {
    pub series: Vec<(String, &'static str)>,
}

impl LocalJobs {
    pub fn new() -> LocalJobs {
        LocalJobs::default()
    }

    /// A rank says hello. `uid` comes from the kernel. The job is created on its first rank; the
    /// first rank's description is kept.
    pub fn start_rank(&mut self, desc: JobDesc, uid: u32) -> Result<(), Refusal> {
        self.start(desc, uid, Member::Rank)
    }

    /// A rank or a process of one says hello (a process may be the first the node hears of its
    /// job: its rank runs elsewhere or connected later).
    pub fn start(&mut self, mut desc: JobDesc, uid: u32, member: Member) -> Result<(), Refusal> {
        job::check_job_id(&desc.jobid).map_err(|e| Refusal::BadJobId(e.to_string()))?;
        if let Some(j) = self.jobs.get_mut(&desc.jobid) {
            if j.desc.uid != uid {
                return Err(Refusal::OtherUser {
                    job: desc.jobid,
                    owner: j.desc.uid,
                    uid,
                });
            }
            let t = j.tally(member);
            t.running += 1;
            t.started += 1;
            return Ok(());
        }
        desc.uid = uid;
        desc.end_time = 0;
        let mut j = LocalJob {
            desc,
            metrics: MetricSet::new(),
            ranks: Tally::default(),
            processes: Tally::default(),
            waves: 0,
        };
        let t = j.tally(member);
        t.running = 1;
        t.started = 1;
        self.jobs.insert(j.desc.jobid.clone(), j);
        Ok(())
    }

    /// Adds a rank's delta to its job. Series that would corrupt the job are dropped and listed:
    /// a scoped or malformed name, a negative or non-finite counter increment, a kind that differs
    /// from the one the job already has, and series past [`MAX_SERIES_PER_JOB`].
    pub fn update(&mut self, jobid: &str, delta: &MetricSet) -> Dropped {
        let mut dropped = Dropped::default();
        let Some(j) = self.jobs.get_mut(jobid) else {
            return dropped;
        };
        for (name, value) in &delta.values {
            let why = check_series(name, value).or_else(|| match (j.metrics.get(name), value) {
                (Some(Value::Counter(_)), Value::Counter(_))
                | (Some(Value::Gauge(_)), Value::Gauge(_))
                | (Some(Value::Histogram(_)), Value::Histogram(_)) => None,
                (Some(_), _) => Some("sent as another kind than before"),
                (None, _) if j.metrics.len() >= MAX_SERIES_PER_JOB => {
                    Some("too many series in this job")
                }
                (None, _) => None,
            });
            match why {
                Some(why) => dropped.series.push((name.clone(), why)),
                None => j.metrics.merge_value(name, value),
            }
        }
        dropped
    }

    /// A rank ended: `crashed` when it said so or its stream ended without saying how. Returns
    /// whether nothing of the job runs on this node any more.
    pub fn end_rank(&mut self, jobid: &str, crashed: bool) -> bool {
        self.end(jobid, Member::Rank, crashed)
    }

    /// A rank or a process ended. Returns whether nothing of the job (no rank, no process) runs on
    /// this node any more.
    pub fn end(&mut self, jobid: &str, member: Member, crashed: bool) -> bool {
        let Some(j) = self.jobs.get_mut(jobid) else {
            return false;
        };
        let t = j.tally(member);
        t.running = t.running.saturating_sub(1);
        t.ended += 1;
        if crashed {
            t.crashed += 1;
        }
        j.running() == 0
    }

    /// Adds every job's series, scoped, and its rank and process counters to the node's sample.
    /// The process counters appear once a process has started, so a job of plain ranks has the
    /// series it always had.
    pub fn merge_into(&self, own: &mut MetricSet) {
        for (id, j) in &self.jobs {
            for (name, value) in &j.metrics.values {
                own.values.insert(job::scoped_key(id, name), value.clone());
            }
            let mut set =
                |name: &str, v: u64| own.set_counter(&job::scoped_key(id, name), v as f64);
            set(job::RANKS_STARTED, j.ranks.started);
            set(job::RANKS_ENDED, j.ranks.ended);
            set(job::RANKS_CRASHED, j.ranks.crashed);
            if j.processes.started > 0 {
                set(job::PROCESSES_STARTED, j.processes.started);
                set(job::PROCESSES_ENDED, j.processes.ended);
                set(job::PROCESSES_CRASHED, j.processes.crashed);
            }
        }
    }

    /// The digest's view of the jobs, for one wave: every job this node ran a rank of until the
    /// root has written its profile ([`LocalJobs::forget`]), so that any digest of this node the
    /// root reads while the job runs names it, whichever digests were lost on the way (the job's
    /// node list is made of them); ranks and processes still running (the root counts both as
    /// lost if the node goes silent); the description while the job is new and now and then after.
    pub fn digest(&mut self) -> Vec<JobOnNode> {
        self.jobs
            .values_mut()
            .map(|j| {
                let with_desc = j.waves < DESC_FIRST || j.waves % DESC_EVERY == 0;
                j.waves = j.waves.saturating_add(1);
                JobOnNode {
                    jobid: j.desc.jobid.clone(),
                    running: j.running(),
                    desc: with_desc.then(|| j.desc.clone()),
                }
            })
            .collect()
    }

    /// Drops a job the root has written the profile of.
    pub fn forget(&mut self, jobid: &str) {
        self.jobs.remove(jobid);
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

fn check_series(name: &str, value: &Value) -> Option<&'static str> {
    if name.is_empty() || name.len() > 512 {
        return Some("empty or longer than 512 bytes");
    }
    if name.contains(job::SCOPE) || name.chars().any(char::is_control) {
        return Some("control characters in the name");
    }
    let bare = name.split('{').next().unwrap_or(name);
    if !banyan_protocol::exposition::is_metric_name(bare) {
        return Some("not a Prometheus metric name");
    }
    match value {
        Value::Counter(c) if !(c.value.is_finite() && c.value >= 0.0) => {
            Some("a counter increment that is negative or not finite")
        }
        Value::Gauge(g) if !(g.last.is_finite() && g.total.is_finite()) => {
            Some("a gauge that is not finite")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(id: &str) -> JobDesc {
        JobDesc {
            jobid: id.into(),
            command: "./app".into(),
            size: 2,
            ..JobDesc::default()
        }
    }

    fn delta(name: &str, v: f64) -> MetricSet {
        let mut d = MetricSet::new();
        d.set_counter(name, v);
        d
    }

    #[test]
    fn ranks_of_one_job_merge_and_their_lifecycle_is_counted() {
        let mut jobs = LocalJobs::new();
        jobs.start_rank(desc("7.0"), 1000).expect("first rank");
        jobs.start_rank(desc("7.0"), 1000).expect("second rank");
        jobs.update("7.0", &delta("banyan_mpi_calls_total", 3.0));
        jobs.update("7.0", &delta("banyan_mpi_calls_total", 4.0));
        jobs.end_rank("7.0", false);
        jobs.end_rank("7.0", true);
        let mut own = MetricSet::new();
        jobs.merge_into(&mut own);
        let view = job::job_view(&own, "7.0");
        assert_eq!(view.counter("banyan_mpi_calls_total"), 7.0);
        assert_eq!(view.counter(job::RANKS_STARTED), 2.0);
        assert_eq!(view.counter(job::RANKS_ENDED), 2.0);
        assert_eq!(view.counter(job::RANKS_CRASHED), 1.0);
        assert!(job::node_view(&own).is_empty());
    }

    #[test]
    fn processes_of_a_rank_add_their_counts_but_are_not_ranks() {
        let mut jobs = LocalJobs::new();
        jobs.start_rank(desc("7.0"), 1000).expect("rank");
        jobs.start(desc("7.0"), 1000, Member::Process).expect("dd");
        jobs.start(desc("7.0"), 1000, Member::Process).expect("cat");
        jobs.update("7.0", &delta("banyan_io_bytes_total", 10.0));
        jobs.update("7.0", &delta("banyan_io_bytes_total", 5.0));
        assert!(!jobs.end("7.0", Member::Process, false));
        // The rank ends before its last process's end is read: the job still runs here.
        assert!(!jobs.end_rank("7.0", false));
        assert_eq!(jobs.digest()[0].running, 1);
        assert!(jobs.end("7.0", Member::Process, true));
        let mut own = MetricSet::new();
        jobs.merge_into(&mut own);
        let view = job::job_view(&own, "7.0");
        assert_eq!(view.counter("banyan_io_bytes_total"), 15.0);
        assert_eq!(view.counter(job::RANKS_STARTED), 1.0);
        assert_eq!(view.counter(job::RANKS_ENDED), 1.0);
        assert_eq!(view.counter(job::PROCESSES_STARTED), 2.0);
        assert_eq!(view.counter(job::PROCESSES_ENDED), 2.0);
        assert_eq!(view.counter(job::PROCESSES_CRASHED), 1.0);
    }

    #[test]
    fn another_users_rank_and_bad_ids_are_refused() {
        let mut jobs = LocalJobs::new();
        jobs.start_rank(desc("7.0"), 1000).expect("owner");
        assert!(matches!(
            jobs.start_rank(desc("7.0"), 1001),
            Err(Refusal::OtherUser {
                owner: 1000,
                uid: 1001,
                ..
            })
        ));
        assert!(matches!(
            jobs.start_rank(desc("main"), 1000),
            Err(Refusal::BadJobId(_))
        ));
        assert!(matches!(
            jobs.start_rank(desc("a\u{1}b"), 1000),
            Err(Refusal::BadJobId(_))
        ));
    }

    #[test]
    fn hostile_series_are_dropped_and_the_rest_kept() {
        let mut jobs = LocalJobs::new();
        jobs.start_rank(desc("7.0"), 0).expect("rank");
        jobs.update("7.0", &delta("x_total", 1.0));
        let mut d = MetricSet::new();
        d.set_gauge("x_total", 5.0, 1); // the same series as another kind
        d.set_counter("\u{1}other\u{1}y_total", 9.0); // into another job's scope
        d.set_counter("neg_total", -1.0);
        d.set_counter("9bad", 1.0);
        d.set_counter("fine_total", 2.0);
        let dropped = jobs.update("7.0", &d);
        assert_eq!(dropped.series.len(), 4, "{dropped:?}");
        let mut own = MetricSet::new();
        jobs.merge_into(&mut own);
        assert_eq!(job::jobs_in(&own), vec!["7.0".to_string()]);
        let view = job::job_view(&own, "7.0");
        assert_eq!(view.counter("x_total"), 1.0);
        assert_eq!(view.counter("fine_total"), 2.0);
    }

    #[test]
    fn digests_carry_the_description_while_new_then_now_and_then() {
        let mut jobs = LocalJobs::new();
        jobs.start_rank(desc("7.0"), 0).expect("rank");
        let with: Vec<bool> = (0..130).map(|_| jobs.digest()[0].desc.is_some()).collect();
        assert!(with[..3].iter().all(|w| *w));
        assert_eq!(with.iter().filter(|w| **w).count(), 3 + 2);
        jobs.end_rank("7.0", false);
        let after = jobs.digest();
        assert_eq!(after.len(), 1, "listed until the root forgets it");
        assert_eq!(after[0].running, 0);
        jobs.forget("7.0");
        assert!(
            jobs.digest().is_empty(),
            "forgotten once its profile is written"
        );
    }
}

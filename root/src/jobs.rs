//! The root's book of jobs: which exist, when each ends, and its profile once it has.
//!
//! Jobs are learnt from the nodes' digests (a node describes a job while it is new there and now
//! and then after). Their metrics are the scoped series in the cluster's totals
//! ([`banyan_protocol::job`]), which the tree keeps exact like any other. A job ends when every
//! rank and every process a rank started has ended — `ended + lost >= started` over both, with
//! at least `size` ranks started when the launcher said how many — where *lost* counts the ranks
//! and processes that were still running on nodes that have been silent for [`SILENT_MS`] (they
//! can no longer be heard of). Then its profile (the job's
//! merged metrics, description, start and end, how its ranks ended) is written once, atomically,
//! under `<state>/profiles/`, named by [`banyan_protocol::job::file_stem`].
//!
//! The book is kept in `<state>/jobs.json`, so a root restarted during a job still knows it; the
//! profiles directory is the record of which jobs are finished, so a profile is never written
//! twice, whatever restarts.
//!
//! A job's node list is the agents' names that ran any of it, folded as a node set. Its ranks
//! (processes the launcher started) and the processes they started are counted apart; the job
//! ends when all of both have ended or were lost.
//!
//! Each running job also has a bounded history ([`JobHistory`]): one point of its merged series
//! per wave, thinned when long, kept in memory while it runs (the HTTP API reads them through
//! [`JobBook::histories`], which the daemon hands it) and written into its profile when it ends.
//! The cluster's main series (CPU, memory, load, network, nodes, running jobs) are kept the same
//! way under [`MAIN`], in memory only.
//!
//! Pure apart from those files: the daemon feeds it each wave.

use banyan_protocol::job::{self, JobDesc};
use banyan_protocol::metric::MetricSet;
use banyan_protocol::nodeset::NodeSet;
use banyan_protocol::wire::Digest;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tracing::{info, warn};

/// How a job's ranks (or the processes its ranks started) ended, as its profile records it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct RankTally {
    pub started: u64,
    pub ended: u64,
    pub crashed: u64,
    /// Still running on a node that went stale: never heard of again.
    pub lost: u64,
}

/// A finished job: the Metric Proxy's job snapshot shape (`desc`, `counters`), plus the ranks.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Profile {
    pub desc: JobDesc,
    pub ranks: RankTally,
    /// The processes the ranks started (forked or executed), counted apart from the ranks; their
    /// counts are in `metrics` with the ranks'. Zero in profiles written before they were.
    #[serde(default)]
    pub processes: RankTally,
    /// The job's merged metrics.
    pub metrics: MetricSet,
    /// Its series over its life (absent in profiles written before histories existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<JobHistory>,
}

/// At most this many points per job: when the history reaches it, every other point is dropped
/// and points are taken half as often, so a long job keeps its whole life at a coarser step.
pub const HISTORY_POINTS: usize = 600;
/// Points are at least this far apart: jobs are settled at every wave and also after late
/// reports, and a chart wants one point per wave, not several.
pub const HISTORY_GAP_MS: u64 = 500;
/// At most this many series per job (families beyond are not charted).
pub const HISTORY_SERIES: usize = 64;

/// One charted series: a metric family of the job, its labelled series merged (counters and
/// histogram counts summed, gauges as the mean of every sample).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HistorySeries {
    pub name: String,
    /// `counter` (cumulative: chart its rate), `gauge` or `histogram` (its count, cumulative).
    pub kind: String,
}

/// The values of every series at one moment; `None` (JSON `null`) where a series had no value yet.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HistoryPoint {
    pub t_ms: u64,
    pub values: Vec<Option<f64>>,
}

/// A job's series over its life, bounded by [`HISTORY_POINTS`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct JobHistory {
    pub series: Vec<HistorySeries>,
    pub points: Vec<HistoryPoint>,
    /// The least distance between points now, in ms (doubles at each thinning).
    pub gap_ms: u64,
}

impl JobHistory {
    /// Adds a point from the job's merged view at `now_ms`, unless the last one is too recent.
    pub fn record(&mut self, view: &MetricSet, now_ms: u64) {
        if self.due(now_ms) {
            self.push(view, now_ms);
        }
    }

    /// Whether a point at `now_ms` would be far enough from the last one.
    fn due(&mut self, now_ms: u64) -> bool {
        if self.gap_ms == 0 {
            self.gap_ms = HISTORY_GAP_MS;
        }
        self.points
            .last()
            .is_none_or(|last| now_ms >= last.t_ms.saturating_add(self.gap_ms))
    }

    /// Adds a point whatever the gap (the job's final values), then thins if too long.
    pub fn push(&mut self, view: &MetricSet, now_ms: u64) {
        self.push_families(family_values(view), now_ms);
    }

    /// [`JobHistory::record`] for values by family, `(family, kind, value)`, computed only when a
    /// point is due.
    pub fn record_families(
        &mut self,
        families: impl FnOnce() -> Vec<(String, &'static str, f64)>,
        now_ms: u64,
    ) {
        if self.due(now_ms) {
            self.push_families(families(), now_ms);
        }
    }

    fn push_families(&mut self, families: Vec<(String, &'static str, f64)>, now_ms: u64) {
        if self.gap_ms == 0 {
            self.gap_ms = HISTORY_GAP_MS;
        }
        let mut values = vec![None; self.series.len()];
        for (family, kind, v) in families {
            let at = match self.series.iter().position(|s| s.name == family) {
                Some(i) => i,
                None if self.series.len() < HISTORY_SERIES => {
                    self.series.push(HistorySeries {
                        name: family,
                        kind: kind.to_string(),
                    });
                    values.push(None);
                    self.series.len() - 1
                }
                None => continue,
            };
            values[at] = Some(v);
        }
        self.points.push(HistoryPoint {
            t_ms: now_ms,
            values,
        });
        if self.points.len() >= HISTORY_POINTS {
            let last = self.points.len() - 1;
            let mut i = 0;
            self.points.retain(|_| {
                let keep = i % 2 == 0 || i == last;
                i += 1;
                keep
            });
            self.gap_ms = self.gap_ms.saturating_mul(2);
        }
    }
}

/// A set's values by metric family (the name before `{`): counters and histogram counts summed
/// over the family's labelled series, gauges as the mean of all their samples (families whose
/// gauges have no sample are left out). Returns `(family, kind, value)`.
pub fn family_values(view: &MetricSet) -> Vec<(String, &'static str, f64)> {
    use banyan_protocol::metric::Value;
    // family -> (kind, sum, gauge samples)
    let mut families: BTreeMap<&str, (&'static str, f64, f64)> = BTreeMap::new();
    for (name, value) in &view.values {
        let family = name.split('{').next().unwrap_or(name);
        let (kind, add, hits) = match value {
            Value::Counter(c) => ("counter", c.value, 0.0),
            Value::Gauge(g) => ("gauge", g.total, g.hits as f64),
            Value::Histogram(h) => ("histogram", h.count as f64, 0.0),
        };
        let e = families.entry(family).or_insert((kind, 0.0, 0.0));
        e.1 += add;
        e.2 += hits;
    }
    families
        .into_iter()
        .filter_map(|(family, (kind, sum, hits))| match kind {
            "gauge" if hits > 0.0 => Some((family.to_string(), kind, sum / hits)),
            "gauge" => None,
            _ => Some((family.to_string(), kind, sum)),
        })
        .collect()
}

/// The running jobs' histories, by job id, and the cluster's under [`MAIN`].
pub type Histories = Arc<Mutex<BTreeMap<String, JobHistory>>>;

/// The key of the cluster's own history in [`Histories`]: the Metric Proxy's name for the sum of
/// all nodes, which no job may take ([`job::check_job_id`]).
pub const MAIN: &str = "main";

/// The cluster's main series, one value each per wave, from the nodes' digests: CPU and memory
/// (used fractions, 0..1) and load as the mean over the nodes heard, network as the sum, and how
/// many nodes are heard and jobs run. Gauges all; `digests` are the nodes heard lately.
pub fn main_families<'a>(
    digests: impl Iterator<Item = &'a Digest>,
    jobs_running: usize,
) -> Vec<(String, &'static str, f64)> {
    let (mut n, mut cpu, mut memory, mut load1, mut rx, mut tx) = (0u64, 0.0, 0.0, 0.0, 0.0, 0.0);
    for d in digests {
        n += 1;
        cpu += f64::from(d.cpu);
        memory += f64::from(d.memory);
        load1 += f64::from(d.load1);
        rx += d.net_rx_bps;
        tx += d.net_tx_bps;
    }
    let mut out = vec![
        ("nodes_up".to_string(), "gauge", n as f64),
        ("jobs_running".to_string(), "gauge", jobs_running as f64),
    ];
    if n > 0 {
        let mean = |v: f64| v / n as f64;
        out.extend([
            ("cpu".to_string(), "gauge", mean(cpu)),
            ("memory".to_string(), "gauge", mean(memory)),
            ("load1".to_string(), "gauge", mean(load1)),
            ("net_rx_bps".to_string(), "gauge", rx),
            ("net_tx_bps".to_string(), "gauge", tx),
        ]);
    }
    out
}

/// A node whose digests stopped this long ago is gone, and so are the ranks it still ran: longer
/// than the tree takes to detect a death (3 s), re-place orphans and call a node stale (8 s).
pub const SILENT_MS: u64 = 10_000;

#[derive(Serialize, Deserialize, Default)]
struct Saved {
    jobs: BTreeMap<String, JobDesc>,
    /// Per job, the ranks still running on each node, as the nodes last said.
    #[serde(default)]
    running_on: BTreeMap<String, BTreeMap<String, u32>>,
    /// Per job, every node that said it ran some of it.
    #[serde(default)]
    nodes: BTreeMap<String, BTreeSet<String>>,
}

pub struct JobBook {
    dir: Option<PathBuf>,
    /// Jobs not finished yet.
    running: BTreeMap<String, JobDesc>,
    running_on: BTreeMap<String, BTreeMap<String, u32>>,
    /// Every node (agent name) that listed each running job in its digest: the job's node list.
    nodes: BTreeMap<String, BTreeSet<String>>,
    /// When each node's digest last changed, by the root's clock: `(sampled_ms, heard_at_ms)`.
    heard: HashMap<String, (u64, u64)>,
    /// When the book was opened (nodes not heard since count from then).
    opened_ms: u64,
    /// Jobs whose profile is written.
    finished: BTreeSet<String>,
    /// When each running job was first learned (the root's clock). A job is not ended in the
    /// wave that taught it: ranks shorter than a wave send their last counts at once, and the
    /// digests of the other nodes that ran one may come a wave later; ending the job on the
    /// counts alone would leave those nodes out of its node list.
    learned_ms: HashMap<String, u64>,
    /// The running jobs' series over time.
    histories: Histories,
}

impl JobBook {
    /// Opens the book in `state_dir` (none: memory only, for tests and simulations).
    /// The running jobs' histories, shared: the daemon hands them to the HTTP API, which reads
    /// them while the book writes them each wave.
    pub fn histories(&self) -> Histories {
        self.histories.clone()
    }

    pub fn open(state_dir: Option<&Path>, now_ms: u64) -> JobBook {
        let mut book = JobBook {
            dir: state_dir.map(Path::to_path_buf),
            running: BTreeMap::new(),
            running_on: BTreeMap::new(),
            nodes: BTreeMap::new(),
            heard: HashMap::new(),
            opened_ms: now_ms,
            finished: BTreeSet::new(),
            learned_ms: HashMap::new(),
            histories: Histories::default(),
        };
        if let Some(dir) = &book.dir {
            if let Ok(text) = std::fs::read_to_string(dir.join("jobs.json")) {
                match serde_json::from_str::<Saved>(&text) {
                    Ok(saved) => {
                        book.running = saved.jobs;
                        book.running_on = saved.running_on;
                        book.nodes = saved.nodes;
                    }
                    Err(e) => {
                        warn!(error = %e, "jobs.json is unreadable; running jobs will be learnt again from the nodes")
                    }
                }
            }
            for p in list_profiles(dir) {
                book.finished.insert(p.desc.jobid.clone());
            }
            book.running.retain(|id, _| !book.finished.contains(id));
            let running = &book.running;
            book.running_on.retain(|id, _| running.contains_key(id));
            book.nodes.retain(|id, _| running.contains_key(id));
        }
        book
    }

    pub fn running(&self) -> impl Iterator<Item = &JobDesc> {
        self.running.values()
    }

    pub fn get(&self, id: &str) -> Option<&JobDesc> {
        self.running.get(id)
    }

    pub fn is_finished(&self, id: &str) -> bool {
        self.finished.contains(id)
    }

    /// Learns jobs from this wave's digests. A job seen only through its series (its description
    /// lost with a node) is described by its id alone.
    pub fn learn(&mut self, digests: &HashMap<String, Digest>, totals: &MetricSet, now_ms: u64) {
        let now_s = now_ms / 1000;
        let mut changed = false;
        // Jobs whose node list must be folded again.
        let mut refold: BTreeSet<String> = BTreeSet::new();
        for d in digests.values() {
            let fresh = match self.heard.get(&d.name) {
                Some((sampled, _)) => d.sampled_ms > *sampled,
                None => true,
            };
            if !fresh {
                continue;
            }
            self.heard.insert(d.name.clone(), (d.sampled_ms, now_ms));
            // The node's word on every job it ran: those it no longer lists have no rank left here.
            for (id, on) in self.running_on.iter_mut() {
                let now_here = d
                    .jobs
                    .iter()
                    .find(|j| &j.jobid == id)
                    .map_or(0, |j| j.running);
                let before = on.get(&d.name).copied().unwrap_or(0);
                if now_here != before {
                    changed = true;
                    if now_here == 0 {
                        on.remove(&d.name);
                    } else {
                        on.insert(d.name.clone(), now_here);
                    }
                }
            }
            for j in &d.jobs {
                if !self.finished.contains(&j.jobid)
                    && job::check_job_id(&j.jobid).is_ok()
                    && j.running > 0
                    && !self.running_on.contains_key(&j.jobid)
                {
                    self.running_on
                        .entry(j.jobid.clone())
                        .or_default()
                        .insert(d.name.clone(), j.running);
                    changed = true;
                }
            }
            for j in &d.jobs {
                if self.finished.contains(&j.jobid) || job::check_job_id(&j.jobid).is_err() {
                    continue;
                }
                if self
                    .nodes
                    .entry(j.jobid.clone())
                    .or_default()
                    .insert(d.name.clone())
                {
                    refold.insert(j.jobid.clone());
                }
                match (self.running.get_mut(&j.jobid), &j.desc) {
                    (None, Some(desc)) => {
                        info!(job = %j.jobid, command = %desc.command, size = desc.size, "job started");
                        self.running.insert(j.jobid.clone(), desc.clone());
                        refold.insert(j.jobid.clone());
                        changed = true;
                    }
                    (Some(known), Some(desc)) => {
                        // Nodes describe the job each from its own ranks: keep the earliest start
                        // and the largest size any of them saw.
                        let (start, size) = (known.start_time, known.size);
                        if known.command.is_empty() && !desc.command.is_empty() {
                            *known = desc.clone();
                            refold.insert(j.jobid.clone());
                        }
                        known.start_time = match (start, desc.start_time) {
                            (0, s) | (s, 0) => s,
                            (a, b) => a.min(b),
                        };
                        known.size = size.max(desc.size);
                        changed |= known.start_time != start || known.size != size;
                    }
                    (None, None) => {
                        self.running.insert(
                            j.jobid.clone(),
                            JobDesc {
                                jobid: j.jobid.clone(),
                                start_time: now_s,
                                ..JobDesc::default()
                            },
                        );
                        changed = true;
                    }
                    (Some(_), None) => {}
                }
            }
        }
        for id in job::jobs_in(totals) {
            if !self.running.contains_key(&id)
                && !self.finished.contains(&id)
                && job::check_job_id(&id).is_ok()
            {
                self.running.insert(
                    id.clone(),
                    JobDesc {
                        jobid: id,
                        start_time: now_s,
                        ..JobDesc::default()
                    },
                );
                changed = true;
            }
        }
        // A job's node list is where its ranks ran, as the tree names those nodes (the agents'
        // names), folded: not what the launcher or the ranks' host names said. Folded again only
        // for jobs whose nodes or description changed this wave.
        for id in &refold {
            let Some(desc) = self.running.get_mut(id) else {
                continue;
            };
            if let Some(names) = self.nodes.get(id).filter(|n| !n.is_empty()) {
                let folded = NodeSet::from_names(names.iter().cloned()).fold();
                if desc.nodelist != folded {
                    desc.nodelist = folded;
                    changed = true;
                }
            }
        }
        for id in self.running.keys() {
            self.learned_ms.entry(id.clone()).or_insert(now_ms);
        }
        if changed {
            self.save();
        }
        self.record_histories(totals, now_ms);
        self.record_main(digests, now_ms);
    }

    /// One point of the cluster's main series (at most one per [`HISTORY_GAP_MS`]), from the
    /// nodes heard within [`SILENT_MS`].
    fn record_main(&self, digests: &HashMap<String, Digest>, now_ms: u64) {
        let heard = digests.values().filter(|d| {
            self.heard
                .get(&d.name)
                .is_some_and(|(_, at)| now_ms.saturating_sub(*at) < SILENT_MS)
        });
        self.histories
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(MAIN.to_string())
            .or_default()
            .record_families(|| main_families(heard, self.running.len()), now_ms);
    }

    /// One point per running job (at most one per [`HISTORY_GAP_MS`]).
    fn record_histories(&self, totals: &MetricSet, now_ms: u64) {
        let mut all = self
            .histories
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|id, _| id == MAIN || self.running.contains_key(id));
        for id in self.running.keys() {
            let h = all.entry(id.clone()).or_default();
            // The job's view is cut from the totals only when a point is due.
            if h.due(now_ms) {
                h.push(&job::job_view(totals, id), now_ms);
            }
        }
    }

    /// The history of a running job, as far as it goes.
    pub fn history(&self, id: &str) -> Option<JobHistory> {
        self.histories
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// The jobs that ended by this wave, as profiles (not yet written).
    pub fn ended(&self, totals: &MetricSet, now_ms: u64) -> Vec<Profile> {
        let now_s = now_ms / 1000;
        let mut out = Vec::new();
        for (id, desc) in &self.running {
            if self.learned_ms.get(id).is_some_and(|&t| t >= now_ms) {
                continue;
            }
            let view = job::job_view(totals, id);
            let silent = |node: &String| {
                let heard = self.heard.get(node).map_or(self.opened_ms, |(_, at)| *at);
                now_ms.saturating_sub(heard) >= SILENT_MS
            };
            // Ranks and the processes they started both run on nodes, and a node's digest counts
            // them together: those of a silent node are lost, ranks first.
            let lost = self.running_on.get(id).map_or(0, |on| {
                on.iter()
                    .filter(|(n, _)| silent(n))
                    .map(|(_, r)| *r as u64)
                    .sum()
            });
            let count = |name: &str| view.counter(name) as u64;
            let mut tally = RankTally {
                started: count(job::RANKS_STARTED),
                ended: count(job::RANKS_ENDED),
                crashed: count(job::RANKS_CRASHED),
                lost: 0,
            };
            let mut processes = RankTally {
                started: count(job::PROCESSES_STARTED),
                ended: count(job::PROCESSES_ENDED),
                crashed: count(job::PROCESSES_CRASHED),
                lost: 0,
            };
            tally.lost = lost.min(tally.started.saturating_sub(tally.ended));
            processes.lost =
                (lost - tally.lost).min(processes.started.saturating_sub(processes.ended));
            let all_started = desc.size == 0 || tally.started >= desc.size;
            let accounted = tally.ended + processes.ended + lost;
            if tally.started > 0 && all_started && accounted >= tally.started + processes.started {
                let mut desc = desc.clone();
                desc.end_time = now_s.max(desc.start_time);
                // The history ends with the job's final values.
                let mut history = self.history(id).unwrap_or_default();
                // A point just before takes the final values instead: a sliver of time between
                // two points would chart as a spike of rate.
                if history
                    .points
                    .last()
                    .is_some_and(|p| now_ms.saturating_sub(p.t_ms) < history.gap_ms / 2)
                    && history.points.len() > 1
                {
                    history.points.pop();
                }
                if history.points.last().is_none_or(|p| p.t_ms < now_ms) {
                    history.push(&view, now_ms);
                }
                let mut metrics = view;
                for k in job::LIFECYCLE {
                    metrics.values.remove(k);
                }
                out.push(Profile {
                    desc,
                    ranks: tally,
                    processes,
                    metrics,
                    history: Some(history),
                });
            }
        }
        out
    }

    /// Writes `profile` (atomically: a temporary file renamed into place) and moves its job to the
    /// finished ones. A profile that exists already is never overwritten.
    pub fn finish(&mut self, profile: &Profile) -> Result<(), String> {
        let id = profile.desc.jobid.clone();
        if self.finished.contains(&id) {
            return Ok(());
        }
        if let Some(dir) = &self.dir {
            let profiles = dir.join("profiles");
            std::fs::create_dir_all(&profiles)
                .map_err(|e| format!("cannot make {}: {e}", profiles.display()))?;
            let path = profiles.join(format!("{}.json", job::file_stem(&id)));
            if !path.exists() {
                let text = serde_json::to_vec_pretty(profile)
                    .map_err(|e| format!("cannot encode the profile of {id:?}: {e}"))?;
                let tmp = profiles.join(format!(".{}.tmp", job::file_stem(&id)));
                std::fs::write(&tmp, text)
                    .and_then(|_| std::fs::rename(&tmp, &path))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
        }
        info!(job = %id, started = profile.ranks.started, crashed = profile.ranks.crashed, lost = profile.ranks.lost, "job ended; profile written");
        self.running.remove(&id);
        self.running_on.remove(&id);
        self.nodes.remove(&id);
        self.learned_ms.remove(&id);
        self.histories
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        self.finished.insert(id);
        self.save();
        Ok(())
    }

    fn save(&self) {
        let Some(dir) = &self.dir else { return };
        let saved = Saved {
            jobs: self.running.clone(),
            running_on: self.running_on.clone(),
            nodes: self.nodes.clone(),
        };
        let path = dir.join("jobs.json");
        let tmp = dir.join("jobs.json.tmp");
        let result = serde_json::to_vec(&saved)
            .map_err(|e| e.to_string())
            .and_then(|t| std::fs::write(&tmp, t).map_err(|e| e.to_string()))
            .and_then(|_| std::fs::rename(&tmp, &path).map_err(|e| e.to_string()));
        if let Err(e) = result {
            warn!(file = %path.display(), error = %e, "cannot keep the job book; a restart would learn running jobs again");
        }
    }
}

/// Every profile in `<state>/profiles/`, oldest end first. Unreadable files are skipped with a
/// warning: one bad file must not hide the others.
pub fn list_profiles(state_dir: &Path) -> Vec<Profile> {
    let dir = state_dir.join("profiles");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<Profile> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .filter_map(|p| match std::fs::read(&p) {
            Ok(bytes) => match serde_json::from_slice::<Profile>(&bytes) {
                Ok(profile) => Some(profile),
                Err(e) => {
                    warn!(file = %p.display(), error = %e, "skipping an unreadable profile");
                    None
                }
            },
            Err(e) => {
                warn!(file = %p.display(), error = %e, "skipping an unreadable profile");
                None
            }
        })
        .collect();
    out.sort_by(|a, b| (a.desc.end_time, &a.desc.jobid).cmp(&(b.desc.end_time, &b.desc.jobid)));
    out
}

/// One profile by job id.
pub fn read_profile(state_dir: &Path, id: &str) -> Option<Profile> {
    job::check_job_id(id).ok()?;
    let path = state_dir
        .join("profiles")
        .join(format!("{}.json", job::file_stem(id)));
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use banyan_protocol::wire::JobOnNode;

    fn digest(node: &str, id: &str, running: u32, size: u64) -> Digest {
        Digest {
            name: node.into(),
            jobs: vec![JobOnNode {
                jobid: id.into(),
                running,
                desc: Some(JobDesc {
                    jobid: id.into(),
                    command: "./app".into(),
                    size,
                    start_time: 100,
                    ..JobDesc::default()
                }),
            }],
            ..Digest::default()
        }
    }

    fn totals(id: &str, started: f64, ended: f64, crashed: f64) -> MetricSet {
        let mut t = MetricSet::new();
        t.set_counter(&job::scoped_key(id, job::RANKS_STARTED), started);
        t.set_counter(&job::scoped_key(id, job::RANKS_ENDED), ended);
        t.set_counter(&job::scoped_key(id, job::RANKS_CRASHED), crashed);
        t.set_counter(&job::scoped_key(id, "banyan_mpi_calls_total"), 40.0);
        t
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("banyan-jobs-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn a_job_ends_when_every_rank_that_started_has_ended() {
        let dir = tempdir("end");
        let mut book = JobBook::open(Some(&dir), 100_000);
        let digests: HashMap<String, Digest> =
            [("cn1".to_string(), digest("cn1", "../7", 2, 4))].into();
        book.learn(&digests, &totals("../7", 2.0, 0.0, 0.0), 100_000);
        assert_eq!(book.running().count(), 1);
        // Two of four ranks started and ended: not the end, the size says two more are coming.
        assert!(book
            .ended(&totals("../7", 2.0, 2.0, 0.0), 101_000)
            .is_empty());
        assert!(book
            .ended(&totals("../7", 4.0, 3.0, 0.0), 102_000)
            .is_empty());
        let done = book.ended(&totals("../7", 4.0, 4.0, 1.0), 103_000);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].ranks.crashed, 1);
        assert_eq!(done[0].metrics.counter("banyan_mpi_calls_total"), 40.0);
        assert_eq!(done[0].desc.end_time, 103);
        book.finish(&done[0]).expect("written");
        // Once, and under an escaped name inside the state dir.
        assert!(dir.join("profiles").join("%2E%2E%2F7.json").exists());
        book.finish(&done[0]).expect("second time is a no-op");
        assert_eq!(list_profiles(&dir).len(), 1);
        assert_eq!(read_profile(&dir, "../7").map(|p| p.ranks.started), Some(4));
        // A restarted root knows it is finished and does not take it up again.
        let mut again = JobBook::open(Some(&dir), 104_000);
        assert!(again.is_finished("../7"));
        again.learn(&digests, &totals("../7", 4.0, 4.0, 1.0), 104_000);
        assert_eq!(again.running().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn processes_keep_the_job_open_and_are_counted_apart_from_ranks() {
        let mut book = JobBook::open(None, 100_000);
        let digests: HashMap<String, Digest> = [
            ("bnyd3".to_string(), digest("bnyd3", "p1", 2, 3)),
            ("bnyd2".to_string(), digest("bnyd2", "p1", 2, 3)),
            ("bnyd4".to_string(), digest("bnyd4", "p1", 2, 3)),
        ]
        .into();
        let mut t = totals("p1", 3.0, 3.0, 0.0);
        t.set_counter(&job::scoped_key("p1", job::PROCESSES_STARTED), 6.0);
        t.set_counter(&job::scoped_key("p1", job::PROCESSES_ENDED), 5.0);
        book.learn(&digests, &t, 100_000);
        assert_eq!(
            book.get("p1").map(|d| d.nodelist.as_str()),
            Some("bnyd[2-4]")
        );
        // Every rank ended, one process has not: not the end.
        assert!(book.ended(&t, 101_000).is_empty());
        t.set_counter(&job::scoped_key("p1", job::PROCESSES_ENDED), 6.0);
        let done = book.ended(&t, 102_000);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].ranks.started, 3);
        assert_eq!(done[0].ranks.ended, 3);
        assert_eq!(done[0].processes.started, 6);
        assert_eq!(done[0].processes.ended, 6);
        assert_eq!(done[0].desc.nodelist, "bnyd[2-4]");
        assert!(done[0]
            .metrics
            .values
            .keys()
            .all(|k| !job::LIFECYCLE.contains(&k.as_str())));
    }

    #[test]
    fn the_clusters_main_series_are_kept_as_a_history() {
        let mut book = JobBook::open(None, 100_000);
        let mut a = digest("cn1", "m1", 1, 1);
        a.cpu = 0.5;
        a.net_rx_bps = 100.0;
        let mut b = digest("cn2", "m1", 1, 1);
        b.cpu = 0.25;
        b.net_rx_bps = 50.0;
        let digests: HashMap<String, Digest> = [("cn1".into(), a), ("cn2".into(), b)].into();
        book.learn(&digests, &MetricSet::new(), 100_000);
        book.learn(&digests, &MetricSet::new(), 100_100);
        let h = book.history(MAIN).unwrap_or_default();
        assert_eq!(h.points.len(), 1, "one point per gap");
        let value = |name: &str| {
            h.series
                .iter()
                .position(|s| s.name == name)
                .and_then(|i| h.points[0].values[i])
        };
        assert_eq!(value("cpu"), Some(0.375));
        assert_eq!(value("net_rx_bps"), Some(150.0));
        assert_eq!(value("nodes_up"), Some(2.0));
        assert_eq!(value("jobs_running"), Some(1.0));
    }

    #[test]
    fn ranks_on_a_silent_node_count_as_lost_also_across_a_root_restart() {
        let dir = tempdir("silent");
        let mut book = JobBook::open(Some(&dir), 100_000);
        let mut digests: HashMap<String, Digest> = [
            ("cn1".to_string(), digest("cn1", "9", 2, 4)),
            ("cn2".to_string(), digest("cn2", "9", 2, 4)),
        ]
        .into();
        book.learn(&digests, &MetricSet::new(), 100_000);
        // cn1's ranks end and it says so; cn2 goes silent with two ranks running.
        if let Some(d) = digests.get_mut("cn1") {
            d.sampled_ms = 5;
            d.jobs[0].running = 0;
        }
        book.learn(&digests, &MetricSet::new(), 101_000);
        let t = totals("9", 4.0, 2.0, 0.0);
        assert!(book.ended(&t, 100_000 + SILENT_MS / 2).is_empty());
        // A root restarted meanwhile still knows where the ranks were.
        let again = JobBook::open(Some(&dir), 102_000);
        assert!(again.ended(&t, 102_000 + SILENT_MS / 2).is_empty());
        let done = again.ended(&t, 102_000 + SILENT_MS);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].ranks.lost, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_history_keeps_one_point_per_gap_and_thins_to_stay_bounded() {
        let mut h = JobHistory::default();
        let mut view = MetricSet::new();
        view.set_counter("banyan_mpi_calls_total{function=\"MPI_Send\"}", 1.0);
        view.set_counter("banyan_mpi_calls_total{function=\"MPI_Recv\"}", 2.0);
        view.set_gauge("banyan_test_level", 4.0, 0);
        h.record(&view, 1_000);
        h.record(&view, 1_100);
        assert_eq!(h.points.len(), 1, "too close to the last point");
        assert_eq!(h.series.len(), 2);
        let calls = h
            .series
            .iter()
            .position(|s| s.name == "banyan_mpi_calls_total");
        assert_eq!(calls.map(|i| h.points[0].values[i]), Some(Some(3.0)));
        let mut t = 1_000;
        for _ in 0..10 * HISTORY_POINTS {
            t += 1_000;
            h.record(&view, t);
        }
        assert!(h.points.len() < HISTORY_POINTS);
        assert!(h.points.len() > HISTORY_POINTS / 4);
        assert_eq!(h.points.first().map(|p| p.t_ms), Some(1_000));
        assert!(h.points.windows(2).all(|w| w[0].t_ms < w[1].t_ms));
        assert!(h.gap_ms > HISTORY_GAP_MS);
    }

    #[test]
    fn a_finished_profile_carries_the_history_of_its_job() {
        let mut book = JobBook::open(None, 100_000);
        let digests: HashMap<String, Digest> =
            [("cn1".to_string(), digest("cn1", "h1", 1, 1))].into();
        book.learn(&digests, &totals("h1", 1.0, 0.0, 0.0), 100_000);
        book.learn(&digests, &totals("h1", 1.0, 0.0, 0.0), 101_000);
        assert_eq!(book.history("h1").map(|h| h.points.len()), Some(2));
        let done = book.ended(&totals("h1", 1.0, 1.0, 0.0), 102_000);
        assert_eq!(done.len(), 1);
        let history = done[0].history.clone().unwrap_or_default();
        assert_eq!(history.points.len(), 3);
        book.finish(&done[0]).expect("finished");
        assert!(book.history("h1").is_none());
    }

    #[test]
    fn a_running_job_survives_a_root_restart() {
        let dir = tempdir("restart");
        let mut book = JobBook::open(Some(&dir), 100_000);
        let digests: HashMap<String, Digest> =
            [("cn1".to_string(), digest("cn1", "5.0", 1, 1))].into();
        book.learn(&digests, &MetricSet::new(), 100_000);
        let again = JobBook::open(Some(&dir), 200_000);
        assert_eq!(again.get("5.0").map(|d| d.command.as_str()), Some("./app"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The root's book of jobs: which exist, when each ends, and its profile once it has.
//!
//! Jobs are learnt from the nodes' digests (a node describes a job while it is new there and now
//! and then after). Their metrics are the scoped series in the cluster's totals
//! ([`banyan_protocol::job`]), which the tree keeps exact like any other. A job ends when every
//! rank that started has ended — `ended + lost >= started`, with at least `size` started when the
//! launcher said how many — where *lost* counts the ranks that were still running on nodes that
//! have since gone stale (their ranks can no longer be heard of). Then its profile (the job's
//! merged metrics, description, start and end, how its ranks ended) is written once, atomically,
//! under `<state>/profiles/`, named by [`banyan_protocol::job::file_stem`].
//!
//! The book is kept in `<state>/jobs.json`, so a root restarted during a job still knows it; the
//! profiles directory is the record of which jobs are finished, so a profile is never written
//! twice, whatever restarts.
//!
//! Pure apart from those files: the daemon feeds it each wave.

use banyan_protocol::job::{self, JobDesc};
use banyan_protocol::metric::MetricSet;
use banyan_protocol::wire::Digest;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tracing::{info, warn};

/// How a job's ranks ended, as its profile records it.
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
    /// The job's merged metrics.
    pub metrics: MetricSet,
}

#[derive(Serialize, Deserialize, Default)]
struct Saved {
    jobs: BTreeMap<String, JobDesc>,
}

pub struct JobBook {
    dir: Option<PathBuf>,
    /// Jobs not finished yet.
    running: BTreeMap<String, JobDesc>,
    /// Jobs whose profile is written.
    finished: BTreeSet<String>,
}

impl JobBook {
    /// Opens the book in `state_dir` (none: memory only, for tests and simulations).
    pub fn open(state_dir: Option<&Path>) -> JobBook {
        let mut book = JobBook {
            dir: state_dir.map(Path::to_path_buf),
            running: BTreeMap::new(),
            finished: BTreeSet::new(),
        };
        if let Some(dir) = &book.dir {
            if let Ok(text) = std::fs::read_to_string(dir.join("jobs.json")) {
                match serde_json::from_str::<Saved>(&text) {
                    Ok(saved) => book.running = saved.jobs,
                    Err(e) => {
                        warn!(error = %e, "jobs.json is unreadable; running jobs will be learnt again from the nodes")
                    }
                }
            }
            for p in list_profiles(dir) {
                book.finished.insert(p.desc.jobid.clone());
            }
            book.running.retain(|id, _| !book.finished.contains(id));
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
    pub fn learn(&mut self, digests: &HashMap<String, Digest>, totals: &MetricSet, now_s: u64) {
        let mut changed = false;
        for d in digests.values() {
            for j in &d.jobs {
                if self.finished.contains(&j.jobid) || job::check_job_id(&j.jobid).is_err() {
                    continue;
                }
                match (self.running.get_mut(&j.jobid), &j.desc) {
                    (None, Some(desc)) => {
                        info!(job = %j.jobid, command = %desc.command, size = desc.size, "job started");
                        self.running.insert(j.jobid.clone(), desc.clone());
                        changed = true;
                    }
                    (Some(known), Some(desc)) => {
                        // Nodes describe the job each from its own ranks: keep the earliest start
                        // and the largest size any of them saw.
                        let (start, size) = (known.start_time, known.size);
                        if known.command.is_empty() && !desc.command.is_empty() {
                            *known = desc.clone();
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
        if changed {
            self.save();
        }
    }

    /// The jobs that ended by this wave, as profiles (not yet written). `stale` names the nodes
    /// that are gone for good; their last digests say which ranks died with them.
    pub fn ended(
        &self,
        totals: &MetricSet,
        digests: &HashMap<String, Digest>,
        stale: &BTreeSet<String>,
        now_s: u64,
    ) -> Vec<Profile> {
        let mut out = Vec::new();
        for (id, desc) in &self.running {
            let view = job::job_view(totals, id);
            let tally = RankTally {
                started: view.counter(job::RANKS_STARTED) as u64,
                ended: view.counter(job::RANKS_ENDED) as u64,
                crashed: view.counter(job::RANKS_CRASHED) as u64,
                lost: stale
                    .iter()
                    .filter_map(|n| digests.get(n))
                    .flat_map(|d| d.jobs.iter())
                    .filter(|j| &j.jobid == id)
                    .map(|j| j.running as u64)
                    .sum(),
            };
            let all_started = desc.size == 0 || tally.started >= desc.size;
            if tally.started > 0 && all_started && tally.ended + tally.lost >= tally.started {
                let mut desc = desc.clone();
                desc.end_time = now_s.max(desc.start_time);
                let mut metrics = view;
                for k in [job::RANKS_STARTED, job::RANKS_ENDED, job::RANKS_CRASHED] {
                    metrics.values.remove(k);
                }
                out.push(Profile {
                    desc,
                    ranks: tally,
                    metrics,
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
        self.finished.insert(id);
        self.save();
        Ok(())
    }

    fn save(&self) {
        let Some(dir) = &self.dir else { return };
        let saved = Saved {
            jobs: self.running.clone(),
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
        let mut book = JobBook::open(Some(&dir));
        let digests: HashMap<String, Digest> =
            [("cn1".to_string(), digest("cn1", "../7", 2, 4))].into();
        let none = BTreeSet::new();
        book.learn(&digests, &totals("../7", 2.0, 0.0, 0.0), 100);
        assert_eq!(book.running().count(), 1);
        // Two of four ranks started and ended: not the end, the size says two more are coming.
        assert!(book
            .ended(&totals("../7", 2.0, 2.0, 0.0), &digests, &none, 101)
            .is_empty());
        assert!(book
            .ended(&totals("../7", 4.0, 3.0, 0.0), &digests, &none, 102)
            .is_empty());
        let done = book.ended(&totals("../7", 4.0, 4.0, 1.0), &digests, &none, 103);
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
        let mut again = JobBook::open(Some(&dir));
        assert!(again.is_finished("../7"));
        again.learn(&digests, &totals("../7", 4.0, 4.0, 1.0), 104);
        assert_eq!(again.running().count(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ranks_on_a_stale_node_count_as_lost() {
        let mut book = JobBook::open(None);
        let digests: HashMap<String, Digest> = [
            ("cn1".to_string(), digest("cn1", "9", 0, 4)),
            ("cn2".to_string(), digest("cn2", "9", 2, 4)),
        ]
        .into();
        book.learn(&digests, &MetricSet::new(), 100);
        let t = totals("9", 4.0, 2.0, 0.0);
        assert!(book.ended(&t, &digests, &BTreeSet::new(), 101).is_empty());
        let stale: BTreeSet<String> = ["cn2".to_string()].into();
        let done = book.ended(&t, &digests, &stale, 102);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].ranks.lost, 2);
    }

    #[test]
    fn a_running_job_survives_a_root_restart() {
        let dir = tempdir("restart");
        let mut book = JobBook::open(Some(&dir));
        let digests: HashMap<String, Digest> =
            [("cn1".to_string(), digest("cn1", "5.0", 1, 1))].into();
        book.learn(&digests, &MetricSet::new(), 100);
        let again = JobBook::open(Some(&dir));
        assert_eq!(again.get("5.0").map(|d| d.command.as_str()), Some("./app"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

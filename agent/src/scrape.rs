//! The Prometheus exporters a node scrapes (`/join?to=HOST:PORT` at the root).
//!
//! Each target has one thread that fetches it once per period and keeps the latest good scrape;
//! at every wave the agent merges those into its own metrics, so an exporter's series reach the
//! node's view and the cluster sums like any collector's. Counters stay as the exporter counts
//! them (cumulative), so a constant counter stays constant. A failing target keeps its last good
//! values (sums do not dip while an exporter restarts), shows its error in the node's digest and
//! in `/join/list`, and is tried again next period: nothing is dropped silently.
//!
//! Threads, not tasks: a scrape blocks on a socket and parses up to megabytes of text, and the
//! agent's async core must never wait for either. The list of targets lives in the agent's state
//! dir, so a restarted agent scrapes what it scraped before.
//!
//! Not here: scraping over TLS, or another banyan root (a root's `/metrics` parses, but its sums
//! would count nodes twice).

use banyan_protocol::exposition;
use banyan_protocol::metric::MetricSet;
use banyan_protocol::target::Target;
use banyan_protocol::wire::{ScrapeChange, ScrapeStatus};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Targets one node scrapes at most: each costs a thread and its series go up the tree.
pub const MAX_TARGETS: usize = 32;
/// Largest exposition read from a target (node_exporter's is a few hundred KB).
pub const MAX_BODY_BYTES: u64 = 16 << 20;
/// Series one target may add to the node's metrics.
pub const MAX_SERIES: usize = 20_000;

/// What a target's thread last saw.
#[derive(Default)]
struct Latest {
    set: Option<MetricSet>,
    last_scrape_ms: u64,
    last_ok_ms: u64,
    error: Option<String>,
}

struct Scraper {
    latest: Arc<Mutex<Latest>>,
    /// Dropping it stops the thread at its next wake-up.
    _stop: mpsc::Sender<()>,
}

pub struct Scrapes {
    file: Option<PathBuf>,
    period: Duration,
    targets: BTreeMap<Target, Scraper>,
}

impl Scrapes {
    /// Starts scraping `fixed` targets (from the command line) and those saved in `state_dir`.
    pub fn open(state_dir: Option<&Path>, fixed: &[Target], period: Duration) -> Scrapes {
        let mut scrapes = Scrapes {
            file: state_dir.map(|d| d.join("scrapes")),
            period,
            targets: BTreeMap::new(),
        };
        let mut wanted: Vec<Target> = fixed.to_vec();
        if let Some(file) = &scrapes.file {
            match std::fs::read_to_string(file) {
                Ok(text) => {
                    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                        match Target::parse(line) {
                            Ok(t) => wanted.push(t),
                            Err(e) => {
                                warn!(file = %file.display(), line, error = %e, "skipping a bad scrape target")
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(file = %file.display(), error = %e, "cannot read the saved scrape targets")
                }
            }
        }
        for t in wanted {
            if scrapes.targets.len() < MAX_TARGETS && !scrapes.targets.contains_key(&t) {
                scrapes.start(t);
            }
        }
        scrapes
    }

    fn start(&mut self, target: Target) {
        let latest = Arc::new(Mutex::new(Latest::default()));
        let (stop, stopped) = mpsc::channel();
        let (shared, url, period) = (latest.clone(), target.url(), self.period);
        let spawned = std::thread::Builder::new()
            .name("banyan-scrape".into())
            .stack_size(256 << 10)
            .spawn(move || scrape_loop(&url, period, &shared, &stopped));
        match spawned {
            Ok(_) => {
                info!(target = %target, "scraping");
                self.targets.insert(
                    target,
                    Scraper {
                        latest,
                        _stop: stop,
                    },
                );
            }
            Err(e) => warn!(target = %target, error = %e, "cannot start a scrape thread"),
        }
    }

    /// Adds or removes a target (the root's `/join` and `/join/del`); answers the new list.
    pub fn apply(&mut self, change: &ScrapeChange) -> Result<Vec<ScrapeStatus>, String> {
        match change {
            ScrapeChange::Add(text) => {
                let t = Target::parse(text).map_err(|e| e.to_string())?;
                if !self.targets.contains_key(&t) {
                    if self.targets.len() >= MAX_TARGETS {
                        return Err(format!(
                            "this node already scrapes {MAX_TARGETS} targets; remove one first"
                        ));
                    }
                    self.start(t);
                    self.save()?;
                }
            }
            ScrapeChange::Remove(text) => {
                let t = Target::parse(text).map_err(|e| e.to_string())?;
                if self.targets.remove(&t).is_none() {
                    return Err(format!("this node does not scrape {t}"));
                }
                info!(target = %t, "no longer scraping");
                self.save()?;
            }
        }
        Ok(self.status())
    }

    /// Writes the list atomically (a crash leaves the old list or the new one).
    fn save(&self) -> Result<(), String> {
        let Some(file) = &self.file else {
            return Ok(());
        };
        let text: String = self.targets.keys().map(|t| format!("{t}\n")).collect();
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, file))
            .map_err(|e| {
                format!(
                    "the change is in effect but could not be saved to {}: {e}",
                    file.display()
                )
            })
    }

    pub fn status(&self) -> Vec<ScrapeStatus> {
        self.targets
            .iter()
            .map(|(t, s)| {
                let l = lock(&s.latest);
                ScrapeStatus {
                    target_url: t.url(),
                    period_ms: self.period.as_millis() as u64,
                    last_scrape_ms: l.last_scrape_ms,
                    last_ok_ms: l.last_ok_ms,
                    error: l.error.clone(),
                    series: l.set.as_ref().map_or(0, |s| s.len() as u32),
                }
            })
            .collect()
    }

    /// `(target, error)` of every target whose last scrape failed, for the node's digest.
    pub fn errors(&self) -> Vec<(String, String)> {
        self.targets
            .iter()
            .filter_map(|(t, s)| lock(&s.latest).error.clone().map(|e| (t.url(), e)))
            .collect()
    }

    /// Adds every target's latest good scrape to `own`. A series the node collects itself is left
    /// as the node measured it: an exporter cannot overwrite or double it. The series added go to
    /// `carried` too: an exporter's counters do not restart with the agent.
    pub fn merge_into(&self, own: &mut MetricSet, carried: &mut MetricSet) {
        let mut scraped = MetricSet::new();
        for s in self.targets.values() {
            if let Some(set) = &lock(&s.latest).set {
                scraped.merge(set);
            }
        }
        for (name, value) in scraped.values {
            if let std::collections::btree_map::Entry::Vacant(slot) = own.values.entry(name) {
                carried.values.insert(slot.key().clone(), value.clone());
                slot.insert(value);
            }
        }
    }
}

fn lock(m: &Mutex<Latest>) -> std::sync::MutexGuard<'_, Latest> {
    // A scrape thread that panicked mid-update left plain data behind; keep using it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn scrape_loop(url: &str, period: Duration, latest: &Mutex<Latest>, stopped: &mpsc::Receiver<()>) {
    let timeout = period.clamp(Duration::from_millis(500), Duration::from_secs(10));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .user_agent("banyan-agent")
        .build()
        .into();
    let mut reported: Option<String> = None;
    loop {
        let began = Instant::now();
        let result = scrape_once(&agent, url);
        let now = unix_ms();
        // Log a target's failures once per change of reason, not every period.
        match (&result, &reported) {
            (Err(e), r) if r.as_ref() != Some(e) => {
                warn!(target = url, error = %e, "scrape failed; retrying every period");
                reported = Some(e.clone());
            }
            (Ok(_), Some(_)) => {
                info!(target = url, "scrape works again");
                reported = None;
            }
            _ => {}
        }
        {
            let mut l = lock(latest);
            l.last_scrape_ms = now;
            match result {
                Ok(set) => {
                    l.set = Some(set);
                    l.last_ok_ms = now;
                    l.error = None;
                }
                Err(e) => l.error = Some(e),
            }
        }
        let wait = period.saturating_sub(began.elapsed());
        match stopped.recv_timeout(wait.max(Duration::from_millis(100))) {
            Err(RecvTimeoutError::Timeout) => continue,
            _ => return,
        }
    }
}

fn scrape_once(agent: &ureq::Agent, url: &str) -> Result<MetricSet, String> {
    let mut resp = agent
        .get(url)
        .header("Accept", "text/plain;version=0.0.4")
        .call()
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    let mut text = String::new();
    resp.body_mut()
        .as_reader()
        .take(MAX_BODY_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the answer: {e}"))?;
    if text.len() as u64 > MAX_BODY_BYTES {
        return Err(format!("answer larger than {MAX_BODY_BYTES} bytes"));
    }
    let samples = exposition::parse(&text).map_err(|e| format!("not Prometheus text: {e}"))?;
    let set = exposition::to_metric_set(&samples, unix_ms());
    if set.len() > MAX_SERIES {
        return Err(format!(
            "{} series, more than the {MAX_SERIES} one target may add",
            set.len()
        ));
    }
    Ok(set)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// A one-file exporter: answers every request with `body` (or a status line of its own).
    fn serve(head: &'static str, body: String) -> (String, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let h = std::thread::spawn(move || {
            for stream in listener.incoming().take(3) {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = write!(
                    s,
                    "{head}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        (addr, h)
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into()
    }

    #[test]
    fn a_scrape_keeps_counters_cumulative_and_types_right() {
        let body =
            "# TYPE jobs_total counter\njobs_total 42\n# TYPE temp gauge\ntemp{zone=\"a\"} 31.5\n"
                .to_string();
        let (addr, _h) = serve("HTTP/1.1 200 OK", body);
        let set = scrape_once(&agent(), &format!("http://{addr}/metrics")).expect("scrape");
        assert_eq!(set.counter("jobs_total"), 42.0);
        assert!(matches!(
            set.get("temp{zone=\"a\"}"),
            Some(banyan_protocol::metric::Value::Gauge(g)) if g.last == 31.5
        ));
    }

    #[test]
    fn a_failing_target_says_why() {
        let (addr, _h) = serve("HTTP/1.1 503 Service Unavailable", String::new());
        let e = scrape_once(&agent(), &format!("http://{addr}/metrics")).expect_err("503");
        assert!(e.contains("503"), "{e}");
        let (addr, _h) = serve("HTTP/1.1 200 OK", "this is { not prometheus\n".into());
        let e = scrape_once(&agent(), &format!("http://{addr}/metrics")).expect_err("garbage");
        assert!(e.starts_with("not Prometheus text"), "{e}");
    }

    #[test]
    fn exporter_series_never_replace_the_nodes_own() {
        let dir = std::env::temp_dir().join(format!("banyan-scrape-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let body = "# TYPE banyan_agent_waves_total counter\nbanyan_agent_waves_total 1000\n# TYPE other_total counter\nother_total 7\n".to_string();
        let (addr, _h) = serve("HTTP/1.1 200 OK", body);
        let mut scrapes = Scrapes::open(Some(&dir), &[], Duration::from_millis(200));
        let list = scrapes
            .apply(&ScrapeChange::Add(addr.clone()))
            .expect("add");
        assert_eq!(list.len(), 1);
        let saved = std::fs::read_to_string(dir.join("scrapes")).expect("saved list");
        assert_eq!(saved, format!("http://{addr}/metrics\n"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while scrapes.status()[0].last_ok_ms == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut own = MetricSet::new();
        own.set_counter("banyan_agent_waves_total", 3.0);
        let mut carried = MetricSet::new();
        scrapes.merge_into(&mut own, &mut carried);
        assert_eq!(own.counter("banyan_agent_waves_total"), 3.0);
        assert_eq!(own.counter("other_total"), 7.0);
        assert_eq!(
            carried.values.keys().collect::<Vec<_>>(),
            ["other_total"],
            "only what the exporter added is carried across a restart"
        );
        // A second agent start on the same state dir scrapes the same target.
        let again = Scrapes::open(Some(&dir), &[], Duration::from_millis(200));
        assert_eq!(
            again.status()[0].target_url,
            format!("http://{addr}/metrics")
        );
        scrapes
            .apply(&ScrapeChange::Remove(format!("http://{addr}/metrics")))
            .expect("remove");
        assert!(scrapes.status().is_empty());
        assert!(scrapes
            .apply(&ScrapeChange::Remove(addr))
            .expect_err("gone")
            .contains("does not scrape"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

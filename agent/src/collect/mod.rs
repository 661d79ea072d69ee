//! Node collectors: what an agent measures of its own node each wave, read straight from `/proc`
//! and `/sys`.
//!
//! Each collector is one small component in its own file behind the [`Collector`] trait, and
//! [`default_collectors`] is the one place that lists them (Vector's sources are the model): adding
//! a collector is adding a file and a line there. [`Collectors`] runs them all once per wave; a
//! collector that fails is logged once and the others keep reporting.
//!
//! Conventions every collector follows:
//! - Series are named `banyan_node_*` (`banyan_agent_*` for the agent's own process), in base units
//!   (seconds, bytes), `_total` for counters; labels are written with [`series`], which escapes them.
//! - Counters count **since the agent started**, not since boot: a restarted agent starts again at
//!   zero, because the tree keeps a dead agent's last counts and would otherwise count them twice.
//!   [`Cumulative`] turns a kernel counter into that (and survives the kernel counter going back).
//! - Rates are gauges: counter deltas divided by the time between this sample and the previous one
//!   (from the `now_ms` the caller passes), left out on the first sample.
//! - Files are read through [`SourceFile`], which keeps the descriptor and the buffer between waves,
//!   so a steady-state sample allocates little more than the output series' names.
//! - Every path is taken under a `root` directory (`/` in the agent), so tests run the same code on
//!   a fake tree.

mod counter;
pub mod cpu;
pub mod disk;
pub mod filesystem;
pub mod load;
pub mod memory;
pub mod network;
pub mod process;
mod source;
pub mod thermal;
pub mod uptime;

#[cfg(test)]
pub(crate) mod fake_tree;

pub use counter::{per_second, Cumulative};
pub use source::SourceFile;

use banyan_protocol::metric::MetricSet;
use std::path::{Path, PathBuf};

/// One kind of node measurement (cpu, memory, ...), sampled once per wave.
pub trait Collector: Send {
    /// Short name for logs ("cpu", "memory", ...).
    fn name(&self) -> &'static str;
    /// HELP text per metric family this collector emits (family name without labels).
    fn describe(&self) -> &'static [(&'static str, &'static str)];
    /// Adds this wave's series to `out`. On error some of this wave's series may already be in
    /// `out`; they are correct, just not all there is.
    fn collect(&mut self, now_ms: u64, out: &mut MetricSet) -> Result<(), CollectError>;
}

/// Why a collector could not sample: always names the file.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {}: {what}", path.display())]
    Parse { path: PathBuf, what: String },
}

impl CollectError {
    pub fn parse(path: &Path, what: impl Into<String>) -> CollectError {
        CollectError::Parse {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
}

/// The node collectors, reading under `root` (`/` normally; tests point it at a fake tree).
pub fn default_collectors(root: &Path) -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(cpu::Cpu::new(root)),
        Box::new(load::Load::new(root)),
        Box::new(memory::Memory::new(root)),
        Box::new(network::Network::new(root)),
        Box::new(disk::Disk::new(root)),
        Box::new(filesystem::Filesystem::new(root)),
        Box::new(uptime::Uptime::new(root)),
        Box::new(thermal::Thermal::new(root)),
        Box::new(process::Process::new(root)),
    ]
}

/// A series key in the Prometheus text form: `name` or `name{k="v",...}`, values escaped
/// (backslash, double quote and newline, as the exposition format requires).
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let len = name.len()
        + 2
        + labels
            .iter()
            .map(|(k, v)| k.len() + v.len() + 4)
            .sum::<usize>();
    let mut s = String::with_capacity(len);
    s.push_str(name);
    s.push('{');
    for (i, (key, value)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(key);
        s.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

/// Runs every collector once per wave and keeps one failing collector from silencing the rest.
pub struct Collectors {
    entries: Vec<Entry>,
}

struct Entry {
    collector: Box<dyn Collector>,
    /// The error that made this collector fail, kept until it succeeds again.
    failure: Option<String>,
}

impl Collectors {
    pub fn new(collectors: Vec<Box<dyn Collector>>) -> Collectors {
        Collectors {
            entries: collectors
                .into_iter()
                .map(|collector| Entry {
                    collector,
                    failure: None,
                })
                .collect(),
        }
    }

    /// The [`default_collectors`] under `root`.
    pub fn for_node(root: &Path) -> Collectors {
        Collectors::new(default_collectors(root))
    }

    /// One wave's series from every collector that works.
    pub fn collect(&mut self, now_ms: u64) -> MetricSet {
        let mut out = MetricSet::new();
        self.collect_into(now_ms, &mut out);
        out
    }

    /// Like [`Collectors::collect`], adding to an existing set.
    ///
    /// A collector that fails is logged once (warn, with `collector=` and `error=`); it is logged
    /// again only after it has worked in between, so a node without some file does not fill the
    /// log once a second.
    pub fn collect_into(&mut self, now_ms: u64, out: &mut MetricSet) {
        for entry in &mut self.entries {
            let name = entry.collector.name();
            match entry.collector.collect(now_ms, out) {
                Ok(()) => {
                    if entry.failure.take().is_some() {
                        tracing::info!(collector = name, "collector works again");
                    }
                }
                Err(error) => {
                    if entry.failure.is_none() {
                        tracing::warn!(collector = name, error = %error, "collector failed; the other collectors keep reporting");
                        entry.failure = Some(error.to_string());
                    }
                }
            }
        }
    }

    /// HELP text of every family the collectors emit.
    pub fn describe(&self) -> Vec<(&'static str, &'static str)> {
        self.entries
            .iter()
            .flat_map(|e| e.collector.describe().iter().copied())
            .collect()
    }

    /// The collectors failing right now, with their error (for the node's digest).
    pub fn failures(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.entries
            .iter()
            .filter_map(|e| Some((e.collector.name(), e.failure.as_deref()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::fake_tree::FakeTree;
    use super::*;
    use banyan_protocol::metric::Value;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[test]
    fn series_without_labels_is_the_name() {
        assert_eq!(series("banyan_node_load1", &[]), "banyan_node_load1");
    }

    #[test]
    fn series_escapes_label_values() {
        assert_eq!(
            series("m", &[("a", "x"), ("b", "back\\slash \"quoted\"\nline")]),
            "m{a=\"x\",b=\"back\\\\slash \\\"quoted\\\"\\nline\"}"
        );
    }

    /// Captures what `tracing` logs while `f` runs.
    fn logs_of<T>(f: impl FnOnce() -> T) -> (T, String) {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        let out = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8_lossy(&sink.0.lock().unwrap()).into_owned();
        (out, text)
    }

    #[test]
    fn failing_collector_is_reported_once_and_others_keep_working() {
        let tree = FakeTree::new();
        tree.write("proc/loadavg", "0.50 0.25 0.10 3/200 1234\n");
        tree.write("proc/uptime", "100.00 150.00\n");
        // No proc/meminfo: the memory collector fails.
        let mut collectors = Collectors::new(vec![
            Box::new(load::Load::new(tree.path())),
            Box::new(memory::Memory::new(tree.path())),
            Box::new(uptime::Uptime::new(tree.path())),
        ]);
        let (sets, logs) = logs_of(|| {
            (1..=3)
                .map(|i| collectors.collect(i * 1000))
                .collect::<Vec<_>>()
        });
        assert_eq!(logs.matches("collector failed").count(), 1, "{logs}");
        assert!(logs.contains("collector=\"memory\"") || logs.contains("collector=memory"));
        assert!(
            logs.contains("proc/meminfo"),
            "the error names the file: {logs}"
        );
        for set in &sets {
            assert!(matches!(set.get("banyan_node_load1"), Some(Value::Gauge(g)) if g.last == 0.5));
            assert!(set.get("banyan_node_uptime_seconds").is_some());
            assert!(set.get("banyan_node_memory_total_bytes").is_none());
        }
        let failures: Vec<_> = collectors.failures().map(|(n, _)| n).collect();
        assert_eq!(failures, ["memory"]);

        // It recovers (logged at info), then fails anew: reported again, once.
        tree.write("proc/meminfo", "MemTotal: 1000 kB\nMemAvailable: 400 kB\n");
        let (set, logs) = logs_of(|| collectors.collect(4000));
        assert!(logs.contains("collector works again"), "{logs}");
        assert!(set.get("banyan_node_memory_total_bytes").is_some());
        assert_eq!(collectors.failures().count(), 0);
        tree.write("proc/meminfo", "garbage\n");
        let (_, logs) = logs_of(|| {
            collectors.collect(5000);
            collectors.collect(6000);
        });
        assert_eq!(logs.matches("collector failed").count(), 1, "{logs}");
    }

    #[test]
    fn describe_covers_every_emitted_family() {
        let mut collectors = Collectors::for_node(Path::new("/"));
        let described = collectors.describe();
        let mut set = collectors.collect(1_000);
        collectors.collect_into(2_000, &mut set);
        for name in set.values.keys() {
            let family = name.split('{').next().unwrap_or(name);
            assert!(
                described.iter().any(|(f, _)| *f == family),
                "{family} has no HELP text"
            );
        }
        for (family, help) in &described {
            assert!(family.starts_with("banyan_"), "{family}");
            assert!(!help.is_empty() && !help.contains('\n'), "{family}");
        }
    }

    #[test]
    fn live_node_sample_has_the_digest_series() {
        let mut collectors = Collectors::for_node(Path::new("/"));
        collectors.collect(1_000);
        // At least a few clock ticks between the samples, or there is no CPU usage to report.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let set = collectors.collect(2_000);
        for name in [
            "banyan_node_cpu_usage_ratio{cpu=\"all\"}",
            "banyan_node_memory_used_ratio",
            "banyan_node_load1",
            "banyan_node_cpus",
            "banyan_node_uptime_seconds",
            "banyan_agent_threads",
        ] {
            assert!(set.get(name).is_some(), "{name} missing");
        }
        // On Linux every collector works (thermal emits nothing where there are no sensors).
        let failures: Vec<_> = collectors.failures().collect();
        assert!(failures.is_empty(), "{failures:?}");
    }
}

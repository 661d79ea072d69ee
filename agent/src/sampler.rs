//! What an agent measures of its own node each wave.
//!
//! The node collectors ([`crate::collect`]: CPU, load, memory, network, disks, filesystems,
//! uptime, temperatures, the agent itself), the agent's wave counter, and a text file of site
//! values (one `name value` per line, like node_exporter's textfile collector; names ending in
//! `_total` are counters, others gauges).

use banyan_protocol::metric::{MetricSet, Value};
use banyan_protocol::wire::Digest;
use std::path::PathBuf;

pub struct Sampler {
    collectors: crate::collect::Collectors,
    waves: u64,
    started_ms: u64,
    metrics_file: Option<PathBuf>,
    file_error_reported: bool,
}

impl Sampler {
    pub fn new(metrics_file: Option<PathBuf>, now_ms: u64) -> Sampler {
        Sampler {
            collectors: crate::collect::Collectors::for_node(std::path::Path::new("/")),
            waves: 0,
            started_ms: now_ms,
            metrics_file,
            file_error_reported: false,
        }
    }

    /// One wave's sample of this node, and the part of it read from the metrics file. The
    /// collectors' counters are cumulative since the agent started; the file's are whatever the
    /// file says, so they do not restart with the agent (the tree's `carried` part).
    pub fn sample(&mut self, now_ms: u64) -> (MetricSet, MetricSet) {
        self.waves += 1;
        let mut set = MetricSet::new();
        set.set_counter("banyan_agent_waves_total", self.waves as f64);
        set.set_gauge(
            "banyan_agent_uptime_seconds",
            now_ms.saturating_sub(self.started_ms) as f64 / 1000.0,
            now_ms,
        );
        set.set_gauge("banyan_agent_up", 1.0, now_ms);
        self.collectors.collect_into(now_ms, &mut set);
        let mut file = MetricSet::new();
        if let Some(path) = &self.metrics_file {
            match std::fs::read_to_string(path) {
                Ok(text) => {
                    self.file_error_reported = false;
                    parse_text(&text, now_ms, &mut file);
                    // The file's value wins over a collector's of the same name, as it always has.
                    for (name, value) in &file.values {
                        set.values.insert(name.clone(), value.clone());
                    }
                }
                Err(e) => {
                    if !self.file_error_reported {
                        tracing::warn!(file = %path.display(), error = %e, "cannot read the metrics file; other values are still reported");
                        self.file_error_reported = true;
                    }
                }
            }
        }
        (set, file)
    }
}

/// Parses `name value` lines; bad lines are skipped (the file is the operator's, not ours).
pub fn parse_text(text: &str, now_ms: u64, set: &mut MetricSet) {
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let valid = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && name.chars().next().is_some_and(|c| !c.is_ascii_digit());
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if !valid || !v.is_finite() {
            continue;
        }
        if name.ends_with("_total") {
            if v >= 0.0 {
                set.set_counter(name, v);
            }
        } else {
            set.set_gauge(name, v, now_ms);
        }
    }
}

/// The node table's small view of a sample: read from the series the collectors produce.
pub fn digest_of(name: &str, set: &MetricSet, now_ms: u64) -> Digest {
    let gauge = |key: &str| match set.get(key) {
        Some(Value::Gauge(g)) => g.last,
        _ => 0.0,
    };
    let sum_family = |prefix: &str| -> f64 {
        set.values
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| match v {
                Value::Gauge(g) => g.last,
                _ => 0.0,
            })
            .fold(0.0, |a, b| a + b)
    };
    Digest {
        name: name.to_string(),
        sampled_ms: now_ms,
        cpu: gauge("banyan_node_cpu_usage_ratio{cpu=\"all\"}") as f32,
        memory: gauge("banyan_node_memory_used_ratio") as f32,
        load1: gauge("banyan_node_load1") as f32,
        net_rx_bps: sum_family("banyan_node_network_receive_bytes_per_second{"),
        net_tx_bps: sum_family("banyan_node_network_transmit_bytes_per_second{"),
        scrape_errors: Vec::new(),
        jobs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_file_lines_become_counters_and_gauges() {
        let mut set = MetricSet::new();
        parse_text(
            "# site values\njobs_done_total 12\nrack_temp 31.5\nbad line here\n9bad 1\nx_total -3\nnan_g NaN\n",
            5,
            &mut set,
        );
        assert_eq!(set.counter("jobs_done_total"), 12.0);
        assert!(
            matches!(set.get("rack_temp"), Some(banyan_protocol::metric::Value::Gauge(g)) if g.last == 31.5)
        );
        assert_eq!(set.len(), 2);
    }
}

//! Load averages and runnable tasks from `/proc/loadavg` (proc(5)): `1.05 0.90 0.80 2/114 10560`
//! is the 1, 5 and 15 minute load, runnable/total scheduling entities, and the last pid.

use super::{CollectError, Collector, SourceFile};
use banyan_protocol::metric::MetricSet;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAvg {
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub running: u64,
}

pub fn parse_loadavg(text: &str) -> Result<LoadAvg, String> {
    let mut fields = text.split_ascii_whitespace();
    let mut load = || -> Result<f64, String> {
        let field = fields.next().ok_or("too few fields")?;
        field.parse().map_err(|_| format!("bad load {field:?}"))
    };
    let (load1, load5, load15) = (load()?, load()?, load()?);
    let tasks = fields.next().ok_or("no running/total field")?;
    let running = tasks
        .split_once('/')
        .and_then(|(running, _)| running.parse().ok())
        .ok_or_else(|| format!("bad running/total {tasks:?}"))?;
    Ok(LoadAvg {
        load1,
        load5,
        load15,
        running,
    })
}

pub struct Load {
    file: SourceFile,
}

impl Load {
    pub fn new(root: &Path) -> Load {
        Load {
            file: SourceFile::new(root.join("proc/loadavg")),
        }
    }
}

const DESCRIBE: &[(&str, &str)] = &[
    ("banyan_node_load1", "Load average over 1 minute."),
    ("banyan_node_load5", "Load average over 5 minutes."),
    ("banyan_node_load15", "Load average over 15 minutes."),
    (
        "banyan_node_procs_running",
        "Runnable threads (running or waiting for a CPU).",
    ),
];

impl Collector for Load {
    fn name(&self) -> &'static str {
        "load"
    }

    fn describe(&self) -> &'static [(&'static str, &'static str)] {
        DESCRIBE
    }

    fn collect(&mut self, now_ms: u64, out: &mut MetricSet) -> Result<(), CollectError> {
        let (text, path) = self.file.read()?;
        let load = parse_loadavg(&text).map_err(|what| CollectError::parse(path, what))?;
        out.set_gauge("banyan_node_load1", load.load1, now_ms);
        out.set_gauge("banyan_node_load5", load.load5, now_ms);
        out.set_gauge("banyan_node_load15", load.load15, now_ms);
        out.set_gauge("banyan_node_procs_running", load.running as f64, now_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banyan_protocol::metric::Value;

    #[test]
    fn parses_loadavg() {
        assert_eq!(
            parse_loadavg("3.42 3.22 2.85 2/114 10560\n"),
            Ok(LoadAvg {
                load1: 3.42,
                load5: 3.22,
                load15: 2.85,
                running: 2
            })
        );
        assert!(parse_loadavg("3.42 3.22\n").is_err());
        assert!(parse_loadavg("3.42 3.22 2.85 2-114 1\n").is_err());
        assert!(parse_loadavg("").is_err());
    }

    #[test]
    fn live_load_matches_proc_loadavg() {
        let mut set = MetricSet::new();
        Load::new(Path::new("/")).collect(1, &mut set).unwrap();
        let kernel: f64 = std::fs::read_to_string("/proc/loadavg")
            .unwrap()
            .split_whitespace()
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        // The 15-minute average barely moves between two reads; it is printed with 2 decimals.
        let Some(Value::Gauge(g)) = set.get("banyan_node_load15") else {
            panic!("no load15")
        };
        assert!((g.last - kernel).abs() <= 0.02, "{} vs {kernel}", g.last);
        assert!(set.get("banyan_node_procs_running").is_some());
    }
}

//! Time since boot from `/proc/uptime` (proc(5)): `3428.36 2704.21` is seconds since boot and
//! the idle seconds summed over cores.
//!
//! The boot time is the wave's wall clock (`now_ms`) minus the uptime, so it moves by a few
//! milliseconds between waves and follows steps of the wall clock, like the kernel's own `btime`
//! in `/proc/stat` (which is whole seconds; reading that big file again here would cost more).

use super::{CollectError, Collector, SourceFile};
use banyan_protocol::metric::MetricSet;
use std::path::Path;

/// Seconds since boot: the first number of `/proc/uptime`.
pub fn parse_uptime(text: &str) -> Result<f64, String> {
    let field = text.split_ascii_whitespace().next().ok_or("empty file")?;
    match field.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("bad uptime {field:?}")),
    }
}

pub struct Uptime {
    file: SourceFile,
}

impl Uptime {
    pub fn new(root: &Path) -> Uptime {
        Uptime {
            file: SourceFile::new(root.join("proc/uptime")),
        }
    }
}

const DESCRIBE: &[(&str, &str)] = &[
    (
        "banyan_node_uptime_seconds",
        "Seconds since the node booted.",
    ),
    (
        "banyan_node_boot_time_seconds",
        "When the node booted, in seconds since the Unix epoch.",
    ),
];

impl Collector for Uptime {
    fn name(&self) -> &'static str {
        "uptime"
    }

    fn describe(&self) -> &'static [(&'static str, &'static str)] {
        DESCRIBE
    }

    fn collect(&mut self, now_ms: u64, out: &mut MetricSet) -> Result<(), CollectError> {
        let (text, path) = self.file.read()?;
        let up = parse_uptime(&text).map_err(|what| CollectError::parse(path, what))?;
        out.set_gauge("banyan_node_uptime_seconds", up, now_ms);
        out.set_gauge(
            "banyan_node_boot_time_seconds",
            now_ms as f64 / 1000.0 - up,
            now_ms,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_tree::FakeTree;
    use super::*;
    use banyan_protocol::metric::Value;

    fn gauge(set: &MetricSet, name: &str) -> f64 {
        match set.get(name) {
            Some(Value::Gauge(g)) => g.last,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn parses_uptime() {
        assert_eq!(parse_uptime("3428.36 2704.21\n"), Ok(3428.36));
        assert!(parse_uptime("").is_err());
        assert!(parse_uptime("-1 0").is_err());
        assert!(parse_uptime("soon 0").is_err());
    }

    #[test]
    fn boot_time_is_now_minus_uptime() {
        let tree = FakeTree::new();
        tree.write("proc/uptime", "100.50 150.00\n");
        let mut set = MetricSet::new();
        Uptime::new(tree.path())
            .collect(1_700_000_000_000, &mut set)
            .unwrap();
        assert_eq!(gauge(&set, "banyan_node_uptime_seconds"), 100.5);
        assert_eq!(
            gauge(&set, "banyan_node_boot_time_seconds"),
            1_699_999_899.5
        );
    }

    #[test]
    fn live_boot_time_agrees_with_btime() {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut set = MetricSet::new();
        Uptime::new(Path::new("/"))
            .collect(now_ms, &mut set)
            .unwrap();
        let stat = std::fs::read_to_string("/proc/stat").unwrap();
        let btime: f64 = stat
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let boot = gauge(&set, "banyan_node_boot_time_seconds");
        // btime is whole seconds, and the kernel computes it from the same clocks.
        assert!((boot - btime).abs() < 2.0, "{boot} vs btime {btime}");
    }
}

//! Memory and swap from `/proc/meminfo` (proc(5), Documentation/filesystems/proc.rst).
//!
//! Used memory is `MemTotal - MemAvailable`: MemAvailable is the kernel's own estimate of what
//! could be given to a new workload without swapping (page cache and reclaimable slab included),
//! which is what "free" means to an operator. Kernels before 3.14 lack it; there the estimate is
//! MemFree + Buffers + Cached. Swap is SwapTotal and SwapFree, nothing else.

use super::{CollectError, Collector, SourceFile};
use banyan_protocol::metric::MetricSet;
use std::path::Path;

/// The `/proc/meminfo` fields used, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MemInfo {
    pub total: u64,
    pub free: u64,
    pub available: Option<u64>,
    pub buffers: u64,
    pub cached: u64,
    pub swap_total: u64,
    pub swap_free: u64,
}

impl MemInfo {
    pub fn available(&self) -> u64 {
        self.available
            .unwrap_or(self.free + self.buffers + self.cached)
            .min(self.total)
    }
}

/// Parses `Key:   value kB` lines; values with a `kB` unit become bytes.
pub fn parse_meminfo(text: &str) -> Result<MemInfo, String> {
    let mut info = MemInfo::default();
    let mut have_total = false;
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "MemTotal" => {
                have_total = true;
                &mut info.total
            }
            "MemFree" => &mut info.free,
            "MemAvailable" => info.available.insert(0),
            "Buffers" => &mut info.buffers,
            "Cached" => &mut info.cached,
            "SwapTotal" => &mut info.swap_total,
            "SwapFree" => &mut info.swap_free,
            _ => continue,
        };
        let mut parts = rest.split_ascii_whitespace();
        let value: u64 = parts
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("bad value on line {line:?}"))?;
        *slot = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            None => value,
            Some(unit) => return Err(format!("unknown unit {unit:?} on line {line:?}")),
        };
    }
    if !have_total {
        return Err("no MemTotal line".into());
    }
    Ok(info)
}

pub struct Memory {
    file: SourceFile,
}

impl Memory {
    pub fn new(root: &Path) -> Memory {
        Memory {
            file: SourceFile::new(root.join("proc/meminfo")),
        }
    }
}

const DESCRIBE: &[(&str, &str)] = &[
    ("banyan_node_memory_total_bytes", "Usable RAM (MemTotal)."),
    (
        "banyan_node_memory_available_bytes",
        "RAM available to new work without swapping (MemAvailable).",
    ),
    (
        "banyan_node_memory_used_bytes",
        "RAM in use: total minus available.",
    ),
    (
        "banyan_node_memory_buffers_bytes",
        "RAM used for block device buffers (Buffers).",
    ),
    (
        "banyan_node_memory_cached_bytes",
        "RAM used for the page cache (Cached).",
    ),
    (
        "banyan_node_memory_used_ratio",
        "Fraction of RAM in use (used / total).",
    ),
    ("banyan_node_swap_total_bytes", "Swap space (SwapTotal)."),
    (
        "banyan_node_swap_free_bytes",
        "Unused swap space (SwapFree).",
    ),
    (
        "banyan_node_swap_used_bytes",
        "Swap space in use: total minus free.",
    ),
];

impl Collector for Memory {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn describe(&self) -> &'static [(&'static str, &'static str)] {
        DESCRIBE
    }

    fn collect(&mut self, now_ms: u64, out: &mut MetricSet) -> Result<(), CollectError> {
        let (text, path) = self.file.read()?;
        let m = parse_meminfo(&text).map_err(|what| CollectError::parse(path, what))?;
        let available = m.available();
        let used = m.total - available;
        let mut gauge = |name: &str, value: u64| out.set_gauge(name, value as f64, now_ms);
        gauge("banyan_node_memory_total_bytes", m.total);
        gauge("banyan_node_memory_available_bytes", available);
        gauge("banyan_node_memory_used_bytes", used);
        gauge("banyan_node_memory_buffers_bytes", m.buffers);
        gauge("banyan_node_memory_cached_bytes", m.cached);
        gauge("banyan_node_swap_total_bytes", m.swap_total);
        gauge("banyan_node_swap_free_bytes", m.swap_free.min(m.swap_total));
        gauge(
            "banyan_node_swap_used_bytes",
            m.swap_total.saturating_sub(m.swap_free),
        );
        if m.total > 0 {
            out.set_gauge(
                "banyan_node_memory_used_ratio",
                used as f64 / m.total as f64,
                now_ms,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_tree::FakeTree;
    use super::*;
    use banyan_protocol::metric::Value;

    const MEMINFO: &str = "\
MemTotal:       24684096 kB
MemFree:        19046064 kB
MemAvailable:   23716152 kB
Buffers:           10040 kB
Cached:          4761716 kB
SwapCached:            0 kB
Active(anon):       1588 kB
SwapTotal:       8388604 kB
SwapFree:        8000000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    fn gauge(set: &MetricSet, name: &str) -> f64 {
        match set.get(name) {
            Some(Value::Gauge(g)) => g.last,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn parses_meminfo_in_bytes() {
        let m = parse_meminfo(MEMINFO).unwrap();
        assert_eq!(m.total, 24684096 * 1024);
        assert_eq!(m.available, Some(23716152 * 1024));
        assert_eq!(m.cached, 4761716 * 1024);
        assert_eq!(m.swap_total, 8388604 * 1024);
        assert_eq!(m.swap_free, 8000000 * 1024);
        assert!(parse_meminfo("MemFree: 1 kB\n").is_err());
        assert!(parse_meminfo("MemTotal: lots kB\n").is_err());
    }

    #[test]
    fn old_kernels_estimate_available() {
        let m = parse_meminfo("MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 5 kB\nCached: 20 kB\n")
            .unwrap();
        assert_eq!(m.available(), 35 * 1024);
    }

    #[test]
    fn swap_is_swap_not_ram() {
        let tree = FakeTree::new();
        tree.write("proc/meminfo", MEMINFO);
        let mut set = MetricSet::new();
        Memory::new(tree.path()).collect(7, &mut set).unwrap();
        assert_eq!(
            gauge(&set, "banyan_node_swap_total_bytes"),
            8388604.0 * 1024.0
        );
        assert_eq!(
            gauge(&set, "banyan_node_swap_free_bytes"),
            8000000.0 * 1024.0
        );
        assert_eq!(
            gauge(&set, "banyan_node_swap_used_bytes"),
            388604.0 * 1024.0
        );
        assert_eq!(
            gauge(&set, "banyan_node_memory_used_bytes"),
            (24684096.0 - 23716152.0) * 1024.0
        );
        let ratio = gauge(&set, "banyan_node_memory_used_ratio");
        assert!((ratio - (24684096.0 - 23716152.0) / 24684096.0).abs() < 1e-12);
    }

    #[test]
    fn live_total_matches_proc_meminfo() {
        let mut set = MetricSet::new();
        Memory::new(Path::new("/")).collect(1, &mut set).unwrap();
        let text = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib = |key: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap()
                .parse()
                .unwrap()
        };
        assert_eq!(
            gauge(&set, "banyan_node_memory_total_bytes") / 1024.0,
            kib("MemTotal:")
        );
        assert_eq!(
            gauge(&set, "banyan_node_swap_total_bytes") / 1024.0,
            kib("SwapTotal:")
        );
    }
}

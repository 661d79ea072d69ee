//! The agent's own cost, from `/proc/self/stat` (proc(5)): CPU time, resident memory, threads.
//!
//! `/proc/self/stat` alone has all three (`utime`, `stime`, `num_threads`, `rss` in pages), so
//! `/proc/self/status` (the same numbers for humans, VmRSS and Threads) is not read as well.
//! The CPU time is not baselined like the node's counters: it is this process's own, so it
//! already starts at zero when the agent does.

use super::{cpu::user_hz, CollectError, Collector, SourceFile};
use banyan_protocol::metric::MetricSet;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelfStat {
    /// User plus system time, in clock ticks.
    pub cpu_ticks: u64,
    pub threads: u64,
    pub rss_pages: u64,
}

/// Parses `/proc/self/stat`. The command name (field 2) is in parentheses and may itself contain
/// spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Result<SelfStat, String> {
    let (_, rest) = text
        .rsplit_once(')')
        .ok_or("no `)` after the command name")?;
    // rest starts at field 3 (state): utime is field 14, stime 15, num_threads 20, rss 24.
    let mut fields = rest.split_ascii_whitespace();
    let mut take = |field: usize, skip: usize| -> Result<u64, String> {
        let value = fields
            .nth(skip)
            .ok_or_else(|| format!("no field {field}"))?;
        value
            .parse()
            .map_err(|_| format!("bad field {field}: {value:?}"))
    };
    let utime = take(14, 14 - 3)?;
    let stime = take(15, 0)?;
    let threads = take(20, 20 - 16)?;
    let rss_pages = take(24, 24 - 21)?;
    Ok(SelfStat {
        cpu_ticks: utime + stime,
        threads,
        rss_pages,
    })
}

pub struct Process {
    file: SourceFile,
    hz: f64,
    page_bytes: u64,
}

impl Process {
    pub fn new(root: &Path) -> Process {
        let page_bytes = match nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE) {
            Ok(Some(size)) if size > 0 => size as u64,
            // 4 KiB on x86 and on most arm64 kernels; sysconf only confirms it.
            _ => 4096,
        };
        Process {
            file: SourceFile::new(root.join("proc/self/stat")),
            hz: user_hz(),
            page_bytes,
        }
    }
}

const DESCRIBE: &[(&str, &str)] = &[
    (
        "banyan_agent_cpu_seconds_total",
        "CPU time (user and system) the agent process has used.",
    ),
    (
        "banyan_agent_resident_bytes",
        "Resident memory of the agent process.",
    ),
    ("banyan_agent_threads", "Threads of the agent process."),
];

impl Collector for Process {
    fn name(&self) -> &'static str {
        "process"
    }

    fn describe(&self) -> &'static [(&'static str, &'static str)] {
        DESCRIBE
    }

    fn collect(&mut self, now_ms: u64, out: &mut MetricSet) -> Result<(), CollectError> {
        let (text, path) = self.file.read()?;
        let st = parse_stat(&text).map_err(|what| CollectError::parse(path, what))?;
        out.set_counter(
            "banyan_agent_cpu_seconds_total",
            st.cpu_ticks as f64 / self.hz,
        );
        out.set_gauge(
            "banyan_agent_resident_bytes",
            st.rss_pages.saturating_mul(self.page_bytes) as f64,
            now_ms,
        );
        out.set_gauge("banyan_agent_threads", st.threads as f64, now_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banyan_protocol::metric::Value;

    #[test]
    fn parses_stat_with_a_hostile_command_name() {
        let text = "4242 (banyan) agent (x)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 6 0 98765 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(text),
            Ok(SelfStat {
                cpu_ticks: 325,
                threads: 6,
                rss_pages: 2048
            })
        );
        assert!(parse_stat("4242 (x) S 1 2").is_err());
        assert!(parse_stat("no parenthesis").is_err());
    }

    #[test]
    fn live_matches_proc_self_status() {
        let mut set = MetricSet::new();
        Process::new(Path::new("/")).collect(1, &mut set).unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |key: &str| -> f64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap()
                .parse()
                .unwrap()
        };
        let gauge = |name: &str| match set.get(name) {
            Some(Value::Gauge(g)) => g.last,
            other => panic!("{name}: {other:?}"),
        };
        let rss = gauge("banyan_agent_resident_bytes");
        let vm_rss = field("VmRSS:") * 1024.0;
        // Other test threads allocate meanwhile: the two reads agree within a few MB.
        assert!(
            (rss - vm_rss).abs() < 8.0 * 1024.0 * 1024.0,
            "{rss} vs {vm_rss}"
        );
        assert!(gauge("banyan_agent_threads") >= 1.0);
        assert!(set.counter("banyan_agent_cpu_seconds_total") >= 0.0);
    }
}

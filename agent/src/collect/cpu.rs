//! CPU time per mode, total and per core, from `/proc/stat` (proc(5)).
//!
//! The `cpu` line and each `cpuN` line give clock ticks (USER_HZ) spent in user, nice, system,
//! idle, iowait, irq, softirq and steal. The `guest` and `guest_nice` columns that follow are
//! already included in user and nice, so they are not counted again. Only online cores have a line,
//! which is what `banyan_node_cpus` counts.

use super::{series, CollectError, Collector, Cumulative, SourceFile};
use banyan_protocol::metric::MetricSet;
use std::path::Path;

/// The modes reported, in `/proc/stat`'s column order.
pub const MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];
const IDLE: usize = 3;
const IOWAIT: usize = 4;
/// Linux's own limit (NR_CPUS) is at most 8192 on today's architectures.
const MAX_CORES: usize = 1 << 16;

/// Ticks per mode, in [`MODES`] order.
pub type Ticks = [u64; 8];

/// The `cpu` lines of one `/proc/stat`.
#[derive(Debug, Default, PartialEq)]
pub struct StatLines {
    /// The `cpu` line: all cores together.
    pub all: Option<Ticks>,
    /// `(N, ticks)` for each `cpuN` line.
    pub cores: Vec<(usize, Ticks)>,
}

/// Parses the `cpu` lines of `/proc/stat` into `out` (cleared first, its storage reused).
pub fn parse_stat(text: &str, out: &mut StatLines) -> Result<(), String> {
    out.all = None;
    out.cores.clear();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            if out.all.is_some() || !out.cores.is_empty() {
                // The cpu lines come first; the rest (the long `intr` line) is not ours to scan.
                break;
            }
            continue;
        };
        let Some((label, values)) = rest.split_once(' ') else {
            return Err(format!("no values on line {line:?}"));
        };
        let mut ticks = Ticks::default();
        let mut columns = 0;
        for (slot, field) in ticks.iter_mut().zip(values.split_ascii_whitespace()) {
            *slot = field
                .parse()
                .map_err(|_| format!("bad number {field:?} on line {line:?}"))?;
            columns += 1;
        }
        // Kernels before 2.6.11 have fewer columns (no steal, irq...): missing ones stay zero.
        if columns < 4 {
            return Err(format!("fewer than 4 columns on line {line:?}"));
        }
        if label.is_empty() {
            out.all = Some(ticks);
        } else {
            let core: usize = label
                .parse()
                .map_err(|_| format!("bad cpu number on line {line:?}"))?;
            // Per-core state is kept in a vector indexed by core number.
            if core >= MAX_CORES {
                return Err(format!("cpu number beyond {MAX_CORES} on line {line:?}"));
            }
            out.cores.push((core, ticks));
        }
    }
    if out.all.is_none() {
        return Err("no `cpu` line".into());
    }
    Ok(())
}

/// Busy fraction (everything but idle and iowait) between two readings, in 0..=1; `None` when no
/// tick passed. iowait counts as idle: the core was free to run something else (proc(5) also
/// warns that iowait is not reliable).
pub fn busy_ratio(prev: &Ticks, now: &Ticks) -> Option<f64> {
    let mut delta = Ticks::default();
    for ((d, n), p) in delta.iter_mut().zip(now).zip(prev) {
        // Idle and iowait have been seen to step back on some kernels; a negative step is zero.
        *d = n.saturating_sub(*p);
    }
    let total: u64 = delta.iter().sum();
    if total == 0 {
        return None;
    }
    let idle = delta[IDLE] + delta[IOWAIT];
    Some(total.saturating_sub(idle) as f64 / total as f64)
}

/// The number of clock ticks per second that `/proc` counts in (USER_HZ).
pub(crate) fn user_hz() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        // USER_HZ is 100 on every architecture Linux runs on; sysconf only confirms it.
        _ => 100.0,
    }
}

/// Series names and counters of one `cpu` line (`cpu="all"` or `cpu="N"`).
struct CpuState {
    seconds: [String; 8],
    usage: String,
    counters: [Cumulative; 8],
    prev: Option<Ticks>,
}

impl CpuState {
    fn new(label: &str) -> CpuState {
        CpuState {
            seconds: MODES.map(|mode| {
                series(
                    "banyan_node_cpu_seconds_total",
                    &[("cpu", label), ("mode", mode)],
                )
            }),
            usage: series("banyan_node_cpu_usage_ratio", &[("cpu", label)]),
            counters: Default::default(),
            prev: None,
        }
    }

    fn emit(&mut self, ticks: &Ticks, hz: f64, now_ms: u64, out: &mut MetricSet) {
        // The tick counters never reset (they are 64-bit since boot); idle and iowait may step
        // back a little, which must not read as a reset.
        for ((name, counter), raw) in self.seconds.iter().zip(&mut self.counters).zip(ticks) {
            out.set_counter(name, counter.update_no_reset(*raw) as f64 / hz);
        }
        if let Some(ratio) = self.prev.and_then(|prev| busy_ratio(&prev, ticks)) {
            out.set_gauge(&self.usage, ratio, now_ms);
        }
        self.prev = Some(*ticks);
    }
}

pub struct Cpu {
    file: SourceFile,
    hz: f64,
    lines: StatLines,
    all: CpuState,
    /// By core number; a core that went offline keeps its state for when it comes back.
    cores: Vec<Option<CpuState>>,
}

impl Cpu {
    pub fn new(root: &Path) -> Cpu {
        Cpu {
            file: SourceFile::new(root.join("proc/stat")),
            hz: user_hz(),
            lines: StatLines::default(),
            all: CpuState::new("all"),
            cores: Vec::new(),
        }
    }
}

const DESCRIBE: &[(&str, &str)] = &[
    (
        "banyan_node_cpu_seconds_total",
        "CPU time spent in each mode since the agent started, per core and for all cores (cpu=\"all\").",
    ),
    (
        "banyan_node_cpu_usage_ratio",
        "Fraction of CPU time busy (not idle or iowait) over the last interval, per core and for all cores.",
    ),
    ("banyan_node_cpus", "Online CPU cores."),
];

impl Collector for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn describe(&self) -> &'static [(&'static str, &'static str)] {
        DESCRIBE
    }

    fn collect(&mut self, now_ms: u64, out: &mut MetricSet) -> Result<(), CollectError> {
        let (text, path) = self.file.read()?;
        parse_stat(&text, &mut self.lines).map_err(|what| CollectError::parse(path, what))?;
        if let Some(all) = &self.lines.all {
            self.all.emit(all, self.hz, now_ms, out);
        }
        for (core, ticks) in &self.lines.cores {
            if *core >= self.cores.len() {
                self.cores.resize_with(core + 1, || None);
            }
            self.cores[*core]
                .get_or_insert_with(|| CpuState::new(&core.to_string()))
                .emit(ticks, self.hz, now_ms, out);
        }
        out.set_gauge("banyan_node_cpus", self.lines.cores.len() as f64, now_ms);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_tree::FakeTree;
    use super::*;
    use banyan_protocol::metric::Value;

    const STAT: &str = "\
cpu  370203 10 33443 270421 7460 5 1026 1200 40 2
cpu0 185607 4 16387 135688 3134 2 468 594 20 1
cpu1 184596 6 17056 134733 4326 3 558 606 20 1
intr 2116825 0 0 0 0 1 15
ctxt 2906923
btime 1700000000
processes 10561
procs_running 2
procs_blocked 0
";

    fn gauge(set: &MetricSet, name: &str) -> Option<f64> {
        match set.get(name) {
            Some(Value::Gauge(g)) => Some(g.last),
            _ => None,
        }
    }

    #[test]
    fn parses_the_cpu_lines() {
        let mut lines = StatLines::default();
        parse_stat(STAT, &mut lines).unwrap();
        assert_eq!(
            lines.all,
            Some([370203, 10, 33443, 270421, 7460, 5, 1026, 1200])
        );
        assert_eq!(lines.cores.len(), 2);
        assert_eq!(
            lines.cores[1],
            (1, [184596, 6, 17056, 134733, 4326, 3, 558, 606])
        );
        // Parsing again reuses the storage and forgets the old lines.
        parse_stat("cpu 1 2 3 4\ncpu7 1 2 3 4\n", &mut lines).unwrap();
        assert_eq!(lines.all, Some([1, 2, 3, 4, 0, 0, 0, 0]));
        assert_eq!(lines.cores, vec![(7, [1, 2, 3, 4, 0, 0, 0, 0])]);
    }

    #[test]
    fn rejects_garbage() {
        let mut lines = StatLines::default();
        assert!(parse_stat("intr 1 2\n", &mut lines).is_err());
        assert!(parse_stat("cpu 1 x 3 4\n", &mut lines).is_err());
        assert!(parse_stat("cpu 1 2\n", &mut lines).is_err());
        assert!(parse_stat("cpu 1 2 3 4\ncpuX 1 2 3 4\n", &mut lines).is_err());
        assert!(parse_stat("cpu 1 2 3 4\ncpu99999999 1 2 3 4\n", &mut lines).is_err());
    }

    #[test]
    fn busy_ratio_counts_iowait_as_idle() {
        let prev = [100, 0, 50, 800, 50, 0, 0, 0];
        let now = [160, 0, 70, 900, 70, 0, 0, 0];
        // 80 busy ticks of 200.
        assert_eq!(busy_ratio(&prev, &now), Some(0.4));
        assert_eq!(busy_ratio(&now, &now), None);
    }

    #[test]
    fn counters_start_at_zero_and_usage_needs_two_samples() {
        let tree = FakeTree::new();
        tree.write(
            "proc/stat",
            "cpu 1000 0 100 5000 0 0 0 0\ncpu0 500 0 50 2500 0 0 0 0\ncpu1 500 0 50 2500 0 0 0 0\n",
        );
        let mut cpu = Cpu::new(tree.path());
        cpu.hz = 100.0;
        let mut first = MetricSet::new();
        cpu.collect(1_000, &mut first).unwrap();
        assert_eq!(
            first.counter("banyan_node_cpu_seconds_total{cpu=\"all\",mode=\"user\"}"),
            0.0
        );
        assert_eq!(gauge(&first, "banyan_node_cpus"), Some(2.0));
        assert_eq!(
            gauge(&first, "banyan_node_cpu_usage_ratio{cpu=\"all\"}"),
            None
        );

        tree.write(
            "proc/stat",
            "cpu 1150 0 110 5040 0 0 0 0\ncpu0 600 0 50 2500 0 0 0 0\ncpu1 550 0 60 2540 0 0 0 0\n",
        );
        let mut second = MetricSet::new();
        cpu.collect(2_000, &mut second).unwrap();
        assert_eq!(
            second.counter("banyan_node_cpu_seconds_total{cpu=\"all\",mode=\"user\"}"),
            1.5
        );
        assert_eq!(
            second.counter("banyan_node_cpu_seconds_total{cpu=\"1\",mode=\"idle\"}"),
            0.4
        );
        assert_eq!(
            gauge(&second, "banyan_node_cpu_usage_ratio{cpu=\"all\"}"),
            Some(160.0 / 200.0)
        );
        assert_eq!(
            gauge(&second, "banyan_node_cpu_usage_ratio{cpu=\"0\"}"),
            Some(1.0)
        );
        assert_eq!(
            gauge(&second, "banyan_node_cpu_usage_ratio{cpu=\"1\"}"),
            Some(60.0 / 100.0)
        );
        // 8 modes for all and each core, a usage gauge for each, and the core count.
        assert_eq!(second.len(), 8 * 3 + 3 + 1);
    }

    #[test]
    fn idle_and_iowait_stepping_back_is_not_a_reset() {
        let tree = FakeTree::new();
        tree.write(
            "proc/stat",
            "cpu 1000 0 100 5000 700 0 0 0\ncpu0 1000 0 100 5000 700 0 0 0\n",
        );
        let mut cpu = Cpu::new(tree.path());
        cpu.hz = 100.0;
        cpu.collect(1_000, &mut MetricSet::new()).unwrap();
        // proc(5): iowait "will decrease in certain conditions"; idle too on some kernels.
        tree.write(
            "proc/stat",
            "cpu 1010 0 100 4999 699 0 0 0\ncpu0 1010 0 100 4999 699 0 0 0\n",
        );
        let mut set = MetricSet::new();
        cpu.collect(2_000, &mut set).unwrap();
        for label in ["all", "0"] {
            let seconds = |mode: &str| {
                set.counter(&format!(
                    "banyan_node_cpu_seconds_total{{cpu=\"{label}\",mode=\"{mode}\"}}"
                ))
            };
            assert_eq!(seconds("iowait"), 0.0);
            assert_eq!(seconds("idle"), 0.0);
            assert_eq!(seconds("user"), 0.1);
        }
        tree.write(
            "proc/stat",
            "cpu 1010 0 100 5003 702 0 0 0\ncpu0 1010 0 100 5003 702 0 0 0\n",
        );
        let mut set = MetricSet::new();
        cpu.collect(3_000, &mut set).unwrap();
        assert_eq!(
            set.counter("banyan_node_cpu_seconds_total{cpu=\"all\",mode=\"iowait\"}"),
            0.02
        );
        assert_eq!(
            set.counter("banyan_node_cpu_seconds_total{cpu=\"all\",mode=\"idle\"}"),
            0.03
        );
    }

    #[test]
    fn live_cpus_equals_the_cpu_lines_of_proc_stat() {
        let mut cpu = Cpu::new(Path::new("/"));
        let mut set = MetricSet::new();
        cpu.collect(1_000, &mut set).unwrap();
        let text = std::fs::read_to_string("/proc/stat").unwrap();
        let lines = text
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count();
        assert_eq!(gauge(&set, "banyan_node_cpus"), Some(lines as f64));
        assert!(lines >= 1);
    }

    #[test]
    fn live_usage_is_a_ratio_and_seconds_grow() {
        let mut cpu = Cpu::new(Path::new("/"));
        cpu.collect(1_000, &mut MetricSet::new()).unwrap();
        let started = std::time::Instant::now();
        let mut burn = 0u64;
        while started.elapsed() < std::time::Duration::from_millis(60) {
            burn = std::hint::black_box(burn.wrapping_mul(31).wrapping_add(1));
        }
        let mut set = MetricSet::new();
        cpu.collect(1_060, &mut set).unwrap();
        let ratio = gauge(&set, "banyan_node_cpu_usage_ratio{cpu=\"all\"}").unwrap();
        assert!((0.0..=1.0).contains(&ratio), "{ratio}");
        let busy: f64 = MODES
            .iter()
            .map(|m| {
                set.counter(&format!(
                    "banyan_node_cpu_seconds_total{{cpu=\"all\",mode=\"{m}\"}}"
                ))
            })
            .sum();
        assert!(busy > 0.0, "the test burned CPU, yet no tick was counted");
        assert_eq!(user_hz(), 100.0);
    }
}

//! What one wave of the node collectors costs on this machine: runs 1,000 samples (or the count
//! given as the first argument) of every collector under `/` and prints microseconds per sample,
//! per collector and in all, and the share of one core that makes at the default 1 s period.
//!
//! `cargo run --release -p banyan-agent --example collect_cost [SAMPLES]`

use banyan_agent::collect::{default_collectors, Collectors};
use banyan_protocol::metric::MetricSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// CPU time of this (single) thread in nanoseconds, from `/proc/thread-self/schedstat`; `None`
/// where the kernel does not keep it.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn status_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn main() {
    let samples: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000)
        .max(1);
    let root = Path::new("/");
    // Simulated wave clock: a second between samples, so rates and rescans happen as in the agent.
    let mut now_ms = 1_700_000_000_000u64;

    println!(
        "{samples} samples of each collector under {}",
        root.display()
    );
    println!("{:<12} {:>10} {:>8}", "collector", "us/sample", "series");
    for mut collector in default_collectors(root) {
        let mut out = MetricSet::new();
        let _ = collector.collect(now_ms, &mut out); // baselines
        let mut series = 0;
        let mut spent = Duration::ZERO;
        for i in 1..=samples {
            let mut out = MetricSet::new();
            let started = Instant::now();
            let result = collector.collect(now_ms + i * 1000, &mut out);
            spent += started.elapsed();
            if let Err(e) = result {
                println!("{:<12} failed: {e}", collector.name());
                break;
            }
            series = out.len();
        }
        println!(
            "{:<12} {:>10.1} {:>8}",
            collector.name(),
            spent.as_secs_f64() * 1e6 / samples as f64,
            series
        );
    }

    let mut collectors = Collectors::for_node(root);
    collectors.collect(now_ms);
    let cpu_before = thread_cpu_ns();
    let started = Instant::now();
    let mut series = 0;
    for _ in 0..samples {
        now_ms += 1000;
        series = collectors.collect(now_ms).len();
    }
    let wall_us = started.elapsed().as_secs_f64() * 1e6 / samples as f64;
    let cpu_us = match (cpu_before, thread_cpu_ns()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e3 / samples as f64),
        _ => None,
    };
    println!(
        "all          {wall_us:>10.1} {series:>8}   (wall time per sample, with the output set)"
    );
    if let Some(cpu_us) = cpu_us {
        println!(
            "cpu time per sample: {cpu_us:.1} us = {:.4}% of one core at a 1 s period",
            cpu_us / 1e4
        );
    }
    println!(
        "agent process RSS now {} KiB, peak {} KiB",
        status_kib("VmRSS:").unwrap_or(0),
        status_kib("VmHWM:").unwrap_or(0)
    );
}

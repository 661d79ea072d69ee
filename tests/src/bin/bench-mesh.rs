//! bench-mesh: figures of the real mesh, with real agents on test hosts (network namespaces):
//! leaf-to-root visibility of a changed value (p50/p99), the per-hop forwarding time, what the root
//! costs in steady state (CPU and memory of its process, bytes it receives per wave), and the time
//! from killing an inner agent to the tree being whole again, over several runs.
//!
//! A benchmark, not a test: it prints figures and asserts nothing about time. Run it as root with
//! `scripts/bench-mesh` (defaults: 63 agents, 1 s period, 40 visibility samples, a 30 s window for
//! the root's cost, 5 kills), which runs the daemons built in release.

use anyhow::{bail, Context, Result};
use banyan_tests::cluster::{Cluster, ClusterOptions};
use banyan_tests::procstat::{self, CpuWindow};
use banyan_tests::support::bench_arg;
use banyan_tests::support::binaries;
use banyan_tests::support::percentile;
use banyan_tests::testnet::Testnet;
use serde_json::Value;
use std::time::{Duration, Instant};

fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "p50 {:.0} ms, p99 {:.0} ms, min {:.0}, max {:.0} (n={})",
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.first().copied().unwrap_or(f64::NAN),
        v.last().copied().unwrap_or(f64::NAN),
        v.len()
    )
}

/// What the root costs in steady state, over `window_s` seconds in which nothing else asks it
/// anything: CPU (% of one core, per wave) and memory of its process, and the bytes it received on
/// its mesh links (`mesh_rx_bytes` in `/status`) per wave.
fn root_cost(cluster: &Cluster, agents: usize, window_s: usize) -> Result<()> {
    let pid = cluster.root_pid().context("the root is not running")?;
    let read = |s: &Value, what: &str, v: Option<u64>| {
        v.with_context(|| format!("/status has no {what}: {s}"))
    };
    let s0 = cluster.http_get("/status")?;
    let cpu = CpuWindow::start(pid)?;
    std::thread::sleep(Duration::from_secs(window_s as u64));
    let used = cpu.finish()?;
    let s1 = cluster.http_get("/status")?;
    let mem = procstat::memory(pid)?;
    let waves = read(&s1, "last wave", s1["last_wave"]["wave"].as_u64())?.saturating_sub(read(
        &s0,
        "last wave",
        s0["last_wave"]["wave"].as_u64(),
    )?);
    let rx = read(&s1, "mesh_rx_bytes", s1["mesh_rx_bytes"].as_u64())?.saturating_sub(read(
        &s0,
        "mesh_rx_bytes",
        s0["mesh_rx_bytes"].as_u64(),
    )?);
    let per_wave = rx as f64 / waves.max(1) as f64;
    println!(
        "root cost over {:.1} s of steady state ({waves} waves, {agents} agents): CPU {:.3}% of one core \
         ({:.0} µs per wave), RSS {:.1} MiB (peak {:.1} MiB)",
        used.wall.as_secs_f64(),
        used.percent(),
        used.micros_per(waves),
        mem.rss_mib(),
        mem.peak_mib()
    );
    println!(
        "root mesh input: {per_wave:.0} bytes per wave ({:.0} bytes per wave per agent, {:.1} KiB/s)",
        per_wave / agents.max(1) as f64,
        rx as f64 / 1024.0 / used.wall.as_secs_f64()
    );
    Ok(())
}

fn main() -> Result<()> {
    if !Testnet::require()? {
        bail!("bench-mesh needs root and network namespaces");
    }
    let agents = bench_arg("--agents", 63);
    let samples = bench_arg("--samples", 40);
    let kills = bench_arg("--kills", 5);
    let window = bench_arg("--window", 30);
    let mut cluster = Cluster::start(agents, ClusterOptions::default())?;
    // KEEP_LOGS=1 keeps the daemons' logs and state for a look at an outlier.
    if std::env::var_os("KEEP_LOGS").is_some() {
        cluster.keep_logs();
        println!("bench-mesh: logs kept in {}", cluster.dir().display());
    }
    let names = cluster.names();
    let formed = cluster.wait_healthy(&names, Duration::from_secs(120))?;
    let topo = cluster.topology()?;
    println!(
        "bench-mesh: {agents} agents on test hosts, period 1 s; tree formed in {:.1} s, depth {}",
        formed.as_secs_f64(),
        topo.depth()
    );
    println!("daemons: {}", binaries()?.root.display());

    // Per-hop time: the root reports, for each wave, the time from the wave's start (every node
    // samples at the same wall-clock boundary) to the root having the whole wave.
    let mut latencies = Vec::new();
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while latencies.len() < 20 && Instant::now() < deadline {
        let s = cluster.http_get("/status")?;
        let wave = s["last_wave"]["wave"].as_u64();
        if wave.is_some() && wave != last && s["last_wave"]["complete"].as_bool() == Some(true) {
            if let Some(l) = s["last_wave"]["latency_ms"].as_f64() {
                latencies.push(l);
            }
            last = wave;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let depth = topo.depth().max(1) as f64;
    let per_hop: Vec<f64> = latencies.iter().map(|l| l / depth).collect();
    println!(
        "wave latency (sampling -> root has the whole wave): {}",
        summary(latencies)
    );
    println!(
        "per-hop forwarding over depth {depth}: {}",
        summary(per_hop)
    );

    root_cost(&cluster, agents, window)?;

    // Leaf-to-root visibility: change a counter on the deepest leaf, poll the root's totals.
    let depths = cluster.agent_depths()?;
    let (leaf, leaf_depth) = depths
        .iter()
        .max_by_key(|(_, d)| **d)
        .map(|(n, d)| (n.clone(), *d))
        .context("no attached agent")?;
    let li = cluster.index_of(&leaf).context("leaf index")?;
    let mut visible = Vec::new();
    for k in 1..=samples {
        // Spread the changes over the period so the wait for the next sample is measured fairly.
        std::thread::sleep(Duration::from_millis(137 * (k as u64 % 7)));
        let t0 = Instant::now();
        cluster.set_metric(li, "bench_marker_total", k as f64)?;
        loop {
            if cluster.counter_total("bench_marker_total")? == Some(k as f64) {
                visible.push(t0.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("the change on {leaf} did not reach the root in 10 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    println!(
        "leaf-to-root visibility of a changed value ({leaf}, depth {leaf_depth}): {}",
        summary(visible)
    );

    // Heal: SIGKILL an inner agent (silent death, the worst case for detection).
    let mut detect = Vec::new();
    let mut heal = Vec::new();
    for run in 0..kills {
        let topo = cluster.topology()?;
        let victim = topo
            .agents()
            .filter(|n| n.attached() && !n.children.is_empty())
            .map(|n| n.name.clone())
            .nth(run % 3)
            .context("no inner agent")?;
        let vi = cluster.index_of(&victim).context("victim index")?;
        let others: Vec<String> = names.iter().filter(|n| **n != victim).cloned().collect();
        let t0 = Instant::now();
        cluster.kill_agent(vi)?;
        let mut detected = None;
        loop {
            let t = cluster.topology()?;
            if detected.is_none() && !t.is_attached(&victim) {
                detected = Some(t0.elapsed());
            }
            if detected.is_some() && t.healthy(&others) {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("the tree did not heal within 30 s after killing {victim}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let healed = t0.elapsed();
        let d = detected.unwrap_or(healed);
        println!(
            "kill {} ({victim}): lost seen at the root after {:.2} s, tree whole after {:.2} s",
            run + 1,
            d.as_secs_f64(),
            healed.as_secs_f64()
        );
        detect.push(d.as_secs_f64() * 1000.0);
        heal.push(healed.as_secs_f64() * 1000.0);
        cluster.restart_agent(vi)?;
        cluster.wait_healthy(&names, Duration::from_secs(60))?;
    }
    println!(
        "detection (kill -> the root sees it lost): {}",
        summary(detect)
    );
    println!(
        "heal (kill -> every other agent in a sound tree): {}",
        summary(heal)
    );
    println!("targets: detection <= 3 s, heal <= 5 s, leaf-to-root p99 <= 1 s at a 1 s period");
    Ok(())
}

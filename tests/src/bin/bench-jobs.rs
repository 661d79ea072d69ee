//! bench-jobs: time from a job's last rank exit to its profile being served by the root, with
//! thousands of ranks reporting.
//!
//! A root and `--hosts` agents run on test hosts (network namespaces) as in the integration tests.
//! Each host runs `fake-rank --swarm` with `--ranks / --hosts` ranks on as many connections to its
//! agent; every rank sends `--updates` updates, then its exit. The benchmark takes the latest
//! exit any swarm reports and polls `/profiles/get` every 5 ms until the profile is there, and
//! checks that it counts every rank and every update. It repeats `--rounds` times.
//!
//! A benchmark, not a test: it prints figures and asserts nothing about time. Run as root with
//! `scripts/bench-jobs`. The target it is compared with: profile served ≤ 1 s after the last exit.

use anyhow::{anyhow, bail, Context, Result};
use banyan_tests::cluster::{Cluster, ClusterOptions};
use banyan_tests::support::bench_arg;
use banyan_tests::support::http_request;
use banyan_tests::testnet::Testnet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `fake-rank`, built next to this benchmark.
fn fake_rank() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", me.display()))?;
    let p = dir.join("fake-rank");
    if !p.is_file() {
        bail!(
            "{} is missing: cargo build -p banyan-tests --bins",
            p.display()
        );
    }
    Ok(p)
}

fn main() -> Result<()> {
    if !Testnet::require()? {
        bail!("bench-jobs needs root and network namespaces");
    }
    let hosts = bench_arg("--hosts", 8) as usize;
    let ranks = bench_arg("--ranks", 4096);
    let updates = bench_arg("--updates", 3);
    let rounds = bench_arg("--rounds", 3);
    let per_host = ranks / hosts as u64;
    let ranks = per_host * hosts as u64;
    let rank_bin = fake_rank()?;
    let cluster = Cluster::start(hosts, ClusterOptions::default())?;
    let names = cluster.names();
    cluster.wait_healthy(&names, Duration::from_secs(60))?;
    println!(
        "bench-jobs: {ranks} ranks on {hosts} test hosts ({per_host} a host), {updates} updates each, period 1 s"
    );
    let mut latencies = Vec::new();
    for round in 0..rounds {
        let job = format!("bench-{}-{round}", std::process::id());
        let started = Instant::now();
        let swarms: Vec<_> = (0..hosts)
            .map(|i| {
                let first = (i as u64 * per_host).to_string();
                let host = cluster.hosts()[i].name.clone();
                std::process::Command::new(banyan_tests::testnet::script())
                    .args(["exec", &host])
                    .arg(&rank_bin)
                    .args(["--job", &job, "--size", &ranks.to_string()])
                    .args(["--rank", &first, "--swarm", &per_host.to_string()])
                    .args(["--updates", &updates.to_string(), "--every-ms", "300"])
                    .args(["--count", "bench_calls_total=1"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .with_context(|| format!("starting the swarm on {host}"))
            })
            .collect::<Result<_>>()?;
        let mut last_exit = 0u64;
        for s in swarms {
            let out = s.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let at = text
                .lines()
                .find_map(|l| l.strip_prefix("last-exit-ms "))
                .and_then(|t| t.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    anyhow!(
                        "a swarm failed: {text}{}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
            last_exit = last_exit.max(at);
        }
        let path = format!("/profiles/get?jobid={job}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let profile = loop {
            let (status, body) = http_request(
                cluster.http_addr(),
                "GET",
                &path,
                None,
                None,
                Duration::from_secs(5),
            )?;
            if status == 200 {
                break serde_json::from_slice::<serde_json::Value>(&body)?;
            }
            if Instant::now() > deadline {
                bail!("no profile for {job} within 60 s of the last exit");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let served = unix_ms();
        let latency = served.saturating_sub(last_exit);
        let calls = profile["counters"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == "bench_calls_total"))
            .and_then(|c| c["ctype"]["Counter"]["value"].as_f64())
            .unwrap_or(0.0);
        let complete = calls == (ranks * updates) as f64
            && profile["ranks"]["started"] == ranks
            && profile["ranks"]["ended"] == ranks;
        println!(
            "round {round}: last exit -> profile served {latency} ms (job ran {:.1} s); profile {} ({calls} calls, ranks {})",
            started.elapsed().as_secs_f64(),
            if complete { "complete" } else { "INCOMPLETE" },
            profile["ranks"]
        );
        latencies.push(latency);
    }
    latencies.sort_unstable();
    let p50 = latencies[latencies.len() / 2];
    let max = latencies.last().copied().unwrap_or(0);
    println!(
        "last exit -> profile served, {ranks} ranks: p50 {p50} ms, max {max} ms (n={}); target <= 1000 ms: {}",
        latencies.len(),
        if max <= 1000 { "met" } else { "NOT met" }
    );
    Ok(())
}

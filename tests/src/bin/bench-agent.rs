//! bench-agent: what one leaf agent costs its node, beside Debian's `prometheus-node-exporter` on
//! the same test host, scraped every second over HTTP, measured over the same window.
//!
//! The root and the agents run on test hosts (network namespaces) as in the integration tests; the
//! measured agent is a leaf (no children), sampling its node every wave at a 1 s period. For each
//! of the two processes it prints the CPU used over the window (from `/proc/PID/stat`: % of one
//! core, and µs per sample, i.e. per wave for the agent and per scrape for the exporter) and its
//! memory at the end (`VmRSS`, `VmHWM`, and the anonymous part `RssAnon`: the rest is the pages of
//! the program and its libraries), and its wake-ups per second (times its threads were put on a
//! CPU, from `/proc/PID/task/*/schedstat`). The scraper's own cost is not measured.
//!
//! A benchmark, not a test: it prints figures and asserts nothing about them. Run it as root with
//! `scripts/bench-agent`, which builds the daemons in release and installs the exporter. Options:
//! `--duration S` (60), `--agents N` (1: the root and one leaf), `--port P` (9100, the exporter's).
//! The daemons are the ones in `BANYAN_BIN_DIR` (see `banyan_tests::support::binaries`).

use anyhow::{bail, Context, Result};
use banyan_tests::cluster::{Cluster, ClusterOptions};
use banyan_tests::procstat::{self, CpuUse, CpuWindow, Memory};
use banyan_tests::support::bench_arg;
use banyan_tests::support::binaries;
use banyan_tests::testnet::Testnet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

/// How long both processes run, scraped and sampling, before the window opens.
const WARM_UP: Duration = Duration::from_secs(5);

const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// Scrapes `/metrics` every second on one keep-alive connection, as Prometheus does, until
/// dropped; counts the scrapes that succeeded.
struct Scraper {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// The size and the number of samples (non-comment lines) of the last good answer.
    last_size: Arc<AtomicU64>,
    last_series: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Scraper {
    fn start(addr: SocketAddr) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let last_size = Arc::new(AtomicU64::new(0));
        let last_series = Arc::new(AtomicU64::new(0));
        let (s, o, f, ls, lc) = (
            stop.clone(),
            ok.clone(),
            failed.clone(),
            last_size.clone(),
            last_series.clone(),
        );
        let thread = thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into();
            let url = format!("http://{addr}/metrics");
            let mut next = Instant::now();
            while !s.load(Ordering::Relaxed) {
                let body = agent
                    .get(&url)
                    .call()
                    .and_then(|mut r| r.body_mut().read_to_string());
                match body {
                    Ok(text) => {
                        o.fetch_add(1, Ordering::Relaxed);
                        ls.store(text.len() as u64, Ordering::Relaxed);
                        let series = text
                            .lines()
                            .filter(|l| !l.is_empty() && !l.starts_with('#'))
                            .count();
                        lc.store(series as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // A fixed schedule, so a slow scrape does not shift the next ones.
                next += SCRAPE_EVERY;
                let now = Instant::now();
                if next > now {
                    thread::sleep(next - now);
                } else {
                    next = now;
                }
            }
        });
        Scraper {
            stop,
            ok,
            failed,
            last_size,
            last_series,
            thread: Some(thread),
        }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The root's last wave number in `/status`.
fn last_wave(cluster: &Cluster) -> Result<u64> {
    let s = cluster.http_get("/status")?;
    s["last_wave"]["wave"]
        .as_u64()
        .with_context(|| format!("/status has no last wave yet: {s}"))
}

/// Waits until a scrape of `addr` answers, for at most `timeout`.
fn wait_exporter(addr: SocketAddr, pid: u32, log: &Path, timeout: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let (status, _) = banyan_tests::support::http_request(
            addr,
            "GET",
            "/metrics",
            None,
            None,
            Duration::from_secs(2),
        )
        .unwrap_or((0, Vec::new()));
        if status == 200 {
            return Ok(());
        }
        if t0.elapsed() > timeout || procstat::cpu_time(pid).is_err() {
            bail!(
                "{EXPORTER} did not answer on {addr} within {timeout:?}; its log {}:\n{}",
                log.display(),
                banyan_tests::support::tail(log, 20)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn row(name: &str, cpu: &CpuUse, samples: u64, wakes: f64, mem: &Memory) {
    println!(
        "{name:<26} {:>10.3} {:>14.0} {:>8} {:>10.1} {:>8.1} {:>13.1} {:>9.1}",
        cpu.percent(),
        cpu.micros_per(samples),
        samples,
        wakes,
        mem.rss_mib(),
        mem.peak_mib(),
        mem.anon_mib()
    );
}

fn main() -> Result<()> {
    if !Testnet::require()? {
        bail!("bench-agent needs root and network namespaces");
    }
    if !Path::new(EXPORTER).is_file() {
        bail!("{EXPORTER} is missing: install the Debian package prometheus-node-exporter");
    }
    let duration = Duration::from_secs(bench_arg("--duration", 60).max(1));
    let agents = bench_arg("--agents", 1).max(1) as usize;
    let port = u16::try_from(bench_arg("--port", 9100)).context("--port out of range")?;
    let bins = binaries()?;

    let mut cluster = Cluster::start(agents, ClusterOptions::default())?;
    let names = cluster.names();
    cluster.wait_healthy(&names, Duration::from_secs(60))?;
    let topo = cluster.topology()?;
    let leaf = topo
        .agents()
        .filter(|n| n.attached() && n.children.is_empty())
        .max_by_key(|n| n.depth)
        .map(|n| (n.name.clone(), n.depth))
        .context("no leaf agent")?;
    let (leaf, depth) = leaf;
    let li = cluster.index_of(&leaf).context("leaf index")?;
    let agent_pid = cluster
        .agent_pid(li)
        .context("the leaf agent is not running")?;
    let host = cluster.hosts()[li].clone();

    // The exporter on the leaf's host, on that host's address.
    let addr = SocketAddr::from((host.addr, port));
    let listen = format!("--web.listen-address={addr}");
    let log = cluster.dir().join("node-exporter.log");
    // Debian enables the systemd collector, which fails on every scrape where systemd is not PID
    // 1 (logging a dbus error); it is left out so the exporter does only what it can do here.
    let exporter_pid = cluster.testnet().spawn(
        li,
        Path::new(EXPORTER),
        &[&listen, "--no-collector.systemd"],
        &[],
        &log,
    )?;
    wait_exporter(addr, exporter_pid, &log, Duration::from_secs(10))?;
    let scraper = Scraper::start(addr);
    thread::sleep(WARM_UP);

    let (w0, s0) = (last_wave(&cluster)?, scraper.ok());
    let agent_cpu = CpuWindow::start(agent_pid)?;
    let exporter_cpu = CpuWindow::start(exporter_pid)?;
    let wake0 = (
        procstat::wakeups(agent_pid)?,
        procstat::wakeups(exporter_pid)?,
    );
    let run0 = (
        procstat::run_time(agent_pid)?,
        procstat::run_time(exporter_pid)?,
    );
    thread::sleep(duration);
    let run1 = (
        procstat::run_time(agent_pid)?,
        procstat::run_time(exporter_pid)?,
    );
    let agent_used = agent_cpu.finish()?;
    let exporter_used = exporter_cpu.finish()?;
    let wake1 = (
        procstat::wakeups(agent_pid)?,
        procstat::wakeups(exporter_pid)?,
    );
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / agent_used.wall.as_secs_f64();
    let wakes = (per_s(wake0.0, wake1.0), per_s(wake0.1, wake1.1));
    let (w1, s1) = (last_wave(&cluster)?, scraper.ok());
    let agent_mem = procstat::memory(agent_pid)?;
    let exporter_mem = procstat::memory(exporter_pid)?;
    let failed = scraper.failed();
    let (size, series) = (
        scraper.last_size.load(Ordering::Relaxed),
        scraper.last_series.load(Ordering::Relaxed),
    );
    drop(scraper);

    let waves = w1.saturating_sub(w0);
    let scrapes = s1.saturating_sub(s0);
    println!(
        "bench-agent: leaf {leaf} (depth {depth}, {agents} agent(s) and the root), period 1 s, window {:.1} s",
        agent_used.wall.as_secs_f64()
    );
    println!("daemons: {}", bins.agent.display());
    println!(
        "exporter: {EXPORTER} on {addr} (--no-collector.systemd), scraped every 1 s: \
         {series} samples, {:.0} KiB per scrape, {failed} failed scrape(s)",
        size as f64 / 1024.0
    );
    println!(
        "CPU from /proc/PID/stat in ticks of {:.0} ms ({:.3}% of one core over this window)",
        1000.0 / procstat::clock_ticks()? as f64,
        100.0 / procstat::clock_ticks()? as f64 / agent_used.wall.as_secs_f64()
    );
    println!();
    println!(
        "{:<26} {:>10} {:>14} {:>8} {:>10} {:>8} {:>13} {:>9}",
        "process",
        "CPU % core",
        "CPU µs/sample",
        "samples",
        "wake-ups/s",
        "RSS MiB",
        "peak RSS MiB",
        "anon MiB"
    );
    row(
        "banyan-agent (leaf)",
        &agent_used,
        waves,
        wakes.0,
        &agent_mem,
    );
    row(
        "prometheus-node-exporter",
        &exporter_used,
        scrapes,
        wakes.1,
        &exporter_mem,
    );
    println!();
    let ratio = agent_used.micros_per(waves) / exporter_used.micros_per(scrapes);
    println!(
        "agent / node_exporter CPU per sample: {ratio:.3} (target <= 0.05: {})",
        verdict(ratio <= 0.05)
    );
    println!(
        "agent CPU: {:.3}% of one core (target <= 0.05%: {})",
        agent_used.percent(),
        verdict(agent_used.percent() <= 0.05)
    );
    // The same window in the scheduler's nanoseconds: at these rates a window holds a handful
    // of clock ticks, too few to tell one change from another.
    let ns = |a: Duration, b: Duration| b.saturating_sub(a).as_secs_f64();
    let wall = agent_used.wall.as_secs_f64();
    let (agent_s, exporter_s) = (ns(run0.0, run1.0), ns(run0.1, run1.1));
    let per_sample = |cpu: f64, n: u64| cpu * 1e6 / n.max(1) as f64;
    println!(
        "from schedstat (ns): agent {:.4}% of one core, {:.0} µs/sample; node_exporter {:.4}%, {:.0} µs/sample; ratio {:.3}",
        100.0 * agent_s / wall,
        per_sample(agent_s, waves),
        100.0 * exporter_s / wall,
        per_sample(exporter_s, scrapes),
        per_sample(agent_s, waves) / per_sample(exporter_s, scrapes).max(1e-9)
    );
    println!(
        "agent RSS: {:.1} MiB, peak {:.1} MiB (target <= 8 MiB on a leaf: {})",
        agent_mem.rss_mib(),
        agent_mem.peak_mib(),
        verdict(agent_mem.rss_mib() <= 8.0)
    );
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

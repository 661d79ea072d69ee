//! bench-webui: time to first render and bytes transferred of the web UI's overview and nodes
//! pages with many nodes (default 1,000), in headless Chromium.
//!
//! The nodes are real agents, all in this one process: `banyan_agent::shell::run` N times on
//! loopback, each with its own mesh port and ingest socket, enrolled with the join token of a real
//! `banyan-root` process. The root, the tree, the digests and the HTTP API are the real ones; only
//! the agents share a process (and sample the same host), which is the cheapest honest way to give
//! the root 1,000 nodes on one machine. A long period (default 5 s) keeps two cores able to carry
//! them, and their links get more slack than production's (a heartbeat every 1 s, a peer lost
//! after 15 s of silence rather than 0.5 s and 2.5 s), so that one process starved of CPU does
//! not make the tree churn; the root runs with its defaults. The agents still load the machine
//! while the browser is timed, so the times are upper bounds.
//!
//! Per page: the first run in a fresh browser profile (cold: every file fetched) and further runs
//! (warm: files revalidated, 304). "First render" is the time from the navigation's start to the
//! page's first data on screen (the `banyan-first-render` mark the UI sets after its first
//! successful poll). Bytes are what Resource Timing reports as transferred (headers included) up to
//! that mark, then the polling traffic per second over a window.
//!
//! A benchmark, not a test: it prints figures and asserts nothing about time. Run it with
//! `scripts/bench-webui` (options: --agents N --period-ms MS --runs N --window S).

use anyhow::{anyhow, bail, Context, Result};
use banyan_agent::shell::AgentConfig;
use banyan_agent::tree::TreeConfig;
use banyan_tests::browser::{browser_programs, Browser};
use banyan_tests::support::{bench_arg, binaries, free_port, http_request};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The figures of one page load, read from the page's Resource Timing.
const MEASURE: &str = r#"
const mark = performance.getEntriesByName('banyan-first-render')[0];
if (!mark) return null;
const nav = performance.getEntriesByType('navigation')[0];
const res = performance.getEntriesByType('resource');
const before = res.filter(e => e.responseEnd <= mark.startTime);
const sum = (l, k) => l.reduce((a, e) => a + (e[k] || 0), 0);
return {
  render_ms: mark.startTime,
  bytes: nav.transferSize + sum(before, 'transferSize'),
  body_bytes: nav.encodedBodySize + sum(before, 'encodedBodySize'),
  requests: 1 + before.length,
  api: before.filter(e => !e.name.includes('/ui/')).map(e => [new URL(e.name).pathname, e.transferSize]),
};
"#;

/// The polling traffic after the first render, per second, over the time since it.
const STEADY: &str = r#"
const mark = performance.getEntriesByName('banyan-first-render')[0];
const res = performance.getEntriesByType('resource').filter(e => e.startTime > mark.startTime && e.responseEnd > 0);
const span = (performance.now() - mark.startTime) / 1000;
return {bytes_per_s: res.reduce((a, e) => a + e.transferSize, 0) / span, requests_per_s: res.length / span};
"#;

struct Root {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_root(period_ms: u64) -> Result<(Root, SocketAddr, SocketAddr)> {
    let bins = binaries()?;
    let dir = std::env::temp_dir().join(format!("banyan-bench-webui-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mesh = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST, true)?));
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port(Ipv4Addr::LOCALHOST, false)?));
    let log = std::fs::File::create(dir.join("root.log"))?;
    let child = Command::new(&bins.root)
        .arg("--mesh")
        .arg(mesh.to_string())
        .arg("--http")
        .arg(http.to_string())
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--period")
        .arg(format!("{period_ms}ms"))
        .env("BANYAN_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bins.root.display()))?;
    let root = Root { child, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_request(http, "GET", "/status", None, None, Duration::from_secs(2)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "the root did not answer on {http}; see {}",
                root.dir.join("root.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((root, mesh, http))
}

/// Distinct UDP ports for the agents' mesh addresses, below the kernel's ephemeral range so that
/// no client socket (enrolment, the agents' own links) takes one before its agent binds it.
fn mesh_ports(n: usize) -> Result<Vec<u16>> {
    let mut out = Vec::with_capacity(n);
    for port in 20_000u16..32_000 {
        if out.len() == n {
            break;
        }
        if std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            out.push(port);
        }
    }
    if out.len() < n {
        bail!(
            "only {} free UDP ports in 20000-31999 for {n} agents",
            out.len()
        );
    }
    Ok(out)
}

fn status(http: SocketAddr) -> Result<Value> {
    let (_, body) = http_request(http, "GET", "/status", None, None, Duration::from_secs(30))?;
    Ok(serde_json::from_slice(&body)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let agents: usize = bench_arg("--agents", 1000);
    let period_ms: u64 = bench_arg("--period-ms", 5000);
    let runs: usize = bench_arg("--runs", 5).max(2);
    let window_s: u64 = bench_arg("--window", 15);
    let Some((chromium, driver)) = browser_programs()? else {
        bail!("chromium and chromedriver are needed (Debian packages chromium, chromium-driver)");
    };
    let (root, mesh, http) = start_root(period_ms)?;
    let token: banyan_protocol::identity::JoinToken =
        std::fs::read_to_string(root.dir.join("state").join("join-token"))?
            .parse()
            .map_err(|e| anyhow!("the join token: {e}"))?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let mut ports = mesh_ports(agents)?.into_iter();
    for i in 0..agents {
        let port = ports
            .next()
            .ok_or_else(|| anyhow!("no mesh port for agent {i}"))?;
        let cfg = AgentConfig {
            name: format!("cn{}", i + 1),
            root: mesh,
            token: Some(token.clone()),
            mesh: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            state_dir: None,
            tree: TreeConfig {
                heartbeat_ms: 1000,
                dead_after_ms: 15_000,
                ..TreeConfig::default().with_period(period_ms)
            },
            metrics_file: None,
            scrape: Vec::new(),
            socket: format!("@banyan-bench-webui-{}-{i}", std::process::id()),
            actions: Default::default(),
            watch: Vec::new(),
        };
        let mut stop = stop_rx.clone();
        rt.spawn(async move {
            let name = cfg.name.clone();
            let done = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = banyan_agent::shell::run(cfg, done).await {
                eprintln!("agent {name}: {e}");
            }
        });
        // Enrolment and joining in small batches, so the root is not asked 1,000 times at once.
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    // All up, or after 5 minutes at least 90% (one process on two cores keeps a few agents
    // re-joining); the figures say how many were up.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut up;
    loop {
        let st = status(http)?;
        up = st["nodes_up"].as_u64().unwrap_or(0) as usize;
        if up >= agents || (Instant::now() > deadline && up * 10 >= agents * 9) {
            println!(
                "{up} of {agents} agents up after {:.1} s (tree depth {}, period {period_ms} ms)",
                started.elapsed().as_secs_f64(),
                st["depth"]
            );
            break;
        }
        if Instant::now() > deadline + Duration::from_secs(300) {
            bail!("only {up} of {agents} agents up after 600 s");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    // Every node has a digest at the root before the browser looks.
    std::thread::sleep(Duration::from_millis(2 * period_ms + 1000));

    let mut last = None;
    for (page, hash, ready) in [
        (
            "overview",
            "#/",
            "return document.getElementById('ov-up').textContent !== '' && document.querySelectorAll('#ov-busiest tr[data-key]').length === 10",
        ),
        (
            "nodes",
            "#/nodes",
            "return document.querySelectorAll('#nodes-table tr[data-key]').length >= arguments[0] && document.querySelectorAll('#heatmap rect').length >= arguments[0]",
        ),
    ] {
        // A fresh browser (and profile) per page: its first run is a cold one.
        drop(last.take());
        let b = Browser::start(http, &chromium, &driver)?;
        let up_before = status(http)?["nodes_up"].clone();
        let mut renders = Vec::new();
        let mut warm_bytes = Vec::new();
        for run in 0..runs {
            b.open(hash)?;
            b.wait_js(&format!("{page} with {up} nodes"), ready, vec![json!(up)])?;
            let m = b.wait_js(&format!("{page}'s first render mark"), MEASURE, vec![])?;
            let render = m["render_ms"].as_f64().unwrap_or(f64::NAN);
            let bytes = m["bytes"].as_f64().unwrap_or(f64::NAN);
            if run == 0 {
                println!(
                    "{page}: cold (fresh profile): first render {render:.0} ms, {:.1} KiB transferred in {} requests (bodies {:.1} KiB); API: {}",
                    bytes / 1024.0,
                    m["requests"],
                    m["body_bytes"].as_f64().unwrap_or(f64::NAN) / 1024.0,
                    m["api"]
                );
            } else {
                renders.push(render);
                warm_bytes.push(bytes);
            }
        }
        println!(
            "{page}: warm (files revalidated): first render median {:.0} ms (min {:.0}, max {:.0}, n={}), {:.1} KiB transferred",
            median(renders.clone()),
            renders.iter().copied().fold(f64::INFINITY, f64::min),
            renders.iter().copied().fold(0.0, f64::max),
            renders.len(),
            median(warm_bytes) / 1024.0
        );
        std::thread::sleep(Duration::from_secs(window_s));
        let steady = b.js(STEADY, vec![])?;
        println!(
            "{page}: while open: {:.1} KiB/s in {:.2} requests/s (polling)",
            steady["bytes_per_s"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            steady["requests_per_s"].as_f64().unwrap_or(f64::NAN)
        );
        b.screenshot(&format!("bench-{page}-{agents}"))?;
        println!(
            "{page}: nodes up at the root: {up_before} before, {} after",
            status(http)?["nodes_up"]
        );
        last = Some(b);
    }
    let b = last.ok_or_else(|| anyhow!("no browser"))?;
    // Not timed: how the tree and a node look at this size, for a reviewer.
    b.open("#/topology")?;
    b.wait_js(
        "the tree",
        "return document.querySelectorAll('#tree-svg [data-node]').length > 10",
        vec![],
    )?;
    b.screenshot(&format!("bench-topology-{agents}"))?;
    println!("screenshots in {}", b.shots().display());
    drop(b);
    let _ = stop_tx.send(true);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(root);
    Ok(())
}

//! Prometheus exporters joined to nodes with the root's `/join`, and the root scraped by a real
//! Prometheus server.
//!
//! Real processes throughout: agents on test hosts, Debian's `prometheus-node-exporter` inside
//! those hosts (with its textfile collector serving a counter the test chose), and Debian's
//! `prometheus` scraping the root's `/metrics`, read back through Prometheus's own query API.
//! Missing programs fail the tests unless `BANYAN_TEST_LENIENT=1`.

use anyhow::{anyhow, bail, Context, Result};
use banyan_tests::cluster::{with_cluster, Cluster};
use banyan_tests::support::{free_port, http_request, require_program};
use banyan_tests::testnet::Testnet;
use serde_json::Value;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Agents joining and exporters answering on a machine busy with other tests.
const FORM: Duration = Duration::from_secs(45);
/// A scrape, a wave and the root's sum; with room for a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

/// The counter the exporters serve from their textfile collector, and its value on each.
const CONSTANT: &str = "banyan_test_constant_total";
const CONSTANT_VALUE: f64 = 42.0;

/// Starts node_exporter on host `i`, listening on the host's address at `port`, with a textfile
/// directory holding [`CONSTANT`].
fn start_exporter(c: &mut Cluster, exporter: &Path, i: usize, port: u16) -> Result<u32> {
    let host = c.hosts()[i].clone();
    let textdir = c.dir().join(format!("{}-textfile-{port}", host.name));
    fs::create_dir_all(&textdir)?;
    fs::write(
        textdir.join("test.prom"),
        format!("# HELP {CONSTANT} A counter that never moves.\n# TYPE {CONSTANT} counter\n{CONSTANT} {CONSTANT_VALUE}\n"),
    )?;
    let log = c.dir().join(format!("{}-exporter-{port}.log", host.name));
    let listen = format!("--web.listen-address={}:{port}", host.addr);
    let textfile = format!("--collector.textfile.directory={}", textdir.display());
    c.testnet()
        .spawn(i, exporter, &[&listen, &textfile], &[], &log)
        .with_context(|| format!("starting node_exporter on {}", host.name))
}

/// `/job?job=Node: NAME`, the node's full metrics fetched through the tree.
fn node_counter(c: &Cluster, node: &str, name: &str) -> Result<Option<f64>> {
    let job = c.http_get(&format!("/job?job=Node:%20{node}"))?;
    counter_in(&job, name)
}

fn counter_in(job: &Value, name: &str) -> Result<Option<f64>> {
    let counters = job["counters"]
        .as_array()
        .ok_or_else(|| anyhow!("no counters in {job}"))?;
    Ok(counters
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["ctype"]["Counter"]["value"].as_f64()))
}

fn series_of(job: &Value, prefix: &str) -> usize {
    job["counters"].as_array().map_or(0, |cs| {
        cs.iter()
            .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .count()
    })
}

/// `/join/list` entries for `node`.
fn scrapes_of(c: &Cluster, node: &str) -> Result<Vec<Value>> {
    let list = c.http_get("/join/list")?;
    let all = list
        .as_array()
        .ok_or_else(|| anyhow!("/join/list is not an array: {list}"))?;
    Ok(all.iter().filter(|s| s["node"] == node).cloned().collect())
}

/// The status and JSON body of a request the test makes itself (to see errors).
fn raw(c: &Cluster, method: &str, path: &str, token: Option<&str>) -> Result<(u16, Value)> {
    let (status, body) = http_request(
        c.http_addr(),
        method,
        path,
        token,
        None,
        Duration::from_secs(15),
    )?;
    let json = serde_json::from_slice(&body).with_context(|| {
        format!(
            "{method} {path}: not JSON: {}",
            String::from_utf8_lossy(&body)
        )
    })?;
    Ok((status, json))
}

#[test]
fn a_joined_node_exporter_shows_at_the_root_and_its_constant_counter_stays_constant() -> Result<()>
{
    if !Testnet::require()? {
        return Ok(());
    }
    let Some(exporter) = require_program("prometheus-node-exporter", "prometheus-node-exporter")?
    else {
        return Ok(());
    };
    with_cluster(3, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        for i in [1, 2] {
            start_exporter(c, &exporter, i, 9100)?;
        }
        let (a, b) = (names[1].clone(), names[2].clone());
        let addr_a = c.hosts()[1].addr;
        let addr_b = c.hosts()[2].addr;

        // Writes need the admin token.
        let path_a = format!("/join?to={addr_a}:9100");
        let (status, body) = raw(c, "GET", &path_a, None)?;
        assert_eq!(status, 401, "join without a token: {body}");
        assert!(body["error"].is_string(), "JSON error: {body}");
        let (status, _) = raw(c, "GET", &path_a, Some("not-the-token"))?;
        assert_eq!(status, 403, "join with a wrong token");
        assert!(
            scrapes_of(c, &a)?.is_empty(),
            "a refused join changed nothing"
        );

        // Host A by its address (the root finds the node), host B named explicitly.
        let joined = c.http_get_admin(&path_a)?;
        assert_eq!(joined["node"], a.as_str(), "{joined}");
        c.http_get_admin(&format!("/join?to=http://{addr_b}:9100/metrics&node={b}"))?;

        // Both exporters' counters reach the cluster's sum, each node's view, and stay constant.
        let total = 2.0 * CONSTANT_VALUE;
        c.wait_for_counter(CONSTANT, total, SETTLE)?;
        for node in [&a, &b] {
            let (v, _) = c.poll("the exporter's counter in the node's view", SETTLE, |c| {
                node_counter(c, node, CONSTANT)
            })?;
            assert_eq!(v, CONSTANT_VALUE, "{node}'s view of {CONSTANT}");
        }
        let job = c.http_get(&format!("/job?job=Node:%20{a}"))?;
        assert!(
            series_of(&job, "node_") > 50,
            "node_exporter's own series (node_cpu_..., node_memory_...) join {a}'s metrics"
        );
        assert_eq!(
            node_counter(c, &names[0], CONSTANT)?,
            None,
            "a node that scrapes nothing has none of it"
        );
        for _ in 0..5 {
            std::thread::sleep(Duration::from_secs(1));
            assert_eq!(
                c.counter_total(CONSTANT)?,
                Some(total),
                "a constant counter stays constant at the root, wave after wave"
            );
        }

        // `/join/list`: the Metric Proxy's fields, with the node and the state of the last scrape.
        for (node, addr) in [(&a, addr_a), (&b, addr_b)] {
            let list = scrapes_of(c, node)?;
            assert_eq!(list.len(), 1, "{node}: {list:?}");
            let s = &list[0];
            assert_eq!(s["target_url"], format!("http://{addr}:9100/metrics"));
            assert_eq!(s["ttype"], "Prometheus");
            assert_eq!(s["ok"], true, "{s}");
            assert!(
                s["last_scrape"].as_u64().is_some_and(|t| t > 1_600_000_000),
                "{s}"
            );
            assert!(s["series"].as_u64().is_some_and(|n| n > 50), "{s}");
        }

        // Removing a target removes its series from the node and from the sum.
        c.http_get_admin(&format!("/join/del?to={addr_b}:9100"))?;
        c.wait_for_counter(CONSTANT, CONSTANT_VALUE, SETTLE)?;
        assert!(scrapes_of(c, &b)?.is_empty());
        assert_eq!(node_counter(c, &b, CONSTANT)?, None);

        // Killed and started again on the same boot: the list is kept in the agent's state dir,
        // so it scrapes again, and the exporter's counter (an absolute value, unlike the agent's
        // own counters that start from zero) is not counted twice: the new run owes what the old
        // one's parent kept. Exact at every look, through the death, the rejoin and the re-scrape.
        c.restart_agent(1)?;
        let until = std::time::Instant::now() + Duration::from_secs(8);
        while std::time::Instant::now() < until {
            assert_eq!(
                c.counter_total(CONSTANT)?,
                Some(CONSTANT_VALUE),
                "{CONSTANT} in the cluster's sum while {a} restarts"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        c.wait_healthy(&names, FORM)?;
        c.poll("the restarted agent's scrape", SETTLE, |c| {
            let list = scrapes_of(c, &a)?;
            Ok((list.len() == 1 && list[0]["ok"] == true).then_some(()))
        })?;
        let (v, _) = c.poll("the counter in the restarted node's view", SETTLE, |c| {
            node_counter(c, &a, CONSTANT)
        })?;
        assert_eq!(v, CONSTANT_VALUE);
        for _ in 0..3 {
            std::thread::sleep(Duration::from_secs(1));
            assert_eq!(
                c.counter_total(CONSTANT)?,
                Some(CONSTANT_VALUE),
                "{CONSTANT} in the cluster's sum after {a} restarted and scraped again"
            );
        }
        Ok(())
    })
}

#[test]
fn a_failing_target_is_shown_with_its_error_and_retried() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let Some(exporter) = require_program("prometheus-node-exporter", "prometheus-node-exporter")?
    else {
        return Ok(());
    };
    with_cluster(2, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let node = names[0].clone();
        let addr = c.hosts()[0].addr;
        // Nothing listens there yet.
        c.http_get_admin(&format!("/join?to={addr}:9109"))?;
        let (failing, _) = c.poll("the failing scrape in /join/list", SETTLE, |c| {
            let list = scrapes_of(c, &node)?;
            Ok(list
                .first()
                .filter(|s| s["error"].is_string() && s["last_scrape"].as_u64() > Some(0))
                .cloned())
        })?;
        assert_eq!(failing["ok"], false, "{failing}");
        let error = failing["error"].as_str().unwrap_or_default().to_lowercase();
        assert!(
            error.contains("refused") || error.contains("connect"),
            "the error says why: {error}"
        );
        // The node table shows it too.
        c.poll("the scrape error in /nodes", SETTLE, |c| {
            let nodes = c.http_get("/nodes")?;
            let mine = nodes
                .as_array()
                .and_then(|ns| ns.iter().find(|n| n["name"] == node.as_str()).cloned());
            Ok(mine.filter(|n| {
                n["digest"]["scrape_errors"]
                    .as_array()
                    .is_some_and(|e| !e.is_empty())
            }))
        })?;
        assert_eq!(c.counter_total(CONSTANT)?, None);

        // The exporter comes up: the next retry works, and its series arrive.
        start_exporter(c, &exporter, 0, 9109)?;
        c.wait_for_counter(CONSTANT, CONSTANT_VALUE, SETTLE)?;
        let list = scrapes_of(c, &node)?;
        assert_eq!(list[0]["ok"], true, "{list:?}");
        assert!(list[0]["error"].is_null(), "{list:?}");
        Ok(())
    })
}

#[test]
fn join_refuses_bad_requests_with_a_json_error() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(1, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let token = c.admin_token().to_string();
        let long = "a".repeat(9000);
        let cases: Vec<(&str, String, u16)> = vec![
            ("GET", "/join".into(), 400),
            ("GET", "/join?to=".into(), 400),
            ("GET", "/join?to=https://x:1".into(), 400),
            ("GET", "/join?to=%3Cscript%3E:80".into(), 400),
            ("GET", "/join?to=file:///etc/passwd".into(), 400),
            ("GET", format!("/join?to={long}:80"), 400),
            ("GET", "/join?to=192.0.2.1:9100".into(), 400),
            ("GET", "/join?to=192.0.2.1:9100&node=nosuchnode".into(), 404),
            ("GET", "/join?to=x:1&to=y:2".into(), 400),
            (
                "GET",
                format!("/join/del?to=192.0.2.1:9100&node={}", names[0]),
                502,
            ),
            ("PUT", "/join/list".into(), 405),
            ("POST", "/join".into(), 405),
        ];
        for (method, path, want) in &cases {
            let (status, body) = raw(c, method, path, Some(&token))?;
            assert_eq!(status, *want, "{method} {path}: {body}");
            assert!(
                body["error"].is_string() && body["detail"].is_string(),
                "{method} {path}: a JSON error: {body}"
            );
        }
        // Nothing was added, and the root still serves.
        let list = c.http_get("/join/list")?;
        assert_eq!(list, serde_json::json!([]));
        c.wait_healthy(&names, FORM)?;
        Ok(())
    })
}

// ----- A real Prometheus server scraping the root ---------------------------------------------

/// A Prometheus server in the test's own namespace (where the root's HTTP API listens), stopped
/// and its data removed when dropped.
struct PromServer {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for PromServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl PromServer {
    /// Scrapes `/metrics` (job `main`) and `/metrics?job=Node: NAME` for `nodes` every second.
    fn start(prometheus: &Path, root_http: std::net::SocketAddr, nodes: &[String]) -> Result<Self> {
        let port = free_port(Ipv4Addr::LOCALHOST, false)?;
        let dir = std::env::temp_dir().join(format!("banyan-prom-{}-{port}", std::process::id()));
        fs::create_dir_all(&dir)?;
        let mut config =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        config.push_str(&format!(
            "  - job_name: banyan-main\n    static_configs:\n      - targets: ['{root_http}']\n"
        ));
        for n in nodes {
            config.push_str(&format!(
                "  - job_name: banyan-node-{n}\n    params:\n      job: ['Node: {n}']\n    static_configs:\n      - targets: ['{root_http}']\n"
            ));
        }
        let config_file = dir.join("prometheus.yml");
        fs::write(&config_file, config)?;
        let log = fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(prometheus)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        Ok(PromServer { child, port, dir })
    }

    /// An instant query through Prometheus's HTTP API: the result vector.
    fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_request(
            addr,
            "GET",
            &format!("/api/v1/query?query={q}"),
            None,
            None,
            Duration::from_secs(10),
        )?;
        let json: Value = serde_json::from_slice(&body)?;
        if status != 200 || json["status"] != "success" {
            bail!("prometheus query {promql}: HTTP {status}: {json}");
        }
        json["data"]["result"]
            .as_array()
            .cloned()
            .ok_or_else(|| anyhow!("no result vector: {json}"))
    }

    fn log(&self) -> String {
        banyan_tests::support::tail(&self.dir.join("prometheus.log"), 20)
    }
}

fn sample_value(v: &Value) -> Option<f64> {
    v["value"][1].as_str().and_then(|s| s.parse().ok())
}

#[test]
fn a_prometheus_server_scrapes_the_root_and_answers_with_the_clusters_values() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let Some(prometheus) = require_program("prometheus", "prometheus")? else {
        return Ok(());
    };
    let Some(promtool) = require_program("promtool", "prometheus")? else {
        return Ok(());
    };
    with_cluster(3, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let values = [3.0, 5.0, 11.0];
        for (i, v) in values.iter().enumerate() {
            c.set_metric(i, "test_prom_work_total", *v)?;
            c.set_metric(i, "test_prom_level", 10.0 * (i as f64 + 1.0))?;
        }
        let sum: f64 = values.iter().sum();
        c.wait_for_counter("test_prom_work_total", sum, SETTLE)?;

        let prom = PromServer::start(&prometheus, c.http_addr(), &names)?;
        let (cluster_sum, _) = c
            .poll("Prometheus to hold the cluster's counter", SETTLE, |_| {
                let r = prom.query("test_prom_work_total{banyan_job=\"main\"}")?;
                Ok(r.first().and_then(sample_value))
            })
            .with_context(|| format!("prometheus log:\n{}", prom.log()))?;
        assert_eq!(
            cluster_sum, sum,
            "the cluster's sum as Prometheus stored it"
        );
        for (i, n) in names.iter().enumerate() {
            let job = format!("Node: {n}");
            let (v, _) = c
                .poll("Prometheus to hold a node's counter", SETTLE, |_| {
                    let r = prom.query(&format!("test_prom_work_total{{banyan_job=\"{job}\"}}"))?;
                    Ok(r.first().and_then(sample_value))
                })
                .with_context(|| format!("prometheus log:\n{}", prom.log()))?;
            assert_eq!(v, values[i], "{n}'s counter as Prometheus stored it");
        }
        // The sum of the node series equals the cluster series, in Prometheus's own arithmetic.
        let r = prom.query("sum(test_prom_work_total{banyan_job=~\"Node: .*\"})")?;
        assert_eq!(r.first().and_then(sample_value), Some(sum));
        // Every scrape of the root was healthy.
        let up = prom.query("up")?;
        assert_eq!(up.len(), 1 + names.len(), "{up:?}");
        assert!(up.iter().all(|s| sample_value(s) == Some(1.0)), "{up:?}");

        // promtool accepts every /metrics?job= variant the root serves.
        let list = c.http_get("/job/list")?;
        let ids: Vec<String> = list
            .as_array()
            .ok_or_else(|| anyhow!("/job/list: {list}"))?
            .iter()
            .filter_map(|j| j["jobid"].as_str().map(str::to_string))
            .collect();
        assert_eq!(ids.len(), 1 + names.len(), "{ids:?}");
        for id in ids {
            let path = format!("/metrics?job={}", id.replace(' ', "%20"));
            let (status, body) = http_request(
                c.http_addr(),
                "GET",
                &path,
                None,
                None,
                Duration::from_secs(15),
            )?;
            assert_eq!(status, 200, "{path}");
            let mut check = Command::new(&promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            {
                use std::io::Write;
                let mut stdin = check
                    .stdin
                    .take()
                    .ok_or_else(|| anyhow!("promtool stdin"))?;
                stdin.write_all(&body)?;
            }
            let out = check.wait_with_output()?;
            assert!(
                out.status.success(),
                "promtool check metrics on {path}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    })
}

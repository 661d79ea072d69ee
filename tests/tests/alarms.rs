//! Alarms on a real cluster: added through the API with the admin token, raised and cleared as
//! the agents' values cross the threshold, kept across a root restart, listed by `banyan alarms`,
//! and refused clearly when the request is bad.

use anyhow::{anyhow, Context, Result};
use banyan_tests::cluster::{banyan_cli, with_cluster, Cluster};
use banyan_tests::support::http_request;
use banyan_tests::support::url_encode;
use banyan_tests::testnet::Testnet;
use serde_json::{json, Value};
use std::time::Duration;

const FORM: Duration = Duration::from_secs(45);
const SETTLE: Duration = Duration::from_secs(30);
const LEVEL: &str = "test_alarm_level";

fn send(
    c: &Cluster,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let (status, bytes) = http_request(
        c.http_addr(),
        method,
        path,
        token,
        body,
        Duration::from_secs(15),
    )?;
    let v = serde_json::from_slice(&bytes)
        .with_context(|| format!("{path}: {}", String::from_utf8_lossy(&bytes)))?;
    Ok((status, v))
}

fn alarm<'a>(list: &'a Value, target: &str, name: &str) -> Option<&'a Value> {
    list[target].as_array()?.iter().find(|a| a["name"] == name)
}

#[test]
fn an_alarm_is_raised_and_cleared_as_values_cross_it_and_survives_a_root_restart() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(2, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        for i in 0..2 {
            c.set_metric(i, LEVEL, 1.0)?;
        }
        let token = c.admin_token().to_string();
        let name = "<b>hot</b> & \"loud\"";
        let add =
            json!({"name": name, "target": "main", "metric": LEVEL, "operation": ">", "value": 5});
        // Writes need the token.
        let (status, _) = send(c, "POST", "/alarms/add", None, Some(&add))?;
        assert_eq!(status, 401);
        let (status, _) = send(c, "POST", "/alarms/add", Some("nope"), Some(&add))?;
        assert_eq!(status, 403);
        let (status, body) = send(c, "POST", "/alarms/add", Some(&token), Some(&add))?;
        assert_eq!(status, 200, "{body}");
        // Bad alarms are refused with the reason.
        for bad in [
            json!({"name": "x", "target": "main", "metric": LEVEL, "operation": ">=", "value": 5}),
            json!({"name": "", "target": "main", "metric": LEVEL, "operation": ">", "value": 5}),
            json!({"name": "x", "target": "Node: a", "metric": LEVEL, "operation": ">", "value": 5}),
            json!({"name": "x", "target": "main", "metric": "9x", "operation": ">", "value": 5}),
            json!({"name": "x", "target": "main", "metric": LEVEL, "operation": ">"}),
        ] {
            let (status, body) = send(c, "POST", "/alarms/add", Some(&token), Some(&bad))?;
            assert_eq!(status, 400, "{bad}: {body}");
            assert!(body["detail"].is_string(), "{body}");
        }

        // Below the threshold: listed, not raised.
        let (listed, _) = c.poll("the alarm to have a value", SETTLE, |c| {
            let l = c.http_get("/alarms/list")?;
            Ok(alarm(&l, "main", name)
                .filter(|a| a["current"].is_number())
                .cloned())
        })?;
        assert_eq!(listed["active"], false, "{listed}");
        assert_eq!(listed["operator"]["More"], 5.0);
        assert_eq!(c.http_get("/alarms")?, json!({}));

        // The mean over the nodes goes above 5: raised, with its time.
        for i in 0..2 {
            c.set_metric(i, LEVEL, 9.0)?;
        }
        let (raised, _) = c.poll("the alarm to be raised", SETTLE, |c| {
            let l = c.http_get("/alarms")?;
            Ok(alarm(&l, "main", name).cloned())
        })?;
        assert_eq!(raised["active"], true);
        assert_eq!(raised["current"], 9.0);
        assert!(raised["raised_at"].as_u64().is_some(), "{raised}");
        let (cli, ok) = banyan_cli(c, &["alarms"])?;
        assert!(ok && cli.contains("RAISED") && cli.contains("hot"), "{cli}");

        // Kept across a root restart, still raised.
        c.stop_root()?;
        c.start_root()?;
        c.wait_healthy(&names, FORM)?;
        let l = c.http_get("/alarms")?;
        assert!(alarm(&l, "main", name).is_some(), "{l}");

        // Back below: cleared, with both events in its history.
        for i in 0..2 {
            c.set_metric(i, LEVEL, 2.0)?;
        }
        let (cleared, _) = c.poll("the alarm to clear", SETTLE, |c| {
            let l = c.http_get("/alarms/list")?;
            Ok(alarm(&l, "main", name)
                .filter(|a| a["active"] == false && a["cleared_at"].is_u64())
                .cloned())
        })?;
        let history = cleared["history"]
            .as_array()
            .ok_or_else(|| anyhow!("no history: {cleared}"))?;
        assert_eq!(history.len(), 2, "{cleared}");
        assert_eq!(history[0]["raised"], true);
        assert_eq!(history[1]["raised"], false);

        // Delete: GET with the Metric Proxy's parameters, without and with the token.
        let del = format!("/alarms/del?targetjob=main&name={}", url_encode(name));
        let (status, _) = send(c, "GET", &del, None, None)?;
        assert_eq!(status, 401);
        let (status, body) = send(c, "GET", &del, Some(&token), None)?;
        assert_eq!(status, 200, "{body}");
        let (status, _) = send(c, "GET", &del, Some(&token), None)?;
        assert_eq!(status, 404);
        assert_eq!(c.http_get("/alarms/list")?, json!({}));
        Ok(())
    })
}

/// Starts a rank of job `job` in host `i` that runs on in the background (the cluster stops it).
fn spawn_rank(c: &mut Cluster, i: usize, job: &str, args: &[&str]) -> Result<u32> {
    let log = c.dir().join(format!("rank-{job}-{i}.log"));
    let mut all = vec!["--job", job, "--rank"];
    let rank = i.to_string();
    all.push(&rank);
    all.extend_from_slice(args);
    c.testnet()
        .spawn(i, std::path::Path::new(FAKE_RANK), &all, &[], &log)
        .with_context(|| format!("starting a rank of {job} in host {i}"))
}

const FAKE_RANK: &str = env!("CARGO_BIN_EXE_fake-rank");

/// Every operator on every kind of value, each compared with the value the alarm reads, known
/// exactly: a counter's sum, a gauge's mean over the nodes, a histogram's mean observation.
#[test]
fn alarms_compare_counters_gauges_and_histograms_with_each_operator() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(2, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        // main: the counter sums to 3 + 4 = 7, the gauge's mean is (1 + 3) / 2 = 2.
        c.set_metric(0, "test_alarm_done_total", 3.0)?;
        c.set_metric(1, "test_alarm_done_total", 4.0)?;
        c.set_metric(0, LEVEL, 1.0)?;
        c.set_metric(1, LEVEL, 3.0)?;
        // Job H: every update of rank 0 observes 3 and 5, of rank 1 observes 4; whatever the
        // number of updates merged, the mean observation is 4.
        let run = ["--updates", "600", "--every-ms", "100"];
        spawn_rank(
            c,
            0,
            "H",
            &[
                &run[..],
                &["--observe", "test_wait=3", "--observe", "test_wait=5"],
            ]
            .concat(),
        )?;
        spawn_rank(
            c,
            1,
            "H",
            &[&run[..], &["--observe", "test_wait=4"]].concat(),
        )?;
        let token = c.admin_token().to_string();
        // (name, target, metric, operation, threshold, the value read, raised?)
        let cases = [
            ("c>", "main", "test_alarm_done_total", ">", 6.0, 7.0, true),
            ("c<", "main", "test_alarm_done_total", "<", 7.0, 7.0, false),
            ("c=", "main", "test_alarm_done_total", "=", 7.0, 7.0, true),
            ("g>", "main", LEVEL, ">", 2.0, 2.0, false),
            ("g<", "main", LEVEL, "<", 2.5, 2.0, true),
            ("g=", "main", LEVEL, "=", 2.0, 2.0, true),
            ("h>", "H", "test_wait", ">", 3.5, 4.0, true),
            ("h<", "H", "test_wait", "<", 4.0, 4.0, false),
            ("h=", "H", "test_wait", "=", 4.0, 4.0, true),
        ];
        for (name, target, metric, op, value, _, _) in cases {
            let add = json!({"name": name, "target": target, "metric": metric,
                "operation": op, "value": value});
            let (status, body) = send(c, "POST", "/alarms/add", Some(&token), Some(&add))?;
            assert_eq!(status, 200, "{add}: {body}");
        }
        let (list, _) = c.poll("every alarm to read its value", SETTLE, |c| {
            let l = c.http_get("/alarms/list")?;
            let all_read = cases.iter().all(|(name, target, _, _, _, read, _)| {
                alarm(&l, target, name).is_some_and(|a| a["current"] == *read)
            });
            Ok(all_read.then_some(l))
        })?;
        for (name, target, _, op, value, read, raised) in cases {
            let a = alarm(&list, target, name).ok_or_else(|| anyhow!("no {name}: {list}"))?;
            assert_eq!(a["active"], raised, "{read} {op} {value}: {a}");
            let kind = match op {
                ">" => "More",
                "<" => "Less",
                _ => "Equal",
            };
            assert_eq!(a["operator"][kind], value, "{a}");
            assert_eq!(a["raised_at"].is_u64(), raised, "{a}");
        }
        // /alarms lists exactly the raised ones, by target.
        let raised = c.http_get("/alarms")?;
        for target in ["main", "H"] {
            let mut got: Vec<&str> = raised[target]
                .as_array()
                .map(|l| l.iter().filter_map(|a| a["name"].as_str()).collect())
                .unwrap_or_default();
            got.sort_unstable();
            let mut want: Vec<&str> = cases
                .iter()
                .filter(|k| k.1 == target && k.6)
                .map(|k| k.0)
                .collect();
            want.sort_unstable();
            assert_eq!(got, want, "raised on {target}: {raised}");
        }
        Ok(())
    })
}

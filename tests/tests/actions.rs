//! Operator actions through the tree, with real agents on test hosts (network namespaces): `exec`
//! and `service`, dry run and for real, tokens and their scopes, the audit log, cancel, deadlines
//! and output caps, a host dying during an action, a root restarting during one, and one
//! certificate per node name.
//!
//! Every assertion is on results (what each node answered, which files exist, which processes
//! run, what the audit log holds); the timeouts are generous liveness bounds for a loaded
//! two-core machine, never measured.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use banyan_tests::cluster::{banyan_cli, with_cluster, Cluster, ClusterOptions};
use banyan_tests::support::http_request;
use serde_json::{json, Value};

/// Fifteen agents joining at once on a busy machine.
const FORM: Duration = Duration::from_secs(45);
/// An action's whole life here: seconds; this only turns a hang into a failure.
const SETTLE: Duration = Duration::from_secs(60);
const HTTP: Duration = Duration::from_secs(40);

fn request(
    c: &Cluster,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value)> {
    let (status, bytes) = http_request(c.http_addr(), method, path, token, body, HTTP)?;
    let v =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    Ok((status, v))
}

/// Starts an action; its id.
fn start(c: &Cluster, token: &str, body: Value) -> Result<String> {
    let (status, v) = request(c, "POST", "/actions", Some(token), Some(&body))?;
    ensure!(status == 202, "POST /actions {body}: HTTP {status}: {v}");
    v["id"]
        .as_str()
        .map(str::to_string)
        .context("no id in the answer")
}

/// Follows an action by long polling until it is over; its final record.
fn finish(c: &Cluster, id: &str) -> Result<Value> {
    let mut since = 0u64;
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let (status, v) = request(
            c,
            "GET",
            &format!("/actions/{id}?wait_ms=5000&since={since}"),
            None,
            None,
        )?;
        ensure!(status == 200, "GET /actions/{id}: HTTP {status}: {v}");
        if v["state"] != "running" {
            return Ok(v);
        }
        since = v["version"].as_u64().unwrap_or(since);
        if std::time::Instant::now() > deadline {
            bail!("action {id} still running after {SETTLE:?}: {v}");
        }
    }
}

fn run(c: &Cluster, token: &str, body: Value) -> Result<Value> {
    let id = start(c, token, body)?;
    finish(c, &id)
}

fn exec(nodes: &str, for_real: bool, argv: &[&str]) -> Value {
    json!({"nodes": nodes, "for_real": for_real, "task": {"exec": {"argv": argv}}})
}

/// `(node, state)` of every target.
fn states(action: &Value) -> BTreeMap<String, String> {
    action["targets"]
        .as_object()
        .map(|t| {
            t.iter()
                .map(|(n, v)| (n.clone(), v["state"].as_str().unwrap_or("?").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

fn result_of<'a>(action: &'a Value, node: &str) -> &'a Value {
    &action["targets"][node]["result"]
}

fn audit_lines(c: &Cluster) -> Result<Vec<Value>> {
    let text = fs::read_to_string(c.root_state().join("audit.jsonl"))?;
    text.lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("audit line {l}")))
        .collect()
}

fn write_groups(c: &Cluster, text: &str) -> Result<()> {
    fs::write(c.root_state().join("groups.yaml"), text).context("writing groups.yaml")
}

fn make_token(c: &Cluster, name: &str, role: &str, groups: &[&str]) -> Result<String> {
    let (status, v) = request(
        c,
        "POST",
        "/tokens",
        Some(c.admin_token()),
        Some(&json!({"name": name, "role": role, "groups": groups})),
    )?;
    ensure!(status == 200, "POST /tokens: HTTP {status}: {v}");
    v["token"].as_str().map(str::to_string).context("no token")
}

#[test]
fn exec_and_scoped_tokens_on_fifteen_hosts() -> Result<()> {
    with_cluster(15, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let all = c.all_nodes();
        let admin = c.admin_token().to_string();

        // Each host answers its own address: the answer came from that node, nothing else.
        let a = run(
            c,
            &admin,
            exec(
                &all,
                true,
                &["ip", "-o", "-4", "addr", "show", "dev", "eth0"],
            ),
        )?;
        ensure!(a["state"] == "done", "{a}");
        for h in c.hosts() {
            let r = result_of(&a, &h.name);
            ensure!(r["ok"] == true && r["exit"] == 0, "{}: {r}", h.name);
            let out = r["stdout"].as_str().unwrap_or("");
            ensure!(
                out.contains(&format!("inet {}/", h.addr)),
                "{} answered {out:?}",
                h.name
            );
            for other in c.hosts().iter().filter(|o| o.name != h.name) {
                ensure!(
                    !out.contains(&format!("inet {}/", other.addr)),
                    "{} answered {other:?}'s address",
                    h.name
                );
            }
        }

        // Dry run: every node answers what it would do, and nothing runs.
        let marker = c.dir().join("marker");
        let touch = ["touch", marker.to_str().context("path")?];
        let dry = run(c, &admin, exec(&all, false, &touch))?;
        ensure!(states(&dry).values().all(|s| s == "ok"), "{dry}");
        for h in c.hosts() {
            let r = result_of(&dry, &h.name);
            ensure!(r["dry_run"] == true, "{r}");
            ensure!(
                r["summary"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("would run: touch"),
                "{r}"
            );
        }
        ensure!(!marker.exists(), "a dry run created {}", marker.display());
        let real = run(c, &admin, exec(c.name(0), true, &touch))?;
        ensure!(states(&real)[c.name(0)] == "ok", "{real}");
        ensure!(
            marker.exists(),
            "--for-real did not create {}",
            marker.display()
        );

        // The CLI groups identical outputs under one folded node set, as clush -b does.
        let (out, ok) = banyan_cli(
            c,
            &[
                "--token",
                &admin,
                "exec",
                &all,
                "--for-real",
                "--",
                "echo",
                "same",
            ],
        )?;
        ensure!(ok, "{out}");
        ensure!(
            out.contains(&format!("{all} (15)")),
            "not grouped under {all}:\n{out}"
        );
        ensure!(out.contains("All 15 targets succeeded"), "{out}");

        // A command past its deadline is killed; its output past the cap is cut and said so.
        let slow = run(
            c,
            &admin,
            json!({"nodes": c.name(1), "for_real": true, "timeout_ms": 1500,
            "task": {"exec": {"argv": ["sleep", "100"]}}}),
        )?;
        let r = result_of(&slow, c.name(1));
        ensure!(
            r["ok"] == false && r["summary"].as_str().unwrap_or("").contains("timed out"),
            "{r}"
        );
        let loud = run(
            c,
            &admin,
            json!({"nodes": c.name(2), "for_real": true,
            "task": {"exec": {"argv": ["head", "-c", "1000000", "/dev/zero"], "max_output": 1000}}}),
        )?;
        let r = result_of(&loud, c.name(2));
        ensure!(
            r["truncated"] == true && r["stdout"].as_str().map(str::len) == Some(1000),
            "{r}"
        );

        // Cancel: the running command stops, the action ends cancelled.
        let id = start(c, &admin, exec(c.name(3), true, &["sleep", "120"]))?;
        std::thread::sleep(Duration::from_millis(1500));
        let (status, v) = request(c, "DELETE", &format!("/actions/{id}"), Some(&admin), None)?;
        ensure!(status == 200, "DELETE: {status} {v}");
        let cancelled = finish(c, &id)?;
        ensure!(cancelled["state"] == "cancelled", "{cancelled}");
        ensure!(states(&cancelled)[c.name(3)] == "cancelled", "{cancelled}");

        // A host that dies during an action fails alone (a leaf: an inner node's death would also
        // cut its subtree's answers off while they heal).
        let topo = c.topology()?;
        let leaf = names
            .iter()
            .position(|n| topo.children_of(n).is_empty())
            .context("no leaf")?;
        let id = start(
            c,
            &admin,
            json!({"nodes": all, "for_real": true, "timeout_ms": 10000,
            "task": {"exec": {"argv": ["sleep", "3"]}}}),
        )?;
        c.kill_agent(leaf)?;
        let a = finish(c, &id)?;
        let st = states(&a);
        ensure!(st[c.name(leaf)] == "unreachable", "{a}");
        ensure!(
            st.iter()
                .filter(|(n, _)| *n != c.name(leaf))
                .all(|(_, s)| s == "ok"),
            "{a}"
        );
        c.restart_agent(leaf)?;
        c.wait_healthy(&names, FORM)?;

        // Tokens and scopes: rack1 and rack2 in ClusterShell's format.
        write_groups(
            c,
            &format!(
                "rack:\n  rack1: '{},{},{}'\n  rack2: '{},{},{}'\n",
                c.name(0),
                c.name(1),
                c.name(2),
                c.name(5),
                c.name(6),
                c.name(7)
            ),
        )?;
        let op = make_token(c, "ops1", "operator", &["rack1"])?;
        let viewer = make_token(c, "look", "viewer", &[])?;
        let status_of = |nodes: &str| json!({"nodes": nodes, "task": {"service": {"op": "status", "units": ["nothing"]}}});
        let (st, v) = request(c, "POST", "/actions", Some(&op), Some(&status_of("@rack2")))?;
        ensure!(st == 403, "an operator of @rack1 acted on @rack2: {st} {v}");
        ensure!(
            v["detail"]
                .as_str()
                .unwrap_or("")
                .contains("outside its scope"),
            "{v}"
        );
        let ok = run(c, &op, status_of("@rack1"))?;
        ensure!(states(&ok).len() == 3, "{ok}");
        let (st, v) = request(
            c,
            "POST",
            "/actions",
            Some(&op),
            Some(&exec("@rack1", false, &["true"])),
        )?;
        ensure!(
            st == 403 && v["detail"].as_str().unwrap_or("").contains("admin"),
            "exec by an operator: {st} {v}"
        );
        let (st, v) = request(
            c,
            "POST",
            "/actions",
            Some(&viewer),
            Some(&status_of("@rack1")),
        )?;
        ensure!(
            st == 403 && v["detail"].as_str().unwrap_or("").contains("viewer"),
            "viewer acted: {st} {v}"
        );
        let (st, _) = request(c, "DELETE", "/tokens/ops1", Some(&admin), None)?;
        ensure!(st == 200);
        let (st, v) = request(c, "POST", "/actions", Some(&op), Some(&status_of("@rack1")))?;
        ensure!(
            st == 403 && v["detail"].as_str().unwrap_or("").contains("revoked"),
            "revoked token acted: {st} {v}"
        );

        // Bad input: each one clear error, nothing started.
        for (body, needle) in [
            (
                json!({"nodes": "@nosuch", "task": {"exec": {"argv": ["true"]}}}),
                "nosuch",
            ),
            (
                json!({"nodes": "zz[1-99]", "task": {"exec": {"argv": ["true"]}}}),
                "not in this cluster",
            ),
            (
                json!({"nodes": all, "task": {"service": {"op": "start", "units": ["a;reboot"]}}}),
                "invalid unit name",
            ),
            (
                json!({"nodes": all, "task": {"exec": {"argv": []}}}),
                "no command",
            ),
        ] {
            let (st, v) = request(c, "POST", "/actions", Some(&admin), Some(&body))?;
            ensure!(
                st == 400 && v.to_string().contains(needle),
                "{body}: {st} {v}"
            );
        }

        // The audit log: one request line per action, refusals with reasons, the chain holds.
        let lines = audit_lines(c)?;
        let requests = lines
            .iter()
            .filter(|l| l["event"] == "action.request")
            .count();
        let outcomes = lines
            .iter()
            .filter(|l| l["event"] == "action.outcome")
            .count();
        ensure!(
            requests == 9 && outcomes == 9,
            "{requests} requests, {outcomes} outcomes"
        );
        let refused: Vec<&Value> = lines
            .iter()
            .filter(|l| l["event"] == "action.refused")
            .collect();
        ensure!(refused.len() == 8, "refusals: {refused:?}");
        ensure!(refused.iter().any(|l| l["who"] == "ops1" && l["reason"].as_str().unwrap_or("").contains("scope")), "{refused:?}");
        let first = lines
            .iter()
            .find(|l| l["event"] == "action.request")
            .context("no request")?;
        for field in [
            "seq", "time_ms", "who", "peer", "action", "for_real", "targets", "args", "prev",
        ] {
            ensure!(
                !first[field].is_null(),
                "audit line without {field}: {first}"
            );
        }
        ensure!(
            !fs::read_to_string(c.root_state().join("audit.jsonl"))?.contains(&op),
            "a token's secret is in the audit log"
        );
        let (out, ok) = banyan_cli(c, &["--token", &admin, "audit", "--verify"])?;
        ensure!(ok, "{out}");
        tamper(&c.root_state().join("audit.jsonl"))?;
        let (st, v) = request(c, "GET", "/audit/verify", Some(&admin), None)?;
        ensure!(
            st == 200 && v["ok"] == false,
            "a tampered log verified: {v}"
        );
        let (out, ok) = banyan_cli(c, &["--token", &admin, "audit", "--verify"])?;
        ensure!(!ok, "banyan audit --verify passed a tampered log: {out}");
        Ok(())
    })
}

/// Changes the third line's `who` in place (same length), as someone covering tracks would.
fn tamper(path: &Path) -> Result<()> {
    let text = fs::read_to_string(path)?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    ensure!(lines.len() > 3, "short audit log");
    lines[2] = lines[2].replacen("\"who\":\"admin\"", "\"who\":\"nobod\"", 1);
    fs::write(path, lines.join("\n") + "\n")?;
    Ok(())
}

/// Configured units (the agent's config describes start/stop/status), since PID 1 is not systemd
/// on the machines this runs on; a real long-running program is started and stopped.
/// A command that streams (`exec -L`) shows its complete lines while it runs: each target's
/// first line is in `live` while the target is still pending, the result holds all of it and
/// `live` is gone; the CLI prints every line once, prefixed with its node.
#[test]
fn exec_streams_lines_while_it_runs() -> Result<()> {
    with_cluster(3, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let admin = c.admin_token().to_string();
        let all = c.all_nodes();
        let body = json!({"nodes": all, "for_real": true, "task": {"exec": {
            "argv": ["sh", "-c", "echo first; sleep 4; echo second"], "stream": true}}});
        let id = start(c, &admin, body)?;
        let mut seen_live: BTreeSet<String> = BTreeSet::new();
        let mut since = 0u64;
        let deadline = std::time::Instant::now() + SETTLE;
        let end = loop {
            let (status, v) = request(
                c,
                "GET",
                &format!("/actions/{id}?wait_ms=5000&since={since}"),
                None,
                None,
            )?;
            ensure!(status == 200, "GET /actions/{id}: HTTP {status}: {v}");
            for (node, t) in v["targets"].as_object().into_iter().flatten() {
                if t["state"] == "pending" && t["live"]["stdout"] == "first\n" {
                    seen_live.insert(node.clone());
                }
            }
            if v["state"] != "running" {
                break v;
            }
            since = v["version"].as_u64().unwrap_or(since);
            ensure!(std::time::Instant::now() < deadline, "still running: {v}");
        };
        let want: BTreeSet<String> = names.iter().cloned().collect();
        ensure!(
            seen_live == want,
            "only {seen_live:?} showed their first line while running: {end}"
        );
        for n in &names {
            let t = &end["targets"][n];
            ensure!(t["state"] == "ok", "{n}: {end}");
            ensure!(t["result"]["stdout"] == "first\nsecond\n", "{n}: {end}");
            ensure!(
                t.get("live").is_none(),
                "{n} still shows live output: {end}"
            );
        }

        let (out, ok) = banyan_cli(
            c,
            &[
                "--token",
                &admin,
                "exec",
                &all,
                "--for-real",
                "-L",
                "--",
                "sh",
                "-c",
                "echo a; sleep 1; echo b",
            ],
        )?;
        ensure!(ok, "{out}");
        for n in &names {
            let mine: Vec<&str> = out
                .lines()
                .filter(|l| l.starts_with(&format!("{n}: ")))
                .filter(|l| l.ends_with(": a") || l.ends_with(": b"))
                .collect();
            ensure!(
                mine == [format!("{n}: a"), format!("{n}: b")],
                "{n}'s lines are not each printed once, in order:\n{out}"
            );
        }
        Ok(())
    })
}

#[test]
fn services_start_stop_and_status_on_hosts() -> Result<()> {
    let systemd = fs::read_to_string("/proc/1/comm")
        .map(|c| c.trim() == "systemd")
        .unwrap_or(false);
    eprintln!(
        "PID 1 is {}systemd: testing the configured-unit backend",
        if systemd { "" } else { "not " }
    );
    let config = r#"
[service]
allow = ["sleeper"]

[service.units.sleeper]
start = ["/bin/sh", "-c", "sleep 1000 & echo $! > {dir}/{name}.sleeper.pid"]
pid_file = "{dir}/{name}.sleeper.pid"
"#;
    let opts = ClusterOptions {
        agent_config: Some(config.to_string()),
        ..ClusterOptions::default()
    };
    Cluster::with_options(4, opts, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let admin = c.admin_token().to_string();
        let set = format!("{},{},{}", c.name(0), c.name(1), c.name(2));
        let svc = |op: &str, units: &[&str], for_real: bool| json!({"nodes": set, "for_real": for_real, "task": {"service": {"op": op, "units": units}}});
        let unit_state = |a: &Value, node: &str| {
            a["targets"][node]["result"]["units"][0]["state"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        };

        let before = run(c, &admin, svc("status", &["sleeper"], false))?;
        for n in &names[..3] {
            ensure!(unit_state(&before, n) == "inactive", "{before}");
        }
        let dry = run(c, &admin, svc("start", &["sleeper"], false))?;
        ensure!(states(&dry).values().all(|s| s == "ok"), "{dry}");
        ensure!(
            !c.dir().join(format!("{}.sleeper.pid", c.name(0))).exists(),
            "a dry run started the unit"
        );

        let started = run(c, &admin, svc("start", &["sleeper"], true))?;
        ensure!(states(&started).values().all(|s| s == "ok"), "{started}");
        let mut pids = Vec::new();
        for n in &names[..3] {
            ensure!(unit_state(&started, n) == "active", "{started}");
            let pid: i32 = fs::read_to_string(c.dir().join(format!("{n}.sleeper.pid")))?
                .trim()
                .parse()?;
            ensure!(
                Path::new(&format!("/proc/{pid}")).exists(),
                "{n}'s sleeper is not running"
            );
            pids.push(pid);
        }
        ensure!(
            !c.dir().join(format!("{}.sleeper.pid", c.name(3))).exists(),
            "a node outside the set started it"
        );

        let refused = run(c, &admin, svc("start", &["sshd"], true))?;
        for n in &names[..3] {
            let r = result_of(&refused, n);
            ensure!(
                r["ok"] == false && r.to_string().contains("allow list"),
                "{r}"
            );
        }

        let stopped = run(c, &admin, svc("stop", &["sleeper"], true))?;
        ensure!(states(&stopped).values().all(|s| s == "ok"), "{stopped}");
        for n in &names[..3] {
            ensure!(unit_state(&stopped, n) == "inactive", "{stopped}");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for pid in pids {
            while Path::new(&format!("/proc/{pid}")).exists()
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            ensure!(
                !Path::new(&format!("/proc/{pid}")).exists(),
                "sleeper {pid} survived the stop"
            );
        }
        Ok(())
    })
}

/// A name holds one certificate: a second machine enrolling as a node that exists is refused
/// until an admin forgets the old certificate; an action running when the root restarts is
/// marked interrupted, never forgotten.
#[test]
fn one_certificate_per_name_and_interrupted_actions() -> Result<()> {
    with_cluster(3, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let admin = c.admin_token().to_string();

        let id = start(c, &admin, exec(c.name(0), true, &["sleep", "30"]))?;
        std::thread::sleep(Duration::from_millis(1000));
        c.stop_root()?;
        c.start_root()?;
        let (st, a) = request(c, "GET", &format!("/actions/{id}"), None, None)?;
        ensure!(st == 200 && a["state"] == "interrupted", "{st} {a}");
        ensure!(
            audit_lines(c)?
                .iter()
                .any(|l| l["event"] == "action.interrupted" && l["action"] == id.as_str()),
            "not audited"
        );

        // Agent 1's state dir is wiped: it must enrol again under a name that holds a certificate.
        c.kill_agent(1)?;
        let state = c.dir().join(c.name(1));
        fs::remove_dir_all(&state)?;
        c.restart_agent(1)?;
        let log = c.dir().join(format!("{}.2.log", c.name(1)));
        let (text, _) = c.poll(
            "the refusal of a second certificate",
            Duration::from_secs(30),
            |_| {
                let text = fs::read_to_string(&log).unwrap_or_default();
                Ok(text.contains("already has a certificate").then_some(text))
            },
        )?;
        ensure!(text.contains("banyan node forget"), "{text}");
        let (out, ok) = banyan_cli(c, &["--token", &admin, "node", "forget", c.name(1)])?;
        ensure!(ok, "{out}");
        c.restart_agent(1)?;
        c.wait_healthy(&names, FORM)?;
        Ok(())
    })
}

//! Runs the built `banyan` binary against a fake root: a loopback HTTP server that answers the
//! action routes with canned JSON, so the whole path (token, request body, long polls, rendering,
//! exit status) is exercised without a cluster.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

/// One request as the fake root saw it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    authorization: Option<String>,
    body: Value,
}

type Handler = dyn Fn(&Request) -> (u16, Value) + Send + Sync;

/// A fake root on a free loopback port, serving until the test process ends.
struct FakeRoot {
    url: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl FakeRoot {
    fn start(handler: Box<Handler>) -> FakeRoot {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let handler: Arc<Handler> = Arc::from(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (log, handler) = (log.clone(), handler.clone());
                std::thread::spawn(move || serve(stream, &*handler, &log));
            }
        });
        FakeRoot { url, seen }
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().expect("log").clone()
    }
}

fn serve(stream: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let (mut length, mut authorization) = (0usize, None);
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => length = v.trim().parse().unwrap_or(0),
                    "authorization" => authorization = Some(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let query = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), decode(v)))
            .collect();
        let req = Request {
            method,
            path: path.to_string(),
            query,
            authorization,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        let (status, answer) = handler(&req);
        log.lock().expect("log").push(req);
        let text = answer.to_string();
        let mut out = &stream;
        let _ = write!(
            out,
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
    }
}

fn decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A home without a config file, so the operator's own config and tokens stay out of the tests.
fn empty_home() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("banyan-cli-home-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("make a home");
    dir
}

fn banyan(root: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_banyan"));
    cmd.arg("--root")
        .arg(root)
        .args(args)
        .env("HOME", empty_home())
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("BANYAN_TOKEN")
        .env_remove("BANYAN_ADMIN_TOKEN")
        .env_remove("BANYAN_ROOT")
        // No admin-token to stumble on.
        .env("BANYAN_STATE_DIR", empty_home().join("no-state"))
        .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.env("BANYAN_TOKEN", t);
    }
    cmd.output().expect("run banyan")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const ID: &str = "00000000000000ab";

fn result(stdout: &str, exit: i32) -> Value {
    json!({"state": if exit == 0 { "ok" } else { "failed" }, "error": null, "result": {
        "ok": exit == 0, "dry_run": false, "summary": format!("exit {exit}"), "exit": exit,
        "signal": null, "stdout": stdout, "stderr": "", "truncated": false, "units": [],
        "duration_ms": 10}})
}

/// A root that runs `uname -r` on `@compute` = cn[1-3]: cn3 answers on the second poll, failing.
fn exec_root() -> FakeRoot {
    FakeRoot::start(Box::new(|r: &Request| {
        if r.authorization.as_deref() != Some("Bearer sekrit") && r.method != "GET" {
            return (
                401,
                json!({"error": "unauthorized", "detail": "unknown token"}),
            );
        }
        match (r.method.as_str(), r.path.as_str()) {
            ("POST", "/actions") => (
                202,
                json!({"id": ID, "targets": "cn[1-3]", "count": 3, "for_real": r.body["for_real"]}),
            ),
            ("GET", p) if p == format!("/actions/{ID}") => {
                let since: u64 = r
                    .query
                    .get("since")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let mut targets = json!({"cn1": result("5.10\n", 0), "cn2": result("5.10\n", 0),
                    "cn3": {"state": "pending", "result": null, "error": null}});
                let (state, version) = if since == 0 {
                    ("running", 1)
                } else {
                    targets["cn3"] = result("6.1\n", 2);
                    ("done", 2)
                };
                (
                    200,
                    json!({"id": ID, "kind": "exec", "who": "admin", "peer": "127.0.0.1:1",
                        "task": {"exec": {"argv": ["uname", "-r"], "shell": false, "user": null,
                        "max_output": 65536}}, "nodes": "@compute", "for_real": true,
                        "state": state, "version": version, "started_ms": 1, "ended_ms": null,
                        "deadline_ms": 60_001, "targets": targets}),
                )
            }
            ("GET", "/nodeset") if r.query.get("expr").map(String::as_str) == Some("@compute") => (
                200,
                json!({"nodes": ["cn1", "cn2", "cn3"], "folded": "cn[1-3]", "count": 3}),
            ),
            ("GET", "/nodeset") => (
                400,
                json!({"error": "unknown group", "detail": r.query.get("expr")}),
            ),
            _ => (404, json!({"error": "not found", "detail": r.path})),
        }
    }))
}

#[test]
fn exec_follows_the_action_and_groups_its_outputs() {
    let root = exec_root();
    let out = banyan(
        &root.url,
        Some("sekrit"),
        &[
            "exec",
            "@compute",
            "--for-real",
            "--timeout",
            "90s",
            "--",
            "uname",
            "-r",
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert_eq!(
        stdout,
        "---------------\ncn[1-2] (2)\n---------------\n5.10\n\
         ---------------\ncn3 (1), exit 2\n---------------\n6.1\n\n\
         NODES N STATE  REASON\ncn3   1 failed exit 2\n\n\
         1 of 3 targets failed: cn3\n"
    );
    // Not a terminal: one plain line per finished target on stderr.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "action {ID}: exec on cn[1-3] (3 targets), for real"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("cn1: ok (exit 0)\n") && stderr.contains("cn3: failed (exit 2)\n"),
        "{stderr}"
    );
    let reqs = root.requests();
    let post = reqs.iter().find(|r| r.method == "POST").expect("a POST");
    assert_eq!(
        post.body,
        json!({"nodes": "@compute", "for_real": true, "timeout_ms": 90_000,
               "task": {"exec": {"argv": ["uname", "-r"], "shell": false, "user": null, "max_output": 65536, "stream": false}}})
    );
    assert!(reqs.iter().any(|r| r.query.contains_key("wait_ms")
        && r.query.get("since").map(String::as_str) == Some("1")));
}

#[test]
fn exec_json_prints_the_final_action() {
    let root = exec_root();
    let out = banyan(
        &root.url,
        Some("sekrit"),
        &["exec", "cn[1-3]", "--json", "--", "uname", "-r"],
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["state"], "done");
    assert_eq!(v["targets"]["cn3"]["result"]["exit"], 2);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn exit_status_3_without_a_valid_token() {
    let root = exec_root();
    let out = banyan(&root.url, Some("wrong"), &["exec", "cn1", "--", "true"]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with("banyan: the root refused (401 unauthorized): unknown token"),
        "{stderr}"
    );
    // With no token at all, nothing is sent (unless this host has a root's admin token).
    if std::fs::read("/var/lib/banyan-root/admin-token").is_ok() {
        return;
    }
    let before = root.requests().len();
    let out = banyan(&root.url, None, &["exec", "cn1", "--", "true"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("--token-file"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(root.requests().len(), before);
}

#[test]
fn exit_status_4_when_the_root_is_down_and_2_for_bad_input() {
    let out = banyan(
        "http://127.0.0.1:1",
        Some("sekrit"),
        &["exec", "cn1", "--", "true"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot reach the root at http://127.0.0.1:1"));
    let out = banyan("http://127.0.0.1:1", Some("sekrit"), &["exec", "cn1"]);
    assert_eq!(out.status.code(), Some(2));
    let out = banyan(
        "http://127.0.0.1:1",
        Some("sekrit"),
        &["service", "start", "a;b", "cn1"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("invalid unit name"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn nodeset_asks_the_root_for_groups_only() {
    let root = exec_root();
    let out = banyan(&root.url, None, &["nodeset", "-f", "@compute", "gpu1"]);
    assert_eq!(text(&out.stdout), "cn[1-3],gpu1\n", "{}", text(&out.stderr));
    let out = banyan(&root.url, None, &["nodeset", "-c", "@nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unknown group"),
        "{}",
        text(&out.stderr)
    );
    let asked = root.requests().len();
    let out = banyan(&root.url, None, &["nodeset", "-e", "cn[1-2]"]);
    assert_eq!(text(&out.stdout), "cn1 cn2\n");
    assert_eq!(root.requests().len(), asked);
    // A group without a root: exit 4 and a line that says why the root was needed.
    let out = banyan("http://127.0.0.1:1", None, &["nodeset", "-f", "@compute"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(
        text(&out.stderr).contains("known only to the root"),
        "{}",
        text(&out.stderr)
    );
}

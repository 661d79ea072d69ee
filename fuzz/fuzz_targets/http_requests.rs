//! Query strings and JSON bodies of the root's HTTP routes, decoded as axum decodes them
//! (`serde_urlencoded` for `Query`, `serde_json` for `Json`) into the request types, then checked
//! as the handlers check them. No panic.
//!
//! The routes' request types are private to `root/src/http.rs` and `root/src/http_actions.rs`; the
//! ones below copy their serde shape field for field (keep them in step). Their content is where
//! the risk is: node sets, job ids, targets, order ids, tasks, roles, alarms, all decoded and
//! validated here with the crates' own functions. The types that are public (`Task`, `Role`,
//! `AddRequest`, `ConsoleQuery`) are the real ones.
#![no_main]

use banyan_protocol::action::{validate_order_id, Task};
use banyan_protocol::identity::validate_node_name;
use banyan_protocol::job::check_job_id;
use banyan_protocol::nodeset::NodeSet;
use banyan_protocol::target::Target;
use banyan_root::alarms::{AddRequest, AlarmBook};
use banyan_root::console::ConsoleQuery;
use banyan_root::tokens::{is_token_name, Role};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Deserialize;

#[derive(Deserialize)]
#[allow(dead_code)]
struct PingRequest {
    nodes: String,
}
#[derive(Deserialize)]
struct JobQuery {
    job: Option<String>,
}
#[derive(Deserialize)]
struct NodesQuery {
    nodes: Option<String>,
}
#[derive(Deserialize)]
struct JoinQuery {
    to: Option<String>,
    node: Option<String>,
}
#[derive(Deserialize)]
struct ProfileQuery {
    jobid: Option<String>,
}
#[derive(Deserialize)]
struct AlarmDelQuery {
    targetjob: Option<String>,
    name: Option<String>,
}
#[derive(Deserialize)]
struct AlarmDelBody {
    target: String,
    name: String,
}
#[derive(Deserialize)]
struct ActionRequest {
    nodes: String,
    #[serde(default)]
    #[allow(dead_code)]
    for_real: bool,
    timeout_ms: Option<u64>,
    task: Task,
    #[serde(default)]
    openstack: Option<banyan_root::openstack::CallerCredentials>,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct ListQuery {
    limit: Option<usize>,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct WaitQuery {
    wait_ms: Option<u64>,
    since: Option<u64>,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct AuditQuery {
    since_ms: Option<u64>,
    who: Option<String>,
    limit: Option<usize>,
}
#[derive(Deserialize)]
#[allow(dead_code)]
struct TokenRequest {
    name: String,
    role: Role,
    #[serde(default)]
    groups: Vec<String>,
    expires_in_ms: Option<u64>,
}
#[derive(Deserialize)]
struct NodesetQuery {
    expr: String,
}

fn query<T: DeserializeOwned>(text: &str) -> Option<T> {
    serde_urlencoded::from_str(text).ok()
}

fn json<T: DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_str(text).ok()
}

fn nodes(expr: &str) {
    let _ = NodeSet::parse(expr);
}

fn job(id: Option<String>) {
    if let Some(id) = id {
        let _ = check_job_id(&id);
    }
}

/// A config the hv timeouts are computed with.
fn openstack_config() -> &'static banyan_root::openstack::OpenStackConfig {
    static CONFIG: std::sync::OnceLock<banyan_root::openstack::OpenStackConfig> =
        std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        let env = [
            ("OS_AUTH_URL", "http://k"),
            ("OS_USERNAME", "u"),
            ("OS_PASSWORD", "p"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        banyan_root::openstack::OpenStackConfig::parse("", std::path::Path::new("/r.toml"), &env)
            .expect("a minimal config")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match route % 16 {
        0 => {
            if let Some(r) = json::<PingRequest>(text) {
                nodes(&r.nodes);
            }
        }
        1 => {
            if let Some(q) = query::<JobQuery>(text) {
                job(q.job);
            }
        }
        2 => {
            if let Some(NodesQuery { nodes: Some(n) }) = query(text) {
                nodes(&n);
            }
        }
        3 => {
            if let Some(q) = query::<JoinQuery>(text) {
                if let Some(to) = q.to {
                    let _ = Target::parse(&to);
                    let _ = to.parse::<std::net::SocketAddr>();
                }
                if let Some(node) = q.node {
                    let _ = validate_node_name(&node);
                }
            }
        }
        4 => {
            if let Some(q) = query::<ProfileQuery>(text) {
                job(q.jobid);
            }
        }
        5 => {
            if let Some(req) = json::<AddRequest>(text) {
                let mut book = AlarmBook::open(None);
                let _ = book.add(req);
            }
        }
        6 => {
            if let Some(q) = query::<AlarmDelQuery>(text) {
                let mut book = AlarmBook::open(None);
                let _ = book.delete(
                    q.targetjob.as_deref().unwrap_or(""),
                    q.name.as_deref().unwrap_or(""),
                );
            }
        }
        7 => {
            if let Some(b) = json::<AlarmDelBody>(text) {
                let mut book = AlarmBook::open(None);
                let _ = book.delete(&b.target, &b.name);
            }
        }
        8 => {
            if let Some(req) = json::<ActionRequest>(text) {
                let _ = req.task.kind();
                if req.task.validate().is_ok() {
                    if let Task::Power(p) = &req.task {
                        let mut p = p.clone();
                        p.grace_ms = p.grace_ms.or(req.timeout_ms);
                        let _ = banyan_root::power::action_timeout(&p);
                    }
                    if let Task::Hv(h) = &req.task {
                        let _ = banyan_root::hv::action_timeout(h, openstack_config());
                    }
                }
                if let Some(c) = &req.openstack {
                    // The caller's credentials are read as the root reads them: no panic, and
                    // a secret never in an error.
                    if let Err(e) = banyan_root::openstack::OpenStackConfig::load_for(
                        std::path::Path::new("/nonexistent-banyan-fuzz"),
                        Some(c),
                    ) {
                        if let Some(pw) = c.vars.get("OS_PASSWORD").filter(|p| p.len() >= 12) {
                            assert!(
                                !e.to_string().contains(pw.as_str()),
                                "a password in an error"
                            );
                        }
                    }
                }
                nodes(&req.nodes);
            }
        }
        9 => {
            let _ = query::<ListQuery>(text);
        }
        10 => {
            // `/actions/ID?wait_ms=&since=`: the id from the path, then the query.
            let (id, q) = text.split_once('?').unwrap_or((text, ""));
            let _ = validate_order_id(id);
            let _ = query::<WaitQuery>(q);
        }
        11 => {
            let _ = query::<AuditQuery>(text);
        }
        12 => {
            if let Some(t) = json::<TokenRequest>(text) {
                let _ = is_token_name(&t.name);
                let _ = t.role.to_string().parse::<Role>();
            }
        }
        13 => {
            if let Some(q) = query::<NodesetQuery>(text) {
                nodes(&q.expr);
            }
        }
        14 => {
            // `/console/NODE?read_only=` and `DELETE /nodes/NAME`.
            let (node, q) = text.split_once('?').unwrap_or((text, ""));
            let _ = validate_node_name(node);
            let _ = query::<ConsoleQuery>(q);
        }
        _ => {
            let _ = text.parse::<Role>();
        }
    }
});

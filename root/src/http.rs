//! The root's HTTP API (axum on hyper). Reads are open on the address it binds (loopback by
//! default, reached through `ssh -L`); every write or action needs `Authorization: Bearer <admin
//! token>`. Every error is JSON `{"error", "detail"}`; no input reaches a panic.

use crate::daemon::{RootHandle, Snapshot};
use crate::http_actions::Peer;
use crate::placement::Status;
use axum::extract::{rejection::JsonRejection, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use banyan_agent::tree::CommandReport;
use banyan_protocol::nodeset::NodeSet;
use banyan_protocol::wire::CommandBody;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;

#[derive(Clone)]
pub struct Api {
    pub root: RootHandle,
    /// The root's state dir, where profiles are.
    pub state_dir: Arc<std::path::PathBuf>,
    /// API tokens: the state dir's admin token and those admins made.
    pub tokens: Arc<std::sync::Mutex<crate::tokens::TokenStore>>,
    /// Node groups (ClusterShell's YAML group files).
    pub groups: Arc<std::sync::Mutex<crate::groups::RootGroups>>,
    /// Seals orders: the cluster CA's key, which every agent pins.
    pub signer: Arc<banyan_protocol::seal::Signer>,
    /// The OpenStack client of hypervisor actions, kept with its token between actions.
    pub openstack: Arc<crate::openstack::Clients>,
}

/// A JSON error with its status.
pub struct ApiError {
    status: StatusCode,
    error: String,
    detail: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.to_string(),
            detail: detail.into(),
        }
    }

    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.error, "detail": self.detail})),
        )
            .into_response()
    }
}

pub fn router(api: Api) -> Router {
    Router::new()
        .route("/topology", get(topology))
        .route("/console/{node}", get(crate::console::attach))
        .route("/topo", get(topo))
        .route("/status", get(status))
        .route("/totals", get(totals))
        .route("/ping", post(ping))
        .route("/job/list", get(job_list))
        .route("/job", get(job))
        .route("/job/", get(job))
        .route("/nodes", get(nodes))
        .route("/metrics", get(metrics))
        .route("/metrics/", get(metrics))
        .route("/alarms", get(alarms_raised))
        .route("/alarms/list", get(alarms_list))
        .route("/alarms/add", post(alarms_add))
        .route("/alarms/del", get(alarms_del_get).post(alarms_del_post))
        .route("/profiles", get(profiles))
        .route("/profiles/percmd", get(profiles_percmd))
        .route("/percmd", get(profiles_percmd))
        .route("/profiles/get", get(profile_get))
        .route("/get", get(profile_get))
        .route("/join", get(join))
        .route("/join/", get(join))
        .route("/join/del", get(join_del).post(join_del).delete(join_del))
        .route("/join/list", get(join_list))
        .route("/job/history", get(job_history))
        .route("/job/nodes", get(job_nodes))
        .route("/", get(ui_index))
        .route("/ui/{*path}", get(ui_asset))
        .merge(crate::http_actions::routes())
        .merge(crate::inventory::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn(refuse_large_bodies))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(gzip))
        .with_state(api)
}

/// The largest request body any route takes. The API's bodies are a node set or an alarm: a few
/// hundred bytes; 64 KiB leaves room for long node lists and refuses a runaway upload early.
pub const MAX_BODY: usize = 64 << 10;

/// Answers 413 from the declared length alone, before anything reads the body. A client that sent
/// `Expect: 100-continue` is thus told without uploading; a chunked body is cut off at the same
/// size by the body limit.
async fn refuse_large_bodies(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > MAX_BODY as u64 => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large",
            format!("{n} bytes declared; requests take at most {MAX_BODY} bytes"),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not found",
        "no such route; see ARCHITECTURE.md for the API",
    )
}

async fn wrong_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed",
        "this route does not take that method",
    )
}

/// The answer when the tree core has stopped (the root is shutting down).
pub(crate) fn core_stopped() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "root stopping",
        "the tree core is not running",
    )
}

/// A query string that does not parse.
pub(crate) fn bad_query(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad query", e.body_text())
}

async fn snapshot(api: &Api) -> Result<Snapshot, ApiError> {
    api.root.snapshot().await.ok_or_else(core_stopped)
}

pub(crate) async fn snapshot_of(api: &Api) -> Result<Snapshot, ApiError> {
    snapshot(api).await
}

fn up(s: Status) -> bool {
    s.is_live()
}

pub(crate) fn status_word(s: Status) -> &'static str {
    match s {
        Status::Attached => "up",
        Status::Pending { .. } => "joining",
        Status::Detached { .. } => "lost",
        Status::Stale { .. } => "stale",
    }
}

async fn topology(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let snap = snapshot(&api).await?;
    let nodes: Vec<Value> = snap
        .nodes
        .iter()
        .map(|n| {
            json!({
                "name": n.name,
                "parent": n.parent,
                "depth": n.depth,
                "children": n.children,
                "addr": n.addr,
                "up": up(n.status),
                "status": snap.word(n),
                "departed": snap.departed.get(&n.name).filter(|_| !up(n.status)),
            })
        })
        .collect();
    Ok(Json(json!({"root": snap.root, "nodes": nodes})))
}

async fn topo(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let snap = snapshot(&api).await?;
    let edges: Vec<[String; 2]> = snap
        .nodes
        .iter()
        .filter(|n| up(n.status))
        .filter_map(|n| n.parent.as_ref().map(|p| [p.clone(), n.name.clone()]))
        .collect();
    Ok(Json(json!(edges)))
}

#[derive(Serialize)]
struct StatusView {
    root: String,
    epoch: u64,
    nodes_up: usize,
    nodes_joining: usize,
    nodes_lost: usize,
    nodes_stale: usize,
    /// Nodes away because an operator powered them off: not failures.
    nodes_off: usize,
    depth: u32,
    last_wave: Option<Value>,
    /// UDP bytes the root received on its children's links since it started.
    mesh_rx_bytes: u64,
    /// Members the root's children claimed without the root's placement: how many since the
    /// root started, and the latest ones (`by`, `member`, `reason`).
    refused_claims: Value,
}

async fn status(State(api): State<Api>) -> Result<Json<StatusView>, ApiError> {
    let snap = snapshot(&api).await?;
    let agents = snap.nodes.iter().filter(|n| n.name != snap.root);
    let mut v = StatusView {
        root: snap.root.clone(),
        epoch: snap.epoch,
        nodes_up: 0,
        nodes_joining: 0,
        nodes_lost: 0,
        nodes_stale: 0,
        nodes_off: 0,
        depth: 0,
        mesh_rx_bytes: snap.mesh_rx_bytes,
        refused_claims: json!({
            "total": snap.refused_claims_total,
            "recent": snap.refused_claims.iter().map(|r| json!({
                "by": r.by, "member": r.member, "reason": r.reason,
            })).collect::<Vec<_>>(),
        }),
        last_wave: snap.last_wave.as_ref().map(|w| {
            json!({
                "wave": w.wave,
                "age_ms": snap.now_ms.saturating_sub(w.at_ms),
                "complete": w.complete,
                // From the wave's start (when every node sampled) to the root having all of it.
                "latency_ms": w.at_ms.saturating_sub(w.wave * snap.period_ms),
            })
        }),
    };
    for n in agents {
        if snap.word(n) == "off" {
            v.nodes_off += 1;
            continue;
        }
        match n.status {
            Status::Attached => {
                v.nodes_up += 1;
                v.depth = v.depth.max(n.depth);
            }
            Status::Pending { .. } => v.nodes_joining += 1,
            Status::Detached { .. } => v.nodes_lost += 1,
            Status::Stale { .. } => v.nodes_stale += 1,
        }
    }
    Ok(Json(v))
}

async fn totals(State(api): State<Api>) -> Result<Json<Value>, ApiError> {
    let snap = snapshot(&api).await?;
    Ok(Json(json!({
        "wave": snap.last_wave.as_ref().map(|w| w.wave),
        "metrics": banyan_protocol::job::node_view(&snap.totals).values,
    })))
}

/// The older write routes (ping, joins, alarms) need an admin token; the check is audited.
fn check_admin(api: &Api, headers: &HeaderMap, peer: &str, what: &str) -> Result<(), ApiError> {
    crate::http_actions::require_admin(api, headers, peer, what).map(|_| ())
}

#[derive(Deserialize)]
struct PingRequest {
    /// A node set: `cn[1-4],gpu1`.
    nodes: String,
}

/// A command's merged results, as the API shows them.
pub fn report_json(report: &CommandReport) -> Value {
    let mut answered = serde_json::Map::new();
    let mut failed = serde_json::Map::new();
    for (node, (answer, rtt)) in &report.answers {
        match answer {
            Ok(_) => {
                answered.insert(node.clone(), json!({"rtt_ms": rtt}));
            }
            Err(e) => {
                failed.insert(node.clone(), json!({"error": e}));
            }
        }
    }
    json!({
        "answered": answered,
        "failed": failed,
        "unreachable": report.unreachable.iter().collect::<Vec<_>>(),
    })
}

async fn ping(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Result<Json<PingRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&api, &headers, &peer, "ping")?;
    let Json(req) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad request body",
            format!(
                "expected JSON {{\"nodes\": \"cn[1-4]\"}}: {}",
                e.body_text()
            ),
        )
    })?;
    let set = NodeSet::parse(&req.nodes)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid node set", e.to_string()))?;
    if set.len() > 1_000_000 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "too many targets",
            "at most 1,000,000 nodes per command",
        ));
    }
    let targets: Vec<String> = set.iter().map(str::to_string).collect();
    let report = api
        .root
        .command(targets, CommandBody::Ping)
        .await
        .ok_or_else(core_stopped)?;
    Ok(Json(report_json(&report)))
}

// ----- The Metric Proxy's read routes -------------------------------------------------------------

/// Job descriptions are the Metric Proxy's shape (`banyan_protocol::job::JobDesc`); `main` is the
/// sum over all nodes, `Node: NAME` one node.
pub use banyan_protocol::job::JobDesc;

const NODE_PREFIX: &str = "Node: ";

fn main_desc() -> JobDesc {
    JobDesc {
        jobid: "main".into(),
        command: "Sum of all Jobs".into(),
        ..JobDesc::default()
    }
}

fn node_desc(name: &str) -> JobDesc {
    JobDesc {
        jobid: format!("{NODE_PREFIX}{name}"),
        command: format!("Sum of all Jobs running on {name}"),
        nodelist: name.to_string(),
        ..main_desc()
    }
}

fn agents(snap: &Snapshot) -> impl Iterator<Item = &crate::placement::NodeView> {
    snap.nodes.iter().filter(move |n| n.name != snap.root)
}

async fn job_list(State(api): State<Api>) -> Result<Json<Vec<JobDesc>>, ApiError> {
    let snap = snapshot(&api).await?;
    let mut out = vec![main_desc()];
    out.extend(agents(&snap).map(|n| node_desc(&n.name)));
    out.extend(snap.jobs.iter().cloned());
    Ok(Json(out))
}

/// `[{name, doc, ctype}]` for a metric set, `ctype` as the Metric Proxy writes it.
pub fn counters_json(set: &banyan_protocol::metric::MetricSet) -> Vec<Value> {
    set.values
        .iter()
        .map(|(name, v)| {
            let family = name.split('{').next().unwrap_or(name);
            json!({
                "name": name,
                "doc": crate::catalog::help(family).unwrap_or(""),
                "ctype": v,
            })
        })
        .collect()
}

fn digest_counters(d: &banyan_protocol::wire::Digest) -> Vec<Value> {
    let gauge = |v: f64| json!({"Gauge": {"min": v, "max": v, "hits": 1, "total": v, "last": v, "last_ms": d.sampled_ms}});
    vec![
        json!({"name": "banyan_node_cpu_usage_ratio", "doc": "Busy fraction of all cores", "ctype": gauge(d.cpu as f64)}),
        json!({"name": "banyan_node_memory_used_ratio", "doc": "Used fraction of memory", "ctype": gauge(d.memory as f64)}),
        json!({"name": "banyan_node_load1", "doc": "Load average over one minute", "ctype": gauge(d.load1 as f64)}),
        json!({"name": "banyan_node_network_receive_bytes_per_second", "doc": "Bytes received per second, all interfaces", "ctype": gauge(d.net_rx_bps)}),
        json!({"name": "banyan_node_network_transmit_bytes_per_second", "doc": "Bytes sent per second, all interfaces", "ctype": gauge(d.net_tx_bps)}),
    ]
}

#[derive(Deserialize)]
struct JobQuery {
    job: Option<String>,
}

/// A node's full metrics, fetched through the tree.
pub async fn node_metrics(
    api: &Api,
    name: &str,
) -> Result<banyan_protocol::metric::MetricSet, ApiError> {
    let report = api
        .root
        .command(
            vec![name.to_string()],
            CommandBody::Query(banyan_protocol::wire::Query::NodeMetrics),
        )
        .await
        .ok_or_else(core_stopped)?;
    match report.answers.get(name) {
        Some((Ok(banyan_protocol::wire::Answer::Metrics(set)), _)) => Ok(set.clone()),
        Some((Err(e), _)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "node failed",
            format!("{name}: {e}"),
        )),
        _ => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "node unreachable",
            format!("{name} did not answer through the tree"),
        )),
    }
}

/// Resolves a job id to its metrics: `main`, or `Node: NAME`.
async fn job_metrics(
    api: &Api,
    snap: &Snapshot,
    id: &str,
) -> Result<(JobDesc, banyan_protocol::metric::MetricSet), ApiError> {
    use banyan_protocol::job::{job_view, node_view};
    if id == "main" {
        return Ok((main_desc(), node_view(&snap.totals)));
    }
    if let Some(name) = id.strip_prefix(NODE_PREFIX) {
        if agents(snap).any(|n| n.name == name) {
            return Ok((node_desc(name), node_view(&node_metrics(api, name).await?)));
        }
    }
    if let Some(desc) = snap.jobs.iter().find(|d| d.jobid == id) {
        return Ok((desc.clone(), job_view(&snap.totals, id)));
    }
    if let Some(p) = crate::jobs::read_profile(&api.state_dir, id) {
        return Ok((p.desc.clone(), p.metrics));
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown job",
        format!("no job {id:?}; GET /job/list lists them"),
    ))
}

async fn job(
    State(api): State<Api>,
    q: Result<axum::extract::Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = q.map_err(bad_query)?;
    let snap = snapshot(&api).await?;
    match q.job {
        Some(id) => {
            let (desc, set) = job_metrics(&api, &snap, &id).await?;
            Ok(Json(json!({"desc": desc, "counters": counters_json(&set)})))
        }
        None => {
            let mut out =
                vec![json!({"desc": main_desc(), "counters": counters_json(&snap.totals)})];
            for n in agents(&snap) {
                let counters = snap
                    .digests
                    .get(&n.name)
                    .map(digest_counters)
                    .unwrap_or_default();
                out.push(json!({"desc": node_desc(&n.name), "counters": counters}));
            }
            Ok(Json(json!(out)))
        }
    }
}

#[derive(Deserialize)]
struct NodesQuery {
    nodes: Option<String>,
}

async fn nodes(
    State(api): State<Api>,
    q: Result<axum::extract::Query<NodesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = q.map_err(bad_query)?;
    let filter = match q.nodes.as_deref() {
        Some(expr) => Some(NodeSet::parse(expr).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid node set", e.to_string())
        })?),
        None => None,
    };
    let snap = snapshot(&api).await?;
    let out: Vec<Value> = agents(&snap)
        .filter(|n| filter.as_ref().is_none_or(|f| f.contains(&n.name)))
        .map(|n| {
            let d = snap.digests.get(&n.name);
            json!({
                "name": n.name,
                "up": up(n.status),
                "status": snap.word(n),
                "departed": snap.departed.get(&n.name).filter(|_| !up(n.status)),
                "parent": n.parent,
                "depth": n.depth,
                "age_ms": d.map(|d| snap.now_ms.saturating_sub(d.sampled_ms)),
                "digest": d.map(|d| json!({
                    "cpu": d.cpu, "memory": d.memory, "load1": d.load1,
                    "net_rx_bps": d.net_rx_bps, "net_tx_bps": d.net_tx_bps,
                    "scrape_errors": d.scrape_errors,
                })),
            })
        })
        .collect();
    Ok(Json(json!(out)))
}

/// Prometheus text exposition 0.0.4 of `main` (the sum over all nodes) or of one job.
async fn metrics(
    State(api): State<Api>,
    q: Result<axum::extract::Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = q.map_err(bad_query)?;
    let snap = snapshot(&api).await?;
    let id = q.job.unwrap_or_else(|| "main".to_string());
    let (_, set) = job_metrics(&api, &snap, &id).await?;
    let help = |family: &str| crate::catalog::help(family).map(str::to_string);
    let text = banyan_protocol::exposition::render(&set, &help, &[("banyan_job", id.as_str())]);
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

// ----- Scrapes of Prometheus exporters (`/join`) --------------------------------------------------

#[derive(Deserialize)]
struct JoinQuery {
    /// `HOST:PORT` or an `http://` URL.
    to: Option<String>,
    /// The node that scrapes it; by default the node named, or addressed, by the target's host.
    node: Option<String>,
}

/// Which node scrapes `target`: the one asked for, else the node whose name or mesh address is
/// the target's host. A target on no node needs `node=`: guessing would put series on the wrong
/// node's view.
fn scraping_node(
    snap: &Snapshot,
    target: &banyan_protocol::target::Target,
    asked: Option<&str>,
) -> Result<String, ApiError> {
    if let Some(name) = asked {
        return match agents(snap).find(|n| n.name == name) {
            Some(n) if up(n.status) => Ok(n.name.clone()),
            Some(_) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "node not up",
                format!("{name} is not attached to the tree now; try again when it is"),
            )),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown node",
                format!("no node {name:?}; GET /nodes lists them"),
            )),
        };
    }
    let host = target.host().trim_start_matches('[').trim_end_matches(']');
    let addr_host = |addr: &str| -> bool {
        addr.parse::<std::net::SocketAddr>()
            .map(|a| a.ip().to_string() == host)
            .unwrap_or(false)
    };
    agents(snap)
        .find(|n| n.name.eq_ignore_ascii_case(host) || addr_host(&n.addr))
        .map(|n| n.name.clone())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "which node scrapes it",
                format!(
                    "no node is named or addressed {host:?}; add &node=NAME to say which node scrapes {target}"
                ),
            )
        })
}

fn parse_join(q: &JoinQuery) -> Result<banyan_protocol::target::Target, ApiError> {
    let to = q.to.as_deref().ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing target",
            "give the exporter as ?to=HOST:PORT, e.g. /join?to=cn12:9100",
        )
    })?;
    banyan_protocol::target::Target::parse(to)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad target", e.to_string()))
}

/// Sends a scrape change to one node and answers with its new list.
async fn change_scrape(
    api: &Api,
    node: &str,
    change: banyan_protocol::wire::ScrapeChange,
) -> Result<Json<Value>, ApiError> {
    use banyan_protocol::wire::Answer;
    let report = api
        .root
        .command(vec![node.to_string()], CommandBody::Scrape(change))
        .await
        .ok_or_else(core_stopped)?;
    match report.answers.get(node) {
        Some((Ok(Answer::Scrapes(list)), _)) => Ok(Json(json!({
            "node": node,
            "scrapes": list.iter().map(|s| scrape_json(node, s)).collect::<Vec<_>>(),
        }))),
        Some((Ok(other), _)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "unexpected answer",
            format!("{node} answered {other:?}"),
        )),
        Some((Err(e), _)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "node refused",
            format!("{node}: {e}"),
        )),
        None => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "node unreachable",
            format!("{node} did not answer through the tree"),
        )),
    }
}

/// One scrape as `/join/list` shows it: the Metric Proxy's fields, then ours.
fn scrape_json(node: &str, s: &banyan_protocol::wire::ScrapeStatus) -> Value {
    json!({
        "target_url": s.target_url,
        "ttype": "Prometheus",
        "period": s.period_ms as f64 / 1000.0,
        "last_scrape": s.last_scrape_ms / 1000,
        "node": node,
        "ok": s.error.is_none() && s.last_ok_ms > 0,
        "error": s.error,
        "last_ok": s.last_ok_ms / 1000,
        "series": s.series,
    })
}

type JoinQueryResult =
    Result<axum::extract::Query<JoinQuery>, axum::extract::rejection::QueryRejection>;

/// What `/join` and `/join/del` share: the admin check, the target, the node, the command.
async fn join_change(
    api: &Api,
    headers: &HeaderMap,
    peer: &str,
    q: JoinQueryResult,
    change: fn(String) -> banyan_protocol::wire::ScrapeChange,
) -> Result<Json<Value>, ApiError> {
    check_admin(api, headers, peer, "join")?;
    let axum::extract::Query(q) = q.map_err(bad_query)?;
    let target = parse_join(&q)?;
    let snap = snapshot(api).await?;
    let node = scraping_node(&snap, &target, q.node.as_deref())?;
    change_scrape(api, &node, change(target.url())).await
}

/// `GET /join?to=HOST:PORT[&node=NAME]` (admin): a node starts scraping an exporter.
async fn join(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    q: JoinQueryResult,
) -> Result<Json<Value>, ApiError> {
    join_change(
        &api,
        &headers,
        &peer,
        q,
        banyan_protocol::wire::ScrapeChange::Add,
    )
    .await
}

/// `/join/del?to=HOST:PORT[&node=NAME]` (admin): the node stops scraping it.
async fn join_del(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    q: JoinQueryResult,
) -> Result<Json<Value>, ApiError> {
    join_change(
        &api,
        &headers,
        &peer,
        q,
        banyan_protocol::wire::ScrapeChange::Remove,
    )
    .await
}

/// `GET /join/list`: every node's scrapes, asked through the tree. Nodes that did not answer are
/// named in the `X-Banyan-Unreachable` count, so a short list is never mistaken for a full one.
async fn join_list(State(api): State<Api>) -> Result<Response, ApiError> {
    use banyan_protocol::wire::{Answer, Query};
    let snap = snapshot(&api).await?;
    let targets: Vec<String> = agents(&snap)
        .filter(|n| up(n.status))
        .map(|n| n.name.clone())
        .collect();
    let report = api
        .root
        .command(targets, CommandBody::Query(Query::Scrapes))
        .await
        .ok_or_else(core_stopped)?;
    let mut out = Vec::new();
    for (node, (answer, _)) in &report.answers {
        if let Ok(Answer::Scrapes(list)) = answer {
            out.extend(list.iter().map(|s| scrape_json(node, s)));
        }
    }
    let missing = report.unreachable.len()
        + report
            .answers
            .values()
            .filter(|(a, _)| !matches!(a, Ok(Answer::Scrapes(_))))
            .count();
    Ok((
        [("x-banyan-unreachable", missing.to_string())],
        Json(json!(out)),
    )
        .into_response())
}

// ----- Profiles of finished jobs ----------------------------------------------------------------

/// `GET /profiles`: every finished job's description, oldest end first.
async fn profiles(State(api): State<Api>) -> Json<Vec<JobDesc>> {
    let dir = api.state_dir.clone();
    let list = tokio::task::spawn_blocking(move || crate::jobs::list_profiles(&dir))
        .await
        .unwrap_or_default();
    Json(list.iter().map(|p| p.desc.clone()).collect())
}

/// `GET /profiles/percmd` (also `/percmd`): finished jobs grouped by command.
async fn profiles_percmd(State(api): State<Api>) -> Json<Value> {
    let dir = api.state_dir.clone();
    let list = tokio::task::spawn_blocking(move || crate::jobs::list_profiles(&dir))
        .await
        .unwrap_or_default();
    let mut by: std::collections::BTreeMap<String, Vec<JobDesc>> = Default::default();
    for p in &list {
        by.entry(p.desc.command.clone())
            .or_default()
            .push(p.desc.clone());
    }
    Json(json!(by))
}

#[derive(Deserialize)]
struct ProfileQuery {
    jobid: Option<String>,
}

/// `GET /profiles/get?jobid=ID` (also `/get`): one profile, in the job snapshot's shape plus how
/// its ranks ended.
async fn profile_get(
    State(api): State<Api>,
    q: Result<axum::extract::Query<ProfileQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = q.map_err(bad_query)?;
    let id = q.jobid.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing jobid",
            "give the job as ?jobid=ID; GET /profiles lists them",
        )
    })?;
    let dir = api.state_dir.clone();
    let lookup = id.clone();
    let found = tokio::task::spawn_blocking(move || crate::jobs::read_profile(&dir, &lookup))
        .await
        .ok()
        .flatten();
    let p = found.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown profile",
            format!("no finished job {id:?}; GET /profiles lists them"),
        )
    })?;
    Ok(Json(json!({
        "desc": p.desc.clone(),
        "counters": counters_json(&p.metrics),
        "ranks": p.ranks,
        "processes": p.processes,
    })))
}

// ----- Alarms -------------------------------------------------------------------------------------

fn alarm_book(api: &Api) -> std::sync::MutexGuard<'_, crate::alarms::AlarmBook> {
    api.root
        .alarms
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `GET /alarms`: the raised alarms, by target.
async fn alarms_raised(State(api): State<Api>) -> Json<Value> {
    Json(json!(alarm_book(&api).by_target(true)))
}

/// `GET /alarms/list`: every alarm, by target.
async fn alarms_list(State(api): State<Api>) -> Json<Value> {
    Json(json!(alarm_book(&api).by_target(false)))
}

/// `POST /alarms/add` (admin): `{name, target, metric, operation, value}`.
async fn alarms_add(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Result<Json<crate::alarms::AddRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&api, &headers, &peer, "alarm.add")?;
    let Json(req) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad request body",
            format!(
                "expected JSON {{\"name\", \"target\", \"metric\", \"operation\": \">\"|\"<\"|\"=\", \"value\"}}: {}",
                e.body_text()
            ),
        )
    })?;
    let added = alarm_book(&api)
        .add(req)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad alarm", e))?;
    Ok(Json(json!(added)))
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

fn alarm_del(api: &Api, target: &str, name: &str) -> Result<Json<Value>, ApiError> {
    let gone = alarm_book(api)
        .delete(target, name)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "unknown alarm", e))?;
    Ok(Json(json!(gone)))
}

/// `GET /alarms/del?targetjob=main&name=NAME` (admin).
async fn alarms_del_get(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    q: Result<axum::extract::Query<AlarmDelQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&api, &headers, &peer, "alarm.del")?;
    let axum::extract::Query(q) = q.map_err(bad_query)?;
    let (Some(target), Some(name)) = (q.targetjob, q.name) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing alarm",
            "give ?targetjob=main&name=NAME",
        ));
    };
    alarm_del(&api, &target, &name)
}

/// `POST /alarms/del` (admin): `{"target", "name"}`.
async fn alarms_del_post(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Result<Json<AlarmDelBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&api, &headers, &peer, "alarm.del")?;
    let Json(b) = body.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad request body",
            format!("expected JSON {{\"target\", \"name\"}}: {}", e.body_text()),
        )
    })?;
    alarm_del(&api, &b.target, &b.name)
}

// ----- Job history and per-node distribution (for the web UI) -----------------------------------

/// The job id of `?job=ID`, checked.
fn job_param(q: Option<String>) -> Result<String, ApiError> {
    let id = q.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "missing job",
            "give the job as ?job=ID; GET /job/list lists them",
        )
    })?;
    banyan_protocol::job::check_job_id(&id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid job id", e.to_string()))?;
    Ok(id)
}

/// `GET /job/history?job=ID`: the job's series over its life, one point per wave (thinned when
/// long), for a running job from the job book and for a finished one from its profile.
/// `?job=main` is the cluster's main series (CPU, memory, load, network, nodes, running jobs)
/// since the root started, kept the same way.
async fn job_history(
    State(api): State<Api>,
    q: Result<axum::extract::Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = q.map_err(bad_query)?;
    if q.job.as_deref() == Some(crate::jobs::MAIN) {
        let h = api
            .root
            .histories
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(crate::jobs::MAIN)
            .cloned()
            .unwrap_or_default();
        return Ok(Json(
            json!({"job": crate::jobs::MAIN, "running": true, "history": h}),
        ));
    }
    let id = job_param(q.job)?;
    let live = api
        .root
        .histories
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&id)
        .cloned();
    if let Some(h) = live {
        return Ok(Json(json!({"job": id, "running": true, "history": h})));
    }
    let dir = api.state_dir.clone();
    let lookup = id.clone();
    let profile = tokio::task::spawn_blocking(move || crate::jobs::read_profile(&dir, &lookup))
        .await
        .ok()
        .flatten();
    if let Some(p) = profile {
        let h = p.history.unwrap_or_default();
        return Ok(Json(json!({"job": id, "running": false, "history": h})));
    }
    // Learnt this very wave: running, no point yet.
    let snap = snapshot(&api).await?;
    if snap.jobs.iter().any(|d| d.jobid == id) {
        let h = crate::jobs::JobHistory::default();
        return Ok(Json(json!({"job": id, "running": true, "history": h})));
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown job",
        format!("no running or finished job {id:?}; GET /job/list and /profiles list them"),
    ))
}

/// Most nodes asked at once by `/job/nodes`.
const JOB_NODES_MAX: usize = 4096;

/// `GET /job/nodes?job=ID`: a running job's values on each node it runs on (its series merged by
/// family), asked of those nodes through the tree, to spot a slow node. The nodes are the ones
/// whose digests say they run ranks of the job. A finished job answers an empty list: its
/// per-node values left the tree with it.
async fn job_nodes(
    State(api): State<Api>,
    q: Result<axum::extract::Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    use banyan_protocol::wire::{Answer, Query};
    let axum::extract::Query(q) = q.map_err(bad_query)?;
    let id = job_param(q.job)?;
    let snap = snapshot(&api).await?;
    let mut on: Vec<(String, u32)> = snap
        .digests
        .values()
        .filter_map(|d| {
            d.jobs
                .iter()
                .find(|j| j.jobid == id && j.running > 0)
                .map(|j| (d.name.clone(), j.running))
        })
        .collect();
    on.sort();
    on.truncate(JOB_NODES_MAX);
    let running = snap.jobs.iter().any(|d| d.jobid == id);
    if !running {
        let dir = api.state_dir.clone();
        let lookup = id.clone();
        let finished =
            tokio::task::spawn_blocking(move || crate::jobs::read_profile(&dir, &lookup).is_some())
                .await
                .unwrap_or(false);
        if !finished {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown job",
                format!("no running or finished job {id:?}; GET /job/list lists them"),
            ));
        }
        return Ok(Json(
            json!({"job": id, "running": false, "nodes": [], "unreachable": []}),
        ));
    }
    let targets: Vec<String> = on.iter().map(|(n, _)| n.clone()).collect();
    let report = if targets.is_empty() {
        None
    } else {
        Some(
            api.root
                .command(targets, CommandBody::Query(Query::NodeMetrics))
                .await
                .ok_or_else(core_stopped)?,
        )
    };
    let mut nodes = Vec::new();
    let mut unreachable = Vec::new();
    for (name, _) in &on {
        let answer = report.as_ref().and_then(|r| r.answers.get(name));
        match answer {
            Some((Ok(Answer::Metrics(set)), _)) => {
                use banyan_protocol::job as j;
                let view = j::job_view(set, &id);
                let values: serde_json::Map<String, Value> = crate::jobs::family_values(&view)
                    .into_iter()
                    .map(|(f, _, v)| (f, json!(v)))
                    .collect();
                // The digest counts ranks and their processes together; the node's own counters
                // tell them apart.
                let still = |started: &str, ended: &str| {
                    (view.counter(started) - view.counter(ended)).max(0.0) as u64
                };
                let ranks_here = still(j::RANKS_STARTED, j::RANKS_ENDED);
                let processes = still(j::PROCESSES_STARTED, j::PROCESSES_ENDED);
                nodes.push(json!({"name": name, "ranks": ranks_here, "processes": processes, "values": values}));
            }
            _ => unreachable.push(name.clone()),
        }
    }
    Ok(Json(
        json!({"job": id, "running": true, "nodes": nodes, "unreachable": unreachable}),
    ))
}

// ----- The web UI (static files from `banyan-webui`) ----------------------------------------------

/// Whether `If-None-Match` names `etag` (or `*`); weak comparison, as RFC 9110 asks for it. The
/// tag of the gzip form (see [`gzip`]) names the same file.
fn etag_matches(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(axum::http::header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag || t.replace(GZIP_TAG, "") == etag)
}

/// Marks a gzip representation's ETag (`"abc"` -> `"abc-gz"`): a strong tag names exact bytes.
const GZIP_TAG: &str = "-gz";
/// Bodies smaller than this go as they are: compressing them saves less than it costs.
const GZIP_MIN: usize = 1024;
/// Bodies larger than this go as they are rather than be held in memory twice.
const GZIP_MAX: usize = 64 << 20;

/// Compresses JSON and the UI's files for clients that accept gzip (browsers do; the CLI and the
/// tests' client do not ask). `/nodes` of 1,000 nodes shrinks about tenfold, which matters through
/// an ssh tunnel polled every 1.5 s. The Prometheus text is left as it is.
async fn gzip(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::{header, HeaderValue};
    let accepts = req
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| {
            let mut parts = e.split(';').map(str::trim);
            parts.next() == Some("gzip") && !parts.any(|q| q == "q=0" || q == "q=0.0")
        });
    let resp = next.run(req).await;
    let compressible = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            [
                "application/json",
                "text/html",
                "text/css",
                "text/javascript",
            ]
            .iter()
            .any(|p| t.starts_with(p))
        });
    if !accepts
        || !compressible
        || resp.status() != StatusCode::OK
        || resp.headers().contains_key(header::CONTENT_ENCODING)
    {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, GZIP_MAX).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot send the answer",
                e.to_string(),
            )
            .into_response()
        }
    };
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    if bytes.len() < GZIP_MIN {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(bytes.len() / 4),
        flate2::Compression::fast(),
    );
    let packed = std::io::Write::write_all(&mut enc, &bytes).and_then(|_| enc.finish());
    let Ok(packed) = packed else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    let tagged = parts
        .headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|tag| format!("{}{GZIP_TAG}\"", tag.trim_end_matches('"')))
        .and_then(|t| HeaderValue::from_str(&t).ok());
    if let Some(v) = tagged {
        parts.headers.insert(header::ETAG, v);
    }
    Response::from_parts(parts, axum::body::Body::from(packed))
}

fn serve_asset(headers: &HeaderMap, a: &'static banyan_webui::Asset) -> Response {
    use axum::http::header;
    // Revalidated on each load (the names carry no hash); a 304 costs a round trip, no bytes.
    let common = [
        (header::ETAG, a.etag),
        (header::CACHE_CONTROL, "no-cache"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        // Defence in depth behind the page's own escaping: no inline script, nothing from
        // anywhere but this root.
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    if etag_matches(headers, a.etag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(header::CONTENT_TYPE, a.content_type)], a.bytes).into_response()
}

/// `GET /`: the web UI's page.
async fn ui_index(headers: HeaderMap) -> Response {
    serve_asset(&headers, banyan_webui::index())
}

/// `GET /ui/FILE`: the UI's script and stylesheet.
async fn ui_asset(
    headers: HeaderMap,
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Path(path) =
        path.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad path", e.body_text()))?;
    let a = banyan_webui::asset(&path).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not found",
            format!("the web UI has no file {path:?}"),
        )
    })?;
    Ok(serve_asset(&headers, a))
}

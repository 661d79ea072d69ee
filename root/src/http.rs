//! The root's HTTP API (axum on hyper). Reads are open on the address it binds (loopback by
//! default, reached through `ssh -L`); every write or action needs `Authorization: Bearer <admin
//! token>`. Every error is JSON `{"error", "detail"}`; no input reaches a panic.

use crate::daemon::{RootHandle, Snapshot};
use crate::placement::Status;
use axum::extract::{rejection::JsonRejection, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use banyan_agent::tree::CommandReport;
use banyan_protocol::nodeset::NodeSet;
use banyan_protocol::wire::{Answer, CommandBody};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Clone)]
pub struct Api {
    pub root: RootHandle,
    pub admin_token: Arc<String>,
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
        .route("/topo", get(topo))
        .route("/status", get(status))
        .route("/totals", get(totals))
        .route("/ping", post(ping))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        .with_state(api)
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

async fn snapshot(api: &Api) -> Result<Snapshot, ApiError> {
    api.root.snapshot().await.ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "root stopping",
            "the tree core is not running",
        )
    })
}

fn up(s: Status) -> bool {
    s.is_live()
}

fn status_word(s: Status) -> &'static str {
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
                "status": status_word(n.status),
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
    depth: u32,
    last_wave: Option<Value>,
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
        depth: 0,
        last_wave: snap.last_wave.as_ref().map(|w| {
            json!({"wave": w.wave, "age_ms": snap.now_ms.saturating_sub(w.at_ms), "complete": w.complete})
        }),
    };
    for n in agents {
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
        "metrics": snap.totals.values,
    })))
}

fn check_admin(api: &Api, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(given) = given else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "admin token required",
            "send Authorization: Bearer <the root's admin-token file>",
        ));
    };
    // Compare digests so neither the content nor the length leaks through timing.
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(api.admin_token.as_bytes());
    let same = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong admin token",
            "the token does not match the root's admin-token file",
        ))
    }
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
            Ok(Answer::Pong) | Ok(Answer::Moving) => {
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
    headers: HeaderMap,
    body: Result<Json<PingRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    check_admin(&api, &headers)?;
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
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "root stopping",
                "the tree core is not running",
            )
        })?;
    Ok(Json(report_json(&report)))
}

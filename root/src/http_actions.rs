//! The HTTP routes of the action path and what governs it: actions (`/actions`), the audit log
//! (`/audit`), tokens (`/tokens`), node groups (`/groups`, `/nodeset`) and forgetting a node's
//! certificate (`DELETE /nodes/NAME`).
//!
//! Every mutating request goes the same way: token -> role and scope -> audit line (fsynced) ->
//! only then does anything leave the root. A refused request is audited too, with its reason,
//! and changes nothing. The routes answer JSON errors `{error, detail}`: 400 bad input, 401 no
//! usable token, 403 a token that may not do this, 404 unknown action or token.

use crate::actions::{ActionRecord, ActionState, TargetPhase, TargetState};
use crate::audit::{AuditEvent, AuditFilter};
use crate::daemon::lock;
use crate::http::{Api, ApiError};
use crate::tokens::{Principal, Role};
use axum::extract::{rejection::JsonRejection, FromRequestParts, Path, Query, State};
use axum::http::{request::Parts, HeaderMap, StatusCode};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use banyan_protocol::action::{vm_node_name, Order, Task, VmBoot, VmJoin, VmOp, VmTask};
use banyan_protocol::nodeset::NodeSet;
use banyan_protocol::seal::Purpose;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Most targets of one action.
pub const MAX_TARGETS: usize = 1_000_000;
/// An action's default and longest run time on a node.
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// How long after its issue a target still accepts an order: it must *start* by then.
pub const DELIVERY_WINDOW_MS: u64 = 60_000;
/// Time the root waits for answers past the targets' own deadline: killing a command and the
/// answer's way up.
pub const ANSWER_MARGIN_MS: u64 = 5_000;
/// Longest a long poll of an action waits.
pub const MAX_WAIT_MS: u64 = 30_000;

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/actions", post(start_action).get(list_actions))
        .route("/actions/{id}", get(get_action).delete(cancel_action))
        .route("/audit", get(audit_read))
        .route("/audit/verify", get(audit_verify))
        .route("/tokens", post(token_create).get(token_list))
        .route("/tokens/{name}", delete(token_revoke))
        .route("/groups", get(groups_list))
        .route("/nodeset", get(nodeset))
        .route("/nodes/{name}", delete(node_forget))
}

/// The caller's address, for the audit log (`-` when the server was not given it).
pub struct Peer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map_or_else(|| "-".to_string(), |c| c.0.to_string()),
        ))
    }
}

pub(crate) fn now_ms() -> u64 {
    banyan_agent::transport::unix_ms()
}

/// Appends to the audit log; a log that cannot be written stops the request (nothing may act
/// unaudited).
pub fn audit(api: &Api, event: AuditEvent) -> Result<(), ApiError> {
    lock(&api.root.audit)
        .append(event)
        .map(|_| ())
        .map_err(|e| {
            tracing::error!(error = %e, "cannot write the audit log; the request is refused");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit log unusable",
                format!("{e}; nothing was done"),
            )
        })
}

/// The token's principal, or a 401. A refusal is audited under `event` with the reason.
pub fn authenticate(
    api: &Api,
    headers: &HeaderMap,
    peer: &str,
    event: &str,
) -> Result<Principal, ApiError> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let found = lock(&api.tokens).authenticate(bearer, now_ms());
    found.map_err(|e| {
        let refusal =
            AuditEvent::new(now_ms(), "-", peer, format!("{event}.refused")).reason(e.to_string());
        if let Err(err) = audit(api, refusal) {
            return err;
        }
        // No token at all is 401 (send one); a token that does not work is 403.
        match e {
            crate::tokens::AuthError::Missing => {
                ApiError::new(StatusCode::UNAUTHORIZED, "token required", e.to_string())
            }
            _ => ApiError::new(StatusCode::FORBIDDEN, "not authenticated", e.to_string()),
        }
    })
}

/// The admin check of the older write routes (alarms, joins, ping): an admin token, audited.
pub fn require_admin(
    api: &Api,
    headers: &HeaderMap,
    peer: &str,
    what: &str,
) -> Result<Principal, ApiError> {
    let p = authenticate(api, headers, peer, what)?;
    if let Err(e) = p.require_admin(what) {
        audit(
            api,
            AuditEvent::new(now_ms(), p.name.clone(), peer, format!("{what}.refused"))
                .reason(e.to_string()),
        )?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "refused",
            e.to_string(),
        ));
    }
    Ok(p)
}

fn bad_body(e: JsonRejection, shape: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "bad request body",
        format!("expected JSON {shape}: {}", e.body_text()),
    )
}

/// Resolves a node-set expression at the root: groups (`@rack1`, `@src:grp`, `@*`) and
/// ClusterShell's operators; never `@file` terms (the root reads no file a caller names).
pub fn resolve(api: &Api, expr: &str) -> Result<NodeSet, String> {
    let groups = fresh_groups(api);
    groups.resolve(expr).map_err(|e| e.to_string())
}

/// The groups, re-read first if a group file changed (an operator edits them by hand; a broken
/// edit keeps the groups as they were and is logged).
fn fresh_groups(api: &Api) -> std::sync::MutexGuard<'_, crate::groups::RootGroups> {
    let mut groups = lock(&api.groups);
    if let Err(e) = groups.reload() {
        tracing::warn!(error = %e, "group files not reloaded; keeping the groups as they were");
    }
    groups
}

/// Whether `task` launches guests that write a node's file in place (a disk without overlay).
fn vm_writes_node_file(task: &Task) -> bool {
    matches!(task, Task::Vm(VmTask { op: VmOp::Launch(l) })
        if matches!(l.boot, VmBoot::Disk { overlay: false, .. }))
}

#[derive(Deserialize)]
struct ActionRequest {
    nodes: String,
    #[serde(default)]
    for_real: bool,
    timeout_ms: Option<u64>,
    task: Task,
    /// `hv` only: the caller's own OpenStack credentials, used for this action instead of the
    /// root's. Never audited, logged nor kept in the action's record.
    #[serde(default)]
    openstack: Option<crate::openstack::CallerCredentials>,
}

/// `POST /actions`: checks, audits, seals and sends an action; answers its id at once (202).
async fn start_action(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Result<Json<ActionRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let principal = authenticate(&api, &headers, &peer, "action")?;
    let now = now_ms();
    let refuse = |status: StatusCode, error: &str, detail: String, args: Value| {
        let event = AuditEvent::new(now, principal.name.clone(), peer.clone(), "action.refused")
            .args(args)
            .reason(detail.clone());
        match audit(&api, event) {
            Ok(()) => ApiError::new(status, error, detail),
            Err(e) => e,
        }
    };
    let req = match body {
        Ok(Json(r)) => r,
        Err(e) => {
            let err = bad_body(
                e,
                r#"{"nodes": "cn[1-4]", "for_real": false, "task": {"exec": {"argv": ["uname", "-n"]}}}"#,
            );
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "bad request body",
                err_detail(&err),
                Value::Null,
            ));
        }
    };
    let args = json!({"kind": req.task.kind(), "nodes": req.nodes, "task": req.task, "timeout_ms": req.timeout_ms});
    let bad = |detail: String| refuse(StatusCode::BAD_REQUEST, "bad action", detail, args.clone());
    if matches!(req.task, Task::Cancel { .. }) {
        return Err(bad("cancel an action with DELETE /actions/ID".into()));
    }
    if matches!(req.task, Task::Bmc(_)) {
        return Err(bad(
            "bmc tasks are sent by the root to BMC gateways; ask for a power action instead".into(),
        ));
    }
    if matches!(&req.task, Task::Vm(v) if matches!(v.op, VmOp::Console { .. })) {
        return Err(bad(
            "a guest's console is opened with GET /console/HOST:NAME (banyan vm console HOST:NAME), not as an action".into(),
        ));
    }
    req.task.validate().map_err(&bad)?;
    if guest_join(&req.task).is_some_and(|j| !j.tokens.is_empty()) {
        return Err(bad(
            "guest join tokens are minted by the root: ask with \"join\": {} (banyan vm launch --join)"
                .into(),
        ));
    }
    // Power: the BMC config is read now (edits apply to the next action) and must be usable.
    let bmcs = match &req.task {
        Task::Power(_) => {
            Some(crate::bmcconf::BmcConfig::load(&api.state_dir).map_err(|e| bad(e.to_string()))?)
        }
        _ => None,
    };
    // Hypervisors: the OpenStack settings and credentials are read now, and the client made.
    let openstack = match &req.task {
        Task::Hv(_) => {
            let caller = req.openstack.as_ref();
            let config = crate::openstack::OpenStackConfig::load_for(&api.state_dir, caller)
                .map_err(|e| bad(e.to_string()))?;
            // The caller's credentials make a client for this action alone: the root's kept
            // client (and token) stays for the actions that use the root's own.
            let cloud = match caller {
                Some(_) => {
                    crate::openstack::client::Cloud::new(config.creds.clone(), config.timeout)
                        .map(std::sync::Arc::new)
                }
                None => api.openstack.get(&config),
            }
            .map_err(|e| bad(e.detail))?;
            Some((config, cloud))
        }
        _ => None,
    };
    let timeout_ms = match &req.task {
        Task::Hv(h) => openstack
            .as_ref()
            .map_or(DEFAULT_TIMEOUT_MS, |(config, _)| {
                u64::try_from(crate::hv::action_timeout(h, config).as_millis()).unwrap_or(u64::MAX)
            }),
        // The grace time is the caller's timeout; the action lasts that and the forced change.
        Task::Power(p) => {
            let mut p = p.clone();
            p.grace_ms = p.grace_ms.or(req.timeout_ms);
            u64::try_from(crate::power::action_timeout(&p).as_millis()).unwrap_or(u64::MAX)
        }
        _ => req.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
    };
    if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(bad(format!(
            "timeout_ms {timeout_ms} is out of range: 1 ms to {MAX_TIMEOUT_MS} ms"
        )));
    }
    let targets = resolve(&api, &req.nodes).map_err(&bad)?;
    if targets.is_empty() {
        return Err(bad(format!("{:?} names no node", req.nodes)));
    }
    if targets.len() > MAX_TARGETS {
        return Err(bad(format!("at most {MAX_TARGETS} targets per action")));
    }
    let snap = crate::http::snapshot_of(&api).await?;
    let known: NodeSet = NodeSet::from_names(snap.nodes.iter().map(|n| n.name.as_str()));
    let unknown = targets.difference(&known);
    if !unknown.is_empty() {
        return Err(bad(format!(
            "not in this cluster: {} ({} of {} targets); check the node set",
            unknown.fold(),
            unknown.len(),
            targets.len()
        )));
    }
    check_guest_node_names(&req.task, &targets).map_err(&bad)?;
    let scope = if matches!(req.task, Task::Exec(_)) {
        principal.require_admin("exec")
    } else if vm_writes_node_file(&req.task) {
        // A guest booted from a disk without an overlay writes that file of the node in place,
        // whatever it is (`/dev/sda`): as much power over the node as exec.
        principal.require_admin("vm launch --disk without --overlay")
    } else if matches!(&req.task, Task::Vm(v) if matches!(v.op, VmOp::List)) {
        // Listing guests reads, and viewers read everything; any token may.
        Ok(())
    } else {
        let groups = lock(&api.groups);
        principal.scope_check(&targets, &|g: &str| groups.group(g))
    };
    if let Err(e) = scope {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "refused",
            e.to_string(),
            args,
        ));
    }

    let id = format!("{:016x}", rand::random::<u64>());
    let folded = targets.fold();
    // Guests' join tokens go in the sealed order only: the record and the audit line keep the
    // request's task, which has none.
    let task = if req.for_real {
        mint_guest_tokens(&api, &req.task, &targets, &id, now).map_err(|e| {
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot mint guest tokens",
                e,
                args.clone(),
            )
        })?
    } else {
        req.task.clone()
    };
    let order = Order {
        id: id.clone(),
        issued_ms: now,
        expires_ms: now + DELIVERY_WINDOW_MS,
        timeout_ms,
        for_real: req.for_real,
        who: principal.name.clone(),
        targets: folded.clone(),
        task,
    };
    let sealed = seal(&api, &order)?;
    // The audit line is on disk before the order leaves the root.
    audit(
        &api,
        AuditEvent::new(now, principal.name.clone(), peer.clone(), "action.request")
            .action(id.clone())
            .for_real(req.for_real)
            .targets(&targets)
            .args(args),
    )?;
    let deadline_ms = now + timeout_ms + DELIVERY_WINDOW_MS.min(timeout_ms) + ANSWER_MARGIN_MS;
    let names: Vec<String> = targets.iter().map(str::to_string).collect();
    let record = ActionRecord {
        id: id.clone(),
        kind: req.task.kind().to_string(),
        who: principal.name.clone(),
        peer,
        task: req.task,
        nodes: folded.clone(),
        for_real: req.for_real,
        state: ActionState::Running,
        version: 0,
        started_ms: now,
        ended_ms: None,
        deadline_ms,
        cancel_requested: false,
        targets: names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    TargetState {
                        state: TargetPhase::Pending,
                        result: None,
                        error: None,
                        refused: Vec::new(),
                        live: None,
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
    };
    lock(&api.root.actions).start(record);
    if let (Task::Hv(task), Some((config, cloud))) = (&order.task, openstack) {
        let agents = snap
            .nodes
            .iter()
            .map(|n| (n.name.clone(), snap.word(n)))
            .collect();
        let job = crate::hv::HvJob {
            id: id.clone(),
            task: task.clone(),
            for_real: order.for_real,
            who: principal.name.clone(),
            targets: names,
            agents,
            config,
            cloud,
        };
        tokio::spawn(crate::hv::run(api.clone(), job));
        tracing::info!(action = %id, who = %principal.name, targets = %folded, for_real = order.for_real, kind = "hv", "action started");
        return Ok((
            StatusCode::ACCEPTED,
            Json(
                json!({"id": id, "targets": folded, "count": targets.len(), "for_real": order.for_real}),
            ),
        ));
    }
    if let (Task::Power(task), Some(config)) = (&order.task, bmcs) {
        let mut task = task.clone();
        task.grace_ms = task.grace_ms.or(req.timeout_ms);
        let agents = snap
            .nodes
            .iter()
            .map(|n| (n.name.clone(), snap.word(n)))
            .collect();
        let job = crate::power::PowerJob {
            id: id.clone(),
            task,
            for_real: order.for_real,
            who: principal.name.clone(),
            targets: names,
            agents,
            config,
            deadline: std::time::Instant::now() + Duration::from_millis(timeout_ms),
        };
        tokio::spawn(crate::power::run(api.clone(), job));
        tracing::info!(action = %id, who = %principal.name, targets = %folded, for_real = order.for_real, kind = "power", "action started");
        return Ok((
            StatusCode::ACCEPTED,
            Json(
                json!({"id": id, "targets": folded, "count": targets.len(), "for_real": order.for_real}),
            ),
        ));
    }
    if order.for_real {
        plan_guest_departures(&api, &order, &targets, &snap, deadline_ms);
    }
    if !api
        .root
        .start_action(id.clone(), names, sealed, deadline_ms)
    {
        return Err(crate::http::core_stopped());
    }
    tracing::info!(action = %id, who = %principal.name, targets = %folded, for_real = order.for_real, kind = order.task.kind(), "action started");
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"id": id, "targets": folded, "count": targets.len(), "for_real": order.for_real}),
        ),
    ))
}

/// The join of a guest launch, if it asks for one.
fn guest_join(task: &Task) -> Option<&VmJoin> {
    match task {
        Task::Vm(VmTask {
            op: VmOp::Launch(l),
        }) => l.join.as_ref(),
        _ => None,
    }
}

/// A joining guest's node name (`HOST-vm-NAME`) must be a node name for every target.
fn check_guest_node_names(task: &Task, targets: &NodeSet) -> Result<(), String> {
    let Task::Vm(VmTask {
        op: VmOp::Launch(l),
    }) = task
    else {
        return Ok(());
    };
    if l.join.is_none() {
        return Ok(());
    }
    for host in targets.iter() {
        for guest in l.names() {
            let node = vm_node_name(host, &guest);
            banyan_protocol::identity::validate_node_name(&node).map_err(|e| {
                format!(
                    "--join: guest {guest} of {host} would join as {node:?}, not a node name: {e}"
                )
            })?;
        }
    }
    Ok(())
}

/// The task of the order: for a guest launch with `join`, one token per guest of each target,
/// for its node name alone, valid 15 minutes (or the TTL, if shorter).
fn mint_guest_tokens(
    api: &Api,
    task: &Task,
    targets: &NodeSet,
    action: &str,
    now: u64,
) -> Result<Task, String> {
    let Task::Vm(VmTask {
        op: VmOp::Launch(l),
    }) = task
    else {
        return Ok(task.clone());
    };
    if l.join.is_none() {
        return Ok(task.clone());
    }
    let ttl = l
        .ttl_ms
        .unwrap_or(crate::guesttokens::MAX_TTL_MS)
        .min(crate::guesttokens::MAX_TTL_MS);
    let guests = l.names();
    let nodes: Vec<String> = targets
        .iter()
        .flat_map(|host| guests.iter().map(move |g| vm_node_name(host, g)))
        .collect();
    let minted = lock(&api.root.guest_tokens).mint(&nodes, ttl, action, now)?;
    let tokens: BTreeMap<String, String> = nodes
        .into_iter()
        .zip(minted.iter().map(ToString::to_string))
        .collect();
    tracing::info!(action, guests = tokens.len(), "guest join tokens minted");
    let mut l = l.clone();
    l.join = Some(VmJoin { tokens });
    Ok(Task::Vm(VmTask {
        op: VmOp::Launch(l),
    }))
}

/// A `vm stop` for real: the nodes of the guests it stops that joined the tree leave as
/// planned (shown `off`, not lost), if they leave before the action's deadline.
fn plan_guest_departures(
    api: &Api,
    order: &Order,
    hosts: &NodeSet,
    snap: &crate::daemon::Snapshot,
    deadline_ms: u64,
) {
    let Task::Vm(VmTask {
        op: VmOp::Stop { names, all, .. },
    }) = &order.task
    else {
        return;
    };
    let why = format!("vm stop by {}, action {}", order.who, order.id);
    let mut departures = lock(&api.root.departures);
    for host in hosts.iter() {
        let prefix = vm_node_name(host, "");
        for n in &snap.nodes {
            let stopped = match n.name.strip_prefix(&prefix) {
                Some(guest) => *all || names.iter().any(|g| g == guest),
                None => false,
            };
            if stopped {
                departures.plan(&n.name, why.clone(), deadline_ms);
            }
        }
    }
}

/// Seals an order with the root's key (the cluster CA's).
fn seal(api: &Api, order: &Order) -> Result<banyan_protocol::seal::Sealed, ApiError> {
    api.signer.seal(Purpose::Order, order).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot sign",
            e.to_string(),
        )
    })
}

fn err_detail(e: &ApiError) -> String {
    e.detail().to_string()
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

/// `GET /actions`: the most recent actions first.
async fn list_actions(
    State(api): State<Api>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(crate::http::bad_query)?;
    let list = lock(&api.root.actions).list(q.limit.unwrap_or(100).min(crate::actions::KEEP));
    Ok(Json(json!(list)))
}

#[derive(Deserialize)]
struct WaitQuery {
    wait_ms: Option<u64>,
    since: Option<u64>,
}

fn check_id(id: &str) -> Result<(), ApiError> {
    banyan_protocol::action::validate_order_id(id)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad action id", e))
}

fn unknown_action(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown action",
        format!("no action {id}; `banyan actions` lists the recent ones"),
    )
}

/// `GET /actions/ID[?wait_ms=N&since=V]`: one action; with `wait_ms`, answers as soon as its
/// version passes `since` (long polling), or after `wait_ms` with what it is then.
async fn get_action(
    State(api): State<Api>,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ActionRecord>, ApiError> {
    check_id(&id)?;
    let Query(q) = q.map_err(crate::http::bad_query)?;
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_WAIT_MS));
    let deadline = tokio::time::Instant::now() + wait;
    let mut changes = lock(&api.root.actions).subscribe();
    loop {
        changes.mark_unchanged();
        let record = lock(&api.root.actions)
            .get(&id)
            .cloned()
            .ok_or_else(|| unknown_action(&id))?;
        let moved = q.since.is_none_or(|since| record.version > since);
        if moved || record.state != ActionState::Running || wait.is_zero() {
            return Ok(Json(record));
        }
        if tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_err()
        {
            return Ok(Json(record));
        }
    }
}

/// `DELETE /actions/ID`: tells the action's pending targets to stop it (signed, as any order).
async fn cancel_action(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_id(&id)?;
    let principal = authenticate(&api, &headers, &peer, "action.cancel")?;
    let now = now_ms();
    let record = lock(&api.root.actions)
        .get(&id)
        .cloned()
        .ok_or_else(|| unknown_action(&id))?;
    // Whoever may start an action on these nodes may stop it.
    let targets = NodeSet::parse(&record.nodes).unwrap_or_default();
    let scope = if principal.role == Role::Admin || principal.name == record.who {
        Ok(())
    } else {
        let groups = lock(&api.groups);
        principal.scope_check(&targets, &|g: &str| groups.group(g))
    };
    if let Err(e) = scope {
        audit(
            &api,
            AuditEvent::new(now, principal.name.clone(), peer, "action.cancel.refused")
                .action(id.clone())
                .reason(e.to_string()),
        )?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "refused",
            e.to_string(),
        ));
    }
    if record.state != ActionState::Running {
        return Ok(Json(json!({"id": id, "state": record.state})));
    }
    let pending = lock(&api.root.actions)
        .request_cancel(&id)
        .unwrap_or_default();
    audit(
        &api,
        AuditEvent::new(now, principal.name.clone(), peer, "action.cancel")
            .action(id.clone())
            .targets(&NodeSet::from_names(pending.iter().map(String::as_str))),
    )?;
    if !pending.is_empty() {
        let order = Order {
            id: format!("{:016x}", rand::random::<u64>()),
            issued_ms: now,
            expires_ms: now + DELIVERY_WINDOW_MS,
            timeout_ms: 5_000,
            for_real: true,
            who: principal.name.clone(),
            targets: NodeSet::from_names(pending.iter().map(String::as_str)).fold(),
            task: Task::Cancel { id: id.clone() },
        };
        let sealed = seal(&api, &order)?;
        let root = api.root.clone();
        // The targets' answers to the cancel order itself tell nothing the action's own answers
        // will not: nobody waits for them.
        tokio::spawn(async move {
            root.command(pending, banyan_protocol::wire::CommandBody::Action(sealed))
                .await;
        });
    }
    tracing::info!(action = %id, who = %principal.name, "action cancel requested");
    Ok(Json(json!({"id": id, "state": "cancelling"})))
}

#[derive(Deserialize)]
struct AuditQuery {
    since_ms: Option<u64>,
    who: Option<String>,
    limit: Option<usize>,
}

/// `GET /audit`: the audit log's lines (any valid token).
async fn audit_read(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&api, &headers, &peer, "audit.read")?;
    let Query(q) = q.map_err(crate::http::bad_query)?;
    let filter = AuditFilter {
        since_ms: q.since_ms,
        who: q.who,
        limit: Some(q.limit.unwrap_or(1000).min(100_000)),
    };
    let lines = lock(&api.root.audit).read(&filter).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot read the audit log",
            e.to_string(),
        )
    })?;
    Ok(Json(json!(lines)))
}

/// `GET /audit/verify`: checks the whole chain.
async fn audit_verify(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    authenticate(&api, &headers, &peer, "audit.verify")?;
    let answer = match lock(&api.root.audit).verify() {
        Ok(r) => {
            json!({"ok": true, "lines": r.lines, "last_hash": r.last_hash, "error": null, "line": null})
        }
        Err(e) => json!({"ok": false, "lines": null, "error": e.what, "line": e.line}),
    };
    Ok(Json(answer))
}

#[derive(Deserialize)]
struct TokenRequest {
    name: String,
    role: Role,
    #[serde(default)]
    groups: Vec<String>,
    expires_in_ms: Option<u64>,
}

/// `POST /tokens` (admin): a new token, shown once.
async fn token_create(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    body: Result<Json<TokenRequest>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let p = require_admin(&api, &headers, &peer, "token.create")?;
    let Json(req) = body.map_err(|e| {
        bad_body(
            e,
            r#"{"name": "ops", "role": "operator", "groups": ["rack1"], "expires_in_ms": null}"#,
        )
    })?;
    let now = now_ms();
    let args = json!({"name": req.name, "role": req.role, "groups": req.groups, "expires_in_ms": req.expires_in_ms});
    // Audited before the token exists: a token the log does not know of must never work.
    audit(
        &api,
        AuditEvent::new(now, p.name.clone(), peer.clone(), "token.create").args(args.clone()),
    )?;
    let made = lock(&api.tokens).create(
        &req.name,
        req.role,
        &req.groups,
        req.expires_in_ms.map(Duration::from_millis),
        now,
    );
    match made {
        Ok(token) => Ok(Json(json!({"name": req.name, "token": token}))),
        Err(e) => {
            audit(
                &api,
                AuditEvent::new(now, p.name.clone(), peer, "token.create.refused")
                    .args(args)
                    .reason(e.to_string()),
            )?;
            Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "cannot create the token",
                e.to_string(),
            ))
        }
    }
}

/// `GET /tokens` (admin): every token, without secrets.
async fn token_list(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&api, &headers, &peer, "token.list")?;
    Ok(Json(json!(lock(&api.tokens).list())))
}

/// `DELETE /tokens/NAME` (admin): revoked at once.
async fn token_revoke(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = require_admin(&api, &headers, &peer, "token.revoke")?;
    let now = now_ms();
    let args = json!({"name": name});
    audit(
        &api,
        AuditEvent::new(now, p.name.clone(), peer.clone(), "token.revoke").args(args.clone()),
    )?;
    let done = lock(&api.tokens).revoke(&name, now);
    match done {
        Ok(info) => Ok(Json(json!(info))),
        Err(e) => {
            audit(
                &api,
                AuditEvent::new(now, p.name.clone(), peer, "token.revoke.refused")
                    .args(args)
                    .reason(e.to_string()),
            )?;
            let status = if matches!(e, crate::tokens::TokenError::NotFound(_)) {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            Err(ApiError::new(
                status,
                "cannot revoke the token",
                e.to_string(),
            ))
        }
    }
}

/// `GET /groups`: every group with its folded node set.
async fn groups_list(State(api): State<Api>) -> Json<Value> {
    let groups = fresh_groups(&api);
    let default = groups.default_source().map(str::to_string);
    let list: Vec<Value> = groups
        .list()
        .into_iter()
        .map(|(source, group, nodes)| {
            let is_default = default.as_deref() == Some(source.as_str());
            json!({"source": source, "group": group, "default": is_default, "nodes": nodes.fold(), "count": nodes.len()})
        })
        .collect();
    Json(json!(list))
}

#[derive(Deserialize)]
struct NodesetQuery {
    expr: String,
}

/// `GET /nodeset?expr=EXPR`: an expression resolved with the root's groups.
async fn nodeset(
    State(api): State<Api>,
    q: Result<Query<NodesetQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(crate::http::bad_query)?;
    // A set may hold a million names (the parser's limit): expanding and folding it takes a
    // fraction of a second, off the threads that serve everyone else.
    let answer = tokio::task::spawn_blocking(move || {
        let set = resolve(&api, &q.expr)?;
        Ok::<_, String>(json!({
            "nodes": set.iter().collect::<Vec<_>>(),
            "folded": set.fold(),
            "count": set.len(),
        }))
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "node set not resolved",
            e.to_string(),
        )
    })?
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid node set", e))?;
    Ok(Json(answer))
}

/// `DELETE /nodes/NAME` (admin): forgets the node's certificate; the name may enrol again and
/// the old certificate no longer joins.
async fn node_forget(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let p = require_admin(&api, &headers, &peer, "node.forget")?;
    banyan_protocol::identity::validate_node_name(&name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid node name", e.to_string()))?;
    audit(
        &api,
        AuditEvent::new(now_ms(), p.name.clone(), peer, "node.forget").args(json!({"name": name})),
    )?;
    let known = lock(&api.root.registry).forget(&name).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot forget",
            e.to_string(),
        )
    })?;
    if !known {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown node",
            format!("the root holds no certificate for {name}"),
        ));
    }
    Ok(Json(json!({"name": name, "forgotten": true})))
}

//! A guest's serial console through the tree: the backend of `GET /console/HOST:NAME`
//! (`banyan vm console HOST:NAME`) behind the sessions of [`crate::console`].
//!
//! Opening a session is one operator action: a `vm` console order ([`VmOp::Console`]) sealed
//! for HOST, audited (`action.request`, then `action.outcome` when it ends) and booked like any
//! other, so `banyan actions` lists it. HOST's agent connects to the guest's serial socket and
//! sends what the guest prints up as sealed chunks ([`ConsoleOutput`]); the daemon checks each
//! against HOST's certificate and hands it here ([`Consoles::guest_output`]), in order, once.
//! Keys go down as [`ConsoleInput`] sealed with the CA's key, one command at a time (each waits
//! for HOST's answer, so keys arrive in order), numbered so that HOST takes each once; when
//! nobody types, a keep-alive goes every [`CONSOLE_KEEPALIVE_MS`], and HOST ends the session
//! itself when they stop. The last client leaving closes it. The order's receipt (the guest
//! stopped, the time is up, closed) ends the session for its clients with HOST's reason.
//!
//! A client gets its 101 only once HOST has opened the session, so a guest that does not exist
//! is one clear HTTP error (404), not a stream that ends at once.

use crate::actions::{ActionRecord, ActionState, TargetPhase, TargetState};
use crate::audit::AuditEvent;
use crate::console::{lock_std, switch, upgrading, Backend, Consoles, Session, PROTOCOL};
use crate::daemon::lock;
use crate::http::{Api, ApiError};
use crate::http_actions::{audit, now_ms, ANSWER_MARGIN_MS, DELIVERY_WINDOW_MS, MAX_TIMEOUT_MS};
use crate::tokens::Principal;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use banyan_protocol::action::{validate_vm_name, NodeResult, Order, Task, VmOp, VmTask};
use banyan_protocol::console::{
    ConsoleInput, ConsoleOutput, CONSOLE_KEEPALIVE_MS, DEFAULT_CONSOLE_SESSION_MS,
    MAX_CONSOLE_INPUT,
};
use banyan_protocol::nodeset::NodeSet;
use banyan_protocol::seal::Purpose;
use banyan_protocol::wire::{Answer, CommandBody};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{info, warn};

/// How long a client waits for HOST to open the session (the order's way down, the guest's
/// socket) before it is told the console could not be opened.
const OPEN_WAIT: Duration = Duration::from_secs(20);

/// The guests' sessions by the id of their order, for the daemon's answers.
#[derive(Default)]
pub struct GuestOrders {
    by_order: Mutex<HashMap<String, GuestOrder>>,
}

struct GuestOrder {
    session: Arc<Session>,
    /// The next output chunk expected (taken once, in order).
    next: u64,
}

impl Consoles {
    /// A chunk HOST signed for a guest's console order (the daemon checked the seal and that it
    /// is HOST's, for this order).
    pub fn guest_output(&self, order: &str, out: ConsoleOutput) {
        let mut orders = lock_std(&self.guests.by_order);
        let Some(g) = orders.get_mut(order) else {
            return;
        };
        if out.seq < g.next {
            return;
        }
        g.next = out.seq + 1;
        // The first chunk, empty or not, says HOST opened the session.
        g.session.opened.send_if_modified(|o| {
            if o.is_none() {
                *o = Some(Ok(()));
                true
            } else {
                false
            }
        });
        if out.skipped > 0 {
            let note = format!(
                "\r\n[banyan: {} bytes of output skipped: the way up was too slow]\r\n",
                out.skipped
            );
            let _ = g.session.output.send(Arc::from(note.as_bytes()));
        }
        if !out.bytes.is_empty() {
            let _ = g.session.output.send(Arc::from(out.bytes));
        }
    }

    /// A guest's console order is over (its receipt came, or its host never answered): its
    /// clients are told why.
    pub fn guest_ended(&self, order: &str, why: &str) {
        let Some(g) = lock_std(&self.guests.by_order).remove(order) else {
            return;
        };
        info!(console = %g.session.label, order, reason = why, "guest console session ended");
        self.ended(&g.session, why);
    }
}

/// How a receipt's result reads to the console's clients.
pub fn describe(result: &Result<NodeResult, String>) -> String {
    match result {
        Ok(r) => r.summary.clone(),
        Err(e) => e.clone(),
    }
}

/// `GET /console/HOST:NAME`, after authentication: see the module doc.
#[allow(clippy::too_many_arguments)]
pub async fn attach(
    api: Api,
    principal: Principal,
    peer: String,
    host: String,
    guest: String,
    read_only: bool,
    headers: HeaderMap,
    req: Request,
) -> Result<Response, ApiError> {
    let now = now_ms();
    let label = format!("{host}:{guest}");
    let refuse = |status: StatusCode, error: &str, detail: String| {
        let event = AuditEvent::new(now, principal.name.clone(), peer.clone(), "console.refused")
            .args(json!({"node": host, "guest": guest}))
            .reason(detail.clone());
        match audit(&api, event) {
            Ok(()) => ApiError::new(status, error, detail),
            Err(e) => e,
        }
    };
    banyan_protocol::identity::validate_node_name(&host)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad node", e.to_string()))?;
    validate_vm_name(&guest).map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad guest", e))?;
    let targets = NodeSet::from_names([host.as_str()]);
    let scope = {
        let groups = lock(&api.groups);
        principal.scope_check(&targets, &|g: &str| groups.group(g))
    };
    scope.map_err(|e| refuse(StatusCode::FORBIDDEN, "refused", e.to_string()))?;
    if !upgrading(&headers) {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "console stream",
            format!("a console is a byte stream: ask with `Upgrade: {PROTOCOL}` (`banyan vm console {label}` does)"),
        ));
    }
    let snap = crate::http::snapshot_of(&api).await?;
    let live = snap
        .nodes
        .iter()
        .find(|n| n.name == host)
        .map(|n| n.status.is_live());
    match live {
        None => {
            return Err(refuse(
                StatusCode::NOT_FOUND,
                "no such node",
                format!("{host} is not in this cluster (banyan nodes lists them)"),
            ))
        }
        Some(false) => {
            return Err(refuse(
                StatusCode::BAD_GATEWAY,
                "node down",
                format!("{host} is not in the tree now: its guests' consoles cannot be reached"),
            ))
        }
        Some(true) => {}
    }
    audit(
        &api,
        AuditEvent::new(now, principal.name.clone(), peer.clone(), "console.request")
            .targets(&targets)
            .args(json!({"node": host, "guest": guest, "read_only": read_only})),
    )?;
    let consoles = api.root.consoles.clone();
    let session = match consoles.join(&label) {
        Some(s) => s,
        None => open(&api, &consoles, &principal, &peer, &host, &guest)?,
    };
    // Wait until HOST has opened it (or said why not).
    let mut opened = session.opened.subscribe();
    let outcome = tokio::time::timeout(OPEN_WAIT, opened.wait_for(Option::is_some)).await;
    let outcome = match outcome {
        Ok(Ok(o)) => o.clone().unwrap_or(Ok(())),
        Ok(Err(_)) => Err("the session went away".to_string()),
        Err(_) => Err(format!(
            "{host} did not open the console within {} s",
            OPEN_WAIT.as_secs()
        )),
    };
    if let Err(why) = outcome {
        consoles.leave(&session);
        let status = if why.contains("no guest named") {
            StatusCode::NOT_FOUND
        } else {
            StatusCode::BAD_GATEWAY
        };
        return Err(refuse(
            status,
            "console unavailable",
            format!("console of {label}: {why}"),
        ));
    }
    Ok(switch(
        api.clone(),
        consoles,
        session,
        principal.name,
        peer,
        read_only,
        req,
    ))
}

/// Opens a new session: audits, seals, books and sends the console order, and starts the pump
/// of keys. Another client's session opened meanwhile is joined instead.
fn open(
    api: &Api,
    consoles: &Arc<Consoles>,
    principal: &Principal,
    peer: &str,
    host: &str,
    guest: &str,
) -> Result<Arc<Session>, ApiError> {
    let now = now_ms();
    let label = format!("{host}:{guest}");
    let id = format!("{:016x}", rand::random::<u64>());
    let session_ms = DEFAULT_CONSOLE_SESSION_MS.min(MAX_TIMEOUT_MS);
    let task = Task::Vm(VmTask {
        op: VmOp::Console {
            name: guest.to_string(),
            session_ms,
        },
    });
    let order = Order {
        id: id.clone(),
        issued_ms: now,
        expires_ms: now + DELIVERY_WINDOW_MS,
        timeout_ms: session_ms,
        for_real: true,
        who: principal.name.clone(),
        targets: host.to_string(),
        task: task.clone(),
    };
    let sealed = api.signer.seal(Purpose::Order, &order).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "cannot sign",
            e.to_string(),
        )
    })?;
    let (input, typed) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let session = match consoles.add(host, &label, input, Backend::Guest(stop), None) {
        Ok(s) => s,
        Err(theirs) => return Ok(theirs),
    };
    let targets = NodeSet::from_names([host]);
    let args = json!({"kind": "vm", "nodes": host, "task": task, "timeout_ms": session_ms});
    // The audit line is on disk before the order leaves the root.
    if let Err(e) = audit(
        api,
        AuditEvent::new(now, principal.name.clone(), peer, "action.request")
            .action(id.clone())
            .for_real(true)
            .targets(&targets)
            .args(args),
    ) {
        consoles.ended(&session, "the audit log is unusable");
        return Err(e);
    }
    let deadline_ms = now + session_ms + DELIVERY_WINDOW_MS + ANSWER_MARGIN_MS;
    lock(&api.root.actions).start(ActionRecord {
        id: id.clone(),
        kind: "vm".into(),
        who: principal.name.clone(),
        peer: peer.to_string(),
        task,
        nodes: host.to_string(),
        for_real: true,
        state: ActionState::Running,
        version: 0,
        started_ms: now,
        ended_ms: None,
        deadline_ms,
        cancel_requested: false,
        targets: BTreeMap::from([(
            host.to_string(),
            TargetState {
                state: TargetPhase::Pending,
                result: None,
                error: None,
                refused: Vec::new(),
                live: None,
            },
        )]),
    });
    lock_std(&consoles.guests.by_order).insert(
        id.clone(),
        GuestOrder {
            session: session.clone(),
            next: 0,
        },
    );
    if !api
        .root
        .start_action(id.clone(), vec![host.to_string()], sealed, deadline_ms)
    {
        consoles.guest_ended(&id, "the root is stopping");
        return Err(crate::http::core_stopped());
    }
    info!(action = %id, who = %principal.name, console = %label, "guest console order sent");
    tokio::spawn(pump(api.clone(), id, host.to_string(), typed, stopped));
    Ok(session)
}

/// Sends the writer's keys to HOST, in order, a keep-alive when nobody types, and the close
/// when the last client leaves.
async fn pump(
    api: Api,
    order: String,
    host: String,
    mut typed: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut seq = 0u64;
    let keepalive = Duration::from_millis(CONSOLE_KEEPALIVE_MS);
    loop {
        let (mut bytes, close) = tokio::select! {
            got = typed.recv() => match got {
                Some(b) => (b, false),
                None => (Vec::new(), true),
            },
            _ = stop.wait_for(|s| *s) => (Vec::new(), true),
            _ = tokio::time::sleep(keepalive) => (Vec::new(), false),
        };
        // What was typed while the last message was on its way goes in this one.
        while bytes.len() < MAX_CONSOLE_INPUT {
            match typed.try_recv() {
                Ok(more) => bytes.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let mut parts: Vec<Vec<u8>> = bytes
            .chunks(MAX_CONSOLE_INPUT)
            .map(<[u8]>::to_vec)
            .collect();
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        let last = parts.len() - 1;
        for (i, part) in parts.into_iter().enumerate() {
            seq += 1;
            let input = ConsoleInput {
                order: order.clone(),
                node: host.clone(),
                seq,
                bytes: part,
                close: close && i == last,
            };
            if let Err(why) = send(&api, &host, &input).await {
                warn!(action = %order, node = %host, seq, error = %why, "console input not taken");
            }
        }
        if close {
            return;
        }
    }
}

async fn send(api: &Api, host: &str, input: &ConsoleInput) -> Result<(), String> {
    let sealed = api
        .signer
        .seal(Purpose::ConsoleInput, input)
        .map_err(|e| format!("cannot sign: {e}"))?;
    let report = api
        .root
        .command(vec![host.to_string()], CommandBody::ConsoleInput(sealed))
        .await
        .ok_or("the root is stopping")?;
    match report.answers.get(host) {
        Some((Ok(Answer::Done), _)) => Ok(()),
        Some((Ok(other), _)) => Err(format!("unexpected answer {other:?}")),
        Some((Err(e), _)) => Err(e.clone()),
        None => Err(format!("{host} did not answer")),
    }
}

//! Nodes' serial consoles for `banyan console NODE`: `GET /console/NODE` with `Upgrade:
//! banyan-console` turns the HTTP connection into the console's raw byte stream, both ways.
//!
//! One SOL session per node ([`banyan_agent::bmc::sol`]) however many operators watch it: the
//! first to attach (without `?read_only=1`) is the *writer*, whose keys reach the node; the others
//! see the same output and their keys are refused with a notice, as conman does. When the writer
//! leaves, the next to attach may write. When the last one leaves, the SOL session is closed at
//! the BMC. The escape (`&.` at the start of a line) is the client's: the root sees it leave.
//!
//! The action path's rules hold: a token whose scope covers the node (a viewer may not attach),
//! and the audit log has `console.start` and `console.end` (who, node, writer or reader, how long,
//! bytes typed) for every client, `console.request` before a session is opened or joined, and
//! `console.refused` for refusals. What is not here: consoles
//! behind a BMC gateway and Redfish serial consoles (refused with that reason).

use crate::audit::AuditEvent;
use crate::daemon::lock;
use crate::http::{Api, ApiError};
use crate::http_actions::Peer;
use crate::http_actions::{audit, authenticate, now_ms};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use banyan_agent::bmc::sol::Sol;
use banyan_protocol::nodeset::NodeSet;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;
use tracing::{info, warn};

/// The `Upgrade` protocol name of a console stream.
pub const PROTOCOL: &str = "banyan-console";
/// Output chunks a slow client may fall behind by before it misses some (it is told).
const BACKLOG: usize = 1024;

/// The consoles open now, by node.
#[derive(Default)]
pub struct Consoles {
    sessions: Mutex<HashMap<String, Arc<Session>>>,
}

struct Session {
    node: String,
    output: broadcast::Sender<Arc<[u8]>>,
    input: std::sync::mpsc::Sender<Vec<u8>>,
    /// The writer's name and client number.
    writer: Mutex<Option<(String, u64)>>,
    clients: Mutex<usize>,
    sol: Mutex<Option<Sol>>,
    /// Set when the SOL client's output ended: a new client opens a new session.
    ended: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Deserialize)]
pub struct ConsoleQuery {
    #[serde(default)]
    read_only: Option<String>,
}

/// `GET /console/NODE`: see the module doc.
pub async fn attach(
    State(api): State<Api>,
    Peer(peer): Peer,
    Path(node): Path<String>,
    Query(q): Query<ConsoleQuery>,
    headers: HeaderMap,
    mut req: Request,
) -> Result<Response, ApiError> {
    let principal = authenticate(&api, &headers, &peer, "console")?;
    let now = now_ms();
    let refuse = |status: StatusCode, error: &str, detail: String| {
        let event = AuditEvent::new(now, principal.name.clone(), peer.clone(), "console.refused")
            .args(json!({"node": node}))
            .reason(detail.clone());
        match audit(&api, event) {
            Ok(()) => ApiError::new(status, error, detail),
            Err(e) => e,
        }
    };
    banyan_protocol::identity::validate_node_name(&node)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad node", e.to_string()))?;
    let targets = NodeSet::from_names([node.as_str()]);
    let scope = {
        let groups = lock(&api.groups);
        principal.scope_check(&targets, &|g: &str| groups.group(g))
    };
    scope.map_err(|e| refuse(StatusCode::FORBIDDEN, "refused", e.to_string()))?;
    let upgrading = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL));
    if !upgrading {
        return Err(ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "console stream",
            format!("a console is a byte stream: ask with `Upgrade: {PROTOCOL}` (`banyan console {node}` does)"),
        ));
    }
    let config = crate::bmcconf::BmcConfig::load(&api.state_dir)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad BMC config", e.to_string()))?;
    let target = config
        .resolve(&node)
        .map_err(|e| refuse(StatusCode::NOT_FOUND, "no BMC", e.to_string()))?;
    if let Some(g) = &target.gateway {
        return Err(refuse(
            StatusCode::NOT_IMPLEMENTED,
            "not carried out yet",
            format!("{node}'s BMC is reached through the gateway {g}: consoles through a gateway are not carried out yet"),
        ));
    }
    let read_only = q.read_only.is_some_and(|v| v != "0" && v != "false");
    // Audit first: opening a SOL session is an act on the BMC (it ends anyone else's session there).
    audit(
        &api,
        AuditEvent::new(now, principal.name.clone(), peer.clone(), "console.request")
            .targets(&targets)
            .args(json!({"node": node, "read_only": read_only})),
    )?;
    let consoles = api.root.consoles.clone();
    let session = consoles
        .session(&node, target.endpoint)
        .await
        .map_err(|e| refuse(StatusCode::BAD_GATEWAY, "console unavailable", e))?;
    let upgrade = hyper::upgrade::on(&mut req);
    let who = principal.name.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(io) => {
                serve(
                    &api,
                    &consoles,
                    session,
                    TokioIo::new(io),
                    who,
                    peer,
                    read_only,
                )
                .await
            }
            Err(e) => {
                warn!(node = %session.node, error = %e, "console upgrade failed");
                consoles.leave(&session);
            }
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    Ok(resp)
}

impl Consoles {
    /// The node's session, opened if none is (a client counted in either way).
    async fn session(
        &self,
        node: &str,
        endpoint: banyan_agent::bmc::Endpoint,
    ) -> Result<Arc<Session>, String> {
        {
            let sessions = lock_std(&self.sessions);
            if let Some(s) = sessions.get(node).filter(|s| !s.is_over()) {
                *lock_std(&s.clients) += 1;
                return Ok(s.clone());
            }
        }
        let sol = tokio::task::spawn_blocking(move || Sol::open(&endpoint, "ipmitool".as_ref()))
            .await
            .map_err(|e| format!("opening the console: {e}"))??;
        let mut reader = sol.reader().map_err(|e| e.to_string())?;
        let mut writer = sol.writer().map_err(|e| e.to_string())?;
        let (output, _) = broadcast::channel(BACKLOG);
        let (input, typed) = std::sync::mpsc::channel::<Vec<u8>>();
        let out = output.clone();
        let name = node.to_string();
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let over = ended.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let _ = out.send(Arc::from(&buf[..n]));
                    }
                }
            }
            // An empty chunk: the session is over.
            over.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = out.send(Arc::from(&[][..]));
            tracing::debug!(node = %name, "console output ended");
        });
        std::thread::spawn(move || {
            while let Ok(bytes) = typed.recv() {
                if writer.write_all(&bytes).is_err() {
                    break;
                }
            }
        });
        let session = Arc::new(Session {
            node: node.to_string(),
            output,
            input,
            writer: Mutex::new(None),
            clients: Mutex::new(1),
            sol: Mutex::new(Some(sol)),
            ended,
        });
        let mut sessions = lock_std(&self.sessions);
        if let Some(s) = sessions.get(node).filter(|s| !s.is_over()) {
            // Another client opened it meanwhile: use that one, close ours.
            *lock_std(&s.clients) += 1;
            let theirs = s.clone();
            drop(sessions);
            close(&session);
            return Ok(theirs);
        }
        sessions.insert(node.to_string(), session.clone());
        info!(node = %node, "console session opened");
        Ok(session)
    }

    /// A client left; the last one closes the session.
    fn leave(&self, session: &Arc<Session>) {
        let mut sessions = lock_std(&self.sessions);
        let mut clients = lock_std(&session.clients);
        *clients = clients.saturating_sub(1);
        if *clients == 0 {
            if sessions
                .get(&session.node)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.node);
            }
            drop(clients);
            drop(sessions);
            info!(node = %session.node, "console session closed");
            close(session);
        }
    }
}

impl Session {
    fn is_over(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn close(session: &Arc<Session>) {
    if let Some(sol) = lock_std(&session.sol).take() {
        std::thread::spawn(move || sol.close());
    }
}

fn lock_std<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One client, from attach to leave.
async fn serve<S>(
    api: &Api,
    consoles: &Consoles,
    session: Arc<Session>,
    io: S,
    who: String,
    peer: String,
    read_only: bool,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let client = rand::random::<u64>();
    let started = now_ms();
    let writing = !read_only && {
        let mut w = lock_std(&session.writer);
        if w.is_none() {
            *w = Some((who.clone(), client));
            true
        } else {
            false
        }
    };
    let role = if writing { "writer" } else { "reader" };
    let node = session.node.clone();
    let event = AuditEvent::new(started, who.clone(), peer.clone(), "console.start")
        .targets(&NodeSet::from_names([node.as_str()]))
        .args(json!({"node": node, "role": role}));
    if let Err(e) = audit(api, event) {
        warn!(node = %node, error = %e.detail(), "cannot audit a console start");
    }
    info!(node = %node, who = %who, role, "console client attached");
    let holder = || {
        lock_std(&session.writer)
            .as_ref()
            .map_or_else(|| "nobody".to_string(), |(w, _)| w.clone())
    };
    let banner = if writing {
        format!("[banyan: console of {node}: you may type; &. at the start of a line leaves]\r\n")
    } else {
        format!(
            "[banyan: console of {node}, read-only: {} is typing; &. leaves]\r\n",
            holder()
        )
    };
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut output = session.output.subscribe();
    let mut typed: u64 = 0;
    let mut buf = vec![0u8; 4096];
    let mut ok = wr.write_all(banner.as_bytes()).await.is_ok();
    if session.is_over() {
        // Ended before this client subscribed: it would wait for output that never comes.
        let _ = wr
            .write_all(b"[banyan: the console session ended]\r\n")
            .await;
        ok = false;
    }
    while ok {
        tokio::select! {
            chunk = output.recv() => match chunk {
                Ok(c) if c.is_empty() => {
                    let _ = wr.write_all(b"\r\n[banyan: the console session ended]\r\n").await;
                    break;
                }
                Ok(c) => ok = wr.write_all(&c).await.is_ok(),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = format!("\r\n[banyan: {n} chunks of output skipped: this client was too slow]\r\n");
                    ok = wr.write_all(note.as_bytes()).await.is_ok();
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            n = rd.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) if writing => {
                    typed += n as u64;
                    ok = session.input.send(buf[..n].to_vec()).is_ok();
                }
                Ok(_) => {
                    let note = format!("\r\n[banyan: read-only: {} is typing on {node}]\r\n", holder());
                    ok = wr.write_all(note.as_bytes()).await.is_ok();
                }
            },
        }
    }
    if writing {
        let mut w = lock_std(&session.writer);
        if w.as_ref().is_some_and(|(_, c)| *c == client) {
            *w = None;
        }
    }
    consoles.leave(&session);
    let ended = now_ms();
    let event = AuditEvent::new(ended, who.clone(), peer, "console.end")
        .targets(&NodeSet::from_names([node.as_str()]))
        .args(json!({"node": node, "role": role, "duration_ms": ended.saturating_sub(started), "typed_bytes": typed}));
    if let Err(e) = audit(api, event) {
        warn!(node = %node, error = %e.detail(), "cannot audit a console end");
    }
    info!(node = %node, who = %who, role, typed, "console client left");
}

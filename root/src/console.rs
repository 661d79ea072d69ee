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
//! `console.refused` for refusals.
//!
//! A guest's console (`GET /console/HOST:NAME`, `banyan vm console`) has the same rules with
//! another backend ([`crate::guest_console`]): one sealed `vm` console order to HOST, whose
//! output comes up the tree, and keys sent down as sealed input. What is not here: consoles
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
    /// Guests' sessions by the id of their console order.
    pub(crate) guests: crate::guest_console::GuestOrders,
}

pub(crate) struct Session {
    /// The node the console is on (a guest's host): the scope and the audit's target.
    pub(crate) node: String,
    /// What clients are told and sessions are kept by: the node, or `HOST:NAME` for a guest.
    pub(crate) label: String,
    pub(crate) output: broadcast::Sender<Arc<[u8]>>,
    pub(crate) input: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    /// The writer's name and client number.
    writer: Mutex<Option<(String, u64)>>,
    clients: Mutex<usize>,
    backend: Mutex<Option<Backend>>,
    /// Set when the console's output ended: a new client opens a new session.
    pub(crate) ended: Arc<std::sync::atomic::AtomicBool>,
    /// `None` while a guest's session is being opened, then whether it opened (the error says
    /// why not, for the clients waiting).
    pub(crate) opened: tokio::sync::watch::Sender<Option<Result<(), String>>>,
}

/// What carries a session's bytes, closed when its last client leaves.
pub(crate) enum Backend {
    Sol(Sol),
    /// A guest's console order: closing tells its input pump to close the session on the host.
    Guest(tokio::sync::watch::Sender<bool>),
}

#[derive(Deserialize)]
pub struct ConsoleQuery {
    #[serde(default)]
    read_only: Option<String>,
}

impl ConsoleQuery {
    fn read_only(&self) -> bool {
        self.read_only
            .as_ref()
            .is_some_and(|v| v != "0" && v != "false")
    }
}

/// Whether a request asks for the console's byte stream.
pub(crate) fn upgrading(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case(PROTOCOL))
}

/// `GET /console/NODE`: see the module doc.
pub async fn attach(
    State(api): State<Api>,
    Peer(peer): Peer,
    Path(node): Path<String>,
    Query(q): Query<ConsoleQuery>,
    headers: HeaderMap,
    req: Request,
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
    if let Some((host, guest)) = node.split_once(':') {
        // Node names have no ':': HOST:NAME is a guest's console.
        let (host, guest) = (host.to_string(), guest.to_string());
        return crate::guest_console::attach(
            api,
            principal,
            peer,
            host,
            guest,
            q.read_only(),
            headers,
            req,
        )
        .await;
    }
    banyan_protocol::identity::validate_node_name(&node)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, "bad node", e.to_string()))?;
    let targets = NodeSet::from_names([node.as_str()]);
    let scope = {
        let groups = lock(&api.groups);
        principal.scope_check(&targets, &|g: &str| groups.group(g))
    };
    scope.map_err(|e| refuse(StatusCode::FORBIDDEN, "refused", e.to_string()))?;
    if !upgrading(&headers) {
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
    let read_only = q.read_only();
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
    Ok(switch(
        api,
        consoles,
        session,
        principal.name,
        peer,
        read_only,
        req,
    ))
}

/// Answers 101 and serves the client on the upgraded connection.
pub(crate) fn switch(
    api: Api,
    consoles: Arc<Consoles>,
    session: Arc<Session>,
    who: String,
    peer: String,
    read_only: bool,
    mut req: Request,
) -> Response {
    let upgrade = hyper::upgrade::on(&mut req);
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
                warn!(console = %session.label, error = %e, "console upgrade failed");
                consoles.leave(&session);
            }
        }
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    resp.headers_mut()
        .insert(header::UPGRADE, HeaderValue::from_static(PROTOCOL));
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp
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
        let (input, mut typed) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
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
            while let Some(bytes) = typed.blocking_recv() {
                if writer.write_all(&bytes).is_err() {
                    break;
                }
            }
        });
        let session = Arc::new(Session {
            node: node.to_string(),
            label: node.to_string(),
            output,
            input,
            writer: Mutex::new(None),
            clients: Mutex::new(1),
            backend: Mutex::new(Some(Backend::Sol(sol))),
            ended,
            opened: tokio::sync::watch::Sender::new(Some(Ok(()))),
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

    /// The session kept under `label` that has not ended, joined (a client counted in).
    pub(crate) fn join(&self, label: &str) -> Option<Arc<Session>> {
        let sessions = lock_std(&self.sessions);
        let s = sessions.get(label).filter(|s| !s.is_over())?;
        *lock_std(&s.clients) += 1;
        Some(s.clone())
    }

    /// A new session with its first client, kept under its label unless another was kept
    /// meanwhile: then that one is joined and `Err` gives it back (the new one is not used).
    pub(crate) fn add(
        &self,
        node: &str,
        label: &str,
        input: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
        backend: Backend,
        opened: Option<Result<(), String>>,
    ) -> Result<Arc<Session>, Arc<Session>> {
        let mut sessions = lock_std(&self.sessions);
        if let Some(s) = sessions.get(label).filter(|s| !s.is_over()) {
            *lock_std(&s.clients) += 1;
            return Err(s.clone());
        }
        let (output, _) = broadcast::channel(BACKLOG);
        let session = Arc::new(Session {
            node: node.to_string(),
            label: label.to_string(),
            output,
            input,
            writer: Mutex::new(None),
            clients: Mutex::new(1),
            backend: Mutex::new(Some(backend)),
            ended: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            opened: tokio::sync::watch::Sender::new(opened),
        });
        sessions.insert(label.to_string(), session.clone());
        Ok(session)
    }

    /// A session's console ended by itself: clients are told `why`, and the next client opens
    /// a new session.
    pub(crate) fn ended(&self, session: &Arc<Session>, why: &str) {
        {
            let mut sessions = lock_std(&self.sessions);
            if sessions
                .get(&session.label)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.label);
            }
        }
        if !session
            .ended
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            let note = format!("\r\n[banyan: {why}]\r\n");
            let _ = session.output.send(Arc::from(note.as_bytes()));
            let _ = session.output.send(Arc::from(&[][..]));
        }
        session.opened.send_if_modified(|o| {
            if o.is_none() {
                *o = Some(Err(why.to_string()));
                true
            } else {
                false
            }
        });
        // The host's session is over; nothing to close there any more.
        lock_std(&session.backend).take();
    }

    /// A client left; the last one closes the session.
    pub(crate) fn leave(&self, session: &Arc<Session>) {
        let mut sessions = lock_std(&self.sessions);
        let mut clients = lock_std(&session.clients);
        *clients = clients.saturating_sub(1);
        if *clients == 0 {
            if sessions
                .get(&session.label)
                .is_some_and(|s| Arc::ptr_eq(s, session))
            {
                sessions.remove(&session.label);
            }
            drop(clients);
            drop(sessions);
            info!(console = %session.label, "console session closed");
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
    match lock_std(&session.backend).take() {
        Some(Backend::Sol(sol)) => {
            std::thread::spawn(move || sol.close());
        }
        Some(Backend::Guest(stop)) => {
            stop.send_replace(true);
        }
        None => {}
    }
}

pub(crate) fn lock_std<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    // What the clients see: the node, or HOST:NAME for a guest (then its name is audited too).
    let label = session.label.clone();
    let args = |mut v: serde_json::Value| {
        if let Some((_, guest)) = label.split_once(':') {
            v["guest"] = json!(guest);
        }
        v
    };
    let event = AuditEvent::new(started, who.clone(), peer.clone(), "console.start")
        .targets(&NodeSet::from_names([node.as_str()]))
        .args(args(json!({"node": node, "role": role})));
    if let Err(e) = audit(api, event) {
        warn!(console = %label, error = %e.detail(), "cannot audit a console start");
    }
    info!(console = %label, who = %who, role, "console client attached");
    let holder = || {
        lock_std(&session.writer)
            .as_ref()
            .map_or_else(|| "nobody".to_string(), |(w, _)| w.clone())
    };
    let banner = if writing {
        format!("[banyan: console of {label}: you may type; &. at the start of a line leaves]\r\n")
    } else {
        format!(
            "[banyan: console of {label}, read-only: {} is typing; &. leaves]\r\n",
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
                    let note = format!("\r\n[banyan: read-only: {} is typing on {label}]\r\n", holder());
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
        .args(args(json!({"node": node, "role": role, "duration_ms": ended.saturating_sub(started), "typed_bytes": typed})));
    if let Err(e) = audit(api, event) {
        warn!(console = %label, error = %e.detail(), "cannot audit a console end");
    }
    info!(console = %label, who = %who, role, typed, "console client left");
}

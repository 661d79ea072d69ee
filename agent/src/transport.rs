//! QUIC links of the mesh: endpoints, connections and framed streams.
//!
//! Shared by the agent and the root. Every stream opens with both sides sending the 8-byte
//! greeting; each side checks the other's, and a peer with another protocol version or no banyan
//! magic is closed with an application error code and a reason any version can read. After that,
//! each direction is a sequence of length-prefixed postcard frames ([`banyan_protocol::frame`]).

use banyan_protocol::frame::{self, FrameError, Greeting};
use banyan_protocol::identity::{self, ClientAuth, Identity};
use banyan_protocol::wire::{Attach, Msg, PROTOCOL_VERSION};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint, RecvStream, SendStream, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Application close codes, so the other side can say precisely why it was dropped.
pub mod close {
    /// Orderly end of a link.
    pub const DONE: u32 = 0;
    /// The peer speaks another protocol version, or no banyan at all.
    pub const PROTOCOL: u32 = 1;
    /// Authentication refused: wrong token, foreign CA, certificate for another name.
    pub const AUTH: u32 = 2;
    /// A malformed, oversized or unexpected message.
    pub const BAD_MESSAGE: u32 = 3;
    /// Refused for another reason (a full parent, a stale placement).
    pub const REFUSED: u32 = 4;
}

/// How long a peer that connected may take to greet and send its first message; a peer that stalls
/// is dropped rather than holding a connection forever.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection attempt may take before the peer counts as unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot reach {peer}: {detail}")]
    Unreachable { peer: String, detail: String },
    #[error("{peer} refused the connection: {reason}")]
    Refused {
        peer: String,
        code: u32,
        reason: String,
    },
    #[error("link to {peer} failed: {detail}")]
    Broken { peer: String, detail: String },
    #[error("{peer} sent a bad frame: {source}")]
    Frame {
        peer: String,
        #[source]
        source: FrameError,
    },
    #[error("TLS set-up failed: {0}")]
    Tls(String),
}

impl LinkError {
    /// Whether this is an authentication refusal (not worth retrying).
    pub fn is_auth_refusal(&self) -> bool {
        match self {
            LinkError::Refused { code, .. } => *code == close::AUTH,
            LinkError::Unreachable { detail, .. } | LinkError::Broken { detail, .. } => {
                // A TLS alert from the peer: the certificate chain or name did not verify.
                detail.contains("certificate") || detail.contains("crypto")
            }
            _ => false,
        }
    }
}

/// Which end of a connection a transport config is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// The end that accepts: a parent (or the root) serving its children.
    Server,
    Client,
}

fn transport(end: End) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    // The tree detects dead peers itself within 3 s; QUIC's own idle timeout is a backstop that
    // also frees connections of peers that vanished.
    t.max_idle_timeout(Some(VarInt::from_u32(10_000).into()));
    // The tree's own messages cross every link it uses more often than this (reports,
    // heartbeats: `tree::TreeConfig::heartbeat_ms`), so QUIC pings only a link the tree is
    // silent on (a join waiting for its place). Once a second, they were wake-ups of their own.
    t.keep_alive_interval(Some(Duration::from_secs(4)));
    if end == End::Server {
        // Asked to acknowledge its parent's messages (heartbeats, mostly) at once, a child does it
        // in the wake-up that received them instead of waking again 25 ms later (QUIC's default
        // delay) to send the acknowledgement.
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(VarInt::from_u32(0));
        t.ack_frequency_config(Some(ack));
    }
    Arc::new(t)
}

/// quinn on tokio, with timers that wake only when they are due.
///
/// quinn keeps one timer per connection and moves it at almost every packet, mostly later (the
/// idle and keep-alive deadlines follow the last packet). tokio moves a timer later lazily: it
/// stays in its old slot, wakes the thread there and is only then filed again. On a quiet link
/// that was a wake-up for nothing after every exchange; here a timer moved later is filed anew.
#[derive(Debug)]
struct ExactTimers;

impl quinn::Runtime for ExactTimers {
    fn new_timer(&self, at: std::time::Instant) -> std::pin::Pin<Box<dyn quinn::AsyncTimer>> {
        Box::pin(ExactTimer {
            at,
            sleep: Box::pin(tokio::time::sleep_until(at.into())),
        })
    }

    fn spawn(&self, future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
        tokio::spawn(future);
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn quinn::AsyncUdpSocket>> {
        quinn::TokioRuntime.wrap_udp_socket(socket)
    }
}

#[derive(Debug)]
struct ExactTimer {
    at: std::time::Instant,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl quinn::AsyncTimer for ExactTimer {
    fn reset(mut self: std::pin::Pin<&mut Self>, at: std::time::Instant) {
        if at > self.at {
            // A new entry, so that the old one leaves the wheel now (see `ExactTimers`).
            self.sleep = Box::pin(tokio::time::sleep_until(at.into()));
        } else {
            self.sleep.as_mut().reset(at.into());
        }
        self.at = at;
    }

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        std::future::Future::poll(self.sleep.as_mut(), cx)
    }
}

/// A mesh endpoint bound to `addr`, serving with `id` and connecting as `id`.
pub fn endpoint(
    addr: SocketAddr,
    id: &Identity,
    clients: ClientAuth,
) -> Result<Endpoint, LinkError> {
    let server = identity::server_config(id, clients).map_err(|e| LinkError::Tls(e.to_string()))?;
    let server =
        QuicServerConfig::try_from(Arc::new(server)).map_err(|e| LinkError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server));
    server.transport_config(transport(End::Server));
    let bound = std::net::UdpSocket::bind(addr).and_then(|socket| {
        Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(ExactTimers),
        )
    });
    let mut ep = bound.map_err(|e| LinkError::Unreachable {
        peer: addr.to_string(),
        detail: format!("cannot bind the mesh address: {e}"),
    })?;
    let client = identity::client_config(id).map_err(|e| LinkError::Tls(e.to_string()))?;
    ep.set_default_client_config(client_config(client)?);
    Ok(ep)
}

/// A client-only endpoint (for enrolment, or tools).
pub fn client_endpoint(config: rustls::ClientConfig) -> Result<Endpoint, LinkError> {
    let bind: SocketAddr = "0.0.0.0:0"
        .parse()
        .map_err(|e| LinkError::Tls(format!("{e}")))?;
    let mut ep = Endpoint::client(bind).map_err(|e| LinkError::Unreachable {
        peer: bind.to_string(),
        detail: e.to_string(),
    })?;
    ep.set_default_client_config(client_config(config)?);
    Ok(ep)
}

pub fn client_config(config: rustls::ClientConfig) -> Result<quinn::ClientConfig, LinkError> {
    let crypto =
        QuicClientConfig::try_from(Arc::new(config)).map_err(|e| LinkError::Tls(e.to_string()))?;
    let mut c = quinn::ClientConfig::new(Arc::new(crypto));
    c.transport_config(transport(End::Client));
    Ok(c)
}

/// Connects to `addr`, expecting its certificate to name `peer_name`.
pub async fn connect(
    ep: &Endpoint,
    addr: SocketAddr,
    peer_name: &str,
    config: Option<quinn::ClientConfig>,
) -> Result<Connection, LinkError> {
    let connecting = match config {
        Some(c) => ep.connect_with(c, addr, peer_name),
        None => ep.connect(addr, peer_name),
    }
    .map_err(|e| LinkError::Unreachable {
        peer: format!("{peer_name} at {addr}"),
        detail: e.to_string(),
    })?;
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => Err(LinkError::Unreachable {
            peer: format!("{peer_name} at {addr}"),
            detail: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
        }),
        Ok(Err(e)) => Err(conn_error(&format!("{peer_name} at {addr}"), e)),
        Ok(Ok(c)) => Ok(c),
    }
}

/// Turns a connection error into a sentence that names the peer.
pub fn conn_error(peer: &str, e: quinn::ConnectionError) -> LinkError {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => LinkError::Refused {
            peer: peer.to_string(),
            code: close.error_code.into_inner() as u32,
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        quinn::ConnectionError::TimedOut => LinkError::Unreachable {
            peer: peer.to_string(),
            detail: "timed out".into(),
        },
        other => LinkError::Broken {
            peer: peer.to_string(),
            detail: other.to_string(),
        },
    }
}

/// Closes a connection with a code and a reason the peer will print.
pub fn refuse(conn: &Connection, code: u32, reason: &str) {
    // QUIC carries the reason in the CONNECTION_CLOSE frame; keep it short enough to fit.
    let reason: String = reason.chars().take(400).collect();
    conn.close(VarInt::from_u32(code), reason.as_bytes());
}

/// One direction-pair stream with greetings exchanged.
pub struct Framed {
    pub send: SendStream,
    pub recv: RecvStream,
    pub peer: String,
}

impl Framed {
    /// Opens a stream on `conn` and exchanges greetings.
    pub async fn open(conn: &Connection, peer: &str) -> Result<Framed, LinkError> {
        let (send, recv) = conn.open_bi().await.map_err(|e| conn_error(peer, e))?;
        Framed::greeted(send, recv, peer).await
    }

    /// Accepts the next stream on `conn` and exchanges greetings.
    pub async fn accept(conn: &Connection, peer: &str) -> Result<Framed, LinkError> {
        let (send, recv) = conn.accept_bi().await.map_err(|e| conn_error(peer, e))?;
        Framed::greeted(send, recv, peer).await
    }

    async fn greeted(send: SendStream, recv: RecvStream, peer: &str) -> Result<Framed, LinkError> {
        let mut f = Framed {
            send,
            recv,
            peer: peer.to_string(),
        };
        f.greet().await?;
        Ok(f)
    }

    async fn greet(&mut self) -> Result<(), LinkError> {
        let ours = Greeting {
            version: PROTOCOL_VERSION,
        }
        .encode();
        self.send
            .write_all(&ours)
            .await
            .map_err(|e| LinkError::Broken {
                peer: self.peer.clone(),
                detail: e.to_string(),
            })?;
        let mut theirs = [0u8; 8];
        self.recv
            .read_exact(&mut theirs)
            .await
            .map_err(|e| self.read_error(e))?;
        Greeting::check(&theirs, PROTOCOL_VERSION).map_err(|source| LinkError::Frame {
            peer: self.peer.clone(),
            source,
        })?;
        Ok(())
    }

    fn read_error(&self, e: quinn::ReadExactError) -> LinkError {
        match e {
            quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)) => {
                conn_error(&self.peer, c)
            }
            quinn::ReadExactError::FinishedEarly(got) => LinkError::Frame {
                peer: self.peer.clone(),
                source: FrameError::ShortGreeting(got),
            },
            other => LinkError::Broken {
                peer: self.peer.clone(),
                detail: other.to_string(),
            },
        }
    }

    pub async fn send(&mut self, msg: &Msg) -> Result<(), LinkError> {
        let bytes = frame::encode(msg).map_err(|source| LinkError::Frame {
            peer: self.peer.clone(),
            source,
        })?;
        self.send
            .write_all(&bytes)
            .await
            .map_err(|e| LinkError::Broken {
                peer: self.peer.clone(),
                detail: e.to_string(),
            })
    }

    /// Reads one message; `Ok(None)` when the peer finished the stream cleanly.
    pub async fn recv(&mut self) -> Result<Option<Msg>, LinkError> {
        read_msg(&mut self.recv, &self.peer).await
    }
}

/// Reads one frame from a receive stream, checking the size before allocating.
pub async fn read_msg(recv: &mut RecvStream, peer: &str) -> Result<Option<Msg>, LinkError> {
    let mut prefix = [0u8; 4];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(got)) => {
            return Err(LinkError::Frame {
                peer: peer.to_string(),
                source: FrameError::Truncated { expected: 4, got },
            })
        }
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c))) => {
            return Err(conn_error(peer, c))
        }
        Err(e) => {
            return Err(LinkError::Broken {
                peer: peer.to_string(),
                detail: e.to_string(),
            })
        }
    }
    let len = frame::body_len(prefix).map_err(|source| LinkError::Frame {
        peer: peer.to_string(),
        source,
    })?;
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(got)) => {
            return Err(LinkError::Frame {
                peer: peer.to_string(),
                source: FrameError::Truncated { expected: len, got },
            })
        }
        Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c))) => {
            return Err(conn_error(peer, c))
        }
        Err(e) => {
            return Err(LinkError::Broken {
                peer: peer.to_string(),
                detail: e.to_string(),
            })
        }
    }
    frame::decode_body(&body)
        .map(Some)
        .map_err(|source| LinkError::Frame {
            peer: peer.to_string(),
            source,
        })
}

/// Writes one message on a send stream.
pub async fn write_msg(send: &mut SendStream, peer: &str, msg: &Msg) -> Result<(), LinkError> {
    let bytes = frame::encode(msg).map_err(|source| LinkError::Frame {
        peer: peer.to_string(),
        source,
    })?;
    send.write_all(&bytes).await.map_err(|e| LinkError::Broken {
        peer: peer.to_string(),
        detail: e.to_string(),
    })
}

/// The node name in the verified certificate the peer presented, if any.
pub fn peer_cert_name(conn: &Connection) -> Option<String> {
    identity::peer_name(&peer_cert_der(conn)?).ok()
}

/// The peer's verified certificate (DER), if it presented one.
pub fn peer_cert_der(conn: &Connection) -> Option<Vec<u8>> {
    let any = conn.peer_identity()?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    Some(certs.first()?.as_ref().to_vec())
}

/// Milliseconds since the Unix epoch: the clock the tree's waves are aligned to.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The address other nodes should use for a peer: what it advertised, with the address it was seen
/// connecting from when it advertised an unspecified one (an agent bound to 0.0.0.0 cannot know
/// which of its addresses its peers reach).
pub fn advertised(addr: &str, remote: SocketAddr) -> String {
    match addr.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => SocketAddr::new(remote.ip(), a.port()).to_string(),
        Ok(a) => a.to_string(),
        Err(_) => SocketAddr::new(remote.ip(), 1337).to_string(),
    }
}

/// Runs an established link until it ends: writes every message that arrives on `out` (the link
/// ends for the peer when `out` is dropped), reads frames and hands each to `on_msg` (which returns
/// false to stop). A bad frame closes the connection with [`close::BAD_MESSAGE`] and its reason.
/// Returns why the link ended.
pub async fn pump_link(
    conn: Connection,
    mut send: SendStream,
    mut recv: RecvStream,
    peer: &str,
    mut out: tokio::sync::mpsc::UnboundedReceiver<Msg>,
    mut on_msg: impl FnMut(Msg) -> bool,
) -> String {
    let writer_conn = conn.clone();
    let wpeer = peer.to_string();
    let writer = tokio::spawn(async move {
        while let Some(msg) = out.recv().await {
            if write_msg(&mut send, &wpeer, &msg).await.is_err() {
                break;
            }
        }
        let _ = send.finish();
        refuse(&writer_conn, close::DONE, "link closed");
    });
    let why = loop {
        match read_msg(&mut recv, peer).await {
            Ok(Some(msg)) => {
                if !on_msg(msg) {
                    break "closed locally".to_string();
                }
            }
            Ok(None) => break format!("{peer} closed the link"),
            Err(e) => {
                if let LinkError::Frame { .. } = e {
                    tracing::warn!(peer = %peer, error = %e, "bad frame; dropping the link");
                    refuse(&conn, close::BAD_MESSAGE, &e.to_string());
                }
                break e.to_string();
            }
        }
    };
    writer.abort();
    conn.close(close::DONE.into(), b"link closed");
    why
}

/// Accepts the next stream, greets, and reads its first message, all within
/// [`FIRST_MESSAGE_TIMEOUT`]. Refuses the connection (with the right code and reason) on a bad
/// greeting, a bad frame or a stall; `Ok(None)` when the peer left without a word.
pub async fn accept_first(
    conn: &Connection,
    label: &str,
) -> Result<Option<(Framed, Msg)>, LinkError> {
    let work = async {
        let mut f = match Framed::accept(conn, label).await {
            Ok(f) => f,
            Err(e) => {
                refuse(conn, close::PROTOCOL, &e.to_string());
                return Err(e);
            }
        };
        match f.recv().await {
            Ok(Some(m)) => Ok(Some((f, m))),
            Ok(None) => Ok(None),
            Err(e) => {
                refuse(conn, close::BAD_MESSAGE, &e.to_string());
                Err(e)
            }
        }
    };
    match tokio::time::timeout(FIRST_MESSAGE_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => {
            let why = format!(
                "no complete first message within {} s",
                FIRST_MESSAGE_TIMEOUT.as_secs()
            );
            refuse(conn, close::BAD_MESSAGE, &why);
            Err(LinkError::Broken {
                peer: label.to_string(),
                detail: why,
            })
        }
    }
}

/// Serves a child link once its parent's core has answered the attach: sends the answer; on a
/// refusal closes the connection with the reason, otherwise runs the link with [`pump_link`].
/// `event(Some(msg), "")` is called for every message and `event(None, why)` once at the end; it
/// returns false when nobody listens any more.
pub async fn serve_attached(
    conn: Connection,
    f: Framed,
    name: &str,
    answer: Msg,
    out: tokio::sync::mpsc::UnboundedReceiver<Msg>,
    mut event: impl FnMut(Option<Msg>, String) -> bool,
) -> Result<(), LinkError> {
    let Framed { mut send, recv, .. } = f;
    write_msg(&mut send, name, &answer).await?;
    if let Msg::Refused { reason } = &answer {
        let _ = send.finish();
        // Give the refusal a moment to arrive before the close overtakes it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        refuse(&conn, close::REFUSED, reason);
        return Ok(());
    }
    let why = pump_link(conn, send, recv, name, out, |msg| {
        event(Some(msg), String::new())
    })
    .await;
    event(None, why);
    Ok(())
}

/// Adds the UDP bytes one connection received (quinn's `udp_rx.bytes`: datagrams as they came off
/// the wire, handshake and keep-alives included) to a total shared by many connections. quinn
/// counts per connection, so the meter remembers what it already added and adds only the growth.
pub struct RxMeter {
    conn: Connection,
    total: Arc<AtomicU64>,
    seen: u64,
}

impl RxMeter {
    pub fn new(conn: &Connection, total: Arc<AtomicU64>) -> RxMeter {
        RxMeter {
            conn: conn.clone(),
            total,
            seen: 0,
        }
    }

    /// Adds what the connection received since the last update.
    pub fn update(&mut self) {
        let now = self.conn.stats().udp_rx.bytes;
        if now > self.seen {
            self.total.fetch_add(now - self.seen, Ordering::Relaxed);
            self.seen = now;
        }
    }
}

/// [`serve_child`], also adding the bytes the link receives to `rx_total` (see [`RxMeter`]): on
/// every message from the child, and once more when the link has ended.
pub async fn serve_child_metered(
    conn: Connection,
    f: Framed,
    attach: Attach,
    cert_name: &str,
    rx_total: Arc<AtomicU64>,
    ask: impl FnOnce(
        Attach,
        tokio::sync::mpsc::UnboundedSender<Msg>,
    ) -> Option<tokio::sync::oneshot::Receiver<Msg>>,
    mut event: impl FnMut(Option<Msg>, String) -> bool,
) -> Result<(), LinkError> {
    let mut meter = RxMeter::new(&conn, rx_total);
    let result = serve_child(conn, f, attach, cert_name, ask, |msg, why| {
        meter.update();
        event(msg, why)
    })
    .await;
    meter.update();
    result
}

/// Serves a link a child opened with `attach`: checks the certificate names the child, fixes its
/// advertised address, hands the attach to the core with `ask` (which returns where the core's
/// answer will come), then runs the link with [`serve_attached`]. The same for agents and the root.
pub async fn serve_child(
    conn: Connection,
    f: Framed,
    mut attach: Attach,
    cert_name: &str,
    ask: impl FnOnce(
        Attach,
        tokio::sync::mpsc::UnboundedSender<Msg>,
    ) -> Option<tokio::sync::oneshot::Receiver<Msg>>,
    event: impl FnMut(Option<Msg>, String) -> bool,
) -> Result<(), LinkError> {
    if attach.name != cert_name {
        let why = format!(
            "certificate is for {cert_name}, not {}: a node cannot claim another node's name",
            attach.name
        );
        tracing::warn!(peer = %conn.remote_address(), "{why}");
        refuse(&conn, close::AUTH, &why);
        return Ok(());
    }
    attach.addr = advertised(&attach.addr, conn.remote_address());
    let name = attach.name.clone();
    let (out_tx, out_rx) = tokio::sync::mpsc::unbounded_channel();
    let Some(reply) = ask(attach, out_tx) else {
        return Ok(());
    };
    let Ok(answer) = reply.await else {
        return Ok(());
    };
    serve_attached(conn, f, &name, answer, out_rx, event).await
}

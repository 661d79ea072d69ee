//! The agent's local socket for job ranks (`libbanyan_interpose.so` connects to it).
//!
//! One task per connection reads the rank's greeting, hello, updates and exit
//! ([`banyan_protocol::ingest`]), learns the rank's uid and pid from the kernel (`SO_PEERCRED`), and
//! hands what it read to the agent's core as [`RankEvent`]s; the core keeps the jobs
//! ([`crate::jobs::LocalJobs`]) and answers the hello, because only it knows which user owns a job.
//! A malformed or hostile stream gets one line in the log and is closed; other ranks never notice.
//!
//! The default address is the abstract name `@banyan-agent`: abstract UNIX sockets belong to a
//! network namespace, so every container or test host with its own network reaches its own agent
//! with no configuration, and no file is left behind.

use banyan_protocol::frame::{self, Greeting};
use banyan_protocol::ingest::{AgentReply, RankExit, RankMsg, INGEST_VERSION, MAX_RANK_FRAME};
use banyan_protocol::job::JobDesc;
use banyan_protocol::metric::MetricSet;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// How long a rank may take between connecting and saying hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What a rank's connection tells the core. `conn` numbers connections so the core can tell
/// ranks apart.
#[derive(Debug)]
pub enum RankEvent {
    Hello {
        conn: u64,
        job: JobDesc,
        rank: u32,
        /// A process the rank started (`RankMsg::Process`), not the rank itself.
        process: bool,
        uid: u32,
        pid: i32,
        /// The core's answer: `Ok(period_ms)` or the refusal.
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Update {
        conn: u64,
        delta: MetricSet,
    },
    /// The rank is done: `how` is `None` when the stream ended without an exit message.
    Exit {
        conn: u64,
        how: Option<RankExit>,
    },
}

/// Binds `addr`: `@name` for an abstract socket, otherwise a filesystem path (a stale socket file
/// left by a previous agent is replaced).
pub fn bind(addr: &str) -> std::io::Result<UnixListener> {
    let std_listener = if let Some(name) = addr.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        std::os::unix::net::UnixListener::bind_addr(&sa)?
    } else {
        if let Ok(meta) = std::fs::symlink_metadata(addr) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(addr)?;
            }
        }
        std::os::unix::net::UnixListener::bind(addr)?
    };
    std_listener.set_nonblocking(true)?;
    UnixListener::from_std(std_listener)
}

/// Accepts ranks until the listener fails.
pub async fn serve(listener: UnixListener, events: mpsc::UnboundedSender<RankEvent>) {
    let mut next: u64 = 1;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let conn = next;
                next += 1;
                let events = events.clone();
                tokio::spawn(async move {
                    // Every path that got past the hello has told the core how the rank ended.
                    if let Err(why) = serve_rank(stream, conn, &events).await {
                        debug!(conn, error = %why, "rank stream ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "the ingest socket failed; ranks can no longer report");
                return;
            }
        }
    }
}

async fn read_frame(stream: &mut UnixStream) -> Result<Option<RankMsg>, String> {
    let mut prefix = [0u8; 4];
    match stream.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = frame::body_len(prefix).map_err(|e| e.to_string())?;
    if len > MAX_RANK_FRAME {
        return Err(format!(
            "a frame of {len} bytes, more than the {MAX_RANK_FRAME} a rank may send"
        ));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| format!("truncated frame: {e}"))?;
    frame::decode_body(&body)
        .map(Some)
        .map_err(|e| e.to_string())
}

async fn send(stream: &mut UnixStream, reply: &AgentReply) -> Result<(), String> {
    let bytes = frame::encode(reply).map_err(|e| e.to_string())?;
    stream.write_all(&bytes).await.map_err(|e| e.to_string())
}

async fn serve_rank(
    mut stream: UnixStream,
    conn: u64,
    events: &mpsc::UnboundedSender<RankEvent>,
) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("no peer credentials: {e}"))?;
    let (uid, pid) = (cred.uid(), cred.pid().unwrap_or(0));
    let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
        let mut greeting = [0u8; 8];
        stream
            .read_exact(&mut greeting)
            .await
            .map_err(|e| format!("no greeting: {e}"))?;
        Greeting::check(&greeting, INGEST_VERSION).map_err(|e| e.to_string())?;
        read_frame(&mut stream).await
    })
    .await
    .map_err(|_| "no hello within 10 s".to_string())?;
    let (job, rank, process) = match hello {
        Ok(Some(RankMsg::Hello { job, rank })) => (job, rank, false),
        Ok(Some(RankMsg::Process { job, rank })) => (job, rank, true),
        Ok(Some(other)) => {
            let reason = format!("expected a hello first, got {}", kind(&other));
            return Err(refuse(&mut stream, uid, pid, reason).await);
        }
        Ok(None) => return Err("closed before its hello".into()),
        Err(reason) if reason.starts_with("no greeting") => {
            // Not one of ours: there is nobody to tell why.
            warn!(uid, pid, reason = %reason, "rank refused");
            return Err(reason);
        }
        Err(reason) => return Err(refuse(&mut stream, uid, pid, reason).await),
    };
    let jobid = job.jobid.clone();
    let (tx, rx) = oneshot::channel();
    events
        .send(RankEvent::Hello {
            conn,
            job,
            rank,
            process,
            uid,
            pid,
            reply: tx,
        })
        .map_err(|_| "the agent is stopping".to_string())?;
    match rx.await {
        Ok(Ok(period_ms)) => {
            // A rank that crashed at once is gone before our welcome: what it sent before dying
            // (its last counts and how it ended) is still queued on the socket, so read on.
            if let Err(e) = send(&mut stream, &AgentReply::Welcome { period_ms }).await {
                debug!(uid, pid, error = %e, "rank gone before its welcome; reading what it sent");
            }
        }
        Ok(Err(reason)) => return Err(refuse(&mut stream, uid, pid, reason).await),
        Err(_) => return Err("the agent is stopping".into()),
    }
    // A rank's processes are logged as such: "rank started" counts ranks only.
    if process {
        info!(uid, pid, rank, job = %jobid, "process of a rank: started");
    } else {
        info!(uid, pid, rank, job = %jobid, "rank started");
    }
    let how = loop {
        match read_frame(&mut stream).await {
            Ok(Some(RankMsg::Update { delta })) => {
                let _ = events.send(RankEvent::Update { conn, delta });
            }
            Ok(Some(RankMsg::Exit { how })) => break Some(how),
            Ok(Some(RankMsg::Hello { .. } | RankMsg::Process { .. })) => {
                warn!(uid, pid, job = %jobid, "a second hello on one stream; the rank counts as crashed");
                break None;
            }
            Ok(None) => break None,
            Err(e) => {
                warn!(uid, pid, job = %jobid, error = %e, "bad data from a rank; it counts as crashed");
                break None;
            }
        }
    };
    match (&how, process) {
        (Some(h), false) => info!(uid, pid, rank, job = %jobid, how = ?h, "rank ended"),
        (Some(h), true) => {
            info!(uid, pid, rank, job = %jobid, how = ?h, "process of a rank: ended")
        }
        (None, false) => {
            warn!(uid, pid, rank, job = %jobid, "rank's stream ended without an exit: crashed")
        }
        (None, true) => {
            warn!(uid, pid, rank, job = %jobid, "process of a rank: stream ended without an exit: crashed")
        }
    }
    let _ = events.send(RankEvent::Exit { conn, how });
    Ok(())
}

/// Tells the rank why it is refused (best effort: it may be gone), logs it, and returns the reason.
async fn refuse(stream: &mut UnixStream, uid: u32, pid: i32, reason: String) -> String {
    let _ = send(
        stream,
        &AgentReply::Refused {
            reason: reason.clone(),
        },
    )
    .await;
    warn!(uid, pid, reason = %reason, "rank refused");
    reason
}

fn kind(m: &RankMsg) -> &'static str {
    match m {
        RankMsg::Hello { .. } => "hello",
        RankMsg::Update { .. } => "update",
        RankMsg::Exit { .. } => "exit",
        RankMsg::Process { .. } => "process hello",
    }
}

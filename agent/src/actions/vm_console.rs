//! `vm` console orders: one guest's serial console, held for the root while the session lasts.
//!
//! The executor connects to the guest's serial socket (QEMU serves one client at a time: the
//! shell lets one session per guest run) and copies both ways: what the guest prints goes to
//! the shell in chunks, gathered for [`BATCH`] so that the echo of one key is one signed chunk
//! rather than one per byte, and cut at [`MAX_CONSOLE_CHUNK`]; the keys the shell admitted are
//! typed as they come. A first, empty chunk says the session is open. The session ends when the
//! root closes it, when the root has sent nothing (keys or a keep-alive) for
//! [`CONSOLE_IDLE_MS`] (a root that vanished leaves nothing open here), when the guest's socket
//! closes (the guest stopped), at the order's time limit or on cancel; the receipt says which.
//! What is not here: seals, sequence checks and the limit of sessions per node (the shell's).

use super::{cancelled, deadline_after, ConsoleLink, RunContext};
use crate::vm::{Manager, VmError};
use banyan_protocol::action::NodeResult;
use banyan_protocol::console::{CONSOLE_IDLE_MS, MAX_CONSOLE_CHUNK};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep_until, Instant};

/// How long output is gathered before it goes up as one chunk.
pub const BATCH: Duration = Duration::from_millis(30);

/// Runs one console session of guest `name` (see the module doc).
pub async fn run(m: Arc<Manager>, mut ctx: RunContext, name: &str, session_ms: u64) -> NodeResult {
    let guest = name.to_string();
    let path = match tokio::task::spawn_blocking(move || m.console_socket(&guest)).await {
        Ok(Ok(p)) => p,
        Ok(Err(VmError::Unknown(_))) => {
            return NodeResult::refused(format!(
                "no guest named {name} on this node (`banyan vm list` shows the node's guests)"
            ))
        }
        Ok(Err(e)) => return NodeResult::refused(format!("console of {name}: {e}")),
        Err(e) => return NodeResult::refused(format!("finding the console of {name}: {e}")),
    };
    if !ctx.for_real {
        return NodeResult {
            ok: true,
            summary: format!("would open the console of {name}"),
            ..NodeResult::default()
        };
    }
    let Some(link) = ctx.console.take() else {
        return NodeResult::refused(
            "a console session is opened by the root (`banyan vm console HOST:NAME`), not as an action",
        );
    };
    let keys = link
        .keys
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    let Some(mut keys) = keys else {
        return NodeResult::refused("this console session's keys are taken already");
    };
    let stream = match tokio::net::UnixStream::connect(&path).await {
        Ok(s) => s,
        Err(e) => {
            return NodeResult::refused(format!(
                "cannot connect to the console of {name} ({}): {e}",
                path.display()
            ))
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    // The first chunk, empty: the root answers its client only once the session is open.
    if link.output.send((Vec::new(), 0)).await.is_err() {
        return NodeResult::refused("the agent dropped the console session before it opened");
    }
    tracing::info!(guest = %name, "vm: console session opened");
    let limit = ctx.timeout.min(Duration::from_millis(session_ms));
    let end = deadline_after(limit);
    let idle = Duration::from_millis(CONSOLE_IDLE_MS);
    let mut heard = Instant::now();
    let mut pending: Vec<u8> = Vec::new();
    let mut skipped = 0u64;
    let mut flush_at: Option<Instant> = None;
    let mut buf = vec![0u8; 4096];
    let (mut typed, mut printed) = (0u64, 0u64);
    let why = loop {
        let flush = async {
            match flush_at {
                Some(t) => sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = rd.read(&mut buf) => match r {
                Ok(0) => break "the guest's console closed (the guest stopped)".to_string(),
                Err(e) => break format!("reading the guest's console: {e}"),
                Ok(n) => {
                    printed += n as u64;
                    pending.extend_from_slice(&buf[..n]);
                    if pending.len() >= MAX_CONSOLE_CHUNK {
                        send(&link, &mut pending, &mut skipped);
                        flush_at = None;
                    } else if flush_at.is_none() {
                        flush_at = Some(Instant::now() + BATCH);
                    }
                }
            },
            _ = flush => {
                send(&link, &mut pending, &mut skipped);
                flush_at = None;
            }
            k = keys.recv() => match k {
                None => break "the agent ended the session".to_string(),
                Some((bytes, close)) => {
                    heard = Instant::now();
                    if !bytes.is_empty() {
                        if let Err(e) = wr.write_all(&bytes).await {
                            break format!("typing on the guest's console: {e}");
                        }
                        typed += bytes.len() as u64;
                    }
                    if close {
                        break "closed by the root".to_string();
                    }
                }
            },
            _ = sleep_until(heard + idle) => {
                break format!("the root sent nothing for {} s", idle.as_secs());
            }
            _ = sleep_until(end) => break "the session's time is up".to_string(),
            _ = cancelled(&mut ctx.cancel) => break "cancelled".to_string(),
        }
    };
    send(&link, &mut pending, &mut skipped);
    tracing::info!(guest = %name, reason = %why, typed, printed, "vm: console session closed");
    NodeResult {
        ok: true,
        summary: format!("console of {name} closed: {why}"),
        ..NodeResult::default()
    }
}

/// Hands what was gathered to the shell in chunks; what does not fit in the bounded way up is
/// dropped and counted, and the next chunk that goes says how much.
fn send(link: &ConsoleLink, pending: &mut Vec<u8>, skipped: &mut u64) {
    for chunk in pending.chunks(MAX_CONSOLE_CHUNK) {
        match link.output.try_send((chunk.to_vec(), *skipped)) {
            Ok(()) => *skipped = 0,
            Err(_) => *skipped += chunk.len() as u64,
        }
    }
    pending.clear();
}

//! What a job's rank tells its node's agent, over the agent's local socket.
//!
//! `libbanyan_interpose.so`, preloaded into every rank by `banyan-run`, connects to the agent's
//! UNIX stream socket (by default the abstract name [`DEFAULT_SOCKET`], which is private to a
//! network namespace, so every test host reaches its own agent). The stream opens with a
//! [`crate::frame::Greeting`] carrying [`INGEST_VERSION`], then carries [`RankMsg`] frames in the
//! codec of [`crate::frame`]; the agent answers the hello with one [`AgentReply`].
//!
//! A stream is one process: [`RankMsg::Hello`] first for a rank (a process the launcher
//! started), [`RankMsg::Process`] for a process a rank started (forked or executed: a shell's
//! `dd`, `rm`), then [`RankMsg::Update`]s, then [`RankMsg::Exit`]. A process's counts join its
//! job as a rank's do; it is counted among the job's processes, not its ranks. A stream that ends
//! without `Exit` is a crashed rank (or process). The agent learns the
//! rank's uid and pid from the kernel (`SO_PEERCRED`), not from the messages, and keeps the jobs of
//! different users apart.

use crate::job::JobDesc;
use crate::metric::MetricSet;
use serde::{Deserialize, Serialize};

/// Version of the messages below, checked at the greeting.
pub const INGEST_VERSION: u16 = 1;

/// The agent's socket when none is configured: an abstract UNIX socket name (no file; written
/// `@banyan-agent` on command lines).
pub const DEFAULT_SOCKET: &str = "@banyan-agent";

/// Largest frame a rank may send (a rank's update is a few kB).
pub const MAX_RANK_FRAME: usize = 1 << 20;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum RankMsg {
    /// First message: the job the rank belongs to (its `uid` field is ignored: the agent fills
    /// it in from the socket) and the rank's number in it.
    Hello { job: JobDesc, rank: u32 },
    /// What happened since the previous update: counters and histograms as increments, gauges as
    /// samples.
    Update { delta: MetricSet },
    /// Last message: how the rank ended.
    Exit { how: RankExit },
    /// First message of a process a rank started (its fork, or a program it ran), instead of
    /// `Hello`: the job and the number of the rank it belongs to. Added after version 1's three
    /// messages without a new version: a rank's stream is unchanged, and an agent that predates it
    /// refuses only the processes, not the ranks.
    Process { job: JobDesc, rank: u32 },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum RankExit {
    /// Returned or called `exit` with this status.
    Exited(i32),
    /// Killed by this signal (seen by the library's handler, or by `banyan-run` as the parent).
    Signaled(i32),
    /// `MPI_Abort` or `abort()`, with what is known.
    Aborted(String),
}

impl RankExit {
    /// Whether the rank counts as crashed.
    pub fn crashed(&self) -> bool {
        !matches!(self, RankExit::Exited(_))
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum AgentReply {
    /// Accepted: send updates every `period_ms`.
    Welcome { period_ms: u64 },
    /// Refused, with the reason (bad job id, another user's job, ...). The agent closes the stream.
    Refused { reason: String },
}

//! The messages of the mesh, one enum for every link.
//!
//! Every stream starts with a [`crate::frame::Greeting`]; then each side sends [`Msg`] frames.
//! Which messages a stream carries depends on how it was opened:
//!
//! - enrolment (agent -> root, no client certificate yet): [`Msg::Enrol`], answered by
//!   [`Msg::Enrolled`] or [`Msg::Refused`];
//! - placement (agent -> root, mutual TLS): [`Msg::Join`], answered by [`Msg::Placed`],
//!   [`Msg::Retry`] or [`Msg::Refused`];
//! - a tree link (child -> parent, mutual TLS): [`Msg::Attach`], answered by [`Msg::Accepted`] or
//!   [`Msg::Refused`]; then reports, membership changes, results and heartbeats flow up and commands
//!   and heartbeats flow down until the link ends.
//!
//! Reports carry *cumulative* values: a parent keeps only the latest report of each child, so a
//! repeated or lost report never double counts.

use crate::metric::MetricSet;
use crate::seal::Sealed;
use serde::{Deserialize, Serialize};

/// Version of the messages below, and of the orders they carry (6: orders may carry guest tasks,
/// `action::Task::Vm`, and results the guests of a node, `NodeResult::vms`; 7: a guest launch
/// may carry join tokens, `VmLaunch::join`, and a guest its node name, `VmStatus::node`; guests'
/// consoles, `VmOp::Console`, `CommandBody::ConsoleInput`, `Answer::Console`; 8: a node's
/// inventory, `Query::Inventory`, `Answer::Inventory`). A peer with another version is refused at
/// its greeting.
pub const PROTOCOL_VERSION: u16 = 8;

/// The root's name in the tree and in its certificate.
pub const ROOT_NAME: &str = "banyan-root";

/// Application-level name of the QUIC/TLS protocol (ALPN). Deliberately unversioned: versions are
/// checked by the greeting, which can say what went wrong.
pub const ALPN: &[u8] = b"banyan";

/// A node and the mesh address it listens on.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    pub name: String,
    pub addr: String,
}

/// One node of a subtree as its ancestors know it: who its parent is, where it listens, and the
/// generation of the placement that put it there (a higher generation is newer). `grant` is the
/// root's signature of exactly that placement ([`Grant`]): an ancestor believes a child that
/// claims the member only if it verifies and matches.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub parent: String,
    pub addr: String,
    pub gen: u64,
    pub grant: Sealed,
}

/// What the root signs when it places a node ([`crate::seal::Purpose::Placement`]): `node`,
/// listening on `addr`, goes under `parent`, placement generation `gen`. A node presents its
/// grant when it attaches, and its ancestors pass the grants of the nodes below on, so that a
/// certified node can claim only nodes the root placed below it (see `agent::tree`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub node: String,
    pub addr: String,
    pub parent: String,
    pub gen: u64,
}

impl Grant {
    /// The grant a member's fields claim to have.
    pub fn of(member: &Member) -> Grant {
        Grant {
            node: member.name.clone(),
            addr: member.addr.clone(),
            parent: member.parent.clone(),
            gen: member.gen,
        }
    }
}

/// Changes to the set of nodes below a link, sent up as soon as they happen.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct MembershipDelta {
    /// Nodes that appeared below, or whose placement changed.
    pub upsert: Vec<Member>,
    /// Nodes no longer below.
    pub remove: Vec<String>,
    /// Children that their parent declared lost (dead or unreachable), with what it kept of them.
    pub lost: Vec<Lost>,
}

/// Which report of a node below a report has folded in: the `seq` of `node`'s report as its
/// parent `under` held it (`None`: nothing of it yet). When `under` or a node above it dies, the
/// root passes this to `node` so that it owes exactly what was counted of it, no more, no less.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub node: String,
    pub under: String,
    pub seq: Option<u64>,
}

/// A parent declared a child lost and keeps the child's last report (`seq`, `None`: none came).
/// `holds` is what that report had folded in of the child's own children and grandchildren, so an
/// orphan whose parent died with the child learns what was kept of it too.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    pub parent: String,
    pub child: String,
    pub seq: Option<u64>,
    pub holds: Vec<Hold>,
}

impl MembershipDelta {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty() && self.lost.is_empty()
    }
}

/// Why an agent asks the root for a place.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum JoinReason {
    /// First start.
    Fresh,
    /// Its parent stopped answering.
    ParentLost { parent: String },
    /// The parent it was sent to refused it or could not be reached.
    ParentRefused { parent: String, reason: String },
    /// The root asked it to move.
    Moved,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Join {
    pub name: String,
    /// The mesh address this agent listens on, for its future children.
    pub addr: String,
    pub reason: JoinReason,
    /// Height of the subtree it brings (0 for a leaf).
    pub height: u32,
    /// Every node of the subtree it brings, itself excluded.
    pub subtree: Vec<Member>,
    /// Children it lost while it had no parent to tell (the root passes on what it kept of them).
    pub lost: Vec<Lost>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Placement {
    pub parent: Peer,
    /// Generation of this placement.
    pub gen: u64,
    /// Random per start of the root.
    pub root_epoch: u64,
    /// For an orphan: which of its reports the side of the tree that survived kept (see [`Hold`]).
    /// `None` when the root does not know; the orphan then owes the last report it sent.
    pub kept: Option<Hold>,
    /// The root's seal over this placement ([`Grant`]), shown to the parent at attach.
    pub grant: Sealed,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Attach {
    pub name: String,
    pub addr: String,
    pub gen: u64,
    pub height: u32,
    /// The subtree this child brings, itself excluded.
    pub subtree: Vec<Member>,
    /// The root's seal over this child's placement under the parent it attaches to.
    pub grant: Sealed,
}

/// One wave's report of a subtree.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Report {
    /// Wave number: `floor(unix_ms / period_ms)` at the sender.
    pub wave: u64,
    /// The sender's report number, rising over its whole life (across parents).
    pub seq: u64,
    /// Height of the sender's subtree.
    pub height: u32,
    /// The subtree's cumulative values, net of what it already handed over through earlier parents.
    pub net: MetricSet,
    /// Which reports of its children (and of their children) `net` folds in.
    pub holds: Vec<Hold>,
    /// Digests of the nodes below (and of the sender) sampled since the sender's last report: each
    /// digest travels up once, so the root has every node's latest small view every wave.
    pub digests: Vec<Digest>,
}

/// The small view of one node that the root keeps for its node table. Full metrics stay on the node
/// and are fetched on demand ([`Query::NodeMetrics`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Digest {
    pub name: String,
    /// When the node sampled this (ms since the Unix epoch, the node's clock).
    pub sampled_ms: u64,
    /// Busy fraction of all cores over the last period, 0..1.
    pub cpu: f32,
    /// Used fraction of memory (total - available), 0..1.
    pub memory: f32,
    pub load1: f32,
    /// Bytes per second over all interfaces but loopback.
    pub net_rx_bps: f64,
    pub net_tx_bps: f64,
    /// Prometheus exporters this node scrapes that failed at their last scrape: `(target, error)`.
    pub scrape_errors: Vec<(String, String)>,
    /// Jobs with ranks running on this node (and jobs that just appeared here).
    pub jobs: Vec<JobOnNode>,
}

/// One job as a node's digest shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct JobOnNode {
    pub jobid: String,
    /// Ranks of the job still running on the node, and processes they started (forked or ran)
    /// still running there: the job is not over on the node while any is.
    pub running: u32,
    /// The job's description, while the job is new on the node and now and then after.
    pub desc: Option<crate::job::JobDesc>,
}

/// What the root can ask of a node without changing anything.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Query {
    /// The node's own metrics as last sampled.
    NodeMetrics,
    /// The Prometheus exporters the node scrapes, and how their last scrapes went.
    Scrapes,
    /// What the node is made of and has installed ([`crate::inventory::Inventory`]), collected
    /// when asked: `full` the whole inventory, else only its digests (a few hundred bytes, so
    /// that grouping a large cluster by profile moves hashes, not package lists).
    Inventory { full: bool },
}

/// A change to the exporters a node scrapes. Targets are URLs as [`crate::target::Target`]
/// normalizes them; the node checks them again.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ScrapeChange {
    Add(String),
    Remove(String),
}

/// One exporter a node scrapes, as `/join/list` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ScrapeStatus {
    pub target_url: String,
    pub period_ms: u64,
    /// When the last scrape finished (ms since the Unix epoch), 0 before the first.
    pub last_scrape_ms: u64,
    /// When the last scrape that worked finished, 0 if none has.
    pub last_ok_ms: u64,
    /// Why the last scrape failed; `None` when it worked.
    pub error: Option<String>,
    /// Series the target contributes (from its last good scrape).
    pub series: u32,
}

/// What a command asks its targets to do.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum CommandBody {
    /// Answer at once; the root measures the round trip.
    Ping,
    /// Leave the current parent (after a final report) and attach under `parent`, showing it
    /// `grant` (the root's seal over the new placement).
    Move {
        parent: Peer,
        gen: u64,
        grant: Sealed,
    },
    /// Answer a question about the node.
    Query(Query),
    /// Start or stop scraping a Prometheus exporter into the node's metrics.
    Scrape(ScrapeChange),
    /// The job's profile is written: drop its series and state.
    ForgetJob(String),
    /// An operator action: a [`crate::action::Order`] sealed by the root. Inner nodes route it
    /// by the command's targets; each target checks the seal and that the order names it.
    Action(Sealed),
    /// Keys for a guest's console session: a [`crate::console::ConsoleInput`] sealed by the
    /// root, routed like an action; the target checks the seal and that it names one of its
    /// live sessions, in order.
    ConsoleInput(Sealed),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Command {
    pub id: u64,
    /// Target names inside the receiving subtree.
    pub targets: Vec<String>,
    pub body: CommandBody,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Answer {
    Pong,
    Moving,
    Metrics(MetricSet),
    /// The node's scrape targets (after the change, for [`CommandBody::Scrape`]).
    Scrapes(Vec<ScrapeStatus>),
    /// The node's inventory's digests, and the inventory itself when it was asked in full.
    Inventory(Box<InventoryAnswer>),
    /// Done, nothing to tell.
    Done,
    /// A target's [`crate::action::Receipt`], sealed with its node key.
    Receipt(Sealed),
    /// Lines a target printed so far ([`crate::action::OutputLines`]), sealed with its node key;
    /// not an answer that ends the target's part (its receipt does).
    Output(Sealed),
    /// What a guest printed on a console session ([`crate::console::ConsoleOutput`]), sealed
    /// with its host's node key; like `Output`, not an answer that ends the target's part.
    Console(Sealed),
}

/// Results of a command from some of its targets; the root merges them.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Outcome {
    pub id: u64,
    /// `(node, answer or error)`.
    pub results: Vec<(String, Result<Answer, String>)>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Msg {
    Enrol {
        name: String,
        secret: String,
        csr_der: Vec<u8>,
    },
    Enrolled {
        cert_der: Vec<u8>,
    },
    Refused {
        reason: String,
    },
    Join(Join),
    Placed(Placement),
    Retry {
        after_ms: u32,
        reason: String,
    },
    Attach(Attach),
    Accepted {
        depth: u32,
        root_epoch: u64,
    },
    Heartbeat {
        depth: u32,
    },
    Report(Report),
    Membership(MembershipDelta),
    /// A child leaving on purpose hands over its last net values, which the parent keeps.
    Detach {
        last: MetricSet,
    },
    Command(Command),
    Outcome(Outcome),
}

impl Msg {
    /// Short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Enrol { .. } => "enrol",
            Msg::Enrolled { .. } => "enrolled",
            Msg::Refused { .. } => "refused",
            Msg::Join(_) => "join",
            Msg::Placed(_) => "placed",
            Msg::Retry { .. } => "retry",
            Msg::Attach(_) => "attach",
            Msg::Accepted { .. } => "accepted",
            Msg::Heartbeat { .. } => "heartbeat",
            Msg::Report(_) => "report",
            Msg::Membership(_) => "membership",
            Msg::Detach { .. } => "detach",
            Msg::Command(_) => "command",
            Msg::Outcome(_) => "outcome",
        }
    }
}

/// A node's answer to [`Query::Inventory`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InventoryAnswer {
    /// [`crate::inventory::Inventory::digests`]: the whole inventory's digest and each facet's.
    pub digests: crate::inventory::Digests,
    /// The inventory, when it was asked in full.
    pub full: Option<crate::inventory::Inventory>,
}

//! One node's side of the reduction tree, as a deterministic state machine.
//!
//! [`Node`] knows nothing of sockets or clocks: the shell feeds it events (a message from the parent,
//! a child attaching, a timer firing) together with `now` in milliseconds, and drains
//! [`Action`]s (send this to the parent, connect to that peer, ask the root for a place). The same
//! code runs in `banyan-agent`, at the top of `banyan-root` (in [`Role::Root`]), and ten thousand
//! times over in the simulator.
//!
//! What it guarantees:
//! - **Liveness of links.** Both ends of a link send something at least every `heartbeat_ms`; a peer
//!   silent for `dead_after_ms` is declared lost (by the child *and* by the parent). A child's
//!   reports count as its heartbeats, and a parent answers a child's report or heartbeat with a
//!   heartbeat of its own when it has sent that child nothing for half a `heartbeat_ms`, so at a
//!   period shorter than `heartbeat_ms` a link carries one message each way per wave and no timer
//!   of its own: a leaf wakes once for its wave and once for its parent's answer. The answers also
//!   put the orphans of one parent's death on the same clock: they heard it last at the same wave.
//! - **Waves.** Every period, at the same wall-clock boundary on every node, a node samples itself,
//!   waits until each child has reported that wave (or until a deadline that grows with the height
//!   of its subtree), then sends one report up. The root therefore sees a wave after about
//!   height x per-hop time, not height x period.
//! - **Exactness.** Reports are cumulative and *net*: a node reports
//!   `own + frozen + sum(children's latest net) - debt`. When a child leaves (dead, unreachable or
//!   moved on purpose) its parent keeps that child's last net counters forever (`frozen`); the child,
//!   if alive, adds to its `debt` what was kept of it before it attaches elsewhere. Nothing is
//!   counted twice and a dead node's counts stay in the totals.
//! - **Handover.** What was kept of an orphan is exact even when its parent died with reports in
//!   flight: every report has a number (`seq`) and names the reports of the children it folds in
//!   ([`Hold`]). The node that keeps a lost child's last report tells the root which report that
//!   was and what it held; the root passes it to each orphan in its placement, and the orphan owes
//!   the net it sent in exactly that report (it keeps its last [`SENT_HISTORY`] reports). A parent
//!   that was only cut off, not dead, comes back keeping a lost child's later report than the one
//!   its own parent kept of it: once it learns which of its reports was kept, it rewinds what it
//!   keeps of that child to match (it keeps its children's last [`SENT_HISTORY`] reports for that).
//!   Without that word an orphan owes its last report, which can lose increments that were in
//!   flight, never count them twice.
//! - **Restarts.** Counters the agent takes as absolute values (a scraped exporter's, the metrics
//!   file's) do not start from zero when the agent restarts, unlike its collectors' own. Each
//!   report remembers that *carried* part ([`Node::set_carried`]); the shell keeps the last
//!   reports' carried parts in the state dir ([`PreviousLife`]), and a restarted agent
//!   ([`Node::resume`]) joins as an orphan of its old parent and owes exactly the carried part of
//!   the report that parent kept, as an orphan owes its net.
//! - **Membership.** Each node knows the members of each child's subtree (for routing commands)
//!   and forwards changes of the union upward immediately, so the root always has the topology.
//! - **Claims are checked.** A child is believed only about nodes the root placed below it: its
//!   own attach and every member it announces carry the root's signed [`Grant`] of that placement,
//!   and a member is taken only when its grant checks ([`GrantCheck`]) and its parent is the child
//!   or a member already taken below it. A certified but hostile node therefore cannot draw
//!   another node's orders to itself; what it can still do is drop what passes through it.
//!   Refused claims come out of [`Node::poll_refused_claim`] for the shell to log and show.

use banyan_protocol::metric::MetricSet;
use banyan_protocol::seal::Sealed;
use banyan_protocol::wire::{
    Answer, Attach, Command, CommandBody, Digest, Grant, Hold, Join, JoinReason, Lost, Member,
    MembershipDelta, Msg, Outcome, Peer, Placement, Query, Report,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// How many refused claims a node keeps for the shell to collect.
const REFUSED_CLAIMS_KEPT: usize = 64;

/// Checks that the root signed exactly the placement a member claims ([`Grant::of`]). The shell
/// gives every real node one that verifies against the cluster CA (`crate::grants`); a node
/// without one (the simulator, unit tests) believes grants, but still checks the structure of
/// claims.
pub trait GrantCheck: Send + Sync {
    fn check(&self, member: &Member) -> Result<(), String>;
}

/// The root's side: seals the placements it hands out.
pub trait GrantSign: Send + Sync {
    fn sign(&self, grant: &Grant) -> Sealed;
}

impl std::fmt::Debug for dyn GrantSign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantSign")
    }
}

/// A node's grant checker, if it has one.
#[derive(Clone, Default)]
struct Grants(Option<Arc<dyn GrantCheck>>);

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Grants(checked)"
        } else {
            "Grants(unchecked)"
        })
    }
}

/// Of the members `by` claims, the ones to believe: each with a grant that checks, hanging from
/// `by` itself or from a member already believed (in `known`, or in `claims` in any order).
fn vet_claims(
    grants: &Grants,
    by: &str,
    known: &HashMap<String, Member>,
    claims: Vec<Member>,
) -> (Vec<Member>, Vec<RefusedClaim>) {
    let mut taken: HashSet<String> = HashSet::new();
    let mut believed = Vec::with_capacity(claims.len());
    let mut refused = Vec::new();
    let mut rest = claims;
    loop {
        let before = rest.len();
        let mut later = Vec::new();
        for m in rest {
            let hangs =
                m.parent == by || known.contains_key(&m.parent) || taken.contains(&m.parent);
            if !hangs {
                later.push(m);
                continue;
            }
            let checked = match &grants.0 {
                Some(check) => check.check(&m),
                None => Ok(()),
            };
            match checked {
                Ok(()) => {
                    taken.insert(m.name.clone());
                    believed.push(m);
                }
                Err(reason) => refused.push(RefusedClaim {
                    by: by.to_string(),
                    member: m.name.clone(),
                    reason,
                }),
            }
        }
        rest = later;
        if rest.is_empty() || rest.len() == before {
            break;
        }
    }
    refused.extend(rest.into_iter().map(|m| RefusedClaim {
        by: by.to_string(),
        reason: format!(
            "its parent {} is not {by} nor a node placed below {by}",
            m.parent
        ),
        member: m.name,
    }));
    (believed, refused)
}

/// A member a child claimed and this node did not believe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedClaim {
    /// The child that claimed it (or the joining node, at the root).
    pub by: String,
    pub member: String,
    pub reason: String,
}

/// Timing of the tree. All in milliseconds.
#[derive(Debug, Clone)]
pub struct TreeConfig {
    /// Reduction period (one wave per period).
    pub period_ms: u64,
    /// Maximum silence on a link before sending a heartbeat. Above the period, so that a child's
    /// reports (one per wave, within the hop budget) and its parent's answers to them keep a link
    /// alive without heartbeats of their own; half of `dead_after_ms`, so that a peer is declared
    /// lost only after it missed what it owed for a whole `heartbeat_ms`.
    pub heartbeat_ms: u64,
    /// Silence after which a peer is declared lost. Detection happens within this plus one timer
    /// tick, so 2,500 keeps detection under the 3 s promised to operators.
    pub dead_after_ms: u64,
    /// Forwarding budget per level of subtree height: an inner node whose subtree has height h waits
    /// at most `h * hop_budget_ms` (capped at half a period) for its children's reports.
    pub hop_budget_ms: u64,
    /// First delay before retrying the root after a network error; doubles up to the maximum.
    pub join_backoff_min_ms: u64,
    pub join_backoff_max_ms: u64,
    /// How long a command waits for its targets before listing the silent ones as unreachable.
    pub command_timeout_ms: u64,
}

impl Default for TreeConfig {
    fn default() -> Self {
        TreeConfig {
            period_ms: 1000,
            heartbeat_ms: 1250,
            dead_after_ms: 2500,
            hop_budget_ms: 50,
            join_backoff_min_ms: 200,
            join_backoff_max_ms: 5000,
            command_timeout_ms: 5000,
        }
    }
}

impl TreeConfig {
    /// The same config with another wave period.
    pub fn with_period(mut self, period_ms: u64) -> Self {
        self.period_ms = period_ms.max(1);
        self
    }
}

/// How many of its last reports a node keeps to settle what it owes when its parent is lost: a
/// few waves' worth, as a report goes up every wave and again when something late arrives.
pub const SENT_HISTORY: usize = 16;

/// How long a lost child told to the parent is told again in a join: long enough to cover that
/// parent's own death being noticed (a few seconds).
const RETELL_LOST_MS: u64 = 10_000;
/// Most losses kept to tell again: a join carries them all, and a wide failure below must not
/// make it huge (the root reads 256 of a join at most).
const MAX_RECENT_LOST: usize = 256;

/// How orphans settled what they owed: exactly (the root said which report was kept) or by the
/// last report sent (the root did not know; increments in flight may be lost, never doubled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoverStats {
    pub exact: u64,
    pub by_last_sent: u64,
    /// Lost children whose kept report was rewound to the one the parent's own parent kept.
    pub rewound: u64,
    /// ... and those that could not be (the report was no longer at hand).
    pub not_rewound: u64,
}

/// A report sent up: its number, its net values, which children's reports it held, and its
/// carried part (cumulative series that a restart of the agent does not reset).
#[derive(Debug, Clone)]
struct Sent {
    seq: u64,
    net: MetricSet,
    holds: Vec<Hold>,
    carried: MetricSet,
}

/// What a killed or stopped agent leaves for its next start on the same boot: the parent it was
/// attached to and the carried part of its last reports there, by number. The next incarnation
/// owes the one that parent kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreviousLife {
    pub parent: String,
    pub sent: Vec<(u64, MetricSet)>,
}

/// A parent left behind whose keeping of us is not settled yet: what we sent it, by number.
#[derive(Debug, Clone)]
struct Unsettled {
    parent: String,
    sent: VecDeque<Sent>,
}

/// A child declared lost: which of its reports is kept in `frozen`, and its last reports, in case
/// that must be rewound to an earlier one (see the module documentation).
#[derive(Debug, Clone)]
struct LostChild {
    name: String,
    seq: Option<u64>,
    kept: MetricSet,
    reports: VecDeque<(u64, MetricSet)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An agent: has a parent, joins through the root.
    Agent,
    /// The top of the tree: no parent, never joins.
    Root,
}

/// What the shell must do for the node.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open a placement stream to the root and send this join; feed the answer (or the network
    /// error) back with [`Node::handle_join_reply`].
    SendJoin(Join),
    /// Connect to `peer` (verifying its certificate names it), send the attach, and feed the answer
    /// back with [`Node::handle_parent_msg`] or [`Node::handle_parent_failed`].
    ConnectParent { peer: Peer, attach: Attach },
    /// Send on the current parent link.
    ToParent(Msg),
    /// Close the current parent link (it is lost or left).
    CloseParent { reason: String },
    /// Send to a child.
    ToChild { child: String, msg: Msg },
    /// Close a child's link (it is lost or left).
    CloseChild { child: String, reason: String },
    /// Carry out a command addressed to this node that the tree does not handle itself (its
    /// scrapes, later its actions); hand the answer back with [`Node::answer_command`].
    Execute { id: u64, body: CommandBody },
}

/// Where a node stands toward its parent.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Asking the root for a place. `in_flight` while a join is outstanding.
    Joining {
        reason: JoinReason,
        next_at: u64,
        in_flight: bool,
        attempt: u32,
    },
    /// Connecting to the parent the root chose.
    Attaching { parent: Peer, gen: u64, since: u64 },
    /// In the tree.
    Attached { parent: Peer, gen: u64 },
    /// The root node.
    Top,
}

#[derive(Debug, Clone)]
struct ChildLink {
    height: u32,
    last_heard: u64,
    last_sent: u64,
    /// The child itself and every node below it, as it announced them.
    members: HashMap<String, Member>,
    report: Option<Report>,
    /// The child's last reports' net values by number (at most [`SENT_HISTORY`]).
    reports: VecDeque<(u64, MetricSet)>,
    /// The wave during which the child attached. Its report for that wave is kept but not counted:
    /// a child that moved here is still inside its old parent's report of that wave, and its
    /// gauges (which carry no debt) would be counted twice until the old path caught up.
    quiet_wave: u64,
}

/// A finished command as the root reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandReport {
    pub id: u64,
    pub body: CommandBody,
    /// Per answering node: the answer or its error, and the round trip in milliseconds.
    pub answers: BTreeMap<String, (Result<Answer, String>, u64)>,
    /// Targets that did not answer in time, or that are not in the tree.
    pub unreachable: BTreeSet<String>,
}

/// One target's answer, as it arrived at the root (see [`Node::start_command_until`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamedAnswer {
    pub id: u64,
    pub node: String,
    pub answer: Result<Answer, String>,
    pub rtt_ms: u64,
}

#[derive(Debug)]
struct PendingCommand {
    body: CommandBody,
    started: u64,
    deadline: u64,
    /// Answers also go to [`Node::poll_answer`] as they arrive.
    stream: bool,
    waiting: BTreeSet<String>,
    answers: BTreeMap<String, (Result<Answer, String>, u64)>,
    unreachable: BTreeSet<String>,
}

/// A wave as the root saw it complete.
#[derive(Debug, Clone, PartialEq)]
pub struct WaveDone {
    pub wave: u64,
    /// When the root forwarded (published) it.
    pub at_ms: u64,
    /// Whether every child had reported this wave (false: the deadline passed).
    pub complete: bool,
}

/// One node of the tree. See the module documentation.
#[derive(Debug)]
pub struct Node {
    name: String,
    addr: String,
    role: Role,
    cfg: TreeConfig,
    phase: Phase,
    depth: u32,
    root_epoch: u64,
    /// Parent link liveness (meaningful while attaching/attached).
    parent_heard: u64,
    parent_sent: u64,
    children: BTreeMap<String, ChildLink>,
    /// What this node last announced upward: name -> member.
    announced: HashMap<String, Member>,
    /// Changes to `announced` not yet sent up: the last state of each name (`None`: removed), so a
    /// removal and a re-appearance in one batch cannot be replayed in the wrong order.
    pending_members: BTreeMap<String, Option<Member>>,
    pending_lost: Vec<Lost>,
    /// How many of `pending_lost` (the first ones) went with the join in flight.
    lost_in_join: usize,
    /// Lost children told to the parent lately, and when: told again in a join that follows soon
    /// (the parent that was told may be the one that died).
    recent_lost: VecDeque<(u64, Lost)>,
    own: MetricSet,
    /// The part of `own` that a restart does not reset (cumulative series only).
    carried: MetricSet,
    /// Digests sampled here or received from children since the last report sent up.
    digests: Vec<Digest>,
    /// Root only: the latest digest of every node.
    latest_digests: HashMap<String, Digest>,
    frozen: MetricSet,
    debt: MetricSet,
    /// The reports sent to the current parent since attaching, by number, newest last (at most
    /// [`SENT_HISTORY`]): one of them becomes debt when the parent is lost.
    sent: VecDeque<Sent>,
    /// Children lost lately, newest last (at most [`SENT_HISTORY`]).
    lost_children: VecDeque<LostChild>,
    /// The number of the last report sent (rises over the node's life).
    seq: u64,
    /// A lost parent whose keeping of us is settled when the root places us again.
    unsettled: Option<Unsettled>,
    handovers: HandoverStats,
    /// The wave being assembled, and whether it has been sent.
    wave: u64,
    wave_sent: bool,
    wave_deadline: u64,
    next_wave_at: u64,
    actions: VecDeque<Action>,
    // Root only.
    next_command_id: u64,
    commands: BTreeMap<u64, PendingCommand>,
    finished_commands: VecDeque<CommandReport>,
    streamed: VecDeque<StreamedAnswer>,
    waves_done: VecDeque<WaveDone>,
    lost_events: VecDeque<Lost>,
    membership_events: VecDeque<MembershipDelta>,
    /// The root's seal over this node's current placement, shown to the parent at attach.
    grant: Sealed,
    grants: Grants,
    refused_claims: VecDeque<RefusedClaim>,
    refused_claims_total: u64,
}

impl Node {
    /// An agent that will ask the root for a place at `now`.
    pub fn new_agent(name: &str, addr: &str, cfg: TreeConfig, now: u64) -> Node {
        let mut node = Node::blank(name, addr, Role::Agent, cfg, now);
        node.phase = Phase::Joining {
            reason: JoinReason::Fresh,
            next_at: now,
            in_flight: false,
            attempt: 0,
        };
        node
    }

    /// The root node. `frozen` carries counters kept from before a restart.
    pub fn new_root(
        name: &str,
        cfg: TreeConfig,
        frozen: MetricSet,
        root_epoch: u64,
        now: u64,
    ) -> Node {
        let mut node = Node::blank(name, "", Role::Root, cfg, now);
        node.phase = Phase::Top;
        node.frozen = frozen.cumulative();
        node.root_epoch = root_epoch;
        node
    }

    fn blank(name: &str, addr: &str, role: Role, cfg: TreeConfig, now: u64) -> Node {
        let period = cfg.period_ms.max(1);
        Node {
            name: name.to_string(),
            addr: addr.to_string(),
            role,
            phase: Phase::Top,
            depth: 0,
            root_epoch: 0,
            parent_heard: now,
            parent_sent: now,
            children: BTreeMap::new(),
            announced: HashMap::new(),
            pending_members: BTreeMap::new(),
            pending_lost: Vec::new(),
            lost_in_join: 0,
            recent_lost: VecDeque::new(),
            own: MetricSet::new(),
            carried: MetricSet::new(),
            digests: Vec::new(),
            latest_digests: HashMap::new(),
            frozen: MetricSet::new(),
            debt: MetricSet::new(),
            sent: VecDeque::new(),
            lost_children: VecDeque::new(),
            seq: 0,
            unsettled: None,
            handovers: HandoverStats::default(),
            wave: now / period,
            wave_sent: true,
            wave_deadline: u64::MAX,
            next_wave_at: (now / period + 1) * period,
            actions: VecDeque::new(),
            next_command_id: 1,
            commands: BTreeMap::new(),
            finished_commands: VecDeque::new(),
            streamed: VecDeque::new(),
            waves_done: VecDeque::new(),
            lost_events: VecDeque::new(),
            membership_events: VecDeque::new(),
            grant: Sealed::default(),
            grants: Grants::default(),
            refused_claims: VecDeque::new(),
            refused_claims_total: 0,
            cfg,
        }
    }

    /// Checks every claimed member's grant with `check` from now on.
    pub fn set_grant_check(&mut self, check: Arc<dyn GrantCheck>) {
        self.grants = Grants(Some(check));
    }

    /// The next claim this node refused, for the shell to log.
    pub fn poll_refused_claim(&mut self) -> Option<RefusedClaim> {
        self.refused_claims.pop_front()
    }

    /// How many claims this node refused since it started.
    pub fn refused_claims_total(&self) -> u64 {
        self.refused_claims_total
    }

    fn refuse_claim(&mut self, by: &str, member: &str, reason: String) {
        self.refused_claims_total += 1;
        if self.refused_claims.len() >= REFUSED_CLAIMS_KEPT {
            self.refused_claims.pop_front();
        }
        self.refused_claims.push_back(RefusedClaim {
            by: by.to_string(),
            member: member.to_string(),
            reason,
        });
    }

    fn check_grant(&self, member: &Member) -> Result<(), String> {
        match &self.grants.0 {
            Some(check) => check.check(member),
            None => Ok(()),
        }
    }

    /// Of the members `by` claims, the ones to believe (see [`vet_claims`]); the others are
    /// recorded as refused.
    pub fn vet_claims(
        &mut self,
        by: &str,
        known: &HashMap<String, Member>,
        claims: Vec<Member>,
    ) -> Vec<Member> {
        let (believed, refused) = vet_claims(&self.grants, by, known, claims);
        for r in refused {
            self.refuse_claim(&r.by, &r.member, r.reason);
        }
        believed
    }

    // ----- Observers -------------------------------------------------------------------------

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn depth(&self) -> u32 {
        self.depth
    }

    pub fn config(&self) -> &TreeConfig {
        &self.cfg
    }

    /// The parent this node is attached to, if any.
    pub fn parent(&self) -> Option<&Peer> {
        match &self.phase {
            Phase::Attached { parent, .. } => Some(parent),
            _ => None,
        }
    }

    pub fn is_attached(&self) -> bool {
        matches!(self.phase, Phase::Attached { .. } | Phase::Top)
    }

    pub fn children(&self) -> impl Iterator<Item = &str> {
        self.children.keys().map(|s| s.as_str())
    }

    /// Height of this node's subtree (0 for a leaf).
    pub fn height(&self) -> u32 {
        self.children
            .values()
            .map(|c| c.height.saturating_add(1))
            .max()
            .unwrap_or(0)
    }

    /// Every node below this one, with its placement (the union of the children's subtrees).
    pub fn members(&self) -> &HashMap<String, Member> {
        &self.announced
    }

    /// Sum of this subtree's values: own, kept (frozen) and children's latest.
    pub fn gross(&self) -> MetricSet {
        let mut total = self.own.clone();
        total.merge(&self.frozen);
        for child in self.children.values() {
            if let Some(r) = child.report.as_ref().filter(|r| r.wave != child.quiet_wave) {
                total.merge(&r.net);
            }
        }
        total
    }

    /// What this node reports upward: gross minus what was already handed over elsewhere.
    pub fn net(&self) -> MetricSet {
        let mut net = self.gross();
        net.saturating_sub_cumulative(&self.debt);
        net
    }

    /// Counters kept from departed children (and from before a root restart).
    pub fn frozen(&self) -> &MetricSet {
        &self.frozen
    }

    /// Which report of each child [`Node::gross`] folds in.
    pub fn holds(&self) -> Vec<Hold> {
        let mut holds = Vec::with_capacity(self.children.len());
        for (name, link) in &self.children {
            let counted = link.report.as_ref().filter(|r| r.wave != link.quiet_wave);
            holds.push(Hold {
                node: name.clone(),
                under: self.name.clone(),
                seq: counted.map(|r| r.seq),
            });
        }
        holds
    }

    /// [`Node::holds`], and for each child the reports of its own children that its report held:
    /// what a restarted root must know for the grandchildren it finds orphaned by a death during
    /// its absence.
    pub fn holds_two_levels(&self) -> Vec<Hold> {
        let mut holds = self.holds();
        for (name, link) in &self.children {
            if let Some(r) = link.report.as_ref().filter(|r| r.wave != link.quiet_wave) {
                holds.extend(r.holds.iter().filter(|h| &h.under == name).take(2).cloned());
            }
        }
        holds
    }

    /// How this node settled what it owed each time it lost a parent.
    pub fn handovers(&self) -> HandoverStats {
        self.handovers
    }

    pub fn root_epoch(&self) -> u64 {
        self.root_epoch
    }

    /// Replaces this node's own sample; it goes into the next report.
    pub fn set_own(&mut self, own: MetricSet) {
        self.own = own;
    }

    /// The series of the own sample that an agent restart does not reset (counters it reads as
    /// absolute values); each report remembers them for [`Node::previous_life`].
    pub fn set_carried(&mut self, carried: &MetricSet) {
        self.carried = carried.cumulative();
    }

    /// The number of the last report sent (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// What the next incarnation of this agent must owe if it is killed now: the carried part of
    /// the reports sent to the current parent, or to the lost one not settled yet. None when
    /// nothing is carried (or before the first parent).
    pub fn previous_life(&self) -> Option<PreviousLife> {
        // Between parents, what is owed is still what the lost one kept.
        let (parent, sent) = match (&self.phase, &self.unsettled) {
            (Phase::Attached { parent, .. }, _) => (&parent.name, &self.sent),
            (_, Some(lost)) => (&lost.parent, &lost.sent),
            _ => return None,
        };
        if sent.iter().all(|s| s.carried.is_empty()) {
            return None;
        }
        Some(PreviousLife {
            parent: parent.clone(),
            sent: sent.iter().map(|s| (s.seq, s.carried.clone())).collect(),
        })
    }

    /// Starts a restarted agent from what its previous incarnation left: it joins as an orphan of
    /// that parent and, once placed, owes the carried part of the report the parent kept (or of
    /// its last report without word from the root). Report numbers go on from the old ones.
    /// Only before the first join.
    pub fn resume(&mut self, now: u64, life: PreviousLife) {
        if self.role != Role::Agent || self.seq != 0 || self.unsettled.is_some() {
            return;
        }
        self.seq = life.sent.iter().map(|(seq, _)| *seq).max().unwrap_or(0);
        let parent = life.parent;
        self.unsettled = Some(Unsettled {
            parent: parent.clone(),
            sent: life
                .sent
                .into_iter()
                .map(|(seq, carried)| Sent {
                    seq,
                    net: carried.cumulative(),
                    holds: Vec::new(),
                    // Killed again before it is placed: the next run still owes the same.
                    carried,
                })
                .collect(),
        });
        self.rejoin(now, JoinReason::ParentLost { parent });
    }

    /// Replaces this node's own values between waves and, when this wave already went up, sends
    /// the update now as a late report of the same wave (reports are cumulative, so a second one
    /// is safe). Used when something the root waits for happened, like a job's last rank ending
    /// here, so the root need not wait for the next period.
    pub fn refresh_own(&mut self, now: u64, own: MetricSet) {
        self.own = own;
        if self.wave_sent
            && self.role == Role::Agent
            && matches!(self.phase, Phase::Attached { .. })
        {
            self.send_report(now);
        }
    }

    /// Queues this node's digest for the next report.
    pub fn push_digest(&mut self, digest: Digest) {
        self.take_digest(digest);
    }

    fn take_digest(&mut self, digest: Digest) {
        match self.role {
            Role::Root => {
                self.latest_digests.insert(digest.name.clone(), digest);
            }
            Role::Agent => {
                // A parent that is gone for long must not make us hoard digests: keep the newest
                // per node only.
                // (At least 64: right after an attach nothing is announced yet, and the
                // subtree's first digests must not be dropped.)
                if self.digests.len() > (4 * (self.announced.len() + 1)).max(64) {
                    self.digests.clear();
                }
                self.digests.push(digest);
            }
        }
    }

    /// Root only: the latest digest of every node that reported one.
    pub fn latest_digests(&self) -> &HashMap<String, Digest> {
        &self.latest_digests
    }

    pub fn own(&self) -> &MetricSet {
        &self.own
    }

    /// When the next wave starts (the shell samples the node just before it).
    pub fn next_wave_at(&self) -> u64 {
        self.next_wave_at
    }

    /// The earliest time at which [`Node::on_timeout`] has something to do.
    pub fn next_timeout(&self) -> u64 {
        let mut t = self.next_wave_at;
        if !self.wave_sent {
            t = t.min(self.wave_deadline);
        }
        let hb = self.cfg.heartbeat_ms;
        let dead = self.cfg.dead_after_ms;
        for c in self.children.values() {
            t = t.min(c.last_sent + hb).min(c.last_heard + dead + 1);
        }
        match &self.phase {
            Phase::Joining {
                next_at, in_flight, ..
            } => {
                if !in_flight {
                    t = t.min(*next_at);
                }
            }
            Phase::Attaching { since, .. } => t = t.min(since + dead + 1),
            Phase::Attached { .. } => {
                t = t
                    .min(self.parent_sent + hb)
                    .min(self.parent_heard + dead + 1)
            }
            Phase::Top => {}
        }
        if let Some(d) = self.commands.values().map(|c| c.deadline).min() {
            t = t.min(d);
        }
        t
    }

    /// The next action for the shell.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Root only: commands that finished (all answered or timed out).
    /// Root only: takes a streamed answer as `node`'s answer to command `id` (the shell found it
    /// genuine); the command's report comes once every target has one or the deadline passes.
    /// Answers the shell does not settle leave their target waiting.
    pub fn settle_answer(&mut self, now: u64, id: u64, node: &str, answer: Result<Answer, String>) {
        if let Some(p) = self.commands.get_mut(&id) {
            if p.waiting.remove(node) {
                let rtt = now.saturating_sub(p.started);
                p.answers.insert(node.to_string(), (answer, rtt));
            }
        }
        self.finish_command_if_done(id);
    }

    /// Root only: the next answer to a command started with `stream`, in arrival order.
    pub fn poll_answer(&mut self) -> Option<StreamedAnswer> {
        self.streamed.pop_front()
    }

    pub fn poll_command_report(&mut self) -> Option<CommandReport> {
        self.finished_commands.pop_front()
    }

    /// Root only: waves as they complete.
    pub fn poll_wave(&mut self) -> Option<WaveDone> {
        self.waves_done.pop_front()
    }

    /// Root only: children that a parent declared lost, with what it kept of them.
    pub fn poll_lost(&mut self) -> Option<Lost> {
        self.lost_events.pop_front()
    }

    /// Root only: changes to the membership of the whole tree, in order.
    pub fn poll_membership(&mut self) -> Option<MembershipDelta> {
        self.membership_events.pop_front()
    }

    // ----- Time ------------------------------------------------------------------------------

    /// Runs everything due at `now`: waves, deadlines, heartbeats, loss detection, join retries.
    pub fn on_timeout(&mut self, now: u64) {
        let period = self.cfg.period_ms.max(1);
        if now >= self.next_wave_at {
            self.start_wave(now / period, now);
            self.next_wave_at = (now / period + 1) * period;
        }
        if !self.wave_sent && now >= self.wave_deadline {
            self.send_wave(now, false);
        }
        self.check_children(now);
        self.check_parent(now);
        self.expire_commands(now);
    }

    fn start_wave(&mut self, wave: u64, now: u64) {
        if !self.wave_sent && self.wave < wave {
            // The previous wave never completed; send what we have before starting the next.
            self.send_wave(now, false);
        }
        self.wave = wave;
        self.wave_sent = false;
        let budget = (self.height() as u64 * self.cfg.hop_budget_ms).min(self.cfg.period_ms / 2);
        self.wave_deadline = now + budget;
        if self.children_done() {
            self.send_wave(now, true);
        }
    }

    fn children_done(&self) -> bool {
        self.children
            .values()
            .all(|c| c.report.as_ref().is_some_and(|r| r.wave >= self.wave))
    }

    fn send_wave(&mut self, now: u64, complete: bool) {
        self.wave_sent = true;
        match self.role {
            Role::Root => self.waves_done.push_back(WaveDone {
                wave: self.wave,
                at_ms: now,
                complete,
            }),
            Role::Agent => {
                if matches!(self.phase, Phase::Attached { .. }) {
                    self.send_report(now);
                }
            }
        }
    }

    /// Sends the current wave's report up and remembers its net values by number: one of them is
    /// what the parent keeps of us, which becomes debt if we lose it.
    fn send_report(&mut self, now: u64) {
        self.seq += 1;
        let report = Report {
            wave: self.wave,
            seq: self.seq,
            height: self.height(),
            net: self.net(),
            holds: self.holds(),
            digests: std::mem::take(&mut self.digests),
        };
        if self.sent.len() >= SENT_HISTORY {
            self.sent.pop_front();
        }
        self.sent.push_back(Sent {
            seq: self.seq,
            net: report.net.clone(),
            holds: report.holds.clone(),
            carried: self.carried.clone(),
        });
        self.send_parent(now, Msg::Report(report));
    }

    fn check_children(&mut self, now: u64) {
        let hb = self.cfg.heartbeat_ms;
        let dead_after = self.cfg.dead_after_ms;
        let dead: Vec<String> = self
            .children
            .iter()
            .filter(|(_, c)| now > c.last_heard + dead_after)
            .map(|(n, _)| n.clone())
            .collect();
        for child in dead {
            self.lose_child(now, &child, None, "silent for too long");
        }
        let depth = self.depth + 1;
        let due: Vec<String> = self
            .children
            .iter()
            .filter(|(_, c)| now >= c.last_sent + hb)
            .map(|(n, _)| n.clone())
            .collect();
        for child in due {
            self.send_child(now, &child, Msg::Heartbeat { depth });
        }
    }

    fn check_parent(&mut self, now: u64) {
        let dead_after = self.cfg.dead_after_ms;
        match self.phase.clone() {
            Phase::Joining {
                reason,
                next_at,
                in_flight,
                attempt,
            } => {
                if !in_flight && now >= next_at {
                    self.phase = Phase::Joining {
                        reason: reason.clone(),
                        next_at,
                        in_flight: true,
                        attempt,
                    };
                    let join = Join {
                        name: self.name.clone(),
                        addr: self.addr.clone(),
                        reason,
                        height: self.height(),
                        subtree: self.announced.values().cloned().collect(),
                        lost: self.lost_to_tell(now),
                    };
                    self.lost_in_join = self.pending_lost.len();
                    self.actions.push_back(Action::SendJoin(join));
                }
            }
            Phase::Attaching { parent, since, .. } => {
                if now > since + dead_after {
                    self.actions.push_back(Action::CloseParent {
                        reason: "no answer to attach".into(),
                    });
                    self.rejoin(
                        now,
                        JoinReason::ParentRefused {
                            parent: parent.name,
                            reason: "no answer to attach".into(),
                        },
                    );
                }
            }
            Phase::Attached { parent, .. } => {
                if now > self.parent_heard + dead_after {
                    self.leave_parent(now, "silent for too long");
                    self.rejoin(
                        now,
                        JoinReason::ParentLost {
                            parent: parent.name,
                        },
                    );
                } else if now >= self.parent_sent + self.cfg.heartbeat_ms {
                    let depth = self.depth;
                    self.send_parent(now, Msg::Heartbeat { depth });
                }
            }
            Phase::Top => {}
        }
    }

    // ----- Parent side of a link (this node is the child) ------------------------------------

    /// Answer of the root to our join, or `Err` with a network error.
    pub fn handle_join_reply(
        &mut self,
        now: u64,
        reply: Result<Msg, String>,
    ) -> Result<(), String> {
        let Phase::Joining {
            reason, attempt, ..
        } = self.phase.clone()
        else {
            return Ok(()); // a late answer to an abandoned join
        };
        match reply {
            Ok(Msg::Placed(Placement {
                parent,
                gen,
                root_epoch,
                kept,
                grant,
            })) => {
                if self.is_self_or_below(&parent.name) {
                    // The root's view is stale: that parent is inside our own subtree.
                    self.rejoin(
                        now,
                        JoinReason::ParentRefused {
                            parent: parent.name,
                            reason: "placed under its own subtree".into(),
                        },
                    );
                    return Ok(());
                }
                self.root_epoch = root_epoch;
                // The root has our join, and with it the children we had lost when we sent it
                // (more may have been lost since: they go up once we are attached).
                let told = self.lost_in_join.min(self.pending_lost.len());
                self.pending_lost.drain(..told);
                self.lost_in_join = 0;
                self.settle(kept);
                self.grant = grant;
                self.attach_to(now, parent, gen);
                Ok(())
            }
            Ok(Msg::Retry { after_ms, .. }) => {
                self.phase = Phase::Joining {
                    reason,
                    next_at: now + after_ms as u64,
                    in_flight: false,
                    attempt,
                };
                Ok(())
            }
            Ok(Msg::Refused { reason }) => Err(reason),
            // An answer that makes no sense is treated like a network error: try again later.
            Ok(_) | Err(_) => {
                self.retry_later(now, reason, attempt);
                Ok(())
            }
        }
    }

    fn retry_later(&mut self, now: u64, reason: JoinReason, attempt: u32) {
        let backoff = self
            .cfg
            .join_backoff_min_ms
            .saturating_mul(1u64 << attempt.min(16))
            .min(self.cfg.join_backoff_max_ms);
        // Spread retries of many agents (deterministically, from the name).
        let jitter = fnv(&self.name) % (backoff / 4 + 1);
        self.phase = Phase::Joining {
            reason,
            next_at: now + backoff + jitter,
            in_flight: false,
            attempt: attempt + 1,
        };
    }

    /// The link to the parent (or the parent we were attaching to) failed.
    pub fn handle_parent_failed(&mut self, now: u64, why: &str) {
        match self.phase.clone() {
            Phase::Attaching { parent, .. } => self.rejoin(
                now,
                JoinReason::ParentRefused {
                    parent: parent.name,
                    reason: why.to_string(),
                },
            ),
            Phase::Attached { parent, .. } => {
                self.leave_parent(now, why);
                self.rejoin(
                    now,
                    JoinReason::ParentLost {
                        parent: parent.name,
                    },
                );
            }
            _ => {}
        }
    }

    /// A message from the parent (or from the parent we are attaching to).
    pub fn handle_parent_msg(&mut self, now: u64, msg: Msg) {
        match (&self.phase, msg) {
            (Phase::Attaching { parent, gen, .. }, Msg::Accepted { depth, root_epoch }) => {
                let (parent, gen) = (parent.clone(), *gen);
                self.phase = Phase::Attached { parent, gen };
                self.depth = depth;
                self.root_epoch = root_epoch;
                self.parent_heard = now;
                // Give the new parent our values at once rather than a period later.
                self.send_report(now);
                // Changes below us since the attach was written.
                self.flush_delta(now);
            }
            (Phase::Attaching { parent, .. }, Msg::Refused { reason }) => {
                let parent = parent.name.clone();
                self.actions.push_back(Action::CloseParent {
                    reason: reason.clone(),
                });
                self.rejoin(now, JoinReason::ParentRefused { parent, reason });
            }
            (Phase::Attached { .. }, Msg::Heartbeat { depth }) => {
                self.parent_heard = now;
                self.depth = depth;
            }
            (Phase::Attached { .. }, Msg::Command(cmd)) => {
                self.parent_heard = now;
                self.handle_command(now, cmd);
            }
            (Phase::Attached { .. }, _) => self.parent_heard = now,
            _ => {}
        }
    }

    /// Leaves a parent found lost. One of the reports sent there stays counted in the tree and
    /// becomes debt; which one is settled when the root places us ([`Node::settle`]).
    fn leave_parent(&mut self, _now: u64, reason: &str) {
        if let Phase::Attached { parent, .. } = &self.phase {
            let parent = parent.name.clone();
            // Never two at once: an unsettled parent is settled before attaching to the next.
            self.settle(None);
            self.unsettled = Some(Unsettled {
                parent,
                sent: std::mem::take(&mut self.sent),
            });
        }
        self.actions.push_back(Action::CloseParent {
            reason: reason.to_string(),
        });
    }

    /// Takes on as debt what the lost parent's side of the tree kept of us: the report `kept`
    /// names when the root knew it, else the last report sent.
    fn settle(&mut self, kept: Option<Hold>) {
        let Some(lost) = self.unsettled.take() else {
            return;
        };
        let named = kept
            .filter(|h| h.node == self.name && h.under == lost.parent)
            .and_then(|h| match h.seq {
                None => Some(None),
                Some(seq) => lost.sent.iter().find(|s| s.seq == seq).map(Some),
            });
        let owed = match named {
            Some(kept) => {
                self.handovers.exact += 1;
                if let Some(kept) = kept {
                    let holds = kept.holds.clone();
                    self.rewind_lost_children(&holds);
                }
                kept.map(|k| k.net.clone()).unwrap_or_default()
            }
            None => {
                self.handovers.by_last_sent += 1;
                lost.sent.back().map(|s| s.net.clone()).unwrap_or_default()
            }
        };
        self.debt.merge(&owed.cumulative());
    }

    /// Our parent kept a report of ours that held `holds`. A child we lost after sending it was
    /// told (by the root) to owe the report of it listed there, not the later one we froze: keep
    /// that one instead, or its increments in between would be counted twice.
    fn rewind_lost_children(&mut self, holds: &[Hold]) {
        for h in holds.iter().filter(|h| h.under == self.name) {
            let Some(lc) = self
                .lost_children
                .iter_mut()
                .rev()
                .find(|c| c.name == h.node)
            else {
                continue;
            };
            if lc.seq == h.seq {
                continue;
            }
            let want = match h.seq {
                None => Some(MetricSet::new()),
                Some(seq) => lc
                    .reports
                    .iter()
                    .find(|(s, _)| *s == seq)
                    .map(|(_, net)| net.cumulative()),
            };
            match want {
                Some(want) => {
                    self.frozen.saturating_sub_cumulative(&lc.kept);
                    self.frozen.merge(&want);
                    lc.kept = want;
                    lc.seq = h.seq;
                    self.handovers.rewound += 1;
                }
                None => self.handovers.not_rewound += 1,
            }
        }
    }

    fn rejoin(&mut self, now: u64, reason: JoinReason) {
        self.phase = Phase::Joining {
            reason,
            next_at: now,
            in_flight: false,
            attempt: 0,
        };
        // Nothing is sent upward while joining; the next attach carries the whole subtree.
        self.clear_pending();
        self.check_parent(now);
    }

    fn send_parent(&mut self, now: u64, msg: Msg) {
        self.parent_sent = now;
        self.actions.push_back(Action::ToParent(msg));
    }

    // ----- Child side of a link (this node is the parent) ------------------------------------

    /// A child asks to attach. The shell has checked that its certificate carries `attach.name`.
    /// Returns the answer to send on the child's stream.
    pub fn handle_attach(&mut self, now: u64, attach: Attach) -> Msg {
        if attach.name == self.name {
            return Msg::Refused {
                reason: "a node cannot attach to itself".into(),
            };
        }
        if let Some(p) = self.parent() {
            if p.name == attach.name {
                return Msg::Refused {
                    reason: format!("{} is this node's parent", attach.name),
                };
            }
        }
        if !self.children.contains_key(&attach.name) && self.children.len() >= 2 {
            return Msg::Refused {
                reason: format!("{} already has two children", self.name),
            };
        }
        let own = Member {
            name: attach.name.clone(),
            parent: self.name.clone(),
            addr: attach.addr.clone(),
            gen: attach.gen,
            grant: attach.grant,
        };
        if let Err(e) = self.check_grant(&own) {
            let reason = format!(
                "{} was not placed under {} by the root ({e}); ask the root for a place",
                attach.name, self.name
            );
            self.refuse_claim(&attach.name, &attach.name, reason.clone());
            return Msg::Refused { reason };
        }
        if self.children.contains_key(&attach.name) {
            // The child came back before we noticed it had gone: settle the old link first.
            self.lose_child(now, &attach.name, None, "re-attached");
        }
        let claims: Vec<Member> = attach
            .subtree
            .into_iter()
            .filter(|m| m.name != self.name && m.name != attach.name)
            .collect();
        let mut members: HashMap<String, Member> = self
            .vet_claims(&attach.name, &HashMap::new(), claims)
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .collect();
        members.insert(attach.name.clone(), own);
        let names: Vec<String> = members.keys().cloned().collect();
        self.children.insert(
            attach.name.clone(),
            ChildLink {
                height: attach.height,
                last_heard: now,
                last_sent: now,
                members,
                report: None,
                reports: VecDeque::new(),
                quiet_wave: self.wave,
            },
        );
        self.refresh_union(now, names);
        Msg::Accepted {
            depth: self.depth + 1,
            root_epoch: self.root_epoch,
        }
    }

    /// A message from an attached child.
    pub fn handle_child_msg(&mut self, now: u64, child: &str, msg: Msg) {
        let Some(link) = self.children.get_mut(child) else {
            return;
        };
        link.last_heard = now;
        // The child's reports and heartbeats are answered here rather than on a timer of our own:
        // the answer leaves while its packet is being handled (it carries the transport's
        // acknowledgement too), and every child of this node hears it at the same wave.
        if matches!(msg, Msg::Heartbeat { .. } | Msg::Report(_))
            && now >= link.last_sent + self.cfg.heartbeat_ms / 2
        {
            let depth = self.depth + 1;
            self.send_child(now, child, Msg::Heartbeat { depth });
        }
        let Some(link) = self.children.get_mut(child) else {
            return;
        };
        match msg {
            Msg::Heartbeat { .. } => {}
            Msg::Report(mut report) => {
                link.height = report.height;
                // A child speaks only for its own subtree: digests of other names are dropped, so
                // no child can fill the root's node table with made-up nodes.
                let digests: Vec<Digest> = std::mem::take(&mut report.digests)
                    .into_iter()
                    .filter(|d| link.members.contains_key(&d.name))
                    .collect();
                // Its holds name its own children, two at most: anything else is not passed on
                // (a lost child's holds travel up to the root).
                report.holds.retain(|h| h.under == child);
                report.holds.truncate(2);
                let newer = link.report.as_ref().is_none_or(|r| report.wave >= r.wave);
                // Late: a report of the current wave arriving after this node sent that wave up
                // (first-hand, or itself a late update from further down).
                let late = report.wave == self.wave;
                if newer {
                    if link.reports.len() >= SENT_HISTORY {
                        link.reports.pop_front();
                    }
                    link.reports.push_back((report.seq, report.net.clone()));
                    link.report = Some(report);
                }
                for d in digests {
                    self.take_digest(d);
                }
                if !self.wave_sent && self.children_done() {
                    self.send_wave(now, true);
                } else if self.wave_sent && late && self.role == Role::Agent {
                    // The wave went up without this child (its deadline passed): send the update
                    // now rather than a period later. Reports are cumulative, so a second one for
                    // the same wave is safe.
                    self.send_wave(now, true);
                }
            }
            Msg::Membership(delta) => self.apply_child_delta(now, child, delta),
            Msg::Detach { last } => {
                self.lose_child(now, child, Some(last), "moved");
            }
            Msg::Outcome(outcome) => self.handle_outcome(now, outcome),
            _ => {}
        }
    }

    /// The shell saw a child's link end.
    pub fn handle_child_gone(&mut self, now: u64, child: &str, why: &str) {
        if self.children.contains_key(child) {
            self.lose_child(now, child, None, why);
        }
    }

    fn lose_child(&mut self, now: u64, child: &str, handed_over: Option<MetricSet>, why: &str) {
        let Some(link) = self.children.remove(child) else {
            return;
        };
        // The child's last net values stay counted here; if it lives, it now owes them.
        let (kept, seq, holds) = match (handed_over, link.report) {
            (Some(last), _) => (last, None, Vec::new()),
            (None, Some(r)) => (r.net, Some(r.seq), r.holds),
            (None, None) => (MetricSet::new(), None, Vec::new()),
        };
        let kept = kept.cumulative();
        self.frozen.merge(&kept);
        if why != "moved" {
            if self.lost_children.len() >= SENT_HISTORY {
                self.lost_children.pop_front();
            }
            self.lost_children.push_back(LostChild {
                name: child.to_string(),
                seq,
                kept,
                reports: link.reports,
            });
        }
        if why != "moved" && why != "re-attached" {
            self.pending_lost.push(Lost {
                parent: self.name.clone(),
                child: child.to_string(),
                seq,
                holds,
            });
        }
        // A child that re-attached is on a new link, which the shell keeps under the same name:
        // closing "the child's link" now would close the new one. The old link ends by itself.
        if why != "re-attached" {
            self.actions.push_back(Action::CloseChild {
                child: child.to_string(),
                reason: why.to_string(),
            });
        }
        let names: Vec<String> = link.members.into_keys().collect();
        self.refresh_union(now, names);
        // Commands waiting on that subtree will time out at the root; nothing to do here.
        if !self.wave_sent && self.children_done() {
            self.send_wave(now, true);
        } else if self.wave_sent && self.role == Role::Agent && why != "re-attached" {
            // The wave already went up with the child in it: correct it now, before the child
            // shows up under its new parent, so its gauges are never counted on two paths.
            self.send_wave(now, true);
        }
    }

    fn apply_child_delta(&mut self, now: u64, child: &str, delta: MembershipDelta) {
        let Some(link) = self.children.get(child) else {
            return;
        };
        // A child does not re-place itself, nor us.
        let claims: Vec<Member> = delta
            .upsert
            .into_iter()
            .filter(|m| m.name != child && m.name != self.name)
            .collect();
        let (believed, refused) = vet_claims(&self.grants, child, &link.members, claims);
        for r in refused {
            self.refuse_claim(&r.by, &r.member, r.reason);
        }
        let Some(link) = self.children.get_mut(child) else {
            return;
        };
        let mut touched = Vec::with_capacity(believed.len() + delta.remove.len());
        for m in believed {
            touched.push(m.name.clone());
            link.members.insert(m.name.clone(), m);
        }
        // A child speaks only for its own subtree: losses declared by a node outside it are
        // dropped (checked before the removals, which may take out the node that declared one).
        let lost: Vec<Lost> = delta
            .lost
            .into_iter()
            .filter(|l| l.parent == child || link.members.contains_key(&l.parent))
            .collect();
        for name in delta.remove {
            if name == child {
                continue;
            }
            link.members.remove(&name);
            touched.push(name);
        }
        self.pending_lost.extend(lost);
        self.refresh_union(now, touched);
    }

    /// Recomputes the union view for `names` and queues what changed for the parent.
    fn refresh_union(&mut self, now: u64, names: Vec<String>) {
        for name in names {
            let best = self
                .children
                .values()
                .filter_map(|c| c.members.get(&name))
                .max_by_key(|m| m.gen)
                .cloned();
            match best {
                Some(m) => {
                    if self.announced.get(&name) != Some(&m) {
                        self.announced.insert(name.clone(), m.clone());
                        self.pending_members.insert(name, Some(m));
                    }
                }
                None => {
                    if self.announced.remove(&name).is_some() {
                        self.pending_members.insert(name, None);
                    }
                }
            }
        }
        self.flush_delta(now);
    }

    /// The lost children a join tells the root of: those not told anyone yet, and those told a
    /// parent lately.
    fn lost_to_tell(&mut self, now: u64) -> Vec<Lost> {
        self.forget_old_losses(now);
        let mut lost = self.pending_lost.clone();
        lost.extend(self.recent_lost.iter().map(|(_, l)| l.clone()));
        lost
    }

    fn forget_old_losses(&mut self, now: u64) {
        while self
            .recent_lost
            .front()
            .is_some_and(|(at, _)| now > at + RETELL_LOST_MS)
        {
            self.recent_lost.pop_front();
        }
    }

    /// Drops membership changes not sent up: the next attach carries the whole subtree. Lost
    /// children are kept: they go to the root with the next join, or up once attached.
    fn clear_pending(&mut self) {
        self.pending_members.clear();
    }

    fn take_pending(&mut self) -> MembershipDelta {
        let mut delta = MembershipDelta {
            lost: std::mem::take(&mut self.pending_lost),
            ..MembershipDelta::default()
        };
        for (name, m) in std::mem::take(&mut self.pending_members) {
            match m {
                Some(m) => delta.upsert.push(m),
                None => delta.remove.push(name),
            }
        }
        delta
    }

    fn flush_delta(&mut self, now: u64) {
        if self.pending_members.is_empty() && self.pending_lost.is_empty() {
            return;
        }
        match self.role {
            Role::Root => {
                let delta = self.take_pending();
                self.lost_events.extend(delta.lost.iter().cloned());
                self.membership_events.push_back(delta);
            }
            Role::Agent => match self.phase {
                Phase::Attached { .. } => {
                    let delta = self.take_pending();
                    // The parent (or a node above it) may die before passing these losses on,
                    // ours and those relayed from below: they go with our next join too if we
                    // are orphaned soon after (the root believes those of our own children and
                    // of the nodes it placed below us).
                    self.forget_old_losses(now);
                    self.recent_lost
                        .extend(delta.lost.iter().map(|l| (now, l.clone())));
                    while self.recent_lost.len() > MAX_RECENT_LOST {
                        self.recent_lost.pop_front();
                    }
                    self.send_parent(now, Msg::Membership(delta));
                }
                // Sent once the parent accepts us: the attach already went out without them.
                Phase::Attaching { .. } => {}
                // The next attach carries the whole subtree; lost children go with the next join.
                _ => self.clear_pending(),
            },
        }
    }

    fn send_child(&mut self, now: u64, child: &str, msg: Msg) {
        if let Some(link) = self.children.get_mut(child) {
            link.last_sent = now;
            self.actions.push_back(Action::ToChild {
                child: child.to_string(),
                msg,
            });
        }
    }

    // ----- Commands --------------------------------------------------------------------------

    /// Root only: sends `body` to `targets`; the report comes out of [`Node::poll_command_report`].
    pub fn start_command(&mut self, now: u64, targets: &[String], body: CommandBody) -> u64 {
        let deadline = now + self.cfg.command_timeout_ms;
        self.start_command_until(now, targets, body, deadline, false)
    }

    /// Root only: like [`Node::start_command`], with its own deadline (an action may run for
    /// minutes). With `stream`, every answer comes out of [`Node::poll_answer`] as it arrives, and
    /// counts only once the shell settles it ([`Node::settle_answer`]): the shell checks answers
    /// that the tree cannot (signatures), so that progress is shown and forgeries refused.
    pub fn start_command_until(
        &mut self,
        now: u64,
        targets: &[String],
        body: CommandBody,
        deadline: u64,
        stream: bool,
    ) -> u64 {
        let id = self.next_command_id;
        self.next_command_id += 1;
        let mut pending = PendingCommand {
            body: body.clone(),
            started: now,
            deadline,
            stream,
            waiting: BTreeSet::new(),
            answers: BTreeMap::new(),
            unreachable: BTreeSet::new(),
        };
        for t in targets {
            if self.announced.contains_key(t) {
                pending.waiting.insert(t.clone());
            } else {
                pending.unreachable.insert(t.clone());
            }
        }
        let routed: Vec<String> = pending.waiting.iter().cloned().collect();
        self.commands.insert(id, pending);
        self.route_command(
            now,
            Command {
                id,
                targets: routed,
                body,
            },
        );
        self.finish_command_if_done(id);
        id
    }

    fn handle_command(&mut self, now: u64, cmd: Command) {
        let mine = cmd.targets.iter().any(|t| t == &self.name);
        let unknown: Vec<String> = cmd
            .targets
            .iter()
            .filter(|t| *t != &self.name && !self.announced.contains_key(*t))
            .cloned()
            .collect();
        self.route_command(now, cmd.clone());
        let mut results: Vec<(String, Result<Answer, String>)> = unknown
            .into_iter()
            .map(|t| (t, Err(format!("not below {}", self.name))))
            .collect();
        if mine {
            if Self::is_delegated(&cmd.body) {
                self.actions.push_back(Action::Execute {
                    id: cmd.id,
                    body: cmd.body.clone(),
                });
            } else {
                let answer = self.execute(now, &cmd.body);
                results.push((self.name.clone(), answer));
            }
        }
        if !results.is_empty() {
            self.send_parent(
                now,
                Msg::Outcome(Outcome {
                    id: cmd.id,
                    results,
                }),
            );
        }
        if mine {
            if let CommandBody::Move { parent, gen, grant } = cmd.body {
                self.move_to(now, parent, gen, grant);
            }
        }
    }

    /// Sends each child the part of the command whose targets live in its subtree.
    fn route_command(&mut self, now: u64, cmd: Command) {
        let mut per_child: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in &cmd.targets {
            // Two children may both list a node for a moment (it moved): the newer placement wins.
            let via = self
                .children
                .iter()
                .filter_map(|(child, link)| link.members.get(t).map(|m| (m.gen, child)))
                .max_by_key(|(gen, _)| *gen);
            if let Some((_, child)) = via {
                per_child.entry(child.clone()).or_default().push(t.clone());
            }
        }
        for (child, targets) in per_child {
            self.send_child(
                now,
                &child,
                Msg::Command(Command {
                    id: cmd.id,
                    targets,
                    body: cmd.body.clone(),
                }),
            );
        }
    }

    /// Commands the shell carries out ([`Action::Execute`]) rather than the tree.
    fn is_delegated(body: &CommandBody) -> bool {
        matches!(
            body,
            CommandBody::Scrape(_)
                | CommandBody::Query(Query::Scrapes | Query::Inventory { .. })
                | CommandBody::ForgetJob(_)
                | CommandBody::Action(_)
                | CommandBody::ConsoleInput(_)
        )
    }

    /// Drops every series of a finished job from what this node holds (its own sample, kept
    /// values, debt, children's reports), so finished jobs stop travelling up the tree. The root
    /// ignores a finished job's series that are still in flight.
    pub fn forget_job(&mut self, job: &str) {
        use banyan_protocol::job::remove_job;
        remove_job(&mut self.own, job);
        remove_job(&mut self.frozen, job);
        remove_job(&mut self.debt, job);
        for s in self.sent.iter_mut() {
            remove_job(&mut s.net, job);
        }
        if let Some(u) = self.unsettled.as_mut() {
            for s in u.sent.iter_mut() {
                remove_job(&mut s.net, job);
            }
        }
        for c in self.lost_children.iter_mut() {
            remove_job(&mut c.kept, job);
            for (_, net) in c.reports.iter_mut() {
                remove_job(net, job);
            }
        }
        for link in self.children.values_mut() {
            if let Some(r) = link.report.as_mut() {
                remove_job(&mut r.net, job);
            }
            for (_, net) in link.reports.iter_mut() {
                remove_job(net, job);
            }
        }
    }

    /// The shell's answer to an [`Action::Execute`]; it goes up like any other result.
    pub fn answer_command(&mut self, now: u64, id: u64, answer: Result<Answer, String>) {
        self.send_parent(
            now,
            Msg::Outcome(Outcome {
                id,
                results: vec![(self.name.clone(), answer)],
            }),
        );
    }

    fn execute(&mut self, _now: u64, body: &CommandBody) -> Result<Answer, String> {
        match body {
            CommandBody::Scrape(_)
            | CommandBody::Query(Query::Scrapes | Query::Inventory { .. })
            | CommandBody::ForgetJob(_)
            | CommandBody::Action(_)
            | CommandBody::ConsoleInput(_) => Err("not carried out by the tree".into()),
            CommandBody::Ping => Ok(Answer::Pong),
            CommandBody::Query(Query::NodeMetrics) => Ok(Answer::Metrics(self.own.clone())),
            CommandBody::Move { parent, .. } => {
                if !matches!(self.phase, Phase::Attached { .. }) {
                    Err("not attached; it will be placed when it rejoins".into())
                } else if self.is_self_or_below(&parent.name) {
                    Err(format!("{} is inside this node's subtree", parent.name))
                } else {
                    Ok(Answer::Moving)
                }
            }
        }
    }

    /// Leaves the parent on purpose, handing over the last values, and attaches under `parent`.
    fn move_to(&mut self, now: u64, parent: Peer, gen: u64, grant: Sealed) {
        if !matches!(self.phase, Phase::Attached { .. }) || self.is_self_or_below(&parent.name) {
            return;
        }
        self.grant = grant;
        let last = self.net();
        self.send_parent(now, Msg::Detach { last: last.clone() });
        self.debt.merge(&last.cumulative());
        self.sent.clear();
        self.actions.push_back(Action::CloseParent {
            reason: "moved by the root".into(),
        });
        self.attach_to(now, parent, gen);
    }

    /// Whether `name` is this node or inside its subtree: attaching there would make a cycle.
    fn is_self_or_below(&self, name: &str) -> bool {
        name == self.name || self.announced.contains_key(name)
    }

    /// Starts attaching under `parent`. The attach carries the whole subtree as it is now, so
    /// membership changes queued before it are dropped; later ones go up once the parent accepts.
    fn attach_to(&mut self, now: u64, parent: Peer, gen: u64) {
        self.clear_pending();
        let attach = Attach {
            name: self.name.clone(),
            addr: self.addr.clone(),
            gen,
            height: self.height(),
            subtree: self.announced.values().cloned().collect(),
            grant: self.grant.clone(),
        };
        self.phase = Phase::Attaching {
            parent: parent.clone(),
            gen,
            since: now,
        };
        self.actions.push_back(Action::ConnectParent {
            peer: parent,
            attach,
        });
    }

    fn handle_outcome(&mut self, now: u64, outcome: Outcome) {
        match self.role {
            Role::Agent => self.send_parent(now, Msg::Outcome(outcome)),
            Role::Root => {
                let id = outcome.id;
                if let Some(p) = self.commands.get_mut(&id) {
                    let rtt = now.saturating_sub(p.started);
                    for (node, answer) in outcome.results {
                        if p.stream {
                            // The shell checks it first: a forged answer must not stand in for
                            // the real one (see `settle_answer`).
                            if p.waiting.contains(&node) {
                                self.streamed.push_back(StreamedAnswer {
                                    id,
                                    node,
                                    answer,
                                    rtt_ms: rtt,
                                });
                            }
                        } else if p.waiting.remove(&node) {
                            p.answers.insert(node, (answer, rtt));
                        }
                    }
                }
                self.finish_command_if_done(id);
            }
        }
    }

    fn finish_command_if_done(&mut self, id: u64) {
        if self.commands.get(&id).is_some_and(|p| p.waiting.is_empty()) {
            if let Some(p) = self.commands.remove(&id) {
                self.finished_commands.push_back(CommandReport {
                    id,
                    body: p.body,
                    answers: p.answers,
                    unreachable: p.unreachable,
                });
            }
        }
    }

    fn expire_commands(&mut self, now: u64) {
        let expired: Vec<u64> = self
            .commands
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(mut p) = self.commands.remove(&id) {
                p.unreachable.append(&mut p.waiting);
                self.finished_commands.push_back(CommandReport {
                    id,
                    body: p.body,
                    answers: p.answers,
                    unreachable: p.unreachable,
                });
            }
        }
    }
}

/// FNV-1a, for deterministic jitter.
fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attach(name: &str) -> Attach {
        Attach {
            name: name.into(),
            addr: "198.18.0.9:1337".into(),
            gen: 1,
            height: 0,
            subtree: Vec::new(),
            grant: Sealed::default(),
        }
    }

    fn member(name: &str, parent: &str, gen: u64) -> Member {
        Member {
            name: name.into(),
            parent: parent.into(),
            addr: format!("{name}:1337"),
            gen,
            grant: Sealed::default(),
        }
    }

    /// Believes a member unless its generation is odd (a stand-in for a bad signature).
    struct EvenGenerations;
    impl GrantCheck for EvenGenerations {
        fn check(&self, m: &Member) -> Result<(), String> {
            if m.gen.is_multiple_of(2) {
                Ok(())
            } else {
                Err(format!("bad grant for {}", m.name))
            }
        }
    }

    #[test]
    fn claims_are_believed_in_any_order_only_when_they_hang_from_the_child() {
        let mut node = Node::new_agent("p", "p:1337", TreeConfig::default(), 0);
        node.set_grant_check(Arc::new(EvenGenerations));
        while node.poll_action().is_some() {}
        let mut a = attach("c");
        a.gen = 2;
        // Grandchildren listed before their parents; one hangs from a node not below c; one has
        // a bad grant, and the node below it cannot hang from it then.
        a.subtree = vec![
            member("e", "d", 2),
            member("d", "c", 2),
            member("x", "elsewhere", 2),
            member("f", "c", 3),
            member("g", "f", 2),
        ];
        assert!(matches!(node.handle_attach(10, a), Msg::Accepted { .. }));
        let mut below: Vec<&String> = node.members().keys().collect();
        below.sort();
        assert_eq!(below, ["c", "d", "e"]);
        let mut refused: Vec<(String, String)> = std::iter::from_fn(|| node.poll_refused_claim())
            .map(|r| (r.member, r.reason))
            .collect();
        refused.sort();
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert_eq!(refused[0].0, "f");
        assert_eq!(refused[0].1, "bad grant for f");
        assert_eq!(refused[1].0, "g");
        assert!(
            refused[1].1.contains("its parent f is not c"),
            "{refused:?}"
        );
        assert_eq!(refused[2].0, "x");
        assert_eq!(node.refused_claims_total(), 3);

        // Later changes are held to the same rule, against what is already below c.
        node.handle_child_msg(
            20,
            "c",
            Msg::Membership(MembershipDelta {
                upsert: vec![member("h", "e", 4), member("i", "nowhere", 4)],
                ..MembershipDelta::default()
            }),
        );
        assert!(node.members().contains_key("h"));
        assert!(!node.members().contains_key("i"));
        assert_eq!(node.refused_claims_total(), 4);
    }

    #[test]
    fn a_child_without_a_grant_for_this_parent_is_refused() {
        let mut node = Node::new_agent("p", "p:1337", TreeConfig::default(), 0);
        node.set_grant_check(Arc::new(EvenGenerations));
        let mut a = attach("c");
        a.gen = 3;
        let Msg::Refused { reason } = node.handle_attach(10, a) else {
            panic!("a child with a bad grant was accepted");
        };
        assert!(
            reason.contains("c was not placed under p by the root"),
            "{reason}"
        );
        assert_eq!(node.children().count(), 0);
    }

    #[test]
    fn orders_go_to_the_child_holding_the_newer_placement() {
        let mut root = Node::new_root("root", TreeConfig::default(), MetricSet::new(), 7, 0);
        for (child, gen) in [("a", 2), ("b", 2)] {
            let mut at = attach(child);
            at.gen = gen;
            assert!(matches!(root.handle_attach(0, at), Msg::Accepted { .. }));
        }
        // n moved from under a to under b; a has not said so yet.
        for (child, gen) in [("a", 4), ("b", 6)] {
            root.handle_child_msg(
                1,
                child,
                Msg::Membership(MembershipDelta {
                    upsert: vec![member("n", child, gen)],
                    ..MembershipDelta::default()
                }),
            );
        }
        while root.poll_action().is_some() {}
        root.start_command(2, &["n".to_string()], CommandBody::Ping);
        let sent: Vec<String> = std::iter::from_fn(|| root.poll_action())
            .filter_map(|a| match a {
                Action::ToChild {
                    child,
                    msg: Msg::Command(_),
                } => Some(child),
                _ => None,
            })
            .collect();
        assert_eq!(sent, ["b"]);
    }

    #[test]
    fn a_child_that_re_attaches_keeps_its_new_link() {
        let mut node = Node::new_agent("p", "198.18.0.2:1337", TreeConfig::default(), 0);
        while node.poll_action().is_some() {}
        assert!(matches!(
            node.handle_attach(10, attach("c")),
            Msg::Accepted { .. }
        ));
        while node.poll_action().is_some() {}
        // The child restarted and came back before its old link was seen to end.
        assert!(matches!(
            node.handle_attach(20, attach("c")),
            Msg::Accepted { .. }
        ));
        let mut actions = Vec::new();
        while let Some(a) = node.poll_action() {
            actions.push(a);
        }
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::CloseChild { child, .. } if child == "c")),
            "closing the child's link by name would close the new link: {actions:?}"
        );
        assert_eq!(node.children().collect::<Vec<_>>(), vec!["c"]);
    }
    fn counter(v: f64) -> MetricSet {
        let mut m = MetricSet::new();
        m.set_counter("work_total", v);
        m
    }

    fn placed(parent: &str, kept: Option<Hold>) -> Result<Msg, String> {
        Ok(Msg::Placed(Placement {
            parent: Peer {
                name: parent.into(),
                addr: format!("{parent}:1337"),
            },
            gen: 1,
            root_epoch: 7,
            kept,
            grant: Sealed::default(),
        }))
    }

    /// A node placed under `parent` and accepted there at `now`.
    fn attached(name: &str, parent: &str, now: u64) -> Node {
        let mut node = Node::new_agent(name, &format!("{name}:1337"), TreeConfig::default(), now);
        node.on_timeout(now);
        node.handle_join_reply(now, placed(parent, None))
            .expect("placed");
        node.handle_parent_msg(
            now,
            Msg::Accepted {
                depth: 1,
                root_epoch: 7,
            },
        );
        while node.poll_action().is_some() {}
        node
    }

    fn report(wave: u64, seq: u64, v: f64) -> Msg {
        Msg::Report(Report {
            wave,
            seq,
            height: 0,
            net: counter(v),
            holds: Vec::new(),
            digests: Vec::new(),
        })
    }

    /// A root and a leaf `x` at the default period, each message arriving `latency` ms after it
    /// left, the leaf's clock `skew` ms behind the root's, run until `until` (root's time);
    /// with `parent_dies_at`, the root stops there. What each side sent, as (root's time, kind),
    /// and when (leaf's time) the leaf lost its parent.
    #[allow(clippy::type_complexity)]
    fn leaf_link(
        latency: u64,
        skew: u64,
        until: u64,
        parent_dies_at: Option<u64>,
    ) -> (
        Vec<(u64, &'static str)>,
        Vec<(u64, &'static str)>,
        Option<u64>,
    ) {
        let kind = |m: &Msg| match m {
            Msg::Heartbeat { .. } => "heartbeat",
            Msg::Report(_) => "report",
            _ => "other",
        };
        let mut root = Node::new_root("root", TreeConfig::default(), MetricSet::new(), 7, 0);
        let mut x = attached("x", "root", 0);
        assert!(matches!(
            root.handle_attach(0, attach("x")),
            Msg::Accepted { .. }
        ));
        let (mut up, mut down) = (Vec::new(), Vec::new());
        let mut to_root: VecDeque<(u64, Msg)> = VecDeque::new();
        let mut to_x: VecDeque<(u64, Msg)> = VecDeque::new();
        let mut lost = None;
        for now in 1..=until {
            let root_alive = parent_dies_at.is_none_or(|d| now < d);
            while to_root.front().is_some_and(|(at, _)| *at <= now) {
                let (_, m) = to_root.pop_front().expect("looked at");
                if root_alive {
                    root.handle_child_msg(now, "x", m);
                }
            }
            // The leaf's clock is `skew` behind the root's, so its waves start a little later.
            let x_now = now.saturating_sub(skew);
            while to_x.front().is_some_and(|(at, _)| *at <= now) {
                let (_, m) = to_x.pop_front().expect("looked at");
                x.handle_parent_msg(x_now, m);
            }
            if root_alive && now >= root.next_timeout() {
                root.on_timeout(now);
            }
            if x_now >= x.next_timeout() {
                x.on_timeout(x_now);
            }
            while let Some(a) = root.poll_action() {
                if let Action::ToChild { msg, .. } = a {
                    down.push((now, kind(&msg)));
                    to_x.push_back((now + latency, msg));
                }
            }
            while let Some(a) = x.poll_action() {
                match a {
                    Action::ToParent(msg) => {
                        up.push((now, kind(&msg)));
                        to_root.push_back((now + latency, msg));
                    }
                    Action::CloseParent { .. } => lost = lost.or(Some(x_now)),
                    _ => {}
                }
            }
        }
        (up, down, lost)
    }

    #[test]
    fn a_leaf_link_carries_one_report_up_and_one_answer_down_per_wave() {
        let (up, down, lost) = leaf_link(2, 3, 10_000, None);
        assert_eq!(lost, None);
        // Reports only, one per wave, each on the leaf's wave: no heartbeat of its own.
        let waves: Vec<(u64, &str)> = (1..=9).map(|w| (w * 1000 + 3, "report")).collect();
        assert_eq!(up, waves);
        // The root answers each report as it arrives, and sends nothing on a timer.
        let answers: Vec<(u64, &str)> = (1..=9).map(|w| (w * 1000 + 5, "heartbeat")).collect();
        assert_eq!(down, answers);
    }

    #[test]
    fn a_leaf_loses_a_dead_parent_silent_for_dead_after() {
        let cfg = TreeConfig::default();
        // The root dies just after answering the report of wave 4 (at 4005).
        let (_, down, lost) = leaf_link(2, 3, 10_000, Some(4100));
        assert_eq!(down.last(), Some(&(4005, "heartbeat")));
        // Heard last at 4007, 4004 on the leaf's clock; lost once silent for longer than
        // dead_after_ms, within 3 s of the death.
        assert_eq!(lost, Some(4004 + cfg.dead_after_ms + 1));
    }

    /// Numbers of the reports the node sent up, with their counter, in order.
    fn sent_reports(node: &mut Node) -> Vec<(u64, f64, Vec<Hold>)> {
        let mut out = Vec::new();
        while let Some(a) = node.poll_action() {
            if let Action::ToParent(Msg::Report(r)) = a {
                out.push((r.seq, r.net.counter("work_total"), r.holds));
            }
        }
        out
    }

    #[test]
    fn an_orphan_owes_exactly_the_report_its_parent_kept() {
        let mut x = attached("x", "p", 0);
        for (i, v) in [10.0, 25.0, 40.0].into_iter().enumerate() {
            x.set_own(counter(v));
            x.on_timeout(1000 * (i as u64 + 1));
        }
        let sent = sent_reports(&mut x);
        let seqs: Vec<u64> = sent.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(seqs, vec![2, 3, 4], "{sent:?}");
        x.handle_parent_failed(3500, "link closed");
        // The parent kept report 3 (25); 4 (40) died with it. The orphan owes 25, so its new
        // path carries the 15 that would otherwise be lost.
        let kept = Hold {
            node: "x".into(),
            under: "p".into(),
            seq: Some(3),
        };
        x.handle_join_reply(3600, placed("q", Some(kept)))
            .expect("placed");
        assert_eq!(x.net().counter("work_total"), 15.0);
        assert_eq!(x.handovers().exact, 1);
    }

    /// Own values of a node whose `scraped_total` comes from an exporter (carried across a
    /// restart) and `work_total` from its own collectors (counting from its start).
    fn sample(node: &mut Node, scraped: f64, work: f64) {
        let mut own = counter(work);
        own.set_counter("scraped_total", scraped);
        let mut carried = MetricSet::new();
        carried.set_counter("scraped_total", scraped);
        node.set_own(own);
        node.set_carried(&carried);
    }

    #[test]
    fn a_restarted_agent_owes_exactly_the_carried_part_its_parent_kept() {
        let mut x = attached("x", "p", 0);
        for (i, scraped) in [100.0, 130.0, 170.0].into_iter().enumerate() {
            let now = 1000 * (i as u64 + 1);
            x.handle_parent_msg(now, Msg::Heartbeat { depth: 0 });
            sample(&mut x, scraped, 5.0 * (i as f64 + 1.0));
            x.on_timeout(now);
        }
        let seqs: Vec<u64> = sent_reports(&mut x).iter().map(|(s, _, _)| *s).collect();
        assert_eq!(seqs, vec![2, 3, 4]);
        let life = x.previous_life().expect("something is carried");
        assert_eq!(life.parent, "p");
        let carried: Vec<(u64, f64)> = life
            .sent
            .iter()
            .map(|(seq, set)| (*seq, set.counter("scraped_total")))
            .collect();
        assert_eq!(carried, vec![(1, 0.0), (2, 100.0), (3, 130.0), (4, 170.0)]);
        assert!(
            life.sent
                .iter()
                .all(|(_, set)| set.counter("work_total") == 0.0),
            "the collectors' counters are not carried"
        );

        // Killed; the next incarnation reads the exporter at 180 and its own collectors from 0.
        let mut y = Node::new_agent("x", "x:1337", TreeConfig::default(), 5000);
        y.resume(5000, life);
        y.on_timeout(5000);
        let join = std::iter::from_fn(|| y.poll_action())
            .find_map(|a| match a {
                Action::SendJoin(j) => Some(j),
                _ => None,
            })
            .expect("a join");
        assert_eq!(
            join.reason,
            JoinReason::ParentLost { parent: "p".into() },
            "it joins as the orphan of its old parent, so the root passes the parent's word"
        );
        // The parent kept report 3 (130).
        let kept = Hold {
            node: "x".into(),
            under: "p".into(),
            seq: Some(3),
        };
        y.handle_join_reply(5100, placed("q", Some(kept)))
            .expect("placed");
        sample(&mut y, 180.0, 2.0);
        assert_eq!(
            y.net().counter("scraped_total"),
            50.0,
            "180 less the 130 kept"
        );
        assert_eq!(y.net().counter("work_total"), 2.0, "own counts are new");
        assert_eq!(y.handovers().exact, 1);
        y.handle_parent_msg(
            5200,
            Msg::Accepted {
                depth: 1,
                root_epoch: 7,
            },
        );
        y.on_timeout(6000);
        let seqs: Vec<u64> = sent_reports(&mut y).iter().map(|(s, _, _)| *s).collect();
        assert_eq!(seqs.first(), Some(&5), "numbers go on from the old life");
    }

    #[test]
    fn a_restarted_agent_without_word_owes_its_last_carried_report() {
        let mut x = attached("x", "p", 0);
        sample(&mut x, 100.0, 1.0);
        x.on_timeout(1000);
        sample(&mut x, 120.0, 2.0);
        x.on_timeout(2000);
        let life = x.previous_life().expect("something is carried");
        let mut y = Node::new_agent("x", "x:1337", TreeConfig::default(), 3000);
        y.resume(3000, life);
        y.on_timeout(3000);
        y.handle_join_reply(3100, placed("q", None))
            .expect("placed");
        sample(&mut y, 120.0, 0.0);
        assert_eq!(y.net().counter("scraped_total"), 0.0);
        assert_eq!(y.handovers().by_last_sent, 1);
    }

    #[test]
    fn an_agent_that_carries_nothing_leaves_no_previous_life() {
        let mut x = attached("x", "p", 0);
        x.set_own(counter(10.0));
        x.on_timeout(1000);
        assert_eq!(x.previous_life(), None);
    }

    #[test]
    fn an_orphan_without_word_owes_its_last_report() {
        let mut x = attached("x", "p", 0);
        x.set_own(counter(10.0));
        x.on_timeout(1000);
        x.set_own(counter(25.0));
        x.on_timeout(2000);
        x.handle_parent_failed(2500, "link closed");
        // A word about another parent, or about a report it never sent there, is not taken.
        let wrong = Hold {
            node: "x".into(),
            under: "someone-else".into(),
            seq: Some(2),
        };
        x.handle_join_reply(2600, placed("q", Some(wrong)))
            .expect("placed");
        assert_eq!(x.net().counter("work_total"), 0.0);
        assert_eq!(x.handovers().by_last_sent, 1);
    }

    #[test]
    fn a_parent_cut_off_rewinds_a_lost_child_to_what_its_own_parent_kept() {
        let mut p = attached("p", "g", 0);
        assert!(matches!(
            p.handle_attach(10, attach("x")),
            Msg::Accepted { .. }
        ));
        p.on_timeout(1000);
        p.handle_child_msg(1010, "x", report(1, 1, 10.0));
        // A late report of the same wave goes up at once.
        p.handle_child_msg(1020, "x", report(1, 2, 15.0));
        let sent = sent_reports(&mut p);
        let holding = |seq: u64| {
            sent.iter()
                .find(|(_, _, h)| h.iter().any(|h| h.node == "x" && h.seq == Some(seq)))
                .map(|(s, v, _)| (*s, *v))
        };
        let (first, first_value) = holding(1).expect("a report holding x's first");
        assert_eq!(first_value, 10.0);
        assert!(holding(2).is_some(), "{sent:?}");
        // Cut off: the child and the parent are lost together; the grandparent kept only the
        // report that held x's first report, and the root told x to owe that one.
        p.handle_child_gone(1500, "x", "silent for too long");
        assert_eq!(p.frozen().counter("work_total"), 15.0);
        p.handle_parent_failed(1500, "silent for too long");
        let kept = Hold {
            node: "p".into(),
            under: "g".into(),
            seq: Some(first),
        };
        p.handle_join_reply(4000, placed("q", Some(kept)))
            .expect("placed");
        assert_eq!(p.frozen().counter("work_total"), 10.0);
        assert_eq!(p.net().counter("work_total"), 0.0);
        assert_eq!(p.handovers().rewound, 1);
    }
}

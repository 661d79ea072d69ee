//! The root's tree logic in one deterministic state machine: the top [`Node`] of the reduction
//! (children, waves, command routing) wired to the [`Placement`] authority (joins, healing).
//!
//! The shell feeds it joins, attaches, child messages and time, and drains [`RootAction`]s. Leaf
//! moves decided by the placement authority become `Move` commands routed down the tree.
//!
//! It also carries the handover of orphans: when a parent declares a child lost, it names the
//! report it kept of the child and what that report held of the nodes below ([`Hold`]). The core
//! remembers that for a while and puts it into the placement of each orphan, which then owes
//! exactly what was kept of it. An orphan's placement waits up to [`HANDOVER_WAIT_MS`] for that
//! word when it is not there yet (the orphan and its grandparent notice the death about together).

use crate::placement::{Placement, PlacementConfig};
use banyan_agent::tree::{
    Action, CommandReport, GrantCheck, GrantSign, Node, StreamedAnswer, TreeConfig, WaveDone,
};
use banyan_protocol::metric::MetricSet;
use banyan_protocol::seal::Sealed;
use banyan_protocol::wire::{
    Answer, Attach, CommandBody, Grant, Hold, Join, JoinReason, Lost, Msg,
};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// How long an orphan's placement waits for the word of what was kept of it.
pub const HANDOVER_WAIT_MS: u64 = 1_000;
/// How long that word is good for. An orphan asks within moments of the loss being seen, or once
/// a cut host is back; an older word is about an earlier loss.
pub const HANDOVER_TTL_MS: u64 = 30_000;

/// A join tells of the losses its sender saw or relayed lately: this many at most, however many
/// it lists (the agent keeps as many).
const MAX_LOST_PER_JOIN: usize = 256;

/// How long an orphan's join speaks for its being alive: its parent's word of its loss comes
/// within moments of it (both sides notice the silence within a heartbeat of each other).
const REJOINED_MS: u64 = 10_000;

/// What was kept of a node when it or a node above it was lost, and until when it may be used
/// (`None`: kept from before a restart of the root, good for the node's first placement).
#[derive(Debug, Clone)]
struct Handover {
    hold: Hold,
    until: Option<u64>,
}

/// A placement answer held back until the orphan's handover is known or the wait is over.
#[derive(Debug)]
struct Waiting {
    ticket: u64,
    msg: Msg,
    name: String,
    lost_parent: String,
    until: u64,
}

/// What the root keeps across a restart: its totals, which report of each child they fold in, and
/// which reports of the grandchildren those held (for orphans of a death during the restart).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    pub totals: MetricSet,
    pub holds: Vec<Hold>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RootAction {
    /// Something for a child link (send or close).
    Node(Action),
    /// The answer to the join that arrived with this ticket.
    ReplyJoin { ticket: u64, msg: Msg },
}

#[derive(Debug)]
pub struct RootCore {
    pub node: Node,
    pub placement: Placement,
    move_commands: BTreeMap<u64, String>,
    reports: VecDeque<CommandReport>,
    waves: VecDeque<WaveDone>,
    pub moves_sent: u64,
    /// Orphans' joins by ticket: (name, the parent it lost).
    joins: HashMap<u64, (String, Option<String>)>,
    handovers: HashMap<String, Handover>,
    /// Orphans that asked for a place lately: when, and which parent they had lost. They are
    /// alive with their subtrees.
    rejoined: HashMap<String, (u64, String)>,
    waiting: Vec<Waiting>,
    answers: VecDeque<(u64, Msg)>,
    /// Joins not answered yet, by ticket: (name, mesh address), for the grant of their placement.
    joiners: HashMap<u64, (String, String)>,
    signer: Option<Arc<dyn GrantSign>>,
}

impl RootCore {
    pub fn new(
        name: &str,
        advertised_addr: &str,
        tree: TreeConfig,
        placement: PlacementConfig,
        kept: Kept,
        epoch: u64,
        now: u64,
    ) -> RootCore {
        let handovers = kept
            .holds
            .into_iter()
            .map(|hold| (hold.node.clone(), Handover { hold, until: None }))
            .collect();
        RootCore {
            node: Node::new_root(name, tree, kept.totals, epoch, now),
            placement: Placement::new(name, advertised_addr, epoch, placement),
            move_commands: BTreeMap::new(),
            reports: VecDeque::new(),
            waves: VecDeque::new(),
            moves_sent: 0,
            joins: HashMap::new(),
            handovers,
            rejoined: HashMap::new(),
            waiting: Vec::new(),
            answers: VecDeque::new(),
            joiners: HashMap::new(),
            signer: None,
        }
    }

    /// Signs every placement from now on with `signer`, and checks the grants of the nodes the
    /// root's children (and joining nodes) claim with `check`. Without them (the simulator)
    /// placements carry no grant and claims are checked only for their structure.
    pub fn set_grants(&mut self, signer: Arc<dyn GrantSign>, check: Arc<dyn GrantCheck>) {
        self.signer = Some(signer);
        self.node.set_grant_check(check);
    }

    fn seal(&self, grant: Grant) -> Sealed {
        self.signer
            .as_ref()
            .map_or_else(Sealed::default, |s| s.sign(&grant))
    }

    pub fn handle_join(&mut self, now: u64, ticket: u64, join: Join) {
        let lost_parent = match &join.reason {
            JoinReason::ParentLost { parent } => Some(parent.clone()),
            _ => None,
        };
        if let Some(parent) = &lost_parent {
            self.rejoined
                .insert(join.name.clone(), (now, parent.clone()));
        }
        // The subtree it brings counts only as far as the root placed it there.
        let mut join = join;
        let claims = std::mem::take(&mut join.subtree);
        join.subtree = self.node.vet_claims(&join.name, &HashMap::new(), claims);
        // Losses it saw while it had no parent, or told a parent that may have died with them:
        // a node speaks of its own children and, as the tree's relays do, of the nodes placed
        // below it (a loss deep in its subtree, relayed up through the node that died, would
        // otherwise never reach the root). Its own first.
        let below: HashSet<&str> = join.subtree.iter().map(|m| m.name.as_str()).collect();
        let (own, relayed): (Vec<&Lost>, Vec<&Lost>) = join
            .lost
            .iter()
            .filter(|l| l.parent == join.name || below.contains(l.parent.as_str()))
            .partition(|l| l.parent == join.name);
        let believed: Vec<Lost> = own
            .into_iter()
            .chain(relayed)
            .take(MAX_LOST_PER_JOIN)
            .cloned()
            .collect();
        for lost in believed {
            self.learn_lost(now, lost);
        }
        // The nodes it brings are still below it: no word about them is theirs to use.
        for m in &join.subtree {
            self.handovers.remove(&m.name);
        }
        self.joins.insert(ticket, (join.name.clone(), lost_parent));
        self.joiners
            .insert(ticket, (join.name.clone(), join.addr.clone()));
        self.placement.handle_join(now, ticket, join);
        self.pump(now);
    }

    pub fn handle_attach(&mut self, now: u64, attach: Attach) -> Msg {
        let answer = self.node.handle_attach(now, attach);
        self.pump(now);
        answer
    }

    pub fn handle_child_msg(&mut self, now: u64, child: &str, msg: Msg) {
        self.node.handle_child_msg(now, child, msg);
        self.pump(now);
    }

    pub fn handle_child_gone(&mut self, now: u64, child: &str, why: &str) {
        self.node.handle_child_gone(now, child, why);
        self.pump(now);
    }

    pub fn on_timeout(&mut self, now: u64) {
        self.node.on_timeout(now);
        self.pump(now);
        for name in self.placement.expired_placements(now) {
            let member = self.node.members().get(&name).cloned();
            self.placement.resync(now, &name, member.as_ref());
        }
        self.placement.on_timeout(now);
        self.pump(now);
    }

    pub fn next_timeout(&self) -> u64 {
        let waiting = self
            .waiting
            .iter()
            .map(|w| w.until)
            .min()
            .unwrap_or(u64::MAX);
        self.node
            .next_timeout()
            .min(self.placement.next_timeout())
            .min(waiting)
    }

    /// Sends an operator command; its report comes out of [`RootCore::poll_command_report`].
    pub fn start_command(&mut self, now: u64, targets: &[String], body: CommandBody) -> u64 {
        let id = self.node.start_command(now, targets, body);
        self.pump(now);
        id
    }

    /// Sends an operator action with its own deadline; each answer comes out of
    /// [`RootCore::poll_answer`] as it arrives, and the report at the end as for any command.
    pub fn start_streaming_command(
        &mut self,
        now: u64,
        targets: &[String],
        body: CommandBody,
        deadline: u64,
    ) -> u64 {
        let id = self
            .node
            .start_command_until(now, targets, body, deadline, true);
        self.pump(now);
        id
    }

    pub fn poll_answer(&mut self) -> Option<StreamedAnswer> {
        self.node.poll_answer()
    }

    /// Takes a checked answer of a streaming command (see [`Node::settle_answer`]).
    pub fn settle_answer(&mut self, now: u64, id: u64, node: &str, answer: Result<Answer, String>) {
        self.node.settle_answer(now, id, node, answer);
        self.pump(now);
    }

    pub fn poll_command_report(&mut self) -> Option<CommandReport> {
        self.reports.pop_front()
    }

    pub fn poll_wave(&mut self) -> Option<WaveDone> {
        self.waves.pop_front()
    }

    /// The next thing for the shell to do.
    pub fn poll_action(&mut self) -> Option<RootAction> {
        if let Some((ticket, mut msg)) = self.answers.pop_front() {
            let joiner = self.joiners.remove(&ticket);
            if let (Msg::Placed(placed), Some((node, addr))) = (&mut msg, joiner) {
                placed.grant = self.seal(Grant {
                    node,
                    addr,
                    parent: placed.parent.name.clone(),
                    gen: placed.gen,
                });
            }
            return Some(RootAction::ReplyJoin { ticket, msg });
        }
        self.node.poll_action().map(RootAction::Node)
    }

    /// The totals of the whole tree (everything that reached the root, kept counts included).
    pub fn totals(&self) -> MetricSet {
        self.node.gross()
    }

    /// What a restarted root needs: the totals and which report of each child they fold in, taken
    /// together so that they agree.
    /// Whether the root has ordered `leaf` to move (a compaction or a promotion) and not yet
    /// heard how it went: its placement is pending while it is still attached where it was.
    pub fn leaf_in_move(&self, leaf: &str) -> bool {
        self.move_commands.values().any(|l| l == leaf)
    }

    pub fn kept(&self) -> Kept {
        Kept {
            totals: self.node.gross().cumulative(),
            holds: self.node.holds_two_levels(),
        }
    }

    /// Remembers what a parent kept of a lost child and, through the child's last report, of the
    /// child's own children: they are orphans too if the child died. If the child already asked
    /// for a place, it lives and keeps them, so that part is not theirs.
    fn learn_lost(&mut self, now: u64, lost: Lost) {
        let until = Some(now + HANDOVER_TTL_MS);
        let alive = self
            .rejoined
            .get(&lost.child)
            .is_some_and(|(t, parent)| parent == &lost.parent && now <= t + REJOINED_MS);
        // A node has at most two children: more holds than that are not believed.
        let below = lost
            .holds
            .into_iter()
            .filter(|h| !alive && h.under == lost.child)
            .take(2);
        let child = Hold {
            node: lost.child.clone(),
            under: lost.parent,
            seq: lost.seq,
        };
        for hold in std::iter::once(child).chain(below) {
            self.handovers
                .insert(hold.node.clone(), Handover { hold, until });
        }
    }

    /// Answers a placement decision: an orphan's gets the word of what was kept of it, or waits
    /// for it a little.
    fn answer(&mut self, now: u64, ticket: u64, mut msg: Msg) {
        let Some((name, lost_parent)) = self.joins.remove(&ticket) else {
            self.answers.push_back((ticket, msg));
            return;
        };
        let Msg::Placed(placed) = &mut msg else {
            self.answers.push_back((ticket, msg));
            return;
        };
        placed.kept = self.take_handover(now, &name, lost_parent.as_deref());
        match lost_parent {
            Some(lost_parent) if placed.kept.is_none() => self.waiting.push(Waiting {
                ticket,
                msg,
                name,
                lost_parent,
                until: now + HANDOVER_WAIT_MS,
            }),
            _ => self.answers.push_back((ticket, msg)),
        }
    }

    /// The word for `name` if it is about the parent it lost and still good.
    fn take_handover(&mut self, now: u64, name: &str, lost_parent: Option<&str>) -> Option<Hold> {
        let lost_parent = lost_parent?;
        let h = self.handovers.get(name)?;
        if h.hold.under != lost_parent || h.until.is_some_and(|u| now > u) {
            return None;
        }
        self.handovers.remove(name).map(|h| h.hold)
    }

    /// Sends held answers whose word came or whose wait is over, and forgets old words.
    fn release_waiting(&mut self, now: u64) {
        let mut still = Vec::new();
        for mut w in std::mem::take(&mut self.waiting) {
            let kept = self.take_handover(now, &w.name, Some(&w.lost_parent));
            if kept.is_some() || now >= w.until {
                if let Msg::Placed(p) = &mut w.msg {
                    p.kept = kept;
                }
                self.answers.push_back((w.ticket, w.msg));
            } else {
                still.push(w);
            }
        }
        self.waiting = still;
        self.handovers
            .retain(|_, h| h.until.is_none_or(|u| now <= u));
        self.rejoined.retain(|_, (t, _)| now <= *t + REJOINED_MS);
    }

    /// Moves state between the two machines until nothing is left to move.
    fn pump(&mut self, now: u64) {
        loop {
            let mut progressed = false;
            while let Some(delta) = self.node.poll_membership() {
                self.placement.handle_membership(now, &delta);
                progressed = true;
            }
            while let Some(lost) = self.node.poll_lost() {
                self.learn_lost(now, lost);
                progressed = true;
            }
            while let Some((ticket, msg)) = self.placement.poll_decision() {
                self.answer(now, ticket, msg);
                progressed = true;
            }
            while let Some((leaf, parent, gen)) = self.placement.poll_move() {
                let grant = self.seal(Grant {
                    node: leaf.clone(),
                    addr: self.placement.addr_of(&leaf).unwrap_or_default(),
                    parent: parent.name.clone(),
                    gen,
                });
                let id = self.node.start_command(
                    now,
                    std::slice::from_ref(&leaf),
                    CommandBody::Move { parent, gen, grant },
                );
                self.move_commands.insert(id, leaf);
                self.moves_sent += 1;
                progressed = true;
            }
            while let Some(report) = self.node.poll_command_report() {
                match self.move_commands.remove(&report.id) {
                    Some(leaf) => {
                        let moving = matches!(report.answers.get(&leaf), Some((Ok(_), _)));
                        if !moving {
                            // The leaf stays where it was: take the membership's word for it.
                            let member = self.node.members().get(&leaf).cloned();
                            self.placement.resync(now, &leaf, member.as_ref());
                        }
                    }
                    None => self.reports.push_back(report),
                }
                progressed = true;
            }
            while let Some(w) = self.node.poll_wave() {
                self.waves.push_back(w);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        if !self.waiting.is_empty() || !self.handovers.is_empty() || !self.rejoined.is_empty() {
            self.release_waiting(now);
        }
    }
}

//! The placement authority: where each agent goes in the tree, and how the tree heals.
//!
//! A deterministic state machine like [`banyan_agent::tree::Node`]: joins, membership changes and
//! `now` go in; answers to joins and leaf moves come out. It keeps the root's model of the whole
//! tree, fed by the membership changes that reach the root and by its own decisions.
//!
//! - **Fresh agents** go under the shallowest live node with fewer than two children
//!   (breadth first), at once.
//! - **Orphans** (agents whose parent was lost, with their subtrees) are held for a short heal
//!   window, so that every orphan of one failure is placed together, tallest subtree first, each in
//!   the shallowest free slot. When two or more orphans compete and the next free slot is deeper,
//!   a leaf from the bottom of the tree is first moved into the shallow slot ("promoted"), which
//!   turns one slot at depth d into two at depth d + 1. That is how a dead inner node is replaced
//!   without moving anyone's subtree down, so the depth stays near log2(N).
//! - A node that left the tree and does not come back within `stale_after_ms` is **stale**: kept in
//!   the topology (and its counts in the totals) but marked as such.

use banyan_protocol::seal::Sealed;
use banyan_protocol::wire::{
    Join, JoinReason, Member, MembershipDelta, Msg, Peer, Placement as Placed,
};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};

#[derive(Debug, Clone)]
pub struct PlacementConfig {
    /// How long orphans are collected before they are placed together.
    pub heal_window_ms: u64,
    /// How long a node that left the tree may take to come back before it is marked stale.
    pub stale_after_ms: u64,
    /// How long a placement may stay unconfirmed (the agent never attached) before it is dropped.
    pub pending_ttl_ms: u64,
    /// How often the tree is compacted: leaves deeper than a free slot plus one move up into it.
    pub rebalance_every_ms: u64,
    /// Longest the orphans of one lost parent are held, from the moment the root first hears of
    /// the loss, for the parent's other children to ask too. Children hear their parent's answers
    /// at the same wave and notice its silence within the hop budget of each other (within half a
    /// heartbeat at short periods), plus the time a join takes to reach the root; a sibling that
    /// never asks (dead too, cut off elsewhere) costs this once.
    pub sibling_wait_ms: u64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            heal_window_ms: 400,
            stale_after_ms: 8000,
            pending_ttl_ms: 6000,
            rebalance_every_ms: 500,
            sibling_wait_ms: 650,
        }
    }
}

/// Placement generations follow the root's clock (1,024 per millisecond), so a restarted root
/// issues generations newer than its predecessor's without remembering them.
fn gen_at(now_ms: u64) -> u64 {
    now_ms.saturating_mul(1024)
}

/// How far ahead of the root's clock a generation may be (clocks of restarted roots differ a little).
const GEN_FUTURE_SLACK_MS: u64 = 10 * 60 * 1000;

/// Where a node stands in the root's model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Seen in the tree's membership.
    Attached,
    /// Placed by the root, not yet seen attached.
    Pending { until: u64 },
    /// Left the tree (lost, or moving); waiting for it to come back.
    Detached { since: u64 },
    /// Left and did not come back.
    Stale { since: u64 },
}

impl Status {
    pub fn is_live(&self) -> bool {
        matches!(self, Status::Attached | Status::Pending { .. })
    }
}

#[derive(Debug, Clone)]
struct TNode {
    parent: Option<String>,
    children: BTreeSet<String>,
    depth: u32,
    addr: String,
    gen: u64,
    status: Status,
    /// Held by an orphan join that is waiting for the heal window: never a candidate parent.
    in_transit: bool,
}

/// One node as the topology API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub parent: Option<String>,
    pub depth: u32,
    pub children: Vec<String>,
    pub addr: String,
    pub status: Status,
}

#[derive(Debug)]
struct Held {
    ticket: u64,
    join: Join,
    /// The parent whose loss made this an orphan, when it says so.
    lost_parent: Option<String>,
}

/// The children of a lost parent that have not asked for a place yet.
#[derive(Debug)]
struct Siblings {
    waiting: BTreeSet<String>,
    /// Until when orphans of this parent wait for them.
    until: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Placement {
    root: String,
    root_addr: String,
    epoch: u64,
    cfg: PlacementConfig,
    next_gen: u64,
    nodes: HashMap<String, TNode>,
    /// Live nodes with a free child slot, shallowest first.
    free: BTreeSet<(u32, String)>,
    /// Attached leaves, deepest first.
    leaves: BTreeSet<(Reverse<u32>, String)>,
    /// Depths and indexes need a rebuild before the next decision.
    dirty: bool,
    held: Vec<Held>,
    /// Nodes an orphan of the current window lost or could not reach: not a parent for anyone
    /// placed in this window, whatever the model still says of them (the model learns of a loss
    /// later than the orphans do, or not at all when only one link is cut).
    suspects: std::collections::HashSet<String>,
    window_close: Option<u64>,
    /// Lost parents whose children are being placed, with the children still to ask: the orphans
    /// of one death are placed together, so that a leaf can be promoted into the dead node's place
    /// for them (two orphans placed in two windows each take the shallowest slot left, and the
    /// second subtree may go too deep).
    siblings: HashMap<String, Siblings>,
    /// The same, by child: which lost parent's orphans wait for it.
    awaited: HashMap<String, String>,
    /// The window was held open past its end for siblings.
    window_extended: bool,
    /// When the current heal window opened.
    window_opened: u64,
    decisions: VecDeque<(u64, Msg)>,
    moves: VecDeque<(String, Peer, u64)>,
    next_rebalance: u64,
    /// Counters for benchmarks and logs.
    pub promotions: u64,
    pub rebalance_moves: u64,
}

impl Placement {
    pub fn new(root: &str, root_addr: &str, epoch: u64, cfg: PlacementConfig) -> Placement {
        let mut nodes = HashMap::new();
        nodes.insert(
            root.to_string(),
            TNode {
                parent: None,
                children: BTreeSet::new(),
                depth: 0,
                addr: root_addr.to_string(),
                gen: 0,
                status: Status::Attached,
                in_transit: false,
            },
        );
        let mut p = Placement {
            root: root.to_string(),
            root_addr: root_addr.to_string(),
            epoch,
            cfg,
            next_gen: 1,
            nodes,
            free: BTreeSet::new(),
            leaves: BTreeSet::new(),
            dirty: true,
            held: Vec::new(),
            suspects: std::collections::HashSet::new(),
            window_close: None,
            siblings: HashMap::new(),
            awaited: HashMap::new(),
            window_extended: false,
            window_opened: 0,
            decisions: VecDeque::new(),
            moves: VecDeque::new(),
            next_rebalance: 0,
            promotions: 0,
            rebalance_moves: 0,
        };
        p.rebuild();
        p
    }

    /// Answers to joins: `(ticket, Placed | Retry | Refused)`.
    pub fn poll_decision(&mut self) -> Option<(u64, Msg)> {
        self.decisions.pop_front()
    }

    /// Leaves to move: `(node, new parent, generation)`; the root sends them a `Move` command.
    pub fn poll_move(&mut self) -> Option<(String, Peer, u64)> {
        self.moves.pop_front()
    }

    pub fn next_timeout(&self) -> u64 {
        let mut t = self.window_close.unwrap_or(self.next_rebalance);
        // `window_close` is at most the earliest sibling wait of a held orphan, so sibling waits
        // need no timer of their own.
        for n in self.nodes.values() {
            match n.status {
                Status::Pending { until } => t = t.min(until),
                Status::Detached { since } => t = t.min(since + self.cfg.stale_after_ms),
                _ => {}
            }
        }
        t
    }

    /// The mesh address a node gave when it joined.
    pub fn addr_of(&self, name: &str) -> Option<String> {
        self.nodes.get(name).map(|t| t.addr.clone())
    }

    /// Live (attached or placed) agents, the root excluded.
    pub fn live_count(&self) -> usize {
        self.nodes
            .iter()
            .filter(|(n, t)| *n != &self.root && t.status.is_live())
            .count()
    }

    /// Everything the root knows, for the topology API.
    pub fn view(&mut self) -> Vec<NodeView> {
        if self.dirty {
            self.rebuild();
        }
        let mut out: Vec<NodeView> = self
            .nodes
            .iter()
            .map(|(name, t)| NodeView {
                name: name.clone(),
                parent: t.parent.clone(),
                depth: t.depth,
                children: t.children.iter().cloned().collect(),
                addr: t.addr.clone(),
                status: t.status,
            })
            .collect();
        out.sort_by(|a, b| (a.depth, &a.name).cmp(&(b.depth, &b.name)));
        out
    }

    pub fn status(&self, name: &str) -> Option<Status> {
        self.nodes.get(name).map(|t| t.status)
    }

    pub fn depth_of(&mut self, name: &str) -> Option<u32> {
        if self.dirty {
            self.rebuild();
        }
        self.nodes
            .get(name)
            .filter(|t| t.status.is_live())
            .map(|t| t.depth)
    }

    // ----- Inputs ----------------------------------------------------------------------------

    /// An agent asks for a place. The shell has checked its certificate names `join.name`.
    pub fn handle_join(&mut self, now: u64, ticket: u64, join: Join) {
        if join.name == self.root {
            self.decisions.push_back((
                ticket,
                Msg::Refused {
                    reason: format!("the name {} is the root's", self.root),
                },
            ));
            return;
        }
        // What the orphan brings is its subtree: learn its shape, and keep all of it out of the
        // candidate parents until it is placed (placing a node under its own subtree is a cycle).
        for m in &join.subtree {
            if m.name == self.root || m.name == join.name {
                continue;
            }
            self.learn_member(now, m, false);
            // Their status stays what the membership says: whether they are seen attached is for
            // the membership to tell, which may already show them under their new place.
            if let Some(t) = self.nodes.get_mut(&m.name) {
                t.in_transit = true;
            }
        }
        self.ensure(&join.name, &join.addr);
        let lost_parent = match &join.reason {
            JoinReason::ParentLost { parent } if parent != &self.root => Some(parent.clone()),
            _ => None,
        };
        if let Some(parent) = &lost_parent {
            self.expect_orphans_of(now, parent);
        }
        self.heard_from(now, &join.name);
        self.detach_structurally(&join.name);
        if let Some(t) = self.nodes.get_mut(&join.name) {
            t.addr = join.addr.clone();
            t.in_transit = true;
            t.status = Status::Detached { since: now };
        }
        // A fresh node with nothing below it changes no depth: `attach_pending` keeps the indexes
        // right without an O(N) rebuild, which keeps a mass start at O(N log N). A node that had a
        // place was detached above, which marks the model for a rebuild already.
        if !join.subtree.is_empty() {
            self.dirty = true;
        }
        match &join.reason {
            // An orphan that lost the root is talking to it now: the root is not in doubt.
            JoinReason::ParentLost { parent } | JoinReason::ParentRefused { parent, .. }
                if parent != &self.root =>
            {
                self.suspects.insert(parent.clone());
            }
            JoinReason::ParentLost { .. } | JoinReason::ParentRefused { .. } => {}
            JoinReason::Fresh | JoinReason::Moved => {}
        }
        let fresh = matches!(join.reason, JoinReason::Fresh);
        if fresh && self.window_close.is_none() {
            self.place(now, ticket, &join);
        } else {
            self.held.push(Held {
                ticket,
                join,
                lost_parent,
            });
            self.open_window(now);
        }
    }

    fn open_window(&mut self, now: u64) {
        if self.window_close.is_none() {
            self.window_close = Some(now + self.cfg.heal_window_ms);
            self.window_opened = now;
        }
    }

    /// Notes the children of `parent`, lost just now, as orphans to come (once per loss).
    fn expect_orphans_of(&mut self, now: u64, parent: &str) {
        if self.siblings.contains_key(parent) {
            return;
        }
        let Some(t) = self.nodes.get(parent) else {
            return;
        };
        let waiting: BTreeSet<String> = t
            .children
            .iter()
            .filter(|c| self.nodes.get(*c).is_some_and(|ct| ct.status.is_live()))
            .cloned()
            .collect();
        for c in &waiting {
            self.awaited.insert(c.clone(), parent.to_string());
        }
        self.siblings.insert(
            parent.to_string(),
            Siblings {
                waiting,
                until: now + self.cfg.sibling_wait_ms,
            },
        );
    }

    /// `name` asked for a place: no lost parent's orphans wait for it any longer. When that
    /// completes the orphans held past the window's end, they are placed at once.
    fn heard_from(&mut self, now: u64, name: &str) {
        let Some(parent) = self.awaited.remove(name) else {
            return;
        };
        let completed = self.siblings.get_mut(&parent).is_some_and(|s| {
            s.waiting.remove(name);
            s.waiting.is_empty()
        });
        if completed && self.window_extended {
            self.window_close = Some(now);
        }
    }

    fn forget_sibling_waits(&mut self, now: u64) {
        self.siblings.retain(|_, s| now < s.until);
        let siblings = &self.siblings;
        self.awaited.retain(|_, p| siblings.contains_key(p));
    }

    /// A held orphan still waits for siblings that have not asked (within their time).
    fn awaits_siblings(&self, now: u64, h: &Held) -> Option<u64> {
        let s = self.siblings.get(h.lost_parent.as_ref()?)?;
        (!s.waiting.is_empty() && now < s.until).then_some(s.until)
    }

    /// A change to the tree's membership, as it reached the root.
    pub fn handle_membership(&mut self, now: u64, delta: &MembershipDelta) {
        // Before the removals below take them out of the model: who the lost nodes' children are.
        for l in &delta.lost {
            self.expect_orphans_of(now, &l.child);
        }
        for m in &delta.upsert {
            // Seen attached somewhere other than under the parent it lost: it will not ask.
            if self.awaited.get(&m.name).is_some_and(|p| p != &m.parent) {
                self.heard_from(now, &m.name);
            }
            self.learn_member(now, m, true);
        }
        for name in &delta.remove {
            if name == &self.root {
                continue;
            }
            // A node we just placed may still be draining out of its old path: its new parent
            // will confirm it (or the placement expires).
            if matches!(self.status(name), Some(Status::Pending { .. })) {
                continue;
            }
            self.detach_structurally(name);
            if let Some(t) = self.nodes.get_mut(name) {
                t.status = Status::Detached { since: now };
            }
            self.dirty = true;
        }
        if !delta.lost.is_empty() {
            // Orphans of this loss will ask for places within moments: collect them together.
            self.open_window(now);
        }
    }

    /// Sets a node back to what the tree's membership says of it (`None`: not in the tree), after
    /// a placement that did not happen: a move that failed, a placement never confirmed.
    pub fn resync(&mut self, now: u64, name: &str, member: Option<&Member>) {
        if name == self.root {
            return;
        }
        match member {
            Some(m) => {
                if let Some(t) = self.nodes.get_mut(name) {
                    t.gen = m.gen;
                }
                self.learn_member(now, m, true);
            }
            None => {
                self.detach_structurally(name);
                if let Some(t) = self.nodes.get_mut(name) {
                    t.status = Status::Detached { since: now };
                    t.in_transit = false;
                }
            }
        }
        self.dirty = true;
    }

    /// Placements whose time ran out; the caller resyncs them from the membership.
    pub fn expired_placements(&self, now: u64) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|(_, t)| matches!(t.status, Status::Pending { until } if now >= until))
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn on_timeout(&mut self, now: u64) {
        if self.window_close.is_some_and(|t| now >= t) {
            self.window_close = None;
            self.close_window(now);
        }
        if self.window_close.is_none() && !self.siblings.is_empty() {
            self.forget_sibling_waits(now);
        }
        if self.window_close.is_none() && now >= self.next_rebalance {
            self.next_rebalance = now + self.cfg.rebalance_every_ms;
            self.rebalance(now);
        }
        let mut changed = false;
        for t in self.nodes.values_mut() {
            match t.status {
                Status::Detached { since } if now >= since + self.cfg.stale_after_ms => {
                    t.status = Status::Stale { since: now };
                    t.in_transit = false;
                    changed = true;
                }
                _ => {}
            }
        }
        if changed {
            let expired: Vec<String> = self
                .nodes
                .iter()
                .filter(|(_, t)| !t.status.is_live() && t.parent.is_some())
                .map(|(n, _)| n.clone())
                .collect();
            for n in expired {
                self.detach_structurally(&n);
            }
            self.dirty = true;
        }
    }

    // ----- Model upkeep ----------------------------------------------------------------------

    fn ensure(&mut self, name: &str, addr: &str) {
        self.nodes.entry(name.to_string()).or_insert_with(|| TNode {
            parent: None,
            children: BTreeSet::new(),
            depth: 0,
            addr: addr.to_string(),
            gen: 0,
            status: Status::Detached { since: 0 },
            in_transit: false,
        });
    }

    /// Takes a member's word for where it is (when its placement is at least as new as ours).
    fn learn_member(&mut self, now: u64, m: &Member, attached: bool) {
        if m.name == self.root {
            return;
        }
        if m.gen > gen_at(now).saturating_add(gen_at(GEN_FUTURE_SLACK_MS)) {
            // Generations are issued by the root from its clock; one from far in the future is a
            // forgery or garbage, and taking it would let it outrank every real placement.
            tracing::warn!(node = %m.name, gen = m.gen, "ignoring a member with an impossible placement generation");
            return;
        }
        self.next_gen = self.next_gen.max(m.gen.saturating_add(1));
        self.ensure(&m.name, &m.addr);
        self.ensure(&m.parent, "");
        let Some(t) = self.nodes.get(&m.name) else {
            return;
        };
        if m.gen < t.gen {
            return; // an older placement still draining out of some path
        }
        let same_place = t.parent.as_deref() == Some(m.parent.as_str());
        if !same_place {
            self.detach_structurally(&m.name);
            if let Some(p) = self.nodes.get_mut(&m.parent) {
                p.children.insert(m.name.clone());
            }
            self.dirty = true;
        }
        if let Some(t) = self.nodes.get_mut(&m.name) {
            t.parent = Some(m.parent.clone());
            t.addr = m.addr.clone();
            t.gen = m.gen;
            if attached {
                let confirmed = !matches!(t.status, Status::Attached);
                t.status = Status::Attached;
                t.in_transit = false;
                if confirmed {
                    // A placement confirmed where it was made: only this node's index entries
                    // change (it may now be a promotable leaf); no depth moved.
                    self.unindex(&m.name);
                    let kids = self.live_children(&m.name);
                    self.index(&m.name, kids);
                    if !same_place {
                        self.dirty = true;
                    }
                }
            } else if !t.status.is_live() {
                t.status = Status::Detached { since: now };
            }
        }
    }

    fn detach_structurally(&mut self, name: &str) {
        let parent = self.nodes.get_mut(name).and_then(|t| t.parent.take());
        if let Some(p) = parent {
            if let Some(pt) = self.nodes.get_mut(&p) {
                pt.children.remove(name);
            }
            self.dirty = true;
        }
    }

    /// Recomputes depths from the root and the free-slot and leaf indexes. O(N); done only after
    /// changes the incremental path does not cover (losses, moves, restarts).
    fn rebuild(&mut self) {
        self.free.clear();
        self.leaves.clear();
        let mut queue = VecDeque::new();
        queue.push_back((self.root.clone(), 0u32));
        let mut seen = 0usize;
        while let Some((name, depth)) = queue.pop_front() {
            seen += 1;
            if seen > self.nodes.len() {
                break; // a cycle in a stale model must not hang the root
            }
            let Some(t) = self.nodes.get_mut(&name) else {
                continue;
            };
            t.depth = depth;
            let live_children: Vec<String> = t.children.iter().cloned().collect();
            let mut kids = 0;
            for c in live_children {
                if self.nodes.get(&c).is_some_and(|ct| ct.status.is_live()) {
                    kids += 1;
                    queue.push_back((c, depth + 1));
                }
            }
            self.index(&name, kids);
        }
        self.dirty = false;
    }

    fn index(&mut self, name: &str, live_children: usize) {
        let Some(t) = self.nodes.get(name) else {
            return;
        };
        if !t.status.is_live() || t.in_transit {
            return;
        }
        if live_children < 2 {
            self.free.insert((t.depth, name.to_string()));
        }
        if live_children == 0 && name != self.root && matches!(t.status, Status::Attached) {
            self.leaves.insert((Reverse(t.depth), name.to_string()));
        }
    }

    fn unindex(&mut self, name: &str) {
        if let Some(t) = self.nodes.get(name) {
            self.free.remove(&(t.depth, name.to_string()));
            self.leaves.remove(&(Reverse(t.depth), name.to_string()));
        }
    }

    fn live_children(&self, name: &str) -> usize {
        self.nodes.get(name).map_or(0, |t| {
            t.children
                .iter()
                .filter(|c| self.nodes.get(*c).is_some_and(|ct| ct.status.is_live()))
                .count()
        })
    }

    /// Puts `name` under `parent` as a pending placement and keeps the indexes right.
    fn attach_pending(&mut self, now: u64, name: &str, parent: &str) -> u64 {
        let gen = self.next_gen.max(gen_at(now));
        self.next_gen = gen.saturating_add(1);
        let old_parent = self.nodes.get(name).and_then(|t| t.parent.clone());
        self.unindex(parent);
        self.unindex(name);
        if let Some(op) = &old_parent {
            self.unindex(op);
        }
        self.detach_structurally(name);
        let pdepth = self.nodes.get(parent).map_or(0, |t| t.depth);
        if let Some(p) = self.nodes.get_mut(parent) {
            p.children.insert(name.to_string());
        }
        if let Some(t) = self.nodes.get_mut(name) {
            t.parent = Some(parent.to_string());
            t.gen = gen;
            t.status = Status::Pending {
                until: now + self.cfg.pending_ttl_ms,
            };
            t.in_transit = false;
            t.depth = pdepth + 1;
        }
        // Depths below a moved subtree change; the subtree members were kept out of the indexes
        // while in transit, so a walk sets them right and indexes them.
        self.redepth_subtree(name);
        let kids = self.live_children(parent);
        self.index(parent, kids);
        if let Some(op) = old_parent {
            let kids = self.live_children(&op);
            self.index(&op, kids);
        }
        // Detaching may have set `dirty`; the incremental updates above keep the model exact.
        self.dirty = false;
        gen
    }

    fn redepth_subtree(&mut self, top: &str) {
        let mut stack = vec![top.to_string()];
        let mut guard = 0usize;
        while let Some(name) = stack.pop() {
            guard += 1;
            if guard > self.nodes.len() {
                break;
            }
            let Some(t) = self.nodes.get(&name) else {
                continue;
            };
            let depth = t.depth;
            let kids: Vec<String> = t.children.iter().cloned().collect();
            self.unindex(&name);
            for k in &kids {
                self.unindex(k);
                if let Some(kt) = self.nodes.get_mut(k) {
                    kt.depth = depth + 1;
                    kt.in_transit = false;
                }
                stack.push(k.clone());
            }
            let live = self.live_children(&name);
            self.index(&name, live);
        }
    }

    // ----- Decisions -------------------------------------------------------------------------

    fn peer(&self, name: &str) -> Peer {
        let addr = if name == self.root {
            self.root_addr.clone()
        } else {
            self.nodes
                .get(name)
                .map_or(String::new(), |t| t.addr.clone())
        };
        Peer {
            name: name.to_string(),
            addr,
        }
    }

    /// The shallowest free slot, a suspect's only when there is no other: a suspect that is in
    /// fact alive (an agent restarted at once, whose orphans still name it lost) may be the only
    /// free place in a small tree, and refusing it would send the orphans back for good. Under a
    /// suspect really dead, the orphan's attach fails and it asks again, until the root learns of
    /// the loss and the slot is gone.
    fn shallowest_free(&self, exclude: &str) -> Option<(u32, String)> {
        self.free
            .iter()
            .find(|(_, n)| n != exclude && !self.suspects.contains(n))
            .or_else(|| self.free.iter().find(|(_, n)| n != exclude))
            .cloned()
    }

    fn place(&mut self, now: u64, ticket: u64, join: &Join) {
        if self.dirty {
            self.rebuild();
        }
        let Some((_, slot)) = self.shallowest_free(&join.name) else {
            self.decisions.push_back((
                ticket,
                Msg::Retry {
                    after_ms: 500,
                    reason: "no free place in the tree yet".into(),
                },
            ));
            return;
        };
        let gen = self.attach_pending(now, &join.name, &slot);
        let parent = self.peer(&slot);
        self.decisions.push_back((
            ticket,
            Msg::Placed(Placed {
                parent,
                gen,
                root_epoch: self.epoch,
                kept: None,
                grant: Sealed::default(),
            }),
        ));
    }

    fn close_window(&mut self, now: u64) {
        // While an orphan's lost parent has children that have not asked yet, every orphan stays
        // held (all of them, so that the tallest still get the shallowest places), until the
        // siblings ask or their wait ends, and never longer than the sibling wait past the
        // window's own end (losses that keep coming must not hold the window open for good).
        let cap = self.window_opened + self.cfg.heal_window_ms + self.cfg.sibling_wait_ms;
        let waiting = self
            .held
            .iter()
            .filter_map(|h| self.awaits_siblings(now, h))
            .min();
        if let Some(until) = waiting.filter(|_| now < cap) {
            self.window_close = Some(until.min(cap));
            self.window_extended = true;
            return;
        }
        self.window_close = None;
        self.window_extended = false;
        self.forget_sibling_waits(now);
        let mut held = std::mem::take(&mut self.held);
        if held.is_empty() {
            self.suspects.clear();
            return;
        }
        if self.dirty {
            self.rebuild();
        }
        // Tallest first: the biggest subtrees get the shallowest places.
        held.sort_by(|a, b| {
            (Reverse(a.join.height), &a.join.name).cmp(&(Reverse(b.join.height), &b.join.name))
        });
        // An agent may have asked twice (a retry after a timeout): answer each ticket, place once.
        let mut placed: HashMap<String, Msg> = HashMap::new();
        let total = held.len();
        for (i, h) in held.into_iter().enumerate() {
            if let Some(answer) = placed.get(&h.join.name) {
                self.decisions.push_back((h.ticket, answer.clone()));
                continue;
            }
            let remaining = total - i;
            if remaining >= 2 {
                self.promote_if_useful(now, &h.join.name);
            }
            let Some((_, slot)) = self.shallowest_free(&h.join.name) else {
                self.decisions.push_back((
                    h.ticket,
                    Msg::Retry {
                        after_ms: 500,
                        reason: "no free place in the tree yet".into(),
                    },
                ));
                continue;
            };
            let gen = self.attach_pending(now, &h.join.name, &slot);
            let answer = Msg::Placed(Placed {
                parent: self.peer(&slot),
                gen,
                root_epoch: self.epoch,
                kept: None,
                grant: Sealed::default(),
            });
            placed.insert(h.join.name.clone(), answer.clone());
            self.decisions.push_back((h.ticket, answer));
        }
        self.suspects.clear();
    }

    /// Compacts the tree after failures: moves the deepest leaves into the shallowest free slots
    /// while that makes them at least two levels shallower. Only leaves move, so no subtree is
    /// disturbed; a bounded number per round keeps the churn low.
    fn rebalance(&mut self, now: u64) {
        if self.dirty {
            self.rebuild();
        }
        let budget = 8 + self.nodes.len() / 256;
        for _ in 0..budget {
            let Some((Reverse(dl), leaf)) = self.leaves.iter().next().cloned() else {
                return;
            };
            let Some((ds, slot)) = self.shallowest_free(&leaf) else {
                return;
            };
            if dl <= ds + 1 {
                return;
            }
            let gen = self.attach_pending(now, &leaf, &slot);
            self.rebalance_moves += 1;
            let parent = self.peer(&slot);
            self.moves.push_back((leaf, parent, gen));
        }
    }

    /// Turns the shallowest free slot into two one level down by moving a deep leaf into it, when
    /// the next free slot is deeper than that.
    fn promote_if_useful(&mut self, now: u64, orphan: &str) {
        let mut slots = self
            .free
            .iter()
            .filter(|(_, n)| n != orphan && !self.suspects.contains(n));
        let Some((d0, s0)) = slots.next().cloned() else {
            return;
        };
        let next = slots.next().map(|(d, _)| *d);
        if next.is_some_and(|d| d <= d0 + 1) {
            return;
        }
        let Some((_, leaf)) = self
            .leaves
            .iter()
            .find(|(Reverse(d), n)| {
                *d > d0 + 1 && n != &s0 && n != orphan && !self.suspects.contains(n)
            })
            .cloned()
        else {
            return;
        };
        let gen = self.attach_pending(now, &leaf, &s0);
        self.promotions += 1;
        let parent = self.peer(&s0);
        self.moves.push_back((leaf, parent, gen));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banyan_protocol::wire::Lost;

    fn join(name: &str, reason: JoinReason) -> Join {
        Join {
            name: name.into(),
            addr: format!("{name}:1337"),
            reason,
            height: 0,
            subtree: vec![],
            lost: vec![],
        }
    }

    fn placed_parent(p: &mut Placement) -> String {
        match p.poll_decision() {
            Some((_, Msg::Placed(pl))) => pl.parent.name,
            other => panic!("expected a placement, got {other:?}"),
        }
    }

    #[test]
    fn fresh_agents_fill_the_tree_breadth_first() {
        let mut p = Placement::new("root", "r:1", 7, PlacementConfig::default());
        let mut parents = vec![];
        for i in 0..6 {
            p.handle_join(0, i, join(&format!("n{i}"), JoinReason::Fresh));
            parents.push(placed_parent(&mut p));
        }
        assert_eq!(parents, ["root", "root", "n0", "n0", "n1", "n1"]);
        assert_eq!(p.depth_of("n5"), Some(2));
    }

    /// root -> n0, n1; n0 -> n2, n3; n1 -> n4, n5, all seen attached.
    fn six_node_tree() -> Placement {
        let mut p = Placement::new("root", "r:1", 7, PlacementConfig::default());
        let mut upsert = vec![];
        for i in 0..6 {
            let name = format!("n{i}");
            p.handle_join(0, i, join(&name, JoinReason::Fresh));
            let parent = placed_parent(&mut p);
            upsert.push(Member {
                name: name.clone(),
                parent,
                addr: format!("{name}:1337"),
                gen: p.nodes[&name].gen,
                grant: Sealed::default(),
            });
        }
        p.handle_membership(
            1,
            &MembershipDelta {
                upsert,
                ..Default::default()
            },
        );
        p
    }

    fn lose(p: &mut Placement, now: u64, child: &str, below: &[&str]) {
        let mut remove = vec![child.to_string()];
        remove.extend(below.iter().map(|s| s.to_string()));
        p.handle_membership(
            now,
            &MembershipDelta {
                upsert: vec![],
                remove,
                lost: vec![Lost {
                    parent: "root".into(),
                    child: child.into(),
                    seq: None,
                    holds: vec![],
                }],
            },
        );
    }

    fn orphan(p: &mut Placement, now: u64, ticket: u64, name: &str, parent: &str) {
        p.handle_join(
            now,
            ticket,
            join(
                name,
                JoinReason::ParentLost {
                    parent: parent.into(),
                },
            ),
        );
    }

    fn decided(p: &mut Placement) -> Vec<u64> {
        std::iter::from_fn(|| p.poll_decision())
            .map(|(t, _)| t)
            .collect()
    }

    /// Agents restarted at once (`systemctl restart`) come back as fresh joins and take their
    /// old places at the root before their orphans ask: the orphans still name them lost, and in
    /// a tree this small they are the only free places. Found by tests/tests/inventory.rs, where
    /// the orphans were sent back to retry for good.
    #[test]
    fn orphans_of_a_parent_restarted_at_once_are_placed_under_it() {
        let mut p = Placement::new("root", "r:1", 7, PlacementConfig::default());
        for i in 0..5 {
            p.handle_join(0, i, join(&format!("n{i}"), JoinReason::Fresh));
            placed_parent(&mut p);
        }
        // n0 (parent of n2, n3) and n1 (parent of n4) restart.
        p.handle_join(1_000, 10, join("n0", JoinReason::Fresh));
        assert_eq!(placed_parent(&mut p), "root");
        p.handle_join(1_010, 11, join("n1", JoinReason::Fresh));
        assert_eq!(placed_parent(&mut p), "root");
        orphan(&mut p, 3_000, 12, "n2", "n0");
        orphan(&mut p, 3_001, 13, "n3", "n0");
        orphan(&mut p, 3_002, 14, "n4", "n1");
        p.on_timeout(3_400);
        let mut parents = vec![];
        while let Some((ticket, msg)) = p.poll_decision() {
            match msg {
                Msg::Placed(pl) => parents.push((ticket, pl.parent.name)),
                other => panic!("ticket {ticket}: expected a placement, got {other:?}"),
            }
        }
        parents.sort();
        assert_eq!(
            parents,
            [
                // n2 takes the only free place, under n0; n3 and n4 then go under n2, which is not
                // suspect (compaction evens the depths later).
                (12, "n0".to_string()),
                (13, "n2".to_string()),
                (14, "n2".to_string())
            ]
        );
    }

    #[test]
    fn orphans_of_one_death_are_placed_together_when_the_second_asks_late() {
        let mut p = six_node_tree();
        lose(&mut p, 10_000, "n0", &["n2", "n3"]);
        orphan(&mut p, 10_050, 100, "n2", "n0");
        p.on_timeout(10_400);
        assert_eq!(
            decided(&mut p),
            Vec::<u64>::new(),
            "n2 waits for its sibling n3"
        );
        assert_eq!(
            p.next_timeout(),
            10_650,
            "at most the sibling wait from the loss"
        );
        orphan(&mut p, 10_470, 101, "n3", "n0");
        assert_eq!(
            p.next_timeout(),
            10_470,
            "the last sibling asked: place them now"
        );
        p.on_timeout(10_470);
        assert_eq!(decided(&mut p), vec![100, 101]);
    }

    #[test]
    fn a_sibling_that_never_asks_holds_an_orphan_for_the_sibling_wait_only() {
        let mut p = six_node_tree();
        lose(&mut p, 10_000, "n0", &["n2", "n3"]);
        orphan(&mut p, 10_010, 100, "n2", "n0");
        p.on_timeout(10_400);
        p.on_timeout(10_649);
        assert_eq!(decided(&mut p), Vec::<u64>::new());
        p.on_timeout(10_650);
        assert_eq!(decided(&mut p), vec![100]);
        assert!(
            p.siblings.is_empty() && p.awaited.is_empty(),
            "nothing left waiting"
        );
    }

    #[test]
    fn orphans_whose_siblings_all_asked_keep_the_plain_heal_window() {
        let mut p = six_node_tree();
        lose(&mut p, 10_000, "n0", &["n2", "n3"]);
        orphan(&mut p, 10_010, 100, "n2", "n0");
        orphan(&mut p, 10_020, 101, "n3", "n0");
        p.on_timeout(10_399);
        assert_eq!(decided(&mut p), Vec::<u64>::new());
        p.on_timeout(10_400);
        assert_eq!(decided(&mut p), vec![100, 101]);
    }

    #[test]
    fn a_sibling_seen_attached_elsewhere_is_not_waited_for() {
        let mut p = six_node_tree();
        lose(&mut p, 10_000, "n0", &["n2", "n3"]);
        orphan(&mut p, 10_010, 100, "n2", "n0");
        let gen = p.nodes["n3"].gen + 1;
        p.handle_membership(
            10_100,
            &MembershipDelta {
                upsert: vec![Member {
                    name: "n3".into(),
                    parent: "n4".into(),
                    addr: "n3:1337".into(),
                    gen,
                    grant: Sealed::default(),
                }],
                ..Default::default()
            },
        );
        p.on_timeout(10_400);
        assert_eq!(decided(&mut p), vec![100]);
    }

    #[test]
    fn the_root_name_is_refused() {
        let mut p = Placement::new("root", "r:1", 7, PlacementConfig::default());
        p.handle_join(0, 1, join("root", JoinReason::Fresh));
        assert!(matches!(p.poll_decision(), Some((1, Msg::Refused { .. }))));
    }
}

//! A discrete-event simulator of the whole tree: one [`RootCore`] and thousands of agent
//! [`Node`]s in one process, with virtual time, per-message latency, dead agents, cut hosts and a
//! root that restarts. It drives exactly the state machines that the daemons run; only the
//! sockets are replaced by a priority queue.
//!
//! Links behave like QUIC connections: each attach opens a new link, messages travel only on the
//! link they were sent on, and a message to a dead or cut-off host is silently lost (as UDP is when
//! a link goes down). Everything is seeded: the same seed replays the same run.

use banyan_agent::tree::{Action, HandoverStats, Node, Phase, TreeConfig};
use banyan_protocol::metric::MetricSet;
use banyan_protocol::wire::{CommandBody, Msg, ROOT_NAME};
use banyan_root::core::{Kept, RootAction, RootCore};
use banyan_root::placement::{PlacementConfig, Status};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// The counter every simulated agent reports; the harness knows its true value.
pub const COUNTER: &str = "sim_work_total";

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub latency_min_ms: u64,
    pub latency_max_ms: u64,
    /// How long a connection attempt to an unreachable peer takes to fail.
    pub connect_timeout_ms: u64,
    pub tree: TreeConfig,
    pub placement: PlacementConfig,
    /// Count messages and bytes that reach the root (costs an encode per message).
    pub measure_root_ingress: bool,
    /// Check the invariants that hold at every instant after every event (see
    /// [`Sim::check_event`]); the first one broken is reported by [`Sim::check`]. On by default;
    /// it costs a walk up the tree from the node that handled the event.
    pub check_every_event: bool,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            latency_min_ms: 1,
            latency_max_ms: 3,
            connect_timeout_ms: 1000,
            tree: TreeConfig::default(),
            placement: PlacementConfig::default(),
            measure_root_ingress: false,
            check_every_event: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum End {
    Root,
    Agent(usize),
}

#[derive(Debug)]
enum Ev {
    Timer(End),
    JoinArrive {
        from: usize,
        ticket: u64,
        join: banyan_protocol::wire::Join,
    },
    JoinReply {
        to: usize,
        reply: Result<Msg, String>,
    },
    AttachArrive {
        child: usize,
        parent: End,
        link: u64,
        attach: banyan_protocol::wire::Attach,
    },
    AttachReply {
        child: usize,
        link: u64,
        msg: Msg,
    },
    ConnectFailed {
        child: usize,
        link: u64,
    },
    Up {
        link: u64,
        child: usize,
        parent: End,
        msg: Msg,
    },
    Down {
        link: u64,
        child: usize,
        msg: Msg,
    },
}

struct SimAgent {
    node: Node,
    alive: bool,
    value: f64,
    /// Current link to the parent (attaching or attached).
    link: Option<u64>,
}

/// Root ingress measured over a span of waves.
#[derive(Debug, Default, Clone)]
pub struct Ingress {
    pub messages: u64,
    pub bytes: u64,
    pub report_messages: u64,
    pub report_bytes: u64,
}

pub struct Sim {
    cfg: SimConfig,
    now: u64,
    rng: StdRng,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Ev>,
    scheduled: HashMap<End, u64>,
    root: RootCore,
    root_up: bool,
    agents: Vec<SimAgent>,
    names: HashMap<String, usize>,
    cut: HashSet<usize>,
    /// Live links: id -> (child, parent).
    links: HashMap<u64, (usize, End)>,
    /// (parent, child) -> link id, as the parent sees it.
    child_links: HashMap<(End, usize), u64>,
    next_link: u64,
    next_ticket: u64,
    tickets: HashMap<u64, usize>,
    /// Last delivery time per (link, downward?): a link is an ordered stream, so nothing overtakes.
    fifo: HashMap<(u64, bool), u64>,
    epoch: u64,
    pub ingress: Ingress,
    /// Per command id: how many of its targets it has reached, and when the last one got it.
    reached: HashMap<u64, (usize, u64)>,
    /// The true sum of every agent's counter, kept as the counters move.
    true_sum: f64,
    /// Events handled and checked, and the first invariant an event broke.
    pub events_checked: u64,
    violation: Option<String>,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let rng = StdRng::seed_from_u64(cfg.seed);
        let root = RootCore::new(
            ROOT_NAME,
            "root:1337",
            cfg.tree.clone(),
            cfg.placement.clone(),
            Kept::default(),
            1,
            0,
        );
        let mut sim = Sim {
            cfg,
            now: 0,
            rng,
            seq: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            scheduled: HashMap::new(),
            root,
            root_up: true,
            agents: Vec::new(),
            names: HashMap::new(),
            cut: HashSet::new(),
            links: HashMap::new(),
            child_links: HashMap::new(),
            next_link: 1,
            next_ticket: 1,
            tickets: HashMap::new(),
            fifo: HashMap::new(),
            epoch: 1,
            ingress: Ingress::default(),
            reached: HashMap::new(),
            true_sum: 0.0,
            events_checked: 0,
            violation: None,
        };
        sim.reschedule(End::Root);
        sim
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn seed(&self) -> u64 {
        self.cfg.seed
    }

    pub fn name_of(i: usize) -> String {
        format!("n{i}")
    }

    /// Starts `n` new agents now; returns their indexes.
    pub fn add_agents(&mut self, n: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.agents.len();
            let name = Self::name_of(i);
            let node = Node::new_agent(
                &name,
                &format!("{name}:1337"),
                self.cfg.tree.clone(),
                self.now,
            );
            self.agents.push(SimAgent {
                node,
                alive: true,
                value: 0.0,
                link: None,
            });
            self.names.insert(name, i);
            self.reschedule(End::Agent(i));
            out.push(i);
        }
        out
    }

    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Agents that run and are not cut off.
    pub fn live(&self) -> Vec<usize> {
        (0..self.agents.len())
            .filter(|i| self.agents[*i].alive && !self.cut.contains(i))
            .collect()
    }

    pub fn is_alive(&self, i: usize) -> bool {
        self.agents[i].alive
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.agents[i].node
    }

    pub fn root(&mut self) -> &mut RootCore {
        &mut self.root
    }

    /// Adds `by` to the counter of every live agent (between steps, so the tree is quiescent
    /// when failures are injected).
    pub fn bump_all(&mut self, by: impl Fn(usize) -> f64) {
        for i in 0..self.agents.len() {
            if self.agents[i].alive {
                let by = by(i);
                self.agents[i].value += by;
                self.true_sum += by;
                let mut own = MetricSet::new();
                own.set_counter(COUNTER, self.agents[i].value);
                self.agents[i].node.set_own(own);
            }
        }
    }

    /// Adds `by` to one live agent's counter, now (in the middle of whatever the tree is doing).
    pub fn bump(&mut self, i: usize, by: f64) {
        if self.agents[i].alive {
            self.agents[i].value += by;
            self.true_sum += by;
            let mut own = MetricSet::new();
            own.set_counter(COUNTER, self.agents[i].value);
            self.agents[i].node.set_own(own);
        }
    }

    /// How the agents settled what they owed when they lost a parent, summed.
    pub fn handovers(&self) -> HandoverStats {
        let mut t = HandoverStats::default();
        for a in &self.agents {
            let h = a.node.handovers();
            t.exact += h.exact;
            t.by_last_sent += h.by_last_sent;
            t.rewound += h.rewound;
            t.not_rewound += h.not_rewound;
        }
        t
    }

    /// The true sum: live agents' current values plus dead agents' values at death.
    pub fn true_total(&self) -> f64 {
        self.agents.iter().map(|a| a.value).sum()
    }

    pub fn root_total(&self) -> f64 {
        self.root.totals().counter(COUNTER)
    }

    /// Kills an agent: it stops at once, its links go silent.
    pub fn kill(&mut self, i: usize) {
        self.agents[i].alive = false;
        self.agents[i].link = None;
    }

    /// Cuts a host off the network (both directions), or restores it.
    pub fn set_cut(&mut self, i: usize, cut: bool) {
        if cut {
            self.cut.insert(i);
        } else {
            self.cut.remove(&i);
        }
    }

    /// Restarts the root: its state is gone except the counters it persisted (its totals at the
    /// moment it stopped), every link to it breaks silently.
    pub fn restart_root(&mut self) {
        let kept = self.root.kept();
        self.restart_root_from(kept);
    }

    /// What the root would write to its state dir now.
    pub fn root_kept(&self) -> Kept {
        self.root.kept()
    }

    /// Restarts the root from what it wrote some time before it stopped (its writer lags).
    pub fn restart_root_from(&mut self, persisted: Kept) {
        self.epoch += 1;
        self.root = RootCore::new(
            ROOT_NAME,
            "root:1337",
            self.cfg.tree.clone(),
            self.cfg.placement.clone(),
            persisted,
            self.epoch,
            self.now,
        );
        self.links.retain(|_, (_, p)| *p != End::Root);
        self.child_links.retain(|(p, _), _| *p != End::Root);
        self.root_up = true;
        self.reschedule(End::Root);
    }

    /// Which agents are children of dead-or-alive inner positions, for choosing failures.
    pub fn inner_agents(&self) -> Vec<usize> {
        (0..self.agents.len())
            .filter(|i| self.agents[*i].alive && self.agents[*i].node.children().next().is_some())
            .collect()
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Changes the per-message latency from now on (messages already in flight keep theirs).
    pub fn set_latency(&mut self, min_ms: u64, max_ms: u64) {
        self.cfg.latency_min_ms = min_ms;
        self.cfg.latency_max_ms = max_ms.max(min_ms);
    }

    /// Sends an operator command from the root to `targets` now, as the root's shell does (its
    /// messages leave at once); returns the command's id. The report comes out of
    /// `root().poll_command_report()`, and [`Sim::command_reached`] tells how far it got.
    pub fn start_command(&mut self, targets: &[String], body: CommandBody) -> u64 {
        let id = self.root.start_command(self.now, targets, body);
        self.drain(End::Root);
        id
    }

    /// How many targets command `id` has reached so far, and when (virtual ms) the last of them
    /// got it.
    pub fn command_reached(&self, id: u64) -> Option<(usize, u64)> {
        self.reached.get(&id).copied()
    }

    // ----- Running -----------------------------------------------------------------------------

    /// Runs until virtual time `t`.
    pub fn run_until(&mut self, t: u64) {
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > t {
                break;
            }
            self.queue.pop();
            self.now = at;
            if let Some(ev) = self.events.remove(&seq) {
                let end = ev.handler();
                self.dispatch(ev);
                if self.cfg.check_every_event && self.violation.is_none() {
                    self.events_checked += 1;
                    if let Err(e) = self.check_event(end) {
                        self.violation = Some(format!(
                            "at t={} ms, after an event at {end:?}: {e}",
                            self.now
                        ));
                    }
                }
            }
        }
        self.now = t;
    }

    pub fn run_for(&mut self, ms: u64) {
        let t = self.now + ms;
        self.run_until(t);
    }

    /// Runs in steps of `step_ms` until `done` holds or `limit_ms` passes; returns the time taken.
    pub fn run_until_cond(
        &mut self,
        step_ms: u64,
        limit_ms: u64,
        mut done: impl FnMut(&mut Sim) -> bool,
    ) -> Option<u64> {
        let start = self.now;
        while self.now - start <= limit_ms {
            if done(self) {
                return Some(self.now - start);
            }
            self.run_for(step_ms);
        }
        None
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.insert(self.seq, ev);
        self.queue.push(Reverse((at, self.seq)));
    }

    fn latency(&mut self) -> u64 {
        self.rng
            .gen_range(self.cfg.latency_min_ms..=self.cfg.latency_max_ms)
    }

    /// Delivery time of a message on a link: after `lat`, but never before the previous one.
    fn ordered(&mut self, link: u64, down: bool, lat: u64) -> u64 {
        let last = self.fifo.entry((link, down)).or_insert(0);
        let at = (self.now + lat).max(*last);
        *last = at;
        at
    }

    fn reachable(&self, a: End, b: End) -> bool {
        let ok = |e: End| match e {
            End::Root => self.root_up,
            End::Agent(i) => self.agents[i].alive && !self.cut.contains(&i),
        };
        ok(a) && ok(b)
    }

    fn reschedule(&mut self, end: End) {
        let t = match end {
            End::Root => self.root.next_timeout(),
            End::Agent(i) => {
                if !self.agents[i].alive {
                    return;
                }
                self.agents[i].node.next_timeout()
            }
        };
        let t = t.max(self.now);
        match self.scheduled.get(&end) {
            Some(&s) if s <= t && s >= self.now => {}
            _ => {
                self.scheduled.insert(end, t);
                self.push(t, Ev::Timer(end));
            }
        }
    }

    fn end_of(&self, name: &str) -> Option<End> {
        if name == ROOT_NAME {
            Some(End::Root)
        } else {
            self.names.get(name).map(|i| End::Agent(*i))
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Timer(end) => {
                if self.scheduled.get(&end) != Some(&self.now) {
                    return;
                }
                self.scheduled.remove(&end);
                match end {
                    End::Root => self.root.on_timeout(self.now),
                    End::Agent(i) => {
                        if !self.agents[i].alive {
                            return;
                        }
                        self.agents[i].node.on_timeout(self.now);
                    }
                }
                self.drain(end);
            }
            Ev::JoinArrive { from, ticket, join } => {
                if !self.reachable(End::Root, End::Agent(from)) {
                    return;
                }
                self.root.handle_join(self.now, ticket, join);
                self.drain(End::Root);
            }
            Ev::JoinReply { to, reply } => {
                if !self.agents[to].alive {
                    return;
                }
                let _ = self.agents[to].node.handle_join_reply(self.now, reply);
                self.drain(End::Agent(to));
            }
            Ev::AttachArrive {
                child,
                parent,
                link,
                attach,
            } => {
                if !self.reachable(parent, End::Agent(child)) || !self.links.contains_key(&link) {
                    return;
                }
                let answer = match parent {
                    End::Root => self.root.handle_attach(self.now, attach),
                    End::Agent(p) => self.agents[p].node.handle_attach(self.now, attach),
                };
                if matches!(answer, Msg::Accepted { .. }) {
                    self.child_links.insert((parent, child), link);
                } else {
                    self.links.remove(&link);
                }
                let lat = self.latency();
                self.push(
                    self.now + lat,
                    Ev::AttachReply {
                        child,
                        link,
                        msg: answer,
                    },
                );
                self.drain(parent);
            }
            Ev::AttachReply { child, link, msg } => {
                if !self.agents[child].alive || self.agents[child].link != Some(link) {
                    return;
                }
                self.agents[child].node.handle_parent_msg(self.now, msg);
                self.drain(End::Agent(child));
            }
            Ev::ConnectFailed { child, link } => {
                if !self.agents[child].alive || self.agents[child].link != Some(link) {
                    return;
                }
                self.agents[child].link = None;
                self.links.remove(&link);
                self.agents[child]
                    .node
                    .handle_parent_failed(self.now, "connection timed out");
                self.drain(End::Agent(child));
            }
            Ev::Up {
                link,
                child,
                parent,
                msg,
            } => {
                if !self.reachable(parent, End::Agent(child))
                    || self.child_links.get(&(parent, child)) != Some(&link)
                {
                    return;
                }
                let name = Self::name_of(child);
                if let (Ok(w), Msg::Membership(d)) = (std::env::var("SIM_TRACE"), &msg) {
                    if d.upsert.iter().any(|m| m.name == w) || d.remove.contains(&w) {
                        eprintln!(
                            "t={} {name} -> {parent:?}: up {:?} rm {}",
                            self.now,
                            d.upsert.iter().filter(|m| m.name == w).collect::<Vec<_>>(),
                            d.remove.contains(&w)
                        );
                    }
                }
                match parent {
                    End::Root => {
                        if self.cfg.measure_root_ingress {
                            let bytes =
                                banyan_protocol::frame::encode(&msg).map_or(0, |b| b.len()) as u64;
                            self.ingress.messages += 1;
                            self.ingress.bytes += bytes;
                            if matches!(msg, Msg::Report(_)) {
                                self.ingress.report_messages += 1;
                                self.ingress.report_bytes += bytes;
                            }
                        }
                        self.root.handle_child_msg(self.now, &name, msg)
                    }
                    End::Agent(p) => self.agents[p].node.handle_child_msg(self.now, &name, msg),
                }
                self.drain(parent);
            }
            Ev::Down { link, child, msg } => {
                if !self.agents[child].alive
                    || self.cut.contains(&child)
                    || self.agents[child].link != Some(link)
                {
                    return;
                }
                if let Msg::Command(cmd) = &msg {
                    let name = Self::name_of(child);
                    if cmd.targets.contains(&name) {
                        let r = self.reached.entry(cmd.id).or_insert((0, 0));
                        *r = (r.0 + 1, self.now);
                    }
                }
                self.agents[child].node.handle_parent_msg(self.now, msg);
                self.drain(End::Agent(child));
            }
        }
    }

    /// Carries out everything a node asked for.
    fn drain(&mut self, end: End) {
        match end {
            End::Root => {
                while let Some(a) = self.root.poll_action() {
                    match a {
                        RootAction::ReplyJoin { ticket, msg } => {
                            if let Some(to) = self.ticket_owner(ticket) {
                                if self.reachable(End::Root, End::Agent(to)) {
                                    let lat = self.latency();
                                    self.push(self.now + lat, Ev::JoinReply { to, reply: Ok(msg) });
                                }
                            }
                        }
                        RootAction::Node(action) => self.node_action(End::Root, action),
                    }
                }
            }
            End::Agent(i) => {
                while let Some(a) = self.agents[i].node.poll_action() {
                    self.node_action(End::Agent(i), a);
                }
            }
        }
        self.reschedule(end);
    }

    fn ticket_owner(&mut self, ticket: u64) -> Option<usize> {
        self.tickets.remove(&ticket)
    }

    fn node_action(&mut self, from: End, action: Action) {
        let lat = self.latency();
        match (from, action) {
            (End::Agent(i), Action::SendJoin(join)) => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                if self.reachable(End::Root, End::Agent(i)) {
                    self.tickets.insert(ticket, i);
                    self.push(
                        self.now + lat,
                        Ev::JoinArrive {
                            from: i,
                            ticket,
                            join,
                        },
                    );
                } else {
                    let t = self.now + self.cfg.connect_timeout_ms;
                    self.push(
                        t,
                        Ev::JoinReply {
                            to: i,
                            reply: Err("root unreachable".into()),
                        },
                    );
                }
            }
            (End::Agent(i), Action::ConnectParent { peer, attach }) => {
                let link = self.next_link;
                self.next_link += 1;
                self.agents[i].link = Some(link);
                match self.end_of(&peer.name) {
                    Some(parent) if self.reachable(parent, End::Agent(i)) => {
                        self.links.insert(link, (i, parent));
                        self.push(
                            self.now + lat,
                            Ev::AttachArrive {
                                child: i,
                                parent,
                                link,
                                attach,
                            },
                        );
                    }
                    _ => {
                        let t = self.now + self.cfg.connect_timeout_ms;
                        self.links.insert(link, (i, End::Root));
                        self.push(t, Ev::ConnectFailed { child: i, link });
                    }
                }
            }
            (End::Agent(i), Action::ToParent(msg)) => {
                if let Some(link) = self.agents[i].link {
                    if let Some((_, parent)) = self.links.get(&link).copied() {
                        let at = self.ordered(link, false, lat);
                        self.push(
                            at,
                            Ev::Up {
                                link,
                                child: i,
                                parent,
                                msg,
                            },
                        );
                    }
                }
            }
            (End::Agent(i), Action::CloseParent { .. }) => {
                if let Some(link) = self.agents[i].link.take() {
                    self.links.remove(&link);
                }
            }
            (from, Action::ToChild { child, msg }) => {
                if let Some(&c) = self.names.get(&child) {
                    if let Some(&link) = self.child_links.get(&(from, c)) {
                        if self.reachable(from, End::Agent(c)) {
                            let at = self.ordered(link, true, lat);
                            self.push(
                                at,
                                Ev::Down {
                                    link,
                                    child: c,
                                    msg,
                                },
                            );
                        }
                    }
                }
            }
            (from, Action::CloseChild { child, .. }) => {
                if let Some(&c) = self.names.get(&child) {
                    self.child_links.remove(&(from, c));
                }
            }
            // The simulator models the tree, not a node's scrapes or actions.
            (End::Agent(_), Action::Execute { .. }) => {}
            (End::Root, _) => {}
        }
    }

    // ----- Invariants --------------------------------------------------------------------------

    /// The invariants that hold at every instant, even in the middle of a heal, checked at the
    /// node `end` that just handled an event (only its state changed): it has at most two
    /// children; it refused no claim (every node here is honest); following the parents the live
    /// agents believe in, from it, never comes back to it (no cycle); and, at the root, the total
    /// is never above the true one (nothing is counted twice, whatever is in flight).
    fn check_event(&self, end: End) -> Result<(), String> {
        let node = match end {
            End::Root => &self.root.node,
            End::Agent(i) => {
                if !self.agents[i].alive {
                    return Ok(());
                }
                &self.agents[i].node
            }
        };
        let c = node.children().count();
        if c > 2 {
            return Err(format!("{} has {c} children", node.name()));
        }
        if node.refused_claims_total() > 0 {
            return Err(format!(
                "{} refused {} genuine claims",
                node.name(),
                node.refused_claims_total()
            ));
        }
        match end {
            End::Agent(i) => {
                let mut cur = i;
                for _ in 0..=self.agents.len() {
                    let Some(parent) = self.agents[cur].node.parent() else {
                        return Ok(());
                    };
                    match self.names.get(&parent.name) {
                        Some(&p) if p == i => {
                            return Err(format!("{} is its own ancestor", node.name()))
                        }
                        Some(&p) if self.agents[p].alive => cur = p,
                        _ => return Ok(()),
                    }
                }
                Err(format!("a cycle above {}", node.name()))
            }
            End::Root => {
                let (got, want) = (self.root_total(), self.true_sum);
                // Exact for integer counts (sums below 2^53); the margin only absorbs rounding
                // of fractional ones, far below a single count.
                if got > want + 1e-9 * want.max(1.0) {
                    return Err(format!(
                        "the root's total {got} is above the true total {want}: counted twice"
                    ));
                }
                Ok(())
            }
        }
    }

    /// Checks the tree's invariants over every live agent; returns what is wrong. These hold once
    /// the tree is quiescent (healed, the counters' last values reported): every live agent is
    /// attached on a path its parents agree with up to the root, at most two children each, no
    /// cycle, the root's model agrees, the depth within ceil(log2(N+1)) + 2, no claim refused,
    /// and (with `check_totals`) the root's total equals the true total. An invariant broken by
    /// any event since the start (see [`SimConfig::check_every_event`]) is reported first.
    pub fn check(&mut self, check_totals: bool) -> Result<TreeShape, String> {
        if let Some(v) = &self.violation {
            return Err(v.clone());
        }
        let live = self.live();
        let n = live.len();
        let bound = ((n as f64 + 1.0).log2().ceil() as u32) + 2;
        let mut max_depth = 0u32;
        let mut moving = 0usize;
        // Children counts from the parents' own state.
        for &i in &live {
            let c = self.agents[i].node.children().count();
            if c > 2 {
                return Err(format!("{} has {c} children", Self::name_of(i)));
            }
        }
        if self.root.node.children().count() > 2 {
            return Err("the root has more than two children".into());
        }
        // Every node here is honest: a refused claim would be a node left out of its ancestors'
        // routing by the claim checks (they must accept every genuine subtree, in any order of
        // attaches, moves and deaths).
        for (i, a) in self.agents.iter().enumerate() {
            if a.node.refused_claims_total() > 0 {
                return Err(format!(
                    "{} refused {} genuine claims of its children",
                    Self::name_of(i),
                    a.node.refused_claims_total()
                ));
            }
        }
        if self.root.node.refused_claims_total() > 0 {
            return Err(format!(
                "the root refused {} genuine claims",
                self.root.node.refused_claims_total()
            ));
        }
        for &i in &live {
            let mut depth = 0u32;
            let mut cur = i;
            loop {
                let node = &self.agents[cur].node;
                let Some(parent) = node.parent() else {
                    return Err(format!(
                        "{} is not attached ({:?}) on the way up from {}",
                        Self::name_of(cur),
                        phase_name(node.phase()),
                        Self::name_of(i)
                    ));
                };
                depth += 1;
                if depth as usize > self.agents.len() + 1 {
                    return Err(format!("cycle above {}", Self::name_of(i)));
                }
                if parent.name == ROOT_NAME {
                    if !self.root.node.children().any(|c| c == node.name()) {
                        return Err(format!("the root does not list {} as a child", node.name()));
                    }
                    break;
                }
                let Some(&p) = self.names.get(&parent.name) else {
                    return Err(format!("unknown parent {}", parent.name));
                };
                if !self.agents[p].alive || self.cut.contains(&p) {
                    return Err(format!("{} hangs under lost {}", node.name(), parent.name));
                }
                if !self.agents[p].node.children().any(|c| c == node.name()) {
                    return Err(format!(
                        "{} does not list {} as a child",
                        parent.name,
                        node.name()
                    ));
                }
                cur = p;
            }
            max_depth = max_depth.max(depth);
            match self.root.placement.status(&Self::name_of(i)) {
                Some(Status::Attached) => {}
                // A leaf the root is moving right now (compaction runs every 500 ms and may fall
                // on the instant of the check): still attached where it was, as the walk above
                // proved; a move that never lands expires with its placement.
                Some(Status::Pending { .. }) if self.root.leaf_in_move(&Self::name_of(i)) => {
                    moving += 1;
                }
                other => {
                    return Err(format!(
                        "the root's model has {} as {other:?}",
                        Self::name_of(i)
                    ))
                }
            }
        }
        if max_depth > bound {
            return Err(format!(
                "depth {max_depth} exceeds the bound {bound} for {n} nodes"
            ));
        }
        if check_totals {
            let want = self.true_total();
            let got = self.root_total();
            if (want - got).abs() > 1e-6 * want.max(1.0) {
                return Err(format!(
                    "root total {got} != true total {want} (live and stale)"
                ));
            }
        }
        Ok(TreeShape {
            live: n,
            moving,
            max_depth,
            bound,
        })
    }
}

impl Ev {
    /// The node whose state handling this event changes.
    fn handler(&self) -> End {
        match self {
            Ev::Timer(end) => *end,
            Ev::JoinArrive { .. } => End::Root,
            Ev::AttachArrive { parent, .. } | Ev::Up { parent, .. } => *parent,
            Ev::JoinReply { to, .. } => End::Agent(*to),
            Ev::AttachReply { child, .. }
            | Ev::ConnectFailed { child, .. }
            | Ev::Down { child, .. } => End::Agent(*child),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct TreeShape {
    pub live: usize,
    pub max_depth: u32,
    pub bound: u32,
    /// Leaves the root is moving at the instant of the check (compaction, promotion): attached
    /// where they were, their new place pending.
    pub moving: usize,
}

fn phase_name(p: &Phase) -> &'static str {
    match p {
        Phase::Joining { .. } => "joining",
        Phase::Attaching { .. } => "attaching",
        Phase::Attached { .. } => "attached",
        Phase::Top => "top",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banyan_protocol::wire::Answer;

    /// The checks after every event catch a broken invariant when it happens, not only if it
    /// outlives the scenario's step: here the root counts 1,000 too many for a moment.
    #[test]
    fn a_double_count_is_caught_at_the_event_that_makes_it() {
        let mut sim = Sim::new(SimConfig::new(3));
        sim.add_agents(10);
        sim.run_for(10_000);
        sim.bump_all(|_| 1.0);
        sim.run_for(3_000);
        assert!(sim.check(true).is_ok(), "{:?}", sim.check(true));
        let checked = sim.events_checked;
        assert!(checked > 0);
        let mut extra = MetricSet::new();
        extra.set_counter(COUNTER, 1_000.0);
        sim.root().node.set_own(extra);
        sim.run_for(1_000);
        // Gone again from the root's own state; still reported.
        sim.root().node.set_own(MetricSet::new());
        sim.run_for(1_000);
        let err = sim.check(true).expect_err("the double count");
        assert!(err.contains("counted twice"), "{err}");
        assert!(sim.events_checked > checked);
    }

    /// Virtual time, so exact: with a fixed latency a command takes one latency per level down,
    /// and every answer one more per level up.
    #[test]
    fn a_command_reaches_every_target_and_answers_in_two_latencies_per_level() {
        let mut sim = Sim::new(SimConfig::new(7));
        sim.add_agents(30);
        let formed = sim.run_until_cond(100, 60_000, |s| s.check(false).is_ok());
        assert!(formed.is_some(), "{:?}", sim.check(false));
        sim.run_for(3_000);
        let depth = u64::from(sim.check(false).expect("a sound tree").max_depth);
        sim.set_latency(5, 5);
        sim.run_for(1_000);
        let targets: Vec<String> = (0..30).map(Sim::name_of).collect();
        let t0 = sim.now();
        let id = sim.start_command(&targets, CommandBody::Ping);
        sim.run_for(1_000);
        let report = std::iter::from_fn(|| sim.root().poll_command_report())
            .find(|r| r.id == id)
            .expect("the command's report");
        assert!(report.unreachable.is_empty(), "{report:?}");
        assert_eq!(report.answers.len(), 30);
        assert!(report
            .answers
            .values()
            .all(|(a, _)| matches!(a, Ok(Answer::Pong))));
        let slowest = report.answers.values().map(|(_, rtt)| *rtt).max();
        assert_eq!(slowest, Some(2 * 5 * depth));
        assert_eq!(sim.command_reached(id), Some((30, t0 + 5 * depth)));
    }
}

//! The root's tree logic in one deterministic state machine: the top [`Node`] of the reduction
//! (children, waves, command routing) wired to the [`Placement`] authority (joins, healing).
//!
//! The shell feeds it joins, attaches, child messages and time, and drains [`RootAction`]s. Leaf
//! moves decided by the placement authority become `Move` commands routed down the tree.

use crate::placement::{Placement, PlacementConfig};
use banyan_agent::tree::{Action, CommandReport, Node, TreeConfig, WaveDone};
use banyan_protocol::metric::MetricSet;
use banyan_protocol::wire::{Attach, CommandBody, Join, Msg};
use std::collections::{BTreeMap, VecDeque};

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
}

impl RootCore {
    pub fn new(
        name: &str,
        advertised_addr: &str,
        tree: TreeConfig,
        placement: PlacementConfig,
        frozen: MetricSet,
        epoch: u64,
        now: u64,
    ) -> RootCore {
        RootCore {
            node: Node::new_root(name, tree, frozen, epoch, now),
            placement: Placement::new(name, advertised_addr, epoch, placement),
            move_commands: BTreeMap::new(),
            reports: VecDeque::new(),
            waves: VecDeque::new(),
            moves_sent: 0,
        }
    }

    pub fn handle_join(&mut self, now: u64, ticket: u64, join: Join) {
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
        self.node.next_timeout().min(self.placement.next_timeout())
    }

    /// Sends an operator command; its report comes out of [`RootCore::poll_command_report`].
    pub fn start_command(&mut self, now: u64, targets: &[String], body: CommandBody) -> u64 {
        let id = self.node.start_command(now, targets, body);
        self.pump(now);
        id
    }

    pub fn poll_command_report(&mut self) -> Option<CommandReport> {
        self.reports.pop_front()
    }

    pub fn poll_wave(&mut self) -> Option<WaveDone> {
        self.waves.pop_front()
    }

    /// The next thing for the shell to do.
    pub fn poll_action(&mut self) -> Option<RootAction> {
        if let Some((ticket, msg)) = self.placement.poll_decision() {
            return Some(RootAction::ReplyJoin { ticket, msg });
        }
        self.node.poll_action().map(RootAction::Node)
    }

    /// The totals of the whole tree (everything that reached the root, kept counts included).
    pub fn totals(&self) -> MetricSet {
        self.node.gross()
    }

    /// Moves state between the two machines until nothing is left to move.
    fn pump(&mut self, now: u64) {
        loop {
            let mut progressed = false;
            while let Some(delta) = self.node.poll_membership() {
                self.placement.handle_membership(now, &delta);
                progressed = true;
            }
            while self.node.poll_lost().is_some() {
                progressed = true;
            }
            while let Some((leaf, parent, gen)) = self.placement.poll_move() {
                let id = self.node.start_command(
                    now,
                    std::slice::from_ref(&leaf),
                    CommandBody::Move { parent, gen },
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
    }
}

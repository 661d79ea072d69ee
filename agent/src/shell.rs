//! The agent's async shell: sockets and clocks in, [`Node`] decisions out.
//!
//! One task owns the [`Node`] and is the only one that touches it. Link tasks read frames and
//! forward them as [`Event`]s; writes go through per-link channels. Everything the tree decides
//! comes out of [`Node::poll_action`] and is carried out here, nowhere else.

use crate::actions::stream::batch_lines;
use crate::actions::{Executors, RunContext};
use crate::config::ActionsConfig;
use crate::consoles::ConsoleSessions;
use crate::enrol::{self, EnrolError};
use crate::grants::GrantVerifier;
use crate::incarnation::Incarnation;
use crate::ingest::RankEvent;
use crate::jobs::{LocalJobs, Member};
use crate::orders::{claimed_id, OrderGate};
use crate::sampler::Sampler;
use crate::scrape::Scrapes;
use crate::transport::{self, close, Framed, LinkError};
use crate::tree::{Action, Node, Phase, TreeConfig};
use banyan_protocol::action::{NodeResult, OutputLines, Task, VmOp, VmTask};
use banyan_protocol::console::ConsoleOutput;
use banyan_protocol::identity::{ClientAuth, Identity, JoinToken};
use banyan_protocol::seal::Sealed;
use banyan_protocol::wire::{
    Answer, Attach, CommandBody, InventoryAnswer, Msg, Peer, Query, ROOT_NAME,
};
use quinn::Endpoint;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub name: String,
    pub root: SocketAddr,
    pub token: Option<JoinToken>,
    pub mesh: SocketAddr,
    pub state_dir: Option<PathBuf>,
    pub tree: TreeConfig,
    pub metrics_file: Option<PathBuf>,
    /// Exporters to scrape from the start, besides those saved in the state dir.
    pub scrape: Vec<banyan_protocol::target::Target>,
    /// The local socket for job ranks (`@name`: abstract).
    pub socket: String,
    /// What operator actions may do on this node (`agent.toml`).
    pub actions: ActionsConfig,
    /// Files whose hashes the node's inventory holds (`[inventory] watch`).
    pub watch: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Setup(String),
}

/// What link tasks tell the core.
enum Event {
    JoinReply(Result<Msg, LinkError>),
    Parent {
        link: u64,
        msg: Option<Msg>,
        why: String,
    },
    ChildAttach {
        attach: Attach,
        link: u64,
        reply: oneshot::Sender<Msg>,
        out: mpsc::UnboundedSender<Msg>,
    },
    Child {
        name: String,
        link: u64,
        msg: Option<Msg>,
        why: String,
    },
    /// An order carried out by an executor: answer command `command` with this result.
    OrderDone {
        command: u64,
        order: String,
        result: NodeResult,
    },
    /// Lines a running order printed (it streams its output): send them up, signed.
    OrderOutput {
        command: u64,
        lines: OutputLines,
    },
    /// What a guest printed on a console session: send it up, signed.
    ConsoleOutput {
        command: u64,
        output: ConsoleOutput,
    },
    /// A command answered off the loop (the inventory, collected on the blocking pool).
    Answered {
        command: u64,
        answer: Result<Answer, String>,
    },
}

/// Gets the node certificate: from the state dir, or by enrolling (retrying network errors with
/// backoff, giving up at once on a refusal).
pub async fn identity(cfg: &AgentConfig) -> Result<Identity, AgentError> {
    if let Some(dir) = &cfg.state_dir {
        match enrol::load(dir, &cfg.name, cfg.token.as_ref()) {
            Ok(Some(id)) => {
                info!(node = %cfg.name, dir = %dir.display(), "using the certificate in the state dir");
                return Ok(id);
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "re-enrolling"),
        }
    }
    let Some(token) = &cfg.token else {
        return Err(AgentError::Setup(
            "no certificate in the state dir and no --token: give the join token printed by banyan-root".into(),
        ));
    };
    let mut delay = Duration::from_millis(250);
    loop {
        match enrol::enrol(cfg.root, token, &cfg.name).await {
            Ok(id) => {
                info!(node = %cfg.name, root = %cfg.root, "enrolled");
                if let Some(dir) = &cfg.state_dir {
                    if let Err(e) = enrol::save(dir, &id) {
                        warn!(error = %e, "cannot keep the certificate; this agent will enrol again next start");
                    }
                }
                return Ok(id);
            }
            Err(EnrolError::Refused(why)) => {
                return Err(AgentError::Refused(format!(
                    "cannot join root {}: {why}",
                    cfg.root
                )))
            }
            Err(EnrolError::Local(why)) => return Err(AgentError::Setup(why)),
            Err(EnrolError::Network(why)) => {
                warn!(root = %cfg.root, error = %why, retry_in_ms = delay.as_millis() as u64, "root unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Runs the agent until `shutdown` resolves or the root refuses it.
pub async fn run(
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let id = identity(&cfg).await?;
    let ep = transport::endpoint(cfg.mesh, &id, ClientAuth::Required)
        .map_err(|e| AgentError::Setup(e.to_string()))?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(accept_loop(ep.clone(), tx.clone()));
    let listener = crate::ingest::bind(&cfg.socket).map_err(|e| {
        AgentError::Setup(format!(
            "cannot listen for job ranks on {}: {e} (is another agent running here? --socket picks another)",
            cfg.socket
        ))
    })?;
    let (rank_tx, rank_rx) = mpsc::unbounded_channel();
    tokio::spawn(crate::ingest::serve(listener, rank_tx));
    let gate = OrderGate::new(&cfg.name, &id.ca_der, &id.key_pem).map_err(AgentError::Setup)?;
    let grants = GrantVerifier::new(&id.ca_der).map_err(AgentError::Setup)?;
    let mut actions = cfg.actions.clone();
    actions.vm.host = Some((cfg.name.clone(), cfg.root));
    let executors = Executors::new(&actions, cfg.state_dir.as_deref());
    let advertised = cfg.mesh.to_string();
    let mut node = Node::new_agent(
        &cfg.name,
        &advertised,
        cfg.tree.clone(),
        transport::unix_ms(),
    );
    node.set_grant_check(Arc::new(grants));
    let incarnation = cfg.state_dir.as_deref().map(|dir| {
        let (inc, life) = Incarnation::open(dir);
        if let Some(life) = life {
            node.resume(transport::unix_ms(), life);
        }
        inc
    });
    let mut core = Core {
        node,
        sampler: Sampler::new(cfg.metrics_file.clone(), transport::unix_ms()),
        scrapes: Scrapes::open(
            cfg.state_dir.as_deref(),
            &cfg.scrape,
            Duration::from_millis(cfg.tree.period_ms),
        ),
        jobs: LocalJobs::new(),
        incarnation,
        ranks: HashMap::new(),
        gate,
        executors,
        running: HashMap::new(),
        consoles: ConsoleSessions::default(),
        cfg,
        ep: ep.clone(),
        tx,
        parent: None,
        children: HashMap::new(),
        next_link: 1,
        last_now: 0,
        logged_phase: String::new(),
    };
    let result = core.run(rx, rank_rx, shutdown).await;
    ep.close(close::DONE.into(), b"agent stopping");
    result
}

struct Core {
    cfg: AgentConfig,
    node: Node,
    sampler: Sampler,
    scrapes: Scrapes,
    jobs: LocalJobs,
    /// The state dir's record of what this run handed up, for the next run (none without a
    /// state dir).
    incarnation: Option<Incarnation>,
    /// Ranks connected now: connection -> job id.
    ranks: HashMap<u64, (String, Member)>,
    /// Checks orders and signs receipts.
    gate: OrderGate,
    executors: Executors,
    /// Orders being carried out: id -> the switch that cancels it.
    running: HashMap<String, tokio::sync::watch::Sender<bool>>,
    /// Guest console sessions open now (orders among `running`).
    consoles: ConsoleSessions,
    ep: Endpoint,
    tx: mpsc::UnboundedSender<Event>,
    parent: Option<(u64, mpsc::UnboundedSender<Msg>)>,
    children: HashMap<String, (u64, mpsc::UnboundedSender<Msg>)>,
    next_link: u64,
    last_now: u64,
    logged_phase: String,
}

impl Core {
    /// Wall-clock milliseconds (waves align to it across nodes), never going backwards.
    fn now(&mut self) -> u64 {
        self.last_now = self.last_now.max(transport::unix_ms());
        self.last_now
    }

    async fn run(
        &mut self,
        mut rx: mpsc::UnboundedReceiver<Event>,
        mut rank_rx: mpsc::UnboundedReceiver<RankEvent>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let mut alarm = crate::alarm::Alarm::new();
        loop {
            let now = self.now();
            let due = self.node.next_timeout();
            tokio::select! {
                _ = &mut shutdown => return Ok(()),
                ev = rx.recv() => {
                    let Some(ev) = ev else { return Ok(()) };
                    self.handle(ev)?;
                }
                Some(ev) = rank_rx.recv() => self.handle_rank(ev),
                _ = alarm.until(due, now) => {
                    let now = self.now();
                    if now >= self.node.next_wave_at() {
                        let (mut own, mut carried) = self.sampler.sample(now);
                        self.scrapes.merge_into(&mut own, &mut carried);
                        self.node.set_carried(&carried);
                        self.jobs.merge_into(&mut own);
                        let mut digest = crate::sampler::digest_of(&self.cfg.name, &own, now);
                        digest.scrape_errors = self.scrapes.errors();
                        digest.jobs = self.jobs.digest();
                        self.node.set_own(own);
                        self.node.push_digest(digest);
                    }
                    self.node.on_timeout(now);
                }
            }
            self.drain();
            self.log_phase();
            while let Some(r) = self.node.poll_refused_claim() {
                warn!(child = %r.by, member = %r.member, reason = %r.reason, "refused a claim of a child: orders for that node will not go through it");
            }
        }
    }

    fn log_phase(&mut self) {
        let text = match self.node.phase() {
            Phase::Joining { .. } => "joining".to_string(),
            Phase::Attaching { parent, .. } => format!("attaching to {}", parent.name),
            Phase::Attached { parent, .. } => format!("attached to {}", parent.name),
            Phase::Top => "top".to_string(),
        };
        if text != self.logged_phase {
            info!(node = %self.cfg.name, depth = self.node.depth(), "{text}");
            self.logged_phase = text;
        }
    }

    fn handle(&mut self, ev: Event) -> Result<(), AgentError> {
        let now = self.now();
        match ev {
            Event::JoinReply(Ok(msg)) => {
                let before = self.node.handovers();
                if let Err(reason) = self.node.handle_join_reply(now, Ok(msg)) {
                    return Err(AgentError::Refused(format!(
                        "root {} refused this agent: {reason}",
                        self.cfg.root
                    )));
                }
                let after = self.node.handovers();
                if after.exact > before.exact {
                    info!(
                        rewound = after.rewound - before.rewound,
                        "owes exactly the report its lost parent's side kept"
                    );
                } else if after.by_last_sent > before.by_last_sent {
                    warn!("no word of what its lost parent's side kept; owes its last report (counts in flight may be lost)");
                }
            }
            Event::JoinReply(Err(e)) => {
                if e.is_auth_refusal() {
                    return Err(AgentError::Refused(format!(
                        "root {} refused this agent: {e}",
                        self.cfg.root
                    )));
                }
                debug!(error = %e, "join failed; will retry");
                let _ = self.node.handle_join_reply(now, Err(e.to_string()));
            }
            Event::Parent { link, msg, why } => {
                if self.parent.as_ref().map(|p| p.0) != Some(link) {
                    return Ok(()); // an old link
                }
                match msg {
                    Some(m) => self.node.handle_parent_msg(now, m),
                    None => {
                        info!(node = %self.cfg.name, reason = %why, "parent link ended");
                        self.parent = None;
                        self.node.handle_parent_failed(now, &why);
                    }
                }
            }
            Event::ChildAttach {
                attach,
                link,
                reply,
                out,
            } => {
                let name = attach.name.clone();
                let answer = self.node.handle_attach(now, attach);
                if matches!(answer, Msg::Accepted { .. }) {
                    info!(node = %self.cfg.name, child = %name, "child attached");
                    self.children.insert(name, (link, out));
                }
                let _ = reply.send(answer);
            }
            Event::Child {
                name,
                link,
                msg,
                why,
            } => {
                if self.children.get(&name).map(|c| c.0) != Some(link) {
                    return Ok(());
                }
                match msg {
                    Some(m) => self.node.handle_child_msg(now, &name, m),
                    None => {
                        info!(node = %self.cfg.name, child = %name, reason = %why, "child link ended");
                        self.children.remove(&name);
                        self.node.handle_child_gone(now, &name, &why);
                    }
                }
            }
            Event::OrderDone {
                command,
                order,
                result,
            } => {
                self.running.remove(&order);
                self.consoles.close(&order);
                info!(node = %self.cfg.name, order = %order, ok = result.ok, summary = %result.summary, "order done");
                self.answer_order(command, &order, result);
            }
            Event::OrderOutput { command, lines } => {
                // Lines that come after the receipt are in it already.
                if self.running.contains_key(&lines.order) {
                    let answer = self
                        .gate
                        .seal_output(lines)
                        .map(Answer::Output)
                        .map_err(|e| format!("cannot sign output: {e}"));
                    self.node.answer_command(now, command, answer);
                }
            }
            Event::ConsoleOutput { command, output } => {
                if self.running.contains_key(&output.order) {
                    let answer = self
                        .gate
                        .seal_console(output)
                        .map(Answer::Console)
                        .map_err(|e| format!("cannot sign console output: {e}"));
                    self.node.answer_command(now, command, answer);
                }
            }
            Event::Answered { command, answer } => self.node.answer_command(now, command, answer),
        }
        Ok(())
    }

    /// A sealed order from the root: checked by the gate, then carried out off this loop (an
    /// order may run for minutes); the receipt goes up when it is done. A refused order is
    /// answered at once with the reason, signed, so that the root can show it.
    fn take_order(&mut self, command: u64, sealed: &Sealed) {
        let now = self.now();
        let order = match self.gate.admit(sealed, now) {
            Ok(o) => o,
            Err(why) => {
                warn!(node = %self.cfg.name, reason = %why, "order refused; nothing ran");
                let id = claimed_id(sealed);
                self.answer_order(command, &id, NodeResult::refused(why));
                return;
            }
        };
        info!(node = %self.cfg.name, order = %order.id, who = %order.who, kind = order.task.kind(), for_real = order.for_real, "order admitted");
        if let Task::Cancel { id } = &order.task {
            let result = match self.running.get(id) {
                Some(switch) => {
                    let _ = switch.send(true);
                    NodeResult {
                        ok: true,
                        summary: format!("cancelling {id}"),
                        ..NodeResult::default()
                    }
                }
                None => NodeResult::refused(format!("{id} is not running here")),
            };
            self.answer_order(command, &order.id, result);
            return;
        }
        let timeout = Duration::from_millis(order.timeout_ms);
        let (mut ctx, switch) = RunContext::new(order.for_real, timeout);
        if order.for_real && matches!(&order.task, Task::Exec(e) if e.stream) {
            let (tap, taken) = mpsc::unbounded_channel();
            ctx.output = Some(tap);
            let (tx, order_id, node) = (self.tx.clone(), order.id.clone(), self.cfg.name.clone());
            tokio::spawn(batch_lines(taken, move |seq, stdout, stderr| {
                let lines = OutputLines {
                    order: order_id.clone(),
                    node: node.clone(),
                    seq,
                    stdout,
                    stderr,
                };
                let _ = tx.send(Event::OrderOutput { command, lines });
            }));
        }
        // A guest's console: a session of this order, whose output goes up as it comes.
        let mut forwarder = None;
        if let (
            true,
            Task::Vm(VmTask {
                op: VmOp::Console { name, .. },
            }),
        ) = (order.for_real, &order.task)
        {
            match self.consoles.open(&order.id, name) {
                Ok((link, output)) => {
                    ctx.console = Some(link);
                    forwarder = Some(tokio::spawn(forward_console(
                        output,
                        self.tx.clone(),
                        command,
                        order.id.clone(),
                    )));
                }
                Err(why) => {
                    warn!(node = %self.cfg.name, order = %order.id, guest = %name, reason = %why, "console refused");
                    self.answer_order(command, &order.id, NodeResult::refused(why));
                    return;
                }
            }
        }
        self.running.insert(order.id.clone(), switch);
        let run = self.executors.run(order.task, ctx);
        let tx = self.tx.clone();
        let id = order.id;
        tokio::spawn(async move {
            let result = run.await;
            // A console's last output goes up before its receipt.
            if let Some(f) = forwarder {
                let _ = f.await;
            }
            let _ = tx.send(Event::OrderDone {
                command,
                order: id,
                result,
            });
        });
    }

    fn answer_order(&mut self, command: u64, order: &str, result: NodeResult) {
        let answer = self
            .gate
            .receipt(order, result)
            .map(Answer::Receipt)
            .map_err(|e| format!("cannot sign the receipt: {e}"));
        let now = self.now();
        self.node.answer_command(now, command, answer);
    }

    fn drain(&mut self) {
        // Before a report leaves: the next run must know of it even if this one is killed now.
        if let Some(inc) = &mut self.incarnation {
            let node = &self.node;
            inc.keep(node.last_seq(), || node.previous_life());
        }
        while let Some(action) = self.node.poll_action() {
            match action {
                Action::SendJoin(join) => {
                    let (ep, root, tx) = (self.ep.clone(), self.cfg.root, self.tx.clone());
                    tokio::spawn(async move {
                        let reply = ask_root(&ep, root, Msg::Join(join)).await;
                        let _ = tx.send(Event::JoinReply(reply));
                    });
                }
                Action::ConnectParent { peer, attach } => {
                    let link = self.next_link;
                    self.next_link += 1;
                    let (out_tx, out_rx) = mpsc::unbounded_channel();
                    self.parent = Some((link, out_tx));
                    let addr = self.peer_addr(&peer);
                    let (ep, tx) = (self.ep.clone(), self.tx.clone());
                    tokio::spawn(parent_link(ep, addr, peer, attach, link, tx, out_rx));
                }
                Action::ToParent(msg) => {
                    if let Some((_, out)) = &self.parent {
                        let _ = out.send(msg);
                    }
                }
                Action::CloseParent { reason } => {
                    debug!(reason = %reason, "closing parent link");
                    self.parent = None;
                }
                Action::ToChild { child, msg } => {
                    if let Some((_, out)) = self.children.get(&child) {
                        let _ = out.send(msg);
                    }
                }
                Action::CloseChild { child, reason } => {
                    info!(node = %self.cfg.name, child = %child, reason = %reason, "child removed");
                    self.children.remove(&child);
                }
                Action::Execute {
                    id,
                    body: CommandBody::Action(sealed),
                } => self.take_order(id, &sealed),
                Action::Execute {
                    id,
                    body: CommandBody::ConsoleInput(sealed),
                } => {
                    let answer = self
                        .gate
                        .open_console_input(&sealed)
                        .and_then(|input| self.consoles.input(input))
                        .map(|()| Answer::Done);
                    if let Err(why) = &answer {
                        debug!(node = %self.cfg.name, reason = %why, "console input refused");
                    }
                    let now = self.now();
                    self.node.answer_command(now, id, answer);
                }
                Action::Execute {
                    id,
                    body: CommandBody::Query(Query::Inventory { full }),
                } => self.inventory(id, full),
                Action::Execute { id, body } => {
                    let answer = self.execute(&body);
                    let now = self.now();
                    self.node.answer_command(now, id, answer);
                }
            }
        }
    }

    /// A rank's hello, update or end, from the ingest socket.
    fn handle_rank(&mut self, ev: RankEvent) {
        match ev {
            RankEvent::Hello {
                conn,
                job,
                rank: _,
                process,
                uid,
                pid: _,
                reply,
            } => {
                let id = job.jobid.clone();
                let member = if process {
                    Member::Process
                } else {
                    Member::Rank
                };
                let answer = self
                    .jobs
                    .start(job, uid, member)
                    .map(|()| self.cfg.tree.period_ms)
                    .map_err(|e| e.to_string());
                if answer.is_ok() {
                    self.ranks.insert(conn, (id, member));
                }
                // A rank that vanished before the answer is a rank that ended.
                if reply.send(answer).is_err() {
                    if let Some((id, member)) = self.ranks.remove(&conn) {
                        self.jobs.end(&id, member, true);
                    }
                }
            }
            RankEvent::Update { conn, delta } => {
                if let Some((id, _)) = self.ranks.get(&conn) {
                    let dropped = self.jobs.update(id, &delta);
                    if let Some((series, why)) = dropped.series.first() {
                        warn!(job = %id, dropped = dropped.series.len(), first = %series.escape_debug(), why, "series from a rank refused; the rest were kept");
                    }
                }
            }
            RankEvent::Exit { conn, how } => {
                let Some((id, member)) = self.ranks.remove(&conn) else {
                    return;
                };
                let last_here = self.jobs.end(&id, member, how.is_none_or(|h| h.crashed()));
                if last_here {
                    // The root ends the job when its last rank is counted: tell it now rather
                    // than at the next wave.
                    let mut own = self.node.own().clone();
                    own.values
                        .retain(|k, _| !k.starts_with(banyan_protocol::job::SCOPE));
                    self.jobs.merge_into(&mut own);
                    let now = self.now();
                    // With a digest that lists the job: a rank that started and ended within one
                    // wave is in no digest yet, and the root, which may end the job on these very
                    // counts, would leave this node out of the job's node list.
                    let mut digest = crate::sampler::digest_of(&self.cfg.name, &own, now);
                    digest.scrape_errors = self.scrapes.errors();
                    digest.jobs = self.jobs.digest();
                    self.node.push_digest(digest);
                    self.node.refresh_own(now, own);
                }
            }
        }
    }

    /// Commands the tree hands to the shell. Each is quick (no I/O beyond a small file write),
    /// so it is answered here, in line.
    fn execute(&mut self, body: &CommandBody) -> Result<Answer, String> {
        match body {
            CommandBody::Scrape(change) => self.scrapes.apply(change).map(Answer::Scrapes),
            CommandBody::Query(Query::Scrapes) => Ok(Answer::Scrapes(self.scrapes.status())),
            CommandBody::ForgetJob(job) => {
                self.jobs.forget(job);
                self.node.forget_job(job);
                Ok(Answer::Done)
            }
            other => Err(format!("{other:?} is not carried out by the agent's shell")),
        }
    }

    /// Collects the node's inventory on the blocking pool (a few milliseconds, more with a large
    /// package database) and answers `command` with its digests, and the whole when `full`.
    fn inventory(&mut self, command: u64, full: bool) {
        let watch = self.cfg.watch.clone();
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let answer = tokio::task::spawn_blocking(move || {
                let inventory = crate::inventory::collect(Path::new("/"), &watch);
                Answer::Inventory(Box::new(InventoryAnswer {
                    digests: inventory.digests(),
                    full: full.then_some(inventory),
                }))
            })
            .await
            .map_err(|e| format!("collecting the inventory failed: {e}"));
            let _ = tx.send(Event::Answered { command, answer });
        });
    }

    fn peer_addr(&self, peer: &Peer) -> Result<SocketAddr, String> {
        if peer.name == ROOT_NAME {
            return Ok(self.cfg.root);
        }
        peer.addr
            .parse()
            .map_err(|_| format!("{} has an unusable address {:?}", peer.name, peer.addr))
    }
}

/// Numbers a console session's output chunks from 0 and hands them to the core to sign and
/// send up, until the executor lets the session go.
async fn forward_console(
    mut output: mpsc::Receiver<(Vec<u8>, u64)>,
    tx: mpsc::UnboundedSender<Event>,
    command: u64,
    order: String,
) {
    let mut seq = 0u64;
    while let Some((bytes, skipped)) = output.recv().await {
        let output = ConsoleOutput {
            order: order.clone(),
            node: String::new(),
            seq,
            bytes,
            skipped,
        };
        if tx.send(Event::ConsoleOutput { command, output }).is_err() {
            return;
        }
        seq += 1;
    }
}

/// One request/answer exchange with the root on a fresh stream.
async fn ask_root(ep: &Endpoint, root: SocketAddr, msg: Msg) -> Result<Msg, LinkError> {
    let conn = transport::connect(ep, root, ROOT_NAME, None).await?;
    let mut f = Framed::open(&conn, ROOT_NAME).await?;
    f.send(&msg).await?;
    // The root may hold an orphan's join for its heal window; allow for it.
    let reply = tokio::time::timeout(Duration::from_secs(10), f.recv()).await;
    let out = match reply {
        Err(_) => Err(LinkError::Unreachable {
            peer: ROOT_NAME.into(),
            detail: "no answer to the join within 10 s".into(),
        }),
        Ok(Err(e)) => Err(e),
        Ok(Ok(None)) => Err(LinkError::Broken {
            peer: ROOT_NAME.into(),
            detail: "closed the stream without answering".into(),
        }),
        Ok(Ok(Some(m))) => Ok(m),
    };
    transport::refuse(&conn, close::DONE, "done");
    out
}

async fn parent_link(
    ep: Endpoint,
    addr: Result<SocketAddr, String>,
    peer: Peer,
    attach: Attach,
    link: u64,
    tx: mpsc::UnboundedSender<Event>,
    out: mpsc::UnboundedReceiver<Msg>,
) {
    let fail = |why: String| {
        let _ = tx.send(Event::Parent {
            link,
            msg: None,
            why,
        });
    };
    let addr = match addr {
        Ok(a) => a,
        Err(why) => return fail(why),
    };
    let conn = match transport::connect(&ep, addr, &peer.name, None).await {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    let mut f = match Framed::open(&conn, &peer.name).await {
        Ok(f) => f,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(e) = f.send(&Msg::Attach(attach)).await {
        return fail(e.to_string());
    }
    let Framed { send, recv, .. } = f;
    let events = tx.clone();
    let why = transport::pump_link(conn, send, recv, &peer.name, out, |msg| {
        events
            .send(Event::Parent {
                link,
                msg: Some(msg),
                why: String::new(),
            })
            .is_ok()
    })
    .await;
    fail(why);
}

/// Accepts children (and refuses everyone else with a reason).
async fn accept_loop(ep: Endpoint, tx: mpsc::UnboundedSender<Event>) {
    let mut next_link: u64 = 1 << 40; // distinct from the parent links' numbers
    while let Some(incoming) = ep.accept().await {
        next_link += 1;
        let tx = tx.clone();
        let link = next_link;
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    debug!(peer = %remote, error = %e, "handshake failed");
                    return;
                }
            };
            if let Err(e) = serve_child(conn, link, tx).await {
                debug!(peer = %remote, error = %e, "child connection ended");
            }
        });
    }
}

async fn serve_child(
    conn: quinn::Connection,
    link: u64,
    tx: mpsc::UnboundedSender<Event>,
) -> Result<(), LinkError> {
    let Some(cert_name) = transport::peer_cert_name(&conn) else {
        transport::refuse(
            &conn,
            close::AUTH,
            "a certificate of this cluster is required",
        );
        return Ok(());
    };
    let (f, first) = match transport::accept_first(&conn, &cert_name).await {
        Ok(Some(x)) => x,
        Ok(None) => return Ok(()),
        Err(e) => return Err(e),
    };
    let attach = match first {
        Msg::Attach(a) => a,
        other => {
            let why = format!("this agent only accepts attaches, not {}", other.kind());
            transport::refuse(&conn, close::BAD_MESSAGE, &why);
            return Ok(());
        }
    };
    let name = attach.name.clone();
    let events = tx.clone();
    let ask = move |attach, out| {
        let (reply, answer) = oneshot::channel();
        let event = Event::ChildAttach {
            attach,
            link,
            reply,
            out,
        };
        events.send(event).ok().map(|()| answer)
    };
    transport::serve_child(conn, f, attach, &cert_name, ask, |msg, why| {
        tx.send(Event::Child {
            name: name.clone(),
            link,
            msg,
            why,
        })
        .is_ok()
    })
    .await
}

//! The root's async shell: the mesh endpoint (enrolment, joins, child links) around [`RootCore`],
//! and the channel through which the HTTP API reads the tree and sends commands.
//!
//! One task owns the [`RootCore`]; connection tasks and HTTP handlers talk to it with messages.

use crate::actions::ActionBook;
use crate::alarms::AlarmBook;
use crate::audit::{AuditEvent, AuditLog};
use crate::core::{Kept, RootAction, RootCore};
use crate::departures::Departures;
use crate::guesttokens::{GuestTokens, Redeemed};
use crate::jobs::JobBook;
use crate::placement::{NodeView, PlacementConfig};
use crate::registry::Registry;
use crate::state::RootState;
use banyan_agent::grants::GrantVerifier;
use banyan_agent::transport::{self, close, Framed, LinkError};
use banyan_agent::tree::{
    Action, CommandReport, GrantSign, RefusedClaim, StreamedAnswer, TreeConfig, WaveDone,
};
use banyan_protocol::action::{OutputLines, Receipt};
use banyan_protocol::console::ConsoleOutput;
use banyan_protocol::identity::{validate_node_name, ClientAuth};
use banyan_protocol::metric::MetricSet;
use banyan_protocol::seal::{Purpose, Sealed, Signer};
use banyan_protocol::wire::{Answer, Attach, CommandBody, Digest, Grant, Join, Msg, ROOT_NAME};
use quinn::Endpoint;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

/// Jobs are settled at every wave and, while jobs run, after late reports, at most this often.
const SETTLE_EVERY_MS: u64 = 50;

/// What the HTTP API can ask of the core.
pub enum ApiRequest {
    Snapshot(oneshot::Sender<Snapshot>),
    /// Send a sealed order down the tree for an action already in the book; its answers go to
    /// the book as they arrive.
    Action {
        action: String,
        targets: Vec<String>,
        order: Sealed,
        deadline_ms: u64,
    },
    Command {
        targets: Vec<String>,
        body: CommandBody,
        reply: oneshot::Sender<CommandReport>,
    },
}

/// The tree as the root sees it at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub root: String,
    pub epoch: u64,
    pub nodes: Vec<NodeView>,
    pub totals: MetricSet,
    pub digests: HashMap<String, Digest>,
    pub last_wave: Option<WaveDone>,
    pub period_ms: u64,
    pub now_ms: u64,
    /// UDP bytes received on the links of the root's children since it started (handshakes and
    /// keep-alives included).
    pub mesh_rx_bytes: u64,
    /// Jobs not finished yet.
    pub jobs: Vec<banyan_protocol::job::JobDesc>,
    /// Members that the root's children (or joining nodes) claimed and the root did not believe:
    /// how many since the root started, and the latest few.
    pub refused_claims_total: u64,
    pub refused_claims: Vec<RefusedClaim>,
    /// Nodes away because an operator powered them off (or is resetting them), with why.
    pub departed: HashMap<String, String>,
}

impl Snapshot {
    /// A node's state in one word: `up`, `joining`, `lost`, `stale`, or `off` for a node whose
    /// agent left as planned ([`crate::departures`]).
    pub fn word(&self, n: &NodeView) -> &'static str {
        if !n.status.is_live() && self.departed.contains_key(&n.name) {
            return "off";
        }
        crate::http::status_word(n.status)
    }

    /// The state word of the node `name`, or `None` for a node the tree does not know.
    pub fn word_of(&self, name: &str) -> Option<&'static str> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .map(|n| self.word(n))
    }
}

/// Refused claims the root keeps for `/status`.
const REFUSED_CLAIMS_SHOWN: usize = 16;

/// Seals placements with the cluster CA's key.
struct CaGrants(Signer);

impl GrantSign for CaGrants {
    fn sign(&self, grant: &Grant) -> Sealed {
        self.0.seal(Purpose::Placement, grant).unwrap_or_else(|e| {
            // The node's parent will refuse it and it will ask again: loud, not fatal.
            warn!(node = %grant.node, error = %e, "cannot seal a placement");
            Sealed::default()
        })
    }
}

enum Event {
    Join {
        join: Join,
        reply: oneshot::Sender<Msg>,
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
    Api(ApiRequest),
    /// Keep the totals and close every link, then stop.
    Shutdown(oneshot::Sender<()>),
}

/// A handle for the HTTP side.
#[derive(Clone)]
pub struct RootHandle {
    tx: mpsc::UnboundedSender<Event>,
    /// The alarms, evaluated by the core at every wave and edited by the API.
    pub alarms: Arc<std::sync::Mutex<AlarmBook>>,
    /// The running jobs' histories, written by the job book each wave, read by the API.
    pub histories: crate::jobs::Histories,
    /// Operator actions: started by the API, answered through the core.
    pub actions: Arc<Mutex<ActionBook>>,
    /// The nodes' certificates (one per name), for enrolment, joins and signed answers.
    pub registry: Arc<Mutex<Registry>>,
    /// The audit log; the core appends actions' outcomes.
    pub audit: Arc<Mutex<AuditLog>>,
    /// Departures operators planned (power actions), told apart from failures.
    pub departures: Arc<Mutex<Departures>>,
    /// Nodes' serial consoles open now.
    pub consoles: Arc<crate::console::Consoles>,
    /// Join tokens of guests launched with `--join`: minted by the API, spent at enrolment.
    pub guest_tokens: Arc<Mutex<GuestTokens>>,
}

impl RootHandle {
    pub async fn snapshot(&self) -> Option<Snapshot> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Event::Api(ApiRequest::Snapshot(tx))).ok()?;
        rx.await.ok()
    }

    /// Stops the core cleanly: the totals are kept and the children see their links close at once
    /// (rather than after the silence timeout).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Event::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Sends an action's sealed order; false if the core has stopped.
    pub fn start_action(
        &self,
        action: String,
        targets: Vec<String>,
        order: Sealed,
        deadline_ms: u64,
    ) -> bool {
        self.tx
            .send(Event::Api(ApiRequest::Action {
                action,
                targets,
                order,
                deadline_ms,
            }))
            .is_ok()
    }

    pub async fn command(&self, targets: Vec<String>, body: CommandBody) -> Option<CommandReport> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Event::Api(ApiRequest::Command {
                targets,
                body,
                reply: tx,
            }))
            .ok()?;
        rx.await.ok()
    }
}

pub struct RootConfig {
    pub mesh: SocketAddr,
    pub tree: TreeConfig,
}

/// Starts the mesh side of the root; returns the handle for the API and the task running it.
pub fn start(
    cfg: RootConfig,
    state: Arc<RootState>,
) -> Result<(RootHandle, tokio::task::JoinHandle<()>), String> {
    let ep = transport::endpoint(cfg.mesh, &state.identity, ClientAuth::Optional)
        .map_err(|e| e.to_string())?;
    let now = transport::unix_ms();
    let registry = Arc::new(Mutex::new(
        Registry::open(Some(&state.dir)).map_err(|e| e.to_string())?,
    ));
    let audit = Arc::new(Mutex::new(
        AuditLog::open(&state.dir).map_err(|e| e.to_string())?,
    ));
    let (book, interrupted) = ActionBook::open(Some(&state.dir), now);
    for r in interrupted {
        warn!(action = %r.id, "an action was running when the root stopped: marked interrupted");
        let event = AuditEvent::new(now, r.who.clone(), r.peer.clone(), "action.interrupted")
            .action(r.id.clone())
            .for_real(r.for_real)
            .outcome(r.outcome_json())
            .reason("the root restarted while the action ran");
        if let Err(e) = lock(&audit).append(event) {
            warn!(action = %r.id, error = %e, "cannot audit an interrupted action");
        }
    }
    let actions = Arc::new(Mutex::new(book));
    let guest_tokens = Arc::new(Mutex::new(GuestTokens::open(
        Some(&state.dir),
        state.ca.fingerprint(),
        now,
    )));
    let (tx, rx) = mpsc::unbounded_channel();
    let mesh_rx = Arc::new(AtomicU64::new(0));
    tokio::spawn(accept_loop(
        ep.clone(),
        tx.clone(),
        state.clone(),
        Enrolment {
            registry: registry.clone(),
            guest_tokens: guest_tokens.clone(),
        },
        mesh_rx.clone(),
    ));
    let epoch = rand::random::<u64>() | 1;
    let mut core = RootCore::new(
        ROOT_NAME,
        "",
        cfg.tree,
        PlacementConfig::default(),
        state.load_kept(),
        epoch,
        now,
    );
    let sealer = Signer::from_pem(&state.ca.key_pem()).map_err(|e| e.to_string())?;
    let checker = GrantVerifier::new(&state.ca.cert_der())?;
    core.set_grants(Arc::new(CaGrants(sealer)), Arc::new(checker));
    let jobs = JobBook::open(Some(&state.dir), now);
    let histories = jobs.histories();
    let (save_tx, save_rx) = tokio::sync::watch::channel(Kept::default());
    let writer = tokio::spawn(totals_writer(state.clone(), save_rx));
    let alarms = Arc::new(std::sync::Mutex::new(AlarmBook::open(Some(&state.dir))));
    let departures = Arc::new(Mutex::new(Departures::default()));
    let consoles: Arc<crate::console::Consoles> = Arc::default();
    let mut shell = Shell {
        consoles: consoles.clone(),
        departures: departures.clone(),
        refused_claims: std::collections::VecDeque::new(),
        alarms: alarms.clone(),
        jobs,
        last_settle: 0,
        settle_due: false,
        core,
        state,
        epoch,
        tickets: HashMap::new(),
        next_ticket: 1,
        children: HashMap::new(),
        commands: HashMap::new(),
        action_commands: HashMap::new(),
        actions: actions.clone(),
        registry: registry.clone(),
        audit: audit.clone(),
        last_wave: None,
        last_now: now,
        saved: MetricSet::new(),
        save_tx: Some(save_tx),
        totals_dirty: false,
        mesh_rx,
    };
    let task = tokio::spawn(async move {
        let done = shell.run(rx).await;
        shell.flush_totals(writer).await;
        ep.close(close::DONE.into(), b"root stopping");
        // Let the close reach the agents before the endpoint is dropped.
        tokio::time::timeout(Duration::from_secs(1), ep.wait_idle())
            .await
            .ok();
        if let Some(done) = done {
            let _ = done.send(());
        }
    });
    Ok((
        RootHandle {
            tx,
            alarms,
            histories,
            actions,
            registry,
            audit,
            departures,
            consoles,
            guest_tokens,
        },
        task,
    ))
}

struct Shell {
    departures: Arc<Mutex<Departures>>,
    /// Serial consoles: guests' console output and ends are handed to them.
    consoles: Arc<crate::console::Consoles>,
    refused_claims: std::collections::VecDeque<RefusedClaim>,
    core: RootCore,
    state: Arc<RootState>,
    epoch: u64,
    tickets: HashMap<u64, oneshot::Sender<Msg>>,
    next_ticket: u64,
    children: HashMap<String, (u64, mpsc::UnboundedSender<Msg>)>,
    commands: HashMap<u64, oneshot::Sender<CommandReport>>,
    /// Commands carrying actions' orders, by command id: the action's id.
    action_commands: HashMap<u64, String>,
    actions: Arc<Mutex<ActionBook>>,
    registry: Arc<Mutex<Registry>>,
    audit: Arc<Mutex<AuditLog>>,
    last_wave: Option<WaveDone>,
    last_now: u64,
    /// The cumulative totals last written to the state dir.
    saved: MetricSet,
    /// To the task that writes the totals (the latest value wins; `None` once shutting down).
    save_tx: Option<tokio::sync::watch::Sender<Kept>>,
    /// Whether something that can change the totals happened since they were last handed over.
    totals_dirty: bool,
    /// Bytes received on child links, added to by the link tasks.
    mesh_rx: Arc<AtomicU64>,
    jobs: JobBook,
    alarms: Arc<std::sync::Mutex<AlarmBook>>,
    /// When jobs were last settled (ms), and whether a late report asks for it again.
    last_settle: u64,
    settle_due: bool,
}

impl Shell {
    /// Hands the cumulative totals to the writer when they changed. After a restart they are
    /// what the root keeps of everything its children had sent, so they go out as soon as
    /// anything new arrived, not once per wave: a late report counts too. The writing itself is
    /// off this task: a disk that stalls (writeback throttling on a busy node) must not stall the
    /// tree's heartbeats.
    fn save_totals(&mut self) {
        // Only reports, departures and forgotten jobs change the totals: the many heartbeats
        // and commands in between cost no copy of them.
        if !std::mem::take(&mut self.totals_dirty) {
            return;
        }
        let kept = self.core.kept();
        // Equal totals mean equal reports of every child: the numbers they carry need no write.
        if kept.totals == self.saved {
            return;
        }
        self.saved = kept.totals.clone();
        if let Some(tx) = &self.save_tx {
            let _ = tx.send(kept);
        }
    }

    /// At shutdown: lets the writer finish, then writes the final totals here, last.
    async fn flush_totals(&mut self, writer: tokio::task::JoinHandle<()>) {
        self.save_tx = None;
        let _ = writer.await;
        let last = self.core.kept();
        if let Err(e) = self.state.save_kept(&last) {
            warn!(error = %e, "cannot keep the totals; a restart would lose counts");
        }
    }

    /// After each wave: learn new jobs, and write the profile of each job that ended. A finished
    /// job's series are then dropped everywhere in the tree.
    fn settle_jobs(&mut self, totals: &MetricSet) {
        let now = self.now();
        self.last_settle = now;
        let digests = self.core.node.latest_digests();
        self.jobs.learn(digests, totals, now);
        let ended = self.jobs.ended(totals, now);
        for profile in ended {
            let id = profile.desc.jobid.clone();
            if let Err(e) = self.jobs.finish(&profile) {
                warn!(job = %id, error = %e, "cannot write the profile; will try again next wave");
                continue;
            }
            self.core.node.forget_job(&id);
            self.totals_dirty = true;
            let everyone: Vec<String> = self
                .core
                .placement
                .view()
                .into_iter()
                .filter(|n| n.name != ROOT_NAME && n.status.is_live())
                .map(|n| n.name)
                .collect();
            // Nobody waits for this command's report: it is dropped when it comes back.
            self.core
                .start_command(now, &everyone, CommandBody::ForgetJob(id));
        }
    }

    fn now(&mut self) -> u64 {
        self.last_now = self.last_now.max(transport::unix_ms());
        self.last_now
    }

    async fn run(&mut self, mut rx: mpsc::UnboundedReceiver<Event>) -> Option<oneshot::Sender<()>> {
        loop {
            let now = self.now();
            let mut wait = self.core.next_timeout().saturating_sub(now).min(1000);
            if self.settle_due {
                wait = wait.min((self.last_settle + SETTLE_EVERY_MS).saturating_sub(now));
            }
            tokio::select! {
                ev = rx.recv() => {
                    match ev {
                        None => return None,
                        Some(Event::Shutdown(done)) => return Some(done),
                        Some(ev) => self.handle(ev),
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(wait)) => {
                    let now = self.now();
                    self.core.on_timeout(now);
                    // A child found silent leaves its counts in the totals' frozen part.
                    self.totals_dirty = true;
                }
            }
            if self.settle_due && self.now() >= self.last_settle + SETTLE_EVERY_MS {
                self.settle_due = false;
                let totals = self.core.totals();
                self.settle_jobs(&totals);
            }
            self.drain();
        }
    }

    fn handle(&mut self, ev: Event) {
        let now = self.now();
        match ev {
            Event::Join { join, reply } => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                info!(node = %join.name, reason = ?join.reason, height = join.height, "join");
                self.tickets.insert(ticket, reply);
                self.core.handle_join(now, ticket, join);
            }
            Event::ChildAttach {
                attach,
                link,
                reply,
                out,
            } => {
                let name = attach.name.clone();
                // A child that re-attaches has its old link's counts frozen.
                self.totals_dirty = true;
                let answer = self.core.handle_attach(now, attach);
                if matches!(answer, Msg::Accepted { .. }) {
                    info!(child = %name, "child of the root attached");
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
                    return;
                }
                match msg {
                    Some(m) => {
                        let report = matches!(m, Msg::Report(_));
                        self.totals_dirty |= report || matches!(m, Msg::Detach { .. });
                        self.core.handle_child_msg(now, &name, m);
                        // A late report may carry a job's last ranks: settle jobs now rather
                        // than at the next wave (only while jobs run; at most every 50 ms, the
                        // rest deferred to the end of those 50 ms, never dropped).
                        if report && self.jobs.running().next().is_some() {
                            self.settle_due = true;
                        }
                    }
                    None => {
                        info!(child = %name, reason = %why, "child link of the root ended");
                        self.totals_dirty = true;
                        self.children.remove(&name);
                        self.core.handle_child_gone(now, &name, &why);
                    }
                }
            }
            Event::Api(ApiRequest::Snapshot(reply)) => {
                let nodes = self.core.placement.view();
                let departed = {
                    let mut d = lock(&self.departures);
                    let planned: std::collections::HashSet<String> =
                        d.planned().map(str::to_string).collect();
                    for n in nodes.iter().filter(|n| planned.contains(&n.name)) {
                        d.observe(&n.name, n.status.is_live(), now);
                    }
                    d.all_departed()
                };
                let snap = Snapshot {
                    root: ROOT_NAME.to_string(),
                    epoch: self.epoch,
                    nodes,
                    departed,
                    totals: self.core.totals(),
                    digests: self.core.node.latest_digests().clone(),
                    last_wave: self.last_wave.clone(),
                    period_ms: self.core.node.config().period_ms,
                    now_ms: now,
                    mesh_rx_bytes: self.mesh_rx.load(Ordering::Relaxed),
                    jobs: self.jobs.running().cloned().collect(),
                    refused_claims_total: self.core.node.refused_claims_total(),
                    refused_claims: self.refused_claims.iter().cloned().collect(),
                };
                let _ = reply.send(snap);
            }
            Event::Shutdown(_) => {}
            Event::Api(ApiRequest::Command {
                targets,
                body,
                reply,
            }) => {
                let id = self.core.start_command(now, &targets, body);
                self.commands.insert(id, reply);
            }
            Event::Api(ApiRequest::Action {
                action,
                targets,
                order,
                deadline_ms,
            }) => {
                let id = self.core.start_streaming_command(
                    now,
                    &targets,
                    CommandBody::Action(order),
                    deadline_ms,
                );
                self.action_commands.insert(id, action);
            }
        }
    }

    fn drain(&mut self) {
        while let Some(r) = self.core.node.poll_refused_claim() {
            warn!(by = %r.by, member = %r.member, reason = %r.reason, "refused a claim: orders for that node will not go that way");
            if self.refused_claims.len() >= REFUSED_CLAIMS_SHOWN {
                self.refused_claims.pop_front();
            }
            self.refused_claims.push_back(r);
        }
        while let Some(action) = self.core.poll_action() {
            match action {
                RootAction::ReplyJoin { ticket, msg } => {
                    if let Some(reply) = self.tickets.remove(&ticket) {
                        let _ = reply.send(msg);
                    }
                }
                RootAction::Node(Action::ToChild { child, msg }) => {
                    if let Some((_, out)) = self.children.get(&child) {
                        let _ = out.send(msg);
                    }
                }
                RootAction::Node(Action::CloseChild { child, reason }) => {
                    info!(child = %child, reason = %reason, "child of the root removed");
                    self.children.remove(&child);
                }
                RootAction::Node(other) => debug!(action = ?other, "ignored at the root"),
            }
        }
        while let Some(a) = self.core.poll_answer() {
            self.take_answer(a);
        }
        while let Some(report) = self.core.poll_command_report() {
            if let Some(action) = self.action_commands.remove(&report.id) {
                self.finish_action(&action);
            } else if let Some(reply) = self.commands.remove(&report.id) {
                let _ = reply.send(report);
            }
        }
        let mut newest = None;
        while let Some(w) = self.core.poll_wave() {
            newest = Some(w);
        }
        if let Some(w) = newest {
            self.last_wave = Some(w);
            // One copy of the totals for the wave's jobs and alarms.
            let totals = self.core.totals();
            self.settle_jobs(&totals);
            let now = self.now();
            // A panic while the lock was held leaves plain data: keep using it.
            self.alarms
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .evaluate(&totals, now);
        }
        self.save_totals();
    }
}

impl Shell {
    /// One target's answer to an action: only a receipt sealed with that node's key, for this
    /// order, counts as its result. Anything else (an error some node on the way reported, a
    /// receipt that does not verify) fails the target with the reason: an inner node can drop or
    /// spoil a descendant's answer, never forge it.
    fn take_answer(&mut self, a: StreamedAnswer) {
        let Some(action) = self.action_commands.get(&a.id).cloned() else {
            return;
        };
        let checked = match a.answer {
            Ok(Answer::Receipt(sealed)) => self
                .open_signed::<Receipt>(&a.node, Purpose::Receipt, &sealed)
                .and_then(|r| {
                    if r.node != a.node || r.order != action {
                        Err(format!(
                            "answer refused: signed by {} for action {}, not by {} for {action}",
                            r.node, r.order, a.node
                        ))
                    } else {
                        Ok(r.result)
                    }
                }),
            Ok(Answer::Output(sealed)) => {
                // Lines while it runs: shown, never an answer that settles the target.
                match self.open_signed::<OutputLines>(&a.node, Purpose::Output, &sealed) {
                    Ok(l) if l.node == a.node && l.order == action => {
                        lock(&self.actions).output(&action, &a.node, l);
                    }
                    Ok(l) => {
                        warn!(action = %action, node = %a.node, signed_by = %l.node, for_action = %l.order, "output refused: signed for another node or action")
                    }
                    Err(e) => warn!(action = %action, node = %a.node, error = %e, "output refused"),
                }
                return;
            }
            Ok(Answer::Console(sealed)) => {
                // A guest's console output: to its session, never an answer.
                match self.open_signed::<ConsoleOutput>(&a.node, Purpose::ConsoleOutput, &sealed) {
                    Ok(o) if o.node == a.node && o.order == action => {
                        self.consoles.guest_output(&action, o);
                    }
                    Ok(o) => {
                        warn!(action = %action, node = %a.node, signed_by = %o.node, for_action = %o.order, "console output refused: signed for another node or action")
                    }
                    Err(e) => {
                        warn!(action = %action, node = %a.node, error = %e, "console output refused")
                    }
                }
                return;
            }
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(format!("reported by the tree (unsigned): {e}")),
        };
        match checked {
            Ok(result) => {
                let now = self.now();
                self.core
                    .settle_answer(now, a.id, &a.node, Ok(Answer::Done));
                let result = Ok(result);
                self.consoles
                    .guest_ended(&action, &crate::guest_console::describe(&result));
                lock(&self.actions).answer(&action, &a.node, result);
            }
            Err(e) => {
                // The target stays pending: its genuine answer may still come. The refusal is
                // kept beside it, so that the operator sees what was tried.
                warn!(action = %action, node = %a.node, error = %e, "action answer refused");
                lock(&self.actions).refused_answer(&action, &a.node, e);
            }
        }
    }

    /// Opens something `node` sealed with its node key, checked against the certificate on
    /// record for it.
    fn open_signed<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        purpose: Purpose,
        sealed: &Sealed,
    ) -> Result<T, String> {
        let mut reg = lock(&self.registry);
        match reg.verifier(node) {
            None => Err(format!(
                "no certificate on record for {node}: its answer cannot be checked"
            )),
            Some(v) => v
                .open::<T>(purpose, sealed)
                .map_err(|e| format!("answer refused: {e}")),
        }
    }

    fn finish_action(&mut self, action: &str) {
        // A console whose host never answered ends for its clients too.
        self.consoles.guest_ended(
            action,
            "the host did not answer before the session's deadline",
        );
        let now = self.now();
        let Some(r) = lock(&self.actions).finish(action, now) else {
            return;
        };
        let s = r.summary();
        info!(action = %r.id, ok = s.ok, failed = s.failed, unreachable = s.unreachable, "action finished");
        let event = AuditEvent::new(now, r.who.clone(), r.peer.clone(), "action.outcome")
            .action(r.id.clone())
            .for_real(r.for_real)
            .outcome(r.outcome_json());
        if let Err(e) = lock(&self.audit).append(event) {
            warn!(action = %r.id, error = %e, "cannot audit an action's outcome");
        }
    }
}

/// A shared book's lock; a panic while it was held leaves plain data, still usable.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Writes the totals it is handed, the latest first: values that changed while a write was in
/// progress are written once, after it.
async fn totals_writer(state: Arc<RootState>, mut rx: tokio::sync::watch::Receiver<Kept>) {
    while rx.changed().await.is_ok() {
        let kept = rx.borrow_and_update().clone();
        let st = state.clone();
        match tokio::task::spawn_blocking(move || st.save_kept(&kept)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot keep the totals; a restart would lose counts"),
            Err(e) => warn!(error = %e, "the totals writer failed"),
        }
    }
}

/// What enrolments and joins check: the certificates issued, and the guests' tokens.
#[derive(Clone)]
struct Enrolment {
    registry: Arc<Mutex<Registry>>,
    guest_tokens: Arc<Mutex<GuestTokens>>,
}

async fn accept_loop(
    ep: Endpoint,
    tx: mpsc::UnboundedSender<Event>,
    state: Arc<RootState>,
    enrolment: Enrolment,
    mesh_rx: Arc<AtomicU64>,
) {
    let mut next_link: u64 = 1;
    while let Some(incoming) = ep.accept().await {
        next_link += 1;
        let (tx, state, link) = (tx.clone(), state.clone(), next_link);
        let enrolment = enrolment.clone();
        let mesh_rx = mesh_rx.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    info!(peer = %remote, error = %e, "handshake refused");
                    return;
                }
            };
            if let Err(e) = serve(conn, link, tx, state, enrolment, mesh_rx).await {
                debug!(peer = %remote, error = %e, "connection ended");
            }
        });
    }
}

/// Serves one connection: enrolment (no certificate needed), a join, or a child link.
async fn serve(
    conn: quinn::Connection,
    link: u64,
    tx: mpsc::UnboundedSender<Event>,
    state: Arc<RootState>,
    enrolment: Enrolment,
    mesh_rx: Arc<AtomicU64>,
) -> Result<(), LinkError> {
    let registry = enrolment.registry.clone();
    let remote = conn.remote_address();
    let cert_name = transport::peer_cert_name(&conn);
    let label = cert_name.clone().unwrap_or_else(|| remote.to_string());
    let (mut f, first) = match transport::accept_first(&conn, &label).await {
        Ok(Some(x)) => x,
        Ok(None) => return Ok(()),
        Err(e) => {
            warn!(peer = %remote, error = %e, "refused a peer");
            return Err(e);
        }
    };
    match (first, cert_name) {
        (
            Msg::Enrol {
                name,
                secret,
                csr_der,
            },
            _,
        ) => {
            let answer = enrol(&state, &enrolment, &name, &secret, &csr_der);
            match &answer {
                Msg::Enrolled { .. } => info!(node = %name, peer = %remote, "enrolled"),
                Msg::Refused { reason } => {
                    warn!(node = %name, peer = %remote, %reason, "enrolment refused")
                }
                _ => {}
            }
            f.send(&answer).await?;
            let _ = f.send.finish();
            if let Msg::Refused { reason } = answer {
                tokio::time::sleep(Duration::from_millis(100)).await;
                transport::refuse(&conn, close::AUTH, &reason);
            }
            // The agent closes once it has the answer.
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            Ok(())
        }
        (_, None) => {
            transport::refuse(
                &conn,
                close::AUTH,
                "no client certificate: enrol with the join token first",
            );
            Ok(())
        }
        (Msg::Join(mut join), Some(cert)) => {
            if join.name != cert {
                let why = format!(
                    "certificate is for {cert}, not {}: a node cannot claim another node's name",
                    join.name
                );
                warn!(peer = %remote, "{why}");
                transport::refuse(&conn, close::AUTH, &why);
                return Ok(());
            }
            if let Err(why) = check_certificate(&conn, &registry, &cert) {
                warn!(peer = %remote, node = %cert, "{why}");
                transport::refuse(&conn, close::AUTH, &why);
                return Ok(());
            }
            join.addr = transport::advertised(&join.addr, remote);
            let (reply_tx, reply_rx) = oneshot::channel();
            let _ = tx.send(Event::Join {
                join,
                reply: reply_tx,
            });
            if let Ok(answer) = reply_rx.await {
                f.send(&answer).await?;
                let _ = f.send.finish();
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
            Ok(())
        }
        (Msg::Attach(attach), Some(cert)) => {
            if let Err(why) = check_certificate(&conn, &registry, &cert) {
                warn!(peer = %remote, node = %cert, "{why}");
                transport::refuse(&conn, close::AUTH, &why);
                return Ok(());
            }
            serve_child(conn, f, attach, cert, link, tx, mesh_rx).await
        }
        (other, Some(_)) => {
            let why = format!("unexpected first message {}", other.kind());
            transport::refuse(&conn, close::BAD_MESSAGE, &why);
            Ok(())
        }
    }
}

/// A node that asks for a place or attaches must present its name's current certificate: not
/// one that was replaced or forgotten.
fn check_certificate(
    conn: &quinn::Connection,
    registry: &Mutex<Registry>,
    name: &str,
) -> Result<(), String> {
    let Some(cert) = transport::peer_cert_der(conn) else {
        return Err("no client certificate".into());
    };
    lock(registry)
        .check_presented(name, &cert, transport::unix_ms())
        .map_err(|e| e.to_string())
}

/// Answers an enrolment: the cluster's join token enrols a new name; a guest's token
/// ([`crate::guesttokens`]) enrols its own name once, replacing an earlier certificate of that
/// name (the same guest launched again).
fn enrol(state: &RootState, enrolment: &Enrolment, name: &str, secret: &str, csr: &[u8]) -> Msg {
    if let Err(e) = validate_node_name(name) {
        return Msg::Refused {
            reason: format!("invalid node name {name:?}: {e}"),
        };
    }
    let guest = if state.join_token.secret_matches(secret) {
        false
    } else {
        // Held across the signing below, so that two enrolments with one token cannot both pass.
        match lock(&enrolment.guest_tokens).redeem(name, secret, transport::unix_ms()) {
            Redeemed::Accepted => true,
            Redeemed::Refused(reason) => return Msg::Refused { reason },
            Redeemed::NotGuest => {
                return Msg::Refused {
                    reason:
                        "wrong join secret: use the token printed by this cluster's banyan-root"
                            .into(),
                }
            }
        }
    };
    let mut registry = lock(&enrolment.registry);
    if guest {
        if let Err(e) = registry.forget(name) {
            return Msg::Refused {
                reason: e.to_string(),
            };
        }
    }
    if let Err(e) = registry.may_enrol(name) {
        return Msg::Refused {
            reason: e.to_string(),
        };
    }
    match state.ca.sign_csr(csr, name) {
        Ok(cert_der) => match registry.issued(name, &cert_der, transport::unix_ms()) {
            Ok(()) => Msg::Enrolled { cert_der },
            Err(e) => Msg::Refused {
                reason: e.to_string(),
            },
        },
        Err(e) => Msg::Refused {
            reason: format!("cannot sign the certificate request: {e}"),
        },
    }
}

async fn serve_child(
    conn: quinn::Connection,
    f: Framed,
    attach: Attach,
    cert: String,
    link: u64,
    tx: mpsc::UnboundedSender<Event>,
    mesh_rx: Arc<AtomicU64>,
) -> Result<(), LinkError> {
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
    transport::serve_child_metered(conn, f, attach, &cert, mesh_rx, ask, |msg, why| {
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

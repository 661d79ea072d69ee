//! `vm`: launches, lists and stops the QEMU guests of this node and reads their serial logs, with
//! the node's one guest supervisor ([`crate::vm::Manager`]).
//!
//! The manager's calls block (QMP round trips, a stop waits for the guest to power off), so each
//! runs on tokio's blocking pool; the task's deadline and cancel signal end the wait for it, not
//! the call itself (a launch or stop that outlives its order still completes, and the next `vm
//! list` shows it).
//!
//! The manager is opened at agent start when the node already has a guests' directory (so a
//! restarted agent re-attaches to the guests it left running and keeps their TTLs at once), and
//! otherwise on the first `vm` task, so that a node that never runs guests neither creates that
//! directory nor probes KVM. Once open, a task ticks it every second ([`TICK`]): expired TTLs are
//! stopped and QEMUs that ended by themselves are reported crashed; each event is logged. Nothing
//! ticks before then, so an agent without guests pays nothing.
//!
//! Results: the guests concerned, one [`VmStatus`] each, in `vms` (launched, listed, stopped, or
//! what a dry run would launch or stop); a serial log in `stdout`. A launch checks every guest
//! of the task (names free, files present, accelerator available, memory) before it starts any,
//! so a refusal leaves nothing behind; then the guests start in parallel, and `ok` means all did.
//! A stop names guests (unknown names fail, the others are stopped) or all of them; guests stop
//! in parallel. A dry run of a launch says the QEMU command line each guest would run.
//!
//! With `join` each guest is told, through fw_cfg, its node name `HOST-vm-NAME`, the root's
//! address as it reaches it (this agent's `--root`, a loopback one turned into user
//! networking's gateway 10.0.2.2) and the join token the root minted for that name alone.

use super::{cancelled, deadline_after, BoxFuture, Executor, RunContext};
use crate::actions::quote_argv;
use crate::config::VmSection;
use crate::vm::{
    Boot, Confidential, Forward, GuestInfo, GuestJoin, GuestState, LaunchSpec, Manager,
    StopOutcome, TickEvent, VmConfig, VmError,
};
use banyan_protocol::action::{
    parse_vm_forward, vm_node_name, NodeResult, Task, VmBoot, VmLaunch, VmOp, VmState, VmStatus,
    VmTask,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// How often the open manager is ticked (TTL deadlines are kept to about this).
pub const TICK: Duration = Duration::from_secs(1);

/// Carries out [`Task::Vm`].
pub struct Vm {
    shared: Arc<Shared>,
}

struct Shared {
    /// The guests' config, or why this node cannot run guests.
    cfg: Result<VmConfig, String>,
    /// The manager once opened; the tick task waits on it.
    manager: watch::Sender<Option<Arc<Manager>>>,
    /// Held while opening, so two first tasks do not open two managers of one directory.
    opening: tokio::sync::Mutex<()>,
    /// This agent's node name and the root's address, for guests that join the tree.
    host: Option<(String, SocketAddr)>,
}

impl Vm {
    /// The executor for `[vm]` on an agent with this state dir. Inside a tokio runtime (the
    /// agent's) it also starts the task that opens the manager at once when guests may be left
    /// from an earlier run, and ticks it once open.
    pub fn new(section: &VmSection, agent_state_dir: Option<&Path>) -> Vm {
        let (manager, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            cfg: section.resolve(agent_state_dir),
            manager,
            opening: tokio::sync::Mutex::new(()),
            host: section.host.clone(),
        });
        if let (Ok(cfg), Ok(rt)) = (&shared.cfg, tokio::runtime::Handle::try_current()) {
            let reopen = cfg.guests_dir().is_dir();
            rt.spawn(tick_loop(shared.clone(), reopen));
        }
        Vm { shared }
    }

    async fn vm(&self, task: &VmTask, ctx: RunContext) -> NodeResult {
        let m = match self.shared.open().await {
            Ok(m) => m,
            Err(why) => return NodeResult::refused(why),
        };
        let mut run = Run {
            m,
            deadline: deadline_after(ctx.timeout),
            ctx,
            host: self.shared.host.clone(),
        };
        match &task.op {
            VmOp::Launch(l) => run.launch(l).await,
            VmOp::List => run.list().await,
            VmOp::Stop {
                names,
                all,
                timeout_ms,
            } => {
                run.stop(names, *all, Duration::from_millis(*timeout_ms))
                    .await
            }
            VmOp::Logs { name, bytes } => run.logs(name, *bytes).await,
            VmOp::Console { name, session_ms } => {
                super::vm_console::run(run.m, run.ctx, name, *session_ms).await
            }
        }
    }
}

impl Shared {
    /// The manager, opened now if it is not yet.
    async fn open(&self) -> Result<Arc<Manager>, String> {
        if let Some(m) = self.manager.borrow().clone() {
            return Ok(m);
        }
        let cfg = self.cfg.clone()?;
        let _opening = self.opening.lock().await;
        if let Some(m) = self.manager.borrow().clone() {
            return Ok(m);
        }
        let dir = cfg.guests_dir();
        let m = tokio::task::spawn_blocking(move || Manager::open(cfg))
            .await
            .map_err(|e| format!("opening the guests of {}: {e}", dir.display()))?
            .map_err(|e| e.to_string())?;
        let m = Arc::new(m);
        let guests = m.list().len();
        tracing::info!(dir = %dir.display(), guests, "vm: guests opened");
        self.manager.send_replace(Some(m.clone()));
        Ok(m)
    }
}

/// Opens the manager at start when `reopen` (guests may be running), then ticks it every
/// [`TICK`] once it is open, for the agent's life.
async fn tick_loop(shared: Arc<Shared>, reopen: bool) {
    if reopen {
        if let Err(why) = shared.open().await {
            tracing::warn!(error = %why, "vm: the guests left by an earlier run could not be opened; the next vm action tries again");
        }
    }
    let mut rx = shared.manager.subscribe();
    let m = match rx.wait_for(Option::is_some).await {
        Ok(m) => m.clone(),
        Err(_) => return,
    };
    let Some(m) = m else { return };
    let mut every = tokio::time::interval(TICK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let m = m.clone();
        // A tick blocks while expired guests power off; the next waits for it (Delay above).
        let events = match tokio::task::spawn_blocking(move || m.tick(now_ms())).await {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(error = %e, "vm: tick failed");
                continue;
            }
        };
        for event in events {
            match event {
                TickEvent::Expired { name, outcome } => {
                    tracing::info!(guest = %name, outcome = %describe_stop(&outcome), "vm: TTL expired; guest stopped")
                }
                TickEvent::ExpiryFailed { name, error } => {
                    tracing::warn!(guest = %name, %error, "vm: TTL expired but the stop failed; tried again next tick")
                }
                TickEvent::Crashed { name, reason } => {
                    tracing::warn!(guest = %name, %reason, "vm: guest crashed; its files were removed")
                }
            }
        }
    }
}

impl Executor for Vm {
    fn kind(&self) -> &'static str {
        "vm"
    }

    fn run<'a>(&'a self, task: &'a Task, ctx: RunContext) -> BoxFuture<'a> {
        Box::pin(async move {
            match task {
                Task::Vm(t) => self.vm(t, ctx).await,
                other => NodeResult::refused(format!("not a vm task: {}", other.kind())),
            }
        })
    }
}

/// One task's calls to the manager under its deadline and cancel signal.
struct Run {
    m: Arc<Manager>,
    deadline: tokio::time::Instant,
    ctx: RunContext,
    host: Option<(String, SocketAddr)>,
}

impl Run {
    /// Runs `f` on the blocking pool; gives up waiting at the deadline or on cancel.
    async fn blocking<T: Send + 'static>(
        &mut self,
        what: &str,
        f: impl FnOnce(&Manager) -> T + Send + 'static,
    ) -> Result<T, String> {
        let m = self.m.clone();
        let job = tokio::task::spawn_blocking(move || f(&m));
        tokio::select! {
            r = job => r.map_err(|e| format!("{what}: {e}")),
            _ = tokio::time::sleep_until(self.deadline) => Err(format!(
                "{what}: not done within the action's timeout; it goes on on the node (see banyan vm list)"
            )),
            _ = cancelled(&mut self.ctx.cancel) => Err(format!(
                "{what}: cancelled; what was under way goes on on the node (see banyan vm list)"
            )),
        }
    }

    async fn launch(&mut self, l: &VmLaunch) -> NodeResult {
        let for_real = self.ctx.for_real;
        let specs = match l
            .names()
            .iter()
            .map(|n| spec(l, n, self.host.as_ref(), for_real))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(s) => s,
            Err(why) => return NodeResult::refused(why),
        };
        // Everything is checked before anything starts, so a refusal leaves nothing behind.
        let check = specs.clone();
        let checked = self
            .blocking("checking the launch", move |m| {
                check
                    .into_iter()
                    .map(|s| m.launch(s, true))
                    .collect::<Result<Vec<GuestInfo>, VmError>>()
            })
            .await;
        let planned = match checked {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return NodeResult::refused(format!("{e}; nothing was launched")),
            Err(why) => return NodeResult::refused(why),
        };
        let now = now_ms();
        if !self.ctx.for_real {
            let vms: Vec<VmStatus> = planned
                .iter()
                .map(|g| {
                    let mut s = status(g, now);
                    s.detail = format!("would run {}", quote_argv(&g.argv));
                    s
                })
                .collect();
            return NodeResult {
                ok: true,
                summary: format!("would launch {}", count(vms.len())),
                vms,
                ..NodeResult::default()
            };
        }
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let started = self
            .blocking("launching", move |m| {
                // Each launch waits for its QEMU's QMP: they overlap.
                each_at_once(specs, "launch", |s| m.launch(s, false))
            })
            .await;
        let started = match started {
            Ok(s) => s,
            Err(why) => return NodeResult::refused(why),
        };
        let now = now_ms();
        let mut vms = Vec::with_capacity(started.len());
        let mut failed = Vec::new();
        for (name, r) in names.into_iter().zip(started) {
            match r {
                Ok(g) => vms.push(status(&g, now)),
                Err(e) => {
                    tracing::warn!(guest = %name, error = %e, "vm: launch failed");
                    failed.push(name.clone());
                    vms.push(failure(&name, e.to_string()));
                }
            }
        }
        let summary = if failed.is_empty() {
            format!("launched {}", count(vms.len()))
        } else {
            format!(
                "{} of {} did not start: {}",
                failed.len(),
                count(vms.len()),
                failed.join(", ")
            )
        };
        NodeResult {
            ok: failed.is_empty(),
            summary,
            vms,
            ..NodeResult::default()
        }
    }

    async fn list(&mut self) -> NodeResult {
        match self.blocking("listing the guests", |m| m.list()).await {
            Ok(guests) => {
                let now = now_ms();
                NodeResult {
                    ok: true,
                    summary: count(guests.len()),
                    vms: guests.iter().map(|g| status(g, now)).collect(),
                    ..NodeResult::default()
                }
            }
            Err(why) => NodeResult::refused(why),
        }
    }

    async fn stop(&mut self, names: &[String], all: bool, timeout: Duration) -> NodeResult {
        let guests = match self.blocking("listing the guests", |m| m.list()).await {
            Ok(g) => g,
            Err(why) => return NodeResult::refused(why),
        };
        let names: Vec<String> = if all {
            guests.iter().map(|g| g.name.clone()).collect()
        } else {
            names.to_vec()
        };
        let now = now_ms();
        let known = |n: &str| guests.iter().find(|g| g.name == n);
        if !self.ctx.for_real {
            let vms: Vec<VmStatus> = names
                .iter()
                .map(|n| match known(n) {
                    Some(g) => {
                        let mut s = status(g, now);
                        s.detail = format!("would stop {n} ({})", s.state.as_str());
                        s.state = VmState::DryRun;
                        s
                    }
                    None => failure(n, VmError::Unknown(n.clone()).to_string()),
                })
                .collect();
            let ok = vms.iter().all(|s| s.state != VmState::Failed);
            return NodeResult {
                ok,
                summary: format!("would stop {}", count(vms.len())),
                vms,
                ..NodeResult::default()
            };
        }
        let asked = names.clone();
        let stopped = self
            .blocking("stopping", move |m| {
                // Each stop waits up to `timeout` for its guest: they overlap.
                each_at_once(asked, "stop", |n| m.stop(&n, timeout))
            })
            .await;
        let stopped = match stopped {
            Ok(s) => s,
            Err(why) => return NodeResult::refused(why),
        };
        let mut vms = Vec::with_capacity(names.len());
        let mut failed = Vec::new();
        for (name, r) in names.iter().zip(stopped) {
            let mut s = match known(name) {
                Some(g) => status(g, now),
                None => failure(name, String::new()),
            };
            match r {
                Ok(outcome) => {
                    s.state = VmState::Stopped;
                    s.detail = describe_stop(&outcome);
                    s.ttl_left_ms = None;
                }
                Err(e) => {
                    failed.push(name.clone());
                    s.state = VmState::Failed;
                    s.detail = e.to_string();
                }
            }
            vms.push(s);
        }
        let summary = if failed.is_empty() {
            format!("stopped {}", count(vms.len()))
        } else {
            format!(
                "{} of {} not stopped: {}",
                failed.len(),
                count(vms.len()),
                failed.join(", ")
            )
        };
        NodeResult {
            ok: failed.is_empty(),
            summary,
            vms,
            ..NodeResult::default()
        }
    }

    async fn logs(&mut self, name: &str, bytes: u64) -> NodeResult {
        let n = name.to_string();
        match self
            .blocking("reading the serial log", move |m| m.log_tail(&n, bytes))
            .await
        {
            Ok(Ok(tail)) => NodeResult {
                ok: true,
                stdout: String::from_utf8_lossy(&tail).into_owned(),
                ..NodeResult::default()
            },
            Ok(Err(e)) => NodeResult::refused(e.to_string()),
            Err(why) => NodeResult::refused(why),
        }
    }
}

/// The manager's launch spec for one guest of a launch task; `host` is this agent's node name
/// and root address (for `join`), `for_real` whether its token must be in the order.
fn spec(
    l: &VmLaunch,
    name: &str,
    host: Option<&(String, SocketAddr)>,
    for_real: bool,
) -> Result<LaunchSpec, String> {
    let join = match (&l.join, host) {
        (None, _) => None,
        (Some(_), None) => {
            return Err("--join needs the agent's node name and root address; this executor runs outside an agent".into())
        }
        (Some(j), Some((node, root))) => {
            let guest_node = vm_node_name(node, name);
            let token = j.tokens.get(&guest_node).cloned();
            if for_real && token.is_none() {
                return Err(format!(
                    "the order carries no join token for {guest_node}: the root mints one per guest; nothing was launched"
                ));
            }
            Some(GuestJoin {
                node: guest_node,
                root: guest_root(*root).to_string(),
                token,
            })
        }
    };
    let boot = match &l.boot {
        VmBoot::Kernel {
            kernel,
            initrd,
            append,
        } => Boot::Kernel {
            kernel: PathBuf::from(kernel),
            initrd: initrd.as_ref().map(PathBuf::from),
            append: append.clone(),
        },
        VmBoot::Disk { image, overlay } => Boot::Disk {
            image: PathBuf::from(image),
            overlay: *overlay,
        },
    };
    let forwards = l
        .forwards
        .iter()
        .map(|f| parse_vm_forward(f).map(|(host, guest)| Forward { host, guest }))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(LaunchSpec {
        name: name.to_string(),
        cpus: l.cpus,
        memory_mib: l.memory_mib,
        boot,
        ovmf: l.ovmf,
        accel: l.accel.clone(),
        confidential: match (l.sev_snp, l.tdx) {
            (true, _) => Confidential::SevSnp,
            (_, true) => Confidential::Tdx,
            _ => Confidential::None,
        },
        forwards,
        ttl: l.ttl_ms.map(Duration::from_millis),
        join,
    })
}

/// The root's address as a guest on QEMU's user networking reaches it: the host's loopback is
/// the guest's own, so a loopback root is reached through the gateway 10.0.2.2; any other
/// address is NATed through the host as is (the guest reaches what its host reaches).
fn guest_root(root: SocketAddr) -> SocketAddr {
    if root.ip().is_loopback() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 2)), root.port())
    } else {
        root
    }
}

/// How a guest is shown in a result, at `now` (unix ms, this node's clock).
fn status(g: &GuestInfo, now: u64) -> VmStatus {
    let (state, detail) = match &g.state {
        GuestState::Running => (VmState::Running, String::new()),
        GuestState::Stopping => (VmState::Stopping, String::new()),
        GuestState::Crashed { reason } => (VmState::Crashed, reason.clone()),
        GuestState::DryRun => (VmState::DryRun, String::new()),
    };
    let live = matches!(g.state, GuestState::Running | GuestState::Stopping);
    VmStatus {
        name: g.name.clone(),
        state,
        cpus: g.cpus,
        memory_mib: g.memory_mib,
        accel: g.accel.as_str().to_string(),
        confidential: match g.confidential {
            Confidential::None => "none",
            Confidential::SevSnp => "sev-snp",
            Confidential::Tdx => "tdx",
        }
        .to_string(),
        started_ms: g.started_at_ms,
        uptime_ms: if live {
            now.saturating_sub(g.started_at_ms)
        } else {
            0
        },
        ttl_left_ms: g
            .ttl_deadline_ms
            .filter(|_| live)
            .map(|d| d.saturating_sub(now)),
        pid: g.pid,
        forwards: g
            .forwards
            .iter()
            .map(|f| format!("127.0.0.1:{} -> {}", f.host, f.guest))
            .collect(),
        reattached: g.reattached,
        detail,
        node: g.node.clone().unwrap_or_default(),
    }
}

fn failure(name: &str, why: String) -> VmStatus {
    VmStatus {
        name: name.to_string(),
        state: VmState::Failed,
        detail: why,
        ..VmStatus::default()
    }
}

fn describe_stop(o: &StopOutcome) -> String {
    match o {
        StopOutcome::PoweredOff => "powered off".into(),
        StopOutcome::Quit => "did not power off in time; QEMU quit".into(),
        StopOutcome::Killed => "QEMU did not quit; killed".into(),
        StopOutcome::AlreadyGone { reason } => format!("had already ended: {reason}"),
    }
}

fn count(n: usize) -> String {
    format!("{n} guest{}", if n == 1 { "" } else { "s" })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Runs `f` on every item at once, one thread each, and gives the results in the items' order (a
/// thread that panicked gives an error naming `what`).
fn each_at_once<I: Send, R: Send>(
    items: Vec<I>,
    what: &str,
    f: impl Fn(I) -> Result<R, VmError> + Sync,
) -> Vec<Result<R, VmError>> {
    std::thread::scope(|scope| {
        let f = &f;
        let threads: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || f(item)))
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join().unwrap_or_else(|_| {
                    Err(VmError::Refused(format!("the {what} thread panicked")))
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VmSection;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(f),
            Err(e) => panic!("runtime: {e}"),
        }
    }

    #[test]
    fn a_loopback_root_is_reached_through_the_user_network_gateway() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(guest_root(at("127.0.0.1:1337")), at("10.0.2.2:1337"));
        assert_eq!(guest_root(at("[::1]:7000")), at("10.0.2.2:7000"));
        assert_eq!(guest_root(at("198.18.0.1:1337")), at("198.18.0.1:1337"));
    }

    #[test]
    fn a_joining_guest_takes_its_own_token_and_a_real_launch_needs_one() {
        let mut l = VmLaunch {
            name: "g".into(),
            count: 2,
            cpus: 1,
            memory_mib: 64,
            boot: VmBoot::Kernel {
                kernel: "/k".into(),
                initrd: None,
                append: None,
            },
            ovmf: false,
            accel: None,
            sev_snp: false,
            tdx: false,
            forwards: Vec::new(),
            ttl_ms: None,
            join: Some(banyan_protocol::action::VmJoin::default()),
        };
        let host = ("cn1".to_string(), "127.0.0.1:1337".parse().unwrap());
        // A dry run: no token minted, none needed.
        let s = spec(&l, "g-1", Some(&host), false).unwrap();
        let j = s.join.unwrap();
        assert_eq!(
            (j.node.as_str(), j.root.as_str(), j.token),
            ("cn1-vm-g-1", "10.0.2.2:1337", None)
        );
        let e = spec(&l, "g-1", Some(&host), true).unwrap_err();
        assert_eq!(e, "the order carries no join token for cn1-vm-g-1: the root mints one per guest; nothing was launched");
        if let Some(j) = &mut l.join {
            j.tokens.insert("cn1-vm-g-1".into(), "T1".into());
            j.tokens.insert("cn1-vm-g-2".into(), "T2".into());
        }
        let s = spec(&l, "g-2", Some(&host), true).unwrap();
        assert_eq!(s.join.and_then(|j| j.token).as_deref(), Some("T2"));
        assert!(spec(&l, "g-1", None, true).is_err());
    }

    #[test]
    fn without_a_state_dir_guests_are_refused_with_the_fix() {
        let vm = Vm::new(&VmSection::default(), None);
        let (ctx, _cancel) = RunContext::new(true, Duration::from_secs(5));
        let task = Task::Vm(VmTask { op: VmOp::List });
        let r = block_on(vm.run(&task, ctx));
        assert!(!r.ok && r.summary.contains("--state-dir"), "{r:?}");
    }

    #[test]
    fn a_launch_with_a_missing_kernel_is_refused_and_leaves_nothing() {
        let dir = std::env::temp_dir().join(format!("bvm-exec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let vm = Vm::new(&VmSection::default(), Some(&dir));
        let (ctx, _cancel) = RunContext::new(true, Duration::from_secs(30));
        let task = Task::Vm(VmTask {
            op: VmOp::Launch(VmLaunch {
                name: "a".into(),
                count: 2,
                cpus: 1,
                memory_mib: 64,
                boot: VmBoot::Kernel {
                    kernel: dir.join("no-such-kernel").display().to_string(),
                    initrd: None,
                    append: None,
                },
                ovmf: false,
                accel: Some("tcg".into()),
                sev_snp: false,
                tdx: false,
                forwards: Vec::new(),
                ttl_ms: None,
                join: None,
            }),
        });
        let r = block_on(vm.run(&task, ctx));
        assert!(!r.ok, "{r:?}");
        assert!(
            r.summary.contains("no-such-kernel does not exist")
                && r.summary.contains("nothing was launched"),
            "{r:?}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.join("vm")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

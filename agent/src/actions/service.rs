//! `service`: starts, stops, restarts daemons on this node and tells their state.
//!
//! Only units listed in `agent.toml`'s `[service] allow` are touched; a task naming any other is
//! refused whole, before anything runs. Each unit is handled by one of two backends:
//! - its commands from `[service.units.NAME]` when it has them (configured commands win, so a
//!   site can run a daemon its own way even on a systemd host);
//! - otherwise systemd, when PID 1 is systemd (`/proc/1/comm`): `systemctl start|stop|restart`,
//!   and `systemctl is-active` for the state (active, inactive, failed; anything else unknown).
//!
//! A unit with neither is refused. Units are handled one after another, in the task's order, under
//! the task's one deadline; mutating tasks on this node are serialised, so a start and a stop of
//! the same unit from two orders never interleave.
//!
//! The configured-commands backend:
//! - **start** runs the start command in a session of its own, with stdout and stderr appended to
//!   `<state dir>/services/UNIT.log` (or `/dev/null` without a state dir), and waits for that
//!   command only: a daemon it leaves running does not hold the action up. A unit already active
//!   is not started twice. After the command exits 0 the state is read again for up to
//!   [`SETTLE`], until it is active.
//! - **stop** runs the stop command, or without one sends SIGTERM (then SIGCONT, so that a
//!   stopped daemon can act on it) to the pid in `pid_file` and
//!   waits (up to the deadline, then SIGKILL) until that process has gone. Only that pid is
//!   signalled, as `start-stop-daemon --pidfile` does; the daemon's own children are its business.
//! - **status**: the status command's exit status 0 means active, anything else inactive; without
//!   one, the pid in `pid_file` is active when `/proc/PID` is a live process (not a zombie) that
//!   did not start after the pid file was written — a cheap guard against a stale pid file whose
//!   number now belongs to another process (within the clock's precision, about 2 s).
//! - **failed**: the agent remembers (in memory, until it restarts) that a unit's last start
//!   failed, and reports such a unit as failed rather than inactive until it is started or
//!   stopped successfully.
//!
//! Results: each unit's state after the operation is in `units`. `ok` means every unit reached
//! what was asked: start and restart -> active; stop -> not running (inactive, or failed as
//! systemd keeps a unit that failed); status -> every unit's state could be read, whatever it is.
//! A dry run changes nothing but reads the real states (status runs even in a dry run, as it
//! changes nothing) and says per unit what it would do; it is ok when every unit is allowed and
//! has a backend and its user exists.

use super::child::{self, End, Identity, Launch, Output};
use super::{cancelled, deadline_after, BoxFuture, Executor, RunContext};
use crate::config::{ServiceConfig, UnitConfig};
use banyan_protocol::action::{NodeResult, ServiceOp, ServiceTask, Task, UnitState, UnitStatus};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a unit may take to show as active (or inactive) after its start (or stop) command
/// has returned successfully: daemons write their pid file, or come up, a little after.
pub const SETTLE: Duration = Duration::from_secs(3);

/// How often the state is read again while waiting for it to settle.
const POLL: Duration = Duration::from_millis(50);

/// A process that started this much after its pid file was written is another process reusing
/// the number. The boot time the kernel gives is in whole seconds, hence the slack.
const PID_FILE_SLACK: Duration = Duration::from_secs(2);

/// Carries out [`Task::Service`].
pub struct Service {
    cfg: ServiceConfig,
    /// Where start and stop commands' output goes, one file per unit.
    log_dir: Option<PathBuf>,
    /// `systemctl`, when PID 1 is systemd.
    systemctl: Option<PathBuf>,
    /// Units whose last start failed, and why.
    failed: Mutex<HashMap<String, String>>,
    /// Held by a task that changes units, for its whole run.
    busy: tokio::sync::Mutex<()>,
}

/// How one unit is handled.
enum Backend<'a> {
    Commands(&'a UnitConfig),
    Systemd(&'a Path),
}

/// What a state read found, with the pid when the state came from a pid file.
struct Probe {
    state: UnitState,
    detail: String,
    pid: Option<Pid>,
}

impl Probe {
    fn new(state: UnitState, detail: impl Into<String>) -> Probe {
        Probe {
            state,
            detail: detail.into(),
            pid: None,
        }
    }
}

impl Service {
    /// `state_dir`: the agent's state dir, under which start and stop commands log.
    pub fn new(cfg: &ServiceConfig, state_dir: Option<&Path>) -> Service {
        let systemd = std::fs::read_to_string("/proc/1/comm").is_ok_and(|c| c.trim() == "systemd");
        let systemctl = systemd.then(|| {
            child::find_program("systemctl").unwrap_or_else(|| PathBuf::from("/bin/systemctl"))
        });
        Service {
            cfg: cfg.clone(),
            log_dir: state_dir.map(|d| d.join("services")),
            systemctl,
            failed: Mutex::new(HashMap::new()),
            busy: tokio::sync::Mutex::new(()),
        }
    }

    /// Uses `systemctl` at this path for units without commands, or no systemd at all (`None`),
    /// whatever PID 1 is (tests, and hosts where detection guesses wrong).
    pub fn with_systemctl(mut self, systemctl: Option<PathBuf>) -> Service {
        self.systemctl = systemctl;
        self
    }

    fn backend(&self, unit: &str) -> Result<Backend<'_>, String> {
        if !self.cfg.allows(unit) {
            return Err(format!(
                "unit {unit} is not in this node's allow list (agent.toml [service] allow)"
            ));
        }
        if let Some(u) = self.cfg.unit(unit) {
            return Ok(Backend::Commands(u));
        }
        match &self.systemctl {
            Some(s) => Ok(Backend::Systemd(s)),
            None => Err(format!(
                "unit {unit} has no commands in agent.toml [service.units.{unit}] and this node \
                 does not run systemd"
            )),
        }
    }

    async fn service(&self, task: &ServiceTask, mut ctx: RunContext) -> NodeResult {
        let deadline = deadline_after(ctx.timeout);
        // Everything is checked before anything runs, so a refusal leaves every unit as it was.
        let mut plan = Vec::with_capacity(task.units.len());
        for unit in &task.units {
            let backend = match self.backend(unit) {
                Ok(b) => b,
                Err(why) => return NodeResult::refused(why),
            };
            let user = match &backend {
                Backend::Commands(u) => u.user.as_deref(),
                Backend::Systemd(_) => None,
            };
            let identity = match Identity::resolve(user).await {
                Ok(i) => i,
                Err(why) => return NodeResult::refused(format!("unit {unit}: {why}")),
            };
            plan.push((unit.as_str(), backend, identity));
        }
        let op = task.op;
        let _busy = if op.mutates() && ctx.for_real {
            tokio::select! {
                g = self.busy.lock() => Some(g),
                _ = tokio::time::sleep_until(deadline) => {
                    return NodeResult::refused(
                        "timed out waiting for another service action on this node to finish",
                    )
                }
                _ = cancelled(&mut ctx.cancel) => return NodeResult::refused("cancelled"),
            }
        } else {
            None
        };
        let mut units = Vec::with_capacity(plan.len());
        for (unit, backend, identity) in &plan {
            let status = if ctx.is_cancelled() {
                UnitStatus {
                    unit: unit.to_string(),
                    state: UnitState::Unknown,
                    detail: "not done: cancelled".into(),
                }
            } else {
                let mut run = Step {
                    service: self,
                    unit,
                    identity,
                    deadline,
                    cancel: &mut ctx.cancel,
                };
                let probe = match (op, ctx.for_real) {
                    (ServiceOp::Status, _) => run.state(backend).await,
                    (_, false) => run.dry(op, backend).await,
                    (ServiceOp::Start, true) => run.start(backend).await,
                    (ServiceOp::Stop, true) => run.stop(backend).await,
                    (ServiceOp::Restart, true) => run.restart(backend).await,
                };
                UnitStatus {
                    unit: unit.to_string(),
                    state: probe.state,
                    detail: probe.detail,
                }
            };
            units.push(status);
        }
        let reached = |s: UnitState| match op {
            ServiceOp::Start | ServiceOp::Restart => s == UnitState::Active,
            ServiceOp::Stop => matches!(s, UnitState::Inactive | UnitState::Failed),
            ServiceOp::Status => s != UnitState::Unknown,
        };
        let was_cancelled = ctx.is_cancelled();
        let ok = !was_cancelled
            && (!ctx.for_real && op.mutates() || units.iter().all(|u| reached(u.state)));
        let mut summary = if !ctx.for_real && op.mutates() {
            let names: Vec<&str> = units.iter().map(|u| u.unit.as_str()).collect();
            format!("would {} {}", op.as_str(), names.join(", "))
        } else {
            let states: Vec<String> = units
                .iter()
                .map(|u| format!("{} {}", u.unit, u.state.as_str()))
                .collect();
            match op {
                ServiceOp::Status => states.join(", "),
                _ => format!("{}: {}", op.as_str(), states.join(", ")),
            }
        };
        if was_cancelled {
            summary = format!("cancelled; {summary}");
        }
        NodeResult {
            ok,
            summary: shorten(summary, 400),
            units,
            ..NodeResult::default()
        }
    }

    fn remember_failure(&self, unit: &str, why: &str) {
        if let Ok(mut f) = self.failed.lock() {
            f.insert(unit.to_string(), why.to_string());
        }
    }

    fn forget_failure(&self, unit: &str) {
        if let Ok(mut f) = self.failed.lock() {
            f.remove(unit);
        }
    }

    fn last_failure(&self, unit: &str) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.get(unit).cloned())
    }
}

impl Executor for Service {
    fn kind(&self) -> &'static str {
        "service"
    }

    fn run<'a>(&'a self, task: &'a Task, ctx: RunContext) -> BoxFuture<'a> {
        Box::pin(async move {
            match task {
                Task::Service(t) => self.service(t, ctx).await,
                other => NodeResult::refused(format!("not a service task: {}", other.kind())),
            }
        })
    }
}

/// One unit's operation under the task's deadline and cancel signal.
struct Step<'a> {
    service: &'a Service,
    unit: &'a str,
    identity: &'a Identity,
    deadline: Instant,
    cancel: &'a mut watch::Receiver<bool>,
}

/// What running one command of a unit gave: Ok on exit status 0, else why not.
type Ran = Result<(), String>;

impl Step<'_> {
    /// The unit's state now.
    async fn state(&mut self, backend: &Backend<'_>) -> Probe {
        match backend {
            Backend::Systemd(systemctl) => self.systemd_state(systemctl).await,
            Backend::Commands(u) => {
                let probe = match (&u.status, &u.pid_file) {
                    (Some(status), _) => {
                        let argv = status.argv();
                        match self.command(&argv, Output::Capture(512)).await {
                            Ok(_) => Probe::new(UnitState::Active, ""),
                            Err(why) if why.starts_with("exit ") => {
                                Probe::new(UnitState::Inactive, format!("status command: {why}"))
                            }
                            Err(why) => {
                                Probe::new(UnitState::Unknown, format!("status command: {why}"))
                            }
                        }
                    }
                    (None, Some(pid_file)) => pid_file_state(pid_file),
                    (None, None) => Probe::new(UnitState::Unknown, "no status command or pid_file"),
                };
                match (probe.state, self.service.last_failure(self.unit)) {
                    (UnitState::Inactive, Some(why)) => Probe::new(UnitState::Failed, why),
                    _ => probe,
                }
            }
        }
    }

    async fn systemd_state(&mut self, systemctl: &Path) -> Probe {
        let argv = [
            systemctl.to_string_lossy().into_owned(),
            "is-active".into(),
            self.unit.to_string(),
        ];
        let launch = Launch {
            argv: &argv,
            identity: self.identity,
            cwd: Path::new("/"),
            output: Output::Capture(512),
        };
        match child::run(launch, self.deadline, self.cancel).await {
            Err(why) => Probe::new(UnitState::Unknown, format!("cannot run systemctl: {why}")),
            Ok(f) if f.end != End::Exited => {
                Probe::new(UnitState::Unknown, "systemctl is-active did not finish")
            }
            Ok(f) => {
                let word = String::from_utf8_lossy(&f.stdout).trim().to_string();
                match word.as_str() {
                    "active" => Probe::new(UnitState::Active, ""),
                    "inactive" => Probe::new(UnitState::Inactive, ""),
                    "failed" => Probe::new(UnitState::Failed, ""),
                    "" => Probe::new(UnitState::Unknown, first_line(&f.stderr)),
                    other => Probe::new(UnitState::Unknown, format!("systemd says {other}")),
                }
            }
        }
    }

    /// Runs a command of this unit to its end. Err: why it did not exit 0 (`exit N...` when it
    /// ran and failed).
    async fn command(&mut self, argv: &[String], output: Output) -> Ran {
        let launch = Launch {
            argv,
            identity: self.identity,
            cwd: Path::new("/"),
            output,
        };
        let program = argv.first().map_or("", String::as_str);
        let f = child::run(launch, self.deadline, self.cancel)
            .await
            .map_err(|why| format!("cannot run {program}: {why}"))?;
        match f.end {
            End::TimedOut => return Err("timed out (its process group was killed)".into()),
            End::Cancelled => return Err("cancelled (its process group was killed)".into()),
            End::Exited => {}
        }
        use std::os::unix::process::ExitStatusExt;
        let said = [first_line(&f.stderr), first_line(&f.stdout)]
            .into_iter()
            .find(|l| !l.is_empty())
            .map(|l| format!(": {l}"))
            .unwrap_or_default();
        match f.status.map(|s| (s.code(), s.signal())) {
            Some((Some(0), _)) => Ok(()),
            Some((Some(code), _)) => Err(format!("exit {code}{said}")),
            Some((None, Some(sig))) => Err(format!("exit by signal {sig}{said}")),
            _ => Err("exit status unknown".into()),
        }
    }

    /// Runs a start or stop command with its output in the unit's log; on failure, says what it
    /// wrote last.
    async fn logged(&mut self, argv: &[String]) -> Ran {
        let log = self
            .service
            .log_dir
            .as_ref()
            .map(|d| d.join(format!("{}.log", self.unit)));
        let before = log
            .as_ref()
            .and_then(|l| std::fs::metadata(l).ok())
            .map_or(0, |m| m.len());
        let output = log.clone().map_or(Output::Null, Output::Append);
        self.command(argv, output).await.map_err(|why| {
            match log.as_deref().and_then(|l| log_tail(l, before)) {
                Some(tail) => format!("{why}; its log says: {tail}"),
                None => why,
            }
        })
    }

    /// Reads the state until `want` says it is reached, for up to [`SETTLE`] (and the deadline).
    async fn settle(&mut self, backend: &Backend<'_>, want: fn(UnitState) -> bool) -> Probe {
        let until = (Instant::now() + SETTLE).min(self.deadline);
        loop {
            let probe = self.state(backend).await;
            if want(probe.state) || Instant::now() >= until || *self.cancel.borrow() {
                return probe;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn start(&mut self, backend: &Backend<'_>) -> Probe {
        match backend {
            Backend::Systemd(s) => self.systemctl(s, "start").await,
            Backend::Commands(u) => {
                let now = self.state(backend).await;
                if now.state == UnitState::Active {
                    return Probe::new(UnitState::Active, "already active");
                }
                tracing::info!(unit = self.unit, "service: starting");
                if let Err(why) = self.logged(&u.start.argv()).await {
                    let why = format!("start command: {why}");
                    if !why.contains("cancelled") {
                        self.service.remember_failure(self.unit, &why);
                        return Probe::new(UnitState::Failed, why);
                    }
                    return Probe::new(UnitState::Unknown, why);
                }
                let probe = self.settle(backend, |s| s == UnitState::Active).await;
                if probe.state == UnitState::Active {
                    self.service.forget_failure(self.unit);
                    return Probe::new(UnitState::Active, "started");
                }
                let why = format!(
                    "the start command succeeded but the unit is not active{}",
                    if probe.detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", probe.detail)
                    }
                );
                self.service.remember_failure(self.unit, &why);
                Probe::new(UnitState::Failed, why)
            }
        }
    }

    async fn stop(&mut self, backend: &Backend<'_>) -> Probe {
        match backend {
            Backend::Systemd(s) => self.systemctl(s, "stop").await,
            Backend::Commands(u) => {
                let now = self.state(backend).await;
                if matches!(now.state, UnitState::Inactive | UnitState::Failed) {
                    self.service.forget_failure(self.unit);
                    return Probe::new(UnitState::Inactive, "already inactive");
                }
                tracing::info!(unit = self.unit, "service: stopping");
                let ran = match (&u.stop, &u.pid_file) {
                    (Some(stop), _) => self
                        .logged(&stop.argv())
                        .await
                        .map_err(|why| format!("stop command: {why}")),
                    (None, Some(pid_file)) => self.terminate(pid_file).await,
                    (None, None) => Err("no stop command or pid_file".into()),
                };
                let probe = self
                    .settle(backend, |s| {
                        matches!(s, UnitState::Inactive | UnitState::Failed)
                    })
                    .await;
                match (probe.state, ran) {
                    (UnitState::Inactive | UnitState::Failed, Ok(())) => {
                        self.service.forget_failure(self.unit);
                        Probe::new(UnitState::Inactive, "stopped")
                    }
                    (state, Err(why)) => Probe::new(state, why),
                    (state, Ok(())) => Probe::new(
                        state,
                        format!("still {} after stopping: {}", state.as_str(), probe.detail),
                    ),
                }
            }
        }
    }

    async fn restart(&mut self, backend: &Backend<'_>) -> Probe {
        if let Backend::Systemd(s) = backend {
            return self.systemctl(s, "restart").await;
        }
        let stopped = self.stop(backend).await;
        if !matches!(stopped.state, UnitState::Inactive | UnitState::Failed) {
            return Probe::new(
                stopped.state,
                format!("not started again: could not stop it: {}", stopped.detail),
            );
        }
        let started = self.start(backend).await;
        let detail = if started.state == UnitState::Active {
            "restarted".to_string()
        } else {
            started.detail
        };
        Probe::new(started.state, detail)
    }

    /// SIGTERM to the pid in `pid_file`, waiting until that process has gone; SIGKILL at the
    /// deadline.
    async fn terminate(&mut self, pid_file: &Path) -> Ran {
        let probe = pid_file_state(pid_file);
        let Some(pid) = probe.pid else {
            return Ok(()); // not running: nothing to stop
        };
        kill(pid, Signal::SIGTERM).map_err(|e| format!("cannot send SIGTERM to pid {pid}: {e}"))?;
        // A stopped (SIGSTOP, traced) daemon would hold the SIGTERM until the deadline's SIGKILL:
        // SIGCONT lets it shut down as asked, as systemd does after its kill signal.
        let _ = kill(pid, Signal::SIGCONT);
        loop {
            if !process_alive(pid) {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = tokio::time::sleep_until(self.deadline) => break,
                _ = cancelled(self.cancel) => return Err("cancelled while waiting for it to stop".into()),
            }
        }
        let _ = kill(pid, Signal::SIGKILL);
        let until = Instant::now() + child::KILL_GRACE;
        while process_alive(pid) && Instant::now() < until {
            tokio::time::sleep(POLL).await;
        }
        Err(format!(
            "pid {pid} did not stop on SIGTERM before the deadline: sent SIGKILL"
        ))
    }

    async fn systemctl(&mut self, systemctl: &Path, verb: &str) -> Probe {
        tracing::info!(unit = self.unit, "service: systemctl {verb}");
        let argv = [
            systemctl.to_string_lossy().into_owned(),
            "--no-ask-password".into(),
            verb.into(),
            self.unit.to_string(),
        ];
        let ran = self.command(&argv, Output::Capture(4096)).await;
        let probe = self.systemd_state(systemctl).await;
        match ran {
            Ok(()) => Probe::new(probe.state, probe.detail),
            Err(why) => Probe::new(probe.state, format!("systemctl {verb}: {why}")),
        }
    }

    /// What `op` would do, and the unit's state now.
    async fn dry(&mut self, op: ServiceOp, backend: &Backend<'_>) -> Probe {
        let now = self.state(backend).await;
        let unit = self.unit;
        let detail = match backend {
            Backend::Systemd(_) => format!("would run systemctl {} {unit}", op.as_str()),
            Backend::Commands(u) => {
                let start = format!("start {unit} (configured command: {})", u.start);
                let stop = match (&u.stop, now.pid) {
                    (Some(c), _) => format!("stop {unit} (configured command: {c})"),
                    (None, Some(pid)) => format!("stop {unit} (SIGTERM to pid {pid})"),
                    (None, None) => format!("stop {unit} (SIGTERM to the pid in its pid_file)"),
                };
                let active = now.state == UnitState::Active;
                let stopped = matches!(now.state, UnitState::Inactive | UnitState::Failed);
                match op {
                    ServiceOp::Start if active => "already active: would do nothing".into(),
                    ServiceOp::Start => format!("would {start}"),
                    ServiceOp::Stop if stopped => "already inactive: would do nothing".into(),
                    ServiceOp::Stop => format!("would {stop}"),
                    ServiceOp::Restart if stopped => format!("would {start}"),
                    ServiceOp::Restart => format!("would {stop}, then {start}"),
                    ServiceOp::Status => String::new(),
                }
            }
        };
        let detail = if now.detail.is_empty() {
            detail
        } else {
            format!("{detail}; now {}: {}", now.state.as_str(), now.detail)
        };
        Probe::new(now.state, detail)
    }
}

/// The state of a unit known by its pid file alone.
fn pid_file_state(pid_file: &Path) -> Probe {
    let shown = pid_file.display();
    let text = match std::fs::read_to_string(pid_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Probe::new(UnitState::Inactive, format!("no pid file {shown}"))
        }
        Err(e) => return Probe::new(UnitState::Unknown, format!("cannot read {shown}: {e}")),
    };
    let pid = match text.split_whitespace().next().map(str::parse::<i32>) {
        Some(Ok(p)) if p > 1 => Pid::from_raw(p),
        _ => return Probe::new(UnitState::Unknown, format!("{shown} holds no pid")),
    };
    let written = std::fs::metadata(pid_file).and_then(|m| m.modified()).ok();
    match (process_start(pid), written) {
        (None, _) => Probe::new(
            UnitState::Inactive,
            format!("pid {pid} from {shown} is not running"),
        ),
        (Some(started), Some(written)) if started > written + PID_FILE_SLACK => Probe::new(
            UnitState::Inactive,
            format!(
                "pid {pid} from {shown} belongs to a process started after the file was written"
            ),
        ),
        (Some(_), _) => Probe {
            state: UnitState::Active,
            detail: format!("pid {pid}"),
            pid: Some(pid),
        },
    }
}

/// Whether `pid` is a live process (zombies are not: a stopped daemon whose parent does not reap
/// it stays one, and counts as gone).
fn process_alive(pid: Pid) -> bool {
    process_start(pid).is_some()
}

/// When a live process started (wall clock), from `/proc/PID/stat`; `None` if it is gone or a
/// zombie.
fn process_start(pid: Pid) -> Option<SystemTime> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces and parentheses: fields follow the last ')'.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    if matches!(fields.first(), Some(&("Z" | "X" | "x"))) {
        return None;
    }
    let ticks: u64 = fields.get(19)?.parse().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&hz| hz > 0)
        .map_or(100, |hz| hz as u64);
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    // Without a boot time the process still counts as alive; only the reuse guard is lost.
    let since_boot = Duration::from_millis(ticks.saturating_mul(1000) / hz);
    Some(boot.map_or(UNIX_EPOCH, |b| {
        UNIX_EPOCH + Duration::from_secs(b) + since_boot
    }))
}

/// The last line a command wrote to its log after `from` (its length before the command ran).
fn log_tail(log: &Path, from: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(log).ok()?;
    let len = f.metadata().ok()?.len();
    let start = from.max(len.saturating_sub(1024));
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut buf = Vec::new();
    f.take(1024).read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let last = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(shorten(last.trim().to_string(), 200))
}

fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    shorten(text.lines().next().unwrap_or("").trim().to_string(), 200)
}

fn shorten(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_naming_a_process_started_after_it_was_written_is_stale() {
        let dir = std::env::temp_dir().join(format!("banyan-pidfile-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let pid_file = dir.join("me.pid");
        std::fs::write(&pid_file, format!("{}\n", std::process::id())).unwrap();
        let probe = pid_file_state(&pid_file);
        assert_eq!(probe.state, UnitState::Active, "{}", probe.detail);
        assert_eq!(probe.pid, Some(Pid::this()));

        // The same number in a file written an hour before this process started.
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&pid_file)
            .and_then(|f| f.set_modified(old))
            .unwrap();
        let probe = pid_file_state(&pid_file);
        assert_eq!(probe.state, UnitState::Inactive);
        assert!(probe.detail.contains("started after"), "{}", probe.detail);

        std::fs::write(&pid_file, "garbage").unwrap();
        assert_eq!(pid_file_state(&pid_file).state, UnitState::Unknown);
        std::fs::remove_file(&pid_file).unwrap();
        assert_eq!(pid_file_state(&pid_file).state, UnitState::Inactive);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        assert_eq!(shorten("ééé".into(), 3), "é...");
        assert_eq!(shorten("abc".into(), 3), "abc");
    }
}

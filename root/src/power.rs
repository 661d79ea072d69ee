//! Power actions carried out by the root: each target's BMC (Redfish or IPMI, from the `[[bmc]]`
//! sections of `root.toml`, [`crate::bmcconf`]) is asked or told, at most [`MAX_SESSIONS`] at a
//! time, and each target's result goes into the action's record as soon as it is known.
//!
//! The action path is the one every action takes (token, scope, audit before anything happens,
//! dry run by default, progress, cancel, outcome audited): `http_actions` checks and books the
//! action, then hands it here instead of sending an order down the tree, because the BMC network
//! is reached from the root. What a target does:
//!
//! - `check`: the BMC reached, the credentials accepted, the system found, and the resets it
//!   offers: what an operator runs after editing `root.toml`.
//! - `status`: the BMC's power state beside the agent's state in the tree, with a word when they
//!   disagree (BMC Off but the agent up: the BMC mapping is wrong; On but the agent lost: hung).
//! - `on`, `off`, `reset`, `cycle`: a node already in the asked state succeeds without a call;
//!   otherwise the reset is sent and the BMC polled until it reports the new state, the deadline
//!   passes or someone cancels. `off` is graceful first and forced when the grace time passes
//!   (at once with `force`); `cycle` is the BMC's power cycle where it offers one, else off then on.
//! - a dry run makes no BMC call at all: it says what would be done, through which BMC.
//!
//! A node whose `[[bmc]]` section names a `gateway` agent is driven the same way, each BMC call
//! made by that agent ([`crate::bmcgateway`]).

use crate::actions::{ActionRecord, ActionState};
use crate::audit::AuditEvent;
use crate::bmcconf::{BmcConfig, NoBmc};
use crate::bmcgateway::GatewayBmc;
use crate::daemon::lock;
use crate::http::Api;
use banyan_agent::bmc::{self, Bmc, BootDevice, PowerState, ResetKind};
use banyan_protocol::action::{NodeResult, PowerOp, PowerTask};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// BMC sessions open at once, per action.
pub const MAX_SESSIONS: usize = 32;
/// How often a BMC is asked for its state while a change is awaited.
const POLL_EVERY: Duration = Duration::from_secs(1);
/// How long a powered-off node's agent is given to be seen gone from the tree (its parent notices
/// the silence within 3 s).
const AGENT_LEAVES: Duration = Duration::from_secs(15);
const AGENT_POLL: Duration = Duration::from_millis(500);
/// Grace time of a shutdown when the caller gives none.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);
/// Time given, after the grace time, to a forced change to show.
pub const FORCED_WAIT: Duration = Duration::from_secs(60);

/// One action's work, handed over by `http_actions` once it is booked and audited.
pub struct PowerJob {
    pub id: String,
    pub task: PowerTask,
    pub for_real: bool,
    /// Who asked (named in the orders sent to BMC gateways).
    pub who: String,
    pub targets: Vec<String>,
    /// Each target's agent in the tree (`up`, `joining`, `lost`, `stale`).
    pub agents: HashMap<String, &'static str>,
    pub config: BmcConfig,
    /// When the whole action must be over.
    pub deadline: Instant,
}

/// How long a power action may run: the grace time and the forced change after it.
pub fn action_timeout(task: &PowerTask) -> Duration {
    match task.op {
        PowerOp::Status | PowerOp::Check => Duration::from_secs(30),
        _ => task
            .grace_ms
            .map_or(DEFAULT_GRACE, Duration::from_millis)
            .saturating_add(FORCED_WAIT),
    }
}

/// Carries the job out, then finishes the action and audits its outcome.
pub async fn run(api: Api, job: PowerJob) {
    let job = Arc::new(job);
    let sessions = Arc::new(Semaphore::new(MAX_SESSIONS));
    let mut tasks = JoinSet::new();
    for node in job.targets.clone() {
        let (api, job, sessions) = (api.clone(), job.clone(), sessions.clone());
        tasks.spawn(async move {
            let started = Instant::now();
            let result = one(&api, &job, &node, &sessions).await;
            let result = NodeResult {
                dry_run: !job.for_real && !reads_only(job.task.op),
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                ..result
            };
            lock(&api.root.actions).answer(&job.id, &node, Ok(result));
        });
    }
    while tasks.join_next().await.is_some() {}
    finish(&api, &job.id);
}

/// Ends an action the root carried out itself and audits its outcome.
pub(crate) fn finish(api: &Api, id: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let Some(r) = lock(&api.root.actions).finish(id, now) else {
        return;
    };
    let s = r.summary();
    info!(action = %r.id, kind = %r.kind, ok = s.ok, failed = s.failed, "action finished");
    if let Err(e) = crate::http_actions::audit(api, outcome_event(&r, now)) {
        warn!(action = %r.id, error = %e.detail(), "cannot audit an action's outcome");
    }
}

fn outcome_event(r: &ActionRecord, now: u64) -> AuditEvent {
    AuditEvent::new(now, r.who.clone(), r.peer.clone(), "action.outcome")
        .action(r.id.clone())
        .for_real(r.for_real)
        .outcome(r.outcome_json())
}

fn cancelled(api: &Api, id: &str) -> bool {
    lock(&api.root.actions)
        .get(id)
        .is_none_or(|r| r.cancel_requested || r.state != ActionState::Running)
}

/// One target, start to end.
/// A BMC session is held only while the BMC is talked to, not while the agent is awaited.
async fn one(api: &Api, job: &PowerJob, node: &str, sessions: &Semaphore) -> NodeResult {
    let agent = job.agents.get(node).copied().unwrap_or("unknown");
    let target = match job.config.resolve(node) {
        Ok(t) => t,
        Err(NoBmc { .. }) => {
            return NodeResult::refused(format!(
                "no BMC configured for {node}: add a [[bmc]] section whose nodes include it to {}",
                job.config.path().display()
            ))
        }
    };
    let via = match &target.gateway {
        Some(g) => format!(
            "{} at {} through the gateway {g}",
            target.endpoint.protocol,
            target.endpoint.address()
        ),
        None => format!(
            "{} at {}",
            target.endpoint.protocol,
            target.endpoint.address()
        ),
    };
    if let Some(g) = &target.gateway {
        // Checked now so that a dry run tells it too; each call checks again.
        let word = job.agents.get(g).copied().unwrap_or("not in the tree");
        if word != "up" {
            return NodeResult::refused(format!(
                "{node}: its BMC gateway, the agent {g}, is {word}: start that agent (or power this node from elsewhere)"
            ));
        }
    }
    if !job.for_real && !reads_only(job.task.op) {
        return NodeResult {
            ok: true,
            summary: format!("would {} through {via}", plan(&job.task)),
            ..NodeResult::default()
        };
    }
    let Ok(session) = sessions.acquire().await else {
        return NodeResult::refused("the root is stopping");
    };
    let bmc: Arc<dyn Bmc> = match GatewayBmc::new(api.clone(), &target, &job.who, job.for_real) {
        Some(through) => Arc::new(through),
        None => match bmc::connect(target.endpoint.clone()) {
            Ok(b) => b,
            Err(e) => return NodeResult::refused(e.to_string()),
        },
    };
    if job.task.op == PowerOp::Check {
        return match bmc.check().await {
            Ok(r) => {
                let resets: Vec<&str> = r.resets.iter().map(|k| k.as_str()).collect();
                NodeResult {
                    ok: true,
                    summary: format!(
                        "{via}: credentials accepted, system {}, power {}",
                        r.system, r.power
                    ),
                    stdout: format!("BMC reached, offers {}\n", resets.join(", ")),
                    ..NodeResult::default()
                }
            }
            Err(e) => NodeResult::refused(e.to_string()),
        };
    }
    let now = match bmc.power_state().await {
        Ok(s) => s,
        Err(e) => return NodeResult::refused(e.to_string()),
    };
    if job.task.op == PowerOp::Status {
        return status(&now, agent);
    }
    // The agent is about to leave with the node's power: as planned, not as a failure.
    let departs = matches!(job.task.op, PowerOp::Off | PowerOp::Reset | PowerOp::Cycle)
        && now != PowerState::Off;
    if departs {
        let left = job.deadline.saturating_duration_since(Instant::now()) + AGENT_LEAVES;
        let until = crate::http_actions::now_ms()
            .saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX));
        let why = format!(
            "power {} by {}, action {}",
            job.task.op.as_str(),
            job.who,
            job.id
        );
        lock(&api.root.departures).plan(node, why, until);
    }
    let changed = change(api, job, bmc.as_ref(), &now).await;
    drop(session);
    if departs && changed.is_err() {
        lock(&api.root.departures).cancel(node);
    }
    match changed {
        Ok(summary) => {
            // The tree's side of it: an agent leaves with its node's power, and comes back.
            let off = job.task.op == PowerOp::Off;
            let until = if off {
                (Instant::now() + AGENT_LEAVES).min(job.deadline)
            } else {
                job.deadline
            };
            let agent = agent_after(api, node, !off, until).await;
            let said = match (off, agent) {
                (true, "up") => "; the agent is still up: check this node's BMC address".into(),
                (true, a) => format!(", agent {a}"),
                (false, "up") => ", agent up".into(),
                (false, a) => format!("; the agent is not back in the tree yet ({a})"),
            };
            NodeResult {
                ok: true,
                summary: format!("{summary}{said}"),
                stdout: format!("BMC {}, agent {agent}\n", want_of(job.task.op)),
                ..NodeResult::default()
            }
        }
        Err(why) => NodeResult::refused(why),
    }
}

/// Waits until `node`'s agent is up in the tree (`up`) or is not (`!up`), or `until` passes;
/// its state then.
async fn agent_after(api: &Api, node: &str, up: bool, until: Instant) -> &'static str {
    loop {
        let word = match crate::http::snapshot_of(api).await {
            Ok(snap) => snap.word_of(node).unwrap_or("unknown"),
            Err(_) => "unknown",
        };
        if (word == "up") == up || Instant::now() + AGENT_POLL > until {
            return word;
        }
        tokio::time::sleep(AGENT_POLL).await;
    }
}

/// Operations that change nothing: carried out even without `for_real`.
pub fn reads_only(op: PowerOp) -> bool {
    matches!(op, PowerOp::Status | PowerOp::Check)
}

/// What the action would do, in words.
fn plan(task: &PowerTask) -> String {
    let grace = task.grace_ms.map_or(DEFAULT_GRACE, Duration::from_millis);
    let boot = task
        .boot
        .as_deref()
        .map(|b| format!(", next boot from {b}"))
        .unwrap_or_default();
    match (task.op, task.force) {
        (PowerOp::Status, _) => "read the power state".into(),
        (PowerOp::Check, _) => "check the BMC".into(),
        (PowerOp::On, _) => format!("power on{boot}"),
        (PowerOp::Off, true) => "cut the power (ForceOff)".into(),
        (PowerOp::Off, false) => format!(
            "shut down gracefully, cutting the power after {}s",
            grace.as_secs()
        ),
        (PowerOp::Reset, true) => format!("reset at once (ForceRestart){boot}"),
        (PowerOp::Reset, false) => format!("restart gracefully (GracefulRestart){boot}"),
        (PowerOp::Cycle, _) => format!("power cycle{boot}"),
    }
}

fn want_of(op: PowerOp) -> PowerState {
    match op {
        PowerOp::Off => PowerState::Off,
        _ => PowerState::On,
    }
}

/// The status line of a node, with a word where the BMC and the tree disagree.
fn status(state: &PowerState, agent: &str) -> NodeResult {
    let line = format!("BMC {state}, agent {agent}");
    let note = match (state, agent) {
        (PowerState::Off, "up") => {
            Some("the BMC says Off but the agent is up: check this node's BMC address")
        }
        (PowerState::On, "lost" | "stale") => {
            Some("the BMC says On but the agent is gone: the node may be hung")
        }
        _ => None,
    };
    NodeResult {
        ok: true,
        summary: match note {
            Some(n) => format!("{line} ({n})"),
            None => line.clone(),
        },
        stdout: format!("{line}\n"),
        ..NodeResult::default()
    }
}

/// Carries out an on, off, reset or cycle from the state `now`; the summary, or why it failed.
async fn change(
    api: &Api,
    job: &PowerJob,
    bmc: &dyn Bmc,
    now: &PowerState,
) -> Result<String, String> {
    let task = &job.task;
    let grace = task.grace_ms.map_or(DEFAULT_GRACE, Duration::from_millis);
    let boot = match task.boot.as_deref() {
        Some("pxe") => Some(BootDevice::Pxe),
        Some("disk") => Some(BootDevice::Disk),
        _ => None,
    };
    let wait = |want: PowerState, until: Instant| wait_for(api, &job.id, bmc, want, until);
    match task.op {
        PowerOp::Status | PowerOp::Check => Ok(now.to_string()),
        PowerOp::On | PowerOp::Off if *now == want_of(task.op) => Ok(format!("already {now}")),
        PowerOp::On => {
            if let Some(b) = boot {
                bmc.set_next_boot(b).await.map_err(|e| e.to_string())?;
            }
            bmc.reset(ResetKind::On).await.map_err(|e| e.to_string())?;
            wait(PowerState::On, job.deadline).await?;
            Ok("powered on".into())
        }
        PowerOp::Off if task.force => {
            bmc.reset(ResetKind::ForceOff)
                .await
                .map_err(|e| e.to_string())?;
            wait(PowerState::Off, job.deadline).await?;
            Ok("powered off (forced)".into())
        }
        PowerOp::Off => {
            bmc.reset(ResetKind::GracefulShutdown)
                .await
                .map_err(|e| e.to_string())?;
            let graceful_until = (Instant::now() + grace).min(job.deadline);
            match wait(PowerState::Off, graceful_until).await {
                Ok(()) => Ok("shut down gracefully".into()),
                Err(why) if why.contains("cancelled") => Err(why),
                Err(_) => {
                    bmc.reset(ResetKind::ForceOff)
                        .await
                        .map_err(|e| e.to_string())?;
                    wait(PowerState::Off, job.deadline).await?;
                    Ok(format!(
                        "powered off: forced after {}s of graceful shutdown",
                        grace.as_secs()
                    ))
                }
            }
        }
        PowerOp::Reset | PowerOp::Cycle => {
            if let Some(b) = boot {
                bmc.set_next_boot(b).await.map_err(|e| e.to_string())?;
            }
            if *now == PowerState::Off {
                bmc.reset(ResetKind::On).await.map_err(|e| e.to_string())?;
                wait(PowerState::On, job.deadline).await?;
                return Ok("was Off: powered on".into());
            }
            let kind = match (task.op, task.force) {
                (PowerOp::Reset, true) => ResetKind::ForceRestart,
                (PowerOp::Reset, false) => ResetKind::GracefulRestart,
                _ => ResetKind::PowerCycle,
            };
            match bmc.reset(kind).await {
                Ok(()) => {
                    wait(PowerState::On, job.deadline).await?;
                    Ok(format!("{} done", kind.as_str()))
                }
                Err(e) if kind == ResetKind::PowerCycle => {
                    // Not every BMC offers a cycle: off, then on.
                    tracing::debug!(error = %e, "no PowerCycle: off, then on");
                    bmc.reset(ResetKind::ForceOff)
                        .await
                        .map_err(|e| e.to_string())?;
                    wait(PowerState::Off, job.deadline).await?;
                    bmc.reset(ResetKind::On).await.map_err(|e| e.to_string())?;
                    wait(PowerState::On, job.deadline).await?;
                    Ok("power cycled (off, then on)".into())
                }
                Err(e) => Err(e.to_string()),
            }
        }
    }
}

/// Polls the BMC until it reports `want`; an error when `until` passes or the action is
/// cancelled first.
async fn wait_for(
    api: &Api,
    id: &str,
    bmc: &dyn Bmc,
    want: PowerState,
    until: Instant,
) -> Result<(), String> {
    let mut last: Option<String>;
    loop {
        match bmc.power_state().await {
            Ok(s) if s == want => return Ok(()),
            Ok(s) => last = Some(s.to_string()),
            // A BMC busy with the change may miss a read: the deadline decides.
            Err(e) => last = Some(e.to_string()),
        }
        if cancelled(api, id) {
            return Err(format!("cancelled while waiting for {want}"));
        }
        if Instant::now() + POLL_EVERY > until {
            return Err(format!(
                "the BMC did not report {want} in time (last: {})",
                last.unwrap_or_else(|| "nothing".into())
            ));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

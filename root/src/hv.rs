//! Hypervisor actions (`banyan hv`), carried out by the root: it talks to OpenStack
//! ([`crate::openstack`]) and orders each node's OpenStack daemons through the tree (sealed
//! `service` orders, answered by the node's agent), every node in parallel, each node's result
//! recorded as soon as it is known. What each operation does, per node:
//!
//! - `status`: Nova's compute service for the node's host (enabled? up? why disabled) beside
//!   the node's agent in the tree and its daemons' state (one `service status` order to every
//!   target); with `nvms`, its servers. Alive = Nova says up *and* the daemons run.
//! - `vms`: the node's servers with their state; `cleanup_errors` deletes those in ERROR.
//! - `enable`: start the daemons, wait until Nova reports the compute service up, enable it.
//! - `disable`: the sequence of the HLT's `openstack-hlt-manage`: disable the service (the
//!   reason names the operator and the time), make sure the daemons run (deleting servers needs
//!   nova-compute), delete every server on the host, wait up to the VM timeout for them to go
//!   (progress lines while waiting), then stop the daemons; servers left at the timeout fail the
//!   node unless `force_shutoff`, which stops the daemons anyway.
//! - `runvms`: boot servers on the targets whose service is enabled and up: `count` spread
//!   over them within their free capacity, or `fill` it (Placement's inventories and usages).
//!
//! A dry run reads (Nova's GETs, the daemons' state) and says what it would do; it makes no
//! mutating OpenStack call and starts or stops nothing. One node's failure never stops another.
//! Nova's compute services are read by one shared poller, so a hundred nodes waiting for their
//! service to come up make one `os-services` call a second, not a hundred.

use crate::daemon::lock;
use crate::http::Api;
use crate::http_actions::DELIVERY_WINDOW_MS;
use crate::openstack::client::{Cloud, OsError, OsErrorKind};
use crate::openstack::nova::{self, ComputeService, Flavor, Server};
use crate::openstack::OpenStackConfig;
use banyan_protocol::action::{
    HvOp, HvTask, NodeResult, Order, ServiceOp, ServiceTask, Task, UnitState,
};
use banyan_protocol::nodeset::NodeSet;
use banyan_protocol::seal::Purpose;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How long `disable` gives servers to go by default.
pub const DEFAULT_VM_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a started or stopped daemon is given (the agent's own deadline for the order).
const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);
/// Time for an order to reach a node and its answer to come back, beyond its own timeout.
const TREE_MARGIN: Duration = Duration::from_secs(5);
/// How often Nova is asked while something is awaited.
const POLL: Duration = Duration::from_secs(1);
/// How long booted servers are given to become ACTIVE (or ERROR).
const BOOT_WAIT: Duration = Duration::from_secs(300);

/// One action's work, handed over by `http_actions` once it is booked and audited.
pub struct HvJob {
    pub id: String,
    pub task: HvTask,
    pub for_real: bool,
    pub who: String,
    pub targets: Vec<String>,
    /// Each target's agent in the tree (`up`, `joining`, `lost`, `stale`, `off`).
    pub agents: HashMap<String, &'static str>,
    pub config: OpenStackConfig,
    pub cloud: Arc<Cloud>,
}

/// How long an hv action may run.
pub fn action_timeout(task: &HvTask, config: &OpenStackConfig) -> Duration {
    let calls = config.timeout * 4;
    match task.op {
        HvOp::Status | HvOp::Vms => calls + DAEMON_TIMEOUT,
        HvOp::Enable => config.up_timeout + calls + DAEMON_TIMEOUT,
        HvOp::Disable => {
            task.vm_timeout_ms
                .map_or(DEFAULT_VM_TIMEOUT, Duration::from_millis)
                + calls
                + DAEMON_TIMEOUT * 2
        }
        HvOp::Runvms => BOOT_WAIT + calls,
    }
}

/// One row of `hv status`, as the CLI and the web UI show it (the `stdout` of a node's result,
/// one JSON line).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StatusRow {
    pub hypervisor: String,
    /// Nova's compute service: enabled (runs VMs), up, why disabled. `None`: unknown to Nova.
    pub runs_vms: Option<bool>,
    pub nova_state: Option<String>,
    pub disabled_reason: Option<String>,
    /// Nova says up and the daemons run.
    pub alive: bool,
    /// The node's agent in the tree.
    pub agent: String,
    /// `running`, `stopped`, `failed`, or why it is not known.
    pub daemons: String,
    /// With `nvms`: the servers on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servers: Option<Vec<Server>>,
}

/// Carries the job out, then finishes the action and audits its outcome.
pub async fn run(api: Api, job: HvJob) {
    let calls_before = job.cloud.calls();
    let job = Arc::new(job);
    match job.task.op {
        HvOp::Status | HvOp::Vms => status(&api, &job).await,
        HvOp::Runvms => runvms(&api, &job).await,
        HvOp::Enable | HvOp::Disable => {
            let poller = Arc::new(Poller::new(job.cloud.clone()));
            let mut tasks = JoinSet::new();
            for node in job.targets.clone() {
                let (api, job, poller) = (api.clone(), job.clone(), poller.clone());
                tasks.spawn(async move {
                    let started = Instant::now();
                    let mut log = Log::new(&api, &job.id, &node);
                    let outcome = if job.task.op == HvOp::Enable {
                        enable(&api, &job, &node, &poller, &mut log).await
                    } else {
                        disable(&api, &job, &node, &poller, &mut log).await
                    };
                    answer(&api, &job, &node, outcome, log, started);
                });
            }
            while tasks.join_next().await.is_some() {}
        }
    }
    tracing::info!(
        action = %job.id,
        op = job.task.op.as_str(),
        openstack_calls = job.cloud.calls() - calls_before,
        "hv action done"
    );
    crate::power::finish(&api, &job.id);
}

/// A node's lines (`[ OK ] Enabling hypervisor cn43`), shown live and kept for its result.
struct Log {
    api: Api,
    id: String,
    node: String,
    lines: Vec<String>,
}

impl Log {
    fn new(api: &Api, id: &str, node: &str) -> Log {
        Log {
            api: api.clone(),
            id: id.to_string(),
            node: node.to_string(),
            lines: Vec::new(),
        }
    }

    fn line(&mut self, line: String) {
        lock(&self.api.root.actions).progress(&self.id, &self.node, &line);
        self.lines.push(line);
    }

    fn ok(&mut self, what: String) {
        self.line(format!("[ OK ] {what}"));
    }

    fn fail(&mut self, what: String) {
        self.line(format!("[FAIL] {what}"));
    }
}

/// How a node's sequence ended: ok or not, and the one line for humans.
type Outcome = Result<String, String>;

fn answer(api: &Api, job: &HvJob, node: &str, outcome: Outcome, log: Log, started: Instant) {
    let (ok, summary) = match outcome {
        Ok(s) => (true, s),
        Err(s) => (false, s),
    };
    let mut stdout = log.lines.join("\n");
    if !stdout.is_empty() {
        stdout.push('\n');
    }
    let result = NodeResult {
        ok,
        dry_run: !job.for_real && !job.task.op.reads_only(),
        summary,
        stdout,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        ..NodeResult::default()
    };
    lock(&api.root.actions).answer(&job.id, node, Ok(result));
}

/// Runs a blocking OpenStack call on tokio's blocking pool.
async fn os<T: Send + 'static>(
    cloud: &Arc<Cloud>,
    f: impl FnOnce(&Cloud) -> Result<T, OsError> + Send + 'static,
) -> Result<T, OsError> {
    let c = cloud.clone();
    tokio::task::spawn_blocking(move || f(&c))
        .await
        .unwrap_or_else(|e| {
            Err(OsError::new(
                OsErrorKind::Setup,
                format!("the OpenStack call's task failed: {e}"),
            ))
        })
}

/// One reading of Nova's compute services, and when it was made.
type Reading = (Instant, Result<Arc<Vec<ComputeService>>, OsError>);

/// Nova's compute services, read at most once per [`POLL`] whoever asks.
struct Poller {
    cloud: Arc<Cloud>,
    last: tokio::sync::Mutex<Option<Reading>>,
}

impl Poller {
    fn new(cloud: Arc<Cloud>) -> Poller {
        Poller {
            cloud,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The services as read no longer than `max_age` ago.
    async fn services(&self, max_age: Duration) -> Result<Arc<Vec<ComputeService>>, OsError> {
        let mut last = self.last.lock().await;
        if let Some((at, r)) = last.as_ref() {
            if at.elapsed() <= max_age {
                return r.clone();
            }
        }
        let r = os(&self.cloud, nova::compute_services).await.map(Arc::new);
        *last = Some((Instant::now(), r.clone()));
        r
    }

    /// The service of `host`, freshly read (within a poll).
    async fn service(&self, host: &str) -> Result<Option<ComputeService>, OsError> {
        Ok(self
            .services(POLL)
            .await?
            .iter()
            .find(|s| s.host == host)
            .cloned())
    }
}

/// Why a node's host is not among Nova's compute services.
fn unknown_host(job: &HvJob, node: &str, host: &str, services: &[ComputeService]) -> String {
    let mut hosts: Vec<&str> = services.iter().map(|s| s.host.as_str()).collect();
    hosts.sort_unstable();
    let shown = if hosts.len() > 8 {
        format!("{} and {} more", hosts[..8].join(", "), hosts.len() - 8)
    } else if hosts.is_empty() {
        "none".to_string()
    } else {
        hosts.join(", ")
    };
    format!(
        "Nova has no nova-compute service on host {host:?} (node {node}); its compute hosts: {shown}. Map node names to hypervisor hosts with domain or [openstack.hosts] in {}",
        job.config.path.display()
    )
}

/// Sends one `service` order for the node's daemons to `nodes` and gathers each node's result.
/// Nodes whose agent is not up are answered at once with that reason.
async fn daemons(
    api: &Api,
    job: &HvJob,
    nodes: &[String],
    op: ServiceOp,
) -> HashMap<String, Result<NodeResult, String>> {
    let mut out = HashMap::new();
    let mut reach = Vec::new();
    for n in nodes {
        match job.agents.get(n).copied().unwrap_or("not in the tree") {
            "up" => reach.push(n.clone()),
            word => {
                out.insert(n.clone(), Err(format!("its agent is {word}")));
            }
        }
    }
    if reach.is_empty() {
        return out;
    }
    let now = crate::http_actions::now_ms();
    let id = format!("{:016x}", rand::random::<u64>());
    let timeout_ms = u64::try_from(DAEMON_TIMEOUT.as_millis()).unwrap_or(u64::MAX);
    let order = Order {
        id: id.clone(),
        issued_ms: now,
        expires_ms: now + DELIVERY_WINDOW_MS,
        timeout_ms,
        for_real: job.for_real || op == ServiceOp::Status,
        who: job.who.clone(),
        targets: NodeSet::from_names(reach.iter().map(String::as_str)).fold(),
        task: Task::Service(ServiceTask {
            op,
            units: job.config.daemons.clone(),
        }),
    };
    let sealed = match api.signer.seal(Purpose::Order, &order) {
        Ok(s) => s,
        Err(e) => {
            for n in reach {
                out.insert(n, Err(format!("cannot sign the daemons' order: {e}")));
            }
            return out;
        }
    };
    let waits: Vec<_> = {
        let mut book = lock(&api.root.actions);
        reach
            .iter()
            .map(|n| (n.clone(), book.expect(&id, n)))
            .collect()
    };
    let wait = DAEMON_TIMEOUT + TREE_MARGIN;
    let deadline_ms = now + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
    if !api
        .root
        .start_action(id, reach.clone(), sealed, deadline_ms)
    {
        for n in reach {
            out.insert(n, Err("the root is stopping".into()));
        }
        return out;
    }
    for (n, rx) in waits {
        let r = match tokio::time::timeout(wait + Duration::from_secs(1), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) | Err(_) => Err(format!(
                "its agent did not answer within {}s",
                wait.as_secs()
            )),
        };
        out.insert(n, r);
    }
    out
}

/// The daemons' state in one word, from a `service` result.
fn daemons_word(r: &Result<NodeResult, String>) -> String {
    match r {
        Err(e) => format!("unknown ({e})"),
        Ok(res) if res.units.is_empty() => format!("unknown ({})", res.summary),
        Ok(res) => {
            let active = res
                .units
                .iter()
                .filter(|u| u.state == UnitState::Active)
                .count();
            if active == res.units.len() {
                "running".into()
            } else if res.units.iter().any(|u| u.state == UnitState::Failed) {
                "failed".into()
            } else if res.units.iter().any(|u| u.state == UnitState::Unknown) {
                format!("unknown ({})", res.summary)
            } else if active == 0 {
                "stopped".into()
            } else {
                format!("{active} of {} running", res.units.len())
            }
        }
    }
}

/// One daemons order for one node, as a line of its log; the error when it did not reach
/// what was asked.
async fn daemons_step(
    api: &Api,
    job: &HvJob,
    node: &str,
    op: ServiceOp,
    log: &mut Log,
) -> Result<(), String> {
    let units = job.config.daemons.join(", ");
    let r = daemons(api, job, &[node.to_string()], op)
        .await
        .remove(node)
        .unwrap_or_else(|| Err("no answer".into()));
    let verb = match op {
        ServiceOp::Start => "Starting",
        ServiceOp::Stop => "Stopping",
        _ => "Checking",
    };
    match r {
        Ok(res) if res.ok && res.dry_run => {
            let would: Vec<String> = res.units.iter().map(|u| u.detail.clone()).collect();
            log.line(format!(
                "[DRY ] {verb} OpenStack daemons on {node}: {}",
                would.join("; ")
            ));
            Ok(())
        }
        Ok(res) if res.ok => {
            log.ok(format!("{verb} OpenStack daemons on {node}"));
            Ok(())
        }
        Ok(res) => {
            let why = format!(
                "{verb} OpenStack daemons ({units}) on {node} failed: {}",
                res.summary
            );
            log.fail(why.clone());
            Err(why)
        }
        Err(e) => {
            let why = format!("{verb} OpenStack daemons ({units}) on {node} failed: {e}");
            log.fail(why.clone());
            Err(why)
        }
    }
}

// ----- status and vms

async fn status(api: &Api, job: &Arc<HvJob>) {
    let started = Instant::now();
    let cloud = &job.cloud;
    let services = os(cloud, nova::compute_services).await;
    let want_servers = job.task.nvms || job.task.op == HvOp::Vms;
    let servers = if want_servers {
        Some(os(cloud, |c| nova::servers(c, None)).await)
    } else {
        None
    };
    let services = match services {
        Ok(s) => s,
        Err(e) => return fail_all(api, job, &e.detail, started),
    };
    let mut by_host: HashMap<String, Vec<Server>> = HashMap::new();
    if let Some(s) = servers {
        match s {
            Ok(list) => {
                for s in list {
                    by_host.entry(s.host.clone()).or_default().push(s);
                }
            }
            Err(e) => return fail_all(api, job, &e.detail, started),
        }
    }
    let states = if job.task.op == HvOp::Status {
        daemons(api, job, &job.targets, ServiceOp::Status).await
    } else {
        HashMap::new()
    };
    for node in &job.targets {
        let host = job.config.host_of(node);
        let service = services.iter().find(|s| s.host == host);
        let mut servers = by_host.remove(&host).unwrap_or_default();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        let result = if job.task.op == HvOp::Vms {
            vms_result(job, node, &host, service, servers, &services).await
        } else {
            let daemons = states
                .get(node)
                .map_or_else(|| "unknown".to_string(), daemons_word);
            status_result(job, node, &host, service, servers, daemons, &services)
        };
        let result = NodeResult {
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            ..result
        };
        lock(&api.root.actions).answer(&job.id, node, Ok(result));
    }
}

fn fail_all(api: &Api, job: &HvJob, why: &str, started: Instant) {
    let mut book = lock(&api.root.actions);
    for node in &job.targets {
        book.answer(
            &job.id,
            node,
            Ok(NodeResult {
                duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                ..NodeResult::refused(why)
            }),
        );
    }
}

fn status_result(
    job: &HvJob,
    node: &str,
    host: &str,
    service: Option<&ComputeService>,
    servers: Vec<Server>,
    daemons: String,
    all: &[ComputeService],
) -> NodeResult {
    let agent = job
        .agents
        .get(node)
        .copied()
        .unwrap_or("unknown")
        .to_string();
    let row = StatusRow {
        hypervisor: host.to_string(),
        runs_vms: service.map(ComputeService::enabled),
        nova_state: service.map(|s| s.state.clone()),
        disabled_reason: service.and_then(|s| s.disabled_reason.clone()),
        alive: service.is_some_and(ComputeService::up) && daemons == "running",
        agent,
        daemons,
        servers: job.task.nvms.then_some(servers),
    };
    let stdout = serde_json::to_string(&row).unwrap_or_default() + "\n";
    let Some(s) = service else {
        return NodeResult {
            stdout,
            ..NodeResult::refused(unknown_host(job, node, host, all))
        };
    };
    let mut summary = format!(
        "{}, {}, daemons {}, agent {}",
        s.status, s.state, row.daemons, row.agent
    );
    if let Some(list) = &row.servers {
        summary.push_str(&format!(", {} VMs", list.len()));
    }
    if let Some(r) = &row.disabled_reason {
        summary.push_str(&format!(" (disabled: {r})"));
    }
    NodeResult {
        ok: true,
        summary,
        stdout,
        ..NodeResult::default()
    }
}

async fn vms_result(
    job: &HvJob,
    node: &str,
    host: &str,
    service: Option<&ComputeService>,
    servers: Vec<Server>,
    all: &[ComputeService],
) -> NodeResult {
    let stdout = serde_json::to_string(&servers).unwrap_or_default() + "\n";
    if service.is_none() {
        return NodeResult {
            stdout,
            ..NodeResult::refused(unknown_host(job, node, host, all))
        };
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &servers {
        *counts.entry(s.status.as_str()).or_default() += 1;
    }
    let mut summary = format!(
        "{} server{}",
        servers.len(),
        if servers.len() == 1 { "" } else { "s" }
    );
    if !counts.is_empty() {
        let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
        summary.push_str(&format!(": {}", parts.join(", ")));
    }
    let mut ok = true;
    if job.task.cleanup_errors {
        let errors: Vec<&Server> = servers.iter().filter(|s| s.status == "ERROR").collect();
        if !errors.is_empty() {
            if job.for_real {
                let (deleted, failed) = delete_all(&job.cloud, &errors).await;
                summary.push_str(&format!("; {deleted} in ERROR deleted"));
                if !failed.is_empty() {
                    ok = false;
                    summary.push_str(&format!("; not deleted: {}", failed.join("; ")));
                }
            } else {
                summary.push_str(&format!("; would delete {} in ERROR", errors.len()));
            }
        }
    }
    NodeResult {
        ok,
        summary,
        stdout,
        dry_run: job.task.cleanup_errors && !job.for_real,
        ..NodeResult::default()
    }
}

/// Deletes servers; how many were deleted and why the others were not.
async fn delete_all(cloud: &Arc<Cloud>, servers: &[&Server]) -> (usize, Vec<String>) {
    let mut deleted = 0;
    let mut failed = Vec::new();
    for s in servers {
        let id = s.id.clone();
        match os(cloud, move |c| nova::delete_server(c, &id)).await {
            Ok(()) => deleted += 1,
            Err(e) => failed.push(format!("{} ({}): {}", s.name, s.id, e.detail)),
        }
    }
    (deleted, failed)
}

fn describe(servers: &[Server]) -> String {
    let shown: Vec<String> = servers
        .iter()
        .take(10)
        .map(|s| format!("{} ({}, {})", s.name, s.id, s.status))
        .collect();
    let more = servers.len().saturating_sub(10);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

// ----- enable

async fn enable(api: &Api, job: &HvJob, node: &str, poller: &Poller, log: &mut Log) -> Outcome {
    let host = job.config.host_of(node);
    let before = poller.service(&host).await.map_err(|e| e.detail)?;
    daemons_step(api, job, node, ServiceOp::Start, log).await?;
    if !job.for_real {
        let now = match &before {
            Some(s) => format!("now {}, {}", s.status, s.state),
            None => "not yet known to Nova".to_string(),
        };
        return Ok(format!(
            "would start the daemons, wait for Nova to see {host} up, and enable it ({now})"
        ));
    }
    let until = Instant::now() + job.config.up_timeout;
    let service = loop {
        match poller.service(&host).await {
            Ok(Some(s)) if s.up() => break s,
            Ok(seen) => {
                if Instant::now() >= until {
                    let said = seen.map_or_else(
                        || "no nova-compute service of that host".to_string(),
                        |s| format!("it says {}", s.state),
                    );
                    let why = format!(
                        "Nova did not see nova-compute on {host} up within {}s ({said}): see the daemon's log on {node} (the agent's state dir, services/)",
                        job.config.up_timeout.as_secs()
                    );
                    log.fail(why.clone());
                    return Err(why);
                }
            }
            Err(e) if Instant::now() >= until => return Err(e.detail),
            Err(_) => {}
        }
        tokio::time::sleep(POLL).await;
    };
    if service.enabled() {
        log.ok(format!("Hypervisor {node} was already enabled"));
        return Ok(format!("enabled and up ({host})"));
    }
    let id = service.id.clone();
    match os(&job.cloud, move |c| nova::set_service(c, &id, true, None)).await {
        Ok(_) => {
            log.ok(format!("Enabling hypervisor {node}"));
            Ok(format!("enabled and up ({host})"))
        }
        Err(e) => {
            log.fail(format!("Enabling hypervisor {node}: {}", e.detail));
            Err(e.detail)
        }
    }
}

// ----- disable

/// The reason a disabled service carries: who and when, as the HLT's operators write it.
fn reason(who: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("disabled by {who} with banyan at {} UTC", utc(secs))
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time.
fn utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date of a day count (the proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn disable(api: &Api, job: &HvJob, node: &str, poller: &Poller, log: &mut Log) -> Outcome {
    let host = job.config.host_of(node);
    let services = poller.services(POLL).await.map_err(|e| e.detail)?;
    let Some(service) = services.iter().find(|s| s.host == host).cloned() else {
        return Err(unknown_host(job, node, &host, &services));
    };
    let vm_timeout = job
        .task
        .vm_timeout_ms
        .map_or(DEFAULT_VM_TIMEOUT, Duration::from_millis);
    // 1. Disable: no new server is scheduled there from now on.
    if !service.enabled() {
        log.ok(format!("Hypervisor {node} was already disabled"));
    } else if job.for_real {
        let (id, why) = (service.id.clone(), reason(&job.who));
        match os(&job.cloud, move |c| {
            nova::set_service(c, &id, false, Some(&why))
        })
        .await
        {
            Ok(_) => log.ok(format!("Disabling hypervisor {node}")),
            Err(e) => {
                log.fail(format!("Disabling hypervisor {node}: {}", e.detail));
                return Err(e.detail);
            }
        }
    } else {
        log.line(format!("[DRY ] Disabling hypervisor {node}"));
    }
    // 2. The daemons must run for Nova to delete the servers.
    daemons_step(api, job, node, ServiceOp::Start, log).await?;
    // 3. Delete every server on the host.
    let h = host.clone();
    let servers = os(&job.cloud, move |c| nova::servers(c, Some(&h)))
        .await
        .map_err(|e| e.detail)?;
    if !job.for_real {
        let what = if servers.is_empty() {
            "no server to delete".to_string()
        } else {
            format!(
                "would delete {} server(s): {}",
                servers.len(),
                describe(&servers)
            )
        };
        log.line(format!("[DRY ] {what}"));
        daemons_step(api, job, node, ServiceOp::Stop, log).await?;
        return Ok(format!(
            "would disable {host}, delete {} server(s), stop the daemons",
            servers.len()
        ));
    }
    let total = servers.len();
    if total > 0 {
        let refs: Vec<&Server> = servers.iter().collect();
        let (_, failed) = delete_all(&job.cloud, &refs).await;
        for f in &failed {
            log.fail(format!("Deleting {f}"));
        }
        log.ok(format!("Deleting {total} server(s) on {node}"));
    }
    // 4. Wait for them to go: Nova asked after each poll, the timeout checked after each.
    let until = Instant::now() + vm_timeout;
    let mut left = servers;
    let mut last_said = Instant::now();
    while !left.is_empty() {
        let now = Instant::now();
        if now >= until {
            break;
        }
        tokio::time::sleep(POLL.min(until - now)).await;
        let h = host.clone();
        match os(&job.cloud, move |c| nova::servers(c, Some(&h))).await {
            Ok(now) => left = now,
            Err(e) => log.line(format!("[WARN] cannot list the servers: {}", e.detail)),
        }
        if !left.is_empty() && last_said.elapsed() >= Duration::from_secs(5) {
            last_said = Instant::now();
            log.line(format!(
                "{} running ({} s left)",
                left.len(),
                until.saturating_duration_since(Instant::now()).as_secs()
            ));
        }
    }
    // 5. Stop the daemons, unless servers remain and nobody said to stop them anyway.
    if !left.is_empty() {
        let named = describe(&left);
        if !job.task.force_shutoff {
            let why = format!(
                "{} server(s) remain on {host} after {}s: {named}; the daemons were left running: run disable again later, or add --force-shutoff",
                left.len(),
                vm_timeout.as_secs()
            );
            log.fail(why.clone());
            return Err(why);
        }
        log.line(format!(
            "[WARN] {} server(s) remain on {host}: {named}; stopping the daemons anyway (--force-shutoff)",
            left.len()
        ));
        daemons_step(api, job, node, ServiceOp::Stop, log).await?;
        return Ok(format!(
            "disabled; {} server(s) remained ({named}) and the daemons were stopped anyway",
            left.len()
        ));
    }
    daemons_step(api, job, node, ServiceOp::Stop, log).await?;
    Ok(format!(
        "disabled, {total} server(s) deleted, daemons stopped"
    ))
}

// ----- runvms

async fn runvms(api: &Api, job: &Arc<HvJob>) {
    let started = Instant::now();
    let Some(boot) = job.task.boot.clone() else {
        return fail_all(api, job, "runvms needs what to boot", started);
    };
    let cloud = &job.cloud;
    let (f, i) = (boot.flavor.clone(), boot.image.clone());
    let prepared = async {
        let services = os(cloud, nova::compute_services).await?;
        let flavor = os(cloud, move |c| nova::flavor(c, &f)).await?;
        let image = os(cloud, move |c| nova::image_id(c, &i)).await?;
        let providers = os(cloud, nova::providers).await?;
        Ok::<_, OsError>((services, flavor, image, providers))
    }
    .await;
    let (services, flavor, image, providers) = match prepared {
        Ok(p) => p,
        Err(e) => return fail_all(api, job, &e.detail, started),
    };
    // Each target's room, and whether it may take servers at all.
    let mut room: Vec<(String, String, Result<u64, String>)> = Vec::new();
    for node in &job.targets {
        let host = job.config.host_of(node);
        let slots = match services.iter().find(|s| s.host == host) {
            None => Err(unknown_host(job, node, &host, &services)),
            Some(s) if !s.enabled() => Err(format!("{host} is disabled: nothing booted there")),
            // Enabled but down is not meant: the operator should hear it, not a quiet skip.
            Some(s) if !s.up() => Err(format!(
                "{host} is enabled but Nova says its compute service is down: nothing booted there (see `banyan hv status {node}`)"
            )),
            Some(_) => match providers.get(&host) {
                None => Err(format!("Placement has no resource provider named {host}")),
                Some(uuid) => {
                    let (u, fl) = (uuid.clone(), flavor.clone());
                    os(cloud, move |c| nova::free_slots(c, &u, &fl))
                        .await
                        .map_err(|e| e.detail)
                }
            },
        };
        room.push((node.clone(), host, slots));
    }
    let plan = spread(boot.count, &room);
    let mut tasks = JoinSet::new();
    for ((node, host, slots), n) in room.into_iter().zip(plan) {
        let (api, job, flavor, image) = (api.clone(), job.clone(), flavor.clone(), image.clone());
        tasks.spawn(async move {
            let mut log = Log::new(&api, &job.id, &node);
            let outcome = match slots {
                // A disabled host is not a failure: it is not meant to take servers.
                Err(why) if why.ends_with("is disabled: nothing booted there") => Ok(why),
                Err(why) => Err(why),
                Ok(free) => boot_on(&job, &host, free, n, &flavor, &image, &mut log).await,
            };
            answer(&api, &job, &node, outcome, log, started);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// How many servers each target boots: all its free room with `fill` (count `None`), else
/// `count` spread one at a time over the targets with room left, in turn.
fn spread(count: Option<u64>, room: &[(String, String, Result<u64, String>)]) -> Vec<u64> {
    let free: Vec<u64> = room
        .iter()
        .map(|(_, _, r)| {
            r.as_ref()
                .map_or(0, |f| (*f).min(banyan_protocol::action::MAX_BOOT_PER_HOST))
        })
        .collect();
    let Some(mut want) = count else {
        return free;
    };
    let mut plan = vec![0u64; free.len()];
    while want > 0 {
        let mut placed = false;
        for (i, f) in free.iter().enumerate() {
            if want == 0 {
                break;
            }
            if plan[i] < *f {
                plan[i] += 1;
                want -= 1;
                placed = true;
            }
        }
        if !placed {
            break;
        }
    }
    plan
}

async fn boot_on(
    job: &HvJob,
    host: &str,
    free: u64,
    n: u64,
    flavor: &Flavor,
    image: &str,
    log: &mut Log,
) -> Outcome {
    let Some(boot) = job.task.boot.as_ref() else {
        return Err("nothing to boot".into());
    };
    if n == 0 {
        return Ok(format!("no server booted (room for {free})"));
    }
    let name = format!("{}-{host}", boot.name);
    if !job.for_real {
        return Ok(format!(
            "would boot {n} server(s) of flavor {} named {name}* (room for {free})",
            flavor.name
        ));
    }
    let (fid, img, h, nm) = (
        flavor.id.clone(),
        image.to_string(),
        host.to_string(),
        name.clone(),
    );
    let (key, ud) = (boot.key.clone(), boot.user_data.clone());
    let booted = os(&job.cloud, move |c| {
        nova::boot(
            c,
            &nova::Boot {
                name: &nm,
                flavor: &fid,
                image: &img,
                host: &h,
                count: n,
                key_name: key.as_deref(),
                user_data: ud.as_deref(),
            },
        )
    })
    .await;
    if let Err(e) = &booted {
        log.fail(format!("Booting {n} server(s) on {host}: {}", e.detail));
        return Err(e.detail.clone());
    }
    log.ok(format!("Booting {n} server(s) on {host}"));
    // Wait until each is ACTIVE or in ERROR: the servers of that one request, wherever
    // they ended up (one that could not be scheduled has no host).
    let Ok(reservation) = booted else {
        return Err("nothing booted".into());
    };
    let until = Instant::now() + BOOT_WAIT;
    let (mut active, mut errors, mut seen) = (Vec::new(), Vec::new(), 0);
    loop {
        tokio::time::sleep(POLL).await;
        let r = reservation.clone();
        let ours = match os(&job.cloud, move |c| {
            nova::servers_where(c, "reservation_id", &r)
        })
        .await
        {
            Ok(a) => a,
            Err(e) => {
                log.line(format!("[WARN] cannot list the servers: {}", e.detail));
                if Instant::now() >= until {
                    break;
                }
                continue;
            }
        };
        seen = ours.len();
        active = ours
            .iter()
            .filter(|s| s.status == "ACTIVE")
            .cloned()
            .collect::<Vec<_>>();
        errors = ours
            .iter()
            .filter(|s| s.status == "ERROR")
            .cloned()
            .collect::<Vec<_>>();
        if (active.len() + errors.len()) as u64 >= n || Instant::now() >= until {
            break;
        }
    }
    let mut summary = format!("{} of {n} ACTIVE", active.len());
    if !errors.is_empty() {
        let faults: Vec<String> = errors
            .iter()
            .map(|s| {
                format!(
                    "{}: {}",
                    s.name,
                    s.fault.as_deref().unwrap_or("no fault given")
                )
            })
            .collect();
        summary.push_str(&format!(
            ", {} in ERROR ({})",
            errors.len(),
            faults.join("; ")
        ));
        if job.task.cleanup_errors {
            let refs: Vec<&Server> = errors.iter().collect();
            let (deleted, _) = delete_all(&job.cloud, &refs).await;
            summary.push_str(&format!("; {deleted} deleted"));
        }
    }
    let waiting = seen.saturating_sub(active.len() + errors.len());
    if waiting > 0 {
        summary.push_str(&format!(
            ", {waiting} still building after {}s",
            BOOT_WAIT.as_secs()
        ));
    }
    if active.len() as u64 == n {
        Ok(summary)
    } else {
        Err(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(frees: &[Result<u64, &str>]) -> Vec<(String, String, Result<u64, String>)> {
        frees
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("n{i}"), format!("h{i}"), f.map_err(str::to_string)))
            .collect()
    }

    #[test]
    fn fill_takes_every_free_slot_and_count_spreads_in_turn() {
        let r = room(&[Ok(3), Err("disabled"), Ok(1), Ok(0)]);
        assert_eq!(spread(None, &r), vec![3, 0, 1, 0]);
        assert_eq!(spread(Some(3), &r), vec![2, 0, 1, 0]);
        assert_eq!(spread(Some(1), &r), vec![1, 0, 0, 0]);
        // More than there is room for: as many as fit.
        assert_eq!(spread(Some(10), &r), vec![3, 0, 1, 0]);
    }

    #[test]
    fn disable_reasons_carry_a_readable_utc_time() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_796_285_405), "2026-12-03 08:10:05");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert!(reason("alice").starts_with("disabled by alice with banyan at 20"));
    }

    #[test]
    fn daemon_states_read_as_one_word() {
        use banyan_protocol::action::UnitStatus;
        let r = |states: &[UnitState]| {
            Ok(NodeResult {
                ok: true,
                units: states
                    .iter()
                    .map(|s| UnitStatus {
                        unit: "u".into(),
                        state: *s,
                        detail: String::new(),
                    })
                    .collect(),
                ..NodeResult::default()
            })
        };
        assert_eq!(
            daemons_word(&r(&[UnitState::Active, UnitState::Active])),
            "running"
        );
        assert_eq!(daemons_word(&r(&[UnitState::Inactive])), "stopped");
        assert_eq!(
            daemons_word(&r(&[UnitState::Active, UnitState::Failed])),
            "failed"
        );
        assert_eq!(
            daemons_word(&r(&[UnitState::Active, UnitState::Inactive])),
            "1 of 2 running"
        );
        assert_eq!(
            daemons_word(&Err("its agent is lost".into())),
            "unknown (its agent is lost)"
        );
    }
}

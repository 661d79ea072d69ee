//! A whole banyan cluster on test hosts, for integration tests and benchmarks.
//!
//! [`Cluster::start`] makes a [`Testnet`] of `n` hosts, starts `banyan-root` in the machine's own
//! namespace (on the bridge address, which every host reaches) and one `banyan-agent` per host, each
//! with its own state dir and metrics file under a fresh temporary directory. The methods then act on
//! the cluster the way an operator or a failure would (kill, restart or freeze an agent, cut a host
//! off, cut two hosts from each other, stop the root) and read it back through the root's HTTP API
//! ([`Cluster::topology`], [`Cluster::wait_for`], [`Cluster::counter_total`], [`Cluster::ping`]).
//! Dropping the cluster stops every process by PID and removes the namespaces; the temporary
//! directory, which holds every process's log, is removed too unless the test failed (a panic, or
//! [`Cluster::keep_logs`]) or `BANYAN_KEEP_LOGS` is set, in which case its path is printed.
//!
//! The programs are the built `banyan-root` and `banyan-agent` binaries: `BANYAN_BIN_DIR` if set,
//! else `target/debug` of this workspace (or of `CARGO_TARGET_DIR`), built once with `cargo build`
//! when missing there. `cargo test -p banyan-tests` does not rebuild them when they exist: build
//! them first (`cargo build -p banyan-agent -p banyan-root`) to test the current code.
//!
//! The root's ports are chosen free for each cluster rather than the default 1337: tests run in
//! parallel, and every cluster's root shares the bridge address 198.18.0.1 and the loopback.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::support::{binaries, free_port, http_request, tail, Binaries};
use crate::testnet::{TestHost, Testnet};

/// The bridge's address in the machine's own namespace: every test host routes to it.
const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// How long the root may take to write its tokens and answer HTTP after it is started.
const ROOT_READY: Duration = Duration::from_secs(30);

/// How long a stopped root gets to exit after SIGTERM before SIGKILL.
const ROOT_GRACE: Duration = Duration::from_secs(5);

/// How often [`Cluster::wait_for`] and friends poll.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Budget of one HTTP request. `POST /ping` waits up to 5 s for silent targets, so more than that.
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

/// Counts the clusters of this process, for unique temporary directories.
static NEXT_CLUSTER: AtomicU32 = AtomicU32::new(0);

/// How a cluster is started.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The reduction period given to the root and every agent (`--period`), e.g. `"1s"`.
    pub period: String,
    /// `BANYAN_LOG` for every process; `None` leaves the test's own environment alone.
    pub log_filter: Option<String>,
    /// Each agent's `agent.toml` (`--config`): `{name}` is replaced by the agent's name and
    /// `{dir}` by the cluster's directory. `None`: no config file.
    pub agent_config: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            period: "1s".into(),
            log_filter: None,
            agent_config: None,
        }
    }
}

/// A fresh directory for one cluster under the system's temporary directory.
fn fresh_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for _ in 0..1000 {
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!("banyan-cluster-{}-{n}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            // Left by an earlier process with the same PID: take the next number.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    bail!("no free directory name under {}", base.display())
}

/// Whether `pid` has exited (a zombie waiting to be reaped, or gone). Only for diagnostics: processes
/// started through [`Testnet::spawn`] are reaped by the testnet, which does not expose `try_wait`.
fn has_exited(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

// ----- Topology ---------------------------------------------------------------------------------

/// The answer of `GET /topology`.
#[derive(Debug, Clone, Deserialize)]
pub struct Topology {
    /// The root's node name (`banyan-root`).
    pub root: String,
    pub nodes: Vec<TopoNode>,
}

/// One node of `GET /topology`.
#[derive(Debug, Clone, Deserialize)]
pub struct TopoNode {
    pub name: String,
    pub parent: Option<String>,
    pub depth: u32,
    pub children: Vec<String>,
    pub addr: String,
    /// Live in the root's model: attached, or placed and not yet confirmed (`status` tells which).
    pub up: bool,
    /// `up` (attached), `joining`, `lost` or `stale`.
    pub status: String,
}

impl TopoNode {
    /// Attached to the tree (status `up`), not merely placed.
    pub fn attached(&self) -> bool {
        self.status == "up"
    }
}

impl Topology {
    pub fn node(&self, name: &str) -> Option<&TopoNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every node but the root.
    pub fn agents(&self) -> impl Iterator<Item = &TopoNode> {
        self.nodes.iter().filter(move |n| n.name != self.root)
    }

    /// Whether `name` is attached (status `up`).
    pub fn is_attached(&self, name: &str) -> bool {
        self.node(name).is_some_and(TopoNode::attached)
    }

    /// `name`'s status word, `absent` when the root does not know it.
    pub fn status_of(&self, name: &str) -> &str {
        self.node(name).map_or("absent", |n| n.status.as_str())
    }

    /// The children `name` has according to the root, as a set.
    pub fn children_of(&self, name: &str) -> BTreeSet<String> {
        self.node(name)
            .map(|n| n.children.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The deepest attached node's depth.
    pub fn depth(&self) -> u32 {
        self.nodes
            .iter()
            .filter(|n| n.attached())
            .map(|n| n.depth)
            .max()
            .unwrap_or(0)
    }

    /// The live edges `(parent, child)`, as `GET /topo` should list them.
    pub fn edges(&self) -> BTreeSet<(String, String)> {
        self.nodes
            .iter()
            .filter(|n| n.up)
            .filter_map(|n| n.parent.clone().map(|p| (p, n.name.clone())))
            .collect()
    }

    /// What keeps the attached nodes from being one binary tree under the root: an attached node
    /// whose parent is not attached or does not list it, a wrong depth, more than two children, a
    /// listed child that does not name its parent back, a cycle. Empty when the tree is sound.
    pub fn tree_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(root) = self.node(&self.root) else {
            return vec![format!("the root {} is not in the topology", self.root)];
        };
        if root.parent.is_some() || root.depth != 0 {
            problems.push(format!(
                "the root has parent {:?} and depth {}",
                root.parent, root.depth
            ));
        }
        for n in self.nodes.iter().filter(|n| n.attached()) {
            if n.children.len() > 2 {
                problems.push(format!(
                    "{} has {} children: {:?}",
                    n.name,
                    n.children.len(),
                    n.children
                ));
            }
            for c in &n.children {
                if let Some(cn) = self.node(c) {
                    if cn.attached() && cn.parent.as_deref() != Some(n.name.as_str()) {
                        problems.push(format!(
                            "{} lists child {c}, whose parent is {:?}",
                            n.name, cn.parent
                        ));
                    }
                }
            }
            if n.name == self.root {
                continue;
            }
            let Some(p) = n.parent.as_deref() else {
                problems.push(format!("{} is attached without a parent", n.name));
                continue;
            };
            match self.node(p) {
                None => problems.push(format!("{}'s parent {p} is unknown", n.name)),
                Some(pn) => {
                    if !pn.attached() {
                        problems.push(format!("{}'s parent {p} is {}", n.name, pn.status));
                    }
                    if !pn.children.iter().any(|c| c == &n.name) {
                        problems.push(format!("{}'s parent {p} does not list it", n.name));
                    }
                    if n.depth != pn.depth + 1 {
                        problems.push(format!(
                            "{} has depth {} under {p} at depth {}",
                            n.name, n.depth, pn.depth
                        ));
                    }
                }
            }
            // Walk up: the root must come within as many steps as there are nodes.
            let mut at = n;
            let mut steps = 0;
            while at.name != self.root {
                steps += 1;
                match at.parent.as_deref().and_then(|p| self.node(p)) {
                    Some(up) if steps <= self.nodes.len() => at = up,
                    Some(_) => {
                        problems.push(format!("{} is on a cycle", n.name));
                        break;
                    }
                    None => break, // reported above
                }
            }
        }
        problems
    }

    /// Whether every one of `names` is attached and the attached nodes form a sound binary tree.
    pub fn healthy<S: AsRef<str>>(&self, names: &[S]) -> bool {
        names.iter().all(|n| self.is_attached(n.as_ref())) && self.tree_problems().is_empty()
    }

    /// One line per node, for error messages.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "  {} [{}] depth {} parent {} children {:?}\n",
                n.name,
                n.status,
                n.depth,
                n.parent.as_deref().unwrap_or("-"),
                n.children
            ));
        }
        let problems = self.tree_problems();
        if !problems.is_empty() {
            out.push_str(&format!("  problems: {}\n", problems.join("; ")));
        }
        out
    }
}

// ----- HTTP -------------------------------------------------------------------------------------

// ----- Cluster ----------------------------------------------------------------------------------

/// One agent's process and files.
#[derive(Debug)]
struct AgentSlot {
    /// The running process, `None` while killed.
    pid: Option<u32>,
    /// How many times it was started, for log file names.
    starts: u32,
    state_dir: PathBuf,
    metrics_file: PathBuf,
    /// What its metrics file holds, so one value can change without losing the others.
    metrics: BTreeMap<String, f64>,
}

/// A running cluster: root, agents, test hosts. See the module documentation.
#[derive(Debug)]
pub struct Cluster {
    // Dropped after `Cluster::drop` has stopped the root; its own drop kills the agents and removes
    // the namespaces.
    net: Testnet,
    bins: Binaries,
    opts: ClusterOptions,
    dir: PathBuf,
    root_state: PathBuf,
    mesh: SocketAddr,
    http: SocketAddr,
    root: Option<Child>,
    root_starts: u32,
    join_token: String,
    admin_token: String,
    agents: Vec<AgentSlot>,
    keep: bool,
}

/// Runs `body` on a fresh cluster of `n` agents with the default options. On failure the cluster's
/// directory (every log, state dir and metrics file) is kept and its path is part of the error.
/// Runs the operator CLI `banyan ARGS` against `c`'s root: what it printed on stdout and stderr,
/// and whether it succeeded.
pub fn banyan_cli(c: &Cluster, args: &[&str]) -> Result<(String, bool)> {
    banyan_cli_env(c, args, &[])
}

/// [`banyan_cli`] with these variables added to the CLI's environment.
pub fn banyan_cli_env(
    c: &Cluster,
    args: &[&str],
    env: &[(String, String)],
) -> Result<(String, bool)> {
    let bins = binaries()?;
    let cli = bins
        .root
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", bins.root.display()))?
        .join("banyan");
    let out = Command::new(&cli)
        .arg("--root")
        .arg(format!("http://{}", c.http_addr()))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .with_context(|| format!("running {}", cli.display()))?;
    Ok((
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        out.status.success(),
    ))
}

pub fn with_cluster(n: usize, body: impl FnOnce(&mut Cluster) -> Result<()>) -> Result<()> {
    let mut cluster = Cluster::start(n, ClusterOptions::default())?;
    let result = body(&mut cluster);
    if result.is_err() {
        cluster.keep_logs();
    }
    result.with_context(|| format!("cluster logs in {}", cluster.dir().display()))
}

impl Cluster {
    /// Makes `n_agents` test hosts, starts the root and one agent on each host, and returns once the
    /// root answers HTTP and every agent is started (not yet attached: see [`Cluster::wait_for`]).
    pub fn start(n_agents: usize, opts: ClusterOptions) -> Result<Cluster> {
        let bins = binaries()?;
        let dir = fresh_dir()?;
        let net = match Testnet::up(n_agents) {
            Ok(net) => net,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        // The bridge exists only once a net is up, so the mesh port is found after `up`.
        let ports = free_port(BRIDGE_ADDR, true)
            .and_then(|m| Ok((m, free_port(Ipv4Addr::LOCALHOST, false)?)));
        let (mesh_port, http_port) = match ports {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let agents = net
            .hosts()
            .iter()
            .map(|h| AgentSlot {
                pid: None,
                starts: 0,
                state_dir: dir.join(&h.name),
                metrics_file: dir.join(format!("{}.metrics", h.name)),
                metrics: BTreeMap::new(),
            })
            .collect();
        // From here on, dropping `cluster` stops whatever was started.
        let mut cluster = Cluster {
            net,
            bins,
            opts,
            root_state: dir.join("root"),
            dir,
            mesh: SocketAddr::from((BRIDGE_ADDR, mesh_port)),
            http: SocketAddr::from((Ipv4Addr::LOCALHOST, http_port)),
            root: None,
            root_starts: 0,
            join_token: String::new(),
            admin_token: String::new(),
            agents,
            keep: false,
        };
        if let Err(e) = cluster.boot() {
            cluster.keep_logs();
            return Err(e.context(format!(
                "starting a cluster of {n_agents} (logs in {})",
                cluster.dir.display()
            )));
        }
        Ok(cluster)
    }

    fn boot(&mut self) -> Result<()> {
        self.start_root()?;
        let token_file = self.root_state.join("join-token");
        self.join_token = fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_owned();
        let admin_file = self.root_state.join("admin-token");
        self.admin_token = fs::read_to_string(&admin_file)
            .with_context(|| format!("reading {}", admin_file.display()))?
            .trim()
            .to_owned();
        for i in 0..self.agents.len() {
            // An empty metrics file from the start: the agent warns about a missing one.
            self.write_metrics(i)?;
            self.start_agent(i)?;
        }
        Ok(())
    }

    // ----- Where things are -------------------------------------------------------------------

    /// The directory holding every log, state dir and metrics file of this cluster.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Agent `i`'s state dir (its certificate, scrape list, previous life).
    pub fn agent_state_dir(&self, i: usize) -> Result<&Path> {
        Ok(&self.agent(i)?.state_dir)
    }

    /// The test hosts, in agent order: agent `i` runs on `hosts()[i]` and is named after it.
    pub fn hosts(&self) -> &[TestHost] {
        self.net.hosts()
    }

    /// The agents' names (their hosts' names), in order.
    pub fn names(&self) -> Vec<String> {
        self.hosts().iter().map(|h| h.name.clone()).collect()
    }

    /// Agent `i`'s name. Panics when there is no agent `i`, like indexing.
    pub fn name(&self, i: usize) -> &str {
        &self.hosts()[i].name
    }

    /// The index of the agent called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.hosts().iter().position(|h| h.name == name)
    }

    /// The host names' common prefix: the agents are `<prefix>1` to `<prefix>N`.
    pub fn prefix(&self) -> &str {
        self.net.prefix()
    }

    /// The node set naming every agent, `<prefix>[1-N]`.
    pub fn all_nodes(&self) -> String {
        format!("{}[1-{}]", self.prefix(), self.agents.len())
    }

    /// The root's HTTP address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The root's mesh address, as given to the agents.
    pub fn mesh_addr(&self) -> SocketAddr {
        self.mesh
    }

    /// The test hosts themselves, for what the methods here do not cover.
    pub fn testnet(&mut self) -> &mut Testnet {
        &mut self.net
    }

    /// The root's process id, while it runs.
    pub fn root_pid(&self) -> Option<u32> {
        self.root.as_ref().map(Child::id)
    }

    /// Agent `i`'s process id, while it runs.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.agents.get(i).and_then(|a| a.pid)
    }

    /// Keeps the directory with the logs when the cluster is dropped, and prints its path then.
    /// Dropping during a panic does so by itself.
    pub fn keep_logs(&mut self) {
        self.keep = true;
    }

    // ----- The root ---------------------------------------------------------------------------

    /// Starts the root (again) on the same state dir and ports, and waits until it answers HTTP.
    pub fn start_root(&mut self) -> Result<()> {
        if self.root.is_some() {
            bail!("the root is already running");
        }
        self.root_starts += 1;
        let log = self.log_path("root", self.root_starts);
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&self.bins.root);
        cmd.arg("--mesh")
            .arg(self.mesh.to_string())
            .arg("--http")
            .arg(self.http.to_string())
            .arg("--state-dir")
            .arg(&self.root_state)
            .arg("--period")
            .arg(&self.opts.period)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own group, like the agents, so a stop reaches anything it starts.
            .process_group(0);
        if let Some(filter) = &self.opts.log_filter {
            cmd.env("BANYAN_LOG", filter);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bins.root.display()))?;
        self.root = Some(child);
        self.wait_root_ready(&log)
    }

    /// Waits until the root has its tokens and answers `GET /status`, failing early if it exits.
    fn wait_root_ready(&mut self, log: &Path) -> Result<()> {
        let deadline = Instant::now() + ROOT_READY;
        let token = self.root_state.join("join-token");
        let admin = self.root_state.join("admin-token");
        loop {
            if let Some(child) = self.root.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.root = None;
                    bail!(
                        "banyan-root exited at start ({status}); its log {}:\n{}",
                        log.display(),
                        tail(log, 20)
                    );
                }
            }
            // The token files come first, the HTTP listener after them.
            let tokens = fs::metadata(&token).is_ok_and(|m| m.len() > 0)
                && fs::metadata(&admin).is_ok_and(|m| m.len() > 0);
            if tokens
                && self
                    .request("GET", "/status", None, Duration::from_secs(2))
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "banyan-root did not become ready within {ROOT_READY:?}; its log {}:\n{}",
                    log.display(),
                    tail(log, 20)
                );
            }
            thread::sleep(POLL_EVERY);
        }
    }

    /// Stops the root with SIGTERM (SIGKILL after 5 s) and waits for it to exit.
    pub fn stop_root(&mut self) -> Result<()> {
        let mut child = self
            .root
            .take()
            .ok_or_else(|| anyhow!("the root is not running"))?;
        signal_group(child.id(), Signal::SIGTERM)?;
        let deadline = Instant::now() + ROOT_GRACE;
        while child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                eprintln!("cluster: banyan-root ignored SIGTERM for {ROOT_GRACE:?}; killing it");
                signal_group(child.id(), Signal::SIGKILL)?;
                child.wait()?;
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        // Whatever else its group started goes too.
        signal_group(child.id(), Signal::SIGKILL)
    }

    /// Kills the root with SIGKILL: no chance to save anything.
    pub fn kill_root(&mut self) -> Result<()> {
        let mut child = self
            .root
            .take()
            .ok_or_else(|| anyhow!("the root is not running"))?;
        signal_group(child.id(), Signal::SIGKILL)?;
        child.wait()?;
        Ok(())
    }

    // ----- Agents -----------------------------------------------------------------------------

    fn agent(&self, i: usize) -> Result<&AgentSlot> {
        self.agents
            .get(i)
            .ok_or_else(|| anyhow!("no agent {i} (the cluster has {})", self.agents.len()))
    }

    fn agent_mut(&mut self, i: usize) -> Result<&mut AgentSlot> {
        let n = self.agents.len();
        self.agents
            .get_mut(i)
            .ok_or_else(|| anyhow!("no agent {i} (the cluster has {n})"))
    }

    fn log_path(&self, who: &str, start: u32) -> PathBuf {
        if start <= 1 {
            self.dir.join(format!("{who}.log"))
        } else {
            self.dir.join(format!("{who}.{start}.log"))
        }
    }

    /// Starts agent `i` on its host with its own state dir and metrics file.
    fn start_agent(&mut self, i: usize) -> Result<()> {
        let name = self.name(i).to_owned();
        let slot = self.agent(i)?;
        if slot.pid.is_some() {
            bail!("agent {name} is already running");
        }
        let log = self.log_path(&name, slot.starts + 1);
        if let Some(template) = &self.opts.agent_config {
            let config_file = self.agent_config_file(i);
            let text = template
                .replace("{name}", &name)
                .replace("{dir}", path_str(&self.dir)?);
            fs::write(&config_file, text)
                .with_context(|| format!("writing {}", config_file.display()))?;
        }
        let args = self.agent_args(i)?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut envs = Vec::new();
        if let Some(filter) = &self.opts.log_filter {
            envs.push(("BANYAN_LOG", filter.as_str()));
        }
        let agent_bin = self.bins.agent.clone();
        let pid = self.net.spawn(i, &agent_bin, &args, &envs, &log)?;
        let slot = self.agent_mut(i)?;
        slot.pid = Some(pid);
        slot.starts += 1;
        Ok(())
    }

    fn agent_config_file(&self, i: usize) -> PathBuf {
        self.dir.join(format!("{}.agent.toml", self.name(i)))
    }

    /// Agent `i`'s arguments: its name, the root, the join token, its state dir, metrics file,
    /// period and config file.
    fn agent_args(&self, i: usize) -> Result<Vec<String>> {
        let slot = self.agent(i)?;
        let mut args = vec![
            "--name".to_owned(),
            self.name(i).to_owned(),
            "--root".to_owned(),
            self.mesh.to_string(),
            "--token".to_owned(),
            self.join_token.clone(),
            "--state-dir".to_owned(),
            path_str(&slot.state_dir)?.to_owned(),
            "--metrics-file".to_owned(),
            path_str(&slot.metrics_file)?.to_owned(),
            "--period".to_owned(),
            self.opts.period.clone(),
        ];
        if self.opts.agent_config.is_some() {
            args.push("--config".to_owned());
            args.push(path_str(&self.agent_config_file(i))?.to_owned());
        }
        Ok(args)
    }

    /// The command that runs agent `i` on its host exactly as the harness does (same name, state
    /// dir, metrics file, config and `BANYAN_LOG`), as a program and its arguments:
    /// `scripts/testnet exec HOST env [BANYAN_LOG=..] banyan-agent ARGS`. For a test that runs the
    /// agent under something else, an emulated BMC's power say, after [`Cluster::terminate_agent`]
    /// (the harness then counts it as stopped, not as failed). Its config file, if any, is the one
    /// the harness wrote when it first started the agent.
    pub fn agent_command_line(&self, i: usize) -> Result<Vec<String>> {
        let mut cmd = vec![
            path_str(&crate::testnet::script())?.to_owned(),
            "exec".to_owned(),
            self.name(i).to_owned(),
            "env".to_owned(),
        ];
        if let Some(filter) = &self.opts.log_filter {
            cmd.push(format!("BANYAN_LOG={filter}"));
        }
        cmd.push(path_str(&self.bins.agent)?.to_owned());
        cmd.extend(self.agent_args(i)?);
        Ok(cmd)
    }

    /// Kills agent `i` with SIGKILL, as a crash would.
    pub fn kill_agent(&mut self, i: usize) -> Result<()> {
        let pid = self.running_pid(i)?;
        self.net.kill(pid)?;
        self.agent_mut(i)?.pid = None;
        Ok(())
    }

    /// Stops agent `i` with SIGTERM (SIGKILL after 5 s).
    pub fn terminate_agent(&mut self, i: usize) -> Result<()> {
        let pid = self.running_pid(i)?;
        self.net.terminate(pid)?;
        self.agent_mut(i)?.pid = None;
        Ok(())
    }

    /// Starts agent `i` again with the same state dir (so with its certificate), killing it first
    /// if it still runs.
    pub fn restart_agent(&mut self, i: usize) -> Result<()> {
        if self.agent(i)?.pid.is_some() {
            self.kill_agent(i)?;
        }
        self.start_agent(i)
    }

    fn running_pid(&self, i: usize) -> Result<u32> {
        self.agent(i)?
            .pid
            .ok_or_else(|| anyhow!("agent {} is not running", self.name(i)))
    }

    /// Agents started by the cluster that have exited since, by name.
    pub fn exited_agents(&self) -> Vec<String> {
        self.agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.pid.is_some_and(has_exited))
            .map(|(i, _)| self.name(i).to_owned())
            .collect()
    }

    /// Cuts agent `i`'s host off the bridge: its packets are silently dropped.
    pub fn cut(&self, i: usize) -> Result<()> {
        self.net.cut(i)
    }

    /// Reconnects a host cut off by [`Cluster::cut`].
    pub fn restore(&self, i: usize) -> Result<()> {
        self.net.restore(i)
    }

    /// Cuts the path between the hosts of agents `a` and `b` only, both ways (a blackhole route
    /// to the other in each host), while both keep reaching everyone else: a partial partition.
    pub fn partition(&self, a: usize, b: usize) -> Result<()> {
        self.route_between(a, b, "add")
    }

    /// Undoes [`Cluster::partition`].
    pub fn heal_partition(&self, a: usize, b: usize) -> Result<()> {
        self.route_between(a, b, "del")
    }

    fn route_between(&self, a: usize, b: usize, verb: &str) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let to_host = self
                .hosts()
                .get(to)
                .with_context(|| format!("no agent {to}"))?;
            let to_addr = format!("{}/32", to_host.addr);
            let out = self
                .net
                .exec(from, &["ip", "route", verb, "blackhole", &to_addr])?;
            if !out.status.success() {
                bail!(
                    "ip route {verb} blackhole {to_addr} on {}: {}",
                    self.name(from),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// Freezes agent `i` with SIGSTOP: alive, sockets open, silent until [`Cluster::resume_agent`].
    pub fn pause_agent(&self, i: usize) -> Result<()> {
        signal_group(self.running_pid(i)?, Signal::SIGSTOP)
    }

    /// Lets an agent frozen by [`Cluster::pause_agent`] run again.
    pub fn resume_agent(&self, i: usize) -> Result<()> {
        signal_group(self.running_pid(i)?, Signal::SIGCONT)
    }

    /// Sets `name` to `value` in agent `i`'s metrics file (names ending `_total` are counters).
    /// The file is replaced atomically, so the agent never reads half of it.
    pub fn set_metric(&mut self, i: usize, name: &str, value: f64) -> Result<()> {
        self.agent_mut(i)?.metrics.insert(name.to_owned(), value);
        self.write_metrics(i)
    }

    fn write_metrics(&self, i: usize) -> Result<()> {
        let slot = self.agent(i)?;
        let mut text = String::new();
        for (name, value) in &slot.metrics {
            text.push_str(&format!("{name} {value}\n"));
        }
        let tmp = slot.metrics_file.with_extension("metrics.tmp");
        fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &slot.metrics_file)
            .with_context(|| format!("replacing {}", slot.metrics_file.display()))
    }

    // ----- Reading the cluster ----------------------------------------------------------------

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Value> {
        let bearer = (method != "GET").then_some(self.admin_token.as_str());
        let (status, bytes) = http_request(self.http, method, path, bearer, body, timeout)?;
        if !(200..300).contains(&status) {
            bail!(
                "{method} {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{method} {path}: not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    }

    /// `GET path` on the root's HTTP API, as JSON; an error for a non-2xx status.
    pub fn http_get(&self, path: &str) -> Result<Value> {
        self.request("GET", path, None, HTTP_TIMEOUT)
    }

    /// `POST path` with a JSON body and the admin token.
    pub fn http_post(&self, path: &str, body: &Value) -> Result<Value> {
        self.request("POST", path, Some(body), HTTP_TIMEOUT)
    }

    /// `GET path` with the admin token (the writes that the Metric Proxy made GETs, like `/join`).
    pub fn http_get_admin(&self, path: &str) -> Result<Value> {
        let (status, bytes) = http_request(
            self.http,
            "GET",
            path,
            Some(&self.admin_token),
            None,
            HTTP_TIMEOUT,
        )?;
        if !(200..300).contains(&status) {
            bail!(
                "GET {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("GET {path}: not JSON: {}", String::from_utf8_lossy(&bytes)))
    }

    /// The root's state dir (its CA, tokens, `groups.yaml`, `audit.jsonl`).
    pub fn root_state(&self) -> &Path {
        &self.root_state
    }

    /// Starts a cluster with options of its own; see [`with_cluster`].
    pub fn with_options(
        n: usize,
        opts: ClusterOptions,
        body: impl FnOnce(&mut Cluster) -> Result<()>,
    ) -> Result<()> {
        let mut cluster = Cluster::start(n, opts)?;
        let result = body(&mut cluster);
        if result.is_err() {
            cluster.keep_logs();
        }
        result.with_context(|| format!("cluster logs in {}", cluster.dir().display()))
    }

    /// The root's admin token, for tests that send requests of their own.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// `POST /ping` to the node set `nodes` (e.g. `cn[1-4]`): `{"answered", "failed", "unreachable"}`.
    pub fn ping(&self, nodes: &str) -> Result<Value> {
        self.http_post("/ping", &json!({ "nodes": nodes }))
    }

    /// `GET /topology`, typed.
    pub fn topology(&self) -> Result<Topology> {
        serde_json::from_value(self.http_get("/topology")?)
            .context("GET /topology: unexpected shape")
    }

    /// `GET /topo` as a set of `(parent, child)` edges.
    pub fn topo_edges(&self) -> Result<BTreeSet<(String, String)>> {
        let edges: Vec<(String, String)> = serde_json::from_value(self.http_get("/topo")?)
            .context("GET /topo: unexpected shape")?;
        Ok(edges.into_iter().collect())
    }

    /// Every attached agent's depth, by name.
    pub fn agent_depths(&self) -> Result<BTreeMap<String, u32>> {
        let topo = self.topology()?;
        Ok(topo
            .agents()
            .filter(|n| n.attached())
            .map(|n| (n.name.clone(), n.depth))
            .collect())
    }

    /// The root's total of counter `name` from `GET /totals`; `None` when it has none.
    pub fn counter_total(&self, name: &str) -> Result<Option<f64>> {
        let totals = self.http_get("/totals")?;
        let Some(metric) = totals.get("metrics").and_then(|m| m.get(name)) else {
            return Ok(None);
        };
        metric
            .get("Counter")
            .and_then(|c| c.get("value"))
            .and_then(Value::as_f64)
            .map(Some)
            .ok_or_else(|| anyhow!("/totals: {name} is not a counter: {metric}"))
    }

    /// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`. `check` errors
    /// (the root restarting, say) are retried; the last one is reported on timeout with `what`.
    pub fn poll<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&Cluster) -> Result<Option<T>>,
    ) -> Result<(T, Duration)> {
        let start = Instant::now();
        let last = loop {
            let outcome = check(self);
            match outcome {
                Ok(Some(v)) => return Ok((v, start.elapsed())),
                Ok(None) | Err(_) if start.elapsed() < timeout => {}
                Ok(None) => break "the condition never held".to_owned(),
                Err(e) => break format!("last error: {e:#}"),
            }
            thread::sleep(POLL_EVERY);
        };
        let mut exited = String::new();
        if self.root.as_ref().is_some_and(|r| has_exited(r.id())) {
            exited.push_str("; the root has exited");
        }
        let agents = self.exited_agents();
        if !agents.is_empty() {
            exited.push_str(&format!("; agents that exited: {agents:?}"));
        }
        bail!(
            "timed out after {timeout:?} waiting for {what}: {last}{exited} (logs in {})",
            self.dir.display()
        )
    }

    /// Polls `/topology` every 100 ms until `cond` holds; returns how long that took. On timeout the
    /// error shows the last topology.
    pub fn wait_for(
        &self,
        mut cond: impl FnMut(&Topology) -> bool,
        timeout: Duration,
    ) -> Result<Duration> {
        let mut last: Option<Topology> = None;
        let result = self.poll("a topology condition", timeout, |c| {
            let topo = c.topology()?;
            let ok = cond(&topo);
            last = Some(topo);
            Ok(ok.then_some(()))
        });
        match result {
            Ok(((), took)) => Ok(took),
            Err(e) => match last {
                Some(topo) => Err(e.context(format!("last topology:\n{}", topo.summary()))),
                None => Err(e),
            },
        }
    }

    /// Waits until every one of `names` is attached in a sound binary tree.
    pub fn wait_healthy<S: AsRef<str>>(&self, names: &[S], timeout: Duration) -> Result<Duration> {
        self.wait_for(|t| t.healthy(names), timeout)
    }

    /// Waits until the root's total of counter `name` is exactly `expected`.
    pub fn wait_for_counter(
        &self,
        name: &str,
        expected: f64,
        timeout: Duration,
    ) -> Result<Duration> {
        let mut seen = None;
        let result = self.poll(&format!("{name} = {expected}"), timeout, |c| {
            let v = c.counter_total(name)?;
            seen = v;
            Ok((v == Some(expected)).then_some(()))
        });
        result
            .map(|((), took)| took)
            .with_context(|| format!("{name} last seen at {seen:?}, expected {expected}"))
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
}

/// Sends `signal` to the process group led by `pid`; a group already gone is not an error.
fn signal_group(pid: u32, signal: Signal) -> Result<()> {
    let pgid = Pid::from_raw(i32::try_from(pid).context("PID out of range")?);
    match killpg(pgid, signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow!("sending {signal} to process group {pid}: {e}")),
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.root.take() {
            if let Err(e) = signal_group(child.id(), Signal::SIGKILL) {
                eprintln!("cluster: {e:#}");
            }
            let _ = child.wait();
        }
        // The agents and namespaces go with `self.net`, dropped after this.
        if self.keep || thread::panicking() || std::env::var_os("BANYAN_KEEP_LOGS").is_some() {
            eprintln!("cluster: logs and state kept in {}", self.dir.display());
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!("cluster: removing {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, parent: Option<&str>, depth: u32, children: &[&str]) -> TopoNode {
        TopoNode {
            name: name.into(),
            parent: parent.map(Into::into),
            depth,
            children: children.iter().map(|c| (*c).into()).collect(),
            addr: String::new(),
            up: true,
            status: "up".into(),
        }
    }

    #[test]
    fn tree_problems_find_bad_shapes() {
        let good = Topology {
            root: "r".into(),
            nodes: vec![
                node("r", None, 0, &["a", "b"]),
                node("a", Some("r"), 1, &["c"]),
                node("b", Some("r"), 1, &[]),
                node("c", Some("a"), 2, &[]),
            ],
        };
        assert!(
            good.tree_problems().is_empty(),
            "{:?}",
            good.tree_problems()
        );
        assert!(good.healthy(&["a", "b", "c"]));
        assert_eq!(good.depth(), 2);

        let mut three = good.clone();
        three.nodes[0].children.push("c".into());
        assert!(!three.tree_problems().is_empty());

        let cycle = Topology {
            root: "r".into(),
            nodes: vec![
                node("r", None, 0, &[]),
                node("a", Some("b"), 1, &["b"]),
                node("b", Some("a"), 2, &["a"]),
            ],
        };
        assert!(!cycle.tree_problems().is_empty());
    }
}

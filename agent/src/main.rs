//! `banyan-agent`: the daemon on every node. See the crate documentation.

use banyan_agent::shell::{self, AgentConfig, AgentError};
use banyan_agent::tree::TreeConfig;
use banyan_protocol::identity::{validate_node_name, JoinToken};
use clap::Parser;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "banyan-agent",
    version,
    about = "The banyan agent: joins the cluster's reduction tree and reports this node",
    after_help = "Examples:\n  \
      banyan-agent --root head1:1337 --token BNY1.<fingerprint>.<secret>\n  \
      banyan-agent --root 10.0.0.1 --token-file /etc/banyan/join-token --state-dir /var/lib/banyan-agent\n\n\
      The ready command line with the token is printed by banyan-root on its first start\n\
      (and kept in <root state dir>/join-token).\n\n\
      Exit status: 0 stopped, 2 bad command line, 3 refused by the root (wrong token, foreign CA,\n\
      name taken by another certificate), 1 other errors."
)]
struct Args {
    /// The root's mesh address (HOST or HOST:PORT; port 1337 by default).
    #[arg(long, env = "BANYAN_ROOT")]
    root: String,
    /// The join token printed by banyan-root (not needed once the state dir holds a certificate).
    #[arg(long, env = "BANYAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the join token (keeps it out of the process list).
    #[arg(long, env = "BANYAN_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// This node's name in the tree (default: the host name).
    #[arg(long, env = "BANYAN_NAME")]
    name: Option<String>,
    /// UDP address the agent listens on for its children.
    #[arg(long, env = "BANYAN_MESH", default_value = "0.0.0.0:1337")]
    mesh: SocketAddr,
    /// Where the node certificate is kept; without it the agent enrols at every start.
    #[arg(long, env = "BANYAN_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Reduction period (500ms, 1s, 2m).
    #[arg(long, env = "BANYAN_PERIOD", default_value = "1s", value_parser = parse_duration)]
    period: std::time::Duration,
    /// Local socket for job ranks (banyan-run): `@name` for an abstract socket (private to the
    /// network namespace), or a path.
    #[arg(long, env = "BANYAN_SOCKET", default_value = banyan_protocol::ingest::DEFAULT_SOCKET)]
    socket: String,
    /// A text file of `name value` lines reported with this node each wave.
    #[arg(long, env = "BANYAN_METRICS_FILE")]
    metrics_file: Option<PathBuf>,
    /// A Prometheus exporter to scrape into this node's metrics each period: HOST:PORT or an
    /// http:// URL (repeat for several). More can be added at run time with the root's /join.
    #[arg(long = "scrape", value_name = "HOST:PORT", value_parser = parse_target)]
    scrape: Vec<banyan_protocol::target::Target>,
    /// The agent's config file: what operator actions may do on this node
    /// [default: /etc/banyan/agent.toml, where a missing file means the defaults].
    #[arg(long, env = "BANYAN_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
}

fn parse_target(s: &str) -> Result<banyan_protocol::target::Target, String> {
    banyan_protocol::target::Target::parse(s).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    banyan_protocol::duration::parse(s)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn resolve(root: &str) -> Result<SocketAddr, String> {
    let with_port = if root.contains(':') {
        root.to_string()
    } else {
        format!("{root}:1337")
    };
    with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve --root {root:?}: {e}"))?
        .find(|a| a.is_ipv4())
        .or_else(|| with_port.to_socket_addrs().ok()?.next())
        .ok_or_else(|| format!("--root {root:?} has no address"))
}

fn config(args: Args) -> Result<AgentConfig, String> {
    let name = args.name.unwrap_or_else(hostname);
    validate_node_name(&name).map_err(|e| format!("invalid node name {name:?}: {e}"))?;
    let token_text = match (&args.token, &args.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read --token-file {}: {e}", f.display()))?,
        ),
        (None, None) => None,
    };
    let token = token_text
        .map(|t| t.trim().parse::<JoinToken>())
        .transpose()
        .map_err(|e| e.to_string())?;
    // Read at start so that a bad agent.toml stops the agent with its file and line (exit 2)
    // rather than failing the first action; `file.actions` is what the action executors take.
    let file = banyan_agent::config::load(args.config.as_deref())?;
    let period_ms = args.period.as_millis() as u64;
    if period_ms < 100 {
        return Err(format!(
            "--period {period_ms}ms is too short: use 100ms or more"
        ));
    }
    Ok(AgentConfig {
        name,
        root: resolve(&args.root)?,
        token,
        mesh: args.mesh,
        state_dir: args.state_dir,
        tree: TreeConfig::default().with_period(period_ms),
        metrics_file: args.metrics_file,
        scrape: args.scrape,
        socket: args.socket,
        actions: file.actions,
        watch: file.inventory.watch,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    banyan_agent::process::init_logging();
    let cfg = match config(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("banyan-agent: {e}");
            return ExitCode::from(2);
        }
    };
    // One thread: an agent's work is small and mostly waiting (a sample and a report a second,
    // heartbeats, ranks' updates), and on one thread nothing has to wake another thread to hand
    // it over (futex and eventfd wake-ups made most of its CPU time with two workers). Scrapes
    // and slow filesystems run on threads of their own.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("banyan-agent: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(shell::run(cfg, banyan_agent::process::stop_signal()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(AgentError::Refused(why)) => {
            eprintln!("banyan-agent: {why}");
            ExitCode::from(3)
        }
        Err(AgentError::Setup(why)) => {
            eprintln!("banyan-agent: {why}");
            ExitCode::from(1)
        }
    }
}

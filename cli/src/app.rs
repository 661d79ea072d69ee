//! The command line of `banyan`: its commands and flags ([`Cli`]), and [`run`], which carries one
//! out and returns the exit status. The binary is `main` around [`run`]; tests can call [`run`]
//! or the command functions of [`crate::commands`] directly.

use std::io::{self, IsTerminal};
use std::time::Duration;

use banyan_protocol::action::ServiceOp;
use clap::{Args, Parser, Subcommand};

use crate::api::{Auth, CliError, Client, EXIT_OK};
use crate::config::{self, TokenArgs};
use crate::nodes::GroupResolver;
use crate::nodeset::{self as cli_nodeset, NodesetArgs, NodesetCliError};
use crate::{commands, monitor, times};

#[derive(Debug, Parser)]
#[command(
    name = "banyan",
    version,
    about = "Operate a banyan cluster mesh",
    after_help = "\
The root is found from --root, BANYAN_ROOT or `root = \"...\"` in ~/.config/banyan/config.toml.
Writes need a token: --token-file FILE, BANYAN_TOKEN, `token_file = \"...\"` in the config file, or,
on the root's host, its state dir's admin-token (/var/lib/banyan-root/admin-token, or
$BANYAN_STATE_DIR/admin-token).

Examples:
  banyan status
  banyan exec 'cn[1-4]' -- uname -r
  banyan exec @compute --for-real -- systemctl daemon-reload
  banyan service restart nova-compute libvirtd 'cn[1-4]' --for-real
  banyan actions
  banyan nodeset -f @compute"
)]
pub struct Cli {
    /// URL of the root's HTTP API [default: `root` in ~/.config/banyan/config.toml, else
    /// http://127.0.0.1:1337].
    #[arg(
        long,
        global = true,
        env = "BANYAN_ROOT",
        value_name = "URL",
        // After the subcommand's own options in their help.
        display_order = 100
    )]
    pub root: Option<String>,
    /// A file holding the API token to show the root.
    #[arg(long, global = true, value_name = "FILE", display_order = 101)]
    pub token_file: Option<std::path::PathBuf>,
    /// The API token itself (prefer --token-file or BANYAN_TOKEN: a command line is visible in
    /// `ps`).
    #[arg(long, global = true, value_name = "TOKEN", display_order = 102)]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Expand, fold or count node-set expressions (like ClusterShell's nodeset).
    Nodeset(NodesetArgs),
    /// Summary of the tree: nodes up, lost and stale, depth, the last wave, and the cluster's CPU,
    /// memory, network and running jobs over time as sparklines (min, mean, max).
    #[command(
        after_help = "Examples:\n  banyan status\n  banyan --root http://head1:1337 status --json"
    )]
    Status {
        /// Print the root's JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// The tree as the root sees it.
    #[command(
        after_help = "Example:\n  banyan topology\n  banyan topology --json | jq '.nodes | length'"
    )]
    Topology {
        #[arg(long)]
        json: bool,
    },
    /// Every node with its state and digest (cpu, memory, load, network), optionally a node set.
    #[command(
        after_help = "Examples:\n  banyan nodes\n  banyan nodes 'cn[1-32]' --json\n  banyan nodes @gpu"
    )]
    Nodes {
        /// Only these nodes: `cn[1-32]`, `@group` or `@./file`.
        nodes: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A node's full metrics, fetched from the node through the tree.
    #[command(after_help = "Example:\n  banyan metrics cn17 | grep network")]
    Metrics {
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Running jobs.
    #[command(after_help = "Examples:\n  banyan jobs\n  banyan jobs --json | jq '.[].jobid'")]
    Jobs {
        #[arg(long)]
        json: bool,
    },
    /// A job's metrics, running or finished; `--watch` redraws them every period.
    #[command(after_help = "Examples:\n  banyan job 4242.0\n  banyan job 4242.0 --watch")]
    Job {
        id: String,
        /// Redraw every second until interrupted (or until the job ends).
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Every alarm and whether it is raised (SINCE: when it was raised or cleared, unix s).
    #[command(after_help = "Example:\n  banyan alarms")]
    Alarms {
        #[arg(long)]
        json: bool,
    },
    /// Finished jobs, optionally only those of one command.
    #[command(after_help = "Examples:\n  banyan profiles\n  banyan profiles --cmd ./lulesh")]
    Profiles {
        /// Only runs of this command.
        #[arg(long)]
        cmd: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A finished job's profile: its metrics and how its ranks ended.
    #[command(after_help = "Example:\n  banyan profile 4242.0")]
    Profile {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Round trip through the tree to every node of a set; lists the ones that did not answer.
    #[command(
        after_help = "Examples:\n  banyan ping 'cn[1-128]'\n  banyan ping @/etc/banyan/compute-nodes --token-file /var/lib/banyan-root/admin-token\n\nExit status: 0 when every node answered, 1 otherwise."
    )]
    Ping {
        /// The nodes: `cn[1-4],gpu1`, `@group` or `@./file`.
        nodes: String,
        #[arg(long)]
        json: bool,
    },
    /// What the nodes are made of and have installed, asked now through the tree.
    #[command(after_help = "\
Each node collects its inventory when asked: CPU, memory, disks, NICs, GPUs and the NVIDIA driver,
firmware (DMI), OS and kernel, installed packages (dpkg), mounts, and the SHA-256 of the files its
agent.toml watches ([inventory] watch; their contents never leave the node). --json gives all of it.

Examples:
  banyan inventory cn1 --json
  banyan inventory 'cn[1-16]'

Exit status: 0 when every node answered, 1 otherwise.")]
    Inventory {
        /// The nodes: `cn[1-4],gpu1`, `@group` or `@./file`.
        nodes: String,
        #[arg(long)]
        json: bool,
    },
    /// Nodes grouped by identical profile, and how the others differ from the majority.
    #[command(after_help = "\
Nodes send only a hash of their inventory; the root groups them by it and fetches one inventory
per group to tell the differences: + only in the group, - only in the majority, ~ changed.

Examples:
  banyan drift @compute
  banyan drift 'cn[1-64]' --by packages
  banyan drift 'cn[1-64]' --by files     # watched files (munge.key, slurm.conf) and mounts

Exit status: 0 when every node has one profile and answered, 1 otherwise.")]
    Drift {
        /// The nodes: `cn[1-4],gpu1`, `@group` or `@./file`.
        nodes: String,
        /// What to compare: packages (with OS, kernel, NVIDIA driver), hardware, files or all.
        #[arg(long, default_value = "all", value_parser = ["packages", "hardware", "files", "all"])]
        by: String,
        #[arg(long)]
        json: bool,
    },
    /// Run a command on a node set (a dry run unless --for-real).
    Exec(ExecArgs),
    /// Start, stop, restart or show system services on a node set.
    Service(ServiceArgs),
    /// Node power through the nodes' BMCs (Redfish or IPMI, configured in the root's root.toml).
    Power(PowerArgs),
    /// OpenStack hypervisors: status, enable, drain-and-disable, servers (the root's [openstack]).
    Hv(crate::hv::HvArgs),
    /// QEMU guests on the nodes: launch (--join: their own agents join the tree), list, stop, logs,
    /// console (run by each node's agent).
    Vm(crate::vm::VmArgs),
    /// A node's serial console (IPMI serial-over-LAN, through the root); `&.` leaves.
    #[command(after_help = "\
The first to attach may type; others see the same output, read-only, until the writer leaves.
`&.` at the start of a line leaves. Every session is in the audit log (console.start, console.end).

Examples:
  banyan console cn12
  banyan console cn12 --read-only

Exit status: 0 after leaving, 1 the console could not be opened, 3 refused (no token, or the
token's groups do not hold the node), 4 the root is unreachable.")]
    Console {
        /// The node.
        node: String,
        /// Watch only, even if nobody is typing.
        #[arg(long)]
        read_only: bool,
    },
    /// Recent actions, or one action's results.
    #[command(after_help = "\
Examples:
  banyan actions
  banyan actions 3f2a9c0d1e4b5a67
  banyan actions 3f2a9c0d1e4b5a67 --watch

With an ID the exit status is that of the action, as for exec: 0 when every target succeeded.")]
    Actions {
        /// An action's id (16 hex digits); without it, the recent actions.
        id: Option<String>,
        /// Follow a running action until it ends (Ctrl-C stops following; it goes on).
        #[arg(long, requires = "id")]
        watch: bool,
        /// Every output line prefixed with its node instead of identical outputs grouped.
        #[arg(short = 'L', long, requires = "id")]
        no_group: bool,
        #[arg(long)]
        json: bool,
    },
    /// Ask the targets of a running action to stop it.
    #[command(after_help = "Example:\n  banyan cancel 3f2a9c0d1e4b5a67")]
    Cancel {
        /// The action's id.
        id: String,
    },
    /// Read the root's audit log of every write, allowed or refused.
    #[command(after_help = "\
Examples:
  banyan audit --since 1h
  banyan audit --who alice --since 7d
  banyan audit --verify

--verify checks the hash chain of the whole log: exit status 1 when a line was edited, removed or
the log truncated.")]
    Audit {
        /// Only lines newer than this (500ms, 2m, 1h, 7d).
        #[arg(long, value_name = "DUR", value_parser = times::parse_duration)]
        since: Option<Duration>,
        /// Only lines of this token.
        #[arg(long, value_name = "NAME")]
        who: Option<String>,
        /// At most this many lines (the newest).
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        /// Check that no line was edited or removed instead of listing lines.
        #[arg(long, conflicts_with_all = ["since", "who", "limit"])]
        verify: bool,
        #[arg(long)]
        json: bool,
    },
    /// Make, list and revoke API tokens (admin).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The node groups the root knows (ClusterShell group files).
    #[command(after_help = "Examples:\n  banyan groups\n  banyan nodeset -e @compute")]
    Groups {
        #[arg(long)]
        json: bool,
    },
    /// Nodes as the root keeps them.
    #[command(subcommand)]
    Node(NodeCommand),
}

/// `banyan exec`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Without --for-real every target says what it would run and runs nothing: a dry run, which also
proves that the targets answer and that the token may act on them. Outputs are then shown grouped:
nodes with the same output (stdout, stderr and exit status) under one header, the largest group
first; then the targets that failed or did not answer; then `All N targets succeeded.` or
`M of N targets failed: NODES`. Ctrl-C asks whether to cancel the action (without a terminal, it
leaves the action running and says how to follow it).

Examples:
  banyan exec 'cn[1-4]' -- uname -r
  banyan exec @compute --for-real --timeout 5m -- dnf -y update kernel
  banyan exec '@gpu!gpu3' --for-real --shell -- 'nvidia-smi -L | wc -l'
  banyan exec @./nodes.txt --for-real --user slurm --json -- id > out.json

Exit status: 0 every target succeeded, 1 some failed or did not answer, 2 bad command line (or a
node set, group or task the root found bad), 3 refused (no token, or the token may not do this),
4 the root is unreachable, 130 interrupted (the action goes on).")]
pub struct ExecArgs {
    /// The targets: `cn[1-4]`, `@compute`, `@compute!cn3`, `@./nodes.txt`.
    #[arg(value_name = "NODESET")]
    pub nodes: String,
    /// Really run it (without it: a dry run).
    #[arg(long)]
    pub for_real: bool,
    /// How long the targets may take [default: the root's].
    #[arg(long, value_name = "DUR", value_parser = times::parse_duration)]
    pub timeout: Option<Duration>,
    /// Most bytes kept of stdout and of stderr per target (K, M: powers of 1024) [default: 64K].
    #[arg(long, value_name = "SIZE", value_parser = times::parse_size)]
    pub max_output: Option<u64>,
    /// Run as this user instead of root.
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Give the command, joined by spaces, to /bin/sh -c.
    #[arg(long)]
    pub shell: bool,
    /// Print the action's final JSON (every target's result) instead of the grouped text.
    #[arg(long)]
    pub json: bool,
    /// Identical outputs under one header (the default; accepted as clush -b).
    #[arg(short = 'b', long = "group", overrides_with = "no_group")]
    pub group: bool,
    /// Every output line prefixed with its node, in node order (as clush -L).
    #[arg(short = 'L', long, overrides_with = "group")]
    pub no_group: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `banyan service`.
#[derive(Debug, Clone, Args)]
#[command(
    override_usage = "banyan service <start|stop|restart|status> <UNIT>... <NODESET> [OPTIONS]",
    after_help = "\
The last argument is the node set; the ones before it are units, as in
`banyan service start nova-compute libvirtd 'cn[1-4]'`. Results are a table with one row per unit
and state and the nodes in it folded, then the targets that failed or did not answer, then the
final line. `status` changes nothing and is carried out even without --for-real.

Examples:
  banyan service status sshd @compute
  banyan service restart nova-compute libvirtd 'cn[1-4]' --for-real
  banyan service stop slurmd '@compute!cn[1-2]' --for-real --timeout 2m

Exit status: 0 every target succeeded, 1 some failed or did not answer, 2 bad command line (or a
node set, group or task the root found bad), 3 refused (no token, or the token may not do this),
4 the root is unreachable, 130 interrupted (the action goes on)."
)]
pub struct ServiceArgs {
    /// start, stop, restart or status.
    #[arg(value_name = "OP", value_parser = parse_service_op)]
    pub op: ServiceOp,
    /// One or more units (`nova-compute`, `getty@tty1.service`), then the node set, last.
    #[arg(value_name = "UNIT|NODESET", num_args = 1.., required = true)]
    pub args: Vec<String>,
    /// Really do it (without it: a dry run, except for status).
    #[arg(long)]
    pub for_real: bool,
    /// How long the targets may take [default: the root's].
    #[arg(long, value_name = "DUR", value_parser = times::parse_duration)]
    pub timeout: Option<Duration>,
    /// Print the action's final JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "\
`status` shows each node's power as its BMC says beside its agent's state in the tree, and changes
nothing; `check` proves the configuration: each BMC reached, credentials accepted, system found. `off` asks for a graceful shutdown and cuts the power when --timeout passes (at once with
--force); `reset` restarts gracefully (--force: at once); `cycle` is off then on. Nodes already in
the asked state succeed without a BMC call. A dry run (no --for-real) makes no BMC call at all.

Examples:
  banyan power status @rack1
  banyan power check '@*'
  banyan power off 'cn[1-4]' --for-real --timeout 2m
  banyan power on 'cn[1-4]' --boot pxe --for-real
  banyan power cycle cn12 --force --for-real

Exit status: 0 every target succeeded, 1 some failed, 2 bad command line (or a node set, group or
BMC config the root found bad), 3 refused (no token, or the token may not do this), 4 the root is
unreachable, 130 interrupted (the action goes on).")]
pub struct PowerArgs {
    /// status, check, on, off, reset or cycle.
    #[arg(value_name = "OP", value_parser = ["status", "check", "on", "off", "reset", "cycle"])]
    pub op: String,
    /// The targets: `cn[1-4]`, `@rack1`.
    #[arg(value_name = "NODESET")]
    pub nodes: String,
    /// No graceful step: cut or reset the power at once (off, reset, cycle).
    #[arg(long)]
    pub force: bool,
    /// How long a graceful shutdown may take before the power is cut [default: 60s].
    #[arg(long, value_name = "DUR", value_parser = times::parse_duration)]
    pub timeout: Option<Duration>,
    /// The device to boot from next (on, reset, cycle).
    #[arg(long, value_parser = ["pxe", "disk"])]
    pub boot: Option<String>,
    /// Really do it (without it: a dry run, except for status).
    #[arg(long)]
    pub for_real: bool,
    /// Print the action's final JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn parse_service_op(s: &str) -> Result<ServiceOp, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a token; it is printed once, alone on stdout.
    #[command(after_help = "\
Examples:
  banyan token create ci --role operator --groups compute,gpu --expires 30d > ci.token
  banyan token create grafana --role viewer

Roles: admin (everything, tokens and groups included), operator (actions on the nodes of its
groups), viewer (reads only). The root keeps only the token's hash: store it when it is shown.")]
    Create {
        /// The token's name (as it appears in the audit log).
        name: String,
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
        /// The groups an operator may act on, comma separated (without `@`).
        #[arg(long, value_delimiter = ',', value_name = "GROUP,...")]
        groups: Vec<String>,
        /// How long it is valid (30d, 12h) [default: until revoked].
        #[arg(long, value_name = "DUR", value_parser = times::parse_duration)]
        expires: Option<Duration>,
        /// Print the root's JSON answer (with the token) instead.
        #[arg(long)]
        json: bool,
    },
    /// Every token: name, role, groups, when made, when it expires, whether revoked.
    #[command(after_help = "Example:\n  banyan token list")]
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once.
    #[command(after_help = "Example:\n  banyan token revoke ci")]
    Revoke { name: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Forget a node the root remembers (a node gone for good); it may join again later.
    #[command(after_help = "Example:\n  banyan node forget cn17")]
    Forget { name: String },
}

/// What every command needs to reach the root.
#[derive(Debug, Clone, Default)]
pub struct Ctx {
    pub root: Option<String>,
    pub token: TokenArgs,
}

impl Ctx {
    /// A client for the root, with the token when one is found.
    pub fn client(&self) -> Result<Client, CliError> {
        let url = config::root_url(self.root.as_deref())?;
        Ok(Client::with_token(&url, config::find_token(&self.token)?))
    }
}

/// Groups resolved by the root, reached only when an expression names one.
struct RootGroups<'a>(&'a Ctx);

impl GroupResolver for RootGroups<'_> {
    fn resolve(&self, expr: &str) -> Result<banyan_protocol::nodeset::NodeSet, CliError> {
        self.0.client()?.resolve(expr)
    }
}

/// Parses the command line and carries it out; the process's exit status.
pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(run(Cli::parse()))
}

/// Carries out a parsed command line; returns the exit status (errors are printed on stderr).
pub fn run(cli: Cli) -> u8 {
    let Cli {
        root,
        token_file,
        token,
        command,
    } = cli;
    let ctx = Ctx {
        root,
        token: TokenArgs { token, token_file },
    };
    let result = match command {
        Command::Nodeset(args) => return nodeset(&ctx, &args),
        other => dispatch(&ctx, other),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("banyan: {e}");
            e.exit_code()
        }
    }
}

fn nodeset(ctx: &Ctx, args: &NodesetArgs) -> u8 {
    let stdin = io::stdin();
    if args.exprs.is_empty() && stdin.is_terminal() {
        eprintln!("banyan: reading node sets from standard input (end with Ctrl-D)");
    }
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    match cli_nodeset::run(args, stdin.lock(), &mut out, &RootGroups(ctx)) {
        Ok(()) => EXIT_OK,
        // `banyan nodeset -e ... | head` is not an error.
        Err(NodesetCliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            eprintln!("banyan: {e}");
            e.exit_code()
        }
    }
}

fn dispatch(ctx: &Ctx, command: Command) -> Result<u8, CliError> {
    let client = ctx.client()?;
    match command {
        Command::Exec(args) => commands::exec(&client, &args),
        Command::Service(args) => commands::service(&client, &args),
        Command::Power(args) => commands::power(&client, &args),
        Command::Hv(args) => commands::hv(&client, args),
        Command::Vm(args) => commands::vm(&client, args),
        Command::Console { node, read_only } => crate::console::console(&client, &node, read_only),
        Command::Actions {
            id,
            watch,
            no_group,
            json,
        } => commands::actions(&client, id.as_deref(), watch, no_group, json),
        Command::Cancel { id } => commands::cancel(&client, &id),
        Command::Audit {
            since,
            who,
            limit,
            verify,
            json,
        } => {
            if verify {
                commands::audit_verify(&client, json)
            } else {
                commands::audit(&client, since, who.as_deref(), limit, json)
            }
        }
        Command::Token(TokenCommand::Create {
            name,
            role,
            groups,
            expires,
            json,
        }) => commands::token_create(&client, &name, &role, &groups, expires, json),
        Command::Token(TokenCommand::List { json }) => commands::token_list(&client, json),
        Command::Token(TokenCommand::Revoke { name }) => commands::token_revoke(&client, &name),
        Command::Groups { json } => commands::groups(&client, json),
        Command::Node(NodeCommand::Forget { name }) => commands::node_forget(&client, &name),
        other => monitor_command(&client, other),
    }
}

/// The read-only commands about the mesh and its jobs.
fn monitor_command(client: &Client, command: Command) -> Result<u8, CliError> {
    let show = |json: bool, v: &serde_json::Value, text: String| {
        if json {
            commands::emit(&format!("{v:#}\n"));
        } else {
            commands::emit(&text);
        }
    };
    match command {
        Command::Nodes { nodes, json } => {
            let r = match nodes {
                Some(expr) => {
                    let set = crate::nodes::resolve(&expr, client)?;
                    client.get_query("/nodes", &[("nodes", &set.fold())])?
                }
                None => client.get("/nodes")?,
            };
            show(json, &r, monitor::render_nodes(&r));
        }
        Command::Metrics { node, json } => {
            let r = client.get_query("/job", &[("job", &format!("Node: {node}"))])?;
            show(json, &r, monitor::render_metrics(&r));
        }
        Command::Status { json } => {
            let s = client.get("/status")?;
            // `--json` stays `/status` as it is (`/job/history?job=main` has the series). A root
            // without the main history (an older one) still answers the status.
            let mut text = monitor::render_status(&s);
            if !json {
                if let Ok(h) = client.get_query("/job/history", &[("job", "main")]) {
                    text.push_str(&monitor::render_history(&h));
                }
            }
            show(json, &s, text);
        }
        Command::Topology { json } => {
            let t = client.get("/topology")?;
            show(json, &t, monitor::render_topology(&t));
        }
        Command::Ping { nodes, json } => {
            let set = crate::nodes::resolve(&nodes, client)?;
            let r = client.post("/ping", &serde_json::json!({"nodes": set.fold()}))?;
            let (text, all) = monitor::render_ping(&r);
            show(json, &r, text);
            return Ok(if all {
                EXIT_OK
            } else {
                crate::api::EXIT_FAILED
            });
        }
        Command::Inventory { nodes, json } => {
            let nodes = crate::nodes::for_root(&nodes, client)?;
            let r = client.get_as("/inventory", &[("nodes", &nodes)], Auth::Required)?;
            let (text, all) = crate::inventory::render_inventory(&r);
            show(json, &r, text);
            return Ok(if all {
                EXIT_OK
            } else {
                crate::api::EXIT_FAILED
            });
        }
        Command::Drift { nodes, by, json } => {
            let nodes = crate::nodes::for_root(&nodes, client)?;
            let r = client.get_as("/drift", &[("nodes", &nodes), ("by", &by)], Auth::Required)?;
            let (text, agree) = crate::inventory::render_drift(&r);
            show(json, &r, text);
            return Ok(if agree {
                EXIT_OK
            } else {
                crate::api::EXIT_FAILED
            });
        }
        Command::Alarms { json } => {
            let r = client.get("/alarms/list")?;
            show(json, &r, monitor::render_alarms(&r, times::now_ms()));
        }
        Command::Jobs { json } => {
            let r = client.get("/job/list")?;
            show(json, &r, monitor::render_jobs(&r, times::now_ms()));
        }
        Command::Job { id, watch, json } => loop {
            let r = client.get_query("/job", &[("job", &id)])?;
            if json {
                commands::emit(&format!("{r:#}\n"));
            } else {
                if watch {
                    // Clear the screen and go home, as watch(1) does.
                    commands::emit("\x1b[2J\x1b[H");
                }
                commands::emit(&format!(
                    "{}\n{}",
                    monitor::render_job(&r["desc"], times::now_ms()),
                    monitor::render_metrics(&r)
                ));
            }
            let ended = r["desc"]["end_time"].as_u64().is_some_and(|t| t > 0);
            if !watch || ended {
                return Ok(EXIT_OK);
            }
            std::thread::sleep(Duration::from_secs(1));
        },
        Command::Profiles { cmd, json } => {
            let mut r = client.get("/profiles")?;
            if let (Some(cmd), Some(list)) = (&cmd, r.as_array_mut()) {
                list.retain(|j| j["command"].as_str() == Some(cmd.as_str()));
            }
            show(json, &r, monitor::render_jobs(&r, times::now_ms()));
        }
        Command::Profile { id, json } => {
            let r = client.get_query("/profiles/get", &[("jobid", &id)])?;
            let text = format!(
                "{}{}\n{}",
                monitor::render_job(&r["desc"], times::now_ms()),
                monitor::render_tallies(&r),
                monitor::render_metrics(&r)
            );
            show(json, &r, text);
        }
        // Handled by `dispatch` and `run`.
        Command::Nodeset(_)
        | Command::Exec(_)
        | Command::Service(_)
        | Command::Power(_)
        | Command::Hv(_)
        | Command::Vm(_)
        | Command::Console { .. }
        | Command::Actions { .. }
        | Command::Cancel { .. }
        | Command::Audit { .. }
        | Command::Token(_)
        | Command::Groups { .. }
        | Command::Node(_) => {}
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exec_takes_the_command_after_the_double_dash() {
        let cli = Cli::try_parse_from([
            "banyan",
            "exec",
            "cn[1-4]",
            "--for-real",
            "--timeout",
            "5m",
            "--max-output",
            "1M",
            "--",
            "ls",
            "-l",
            "--all",
        ])
        .unwrap();
        let Command::Exec(e) = cli.command else {
            panic!("not exec")
        };
        assert_eq!(e.nodes, "cn[1-4]");
        assert!(e.for_real);
        assert_eq!(e.timeout, Some(Duration::from_secs(300)));
        assert_eq!(e.max_output, Some(1 << 20));
        assert_eq!(e.command, ["ls", "-l", "--all"]);
        // Without `--` (or without a command) it is a usage error, exit status 2.
        let err = Cli::try_parse_from(["banyan", "exec", "cn1"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn service_takes_units_then_the_node_set() {
        let cli = Cli::try_parse_from([
            "banyan",
            "service",
            "start",
            "nova-compute",
            "libvirtd",
            "cn[1-4]",
            "--for-real",
        ])
        .unwrap();
        let Command::Service(s) = cli.command else {
            panic!("not service")
        };
        assert_eq!(s.op, ServiceOp::Start);
        assert_eq!(s.args, ["nova-compute", "libvirtd", "cn[1-4]"]);
        // One argument is a node set without units: refused before the root is asked.
        let cli = Cli::try_parse_from(["banyan", "service", "start", "cn1"]).unwrap();
        let Command::Service(s) = cli.command else {
            panic!("not service")
        };
        let e = crate::commands::service(&Client::new("127.0.0.1:1"), &s).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("then the node set"), "{e}");
        assert!(Cli::try_parse_from(["banyan", "service", "reload", "a", "cn1"]).is_err());
    }

    #[test]
    fn token_create_reads_groups_and_expiry() {
        let cli = Cli::try_parse_from([
            "banyan",
            "token",
            "create",
            "ci",
            "--role",
            "operator",
            "--groups",
            "compute,gpu",
            "--expires",
            "30d",
        ])
        .unwrap();
        let Command::Token(TokenCommand::Create {
            groups,
            expires,
            role,
            ..
        }) = cli.command
        else {
            panic!("not token create")
        };
        assert_eq!(groups, ["compute", "gpu"]);
        assert_eq!(role, "operator");
        assert_eq!(expires, Some(Duration::from_secs(30 * 86_400)));
        assert!(Cli::try_parse_from(["banyan", "token", "create", "x", "--role", "god"]).is_err());
    }

    #[test]
    fn the_token_options_are_global() {
        let cli = Cli::try_parse_from(["banyan", "ping", "cn1", "--token-file", "/t"]).unwrap();
        assert_eq!(cli.token_file.as_deref(), Some(std::path::Path::new("/t")));
    }
}

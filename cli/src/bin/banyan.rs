//! `banyan`, the operator CLI. It talks to the root's HTTP API (`--root`); `nodeset` works offline.

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use banyan_cli::api::{self as cli_api, CliError, Client};
use banyan_cli::nodeset::{self as cli_nodeset, NodesetArgs, NodesetCliError};
use banyan_protocol::nodeset::NodeSet;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "banyan", version, about = "Operate a banyan cluster mesh")]
struct Cli {
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
    root: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Expand, fold or count node-set expressions (like ClusterShell's nodeset).
    Nodeset(NodesetArgs),
    /// Summary of the tree: nodes up, lost and stale, depth, the last wave.
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
    #[command(after_help = "Examples:\n  banyan nodes\n  banyan nodes 'cn[1-32]' --json")]
    Nodes {
        /// Only these nodes: `cn[1-32]` or `@file`.
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
    Alarms {
        #[arg(long)]
        json: bool,
    },
    /// Finished jobs, optionally only those of one command.
    Profiles {
        /// Only runs of this command.
        #[arg(long)]
        cmd: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// A finished job's profile: its metrics and how its ranks ended.
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
        /// The nodes: `cn[1-4],gpu1` or `@file`.
        nodes: String,
        #[command(flatten)]
        auth: AdminAuth,
        #[arg(long)]
        json: bool,
    },
}

/// How an action command proves it may act.
#[derive(Debug, clap::Args)]
struct AdminAuth {
    /// The root's admin token.
    #[arg(long, env = "BANYAN_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the admin token (default /var/lib/banyan-root/admin-token).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,
}

fn api_command(root: Option<&str>, command: Command) -> Result<ExitCode, CliError> {
    let client = Client::new(&cli_api::root_url(root)?);
    match command {
        Command::Nodes { nodes, json } => {
            let r = match nodes {
                Some(expr) => {
                    let set = NodeSet::parse_with_files(&expr)
                        .map_err(|e| CliError::Usage(e.to_string()))?;
                    client.get_query("/nodes", &[("nodes", &set.fold())])?
                }
                None => client.get("/nodes")?,
            };
            if json {
                println!("{r:#}");
            } else {
                print!("{}", cli_api::render_nodes(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Metrics { node, json } => {
            let r = client.get_query("/job", &[("job", &format!("Node: {node}"))])?;
            if json {
                println!("{r:#}");
            } else {
                print!("{}", cli_api::render_metrics(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let s = client.get("/status")?;
            if json {
                println!("{s:#}");
            } else {
                print!("{}", cli_api::render_status(&s));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Topology { json } => {
            let t = client.get("/topology")?;
            if json {
                println!("{t:#}");
            } else {
                print!("{}", cli_api::render_topology(&t));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Ping { nodes, auth, json } => {
            let set =
                NodeSet::parse_with_files(&nodes).map_err(|e| CliError::Usage(e.to_string()))?;
            let token = cli_api::admin_token(auth.token.as_deref(), auth.token_file.as_deref())?;
            let r = client.post("/ping", &token, &serde_json::json!({"nodes": set.fold()}))?;
            let (text, all) = cli_api::render_ping(&r);
            if json {
                println!("{r:#}");
            } else {
                print!("{text}");
            }
            Ok(if all {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Alarms { json } => {
            let r = client.get("/alarms/list")?;
            if json {
                println!("{r:#}");
            } else {
                print!("{}", cli_api::render_alarms(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { json } => {
            let r = client.get("/job/list")?;
            if json {
                println!("{r:#}");
            } else {
                print!("{}", cli_api::render_jobs(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Job { id, watch, json } => loop {
            let r = client.get_query("/job", &[("job", &id)])?;
            if json {
                println!("{r:#}");
            } else {
                if watch {
                    // Clear the screen and go home, as watch(1) does.
                    print!("\x1b[2J\x1b[H");
                }
                println!("{}", cli_api::render_jobs(&serde_json::json!([r["desc"]])));
                print!("{}", cli_api::render_metrics(&r));
            }
            let ended = r["desc"]["end_time"].as_u64().is_some_and(|t| t > 0);
            if !watch || ended {
                return Ok(ExitCode::SUCCESS);
            }
            std::thread::sleep(std::time::Duration::from_secs(1));
        },
        Command::Profiles { cmd, json } => {
            let mut r = client.get("/profiles")?;
            if let (Some(cmd), Some(list)) = (&cmd, r.as_array_mut()) {
                list.retain(|j| j["command"].as_str() == Some(cmd.as_str()));
            }
            if json {
                println!("{r:#}");
            } else {
                print!("{}", cli_api::render_jobs(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Profile { id, json } => {
            let r = client.get_query("/profiles/get", &[("jobid", &id)])?;
            if json {
                println!("{r:#}");
            } else {
                println!("{}", cli_api::render_jobs(&serde_json::json!([r["desc"]])));
                let k = &r["ranks"];
                println!(
                    "ranks: {} started, {} ended, {} crashed, {} lost with their node\n",
                    k["started"], k["ended"], k["crashed"], k["lost"]
                );
                print!("{}", cli_api::render_metrics(&r));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Nodeset(_) => Ok(ExitCode::SUCCESS),
    }
}

fn main() -> ExitCode {
    let Cli { root, command } = Cli::parse();
    match command {
        Command::Nodeset(args) => {
            let stdin = io::stdin();
            if args.exprs.is_empty() && stdin.is_terminal() {
                eprintln!("banyan: reading node sets from standard input (end with Ctrl-D)");
            }
            let stdout = io::stdout();
            let mut out = io::BufWriter::new(stdout.lock());
            match cli_nodeset::run(&args, stdin.lock(), &mut out) {
                Ok(()) => ExitCode::SUCCESS,
                // `banyan nodeset -e ... | head` is not an error.
                Err(NodesetCliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("banyan: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        other => match api_command(root.as_deref(), other) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("banyan: {e}");
                ExitCode::from(e.exit_code())
            }
        },
    }
}

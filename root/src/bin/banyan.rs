//! `banyan`, the operator CLI. It talks to the root's HTTP API (`--root`); `nodeset` works offline.

use std::io::{self, IsTerminal};
use std::process::ExitCode;

use banyan_root::cli_nodeset::{self, NodesetArgs, NodesetCliError};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "banyan", version, about = "Operate a banyan cluster mesh")]
struct Cli {
    /// URL of the root's HTTP API.
    #[arg(
        long,
        global = true,
        env = "BANYAN_ROOT",
        default_value = "http://127.0.0.1:1337",
        value_name = "URL",
        // After the subcommand's own options in their help.
        display_order = 100
    )]
    root: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Expand, fold or count node-set expressions (like ClusterShell's nodeset).
    Nodeset(NodesetArgs),
}

fn main() -> ExitCode {
    // `root` is for the subcommands that talk to the API; none does yet.
    let Cli {
        root: _root,
        command,
    } = Cli::parse();
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
    }
}

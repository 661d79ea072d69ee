//! `banyan`, the operator CLI. It talks to the root's HTTP API (`--root`); `nodeset` works offline
//! unless an expression names a group. See `banyan_cli::app`.

fn main() -> std::process::ExitCode {
    banyan_cli::app::main()
}

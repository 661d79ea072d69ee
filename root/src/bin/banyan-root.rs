//! `banyan-root`: the root daemon. See the crate documentation.

use banyan_agent::tree::TreeConfig;
use banyan_protocol::seal::Signer;
use banyan_root::daemon::{self, RootConfig};
use banyan_root::groups::RootGroups;
use banyan_root::http::{self, Api};
use banyan_root::state::RootState;
use banyan_root::tokens::TokenStore;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

#[derive(Parser, Debug)]
#[command(
    name = "banyan-root",
    version,
    about = "The banyan root: placement authority, top of the reduction tree, HTTP API",
    after_help = "Examples:\n  \
      banyan-root --state-dir /var/lib/banyan-root\n  \
      banyan-root --mesh 10.0.0.1:1337 --http 127.0.0.1:1337 --period 2s\n\n\
      The first start creates the cluster CA, the join token (<state-dir>/join-token) and the admin\n\
      token (<state-dir>/admin-token), and prints the banyan-agent command line to run on every node.\n\
      Read the API through an ssh tunnel: ssh -L 1337:localhost:1337 <root host>."
)]
struct Args {
    /// UDP address of the mesh (agents connect here).
    #[arg(long, env = "BANYAN_MESH", default_value = "0.0.0.0:1337")]
    mesh: SocketAddr,
    /// TCP address of the HTTP API and web UI.
    #[arg(long, env = "BANYAN_HTTP", default_value = "127.0.0.1:1337")]
    http: SocketAddr,
    /// Where the CA, tokens and kept totals live.
    #[arg(long, env = "BANYAN_STATE_DIR", default_value = "/var/lib/banyan-root")]
    state_dir: PathBuf,
    /// Reduction period (500ms, 1s, 2m).
    #[arg(long, env = "BANYAN_PERIOD", default_value = "1s", value_parser = parse_duration)]
    period: std::time::Duration,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    banyan_protocol::duration::parse(s)
}

async fn run(args: Args) -> Result<(), String> {
    let period_ms = args.period.as_millis() as u64;
    if period_ms < 100 {
        return Err(format!(
            "--period {period_ms}ms is too short: use 100ms or more"
        ));
    }
    let state = Arc::new(RootState::open(&args.state_dir)?);
    if state.created {
        let host = if args.mesh.ip().is_unspecified() {
            "<this host>".to_string()
        } else {
            args.mesh.ip().to_string()
        };
        println!(
            "banyan-root: created the cluster CA and tokens in {}\n\
             Start an agent on every node with:\n\n  \
             banyan-agent --root {host}:{} --token {}\n",
            args.state_dir.display(),
            args.mesh.port(),
            state.join_token
        );
    }
    let listener = tokio::net::TcpListener::bind(args.http)
        .await
        .map_err(|e| format!("cannot listen on --http {}: {e}", args.http))?;
    let (handle, core) = daemon::start(
        RootConfig {
            mesh: args.mesh,
            tree: TreeConfig::default().with_period(period_ms),
        },
        state.clone(),
    )?;
    tracing::info!(mesh = %args.mesh, http = %args.http, "banyan-root serving");
    let tokens = TokenStore::open(&state.dir, &state.admin_token).map_err(|e| e.to_string())?;
    let groups = RootGroups::load(&state.dir).map_err(|e| e.to_string())?;
    let signer = Signer::from_pem(&state.ca.key_pem()).map_err(|e| e.to_string())?;
    let app = http::router(Api {
        root: handle.clone(),
        state_dir: Arc::new(state.dir.clone()),
        tokens: Arc::new(Mutex::new(tokens)),
        groups: Arc::new(Mutex::new(groups)),
        signer: Arc::new(signer),
        openstack: Arc::default(),
    });
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(banyan_agent::process::stop_signal());
    tokio::select! {
        r = server => r.map_err(|e| format!("HTTP server failed: {e}"))?,
        _ = core => return Err("the tree core stopped".into()),
    }
    tracing::info!("stopping: keeping the totals and closing the links");
    handle.shutdown().await;
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    banyan_agent::process::init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("banyan-root: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("banyan-root: {e}");
            ExitCode::from(1)
        }
    }
}

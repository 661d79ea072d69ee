//! What the real-process tests share: where the daemons' binaries are (built once when missing or
//! older than the sources they are built from),
//! free ports, log tails, and one small HTTP client for the root's API.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The two daemons the tests run.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub root: PathBuf,
    pub agent: PathBuf,
}

/// Where the binaries are, building them once per test process when they are missing or stale.
pub fn binaries() -> Result<Binaries> {
    // A failed build is remembered too: every test of the process then fails with the same message
    // instead of running cargo again.
    static FOUND: OnceLock<std::result::Result<Binaries, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| find_binaries().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn find_binaries() -> Result<Binaries> {
    let in_dir = |dir: &Path| Binaries {
        root: dir.join("banyan-root"),
        agent: dir.join("banyan-agent"),
    };
    let present = |b: &Binaries| b.root.is_file() && b.agent.is_file();
    if let Some(dir) = std::env::var_os("BANYAN_BIN_DIR") {
        // An explicit directory is used as it is: building into it is not ours to do.
        let bins = in_dir(Path::new(&dir));
        if !present(&bins) {
            bail!(
                "BANYAN_BIN_DIR={} lacks banyan-root or banyan-agent",
                Path::new(&dir).display()
            );
        }
        return Ok(bins);
    }
    let workspace = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_relative() {
                workspace.join(t)
            } else {
                t
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let bins = in_dir(&target.join("debug"));
    // The operator CLI (`banyan`, from banyan-cli) sits beside the daemons; tests run it from there.
    let cli = target.join("debug").join("banyan");
    let oldest = [&bins.root, &bins.agent, &cli]
        .iter()
        .map(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect::<Option<Vec<_>>>()
        .and_then(|times| times.into_iter().min());
    let newest_source = newest_source(&workspace);
    let why = match (oldest, newest_source) {
        (Some(built), Some(source)) if built >= source => return Ok(bins),
        (Some(_), Some(_)) => "older than their sources",
        (Some(_), None) => return Ok(bins),
        (None, _) => "missing",
    };
    // `cargo test -p banyan-tests` builds this crate's dependencies as libraries only, not their
    // binaries: on a fresh checkout, or after an edit, they are built here (a test never runs a
    // binary of another tree than its own).
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "banyan-tests: building banyan-root, banyan-agent and banyan ({why} in {})",
        target.display()
    );
    let status = Command::new(&cargo)
        .args([
            "build",
            "-p",
            "banyan-agent",
            "-p",
            "banyan-root",
            "-p",
            "banyan-cli",
        ])
        .current_dir(&workspace)
        .stdin(Stdio::null())
        .status()
        .context("running `cargo build -p banyan-agent -p banyan-root -p banyan-cli`")?;
    if !status.success() {
        bail!(
            "`cargo build -p banyan-agent -p banyan-root -p banyan-cli` failed ({status}); see its output above"
        );
    }
    if !present(&bins) || !cli.is_file() {
        bail!(
            "`cargo build` succeeded but {}, {} or {} is still missing",
            bins.root.display(),
            bins.agent.display(),
            cli.display()
        );
    }
    Ok(bins)
}

/// When the newest file the three binaries are built from was changed: the sources of their
/// crates, and the workspace's manifests and lock file.
fn newest_source(workspace: &Path) -> Option<std::time::SystemTime> {
    fn walk(dir: &Path, newest: &mut Option<std::time::SystemTime>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                walk(&path, newest);
            } else if let Ok(t) = meta.modified() {
                *newest = (*newest).max(Some(t));
            }
        }
    }
    let mut newest = None;
    for krate in ["protocol", "agent", "root", "cli", "webui"] {
        walk(&workspace.join(krate).join("src"), &mut newest);
        if let Ok(t) =
            fs::metadata(workspace.join(krate).join("Cargo.toml")).and_then(|m| m.modified())
        {
            newest = newest.max(Some(t));
        }
    }
    walk(&workspace.join("webui").join("assets"), &mut newest);
    for file in ["Cargo.toml", "Cargo.lock"] {
        if let Ok(t) = fs::metadata(workspace.join(file)).and_then(|m| m.modified()) {
            newest = newest.max(Some(t));
        }
    }
    newest
}

/// Percent-encodes everything but unreserved characters, as a browser does for a query value.
pub fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A benchmark's numeric option `--name N` from the command line, or `default`.
pub fn bench_arg<T: std::str::FromStr>(name: &str, default: T) -> T {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether every test must run for real: always, unless a developer opted into leniency with
/// `BANYAN_TEST_LENIENT=1`. Strictness never depends on `CI`: `scripts/test` installs what the
/// tests need, so a missing root, namespace or package is a failure wherever it runs.
pub fn strict() -> bool {
    std::env::var("BANYAN_TEST_LENIENT").map_or(true, |v| v != "1")
}

/// Records a skip (lenient mode only): printed, and appended to the file `BANYAN_SKIP_LOG` names
/// (`scripts/test` lists them at the end, since the harness hides passing tests' output).
pub fn note_skip(why: &str) {
    println!("SKIPPED: {why}");
    if let Some(path) = std::env::var_os("BANYAN_SKIP_LOG") {
        use std::io::Write;
        let test = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// `name` on the PATH or in the sbin directories (daemons live in /usr/sbin, which a user's PATH
/// may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A program a test needs, from Debian package `package`. Missing: an error (see [`strict`]); in
/// lenient mode the skip is recorded and `Ok(None)` returned, and the test returns.
pub fn require_program(name: &str, package: &str) -> Result<Option<PathBuf>> {
    match find_program(name) {
        Some(p) => Ok(Some(p)),
        None if strict() => bail!(
            "{name} not found: install the Debian package {package} (scripts/test does; BANYAN_TEST_LENIENT=1 skips instead)"
        ),
        None => {
            note_skip(&format!("{name} not found (Debian package {package})"));
            Ok(None)
        }
    }
}

/// The workspace's root directory (this crate lives in `<workspace>/tests`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// A port that is free at this moment on `addr` (TCP or UDP). Another process may take it before the
/// root binds it; that shows as the root failing to start, with the reason in its log.
pub fn free_port(addr: Ipv4Addr, udp: bool) -> Result<u16> {
    let port = if udp {
        UdpSocket::bind((addr, 0)).and_then(|s| s.local_addr())
    } else {
        TcpListener::bind((addr, 0)).and_then(|s| s.local_addr())
    }
    .with_context(|| format!("finding a free port on {addr}"))?
    .port();
    Ok(port)
}

/// Nearest-rank percentile of sorted values (the benchmarks' median, p99 and max; with 10 runs
/// p99 is the slowest run). NaN for no values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// One HTTP request to the root's API: the status and the body. `bearer` adds the admin token;
/// `body` is sent as JSON. Errors only when the root cannot be reached or answers garbage; a 4xx or
/// 5xx is a status like any other, for the caller to judge.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let result = match (method, body) {
        ("GET", _) => {
            let mut req = agent.get(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        }
        (_, body) => {
            let mut req = ureq::http::Request::builder()
                .method(method)
                .uri(&url)
                .header("Content-Type", "application/json");
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            let text = body.map(Value::to_string).unwrap_or_default();
            let req = req
                .body(text)
                .map_err(|e| anyhow!("{method} {path}: {e}"))?;
            agent.run(req)
        }
    };
    let mut resp =
        result.with_context(|| format!("{method} {path} on the root's HTTP API at {addr}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .body_mut()
        .read_to_vec()
        .with_context(|| format!("reading the answer to {method} {path}"))?;
    Ok((status, bytes))
}

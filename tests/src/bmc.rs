//! Emulated BMCs for tests: sushy-tools' fake Redfish driver and OpenIPMI's `ipmi_sim`.
//!
//! [`Sushy::start`] runs one `sushy-emulator` serving many fake systems (one per node name), with
//! HTTP basic auth (an htpasswd file with a bcrypt hash) and, by default, TLS with a certificate
//! signed by a test CA made here ([`Sushy::ca_file`] is what a client must trust). Each run gets
//! a fresh state directory, since sushy keeps power states in SQLite and would otherwise start
//! from the last run's. Sushy applies a new power state 1 to 11 s after a reset, and only when the
//! system is next read: tests poll.
//!
//! [`IpmiSim::start`] runs one `ipmi_sim` for one node. Its `chassis_control` hook is
//! `tests/bmc/chassis-control`, for which a node's power is a process: [`IpmiOptions::node_command`]
//! (a `sleep` by default, or a test host's agent) started in a session of its own and stopped by
//! its PID file, so powering off really stops something.
//!
//! Either runs on the machine's loopback ([`Site::Loopback`]) or inside a test host's network
//! namespace ([`Site::Host`]), on the host's address or on that namespace's own loopback (then
//! only that host reaches the BMC, as a management network reachable from a gateway only).
//! Dropping an emulator kills it, and the node process of an `ipmi_sim`, by PID.
//!
//! Installing: `scripts/test` installs Debian's `openipmi` and `ipmitool`, and sushy-tools 2.2.0
//! from PyPI into the virtualenv [`SUSHY_VENV`] (`BANYAN_SUSHY_VENV` overrides it). [`require`]
//! finds them; a missing one fails the test (see [`crate::support::strict`]).

use crate::support::{find_program, free_port, note_skip, strict, tail, workspace_root};
use crate::testnet::TestHost;
use anyhow::{anyhow, bail, ensure, Context, Result};
use banyan_agent::bmc::{Endpoint, Protocol, Secret, Tls};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Where `scripts/test` installs sushy-tools.
pub const SUSHY_VENV: &str = "/var/cache/banyan/sushy-tools-2.2.0";

/// How long an emulator may take to answer after it is started (sushy: about 1 s with TLS).
const READY: Duration = Duration::from_secs(30);
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Counts scratch directories of this process.
static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// The programs the emulators need.
#[derive(Debug, Clone)]
pub struct BmcTools {
    /// The virtualenv's `sushy-emulator`.
    pub sushy_emulator: PathBuf,
    /// The virtualenv's Python (it has `bcrypt`, for the htpasswd file).
    pub python: PathBuf,
    pub ipmi_sim: PathBuf,
    pub ipmitool: PathBuf,
    /// `tests/bmc/chassis-control`.
    pub chassis_control: PathBuf,
}

/// Finds the emulators and ipmitool. Missing: an error (unless BANYAN_TEST_LENIENT=1, then the
/// skip is noted and `Ok(None)` returned, and the test returns).
pub fn require() -> Result<Option<BmcTools>> {
    let venv = std::env::var_os("BANYAN_SUSHY_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SUSHY_VENV));
    let mut missing = Vec::new();
    let sushy_emulator = venv.join("bin/sushy-emulator");
    let python = venv.join("bin/python");
    if !sushy_emulator.is_file() || !python.is_file() {
        missing.push(format!(
            "sushy-tools 2.2.0 in the virtualenv {} (scripts/test makes it: python3 -m venv {0} && {0}/bin/pip install sushy-tools==2.2.0)",
            venv.display()
        ));
    }
    let ipmi_sim = find_program("ipmi_sim");
    if ipmi_sim.is_none() {
        missing.push("ipmi_sim (Debian package openipmi)".into());
    }
    let ipmitool = find_program("ipmitool");
    if ipmitool.is_none() {
        missing.push("ipmitool (Debian package ipmitool)".into());
    }
    let chassis_control = workspace_root().join("tests/bmc/chassis-control");
    if !chassis_control.is_file() {
        missing.push(format!("{}", chassis_control.display()));
    }
    match (ipmi_sim, ipmitool) {
        (Some(ipmi_sim), Some(ipmitool)) if missing.is_empty() => Ok(Some(BmcTools {
            sushy_emulator,
            python,
            ipmi_sim,
            ipmitool,
            chassis_control,
        })),
        _ => {
            let why = format!("BMC emulators missing: {}", missing.join("; "));
            if strict() {
                bail!("{why} (BANYAN_TEST_LENIENT=1 skips instead)");
            }
            note_skip(&why);
            Ok(None)
        }
    }
}

/// A directory for one test's files, removed when dropped unless `BANYAN_KEEP_LOGS` is set.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!(
            "banyan-bmc-{name}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("BANYAN_KEEP_LOGS").is_some() {
            eprintln!("bmc: files kept in {}", self.0.display());
        } else {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
}

/// Where an emulator runs.
#[derive(Debug, Clone)]
pub enum Site {
    /// The machine's own namespace, on 127.0.0.1.
    Loopback,
    /// Inside a test host's namespace: on the host's address (`only_inside: false`, reachable from
    /// every host and the machine), or on the namespace's own 127.0.0.1 (`only_inside: true`,
    /// reachable from that host only).
    Host { host: TestHost, only_inside: bool },
}

impl Site {
    /// The address the emulator listens on.
    fn bind(&self) -> Ipv4Addr {
        match self {
            Site::Loopback => Ipv4Addr::LOCALHOST,
            Site::Host {
                only_inside: true, ..
            } => Ipv4Addr::LOCALHOST,
            Site::Host { host, .. } => host.addr,
        }
    }

    /// `program args` run at this site.
    fn command(&self, program: &Path) -> Command {
        match self {
            Site::Loopback => Command::new(program),
            Site::Host { host, .. } => {
                let mut cmd = Command::new(crate::testnet::script());
                cmd.arg("exec").arg(&host.name).arg(program);
                cmd
            }
        }
    }

    /// A free port at this site. Inside a namespace nothing listens but what the test starts, so
    /// the protocol's own port is free.
    fn port(&self, udp: bool, standard: u16) -> Result<u16> {
        match self {
            Site::Loopback => free_port(Ipv4Addr::LOCALHOST, udp),
            Site::Host { .. } => Ok(standard),
        }
    }
}

/// `word` quoted for `/bin/sh`.
pub fn sh_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Makes node `i`'s power its agent, for an [`IpmiSim`] whose chassis runs the node: writes
/// `dir/boot-NAME`, which runs `before` (a shell line, e.g. a reboot's reset of the node's
/// counters; empty for none) then the node's agent exactly as the harness starts it, on its test
/// host. Returns the script's path quoted for `IpmiOptions::node_command`.
pub fn agent_boot_script(
    c: &crate::cluster::Cluster,
    i: usize,
    dir: &Path,
    before: &str,
) -> Result<String> {
    let agent: Vec<String> = c
        .agent_command_line(i)?
        .iter()
        .map(|w| sh_quote(w))
        .collect();
    let path = dir.join(format!("boot-{}", c.name(i)));
    fs::write(
        &path,
        format!("#!/bin/sh\n{before}\nexec {}\n", agent.join(" ")),
    )?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(sh_quote(path.to_str().context("a UTF-8 path")?))
}

/// Writes `secret` to `path`, readable by its owner only (as banyan demands of password files).
pub fn write_secret(path: &Path, secret: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    writeln!(f, "{secret}").with_context(|| format!("writing {}", path.display()))
}

/// A process started by an emulator harness: the leader of its own process group.
#[derive(Debug)]
struct Daemon {
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn spawn(mut cmd: Command, log: &Path) -> Result<Daemon> {
        let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        Ok(Daemon {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// Whether it still runs; an exit is an error with its log's tail.
    fn check_running(&mut self, what: &str) -> Result<()> {
        if let Some(child) = &mut self.child {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{what} exited ({status}); its log {}:\n{}",
                    self.log.display(),
                    tail(&self.log, 30)
                );
            }
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(child.id());
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SIGKILL to the process group `pid` leads; a group already gone is fine.
fn kill_group(pid: u32) {
    if let Ok(raw) = i32::try_from(pid) {
        match killpg(Pid::from_raw(raw), Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => eprintln!("bmc: killing process group {pid}: {e}"),
        }
    }
}

/// Whether `pid` is a live process (a zombie is not).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// One fake system of a [`Sushy`].
#[derive(Debug, Clone)]
pub struct FakeSystem {
    /// Its `Name`, which tests use as the node's name.
    pub name: String,
    /// `"On"` or `"Off"` at start.
    pub power: &'static str,
}

/// How a [`Sushy`] is started.
#[derive(Debug, Clone)]
pub struct SushyOptions {
    pub systems: Vec<FakeSystem>,
    pub user: String,
    pub password: String,
    /// HTTPS with a test CA's certificate (true), or plain HTTP.
    pub tls: bool,
    pub site: Site,
    /// Where sushy PUTs a system's JSON on every power change (`EXTERNAL_NOTIFICATION_URL`).
    /// When set, a POST whose notification fails answers 500.
    pub notify_url: Option<String>,
}

impl SushyOptions {
    /// `names` powered off, user `admin`, TLS, on the loopback.
    pub fn new<S: AsRef<str>>(names: &[S]) -> SushyOptions {
        SushyOptions {
            systems: names
                .iter()
                .map(|n| FakeSystem {
                    name: n.as_ref().to_string(),
                    power: "Off",
                })
                .collect(),
            user: "admin".into(),
            password: "sushy-test-pw".into(),
            tls: true,
            site: Site::Loopback,
            notify_url: None,
        }
    }
}

/// A running sushy-tools emulator.
#[derive(Debug)]
pub struct Sushy {
    daemon: Daemon,
    /// Where clients connect.
    pub addr: SocketAddr,
    pub user: String,
    /// The password, in a file of mode 0600.
    pub password_file: PathBuf,
    /// The test CA's certificate (PEM), when TLS is on.
    pub ca_file: Option<PathBuf>,
    /// The systems: name and UUID.
    pub systems: Vec<(String, String)>,
    log: PathBuf,
}

impl Sushy {
    /// Starts sushy-emulator with its files in `dir`, and waits until it accepts connections.
    pub fn start(tools: &BmcTools, dir: &Path, opts: &SushyOptions) -> Result<Sushy> {
        ensure!(!opts.systems.is_empty(), "sushy needs at least one system");
        fs::create_dir_all(dir)?;
        let bind = opts.site.bind();
        let port = opts.site.port(false, if opts.tls { 443 } else { 80 })?;
        let state = dir.join("state");
        // Fresh state: sushy's SQLite would otherwise carry power states over from an earlier run.
        let _ = fs::remove_dir_all(&state);
        fs::create_dir_all(&state)?;
        let password_file = dir.join("password");
        write_secret(&password_file, &opts.password)?;
        let htpasswd = dir.join("htpasswd");
        write_htpasswd(tools, &htpasswd, &opts.user, &opts.password)?;

        let mut systems = Vec::new();
        let mut lines = String::new();
        for (i, s) in opts.systems.iter().enumerate() {
            let uuid = format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), i + 1);
            lines.push_str(&format!(
                "    {{'uuid': {}, 'name': {}, 'power_state': {}, 'nics': []{}}},\n",
                py_str(&uuid),
                py_str(&s.name),
                py_str(s.power),
                if opts.notify_url.is_some() {
                    ", 'external_notifier': True"
                } else {
                    ""
                }
            ));
            systems.push((s.name.clone(), uuid));
        }
        let mut conf = format!(
            "SUSHY_EMULATOR_LISTEN_IP = {}\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_STATE_DIR = {}\n\
             SUSHY_EMULATOR_AUTH_FILE = {}\nSUSHY_EMULATOR_FAKE_SYSTEMS = [\n{lines}]\n",
            py_str(&bind.to_string()),
            py_str(&path_str(&state)?),
            py_str(&path_str(&htpasswd)?),
        );
        if let Some(url) = &opts.notify_url {
            conf.push_str(&format!("EXTERNAL_NOTIFICATION_URL = {}\n", py_str(url)));
        }
        let mut ca_file = None;
        if opts.tls {
            let names = match &opts.site {
                Site::Host { host, .. } => vec![
                    "localhost".to_string(),
                    "127.0.0.1".to_string(),
                    host.addr.to_string(),
                    host.name.clone(),
                ],
                Site::Loopback => vec!["localhost".into(), "127.0.0.1".into()],
            };
            let tls = TestCa::write(dir, &names)?;
            conf.push_str(&format!(
                "SUSHY_EMULATOR_SSL_CERT = {}\nSUSHY_EMULATOR_SSL_KEY = {}\n",
                py_str(&path_str(&tls.cert)?),
                py_str(&path_str(&tls.key)?)
            ));
            ca_file = Some(tls.ca);
        }
        let conf_file = dir.join("sushy.conf");
        fs::write(&conf_file, conf)?;
        let log = dir.join("sushy.log");
        let mut cmd = opts.site.command(&tools.sushy_emulator);
        cmd.arg("--config").arg(&conf_file);
        let mut daemon = Daemon::spawn(cmd, &log)?;
        let addr = SocketAddr::from((bind, port));
        wait_until(READY, || {
            daemon.check_running("sushy-emulator")?;
            Ok(listening(&opts.site, addr))
        })
        .with_context(|| {
            format!(
                "sushy-emulator on {addr} did not accept connections; its log:\n{}",
                tail(&log, 30)
            )
        })?;
        Ok(Sushy {
            daemon,
            addr,
            user: opts.user.clone(),
            password_file,
            ca_file,
            systems,
            log,
        })
    }

    /// The base URL (`https://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        let scheme = if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// A driver endpoint for system `node`, trusting the test CA, with `timeout`.
    pub fn endpoint(&self, node: &str, timeout: Duration) -> Result<Endpoint> {
        Ok(Endpoint {
            node: node.to_string(),
            protocol: Protocol::Redfish,
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
            user: self.user.clone(),
            password: Secret::from_file(&self.password_file)?,
            tls: match &self.ca_file {
                Some(ca) => Tls::Verify {
                    ca_file: ca.clone(),
                },
                None => Tls::Plain,
            },
            system_id: None,
            timeout,
        })
    }

    /// The requests sushy logged so far (`GET /redfish/v1/Systems 200`, ...), to tell whether a
    /// BMC was called.
    pub fn requests(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                // werkzeug: `127.0.0.1 - - [date] "GET /path HTTP/1.1" 200 -`, with colour codes.
                let start = line.find('"')?;
                let end = line.rfind('"')?;
                let request = line.get(start + 1..end)?;
                let status = line.get(end + 1..)?.split_whitespace().next()?;
                let clean: String = strip_ansi(request);
                let mut parts = clean.split_whitespace();
                let (method, path) = (parts.next()?, parts.next()?);
                Some(format!("{method} {path} {status}"))
            })
            .collect()
    }

    /// The emulator's log, for messages.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Stops the emulator (dropping it does too).
    pub fn stop(&mut self) {
        self.daemon.stop();
    }
}

/// Removes terminal colour codes (`ESC [ ... m`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `s` as a Python string literal.
fn py_str(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
}

/// An htpasswd file with one bcrypt entry, by the virtualenv's `bcrypt` (sushy's own dependency).
/// Cost 4, the least bcrypt allows: sushy checks it on every request, and cost 12 takes 0.2 s.
fn write_htpasswd(tools: &BmcTools, path: &Path, user: &str, password: &str) -> Result<()> {
    ensure!(!user.contains(':'), "an htpasswd user name cannot hold ':'");
    // The password goes through stdin, not the command line.
    let mut child = Command::new(&tools.python)
        .args([
            "-c",
            "import bcrypt, sys; pw = sys.stdin.buffer.read(); \
             print(bcrypt.hashpw(pw, bcrypt.gensalt(rounds=4)).decode())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running the virtualenv's python for bcrypt")?;
    child
        .stdin
        .take()
        .ok_or_else(|| anyhow!("no stdin"))?
        .write_all(password.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "hashing the password with bcrypt failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let hash = String::from_utf8(out.stdout)?.trim().to_string();
    ensure!(hash.starts_with("$2"), "bcrypt printed {hash:?}");
    fs::write(path, format!("{user}:{hash}\n"))?;
    Ok(())
}

/// A test CA and a server certificate it signed.
struct TestCa {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestCa {
    /// Writes `ca.pem`, `cert.pem` and `key.pem` in `dir`; the server certificate names `names`
    /// (host names or IP addresses).
    fn write(dir: &Path, names: &[String]) -> Result<TestCa> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().context("generating the test CA's key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "banyan BMC test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().context("generating the BMC's key")?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "banyan test BMC");
        let cert = params.signed_by(&key, &issuer)?;

        let tls = TestCa {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        fs::write(&tls.ca, ca_cert.pem())?;
        fs::write(&tls.cert, cert.pem())?;
        fs::write(&tls.key, key.serialize_pem())?;
        fs::set_permissions(&tls.key, fs::Permissions::from_mode(0o600))?;
        Ok(tls)
    }
}

/// Whether something accepts TCP connections on `addr` at `site`.
fn listening(site: &Site, addr: SocketAddr) -> bool {
    match site {
        Site::Host {
            host,
            only_inside: true,
        } => {
            // Only the namespace reaches its loopback: ask from inside.
            let probe = format!(
                "import socket; socket.create_connection(('{}', {}), 1)",
                addr.ip(),
                addr.port()
            );
            Command::new(crate::testnet::script())
                .args(["exec", &host.name, "python3", "-c", &probe])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        }
        _ => TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok(),
    }
}

/// Polls `ready` until it answers true, for up to `limit`.
fn wait_until(limit: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("not ready within {}s", limit.as_secs());
        }
        thread::sleep(POLL_EVERY);
    }
}

/// How an [`IpmiSim`] is started.
#[derive(Debug, Clone)]
pub struct IpmiOptions {
    /// The node's name (the BMC's `name` in lan.conf; messages).
    pub name: String,
    pub user: String,
    /// At most 16 characters (IPMI 1.5 passwords; ipmi_sim stores them so).
    pub password: String,
    pub site: Site,
    /// The node's "power": this command runs while the node is on (a `sleep` by default). It is
    /// run by `/bin/sh -c` through `exec`, in a session of its own, at the emulator's site.
    pub node_command: String,
    /// Whether the node is on when the BMC starts.
    pub powered_on: bool,
    /// Serial over LAN: ipmi_sim connects the SOL payload to this TCP address (a guest's serial
    /// port, or a test's listener), as `sol "tcp:ADDR:PORT" 115200` in lan.conf. `None`: no SOL.
    pub sol: Option<SocketAddr>,
}

impl IpmiOptions {
    /// Node `name`, off, running `sleep` when on, user `admin`, on the loopback.
    pub fn new(name: &str) -> IpmiOptions {
        IpmiOptions {
            name: name.to_string(),
            user: "admin".into(),
            password: "ipmi-test-pw".into(),
            site: Site::Loopback,
            node_command: "sleep 100000".into(),
            powered_on: false,
            sol: None,
        }
    }
}

/// A running `ipmi_sim` for one node.
#[derive(Debug)]
pub struct IpmiSim {
    daemon: Daemon,
    /// Where ipmitool connects (UDP).
    pub addr: SocketAddr,
    pub name: String,
    pub user: String,
    /// The password, in a file of mode 0600.
    pub password_file: PathBuf,
    /// The node's directory: `start`, `pid`, `calls.log`, `node.log`, `boot`.
    pub node_dir: PathBuf,
    site: Site,
    ipmitool: PathBuf,
}

impl IpmiSim {
    /// Starts ipmi_sim with its files in `dir` and waits until it answers `chassis power status`.
    pub fn start(tools: &BmcTools, dir: &Path, opts: &IpmiOptions) -> Result<IpmiSim> {
        ensure!(
            opts.password.len() <= 16 && !opts.password.contains('"'),
            "ipmi_sim passwords are at most 16 characters, without '\"'"
        );
        ensure!(
            !opts.user.contains('"') && !opts.name.contains('"'),
            "no '\"' in ipmi_sim names"
        );
        fs::create_dir_all(dir)?;
        let bind = opts.site.bind();
        let port = opts.site.port(true, 623)?;
        let node_dir = dir.join("node");
        let state = dir.join("state");
        let _ = fs::remove_dir_all(&state);
        fs::create_dir_all(&state)?;
        fs::create_dir_all(&node_dir)?;
        let start = node_dir.join("start");
        fs::write(&start, format!("#!/bin/sh\nexec {}\n", opts.node_command))?;
        fs::set_permissions(&start, fs::Permissions::from_mode(0o755))?;
        let password_file = dir.join("password");
        write_secret(&password_file, &opts.password)?;

        let chassis = format!(
            "{} {}",
            path_str(&tools.chassis_control)?,
            path_str(&node_dir)?
        );
        // ipmi_sim splits the quoted string at spaces.
        ensure!(
            !chassis.contains('"') && chassis.split_whitespace().count() == 2,
            "paths with spaces or quotes cannot go into lan.conf: {chassis}"
        );
        // lan.conf: one LAN channel, every authentication type, user 2 as administrator.
        let conf = format!(
            "name \"{name}\"\n\
             set_working_mc 0x20\n\
             \x20 startlan 1\n\
             \x20   addr {bind} {port}\n\
             \x20   priv_limit admin\n\
             \x20   allowed_auths_callback none md2 md5 straight\n\
             \x20   allowed_auths_user none md2 md5 straight\n\
             \x20   allowed_auths_operator none md2 md5 straight\n\
             \x20   allowed_auths_admin none md2 md5 straight\n\
             \x20   guid {pid:08x}{port:024x}\n\
             \x20 endlan\n\
             \x20 chassis_control \"{chassis}\"\n\
             \x20 user 2 true \"{user}\" \"{password}\" admin 10 none md2 md5 straight\n",
            name = opts.name,
            pid = std::process::id(),
            user = opts.user,
            password = opts.password,
        );
        let sol = match opts.sol {
            Some(addr) => format!("  sol \"tcp:{}:{}\" 115200\n", addr.ip(), addr.port()),
            None => String::new(),
        };
        let lan = dir.join("lan.conf");
        fs::write(&lan, conf + &sol)?;
        // The emulated BMC itself: one management controller at the BMC address, no sensors.
        let emu = dir.join("bmc.emu");
        fs::write(
            &emu,
            "mc_setbmc 0x20\n\
             mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             sel_enable 0x20 1000 0x0a\n\
             mc_enable 0x20\n",
        )?;
        let site = opts.site.clone();
        if opts.powered_on {
            // Through the same script, at the same site, as ipmi_sim would.
            let status = site
                .command(&tools.chassis_control)
                .arg(&node_dir)
                .args(["set", "power", "1"])
                .stdin(Stdio::null())
                .status()
                .context("powering the node on")?;
            ensure!(status.success(), "chassis-control set power 1 failed");
        }
        let log = dir.join("ipmi_sim.log");
        let mut cmd = site.command(&tools.ipmi_sim);
        cmd.arg("-c")
            .arg(&lan)
            .arg("-f")
            .arg(&emu)
            .arg("-s")
            .arg(&state)
            .arg("-n");
        let daemon = Daemon::spawn(cmd, &log)?;
        let mut sim = IpmiSim {
            daemon,
            addr: SocketAddr::from((bind, port)),
            name: opts.name.clone(),
            user: opts.user.clone(),
            password_file,
            node_dir,
            site,
            ipmitool: tools.ipmitool.clone(),
        };
        let password = opts.password.clone();
        wait_until(READY, || {
            sim.daemon.check_running("ipmi_sim")?;
            Ok(sim
                .ipmitool_with(&password, &["chassis", "power", "status"])
                .is_ok_and(|o| o.contains("Chassis Power is")))
        })
        .with_context(|| {
            format!(
                "ipmi_sim for {} on {} did not answer; its log:\n{}",
                opts.name,
                sim.addr,
                tail(&log, 30)
            )
        })?;
        Ok(sim)
    }

    /// Runs `ipmitool ARGS` against this BMC from its site, with the right password; returns
    /// stdout, or an error with stderr.
    pub fn ipmitool(&self, args: &[&str]) -> Result<String> {
        let password = Secret::from_file(&self.password_file)?;
        self.ipmitool_with(password.expose(), args)
    }

    fn ipmitool_with(&self, password: &str, args: &[&str]) -> Result<String> {
        let port = self.addr.port().to_string();
        let host = self.addr.ip().to_string();
        let out = self
            .site
            .command(&self.ipmitool)
            .args(["-I", "lanplus", "-C", "3", "-R", "1", "-N", "1", "-E"])
            .args(["-H", &host, "-p", &port, "-U", &self.user])
            .args(args)
            .env("IPMI_PASSWORD", password)
            .stdin(Stdio::null())
            .output()
            .context("running ipmitool")?;
        ensure!(
            out.status.success(),
            "ipmitool {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A driver endpoint for this BMC, with `timeout`.
    pub fn endpoint(&self, timeout: Duration) -> Result<Endpoint> {
        Ok(Endpoint {
            node: self.name.clone(),
            protocol: Protocol::Ipmi,
            host: self.addr.ip().to_string(),
            port: self.addr.port(),
            user: self.user.clone(),
            password: Secret::from_file(&self.password_file)?,
            tls: Tls::Plain,
            system_id: None,
            timeout,
        })
    }

    /// The PID of the node's process while it runs ("powered on"), else `None`.
    pub fn node_pid(&self) -> Option<u32> {
        let pid: u32 = fs::read_to_string(self.node_dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        alive(pid).then_some(pid)
    }

    /// What the BMC asked of the chassis so far (`get power`, `set power 0`, ...).
    pub fn chassis_calls(&self) -> Vec<String> {
        fs::read_to_string(self.node_dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The boot device last set through the BMC (`pxe`, `disk`, ...), if any.
    pub fn boot_device(&self) -> Option<String> {
        fs::read_to_string(self.node_dir.join("boot"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Stops the emulator and the node's process (dropping it does too).
    pub fn stop(&mut self) {
        self.daemon.stop();
        // The node runs in a session of its own, out of the emulator's group.
        if let Some(pid) = self.node_pid() {
            kill_group(pid);
        }
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_strings_are_quoted() {
        assert_eq!(py_str("a'b\\c"), "'a\\'b\\\\c'");
        assert_eq!(py_str("x\ny"), "'x\\u000ay'");
    }

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(
            strip_ansi("\u{1b}[35m\u{1b}[1mPOST /x HTTP/1.1\u{1b}[0m"),
            "POST /x HTTP/1.1"
        );
    }
}

//! sshd inside test hosts, for the tests that reach hosts the way operators do: over ssh (pdsh,
//! clush, `mpirun` launching remote daemons).
//!
//! Each sshd runs in its host's network namespace under `unshare --uts`, with the host's name as
//! its host name, and with keys and configuration of its own in the test's directory (no
//! `/etc/ssh` is used or changed). The client's [`ssh_config`] maps every host name to its
//! address and logs in as root with the test's key.

use crate::support::{find_program, note_skip, strict, tail};
use crate::testnet::Testnet;
use anyhow::{anyhow, bail, ensure, Context, Result};
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long an sshd may take to accept connections.
const READY: Duration = Duration::from_secs(20);
const POLL_EVERY: Duration = Duration::from_millis(100);

/// The programs that run sshd in a host.
#[derive(Debug, Clone)]
pub struct SshTools {
    pub sshd: PathBuf,
    pub ssh_keygen: PathBuf,
    pub unshare: PathBuf,
}

/// Finds sshd, ssh, ssh-keygen and unshare, and `extra` programs `(command, Debian package)`.
/// Missing: an error (unless BANYAN_TEST_LENIENT=1); otherwise `SKIPPED: ...` is printed and `Ok(None)`
/// returned, and the test returns.
pub fn require(why: &str, extra: &[(&str, &str)]) -> Result<Option<SshTools>> {
    let wanted = [
        ("sshd", "openssh-server"),
        ("ssh", "openssh-client"),
        ("ssh-keygen", "openssh-client"),
        ("unshare", "util-linux"),
        ("hostname", "hostname"),
    ];
    let missing: Vec<String> = extra
        .iter()
        .chain(wanted.iter())
        .filter(|(cmd, _)| find_program(cmd).is_none())
        .map(|(cmd, pkg)| format!("{cmd} (Debian package {pkg})"))
        .collect();
    if !missing.is_empty() {
        let why = format!("{why} needs {}", missing.join(", "));
        if strict() {
            bail!("{why}; missing (BANYAN_TEST_LENIENT=1 skips instead)");
        }
        note_skip(&why);
        return Ok(None);
    }
    let found = |cmd: &str| find_program(cmd).ok_or_else(|| anyhow!("{cmd} vanished"));
    Ok(Some(SshTools {
        sshd: found("sshd")?,
        ssh_keygen: found("ssh-keygen")?,
        unshare: found("unshare")?,
    }))
}

/// The client configuration [`start`] writes in `dir`.
pub fn ssh_config(dir: &Path) -> PathBuf {
    dir.join("ssh_config")
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("path {} is not UTF-8", p.display()))
}

/// Whether `pid` is a live process (a zombie is not: it has exited and waits to be reaped).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
    })
}

/// Starts sshd in the first `count` hosts of `net`: keys and configs in `dir`, each sshd under
/// `unshare --uts` with its host's name as host name (so commands run over ssh see it), and the
/// client's [`ssh_config`] naming every host of the net. Returns the sshd PIDs (stop them with
/// [`Testnet::terminate`]) once every sshd accepts connections.
pub fn start(net: &mut Testnet, tools: &SshTools, dir: &Path, count: usize) -> Result<Vec<u32>> {
    let keygen = |file: &Path| -> Result<()> {
        let out = Command::new(&tools.ssh_keygen)
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "banyan-deploy-test",
                "-f",
            ])
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .context("running ssh-keygen")?;
        ensure!(
            out.status.success(),
            "ssh-keygen -f {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    let host_key = dir.join("ssh_host_ed25519_key");
    let client_key = dir.join("id_ed25519");
    keygen(&host_key)?;
    keygen(&client_key)?;
    let authorized = dir.join("authorized_keys");
    fs::copy(client_key.with_extension("pub"), &authorized).context("writing authorized_keys")?;
    // sshd's privilege separation directory, made by the package's service on a normal system.
    fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;

    let hosts = net.hosts().to_vec();
    let mut pids = Vec::new();
    let mut client = String::new();
    for h in &hosts {
        client.push_str(&format!("Host {}\n    HostName {}\n", h.name, h.addr));
    }
    client.push_str(&format!(
        "Host *\n    User root\n    IdentityFile {}\n    IdentitiesOnly yes\n    \
         StrictHostKeyChecking no\n    UserKnownHostsFile /dev/null\n    \
         GlobalKnownHostsFile /dev/null\n    LogLevel ERROR\n    BatchMode yes\n    \
         ConnectTimeout 5\n",
        client_key.display()
    ));
    fs::write(ssh_config(dir), client).context("writing ssh_config")?;

    for (i, h) in hosts.iter().enumerate().take(count) {
        let config = dir.join(format!("sshd_{}.conf", h.name));
        fs::write(
            &config,
            format!(
                "ListenAddress {}\nPort 22\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 StrictModes no\nPidFile none\nLogLevel INFO\n",
                h.addr,
                host_key.display(),
                authorized.display()
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        // The shell sets the host name in the new UTS namespace and execs sshd: the PID stays sshd's.
        let log = dir.join(format!("sshd_{}.log", h.name));
        let args = [
            "--uts",
            "sh",
            "-c",
            "hostname \"$1\" && exec \"$2\" -D -e -f \"$3\"",
            "sh",
            h.name.as_str(),
            path_str(&tools.sshd)?,
            path_str(&config)?,
        ];
        let unshare = tools.unshare.clone();
        let pid = net.spawn(i, &unshare, &args, &[], &log)?;
        pids.push(pid);
    }
    for (h, &pid) in hosts.iter().zip(&pids) {
        let addr = SocketAddr::from((h.addr, 22));
        let deadline = Instant::now() + READY;
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            let log = dir.join(format!("sshd_{}.log", h.name));
            ensure!(
                alive(pid),
                "sshd on {} exited; its log:\n{}",
                h.name,
                tail(&log, 10)
            );
            ensure!(
                Instant::now() < deadline,
                "sshd on {} does not accept connections on {addr} after {READY:?}; its log:\n{}",
                h.name,
                tail(&log, 10)
            );
            thread::sleep(POLL_EVERY);
        }
    }
    Ok(pids)
}

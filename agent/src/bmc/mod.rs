//! BMC drivers: a node's power and next boot device, through its baseboard management controller.
//!
//! One small trait, [`Bmc`], with a driver per protocol in a file of its own: [`redfish`] (JSON
//! over HTTP(S)) and [`ipmi`] (`ipmitool -I lanplus`). [`connect`] builds the driver an
//! [`Endpoint`] names. The root and an agent named as a *BMC gateway* both call it: the crate is
//! linked by both, and every operation is a future that never blocks the runtime it runs on (the
//! Redfish client runs on tokio's blocking pool, ipmitool is a child process).
//!
//! What is here: power state, reset of a [`ResetKind`], the next boot device, and [`Bmc::check`]
//! (reachable, credentials accepted). Every operation is bounded by the endpoint's timeout, and
//! every error is a [`BmcError`] that names the node, the BMC's address and what to do. Data
//! from a BMC is hostile input: it never panics the caller, whatever it answers.
//!
//! What is not here: which node has which BMC (the root's `root.toml`, `banyan_root::bmcconf`),
//! scope, audit, dry runs and waiting for a new power state to show (the action path does those),
//! and bounding how many BMCs are talked to at once (each caller bounds its own).

pub mod ipmi;
pub mod redfish;
pub mod sol;

use std::fmt;
use std::future::Future;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// What a BMC operation returns: a boxed future that may move between threads.
pub type BmcFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BmcError>> + Send + 'a>>;

/// Longest time one operation may take unless the endpoint says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// One node's BMC, whatever its protocol.
pub trait Bmc: Send + Sync {
    /// Where this driver talks to, and as which node.
    fn endpoint(&self) -> &Endpoint;
    /// The power state the BMC reports now.
    fn power_state(&self) -> BmcFuture<'_, PowerState>;
    /// Asks the BMC for a reset of `kind`. It returns once the BMC took the request; the new
    /// state shows later (a caller polls [`Bmc::power_state`]). A kind the BMC does not offer is
    /// an [`ErrorKind::Unsupported`] error, and nothing is sent.
    fn reset(&self, kind: ResetKind) -> BmcFuture<'_, ()>;
    /// Sets the device the node boots from next.
    fn set_next_boot(&self, device: BootDevice) -> BmcFuture<'_, ()>;
    /// Whether the BMC answers and takes the credentials; what it says of the node.
    fn check(&self) -> BmcFuture<'_, CheckReport>;
}

/// The driver for `endpoint`. Fails only on a local problem (an unreadable CA file, a Redfish
/// endpoint without a TLS choice); the BMC itself is first contacted by the first operation.
pub fn connect(endpoint: Endpoint) -> Result<Arc<dyn Bmc>, BmcError> {
    Ok(match endpoint.protocol {
        Protocol::Redfish => Arc::new(redfish::Redfish::new(endpoint)?),
        Protocol::Ipmi => Arc::new(ipmi::Ipmi::new(endpoint)),
    })
}

/// The BMC protocols banyan speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Redfish,
    Ipmi,
}

impl Protocol {
    /// The name used in config files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Redfish => "redfish",
            Protocol::Ipmi => "ipmi",
        }
    }

    /// The port a BMC listens on unless told otherwise (HTTPS for Redfish; RMCP+ for IPMI).
    pub fn default_port(self, tls: &Tls) -> u16 {
        match (self, tls) {
            (Protocol::Redfish, Tls::Plain) => 80,
            (Protocol::Redfish, _) => 443,
            (Protocol::Ipmi, _) => 623,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A power state as a BMC reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PowerState {
    On,
    Off,
    /// Anything else, as the BMC spelt it (Redfish `PoweringOn`, `PoweringOff`, `Paused`, ...).
    Other(String),
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PowerState::On => f.write_str("On"),
            PowerState::Off => f.write_str("Off"),
            PowerState::Other(s) => f.write_str(s),
        }
    }
}

/// The resets an operator can ask for, named as Redfish names them. Each driver maps them to
/// what its protocol has, and refuses those it has not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetKind {
    /// Power on.
    On,
    /// Ask the operating system to shut down (ACPI power button).
    GracefulShutdown,
    /// Cut power now.
    ForceOff,
    /// Ask the operating system to reboot.
    GracefulRestart,
    /// Reset the node now, without shutting down.
    ForceRestart,
    /// Power off, then on again.
    PowerCycle,
}

impl ResetKind {
    /// Every kind, in the order of the enum.
    pub const ALL: [ResetKind; 6] = [
        ResetKind::On,
        ResetKind::GracefulShutdown,
        ResetKind::ForceOff,
        ResetKind::GracefulRestart,
        ResetKind::ForceRestart,
        ResetKind::PowerCycle,
    ];

    /// Redfish's name for this kind (`ResetType`).
    pub fn as_str(self) -> &'static str {
        match self {
            ResetKind::On => "On",
            ResetKind::GracefulShutdown => "GracefulShutdown",
            ResetKind::ForceOff => "ForceOff",
            ResetKind::GracefulRestart => "GracefulRestart",
            ResetKind::ForceRestart => "ForceRestart",
            ResetKind::PowerCycle => "PowerCycle",
        }
    }

    /// The power state this kind leaves the node in once done.
    pub fn final_state(self) -> PowerState {
        match self {
            ResetKind::GracefulShutdown | ResetKind::ForceOff => PowerState::Off,
            _ => PowerState::On,
        }
    }
}

impl fmt::Display for ResetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ResetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ResetKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let all: Vec<&str> = ResetKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown reset kind {s:?}: one of {}", all.join(", "))
            })
    }
}

/// A device to boot from next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BootDevice {
    /// The network (PXE).
    Pxe,
    /// The first local disk.
    Disk,
}

impl BootDevice {
    pub fn as_str(self) -> &'static str {
        match self {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
        }
    }
}

impl fmt::Display for BootDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for BootDevice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pxe" => Ok(BootDevice::Pxe),
            "disk" => Ok(BootDevice::Disk),
            _ => Err(format!("unknown boot device {s:?}: pxe or disk")),
        }
    }
}

/// What [`Bmc::check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    /// The system the driver acts on: the Redfish system's path, or the IPMI host and port.
    pub system: String,
    /// Its power state now.
    pub power: PowerState,
    /// The resets the BMC offers.
    pub resets: Vec<ResetKind>,
}

/// How a Redfish driver reaches its BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// HTTPS, trusting only the CA certificates in this PEM file.
    Verify { ca_file: PathBuf },
    /// HTTPS without checking the BMC's certificate: the operator said so (`insecure = true`).
    Insecure,
    /// Plain HTTP (test rigs, BMCs behind a trusted management network).
    Plain,
}

/// A password or other secret: never shown by `Debug` or `Display`, so it cannot reach a log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(Arc::from(s.into()))
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret from `path`: its first line, without the line end. The file must be a
    /// regular file owned by the user running this process and readable by no one else (mode
    /// 0600 or 0400), as ssh demands of private keys: a secret others can read is refused, not
    /// used.
    pub fn from_file(path: &Path) -> Result<Secret, SecretFileError> {
        use std::os::unix::fs::MetadataExt;
        let fail = |why: String| SecretFileError {
            path: path.to_path_buf(),
            why,
        };
        // Checked on the opened file, so that the file checked is the file read.
        let mut file = std::fs::File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
        let meta = file
            .metadata()
            .map_err(|e| fail(format!("cannot stat: {e}")))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(fail(format!(
                "owned by uid {}, not by this process's user (uid {me}): chown it to that user",
                meta.uid()
            )));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "mode {mode:04o} lets others read it: chmod 600 {}",
                path.display()
            )));
        }
        // A password file is a line; a bigger file is a mistake (a key, a log), not a password.
        let mut text = String::new();
        (&mut file)
            .take(64 * 1024)
            .read_to_string(&mut text)
            .map_err(|e| fail(format!("cannot read as text: {e}")))?;
        let first = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if first.is_empty() {
            return Err(fail(
                "is empty: write the password on its first line".into(),
            ));
        }
        Ok(Secret::new(first))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<hidden>)")
    }
}

/// A secret file that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("password file {path}: {why}")]
pub struct SecretFileError {
    pub path: PathBuf,
    pub why: String,
}

/// Everything a driver needs to talk to one node's BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The node this BMC controls, for messages and Redfish system discovery.
    pub node: String,
    pub protocol: Protocol,
    /// Host name or IP address of the BMC.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Secret,
    /// Redfish only: how to reach the service.
    pub tls: Tls,
    /// Redfish only: the system's id under `/redfish/v1/Systems/`; `None` discovers it (the
    /// only system, or the one whose `Id` or `Name` is the node's name).
    pub system_id: Option<String>,
    /// Longest time one operation may take, all its requests and retries included.
    pub timeout: Duration,
}

impl Endpoint {
    /// The BMC's address as messages show it: `https://host:port`, `ipmi://host:port`.
    pub fn address(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = match (self.protocol, &self.tls) {
            (Protocol::Ipmi, _) => "ipmi",
            (Protocol::Redfish, Tls::Plain) => "http",
            (Protocol::Redfish, _) => "https",
        };
        format!("{scheme}://{host}:{}", self.port)
    }

    /// An error of this endpoint.
    pub fn error(&self, kind: ErrorKind) -> BmcError {
        BmcError {
            node: self.node.clone(),
            address: self.address(),
            kind,
        }
    }
}

/// A failed BMC operation: the node, the BMC's address, and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{node}: BMC {address}: {kind}")]
pub struct BmcError {
    pub node: String,
    pub address: String,
    pub kind: ErrorKind,
}

/// What went wrong with a BMC, each with what the operator can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    /// No connection (refused, no route, unknown host).
    #[error("cannot connect ({0}): check that the BMC is up and that its address and port in root.toml are right")]
    Unreachable(String),
    /// No complete answer in time (a dead host, a hung BMC, an answer trickling in).
    #[error("no complete answer within {}s: the BMC is slow, hung or unreachable; retry later, or raise the timeout", .0.as_secs_f64())]
    Timeout(Duration),
    /// The TLS handshake failed (certificate not signed by the CA, wrong host name, ...).
    #[error("TLS: {0}: give the CA that signed the BMC's certificate in ca_file (or set insecure = true to skip the check)")]
    Tls(String),
    /// The BMC refused the user or the password.
    #[error("credentials refused ({0}): check user and password_file for this node in root.toml")]
    Credentials(String),
    /// The user is known but may not do this.
    #[error("forbidden ({0}): give the BMC user the Operator or Administrator role")]
    Forbidden(String),
    /// The BMC has no such resource (a wrong system id, a service without the feature).
    #[error("not found ({0})")]
    NotFound(String),
    /// The BMC failed the request (HTTP 5xx, an IPMI completion code).
    #[error(
        "the BMC failed the request ({0}); retry later, and look at the BMC's own log if it lasts"
    )]
    Failed(String),
    /// The answer is not what the protocol says it should be (not JSON, HTML, too big,
    /// redirected in a loop or elsewhere).
    #[error("unexpected answer ({0}): is this address a BMC speaking this protocol? check address, port and protocol in root.toml")]
    BadAnswer(String),
    /// The BMC does not offer what was asked.
    #[error("{0}")]
    Unsupported(String),
    /// A local problem: a tool missing, a CA file unreadable, a task that panicked.
    #[error("{0}")]
    Local(String),
    /// The call went through a BMC gateway agent, which failed it or could not be reached.
    #[error("{0}")]
    Gateway(String),
}

/// An HTTP header value or log field that is safe to show: at most `max` characters, one line.
pub(crate) fn excerpt(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let flat = flat.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        flat
    } else {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Secret::new("hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        let ep = Endpoint {
            node: "n1".into(),
            protocol: Protocol::Ipmi,
            host: "n1-bmc".into(),
            port: 623,
            user: "admin".into(),
            password: s,
            tls: Tls::Plain,
            system_id: None,
            timeout: DEFAULT_TIMEOUT,
        };
        assert!(!format!("{ep:?}").contains("hunter2"));
    }

    #[test]
    fn secret_files_must_be_private() {
        let dir = std::env::temp_dir().join(format!("banyan-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Secret::from_file(&file).unwrap_err();
        assert!(err.why.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Secret::from_file(&file).unwrap().expose(), "s3cret");
        std::fs::write(&file, "\n").unwrap();
        assert!(Secret::from_file(&file).unwrap_err().why.contains("empty"));
        assert!(Secret::from_file(&dir.join("missing"))
            .unwrap_err()
            .why
            .contains("cannot open"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn excerpts_are_one_short_line() {
        assert_eq!(excerpt("a\n\tb  c", 10), "a b c");
        assert_eq!(excerpt("abcdefghijkl", 4), "abcd...");
    }

    #[test]
    fn reset_kinds_parse_by_redfish_name() {
        assert_eq!("forceoff".parse::<ResetKind>(), Ok(ResetKind::ForceOff));
        assert!("Nmi"
            .parse::<ResetKind>()
            .unwrap_err()
            .contains("PowerCycle"));
    }
}

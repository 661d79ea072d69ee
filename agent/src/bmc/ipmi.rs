//! The IPMI driver: `ipmitool -I lanplus` as a child process, one per operation.
//!
//! Why ipmitool and not a Rust IPMI library: the young Rust crates miss steps of the RMCP+
//! session (privilege level), while ipmitool is what every site already trusts. The password goes
//! through the `IPMI_PASSWORD` environment variable (`-E`), never the command line, where any
//! user could read it in `ps`. `-C 3` names the cipher suite (without it each call spends seconds
//! probing suites), `-R 1 -N 1` make a dead BMC fail in about two seconds instead of twenty. `-v`
//! is there for its failure messages: they tell a refused password from a BMC that never
//! answered, which the plain message ("Unable to establish IPMI v2 / RMCP+ session") does not.
//!
//! Each call runs under the endpoint's timeout, all attempts included; a call that outlives it is
//! killed. Idempotent calls (status, on, off, soft, bootdev) are tried twice when the BMC did not
//! answer; `cycle` and `reset` are tried once, since the first may have been carried out.

use super::{
    excerpt, Bmc, BmcFuture, BootDevice, CheckReport, Endpoint, ErrorKind, PowerState, ResetKind,
};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;
use tracing::debug;

/// Attempts of an idempotent call whose BMC did not answer.
pub const ATTEMPTS: u32 = 2;

/// Largest output kept from ipmitool (its answers are a line or two).
const MAX_OUTPUT: usize = 64 * 1024;

/// An IPMI BMC, reached with ipmitool.
pub struct Ipmi {
    ep: Endpoint,
    program: PathBuf,
}

impl Ipmi {
    /// A driver for `ep`, running `ipmitool` from the PATH.
    pub fn new(ep: Endpoint) -> Ipmi {
        Ipmi {
            ep,
            program: PathBuf::from("ipmitool"),
        }
    }

    /// Runs `program` instead of `ipmitool` from the PATH.
    pub fn with_program(mut self, program: PathBuf) -> Ipmi {
        self.program = program;
        self
    }

    /// Runs `ipmitool ... ARGS` and returns its standard output, retrying when `retry` and the
    /// BMC did not answer.
    async fn call(&self, args: &[&str], retry: bool) -> Result<String, ErrorKind> {
        if self.ep.host.starts_with('-') || self.ep.user.starts_with('-') {
            // ipmitool would read them as options.
            return Err(ErrorKind::Local(format!(
                "host {:?} or user {:?} starts with '-': fix root.toml",
                self.ep.host, self.ep.user
            )));
        }
        let deadline = Instant::now() + self.ep.timeout;
        let attempts = if retry { ATTEMPTS } else { 1 };
        let mut last = ErrorKind::Timeout(self.ep.timeout);
        for attempt in 1..=attempts {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.once(args, left).await {
                Ok(out) => return Ok(out),
                Err(e @ (ErrorKind::Unreachable(_) | ErrorKind::Timeout(_))) => {
                    debug!(node = %self.ep.node, bmc = %self.ep.address(), attempt, error = %e, "ipmitool: no answer");
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn once(&self, args: &[&str], left: std::time::Duration) -> Result<String, ErrorKind> {
        let port = self.ep.port.to_string();
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(["-v", "-I", "lanplus", "-C", "3", "-R", "1", "-N", "1", "-E"])
            .args(["-H", &self.ep.host, "-p", &port, "-U", &self.ep.user])
            .args(args)
            .env("IPMI_PASSWORD", self.ep.password.expose())
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A call that outlives its timeout is dropped, and with it the child.
            .kill_on_drop(true);
        let started = Instant::now();
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ErrorKind::Local(format!(
                    "{} not found: install the Debian package ipmitool",
                    self.program.display()
                ))
            } else {
                ErrorKind::Local(format!("cannot run {}: {e}", self.program.display()))
            }
        })?;
        let output = match tokio::time::timeout(left, child.wait_with_output()).await {
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                return Err(ErrorKind::Local(format!(
                    "waiting for {}: {e}",
                    self.program.display()
                )))
            }
            Err(_) => return Err(ErrorKind::Timeout(self.ep.timeout)),
        };
        let keep = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(MAX_OUTPUT)]).into_owned();
        let stdout = keep(&output.stdout);
        let stderr = keep(&output.stderr);
        debug!(
            node = %self.ep.node,
            bmc = %self.ep.address(),
            args = %args.join(" "),
            status = %output.status,
            ms = started.elapsed().as_millis() as u64,
            "ipmitool"
        );
        if output.status.success() {
            return Ok(stdout);
        }
        Err(classify(&stdout, &stderr))
    }
}

/// What a failed ipmitool run means, from its messages.
fn classify(stdout: &str, stderr: &str) -> ErrorKind {
    let all = format!("{stderr}\n{stdout}");
    // The first line holding one of `markers`, as the message's detail.
    let line_with = |markers: &[&str]| {
        all.lines()
            .map(str::trim)
            .find(|l| markers.iter().any(|m| l.contains(m)))
            .map(|l| excerpt(l.trim_start_matches("> "), 160))
    };
    const REFUSED: &[&str] = &[
        "RAKP 2 HMAC is invalid",
        "unauthorized name",
        "RAKP 2 message indicates an error",
        "Invalid user name",
        "password is invalid",
    ];
    const SILENT: &[&str] = &[
        "Get Auth Capabilities error",
        "No response from remote controller",
        "Unable to establish IPMI v2",
    ];
    if let Some(line) = line_with(REFUSED) {
        ErrorKind::Credentials(format!("the BMC refused the RMCP+ session: {line}"))
    } else if let Some(line) = line_with(&["nsufficient privilege"]) {
        ErrorKind::Forbidden(line)
    } else if let Some(line) = line_with(&["Address lookup for"]) {
        ErrorKind::Unreachable(line)
    } else if let Some(line) = line_with(SILENT) {
        ErrorKind::Unreachable(format!("no answer over RMCP+ (UDP): {line}"))
    } else {
        // The last line that is not ipmitool's own chatter.
        let detail = all
            .lines()
            .map(str::trim)
            .rfind(|l| {
                !l.is_empty() && !l.starts_with("Loading IANA") && !l.starts_with("Running ")
            })
            .map(|l| excerpt(l, 160))
            .unwrap_or_else(|| "ipmitool failed without a message".into());
        ErrorKind::Failed(detail)
    }
}

/// The power state in `chassis power status` output.
fn parse_status(stdout: &str) -> Result<PowerState, ErrorKind> {
    for line in stdout.lines() {
        if let Some(state) = line.trim().strip_prefix("Chassis Power is ") {
            return Ok(match state.trim() {
                "on" => PowerState::On,
                "off" => PowerState::Off,
                other => PowerState::Other(excerpt(other, 40)),
            });
        }
    }
    Err(ErrorKind::BadAnswer(format!(
        "ipmitool chassis power status printed no power state: {}",
        excerpt(stdout, 80)
    )))
}

/// ipmitool's `chassis power` argument for `kind`, and whether it may be retried.
fn power_command(kind: ResetKind) -> Result<(&'static str, bool), ErrorKind> {
    Ok(match kind {
        ResetKind::On => ("on", true),
        ResetKind::ForceOff => ("off", true),
        ResetKind::GracefulShutdown => ("soft", true),
        ResetKind::ForceRestart => ("reset", false),
        ResetKind::PowerCycle => ("cycle", false),
        ResetKind::GracefulRestart => {
            return Err(ErrorKind::Unsupported(
                "IPMI has no graceful restart: use GracefulShutdown then On, or ForceRestart"
                    .into(),
            ))
        }
    })
}

/// The resets IPMI offers.
const IPMI_RESETS: [ResetKind; 5] = [
    ResetKind::On,
    ResetKind::GracefulShutdown,
    ResetKind::ForceOff,
    ResetKind::ForceRestart,
    ResetKind::PowerCycle,
];

impl Bmc for Ipmi {
    fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    fn power_state(&self) -> BmcFuture<'_, PowerState> {
        Box::pin(async move {
            let out = self
                .call(&["chassis", "power", "status"], true)
                .await
                .map_err(|k| self.ep.error(k))?;
            parse_status(&out).map_err(|k| self.ep.error(k))
        })
    }

    fn reset(&self, kind: ResetKind) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            let (arg, retry) = power_command(kind).map_err(|k| self.ep.error(k))?;
            debug!(node = %self.ep.node, bmc = %self.ep.address(), reset = %kind, "ipmi power");
            self.call(&["chassis", "power", arg], retry)
                .await
                .map(drop)
                .map_err(|k| self.ep.error(k))
        })
    }

    fn set_next_boot(&self, device: BootDevice) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            self.call(&["chassis", "bootdev", device.as_str()], true)
                .await
                .map(drop)
                .map_err(|k| self.ep.error(k))
        })
    }

    fn check(&self) -> BmcFuture<'_, CheckReport> {
        Box::pin(async move {
            let power = self.power_state().await?;
            Ok(CheckReport {
                system: self.ep.address(),
                power,
                resets: IPMI_RESETS.to_vec(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status("Chassis Power is on\n"), Ok(PowerState::On));
        assert_eq!(parse_status("Chassis Power is off"), Ok(PowerState::Off));
        assert!(parse_status("garbage").is_err());
    }

    #[test]
    fn failures_are_told_apart() {
        let refused = "Loading IANA PEN Registry...\n> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n";
        assert!(matches!(classify("", refused), ErrorKind::Credentials(_)));
        let dead = "Loading IANA PEN Registry...\nGet Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session\n";
        assert!(matches!(classify("", dead), ErrorKind::Unreachable(_)));
        assert!(matches!(
            classify("", "Unable to set Chassis Power Control to Cycle"),
            ErrorKind::Failed(_)
        ));
    }

    #[test]
    fn graceful_restart_is_refused_and_cycles_are_not_retried() {
        assert!(power_command(ResetKind::GracefulRestart).is_err());
        assert_eq!(power_command(ResetKind::PowerCycle), Ok(("cycle", false)));
        assert_eq!(power_command(ResetKind::ForceOff), Ok(("off", true)));
    }
}

//! A node's serial console through IPMI serial-over-LAN: `ipmitool -I lanplus ... sol activate`
//! on a pseudo-terminal of its own.
//!
//! ipmitool's SOL client insists on a terminal (it puts its standard input in raw mode), so it is
//! given the slave side of a fresh pty as its controlling terminal, in a session of its own; the
//! caller reads and writes the master side. The password goes through `IPMI_PASSWORD`, as for the
//! power calls ([`super::ipmi`]). A SOL payload left active by an earlier client that died
//! (ipmitool refuses to activate over it) is deactivated first.
//!
//! Closing sends ipmitool its own escape (`~.`, after a line end), which deactivates the payload
//! at the BMC, then kills the process group if it lingers. What is not here: who may type (the
//! root's console hub decides), the Redfish serial console (no BMC this project tests offers
//! one), and a console behind a BMC gateway.

use super::{Endpoint, Protocol};
use nix::pty::openpty;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{setsid, Pid};
use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

nix::ioctl_write_int_bad!(set_controlling_tty, nix::libc::TIOCSCTTY);

/// How long ipmitool is given to leave after its escape before it is killed.
const LEAVE_GRACE: Duration = Duration::from_secs(3);

/// A running SOL client.
pub struct Sol {
    child: Child,
    master: File,
}

impl Sol {
    /// Starts `program` (ipmitool) on a new pty, attached to the SOL of `ep`'s BMC.
    pub fn open(ep: &Endpoint, program: &Path) -> Result<Sol, String> {
        if ep.protocol != Protocol::Ipmi {
            return Err(format!(
                "{}'s BMC speaks {}: banyan's console needs IPMI serial-over-LAN",
                ep.node, ep.protocol
            ));
        }
        if ep.host.starts_with('-') || ep.user.starts_with('-') {
            return Err("a BMC host or user starting with '-' would be read as an option".into());
        }
        let port = ep.port.to_string();
        let base = |cmd: &mut Command| {
            cmd.args(["-I", "lanplus", "-C", "3", "-R", "1", "-N", "1", "-E"])
                .args(["-H", &ep.host, "-p", &port, "-U", &ep.user])
                .env("IPMI_PASSWORD", ep.password.expose())
                .env("LC_ALL", "C");
        };
        // A payload another client left active: ipmitool would refuse to activate over it.
        let mut deactivate = Command::new(program);
        base(&mut deactivate);
        let _ = deactivate
            .args(["sol", "deactivate"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();

        let pty = openpty(None, None).map_err(|e| format!("cannot open a pty: {e}"))?;
        let slave = File::from(pty.slave);
        let stdio = |f: &File| f.try_clone().map(Stdio::from);
        let mut cmd = Command::new(program);
        base(&mut cmd);
        cmd.args(["sol", "activate"])
            .env("TERM", "vt100")
            .stdin(stdio(&slave).map_err(|e| e.to_string())?)
            .stdout(stdio(&slave).map_err(|e| e.to_string())?)
            .stderr(stdio(&slave).map_err(|e| e.to_string())?);
        // SAFETY: between fork and exec only async-signal-safe calls: setsid(2) and ioctl(2) on
        // the already open standard input.
        unsafe {
            cmd.pre_exec(|| {
                setsid().map_err(std::io::Error::from)?;
                set_controlling_tty(0, 0).map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "{} not found: install the Debian package ipmitool",
                    program.display()
                )
            } else {
                format!("cannot run {}: {e}", program.display())
            }
        })?;
        drop(slave);
        Ok(Sol {
            child,
            master: File::from(pty.master),
        })
    }

    /// A handle that reads what the console prints (blocking reads; an error once it is gone).
    pub fn reader(&self) -> std::io::Result<File> {
        self.master.try_clone()
    }

    /// A handle that types on the console.
    pub fn writer(&self) -> std::io::Result<File> {
        self.master.try_clone()
    }

    /// Whether ipmitool has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Leaves the session: ipmitool's escape, then the process group killed if it lingers.
    pub fn close(mut self) {
        let _ = self.master.write_all(b"\r~.");
        let deadline = Instant::now() + LEAVE_GRACE;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

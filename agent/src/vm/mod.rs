//! QEMU guests on this node: the supervisor that launches, lists, stops and re-attaches to them
//! ([`Manager`]), without leaking processes or files.
//!
//! Each guest is one QEMU process in its own session, started from a clean environment, watched
//! through its QMP socket ([`qmp`]) and reaped by the manager that started it, and one directory
//! `STATE_DIR/vm/NAME/` holding everything it uses: the state file (`state.json`, written
//! atomically), the QMP and serial sockets, the serial log, QEMU's own output, its OVMF vars copy
//! and its disk overlay. When a guest ends (stopped, TTL expired, crashed) the directory goes with
//! it. Guests outlive the agent by design: a new [`Manager::open`] re-attaches to every guest
//! whose QEMU is still the same process (pid, start time, boot) and answers QMP, and reports the
//! others as crashed after removing their files (listed as crashed until a stop of their name,
//! or for ten minutes of `tick`; a crash found by `tick` is also one `TickEvent`). TTLs are absolute deadlines kept in the
//! state file, so a restart does not extend them.
//!
//! The agent reaches it through the `vm` action executor ([`crate::actions::vm`]), which owns the
//! node's one manager and ticks it. It does no async I/O: its calls block (QMP round trips, a stop waits for the guest to power
//! off), so async code calls it through `tokio::task::spawn_blocking`. It does not make the
//! guest image (`scripts/lib/guest image` does, for tests).
//!
//! The accelerator comes from [`accel::HostCaps`] (KVM only where it really works, TCG
//! otherwise; SEV-SNP and TDX only where the host has them, and untested without such a host).

pub mod accel;
pub mod config;
pub mod guest;
pub mod manager;
pub mod qmp;
pub mod serial;

pub use accel::{Accel, AccelChoice, Confidential, HostCaps};
pub use config::VmConfig;
pub use guest::{Boot, Forward, GuestInfo, GuestJoin, GuestState, LaunchSpec};
pub use manager::{Manager, StopOutcome, TickEvent};

/// The longest guest name: it becomes a directory name and part of socket paths.
pub const MAX_NAME: usize = 48;

/// Everything a guest operation can refuse or fail with. Messages name the thing and what to do.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("bad guest name '{name}': {why}")]
    BadName { name: String, why: &'static str },
    #[error("a guest named {0} already exists on this node: stop it first or choose another name")]
    Duplicate(String),
    #[error("no guest named {0} on this node")]
    Unknown(String),
    /// Input that cannot work here (memory, paths, accelerator, ...): the message says why.
    #[error("{0}")]
    Refused(String),
    #[error("host port {0} is in use: free it or choose another port (0 picks a free one)")]
    PortInUse(u16),
    #[error("guest {name} did not start: {why}")]
    Start { name: String, why: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

impl VmError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> VmError {
        VmError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Checks a guest name: letters, digits, `-`, `_` and `.` (not first), at most [`MAX_NAME`]
/// bytes. So a name is never a path (`/`, `..`), an option or anything a shell would read.
pub fn validate_name(name: &str) -> Result<(), VmError> {
    let bad = |why| {
        Err(VmError::BadName {
            name: name.escape_debug().to_string(),
            why,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME {
        return bad("it is longer than 48 characters");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("it starts with '.' or '-'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return bad("use only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_words() {
        for ok in ["a", "vm-1", "node_2.test", &"x".repeat(48)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-rf",
            "a/b",
            "../x",
            "a;reboot",
            "a b",
            "$(x)",
            "é",
            "a\n",
            &"x".repeat(49),
        ] {
            let e = validate_name(bad).unwrap_err().to_string();
            assert!(e.starts_with("bad guest name"), "{bad}: {e}");
        }
    }
}

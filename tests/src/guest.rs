//! The test guest of `scripts/lib/guest` and the QEMU processes a guest test may leave: what the
//! guest tests (`vm`, `vm_join`, `vm_console`, `webui_guests`) share.
//!
//! The images are built once and cached under `target/tmp` by the script (scripts/test builds them
//! before the tests run; a test run by itself builds them in the same place).

use anyhow::{ensure, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the test guest's `/init` prints on its serial console once it is up.
pub const MARKER: &str = "banyan-guest: up";

/// The plain test guest: kernel and initramfs paths, absolute (the CLI sends them to a node).
pub fn image() -> Result<(String, String)> {
    build("target/tmp/banyan-guest", None)
}

/// The test guest with this build's `banyan-agent`, which joins the tree when the guest is
/// launched with `--join`.
pub fn image_with_agent() -> Result<(String, String)> {
    let agent = crate::support::binaries()?.agent;
    build("target/tmp/banyan-guest-agent", Some(&agent))
}

fn build(dir: &str, agent: Option<&Path>) -> Result<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join(dir);
    let mut cmd = Command::new(root.join("scripts/lib/guest"));
    cmd.arg("image").arg(&dir);
    if let Some(agent) = agent {
        cmd.arg("--agent").arg(agent);
    }
    let out = cmd.output().context("running scripts/lib/guest image")?;
    ensure!(
        out.status.success(),
        "scripts/lib/guest image {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        dir.join("vmlinuz").display().to_string(),
        dir.join("initramfs.gz").display().to_string(),
    ))
}

/// QEMU processes whose command line names `dir` (a cluster's state dirs).
pub fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&needle)
            })
        })
        .collect()
}

/// Kills, by pid, any QEMU under the directory still there when it is dropped (a failed test),
/// so that no guest outlives its test.
pub struct Reaper(pub PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in qemus_under(&self.0) {
            let Ok(pid) = i32::try_from(pid) else {
                continue;
            };
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

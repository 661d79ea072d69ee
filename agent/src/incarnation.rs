//! What one run of the agent leaves in its state dir for the next run on the same boot:
//! `previous-life.bin`, the parent it was attached to and the carried part of its last reports
//! ([`PreviousLife`]). A restarted agent owes what its parent kept of those counters (see
//! [`crate::tree`], "Restarts"); without this, a scraped exporter's counters would be counted once
//! frozen at the old parent and again by the new incarnation.
//!
//! The file names the kernel's boot id: after a reboot the exporters start from zero too, so a
//! file from an earlier boot is dropped. It is written before the report it describes leaves (a
//! SIGKILL can fall anywhere), with a rename so a reader never sees half of it. Not here: the
//! certificate (`enrol`), the scrape list (`scrape`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tree::PreviousLife;

const FILE: &str = "previous-life.bin";
/// The kernel's random id of this boot; it changes at every boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Serialize, Deserialize)]
struct Saved {
    boot_id: String,
    life: PreviousLife,
}

/// Keeps the previous-life file of one state dir in step with the node.
pub struct Incarnation {
    path: PathBuf,
    boot_id: String,
    /// The report number the file describes up to (0: no file written by this run).
    saved_seq: u64,
    /// Whether a file may exist (written by this run or found at start).
    on_disk: bool,
}

impl Incarnation {
    /// Opens the state dir's file and returns what the previous run left, if it ran on this boot.
    /// A file that cannot be read or is from another boot is removed and logged.
    pub fn open(state_dir: &Path) -> (Incarnation, Option<PreviousLife>) {
        let boot_id = read_boot_id(Path::new(BOOT_ID));
        let path = state_dir.join(FILE);
        let found = std::fs::read(&path).ok();
        let mut inc = Incarnation {
            path,
            boot_id,
            saved_seq: 0,
            on_disk: found.is_some(),
        };
        let life = found.and_then(|bytes| inc.take(&bytes));
        (inc, life)
    }

    fn take(&mut self, bytes: &[u8]) -> Option<PreviousLife> {
        match postcard::from_bytes::<Saved>(bytes) {
            Ok(saved) if saved.boot_id == self.boot_id && !self.boot_id.is_empty() => {
                tracing::info!(
                    file = %self.path.display(),
                    parent = %saved.life.parent,
                    reports = saved.life.sent.len(),
                    "restarted on the same boot: owes the exporter and metrics-file counts its previous run handed up"
                );
                Some(saved.life)
            }
            Ok(_) => {
                tracing::info!(file = %self.path.display(), "previous run was on another boot; its counts start clean");
                self.clear();
                None
            }
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "unreadable previous-life file removed; counts carried from the previous run may be counted twice");
                self.clear();
                None
            }
        }
    }

    /// Writes what the next run would owe if this one ended now, when the node sent a report
    /// since the last write (`seq`) or stopped carrying anything. Call before the node's actions
    /// go out.
    pub fn keep(&mut self, seq: u64, life: impl FnOnce() -> Option<PreviousLife>) {
        if seq == self.saved_seq {
            return;
        }
        self.saved_seq = seq;
        let Some(life) = life() else {
            if self.on_disk {
                self.clear();
            }
            return;
        };
        let saved = Saved {
            boot_id: self.boot_id.clone(),
            life,
        };
        let result = postcard::to_allocvec(&saved)
            .map_err(|e| e.to_string())
            .and_then(|bytes| write_atomically(&self.path, &bytes).map_err(|e| e.to_string()));
        match result {
            Ok(()) => self.on_disk = true,
            // Once per report at most; the next report tries again.
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot keep what this run handed up; after a restart, exporter counts may be counted twice")
            }
        }
    }

    fn clear(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %self.path.display(), error = %e, "cannot remove"),
        }
        self.on_disk = false;
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The boot id, or "" when the kernel does not say (then nothing is ever taken over: a file
/// cannot be told from an earlier boot's).
fn read_boot_id(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use banyan_protocol::metric::MetricSet;

    fn life(parent: &str, v: f64) -> PreviousLife {
        let mut set = MetricSet::new();
        set.set_counter("scraped_total", v);
        PreviousLife {
            parent: parent.into(),
            sent: vec![(7, set)],
        }
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "banyan-incarnation-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn the_next_run_on_the_same_boot_takes_over_what_was_kept() {
        let d = dir();
        let (mut first, none) = Incarnation::open(&d);
        assert_eq!(none, None);
        first.keep(7, || Some(life("p", 130.0)));
        let (_, found) = Incarnation::open(&d);
        assert_eq!(found, Some(life("p", 130.0)));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_file_from_another_boot_or_broken_starts_clean_and_is_removed() {
        let d = dir();
        let saved = Saved {
            boot_id: "an-earlier-boot".into(),
            life: life("p", 1.0),
        };
        let path = d.join(FILE);
        std::fs::write(&path, postcard::to_allocvec(&saved).expect("encodes")).expect("write");
        assert_eq!(Incarnation::open(&d).1, None);
        assert!(!path.exists());
        std::fs::write(&path, b"\xff\xff not postcard").expect("write");
        assert_eq!(Incarnation::open(&d).1, None);
        assert!(!path.exists());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn nothing_carried_removes_the_file() {
        let d = dir();
        let (mut inc, _) = Incarnation::open(&d);
        inc.keep(3, || Some(life("p", 5.0)));
        assert!(d.join(FILE).exists());
        inc.keep(4, || None);
        assert!(!d.join(FILE).exists());
        std::fs::remove_dir_all(&d).ok();
    }
}

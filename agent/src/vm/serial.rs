//! The bound on a guest's serial log: a guest that prints for weeks must not fill the node's disk.
//!
//! QEMU appends to `serial.log` (the chardev's `logappend=on`: every write lands at the end, wherever
//! the end is now), so the manager can cut the head of the file while QEMU keeps writing: where the
//! file system can, by collapsing the head's blocks in place (`FALLOC_FL_COLLAPSE_RANGE`: nothing
//! QEMU writes meanwhile is lost), elsewhere (tmpfs) by copying the tail and truncating, which
//! loses what QEMU writes between the read and the truncation (a few bytes, at a rate of once per
//! `MAX_LOG` printed). It is not a log rotation: the console's history is the tail, and `vm logs`
//! reads the tail.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use nix::fcntl::{fallocate, FallocateFlags};

/// A serial log longer than this is cut.
pub const MAX_LOG: u64 = 4 << 20;
/// What a cut keeps: the last bytes, at least this many (a collapse keeps up to a block more).
pub const KEEP_LOG: u64 = 1 << 20;

/// Cuts the log at `path` to about its last `keep` bytes if it is longer than `max`. Returns the
/// bytes removed (0: nothing to do, or no such file).
pub fn trim(path: &Path, max: u64, keep: u64) -> io::Result<u64> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len <= max || keep >= len {
        return Ok(0);
    }
    // A collapse removes whole blocks from the start; 4 KiB is every Linux file system's unit
    // or a divisor of it, and a file system that needs more refuses with EINVAL.
    let block = 4096;
    let cut = (len - keep) / block * block;
    if cut > 0
        && fallocate(
            &file,
            FallocateFlags::FALLOC_FL_COLLAPSE_RANGE,
            0,
            cut as nix::libc::off_t,
        )
        .is_ok()
    {
        return Ok(cut);
    }
    copy_tail(&mut file, len, keep)
}

/// The way without a collapse: the last `keep` of `len` bytes copied to the start, the rest cut.
fn copy_tail(file: &mut std::fs::File, len: u64, keep: u64) -> io::Result<u64> {
    let mut tail = Vec::with_capacity(keep as usize);
    file.seek(SeekFrom::Start(len - keep))?;
    file.take(keep).read_to_end(&mut tail)?;
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(&tail)?;
    Ok(len - tail.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory for one test, removed when dropped.
    struct Scratch(std::path::PathBuf);
    impl Scratch {
        fn new(test: &str) -> Scratch {
            let d =
                std::env::temp_dir().join(format!("banyan-serial-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(&d).unwrap();
            Scratch(d)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn numbered(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn a_short_log_is_left_alone() {
        let dir = Scratch::new("short");
        let p = dir.path().join("serial.log");
        std::fs::write(&p, numbered(10_000)).unwrap();
        assert_eq!(trim(&p, 10_000, 100).unwrap(), 0);
        assert_eq!(std::fs::read(&p).unwrap(), numbered(10_000));
        assert_eq!(trim(&dir.path().join("none"), 1, 0).unwrap(), 0);
    }

    #[test]
    fn a_long_log_keeps_its_tail() {
        let dir = Scratch::new("long");
        let p = dir.path().join("serial.log");
        let all = numbered(100_000);
        std::fs::write(&p, &all).unwrap();
        let removed = trim(&p, 50_000, 20_000).unwrap();
        let left = std::fs::read(&p).unwrap();
        // Whichever way it cut (a collapse on whole blocks, or a copy of exactly the tail), what
        // is left is the file's end, at least `keep` long and at most a block longer.
        assert_eq!(removed as usize + left.len(), all.len());
        assert!(
            left.len() >= 20_000 && left.len() < 20_000 + 4096,
            "{}",
            left.len()
        );
        assert_eq!(&left[..], &all[all.len() - left.len()..]);
    }

    #[test]
    fn an_appending_writer_goes_on_at_the_new_end() {
        let dir = Scratch::new("append");
        let p = dir.path().join("serial.log");
        let mut qemu = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        let all = numbered(60_000);
        qemu.write_all(&all).unwrap();
        trim(&p, 50_000, 10_000).unwrap();
        qemu.write_all(b"after").unwrap();
        let left = std::fs::read(&p).unwrap();
        // The write landed right after the kept tail: no hole, nothing of the old head.
        let (kept, new) = left.split_at(left.len() - 5);
        assert_eq!(new, b"after");
        assert!(
            kept.len() >= 10_000 && kept.len() < 10_000 + 4096,
            "{}",
            kept.len()
        );
        assert_eq!(kept, &all[all.len() - kept.len()..]);
    }

    #[test]
    fn without_a_collapse_the_tail_is_copied() {
        let dir = Scratch::new("copy");
        let p = dir.path().join("serial.log");
        let all = numbered(30_000);
        std::fs::write(&p, &all).unwrap();
        let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        assert_eq!(copy_tail(&mut f, 30_000, 7_000).unwrap(), 23_000);
        assert_eq!(std::fs::read(&p).unwrap(), &all[23_000..]);
    }
}

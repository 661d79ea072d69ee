//! [`SourceFile`]: one `/proc` or `/sys` file read again every wave through the same descriptor
//! and the same buffer.
//!
//! `/proc` and sysfs files are generated when read from offset 0, so seeking back and reading
//! gives fresh values (procps' `top` reads `/proc/stat` the same way). Keeping the descriptor saves
//! the path walk and the open; keeping the buffer saves an allocation per read.

use super::CollectError;
use std::borrow::Cow;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub struct SourceFile {
    path: PathBuf,
    file: Option<File>,
    buf: Vec<u8>,
    /// Whether `file` is on procfs, once asked (see [`SourceFile::mount_table_changed`]).
    on_procfs: Option<bool>,
    /// Whether `buf` holds the whole file as of the last read.
    valid: bool,
}

impl SourceFile {
    pub fn new(path: PathBuf) -> SourceFile {
        SourceFile {
            path,
            file: None,
            buf: Vec::new(),
            on_procfs: None,
            valid: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file as it is now, and its path (for errors while the text is borrowed). Bytes
    /// that are not UTF-8 (a mount point's name, say) become U+FFFD rather than failing the read;
    /// valid text is borrowed, not copied.
    pub fn read(&mut self) -> Result<(Cow<'_, str>, &Path), CollectError> {
        self.valid = false;
        let reused = self.file.is_some();
        if let Err(first) = self.read_once() {
            // A kept descriptor can go bad (the device behind a sysfs file went away and came
            // back): open the path afresh once before giving up.
            self.file = None;
            if !reused {
                return Err(self.error(first));
            }
            if let Err(second) = self.read_once() {
                self.file = None;
                return Err(self.error(second));
            }
        }
        self.valid = true;
        Ok((String::from_utf8_lossy(&self.buf), &self.path))
    }

    /// The text of the last successful [`SourceFile::read`], without reading again.
    pub fn last(&self) -> (Cow<'_, str>, &Path) {
        (String::from_utf8_lossy(&self.buf), &self.path)
    }

    /// Whether the file may have changed since it was last read. Only the mount table says so
    /// itself: proc(5) documents that `/proc/*/mounts` raises POLLPRI on a poll after a mount or
    /// unmount in the namespace (and the poll resets it). Any other file, and a file whose last read
    /// failed or never happened, always "may have changed".
    pub fn mount_table_changed(&mut self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use nix::sys::statfs::{fstatfs, PROC_SUPER_MAGIC};
        use std::os::fd::AsFd;
        let (Some(file), true) = (&self.file, self.valid) else {
            return true;
        };
        let on_procfs = *self.on_procfs.get_or_insert_with(|| {
            fstatfs(file.as_fd()).is_ok_and(|st| st.filesystem_type() == PROC_SUPER_MAGIC)
        });
        if !on_procfs {
            return true;
        }
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(_) => fds[0]
                .revents()
                .is_none_or(|r| r.intersects(PollFlags::POLLPRI | PollFlags::POLLERR)),
            Err(_) => true,
        }
    }

    fn read_once(&mut self) -> std::io::Result<()> {
        self.buf.clear();
        let file = match &mut self.file {
            Some(file) => {
                file.seek(SeekFrom::Start(0))?;
                file
            }
            None => {
                self.on_procfs = None;
                self.file.insert(File::open(&self.path)?)
            }
        };
        file.read_to_end(&mut self.buf)?;
        Ok(())
    }

    fn error(&self, source: std::io::Error) -> CollectError {
        CollectError::Read {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_tree::FakeTree;
    use super::*;

    #[test]
    fn rereads_fresh_content_through_the_kept_descriptor() {
        let tree = FakeTree::new();
        tree.write("f", "first version\n");
        let mut file = SourceFile::new(tree.path().join("f"));
        assert_eq!(file.read().unwrap().0, "first version\n");
        tree.write("f", "2nd\n");
        assert_eq!(file.read().unwrap().0, "2nd\n");
    }

    #[test]
    fn missing_file_error_names_it() {
        let tree = FakeTree::new();
        let mut file = SourceFile::new(tree.path().join("proc/nothing"));
        let err = file.read().map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("proc/nothing"), "{err}");
    }

    #[test]
    fn proc_files_give_fresh_values_after_seeking_back() {
        // /proc/uptime moves in hundredths of a second.
        let mut file = SourceFile::new(PathBuf::from("/proc/uptime"));
        let first = file.read().unwrap().0.into_owned();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let second = file.read().unwrap().0.into_owned();
        assert_ne!(first, second);
    }

    #[test]
    fn the_mount_table_says_when_it_has_not_changed() {
        let mut mounts = SourceFile::new(PathBuf::from("/proc/self/mounts"));
        assert!(mounts.mount_table_changed(), "never read yet");
        mounts.read().unwrap();
        // Nothing mounts or unmounts in this test's namespace meanwhile (unless another test
        // process does, which only makes this say "changed" once more).
        let mut unchanged = false;
        for _ in 0..3 {
            unchanged |= !mounts.mount_table_changed();
        }
        assert!(unchanged);
        // A plain file cannot tell, so it always "may have changed".
        let tree = FakeTree::new();
        tree.write("mounts", "x / ext4 rw 0 0\n");
        let mut fake = SourceFile::new(tree.path().join("mounts"));
        fake.read().unwrap();
        assert!(fake.mount_table_changed());
        assert_eq!(fake.last().0, "x / ext4 rw 0 0\n");
    }
}

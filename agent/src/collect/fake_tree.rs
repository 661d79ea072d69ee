//! A throw-away directory standing in for `/` in tests: collectors read `proc/...` and `sys/...`
//! under it. Removed when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) struct FakeTree {
    dir: PathBuf,
}

impl FakeTree {
    pub(crate) fn new() -> FakeTree {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "banyan-collect-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fake tree");
        FakeTree { dir }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `text` to `rel` (creating directories), in place: a collector holding the file open
    /// sees the new text on its next read.
    pub(crate) fn write(&self, rel: &str, text: &str) {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create a fake tree directory");
        }
        std::fs::write(&path, text).expect("write a fake tree file");
    }

    pub(crate) fn mkdir(&self, rel: &str) {
        std::fs::create_dir_all(self.dir.join(rel)).expect("create a fake tree directory");
    }

    pub(crate) fn remove(&self, rel: &str) {
        let path = self.dir.join(rel);
        if path.is_dir() {
            std::fs::remove_dir_all(path).expect("remove a fake tree directory");
        } else {
            std::fs::remove_file(path).expect("remove a fake tree file");
        }
    }
}

impl Drop for FakeTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

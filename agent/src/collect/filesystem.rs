//! Capacity and inodes of mounted filesystems: the mount table from `/proc/self/mounts` (fstab(5)
//! format, proc(5)), then statvfs(3) on each mount point.
//!
//! Which mounts ([`kind_of`]):
//! - Local disk filesystems (ext2/3/4, xfs, btrfs, zfs, f2fs, vfat, bcachefs, jfs): always.
//! - tmpfs only at `/tmp` and `/dev/shm`: that is where jobs write (MPI shared-memory segments,
//!   scratch files) and filling them kills jobs. Other tmpfs mounts (`/run`, `/run/user/N`,
//!   systemd's credential mounts, containers') are many, small, come and go with sessions, and
//!   are carved from RAM that the memory collector already reports.
//! - Network and parallel filesystems (NFS, Lustre, GPFS, BeeGFS, CephFS, CIFS, GlusterFS, 9p,
//!   virtiofs): yes, operators need to see a full scratch, but see below.
//! - Not pseudo filesystems (proc, sysfs, cgroup, devtmpfs, ...), overlay (a container's root,
//!   whose backing filesystem is reported under its own mount), squashfs (read-only images,
//!   always full), autofs trigger points (statvfs on one may mount it).
//!
//! A mount point mounted over again is reported once, as the filesystem on top (statvfs sees that
//! one). The same local filesystem mounted at several places (bind mounts) is reported once, at
//! the first mount point in the table: the statvfs filesystem id tells them apart.
//!
//! Network filesystems: statvfs on a hung NFS or Lustre mount blocks in the kernel, for ever with
//! `hard` mounts, and nothing can interrupt it. So it never runs on the sampling thread: each
//! network mount is probed on a short-lived thread of its own, at most one probe per mount in
//! flight and [`MAX_IN_FLIGHT`] in all (so a dead server strands at most that many threads), every
//! [`REMOTE_EVERY_MS`] rather than every wave (a thousand nodes statting a shared filesystem every
//! second is real load on its servers, and its size does not change that fast). A wave never
//! waits: it reports the last answer, and `banyan_node_filesystem_unresponsive` says 1 (and the
//! sizes are left out) while a probe has gone unanswered for [`UNRESPONSIVE_MS`] or failed.

use super::{series, CollectError, Collector, SourceFile};
use banyan_protocol::metric::MetricSet;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// How often a network filesystem is probed.
pub const REMOTE_EVERY_MS: u64 = 10_000;
/// A network filesystem whose probe has not answered for this long is reported unresponsive.
pub const UNRESPONSIVE_MS: u64 = 5_000;
/// At most this many network probes in flight (threads possibly stuck in the kernel).
pub const MAX_IN_FLIGHT: usize = 8;

/// What statvfs says of one filesystem, in bytes and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FsStat {
    pub size: u64,
    pub free: u64,
    pub avail: u64,
    pub files: u64,
    pub files_free: u64,
    /// The filesystem id (`f_fsid`); 0 when the filesystem does not give one.
    pub fsid: u64,
}

/// The statvfs call, replaceable in tests.
pub type StatFs = fn(&Path) -> std::io::Result<FsStat>;

/// statvfs(3) on `path`.
pub fn statvfs(path: &Path) -> std::io::Result<FsStat> {
    let st = nix::sys::statvfs::statvfs(path)?;
    // The libc types are u64 on 64-bit Linux but narrower on some 32-bit targets.
    let unit = st.fragment_size() as u64;
    Ok(FsStat {
        size: (st.blocks() as u64).saturating_mul(unit),
        free: (st.blocks_free() as u64).saturating_mul(unit),
        avail: (st.blocks_available() as u64).saturating_mul(unit),
        files: st.files() as u64,
        files_free: st.files_free() as u64,
        fsid: st.filesystem_id(),
    })
}

/// How a mount is sampled, if at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// statvfs inline, every wave.
    Local,
    /// statvfs on a probe thread, every [`REMOTE_EVERY_MS`].
    Remote,
}

/// Whether and how the mount of `fstype` at `mountpoint` is reported; see the module docs.
pub fn kind_of(fstype: &str, mountpoint: &str) -> Option<Kind> {
    match fstype {
        "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" | "zfs" | "f2fs" | "vfat" | "bcachefs"
        | "jfs" => Some(Kind::Local),
        "tmpfs" if mountpoint == "/tmp" || mountpoint == "/dev/shm" => Some(Kind::Local),
        "nfs" | "nfs4" | "lustre" | "gpfs" | "beegfs" | "ceph" | "cifs" | "smb3" | "glusterfs"
        | "fuse.glusterfs" | "fuse.ceph-fuse" | "9p" | "virtiofs" => Some(Kind::Remote),
        _ => None,
    }
}

/// One line of the mount table.
#[derive(Debug, PartialEq)]
pub struct Mount<'a> {
    pub source: Cow<'a, str>,
    pub mountpoint: Cow<'a, str>,
    pub fstype: &'a str,
}

/// Parses `source mountpoint fstype options dump pass`; `None` for a line without three fields.
pub fn parse_mount(line: &str) -> Option<Mount<'_>> {
    let mut fields = line.split_ascii_whitespace();
    let (source, mountpoint, fstype) = (fields.next()?, fields.next()?, fields.next()?);
    Some(Mount {
        source: unescape(source),
        mountpoint: unescape(mountpoint),
        fstype,
    })
}

/// Undoes the mount table's octal escapes (`\040` for a space; also tab, newline, backslash).
pub fn unescape(field: &str) -> Cow<'_, str> {
    if !field.contains('\\') {
        return Cow::Borrowed(field);
    }
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)) && d[0] <= b'3'
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Gauge families, in [`values`] order.
const GAUGES: [&str; 6] = [
    "banyan_node_filesystem_size_bytes",
    "banyan_node_filesystem_free_bytes",
    "banyan_node_filesystem_avail_bytes",
    "banyan_node_filesystem_used_bytes",
    "banyan_node_filesystem_files",
    "banyan_node_filesystem_files_free",
];
const UNRESPONSIVE: &str = "banyan_node_filesystem_unresponsive";

fn values(st: &FsStat) -> [u64; 6] {
    [
        st.size,
        st.free,
        st.avail,
        st.size.saturating_sub(st.free),
        st.files,
        st.files_free,
    ]
}

/// The series names of one mount point, kept while it stays mounted.
struct Names {
    fstype: String,
    gauges: [String; 6],
    unresponsive: String,
    seen_wave: u64,
}

impl Names {
    fn new(mountpoint: &str, fstype: &str) -> Names {
        let labels = [("mountpoint", mountpoint), ("fstype", fstype)];
        Names {
            fstype: fstype.to_string(),
            gauges: GAUGES.map(|family| series(family, &labels)),
            unresponsive: series(UNRESPONSIVE, &labels),
            seen_wave: 0,
        }
    }
}

/// A network mount's probing.
#[derive(Default)]
struct Probe {
    /// When the probe now in flight was started.
    asked_ms: Option<u64>,
    /// When to probe next.
    next_ms: u64,
    /// The last successful answer; `None` after a failed one.
    last: Option<FsStat>,
    failed: bool,
    seen_wave: u64,
}

struct Answer {
    mountpoint: String,
    result: std::io::Result<FsStat>,
}

pub struct Filesystem {
    root: PathBuf,
    mounts: SourceFile,
    statfs: StatFs,
    names: HashMap<String, Names>,
    probes: HashMap<String, Probe>,
    answers_tx: mpsc::Sender<Answer>,
    answers: mpsc::Receiver<Answer>,
    in_flight: usize,
    wave: u64,
}

impl Filesystem {
    pub fn new(root: &Path) -> Filesystem {
        Filesystem::with_statfs(root, statvfs)
    }

    /// With another statvfs (tests use one that reads numbers from a file, or hangs).
    pub fn with_statfs(root: &Path, statfs: StatFs) -> Filesystem {
        let (answers_tx, answers) = mpsc::channel();
        Filesystem {
            root: root.to_path_buf(),
            mounts: SourceFile::new(root.join("proc/self/mounts")),
            statfs,
            names: HashMap::new(),
            probes: HashMap::new(),
            answers_tx,
            answers,
            in_flight: 0,
            wave: 0,
        }
    }

    fn take_answers(&mut self) {
        while let Ok(answer) = self.answers.try_recv() {
            self.in_flight = self.in_flight.saturating_sub(1);
            let Some(probe) = self.probes.get_mut(&answer.mountpoint) else {
                continue;
            };
            probe.asked_ms = None;
            match answer.result {
                Ok(st) => {
                    probe.last = Some(st);
                    probe.failed = false;
                }
                Err(error) => {
                    if !probe.failed {
                        tracing::debug!(mountpoint = %answer.mountpoint, error = %error, "statvfs failed");
                    }
                    probe.last = None;
                    probe.failed = true;
                }
            }
        }
    }
}

/// Starts a probe of `mountpoint` on its own thread, unless [`MAX_IN_FLIGHT`] are out already.
/// False when none was started.
fn ask(
    statfs: StatFs,
    answers: &mpsc::Sender<Answer>,
    in_flight: &mut usize,
    mountpoint: &str,
    path: PathBuf,
) -> bool {
    if *in_flight >= MAX_IN_FLIGHT {
        return false;
    }
    let tx = answers.clone();
    let mountpoint = mountpoint.to_string();
    let spawned = std::thread::Builder::new()
        .name("banyan-statvfs".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let result = statfs(&path);
            // The collector may be gone by now; then nobody needs the answer.
            let _ = tx.send(Answer { mountpoint, result });
        });
    match spawned {
        Ok(_) => {
            *in_flight += 1;
            true
        }
        Err(error) => {
            tracing::debug!(error = %error, "cannot start a statvfs probe thread");
            false
        }
    }
}

const DESCRIBE: &[(&str, &str)] = &[
    (
        "banyan_node_filesystem_size_bytes",
        "Filesystem size per mount point.",
    ),
    (
        "banyan_node_filesystem_free_bytes",
        "Free space per mount point, including space reserved for root.",
    ),
    (
        "banyan_node_filesystem_avail_bytes",
        "Space available to unprivileged users per mount point.",
    ),
    (
        "banyan_node_filesystem_used_bytes",
        "Used space per mount point: size minus free.",
    ),
    ("banyan_node_filesystem_files", "Inodes per mount point."),
    (
        "banyan_node_filesystem_files_free",
        "Free inodes per mount point.",
    ),
    (
        "banyan_node_filesystem_unresponsive",
        "1 when a network filesystem's statvfs hangs or fails, else 0.",
    ),
];

impl Collector for Filesystem {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn describe(&self) -> &'static [(&'static str, &'static str)] {
        DESCRIBE
    }

    fn collect(&mut self, now_ms: u64, out: &mut MetricSet) -> Result<(), CollectError> {
        self.wave += 1;
        let wave = self.wave;
        self.take_answers();
        // The mount table is the dearest file of a wave to have the kernel write (a few tens
        // of microseconds); it is read again only when the kernel says it changed.
        let (text, _) = if self.mounts.mount_table_changed() {
            self.mounts.read()?
        } else {
            self.mounts.last()
        };
        let table: Vec<Mount<'_>> = text.lines().filter_map(parse_mount).collect();
        let mut fsids: Vec<u64> = Vec::new();
        for (i, mount) in table.iter().enumerate() {
            let Some(kind) = kind_of(mount.fstype, &mount.mountpoint) else {
                continue;
            };
            if table[i + 1..]
                .iter()
                .any(|later| later.mountpoint == mount.mountpoint)
            {
                continue; // mounted over: the later entry is the one statvfs sees
            }
            let mountpoint: &str = &mount.mountpoint;
            let path = self.root.join(mountpoint.trim_start_matches('/'));
            let stat = match kind {
                Kind::Local => match (self.statfs)(&path) {
                    Ok(st) => {
                        if st.fsid != 0 && fsids.contains(&st.fsid) {
                            continue; // a bind mount of a filesystem already reported
                        }
                        fsids.push(st.fsid);
                        Some(st)
                    }
                    Err(error) => {
                        tracing::debug!(mountpoint, error = %error, "statvfs failed");
                        continue;
                    }
                },
                Kind::Remote => {
                    if !self.probes.contains_key(mountpoint) {
                        self.probes.insert(mountpoint.to_string(), Probe::default());
                    }
                    let Some(probe) = self.probes.get_mut(mountpoint) else {
                        continue;
                    };
                    let due = probe.asked_ms.is_none() && now_ms >= probe.next_ms;
                    if due {
                        let (statfs, tx) = (self.statfs, &self.answers_tx);
                        if ask(statfs, tx, &mut self.in_flight, mountpoint, path) {
                            probe.asked_ms = Some(now_ms);
                            probe.next_ms = now_ms + REMOTE_EVERY_MS;
                        }
                    }
                    probe.seen_wave = wave;
                    let hung = probe
                        .asked_ms
                        .is_some_and(|t| now_ms.saturating_sub(t) >= UNRESPONSIVE_MS);
                    let unresponsive = hung || probe.failed;
                    let stat = if unresponsive { None } else { probe.last };
                    if let Some(names) = names_for(&mut self.names, mountpoint, mount.fstype, wave)
                    {
                        out.set_gauge(
                            &names.unresponsive,
                            if unresponsive { 1.0 } else { 0.0 },
                            now_ms,
                        );
                    }
                    stat
                }
            };
            let names = names_for(&mut self.names, mountpoint, mount.fstype, wave);
            if let (Some(st), Some(names)) = (stat, names) {
                for (name, value) in names.gauges.iter().zip(values(&st)) {
                    out.set_gauge(name, value as f64, now_ms);
                }
            }
        }
        self.names.retain(|_, n| n.seen_wave == wave);
        self.probes.retain(|_, p| p.seen_wave == wave);
        Ok(())
    }
}

/// The cached series names of `mountpoint`, made on first use (or when its fstype changed), and
/// marked as seen in `wave`.
fn names_for<'a>(
    names: &'a mut HashMap<String, Names>,
    mountpoint: &str,
    fstype: &str,
    wave: u64,
) -> Option<&'a Names> {
    if names.get(mountpoint).is_none_or(|n| n.fstype != fstype) {
        names.insert(mountpoint.to_string(), Names::new(mountpoint, fstype));
    }
    let entry = names.get_mut(mountpoint)?;
    entry.seen_wave = wave;
    Some(entry)
}

#[cfg(test)]
mod tests {
    use super::super::fake_tree::FakeTree;
    use super::*;
    use banyan_protocol::metric::Value;
    use std::time::{Duration, Instant};

    const MOUNTS: &str = "\
proc /proc proc rw,relatime 0 0
sysfs /sys sysfs rw,relatime 0 0
/dev/sda2 / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev,size=1024k 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0
/dev/sda3 /scratch\\040space xfs rw,relatime 0 0
/dev/sda2 /var/lib/bind ext4 rw,relatime 0 0
overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0
nfs1:/export/home /home nfs4 rw,hard,vers=4.2 0 0
tmpfs /dev/shm tmpfs rw,nosuid,nodev,size=2g 0 0
";

    #[test]
    fn parses_and_unescapes_the_mount_table() {
        let mounts: Vec<_> = MOUNTS.lines().filter_map(parse_mount).collect();
        assert_eq!(mounts.len(), 11);
        assert_eq!(
            mounts[6],
            Mount {
                source: "/dev/sda3".into(),
                mountpoint: "/scratch space".into(),
                fstype: "xfs"
            }
        );
        assert_eq!(unescape("a\\011b\\012c\\134d"), "a\tb\nc\\d");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
        assert!(parse_mount("only two").is_none());
    }

    #[test]
    fn picks_real_filesystems() {
        assert_eq!(kind_of("ext4", "/"), Some(Kind::Local));
        assert_eq!(kind_of("tmpfs", "/dev/shm"), Some(Kind::Local));
        assert_eq!(kind_of("tmpfs", "/tmp"), Some(Kind::Local));
        assert_eq!(kind_of("tmpfs", "/run/user/1000"), None);
        assert_eq!(kind_of("lustre", "/lustre/scratch"), Some(Kind::Remote));
        assert_eq!(kind_of("nfs4", "/home"), Some(Kind::Remote));
        for pseudo in [
            "proc", "sysfs", "cgroup", "cgroup2", "overlay", "squashfs", "autofs", "devtmpfs",
        ] {
            assert_eq!(kind_of(pseudo, "/x"), None, "{pseudo}");
        }
    }

    /// A statvfs for fake trees: reads `size free avail files files_free fsid` from `.statvfs` in
    /// the mount point; while that file says `hang`, hangs like a dead NFS server.
    fn fake_statfs(path: &Path) -> std::io::Result<FsStat> {
        let file = path.join(".statvfs");
        loop {
            let text = std::fs::read_to_string(&file)?;
            let v: Vec<u64> = text
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            if v.len() != 6 {
                // `hang`, or a read torn by the test rewriting the file: wait.
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            return Ok(FsStat {
                size: v[0],
                free: v[1],
                avail: v[2],
                files: v[3],
                files_free: v[4],
                fsid: v[5],
            });
        }
    }

    fn gauge(set: &MetricSet, name: &str) -> Option<f64> {
        match set.get(name) {
            Some(Value::Gauge(g)) => Some(g.last),
            _ => None,
        }
    }

    fn fake_node() -> FakeTree {
        let tree = FakeTree::new();
        tree.write("proc/self/mounts", MOUNTS);
        tree.write(".statvfs", "1000 400 300 50 20 7");
        tree.write("dev/shm/.statvfs", "64 64 64 16 16 8");
        tree.write("scratch space/.statvfs", "5000 1000 900 10 5 9");
        // The bind mount of /dev/sda2: same filesystem id as /.
        tree.write("var/lib/bind/.statvfs", "1000 400 300 50 20 7");
        tree.write("home/.statvfs", "80 40 30 8 4 0");
        tree.write("run/.statvfs", "1 1 1 1 1 10");
        tree
    }

    #[test]
    fn reports_each_real_filesystem_once() {
        let tree = fake_node();
        let mut fs = Filesystem::with_statfs(tree.path(), fake_statfs);
        let mut set = MetricSet::new();
        fs.collect(1_000, &mut set).unwrap();
        let root = |family: &str| {
            gauge(
                &set,
                &format!("{family}{{mountpoint=\"/\",fstype=\"ext4\"}}"),
            )
        };
        assert_eq!(root("banyan_node_filesystem_size_bytes"), Some(1000.0));
        assert_eq!(root("banyan_node_filesystem_free_bytes"), Some(400.0));
        assert_eq!(root("banyan_node_filesystem_avail_bytes"), Some(300.0));
        assert_eq!(root("banyan_node_filesystem_used_bytes"), Some(600.0));
        assert_eq!(root("banyan_node_filesystem_files"), Some(50.0));
        assert_eq!(root("banyan_node_filesystem_files_free"), Some(20.0));
        assert_eq!(
            gauge(
                &set,
                "banyan_node_filesystem_size_bytes{mountpoint=\"/scratch space\",fstype=\"xfs\"}"
            ),
            Some(5000.0)
        );
        let mut mountpoints: Vec<_> = set
            .values
            .keys()
            .filter_map(|k| k.strip_prefix("banyan_node_filesystem_size_bytes{mountpoint=\""))
            .collect();
        mountpoints.sort();
        // Not /proc, /sys, /run, cgroup, overlay; not the bind mount; /dev/shm once; /home is a
        // network mount whose first probe has not answered yet.
        assert_eq!(
            mountpoints,
            [
                "/\",fstype=\"ext4\"}",
                "/dev/shm\",fstype=\"tmpfs\"}",
                "/scratch space\",fstype=\"xfs\"}"
            ]
        );
        assert_eq!(
            gauge(
                &set,
                "banyan_node_filesystem_unresponsive{mountpoint=\"/home\",fstype=\"nfs4\"}"
            ),
            Some(0.0)
        );
    }

    /// Collects waves until `done` holds for one, or panics after 10 s of real time.
    fn until(
        fs: &mut Filesystem,
        mut now_ms: u64,
        done: impl Fn(&MetricSet) -> bool,
    ) -> (u64, MetricSet) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut set = MetricSet::new();
            fs.collect(now_ms, &mut set).unwrap();
            if done(&set) {
                return (now_ms, set);
            }
            assert!(Instant::now() < deadline, "condition never held: {set:?}");
            std::thread::sleep(Duration::from_millis(2));
            now_ms += 1;
        }
    }

    #[test]
    fn a_hung_network_mount_never_blocks_the_wave() {
        const HOME_SIZE: &str =
            "banyan_node_filesystem_size_bytes{mountpoint=\"/home\",fstype=\"nfs4\"}";
        const HOME_DOWN: &str =
            "banyan_node_filesystem_unresponsive{mountpoint=\"/home\",fstype=\"nfs4\"}";
        let tree = fake_node();
        let mut fs = Filesystem::with_statfs(tree.path(), fake_statfs);
        // The probe answers in the background; a later wave reports it.
        let (now, set) = until(&mut fs, 0, |s| gauge(s, HOME_SIZE).is_some());
        assert_eq!(gauge(&set, HOME_SIZE), Some(80.0));
        assert_eq!(gauge(&set, HOME_DOWN), Some(0.0));

        // The server hangs. Waves go on, the local filesystems are reported every time, and once
        // the probe has hung for UNRESPONSIVE_MS the mount is flagged and its sizes left out.
        tree.write("home/.statvfs", "hang");
        let mut now = now + REMOTE_EVERY_MS;
        let mut set = MetricSet::new();
        fs.collect(now, &mut set).unwrap();
        assert_eq!(gauge(&set, HOME_DOWN), Some(0.0), "not flagged at once");
        now += UNRESPONSIVE_MS;
        let started = Instant::now();
        let mut set = MetricSet::new();
        fs.collect(now, &mut set).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the wave waited for the hung mount"
        );
        assert_eq!(gauge(&set, HOME_DOWN), Some(1.0));
        assert_eq!(gauge(&set, HOME_SIZE), None);
        assert!(set
            .get("banyan_node_filesystem_size_bytes{mountpoint=\"/\",fstype=\"ext4\"}")
            .is_some());
        // Still one thread stuck on it, not one per wave.
        for _ in 0..20 {
            now += REMOTE_EVERY_MS;
            fs.collect(now, &mut MetricSet::new()).unwrap();
        }
        assert_eq!(fs.in_flight, 1);

        // The server comes back: the stuck probe returns and the next one reports again.
        tree.write("home/.statvfs", "90 40 30 8 4 0");
        let (_, set) = until(&mut fs, now, |s| gauge(s, HOME_SIZE) == Some(90.0));
        assert_eq!(gauge(&set, HOME_DOWN), Some(0.0));
        assert!(
            fs.in_flight <= 1,
            "the stuck probe came back; at most the next one is out"
        );
    }

    #[test]
    fn a_failing_network_mount_is_flagged() {
        let tree = fake_node();
        tree.remove("home/.statvfs"); // statvfs fails (like ESTALE)
        let mut fs = Filesystem::with_statfs(tree.path(), fake_statfs);
        let (_, set) = until(&mut fs, 0, |s| {
            gauge(
                s,
                "banyan_node_filesystem_unresponsive{mountpoint=\"/home\",fstype=\"nfs4\"}",
            ) == Some(1.0)
        });
        assert!(set
            .get("banyan_node_filesystem_size_bytes{mountpoint=\"/home\",fstype=\"nfs4\"}")
            .is_none());
    }

    #[test]
    fn unmounted_filesystems_disappear() {
        let tree = fake_node();
        let mut fs = Filesystem::with_statfs(tree.path(), fake_statfs);
        fs.collect(1_000, &mut MetricSet::new()).unwrap();
        tree.write("proc/self/mounts", "/dev/sda2 / ext4 rw 0 0\n");
        let mut set = MetricSet::new();
        fs.collect(2_000, &mut set).unwrap();
        assert_eq!(set.len(), 6);
        assert_eq!(fs.names.len(), 1);
        assert!(fs.probes.is_empty());
    }

    #[test]
    fn live_root_filesystem_matches_statvfs() {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let mut fs = Filesystem::new(Path::new("/"));
        let mut set = MetricSet::new();
        fs.collect(1_000, &mut set).unwrap();
        let local: Vec<_> = mounts
            .lines()
            .filter_map(parse_mount)
            .filter(|m| kind_of(m.fstype, &m.mountpoint) == Some(Kind::Local))
            .map(|m| (m.mountpoint.into_owned(), m.fstype.to_string()))
            .collect();
        if let Some((mp, fstype)) = local.iter().find(|(mp, _)| mp == "/") {
            let size = gauge(
                &set,
                &series(
                    "banyan_node_filesystem_size_bytes",
                    &[("mountpoint", mp), ("fstype", fstype)],
                ),
            )
            .expect("/ is reported");
            let free = gauge(
                &set,
                &series(
                    "banyan_node_filesystem_free_bytes",
                    &[("mountpoint", mp), ("fstype", fstype)],
                ),
            )
            .unwrap();
            let avail = gauge(
                &set,
                &series(
                    "banyan_node_filesystem_avail_bytes",
                    &[("mountpoint", mp), ("fstype", fstype)],
                ),
            )
            .unwrap();
            assert!(
                size > 0.0 && free <= size && avail <= free,
                "{size} {free} {avail}"
            );
            let st = nix::sys::statvfs::statvfs("/").unwrap();
            assert_eq!(size, (st.blocks() * st.fragment_size()) as f64);
        }
        // Every reported mount is a local one of the table (no network mount answers this fast
        // enough to matter here) .
        for key in set
            .values
            .keys()
            .filter(|k| k.starts_with("banyan_node_filesystem_size_bytes{"))
        {
            assert!(
                local.iter().any(|(mp, fstype)| *key
                    == series(
                        "banyan_node_filesystem_size_bytes",
                        &[("mountpoint", mp), ("fstype", fstype)]
                    )),
                "{key}"
            );
        }
    }
}

//! The guest supervisor of one node: launch, list, stop, logs, TTLs, re-attachment after an agent
//! restart, and crash detection.
//!
//! Reaping: each QEMU this manager starts gets a waiter thread that blocks in `waitid(WNOWAIT)`
//! until the process ends, then reaps it while holding the guest's exit lock. A thread per guest
//! rather than a SIGCHLD handler or a shared `waitpid(-1)`: the exit is reaped the moment it
//! happens, no other child of the agent (exec actions, tokio's children) is ever reaped by
//! mistake, and no polling is needed. And because the kill path checks "not exited" under the
//! same lock, a SIGKILL can never reach a pid that was reaped and reused. A guest taken over
//! after an agent restart is not our child (whoever inherited it reaps it); it is watched
//! through `/proc` (pid and start time), with no signal sent unless both still match.
//!
//! Locking: one mutex over the table of guests, never held across a QMP call or a wait; a launch
//! claims its name first (in the table and with `mkdir`) and a stop marks its guest `Stopping`,
//! so two launches or two stops of one name cannot interleave, and other guests are not held up.

use super::accel::{AccelChoice, HostCaps};
use super::config::VmConfig;
use super::guest::{
    boot_id, build_argv, host_memory_mib, read_record, same_process, write_record, ArgvInput, Boot,
    Forward, GuestInfo, GuestState, LaunchSpec, Paths, Record, RECORD_VERSION,
};
use super::qmp::Qmp;
use super::{validate_name, VmError};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The environment QEMU and qemu-img get: nothing of the agent's but a standard PATH.
const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// One QMP round trip (connect + negotiate, or one command).
const QMP_TIMEOUT: Duration = Duration::from_secs(3);
/// After `quit`, how long QEMU gets to exit before SIGKILL.
const QUIT_WAIT: Duration = Duration::from_secs(5);
/// After SIGKILL, how long until the process is gone (a liveness bound: it is at once).
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a stop for an expired TTL waits for the guest to power off.
pub const TTL_STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Crashed guests stay listed this long (or until a stop of their name).
const CRASHED_KEPT_MS: u64 = 10 * 60 * 1000;
/// How much of a crashed guest's serial log is kept in memory for `log_tail`.
const CRASH_LOG_KEPT: u64 = 8192;
/// Tries of a launch whose picked ports were taken meanwhile.
const PORT_PICK_TRIES: usize = 5;

/// How a stop ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopOutcome {
    /// The guest powered off after the ACPI power button.
    PoweredOff,
    /// QEMU quit when told through QMP.
    Quit,
    /// QEMU was killed (SIGKILL).
    Killed,
    /// The guest had already ended (crashed); its entry is now gone.
    AlreadyGone { reason: String },
}

/// What [`Manager::tick`] did or found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TickEvent {
    /// The guest's TTL expired and it was stopped.
    Expired { name: String, outcome: StopOutcome },
    /// A stop for an expired TTL failed.
    ExpiryFailed { name: String, error: String },
    /// The guest's QEMU ended without being asked; its files were removed.
    Crashed { name: String, reason: String },
}

/// The exit of a QEMU this manager started, set by its waiter thread.
struct Exit {
    state: Mutex<Option<String>>,
    cv: Condvar,
}

impl Exit {
    fn lock(&self) -> MutexGuard<'_, Option<String>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// How it ended, once reaped.
    fn ended(&self) -> Option<String> {
        self.lock().clone()
    }
    /// Waits up to `timeout` for the reap; whether it happened.
    fn wait(&self, timeout: Duration) -> bool {
        let guard = self.lock();
        let (guard, _) = self
            .cv
            .wait_timeout_while(guard, timeout, |s| s.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.is_some()
    }
}

/// Where the process of a guest is, for waiting and killing.
#[derive(Clone)]
struct Proc {
    pid: u32,
    start_time: u64,
    /// `Some` for our own child, `None` for a re-attached guest.
    exit: Option<Arc<Exit>>,
}

impl Proc {
    /// How it ended, or `None` while it runs.
    fn ended(&self) -> Option<String> {
        match &self.exit {
            Some(exit) => exit.ended(),
            None if same_process(self.pid, self.start_time) => None,
            None => Some(format!(
                "QEMU (pid {}) ended while this agent was not its parent",
                self.pid
            )),
        }
    }

    fn wait_gone(&self, timeout: Duration) -> bool {
        match &self.exit {
            Some(exit) => exit.wait(timeout),
            None => {
                let deadline = Instant::now() + timeout;
                loop {
                    if !same_process(self.pid, self.start_time) {
                        return true;
                    }
                    if Instant::now() >= deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// SIGKILL to QEMU itself, only while it is certainly the same process.
    fn kill(&self) {
        let pid = Pid::from_raw(self.pid as i32);
        match &self.exit {
            Some(exit) => {
                // Under the exit lock: the waiter reaps under it too, so an unreaped pid is ours.
                let guard = exit.lock();
                if guard.is_none() {
                    let _ = kill(pid, Signal::SIGKILL);
                }
            }
            None => kill_verified(self.pid, self.start_time),
        }
    }
}

/// SIGKILL to a process that is not our child, only if it is still the one that started at
/// `start_time`. Through a pidfd opened before the check: the signal then reaches the process
/// that was checked even if the pid were reused in between. (Plain `kill` after the check where
/// pidfds do not exist, before Linux 5.3.)
fn kill_verified(pid: u32, start_time: u64) {
    use nix::libc;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1; nothing is borrowed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        if nix::errno::Errno::last() == nix::errno::Errno::ENOSYS && same_process(pid, start_time) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
        return;
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    if same_process(pid, start_time) {
        // SAFETY: pidfd_send_signal(2) on an fd we own, no siginfo (null), no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            tracing::warn!(pid, error = %nix::errno::Errno::last(), "vm: SIGKILL through a pidfd failed");
        }
    }
}

struct Entry {
    rec: Record,
    paths: Paths,
    state: GuestState,
    reattached: bool,
    proc: Proc,
    /// When it was found crashed (unix ms), and the end of its serial log.
    crashed_at_ms: u64,
    crash_log: Vec<u8>,
}

impl Entry {
    fn info(&self) -> GuestInfo {
        self.rec.info(self.state.clone(), self.reattached)
    }
}

#[derive(Default)]
struct Table {
    guests: BTreeMap<String, Entry>,
    /// Names being launched (not listed yet).
    starting: BTreeSet<String>,
}

/// The guests of this node. See the module doc.
pub struct Manager {
    cfg: VmConfig,
    caps: HostCaps,
    guests_dir: PathBuf,
    table: Mutex<Table>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Manager {
    /// Opens the guests of `cfg.state_dir` with this host's probed capabilities.
    pub fn open(cfg: VmConfig) -> Result<Manager, VmError> {
        Manager::open_with(cfg, HostCaps::get().clone())
    }

    /// Opens with the given host capabilities: creates `STATE_DIR/vm/` if needed, re-attaches to
    /// every guest whose QEMU still runs and answers QMP, and reports the others as crashed
    /// (listed as such) after removing their files.
    pub fn open_with(cfg: VmConfig, caps: HostCaps) -> Result<Manager, VmError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let guests_dir = cfg.guests_dir();
        // Owner only: the serial logs and console sockets are the guests' consoles.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&guests_dir)
            .and_then(|()| {
                std::fs::set_permissions(&guests_dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| {
                VmError::io(
                    format!(
                        "cannot create the guests' directory {}: check [vm] state_dir",
                        guests_dir.display()
                    ),
                    e,
                )
            })?;
        let m = Manager {
            cfg,
            caps,
            guests_dir,
            table: Mutex::new(Table::default()),
        };
        m.reattach()?;
        Ok(m)
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reattach(&self) -> Result<(), VmError> {
        let dir = std::fs::read_dir(&self.guests_dir)
            .map_err(|e| VmError::io(format!("cannot read {}", self.guests_dir.display()), e))?;
        let boot = boot_id();
        let now = now_ms();
        for ent in dir.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if validate_name(&name).is_err() || !ent.path().is_dir() {
                tracing::warn!(path = %ent.path().display(), "vm: not a guest directory; left alone");
                continue;
            }
            let paths = Paths::new(&self.guests_dir, &name);
            let rec = match read_record(&paths.state) {
                Ok(rec) if rec.name == name => rec,
                Ok(rec) => {
                    self.forget_unreadable(&paths, &format!("its state file names {}", rec.name));
                    continue;
                }
                Err(why) => {
                    self.forget_unreadable(&paths, &why);
                    continue;
                }
            };
            let proc = Proc {
                pid: rec.pid,
                start_time: rec.start_time,
                exit: None,
            };
            let alive = rec.boot_id == boot && same_process(rec.pid, rec.start_time);
            let crashed = if !alive {
                Some(format!(
                    "QEMU (pid {}) ended while no agent watched it",
                    rec.pid
                ))
            } else {
                match Qmp::connect(&paths.qmp, QMP_TIMEOUT).and_then(|mut q| q.status(QMP_TIMEOUT))
                {
                    Ok(status) => {
                        tracing::info!(guest = %name, pid = rec.pid, %status, "vm: re-attached");
                        None
                    }
                    Err(e) => {
                        // Alive but deaf: nothing could stop it later, so it is ended now.
                        proc.kill();
                        proc.wait_gone(KILL_WAIT);
                        Some(format!(
                            "QEMU (pid {}) did not answer QMP after the agent restarted ({e}); killed",
                            rec.pid
                        ))
                    }
                }
            };
            let mut entry = Entry {
                rec,
                paths,
                state: GuestState::Running,
                reattached: true,
                proc,
                crashed_at_ms: 0,
                crash_log: Vec::new(),
            };
            if let Some(reason) = crashed {
                mark_crashed(&mut entry, reason, now);
            }
            self.table().guests.insert(name, entry);
        }
        Ok(())
    }

    /// A guest directory without a usable state file: nothing to re-attach to. Its files go.
    fn forget_unreadable(&self, paths: &Paths, why: &str) {
        tracing::warn!(dir = %paths.dir.display(), %why, "vm: guest directory without a usable state file; removed");
        remove_dir(&paths.dir);
    }

    /// The guests: running, stopping, and crashed ones not yet acknowledged.
    pub fn list(&self) -> Vec<GuestInfo> {
        let mut t = self.table();
        sweep(&mut t, now_ms());
        t.guests.values().map(Entry::info).collect()
    }

    /// The last `bytes` bytes of a guest's serial log (of a crashed guest: what was kept of it).
    pub fn log_tail(&self, name: &str, bytes: u64) -> Result<Vec<u8>, VmError> {
        let path = {
            let t = self.table();
            let e = t
                .guests
                .get(name)
                .ok_or_else(|| VmError::Unknown(name.to_string()))?;
            if let GuestState::Crashed { .. } = e.state {
                let from = e.crash_log.len().saturating_sub(bytes as usize);
                return Ok(e.crash_log[from..].to_vec());
            }
            e.paths.serial_log.clone()
        };
        tail(&path, bytes).map_err(|e| VmError::io(format!("cannot read {}", path.display()), e))
    }

    /// The unix socket of a running guest's serial console (a stream socket: what is written is
    /// typed on the guest's ttyS0, what the guest prints comes back; the serial log records it
    /// too). QEMU serves one client at a time on it.
    pub fn console_socket(&self, name: &str) -> Result<PathBuf, VmError> {
        let t = self.table();
        match t.guests.get(name) {
            Some(e) if e.state == GuestState::Running => Ok(e.paths.serial_sock.clone()),
            Some(_) => Err(VmError::Refused(format!("guest {name} is not running"))),
            None => Err(VmError::Unknown(name.to_string())),
        }
    }

    /// Launches a guest, or with `dry_run` checks everything and returns what would run
    /// (state `DryRun`, the command line in `argv`) without creating anything.
    pub fn launch(&self, spec: LaunchSpec, dry_run: bool) -> Result<GuestInfo, VmError> {
        let now = now_ms();
        validate_name(&spec.name)?;
        let accel = self.check(&spec)?;
        let paths = Paths::new(&self.guests_dir, &spec.name);
        paths.check_socket_paths()?;

        // Claim the name: in the table (against a concurrent launch) and on disk.
        {
            let mut t = self.table();
            sweep(&mut t, now);
            let taken = t.starting.contains(&spec.name)
                || t.guests
                    .get(&spec.name)
                    .is_some_and(|e| !matches!(e.state, GuestState::Crashed { .. }));
            if taken || paths.dir.exists() {
                return Err(VmError::Duplicate(spec.name.clone()));
            }
            if dry_run {
                let forwards = spec.forwards.clone();
                let argv = build_argv(&ArgvInput {
                    cfg: &self.cfg,
                    spec: &spec,
                    accel,
                    paths: &paths,
                    disk_format: None,
                    forwards: &forwards,
                });
                let rec = self.record(&spec, accel, argv, forwards, 0, 0, now);
                return Ok(rec.info(GuestState::DryRun, false));
            }
            t.guests.remove(&spec.name);
            t.starting.insert(spec.name.clone());
        }
        let result = std::fs::create_dir(&paths.dir)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    VmError::Duplicate(spec.name.clone())
                } else {
                    VmError::io(format!("cannot create {}", paths.dir.display()), e)
                }
            })
            .and_then(|()| {
                let r = self.start(&spec, accel, &paths, now);
                if r.is_err() {
                    remove_dir(&paths.dir);
                }
                r
            });
        let mut t = self.table();
        t.starting.remove(&spec.name);
        let entry = result?;
        let info = entry.info();
        tracing::info!(guest = %spec.name, pid = info.pid, accel = %accel, cpus = spec.cpus, memory_mib = spec.memory_mib, "vm: launched");
        t.guests.insert(spec.name.clone(), entry);
        Ok(info)
    }

    /// Everything that can be refused before anything is created; the accelerator to use.
    fn check(&self, spec: &LaunchSpec) -> Result<super::Accel, VmError> {
        let refuse = |m: String| Err(VmError::Refused(m));
        if spec.cpus == 0 {
            return refuse("a guest needs at least 1 CPU".to_string());
        }
        let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        if spec.cpus > host_cpus {
            return refuse(format!(
                "{} CPUs asked, this host has {host_cpus}: ask for at most {host_cpus}",
                spec.cpus
            ));
        }
        if spec.memory_mib < 16 {
            return refuse(format!(
                "{} MiB of memory is too little for a guest: ask for at least 16",
                spec.memory_mib
            ));
        }
        match host_memory_mib() {
            Some(host) if spec.memory_mib > host => {
                return refuse(format!(
                "{} MiB of memory asked, more than this host's {host} MiB (MemTotal): ask for less",
                spec.memory_mib
            ))
            }
            Some(_) => {}
            None => return refuse("cannot read MemTotal from /proc/meminfo".to_string()),
        }
        let choice = match &spec.accel {
            Some(s) => AccelChoice::parse(s).map_err(VmError::Refused)?,
            None => self.cfg.accel,
        };
        let accel = self
            .caps
            .resolve(choice, spec.confidential)
            .map_err(VmError::Refused)?;
        let need_file = |what: &str, p: &Path, fix: &str| -> Result<(), VmError> {
            if p.is_file() {
                Ok(())
            } else {
                Err(VmError::Refused(format!(
                    "{what} {} {}: {fix}",
                    p.display(),
                    if p.exists() {
                        "is not a file"
                    } else {
                        "does not exist"
                    }
                )))
            }
        };
        match &spec.boot {
            Boot::Kernel { kernel, initrd, .. } => {
                need_file(
                    "kernel",
                    kernel,
                    "give the path of a kernel image on this node",
                )?;
                if let Some(i) = initrd {
                    need_file("initrd", i, "give the path of an initramfs on this node")?;
                }
            }
            Boot::Disk { image, .. } => {
                need_file("disk", image, "give the path of a disk image on this node")?
            }
        }
        if spec.ovmf {
            need_file(
                "OVMF code",
                &self.cfg.ovmf_code,
                "install ovmf or set [vm] ovmf_code",
            )?;
            need_file(
                "OVMF vars",
                &self.cfg.ovmf_vars,
                "install ovmf or set [vm] ovmf_vars",
            )?;
        }
        let mut seen = BTreeSet::new();
        for f in &spec.forwards {
            if f.guest == 0 {
                return refuse("a forward's guest port cannot be 0".to_string());
            }
            if f.host != 0 && !seen.insert(f.host) {
                return refuse(format!("host port {} is forwarded twice", f.host));
            }
        }
        Ok(accel)
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        spec: &LaunchSpec,
        accel: super::Accel,
        argv: Vec<String>,
        forwards: Vec<Forward>,
        pid: u32,
        start_time: u64,
        now: u64,
    ) -> Record {
        Record {
            version: RECORD_VERSION,
            name: spec.name.clone(),
            pid,
            start_time,
            boot_id: boot_id(),
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            accel,
            confidential: spec.confidential,
            argv,
            started_at_ms: now,
            ttl_deadline_ms: spec.ttl.map(|t| now.saturating_add(t.as_millis() as u64)),
            forwards,
            node: spec.join.as_ref().map(|j| j.node.clone()),
        }
    }

    /// Makes the guest's files and starts QEMU in `paths.dir` (which exists and is ours).
    fn start(
        &self,
        spec: &LaunchSpec,
        accel: super::Accel,
        paths: &Paths,
        now: u64,
    ) -> Result<Entry, VmError> {
        if spec.ovmf {
            std::fs::copy(&self.cfg.ovmf_vars, &paths.vars).map_err(|e| {
                VmError::io(
                    format!(
                        "cannot copy {} to {}",
                        self.cfg.ovmf_vars.display(),
                        paths.vars.display()
                    ),
                    e,
                )
            })?;
        }
        let disk_format = match &spec.boot {
            Boot::Disk { image, overlay } => {
                let format = self.disk_format(image)?;
                if *overlay {
                    self.qemu_img(&[
                        "create".as_ref(),
                        "-q".as_ref(),
                        "-f".as_ref(),
                        "qcow2".as_ref(),
                        "-b".as_ref(),
                        image.as_os_str(),
                        "-F".as_ref(),
                        format.as_ref(),
                        paths.overlay.as_os_str(),
                    ])?;
                    Some("qcow2".to_string())
                } else {
                    Some(format)
                }
            }
            Boot::Kernel { .. } => None,
        };
        if let Some(j) = &spec.join {
            let token = j.token.as_deref().ok_or_else(|| {
                VmError::Refused(format!(
                    "no join token for {}: the root mints one per guest of a launch for real",
                    j.node
                ))
            })?;
            crate::enrol::write_private(&paths.token, token).map_err(|e| VmError::Start {
                name: spec.name.clone(),
                why: e.to_string(),
            })?;
        }
        let fixed: BTreeSet<u16> = spec.forwards.iter().map(|f| f.host).collect();
        let mut last_conflict = 0;
        for attempt in 1..=PORT_PICK_TRIES {
            let forwards = pick_ports(&spec.forwards)?;
            let argv = build_argv(&ArgvInput {
                cfg: &self.cfg,
                spec,
                accel,
                paths,
                disk_format: disk_format.as_deref(),
                forwards: &forwards,
            });
            match self.spawn(spec, accel, paths, argv, forwards, now)? {
                Spawned::Up(entry) => return Ok(*entry),
                Spawned::PortTaken(port) if port != 0 && fixed.contains(&port) => {
                    return Err(VmError::PortInUse(port))
                }
                Spawned::PortTaken(port) => {
                    tracing::info!(guest = %spec.name, port, attempt, "vm: a picked host port was taken meanwhile; picking again");
                    last_conflict = port;
                    for p in [&paths.qmp, &paths.serial_sock, &paths.serial_log] {
                        let _ = std::fs::remove_file(p);
                    }
                }
            }
        }
        Err(VmError::Start {
            name: spec.name.clone(),
            why: format!(
                "the host ports picked for its forwards were taken {PORT_PICK_TRIES} times (last {last_conflict}): retry later"
            ),
        })
    }

    fn qemu_img(&self, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, VmError> {
        let out = Command::new(&self.cfg.qemu_img)
            .args(args)
            .env_clear()
            .env("PATH", CLEAN_PATH)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                VmError::io(
                    format!(
                        "cannot run {}: install qemu-utils or set [vm] qemu_img",
                        self.cfg.qemu_img.display()
                    ),
                    e,
                )
            })?;
        if !out.status.success() {
            return Err(VmError::Refused(format!(
                "qemu-img {} failed: {}",
                args.first()
                    .map(|a| a.to_string_lossy())
                    .unwrap_or_default(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    }

    /// The format qemu-img sees in `image` (named explicitly to QEMU: no probing at boot).
    fn disk_format(&self, image: &Path) -> Result<String, VmError> {
        let out = self.qemu_img(&["info".as_ref(), "--output=json".as_ref(), image.as_os_str()])?;
        let v: serde_json::Value = serde_json::from_slice(&out)
            .map_err(|e| VmError::Refused(format!("qemu-img info {}: {e}", image.display())))?;
        match v.get("format").and_then(|f| f.as_str()) {
            Some(f) if f.bytes().all(|b| b.is_ascii_alphanumeric()) => Ok(f.to_string()),
            _ => Err(VmError::Refused(format!(
                "qemu-img info {} names no format: is it a disk image?",
                image.display()
            ))),
        }
    }

    /// Starts QEMU once and waits until QMP says it runs.
    fn spawn(
        &self,
        spec: &LaunchSpec,
        accel: super::Accel,
        paths: &Paths,
        argv: Vec<String>,
        forwards: Vec<Forward>,
        now: u64,
    ) -> Result<Spawned, VmError> {
        let start_err = |why: String| VmError::Start {
            name: spec.name.clone(),
            why,
        };
        // The waiter thread exists before QEMU does: if it could not be made, no QEMU is left
        // without one.
        let (tx, rx) = mpsc::channel::<Child>();
        let exit = Arc::new(Exit {
            state: Mutex::new(None),
            cv: Condvar::new(),
        });
        let waiter_exit = exit.clone();
        let name = spec.name.clone();
        std::thread::Builder::new()
            .name(format!("vm-reap-{}", spec.name))
            .spawn(move || {
                if let Ok(child) = rx.recv() {
                    reap(child, &waiter_exit, &name);
                }
            })
            .map_err(|e| start_err(format!("cannot start its waiter thread: {e}")))?;

        let log = std::fs::File::create(&paths.qemu_log)
            .map_err(|e| VmError::io(format!("cannot create {}", paths.qemu_log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| VmError::io(format!("cannot open {}", paths.qemu_log.display()), e))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env("PATH", CLEAN_PATH)
            .current_dir(&paths.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // SAFETY: between fork and exec only setsid(2), which is async-signal-safe. Its own
        // session: no signal meant for the agent's group or terminal reaches QEMU, and QEMU
        // outlives the agent.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            start_err(format!(
                "cannot run {} ({e}): install qemu-system-x86 or set [vm] qemu",
                argv[0]
            ))
        })?;
        let pid = child.id();
        let fail = |child: &mut Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            start_err(why)
        };
        let Some(start_time) = super::guest::proc_start_time(pid) else {
            return Err(fail(
                &mut child,
                format!("its pid {pid} has no /proc entry"),
            ));
        };
        let rec = self.record(spec, accel, argv, forwards, pid, start_time, now);
        // Written before the wait: an agent that dies now still finds this QEMU on restart.
        if let Err(e) = write_record(paths, &rec) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }

        let deadline = Instant::now() + self.cfg.start_timeout();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let out = tail(&paths.qemu_log, 2048).unwrap_or_default();
                    let out = String::from_utf8_lossy(&out).trim().to_string();
                    if let Some(port) = forward_conflict(&out) {
                        return Ok(Spawned::PortTaken(port));
                    }
                    return Err(start_err(format!(
                        "QEMU exited at once ({}): {}",
                        describe(status),
                        if out.is_empty() { "no output" } else { &out }
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(fail(&mut child, format!("cannot watch QEMU: {e}"))),
            }
            if let Ok(mut q) = Qmp::connect(&paths.qmp, QMP_TIMEOUT) {
                match q.status(QMP_TIMEOUT) {
                    Ok(s) if s == "running" => break,
                    Ok(s) => {
                        return Err(fail(
                            &mut child,
                            format!("QMP says the guest is {s}, not running"),
                        ))
                    }
                    Err(e) => return Err(fail(&mut child, format!("QMP: {e}"))),
                }
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    &mut child,
                    format!(
                        "QMP did not answer within {}s (see [vm] start_timeout_secs)",
                        self.cfg.start_timeout().as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(mpsc::SendError(mut child)) = tx.send(child) {
            // The waiter thread is gone (it cannot be, short of a panic): nothing would reap.
            return Err(fail(
                &mut child,
                "its waiter thread ended early".to_string(),
            ));
        }
        Ok(Spawned::Up(Box::new(Entry {
            rec,
            paths: paths.clone(),
            state: GuestState::Running,
            reattached: false,
            proc: Proc {
                pid,
                start_time,
                exit: Some(exit),
            },
            crashed_at_ms: 0,
            crash_log: Vec::new(),
        })))
    }

    /// Stops a guest: ACPI power button, then after `timeout` QMP `quit`, then SIGKILL; waits
    /// until QEMU is gone and removes every file of the guest. A crashed guest's entry is
    /// dropped (`AlreadyGone`).
    pub fn stop(&self, name: &str, timeout: Duration) -> Result<StopOutcome, VmError> {
        let (proc, paths) = {
            let mut t = self.table();
            sweep(&mut t, now_ms());
            let Some(e) = t.guests.get_mut(name) else {
                return Err(VmError::Unknown(name.to_string()));
            };
            match &e.state {
                GuestState::Crashed { reason } => {
                    let reason = reason.clone();
                    t.guests.remove(name);
                    return Ok(StopOutcome::AlreadyGone { reason });
                }
                GuestState::Stopping => {
                    return Err(VmError::Refused(format!(
                        "guest {name} is already being stopped"
                    )))
                }
                GuestState::Running | GuestState::DryRun => {}
            }
            e.state = GuestState::Stopping;
            (e.proc.clone(), e.paths.clone())
        };
        let outcome = stop_process(name, &proc, &paths, timeout);
        remove_dir(&paths.dir);
        self.table().guests.remove(name);
        tracing::info!(guest = %name, ?outcome, "vm: stopped");
        outcome
    }

    /// Stops the guests whose TTL deadline is at or before `now_ms` (unix ms), notes the guests
    /// whose QEMU ended by itself, and forgets crashed guests listed long enough. Blocks while
    /// expired guests power off (up to [`TTL_STOP_TIMEOUT`] each, one after another).
    pub fn tick(&self, now_ms: u64) -> Vec<TickEvent> {
        let mut events = Vec::new();
        let expired: Vec<String> = {
            let mut t = self.table();
            for (name, reason) in sweep(&mut t, now_ms) {
                events.push(TickEvent::Crashed { name, reason });
            }
            t.guests.retain(|_, e| {
                !matches!(e.state, GuestState::Crashed { .. })
                    || now_ms.saturating_sub(e.crashed_at_ms) < CRASHED_KEPT_MS
            });
            for e in t.guests.values().filter(|e| e.state == GuestState::Running) {
                match super::serial::trim(
                    &e.paths.serial_log,
                    super::serial::MAX_LOG,
                    super::serial::KEEP_LOG,
                ) {
                    Ok(0) => {}
                    Ok(cut) => {
                        tracing::debug!(guest = %e.rec.name, bytes = cut, "vm: serial log cut")
                    }
                    Err(err) => {
                        tracing::warn!(guest = %e.rec.name, error = %err, "vm: serial log not cut")
                    }
                }
            }
            t.guests
                .values()
                .filter(|e| e.state == GuestState::Running)
                .filter(|e| e.rec.ttl_deadline_ms.is_some_and(|d| d <= now_ms))
                .map(|e| e.rec.name.clone())
                .collect()
        };
        for name in expired {
            tracing::info!(guest = %name, "vm: TTL expired");
            match self.stop(&name, TTL_STOP_TIMEOUT) {
                Ok(outcome) => events.push(TickEvent::Expired { name, outcome }),
                Err(e) => events.push(TickEvent::ExpiryFailed {
                    name,
                    error: e.to_string(),
                }),
            }
        }
        events
    }
}

enum Spawned {
    Up(Box<Entry>),
    /// QEMU could not bind this host port for a forward (0: it did not say which).
    PortTaken(u16),
}

/// The waiter thread's work: wait for the exit without reaping, then reap under the exit lock.
fn reap(mut child: Child, exit: &Exit, name: &str) {
    let pid = Pid::from_raw(child.id() as i32);
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(guest = %name, pid = pid.as_raw(), error = %e, "vm: waitid failed; reaping directly");
                break;
            }
        }
    }
    let mut guard = exit.lock();
    let how = match child.wait() {
        Ok(status) => describe(status),
        Err(e) => format!("could not be reaped: {e}"),
    };
    tracing::debug!(guest = %name, pid = pid.as_raw(), %how, "vm: QEMU reaped");
    *guard = Some(how);
    exit.cv.notify_all();
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => match Signal::try_from(s) {
            Ok(sig) => format!("killed by {sig}"),
            Err(_) => format!("killed by signal {s}"),
        },
        _ => "ended".to_string(),
    }
}

/// Marks every running guest whose QEMU ended as crashed, removes its files; returns them.
fn sweep(t: &mut Table, now: u64) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (name, e) in t.guests.iter_mut() {
        if e.state != GuestState::Running {
            continue;
        }
        if let Some(how) = e.proc.ended() {
            let reason = if e.proc.exit.is_some() {
                format!("QEMU ended without a stop ({how})")
            } else {
                how
            };
            tracing::warn!(guest = %name, pid = e.rec.pid, %reason, "vm: guest crashed");
            mark_crashed(e, reason.clone(), now);
            found.push((name.clone(), reason));
        }
    }
    found
}

fn mark_crashed(e: &mut Entry, reason: String, now: u64) {
    e.crash_log = tail(&e.paths.serial_log, CRASH_LOG_KEPT).unwrap_or_default();
    remove_dir(&e.paths.dir);
    e.state = GuestState::Crashed { reason };
    e.crashed_at_ms = now;
}

/// The stop sequence on a process; see [`Manager::stop`].
fn stop_process(
    name: &str,
    proc: &Proc,
    paths: &Paths,
    timeout: Duration,
) -> Result<StopOutcome, VmError> {
    if proc.ended().is_some() {
        return Ok(StopOutcome::AlreadyGone {
            reason: "QEMU had already ended".to_string(),
        });
    }
    let mut qmp = match Qmp::connect(&paths.qmp, QMP_TIMEOUT) {
        Ok(q) => Some(q),
        Err(e) => {
            tracing::warn!(guest = %name, error = %e, "vm: no QMP for the stop; killing");
            None
        }
    };
    if let Some(q) = qmp.as_mut() {
        match q.execute("system_powerdown", QMP_TIMEOUT) {
            Ok(_) => {
                if proc.wait_gone(timeout) {
                    return Ok(StopOutcome::PoweredOff);
                }
                tracing::info!(guest = %name, "vm: no power-off within the timeout; quitting");
            }
            Err(e) => tracing::warn!(guest = %name, error = %e, "vm: system_powerdown failed"),
        }
        // QEMU may close the socket before answering `quit`: the exit is what counts.
        let _ = q.execute("quit", QMP_TIMEOUT);
        if proc.wait_gone(QUIT_WAIT) {
            return Ok(StopOutcome::Quit);
        }
    }
    proc.kill();
    if proc.wait_gone(KILL_WAIT) {
        Ok(StopOutcome::Killed)
    } else {
        Err(VmError::Refused(format!(
            "QEMU of guest {name} (pid {}) is still there {}s after SIGKILL: look at the process (D state?)",
            proc.pid,
            KILL_WAIT.as_secs()
        )))
    }
}

/// The host port a failed QEMU could not forward, from its message
/// "Could not set up host forwarding rule 'tcp:127.0.0.1:PORT-:GUEST'" (0 if it names none).
fn forward_conflict(out: &str) -> Option<u16> {
    let at = out.find("host forwarding rule")?;
    let rule = &out[at..];
    let port = rule
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('-').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    Some(port)
}

/// The forwards with every host port 0 replaced by a port free right now (bound on loopback,
/// then released for QEMU: a port taken in between makes QEMU fail, and the launch retries).
fn pick_ports(forwards: &[Forward]) -> Result<Vec<Forward>, VmError> {
    // All listeners are held until every port is picked, so two picks never give one port.
    let mut held = Vec::new();
    let mut out = Vec::new();
    for f in forwards {
        if f.host != 0 {
            out.push(*f);
            continue;
        }
        let l = std::net::TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| VmError::io("cannot pick a free host port on 127.0.0.1", e))?;
        let port = l
            .local_addr()
            .map_err(|e| VmError::io("cannot pick a free host port on 127.0.0.1", e))?
            .port();
        held.push(l);
        out.push(Forward {
            host: port,
            guest: f.guest,
        });
    }
    Ok(out)
}

/// The last `bytes` bytes of a file.
fn tail(path: &Path, bytes: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(bytes)))?;
    let mut buf = Vec::new();
    f.take(bytes).read_to_end(&mut buf)?;
    Ok(buf)
}

fn remove_dir(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "vm: cannot remove a guest directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemus_forwarding_error_names_the_port() {
        let out = "qemu-system-x86_64: -netdev user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:23456-:22: Could not set up host forwarding rule 'tcp:127.0.0.1:23456-:22'";
        assert_eq!(forward_conflict(out), Some(23456));
        assert_eq!(
            forward_conflict("Could not set up host forwarding rule 'x'"),
            Some(0)
        );
        assert_eq!(forward_conflict("qemu: could not load kernel"), None);
    }

    #[test]
    fn picked_ports_are_distinct_and_fixed_ones_kept() {
        let f = pick_ports(&[
            Forward { host: 0, guest: 22 },
            Forward { host: 0, guest: 80 },
            Forward {
                host: 2222,
                guest: 23,
            },
        ])
        .unwrap();
        assert_ne!(f[0].host, 0);
        assert_ne!(f[0].host, f[1].host);
        assert_eq!(f[2].host, 2222);
    }
}

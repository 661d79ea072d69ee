//! One guest: what is asked for it ([`LaunchSpec`]), what is shown of it ([`GuestInfo`]), what is
//! kept of it on disk (the state file), where its files are, and the QEMU command line.
//!
//! Pure, apart from reading and writing the state file and reading `/proc`: the manager does the
//! processes.

use super::accel::{Accel, Confidential};
use super::config::VmConfig;
use super::VmError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A TCP port forward from the host's loopback to the guest (`--fwd HOST:GUEST`). Host port 0
/// means "pick a free one".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub host: u16,
    pub guest: u16,
}

impl Forward {
    /// Reads `HOST:GUEST`.
    pub fn parse(s: &str) -> Result<Forward, VmError> {
        let bad = || {
            VmError::Refused(format!(
                "bad port forward '{}': write HOST:GUEST, two TCP ports (HOST 0 picks a free port)",
                s.escape_debug()
            ))
        };
        let (h, g) = s.split_once(':').ok_or_else(bad)?;
        let host: u16 = h.parse().map_err(|_| bad())?;
        let guest: u16 = g.parse().map_err(|_| bad())?;
        if guest == 0 {
            return Err(bad());
        }
        Ok(Forward { host, guest })
    }
}

/// How the guest boots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Boot {
    /// A kernel (and initramfs) given to QEMU directly.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        /// The kernel command line; default `console=ttyS0 panic=-1` (a panic ends QEMU, which
        /// runs with -no-reboot, so it shows as a crash instead of a hung guest).
        append: Option<String>,
    },
    /// A disk image; with `overlay`, the guest writes to a qcow2 overlay in its directory and the
    /// image is left untouched.
    Disk { image: PathBuf, overlay: bool },
}

/// What a guest whose agent joins the tree (`--join`) is given, through QEMU's fw_cfg (files
/// under `opt/banyan/` the guest reads in `/sys/firmware/qemu_fw_cfg`), never on its kernel
/// command line, which the guest's every process can read.
#[derive(Clone, PartialEq, Eq)]
pub struct GuestJoin {
    /// Its node name in the tree, `HOST-vm-NAME` (`opt/banyan/name`).
    pub node: String,
    /// The root's mesh address as the guest reaches it (`opt/banyan/root`).
    pub root: String,
    /// Its join token's text (`opt/banyan/token`); `None` in a dry run, for which the root
    /// mints none.
    pub token: Option<String>,
}

impl std::fmt::Debug for GuestJoin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestJoin")
            .field("node", &self.node)
            .field("root", &self.root)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// What an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    pub name: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub boot: Boot,
    /// Boot through UEFI (OVMF) with a private copy of the vars file.
    pub ovmf: bool,
    /// `auto`, `kvm` or `tcg`; `None` takes `[vm] accel`.
    pub accel: Option<String>,
    pub confidential: Confidential,
    pub forwards: Vec<Forward>,
    /// The guest is stopped this long after its launch (kept as an absolute deadline).
    pub ttl: Option<Duration>,
    /// Its own agent joins the tree.
    pub join: Option<GuestJoin>,
}

impl LaunchSpec {
    /// A guest booting `kernel` with 1 CPU and 128 MiB, nothing else.
    pub fn kernel(name: &str, kernel: &Path, initrd: Option<&Path>) -> LaunchSpec {
        LaunchSpec {
            name: name.to_string(),
            cpus: 1,
            memory_mib: 128,
            boot: Boot::Kernel {
                kernel: kernel.to_path_buf(),
                initrd: initrd.map(Path::to_path_buf),
                append: None,
            },
            ovmf: false,
            accel: None,
            confidential: Confidential::None,
            forwards: Vec::new(),
            ttl: None,
            join: None,
        }
    }
}

/// Where a guest is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum GuestState {
    /// QEMU runs and answered QMP.
    Running,
    /// A stop is under way.
    Stopping,
    /// QEMU ended without being asked (or did not answer after an agent restart and was killed);
    /// its files are gone. Listed until a stop of its name, or for ten minutes.
    Crashed { reason: String },
    /// `launch(.., dry_run = true)`: nothing was started.
    DryRun,
}

/// What is shown of a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    pub name: String,
    pub state: GuestState,
    pub cpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
    pub confidential: Confidential,
    /// Unix milliseconds.
    pub started_at_ms: u64,
    /// Unix milliseconds; the guest is stopped at this time.
    pub ttl_deadline_ms: Option<u64>,
    pub pid: u32,
    /// With the host ports QEMU actually bound (picked ones filled in).
    pub forwards: Vec<Forward>,
    /// Started by an earlier agent and taken over by this one.
    pub reattached: bool,
    /// The QEMU command line (program first).
    pub argv: Vec<String>,
    /// The node its agent joins the tree as, when launched with `--join`.
    pub node: Option<String>,
}

/// The state file: what a restarted agent needs to find and judge a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub version: u32,
    pub name: String,
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot): with the pid, names the process
    /// even after the pid is reused.
    pub start_time: u64,
    /// The boot this QEMU runs in (`/proc/sys/kernel/random/boot_id`): after a reboot a pid and
    /// start time can match another process.
    pub boot_id: String,
    pub cpus: u32,
    pub memory_mib: u64,
    pub accel: Accel,
    pub confidential: Confidential,
    pub argv: Vec<String>,
    pub started_at_ms: u64,
    pub ttl_deadline_ms: Option<u64>,
    pub forwards: Vec<Forward>,
    /// The node its agent joins the tree as (`--join`); absent in older state files.
    #[serde(default)]
    pub node: Option<String>,
}

pub(crate) const RECORD_VERSION: u32 = 1;

impl Record {
    pub fn info(&self, state: GuestState, reattached: bool) -> GuestInfo {
        GuestInfo {
            name: self.name.clone(),
            state,
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            accel: self.accel,
            confidential: self.confidential,
            started_at_ms: self.started_at_ms,
            ttl_deadline_ms: self.ttl_deadline_ms,
            pid: self.pid,
            forwards: self.forwards.clone(),
            reattached,
            argv: self.argv.clone(),
            node: self.node.clone(),
        }
    }
}

/// The files of one guest, all in its directory.
#[derive(Debug, Clone)]
pub(crate) struct Paths {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub qmp: PathBuf,
    pub serial_sock: PathBuf,
    pub serial_log: PathBuf,
    pub qemu_log: PathBuf,
    pub vars: PathBuf,
    pub overlay: PathBuf,
    /// A joining guest's token, handed to QEMU's fw_cfg (mode 0600, owner only; it goes with
    /// the directory). Spent at the guest's enrolment, so it enrols nothing afterwards.
    pub token: PathBuf,
}

/// sun_path holds 108 bytes with its NUL.
const MAX_SOCKET_PATH: usize = 107;

impl Paths {
    pub fn new(guests_dir: &Path, name: &str) -> Paths {
        let dir = guests_dir.join(name);
        Paths {
            state: dir.join("state.json"),
            qmp: dir.join("qmp.sock"),
            serial_sock: dir.join("serial.sock"),
            serial_log: dir.join("serial.log"),
            qemu_log: dir.join("qemu.log"),
            vars: dir.join("OVMF_VARS.fd"),
            overlay: dir.join("overlay.qcow2"),
            token: dir.join("join-token"),
            dir,
        }
    }

    /// Refuses a state dir so deep that the sockets' paths do not fit in a unix socket address.
    pub fn check_socket_paths(&self) -> Result<(), VmError> {
        for p in [&self.qmp, &self.serial_sock] {
            if p.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(VmError::Refused(format!(
                    "{} is longer than a unix socket path may be ({MAX_SOCKET_PATH} bytes): choose a shorter [vm] state_dir or guest name",
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

/// Writes the state file atomically: a temporary file, synced, renamed over the old one.
pub(crate) fn write_record(paths: &Paths, rec: &Record) -> Result<(), VmError> {
    let tmp = paths.dir.join(".state.json.tmp");
    let what = || format!("cannot write {}", paths.state.display());
    let body = serde_json::to_vec_pretty(rec)
        .map_err(|e| VmError::io(what(), std::io::Error::other(e)))?;
    let mut f = std::fs::File::create(&tmp).map_err(|e| VmError::io(what(), e))?;
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .map_err(|e| VmError::io(what(), e))?;
    std::fs::rename(&tmp, &paths.state).map_err(|e| VmError::io(what(), e))
}

/// Reads a state file; any problem is a sentence for the crash report.
pub(crate) fn read_record(path: &Path) -> Result<Record, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() > 1 << 20 {
        return Err(format!("{} is larger than 1 MiB", path.display()));
    }
    let rec: Record = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a guest state file: {e}", path.display()))?;
    if rec.version != RECORD_VERSION {
        return Err(format!(
            "{} has version {}, this agent reads {RECORD_VERSION}",
            path.display(),
            rec.version
        ));
    }
    Ok(rec)
}

/// Field 22 (starttime) of `/proc/PID/stat`, or `None` if the process is gone. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last ')'.
pub(crate) fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // `rest` starts at field 3 (state): field 22 is the 20th.
    rest.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// The state letter of `/proc/PID/stat` (`Z` for a zombie), or `None` if the process is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_ascii_whitespace().next()?.chars().next()
}

/// Whether `pid` is still the process that started at `start_time` (and not a zombie).
pub(crate) fn same_process(pid: u32, start_time: u64) -> bool {
    proc_start_time(pid) == Some(start_time) && proc_state(pid) != Some('Z')
}

pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The host's memory (MemTotal) in MiB, if `/proc/meminfo` says.
pub(crate) fn host_memory_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// What the command line needs beyond the spec.
pub(crate) struct ArgvInput<'a> {
    pub cfg: &'a VmConfig,
    pub spec: &'a LaunchSpec,
    pub accel: Accel,
    pub paths: &'a Paths,
    /// The disk's format (`qcow2` for an overlay), for `Boot::Disk`.
    pub disk_format: Option<&'a str>,
    /// The forwards with their host ports chosen.
    pub forwards: &'a [Forward],
}

/// The QEMU command line, program first.
///
/// `-nodefaults` and `-display none`: no default NIC, monitor, serial or display, so everything
/// the guest has is listed here. The serial port is a unix socket chardev that also logs to a
/// file, so the log exists from the start and a console can attach to the socket later.
/// Networking, only when there are forwards, is QEMU's user networking with `restrict=on`: the
/// guest reaches neither the host nor anything beyond it, and the `hostfwd` rules (which
/// `restrict` does not affect) are bound to 127.0.0.1 only. A guest that joins the tree
/// (`--join`) must reach the root over UDP (QUIC), which `restrict=on` and `guestfwd` (TCP only)
/// cannot give: its user networking is unrestricted, so it reaches what its host reaches, NATed
/// behind the host's address; its node name, the root's address and its token come by fw_cfg.
pub(crate) fn build_argv(i: &ArgvInput<'_>) -> Vec<String> {
    let s = |x: &str| x.to_string();
    let p = |x: &Path| x.display().to_string();
    let mut a = vec![p(&i.cfg.qemu)];
    a.extend([
        s("-name"),
        format!("{},process=banyan-vm-{}", i.spec.name, i.spec.name),
    ]);
    a.extend([s("-nodefaults"), s("-no-user-config")]);
    let mut machine = i.cfg.machine.clone();
    match i.spec.confidential {
        Confidential::None => {}
        Confidential::SevSnp => {
            machine.push_str(",confidential-guest-support=sev0");
            a.extend([
                s("-object"),
                s("sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1"),
            ]);
        }
        Confidential::Tdx => {
            machine.push_str(",kernel-irqchip=split,confidential-guest-support=tdx0");
            a.extend([s("-object"), s("tdx-guest,id=tdx0")]);
        }
    }
    a.extend([s("-machine"), machine, s("-accel"), s(i.accel.as_str())]);
    if i.accel == Accel::Kvm {
        a.extend([s("-cpu"), s("host")]);
    }
    a.extend([
        s("-smp"),
        i.spec.cpus.to_string(),
        s("-m"),
        format!("{}M", i.spec.memory_mib),
    ]);
    a.extend([s("-display"), s("none"), s("-no-reboot")]);
    a.extend([
        s("-qmp"),
        format!("unix:{},server=on,wait=off", p(&i.paths.qmp)),
    ]);
    a.extend([
        s("-chardev"),
        format!(
            "socket,id=ser0,path={},server=on,wait=off,logfile={},logappend=on",
            p(&i.paths.serial_sock),
            p(&i.paths.serial_log)
        ),
        s("-serial"),
        s("chardev:ser0"),
    ]);
    if i.spec.ovmf {
        a.extend([
            s("-drive"),
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                p(&i.cfg.ovmf_code)
            ),
            s("-drive"),
            format!("if=pflash,format=raw,unit=1,file={}", p(&i.paths.vars)),
        ]);
    }
    match &i.spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            append,
        } => {
            a.extend([s("-kernel"), p(kernel)]);
            if let Some(initrd) = initrd {
                a.extend([s("-initrd"), p(initrd)]);
            }
            a.extend([
                s("-append"),
                append
                    .clone()
                    .unwrap_or_else(|| s("console=ttyS0 panic=-1")),
            ]);
        }
        Boot::Disk { image, overlay } => {
            let file = if *overlay { &i.paths.overlay } else { image };
            a.extend([
                s("-drive"),
                format!(
                    "if=virtio,format={},file={}",
                    i.disk_format.unwrap_or("raw"),
                    p(file)
                ),
            ]);
        }
    }
    if let Some(j) = &i.spec.join {
        a.extend([
            s("-fw_cfg"),
            format!("name=opt/banyan/name,string={}", j.node),
            s("-fw_cfg"),
            format!("name=opt/banyan/root,string={}", j.root),
            s("-fw_cfg"),
            format!("name=opt/banyan/token,file={}", p(&i.paths.token)),
        ]);
    }
    if !i.forwards.is_empty() || i.spec.join.is_some() {
        let mut netdev = s(if i.spec.join.is_some() {
            "user,id=n0"
        } else {
            "user,id=n0,restrict=on"
        });
        for f in i.forwards {
            netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
        }
        a.extend([
            s("-netdev"),
            netdev,
            s("-device"),
            s("virtio-net-pci,netdev=n0,romfile="),
        ]);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_the_name() {
        let stat = "4242 (qemu) (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 1000 200";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
        assert_eq!(parse_start_time("1 (x) S 1"), None);
        let own = proc_start_time(std::process::id()).unwrap();
        assert!(own > 0);
        assert!(matches!(proc_state(std::process::id()), Some('R' | 'S')));
    }

    #[test]
    fn forwards_are_two_ports() {
        assert_eq!(
            Forward::parse("2222:22").unwrap(),
            Forward {
                host: 2222,
                guest: 22
            }
        );
        assert_eq!(Forward::parse("0:80").unwrap().host, 0);
        for bad in ["22", "a:b", "1:0", "70000:22", ":22", "2222:22:1", "-1:22"] {
            assert!(Forward::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_line_isolates_the_guest() {
        let cfg = VmConfig::default();
        let paths = Paths::new(Path::new("/s/vm"), "g1");
        let mut spec = LaunchSpec::kernel("g1", Path::new("/k"), Some(Path::new("/i")));
        spec.ovmf = true;
        let fwd = [Forward {
            host: 2222,
            guest: 22,
        }];
        let argv = build_argv(&ArgvInput {
            cfg: &cfg,
            spec: &spec,
            accel: Accel::Tcg,
            paths: &paths,
            disk_format: None,
            forwards: &fwd,
        });
        let line = argv.join(" ");
        for want in [
            "-nodefaults",
            "-machine q35 -accel tcg",
            "-smp 1 -m 128M",
            "-display none -no-reboot",
            "-qmp unix:/s/vm/g1/qmp.sock,server=on,wait=off",
            "logfile=/s/vm/g1/serial.log,logappend=on",
            "file=/s/vm/g1/OVMF_VARS.fd",
            "-kernel /k -initrd /i -append console=ttyS0 panic=-1",
            "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22",
        ] {
            assert!(line.contains(want), "missing {want} in {line}");
        }
        assert!(!line.contains("-cpu host"));
        assert!(!line.contains("fw_cfg"));
    }

    #[test]
    fn a_joining_guest_gets_its_token_by_fw_cfg_and_unrestricted_networking() {
        let cfg = VmConfig::default();
        let paths = Paths::new(Path::new("/s/vm"), "g1");
        let mut spec = LaunchSpec::kernel("g1", Path::new("/k"), Some(Path::new("/i")));
        spec.join = Some(GuestJoin {
            node: "cn1-vm-g1".into(),
            root: "10.0.2.2:1337".into(),
            token: Some("BNY1.secret".into()),
        });
        assert!(!format!("{spec:?}").contains("BNY1.secret"));
        let argv = build_argv(&ArgvInput {
            cfg: &cfg,
            spec: &spec,
            accel: Accel::Tcg,
            paths: &paths,
            disk_format: None,
            forwards: &[],
        });
        let line = argv.join(" ");
        for want in [
            "-fw_cfg name=opt/banyan/name,string=cn1-vm-g1",
            "-fw_cfg name=opt/banyan/root,string=10.0.2.2:1337",
            "-fw_cfg name=opt/banyan/token,file=/s/vm/g1/join-token",
            "-netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile=",
            "-append console=ttyS0 panic=-1",
        ] {
            assert!(line.contains(want), "missing {want} in {line}");
        }
        assert!(
            !line.contains("BNY1") && !line.contains("restrict"),
            "{line}"
        );
    }

    #[test]
    fn long_state_dirs_are_refused_for_sockets() {
        let deep = format!("/{}", "d".repeat(80));
        let e = Paths::new(Path::new(&deep), &"n".repeat(40))
            .check_socket_paths()
            .unwrap_err();
        assert!(e.to_string().contains("state_dir"), "{e}");
        assert!(Paths::new(Path::new("/var/lib/banyan-agent/vm"), "g")
            .check_socket_paths()
            .is_ok());
    }
}

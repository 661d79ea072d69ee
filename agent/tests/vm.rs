//! The guest supervisor (`banyan_agent::vm`) with real QEMU: boots, lists, stops, TTLs, an agent
//! restart, a crash behind its back, and refusals. The guest is the kernel + busybox initramfs of
//! `scripts/lib/guest image`, built (or found cached) under `target/tmp/banyan-guest`; QEMU comes
//! from `scripts/lib/guest install` (scripts/test runs it). Without QEMU a test fails, unless
//! BANYAN_TEST_LENIENT=1, where it notes the skip.
//!
//! No test measures time: the deadlines below are liveness bounds (TCG boots the guest in ~6 s
//! on an idle machine), far above what the behaviour needs. Every test kills, by pid, whatever
//! QEMU it started that is still there at its end (also when it fails), and removes its state
//! directory.

use banyan_agent::vm::guest::proc_state;
use banyan_agent::vm::{
    Confidential, Forward, GuestInfo, GuestState, HostCaps, LaunchSpec, Manager, StopOutcome,
    TickEvent, VmConfig, VmError,
};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Liveness bound for a boot or a stop.
const LIVENESS: Duration = Duration::from_secs(120);
/// What the guest's /init prints on its console once up.
const MARKER: &str = "banyan-guest: up";

/// The guest image, built once per process (the script itself serialises builds across
/// processes and returns at once when cached), or `None` (lenient skip) without QEMU.
fn image() -> Option<&'static (PathBuf, PathBuf)> {
    static IMAGE: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    let r = IMAGE.get_or_init(|| {
        let qemu_ok = std::process::Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !qemu_ok {
            return Err(
                "qemu-system-x86_64 is not installed (run scripts/lib/guest install)".into(),
            );
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("banyan-guest");
        let out = std::process::Command::new(root.join("scripts/lib/guest"))
            .arg("image")
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run scripts/lib/guest: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "scripts/lib/guest image failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok((dir.join("vmlinuz"), dir.join("initramfs.gz")))
    });
    match r {
        Ok(paths) => Some(paths),
        Err(why) if std::env::var("BANYAN_TEST_LENIENT").is_ok_and(|v| v == "1") => {
            note_skip(why);
            None
        }
        Err(why) => panic!("{why} (BANYAN_TEST_LENIENT=1 skips instead)"),
    }
}

fn note_skip(why: &str) {
    println!("SKIPPED: {why}");
    if let Some(path) = std::env::var_os("BANYAN_SKIP_LOG") {
        use std::io::Write;
        let test = std::thread::current()
            .name()
            .unwrap_or("a test")
            .to_string();
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}

/// A test's state dir, and the QEMU pids it must not leave behind.
struct Fixture {
    state: PathBuf,
    pids: std::sync::Mutex<Vec<u32>>,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        // Short, under /tmp: socket paths must fit in 108 bytes.
        let state = std::env::temp_dir().join(format!("bvm-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).expect("state dir");
        Fixture {
            state,
            pids: Default::default(),
        }
    }
    fn config(&self) -> VmConfig {
        VmConfig {
            state_dir: self.state.clone(),
            ..VmConfig::default()
        }
    }
    fn guests_dir(&self) -> PathBuf {
        self.state.join("vm")
    }
    /// Launches and remembers the pid for the cleanup.
    fn launch(&self, m: &Manager, spec: LaunchSpec) -> Result<GuestInfo, VmError> {
        let info = m.launch(spec, false)?;
        self.pids.lock().unwrap().push(info.pid);
        Ok(info)
    }
    /// The entries left in the guests' directory.
    fn leftovers(&self) -> Vec<String> {
        match std::fs::read_dir(self.guests_dir()) {
            Ok(d) => d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for &pid in self.pids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if proc_is_qemu(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn proc_is_qemu(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("qemu-system"))
        && proc_state(pid).is_some_and(|s| s != 'Z')
}

/// The spec of a test guest booting the image.
fn spec(name: &str) -> LaunchSpec {
    let (k, i) = image().expect("image");
    let mut s = LaunchSpec::kernel(name, k, Some(i));
    if let banyan_agent::vm::Boot::Kernel { append, .. } = &mut s.boot {
        *append = Some("console=ttyS0 panic=-1 quiet".to_string());
    }
    s
}

fn wait_marker(m: &Manager, name: &str) {
    let deadline = Instant::now() + LIVENESS;
    loop {
        let log = m.log_tail(name, 1 << 16).expect("log_tail");
        if String::from_utf8_lossy(&log).contains(MARKER) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not print its boot marker; its serial log:\n{}",
            String::from_utf8_lossy(&log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pid is gone or (reaped soon by whoever is its parent) not a QEMU any more, and no child
/// of this process is a zombie.
fn assert_gone_and_reaped(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|&p| proc_is_qemu(p)).collect();
        let zombies = zombie_children();
        if alive.is_empty() && zombies.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "QEMU still running: {alive:?}; zombie children: {zombies:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Children of this process in state Z.
fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        if f.first() == Some(&"Z") && f.get(1) == Some(&me.as_str()) {
            out.push(pid);
        }
    }
    out
}

fn expected_accel() -> banyan_agent::vm::Accel {
    HostCaps::get()
        .resolve(banyan_agent::vm::AccelChoice::Auto, Confidential::None)
        .expect("auto always resolves")
}

#[test]
fn two_guests_boot_list_and_stop_without_leftovers() {
    if image().is_none() {
        return;
    }
    let fx = Fixture::new("two");
    let m = Manager::open(fx.config()).unwrap();
    let mut a = spec("alpha");
    a.cpus = 2;
    a.memory_mib = 160;
    let b = spec("beta");
    // Launched side by side: each launch returns once QEMU answers QMP.
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| fx.launch(&m, a));
        let hb = s.spawn(|| fx.launch(&m, b));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let (ia, ib) = (ra.unwrap(), rb.unwrap());
    assert_ne!(ia.pid, ib.pid);
    wait_marker(&m, "alpha");
    wait_marker(&m, "beta");

    let list = m.list();
    assert_eq!(list.len(), 2, "{list:?}");
    let (la, lb) = (&list[0], &list[1]);
    assert_eq!((la.name.as_str(), lb.name.as_str()), ("alpha", "beta"));
    assert_eq!((la.cpus, la.memory_mib), (2, 160));
    assert_eq!((lb.cpus, lb.memory_mib), (1, 128));
    for g in [la, lb] {
        assert_eq!(g.state, GuestState::Running);
        assert_eq!(g.accel, expected_accel());
        assert!(!g.reattached && g.ttl_deadline_ms.is_none());
        assert!(proc_is_qemu(g.pid));
        let dir = fx.guests_dir().join(&g.name);
        for f in [
            "state.json",
            "qmp.sock",
            "serial.sock",
            "serial.log",
            "qemu.log",
        ] {
            assert!(dir.join(f).exists(), "{} lacks {f}", dir.display());
        }
    }

    // The console: a command typed on alpha's serial socket runs in its shell.
    {
        use std::io::{Read, Write};
        let mut c =
            std::os::unix::net::UnixStream::connect(m.console_socket("alpha").unwrap()).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        c.write_all(b"echo console-$((6*7))\n").unwrap();
        let deadline = Instant::now() + LIVENESS;
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("console-42") {
            assert!(
                Instant::now() < deadline,
                "no answer: {}",
                String::from_utf8_lossy(&seen)
            );
            let mut buf = [0u8; 4096];
            if let Ok(n) = c.read(&mut buf) {
                seen.extend_from_slice(&buf[..n]);
            }
        }
    }

    // Stopped side by side: the ACPI power button powers both off.
    let (sa, sb) = std::thread::scope(|s| {
        let ha = s.spawn(|| m.stop("alpha", LIVENESS));
        let hb = s.spawn(|| m.stop("beta", LIVENESS));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    assert_eq!(sa.unwrap(), StopOutcome::PoweredOff);
    assert_eq!(sb.unwrap(), StopOutcome::PoweredOff);
    assert!(m.list().is_empty());
    assert_gone_and_reaped(&[ia.pid, ib.pid]);
    assert_eq!(fx.leftovers(), Vec::<String>::new());
    assert!(matches!(
        m.stop("alpha", LIVENESS),
        Err(VmError::Unknown(_))
    ));
}

#[test]
fn a_restarted_manager_reattaches_keeps_ttls_and_reports_a_killed_guest() {
    if image().is_none() {
        return;
    }
    let fx = Fixture::new("restart");
    let m = Manager::open(fx.config()).unwrap();
    let mut t = spec("ttl");
    t.ttl = Some(Duration::from_secs(3600));
    let (rt, rv) = std::thread::scope(|s| {
        let ht = s.spawn(|| fx.launch(&m, t));
        let hv = s.spawn(|| fx.launch(&m, spec("victim")));
        (ht.join().unwrap(), hv.join().unwrap())
    });
    let (it, iv) = (rt.unwrap(), rv.unwrap());
    let deadline = it.ttl_deadline_ms.expect("a TTL deadline");
    assert!(deadline >= it.started_at_ms + 3_600_000);
    wait_marker(&m, "ttl");
    wait_marker(&m, "victim");
    // Before the deadline, a tick does nothing.
    assert_eq!(m.tick(deadline - 1), vec![]);

    // The agent "restarts": the QEMUs run on in their own sessions.
    drop(m);
    assert!(proc_is_qemu(it.pid) && proc_is_qemu(iv.pid));
    let m = Manager::open(fx.config()).unwrap();
    let list = m.list();
    assert_eq!(list.len(), 2, "{list:?}");
    for g in &list {
        assert_eq!(g.state, GuestState::Running, "{g:?}");
        assert!(g.reattached);
    }
    assert_eq!(list[0].name, "ttl");
    assert_eq!(list[0].ttl_deadline_ms, Some(deadline));
    assert_eq!(list[0].pid, it.pid);

    // The TTL expires (time given, not waited for): the re-attached guest is stopped.
    let events = m.tick(deadline);
    assert_eq!(
        events,
        vec![TickEvent::Expired {
            name: "ttl".to_string(),
            outcome: StopOutcome::PoweredOff
        }]
    );
    assert!(!fx.guests_dir().join("ttl").exists());

    // QEMU killed behind the manager's back: reported crashed once, files removed.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(iv.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let crashed = {
        let deadline = Instant::now() + LIVENESS;
        loop {
            let l = m.list();
            if let Some(g) = l
                .iter()
                .find(|g| matches!(g.state, GuestState::Crashed { .. }))
            {
                break g.clone();
            }
            assert!(Instant::now() < deadline, "no crash seen: {l:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(crashed.name, "victim");
    assert_eq!(fx.leftovers(), Vec::<String>::new());
    // The end of its console is kept for a look.
    let log = m.log_tail("victim", 4096).unwrap();
    assert!(String::from_utf8_lossy(&log).contains(MARKER));
    assert!(matches!(
        m.stop("victim", LIVENESS).unwrap(),
        StopOutcome::AlreadyGone { .. }
    ));
    assert!(m.list().is_empty());
    assert_gone_and_reaped(&[it.pid, iv.pid]);

    // A manager opened on a directory whose guest died meanwhile reports it crashed.
    let m2_guest = fx.launch(&m, spec("orphan")).unwrap();
    drop(m);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m2_guest.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_gone_and_reaped(&[m2_guest.pid]);
    let m = Manager::open(fx.config()).unwrap();
    let l = m.list();
    assert_eq!(l.len(), 1);
    assert!(
        matches!(&l[0].state, GuestState::Crashed { reason } if reason.contains("ended")),
        "{l:?}"
    );
    assert_eq!(fx.leftovers(), Vec::<String>::new());
}

#[test]
fn forwards_bind_loopback_and_a_port_in_use_is_refused() {
    if image().is_none() {
        return;
    }
    let fx = Fixture::new("fwd");
    let m = Manager::open(fx.config()).unwrap();
    let busy = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = busy.local_addr().unwrap().port();
    let mut s = spec("fixed");
    s.forwards = vec![Forward {
        host: port,
        guest: 22,
    }];
    let e = fx.launch(&m, s).unwrap_err();
    assert!(matches!(e, VmError::PortInUse(p) if p == port), "{e}");
    assert!(e
        .to_string()
        .contains(&format!("host port {port} is in use")));
    assert_eq!(fx.leftovers(), Vec::<String>::new());
    assert!(m.list().is_empty());
    drop(busy);

    // Port 0: one is picked, and QEMU listens on it (loopback only).
    let mut s = spec("picked");
    s.forwards = vec![Forward { host: 0, guest: 22 }];
    let g = fx.launch(&m, s).unwrap();
    let host = g.forwards[0].host;
    assert_ne!(host, 0);
    assert!(std::net::TcpStream::connect(("127.0.0.1", host)).is_ok());
    assert!(g
        .argv
        .join(" ")
        .contains(&format!("hostfwd=tcp:127.0.0.1:{host}-:22")));

    // Killed behind the manager's back while its child: reaped, reported, cleaned up.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(g.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + LIVENESS;
    let reason = loop {
        let events = m.tick(0);
        if let Some(TickEvent::Crashed { name, reason }) = events.first() {
            assert_eq!(name, "picked");
            break reason.clone();
        }
        assert!(Instant::now() < deadline, "no crash seen");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(reason.contains("SIGKILL"), "{reason}");
    assert_gone_and_reaped(&[g.pid]);
    assert_eq!(fx.leftovers(), Vec::<String>::new());
    // Reported once by tick; listed until acknowledged.
    assert_eq!(m.tick(0), vec![]);
    assert_eq!(m.list().len(), 1);
}

#[test]
fn bad_input_is_refused_clearly_with_nothing_left_behind() {
    if image().is_none() {
        return;
    }
    let fx = Fixture::new("bad");
    let m = Manager::open(fx.config()).unwrap();
    let refused = |spec: LaunchSpec, want: &str| {
        let name = spec.name.clone();
        let e = m.launch(spec, false).unwrap_err().to_string();
        assert!(e.contains(want), "{name}: '{e}' lacks '{want}'");
        assert_eq!(fx.leftovers(), Vec::<String>::new(), "after {name}");
        e
    };

    let mut s = spec("nokernel");
    s.boot = banyan_agent::vm::Boot::Kernel {
        kernel: fx.state.join("no-such-vmlinuz"),
        initrd: None,
        append: None,
    };
    refused(s, "no-such-vmlinuz does not exist");
    let mut s = spec("nodisk");
    s.boot = banyan_agent::vm::Boot::Disk {
        image: "/nonexistent/disk.qcow2".into(),
        overlay: true,
    };
    refused(s, "disk /nonexistent/disk.qcow2 does not exist");
    let mut s = spec("huge");
    s.memory_mib = 1 << 30;
    refused(s, "MemTotal");
    let mut s = spec("xen");
    s.accel = Some("xen".to_string());
    refused(s, "unknown accelerator 'xen'");
    if !HostCaps::get().sev_snp {
        let mut s = spec("sev");
        s.confidential = Confidential::SevSnp;
        refused(s, "no SEV-SNP");
    }
    if !HostCaps::get().kvm {
        let mut s = spec("kvm");
        s.accel = Some("kvm".to_string());
        refused(s, "KVM is not usable on this host");
    }
    for name in ["a/b", "../etc", "x;reboot", "$(id)", ".hidden", ""] {
        refused(spec(name), "bad guest name");
    }

    // A dry run shows the command line and creates nothing.
    let dry = m.launch(spec("dup"), true).unwrap();
    assert_eq!(dry.state, GuestState::DryRun);
    assert!(dry.argv.iter().any(|a| a == "-no-reboot"));
    assert_eq!(fx.leftovers(), Vec::<String>::new());

    // Two guests with one name: the second is refused and the first untouched. The first is
    // stopped before its kernel has set up ACPI, so the stop ends with quit (or kill).
    let first = fx.launch(&m, spec("dup")).unwrap();
    let e = refused_keeping(&m, spec("dup"));
    assert!(e.contains("already exists"), "{e}");
    assert!(proc_is_qemu(first.pid));
    assert_eq!(fx.leftovers(), vec!["dup".to_string()]);
    let how = m.stop("dup", Duration::from_millis(1)).unwrap();
    assert!(
        matches!(how, StopOutcome::Quit | StopOutcome::PoweredOff),
        "{how:?}"
    );
    assert_gone_and_reaped(&[first.pid]);
    assert_eq!(fx.leftovers(), Vec::<String>::new());
}

#[test]
fn a_disk_guest_gets_its_own_overlay_and_ovmf_vars_and_leaves_neither() {
    if image().is_none() {
        return;
    }
    let fx = Fixture::new("disk");
    let base = fx.state.join("base.raw");
    std::fs::write(&base, vec![0u8; 1 << 20]).unwrap();
    let m = Manager::open(fx.config()).unwrap();
    let mut s = spec("disky");
    s.boot = banyan_agent::vm::Boot::Disk {
        image: base.clone(),
        overlay: true,
    };
    s.ovmf = true;
    let g = fx.launch(&m, s).unwrap();
    let dir = fx.guests_dir().join("disky");
    let line = g.argv.join(" ");
    let overlay = dir.join("overlay.qcow2");
    let vars = dir.join("OVMF_VARS.fd");
    assert!(
        line.contains(&format!("format=qcow2,file={}", overlay.display())),
        "{line}"
    );
    assert!(
        line.contains(&format!("unit=1,file={}", vars.display())),
        "{line}"
    );
    assert!(overlay.is_file() && vars.is_file());
    // The firmware has no OS to hand the power button to: the stop ends with quit.
    let how = m.stop("disky", Duration::from_millis(500)).unwrap();
    assert!(
        matches!(how, StopOutcome::Quit | StopOutcome::PoweredOff),
        "{how:?}"
    );
    assert_gone_and_reaped(&[g.pid]);
    assert_eq!(fx.leftovers(), Vec::<String>::new());
    assert_eq!(
        std::fs::read(&base).unwrap(),
        vec![0u8; 1 << 20],
        "the base image is untouched"
    );
}

#[test]
fn a_guest_whose_qmp_is_gone_is_killed_on_stop_and_on_reattach() {
    if image().is_none() {
        return;
    }
    let fx = Fixture::new("deaf");
    let m = Manager::open(fx.config()).unwrap();
    let a = fx.launch(&m, spec("deaf1")).unwrap();
    let b = fx.launch(&m, spec("deaf2")).unwrap();
    for name in ["deaf1", "deaf2"] {
        std::fs::remove_file(fx.guests_dir().join(name).join("qmp.sock")).unwrap();
    }
    // No QMP: nothing to ask, so the stop kills.
    assert_eq!(m.stop("deaf1", LIVENESS).unwrap(), StopOutcome::Killed);
    assert_gone_and_reaped(&[a.pid]);
    assert_eq!(fx.leftovers(), vec!["deaf2".to_string()]);

    // After a restart, a QEMU that runs but does not answer cannot be managed: killed, reported.
    drop(m);
    let m = Manager::open(fx.config()).unwrap();
    let l = m.list();
    assert_eq!(l.len(), 1, "{l:?}");
    assert!(
        matches!(&l[0].state, GuestState::Crashed { reason } if reason.contains("did not answer QMP")),
        "{l:?}"
    );
    assert_gone_and_reaped(&[b.pid]);
    assert_eq!(fx.leftovers(), Vec::<String>::new());
}

fn refused_keeping(m: &Manager, spec: LaunchSpec) -> String {
    m.launch(spec, false).unwrap_err().to_string()
}

//! The test-host harness against real namespaces: addresses, reachability over UDP, cutting and restoring
//! a host, and cleaning up after itself, also when a test panics. Needs root (see `Testnet::require`).

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use banyan_tests::testnet::Testnet;

/// Replies "pong" to every datagram on ADDR:1337 (argv[1]).
const ECHO_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 1337))
while True:
    data, peer = s.recvfrom(64)
    s.sendto(b"pong", peer)
"#;

/// Sends "ping" to ADDR:1337 (argv[1]); exits 0 on a "pong" within 1 s, 1 otherwise.
const ECHO_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
s.sendto(b"ping", (sys.argv[1], 1337))
try:
    sys.exit(0 if s.recvfrom(64)[0] == b"pong" else 1)
except OSError:
    sys.exit(1)
"#;

/// Debian's python3: PATH may lead to a slower wrapper (pyenv shims).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn log_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("testnet-{}-{name}.log", std::process::id()))
}

/// Whether host `from` gets an answer from the echo server on `to_addr`, one try.
fn answers(net: &Testnet, from: usize, to_addr: &str) -> Result<bool> {
    Ok(net
        .exec(from, &[python(), "-c", ECHO_CLIENT, to_addr])?
        .status
        .success())
}

/// Whether host `from` gets an answer within `budget` (the server may still be starting, ARP resolving).
fn answers_within(net: &Testnet, from: usize, to_addr: &str, budget: Duration) -> Result<bool> {
    let deadline = Instant::now() + budget;
    loop {
        if answers(net, from, to_addr)? {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Names of the network namespaces `ip netns list` shows that belong to the net with `prefix`.
fn namespaces_of(prefix: &str) -> Result<Vec<String>> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    ensure!(out.status.success(), "ip netns list failed");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            name.strip_prefix(prefix)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(str::to_owned)
        .collect())
}

/// Links (the bridge-side veths, `<prefix>v<i>`) left from the net with `prefix`.
fn links_of(prefix: &str) -> Result<Vec<String>> {
    let veth = format!("{prefix}v");
    Ok(std::fs::read_dir("/sys/class/net")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(&veth))
        .collect())
}

/// PIDs of live processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

#[test]
fn four_hosts_reach_each_other_cut_restore_and_clean_up() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let mut net = Testnet::up(4)?;
    let prefix = net.prefix().to_owned();
    let hosts = net.hosts().to_vec();
    assert_eq!(hosts.len(), 4);

    for (i, host) in hosts.iter().enumerate() {
        assert_eq!(host.name, format!("{prefix}{}", i + 1));
        let out = net.exec(i, &["ip", "-4", "-o", "addr", "show", "dev", "eth0"])?;
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains(&format!("inet {}/15 ", host.addr)),
            "{}: eth0 does not have {}/15: {shown}",
            host.name,
            host.addr
        );
        let out = net.exec(i, &["sh", "-c", "echo $BANYAN_HOST"])?;
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), host.name);
    }

    // Host names resolve inside the hosts (their /etc/hosts lists the net).
    let out = net.exec(0, &["getent", "hosts", &hosts[2].name])?;
    let resolved = String::from_utf8_lossy(&out.stdout);
    assert!(
        resolved.starts_with(&format!("{} ", hosts[2].addr)),
        "{} resolves to {resolved:?} on {}",
        hosts[2].name,
        hosts[0].name
    );

    // Host 3 runs a UDP echo server on the default port of its own address; host 1 talks to it.
    let target = hosts[2].addr.to_string();
    net.spawn(
        2,
        Path::new(python()),
        &["-c", ECHO_SERVER, &target],
        &[],
        &log_path("echo"),
    )?;
    assert!(
        answers_within(&net, 0, &target, Duration::from_secs(10))?,
        "host 1 never reached host 3 at {target}"
    );

    net.cut(2)?;
    for _ in 0..2 {
        assert!(
            !answers(&net, 0, &target)?,
            "host 1 still reaches host 3 after the cut"
        );
    }

    net.restore(2)?;
    assert!(
        answers_within(&net, 0, &target, Duration::from_secs(10))?,
        "host 1 does not reach host 3 again after restore"
    );

    drop(net);
    assert_eq!(namespaces_of(&prefix)?, Vec::<String>::new());
    assert_eq!(links_of(&prefix)?, Vec::<String>::new());
    Ok(())
}

#[test]
fn spawned_processes_are_stopped_and_the_net_removed_when_a_test_panics() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    // A command line no other test runs: two sleeps, one forked into the background, so that the whole
    // process group has to be killed, not just the process the harness started.
    let seconds = format!("{}", 900_000 + std::process::id());
    let script = format!("sleep {seconds} & exec sleep {seconds}");
    let mut prefix = String::new();

    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let mut net = Testnet::up(2).expect("up");
        prefix = net.prefix().to_owned();
        let pid = net
            .spawn(
                1,
                Path::new("/bin/sh"),
                &["-c", &script],
                &[],
                &log_path("sleep"),
            )
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        while processes_running(&["sleep", &seconds]).len() < 2 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(processes_running(&["sleep", &seconds]).len(), 2);
        assert!(processes_running(&["sleep", &seconds]).contains(&pid));
        panic!("deliberate panic with a live process in net {prefix}");
    }));
    assert!(outcome.is_err(), "the closure was meant to panic");

    assert!(!prefix.is_empty());
    assert_eq!(processes_running(&["sleep", &seconds]), Vec::<u32>::new());
    assert_eq!(namespaces_of(&prefix)?, Vec::<String>::new());
    assert_eq!(links_of(&prefix)?, Vec::<String>::new());
    Ok(())
}

#[test]
fn terminate_and_kill_stop_a_process_group() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let mut net = Testnet::up(1)?;
    // Two sleeps in one process group, one in the background: stopping the group must stop both.
    let seconds = format!("{}", 800_000 + std::process::id());
    let group = format!("sleep {seconds} & exec sleep {seconds}");
    // The same, deaf to SIGTERM (an ignored signal stays ignored across exec).
    let deaf = format!("trap '' TERM; {group}");
    let log = log_path("group");
    let count_within = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while processes_running(&["sleep", &seconds]).len() != n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        processes_running(&["sleep", &seconds]).len()
    };

    let pid = net.spawn(0, Path::new("/bin/sh"), &["-c", &group], &[], &log)?;
    assert_eq!(count_within(2), 2);
    net.terminate(pid)?;
    assert_eq!(count_within(0), 0, "SIGTERM left sleeps behind");
    assert!(
        net.terminate(pid).is_err(),
        "a stopped process is no longer tracked"
    );

    let pid = net.spawn(0, Path::new("/bin/sh"), &["-c", &deaf], &[], &log)?;
    assert_eq!(count_within(2), 2);
    net.terminate(pid)?;
    assert_eq!(
        count_within(0),
        0,
        "SIGKILL after the grace period left sleeps behind"
    );

    let pid = net.spawn(0, Path::new("/bin/sh"), &["-c", &group], &[], &log)?;
    assert_eq!(count_within(2), 2);
    net.kill(pid)?;
    assert_eq!(count_within(0), 0, "kill left sleeps behind");
    assert!(net.kill(pid).is_err());
    Ok(())
}

#[test]
fn out_of_range_hosts_are_errors() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let mut net = Testnet::up(1)?;
    assert!(net.exec(1, &["true"]).is_err());
    assert!(net.cut(5).is_err());
    assert!(net
        .spawn(1, Path::new("/bin/true"), &[], &[], &log_path("none"))
        .is_err());
    let out = net.exec(0, &["sh", "-c", "exit 7"]).context("exec")?;
    assert_eq!(out.status.code(), Some(7));
    Ok(())
}

//! The action executors running real processes on this machine: exec's isolation, bounds and
//! ends; service's configured-commands backend (and systemd's, through a stand-in systemctl).
//!
//! No test measures time: deadlines below are liveness bounds (a hang fails the test instead of
//! stalling the suite), far above what the behaviour needs. This process makes itself the child
//! subreaper, so processes orphaned by the commands (daemons, killed groups) become its children
//! and each test reaps the ones it made: none is left behind, not even as a zombie, whatever
//! PID 1 does.

use banyan_agent::actions::service::Service;
use banyan_agent::actions::{Executors, RunContext};
use banyan_agent::config::{self, ActionsConfig};
use banyan_protocol::action::{ExecTask, NodeResult, ServiceOp, ServiceTask, Task, UnitState};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Liveness bound for one action: nothing here should come close.
const LIVENESS: Duration = Duration::from_secs(60);

fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    });
}

/// A private directory, removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("banyan-actions-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn exec_task(argv: &[&str], shell: bool, user: Option<&str>, max_output: u64) -> Task {
    Task::Exec(ExecTask {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        shell,
        user: user.map(str::to_string),
        max_output,
        stream: false,
    })
}

fn sh(line: &str) -> Task {
    exec_task(&[line], true, None, 64 * 1024)
}

async fn run(executors: &Executors, task: Task, for_real: bool, timeout: Duration) -> NodeResult {
    let (ctx, _cancel) = RunContext::new(for_real, timeout);
    tokio::time::timeout(LIVENESS, executors.run(task, ctx))
        .await
        .expect("the action did not end within the liveness bound")
}

fn default_executors() -> Executors {
    setup();
    Executors::new(&ActionsConfig::default(), None)
}

/// Live (not zombie) processes whose process group is `pgid`.
fn live_members(pgid: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // state, ppid, pgrp
        if f.get(2) == Some(&pgid.to_string().as_str()) && f.first() != Some(&"Z") {
            found.push(pid);
        }
    }
    found
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .map(|i| s[i + 1..].trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Reaps the children of this process in group `pgid` (orphans it adopted as subreaper).
fn reap_group(pgid: i32) {
    let until = std::time::Instant::now() + LIVENESS;
    loop {
        match waitpid(Pid::from_raw(-pgid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                assert!(
                    std::time::Instant::now() < until,
                    "group {pgid} never ended"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(_) => {}
            Err(_) => return, // ECHILD: no child left in the group
        }
    }
}

/// Kills `pid` (a daemon a test started) and reaps it.
fn kill_and_reap(pid: i32) {
    let p = Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    let _ = waitpid(p, None);
}

/// Waits (liveness-bounded) until `path` exists.
async fn wait_for_file(path: &Path) {
    let until = tokio::time::Instant::now() + LIVENESS;
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < until,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- exec

#[tokio::test]
async fn exec_captures_stdout_stderr_and_the_exit_status() {
    let ex = default_executors();
    let r = run(&ex, sh("echo out; echo err >&2; exit 3"), true, LIVENESS).await;
    assert!(!r.ok && !r.dry_run, "{r:?}");
    assert_eq!((r.stdout.as_str(), r.stderr.as_str()), ("out\n", "err\n"));
    assert_eq!((r.exit, r.signal), (Some(3), None));
    assert_eq!(r.summary, "exit 3");

    let r = run(
        &ex,
        exec_task(&["printf", "%s|", "a b", "c"], false, None, 1024),
        true,
        LIVENESS,
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.stdout, "a b|c|");
    assert_eq!(r.summary, "exit 0");

    let r = run(&ex, sh("kill -9 $$"), true, LIVENESS).await;
    assert_eq!((r.ok, r.exit, r.signal), (false, None, Some(9)), "{r:?}");
    assert_eq!(r.summary, "killed by signal 9 (SIGKILL)");

    let r = run(
        &ex,
        exec_task(&["banyan-no-such-program"], false, None, 1024),
        true,
        LIVENESS,
    )
    .await;
    assert!(!r.ok && r.summary.contains("not found"), "{r:?}");
}

#[tokio::test]
async fn exec_uses_no_shell_unless_asked() {
    let ex = default_executors();
    let r = run(
        &ex,
        exec_task(&["echo", "$HOME", "a;b"], false, None, 1024),
        true,
        LIVENESS,
    )
    .await;
    assert_eq!(r.stdout, "$HOME a;b\n");
    let r = run(
        &ex,
        exec_task(&["echo", "$HOME;", "echo", "x"], true, None, 1024),
        true,
        LIVENESS,
    )
    .await;
    assert_eq!(r.stdout, "/root\nx\n");
}

#[tokio::test]
async fn exec_gives_a_clean_environment_and_stdin_from_dev_null() {
    // The test process's own environment (CARGO_*, RUST_*, ...) must not reach the command.
    let ex = default_executors();
    let r = run(&ex, exec_task(&["env"], false, None, 4096), true, LIVENESS).await;
    let mut lines: Vec<&str> = r.stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "HOME=/root",
            "LANG=C.UTF-8",
            "LOGNAME=root",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "USER=root"
        ]
    );
    let r = run(&ex, exec_task(&["cat"], false, None, 4096), true, LIVENESS).await;
    assert!(r.ok && r.stdout.is_empty(), "{r:?}");
    // Its own session: the command leads its session and group.
    let r = run(
        &ex,
        sh("ps -o sid= -o pgid= -p $$; echo $$"),
        true,
        LIVENESS,
    )
    .await;
    let words: Vec<&str> = r.stdout.split_whitespace().collect();
    if words.len() == 3 {
        assert!(words[0] == words[2] && words[1] == words[2], "{words:?}");
    }
}

#[tokio::test]
async fn exec_runs_as_the_given_user() {
    let ex = default_executors();
    let r = run(
        &ex,
        sh("id -u; id -g; echo $HOME $USER $LOGNAME; pwd"),
        true,
        LIVENESS,
    )
    .await;
    assert_eq!(r.stdout, "0\n0\n/root root root\n/root\n");
    let task = exec_task(
        &["id -u; id -g; echo $HOME $USER $LOGNAME; pwd"],
        true,
        Some("nobody"),
        1024,
    );
    let r = run(&ex, task, true, LIVENESS).await;
    assert!(r.ok, "{r:?}");
    // nobody's home, /nonexistent, is not a directory: the command runs in /.
    assert_eq!(r.stdout, "65534\n65534\n/nonexistent nobody nobody\n/\n");
    let r = run(
        &ex,
        exec_task(&["id", "-G"], false, Some("nobody"), 1024),
        true,
        LIVENESS,
    )
    .await;
    assert!(
        !r.stdout.split_whitespace().any(|g| g == "0"),
        "root's groups kept: {r:?}"
    );
}

#[tokio::test]
async fn exec_refuses_an_unknown_user_even_in_a_dry_run() {
    let ex = default_executors();
    for for_real in [true, false] {
        let task = exec_task(&["true"], false, Some("banyan-nosuchuser"), 1024);
        let r = run(&ex, task, for_real, LIVENESS).await;
        assert!(!r.ok, "{r:?}");
        assert_eq!(r.dry_run, !for_real);
        assert_eq!(r.summary, "no user banyan-nosuchuser on this node");
    }
}

#[tokio::test]
async fn exec_at_its_deadline_kills_the_command_and_its_children() {
    let ex = default_executors();
    let task = sh("echo $$; sleep 100 & sleep 100");
    let r = run(&ex, task, true, Duration::from_secs(1)).await;
    assert!(!r.ok, "{r:?}");
    assert!(r.summary.starts_with("timed out after 1s"), "{r:?}");
    assert_eq!(r.signal, Some(15), "{r:?}");
    let pgid: i32 = r.stdout.trim().parse().expect("the group id");
    assert_eq!(live_members(pgid), Vec::<i32>::new(), "left running");
    reap_group(pgid);
}

#[tokio::test]
async fn exec_output_is_capped_and_drained_so_the_command_never_blocks() {
    let ex = default_executors();
    let task = exec_task(
        &["yes | head -c 10000000; yes e | head -c 300000 >&2"],
        true,
        None,
        1000,
    );
    let r = run(&ex, task, true, LIVENESS).await;
    assert!(r.ok && r.truncated, "{}", r.summary);
    assert_eq!(r.stdout, "y\n".repeat(500));
    assert_eq!(r.stderr, "e\n".repeat(500));
    assert!(
        r.summary.contains("truncated to 1000 bytes"),
        "{}",
        r.summary
    );
}

#[tokio::test]
async fn exec_does_not_wait_for_a_daemon_that_keeps_its_output_open() {
    let ex = default_executors();
    // The action's own timeout is longer than the liveness bound: only returning when the
    // command itself exits passes.
    let r = run(
        &ex,
        sh("sleep 300 & echo started $!"),
        true,
        Duration::from_secs(600),
    )
    .await;
    assert!(r.ok, "{r:?}");
    let pid: i32 = r
        .stdout
        .strip_prefix("started ")
        .and_then(|p| p.trim().parse().ok())
        .expect("the daemon's pid");
    assert!(
        r.summary.contains("processes it started keep it open"),
        "{}",
        r.summary
    );
    assert!(alive(pid), "the daemon the command started was killed");
    kill_and_reap(pid);
}

#[tokio::test]
async fn exec_cancelled_kills_the_command() {
    let ex = default_executors();
    let dir = TempDir::new("cancel");
    let marker = dir.path("started");
    let task = sh(&format!("echo $$; touch {}; sleep 100", marker.display()));
    let (ctx, cancel) = RunContext::new(true, Duration::from_secs(600));
    let running = tokio::spawn(ex.run(task, ctx));
    wait_for_file(&marker).await;
    cancel.send_replace(true);
    let r = tokio::time::timeout(LIVENESS, running)
        .await
        .expect("cancel did not end the action")
        .expect("the task panicked");
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.summary, "cancelled");
    let pgid: i32 = r.stdout.trim().parse().expect("the group id");
    assert!(live_members(pgid).is_empty());
    reap_group(pgid);
}

#[tokio::test]
async fn exec_dry_run_runs_nothing_but_says_what_it_would() {
    let ex = default_executors();
    let dir = TempDir::new("dry");
    let marker = dir.path("ran");
    let m = marker.display().to_string();
    let r = run(
        &ex,
        exec_task(&["touch", &m], false, None, 1024),
        false,
        Duration::from_secs(30),
    )
    .await;
    assert!(r.ok && r.dry_run, "{r:?}");
    assert_eq!(
        r.summary,
        format!("would run: touch {m} (as root, no shell, timeout 30s)")
    );
    let r = run(
        &ex,
        exec_task(&["touch", &m], true, Some("nobody"), 1024),
        false,
        LIVENESS,
    )
    .await;
    assert!(
        r.ok && r
            .summary
            .contains("(as nobody, through /bin/sh -c, timeout 1m)"),
        "{r:?}"
    );
    assert!(!marker.exists(), "a dry run ran the command");

    let r = run(
        &ex,
        exec_task(&["banyan-no-such-program"], false, None, 1024),
        false,
        LIVENESS,
    )
    .await;
    assert!(
        !r.ok && r.dry_run && r.summary.contains("would fail"),
        "{r:?}"
    );
}

#[tokio::test]
async fn exec_can_be_disabled_in_the_config() {
    let cfg = config::parse("[exec]\nenabled = false\n", Path::new("agent.toml")).expect("config");
    let ex = Executors::new(&cfg.actions, None);
    for for_real in [true, false] {
        let r = run(&ex, sh("true"), for_real, LIVENESS).await;
        assert!(!r.ok && r.summary.contains("disabled"), "{r:?}");
    }
}

// ---------------------------------------------------------------- service

fn service_executors(toml: &str, state_dir: &Path) -> Executors {
    setup();
    let cfg = config::parse(toml, Path::new("agent.toml")).expect("config");
    let service = Service::new(&cfg.actions.service, Some(state_dir)).with_systemctl(None);
    Executors::with(vec![Arc::new(service)])
}

fn service(op: ServiceOp, units: &[&str]) -> Task {
    Task::Service(ServiceTask {
        op,
        units: units.iter().map(|s| s.to_string()).collect(),
    })
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .expect("a pid in the pid file")
}

fn sleeper_config(dir: &TempDir) -> String {
    let pid = dir.path("sleeper.pid");
    format!(
        r#"
[service]
allow = ["sleeper"]

[service.units.sleeper]
start = "sleep 1000 & echo $! > {pid}"
pid_file = "{pid}"

[service.units.unlisted]
start = ["/bin/true"]
pid_file = "{pid}"
"#,
        pid = pid.display()
    )
}

#[tokio::test]
async fn service_starts_a_daemon_without_waiting_for_it_and_stops_it() {
    let dir = TempDir::new("sleeper");
    let ex = service_executors(&sleeper_config(&dir), &dir.0);
    let pid_file = dir.path("sleeper.pid");
    let t = Duration::from_secs(600);

    let r = run(&ex, service(ServiceOp::Status, &["sleeper"]), true, t).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.units[0].state, UnitState::Inactive);
    assert_eq!(r.summary, "sleeper inactive");

    let r = run(&ex, service(ServiceOp::Start, &["sleeper"]), true, t).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.units[0].state, r.units[0].detail.as_str()),
        (UnitState::Active, "started")
    );
    assert_eq!(r.summary, "start: sleeper active");
    let first = read_pid(&pid_file);
    assert!(alive(first));

    let r = run(&ex, service(ServiceOp::Start, &["sleeper"]), true, t).await;
    assert!(r.ok && r.units[0].detail == "already active", "{r:?}");
    assert_eq!(read_pid(&pid_file), first, "started twice");

    let r = run(&ex, service(ServiceOp::Status, &["sleeper"]), true, t).await;
    assert!(r.ok && r.units[0].state == UnitState::Active, "{r:?}");

    let r = run(&ex, service(ServiceOp::Restart, &["sleeper"]), true, t).await;
    assert!(r.ok && r.units[0].detail == "restarted", "{r:?}");
    let second = read_pid(&pid_file);
    assert_ne!(second, first);
    assert!(!alive(first) && alive(second));
    kill_and_reap(first);

    let r = run(&ex, service(ServiceOp::Stop, &["sleeper"]), true, t).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.units[0].state, r.units[0].detail.as_str()),
        (UnitState::Inactive, "stopped")
    );
    assert!(!alive(second), "still running after stop");
    kill_and_reap(second);

    let r = run(&ex, service(ServiceOp::Stop, &["sleeper"]), true, t).await;
    assert!(r.ok && r.units[0].detail == "already inactive", "{r:?}");
}

#[tokio::test]
async fn service_dry_runs_change_nothing_and_status_reads_the_real_state() {
    let dir = TempDir::new("dry-service");
    let ex = service_executors(&sleeper_config(&dir), &dir.0);
    let pid_file = dir.path("sleeper.pid");
    let t = Duration::from_secs(600);

    let r = run(&ex, service(ServiceOp::Start, &["sleeper"]), false, t).await;
    assert!(r.ok && r.dry_run, "{r:?}");
    assert_eq!(r.summary, "would start sleeper");
    assert_eq!(r.units[0].state, UnitState::Inactive);
    assert!(
        r.units[0]
            .detail
            .starts_with("would start sleeper (configured command: /bin/sh -c 'sleep 1000 &"),
        "{}",
        r.units[0].detail
    );
    assert!(!pid_file.exists(), "a dry run started the unit");

    let r = run(&ex, service(ServiceOp::Start, &["sleeper"]), true, t).await;
    assert!(r.ok, "{r:?}");
    let pid = read_pid(&pid_file);

    let r = run(&ex, service(ServiceOp::Status, &["sleeper"]), false, t).await;
    assert!(
        r.ok && r.dry_run && r.units[0].state == UnitState::Active,
        "{r:?}"
    );

    let r = run(&ex, service(ServiceOp::Stop, &["sleeper"]), false, t).await;
    assert!(r.ok && r.units[0].state == UnitState::Active, "{r:?}");
    assert!(
        r.units[0]
            .detail
            .starts_with(&format!("would stop sleeper (SIGTERM to pid {pid})")),
        "{}",
        r.units[0].detail
    );
    assert!(alive(pid), "a dry run stopped the unit");

    let r = run(&ex, service(ServiceOp::Stop, &["sleeper"]), true, t).await;
    assert!(r.ok, "{r:?}");
    kill_and_reap(pid);
}

#[tokio::test]
async fn service_refuses_a_unit_outside_the_allow_list_before_touching_any() {
    let dir = TempDir::new("allow");
    let ex = service_executors(&sleeper_config(&dir), &dir.0);
    for for_real in [true, false] {
        for units in [&["unlisted"][..], &["sleeper", "sshd"][..]] {
            let r = run(&ex, service(ServiceOp::Start, units), for_real, LIVENESS).await;
            assert!(!r.ok && r.units.is_empty(), "{r:?}");
            let refused = units.last().copied().unwrap_or_default();
            assert_eq!(
                r.summary,
                format!(
                    "unit {refused} is not in this node's allow list (agent.toml [service] allow)"
                )
            );
        }
    }
    assert!(
        !dir.path("sleeper.pid").exists(),
        "the allowed unit was started"
    );

    // Allowed, but no commands and no systemd here.
    let ex = service_executors("[service]\nallow = [\"sshd\"]\n", &dir.0);
    let r = run(&ex, service(ServiceOp::Status, &["sshd"]), true, LIVENESS).await;
    assert!(!r.ok && r.summary.contains("does not run systemd"), "{r:?}");
}

#[tokio::test]
async fn service_status_commands_and_remembered_failures() {
    let dir = TempDir::new("status-cmd");
    let flag = dir.path("flag");
    let toml = format!(
        r#"
[service]
allow = ["flag", "broken"]

[service.units.flag]
start = ["touch", "{flag}"]
stop = ["rm", "-f", "{flag}"]
status = ["test", "-e", "{flag}"]
user = "nobody"

[service.units.broken]
start = "echo cannot bind port 8774 >&2; exit 4"
stop = "true"
status = "false"
"#,
        flag = flag.display()
    );
    // nobody must be able to create the flag.
    nix::unistd::chown(&dir.0, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
    let ex = service_executors(&toml, &dir.0);
    let t = LIVENESS;

    let r = run(
        &ex,
        service(ServiceOp::Status, &["flag", "broken"]),
        true,
        t,
    )
    .await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.summary, "flag inactive, broken inactive");

    let r = run(&ex, service(ServiceOp::Start, &["flag", "broken"]), true, t).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.summary, "start: flag active, broken failed");
    assert_eq!(r.units[1].state, UnitState::Failed);
    assert!(
        r.units[1].detail.contains("exit 4") && r.units[1].detail.contains("cannot bind port 8774"),
        "{}",
        r.units[1].detail
    );
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&flag).expect("flag"));
    assert_eq!(owner, 65534, "the unit's commands did not run as its user");

    let r = run(&ex, service(ServiceOp::Status, &["broken"]), true, t).await;
    assert_eq!(r.units[0].state, UnitState::Failed, "{r:?}");

    let r = run(&ex, service(ServiceOp::Stop, &["flag", "broken"]), true, t).await;
    assert!(r.ok, "{r:?}");
    assert!(!flag.exists());
    let r = run(&ex, service(ServiceOp::Status, &["broken"]), true, t).await;
    assert_eq!(
        r.units[0].state,
        UnitState::Inactive,
        "failure not forgotten after stop: {r:?}"
    );
}

#[tokio::test]
async fn service_start_commands_are_bounded_and_cancellable() {
    let dir = TempDir::new("slow-start");
    let marker = dir.path("starting");
    let toml = format!(
        r#"
[service]
allow = ["slow"]

[service.units.slow]
start = "touch {m}; exec sleep 100"
stop = "true"
status = "false"
"#,
        m = marker.display()
    );
    let ex = service_executors(&toml, &dir.0);

    let r = run(
        &ex,
        service(ServiceOp::Start, &["slow"]),
        true,
        Duration::from_secs(1),
    )
    .await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.units[0].state, UnitState::Failed);
    assert!(
        r.units[0].detail.contains("timed out"),
        "{}",
        r.units[0].detail
    );

    std::fs::remove_file(&marker).expect("marker");
    let (ctx, cancel) = RunContext::new(true, Duration::from_secs(600));
    let running = tokio::spawn(ex.run(service(ServiceOp::Restart, &["slow"]), ctx));
    wait_for_file(&marker).await;
    cancel.send_replace(true);
    let r = tokio::time::timeout(LIVENESS, running)
        .await
        .expect("cancel did not end the action")
        .expect("the task panicked");
    assert!(!r.ok && r.summary.starts_with("cancelled"), "{r:?}");
    assert_eq!(r.units[0].state, UnitState::Unknown);
}

#[tokio::test]
async fn service_uses_systemctl_for_units_without_commands() {
    setup();
    let dir = TempDir::new("systemd");
    let systemctl = dir.path("systemctl");
    let d = dir.0.display();
    std::fs::write(
        &systemctl,
        format!(
            r#"#!/bin/sh
echo "$@" >> {d}/calls
case "$1" in
  is-active) if [ -e {d}/$2.on ]; then echo active; else echo inactive; exit 3; fi ;;
  --no-ask-password)
    case "$2" in start|restart) touch {d}/$3.on ;; stop) rm -f {d}/$3.on ;; esac ;;
esac
"#
        ),
    )
    .expect("systemctl");
    std::fs::set_permissions(
        &systemctl,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let cfg = config::parse(
        "[service]\nallow = [\"nova-compute\"]\n",
        Path::new("agent.toml"),
    )
    .expect("config");
    let svc = Service::new(&cfg.actions.service, None).with_systemctl(Some(systemctl));
    let ex = Executors::with(vec![Arc::new(svc)]);

    let r = run(
        &ex,
        service(ServiceOp::Start, &["nova-compute"]),
        false,
        LIVENESS,
    )
    .await;
    assert!(r.ok && r.units[0].state == UnitState::Inactive, "{r:?}");
    assert_eq!(r.units[0].detail, "would run systemctl start nova-compute");

    let r = run(
        &ex,
        service(ServiceOp::Start, &["nova-compute"]),
        true,
        LIVENESS,
    )
    .await;
    assert!(r.ok && r.units[0].state == UnitState::Active, "{r:?}");
    let r = run(
        &ex,
        service(ServiceOp::Stop, &["nova-compute"]),
        true,
        LIVENESS,
    )
    .await;
    assert!(r.ok && r.units[0].state == UnitState::Inactive, "{r:?}");

    let calls = std::fs::read_to_string(dir.path("calls")).expect("calls");
    assert_eq!(
        calls,
        "is-active nova-compute\n\
         --no-ask-password start nova-compute\nis-active nova-compute\n\
         --no-ask-password stop nova-compute\nis-active nova-compute\n"
    );
}

//! `banyan-run` and the preloaded library against a fake agent speaking the ingest protocol.
//!
//! The fake agent listens on an abstract socket name unique to the test, answers every hello
//! with a welcome (or holds the welcomes until the test lets it), and keeps what each stream (each
//! process) said. The wrapped commands are `/bin/sh`, `head` and `cat`, and one small C program
//! built with `cc` (the C compiler the Rust toolchain links with) for a crash at a chosen moment.
//! Nothing here asserts how long anything took: waits are bounded by a generous liveness deadline
//! ([`LIVENESS`]) that only turns a hang into a failure.

use banyan_protocol::frame::{self, Greeting};
use banyan_protocol::ingest::{AgentReply, RankExit, RankMsg, INGEST_VERSION};
use banyan_protocol::job::JobDesc;
use banyan_protocol::metric::{MetricSet, Value};
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one stream (one process) told the agent.
#[derive(Debug, Default, Clone)]
struct Stream {
    hello: Option<(JobDesc, u32)>,
    /// Whether the stream opened with `Process` (a process a rank started) rather than `Hello`.
    process: bool,
    updates: Vec<MetricSet>,
    exit: Option<RankExit>,
    ended: bool,
}

struct FakeAgent {
    name: String,
    streams: Arc<Mutex<Vec<Stream>>>,
    stop: Arc<AtomicBool>,
    /// Whether hellos are answered.
    gate: Arc<AtomicBool>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A liveness deadline, not a timing claim: how long a process or a stream may take before the
/// test calls it hung (generous, for a loaded machine).
const LIVENESS: Duration = Duration::from_secs(30);

impl FakeAgent {
    fn start() -> FakeAgent {
        FakeAgent::with(200, true)
    }

    /// An agent that asks for an update every `period_ms`. It answers a hello at once if
    /// `welcome` is set, else only once [`FakeAgent::welcome`] is called (reading nothing more
    /// from that stream meanwhile).
    fn with(period_ms: u64, welcome: bool) -> FakeAgent {
        let name = format!(
            "banyan-interpose-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixListener::bind_addr(&addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let streams: Arc<Mutex<Vec<Stream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let gate = Arc::new(AtomicBool::new(welcome));
        let (s, st, g) = (streams.clone(), stop.clone(), gate.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (s, g) = (s.clone(), g.clone());
                        let index = {
                            let mut all = s.lock().unwrap();
                            all.push(Stream::default());
                            all.len() - 1
                        };
                        std::thread::spawn(move || serve(conn, &s, index, period_ms, &g));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeAgent {
            name,
            streams,
            stop,
            gate,
        }
    }

    /// Lets the agent answer the hellos it holds, and every later one.
    fn welcome(&self) {
        self.gate.store(true, Ordering::SeqCst);
    }

    fn socket(&self) -> String {
        format!("@{}", self.name)
    }

    /// The streams once every one of them has ended (within the liveness deadline).
    fn ended_streams(&self, at_least: usize) -> Vec<Stream> {
        let deadline = Instant::now() + LIVENESS;
        loop {
            let all = self.streams.lock().unwrap().clone();
            if all.len() >= at_least && all.iter().all(|s| s.ended) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "streams still open after {LIVENESS:?} (hung): {all:#?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn read_msg(conn: &mut UnixStream) -> Option<RankMsg> {
    let mut prefix = [0u8; 4];
    conn.read_exact(&mut prefix).ok()?;
    let len = frame::body_len(prefix).ok()?;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).ok()?;
    Some(frame::decode_body(&body).expect("a frame that decodes"))
}

fn serve(
    mut conn: UnixStream,
    streams: &Mutex<Vec<Stream>>,
    index: usize,
    period_ms: u64,
    gate: &AtomicBool,
) {
    conn.set_nonblocking(false).unwrap();
    let mut greeting = [0u8; 8];
    if conn.read_exact(&mut greeting).is_ok() {
        Greeting::check(&greeting, INGEST_VERSION).expect("the ingest greeting");
        while let Some(msg) = read_msg(&mut conn) {
            let mut all = streams.lock().unwrap();
            let s = &mut all[index];
            let process = matches!(msg, RankMsg::Process { .. });
            match msg {
                RankMsg::Hello { job, rank } | RankMsg::Process { job, rank } => {
                    assert!(s.hello.is_none(), "a second hello");
                    s.process = process;
                    s.hello = Some((job, rank));
                    drop(all);
                    while !gate.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    let reply = frame::encode(&AgentReply::Welcome { period_ms }).unwrap();
                    // The process may already be gone (it sent everything at exit).
                    let _ = conn.write_all(&reply);
                }
                RankMsg::Update { delta } => {
                    assert!(s.hello.is_some() && s.exit.is_none(), "update out of order");
                    s.updates.push(delta);
                }
                RankMsg::Exit { how } => {
                    assert!(s.exit.is_none(), "a second exit");
                    s.exit = Some(how);
                }
            }
        }
    }
    streams.lock().unwrap()[index].ended = true;
}

fn counter_sum(streams: &[Stream], key: &str) -> f64 {
    streams
        .iter()
        .flat_map(|s| s.updates.iter())
        .map(|u| u.counter(key))
        .sum()
}

fn banyan_run() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_banyan-run"))
}

#[test]
fn a_wrapped_shell_reports_its_io_and_its_crash() {
    let agent = FakeAgent::start();
    let file = std::env::temp_dir().join(format!("banyan-interpose-test-{}", std::process::id()));
    // The trailing `exit` keeps the shell from exec'ing its last command: three processes.
    let script = format!(
        "head -c 100000 /dev/zero > {f}; cat {f} > /dev/null; exit 0",
        f = file.display()
    );
    let status = banyan_run()
        .args([
            "-u",
            &agent.socket(),
            "-j",
            "test-1",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .status()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert_eq!(status.code(), Some(0));

    // sh, head and cat: each process that loaded the library is one stream of rank 0; only sh,
    // the process banyan-run started, is the rank, head and cat are processes of it.
    let streams = agent.ended_streams(3);
    assert_eq!(streams.len(), 3, "sh, head and cat: {streams:#?}");
    let ranks = streams.iter().filter(|s| !s.process).count();
    assert_eq!(ranks, 1, "one rank, two processes: {streams:#?}");
    for s in &streams {
        let (job, rank) = s.hello.as_ref().expect("every stream says hello");
        assert_eq!(job.jobid, "test-1");
        assert_eq!(*rank, 0);
        assert!(job.command.contains("head -c 100000"), "{}", job.command);
        assert_eq!(s.exit, Some(RankExit::Exited(0)), "{s:#?}");
    }
    // head reads 100,000 bytes of /dev/zero and writes them to the file through stdio (glibc's
    // internal aliases, not counted: a known gap); cat reads them back and writes them to
    // /dev/null with write(2). The shell itself reads and writes nothing.
    let written = counter_sum(&streams, "banyan_io_bytes_total{function=\"write\"}");
    let read = counter_sum(&streams, "banyan_io_bytes_total{function=\"read\"}");
    assert_eq!(written, 100_000.0, "write bytes: {streams:#?}");
    assert_eq!(read, 200_000.0, "read bytes: {streams:#?}");
    // Every process reports its resource use at exit: its peak memory is the kernel's (not known
    // here), but no process runs in none.
    for s in &streams {
        assert!(
            s.updates
                .iter()
                .any(|u| matches!(u.get("banyan_proc_max_rss_bytes"), Some(Value::Gauge(g)) if g.last > 0.0)),
            "no peak memory: {s:#?}"
        );
    }
    drop(agent);

    // A shell that kills itself with SIGSEGV: the handler says so before the process dies.
    let agent = FakeAgent::start();
    let status = banyan_run()
        .args([
            "-u",
            &agent.socket(),
            "-j",
            "test-1",
            "--",
            "/bin/sh",
            "-c",
            "kill -SEGV $$",
        ])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(139));
    // `kill` is a builtin: the shell is the only process.
    let streams = agent.ended_streams(1);
    assert_eq!(streams.len(), 1, "{streams:#?}");
    assert_eq!(
        streams[0].exit,
        Some(RankExit::Signaled(libc::SIGSEGV)),
        "{streams:#?}"
    );
}

#[test]
fn without_an_agent_the_command_runs_and_one_line_says_so() {
    let name = format!("@banyan-interpose-test-absent-{}", std::process::id());
    let out = banyan_run()
        .args([
            "-u",
            &name,
            "--",
            "/bin/sh",
            "-c",
            "echo out; ls / > /dev/null; exit 3",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        format!("banyan: no agent at {name}; this rank is not measured\n")
    );
}

/// Writes to `/dev/null` `before` times, sleeps `pause_ms`, writes `after` times more, then dies
/// of a real fault (`segv`) or `abort()`. Nothing else it does is counted as a write.
const CRASHER_C: &str = r#"
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void writes(int fd, int n) {
    char buf[100] = {0};
    for (int i = 0; i < n; i++)
        if (write(fd, buf, sizeof buf) != sizeof buf)
            exit(2);
}

int main(int argc, char **argv) {
    if (argc != 5)
        return 3;
    int fd = open("/dev/null", O_WRONLY);
    if (fd < 0)
        return 4;
    writes(fd, atoi(argv[1]));
    long ms = atol(argv[2]);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    writes(fd, atoi(argv[3]));
    if (strcmp(argv[4], "abort") == 0)
        abort();
    volatile int *volatile p = NULL;
    *p = 1;
    return 5;
}
"#;

/// Builds [`CRASHER_C`] into a fresh directory (removed by [`Crasher`]'s drop).
struct Crasher {
    dir: std::path::PathBuf,
}

impl Crasher {
    fn build() -> Crasher {
        let dir = std::env::temp_dir().join(format!(
            "banyan-interpose-crasher-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let crasher = Crasher { dir };
        let src = crasher.dir.join("crasher.c");
        std::fs::write(&src, CRASHER_C).unwrap();
        let out = std::process::Command::new("cc")
            .arg("-O1")
            .arg("-o")
            .arg(crasher.bin())
            .arg(&src)
            .output()
            .expect("running cc, the C compiler Rust links with");
        assert!(
            out.status.success(),
            "cc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        crasher
    }

    fn bin(&self) -> std::path::PathBuf {
        self.dir.join("crasher")
    }
}

impl Drop for Crasher {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the crasher under `banyan-run` against `agent` to its end; its exit status. A crasher
/// still running after [`LIVENESS`] is killed and the test fails: the crash hung.
fn run_crasher(agent: &FakeAgent, crasher: &Crasher, args: [&str; 4]) -> std::process::ExitStatus {
    let mut child = banyan_run()
        .args(["-u", &agent.socket(), "-j", "crash-1", "--"])
        .arg(crasher.bin())
        .args(args)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LIVENESS;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the crasher {args:?} still ran after {LIVENESS:?}: its crash hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_rank_crashing_before_its_first_update_reports_its_counts_and_its_signal() {
    let crasher = Crasher::build();
    // The process dies within milliseconds, long before the reporter would connect on its own
    // (0.5 s) and send its first update.
    let agent = FakeAgent::with(60_000, true);
    let status = run_crasher(&agent, &crasher, ["25", "0", "0", "segv"]);
    assert_eq!(status.code(), Some(128 + libc::SIGSEGV));
    let streams = agent.ended_streams(1);
    assert_eq!(streams.len(), 1, "{streams:#?}");
    let s = &streams[0];
    assert_eq!(s.exit, Some(RankExit::Signaled(libc::SIGSEGV)), "{s:#?}");
    assert_eq!(
        counter_sum(&streams, "banyan_io_calls_total{function=\"write\"}"),
        25.0,
        "{s:#?}"
    );
    assert_eq!(
        counter_sum(&streams, "banyan_io_bytes_total{function=\"write\"}"),
        2500.0,
        "{s:#?}"
    );
}

#[test]
fn a_rank_crashing_mid_period_reports_the_counts_since_its_last_update() {
    let crasher = Crasher::build();
    // The reporter connects at 0.5 s and sends the first 10 writes; the next update would be a
    // minute later, but the process aborts after 15 more writes at about 1.5 s.
    let agent = FakeAgent::with(60_000, true);
    let status = run_crasher(&agent, &crasher, ["10", "1500", "15", "abort"]);
    assert_eq!(status.code(), Some(128 + libc::SIGABRT));
    let streams = agent.ended_streams(1);
    assert_eq!(streams.len(), 1, "{streams:#?}");
    let s = &streams[0];
    assert_eq!(s.exit, Some(RankExit::Aborted("abort()".into())), "{s:#?}");
    let writes = |u: &MetricSet| u.counter("banyan_io_calls_total{function=\"write\"}");
    assert_eq!(
        s.updates.iter().map(writes).collect::<Vec<_>>(),
        [10.0, 15.0],
        "one periodic update, then the last one: {s:#?}"
    );
}

#[test]
fn a_rank_crashing_before_the_agent_answers_its_hello_still_reports_counts_and_signal() {
    let crasher = Crasher::build();
    // The agent answers no hello until the process is gone: the crash waits for that answer a
    // moment only, then sends the update and the exit without it (a crash that waited for the
    // answer would never end). This agent then reads on after answering a process that is gone;
    // the real one stops reading there.
    let agent = FakeAgent::with(60_000, false);
    let status = run_crasher(&agent, &crasher, ["25", "0", "0", "segv"]);
    assert_eq!(status.code(), Some(128 + libc::SIGSEGV));
    agent.welcome();
    let streams = agent.ended_streams(1);
    assert_eq!(streams.len(), 1, "{streams:#?}");
    let s = &streams[0];
    assert_eq!(s.exit, Some(RankExit::Signaled(libc::SIGSEGV)), "{s:#?}");
    assert_eq!(
        counter_sum(&streams, "banyan_io_calls_total{function=\"write\"}"),
        25.0,
        "{s:#?}"
    );
}

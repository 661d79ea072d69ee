//! `banyan-run` and the preloaded library against a fake agent speaking the ingest protocol.
//!
//! The fake agent listens on an abstract socket name unique to the test, answers every hello
//! with a welcome, and keeps what each stream (each process) said. Nothing external is built:
//! the wrapped commands are `/bin/sh`, `head` and `cat`.

use banyan_protocol::frame::{self, Greeting};
use banyan_protocol::ingest::{AgentReply, RankExit, RankMsg, INGEST_VERSION};
use banyan_protocol::job::JobDesc;
use banyan_protocol::metric::MetricSet;
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
    updates: Vec<MetricSet>,
    exit: Option<RankExit>,
    ended: bool,
}

struct FakeAgent {
    name: String,
    streams: Arc<Mutex<Vec<Stream>>>,
    stop: Arc<AtomicBool>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl FakeAgent {
    fn start() -> FakeAgent {
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
        let (s, st) = (streams.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let s = s.clone();
                        let index = {
                            let mut all = s.lock().unwrap();
                            all.push(Stream::default());
                            all.len() - 1
                        };
                        std::thread::spawn(move || serve(conn, &s, index));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeAgent {
            name,
            streams,
            stop,
        }
    }

    fn socket(&self) -> String {
        format!("@{}", self.name)
    }

    /// The streams once every one of them has ended (bounded wait).
    fn ended_streams(&self, at_least: usize) -> Vec<Stream> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all = self.streams.lock().unwrap().clone();
            if all.len() >= at_least && all.iter().all(|s| s.ended) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "streams did not end in time: {all:#?}"
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

fn serve(mut conn: UnixStream, streams: &Mutex<Vec<Stream>>, index: usize) {
    conn.set_nonblocking(false).unwrap();
    let mut greeting = [0u8; 8];
    if conn.read_exact(&mut greeting).is_ok() {
        Greeting::check(&greeting, INGEST_VERSION).expect("the ingest greeting");
        while let Some(msg) = read_msg(&mut conn) {
            let mut all = streams.lock().unwrap();
            let s = &mut all[index];
            match msg {
                RankMsg::Hello { job, rank } => {
                    assert!(s.hello.is_none(), "a second hello");
                    s.hello = Some((job, rank));
                    let reply = frame::encode(&AgentReply::Welcome { period_ms: 200 }).unwrap();
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
    let script = format!(
        "head -c 100000 /dev/zero > {f}; cat {f} > /dev/null",
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

    // sh, head and cat: each process that loaded the library is one stream of rank 0.
    let streams = agent.ended_streams(2);
    for s in &streams {
        let (job, rank) = s.hello.as_ref().expect("every stream says hello");
        assert_eq!(job.jobid, "test-1");
        assert_eq!(*rank, 0);
        assert!(job.command.contains("head -c 100000"), "{}", job.command);
        assert_eq!(s.exit, Some(RankExit::Exited(0)), "{s:#?}");
    }
    let written = counter_sum(&streams, "banyan_io_bytes_total{function=\"write\"}");
    let read = counter_sum(&streams, "banyan_io_bytes_total{function=\"read\"}");
    assert!(written >= 100_000.0, "write bytes {written}: {streams:#?}");
    assert!(read >= 100_000.0, "read bytes {read}: {streams:#?}");
    assert!(counter_sum(&streams, "banyan_io_calls_total{function=\"write\"}") >= 1.0);
    assert!(counter_sum(&streams, "banyan_proc_user_seconds_total") >= 0.0);
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
    let streams = agent.ended_streams(1);
    assert!(
        streams
            .iter()
            .any(|s| s.exit == Some(RankExit::Signaled(libc::SIGSEGV))),
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

//! A job rank that speaks the agent's ingest protocol directly, with exactly the values it is
//! told: the tests use it to check the job pipeline (agent, tree, root, profiles) against known
//! numbers, and to send what a real rank never would.
//!
//! `fake-rank [--socket @banyan-agent] --job ID [--rank N] [--size N] [--command TEXT]
//!            [--updates N] [--every-ms MS] [--count NAME=V]... [--gauge NAME=V]...
//!            [--observe NAME=V]...
//!            [--exit ok|none|signal:N|abort] [--garbage] [--swarm N]`
//!
//! Each update adds every `--count` value to its counter, samples every `--gauge`, and observes
//! every `--observe` value in its histogram. It prints
//! `welcome` or `refused: REASON` (and exits 3), and `done` at the end. `--swarm N` runs N ranks
//! (numbered from `--rank`) on N connections at once, and prints `last-exit-ms T`, when the last
//! of them said it ended (for the benchmark of job-end latency).

use banyan_protocol::frame::{self, Greeting};
use banyan_protocol::ingest::{AgentReply, RankExit, RankMsg, DEFAULT_SOCKET, INGEST_VERSION};
use banyan_protocol::job::JobDesc;
use banyan_protocol::metric::{Histogram, MetricSet, Value};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

struct Args {
    socket: String,
    desc: JobDesc,
    rank: u32,
    updates: u32,
    every: Duration,
    counts: Vec<(String, f64)>,
    gauges: Vec<(String, f64)>,
    observes: Vec<(String, f64)>,
    exit: String,
    garbage: bool,
    swarm: u32,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        socket: DEFAULT_SOCKET.into(),
        desc: JobDesc {
            command: "fake-rank".into(),
            start_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            ..JobDesc::default()
        },
        rank: 0,
        updates: 1,
        every: Duration::from_millis(200),
        counts: Vec::new(),
        gauges: Vec::new(),
        observes: Vec::new(),
        exit: "ok".into(),
        garbage: false,
        swarm: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let pair = |v: String| -> Result<(String, f64), String> {
            let (n, x) = v.rsplit_once('=').ok_or("NAME=VALUE")?;
            Ok((
                n.to_string(),
                x.parse().map_err(|_| format!("bad number {x}"))?,
            ))
        };
        match flag.as_str() {
            "--socket" => a.socket = value()?,
            "--job" => a.desc.jobid = value()?,
            "--rank" => a.rank = value()?.parse().map_err(|_| "bad --rank")?,
            "--size" => a.desc.size = value()?.parse().map_err(|_| "bad --size")?,
            "--command" => a.desc.command = value()?,
            "--updates" => a.updates = value()?.parse().map_err(|_| "bad --updates")?,
            "--every-ms" => {
                a.every = Duration::from_millis(value()?.parse().map_err(|_| "bad --every-ms")?)
            }
            "--count" => a.counts.push(pair(value()?)?),
            "--gauge" => a.gauges.push(pair(value()?)?),
            "--observe" => a.observes.push(pair(value()?)?),
            "--exit" => a.exit = value()?,
            "--garbage" => a.garbage = true,
            "--swarm" => a.swarm = value()?.parse().map_err(|_| "bad --swarm")?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn connect(socket: &str) -> std::io::Result<UnixStream> {
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            UnixStream::connect_addr(&sa)
        }
        None => UnixStream::connect(socket),
    }
}

fn send(s: &mut UnixStream, msg: &RankMsg) -> Result<(), String> {
    let bytes = frame::encode(msg).map_err(|e| e.to_string())?;
    s.write_all(&bytes).map_err(|e| e.to_string())
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One rank of a swarm, from hello to exit; returns when it sent its exit (ms).
fn swarm_rank(a: &Args, rank: u32) -> Result<u64, String> {
    let mut s = connect(&a.socket).map_err(|e| e.to_string())?;
    let greeting = Greeting {
        version: INGEST_VERSION,
    };
    s.write_all(&greeting.encode()).map_err(|e| e.to_string())?;
    let hello = RankMsg::Hello {
        job: a.desc.clone(),
        rank,
    };
    send(&mut s, &hello)?;
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix).map_err(|e| e.to_string())?;
    let len = frame::body_len(prefix).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    if let AgentReply::Refused { reason } =
        frame::decode_body::<AgentReply>(&body).map_err(|e| e.to_string())?
    {
        return Err(format!("refused: {reason}"));
    }
    for _ in 0..a.updates {
        let mut delta = MetricSet::new();
        for (n, v) in &a.counts {
            delta.set_counter(n, *v);
        }
        send(&mut s, &RankMsg::Update { delta })?;
        std::thread::sleep(a.every);
    }
    send(
        &mut s,
        &RankMsg::Exit {
            how: RankExit::Exited(0),
        },
    )?;
    let at = unix_ms();
    // Keep the stream open until the agent has read the exit and closed its side.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    Ok(at)
}

/// `--swarm N`: N ranks at once, each on its own connection and thread.
fn swarm(a: Args) -> Result<ExitCode, String> {
    let a = std::sync::Arc::new(a);
    let mut threads = Vec::new();
    for i in 0..a.swarm {
        let a = a.clone();
        let t = std::thread::Builder::new()
            .stack_size(128 << 10)
            .spawn(move || swarm_rank(&a, a.rank + i))
            .map_err(|e| e.to_string())?;
        threads.push(t);
    }
    let mut last = 0;
    for t in threads {
        let at = t
            .join()
            .map_err(|_| "a rank thread panicked".to_string())??;
        last = last.max(at);
    }
    println!("last-exit-ms {last}");
    Ok(ExitCode::SUCCESS)
}

fn run(a: Args) -> Result<ExitCode, String> {
    if a.swarm > 0 {
        return swarm(a);
    }
    let mut s = connect(&a.socket).map_err(|e| format!("cannot reach {}: {e}", a.socket))?;
    s.write_all(
        &Greeting {
            version: INGEST_VERSION,
        }
        .encode(),
    )
    .map_err(|e| e.to_string())?;
    if a.garbage {
        // A length prefix that promises far more than a rank may send, then noise.
        s.write_all(&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3])
            .map_err(|e| e.to_string())?;
    }
    send(
        &mut s,
        &RankMsg::Hello {
            job: a.desc.clone(),
            rank: a.rank,
        },
    )?;
    let mut prefix = [0u8; 4];
    s.read_exact(&mut prefix)
        .map_err(|e| format!("no answer: {e}"))?;
    let len = frame::body_len(prefix).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| e.to_string())?;
    match frame::decode_body::<AgentReply>(&body).map_err(|e| e.to_string())? {
        AgentReply::Welcome { .. } => println!("welcome"),
        AgentReply::Refused { reason } => {
            println!("refused: {reason}");
            return Ok(ExitCode::from(3));
        }
    }
    for _ in 0..a.updates {
        let mut delta = MetricSet::new();
        for (n, v) in &a.counts {
            delta.set_counter(n, *v);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for (n, v) in &a.gauges {
            delta.set_gauge(n, *v, now);
        }
        for (n, v) in &a.observes {
            let mut h = Histogram::default();
            h.observe(*v);
            delta.merge_value(n, &Value::Histogram(h));
        }
        send(&mut s, &RankMsg::Update { delta })?;
        std::thread::sleep(a.every);
    }
    let how = match a.exit.as_str() {
        "ok" => Some(RankExit::Exited(0)),
        "none" => None,
        "abort" => {
            let _ = std::io::stdout().flush();
            std::process::abort();
        }
        other => match other.strip_prefix("signal:").and_then(|n| n.parse().ok()) {
            Some(sig) => Some(RankExit::Signaled(sig)),
            None => return Err(format!("bad --exit {other}")),
        },
    };
    if let Some(how) = how {
        send(&mut s, &RankMsg::Exit { how })?;
    }
    println!("done");
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match parse().and_then(run) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fake-rank: {e}");
            ExitCode::from(2)
        }
    }
}

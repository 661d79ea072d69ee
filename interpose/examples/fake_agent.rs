//! A stand-in for the agent's ingest socket that prints what every rank says, for trying the
//! library by hand: `cargo run -p banyan-interpose --example fake_agent -- @x`, then
//! `banyan-run -u @x -- ./prog` (or under `mpirun`) in another shell. Ctrl-C stops it.
//!
//! With `--sum`, it prints nothing but, when a stream ends, one line for it and the sum of what
//! it reported.

use banyan_protocol::frame::{self, Greeting};
use banyan_protocol::ingest::{AgentReply, RankMsg, INGEST_VERSION};
use banyan_protocol::metric::{MetricSet, Value};
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::{Arc, Mutex};

fn read_msg(conn: &mut UnixStream) -> Result<Option<RankMsg>, String> {
    let mut prefix = [0u8; 4];
    if conn.read_exact(&mut prefix).is_err() {
        return Ok(None);
    }
    let len = frame::body_len(prefix).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    conn.read_exact(&mut body).map_err(|e| e.to_string())?;
    frame::decode_body(&body)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn peer_pid(conn: &UnixStream) -> i32 {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED into a ucred of the right size.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut libc::ucred as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        cred.pid
    } else {
        0
    }
}

fn serve(mut conn: UnixStream, n: usize, sum_only: bool, total: &Mutex<MetricSet>) {
    let pid = peer_pid(&conn);
    let mut greeting = [0u8; 8];
    if let Err(e) = conn.read_exact(&mut greeting) {
        println!("[{n} pid {pid}] no greeting: {e}");
        return;
    }
    if let Err(e) = Greeting::check(&greeting, INGEST_VERSION) {
        println!("[{n} pid {pid}] bad greeting: {e}");
        return;
    }
    let mut mine = MetricSet::new();
    let mut summary = String::new();
    loop {
        match read_msg(&mut conn) {
            Ok(Some(msg)) => {
                if !sum_only {
                    println!("[{n} pid {pid}] {msg:?}");
                }
                match msg {
                    RankMsg::Hello { job, rank } | RankMsg::Process { job, rank } => {
                        summary = format!("job {:?} rank {rank} size {}", job.jobid, job.size);
                        let reply = frame::encode(&AgentReply::Welcome { period_ms: 1000 })
                            .unwrap_or_default();
                        let _ = conn.write_all(&reply);
                    }
                    RankMsg::Update { delta } => mine.merge(&delta),
                    RankMsg::Exit { how } => summary.push_str(&format!(" exit {how:?}")),
                }
            }
            Ok(None) => break,
            Err(e) => {
                println!("[{n} pid {pid}] bad frame: {e}");
                break;
            }
        }
    }
    let mut t = match total.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    t.merge(&mine);
    if sum_only {
        // One stream's lines together, even when streams end at once.
        let mut out = format!("[{n} pid {pid}] {summary} ({} series)\n", mine.len());
        for (k, v) in &mine.values {
            let v = match v {
                Value::Counter(c) => format!("{}", c.value),
                Value::Gauge(g) => format!("gauge last {}", g.last),
                Value::Histogram(h) => format!("histogram count {}", h.count),
            };
            out.push_str(&format!("    {k} {v}\n"));
        }
        print!("{out}");
    } else {
        println!("[{n} pid {pid}] stream ended");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sum_only = args.iter().any(|a| a == "--sum");
    let name = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .unwrap_or_else(|| "@banyan-agent".into());
    let listener = match name.strip_prefix('@') {
        Some(abs) => {
            SocketAddr::from_abstract_name(abs.as_bytes()).and_then(|a| UnixListener::bind_addr(&a))
        }
        None => UnixListener::bind(&name),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => {
            eprintln!("fake_agent: cannot listen on {name}: {e}");
            std::process::exit(1);
        }
    };
    println!("fake_agent: listening on {name}");
    let total = Arc::new(Mutex::new(MetricSet::new()));
    for (n, conn) in listener.incoming().enumerate() {
        let Ok(conn) = conn else { continue };
        let total = total.clone();
        std::thread::spawn(move || serve(conn, n, sum_only, &total));
    }
}

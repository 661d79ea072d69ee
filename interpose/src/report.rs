//! The reporter: the stream from this process to the node's agent.
//!
//! One stream per process ([`banyan_protocol::ingest`]): greeting, `Hello` (job and rank),
//! `Update`s with what was counted since the previous one, and `Exit`. Every process that loads
//! the library reports, under the rank number `banyan-run` found: a rank that is a shell script
//! reports its shell and every program the script runs as separate streams of the same rank,
//! and the agent merges them into the job. Only the rank itself (`banyan-run`'s direct child,
//! across its `execve`s) says `Hello`; the processes it forks or runs say `Process` ([`is_rank`]),
//! so the job counts its ranks exactly and its processes beside them. A process is one stream even across `execve`: the
//! image about to exec sends its last update and hands the open socket to the next image
//! ([`crate::exec`], [`envnames::LINK`]), so the agent never sees a stream end without `Exit`
//! for a process that did not end.
//!
//! The connection is lazy: a background thread (started by the library's constructor, with every
//! signal blocked so the program's handlers keep running on the program's threads) connects
//! [`CONNECT_AFTER`] after start, then sends an update every period the agent asked for. A
//! process that ends sooner (most processes a shell script runs) connects once, at exit, and
//! sends hello, its only update and its exit together; a process that forks and execs at once
//! never connects at all. Exit is seen by an `on_exit` handler registered before `main`, hence
//! run after every handler the program registers and after the libraries' destructors, with the
//! status `exit` was given.
//!
//! Writers of the stream (the reporter thread, the exit path, `execve`, a crash handler) take
//! [`LINK_BUSY`]; the first three also hold the reporter's mutex, the crash handler cannot
//! (see [`crate::crash`]). A crash handler instead asks the reporter thread for the last update
//! ([`last_update_before_crash`]): it wakes the thread through a futex on [`WAKE`], which is
//! what the thread sleeps on between updates, and waits a bounded time for its answer.
//! Nothing here may disturb the program: every wait is bounded, sockets
//! are written with `MSG_NOSIGNAL` (no `SIGPIPE`) and a 2 s send timeout, a failure stops the
//! reporting for good with at most one line on stderr (printed only by `banyan-run`'s direct
//! child, so a script does not print one per process).

use crate::clock::{self, ticks_per_second, unix_ms};
use crate::counters::{self, Totals, FIRST_IO, FUNC_NAMES, IO_ON, MPI_ON, N_FUNCS};
use crate::{capi, crash, envnames};
use banyan_protocol::exposition::series_key;
use banyan_protocol::frame::{self, Greeting};
use banyan_protocol::ingest::{AgentReply, RankExit, RankMsg, INGEST_VERSION, MAX_RANK_FRAME};
use banyan_protocol::job::JobDesc;
use banyan_protocol::metric::MetricSet;
use libc::c_int;
use std::ffi::c_void;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long after start the reporter connects (processes that end sooner report once, at exit).
pub const CONNECT_AFTER: Duration = Duration::from_millis(500);
/// Bound on every send and on waiting for the agent's reply.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The agent's period is clamped to this range.
const MIN_PERIOD_MS: u64 = 100;
const MAX_PERIOD_MS: u64 = 60_000;
/// How long a crash handler waits, in all, for the reporter's last update and then for the link.
pub const CRASH_WAIT: Duration = Duration::from_millis(250);
/// How long the reporter, connecting for a crash handler, waits for the agent's answer.
const CRASH_ANSWER_WAIT: Duration = Duration::from_millis(100);
/// The socket is moved to a descriptor at least this high, out of the way of programs (shells)
/// that use small fixed descriptor numbers.
const HIGH_FD: c_int = 400;

/// What `banyan-run` told this process.
pub struct Config {
    pub socket: String,
    /// The job; `jobid` is empty when the ranks must agree on one in `MPI_Init`.
    pub job: JobDesc,
    pub fallback_id: String,
    pub rank: Option<u32>,
    /// Whether this process is `banyan-run`'s direct child (it prints the notices).
    pub direct_child: bool,
    /// The rank's process id when this program image is the rank itself (`banyan-run`'s direct
    /// child, whatever it exec'd into), else 0. A fork of the rank copies this but has another
    /// pid, so [`is_rank`] tells the two apart; a program a rank runs starts a new image whose
    /// parent is not `banyan-run`.
    pub rank_pid: i32,
    pub proc_on: bool,
}

static CONFIG: OnceLock<Config> = OnceLock::new();
static AGREED_ID: OnceLock<String> = OnceLock::new();
static MPI_RANK: AtomicU32 = AtomicU32::new(u32::MAX);
static MPI_SIZE: AtomicU64 = AtomicU64::new(0);

/// The connected socket, or -1. Published once the hello is on the wire.
static LINK_FD: AtomicI32 = AtomicI32::new(-1);
/// Device and inode of the socket, to notice a program that closed it and reused the number.
static LINK_DEV: AtomicU64 = AtomicU64::new(0);
static LINK_INO: AtomicU64 = AtomicU64::new(0);
/// Held by whoever writes to the stream. A crash handler takes it and never gives it back.
static LINK_BUSY: AtomicBool = AtomicBool::new(false);
/// 0 reporting, [`STOP_EXITED`] the exit was sent, [`STOP_FAILED`] no agent, refused, or broken.
static STOP: AtomicU8 = AtomicU8::new(0);
const STOP_EXITED: u8 = 1;
const STOP_FAILED: u8 = 2;
/// The process the state above belongs to (a `vfork` child shares it and must not use it).
static OWNER_PID: AtomicI32 = AtomicI32::new(0);
/// Greeting and hello, pre-encoded for a crash handler that must connect (null: no job id yet).
static HELLO_BYTES: AtomicPtr<Vec<u8>> = AtomicPtr::new(std::ptr::null_mut());
/// The agent's address as `connect(2)` wants it, for the crash handler.
static RAW_ADDR: OnceLock<RawAddr> = OnceLock::new();
/// The reporter's state; replaced (the old one leaked) in a forked child, whose copy may have
/// been locked by a thread that does not exist there.
static REPORTER: AtomicPtr<Mutex<Reporter>> = AtomicPtr::new(std::ptr::null_mut());
/// Whether a notice was printed (one per process).
static NOTICED: AtomicBool = AtomicBool::new(false);

/// The reporter thread sleeps on this futex word between updates; a crash handler bumps it and
/// wakes the thread.
static WAKE: AtomicU32 = AtomicU32::new(0);
/// The crash handshake: [`CRASH_NONE`], [`CRASH_ASKED`] (a handler waits for the last update),
/// [`CRASH_DONE`] (the reporter sent it, or gave up, and sends nothing more).
static CRASH: AtomicU8 = AtomicU8::new(CRASH_NONE);
const CRASH_NONE: u8 = 0;
const CRASH_ASKED: u8 = 1;
const CRASH_DONE: u8 = 2;
/// The reporter thread's kernel id while its loop runs, [`REPORTER_STARTING`] from its spawning
/// until it runs, else 0: a handler does not wait for a thread that is not there, nor for itself.
static REPORTER_TID: AtomicI32 = AtomicI32::new(0);
/// Spawned, not yet running (a process may crash that early; the thread will answer).
const REPORTER_STARTING: i32 = -1;

struct RawAddr {
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
}

// SAFETY: plain old data, written once before publication.
unsafe impl Sync for RawAddr {}
// SAFETY: as above.
unsafe impl Send for RawAddr {}

/// Values of `getrusage` already reported.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct Usage {
    pub user_s: f64,
    pub system_s: f64,
    pub minor_faults: f64,
    pub major_faults: f64,
    pub voluntary: f64,
    pub involuntary: f64,
    pub max_rss_bytes: f64,
}

struct Reporter {
    stream: Option<UnixStream>,
    period_ms: u64,
    sent: Totals,
    sent_secs: [f64; N_FUNCS],
    sent_usage: Usage,
    /// When `execve` last sent an update: a `PATH` search tries one file after another, and
    /// the failed attempts moments apart need not each send one.
    exec_update: Option<Instant>,
}

impl Reporter {
    fn new(sent: Totals, sent_usage: Usage) -> Reporter {
        let tps = ticks_per_second();
        let mut sent_secs = [0.0; N_FUNCS];
        for (s, t) in sent_secs.iter_mut().zip(sent.ticks.iter()) {
            *s = *t as f64 / tps;
        }
        Reporter {
            stream: None,
            period_ms: 1000,
            sent,
            sent_secs,
            sent_usage,
            exec_update: None,
        }
    }
}

fn reporter() -> Option<&'static Mutex<Reporter>> {
    let p = REPORTER.load(Acquire);
    // SAFETY: reporters are leaked boxes, never freed.
    (!p.is_null()).then(|| unsafe { &*p })
}

fn install_reporter(r: Reporter) {
    let p = Box::into_raw(Box::new(Mutex::new(r)));
    REPORTER.store(p, Release);
}

fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// This thread's kernel id (async-signal-safe).
fn gettid() -> i32 {
    // SAFETY: gettid has no arguments and no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

// ---------------------------------------------------------------------------------------------
// Start

/// The library's constructor: reads the environment `banyan-run` set and starts the reporter.
/// Without that environment the library stays passive.
pub fn init() {
    clock::start();
    counters::quietly(|| {
        let Ok(groups) = std::env::var(envnames::EXPORTERS) else {
            return;
        };
        let groups: Vec<&str> = groups.split(',').map(str::trim).collect();
        MPI_ON.store(groups.contains(&"mpi"), Relaxed);
        IO_ON.store(groups.contains(&"io"), Relaxed);
        let cfg = config_from_env(groups.contains(&"proc"));
        OWNER_PID.store(getpid(), Relaxed);
        if let Some(raw) = raw_addr(&cfg.socket) {
            let _ = RAW_ADDR.set(raw);
        }
        let adopted = std::env::var(envnames::LINK).ok();
        if adopted.is_some() {
            // Only this image may take the stream over; its children must not see the number.
            std::env::remove_var(envnames::LINK);
        }
        if CONFIG.set(cfg).is_err() {
            return;
        }
        refresh_hello();
        let mut r = Reporter::new(Totals::zero(), Usage::default());
        if let Some((stream, period_ms)) = adopted.as_deref().and_then(adopt_link) {
            // The earlier image reported the process's usage so far (it survives execve).
            r.sent_usage = usage();
            r.period_ms = period_ms;
            publish_link(&stream);
            r.stream = Some(stream);
        }
        install_reporter(r);
        crash::install();
        // SAFETY: registering plain extern "C" functions with glibc.
        unsafe {
            on_exit(exit_handler, std::ptr::null_mut());
            libc::pthread_atfork(None, None, Some(after_fork_child));
        }
        spawn_reporter();
    })
}

extern "C" {
    /// glibc's `atexit` that passes the exit status.
    fn on_exit(f: extern "C" fn(c_int, *mut c_void), arg: *mut c_void) -> c_int;
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn config_from_env(proc_on: bool) -> Config {
    let launcher: i32 = env(envnames::LAUNCHER_PID).parse().unwrap_or(-1);
    // SAFETY: getppid has no preconditions.
    let direct_child = launcher > 0 && unsafe { libc::getppid() } == launcher;
    let socket = std::env::var(envnames::SOCKET)
        .unwrap_or_else(|_| banyan_protocol::ingest::DEFAULT_SOCKET.to_string());
    Config {
        socket,
        job: JobDesc {
            jobid: env(envnames::JOB_ID),
            command: env(envnames::COMMAND),
            size: env(envnames::JOB_SIZE).parse().unwrap_or(0),
            nodelist: env(envnames::NODELIST),
            partition: env(envnames::PARTITION),
            cluster: env(envnames::CLUSTER),
            run_dir: env(envnames::RUN_DIR),
            start_time: env(envnames::START_TIME)
                .parse()
                .unwrap_or_else(|_| unix_ms() / 1000),
            end_time: 0,
            uid: 0,
        },
        fallback_id: env(envnames::JOB_ID_FALLBACK),
        rank: env(envnames::RANK).parse().ok(),
        direct_child,
        rank_pid: if direct_child { getpid() } else { 0 },
        proc_on,
    }
}

/// Whether this process is a rank (a process `banyan-run` started) rather than a process a rank
/// started: the agent counts the two apart ([`RankMsg::Process`]).
pub fn is_rank() -> bool {
    CONFIG.get().is_some_and(|c| c.rank_pid == getpid())
}

/// `sockaddr_un` for `@name` (abstract) or a path.
fn raw_addr(socket: &str) -> Option<RawAddr> {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let (bytes, extra) = match socket.strip_prefix('@') {
        Some(name) => (name.as_bytes(), 1usize),
        None => (socket.as_bytes(), 0usize),
    };
    // Abstract: a leading NUL then the name, no terminator. Path: the path then a NUL.
    if bytes.len() + 1 > addr.sun_path.len() || bytes.is_empty() {
        return None;
    }
    for (i, b) in bytes.iter().enumerate() {
        addr.sun_path[i + extra] = *b as libc::c_char;
    }
    let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
    let len = base + bytes.len() + 1;
    Some(RawAddr {
        addr,
        len: len as libc::socklen_t,
    })
}

fn spawn_reporter() {
    if STOP.load(Relaxed) != 0 {
        return;
    }
    // The thread inherits this mask: block every signal in it, so a signal sent to the process
    // is handled on one of the program's own threads, as the program expects.
    // SAFETY: plain sigset manipulation on valid, local sets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        REPORTER_TID.store(REPORTER_STARTING, SeqCst);
        let spawned = std::thread::Builder::new()
            .name("banyan-report".into())
            .stack_size(256 * 1024)
            .spawn(|| {
                REPORTER_TID.store(gettid(), SeqCst);
                let _ = std::panic::catch_unwind(reporter_loop);
                REPORTER_TID.store(0, SeqCst);
                // A handler that asked just before the store above would wait in vain.
                let _ = CRASH.compare_exchange(CRASH_ASKED, CRASH_DONE, SeqCst, SeqCst);
            });
        if spawned.is_err() {
            REPORTER_TID.store(0, SeqCst);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
    }
}

// ---------------------------------------------------------------------------------------------
// Job identity

/// The job id to report under, if known yet.
fn job_id() -> Option<String> {
    let cfg = CONFIG.get()?;
    if !cfg.job.jobid.is_empty() {
        return Some(cfg.job.jobid.clone());
    }
    AGREED_ID.get().cloned()
}

fn rank() -> u32 {
    let mpi = MPI_RANK.load(Relaxed);
    CONFIG
        .get()
        .and_then(|c| c.rank)
        .unwrap_or(if mpi == u32::MAX { 0 } else { mpi })
}

/// Whether `MPI_Init` must agree on a job id (the launcher gave none).
pub fn needs_job_id() -> bool {
    CONFIG
        .get()
        .is_some_and(|c| c.job.jobid.is_empty() && AGREED_ID.get().is_none())
}

/// The id rank 0 proposes: unique to this run.
pub fn make_job_id() -> String {
    format!("mpi-{}-{}-{}", hostname(), getpid(), unix_ms())
}

/// The id the ranks agreed on in `MPI_Init`.
pub fn set_agreed_job_id(id: String) {
    if banyan_protocol::job::check_job_id(&id).is_ok() && AGREED_ID.set(id).is_ok() {
        refresh_hello();
    }
}

/// The id a new program image must be told (it was agreed in this one).
pub fn agreed_job_id() -> Option<&'static str> {
    AGREED_ID.get().map(String::as_str)
}

/// What `MPI_Init` learnt: this rank and the size of MPI_COMM_WORLD.
pub fn mpi_started(rank: Option<u32>, size: u64) {
    if let Some(r) = rank {
        MPI_RANK.store(r, Relaxed);
    }
    MPI_SIZE.store(size, Relaxed);
    refresh_hello();
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: a valid buffer and its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// The hello this process sends, under `id`.
fn hello(id: &str) -> Option<RankMsg> {
    let cfg = CONFIG.get()?;
    let mut job = cfg.job.clone();
    job.jobid = id.to_string();
    if job.size == 0 {
        job.size = MPI_SIZE.load(Relaxed);
    }
    let rank = rank();
    Some(if is_rank() {
        RankMsg::Hello { job, rank }
    } else {
        RankMsg::Process { job, rank }
    })
}

/// Greeting and hello as bytes, under the known id or the fallback.
fn hello_bytes(id: &str) -> Option<Vec<u8>> {
    let mut out = Greeting {
        version: INGEST_VERSION,
    }
    .encode()
    .to_vec();
    out.extend(frame::encode(&hello(id)?).ok()?);
    Some(out)
}

/// Re-encodes the crash handler's hello (the id or rank became known).
fn refresh_hello() {
    let Some(cfg) = CONFIG.get() else { return };
    let id = job_id().unwrap_or_else(|| cfg.fallback_id.clone());
    if id.is_empty() {
        return;
    }
    if let Some(bytes) = hello_bytes(&id) {
        // The previous encoding is leaked: a crash handler may be reading it right now.
        HELLO_BYTES.store(Box::into_raw(Box::new(bytes)), Release);
    }
}

// ---------------------------------------------------------------------------------------------
// The link

fn lock_for(m: &'static Mutex<Reporter>, limit: Duration) -> Option<MutexGuard<'static, Reporter>> {
    let deadline = Instant::now() + limit;
    loop {
        match m.try_lock() {
            Ok(g) => return Some(g),
            Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn take_link(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if LINK_BUSY
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_ok()
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn release_link() {
    LINK_BUSY.store(false, Release);
}

fn fd_ident(fd: c_int) -> Option<(u64, u64)> {
    // SAFETY: all-zero is a valid stat buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on any number is harmless; the buffer is valid.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || (st.st_mode & libc::S_IFMT) != libc::S_IFSOCK {
        return None;
    }
    Some((st.st_dev as u64, st.st_ino as u64))
}

/// Whether `fd` is still the socket we connected (async-signal-safe: one `fstat`).
fn link_is_ours(fd: c_int) -> bool {
    fd_ident(fd) == Some((LINK_DEV.load(Relaxed), LINK_INO.load(Relaxed)))
}

fn publish_link(stream: &UnixStream) {
    let fd = stream.as_raw_fd();
    if let Some((dev, ino)) = fd_ident(fd) {
        LINK_DEV.store(dev, Relaxed);
        LINK_INO.store(ino, Relaxed);
    }
    LINK_FD.store(fd, SeqCst);
}

/// Writes all of `buf` without raising `SIGPIPE` (async-signal-safe).
fn send_all(fd: c_int, mut buf: &[u8]) -> bool {
    while !buf.is_empty() {
        // SAFETY: a valid buffer of that length.
        let n = unsafe {
            libc::send(
                fd,
                buf.as_ptr() as *const c_void,
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            // SAFETY: reading this thread's errno.
            if unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            return false;
        }
        if n == 0 {
            return false;
        }
        buf = &buf[n as usize..];
    }
    true
}

/// Why a connection did not come about.
#[derive(Debug)]
enum Failure {
    NoAgent,
    Refused(String),
    Broken(String),
}

fn notice(f: &Failure) {
    let Some(cfg) = CONFIG.get() else { return };
    if !cfg.direct_child || NOTICED.swap(true, Relaxed) {
        return;
    }
    let line = match f {
        Failure::NoAgent => format!(
            "banyan: no agent at {}; this rank is not measured\n",
            cfg.socket
        ),
        Failure::Refused(reason) => format!(
            "banyan: the agent at {} refused this rank: {reason}; it is not measured\n",
            cfg.socket
        ),
        Failure::Broken(why) => format!(
            "banyan: cannot report to the agent at {}: {why}; this rank is not measured\n",
            cfg.socket
        ),
    };
    let _ = send_or_write(2, line.as_bytes());
}

fn send_or_write(fd: c_int, buf: &[u8]) -> bool {
    // SAFETY: a valid buffer; the write is not counted (callers run quietly).
    unsafe { libc::write(fd, buf.as_ptr() as *const c_void, buf.len()) >= 0 }
}

fn open_stream(socket: &str) -> std::io::Result<UnixStream> {
    match socket.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            UnixStream::connect_addr(&addr)
        }
        None => UnixStream::connect(socket),
    }
}

/// Moves the socket to a high descriptor (close-on-exec kept).
fn move_high(stream: UnixStream) -> UnixStream {
    // SAFETY: F_DUPFD_CLOEXEC on our own descriptor.
    let high = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGH_FD) };
    if high < 0 {
        return stream;
    }
    drop(stream);
    // SAFETY: `high` is a fresh descriptor we own.
    unsafe { UnixStream::from_raw_fd(high) }
}

/// Who connects: what job id it may use and whether it waits for the agent's answer.
#[derive(Clone, Copy, PartialEq, Debug)]
enum When {
    /// The reporter, on its own: only under the job's id, and waits for the period.
    Running,
    /// At exit: under the fallback id if need be, and waits for the answer.
    Exit,
    /// For a crash handler that gives it [`CRASH_WAIT`]: as at exit, but waits for the answer
    /// [`CRASH_ANSWER_WAIT`] only, then goes on without it (a refusal that comes later only
    /// closes the stream). Waiting at all is for the agent: it may stop reading a stream whose
    /// process is gone by the time it answers.
    Crash,
}

/// Connects, says hello, and reads the agent's answer: the stream and the period (`None` when a
/// crash did not wait for the answer).
fn connect(socket: &str, id: &str, when: When) -> Result<(UnixStream, Option<u64>), Failure> {
    let stream = open_stream(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => Failure::NoAgent,
        _ => Failure::Broken(e.to_string()),
    })?;
    let stream = move_high(stream);
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let crash = when == When::Crash;
    let _ = stream.set_read_timeout(Some(if crash { CRASH_ANSWER_WAIT } else { IO_TIMEOUT }));
    let bytes = hello_bytes(id).ok_or_else(|| Failure::Broken("no hello to send".into()))?;
    if !send_all(stream.as_raw_fd(), &bytes) {
        return Err(Failure::Broken(std::io::Error::last_os_error().to_string()));
    }
    let mut prefix = [0u8; 4];
    let mut s = &stream;
    if let Err(e) = s.read_exact(&mut prefix) {
        let late = matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        );
        if crash && late {
            return Ok((stream, None));
        }
        return Err(Failure::Broken(format!("no answer to the hello: {e}")));
    }
    let len = frame::body_len(prefix).map_err(|e| Failure::Broken(e.to_string()))?;
    if len > 64 * 1024 {
        return Err(Failure::Broken(format!("an answer of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
        .map_err(|e| Failure::Broken(format!("truncated answer: {e}")))?;
    match frame::decode_body::<AgentReply>(&body) {
        Ok(AgentReply::Welcome { period_ms }) => {
            Ok((stream, Some(period_ms.clamp(MIN_PERIOD_MS, MAX_PERIOD_MS))))
        }
        Ok(AgentReply::Refused { reason }) => Err(Failure::Refused(reason)),
        Err(e) => Err(Failure::Broken(e.to_string())),
    }
}

/// Under the reporter's lock and the link: connects if needed. `false` (and reporting stopped)
/// when that failed.
fn ensure_connected(r: &mut Reporter, when: When) -> bool {
    if r.stream.is_some() {
        return true;
    }
    let Some(cfg) = CONFIG.get() else {
        return false;
    };
    let id = match job_id() {
        Some(id) => id,
        None if when != When::Running && !cfg.fallback_id.is_empty() => cfg.fallback_id.clone(),
        None => return false,
    };
    match connect(&cfg.socket, &id, when) {
        Ok((stream, period_ms)) => {
            publish_link(&stream);
            if let Some(p) = period_ms {
                r.period_ms = p;
            }
            r.stream = Some(stream);
            true
        }
        Err(f) => {
            STOP.store(STOP_FAILED, SeqCst);
            notice(&f);
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Updates

/// `getrusage(RUSAGE_SELF)` of the whole process.
pub fn usage() -> Usage {
    // SAFETY: all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Usage::default();
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Usage {
        user_s: secs(ru.ru_utime),
        system_s: secs(ru.ru_stime),
        minor_faults: ru.ru_minflt as f64,
        major_faults: ru.ru_majflt as f64,
        voluntary: ru.ru_nvcsw as f64,
        involuntary: ru.ru_nivcsw as f64,
        max_rss_bytes: ru.ru_maxrss as f64 * 1024.0,
    }
}

fn add(set: &mut MetricSet, name: &str, function: &str, v: f64) {
    if v > 0.0 {
        set.add_counter(&series_key(name, &[("function", function)]), v);
    }
}

/// The increments of the counted functions between `sent` and `now`; `secs` holds the seconds
/// already reported per function and is advanced.
pub fn function_delta(
    set: &mut MetricSet,
    sent: &Totals,
    now: &Totals,
    secs: &mut [f64; N_FUNCS],
    tps: f64,
) {
    for i in 0..N_FUNCS {
        let calls = now.calls[i].wrapping_sub(sent.calls[i]);
        let total_s = now.ticks[i] as f64 / tps;
        let ds = (total_s - secs[i]).max(0.0);
        let bytes_a = now.sent[i].wrapping_sub(sent.sent[i]) as f64;
        let bytes_b = now.recv[i].wrapping_sub(sent.recv[i]) as f64;
        if calls == 0 && ds == 0.0 && bytes_a == 0.0 && bytes_b == 0.0 {
            continue;
        }
        let f = FUNC_NAMES[i];
        if i < FIRST_IO {
            add(set, "banyan_mpi_calls_total", f, calls as f64);
            add(set, "banyan_mpi_seconds_total", f, ds);
            add(set, "banyan_mpi_sent_bytes_total", f, bytes_a);
            add(set, "banyan_mpi_received_bytes_total", f, bytes_b);
        } else {
            add(set, "banyan_io_calls_total", f, calls as f64);
            add(set, "banyan_io_seconds_total", f, ds);
            add(set, "banyan_io_bytes_total", f, bytes_a + bytes_b);
        }
        secs[i] = secs[i].max(total_s);
    }
}

/// The increments of the process's resource use since `sent`, and its peak memory as a gauge.
pub fn usage_delta(set: &mut MetricSet, sent: &Usage, now: &Usage, at_ms: u64) {
    let pairs = [
        ("banyan_proc_user_seconds_total", now.user_s - sent.user_s),
        (
            "banyan_proc_system_seconds_total",
            now.system_s - sent.system_s,
        ),
        (
            "banyan_proc_minor_faults_total",
            now.minor_faults - sent.minor_faults,
        ),
        (
            "banyan_proc_major_faults_total",
            now.major_faults - sent.major_faults,
        ),
        (
            "banyan_proc_voluntary_switches_total",
            now.voluntary - sent.voluntary,
        ),
        (
            "banyan_proc_involuntary_switches_total",
            now.involuntary - sent.involuntary,
        ),
    ];
    for (name, d) in pairs {
        if d > 0.0 {
            set.add_counter(name, d);
        }
    }
    if now.max_rss_bytes > 0.0 {
        set.set_gauge("banyan_proc_max_rss_bytes", now.max_rss_bytes, at_ms);
    }
}

fn build_delta(r: &mut Reporter) -> MetricSet {
    let mut set = MetricSet::new();
    let now = counters::totals();
    function_delta(
        &mut set,
        &r.sent,
        &now,
        &mut r.sent_secs,
        ticks_per_second(),
    );
    r.sent = now;
    if CONFIG.get().is_some_and(|c| c.proc_on) {
        let u = usage();
        usage_delta(&mut set, &r.sent_usage, &u, unix_ms());
        r.sent_usage = u;
    }
    capi::drain(&mut set);
    set
}

/// Sends one update (nothing when nothing happened). `false` if the stream broke.
fn send_update(r: &mut Reporter, fd: c_int) -> bool {
    let delta = build_delta(r);
    if delta.is_empty() {
        return true;
    }
    match frame::encode(&RankMsg::Update { delta }) {
        Ok(bytes) if bytes.len() <= MAX_RANK_FRAME + 4 => link_is_ours(fd) && send_all(fd, &bytes),
        // Too much for one frame (cannot happen with the C API's cap): drop it, keep going.
        _ => true,
    }
}

fn reporter_loop() {
    counters::quiet_forever();
    let start = Instant::now();
    while start.elapsed() < CONNECT_AFTER {
        if STOP.load(Relaxed) != 0 {
            return;
        }
        if nap(Duration::from_millis(50)) {
            return crash_update();
        }
    }
    loop {
        if STOP.load(Relaxed) != 0 {
            return;
        }
        if CRASH.load(SeqCst) == CRASH_ASKED {
            return crash_update();
        }
        let Some(m) = reporter() else { return };
        let Some(mut g) = lock_for(m, Duration::from_secs(10)) else {
            return;
        };
        if STOP.load(Relaxed) != 0 {
            return;
        }
        if g.stream.is_none() && job_id().is_none() {
            // Waiting for MPI_Init to agree on the id.
            drop(g);
            if nap(Duration::from_millis(100)) {
                return crash_update();
            }
            continue;
        }
        if !take_link(Duration::from_secs(10)) {
            return;
        }
        if ensure_connected(&mut g, When::Running) {
            let fd = LINK_FD.load(Relaxed);
            if !send_update(&mut g, fd) {
                STOP.store(STOP_FAILED, SeqCst);
            }
        }
        release_link();
        let period = Duration::from_millis(g.period_ms);
        drop(g);
        if nap(period) {
            return crash_update();
        }
    }
}

/// The reporter's sleep: `d`, or less if a crash handler asks for the last update (`true`).
fn nap(d: Duration) -> bool {
    let deadline = Instant::now() + d;
    loop {
        // Read the word before the request: a handler that asks after this read also bumps the
        // word after it, so the futex wait below returns at once instead of missing the wake.
        let seen = WAKE.load(SeqCst);
        if CRASH.load(SeqCst) == CRASH_ASKED {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: a futex word of this process and a valid relative timeout. Early returns
        // (a wake, the word changed, a spurious one) are sorted out by the loop.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                WAKE.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                seen,
                &ts as *const libc::timespec,
            )
        };
    }
}

/// On the reporter thread, asked by a crash handler: sends what was counted since the last
/// update (connecting first if this process never did), then answers and reports no more. The
/// handler sends the exit. Whatever blocks here (a lock the crashed thread held) only makes the
/// handler stop waiting.
fn crash_update() {
    if let Some(mut g) = reporter().and_then(|m| lock_for(m, CRASH_WAIT)) {
        if STOP.load(SeqCst) == 0 && take_link(CRASH_WAIT) {
            if ensure_connected(&mut g, When::Crash) {
                let fd = LINK_FD.load(Relaxed);
                if !send_update(&mut g, fd) {
                    STOP.store(STOP_FAILED, SeqCst);
                }
            }
            release_link();
        }
    }
    CRASH.store(CRASH_DONE, SeqCst);
}

// ---------------------------------------------------------------------------------------------
// The end

/// Sends the last update and `Exit { how }`, connecting first if this process never did.
pub fn finish(how: RankExit) {
    if CONFIG.get().is_none() {
        return;
    }
    counters::quietly(|| {
        if getpid() != OWNER_PID.load(Relaxed) || STOP.load(SeqCst) != 0 {
            return;
        }
        let Some(m) = reporter() else { return };
        let Some(mut g) = lock_for(m, IO_TIMEOUT) else {
            return;
        };
        if STOP.load(SeqCst) != 0 || !take_link(IO_TIMEOUT) {
            return;
        }
        if ensure_connected(&mut g, When::Exit) {
            let fd = LINK_FD.load(Relaxed);
            if send_update(&mut g, fd) {
                if let Ok(bytes) = frame::encode(&RankMsg::Exit { how }) {
                    let _ = link_is_ours(fd) && send_all(fd, &bytes);
                }
            }
            STOP.store(STOP_EXITED, SeqCst);
        }
        release_link();
    })
}

extern "C" fn exit_handler(status: c_int, _arg: *mut c_void) {
    let _ = std::panic::catch_unwind(|| finish(RankExit::Exited(status)));
}

/// `_exit(status)` is about to end the process, skipping `on_exit`. `_exit` may be called from
/// a signal handler that interrupted `malloc`, where the full [`finish`] (which allocates) would
/// deadlock. A signal handler runs with at least its own signal blocked, so with any signal
/// blocked on this thread only the async-signal-safe part is done: `Exit` without a last update.
pub fn exiting_now(status: c_int) {
    if CONFIG.get().is_none() {
        return;
    }
    if signals_blocked() {
        let mut buf = [0u8; 16];
        let frame = exited_frame(status, &mut buf);
        crash_exit(frame, deadline_in(Duration::from_millis(200)));
    } else {
        let _ = std::panic::catch_unwind(|| finish(RankExit::Exited(status)));
    }
}

/// Whether this thread blocks any signal (async-signal-safe).
fn signals_blocked() -> bool {
    // SAFETY: all-zero is a valid sigset to fill in; querying the mask only.
    unsafe {
        let mut cur: libc::sigset_t = std::mem::zeroed();
        if libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur) != 0 {
            return true;
        }
        (1..=64).any(|s| libc::sigismember(&cur, s) == 1)
    }
}

/// `RankMsg::Exit { how: RankExit::Exited(status) }` as a frame, encoded without allocating
/// (postcard: variant indices and a zigzag varint).
pub fn exited_frame(status: c_int, buf: &mut [u8; 16]) -> &[u8] {
    let mut n = 4;
    buf[n] = 2; // RankMsg::Exit
    buf[n + 1] = 0; // RankExit::Exited
    n += 2;
    let mut z = ((status << 1) ^ (status >> 31)) as u32;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            buf[n] = byte;
            n += 1;
            break;
        }
        buf[n] = byte | 0x80;
        n += 1;
    }
    let len = (n - 4) as u32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    &buf[..n]
}

/// `MPI_Abort` is about to end the process.
pub fn aborted(what: String) {
    let _ = std::panic::catch_unwind(move || finish(RankExit::Aborted(what)));
}

/// The monotonic clock in nanoseconds (async-signal-safe: `clock_gettime`).
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime is async-signal-safe; a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A deadline `d` from now, for [`last_update_before_crash`] and [`crash_exit`].
pub fn deadline_in(d: Duration) -> u64 {
    mono_ns() + d.as_nanos() as u64
}

/// Sleeps 1 ms (async-signal-safe).
fn short_sleep() {
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 1_000_000,
    };
    // SAFETY: nanosleep is async-signal-safe; a valid timespec.
    unsafe { libc::nanosleep(&ts, std::ptr::null_mut()) };
}

/// From a crash signal handler, before [`crash_exit`]: asks the reporter thread for the last
/// update and waits for it until `deadline` ([`deadline_in`]). `true` if it answered (sent it,
/// had nothing to send, or found the stream gone). Does not wait when this thread is the
/// reporter or there is none. Async-signal-safe: atomics, `gettid`, a futex wake, `nanosleep`,
/// `clock_gettime`; no allocation, no lock.
pub fn last_update_before_crash(deadline: u64) -> bool {
    if CONFIG.get().is_none() || STOP.load(SeqCst) != 0 || getpid() != OWNER_PID.load(Relaxed) {
        return false;
    }
    let tid = REPORTER_TID.load(SeqCst);
    if tid == 0 || tid == gettid() {
        return false;
    }
    // A second thread crashing at the same time waits for the same answer.
    if CRASH
        .compare_exchange(CRASH_NONE, CRASH_ASKED, SeqCst, SeqCst)
        .is_ok()
    {
        // Orders this thread's counts before the reporter's reading of them, too.
        WAKE.fetch_add(1, SeqCst);
        // SAFETY: a futex wake on a word of this process (async-signal-safe: one system call).
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                WAKE.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                1,
            )
        };
    }
    loop {
        if CRASH.load(SeqCst) == CRASH_DONE {
            return true;
        }
        if mono_ns() >= deadline {
            return false;
        }
        short_sleep();
    }
}

/// From a crash signal handler: sends the pre-encoded `exit` frame, connecting (with the
/// pre-encoded hello) if needed. Waits for the link until `deadline` ([`deadline_in`]) at most.
/// Async-signal-safe: atomics, `fstat`, `socket`, `connect`, `send`, `nanosleep`,
/// `clock_gettime` only; no allocation, no lock. Takes the link for good.
pub fn crash_exit(exit_frame: &[u8], deadline: u64) {
    if CONFIG.get().is_none() || STOP.load(SeqCst) != 0 {
        return;
    }
    if getpid() != OWNER_PID.load(Relaxed) {
        return;
    }
    // Another thread may be halfway through a frame: give it a moment (it is not stopped by
    // this signal), but never wait long in a dying process.
    let mut got = false;
    loop {
        if LINK_BUSY
            .compare_exchange(false, true, Acquire, Relaxed)
            .is_ok()
        {
            got = true;
            break;
        }
        if mono_ns() >= deadline {
            break;
        }
        short_sleep();
    }
    if !got || STOP.swap(STOP_EXITED, SeqCst) != 0 {
        return;
    }
    let mut fd = LINK_FD.load(SeqCst);
    if fd >= 0 {
        if !link_is_ours(fd) {
            return;
        }
    } else {
        let hello = HELLO_BYTES.load(Acquire);
        let Some(raw) = RAW_ADDR.get() else { return };
        if hello.is_null() {
            return;
        }
        // SAFETY: socket/connect are async-signal-safe; the address was built at start.
        unsafe {
            fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return;
            }
            if libc::connect(fd, &raw.addr as *const _ as *const libc::sockaddr, raw.len) != 0 {
                return;
            }
        }
        // SAFETY: leaked encodings are never freed.
        if !send_all(fd, unsafe { &*hello }) {
            return;
        }
    }
    let _ = send_all(fd, exit_frame);
}

// ---------------------------------------------------------------------------------------------
// fork and execve

/// In a forked child: the parent's stream and reporter thread are not ours. Start afresh,
/// counting from what the parent had counted.
extern "C" fn after_fork_child() {
    let _ = std::panic::catch_unwind(|| {
        counters::quietly(|| {
            OWNER_PID.store(getpid(), Relaxed);
            let fd = LINK_FD.swap(-1, SeqCst);
            if fd >= 0 {
                // SAFETY: closing our copy of the parent's socket in this process only.
                unsafe { libc::close(fd) };
            }
            LINK_BUSY.store(false, SeqCst);
            let _ = STOP.compare_exchange(STOP_EXITED, 0, SeqCst, SeqCst);
            // The parent's reporter thread does not exist here; the child's starts below.
            REPORTER_TID.store(0, SeqCst);
            CRASH.store(CRASH_NONE, SeqCst);
            // The child's own resource use starts at zero.
            install_reporter(Reporter::new(counters::totals(), Usage::default()));
            // A fork of a rank is a process of it, not the rank: a crash handler's hello too.
            refresh_hello();
            capi::after_fork_child();
            spawn_reporter();
        })
    });
}

/// The stream, handed to the program image `execve` is about to start. Holding it keeps the
/// reporter and the link; dropping it after a failed `execve` takes the stream back.
pub struct Handover {
    _guard: MutexGuard<'static, Reporter>,
    fd: c_int,
    /// `BANYAN_LINK=<pid>:<fd>:<period_ms>`.
    pub entry: String,
}

impl Drop for Handover {
    fn drop(&mut self) {
        // SAFETY: our own descriptor; restores close-on-exec.
        unsafe { libc::fcntl(self.fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        release_link();
    }
}

/// Before `execve`: sends the last update of this image and makes the socket survive the exec.
pub fn prepare_exec() -> Option<Handover> {
    CONFIG.get()?;
    counters::quietly(|| {
        if getpid() != OWNER_PID.load(Relaxed) || STOP.load(SeqCst) != 0 {
            return None;
        }
        let m = reporter()?;
        let mut g = lock_for(m, IO_TIMEOUT)?;
        g.stream.as_ref()?;
        if STOP.load(SeqCst) != 0 || !take_link(IO_TIMEOUT) {
            return None;
        }
        let fd = LINK_FD.load(SeqCst);
        let recent = g
            .exec_update
            .is_some_and(|t| t.elapsed() < Duration::from_millis(100));
        if fd < 0 || (!recent && !send_update(&mut g, fd)) {
            release_link();
            return None;
        }
        g.exec_update = Some(Instant::now());
        // SAFETY: our own descriptor; the next image inherits it.
        unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        let entry = format!("{}={}:{}:{}", envnames::LINK, getpid(), fd, g.period_ms);
        Some(Handover {
            _guard: g,
            fd,
            entry,
        })
    })
}

/// In a new image: takes over the stream the previous image handed over.
fn adopt_link(value: &str) -> Option<(UnixStream, u64)> {
    let mut parts = value.split(':');
    let pid: i32 = parts.next()?.parse().ok()?;
    let fd: c_int = parts.next()?.parse().ok()?;
    let period: u64 = parts.next()?.parse().ok()?;
    if pid != getpid() || fd < 0 || fd_ident(fd).is_none() {
        return None;
    }
    // SAFETY: our descriptor, handed over by the previous image of this process.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: as above; nothing else in this image owns it.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    Some((stream, period.clamp(MIN_PERIOD_MS, MAX_PERIOD_MS)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use banyan_protocol::metric::Value;

    #[test]
    fn function_increments_become_the_documented_series() {
        let sent = Totals::zero();
        let mut now = Totals::zero();
        let send = crate::counters::Func::MpiSend as usize;
        let write = crate::counters::Func::Write as usize;
        now.calls[send] = 3;
        now.ticks[send] = 2_000;
        now.sent[send] = 300;
        now.calls[write] = 2;
        now.sent[write] = 100_000;
        let mut secs = [0.0; N_FUNCS];
        let mut set = MetricSet::new();
        function_delta(&mut set, &sent, &now, &mut secs, 1000.0);
        assert_eq!(
            set.counter("banyan_mpi_calls_total{function=\"MPI_Send\"}"),
            3.0
        );
        assert_eq!(
            set.counter("banyan_mpi_seconds_total{function=\"MPI_Send\"}"),
            2.0
        );
        assert_eq!(
            set.counter("banyan_mpi_sent_bytes_total{function=\"MPI_Send\"}"),
            300.0
        );
        assert!(set
            .get("banyan_mpi_received_bytes_total{function=\"MPI_Send\"}")
            .is_none());
        assert_eq!(
            set.counter("banyan_io_calls_total{function=\"write\"}"),
            2.0
        );
        assert_eq!(
            set.counter("banyan_io_bytes_total{function=\"write\"}"),
            100_000.0
        );
        assert_eq!(
            set.len(),
            5,
            "no seconds series for a write that took no time"
        );

        // The next delta holds only what happened since.
        let mut later = now.clone();
        later.calls[send] = 4;
        later.ticks[send] = 2_500;
        let mut set = MetricSet::new();
        function_delta(&mut set, &now, &later, &mut secs, 1000.0);
        assert_eq!(
            set.counter("banyan_mpi_calls_total{function=\"MPI_Send\"}"),
            1.0
        );
        assert_eq!(
            set.counter("banyan_mpi_seconds_total{function=\"MPI_Send\"}"),
            0.5
        );
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn usage_increments_are_counters_and_peak_memory_a_gauge() {
        let sent = Usage {
            user_s: 1.0,
            minor_faults: 10.0,
            ..Usage::default()
        };
        let now = Usage {
            user_s: 1.5,
            system_s: 0.25,
            minor_faults: 30.0,
            max_rss_bytes: 4096.0,
            ..Usage::default()
        };
        let mut set = MetricSet::new();
        usage_delta(&mut set, &sent, &now, 7);
        assert_eq!(set.counter("banyan_proc_user_seconds_total"), 0.5);
        assert_eq!(set.counter("banyan_proc_system_seconds_total"), 0.25);
        assert_eq!(set.counter("banyan_proc_minor_faults_total"), 20.0);
        assert!(
            matches!(set.get("banyan_proc_max_rss_bytes"), Some(Value::Gauge(g)) if g.last == 4096.0)
        );
        assert_eq!(set.len(), 4);
    }

    #[test]
    fn the_allocation_free_exit_frame_is_what_the_codec_makes() {
        for status in [0, 1, -1, 63, 64, -65, 255, 1 << 20, i32::MAX, i32::MIN] {
            let mut buf = [0u8; 16];
            let ours = exited_frame(status, &mut buf).to_vec();
            let theirs = frame::encode(&RankMsg::Exit {
                how: RankExit::Exited(status),
            })
            .unwrap();
            assert_eq!(ours, theirs, "status {status}");
        }
    }

    #[test]
    fn socket_addresses_are_built_for_abstract_names_and_paths() {
        let a = raw_addr("@banyan-agent").unwrap();
        assert_eq!(a.addr.sun_path[0], 0);
        assert_eq!(a.addr.sun_path[1], b'b' as libc::c_char);
        let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        assert_eq!(a.len as usize, base + 1 + "banyan-agent".len());
        let p = raw_addr("/run/banyan.sock").unwrap();
        assert_eq!(p.addr.sun_path[0], b'/' as libc::c_char);
        assert_eq!(p.len as usize, base + "/run/banyan.sock".len() + 1);
        assert!(raw_addr("@").is_none());
        assert!(raw_addr(&format!("/{}", "x".repeat(200))).is_none());
    }
}

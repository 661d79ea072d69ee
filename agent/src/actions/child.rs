//! How executors start, watch and stop the processes they run.
//!
//! Every child runs in a session of its own (so the whole process group it makes can be signalled
//! at once, and it has no controlling terminal of the agent's), with stdin from `/dev/null`, a
//! clean environment ([`CLEAN_PATH`], `HOME`, `USER`, `LOGNAME`, `LANG=C.UTF-8`) and, when asked,
//! the uid, gid and groups of another user. [`run`] waits for it under a deadline and a cancel
//! signal, and on either one ends its whole process group: SIGTERM, then SIGKILL when the group
//! has not gone within [`KILL_GRACE`].
//!
//! The parent does everything that may allocate or take locks (user and group lookups) before
//! forking; the child, between fork and exec, only makes system calls (`setsid`, `setgroups`,
//! `setgid`, `setuid`), which is all that is safe in a forked copy of a process with threads.

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{getegid, geteuid, getgrouplist, setgid, setgroups, setsid, setuid};
use nix::unistd::{Gid, Pid, Uid, User};
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

use super::stream::Stream;
use tokio::time::Instant;

/// The only `PATH` a child sees.
pub const CLEAN_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a process group has to go after SIGTERM before it is sent SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(1);

/// How long the output pipes may stay open after the command itself has exited. Longer means a
/// process it left running (a daemon it started that kept its stdout) holds the action up.
pub const PIPE_GRACE: Duration = Duration::from_millis(200);

/// Who a child runs as.
#[derive(Debug, Clone)]
pub struct Identity {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// Supplementary groups, looked up in the parent.
    groups: Vec<Gid>,
    pub home: PathBuf,
    /// Whether the child switches to `uid`, `gid` and `groups`; false: it runs as the agent does.
    switch: bool,
}

impl Identity {
    /// Looks `user` up (`None`: the agent's own user, normally root) on a blocking thread, since
    /// NSS may ask a directory server.
    pub async fn resolve(user: Option<&str>) -> Result<Identity, String> {
        let user = user.map(str::to_string);
        tokio::task::spawn_blocking(move || Identity::lookup(user.as_deref()))
            .await
            .unwrap_or_else(|e| Err(format!("cannot look the user up: {e}")))
    }

    fn lookup(user: Option<&str>) -> Result<Identity, String> {
        let me = geteuid();
        let Some(name) = user else {
            let entry = User::from_uid(me).ok().flatten();
            return Ok(Identity {
                name: entry
                    .as_ref()
                    .map_or_else(|| format!("uid {me}"), |u| u.name.clone()),
                uid: me,
                gid: getegid(),
                groups: Vec::new(),
                home: entry.map_or_else(|| PathBuf::from("/"), |u| u.dir),
                switch: false,
            });
        };
        let entry = User::from_name(name)
            .map_err(|e| format!("cannot look user {name} up: {e}"))?
            .ok_or_else(|| format!("no user {name} on this node"))?;
        if !me.is_root() {
            if entry.uid == me {
                return Ok(Identity {
                    name: entry.name,
                    uid: entry.uid,
                    gid: entry.gid,
                    groups: Vec::new(),
                    home: entry.dir,
                    switch: false,
                });
            }
            return Err(format!(
                "cannot run as {name}: the agent runs as uid {me}, not as root"
            ));
        }
        let cname = CString::new(name).map_err(|_| format!("invalid user name {name:?}"))?;
        let groups = getgrouplist(&cname, entry.gid)
            .map_err(|e| format!("cannot list the groups of user {name}: {e}"))?;
        Ok(Identity {
            name: entry.name,
            uid: entry.uid,
            gid: entry.gid,
            groups,
            home: entry.dir,
            switch: true,
        })
    }

    /// The whole environment of a child.
    fn env(&self) -> [(&'static str, String); 5] {
        [
            ("PATH", CLEAN_PATH.to_string()),
            ("HOME", self.home.to_string_lossy().into_owned()),
            ("USER", self.name.clone()),
            ("LOGNAME", self.name.clone()),
            ("LANG", "C.UTF-8".to_string()),
        ]
    }

    /// The user's home when it is a directory (as in a login), else `/`.
    pub fn workdir(&self) -> &Path {
        if self.home.is_dir() {
            &self.home
        } else {
            Path::new("/")
        }
    }
}

/// Where a child's stdout and stderr go.
pub enum Output {
    /// Into pipes read by the agent, at most this many bytes kept per stream.
    Capture(u64),
    /// Captured as with `Capture`, and every kept byte also sent to the tap as it is read.
    Stream(u64, super::OutputTap),
    /// Appended to a file (both streams).
    Append(PathBuf),
    Null,
}

/// One process to run.
pub struct Launch<'a> {
    /// The program (looked up in [`CLEAN_PATH`] unless it has a `/`) and its arguments.
    pub argv: &'a [String],
    pub identity: &'a Identity,
    pub cwd: &'a Path,
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Exited,
    TimedOut,
    Cancelled,
}

/// How a run ended.
#[derive(Debug)]
pub struct Finished {
    pub end: End,
    /// The command's exit status; `None` when it could not be waited for.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output past the cap was read and dropped.
    pub truncated: bool,
    /// The command exited but something it left running still held its output open after
    /// [`PIPE_GRACE`]: the agent stopped reading (nothing after that point was read).
    pub left_open: bool,
}

/// Runs `launch` until it exits, `deadline` passes or `cancel` turns true, reading its output
/// meanwhile. Err: it could not be started (the message says why, without the program's name).
pub async fn run(
    launch: Launch<'_>,
    deadline: Instant,
    cancel: &mut watch::Receiver<bool>,
) -> Result<Finished, String> {
    let Some((program, args)) = launch.argv.split_first() else {
        return Err("no command".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(launch.identity.env())
        .current_dir(launch.cwd)
        .stdin(Stdio::null());
    let mut tap = None;
    let cap = match &launch.output {
        Output::Capture(cap) => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            usize::try_from(*cap).unwrap_or(usize::MAX)
        }
        Output::Stream(cap, to) => {
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            tap = Some(to.clone());
            usize::try_from(*cap).unwrap_or(usize::MAX)
        }
        Output::Append(path) => {
            let file = open_log(path)?;
            let copy = file
                .try_clone()
                .map_err(|e| format!("cannot use log {}: {e}", path.display()))?;
            cmd.stdout(file).stderr(copy);
            0
        }
        Output::Null => {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
            0
        }
    };
    let id = launch.identity;
    let (switch, uid, gid, groups) = (id.switch, id.uid, id.gid, id.groups.clone());
    // SAFETY: the closure runs between fork and exec and only makes system calls (no allocation,
    // no locks): `groups` was built in the parent and is only read.
    unsafe {
        cmd.pre_exec(move || {
            setsid()?;
            if switch {
                setgroups(&groups)?;
                setgid(gid)?;
                setuid(uid)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| spawn_error(&e))?;
    // After setsid the child leads its own process group, numbered as its pid.
    let mut guard = GroupGuard {
        pgid: child.id().map(|p| Pid::from_raw(p as i32)),
    };
    let mut out = Drain::new(child.stdout.take(), cap);
    let mut err = Drain::new(child.stderr.take(), cap);
    if let Some(tap) = tap {
        out.tap = Some((tap.clone(), Stream::Stdout));
        err.tap = Some((tap, Stream::Stderr));
    }

    let mut status = None;
    let end = loop {
        tokio::select! {
            r = child.wait() => {
                status = r.ok();
                break End::Exited;
            }
            _ = tokio::time::sleep_until(deadline) => break End::TimedOut,
            _ = super::cancelled(cancel) => break End::Cancelled,
            _ = out.step(), if out.is_open() => {}
            _ = err.step(), if err.is_open() => {}
        }
    };
    if end == End::Exited {
        // Whatever is left in the group was started on purpose by the command (a daemon):
        // it is not the agent's to kill.
        guard.pgid = None;
    } else {
        status = terminate(&mut child, &mut guard, &mut out, &mut err).await;
    }
    // The command has exited; its output is complete once every writer has closed the pipes,
    // which a daemon it started may never do.
    let _ = tokio::time::timeout(PIPE_GRACE, async {
        while out.is_open() || err.is_open() {
            tokio::select! {
                _ = out.step(), if out.is_open() => {}
                _ = err.step(), if err.is_open() => {}
            }
        }
    })
    .await;
    let left_open = out.is_open() || err.is_open();
    Ok(Finished {
        end,
        status,
        truncated: out.truncated || err.truncated,
        stdout: out.data,
        stderr: err.data,
        left_open,
    })
}

/// Ends the child's process group: SIGTERM, up to [`KILL_GRACE`] for the group to go (still
/// reading its output, so that a child blocked on a full pipe can exit), then SIGKILL.
async fn terminate<O, E>(
    child: &mut tokio::process::Child,
    guard: &mut GroupGuard,
    out: &mut Drain<O>,
    err: &mut Drain<E>,
) -> Option<ExitStatus>
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    guard.kill(Signal::SIGTERM);
    let until = Instant::now() + KILL_GRACE;
    let mut waited = false;
    let mut status = None;
    loop {
        tokio::select! {
            r = child.wait(), if !waited => {
                waited = true;
                status = r.ok();
            }
            _ = tokio::time::sleep_until(until) => break,
            // Once the leader is reaped, poll for the rest of the group: orphans are reaped by
            // init, and a group of only zombies under a non-reaping init is waited out.
            _ = tokio::time::sleep(Duration::from_millis(20)), if waited => {
                if !guard.exists() {
                    break;
                }
            }
            _ = out.step(), if out.is_open() => {}
            _ = err.step(), if err.is_open() => {}
        }
    }
    guard.kill(Signal::SIGKILL);
    guard.pgid = None;
    if !waited {
        // SIGKILL ends it at once unless it is stuck in the kernel; do not hang on that.
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
            status = r.ok();
        }
    }
    status
}

/// Kills the process group when dropped while armed (`pgid` set): an action whose future is
/// dropped (agent stopping, caller gone) does not leave its command running.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn kill(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            let _ = killpg(pgid, signal);
        }
    }

    /// Whether any process (zombies included) is still in the group.
    fn exists(&self) -> bool {
        self.pgid
            .is_some_and(|pgid| !matches!(killpg(pgid, None), Err(Errno::ESRCH)))
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill(Signal::SIGKILL);
    }
}

/// Reads one output pipe, keeping the first `cap` bytes and reading on past them (dropping them)
/// so that the child never blocks on a full pipe.
struct Drain<R> {
    pipe: Option<R>,
    data: Vec<u8>,
    cap: usize,
    truncated: bool,
    buf: Box<[u8]>,
    /// Where kept bytes are copied as they are read, and which stream this is.
    tap: Option<(super::OutputTap, Stream)>,
}

impl<R: AsyncRead + Unpin> Drain<R> {
    fn new(pipe: Option<R>, cap: usize) -> Drain<R> {
        Drain {
            buf: vec![0; if pipe.is_some() { 16 * 1024 } else { 0 }].into_boxed_slice(),
            pipe,
            data: Vec::new(),
            cap,
            truncated: false,
            tap: None,
        }
    }

    fn is_open(&self) -> bool {
        self.pipe.is_some()
    }

    /// Reads once. Cancel-safe: dropped before it completes, it has read nothing.
    async fn step(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return std::future::pending().await;
        };
        match pipe.read(&mut self.buf).await {
            Ok(0) => self.pipe = None,
            Ok(n) => {
                let take = n.min(self.cap.saturating_sub(self.data.len()));
                self.data.extend_from_slice(&self.buf[..take]);
                self.truncated |= take < n;
                if let Some((tap, stream)) = &self.tap {
                    if take > 0 {
                        // The receiver may be gone (the order's answer is on its way): fine.
                        let _ = tap.send((*stream, self.buf[..take].to_vec()));
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.pipe = None,
        }
    }
}

fn open_log(path: &Path) -> Result<std::fs::File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create log directory {}: {e}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("cannot open log {}: {e}", path.display()))
}

fn spawn_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => format!("not found (PATH={CLEAN_PATH})"),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Where `program` would be found by [`run`], if it is an executable file.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    CLEAN_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_in_the_clean_path_only() {
        assert_eq!(find_program("sh").map(|p| p.is_absolute()), Some(true));
        assert_eq!(find_program("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(find_program("banyan-no-such-program"), None);
        assert_eq!(find_program("/etc/passwd"), None);
    }

    #[test]
    fn an_unknown_user_is_named_in_the_refusal() {
        let e = Identity::lookup(Some("banyan-no-such-user")).unwrap_err();
        assert_eq!(e, "no user banyan-no-such-user on this node");
    }
}

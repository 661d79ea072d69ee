//! The calls that end a program image without `exit`: `execve` and the `exec` calls glibc does
//! not route through it (`execv`, `execvp`, `execvpe`), and `_exit`/`_Exit`.
//!
//! `_exit` skips the `on_exit` handler, and `/bin/sh` (dash) and Python's `os._exit` end that
//! way, so it sends the last update and `Exit` itself ([`report::exiting_now`]).
//!
//! Across `execve` the process stays one stream to the agent.
//! Before the real call, [`report::prepare_exec`] sends this image's last update and clears
//! close-on-exec on the socket; the new image finds it through [`envnames::LINK`] in the
//! environment given to the call. A job id agreed in `MPI_Init` is passed on as
//! [`envnames::JOB_ID`] too. When the call fails (a `PATH` search tries several files) the socket
//! is taken back. The variadic `execl` family cannot be defined in stable Rust and is not
//! wrapped: a connected process (one that ran longer than
//! [`report::CONNECT_AFTER`]) that calls it leaves a stream without `Exit`, which the agent
//! counts as a crashed rank. A program image that does not load the library (static or setuid)
//! likewise ends the stream without `Exit`.

use crate::envnames;
use crate::real::Real;
use crate::report::{self, Handover};
use libc::{c_char, c_int, c_void};
use std::ffi::CString;

extern "C" {
    static environ: *const *const c_char;
}

/// A new environment: `envp` without our variables, plus the handover and the agreed id.
struct Env {
    _owned: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl Env {
    fn build(envp: *const *const c_char, h: Option<&Handover>) -> Option<Env> {
        let agreed = report::agreed_job_id();
        if h.is_none() && agreed.is_none() {
            return None;
        }
        let mut owned = Vec::new();
        if let Some(h) = h {
            owned.push(CString::new(h.entry.clone()).ok()?);
        }
        if let Some(id) = agreed {
            owned.push(CString::new(format!("{}={id}", envnames::JOB_ID)).ok()?);
        }
        let link = format!("{}=", envnames::LINK);
        let job = format!("{}=", envnames::JOB_ID);
        let mut ptrs = Vec::new();
        if !envp.is_null() {
            let mut i = 0;
            loop {
                // SAFETY: envp is a NULL-terminated array of C strings (execve's contract).
                let p = unsafe { *envp.add(i) };
                if p.is_null() {
                    break;
                }
                // SAFETY: as above.
                let bytes = unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes();
                let ours = bytes.starts_with(link.as_bytes())
                    || (agreed.is_some() && bytes.starts_with(job.as_bytes()));
                if !ours {
                    ptrs.push(p);
                }
                i += 1;
            }
        }
        ptrs.extend(owned.iter().map(|c| c.as_ptr()));
        ptrs.push(std::ptr::null());
        Some(Env {
            _owned: owned,
            ptrs,
        })
    }
}

fn errno() -> c_int {
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: c_int) {
    // SAFETY: this thread's errno.
    unsafe { *libc::__errno_location() = v };
}

/// Runs `call` with the environment to give the new image (or `envp` unchanged), keeping the
/// failed call's errno.
fn with_handover(
    envp: *const *const c_char,
    call: impl FnOnce(*const *const c_char) -> c_int,
) -> c_int {
    let prepared = std::panic::catch_unwind(|| {
        let h = report::prepare_exec();
        let env = Env::build(envp, h.as_ref());
        (h, env)
    });
    let (h, env) = prepared.unwrap_or((None, None));
    let r = call(env.as_ref().map_or(envp, |e| e.ptrs.as_ptr()));
    let saved = errno();
    drop(h);
    drop(env);
    set_errno(saved);
    r
}

type ExecFn =
    unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;

fn real_execve() -> Option<ExecFn> {
    static REAL: Real = Real::next(c"execve");
    // SAFETY: libc's execve has this prototype.
    REAL.get()
        .map(|p| unsafe { std::mem::transmute::<*mut c_void, ExecFn>(p) })
}

fn real_execvpe() -> Option<ExecFn> {
    static REAL: Real = Real::next(c"execvpe");
    // SAFETY: libc's execvpe has this prototype.
    REAL.get()
        .map(|p| unsafe { std::mem::transmute::<*mut c_void, ExecFn>(p) })
}

#[no_mangle]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let Some(f) = real_execve() else {
        // SAFETY: the raw system call with the caller's arguments.
        return unsafe { libc::syscall(libc::SYS_execve, path, argv, envp) } as c_int;
    };
    // SAFETY: the caller's arguments, with an environment that is valid either way.
    with_handover(envp, |env| unsafe { f(path, argv, env) })
}

#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: reading the process's environment pointer.
    let envp = unsafe { environ };
    // SAFETY: execv(p, a) is execve(p, a, environ).
    unsafe { execve(path, argv, envp) }
}

#[no_mangle]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    let Some(f) = real_execvpe() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    // SAFETY: the caller's arguments, with an environment that is valid either way.
    with_handover(envp, |env| unsafe { f(file, argv, env) })
}

#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: reading the process's environment pointer.
    let envp = unsafe { environ };
    // SAFETY: execvp(f, a) is execvpe(f, a, environ).
    unsafe { execvpe(file, argv, envp) }
}

#[no_mangle]
pub extern "C" fn _exit(status: c_int) -> ! {
    report::exiting_now(status);
    static REAL: Real = Real::next(c"_exit");
    if let Some(p) = REAL.get() {
        // SAFETY: libc's _exit has this prototype.
        let f = unsafe { std::mem::transmute::<*mut c_void, extern "C" fn(c_int) -> !>(p) };
        f(status);
    }
    // SAFETY: ends the process; never returns.
    unsafe { libc::syscall(libc::SYS_exit_group, status) };
    #[allow(clippy::empty_loop)]
    loop {}
}

#[no_mangle]
pub extern "C" fn _Exit(status: c_int) -> ! {
    _exit(status)
}

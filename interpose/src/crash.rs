//! Crash signals: tell the agent how the rank died, then die as the process would have.
//!
//! Handlers for `SIGSEGV`, `SIGBUS`, `SIGFPE`, `SIGILL` and `SIGABRT` are installed by the
//! constructor where the disposition is still the default. A handler does only async-signal-safe
//! work, then puts back the previous disposition and lets the signal happen again: a fault
//! re-executes the faulting instruction, a sent signal is raised again (it is blocked until the
//! handler returns). The work, bounded by [`report::CRASH_WAIT`] in all:
//!
//! 1. The counts since the last periodic update: encoding them is not async-signal-safe, so the
//!    handler wakes the reporter thread (a futex wake) and waits for it to send them as an
//!    ordinary update ([`report::last_update_before_crash`]). It does not wait when it runs on
//!    the reporter thread itself or there is none, and stops waiting at the bound (the reporter
//!    may be stuck on a lock the crashed thread held, `malloc`'s for one): those counts are then
//!    lost, and so is the exit if the reporter holds the stream at that moment (the agent then
//!    sees the stream end without one, which it records as a crash too).
//! 2. The exit ([`report::crash_exit`]): a pre-encoded `Exit { Signaled(sig) }` frame, or
//!    `Aborted("abort()")` for a `SIGABRT` the process raised itself, written with `send(2)`.
//!    Only the handler sends it, and only once: it takes the stream for good.
//!
//! A program or runtime that installs its own handler later (Open MPI does, in `MPI_Init`, to
//! print a backtrace) replaces ours. After `MPI_Init` the handlers are installed again, in front
//! of the handlers of the MPI library, its runtime and its transports (UCX, libfabric) only
//! (checked with `dladdr`), which then run after ours;
//! any other handler (a JVM's, which uses `SIGSEGV` in normal operation) is left alone. Where
//! ours is not installed, the agent still sees the stream end without `Exit` and records a crash.

use crate::report;
use banyan_protocol::frame;
use banyan_protocol::ingest::{RankExit, RankMsg};
use libc::{c_int, c_void, siginfo_t};
use std::cell::UnsafeCell;
use std::sync::OnceLock;

const SIGNALS: [c_int; 5] = [
    libc::SIGSEGV,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGILL,
    libc::SIGABRT,
];

/// `si_code` of a signal sent by `tkill`/`raise` (what `abort()` does).
const SI_TKILL: c_int = -6;

struct Frames {
    signaled: Vec<Vec<u8>>,
    abort_call: Vec<u8>,
}

static FRAMES: OnceLock<Frames> = OnceLock::new();

/// The dispositions our handlers replaced, per entry of [`SIGNALS`].
struct Prev(UnsafeCell<[libc::sigaction; 5]>);

// SAFETY: an entry is written only before our handler is installed for that signal (in the
// constructor, or in MPI_Init while the handler of that signal is the MPI library's), and read
// only by our handler.
unsafe impl Sync for Prev {}

// SAFETY: all-zero sigaction structs are SIG_DFL with an empty mask.
static PREV: Prev = Prev(UnsafeCell::new(unsafe { std::mem::zeroed() }));

fn exit_frame(how: RankExit) -> Vec<u8> {
    frame::encode(&RankMsg::Exit { how }).unwrap_or_default()
}

fn our_action() -> libc::sigaction {
    // SAFETY: all-zero is a valid sigaction to fill in.
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = handler as *const () as usize;
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: a valid mask.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    sa
}

fn current(sig: c_int) -> Option<libc::sigaction> {
    // SAFETY: all-zero is a valid out-buffer.
    let mut cur: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: querying only.
    (unsafe { libc::sigaction(sig, std::ptr::null(), &mut cur) } == 0).then_some(cur)
}

fn take_over(i: usize, sig: c_int, prev: libc::sigaction) {
    // SAFETY: see `Prev`: our handler is not installed for `sig` at this point.
    unsafe { (*PREV.0.get())[i] = prev };
    let ours = our_action();
    // SAFETY: installing a valid action.
    unsafe { libc::sigaction(sig, &ours, std::ptr::null_mut()) };
}

/// Installs the handlers where the disposition is the default (the constructor).
pub fn install() {
    FRAMES.get_or_init(|| Frames {
        signaled: SIGNALS
            .iter()
            .map(|&s| exit_frame(RankExit::Signaled(s)))
            .collect(),
        abort_call: exit_frame(RankExit::Aborted("abort()".into())),
    });
    for (i, &sig) in SIGNALS.iter().enumerate() {
        if let Some(cur) = current(sig) {
            if cur.sa_sigaction == libc::SIG_DFL {
                take_over(i, sig, cur);
            }
        }
    }
}

/// Whether `addr` lies in the MPI library or its runtime.
fn in_mpi_library(addr: usize) -> bool {
    // SAFETY: all-zero is a valid Dl_info to fill in.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads its tables; the out-pointer is valid.
    if unsafe { libc::dladdr(addr as *const c_void, &mut info) } == 0 || info.dli_fname.is_null() {
        return false;
    }
    // SAFETY: dladdr returns a NUL-terminated file name.
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }.to_string_lossy();
    let file = name.rsplit('/').next().unwrap_or("");
    // The MPI libraries, their runtimes, and the transports they load during MPI_Init (UCX
    // installs a SIGSEGV handler that prints a backtrace and does not chain).
    [
        "libmpi",
        "libopen-",
        "libpmix",
        "libpmi",
        "libmpich",
        "libprrte",
        "libucs",
        "libucp",
        "libuct",
        "libfabric",
        "libpsm",
    ]
    .iter()
    .any(|p| file.starts_with(p))
}

/// After `MPI_Init`: puts our handlers in front of those the MPI library installed.
pub fn reinstall_after_mpi_init() {
    if FRAMES.get().is_none() {
        return;
    }
    let ours = handler as *const () as usize;
    for (i, &sig) in SIGNALS.iter().enumerate() {
        let Some(cur) = current(sig) else { continue };
        let h = cur.sa_sigaction;
        if h == ours {
            continue;
        }
        if h == libc::SIG_DFL || (h != libc::SIG_IGN && in_mpi_library(h)) {
            take_over(i, sig, cur);
        }
    }
}

extern "C" fn handler(sig: c_int, info: *mut siginfo_t, _ctx: *mut c_void) {
    let Some(i) = SIGNALS.iter().position(|&s| s == sig) else {
        return;
    };
    let (code, pid) = if info.is_null() {
        (0, 0)
    } else {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        unsafe { ((*info).si_code, (*info).si_pid()) }
    };
    if let Some(frames) = FRAMES.get() {
        // SAFETY: getpid is async-signal-safe.
        let own = pid == unsafe { libc::getpid() };
        let frame = if sig == libc::SIGABRT && code == SI_TKILL && own {
            &frames.abort_call
        } else {
            &frames.signaled[i]
        };
        let deadline = report::deadline_in(report::CRASH_WAIT);
        report::last_update_before_crash(deadline);
        report::crash_exit(frame, deadline);
    }
    // SAFETY: restoring the disposition we replaced (async-signal-safe), and re-raising a
    // signal that was sent rather than caused by the faulting instruction, which would
    // otherwise not happen again.
    unsafe {
        let prev = (*PREV.0.get())[i];
        libc::sigaction(sig, &prev, std::ptr::null_mut());
        if code <= 0 {
            libc::raise(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_frames_decode_to_the_signal() {
        let f = exit_frame(RankExit::Signaled(11));
        assert_eq!(
            frame::decode::<RankMsg>(&f).unwrap(),
            RankMsg::Exit {
                how: RankExit::Signaled(11)
            }
        );
    }

    #[test]
    fn the_c_library_is_not_mistaken_for_mpi() {
        assert!(!in_mpi_library(libc::getpid as *const () as usize));
        assert!(!in_mpi_library(0));
    }
}

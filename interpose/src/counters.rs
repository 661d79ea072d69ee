//! Per-thread counter blocks: what the hot path writes and the reporter reads.
//!
//! Each thread that makes a counted call gets one [`Block`] on its first such call: a page-sized
//! zeroed mapping (`mmap`, so it works even where `malloc` must not be called) pushed onto a
//! lock-free list that the reporter walks. After that, counting is a thread-local load and, per
//! counter, a relaxed load and a relaxed store: the owning thread is the only writer, so no
//! `lock`-prefixed read-modify-write is needed, and the reporter's relaxed loads of aligned 64-bit
//! words never see a torn value. Counters only grow, so the reporter turns them into increments by
//! remembering what it sent.
//!
//! When a thread ends, its block is marked free (a thread-local destructor) and the next new
//! thread adopts it instead of mapping another: its counts stay where they were and keep growing,
//! which is all the reporter needs. A program that starts a million short threads therefore uses
//! as many blocks as it ever had threads alive at once.
//!
//! One caveat is the price of "no atomic RMW": a signal handler that interrupts a counted call and
//! makes a counted call itself, on the same thread, can lose its own count.

use std::cell::{Cell, UnsafeCell};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

/// What one function's slot counts.
#[repr(C, align(32))]
#[derive(Default)]
pub struct Slot {
    pub calls: AtomicU64,
    /// Ticks ([`crate::clock`]) spent inside the real function.
    pub ticks: AtomicU64,
    /// Bytes sent (MPI) or moved (I/O).
    pub sent: AtomicU64,
    /// Bytes received (MPI).
    pub recv: AtomicU64,
}

#[inline(always)]
fn bump(a: &AtomicU64, by: u64) {
    // Single writer: a plain load and store, no RMW.
    a.store(
        a.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

impl Slot {
    /// One call that took `ticks` and moved `sent`/`recv` bytes.
    #[inline(always)]
    pub fn record(&self, ticks: u64, sent: u64, recv: u64) {
        bump(&self.calls, 1);
        bump(&self.ticks, ticks);
        if sent != 0 {
            bump(&self.sent, sent);
        }
        if recv != 0 {
            bump(&self.recv, recv);
        }
    }

    /// Received bytes learnt after the call (a nonblocking receive completed).
    #[inline(always)]
    pub fn add_recv(&self, recv: u64) {
        bump(&self.recv, recv);
    }
}

/// The counted functions, MPI first, then POSIX I/O. The discriminant indexes [`Block::slots`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Func {
    MpiInit,
    MpiInitThread,
    MpiFinalize,
    MpiSend,
    MpiSsend,
    MpiRecv,
    MpiIsend,
    MpiIrecv,
    MpiWait,
    MpiWaitall,
    MpiTest,
    MpiSendrecv,
    MpiBcast,
    MpiReduce,
    MpiAllreduce,
    MpiBarrier,
    MpiAlltoall,
    MpiAllgather,
    MpiGather,
    MpiScatter,
    MpiAbort,
    Read,
    Write,
    Pread,
    Pwrite,
    Readv,
    Writev,
    Open,
    Openat,
    Close,
    Fsync,
    Fdatasync,
}

/// Number of [`Func`]s.
pub const N_FUNCS: usize = Func::Fdatasync as usize + 1;
/// The first I/O function; everything before it is MPI.
pub const FIRST_IO: usize = Func::Read as usize;

/// The `function` label of each [`Func`], in order. The 64-bit-offset twins (`pread64`,
/// `open64`, ...) and the fortified entry points (`__read_chk`) count under their plain name.
pub const FUNC_NAMES: [&str; N_FUNCS] = [
    "MPI_Init",
    "MPI_Init_thread",
    "MPI_Finalize",
    "MPI_Send",
    "MPI_Ssend",
    "MPI_Recv",
    "MPI_Isend",
    "MPI_Irecv",
    "MPI_Wait",
    "MPI_Waitall",
    "MPI_Test",
    "MPI_Sendrecv",
    "MPI_Bcast",
    "MPI_Reduce",
    "MPI_Allreduce",
    "MPI_Barrier",
    "MPI_Alltoall",
    "MPI_Allgather",
    "MPI_Gather",
    "MPI_Scatter",
    "MPI_Abort",
    "read",
    "write",
    "pread",
    "pwrite",
    "readv",
    "writev",
    "open",
    "openat",
    "close",
    "fsync",
    "fdatasync",
];

/// Slots of the table of pending nonblocking receives ([`MpiScratch`]).
pub const IRECV_SLOTS: usize = 512;
/// How far a lookup in that table probes.
pub const IRECV_PROBES: usize = 16;
/// Statuses of an `MPI_Waitall` that ignores its statuses that the block can stand in for.
pub const SCRATCH_STATUSES: usize = 128;
/// Bytes of one stand-in status: more than either ABI's `MPI_Status` (Open MPI 24, MPICH 20).
pub const STATUS_BYTES: usize = 64;

/// State of the MPI wrappers that only the owning thread touches.
#[repr(C)]
pub struct MpiScratch {
    /// Request handles of nonblocking receives not yet completed (0: empty slot). Open
    /// addressing without tombstones: a lookup always scans its [`IRECV_PROBES`] slots.
    pub irecv: [usize; IRECV_SLOTS],
    /// Entries in `irecv`; the wait wrappers skip the table while it is 0.
    pub irecv_live: usize,
    /// Stand-in statuses for `MPI_Waitall(..., MPI_STATUSES_IGNORE)` (8-byte aligned).
    pub statuses: [u64; SCRATCH_STATUSES * 3],
    /// Indices of tracked requests in one `MPI_Waitall`.
    pub tracked: [u32; SCRATCH_STATUSES],
}

/// One thread's counters.
#[repr(C, align(64))]
pub struct Block {
    pub slots: [Slot; N_FUNCS],
    /// Next block of the registry; written once before the block is published.
    next: *mut Block,
    in_use: AtomicBool,
    pub mpi: UnsafeCell<MpiScratch>,
}

// SAFETY: the slots are atomics; `next` is immutable after publication (release/acquire through
// REGISTRY); `mpi` is touched only by the thread that owns the block (the hot path's own thread).
unsafe impl Sync for Block {}

static REGISTRY: AtomicPtr<Block> = AtomicPtr::new(std::ptr::null_mut());

/// What a thread knows about itself.
pub struct Tls {
    /// This thread's block, or null before its first counted call.
    block: Cell<*const Block>,
    /// Inside banyan's own code (the reporter thread, an internal call): nothing is counted.
    busy: Cell<bool>,
    /// Looking up a real function: a call that recurses into a wrapper must not look it up again.
    resolving: Cell<bool>,
}

thread_local! {
    static TLS: Tls = const {
        Tls { block: Cell::new(std::ptr::null()), busy: Cell::new(false), resolving: Cell::new(false) }
    };
    /// Frees the block when the thread ends (has a destructor, so it lives apart from TLS,
    /// which must stay reachable to the very end of the thread).
    static RELEASE: Release = const { Release(Cell::new(std::ptr::null())) };
}

struct Release(Cell<*const Block>);

impl Drop for Release {
    fn drop(&mut self) {
        let b = self.0.get();
        if !b.is_null() {
            // A counted call after this point registers again rather than write to a block
            // another thread may have adopted.
            let _ = TLS.try_with(|t| t.block.set(std::ptr::null()));
            // SAFETY: blocks are never unmapped.
            unsafe { (*b).in_use.store(false, Ordering::Release) };
        }
    }
}

/// Whether the MPI and I/O groups count (set once from the environment; see
/// [`crate::report`]).
pub static MPI_ON: AtomicBool = AtomicBool::new(false);
pub static IO_ON: AtomicBool = AtomicBool::new(false);

/// The block to count `func` into, or `None` when nothing must be counted (group off, inside
/// banyan, no block to be had).
#[inline(always)]
pub fn enter(on: &AtomicBool, func: Func) -> Option<&'static Slot> {
    if !on.load(Ordering::Relaxed) {
        return None;
    }
    let b = TLS
        .try_with(|t| {
            if t.busy.get() {
                return std::ptr::null();
            }
            let b = t.block.get();
            if b.is_null() {
                register(t)
            } else {
                b
            }
        })
        .unwrap_or(std::ptr::null());
    if b.is_null() {
        return None;
    }
    // SAFETY: blocks are mapped for the life of the process and never unmapped.
    Some(unsafe { &(*b).slots[func as usize] })
}

/// This thread's block, if it has one (the MPI wrappers' scratch).
#[inline(always)]
pub fn my_block() -> Option<&'static Block> {
    let b = TLS.try_with(|t| t.block.get()).unwrap_or(std::ptr::null());
    // SAFETY: as in `enter`.
    (!b.is_null()).then(|| unsafe { &*b })
}

/// Runs `f` with counting off on this thread (banyan's own I/O).
pub fn quietly<R>(f: impl FnOnce() -> R) -> R {
    let was = TLS.try_with(|t| t.busy.replace(true)).unwrap_or(true);
    let r = f();
    if !was {
        let _ = TLS.try_with(|t| t.busy.set(false));
    }
    r
}

/// Turns counting off on this thread for good (the reporter thread).
pub fn quiet_forever() {
    let _ = TLS.try_with(|t| t.busy.set(true));
}

/// Marks this thread as looking up a real function; `false` if it already is (a recursive call).
pub fn begin_resolving() -> bool {
    TLS.try_with(|t| !t.resolving.replace(true))
        .unwrap_or(false)
}

pub fn end_resolving() {
    let _ = TLS.try_with(|t| t.resolving.set(false));
}

fn errno() -> i32 {
    // SAFETY: __errno_location always returns this thread's errno.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: i32) {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = v };
}

#[cold]
#[inline(never)]
fn register(t: &Tls) -> *const Block {
    // Registration maps memory and registers a thread-exit destructor; neither may be counted,
    // and neither may change the errno the interrupted call is about to return.
    let saved = errno();
    t.busy.set(true);
    let b = adopt_free().or_else(map_new).unwrap_or(std::ptr::null());
    if !b.is_null() {
        t.block.set(b);
        let _ = RELEASE.try_with(|r| r.0.set(b));
    }
    t.busy.set(false);
    set_errno(saved);
    b
}

fn adopt_free() -> Option<*const Block> {
    let mut p = REGISTRY.load(Ordering::Acquire);
    while !p.is_null() {
        // SAFETY: registry entries are never unmapped.
        let b = unsafe { &*p };
        if !b.in_use.load(Ordering::Relaxed)
            && b.in_use
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        {
            // SAFETY: we own the block now; its previous owner has ended.
            unsafe { (*b.mpi.get()).irecv_live = 0 };
            // SAFETY: as above; the table is stale, start it empty.
            unsafe { (*b.mpi.get()).irecv.fill(0) };
            return Some(p);
        }
        p = b.next;
    }
    None
}

fn map_new() -> Option<*const Block> {
    let size = std::mem::size_of::<Block>();
    // SAFETY: an anonymous private mapping has no preconditions; the result is checked.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return None;
    }
    let b = mem as *mut Block;
    // Zeroed memory is a valid Block (atomics, integers, a null pointer, `false`); page alignment
    // satisfies its 64-byte alignment.
    // SAFETY: `b` is fresh, exclusively ours, and large enough.
    unsafe { (*b).in_use.store(true, Ordering::Relaxed) };
    let mut head = REGISTRY.load(Ordering::Relaxed);
    loop {
        // SAFETY: not yet published: only this thread sees `b`.
        unsafe { (*b).next = head };
        match REGISTRY.compare_exchange_weak(head, b, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => return Some(b),
            Err(now) => head = now,
        }
    }
}

/// Cumulative values of every slot, summed over all threads that ever counted.
#[derive(Clone, Debug, PartialEq)]
pub struct Totals {
    pub calls: [u64; N_FUNCS],
    pub ticks: [u64; N_FUNCS],
    pub sent: [u64; N_FUNCS],
    pub recv: [u64; N_FUNCS],
}

impl Totals {
    pub fn zero() -> Totals {
        Totals {
            calls: [0; N_FUNCS],
            ticks: [0; N_FUNCS],
            sent: [0; N_FUNCS],
            recv: [0; N_FUNCS],
        }
    }
}

/// Sums the registry now.
pub fn totals() -> Totals {
    let mut t = Totals::zero();
    let mut p = REGISTRY.load(Ordering::Acquire);
    while !p.is_null() {
        // SAFETY: registry entries are never unmapped.
        let b = unsafe { &*p };
        for (i, s) in b.slots.iter().enumerate() {
            t.calls[i] = t.calls[i].wrapping_add(s.calls.load(Ordering::Relaxed));
            t.ticks[i] = t.ticks[i].wrapping_add(s.ticks.load(Ordering::Relaxed));
            t.sent[i] = t.sent[i].wrapping_add(s.sent.load(Ordering::Relaxed));
            t.recv[i] = t.recv[i].wrapping_add(s.recv.load(Ordering::Relaxed));
        }
        p = b.next;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_has_a_name_and_groups_do_not_overlap() {
        assert_eq!(FUNC_NAMES.len(), N_FUNCS);
        assert!(FUNC_NAMES[..FIRST_IO].iter().all(|n| n.starts_with("MPI_")));
        assert!(FUNC_NAMES[FIRST_IO..]
            .iter()
            .all(|n| !n.starts_with("MPI_")));
        assert_eq!(FUNC_NAMES[Func::Write as usize], "write");
        assert_eq!(FUNC_NAMES[Func::MpiAbort as usize], "MPI_Abort");
    }

    #[test]
    fn counts_from_many_threads_add_up_and_ended_threads_blocks_are_reused() {
        static ON: AtomicBool = AtomicBool::new(true);
        let before = totals();
        for _ in 0..4 {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    std::thread::spawn(|| {
                        for _ in 0..1000 {
                            if let Some(s) = enter(&ON, Func::MpiBarrier) {
                                s.record(3, 5, 7);
                            }
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        }
        let after = totals();
        let i = Func::MpiBarrier as usize;
        assert_eq!(after.calls[i] - before.calls[i], 32_000);
        assert_eq!(after.ticks[i] - before.ticks[i], 96_000);
        assert_eq!(after.sent[i] - before.sent[i], 160_000);
        assert_eq!(after.recv[i] - before.recv[i], 224_000);
        let mut blocks = 0;
        let mut p = REGISTRY.load(Ordering::Acquire);
        while !p.is_null() {
            blocks += 1;
            p = unsafe { (*p).next };
        }
        // 32 threads ran, at most 8 (plus the test harness's own) at once.
        assert!(blocks < 20, "{blocks} blocks for 8 concurrent threads");
    }

    #[test]
    fn nothing_is_counted_inside_banyan_or_when_off() {
        static ON: AtomicBool = AtomicBool::new(true);
        static OFF: AtomicBool = AtomicBool::new(false);
        assert!(enter(&OFF, Func::Write).is_none());
        quietly(|| assert!(enter(&ON, Func::Write).is_none()));
        assert!(enter(&ON, Func::Write).is_some());
    }
}

//! MPI wrappers through the PMPI profiling interface, one build for Open MPI and MPICH.
//!
//! No MPI header is used and no MPI symbol is left undefined: each exported `MPI_Xxx` calls
//! `PMPI_Xxx` through a pointer looked up once ([`crate::real`]), so a program without MPI loads
//! this library and never calls any of it.
//!
//! Handles (`MPI_Datatype`, `MPI_Comm`, `MPI_Op`) are pointers in Open MPI and `int`s in MPICH.
//! They are declared [`H`] (`usize`) here and forwarded untouched: on x86-64 SysV (and aarch64)
//! an `int` argument occupies the low 32 bits of a 64-bit register or an 8-byte stack slot, the
//! callee ignores the rest, so the same bits reach `PMPI_Xxx` as the caller meant. Handles are
//! never interpreted here except the few predefined ones of [`Abi`], chosen at run time, and
//! `MPI_Request`s read from the caller's memory, whose width depends on the ABI too.
//!
//! Bytes: a send counts `count * PMPI_Type_size(datatype)` once the call has succeeded (so an
//! invalid datatype is never passed to `PMPI_Type_size` by us); a receive counts what arrived,
//! `PMPI_Get_count(status, MPI_BYTE)`, with a local status when the caller ignored it. Receives
//! posted by `MPI_Irecv` are remembered per thread and counted (under `MPI_Irecv`) when
//! `MPI_Wait`, `MPI_Waitall` or `MPI_Test` completes them on the same thread; completions through
//! other calls (`MPI_Waitany`, `MPI_Testall`, ...) or on another thread are not counted.
//! Collectives count the bytes of the caller's own buffers: what the call reads from its send
//! buffer as sent, what it writes to its receive buffer as received (rooted collectives on an
//! intercommunicator count calls and time only; `MPI_Alltoall`/`MPI_Allgather` multiply by the
//! local group's size).
//!
//! Not seen: calls from Fortran bindings that go straight to `PMPI_*` (not checked for either
//! MPI), MPI functions not listed in [`crate::counters::Func`], and MPI-IO. Only `MPI_*` names
//! this library wraps are exported (no `MPI_Initialized`), so a library probing for MPI with
//! `dlsym` does not take a non-MPI program for an MPI one.

use crate::clock::ticks;
use crate::counters::{
    self, Func, MpiScratch, Slot, IRECV_PROBES, IRECV_SLOTS, MPI_ON, SCRATCH_STATUSES, STATUS_BYTES,
};
use crate::real::{global_symbol, Real};
use crate::{crash, report};
use libc::{c_char, c_int, c_void};
use std::sync::OnceLock;

/// An MPI handle: a pointer (Open MPI) or an `int` in the low 32 bits (MPICH).
pub type H = usize;

const MPI_SUCCESS: c_int = 0;
/// Returned when a wrapper is called in a process without the real function (cannot happen
/// in a program linked with MPI). `MPI_ERR_OTHER` of Open MPI (MPICH's is 15; both are errors).
const ERR_NO_MPI: c_int = 16;

/// Length of the buffer in which rank 0 broadcasts an agreed job id.
const ID_BUF: usize = 128;

/// The handful of ABI facts the wrappers need.
pub struct Abi {
    pub open_mpi: bool,
    pub comm_world: H,
    pub char_type: H,
    pub byte_type: H,
    /// `sizeof(MPI_Status)`: the stride of status arrays.
    pub status_size: usize,
    /// `sizeof(MPI_Request)`: the stride of request arrays.
    pub request_size: usize,
}

static ABI: OnceLock<Abi> = OnceLock::new();

/// Open MPI if its `MPI_COMM_WORLD` object is in the process, otherwise MPICH's ABI (MPICH,
/// Intel MPI, MVAPICH share it).
pub fn abi() -> &'static Abi {
    ABI.get_or_init(|| match global_symbol(c"ompi_mpi_comm_world") {
        Some(world) => Abi {
            open_mpi: true,
            comm_world: world as H,
            char_type: global_symbol(c"ompi_mpi_char").map_or(0, |p| p as H),
            byte_type: global_symbol(c"ompi_mpi_byte").map_or(0, |p| p as H),
            status_size: 24,
            request_size: 8,
        },
        None => Abi {
            open_mpi: false,
            comm_world: 0x4400_0000,
            char_type: 0x4c00_0101,
            byte_type: 0x4c00_010d,
            status_size: 20,
            request_size: 4,
        },
    })
}

/// `PMPI_Xxx` as a typed function pointer, or `None` when the process has no MPI.
macro_rules! pmpi {
    ($sym:expr, fn($($ty:ty),* $(,)?)) => {{
        static REAL: Real = Real::anywhere($sym);
        match REAL.get() {
            // SAFETY: the symbol is the MPI library's PMPI function of this name, whose C
            // prototype (with handles widened to pointer size, see the module's doc) is this.
            Some(p) => Some(unsafe {
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($ty),*) -> c_int>(p)
            }),
            None => None,
        }
    }};
}

/// `MPI_STATUS_IGNORE` / `MPI_STATUSES_IGNORE`: NULL in Open MPI, `(MPI_Status *)1` in MPICH.
#[inline(always)]
fn ignored(status: *mut c_void) -> bool {
    (status as usize) <= 1
}

/// `MPI_IN_PLACE`: `(void *)1` in Open MPI, `(void *)-1` in MPICH; neither is ever a buffer.
#[inline(always)]
fn in_place(buf: *const c_void) -> bool {
    buf as usize == 1 || buf as usize == usize::MAX
}

/// A status to stand in for an ignored one: larger than either ABI's.
#[repr(C, align(8))]
struct LocalStatus([u8; STATUS_BYTES]);

impl LocalStatus {
    fn new() -> LocalStatus {
        LocalStatus([0; STATUS_BYTES])
    }
}

/// `count` elements of `dt`, in bytes (0 when unknown). Only called after the caller's own call
/// succeeded with that datatype.
#[inline]
unsafe fn type_bytes(dt: H, count: c_int) -> u64 {
    if count <= 0 {
        return 0;
    }
    let Some(f) = pmpi!(c"PMPI_Type_size", fn(H, *mut c_int)) else {
        return 0;
    };
    let mut size: c_int = 0;
    // SAFETY: a valid datatype (the call that used it succeeded) and a valid out-pointer.
    if unsafe { f(dt, &mut size) } != MPI_SUCCESS || size <= 0 {
        return 0;
    }
    count as u64 * size as u64
}

/// Bytes a completed receive brought, from its status.
#[inline]
unsafe fn status_bytes(status: *mut c_void) -> u64 {
    let Some(f) = pmpi!(c"PMPI_Get_count", fn(*mut c_void, H, *mut c_int)) else {
        return 0;
    };
    let mut n: c_int = 0;
    // SAFETY: `status` was filled by the MPI call that just completed; MPI_BYTE is predefined.
    if unsafe { f(status, abi().byte_type, &mut n) } != MPI_SUCCESS || n <= 0 {
        return 0;
    }
    n as u64
}

unsafe fn comm_query(comm: H, which: &'static std::ffi::CStr) -> Option<c_int> {
    static RANK: Real = Real::anywhere(c"PMPI_Comm_rank");
    static SIZE: Real = Real::anywhere(c"PMPI_Comm_size");
    static INTER: Real = Real::anywhere(c"PMPI_Comm_test_inter");
    let real = match which.to_bytes() {
        b"rank" => &RANK,
        b"size" => &SIZE,
        _ => &INTER,
    };
    let p = real.get()?;
    // SAFETY: the three functions share the prototype (MPI_Comm, int *) -> int.
    let f = unsafe {
        std::mem::transmute::<*mut c_void, unsafe extern "C" fn(H, *mut c_int) -> c_int>(p)
    };
    let mut v: c_int = 0;
    // SAFETY: a communicator the caller's own successful call used, and a valid out-pointer.
    (unsafe { f(comm, &mut v) } == MPI_SUCCESS).then_some(v)
}

unsafe fn comm_rank(comm: H) -> Option<c_int> {
    // SAFETY: forwarded precondition.
    unsafe { comm_query(comm, c"rank") }
}

unsafe fn comm_size(comm: H) -> u64 {
    // SAFETY: forwarded precondition.
    unsafe { comm_query(comm, c"size") }.map_or(0, |n| n.max(0) as u64)
}

unsafe fn is_inter(comm: H) -> bool {
    // SAFETY: forwarded precondition.
    unsafe { comm_query(comm, c"inter") }.is_none_or(|f| f != 0)
}

/// The request handle at index `i` of `reqs` (an `MPI_Request` array of the ABI's width).
#[inline(always)]
unsafe fn request_at(reqs: *const c_void, i: usize) -> usize {
    if abi().request_size == 8 {
        // SAFETY: the caller's array has at least i + 1 requests.
        unsafe { *(reqs as *const usize).add(i) }
    } else {
        // SAFETY: as above, 4-byte requests.
        unsafe { *(reqs as *const u32).add(i) as usize }
    }
}

impl MpiScratch {
    fn home(h: usize) -> usize {
        h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (usize::BITS - IRECV_SLOTS.trailing_zeros())
    }

    /// Remembers a pending receive; `false` when its neighbourhood is full (then it is not
    /// counted).
    pub fn insert(&mut self, h: usize) -> bool {
        if h == 0 {
            return false;
        }
        let home = Self::home(h);
        for k in 0..IRECV_PROBES {
            let i = (home + k) % IRECV_SLOTS;
            if self.irecv[i] == 0 {
                self.irecv[i] = h;
                self.irecv_live += 1;
                return true;
            }
        }
        false
    }

    /// Forgets `h`; whether it was a pending receive.
    pub fn take(&mut self, h: usize) -> bool {
        if h == 0 || self.irecv_live == 0 {
            return false;
        }
        let home = Self::home(h);
        for k in 0..IRECV_PROBES {
            let i = (home + k) % IRECV_SLOTS;
            if self.irecv[i] == h {
                self.irecv[i] = 0;
                self.irecv_live -= 1;
                return true;
            }
        }
        false
    }
}

/// This thread's scratch, when it counts MPI at all.
#[inline(always)]
fn scratch() -> Option<*mut MpiScratch> {
    counters::my_block().map(|b| b.mpi.get())
}

fn irecv_slot() -> Option<&'static Slot> {
    counters::my_block().map(|b| &b.slots[Func::MpiIrecv as usize])
}

/// Times one call of a wrapped function: `$call` runs the real one; `$after(rc)` returns the
/// (sent, received) bytes once it returned.
macro_rules! timed {
    ($func:expr, $call:expr, $after:expr) => {{
        match counters::enter(&MPI_ON, $func) {
            None => $call,
            Some(slot) => {
                let t0 = ticks();
                let rc: c_int = $call;
                let t1 = ticks();
                let (sent, recv): (u64, u64) = if rc == MPI_SUCCESS { $after } else { (0, 0) };
                slot.record(t1.wrapping_sub(t0), sent, recv);
                rc
            }
        }
    }};
}

// ---------------------------------------------------------------------------------------------
// Start and end

/// After a successful `PMPI_Init[_thread]`: learn the ABI, take the crash signals back from
/// the MPI library (chaining to its handlers), tell the reporter the rank, and agree on a job id
/// when the launcher gave none.
fn after_init() {
    counters::quietly(|| {
        let abi = abi();
        crash::reinstall_after_mpi_init();
        // SAFETY: MPI is initialised and MPI_COMM_WORLD is valid.
        let rank = unsafe { comm_rank(abi.comm_world) };
        // SAFETY: as above.
        let size = unsafe { comm_size(abi.comm_world) };
        if report::needs_job_id() {
            // SAFETY: as above; every rank of the run takes this path (same environment).
            if let Some(id) = unsafe { agree_on_job_id(rank.unwrap_or(0)) } {
                report::set_agreed_job_id(id);
            }
        }
        report::mpi_started(rank.and_then(|r| u32::try_from(r).ok()), size);
    })
}

/// Rank 0 makes an id and broadcasts it to MPI_COMM_WORLD.
unsafe fn agree_on_job_id(rank: c_int) -> Option<String> {
    let bcast = pmpi!(c"PMPI_Bcast", fn(*mut c_void, c_int, H, c_int, H))?;
    let mut buf = [0u8; ID_BUF];
    if rank == 0 {
        let id = report::make_job_id();
        let n = id.len().min(ID_BUF - 1);
        buf[..n].copy_from_slice(&id.as_bytes()[..n]);
    }
    let abi = abi();
    // SAFETY: a buffer of ID_BUF chars on every rank, predefined handles, MPI initialised.
    let rc = unsafe {
        bcast(
            buf.as_mut_ptr() as *mut c_void,
            ID_BUF as c_int,
            abi.char_type,
            0,
            abi.comm_world,
        )
    };
    if rc != MPI_SUCCESS {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(ID_BUF);
    let id = String::from_utf8_lossy(&buf[..end]).into_owned();
    (!id.is_empty()).then_some(id)
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Init(argc: *mut c_int, argv: *mut *mut *mut c_char) -> c_int {
    let Some(f) = pmpi!(c"PMPI_Init", fn(*mut c_int, *mut *mut *mut c_char)) else {
        return ERR_NO_MPI;
    };
    // SAFETY: forwarding the caller's arguments.
    let rc = timed!(Func::MpiInit, unsafe { f(argc, argv) }, (0, 0));
    if rc == MPI_SUCCESS {
        after_init();
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Init_thread(
    argc: *mut c_int,
    argv: *mut *mut *mut c_char,
    required: c_int,
    provided: *mut c_int,
) -> c_int {
    let Some(f) = pmpi!(
        c"PMPI_Init_thread",
        fn(*mut c_int, *mut *mut *mut c_char, c_int, *mut c_int)
    ) else {
        return ERR_NO_MPI;
    };
    // SAFETY: forwarding the caller's arguments.
    let rc = timed!(
        Func::MpiInitThread,
        unsafe { f(argc, argv, required, provided) },
        (0, 0)
    );
    if rc == MPI_SUCCESS {
        after_init();
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Finalize() -> c_int {
    let Some(f) = pmpi!(c"PMPI_Finalize", fn()) else {
        return ERR_NO_MPI;
    };
    // SAFETY: no arguments.
    timed!(Func::MpiFinalize, unsafe { f() }, (0, 0))
}

/// Tells the agent how the rank ends before the real `MPI_Abort` takes the job down.
#[no_mangle]
pub unsafe extern "C" fn MPI_Abort(comm: H, errorcode: c_int) -> c_int {
    let Some(f) = pmpi!(c"PMPI_Abort", fn(H, c_int)) else {
        return ERR_NO_MPI;
    };
    if let Some(slot) = counters::enter(&MPI_ON, Func::MpiAbort) {
        slot.record(0, 0, 0);
    }
    report::aborted(format!("MPI_Abort(errorcode={errorcode})"));
    // SAFETY: forwarding the caller's arguments.
    unsafe { f(comm, errorcode) }
}

// ---------------------------------------------------------------------------------------------
// Point to point

#[no_mangle]
pub unsafe extern "C" fn MPI_Send(
    buf: *const c_void,
    count: c_int,
    dt: H,
    dest: c_int,
    tag: c_int,
    comm: H,
) -> c_int {
    let Some(f) = pmpi!(c"PMPI_Send", fn(*const c_void, c_int, H, c_int, c_int, H)) else {
        return ERR_NO_MPI;
    };
    // SAFETY: forwarding the caller's arguments; the datatype is valid once the call succeeded.
    timed!(
        Func::MpiSend,
        unsafe { f(buf, count, dt, dest, tag, comm) },
        (unsafe { type_bytes(dt, count) }, 0)
    )
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Ssend(
    buf: *const c_void,
    count: c_int,
    dt: H,
    dest: c_int,
    tag: c_int,
    comm: H,
) -> c_int {
    let Some(f) = pmpi!(c"PMPI_Ssend", fn(*const c_void, c_int, H, c_int, c_int, H)) else {
        return ERR_NO_MPI;
    };
    // SAFETY: as in MPI_Send.
    timed!(
        Func::MpiSsend,
        unsafe { f(buf, count, dt, dest, tag, comm) },
        (unsafe { type_bytes(dt, count) }, 0)
    )
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Recv(
    buf: *mut c_void,
    count: c_int,
    dt: H,
    source: c_int,
    tag: c_int,
    comm: H,
    status: *mut c_void,
) -> c_int {
    let Some(f) = pmpi!(
        c"PMPI_Recv",
        fn(*mut c_void, c_int, H, c_int, c_int, H, *mut c_void)
    ) else {
        return ERR_NO_MPI;
    };
    let mut local = LocalStatus::new();
    let st = if ignored(status) {
        local.0.as_mut_ptr() as *mut c_void
    } else {
        status
    };
    // SAFETY: forwarding the caller's arguments, with a status that is valid either way.
    timed!(
        Func::MpiRecv,
        unsafe { f(buf, count, dt, source, tag, comm, st) },
        (0, unsafe { status_bytes(st) })
    )
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Isend(
    buf: *const c_void,
    count: c_int,
    dt: H,
    dest: c_int,
    tag: c_int,
    comm: H,
    req: *mut c_void,
) -> c_int {
    let Some(f) = pmpi!(
        c"PMPI_Isend",
        fn(*const c_void, c_int, H, c_int, c_int, H, *mut c_void)
    ) else {
        return ERR_NO_MPI;
    };
    // SAFETY: forwarding the caller's arguments.
    timed!(
        Func::MpiIsend,
        unsafe { f(buf, count, dt, dest, tag, comm, req) },
        {
            // A handle reused from a receive that completed unseen is not a receive now.
            if let Some(s) = scratch() {
                // SAFETY: this thread's own scratch; `req` was just written by MPI.
                unsafe { (*s).take(request_at(req, 0)) };
            }
            // SAFETY: the call succeeded with this datatype.
            (unsafe { type_bytes(dt, count) }, 0)
        }
    )
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Irecv(
    buf: *mut c_void,
    count: c_int,
    dt: H,
    source: c_int,
    tag: c_int,
    comm: H,
    req: *mut c_void,
) -> c_int {
    let Some(f) = pmpi!(
        c"PMPI_Irecv",
        fn(*mut c_void, c_int, H, c_int, c_int, H, *mut c_void)
    ) else {
        return ERR_NO_MPI;
    };
    // SAFETY: forwarding the caller's arguments.
    timed!(
        Func::MpiIrecv,
        unsafe { f(buf, count, dt, source, tag, comm, req) },
        {
            if let Some(s) = scratch() {
                // SAFETY: this thread's own scratch; `req` was just written by MPI.
                unsafe { (*s).insert(request_at(req, 0)) };
            }
            (0, 0)
        }
    )
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Wait(req: *mut c_void, status: *mut c_void) -> c_int {
    let Some(f) = pmpi!(c"PMPI_Wait", fn(*mut c_void, *mut c_void)) else {
        return ERR_NO_MPI;
    };
    let mut local = LocalStatus::new();
    let mut st = status;
    let mut tracked = false;
    if MPI_ON.load(std::sync::atomic::Ordering::Relaxed) && !req.is_null() {
        if let Some(s) = scratch() {
            // SAFETY: this thread's own scratch; the caller's request is readable.
            tracked = unsafe { (*s).irecv_live > 0 && (*s).take(request_at(req, 0)) };
            if tracked && ignored(status) {
                st = local.0.as_mut_ptr() as *mut c_void;
            }
        }
    }
    // SAFETY: forwarding the caller's arguments, with a status that is valid either way.
    let rc = timed!(Func::MpiWait, unsafe { f(req, st) }, (0, 0));
    if tracked && rc == MPI_SUCCESS {
        if let Some(slot) = irecv_slot() {
            // SAFETY: the receive just completed into `st`.
            slot.add_recv(unsafe { status_bytes(st) });
        }
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Test(
    req: *mut c_void,
    flag: *mut c_int,
    status: *mut c_void,
) -> c_int {
    let Some(f) = pmpi!(c"PMPI_Test", fn(*mut c_void, *mut c_int, *mut c_void)) else {
        return ERR_NO_MPI;
    };
    let mut local = LocalStatus::new();
    let mut st = status;
    let mut handle = 0;
    if MPI_ON.load(std::sync::atomic::Ordering::Relaxed) && !req.is_null() {
        if let Some(s) = scratch() {
            // SAFETY: this thread's own scratch; the caller's request is readable.
            if unsafe { (*s).irecv_live } > 0 {
                // SAFETY: as above.
                handle = unsafe { request_at(req, 0) };
                if ignored(status) {
                    st = local.0.as_mut_ptr() as *mut c_void;
                }
            }
        }
    }
    // SAFETY: forwarding the caller's arguments, with a status that is valid either way.
    let rc = timed!(Func::MpiTest, unsafe { f(req, flag, st) }, (0, 0));
    // SAFETY: `flag` is the caller's out-pointer, written by the call.
    if handle != 0 && rc == MPI_SUCCESS && !flag.is_null() && unsafe { *flag } != 0 {
        if let Some(s) = scratch() {
            // SAFETY: this thread's own scratch.
            if unsafe { (*s).take(handle) } {
                if let Some(slot) = irecv_slot() {
                    // SAFETY: the receive just completed into `st`.
                    slot.add_recv(unsafe { status_bytes(st) });
                }
            }
        }
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Waitall(
    count: c_int,
    reqs: *mut c_void,
    statuses: *mut c_void,
) -> c_int {
    let Some(f) = pmpi!(c"PMPI_Waitall", fn(c_int, *mut c_void, *mut c_void)) else {
        return ERR_NO_MPI;
    };
    let mut st = statuses;
    let mut ntracked = 0usize;
    let s = scratch();
    if let (Some(s), true) = (s, MPI_ON.load(std::sync::atomic::Ordering::Relaxed)) {
        // SAFETY: this thread's own scratch, and the caller's `count` requests.
        unsafe {
            if (*s).irecv_live > 0 && count > 0 && !reqs.is_null() {
                let n = count as usize;
                let stand_in = ignored(statuses);
                for i in 0..n {
                    let tracked = (*s).take(request_at(reqs, i));
                    // Without room for stand-in statuses the receive goes uncounted.
                    if tracked
                        && (!stand_in || n <= SCRATCH_STATUSES)
                        && ntracked < SCRATCH_STATUSES
                    {
                        (*s).tracked[ntracked] = i as u32;
                        ntracked += 1;
                    }
                }
                if stand_in && ntracked > 0 {
                    st = (*s).statuses.as_mut_ptr() as *mut c_void;
                }
            }
        }
    }
    // SAFETY: forwarding the caller's arguments, with statuses that are valid either way.
    let rc = timed!(Func::MpiWaitall, unsafe { f(count, reqs, st) }, (0, 0));
    if ntracked > 0 && rc == MPI_SUCCESS {
        if let (Some(s), Some(slot)) = (s, irecv_slot()) {
            let stride = abi().status_size;
            let mut bytes = 0u64;
            for k in 0..ntracked {
                // SAFETY: this thread's scratch; status i lies in the array the call filled.
                unsafe {
                    let i = (*s).tracked[k] as usize;
                    bytes += status_bytes((st as *mut u8).add(i * stride) as *mut c_void);
                }
            }
            slot.add_recv(bytes);
        }
    }
    rc
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Sendrecv(
    sbuf: *const c_void,
    scount: c_int,
    stype: H,
    dest: c_int,
    stag: c_int,
    rbuf: *mut c_void,
    rcount: c_int,
    rtype: H,
    source: c_int,
    rtag: c_int,
    comm: H,
    status: *mut c_void,
) -> c_int {
    let Some(f) = pmpi!(
        c"PMPI_Sendrecv",
        fn(
            *const c_void,
            c_int,
            H,
            c_int,
            c_int,
            *mut c_void,
            c_int,
            H,
            c_int,
            c_int,
            H,
            *mut c_void,
        )
    ) else {
        return ERR_NO_MPI;
    };
    let mut local = LocalStatus::new();
    let st = if ignored(status) {
        local.0.as_mut_ptr() as *mut c_void
    } else {
        status
    };
    // SAFETY: forwarding the caller's arguments, with a status that is valid either way.
    timed!(
        Func::MpiSendrecv,
        unsafe {
            f(
                sbuf, scount, stype, dest, stag, rbuf, rcount, rtype, source, rtag, comm, st,
            )
        },
        (unsafe { type_bytes(stype, scount) }, unsafe {
            status_bytes(st)
        })
    )
}

// ---------------------------------------------------------------------------------------------
// Collectives

#[no_mangle]
pub unsafe extern "C" fn MPI_Barrier(comm: H) -> c_int {
    let Some(f) = pmpi!(c"PMPI_Barrier", fn(H)) else {
        return ERR_NO_MPI;
    };
    // SAFETY: forwarding the caller's argument.
    timed!(Func::MpiBarrier, unsafe { f(comm) }, (0, 0))
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Bcast(
    buf: *mut c_void,
    count: c_int,
    dt: H,
    root: c_int,
    comm: H,
) -> c_int {
    let Some(f) = pmpi!(c"PMPI_Bcast", fn(*mut c_void, c_int, H, c_int, H)) else {
        return ERR_NO_MPI;
    };
    // SAFETY: forwarding the caller's arguments; the datatype is significant on every rank.
    timed!(Func::MpiBcast, unsafe { f(buf, count, dt, root, comm) }, {
        let bytes = unsafe { type_bytes(dt, count) };
        if unsafe { comm_rank(comm) } == Some(root) {
            (bytes, 0)
        } else {
            (0, bytes)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Reduce(
    sbuf: *const c_void,
    rbuf: *mut c_void,
    count: c_int,
    dt: H,
    op: H,
    root: c_int,
    comm: H,
) -> c_int {
    let Some(f) = pmpi!(
        c"PMPI_Reduce",
        fn(*const c_void, *mut c_void, c_int, H, H, c_int, H)
    ) else {
        return ERR_NO_MPI;
    };
    // SAFETY: forwarding the caller's arguments; the datatype is significant on every rank.
    timed!(
        Func::MpiReduce,
        unsafe { f(sbuf, rbuf, count, dt, op, root, comm) },
        {
            let bytes = unsafe { type_bytes(dt, count) };
            let at_root = unsafe { comm_rank(comm) } == Some(root);
            (bytes, if at_root { bytes } else { 0 })
        }
    )
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Allreduce(
    sbuf: *const c_void,
    rbuf: *mut c_void,
    count: c_int,
    dt: H,
    op: H,
    comm: H,
) -> c_int {
    let Some(f) = pmpi!(
        c"PMPI_Allreduce",
        fn(*const c_void, *mut c_void, c_int, H, H, H)
    ) else {
        return ERR_NO_MPI;
    };
    // SAFETY: forwarding the caller's arguments.
    timed!(
        Func::MpiAllreduce,
        unsafe { f(sbuf, rbuf, count, dt, op, comm) },
        {
            let bytes = unsafe { type_bytes(dt, count) };
            (bytes, bytes)
        }
    )
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Alltoall(
    sbuf: *const c_void,
    scount: c_int,
    stype: H,
    rbuf: *mut c_void,
    rcount: c_int,
    rtype: H,
    comm: H,
) -> c_int {
    let Some(f) = pmpi!(
        c"PMPI_Alltoall",
        fn(*const c_void, c_int, H, *mut c_void, c_int, H, H)
    ) else {
        return ERR_NO_MPI;
    };
    // SAFETY: forwarding the caller's arguments; with MPI_IN_PLACE the send arguments are
    // ignored (never passed to PMPI_Type_size).
    timed!(
        Func::MpiAlltoall,
        unsafe { f(sbuf, scount, stype, rbuf, rcount, rtype, comm) },
        {
            let n = unsafe { comm_size(comm) };
            let recv = unsafe { type_bytes(rtype, rcount) } * n;
            let sent = if in_place(sbuf) {
                recv
            } else {
                (unsafe { type_bytes(stype, scount) }) * n
            };
            (sent, recv)
        }
    )
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Allgather(
    sbuf: *const c_void,
    scount: c_int,
    stype: H,
    rbuf: *mut c_void,
    rcount: c_int,
    rtype: H,
    comm: H,
) -> c_int {
    let Some(f) = pmpi!(
        c"PMPI_Allgather",
        fn(*const c_void, c_int, H, *mut c_void, c_int, H, H)
    ) else {
        return ERR_NO_MPI;
    };
    // SAFETY: as in MPI_Alltoall.
    timed!(
        Func::MpiAllgather,
        unsafe { f(sbuf, scount, stype, rbuf, rcount, rtype, comm) },
        {
            let one = unsafe { type_bytes(rtype, rcount) };
            let sent = if in_place(sbuf) {
                one
            } else {
                unsafe { type_bytes(stype, scount) }
            };
            (sent, one * unsafe { comm_size(comm) })
        }
    )
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Gather(
    sbuf: *const c_void,
    scount: c_int,
    stype: H,
    rbuf: *mut c_void,
    rcount: c_int,
    rtype: H,
    root: c_int,
    comm: H,
) -> c_int {
    let Some(f) = pmpi!(
        c"PMPI_Gather",
        fn(*const c_void, c_int, H, *mut c_void, c_int, H, c_int, H)
    ) else {
        return ERR_NO_MPI;
    };
    // SAFETY: forwarding the caller's arguments. The receive arguments are significant at the
    // root only, so they are read only there; intercommunicators (MPI_ROOT, MPI_PROC_NULL, roots
    // in the other group) count calls and time only.
    timed!(
        Func::MpiGather,
        unsafe { f(sbuf, scount, stype, rbuf, rcount, rtype, root, comm) },
        {
            if root < 0 || unsafe { is_inter(comm) } {
                (0, 0)
            } else if unsafe { comm_rank(comm) } == Some(root) {
                let one = unsafe { type_bytes(rtype, rcount) };
                let sent = if in_place(sbuf) {
                    one
                } else {
                    unsafe { type_bytes(stype, scount) }
                };
                (sent, one * unsafe { comm_size(comm) })
            } else {
                (unsafe { type_bytes(stype, scount) }, 0)
            }
        }
    )
}

#[no_mangle]
pub unsafe extern "C" fn MPI_Scatter(
    sbuf: *const c_void,
    scount: c_int,
    stype: H,
    rbuf: *mut c_void,
    rcount: c_int,
    rtype: H,
    root: c_int,
    comm: H,
) -> c_int {
    let Some(f) = pmpi!(
        c"PMPI_Scatter",
        fn(*const c_void, c_int, H, *mut c_void, c_int, H, c_int, H)
    ) else {
        return ERR_NO_MPI;
    };
    // SAFETY: as in MPI_Gather, with the send arguments significant at the root only.
    timed!(
        Func::MpiScatter,
        unsafe { f(sbuf, scount, stype, rbuf, rcount, rtype, root, comm) },
        {
            if root < 0 || unsafe { is_inter(comm) } {
                (0, 0)
            } else if unsafe { comm_rank(comm) } == Some(root) {
                let one = unsafe { type_bytes(stype, scount) };
                let recv = if in_place(rbuf) {
                    one
                } else {
                    unsafe { type_bytes(rtype, rcount) }
                };
                (one * unsafe { comm_size(comm) }, recv)
            } else {
                (0, unsafe { type_bytes(rtype, rcount) })
            }
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn empty_scratch() -> Box<MpiScratch> {
        Box::new(MpiScratch {
            irecv: [0; IRECV_SLOTS],
            irecv_live: 0,
            statuses: [0; SCRATCH_STATUSES * 3],
            tracked: [0; SCRATCH_STATUSES],
        })
    }

    #[test]
    fn pending_receives_are_found_once_and_only_once() {
        let mut s = empty_scratch();
        // MPICH-like handles (consecutive ints) and Open MPI-like ones (aligned pointers).
        let handles: Vec<usize> = (0..200)
            .map(|i| 0xac00_0000 + i)
            .chain((0..200).map(|i| 0x5555_0000_1000 + i * 0x180))
            .collect();
        let inserted: Vec<usize> = handles.iter().copied().filter(|&h| s.insert(h)).collect();
        assert!(inserted.len() > 380, "only {} of 400 fit", inserted.len());
        assert_eq!(s.irecv_live, inserted.len());
        assert!(!s.take(0xdead_beef));
        for h in &inserted {
            assert!(s.take(*h), "{h:#x} lost");
            assert!(!s.take(*h), "{h:#x} found twice");
        }
        assert_eq!(s.irecv_live, 0);
        assert!(!s.insert(0), "0 is the empty slot, never a request");
    }

    #[test]
    fn ignore_and_in_place_markers_of_both_abis_are_recognised() {
        assert!(ignored(std::ptr::null_mut()));
        assert!(ignored(std::ptr::without_provenance_mut(1)));
        assert!(!ignored(std::ptr::without_provenance_mut(0x1000)));
        assert!(in_place(std::ptr::without_provenance(1)));
        assert!(in_place(std::ptr::without_provenance(usize::MAX)));
        assert!(!in_place(std::ptr::null()));
        const { assert!(STATUS_BYTES >= 24) };
    }
}

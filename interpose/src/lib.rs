//! `libbanyan_interpose.so`: what `banyan-run` preloads into every rank of a job to measure it.
//!
//! The library counts, per function, the calls, seconds and bytes of MPI (through the PMPI
//! profiling interface, [`mpi`]) and of POSIX I/O ([`io`]), the process's resource use at the
//! end (`getrusage`), and whatever the program reports through a small C API ([`capi`],
//! `include/banyan.h`); a background thread sends it to the node's agent as deltas
//! ([`report`], the protocol of [`banyan_protocol::ingest`]). One build serves Open MPI and
//! MPICH: no MPI header is used, no MPI symbol is left undefined, and a program without MPI
//! loads it and runs as before.
//!
//! It is not a tracer: it keeps no events, only sums, and the hot path of a counted call is a
//! thread-local lookup, two `rdtsc` and a few relaxed stores into this thread's own counter
//! block ([`counters`]): no lock, no allocation, no system call. It never disturbs the program:
//! without the agent, or refused by it, it prints one line and goes quiet; every wait is bounded;
//! no panic crosses an `extern "C"` boundary. Without `banyan-run`'s environment it forwards
//! every call and reports nothing.
//!
//! The types that matter: [`counters::Block`] (one thread's counters), [`report::Config`] (what
//! `banyan-run` told the process), and the wrappers themselves, exported `#[no_mangle]`.

// The exported functions stand for C functions of the same names (libc's, MPI's, banyan.h's) and
// have exactly their safety contracts; repeating those contracts on each would say nothing.
#![allow(clippy::missing_safety_doc)]

pub mod capi;
pub mod clock;
pub mod counters;
pub mod crash;
#[path = "envnames.rs"]
pub mod envnames;
pub mod exec;
pub mod io;
pub mod mpi;
pub mod real;
pub mod report;

/// Runs when the library is loaded, before the program's `main`.
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

extern "C" fn init() {
    let _ = std::panic::catch_unwind(report::init);
}

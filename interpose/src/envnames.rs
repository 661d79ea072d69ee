//! The environment `banyan-run` hands to `libbanyan_interpose.so`.
//!
//! This file is compiled into both the library and the `banyan-run` binary (through `#[path]`), so
//! the two cannot disagree on a name. Every variable is a plain string; numbers are decimal.

/// The agent's socket: `@name` for an abstract UNIX socket, otherwise a filesystem path. Also read
/// by `banyan-run` as the default of `-u`.
pub const SOCKET: &str = "BANYAN_SOCKET";
/// The groups to count, comma-separated (`mpi,io,proc`). Set only by `banyan-run`: without it the
/// library stays passive (it forwards every call and reports nothing), so a stray `LD_PRELOAD`
/// measures nothing by accident.
pub const EXPORTERS: &str = "BANYAN_EXPORTERS";
/// The job id; empty when the launcher gave none (MPICH's Hydra): the ranks then agree on one in
/// `MPI_Init`.
pub const JOB_ID: &str = "BANYAN_JOB_ID";
/// The id a process uses when the job id is empty and it never calls `MPI_Init` (a non-MPI
/// program under Hydra): `mpich-<host>-<pid of the Hydra proxy>`, shared by the node's ranks.
pub const JOB_ID_FALLBACK: &str = "BANYAN_JOB_ID_FALLBACK";
/// Ranks the launcher started; absent when unknown.
pub const JOB_SIZE: &str = "BANYAN_JOB_SIZE";
/// This rank's number; absent when unknown (then `MPI_Init` tells, or 0).
pub const RANK: &str = "BANYAN_RANK";
/// The job's nodes (a Slurm node set, or this host's name).
pub const NODELIST: &str = "BANYAN_NODELIST";
pub const PARTITION: &str = "BANYAN_PARTITION";
pub const CLUSTER: &str = "BANYAN_CLUSTER";
/// The working directory `banyan-run` was started in.
pub const RUN_DIR: &str = "BANYAN_RUN_DIR";
/// The wrapped command line, words joined by spaces.
pub const COMMAND: &str = "BANYAN_COMMAND";
/// Unix seconds at which `banyan-run` started.
pub const START_TIME: &str = "BANYAN_START_TIME";
/// The pid of `banyan-run`. Only its direct child (the wrapped command, whatever it execs into)
/// prints the one-line notices (no agent, refused), so a shell script does not print one per
/// process it starts.
pub const LAUNCHER_PID: &str = "BANYAN_LAUNCHER_PID";
/// Set by the library itself across `execve`: `<pid>:<fd>:<period_ms>`, the open stream to the
/// agent that the new program image takes over. Removed from the environment at once.
pub const LINK: &str = "BANYAN_LINK";
/// Where `banyan-run` finds the library when it is not next to the binary.
pub const INTERPOSE_LIB: &str = "BANYAN_INTERPOSE_LIB";

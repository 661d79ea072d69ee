//! `banyan-agent` is the daemon that runs on every node of the cluster: it enrols with the root,
//! takes the place in the reduction tree that the root gives it, samples its node once per wave,
//! merges its children's reports into its own and sends one report up, and runs the commands that
//! come down. It also scrapes the Prometheus exporters an operator joins to its node ([`scrape`]) and
//! gathers the metrics of the job ranks running on it ([`ingest`], [`jobs`]). [`vm`] runs QEMU
//! guests on the node (not wired to the tree yet).
//!
//! The tree logic is [`tree::Node`], a deterministic state machine with no I/O, which the root and
//! the simulator reuse. The async shell around it ([`shell`]) only moves bytes and time in and out.
//! This crate does not serve HTTP and does not decide placement: that is the root's job.

pub mod actions;
pub mod alarm;
pub mod bmc;
pub mod collect;
pub mod config;
pub mod consoles;
pub mod enrol;
pub mod grants;
pub mod incarnation;
pub mod ingest;
/// The node's inventory (hardware, system, packages, mounts, watched files) read under a root path.
pub mod inventory;
pub mod jobs;
pub mod orders;
pub mod process;
pub mod sampler;
pub mod scrape;
pub mod shell;
pub mod transport;
pub mod tree;
pub mod vm;

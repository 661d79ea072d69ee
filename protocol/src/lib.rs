//! `banyan-protocol` is the vocabulary every banyan program shares: the wire messages of the mesh and
//! their length-prefixed frame codec, what a job's ranks tell their agent (`ingest`) and how a job's
//! series ride in metric sets (`job`), the metric model with its merge rules, node-set expressions as
//! ClusterShell and pdsh write them, human durations, exporter addresses, and the TLS identities of the cluster (CA, join
//! token, node certificates, rustls configurations).
//!
//! It is deliberately pure: no sockets, no async runtime, no clock. Everything here is deterministic
//! and tested exhaustively, so the agent and the root can trust it and the simulator can run it at
//! 100,000 nodes. The types that matter most are [`wire::Msg`] (what travels on a link),
//! [`metric::MetricSet`] (what reduces up the tree) and [`nodeset::NodeSet`] (how operators name nodes).

pub mod action;
pub mod console;
pub mod duration;
pub mod exposition;
pub mod frame;
pub mod groups;
pub mod identity;
pub mod ingest;
/// A node's inventory (hardware, packages, watched files) and drift between nodes.
pub mod inventory;
pub mod job;
pub mod metric;
pub mod nodeset;
pub mod seal;
pub mod target;
pub mod wire;

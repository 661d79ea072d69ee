//! banyan-tests: integration tests and the simulator; this library holds the harnesses the tests share.

pub mod bmc;
pub mod browser;
pub mod cluster;
pub mod guest;
pub mod mpi;
pub mod openstack;
pub mod procstat;
pub mod sim;
pub mod slurm;
pub mod sshd;
pub mod support;
pub mod testnet;

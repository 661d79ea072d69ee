//! `banyan-root` is the top of the tree: the enrolment and placement authority, the last step of
//! the reduction, and the HTTP API that operators and the web UI read (the operator CLI `banyan`,
//! in `banyan-cli`, is a client of that API).
//!
//! The tree logic is deterministic: [`core::RootCore`] joins the top [`banyan_agent::tree::Node`]
//! with the [`placement::Placement`] authority. This crate does not run actions on nodes; agents do.

pub mod actions;
pub mod alarms;
pub mod audit;
pub mod bmcconf;
pub mod bmcgateway;
pub mod catalog;
pub mod console;
pub mod core;
pub mod daemon;
pub mod departures;
pub mod groups;
pub mod guest_console;
pub mod guesttokens;
pub mod http;
pub mod http_actions;
pub mod hv;
pub mod inventory;
pub mod jobs;
pub mod openstack;
pub mod placement;
pub mod power;
pub mod registry;
pub mod state;
pub mod tokens;

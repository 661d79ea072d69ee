//! `banyan-cli` is the operator CLI `banyan`: a client of the root's HTTP API that renders its
//! answers for people (tables, trees, outputs grouped as `clubak -b` groups them, progress) and
//! passes them through for scripts (`--json`).
//!
//! It links no daemon code: it knows the root only by the JSON of its routes, and the shared
//! vocabulary of [`banyan_protocol`] (node sets, action tasks and results). [`app::run`] carries
//! out a command line; [`api::Client`] is how it talks to the root; [`actions::render_action`]
//! and [`grouped`] show an action's results; [`nodeset`] works offline.

pub mod actions;
pub mod admin;
pub mod api;
pub mod app;
pub mod commands;
pub mod config;
pub mod console;
pub mod escape;
pub mod follow;
pub mod grouped;
pub mod hv;
pub mod inventory;
pub mod monitor;
pub mod nodes;
pub mod nodeset;
pub mod table;
pub mod times;
pub mod units;
pub mod vm;

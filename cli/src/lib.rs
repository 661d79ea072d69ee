//! `banyan-cli` is the operator CLI `banyan`: a client of the root's HTTP API that renders its
//! answers for people (tables, trees) and passes them through for scripts (`--json`).
//!
//! It links no daemon code: it knows the root only by the JSON of its routes, and the shared
//! vocabulary of [`banyan_protocol`] (node sets). [`api::Client`] is how it talks to the root;
//! [`nodeset`] works offline.

pub mod api;
pub mod nodeset;

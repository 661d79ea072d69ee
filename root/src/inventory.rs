//! The nodes' inventories and their drift, asked through the tree: `GET /inventory` and
//! `GET /drift`.
//!
//! Nothing is kept here: every request asks the nodes ([`Query::Inventory`]), which collect
//! their inventory when asked. Drift moves hashes first: every node sends only its digests, the
//! root groups the nodes by the facet's digest ([`inventory::group`]), then asks the whole
//! inventory of one node per group (its first name) to tell what differs from the majority. So
//! a cluster of identical nodes costs a few hundred bytes per node, and each distinct profile
//! one inventory.
//!
//! Both routes need a valid token (of any role): package versions and firmware are what an
//! attacker looks for. What is not here: saving bills of materials.

use crate::http::{bad_query, core_stopped, snapshot_of, Api, ApiError};
use crate::http_actions::{authenticate, resolve, Peer};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use banyan_protocol::inventory::{self, Digests, Facet, Inventory};
use banyan_protocol::nodeset::NodeSet;
use banyan_protocol::wire::{self, Answer, CommandBody, InventoryAnswer};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Most nodes whose whole inventories one `GET /inventory` returns (each may be a few hundred
/// KiB with its package list); drift has no such bound, since it moves digests.
pub const MAX_FULL: usize = 1024;

pub fn routes() -> Router<Api> {
    Router::new()
        .route("/inventory", get(inventory_route))
        .route("/drift", get(drift_route))
}

#[derive(Deserialize)]
struct InventoryQuery {
    nodes: String,
}

#[derive(Deserialize)]
struct DriftQuery {
    nodes: String,
    by: Option<String>,
}

fn bad(detail: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad request", detail)
}

/// What the nodes answered, and who did not.
struct Asked {
    answers: BTreeMap<String, InventoryAnswer>,
    /// Nodes that are down or did not answer in time.
    unreachable: Vec<String>,
    /// Nodes that answered with an error (or something else than an inventory).
    failed: BTreeMap<String, String>,
}

/// Resolves `expr` to nodes of this cluster (400 for an unknown name, as actions do).
async fn targets(api: &Api, expr: &str) -> Result<NodeSet, ApiError> {
    let targets = resolve(api, expr).map_err(bad)?;
    if targets.is_empty() {
        return Err(bad(format!("{expr:?} names no node")));
    }
    let snap = snapshot_of(api).await?;
    let known = NodeSet::from_names(
        snap.nodes
            .iter()
            .filter(|n| n.name != snap.root)
            .map(|n| n.name.as_str()),
    );
    let unknown = targets.difference(&known);
    if !unknown.is_empty() {
        return Err(bad(format!(
            "not in this cluster: {} ({} of {} nodes); check the node set",
            unknown.fold(),
            unknown.len(),
            targets.len()
        )));
    }
    Ok(targets)
}

async fn ask(api: &Api, nodes: Vec<String>, full: bool) -> Result<Asked, ApiError> {
    let report = api
        .root
        .command(nodes, CommandBody::Query(wire::Query::Inventory { full }))
        .await
        .ok_or_else(core_stopped)?;
    let mut asked = Asked {
        answers: BTreeMap::new(),
        unreachable: report.unreachable.into_iter().collect(),
        failed: BTreeMap::new(),
    };
    for (node, (answer, _)) in report.answers {
        match answer {
            Ok(Answer::Inventory(a)) => {
                asked.answers.insert(node, *a);
            }
            Ok(other) => {
                asked
                    .failed
                    .insert(node, format!("answered {other:?}, not an inventory"));
            }
            Err(e) => {
                asked.failed.insert(node, e);
            }
        }
    }
    Ok(asked)
}

/// `GET /inventory?nodes=SET`: each node's whole inventory and digests, asked now.
async fn inventory_route(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    q: Result<Query<InventoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&api, &headers, &peer, "inventory.read")?;
    let Query(q) = q.map_err(bad_query)?;
    let targets = targets(&api, &q.nodes).await?;
    if targets.len() > MAX_FULL {
        return Err(bad(format!(
            "{} nodes: at most {MAX_FULL} whole inventories per request; ask for fewer, or \
             compare them with /drift",
            targets.len()
        )));
    }
    let asked = ask(&api, targets.iter().map(String::from).collect(), true).await?;
    let nodes: BTreeMap<&String, Value> = asked
        .answers
        .iter()
        .map(|(n, a)| (n, json!({"digests": a.digests, "inventory": a.full})))
        .collect();
    Ok(Json(json!({
        "nodes": nodes,
        "unreachable": asked.unreachable,
        "failed": asked.failed,
    })))
}

/// `GET /drift?nodes=SET[&by=packages|hardware|files|all]`: the nodes grouped by profile, the
/// majority first, and what each other group has that the majority has not.
async fn drift_route(
    State(api): State<Api>,
    Peer(peer): Peer,
    headers: HeaderMap,
    q: Result<Query<DriftQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    authenticate(&api, &headers, &peer, "drift.read")?;
    let Query(q) = q.map_err(bad_query)?;
    let facet: Facet = match q.by.as_deref() {
        None | Some("") => Facet::All,
        Some(by) => by
            .parse()
            .map_err(|e: inventory::InventoryError| bad(e.to_string()))?,
    };
    let targets = targets(&api, &q.nodes).await?;
    let asked = ask(&api, targets.iter().map(String::from).collect(), false).await?;
    let digests: BTreeMap<String, Digests> = asked
        .answers
        .into_iter()
        .map(|(n, a)| (n, a.digests))
        .collect();
    let groups = inventory::group(&digests, facet);
    let mut unreachable = asked.unreachable;
    let mut failed = asked.failed;
    // One inventory per group tells its differences; none is needed when all agree.
    let mut inventories: BTreeMap<String, Inventory> = BTreeMap::new();
    if groups.len() > 1 {
        let firsts: Vec<String> = groups.iter().map(|(_, names)| names[0].clone()).collect();
        let second = ask(&api, firsts, true).await?;
        for (node, answer) in second.answers {
            if let Some(full) = answer.full {
                // A node whose profile changed between the two questions would compare wrongly.
                if digests.get(&node) == Some(&full.digests()) {
                    inventories.insert(node, full);
                } else {
                    failed.insert(node, "its inventory changed while asked; ask again".into());
                }
            }
        }
        unreachable.extend(second.unreachable);
        failed.extend(second.failed);
    }
    let drift = inventory::drift_of(groups, &inventories, facet);
    unreachable.sort();
    unreachable.dedup();
    Ok(Json(json!({
        "facet": drift.facet,
        "groups": drift.groups,
        "unknown": drift.unknown,
        "unreachable": unreachable,
        "failed": failed,
    })))
}

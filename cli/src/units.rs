//! Results of `banyan service`: one row per (unit, state) with the nodes in that state folded,
//! units in the order the operator named them, and in each unit the largest group first.
//!
//! ```text
//! UNIT         STATE  NODES     N DETAIL
//! nova-compute active cn[1-3,5] 4
//! nova-compute failed cn4       1 Job for nova-compute.service failed
//! ```
//!
//! DETAIL is shown when every node of the row said the same; targets that gave no unit states
//! (unreachable, refused) are in the table of failures that follows.

use std::collections::BTreeMap;

use banyan_protocol::action::Task;
use banyan_protocol::nodeset::NodeSet;

use crate::actions::{sort_groups, Action};
use crate::escape::one_line;
use crate::table;

/// The rows of one unit: nodes, and their state and common detail.
type UnitRows = Vec<(NodeSet, (&'static str, Option<String>))>;

struct Row {
    nodes: NodeSet,
    /// The detail every node gave, or `None` once two differ.
    detail: Option<String>,
}

/// The table of units, empty when no target reported any.
pub fn render(a: &Action) -> String {
    // (unit, state) -> nodes and their common detail.
    let mut rows: BTreeMap<(String, &'static str), Row> = BTreeMap::new();
    for (name, t) in &a.targets {
        for u in t.result.iter().flat_map(|r| &r.units) {
            let row = rows
                .entry((u.unit.clone(), u.state.as_str()))
                .or_insert_with(|| Row {
                    nodes: NodeSet::new(),
                    detail: Some(u.detail.clone()),
                });
            if row.detail.as_deref() != Some(u.detail.as_str()) && !row.nodes.is_empty() {
                row.detail = None;
            }
            row.nodes.insert(name.clone());
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    // Units as the task names them; any other unit a node reported after them, by name.
    let named: Vec<String> = match a.task() {
        Some(Task::Service(s)) => s.units,
        _ => Vec::new(),
    };
    let rank = |unit: &str| named.iter().position(|u| u == unit).unwrap_or(named.len());
    let mut by_unit: BTreeMap<(usize, String), UnitRows> = BTreeMap::new();
    for ((unit, state), row) in rows {
        by_unit
            .entry((rank(&unit), unit))
            .or_default()
            .push((row.nodes, (state, row.detail)));
    }
    let mut t = table::new(&["UNIT", "STATE", "NODES", "N", "DETAIL"]);
    for ((_, unit), mut groups) in by_unit {
        sort_groups(&mut groups);
        for (nodes, (state, detail)) in groups {
            t.add_row(vec![
                one_line(&unit).into_owned(),
                state.to_string(),
                nodes.fold(),
                nodes.len().to_string(),
                detail.map_or_else(|| "(differs by node)".into(), |d| one_line(&d).into_owned()),
            ]);
        }
    }
    table::align_right(&mut t, 3);
    table::render(&t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::{render_action, Layout, Outcome};
    use serde_json::{json, Value};

    fn service_action(op: &str, for_real: bool, targets: Value) -> Action {
        serde_json::from_value(json!({
            "id": "00000000000000cd", "kind": "service", "who": "ops",
            "task": {"service": {"op": op, "units": ["nova-compute", "libvirtd"]}},
            "nodes": "cn[1-5]", "for_real": for_real, "state": "done", "version": 4,
            "started_ms": 0, "ended_ms": 900, "targets": targets,
        }))
        .unwrap()
    }

    fn units(ok: bool, list: &[(&str, &str, &str)]) -> Value {
        json!({"state": if ok { "ok" } else { "failed" }, "error": null, "result": {
            "ok": ok, "dry_run": false, "summary": if ok { "" } else { "nova-compute failed" },
            "exit": null, "signal": null, "stdout": "", "stderr": "", "truncated": false,
            "units": list.iter().map(|(u, s, d)| json!({"unit": u, "state": s, "detail": d})).collect::<Vec<_>>(),
            "duration_ms": 800}})
    }

    #[test]
    fn rows_fold_nodes_per_unit_and_state() {
        let good = units(
            true,
            &[("nova-compute", "active", ""), ("libvirtd", "active", "")],
        );
        let a = service_action(
            "restart",
            true,
            json!({
                "cn1": good.clone(), "cn2": good.clone(), "cn3": good.clone(), "cn5": good,
                "cn4": units(false, &[("nova-compute", "failed", "exit 1"), ("libvirtd", "active", "")]),
            }),
        );
        assert_eq!(
            render(&a),
            "UNIT         STATE  NODES     N DETAIL\n\
             nova-compute active cn[1-3,5] 4\n\
             nova-compute failed cn4       1 exit 1\n\
             libvirtd     active cn[1-5]   5\n"
        );
        let text = render_action(&a, Layout::Grouped);
        assert!(
            text.contains("cn4   1 failed nova-compute failed"),
            "{text}"
        );
        assert!(text.ends_with("1 of 5 targets failed: cn4\n"), "{text}");
        assert_eq!(Outcome::of(&a).exit_code(), 1);
    }

    #[test]
    fn details_that_differ_are_said_to_differ() {
        let a = service_action(
            "status",
            false,
            json!({
                "cn1": units(true, &[("nova-compute", "inactive", "since 10:00")]),
                "cn2": units(true, &[("nova-compute", "inactive", "since 11:00")]),
            }),
        );
        assert!(render(&a).contains("nova-compute inactive cn[1-2] 2 (differs by node)"));
        // status changes nothing: no dry-run notice even though for_real is false.
        let text = render_action(&a, Layout::Grouped);
        assert!(text.ends_with("All 2 targets succeeded.\n"), "{text}");
    }

    #[test]
    fn a_dry_run_of_a_start_says_nothing_changed() {
        let a = service_action(
            "start",
            false,
            json!({"cn1": units(true, &[("nova-compute", "inactive", "would start nova-compute")])}),
        );
        let text = render_action(&a, Layout::Grouped);
        assert!(text.contains("would start nova-compute"), "{text}");
        assert!(
            text.ends_with("DRY RUN: nothing was changed; add --for-real\n"),
            "{text}"
        );
    }
}

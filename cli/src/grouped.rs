//! Results grouped as `clubak -b` (and `clush -b`) show them: the nodes whose output is identical
//! (stdout, stderr and how the command ended) under one header with their node set folded, the
//! largest group first, then by node set:
//!
//! ```text
//! ---------------
//! cn[1-3,5] (4)
//! ---------------
//! 5.10.0-30-amd64
//! ```
//!
//! A dry run's "output" is each target's summary of what it would do, so identical plans fold the
//! same way. Targets without a result (unreachable, refused, cancelled) have no output here; the
//! table of failures ([`crate::actions::render_failures`]) lists them.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use banyan_protocol::action::NodeResult;
use banyan_protocol::nodeset::NodeSet;

use crate::actions::{sort_groups, Action};
use crate::escape::printable;

const RULE: &str = "---------------";

/// What makes two results "the same output".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Output {
    /// Output text as shown (already ending in a newline when not empty).
    pub text: String,
    pub exit: Option<i32>,
    pub signal: Option<i32>,
}

impl Output {
    pub fn of(r: &NodeResult) -> Output {
        let mut text = String::new();
        if r.dry_run {
            push_line(&mut text, &r.summary);
        } else {
            push_line(&mut text, &r.stdout);
            push_line(&mut text, &r.stderr);
            if r.truncated {
                text.push_str("[output truncated: past --max-output]\n");
            }
        }
        Output {
            text,
            exit: r.exit,
            signal: r.signal,
        }
    }

    /// What follows the node set in the header when the command did not end well.
    fn ending(&self) -> String {
        match (self.signal, self.exit) {
            (Some(s), _) => format!(", killed by signal {s}"),
            (None, Some(e)) if e != 0 => format!(", exit {e}"),
            _ => String::new(),
        }
    }
}

fn push_line(out: &mut String, text: &str) {
    if text.is_empty() {
        return;
    }
    out.push_str(text);
    if !text.ends_with('\n') {
        out.push('\n');
    }
}

/// The targets with a result, grouped by identical output, in display order.
pub fn group(a: &Action) -> Vec<(NodeSet, Output)> {
    let mut by_output: BTreeMap<Output, NodeSet> = BTreeMap::new();
    for (name, t) in &a.targets {
        if let Some(r) = &t.result {
            by_output
                .entry(Output::of(r))
                .or_default()
                .insert(name.clone());
        }
    }
    let mut groups: Vec<(NodeSet, Output)> = by_output.into_iter().map(|(o, n)| (n, o)).collect();
    sort_groups(&mut groups);
    groups
}

/// The groups as text. Groups with no output and a clean end are left out, as clubak does: the
/// final line says they succeeded.
pub fn render(groups: &[(NodeSet, Output)]) -> String {
    let mut out = String::new();
    for (nodes, o) in groups {
        let ending = o.ending();
        if o.text.is_empty() && ending.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "{RULE}\n{} ({}){ending}\n{RULE}",
            nodes.fold(),
            nodes.len()
        );
        out.push_str(&printable(&o.text));
    }
    out
}

/// Every output line prefixed with its node, nodes in order (`clush -L`).
pub fn render_by_node(a: &Action) -> String {
    let names = NodeSet::from_names(a.targets.keys().cloned());
    let mut out = String::new();
    for name in names.iter() {
        let Some(r) = a.targets.get(name).and_then(|t| t.result.as_ref()) else {
            continue;
        };
        for line in Output::of(r).text.lines() {
            let _ = writeln!(out, "{}: {}", printable(name), printable(line));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::tests::{exec_action, ran};
    use crate::actions::{render_action, Layout, Outcome};
    use serde_json::json;

    #[test]
    fn identical_outputs_merge_under_one_folded_header_largest_first() {
        let a = exec_action(
            json!({
                "cn1": ran("5.10\n", 0), "cn2": ran("5.10\n", 0), "cn3": ran("5.10\n", 0),
                "cn5": ran("5.10\n", 0), "cn4": ran("6.1\n", 0),
                "cn10": ran("6.1\n", 0), "cn7": ran("4.19", 0),
            }),
            true,
        );
        assert_eq!(
            render(&group(&a)),
            "---------------\ncn[1-3,5] (4)\n---------------\n5.10\n\
             ---------------\ncn[4,10] (2)\n---------------\n6.1\n\
             ---------------\ncn7 (1)\n---------------\n4.19\n"
        );
        assert_eq!(Outcome::of(&a).exit_code(), 0);
    }

    #[test]
    fn groups_of_equal_size_go_by_node_set_in_natural_order() {
        let a = exec_action(
            json!({"cn10": ran("b\n", 0), "cn9": ran("a\n", 0), "cn2": ran("c\n", 0)}),
            true,
        );
        let order: Vec<String> = group(&a).iter().map(|(n, _)| n.fold()).collect();
        assert_eq!(order, ["cn2", "cn9", "cn10"]);
    }

    #[test]
    fn same_output_with_another_exit_status_is_another_group() {
        let a = exec_action(
            json!({"cn1": ran("x\n", 0), "cn2": ran("x\n", 0), "cn3": ran("x\n", 3)}),
            true,
        );
        let text = render_action(&a, Layout::Grouped);
        assert!(
            text.starts_with(
                "---------------\ncn[1-2] (2)\n---------------\nx\n\
             ---------------\ncn3 (1), exit 3\n---------------\nx\n\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("\nNODES N STATE  REASON\ncn3   1 failed exit 3\n\n"),
            "{text}"
        );
        assert!(text.ends_with("\n1 of 3 targets failed: cn3\n"), "{text}");
        assert_eq!(Outcome::of(&a).exit_code(), 1);
    }

    #[test]
    fn stderr_truncation_and_escapes_are_shown() {
        let a = exec_action(
            json!({"cn1": {"state": "ok", "error": null, "result": {
                "ok": true, "dry_run": false, "summary": "exit 0", "exit": 0, "signal": null,
                "stdout": "out\x1b[2J", "stderr": "warn\n", "truncated": true, "units": [],
                "duration_ms": 5}}}),
            true,
        );
        assert_eq!(
            render(&group(&a)),
            "---------------\ncn1 (1)\n---------------\nout\\u{1b}[2J\nwarn\n\
             [output truncated: past --max-output]\n"
        );
    }

    #[test]
    fn silent_successes_print_only_the_final_line() {
        let a = exec_action(json!({"cn1": ran("", 0), "cn2": ran("", 0)}), true);
        assert_eq!(
            render_action(&a, Layout::Grouped),
            "All 2 targets succeeded.\n"
        );
    }

    #[test]
    fn by_node_prefixes_every_line() {
        let a = exec_action(
            json!({"cn10": ran("a\nb\n", 0), "cn2": ran("c\n", 0),
                   "cn3": {"state": "unreachable", "result": null, "error": null}}),
            true,
        );
        assert_eq!(render_by_node(&a), "cn2: c\ncn10: a\ncn10: b\n");
    }
}

//! Actions as the root's API shows them (`POST /actions`, `GET /actions`, `GET /actions/ID`), and
//! how the CLI renders them: the list of recent actions, one action's results by kind (grouped
//! outputs for `exec`, a table of units for `service`), the table of failures and the final line,
//! and the exit status that goes with them.
//!
//! The types mirror the JSON with defaults everywhere, so a root that adds a field or a kind of
//! action does not break an older CLI; the task itself is kept as JSON for the same reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use banyan_protocol::action::{NodeResult, Task};
use banyan_protocol::nodeset::NodeSet;
use serde::Deserialize;
use serde_json::Value;

use crate::api::{EXIT_FAILED, EXIT_OK};
use crate::escape::one_line;
use crate::{grouped, table, times, units};

/// The answer to `POST /actions` (202).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Started {
    pub id: String,
    /// The targets, folded.
    pub targets: String,
    pub count: usize,
    pub for_real: bool,
}

/// One line of `GET /actions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Summary {
    pub id: String,
    pub kind: String,
    pub who: String,
    pub nodes: String,
    pub count: usize,
    pub for_real: bool,
    pub state: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub ok: usize,
    pub failed: usize,
    pub unreachable: usize,
    pub pending: usize,
}

/// Where an action is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Running,
    Done,
    Cancelled,
    /// The root restarted while it ran: targets that had not answered never will.
    Interrupted,
    #[serde(other)]
    Unknown,
}

/// `GET /actions/ID`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Action {
    pub id: String,
    pub kind: String,
    pub who: String,
    pub peer: Option<String>,
    /// The task as the root holds it ([`Task`] JSON); see [`Action::task`].
    pub task: Value,
    pub nodes: String,
    pub for_real: bool,
    pub state: State,
    /// Grows with every change; `?since=` waits for a larger one.
    pub version: u64,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub deadline_ms: Option<u64>,
    pub targets: BTreeMap<String, Target>,
    /// `vm list`: whether the agent of each guest that joins the tree (by node name) is up
    /// there, as the command read `/nodes`; not part of the root's answer.
    #[serde(skip)]
    pub guest_agents: Option<BTreeMap<String, bool>>,
}

/// Where one target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetState {
    Ok,
    Failed,
    Unreachable,
    Cancelled,
    #[default]
    Pending,
    #[serde(other)]
    Unknown,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Ok => "ok",
            TargetState::Failed => "failed",
            TargetState::Unreachable => "unreachable",
            TargetState::Cancelled => "cancelled",
            TargetState::Pending => "pending",
            TargetState::Unknown => "unknown",
        }
    }
}

/// What a running target printed so far.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct Live {
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Target {
    pub state: TargetState,
    pub result: Option<NodeResult>,
    pub error: Option<String>,
    /// Lines printed so far while it runs (an `exec` that streams).
    pub live: Option<Live>,
}

impl Action {
    /// The task, when this CLI knows its kind.
    pub fn task(&self) -> Option<Task> {
        serde_json::from_value(self.task.clone()).ok()
    }

    /// Targets that have not answered yet.
    pub fn pending(&self) -> usize {
        self.targets
            .values()
            .filter(|t| t.state == TargetState::Pending)
            .count()
    }

    /// Whether the action is over (nothing more will change).
    pub fn is_over(&self) -> bool {
        self.state != State::Running
    }
}

/// Why a target did not succeed, in a few words, the same for every target that failed the same
/// way (so they fold into one row).
pub fn reason(t: &Target, action_over: bool) -> String {
    let error = t.error.as_deref().filter(|e| !e.is_empty());
    match t.state {
        TargetState::Unreachable => error.unwrap_or("no answer").to_string(),
        TargetState::Cancelled => error.unwrap_or("cancelled").to_string(),
        TargetState::Pending if action_over => "no answer".into(),
        TargetState::Pending => "no answer yet".into(),
        _ => match (&t.result, error) {
            (Some(r), _) if r.signal.is_some() => {
                format!("killed by signal {}", r.signal.unwrap_or_default())
            }
            (Some(r), _) if r.exit.is_some_and(|e| e != 0) => {
                format!("exit {}", r.exit.unwrap_or_default())
            }
            (Some(r), _) if !r.summary.is_empty() => r.summary.clone(),
            (_, Some(e)) => e.to_string(),
            _ => "failed".into(),
        },
    }
}

/// Whether a target succeeded: it says ok and its result agrees.
pub fn succeeded(t: &Target) -> bool {
    t.state == TargetState::Ok && t.result.as_ref().is_none_or(|r| r.ok)
}

/// The final count of an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub total: usize,
    /// Every target that did not succeed: failed, unreachable, cancelled, or silent at the end.
    pub failed: NodeSet,
    /// Targets still expected to answer (only while the action runs).
    pub waiting: NodeSet,
}

impl Outcome {
    pub fn of(a: &Action) -> Outcome {
        let (mut failed, mut waiting) = (NodeSet::new(), NodeSet::new());
        for (name, t) in &a.targets {
            if t.state == TargetState::Pending && !a.is_over() {
                waiting.insert(name.clone());
            } else if !succeeded(t) {
                failed.insert(name.clone());
            }
        }
        Outcome {
            total: a.targets.len(),
            failed,
            waiting,
        }
    }

    /// `All N targets succeeded.` or `M of N targets failed: NODES` (while it runs, who is
    /// still awaited).
    pub fn line(&self) -> String {
        let failed = format!(
            "{} of {} targets failed: {}",
            self.failed.len(),
            self.total,
            self.failed.fold()
        );
        match (self.failed.is_empty(), self.waiting.is_empty()) {
            (true, true) => format!(
                "All {} target{} succeeded.",
                self.total,
                if self.total == 1 { "" } else { "s" }
            ),
            (false, true) => failed,
            (f, false) => format!(
                "Still running: {} of {} targets have not answered: {}{}",
                self.waiting.len(),
                self.total,
                self.waiting.fold(),
                if f {
                    String::new()
                } else {
                    format!("; {failed}")
                }
            ),
        }
    }

    /// 0 when every target succeeded, else 1 (also while some have not answered).
    pub fn exit_code(&self) -> u8 {
        if self.failed.is_empty() && self.waiting.is_empty() {
            EXIT_OK
        } else {
            EXIT_FAILED
        }
    }
}

/// Sorts groups of nodes as `clubak` does: the largest first, then by their first node.
pub fn sort_groups<T>(groups: &mut [(NodeSet, T)]) {
    groups.sort_by(|(a, _), (b, _)| {
        b.len().cmp(&a.len()).then_with(|| {
            let (x, y) = (a.iter().next(), b.iter().next());
            match (x, y) {
                (Some(x), Some(y)) if x != y => {
                    // The node-set order (natural: cn2 before cn10) decides.
                    if NodeSet::from_names([x, y]).iter().next() == Some(x) {
                        std::cmp::Ordering::Less
                    } else {
                        std::cmp::Ordering::Greater
                    }
                }
                _ => std::cmp::Ordering::Equal,
            }
        })
    });
}

/// The table of targets that did not succeed, one row per (state, reason) with its nodes folded;
/// empty when all succeeded.
pub fn render_failures(a: &Action) -> String {
    let mut rows: BTreeMap<(TargetState, String), NodeSet> = BTreeMap::new();
    for (name, t) in &a.targets {
        let awaited = t.state == TargetState::Pending && !a.is_over();
        if !succeeded(t) && !awaited {
            rows.entry((t.state, reason(t, a.is_over())))
                .or_default()
                .insert(name.clone());
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    // Failures first, then unreachable, cancelled and silent targets; in each, clubak's order.
    let mut rows: Vec<(NodeSet, (TargetState, String))> =
        rows.into_iter().map(|(k, v)| (v, k)).collect();
    rows.sort_by_key(|(_, (state, _))| *state);
    for chunk in rows.chunk_by_mut(|a, b| a.1 .0 == b.1 .0) {
        sort_groups(chunk);
    }
    let mut t = table::new(&["NODES", "N", "STATE", "REASON"]);
    for (nodes, (state, why)) in rows {
        t.add_row(vec![
            nodes.fold(),
            nodes.len().to_string(),
            state.as_str().to_string(),
            one_line(&why).into_owned(),
        ]);
    }
    table::align_right(&mut t, 1);
    table::render(&t)
}

/// How results are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Identical outputs under one folded node set, as `clubak -b` does.
    #[default]
    Grouped,
    /// Every line prefixed with its node, ordered by node, as `clush -L` does.
    ByNode,
    /// The outputs were printed while the action ran ([`crate::follow::LivePrinter`]): only
    /// the failures and the final line are left.
    Streamed,
}

/// One action's results for people: the outputs (by kind), the failures, the final line, and
/// the dry-run notice. The exit status is [`Outcome::exit_code`].
pub fn render_action(a: &Action, layout: Layout) -> String {
    let mut out = String::new();
    let task = a.task();
    match &task {
        Some(Task::Service(_)) => out.push_str(&units::render(a)),
        Some(Task::Hv(h)) => out.push_str(&crate::hv::render(a, h)),
        Some(Task::Vm(v)) => out.push_str(&crate::vm::render(a, &v.op)),
        _ => match layout {
            Layout::Grouped => out.push_str(&grouped::render(&grouped::group(a))),
            Layout::ByNode => out.push_str(&grouped::render_by_node(a)),
            Layout::Streamed => {}
        },
    }
    let failures = render_failures(a);
    if !failures.is_empty() {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(&failures);
    }
    if !out.is_empty() {
        out.push('\n');
    }
    if a.state == State::Interrupted {
        let _ = writeln!(
            out,
            "action {} was interrupted (the root restarted while it ran)",
            a.id
        );
    }
    let _ = writeln!(out, "{}", Outcome::of(a).line());
    if !a.for_real {
        let mutates = match &task {
            Some(Task::Service(s)) => s.op.mutates(),
            Some(Task::Hv(h)) => !h.op.reads_only() || h.cleanup_errors,
            Some(Task::Vm(v)) => !v.op.reads_only(),
            _ => true,
        };
        if mutates {
            let what = match &task {
                Some(Task::Exec(_)) => "nothing was executed",
                _ => "nothing was changed",
            };
            let _ = writeln!(out, "DRY RUN: {what}; add --for-real");
        }
    }
    out
}

/// One line per finished target, for plain progress: `cn3: ok (exit 0)`.
pub fn progress_line(name: &str, t: &Target) -> String {
    let state = t.state.as_str();
    let detail = match (&t.result, t.state) {
        (Some(r), _) if r.dry_run => Some("dry run".to_string()),
        (Some(r), _) if r.signal.is_some() => Some(format!("signal {}", r.signal.unwrap_or(0))),
        (Some(r), _) if r.exit.is_some() => Some(format!("exit {}", r.exit.unwrap_or(0))),
        (Some(r), _) if !r.units.is_empty() => Some(
            r.units
                .iter()
                .map(|u| format!("{} {}", u.unit, u.state.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (Some(r), _) if !r.summary.is_empty() => Some(r.summary.clone()),
        (None, _) => t.error.clone().filter(|e| !e.is_empty()),
        _ => None,
    };
    match detail {
        Some(d) => format!("{}: {state} ({})", one_line(name), one_line(&d)),
        None => format!("{}: {state}", one_line(name)),
    }
}

/// `banyan actions`: the recent actions, newest first as the root lists them.
pub fn render_list(list: &[Summary], now_ms: u64) -> String {
    if list.is_empty() {
        return "no actions yet\n".into();
    }
    let mut t = table::new(&[
        "ID",
        "AGE",
        "WHO",
        "KIND",
        "NODES",
        "MODE",
        "STATE",
        "OK/FAILED/UNREACHABLE",
    ]);
    for s in list {
        let mut counts = format!("{}/{}/{}", s.ok, s.failed, s.unreachable);
        if s.pending > 0 {
            let _ = write!(counts, " ({} pending)", s.pending);
        }
        t.add_row(vec![
            s.id.clone(),
            times::age(now_ms, s.started_ms),
            one_line(&s.who).into_owned(),
            one_line(&s.kind).into_owned(),
            format!("{} ({})", one_line(&s.nodes), s.count),
            if s.for_real { "real" } else { "dry" }.to_string(),
            one_line(&s.state).into_owned(),
            counts,
        ]);
    }
    table::render(&t)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A finished exec action with `targets` as the root would show it.
    pub(crate) fn exec_action(targets: Value, for_real: bool) -> Action {
        serde_json::from_value(json!({
            "id": "0123456789abcdef", "kind": "exec", "who": "admin", "peer": "127.0.0.1:5555",
            "task": {"exec": {"argv": ["uname", "-r"], "shell": false, "user": null, "max_output": 65536}},
            "nodes": "cn[1-8]", "for_real": for_real, "state": "done", "version": 9,
            "started_ms": 1_000, "ended_ms": 2_000, "deadline_ms": 61_000,
            "targets": targets,
        }))
        .expect("a well-formed action")
    }

    pub(crate) fn ran(stdout: &str, exit: i32) -> Value {
        json!({"state": if exit == 0 { "ok" } else { "failed" }, "error": null, "result": {
            "ok": exit == 0, "dry_run": false, "summary": format!("exit {exit}"), "exit": exit,
            "signal": null, "stdout": stdout, "stderr": "", "truncated": false, "units": [],
            "duration_ms": 12}})
    }

    #[test]
    fn the_final_line_counts_every_target_that_did_not_succeed() {
        let a = exec_action(
            json!({
                "cn1": ran("a\n", 0), "cn2": ran("a\n", 0), "cn3": ran("", 2),
                "cn4": {"state": "unreachable", "result": null, "error": "no answer within 60s"},
                "cn10": {"state": "cancelled", "result": null, "error": null},
            }),
            true,
        );
        let o = Outcome::of(&a);
        assert_eq!(o.line(), "3 of 5 targets failed: cn[3-4,10]");
        assert_eq!(o.exit_code(), 1);
        let ok = exec_action(json!({"cn1": ran("a\n", 0)}), true);
        assert_eq!(Outcome::of(&ok).line(), "All 1 target succeeded.");
        assert_eq!(Outcome::of(&ok).exit_code(), 0);
    }

    #[test]
    fn a_running_action_says_who_is_still_awaited() {
        let mut a = exec_action(
            json!({"cn1": ran("a\n", 0), "cn2": ran("", 1),
                   "cn3": {"state": "pending"}, "cn4": {"state": "pending"}}),
            true,
        );
        a.state = State::Running;
        let o = Outcome::of(&a);
        assert_eq!(
            o.line(),
            "Still running: 2 of 4 targets have not answered: cn[3-4]; 1 of 4 targets failed: cn2"
        );
        assert_eq!(o.exit_code(), 1);
        assert!(!render_failures(&a).contains("cn[3-4]"));
        // Once over, silence is a failure.
        a.state = State::Interrupted;
        assert_eq!(Outcome::of(&a).line(), "3 of 4 targets failed: cn[2-4]");
        assert!(render_failures(&a).contains("cn[3-4] 2 pending no answer"));
    }

    #[test]
    fn failures_fold_by_state_and_reason_largest_first() {
        let a = exec_action(
            json!({
                "cn1": ran("", 1), "cn2": ran("", 1), "cn3": ran("", 1), "cn9": ran("", 2),
                "cn5": {"state": "unreachable", "result": null, "error": null},
                "cn6": {"state": "failed", "result": null, "error": "bad signature"},
                "cn7": {"state": "failed", "result": {"ok": false, "dry_run": false,
                    "summary": "killed", "exit": null, "signal": 9, "stdout": "", "stderr": "",
                    "truncated": false, "units": [], "duration_ms": 3}, "error": null},
            }),
            true,
        );
        assert_eq!(
            render_failures(&a),
            "NODES   N STATE       REASON\n\
             cn[1-3] 3 failed      exit 1\n\
             cn6     1 failed      bad signature\n\
             cn7     1 failed      killed by signal 9\n\
             cn9     1 failed      exit 2\n\
             cn5     1 unreachable no answer\n"
        );
    }

    #[test]
    fn unknown_fields_and_kinds_do_not_break_the_cli() {
        let a: Action = serde_json::from_value(json!({
            "id": "00000000000000aa", "kind": "teleport", "task": {"teleport": {"to": "mars"}},
            "state": "later", "targets": {"n1": {"state": "weird", "extra": 1}}, "new": true
        }))
        .unwrap();
        assert!(a.task().is_none());
        assert_eq!(a.state, State::Unknown);
        assert_eq!(a.targets["n1"].state, TargetState::Unknown);
        assert!(render_action(&a, Layout::Grouped).contains("1 of 1 targets failed: n1"));
    }

    #[test]
    fn progress_lines_say_how_each_target_ended() {
        let a = exec_action(
            json!({"cn3": ran("x", 0), "cn4": ran("", 1),
                   "cn5": {"state": "unreachable", "result": null, "error": "link lost"}}),
            true,
        );
        assert_eq!(progress_line("cn3", &a.targets["cn3"]), "cn3: ok (exit 0)");
        assert_eq!(
            progress_line("cn4", &a.targets["cn4"]),
            "cn4: failed (exit 1)"
        );
        assert_eq!(
            progress_line("cn5", &a.targets["cn5"]),
            "cn5: unreachable (link lost)"
        );
    }

    #[test]
    fn a_dry_run_says_so_at_the_end() {
        let dry = json!({"state": "ok", "error": null, "result": {
            "ok": true, "dry_run": true, "summary": "would run: uname -r (as root)", "exit": null,
            "signal": null, "stdout": "", "stderr": "", "truncated": false, "units": [],
            "duration_ms": 0}});
        let a = exec_action(json!({"cn1": dry.clone(), "cn2": dry}), false);
        let text = render_action(&a, Layout::Grouped);
        assert!(
            text.ends_with(
                "All 2 targets succeeded.\nDRY RUN: nothing was executed; add --for-real\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("cn[1-2] (2)\n---------------\nwould run: uname -r (as root)\n"),
            "{text}"
        );
    }

    #[test]
    fn the_list_shows_mode_state_and_counts() {
        let list: Vec<Summary> = serde_json::from_value(json!([
            {"id": "00000000000000ab", "kind": "exec", "who": "alice", "nodes": "cn[1-4]", "count": 4,
             "for_real": true, "state": "running", "started_ms": 100_000, "ended_ms": null,
             "ok": 2, "failed": 1, "unreachable": 0, "pending": 1},
            {"id": "00000000000000aa", "kind": "service", "who": "admin", "nodes": "@compute", "count": 8,
             "for_real": false, "state": "done", "started_ms": 40_000, "ended_ms": 41_000,
             "ok": 8, "failed": 0, "unreachable": 0, "pending": 0},
        ]))
        .unwrap();
        let text = render_list(&list, 280_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID "), "{text}");
        assert!(
            lines[1].contains("3 min ago")
                && lines[1].contains("cn[1-4] (4)")
                && lines[1].contains("real")
                && lines[1].ends_with("2/1/0 (1 pending)"),
            "{text}"
        );
        assert!(
            lines[2].contains("4 min ago")
                && lines[2].contains("dry")
                && lines[2].ends_with("8/0/0"),
            "{text}"
        );
    }
}

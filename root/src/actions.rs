//! The root's book of operator actions: each action's targets and their states while it runs,
//! its results after, kept in `<state-dir>/actions/ID.json` so that `banyan actions` still shows
//! it after a restart. An action that was running when the root stopped is marked `interrupted`
//! when the root starts again: its targets may or may not have carried it out, and the operator
//! must be told, never left to guess.
//!
//! The book only keeps state; the daemon feeds it answers (already verified: see
//! [`ActionBook::answer`]) and the HTTP API reads it. Watchers (long polling) are woken through a
//! version counter that rises with every change.

use banyan_protocol::action::{NodeResult, OutputLines, Task};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Actions kept in memory (and on disk): the most recent ones.
pub const KEEP: usize = 500;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ActionState {
    Running,
    Done,
    Cancelled,
    Interrupted,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TargetPhase {
    Pending,
    Ok,
    Failed,
    Unreachable,
    Cancelled,
}

/// One target of an action.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TargetState {
    pub state: TargetPhase,
    /// What the node signed as its result.
    pub result: Option<NodeResult>,
    /// Why there is no result: unreachable, cancelled.
    pub error: Option<String>,
    /// Answers for this target that were refused: a receipt that does not verify (forged or
    /// altered on the way), or an error some node on the way reported. The last few.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
    /// Complete lines the target printed so far, while it runs (an `exec` that streams); dropped
    /// when its result, which holds the whole output, comes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveOutput>,
}

/// What a running target printed so far.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct LiveOutput {
    pub stdout: String,
    pub stderr: String,
    /// The next batch expected (batches are taken once, in order).
    #[serde(skip)]
    pub next: u32,
}

/// Most live output kept per target and stream, whatever the task's cap; the result has the rest.
pub const LIVE_OUTPUT_MAX: usize = 4 << 20;

/// An action as the API shows it (`GET /actions/ID`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ActionRecord {
    pub id: String,
    pub kind: String,
    pub who: String,
    pub peer: String,
    pub task: Task,
    /// The targets, folded.
    pub nodes: String,
    pub for_real: bool,
    pub state: ActionState,
    /// Rises with every change of this action.
    pub version: u64,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub deadline_ms: u64,
    /// Someone asked to cancel it (the targets were told).
    #[serde(default)]
    pub cancel_requested: bool,
    pub targets: BTreeMap<String, TargetState>,
}

/// One line of `GET /actions`.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ActionSummary {
    pub id: String,
    pub kind: String,
    pub who: String,
    pub nodes: String,
    pub count: usize,
    pub for_real: bool,
    pub state: ActionState,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub ok: usize,
    pub failed: usize,
    pub unreachable: usize,
    pub pending: usize,
}

impl ActionRecord {
    pub fn summary(&self) -> ActionSummary {
        let count = |p: TargetPhase| self.targets.values().filter(|t| t.state == p).count();
        ActionSummary {
            id: self.id.clone(),
            kind: self.kind.clone(),
            who: self.who.clone(),
            nodes: self.nodes.clone(),
            count: self.targets.len(),
            for_real: self.for_real,
            state: self.state,
            started_ms: self.started_ms,
            ended_ms: self.ended_ms,
            ok: count(TargetPhase::Ok),
            failed: count(TargetPhase::Failed) + count(TargetPhase::Cancelled),
            unreachable: count(TargetPhase::Unreachable),
            pending: count(TargetPhase::Pending),
        }
    }

    /// The targets not answered yet.
    pub fn pending(&self) -> Vec<String> {
        self.targets
            .iter()
            .filter(|(_, t)| t.state == TargetPhase::Pending)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// What the audit log keeps of the outcome: counts and the folded sets of failures.
    pub fn outcome_json(&self) -> serde_json::Value {
        let mut by: BTreeMap<&str, banyan_protocol::nodeset::NodeSet> = BTreeMap::new();
        for (n, t) in &self.targets {
            let key = match t.state {
                TargetPhase::Pending => "pending",
                TargetPhase::Ok => "ok",
                TargetPhase::Failed => "failed",
                TargetPhase::Unreachable => "unreachable",
                TargetPhase::Cancelled => "cancelled",
            };
            by.entry(key).or_default().insert(n.clone());
        }
        let folded: serde_json::Map<String, serde_json::Value> = by
            .into_iter()
            .map(|(k, set)| (k.to_string(), serde_json::Value::String(set.fold())))
            .collect();
        serde_json::json!({"state": self.state, "targets": folded})
    }
}

pub struct ActionBook {
    dir: Option<PathBuf>,
    records: BTreeMap<String, ActionRecord>,
    changed: tokio::sync::watch::Sender<u64>,
    version: u64,
    /// Orders the root sends for its own work (a BMC call through a gateway), by (order, node):
    /// their answer goes to the waiting caller, not into a record.
    waiters: HashMap<(String, String), Waiter>,
}

/// Where the answer to one of the root's own orders goes.
pub type Waiter = tokio::sync::oneshot::Sender<Result<NodeResult, String>>;

impl ActionBook {
    /// Opens the book kept in `<state>/actions/` (none: in memory). Actions that were running are
    /// marked interrupted (and written so); they are returned so that the caller can audit them.
    pub fn open(state: Option<&Path>, now_ms: u64) -> (ActionBook, Vec<ActionRecord>) {
        let dir = state.map(|d| d.join("actions"));
        let (changed, _) = tokio::sync::watch::channel(0);
        let mut book = ActionBook {
            dir: dir.clone(),
            records: BTreeMap::new(),
            changed,
            version: 0,
            waiters: HashMap::new(),
        };
        let mut interrupted = Vec::new();
        let Some(dir) = dir else {
            return (book, interrupted);
        };
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the actions dir; actions will not outlive a restart");
        }
        let entries = std::fs::read_dir(&dir).into_iter().flatten().flatten();
        for entry in entries {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<ActionRecord>(&b).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(mut r) => {
                    if r.state == ActionState::Running {
                        r.state = ActionState::Interrupted;
                        r.ended_ms = Some(now_ms);
                        for t in r.targets.values_mut() {
                            if t.state == TargetPhase::Pending {
                                t.state = TargetPhase::Unreachable;
                                t.error = Some(
                                    "the root restarted while the action ran; its outcome here is unknown".into(),
                                );
                            }
                        }
                        book.save(&r);
                        interrupted.push(r.clone());
                    }
                    book.records.insert(r.id.clone(), r);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "unreadable action record skipped")
                }
            }
        }
        book.prune();
        (book, interrupted)
    }

    /// Wakes up when anything in the book changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn start(&mut self, mut record: ActionRecord) {
        record.version = self.bump();
        self.save(&record);
        self.records.insert(record.id.clone(), record);
        self.prune();
    }

    /// Changes a pending target of action `id` with `f` (given the target, the task and whether a
    /// cancel was asked); `f` answers whether it changed anything. Unknown actions and targets, and
    /// targets that are not pending, are left alone: the first answer stands.
    fn change_pending(
        &mut self,
        id: &str,
        node: &str,
        f: impl FnOnce(&mut TargetState, &Task, bool) -> bool,
    ) {
        let version = self.version + 1;
        let Some(r) = self.records.get_mut(id) else {
            return;
        };
        let Some(t) = r.targets.get_mut(node) else {
            return;
        };
        if t.state != TargetPhase::Pending || !f(t, &r.task, r.cancel_requested) {
            return;
        }
        r.version = version;
        self.bump();
    }

    /// The answer of `node` to the root's own order `id` (sent outside any record): given to the
    /// receiver once it comes, or the receiver fails when the order's deadline passes unanswered.
    pub fn expect(
        &mut self,
        id: &str,
        node: &str,
    ) -> tokio::sync::oneshot::Receiver<Result<NodeResult, String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiters.insert((id.to_string(), node.to_string()), tx);
        rx
    }

    /// A target's answer, already checked by the caller (a verified receipt's result, or the
    /// reason there is none).
    pub fn answer(&mut self, id: &str, node: &str, answer: Result<NodeResult, String>) {
        if let Some(waiter) = self.waiters.remove(&(id.to_string(), node.to_string())) {
            // The caller may have given up waiting: nothing else wants the answer then.
            let _ = waiter.send(answer);
            return;
        }
        self.change_pending(id, node, |t, _, cancel_requested| {
            t.live = None;
            match answer {
                Ok(result) => {
                    t.state = if result.ok {
                        TargetPhase::Ok
                    } else if cancel_requested && result.summary.contains("cancelled") {
                        TargetPhase::Cancelled
                    } else {
                        TargetPhase::Failed
                    };
                    t.result = Some(result);
                }
                Err(e) => {
                    t.state = TargetPhase::Failed;
                    t.error = Some(e);
                }
            }
            true
        });
    }

    /// Lines a pending target printed (checked by the caller). A batch out of order (a repeat,
    /// or one after a lost one) is dropped: the result will carry it.
    pub fn output(&mut self, id: &str, node: &str, lines: OutputLines) {
        self.change_pending(id, node, |t, task, _| {
            // No more than the task's own cap: a node sends only what it keeps for its result.
            let cap = match task {
                Task::Exec(e) if e.stream => usize::try_from(e.max_output)
                    .map_or(LIVE_OUTPUT_MAX, |c| c.min(LIVE_OUTPUT_MAX)),
                _ => return false,
            };
            let live = t.live.get_or_insert_with(LiveOutput::default);
            if lines.seq != live.next {
                return false;
            }
            live.next += 1;
            if live.stdout.len() + lines.stdout.len() <= cap {
                live.stdout.push_str(&lines.stdout);
            }
            if live.stderr.len() + lines.stderr.len() <= cap {
                live.stderr.push_str(&lines.stderr);
            }
            true
        });
    }

    /// A line of progress of a target the root works on itself (`hv disable`'s "2 running (280 s
    /// left)"), shown while the target is pending; its result carries the whole story.
    pub fn progress(&mut self, id: &str, node: &str, line: &str) {
        self.change_pending(id, node, |t, _, _| {
            let live = t.live.get_or_insert_with(LiveOutput::default);
            if live.stdout.len() + line.len() + 1 > LIVE_OUTPUT_MAX {
                return false;
            }
            live.stdout.push_str(line);
            live.stdout.push('\n');
            true
        });
    }

    /// An answer for a pending target that was not taken, and why (the last few are kept).
    pub fn refused_answer(&mut self, id: &str, node: &str, why: String) {
        self.change_pending(id, node, |t, _, _| {
            if t.refused.len() >= 8 {
                return false;
            }
            t.refused.push(why);
            true
        });
    }

    /// The action is over: targets that never answered are unreachable. Returns the record for
    /// the audit log.
    pub fn finish(&mut self, id: &str, now_ms: u64) -> Option<ActionRecord> {
        // An own order past its deadline: its waiter hears that no answer came.
        self.waiters.retain(|(order, _), _| order != id);
        let version = self.version + 1;
        let r = self.records.get_mut(id)?;
        if r.state != ActionState::Running {
            return None;
        }
        for t in r.targets.values_mut() {
            if t.state == TargetPhase::Pending {
                if r.cancel_requested {
                    t.state = TargetPhase::Cancelled;
                    t.error = Some("cancelled before it answered".into());
                } else {
                    t.state = TargetPhase::Unreachable;
                    t.error = Some(match t.refused.last() {
                        Some(why) => format!("no valid answer before the deadline; refused: {why}"),
                        None => "no answer before the deadline (node down, cut off, or its answer was dropped on the way)".into(),
                    });
                }
            }
        }
        r.state = if r.cancel_requested {
            ActionState::Cancelled
        } else {
            ActionState::Done
        };
        r.ended_ms = Some(now_ms);
        r.version = version;
        let r = r.clone();
        self.bump();
        self.save(&r);
        Some(r)
    }

    /// Marks a running action as being cancelled; answers its pending targets (to be told).
    pub fn request_cancel(&mut self, id: &str) -> Option<Vec<String>> {
        let version = self.version + 1;
        let r = self.records.get_mut(id)?;
        if r.state != ActionState::Running {
            return None;
        }
        r.cancel_requested = true;
        r.version = version;
        let pending = r.pending();
        self.bump();
        Some(pending)
    }

    pub fn get(&self, id: &str) -> Option<&ActionRecord> {
        self.records.get(id)
    }

    /// The most recent actions first.
    pub fn list(&self, limit: usize) -> Vec<ActionSummary> {
        let mut all: Vec<&ActionRecord> = self.records.values().collect();
        all.sort_by(|a, b| b.started_ms.cmp(&a.started_ms).then(b.id.cmp(&a.id)));
        all.into_iter().take(limit).map(|r| r.summary()).collect()
    }

    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.changed.send_replace(self.version);
        self.version
    }

    fn save(&self, r: &ActionRecord) {
        let Some(dir) = &self.dir else { return };
        let path = dir.join(format!("{}.json", r.id));
        let body = match serde_json::to_vec(r) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(action = %r.id, error = %e, "cannot encode an action record");
                return;
            }
        };
        if let Err(e) = crate::state::write_private_atomically(&path, &body) {
            tracing::warn!(action = %r.id, error = %e, "cannot keep an action record");
        }
    }

    /// Keeps the most recent [`KEEP`] actions, in memory and on disk.
    fn prune(&mut self) {
        if self.records.len() <= KEEP {
            return;
        }
        let mut by_age: Vec<(u64, String)> = self
            .records
            .values()
            .filter(|r| r.state != ActionState::Running)
            .map(|r| (r.started_ms, r.id.clone()))
            .collect();
        by_age.sort();
        let excess = self.records.len() - KEEP;
        for (_, id) in by_age.into_iter().take(excess) {
            self.records.remove(&id);
            if let Some(dir) = &self.dir {
                let _ = std::fs::remove_file(dir.join(format!("{id}.json")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banyan_protocol::action::ServiceOp;

    fn record(id: &str, nodes: &[&str]) -> ActionRecord {
        ActionRecord {
            id: id.into(),
            kind: "service".into(),
            who: "admin".into(),
            peer: "127.0.0.1:1".into(),
            task: Task::Service(banyan_protocol::action::ServiceTask {
                op: ServiceOp::Status,
                units: vec!["sshd".into()],
            }),
            nodes: banyan_protocol::nodeset::NodeSet::from_names(nodes.iter().copied()).fold(),
            for_real: false,
            state: ActionState::Running,
            version: 0,
            started_ms: 10,
            ended_ms: None,
            deadline_ms: 100,
            cancel_requested: false,
            targets: nodes
                .iter()
                .map(|n| {
                    (
                        n.to_string(),
                        TargetState {
                            state: TargetPhase::Pending,
                            result: None,
                            error: None,
                            refused: Vec::new(),
                            live: None,
                        },
                    )
                })
                .collect(),
        }
    }

    fn lines(node: &str, seq: u32, out: &str) -> OutputLines {
        OutputLines {
            order: "00000000000000b1".into(),
            node: node.into(),
            seq,
            stdout: out.into(),
            stderr: String::new(),
        }
    }

    #[test]
    fn live_lines_are_taken_once_in_order_within_the_cap_until_the_result() {
        let (mut book, _) = ActionBook::open(None, 0);
        let mut r = record("00000000000000b1", &["cn1"]);
        r.task = Task::Exec(banyan_protocol::action::ExecTask {
            argv: vec!["x".into()],
            shell: false,
            user: None,
            max_output: 8,
            stream: true,
        });
        book.start(r);
        let live = |b: &ActionBook| {
            b.get("00000000000000b1").unwrap().targets["cn1"]
                .live
                .as_ref()
                .map(|l| l.stdout.clone())
        };
        book.output("00000000000000b1", "cn1", lines("cn1", 0, "a\n"));
        book.output("00000000000000b1", "cn1", lines("cn1", 0, "a\n")); // a repeat
        book.output("00000000000000b1", "cn1", lines("cn1", 2, "c\n")); // after a lost one
        assert_eq!(live(&book).as_deref(), Some("a\n"));
        book.output("00000000000000b1", "cn1", lines("cn1", 1, "0123456789\n")); // past the cap
        book.output("00000000000000b1", "cn1", lines("cn1", 2, "b\n"));
        assert_eq!(live(&book).as_deref(), Some("a\nb\n"));
        book.answer("00000000000000b1", "cn1", Ok(ok()));
        assert_eq!(live(&book), None, "the result replaces the live lines");
        book.output("00000000000000b1", "cn1", lines("cn1", 3, "late\n"));
        assert_eq!(live(&book), None, "lines after the result were taken");

        // A task that does not stream takes no lines.
        book.start(record("00000000000000b2", &["cn1"]));
        book.output("00000000000000b2", "cn1", lines("cn1", 0, "a\n"));
        assert!(book.get("00000000000000b2").unwrap().targets["cn1"]
            .live
            .is_none());
    }

    fn ok() -> NodeResult {
        NodeResult {
            ok: true,
            summary: "done".into(),
            ..NodeResult::default()
        }
    }

    #[test]
    fn answers_then_finish_leave_silent_targets_unreachable() {
        let (mut book, _) = ActionBook::open(None, 0);
        let mut watch = book.subscribe();
        book.start(record("00000000000000a1", &["cn1", "cn2", "cn3"]));
        book.answer("00000000000000a1", "cn1", Ok(ok()));
        book.answer(
            "00000000000000a1",
            "cn2",
            Err("receipt does not verify".into()),
        );
        // A second answer for a node does not overwrite the first.
        book.answer("00000000000000a1", "cn1", Err("late".into()));
        assert!(watch.has_changed().unwrap());
        watch.mark_unchanged();
        let r = book.finish("00000000000000a1", 50).unwrap();
        assert!(watch.has_changed().unwrap());
        let s = r.summary();
        assert_eq!((s.ok, s.failed, s.unreachable, s.pending), (1, 1, 1, 0));
        assert_eq!(r.state, ActionState::Done);
        assert_eq!(
            r.outcome_json()["targets"],
            serde_json::json!({"ok": "cn1", "failed": "cn2", "unreachable": "cn3"})
        );
        assert!(
            book.finish("00000000000000a1", 60).is_none(),
            "finished once"
        );
    }

    #[test]
    fn an_action_running_when_the_root_stopped_is_interrupted_after_the_restart() {
        let dir = std::env::temp_dir().join(format!("banyan-actions-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        {
            let (mut book, none) = ActionBook::open(Some(&dir), 0);
            assert!(none.is_empty());
            book.start(record("00000000000000b1", &["cn1", "cn2"]));
            book.answer("00000000000000b1", "cn1", Ok(ok()));
            book.start(record("00000000000000b2", &["cn1"]));
            book.finish("00000000000000b2", 20);
        }
        let (book, interrupted) = ActionBook::open(Some(&dir), 99);
        assert_eq!(interrupted.len(), 1);
        let r = book.get("00000000000000b1").unwrap();
        assert_eq!(r.state, ActionState::Interrupted);
        assert_eq!(r.ended_ms, Some(99));
        // What was answered before the restart is only as far as it was written: at the start.
        assert_eq!(r.targets["cn2"].state, TargetPhase::Unreachable);
        assert_eq!(
            book.get("00000000000000b2").unwrap().state,
            ActionState::Done
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_cancelled_action_ends_cancelled() {
        let (mut book, _) = ActionBook::open(None, 0);
        book.start(record("00000000000000c1", &["cn1", "cn2"]));
        assert_eq!(
            book.request_cancel("00000000000000c1").unwrap(),
            vec!["cn1".to_string(), "cn2".to_string()]
        );
        let mut cancelled = ok();
        cancelled.ok = false;
        cancelled.summary = "cancelled after 1.2s".into();
        book.answer("00000000000000c1", "cn1", Ok(cancelled));
        let r = book.finish("00000000000000c1", 5).unwrap();
        assert_eq!(r.state, ActionState::Cancelled);
        assert_eq!(r.targets["cn1"].state, TargetPhase::Cancelled);
        assert_eq!(r.targets["cn2"].state, TargetPhase::Cancelled);
    }
}

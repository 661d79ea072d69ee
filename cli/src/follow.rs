//! Following a running action: long polls of `GET /actions/ID?wait_ms=&since=` until it is over,
//! with a progress bar on a terminal or one line per finished target on stderr otherwise, and
//! Ctrl-C handled: on a terminal it asks whether to cancel the action; elsewhere it detaches and
//! says how to follow the action later. A second Ctrl-C leaves at once.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::Value;

use crate::actions::{progress_line, Action, TargetState};
use crate::api::{segment, CliError, Client, EXIT_INTERRUPTED};
use crate::escape::printable;

/// How long the root may hold one poll: short, so that Ctrl-C is seen within it.
const WAIT_MS: u64 = 1_000;

/// What Ctrl-C does while following.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnInterrupt {
    /// On a terminal, ask whether to cancel the action (`exec`, `service`); else detach.
    AskToCancel,
    /// Stop following; the action goes on (`actions ID --watch`).
    Detach,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A bar on stderr (stdout and stderr are terminals).
    Bar,
    /// One line per finished target on stderr.
    Lines,
}

impl Progress {
    /// A bar when both stdout and stderr are terminals, plain lines otherwise.
    pub fn detect() -> Progress {
        if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() {
            Progress::Bar
        } else {
            Progress::Lines
        }
    }
}

/// Ctrl-C caught while following (registered for the follow only, so other commands keep the
/// default behaviour). The second Ctrl-C exits at once with status 130.
struct Interrupts {
    flag: Arc<AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl Interrupts {
    fn register() -> Interrupts {
        let flag = Arc::new(AtomicBool::new(false));
        let mut ids = Vec::new();
        // Order matters: the shutdown hook sees the flag as it was before this Ctrl-C.
        if let Ok(id) = signal_hook::flag::register_conditional_shutdown(
            signal_hook::consts::SIGINT,
            i32::from(EXIT_INTERRUPTED),
            flag.clone(),
        ) {
            ids.push(id);
        }
        if let Ok(id) = signal_hook::flag::register(signal_hook::consts::SIGINT, flag.clone()) {
            ids.push(id);
        }
        Interrupts { flag, ids }
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    fn clear(&self) {
        self.flag.store(false, Ordering::SeqCst);
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

/// Prints each target's output as it comes, every line prefixed with the node's name (stdout
/// lines on stdout, stderr lines on stderr), as `clush` without `-b` does: the lines a running
/// target streams, then the rest of its output when its result comes.
#[derive(Debug, Default)]
pub struct LivePrinter {
    /// Per node: how much of its stdout and stderr was printed.
    printed: BTreeMap<String, (usize, usize)>,
}

impl LivePrinter {
    /// The new lines of `action`, as (stdout text, stderr text), and remembers them as printed.
    pub fn take(&mut self, action: &Action) -> (String, String) {
        let (mut out, mut err) = (String::new(), String::new());
        for (name, t) in &action.targets {
            let (stdout, stderr) = match (&t.result, &t.live) {
                (Some(r), _) => (r.stdout.as_str(), r.stderr.as_str()),
                (None, Some(l)) => (l.stdout.as_str(), l.stderr.as_str()),
                (None, None) => continue,
            };
            let done = self.printed.entry(name.clone()).or_default();
            prefix_new_lines(name, stdout, &mut done.0, &mut out);
            prefix_new_lines(name, stderr, &mut done.1, &mut err);
        }
        (out, err)
    }
}

/// Appends the lines of `text` past `*from`, each prefixed with `node`, and moves `*from` to its
/// end. Text that does not extend what was printed (it cannot, but a root may be odd) is skipped.
fn prefix_new_lines(node: &str, text: &str, from: &mut usize, to: &mut String) {
    let Some(new) = text.get(*from..) else {
        return;
    };
    for line in new.lines() {
        to.push_str(&printable(node));
        to.push_str(": ");
        to.push_str(&printable(line));
        to.push('\n');
    }
    *from = text.len();
}

/// Follows action `id` until it is over; returns its last state, parsed and as JSON. With
/// `live`, the targets' output is printed as it comes.
pub fn follow(
    client: &Client,
    id: &str,
    progress: Progress,
    on_interrupt: OnInterrupt,
    mut live: Option<&mut LivePrinter>,
) -> Result<(Action, Value), CliError> {
    let interrupts = Interrupts::register();
    let path = format!("/actions/{}", segment(id));
    let mut since = 0u64;
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut bar: Option<ProgressBar> = None;
    let mut cancelling = false;
    loop {
        let asked = Instant::now();
        let value = client
            .get_query(
                &path,
                &[
                    ("wait_ms", &WAIT_MS.to_string()),
                    ("since", &since.to_string()),
                ],
            )
            .inspect_err(|_| {
                if let Some(b) = &bar {
                    b.abandon();
                }
            })?;
        let action: Action =
            serde_json::from_value(value.clone()).map_err(|e| CliError::BadAnswer {
                url: format!("{}{path}", client.base()),
                status: 200,
                detail: e.to_string(),
            })?;
        let bar_ref = match progress {
            Progress::Bar => Some(&*bar.get_or_insert_with(|| new_bar(action.targets.len()))),
            Progress::Lines => None,
        };
        if let Some(printer) = live.as_deref_mut() {
            let (out, err) = printer.take(&action);
            let show = || {
                print!("{out}");
                let _ = std::io::stdout().flush();
                eprint!("{err}");
            };
            match bar_ref {
                Some(b) => b.suspend(show),
                None => show(),
            }
        }
        for (name, t) in &action.targets {
            if t.state == TargetState::Pending || !seen.insert(name.clone()) {
                continue;
            }
            let line = progress_line(name, t);
            match bar_ref {
                // On the bar only failures are worth a line of their own.
                Some(b) if t.state != TargetState::Ok => b.println(line),
                Some(_) => {}
                None => eprintln!("{line}"),
            }
        }
        if let Some(b) = bar_ref {
            b.set_position(seen.len() as u64);
            let failed = action
                .targets
                .values()
                .filter(|t| !matches!(t.state, TargetState::Ok | TargetState::Pending))
                .count();
            b.set_message(if failed > 0 {
                format!("{failed} not ok")
            } else {
                String::new()
            });
        }
        if action.is_over() {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            return Ok((action, value));
        }
        if interrupts.is_set() {
            let pending = action.pending();
            let ask = on_interrupt == OnInterrupt::AskToCancel
                && !cancelling
                && std::io::stdin().is_terminal()
                && std::io::stderr().is_terminal();
            if !ask {
                if let Some(b) = &bar {
                    b.abandon();
                }
                return Err(CliError::Detached {
                    id: id.to_string(),
                    pending,
                });
            }
            let question = format!(
                "cancel action {id} on {pending} node{}? [y/N] (Ctrl-C again leaves it running) ",
                if pending == 1 { "" } else { "s" }
            );
            let yes = match &bar {
                Some(b) => b.suspend(|| ask_yes(&question)),
                None => ask_yes(&question),
            };
            interrupts.clear();
            if yes {
                let r = client.delete(&path)?;
                cancelling = true;
                let line = format!(
                    "cancelling action {id} ({})",
                    r["state"].as_str().unwrap_or("asked")
                );
                match &bar {
                    Some(b) => b.println(line),
                    None => eprintln!("{line}"),
                }
            }
        }
        // A root that answers at once without a change must not make this loop spin.
        if action.version <= since && asked.elapsed() < Duration::from_millis(100) {
            std::thread::sleep(Duration::from_millis(200));
        }
        since = since.max(action.version);
    }
}

fn new_bar(len: usize) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{bar:30}] {pos}/{len} targets answered, {elapsed} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Asks a yes/no question on stderr and reads the answer from stdin; anything but `y`/`yes` is no.
fn ask_yes(question: &str) -> bool {
    let mut err = std::io::stderr();
    let _ = write!(err, "\n{question}");
    let _ = err.flush();
    let mut answer = String::new();
    if std::io::stdin().lock().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::{Live, Target};
    use banyan_protocol::action::NodeResult;

    fn action(targets: Vec<(&str, Target)>) -> Action {
        Action {
            targets: targets
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect(),
            ..Action::default()
        }
    }

    #[test]
    fn each_line_is_printed_once_with_its_node() {
        let mut p = LivePrinter::default();
        let running = Target {
            live: Some(Live {
                stdout: "a\n".into(),
                stderr: "warn\n".into(),
            }),
            ..Target::default()
        };
        let (out, err) = p.take(&action(vec![
            ("cn1", running.clone()),
            ("cn2", Target::default()),
        ]));
        assert_eq!(out, "cn1: a\n");
        assert_eq!(err, "cn1: warn\n");
        assert_eq!(
            p.take(&action(vec![("cn1", running)])),
            (String::new(), String::new())
        );
        // The result: the rest, the last line without its newline included.
        let done = Target {
            result: Some(NodeResult {
                stdout: "a\nb\nc".into(),
                stderr: "warn\n".into(),
                ..NodeResult::default()
            }),
            ..Target::default()
        };
        let (out, err) = p.take(&action(vec![("cn1", done)]));
        assert_eq!(out, "cn1: b\ncn1: c\n");
        assert_eq!(err, "");
    }
}

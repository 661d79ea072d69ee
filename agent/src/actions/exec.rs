//! `exec`: runs an operator's command on this node.
//!
//! The command runs without a shell (its arguments reach the program as they are) unless the
//! task asks for one (`/bin/sh -c "<argv joined by spaces>"`); as root, or as the task's `user`
//! with that user's uid, gid, groups and home; in a session of its own with a clean environment
//! and stdin from `/dev/null` (see [`super::child`]). Both output streams are read at once, each
//! kept up to the task's `max_output` bytes and drained past it so the command never blocks.
//!
//! Ends: exit status 0 is success; at the deadline or on cancel its whole process group is sent
//! SIGTERM, then SIGKILL. A command that starts a daemon which keeps the command's stdout open
//! (`sleep 300 & echo started`) does not hold the action up: once the command itself has exited,
//! its output is read for [`super::child::PIPE_GRACE`] more and then no longer, and the summary
//! says so. Such daemons are left running, as clush and pdsh leave them: starting one was the
//! command's purpose, and its later writes to the closed pipe are its own affair.
//!
//! A dry run runs nothing but still looks the user and the program up, so it fails where the
//! real run would fail before starting.

use super::child::{self, End, Identity, Launch, Output, CLEAN_PATH};
use super::{deadline_after, format_duration, quote_argv, BoxFuture, Executor, RunContext};
use crate::config::ExecConfig;
use banyan_protocol::action::{ExecTask, NodeResult, Task};
use std::os::unix::process::ExitStatusExt;

/// Carries out [`Task::Exec`].
pub struct Exec {
    enabled: bool,
}

impl Exec {
    pub fn new(cfg: &ExecConfig) -> Exec {
        Exec {
            enabled: cfg.enabled,
        }
    }

    async fn exec(&self, task: &ExecTask, mut ctx: RunContext) -> NodeResult {
        if !self.enabled {
            return NodeResult::refused(
                "exec actions are disabled on this node (agent.toml [exec] enabled = false)",
            );
        }
        let identity = match Identity::resolve(task.user.as_deref()).await {
            Ok(i) => i,
            Err(why) => return NodeResult::refused(why),
        };
        let (argv, shown, how) = if task.shell {
            let line = task.argv.join(" ");
            let argv = vec!["/bin/sh".to_string(), "-c".to_string(), line.clone()];
            (argv, line, "through /bin/sh -c")
        } else {
            (task.argv.clone(), quote_argv(&task.argv), "no shell")
        };
        let program = &argv[0];
        let detail = format!(
            "as {}, {how}, timeout {}",
            identity.name,
            format_duration(ctx.timeout)
        );
        if !ctx.for_real {
            if child::find_program(program).is_none() {
                return NodeResult::refused(format!(
                    "would fail: {program} is not an executable found in PATH={CLEAN_PATH}"
                ));
            }
            return NodeResult {
                ok: true,
                summary: format!("would run: {shown} ({detail})"),
                ..NodeResult::default()
            };
        }
        if ctx.is_cancelled() {
            return NodeResult::refused("cancelled before it started");
        }
        tracing::info!(user = %identity.name, shell = task.shell, "exec: {shown}");
        let launch = Launch {
            argv: &argv,
            identity: &identity,
            cwd: identity.workdir(),
            output: match ctx.output.take() {
                Some(tap) if task.stream => Output::Stream(task.max_output, tap),
                _ => Output::Capture(task.max_output),
            },
        };
        let done = match child::run(launch, deadline_after(ctx.timeout), &mut ctx.cancel).await {
            Ok(f) => f,
            Err(why) => {
                return NodeResult::refused(format!(
                    "cannot run {program} as {}: {why}",
                    identity.name
                ))
            }
        };
        let exit = done.status.and_then(|s| s.code());
        let signal = done.status.and_then(|s| s.signal());
        let mut summary = match done.end {
            End::TimedOut => format!("timed out after {}", format_duration(ctx.timeout)),
            End::Cancelled => "cancelled".to_string(),
            End::Exited => match (exit, signal) {
                (Some(code), _) => format!("exit {code}"),
                (None, Some(sig)) => format!("killed by signal {sig}{}", signal_name(sig)),
                (None, None) => "exited, status unknown".to_string(),
            },
        };
        if done.truncated {
            summary.push_str(&format!(
                "; output truncated to {} bytes per stream",
                task.max_output
            ));
        }
        if done.left_open {
            summary.push_str(
                "; output not read after the command exited: processes it started keep it open",
            );
        }
        NodeResult {
            ok: done.end == End::Exited && exit == Some(0),
            summary,
            exit,
            signal,
            stdout: String::from_utf8_lossy(&done.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&done.stderr).into_owned(),
            truncated: done.truncated,
            ..NodeResult::default()
        }
    }
}

impl Executor for Exec {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn run<'a>(&'a self, task: &'a Task, ctx: RunContext) -> BoxFuture<'a> {
        Box::pin(async move {
            match task {
                Task::Exec(t) => self.exec(t, ctx).await,
                other => NodeResult::refused(format!("not an exec task: {}", other.kind())),
            }
        })
    }
}

/// ` (SIGKILL)`, or nothing for a number that is no signal.
fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| format!(" ({})", s.as_str()))
        .unwrap_or_default()
}

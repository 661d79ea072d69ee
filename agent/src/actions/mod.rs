//! Action executors: how an agent carries out an operator's [`Task`] on its own node.
//!
//! Each kind of task is one small component in its own file behind the [`Executor`] trait, and
//! [`default_executors`] is the one place that lists them (as `collect/` does for collectors):
//! adding a kind of action is adding a file and a line there. [`Executors`] dispatches a task to
//! the executor of its kind and always answers a [`NodeResult`]: a task that is invalid, of an
//! unknown kind or refused by this node's config (`agent.toml`, [`crate::config`]) is answered
//! with [`NodeResult::refused`], never with a panic or an error the caller must turn into one.
//!
//! What is not here: checking the order's seal, targets, expiry and replay (the caller does that
//! before calling [`Executors::run`]); [`Task::Cancel`], which the caller carries out by flipping
//! the cancel signal of the running order's [`RunContext`] (an executor never sees it: it names
//! another order, which only the caller's table of running orders knows).
//!
//! Futures are `Send + 'static`: [`Executors::run`] can be given to `tokio::spawn` on the agent's
//! current-thread runtime (no `LocalSet` needed) as well as awaited in place. Dropping the future
//! kills the process group of a command it is running, so no command outlives an abandoned action
//! (daemons a finished command deliberately left behind are not touched; see [`exec`]).
//!
//! Conventions every executor follows:
//! - `ctx.for_real == false` changes nothing on the node, but checks all it can (users exist,
//!   units are allowed, programs exist) so that a dry run proves what the real run would meet.
//! - Everything it runs is bounded by `ctx.timeout` and stops promptly when `ctx.cancel` turns
//!   true; children run in a session of their own with a clean environment ([`child`]).

pub mod bmc;
mod child;
pub mod exec;
pub mod service;
pub mod stream;
pub mod vm;
mod vm_console;

pub use stream::OutputTap;

use crate::config::ActionsConfig;
use banyan_protocol::action::{NodeResult, Task};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What an executor's `run` returns: a boxed future that may move between threads.
pub type BoxFuture<'a> = Pin<Box<dyn Future<Output = NodeResult> + Send + 'a>>;

/// One kind of action ("exec", "service", ...), carried out on this node.
pub trait Executor: Send + Sync {
    /// The [`Task::kind`] this executor carries out.
    fn kind(&self) -> &'static str;
    /// Carries out `task` (always of this executor's kind: [`Executors`] dispatches by kind, and
    /// an executor answers a task of another kind with a refusal). `dry_run` and `duration_ms`
    /// of the answer are filled in by [`Executors::run`].
    fn run<'a>(&'a self, task: &'a Task, ctx: RunContext) -> BoxFuture<'a>;
}

/// How one task is to be carried out.
#[derive(Debug, Clone)]
pub struct RunContext {
    /// False: answer what would be done, change nothing.
    pub for_real: bool,
    /// Longest time the task may take, from the moment it starts.
    pub timeout: Duration,
    /// Turns `true` to cancel. A sender dropped without sending never cancels.
    pub cancel: watch::Receiver<bool>,
    /// Where a task that streams its output (`exec` with `stream`) copies it while it runs.
    pub output: Option<OutputTap>,
    /// A console session's ways in and out (`vm` console orders run for real), made by the shell.
    pub console: Option<ConsoleLink>,
}

/// Keys for a console session, as the shell admitted them: bytes to type, and whether the root
/// closes the session after them (empty bytes, not closing: a keep-alive).
pub type ConsoleKeys = (Vec<u8>, bool);

/// A chunk of what a guest printed and the bytes dropped before it.
pub type ConsoleChunk = (Vec<u8>, u64);

/// What the shell gives a console session: the keys the root sends (taken once, by the
/// executor) and where to put what the guest prints (chunks of at most
/// [`banyan_protocol::console::MAX_CONSOLE_CHUNK`] bytes and the bytes dropped before each;
/// bounded, so a slow tree drops output rather than the agent's memory).
#[derive(Debug, Clone)]
pub struct ConsoleLink {
    pub keys: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<ConsoleKeys>>>>,
    pub output: tokio::sync::mpsc::Sender<ConsoleChunk>,
}

impl RunContext {
    /// A context and the sender that cancels it (`cancel.send_replace(true)`).
    pub fn new(for_real: bool, timeout: Duration) -> (RunContext, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        (
            RunContext {
                for_real,
                timeout,
                cancel: rx,
                output: None,
                console: None,
            },
            tx,
        )
    }

    /// Whether cancellation was asked already.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }
}

/// Resolves when the task is cancelled; never, if its sender is gone without cancelling.
pub(crate) async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// When a task started now with `timeout` must be done (far in the future for absurd timeouts,
/// rather than an overflow).
pub(crate) fn deadline_after(timeout: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// The executors of this node, built from its config, listed in one place.
pub fn default_executors(cfg: &ActionsConfig, state_dir: Option<&Path>) -> Vec<Arc<dyn Executor>> {
    vec![
        Arc::new(exec::Exec::new(&cfg.exec)),
        Arc::new(service::Service::new(&cfg.service, state_dir)),
        Arc::new(bmc::Bmc::new(&cfg.bmc)),
        // Inside the agent's runtime this also opens the guests left by an earlier run and
        // starts their tick (see `vm`).
        Arc::new(vm::Vm::new(&cfg.vm, state_dir)),
    ]
}

/// Dispatches tasks to executors. Cheap to clone (shared), so each running order can hold one.
#[derive(Clone)]
pub struct Executors {
    executors: Arc<[Arc<dyn Executor>]>,
}

impl Executors {
    /// The [`default_executors`] for this node's config; `state_dir` (the agent's, when it has
    /// one) keeps the logs of the daemons that service actions start.
    pub fn new(cfg: &ActionsConfig, state_dir: Option<&Path>) -> Executors {
        Executors::with(default_executors(cfg, state_dir))
    }

    /// Given executors (tests, or a node with fewer kinds of action).
    pub fn with(executors: Vec<Arc<dyn Executor>>) -> Executors {
        Executors {
            executors: executors.into(),
        }
    }

    /// The kinds of task this node carries out.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.executors.iter().map(|e| e.kind()).collect()
    }

    /// Carries out `task` and answers what happened (or would, in a dry run). Never panics on
    /// any task; see the module doc for what the caller does before and around it.
    pub fn run(
        &self,
        task: Task,
        ctx: RunContext,
    ) -> impl Future<Output = NodeResult> + Send + 'static {
        let executor = self
            .executors
            .iter()
            .find(|e| e.kind() == task.kind())
            .cloned();
        async move {
            let started = Instant::now();
            let for_real = ctx.for_real;
            let mut result = if let Err(why) = task.validate() {
                NodeResult::refused(why)
            } else if let Task::Cancel { .. } = task {
                NodeResult::refused("cancel is carried out by the agent, not by an executor")
            } else if let Some(executor) = executor {
                tracing::debug!(kind = task.kind(), for_real, "action starts");
                executor.run(&task, ctx).await
            } else {
                NodeResult::refused(format!(
                    "this node does not carry out {} actions",
                    task.kind()
                ))
            };
            result.dry_run = !for_real;
            result.duration_ms = started.elapsed().as_millis() as u64;
            result
        }
    }
}

/// A word as a POSIX shell would read it back: bare when it is plain, else in single quotes.
pub fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// A command line for humans (and for pasting into a shell).
pub fn quote_argv(argv: &[String]) -> String {
    argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// `30s`, `1.5s`, `250ms`, `2m`, `1h30m`: as operators write durations.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    if d.subsec_millis() != 0 && secs < 60 {
        return format!("{:.1}s", d.as_secs_f64());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use banyan_protocol::action::{ExecTask, ServiceOp, ServiceTask};

    #[test]
    fn words_are_quoted_only_when_a_shell_would_read_them_specially() {
        assert_eq!(quote("uname"), "uname");
        assert_eq!(quote("/etc/nova/nova.conf"), "/etc/nova/nova.conf");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote_argv(&["echo".into(), "a b".into()]), "echo 'a b'");
    }

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }

    struct Fixed;
    impl Executor for Fixed {
        fn kind(&self) -> &'static str {
            "exec"
        }
        fn run<'a>(&'a self, _task: &'a Task, _ctx: RunContext) -> BoxFuture<'a> {
            Box::pin(async {
                NodeResult {
                    ok: true,
                    summary: "done".into(),
                    ..NodeResult::default()
                }
            })
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(f),
            Err(e) => panic!("runtime: {e}"),
        }
    }

    #[test]
    fn tasks_go_to_the_executor_of_their_kind_and_others_are_refused() {
        let executors = Executors::with(vec![Arc::new(Fixed)]);
        let exec = Task::Exec(ExecTask {
            argv: vec!["true".into()],
            shell: false,
            user: None,
            max_output: 10,
            stream: false,
        });
        let (ctx, _cancel) = RunContext::new(false, Duration::from_secs(1));
        let r = block_on(executors.run(exec, ctx.clone()));
        assert!(r.ok && r.dry_run && r.summary == "done", "{r:?}");

        let service = Task::Service(ServiceTask {
            op: ServiceOp::Status,
            units: vec!["sshd".into()],
        });
        let r = block_on(executors.run(service, ctx.clone()));
        assert!(
            !r.ok && r.summary.contains("does not carry out service"),
            "{r:?}"
        );

        let r = block_on(executors.run(
            Task::Cancel {
                id: "0123456789abcdef".into(),
            },
            ctx.clone(),
        ));
        assert!(!r.ok && r.summary.contains("cancel"), "{r:?}");

        let invalid = Task::Exec(ExecTask {
            argv: vec![],
            shell: false,
            user: None,
            max_output: 10,
            stream: false,
        });
        let r = block_on(executors.run(invalid, ctx));
        assert!(!r.ok && r.summary == "no command given", "{r:?}");
    }

    #[test]
    fn the_run_future_can_be_spawned() {
        fn is_send_static<T: Send + 'static>(_: &T) {}
        let executors = Executors::new(&ActionsConfig::default(), None);
        let (ctx, _cancel) = RunContext::new(false, Duration::from_secs(1));
        let fut = executors.run(
            Task::Cancel {
                id: "0123456789abcdef".into(),
            },
            ctx,
        );
        is_send_static(&fut);
        assert_eq!(executors.kinds(), ["exec", "service", "bmc", "vm"]);
    }
}

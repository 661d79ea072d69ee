//! A guest's serial console through the tree with a real root, a real agent on a test host and
//! the `banyan` CLI: `banyan vm console HOST:NAME` types a command into the guest's shell and
//! reads its answer; a second client watches read-only and its keys are refused; a console to a
//! guest that does not exist is one clear error; the audit log has the console's events and
//! the order that opened it; the last client leaving closes the session on the host.
//!
//! The guest is `scripts/lib/guest image target/tmp/banyan-guest` (cached; scripts/test builds it).
//! No wall-clock time is asserted: the bounds only turn a hang into a failure.

use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use banyan_tests::cluster::{banyan_cli, with_cluster, Cluster};
use banyan_tests::guest::{image, Reaper, MARKER};

/// Agents joining on a busy machine.
const FORM: Duration = Duration::from_secs(45);
/// A TCG guest booting (5-8 s alone), and a console's round trips: a liveness bound.
const LIVENESS: Duration = Duration::from_secs(120);

fn cli(c: &Cluster, args: &[&str]) -> Result<String> {
    let (out, ok) = banyan_cli(c, args)?;
    ensure!(ok, "banyan {}: failed:\n{out}", args.join(" "));
    Ok(out)
}

/// A running `banyan vm console`: its stdin (a pipe), and everything it printed so far.
struct ConsoleClient {
    child: Child,
    stdin: ChildStdin,
    seen: Arc<Mutex<String>>,
}

impl ConsoleClient {
    fn start(c: &Cluster, token: &str, guest: &str, extra: &[&str]) -> Result<ConsoleClient> {
        use std::io::Read;
        let cli = banyan_tests::support::binaries()?
            .root
            .parent()
            .context("the binaries' directory")?
            .join("banyan");
        let mut child = Command::new(&cli)
            .args([
                "--root",
                &format!("http://{}", c.http_addr()),
                "--token",
                token,
            ])
            .args(["vm", "console", guest])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", cli.display()))?;
        let stdin = child.stdin.take().context("stdin")?;
        let seen = Arc::new(Mutex::new(String::new()));
        for mut stream in [
            Box::new(child.stdout.take().context("stdout")?) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().context("stderr")?),
        ] {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = seen.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        Ok(ConsoleClient { child, stdin, seen })
    }

    fn seen(&self) -> String {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether the client printed a line that is exactly `line` (the guest's answer, not the
    /// echo of the command that asked for it).
    fn has_line(&self, line: &str) -> bool {
        self.seen().split(['\r', '\n']).any(|l| l.trim() == line)
    }

    /// Waits until `check` holds of the client (a liveness bound, not a timing).
    fn wait(&self, what: &str, check: impl Fn(&ConsoleClient) -> bool) -> Result<()> {
        let deadline = Instant::now() + LIVENESS;
        while Instant::now() < deadline {
            if check(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the console never printed {what}; it printed {:?}",
            self.seen()
        )
    }

    fn wait_for(&self, want: &str) -> Result<()> {
        self.wait(&format!("{want:?}"), |c| c.seen().contains(want))
    }

    fn type_(&mut self, keys: &str) -> Result<()> {
        use std::io::Write;
        self.stdin.write_all(keys.as_bytes())?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Types the escape and waits for the client to exit; whether it exited 0.
    fn leave(mut self) -> Result<bool> {
        self.type_("\n&.")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the console did not leave on &.: {:?}", self.seen())
    }
}

impl Drop for ConsoleClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_guests_console_through_the_tree_types_reads_and_is_audited() -> Result<()> {
    let (kernel, initrd) = image()?;
    with_cluster(1, |c| {
        let _reaper = Reaper(c.dir().to_path_buf());
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let token = c.admin_token().to_string();
        let host = names[0].clone();
        let guest = format!("{host}:con");
        cli(
            c,
            &[
                "--token",
                &token,
                "vm",
                "launch",
                &host,
                "--name",
                "con",
                "--memory",
                "128M",
                "--accel",
                "tcg",
                "--kernel",
                &kernel,
                "--initrd",
                &initrd,
                "--for-real",
            ],
        )?;
        let deadline = Instant::now() + LIVENESS;
        loop {
            let out = cli(c, &["--token", &token, "vm", "logs", &guest])?;
            if out.contains(MARKER) {
                break;
            }
            if Instant::now() > deadline {
                bail!("{guest} did not print {MARKER:?} within {LIVENESS:?}:\n{out}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }

        // The writer types a command into the guest's shell and reads its answer.
        let mut writer = ConsoleClient::start(c, &token, &guest, &[])?;
        writer.wait_for("you may type")?;
        writer.type_("echo $((6*7))\n")?;
        writer.wait("the line 42", |w| w.has_line("42"))?;

        // A second client watches: it sees the writer's output, and its keys are refused.
        let mut reader = ConsoleClient::start(c, &token, &guest, &[])?;
        reader.wait_for("read-only: admin is typing")?;
        reader.type_("echo $((7*8))\n")?;
        reader.wait_for(&format!("[banyan: read-only: admin is typing on {guest}]"))?;
        writer.type_("echo $((5*5))\n")?;
        writer.wait("the line 25", |w| w.has_line("25"))?;
        reader.wait("the line 25", |r| r.has_line("25"))?;
        ensure!(
            !writer.has_line("56") && !reader.has_line("56"),
            "a read-only client's keys reached the guest: {:?}",
            writer.seen()
        );
        ensure!(writer.leave()?, "the writer's console did not exit 0");
        ensure!(reader.leave()?, "the reader's console did not exit 0");

        // A guest that does not exist: one clear error, a failing exit status.
        let (out, ok) = banyan_cli(
            c,
            &["--token", &token, "vm", "console", &format!("{host}:nope")],
        )?;
        ensure!(
            !ok && out.contains("no guest named nope"),
            "a console to a missing guest: {out}"
        );

        // The host closed the session when the last client left: its order ends with why.
        let audit = std::fs::read_to_string(c.root_state().join("audit.jsonl"))?;
        let order = audit
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["event"] == "action.request"
                    && v["args"]["task"]["vm"]["op"]["console"]["name"] == "con"
            })
            .and_then(|v| v["action"].as_str().map(str::to_string))
            .with_context(|| format!("no console order in the audit log:\n{audit}"))?;
        let deadline = Instant::now() + LIVENESS;
        loop {
            let v = c.http_get_admin(&format!("/actions/{order}"))?;
            let summary = v["targets"][&host]["result"]["summary"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if v["state"] == "done" {
                ensure!(
                    summary.contains("console of con closed: closed by the root"),
                    "the console's order: {v}"
                );
                break;
            }
            if Instant::now() > deadline {
                bail!("the console's order never ended: {v}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let audit = std::fs::read_to_string(c.root_state().join("audit.jsonl"))?;
        ensure!(
            audit
                .lines()
                .any(|l| l.contains("\"action.outcome\"") && l.contains(&order)),
            "the console's order has no outcome in the audit log:\n{audit}"
        );
        for (event, role) in [
            ("console.start", "writer"),
            ("console.start", "reader"),
            ("console.end", "writer"),
            ("console.end", "reader"),
        ] {
            ensure!(
                audit.lines().any(|l| l.contains(&format!("\"{event}\""))
                    && l.contains(&format!("\"role\":\"{role}\""))
                    && l.contains("\"guest\":\"con\"")),
                "no {event} of the {role} in the audit log:\n{audit}"
            );
        }
        ensure!(
            audit
                .lines()
                .filter(|l| l.contains("\"console.request\"") && l.contains("\"guest\":\"con\""))
                .count()
                == 2,
            "not one console.request per client:\n{audit}"
        );
        ensure!(
            audit
                .lines()
                .filter(|l| l.contains("\"action.request\"") && l.contains("\"console\""))
                .count()
                == 2,
            "not one console order for the session and one for the missing guest:\n{audit}"
        );
        ensure!(
            audit
                .lines()
                .any(|l| l.contains("\"console.refused\"") && l.contains("no guest named nope")),
            "the missing guest's refusal is not audited:\n{audit}"
        );

        cli(
            c,
            &[
                "--token",
                &token,
                "vm",
                "stop",
                &guest,
                "--timeout",
                "20s",
                "--for-real",
            ],
        )?;
        Ok(())
    })
}

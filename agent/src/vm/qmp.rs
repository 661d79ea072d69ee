//! A small client of QEMU's machine protocol (QMP) over its unix socket: the greeting, capability
//! negotiation, and one command at a time (`query-status`, `system_powerdown`, `quit`).
//!
//! QMP is line-delimited JSON. Asynchronous events (`{"event": ...}`) may arrive at any time, also
//! between a command and its reply, so a reply is the first line holding `return` or `error`;
//! events read on the way are kept for the caller. Every read is bounded by the deadline of the
//! call and every line by [`MAX_LINE`]: a QEMU that hangs, or anything else listening on the socket,
//! gives an error, never a stall or a panic.

use serde_json::{json, Value};
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest line accepted (QEMU's answers to the commands used here are a few hundred bytes).
pub const MAX_LINE: usize = 1 << 20;

/// What can go wrong talking to QMP.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QMP socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("QMP did not answer within {}s", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("QMP closed the connection")]
    Closed,
    #[error("QMP I/O: {0}")]
    Io(#[from] io::Error),
    #[error("QMP sent something that is not QMP: {0}")]
    Protocol(String),
    #[error("QMP refused {command}: {class}: {desc}")]
    Refused {
        command: String,
        class: String,
        desc: String,
    },
}

/// One negotiated QMP session.
pub struct Qmp {
    stream: UnixStream,
    buf: Vec<u8>,
    events: Vec<Value>,
    /// QEMU's version from the greeting, e.g. "10.0.2".
    pub version: String,
}

impl Qmp {
    /// Connects, reads the greeting and leaves negotiation mode, all within `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + timeout;
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        let mut qmp = Qmp {
            stream,
            buf: Vec::new(),
            events: Vec::new(),
            version: String::new(),
        };
        let greeting = qmp.read_message(deadline, timeout)?;
        let Some(hello) = greeting.get("QMP") else {
            return Err(QmpError::Protocol(format!(
                "expected the QMP greeting, got {}",
                short(&greeting)
            )));
        };
        let v = &hello["version"]["qemu"];
        qmp.version = format!(
            "{}.{}.{}",
            v["major"].as_u64().unwrap_or(0),
            v["minor"].as_u64().unwrap_or(0),
            v["micro"].as_u64().unwrap_or(0)
        );
        qmp.execute_until("qmp_capabilities", deadline, timeout)?;
        Ok(qmp)
    }

    /// Runs `command` (no arguments) and returns its `return` value.
    pub fn execute(&mut self, command: &str, timeout: Duration) -> Result<Value, QmpError> {
        self.execute_until(command, Instant::now() + timeout, timeout)
    }

    /// `query-status`: the run state ("running", "paused", "shutdown", ...).
    pub fn status(&mut self, timeout: Duration) -> Result<String, QmpError> {
        let r = self.execute("query-status", timeout)?;
        r.get("status")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| QmpError::Protocol(format!("query-status answered {}", short(&r))))
    }

    /// The events received so far (oldest first), handed over once.
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }

    fn execute_until(
        &mut self,
        command: &str,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Value, QmpError> {
        let mut line = json!({ "execute": command }).to_string();
        line.push('\n');
        self.stream
            .set_write_timeout(Some(remaining(deadline, timeout)?))?;
        self.stream.write_all(line.as_bytes()).map_err(|e| {
            if is_timeout(&e) {
                QmpError::Timeout(timeout)
            } else if is_closed(&e) {
                QmpError::Closed
            } else {
                QmpError::Io(e)
            }
        })?;
        loop {
            let msg = self.read_message(deadline, timeout)?;
            if let Some(r) = msg.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = msg.get("error") {
                return Err(QmpError::Refused {
                    command: command.to_string(),
                    class: e["class"].as_str().unwrap_or("?").to_string(),
                    desc: e["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
            if msg.get("event").is_some() {
                // Kept, bounded: a flood of events must not grow memory without end.
                if self.events.len() < 1024 {
                    self.events.push(msg);
                }
                continue;
            }
            return Err(QmpError::Protocol(format!("unexpected {}", short(&msg))));
        }
    }

    /// The next JSON object on the socket.
    fn read_message(&mut self, deadline: Instant, timeout: Duration) -> Result<Value, QmpError> {
        loop {
            if let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let text = line.trim_ascii();
                if text.is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_slice(text).map_err(|e| {
                    QmpError::Protocol(format!(
                        "bad JSON ({e}): {}",
                        String::from_utf8_lossy(&text[..text.len().min(120)])
                    ))
                })?;
                if !v.is_object() {
                    return Err(QmpError::Protocol(format!("not an object: {}", short(&v))));
                }
                return Ok(v);
            }
            if self.buf.len() > MAX_LINE {
                return Err(QmpError::Protocol(format!(
                    "a line longer than {MAX_LINE} bytes"
                )));
            }
            self.stream
                .set_read_timeout(Some(remaining(deadline, timeout)?))?;
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(QmpError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(QmpError::Timeout(timeout)),
                // A peer that closes with our command unread resets the connection.
                Err(e) if is_closed(&e) => return Err(QmpError::Closed),
                Err(e) => return Err(QmpError::Io(e)),
            }
        }
    }
}

/// The time left before `deadline`, never zero (a zero socket timeout means "block forever").
fn remaining(deadline: Instant, timeout: Duration) -> Result<Duration, QmpError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(QmpError::Timeout(timeout));
    }
    Ok(left.max(Duration::from_millis(1)))
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

/// A JSON value cut for an error message.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(120) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    const T: Duration = Duration::from_secs(5);
    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}}, "capabilities": []}}"#;

    /// A fake QMP server: sends `script` lines, reading one command line before each line that
    /// starts with '<' (the '<' is dropped).
    fn serve(name: &str, script: Vec<String>) -> (PathBuf, std::thread::JoinHandle<()>) {
        let dir = std::env::temp_dir().join(format!("banyan-qmp-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let h = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            for line in script {
                let out = match line.strip_prefix('<') {
                    Some(rest) => {
                        let mut cmd = String::new();
                        if r.read_line(&mut cmd).unwrap_or(0) == 0 {
                            return;
                        }
                        rest.to_string()
                    }
                    None => line,
                };
                if out == "SLEEP" {
                    std::thread::sleep(Duration::from_secs(2));
                    continue;
                }
                let _ = w.write_all(out.as_bytes());
            }
            std::thread::sleep(Duration::from_millis(200));
            let _ = std::fs::remove_dir_all(dir);
        });
        (path, h)
    }

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn negotiates_and_skips_events_before_a_reply() {
        let (p, h) = serve(
            "events",
            lines(&[
                &format!("{GREETING}\n"),
                "<{\"return\": {}}\n",
                "<{\"event\": \"POWERDOWN\"}\n{\"return\": {\"status\": \"running\", \"running\": true}}\n",
            ]),
        );
        let mut q = Qmp::connect(&p, T).unwrap();
        assert_eq!(q.version, "10.0.2");
        assert_eq!(q.status(T).unwrap(), "running");
        let ev = q.take_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0]["event"], "POWERDOWN");
        h.join().unwrap();
    }

    #[test]
    fn an_error_reply_names_the_command() {
        let (p, h) = serve(
            "error",
            lines(&[
                &format!("{GREETING}\n"),
                "<{\"return\": {}}\n",
                "<{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}}\n",
            ]),
        );
        let mut q = Qmp::connect(&p, T).unwrap();
        let e = q.execute("system_powerdown", T).unwrap_err().to_string();
        assert!(e.contains("system_powerdown") && e.contains("nope"), "{e}");
        h.join().unwrap();
    }

    #[test]
    fn broken_json_and_non_qmp_greetings_are_errors() {
        for (name, first) in [
            ("badjson", "{\"QMP\": {\n"),
            ("notqmp", "{\"hello\": 1}\n"),
            ("array", "[1,2]\n"),
            ("binary", "\u{0}\u{1}\u{ff}\n"),
        ] {
            let (p, h) = serve(name, lines(&[first]));
            let e = Qmp::connect(&p, T).err().expect("must fail");
            assert!(matches!(e, QmpError::Protocol(_)), "{name}: {e}");
            h.join().unwrap();
        }
    }

    #[test]
    fn a_silent_or_closing_peer_is_an_error_within_the_timeout() {
        let (p, h) = serve("silent", lines(&["SLEEP"]));
        let e = Qmp::connect(&p, Duration::from_millis(300)).err().unwrap();
        assert!(matches!(e, QmpError::Timeout(_)), "{e}");
        h.join().unwrap();
        let (p, h) = serve("closing", lines(&[&format!("{GREETING}\n")]));
        let e = Qmp::connect(&p, T).err().unwrap();
        assert!(matches!(e, QmpError::Closed), "{e}");
        h.join().unwrap();
    }

    #[test]
    fn an_endless_line_is_refused() {
        let long = "x".repeat(MAX_LINE + 10);
        let (p, h) = serve("long", vec![long]);
        let e = Qmp::connect(&p, T).err().unwrap();
        assert!(matches!(e, QmpError::Protocol(_)), "{e}");
        h.join().unwrap();
    }
}

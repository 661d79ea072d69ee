//! The audit log: every mutating request, allowed or refused, and every outcome, one JSON object a
//! line in `<state-dir>/audit.jsonl` (owner-only), on disk (`fsync`) before [`AuditLog::append`]
//! returns, so before the action it records is sent.
//!
//! # The chain
//!
//! Each line's `prev` is the hex SHA-256 of the previous line's exact bytes (without its newline),
//! 64 zeros for the first, and `seq` counts 1, 2, 3... [`verify`] walks the file and finds:
//! - an edited line `k`: line `k + 1`'s `prev` no longer matches it (reported at line `k`);
//! - a deleted line: a gap in `seq` (reported at the line after the hole);
//! - reordered or duplicated lines: `seq` not one more than the line before;
//! - a line that is not a record at all, e.g. cut in the middle.
//!
//! What no hash chain finds on its own is the loss of the whole tail, or an edit of the very last
//! line: the file is then a shorter, valid chain. Against that an outside anchor is needed, e.g.
//! the `(seq, hash)` of [`VerifyReport`] noted elsewhere and compared later. While the root runs,
//! [`AuditLog`] is that anchor: it keeps the last `seq`, hash and file length in memory, so a
//! truncation, an edit or a foreign append between two appends is refused by the next
//! [`AuditLog::append`] and reported by [`AuditLog::verify`]. Whoever can rewrite the whole file
//! can forge a new chain: this is tamper evidence, not a signature.
//!
//! # A torn last line
//!
//! A crash during an append can leave the file ending in part of a line (no newline). That record
//! was never acknowledged, so its action was never sent. [`AuditLog::open`] then says so in the
//! daemon's log, cuts those bytes off and appends an `audit.torn` record that holds them (their
//! length, SHA-256 and text, up to [`TORN_TEXT_MAX`] bytes) and continues the chain from the last
//! whole line. The file thus stays a valid chain of whole lines, and [`verify`] lists those records
//! in [`VerifyReport::torn_repairs`]; a file that still ends torn (the root has not started since
//! the crash) is reported in [`VerifyReport::torn_tail`], not as an error.
//!
//! # Secrets
//!
//! [`redact`] replaces the values of secret-looking keys in `args` and `outcome`;
//! [`AuditLog::append`] always applies it. Do not put secrets in the free-text fields.

use banyan_protocol::nodeset::NodeSet;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const AUDIT_FILE: &str = "audit.jsonl";
/// The `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The event that records a torn last line found at open.
pub const TORN_EVENT: &str = "audit.torn";
/// At most this many bytes of a torn line are kept as text in its `audit.torn` record.
pub const TORN_TEXT_MAX: usize = 4096;
/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";
/// Keys that contain one of these (case-insensitive) hold secrets. Broad on purpose: a redacted
/// harmless value costs less than a leaked password; name harmless fields without these words.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "key",
    "credential",
    "auth",
    "cookie",
    "private",
];

/// One line of the log.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// 1, 2, 3... in file order.
    pub seq: u64,
    /// Unix ms.
    pub time_ms: u64,
    /// Token name, or `-` when there was none.
    pub who: String,
    /// The caller's address.
    pub peer: String,
    /// `action.request`, `action.refused`, `action.outcome`, `token.create`, ...
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_real: Option<bool>,
    /// Folded node set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targets: Option<String>,
    #[serde(default)]
    pub args: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Hex SHA-256 of the previous line's bytes, [`GENESIS`] for the first.
    pub prev: String,
}

/// What to record; [`AuditLog::append`] numbers and chains it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AuditEvent {
    pub time_ms: u64,
    pub who: String,
    pub peer: String,
    pub event: String,
    pub action: Option<String>,
    pub for_real: Option<bool>,
    pub targets: Option<String>,
    pub args: Value,
    pub outcome: Option<Value>,
    pub reason: Option<String>,
}

impl AuditEvent {
    /// `who` is a token name, or `-` when the request had none.
    pub fn new(
        time_ms: u64,
        who: impl Into<String>,
        peer: impl Into<String>,
        event: impl Into<String>,
    ) -> AuditEvent {
        AuditEvent {
            time_ms,
            who: who.into(),
            peer: peer.into(),
            event: event.into(),
            ..AuditEvent::default()
        }
    }

    pub fn action(mut self, id: impl Into<String>) -> Self {
        self.action = Some(id.into());
        self
    }

    pub fn for_real(mut self, for_real: bool) -> Self {
        self.for_real = Some(for_real);
        self
    }

    /// Recorded folded (`n[1-4]`).
    pub fn targets(mut self, targets: &NodeSet) -> Self {
        self.targets = Some(targets.fold());
        self
    }

    pub fn args(mut self, args: Value) -> Self {
        self.args = args;
        self
    }

    pub fn outcome(mut self, outcome: Value) -> Self {
        self.outcome = Some(outcome);
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// Which records [`AuditLog::read`] answers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditFilter {
    /// Only records at or after this time (unix ms).
    pub since_ms: Option<u64>,
    /// Only this token's records.
    pub who: Option<String>,
    /// Only the last this many of the matching records.
    pub limit: Option<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// Whole lines checked.
    pub lines: usize,
    /// `seq` of the last line (0 for an empty log).
    pub last_seq: u64,
    /// Hash of the last line ([`GENESIS`] for an empty log): the anchor to note elsewhere.
    pub last_hash: String,
    /// Bytes after the last newline: an append cut short by a crash, not yet repaired by a start.
    pub torn_tail: Option<u64>,
    /// `seq` of the `audit.torn` records: torn lines repaired at a start.
    pub torn_repairs: Vec<u64>,
}

/// Where the chain breaks: `line` is 1-based (0 when the file cannot be read at all).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}")]
pub struct VerifyError {
    pub line: usize,
    pub what: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Io(String),
    /// The file does not end with a record this root can continue from.
    #[error("{0}")]
    Unusable(String),
    /// The file changed behind the root's back; appends are refused until it is looked at.
    #[error("{0}")]
    Tampered(String),
}

/// Replaces, in place, the value of every key that looks secret (see `SECRET_WORDS`: password,
/// secret, token, key, credential, ...; case-insensitive), at any depth, by `"<redacted>"`.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let k = k.to_ascii_lowercase();
                if SECRET_WORDS.iter().any(|w| k.contains(w)) {
                    *v = Value::String(REDACTED.to_string());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

fn hash_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> AuditError {
    AuditError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// The appending end of the log. One per root, behind a mutex.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    seq: u64,
    last_hash: String,
    /// What the file's length must be: anything else is someone else's doing.
    len: u64,
    dev_ino: (u64, u64),
    /// Set when the file was found changed, or a failed append could not be undone.
    broken: Option<String>,
    repaired: Option<AuditRecord>,
}

impl AuditLog {
    /// Opens `<state_dir>/audit.jsonl`, creating it (0600), and continues its chain from its last
    /// line. A torn last line is cut off and recorded (see the module documentation).
    pub fn open(state_dir: &Path) -> Result<AuditLog, AuditError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self::open_at(state_dir, now)
    }

    /// [`AuditLog::open`] with the time an `audit.torn` record would carry.
    pub fn open_at(state_dir: &Path, now_ms: u64) -> Result<AuditLog, AuditError> {
        let path = state_dir.join(AUDIT_FILE);
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err(&path, "open", e))?;
        if !existed {
            // Make the new file's name durable too.
            File::open(state_dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(state_dir, "sync", e))?;
        }
        let meta = file.metadata().map_err(|e| io_err(&path, "stat", e))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "the audit log is readable by others; it should be 0600");
        }
        let len = meta.len();
        let tail = Tail::read(&file, len).map_err(|e| io_err(&path, "read", e))?;
        let (seq, last_hash) = match &tail.last {
            None => (0, GENESIS.to_string()),
            Some(line) => {
                let rec: AuditRecord = serde_json::from_slice(line).map_err(|e| {
                    AuditError::Unusable(format!(
                        "the last line of {} is not an audit record ({e}); `banyan audit --verify` \
                         says more; move the file aside to start a new log",
                        path.display()
                    ))
                })?;
                (rec.seq, hash_hex(line))
            }
        };
        let mut log = AuditLog {
            path,
            file,
            seq,
            last_hash,
            len,
            dev_ino: (meta.dev(), meta.ino()),
            broken: None,
            repaired: None,
        };
        if let Some(torn) = tail.torn {
            log.repair(torn, now_ms)?;
        }
        Ok(log)
    }

    /// Cuts off a torn last line and records it in an `audit.torn` record.
    fn repair(&mut self, torn: Torn, now_ms: u64) -> Result<(), AuditError> {
        tracing::warn!(
            file = %self.path.display(),
            bytes = torn.len,
            after_seq = self.seq,
            "the audit log ends in a line cut short (a crash during an append?); it is moved into an audit.torn record"
        );
        self.file
            .set_len(torn.start)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| io_err(&self.path, "truncate the torn line of", e))?;
        self.len = torn.start;
        let event = AuditEvent::new(now_ms, "-", "-", TORN_EVENT)
            .args(serde_json::json!({
                "bytes": torn.len,
                "sha256": torn.sha256,
                "text": String::from_utf8_lossy(&torn.head),
            }))
            .reason(format!(
                "the log ended in a line cut short after seq {}, by a crash during an append: \
                 that record was never acknowledged; its bytes were removed from the file and are kept here",
                self.seq
            ));
        // A torn line is our own output, already redacted; the text is kept as it was.
        let rec = self.append_raw(event)?;
        self.repaired = Some(rec);
        Ok(())
    }

    /// The `audit.torn` record this open wrote, if the log ended torn.
    pub fn repaired(&self) -> Option<&AuditRecord> {
        self.repaired.as_ref()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `seq` and hash of the last line: the anchor (0 and [`GENESIS`] for an empty log).
    pub fn last(&self) -> (u64, &str) {
        (self.seq, &self.last_hash)
    }

    /// Redacts, numbers, chains and writes `event`, and returns once the line is on disk.
    pub fn append(&mut self, mut event: AuditEvent) -> Result<AuditRecord, AuditError> {
        redact(&mut event.args);
        if let Some(o) = event.outcome.as_mut() {
            redact(o);
        }
        self.append_raw(event)
    }

    fn append_raw(&mut self, event: AuditEvent) -> Result<AuditRecord, AuditError> {
        if let Some(why) = &self.broken {
            return Err(AuditError::Tampered(why.clone()));
        }
        self.check_unchanged()?;
        let rec = AuditRecord {
            seq: self.seq + 1,
            time_ms: event.time_ms,
            who: event.who,
            peer: event.peer,
            event: event.event,
            action: event.action,
            for_real: event.for_real,
            targets: event.targets,
            args: event.args,
            outcome: event.outcome,
            reason: event.reason,
            prev: self.last_hash.clone(),
        };
        // Compact JSON escapes every control character: the line holds no newline.
        let mut line = serde_json::to_vec(&rec)
            .map_err(|e| AuditError::Io(format!("cannot encode an audit record: {e}")))?;
        let hash = hash_hex(&line);
        line.push(b'\n');
        if let Err(e) = (&self.file)
            .write_all(&line)
            .and_then(|_| self.file.sync_data())
        {
            // Take back whatever part was written, so the file stays a chain of whole lines.
            let undone = self
                .file
                .set_len(self.len)
                .and_then(|_| self.file.sync_data());
            if let Err(e2) = undone {
                self.broken = Some(format!(
                    "an append to {} failed ({e}) and could not be undone ({e2}); restart the root",
                    self.path.display()
                ));
            }
            return Err(io_err(&self.path, "append to", e));
        }
        self.seq = rec.seq;
        self.last_hash = hash;
        self.len += line.len() as u64;
        Ok(rec)
    }

    /// Refuses to go on when the file at our path is not the one we wrote, as we left it.
    fn check_unchanged(&mut self) -> Result<(), AuditError> {
        let found = std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino(), m.len()))
            .map_err(|e| io_err(&self.path, "stat", e));
        let why = match found {
            Ok((dev, ino, _)) if (dev, ino) != self.dev_ino => format!(
                "{} was replaced by another file while the root ran",
                self.path.display()
            ),
            Ok((_, _, len)) if len != self.len => format!(
                "{} is {len} bytes but the root wrote {} through seq {}: it was {} while the root ran",
                self.path.display(),
                self.len,
                self.seq,
                if len < self.len { "truncated" } else { "appended to by someone else" }
            ),
            Ok(_) => return Ok(()),
            Err(e) => format!("{e}; was it removed while the root ran?"),
        };
        let why = format!("{why}; audited requests are refused until the log is checked (`banyan audit --verify`) and the root restarted");
        self.broken = Some(why.clone());
        Err(AuditError::Tampered(why))
    }

    /// The matching records, oldest first (with a limit: the newest `limit` of them). Lines that
    /// are not records are skipped here; [`verify`] reports them.
    pub fn read(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
        read(&self.path, filter)
    }

    /// [`verify`] on this log's file, and that it still ends where this root left it.
    pub fn verify(&self) -> Result<VerifyReport, VerifyError> {
        let report = verify(&self.path)?;
        if let Some(bytes) = report.torn_tail {
            return Err(VerifyError {
                line: report.lines + 1,
                what: format!("{bytes} bytes after the last whole line, written by someone else while the root ran"),
            });
        }
        if report.last_seq != self.seq || report.last_hash != self.last_hash {
            return Err(VerifyError {
                line: report.lines,
                what: format!(
                    "the log ends with seq {} but the root wrote through seq {}: its tail was truncated, \
                     or its last line edited, while the root ran",
                    report.last_seq, self.seq
                ),
            });
        }
        Ok(report)
    }
}

/// A file's last whole line and what follows it.
struct Tail {
    last: Option<Vec<u8>>,
    torn: Option<Torn>,
}

struct Torn {
    start: u64,
    len: u64,
    sha256: String,
    /// The first [`TORN_TEXT_MAX`] bytes.
    head: Vec<u8>,
}

impl Tail {
    fn read(file: &File, len: u64) -> std::io::Result<Tail> {
        let Some(nl) = rfind_newline(file, len)? else {
            // No newline: the whole file, if any, is one torn line.
            return Ok(Tail {
                last: None,
                torn: (len > 0).then(|| Torn::read(file, 0, len)).transpose()?,
            });
        };
        let torn = (nl + 1 < len)
            .then(|| Torn::read(file, nl + 1, len))
            .transpose()?;
        let start = rfind_newline(file, nl)?.map_or(0, |p| p + 1);
        let mut last = vec![0u8; usize::try_from(nl - start).unwrap_or(usize::MAX)];
        file.read_exact_at(&mut last, start)?;
        Ok(Tail {
            last: Some(last),
            torn,
        })
    }
}

impl Torn {
    fn read(file: &File, start: u64, end: u64) -> std::io::Result<Torn> {
        let mut hasher = Sha256::new();
        let mut head = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = start;
        while at < end {
            let n = buf
                .len()
                .min(usize::try_from(end - at).unwrap_or(usize::MAX));
            file.read_exact_at(&mut buf[..n], at)?;
            hasher.update(&buf[..n]);
            let keep = (TORN_TEXT_MAX - head.len()).min(n);
            head.extend_from_slice(&buf[..keep]);
            at += n as u64;
        }
        Ok(Torn {
            start,
            len: end - start,
            sha256: hex::encode(hasher.finalize()),
            head,
        })
    }
}

/// Offset of the last `\n` before `end`, reading backwards in chunks.
fn rfind_newline(file: &File, end: u64) -> std::io::Result<Option<u64>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut hi = end;
    while hi > 0 {
        let lo = hi.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(hi - lo) as usize];
        file.read_exact_at(chunk, lo)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

/// The matching records of the log at `path` (see [`AuditLog::read`]); no file is no records.
pub fn read(path: &Path, filter: &AuditFilter) -> Result<Vec<AuditRecord>, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, "open", e)),
    };
    let mut out = VecDeque::new();
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| io_err(path, "read", e))?;
        if n == 0 {
            break;
        }
        let Some(body) = line.strip_suffix(b"\n") else {
            break; // a torn tail
        };
        let Ok(rec) = serde_json::from_slice::<AuditRecord>(body) else {
            continue;
        };
        if filter.since_ms.is_some_and(|t| rec.time_ms < t)
            || filter.who.as_ref().is_some_and(|w| &rec.who != w)
        {
            continue;
        }
        out.push_back(rec);
        if filter.limit.is_some_and(|l| out.len() > l) {
            out.pop_front();
        }
    }
    Ok(out.into())
}

/// Checks the chain of the log at `path` (see the module documentation for what it finds and
/// what it cannot).
pub fn verify(path: &Path) -> Result<VerifyReport, VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError {
        line: 0,
        what: format!("cannot open {}: {e}", path.display()),
    })?;
    let mut reader = BufReader::new(file);
    let mut report = VerifyReport {
        lines: 0,
        last_seq: 0,
        last_hash: GENESIS.to_string(),
        torn_tail: None,
        torn_repairs: Vec::new(),
    };
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| VerifyError {
                line: report.lines + 1,
                what: format!("cannot read {}: {e}", path.display()),
            })?;
        if n == 0 {
            break;
        }
        let Some(body) = line.strip_suffix(b"\n") else {
            report.torn_tail = Some(n as u64);
            break;
        };
        let at = report.lines + 1;
        let rec: AuditRecord = serde_json::from_slice(body).map_err(|e| VerifyError {
            line: at,
            what: format!("not an audit record: {e}"),
        })?;
        let expected = report.last_seq + 1;
        if rec.seq != expected {
            let what = if rec.seq > expected {
                format!(
                    "seq {} follows seq {}: {} line(s) missing, or lines out of order, before this one",
                    rec.seq,
                    report.last_seq,
                    rec.seq - expected
                )
            } else {
                format!(
                    "seq {} follows seq {}: lines reordered or repeated",
                    rec.seq, report.last_seq
                )
            };
            return Err(VerifyError { line: at, what });
        }
        if rec.prev != report.last_hash {
            return Err(if at == 1 {
                VerifyError {
                    line: 1,
                    what: "the first line's prev is not 64 zeros: lines before it were removed"
                        .into(),
                }
            } else {
                VerifyError {
                    line: at - 1,
                    what: format!(
                        "this line does not hash to the prev that line {at} records: \
                         this line was edited, or line {at} was edited or moved here"
                    ),
                }
            });
        }
        if rec.event == TORN_EVENT {
            report.torn_repairs.push(rec.seq);
        }
        report.lines = at;
        report.last_seq = rec.seq;
        report.last_hash = hash_hex(body);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A fresh directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(what: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "banyan-audit-{what}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }

        fn log(&self) -> PathBuf {
            self.0.join(AUDIT_FILE)
        }

        fn lines(&self) -> Vec<String> {
            std::fs::read_to_string(self.log())
                .expect("read")
                .lines()
                .map(str::to_string)
                .collect()
        }

        fn write_lines(&self, lines: &[String]) {
            let mut text = lines.join("\n");
            text.push('\n');
            std::fs::write(self.log(), text).expect("write");
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn event(i: u64) -> AuditEvent {
        AuditEvent::new(1000 * i, "ops", "127.0.0.1:4000", "action.request")
            .action(format!("a{i}"))
            .for_real(i > 3)
            .targets(&NodeSet::parse("n[1-4]").expect("set"))
            .args(json!({"kind": "power", "op": "cycle"}))
    }

    /// A log of `n` records.
    fn filled(dir: &TempDir, n: u64) -> AuditLog {
        let mut log = AuditLog::open_at(&dir.0, 0).expect("open");
        for i in 1..=n {
            log.append(event(i)).expect("append");
        }
        log
    }

    #[test]
    fn appends_chain_and_reopen_continues() {
        let dir = TempDir::new("chain");
        let mut log = filled(&dir, 3);
        let lines = dir.lines();
        assert_eq!(lines.len(), 3);
        let first: AuditRecord = serde_json::from_str(&lines[0]).expect("record");
        assert_eq!(first.seq, 1);
        assert_eq!(first.prev, GENESIS);
        assert_eq!(first.targets.as_deref(), Some("n[1-4]"));
        let second: AuditRecord = serde_json::from_str(&lines[1]).expect("record");
        assert_eq!(second.prev, hash_hex(lines[0].as_bytes()));
        assert_eq!(log.last(), (3, hash_hex(lines[2].as_bytes()).as_str()));
        let rec = log
            .append(
                AuditEvent::new(9, "-", "10.0.0.1:1", "action.outcome").outcome(json!({"ok": 4})),
            )
            .expect("append");
        assert_eq!(rec.seq, 4);
        drop(log);

        let mut again = AuditLog::open_at(&dir.0, 0).expect("reopen");
        assert!(again.repaired().is_none());
        let rec = again.append(event(5)).expect("append after reopen");
        assert_eq!(rec.seq, 5);
        assert_eq!(rec.prev, hash_hex(dir.lines()[3].as_bytes()));
        let report = again.verify().expect("verify");
        assert_eq!(report.lines, 5);
        assert_eq!(report.last_seq, 5);
        assert_eq!(report.last_hash, hash_hex(dir.lines()[4].as_bytes()));
        assert_eq!(report.torn_tail, None);
        assert_eq!(verify(&dir.log()), Ok(report));
    }

    #[test]
    fn the_log_is_owner_only_and_an_empty_log_verifies() {
        let dir = TempDir::new("mode");
        let log = AuditLog::open_at(&dir.0, 0).expect("open");
        let mode = std::fs::metadata(dir.log())
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let report = log.verify().expect("verify");
        assert_eq!((report.lines, report.last_seq), (0, 0));
        assert_eq!(report.last_hash, GENESIS);
    }

    #[test]
    fn a_tampered_field_is_found_at_its_line() {
        let dir = TempDir::new("tamper");
        drop(filled(&dir, 5));
        let mut lines = dir.lines();
        lines[2] = lines[2].replace("\"who\":\"ops\"", "\"who\":\"eve\"");
        dir.write_lines(&lines);
        let err = verify(&dir.log()).expect_err("tampered");
        assert_eq!(err.line, 3);
        assert!(err.what.contains("edited"), "{err}");
        assert_eq!(
            err.to_string(),
            "line 3: this line does not hash to the prev that line 4 records: \
             this line was edited, or line 4 was edited or moved here"
        );
    }

    #[test]
    fn a_deleted_middle_line_is_found() {
        let dir = TempDir::new("delete");
        drop(filled(&dir, 5));
        let mut lines = dir.lines();
        lines.remove(2);
        dir.write_lines(&lines);
        let err = verify(&dir.log()).expect_err("deleted");
        assert_eq!(
            err,
            VerifyError {
                line: 3,
                what:
                    "seq 4 follows seq 2: 1 line(s) missing, or lines out of order, before this one"
                        .into()
            }
        );
        // Deleting the first line is found too.
        let mut lines = dir.lines();
        lines.remove(0);
        dir.write_lines(&lines);
        assert_eq!(verify(&dir.log()).expect_err("first deleted").line, 1);
    }

    #[test]
    fn reordered_lines_are_found() {
        let dir = TempDir::new("reorder");
        drop(filled(&dir, 5));
        let mut lines = dir.lines();
        lines.swap(1, 2);
        dir.write_lines(&lines);
        let err = verify(&dir.log()).expect_err("reordered");
        assert_eq!(err.line, 2);
        assert!(err.what.contains("out of order"), "{err}");
        // Renumbering to hide the swap breaks the hashes instead.
        let mut lines = dir.lines();
        lines[1] = lines[1].replace("\"seq\":3", "\"seq\":2");
        lines[2] = lines[2].replace("\"seq\":2", "\"seq\":3");
        dir.write_lines(&lines);
        let err = verify(&dir.log()).expect_err("renumbered");
        assert_eq!(err.line, 1);
        assert!(
            err.what.contains("line 2 was edited or moved here"),
            "{err}"
        );
    }

    #[test]
    fn a_line_that_is_not_a_record_is_found() {
        let dir = TempDir::new("garbage");
        drop(filled(&dir, 3));
        let mut lines = dir.lines();
        lines[1] = "{\"seq\":2,".into();
        dir.write_lines(&lines);
        let err = verify(&dir.log()).expect_err("garbage");
        assert_eq!(err.line, 2);
        assert!(err.what.starts_with("not an audit record"), "{err}");
    }

    #[test]
    fn changes_while_the_root_runs_are_refused_and_reported() {
        let dir = TempDir::new("running");
        let mut log = filled(&dir, 3);
        // The tail lost: a valid shorter chain, but not the one this root wrote.
        let lines = dir.lines();
        dir.write_lines(&lines[..2]);
        assert!(
            verify(&dir.log()).is_ok(),
            "no outside anchor: the shorter chain is valid"
        );
        let err = log.verify().expect_err("truncated");
        assert_eq!(err.line, 2);
        assert!(err.what.contains("root wrote through seq 3"), "{err}");
        match log.append(event(4)) {
            Err(AuditError::Tampered(why)) => assert!(why.contains("truncated"), "{why}"),
            other => panic!("{other:?}"),
        }
        // Refused from then on, even once the file looks right again.
        dir.write_lines(&lines);
        assert!(matches!(log.append(event(4)), Err(AuditError::Tampered(_))));

        // The last line edited in place, same length: found by the in-memory hash.
        let dir = TempDir::new("running-edit");
        let log = filled(&dir, 2);
        let mut lines = dir.lines();
        lines[1] = lines[1].replace("\"who\":\"ops\"", "\"who\":\"eve\"");
        dir.write_lines(&lines);
        assert!(verify(&dir.log()).is_ok());
        assert!(log
            .verify()
            .expect_err("edited")
            .what
            .contains("last line edited"));
    }

    #[test]
    fn a_torn_last_line_is_recorded_and_the_chain_goes_on() {
        let dir = TempDir::new("torn");
        drop(filled(&dir, 2));
        let whole = std::fs::read(dir.log()).expect("read");
        let torn = b"{\"seq\":3,\"time_ms\":3000,\"who\":\"op";
        let mut bytes = whole.clone();
        bytes.extend_from_slice(torn);
        std::fs::write(dir.log(), &bytes).expect("write");

        let report = verify(&dir.log()).expect("a torn tail is not a broken chain");
        assert_eq!(report.lines, 2);
        assert_eq!(report.torn_tail, Some(torn.len() as u64));

        let mut log = AuditLog::open_at(&dir.0, 7000).expect("open");
        let rec = log.repaired().expect("repaired").clone();
        assert_eq!(rec.seq, 3);
        assert_eq!(rec.event, TORN_EVENT);
        assert_eq!(rec.time_ms, 7000);
        assert_eq!(rec.args["bytes"], json!(torn.len()));
        assert_eq!(rec.args["sha256"], json!(hash_hex(torn)));
        assert_eq!(rec.args["text"], json!(String::from_utf8_lossy(torn)));
        assert!(rec.reason.as_deref().unwrap_or("").contains("after seq 2"));
        assert_eq!(rec.prev, hash_hex(dir.lines()[1].as_bytes()));
        assert_eq!(log.append(event(4)).expect("append").seq, 4);
        let report = log.verify().expect("verify");
        assert_eq!(report.lines, 4);
        assert_eq!(report.torn_repairs, vec![3]);
        assert_eq!(report.torn_tail, None);
        assert!(std::fs::read(dir.log()).expect("read").starts_with(&whole));
    }

    #[test]
    fn a_log_that_is_one_torn_line_starts_over_at_seq_one() {
        let dir = TempDir::new("torn-first");
        std::fs::write(dir.log(), b"{\"seq\":1,\"ti").expect("write");
        let log = AuditLog::open_at(&dir.0, 1).expect("open");
        let rec = log.repaired().expect("repaired");
        assert_eq!((rec.seq, rec.prev.as_str()), (1, GENESIS));
        assert_eq!(log.verify().expect("verify").torn_repairs, vec![1]);
    }

    #[test]
    fn a_log_whose_last_line_is_not_a_record_is_not_continued() {
        let dir = TempDir::new("bad-last");
        std::fs::write(dir.log(), b"hello\n").expect("write");
        match AuditLog::open_at(&dir.0, 0) {
            Err(AuditError::Unusable(why)) => assert!(why.contains("not an audit record"), "{why}"),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let mut v = json!({
            "bmc": {"user": "root", "Password": "hunter2", "hosts": [{"name": "n1", "api_key": "k1"}]},
            "OS_AUTH_URL": "https://x",
            "clouds": [{"credentials": {"a": 1}}],
            "Token": 42,
            "cmd": ["echo", "hi"],
            "privateKey": null,
        });
        redact(&mut v);
        assert_eq!(
            v,
            json!({
                "bmc": {"user": "root", "Password": REDACTED, "hosts": [{"name": "n1", "api_key": REDACTED}]},
                "OS_AUTH_URL": REDACTED,
                "clouds": [{"credentials": REDACTED}],
                "Token": REDACTED,
                "cmd": ["echo", "hi"],
                "privateKey": REDACTED,
            })
        );
    }

    #[test]
    fn append_never_writes_secrets() {
        let dir = TempDir::new("redact");
        let mut log = AuditLog::open_at(&dir.0, 0).expect("open");
        let rec = log
            .append(
                AuditEvent::new(1, "admin", "[::1]:5000", "power.request")
                    .args(json!({"bmc": {"password": "hunter2"}}))
                    .outcome(json!({"nested": [{"secret": "s3cr3t"}]})),
            )
            .expect("append");
        assert_eq!(rec.args["bmc"]["password"], json!(REDACTED));
        let text = std::fs::read_to_string(dir.log()).expect("read");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t"),
            "{text}"
        );
    }

    #[test]
    fn read_filters_by_time_and_token_and_keeps_the_newest() {
        let dir = TempDir::new("read");
        let mut log = filled(&dir, 6);
        log.append(AuditEvent::new(10_000, "admin", "-", "token.create"))
            .expect("append");
        let all = log.read(&AuditFilter::default()).expect("read");
        assert_eq!(all.len(), 7);
        let ops = log
            .read(&AuditFilter {
                since_ms: Some(3000),
                who: Some("ops".into()),
                limit: Some(2),
            })
            .expect("read");
        let seqs: Vec<u64> = ops.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [5, 6]);
        let admin = log
            .read(&AuditFilter {
                who: Some("admin".into()),
                ..AuditFilter::default()
            })
            .expect("read");
        assert_eq!(admin.len(), 1);
        assert_eq!(admin[0].event, "token.create");
    }
}

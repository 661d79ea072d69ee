//! API tokens: who may call the root's HTTP writes, with which role and on which nodes.
//!
//! A token has a name, a [`Role`] and, for operators, a scope: a list of node groups
//! (ClusterShell group names such as `rack1` or `source:group`). `admin` may do everything,
//! tokens and groups included; `operator` may act on the nodes of its groups only; `viewer` may
//! only read. The state dir's admin token (`<state-dir>/admin-token`, read by
//! [`crate::state::RootState`]) is the first admin, named `admin`; it cannot be revoked here
//! (replace the file and restart the root to change it).
//!
//! Named tokens read `bnyt_<name>_<64 hex digits>`: the name lets [`TokenStore::authenticate`]
//! find the entry without trying every hash, and tells an operator which token a string is. The
//! name is not secret; the 256 random bits are. They are kept in `<state-dir>/tokens.json`
//! (owner-only, replaced atomically) as the SHA-256 of the whole token text, never the text:
//! the secret is shown once, by [`TokenStore::create`]. Hashes are compared in constant time.
//! Revoked and expired tokens stay in the file (so a refused caller learns why), and their name
//! may be given to a new token.
//!
//! This module does no HTTP: the API layer holds a `Mutex<TokenStore>`, maps every
//! [`AuthError`] to 401 and every [`ScopeError`] to 403, and audits both.

use banyan_protocol::nodeset::NodeSet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// What every named token starts with.
pub const TOKEN_PREFIX: &str = "bnyt_";
/// Name of the built-in admin (the state dir's `admin-token`).
pub const ADMIN_NAME: &str = "admin";
/// Longest token name.
pub const MAX_NAME: usize = 64;
/// Longest group name in a scope.
pub const MAX_GROUP: usize = 128;
/// Random bytes in a token's secret (64 hex digits).
const SECRET_BYTES: usize = 32;
const TOKENS_FILE: &str = "tokens.json";
const FILE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including tokens and groups.
    Admin,
    /// Actions on the nodes of its groups only.
    Operator,
    /// Reads only.
    Viewer,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        })
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!("role {other:?}: use admin, operator or viewer")),
        }
    }
}

/// Who a request comes from, once [`TokenStore::authenticate`] has accepted its token.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The operator's scope (group names, without `@`); empty for admins and viewers.
    pub groups: Vec<String>,
}

/// A token as `token list` shows it: everything but the secret (and its hash).
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub groups: Vec<String>,
    /// Unix ms; `None` for the built-in admin, which the state dir made.
    pub created_ms: Option<u64>,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
    /// True for the state dir's admin token.
    pub builtin: bool,
}

impl TokenInfo {
    /// Neither revoked nor expired at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|e| now_ms < e)
    }
}

/// Why a token could not be made, revoked or kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token name {0:?}: use 1 to {MAX_NAME} of the characters A-Z a-z 0-9 . _ -")]
    BadName(String),
    #[error("\"admin\" is the state dir's admin token; choose another name")]
    ReservedName,
    #[error("a live token named {0:?} exists already; revoke it first or choose another name")]
    Duplicate(String),
    #[error("an operator token needs at least one group (its scope), e.g. --groups rack1,gpu")]
    NoGroups,
    #[error("groups apply to operator tokens only; a {0} token is not scoped")]
    GroupsNotForRole(Role),
    #[error("group name {0:?}: use 1 to {MAX_GROUP} of A-Z a-z 0-9 . _ + -, optionally after \"source:\"")]
    BadGroup(String),
    #[error("the expiry must be longer than zero")]
    BadExpiry,
    #[error("no token named {0:?}; `banyan token list` lists them")]
    NotFound(String),
    #[error("token {name:?} was revoked already (at unix ms {at_ms})")]
    AlreadyRevoked { name: String, at_ms: u64 },
    #[error("the built-in admin token cannot be revoked; replace <state-dir>/admin-token and restart the root")]
    BuiltinAdmin,
    #[error("the admin token given to the token store is unusable: {0}")]
    BadAdminToken(String),
    #[error("{0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(String),
}

/// Why a bearer token is refused (the HTTP layer answers 401 with the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token: send Authorization: Bearer TOKEN (an admin makes tokens with `banyan token create`)")]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unknown token: {0}")]
    Unknown(String),
    #[error(
        "token {name:?} expired {ago} ago; an admin can make a new one with `banyan token create`"
    )]
    Expired {
        name: String,
        at_ms: u64,
        ago: String,
    },
    #[error("token {name:?} was revoked {ago} ago")]
    Revoked {
        name: String,
        at_ms: u64,
        ago: String,
    },
}

/// Why an authenticated caller may not do what it asks (the HTTP layer answers 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("token {name:?} has the viewer role: it may read, not act")]
    ReadOnly { name: String },
    #[error("{what} needs an admin token; token {name:?} is {role}")]
    AdminOnly {
        name: String,
        role: Role,
        what: String,
    },
    /// Some targets lie outside the operator's groups: the whole action is refused.
    #[error("{}", out_of_scope_message(.name, .groups, .outside, .undefined))]
    OutOfScope {
        name: String,
        groups: Vec<String>,
        /// The targets outside the scope.
        outside: NodeSet,
        /// Groups of the scope that are not defined (they count as empty).
        undefined: Vec<String>,
    },
}

fn at_groups(groups: &[String]) -> String {
    groups
        .iter()
        .map(|g| format!("@{g}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn out_of_scope_message(
    name: &str,
    groups: &[String],
    outside: &NodeSet,
    undefined: &[String],
) -> String {
    let n = outside.len();
    let mut s = format!(
        "token {name:?} may act only on the nodes of {}; outside its scope: {} ({n} node{})",
        at_groups(groups),
        outside.fold(),
        if n == 1 { "" } else { "s" }
    );
    if !undefined.is_empty() {
        s.push_str(&format!(
            "; not defined, so empty: {}",
            at_groups(undefined)
        ));
    }
    s
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether this caller may act on every node of `targets`. `groups` resolves a group name of
    /// the scope (without `@`, e.g. `rack1` or `source:group`) to its nodes, `None` when the group
    /// is not defined. Admins may act anywhere, viewers nowhere, operators on the union of their
    /// groups; one target outside refuses the whole action, and the error names them all.
    pub fn scope_check(
        &self,
        targets: &NodeSet,
        groups: &dyn Fn(&str) -> Option<NodeSet>,
    ) -> Result<(), ScopeError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Viewer => Err(ScopeError::ReadOnly {
                name: self.name.clone(),
            }),
            Role::Operator => {
                let mut allowed = NodeSet::new();
                let mut undefined = Vec::new();
                for g in &self.groups {
                    match groups(g) {
                        Some(nodes) => allowed.extend(nodes),
                        None => undefined.push(g.clone()),
                    }
                }
                let outside = targets.difference(&allowed);
                if outside.is_empty() {
                    Ok(())
                } else {
                    Err(ScopeError::OutOfScope {
                        name: self.name.clone(),
                        groups: self.groups.clone(),
                        outside,
                        undefined,
                    })
                }
            }
        }
    }

    /// Refuses anyone but an admin; `what` names the request ("managing tokens", "exec").
    pub fn require_admin(&self, what: &str) -> Result<(), ScopeError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(ScopeError::AdminOnly {
                name: self.name.clone(),
                role: self.role,
                what: what.to_string(),
            })
        }
    }
}

/// One token in `tokens.json`.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Entry {
    name: String,
    role: Role,
    #[serde(default)]
    groups: Vec<String>,
    created_ms: u64,
    #[serde(default)]
    expires_ms: Option<u64>,
    #[serde(default)]
    revoked_ms: Option<u64>,
    /// Hex SHA-256 of the whole token text.
    sha256: String,
}

impl Entry {
    fn info(&self) -> TokenInfo {
        TokenInfo {
            name: self.name.clone(),
            role: self.role,
            groups: self.groups.clone(),
            created_ms: Some(self.created_ms),
            expires_ms: self.expires_ms,
            revoked_ms: self.revoked_ms,
            builtin: false,
        }
    }

    fn is_live(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|e| now_ms < e)
    }
}

#[derive(Serialize, Deserialize)]
struct TokensFile {
    version: u32,
    tokens: Vec<Entry>,
}

pub struct TokenStore {
    file: PathBuf,
    admin_hash: [u8; 32],
    /// By name, oldest first: at most the last is live.
    entries: BTreeMap<String, Vec<Entry>>,
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Equal in time that depends on neither input's contents.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        // black_box keeps the compiler from turning the loop into an early exit.
        diff = std::hint::black_box(diff | (x ^ y));
    }
    diff == 0
}

/// Whether `name` is a valid token name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn is_token_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A scope's group name without its `@`, or why it is refused.
fn check_group(group: &str) -> Result<String, TokenError> {
    let g = group.trim();
    let g = g.strip_prefix('@').unwrap_or(g);
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'+' | b'-'))
    };
    let ok = g.len() <= MAX_GROUP
        && match g.split_once(':') {
            Some((source, name)) => part_ok(source) && part_ok(name),
            None => part_ok(g),
        };
    if ok {
        Ok(g.to_string())
    } else {
        Err(TokenError::BadGroup(group.to_string()))
    }
}

/// `ms` as an operator reads it: `12s`, `5m`, `3h`, `2d`.
fn ago(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn check_entry(e: &Entry, file: &Path) -> Result<(), String> {
    let bad = |what: &str| Err(format!("{}: token {:?}: {what}", file.display(), e.name));
    if !is_token_name(&e.name) || e.name == ADMIN_NAME {
        return bad("not a valid token name");
    }
    if e.sha256.len() != 64 || hex::decode(&e.sha256).is_err() {
        return bad("its sha256 is not 64 hex digits");
    }
    if (e.role == Role::Operator) == e.groups.is_empty() {
        return bad("groups are needed by operators and by them only");
    }
    for g in &e.groups {
        if check_group(g).as_deref() != Ok(g.as_str()) {
            return bad(&format!("group {g:?} is not a group name"));
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` readable by the owner only, atomically: a crash leaves the old file or
/// the new one, never a mix (temp file, fsync, rename, fsync of the directory).
fn write_private_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A temp file left by a crash may have any mode: start afresh so that ours is 0600.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl TokenStore {
    /// Loads `<state_dir>/tokens.json` (none yet is an empty store). `admin_secret` is the content
    /// of `<state_dir>/admin-token`, the built-in admin. A file that cannot be read or understood
    /// is an error, not an empty store: starting without it would forget revocations.
    pub fn open(state_dir: &Path, admin_secret: &str) -> Result<TokenStore, TokenError> {
        let admin = admin_secret.trim();
        if admin.len() < 16 {
            return Err(TokenError::BadAdminToken(
                "shorter than 16 characters".into(),
            ));
        }
        if admin.starts_with(TOKEN_PREFIX) || admin.chars().any(|c| c.is_whitespace()) {
            return Err(TokenError::BadAdminToken(format!(
                "it must not start with {TOKEN_PREFIX} nor hold white space"
            )));
        }
        let file = state_dir.join(TOKENS_FILE);
        let mut entries: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        match std::fs::read(&file) {
            Ok(bytes) => {
                let parsed: TokensFile = serde_json::from_slice(&bytes).map_err(|e| {
                    TokenError::Corrupt(format!(
                        "{} is not a token file: {e}; fix or move it aside (moving it aside forgets every token)",
                        file.display()
                    ))
                })?;
                if parsed.version != FILE_VERSION {
                    return Err(TokenError::Corrupt(format!(
                        "{} has version {}; this root reads version {FILE_VERSION}",
                        file.display(),
                        parsed.version
                    )));
                }
                for e in parsed.tokens {
                    check_entry(&e, &file).map_err(TokenError::Corrupt)?;
                    entries.entry(e.name.clone()).or_default().push(e);
                }
                warn_if_shared(&file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(TokenError::Io(format!(
                    "cannot read {}: {e}",
                    file.display()
                )))
            }
        }
        Ok(TokenStore {
            file,
            admin_hash: digest(admin),
            entries,
        })
    }

    /// Makes a token and answers its text, the only time it is shown. `groups` (with or without
    /// `@`) is the scope of an operator and must be empty for the other roles.
    pub fn create(
        &mut self,
        name: &str,
        role: Role,
        groups: &[String],
        expires_in: Option<Duration>,
        now_ms: u64,
    ) -> Result<String, TokenError> {
        if !is_token_name(name) {
            return Err(TokenError::BadName(name.to_string()));
        }
        if name.eq_ignore_ascii_case(ADMIN_NAME) {
            return Err(TokenError::ReservedName);
        }
        if self
            .entries
            .get(name)
            .is_some_and(|list| list.iter().any(|e| e.is_live(now_ms)))
        {
            return Err(TokenError::Duplicate(name.to_string()));
        }
        let mut scope = groups
            .iter()
            .map(|g| check_group(g))
            .collect::<Result<Vec<_>, _>>()?;
        scope.sort();
        scope.dedup();
        match role {
            Role::Operator if scope.is_empty() => return Err(TokenError::NoGroups),
            Role::Admin | Role::Viewer if !scope.is_empty() => {
                return Err(TokenError::GroupsNotForRole(role))
            }
            _ => {}
        }
        let expires_ms = match expires_in {
            Some(d) if d.is_zero() => return Err(TokenError::BadExpiry),
            Some(d) => {
                Some(now_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
            }
            None => None,
        };
        let secret = banyan_protocol::identity::random_secret_hex(SECRET_BYTES);
        let text = format!("{TOKEN_PREFIX}{name}_{secret}");
        let entry = Entry {
            name: name.to_string(),
            role,
            groups: scope,
            created_ms: now_ms,
            expires_ms,
            revoked_ms: None,
            sha256: hex::encode(digest(&text)),
        };
        self.entries
            .entry(name.to_string())
            .or_default()
            .push(entry);
        if let Err(e) = self.save() {
            // Not kept, so not made: the caller must not hand out a token a restart would forget.
            if let Some(list) = self.entries.get_mut(name) {
                list.pop();
                if list.is_empty() {
                    self.entries.remove(name);
                }
            }
            return Err(e);
        }
        Ok(text)
    }

    /// Every token, the built-in admin first, then by name (oldest first within a name);
    /// revoked and expired ones included. No secrets, no hashes.
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut out = vec![TokenInfo {
            name: ADMIN_NAME.to_string(),
            role: Role::Admin,
            groups: Vec::new(),
            created_ms: None,
            expires_ms: None,
            revoked_ms: None,
            builtin: true,
        }];
        out.extend(self.entries.values().flatten().map(Entry::info));
        out
    }

    /// Revokes the token `name` (its newest entry); later [`TokenStore::authenticate`] calls
    /// refuse it. Answers what was revoked.
    pub fn revoke(&mut self, name: &str, now_ms: u64) -> Result<TokenInfo, TokenError> {
        if name == ADMIN_NAME {
            return Err(TokenError::BuiltinAdmin);
        }
        let entry = self
            .entries
            .get_mut(name)
            .and_then(|list| list.last_mut())
            .ok_or_else(|| TokenError::NotFound(name.to_string()))?;
        if let Some(at_ms) = entry.revoked_ms {
            return Err(TokenError::AlreadyRevoked {
                name: name.to_string(),
                at_ms,
            });
        }
        entry.revoked_ms = Some(now_ms);
        let info = entry.info();
        if let Err(e) = self.save() {
            // Still refused from now on in this process (a revocation must not wait on a disk),
            // but the caller is told that a restart would bring the token back.
            return Err(TokenError::Io(format!(
                "token {name:?} is refused from now on, but a restart would bring it back: {e}"
            )));
        }
        Ok(info)
    }

    /// Who `bearer` is (the token text; an `Authorization` value's `Bearer ` is taken off too).
    /// Named tokens are looked up by the name they carry; the lookup reveals whether a name
    /// exists (names are not secret), the hash comparison nothing of the secret.
    pub fn authenticate(&self, bearer: &str, now_ms: u64) -> Result<Principal, AuthError> {
        let mut text = bearer.trim();
        if text
            .get(..6)
            .is_some_and(|b| b.eq_ignore_ascii_case("bearer"))
            && text[6..].chars().next().is_none_or(char::is_whitespace)
        {
            text = text[6..].trim_start();
        }
        if text.is_empty() {
            return Err(AuthError::Missing);
        }
        let Some(rest) = text.strip_prefix(TOKEN_PREFIX) else {
            return self.authenticate_admin(text);
        };
        let Some((name, secret)) = rest.rsplit_once('_') else {
            return Err(AuthError::Malformed(format!(
                "after {TOKEN_PREFIX} comes NAME_SECRET; no '_' found"
            )));
        };
        if !is_token_name(name) {
            return Err(AuthError::Malformed(format!(
                "the name part is not 1 to {MAX_NAME} of A-Z a-z 0-9 . _ -"
            )));
        }
        if secret.len() != 2 * SECRET_BYTES
            || !secret
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            // The length is safe to tell; the content is not echoed.
            return Err(AuthError::Malformed(format!(
                "the secret part of token {name:?} must be {} lowercase hex digits; it has {} characters",
                2 * SECRET_BYTES,
                secret.len()
            )));
        }
        if name == ADMIN_NAME {
            return Err(AuthError::Unknown(format!(
                "the built-in admin has no {TOKEN_PREFIX} token; use the content of <state-dir>/admin-token"
            )));
        }
        let Some(list) = self.entries.get(name) else {
            return Err(AuthError::Unknown(format!(
                "no token named {name:?} (`banyan token list` lists them)"
            )));
        };
        let offered = digest(text);
        let mut found = None;
        for e in list {
            let mut stored = [0u8; 32];
            // check_entry made sure every stored hash decodes to 32 bytes.
            if hex::decode_to_slice(&e.sha256, &mut stored).is_ok()
                && constant_time_eq(&stored, &offered)
            {
                found = Some(e);
            }
        }
        let Some(e) = found else {
            return Err(AuthError::Unknown(format!(
                "the secret does not match token {name:?}"
            )));
        };
        if let Some(at_ms) = e.revoked_ms {
            return Err(AuthError::Revoked {
                name: name.to_string(),
                at_ms,
                ago: ago(now_ms.saturating_sub(at_ms)),
            });
        }
        if let Some(at_ms) = e.expires_ms.filter(|&at| now_ms >= at) {
            return Err(AuthError::Expired {
                name: name.to_string(),
                at_ms,
                ago: ago(now_ms.saturating_sub(at_ms)),
            });
        }
        Ok(Principal {
            name: e.name.clone(),
            role: e.role,
            groups: e.groups.clone(),
        })
    }

    fn authenticate_admin(&self, text: &str) -> Result<Principal, AuthError> {
        if text.len() < 16 || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AuthError::Malformed(format!(
                "expected {TOKEN_PREFIX}NAME_SECRET, or the admin token from <state-dir>/admin-token"
            )));
        }
        if constant_time_eq(&digest(text), &self.admin_hash) {
            Ok(Principal {
                name: ADMIN_NAME.to_string(),
                role: Role::Admin,
                groups: Vec::new(),
            })
        } else {
            Err(AuthError::Unknown(format!(
                "not this root's admin token, nor a named token (those start with {TOKEN_PREFIX})"
            )))
        }
    }

    fn save(&self) -> Result<(), TokenError> {
        let file = TokensFile {
            version: FILE_VERSION,
            tokens: self.entries.values().flatten().cloned().collect(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| TokenError::Io(format!("cannot encode the tokens: {e}")))?;
        bytes.push(b'\n');
        write_private_atomic(&self.file, &bytes)
            .map_err(|e| TokenError::Io(format!("cannot write {}: {e}", self.file.display())))
    }
}

fn warn_if_shared(file: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(file) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(file = %file.display(), mode = format!("{mode:o}"), "the token file is readable by others; it holds hashes only, but should be 0600");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ADMIN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const HOUR: u64 = 3_600_000;

    /// A fresh directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(what: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "banyan-tokens-{what}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn store(dir: &TempDir) -> TokenStore {
        TokenStore::open(&dir.0, ADMIN).expect("open")
    }

    fn groups(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn resolver(g: &str) -> Option<NodeSet> {
        match g {
            "rack1" => NodeSet::parse("n[1-4]").ok(),
            "slurm:gpu" => NodeSet::parse("g[1-2]").ok(),
            _ => None,
        }
    }

    #[test]
    fn the_state_dir_admin_token_is_the_admin() {
        let dir = TempDir::new("admin");
        let s = store(&dir);
        let p = s.authenticate(ADMIN, 0).expect("admin");
        assert_eq!(p.name, "admin");
        assert_eq!(p.role, Role::Admin);
        let p = s
            .authenticate(&format!("Bearer {ADMIN}\n"), 0)
            .expect("with Bearer");
        assert!(p.is_admin());
        assert!(matches!(
            s.authenticate("0123456789abcdef0123456789abcdef", 0),
            Err(AuthError::Unknown(_))
        ));
        assert_eq!(s.list()[0].name, "admin");
        assert!(s.list()[0].builtin);
        assert!(TokenStore::open(&dir.0, "short").is_err());
    }

    #[test]
    fn created_tokens_authenticate_with_their_role_and_scope() {
        let dir = TempDir::new("create");
        let mut s = store(&dir);
        let t = s
            .create(
                "ops-1",
                Role::Operator,
                &groups(&["@rack1", "slurm:gpu", "rack1"]),
                None,
                1000,
            )
            .expect("create");
        assert!(t.starts_with("bnyt_ops-1_"));
        assert_eq!(t.len(), "bnyt_ops-1_".len() + 64);
        let p = s.authenticate(&t, 2000).expect("authenticate");
        assert_eq!(
            p,
            Principal {
                name: "ops-1".into(),
                role: Role::Operator,
                groups: groups(&["rack1", "slurm:gpu"]),
            }
        );
        let v = s
            .create("look_only", Role::Viewer, &[], None, 1000)
            .expect("viewer");
        assert_eq!(s.authenticate(&v, 2000).expect("viewer").role, Role::Viewer);
        // Kept across a restart.
        let again = store(&dir);
        assert_eq!(
            again.authenticate(&t, 3000).expect("after reopen").name,
            "ops-1"
        );
        let names: Vec<_> = again.list().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["admin", "look_only", "ops-1"]);
    }

    #[test]
    fn bad_creations_are_refused_with_the_reason() {
        let dir = TempDir::new("refuse");
        let mut s = store(&dir);
        s.create("ops", Role::Operator, &groups(&["rack1"]), None, 0)
            .expect("first");
        assert_eq!(
            s.create("ops", Role::Viewer, &[], None, 1),
            Err(TokenError::Duplicate("ops".into()))
        );
        assert_eq!(
            s.create("admin", Role::Admin, &[], None, 0),
            Err(TokenError::ReservedName)
        );
        assert_eq!(
            s.create("Admin", Role::Viewer, &[], None, 0),
            Err(TokenError::ReservedName)
        );
        assert_eq!(
            s.create("x", Role::Operator, &[], None, 0),
            Err(TokenError::NoGroups)
        );
        assert_eq!(
            s.create("x", Role::Viewer, &groups(&["rack1"]), None, 0),
            Err(TokenError::GroupsNotForRole(Role::Viewer))
        );
        assert_eq!(
            s.create("x", Role::Operator, &groups(&["rack 1"]), None, 0),
            Err(TokenError::BadGroup("rack 1".into()))
        );
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert_eq!(
                s.create(bad, Role::Viewer, &[], None, 0),
                Err(TokenError::BadName(bad.to_string()))
            );
        }
        assert!(s
            .create(&"x".repeat(64), Role::Viewer, &[], None, 0)
            .is_ok());
        assert_eq!(
            s.create("y", Role::Viewer, &[], Some(Duration::ZERO), 0),
            Err(TokenError::BadExpiry)
        );
        let msg = TokenError::Duplicate("ops".into()).to_string();
        assert_eq!(
            msg,
            "a live token named \"ops\" exists already; revoke it first or choose another name"
        );
    }

    #[test]
    fn revoked_tokens_are_refused_at_once_and_after_a_restart() {
        let dir = TempDir::new("revoke");
        let mut s = store(&dir);
        let t = s
            .create("ops", Role::Operator, &groups(&["rack1"]), None, 0)
            .expect("create");
        let info = s.revoke("ops", 10 * HOUR).expect("revoke");
        assert_eq!(info.revoked_ms, Some(10 * HOUR));
        let err = s.authenticate(&t, 13 * HOUR).expect_err("revoked");
        assert_eq!(err.to_string(), "token \"ops\" was revoked 3h ago");
        assert!(matches!(
            store(&dir).authenticate(&t, 13 * HOUR),
            Err(AuthError::Revoked { .. })
        ));
        assert!(matches!(
            s.revoke("ops", 11 * HOUR),
            Err(TokenError::AlreadyRevoked { .. })
        ));
        assert_eq!(s.revoke("admin", 0), Err(TokenError::BuiltinAdmin));
        assert_eq!(
            s.revoke("nobody", 0),
            Err(TokenError::NotFound("nobody".into()))
        );
        // The name is free again; the old token stays revoked, the new one works.
        let t2 = s
            .create("ops", Role::Viewer, &[], None, 14 * HOUR)
            .expect("again");
        assert!(matches!(
            s.authenticate(&t, 15 * HOUR),
            Err(AuthError::Revoked { .. })
        ));
        assert_eq!(
            s.authenticate(&t2, 15 * HOUR).expect("new").role,
            Role::Viewer
        );
        assert_eq!(s.list().len(), 3);
    }

    #[test]
    fn expired_tokens_are_refused_and_their_name_is_free() {
        let dir = TempDir::new("expiry");
        let mut s = store(&dir);
        let t = s
            .create(
                "temp",
                Role::Viewer,
                &[],
                Some(Duration::from_secs(3600)),
                0,
            )
            .expect("create");
        assert!(s.authenticate(&t, HOUR - 1).is_ok());
        let err = s.authenticate(&t, 3 * HOUR).expect_err("expired");
        assert_eq!(
            err,
            AuthError::Expired {
                name: "temp".into(),
                at_ms: HOUR,
                ago: "2h".into()
            }
        );
        assert!(err.to_string().starts_with("token \"temp\" expired 2h ago"));
        assert!(!s.list()[1].is_live(HOUR));
        assert!(s.list()[1].is_live(HOUR - 1));
        assert!(s.create("temp", Role::Viewer, &[], None, 2 * HOUR).is_ok());
    }

    #[test]
    fn malformed_and_unknown_tokens_are_told_apart() {
        let dir = TempDir::new("malformed");
        let mut s = store(&dir);
        let t = s
            .create("ops", Role::Operator, &groups(&["rack1"]), None, 0)
            .expect("create");
        assert_eq!(s.authenticate("", 0), Err(AuthError::Missing));
        assert_eq!(s.authenticate("Bearer  ", 0), Err(AuthError::Missing));
        let malformed = |text: &str| match s.authenticate(text, 0) {
            Err(AuthError::Malformed(why)) => why,
            other => panic!("{text:?}: {other:?}"),
        };
        assert!(malformed("bnyt_nounderscore").contains("no '_'"));
        assert!(malformed("bnyt_a b_00").contains("name part"));
        let short = malformed("bnyt_ops_abc");
        assert!(
            short.contains("64 lowercase hex digits; it has 3 characters"),
            "{short}"
        );
        assert!(!malformed(&t.to_uppercase().replace("BNYT_OPS", "bnyt_ops")).is_empty());
        assert!(malformed("hunter2").contains("admin token"));
        let unknown = |text: &str| match s.authenticate(text, 0) {
            Err(AuthError::Unknown(why)) => why,
            other => panic!("{text:?}: {other:?}"),
        };
        let other_secret = format!("bnyt_ops_{}", "0".repeat(64));
        assert_eq!(
            unknown(&other_secret),
            "the secret does not match token \"ops\""
        );
        assert!(unknown(&format!("bnyt_nobody_{}", "0".repeat(64)))
            .contains("no token named \"nobody\""));
        assert!(unknown(&format!("bnyt_admin_{}", "0".repeat(64))).contains("admin-token"));
        // A token's name cannot be swapped: the hash covers the whole text.
        s.create("ops2", Role::Admin, &[], None, 0).expect("ops2");
        let renamed = t.replacen("bnyt_ops_", "bnyt_ops2_", 1);
        assert!(matches!(
            s.authenticate(&renamed, 0),
            Err(AuthError::Unknown(_))
        ));
    }

    #[test]
    fn only_hashes_are_kept_in_an_owner_only_file() {
        let dir = TempDir::new("disk");
        let mut s = store(&dir);
        let t = s
            .create("ops", Role::Operator, &groups(&["rack1"]), None, 0)
            .expect("create");
        let path = dir.0.join("tokens.json");
        let text = std::fs::read_to_string(&path).expect("tokens.json");
        let secret = &t["bnyt_ops_".len()..];
        assert!(!text.contains(secret), "the secret is on disk");
        assert!(!text.contains(ADMIN), "the admin token is on disk");
        assert!(text.contains(&hex::encode(digest(&t))));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!dir.0.join("tokens.json.tmp").exists());
        // A stale wide-open temp file does not widen the next write.
        std::fs::write(dir.0.join("tokens.json.tmp"), "x").expect("stale");
        std::fs::set_permissions(
            dir.0.join("tokens.json.tmp"),
            std::fs::Permissions::from_mode(0o666),
        )
        .expect("chmod");
        s.revoke("ops", 1).expect("revoke");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn an_unreadable_token_file_is_an_error_not_an_empty_store() {
        let dir = TempDir::new("corrupt");
        std::fs::write(dir.0.join("tokens.json"), "{not json").expect("write");
        match TokenStore::open(&dir.0, ADMIN) {
            Err(TokenError::Corrupt(why)) => assert!(why.contains("is not a token file"), "{why}"),
            other => panic!("{:?}", other.err()),
        }
        std::fs::write(
            dir.0.join("tokens.json"),
            r#"{"version":1,"tokens":[{"name":"x","role":"operator","groups":[],"created_ms":0,"sha256":"00"}]}"#,
        )
        .expect("write");
        assert!(matches!(
            TokenStore::open(&dir.0, ADMIN),
            Err(TokenError::Corrupt(_))
        ));
    }

    #[test]
    fn operators_act_only_inside_their_groups() {
        let p = Principal {
            name: "ops".into(),
            role: Role::Operator,
            groups: groups(&["rack1", "slurm:gpu", "rack9"]),
        };
        let inside = NodeSet::parse("n[1-3],g2").expect("set");
        assert_eq!(p.scope_check(&inside, &resolver), Ok(()));
        let targets = NodeSet::parse("n[3-7],g[1-3],x1").expect("set");
        let err = p.scope_check(&targets, &resolver).expect_err("outside");
        match &err {
            ScopeError::OutOfScope {
                outside, undefined, ..
            } => {
                assert_eq!(outside.fold(), "g3,n[5-7],x1");
                assert_eq!(undefined, &groups(&["rack9"]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "token \"ops\" may act only on the nodes of @rack1,@slurm:gpu,@rack9; \
             outside its scope: g3,n[5-7],x1 (5 nodes); not defined, so empty: @rack9"
        );
        let one = Principal {
            groups: groups(&["rack1"]),
            ..p.clone()
        };
        assert_eq!(
            one.scope_check(&NodeSet::parse("n[4-5]").expect("set"), &resolver)
                .expect_err("n5")
                .to_string(),
            "token \"ops\" may act only on the nodes of @rack1; outside its scope: n5 (1 node)"
        );
        assert_eq!(
            p.require_admin("exec").expect_err("not admin").to_string(),
            "exec needs an admin token; token \"ops\" is operator"
        );
    }

    #[test]
    fn viewers_may_not_act_and_admins_may_act_anywhere() {
        let viewer = Principal {
            name: "look".into(),
            role: Role::Viewer,
            groups: Vec::new(),
        };
        let targets = NodeSet::parse("n1").expect("set");
        let err = viewer.scope_check(&targets, &resolver).expect_err("viewer");
        assert_eq!(
            err.to_string(),
            "token \"look\" has the viewer role: it may read, not act"
        );
        assert!(viewer.scope_check(&NodeSet::new(), &resolver).is_err());
        let admin = Principal {
            name: "admin".into(),
            role: Role::Admin,
            groups: Vec::new(),
        };
        assert_eq!(
            admin.scope_check(&NodeSet::parse("z[1-100]").expect("set"), &|_| None),
            Ok(())
        );
        assert_eq!(admin.require_admin("managing tokens"), Ok(()));
    }

    #[test]
    fn roles_parse_and_print() {
        for r in [Role::Admin, Role::Operator, Role::Viewer] {
            assert_eq!(r.to_string().parse::<Role>(), Ok(r));
        }
        assert!("root".parse::<Role>().is_err());
        assert_eq!(ago(59_999), "59s");
        assert_eq!(ago(2 * 86_400_000 + 5), "2d");
    }
}

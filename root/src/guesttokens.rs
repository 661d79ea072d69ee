//! Join tokens for guests: one per guest launched with `--join`, for its node name alone
//! (`HOST-vm-NAME`), single use, expiring.
//!
//! The root mints them when a `vm launch --join` is posted for real and hands them down in the
//! launch's sealed order; the host's agent passes each to its guest through QEMU's fw_cfg. A
//! guest's agent enrols with its token as any agent does with the cluster's join token; the
//! enrolment is accepted only for exactly the token's name, once, before it expires. Each other
//! attempt is refused with its reason (used, expired, another name).
//!
//! Only a SHA-256 of each secret is kept, in `<state>/guest-tokens.json` (written atomically:
//! a root restarted between a launch and the guest's enrolment still knows the token, and one
//! spent stays spent). Secrets are compared in constant time. A spent or expired token is
//! remembered for a day past its expiry, so that its reuse is refused with the reason rather
//! than as a wrong secret; then it is forgotten.
//!
//! What is not here: the enrolment itself (`daemon::enrol`), nor who may launch guests
//! (`http_actions`). A plain state machine fed with `now`, apart from its file.

use banyan_protocol::identity::{constant_time_eq, Fingerprint, JoinToken};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The file in the root's state dir.
pub const FILE: &str = "guest-tokens.json";
/// Longest life of a guest token: a guest boots and enrols in seconds to a minute under TCG.
pub const MAX_TTL_MS: u64 = 15 * 60_000;
/// How long a spent or expired token is remembered past its expiry, to say why it is refused.
pub const REMEMBER_MS: u64 = 24 * 3_600_000;
/// Tokens kept at most (a launch of 64 guests on 1,000 hosts mints 64,000).
pub const MAX_TOKENS: usize = 200_000;

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Entry {
    /// The node name the token enrols.
    name: String,
    /// SHA-256 of the secret, hex.
    sha256: String,
    expires_ms: u64,
    /// When it was used, if it was.
    #[serde(default)]
    used_ms: Option<u64>,
    /// The action that minted it.
    action: String,
}

#[derive(Serialize, Deserialize, Default)]
struct Stored {
    version: u32,
    tokens: Vec<Entry>,
}

/// What a secret offered at enrolment is.
#[derive(Debug, PartialEq, Eq)]
pub enum Redeemed {
    /// Not a guest token (the cluster's join token, or a wrong secret).
    NotGuest,
    /// A guest token, valid for this name, now spent.
    Accepted,
    /// A guest token that may not enrol this name now: the reason, for the agent.
    Refused(String),
}

/// The guest tokens of the cluster.
#[derive(Debug)]
pub struct GuestTokens {
    path: Option<PathBuf>,
    /// The cluster CA's fingerprint, which every token names.
    ca: Fingerprint,
    tokens: Vec<Entry>,
}

impl GuestTokens {
    /// The tokens kept in `dir` (none in memory only, for tests). A file that cannot be read
    /// is logged and left for an operator: its tokens then enrol nothing (a guest launched
    /// before is refused as with a wrong secret), which fails closed.
    pub fn open(dir: Option<&Path>, ca: Fingerprint, now: u64) -> GuestTokens {
        let path = dir.map(|d| d.join(FILE));
        let mut tokens = Vec::new();
        if let Some(p) = &path {
            match std::fs::read(p) {
                Ok(bytes) => match serde_json::from_slice::<Stored>(&bytes) {
                    Ok(s) if s.version == VERSION => tokens = s.tokens,
                    Ok(s) => {
                        tracing::warn!(file = %p.display(), version = s.version, "guest tokens of another version; guests launched before cannot enrol")
                    }
                    Err(e) => {
                        tracing::warn!(file = %p.display(), error = %e, "guest tokens unreadable; guests launched before cannot enrol")
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "guest tokens unreadable; guests launched before cannot enrol")
                }
            }
        }
        let mut t = GuestTokens { path, ca, tokens };
        t.prune(now);
        t
    }

    /// A new token for each of `names`, valid for `ttl_ms` (at most [`MAX_TTL_MS`]), minted by
    /// `action`; kept on disk (one write for all) before they are returned, in `names`' order.
    pub fn mint(
        &mut self,
        names: &[String],
        ttl_ms: u64,
        action: &str,
        now: u64,
    ) -> Result<Vec<JoinToken>, String> {
        self.prune(now);
        if self.tokens.len().saturating_add(names.len()) > MAX_TOKENS {
            return Err(format!(
                "at most {MAX_TOKENS} guest join tokens are kept and {} are: wait for them to expire (a day after their {} min)",
                self.tokens.len(),
                MAX_TTL_MS / 60_000
            ));
        }
        let kept = self.tokens.len();
        let expires_ms = now.saturating_add(ttl_ms.clamp(1, MAX_TTL_MS));
        let mut minted = Vec::with_capacity(names.len());
        for name in names {
            let token = JoinToken::generate(self.ca);
            self.tokens.push(Entry {
                name: name.clone(),
                sha256: hex::encode(Sha256::digest(token.secret.as_bytes())),
                expires_ms,
                used_ms: None,
                action: action.to_string(),
            });
            minted.push(token);
        }
        if let Err(e) = self.save() {
            // Not kept, so not handed out.
            self.tokens.truncate(kept);
            return Err(e);
        }
        Ok(minted)
    }

    /// Checks `secret` offered to enrol `name`; a guest token valid for it is spent (and the
    /// spending kept on disk) before this returns `Accepted`.
    pub fn redeem(&mut self, name: &str, secret: &str, now: u64) -> Redeemed {
        self.prune(now);
        let offered: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        // Every entry is compared, in constant time each, whatever matches.
        let mut found = None;
        for (i, e) in self.tokens.iter().enumerate() {
            let mut kept = [0u8; 32];
            if hex::decode_to_slice(&e.sha256, &mut kept).is_ok()
                && constant_time_eq(&kept, &offered)
            {
                found = Some(i);
            }
        }
        let Some(i) = found else {
            return Redeemed::NotGuest;
        };
        let e = &self.tokens[i];
        if e.name != name {
            return Redeemed::Refused(format!(
                "this guest join token is for node {}, not {name}",
                e.name
            ));
        }
        if let Some(used) = e.used_ms {
            return Redeemed::Refused(format!(
                "this guest join token for {name} was used already ({} s ago): a guest token enrols once; launch the guest again for a new one",
                now.saturating_sub(used) / 1000
            ));
        }
        if now > e.expires_ms {
            return Redeemed::Refused(format!(
                "this guest join token for {name} expired {} s ago: launch the guest again for a new one",
                (now - e.expires_ms) / 1000
            ));
        }
        self.tokens[i].used_ms = Some(now);
        if let Err(e) = self.save() {
            // Unrecorded, the token could be used again after a restart: refuse instead.
            self.tokens[i].used_ms = None;
            return Redeemed::Refused(format!("the root cannot record the token's use: {e}"));
        }
        Redeemed::Accepted
    }

    /// Tokens kept (outstanding, spent or expired, not yet forgotten).
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Forgets tokens a day past their expiry.
    fn prune(&mut self, now: u64) {
        self.tokens
            .retain(|e| now <= e.expires_ms.saturating_add(REMEMBER_MS));
    }

    /// Writes the file atomically: a temporary file (owner only), synced, renamed.
    fn save(&self) -> Result<(), String> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec(&Stored {
            version: VERSION,
            tokens: self.tokens.clone(),
        })
        .map_err(|e| format!("cannot encode the guest tokens: {e}"))?;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&body).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: Fingerprint = [7u8; 32];
    const T0: u64 = 1_000_000;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("banyan-gt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_guest_token_enrols_its_name_once() {
        let mut t = GuestTokens::open(None, CA, T0);
        let tok = t
            .mint(&["cn1-vm-g".into()], 60_000, "a1", T0)
            .unwrap()
            .remove(0);
        assert_eq!(tok.ca_fingerprint, CA);
        assert_eq!(
            t.redeem("cn1-vm-g", &tok.secret, T0 + 1),
            Redeemed::Accepted
        );
        assert_eq!(
            t.redeem("cn1-vm-g", &tok.secret, T0 + 2_000),
            Redeemed::Refused("this guest join token for cn1-vm-g was used already (1 s ago): a guest token enrols once; launch the guest again for a new one".into())
        );
    }

    #[test]
    fn a_guest_token_is_refused_for_another_name_and_stays_usable() {
        let mut t = GuestTokens::open(None, CA, T0);
        let tok = t
            .mint(&["cn1-vm-g".into()], 60_000, "a1", T0)
            .unwrap()
            .remove(0);
        assert_eq!(
            t.redeem("cn2", &tok.secret, T0),
            Redeemed::Refused("this guest join token is for node cn1-vm-g, not cn2".into())
        );
        assert_eq!(t.redeem("cn1-vm-g", &tok.secret, T0), Redeemed::Accepted);
    }

    #[test]
    fn a_guest_token_expires() {
        let mut t = GuestTokens::open(None, CA, T0);
        // Longer than the longest life: clamped to 15 min.
        let tok = t
            .mint(&["cn1-vm-g".into()], u64::MAX, "a1", T0)
            .unwrap()
            .remove(0);
        assert_eq!(
            t.redeem("cn1-vm-g", &tok.secret, T0 + MAX_TTL_MS + 5_000),
            Redeemed::Refused(
                "this guest join token for cn1-vm-g expired 5 s ago: launch the guest again for a new one"
                    .into()
            )
        );
        // Forgotten a day later: then it is a wrong secret like any other.
        let later = T0 + MAX_TTL_MS + REMEMBER_MS + 1;
        assert_eq!(t.redeem("cn1-vm-g", &tok.secret, later), Redeemed::NotGuest);
        t.prune(later);
        assert!(t.is_empty());
    }

    #[test]
    fn other_secrets_are_not_guest_tokens() {
        let mut t = GuestTokens::open(None, CA, T0);
        t.mint(&["cn1-vm-g".into()], 60_000, "a1", T0)
            .unwrap()
            .remove(0);
        let other = JoinToken::generate(CA);
        assert_eq!(t.redeem("cn1-vm-g", &other.secret, T0), Redeemed::NotGuest);
        assert_eq!(t.redeem("cn1-vm-g", "", T0), Redeemed::NotGuest);
    }

    #[test]
    fn tokens_survive_a_restart_as_hashes_and_spent_stays_spent() {
        let d = dir("persist");
        let mut t = GuestTokens::open(Some(&d), CA, T0);
        let a = t
            .mint(&["cn1-vm-a".into()], 60_000, "a1", T0)
            .unwrap()
            .remove(0);
        let b = t
            .mint(&["cn1-vm-b".into()], 60_000, "a1", T0)
            .unwrap()
            .remove(0);
        assert_eq!(t.redeem("cn1-vm-a", &a.secret, T0), Redeemed::Accepted);
        let text = std::fs::read_to_string(d.join(FILE)).unwrap();
        assert!(
            !text.contains(&a.secret) && !text.contains(&b.secret),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let mut again = GuestTokens::open(Some(&d), CA, T0 + 1);
        assert_eq!(again.len(), 2);
        assert!(matches!(
            again.redeem("cn1-vm-a", &a.secret, T0 + 1),
            Redeemed::Refused(r) if r.contains("used already")
        ));
        assert_eq!(
            again.redeem("cn1-vm-b", &b.secret, T0 + 1),
            Redeemed::Accepted
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_unreadable_file_fails_closed() {
        let d = dir("corrupt");
        std::fs::write(d.join(FILE), "{not json").unwrap();
        let mut t = GuestTokens::open(Some(&d), CA, T0);
        assert!(t.is_empty());
        assert_eq!(t.redeem("cn1-vm-a", "00", T0), Redeemed::NotGuest);
        std::fs::remove_dir_all(&d).unwrap();
    }
}

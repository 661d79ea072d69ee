//! What administrators read: the audit log (`GET /audit`, `/audit/verify`), API tokens
//! (`/tokens`) and node groups (`GET /groups`), as tables. Times are local; node sets folded.

use std::fmt::Write as _;

use banyan_protocol::nodeset::NodeSet;
use serde::Deserialize;
use serde_json::Value;

use crate::api::{EXIT_FAILED, EXIT_OK};
use crate::escape::one_line;
use crate::{table, times};

/// One line of `GET /audit`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AuditLine {
    pub seq: u64,
    pub time_ms: u64,
    pub who: String,
    pub peer: Option<String>,
    pub event: String,
    pub action: Option<String>,
    pub for_real: Option<bool>,
    /// A folded node set (or, from an older root, a list of names).
    pub targets: Value,
    pub args: Value,
    pub outcome: Value,
    pub reason: Option<String>,
    pub prev: Option<String>,
}

/// `banyan audit`: one row per line of the log, oldest first as the log reads.
pub fn render_audit(lines: &[AuditLine]) -> String {
    render_audit_with(lines, times::local_time)
}

fn render_audit_with(lines: &[AuditLine], when: impl Fn(u64) -> String) -> String {
    if lines.is_empty() {
        return "no audit lines match\n".into();
    }
    let mut t = table::new(&[
        "TIME", "WHO", "EVENT", "ACTION", "TARGETS", "MODE", "OUTCOME",
    ]);
    for l in lines {
        t.add_row(vec![
            when(l.time_ms),
            one_line(&l.who).into_owned(),
            one_line(&l.event).into_owned(),
            l.action.clone().unwrap_or_else(|| "-".into()),
            one_line(&targets(&l.targets)).into_owned(),
            match l.for_real {
                Some(true) => "real",
                Some(false) => "dry",
                None => "-",
            }
            .to_string(),
            one_line(&outcome(&l.outcome, l.reason.as_deref())).into_owned(),
        ]);
    }
    table::render(&t)
}

fn targets(v: &Value) -> String {
    match v {
        Value::String(s) if !s.is_empty() => s.clone(),
        Value::Array(names) => {
            NodeSet::from_names(names.iter().filter_map(|n| n.as_str().map(str::to_string))).fold()
        }
        _ => "-".into(),
    }
}

/// An outcome in a few words: `ok 3, failed 1`, `refused: outside scope`, ...
fn outcome(v: &Value, reason: Option<&str>) -> String {
    let mut s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Object(m) => {
            // The counts in the order people read them, then anything else by name.
            const FIRST: [&str; 5] = ["state", "ok", "failed", "unreachable", "cancelled"];
            let rank = |k: &str| FIRST.iter().position(|f| *f == k).unwrap_or(FIRST.len());
            let mut fields: Vec<(&String, &Value)> =
                m.iter().filter(|(_, v)| !v.is_null()).collect();
            fields.sort_by_key(|(k, _)| rank(k));
            fields
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => format!("{k} {s}"),
                    _ => format!("{k} {v}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
        other => other.to_string(),
    };
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        if s.is_empty() {
            s = r.to_string();
        } else {
            let _ = write!(s, ": {r}");
        }
    }
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

/// `GET /audit/verify`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Verified {
    pub ok: bool,
    pub lines: u64,
    pub error: Option<String>,
    pub line: Option<u64>,
}

/// `banyan audit --verify`: the verdict and its exit status (1 when the log is broken).
pub fn render_verify(v: &Verified) -> (String, u8) {
    if v.ok {
        (format!("audit log verified: {} lines\n", v.lines), EXIT_OK)
    } else {
        let at = v.line.map(|l| format!(" at line {l}")).unwrap_or_default();
        let why = v.error.as_deref().unwrap_or("the hash chain does not hold");
        (
            format!(
                "audit log broken{at}: {} ({} lines read)\n",
                one_line(why),
                v.lines
            ),
            EXIT_FAILED,
        )
    }
}

/// One token of `GET /tokens` (never the secret: the root keeps only its hash).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TokenInfo {
    pub name: String,
    pub role: String,
    pub groups: Vec<String>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
}

/// `banyan token list`.
pub fn render_tokens(list: &[TokenInfo], now_ms: u64) -> String {
    render_tokens_with(list, now_ms, times::local_minute)
}

fn render_tokens_with(list: &[TokenInfo], now_ms: u64, when: impl Fn(u64) -> String) -> String {
    if list.is_empty() {
        return "no tokens (the state dir's admin-token is always an admin)\n".into();
    }
    let mut t = table::new(&["NAME", "ROLE", "GROUPS", "CREATED", "EXPIRES", "STATE"]);
    for k in list {
        let state = match (k.revoked_ms, k.expires_ms) {
            (Some(r), _) => format!("revoked {}", when(r)),
            (None, Some(e)) if e <= now_ms => "expired".to_string(),
            _ => "active".to_string(),
        };
        t.add_row(vec![
            one_line(&k.name).into_owned(),
            one_line(&k.role).into_owned(),
            if k.groups.is_empty() {
                "-".to_string()
            } else {
                one_line(&k.groups.join(",")).into_owned()
            },
            when(k.created_ms),
            k.expires_ms.map_or_else(|| "never".to_string(), &when),
            state,
        ]);
    }
    table::render(&t)
}

/// One row of `GET /groups`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GroupInfo {
    pub source: String,
    pub group: String,
    /// Folded.
    pub nodes: String,
    /// Whether `source` is the default one (`@group` names it without `source:`). A root that
    /// does not say is read as "not the default", and groups are written `@source:group`.
    pub default: bool,
}

/// `banyan groups`: `@group` for the default source, `@source:group` otherwise.
pub fn render_groups(list: &[GroupInfo]) -> String {
    if list.is_empty() {
        return "no groups (the root reads <state-dir>/groups.yaml and /etc/clustershell/groups.d/*.yaml)\n"
            .into();
    }
    let mut t = table::new(&["GROUP", "N", "NODES"]);
    for g in list {
        let name = if g.default || g.source.is_empty() {
            format!("@{}", g.group)
        } else {
            format!("@{}:{}", g.source, g.group)
        };
        let count = NodeSet::parse(&g.nodes).map_or_else(|_| "?".into(), |s| s.len().to_string());
        t.add_row(vec![
            one_line(&name).into_owned(),
            count,
            one_line(&g.nodes).into_owned(),
        ]);
    }
    table::align_right(&mut t, 1);
    table::render(&t)
}

/// `banyan token create`: the token alone on stdout (so it can be redirected to a file), the
/// warning for stderr.
pub fn render_created_token(r: &Value) -> (String, String) {
    let name = r["name"].as_str().unwrap_or("?");
    let token = r["token"].as_str().unwrap_or("");
    (
        format!("{token}\n"),
        format!(
            "token {:?} created. Store it now: it is shown only this once (the root keeps only its hash).\n",
            one_line(name)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn audit_lines_show_mode_targets_and_outcome() {
        let lines: Vec<AuditLine> = serde_json::from_value(json!([
            {"seq": 1, "time_ms": 1_000, "who": "alice", "peer": "127.0.0.1:4000",
             "event": "action", "action": "00000000000000ab", "for_real": true,
             "targets": "cn[1-4]", "args": {"exec": {"argv": ["reboot"]}}, "outcome": null,
             "reason": null, "prev": "00"},
            {"seq": 2, "time_ms": 2_000, "who": "alice", "event": "action.end",
             "action": "00000000000000ab", "for_real": true, "targets": "cn[1-4]",
             "outcome": {"ok": 3, "failed": 1, "unreachable": 0}, "prev": "01"},
            {"seq": 3, "time_ms": 3_000, "who": "bob", "event": "refused", "action": null,
             "for_real": false, "targets": ["cn2", "cn1"], "outcome": "refused",
             "reason": "cn[1-2] outside the scope of token bob", "prev": "02"},
            {"seq": 4, "time_ms": 4_000, "who": "admin", "event": "token.create",
             "targets": null, "outcome": "ok", "prev": "03"},
        ]))
        .unwrap();
        let text = render_audit_with(&lines, |ms| format!("t{}", ms / 1000));
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 5, "{text}");
        assert!(rows[0].starts_with("TIME WHO   EVENT"), "{text}");
        assert!(
            rows[1].starts_with("t1   alice action       00000000000000ab cn[1-4] real -"),
            "{text}"
        );
        assert!(
            rows[2].ends_with("real ok 3, failed 1, unreachable 0"),
            "{text}"
        );
        assert!(
            rows[3].contains("cn[1-2]")
                && rows[3].ends_with("dry  refused: cn[1-2] outside the scope of token bob"),
            "{text}"
        );
        assert!(
            rows[4].contains("token.create") && rows[4].ends_with("-    ok"),
            "{text}"
        );
    }

    #[test]
    fn verification_fails_with_the_line() {
        let (text, code) = render_verify(&Verified {
            ok: true,
            lines: 42,
            ..Verified::default()
        });
        assert_eq!((text.as_str(), code), ("audit log verified: 42 lines\n", 0));
        let (text, code) = render_verify(&Verified {
            ok: false,
            lines: 17,
            error: Some("hash of line 16 does not match".into()),
            line: Some(17),
        });
        assert_eq!(code, 1);
        assert_eq!(
            text,
            "audit log broken at line 17: hash of line 16 does not match (17 lines read)\n"
        );
    }

    #[test]
    fn tokens_show_their_state() {
        let list: Vec<TokenInfo> = serde_json::from_value(json!([
            {"name": "ci", "role": "operator", "groups": ["compute", "gpu"], "created_ms": 1_000,
             "expires_ms": 9_000, "revoked_ms": null},
            {"name": "old", "role": "viewer", "groups": [], "created_ms": 1_000,
             "expires_ms": 2_000, "revoked_ms": null},
            {"name": "gone", "role": "admin", "groups": [], "created_ms": 1_000,
             "expires_ms": null, "revoked_ms": 3_000},
        ]))
        .unwrap();
        let text = render_tokens_with(&list, 5_000, |ms| format!("t{}", ms / 1000));
        assert_eq!(
            text,
            "NAME ROLE     GROUPS      CREATED EXPIRES STATE\n\
             ci   operator compute,gpu t1      t9      active\n\
             old  viewer   -           t1      t2      expired\n\
             gone admin    -           t1      never   revoked t3\n"
        );
    }

    #[test]
    fn groups_name_their_source_unless_default() {
        let list: Vec<GroupInfo> = serde_json::from_value(json!([
            {"source": "roles", "group": "compute", "nodes": "cn[1-8]", "default": true},
            {"source": "racks", "group": "r1", "nodes": "cn[1-4],gpu1"},
        ]))
        .unwrap();
        assert_eq!(
            render_groups(&list),
            "GROUP     N NODES\n@compute  8 cn[1-8]\n@racks:r1 5 cn[1-4],gpu1\n"
        );
    }

    #[test]
    fn a_new_token_goes_alone_to_stdout() {
        let (out, err) = render_created_token(&json!({"name": "ci", "token": "BNYT.abc"}));
        assert_eq!(out, "BNYT.abc\n");
        assert!(err.contains("shown only this once"));
    }
}

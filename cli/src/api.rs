//! The CLI's side of the root's HTTP API: one small blocking client and the errors a command ends
//! with, each with its exit status.
//!
//! Plain HTTP to the root (loopback or an `ssh -L` tunnel). Every request carries the token when
//! one was found ([`crate::config::find_token`]); writes fail early when none was. Errors name the
//! root's URL and what to do; JSON errors from the root are shown as the root wrote them.

use std::time::Duration;

use serde_json::Value;

use crate::config::Token;

/// Exit status: every target succeeded (or the command did what it was asked).
pub const EXIT_OK: u8 = 0;
/// Exit status: some targets failed or were unreachable; or the root answered an error.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: bad command line (also a node set, group or task the root found bad).
pub const EXIT_USAGE: u8 = 2;
/// Exit status: refused: no token, or the token may not do this (HTTP 401/403).
pub const EXIT_REFUSED: u8 = 3;
/// Exit status: the root could not be reached.
pub const EXIT_UNREACHABLE: u8 = 4;
/// Exit status: interrupted (Ctrl-C) and detached from an action that goes on.
pub const EXIT_INTERRUPTED: u8 = 130;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the root at {url}: {detail} (is banyan-root running? set --root or BANYAN_ROOT)")]
    Unreachable { url: String, detail: String },
    /// 401 or 403: `hint` says where the CLI looked for a token when it found none.
    #[error("the root refused ({status} {error}){detail}{hint}")]
    Refused {
        status: u16,
        error: String,
        detail: String,
        hint: String,
    },
    /// 400: the request was wrong (a node set, a group, a task).
    #[error("the root refused the request: {error}{detail}")]
    BadRequest { error: String, detail: String },
    #[error("the root answered {status}: {error}{detail}")]
    Api {
        status: u16,
        error: String,
        detail: String,
    },
    #[error(
        "the root at {url} answered {status} with something that is not banyan's JSON: {detail}"
    )]
    BadAnswer {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("{0}")]
    Usage(String),
    /// Ctrl-C while following an action that goes on without us.
    #[error("detached from action {id}, still running on {pending} of its targets; follow it with: banyan actions {id} --watch")]
    Detached { id: String, pending: usize },
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::BadRequest { .. } => EXIT_USAGE,
            CliError::Refused { .. } => EXIT_REFUSED,
            CliError::Unreachable { .. } => EXIT_UNREACHABLE,
            CliError::Detached { .. } => EXIT_INTERRUPTED,
            CliError::Api { .. } | CliError::BadAnswer { .. } => EXIT_FAILED,
        }
    }
}

/// Whether a request must carry a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Reads: the token goes along when there is one.
    IfAny,
    /// Writes, the audit log, tokens: without a token the command stops before asking.
    Required,
}

pub struct Client {
    base: String,
    agent: ureq::Agent,
    token: Token,
}

impl Client {
    /// A client without a token (reads only).
    pub fn new(root: &str) -> Client {
        Client::with_token(root, Token::None("no token given".into()))
    }

    pub fn with_token(root: &str, token: Token) -> Client {
        let base = root.trim_end_matches('/').to_string();
        let base = if base.starts_with("http://") || base.starts_with("https://") {
            base
        } else {
            format!("http://{base}")
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Above the longest long poll the CLI asks for.
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Client { base, agent, token }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn bearer(&self, auth: Auth) -> Result<Option<String>, CliError> {
        match (&self.token, auth) {
            (Token::Found { token, .. }, _) => Ok(Some(format!("Bearer {token}"))),
            (Token::None(why), Auth::Required) => Err(CliError::Refused {
                status: 401,
                error: "no token".into(),
                detail: String::new(),
                hint: format!(": {why}"),
            }),
            (Token::None(_), Auth::IfAny) => Ok(None),
        }
    }

    fn finish(
        &self,
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, CliError> {
        let mut resp = r.map_err(|e| CliError::Unreachable {
            url: self.base.clone(),
            detail: e.to_string(),
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| CliError::Unreachable {
                url: self.base.clone(),
                detail: format!("reading the answer to {url}: {e}"),
            })?;
        self.answer(url, status, &text)
    }

    /// The root's answer `text` with `status` to a request for `url`: its JSON, or the error it
    /// means.
    pub(crate) fn answer(&self, url: &str, status: u16, text: &str) -> Result<Value, CliError> {
        let body: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(text).map_err(|e| CliError::BadAnswer {
                url: url.to_string(),
                status,
                detail: format!(
                    "{e} (it begins {:?})",
                    text.chars().take(80).collect::<String>()
                ),
            })?
        };
        if status < 400 {
            return Ok(body);
        }
        let error = body["error"].as_str().unwrap_or("error").to_string();
        let detail = body["detail"]
            .as_str()
            .filter(|d| !d.is_empty())
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        Err(match status {
            400 => CliError::BadRequest { error, detail },
            401 | 403 => CliError::Refused {
                status,
                error,
                detail,
                hint: match &self.token {
                    Token::None(why) => format!("; {why}"),
                    Token::Found { from, .. } if status == 401 => {
                        format!("; the token came from {from}")
                    }
                    Token::Found { .. } => String::new(),
                },
            },
            _ => CliError::Api {
                status,
                error,
                detail,
            },
        })
    }

    pub fn get(&self, path: &str) -> Result<Value, CliError> {
        self.get_query(path, &[])
    }

    /// GET with query parameters (encoded here, so node names with spaces or `&` are safe).
    pub fn get_query(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, CliError> {
        self.get_as(path, query, Auth::IfAny)
    }

    pub fn get_as(
        &self,
        path: &str,
        query: &[(&str, &str)],
        auth: Auth,
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        if let Some(b) = self.bearer(auth)? {
            req = req.header("Authorization", &b);
        }
        let r = req.call();
        self.finish(&url, r)
    }

    /// POST a JSON body; writes always need the token.
    pub fn post(&self, path: &str, body: &Value) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.post(&url);
        if let Some(b) = self.bearer(Auth::Required)? {
            req = req.header("Authorization", &b);
        }
        let r = req.send_json(body);
        self.finish(&url, r)
    }

    /// DELETE; writes always need the token.
    pub fn delete(&self, path: &str) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.delete(&url);
        if let Some(b) = self.bearer(Auth::Required)? {
            req = req.header("Authorization", &b);
        }
        let r = req.call();
        self.finish(&url, r)
    }
}

/// One path segment, percent-encoded (a token or node name in `/tokens/NAME`, `/nodes/NAME`).
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_documented_exit_codes() {
        let refused = CliError::Refused {
            status: 403,
            error: "forbidden".into(),
            detail: ": cn[5-6] are outside the scope of token ci".into(),
            hint: String::new(),
        };
        assert_eq!(refused.exit_code(), 3);
        assert_eq!(
            refused.to_string(),
            "the root refused (403 forbidden): cn[5-6] are outside the scope of token ci"
        );
        let bad = CliError::BadRequest {
            error: "unknown group".into(),
            detail: ": @gpu".into(),
        };
        assert_eq!(bad.exit_code(), 2);
        let down = CliError::Unreachable {
            url: "http://127.0.0.1:1".into(),
            detail: "connection refused".into(),
        };
        assert_eq!(down.exit_code(), 4);
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
    }

    #[test]
    fn a_root_that_is_down_is_exit_4() {
        // Port 1 on loopback: nothing listens there.
        let c = Client::new("127.0.0.1:1");
        let e = c.get("/actions").unwrap_err();
        assert_eq!(e.exit_code(), 4, "{e}");
        assert!(e.to_string().contains("http://127.0.0.1:1"), "{e}");
    }

    #[test]
    fn writes_without_a_token_stop_before_asking() {
        let c = Client::with_token(
            "127.0.0.1:1",
            Token::None("no token given: use --token-file".into()),
        );
        let e = c.post("/actions", &Value::Null).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("--token-file"), "{e}");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(segment("ci-bot"), "ci-bot");
        assert_eq!(segment("a/../b c"), "a%2F..%2Fb%20c");
    }
}

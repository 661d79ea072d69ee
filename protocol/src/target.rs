//! Where a Prometheus exporter listens, as an operator names it to `/join`.
//!
//! Operators write `cn12:9100` (the Metric Proxy's form) or a whole `http://cn12:9100/metrics`
//! URL. Both normalize to one [`Target`], so a target added twice in two spellings is one target.
//! The text comes from an HTTP query string and is stored in a node's state dir and shown back in
//! the UI, so anything that is not a plain host, port and path is refused here, with the reason.
//! TLS is not spoken: exporters on compute nodes listen on the node's own network, and an agent
//! stays small by not carrying a second TLS stack for them.

use std::fmt;

/// The longest target accepted; real ones are a few dozen bytes.
pub const MAX_TARGET_LEN: usize = 256;

/// A normalized exporter address: `http://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    host: String,
    port: u16,
    path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("empty target; give HOST:PORT, e.g. cn12:9100")]
    Empty,
    #[error("target longer than {MAX_TARGET_LEN} bytes")]
    TooLong,
    #[error("https is not supported; scrape the exporter over http on the node's network")]
    Https,
    #[error("only http:// targets are scraped, not {0:?}")]
    Scheme(String),
    #[error("no port in {0:?}; give HOST:PORT, e.g. cn12:9100")]
    NoPort(String),
    #[error("bad port {0:?}: a number from 1 to 65535")]
    BadPort(String),
    #[error("bad host {0:?}: letters, digits, '.', '-', '_' or a bracketed IPv6 address")]
    BadHost(String),
    #[error(
        "bad path {0:?}: it starts with '/' and has no spaces, quotes, '#' or control characters"
    )]
    BadPath(String),
}

impl Target {
    /// Parses `HOST:PORT`, `HOST:PORT/path` or `http://HOST:PORT[/path]`; the path defaults to
    /// `/metrics`.
    pub fn parse(text: &str) -> Result<Target, TargetError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(TargetError::Empty);
        }
        if text.len() > MAX_TARGET_LEN {
            return Err(TargetError::TooLong);
        }
        let rest = match text.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(TargetError::Https)
            }
            Some((scheme, _)) => return Err(TargetError::Scheme(scheme.to_string())),
            None => text,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/metrics"),
        };
        let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
            let (v6, after) = inner
                .split_once(']')
                .ok_or_else(|| TargetError::BadHost(authority.to_string()))?;
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(TargetError::BadHost(authority.to_string()));
            }
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| TargetError::NoPort(authority.to_string()))?;
            (format!("[{v6}]"), port)
        } else {
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or_else(|| TargetError::NoPort(authority.to_string()))?;
            let plain = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
            if !plain {
                return Err(TargetError::BadHost(host.to_string()));
            }
            (host.to_ascii_lowercase(), port)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(TargetError::BadPort(port.to_string())),
        };
        let path_ok = path.starts_with('/')
            && path
                .chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '#' | '<' | '>' | '\\'));
        if !path_ok {
            return Err(TargetError::BadPath(path.to_string()));
        }
        let target = Target {
            host,
            port,
            path: path.to_string(),
        };
        // The normal form is what is stored (the agent's state dir) and parsed again at restart:
        // it must pass the same limit, or a target accepted today is refused tomorrow.
        if target.url().len() > MAX_TARGET_LEN {
            return Err(TargetError::TooLong);
        }
        Ok(target)
    }

    /// The host as written (lower case; IPv6 in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, for connecting.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The full URL.
    pub fn url(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_target_whose_url_is_too_long_is_refused_up_front() {
        // Found by fuzzing: 250 bytes as HOST:PORT, 266 as the URL that is saved and read back.
        let host = "h".repeat(MAX_TARGET_LEN - 6);
        let text = format!("{host}:91");
        assert!(text.len() <= MAX_TARGET_LEN);
        assert_eq!(Target::parse(&text), Err(TargetError::TooLong));
        let fits = format!(
            "{}:91",
            "h".repeat(MAX_TARGET_LEN - "http://:91/metrics".len())
        );
        let t = Target::parse(&fits).expect("a URL of exactly the limit");
        assert_eq!(t.url().len(), MAX_TARGET_LEN);
        assert_eq!(Target::parse(&t.url()), Ok(t));
    }

    #[test]
    fn the_proxy_form_and_a_url_are_one_target() {
        let a = Target::parse("CN12:9100").expect("host:port");
        let b = Target::parse("http://cn12:9100/metrics").expect("url");
        assert_eq!(a, b);
        assert_eq!(a.url(), "http://cn12:9100/metrics");
        assert_eq!(a.authority(), "cn12:9100");
        let c = Target::parse("198.18.0.3:9100/probe?module=x").expect("path with query");
        assert_eq!(c.url(), "http://198.18.0.3:9100/probe?module=x");
        let d = Target::parse("[::1]:9100").expect("ipv6");
        assert_eq!(d.url(), "http://[::1]:9100/metrics");
        assert_eq!(d.host(), "[::1]");
    }

    #[test]
    fn hostile_or_broken_targets_are_refused_with_the_reason() {
        type Check = fn(&TargetError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, TargetError::Empty)),
            ("https://cn1:9100", |e| matches!(e, TargetError::Https)),
            ("file:///etc/passwd", |e| {
                matches!(e, TargetError::Scheme(_))
            }),
            ("cn1", |e| matches!(e, TargetError::NoPort(_))),
            ("cn1:0", |e| matches!(e, TargetError::BadPort(_))),
            ("cn1:99999", |e| matches!(e, TargetError::BadPort(_))),
            ("cn1:9100x", |e| matches!(e, TargetError::BadPort(_))),
            ("<script>:80", |e| matches!(e, TargetError::BadHost(_))),
            ("user@cn1:80", |e| matches!(e, TargetError::BadHost(_))),
            (":80", |e| matches!(e, TargetError::BadHost(_))),
            ("[zz]:80", |e| matches!(e, TargetError::BadHost(_))),
            ("cn1:80/a b", |e| matches!(e, TargetError::BadPath(_))),
            ("cn1:80/\"x", |e| matches!(e, TargetError::BadPath(_))),
            ("cn1:80/\u{7}", |e| matches!(e, TargetError::BadPath(_))),
        ];
        for (text, want) in cases {
            let err = Target::parse(text).expect_err(text);
            assert!(want(&err), "{text:?} gave {err:?}");
        }
        let long = format!("cn1:80/{}", "a".repeat(MAX_TARGET_LEN));
        assert_eq!(Target::parse(&long), Err(TargetError::TooLong));
    }
}

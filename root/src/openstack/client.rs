//! The HTTP side: a Keystone v3 token (made once, reused, made again before it expires or when a
//! service refuses it), the endpoint of each service from the token's catalog, and one request
//! helper that turns every failure into an [`OsError`] an operator can act on.
//!
//! The client is ureq, blocking, used from tokio's blocking pool (as the Redfish driver is): an
//! action makes a few requests a second at most, and ureq bounds each request's whole life by
//! one deadline. Every request is counted ([`Cloud::calls`]) so that actions and benchmarks can
//! say how many OpenStack API calls they made.

use super::creds::{Credentials, Method};
use banyan_agent::bmc::Secret;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, info};

/// The compute API microversion every Nova request asks for: 2.53 or later addresses services
/// and hypervisors by id; 2.74 lets an admin pick a server's host; 2.79 is the last before 2.88
/// dropped the hypervisors' resource figures.
pub const COMPUTE_MICROVERSION: &str = "2.79";
/// Placement 1.10 is enough for providers, inventories and usages.
const PLACEMENT_MICROVERSION: &str = "1.10";
/// A token is made again when less than this is left of its life (or a third of its life, when
/// that is shorter): a long action never presents a token that expires on the way.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// Largest answer read (a server list page of a big cloud is a few MB).
const MAX_ANSWER: u64 = 32 << 20;

/// The services banyan talks to, by their catalog type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Compute,
    Placement,
    Image,
}

impl Service {
    pub fn catalog_type(self) -> &'static str {
        match self {
            Service::Compute => "compute",
            Service::Placement => "placement",
            Service::Image => "image",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Service::Compute => "Nova",
            Service::Placement => "Placement",
            Service::Image => "Glance",
        }
    }
}

/// What went wrong, in the words an operator acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OsErrorKind {
    /// Keystone refused the credentials (401), or they could not be read.
    Credentials,
    /// A service refused even a fresh token (401).
    Unauthorized,
    /// 403: the roles do not allow it.
    Forbidden,
    /// 404.
    NotFound,
    /// 409: the object is busy or in the wrong state.
    Conflict,
    /// 400 or 422: the request was refused as bad.
    Refused,
    /// No answer, or 5xx: the service is down.
    Down,
    /// An answer that is not what the API documents.
    BadAnswer,
    /// Something missing in the setup (no endpoint in the catalog, bad CA file).
    Setup,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{detail}")]
pub struct OsError {
    pub kind: OsErrorKind,
    pub detail: String,
}

impl OsError {
    pub fn new(kind: OsErrorKind, detail: impl Into<String>) -> OsError {
        OsError {
            kind,
            detail: detail.into(),
        }
    }
}

struct Token {
    value: Secret,
    /// When it was made and when Keystone says it ends.
    made: SystemTime,
    expires: SystemTime,
    catalog: Vec<Endpoint>,
}

impl Token {
    fn fresh(&self, now: SystemTime) -> bool {
        let life = self.expires.duration_since(self.made).unwrap_or_default();
        let margin = RENEW_BEFORE.min(life / 3);
        self.expires
            .duration_since(now)
            .is_ok_and(|left| left > margin)
    }
}

#[derive(Debug, Clone)]
struct Endpoint {
    service_type: String,
    interface: String,
    region: String,
    url: String,
}

/// One cloud, authenticated on first use.
pub struct Cloud {
    creds: Credentials,
    agent: ureq::Agent,
    timeout: Duration,
    token: Mutex<Option<Arc<Token>>>,
    calls: AtomicU64,
}

impl Cloud {
    /// A client for `creds`; each request may take up to `timeout`. Nothing is sent yet.
    pub fn new(creds: Credentials, timeout: Duration) -> Result<Cloud, OsError> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Tokens and passwords go to the configured endpoints only, never to a proxy named
            // by the environment.
            .proxy(None)
            .max_redirects(0)
            .user_agent(concat!("banyan/", env!("CARGO_PKG_VERSION")))
            .timeout_global(Some(timeout));
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::Rustls)
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()));
        if creds.insecure {
            config = config.tls_config(tls.disable_verification(true).build());
        } else if let Some(ca) = &creds.cacert {
            let pem = std::fs::read(ca).map_err(|e| {
                OsError::new(
                    OsErrorKind::Setup,
                    format!(
                        "cannot read the CA file {} ({}): {e}",
                        ca.display(),
                        creds.source
                    ),
                )
            })?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(OsError::new(
                    OsErrorKind::Setup,
                    format!("the CA file {} holds no PEM certificate", ca.display()),
                ));
            }
            config = config.tls_config(
                tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                    .build(),
            );
        }
        Ok(Cloud {
            creds,
            agent: config.build().into(),
            timeout,
            token: Mutex::new(None),
            calls: AtomicU64::new(0),
        })
    }

    /// HTTP requests made so far (token requests included).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Where the credentials came from, for messages.
    pub fn source(&self) -> &str {
        &self.creds.source
    }

    /// Forgets the token, so that the next request makes a new one.
    pub fn drop_token(&self) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The token to use now: the kept one while it has life left, else a new one.
    fn token(&self) -> Result<Arc<Token>, OsError> {
        let mut kept = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = kept.as_ref().filter(|t| t.fresh(SystemTime::now())) {
            return Ok(t.clone());
        }
        let t = Arc::new(self.authenticate()?);
        *kept = Some(t.clone());
        Ok(t)
    }

    fn auth_body(&self) -> Value {
        match &self.creds.method {
            Method::Password {
                user,
                password,
                project,
            } => {
                let mut u = user.to_json();
                u["password"] = json!(password.expose());
                let mut auth =
                    json!({"identity": {"methods": ["password"], "password": {"user": u}}});
                if let Some(p) = project {
                    auth["scope"] = json!({"project": p.to_json()});
                }
                json!({ "auth": auth })
            }
            Method::ApplicationCredential {
                id,
                name,
                user,
                secret,
            } => {
                let mut ac = json!({"secret": secret.expose()});
                if let Some(id) = id {
                    ac["id"] = json!(id);
                } else {
                    ac["name"] = json!(name);
                    if let Some(u) = user {
                        ac["user"] = u.to_json();
                    }
                }
                json!({"auth": {"identity": {"methods": ["application_credential"], "application_credential": ac}}})
            }
        }
    }

    fn authenticate(&self) -> Result<Token, OsError> {
        let url = format!("{}/auth/tokens", self.creds.auth_url);
        let body = self.auth_body().to_string();
        let made = SystemTime::now();
        self.calls.fetch_add(1, Ordering::Relaxed);
        let result = self
            .agent
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .send(body.as_bytes());
        let mut response = result.map_err(|e| transport_error("Keystone", &url, e))?;
        let status = response.status().as_u16();
        let subject = response
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = read_body(&mut response, "Keystone", &url)?;
        match status {
            201 | 200 => {}
            401 => {
                return Err(OsError::new(
                    OsErrorKind::Credentials,
                    format!(
                        "Keystone ({}) refused the credentials from {}: {}; check the user, password or application credential",
                        self.creds.auth_url,
                        self.creds.source,
                        message(&bytes).unwrap_or_else(|| "HTTP 401".into())
                    ),
                ))
            }
            s => return Err(status_error("Keystone", "POST", &url, s, &bytes)),
        }
        let value = subject.ok_or_else(|| {
            OsError::new(
                OsErrorKind::BadAnswer,
                format!("Keystone at {url} made a token but sent no X-Subject-Token header"),
            )
        })?;
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| {
            OsError::new(
                OsErrorKind::BadAnswer,
                format!("Keystone at {url} answered a token that is not JSON: {e}"),
            )
        })?;
        let expires = doc["token"]["expires_at"]
            .as_str()
            .and_then(parse_time)
            .ok_or_else(|| {
                OsError::new(
                    OsErrorKind::BadAnswer,
                    format!("Keystone at {url} answered a token without a readable expires_at"),
                )
            })?;
        let mut catalog = Vec::new();
        for service in doc["token"]["catalog"].as_array().into_iter().flatten() {
            let service_type = service["type"].as_str().unwrap_or_default();
            for e in service["endpoints"].as_array().into_iter().flatten() {
                catalog.push(Endpoint {
                    service_type: service_type.to_string(),
                    interface: e["interface"].as_str().unwrap_or_default().to_string(),
                    region: e["region_id"]
                        .as_str()
                        .or_else(|| e["region"].as_str())
                        .unwrap_or_default()
                        .to_string(),
                    url: e["url"]
                        .as_str()
                        .unwrap_or_default()
                        .trim_end_matches('/')
                        .to_string(),
                });
            }
        }
        info!(
            source = %self.creds.source,
            expires_in_s = expires.duration_since(made).unwrap_or_default().as_secs(),
            endpoints = catalog.len(),
            "OpenStack token made"
        );
        Ok(Token {
            value: Secret::new(value),
            made,
            expires,
            catalog,
        })
    }

    fn endpoint(&self, token: &Token, service: Service) -> Result<String, OsError> {
        let want = service.catalog_type();
        let region = self.creds.region.as_deref();
        token
            .catalog
            .iter()
            .find(|e| {
                e.service_type == want
                    && e.interface == self.creds.interface
                    && region.is_none_or(|r| e.region == r)
            })
            .map(|e| e.url.clone())
            .ok_or_else(|| {
                let have: Vec<String> = token
                    .catalog
                    .iter()
                    .filter(|e| e.service_type == want)
                    .map(|e| format!("{} in {}", e.interface, e.region))
                    .collect();
                OsError::new(
                    OsErrorKind::Setup,
                    format!(
                        "the service catalog has no {want} endpoint with interface {}{} (it has {}); set interface or region in root.toml's [openstack]",
                        self.creds.interface,
                        region.map(|r| format!(" in region {r}")).unwrap_or_default(),
                        if have.is_empty() { "none".to_string() } else { have.join(", ") }
                    ),
                )
            })
    }

    /// Whether the catalog lists `service` (Glance is optional: image ids are used as given).
    pub fn has(&self, service: Service) -> Result<bool, OsError> {
        let token = self.token()?;
        Ok(self.endpoint(&token, service).is_ok())
    }

    /// `GET` a JSON document.
    pub fn get(&self, service: Service, path: &str) -> Result<Value, OsError> {
        self.request(service, "GET", path, None)
    }

    /// One request, JSON in and out (`Value::Null` for an empty answer). A service that refuses
    /// the token gets one fresh token and one more try: a token revoked or expired early is
    /// renewed without the caller knowing.
    pub fn request(
        &self,
        service: Service,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, OsError> {
        let token = self.token()?;
        match self.once(&token, service, method, path, body) {
            Err(e) if e.kind == OsErrorKind::Unauthorized => {
                info!(
                    service = service.label(),
                    path, "token refused; making a new one"
                );
                {
                    let mut kept = self.token.lock().unwrap_or_else(|p| p.into_inner());
                    if kept.as_ref().is_some_and(|k| Arc::ptr_eq(k, &token)) {
                        *kept = None;
                    }
                }
                let token = self.token()?;
                self.once(&token, service, method, path, body)
            }
            other => other,
        }
    }

    fn once(
        &self,
        token: &Token,
        service: Service,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, OsError> {
        let base = self.endpoint(token, service)?;
        let url = format!("{base}{path}");
        let label = service.label();
        let version = match service {
            Service::Compute => Some(format!("compute {COMPUTE_MICROVERSION}")),
            Service::Placement => Some(format!("placement {PLACEMENT_MICROVERSION}")),
            Service::Image => None,
        };
        let started = std::time::Instant::now();
        self.calls.fetch_add(1, Ordering::Relaxed);
        let result = match method {
            "GET" | "DELETE" => {
                let mut b = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                }
                .header("X-Auth-Token", token.value.expose())
                .header("Accept", "application/json");
                if let Some(v) = &version {
                    b = b.header("OpenStack-API-Version", v);
                }
                b.call()
            }
            _ => {
                let mut b = match method {
                    "POST" => self.agent.post(&url),
                    _ => self.agent.put(&url),
                }
                .header("X-Auth-Token", token.value.expose())
                .header("Accept", "application/json")
                .header("Content-Type", "application/json");
                if let Some(v) = &version {
                    b = b.header("OpenStack-API-Version", v);
                }
                let text = body.map(Value::to_string).unwrap_or_default();
                b.send(text.as_bytes())
            }
        };
        let mut response = result.map_err(|e| transport_error(label, &url, e))?;
        let status = response.status().as_u16();
        let bytes = read_body(&mut response, label, &url)?;
        debug!(
            service = label,
            method,
            path,
            status,
            ms = started.elapsed().as_millis() as u64,
            "OpenStack request"
        );
        match status {
            200..=299 if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Value::Null),
            200..=299 => serde_json::from_slice(&bytes).map_err(|e| {
                OsError::new(
                    OsErrorKind::BadAnswer,
                    format!("{label} answered {method} {url} with something that is not JSON: {e}"),
                )
            }),
            s => Err(status_error(label, method, &url, s, &bytes)),
        }
    }

    /// The longest a request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

fn read_body(
    response: &mut ureq::http::Response<ureq::Body>,
    label: &str,
    url: &str,
) -> Result<Vec<u8>, OsError> {
    response
        .body_mut()
        .with_config()
        .limit(MAX_ANSWER)
        .read_to_vec()
        .map_err(|e| transport_error(label, url, e))
}

/// The message an OpenStack service put in its error body: Nova's `{"itemNotFound":
/// {"message": ...}}`, Keystone's `{"error": {"message": ...}}`, Placement's `{"errors":
/// [{"detail": ...}]}`.
fn message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    if let Some(d) = v["errors"][0]["detail"].as_str() {
        return Some(d.trim().to_string());
    }
    v.as_object()?
        .values()
        .find_map(|inner| inner["message"].as_str())
        .map(|m| m.trim().to_string())
}

fn status_error(label: &str, method: &str, url: &str, status: u16, body: &[u8]) -> OsError {
    let said = message(body).map(|m| format!(": {m}")).unwrap_or_default();
    let (kind, what) = match status {
        401 => (OsErrorKind::Unauthorized, "refused the token".to_string()),
        403 => (
            OsErrorKind::Forbidden,
            "refused: the credentials' roles do not allow it (an admin role is needed)".to_string(),
        ),
        404 => (OsErrorKind::NotFound, "has no such thing".to_string()),
        409 => (
            OsErrorKind::Conflict,
            "refused it as conflicting".to_string(),
        ),
        400 | 422 => (OsErrorKind::Refused, "refused the request".to_string()),
        500..=599 => (
            OsErrorKind::Down,
            "failed (is it or a service behind it down?)".to_string(),
        ),
        s => (
            OsErrorKind::BadAnswer,
            format!("answered an unexpected HTTP {s}"),
        ),
    };
    OsError::new(
        kind,
        format!("{label} {what} (HTTP {status} for {method} {url}){said}"),
    )
}

fn transport_error(label: &str, url: &str, e: ureq::Error) -> OsError {
    let why = match &e {
        ureq::Error::Timeout(_) => "no answer in time".to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::ConnectionFailed => "connection failed".to_string(),
        ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            "connection refused".to_string()
        }
        other => other.to_string(),
    };
    let kind = match e {
        ureq::Error::Rustls(_) | ureq::Error::Tls(_) => OsErrorKind::Setup,
        ureq::Error::BodyExceedsLimit(_) | ureq::Error::Protocol(_) => OsErrorKind::BadAnswer,
        _ => OsErrorKind::Down,
    };
    OsError::new(
        kind,
        format!(
            "{label} at {url} does not answer ({why}): is it running and reachable from the root?"
        ),
    )
}

/// Keystone's `expires_at` (`2026-12-03T08:10:00.000000Z`, or with an offset `+00:00`).
pub fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (date, rest) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time_end = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(time_end);
    let mut t = time.splitn(3, ':');
    let h: i64 = t.next()?.parse().ok()?;
    let min: i64 = t.next()?.parse().ok()?;
    let sec: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec >= 61.0 {
        return None;
    }
    let offset = match zone {
        "" | "Z" => 0,
        z => {
            let sign = if z.starts_with('-') { -1 } else { 1 };
            let (zh, zm) = z[1..].split_once(':').unwrap_or((&z[1..], "0"));
            sign * (zh.parse::<i64>().ok()? * 3600 + zm.parse::<i64>().ok()? * 60)
        }
    };
    // Days since 1970-01-01 of a civil date (the proleptic Gregorian calendar).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60 + sec.trunc() as i64 - offset;
    let whole = u64::try_from(secs).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(whole) + Duration::from_secs_f64(sec.fract()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystone_times_are_read() {
        let t = parse_time("2026-12-03T08:10:05.000000Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_796_285_405
        );
        let u = parse_time("2026-12-03T09:10:05+01:00").unwrap();
        assert_eq!(t, u);
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(UNIX_EPOCH));
        for bad in [
            "",
            "2026-13-01T00:00:00Z",
            "2026-12-03",
            "x-y-zT1:2:3",
            "2026-12-03T25:00:00Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_bodies_of_each_service_are_read() {
        assert_eq!(
            message(
                br#"{"itemNotFound": {"message": "Service 7 could not be found.", "code": 404}}"#
            ),
            Some("Service 7 could not be found.".into())
        );
        assert_eq!(
            message(br#"{"error": {"message": "The request you have made requires authentication.", "code": 401, "title": "Unauthorized"}}"#),
            Some("The request you have made requires authentication.".into())
        );
        assert_eq!(
            message(br#"{"errors": [{"status": 404, "detail": "No resource provider"}]}"#),
            Some("No resource provider".into())
        );
        assert_eq!(message(b"<html>502</html>"), None);
        let e = status_error(
            "Nova",
            "PUT",
            "http://n/os-services/1",
            409,
            br#"{"conflictingRequest": {"message": "busy"}}"#,
        );
        assert_eq!(e.kind, OsErrorKind::Conflict);
        assert_eq!(
            e.detail,
            "Nova refused it as conflicting (HTTP 409 for PUT http://n/os-services/1): busy"
        );
    }

    #[test]
    fn a_token_is_renewed_before_it_expires() {
        let made = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let t = Token {
            value: Secret::new("t"),
            made,
            expires: made + Duration::from_secs(3600),
            catalog: Vec::new(),
        };
        assert!(t.fresh(made + Duration::from_secs(3000)));
        assert!(!t.fresh(made + Duration::from_secs(3301)));
        // A short-lived token (a test Keystone's) is renewed with a third of its life left.
        let short = Token {
            expires: made + Duration::from_secs(60),
            ..t
        };
        assert!(short.fresh(made + Duration::from_secs(39)));
        assert!(!short.fresh(made + Duration::from_secs(41)));
    }
}

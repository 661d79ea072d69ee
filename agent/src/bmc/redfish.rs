//! The Redfish driver: a few JSON calls over HTTP(S) with basic auth.
//!
//! Calls: `GET /redfish/v1/` (no auth; proves the service is Redfish), `GET` the system
//! (`PowerState`, the reset action and its `ResetType@Redfish.AllowableValues`, `Boot`), `POST` its
//! `#ComputerSystem.Reset` target, `PATCH` its `Boot` override. The system is the one
//! `system_id` names, or else the only member of `/redfish/v1/Systems`, or else the member whose
//! `Id` or `Name` is the node's name; its path is then kept, so discovery costs requests once.
//!
//! The client is ureq, blocking, on tokio's blocking pool: a handful of small requests per
//! operation does not justify an async HTTP stack, and ureq bounds each request's whole life
//! (connect, TLS, headers, body) by one deadline, which is what stops a BMC that trickles its
//! answer. Redirects are followed here rather than by ureq, because a Redfish service redirects
//! POSTs too (sushy answers `/Systems/NAME` with a 307 to the UUID path), the credentials must go
//! only to the configured BMC, and a loop deserves its own message. Sessions
//! (`SessionService`) are not used: basic auth works on every service, and a session would be
//! one more thing to leak or expire.

use super::{
    excerpt, Bmc, BmcError, BmcFuture, BootDevice, CheckReport, Endpoint, ErrorKind, PowerState,
    ResetKind, Tls,
};
use base64::Engine as _;
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::debug;

/// Largest answer read from a BMC: a system resource is a few KiB; anything bigger is not one.
pub const MAX_ANSWER: u64 = 1024 * 1024;

/// Most redirects followed for one request.
pub const MAX_REDIRECTS: usize = 5;
/// How many times a read answered with a server error is asked again, and the pause before.
const READ_RETRIES: u32 = 2;
const READ_RETRY_PAUSE: Duration = Duration::from_millis(250);

/// Most collection members read while looking for the node's system by name.
const MAX_DISCOVERY_READS: usize = 256;

/// A Redfish BMC.
pub struct Redfish {
    ep: Endpoint,
    client: Arc<Client>,
}

/// What the blocking side needs; shared with the blocking tasks.
struct Client {
    ep: Endpoint,
    agent: ureq::Agent,
    /// `scheme://host:port`, the only origin credentials are sent to.
    origin: String,
    /// `Authorization` header value.
    auth: String,
    /// The system's path once known.
    system: Mutex<Option<String>>,
}

/// A system resource as read.
struct SystemDoc {
    /// The path that answered (after redirects).
    path: String,
    value: Value,
    /// For `If-Match` on a PATCH.
    etag: Option<String>,
}

/// One answer, after redirects.
struct Answer {
    /// The path that answered (after redirects).
    path: String,
    status: u16,
    content_type: String,
    etag: Option<String>,
    body: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Patch,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
        }
    }
}

impl Redfish {
    /// A driver for `ep`. Reads the CA file now, so that a bad one is reported before any call.
    pub fn new(ep: Endpoint) -> Result<Redfish, BmcError> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Never a proxy from the environment (ureq reads HTTP_PROXY and friends by default):
            // BMC credentials go straight to the BMC, on the management network.
            .proxy(None)
            .max_redirects(0)
            .user_agent(concat!("banyan/", env!("CARGO_PKG_VERSION")))
            .max_response_header_size(64 * 1024)
            .timeout_global(Some(ep.timeout));
        match &ep.tls {
            Tls::Plain => {}
            Tls::Insecure => {
                config = config.tls_config(tls_builder().disable_verification(true).build());
            }
            Tls::Verify { ca_file } => {
                let pem = std::fs::read(ca_file).map_err(|e| {
                    ep.error(ErrorKind::Local(format!(
                        "cannot read CA file {}: {e}: fix ca_file in root.toml",
                        ca_file.display()
                    )))
                })?;
                let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect();
                if certs.is_empty() {
                    return Err(ep.error(ErrorKind::Local(format!(
                        "CA file {} holds no PEM certificate: fix ca_file in root.toml",
                        ca_file.display()
                    ))));
                }
                config = config.tls_config(
                    tls_builder()
                        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                        .build(),
                );
            }
        }
        let agent: ureq::Agent = config.build().into();
        let origin = ep.address();
        let token = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            ep.user,
            ep.password.expose()
        ));
        let client = Client {
            ep: ep.clone(),
            agent,
            origin,
            auth: format!("Basic {token}"),
            system: Mutex::new(None),
        };
        Ok(Redfish {
            ep,
            client: Arc::new(client),
        })
    }

    /// Runs `op` on the blocking pool, within the endpoint's timeout.
    fn run<T, F>(&self, op: F) -> BmcFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Client, Instant) -> Result<T, ErrorKind> + Send + 'static,
    {
        let client = self.client.clone();
        let timeout = self.ep.timeout;
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let task = tokio::task::spawn_blocking(move || op(&client, deadline));
            // ureq bounds every request by the time left, so the task ends by itself; this
            // backstop covers what ureq cannot bound (a resolver that hangs).
            match tokio::time::timeout(timeout + Duration::from_secs(1), task).await {
                Ok(Ok(result)) => result.map_err(|k| self.ep.error(k)),
                Ok(Err(e)) => Err(self.ep.error(ErrorKind::Local(format!(
                    "the Redfish request task failed: {e}"
                )))),
                Err(_) => Err(self.ep.error(ErrorKind::Timeout(timeout))),
            }
        })
    }
}

fn tls_builder() -> ureq::tls::TlsConfigBuilder {
    // The ring provider the agent links for QUIC; ureq would otherwise look for a process default.
    ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
}

impl Bmc for Redfish {
    fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    fn power_state(&self) -> BmcFuture<'_, PowerState> {
        self.run(|c, deadline| {
            let (_, system) = c.system(deadline)?;
            power_of(&system)
        })
    }

    fn reset(&self, kind: ResetKind) -> BmcFuture<'_, ()> {
        self.run(move |c, deadline| {
            let (path, system) = c.system(deadline)?;
            let action = reset_action(&path, &system);
            let offered = match &action.allowed {
                Some(list) => Some(list.clone()),
                None => match &action.info {
                    Some(info) => c.action_info_values(info, deadline)?,
                    None => None,
                },
            };
            let chosen = choose_reset(kind, offered.as_deref())?;
            let Some(target) = action.target else {
                return Err(ErrorKind::Unsupported(
                    "the system has no #ComputerSystem.Reset action: this BMC cannot reset it"
                        .into(),
                ));
            };
            debug!(node = %c.ep.node, bmc = %c.origin, reset = chosen, "redfish reset");
            let body = serde_json::json!({ "ResetType": chosen });
            let answer = c.request(Method::Post, &target, Some(&body), None, deadline)?;
            c.expect_success(&answer, &format!("ResetType {chosen}"))
        })
    }

    fn set_next_boot(&self, device: BootDevice) -> BmcFuture<'_, ()> {
        self.run(move |c, deadline| {
            let system = c.system_doc(deadline)?;
            let value = match device {
                BootDevice::Pxe => "Pxe",
                BootDevice::Disk => "Hdd",
            };
            let boot = system.value.get("Boot");
            if boot.is_none() {
                return Err(ErrorKind::Unsupported(
                    "the system has no Boot property: this BMC cannot set the next boot device"
                        .into(),
                ));
            }
            if let Some(allowed) = boot
                .and_then(|b| b.get("BootSourceOverrideTarget@Redfish.AllowableValues"))
                .and_then(string_list)
            {
                if !allowed.iter().any(|a| a == value) {
                    return Err(ErrorKind::Unsupported(format!(
                        "the BMC does not offer boot override {value} (it offers {})",
                        allowed.join(", ")
                    )));
                }
            }
            let body = serde_json::json!({
                "Boot": { "BootSourceOverrideTarget": value, "BootSourceOverrideEnabled": "Once" }
            });
            let answer = c.request(
                Method::Patch,
                &system.path,
                Some(&body),
                system.etag.as_deref(),
                deadline,
            )?;
            c.expect_success(&answer, &format!("boot override {value}"))
        })
    }

    fn check(&self) -> BmcFuture<'_, CheckReport> {
        self.run(|c, deadline| {
            // Unauthenticated first: tells "not a Redfish service" from "credentials refused".
            let root = c.request(Method::Get, "/redfish/v1/", None, None, deadline)?;
            let root = c.json_of(&root)?;
            if root.get("RedfishVersion").is_none() && root.get("Systems").is_none() {
                return Err(ErrorKind::BadAnswer(
                    "/redfish/v1/ is JSON but not a Redfish service root".into(),
                ));
            }
            let (path, system) = c.system(deadline)?;
            let power = power_of(&system)?;
            let action = reset_action(&path, &system);
            let offered = match (&action.allowed, &action.info) {
                (Some(list), _) => Some(list.clone()),
                (None, Some(info)) => c.action_info_values(info, deadline)?,
                (None, None) => None,
            };
            let resets = match (&action.target, offered) {
                (None, _) => Vec::new(),
                (Some(_), None) => ResetKind::ALL.to_vec(),
                (Some(_), Some(list)) => ResetKind::ALL
                    .into_iter()
                    .filter(|k| choose_reset(*k, Some(&list)).is_ok())
                    .collect(),
            };
            Ok(CheckReport {
                system: path,
                power,
                resets,
            })
        })
    }
}

/// The system's `PowerState`.
fn power_of(system: &Value) -> Result<PowerState, ErrorKind> {
    match system.get("PowerState") {
        Some(Value::String(s)) => Ok(match s.as_str() {
            "On" => PowerState::On,
            "Off" => PowerState::Off,
            other => PowerState::Other(excerpt(other, 40)),
        }),
        Some(Value::Null) | None => Err(ErrorKind::BadAnswer(
            "the system resource has no PowerState".into(),
        )),
        Some(other) => Err(ErrorKind::BadAnswer(format!(
            "PowerState is not a string: {}",
            excerpt(&other.to_string(), 60)
        ))),
    }
}

/// The reset action a system resource describes.
struct ResetAction {
    target: Option<String>,
    allowed: Option<Vec<String>>,
    /// `@Redfish.ActionInfo`: where the allowed values are when not inline.
    info: Option<String>,
}

fn reset_action(path: &str, system: &Value) -> ResetAction {
    let Some(action) = system
        .get("Actions")
        .and_then(|a| a.get("#ComputerSystem.Reset"))
    else {
        return ResetAction {
            target: None,
            allowed: None,
            info: None,
        };
    };
    let target = action
        .get("target")
        .and_then(Value::as_str)
        .map(str::to_owned)
        // The standard place, for services that leave `target` out.
        .or_else(|| Some(format!("{path}/Actions/ComputerSystem.Reset")));
    ResetAction {
        target,
        allowed: action
            .get("ResetType@Redfish.AllowableValues")
            .and_then(string_list),
        info: action
            .get("@Redfish.ActionInfo")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

/// The `ResetType` to send for `kind`, from what the BMC offers (`None`: it does not say, so
/// the standard name is tried).
fn choose_reset(kind: ResetKind, offered: Option<&[String]>) -> Result<&'static str, ErrorKind> {
    // ForceOn does what On does for a node that is off; some BMCs offer only one of them.
    let candidates: &[&'static str] = match kind {
        ResetKind::On => &["On", "ForceOn"],
        ResetKind::GracefulShutdown => &["GracefulShutdown"],
        ResetKind::ForceOff => &["ForceOff"],
        ResetKind::GracefulRestart => &["GracefulRestart"],
        ResetKind::ForceRestart => &["ForceRestart"],
        ResetKind::PowerCycle => &["PowerCycle"],
    };
    let Some(offered) = offered else {
        return Ok(candidates[0]);
    };
    if let Some(c) = candidates.iter().find(|c| offered.iter().any(|o| o == *c)) {
        return Ok(c);
    }
    let hint = match kind {
        ResetKind::PowerCycle => ": power off (ForceOff), then on, instead",
        ResetKind::GracefulShutdown | ResetKind::GracefulRestart => ": use the forced kind",
        _ => "",
    };
    Err(ErrorKind::Unsupported(format!(
        "the BMC does not offer ResetType {kind} (it offers {}){hint}",
        if offered.is_empty() {
            "none".to_string()
        } else {
            offered.join(", ")
        }
    )))
}

/// A JSON array of strings; `None` if the value is anything else.
fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(|s| excerpt(s, 40))
            .collect()
    })
}

impl Client {
    /// The system's path and resource.
    fn system(&self, deadline: Instant) -> Result<(String, Value), ErrorKind> {
        let doc = self.system_doc(deadline)?;
        Ok((doc.path, doc.value))
    }

    /// The system resource, found first if need be.
    fn system_doc(&self, deadline: Instant) -> Result<SystemDoc, ErrorKind> {
        let known = self.system.lock().map(|s| s.clone()).unwrap_or(None);
        let path = match known {
            Some(p) => p,
            None => self.find_system(deadline)?,
        };
        let answer = self.request(Method::Get, &path, None, None, deadline)?;
        let value = match answer.status {
            200..=299 => self.json_of(&answer)?,
            404 => {
                // Looked for again next time: a BMC may renumber its systems when it restarts.
                if let Ok(mut s) = self.system.lock() {
                    *s = None;
                }
                return Err(ErrorKind::NotFound(match &self.ep.system_id {
                    Some(_) => format!(
                        "no system at {path}: fix system_id for this node in root.toml, or leave it out to discover the system"
                    ),
                    None => format!(
                        "the system found at {path} is gone; it is looked for again on the next call"
                    ),
                }));
            }
            _ => return Err(self.status_error(&answer, &format!("GET {path}"))),
        };
        // Keep the path that answered: the redirect (name to UUID) is not worth a round trip.
        if let Ok(mut s) = self.system.lock() {
            *s = Some(answer.path.clone());
        }
        Ok(SystemDoc {
            path: answer.path,
            value,
            etag: answer.etag,
        })
    }

    /// Finds the node's system: by `system_id`, or among the members of `/redfish/v1/Systems`.
    fn find_system(&self, deadline: Instant) -> Result<String, ErrorKind> {
        if let Some(id) = &self.ep.system_id {
            return Ok(format!("/redfish/v1/Systems/{}", path_segment(id)));
        }
        let list = self.request(Method::Get, "/redfish/v1/Systems", None, None, deadline)?;
        if !(200..300).contains(&list.status) {
            return Err(self.status_error(&list, "GET /redfish/v1/Systems"));
        }
        let list = self.json_of(&list)?;
        let members: Vec<String> = list
            .get("Members")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(|e| e.get("@odata.id").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let node = &self.ep.node;
        match members.as_slice() {
            [] => {
                return Err(ErrorKind::NotFound(
                    "/redfish/v1/Systems lists no system".into(),
                ))
            }
            [only] => return Ok(only.clone()),
            _ => {}
        }
        if let Some(m) = members
            .iter()
            .find(|m| m.trim_end_matches('/').rsplit('/').next() == Some(node.as_str()))
        {
            return Ok(m.clone());
        }
        for member in members.iter().take(MAX_DISCOVERY_READS) {
            let answer = self.request(Method::Get, member, None, None, deadline)?;
            if !(200..300).contains(&answer.status) {
                continue;
            }
            let Ok(system) = self.json_of(&answer) else {
                continue;
            };
            let named = |key: &str| system.get(key).and_then(Value::as_str) == Some(node);
            if named("Id") || named("Name") {
                debug!(node = %node, bmc = %self.origin, system = %member, "redfish system found by name");
                return Ok(answer.path);
            }
        }
        Err(ErrorKind::NotFound(format!(
            "none of the {} systems of this BMC has Id or Name {node:?}: set system_id for this node in root.toml",
            members.len()
        )))
    }

    /// The allowed `ResetType` values an `@Redfish.ActionInfo` resource lists.
    fn action_info_values(
        &self,
        path: &str,
        deadline: Instant,
    ) -> Result<Option<Vec<String>>, ErrorKind> {
        let answer = self.request(Method::Get, path, None, None, deadline)?;
        if !(200..300).contains(&answer.status) {
            // The action info is a hint only: without it the standard name is tried.
            return Ok(None);
        }
        let info = self.json_of(&answer)?;
        Ok(info
            .get("Parameters")
            .and_then(Value::as_array)
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p.get("Name").and_then(Value::as_str) == Some("ResetType"))
            })
            .and_then(|p| p.get("AllowableValues"))
            .and_then(string_list))
    }

    /// A 2xx answer, or the error its status means.
    fn expect_success(&self, answer: &Answer, what: &str) -> Result<(), ErrorKind> {
        match answer.status {
            200..=299 => Ok(()),
            // A service that lists a value and then refuses it (sushy lists Nmi, answers 501).
            400 | 405 | 501 => Err(ErrorKind::Unsupported(format!(
                "the BMC refused {what} (HTTP {}: {})",
                answer.status,
                redfish_message(answer)
            ))),
            _ => Err(self.status_error(answer, what)),
        }
    }

    /// The error a non-2xx status means.
    fn status_error(&self, answer: &Answer, what: &str) -> ErrorKind {
        let detail = format!(
            "HTTP {} to {what}: {}",
            answer.status,
            redfish_message(answer)
        );
        match answer.status {
            401 => ErrorKind::Credentials(detail),
            403 => ErrorKind::Forbidden(detail),
            404 => ErrorKind::NotFound(detail),
            500..=599 => ErrorKind::Failed(detail),
            _ => ErrorKind::BadAnswer(detail),
        }
    }

    /// The answer's body as a JSON object.
    fn json_of(&self, answer: &Answer) -> Result<Value, ErrorKind> {
        let text = String::from_utf8_lossy(&answer.body);
        let start = text.trim_start();
        if answer.content_type.contains("html") || start.starts_with('<') {
            return Err(ErrorKind::BadAnswer(format!(
                "{} answered an HTML page, not Redfish JSON: {}",
                answer.path,
                excerpt(&html_title(start).unwrap_or_else(|| start.to_string()), 80)
            )));
        }
        let value: Value = serde_json::from_str(start).map_err(|e| {
            ErrorKind::BadAnswer(format!(
                "{} answered something that is not JSON ({e}): {}",
                answer.path,
                excerpt(start, 60)
            ))
        })?;
        if !value.is_object() {
            return Err(ErrorKind::BadAnswer(format!(
                "{} answered JSON that is not an object",
                answer.path
            )));
        }
        Ok(value)
    }

    /// One request, following same-origin redirects. A read answered with a server error
    /// (500, 502-504) is asked again, twice at most and within the deadline: BMCs (and sushy's
    /// SQLite, "database is locked") fail a read now and then under concurrent requests, and a
    /// read changes nothing. Changes are never repeated.
    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        deadline: Instant,
    ) -> Result<Answer, ErrorKind> {
        let mut tries = 0;
        loop {
            let answer = self.request_once(method, path, body, if_match, deadline)?;
            tries += 1;
            let transient = matches!(answer.status, 500 | 502 | 503 | 504);
            if method != Method::Get
                || !transient
                || tries > READ_RETRIES
                || Instant::now() + READ_RETRY_PAUSE >= deadline
            {
                return Ok(answer);
            }
            debug!(node = %self.ep.node, path, status = answer.status, "a read failed; asking again");
            std::thread::sleep(READ_RETRY_PAUSE);
        }
    }

    fn request_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        deadline: Instant,
    ) -> Result<Answer, ErrorKind> {
        let mut method = method;
        let mut body = body;
        let mut path = self.local_path(path)?;
        let mut seen = vec![path.clone()];
        loop {
            let (answer, location) = self.exchange(method, &path, body, if_match, deadline)?;
            if !matches!(answer.status, 301 | 302 | 303 | 307 | 308) {
                return Ok(answer);
            }
            let Some(location) = location else {
                return Err(ErrorKind::BadAnswer(format!(
                    "HTTP {} redirect without a Location for {path}",
                    answer.status
                )));
            };
            let next = self.local_path(&resolve(&path, &location))?;
            if seen.contains(&next) {
                seen.push(next);
                return Err(ErrorKind::BadAnswer(format!(
                    "redirect loop: {}",
                    seen.join(" -> ")
                )));
            }
            if seen.len() > MAX_REDIRECTS {
                return Err(ErrorKind::BadAnswer(format!(
                    "more than {MAX_REDIRECTS} redirects from {}",
                    seen[0]
                )));
            }
            seen.push(next.clone());
            if answer.status == 303 {
                method = Method::Get;
                body = None;
            }
            path = next;
        }
    }

    /// `target` as a path on this BMC. An absolute URL elsewhere is refused: the credentials go
    /// to the configured BMC only.
    fn local_path(&self, target: &str) -> Result<String, ErrorKind> {
        if target.starts_with('/') && !target.starts_with("//") {
            return Ok(target.to_string());
        }
        if let Some(rest) = target.strip_prefix(&self.origin) {
            if rest.is_empty() {
                return Ok("/".into());
            }
            if rest.starts_with('/') {
                return Ok(rest.to_string());
            }
        }
        Err(ErrorKind::BadAnswer(format!(
            "{} is not on the configured BMC, and credentials are sent to {} only",
            excerpt(target, 80),
            self.origin
        )))
    }

    /// One HTTP exchange, its answer read whole (up to [`MAX_ANSWER`]).
    fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
        deadline: Instant,
    ) -> Result<(Answer, Option<String>), ErrorKind> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::Timeout(self.ep.timeout));
        }
        let url = format!("{}{path}", self.origin);
        let started = Instant::now();
        let result = match method {
            Method::Get => self
                .agent
                .get(&url)
                .header("Authorization", &self.auth)
                .header("Accept", "application/json")
                .header("OData-Version", "4.0")
                .config()
                .timeout_global(Some(left))
                .build()
                .call(),
            Method::Post | Method::Patch => {
                let builder = if method == Method::Post {
                    self.agent.post(&url)
                } else {
                    self.agent.patch(&url)
                };
                let mut builder = builder
                    .header("Authorization", &self.auth)
                    .header("Accept", "application/json")
                    .header("OData-Version", "4.0")
                    .header("Content-Type", "application/json");
                if let Some(tag) = if_match {
                    builder = builder.header("If-Match", tag);
                }
                let text = body.map(Value::to_string).unwrap_or_else(|| "{}".into());
                builder
                    .config()
                    .timeout_global(Some(left))
                    .build()
                    .send(text.as_bytes())
            }
        };
        let mut response = result.map_err(|e| self.transport_error(e))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_type = header("content-type").unwrap_or_default();
        let location = header("location");
        let etag = header("etag");
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| self.transport_error(e))?;
        debug!(
            node = %self.ep.node,
            bmc = %self.origin,
            method = method.as_str(),
            path,
            status,
            ms = started.elapsed().as_millis() as u64,
            "redfish request"
        );
        let answer = Answer {
            path: path.to_string(),
            status,
            content_type: content_type.to_ascii_lowercase(),
            etag,
            body,
        };
        Ok((answer, location))
    }

    /// What a ureq error means for the operator.
    fn transport_error(&self, e: ureq::Error) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match e {
            ureq::Error::Timeout(_) => ErrorKind::Timeout(self.ep.timeout),
            ureq::Error::HostNotFound => {
                ErrorKind::Unreachable(format!("host {} not found", self.ep.host))
            }
            ureq::Error::ConnectionFailed => ErrorKind::Unreachable("connection failed".into()),
            ureq::Error::Io(io) => match io.kind() {
                Io::TimedOut | Io::WouldBlock => ErrorKind::Timeout(self.ep.timeout),
                Io::ConnectionRefused => ErrorKind::Unreachable("connection refused".into()),
                Io::InvalidData => tls_or_bad(&io.to_string()),
                _ => ErrorKind::Unreachable(io.to_string()),
            },
            ureq::Error::Rustls(e) => ErrorKind::Tls(e.to_string()),
            ureq::Error::Tls(e) => ErrorKind::Tls(e.to_string()),
            ureq::Error::BodyExceedsLimit(_) => {
                ErrorKind::BadAnswer(format!("an answer larger than {} KiB", MAX_ANSWER / 1024))
            }
            ureq::Error::LargeResponseHeader(..) => {
                ErrorKind::BadAnswer("HTTP headers larger than 64 KiB".into())
            }
            ureq::Error::Protocol(e) => ErrorKind::BadAnswer(format!("not HTTP: {e}")),
            ureq::Error::BodyStalled => ErrorKind::Timeout(self.ep.timeout),
            other => ErrorKind::BadAnswer(other.to_string()),
        }
    }
}

/// An I/O error with invalid data: rustls reports handshake failures this way.
fn tls_or_bad(text: &str) -> ErrorKind {
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") {
        ErrorKind::Tls(text.to_string())
    } else {
        ErrorKind::BadAnswer(text.to_string())
    }
}

/// The message of a Redfish error answer, or an excerpt of whatever the body is.
fn redfish_message(answer: &Answer) -> String {
    let text = String::from_utf8_lossy(&answer.body);
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        let error = v.get("error");
        let msg = error
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .or_else(|| {
                error
                    .and_then(|e| e.get("@Message.ExtendedInfo"))
                    .and_then(|i| i.get(0))
                    .and_then(|m| m.get("Message"))
                    .and_then(Value::as_str)
            });
        if let Some(m) = msg {
            return excerpt(m, 160);
        }
    }
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return "no message".into();
    }
    if let Some(title) = html_title(trimmed) {
        return format!("an HTML page: {}", excerpt(&title, 80));
    }
    excerpt(trimmed, 120)
}

/// The `<title>` of an HTML page.
fn html_title(text: &str) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let start = lower.find("<title>")? + "<title>".len();
    let end = start + lower.get(start..)?.find("</title>")?;
    text.get(start..end).map(str::to_owned)
}

/// `location` (absolute, absolute-path or relative) against the path it answered.
fn resolve(base: &str, location: &str) -> String {
    if location.contains("://") || location.starts_with('/') {
        return location.to_string();
    }
    let dir = match base.rfind('/') {
        Some(i) => &base[..=i],
        None => "/",
    };
    format!("{dir}{location}")
}

/// A system id as one path segment: unreserved characters as they are, the rest escaped.
fn path_segment(id: &str) -> String {
    id.bytes()
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

    fn offered(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resets_are_chosen_from_what_the_bmc_offers() {
        let sushy = offered(&[
            "On",
            "ForceOff",
            "GracefulShutdown",
            "GracefulRestart",
            "ForceRestart",
            "Nmi",
            "ForceOn",
        ]);
        assert_eq!(choose_reset(ResetKind::On, Some(&sushy)), Ok("On"));
        assert_eq!(
            choose_reset(ResetKind::On, Some(&offered(&["ForceOn", "ForceOff"]))),
            Ok("ForceOn")
        );
        let err = choose_reset(ResetKind::PowerCycle, Some(&sushy)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("does not offer ResetType PowerCycle"),
            "{text}"
        );
        assert!(text.contains("ForceOff, GracefulShutdown"), "{text}");
        assert_eq!(choose_reset(ResetKind::PowerCycle, None), Ok("PowerCycle"));
    }

    #[test]
    fn redirects_resolve_against_the_path() {
        assert_eq!(resolve("/redfish/v1/Systems/a", "/x/y"), "/x/y");
        assert_eq!(
            resolve("/redfish/v1/Systems/a", "b"),
            "/redfish/v1/Systems/b"
        );
        assert_eq!(resolve("/a", "http://h:1/z"), "http://h:1/z");
    }

    #[test]
    fn messages_come_from_redfish_errors_or_html_titles() {
        let answer = |body: &str| Answer {
            path: "/".into(),
            status: 500,
            content_type: String::new(),
            etag: None,
            body: body.as_bytes().to_vec(),
        };
        assert_eq!(
            redfish_message(&answer(r#"{"error":{"message":"Incorrect password"}}"#)),
            "Incorrect password"
        );
        assert_eq!(
            redfish_message(&answer("<html><title>Login</title></html>")),
            "an HTML page: Login"
        );
        assert_eq!(redfish_message(&answer("")), "no message");
    }

    #[test]
    fn system_ids_are_one_segment() {
        assert_eq!(path_segment("node1"), "node1");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }
}

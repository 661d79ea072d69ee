//! OpenStack credentials, read the way OpenStack's own tools read them: a cloud of a
//! `clouds.yaml` (`OS_CLOUD`), or `OS_*` variables (an openrc file, or the root's environment).
//!
//! Two ways to authenticate are understood, the two an operator's openrc or clouds.yaml gives:
//! a password (user and project by name or id, with their domains) and an application
//! credential (id, or name with its user, and secret). Tokens are Keystone v3's only.
//!
//! Secrets stay in [`Secret`]s: the `Debug` of everything here shows `***` for them, so neither a
//! log line nor an audit record can carry one by accident.

use banyan_agent::bmc::Secret;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How to reach and authenticate to one cloud.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Keystone v3's base URL, always ending in `/v3`.
    pub auth_url: String,
    pub method: Method,
    /// Which endpoints of the catalog to use: `public`, `internal` or `admin`.
    pub interface: String,
    /// The region of the endpoints; any region when unset.
    pub region: Option<String>,
    /// A CA bundle for Keystone's and the services' certificates.
    pub cacert: Option<PathBuf>,
    /// No certificate check (clouds.yaml `verify: false`, `OS_INSECURE=true`).
    pub insecure: bool,
    /// Where these came from, for messages: `clouds.yaml cloud "hlt" (/etc/openstack/clouds.yaml)`.
    pub source: String,
}

#[derive(Debug, Clone)]
pub enum Method {
    Password {
        user: Named,
        password: Secret,
        /// The project to scope the token to (none: the user's default project).
        project: Option<Named>,
    },
    ApplicationCredential {
        /// The credential's id, or its name with its user.
        id: Option<String>,
        name: Option<String>,
        user: Option<Named>,
        secret: Secret,
    },
}

/// A user or project named by id, or by name within a domain (named by id or name).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Named {
    pub id: Option<String>,
    pub name: Option<String>,
    pub domain_id: Option<String>,
    pub domain_name: Option<String>,
}

impl Named {
    /// Keystone's JSON for it (`{"id": ...}` or `{"name": ..., "domain": {...}}`).
    pub fn to_json(&self) -> serde_json::Value {
        if let Some(id) = &self.id {
            return serde_json::json!({ "id": id });
        }
        let domain = match (&self.domain_id, &self.domain_name) {
            (Some(id), _) => serde_json::json!({ "id": id }),
            (None, Some(name)) => serde_json::json!({ "name": name }),
            (None, None) => serde_json::json!({ "id": "default" }),
        };
        serde_json::json!({ "name": self.name, "domain": domain })
    }

    fn given(&self) -> bool {
        self.id.is_some() || self.name.is_some()
    }
}

/// Why credentials could not be read.
#[derive(Debug, thiserror::Error)]
#[error("OpenStack credentials from {from}: {why}")]
pub struct CredentialsError {
    pub from: String,
    pub why: String,
}

/// The variables of an openrc, or an environment: only `OS_*` ones are kept.
pub type Vars = BTreeMap<String, String>;

/// The `OS_*` variables of this process's environment.
pub fn environment() -> Vars {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("OS_"))
        .collect()
}

/// Reads an openrc file: `export OS_X=value` (or without `export`) lines, values bare or in
/// single or double quotes. Anything computed (`$(...)`, `$VAR`) is refused with its line:
/// the root does not run shell code to learn a password.
pub fn read_openrc(path: &Path) -> Result<Vars, CredentialsError> {
    let source = format!("the openrc {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| CredentialsError {
        from: source.clone(),
        why: format!("cannot read: {e}"),
    })?;
    parse_openrc(&text).map_err(|why| CredentialsError { from: source, why })
}

/// The `OS_*` assignments of an openrc's text.
pub fn parse_openrc(text: &str) -> Result<Vars, String> {
    let mut vars = Vars::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !key.starts_with("OS_") || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let value = value.trim();
        let value = if let Some(v) = value.strip_prefix('\'') {
            let v = v
                .strip_suffix('\'')
                .ok_or_else(|| format!("line {}: unterminated quote in {key}", n + 1))?;
            if v.contains('\'') {
                return Err(format!(
                    "line {}: {key} joins several quoted pieces; write it in one pair of quotes",
                    n + 1
                ));
            }
            v.to_string()
        } else if let Some(v) = value.strip_prefix('"') {
            let v = v
                .strip_suffix('"')
                .ok_or_else(|| format!("line {}: unterminated quote in {key}", n + 1))?;
            if v.contains(['$', '`']) {
                return Err(format!(
                    "line {}: {key} is computed by the shell; write its value in the file, or use clouds.yaml",
                    n + 1
                ));
            }
            v.to_string()
        } else {
            if value.contains(['$', '`', ' ', ';']) {
                return Err(format!(
                    "line {}: {key} is computed by the shell; write its value in the file, or use clouds.yaml",
                    n + 1
                ));
            }
            value.to_string()
        };
        vars.insert(key.to_string(), value);
    }
    Ok(vars)
}

/// Credentials from `OS_*` variables (an openrc or the environment). `OS_CLOUD` among them
/// sends the reader to clouds.yaml, as the `openstack` CLI does.
pub fn from_vars(vars: &Vars, source: &str) -> Result<Credentials, CredentialsError> {
    if let Some(cloud) = vars.get("OS_CLOUD").filter(|c| !c.is_empty()) {
        let file = vars.get("OS_CLIENT_CONFIG_FILE").map(PathBuf::from);
        let mut c = from_clouds_yaml(cloud, file.as_deref())?;
        override_from_vars(&mut c, vars);
        return Ok(c);
    }
    let fail = |why: &str| CredentialsError {
        from: source.to_string(),
        why: why.to_string(),
    };
    let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
    let auth_url = get("OS_AUTH_URL").ok_or_else(|| {
        fail("no OS_AUTH_URL (nor OS_CLOUD): source an openrc, or name a cloud of clouds.yaml")
    })?;
    let auth_type = get("OS_AUTH_TYPE").unwrap_or_else(|| "password".into());
    let user = Named {
        id: get("OS_USER_ID"),
        name: get("OS_USERNAME"),
        domain_id: get("OS_USER_DOMAIN_ID"),
        domain_name: get("OS_USER_DOMAIN_NAME"),
    };
    let method = if auth_type.contains("applicationcredential")
        || auth_type.contains("application_credential")
    {
        Method::ApplicationCredential {
            id: get("OS_APPLICATION_CREDENTIAL_ID"),
            name: get("OS_APPLICATION_CREDENTIAL_NAME"),
            user: user.given().then_some(user),
            secret: Secret::new(get("OS_APPLICATION_CREDENTIAL_SECRET").ok_or_else(|| {
                fail("OS_AUTH_TYPE says application credential but OS_APPLICATION_CREDENTIAL_SECRET is not set")
            })?),
        }
    } else if matches!(auth_type.as_str(), "password" | "v3password") {
        let project = Named {
            id: get("OS_PROJECT_ID").or_else(|| get("OS_TENANT_ID")),
            name: get("OS_PROJECT_NAME").or_else(|| get("OS_TENANT_NAME")),
            domain_id: get("OS_PROJECT_DOMAIN_ID"),
            domain_name: get("OS_PROJECT_DOMAIN_NAME"),
        };
        Method::Password {
            user,
            password: Secret::new(
                get("OS_PASSWORD").ok_or_else(|| fail("no OS_PASSWORD for password auth"))?,
            ),
            project: project.given().then_some(project),
        }
    } else {
        return Err(fail(&format!(
            "OS_AUTH_TYPE {auth_type:?} is not supported: use password or v3applicationcredential"
        )));
    };
    let mut c = Credentials {
        auth_url: v3_url(&auth_url),
        method,
        interface: "public".into(),
        region: None,
        cacert: None,
        insecure: false,
        source: source.to_string(),
    };
    override_from_vars(&mut c, vars);
    check(c)
}

/// The settings an environment may add to or change in a cloud (as the `openstack` CLI lets
/// `OS_REGION_NAME` and `OS_INTERFACE` win over clouds.yaml).
pub(crate) fn override_from_vars(c: &mut Credentials, vars: &Vars) {
    let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
    if let Some(i) = get("OS_INTERFACE").or_else(|| get("OS_ENDPOINT_TYPE")) {
        c.interface = interface_name(&i);
    }
    if let Some(r) = get("OS_REGION_NAME") {
        c.region = Some(r);
    }
    if let Some(ca) = get("OS_CACERT") {
        c.cacert = Some(PathBuf::from(ca));
    }
    if let Some(i) = get("OS_INSECURE") {
        c.insecure = matches!(i.to_ascii_lowercase().as_str(), "1" | "true" | "yes");
    }
}

/// `publicURL` (the v2 catalog's word) is `public`.
fn interface_name(s: &str) -> String {
    s.trim_end_matches("URL").to_ascii_lowercase()
}

/// Keystone v3's base from what an operator wrote (`https://ks:5000`, `.../v3`, `.../v3/`).
fn v3_url(s: &str) -> String {
    let s = s.trim().trim_end_matches('/');
    if s.ends_with("/v3") {
        s.to_string()
    } else {
        format!("{s}/v3")
    }
}

fn check(c: Credentials) -> Result<Credentials, CredentialsError> {
    let fail = |why: String| CredentialsError {
        from: c.source.clone(),
        why,
    };
    if !(c.auth_url.starts_with("http://") || c.auth_url.starts_with("https://")) {
        return Err(fail(format!(
            "auth_url {:?} is not an http(s) URL",
            c.auth_url
        )));
    }
    if !matches!(c.interface.as_str(), "public" | "internal" | "admin") {
        return Err(fail(format!(
            "interface {:?}: public, internal or admin",
            c.interface
        )));
    }
    match &c.method {
        Method::Password { user, .. } if !user.given() => {
            return Err(fail("no user (OS_USERNAME or OS_USER_ID)".into()))
        }
        Method::ApplicationCredential {
            id: None,
            name,
            user,
            ..
        } if name.is_none() || user.is_none() => {
            return Err(fail(
                "an application credential needs its id, or its name and its user".into(),
            ))
        }
        _ => {}
    }
    Ok(c)
}

/// Where the `openstack` CLI looks for clouds.yaml, in its order.
pub fn clouds_yaml_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("clouds.yaml")];
    if let Some(home) = std::env::var_os("HOME") {
        paths.push(Path::new(&home).join(".config/openstack/clouds.yaml"));
    }
    paths.push(PathBuf::from("/etc/openstack/clouds.yaml"));
    paths
}

#[derive(Deserialize)]
struct CloudsFile {
    #[serde(default)]
    clouds: BTreeMap<String, CloudEntry>,
}

#[derive(Deserialize, Default)]
struct CloudEntry {
    #[serde(default)]
    auth: BTreeMap<String, serde_yaml_ng::Value>,
    auth_type: Option<String>,
    region_name: Option<String>,
    interface: Option<String>,
    cacert: Option<String>,
    verify: Option<bool>,
}

/// The cloud `name` of a clouds.yaml: `file`, or the first of [`clouds_yaml_paths`] that exists.
pub fn from_clouds_yaml(name: &str, file: Option<&Path>) -> Result<Credentials, CredentialsError> {
    let path = match file {
        Some(f) => f.to_path_buf(),
        None => clouds_yaml_paths()
            .into_iter()
            .find(|p| p.is_file())
            .ok_or_else(|| CredentialsError {
                from: format!("clouds.yaml cloud {name:?}"),
                why: format!(
                    "no clouds.yaml in {}",
                    clouds_yaml_paths()
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?,
    };
    let source = format!("clouds.yaml cloud {name:?} ({})", path.display());
    let fail = |why: String| CredentialsError {
        from: source.clone(),
        why,
    };
    let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("cannot read: {e}")))?;
    parse_clouds_yaml(&text, name, &source)
}

/// The cloud `name` of a clouds.yaml's text.
pub fn parse_clouds_yaml(
    text: &str,
    name: &str,
    source: &str,
) -> Result<Credentials, CredentialsError> {
    let fail = |why: String| CredentialsError {
        from: source.to_string(),
        why,
    };
    let file: CloudsFile =
        serde_yaml_ng::from_str(text).map_err(|e| fail(format!("not a clouds.yaml: {e}")))?;
    let known = || file.clouds.keys().cloned().collect::<Vec<_>>().join(", ");
    let entry = file.clouds.get(name).ok_or_else(|| {
        fail(format!(
            "no cloud of that name (the file has: {})",
            if file.clouds.is_empty() {
                "none".to_string()
            } else {
                known()
            }
        ))
    })?;
    // clouds.yaml's auth keys are the OS_* variables' names, lower case, without OS_.
    let mut vars = Vars::new();
    for (k, v) in &entry.auth {
        let v = match v {
            serde_yaml_ng::Value::String(s) => s.clone(),
            serde_yaml_ng::Value::Number(n) => n.to_string(),
            serde_yaml_ng::Value::Bool(b) => b.to_string(),
            _ => return Err(fail(format!("auth.{k} is not a plain value"))),
        };
        vars.insert(format!("OS_{}", k.to_ascii_uppercase()), v);
    }
    if let Some(t) = &entry.auth_type {
        vars.insert("OS_AUTH_TYPE".into(), t.clone());
    }
    if let Some(r) = &entry.region_name {
        vars.insert("OS_REGION_NAME".into(), r.clone());
    }
    if let Some(i) = &entry.interface {
        vars.insert("OS_INTERFACE".into(), i.clone());
    }
    if let Some(ca) = &entry.cacert {
        vars.insert("OS_CACERT".into(), ca.clone());
    }
    if entry.verify == Some(false) {
        vars.insert("OS_INSECURE".into(), "true".into());
    }
    from_vars(&vars, source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_hlt_style_openrc_gives_password_credentials() {
        let text = "# admin\nexport OS_AUTH_URL=http://ks:5000/v3/\nexport OS_USERNAME='admin'\n\
                    export OS_PASSWORD=\"s3cr et\"\nexport OS_PROJECT_NAME=admin\n\
                    export OS_USER_DOMAIN_NAME=Default\nexport OS_PROJECT_DOMAIN_ID=default\n\
                    export OS_ENDPOINT_TYPE=internalURL\nexport OS_REGION_NAME=CERN\n\
                    unset OS_TOKEN\nPS1='[admin] $PS1'\n";
        let c = from_vars(&parse_openrc(text).unwrap(), "test").unwrap();
        assert_eq!(c.auth_url, "http://ks:5000/v3");
        assert_eq!(c.interface, "internal");
        assert_eq!(c.region.as_deref(), Some("CERN"));
        let Method::Password {
            user,
            password,
            project,
        } = &c.method
        else {
            panic!("password expected, got {:?}", c.method);
        };
        assert_eq!(password.expose(), "s3cr et");
        assert_eq!(
            user.to_json(),
            serde_json::json!({"name": "admin", "domain": {"name": "Default"}})
        );
        assert_eq!(
            project.as_ref().unwrap().to_json(),
            serde_json::json!({"name": "admin", "domain": {"id": "default"}})
        );
        assert!(
            !format!("{c:?}").contains("s3cr"),
            "Debug must not show the password"
        );
    }

    #[test]
    fn computed_openrc_values_are_refused_with_their_line() {
        let e =
            parse_openrc("export OS_USERNAME=a\nexport OS_PASSWORD=$(pass show os)\n").unwrap_err();
        assert!(e.starts_with("line 2: OS_PASSWORD is computed"), "{e}");
        let e = parse_openrc("export OS_PASSWORD=\"$SECRET\"\n").unwrap_err();
        assert!(e.starts_with("line 1: OS_PASSWORD"), "{e}");
        assert!(parse_openrc("export OS_PASSWORD='it'\\''s'\n").is_err());
    }

    #[test]
    fn clouds_yaml_application_credentials_and_overrides() {
        let text = "clouds:\n  hlt:\n    auth:\n      auth_url: https://ks.example:5000\n      \
                    application_credential_id: abc123\n      application_credential_secret: pw\n    \
                    auth_type: v3applicationcredential\n    region_name: R1\n    interface: admin\n    \
                    verify: false\n  other:\n    auth: {auth_url: http://x}\n";
        let c = parse_clouds_yaml(text, "hlt", "t").unwrap();
        assert_eq!(c.auth_url, "https://ks.example:5000/v3");
        assert_eq!((c.interface.as_str(), c.insecure), ("admin", true));
        assert_eq!(c.region.as_deref(), Some("R1"));
        assert!(
            matches!(&c.method, Method::ApplicationCredential { id: Some(i), secret, .. }
            if i == "abc123" && secret.expose() == "pw")
        );
        let e = parse_clouds_yaml(text, "nope", "t").unwrap_err();
        assert_eq!(e.why, "no cloud of that name (the file has: hlt, other)");
        let e = parse_clouds_yaml("clouds: [1, 2]", "x", "t").unwrap_err();
        assert!(e.why.starts_with("not a clouds.yaml"), "{}", e.why);
    }

    #[test]
    fn a_yaml_alias_bomb_is_refused_not_expanded() {
        // Nine to the eighth strings if expanded: a caller may send a clouds.yaml with an action.
        let mut text =
            String::from("a: &a [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
        let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
        for w in names.windows(2) {
            let refs = vec![format!("*{}", w[0]); 9].join(",");
            text.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
        }
        text.push_str("clouds: {c: {auth: {auth_url: [*h]}}}\n");
        let e = parse_clouds_yaml(&text, "c", "t").unwrap_err();
        assert!(e.why.starts_with("not a clouds.yaml"), "{}", e.why);
    }

    #[test]
    fn missing_pieces_are_named() {
        let e = from_vars(&vars(&[]), "env").unwrap_err();
        assert!(e.why.starts_with("no OS_AUTH_URL"), "{}", e.why);
        let e = from_vars(
            &vars(&[("OS_AUTH_URL", "http://k"), ("OS_USERNAME", "a")]),
            "env",
        )
        .unwrap_err();
        assert_eq!(e.why, "no OS_PASSWORD for password auth");
        let e = from_vars(
            &vars(&[
                ("OS_AUTH_URL", "ftp://k"),
                ("OS_USERNAME", "a"),
                ("OS_PASSWORD", "p"),
            ]),
            "env",
        )
        .unwrap_err();
        assert!(e.why.contains("not an http(s) URL"), "{}", e.why);
        let e = from_vars(
            &vars(&[
                ("OS_AUTH_URL", "http://k"),
                ("OS_AUTH_TYPE", "v3applicationcredential"),
                ("OS_APPLICATION_CREDENTIAL_NAME", "ci"),
                ("OS_APPLICATION_CREDENTIAL_SECRET", "s"),
            ]),
            "env",
        )
        .unwrap_err();
        assert!(e.why.contains("its name and its user"), "{}", e.why);
        let e = from_vars(
            &vars(&[("OS_AUTH_URL", "http://k"), ("OS_AUTH_TYPE", "token")]),
            "env",
        )
        .unwrap_err();
        assert!(e.why.contains("not supported"), "{}", e.why);
    }
}

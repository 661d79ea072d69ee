//! OpenStack as the root reaches it: credentials by OpenStack's own conventions ([`creds`]), a
//! small typed client of Keystone v3, Nova, Placement and Glance ([`client`], [`nova`]), and the
//! `[openstack]` section of `<state-dir>/root.toml` that ties them to the cluster's nodes:
//!
//! ```toml
//! [openstack]
//! cloud = "hlt"                       # a cloud of clouds.yaml, as OS_CLOUD names it...
//! # clouds_yaml = "/etc/openstack/clouds.yaml"   # default: ./, ~/.config/openstack/, /etc/openstack/
//! # openrc = "/root/admin-openrc"     # ...or an openrc's OS_* lines (no shell is run)
//! # (neither: the root's own OS_* environment)
//! # interface = "internal"            # overrides the cloud's (default public)
//! # region = "RegionOne"
//! daemons = ["nova-compute"]          # the agent's service units that make a node a hypervisor
//! # domain = "example.org"            # hypervisor host = node + "." + domain
//! # timeout = "30s"                   # longest one API call may take
//! # up_timeout = "2m"                 # enable: longest wait for Nova to see the service up
//! # [openstack.hosts]                 # explicit node -> hypervisor host names
//! # cn43 = "cn43.cluster.example.org"
//! ```
//!
//! The file is read at every action, so an edit applies to the next one; a mistake refuses the
//! action with the file and the reason. The client (and its token) is kept between actions while
//! the credentials stay the same.
//!
//! What is not here: the hypervisor actions themselves ([`crate::hv`]), scope and audit (the
//! action path).

pub mod client;
pub mod creds;
pub mod nova;

use creds::Credentials;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default longest time of one API call.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default longest wait, in `hv enable`, for Nova to report a started compute service up.
pub const DEFAULT_UP_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Deserialize)]
struct RootFile {
    #[serde(default)]
    openstack: Option<RawSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    cloud: Option<String>,
    clouds_yaml: Option<PathBuf>,
    openrc: Option<PathBuf>,
    interface: Option<String>,
    region: Option<String>,
    daemons: Option<Vec<String>>,
    domain: Option<String>,
    timeout: Option<String>,
    up_timeout: Option<String>,
    #[serde(default)]
    hosts: BTreeMap<String, String>,
}

/// The `[openstack]` section, checked, with its credentials read.
#[derive(Debug, Clone)]
pub struct OpenStackConfig {
    pub creds: Credentials,
    /// The agent's service units that are the node's OpenStack daemons.
    pub daemons: Vec<String>,
    pub domain: Option<String>,
    pub hosts: BTreeMap<String, String>,
    pub timeout: Duration,
    pub up_timeout: Duration,
    /// The file it came from (for messages).
    pub path: PathBuf,
}

/// Credentials a caller sends with one action (`banyan hv --os-credentials`): its `OS_*`
/// variables, and when `OS_CLOUD` is among them, the text of the clouds.yaml it names. `Debug`
/// shows the variables' names only.
#[derive(Deserialize, Default)]
pub struct CallerCredentials {
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub clouds_yaml: Option<String>,
}

impl std::fmt::Debug for CallerCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerCredentials")
            .field("vars", &self.vars.keys().collect::<Vec<_>>())
            .field("clouds_yaml", &self.clouds_yaml.as_ref().map(|_| "<given>"))
            .finish()
    }
}

impl CallerCredentials {
    fn credentials(&self) -> Result<Credentials, creds::CredentialsError> {
        let vars: creds::Vars = self
            .vars
            .iter()
            .filter(|(k, _)| k.starts_with("OS_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match (
            vars.get("OS_CLOUD").filter(|c| !c.is_empty()),
            &self.clouds_yaml,
        ) {
            (Some(cloud), Some(text)) => {
                let source = format!("the caller's clouds.yaml cloud {cloud:?}");
                let mut c = creds::parse_clouds_yaml(text, cloud, &source)?;
                creds::override_from_vars(&mut c, &vars);
                Ok(c)
            }
            (Some(cloud), None) => Err(creds::CredentialsError {
                from: "the caller's OS_* variables".into(),
                why: format!("OS_CLOUD={cloud} but no clouds.yaml came with it"),
            }),
            (None, _) => creds::from_vars(&vars, "the caller's OS_* variables"),
        }
    }
}

/// Why the OpenStack settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: [openstack]: {message}")]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl OpenStackConfig {
    /// Reads `<state_dir>/root.toml`'s `[openstack]`; without one (or without the file), the
    /// root's own `OS_*` environment with the defaults.
    pub fn load(state_dir: &Path) -> Result<OpenStackConfig, ConfigError> {
        OpenStackConfig::load_for(state_dir, None)
    }

    /// [`OpenStackConfig::load`], with the caller's own credentials instead of the root's when
    /// it sent some (the rest of the section applies all the same).
    pub fn load_for(
        state_dir: &Path,
        caller: Option<&CallerCredentials>,
    ) -> Result<OpenStackConfig, ConfigError> {
        let path = state_dir.join(crate::bmcconf::FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(ConfigError {
                    path: path.display().to_string(),
                    message: format!("cannot read: {e}"),
                })
            }
        };
        OpenStackConfig::parse_for(&text, &path, &creds::environment(), caller)
    }

    /// The section of `text` (the file at `path`), with `env` as the root's environment.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &creds::Vars,
    ) -> Result<OpenStackConfig, ConfigError> {
        OpenStackConfig::parse_for(text, path, env, None)
    }

    fn parse_for(
        text: &str,
        path: &Path,
        env: &creds::Vars,
        caller: Option<&CallerCredentials>,
    ) -> Result<OpenStackConfig, ConfigError> {
        let fail = |message: String| ConfigError {
            path: path.display().to_string(),
            message,
        };
        let file: RootFile = toml::from_str(text).map_err(|e| fail(e.message().to_string()))?;
        let raw = match file.openstack {
            Some(r) => r,
            None => RawSection {
                cloud: None,
                clouds_yaml: None,
                openrc: None,
                interface: None,
                region: None,
                daemons: None,
                domain: None,
                timeout: None,
                up_timeout: None,
                hosts: BTreeMap::new(),
            },
        };
        let relative = |p: &Path| match path.parent() {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p.to_path_buf(),
        };
        let from_section = match (&raw.cloud, &raw.openrc) {
            (Some(_), Some(_)) => {
                return Err(fail("give cloud or openrc, not both".into()));
            }
            (Some(cloud), None) => {
                let file = raw.clouds_yaml.as_deref().map(relative);
                creds::from_clouds_yaml(cloud, file.as_deref())
            }
            (None, Some(rc)) => {
                let rc = relative(rc);
                creds::read_openrc(&rc).and_then(|vars| {
                    creds::from_vars(&vars, &format!("the openrc {}", rc.display()))
                })
            }
            (None, None) => {
                if raw.clouds_yaml.is_some() {
                    return Err(fail("clouds_yaml goes with cloud = \"NAME\"".into()));
                }
                creds::from_vars(env, "the root's environment (OS_*)")
            }
        };
        let mut creds = match caller {
            Some(c) => c.credentials(),
            None => from_section,
        }
        .map_err(|e| fail(e.to_string()))?;
        if let Some(i) = raw.interface.as_ref().filter(|_| caller.is_none()) {
            if !matches!(i.as_str(), "public" | "internal" | "admin") {
                return Err(fail(format!(
                    "interface = {i:?}: public, internal or admin"
                )));
            }
            creds.interface = i.clone();
        }
        if let Some(r) = raw.region.as_ref().filter(|_| caller.is_none()) {
            creds.region = Some(r.clone());
        }
        let daemons = raw.daemons.unwrap_or_else(|| vec!["nova-compute".into()]);
        for d in &daemons {
            banyan_protocol::action::validate_unit_name(d)
                .map_err(|e| fail(format!("daemons: {e}")))?;
        }
        let duration = |key: &str, v: &Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(t) => banyan_protocol::duration::parse(t)
                .map_err(|e| fail(format!("{key} = {t:?}: {e}")))
                .and_then(|d| {
                    if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
                        Err(fail(format!("{key} = {t:?}: must be between 1s and 1h")))
                    } else {
                        Ok(d)
                    }
                }),
        };
        let timeout = duration("timeout", &raw.timeout, DEFAULT_TIMEOUT)?;
        let up_timeout = duration("up_timeout", &raw.up_timeout, DEFAULT_UP_TIMEOUT)?;
        if let Some(d) = &raw.domain {
            crate::bmcconf::validate_host(d).map_err(|e| fail(format!("domain = {d:?}: {e}")))?;
        }
        for (node, host) in &raw.hosts {
            crate::bmcconf::validate_host(host)
                .map_err(|e| fail(format!("hosts.{node} = {host:?}: {e}")))?;
        }
        Ok(OpenStackConfig {
            creds,
            daemons,
            domain: raw.domain,
            hosts: raw.hosts,
            timeout,
            up_timeout,
            path: path.to_path_buf(),
        })
    }

    /// The hypervisor host name Nova should know `node` by.
    pub fn host_of(&self, node: &str) -> String {
        if let Some(h) = self.hosts.get(node) {
            return h.clone();
        }
        match &self.domain {
            Some(d) => format!("{node}.{d}"),
            None => node.to_string(),
        }
    }

    /// What identifies the credentials (a digest of everything sent to Keystone, so a changed
    /// password makes a new client; the secret itself is not kept here).
    fn fingerprint(&self) -> String {
        use sha2::Digest;
        let c = &self.creds;
        let mut h = sha2::Sha256::new();
        h.update(c.auth_url.as_bytes());
        h.update([0]);
        h.update(c.interface.as_bytes());
        h.update([0]);
        h.update(c.region.as_deref().unwrap_or_default().as_bytes());
        h.update([0]);
        h.update(format!("{:?}{}", c.cacert, c.insecure).as_bytes());
        match &c.method {
            creds::Method::Password {
                user,
                password,
                project,
            } => {
                h.update(format!("pw{user:?}{project:?}").as_bytes());
                h.update(password.expose().as_bytes());
            }
            creds::Method::ApplicationCredential {
                id,
                name,
                user,
                secret,
            } => {
                h.update(format!("ac{id:?}{name:?}{user:?}").as_bytes());
                h.update(secret.expose().as_bytes());
            }
        }
        hex::encode(h.finalize())
    }
}

/// The root's client, kept between actions (its token with it).
#[derive(Default)]
pub struct Clients {
    kept: Mutex<Option<(String, Arc<client::Cloud>)>>,
}

impl Clients {
    /// The client for `config`'s credentials: the kept one when they have not changed.
    pub fn get(&self, config: &OpenStackConfig) -> Result<Arc<client::Cloud>, client::OsError> {
        let print = config.fingerprint();
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((p, c)) = kept.as_ref() {
            if *p == print && c.timeout() == config.timeout {
                return Ok(c.clone());
            }
        }
        let c = Arc::new(client::Cloud::new(config.creds.clone(), config.timeout)?);
        *kept = Some((print, c.clone()));
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> creds::Vars {
        [
            ("OS_AUTH_URL", "http://ks:5000"),
            ("OS_USERNAME", "admin"),
            ("OS_PASSWORD", "pw"),
            ("OS_PROJECT_NAME", "admin"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn without_a_section_the_environment_and_defaults_apply() {
        let c = OpenStackConfig::parse("", Path::new("/s/root.toml"), &env()).unwrap();
        assert_eq!(c.daemons, vec!["nova-compute"]);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(c.host_of("cn1"), "cn1");
        assert_eq!(c.creds.source, "the root's environment (OS_*)");
    }

    #[test]
    fn hosts_map_and_domain_name_hypervisors() {
        let text = "[openstack]\ndomain = \"cl.example\"\ndaemons = [\"nova-compute\", \"neutron-agent\"]\n\
                    up_timeout = \"30s\"\n[openstack.hosts]\ncn9 = \"other.example\"\n";
        let c = OpenStackConfig::parse(text, Path::new("/s/root.toml"), &env()).unwrap();
        assert_eq!(c.host_of("cn1"), "cn1.cl.example");
        assert_eq!(c.host_of("cn9"), "other.example");
        assert_eq!(c.up_timeout, Duration::from_secs(30));
        assert_eq!(c.daemons.len(), 2);
    }

    #[test]
    fn mistakes_name_the_file_and_key() {
        let p = Path::new("/s/root.toml");
        for (text, want) in [
            ("[openstack]\nclod = \"x\"\n", "unknown field `clod`"),
            (
                "[openstack]\ncloud = \"a\"\nopenrc = \"b\"\n",
                "give cloud or openrc, not both",
            ),
            (
                "[openstack]\ntimeout = \"0s\"\n",
                "timeout = \"0s\": must be between 1s and 1h",
            ),
            (
                "[openstack]\ninterface = \"private\"\n",
                "interface = \"private\"",
            ),
            ("[openstack]\ndaemons = [\"a b\"]\n", "daemons:"),
            (
                "[openstack]\n[openstack.hosts]\ncn1 = \"bad host!\"\n",
                "hosts.cn1",
            ),
            (
                "[openstack]\nopenrc = \"/nonexistent/rc\"\n",
                "the openrc /nonexistent/rc: cannot read",
            ),
        ] {
            let e = OpenStackConfig::parse(text, p, &env())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("/s/root.toml: [openstack]: "), "{e}");
            assert!(e.contains(want), "{text:?}: {e}");
        }
        let e = OpenStackConfig::parse("", p, &creds::Vars::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no OS_AUTH_URL"), "{e}");
    }

    #[test]
    fn a_callers_credentials_replace_the_roots() {
        let p = Path::new("/s/root.toml");
        let text = "[openstack]\nopenrc = \"/nonexistent\"\ndaemons = [\"nova-compute\"]\n";
        let mut caller = CallerCredentials {
            vars: env(),
            clouds_yaml: None,
        };
        caller.vars.insert("OS_USERNAME".into(), "alice".into());
        let c = OpenStackConfig::parse_for(text, p, &creds::Vars::new(), Some(&caller)).unwrap();
        assert_eq!(c.creds.source, "the caller's OS_* variables");
        assert!(
            matches!(&c.creds.method, creds::Method::Password { user, .. } if user.name.as_deref() == Some("alice"))
        );
        assert!(!format!("{caller:?}").contains("pw"), "{caller:?}");
        caller.vars.insert("OS_CLOUD".into(), "x".into());
        let e =
            OpenStackConfig::parse_for(text, p, &creds::Vars::new(), Some(&caller)).unwrap_err();
        assert!(e.to_string().contains("no clouds.yaml came with it"), "{e}");
        caller.clouds_yaml = Some(
            "clouds:\n  x:\n    auth: {auth_url: 'http://k', username: u, password: p}\n".into(),
        );
        let c = OpenStackConfig::parse_for(text, p, &creds::Vars::new(), Some(&caller)).unwrap();
        assert_eq!(c.creds.auth_url, "http://k/v3");
    }

    #[test]
    fn the_kept_client_is_reused_until_the_credentials_change() {
        let p = Path::new("/s/root.toml");
        let clients = Clients::default();
        let a = OpenStackConfig::parse("", p, &env()).unwrap();
        let c1 = clients.get(&a).unwrap();
        let c2 = clients.get(&a).unwrap();
        assert!(Arc::ptr_eq(&c1, &c2));
        let mut changed = env();
        changed.insert("OS_PASSWORD".into(), "new".into());
        let b = OpenStackConfig::parse("", p, &changed).unwrap();
        assert!(!Arc::ptr_eq(&c1, &clients.get(&b).unwrap()));
    }
}

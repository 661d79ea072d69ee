//! Which BMC powers which node: the `[[bmc]]` sections of `<state-dir>/root.toml`.
//!
//! ```toml
//! [[bmc]]
//! nodes = "cn[001-128]"               # a node set (no @groups: a group file edit must not move BMCs)
//! protocol = "redfish"                # or "ipmi"
//! address = "{name}-bmc"              # template: {name}, {n} (last number in the name), {1}, {2}...
//! user = "admin"
//! password_file = "/etc/banyan/bmc-password"   # owner-only (0600), first line is the password
//! ca_file = "/etc/banyan/bmc-ca.pem"  # Redfish: the CA of the BMCs' certificates...
//! # insecure = true                  # ...or, explicitly, no certificate check
//! # port = 443                        # default 443 (https), 80 (scheme = "http"), 623 (ipmi)
//! # system_id = "{name}"              # Redfish system id, a template too; default: discovered
//! # gateway = "mgmt01"                # the agent that reaches these BMCs; default: the root
//!                                     # (with a gateway, password_file and ca_file are absolute
//!                                     # paths on the gateway, read there; its agent.toml has
//!                                     # [bmc] gateway = true)
//! # timeout = "10s"                   # longest time one BMC operation may take
//!
//! [[bmc]]
//! nodes = "r[1-4]n[01-16]"
//! protocol = "ipmi"
//! address = "10.1.{1}.{2}"            # r3n07 -> 10.1.3.7
//! user = "ADMIN"
//! password_file = "ipmi-password"     # relative: to the directory of root.toml
//!
//! [[bmc]]                             # an explicit map; `nodes` defaults to its keys
//! protocol = "ipmi"
//! user = "root"
//! password_file = "ipmi-password"
//! [bmc.map]
//! login1 = "10.9.0.11"
//! login2 = "10.9.0.12"
//! ```
//!
//! Address templates: `{name}` is the node's name; `{n}` the last number in it and `{1}`, `{2}`,
//! ... its first, second, ... number (as values: `cn007` gives `{n}` = 7; `{n:3}` pads to three
//! digits, 007). So `10.1.{1}.{2}` gives `10.1.3.7` for `r3n07`, and a name with fewer numbers than
//! the template asks for is refused. A node listed in `map` takes its address from there, the
//! others from `address`.
//!
//! Everything is checked when the file is loaded, so a mistake stops the root at start with the
//! file, section and node rather than failing one power action later: unknown keys, bad node
//! sets, a node in two sections, every node's rendered address (a valid host name or IP address),
//! TLS choices (a Redfish section has `ca_file` or `insecure = true`, never both), and password
//! files (readable only by the user running the root; see [`Secret::from_file`]).
//!
//! What is not here: talking to BMCs ([`banyan_agent::bmc`]), scopes and audit (the action path).
//! [`BmcConfig::resolve`] turns a node's name into its [`BmcTarget`]: the driver's [`Endpoint`]
//! and the gateway agent, if any.

use banyan_agent::bmc::{Endpoint, Protocol, Secret, Tls, DEFAULT_TIMEOUT};
use banyan_protocol::nodeset::NodeSet;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The root's config file in its state dir.
pub const FILE: &str = "root.toml";

/// The whole of `root.toml`, as far as the root reads it. Top-level keys are listed here, so
/// that a misspelt table (`[[bcm]]`) is an error; a module reading another table adds its field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RootFile {
    #[serde(default)]
    bmc: Vec<RawSection>,
    /// Read by [`crate::openstack`].
    #[serde(default)]
    #[allow(dead_code)]
    openstack: Option<toml::Value>,
}

/// One `[[bmc]]` section as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSection {
    nodes: Option<String>,
    protocol: RawProtocol,
    address: Option<String>,
    #[serde(default)]
    map: BTreeMap<String, String>,
    port: Option<u16>,
    user: String,
    password_file: PathBuf,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    insecure: bool,
    scheme: Option<RawScheme>,
    system_id: Option<String>,
    gateway: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawProtocol {
    Redfish,
    Ipmi,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawScheme {
    Https,
    Http,
}

/// The `[[bmc]]` sections of `root.toml`, checked.
#[derive(Debug, Clone, Default)]
pub struct BmcConfig {
    /// The file read, for messages.
    path: PathBuf,
    sections: Vec<Section>,
    /// Node name to its section's index.
    owner: HashMap<String, usize>,
}

#[derive(Debug, Clone)]
struct Section {
    nodes: NodeSet,
    protocol: Protocol,
    address: Option<Template>,
    map: BTreeMap<String, String>,
    port: u16,
    user: String,
    password: Secret,
    password_file: PathBuf,
    tls: Tls,
    system_id: Option<Template>,
    gateway: Option<String>,
    timeout: Duration,
}

/// What a node's power goes through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcTarget {
    /// What the driver needs ([`banyan_agent::bmc::connect`]).
    pub endpoint: Endpoint,
    /// The agent that talks to this BMC, or `None` for the root itself.
    pub gateway: Option<String>,
    /// Where the password is: on the root, or with a gateway on the gateway (whose agent reads
    /// it; the endpoint's password is then empty, and its CA file a path there too).
    pub password_file: PathBuf,
}

/// A `root.toml` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct BmcConfigError {
    pub path: PathBuf,
    pub message: String,
}

/// A node no `[[bmc]]` section covers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no BMC configured for {node}: add a [[bmc]] section whose nodes include it to {}", path.display())]
pub struct NoBmc {
    pub node: String,
    pub path: PathBuf,
}

impl BmcConfig {
    /// Reads `<state_dir>/root.toml`. A missing file is a config with no BMC.
    pub fn load(state_dir: &Path) -> Result<BmcConfig, BmcConfigError> {
        let path = state_dir.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => BmcConfig::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BmcConfig {
                path,
                ..BmcConfig::default()
            }),
            Err(e) => Err(BmcConfigError {
                path,
                message: format!("cannot read: {e}"),
            }),
        }
    }

    /// Checks `text`, the content of the file at `path` (relative password and CA files are
    /// relative to its directory). Reads the password files.
    pub fn parse(text: &str, path: &Path) -> Result<BmcConfig, BmcConfigError> {
        let fail = |message: String| BmcConfigError {
            path: path.to_path_buf(),
            message,
        };
        // toml's message carries the line, the column and the offending text.
        let file: RootFile = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let mut config = BmcConfig {
            path: path.to_path_buf(),
            sections: Vec::new(),
            owner: HashMap::new(),
        };
        for (i, raw) in file.bmc.into_iter().enumerate() {
            let label = section_label(i, &raw);
            let section = check_section(raw, dir).map_err(|m| fail(format!("{label}: {m}")))?;
            for node in section.nodes.iter() {
                if let Some(other) = config.owner.insert(node.to_string(), i) {
                    return Err(fail(format!(
                        "{label}: node {node} is also in [[bmc]] section {}: a node has one BMC",
                        other + 1
                    )));
                }
            }
            config.sections.push(section);
        }
        Ok(config)
    }

    /// The file this config came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether no BMC is configured.
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    /// Every node that has a BMC.
    pub fn nodes(&self) -> NodeSet {
        self.owner.keys().map(String::as_str).collect()
    }

    /// The BMC of `node`.
    pub fn resolve(&self, node: &str) -> Result<BmcTarget, NoBmc> {
        let no_bmc = || NoBmc {
            node: node.to_string(),
            path: self.path.clone(),
        };
        let section = self
            .owner
            .get(node)
            .and_then(|&i| self.sections.get(i))
            .ok_or_else(no_bmc)?;
        // Rendered and checked at load already, for every node of the section.
        let host = section.host_of(node).map_err(|_| no_bmc())?;
        let system_id = match &section.system_id {
            Some(t) => Some(t.render(node).map_err(|_| no_bmc())?),
            None => None,
        };
        Ok(BmcTarget {
            endpoint: Endpoint {
                node: node.to_string(),
                protocol: section.protocol,
                host,
                port: section.port,
                user: section.user.clone(),
                password: section.password.clone(),
                tls: section.tls.clone(),
                system_id,
                timeout: section.timeout,
            },
            gateway: section.gateway.clone(),
            password_file: section.password_file.clone(),
        })
    }
}

impl Section {
    fn host_of(&self, node: &str) -> Result<String, String> {
        if let Some(addr) = self.map.get(node) {
            return Ok(addr.clone());
        }
        match &self.address {
            Some(t) => t.render(node),
            None => Err(format!(
                "node {node} is not in the map and the section has no address template"
            )),
        }
    }
}

/// How messages name a section: its number and its nodes.
fn section_label(i: usize, raw: &RawSection) -> String {
    match &raw.nodes {
        Some(n) => format!("[[bmc]] section {} (nodes = {n:?})", i + 1),
        None => format!("[[bmc]] section {}", i + 1),
    }
}

fn check_section(raw: RawSection, dir: &Path) -> Result<Section, String> {
    let protocol = match raw.protocol {
        RawProtocol::Redfish => Protocol::Redfish,
        RawProtocol::Ipmi => Protocol::Ipmi,
    };
    let gateway = match raw.gateway {
        Some(g) => {
            banyan_protocol::identity::validate_node_name(&g)
                .map_err(|e| format!("gateway = {g:?} is not an agent's name: {e}"))?;
            Some(g)
        }
        None => None,
    };
    // Behind a gateway, the files are the gateway's: named absolutely, read there.
    if let Some(g) = &gateway {
        for (key, file) in [
            ("password_file", Some(&raw.password_file)),
            ("ca_file", raw.ca_file.as_ref()),
        ] {
            if let Some(f) = file.filter(|f| !f.is_absolute()) {
                return Err(format!(
                    "{key} = {:?}: behind gateway {g} it is a file on {g}: give its absolute path",
                    f.display()
                ));
            }
        }
    }
    let nodes = match &raw.nodes {
        Some(expr) => {
            NodeSet::parse(expr).map_err(|e| format!("nodes = {expr:?} is not a node set: {e}"))?
        }
        None if !raw.map.is_empty() => raw.map.keys().map(String::as_str).collect(),
        None => return Err("no nodes: give `nodes` (a node set) or a [bmc.map]".into()),
    };
    if nodes.is_empty() {
        return Err("the node set is empty".into());
    }
    for (node, addr) in &raw.map {
        if !nodes.contains(node) {
            return Err(format!(
                "[bmc.map] names {node}, which is not in this section's nodes"
            ));
        }
        validate_host(addr).map_err(|e| format!("[bmc.map] {node} = {addr:?}: {e}"))?;
    }
    let address = raw
        .address
        .as_deref()
        .map(|t| Template::parse(t).map_err(|e| format!("address = {t:?}: {e}")))
        .transpose()?;
    let system_id = raw
        .system_id
        .as_deref()
        .map(|t| Template::parse(t).map_err(|e| format!("system_id = {t:?}: {e}")))
        .transpose()?;
    if protocol == Protocol::Ipmi && system_id.is_some() {
        return Err("system_id is a Redfish setting; remove it from an ipmi section".into());
    }
    // Every node's address is rendered now, so that a template that cannot serve a node is
    // found at load, not when that node is first powered.
    for node in nodes.iter() {
        let host = match raw.map.get(node) {
            Some(addr) => addr.clone(),
            None => match &address {
                Some(t) => t
                    .render(node)
                    .map_err(|e| format!("address for {node}: {e}"))?,
                None => {
                    return Err(format!(
                        "node {node} is not in [bmc.map] and there is no address template"
                    ))
                }
            },
        };
        validate_host(&host).map_err(|e| {
            format!(
                "address template {:?} gives {host:?} for node {node}: {e}",
                raw.address.as_deref().unwrap_or("")
            )
        })?;
        if let Some(t) = &system_id {
            let id = t
                .render(node)
                .map_err(|e| format!("system_id for {node}: {e}"))?;
            if id.is_empty() || id.contains('/') {
                return Err(format!(
                    "system_id gives {id:?} for node {node}: a system id is one non-empty path segment"
                ));
            }
        }
    }
    let tls = match (protocol, raw.scheme, &raw.ca_file, raw.insecure) {
        (Protocol::Ipmi, scheme, ca, insecure) => {
            if scheme.is_some() || ca.is_some() || insecure {
                return Err(
                    "scheme, ca_file and insecure are Redfish settings; remove them from an ipmi section"
                        .into(),
                );
            }
            Tls::Plain
        }
        (Protocol::Redfish, Some(RawScheme::Http), ca, insecure) => {
            if ca.is_some() || insecure {
                return Err("scheme = \"http\" has no TLS: remove ca_file and insecure".into());
            }
            Tls::Plain
        }
        (Protocol::Redfish, _, Some(_), true) => {
            return Err("both ca_file and insecure = true: choose one".into())
        }
        (Protocol::Redfish, _, Some(ca), false) => {
            let ca_file = dir.join(ca);
            if gateway.is_none() && !ca_file.is_file() {
                return Err(format!("ca_file {} is not a file", ca_file.display()));
            }
            Tls::Verify { ca_file }
        }
        (Protocol::Redfish, _, None, true) => Tls::Insecure,
        (Protocol::Redfish, _, None, false) => {
            return Err(
                "a Redfish BMC over HTTPS needs ca_file (the CA of the BMCs' certificates) or, to skip the check, insecure = true"
                    .into(),
            )
        }
    };
    if raw.user.is_empty() || raw.user.starts_with('-') || raw.user.chars().any(char::is_control) {
        return Err(format!("user = {:?} is not a BMC user name", raw.user));
    }
    let password_file = dir.join(&raw.password_file);
    let password = match gateway {
        Some(_) => Secret::new(""),
        None => Secret::from_file(&password_file).map_err(|e| e.to_string())?,
    };
    let timeout = match raw.timeout.as_deref() {
        Some(t) => parse_timeout(t).map_err(|e| format!("timeout = {t:?}: {e}"))?,
        None => DEFAULT_TIMEOUT,
    };
    let port = match raw.port {
        Some(0) => return Err("port 0 is not a port".into()),
        Some(p) => p,
        None => protocol.default_port(&tls),
    };
    Ok(Section {
        nodes,
        protocol,
        address,
        map: raw.map,
        port,
        user: raw.user,
        password,
        password_file,
        tls,
        system_id,
        gateway,
        timeout,
    })
}

/// A duration as operators write them (`"10s"`), between 100 ms and 10 minutes.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = banyan_protocol::duration::parse(text)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
        return Err("must be between 100ms and 10m".into());
    }
    Ok(d)
}

/// A host name or an IP address a BMC can have.
pub fn validate_host(host: &str) -> Result<(), String> {
    if host.parse::<Ipv4Addr>().is_ok() || host.parse::<Ipv6Addr>().is_ok() {
        return Ok(());
    }
    if host.is_empty() {
        return Err("empty".into());
    }
    if host.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err("not an IPv4 address (each of four parts at most 255)".into());
    }
    for label in host.trim_end_matches('.').split('.') {
        if label.is_empty() {
            return Err("an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "{c:?} is not allowed in a host name (letters, digits, '-' and '.' only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    Ok(())
}

/// An address or system id template: text with `{name}`, `{n}`, `{1}`, `{2}`, ... placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    pieces: Vec<Piece>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Name,
    /// A number of the node's name: `None` the last, `Some(k)` the k-th (from 1); zero-padded to
    /// `width` digits.
    Number {
        which: Option<usize>,
        width: usize,
    },
}

const PLACEHOLDERS: &str =
    "{name}, {n}, {1}, {2}, ... (numbers in the node's name), with an optional width as in {n:3}";

impl Template {
    fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    pieces.push(Piece::Text(rest.to_string()));
                    break;
                }
                Some(i) if rest.as_bytes()[i] == b'}' => {
                    return Err("a '}' without its '{'".into());
                }
                Some(i) => {
                    if i > 0 {
                        pieces.push(Piece::Text(rest[..i].to_string()));
                    }
                    let after = &rest[i + 1..];
                    let end = after
                        .find('}')
                        .ok_or_else(|| "a '{' without its '}'".to_string())?;
                    pieces.push(Template::placeholder(&after[..end])?);
                    rest = &after[end + 1..];
                }
            }
        }
        if pieces.is_empty() {
            return Err("empty".into());
        }
        Ok(Template { pieces })
    }

    fn placeholder(inner: &str) -> Result<Piece, String> {
        let (what, width) = match inner.split_once(':') {
            Some((w, width)) => {
                let width: usize = width
                    .parse()
                    .ok()
                    .filter(|w| (1..=20).contains(w))
                    .ok_or_else(|| format!("{{{inner}}}: a width is a number from 1 to 20"))?;
                (w, width)
            }
            None => (inner, 0),
        };
        match what {
            "name" if width == 0 => Ok(Piece::Name),
            "n" => Ok(Piece::Number { which: None, width }),
            k if !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()) => match k.parse() {
                Ok(k @ 1..=9) => Ok(Piece::Number {
                    which: Some(k),
                    width,
                }),
                _ => Err(format!(
                    "{{{inner}}}: numbers are counted from {{1}} to {{9}}"
                )),
            },
            _ => Err(format!(
                "unknown placeholder {{{inner}}}: use {PLACEHOLDERS}"
            )),
        }
    }

    fn render(&self, node: &str) -> Result<String, String> {
        let mut numbers: Option<Vec<u64>> = None;
        let mut out = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Name => out.push_str(node),
                Piece::Number { which, width } => {
                    let numbers = match &mut numbers {
                        Some(n) => n,
                        None => numbers.insert(numbers_in(node)?),
                    };
                    let value = match which {
                        None => numbers.last(),
                        Some(k) => numbers.get(k - 1),
                    };
                    let Some(value) = value else {
                        let asked = which.map_or("{n}".to_string(), |k| format!("{{{k}}}"));
                        return Err(format!(
                            "{asked} needs a number in the node name {node:?}, which has {}",
                            numbers.len()
                        ));
                    };
                    out.push_str(&format!("{value:0width$}"));
                }
            }
        }
        Ok(out)
    }
}

/// The numbers in a node's name, in order: `r3n07` gives 3 and 7.
fn numbers_in(node: &str) -> Result<Vec<u64>, String> {
    node.split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("the number {s} in {node:?} is too large"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A directory with a private password file and a CA file, removed when dropped.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("banyan-bmcconf-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let pw = dir.join("pw");
            std::fs::write(&pw, "s3cret\n").unwrap();
            std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::write(dir.join("ca.pem"), "not checked here\n").unwrap();
            Dir(dir)
        }

        fn parse(&self, text: &str) -> Result<BmcConfig, BmcConfigError> {
            BmcConfig::parse(text, &self.0.join(FILE))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn sections_resolve_nodes_to_endpoints() {
        let dir = Dir::new("resolve");
        let config = dir
            .parse(
                r#"
[[bmc]]
nodes = "cn[001-008]"
protocol = "redfish"
address = "{name}-bmc"
user = "admin"
password_file = "pw"
ca_file = "ca.pem"
system_id = "{name}"
timeout = "5s"

[[bmc]]
nodes = "r[1-2]n[01-16]"
protocol = "ipmi"
address = "10.1.{1}.{2}"
port = 6230
user = "ADMIN"
password_file = "pw"

[[bmc]]
protocol = "ipmi"
user = "root"
password_file = "pw"
[bmc.map]
login1 = "10.9.0.11"
"#,
            )
            .unwrap();
        assert_eq!(config.nodes().len(), 8 + 32 + 1);
        let t = config.resolve("cn003").unwrap();
        assert_eq!(t.endpoint.host, "cn003-bmc");
        assert_eq!(t.endpoint.protocol, Protocol::Redfish);
        assert_eq!(t.endpoint.port, 443);
        assert_eq!(t.endpoint.system_id.as_deref(), Some("cn003"));
        assert_eq!(t.endpoint.password.expose(), "s3cret");
        assert_eq!(t.endpoint.timeout, Duration::from_secs(5));
        assert_eq!(
            t.endpoint.tls,
            Tls::Verify {
                ca_file: dir.0.join("ca.pem")
            }
        );
        assert_eq!(t.gateway, None);
        let t = config.resolve("r2n07").unwrap();
        assert_eq!(t.endpoint.host, "10.1.2.7");
        assert_eq!(t.endpoint.port, 6230);
        assert_eq!(t.gateway, None);
        let t = config.resolve("login1").unwrap();
        assert_eq!(
            (t.endpoint.host.as_str(), t.endpoint.port),
            ("10.9.0.11", 623)
        );
        let err = config.resolve("cn009").unwrap_err().to_string();
        assert!(err.starts_with("no BMC configured for cn009"), "{err}");
    }

    #[test]
    fn templates_render_numbers_and_widths() {
        let t = Template::parse("bmc-{n:3}.r{1}").unwrap();
        assert_eq!(t.render("r4n7").unwrap(), "bmc-007.r4");
        assert_eq!(Template::parse("{name}").unwrap().render("x").unwrap(), "x");
        let err = Template::parse("10.0.{2}.1")
            .unwrap()
            .render("cn5")
            .unwrap_err();
        assert!(err.contains("has 1"), "{err}");
        for bad in ["{rack}-bmc", "{name", "a}", "{0}", "{n:0}", ""] {
            assert!(Template::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn hosts_must_be_names_or_addresses() {
        for good in ["cn1-bmc", "10.1.2.3", "fd00::1", "bmc.example.org"] {
            assert_eq!(validate_host(good), Ok(()), "{good}");
        }
        for bad in ["cn1_bmc", "10.1.2.300", "-x", "a..b", "", "has space"] {
            assert!(validate_host(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn error_of(dir: &Dir, text: &str) -> String {
        dir.parse(text).unwrap_err().to_string()
    }

    const BASE: &str = "protocol = \"ipmi\"\nuser = \"u\"\npassword_file = \"pw\"\n";

    #[test]
    fn bad_sections_are_refused_with_the_reason() {
        let dir = Dir::new("bad");
        let cases: &[(&str, &str)] = &[
            (
                "nodes = \"n[1-2]\"\naddress = \"{name}\"\ncolour = 1\n",
                "unknown field `colour`",
            ),
            (
                "nodes = \"n[1-2]\"\naddress = \"{name}_bmc\"\n",
                "gives \"n1_bmc\" for node n1",
            ),
            (
                "nodes = \"n[1-300]\"\naddress = \"10.0.0.{n}\"\n",
                "gives \"10.0.0.256\" for node n256",
            ),
            (
                "nodes = \"n[1-2]\"\naddress = \"{rack}\"\n",
                "unknown placeholder {rack}",
            ),
            (
                "nodes = \"n[1-2\"\naddress = \"{name}\"\n",
                "is not a node set",
            ),
            ("nodes = \"n1\"\n", "no address template"),
            (
                "nodes = \"n1\"\naddress = \"{name}\"\ninsecure = true\n",
                "Redfish settings",
            ),
            ("address = \"{name}\"\n", "give `nodes`"),
            (
                "nodes = \"n1\"\naddress = \"{name}\"\ntimeout = \"10h\"\n",
                "between 100ms and 10m",
            ),
        ];
        for (extra, want) in cases {
            let text = format!("[[bmc]]\n{BASE}{extra}");
            let err = error_of(&dir, &text);
            assert!(err.contains(want), "{extra:?}: {err}");
            assert!(err.contains("root.toml"), "{err}");
        }
        let err = error_of(&dir, "[[bcm]]\nnodes = \"n1\"\n");
        assert!(err.contains("unknown field `bcm`"), "{err}");
        let twice = format!(
            "[[bmc]]\nnodes = \"n[1-4]\"\naddress = \"{{name}}\"\n{BASE}\n[[bmc]]\nnodes = \"n4\"\naddress = \"{{name}}\"\n{BASE}"
        );
        assert!(error_of(&dir, &twice).contains("node n4 is also in [[bmc]] section 1"));
    }

    #[test]
    fn files_behind_a_gateway_are_the_gateways() {
        let dir = Dir::new("gw");
        let head = "[[bmc]]\nnodes = \"n1\"\nprotocol = \"redfish\"\naddress = \"{name}\"\nuser = \"u\"\ngateway = \"mgmt1\"\n";
        // Relative paths would mean the root's directory: refused, with what to give instead.
        let err = error_of(
            &dir,
            &format!("{head}password_file = \"pw\"\ninsecure = true\n"),
        );
        assert!(err.contains("password_file = \"pw\": behind gateway mgmt1 it is a file on mgmt1: give its absolute path"), "{err}");
        let err = error_of(
            &dir,
            &format!("{head}password_file = \"/etc/banyan/pw\"\nca_file = \"ca.pem\"\n"),
        );
        assert!(err.contains("ca_file = \"ca.pem\""), "{err}");
        // Absolute paths are not read here (they are the gateway's): the config loads.
        let c = dir
            .parse(&format!(
                "{head}password_file = \"/nonexistent/pw\"\nca_file = \"/nonexistent/ca.pem\"\n"
            ))
            .unwrap();
        let t = c.resolve("n1").unwrap();
        assert_eq!(t.gateway.as_deref(), Some("mgmt1"));
        assert_eq!(t.password_file, PathBuf::from("/nonexistent/pw"));
        assert_eq!(
            t.endpoint.tls,
            Tls::Verify {
                ca_file: PathBuf::from("/nonexistent/ca.pem")
            }
        );
    }

    #[test]
    fn redfish_needs_a_tls_choice() {
        let dir = Dir::new("tls");
        let head = "[[bmc]]\nnodes = \"n1\"\nprotocol = \"redfish\"\naddress = \"{name}\"\nuser = \"u\"\npassword_file = \"pw\"\n";
        assert!(error_of(&dir, head).contains("needs ca_file"));
        assert!(error_of(
            &dir,
            &format!("{head}ca_file = \"ca.pem\"\ninsecure = true\n")
        )
        .contains("choose one"));
        assert!(error_of(&dir, &format!("{head}ca_file = \"nope.pem\"\n")).contains("not a file"));
        let plain = dir.parse(&format!("{head}scheme = \"http\"\n")).unwrap();
        assert_eq!(plain.resolve("n1").unwrap().endpoint.port, 80);
        let insecure = dir.parse(&format!("{head}insecure = true\n")).unwrap();
        assert_eq!(insecure.resolve("n1").unwrap().endpoint.tls, Tls::Insecure);
    }

    #[test]
    fn readable_password_files_are_refused() {
        let dir = Dir::new("pw");
        let pw = dir.0.join("pw");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = error_of(
            &dir,
            &format!("[[bmc]]\nnodes = \"n1\"\naddress = \"{{name}}\"\n{BASE}"),
        );
        assert!(err.contains("password file"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_missing_file_is_no_bmc() {
        let dir = Dir::new("missing");
        let config = BmcConfig::load(&dir.0).unwrap();
        assert!(config.is_empty());
        assert!(config.resolve("n1").is_err());
    }
}

//! The agent's own config file: what operator actions may do on this node.
//!
//! Read from `/etc/banyan/agent.toml` unless `--config PATH` (or `BANYAN_CONFIG`) names another.
//! A missing default file is an empty config (exec allowed, no service may be touched); a missing
//! named file, a syntax error, an unknown key or an invalid value stops the agent with the file,
//! line and column and what is wrong, so a typo never silently widens or narrows what a node
//! allows.
//!
//! ```toml
//! [exec]
//! enabled = true                    # exec actions allowed on this node (default true)
//!
//! [service]
//! allow = ["nova-compute", "libvirtd"]   # the only units service actions may touch
//!
//! # Commands for a unit, used instead of systemd (and where PID 1 is not systemd). A list is
//! # run as it is, without a shell; a string is run by `/bin/sh -c`.
//! [service.units.nova-compute]
//! start = ["/usr/bin/nova-compute", "--config-file", "/etc/nova/nova.conf"]
//! stop = "kill -TERM $(cat /run/nova-compute.pid)"   # optional: default SIGTERM to pid_file's pid
//! status = ["/usr/local/bin/nova-alive"]              # optional: exit 0 = active
//! pid_file = "/run/nova-compute.pid"
//! user = "nova"                     # optional: run the commands as this user (default root)
//!
//! [bmc]
//! gateway = true                    # this node talks to BMCs for the root (default false)
//!
//! [vm]                              # QEMU guests (every key optional; see crate::vm::config)
//! qemu = "qemu-system-x86_64"
//! accel = "auto"                    # auto (KVM where it works, TCG elsewhere), kvm or tcg
//! state_dir = "/var/lib/banyan-agent"   # default: the agent's --state-dir; guests in STATE_DIR/vm/
//!
//! [inventory]
//! watch = ["/etc/munge/munge.key", "/etc/slurm/slurm.conf"]   # hashed, never sent
//! ```
//!
//! A BMC gateway is a node on the BMC network (a management node) that makes the root's BMC calls
//! for the nodes `root.toml` puts behind it; the BMC passwords it uses are files on this node.
//!
//! Units are configured under `[service.units.NAME]` rather than `[service.NAME]` so that a unit
//! name can never be mistaken for a key of `[service]` (a unit called `allow`, or a misspelt
//! `alow` read as a unit).
//!
//! Rules checked here: unit names and user names as the protocol allows them; every configured
//! unit has a `start` command, a way to be stopped (`stop` or `pid_file`) and a way to read its
//! state (`status` or `pid_file`); no command is empty. A configured unit must still be listed in
//! `allow` to be touched: removing it from `allow` disables it without losing its commands.

use crate::vm::VmConfig;
use banyan_protocol::action::{validate_unit_name, validate_user_name};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the agent looks without `--config`.
pub const DEFAULT_PATH: &str = "/etc/banyan/agent.toml";

/// Everything `agent.toml` holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileConfig {
    /// What operator actions may do here (the `[exec]` and `[service]` tables).
    pub actions: ActionsConfig,
    /// `[inventory]`: what the node's inventory holds beyond what it finds by itself.
    pub inventory: InventoryConfig,
}

/// `[inventory]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryConfig {
    /// Files whose SHA-256 the inventory holds (their contents never leave the node): absolute
    /// paths, so that a node's answer never depends on the directory it was started in.
    #[serde(default)]
    pub watch: Vec<PathBuf>,
}

/// The part of the config the action executors ([`crate::actions`]) read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ActionsConfig {
    pub exec: ExecConfig,
    pub service: ServiceConfig,
    pub bmc: BmcGatewayConfig,
    pub vm: VmSection,
}

/// `[vm]`: how this node runs QEMU guests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VmSection {
    /// The table with [`VmConfig`]'s defaults for missing keys.
    pub config: VmConfig,
    /// Whether the table names a `state_dir`; without one, guests live in the agent's own.
    pub state_dir_given: bool,
    /// This agent's node name and the root's mesh address, from its command line (not from
    /// the file): what a guest launched with `--join` is told. `None` outside an agent.
    pub host: Option<(String, std::net::SocketAddr)>,
}

impl VmSection {
    /// The guests' config on an agent with this state dir, or why this node cannot run guests.
    pub fn resolve(&self, agent_state_dir: Option<&Path>) -> Result<VmConfig, String> {
        let mut cfg = self.config.clone();
        if !self.state_dir_given {
            cfg.state_dir = agent_state_dir
                .ok_or(
                    "this agent has no state dir for guests: start it with --state-dir or set \
                     [vm] state_dir in agent.toml",
                )?
                .to_path_buf();
        }
        Ok(cfg)
    }
}

/// `[bmc]`: whether this node makes BMC calls for the root.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BmcGatewayConfig {
    #[serde(default)]
    pub gateway: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Whether exec actions may run on this node.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig { enabled: true }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The units service actions may touch; any other is refused.
    #[serde(default)]
    pub allow: Vec<UnitName>,
    /// Units run by configured commands instead of systemd.
    #[serde(default)]
    pub units: BTreeMap<UnitName, UnitConfig>,
}

impl ServiceConfig {
    pub fn allows(&self, unit: &str) -> bool {
        self.allow.iter().any(|u| u.as_str() == unit)
    }

    pub fn unit(&self, unit: &str) -> Option<&UnitConfig> {
        self.units.get(unit)
    }
}

/// A unit name that passed [`validate_unit_name`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnitName(String);

impl UnitName {
    pub fn new(name: &str) -> Result<UnitName, String> {
        validate_unit_name(name)?;
        Ok(UnitName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for UnitName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UnitName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UnitName::new(&s).map_err(de::Error::custom)
    }
}

/// How to start, stop and ask the state of one unit without systemd.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawUnit")]
pub struct UnitConfig {
    /// Starts the unit; the agent waits for this command only, not for the daemon it leaves
    /// running.
    pub start: CommandLine,
    /// Stops it; without one, SIGTERM to the pid in `pid_file`.
    pub stop: Option<CommandLine>,
    /// Exit status 0 means active; without one, the pid in `pid_file` being alive does.
    pub status: Option<CommandLine>,
    pub pid_file: Option<PathBuf>,
    /// Run the unit's commands as this user instead of root.
    pub user: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnit {
    start: Option<CommandLine>,
    stop: Option<CommandLine>,
    status: Option<CommandLine>,
    pid_file: Option<PathBuf>,
    user: Option<String>,
}

impl TryFrom<RawUnit> for UnitConfig {
    type Error = String;
    fn try_from(raw: RawUnit) -> Result<UnitConfig, String> {
        let start = raw.start.ok_or("a unit needs a `start` command")?;
        if raw.stop.is_none() && raw.pid_file.is_none() {
            return Err(
                "a unit needs a `stop` command or a `pid_file` (stopped by SIGTERM)".into(),
            );
        }
        if raw.status.is_none() && raw.pid_file.is_none() {
            return Err(
                "a unit needs a `status` command or a `pid_file` (to tell whether it runs)".into(),
            );
        }
        if let Some(p) = &raw.pid_file {
            if !p.is_absolute() {
                return Err(format!("pid_file {} is not an absolute path", p.display()));
            }
        }
        if let Some(u) = &raw.user {
            validate_user_name(u)?;
        }
        Ok(UnitConfig {
            start,
            stop: raw.stop,
            status: raw.status,
            pid_file: raw.pid_file,
            user: raw.user,
        })
    }
}

/// A configured command: a list run as it is, or a string run by `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandLine {
    Argv(Vec<String>),
    Shell(String),
}

impl CommandLine {
    /// The program and its arguments as they are executed.
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandLine::Argv(a) => a.clone(),
            CommandLine::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandLine::Argv(a) => f.write_str(&crate::actions::quote_argv(a)),
            CommandLine::Shell(s) => write!(f, "/bin/sh -c {}", crate::actions::quote(s)),
        }
    }
}

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CommandLine;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a list of arguments (run without a shell) or a string (run by /bin/sh -c)",
                )
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<CommandLine, E> {
                if s.trim().is_empty() {
                    return Err(E::custom("empty command"));
                }
                if s.contains('\0') {
                    return Err(E::custom("the command contains a NUL byte"));
                }
                Ok(CommandLine::Shell(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<CommandLine, A::Error> {
                let mut argv = Vec::new();
                while let Some(a) = seq.next_element::<String>()? {
                    if a.contains('\0') {
                        return Err(de::Error::custom("an argument contains a NUL byte"));
                    }
                    argv.push(a);
                }
                if argv.first().is_none_or(|p| p.is_empty()) {
                    return Err(de::Error::custom("empty command: the list needs a program"));
                }
                Ok(CommandLine::Argv(argv))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    exec: ExecConfig,
    #[serde(default)]
    service: ServiceConfig,
    #[serde(default)]
    bmc: BmcGatewayConfig,
    #[serde(default)]
    vm: VmConfig,
    #[serde(default)]
    inventory: InventoryConfig,
}

/// Whether `[vm]` names a state dir: read apart (ignoring every other key) because [`VmConfig`]
/// fills a missing `state_dir` with its default, which cannot be told from one written out.
#[derive(Deserialize, Default)]
struct VmStateDirProbe {
    #[serde(default)]
    vm: Option<StateDirKey>,
}

#[derive(Deserialize)]
struct StateDirKey {
    state_dir: Option<PathBuf>,
}

/// Reads the config at `path`, or at [`DEFAULT_PATH`] (where a missing file means the defaults).
pub fn load(path: Option<&Path>) -> Result<FileConfig, String> {
    let (path, required) = match path {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_PATH), false),
    };
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            Ok(FileConfig::default())
        }
        Err(e) => Err(format!("cannot read config {}: {e}", path.display())),
    }
}

/// Parses the text of a config file; `path` only names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<FileConfig, String> {
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let place = e
            .span()
            .map(|s| {
                let (line, column) = line_column(text, s.start);
                format!(" line {line}, column {column}")
            })
            .unwrap_or_default();
        // toml's message may span lines ("invalid table header\nexpected ..."): one line here.
        let message: Vec<&str> = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        format!(
            "invalid config {}:{place}: {}",
            path.display(),
            message.join("; ")
        )
    })?;
    // The text parsed as a whole above, so this second look cannot fail on anything new.
    let state_dir_given = toml::from_str::<VmStateDirProbe>(text)
        .ok()
        .and_then(|p| p.vm)
        .is_some_and(|v| v.state_dir.is_some());
    if let Some(p) = raw.inventory.watch.iter().find(|p| !p.is_absolute()) {
        return Err(format!(
            "invalid config {}: [inventory] watch: {:?} is not an absolute path",
            path.display(),
            p
        ));
    }
    Ok(FileConfig {
        inventory: raw.inventory,
        actions: ActionsConfig {
            exec: raw.exec,
            service: raw.service,
            bmc: raw.bmc,
            vm: VmSection {
                config: raw.vm,
                state_dir_given,
                host: None,
            },
        },
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> ActionsConfig {
        match parse(text, Path::new("/etc/banyan/agent.toml")) {
            Ok(c) => c.actions,
            Err(e) => panic!("{e}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match parse(text, Path::new("/etc/banyan/agent.toml")) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_syntax_error_is_one_line() {
        // Found by fuzzing: toml's message for a broken table header has two lines.
        let e = parse_err("[exec]\n[a b]\n");
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("line 2, column 4"), "{e}");
        assert!(e.contains("invalid table header; expected"), "{e}");
    }

    #[test]
    fn an_empty_file_allows_exec_and_no_service() {
        let c = parse_ok("");
        assert!(c.exec.enabled);
        assert!(c.service.allow.is_empty());
        assert!(!c.service.allows("sshd"));
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse_ok(
            r#"
[exec]
enabled = false

[service]
allow = ["nova-compute", "libvirtd"]

[service.units.nova-compute]
start = ["/usr/bin/nova-compute", "--config-file", "/etc/nova/nova.conf"]
stop = "kill -TERM $(cat /run/nova-compute.pid)"
pid_file = "/run/nova-compute.pid"
user = "nova"
"#,
        );
        assert!(!c.exec.enabled);
        assert!(c.service.allows("libvirtd"));
        let u = c.service.unit("nova-compute").unwrap();
        assert_eq!(
            u.start,
            CommandLine::Argv(vec![
                "/usr/bin/nova-compute".into(),
                "--config-file".into(),
                "/etc/nova/nova.conf".into()
            ])
        );
        assert_eq!(
            u.stop.as_ref().unwrap().argv(),
            ["/bin/sh", "-c", "kill -TERM $(cat /run/nova-compute.pid)"]
        );
        assert_eq!(u.status, None);
        assert_eq!(u.user.as_deref(), Some("nova"));
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_problem() {
        let e = parse_err("[service]\nallow = [\"ok\", \"a;b\"]\n");
        assert!(e.contains("/etc/banyan/agent.toml"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("invalid unit name"), "{e}");

        let e = parse_err("[service]\nalow = [\"x\"]\n");
        assert!(e.contains("line 2") && e.contains("alow"), "{e}");

        let e = parse_err("[service.units.x]\nstart = []\npid_file = \"/run/x.pid\"\n");
        assert!(e.contains("line 2") && e.contains("empty command"), "{e}");

        let e = parse_err("[service.units.x]\nstart = [\"/bin/true\"]\n");
        assert!(e.contains("line 1") && e.contains("stop"), "{e}");

        let e = parse_err(
            "[service.units.x]\nstart = \"true\"\nstatus = \"true\"\npid_file = \"rel.pid\"\n",
        );
        assert!(e.contains("absolute"), "{e}");

        let e = parse_err("[service.units.\"a b\"]\nstart = \"true\"\npid_file = \"/x\"\n");
        assert!(
            e.contains("line 1") && e.contains("invalid unit name"),
            "{e}"
        );

        let e = parse_err("[exec]\nenabled = \"yes\"\n");
        assert!(e.contains("line 2"), "{e}");

        let e = parse_err("[service.units.x]\nstart = 3\npid_file = \"/x\"\n");
        assert!(e.contains("list of arguments"), "{e}");
    }

    #[test]
    fn guests_live_in_the_agents_state_dir_unless_vm_names_one() {
        let c = parse_ok("[vm]\naccel = \"tcg\"\n");
        assert_eq!(c.vm.config.accel, crate::vm::AccelChoice::Tcg);
        let agent = Path::new("/var/lib/agent-a");
        assert_eq!(c.vm.resolve(Some(agent)).unwrap().state_dir, agent);
        let e = c.vm.resolve(None).unwrap_err();
        assert!(e.contains("--state-dir"), "{e}");
        let c = parse_ok("[vm]\nstate_dir = \"/srv/guests\"\n");
        assert_eq!(
            c.vm.resolve(None).unwrap().guests_dir(),
            Path::new("/srv/guests/vm")
        );
        assert_eq!(parse_ok("").vm.resolve(Some(agent)).unwrap().machine, "q35");
        let e = parse_err("[vm]\nacel = \"tcg\"\n");
        assert!(e.contains("line 2") && e.contains("acel"), "{e}");
    }

    #[test]
    fn a_missing_default_file_is_empty_but_a_missing_named_file_is_an_error() {
        let missing = std::env::temp_dir().join("banyan-no-such-config.toml");
        let e = load(Some(&missing)).unwrap_err();
        assert!(e.contains("banyan-no-such-config.toml"), "{e}");
        if !Path::new(DEFAULT_PATH).exists() {
            assert_eq!(load(None), Ok(FileConfig::default()));
        }
    }
}

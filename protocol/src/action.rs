//! Operator actions as they travel down the tree and as their results come back up.
//!
//! The root turns an operator's request into an [`Order`]: which nodes, what to do, dry run or
//! for real, until when. It seals the order ([`crate::seal`]) and sends it down the tree as a
//! command; each target checks the seal, that it is named, that the order has not expired and
//! that it has not seen the order's id before, and only then carries out the [`Task`]. Its answer,
//! a [`Receipt`], is sealed with the node's key, so nodes on the way up can drop it but cannot
//! change it. The same types are the JSON of the HTTP API (`POST /actions`, `GET /actions/ID`).
//!
//! What it is not: no execution (the agent's `actions` module), no bookkeeping of actions in
//! flight (the root's), no clock: times are given.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Most arguments in a command line of an exec task.
pub const MAX_ARGS: usize = 1024;
/// Most bytes of all arguments of a command line together.
pub const MAX_ARGV_BYTES: usize = 128 * 1024;
/// Most units in one service task.
pub const MAX_UNITS: usize = 64;
/// Default cap on captured output, per stream and target.
pub const DEFAULT_MAX_OUTPUT: u64 = 64 * 1024;
/// Largest cap on captured output a request may ask, per stream and target: results travel up the
/// tree in one message each.
pub const MAX_OUTPUT_LIMIT: u64 = 4 * 1024 * 1024;

/// What the root asks its targets to do, signed as a whole.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Order {
    /// Unique per order (random, 16 hex digits): a target refuses an id it has seen.
    pub id: String,
    /// When the root issued it (ms since the Unix epoch, the root's clock).
    pub issued_ms: u64,
    /// A target refuses the order after this time (its own clock; clusters keep clocks in step).
    pub expires_ms: u64,
    /// How long a target may spend carrying it out.
    pub timeout_ms: u64,
    /// False: each target says what it would do and changes nothing.
    pub for_real: bool,
    /// The token name the order was made for, for the node's log.
    pub who: String,
    /// Every target, as a folded node set (`cn[1-4096]`: an order stays small however many nodes
    /// it names). A node acts only if it is named here.
    pub targets: String,
    pub task: Task,
}

/// One kind of action.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Run a command.
    Exec(ExecTask),
    /// Start, stop, restart or ask the state of daemons.
    Service(ServiceTask),
    /// Stop carrying out the order `id` (its running command is killed).
    Cancel { id: String },
    /// Ask or change the power of nodes through their BMCs (carried out by the root).
    Power(PowerTask),
    /// One call to one BMC, made by a BMC gateway agent for the root (never asked through the
    /// API: the root sends it while it carries out a [`Task::Power`]).
    Bmc(BmcTask),
    /// Ask or change OpenStack hypervisors: Nova's view of them and their daemons (carried out by
    /// the root, which talks to OpenStack and orders the daemons through the tree).
    Hv(HvTask),
    /// Launch, list, stop QEMU guests on the targets, or read a guest's serial log.
    Vm(VmTask),
}

impl Task {
    /// Short name, as the API and the audit log show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Task::Exec(_) => "exec",
            Task::Service(_) => "service",
            Task::Cancel { .. } => "cancel",
            Task::Power(_) => "power",
            Task::Bmc(_) => "bmc",
            Task::Hv(_) => "hv",
            Task::Vm(_) => "vm",
        }
    }

    /// Checks what the executing side would otherwise refuse, so that the caller hears it at once.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Task::Exec(e) => e.validate(),
            Task::Service(s) => s.validate(),
            Task::Cancel { id } => validate_order_id(id),
            Task::Power(p) => p.validate(),
            Task::Bmc(b) => b.validate(),
            Task::Hv(h) => h.validate(),
            Task::Vm(v) => v.validate(),
        }
    }
}

/// What to do with OpenStack hypervisors.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HvOp {
    /// Nova's view (service enabled, up, servers) beside the node's daemons and agent; reads only.
    Status,
    /// The servers of each hypervisor, with their state; reads only.
    Vms,
    /// Start the daemons, wait until Nova sees the compute service up, enable it.
    Enable,
    /// Disable the compute service, delete its servers, wait for them to go, stop the daemons.
    Disable,
    /// Boot servers on the enabled hypervisors.
    Runvms,
}

impl HvOp {
    pub fn as_str(self) -> &'static str {
        match self {
            HvOp::Status => "status",
            HvOp::Vms => "vms",
            HvOp::Enable => "enable",
            HvOp::Disable => "disable",
            HvOp::Runvms => "runvms",
        }
    }

    /// Whether it changes nothing (it then runs in a dry run too).
    pub fn reads_only(self) -> bool {
        matches!(self, HvOp::Status | HvOp::Vms)
    }
}

/// Most servers `runvms` boots per hypervisor.
pub const MAX_BOOT_PER_HOST: u64 = 10_000;
/// Largest user data (base64), as Nova limits it.
pub const MAX_USER_DATA: usize = 65_535;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HvTask {
    pub op: HvOp,
    /// status: count and list each hypervisor's servers.
    #[serde(default)]
    pub nvms: bool,
    /// disable: how long the servers are given to go (ms) [default 300 s].
    #[serde(default)]
    pub vm_timeout_ms: Option<u64>,
    /// disable: stop the daemons even when servers remain at the timeout.
    #[serde(default)]
    pub force_shutoff: bool,
    /// runvms: what to boot.
    #[serde(default)]
    pub boot: Option<HvBoot>,
    /// runvms, vms: delete servers in ERROR on the targets.
    #[serde(default)]
    pub cleanup_errors: bool,
}

/// What `runvms` boots.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct HvBoot {
    /// Flavor name or id.
    pub flavor: String,
    /// Image name or id.
    pub image: String,
    /// How many in all, spread over the hypervisors; none: `fill`.
    #[serde(default)]
    pub count: Option<u64>,
    /// As many as each hypervisor's free capacity takes.
    #[serde(default)]
    pub fill: bool,
    #[serde(default)]
    pub key: Option<String>,
    /// The user data, base64.
    #[serde(default)]
    pub user_data: Option<String>,
    /// Servers are named PREFIX-HOST-N.
    pub name: String,
}

impl HvTask {
    pub fn validate(&self) -> Result<(), String> {
        let op = self.op.as_str();
        if self.nvms && self.op != HvOp::Status {
            return Err(format!("--nvms goes with status, not {op}"));
        }
        if (self.vm_timeout_ms.is_some() || self.force_shutoff) && self.op != HvOp::Disable {
            return Err(format!(
                "--vm-timeout and --force-shutoff go with disable, not {op}"
            ));
        }
        if self.vm_timeout_ms == Some(0) {
            return Err("--vm-timeout must be more than 0".into());
        }
        if self.cleanup_errors && !matches!(self.op, HvOp::Runvms | HvOp::Vms) {
            return Err(format!(
                "--cleanup-errors goes with runvms or vms, not {op}"
            ));
        }
        match (&self.boot, self.op) {
            (None, HvOp::Runvms) => Err("runvms needs --flavor and --image".into()),
            (Some(_), op) if op != HvOp::Runvms => Err(format!(
                "what to boot goes with runvms, not {}",
                op.as_str()
            )),
            (Some(b), _) => b.validate(),
            (None, _) => Ok(()),
        }
    }
}

impl HvBoot {
    pub fn validate(&self) -> Result<(), String> {
        let plain = |what: &str, t: &str| {
            if t.is_empty() || t.len() > 255 || t.chars().any(char::is_control) {
                Err(format!(
                    "{what} {:?}: 1 to 255 printable characters",
                    truncate_for_error(t)
                ))
            } else {
                Ok(())
            }
        };
        plain("flavor", &self.flavor)?;
        plain("image", &self.image)?;
        if let Some(k) = &self.key {
            plain("key", k)?;
        }
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(format!(
                "name prefix {:?}: letters, digits and - _ . (at most 64)",
                truncate_for_error(&self.name)
            ));
        }
        match (self.count, self.fill) {
            (Some(_), true) => return Err("give --count or --fill, not both".into()),
            (None, false) => return Err("give --count N or --fill".into()),
            (Some(0), _) => return Err("--count must be at least 1".into()),
            (Some(n), _) if n > MAX_BOOT_PER_HOST * 100 => {
                return Err(format!(
                    "--count {n} is more than {}",
                    MAX_BOOT_PER_HOST * 100
                ))
            }
            _ => {}
        }
        if let Some(u) = &self.user_data {
            if u.len() > MAX_USER_DATA {
                return Err(format!(
                    "the user data is {} bytes in base64, more than Nova's {MAX_USER_DATA}",
                    u.len()
                ));
            }
            if !u
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            {
                return Err("the user data must be base64".into());
            }
        }
        Ok(())
    }
}

/// What to do with a node's power.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PowerOp {
    /// The BMC's power state beside the agent's state in the tree; changes nothing.
    Status,
    /// Whether the configuration works: each BMC reachable, the credentials accepted, the
    /// system found, the resets it offers; changes nothing.
    Check,
    On,
    /// Graceful shutdown, forced when the grace time passes (at once with `force`).
    Off,
    /// Graceful restart, or a forced reset with `force`.
    Reset,
    /// Off, then on.
    Cycle,
}

impl PowerOp {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerOp::Status => "status",
            PowerOp::Check => "check",
            PowerOp::On => "on",
            PowerOp::Off => "off",
            PowerOp::Reset => "reset",
            PowerOp::Cycle => "cycle",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PowerTask {
    pub op: PowerOp,
    /// No graceful step: cut or reset the power at once.
    #[serde(default)]
    pub force: bool,
    /// How long a graceful shutdown may take before the power is cut (ms).
    #[serde(default)]
    pub grace_ms: Option<u64>,
    /// The device to boot from next: `pxe` or `disk` (with on, reset, cycle).
    #[serde(default)]
    pub boot: Option<String>,
}

impl PowerTask {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(b) = &self.boot {
            if b != "pxe" && b != "disk" {
                return Err(format!("boot device {b:?}: pxe or disk"));
            }
            if matches!(self.op, PowerOp::Status | PowerOp::Check | PowerOp::Off) {
                return Err(format!(
                    "--boot goes with on, reset or cycle, not {}",
                    self.op.as_str()
                ));
            }
        }
        if self.force && matches!(self.op, PowerOp::Status | PowerOp::Check | PowerOp::On) {
            return Err(format!(
                "--force goes with off, reset or cycle, not {}",
                self.op.as_str()
            ));
        }
        Ok(())
    }
}

/// One call a BMC gateway agent makes to one node's BMC, for the root. The BMC's address comes
/// from the root's `root.toml`; its password and CA files are paths on the gateway, read there
/// (a password never travels through the tree).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BmcTask {
    /// The node whose BMC this is (for messages, and Redfish system discovery).
    pub node: String,
    /// `redfish` or `ipmi`.
    pub protocol: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// On the gateway: owner-only, first line the password.
    pub password_file: String,
    /// Redfish: `https` (with `ca_file` or `insecure`) or `http`.
    #[serde(default)]
    pub scheme: String,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub system_id: Option<String>,
    /// Longest time the call may take (ms).
    pub timeout_ms: u64,
    pub call: BmcCall,
}

/// What a [`BmcTask`] asks of the BMC.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum BmcCall {
    /// The power state now.
    PowerState,
    /// Whether the BMC answers and takes the credentials.
    Check,
    /// A reset, named as Redfish names them (`On`, `ForceOff`, `GracefulShutdown`, ...).
    Reset(String),
    /// The device to boot from next (`pxe`, `disk`).
    NextBoot(String),
}

impl BmcCall {
    /// Whether the call changes the node (a dry run does not make it).
    pub fn changes(&self) -> bool {
        matches!(self, BmcCall::Reset(_) | BmcCall::NextBoot(_))
    }
}

impl BmcTask {
    pub fn validate(&self) -> Result<(), String> {
        crate::identity::validate_node_name(&self.node).map_err(|e| e.to_string())?;
        if self.protocol != "redfish" && self.protocol != "ipmi" {
            return Err(format!(
                "BMC protocol {:?}: redfish or ipmi",
                truncate_for_error(&self.protocol)
            ));
        }
        let bad_text = |t: &str| t.is_empty() || t.len() > 4096 || t.chars().any(char::is_control);
        if bad_text(&self.host) || bad_text(&self.user) || bad_text(&self.password_file) {
            return Err("a BMC task needs a host, a user and a password file".into());
        }
        if self.port == 0 || self.timeout_ms == 0 {
            return Err("a BMC task needs a port and a timeout".into());
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ExecTask {
    /// The program and its arguments; with `shell`, one string given to `/bin/sh -c`.
    pub argv: Vec<String>,
    /// Run `argv` joined by spaces through `/bin/sh -c`.
    #[serde(default)]
    pub shell: bool,
    /// Run as this user (its uid, gid and groups) instead of root.
    #[serde(default)]
    pub user: Option<String>,
    /// Cap on captured bytes per stream (stdout, stderr).
    #[serde(default = "default_max_output")]
    pub max_output: u64,
    /// Also send complete lines of output up while the command runs ([`OutputLines`]), for
    /// `banyan exec -L`; the result carries the whole (capped) output all the same.
    #[serde(default)]
    pub stream: bool,
}

fn default_max_output() -> u64 {
    DEFAULT_MAX_OUTPUT
}

impl ExecTask {
    pub fn validate(&self) -> Result<(), String> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err("no command given".into());
        }
        if self.argv.len() > MAX_ARGS {
            return Err(format!("more than {MAX_ARGS} arguments"));
        }
        let bytes: usize = self.argv.iter().map(|a| a.len() + 1).sum();
        if bytes > MAX_ARGV_BYTES {
            return Err(format!(
                "the command line is longer than {MAX_ARGV_BYTES} bytes"
            ));
        }
        if self.argv.iter().any(|a| a.contains('\0')) {
            return Err("an argument contains a NUL byte".into());
        }
        if let Some(u) = &self.user {
            validate_user_name(u)?;
        }
        if self.max_output > MAX_OUTPUT_LIMIT {
            return Err(format!(
                "max_output {} is above the limit of {MAX_OUTPUT_LIMIT} bytes",
                self.max_output
            ));
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ServiceOp {
    Start,
    Stop,
    Restart,
    Status,
}

impl ServiceOp {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceOp::Start => "start",
            ServiceOp::Stop => "stop",
            ServiceOp::Restart => "restart",
            ServiceOp::Status => "status",
        }
    }

    /// Whether it changes anything (status does not, so it runs even in a dry run).
    pub fn mutates(self) -> bool {
        !matches!(self, ServiceOp::Status)
    }
}

impl std::str::FromStr for ServiceOp {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "start" => Ok(ServiceOp::Start),
            "stop" => Ok(ServiceOp::Stop),
            "restart" => Ok(ServiceOp::Restart),
            "status" => Ok(ServiceOp::Status),
            _ => Err(format!(
                "unknown service operation {s:?}: use start, stop, restart or status"
            )),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ServiceTask {
    pub op: ServiceOp,
    pub units: Vec<String>,
}

impl ServiceTask {
    pub fn validate(&self) -> Result<(), String> {
        if self.units.is_empty() {
            return Err("no unit given".into());
        }
        if self.units.len() > MAX_UNITS {
            return Err(format!("more than {MAX_UNITS} units"));
        }
        self.units.iter().try_for_each(|u| validate_unit_name(u))
    }
}

/// Most guests one launch starts on each target (`--count`).
pub const MAX_VM_COUNT: u32 = 64;
/// Most guests one stop names.
pub const MAX_VM_NAMES: usize = 256;
/// The longest guest name, with the `-K` of a `--count` launch (it becomes a directory name and
/// part of socket paths on the node).
pub const MAX_VM_NAME: usize = 48;
/// Most port forwards per guest.
pub const MAX_VM_FORWARDS: usize = 16;
/// Default tail of a serial log (`banyan vm logs`).
pub const DEFAULT_VM_LOG_BYTES: u64 = 16 * 1024;
/// Longest TTL: a year (longer is no TTL at all, and an overflow risk on the node).
pub const MAX_VM_TTL_MS: u64 = 365 * 86_400_000;

/// What to do with the QEMU guests of the targets (carried out by each agent's `vm` executor).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct VmTask {
    pub op: VmOp,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum VmOp {
    /// Start guests (`count` of them on each target).
    Launch(VmLaunch),
    /// Every guest of the targets; reads only.
    List,
    /// Stop guests by name (or all of them): ACPI power button, then after `timeout_ms` QMP
    /// `quit`, then SIGKILL; their files are removed.
    Stop {
        #[serde(default)]
        names: Vec<String>,
        /// Every guest of each target (then `names` is empty).
        #[serde(default)]
        all: bool,
        /// How long a guest is given to power off before QEMU is told to quit.
        #[serde(default = "default_vm_stop_ms")]
        timeout_ms: u64,
    },
    /// The last `bytes` of one guest's serial log; reads only.
    Logs {
        name: String,
        #[serde(default = "default_vm_log_bytes")]
        bytes: u64,
    },
    /// One guest's serial console, for at most `session_ms` (sent by the root alone, for `GET
    /// /console/HOST:NAME`): the host sends what the guest prints up as sealed chunks and types
    /// the root's sealed keys ([`crate::console`]) until the root closes it, falls silent, the
    /// guest stops or the time is up; then its receipt ends the order.
    Console {
        name: String,
        #[serde(default = "default_console_session_ms")]
        session_ms: u64,
    },
}

fn default_console_session_ms() -> u64 {
    crate::console::DEFAULT_CONSOLE_SESSION_MS
}

fn default_vm_stop_ms() -> u64 {
    30_000
}

fn default_vm_log_bytes() -> u64 {
    DEFAULT_VM_LOG_BYTES
}

impl VmOp {
    pub fn as_str(&self) -> &'static str {
        match self {
            VmOp::Launch(_) => "launch",
            VmOp::List => "list",
            VmOp::Stop { .. } => "stop",
            VmOp::Logs { .. } => "logs",
            VmOp::Console { .. } => "console",
        }
    }

    /// Whether it changes nothing (it then runs in a dry run too).
    pub fn reads_only(&self) -> bool {
        matches!(self, VmOp::List | VmOp::Logs { .. })
    }
}

/// How a guest boots. Paths name files on the target node.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum VmBoot {
    /// A kernel (and initramfs) given to QEMU directly.
    Kernel {
        kernel: String,
        #[serde(default)]
        initrd: Option<String>,
        /// The kernel command line [default on the node: `console=ttyS0 panic=-1`].
        #[serde(default)]
        append: Option<String>,
    },
    /// A disk image; with `overlay` the guest writes to a qcow2 overlay of its own and the image
    /// is left untouched.
    Disk {
        image: String,
        #[serde(default)]
        overlay: bool,
    },
}

/// What `vm launch` starts on each target.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct VmLaunch {
    /// The guest's name; with `count` > 1 the guests are NAME-1 .. NAME-K.
    pub name: String,
    #[serde(default = "one")]
    pub count: u32,
    pub cpus: u32,
    pub memory_mib: u64,
    pub boot: VmBoot,
    /// Boot through UEFI (the node's OVMF, with a private copy of its vars).
    #[serde(default)]
    pub ovmf: bool,
    /// `auto`, `kvm` or `tcg` [default: the node's `[vm] accel`].
    #[serde(default)]
    pub accel: Option<String>,
    #[serde(default)]
    pub sev_snp: bool,
    #[serde(default)]
    pub tdx: bool,
    /// TCP forwards from the node's 127.0.0.1 to the guest, `HOST:GUEST` (HOST 0: a free port).
    #[serde(default)]
    pub forwards: Vec<String>,
    /// The guest is stopped this long after its launch.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// The guests' own agents join the tree (`--join`), each as the node `HOST-vm-NAME`.
    #[serde(default)]
    pub join: Option<VmJoin>,
}

/// What a `--join` launch gives each guest so that its agent can enrol: a join token for its
/// node name alone. The root's address is the target agent's own `--root`, which it knows.
///
/// A request carries `join: {}` (no tokens: the caller asks, the root mints); the root fills
/// `tokens` only in the sealed order of a launch for real, never in the action's record nor the
/// audit log, so a dry run or a listing never shows a usable token.
#[derive(Serialize, Deserialize, Clone, PartialEq, Default)]
pub struct VmJoin {
    /// Guest node name (`HOST-vm-NAME`) -> the text of its join token (`BNY1.<ca>.<secret>`).
    #[serde(default)]
    pub tokens: BTreeMap<String, String>,
}

impl std::fmt::Debug for VmJoin {
    /// The node names only: a token in a log line would let its reader enrol in the guest's place.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmJoin")
            .field("tokens", &self.tokens.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The node name of guest `guest` of host `host` when it joins the tree.
pub fn vm_node_name(host: &str, guest: &str) -> String {
    format!("{host}-vm-{guest}")
}

fn one() -> u32 {
    1
}

impl VmLaunch {
    /// The names of the guests it starts on each target.
    pub fn names(&self) -> Vec<String> {
        if self.count <= 1 {
            vec![self.name.clone()]
        } else {
            (1..=self.count)
                .map(|k| format!("{}-{k}", self.name))
                .collect()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        validate_vm_name(&self.name)?;
        if self.count == 0 || self.count > MAX_VM_COUNT {
            return Err(format!(
                "--count {}: launch 1 to {MAX_VM_COUNT} guests per node",
                self.count
            ));
        }
        if self.count > 1 {
            // The longest suffixed name must still be a name.
            validate_vm_name(&format!("{}-{}", self.name, self.count))?;
        }
        if self.cpus == 0 || self.cpus > 1024 {
            return Err(format!(
                "--cpus {}: a guest needs 1 to 1024 CPUs",
                self.cpus
            ));
        }
        if self.memory_mib < 16 || self.memory_mib > 16 << 20 {
            return Err(format!(
                "--memory {} MiB: a guest needs 16 MiB to 16 TiB",
                self.memory_mib
            ));
        }
        match &self.boot {
            VmBoot::Kernel {
                kernel,
                initrd,
                append,
            } => {
                validate_node_path("--kernel", kernel)?;
                if let Some(i) = initrd {
                    validate_node_path("--initrd", i)?;
                }
                if let Some(a) = append {
                    if a.len() > 4096 || a.chars().any(char::is_control) {
                        return Err(
                            "--append: at most 4096 characters, no control characters".into()
                        );
                    }
                }
            }
            VmBoot::Disk { image, .. } => validate_node_path("--disk", image)?,
        }
        if let Some(a) = &self.accel {
            if !matches!(a.as_str(), "auto" | "kvm" | "tcg") {
                return Err(format!(
                    "unknown accelerator {:?}: use auto, kvm or tcg",
                    truncate_for_error(a)
                ));
            }
        }
        if self.sev_snp && self.tdx {
            return Err("give --sev-snp or --tdx, not both".into());
        }
        if (self.sev_snp || self.tdx) && self.accel.as_deref() == Some("tcg") {
            return Err("SEV-SNP and TDX guests need KVM, not tcg".into());
        }
        if self.forwards.len() > MAX_VM_FORWARDS {
            return Err(format!("at most {MAX_VM_FORWARDS} --fwd per guest"));
        }
        let mut hosts = Vec::new();
        for f in &self.forwards {
            let (host, _) = parse_vm_forward(f)?;
            if host != 0 {
                if hosts.contains(&host) {
                    return Err(format!("host port {host} is forwarded twice"));
                }
                hosts.push(host);
            }
        }
        if self.count > 1 && !hosts.is_empty() {
            return Err(
                "a fixed host port cannot serve several guests: use --fwd 0:GUEST with --count"
                    .into(),
            );
        }
        if self.join.is_some() {
            // The guest's node name must be a node name (no '_'); the host part is checked by
            // the root, which knows the targets.
            for n in self.names() {
                if n.contains('_') {
                    return Err(format!(
                        "--join: guest {n} would join as a node named HOST-vm-{n}, and node names take no '_': rename the guest"
                    ));
                }
            }
        }
        if let Some(j) = &self.join {
            // A token is ~135 characters; anything far longer is not one.
            if j.tokens.iter().any(|(n, t)| n.len() > 512 || t.len() > 512) {
                return Err("--join: a guest's node name or token is too long".into());
            }
        }
        match self.ttl_ms {
            Some(0) => Err("--ttl must be more than 0".into()),
            Some(t) if t > MAX_VM_TTL_MS => Err("--ttl is longer than a year".into()),
            _ => Ok(()),
        }
    }
}

/// `HOST:GUEST`, two TCP ports; HOST 0 picks a free port on the node, GUEST is not 0.
pub fn parse_vm_forward(s: &str) -> Result<(u16, u16), String> {
    let bad = || {
        format!(
            "bad port forward {:?}: write HOST:GUEST, two TCP ports (HOST 0 picks a free port)",
            truncate_for_error(s)
        )
    };
    let (h, g) = s.split_once(':').ok_or_else(bad)?;
    let host: u16 = h.parse().map_err(|_| bad())?;
    let guest: u16 = g.parse().map_err(|_| bad())?;
    if guest == 0 {
        return Err(bad());
    }
    Ok((host, guest))
}

/// A file on the node named for QEMU: absolute (so never one of QEMU's `json:` or `nbd:`
/// pseudo-files), printable, and without the comma that would end the value in a QEMU option
/// list (`-drive file=...,`).
fn validate_node_path(what: &str, p: &str) -> Result<(), String> {
    if !p.starts_with('/') {
        return Err(format!(
            "{what} {:?}: give an absolute path of a file on the node",
            truncate_for_error(p)
        ));
    }
    if p.len() > 4096 || p.chars().any(|c| c.is_control() || c == ',') {
        return Err(format!(
            "{what} {:?}: a path of at most 4096 characters without commas or control characters",
            truncate_for_error(p)
        ));
    }
    Ok(())
}

impl VmTask {
    pub fn validate(&self) -> Result<(), String> {
        match &self.op {
            VmOp::Launch(l) => l.validate(),
            VmOp::List => Ok(()),
            VmOp::Stop {
                names,
                all,
                timeout_ms,
            } => {
                match (names.is_empty(), *all) {
                    (true, false) => return Err("name the guests to stop, or all of them".into()),
                    (false, true) => return Err("name guests or stop all of them, not both".into()),
                    _ => {}
                }
                if names.len() > MAX_VM_NAMES {
                    return Err(format!("at most {MAX_VM_NAMES} guests per stop"));
                }
                names.iter().try_for_each(|n| validate_vm_name(n))?;
                if *timeout_ms == 0 || *timeout_ms > 3_600_000 {
                    return Err("--timeout: more than 0, at most an hour".into());
                }
                Ok(())
            }
            VmOp::Logs { name, bytes } => {
                validate_vm_name(name)?;
                if *bytes == 0 || *bytes > MAX_OUTPUT_LIMIT {
                    return Err(format!("--bytes {bytes}: 1 to {MAX_OUTPUT_LIMIT}"));
                }
                Ok(())
            }
            VmOp::Console { name, session_ms } => {
                validate_vm_name(name)?;
                let max = crate::console::MAX_CONSOLE_SESSION_MS;
                if *session_ms < 1000 || *session_ms > max {
                    return Err(format!(
                        "console session of {session_ms} ms: 1 s to {max} ms"
                    ));
                }
                Ok(())
            }
        }
    }
}

/// A guest name: letters, digits, `-`, `_` and `.` (not first, nor `-`), at most
/// [`MAX_VM_NAME`] bytes. So a name is never a path, an option or anything a shell would read.
/// (The agent's `vm` module checks the same rule on its side.)
pub fn validate_vm_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_VM_NAME
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad guest name {:?}: use letters, digits, '-', '_' and '.' (not first), at most {MAX_VM_NAME}",
            truncate_for_error(name)
        ))
    }
}

/// One guest in a target's answer to a `vm` task.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default)]
pub struct VmStatus {
    pub name: String,
    pub state: VmState,
    pub cpus: u32,
    pub memory_mib: u64,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// `none`, `sev-snp` or `tdx`.
    pub confidential: String,
    /// When it was launched (unix ms, the node's clock).
    pub started_ms: u64,
    /// Its age when the node answered (so clocks need not agree).
    pub uptime_ms: u64,
    /// Time left before its TTL stops it, when the node answered.
    pub ttl_left_ms: Option<u64>,
    /// QEMU's pid on the node.
    pub pid: u32,
    /// `127.0.0.1:HOST -> GUEST` forwards, with the host ports QEMU bound.
    pub forwards: Vec<String>,
    /// Started by an earlier run of the agent.
    pub reattached: bool,
    /// Why it crashed or failed; how it stopped; what a dry run would run.
    pub detail: String,
    /// The node its own agent joins the tree as (`HOST-vm-NAME`), when launched with `--join`;
    /// empty otherwise.
    pub node: String,
}

/// Where a guest is, as a `vm` task's answer says.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Running,
    Stopping,
    /// Its QEMU ended without a stop; its files are gone.
    Crashed,
    /// Stopped by this task; its files are gone.
    Stopped,
    /// A dry run: would be launched (or stopped).
    DryRun,
    /// This task failed for this guest (`detail` says why).
    Failed,
    /// A state this program does not know (a newer node's).
    #[default]
    #[serde(other)]
    Unknown,
}

impl VmState {
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Crashed => "crashed",
            VmState::Stopped => "stopped",
            VmState::DryRun => "dry-run",
            VmState::Failed => "failed",
            VmState::Unknown => "unknown",
        }
    }
}

/// A target's answer to an order, signed with its node key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Receipt {
    /// The order's id.
    pub order: String,
    /// The node that carried it out (must match the signing certificate's name).
    pub node: String,
    pub result: NodeResult,
}

/// Lines a target printed while carrying out an order, signed with its node key like a receipt
/// ([`crate::seal::Purpose::Output`]). `seq` counts a node's batches for one order from 0, so
/// that the root takes each once and in order. Only complete lines travel; the last partial line
/// comes with the result.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct OutputLines {
    pub order: String,
    pub node: String,
    pub seq: u32,
    pub stdout: String,
    pub stderr: String,
}

/// What one target did (or, in a dry run, would do).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct NodeResult {
    /// Whether it succeeded (a command's exit status 0; every unit in the asked state).
    pub ok: bool,
    pub dry_run: bool,
    /// One line for humans: what would run, the exit status, or why it failed.
    pub summary: String,
    pub exit: Option<i32>,
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Output past the cap was dropped.
    pub truncated: bool,
    /// Service tasks: each unit's state after the operation.
    pub units: Vec<UnitStatus>,
    pub duration_ms: u64,
    /// Vm tasks: the guests listed, launched or stopped (logs come in `stdout`). Defaults to
    /// none in JSON, so an older root's records still read.
    #[serde(default)]
    pub vms: Vec<VmStatus>,
}

impl NodeResult {
    /// A failure before anything ran.
    pub fn refused(summary: impl Into<String>) -> NodeResult {
        NodeResult {
            ok: false,
            summary: summary.into(),
            ..NodeResult::default()
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct UnitStatus {
    pub unit: String,
    pub state: UnitState,
    /// Why, when it failed or is unknown; what would be done, in a dry run.
    pub detail: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnitState {
    Active,
    Inactive,
    Failed,
    Unknown,
}

impl UnitState {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitState::Active => "active",
            UnitState::Inactive => "inactive",
            UnitState::Failed => "failed",
            UnitState::Unknown => "unknown",
        }
    }
}

/// An order id: 16 lowercase hex digits.
pub fn validate_order_id(id: &str) -> Result<(), String> {
    if id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!(
            "invalid action id {:?}: expected 16 hex digits",
            truncate_for_error(id)
        ))
    }
}

/// A unit name as systemd allows them, and nothing a shell would read specially: letters, digits
/// and `@ . _ : -`, not starting with `-`, at most 128 bytes.
pub fn validate_unit_name(u: &str) -> Result<(), String> {
    let ok = !u.is_empty()
        && u.len() <= 128
        && !u.starts_with('-')
        && !u.starts_with('.')
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'@' | b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid unit name {:?}: use letters, digits and @ . _ : - (at most 128)",
            truncate_for_error(u)
        ))
    }
}

/// A user name as `useradd` accepts them by default.
pub fn validate_user_name(u: &str) -> Result<(), String> {
    let ok = !u.is_empty()
        && u.len() <= 32
        && !u.starts_with('-')
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'$'));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid user name {:?}", truncate_for_error(u)))
    }
}

fn truncate_for_error(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_with_shell_metacharacters_are_refused() {
        for bad in [
            "",
            "a;b",
            "a b",
            "$(reboot)",
            "`id`",
            "-x",
            "a|b",
            "a/b",
            "..",
            "a\nb",
        ] {
            assert!(validate_unit_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["nova-compute", "getty@tty1.service", "a_b:c.d"] {
            assert!(validate_unit_name(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn exec_tasks_are_bounded() {
        let t = |argv: Vec<&str>| ExecTask {
            argv: argv.into_iter().map(String::from).collect(),
            shell: false,
            user: None,
            max_output: DEFAULT_MAX_OUTPUT,
            stream: false,
        };
        assert!(t(vec![]).validate().is_err());
        assert!(t(vec![""]).validate().is_err());
        assert!(t(vec!["a\0b"]).validate().is_err());
        assert!(t(vec!["true"]).validate().is_ok());
        let mut big = t(vec!["x"; MAX_ARGS + 1]);
        assert!(big.validate().is_err());
        big.argv.truncate(1);
        big.max_output = MAX_OUTPUT_LIMIT + 1;
        assert!(big.validate().is_err());
    }

    #[test]
    fn order_ids_are_16_hex_digits() {
        assert!(validate_order_id("0123456789abcdef").is_ok());
        assert!(validate_order_id("0123456789ABCDEF").is_err());
        assert!(validate_order_id("../../etc/passwd").is_err());
    }

    #[test]
    fn the_json_shape_of_a_task_is_tagged_by_kind() {
        let t: Task = serde_json::from_str(r#"{"exec": {"argv": ["uname", "-n"]}}"#).unwrap();
        assert_eq!(
            t,
            Task::Exec(ExecTask {
                argv: vec!["uname".into(), "-n".into()],
                shell: false,
                user: None,
                max_output: DEFAULT_MAX_OUTPUT,
                stream: false
            })
        );
        let s: Task =
            serde_json::from_str(r#"{"service": {"op": "status", "units": ["sshd"]}}"#).unwrap();
        assert_eq!(s.kind(), "service");
    }

    fn launch() -> VmLaunch {
        VmLaunch {
            name: "web".into(),
            count: 1,
            cpus: 1,
            memory_mib: 128,
            boot: VmBoot::Kernel {
                kernel: "/srv/guest/vmlinuz".into(),
                initrd: Some("/srv/guest/initramfs.gz".into()),
                append: None,
            },
            ovmf: false,
            accel: None,
            sev_snp: false,
            tdx: false,
            forwards: vec!["0:22".into()],
            ttl_ms: Some(60_000),
            join: None,
        }
    }

    #[test]
    fn vm_launches_refuse_what_the_node_would() {
        assert_eq!(launch().validate(), Ok(()));
        let bad = |f: &dyn Fn(&mut VmLaunch), says: &str| {
            let mut l = launch();
            f(&mut l);
            let e = l.validate().unwrap_err();
            assert!(e.contains(says), "{l:?}: {e}");
        };
        bad(&|l| l.name = "a/b".into(), "bad guest name");
        bad(&|l| l.name = "-rf".into(), "bad guest name");
        bad(
            &|l| {
                l.name = "x".repeat(47); // fits alone, but not as x...x-10
                l.count = 10;
                l.forwards.clear();
            },
            "bad guest name",
        );
        bad(&|l| l.count = 0, "--count 0");
        bad(&|l| l.count = 65, "--count 65");
        bad(&|l| l.cpus = 0, "--cpus 0");
        bad(&|l| l.memory_mib = 0, "--memory 0");
        bad(
            &|l| {
                l.boot = VmBoot::Kernel {
                    kernel: "vmlinuz".into(),
                    initrd: None,
                    append: None,
                }
            },
            "absolute path",
        );
        bad(
            &|l| {
                l.boot = VmBoot::Disk {
                    image: "/a,if=none".into(),
                    overlay: true,
                }
            },
            "without commas",
        );
        bad(&|l| l.accel = Some("xen".into()), "unknown accelerator");
        bad(
            &|l| {
                l.sev_snp = true;
                l.tdx = true
            },
            "not both",
        );
        bad(&|l| l.forwards = vec!["22".into()], "bad port forward");
        bad(&|l| l.forwards = vec!["2222:0".into()], "bad port forward");
        bad(
            &|l| l.forwards = vec!["2222:22".into(), "2222:80".into()],
            "forwarded twice",
        );
        bad(&|l| l.ttl_ms = Some(0), "--ttl");
        bad(
            &|l| {
                l.name = "a_b".into();
                l.join = Some(VmJoin::default());
            },
            "node names take no '_'",
        );
        let mut l = launch();
        l.count = 10;
        l.name = "x".repeat(45);
        assert_eq!(l.validate(), Ok(()));
        assert_eq!(l.names().len(), 10);
        assert!(l.names()[9].ends_with("-10"));
        l.forwards = vec!["2222:22".into()];
        assert!(l.validate().unwrap_err().contains("several guests"));
    }

    #[test]
    fn a_joins_tokens_never_show_in_debug() {
        let mut j = VmJoin::default();
        j.tokens
            .insert(vm_node_name("cn1", "g"), "BNY1.aa.secretsecret".into());
        let shown = format!("{j:?}");
        assert_eq!(shown, r#"VmJoin { tokens: ["cn1-vm-g"] }"#);
        // A request asks with an empty object; an older request without the field is no join.
        let l: VmLaunch = serde_json::from_value(serde_json::json!({
            "name": "g", "cpus": 1, "memory_mib": 128,
            "boot": {"kernel": {"kernel": "/k"}}, "join": {}
        }))
        .unwrap();
        assert_eq!(l.join, Some(VmJoin::default()));
    }

    #[test]
    fn vm_stops_and_logs_are_bounded() {
        let stop = |names: &[&str], all: bool| {
            VmTask {
                op: VmOp::Stop {
                    names: names.iter().map(|n| n.to_string()).collect(),
                    all,
                    timeout_ms: 1000,
                },
            }
            .validate()
        };
        assert!(stop(&["a", "b"], false).is_ok());
        assert!(stop(&[], true).is_ok());
        assert!(stop(&[], false).is_err());
        assert!(stop(&["a"], true).is_err());
        assert!(stop(&["../x"], false).is_err());
        let logs = |bytes| {
            VmTask {
                op: VmOp::Logs {
                    name: "a".into(),
                    bytes,
                },
            }
            .validate()
        };
        assert!(logs(1).is_ok());
        assert!(logs(0).is_err());
        assert!(logs(MAX_OUTPUT_LIMIT + 1).is_err());
        let console = |name: &str, session_ms| {
            VmTask {
                op: VmOp::Console {
                    name: name.into(),
                    session_ms,
                },
            }
            .validate()
        };
        assert!(console("a", 60_000).is_ok());
        assert!(console("a/b", 60_000).is_err());
        assert!(console("a", 0).is_err());
        assert!(console("a", crate::console::MAX_CONSOLE_SESSION_MS + 1).is_err());
    }

    #[test]
    fn vm_tasks_and_results_travel_in_json_and_postcard() {
        let t: Task = serde_json::from_str(
            r#"{"vm": {"op": {"launch": {"name": "a", "cpus": 1, "memory_mib": 64,
                "boot": {"kernel": {"kernel": "/k"}}}}}}"#,
        )
        .unwrap();
        assert_eq!(t.kind(), "vm");
        let Task::Vm(VmTask {
            op: VmOp::Launch(l),
        }) = &t
        else {
            panic!("{t:?}")
        };
        assert_eq!((l.count, l.forwards.len(), l.ttl_ms), (1, 0, None));
        let list: Task = serde_json::from_str(r#"{"vm": {"op": "list"}}"#).unwrap();
        assert!(matches!(&list, Task::Vm(v) if v.op.reads_only()));
        let console: Task =
            serde_json::from_str(r#"{"vm": {"op": {"console": {"name": "a"}}}}"#).unwrap();
        assert!(
            matches!(&console, Task::Vm(VmTask { op: VmOp::Console { session_ms, .. } })
            if *session_ms == crate::console::DEFAULT_CONSOLE_SESSION_MS)
        );
        for task in [t, list, console] {
            let bytes = postcard::to_allocvec(&task).unwrap();
            assert_eq!(postcard::from_bytes::<Task>(&bytes).unwrap(), task);
        }
        let r = NodeResult {
            ok: true,
            vms: vec![VmStatus {
                name: "a".into(),
                state: VmState::Running,
                ttl_left_ms: Some(5),
                ..VmStatus::default()
            }],
            ..NodeResult::default()
        };
        let bytes = postcard::to_allocvec(&r).unwrap();
        assert_eq!(postcard::from_bytes::<NodeResult>(&bytes).unwrap(), r);
        // Every truncation and a flipped byte decode to an error or a value, never a panic.
        for cut in 0..bytes.len() {
            let _ = postcard::from_bytes::<NodeResult>(&bytes[..cut]);
            let mut flipped = bytes.clone();
            flipped[cut] ^= 0xff;
            let _ = postcard::from_bytes::<NodeResult>(&flipped);
        }
        // An older root's JSON (no `vms`) and a newer node's state still read.
        let old: NodeResult = serde_json::from_str(
            r#"{"ok": true, "dry_run": false, "summary": "", "exit": null, "signal": null,
               "stdout": "", "stderr": "", "truncated": false, "units": [], "duration_ms": 1}"#,
        )
        .unwrap();
        assert!(old.vms.is_empty());
        let s: VmStatus = serde_json::from_str(r#"{"name": "a", "state": "paused"}"#).unwrap();
        assert_eq!(s.state, VmState::Unknown);
    }
}

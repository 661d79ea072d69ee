//! A node's inventory (what it is made of and what is installed on it) and drift: which nodes
//! differ from the rest, and how.
//!
//! [`Inventory`] is plain data that the agent collects (`banyan_agent::inventory`) and that travels
//! as postcard or JSON. It is deterministic: maps are `BTreeMap`s, and the lists are compared and
//! hashed in sorted order whatever order they were built in, so two nodes with the same content
//! have the same [`Inventory::digest`].
//!
//! The fields fall into three facets, so that drift can be asked of one aspect at a time and
//! grouped on one digest alone ([`Inventory::facet_digest`]):
//! - [`Facet::Hardware`]: `cpu`, `memory_bytes`, `disks`, `nics`, `gpus`, `firmware`.
//! - [`Facet::Packages`], the software stack: `os`, `kernel`, `nvidia_driver` (a kernel module
//!   installed outside the package manager, often), `package_manager`, `packages`.
//! - [`Facet::Files`], the node's files as configured: the watched `files` and the `mounts`.
//!
//! [`drift`] groups nodes by a facet's digest, the majority first, and lists what each other group
//! has that the majority has not; [`diff`] is the same comparison between two inventories (a saved
//! bill of materials and the node now).
//!
//! Nothing here reads a file: the collector lives in the agent.

use crate::nodeset::NodeSet;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Mixed into every digest, so that a change of what an inventory holds (a new field) cannot give
/// the digest of an older inventory with other content.
const FORMAT: &str = "banyan-inventory-v1";

/// What one node is made of and what is installed on it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Inventory {
    pub cpu: Cpu,
    /// `MemTotal`: memory the kernel manages (a little less than what is installed).
    pub memory_bytes: Option<u64>,
    /// Whole disks, by name.
    pub disks: Vec<Disk>,
    /// Network interfaces backed by a device, by name.
    pub nics: Vec<Nic>,
    /// Display controllers (PCI class 0x03), by PCI slot.
    pub gpus: Vec<Gpu>,
    /// The loaded NVIDIA kernel module's version, e.g. `535.104.05`.
    pub nvidia_driver: Option<String>,
    pub firmware: Firmware,
    pub os: Os,
    /// The running kernel's release, e.g. `6.1.0-18-amd64`.
    pub kernel: Option<String>,
    /// `dpkg` or `rpm`; `None` when neither database was found.
    pub package_manager: Option<String>,
    /// Installed packages by name; a package of a foreign architecture is named `name:arch`.
    pub packages: BTreeMap<String, Package>,
    /// Mounted filesystems, by target.
    pub mounts: Vec<Mount>,
    /// Watched files by path: the hex SHA-256 of the content, `None` if missing or unreadable.
    pub files: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Cpu {
    pub model: Option<String>,
    pub sockets: Option<u32>,
    /// Physical cores, all sockets together.
    pub cores: Option<u32>,
    /// Hardware threads (logical CPUs) online.
    pub threads: Option<u32>,
    /// [`flags_digest`] of the CPU flags: the flag list is long and only equality matters.
    pub flags_digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Disk {
    pub name: String,
    pub size_bytes: Option<u64>,
    pub rotational: Option<bool>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    pub mac: Option<String>,
    /// `None` when the link is down or the driver does not say.
    pub speed_mbps: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Gpu {
    /// E.g. `0000:3b:00.0`.
    pub pci_slot: String,
    /// Lowercase hex without `0x`, e.g. `10de`.
    pub vendor_id: Option<String>,
    pub device_id: Option<String>,
    /// The kernel driver bound to it, e.g. `nvidia`; `None` when unbound.
    pub driver: Option<String>,
}

/// DMI strings (`/sys/class/dmi/id`). Serial numbers and UUIDs are left out on purpose: they are
/// different on every node, so they would make every node drift.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Firmware {
    pub bios_vendor: Option<String>,
    pub bios_version: Option<String>,
    pub bios_date: Option<String>,
    pub board_vendor: Option<String>,
    pub board_name: Option<String>,
    pub product_name: Option<String>,
    pub sys_vendor: Option<String>,
}

/// From os-release(5).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Os {
    pub id: Option<String>,
    pub version_id: Option<String>,
    pub pretty_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Package {
    /// As the package manager writes it, epoch included (`1:2.38-4`).
    pub version: String,
    pub arch: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mount {
    pub target: String,
    pub source: String,
    pub fstype: String,
}

/// Which part of an inventory to compare (see the module's documentation for what each holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Facet {
    Packages,
    Hardware,
    Files,
    All,
}

impl Facet {
    pub const ALL: [Facet; 4] = [Facet::Packages, Facet::Hardware, Facet::Files, Facet::All];

    pub fn as_str(self) -> &'static str {
        match self {
            Facet::Packages => "packages",
            Facet::Hardware => "hardware",
            Facet::Files => "files",
            Facet::All => "all",
        }
    }
}

impl fmt::Display for Facet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Facet {
    type Err = InventoryError;

    fn from_str(s: &str) -> Result<Facet, InventoryError> {
        Facet::ALL
            .into_iter()
            .find(|facet| facet.as_str() == s)
            .ok_or_else(|| InventoryError::UnknownFacet(s.to_string()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    #[error("unknown inventory facet {0:?} (packages, hardware, files or all)")]
    UnknownFacet(String),
    #[error("cannot decode an inventory: {0}")]
    Decode(String),
}

/// The hex SHA-256 of a CPU's flags, in any order and repeated or not: sorted, deduplicated and
/// joined by single spaces.
pub fn flags_digest<'a>(flags: impl IntoIterator<Item = &'a str>) -> String {
    let sorted: BTreeSet<&str> = flags.into_iter().filter(|f| !f.is_empty()).collect();
    let mut hasher = Sha256::new();
    for (i, flag) in sorted.iter().enumerate() {
        if i > 0 {
            hasher.update(b" ");
        }
        hasher.update(flag.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// The hardware facet as it is hashed: lists in sorted order.
#[derive(Serialize)]
struct HardwareView<'a> {
    cpu: &'a Cpu,
    memory_bytes: Option<u64>,
    disks: Vec<&'a Disk>,
    nics: Vec<&'a Nic>,
    gpus: Vec<&'a Gpu>,
    firmware: &'a Firmware,
}

#[derive(Serialize)]
struct PackagesView<'a> {
    os: &'a Os,
    kernel: &'a Option<String>,
    nvidia_driver: &'a Option<String>,
    package_manager: &'a Option<String>,
    packages: &'a BTreeMap<String, Package>,
}

#[derive(Serialize)]
struct FilesView<'a> {
    mounts: Vec<&'a Mount>,
    files: &'a BTreeMap<String, Option<String>>,
}

fn sorted<T: Ord>(items: &[T]) -> Vec<&T> {
    let mut refs: Vec<&T> = items.iter().collect();
    refs.sort();
    refs
}

impl Inventory {
    /// The three facets' views. The destructuring names every field without `..`, so a field
    /// added to [`Inventory`] does not compile until it is given a facet (and so a digest).
    fn views(&self) -> (HardwareView<'_>, PackagesView<'_>, FilesView<'_>) {
        let Inventory {
            cpu,
            memory_bytes,
            disks,
            nics,
            gpus,
            nvidia_driver,
            firmware,
            os,
            kernel,
            package_manager,
            packages,
            mounts,
            files,
        } = self;
        (
            HardwareView {
                cpu,
                memory_bytes: *memory_bytes,
                disks: sorted(disks),
                nics: sorted(nics),
                gpus: sorted(gpus),
                firmware,
            },
            PackagesView {
                os,
                kernel,
                nvidia_driver,
                package_manager,
                packages,
            },
            FilesView {
                mounts: sorted(mounts),
                files,
            },
        )
    }

    /// The hex SHA-256 of the whole inventory (the same as `facet_digest(Facet::All)`).
    pub fn digest(&self) -> String {
        self.facet_digest(Facet::All)
    }

    /// The hex SHA-256 of one facet's canonical encoding (postcard of its fields, lists sorted),
    /// prefixed with the format and the facet's name so that no two facets share a digest. `All`
    /// hashes the three facets' digests.
    pub fn facet_digest(&self, facet: Facet) -> String {
        let (hardware, packages, files) = self.views();
        let mut hasher = Sha256::new();
        hasher.update(FORMAT.as_bytes());
        hasher.update(b"/");
        hasher.update(facet.as_str().as_bytes());
        hasher.update(b"\0");
        // postcard fails only on sequences of unknown length and on serializers' custom errors,
        // neither of which these types have.
        let encoded = match facet {
            Facet::Hardware => postcard::to_allocvec(&hardware),
            Facet::Packages => postcard::to_allocvec(&packages),
            Facet::Files => postcard::to_allocvec(&files),
            Facet::All => {
                for part in [Facet::Hardware, Facet::Packages, Facet::Files] {
                    hasher.update(self.facet_digest(part).as_bytes());
                }
                Ok(Vec::new())
            }
        }
        .expect("postcard encodes every inventory view");
        hasher.update(&encoded);
        hex::encode(hasher.finalize())
    }

    /// The whole inventory's digest and each facet's: what a node sends when only its profile
    /// is asked ([`crate::wire::Query::Inventory`] without `full`).
    pub fn digests(&self) -> Digests {
        Digests {
            all: self.digest(),
            hardware: self.facet_digest(Facet::Hardware),
            packages: self.facet_digest(Facet::Packages),
            files: self.facet_digest(Facet::Files),
        }
    }

    pub fn to_postcard(&self) -> Vec<u8> {
        // As in `facet_digest`: these types always encode.
        postcard::to_allocvec(self).expect("postcard encodes every inventory")
    }

    /// Decodes an inventory from outside (a node, a saved file): any malformed input is an
    /// error, never a panic.
    pub fn from_postcard(bytes: &[u8]) -> Result<Inventory, InventoryError> {
        postcard::from_bytes(bytes).map_err(|e| InventoryError::Decode(e.to_string()))
    }
}

/// One way in which an inventory (`found`) differs from another (`expected`): in [`drift`],
/// `expected` is the majority's and `found` the group's; in a bill-of-materials [`diff`], the saved
/// one's and the node's now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Difference {
    /// A hardware or system field, named by its path (`cpu.model`, `memory_bytes`,
    /// `nics[eth0].speed_mbps`, `mounts[/scratch].fstype`, `os.version_id`). A whole list item
    /// present on one side only is one difference named by the item (`disks[sdb]`), its fields
    /// summed up in the value. `None` is an unknown field or an absent item.
    Field {
        field: String,
        expected: Option<String>,
        found: Option<String>,
    },
    /// A package added (`expected` is `None`), removed (`found` is `None`) or of another
    /// version or architecture.
    Package {
        name: String,
        expected: Option<Package>,
        found: Option<Package>,
    },
    /// A watched file whose content differs; `None` is a file missing or unreadable. A path
    /// watched on one side only is a [`Difference::Field`] named `watch[PATH]`.
    File {
        path: String,
        expected: Option<String>,
        found: Option<String>,
    },
}

/// A facet flattened for comparison: the fields that every inventory has, and the list items by
/// their key (`disks[sda]`), each with a summary and its fields.
#[derive(Default)]
struct Flat {
    scalars: BTreeMap<&'static str, Option<String>>,
    items: BTreeMap<String, (String, BTreeMap<&'static str, Option<String>>)>,
}

impl Flat {
    fn item(&mut self, key: String, fields: Vec<(&'static str, Option<String>)>) {
        let summary = fields
            .iter()
            .map(|(name, value)| format!("{name}={}", value.as_deref().unwrap_or("?")))
            .collect::<Vec<_>>()
            .join(" ");
        self.items
            .insert(key, (summary, fields.into_iter().collect()));
    }
}

fn text<T: ToString>(value: &Option<T>) -> Option<String> {
    value.as_ref().map(ToString::to_string)
}

fn flat_hardware(inv: &Inventory) -> Flat {
    let mut flat = Flat::default();
    let cpu = &inv.cpu;
    let firmware = &inv.firmware;
    flat.scalars = BTreeMap::from([
        ("cpu.model", cpu.model.clone()),
        ("cpu.sockets", text(&cpu.sockets)),
        ("cpu.cores", text(&cpu.cores)),
        ("cpu.threads", text(&cpu.threads)),
        ("cpu.flags_digest", cpu.flags_digest.clone()),
        ("memory_bytes", text(&inv.memory_bytes)),
        ("firmware.bios_vendor", firmware.bios_vendor.clone()),
        ("firmware.bios_version", firmware.bios_version.clone()),
        ("firmware.bios_date", firmware.bios_date.clone()),
        ("firmware.board_vendor", firmware.board_vendor.clone()),
        ("firmware.board_name", firmware.board_name.clone()),
        ("firmware.product_name", firmware.product_name.clone()),
        ("firmware.sys_vendor", firmware.sys_vendor.clone()),
    ]);
    for disk in sorted(&inv.disks) {
        flat.item(
            format!("disks[{}]", disk.name),
            vec![
                ("size_bytes", text(&disk.size_bytes)),
                ("rotational", text(&disk.rotational)),
                ("model", disk.model.clone()),
            ],
        );
    }
    for nic in sorted(&inv.nics) {
        flat.item(
            format!("nics[{}]", nic.name),
            vec![
                ("mac", nic.mac.clone()),
                ("speed_mbps", text(&nic.speed_mbps)),
            ],
        );
    }
    for gpu in sorted(&inv.gpus) {
        flat.item(
            format!("gpus[{}]", gpu.pci_slot),
            vec![
                ("vendor_id", gpu.vendor_id.clone()),
                ("device_id", gpu.device_id.clone()),
                ("driver", gpu.driver.clone()),
            ],
        );
    }
    flat
}

fn flat_packages(inv: &Inventory) -> Flat {
    Flat {
        scalars: BTreeMap::from([
            ("os.id", inv.os.id.clone()),
            ("os.version_id", inv.os.version_id.clone()),
            ("os.pretty_name", inv.os.pretty_name.clone()),
            ("kernel", inv.kernel.clone()),
            ("nvidia_driver", inv.nvidia_driver.clone()),
            ("package_manager", inv.package_manager.clone()),
        ]),
        items: BTreeMap::new(),
    }
}

fn flat_files(inv: &Inventory) -> Flat {
    let mut flat = Flat::default();
    for mount in sorted(&inv.mounts) {
        flat.item(
            format!("mounts[{}]", mount.target),
            vec![
                ("source", Some(mount.source.clone())),
                ("fstype", Some(mount.fstype.clone())),
            ],
        );
    }
    flat
}

fn diff_flat(expected: &Flat, found: &Flat, out: &mut Vec<Difference>) {
    let field =
        |field: String, expected: Option<String>, found: Option<String>| Difference::Field {
            field,
            expected,
            found,
        };
    let keys: BTreeSet<&&str> = expected
        .scalars
        .keys()
        .chain(found.scalars.keys())
        .collect();
    for key in keys {
        let (e, f) = (expected.scalars.get(*key), found.scalars.get(*key));
        if e != f {
            out.push(field(
                key.to_string(),
                e.cloned().flatten(),
                f.cloned().flatten(),
            ));
        }
    }
    let keys: BTreeSet<&String> = expected.items.keys().chain(found.items.keys()).collect();
    for key in keys {
        match (expected.items.get(key), found.items.get(key)) {
            (Some((_, e)), Some((_, f))) => {
                let names: BTreeSet<&&str> = e.keys().chain(f.keys()).collect();
                for name in names {
                    let (ev, fv) = (e.get(*name), f.get(*name));
                    if ev != fv {
                        out.push(field(
                            format!("{key}.{name}"),
                            ev.cloned().flatten(),
                            fv.cloned().flatten(),
                        ));
                    }
                }
            }
            (e, f) => out.push(field(
                key.clone(),
                e.map(|(summary, _)| summary.clone()),
                f.map(|(summary, _)| summary.clone()),
            )),
        }
    }
}

/// How `found` differs from `expected` in `facet`, in a fixed order: hardware, then the software
/// stack, then files; within each, fields by name, list items by key, packages by name, files by
/// path. Empty when the facet's digests are equal.
pub fn diff(expected: &Inventory, found: &Inventory, facet: Facet) -> Vec<Difference> {
    let mut out = Vec::new();
    if matches!(facet, Facet::Hardware | Facet::All) {
        diff_flat(&flat_hardware(expected), &flat_hardware(found), &mut out);
    }
    if matches!(facet, Facet::Packages | Facet::All) {
        diff_flat(&flat_packages(expected), &flat_packages(found), &mut out);
        let names: BTreeSet<&String> = expected
            .packages
            .keys()
            .chain(found.packages.keys())
            .collect();
        for name in names {
            let (e, f) = (expected.packages.get(name), found.packages.get(name));
            if e != f {
                out.push(Difference::Package {
                    name: name.clone(),
                    expected: e.cloned(),
                    found: f.cloned(),
                });
            }
        }
    }
    if matches!(facet, Facet::Files | Facet::All) {
        let paths: BTreeSet<&String> = expected.files.keys().chain(found.files.keys()).collect();
        for path in paths {
            match (expected.files.get(path), found.files.get(path)) {
                (Some(e), Some(f)) if e != f => out.push(Difference::File {
                    path: path.clone(),
                    expected: e.clone(),
                    found: f.clone(),
                }),
                (Some(_), Some(_)) => {}
                (e, f) => out.push(Difference::Field {
                    field: format!("watch[{path}]"),
                    expected: e.map(|_| "watched".to_string()),
                    found: f.map(|_| "watched".to_string()),
                }),
            }
        }
        diff_flat(&flat_files(expected), &flat_files(found), &mut out);
    }
    out
}

/// Nodes whose inventories agree on one facet, and how they differ from the majority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftGroup {
    /// The facet's digest that every node of the group has.
    pub digest: String,
    /// The group's nodes, sorted.
    pub nodes: Vec<String>,
    /// The same nodes folded (`cn[1-4,7]`).
    pub nodeset: String,
    /// How the group differs from the majority (the first group); empty for the majority itself.
    pub differences: Vec<Difference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    pub facet: Facet,
    /// The largest group first (the majority: the reference), then by size; groups of the same
    /// size in the order of their first node's name, so that the output is the same for the same
    /// input. One group means no drift.
    pub groups: Vec<DriftGroup>,
    /// Digests of the groups whose differences are not known: no inventory of theirs (or of the
    /// majority) could be had.
    #[serde(default)]
    pub unknown: Vec<String>,
}

/// An inventory's digests, whole and per facet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digests {
    pub all: String,
    pub hardware: String,
    pub packages: String,
    pub files: String,
}

impl Digests {
    pub fn of(&self, facet: Facet) -> &str {
        match facet {
            Facet::All => &self.all,
            Facet::Hardware => &self.hardware,
            Facet::Packages => &self.packages,
            Facet::Files => &self.files,
        }
    }
}

/// Nodes grouped by their `facet` digest alone: `(digest, names)`, the largest group first, then
/// by size, groups of one size in the order of their first name; names sorted in each group. The
/// first name of each group is the one [`drift_of`] compares.
pub fn group(digests: &BTreeMap<String, Digests>, facet: Facet) -> Vec<(String, Vec<String>)> {
    let mut by_digest: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    // Name order in, so every group's names come out sorted and its first is its least.
    for (name, d) in digests {
        by_digest.entry(d.of(facet)).or_default().push(name.clone());
    }
    let mut groups: Vec<(String, Vec<String>)> = by_digest
        .into_iter()
        .map(|(d, names)| (d.to_string(), names))
        .collect();
    groups.sort_by(|(_, a), (_, b)| b.len().cmp(&a.len()).then_with(|| a[0].cmp(&b[0])));
    groups
}

/// The drift of `groups` (from [`group`]), each group compared with the first through one
/// inventory per group: `inventories` holds at least each group's first node's. A group whose
/// inventory is missing (its node did not answer) gets no differences, and is named in
/// `Drift::unknown`.
pub fn drift_of(
    groups: Vec<(String, Vec<String>)>,
    inventories: &BTreeMap<String, Inventory>,
    facet: Facet,
) -> Drift {
    let majority = groups.first().and_then(|(_, n)| inventories.get(&n[0]));
    let mut unknown = Vec::new();
    let groups = groups
        .into_iter()
        .enumerate()
        .map(|(i, (digest, names))| {
            let differences = if i == 0 {
                Vec::new()
            } else {
                match (majority, inventories.get(&names[0])) {
                    (Some(m), Some(g)) => diff(m, g, facet),
                    _ => {
                        unknown.push(digest.clone());
                        Vec::new()
                    }
                }
            };
            DriftGroup {
                nodeset: NodeSet::from_names(names.iter().map(String::as_str)).fold(),
                digest,
                nodes: names,
                differences,
            }
        })
        .collect();
    Drift {
        facet,
        groups,
        unknown,
    }
}

/// Groups `nodes` by their `facet` digest and compares every group to the majority.
pub fn drift(nodes: &BTreeMap<String, Inventory>, facet: Facet) -> Drift {
    let digests = nodes
        .iter()
        .map(|(name, inv)| (name.clone(), inv.digests()))
        .collect();
    drift_of(group(&digests, facet), nodes, facet)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(version: &str) -> Package {
        Package {
            version: version.to_string(),
            arch: "amd64".to_string(),
        }
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    /// A compute node as the agent would describe it.
    fn compute_node() -> Inventory {
        Inventory {
            cpu: Cpu {
                model: some("AMD EPYC 7763 64-Core Processor"),
                sockets: Some(2),
                cores: Some(128),
                threads: Some(256),
                flags_digest: Some(flags_digest(["fpu", "sse2", "avx2"])),
            },
            memory_bytes: Some(540_000_000_000),
            disks: vec![
                Disk {
                    name: "sda".into(),
                    size_bytes: Some(960_197_124_096),
                    rotational: Some(false),
                    model: some("SAMSUNG MZ7L3960"),
                },
                Disk {
                    name: "nvme0n1".into(),
                    size_bytes: Some(3_840_755_982_336),
                    rotational: Some(false),
                    model: None,
                },
            ],
            nics: vec![
                Nic {
                    name: "eth0".into(),
                    mac: some("0c:c4:7a:00:00:01"),
                    speed_mbps: Some(25_000),
                },
                Nic {
                    name: "ib0".into(),
                    mac: some("80:00:02:08:fe:80"),
                    speed_mbps: Some(200_000),
                },
            ],
            gpus: vec![Gpu {
                pci_slot: "0000:41:00.0".into(),
                vendor_id: some("10de"),
                device_id: some("20b5"),
                driver: some("nvidia"),
            }],
            nvidia_driver: some("535.104.05"),
            firmware: Firmware {
                bios_vendor: some("American Megatrends International, LLC."),
                bios_version: some("2.4"),
                bios_date: some("06/15/2023"),
                board_vendor: some("Supermicro"),
                board_name: some("H12DSG-O-CPU"),
                product_name: some("AS -2124GQ-NART"),
                sys_vendor: some("Supermicro"),
            },
            os: Os {
                id: some("debian"),
                version_id: some("12"),
                pretty_name: some("Debian GNU/Linux 12 (bookworm)"),
            },
            kernel: some("6.1.0-18-amd64"),
            package_manager: some("dpkg"),
            packages: BTreeMap::from([
                ("bash".to_string(), package("5.2.15-2+b2")),
                ("openmpi-bin".to_string(), package("4.1.4-3+b1")),
                ("slurmd".to_string(), package("22.05.8-4")),
            ]),
            mounts: vec![
                Mount {
                    target: "/".into(),
                    source: "/dev/sda2".into(),
                    fstype: "ext4".into(),
                },
                Mount {
                    target: "/scratch".into(),
                    source: "mds@o2ib:/scratch".into(),
                    fstype: "lustre".into(),
                },
            ],
            files: BTreeMap::from([
                ("/etc/slurm/slurm.conf".to_string(), some(&"a".repeat(64))),
                ("/etc/munge/munge.key".to_string(), some(&"b".repeat(64))),
            ]),
        }
    }

    fn cluster(nodes: &[(&str, Inventory)]) -> BTreeMap<String, Inventory> {
        nodes
            .iter()
            .map(|(name, inv)| (name.to_string(), inv.clone()))
            .collect()
    }

    #[test]
    fn identical_nodes_are_one_group_without_differences() {
        let nodes = cluster(&[
            ("cn1", compute_node()),
            ("cn2", compute_node()),
            ("cn3", compute_node()),
        ]);
        for facet in Facet::ALL {
            let drift = drift(&nodes, facet);
            assert_eq!(drift.facet, facet);
            assert_eq!(drift.groups.len(), 1, "{facet}");
            let group = &drift.groups[0];
            assert_eq!(group.nodes, ["cn1", "cn2", "cn3"]);
            assert_eq!(group.nodeset, "cn[1-3]");
            assert_eq!(group.digest, compute_node().facet_digest(facet));
            assert!(group.differences.is_empty());
        }
    }

    #[test]
    fn no_nodes_no_groups() {
        assert!(drift(&BTreeMap::new(), Facet::All).groups.is_empty());
    }

    /// cn3 and cn5 run an older Open MPI, have an extra package and another slurm.conf.
    fn drifted() -> Inventory {
        let mut odd = compute_node();
        odd.packages
            .insert("openmpi-bin".into(), package("4.1.2-1"));
        odd.packages.insert("gdb".into(), package("13.1-3"));
        odd.files
            .insert("/etc/slurm/slurm.conf".into(), some(&"c".repeat(64)));
        odd
    }

    #[test]
    fn a_minority_lists_exactly_its_package_and_file_differences() {
        let nodes = cluster(&[
            ("cn1", compute_node()),
            ("cn2", compute_node()),
            ("cn3", drifted()),
            ("cn4", compute_node()),
            ("cn5", drifted()),
        ]);
        let packages = drift(&nodes, Facet::Packages);
        assert_eq!(packages.groups.len(), 2);
        assert_eq!(packages.groups[0].nodeset, "cn[1-2,4]");
        assert!(packages.groups[0].differences.is_empty());
        assert_eq!(packages.groups[1].nodes, ["cn3", "cn5"]);
        assert_eq!(packages.groups[1].nodeset, "cn[3,5]");
        assert_eq!(
            packages.groups[1].differences,
            [
                Difference::Package {
                    name: "gdb".into(),
                    expected: None,
                    found: Some(package("13.1-3")),
                },
                Difference::Package {
                    name: "openmpi-bin".into(),
                    expected: Some(package("4.1.4-3+b1")),
                    found: Some(package("4.1.2-1")),
                },
            ]
        );

        let files = drift(&nodes, Facet::Files);
        assert_eq!(files.groups[1].nodeset, "cn[3,5]");
        assert_eq!(
            files.groups[1].differences,
            [Difference::File {
                path: "/etc/slurm/slurm.conf".into(),
                expected: some(&"a".repeat(64)),
                found: some(&"c".repeat(64)),
            }]
        );

        // The hardware is the same everywhere.
        let hardware = drift(&nodes, Facet::Hardware);
        assert_eq!(hardware.groups.len(), 1);
        assert_eq!(hardware.groups[0].nodeset, "cn[1-5]");

        // All: one drifted group, both kinds of differences, packages before files.
        let all = drift(&nodes, Facet::All);
        assert_eq!(all.groups.len(), 2);
        assert_eq!(all.groups[1].nodeset, "cn[3,5]");
        let mut expected = packages.groups[1].differences.clone();
        expected.extend(files.groups[1].differences.clone());
        assert_eq!(all.groups[1].differences, expected);
    }

    #[test]
    fn a_removed_package_and_a_missing_file_show_as_none() {
        let mut odd = compute_node();
        odd.packages.remove("slurmd");
        odd.files.insert("/etc/munge/munge.key".into(), None);
        assert_eq!(
            diff(&compute_node(), &odd, Facet::All),
            [
                Difference::Package {
                    name: "slurmd".into(),
                    expected: Some(package("22.05.8-4")),
                    found: None,
                },
                Difference::File {
                    path: "/etc/munge/munge.key".into(),
                    expected: some(&"b".repeat(64)),
                    found: None,
                },
            ]
        );
    }

    #[test]
    fn hardware_differences_are_named_by_field_path() {
        let mut odd = compute_node();
        odd.cpu.model = some("AMD EPYC 7713 64-Core Processor");
        odd.memory_bytes = Some(270_000_000_000);
        odd.nics[0].speed_mbps = None;
        odd.nics.remove(1);
        odd.disks.push(Disk {
            name: "sdb".into(),
            size_bytes: Some(1000),
            rotational: Some(true),
            model: None,
        });
        odd.firmware.bios_version = some("2.6");
        odd.gpus[0].driver = None;
        assert_eq!(
            diff(&compute_node(), &odd, Facet::Hardware),
            [
                Difference::Field {
                    field: "cpu.model".into(),
                    expected: some("AMD EPYC 7763 64-Core Processor"),
                    found: some("AMD EPYC 7713 64-Core Processor"),
                },
                Difference::Field {
                    field: "firmware.bios_version".into(),
                    expected: some("2.4"),
                    found: some("2.6"),
                },
                Difference::Field {
                    field: "memory_bytes".into(),
                    expected: some("540000000000"),
                    found: some("270000000000"),
                },
                Difference::Field {
                    field: "disks[sdb]".into(),
                    expected: None,
                    found: some("size_bytes=1000 rotational=true model=?"),
                },
                Difference::Field {
                    field: "gpus[0000:41:00.0].driver".into(),
                    expected: some("nvidia"),
                    found: None,
                },
                Difference::Field {
                    field: "nics[eth0].speed_mbps".into(),
                    expected: some("25000"),
                    found: None,
                },
                Difference::Field {
                    field: "nics[ib0]".into(),
                    expected: some("mac=80:00:02:08:fe:80 speed_mbps=200000"),
                    found: None,
                },
            ]
        );
        // None of it is a package or a file.
        assert!(diff(&compute_node(), &odd, Facet::Packages).is_empty());
        assert!(diff(&compute_node(), &odd, Facet::Files).is_empty());
    }

    #[test]
    fn system_fields_mounts_and_watch_lists_have_their_facets() {
        let mut odd = compute_node();
        odd.kernel = some("6.1.0-21-amd64");
        odd.nvidia_driver = None;
        odd.mounts[1].fstype = "nfs4".into();
        odd.files.insert("/etc/hosts".into(), None);
        assert_eq!(
            diff(&compute_node(), &odd, Facet::Packages),
            [
                Difference::Field {
                    field: "kernel".into(),
                    expected: some("6.1.0-18-amd64"),
                    found: some("6.1.0-21-amd64"),
                },
                Difference::Field {
                    field: "nvidia_driver".into(),
                    expected: some("535.104.05"),
                    found: None,
                },
            ]
        );
        assert_eq!(
            diff(&compute_node(), &odd, Facet::Files),
            [
                Difference::Field {
                    field: "watch[/etc/hosts]".into(),
                    expected: None,
                    found: some("watched"),
                },
                Difference::Field {
                    field: "mounts[/scratch].fstype".into(),
                    expected: some("lustre"),
                    found: some("nfs4"),
                },
            ]
        );
    }

    #[test]
    fn ties_put_the_group_with_the_first_name_first() {
        let nodes = cluster(&[
            ("b1", drifted()),
            ("b2", drifted()),
            ("a7", compute_node()),
            ("a9", compute_node()),
            ("c1", {
                let mut other = compute_node();
                other.kernel = some("6.12.0");
                other
            }),
        ]);
        let drift = drift(&nodes, Facet::All);
        let sets: Vec<&str> = drift.groups.iter().map(|g| g.nodeset.as_str()).collect();
        assert_eq!(sets, ["a[7,9]", "b[1-2]", "c1"]);
        // The reference is the first group: b[1-2] differs from a[7,9] by what `drifted` changed.
        assert_eq!(drift.groups[1].differences.len(), 3);
        assert_eq!(
            drift.groups[2].differences,
            [Difference::Field {
                field: "kernel".into(),
                expected: some("6.1.0-18-amd64"),
                found: some("6.12.0"),
            }]
        );
    }

    #[test]
    fn larger_groups_come_first_whatever_their_names() {
        let nodes = cluster(&[
            ("a1", drifted()),
            ("z1", compute_node()),
            ("z2", compute_node()),
        ]);
        let drift = drift(&nodes, Facet::Packages);
        assert_eq!(drift.groups[0].nodeset, "z[1-2]");
        assert_eq!(drift.groups[1].nodeset, "a1");
        assert_eq!(drift.groups[1].differences.len(), 2);
    }

    #[test]
    fn digests_do_not_depend_on_insertion_order() {
        let a = compute_node();
        let mut b = compute_node();
        b.disks.reverse();
        b.nics.reverse();
        b.mounts.reverse();
        b.packages = a
            .packages
            .iter()
            .rev()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        b.files = a
            .files
            .iter()
            .rev()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        b.cpu.flags_digest = Some(flags_digest(["avx2", "fpu", "sse2", "fpu"]));
        for facet in Facet::ALL {
            assert_eq!(a.facet_digest(facet), b.facet_digest(facet), "{facet}");
        }
        assert_eq!(a.digest(), b.digest());
        assert!(diff(&a, &b, Facet::All).is_empty());
    }

    #[test]
    fn digests_are_pinned_and_facets_are_independent() {
        // Pinned: the digest of the same content must not change between builds or releases
        // unless FORMAT changes (saved bills of materials are compared by it).
        let empty = Inventory::default();
        assert_eq!(
            empty.digest(),
            "b95bbfe2bdda7e79b47058e1d883319817fa5000d562af29478d5bc15c2e2baa"
        );
        assert_eq!(
            compute_node().digest(),
            "d6856cafa3e63eb62b8fc176b4db5ad7f7e63cdbb4abcddeabdcf168fb7ea9bd"
        );
        let digests: BTreeSet<String> = Facet::ALL.iter().map(|f| empty.facet_digest(*f)).collect();
        assert_eq!(digests.len(), 4, "no two facets share a digest");

        let mut odd = compute_node();
        odd.packages.insert("gdb".into(), package("13.1-3"));
        let base = compute_node();
        assert_ne!(
            base.facet_digest(Facet::Packages),
            odd.facet_digest(Facet::Packages)
        );
        assert_eq!(
            base.facet_digest(Facet::Hardware),
            odd.facet_digest(Facet::Hardware)
        );
        assert_eq!(
            base.facet_digest(Facet::Files),
            odd.facet_digest(Facet::Files)
        );
        assert_ne!(base.digest(), odd.digest());
        assert_eq!(
            flags_digest(["b", "a"]),
            // sha256("a b")
            "c8687a08aa5d6ed2044328fa6a697ab8e96dc34291e8c2034ae8c38e6fcc6d65"
        );
    }

    #[test]
    fn round_trips_through_postcard_and_json() {
        let inv = compute_node();
        assert_eq!(Inventory::from_postcard(&inv.to_postcard()).unwrap(), inv);
        let json = serde_json::to_string(&inv).unwrap();
        assert_eq!(serde_json::from_str::<Inventory>(&json).unwrap(), inv);
        let d = drift(
            &cluster(&[("n1", inv.clone()), ("n2", drifted())]),
            Facet::All,
        );
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains(r#""facet":"all""#), "{json}");
        assert_eq!(serde_json::from_str::<Drift>(&json).unwrap(), d);
        assert_eq!("files".parse::<Facet>().unwrap(), Facet::Files);
        assert!("bogus".parse::<Facet>().is_err());
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let bytes = compute_node().to_postcard();
        for cut in 0..bytes.len() {
            assert!(
                Inventory::from_postcard(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        // A huge length prefix for the first list (disks) must not allocate or panic.
        let mut huge = Inventory::default().to_postcard();
        let at = 6; // cpu: 5 absent options; memory_bytes: absent; then the disks' length.
        huge.splice(at..at + 1, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(Inventory::from_postcard(&huge).is_err());
        for garbage in [&[0xffu8; 64][..], &[0x01; 3], &[]] {
            assert!(Inventory::from_postcard(garbage).is_err());
        }
        for json in [
            "",
            "{}",
            "[]",
            r#"{"cpu": 7}"#,
            r#"{"memory_bytes": -1}"#,
            "{\"packages\": {\"a\": {\"version\": \"\u{0}\"}}}",
            &"[".repeat(100_000),
        ] {
            assert!(
                serde_json::from_str::<Inventory>(json).is_err(),
                "{json:.40}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(0u8.., 0..512)) {
            let _ = Inventory::from_postcard(&bytes);
        }
    }
}

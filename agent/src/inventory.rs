//! The node's [`Inventory`]: its hardware, system and packages, its mounts and the digests of the
//! files an operator watches, read from `/proc`, `/sys`, `/etc` and the package database under a
//! `root` directory (`/` in the agent, a fake tree in tests), as the collectors in `collect/` do.
//!
//! Collected once at start and again when something may have changed, not every wave: it reads
//! the whole package database. Every reader tolerates a missing or garbled file: the field it
//! feeds is `None` or empty and the rest of the inventory is still collected, so `collect` cannot
//! fail.
//!
//! What is left out, and why:
//! - Disks: loop, ram and zram devices (files and memory, not disks), and md arrays and dm
//!   volumes (built from the disks listed; they are configuration, not hardware). The rule is the
//!   disk collector's [`is_whole_disk`] without md and dm.
//! - Network interfaces: `lo` and every interface without a `device` link (bridges, bonds, veths,
//!   tunnels): they are configuration, and containers' veths come and go all the time, which
//!   would make nodes drift for nothing. Physical and paravirtual (virtio) NICs remain.
//! - Mounts: the ones the filesystem collector reports ([`kind_of`]: local disk filesystems, tmpfs
//!   at `/tmp` and `/dev/shm`, network and parallel filesystems), read from `/proc/self/mounts`:
//!   the agent's own mount namespace is the one its jobs and actions see (and test hosts give each
//!   agent private mounts). Pseudo filesystems, other tmpfs, overlay and squashfs are left out,
//!   for the reasons the filesystem collector gives. A target mounted over twice is listed once,
//!   as the mount on top.
//! - Packages: only what is installed on disk (dpkg's status `installed`, whatever the selection:
//!   `install`, `hold` or a pending `deinstall`); a package of a foreign architecture is named
//!   `name:arch` (apt's spelling), one of the native architecture or `all` plain `name`, so the
//!   same package has the same name on every node of an architecture. rpm is a TODO: no rpm
//!   database to test against here; `package_manager` is `None` on such a node.
//! - Watched files: only regular files, at most [`MAX_WATCHED_BYTES`]; a bigger one, a directory,
//!   a device or a FIFO counts as unreadable (`None`), never blocks and is never read whole.

use crate::collect::disk::is_whole_disk;
use crate::collect::filesystem::{kind_of, parse_mount};
use banyan_protocol::inventory::{
    flags_digest, Cpu, Disk, Firmware, Gpu, Inventory, Mount, Nic, Os, Package,
};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// A watched file bigger than this is reported unreadable: watch configuration, not data.
pub const MAX_WATCHED_BYTES: u64 = 64 << 20;
/// A `/proc` or `/sys` file larger than this is garbage (the largest, cpuinfo, is about 1 KiB per
/// CPU).
const MAX_SMALL_FILE: u64 = 4 << 20;
/// The dpkg database of a large install is tens of MB; this only stops a runaway file.
const MAX_DPKG_STATUS: u64 = 512 << 20;

/// The inventory of the system under `root`, with the SHA-256 of each of `watch` (absolute paths,
/// taken under `root`; the keys of `files` are the paths as given).
pub fn collect(root: &Path, watch: &[PathBuf]) -> Inventory {
    let packages = read(root, "var/lib/dpkg/status", MAX_DPKG_STATUS);
    Inventory {
        cpu: read_small(root, "proc/cpuinfo")
            .map(|text| parse_cpuinfo(&text))
            .unwrap_or_default(),
        memory_bytes: read_small(root, "proc/meminfo").and_then(|text| parse_mem_total(&text)),
        disks: disks(root),
        nics: nics(root),
        gpus: gpus(root),
        nvidia_driver: read_small(root, "proc/driver/nvidia/version")
            .and_then(|text| parse_nvidia_version(&text)),
        firmware: firmware(root),
        os: read_small(root, "etc/os-release")
            .or_else(|| read_small(root, "usr/lib/os-release"))
            .map(|text| parse_os_release(&text))
            .unwrap_or_default(),
        kernel: attribute(&root.join("proc/sys/kernel/osrelease")),
        package_manager: packages.as_ref().map(|_| "dpkg".to_string()),
        packages: packages
            .map(|text| parse_dpkg_status(&text))
            .unwrap_or_default(),
        mounts: read_small(root, "proc/self/mounts")
            .map(|text| parse_mounts(&text))
            .unwrap_or_default(),
        files: watch
            .iter()
            .map(|path| {
                let inside = path.strip_prefix("/").unwrap_or(path);
                (
                    path.to_string_lossy().into_owned(),
                    hash_file(&root.join(inside)),
                )
            })
            .collect(),
    }
}

/// At most `limit` bytes of `root/rel` as text (bytes that are not UTF-8 become U+FFFD); `None`
/// when it cannot be read or is larger.
fn read(root: &Path, rel: &str, limit: u64) -> Option<String> {
    read_path(&root.join(rel), limit)
}

fn read_small(root: &Path, rel: &str) -> Option<String> {
    read(root, rel, MAX_SMALL_FILE)
}

fn read_path(path: &Path, limit: u64) -> Option<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    if bytes.len() as u64 > limit {
        return None;
    }
    Some(match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// A sysfs or procfs attribute: one value, trimmed; `None` when unreadable or empty.
fn attribute(path: &Path) -> Option<String> {
    let text = read_path(path, MAX_SMALL_FILE)?;
    let value = text.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// The names in a directory, sorted; none when it cannot be listed.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The CPU from `/proc/cpuinfo` (proc(5)): the model, sockets (distinct `physical id`s), cores
/// (distinct `physical id`/`core id` pairs: exact on hybrid CPUs too; else the sum of each socket's
/// `cpu cores`, for kernels or hypervisors that write no `core id`), threads (`processor`
/// entries: the CPUs online) and the flags (`flags` on x86, `Features` on Arm) of the first CPU.
/// Whatever a kernel does not write (Arm has no model name nor physical id) stays `None`.
pub fn parse_cpuinfo(text: &str) -> Cpu {
    let mut model = None;
    let mut sockets = BTreeSet::new();
    let mut cores = BTreeSet::new();
    let mut cores_per_socket: BTreeMap<Option<&str>, u32> = BTreeMap::new();
    let mut threads = 0u32;
    let mut flags = None;
    let mut socket: Option<&str> = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "processor" => {
                threads = threads.saturating_add(1);
                socket = None;
            }
            "model name" if model.is_none() && !value.is_empty() => model = Some(value.to_string()),
            "physical id" => {
                socket = Some(value);
                sockets.insert(value);
            }
            "core id" => {
                cores.insert((socket, value));
            }
            "cpu cores" => {
                if let Ok(n) = value.parse() {
                    cores_per_socket.entry(socket).or_insert(n);
                }
            }
            "flags" | "Features" if flags.is_none() => {
                flags = Some(flags_digest(value.split_ascii_whitespace()))
            }
            _ => {}
        }
    }
    let count = |n: usize| (n > 0).then(|| u32::try_from(n).unwrap_or(u32::MAX));
    Cpu {
        model,
        sockets: count(sockets.len()),
        cores: count(cores.len()).or_else(|| {
            let sum = cores_per_socket
                .values()
                .fold(0u32, |a, n| a.saturating_add(*n));
            (sum > 0).then_some(sum)
        }),
        threads: count(threads as usize),
        flags_digest: flags,
    }
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn parse_mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut fields = line.split_ascii_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

fn disks(root: &Path) -> Vec<Disk> {
    let dir = root.join("sys/block");
    entries(&dir)
        .into_iter()
        .filter(|name| is_whole_disk(name) && !name.starts_with("md") && !name.starts_with("dm-"))
        .map(|name| {
            let dev = dir.join(&name);
            Disk {
                // `size` counts 512-byte sectors whatever the device's own sector size.
                size_bytes: attribute(&dev.join("size"))
                    .and_then(|s| s.parse::<u64>().ok())
                    .and_then(|sectors| sectors.checked_mul(512)),
                rotational: match attribute(&dev.join("queue/rotational")).as_deref() {
                    Some("0") => Some(false),
                    Some("1") => Some(true),
                    _ => None,
                },
                model: attribute(&dev.join("device/model")),
                name,
            }
        })
        .collect()
}

fn nics(root: &Path) -> Vec<Nic> {
    let dir = root.join("sys/class/net");
    entries(&dir)
        .into_iter()
        .filter(|name| name != "lo" && dir.join(name).join("device").exists())
        .map(|name| {
            let dev = dir.join(&name);
            Nic {
                mac: attribute(&dev.join("address")).map(|mac| mac.to_ascii_lowercase()),
                // Reading `speed` fails (EINVAL) on a link that is down, and some drivers say -1
                // or 0 for "unknown".
                speed_mbps: attribute(&dev.join("speed"))
                    .and_then(|s| s.parse::<u32>().ok())
                    .filter(|speed| *speed > 0 && *speed != u32::MAX),
                name,
            }
        })
        .collect()
}

/// A PCI id as sysfs writes it (`0x10de`), as lspci does (`10de`).
fn pci_id(path: &Path) -> Option<String> {
    let id = attribute(path)?.to_ascii_lowercase();
    Some(id.strip_prefix("0x").unwrap_or(&id).to_string())
}

fn gpus(root: &Path) -> Vec<Gpu> {
    let dir = root.join("sys/bus/pci/devices");
    entries(&dir)
        .into_iter()
        .filter(|slot| {
            // Class 0x03: display controllers (VGA, 3D, other), which is where GPUs are.
            attribute(&dir.join(slot).join("class"))
                .is_some_and(|class| class.to_ascii_lowercase().starts_with("0x03"))
        })
        .map(|slot| {
            let dev = dir.join(&slot);
            Gpu {
                vendor_id: pci_id(&dev.join("vendor")),
                device_id: pci_id(&dev.join("device")),
                driver: std::fs::read_link(dev.join("driver"))
                    .ok()
                    .and_then(|link| Some(link.file_name()?.to_string_lossy().into_owned())),
                pci_slot: slot,
            }
        })
        .collect()
}

/// The version in the first line of `/proc/driver/nvidia/version`, e.g. `535.104.05` in
/// `NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023`
/// (the open modules' line has more words before it): the first word of digits and dots.
pub fn parse_nvidia_version(text: &str) -> Option<String> {
    text.lines()
        .next()?
        .split_ascii_whitespace()
        .find(|word| {
            word.starts_with(|c: char| c.is_ascii_digit())
                && word.contains('.')
                && word.chars().all(|c| c.is_ascii_digit() || c == '.')
        })
        .map(str::to_string)
}

fn firmware(root: &Path) -> Firmware {
    let dmi = root.join("sys/class/dmi/id");
    let field = |name: &str| attribute(&dmi.join(name));
    Firmware {
        bios_vendor: field("bios_vendor"),
        bios_version: field("bios_version"),
        bios_date: field("bios_date"),
        board_vendor: field("board_vendor"),
        board_name: field("board_name"),
        product_name: field("product_name"),
        sys_vendor: field("sys_vendor"),
    }
}

/// `ID`, `VERSION_ID` and `PRETTY_NAME` of os-release(5): shell-like `KEY=value` lines, values
/// maybe quoted with `"` or `'`, with `\` escaping `"`, `\`, `$` and `` ` `` inside double quotes.
pub fn parse_os_release(text: &str) -> Os {
    let mut os = Os::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let slot = match key {
            "ID" => &mut os.id,
            "VERSION_ID" => &mut os.version_id,
            "PRETTY_NAME" => &mut os.pretty_name,
            _ => continue,
        };
        let value = unquote(value);
        if !value.is_empty() {
            *slot = Some(value);
        }
    }
    os
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
        return value[1..value.len() - 1].to_string();
    }
    let Some(inner) = value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return value.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(next @ ('"' | '\\' | '$' | '`')) => out.push(next),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The installed packages in dpkg's status database (`/var/lib/dpkg/status`, deb822 stanzas),
/// in one pass over its lines. See the module's documentation for which count and how foreign
/// architectures are named. The native architecture is `dpkg`'s own, or when dpkg itself is
/// not listed, the most common one.
pub fn parse_dpkg_status(text: &str) -> BTreeMap<String, Package> {
    struct Stanza<'a> {
        name: Option<&'a str>,
        installed: bool,
        version: Option<&'a str>,
        arch: Option<&'a str>,
    }
    const EMPTY: Stanza<'static> = Stanza {
        name: None,
        installed: false,
        version: None,
        arch: None,
    };
    let mut found: Vec<(&str, &str, &str)> = Vec::new();
    let mut stanza = EMPTY;
    // The empty line chained at the end closes the last stanza.
    for line in text.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            if let (Some(name), true, Some(version), Some(arch)) =
                (stanza.name, stanza.installed, stanza.version, stanza.arch)
            {
                found.push((name, arch, version));
            }
            stanza = EMPTY;
            continue;
        }
        // Continuation lines (descriptions, conffiles) start with a space or a tab.
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match field {
            "Package" => stanza.name = Some(value).filter(|v| !v.is_empty()),
            "Version" => stanza.version = Some(value).filter(|v| !v.is_empty()),
            "Architecture" => stanza.arch = Some(value).filter(|v| !v.is_empty()),
            "Status" => {
                // want flag status: what is on disk is the third word.
                let mut words = value.split_ascii_whitespace().skip(1);
                stanza.installed = words.next() == Some("ok") && words.next() == Some("installed");
            }
            _ => {}
        }
    }
    let native = found
        .iter()
        .find(|(name, _, _)| *name == "dpkg")
        .map(|(_, arch, _)| *arch)
        .or_else(|| {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for (_, arch, _) in &found {
                if *arch != "all" {
                    *counts.entry(arch).or_default() += 1;
                }
            }
            // Ties go to the first architecture by name, so the choice is deterministic.
            counts
                .into_iter()
                .rev()
                .max_by_key(|(_, count)| *count)
                .map(|(arch, _)| arch)
        });
    found
        .into_iter()
        .map(|(name, arch, version)| {
            let key = if arch == "all" || Some(arch) == native {
                name.to_string()
            } else {
                format!("{name}:{arch}")
            };
            (
                key,
                Package {
                    version: version.to_string(),
                    arch: arch.to_string(),
                },
            )
        })
        .collect()
}

/// The mounts of a mount table (`/proc/self/mounts`) worth listing, by target; the last mount at a
/// target (the one on top) wins.
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    let mut by_target: BTreeMap<String, Mount> = BTreeMap::new();
    for mount in text.lines().filter_map(parse_mount) {
        if kind_of(mount.fstype, &mount.mountpoint).is_none() {
            by_target.remove(mount.mountpoint.as_ref());
            continue;
        }
        by_target.insert(
            mount.mountpoint.to_string(),
            Mount {
                target: mount.mountpoint.into_owned(),
                source: mount.source.into_owned(),
                fstype: mount.fstype.to_string(),
            },
        );
    }
    by_target.into_values().collect()
}

/// The hex SHA-256 of a regular file's content, read in blocks and never kept; `None` when it is
/// missing, unreadable, not a regular file or larger than [`MAX_WATCHED_BYTES`].
pub fn hash_file(path: &Path) -> Option<String> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer. It changes nothing
    // for a regular file, and anything else is refused once open.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let n = match file.read(&mut block) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        };
        total += n as u64;
        if total > MAX_WATCHED_BYTES {
            return None;
        }
        hasher.update(&block[..n]);
    }
    Some(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::fake_tree::FakeTree;
    use std::os::unix::fs::symlink;

    const CPUINFO: &str = "\
processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
physical id\t: 0
siblings\t: 2
core id\t\t: 0
cpu cores\t: 1
flags\t\t: fpu vme sse2 avx512f

processor\t: 1
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu vme sse2 avx512f

processor\t: 2
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
physical id\t: 1
core id\t\t: 0
flags\t\t: fpu vme sse2 avx512f

processor\t: 3
model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz
physical id\t: 1
core id\t\t: 0
flags\t\t: fpu vme sse2 avx512f
";

    const DPKG_STATUS: &str = "\
Package: bash
Essential: yes
Status: install ok installed
Priority: required
Architecture: amd64
Version: 5.2.15-2+b2
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter.
 .
 Package: not-a-package
Status: install ok installed

Package: dpkg
Status: install ok installed
Architecture: amd64
Version: 1.21.22

Package: old-tool
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0-1

Package: half
Status: install reinstreq half-installed
Architecture: amd64
Version: 2.0-1

Package: held-driver
Status: hold ok installed
Architecture: amd64
Version: 1:535.104.05-1

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u4

Package: libc6
Status: install ok installed
Architecture: i386
Multi-Arch: same
Version: 2.36-9+deb12u4

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2024a-0+deb12u1
";

    fn package(version: &str, arch: &str) -> Package {
        Package {
            version: version.to_string(),
            arch: arch.to_string(),
        }
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    /// A two-socket node with a SATA SSD, an NVMe disk, an Ethernet and an InfiniBand NIC, one
    /// NVIDIA GPU, Debian 12 and a Lustre scratch.
    fn node() -> FakeTree {
        let tree = FakeTree::new();
        tree.write("proc/cpuinfo", CPUINFO);
        tree.write(
            "proc/meminfo",
            "MemTotal:       16318480 kB\nMemFree:         1000000 kB\n",
        );
        for (name, sectors, rotational, model) in [
            ("sda", "1875385008", "0", Some("SAMSUNG MZ7L3960HCJR    \n")),
            ("nvme0n1", "7501476528", "0", None),
            ("sdb", "23437770752", "1", Some("ST12000NM0008\n")),
            ("loop0", "1000", "0", None),
            ("dm-0", "1000", "0", None),
            ("md127", "1000", "0", None),
            ("zram0", "1000", "0", None),
        ] {
            tree.write(&format!("sys/block/{name}/size"), &format!("{sectors}\n"));
            tree.write(
                &format!("sys/block/{name}/queue/rotational"),
                &format!("{rotational}\n"),
            );
            if let Some(model) = model {
                tree.write(&format!("sys/block/{name}/device/model"), model);
            }
        }
        for (name, mac, speed, device) in [
            ("eth0", "0C:C4:7A:00:00:01\n", Some("25000\n"), true),
            ("ib0", "80:00:02:08:fe:80\n", Some("-1\n"), true),
            ("eno2", "0c:c4:7a:00:00:02\n", None, true),
            ("lo", "00:00:00:00:00:00\n", None, false),
            ("br0", "0c:c4:7a:00:00:01\n", Some("25000\n"), false),
        ] {
            tree.write(&format!("sys/class/net/{name}/address"), mac);
            if let Some(speed) = speed {
                tree.write(&format!("sys/class/net/{name}/speed"), speed);
            }
            if device {
                tree.mkdir(&format!("sys/class/net/{name}/device"));
            }
        }
        for (slot, class, vendor, device, driver) in [
            (
                "0000:41:00.0",
                "0x030200",
                "0x10de",
                "0x20B5",
                Some("nvidia"),
            ),
            ("0000:03:00.0", "0x030000", "0x1a03", "0x2000", None),
            ("0000:00:1f.2", "0x010601", "0x8086", "0xa352", Some("ahci")),
        ] {
            let dir = format!("sys/bus/pci/devices/{slot}");
            tree.write(&format!("{dir}/class"), &format!("{class}\n"));
            tree.write(&format!("{dir}/vendor"), &format!("{vendor}\n"));
            tree.write(&format!("{dir}/device"), &format!("{device}\n"));
            if let Some(driver) = driver {
                symlink(
                    format!("../../../bus/pci/drivers/{driver}"),
                    tree.path().join(&dir).join("driver"),
                )
                .unwrap();
            }
        }
        tree.write(
            "proc/driver/nvidia/version",
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n",
        );
        for (name, value) in [
            ("bios_vendor", "American Megatrends International, LLC.\n"),
            ("bios_version", "2.4\n"),
            ("bios_date", "06/15/2023\n"),
            ("board_vendor", "Supermicro\n"),
            ("board_name", "X11DPi-N\n"),
            ("product_name", "SYS-1029P-WTR\n"),
            ("sys_vendor", "Supermicro\n"),
            ("product_serial", "S123456\n"),
        ] {
            tree.write(&format!("sys/class/dmi/id/{name}"), value);
        }
        tree.write(
            "usr/lib/os-release",
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n",
        );
        tree.mkdir("etc");
        symlink("../usr/lib/os-release", tree.path().join("etc/os-release")).unwrap();
        tree.write("proc/sys/kernel/osrelease", "6.1.0-18-amd64\n");
        tree.write("var/lib/dpkg/status", DPKG_STATUS);
        tree.write(
            "proc/self/mounts",
            "\
sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/sda2 / ext4 rw,relatime 0 0
tmpfs /run tmpfs rw,nosuid,nodev,size=3263700k,mode=755 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw 0 0
/dev/nvme0n1p1 /local\\040scratch xfs rw 0 0
10.0.0.1@o2ib:/scratch /scratch lustre rw 0 0
/dev/sdb1 /data ext4 rw 0 0
nfs:/data /data nfs4 rw 0 0
",
        );
        tree.write("etc/slurm/slurm.conf", "ClusterName=test\n");
        tree
    }

    fn watch() -> Vec<PathBuf> {
        vec![
            PathBuf::from("/etc/slurm/slurm.conf"),
            PathBuf::from("/etc/munge/munge.key"),
        ]
    }

    #[test]
    fn collects_every_facet_of_a_fake_node() {
        let tree = node();
        let inv = collect(tree.path(), &watch());
        assert_eq!(
            inv.cpu,
            Cpu {
                model: some("Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz"),
                sockets: Some(2),
                cores: Some(2),
                threads: Some(4),
                flags_digest: Some(flags_digest(["avx512f", "fpu", "sse2", "vme"])),
            }
        );
        assert_eq!(inv.memory_bytes, Some(16_318_480 * 1024));
        assert_eq!(
            inv.disks,
            [
                Disk {
                    name: "nvme0n1".into(),
                    size_bytes: Some(7_501_476_528 * 512),
                    rotational: Some(false),
                    model: None,
                },
                Disk {
                    name: "sda".into(),
                    size_bytes: Some(1_875_385_008 * 512),
                    rotational: Some(false),
                    model: some("SAMSUNG MZ7L3960HCJR"),
                },
                Disk {
                    name: "sdb".into(),
                    size_bytes: Some(23_437_770_752 * 512),
                    rotational: Some(true),
                    model: some("ST12000NM0008"),
                },
            ]
        );
        assert_eq!(
            inv.nics,
            [
                Nic {
                    name: "eno2".into(),
                    mac: some("0c:c4:7a:00:00:02"),
                    speed_mbps: None,
                },
                Nic {
                    name: "eth0".into(),
                    mac: some("0c:c4:7a:00:00:01"),
                    speed_mbps: Some(25_000),
                },
                Nic {
                    name: "ib0".into(),
                    mac: some("80:00:02:08:fe:80"),
                    speed_mbps: None,
                },
            ]
        );
        assert_eq!(
            inv.gpus,
            [
                Gpu {
                    pci_slot: "0000:03:00.0".into(),
                    vendor_id: some("1a03"),
                    device_id: some("2000"),
                    driver: None,
                },
                Gpu {
                    pci_slot: "0000:41:00.0".into(),
                    vendor_id: some("10de"),
                    device_id: some("20b5"),
                    driver: some("nvidia"),
                },
            ]
        );
        assert_eq!(inv.nvidia_driver, some("535.104.05"));
        assert_eq!(
            inv.firmware,
            Firmware {
                bios_vendor: some("American Megatrends International, LLC."),
                bios_version: some("2.4"),
                bios_date: some("06/15/2023"),
                board_vendor: some("Supermicro"),
                board_name: some("X11DPi-N"),
                product_name: some("SYS-1029P-WTR"),
                sys_vendor: some("Supermicro"),
            }
        );
        assert_eq!(
            inv.os,
            Os {
                id: some("debian"),
                version_id: some("12"),
                pretty_name: some("Debian GNU/Linux 12 (bookworm)"),
            }
        );
        assert_eq!(inv.kernel, some("6.1.0-18-amd64"));
        assert_eq!(inv.package_manager, some("dpkg"));
        assert_eq!(
            inv.packages,
            BTreeMap::from([
                ("bash".to_string(), package("5.2.15-2+b2", "amd64")),
                ("dpkg".to_string(), package("1.21.22", "amd64")),
                (
                    "held-driver".to_string(),
                    package("1:535.104.05-1", "amd64")
                ),
                ("libc6".to_string(), package("2.36-9+deb12u4", "amd64")),
                ("libc6:i386".to_string(), package("2.36-9+deb12u4", "i386")),
                ("tzdata".to_string(), package("2024a-0+deb12u1", "all")),
            ])
        );
        let mount = |target: &str, source: &str, fstype: &str| Mount {
            target: target.into(),
            source: source.into(),
            fstype: fstype.into(),
        };
        assert_eq!(
            inv.mounts,
            [
                mount("/", "/dev/sda2", "ext4"),
                mount("/data", "nfs:/data", "nfs4"),
                mount("/local scratch", "/dev/nvme0n1p1", "xfs"),
                mount("/scratch", "10.0.0.1@o2ib:/scratch", "lustre"),
                mount("/tmp", "tmpfs", "tmpfs"),
            ]
        );
        assert_eq!(
            inv.files,
            BTreeMap::from([
                ("/etc/munge/munge.key".to_string(), None),
                (
                    "/etc/slurm/slurm.conf".to_string(),
                    // sha256sum of "ClusterName=test\n"
                    some("6abd4cf057e7120a04ebc6891bc81281d92843cc0fa1c209d1f0bd325dede69a"),
                ),
            ])
        );
    }

    #[test]
    fn an_empty_root_gives_an_empty_inventory() {
        let tree = FakeTree::new();
        let inv = collect(tree.path(), &[PathBuf::from("/etc/hosts")]);
        assert_eq!(
            inv,
            Inventory {
                files: BTreeMap::from([("/etc/hosts".to_string(), None)]),
                ..Inventory::default()
            }
        );
    }

    #[test]
    fn a_missing_dmi_directory_leaves_only_the_firmware_empty() {
        let tree = node();
        tree.remove("sys/class/dmi");
        let inv = collect(tree.path(), &[]);
        assert_eq!(inv.firmware, Firmware::default());
        assert_eq!(inv.kernel, some("6.1.0-18-amd64"));
        assert_eq!(inv.disks.len(), 3);
    }

    #[test]
    fn garbled_files_give_unknown_fields_not_errors() {
        let cpu = parse_cpuinfo("processor\nmodel name: \n\u{0}\u{ff}::::\ncore id: x\nflags\n");
        assert_eq!(
            cpu,
            Cpu {
                model: None,
                sockets: None,
                cores: Some(1),
                threads: None,
                flags_digest: None,
            }
        );
        assert_eq!(parse_cpuinfo(""), Cpu::default());
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 18446744073709551615 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 1 MB\n"), None);
        assert_eq!(parse_nvidia_version("NVRM version: garbage\n"), None);
        assert_eq!(parse_nvidia_version(""), None);
        assert_eq!(
            parse_os_release("ID\n=\"\nPRETTY_NAME=\"\\"),
            Os {
                pretty_name: some("\"\\"),
                ..Os::default()
            }
        );
        assert!(parse_dpkg_status("Package\n\n:\nStatus: install\nVersion:\n").is_empty());
        assert!(parse_mounts("one two\n\n").is_empty());

        // The same garbage in a whole tree: the rest is still collected.
        let tree = node();
        tree.write("proc/cpuinfo", "\u{1}\u{2}garbage\nprocessor : 0\n");
        tree.write("proc/meminfo", "nonsense");
        tree.write("sys/block/sda/size", "-5\n");
        tree.write("sys/block/sda/queue/rotational", "maybe\n");
        tree.write("sys/class/net/eth0/speed", "fast\n");
        let mut bad = vec![0xffu8, 0xfe];
        bad.extend_from_slice(b"\nPackage: x\n");
        std::fs::write(tree.path().join("var/lib/dpkg/status"), bad).unwrap();
        let inv = collect(tree.path(), &[]);
        assert_eq!(inv.cpu.threads, Some(1));
        assert_eq!(inv.cpu.model, None);
        assert_eq!(inv.memory_bytes, None);
        let sda = inv.disks.iter().find(|d| d.name == "sda").unwrap();
        assert_eq!((sda.size_bytes, sda.rotational), (None, None));
        let eth0 = inv.nics.iter().find(|n| n.name == "eth0").unwrap();
        assert_eq!(eth0.speed_mbps, None);
        assert_eq!(inv.package_manager, some("dpkg"));
        assert!(inv.packages.is_empty());
        assert_eq!(inv.kernel, some("6.1.0-18-amd64"));
    }

    #[test]
    fn cores_come_from_cpu_cores_when_no_core_id_is_written() {
        let cpu = parse_cpuinfo(
            "processor : 0\nphysical id : 0\ncpu cores : 8\n\nprocessor : 1\nphysical id : 0\n\
             cpu cores : 8\n\nprocessor : 2\nphysical id : 1\ncpu cores : 8\n",
        );
        assert_eq!(
            (cpu.sockets, cpu.cores, cpu.threads),
            (Some(2), Some(16), Some(3))
        );
    }

    #[test]
    fn arm_cpuinfo_has_threads_and_features_only() {
        let cpu = parse_cpuinfo(
            "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd crc32\nCPU part\t: 0xd0c\n\n\
             processor\t: 1\nFeatures\t: fp asimd crc32\n",
        );
        assert_eq!(
            cpu,
            Cpu {
                model: None,
                sockets: None,
                cores: None,
                threads: Some(2),
                flags_digest: Some(flags_digest(["crc32", "asimd", "fp"])),
            }
        );
    }

    #[test]
    fn foreign_architectures_are_named_against_the_most_common_without_dpkg() {
        let status = "\
Package: a\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1\n\n\
Package: b\nStatus: install ok installed\nArchitecture: arm64\nVersion: 1\n\n\
Package: c\nStatus: install ok installed\nArchitecture: armhf\nVersion: 1\n\n\
Package: d\nStatus: install ok installed\nArchitecture: all\nVersion: 1\n";
        let names: Vec<String> = parse_dpkg_status(status).into_keys().collect();
        assert_eq!(names, ["a", "b", "c:armhf", "d"]);
    }

    #[test]
    fn a_large_dpkg_status_parses_in_one_fast_pass() {
        // About 40 MB: 50,000 packages with long descriptions and conffiles.
        let mut status = String::new();
        let description =
            " A line of a long description that dpkg keeps for every package.\n".repeat(10);
        for i in 0..50_000 {
            let state = if i % 10 == 0 {
                "deinstall ok config-files"
            } else {
                "install ok installed"
            };
            status.push_str(&format!(
                "Package: pkg{i}\nStatus: {state}\nPriority: optional\nArchitecture: amd64\n\
                 Version: {i}.0-1\nConffiles:\n /etc/pkg{i}.conf 0123456789abcdef\n\
                 Description: package {i}\n{description}\n"
            ));
        }
        assert!(status.len() > 35_000_000, "{}", status.len());
        let start = std::time::Instant::now();
        let packages = parse_dpkg_status(&status);
        let took = start.elapsed();
        assert_eq!(packages.len(), 45_000);
        assert_eq!(packages["pkg49999"], package("49999.0-1", "amd64"));
        println!(
            "parsed {} MB of dpkg status in {took:?}",
            status.len() >> 20
        );
        // Generous: a shared test machine; the real figure is tens of milliseconds.
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn watched_files_are_hashed_only_when_regular_and_bounded() {
        let tree = FakeTree::new();
        tree.write("etc/empty", "");
        tree.mkdir("etc/dir");
        nix::unistd::mkfifo(
            &tree.path().join("etc/fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let big = tree.path().join("etc/big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(MAX_WATCHED_BYTES + 1)
            .unwrap();
        let inv = collect(
            tree.path(),
            &[
                PathBuf::from("/etc/empty"),
                PathBuf::from("/etc/dir"),
                PathBuf::from("/etc/fifo"),
                PathBuf::from("/etc/big"),
                PathBuf::from("/etc/none"),
            ],
        );
        assert_eq!(
            inv.files,
            BTreeMap::from([
                ("/etc/big".to_string(), None),
                ("/etc/dir".to_string(), None),
                // sha256 of nothing
                (
                    "/etc/empty".to_string(),
                    some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
                ),
                ("/etc/fifo".to_string(), None),
                ("/etc/none".to_string(), None),
            ])
        );
    }

    #[test]
    fn collects_this_machine() {
        let start = std::time::Instant::now();
        let inv = collect(Path::new("/"), &[PathBuf::from("/etc/hostname")]);
        let took = start.elapsed();
        println!(
            "collect(/) took {took:?}: {} packages, {} disks, {} nics, {} mounts",
            inv.packages.len(),
            inv.disks.len(),
            inv.nics.len(),
            inv.mounts.len()
        );
        assert!(inv.kernel.is_some_and(|k| !k.is_empty()));
        assert!(inv.memory_bytes.is_some_and(|m| m > 0));
        assert!(inv.cpu.threads.is_some_and(|t| t > 0));
        // This machine runs Debian.
        assert_eq!(inv.package_manager.as_deref(), Some("dpkg"));
        assert!(inv
            .packages
            .get("bash")
            .is_some_and(|p| !p.version.is_empty()));
        assert!(
            inv.mounts.iter().any(|m| m.target == "/"),
            "{:?}",
            inv.mounts
        );
        assert!(inv.files["/etc/hostname"].is_some());
    }
}

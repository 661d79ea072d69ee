//! I/O per block device from `/proc/diskstats` (Documentation/admin-guide/iostats.rst): bytes
//! and operations read and written, and time spent doing I/O, as counters since the agent started.
//!
//! Only whole devices are reported (see [`is_whole_disk`]): partitions would count the same I/O a
//! second time. Loop, ram and zram devices are skipped: they are memory or files that the real
//! disks under them already account for. Stacked devices (md, dm-*) are kept because operators
//! watch their arrays and volumes; summing every device therefore counts a RAID's or an LVM
//! volume's I/O on both layers, as the kernel itself does.

use super::counter::forget_gone;
use super::{series, CollectError, Collector, Cumulative, SourceFile};
use banyan_protocol::metric::MetricSet;
use std::collections::HashMap;
use std::path::Path;

/// `/proc/diskstats` counts sectors of 512 bytes whatever the device's own sector size.
const SECTOR_BYTES: u64 = 512;

/// Devices gone from `/proc/diskstats` whose counts are remembered.
const MAX_GONE: usize = 64;

/// The counter families, in the order of [`DiskLine::values`].
pub const COUNTERS: [&str; 5] = [
    "banyan_node_disk_read_bytes_total",
    "banyan_node_disk_written_bytes_total",
    "banyan_node_disk_reads_total",
    "banyan_node_disk_writes_total",
    "banyan_node_disk_io_seconds_total",
];

/// One device's line: sectors read, sectors written, reads completed, writes completed, and
/// milliseconds spent doing I/O (the kernel's units, in [`COUNTERS`] order).
#[derive(Debug, PartialEq)]
pub struct DiskLine<'a> {
    pub device: &'a str,
    pub values: [u64; 5],
}

/// Parses one line: `major minor name` and at least 11 numbers (14 in all, more on newer
/// kernels: discards since 4.18, flushes since 5.5, which are not used here).
pub fn parse_line(line: &str) -> Result<DiskLine<'_>, String> {
    let mut fields = line.split_ascii_whitespace();
    let (Some(_major), Some(_minor), Some(device)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(format!("too few fields on line {line:?}"));
    };
    let mut stats = [0u64; 11];
    let mut count = 0;
    for (slot, field) in stats.iter_mut().zip(fields) {
        *slot = field
            .parse()
            .map_err(|_| format!("bad number {field:?} on line {line:?}"))?;
        count += 1;
    }
    if count < stats.len() {
        return Err(format!("too few fields on line {line:?}"));
    }
    // reads completed 0, sectors read 2, writes completed 4, sectors written 6, ms doing I/O 9.
    Ok(DiskLine {
        device,
        values: [stats[2], stats[6], stats[0], stats[4], stats[9]],
    })
}

/// Whether `name` is a whole disk worth reporting: `sda`, `vdb`, `xvdc`, `hda`, `nvme0n1`,
/// `mmcblk0`, `md0`, `dm-3`; not partitions (`sda1`, `nvme0n1p2`, `md0p1`, `mmcblk0p1`), not
/// NVMe multipath's hidden per-path devices (`nvme0c1n1`, whose I/O `nvme0n1` already shows), not
/// loop, ram or zram devices.
pub fn is_whole_disk(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = name.strip_prefix("nvme") {
        return rest
            .split_once('n')
            .is_some_and(|(ctrl, ns)| digits(ctrl) && digits(ns));
    }
    for prefix in ["sd", "vd", "xvd", "hd"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase());
        }
    }
    for prefix in ["md", "dm-", "mmcblk"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return digits(rest);
        }
    }
    false
}

struct Device {
    names: [String; 5],
    counters: [Cumulative; 5],
    seen_wave: u64,
}

pub struct Disk {
    file: SourceFile,
    devices: HashMap<String, Device>,
    wave: u64,
}

impl Disk {
    pub fn new(root: &Path) -> Disk {
        Disk {
            file: SourceFile::new(root.join("proc/diskstats")),
            devices: HashMap::new(),
            wave: 0,
        }
    }
}

const DESCRIBE: &[(&str, &str)] = &[
    (
        "banyan_node_disk_read_bytes_total",
        "Bytes read per whole disk since the agent started.",
    ),
    (
        "banyan_node_disk_written_bytes_total",
        "Bytes written per whole disk since the agent started.",
    ),
    (
        "banyan_node_disk_reads_total",
        "Reads completed per whole disk since the agent started.",
    ),
    (
        "banyan_node_disk_writes_total",
        "Writes completed per whole disk since the agent started.",
    ),
    (
        "banyan_node_disk_io_seconds_total",
        "Time the disk was busy doing I/O since the agent started.",
    ),
];

impl Collector for Disk {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn describe(&self) -> &'static [(&'static str, &'static str)] {
        DESCRIBE
    }

    fn collect(&mut self, _now_ms: u64, out: &mut MetricSet) -> Result<(), CollectError> {
        self.wave += 1;
        let (text, path) = self.file.read()?;
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            let line = parse_line(line).map_err(|what| CollectError::parse(path, what))?;
            if !is_whole_disk(line.device) {
                continue;
            }
            if !self.devices.contains_key(line.device) {
                let label = [("device", line.device)];
                let device = Device {
                    names: COUNTERS.map(|family| series(family, &label)),
                    counters: Default::default(),
                    seen_wave: 0,
                };
                self.devices.insert(line.device.to_string(), device);
            }
            let Some(device) = self.devices.get_mut(line.device) else {
                continue;
            };
            device.seen_wave = self.wave;
            for (i, ((name, counter), raw)) in device
                .names
                .iter()
                .zip(&mut device.counters)
                .zip(line.values)
                .enumerate()
            {
                let total = counter.update(raw) as f64;
                let value = match i {
                    0 | 1 => total * SECTOR_BYTES as f64,
                    4 => total / 1000.0,
                    _ => total,
                };
                out.set_counter(name, value);
            }
        }
        forget_gone(&mut self.devices, self.wave, MAX_GONE, |d| d.seen_wave);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_tree::FakeTree;
    use super::*;

    const DISKSTATS: &str = "\
   7       0 loop0 12 0 24 1 0 0 0 0 0 4 1 0 0 0 0 0 0
   8       0 sda 350589 15536 15901970 4637459 33329 56938 34053400 198749 31 128508 4868579 23204 45 16854952 32308 1368 62
   8       1 sda1 350000 15536 15900000 4637000 33000 56938 34050000 198700 0 128000 4868000 0 0 0 0
 259       0 nvme0n1 10 0 80 1 20 0 160 2 0 3 3
 259       1 nvme0n1p1 10 0 80 1 20 0 160 2 0 3 3
 253       0 dm-0 5 0 40 0 6 0 48 0 0 1 1
 251       0 zram0 4 0 32 0 0 0 0 0 0 0 0
";

    #[test]
    fn parses_diskstats_lines() {
        let lines: Vec<_> = DISKSTATS.lines().map(|l| parse_line(l).unwrap()).collect();
        assert_eq!(
            lines[1],
            DiskLine {
                device: "sda",
                values: [15901970, 34053400, 350589, 33329, 128508]
            }
        );
        // The 14-field format of older kernels.
        assert_eq!(lines[3].values, [80, 160, 10, 20, 3]);
        assert!(parse_line("8 0 sda 1 2 3").is_err());
        assert!(parse_line("8 0 sda 1 2 3 4 5 6 7 8 9 x 11").is_err());
    }

    #[test]
    fn keeps_whole_disks_only() {
        for name in [
            "sda", "sdaa", "vdb", "xvdc", "hda", "nvme0n1", "nvme12n3", "md0", "md127", "dm-3",
            "mmcblk0",
        ] {
            assert!(is_whole_disk(name), "{name}");
        }
        for name in [
            "sda1",
            "vdb2",
            "nvme0n1p1",
            "nvme0c1n1",
            "md0p1",
            "mmcblk0p1",
            "mmcblk0boot0",
            "loop0",
            "ram0",
            "zram0",
            "sr0",
            "dm-",
            "nvme0",
            "sd",
        ] {
            assert!(!is_whole_disk(name), "{name}");
        }
    }

    #[test]
    fn counts_bytes_ops_and_seconds_since_start() {
        let tree = FakeTree::new();
        tree.write("proc/diskstats", DISKSTATS);
        let mut disk = Disk::new(tree.path());
        let mut first = MetricSet::new();
        disk.collect(1_000, &mut first).unwrap();
        assert_eq!(
            first.counter("banyan_node_disk_read_bytes_total{device=\"sda\"}"),
            0.0
        );
        let mut devices: Vec<_> = first
            .values
            .keys()
            .filter_map(|k| k.strip_prefix("banyan_node_disk_reads_total{device=\""))
            .collect();
        devices.sort();
        assert_eq!(devices, ["dm-0\"}", "nvme0n1\"}", "sda\"}"]);

        // sda: +10 reads of 80 sectors, +2 writes of 16 sectors, +1500 ms busy. Then nvme0n1 is
        // reset (hot-swapped): its counters restart from small values.
        tree.write(
            "proc/diskstats",
            "   8       0 sda 350599 15536 15902050 4637459 33331 56938 34053416 198749 31 130008 4868579\n\
             259       0 nvme0n1 2 0 16 1 1 0 8 2 0 1 3\n",
        );
        let mut second = MetricSet::new();
        disk.collect(2_000, &mut second).unwrap();
        assert_eq!(
            second.counter("banyan_node_disk_reads_total{device=\"sda\"}"),
            10.0
        );
        assert_eq!(
            second.counter("banyan_node_disk_read_bytes_total{device=\"sda\"}"),
            80.0 * 512.0
        );
        assert_eq!(
            second.counter("banyan_node_disk_writes_total{device=\"sda\"}"),
            2.0
        );
        assert_eq!(
            second.counter("banyan_node_disk_written_bytes_total{device=\"sda\"}"),
            16.0 * 512.0
        );
        assert_eq!(
            second.counter("banyan_node_disk_io_seconds_total{device=\"sda\"}"),
            1.5
        );
        assert_eq!(
            second.counter("banyan_node_disk_reads_total{device=\"nvme0n1\"}"),
            2.0
        );
        assert_eq!(
            second.counter("banyan_node_disk_read_bytes_total{device=\"nvme0n1\"}"),
            16.0 * 512.0
        );
        assert!(second
            .get("banyan_node_disk_reads_total{device=\"dm-0\"}")
            .is_none());
    }

    #[test]
    fn live_devices_are_the_whole_disks_of_proc_diskstats() {
        let mut set = MetricSet::new();
        Disk::new(Path::new("/")).collect(1, &mut set).unwrap();
        let text = std::fs::read_to_string("/proc/diskstats").unwrap();
        let expected = text
            .lines()
            .filter(|l| is_whole_disk(l.split_whitespace().nth(2).unwrap_or("")))
            .count();
        let reported = set
            .values
            .keys()
            .filter(|k| k.starts_with("banyan_node_disk_reads_total{"))
            .count();
        assert_eq!(reported, expected);
        assert!(set
            .values
            .values()
            .all(|v| matches!(v, banyan_protocol::metric::Value::Counter(c) if c.value == 0.0)));
    }
}

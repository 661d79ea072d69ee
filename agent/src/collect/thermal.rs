//! Temperatures where the kernel exposes them: hwmon sensors
//! (`/sys/class/hwmon/hwmon*/temp*_input`, Documentation/hwmon/sysfs-interface.rst) and thermal
//! zones (`/sys/class/thermal/thermal_zone*/temp`), both in millidegrees Celsius.
//!
//! A sensor is named `<hwmon name>_<label>` (the driver's `temp*_label`, else `tempN`); when two
//! devices give the same name (two sockets' `coretemp_Core 0`), the hwmon directory is put in
//! between (`coretemp_hwmon3_Core 0`). A thermal zone is `<type>_zone<N>`, and is skipped when an
//! hwmon device of the same name already shows it (the kernel mirrors zones into hwmon).
//! Virtual machines and containers often have neither: then nothing is emitted, which is no error.
//!
//! Sensors are found by listing directories, which is done again every [`RESCAN_MS`] rather
//! than every wave; between scans each sensor file stays open.

use super::{series, CollectError, Collector, SourceFile};
use banyan_protocol::metric::MetricSet;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// How often the sensor directories are listed again.
pub const RESCAN_MS: u64 = 60_000;

const FAMILY: &str = "banyan_node_temperature_celsius";

struct Sensor {
    file: SourceFile,
    series: String,
}

/// A sensor found by a scan: where it is and what it is called.
#[derive(Debug, PartialEq)]
struct Found {
    path: PathBuf,
    source: String,
    dir: String,
    label: String,
}

pub struct Thermal {
    root: PathBuf,
    sensors: Vec<Sensor>,
    scanned_ms: Option<u64>,
}

impl Thermal {
    pub fn new(root: &Path) -> Thermal {
        Thermal {
            root: root.to_path_buf(),
            sensors: Vec::new(),
            scanned_ms: None,
        }
    }

    fn rescan(&mut self) -> Result<(), CollectError> {
        let found = scan(&self.root)?;
        let mut seen = HashSet::new();
        let mut twice = HashSet::new();
        for f in &found {
            let name = (f.source.as_str(), f.label.as_str());
            if !seen.insert(name) {
                twice.insert(name);
            }
        }
        self.sensors = found
            .iter()
            .map(|f| {
                let sensor = if twice.contains(&(f.source.as_str(), f.label.as_str())) {
                    format!("{}_{}_{}", f.source, f.dir, f.label)
                } else {
                    format!("{}_{}", f.source, f.label)
                };
                Sensor {
                    file: SourceFile::new(f.path.clone()),
                    series: series(FAMILY, &[("sensor", &sensor)]),
                }
            })
            .collect();
        Ok(())
    }
}

/// The entries of `dir` whose names start with `prefix`, sorted; none when `dir` does not exist.
fn entries(dir: &Path, prefix: &str) -> Result<Vec<String>, CollectError> {
    let list = match std::fs::read_dir(dir) {
        Ok(list) => list,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CollectError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut names: Vec<String> = list
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect();
    // hwmon10 after hwmon9: by length, then by name.
    names.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    Ok(names)
}

/// A small sysfs text attribute, trimmed; `None` when it cannot be read.
fn attribute(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim().to_string())
}

fn scan(root: &Path) -> Result<Vec<Found>, CollectError> {
    let mut found = Vec::new();
    let hwmon = root.join("sys/class/hwmon");
    let mut hwmon_names = HashSet::new();
    for dir in entries(&hwmon, "hwmon")? {
        let base = hwmon.join(&dir);
        let name = attribute(&base.join("name")).unwrap_or_else(|| dir.clone());
        hwmon_names.insert(name.clone());
        // Old drivers keep their attributes in the parent device's directory.
        let mut inputs = temp_inputs(&base)?;
        let mut at = base.clone();
        if inputs.is_empty() {
            at = base.join("device");
            inputs = temp_inputs(&at)?;
        }
        for input in inputs {
            let stem = input.trim_end_matches("_input");
            let label = attribute(&at.join(format!("{stem}_label")))
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| stem.to_string());
            found.push(Found {
                path: at.join(&input),
                source: name.clone(),
                dir: dir.clone(),
                label,
            });
        }
    }
    let thermal = root.join("sys/class/thermal");
    for dir in entries(&thermal, "thermal_zone")? {
        let base = thermal.join(&dir);
        let Some(kind) = attribute(&base.join("type")) else {
            continue;
        };
        // The kernel names a zone's hwmon mirror after its type, with '-' made '_'.
        if hwmon_names.contains(&kind) || hwmon_names.contains(&kind.replace('-', "_")) {
            continue;
        }
        let zone = dir.trim_start_matches("thermal_");
        found.push(Found {
            path: base.join("temp"),
            source: kind,
            dir: dir.clone(),
            label: zone.to_string(),
        });
    }
    Ok(found)
}

/// `temp*_input` files in `dir`, sorted.
fn temp_inputs(dir: &Path) -> Result<Vec<String>, CollectError> {
    let mut inputs = entries(dir, "temp")?;
    inputs.retain(|name| name.ends_with("_input"));
    Ok(inputs)
}

/// Millidegrees Celsius as the kernel writes them.
pub fn parse_millidegrees(text: &str) -> Option<f64> {
    text.trim().parse::<i64>().ok().map(|m| m as f64 / 1000.0)
}

const DESCRIBE: &[(&str, &str)] = &[(
    FAMILY,
    "Temperature per hwmon sensor and thermal zone, in degrees Celsius.",
)];

impl Collector for Thermal {
    fn name(&self) -> &'static str {
        "thermal"
    }

    fn describe(&self) -> &'static [(&'static str, &'static str)] {
        DESCRIBE
    }

    fn collect(&mut self, now_ms: u64, out: &mut MetricSet) -> Result<(), CollectError> {
        let due = self
            .scanned_ms
            .is_none_or(|at| now_ms < at || now_ms - at >= RESCAN_MS);
        if due {
            self.scanned_ms = Some(now_ms);
            self.rescan()?;
        }
        for sensor in &mut self.sensors {
            // A sensor that cannot be read now (asleep, unplugged, EIO from its bus) is left out
            // of this wave; the next scan drops it if it is gone.
            let Ok((text, _)) = sensor.file.read() else {
                continue;
            };
            if let Some(celsius) = parse_millidegrees(&text) {
                out.set_gauge(&sensor.series, celsius, now_ms);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake_tree::FakeTree;
    use super::*;
    use banyan_protocol::metric::Value;

    fn temps(set: &MetricSet) -> Vec<(String, f64)> {
        set.values
            .iter()
            .filter_map(|(k, v)| match v {
                Value::Gauge(g) => Some((k.strip_prefix(FAMILY)?.to_string(), g.last)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn parses_millidegrees() {
        assert_eq!(parse_millidegrees("45500\n"), Some(45.5));
        assert_eq!(parse_millidegrees("-2000"), Some(-2.0));
        assert_eq!(parse_millidegrees("hot"), None);
    }

    #[test]
    fn names_hwmon_sensors_and_zones() {
        let tree = FakeTree::new();
        // Two sockets' coretemp, same labels.
        for (dir, base) in [("hwmon0", 40_000), ("hwmon1", 50_000)] {
            tree.write(&format!("sys/class/hwmon/{dir}/name"), "coretemp\n");
            tree.write(
                &format!("sys/class/hwmon/{dir}/temp1_input"),
                &format!("{base}\n"),
            );
            tree.write(&format!("sys/class/hwmon/{dir}/temp1_label"), "Core 0\n");
        }
        tree.write("sys/class/hwmon/hwmon2/name", "nvme\n");
        tree.write("sys/class/hwmon/hwmon2/temp1_input", "37850\n");
        tree.write("sys/class/hwmon/hwmon2/temp1_label", "Composite\n");
        tree.write("sys/class/hwmon/hwmon2/temp2_input", "39850\n");
        tree.write("sys/class/hwmon/hwmon2/temp2_crit", "84850\n");
        // An old driver with its attributes under device/.
        tree.write("sys/class/hwmon/hwmon10/name", "w83627ehf\n");
        tree.write("sys/class/hwmon/hwmon10/device/temp3_input", "-1500\n");
        // A zone mirrored by hwmon (type acpitz), and one that is not.
        tree.write("sys/class/hwmon/hwmon3/name", "acpitz\n");
        tree.write("sys/class/hwmon/hwmon3/temp1_input", "27800\n");
        tree.write("sys/class/thermal/thermal_zone0/type", "acpitz\n");
        tree.write("sys/class/thermal/thermal_zone0/temp", "27800\n");
        tree.write("sys/class/thermal/thermal_zone1/type", "x86_pkg_temp\n");
        tree.write("sys/class/thermal/thermal_zone1/temp", "52000\n");
        tree.mkdir("sys/class/thermal/cooling_device0");

        let mut thermal = Thermal::new(tree.path());
        let mut set = MetricSet::new();
        thermal.collect(1_000, &mut set).unwrap();
        let mut got = temps(&set);
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let want: Vec<(String, f64)> = [
            ("acpitz_temp1", 27.8),
            ("coretemp_hwmon0_Core 0", 40.0),
            ("coretemp_hwmon1_Core 0", 50.0),
            ("nvme_Composite", 37.85),
            ("nvme_temp2", 39.85),
            ("w83627ehf_temp3", -1.5),
            ("x86_pkg_temp_zone1", 52.0),
        ]
        .iter()
        .map(|(s, v)| (format!("{{sensor=\"{s}\"}}"), *v))
        .collect();
        assert_eq!(got, want);

        // Values are re-read every wave; the directories only every RESCAN_MS.
        tree.write("sys/class/hwmon/hwmon2/temp1_input", "41000\n");
        tree.write("sys/class/hwmon/hwmon4/name", "k10temp\n");
        tree.write("sys/class/hwmon/hwmon4/temp1_input", "61000\n");
        let mut set = MetricSet::new();
        thermal.collect(2_000, &mut set).unwrap();
        assert_eq!(
            temps(&set)
                .iter()
                .find(|(k, _)| k.contains("nvme_Composite"))
                .map(|t| t.1),
            Some(41.0)
        );
        assert_eq!(temps(&set).len(), 7);
        let mut set = MetricSet::new();
        thermal.collect(1_000 + RESCAN_MS, &mut set).unwrap();
        assert_eq!(temps(&set).len(), 8);
    }

    #[test]
    fn no_sensors_is_not_an_error() {
        let tree = FakeTree::new();
        let mut set = MetricSet::new();
        Thermal::new(tree.path()).collect(1, &mut set).unwrap();
        assert!(set.is_empty());
    }

    #[test]
    fn live_sensors_read_like_the_kernel() {
        let mut set = MetricSet::new();
        let mut thermal = Thermal::new(Path::new("/"));
        thermal.collect(1, &mut set).unwrap();
        // Where there are sensors, each reading is a plausible temperature.
        for (name, celsius) in temps(&set) {
            assert!((-60.0..=200.0).contains(&celsius), "{name}: {celsius}");
        }
    }
}

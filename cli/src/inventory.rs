//! `banyan inventory` and `banyan drift`: the renderings of `GET /inventory` and `GET /drift`,
//! each tested on canned JSON.
//!
//! Drift is printed as `clubak -b` prints outputs: each group of nodes with one profile under its
//! folded node set, the majority first, then what every other group has that the majority has not.

use crate::escape::one_line;

fn escape(s: &str) -> String {
    one_line(s).into_owned()
}
use crate::table;
use serde_json::Value;
use std::fmt::Write;

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn gib(bytes: u64) -> String {
    let g = bytes as f64 / (1u64 << 30) as f64;
    if g >= 10.0 {
        format!("{g:.0}G")
    } else {
        format!("{g:.1}G")
    }
}

/// The nodes that did not answer or failed, one line each.
fn missing(v: &Value, out: &mut String) -> bool {
    let mut any = false;
    if let Some(names) = v["unreachable"].as_array() {
        let names: Vec<&str> = names.iter().filter_map(Value::as_str).collect();
        if !names.is_empty() {
            let set = banyan_protocol::nodeset::NodeSet::from_names(names.iter().copied());
            let _ = writeln!(out, "{}: unreachable", escape(&set.fold()));
            any = true;
        }
    }
    if let Some(failed) = v["failed"].as_object() {
        for (node, why) in failed {
            let _ = writeln!(out, "{}: failed: {}", escape(node), escape(str_of(why)));
            any = true;
        }
    }
    any
}

/// `GET /inventory`: one line per node, then the nodes that did not answer. The second value
/// says whether every node answered.
pub fn render_inventory(v: &Value) -> (String, bool) {
    let mut t = table::new(&[
        "NODE", "CPU", "S/C/T", "MEMORY", "DISKS", "NICS", "GPUS", "OS", "KERNEL", "PACKAGES",
        "PROFILE",
    ]);
    if let Some(nodes) = v["nodes"].as_object() {
        for (name, n) in nodes {
            let inv = &n["inventory"];
            let cpu = &inv["cpu"];
            let count = |k: &str| cpu[k].as_u64().map_or("?".to_string(), |c| c.to_string());
            let disks: Vec<String> = inv["disks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| match d["size_bytes"].as_u64() {
                    Some(b) => format!("{} {}", str_of(&d["name"]), gib(b)),
                    None => str_of(&d["name"]).to_string(),
                })
                .collect();
            let nics: Vec<String> = inv["nics"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| match d["speed_mbps"].as_u64() {
                    Some(s) => format!("{} {s}M", str_of(&d["name"])),
                    None => str_of(&d["name"]).to_string(),
                })
                .collect();
            let gpus = inv["gpus"].as_array().map_or(0, Vec::len);
            let gpus = match inv["nvidia_driver"].as_str() {
                Some(d) => format!("{gpus} (nvidia {d})"),
                None => gpus.to_string(),
            };
            let os = inv["os"]["pretty_name"]
                .as_str()
                .or(inv["os"]["id"].as_str())
                .unwrap_or("?");
            let packages = inv["packages"].as_object().map_or(0, |p| p.len());
            let row = [
                name.as_str(),
                cpu["model"].as_str().unwrap_or("?"),
                &format!(
                    "{}/{}/{}",
                    count("sockets"),
                    count("cores"),
                    count("threads")
                ),
                &inv["memory_bytes"].as_u64().map_or("?".into(), gib),
                &disks.join(", "),
                &nics.join(", "),
                &gpus,
                os,
                inv["kernel"].as_str().unwrap_or("?"),
                &packages.to_string(),
                short(str_of(&n["digests"]["all"])),
            ];
            t.add_row(row.iter().map(|c| escape(c)).collect::<Vec<_>>());
        }
    }
    let mut out = if t.row_count() == 0 {
        "no inventory\n".to_string()
    } else {
        table::render(&t)
    };
    let all = !missing(v, &mut out);
    (out, all)
}

/// One difference of a group from the majority, as one line (`+` only in the group, `-` only in
/// the majority, `~` changed).
fn difference(d: &Value) -> String {
    let (kind, body) = match d.as_object().and_then(|o| o.iter().next()) {
        Some((k, b)) => (k.as_str(), b),
        None => return format!("? {d}"),
    };
    let either = |side: &Value| -> Option<String> {
        match side {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            // A package: its version, and its architecture.
            other => Some(format!(
                "{} ({})",
                str_of(&other["version"]),
                str_of(&other["arch"])
            )),
        }
    };
    let (what, expected, found) = match kind {
        "package" => (
            format!("package {}", str_of(&body["name"])),
            either(&body["expected"]),
            either(&body["found"]),
        ),
        "file" => (
            format!("file {}", str_of(&body["path"])),
            either(&body["expected"]).map(|h| short(&h).to_string()),
            either(&body["found"]).map(|h| short(&h).to_string()),
        ),
        _ => (
            str_of(&body["field"]).to_string(),
            either(&body["expected"]),
            either(&body["found"]),
        ),
    };
    let line = match (expected, found) {
        (None, Some(f)) => format!("+ {what} {f}"),
        (Some(e), None) => format!("- {what} {e}"),
        (Some(e), Some(f)) => format!("~ {what} {e} -> {f}"),
        (None, None) => format!("~ {what}"),
    };
    escape(&line)
}

/// `GET /drift`: the groups, the majority first, each other one with its differences. The
/// second value says whether the nodes agree (one group) and every one answered.
pub fn render_drift(v: &Value) -> (String, bool) {
    let mut out = String::new();
    let groups = v["groups"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let facet = str_of(&v["facet"]);
    let unknown: Vec<&str> = v["unknown"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    for (i, g) in groups.iter().enumerate() {
        let nodes = g["nodes"].as_array().map_or(0, Vec::len);
        let plural = if nodes == 1 { "" } else { "s" };
        let _ = writeln!(out, "---------------");
        let _ = writeln!(out, "{}", escape(str_of(&g["nodeset"])));
        let what = if i == 0 {
            if groups.len() == 1 {
                format!("{facet}: one profile")
            } else {
                format!("{facet}: the majority")
            }
        } else if unknown.contains(&str_of(&g["digest"])) {
            format!("{facet}: differs; how is unknown (no inventory could be had)")
        } else {
            format!("{facet}: differs from the majority")
        };
        let _ = writeln!(
            out,
            "---------------  ({nodes} node{plural}, profile {}) {what}",
            short(str_of(&g["digest"]))
        );
        for d in g["differences"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  {}", difference(d));
        }
    }
    if groups.is_empty() {
        out.push_str("no node answered\n");
    }
    let any_missing = missing(v, &mut out);
    (out, groups.len() == 1 && !any_missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn drift_prints_the_majority_first_and_each_difference_once() {
        let v = json!({
            "facet": "all",
            "groups": [
                {"digest": "aaaaaaaaaaaaaaaa", "nodes": ["cn1", "cn2", "cn3"], "nodeset": "cn[1-3]", "differences": []},
                {"digest": "bbbbbbbbbbbbbbbb", "nodes": ["cn4"], "nodeset": "cn4", "differences": [
                    {"package": {"name": "cuda-12", "expected": {"version": "12.2", "arch": "amd64"}, "found": {"version": "12.4", "arch": "amd64"}}},
                    {"package": {"name": "htop", "expected": null, "found": {"version": "3.2", "arch": "amd64"}}},
                    {"file": {"path": "/etc/munge/munge.key", "expected": "0123456789abcdef", "found": null}},
                    {"field": {"field": "cpu.model", "expected": "EPYC", "found": "Xeon\u{1b}[2J"}}
                ]}
            ],
            "unknown": [],
            "unreachable": ["cn7", "cn8"],
            "failed": {"cn9": "collecting the inventory failed"}
        });
        let (text, agree) = render_drift(&v);
        assert_eq!(
            text,
            "---------------\ncn[1-3]\n---------------  (3 nodes, profile aaaaaaaaaaaa) all: the majority\n\
             ---------------\ncn4\n---------------  (1 node, profile bbbbbbbbbbbb) all: differs from the majority\n\
             \x20 ~ package cuda-12 12.2 (amd64) -> 12.4 (amd64)\n\
             \x20 + package htop 3.2 (amd64)\n\
             \x20 - file /etc/munge/munge.key 0123456789ab\n\
             \x20 ~ cpu.model EPYC -> Xeon\\u{1b}[2J\n\
             cn[7-8]: unreachable\ncn9: failed: collecting the inventory failed\n"
        );
        assert!(!agree);
    }

    #[test]
    fn one_profile_everywhere_agrees() {
        let v = json!({
            "facet": "packages",
            "groups": [{"digest": "cccccccccccccccc", "nodes": ["a1", "a2"], "nodeset": "a[1-2]", "differences": []}],
            "unknown": [], "unreachable": [], "failed": {}
        });
        let (text, agree) = render_drift(&v);
        assert_eq!(
            text,
            "---------------\na[1-2]\n---------------  (2 nodes, profile cccccccccccc) packages: one profile\n"
        );
        assert!(agree);
    }

    #[test]
    fn a_group_without_an_inventory_says_so() {
        let v = json!({
            "facet": "files",
            "groups": [
                {"digest": "d1", "nodes": ["n1", "n2"], "nodeset": "n[1-2]", "differences": []},
                {"digest": "d2", "nodes": ["n3"], "nodeset": "n3", "differences": []}
            ],
            "unknown": ["d2"], "unreachable": [], "failed": {}
        });
        let (text, agree) = render_drift(&v);
        assert!(
            text.contains("(1 node, profile d2) files: differs; how is unknown"),
            "{text}"
        );
        assert!(!agree);
    }

    #[test]
    fn inventory_is_one_row_per_node() {
        let v = json!({
            "nodes": {"cn1": {
                "digests": {"all": "0123456789abcdef0123", "hardware": "", "packages": "", "files": ""},
                "inventory": {
                    "cpu": {"model": "AMD EPYC 7763", "sockets": 2, "cores": 128, "threads": 256, "flags_digest": null},
                    "memory_bytes": 540_000_000_000u64,
                    "disks": [{"name": "sda", "size_bytes": 960_197_124_096u64, "rotational": false, "model": null}],
                    "nics": [{"name": "eth0", "mac": "0c:c4:7a:00:00:01", "speed_mbps": 25000}],
                    "gpus": [{"pci_slot": "0000:41:00.0", "vendor_id": "10de", "device_id": "20b0", "driver": "nvidia"}],
                    "nvidia_driver": "535.104.05",
                    "firmware": {}, "os": {"id": "debian", "version_id": "12", "pretty_name": "Debian GNU/Linux 12 (bookworm)"},
                    "kernel": "6.1.0-18-amd64", "package_manager": "dpkg",
                    "packages": {"bash": {"version": "5.2.15-2+b2", "arch": "amd64"}},
                    "mounts": [], "files": {}
                }
            }},
            "unreachable": [], "failed": {}
        });
        let (text, all) = render_inventory(&v);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        // Cells in order on the node's line (columns are padded to the widest cell).
        let mut rest = lines[1];
        for cell in [
            "cn1",
            "AMD EPYC 7763",
            "2/128/256",
            "503G",
            "sda 894G",
            "eth0 25000M",
            "1 (nvidia 535.104.05)",
            "Debian GNU/Linux 12 (bookworm)",
            "6.1.0-18-amd64",
            "1",
            "0123456789ab",
        ] {
            let at = rest
                .find(cell)
                .unwrap_or_else(|| panic!("{cell:?} not in order in {:?}", lines[1]));
            rest = &rest[at + cell.len()..];
        }
        assert_eq!(rest.trim(), "");
        assert!(all);
    }
}

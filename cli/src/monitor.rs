//! What the mesh reports, rendered for people: `banyan status`, `topology`, `nodes`, `metrics`,
//! `jobs`, `job`, `profiles`, `alarms` and `ping`. Each function takes the root's JSON answer and
//! returns text; `--json` prints the answer itself.

use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |x| format!("{:.0}%", x * 100.0))
}

fn rate(v: &Value) -> String {
    let Some(x) = v.as_f64() else {
        return "-".into();
    };
    const UNITS: [&str; 5] = ["B/s", "KB/s", "MB/s", "GB/s", "TB/s"];
    let mut x = x.max(0.0);
    let mut u = 0;
    while x >= 1000.0 && u + 1 < UNITS.len() {
        x /= 1000.0;
        u += 1;
    }
    format!("{x:.1} {}", UNITS[u])
}

/// `banyan nodes` as a table.
pub fn render_nodes(nodes: &Value) -> String {
    let mut rows = vec![[
        "NODE".to_string(),
        "STATUS".into(),
        "PARENT".into(),
        "DEPTH".into(),
        "CPU".into(),
        "MEM".into(),
        "LOAD1".into(),
        "RX".into(),
        "TX".into(),
        "AGE".into(),
    ]];
    for n in nodes.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let d = &n["digest"];
        rows.push([
            n["name"].as_str().unwrap_or("?").to_string(),
            n["status"].as_str().unwrap_or("?").to_string(),
            n["parent"].as_str().unwrap_or("-").to_string(),
            n["depth"].to_string(),
            pct(&d["cpu"]),
            pct(&d["memory"]),
            d["load1"]
                .as_f64()
                .map_or("-".into(), |x| format!("{x:.2}")),
            rate(&d["net_rx_bps"]),
            rate(&d["net_tx_bps"]),
            n["age_ms"]
                .as_u64()
                .map_or("-".into(), |ms| format!("{:.1}s", ms as f64 / 1000.0)),
        ]);
    }
    table(&rows)
}

/// Rows as aligned columns, the first row being the header.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// Job descriptions (`/job/list`, `/profiles`) as a table; the `main` and `Node:` entries are
/// left out (they are the cluster and its nodes, not jobs). Names are printed with control
/// characters escaped: a job id is the user's text.
pub fn render_jobs(list: &Value) -> String {
    let mut rows = vec![[
        "JOB".to_string(),
        "SIZE".into(),
        "COMMAND".into(),
        "NODES".into(),
        "STARTED".into(),
        "ENDED".into(),
    ]];
    let when = |v: &Value| match v.as_u64() {
        Some(0) | None => "-".to_string(),
        Some(t) => format!("{t}"),
    };
    for j in list.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let id = j["jobid"].as_str().unwrap_or("?");
        if id == "main" || id.starts_with("Node: ") {
            continue;
        }
        rows.push([
            id.escape_debug().to_string(),
            j["size"].to_string(),
            j["command"]
                .as_str()
                .unwrap_or("")
                .escape_debug()
                .to_string(),
            j["nodelist"]
                .as_str()
                .unwrap_or("")
                .escape_debug()
                .to_string(),
            when(&j["start_time"]),
            when(&j["end_time"]),
        ]);
    }
    table(&rows)
}

/// `banyan metrics NODE`: one series a line, counters by value, gauges by their last sample.
pub fn render_metrics(job: &Value) -> String {
    let mut out = String::new();
    for c in job["counters"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let name = c["name"].as_str().unwrap_or("?");
        let t = &c["ctype"];
        let value = if let Some(v) = t["Counter"]["value"].as_f64() {
            format!("{v}")
        } else if let Some(v) = t["Gauge"]["last"].as_f64() {
            format!("{v}")
        } else if let Some(n) = t["Histogram"]["count"].as_u64() {
            format!("{n} observations, sum {}", t["Histogram"]["sum"])
        } else {
            "?".into()
        };
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// `banyan status` in words.
pub fn render_status(s: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "root {}: {} up, {} joining, {} lost, {} stale; depth {}",
        s["root"].as_str().unwrap_or("?"),
        s["nodes_up"],
        s["nodes_joining"],
        s["nodes_lost"],
        s["nodes_stale"],
        s["depth"]
    );
    match s["last_wave"].as_object() {
        Some(w) => {
            let _ = writeln!(
                out,
                "last wave {} seen {} ms ago ({})",
                w.get("wave").unwrap_or(&Value::Null),
                w.get("age_ms").unwrap_or(&Value::Null),
                if w.get("complete").and_then(Value::as_bool) == Some(true) {
                    "complete"
                } else {
                    "partial: some subtree was late"
                }
            );
        }
        None => out.push_str("no wave yet\n"),
    }
    out
}

/// `banyan topology` as an indented tree, lost and stale nodes listed after it.
pub fn render_topology(t: &Value) -> String {
    let root = t["root"].as_str().unwrap_or("banyan-root").to_string();
    let mut children: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut down = Vec::new();
    for n in t["nodes"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let name = n["name"].as_str().unwrap_or("?").to_string();
        if n["up"].as_bool() != Some(true) {
            down.push(format!(
                "{name} ({})",
                n["status"].as_str().unwrap_or("down")
            ));
            continue;
        }
        if let Some(p) = n["parent"].as_str() {
            children.entry(p.to_string()).or_default().push(name);
        }
    }
    let mut out = format!("{root}\n");
    let mut stack: Vec<(String, String, bool)> = Vec::new();
    if let Some(kids) = children.get(&root) {
        for (i, k) in kids.iter().enumerate().rev() {
            stack.push((k.clone(), String::new(), i + 1 == kids.len()));
        }
    }
    let mut guard = 0usize;
    while let Some((name, prefix, last)) = stack.pop() {
        guard += 1;
        if guard > 1_000_000 {
            break;
        }
        let _ = writeln!(out, "{prefix}{}{name}", if last { "└── " } else { "├── " });
        let child_prefix = format!("{prefix}{}", if last { "    " } else { "│   " });
        if let Some(kids) = children.get(&name) {
            for (i, k) in kids.iter().enumerate().rev() {
                stack.push((k.clone(), child_prefix.clone(), i + 1 == kids.len()));
            }
        }
    }
    if !down.is_empty() {
        let _ = writeln!(out, "not in the tree: {}", down.join(", "));
    }
    out
}

/// `banyan ping` results: one line per node, then the unreachable ones. Returns whether all answered.
pub fn render_ping(r: &Value) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    if let Some(m) = r["answered"].as_object() {
        for (node, v) in m {
            let _ = writeln!(out, "{node}\t{} ms", v["rtt_ms"]);
        }
    }
    if let Some(m) = r["failed"].as_object() {
        for (node, v) in m {
            ok = false;
            let _ = writeln!(
                out,
                "{node}\tfailed: {}",
                v["error"].as_str().unwrap_or("?")
            );
        }
    }
    let unreachable: Vec<&str> = r["unreachable"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !unreachable.is_empty() {
        ok = false;
        let set = banyan_protocol::nodeset::NodeSet::from_names(unreachable.iter().copied());
        let _ = writeln!(out, "unreachable: {set}");
    }
    (out, ok)
}

/// `banyan alarms`: every alarm, raised ones marked, from `/alarms/list`.
pub fn render_alarms(by_target: &Value) -> String {
    let mut rows = vec![[
        "TARGET".to_string(),
        "ALARM".into(),
        "CONDITION".into(),
        "CURRENT".into(),
        "STATE".into(),
        "SINCE".into(),
    ]];
    if let Some(map) = by_target.as_object() {
        for (target, list) in map {
            for a in list.as_array().map(Vec::as_slice).unwrap_or(&[]) {
                let op = &a["operator"];
                let cond = if let Some(t) = op["More"].as_f64() {
                    format!("> {t}")
                } else if let Some(t) = op["Less"].as_f64() {
                    format!("< {t}")
                } else if let Some(t) = op["Equal"].as_f64() {
                    format!("= {t}")
                } else {
                    "?".into()
                };
                let active = a["active"].as_bool().unwrap_or(false);
                let since = if active {
                    &a["raised_at"]
                } else {
                    &a["cleared_at"]
                };
                rows.push([
                    target.escape_debug().to_string(),
                    a["name"].as_str().unwrap_or("?").escape_debug().to_string(),
                    format!(
                        "{} {cond}",
                        a["metric"].as_str().unwrap_or("?").escape_debug()
                    ),
                    a["current"].as_f64().map_or("-".into(), |v| format!("{v}")),
                    if active { "RAISED" } else { "ok" }.to_string(),
                    since
                        .as_u64()
                        .map_or("-".into(), |ms| format!("{}", ms / 1000)),
                ]);
            }
        }
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topology_renders_as_a_tree_with_lost_nodes_listed() {
        let t = json!({"root": "banyan-root", "nodes": [
            {"name": "banyan-root", "parent": null, "up": true, "status": "up"},
            {"name": "a1", "parent": "banyan-root", "up": true, "status": "up"},
            {"name": "a2", "parent": "banyan-root", "up": true, "status": "up"},
            {"name": "a3", "parent": "a1", "up": true, "status": "up"},
            {"name": "a4", "parent": "a1", "up": false, "status": "stale"},
        ]});
        let text = render_topology(&t);
        assert_eq!(
            text,
            "banyan-root\n├── a1\n│   └── a3\n└── a2\nnot in the tree: a4 (stale)\n"
        );
    }

    #[test]
    fn nodes_render_as_an_aligned_table() {
        let n = json!([{"name": "cn1", "status": "up", "parent": "banyan-root", "depth": 1, "age_ms": 300,
            "digest": {"cpu": 0.5, "memory": 0.25, "load1": 1.5, "net_rx_bps": 1500.0, "net_tx_bps": 0.0}},
            {"name": "cn2", "status": "stale", "parent": null, "depth": 2, "age_ms": null, "digest": null}]);
        let text = render_nodes(&n);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[1].starts_with(
                "cn1   up      banyan-root  1      50%  25%  1.50   1.5 KB/s  0.0 B/s  0.3s"
            ),
            "{text}"
        );
        assert!(
            lines[2].contains("stale") && lines[2].contains(" - "),
            "{text}"
        );
    }

    #[test]
    fn ping_lists_unreachable_nodes_folded() {
        let r = json!({"answered": {"a1": {"rtt_ms": 2}}, "failed": {}, "unreachable": ["a3", "a4", "a5"]});
        let (text, ok) = render_ping(&r);
        assert!(!ok);
        assert!(text.contains("a1\t2 ms"));
        assert!(text.contains("unreachable: a[3-5]"));
    }
}

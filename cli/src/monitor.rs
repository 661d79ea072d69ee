//! What the mesh reports, rendered for people: `banyan status`, `topology`, `nodes`, `metrics`,
//! `jobs`, `job`, `profiles`, `alarms` and `ping`. Each function takes the root's JSON answer and
//! returns text; `--json` prints the answer itself.

use crate::times;
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

/// Widest command shown in a job table; the whole line is in `--json` and `banyan job ID` or
/// `banyan profile ID`.
pub const COMMAND_WIDTH: usize = 40;

/// `text` cut to `width` characters, the cut marked with `…`.
pub fn shorten(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A job's Unix-seconds field in milliseconds (0 or absent: none).
fn job_ms(v: &Value) -> Option<u64> {
    v.as_u64()
        .filter(|s| *s > 0)
        .map(|s| s.saturating_mul(1000))
}

/// How long a job ran (ended) or has been running (`now_ms`), from its description.
fn job_duration(j: &Value, now_ms: u64) -> String {
    match (job_ms(&j["start_time"]), job_ms(&j["end_time"])) {
        (Some(start), Some(end)) => times::duration(end.saturating_sub(start)),
        (Some(start), None) => format!("{} so far", times::duration(now_ms.saturating_sub(start))),
        _ => "-".into(),
    }
}

/// Job descriptions (`/job/list`, `/profiles`) as a table; the `main` and `Node:` entries are
/// left out (they are the cluster and its nodes, not jobs). Names are printed with control
/// characters escaped: a job id is the user's text. Starts are ages (`3 min ago`), then dates;
/// commands are cut to [`COMMAND_WIDTH`].
pub fn render_jobs(list: &Value, now_ms: u64) -> String {
    let mut rows = vec![[
        "JOB".to_string(),
        "SIZE".into(),
        "COMMAND".into(),
        "NODES".into(),
        "STARTED".into(),
        "DURATION".into(),
    ]];
    for j in list.as_array().map(Vec::as_slice).unwrap_or(&[]) {
        let id = j["jobid"].as_str().unwrap_or("?");
        if id == "main" || id.starts_with("Node: ") {
            continue;
        }
        let command = crate::escape::one_line(j["command"].as_str().unwrap_or("")).into_owned();
        rows.push([
            id.escape_debug().to_string(),
            j["size"].to_string(),
            shorten(&command, COMMAND_WIDTH),
            j["nodelist"]
                .as_str()
                .unwrap_or("")
                .escape_debug()
                .to_string(),
            job_ms(&j["start_time"]).map_or("-".into(), |t| times::age(now_ms, t)),
            job_duration(j, now_ms),
        ]);
    }
    table(&rows)
}

/// One job's description in full (`banyan job ID`, `banyan profile ID`): the whole command, and
/// local times with the duration.
pub fn render_job(desc: &Value, now_ms: u64) -> String {
    let text = |v: &Value| crate::escape::one_line(v.as_str().unwrap_or("")).into_owned();
    let mut rows = vec![
        ["job".to_string(), text(&desc["jobid"])],
        ["command".into(), text(&desc["command"])],
        ["nodes".into(), text(&desc["nodelist"])],
        ["size".into(), desc["size"].to_string()],
    ];
    for (label, key) in [
        ("partition", "partition"),
        ("cluster", "cluster"),
        ("run dir", "run_dir"),
    ] {
        if desc[key].as_str().is_some_and(|v| !v.is_empty()) {
            rows.push([label.into(), text(&desc[key])]);
        }
    }
    let start = job_ms(&desc["start_time"]);
    rows.push([
        "started".into(),
        start.map_or("-".into(), |t| {
            format!("{} ({})", times::local_time(t), times::age(now_ms, t))
        }),
    ]);
    rows.push([
        "ended".into(),
        job_ms(&desc["end_time"]).map_or("running".into(), times::local_time),
    ]);
    rows.push(["duration".into(), job_duration(desc, now_ms)]);
    let mut out = String::new();
    for [k, v] in rows {
        let _ = writeln!(out, "{:<10} {v}", format!("{k}:"));
    }
    out
}

/// How a finished job's ranks and their processes ended (`/profiles/get`).
pub fn render_tallies(profile: &Value) -> String {
    let line = |what: &str, k: &Value| {
        format!(
            "{what}: {} started, {} ended, {} crashed, {} lost with their node\n",
            k["started"].as_u64().unwrap_or(0),
            k["ended"].as_u64().unwrap_or(0),
            k["crashed"].as_u64().unwrap_or(0),
            k["lost"].as_u64().unwrap_or(0)
        )
    };
    let mut out = line("ranks", &profile["ranks"]);
    if profile["processes"]["started"]
        .as_u64()
        .is_some_and(|n| n > 0)
    {
        out.push_str(&line("processes", &profile["processes"]));
    }
    out
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

/// Columns of a sparkline in `banyan status`.
pub const SPARK_WIDTH: usize = 40;

/// `values` as a sparkline of at most `width` characters (each the mean of its share of the
/// points), scaled from 0 (or the least value, if negative) to the greatest.
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let cols = values.len().min(width);
    let means: Vec<f64> = (0..cols)
        .map(|c| {
            let (a, b) = (c * values.len() / cols, (c + 1) * values.len() / cols);
            let part = &values[a..b.max(a + 1)];
            part.iter().sum::<f64>() / part.len() as f64
        })
        .collect();
    let lo = means.iter().copied().fold(0.0_f64, f64::min);
    let hi = means.iter().copied().fold(f64::MIN, f64::max);
    means
        .iter()
        .map(|v| {
            if hi <= lo {
                BARS[0]
            } else {
                let i = ((v - lo) / (hi - lo) * (BARS.len() - 1) as f64).round() as usize;
                BARS[i.min(BARS.len() - 1)]
            }
        })
        .collect()
}

/// The cluster's main series (`/job/history?job=main`) as one sparkline each, with the last,
/// least, mean and greatest value and the time the history covers.
pub fn render_history(answer: &Value) -> String {
    let h = &answer["history"];
    let series = h["series"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let points = h["points"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let (Some(first), Some(last)) = (
        points.first().and_then(|p| p["t_ms"].as_u64()),
        points.last().and_then(|p| p["t_ms"].as_u64()),
    ) else {
        return "no history yet\n".into();
    };
    type Fmt = fn(&Value) -> String;
    let count: Fmt = |v| v.as_f64().map_or("-".into(), |x| format!("{x:.0}"));
    let load: Fmt = |v| v.as_f64().map_or("-".into(), |x| format!("{x:.2}"));
    let shown: [(&str, &str, Fmt); 7] = [
        ("cpu", "cpu", pct),
        ("memory", "memory", pct),
        ("load1", "load (mean)", load),
        ("net_rx_bps", "network in", rate),
        ("net_tx_bps", "network out", rate),
        ("jobs_running", "running jobs", count),
        ("nodes_up", "nodes heard", count),
    ];
    let mut out = format!(
        "over the last {} ({} points):\n",
        times::duration(last.saturating_sub(first)),
        points.len()
    );
    for (name, label, fmt) in shown {
        let Some(i) = series.iter().position(|s| s["name"] == name) else {
            continue;
        };
        let values: Vec<f64> = points
            .iter()
            .filter_map(|p| p["values"].get(i).and_then(Value::as_f64))
            .collect();
        let Some(now) = values.last().copied() else {
            continue;
        };
        let min = values.iter().copied().fold(f64::MAX, f64::min);
        let max = values.iter().copied().fold(f64::MIN, f64::max);
        let avg = values.iter().sum::<f64>() / values.len() as f64;
        let _ = writeln!(
            out,
            "  {label:<13} {:<w$}  now {}  min {}  avg {}  max {}",
            sparkline(&values, SPARK_WIDTH),
            fmt(&now.into()),
            fmt(&min.into()),
            fmt(&avg.into()),
            fmt(&max.into()),
            w = SPARK_WIDTH
        );
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
pub fn render_alarms(by_target: &Value, now_ms: u64) -> String {
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
                        .filter(|ms| *ms > 0)
                        .map_or("-".into(), |ms| times::age(now_ms, ms)),
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
    fn job_tables_show_ages_and_durations_and_cut_long_commands() {
        let now = 1_800_000_000_000;
        let start = now / 1000 - 180;
        let long = format!(
            "sh -c '{}'",
            "dd if=/dev/zero bs=1M count=8 | cat".repeat(3)
        );
        let list = json!([
            {"jobid": "main"},
            {"jobid": "j1", "size": 3, "command": long, "nodelist": "bnyd[2-4]",
             "start_time": start, "end_time": start + 75},
            {"jobid": "j2", "size": 1, "command": "./app", "nodelist": "cn1",
             "start_time": start, "end_time": 0},
        ]);
        let text = render_jobs(&list, now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains("STARTED") && lines[0].contains("DURATION"));
        assert!(
            lines[1].contains("3 min ago") && lines[1].contains("1m15s"),
            "{text}"
        );
        assert!(lines[1].contains("bnyd[2-4]"), "{text}");
        assert!(
            lines[1].contains('…') && !lines[1].contains(&long),
            "{text}"
        );
        assert!(lines[2].contains("3m so far"), "{text}");
        assert!(
            !text.contains(&start.to_string()),
            "no raw Unix seconds: {text}"
        );
        // In full on its own.
        let one = render_job(&list[1], now);
        assert!(one.contains(&long), "{one}");
        assert!(
            one.contains("(3 min ago)") && one.contains("1m15s"),
            "{one}"
        );
        assert!(!one.contains(&start.to_string()), "{one}");
    }

    #[test]
    fn a_profile_counts_ranks_and_processes_apart() {
        let p = json!({"ranks": {"started": 3, "ended": 3, "crashed": 0, "lost": 0},
            "processes": {"started": 6, "ended": 6, "crashed": 1, "lost": 0}});
        assert_eq!(
            render_tallies(&p),
            "ranks: 3 started, 3 ended, 0 crashed, 0 lost with their node\n\
             processes: 6 started, 6 ended, 1 crashed, 0 lost with their node\n"
        );
    }

    #[test]
    fn the_main_history_renders_as_sparklines_with_its_range() {
        assert_eq!(
            sparkline(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 8),
            "▁▂▃▄▅▆▇█"
        );
        assert_eq!(sparkline(&[0.0, 0.0, 7.0, 7.0], 2), "▁█");
        assert_eq!(sparkline(&[2.0; 5], 40), "█████", "constant: full, from 0");
        let h = json!({"job": "main", "running": true, "history": {
            "series": [{"name": "cpu", "kind": "gauge"}, {"name": "jobs_running", "kind": "gauge"}],
            "points": [
                {"t_ms": 1_000, "values": [0.1, 0.0]},
                {"t_ms": 61_000, "values": [0.5, 2.0]},
                {"t_ms": 121_000, "values": [0.3, null]},
            ],
            "gap_ms": 500}});
        let text = render_history(&h);
        assert!(text.starts_with("over the last 2m (3 points):"), "{text}");
        assert!(
            text.contains("cpu") && text.contains("now 30%  min 10%  avg 30%  max 50%"),
            "{text}"
        );
        assert!(text.contains("now 2  min 0  avg 1  max 2"), "{text}");
        assert_eq!(render_history(&json!({})), "no history yet\n");
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

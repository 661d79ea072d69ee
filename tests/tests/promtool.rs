//! `promtool check metrics`, Prometheus's own parser and linter, on what `/metrics` serves: the
//! output of `banyan_protocol::exposition::render` for sets with counters, merged gauges,
//! histograms, hostile label values, names that need sanitizing, kind collisions, and an
//! exporter's answer scraped through `parse` and `to_metric_set`. Each exposition is piped into
//! `promtool check metrics` on stdin and must exit 0: exit 3 (lint problems only) and exit 1 (a
//! parse error) both fail, with promtool's output and the exposition shown.
//!
//! promtool comes from Debian's `prometheus` package (scripts/test installs it). When it is
//! missing the tests fail (unless `BANYAN_TEST_LENIENT=1`, which records a skip).

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;

use banyan_protocol::exposition::{self, series_key};
use banyan_protocol::metric::{Counter, Gauge, Histogram, MetricSet, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Whether promtool can run here. Missing: a panic (unless BANYAN_TEST_LENIENT=1), `false` (the test returns) otherwise.
fn have_promtool() -> bool {
    match Command::new("promtool").arg("--version").output() {
        Ok(out) if out.status.success() => true,
        Ok(out) => panic!(
            "promtool --version failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if banyan_tests::support::strict() {
                panic!(
                    "promtool not found: install the Debian package prometheus (scripts/test does)"
                );
            }
            banyan_tests::support::note_skip("promtool not found");
            false
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

/// promtool's verdict on `text`: its exit code and what it printed.
fn promtool(text: &str) -> (i32, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start promtool: {e}"));
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = text.to_string();
    // Written from a thread so that a large exposition cannot deadlock against promtool's output.
    let writer = thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("promtool did not finish: {e}"));
    writer
        .join()
        .expect("writer thread")
        .unwrap_or_else(|e| panic!("cannot write to promtool: {e}"));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), said)
}

fn excerpt(text: &str) -> String {
    const MAX: usize = 6000;
    if text.len() <= MAX {
        return text.to_string();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}\n[... {} more bytes]", &text[..end], text.len() - end)
}

/// Asserts that promtool accepts `text` without a single problem.
fn assert_accepted(case: &str, text: &str) {
    let (code, said) = promtool(text);
    let meaning = match code {
        0 => return,
        1 => "a parse error",
        3 => "lint problems",
        _ => "an unexpected failure",
    };
    panic!(
        "{case}: promtool check metrics exited {code} ({meaning}):\n{said}\n--- exposition:\n{}",
        excerpt(text)
    );
}

fn help(name: &str) -> Option<String> {
    match name {
        "banyan_agent_waves_total" => Some("Waves sampled by the agent since it started".into()),
        "io_size_bytes" => Some("Sizes of I/O calls\nby operation, with a \\ backslash".into()),
        _ => None,
    }
}

fn merged_gauge(values: &[f64]) -> Value {
    let mut g = Gauge::sample(values[0], 1000);
    for (i, v) in values.iter().enumerate().skip(1) {
        g.merge(&Gauge::sample(*v, 1000 + i as u64));
    }
    Value::Gauge(g)
}

fn histogram(values: &[f64]) -> Value {
    let mut h = Histogram::default();
    for v in values {
        h.observe(*v);
    }
    Value::Histogram(h)
}

#[test]
fn banyan_families_pass_promtool() {
    if !have_promtool() {
        return;
    }
    let mut set = MetricSet::new();
    set.set_counter("banyan_agent_waves_total", 86_400.0);
    set.set_counter(
        &series_key("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "idle")]),
        1.234_567_89e7,
    );
    set.set_counter(
        &series_key("node_cpu_seconds_total", &[("cpu", "0"), ("mode", "user")]),
        0.25,
    );
    set.values.insert(
        "node_memory_used_bytes".into(),
        merged_gauge(&[1.5e9, 2.5e9, 7.0e8]),
    );
    set.set_gauge("banyan_agent_up", 1.0, 5);
    set.set_gauge("node_temperature_celsius", f64::NAN, 5);
    set.set_gauge(
        &series_key("node_filesystem_free_bytes", &[("mount", "/")]),
        f64::INFINITY,
        5,
    );
    set.set_gauge(
        &series_key("node_filesystem_free_bytes", &[("mount", "/tmp")]),
        f64::NEG_INFINITY,
        5,
    );
    set.values.insert(
        series_key("io_size_bytes", &[("op", "read")]),
        histogram(&[
            0.0,
            1.0,
            4096.0,
            4096.0,
            1e12,
            -3.0,
            f64::NAN,
            f64::INFINITY,
        ]),
    );
    set.values.insert(
        series_key("io_size_bytes", &[("op", "write")]),
        histogram(&[]),
    );
    for extra in [
        &[][..],
        &[("job", "main")][..],
        &[("job", "slurm/12345.0 \"quoted\""), ("node", "cn42")][..],
    ] {
        let text = exposition::render(&set, &help, extra);
        assert!(text.contains("# TYPE io_size_bytes histogram\n"));
        assert!(text.contains("# TYPE banyan_agent_waves_total counter\n"));
        assert!(text.contains("# TYPE node_memory_used_bytes gauge\n"));
        assert_accepted(
            &format!("banyan families with extra labels {extra:?}"),
            &text,
        );
    }
}

#[test]
fn hostile_label_values_pass_promtool() {
    if !have_promtool() {
        return;
    }
    let long = "x".repeat(10_000);
    let hostile = [
        "quote\" in the middle",
        "back\\slash, and \\n written out",
        "new\nline",
        "<script>alert(document.cookie)</script>",
        "}, job=\"evil\"} 666\nfake_total 1\n# TYPE fake_total gauge",
        "tab\tcarriage\rreturn nul\0",
        "é ✓ 🦀 \u{202e}rtl",
        "\\",
        "\"",
        "\\\"",
        " ",
        "=",
        long.as_str(),
    ];
    let mut set = MetricSet::new();
    for (i, v) in hostile.iter().enumerate() {
        let i = i.to_string();
        set.set_counter(&series_key("hostile_total", &[("v", v), ("i", &i)]), 1.0);
        set.set_gauge(&series_key("hostile_level", &[("v", v), ("i", &i)]), 2.0, 0);
        set.values.insert(
            series_key("hostile_seconds", &[("v", v), ("i", &i)]),
            histogram(&[3.0]),
        );
    }
    let text = exposition::render(&set, &help, &[("job", "<b>\"job\"\n\\</b>")]);
    assert_accepted("hostile label values", &text);
    let back = exposition::parse(&text).expect("banyan reads back its own exposition");
    assert_eq!(
        back.iter()
            .filter(|s| s.name.starts_with("hostile_total{"))
            .count(),
        hostile.len()
    );
}

#[test]
fn sanitized_names_and_collisions_pass_promtool() {
    if !have_promtool() {
        return;
    }
    let mut set = MetricSet::new();
    // Names that are not Prometheus names, and malformed keys.
    set.set_gauge("9lives", 1.0, 0);
    set.set_gauge("bad-name.with dots", 1.0, 0);
    set.set_gauge("température", 1.0, 0);
    set.set_gauge("", 1.0, 0);
    set.set_gauge("broken{a=\"1\"", 1.0, 0);
    set.set_gauge(
        "labels{a-b=\"1\",a_b=\"2\",__name__=\"3\",0c=\"4\",empty=\"\"}",
        1.0,
        0,
    );
    // Types whose proper TYPE line would clash with the name or the labels.
    set.set_counter("reads", 1.0);
    set.set_gauge("queue_total", 1.0, 0);
    set.set_gauge("files_count", 1.0, 0);
    set.set_gauge("files_sum", 1.0, 0);
    set.set_gauge("files_bucket", 1.0, 0);
    set.set_gauge(&series_key("le_level", &[("le", "1")]), 1.0, 0);
    set.set_counter(&series_key("q_events_total", &[("quantile", "0.5")]), 1.0);
    set.values.insert(
        series_key("h_seconds", &[("le", "mine"), ("quantile", "q")]),
        histogram(&[1.0]),
    );
    // One name, two kinds; and families whose names collide.
    set.set_counter(&series_key("mixed_total", &[("a", "1")]), 1.0);
    set.set_gauge(&series_key("mixed_total", &[("a", "2")]), 1.0, 0);
    set.values.insert("lat_seconds".into(), histogram(&[0.5]));
    set.set_gauge("lat_seconds_count", 3.0, 0);
    set.set_counter("lat_seconds_sum", 3.0);
    set.values.insert("size_bytes".into(), histogram(&[2.0]));
    set.set_gauge(&series_key("size_bytes", &[("a", "1")]), 1.0, 0);
    set.set_gauge(&series_key("size_bytes", &[("a", "2")]), 1.0, 0);
    set.set_gauge("g_bytes", 1.0, 0);
    set.values
        .insert("g_bytes_bucket".into(), histogram(&[2.0]));
    // Scraped-histogram shapes: whole, and with a part that does not fit.
    set.set_counter("rpc_seconds_bucket{le=\"0.1\"}", 1.0);
    set.set_counter("rpc_seconds_bucket{le=\"+Inf\"}", 2.0);
    set.set_counter("rpc_seconds_sum", 0.3);
    set.set_counter("rpc_seconds_count", 2.0);
    set.set_counter("odd_seconds_bucket{le=\"0.1\"}", 1.0);
    set.set_gauge("odd_seconds_sum", 1.0, 0);
    set.set_counter("pairs_seconds_sum", 1.0);
    set.set_counter("pairs_seconds_count", 1.0);
    let text = exposition::render(&set, &help, &[("job", "main"), ("le", "x")]);
    assert!(text.contains("# banyan: dropped"), "{text}");
    assert!(text.contains("# TYPE rpc_seconds histogram\n"), "{text}");
    assert!(text.contains("# TYPE pairs_seconds summary\n"), "{text}");
    assert_accepted("sanitized names and collisions", &text);
}

/// An exporter's answer in node_exporter's style (written for this test), with names promtool's
/// style lint accepts; `requests_served`, a counter without `_total`, is the exporter's own lint
/// problem, which banyan's exposition does not repeat (it is exposed as untyped).
const EXPORTER: &str = "\
# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.
# TYPE go_gc_duration_seconds summary
go_gc_duration_seconds{quantile=\"0\"} 2.1e-05
go_gc_duration_seconds{quantile=\"0.5\"} 4.05e-05
go_gc_duration_seconds{quantile=\"1\"} 0.000713
go_gc_duration_seconds_sum 0.0192
go_gc_duration_seconds_count 311
# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu=\"0\",mode=\"idle\"} 84512.37
node_cpu_seconds_total{cpu=\"0\",mode=\"user\"} 1876.5
# HELP node_load1 1m load average.
# TYPE node_load1 gauge
node_load1 0.42
# HELP node_network_receive_bytes_total Network device statistic receive_bytes.
# TYPE node_network_receive_bytes_total counter
node_network_receive_bytes_total{device=\"eth0\"} 9.87654321e+08
# HELP node_vmstat_pgfault /proc/vmstat information field pgfault.
# TYPE node_vmstat_pgfault untyped
node_vmstat_pgfault 4.3361742e+07
# HELP node_time_seconds System time in seconds since epoch (1970).
# TYPE node_time_seconds gauge
node_time_seconds 1.718e+09 1718000000123
# HELP node_systemd_unit_state Systemd unit
# TYPE node_systemd_unit_state gauge
node_systemd_unit_state{name=\"dev-disk-by\\\\x2duuid.swap\",state=\"active\"} 1
# HELP http_request_duration_seconds Latencies of HTTP requests.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{handler=\"/metrics\",le=\"0.1\"} 40
http_request_duration_seconds_bucket{handler=\"/metrics\",le=\"0.5\"} 41
http_request_duration_seconds_bucket{handler=\"/metrics\",le=\"+Inf\"} 41
http_request_duration_seconds_sum{handler=\"/metrics\"} 0.373
http_request_duration_seconds_count{handler=\"/metrics\"} 41
# HELP requests_served Requests served (a counter without the _total suffix).
# TYPE requests_served counter
requests_served 17
";

#[test]
fn scraped_exporter_series_pass_promtool() {
    if !have_promtool() {
        return;
    }
    let doc = exposition::parse_document(EXPORTER).expect("the excerpt parses");
    let set = exposition::to_metric_set(&doc.samples, 1_718_000_000_000);
    // As the root would serve it: two nodes scraped the same exporter and merged.
    let mut merged = set.clone();
    merged.merge(&set);
    let help_of = |name: &str| {
        doc.families
            .iter()
            .find(|f| f.name == name)
            .and_then(|f| f.help.clone())
    };
    for (case, s, extra) in [
        ("one node", &set, vec![("node", "cn1")]),
        ("merged", &merged, vec![("job", "main")]),
    ] {
        let text = exposition::render(s, &help_of, &extra);
        assert!(
            text.contains("# TYPE http_request_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE go_gc_duration_seconds summary\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP node_load1 1m load average.\n"),
            "{text}"
        );
        assert_accepted(&format!("scraped exporter, {case}"), &text);
    }
}

/// The problems promtool reports, one `metric text` line each.
fn lint_problems(text: &str) -> BTreeSet<String> {
    let (code, said) = promtool(text);
    assert!(
        code == 0 || code == 3,
        "promtool exited {code}, not 0 or 3:\n{said}\n--- exposition:\n{}",
        excerpt(text)
    );
    said.lines().map(str::to_string).collect()
}

#[test]
fn render_adds_no_lint_problem_to_badly_named_exporter_series() {
    if !have_promtool() {
        return;
    }
    // Real exporters do use names promtool's style lint dislikes (node_exporter's
    // node_memory_MemTotal_bytes is camelCase). banyan keeps names, so those problems stay, but
    // rendering must add none of its own.
    let source = "\
# HELP node_memory_MemTotal_bytes Memory information field MemTotal_bytes.
# TYPE node_memory_MemTotal_bytes gauge
node_memory_MemTotal_bytes 1.6663363584e+10
# HELP rpc_latency_ms Latency in milliseconds.
# TYPE rpc_latency_ms gauge
rpc_latency_ms 3
# HELP uptime_minutes Minutes up.
# TYPE uptime_minutes gauge
uptime_minutes 12
# HELP cache_hits_counter Cache hits.
# TYPE cache_hits_counter counter
cache_hits_counter 5
";
    let before = lint_problems(source);
    assert!(
        !before.is_empty(),
        "the source has lint problems of its own"
    );
    let set = exposition::to_metric_set(&exposition::parse(source).expect("parses"), 0);
    let after = lint_problems(&exposition::render(&set, &|_| None, &[("job", "main")]));
    let added: Vec<&String> = after.difference(&before).collect();
    assert!(
        added.is_empty(),
        "rendering added lint problems {added:?}\nsource's own: {before:?}"
    );
}

#[test]
fn empty_set_passes_promtool() {
    if !have_promtool() {
        return;
    }
    assert_accepted(
        "empty set",
        &exposition::render(&MetricSet::new(), &help, &[("job", "main")]),
    );
}

/// Random sets drawn from names promtool's style lint accepts, in every kind, with hostile
/// label values: all must pass, collisions and all.
#[test]
fn random_sets_pass_promtool() {
    if !have_promtool() {
        return;
    }
    const NAMES: &[&str] = &[
        "work_total",
        "work",
        "level",
        "level_total",
        "level_count",
        "level_sum",
        "level_bucket",
        "lat_seconds",
        "lat_seconds_bucket",
        "lat_seconds_sum",
        "lat_seconds_count",
        "job-name",
        "7up",
    ];
    const LABELS: &[&str] = &[
        "a",
        "job",
        "exported_job",
        "le",
        "quantile",
        "__name__",
        "b-c",
    ];
    const VALUES: &[&str] = &["", "x", "\"", "\\", "\n", "<i>", "0.5", "+Inf", "é"];
    let seed = std::env::var("BANYAN_PROMTOOL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6a6e_7961);
    let rounds = std::env::var("BANYAN_PROMTOOL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    println!("seed {seed} (BANYAN_PROMTOOL_SEED), {rounds} rounds (BANYAN_PROMTOOL_ROUNDS)");
    let mut rng = StdRng::seed_from_u64(seed);
    let float = |rng: &mut StdRng| match rng.gen_range(0..6) {
        0 => f64::NAN,
        1 => f64::INFINITY,
        2 => -rng.gen_range(0.0..1e3),
        _ => rng.gen_range(0.0..1e7),
    };
    for round in 0..rounds {
        let mut set = MetricSet::new();
        for _ in 0..rng.gen_range(1..12) {
            let name = NAMES[rng.gen_range(0..NAMES.len())];
            let labels: Vec<(&str, &str)> = (0..rng.gen_range(0..3))
                .map(|_| {
                    (
                        LABELS[rng.gen_range(0..LABELS.len())],
                        VALUES[rng.gen_range(0..VALUES.len())],
                    )
                })
                .collect();
            let key = series_key(name, &labels);
            let value = match rng.gen_range(0..3) {
                0 => Value::Counter(Counter {
                    value: float(&mut rng),
                }),
                1 => merged_gauge(&[float(&mut rng), float(&mut rng)]),
                _ => {
                    let values: Vec<f64> =
                        (0..rng.gen_range(0..5)).map(|_| float(&mut rng)).collect();
                    histogram(&values)
                }
            };
            set.values.insert(key, value);
        }
        let text = exposition::render(&set, &help, &[("job", "main"), ("node", "cn\"7")]);
        assert_accepted(&format!("random set {round}: {set:?}"), &text);
    }
}

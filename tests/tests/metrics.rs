//! Node metrics through the real mesh, checked against the kernel and against each other. Needs root
//! (network namespaces); see `Testnet::require`.
//!
//! The collector tests read the kernel's own numbers (`/proc/meminfo`, `/proc/stat`, `/proc/loadavg`,
//! `/sys/class/net/eth0/statistics`) inside the test host an agent runs on, around a sample that agent
//! took, and compare them with that sample as the root serves it (`/job?job=Node: NAME`, fetched
//! through the tree). A sample is "around" two kernel reads when its timestamp is later than the
//! first read and the root served it before the second. Counters count since the agent started, so
//! they are compared as deltas between two such samples: the kernel's delta over the inner interval
//! (second read of the first bracket to first read of the second) <= the agent's delta <= the
//! kernel's delta over the outer interval. That holds exactly, whatever else runs on the machine.
//!
//! The sum test gives each of seven agents known values whose bits tell them apart (a counter of
//! `1000 * 2^i`, a gauge of `2^i`), so every merged value the root shows can be decoded into the set
//! of nodes it holds: a node counted twice, or a count lost, shows at once, not only in the end.
//!
//! Timeouts are generous upper bounds for a loaded machine; no assertion is about how long something
//! took.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use banyan_protocol::exposition;
use banyan_protocol::metric::{Gauge, MetricSet, Value as Metric};
use banyan_tests::cluster::{with_cluster, Cluster, Topology};
use banyan_tests::support::http_request;
use banyan_tests::testnet::Testnet;
use serde_json::Value;

/// Agents joining at once, on a machine busy with the other tests.
const FORM: Duration = Duration::from_secs(45);

/// Detection (3 s), the heal window and re-placement, then reports from the healed tree.
const HEAL: Duration = Duration::from_secs(40);

/// How long a sample taken after a given moment may take to be served: a wave or two, and a query
/// through the tree, on a loaded machine.
const FRESH: Duration = Duration::from_secs(20);

/// The interface every test host has on the bridge (scripts/testnet).
const IFACE: &str = "eth0";

/// Starts a cluster of `n` agents and waits until they are all attached.
fn with_formed_cluster(n: usize, body: impl FnOnce(&mut Cluster) -> Result<()>) -> Result<()> {
    with_cluster(n, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        body(c)
    })
}

/// Wall-clock milliseconds since the Unix epoch, the clock the agents stamp their samples with.
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ----- Reading the root -------------------------------------------------------------------------

/// `s` percent-encoded for a query string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn node_job(name: &str) -> String {
    format!("Node: {name}")
}

/// The metrics of job `id` (`main`, or `Node: NAME`) as `GET /job?job=ID` serves them.
fn job_metrics(c: &Cluster, id: &str) -> Result<MetricSet> {
    let path = format!("/job?job={}", encode(id));
    let answer = c.http_get(&path)?;
    let jobid = answer.pointer("/desc/jobid").and_then(Value::as_str);
    ensure!(jobid == Some(id), "GET {path}: desc.jobid is {jobid:?}");
    let counters = answer
        .get("counters")
        .and_then(Value::as_array)
        .with_context(|| format!("GET {path}: no counters list in {answer}"))?;
    let mut set = MetricSet::new();
    for entry in counters {
        let name = entry
            .get("name")
            .and_then(Value::as_str)
            .with_context(|| format!("GET {path}: a counter without a name: {entry}"))?;
        let ctype = entry
            .get("ctype")
            .with_context(|| format!("GET {path}: {name} has no ctype"))?;
        // JSON has no NaN: a level that is NaN is served as null and does not read back. No series
        // these tests look at is ever NaN; a missing one is reported where it is needed.
        if let Ok(value) = serde_json::from_value::<Metric>(ctype.clone()) {
            set.values.insert(name.to_owned(), value);
        }
    }
    Ok(set)
}

fn node_metrics(c: &Cluster, name: &str) -> Result<MetricSet> {
    job_metrics(c, &node_job(name))
}

fn counter_of(set: &MetricSet, name: &str) -> Option<f64> {
    match set.get(name) {
        Some(Metric::Counter(c)) => Some(c.value),
        _ => None,
    }
}

fn gauge_of(set: &MetricSet, name: &str) -> Option<Gauge> {
    match set.get(name) {
        Some(Metric::Gauge(g)) => Some(*g),
        _ => None,
    }
}

fn need_counter(set: &MetricSet, name: &str, whose: &str) -> Result<f64> {
    counter_of(set, name).with_context(|| format!("{whose} has no counter {name}"))
}

fn need_gauge(set: &MetricSet, name: &str, whose: &str) -> Result<Gauge> {
    gauge_of(set, name).with_context(|| format!("{whose} has no gauge {name}"))
}

/// When a node's own set was sampled: every gauge of one sample carries the wave's timestamp.
fn sampled_ms(set: &MetricSet) -> Option<u64> {
    gauge_of(set, "banyan_agent_uptime_seconds").map(|g| g.last_ms)
}

/// Agent `i`'s own metrics from a sample taken after `after_ms` (wall clock), through the root.
fn sample_after(c: &Cluster, i: usize, after_ms: u64) -> Result<MetricSet> {
    let name = c.name(i).to_owned();
    c.poll(
        &format!("a sample of {name} taken after {after_ms}"),
        FRESH,
        |c| {
            let set = node_metrics(c, &name)?;
            Ok(sampled_ms(&set)
                .is_some_and(|t| t > after_ms)
                .then_some(set))
        },
    )
    .map(|(set, _)| set)
}

/// Whether two floats are equal to a few units in the last place: a value that went through the
/// root's JSON may come back one unit off (serde_json's default parser is not exact).
fn same_float(a: f64, b: f64) -> bool {
    (a - b).abs() <= 4.0 * f64::EPSILON * a.abs().max(b.abs())
}

// ----- Reading the kernel in a test host --------------------------------------------------------

/// Runs `cmd` inside agent `i`'s test host and returns what it printed; fails on a non-zero exit.
fn run_in(c: &mut Cluster, i: usize, cmd: &[&str]) -> Result<String> {
    let name = c.name(i).to_owned();
    let out = c.testnet().exec(i, cmd)?;
    ensure!(
        out.status.success(),
        "{cmd:?} on {name} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} on {name}: not UTF-8"))
}

/// One agent sample taken between two reads of a kernel value in the agent's host.
struct Bracket<T> {
    before: T,
    sample: MetricSet,
    after: T,
    /// Wall-clock milliseconds just before the first read and just after the second.
    from_ms: u64,
    to_ms: u64,
}

/// Reads the kernel with `read`, waits for agent `i` to sample after that, and reads it again once
/// the root has served that sample.
fn bracket<T>(
    c: &mut Cluster,
    i: usize,
    mut read: impl FnMut(&mut Cluster) -> Result<T>,
) -> Result<Bracket<T>> {
    let from_ms = unix_ms();
    let before = read(c)?;
    let read_at = unix_ms();
    let sample = sample_after(c, i, read_at)?;
    let after = read(c)?;
    Ok(Bracket {
        before,
        sample,
        after,
        from_ms,
        to_ms: unix_ms(),
    })
}

/// The value of `key` in `/proc/meminfo` text, in bytes (the file says kB).
fn meminfo_bytes(text: &str, key: &str) -> Result<u64> {
    let line = text
        .lines()
        .find(|l| l.split(':').next() == Some(key))
        .with_context(|| format!("/proc/meminfo has no {key}"))?;
    let mut words = line.split(':').nth(1).unwrap_or("").split_whitespace();
    let value: u64 = words
        .next()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("bad /proc/meminfo line {line:?}"))?;
    ensure!(
        words.next() == Some("kB"),
        "/proc/meminfo line {line:?} is not in kB"
    );
    Ok(value * 1024)
}

/// `(MemTotal, MemAvailable, SwapTotal)` in bytes, read in agent `i`'s host.
fn read_meminfo(c: &mut Cluster, i: usize) -> Result<(u64, u64, u64)> {
    let text = run_in(c, i, &["cat", "/proc/meminfo"])?;
    Ok((
        meminfo_bytes(&text, "MemTotal")?,
        meminfo_bytes(&text, "MemAvailable")?,
        meminfo_bytes(&text, "SwapTotal")?,
    ))
}

/// The CPU modes in `/proc/stat`'s column order, as the agent labels them.
const MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

/// `/proc/stat` read in a host: the ticks of the `cpu` line per mode, and the `N` of each `cpuN`
/// line (the online cores).
#[derive(Debug, Clone)]
struct Stat {
    all: [u64; 8],
    cores: Vec<String>,
}

fn read_stat(c: &mut Cluster, i: usize) -> Result<Stat> {
    let text = run_in(c, i, &["cat", "/proc/stat"])?;
    let mut all = None;
    let mut cores = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("cpu") => {
                let mut ticks = [0u64; 8];
                for (slot, word) in ticks.iter_mut().zip(words) {
                    *slot = word
                        .parse()
                        .with_context(|| format!("bad /proc/stat line {line:?}"))?;
                }
                all = Some(ticks);
            }
            Some(w) if w.starts_with("cpu") => cores.push(w["cpu".len()..].to_owned()),
            _ => {}
        }
    }
    Ok(Stat {
        all: all.context("/proc/stat has no cpu line")?,
        cores,
    })
}

/// The first three fields of `/proc/loadavg`, as the kernel prints them.
fn read_loadavg(c: &mut Cluster, i: usize) -> Result<[f64; 3]> {
    let text = run_in(c, i, &["cat", "/proc/loadavg"])?;
    let mut words = text.split_whitespace();
    let mut next = || -> Result<f64> {
        words
            .next()
            .and_then(|w| w.parse().ok())
            .with_context(|| format!("bad /proc/loadavg {text:?}"))
    };
    Ok([next()?, next()?, next()?])
}

/// `(rx_bytes, tx_bytes)` of `eth0` from sysfs in agent `i`'s host (`ip netns exec` mounts the
/// namespace's own sysfs).
fn read_net(c: &mut Cluster, i: usize) -> Result<(u64, u64)> {
    let dir = format!("/sys/class/net/{IFACE}/statistics");
    let text = run_in(
        c,
        i,
        &[
            "cat",
            &format!("{dir}/rx_bytes"),
            &format!("{dir}/tx_bytes"),
        ],
    )?;
    let numbers: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad {dir} counters {text:?}"))?;
    match numbers[..] {
        [rx, tx] => Ok((rx, tx)),
        _ => bail!("expected two numbers from {dir}, got {text:?}"),
    }
}

// ----- Collectors against the kernel ------------------------------------------------------------

#[test]
fn memory_matches_proc_meminfo() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_formed_cluster(1, |c| {
        let who = node_job(c.name(0));
        // MemAvailable moves all the time on a machine running other tests; a sample is accepted
        // when it is within this much of the kernel's value on either side of it.
        const SLACK: u64 = 64 << 20;
        let mut attempts = Vec::new();
        for _ in 0..10 {
            let b = bracket(c, 0, |c| read_meminfo(c, 0))?;
            let ((total0, avail0, swap0), (total1, avail1, swap1)) = (b.before, b.after);
            ensure!(
                total0 == total1 && swap0 == swap1,
                "MemTotal or SwapTotal changed between two reads: {:?} then {:?}",
                b.before,
                b.after
            );
            let total = need_gauge(&b.sample, "banyan_node_memory_total_bytes", &who)?.last;
            let avail = need_gauge(&b.sample, "banyan_node_memory_available_bytes", &who)?.last;
            let used = need_gauge(&b.sample, "banyan_node_memory_used_bytes", &who)?.last;
            let ratio = need_gauge(&b.sample, "banyan_node_memory_used_ratio", &who)?.last;
            let swap = need_gauge(&b.sample, "banyan_node_swap_total_bytes", &who)?.last;
            // Exact: MemTotal and SwapTotal do not move, and the agent reports them in bytes.
            ensure!(
                total == total0 as f64,
                "{who}: memory total {total}, /proc/meminfo MemTotal {total0} bytes"
            );
            ensure!(
                swap == swap0 as f64,
                "{who}: swap total {swap}, /proc/meminfo SwapTotal {swap0} bytes"
            );
            // One sample's values agree with each other exactly (integers below 2^53).
            ensure!(
                used + avail == total,
                "{who}: used {used} + available {avail} != total {total}"
            );
            // To a few units in the last place: JSON decimals do not always read back to the
            // same float (serde_json's default parser may be one unit off).
            ensure!(
                same_float(ratio, used / total),
                "{who}: used ratio {ratio}, used / total = {}",
                used / total
            );
            let low = avail0.min(avail1).saturating_sub(SLACK) as f64;
            let high = (avail0.max(avail1) + SLACK) as f64;
            attempts.push(format!(
                "agent {avail}, kernel {avail0} before and {avail1} after"
            ));
            if (low..=high).contains(&avail) {
                return Ok(());
            }
        }
        bail!(
            "{who}: memory available never within {SLACK} bytes of /proc/meminfo MemAvailable \
             read around the sample:\n  {}",
            attempts.join("\n  ")
        )
    })
}

#[test]
fn cpu_and_load_match_the_kernel() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_formed_cluster(1, |c| {
        let who = node_job(c.name(0));
        let hz: f64 = run_in(c, 0, &["getconf", "CLK_TCK"])?
            .trim()
            .parse()
            .context("getconf CLK_TCK")?;
        let series = |cpu: &str, mode: &str| {
            format!("banyan_node_cpu_seconds_total{{cpu=\"{cpu}\",mode=\"{mode}\"}}")
        };
        // The agent's seconds, back in the kernel's ticks (exact: ticks / hz, rounded back).
        let ticks = |set: &MetricSet, mode: &str| -> Result<i64> {
            Ok((need_counter(set, &series("all", mode), &who)? * hz).round() as i64)
        };

        let first = bracket(c, 0, |c| read_stat(c, 0))?;
        ensure!(
            first.before.cores == first.after.cores,
            "the number of cores changed while sampling"
        );
        let cpus = need_gauge(&first.sample, "banyan_node_cpus", &who)?.last;
        ensure!(
            cpus == first.before.cores.len() as f64,
            "{who}: banyan_node_cpus {cpus}, /proc/stat has cpuN lines for {:?}",
            first.before.cores
        );
        // Every mode, for all cores and for each core.
        let labels: Vec<String> = std::iter::once("all".to_owned())
            .chain(first.before.cores.iter().cloned())
            .collect();
        let all_series: Vec<String> = labels
            .iter()
            .flat_map(|cpu| MODES.iter().map(move |mode| series(cpu, mode)))
            .collect();

        // A few waves' samples, each at least as large as the one before, series by series.
        let mut samples = vec![first.sample.clone()];
        while samples.len() < 4 {
            let last = sampled_ms(samples.last().unwrap_or(&first.sample)).unwrap_or(0);
            samples.push(sample_after(c, 0, last)?);
        }
        let last = bracket(c, 0, |c| read_stat(c, 0))?;
        samples.push(last.sample.clone());
        for (k, pair) in samples.windows(2).enumerate() {
            for name in &all_series {
                let a = need_counter(&pair[0], name, &who)?;
                let b = need_counter(&pair[1], name, &who)?;
                ensure!(
                    b >= a,
                    "{who}: {name} went back from {a} to {b} (samples {k} and {})",
                    k + 1
                );
            }
        }

        // Between the two bracketed samples, each mode grew by what the kernel counted: at least
        // its growth between the inner reads, at most its growth between the outer ones. proc(5)
        // warns that idle and iowait can step back by a little; a tick per core either way is
        // allowed there, which a counter re-based on such a step would exceed by far.
        let mut grew = 0;
        for (m, mode) in MODES.iter().enumerate() {
            let agent = ticks(&last.sample, mode)? - ticks(&first.sample, mode)?;
            let inner = last.before.all[m] as i64 - first.after.all[m] as i64;
            let outer = last.after.all[m] as i64 - first.before.all[m] as i64;
            let slack = if *mode == "idle" || *mode == "iowait" {
                first.before.cores.len() as i64
            } else {
                0
            };
            ensure!(
                inner - slack <= agent && agent <= outer + slack,
                "{who}: cpu=\"all\" mode {mode} grew by {agent} ticks between two samples; the \
                 kernel's cpu line grew by {inner} between reads inside them and by {outer} \
                 between reads around them"
            );
            grew += agent;
        }
        ensure!(grew > 0, "{who}: no CPU time counted over several waves");

        // The load averages are what /proc/loadavg says. The kernel recomputes them every 5 s,
        // so a sample taken between two reads less than 4.5 s apart shows one of the two.
        let mut attempts = Vec::new();
        for _ in 0..10 {
            let b = bracket(c, 0, |c| read_loadavg(c, 0))?;
            if b.to_ms - b.from_ms >= 4_500 {
                attempts.push(format!("reads {} ms apart", b.to_ms - b.from_ms));
                continue;
            }
            for (k, name) in [
                "banyan_node_load1",
                "banyan_node_load5",
                "banyan_node_load15",
            ]
            .iter()
            .enumerate()
            {
                let agent = need_gauge(&b.sample, name, &who)?.last;
                ensure!(
                    same_float(agent, b.before[k]) || same_float(agent, b.after[k]),
                    "{who}: {name} is {agent}; /proc/loadavg said {} before the sample and {} \
                     after",
                    b.before[k],
                    b.after[k]
                );
            }
            return Ok(());
        }
        bail!("never read /proc/loadavg twice within 4.5 s around a sample: {attempts:?}")
    })
}

/// Bytes the test sends from one host to another.
const PAYLOAD: u64 = 20 << 20;

/// What else the counted interval may carry besides the payload: the frames' headers (a few per
/// cent of it) and the mesh's own traffic (reports, heartbeats, the test's queries) for the seconds
/// the brackets take.
const NET_SLACK: u64 = PAYLOAD / 10 + (8 << 20);

/// Listens on the port given as its argument, reads until EOF, prints how much it got.
const RECEIVER: &str = r#"
import socket, sys
port = int(sys.argv[1])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", port))
srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()
got = 0
while True:
    data = conn.recv(1 << 20)
    if not data:
        break
    got += len(data)
print("received", got, flush=True)
conn.close()
"#;

/// Connects to ADDR PORT (retrying while the receiver starts), sends N bytes, and returns
/// once the receiver has read them all and closed.
const SENDER: &str = r#"
import socket, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for _ in range(300):
    try:
        s = socket.create_connection((addr, port), timeout=30)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("cannot connect to %s:%d" % (addr, port))
chunk = b"x" * 65536
left = n
while left:
    left -= s.send(chunk[: min(left, len(chunk))])
s.shutdown(socket.SHUT_WR)
s.recv(1)
print("sent", n)
"#;

/// Whether python3 runs here; like `Testnet::require`, missing is an error unless `BANYAN_TEST_LENIENT=1`.
fn require_python() -> Result<bool> {
    let works = std::process::Command::new("python3")
        .args(["-c", "pass"])
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(true);
    }
    if banyan_tests::support::strict() {
        bail!("python3 is needed to send test traffic and is missing (BANYAN_TEST_LENIENT=1 skips instead)");
    }
    banyan_tests::support::note_skip("python3 is needed to send test traffic");
    Ok(false)
}

/// Sends [`PAYLOAD`] bytes over TCP from agent `from`'s host to agent `to`'s.
fn send_traffic(c: &mut Cluster, from: usize, to: usize) -> Result<()> {
    const PORT: &str = "5917";
    let log = c.dir().join("receiver.log");
    let pid = c
        .testnet()
        .spawn(to, Path::new("python3"), &["-c", RECEIVER, PORT], &[], &log)?;
    let addr = c.hosts()[to].addr.to_string();
    let sent = run_in(
        c,
        from,
        &["python3", "-c", SENDER, &addr, PORT, &PAYLOAD.to_string()],
    );
    // The receiver prints its count before it exits; the sender returns after the receiver closed.
    let received = c.poll("the receiver to finish", FRESH, |_| {
        let text = fs::read_to_string(&log).unwrap_or_default();
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("received "))
            .map(str::to_owned))
    });
    // Reaps it (it has exited, or is killed if the sender failed).
    c.testnet().kill(pid)?;
    let sent = sent?;
    let received = received.with_context(|| {
        format!(
            "receiver log: {}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    ensure!(
        sent.trim() == format!("sent {PAYLOAD}"),
        "the sender said {sent:?}"
    );
    ensure!(
        received.0.trim() == PAYLOAD.to_string(),
        "the receiver got {} bytes of {PAYLOAD}",
        received.0
    );
    Ok(())
}

#[test]
fn network_counters_count_the_traffic_sent() -> Result<()> {
    if !Testnet::require()? || !require_python()? {
        return Ok(());
    }
    with_formed_cluster(2, |c| {
        let (sender, receiver) = (0, 1);
        let rx_series = format!("banyan_node_network_receive_bytes_total{{interface=\"{IFACE}\"}}");
        let tx_series =
            format!("banyan_node_network_transmit_bytes_total{{interface=\"{IFACE}\"}}");

        let rx_start = bracket(c, receiver, |c| read_net(c, receiver))?;
        let tx_start = bracket(c, sender, |c| read_net(c, sender))?;
        send_traffic(c, sender, receiver)?;
        let rx_end = bracket(c, receiver, |c| read_net(c, receiver))?;
        let tx_end = bracket(c, sender, |c| read_net(c, sender))?;

        let checks = [
            ("received", receiver, &rx_series, &rx_start, &rx_end, 0),
            ("transmitted", sender, &tx_series, &tx_start, &tx_end, 1),
        ];
        for (verb, i, name, start, end, column) in checks {
            let who = node_job(c.name(i));
            let pick = |pair: (u64, u64)| if column == 0 { pair.0 } else { pair.1 };
            let agent =
                need_counter(&end.sample, name, &who)? - need_counter(&start.sample, name, &who)?;
            let inner = pick(end.before) - pick(start.after);
            let outer = pick(end.after) - pick(start.before);
            // The kernel saw the payload on this interface, or the test measured nothing.
            ensure!(
                inner >= PAYLOAD,
                "{}'s {IFACE} {verb} {inner} bytes while {PAYLOAD} were sent",
                c.name(i)
            );
            ensure!(
                agent >= PAYLOAD as f64,
                "{who}: {name} grew by {agent} while {PAYLOAD} bytes were {verb}"
            );
            ensure!(
                agent <= (PAYLOAD + NET_SLACK) as f64,
                "{who}: {name} grew by {agent} while {PAYLOAD} bytes were {verb} (allowing \
                 {NET_SLACK} for headers and the mesh's own traffic)"
            );
            eprintln!(
                "{who}: {name} grew by {agent}; {PAYLOAD} bytes {verb}; the kernel's {IFACE} \
                 counter grew by {inner} to {outer}"
            );
            ensure!(
                inner as f64 <= agent && agent <= outer as f64,
                "{who}: {name} grew by {agent} between two samples; the kernel's {IFACE} \
                 {verb} bytes grew by {inner} between reads inside them and by {outer} between \
                 reads around them"
            );
        }
        Ok(())
    })
}

// ----- Sums at the root -------------------------------------------------------------------------

/// The site counter and gauge the sum test writes into the agents' metrics files.
const COUNTER: &str = "test_metrics_done_total";
const GAUGE: &str = "test_metrics_level";

/// Counter values are multiples of this, one bit per value given.
const UNIT: f64 = 1000.0;

/// Bits of the counter values: agent `i` starts with bit `i`; bumps take the bits from
/// [`FIRST_BUMP_BIT`] and [`SECOND_BUMP_BIT`] on, one per bumped agent.
const FIRST_BUMP_BIT: u32 = 16;
const SECOND_BUMP_BIT: u32 = 32;

/// Gauge values are `2^bit`: agent `i` first has bit `i`, then bit `i + GAUGE_SHIFT`.
const GAUGE_SHIFT: u32 = 16;

/// What the counter total must look like: multiples of [`UNIT`] with every `required` bit set and
/// no bit outside `allowed`.
#[derive(Debug, Clone, Copy)]
struct CounterRule {
    required: u64,
    allowed: u64,
}

impl CounterRule {
    fn bits(v: f64) -> Result<u64> {
        let units = v / UNIT;
        ensure!(
            units >= 0.0 && units.fract() == 0.0 && units < 2f64.powi(53),
            "{v} is not a whole number of {UNIT}"
        );
        Ok(units as u64)
    }

    fn check(&self, v: f64) -> Result<()> {
        let bits = Self::bits(v)?;
        ensure!(
            bits & self.required == self.required,
            "{v} lacks counts that were already in: bits {:#x} missing",
            self.required & !bits
        );
        ensure!(
            bits & !self.allowed == 0,
            "{v} holds counts no node ever had (bits {:#x}): something was counted twice",
            bits & !self.allowed
        );
        Ok(())
    }
}

/// Decodes a merged gauge whose every possible node value is a distinct power of two into the
/// values it merged, by node; fails when the fields disagree with one sample per merged node (a node
/// merged twice, or with two of its values, or a value no node has).
fn decode_gauge(g: &Gauge, allowed: &BTreeMap<String, Vec<u32>>) -> Result<BTreeMap<String, f64>> {
    ensure!(
        g.total >= 0.0 && g.total.fract() == 0.0 && g.total < 2f64.powi(53),
        "total {} is not a sum of distinct powers of two",
        g.total
    );
    let mut bits = g.total as u64;
    let mut merged = BTreeMap::new();
    for (node, node_bits) in allowed {
        for &b in node_bits {
            if bits & (1 << b) != 0 {
                bits &= !(1 << b);
                let value = (1u64 << b) as f64;
                if let Some(other) = merged.insert(node.clone(), value) {
                    bail!("{node} is merged with two values, {other} and {value}: {g:?}");
                }
            }
        }
    }
    ensure!(bits == 0, "total holds {bits:#x}, which no node has: {g:?}");
    let values: Vec<f64> = merged.values().copied().collect();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    ensure!(
        g.hits == values.len() as u64,
        "hits {} but the total is the sum of {} node values {merged:?}: {g:?}",
        g.hits,
        values.len()
    );
    if !values.is_empty() {
        ensure!(
            g.min == min && g.max == max,
            "min/max {}/{} but the merged values {merged:?} give {min}/{max}",
            g.min,
            g.max
        );
        ensure!(
            values.contains(&g.last),
            "last {} is none of the merged values {merged:?}",
            g.last
        );
    }
    Ok(merged)
}

/// What the root's `main` showed while it was watched.
#[derive(Debug, Default)]
struct Seen {
    counters: Vec<f64>,
    gauges: Vec<BTreeMap<String, f64>>,
}

impl Seen {
    fn note(&mut self, counter: Option<f64>, gauge: Option<BTreeMap<String, f64>>) {
        if let Some(v) = counter {
            if self.counters.last() != Some(&v) {
                self.counters.push(v);
            }
        }
        if let Some(g) = gauge {
            if self.gauges.last() != Some(&g) {
                self.gauges.push(g);
            }
        }
    }
}

/// The last wave the root completed, from `/status`.
fn last_wave(c: &Cluster) -> Result<u64> {
    Ok(c.http_get("/status")?
        .pointer("/last_wave/wave")
        .and_then(Value::as_u64)
        .unwrap_or(0))
}

/// What `main` must show, while it is watched and in the end.
struct Expect<'a> {
    /// Every answer's counter total obeys this (and never goes back).
    rule: CounterRule,
    /// The values each node's gauge may have (as powers of two).
    gauge_bits: &'a BTreeMap<String, Vec<u32>>,
    /// Whether every answer's gauge must merge each node at most once; otherwise only the final
    /// one is decoded.
    every_gauge: bool,
    /// The counter total in the end.
    counter: f64,
    /// The values the gauge merges in the end, by node.
    gauge: &'a BTreeMap<String, f64>,
    /// Waves to keep watching once the end is reached.
    waves: u64,
}

/// Polls `main` until it shows what `want` expects in the end and `ready` holds for the topology,
/// then for `want.waves` more waves, and checks every answer on the way: the test fails at the
/// first wrong one.
fn watch_main(
    c: &Cluster,
    what: &str,
    want: &Expect,
    ready: impl Fn(&Topology) -> bool,
) -> Result<()> {
    let mut seen = Seen::default();
    let mut done_at: Option<u64> = None;
    let mut last_topo = String::new();
    let watched = c.poll(what, HEAL, |c| {
        let wave = last_wave(c)?;
        let main = job_metrics(c, "main")?;
        let topo = c.topology()?;
        last_topo = topo.summary();
        let counter = counter_of(&main, COUNTER);
        let gauge = gauge_of(&main, GAUGE);
        let verdict = (|| -> Result<Option<BTreeMap<String, f64>>> {
            if let Some(v) = counter {
                want.rule.check(v).context("main's counter")?;
                if let Some(prev) = seen.counters.last() {
                    ensure!(v >= *prev, "main's counter went back from {prev} to {v}");
                }
            }
            match gauge.map(|g| (decode_gauge(&g, want.gauge_bits), g)) {
                None => Ok(None),
                Some((Ok(decoded), _)) => Ok(Some(decoded)),
                Some((Err(e), g)) if want.every_gauge => {
                    Err(e.context(format!("main's gauge {g:?}")))
                }
                Some((Err(_), _)) => Ok(None),
            }
        })();
        let decoded = match verdict {
            Ok(d) => d,
            // A wrong value is a finding, not a reason to poll again: stop and report it.
            Err(e) => return Ok(Some(Err(e))),
        };
        seen.note(counter, decoded.clone());
        if done_at.is_none()
            && counter == Some(want.counter)
            && decoded.as_ref() == Some(want.gauge)
            && ready(&topo)
        {
            done_at = Some(wave);
        }
        Ok(done_at.filter(|w| wave >= w + want.waves).map(|_| Ok(())))
    });
    let outcome = watched.and_then(|(verdict, _)| verdict);
    outcome.with_context(|| {
        format!(
            "{what}: expected counter {} and gauge {:?} in the end; main showed counters {:?} \
             and gauges {:?}\ntopology at the last answer:\n{last_topo}",
            want.counter, want.gauge, seen.counters, seen.gauges
        )
    })
}

/// The fields of a merged gauge that do not move from wave to wave while its nodes' values stay:
/// min, max, hits, total.
type Stable = (f64, f64, u64, f64);

fn stable(g: &Gauge) -> Stable {
    (g.min, g.max, g.hits, g.total)
}

/// `main`'s test counter and gauge, for telling whether it moved.
fn main_state(c: &Cluster) -> Result<(Option<f64>, Option<Stable>)> {
    let main = job_metrics(c, "main")?;
    Ok((
        counter_of(&main, COUNTER),
        gauge_of(&main, GAUGE).map(|g| stable(&g)),
    ))
}

/// Fetches every one of `live` through `Node: NAME`, checks each shows exactly the values it was
/// given (`(counter, level)`), and that `main` equals their merge plus what the `dead` nodes last
/// counted: the counter's total, and the gauge's min, max, hits and total. The static collector
/// gauges (memory and swap totals, cores) must add up across the nodes too.
///
/// `main` is read before and after the nodes; should it change in between (a leaf moved by the
/// root's compaction is missing from one wave's gauges), the whole comparison is made again.
fn check_nodes_add_up(
    c: &Cluster,
    live: &BTreeMap<String, (f64, f64)>,
    dead: &BTreeMap<String, f64>,
) -> Result<()> {
    const STATIC: [&str; 3] = [
        "banyan_node_memory_total_bytes",
        "banyan_node_swap_total_bytes",
        "banyan_node_cpus",
    ];
    let mut moved = Vec::new();
    let (verdict, _) = c
        .poll("main to hold still while the nodes are read", FRESH, |c| {
            let before = main_state(c)?;
            let mut merged = MetricSet::new();
            for (name, (counter, level)) in live {
                let who = node_job(name);
                let set = node_metrics(c, name)?;
                let check = (|| -> Result<()> {
                    let got = need_counter(&set, COUNTER, &who)?;
                    ensure!(
                        got == *counter,
                        "{who}: {COUNTER} is {got}, set to {counter}"
                    );
                    let g = need_gauge(&set, GAUGE, &who)?;
                    ensure!(
                        g.hits == 1 && [g.min, g.max, g.total, g.last] == [*level; 4],
                        "{who}: {GAUGE} is {g:?}, one sample of {level} expected"
                    );
                    for key in [COUNTER, GAUGE].into_iter().chain(STATIC) {
                        let value = set
                            .get(key)
                            .with_context(|| format!("{who} has no {key}"))?;
                        merged.merge_value(key, value);
                    }
                    Ok(())
                })();
                if check.is_err() {
                    return Ok(Some(check));
                }
            }
            let main = job_metrics(c, "main")?;
            let after = (
                counter_of(&main, COUNTER),
                gauge_of(&main, GAUGE).map(|g| stable(&g)),
            );
            // A main without the gauge is a tree re-forming (every child of the root re-attached
            // within the wave, e.g. after a stall of the root on a loaded machine): not still.
            if after != before || after.1.is_none() {
                moved.push((before, after));
                return Ok(None);
            }
            let check = (|| -> Result<()> {
                let dead_sum: f64 = dead.values().sum();
                let nodes_sum = need_counter(&merged, COUNTER, "the nodes")?;
                let total = need_counter(&main, COUNTER, "main")?;
                ensure!(
                    total == nodes_sum + dead_sum,
                    "main's {COUNTER} is {total}; the live nodes show {nodes_sum} in all and the \
                 dead ones last counted {dead_sum} ({dead:?})"
                );
                for name in std::iter::once(GAUGE).chain(STATIC) {
                    let want = need_gauge(&merged, name, "the nodes")?;
                    let got = need_gauge(&main, name, "main")?;
                    ensure!(
                        stable(&got) == stable(&want),
                        "main's {name} is {got:?}; the merge of the live nodes' is {want:?}"
                    );
                }
                Ok(())
            })();
            Ok(Some(check))
        })
        .with_context(|| format!("main kept changing: {moved:?}"))?;
    verdict
}

/// Checks `GET /metrics?job=ID` shows `counter` and `gauge` (a merged gauge is exposed as its total).
fn check_exposition(c: &Cluster, id: &str, counter: f64, gauge: f64) -> Result<()> {
    let path = format!("/metrics?job={}", encode(id));
    let (status, body) = http_request(
        c.http_addr(),
        "GET",
        &path,
        None,
        None,
        Duration::from_secs(15),
    )?;
    let text = String::from_utf8_lossy(&body);
    ensure!(status == 200, "GET {path}: HTTP {status}: {text}");
    let samples = exposition::parse(&text).with_context(|| format!("GET {path}"))?;
    for (name, want) in [(COUNTER, counter), (GAUGE, gauge)] {
        let key = exposition::series_key(name, &[("banyan_job", id)]);
        let got: Vec<f64> = samples
            .iter()
            .filter(|s| s.name == key)
            .map(|s| s.value)
            .collect();
        ensure!(
            got == [want],
            "GET {path}: {key} is {got:?}, expected {want}"
        );
    }
    Ok(())
}

/// Every node below `name` in `topo`, and `name` itself.
fn subtree(topo: &Topology, name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![name.to_owned()];
    while let Some(n) = todo.pop() {
        if out.insert(n.clone()) {
            todo.extend(topo.children_of(&n));
        }
    }
    out
}

/// The attached agent with the largest subtree (as mesh.rs picks its victims).
fn biggest_inner(topo: &Topology) -> Result<String> {
    topo.agents()
        .filter(|n| n.attached() && !n.children.is_empty())
        .map(|n| (subtree(topo, &n.name).len(), n.name.clone()))
        .max()
        .map(|(_, name)| name)
        .with_context(|| format!("no inner agent in\n{}", topo.summary()))
}

/// The agents of the sum tests.
const AGENTS: usize = 7;

/// The values the sum tests give the agents, by name.
struct Values {
    counters: BTreeMap<String, f64>,
    levels: BTreeMap<String, f64>,
}

impl Values {
    /// `(counter, level)` of each of `names`.
    fn of(&self, names: &[String]) -> BTreeMap<String, (f64, f64)> {
        names
            .iter()
            .map(|n| (n.clone(), (self.counters[n], self.levels[n])))
            .collect()
    }

    fn levels_of(&self, names: &[String]) -> BTreeMap<String, f64> {
        names.iter().map(|n| (n.clone(), self.levels[n])).collect()
    }

    fn counter_sum(&self) -> f64 {
        self.counters.values().sum()
    }
}

/// Gives agent `i` the counter `1000 * 2^i` and the gauge `2^i`, and waits until the tree has
/// formed and `main` holds every value, checking each answer's counter on the way (the gauge too
/// when `every_gauge`). Returns the values and the gauge's bits.
fn first_values(
    c: &mut Cluster,
    every_gauge: bool,
) -> Result<(Values, BTreeMap<String, Vec<u32>>)> {
    let names = c.names();
    let mut values = Values {
        counters: BTreeMap::new(),
        levels: BTreeMap::new(),
    };
    let mut bits = BTreeMap::new();
    for (i, name) in names.iter().enumerate() {
        let (counter, level) = (UNIT * (1u64 << i) as f64, (1u64 << i) as f64);
        c.set_metric(i, COUNTER, counter)?;
        c.set_metric(i, GAUGE, level)?;
        values.counters.insert(name.clone(), counter);
        values.levels.insert(name.clone(), level);
        bits.insert(name.clone(), vec![i as u32]);
    }
    // While the tree forms, main only ever holds some nodes' values, each once.
    watch_main(
        c,
        "main to hold every node's values",
        &Expect {
            rule: CounterRule {
                required: 0,
                allowed: (1 << names.len()) - 1,
            },
            gauge_bits: &bits,
            every_gauge,
            counter: values.counter_sum(),
            gauge: &values.levels,
            waves: 3,
        },
        |t| t.healthy(&names),
    )?;
    Ok((values, bits))
}

/// Kills the attached agent with the largest subtree; returns its index and the names in its
/// subtree (itself included).
fn kill_biggest_inner(c: &mut Cluster) -> Result<(usize, BTreeSet<String>)> {
    let before = c.topology()?;
    let victim = biggest_inner(&before)?;
    let below = subtree(&before, &victim);
    ensure!(
        below.len() >= 3,
        "{victim}'s subtree is only {below:?}:\n{}",
        before.summary()
    );
    let i = c.index_of(&victim).context("the victim is not an agent")?;
    c.kill_agent(i)?;
    Ok((i, below))
}

#[test]
fn root_sums_equal_the_per_node_values_through_a_failure() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(AGENTS, |c| {
        let names = c.names();
        let all_bits: u64 = (1 << AGENTS) - 1;
        // The gauge is checked in the end and whenever main holds still, not at every answer:
        // see `a_moved_node_is_merged_once_in_main`.
        let (mut values, first_bits) = first_values(c, false)?;

        let jobs: BTreeSet<String> = c
            .http_get("/job/list")?
            .as_array()
            .context("/job/list is not a list")?
            .iter()
            .filter_map(|j| j.get("jobid").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let want_jobs: BTreeSet<String> = std::iter::once("main".to_owned())
            .chain(names.iter().map(|n| node_job(n)))
            .collect();
        ensure!(jobs == want_jobs, "/job/list lists {jobs:?}");
        check_nodes_add_up(c, &values.of(&names), &BTreeMap::new())?;
        check_exposition(
            c,
            "main",
            values.counter_sum(),
            values.levels.values().sum(),
        )?;
        for name in &names {
            check_exposition(
                c,
                &node_job(name),
                values.counters[name],
                values.levels[name],
            )?;
        }

        // Kill the agent with the largest subtree. At once, agents outside that subtree (whose
        // reports keep flowing) count more; the orphans keep their values until they are placed
        // again. Main must never lose a count nor count one twice while the tree heals.
        let (dead, below) = kill_biggest_inner(c)?;
        let victim = names[dead].clone();
        let survivors: Vec<usize> = (0..AGENTS).filter(|&i| i != dead).collect();
        let live_names: Vec<String> = survivors.iter().map(|&i| names[i].clone()).collect();
        let outside: Vec<usize> = survivors
            .iter()
            .copied()
            .filter(|&i| !below.contains(&names[i]))
            .collect();
        ensure!(!outside.is_empty(), "no agent outside {victim}'s subtree");
        let mut bump_bits = 0u64;
        for (k, &i) in outside.iter().enumerate() {
            let bit = FIRST_BUMP_BIT + k as u32;
            bump_bits |= 1 << bit;
            let value = values.counters[&names[i]] + UNIT * (1u64 << bit) as f64;
            c.set_metric(i, COUNTER, value)?;
            values.counters.insert(names[i].clone(), value);
        }
        watch_main(
            c,
            &format!("main after killing {victim}"),
            &Expect {
                rule: CounterRule {
                    required: all_bits,
                    allowed: all_bits | bump_bits,
                },
                gauge_bits: &first_bits,
                every_gauge: false,
                counter: values.counter_sum(),
                gauge: &values.levels_of(&live_names),
                waves: 3,
            },
            |t| matches!(t.status_of(&victim), "lost" | "stale") && t.healthy(&live_names),
        )?;
        // The dead agent's last count stays in main; its level does not.
        let dead_last = BTreeMap::from([(victim.clone(), values.counters[&victim])]);
        check_nodes_add_up(c, &values.of(&live_names), &dead_last)
            .with_context(|| format!("after {victim} died"))?;

        // In the healed tree, every survivor (the former orphans too, now counting through new
        // parents, with what they sent to the dead one as debt) counts more and changes its level.
        let required = all_bits | bump_bits;
        let mut second_bits = 0u64;
        let mut gauge_bits: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (k, &i) in survivors.iter().enumerate() {
            let bit = SECOND_BUMP_BIT + k as u32;
            second_bits |= 1 << bit;
            let name = &names[i];
            let value = values.counters[name] + UNIT * (1u64 << bit) as f64;
            let level = (1u64 << (i as u32 + GAUGE_SHIFT)) as f64;
            c.set_metric(i, COUNTER, value)?;
            c.set_metric(i, GAUGE, level)?;
            values.counters.insert(name.clone(), value);
            values.levels.insert(name.clone(), level);
            gauge_bits.insert(name.clone(), vec![i as u32, i as u32 + GAUGE_SHIFT]);
        }
        watch_main(
            c,
            "main after every survivor changed its values",
            &Expect {
                rule: CounterRule {
                    required,
                    allowed: required | second_bits,
                },
                gauge_bits: &gauge_bits,
                every_gauge: false,
                counter: values.counter_sum(),
                gauge: &values.levels_of(&live_names),
                waves: 3,
            },
            |t| t.healthy(&live_names),
        )?;
        check_nodes_add_up(c, &values.of(&live_names), &dead_last)
            .context("after the survivors changed their values")?;
        let live_levels: f64 = values.levels_of(&live_names).values().sum();
        check_exposition(c, "main", values.counter_sum(), live_levels)
    })
}

/// A merged gauge at the root (what `/metrics` exposes as the cluster's total of a level) holds
/// each live node once, at every moment, also while the tree heals and leaves move.
///
/// A moved node is in its old parent's last report and sends its values to the new parent at
/// once; counters are safe (its debt cancels them), gauges carry no debt. The tree keeps it once:
/// the old parent re-sends its wave without the child as soon as it leaves, and the new parent
/// does not count a child's report for the wave it attached in.
#[test]
fn a_moved_node_is_merged_once_in_main() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(AGENTS, |c| {
        let names = c.names();
        let (values, bits) = first_values(c, true)?;
        let (dead, _) = kill_biggest_inner(c)?;
        let victim = names[dead].clone();
        let live_names: Vec<String> = names.iter().filter(|n| **n != victim).cloned().collect();
        let all_bits: u64 = (1 << AGENTS) - 1;
        // Healing places the orphans and may promote a leaf; compaction then moves the deepest
        // leaves up. Watch all of it, and a while after.
        watch_main(
            c,
            &format!("main after killing {victim}"),
            &Expect {
                rule: CounterRule {
                    required: all_bits,
                    allowed: all_bits,
                },
                gauge_bits: &bits,
                every_gauge: true,
                counter: values.counter_sum(),
                gauge: &values.levels_of(&live_names),
                waves: 10,
            },
            |t| matches!(t.status_of(&victim), "lost" | "stale") && t.healthy(&live_names),
        )
    })
}

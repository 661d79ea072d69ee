//! bench-hv: `banyan hv status --nvms` and `disable` + `enable` of OpenStack hypervisors, beside
//! the same sequence done the HLT way (`openstack-hlt-manage`: the `openstack` CLI of
//! python3-openstackclient per call, one host after the other, and under `pdsh -R exec`).
//!
//! Set-up: one cluster of the largest size measured (a root on this machine, one agent per test
//! host) and one real Keystone + Placement + Nova (`scripts/lib/openstack`, fake virt driver) with
//! one nova-compute per test host, run by that host's agent as the `nova-compute` service unit,
//! as in tests/tests/hv.rs. Smaller sizes use the first N hosts. Every host carries `--vms`
//! servers (booted directly through Nova) before each disable, so that every disable deletes the
//! same number.
//!
//! Timed, per size, with the tools taking turns so that the machine's other load falls on all:
//! - `banyan hv status NODES --nvms --json`, the CLI process end to end;
//! - `banyan hv disable NODES --for-real`, then `enable NODES --for-real` (the sum);
//! - the HLT way, per host: status = `openstack compute service list --service nova-compute
//!   --host H -f json` + `openstack server list --all-projects --host H -f json`; disable =
//!   `openstack compute service set --disable --disable-reason R H nova-compute`, start the
//!   daemons (as the HLT does before deleting), list the servers, `openstack server delete` each,
//!   poll the list each second until empty, stop the daemons; enable = start the daemons, poll
//!   `openstack compute service list` each second until up, `openstack compute service set
//!   --enable H nova-compute`. The daemons are started and stopped with `scripts/testnet exec
//!   HOST` (the compute's start script; SIGTERM to the pid in its pid file, waiting until it has
//!   gone), standing in for the HLT's ssh. Sequential: a bash loop over the hosts; pdsh:
//!   `pdsh -S -R exec -f 32 -w HOSTS hlt-host OP %h`.
//!
//! Between a disable and the enable, outside the timing and the counts, the benchmark checks
//! Nova's state and waits until Nova reports each host down, so that every enable (banyan's and
//! the HLT way's alike) waits for the restarted compute's own report, not the stopped one's
//! last (Nova says up for service_down_time, 6 s, after it); after the enable it boots the
//! servers again.
//!
//! OpenStack API calls are counted the same way for every side, at the servers, over each timed
//! sequence: the request lines of nova-api's log, and the requests Keystone and Placement (their
//! uwsgi logs) received from the control host's address (the tools, and the control plane's own
//! calls they cause: nova-api validating each token). The computes' own calls (from the test
//! hosts' addresses: their reports, a restarted compute registering) are the same whoever
//! restarts them and are left out. banyan's own count (the root's `openstack_calls` per action)
//! is printed beside. Every answer is checked (rows, summaries, Nova's state after each
//! sequence); a wrong one stops the benchmark. It asserts nothing about time.

use banyan_tests::support::percentile;
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use banyan_tests::cluster::{banyan_cli, Cluster, ClusterOptions};
use banyan_tests::openstack::OpenStack;
use banyan_tests::support::workspace_root;
use banyan_tests::testnet::Testnet;
use serde_json::Value;

const USAGE: &str = "\
usage: bench-hv [--sizes 2,4,8] [--runs N] [--seq-runs N] [--vms N]
  --sizes     numbers of test hosts measured (default 2,4,8; sizes that do not fit in the
              machine's available memory are left out, with a note)
  --runs      timed runs of banyan and of the pdsh way at each size (default 3)
  --seq-runs  timed runs of the sequential HLT way at each size (default 1: it takes minutes at
              8 hosts; 0 leaves it out)
  --vms       servers per host before each disable (default 2)
examples: scripts/bench-hv --sizes 2 --runs 1
          scripts/bench-hv --sizes 2,4,8,16 --runs 5 --seq-runs 2";

/// Agents joining on a busy two-core machine.
const FORM: Duration = Duration::from_secs(180);
/// A (re)started nova-compute is up in Nova within seconds; generous on a loaded machine.
const NOVA_SEES: Duration = Duration::from_secs(120);
const ACTIVE: Duration = Duration::from_secs(180);
/// Memory: the control plane, one nova-compute (plus its agent), and a margin for the rest.
const CONTROL_MIB: u64 = 1200;
const PER_HOST_MIB: u64 = 180;
const MARGIN_MIB: u64 = 1024;

struct Args {
    sizes: Vec<usize>,
    runs: usize,
    seq_runs: usize,
    vms: usize,
}

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        sizes: vec![2, 4, 8],
        runs: 3,
        seq_runs: 1,
        vms: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || -> Result<String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| anyhow!("{flag} needs a value (try --help)"))
        };
        let whole = |v: &str| -> Result<usize> {
            v.trim()
                .parse()
                .map_err(|_| anyhow!("{flag}: '{v}' is not a whole number"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--runs" => args.runs = whole(&value()?)?.max(1),
            "--seq-runs" => args.seq_runs = whole(&value()?)?,
            "--vms" => args.vms = whole(&value()?)?.max(1),
            "--sizes" => {
                let mut s = value()?.split(',').map(whole).collect::<Result<Vec<_>>>()?;
                s.sort_unstable();
                s.dedup();
                ensure!(
                    s.iter().all(|&n| (1..=100).contains(&n)),
                    "--sizes: each from 1 to 100"
                );
                args.sizes = s;
            }
            other => bail!("unknown argument '{other}' (try --help)"),
        }
    }
    Ok(Some(args))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    percentile(&s, 0.5)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// OpenStack API calls of one sequence, counted at the servers.
#[derive(Default, Clone, Copy)]
struct Calls {
    nova: usize,
    /// Tokens issued (`POST /v3/auth/tokens`).
    ks_tokens: usize,
    /// Keystone requests from the control host other than token validations: tokens issued and
    /// version discovery (`GET /v3`).
    keystone: usize,
    /// Token validations (`GET /v3/auth/tokens`) from the control host: nova-api's, one per
    /// authenticated Nova call, but also Placement's of the computes' own calls, which
    /// Keystone's log cannot tell apart: shown, not in the total.
    ks_validations: usize,
    placement: usize,
}

impl std::ops::Add for Calls {
    type Output = Calls;
    fn add(self, o: Calls) -> Calls {
        Calls {
            nova: self.nova + o.nova,
            ks_tokens: self.ks_tokens + o.ks_tokens,
            keystone: self.keystone + o.keystone,
            ks_validations: self.ks_validations + o.ks_validations,
            placement: self.placement + o.placement,
        }
    }
}

impl Calls {
    fn total(&self) -> usize {
        self.nova + self.keystone + self.placement
    }
}

/// What one measured thing gathered over the runs.
#[derive(Default)]
struct Series {
    wall_s: Vec<f64>,
    calls: Vec<Calls>,
    /// The root's own count of its OpenStack calls (banyan only).
    banyan_calls: Vec<f64>,
}

impl Series {
    fn add(&mut self, wall: f64, calls: Calls) {
        self.wall_s.push(wall);
        self.calls.push(calls);
    }

    fn calls_median(&self, f: impl Fn(&Calls) -> usize) -> f64 {
        median(&self.calls.iter().map(|c| f(c) as f64).collect::<Vec<_>>())
    }

    fn row(&self, label: &str) -> String {
        if self.wall_s.is_empty() {
            return format!("  {label:<21} (not run)");
        }
        let own = if self.banyan_calls.is_empty() {
            "-".to_string()
        } else {
            format!("{:.0}", median(&self.banyan_calls))
        };
        format!(
            "  {label:<21} {:>4} {:>8.2} {:>8.2} {:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>6.0} {:>6} {:>8.0}",
            self.wall_s.len(),
            median(&self.wall_s),
            max(&self.wall_s),
            self.calls_median(|c| c.nova),
            self.calls_median(|c| c.ks_tokens),
            self.calls_median(|c| c.keystone),
            self.calls_median(|c| c.placement),
            self.calls_median(Calls::total),
            own,
            self.calls_median(|c| c.ks_validations),
        )
    }
}

/// The servers' logs, read from where the last mark left them.
struct Logs {
    nova: PathBuf,
    keystone: PathBuf,
    placement: PathBuf,
    root: PathBuf,
    /// The control host's address (the tools' and the control plane's source address).
    control: String,
}

/// Byte offsets into the logs.
#[derive(Clone, Copy)]
struct Mark {
    nova: u64,
    keystone: u64,
    placement: u64,
    root: u64,
}

fn len(p: &Path) -> u64 {
    fs::metadata(p).map_or(0, |m| m.len())
}

fn read_from(p: &Path, from: u64) -> Result<String> {
    let mut f = fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A uwsgi request line: `[pid: ...] ADDR () {..} [date] METHOD PATH => generated ...`: its
/// source address, method and path.
fn uwsgi_request(line: &str) -> Option<(&str, &str, &str)> {
    let rest = line.strip_prefix("[pid: ")?;
    let rest = &rest[rest.find("] ")? + 2..];
    let (addr, rest) = rest.split_once(' ')?;
    let rest = &rest[rest.find("] ")? + 2..];
    let (req, _) = rest.split_once(" => ")?;
    let (method, path) = req.split_once(' ')?;
    Some((addr, method, path))
}

impl Logs {
    /// Where the logs end now. The servers write a request's line once it is answered: a short
    /// pause first lets the last lines of what just ended land before the mark.
    fn mark(&self) -> Mark {
        std::thread::sleep(Duration::from_millis(400));
        Mark {
            nova: len(&self.nova),
            keystone: len(&self.keystone),
            placement: len(&self.placement),
            root: len(&self.root),
        }
    }

    /// The calls between two marks.
    fn calls(&self, a: Mark, b: Mark) -> Result<Calls> {
        let slice = |p: &Path, x: u64, y: u64| -> Result<String> {
            let mut s = read_from(p, x)?;
            s.truncate(usize::try_from(y.saturating_sub(x)).unwrap_or(usize::MAX));
            Ok(s)
        };
        let nova = slice(&self.nova, a.nova, b.nova)?
            .lines()
            .filter(|l| l.contains("nova.osapi_compute.wsgi.server") && l.contains(" HTTP/1."))
            .count();
        let mut c = Calls {
            nova,
            ..Calls::default()
        };
        for line in slice(&self.keystone, a.keystone, b.keystone)?.lines() {
            if let Some((addr, method, path)) = uwsgi_request(line) {
                if addr != self.control {
                    continue;
                }
                let tokens = path.starts_with("/v3/auth/tokens");
                if tokens && method == "GET" {
                    c.ks_validations += 1;
                } else {
                    c.keystone += 1;
                    c.ks_tokens += usize::from(tokens && method == "POST");
                }
            }
        }
        c.placement = slice(&self.placement, a.placement, b.placement)?
            .lines()
            .filter_map(uwsgi_request)
            .filter(|(addr, _, _)| *addr == self.control)
            .count();
        Ok(c)
    }

    /// The sum of the root's `openstack_calls` over the hv actions done since `a`.
    fn banyan_calls(&self, a: Mark) -> Result<f64> {
        let text = read_from(&self.root, a.root)?;
        let mut n = 0.0;
        for line in text.lines().filter(|l| l.contains("hv action done")) {
            if let Some(v) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("openstack_calls="))
            {
                n += v.parse::<f64>().unwrap_or(f64::NAN);
            }
        }
        Ok(n)
    }
}

/// The HLT's per-host sequence (see the module documentation), run by the loop and by pdsh.
const HLT_HOST: &str = r#"#!/bin/bash
# hlt-host OP HOST: one host's part of openstack-hlt-manage, with the openstack CLI per call.
# OP: status (with --nvms), disable, enable. Environment: OPENRC (sourced), OS_DIR (the harness's
# DIR), TESTNET (scripts/testnet, whose `exec HOST` stands in for the HLT's ssh).
set -u
op=$1 h=$2
. "$OPENRC"
fail() { echo "[FAIL] $*"; exit 1; }
count() { grep -c '"ID"' || true; }
case $op in
status)
    s=$(openstack compute service list --service nova-compute --host "$h" -f json) || fail "service list $h"
    v=$(openstack server list --all-projects --host "$h" -f json) || fail "server list $h"
    st=$(grep -o '"Status": "[a-z]*"' <<<"$s" | cut -d'"' -f4)
    sa=$(grep -o '"State": "[a-z]*"' <<<"$s" | cut -d'"' -f4)
    echo "status $h $st $sa $(count <<<"$v")"
    ;;
disable)
    openstack compute service set --disable \
        --disable-reason "disabled by bench-hv (HLT way) at $(date -u '+%F %T') UTC" "$h" nova-compute ||
        fail "Disabling hypervisor $h"
    "$TESTNET" exec "$h" "$OS_DIR/compute/$h/start" || fail "Starting OpenStack daemons on $h"
    ids=$(openstack server list --all-projects --host "$h" -f value -c ID) || fail "server list $h"
    n=0
    for id in $ids; do
        openstack server delete "$id" || fail "Deleting VM $id on hypervisor $h"
        n=$((n + 1))
    done
    t0=$SECONDS
    while left=$(openstack server list --all-projects --host "$h" -f value -c ID) && [ -n "$left" ]; do
        ((SECONDS - t0 < 300)) || fail "servers remain on $h after 300 s"
        sleep 1
    done
    "$TESTNET" exec "$h" bash -c 'p=$(cat "$1") || exit 0; kill "$p" 2>/dev/null || exit 0
        while s=$(ps -o stat= -p "$p") && [[ $s != Z* ]]; do sleep 0.1; done' _ "$OS_DIR/compute/$h/pid" ||
        fail "Shutting down OpenStack daemons on $h"
    echo "disabled $h $n"
    ;;
enable)
    "$TESTNET" exec "$h" "$OS_DIR/compute/$h/start" || fail "Starting OpenStack daemons on $h"
    t0=$SECONDS
    until openstack compute service list --service nova-compute --host "$h" -f json | grep -q '"State": "up"'; do
        ((SECONDS - t0 < 120)) || fail "nova-compute on $h is not up after 120 s"
        sleep 1
    done
    openstack compute service set --enable "$h" nova-compute || fail "Enabling hypervisor $h"
    echo "enabled $h"
    ;;
*) fail "unknown op $op" ;;
esac
"#;

/// The HLT way's two runners.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Sequential,
    Pdsh,
}

struct Hlt {
    script: PathBuf,
    openrc: PathBuf,
    os_dir: PathBuf,
}

impl Hlt {
    /// Runs OP on `hosts` one way; its stdout (checked: every host's line, no failure).
    fn run(&self, way: Way, op: &str, hosts: &[String]) -> Result<String> {
        let script = self.script.display().to_string();
        let mut cmd = match way {
            Way::Sequential => {
                let mut c = Command::new("bash");
                c.args([
                    "-c",
                    "s=$1 op=$2; shift 2; for h in \"$@\"; do \"$s\" \"$op\" \"$h\" || exit 1; done",
                    "_",
                    &script,
                    op,
                ]);
                c.args(hosts);
                c
            }
            Way::Pdsh => {
                let mut c = Command::new("pdsh");
                c.args(["-S", "-R", "exec", "-f", "32", "-w"])
                    .arg(hosts.join(","))
                    .args([script.as_str(), op, "%h"]);
                c
            }
        };
        let out = cmd
            .env("OPENRC", &self.openrc)
            .env("OS_DIR", &self.os_dir)
            .env("TESTNET", workspace_root().join("scripts/testnet"))
            // pdsh takes the rcmd module from here too; the exec module needs no remote shell.
            .env("PDSH_RCMD_TYPE", "exec")
            .stdin(Stdio::null())
            .output()
            .context("running the HLT way")?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success() && !stdout.contains("[FAIL]"),
            "the HLT way ({}) {op} failed ({}):\n{stdout}{}",
            if way == Way::Pdsh {
                "pdsh"
            } else {
                "sequential"
            },
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(stdout)
    }
}

/// `banyan --token T hv ARGS --json`: wall time and the action.
fn banyan_hv(c: &Cluster, args: &[&str]) -> Result<(f64, Value)> {
    let mut all = vec!["--token", c.admin_token(), "hv"];
    all.extend_from_slice(args);
    all.push("--json");
    let started = Instant::now();
    let (out, ok) = banyan_cli(c, &all)?;
    let wall = started.elapsed().as_secs_f64();
    ensure!(ok, "banyan {}: failed:\n{out}", all[2..].join(" "));
    let start = out.find("{\n").context("no JSON in the output")?;
    let v: Value = serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<Value>()
        .next()
        .context("no JSON in the output")??;
    Ok((wall, v))
}

fn summaries(a: &Value) -> BTreeMap<String, String> {
    a["targets"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(n, t)| {
            (
                n.clone(),
                t["result"]["summary"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn available_mib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemAvailable:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kb| kb / 1024)
}

fn port_base() -> u16 {
    // Nine ports from the base, spread by pid: 31000-32588, apart from tests/tests/hv.rs's
    // 20000-27988 and webui_cloud.rs's 28000-30988, below the ephemeral ports (32768 up).
    31_000 + u16::try_from(std::process::id() % 80).unwrap_or(0) * 20
}

fn main() {
    match run() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("bench-hv: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<()> {
    let Some(mut args) = parse_args()? else {
        println!("{USAGE}");
        return Ok(());
    };
    ensure!(Testnet::require()?, "test hosts unavailable");
    for (prog, pkg) in [("openstack", "python3-openstackclient"), ("pdsh", "pdsh")] {
        ensure!(
            banyan_tests::support::find_program(prog).is_some(),
            "'{prog}' not found (install the Debian package {pkg}; scripts/bench-hv does)"
        );
    }
    let avail = available_mib();
    let fits = (avail.saturating_sub(CONTROL_MIB + MARGIN_MIB) / PER_HOST_MIB) as usize;
    let mut note = String::new();
    let left_out: Vec<usize> = args.sizes.iter().copied().filter(|&n| n > fits).collect();
    if !left_out.is_empty() {
        args.sizes.retain(|&n| n <= fits);
        note = format!(
            "sizes {left_out:?} left out: {avail} MiB available holds the control plane and {fits} hosts"
        );
        eprintln!("bench-hv: {note}");
    }
    ensure!(!args.sizes.is_empty(), "no size fits: {note}");
    let n = *args.sizes.last().context("no size")?;
    eprintln!("bench-hv: starting a root and {n} agents on test hosts...");
    let opts = ClusterOptions {
        agent_config: Some(banyan_tests::openstack::compute_agent_config()),
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(n, opts)?;
    let result = bench(&mut cluster, &args, &note);
    if result.is_err() {
        cluster.keep_logs();
        eprintln!("bench-hv: logs kept in {}", cluster.dir().display());
    }
    result
}

/// Waits until every host of `hosts` has its service enabled and up and `vms` ACTIVE servers,
/// booting what is missing: the same start for every disable.
fn reset(os: &OpenStack, hosts: &[String], vms: usize, tag: &mut usize) -> Result<()> {
    for h in hosts {
        let s = os.wait_service(h, "up", NOVA_SEES)?;
        ensure!(s["status"] == "enabled", "{h} is not enabled: {s}");
    }
    // Each boot followed to ACTIVE. On a loaded machine a compute that has just started can
    // miss a report and be counted down for a moment: the scheduler then finds no valid host
    // and the server goes to ERROR with no host. Such a server is deleted and booted again.
    let mut pending = Vec::new();
    for h in hosts {
        let have = os.servers_on(h)?.len();
        for _ in have..vms {
            *tag += 1;
            pending.push((h.clone(), os.boot_on(h, &format!("bench-{h}-{tag}"))?));
        }
    }
    let until = Instant::now() + ACTIVE;
    let mut retries = 0;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (h, id) in pending {
            let v = os.nova("GET", &format!("/servers/{id}"), None)?;
            match v["server"]["status"].as_str().unwrap_or("") {
                "ACTIVE" => {}
                "ERROR" => {
                    retries += 1;
                    ensure!(
                        retries <= 3 * hosts.len(),
                        "servers keep failing to boot: {}",
                        v["server"]["fault"]
                    );
                    os.nova("DELETE", &format!("/servers/{id}"), None)?;
                    os.wait_service(&h, "up", NOVA_SEES)?;
                    *tag += 1;
                    let again = os.boot_on(&h, &format!("bench-{h}-{tag}"))?;
                    still.push((h, again));
                }
                _ => still.push((h, id)),
            }
        }
        pending = still;
        ensure!(
            pending.is_empty() || Instant::now() < until,
            "servers not ACTIVE within {ACTIVE:?}: {pending:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for h in hosts {
        os.wait_active(h, vms, ACTIVE)?;
    }
    Ok(())
}

/// After a disable: every host disabled, no server left, its compute stopped; then waits until
/// Nova reports each one down (service_down_time after its last report), so that the enable
/// that follows starts from a host Nova knows is down, as after any real drain, and waits for
/// the restarted compute's own report rather than the stopped one's last.
fn check_disabled(os: &OpenStack, hosts: &[String]) -> Result<()> {
    for h in hosts {
        let s = os
            .service(h)?
            .with_context(|| format!("no service on {h}"))?;
        ensure!(s["status"] == "disabled", "{h} is not disabled: {s}");
        ensure!(os.servers_on(h)?.is_empty(), "servers left on {h}");
        ensure!(os.compute_pid(h).is_none(), "{h}'s nova-compute still runs");
    }
    for h in hosts {
        os.wait_service(h, "down", NOVA_SEES)?;
    }
    Ok(())
}

/// After an enable: every host enabled, its compute running.
fn check_enabled(os: &OpenStack, hosts: &[String]) -> Result<()> {
    for h in hosts {
        let s = os
            .service(h)?
            .with_context(|| format!("no service on {h}"))?;
        ensure!(s["status"] == "enabled", "{h} is not enabled: {s}");
        ensure!(
            os.compute_pid(h).is_some(),
            "{h}'s nova-compute is not running"
        );
    }
    Ok(())
}

/// The figures of one size.
#[derive(Default)]
struct Size {
    n: usize,
    status: [Series; 3],
    change: [Series; 3],
}

const SIDES: [&str; 3] = ["banyan", "HLT way, pdsh", "HLT way, sequential"];

fn bench(c: &mut Cluster, args: &Args, note: &str) -> Result<()> {
    let names = c.names();
    c.wait_healthy(&names, FORM)?;
    let Some(os) = OpenStack::up(&c.dir().join("openstack"), port_base())? else {
        bail!("OpenStack is not installed: run scripts/lib/openstack install");
    };
    for h in &names {
        os.compute_conf(h)?;
    }
    let openrc = os.dir().join("admin-openrc");
    fs::write(
        c.root_state().join("root.toml"),
        format!(
            "[openstack]\nopenrc = \"{}\"\nup_timeout = \"120s\"\n",
            openrc.display()
        ),
    )?;
    let all = c.all_nodes();
    eprintln!(
        "bench-hv: starting {} nova-computes (banyan hv enable)...",
        names.len()
    );
    let (_, a) = banyan_hv(c, &["enable", &all, "--for-real"])?;
    for (node, s) in summaries(&a) {
        ensure!(s.starts_with("enabled and up"), "enable {node}: {s}");
    }
    os.wait_schedulable(&names, NOVA_SEES)?;
    let mut tag = 0;
    reset(&os, &names, args.vms, &mut tag)?;
    let hlt_dir = c.dir().join("bench-hv");
    fs::create_dir_all(&hlt_dir)?;
    let script = hlt_dir.join("hlt-host");
    fs::write(&script, HLT_HOST)?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    let hlt = Hlt {
        script,
        openrc: openrc.clone(),
        os_dir: os.dir().to_path_buf(),
    };
    let logs = Logs {
        nova: os.dir().join("log/nova-api.log"),
        keystone: os.dir().join("log/keystone-uwsgi.log"),
        placement: os.dir().join("log/placement-uwsgi.log"),
        root: c.dir().join("root.log"),
        control: os.port("ADDR")?.to_string(),
    };
    // One untimed status of everything: the root's first token, the CLI's files in the cache.
    banyan_hv(c, &["status", &all, "--nvms"])?;
    hlt.run(Way::Pdsh, "status", &names)?;

    let started = Instant::now();
    let mut sizes = Vec::new();
    for &n in &args.sizes {
        let hosts: Vec<String> = names[..n].to_vec();
        let set = format!("{}[1-{n}]", c.prefix());
        let mut size = Size {
            n,
            ..Size::default()
        };
        let runs = args.runs.max(args.seq_runs);
        for run in 0..runs {
            eprintln!(
                "bench-hv: {n} hosts, run {} of {runs} ({:.0} s so far)...",
                run + 1,
                started.elapsed().as_secs_f64()
            );
            let main = run < args.runs;
            let seq = run < args.seq_runs;
            // Status.
            if main {
                let m = logs.mark();
                let (wall, a) = banyan_hv(c, &["status", &set, "--nvms"])?;
                let e = logs.mark();
                for h in &hosts {
                    let row: Value = serde_json::from_str(
                        a["targets"][h]["result"]["stdout"]
                            .as_str()
                            .unwrap_or("")
                            .trim(),
                    )
                    .with_context(|| format!("{h}'s status row: {a}"))?;
                    ensure!(
                        row["runs_vms"] == true
                            && row["daemons"] == "running"
                            && row["servers"].as_array().map(Vec::len) == Some(args.vms),
                        "{h}: {row}"
                    );
                }
                size.status[0].add(wall, logs.calls(m, e)?);
                size.status[0].banyan_calls.push(logs.banyan_calls(m)?);
            }
            for (i, way, go) in [(1, Way::Pdsh, main), (2, Way::Sequential, seq)] {
                if !go {
                    continue;
                }
                let m = logs.mark();
                let t = Instant::now();
                let out = hlt.run(way, "status", &hosts)?;
                let wall = t.elapsed().as_secs_f64();
                let e = logs.mark();
                for h in &hosts {
                    // Enabled with its servers; up or not as Nova last heard (a compute on a
                    // loaded machine can miss a report).
                    ensure!(
                        out.lines()
                            .any(|l| l.contains(&format!("status {h} enabled "))
                                && l.ends_with(&format!(" {}", args.vms))),
                        "HLT status of {h}: not enabled with {} servers:\n{out}",
                        args.vms
                    );
                }
                size.status[i].add(wall, logs.calls(m, e)?);
            }
            // Disable + enable.
            if main {
                let m0 = logs.mark();
                let (w_off, a) = banyan_hv(c, &["disable", &set, "--for-real"])?;
                let m1 = logs.mark();
                for (node, s) in summaries(&a) {
                    ensure!(
                        s == format!("disabled, {} server(s) deleted, daemons stopped", args.vms),
                        "disable {node}: {s}"
                    );
                }
                let own = logs.banyan_calls(m0)?;
                // The check (and the wait until Nova says down) falls between the marks: its
                // calls are out of the counts, its time out of the wall time.
                check_disabled(&os, &hosts)?;
                let m2 = logs.mark();
                let (w_on, a) = banyan_hv(c, &["enable", &set, "--for-real"])?;
                let m3 = logs.mark();
                for (node, s) in summaries(&a) {
                    ensure!(s.starts_with("enabled and up"), "enable {node}: {s}");
                }
                size.change[0].add(w_off + w_on, logs.calls(m0, m1)? + logs.calls(m2, m3)?);
                size.change[0]
                    .banyan_calls
                    .push(own + logs.banyan_calls(m2)?);
                check_enabled(&os, &hosts)?;
                reset(&os, &hosts, args.vms, &mut tag)?;
            }
            for (i, way, go) in [(1, Way::Pdsh, main), (2, Way::Sequential, seq)] {
                if !go {
                    continue;
                }
                let m0 = logs.mark();
                let t = Instant::now();
                let out = hlt.run(way, "disable", &hosts)?;
                let w_off = t.elapsed().as_secs_f64();
                let m1 = logs.mark();
                for h in &hosts {
                    let want = format!("disabled {h} {}", args.vms);
                    ensure!(out.contains(&want), "HLT disable: {want:?} not in\n{out}");
                }
                // The check (and the wait until Nova says down) falls between the marks: its
                // calls are out of the counts, its time out of the wall time.
                check_disabled(&os, &hosts)?;
                let m2 = logs.mark();
                let t = Instant::now();
                let out = hlt.run(way, "enable", &hosts)?;
                let w_on = t.elapsed().as_secs_f64();
                let m3 = logs.mark();
                for h in &hosts {
                    ensure!(out.contains(&format!("enabled {h}")), "HLT enable:\n{out}");
                }
                size.change[i].add(w_off + w_on, logs.calls(m0, m1)? + logs.calls(m2, m3)?);
                check_enabled(&os, &hosts)?;
                reset(&os, &hosts, args.vms, &mut tag)?;
            }
        }
        sizes.push(size);
    }
    let took = started.elapsed().as_secs_f64();
    report(args, &sizes, took, note);
    Ok(())
}

fn report(args: &Args, sizes: &[Size], took: f64, note: &str) {
    let profile = std::env::var("BANYAN_BENCH_PROFILE").unwrap_or_else(|_| "release".into());
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    println!(
        "bench-hv: one Keystone + Placement + Nova 26 (scripts/lib/openstack, fake virt driver), \
         one nova-compute per test host run by its banyan agent; a root and {} agents ({profile} \
         build); {} server(s) per host before each disable; banyan timed as the CLI process end to \
         end; the HLT way is the openstack CLI (python3-openstackclient) per call, a bash loop \
         over the hosts or pdsh -R exec -f 32; measured in {took:.0} s; load average at the end \
         {load} (a shared machine: other builds and tests may have run alongside)",
        sizes.last().map_or(0, |s| s.n),
        args.vms
    );
    if !note.is_empty() {
        println!("note: {note}");
    }
    let head =
        "                     runs  median      max   nova ks-tok     ks  place  total banyan (ks-val)";
    let mut met = true;
    let mut verdicts = Vec::new();
    for s in sizes {
        println!(
            "\n{} hosts: status --nvms          seconds       OpenStack API calls (median)",
            s.n
        );
        println!("{head}");
        for (i, series) in s.status.iter().enumerate() {
            println!("{}", series.row(SIDES[i]));
        }
        println!("{} hosts: disable + enable", s.n);
        println!("{head}");
        for (i, series) in s.change.iter().enumerate() {
            println!("{}", series.row(SIDES[i]));
        }
        for (what, set) in [("status", &s.status), ("disable+enable", &s.change)] {
            let (b, p) = (median(&set[0].wall_s), median(&set[1].wall_s));
            let ok = b < p;
            met &= ok;
            verdicts.push(format!(
                "{} hosts {what}: {b:.2} s vs {p:.2} s {}",
                s.n,
                if ok { "(met)" } else { "(NOT met)" }
            ));
        }
    }
    println!(
        "\nAPI calls per sequence, counted at the servers: nova = nova-api's request lines; ks = \
         Keystone requests from the control host but token validations (ks-tok of them tokens \
         issued, the rest version discovery); place = Placement requests from the control host; \
         total = nova + ks + place; banyan = the root's own count (hv action done \
         openstack_calls). Not in the total: (ks-val) = token validations from the control host, \
         nova-api's (one per authenticated Nova call) mixed with Placement's of the computes' own \
         reports, so longer sequences collect more; and the computes' own calls (reports, a \
         restarted compute registering), the same whoever restarts them."
    );
    println!(
        "goal: banyan faster than pdsh at every size: {} (medians: {})",
        if met { "met" } else { "NOT met" },
        verdicts.join("; ")
    );
}

//! bench-power: `banyan power` on 8 Redfish and 8 IPMI emulated BMCs, beside the plain shell loop
//! an operator would write over the same BMCs.
//!
//! Set-up: a real cluster, 16 agents on test hosts (network namespaces) and the root on this
//! machine, because the root powers only nodes of its cluster; one sushy-tools emulator serving 8
//! systems (TLS with a test CA, basic auth) for the first 8 nodes, one `ipmi_sim` per node on the
//! loopback for the other 8, whose chassis is the node's real agent (an off stops it, an on starts
//! it, as on a real machine). The Redfish nodes' agents are not powered by sushy: they stay up, so
//! banyan's `off` there waits its full 15 s for the agent to leave before it says "the agent is
//! still up". The BMCs are in the root's `root.toml`, as an operator would write it.
//!
//! banyan's `off` and `on` end when the BMC reports the state *and* the node's agent has left or
//! rejoined the tree (detection within 3 s, a rejoin a few seconds); the shell loops wait for the
//! BMCs only.
//!
//! Timed, per run, with the tools taking turns so that the machine's other load falls on both:
//! - `banyan power status NODES --json`, the CLI process end to end (POST /actions, the audit
//!   line, the root's BMC calls at most 32 at a time, long polls), beside the slowest node's own
//!   duration in the action's record (the bound the goal speaks of);
//! - a bash loop, one BMC after the other: `curl` GETs of each Redfish system, `ipmitool -I lanplus
//!   chassis power status` for each IPMI BMC (the driver's flags: `-C 3 -R 1 -N 1`);
//! - `banyan power off --force` then `on` (`--for-real`), beside a loop of ForceOff / On POSTs (curl)
//!   or `chassis power off` / `on` (ipmitool), each waiting until every BMC reports the new state
//!   (polling every second, as banyan does).
//!
//! - `banyan power status` of the same 8 Redfish systems served by a second sushy that only the
//!   first test host reaches, through that host's agent as the BMC gateway (each BMC call an order
//!   down the tree and a sealed receipt back), beside the direct status above.
//!
//! BMC calls per node are counted at the emulators: the HTTP requests in sushy's log, the chassis
//! calls `ipmi_sim` made (one per ipmitool command that reached it). Every answer is checked (the
//! state each node must be in); a wrong one stops the benchmark. It asserts nothing about time.
//!
//! Sushy applies a power change 1 to 11 s (random) after the reset, by design: the change timings
//! measure the emulator's delay, not banyan's or the loop's work; they run `--change-runs` times
//! (default 3) for that reason.

use banyan_tests::support::percentile;
use std::fmt::Write as _;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use banyan_agent::bmc::Secret;
use banyan_tests::bmc::{
    agent_boot_script, require, IpmiOptions, IpmiSim, Scratch, Site, Sushy, SushyOptions,
};
use banyan_tests::cluster::{banyan_cli, Cluster, ClusterOptions};
use banyan_tests::testnet::Testnet;
use serde_json::Value;

const USAGE: &str = "\
usage: bench-power [--runs N] [--change-runs N]
  --runs         timed runs of each status measurement (default 10), after one untimed round
  --change-runs  timed runs of off --force + on (default 3: sushy takes 1-11 s per change)
example: scripts/bench-power --runs 20";

/// BMCs of each protocol.
const PER_PROTOCOL: usize = 8;
/// Sixteen agents joining on a busy two-core machine.
const FORM: Duration = Duration::from_secs(180);
/// The goal of the issue: status of 8 BMCs in under a second.
const GOAL_S: f64 = 1.0;

struct Args {
    runs: usize,
    change_runs: usize,
}

fn parse_args() -> Result<Option<Args>> {
    let mut args = Args {
        runs: 10,
        change_runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        let mut value = || -> Result<usize> {
            let v = inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| anyhow!("{flag} needs a value (try --help)"))?;
            v.parse()
                .map_err(|_| anyhow!("{flag}: '{v}' is not a whole number"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--runs" => args.runs = value()?.max(1),
            "--change-runs" => args.change_runs = value()?,
            other => bail!("unknown argument '{other}' (try --help)"),
        }
    }
    Ok(Some(args))
}

/// Median and p99 of `v`.
fn mp(v: &[f64]) -> (f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    (percentile(&s, 0.5), percentile(&s, 0.99))
}

/// What one measured thing gathered over the runs.
#[derive(Default)]
struct Series {
    label: String,
    wall_s: Vec<f64>,
    /// The slowest node's duration in the action's record (banyan only).
    slowest_s: Vec<f64>,
    /// BMC calls per node, per run.
    calls: Vec<f64>,
}

impl Series {
    fn new(label: impl Into<String>) -> Series {
        Series {
            label: label.into(),
            ..Series::default()
        }
    }

    fn row(&self, unit: &str) -> String {
        let (m, p) = mp(&self.wall_s);
        let slowest = if self.slowest_s.is_empty() {
            "-".to_string()
        } else {
            format!("{:.3}", mp(&self.slowest_s).0)
        };
        format!(
            "  {:<34} {:>8.3} {:>8.3} {:>12} {:>7.1} {unit}",
            self.label,
            m,
            p,
            slowest,
            mp(&self.calls).0
        )
    }
}

/// The emulators and what counts their calls.
struct Bmcs {
    sushy: Sushy,
    sims: Vec<IpmiSim>,
    redfish: Vec<String>,
    ipmi: Vec<String>,
    sushy_password: String,
}

impl Bmcs {
    fn sushy_calls(&self) -> usize {
        self.sushy.requests().len()
    }

    fn ipmi_calls(&self) -> usize {
        self.sims.iter().map(|s| s.chassis_calls().len()).sum()
    }

    /// A bash loop over the Redfish systems (by id): `body` runs per system with `$n` its name, curl
    /// set up in `$c` (CA, user, password) and `$u` the system's URL.
    fn redfish_loop(&self, body: &str) -> Result<String> {
        let ca = self.sushy.ca_file.as_ref().context("TLS sushy has a CA")?;
        let ids: Vec<String> = self
            .sushy
            .systems
            .iter()
            .map(|(name, uuid)| format!("{name}={uuid}"))
            .collect();
        Ok(format!(
            "c=(curl -sS --fail --cacert '{}' -u \"admin:$PW\")\n\
             for ns in {}; do\n  n=${{ns%%=*}} u='{}/redfish/v1/Systems/'${{ns##*=}}\n{body}\ndone\n",
            ca.display(),
            ids.join(" "),
            self.sushy.url(),
        ))
    }

    /// A bash loop over the IPMI BMCs: `body` runs per BMC with `$n` its node, `$p` its port and
    /// ipmitool set up in `$i` (password in the environment).
    fn ipmi_loop(&self, body: &str) -> String {
        let pairs: Vec<String> = self
            .sims
            .iter()
            .map(|s| format!("{}:{}", s.name, s.addr.port()))
            .collect();
        format!(
            "i=(ipmitool -I lanplus -C 3 -R 1 -N 1 -E -H 127.0.0.1 -U admin)\n\
             for np in {}; do\n  n=${{np%%:*}} p=${{np##*:}}\n{body}\ndone\n",
            pairs.join(" ")
        )
    }

    /// Runs `script` with bash (`set -e`), the BMC passwords in its environment; its stdout.
    fn shell(&self, script: &str) -> Result<String> {
        let ipmi_pw = Secret::from_file(&self.sims[0].password_file)?;
        let out = Command::new("bash")
            .args(["-o", "pipefail", "-ec", script])
            .env("PW", &self.sushy_password)
            .env("IPMI_PASSWORD", ipmi_pw.expose())
            .stdin(Stdio::null())
            .output()
            .context("running bash")?;
        ensure!(
            out.status.success(),
            "the shell loop failed: {}\n{script}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// One node's answer in a power action: its name, the summary and the stdout line.
struct NodeAnswer {
    name: String,
    summary: String,
    stdout: String,
}

/// Runs `banyan power ARGS --json` and returns its wall time, the slowest node's duration, and
/// each node's answer.
fn banyan(c: &Cluster, args: &[&str]) -> Result<(f64, f64, Vec<NodeAnswer>)> {
    let mut all = vec!["--token", c.admin_token(), "power"];
    all.extend_from_slice(args);
    all.push("--json");
    let started = Instant::now();
    let (out, ok) = banyan_cli(c, &all)?;
    let wall = started.elapsed().as_secs_f64();
    ensure!(ok, "banyan {}: failed:\n{out}", all.join(" "));
    let start = out.find("{\n").context("no JSON in the output")?;
    let v: Value = serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<Value>()
        .next()
        .context("no JSON in the output")??;
    let targets = v["targets"]
        .as_object()
        .with_context(|| format!("no targets: {v}"))?;
    let mut slowest = 0.0f64;
    let mut nodes = Vec::new();
    for (name, t) in targets {
        let r = &t["result"];
        slowest = slowest.max(r["duration_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0);
        nodes.push(NodeAnswer {
            name: name.clone(),
            summary: r["summary"].as_str().unwrap_or("").to_string(),
            stdout: r["stdout"].as_str().unwrap_or("").trim().to_string(),
        });
    }
    Ok((wall, slowest, nodes))
}

/// Fails unless there are `n` answers and every node's summary (`stdout` false) or stdout line
/// starts with `want`.
fn expect(nodes: &[NodeAnswer], n: usize, stdout: bool, want: &str) -> Result<()> {
    ensure!(nodes.len() == n, "{} answers, not {n}", nodes.len());
    for a in nodes {
        let got = if stdout { &a.stdout } else { &a.summary };
        ensure!(got.starts_with(want), "{}: {got:?}, not {want:?}", a.name);
    }
    Ok(())
}

fn main() {
    match run() {
        Ok(()) => {}
        Err(e) => {
            eprintln!("bench-power: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<()> {
    let Some(args) = parse_args()? else {
        println!("{USAGE}");
        return Ok(());
    };
    let tools = require()?.context("BMC emulators missing")?;
    ensure!(Testnet::require()?, "test hosts unavailable");
    let n = 2 * PER_PROTOCOL;
    eprintln!("bench-power: starting a root and {n} agents on test hosts...");
    // Every agent may be a BMC gateway; root.toml names the first one for the gateway round.
    let opts = ClusterOptions {
        agent_config: Some("[bmc]\ngateway = true\n".into()),
        ..ClusterOptions::default()
    };
    let mut cluster = Cluster::start(n, opts)?;
    let result = bench(&mut cluster, &tools, &args);
    if result.is_err() {
        cluster.keep_logs();
    }
    result
}

fn bench(c: &mut Cluster, tools: &banyan_tests::bmc::BmcTools, args: &Args) -> Result<()> {
    let names = c.names();
    c.wait_healthy(&names, FORM)?;
    let dir = Scratch::new("bench-power")?;
    let (redfish, ipmi) = names.split_at(PER_PROTOCOL);
    let mut sushy_opts = SushyOptions::new(redfish);
    for s in &mut sushy_opts.systems {
        s.power = "On";
    }
    let sushy = Sushy::start(tools, &dir.path().join("sushy"), &sushy_opts)?;
    // Each IPMI node's power is its agent: the harness's process stops and the BMC, powered on
    // from the start, runs the same command line in its chassis, so that an off really takes the
    // agent out of the tree and an on brings it back, as on a real machine.
    let mut sims = Vec::new();
    for (i, name) in names.iter().enumerate().skip(PER_PROTOCOL) {
        let boot = agent_boot_script(c, i, dir.path(), "")?;
        c.terminate_agent(i)?;
        let mut opts = IpmiOptions::new(name);
        opts.node_command = boot;
        opts.powered_on = true;
        sims.push(IpmiSim::start(tools, &dir.path().join(name), &opts)?);
    }
    c.wait_healthy(&names, FORM)
        .context("the agents run by the IPMI BMCs joining")?;
    // Each system by its id (sushy redirects a name to it), on both sides.
    let mut toml = String::new();
    for (name, uuid) in &sushy.systems {
        write!(
            toml,
            "[[bmc]]\nnodes = \"{name}\"\nprotocol = \"redfish\"\naddress = \"127.0.0.1\"\n\
             port = {}\nuser = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n\
             system_id = \"{uuid}\"\n\n",
            sushy.addr.port(),
            sushy.user,
            sushy.password_file.display(),
            sushy.ca_file.as_ref().context("TLS sushy")?.display(),
        )?;
    }
    for s in &sims {
        write!(
            toml,
            "[[bmc]]\nnodes = \"{}\"\nprotocol = \"ipmi\"\naddress = \"127.0.0.1\"\nport = {}\n\
             user = \"{}\"\npassword_file = \"{}\"\n\n",
            s.name,
            s.addr.port(),
            s.user,
            s.password_file.display()
        )?;
    }
    fs::write(c.root_state().join("root.toml"), toml)?;
    let bmcs = Bmcs {
        sushy_password: Secret::from_file(&sushy.password_file)?
            .expose()
            .to_string(),
        sushy,
        sims,
        redfish: redfish.to_vec(),
        ipmi: ipmi.to_vec(),
    };
    let (rf_set, ipmi_set) = (bmcs.redfish.join(","), bmcs.ipmi.join(","));
    let k = PER_PROTOCOL as f64;

    // Status.
    let curl_status = bmcs.redfish_loop(
        "  \"${c[@]}\" \"$u\" | grep -o '\"PowerState\": *\"[A-Za-z]*\"' | sed \"s/^/$n /\"",
    )?;
    let ipmi_status = bmcs.ipmi_loop("  echo \"$n $(\"${i[@]}\" -p \"$p\" chassis power status)\"");
    let mut s_b_rf = Series::new("banyan power status (redfish x8)");
    let mut s_sh_rf = Series::new("bash loop: curl GET (redfish x8)");
    let mut s_b_ip = Series::new("banyan power status (ipmi x8)");
    let mut s_sh_ip = Series::new("bash loop: ipmitool (ipmi x8)");
    eprintln!(
        "bench-power: status, {} runs (and one untimed round)...",
        args.runs
    );
    for run in 0..=args.runs {
        let timed = run > 0;
        let before = bmcs.sushy_calls();
        let (wall, slowest, nodes) = banyan(c, &["status", &rf_set])?;
        expect(&nodes, PER_PROTOCOL, true, "BMC On, agent up")?;
        if timed {
            s_b_rf.wall_s.push(wall);
            s_b_rf.slowest_s.push(slowest);
            s_b_rf.calls.push((bmcs.sushy_calls() - before) as f64 / k);
        }
        let before = bmcs.sushy_calls();
        let started = Instant::now();
        let out = bmcs.shell(&curl_status)?;
        let wall = started.elapsed().as_secs_f64();
        ensure!(
            out.lines().filter(|l| l.ends_with("\"On\"")).count() == PER_PROTOCOL,
            "curl loop: {out}"
        );
        if timed {
            s_sh_rf.wall_s.push(wall);
            s_sh_rf.calls.push((bmcs.sushy_calls() - before) as f64 / k);
        }
        let before = bmcs.ipmi_calls();
        let (wall, slowest, nodes) = banyan(c, &["status", &ipmi_set])?;
        expect(&nodes, PER_PROTOCOL, true, "BMC On, agent up")?;
        if timed {
            s_b_ip.wall_s.push(wall);
            s_b_ip.slowest_s.push(slowest);
            s_b_ip.calls.push((bmcs.ipmi_calls() - before) as f64 / k);
        }
        let before = bmcs.ipmi_calls();
        let started = Instant::now();
        let out = bmcs.shell(&ipmi_status)?;
        let wall = started.elapsed().as_secs_f64();
        ensure!(
            out.lines()
                .filter(|l| l.ends_with("Chassis Power is on"))
                .count()
                == PER_PROTOCOL,
            "ipmitool loop: {out}"
        );
        if timed {
            s_sh_ip.wall_s.push(wall);
            s_sh_ip.calls.push((bmcs.ipmi_calls() - before) as f64 / k);
        }
    }

    // Off --force, then on: each side waits until every BMC reports the new state.
    let curl_change = |reset: &str, want: &str| -> Result<String> {
        let post = bmcs.redfish_loop(&format!(
            "  \"${{c[@]}}\" -o /dev/null -H 'Content-Type: application/json' \
             -d '{{\"ResetType\": \"{reset}\"}}' \"$u/Actions/ComputerSystem.Reset\""
        ))?;
        let poll = bmcs.redfish_loop(&format!(
            "  \"${{c[@]}}\" \"$u\" | grep -q '\"PowerState\": *\"{want}\"' || left=1"
        ))?;
        Ok(format!(
            "{post}while :; do\nleft=0\n{poll}[ $left = 0 ] && break\nsleep 1\ndone\n"
        ))
    };
    let ipmi_change = |op: &str, want: &str| -> String {
        let set = bmcs.ipmi_loop(&format!(
            "  \"${{i[@]}}\" -p \"$p\" chassis power {op} >/dev/null"
        ));
        let poll = bmcs.ipmi_loop(&format!(
            "  \"${{i[@]}}\" -p \"$p\" chassis power status | grep -q 'is {want}' || left=1"
        ));
        format!("{set}while :; do\nleft=0\n{poll}[ $left = 0 ] && break\nsleep 1\ndone\n")
    };
    let rf_offon = format!(
        "{}{}",
        curl_change("ForceOff", "Off")?,
        curl_change("On", "On")?
    );
    let ip_offon = format!("{}{}", ipmi_change("off", "off"), ipmi_change("on", "on"));
    let mut c_b_rf = Series::new("banyan off --force + on (redfish x8)");
    let mut c_sh_rf = Series::new("bash loop: curl (redfish x8)");
    let mut c_b_ip = Series::new("banyan off --force + on (ipmi x8)");
    let mut c_sh_ip = Series::new("bash loop: ipmitool (ipmi x8)");
    eprintln!(
        "bench-power: off --force + on, {} runs...",
        args.change_runs
    );
    for _ in 0..args.change_runs {
        for (set, calls, series, shell_series, script, rf) in [
            (&rf_set, 0, &mut c_b_rf, &mut c_sh_rf, &rf_offon, true),
            (&ipmi_set, 1, &mut c_b_ip, &mut c_sh_ip, &ip_offon, false),
        ] {
            let count = || {
                if calls == 0 {
                    bmcs.sushy_calls()
                } else {
                    bmcs.ipmi_calls()
                }
            };
            let before = count();
            let (w_off, s_off, nodes) = banyan(c, &["off", set, "--force", "--for-real"])?;
            expect(&nodes, PER_PROTOCOL, false, "powered off")?;
            let (w_on, s_on, nodes) = banyan(c, &["on", set, "--for-real"])?;
            expect(&nodes, PER_PROTOCOL, false, "powered on")?;
            series.wall_s.push(w_off + w_on);
            series.slowest_s.push(s_off + s_on);
            series.calls.push((count() - before) as f64 / k);
            let before = count();
            let started = Instant::now();
            bmcs.shell(script).with_context(|| {
                format!("the {} change loop", if rf { "curl" } else { "ipmitool" })
            })?;
            shell_series.wall_s.push(started.elapsed().as_secs_f64());
            shell_series.calls.push((count() - before) as f64 / k);
        }
    }

    // Through a gateway: the same 8 Redfish systems served by a sushy only the first test host
    // reaches (on its own loopback), every BMC call an order to that host's agent.
    let gateway = names[0].clone();
    let mut inside = SushyOptions::new(redfish);
    for s in &mut inside.systems {
        s.power = "On";
    }
    inside.site = Site::Host {
        host: c.hosts()[0].clone(),
        only_inside: true,
    };
    let behind = Sushy::start(tools, &dir.path().join("sushy-gw"), &inside)?;
    let mut toml = String::new();
    for (name, uuid) in &behind.systems {
        write!(
            toml,
            "[[bmc]]\nnodes = \"{name}\"\nprotocol = \"redfish\"\naddress = \"127.0.0.1\"\n\
             port = {}\nuser = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n\
             system_id = \"{uuid}\"\ngateway = \"{gateway}\"\n\n",
            behind.addr.port(),
            behind.user,
            behind.password_file.display(),
            behind.ca_file.as_ref().context("TLS sushy")?.display(),
        )?;
    }
    fs::write(c.root_state().join("root.toml"), toml)?;
    let mut s_b_gw = Series::new("banyan power status (redfish x8, gw)");
    eprintln!(
        "bench-power: status through a gateway, {} runs...",
        args.runs
    );
    for run in 0..=args.runs {
        let before = behind.requests().len();
        let (wall, slowest, nodes) = banyan(c, &["status", &rf_set])?;
        expect(&nodes, PER_PROTOCOL, true, "BMC On, agent up")?;
        if run > 0 {
            s_b_gw.wall_s.push(wall);
            s_b_gw.slowest_s.push(slowest);
            s_b_gw
                .calls
                .push((behind.requests().len() - before) as f64 / k);
        }
    }

    let profile = std::env::var("BANYAN_BENCH_PROFILE").unwrap_or_else(|_| "release".into());
    println!(
        "bench-power: 8 Redfish systems on one sushy-tools 2.2.0 (TLS, basic auth) and 8 ipmi_sim, \
         on the loopback; a root and 16 agents on test hosts ({profile} build); banyan timed as the \
         CLI process end to end (POST /actions, audit, the root's BMC calls, long polls); the \
         loops are bash, one BMC after the other"
    );
    println!(
        "\nstatus, {} runs            seconds: median      p99  slowest BMC  BMC calls/node",
        args.runs
    );
    for (s, unit) in [
        (&s_b_rf, "HTTP requests"),
        (&s_b_gw, "HTTP requests"),
        (&s_sh_rf, "HTTP requests"),
        (&s_b_ip, "chassis calls"),
        (&s_sh_ip, "chassis calls"),
    ] {
        println!("{}", s.row(unit));
    }
    let met = |s: &Series| {
        let m = mp(&s.wall_s).0;
        format!(
            "{m:.3} s {}",
            if m < GOAL_S { "(met)" } else { "(NOT met)" }
        )
    };
    println!(
        "goal: status of 8 BMCs in under 1 s: banyan redfish x8 median {}, ipmi x8 median {}",
        met(&s_b_rf),
        met(&s_b_ip)
    );
    if args.change_runs > 0 {
        println!(
            "\noff --force + on, {} runs  seconds: median      p99  slowest BMC  BMC calls/node",
            args.change_runs
        );
        for (s, unit) in [
            (&c_b_rf, "HTTP requests"),
            (&c_sh_rf, "HTTP requests"),
            (&c_b_ip, "chassis calls"),
            (&c_sh_ip, "chassis calls"),
        ] {
            println!("{}", s.row(unit));
        }
        println!(
            "note: sushy applies each power change 1-11 s (random) after the reset, by design, and \
             both sides poll each second until every BMC reports it: the Redfish change timings \
             are the emulator's delay (the slowest of 8 draws, twice), not banyan's or the loop's \
             work, plus, for banyan, 15 s waiting for agents that sushy does not stop. ipmi_sim \
             changes at once; banyan's ipmi figure includes each agent leaving the tree and \
             rejoining it, which the loops do not wait for."
        );
    }
    Ok(())
}

//! `banyan power` through the action path, against sushy-tools' Redfish emulator serving one
//! system per test host (basic auth, TLS with a test CA), configured in the root's `root.toml`.
//!
//! What is asserted: `status` shows each BMC's state beside the agent's state and says when they
//! disagree; a dry run makes no BMC call (sushy's request log shows no POST); an operator token
//! of `@rack1` cannot power `@rack2` (refused, audited, no call); `on`, `off --force`, a graceful
//! `off` and `reset` end in the state asked (sushy applies changes 1-11 s later: the root polls,
//! the test asserts final states, never times); a node already in the state succeeds without a
//! call; a BMC with a wrong password and a node without a BMC fail alone, with their reason.
//!
//! Through a BMC gateway: BMCs reachable only inside one test host's namespace are powered
//! through that host's agent (the root alone cannot reach them), and fail with the reason when
//! that agent is down.
//!
//! And through IPMI, one `ipmi_sim` per node whose chassis is the node's real `banyan-agent`: a
//! forced `off` kills the agent (the node leaves the tree, status says "BMC Off, agent lost"),
//! `on` starts it again (it rejoins, the cluster's totals exact), `cycle` does both.

use std::fs;

use anyhow::{ensure, Context, Result};
use banyan_tests::bmc::{
    agent_boot_script, require, sh_quote, write_secret, IpmiOptions, IpmiSim, Scratch, Site, Sushy,
    SushyOptions,
};
use banyan_tests::cluster::{banyan_cli, with_cluster, Cluster, ClusterOptions};
use banyan_tests::support::http_request;
use serde_json::{json, Value};
use std::time::Duration;

const FORM: Duration = Duration::from_secs(45);
const HTTP: Duration = Duration::from_secs(40);
/// A node whose power was cut: the root notices its agent's silence within 3 s.
const LEAVE: Duration = Duration::from_secs(30);
/// A node powered on: its agent starts, enrols from its state dir and is placed again.
const REJOIN: Duration = Duration::from_secs(60);
/// A counter in each node's metrics file.
const WORK: &str = "test_power_work_total";

fn cli(c: &Cluster, token: &str, args: &[&str]) -> Result<(String, bool)> {
    let mut all = vec!["--token", token, "power"];
    all.extend_from_slice(args);
    banyan_cli(c, &all)
}

/// The JSON the CLI printed on stdout (the helper puts stderr after it).
fn first_json(out: &str) -> Result<Value> {
    let start = out.find("{\n").context("no JSON in the output")?;
    serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<Value>()
        .next()
        .context("no JSON in the output")?
        .with_context(|| format!("the CLI's JSON:\n{out}"))
}

/// The POSTs sushy was sent (resets and boot overrides).
fn posts(sushy: &Sushy) -> Vec<String> {
    sushy
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST") || r.starts_with("PATCH"))
        .collect()
}

#[test]
fn power_through_redfish_bmcs_is_scoped_dry_run_first_and_per_node() -> Result<()> {
    let Some(tools) = require()? else {
        return Ok(());
    };
    with_cluster(4, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let admin = c.admin_token().to_string();
        let dir = Scratch::new("power")?;
        // Three nodes on one emulator; the fourth's BMC refuses the password the root has.
        let good: Vec<String> = names[..3].to_vec();
        let sushy = Sushy::start(
            &tools,
            &dir.path().join("sushy"),
            &SushyOptions::new(&names),
        )?;
        let ca = sushy
            .ca_file
            .clone()
            .context("a TLS emulator has a CA file")?;
        let state = c.root_state();
        let wrong = state.join("bmc-wrong-pw");
        write_secret(&wrong, "not-the-password")?;
        let (one, four) = (&names[0], &names[3]);
        let set = |v: &[String]| v.join(",");
        let toml = format!(
            r#"
[[bmc]]
nodes = "{good}"
protocol = "redfish"
address = "127.0.0.1"
port = {port}
user = "{user}"
password_file = "{pw}"
ca_file = "{ca}"
system_id = "{{name}}"

[[bmc]]
nodes = "{four}"
protocol = "redfish"
address = "127.0.0.1"
port = {port}
user = "{user}"
password_file = "{wrong}"
ca_file = "{ca}"
system_id = "{{name}}"
"#,
            good = set(&good),
            port = sushy.addr.port(),
            user = sushy.user,
            pw = sushy.password_file.display(),
            ca = ca.display(),
            wrong = wrong.display(),
        );
        fs::write(state.join("root.toml"), toml)?;
        fs::write(
            state.join("groups.yaml"),
            format!(
                "rack:\n  rack1: '{}'\n  rack2: '{}'\n",
                set(&names[..2]),
                set(&names[2..])
            ),
        )?;

        // Status: every BMC Off (sushy starts them so) while the agents are up, said as such.
        let (out, ok) = cli(c, &admin, &["status", &set(&good)])?;
        ensure!(ok, "{out}");
        ensure!(
            out.contains("BMC Off, agent up"),
            "status does not show the BMC's state beside the agent's:\n{out}"
        );
        let (out, ok) = cli(c, &admin, &["status", &set(&names)])?;
        ensure!(!ok, "a wrong password did not fail its node:\n{out}");
        ensure!(
            out.contains(four.as_str()) && out.to_lowercase().contains("password"),
            "the wrong password is not named for {four}:\n{out}"
        );

        // check: every BMC reached with the credentials accepted, but the fourth's.
        let (out, ok) = cli(c, &admin, &["check", &set(&names), "--json"])?;
        ensure!(!ok, "check passed with a wrong password:\n{out}");
        let v = first_json(&out)?;
        for n in &good {
            let summary = v["targets"][n]["result"]["summary"].as_str().unwrap_or("");
            ensure!(
                v["targets"][n]["state"] == "ok" && summary.contains("credentials accepted"),
                "{n}: {v}"
            );
        }
        ensure!(v["targets"][four]["state"] == "failed", "{v}");

        // A dry run calls no BMC.
        let before = posts(&sushy);
        let (out, ok) = cli(c, &admin, &["on", &set(&good)])?;
        ensure!(ok, "{out}");
        ensure!(out.contains("would power on"), "{out}");
        ensure!(
            posts(&sushy) == before,
            "a dry run called the BMC:\n{:?}",
            posts(&sushy)
        );

        // An operator of @rack1 cannot power @rack2: refused before any call, and audited.
        let (status, v) = http_request(
            c.http_addr(),
            "POST",
            "/tokens",
            Some(&admin),
            Some(&json!({"name": "ops1", "role": "operator", "groups": ["rack1"]})),
            HTTP,
        )?;
        ensure!(status == 200, "POST /tokens: {status}");
        let ops1: Value = serde_json::from_slice(&v)?;
        let ops1 = ops1["token"].as_str().context("a token")?.to_string();
        let (out, ok) = cli(c, &ops1, &["on", "@rack2", "--for-real"])?;
        ensure!(!ok && out.contains("refused"), "{out}");
        ensure!(posts(&sushy) == before, "a refused action called the BMC");
        let audit = fs::read_to_string(state.join("audit.jsonl"))?;
        ensure!(
            audit
                .lines()
                .any(|l| l.contains("\"ops1\"") && l.contains("action.refused")),
            "the refusal is not audited"
        );

        // For real: on; already on; off at once; a graceful off; a reset.
        let (out, ok) = cli(c, &ops1, &["on", "@rack1", "--for-real"])?;
        ensure!(ok, "{out}");
        ensure!(out.contains("BMC On"), "{out}");
        let (out, ok) = cli(c, &admin, &["on", &set(&good), "--for-real", "--json"])?;
        ensure!(ok, "{out}");
        let v = first_json(&out)?;
        for n in &good[..2] {
            ensure!(
                v["targets"][n]["result"]["summary"] == "already On, agent up",
                "{n} was powered on again: {v}"
            );
        }
        ensure!(
            v["targets"][&good[2]]["result"]["summary"] == "powered on, agent up",
            "{v}"
        );
        let (out, ok) = cli(c, &admin, &["off", one, "--force", "--for-real"])?;
        ensure!(ok, "{out}");
        let (out, ok) = cli(
            c,
            &admin,
            &["off", &names[1], "--timeout", "40s", "--for-real"],
        )?;
        ensure!(ok, "{out}");
        let (out, ok) = cli(c, &admin, &["reset", &names[2], "--for-real"])?;
        ensure!(ok, "{out}");
        let (out, ok) = cli(c, &admin, &["status", &set(&good), "--json"])?;
        ensure!(ok, "{out}");
        let v = first_json(&out)?;
        for (n, want) in [
            (&names[0], "BMC Off"),
            (&names[1], "BMC Off"),
            (&names[2], "BMC On"),
        ] {
            let got = v["targets"][n]["result"]["stdout"].as_str().unwrap_or("");
            ensure!(got.starts_with(want), "{n}: {got:?}, not {want}: {v}");
        }
        Ok(())
    })
}

/// Each node's `stdout` line of a `power ... --json` answer, by node.
fn lines_of(out: &str, nodes: &[&String]) -> Result<Vec<String>> {
    let v = first_json(out)?;
    nodes
        .iter()
        .map(|n| {
            v["targets"][n.as_str()]["result"]["stdout"]
                .as_str()
                .map(|s| s.trim().to_string())
                .with_context(|| format!("no result for {n}: {v}"))
        })
        .collect()
}

/// What the root's action said of `node` (`summary`).
fn summary_of(out: &str, node: &str) -> Result<String> {
    let v = first_json(out)?;
    v["targets"][node]["result"]["summary"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no summary for {node}: {v}"))
}

#[test]
fn ipmi_power_stops_and_starts_the_nodes_real_agents() -> Result<()> {
    let Some(tools) = require()? else {
        return Ok(());
    };
    with_cluster(3, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let admin = c.admin_token().to_string();
        let dir = Scratch::new("power-ipmi")?;

        // Each node's power becomes its agent: the harness's process stops and the node's BMC,
        // powered on from the start, runs the same command line in its chassis.
        let mut sims = Vec::new();
        for (i, name) in names.iter().enumerate() {
            // A fresh boot: the node's counters start from zero (its metrics file emptied, as a
            // reboot clears the kernel's counts), and the agent's previous life is dropped, as a
            // real reboot's new kernel boot id makes it do (test hosts share one kernel).
            let metrics = c.dir().join(format!("{name}.metrics"));
            let previous = c.agent_state_dir(i)?.join("previous-life.bin");
            let reset = format!(
                ": >{} && rm -f {}",
                sh_quote(metrics.to_str().context("a UTF-8 path")?),
                sh_quote(previous.to_str().context("a UTF-8 path")?)
            );
            let boot = agent_boot_script(c, i, dir.path(), &reset)?;
            c.terminate_agent(i)?;
            let mut opts = IpmiOptions::new(name);
            opts.node_command = boot;
            opts.powered_on = true;
            sims.push(IpmiSim::start(&tools, &dir.path().join(name), &opts)?);
        }
        c.wait_healthy(&names, REJOIN)
            .context("the agents run by the BMCs joining")?;
        let mut toml = String::new();
        for sim in &sims {
            toml.push_str(&format!(
                "[[bmc]]\nnodes = \"{}\"\nprotocol = \"ipmi\"\naddress = \"{}\"\nport = {}\n\
                 user = \"{}\"\npassword_file = \"{}\"\n\n",
                sim.name,
                sim.addr.ip(),
                sim.addr.port(),
                sim.user,
                sim.password_file.display()
            ));
        }
        fs::write(c.root_state().join("root.toml"), toml)?;

        // Counters the root sums: every later step must keep the total exact.
        let mut sum = 0.0;
        for i in 0..names.len() {
            let v = 100.0 * (i as f64 + 1.0);
            c.set_metric(i, WORK, v)?;
            sum += v;
        }
        c.wait_for_counter(WORK, sum, FORM)?;

        let (off, cycled) = (0, 1);
        let all = names.join(",");
        let everyone: Vec<&String> = names.iter().collect();
        let result = (|| -> Result<()> {
            let (out, ok) = cli(c, &admin, &["status", &all, "--json"])?;
            ensure!(ok, "{out}");
            for (n, line) in names.iter().zip(lines_of(&out, &everyone)?) {
                ensure!(line == "BMC On, agent up", "{n}: {line:?}\n{out}");
            }

            // A forced off cuts the node's power: its agent is gone, the others stay.
            let node = &names[off];
            let (out, ok) = cli(c, &admin, &["off", node, "--force", "--for-real", "--json"])?;
            ensure!(ok, "{out}");
            let summary = summary_of(&out, node)?;
            ensure!(
                summary == "powered off (forced), agent off",
                "{summary}: {out}"
            );
            ensure!(
                sims[off].node_pid().is_none(),
                "{node}'s agent still runs after its power was cut"
            );
            let others: Vec<&String> = names.iter().filter(|n| *n != node).collect();
            let took = c
                .wait_for(
                    |t| !t.is_attached(node) && others.iter().all(|o| t.is_attached(o)),
                    LEAVE,
                )
                .with_context(|| format!("{node} leaving the tree, the others staying"))?;
            eprintln!("{node} left the tree {took:?} after its power was cut");
            let (out, ok) = cli(c, &admin, &["status", &all, "--json"])?;
            ensure!(ok, "{out}");
            for (n, line) in names.iter().zip(lines_of(&out, &everyone)?) {
                // Off as planned: neither lost nor stale, however long it stays away.
                let want = if n == node {
                    "BMC Off, agent off"
                } else {
                    "BMC On, agent up"
                };
                ensure!(line == want, "{n}: {line:?}\n{out}");
            }
            let status = c.http_get("/status")?;
            ensure!(
                status["nodes_off"] == 1 && status["nodes_lost"] == 0 && status["nodes_stale"] == 0,
                "a planned departure counted as a failure: {status}"
            );
            let listed = c.http_get("/nodes")?;
            let entry = listed
                .as_array()
                .and_then(|a| a.iter().find(|n| n["name"] == node.as_str()))
                .with_context(|| format!("{node} in /nodes: {listed}"))?;
            ensure!(
                entry["status"] == "off"
                    && entry["departed"]
                        .as_str()
                        .is_some_and(|w| w.starts_with("power off by admin, action ")),
                "{node} in /nodes: {entry}"
            );
            // Its counts stay in the total while it is off.
            c.wait_for_counter(WORK, sum, FORM)
                .with_context(|| format!("the total with {node} off"))?;

            // On: the agent starts again and rejoins; the total is exact, and what the node
            // counts after its boot adds to it.
            let (out, ok) = cli(c, &admin, &["on", node, "--for-real", "--json"])?;
            ensure!(ok, "{out}");
            ensure!(
                summary_of(&out, node)? == "powered on, agent up",
                "the result does not say the agent is back: {out}"
            );
            ensure!(
                sims[off].node_pid().is_some(),
                "powering {node} on started no agent"
            );
            let took = c
                .wait_healthy(&names, REJOIN)
                .with_context(|| format!("{node} rejoining after power on"))?;
            eprintln!("{node} was back in the tree {took:?} after its power came on");
            c.wait_for_counter(WORK, sum, FORM)
                .with_context(|| format!("the total after {node} came back"))?;
            let status = c.http_get("/status")?;
            ensure!(status["nodes_off"] == 0, "back, yet still off: {status}");
            c.set_metric(off, WORK, 7.0)?;
            sum += 7.0;
            c.wait_for_counter(WORK, sum, FORM)
                .with_context(|| format!("{node}'s counts after its boot"))?;

            // A cycle: the node's agent is cut and started again (a new process), and rejoins.
            let node = &names[cycled];
            let before = sims[cycled]
                .node_pid()
                .with_context(|| format!("{node}'s agent is not running"))?;
            let (out, ok) = cli(c, &admin, &["cycle", node, "--for-real", "--json"])?;
            ensure!(ok, "{out}");
            let after = sims[cycled]
                .node_pid()
                .with_context(|| format!("{node} has no agent after its cycle"))?;
            ensure!(
                after != before,
                "{node}'s agent {before} was not stopped by the cycle"
            );
            ensure!(
                sims[cycled]
                    .chassis_calls()
                    .iter()
                    .any(|l| l == "set power 0"),
                "{node}'s chassis was not powered off: {:?}",
                sims[cycled].chassis_calls()
            );
            // The new agent is the one in the tree once what it counts reaches the total; the
            // old one's counts stay there, once.
            c.set_metric(cycled, WORK, 5.0)?;
            sum += 5.0;
            let took = c
                .wait_for_counter(WORK, sum, REJOIN)
                .with_context(|| format!("the total after {node}'s cycle"))?;
            eprintln!("{node}'s new agent counted in the total {took:?} after its cycle");
            c.wait_healthy(&names, REJOIN)
                .with_context(|| format!("{node} rejoining after its cycle"))?;

            let (out, ok) = cli(c, &admin, &["status", &all, "--json"])?;
            ensure!(ok, "{out}");
            for (n, line) in names.iter().zip(lines_of(&out, &everyone)?) {
                ensure!(line == "BMC On, agent up", "{n}: {line:?}\n{out}");
            }
            Ok(())
        })();
        // Whatever happened, the node powered off is on again before the cluster goes.
        if result.is_err() && sims[off].node_pid().is_none() {
            if let Err(e) = sims[off].ipmitool(&["chassis", "power", "on"]) {
                eprintln!("powering {} back on: {e:#}", names[off]);
            }
        }
        result.with_context(|| {
            let logs: Vec<String> = sims
                .iter()
                .map(|s| s.node_dir.join("node.log").display().to_string())
                .collect();
            format!("the BMC-run agents' logs: {logs:?} (BANYAN_KEEP_LOGS keeps them)")
        })
    })
}

#[test]
fn a_gateway_agent_powers_bmcs_only_its_host_reaches() -> Result<()> {
    let Some(tools) = require()? else {
        return Ok(());
    };
    let opts = ClusterOptions {
        agent_config: Some("[bmc]\ngateway = true\n".into()),
        ..ClusterOptions::default()
    };
    Cluster::with_options(3, opts, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let admin = c.admin_token().to_string();
        let dir = Scratch::new("power-gateway")?;
        // The BMC network: the first host's own loopback, which only that host reaches.
        let gateway = names[0].clone();
        let behind: Vec<String> = names[1..].to_vec();
        let mut opts = SushyOptions::new(&behind);
        opts.site = Site::Host {
            host: c.hosts()[0].clone(),
            only_inside: true,
        };
        let sushy = Sushy::start(&tools, &dir.path().join("sushy"), &opts)?;
        let ca = sushy
            .ca_file
            .clone()
            .context("a TLS emulator has a CA file")?;
        let set = behind.join(",");
        let section = |gw: &str| {
            format!(
                "[[bmc]]\nnodes = \"{set}\"\nprotocol = \"redfish\"\naddress = \"127.0.0.1\"\n\
                 port = {}\nuser = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n\
                 system_id = \"{{name}}\"\n{gw}",
                sushy.addr.port(),
                sushy.user,
                sushy.password_file.display(),
                ca.display()
            )
        };
        let root_toml = c.root_state().join("root.toml");

        // A broken root.toml refuses the action whole, before any BMC call, saying where.
        for (bad, want) in [
            (section("colour = \"blue\"\n"), "unknown field `colour`"),
            (
                section("").replace("address = \"127.0.0.1\"", "address = \"{name}.-bmc\""),
                "starts or ends with '-'",
            ),
        ] {
            fs::write(&root_toml, bad)?;
            let (out, ok) = cli(c, &admin, &["status", &set])?;
            ensure!(
                !ok && out.contains("root.toml") && out.contains(want),
                "a bad root.toml ({want}) was not refused with its reason: {out}"
            );
        }
        ensure!(posts(&sushy).is_empty(), "a refused action called the BMC");

        // Without the gateway, the root cannot reach these BMCs.
        fs::write(&root_toml, section(""))?;
        let (out, ok) = cli(c, &admin, &["status", &set])?;
        ensure!(!ok && out.contains("cannot connect"), "{out}");

        // Through the gateway: status, a dry run that calls nothing, on, a forced reset.
        fs::write(&root_toml, section(&format!("gateway = \"{gateway}\"\n")))?;
        let (out, ok) = cli(c, &admin, &["status", &set, "--json"])?;
        ensure!(ok, "{out}");
        let everyone: Vec<&String> = behind.iter().collect();
        for (n, line) in behind.iter().zip(lines_of(&out, &everyone)?) {
            ensure!(line == "BMC Off, agent up", "{n}: {line:?}\n{out}");
        }
        let (out, ok) = cli(c, &admin, &["on", &set])?;
        ensure!(ok, "{out}");
        ensure!(
            out.contains(&format!("through the gateway {gateway}")),
            "the dry run does not say the gateway: {out}"
        );
        ensure!(
            posts(&sushy).is_empty(),
            "a dry run called the BMC: {:?}",
            posts(&sushy)
        );
        let (out, ok) = cli(c, &admin, &["on", &set, "--for-real", "--json"])?;
        ensure!(ok, "{out}");
        for n in &behind {
            ensure!(summary_of(&out, n)? == "powered on, agent up", "{n}: {out}");
        }
        let (out, ok) = cli(
            c,
            &admin,
            &["reset", &behind[0], "--force", "--for-real", "--json"],
        )?;
        ensure!(ok, "{out}");
        ensure!(
            summary_of(&out, &behind[0])?.starts_with("ForceRestart done"),
            "{out}"
        );
        let calls = posts(&sushy);
        ensure!(
            calls
                .iter()
                .filter(|r| r.contains("ComputerSystem.Reset"))
                .count()
                == 3,
            "two power-ons and one reset were asked, the BMC saw: {calls:?}"
        );
        let (out, ok) = cli(c, &admin, &["status", &set, "--json"])?;
        ensure!(ok, "{out}");
        for (n, line) in behind.iter().zip(lines_of(&out, &everyone)?) {
            ensure!(line == "BMC On, agent up", "{n}: {line:?}\n{out}");
        }

        // The gateway's agent stops: its nodes fail at once, with the reason.
        c.terminate_agent(0)?;
        c.wait_for(|t| !t.is_attached(&gateway), LEAVE)
            .context("the gateway leaving the tree")?;
        let (out, ok) = cli(c, &admin, &["status", &set, "--json"])?;
        ensure!(!ok, "status passed without its gateway: {out}");
        let v = first_json(&out)?;
        for n in &behind {
            let summary = v["targets"][n]["result"]["summary"].as_str().unwrap_or("");
            ensure!(
                v["targets"][n]["state"] == "failed"
                    && summary.contains(&format!("its BMC gateway, the agent {gateway}, is ")),
                "{n}: {v}"
            );
        }
        Ok(())
    })
}

/// A running `banyan console`: its stdin, and everything it printed so far.
struct ConsoleClient {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ConsoleClient {
    fn start(c: &Cluster, token: &str, node: &str, extra: &[&str]) -> Result<ConsoleClient> {
        use std::io::Read;
        use std::process::{Command, Stdio};
        let cli = banyan_tests::support::binaries()?
            .root
            .parent()
            .context("the binaries' directory")?
            .join("banyan");
        let mut child = Command::new(&cli)
            .args([
                "--root",
                &format!("http://{}", c.http_addr()),
                "--token",
                token,
            ])
            .args(["console", node])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", cli.display()))?;
        let stdin = child.stdin.take().context("stdin")?;
        let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for mut stream in [
            Box::new(child.stdout.take().context("stdout")?) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().context("stderr")?),
        ] {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = seen.lock() {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        Ok(ConsoleClient { child, stdin, seen })
    }

    fn seen(&self) -> String {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until the client has printed `want` (a liveness bound, not a timing).
    fn wait_for(&self, want: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            if self.seen().contains(want) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!(
            "the console never printed {want:?}; it printed {:?}",
            self.seen()
        )
    }

    fn type_(&mut self, keys: &str) -> Result<()> {
        use std::io::Write;
        self.stdin.write_all(keys.as_bytes())?;
        self.stdin.flush()?;
        Ok(())
    }

    /// Types the escape and waits for the client to exit; whether it exited 0.
    fn leave(mut self) -> Result<bool> {
        self.type_("\r&.")?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        anyhow::bail!("the console did not leave on &.: {:?}", self.seen())
    }
}

impl Drop for ConsoleClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn console_through_ipmi_sol_has_one_writer_and_is_audited() -> Result<()> {
    use std::io::{Read, Write};
    let Some(tools) = require()? else {
        return Ok(());
    };
    with_cluster(1, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let admin = c.admin_token().to_string();
        let node = names[0].clone();
        let dir = Scratch::new("console")?;
        // The node's serial port: answers each chunk upper-cased, as a line discipline would not.
        let serial = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
        let serial_addr = serial.local_addr()?;
        std::thread::spawn(move || {
            for mut stream in serial.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = stream.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let text = String::from_utf8_lossy(&buf[..n]).to_uppercase();
                        let reply = format!("ECHO:{}", text.trim());
                        if stream.write_all(reply.as_bytes()).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let mut opts = IpmiOptions::new(&node);
        opts.sol = Some(serial_addr);
        opts.powered_on = true;
        let sim = IpmiSim::start(&tools, &dir.path().join("ipmi"), &opts)?;
        fs::write(
            c.root_state().join("root.toml"),
            format!(
                "[[bmc]]\nnodes = \"{node}\"\nprotocol = \"ipmi\"\naddress = \"{}\"\nport = {}\n\
                 user = \"{}\"\npassword_file = \"{}\"\n",
                sim.addr.ip(),
                sim.addr.port(),
                sim.user,
                sim.password_file.display()
            ),
        )?;

        // The first client types; what it types reaches the node and the answer comes back.
        let mut writer = ConsoleClient::start(c, &admin, &node, &[])?;
        writer.wait_for("you may type")?;
        writer.type_("hello\r")?;
        writer.wait_for("ECHO:HELLO")?;
        // A second watches: it sees the writer's session, and its keys are refused.
        let mut reader = ConsoleClient::start(c, &admin, &node, &[])?;
        reader.wait_for(&format!("read-only: {} is typing", "admin"))?;
        writer.type_("second\r")?;
        reader.wait_for("ECHO:SECOND")?;
        reader.type_("zzz\r")?;
        reader.wait_for(&format!("[banyan: read-only: admin is typing on {node}]"))?;
        writer.type_("third\r")?;
        writer.wait_for("ECHO:THIRD")?;
        ensure!(
            !writer.seen().contains("ECHO:ZZZ") && !reader.seen().contains("ECHO:ZZZ"),
            "a read-only client's keys reached the node: {:?}",
            writer.seen()
        );
        ensure!(writer.leave()?, "the writer's console did not exit 0");
        ensure!(reader.leave()?, "the reader's console did not exit 0");

        // No BMC for a node: a clear refusal, exit 1.
        let (out, ok) = banyan_cli(c, &["--token", &admin, "console", "nosuchnode"])?;
        ensure!(
            !ok && out.contains("no BMC configured for nosuchnode"),
            "{out}"
        );

        let audit = fs::read_to_string(c.root_state().join("audit.jsonl"))?;
        ensure!(
            audit
                .lines()
                .filter(|l| l.contains("\"console.request\"") && l.contains(&node))
                .count()
                == 2,
            "not one console.request per client before its session:\n{audit}"
        );
        for (event, role) in [
            ("console.start", "writer"),
            ("console.start", "reader"),
            ("console.end", "writer"),
            ("console.end", "reader"),
        ] {
            ensure!(
                audit.lines().any(|l| l.contains(&format!("\"{event}\""))
                    && l.contains(&format!("\"role\":\"{role}\""))
                    && l.contains(&node)),
                "no {event} of the {role} in the audit log:\n{audit}"
            );
        }
        Ok(())
    })
}

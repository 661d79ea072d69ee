//! `banyan hv` against a real Keystone + Placement + Nova (api, conductor, scheduler) and one
//! real nova-compute (fake virt driver, `host = NODE`) per test host, started and stopped by that
//! host's banyan agent as a configured service unit (`scripts/lib/openstack` runs the cloud).
//!
//! Every claim is checked against Nova's own view, read by the test over plain HTTP with its own
//! token (not through banyan's client), and against the processes on the hosts:
//! - hosts unknown to Nova fail each with that reason; `status` matches `os-services`,
//!   `os-hypervisors` and the servers of each host, and the agents' daemon state, for enabled,
//!   disabled and dead (compute killed) hosts;
//! - `enable` starts the daemons and enables the service (a stopped, disabled host too), and Nova
//!   then schedules a server there;
//! - `disable` deletes the host's servers, waits, stops the daemons: Nova shows the service
//!   disabled (the reason names the operator) and down, no server on the host; servers that
//!   cannot go within `--vm-timeout` fail the node with their names and leave the daemons
//!   running, unless `--force-shutoff`;
//! - dry runs change nothing in Nova (its state compared before and after) and start or stop
//!   nothing;
//! - `runvms --fill` fills exactly the free capacity Placement reports, and no more;
//! - wrong credentials, a token Keystone no longer accepts (renewed without the caller knowing),
//!   and a Nova that is down each give a clear error.

use anyhow::{bail, ensure, Context, Result};
use banyan_tests::cluster::{banyan_cli, banyan_cli_env, Cluster, ClusterOptions};
use banyan_tests::openstack::{compute_agent_config, OpenStack};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::time::Duration;

use nix::sys::signal::Signal;

fn signal(pid: i32, sig: Signal) -> Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
        .with_context(|| format!("sending {sig} to {pid}"))
}

const FORM: Duration = Duration::from_secs(45);
/// A started nova-compute registers and reports up within seconds (report_interval 2 s); a
/// stopped one is reported down after service_down_time (6 s). Generous liveness bounds.
const NOVA_SEES: Duration = Duration::from_secs(60);
const ACTIVE: Duration = Duration::from_secs(90);

/// `banyan --token T hv ARGS`: its output and whether it exited 0.
fn hv(c: &Cluster, args: &[&str]) -> Result<(String, bool)> {
    let token = c.admin_token().to_string();
    let mut all = vec!["--token", token.as_str(), "hv"];
    all.extend_from_slice(args);
    banyan_cli(c, &all)
}

/// The action JSON `--json` printed (stdout comes first in the helper's output).
fn action_json(out: &str) -> Result<Value> {
    let start = out.find("{\n").context("no JSON in the output")?;
    serde_json::Deserializer::from_str(&out[start..])
        .into_iter::<Value>()
        .next()
        .context("no JSON in the output")?
        .with_context(|| format!("the CLI's JSON:\n{out}"))
}

fn result<'a>(a: &'a Value, node: &str) -> &'a Value {
    &a["targets"][node]["result"]
}

fn summary(a: &Value, node: &str) -> String {
    result(a, node)["summary"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The status row a node's result carries.
fn row(a: &Value, node: &str) -> Result<Value> {
    let out = result(a, node)["stdout"].as_str().unwrap_or_default();
    serde_json::from_str(out.trim()).with_context(|| format!("{node}'s status row: {a}"))
}

/// Nova's state of the cloud, to compare before and after a dry run.
fn nova_state(os: &OpenStack, hosts: &[String]) -> Result<Value> {
    let mut state = BTreeMap::new();
    for h in hosts {
        let service = os.service(h)?.map(|mut s| {
            // updated_at moves with every report; what a dry run must not change is the rest.
            s["updated_at"] = Value::Null;
            s
        });
        let mut servers: Vec<(String, String)> = os
            .servers_on(h)?
            .iter()
            .map(|s| (s["id"].to_string(), s["status"].to_string()))
            .collect();
        servers.sort();
        state.insert(
            h.clone(),
            serde_json::json!({"service": service, "servers": servers}),
        );
    }
    Ok(serde_json::to_value(state)?)
}

fn port_base() -> u16 {
    // Nine ports from the base; spread by pid so that two runs on one machine do not collide.
    20_000 + u16::try_from(std::process::id() % 400).unwrap_or(0) * 20
}

#[test]
fn hypervisors_are_enabled_drained_and_filled_through_keystone_and_nova() -> Result<()> {
    let opts = ClusterOptions {
        agent_config: Some(compute_agent_config()),
        ..ClusterOptions::default()
    };
    Cluster::with_options(3, opts, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let Some(os) = OpenStack::up(&c.dir().join("openstack"), port_base())? else {
            return Ok(());
        };
        for n in &names {
            os.compute_conf(n)?;
            // Two vCPUs and no overcommit: a host is full after two servers of one vCPU, so
            // that --fill is checked against a capacity small enough to boot whole.
            let conf = os.dir().join("compute").join(n).join("nova.conf");
            let mut text = fs::read_to_string(&conf)?;
            text.push_str(
                "\n[DEFAULT]\ncompute_driver = fake.SmallFakeDriver\ncpu_allocation_ratio = 1.0\n",
            );
            fs::write(&conf, text)?;
        }
        fs::write(
            c.root_state().join("root.toml"),
            format!(
                "[openstack]\nopenrc = \"{}\"\nup_timeout = \"60s\"\n",
                os.dir().join("admin-openrc").display()
            ),
        )?;
        let all = c.all_nodes();
        let (h1, h2, h3) = (names[0].as_str(), names[1].as_str(), names[2].as_str());

        // Before any compute runs, Nova knows none of the hosts: each fails with that reason.
        let (out, ok) = hv(c, &["status", &all, "--json"])?;
        ensure!(!ok, "status of hosts unknown to Nova succeeded:\n{out}");
        let a = action_json(&out)?;
        for n in &names {
            ensure!(
                summary(&a, n)
                    .starts_with(&format!("Nova has no nova-compute service on host \"{n}\"")),
                "{n}: {}",
                summary(&a, n)
            );
        }

        // A dry run of enable starts nothing and changes nothing in Nova.
        let before = nova_state(&os, &names)?;
        let (out, ok) = hv(c, &["enable", &all, "--json"])?;
        ensure!(ok, "dry-run enable failed:\n{out}");
        let a = action_json(&out)?;
        for n in &names {
            ensure!(result(&a, n)["dry_run"] == true, "{a}");
            ensure!(
                os.compute_pid(n).is_none(),
                "a dry run started {n}'s nova-compute"
            );
        }
        ensure!(nova_state(&os, &names)? == before, "a dry run changed Nova");

        // Enable for real: the daemons start, Nova sees them up, they are enabled.
        let (out, ok) = hv(c, &["enable", &all, "--for-real"])?;
        ensure!(ok, "enable failed:\n{out}");
        for n in &names {
            ensure!(
                out.contains(&format!("[ OK ] Starting OpenStack daemons on {n}")),
                "{out}"
            );
            let s = os.service(n)?.context("no service after enable")?;
            ensure!(s["status"] == "enabled" && s["state"] == "up", "{n}: {s}");
            ensure!(
                os.compute_pid(n).is_some(),
                "{n}'s nova-compute is not running"
            );
        }
        ensure!(out.contains("All commands executed successfully."), "{out}");
        os.wait_schedulable(&names, NOVA_SEES)?;
        for n in &names {
            os.wait_service(n, "up", NOVA_SEES)?;
        }

        // Nova schedules there: one server through banyan on h1, one directly on h2.
        let (out, ok) = hv(
            c,
            &[
                "runvms",
                h1,
                "--flavor",
                "banyan-tiny",
                "--image",
                "banyan-test-image",
                "--count",
                "1",
                "--for-real",
            ],
        )?;
        ensure!(
            ok && out.contains(&format!("{h1}: 1 of 1 ACTIVE")),
            "runvms on {h1} failed:\n{out}"
        );
        os.wait_active(h1, 1, ACTIVE)?;
        os.boot_on(h2, "direct-on-h2")?;
        os.wait_active(h2, 1, ACTIVE)?;

        // Status matches Nova's services, hypervisors and servers, and the daemons.
        let (out, ok) = hv(c, &["status", &all, "--nvms", "--json"])?;
        ensure!(ok, "status failed:\n{out}");
        let a = action_json(&out)?;
        let hypervisors = os.nova("GET", "/os-hypervisors/detail", None)?;
        for n in &names {
            let r = row(&a, n)?;
            let s = os.service(n)?.context("no service")?;
            let hyp = hypervisors["hypervisors"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|h| h["service"]["host"] == n.as_str())
                .with_context(|| format!("os-hypervisors has no {n}: {hypervisors}"))?;
            ensure!(
                r["runs_vms"] == (s["status"] == "enabled"),
                "{n}: {r} vs {s}"
            );
            ensure!(r["nova_state"] == s["state"], "{n}: {r} vs {s}");
            ensure!(
                hyp["state"] == s["state"] && hyp["status"] == s["status"],
                "{hyp}"
            );
            ensure!(
                r["daemons"] == "running" && r["agent"] == "up" && r["alive"] == true,
                "{r}"
            );
            let servers = os.servers_on(n)?;
            ensure!(
                r["servers"].as_array().map(Vec::len) == Some(servers.len()),
                "{n}: {r} vs {} servers",
                servers.len()
            );
            ensure!(hyp["running_vms"] == servers.len(), "{n}: {hyp}");
        }
        // Without a node set: every node of the cluster.
        let (table, _) = hv(c, &["status", "--nvms"])?;
        ensure!(
            table.contains("HYPERVISOR")
                && table.contains("#VMS")
                && table.contains("direct-on-h2"),
            "{table}"
        );

        // A dry run of disable: Nova unchanged, the daemons untouched.
        let before = nova_state(&os, &names)?;
        let pid = os.compute_pid(h1);
        let (out, ok) = hv(c, &["disable", h1])?;
        ensure!(
            ok && out.contains("[DRY ]") && out.contains("would delete 1 server"),
            "{out}"
        );
        ensure!(nova_state(&os, &names)? == before, "a dry run changed Nova");
        ensure!(
            os.compute_pid(h1) == pid,
            "a dry run touched {h1}'s daemons"
        );

        // Disable for real: servers deleted, daemons stopped, Nova shows disabled and down.
        let (out, ok) = hv(c, &["disable", h1, "--json", "--for-real"])?;
        ensure!(ok, "disable failed:\n{out}");
        let a = action_json(&out)?;
        ensure!(
            summary(&a, h1) == "disabled, 1 server(s) deleted, daemons stopped",
            "{a}"
        );
        ensure!(os.servers_on(h1)?.is_empty(), "servers left on {h1}");
        ensure!(
            os.compute_pid(h1).is_none(),
            "{h1}'s nova-compute still runs"
        );
        let s = os.wait_service(h1, "down", NOVA_SEES)?;
        ensure!(s["status"] == "disabled", "{s}");
        let why = s["disabled_reason"].as_str().unwrap_or_default();
        ensure!(
            why.starts_with("disabled by ") && why.contains(" with banyan at "),
            "{s}"
        );

        // A dead host: its compute killed behind the agent's back.
        let pid = os.compute_pid(h2).context("h2's compute is not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        os.wait_service(h2, "down", NOVA_SEES)?;
        let (out, _) = hv(c, &["status", &all, "--json"])?;
        let a = action_json(&out)?;
        let (r1, r2, r3) = (row(&a, h1)?, row(&a, h2)?, row(&a, h3)?);
        ensure!(
            r1["runs_vms"] == false && r1["alive"] == false && r1["daemons"] == "stopped",
            "{r1}"
        );
        ensure!(
            r2["runs_vms"] == true
                && r2["nova_state"] == "down"
                && r2["daemons"] == "stopped"
                && r2["alive"] == false,
            "{r2}"
        );
        ensure!(r3["runs_vms"] == true && r3["alive"] == true, "{r3}");

        // A server that cannot go in time: h3's nova-compute is frozen (SIGSTOP) while Nova
        // still counts it up, so the deletion Nova casts to it waits there. (The service is
        // disabled first, directly: Nova's disable waits on the compute, which is frozen.)
        // Without --force-shutoff the node fails naming the server, and the daemons keep running.
        let stuck = os.boot_on(h3, "stuck-on-h3")?;
        os.wait_active(h3, 1, ACTIVE)?;
        os.disable_service(h3, "test: frozen compute")?;
        let frozen = os.compute_pid(h3).context("h3's compute is not running")?;
        signal(frozen, Signal::SIGSTOP)?;
        let (out, ok) = hv(
            c,
            &["disable", h3, "--vm-timeout", "2s", "--json", "--for-real"],
        )?;
        signal(frozen, Signal::SIGCONT)?;
        ensure!(!ok, "disable with a server left succeeded:\n{out}");
        let a = action_json(&out)?;
        let s3 = summary(&a, h3);
        ensure!(
            s3.contains("1 server(s) remain on")
                && s3.contains("stuck-on-h3")
                && s3.contains(&stuck),
            "{s3}"
        );
        ensure!(
            os.compute_pid(h3) == Some(frozen),
            "the daemons were stopped without --force-shutoff"
        );
        // With --force-shutoff they are stopped anyway.
        let (out, ok) = hv(c, &["enable", h3, "--for-real"])?;
        ensure!(
            ok && out.contains(&format!("[ OK ] Enabling hypervisor {h3}")),
            "{out}"
        );
        os.wait_active(h3, 0, ACTIVE)?;
        os.boot_on(h3, "forced-on-h3")?;
        os.wait_active(h3, 1, ACTIVE)?;
        os.disable_service(h3, "test: frozen compute")?;
        let frozen = os.compute_pid(h3).context("h3's compute is not running")?;
        signal(frozen, Signal::SIGSTOP)?;
        let (out, ok) = hv(
            c,
            &[
                "disable",
                h3,
                "--vm-timeout",
                "2s",
                "--force-shutoff",
                "--json",
                "--for-real",
            ],
        )?;
        ensure!(ok, "disable --force-shutoff failed:\n{out}");
        let a = action_json(&out)?;
        ensure!(
            summary(&a, h3).contains("1 server(s) remained")
                && summary(&a, h3).contains("forced-on-h3"),
            "{a}"
        );
        ensure!(
            os.compute_pid(h3).is_none(),
            "--force-shutoff left the daemons running"
        );

        // Enable on a stopped, disabled host (h1), a disabled one (h3) and a dead one (h2).
        let (out, ok) = hv(c, &["enable", &all, "--json", "--for-real"])?;
        ensure!(ok, "enable failed:\n{out}");
        for n in &names {
            let s = os.wait_service(n, "up", NOVA_SEES)?;
            ensure!(s["status"] == "enabled", "{n}: {s}");
        }
        // Deletions asked while a compute was stopping finish once it runs again: wait until
        // every server left is ACTIVE, so that Placement's usage holds still.
        let until = std::time::Instant::now() + ACTIVE;
        loop {
            let mut settled = true;
            for n in &names {
                settled &= os
                    .servers_on(n)?
                    .iter()
                    .all(|s| s["status"] == "ACTIVE" && s["OS-EXT-STS:task_state"].is_null());
            }
            if settled {
                break;
            }
            ensure!(std::time::Instant::now() < until, "servers did not settle");
            std::thread::sleep(Duration::from_millis(500));
        }

        // --fill boots exactly what Placement has room for.
        let providers = os.placement("/resource_providers")?;
        let mut room = 0u64;
        for p in providers["resource_providers"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let uuid = p["uuid"].as_str().unwrap_or_default();
            let inv = os.placement(&format!("/resource_providers/{uuid}/inventories"))?;
            let used = os.placement(&format!("/resource_providers/{uuid}/usages"))?;
            let v = &inv["inventories"]["VCPU"];
            let total = v["total"].as_u64().unwrap_or(0) - v["reserved"].as_u64().unwrap_or(0);
            ensure!(v["allocation_ratio"] == 1.0, "{inv}");
            room += total - used["usages"]["VCPU"].as_u64().unwrap_or(0);
        }
        ensure!(room > 0, "no room to fill");
        let (out, ok) = hv(
            c,
            &[
                "runvms",
                &all,
                "--flavor",
                "banyan-tiny",
                "--image",
                "banyan-test-image",
                "--fill",
                "--name",
                "fill",
                "--json",
                "--for-real",
            ],
        )?;
        ensure!(ok, "runvms --fill failed:\n{out}");
        let mut filled = 0;
        for n in &names {
            filled += os
                .servers_on(n)?
                .iter()
                .filter(|s| s["name"].as_str().is_some_and(|x| x.starts_with("fill-")))
                .count();
        }
        ensure!(
            filled as u64 == room,
            "--fill booted {filled}, Placement had room for {room}"
        );
        let (out, ok) = hv(
            c,
            &[
                "runvms",
                &all,
                "--flavor",
                "banyan-tiny",
                "--image",
                "banyan-test-image",
                "--count",
                "1",
                "--name",
                "more",
                "--json",
                "--for-real",
            ],
        )?;
        ensure!(ok, "{out}");
        let a = action_json(&out)?;
        for n in &names {
            ensure!(
                summary(&a, n) == "no server booted (room for 0)",
                "{n}: {}",
                summary(&a, n)
            );
        }

        // An application credential from clouds.yaml; `vms` lists exactly Nova's servers.
        fs::write(
            c.root_state().join("root.toml"),
            format!(
                "[openstack]\ncloud = \"banyan-test-appcred\"\nclouds_yaml = \"{}\"\n",
                os.dir().join("clouds.yaml").display()
            ),
        )?;
        let (out, ok) = hv(c, &["vms", &all, "--json"])?;
        ensure!(ok, "vms with an application credential failed:\n{out}");
        let a = action_json(&out)?;
        for n in &names {
            let listed: Vec<Value> =
                serde_json::from_str(result(&a, n)["stdout"].as_str().unwrap_or("[]").trim())?;
            let mut got: Vec<&str> = listed.iter().filter_map(|s| s["id"].as_str()).collect();
            let nova = os.servers_on(n)?;
            let mut want: Vec<&str> = nova.iter().filter_map(|s| s["id"].as_str()).collect();
            got.sort_unstable();
            want.sort_unstable();
            ensure!(got == want, "{n}: banyan lists {got:?}, Nova {want:?}");
        }

        // Wrong credentials: a clear error per node, nothing else touched.
        let bad = os.dir().join("bad-openrc");
        let rc = fs::read_to_string(os.dir().join("admin-openrc"))?;
        let wrong: String = rc
            .lines()
            .map(|l| {
                if l.contains("OS_PASSWORD=") {
                    "export OS_PASSWORD=wrong".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        fs::write(&bad, wrong)?;
        fs::write(
            c.root_state().join("root.toml"),
            format!("[openstack]\nopenrc = \"{}\"\n", bad.display()),
        )?;
        let (out, ok) = hv(c, &["status", &all, "--json"])?;
        ensure!(!ok, "status with a wrong password succeeded:\n{out}");
        let a = action_json(&out)?;
        for n in &names {
            ensure!(
                summary(&a, n).contains("refused the credentials"),
                "{n}: {}",
                summary(&a, n)
            );
        }
        // The operator's own credentials, passed per call, work where the root's do not.
        let env: Vec<(String, String)> = rc
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("export ")
                    .unwrap_or(l.trim())
                    .split_once('=')
            })
            .filter(|(k, _)| k.starts_with("OS_"))
            .map(|(k, v)| (k.to_string(), v.trim_matches(['\'', '"']).to_string()))
            .collect();
        let token = c.admin_token().to_string();
        let (out, ok) = banyan_cli_env(
            c,
            &["--token", &token, "hv", "--os-credentials", "status", &all],
            &env,
        )?;
        ensure!(ok, "status with the caller's credentials failed:\n{out}");
        let audit = fs::read_to_string(c.root_state().join("audit.jsonl"))?;
        let password = env
            .iter()
            .find(|(k, _)| k == "OS_PASSWORD")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        ensure!(
            !password.is_empty() && !audit.contains(&password),
            "the caller's password reached the audit log"
        );
        fs::write(
            c.root_state().join("root.toml"),
            format!(
                "[openstack]\nopenrc = \"{}\"\n",
                os.dir().join("admin-openrc").display()
            ),
        )?;

        // A token Keystone no longer accepts is replaced without the caller knowing.
        let (out, ok) = hv(c, &["status", &all])?;
        ensure!(ok, "{out}");
        let old = os.current_token();
        os.revoke_tokens()?;
        ensure!(
            os.status_with_token(&old)? == 401,
            "Nova still takes a revoked token: the check below would prove nothing"
        );
        let (out, ok) = hv(c, &["status", &all, "--json"])?;
        ensure!(
            ok,
            "status after the root's token was revoked failed:\n{out}"
        );
        let log = fs::read_to_string(c.dir().join("root.log"))?;
        ensure!(
            log.contains("token refused; making a new one"),
            "the root did not renew its token"
        );

        // Nova down: each node says so.
        os.kill_service("nova-api")?;
        let (out, ok) = hv(c, &["status", &all, "--json"])?;
        ensure!(!ok, "status with Nova down succeeded:\n{out}");
        let a = action_json(&out)?;
        for n in &names {
            let s = summary(&a, n);
            if !(s.starts_with("Nova at ") && s.contains("does not answer")) {
                bail!("{n}: {s}");
            }
        }
        Ok(())
    })
}

//! `banyan power` through the action path, against sushy-tools' Redfish emulator serving one
//! system per test host (basic auth, TLS with a test CA), configured in the root's `root.toml`.
//!
//! What is asserted: `status` shows each BMC's state beside the agent's state and says when they
//! disagree; a dry run makes no BMC call (sushy's request log shows no POST); an operator token
//! of `@rack1` cannot power `@rack2` (refused, audited, no call); `on`, `off --force`, a graceful
//! `off` and `reset` end in the state asked (sushy applies changes 1-11 s later: the root polls,
//! the test asserts final states, never times); a node already in the state succeeds without a
//! call; a BMC with a wrong password and a node without a BMC fail alone, with their reason.

use std::fs;

use anyhow::{ensure, Context, Result};
use banyan_tests::bmc::{require, write_secret, Scratch, Sushy, SushyOptions};
use banyan_tests::cluster::{banyan_cli, with_cluster, Cluster};
use banyan_tests::support::http_request;
use serde_json::{json, Value};
use std::time::Duration;

const FORM: Duration = Duration::from_secs(45);
const HTTP: Duration = Duration::from_secs(40);

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
                v["targets"][n]["result"]["summary"] == "already On",
                "{n} was powered on again: {v}"
            );
        }
        ensure!(
            v["targets"][&good[2]]["result"]["summary"] == "powered on",
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

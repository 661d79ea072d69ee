//! A guest's own agent joins the tree (`banyan vm launch --join`), with real agents on two test
//! hosts and the `banyan` CLI: a dry run mints no token; for real, the guest (an image with
//! `banyan-agent`, `scripts/lib/guest image DIR --agent BIN`) reads its node name, the root's
//! address and its join token from fw_cfg, enrols and appears in `/topology` under a node of the
//! tree as `HOST-vm-NAME`; `vm list` shows its agent up; its token, used a second time (by a plain
//! agent on the other host) or for another name, is refused with the reason, and never appears
//! in the audit log nor the action's record; `vm stop` makes its node a planned departure (`off`,
//! never `lost`) and leaves no QEMU and no file.
//!
//! The guest image is `target/tmp/banyan-guest-agent` (cached; `scripts/test` builds it). No
//! wall-clock time is asserted: [`LIVENESS`] only turns a hang into a failure.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use banyan_tests::cluster::{banyan_cli, with_cluster, Cluster};
use banyan_tests::guest::{image_with_agent, qemus_under, Reaper};
use serde_json::Value;

/// Agents joining on a busy machine.
const FORM: Duration = Duration::from_secs(45);
/// A TCG guest boots in 5-8 s alone, then its agent enrols and joins: a liveness bound.
const LIVENESS: Duration = Duration::from_secs(180);
/// The guest's memory: the kernel, the initramfs (busybox, modules, a debug agent) and the agent.
const MEMORY: &str = "256M";

fn cli(c: &Cluster, args: &[&str]) -> Result<String> {
    let (out, ok) = banyan_cli(c, args)?;
    ensure!(ok, "banyan {}: failed:\n{out}", args.join(" "));
    Ok(out)
}

/// `node` in `/topology`: its status word and its parent.
fn topo_node(c: &Cluster, node: &str) -> Result<Option<Value>> {
    let topo = c.http_get("/topology")?;
    Ok(topo["nodes"]
        .as_array()
        .context("no nodes in /topology")?
        .iter()
        .find(|n| n["name"] == node)
        .cloned())
}

/// Runs a plain agent on test host `host` that enrols as `name` with the token in `token_file`,
/// and returns its exit status and its error output.
fn enrol_by_hand(c: &Cluster, host: usize, name: &str, token_file: &Path) -> Result<(i32, String)> {
    let agent = banyan_tests::support::binaries()?.agent;
    let state = c.dir().join(format!("by-hand-{name}"));
    let root = c.mesh_addr().to_string();
    let out = std::process::Command::new(banyan_tests::testnet::script())
        .args(["exec", c.name(host)])
        .arg(&agent)
        .args(["--root", &root, "--name", name, "--token-file"])
        .arg(token_file)
        .arg("--state-dir")
        .arg(&state)
        // Refused before it binds anything; other ports all the same, not to meet the host's agent.
        .args(["--mesh", "0.0.0.0:0", "--socket", "@banyan-vm-join-test"])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running a plain agent on a test host")?;
    let _ = std::fs::remove_dir_all(&state);
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn a_joined_guest_enrols_once_shows_its_agent_and_departs_when_stopped() -> Result<()> {
    let (kernel, initrd) = image_with_agent()?;
    with_cluster(2, |c| {
        let _reaper = Reaper(c.dir().to_path_buf());
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let token = c.admin_token().to_string();
        let host = names[0].clone();
        let node = format!("{host}-vm-j");
        let tokens_file = c.root_state().join("guest-tokens.json");
        let launch = |extra: &[&str]| {
            let mut args = vec![
                "--token", &token, "vm", "launch", &host, "--name", "j", "--memory", MEMORY,
                "--accel", "tcg", "--kernel", &kernel, "--initrd", &initrd, "--join", "--ttl",
                "1h",
            ];
            args.extend_from_slice(extra);
            banyan_cli(c, &args)
        };

        // A dry run checks on the node and mints nothing.
        let (out, ok) = launch(&[])?;
        ensure!(ok && out.contains("DRY RUN"), "{out}");
        ensure!(
            out.contains("opt/banyan/token,file=") && out.contains("user,id=n0 "),
            "the dry run does not show the fw_cfg token and open networking:\n{out}"
        );
        ensure!(
            !tokens_file.exists(),
            "a dry run minted guest tokens: {}",
            std::fs::read_to_string(&tokens_file).unwrap_or_default()
        );

        // For real: one token minted, for this guest's name.
        let (out, ok) = launch(&["--for-real"])?;
        ensure!(ok && out.contains("All 1 target succeeded."), "{out}");
        let kept: Value = serde_json::from_str(&std::fs::read_to_string(&tokens_file)?)?;
        let kept = kept["tokens"].as_array().context("no tokens kept")?;
        ensure!(
            kept.len() == 1 && kept[0]["name"] == node.as_str() && kept[0]["used_ms"].is_null(),
            "{kept:?}"
        );

        // The guest's token file on the host: owner only, the token of this cluster.
        let token_file = c.agent_state_dir(0)?.join("vm/j/join-token");
        let guest_token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?;
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file)?.permissions().mode() & 0o777;
        ensure!(mode == 0o600, "{} has mode {mode:o}", token_file.display());
        let secret = guest_token
            .trim()
            .rsplit('.')
            .next()
            .context("a token without a secret")?
            .to_string();
        ensure!(secret.len() == 64, "not a join token: {guest_token:?}");
        ensure!(
            !std::fs::read_to_string(c.root_state().join("guest-tokens.json"))?.contains(&secret),
            "the root keeps the secret itself, not its hash"
        );

        // Its agent enrols with it and joins under a node of the tree.
        let deadline = Instant::now() + LIVENESS;
        let placed = loop {
            if let Some(n) = topo_node(c, &node)? {
                if n["status"] == "up" && n["parent"].is_string() {
                    break n;
                }
            }
            if Instant::now() > deadline {
                let log = cli(c, &["--token", &token, "vm", "logs", &format!("{host}:j")])?;
                bail!("{node} did not join within {LIVENESS:?}; its console:\n{log}");
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        let parent = placed["parent"].as_str().unwrap_or_default().to_string();
        ensure!(
            parent == "banyan-root" || names.contains(&parent),
            "{node} is under {parent}, not a node of the tree"
        );
        let kept: Value = serde_json::from_str(&std::fs::read_to_string(&tokens_file)?)?;
        ensure!(kept["tokens"][0]["used_ms"].is_u64(), "{kept}");
        // Its metrics are the tree's: it is in /nodes, up.
        let nodes = c.http_get("/nodes")?;
        let listed = nodes
            .as_array()
            .context("/nodes is not a list")?
            .iter()
            .find(|n| n["name"] == node.as_str())
            .with_context(|| format!("{node} not in /nodes"))?;
        ensure!(listed["status"] == "up", "{listed}");

        // `vm list`: the guest names its node, and its agent is up.
        let table = cli(c, &["--token", &token, "vm", "list", &host])?;
        println!("banyan vm list:\n{table}");
        let header: Vec<&str> = table
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        ensure!(header.get(10) == Some(&"AGENT"), "{table}");
        let row: Vec<&str> = table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some("j"))
            .with_context(|| format!("no row for j:\n{table}"))?
            .split_whitespace()
            .collect();
        ensure!(
            row[..3] == [host.as_str(), "j", "running"] && row[9] == "up",
            "{table}"
        );
        let json = cli(c, &["--token", &token, "vm", "list", &host, "--json"])?;
        ensure!(json.contains(&format!("\"node\": \"{node}\"")), "{json}");

        // The token again: for another name, then for its own name, from the other host.
        let (code, err) = enrol_by_hand(c, 1, "other-node", &token_file)?;
        ensure!(
            code == 3
                && err.contains(&format!(
                    "this guest join token is for node {node}, not other-node"
                )),
            "exit {code}: {err}"
        );
        let (code, err) = enrol_by_hand(c, 1, &node, &token_file)?;
        ensure!(
            code == 3
                && err.contains(&format!(
                    "this guest join token for {node} was used already"
                )),
            "exit {code}: {err}"
        );

        // The secret is in neither the audit log nor any record of the action.
        let audit = std::fs::read_to_string(c.root_state().join("audit.jsonl"))?;
        ensure!(
            !audit.contains(&secret),
            "the audit log holds the guest's token"
        );
        let actions = c.http_get_admin("/actions")?.to_string();
        ensure!(
            !actions.contains(&secret),
            "the actions hold the guest's token"
        );

        // Stop it: its node leaves as planned (off, never lost); no QEMU, no file.
        let out = cli(
            c,
            &[
                "--token",
                &token,
                "vm",
                "stop",
                &format!("{host}:j"),
                "--timeout",
                "20s",
                "--for-real",
            ],
        )?;
        ensure!(out.contains("All 1 target succeeded."), "{out}");
        let deadline = Instant::now() + LIVENESS;
        let gone = loop {
            let n = topo_node(c, &node)?.with_context(|| format!("{node} left /topology"))?;
            let status = n["status"].as_str().unwrap_or_default().to_string();
            ensure!(
                status == "up" || status == "off",
                "{node} is {status} after vm stop, not off: {n}"
            );
            if status == "off" {
                break n;
            }
            if Instant::now() > deadline {
                bail!("{node} still {status} {LIVENESS:?} after vm stop");
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let why = gone["departed"].as_str().unwrap_or_default();
        ensure!(
            why.starts_with("vm stop by admin, action "),
            "departed: {gone}"
        );
        let status = c.http_get("/status")?;
        ensure!(
            status["nodes_off"] == 1 && status["nodes_lost"] == 0,
            "{status}"
        );
        let table = cli(c, &["--token", &token, "vm", "list", &host])?;
        ensure!(table.contains("no guests"), "{table}");
        let left = qemus_under(c.dir());
        ensure!(left.is_empty(), "QEMU processes left: {left:?}");
        let dir = c.agent_state_dir(0)?.join("vm");
        let files: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        ensure!(files.is_empty(), "{}: {files:?}", dir.display());
        Ok(())
    })
}

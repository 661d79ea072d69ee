//! QEMU guests through the tree with real agents on two test hosts and the `banyan` CLI: a dry
//! run launches nothing, bad input gets one clear error, two guests on each host boot to the
//! guest's marker (read with `vm logs`), `vm list` shows the four, and `vm stop --all` leaves no
//! guest, no QEMU process and no guest file. On one host: guests outlive an agent killed with
//! SIGKILL (the new agent re-attaches to the same QEMUs and stops them), a TTL stops its guest
//! even across the restart, a QEMU killed behind the agent's back is listed as crashed with its
//! files gone, and each bad launch (a name taken or with shell characters, memory over the host's,
//! an unknown accelerator, SEV-SNP on a host without it, a forward to a port in use) gets one
//! clear error and leaves nothing.
//!
//! The guest is `scripts/lib/guest image target/tmp/banyan-guest` (cached; scripts/test builds it).
//! No wall-clock time is asserted: [`LIVENESS`] only turns a hang into a failure.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use banyan_tests::cluster::{banyan_cli, with_cluster, Cluster};
use banyan_tests::guest::{image, qemus_under, Reaper, MARKER};

/// Agents joining on a busy machine.
const FORM: Duration = Duration::from_secs(45);
/// Four TCG guests booting at once on two cores (one boots in 5-8 s alone): a liveness bound.
const LIVENESS: Duration = Duration::from_secs(180);

fn cli(c: &Cluster, args: &[&str]) -> Result<String> {
    let (out, ok) = banyan_cli(c, args)?;
    ensure!(ok, "banyan {}: failed:\n{out}", args.join(" "));
    Ok(out)
}

/// One guest as `vm list --json` shows it: host, name, state, cpus, memory in MiB.
type Row = (String, String, String, u64, u64);

/// `vm list --json`: every guest, sorted.
fn guests(c: &Cluster, nodes: &str) -> Result<Vec<Row>> {
    let out = cli(
        c,
        &["--token", c.admin_token(), "vm", "list", nodes, "--json"],
    )?;
    let json_start = out.find('{').context("no JSON in vm list")?;
    let v: serde_json::Value = serde_json::Deserializer::from_str(&out[json_start..])
        .into_iter()
        .next()
        .context("no JSON value")??;
    let mut rows = Vec::new();
    for (host, t) in v["targets"].as_object().context("no targets")? {
        ensure!(t["state"] == "ok", "{host}: {t}");
        for g in t["result"]["vms"].as_array().context("no vms")? {
            rows.push((
                host.clone(),
                g["name"].as_str().unwrap_or("?").to_string(),
                g["state"].as_str().unwrap_or("?").to_string(),
                g["cpus"].as_u64().unwrap_or(0),
                g["memory_mib"].as_u64().unwrap_or(0),
            ));
        }
    }
    rows.sort();
    Ok(rows)
}

#[test]
fn guests_launch_boot_list_and_stop_on_two_hosts() -> Result<()> {
    let (kernel, initrd) = image()?;
    with_cluster(2, |c| {
        let _reaper = Reaper(c.dir().to_path_buf());
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let all = c.all_nodes();
        let token = c.admin_token().to_string();
        let launch = |extra: &[&str]| {
            let mut args = vec![
                "--token", &token, "vm", "launch", &all, "--name", "g", "--count", "2", "--memory",
                "128M", "--accel", "tcg", "--kernel", &kernel, "--initrd", &initrd,
            ];
            args.extend_from_slice(extra);
            banyan_cli(c, &args)
        };

        // A dry run checks on each node and launches nothing.
        let (out, ok) = launch(&[])?;
        ensure!(
            ok && out.contains("would run") && out.contains("DRY RUN"),
            "{out}"
        );
        ensure!(guests(c, &all)?.is_empty(), "a dry run launched guests");

        // Bad input: one clear error each, nothing left.
        let (out, ok) = banyan_cli(
            c,
            &[
                "--token", &token, "vm", "launch", &all, "--name", "a/b", "--kernel", &kernel,
            ],
        )?;
        ensure!(!ok && out.contains("bad guest name"), "{out}");
        let missing = format!("{kernel}.missing");
        let (out, ok) = banyan_cli(
            c,
            &[
                "--token",
                &token,
                "vm",
                "launch",
                &all,
                "--name",
                "m",
                "--kernel",
                &missing,
                "--for-real",
            ],
        )?;
        ensure!(
            !ok && out.contains("does not exist") && out.contains("nothing was launched"),
            "{out}"
        );
        ensure!(guests(c, &all)?.is_empty(), "a refused launch left guests");

        // Two guests on each host, for real.
        let (out, ok) = launch(&["--cpus", "1", "--ttl", "1h", "--for-real"])?;
        ensure!(ok && out.contains("All 2 targets succeeded."), "{out}");
        let listed = guests(c, &all)?;
        let want: Vec<_> = names
            .iter()
            .flat_map(|h| {
                ["g-1", "g-2"].map(|g| (h.clone(), g.to_string(), "running".to_string(), 1, 128))
            })
            .collect();
        ensure!(listed == want, "vm list: {listed:?}");
        let table = cli(c, &["--token", &token, "vm", "list", &all])?;
        ensure!(
            table.contains("HOST") && table.contains("g-2") && table.contains("tcg"),
            "{table}"
        );
        println!("banyan vm list:\n{table}");

        // Each boots to the marker on its serial console.
        let deadline = Instant::now() + LIVENESS;
        for h in &names {
            for g in ["g-1", "g-2"] {
                let guest = format!("{h}:{g}");
                loop {
                    let out = cli(c, &["--token", &token, "vm", "logs", &guest])?;
                    if out.contains(MARKER) {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("{guest} did not print {MARKER:?} within {LIVENESS:?}:\n{out}");
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }

        // Stop them all: nothing listed, no QEMU, no guest file.
        let out = cli(
            c,
            &[
                "--token",
                &token,
                "vm",
                "stop",
                "--all",
                &all,
                "--timeout",
                "20s",
                "--for-real",
            ],
        )?;
        ensure!(
            out.contains("stopped") && out.contains("All 2 targets succeeded."),
            "{out}"
        );
        println!("banyan vm stop --all:\n{out}");
        ensure!(guests(c, &all)?.is_empty(), "guests left after stop");
        let left = qemus_under(c.dir());
        ensure!(left.is_empty(), "QEMU processes left: {left:?}");
        for i in 0..names.len() {
            let dir = c.agent_state_dir(i)?.join("vm");
            let files: Vec<_> = std::fs::read_dir(&dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .flatten()
                .map(|e| e.file_name())
                .collect();
            ensure!(files.is_empty(), "{}: {files:?}", dir.display());
        }
        Ok(())
    })
}

/// Every guest of `nodes` as `vm list --json` gives it: `(host, the guest's JSON)`.
fn statuses(c: &Cluster, nodes: &str) -> Result<Vec<(String, serde_json::Value)>> {
    let out = cli(
        c,
        &["--token", c.admin_token(), "vm", "list", nodes, "--json"],
    )?;
    let json_start = out.find('{').context("no JSON in vm list")?;
    let v: serde_json::Value = serde_json::Deserializer::from_str(&out[json_start..])
        .into_iter()
        .next()
        .context("no JSON value")?
        .with_context(|| format!("vm list --json: {out}"))?;
    let mut all = Vec::new();
    for (host, t) in v["targets"].as_object().context("no targets")? {
        ensure!(t["state"] == "ok", "{host}: {t}");
        for g in t["result"]["vms"].as_array().context("no vms")? {
            all.push((host.clone(), g.clone()));
        }
    }
    Ok(all)
}

/// The guest named `name` in a `statuses` list.
fn status<'a>(all: &'a [(String, serde_json::Value)], name: &str) -> Option<&'a serde_json::Value> {
    all.iter().map(|(_, g)| g).find(|g| g["name"] == name)
}

/// Polls `vm list` until `done` holds for it.
fn wait_list(
    c: &Cluster,
    nodes: &str,
    what: &str,
    done: impl Fn(&[(String, serde_json::Value)]) -> bool,
) -> Result<Vec<(String, serde_json::Value)>> {
    let deadline = Instant::now() + LIVENESS;
    loop {
        let all = statuses(c, nodes)?;
        if done(&all) {
            return Ok(all);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {LIVENESS:?}; vm list: {all:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The names in a guest directory of `dir` (the agent's `vm/`).
fn guest_dirs(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

#[test]
fn guests_outlive_their_agent_expire_and_crash_through_the_tree() -> Result<()> {
    let (kernel, initrd) = image()?;
    with_cluster(1, |c| {
        let _reaper = Reaper(c.dir().to_path_buf());
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let host = names[0].clone();
        let token = c.admin_token().to_string();
        let vm_dir = c.agent_state_dir(0)?.join("vm");
        let launch = |name: &str, extra: &[&str]| {
            let mut args = vec![
                "--token",
                &token,
                "vm",
                "launch",
                &host,
                "--name",
                name,
                "--memory",
                "128M",
                "--accel",
                "tcg",
                "--kernel",
                &kernel,
                "--initrd",
                &initrd,
                "--for-real",
            ];
            args.extend_from_slice(extra);
            banyan_cli(c, &args)
        };

        // k-1 and k-2 live through an agent restart; k-1 forwards a port; t has a short TTL.
        let (out, ok) = launch("k", &["--count", "2", "--fwd", "0:22"])?;
        ensure!(ok && out.contains("All 1 target succeeded."), "{out}");
        let (out, ok) = launch("t", &["--ttl", "5s"])?;
        ensure!(ok, "{out}");
        let all = statuses(c, &host)?;
        let k1 = status(&all, "k-1").context("k-1 not listed")?;
        let fwd = k1["forwards"][0].as_str().context("k-1 has no forward")?;
        // `127.0.0.1:PORT -> 22`: the port QEMU bound.
        let port = fwd
            .strip_prefix("127.0.0.1:")
            .and_then(|r| r.split(' ').next())
            .context("forward's shape")?
            .to_string();

        // Bad input, one clear error each, nothing launched or left behind.
        let port_fwd = format!("{port}:22");
        let refused: [(&str, Vec<&str>, &str); 6] = [
            ("k-1", vec![], "already exists"),
            ("big", vec!["--memory", "100000G"], "memory"),
            ("acc", vec!["--accel", "hvf"], "accel"),
            ("sev", vec!["--sev-snp"], "SEV-SNP"),
            ("x;rm", vec![], "bad guest name"),
            ("port", vec!["--fwd", &port_fwd], "in use"),
        ];
        for (name, extra, says) in &refused {
            let (out, ok) = launch(name, extra)?;
            ensure!(!ok && out.contains(says), "launch {name} {extra:?}: {out}");
        }
        let listed: Vec<String> = statuses(c, &host)?
            .iter()
            .map(|(_, g)| g["name"].as_str().unwrap_or("?").to_string())
            .collect();
        ensure!(listed == ["k-1", "k-2", "t"], "after refusals: {listed:?}");
        ensure!(
            guest_dirs(&vm_dir)? == ["k-1", "k-2", "t"],
            "{:?}",
            guest_dirs(&vm_dir)?
        );

        // The agent dies by SIGKILL; its guests do not, and the new agent re-attaches to them.
        let pids: Vec<u64> = ["k-1", "k-2"]
            .iter()
            .map(|n| status(&all, n).and_then(|g| g["pid"].as_u64()).unwrap_or(0))
            .collect();
        c.kill_agent(0)?;
        // The root notices the loss before the agent comes back, so no order goes down the dead
        // link (an order sent there would wait out its deadline).
        let deadline = Instant::now() + FORM;
        while c.topology()?.is_attached(&host) {
            ensure!(
                Instant::now() < deadline,
                "the root never noticed {host}'s death"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c.restart_agent(0)?;
        c.wait_healthy(&names, FORM)?;
        let all = wait_list(c, &host, "re-attached k-1 and k-2", |all| {
            ["k-1", "k-2"].iter().all(|n| {
                status(all, n).is_some_and(|g| g["state"] == "running" && g["reattached"] == true)
            })
        })?;
        for (n, pid) in ["k-1", "k-2"].iter().zip(&pids) {
            let g = status(&all, n).context("listed")?;
            ensure!(g["pid"].as_u64() == Some(*pid), "{n}: a new QEMU? {g}");
        }

        // TTL expiry stops t (its deadline is on disk, so the restart did not extend it).
        wait_list(c, &host, "t stopped by its TTL", |all| {
            status(all, "t").is_none()
        })?;
        ensure!(
            !guest_dirs(&vm_dir)?.contains(&"t".to_string()),
            "t's files left"
        );

        // QEMU killed behind the agent's back: reported crashed, its files removed.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pids[1] as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .context("killing k-2's QEMU")?;
        let all = wait_list(c, &host, "k-2 crashed", |all| {
            status(all, "k-2").is_some_and(|g| g["state"] == "crashed")
        })?;
        let detail = status(&all, "k-2").map(|g| g["detail"].to_string());
        // Not its child any more (re-attached), so the agent cannot know the signal, only the end.
        let pid_said = format!("QEMU (pid {}) ended", pids[1]);
        ensure!(
            detail.as_deref().is_some_and(|d| d.contains(&pid_said)),
            "k-2's detail: {detail:?}"
        );
        ensure!(
            guest_dirs(&vm_dir)? == ["k-1"],
            "{:?}",
            guest_dirs(&vm_dir)?
        );

        // The re-attached guest stops like any: no QEMU, no file.
        let out = cli(
            c,
            &[
                "--token",
                &token,
                "vm",
                "stop",
                &format!("{host}:k-1"),
                "--timeout",
                "10s",
                "--for-real",
            ],
        )?;
        ensure!(out.contains("stopped"), "{out}");
        let left = qemus_under(c.dir());
        ensure!(left.is_empty(), "QEMU processes left: {left:?}");
        ensure!(
            guest_dirs(&vm_dir)?.is_empty(),
            "{:?}",
            guest_dirs(&vm_dir)?
        );
        Ok(())
    })
}

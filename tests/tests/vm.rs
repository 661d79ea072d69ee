//! QEMU guests through the tree with real agents on two test hosts and the `banyan` CLI: a dry
//! run launches nothing, bad input gets one clear error, two guests on each host boot to the
//! guest's marker (read with `vm logs`), `vm list` shows the four, and `vm stop --all` leaves no
//! guest, no QEMU process and no guest file.
//!
//! The guest is `scripts/lib/guest image target/tmp/banyan-guest` (cached; scripts/test builds it).
//! No wall-clock time is asserted: [`LIVENESS`] only turns a hang into a failure.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use banyan_tests::cluster::{banyan_cli, with_cluster, Cluster};

/// Agents joining on a busy machine.
const FORM: Duration = Duration::from_secs(45);
/// Four TCG guests booting at once on two cores (one boots in 5-8 s alone): a liveness bound.
const LIVENESS: Duration = Duration::from_secs(180);
const MARKER: &str = "banyan-guest: up";

fn guest_image() -> Result<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = root.join("target/tmp/banyan-guest");
    let out = std::process::Command::new(root.join("scripts/lib/guest"))
        .arg("image")
        .arg(&dir)
        .output()
        .context("running scripts/lib/guest image")?;
    ensure!(
        out.status.success(),
        "scripts/lib/guest image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((dir.join("vmlinuz"), dir.join("initramfs.gz")))
}

/// QEMU processes whose command line names `dir` (the cluster's state dirs).
fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&needle)
            })
        })
        .collect()
}

/// Kills, by pid, any QEMU of the cluster still there when the test ends (a failed test), so
/// no guest outlives it.
struct Reaper(PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in qemus_under(&self.0) {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

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
    let (kernel, initrd) = guest_image()?;
    let (kernel, initrd) = (kernel.display().to_string(), initrd.display().to_string());
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

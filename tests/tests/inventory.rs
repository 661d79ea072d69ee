//! Inventory and drift through the tree, with a real root, real agents on five test hosts and
//! the `banyan` CLI.
//!
//! Every test host reads this machine's own dpkg database and hardware, so all five agree at
//! first. Two hosts are then restarted in a mount namespace of their own (`ip netns exec` gives
//! each test host one) with a dpkg status file bind-mounted over `/var/lib/dpkg/status`, in which
//! one package's version is changed and one package is added, and another content bind-mounted
//! over the watched file: the agents read a real dpkg database and a real file, theirs alone.
//! `banyan drift` must name exactly those two hosts and exactly those differences.

use anyhow::{bail, ensure, Context, Result};
use banyan_tests::cluster::{banyan_cli, Cluster, ClusterOptions};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Agents joining on a busy machine.
const FORM: Duration = Duration::from_secs(60);
const HOSTS: usize = 5;
/// The package whose version the drifted hosts change (Essential on Debian: always installed).
const CHANGED: &str = "bash";
/// The package only the drifted hosts have.
const ADDED: &str = "banyan-drift-test";

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An agent started by the test rather than the harness: killed with its process group.
struct Wrapped(Child);

impl Drop for Wrapped {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.0.wait();
    }
}

/// Restarts agent `i` exactly as the harness runs it, but with `status` bind-mounted over the
/// host's dpkg status file and `key` over the watched file, in the host's own mount namespace.
fn restart_drifted(c: &mut Cluster, i: usize, status: &Path, key: &Path) -> Result<Wrapped> {
    c.terminate_agent(i)?;
    let cmd = c.agent_command_line(i)?;
    ensure!(
        cmd.len() > 3 && cmd[1] == "exec",
        "unexpected agent command line {cmd:?}"
    );
    let watched = c.dir().join("watched.key");
    let log = c.dir().join(format!("{}.drifted.log", c.name(i)));
    let out = fs::File::create(&log)?;
    let err = out.try_clone()?;
    let child = Command::new(&cmd[0])
        .args(&cmd[1..3])
        .args([
            "sh",
            "-c",
            "mount --bind \"$1\" \"$2\" && mount --bind \"$3\" \"$4\" && shift 4 && exec \"$@\"",
            "sh",
        ])
        .arg(status)
        .arg("/var/lib/dpkg/status")
        .arg(key)
        .arg(&watched)
        .args(&cmd[3..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .context("starting a drifted agent")?;
    Ok(Wrapped(child))
}

/// This machine's dpkg status with `CHANGED`'s version given a suffix and `ADDED` appended.
/// Returns the file's text and `CHANGED`'s version as dpkg has it.
fn drifted_status() -> Result<(String, String)> {
    let text = fs::read_to_string("/var/lib/dpkg/status").context("reading the dpkg database")?;
    let mut out = String::with_capacity(text.len() + 256);
    let mut version = None;
    for stanza in text.split("\n\n") {
        let is_changed = stanza.lines().any(|l| l == format!("Package: {CHANGED}"));
        for line in stanza.lines() {
            match line.strip_prefix("Version: ") {
                Some(v) if is_changed => {
                    version = Some(v.to_string());
                    out.push_str(&format!("Version: {v}+drift1\n"));
                }
                _ => {
                    out.push_str(line);
                    out.push('\n');
                }
            }
        }
        if !stanza.trim().is_empty() {
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "Package: {ADDED}\nStatus: install ok installed\nPriority: optional\nSection: misc\n\
         Maintainer: banyan tests\nArchitecture: all\nVersion: 1.0-1\nDescription: added by the drift test\n\n"
    ));
    let version = version.with_context(|| format!("{CHANGED} is not in the dpkg database"))?;
    Ok((out, version))
}

fn cli(c: &Cluster, args: &[&str]) -> Result<(String, bool)> {
    banyan_cli(c, args)
}

fn json_of(out: &str) -> Result<Value> {
    serde_json::from_str(out).with_context(|| format!("not JSON:\n{out}"))
}

/// The groups of a drift answer as `(nodes, differences)`.
fn groups(v: &Value) -> Vec<(Vec<String>, Vec<Value>)> {
    v["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            (
                g["nodes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(String::from))
                    .collect(),
                g["differences"].as_array().cloned().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn drift_names_exactly_the_hosts_and_differences_a_test_gave_them() -> Result<()> {
    let opts = ClusterOptions {
        agent_config: Some(
            "[inventory]\nwatch = [\"{dir}/watched.key\", \"{dir}/never-there\"]\n".into(),
        ),
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start(HOSTS, opts)?;
    let result = run(&mut c);
    if result.is_err() {
        c.keep_logs();
    }
    result.with_context(|| format!("cluster logs in {}", c.dir().display()))
}

fn run(c: &mut Cluster) -> Result<()> {
    let names = c.names();
    let all = names.join(",");
    let token = c.admin_token().to_string();
    fs::write(c.dir().join("watched.key"), "the cluster's key\n")?;
    c.wait_healthy(&names, FORM)?;

    // Without a token: refused before any node is asked.
    let (out, ok) = cli(c, &["drift", &all])?;
    ensure!(!ok && out.contains("token"), "{out}");

    // Each node's inventory is this machine's: its kernel, its dpkg database, the watched file's
    // hash and a watched file that is not there.
    let (out, ok) = cli(c, &["--token", &token, "inventory", &all, "--json"])?;
    ensure!(ok, "{out}");
    let inv = json_of(&out)?;
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")?;
    let dpkg = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", CHANGED])
        .output()?;
    let bash_version = String::from_utf8(dpkg.stdout)?;
    let key_path = c.dir().join("watched.key").display().to_string();
    let absent = c.dir().join("never-there").display().to_string();
    for name in &names {
        let n = &inv["nodes"][name]["inventory"];
        ensure!(
            n["kernel"] == kernel.trim(),
            "{name}: kernel {}",
            n["kernel"]
        );
        ensure!(
            n["packages"][CHANGED]["version"] == bash_version.as_str(),
            "{name}: {CHANGED} {}",
            n["packages"][CHANGED]
        );
        ensure!(n["packages"][ADDED].is_null(), "{name} has {ADDED}");
        ensure!(
            n["files"][&key_path] == sha256_hex(b"the cluster's key\n").as_str()
                && n["files"][&absent].is_null()
                && n["files"].as_object().map(|f| f.len()) == Some(2),
            "{name}: files {}",
            n["files"]
        );
    }
    ensure!(
        inv["unreachable"] == json!([]) && inv["failed"] == json!({}),
        "{inv}"
    );

    // All alike: one group, exit 0.
    let (out, ok) = cli(c, &["--token", &token, "drift", &all])?;
    ensure!(ok, "drift of identical nodes:\n{out}");
    let (out, _) = cli(c, &["--token", &token, "drift", &all, "--json"])?;
    let g = groups(&json_of(&out)?);
    ensure!(
        g.len() == 1 && g[0].0 == names && g[0].1.is_empty(),
        "{out}"
    );

    // Two hosts drift: their own dpkg database and key.
    let (status, version) = drifted_status()?;
    let status_file = c.dir().join("drifted-status");
    fs::write(&status_file, status)?;
    let key_file = c.dir().join("drifted.key");
    fs::write(&key_file, "another key\n")?;
    let drifted = [1usize, 3];
    let mut wrapped = Vec::new();
    for &i in &drifted {
        wrapped.push(restart_drifted(c, i, &status_file, &key_file)?);
    }
    c.wait_healthy(&names, FORM)?;

    let majority: Vec<String> = [0usize, 2, 4].iter().map(|&i| names[i].clone()).collect();
    let minority: Vec<String> = drifted.iter().map(|&i| names[i].clone()).collect();
    let package_diffs = vec![
        json!({"package": {"name": ADDED, "expected": null, "found": {"version": "1.0-1", "arch": "all"}}}),
        json!({"package": {"name": CHANGED, "expected": {"version": version, "arch": "amd64"},
               "found": {"version": format!("{version}+drift1"), "arch": "amd64"}}}),
    ];
    let file_diff = json!({"file": {"path": key_path,
        "expected": sha256_hex(b"the cluster's key\n"), "found": sha256_hex(b"another key\n")}});

    // The liveness bound only turns a node that never answers into a failure.
    let deadline = Instant::now() + FORM;
    let by_packages = loop {
        let (out, _) = cli(
            c,
            &[
                "--token", &token, "drift", &all, "--by", "packages", "--json",
            ],
        )?;
        let v = json_of(&out)?;
        if v["unreachable"] == json!([]) && v["failed"] == json!({}) {
            break v;
        }
        if Instant::now() > deadline {
            bail!("drift never had every node's answer: {v}");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let g = groups(&by_packages);
    ensure!(
        g.len() == 2 && g[0].0 == majority && g[1].0 == minority,
        "groups by packages: {by_packages}"
    );
    let mut found = g[1].1.clone();
    found.sort_by_key(|d| d.to_string());
    let mut expected = package_diffs.clone();
    expected.sort_by_key(|d| d.to_string());
    ensure!(found == expected, "package differences: {found:?}");

    // By files: the key's hash, and the two bind mounts the drifted hosts really have.
    let (out, _) = cli(
        c,
        &["--token", &token, "drift", &all, "--by", "files", "--json"],
    )?;
    let v = json_of(&out)?;
    let g = groups(&v);
    println!("by files: {v:#}");
    ensure!(g.len() == 2 && g[1].0 == minority, "groups by files: {v}");
    ensure!(
        g[1].1.contains(&file_diff),
        "no difference of the watched file: {:?}",
        g[1].1
    );
    for d in &g[1].1 {
        if d == &file_diff {
            continue;
        }
        let field = d["field"]["field"].as_str().unwrap_or_default();
        ensure!(
            field == "mounts[/var/lib/dpkg/status]" || field == format!("mounts[{key_path}]"),
            "a difference by files the test did not make: {d}"
        );
    }

    // By hardware: one machine, one profile.
    let (out, ok) = cli(c, &["--token", &token, "drift", &all, "--by", "hardware"])?;
    ensure!(ok, "hardware drift on one machine:\n{out}");

    // The text names the hosts and the differences, the majority first; exit 1.
    let (out, ok) = cli(c, &["--token", &token, "drift", &all, "--by", "packages"])?;
    println!("banyan drift --by packages:\n{out}");
    ensure!(!ok, "drift exited 0:\n{out}");
    let first_set = out.lines().nth(1).unwrap_or_default();
    ensure!(
        !first_set.contains(&minority[0])
            && out.contains(&format!("+ package {ADDED} 1.0-1 (all)")),
        "{out}"
    );
    ensure!(
        out.contains(&format!(
            "~ package {CHANGED} {version} (amd64) -> {version}+drift1 (amd64)"
        )),
        "{out}"
    );

    // Bad input: an unknown facet (the CLI's usage error) and a node not in the cluster.
    let (out, ok) = cli(c, &["--token", &token, "drift", &all, "--by", "colour"])?;
    ensure!(!ok && out.contains("colour"), "{out}");
    let (out, ok) = cli(c, &["--token", &token, "drift", "nosuch1"])?;
    ensure!(!ok && out.contains("not in this cluster"), "{out}");
    drop(wrapped);
    Ok(())
}

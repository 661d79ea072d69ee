//! Jobs through the whole mesh with ranks whose values are known exactly: `fake-rank` speaks the
//! agent's ingest protocol inside each test host (the abstract socket `@banyan-agent` is private
//! to the host's network namespace, so it reaches that host's agent), and the tests read the job
//! back from the root while it runs and as a profile once it ended.
//!
//! The real interposition library under srun and mpirun is tested in its own files; this one tests
//! the pipeline behind it: merging ranks per node and up the tree, end detection when ranks end,
//! crash or die with their node, one profile per job across failures and restarts, and hostile
//! ranks.

use anyhow::{anyhow, Context, Result};
use banyan_tests::cluster::{banyan_cli, with_cluster, Cluster, Topology};
use banyan_tests::support::url_encode;
use banyan_tests::testnet::Testnet;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::Duration;

const FAKE_RANK: &str = env!("CARGO_BIN_EXE_fake-rank");
const FORM: Duration = Duration::from_secs(45);
/// A rank's last update, a wave, the root's decision; with room for a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);
/// A dead node becomes stale (8 s) and its ranks count as lost.
const STALE: Duration = Duration::from_secs(60);
const CALLS: &str = "banyan_mpi_calls_total{function=\"MPI_Send\"}";

/// Starts a rank in host `i` that runs on in the background; returns its PID.
fn spawn_rank(c: &mut Cluster, i: usize, tag: &str, args: &[&str]) -> Result<u32> {
    let log = c.dir().join(format!("rank-{tag}-{i}.log"));
    let host = c.hosts()[i].name.clone();
    c.testnet()
        .spawn(i, std::path::Path::new(FAKE_RANK), args, &[], &log)
        .with_context(|| format!("starting a rank on {host}"))
}

/// Runs a rank in host `i` to its end; returns what it printed and its exit code.
fn run_rank(c: &Cluster, i: usize, args: &[&str]) -> Result<(String, i32)> {
    let mut cmd = vec![FAKE_RANK];
    cmd.extend_from_slice(args);
    let out = c.hosts().get(i).ok_or_else(|| anyhow!("no host {i}"))?;
    let _ = out;
    let out = testnet_exec(c, i, &cmd)?;
    Ok((
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        out.status.code().unwrap_or(-1),
    ))
}

fn testnet_exec(c: &Cluster, i: usize, cmd: &[&str]) -> Result<std::process::Output> {
    let name = &c.hosts()[i].name;
    std::process::Command::new(banyan_tests::testnet::script())
        .arg("exec")
        .arg(name)
        .args(cmd)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?} on {name}"))
}

/// Now, in Unix seconds (the unit of a job's start and end times).
fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn job_ids(c: &Cluster) -> Result<BTreeSet<String>> {
    let list = c.http_get("/job/list")?;
    Ok(list
        .as_array()
        .ok_or_else(|| anyhow!("/job/list: {list}"))?
        .iter()
        .filter_map(|j| j["jobid"].as_str().map(str::to_string))
        .filter(|id| id != "main" && !id.starts_with("Node: "))
        .collect())
}

fn counter(job: &Value, name: &str) -> Option<f64> {
    job["counters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == name)
        .and_then(|c| c["ctype"]["Counter"]["value"].as_f64())
}

/// Waits for the profile of `id` and returns it.
fn wait_profile(c: &Cluster, id: &str, timeout: Duration) -> Result<Value> {
    let path = format!("/profiles/get?jobid={}", url_encode(id));
    let (p, _) = c.poll(&format!("the profile of {id:?}"), timeout, |c| {
        Ok(c.http_get(&path).ok())
    })?;
    Ok(p)
}

fn profile_files(c: &Cluster) -> Result<Vec<String>> {
    let dir = c.dir().join("root").join("profiles");
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries {
            out.push(e?.file_name().to_string_lossy().to_string());
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn a_job_across_nodes_is_live_then_one_exact_profile() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(4, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let count = format!("{CALLS}=5");
        let before_s = unix_s();
        let mut ranks = Vec::new();
        for i in 0..4 {
            let rank = i.to_string();
            let args = [
                "--job",
                "J1",
                "--rank",
                &rank,
                "--size",
                "4",
                "--command",
                "./ring",
                "--updates",
                "6",
                "--every-ms",
                "500",
                "--count",
                &count,
                "--gauge",
                "banyan_test_level=2",
            ];
            ranks.push(spawn_rank(c, i, "j1", &args)?);
        }
        // Live: the job is listed and its values grow while the ranks run.
        c.poll("J1 in /job/list", SETTLE, |c| {
            Ok(job_ids(c)?.contains("J1").then_some(()))
        })?;
        let (live, _) = c.poll("J1's live values", SETTLE, |c| {
            let job = c.http_get("/job?job=J1")?;
            Ok(counter(&job, CALLS).filter(|v| *v > 0.0).map(|_| job))
        })?;
        assert_eq!(live["desc"]["command"], "./ring");
        let (jobs, ok) = banyan_cli(c, &["jobs"])?;
        assert!(
            ok && jobs.contains("J1") && jobs.contains("./ring"),
            "{jobs}"
        );
        let text = banyan_tests::support::http_request(
            c.http_addr(),
            "GET",
            "/metrics?job=J1",
            None,
            None,
            Duration::from_secs(10),
        )?;
        assert_eq!(text.0, 200);
        assert!(String::from_utf8_lossy(&text.1).contains("banyan_mpi_calls_total{"));

        let profile = wait_profile(c, "J1", SETTLE)?;
        let after_s = unix_s();
        assert_eq!(counter(&profile, CALLS), Some(4.0 * 6.0 * 5.0), "{profile}");
        assert_eq!(
            profile["ranks"],
            serde_json::json!({"started": 4, "ended": 4, "crashed": 0, "lost": 0})
        );
        assert_eq!(profile["desc"]["size"], 4);
        // Both times are there, in order, and within the test's own span (Unix seconds).
        let (start, end) = (
            profile["desc"]["start_time"].as_u64(),
            profile["desc"]["end_time"].as_u64(),
        );
        let (Some(start), Some(end)) = (start, end) else {
            panic!(
                "the profile lacks a start or an end time: {}",
                profile["desc"]
            );
        };
        assert!(
            before_s <= start && start <= end && end <= after_s,
            "start {start}, end {end}, not within [{before_s}, {after_s}]"
        );
        // Finished: no longer running, listed among the profiles, still readable as a job.
        assert!(!job_ids(c)?.contains("J1"));
        let all = c.http_get("/profiles")?;
        assert_eq!(all.as_array().map(Vec::len), Some(1), "{all}");
        let percmd = c.http_get("/profiles/percmd")?;
        assert_eq!(
            percmd["./ring"].as_array().map(Vec::len),
            Some(1),
            "{percmd}"
        );
        let old = c.http_get("/job?job=J1")?;
        assert_eq!(counter(&old, CALLS), Some(120.0));
        assert_eq!(profile_files(c)?, vec!["J1.json".to_string()]);
        // Its nodes are the agents' names, folded: not the host name the ranks saw.
        let folded = banyan_protocol::nodeset::NodeSet::from_names(names.iter().cloned()).fold();
        assert_eq!(profile["desc"]["nodelist"], folded.as_str(), "{profile}");
        let (shown, ok) = banyan_cli(c, &["profile", "J1"])?;
        assert!(ok, "{shown}");
        assert!(
            shown.contains("ranks: 4 started, 4 ended, 0 crashed, 0 lost"),
            "{shown}"
        );
        // Times as people read them, never Unix seconds.
        assert!(
            !shown.contains(&start.to_string()) && !shown.contains(&end.to_string()),
            "{shown}"
        );
        assert!(
            shown.contains("started:") && shown.contains(" ago)"),
            "{shown}"
        );
        assert!(shown.contains(&format!("nodes:     {folded}")), "{shown}");
        // The cluster over time, in the status.
        let (status, ok) = banyan_cli(c, &["status"])?;
        assert!(ok && status.contains("over the last"), "{status}");
        assert!(
            status.contains("cpu") && status.contains("running jobs"),
            "{status}"
        );
        assert!(
            shown.contains("banyan_mpi_calls_total{function=\"MPI_Send\"} 120"),
            "{shown}"
        );
        let (listed, _) = banyan_cli(c, &["profiles", "--cmd", "./ring"])?;
        assert!(listed.contains("J1"), "{listed}");
        // The job's series left the cluster's sum and the tree.
        let totals = c.http_get("/totals")?;
        assert!(!totals.to_string().contains("MPI_Send"), "{totals}");
        Ok(())
    })
}

#[test]
fn a_crashed_rank_still_ends_the_job_and_is_recorded() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(3, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let count = format!("{CALLS}=1");
        let base = [
            "--job",
            "J2",
            "--size",
            "3",
            "--updates",
            "2",
            "--count",
            &count,
        ];
        let ok = run_rank(c, 0, &[&base[..], &["--rank", "0"]].concat())?;
        assert_eq!(ok.1, 0, "{}", ok.0);
        let aborted = run_rank(
            c,
            1,
            &[&base[..], &["--rank", "1", "--exit", "abort"]].concat(),
        )?;
        assert_ne!(
            aborted.1, 0,
            "abort() ends the rank by SIGABRT: {}",
            aborted.0
        );
        let signaled = run_rank(
            c,
            2,
            &[&base[..], &["--rank", "2", "--exit", "signal:11"]].concat(),
        )?;
        assert_eq!(signaled.1, 0, "{}", signaled.0);
        let profile = wait_profile(c, "J2", SETTLE)?;
        // The abort and the signal crashed; all three ended.
        assert_eq!(
            profile["ranks"],
            serde_json::json!({"started": 3, "ended": 3, "crashed": 2, "lost": 0}),
            "{profile}"
        );
        assert_eq!(counter(&profile, CALLS), Some(6.0));
        Ok(())
    })
}

#[test]
fn hostile_ranks_are_refused_and_disturb_nothing() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(2, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        for bad in ["main", "Node: x", "", "a\u{7}b"] {
            let (out, code) = run_rank(c, 0, &["--job", bad])?;
            assert_eq!(code, 3, "job id {bad:?}: {out}");
            assert!(out.contains("refused"), "{out}");
        }
        // Garbage after the greeting: the stream is dropped, the agent serves on.
        let (out, code) = run_rank(c, 0, &["--job", "G", "--garbage"])?;
        assert_ne!(code, 0, "{out}");

        // Another user's ranks cannot report into a job of root's.
        let holder = spawn_rank(
            c,
            1,
            "holder",
            &[
                "--job",
                "J3",
                "--updates",
                "20",
                "--every-ms",
                "300",
                "--count",
                "x_total=1",
            ],
        )?;
        c.poll("J3 to be known", SETTLE, |c| {
            Ok(job_ids(c)?.contains("J3").then_some(()))
        })?;
        let intruder = testnet_exec(
            c,
            1,
            &[
                "setpriv",
                "--reuid=4242",
                "--regid=4242",
                "--clear-groups",
                FAKE_RANK,
                "--job",
                "J3",
                "--count",
                "x_total=1000",
            ],
        )?;
        let said = String::from_utf8_lossy(&intruder.stdout).to_string();
        assert_eq!(intruder.status.code(), Some(3), "{said}");
        assert!(said.contains("belongs to uid 0"), "{said}");
        let _ = holder;

        // Hostile names: refused kinds and scopes dropped; an id full of path and markup
        // characters is just a name, and its profile stays inside the state dir.
        let weird = "../../<script>\"x\"&'y'";
        let (out, code) = run_rank(
            c,
            0,
            &[
                "--job",
                weird,
                "--count",
                "\u{1}J3\u{1}x_total=99",
                "--count",
                "good_total=3",
                "--count",
                "neg_total=-5",
            ],
        )?;
        assert_eq!(code, 0, "{out}");
        let p = wait_profile(c, weird, SETTLE)?;
        assert_eq!(counter(&p, "good_total"), Some(3.0), "{p}");
        assert_eq!(counter(&p, "neg_total"), None, "{p}");
        assert_eq!(p["desc"]["jobid"], weird);
        let profile = wait_profile(c, "J3", SETTLE)?;
        assert_eq!(
            counter(&profile, "x_total"),
            Some(20.0),
            "neither the intruder nor the scoped name got in: {profile}"
        );
        for f in profile_files(c)? {
            assert!(!f.contains('/') && !f.starts_with('.'), "{f}");
        }
        let root_dir = c.dir().join("root");
        let outside: Vec<_> = std::fs::read_dir(c.dir())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.contains("script") || n.ends_with(".json"))
            .collect();
        assert!(
            outside.is_empty(),
            "files outside the state dir: {outside:?}"
        );
        assert!(root_dir.join("profiles").is_dir());
        c.wait_healthy(&names, FORM)?;
        Ok(())
    })
}

/// The agent with the largest subtree that hosts no rank of interest is not needed: any inner
/// agent will do, and its own rank dies with it.
fn an_inner_agent(topo: &Topology) -> Result<String> {
    topo.agents()
        .filter(|n| !topo.children_of(&n.name).is_empty())
        .map(|n| n.name.clone())
        .next()
        .ok_or_else(|| anyhow!("no inner agent in\n{}", topo.summary()))
}

#[test]
fn one_profile_through_an_inner_agents_death_and_a_root_restart() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(7, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        // The agent that will die is chosen first: its rank counts apart, so the test knows the
        // exact total the other six must reach.
        let victim = an_inner_agent(&c.topology()?)?;
        let vi = c
            .index_of(&victim)
            .ok_or_else(|| anyhow!("{victim} is not one of ours"))?;
        // One rank per host: 40 updates of 1 call, every 250 ms (10 s).
        for i in 0..7 {
            let rank = i.to_string();
            let count = if i == vi {
                "victim_calls_total=1".to_string()
            } else {
                format!("{CALLS}=1")
            };
            spawn_rank(
                c,
                i,
                "j4",
                &[
                    "--job",
                    "J4",
                    "--rank",
                    &rank,
                    "--size",
                    "7",
                    "--updates",
                    "40",
                    "--every-ms",
                    "250",
                    "--count",
                    &count,
                ],
            )?;
        }
        c.poll("J4 to be live", SETTLE, |c| {
            let job = c.http_get("/job?job=J4")?;
            Ok(counter(&job, CALLS).filter(|v| *v >= 6.0).map(|_| ()))
        })?;
        c.kill_agent(vi)?;
        std::thread::sleep(Duration::from_secs(2));
        c.stop_root()?;
        c.start_root()?;
        let live: Vec<String> = names.iter().filter(|n| **n != victim).cloned().collect();
        c.wait_healthy(&live, FORM)?;
        let profile = wait_profile(c, "J4", STALE)?;
        let calls = counter(&profile, CALLS).ok_or_else(|| anyhow!("no calls: {profile}"))?;
        // The six ranks on surviving hosts made 40 calls each, and every one of them is in the
        // profile: the orphans of the dead agent, and the root's children across its restart,
        // owe exactly the reports the tree kept of them, so what was in flight is not lost.
        assert_eq!(calls, 240.0, "{profile}");
        // The rank on the dead node counts what reached the tree before its agent died.
        let victims = counter(&profile, "victim_calls_total").unwrap_or(0.0);
        assert!(victims <= 40.0, "{profile}");
        // The dead node's rank is lost, never heard of ending; the six others ended.
        assert_eq!(
            profile["ranks"],
            serde_json::json!({"started": 7, "ended": 6, "crashed": 0, "lost": 1}),
            "{profile}"
        );
        assert_eq!(profile_files(c)?, vec!["J4.json".to_string()]);
        // Still one, a while later (the root must not write it again after its restart).
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(profile_files(c)?, vec!["J4.json".to_string()]);
        Ok(())
    })
}

#[test]
fn one_exact_profile_through_a_root_killed_mid_job() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    with_cluster(4, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        // One rank per host: 40 updates of 1 call, every 250 ms (10 s).
        for i in 0..4 {
            let rank = i.to_string();
            spawn_rank(
                c,
                i,
                "j5",
                &[
                    "--job",
                    "J5",
                    "--rank",
                    &rank,
                    "--size",
                    "4",
                    "--updates",
                    "40",
                    "--every-ms",
                    "250",
                    "--count",
                    &format!("{CALLS}=1"),
                ],
            )?;
        }
        c.poll("J5 to be live", SETTLE, |c| {
            let job = c.http_get("/job?job=J5")?;
            Ok(counter(&job, CALLS).filter(|v| *v >= 8.0).map(|_| ()))
        })?;
        // SIGKILL: no last save of the totals, no goodbye to the children. What the root kept
        // on disk lags what its children had sent; they owe exactly what it kept.
        c.kill_root()?;
        c.start_root()?;
        c.wait_healthy(&names, FORM)?;
        let profile = wait_profile(c, "J5", STALE)?;
        assert_eq!(counter(&profile, CALLS), Some(160.0), "{profile}");
        assert_eq!(
            profile["ranks"],
            serde_json::json!({"started": 4, "ended": 4, "crashed": 0, "lost": 0}),
            "{profile}"
        );
        assert_eq!(profile_files(c)?, vec!["J5.json".to_string()]);
        Ok(())
    })
}

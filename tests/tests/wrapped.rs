//! Real jobs wrapped by `banyan-run` with the real preloaded library, under the real launchers:
//! `mpirun` (Open MPI) and `mpiexec` (MPICH) inside a test host, `srun` on a private Slurm, and a
//! plain program. The MPI program (`tests/mpi/exact.c`) prints what it did; the profile the root
//! writes must say the same, function by function, byte for byte.

use anyhow::{anyhow, bail, Result};
use banyan_tests::cluster::{with_cluster, Cluster};
use banyan_tests::mpi::{self, Mpi};
use banyan_tests::slurm::Slurm;
use banyan_tests::support::{binaries, free_port, require_program};
use banyan_tests::testnet::{self, Testnet};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const FORM: Duration = Duration::from_secs(45);
const SETTLE: Duration = Duration::from_secs(30);
/// The functions `exact` calls that the library counts, with bytes.
const COUNTED: [&str; 5] = [
    "MPI_Send",
    "MPI_Recv",
    "MPI_Bcast",
    "MPI_Allreduce",
    "MPI_Barrier",
];

/// `banyan-run`, built with the daemons.
fn banyan_run() -> Result<PathBuf> {
    let bins = binaries()?;
    let dir = bins
        .root
        .parent()
        .ok_or_else(|| anyhow!("no directory for {}", bins.root.display()))?;
    let run = dir.join("banyan-run");
    if !run.is_file() || !dir.join("libbanyan_interpose.so").is_file() {
        bail!(
            "{} or libbanyan_interpose.so is missing: cargo build --workspace",
            run.display()
        );
    }
    Ok(run)
}

/// Runs `cmd` inside test host `host`.
fn on_host(c: &Cluster, host: usize, cmd: &[&str]) -> Result<Output> {
    let name = &c.hosts()[host].name;
    let mut command = Command::new(testnet::script());
    command
        .arg("exec")
        .arg(name)
        .args(cmd)
        .stdin(Stdio::null())
        .env_remove("SLURM_JOB_ID")
        .env_remove("SLURM_STEP_ID")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    mpi::run_bounded(&mut command, Duration::from_secs(120))
}

/// The profile of the one job the launcher ran, once no job runs any more: exactly one profile,
/// whatever processes the launcher started (a second job, or a job per process, fails here).
fn the_profile(c: &Cluster) -> Result<Value> {
    let (list, _) = c.poll("a profile and no running job", SETTLE, |c| {
        let running = c.http_get("/job/list")?;
        let running = running
            .as_array()
            .ok_or_else(|| anyhow!("/job/list: {running}"))?
            .iter()
            .filter_map(|j| j["jobid"].as_str())
            .any(|id| id != "main" && !id.starts_with("Node: "));
        let list = c.http_get("/profiles")?;
        let some = list.as_array().is_some_and(|l| !l.is_empty());
        Ok((some && !running).then_some(list))
    })?;
    let ids: Vec<&str> = list
        .as_array()
        .map(|l| l.iter().filter_map(|j| j["jobid"].as_str()).collect())
        .unwrap_or_default();
    let [id] = ids[..] else {
        bail!("one job ran, the root wrote {} profiles: {list}", ids.len());
    };
    let enc: String = id
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    c.http_get(&format!("/profiles/get?jobid={enc}"))
}

fn series(profile: &Value, name: &str) -> f64 {
    profile["counters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .and_then(|c| c["ctype"]["Counter"]["value"].as_f64())
        .unwrap_or(0.0)
}

/// Every counted MPI function's calls, bytes sent and bytes received in `profile` equal what
/// `exact` reported doing (`report["total"]["mpi"]`).
fn check_mpi(profile: &Value, report: &Value, ranks: u64) -> Result<()> {
    for f in COUNTED {
        let want = &report["total"]["mpi"][f];
        let key = |m: &str| format!("banyan_mpi_{m}_total{{function=\"{f}\"}}");
        let got = (
            series(profile, &key("calls")),
            series(profile, &key("sent_bytes")),
            series(profile, &key("received_bytes")),
        );
        let expected = (
            want["calls"].as_f64().unwrap_or(-1.0),
            want["sent_bytes"].as_f64().unwrap_or(-1.0),
            want["recv_bytes"].as_f64().unwrap_or(-1.0),
        );
        if got != expected {
            bail!("{f}: counted (calls, sent, received) {got:?}, the program did {expected:?}\nprofile: {profile}");
        }
    }
    let want = serde_json::json!({"started": ranks, "ended": ranks, "crashed": 0, "lost": 0});
    if profile["ranks"] != want {
        bail!("ranks: {}, want {want}", profile["ranks"]);
    }
    Ok(())
}

fn run_mpi_in_host(mpi: Mpi) -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let Some(mpi) = mpi.require()? else {
        return Ok(());
    };
    let run = banyan_run()?;
    with_cluster(1, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let exact = mpi.exact(&c.dir().join("bin"))?;
        let (launcher, _) = mpi.launcher();
        let run_s = run.display().to_string();
        let exact_s = exact.display().to_string();
        let scratch = c.dir().join("scratch");
        std::fs::create_dir_all(&scratch)?;
        let scratch_s = scratch.display().to_string();
        let mut cmd: Vec<&str> = vec![launcher];
        match mpi {
            Mpi::OpenMpi => cmd.extend(["--allow-run-as-root", "--oversubscribe"]),
            Mpi::Mpich => cmd.extend(["-launcher", "fork"]),
        }
        cmd.extend(["-np", "4", &run_s, "--", &exact_s, "3", "1000", &scratch_s]);
        let out = on_host(c, 0, &cmd)?;
        if !out.status.success() {
            bail!(
                "{launcher} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let report = mpi::exact_report(&out.stdout)?;
        let profile = the_profile(c)?;
        check_mpi(&profile, &report, 4)?;
        assert_eq!(profile["desc"]["size"], 4, "{}", profile["desc"]);
        Ok(())
    })
}

#[test]
fn mpirun_openmpi_under_banyan_run_counts_exactly() -> Result<()> {
    run_mpi_in_host(Mpi::OpenMpi)
}

#[test]
fn mpiexec_mpich_under_banyan_run_counts_exactly_in_one_job() -> Result<()> {
    run_mpi_in_host(Mpi::Mpich)
}

#[test]
fn srun_under_banyan_run_makes_a_job_with_the_slurm_id() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let Some(mpi) = mpi::require_openmpi()? else {
        return Ok(());
    };
    let Some(slurm) = Slurm::require()? else {
        return Ok(());
    };
    let run = banyan_run()?;
    with_cluster(1, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        // Slurm runs in this test's own namespace: an agent joins the cluster from here, on a
        // socket name of its own.
        let socket = format!("@banyan-wrapped-{}", std::process::id());
        let token = std::fs::read_to_string(c.dir().join("root").join("join-token"))?;
        let mesh_port = free_port(std::net::Ipv4Addr::new(198, 18, 0, 1), true)?;
        let log = std::fs::File::create(c.dir().join("slurm-agent.log"))?;
        let mut agent = Command::new(binaries()?.agent)
            .args([
                "--root",
                &c.mesh_addr().to_string(),
                "--token",
                token.trim(),
            ])
            .args(["--name", "slurmhost", "--socket", &socket])
            .args(["--mesh", &format!("198.18.0.1:{mesh_port}")])
            .arg("--state-dir")
            .arg(c.dir().join("slurmhost"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let result = (|| -> Result<()> {
            let mut all = names.clone();
            all.push("slurmhost".into());
            c.wait_healthy(&all, FORM)?;
            let exact = mpi.exact(&c.dir().join("bin"))?;
            let scratch = c.dir().join("scratch");
            std::fs::create_dir_all(&scratch)?;
            let out = slurm.srun_env(
                &[
                    "-n",
                    "4",
                    "--mpi=pmix",
                    &run.display().to_string(),
                    "--",
                    &exact.display().to_string(),
                    "3",
                    "1000",
                    &scratch.display().to_string(),
                ],
                &[("BANYAN_SOCKET", &socket)],
            )?;
            if !out.status.success() {
                bail!(
                    "srun failed: {}{}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    slurm.log_tails()
                );
            }
            let report = mpi::exact_report(&out.stdout)?;
            let profile = the_profile(c)?;
            check_mpi(&profile, &report, 4)?;
            let id = profile["desc"]["jobid"].as_str().unwrap_or("");
            // SLURM_JOB_ID.SLURM_STEP_ID: a number, a dot, the step.
            let (job, step) = id
                .split_once('.')
                .ok_or_else(|| anyhow!("job id {id:?} is not JOB.STEP"))?;
            assert!(
                job.parse::<u64>().is_ok() && step.parse::<u64>().is_ok(),
                "{id}"
            );
            assert_eq!(profile["desc"]["size"], 4);
            Ok(())
        })();
        let _ = agent.kill();
        let _ = agent.wait();
        result
    })
}

/// A C program that writes and reads a file with write(2) and read(2) only: 10 x 4096 bytes each.
const IO_PROGRAM: &str = r#"
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    char buf[4096];
    memset(buf, 7, sizeof buf);
    int fd = open(argv[1], O_CREAT | O_TRUNC | O_RDWR, 0600);
    if (fd < 0) return 2;
    for (int i = 0; i < 10; i++) if (write(fd, buf, sizeof buf) != sizeof buf) return 3;
    if (lseek(fd, 0, SEEK_SET) != 0) return 4;
    for (int i = 0; i < 10; i++) if (read(fd, buf, sizeof buf) != sizeof buf) return 5;
    close(fd);
    unlink(argv[1]);
    if (argc > 2) abort();
    return 0;
}
"#;

fn build_io_program(dir: &Path) -> Result<PathBuf> {
    let Some(cc) = require_program("gcc", "gcc")? else {
        bail!("gcc is needed to build the I/O test program");
    };
    std::fs::create_dir_all(dir)?;
    let src = dir.join("io.c");
    std::fs::write(&src, IO_PROGRAM)?;
    let bin = dir.join("io");
    let out = Command::new(cc)
        .arg("-O1")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()?;
    if !out.status.success() {
        bail!("gcc: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(bin)
}

#[test]
fn a_plain_programs_io_is_counted_exactly_and_a_crash_is_recorded() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let run = banyan_run()?;
    with_cluster(1, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let io = build_io_program(&c.dir().join("bin"))?;
        let file = c.dir().join("io.data");
        let (run_s, io_s, file_s) = (
            run.display().to_string(),
            io.display().to_string(),
            file.display().to_string(),
        );
        let out = on_host(c, 0, &[&run_s, "-j", "io-1", "--", &io_s, &file_s])?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let profile = wait_job(c, "io-1")?;
        for (f, bytes) in [("write", 40960.0), ("read", 40960.0)] {
            let name = format!("banyan_io_bytes_total{{function=\"{f}\"}}");
            assert_eq!(series(&profile, &name), bytes, "{f} bytes: {profile}");
            let calls = format!("banyan_io_calls_total{{function=\"{f}\"}}");
            assert_eq!(series(&profile, &calls), 10.0, "{f} calls: {profile}");
        }
        assert_eq!(profile["ranks"]["crashed"], 0);

        // The same program aborting: banyan-run passes the signal's status on, the profile says
        // the rank crashed.
        let out = on_host(c, 0, &[&run_s, "-j", "io-2", "--", &io_s, &file_s, "abort"])?;
        assert_eq!(
            out.status.code(),
            Some(128 + 6),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let profile = wait_job(c, "io-2")?;
        assert_eq!(profile["ranks"]["crashed"], 1, "{profile}");
        assert_eq!(profile["ranks"]["ended"], 1, "{profile}");
        // The rank died before its first periodic update: its crash handler had the reporting
        // thread send the last counts before the exit, so they are all there.
        for (f, bytes) in [("write", 40960.0), ("read", 40960.0)] {
            let name = format!("banyan_io_bytes_total{{function=\"{f}\"}}");
            assert_eq!(
                series(&profile, &name),
                bytes,
                "{f} bytes of the crashed rank: {profile}"
            );
        }
        Ok(())
    })
}

/// Three ranks, one per test host, each a shell running a pipeline (`sh -c 'dd ... | cat'`): the
/// job has exactly three ranks, the shells; `dd` and `cat` are processes of them, counted apart,
/// and their I/O adds into the job byte for byte. Its node list is the agents' names, folded.
#[test]
fn ranks_running_a_pipeline_are_three_ranks_and_their_processes() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let run = banyan_run()?;
    with_cluster(3, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let run_s = run.display().to_string();
        // 16 blocks of 4 KiB: dd reads them from /dev/zero and writes them into the pipe, cat
        // reads them from it and writes them to /dev/null, all with read(2) and write(2).
        let script = "dd if=/dev/zero bs=4096 count=16 2>/dev/null | cat >/dev/null";
        for (i, name) in names.iter().enumerate() {
            // The launcher's size and rank as Slurm would give them, so the job waits for all
            // three ranks although they run one after the other.
            let (size, rank) = ("SLURM_NTASKS=3".to_string(), format!("SLURM_PROCID={i}"));
            let cmd = [
                "env", &size, &rank, &run_s, "-j", "pipe-1", "--", "sh", "-c", script,
            ];
            let out = on_host(c, i, &cmd)?;
            if !out.status.success() {
                bail!(
                    "rank {i} on {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let profile = wait_job(c, "pipe-1")?;
        assert_eq!(
            profile["ranks"],
            serde_json::json!({"started": 3, "ended": 3, "crashed": 0, "lost": 0}),
            "{profile}"
        );
        assert_eq!(
            profile["processes"],
            serde_json::json!({"started": 6, "ended": 6, "crashed": 0, "lost": 0}),
            "dd and cat in each of the three ranks: {profile}"
        );
        for f in ["read", "write"] {
            let name = format!("banyan_io_bytes_total{{function=\"{f}\"}}");
            // Per rank: dd's 64 KiB and cat's 64 KiB.
            assert_eq!(
                series(&profile, &name),
                3.0 * 2.0 * 65536.0,
                "{f}: {profile}"
            );
        }
        let folded = banyan_protocol::nodeset::NodeSet::from_names(names.iter().cloned()).fold();
        assert_eq!(profile["desc"]["nodelist"], folded.as_str(), "{profile}");
        assert_eq!(profile["desc"]["size"], 3, "{profile}");
        // The series the book keeps for itself are not the job's.
        let counters = profile["counters"].to_string();
        assert!(!counters.contains("banyan_job_"), "{counters}");
        // Each agent heard one rank and two processes of it.
        for n in &names {
            let log = std::fs::read_to_string(c.dir().join(format!("{n}.log")))?;
            let ranks = log.matches("rank started").count();
            let processes = log.matches("process of a rank: started").count();
            assert_eq!((ranks, processes), (1, 2), "what reported to {n}'s agent");
        }
        Ok(())
    })
}

fn wait_job(c: &Cluster, id: &str) -> Result<Value> {
    let path = format!("/profiles/get?jobid={id}");
    let (p, _) = c.poll(&format!("the profile of {id}"), SETTLE, |c| {
        Ok(c.http_get(&path).ok())
    })?;
    Ok(p)
}

/// Ranks on two test hosts, launched over ssh (sshd in each host, as on a cluster): each rank
/// reports to its own host's agent, the tree merges the two, and the profile is still exact.
fn run_mpi_over_ssh(mpi: Mpi) -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let Some(mpi) = mpi.require()? else {
        return Ok(());
    };
    let Some(tools) = banyan_tests::sshd::require("multi-host MPI", &[])? else {
        return Ok(());
    };
    let run = banyan_run()?;
    with_cluster(2, |c| {
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let dir = c.dir().join("ssh");
        std::fs::create_dir_all(&dir)?;
        let sshd = banyan_tests::sshd::start(c.testnet(), &tools, &dir, 2)?;
        let result = (|| -> Result<()> {
            let config = banyan_tests::sshd::ssh_config(&dir).display().to_string();
            let exact = mpi.exact(&c.dir().join("bin"))?.display().to_string();
            let scratch = c.dir().join("scratch");
            std::fs::create_dir_all(&scratch)?;
            let (launcher, _) = mpi.launcher();
            // Hydra's -launcher-exec takes a program, not a command line: a wrapper is both.
            let wrapper = dir.join("ssh-to-host");
            std::fs::write(
                &wrapper,
                format!("#!/bin/sh\nexec ssh -F '{config}' \"$@\"\n"),
            )?;
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
            }
            let rsh = wrapper.display().to_string();
            let hosts = format!("{}:2,{}:2", names[0], names[1]);
            let run_s = run.display().to_string();
            let scratch_s = scratch.display().to_string();
            let mut remote: Vec<&str> = vec![launcher];
            match mpi {
                Mpi::OpenMpi => remote.extend([
                    "--allow-run-as-root",
                    "--oversubscribe",
                    "--host",
                    &hosts,
                    "--mca",
                    "plm_rsh_agent",
                    &rsh,
                    "--mca",
                    "btl_tcp_if_include",
                    "eth0",
                    "--mca",
                    "oob_tcp_if_include",
                    "eth0",
                    "--mca",
                    "btl",
                    "self,tcp",
                ]),
                Mpi::Mpich => {
                    remote.extend(["-launcher", "ssh", "-launcher-exec", &rsh, "-hosts", &hosts])
                }
            }
            remote.extend(["-np", "4", &run_s, "--", &exact, "3", "1000", &scratch_s]);
            // Started from the first host, over ssh, as an operator would.
            let quoted: Vec<String> = remote.iter().map(|a| format!("'{a}'")).collect();
            let mut ssh = Command::new("ssh");
            ssh.args(["-F", &config, &names[0], &quoted.join(" ")]);
            let out = mpi::run_bounded(&mut ssh, Duration::from_secs(120))?;
            if !out.status.success() {
                bail!(
                    "{launcher} over ssh failed: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let report = mpi::exact_report(&out.stdout)?;
            let profile = the_profile(c)?;
            check_mpi(&profile, &report, 4)?;
            // Both hosts' agents took part: each took two ranks (their logs say so).
            for n in &names {
                let log = std::fs::read_to_string(c.dir().join(format!("{n}.log")))?;
                let ranks = log.matches("rank started").count();
                assert_eq!(ranks, 2, "ranks that reported to {n}'s agent");
            }
            Ok(())
        })();
        for pid in sshd {
            let _ = c.testnet().terminate(pid);
        }
        result
    })
}

#[test]
fn mpirun_openmpi_over_ssh_on_two_hosts_counts_exactly() -> Result<()> {
    run_mpi_over_ssh(Mpi::OpenMpi)
}

#[test]
fn mpiexec_mpich_over_ssh_on_two_hosts_counts_exactly() -> Result<()> {
    run_mpi_over_ssh(Mpi::Mpich)
}

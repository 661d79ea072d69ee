//! The launchers the MPI tests stand on, without banyan: a private Slurm (tests/src/slurm.rs) and
//! the two MPIs (tests/src/mpi.rs), each running `tests/mpi/exact.c` with 4 ranks, which must
//! print its one JSON line with the counts the arguments imply.
//!
//! Needs root and the Debian packages slurm-wlm, munge, libpmix-dev, openmpi-bin, libopenmpi-dev,
//! mpich and libmpich-dev (scripts/test installs them). Missing: every test fails (unless `BANYAN_TEST_LENIENT=1`)
//! and otherwise prints `SKIPPED: ...` and passes.

use std::path::PathBuf;
use std::process::Output;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use banyan_tests::mpi::{exact_report, require_mpich, require_openmpi, Mpi};
use banyan_tests::slurm::Slurm;
use serde_json::Value;

const RANKS: u64 = 4;
const ITER: u64 = 3;
const BYTES: u64 = 1000;

/// Where the tests' MPI programs are built (shared by the test processes; see `Mpi::compile`).
fn build_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mpi")
}

/// Fails with everything the command printed unless it exited 0.
fn succeeded(what: &str, out: &Output) -> Result<()> {
    ensure!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn num(v: &Value, path: &[&str]) -> Result<u64> {
    let mut at = v;
    for key in path {
        at = &at[*key];
    }
    at.as_u64()
        .with_context(|| format!("no number at {} in {v}", path.join(".")))
}

/// Checks exact's report against the counts `RANKS` ranks of `exact ITER BYTES` must have.
fn check_exact(out: &Output) -> Result<()> {
    let report = exact_report(&out.stdout)?;
    ensure!(
        num(&report, &["exact", "size"])? == RANKS,
        "not {RANKS} ranks in one job: {report}"
    );
    ensure!(num(&report, &["exact", "iter"])? == ITER, "{report}");
    ensure!(num(&report, &["exact", "bytes"])? == BYTES, "{report}");
    let ranks = report["ranks"].as_array().context("no ranks")?;
    ensure!(ranks.len() as u64 == RANKS, "{report}");
    let total = |f: &str, field: &str| num(&report, &["total", "mpi", f, field]);
    ensure!(total("MPI_Send", "calls")? == RANKS * ITER);
    ensure!(total("MPI_Send", "sent_bytes")? == RANKS * ITER * BYTES);
    ensure!(total("MPI_Recv", "calls")? == RANKS * ITER);
    // The message's size, not the (twice as large) buffer's.
    ensure!(total("MPI_Recv", "recv_bytes")? == RANKS * ITER * BYTES);
    ensure!(total("MPI_Bcast", "sent_bytes")? == 64);
    ensure!(total("MPI_Bcast", "recv_bytes")? == 64 * (RANKS - 1));
    ensure!(total("MPI_Allreduce", "calls")? == RANKS * ITER);
    ensure!(total("MPI_Barrier", "calls")? == RANKS * ITER);
    ensure!(num(&report, &["total", "io", "write", "bytes"])? == RANKS * ITER * BYTES);
    ensure!(num(&report, &["total", "io", "read", "calls"])? == RANKS * ITER);
    Ok(())
}

fn exact_args() -> [String; 2] {
    [ITER.to_string(), BYTES.to_string()]
}

#[test]
fn slurm_runs_four_tasks() -> Result<()> {
    let t = Instant::now();
    let Some(slurm) = Slurm::require()? else {
        return Ok(());
    };
    let started = t.elapsed();
    let t = Instant::now();
    let out = slurm.srun(&["-n", "4", "hostname"])?;
    let ran = t.elapsed();
    succeeded("srun -n 4 hostname", &out)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    // One node runs the four tasks: four times its one name.
    ensure!(
        lines.len() == 4 && !lines[0].trim().is_empty() && lines.iter().all(|l| *l == lines[0]),
        "srun -n 4 hostname printed {} lines: {text:?}\n{}",
        lines.len(),
        slurm.log_tails()
    );
    let t = Instant::now();
    drop(slurm);
    println!(
        "timing: slurm start {started:?}, srun -n 4 hostname {ran:?}, stop {:?}",
        t.elapsed()
    );
    Ok(())
}

#[test]
fn srun_pmix_runs_open_mpi() -> Result<()> {
    let Some(mpi) = require_openmpi()? else {
        return Ok(());
    };
    let t = Instant::now();
    let Some(slurm) = Slurm::require()? else {
        return Ok(());
    };
    let started = t.elapsed();
    let exact = mpi.exact(&build_dir())?;
    let [iter, bytes] = exact_args();
    let exact = exact.to_str().context("path not UTF-8")?;
    let t = Instant::now();
    let out = slurm.srun(&["-n", "4", "--mpi=pmix", exact, &iter, &bytes])?;
    let ran = t.elapsed();
    succeeded("srun --mpi=pmix exact (Open MPI)", &out).with_context(|| slurm.log_tails())?;
    check_exact(&out)?;
    println!("timing: slurm start {started:?}, srun -n 4 --mpi=pmix exact {ran:?}");
    Ok(())
}

#[test]
fn srun_pmi2_runs_mpich() -> Result<()> {
    let Some(mpi) = require_mpich()? else {
        return Ok(());
    };
    let t = Instant::now();
    let Some(slurm) = Slurm::require()? else {
        return Ok(());
    };
    let started = t.elapsed();
    let exact = mpi.exact(&build_dir())?;
    let [iter, bytes] = exact_args();
    let exact = exact.to_str().context("path not UTF-8")?;
    let t = Instant::now();
    let out = slurm.srun(&["-n", "4", "--mpi=pmi2", exact, &iter, &bytes])?;
    let ran = t.elapsed();
    succeeded("srun --mpi=pmi2 exact (MPICH)", &out).with_context(|| slurm.log_tails())?;
    check_exact(&out)?;
    println!("timing: slurm start {started:?}, srun -n 4 --mpi=pmi2 exact {ran:?}");
    Ok(())
}

/// `mpirun.openmpi` or `mpiexec.mpich` with 4 ranks of exact, and an extra variable every rank
/// must see.
fn launcher_runs_exact(mpi: Mpi) -> Result<()> {
    let t = Instant::now();
    let exact = mpi.exact(&build_dir())?;
    let compiled = t.elapsed();
    let [iter, bytes] = exact_args();
    let t = Instant::now();
    let out = mpi.run(4, &exact, &[&iter, &bytes], &[("BANYAN_PROBE", "x1")])?;
    let ran = t.elapsed();
    let (launcher, _) = mpi.launcher();
    succeeded(&format!("{launcher} -np 4 exact"), &out)?;
    check_exact(&out)?;
    // The extra environment reaches every rank.
    let out = mpi.run(
        4,
        &PathBuf::from("/bin/sh"),
        &["-c", "echo probe=$BANYAN_PROBE"],
        &[("BANYAN_PROBE", "x1")],
    )?;
    succeeded(&format!("{launcher} -np 4 sh"), &out)?;
    let seen = String::from_utf8_lossy(&out.stdout)
        .matches("probe=x1")
        .count();
    ensure!(seen == 4, "{seen} of 4 ranks saw BANYAN_PROBE: {out:?}");
    println!("timing: compile {compiled:?}, {launcher} -np 4 exact {ran:?}");
    Ok(())
}

#[test]
fn mpirun_runs_open_mpi() -> Result<()> {
    let Some(mpi) = require_openmpi()? else {
        return Ok(());
    };
    launcher_runs_exact(mpi)
}

#[test]
fn mpiexec_runs_mpich() -> Result<()> {
    let Some(mpi) = require_mpich()? else {
        return Ok(());
    };
    launcher_runs_exact(mpi)
}

/// Dropping a `Slurm` while a step runs cancels it: its tasks are gone and the daemons too.
#[test]
fn slurm_drop_ends_running_steps() -> Result<()> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let Some(slurm) = Slurm::require()? else {
        return Ok(());
    };
    let mut srun = slurm
        .command("srun")
        .args(["-n", "2", "-u", "sh", "-c", "echo $$; exec sleep 300"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(srun.stdout.take().context("stdout")?).lines();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let line = lines
            .next()
            .context("srun ended before its tasks started")??;
        tasks.push(line.trim().parse::<i32>().context("a task's PID")?);
    }
    let daemons = std::fs::read_to_string(slurm.dir().join("daemons.pid"))?;
    let t = Instant::now();
    drop(slurm);
    let stopped = t.elapsed();
    srun.wait()?;
    let pids: Vec<i32> = daemons
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let gone = |pid: i32| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err();
    // The tasks belong to slurmstepd, which may take a moment after the daemons to reap them.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !tasks.iter().all(|&p| gone(p)) && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    ensure!(
        tasks.iter().all(|&p| gone(p)),
        "tasks {tasks:?} outlived the cluster"
    );
    ensure!(
        pids.iter().all(|&p| gone(p)),
        "daemons {pids:?} outlived the cluster"
    );
    println!("timing: stop with a running step {stopped:?}");
    Ok(())
}

//! What the launcher's environment says about the job: id, size, rank, nodes.
//!
//! The job id, in order:
//! 1. `-j`, then `BANYAN_JOB_ID` (so `mpiexec -genv BANYAN_JOB_ID x` names a Hydra run);
//! 2. Slurm's `SLURM_JOB_ID`, with `.SLURM_STEP_ID` when set, for a task srun started itself;
//! 3. Open MPI/PMIx's `PMIX_NAMESPACE` (the same on all ranks of one run), then
//!    `OMPI_MCA_orte_jobid`/`OMPI_MCA_ess_base_jobid`;
//! 4. `PMI_JOBID` (`srun --mpi=pmi2` gives `<job>.<step>`);
//! 5. under MPICH's Hydra, which gives none: empty, and the ranks agree on one in `MPI_Init`
//!    (a non-MPI program there uses `mpich-<host>-<pid of the Hydra proxy>`, one id per node);
//! 6. with no launcher at all: `run-<host>-<pid>-<unix ms>`, so a plain `banyan-run -- cmd` is a
//!    job of its own.
//!
//! Slurm's id is skipped when an MPI launcher started the process (`OMPI_COMM_WORLD_SIZE` from
//! `mpirun`, or Hydra's `PMI_RANK` without `PMI_JOBID`) even inside an allocation: there,
//! `mpirun`'s local ranks carry the batch step's id and its remote ranks the id of the step
//! that started the remote daemons, so the step id is not common to the run; the launcher's is.
//! For the same reason rank and size are taken from the MPI launcher first (`OMPI_COMM_WORLD_*`,
//! `PMIX_RANK`, `PMI_RANK`/`PMI_SIZE`) and from Slurm (`SLURM_PROCID`, `SLURM_NTASKS`) only
//! without one: under `mpirun` in an allocation, `SLURM_PROCID` numbers the daemons, not ranks.

use banyan_protocol::job::{check_job_id, MAX_JOB_ID};

#[derive(Debug, PartialEq)]
pub struct JobEnv {
    /// `None`: agree in `MPI_Init`.
    pub jobid: Option<String>,
    pub fallback: String,
    pub size: Option<u64>,
    pub rank: Option<u32>,
    pub nodelist: String,
    pub partition: String,
    pub cluster: String,
}

/// What the rest of the process contributes: this host, `banyan-run`'s pid and parent, now.
pub struct Here<'a> {
    pub host: &'a str,
    pub pid: u32,
    pub ppid: u32,
    pub now_ms: u64,
}

/// An id from the environment made acceptable: control characters dropped, cut to
/// [`MAX_JOB_ID`] bytes, reserved names prefixed. `None` when nothing is left.
pub fn sanitize(id: &str) -> Option<String> {
    let mut out: String = id.chars().filter(|c| !c.is_control()).collect();
    if out.len() > MAX_JOB_ID {
        let mut cut = MAX_JOB_ID;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    let out = out.trim().to_string();
    if out.is_empty() {
        return None;
    }
    if check_job_id(&out).is_err() {
        let prefixed = format!("job-{out}");
        return sanitize_plain(&prefixed);
    }
    Some(out)
}

fn sanitize_plain(id: &str) -> Option<String> {
    let mut out = id.to_string();
    while out.len() > MAX_JOB_ID {
        out.pop();
    }
    check_job_id(&out).is_ok().then_some(out)
}

pub fn detect(get: &dyn Fn(&str) -> Option<String>, explicit: Option<&str>, here: &Here) -> JobEnv {
    // Empty variables count as unset.
    let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    let has = |name: &str| var(name).is_some();
    let open_mpi = has("OMPI_COMM_WORLD_SIZE") || has("OMPI_COMM_WORLD_RANK");
    let hydra =
        !open_mpi && !has("PMI_JOBID") && (has("PMI_RANK") || has("PMI_SIZE") || has("PMI_FD"));
    let launched_by_mpi = open_mpi || hydra;

    let slurm_id = var("SLURM_JOB_ID").map(|job| match var("SLURM_STEP_ID") {
        Some(step) => format!("{}.{}", job.trim(), step.trim()),
        None => job.trim().to_string(),
    });
    let candidates = [
        explicit.map(str::to_string),
        var("BANYAN_JOB_ID"),
        slurm_id.filter(|_| !launched_by_mpi),
        var("PMIX_NAMESPACE"),
        var("OMPI_MCA_orte_jobid"),
        var("OMPI_MCA_ess_base_jobid"),
        var("PMI_JOBID"),
    ];
    let mut jobid = candidates
        .iter()
        .find_map(|value| value.as_deref().and_then(sanitize));
    let mut fallback = String::new();
    if jobid.is_none() {
        if launched_by_mpi {
            fallback = format!("mpich-{}-{}", here.host, here.ppid);
        } else {
            jobid = sanitize(&format!("run-{}-{}-{}", here.host, here.pid, here.now_ms));
        }
    }

    let number = |names: &[&str]| -> Option<u64> {
        names
            .iter()
            .find_map(|n| var(n).and_then(|v| v.trim().parse::<u64>().ok()))
    };
    let size = number(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"]);
    let rank = number(&[
        "OMPI_COMM_WORLD_RANK",
        "PMIX_RANK",
        "PMI_RANK",
        "SLURM_PROCID",
    ])
    .and_then(|r| u32::try_from(r).ok());
    let nodelist = var("SLURM_STEP_NODELIST")
        .or_else(|| var("SLURM_JOB_NODELIST"))
        .unwrap_or_else(|| here.host.to_string());
    JobEnv {
        jobid,
        fallback,
        size,
        rank,
        nodelist,
        partition: var("SLURM_JOB_PARTITION").unwrap_or_default(),
        cluster: var("SLURM_CLUSTER_NAME").unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const HERE: Here = Here {
        host: "cn7",
        pid: 4242,
        ppid: 4000,
        now_ms: 1_700_000_000_123,
    };

    fn env(pairs: &[(&str, &str)]) -> JobEnv {
        envj(pairs, None)
    }

    fn envj(pairs: &[(&str, &str)], explicit: Option<&str>) -> JobEnv {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        detect(&|k| map.get(k).cloned(), explicit, &HERE)
    }

    #[test]
    fn srun_tasks_are_slurm_job_dot_step() {
        let e = env(&[
            ("SLURM_JOB_ID", "1234"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_JOB_NODELIST", "cn[1-4]"),
            ("SLURM_STEP_NODELIST", "cn[1-2]"),
            ("SLURM_JOB_PARTITION", "batch"),
            ("SLURM_CLUSTER_NAME", "banyan"),
        ]);
        assert_eq!(e.jobid.as_deref(), Some("1234.0"));
        assert_eq!((e.rank, e.size), (Some(5), Some(8)));
        assert_eq!(e.nodelist, "cn[1-2]");
        assert_eq!(
            (e.partition.as_str(), e.cluster.as_str()),
            ("batch", "banyan")
        );
        // Without a step (a batch script's own processes): the job alone.
        assert_eq!(env(&[("SLURM_JOB_ID", "77")]).jobid.as_deref(), Some("77"));
    }

    #[test]
    fn srun_with_pmix_or_pmi2_still_uses_the_slurm_id() {
        let pmix = env(&[
            ("SLURM_JOB_ID", "99"),
            ("SLURM_STEP_ID", "2"),
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "4"),
            ("PMIX_NAMESPACE", "slurm.pmix.99.2"),
            ("PMIX_RANK", "3"),
        ]);
        assert_eq!(pmix.jobid.as_deref(), Some("99.2"));
        assert_eq!((pmix.rank, pmix.size), (Some(3), Some(4)));
        let pmi2 = env(&[
            ("SLURM_JOB_ID", "99"),
            ("SLURM_STEP_ID", "3"),
            ("SLURM_PROCID", "1"),
            ("PMI_JOBID", "99.3"),
            ("PMI_RANK", "1"),
            ("PMI_SIZE", "2"),
            ("PMI_FD", "5"),
        ]);
        assert_eq!(pmi2.jobid.as_deref(), Some("99.3"));
        assert_eq!((pmi2.rank, pmi2.size), (Some(1), Some(2)));
    }

    #[test]
    fn open_mpi_mpirun_uses_the_pmix_namespace() {
        let e = env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_MCA_ess_base_jobid", "150929409"),
            ("PMIX_NAMESPACE", "150929409"),
            ("PMIX_RANK", "1"),
        ]);
        assert_eq!(e.jobid.as_deref(), Some("150929409"));
        assert_eq!((e.rank, e.size), (Some(1), Some(2)));
        assert_eq!(e.nodelist, "cn7");
        // Older runtimes without PMIx: the ORTE job id.
        let orte = env(&[("OMPI_COMM_WORLD_SIZE", "2"), ("OMPI_MCA_orte_jobid", "55")]);
        assert_eq!(orte.jobid.as_deref(), Some("55"));
    }

    #[test]
    fn mpirun_inside_an_allocation_ignores_the_step_and_the_daemons_procid() {
        let e = env(&[
            ("SLURM_JOB_ID", "500"),
            ("SLURM_STEP_ID", "1"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("OMPI_COMM_WORLD_RANK", "6"),
            ("OMPI_COMM_WORLD_SIZE", "16"),
            ("PMIX_NAMESPACE", "prterun-cn1-77@1"),
            ("PMIX_RANK", "6"),
        ]);
        assert_eq!(e.jobid.as_deref(), Some("prterun-cn1-77@1"));
        assert_eq!((e.rank, e.size), (Some(6), Some(16)));
    }

    #[test]
    fn hydra_gives_no_id_so_the_ranks_agree_in_mpi_init() {
        let e = env(&[
            ("PMI_RANK", "3"),
            ("PMI_SIZE", "4"),
            ("PMI_FD", "6"),
            ("MPI_LOCALNRANKS", "4"),
            ("MPI_LOCALRANKID", "3"),
        ]);
        assert_eq!(e.jobid, None);
        assert_eq!(e.fallback, "mpich-cn7-4000");
        assert_eq!((e.rank, e.size), (Some(3), Some(4)));
        // Hydra inside an allocation: the same.
        let in_alloc = env(&[
            ("SLURM_JOB_ID", "12"),
            ("SLURM_STEP_ID", "0"),
            ("PMI_RANK", "0"),
            ("PMI_SIZE", "2"),
        ]);
        assert_eq!(in_alloc.jobid, None);
        assert_eq!(in_alloc.rank, Some(0));
        // ... unless the launcher was given one.
        let named = env(&[("PMI_RANK", "0"), ("BANYAN_JOB_ID", "cfd-3")]);
        assert_eq!(named.jobid.as_deref(), Some("cfd-3"));
    }

    #[test]
    fn the_flag_wins_and_no_launcher_means_a_generated_id() {
        let e = envj(
            &[("SLURM_JOB_ID", "1"), ("PMIX_NAMESPACE", "x")],
            Some("mine"),
        );
        assert_eq!(e.jobid.as_deref(), Some("mine"));
        let alone = env(&[]);
        assert_eq!(alone.jobid.as_deref(), Some("run-cn7-4242-1700000000123"));
        assert_eq!((alone.rank, alone.size), (None, None));
        // Empty variables are unset.
        let empty = env(&[("SLURM_JOB_ID", ""), ("PMI_RANK", " ")]);
        assert!(empty.jobid.unwrap().starts_with("run-cn7-"));
        assert_eq!(empty.rank, None);
    }

    #[test]
    fn ids_from_the_environment_are_made_acceptable() {
        assert_eq!(sanitize("a\nb").as_deref(), Some("ab"));
        assert_eq!(sanitize("main").as_deref(), Some("job-main"));
        assert_eq!(sanitize("Node: x").as_deref(), Some("job-Node: x"));
        assert_eq!(sanitize(&"é".repeat(100)).map(|s| s.len()), Some(128));
        assert_eq!(sanitize("\u{7}"), None);
        assert!(check_job_id(&sanitize(&"x".repeat(500)).unwrap()).is_ok());
    }
}

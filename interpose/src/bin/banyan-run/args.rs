//! `banyan-run`'s command line: the Metric Proxy's `proxy_run` flags.

use std::ffi::OsString;

/// The counter groups `-e` turns on, with what `-l` says of them.
pub const GROUPS: [(&str, &str); 3] = [
    (
        "mpi",
        "MPI calls through PMPI: calls, seconds, bytes sent and received, per function",
    ),
    (
        "io",
        "POSIX I/O (read, write, pread, pwrite, readv, writev, open, openat, close, fsync, fdatasync): calls, seconds, bytes",
    ),
    (
        "proc",
        "process resource use (getrusage): user and system seconds, page faults, context switches, peak RSS",
    ),
];

#[derive(Debug, PartialEq)]
pub struct Opts {
    pub jobid: Option<String>,
    pub socket: Option<String>,
    /// Group names, in [`GROUPS`] order, no repeats.
    pub exporters: Vec<&'static str>,
    pub command: Vec<OsString>,
}

#[derive(Debug, PartialEq)]
pub enum Action {
    Help,
    Version,
    List,
    Run(Opts),
}

pub const USAGE: &str =
    "usage: banyan-run [-j JOBID] [-u SOCKET] [-e mpi,io,proc] [-l] -- COMMAND [ARGS...]";

pub const HELP: &str = "\
banyan-run: run a command with banyan's measurement library preloaded, reporting to this node's agent

Usage: banyan-run [OPTIONS] [--] COMMAND [ARGS...]

Options:
  -j, --jobid ID          the job id (default: $BANYAN_JOB_ID, else Slurm's job.step, else the MPI
                          launcher's id; under MPICH's Hydra the ranks agree on one in MPI_Init)
  -u, --unixsocket PATH   the agent's socket; @NAME is an abstract socket
                          (default: $BANYAN_SOCKET, else @banyan-agent)
  -e, --exporter LIST     counter groups to turn on, comma-separated: mpi, io, proc (default: all)
  -l, --listexporters     list the counter groups and exit
  -h, --help              print this help
  -V, --version           print the version

The command's exit status is banyan-run's; a command killed by signal N makes it exit 128+N.
The command is the rank; every process it starts is measured as a process of that rank. Without an agent the command runs
as usual and one line says it is not measured.

Examples:
  srun -n 64 banyan-run -- ./solver input.dat
  mpirun -np 8 banyan-run -e mpi -- ./myprogram -x
  mpiexec -np 4 banyan-run -j cfd-run-3 -- ./myprogram
  banyan-run -j build-42 -e io,proc -- make -j8
";

/// Parses `-e`: a comma list of groups (`all` for every one).
pub fn parse_groups(list: &str) -> Result<Vec<&'static str>, String> {
    let mut on = [false; GROUPS.len()];
    let mut any = false;
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        any = true;
        if word == "all" {
            on = [true; GROUPS.len()];
            continue;
        }
        match GROUPS.iter().position(|(name, _)| *name == word) {
            Some(i) => on[i] = true,
            None => {
                return Err(format!(
                    "unknown exporter group {word:?} (known: mpi, io, proc)"
                ))
            }
        }
    }
    if !any {
        return Err("-e needs at least one group (mpi, io, proc)".into());
    }
    Ok(GROUPS
        .iter()
        .zip(on)
        .filter(|(_, on)| *on)
        .map(|((name, _), _)| *name)
        .collect())
}

/// Parses the arguments after the program name.
pub fn parse(args: &[OsString]) -> Result<Action, String> {
    let mut opts = Opts {
        jobid: None,
        socket: None,
        exporters: GROUPS.iter().map(|(n, _)| *n).collect(),
        command: Vec::new(),
    };
    let mut list = false;
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let Some(s) = arg.to_str() else {
            // Not UTF-8: cannot be one of our flags, so the command starts here.
            opts.command = args[i..].to_vec();
            break;
        };
        if s == "--" {
            opts.command = args[i + 1..].to_vec();
            break;
        }
        if !s.starts_with('-') || s == "-" {
            opts.command = args[i..].to_vec();
            break;
        }
        // The flag's name and, when written `--flag=value` or `-fvalue`, its attached value.
        let (name, attached): (&str, Option<&str>) = if let Some(long) = s.strip_prefix("--") {
            match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            }
        } else {
            let len = s[1..].chars().next().map_or(0, char::len_utf8);
            let (short, rest) = s[1..].split_at(len);
            (
                short,
                (!rest.is_empty()).then_some(rest.trim_start_matches('=')),
            )
        };
        let canonical = match name {
            "j" | "jobid" => "jobid",
            "u" | "unixsocket" => "unixsocket",
            "e" | "exporter" => "exporter",
            "l" | "listexporters" => "listexporters",
            "h" | "help" => "help",
            "V" | "version" => "version",
            _ => return Err(format!("unknown option {s:?}; {USAGE}")),
        };
        let takes_value = matches!(canonical, "jobid" | "unixsocket" | "exporter");
        let value = if takes_value {
            match attached {
                Some(v) => Some(v.to_string()),
                None => {
                    i += 1;
                    match args.get(i).map(|a| a.to_str()) {
                        Some(Some(v)) => Some(v.to_string()),
                        Some(None) => return Err(format!("the value of {s} is not valid UTF-8")),
                        None => return Err(format!("{s} needs a value; {USAGE}")),
                    }
                }
            }
        } else {
            if attached.is_some() {
                return Err(format!("{s} takes no value; {USAGE}"));
            }
            None
        };
        match (canonical, value) {
            ("jobid", Some(v)) => opts.jobid = Some(v),
            ("unixsocket", Some(v)) => opts.socket = Some(v),
            ("exporter", Some(v)) => opts.exporters = parse_groups(&v)?,
            ("listexporters", _) => list = true,
            ("help", _) => return Ok(Action::Help),
            ("version", _) => return Ok(Action::Version),
            _ => return Err(format!("cannot parse {s:?}; {USAGE}")),
        }
        i += 1;
    }
    if list {
        return Ok(Action::List);
    }
    if opts.command.is_empty() {
        return Err(format!("no command given; {USAGE}"));
    }
    Ok(Action::Run(opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Action, String> {
        let v: Vec<OsString> = args.iter().map(OsString::from).collect();
        parse(&v)
    }

    fn opts(args: &[&str]) -> Opts {
        match run(args) {
            Ok(Action::Run(o)) => o,
            other => panic!("{args:?}: {other:?}"),
        }
    }

    #[test]
    fn proxy_run_flags_in_every_spelling() {
        for args in [
            &["-j", "x1", "-u", "@a", "-e", "mpi", "--", "prog", "-j"][..],
            &[
                "--jobid",
                "x1",
                "--unixsocket",
                "@a",
                "--exporter",
                "mpi",
                "--",
                "prog",
                "-j",
            ],
            &[
                "--jobid=x1",
                "--unixsocket=@a",
                "--exporter=mpi",
                "prog",
                "-j",
            ],
            &["-jx1", "-u@a", "-empi", "--", "prog", "-j"],
        ] {
            let o = opts(args);
            assert_eq!(o.jobid.as_deref(), Some("x1"), "{args:?}");
            assert_eq!(o.socket.as_deref(), Some("@a"));
            assert_eq!(o.exporters, vec!["mpi"]);
            assert_eq!(
                o.command,
                vec![OsString::from("prog"), OsString::from("-j")]
            );
        }
    }

    #[test]
    fn defaults_turn_every_group_on_and_leave_the_rest_to_the_environment() {
        let o = opts(&["ls", "-l"]);
        assert_eq!(o.exporters, vec!["mpi", "io", "proc"]);
        assert_eq!((o.jobid, o.socket), (None, None));
        assert_eq!(o.command.len(), 2);
    }

    #[test]
    fn groups_parse_dedupe_and_refuse_unknown_names() {
        assert_eq!(parse_groups("proc, mpi,mpi").unwrap(), vec!["mpi", "proc"]);
        assert_eq!(parse_groups("all").unwrap(), vec!["mpi", "io", "proc"]);
        assert!(parse_groups("gpu").unwrap_err().contains("gpu"));
        assert!(parse_groups(",").is_err());
    }

    #[test]
    fn list_help_and_version_need_no_command() {
        assert_eq!(run(&["-l"]), Ok(Action::List));
        assert_eq!(run(&["--listexporters"]), Ok(Action::List));
        assert_eq!(run(&["-h"]), Ok(Action::Help));
        assert_eq!(run(&["--version"]), Ok(Action::Version));
    }

    #[test]
    fn bad_flags_are_one_line_errors() {
        for bad in [
            &["--frobnicate", "--", "x"][..],
            &["-j"],
            &["-e", "gpu", "--", "x"],
            &["-l=3"],
            &[],
            &["-j", "x", "--"],
            &["-é", "x"],
        ] {
            let e = run(bad).unwrap_err();
            assert!(!e.contains('\n'), "{bad:?}: {e}");
        }
    }
}

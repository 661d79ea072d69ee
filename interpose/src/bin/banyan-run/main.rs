//! `banyan-run`: runs a command with `libbanyan_interpose.so` preloaded, so that every process
//! of it reports to the node's agent as a rank of the job.
//!
//! It finds the job ([`jobenv`]), hands it to the library through `BANYAN_*` variables (see
//! `src/envnames.rs`), appends the library to `LD_PRELOAD` ([`preload`]), starts the command as
//! its child, forwards the termination signals a launcher sends it (`SIGTERM`, `SIGINT`,
//! `SIGHUP`, `SIGQUIT`, `SIGUSR1`, `SIGUSR2`), and exits with the command's status (128 + N for
//! a command killed by signal N). It stays the parent rather than exec the command so that the
//! status of a killed command can be passed on the way shells do.

mod args;
#[path = "../../envnames.rs"]
mod envnames;
mod jobenv;
mod preload;

use args::Action;
use banyan_protocol::ingest::DEFAULT_SOCKET;
use std::ffi::OsString;
use std::process::Command;
use std::sync::atomic::{AtomicI32, Ordering};

/// The child's pid, for the signal forwarder (0 before it exists).
static CHILD: AtomicI32 = AtomicI32::new(0);

const FORWARDED: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    // SAFETY: kill, signal and raise are async-signal-safe.
    unsafe {
        if pid > 0 {
            libc::kill(pid, sig);
        } else {
            // No child yet: do what the signal would have done.
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

fn install_forwarding() {
    for sig in FORWARDED {
        // SAFETY: installing a handler that only makes async-signal-safe calls.
        unsafe { libc::signal(sig, forward as *const () as libc::sighandler_t) };
    }
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: a valid buffer and its length.
    if unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) } != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

/// Checks an agent address: `@name` (abstract) or a path, within `sun_path`'s 107 bytes.
fn check_socket(socket: &str) -> Result<(), String> {
    let len = socket.strip_prefix('@').unwrap_or(socket).len();
    if len == 0 {
        return Err(format!("the socket {socket:?} names nothing"));
    }
    if len > 107 {
        return Err(format!(
            "the socket name {socket:?} is longer than 107 bytes"
        ));
    }
    Ok(())
}

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let opts = match args::parse(&argv) {
        Ok(Action::Help) => {
            print!("{}", args::HELP);
            return 0;
        }
        Ok(Action::Version) => {
            println!("banyan-run {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        Ok(Action::List) => {
            for (name, what) in args::GROUPS {
                println!("{name:<5} {what}");
            }
            return 0;
        }
        Ok(Action::Run(opts)) => opts,
        Err(e) => {
            eprintln!("banyan-run: {e}");
            return 2;
        }
    };
    if let Some(id) = &opts.jobid {
        if let Err(e) = banyan_protocol::job::check_job_id(id) {
            eprintln!("banyan-run: bad job id: {e}");
            return 2;
        }
    }
    let socket = opts
        .socket
        .clone()
        .or_else(|| {
            std::env::var(envnames::SOCKET)
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| DEFAULT_SOCKET.to_string());
    if let Err(e) = check_socket(&socket) {
        eprintln!("banyan-run: {e}");
        return 2;
    }

    let host = hostname();
    let here = jobenv::Here {
        host: &host,
        pid: std::process::id(),
        // SAFETY: getppid has no preconditions.
        ppid: unsafe { libc::getppid() } as u32,
        now_ms: now().as_millis() as u64,
    };
    let job = jobenv::detect(&|k| std::env::var(k).ok(), opts.jobid.as_deref(), &here);

    let mut cmd = Command::new(&opts.command[0]);
    cmd.args(&opts.command[1..]);
    let exe = std::env::current_exe().ok();
    let lib_override = std::env::var(envnames::INTERPOSE_LIB).ok();
    let preload = preload::find_library(exe.as_deref(), lib_override.as_deref()).and_then(|lib| {
        let existing = std::env::var("LD_PRELOAD").ok();
        preload::append(existing.as_deref(), &lib.to_string_lossy())
    });
    match preload {
        Ok(list) => {
            cmd.env("LD_PRELOAD", list);
        }
        Err(e) => eprintln!("banyan-run: {e}; the command runs unmeasured"),
    }

    let set_or_clear = |cmd: &mut Command, name: &str, value: Option<String>| match value {
        Some(v) if !v.is_empty() => {
            cmd.env(name, v);
        }
        _ => {
            cmd.env_remove(name);
        }
    };
    cmd.env(envnames::SOCKET, &socket);
    cmd.env(envnames::EXPORTERS, opts.exporters.join(","));
    cmd.env(envnames::JOB_ID, job.jobid.clone().unwrap_or_default());
    set_or_clear(
        &mut cmd,
        envnames::JOB_ID_FALLBACK,
        Some(job.fallback.clone()),
    );
    set_or_clear(
        &mut cmd,
        envnames::JOB_SIZE,
        job.size.map(|s| s.to_string()),
    );
    set_or_clear(&mut cmd, envnames::RANK, job.rank.map(|r| r.to_string()));
    set_or_clear(&mut cmd, envnames::NODELIST, Some(job.nodelist.clone()));
    set_or_clear(&mut cmd, envnames::PARTITION, Some(job.partition.clone()));
    set_or_clear(&mut cmd, envnames::CLUSTER, Some(job.cluster.clone()));
    let run_dir = std::env::current_dir()
        .map(|d| d.to_string_lossy().into_owned())
        .ok();
    set_or_clear(&mut cmd, envnames::RUN_DIR, run_dir);
    let command_line = opts
        .command
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    cmd.env(envnames::COMMAND, command_line);
    cmd.env(envnames::START_TIME, now().as_secs().to_string());
    cmd.env(envnames::LAUNCHER_PID, std::process::id().to_string());
    cmd.env_remove(envnames::LINK);

    install_forwarding();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "banyan-run: cannot run {}: {e}",
                opts.command[0].to_string_lossy()
            );
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    match child.wait() {
        Ok(status) => preload::exit_code(status),
        Err(e) => {
            eprintln!("banyan-run: lost the command: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_must_fit_sun_path() {
        assert!(check_socket("@banyan-agent").is_ok());
        assert!(check_socket("/run/banyan/agent.sock").is_ok());
        assert!(check_socket("@").is_err());
        assert!(check_socket("").is_err());
        assert!(check_socket(&format!("@{}", "x".repeat(108))).is_err());
    }
}

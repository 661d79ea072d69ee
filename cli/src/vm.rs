//! `banyan vm`: QEMU guests on the nodes, through the tree — the arguments, the tasks they make,
//! and the table of guests a result reads as:
//!
//! ```text
//! HOST NAME  STATE   CPUS MEMORY ACCEL UPTIME TTL LEFT PID   AGENT DETAIL
//! cn1  web-1 running    1 128M   tcg   2m     58m      41234 up
//! ```
//!
//! AGENT is the guest's own agent in the tree (`--join`): `up`, `down` (not, or no longer, in
//! the tree), `-` for a guest that does not join (or when the tree was not read).

use std::collections::BTreeMap;
use std::time::Duration;

use banyan_protocol::action::{VmBoot, VmJoin, VmLaunch, VmOp, VmTask};
use clap::{Args, Subcommand};

use crate::actions::Action;
use crate::escape::one_line;
use crate::{table, times};

#[derive(Debug, Args)]
pub struct VmArgs {
    #[command(subcommand)]
    pub cmd: VmCommand,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Launch guests on a node set (a dry run unless --for-real).
    #[command(after_help = "\
Paths name files on the nodes. A dry run checks everything on each node (names free, files there,
accelerator, memory) and shows the QEMU command line it would run; nothing starts.

With --join, each guest's own banyan-agent joins the tree as the node HOST-vm-NAME: the root mints
a join token for that name alone (single use, valid 15 min or the TTL if shorter) and the guest
gets it, the root's address and its name through QEMU's fw_cfg (never its kernel command line).
The guest needs an image whose init starts the agent (scripts/lib/guest image DIR --agent BIN)
and is given unrestricted user networking: it reaches what its host reaches. Stopping it makes
its node a planned departure (`off`), not a lost node.

Examples:
  banyan vm launch 'cn[1-2]' --name test --count 2 --kernel /srv/vmlinuz --initrd /srv/initrd.gz
  banyan vm launch cn1 --name web --memory 1G --cpus 2 --disk /srv/web.qcow2 --overlay --fwd 0:22 --ttl 2h --for-real
  banyan vm launch cn1 --name j --memory 512M --kernel /srv/vmlinuz --initrd /srv/agent-initrd.gz --join --for-real")]
    Launch(LaunchArgs),
    /// The guests of a node set [default: every node].
    #[command(after_help = "Examples:\n  banyan vm list\n  banyan vm list 'cn[1-4]' --json")]
    List {
        nodes: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Stop guests: ACPI power button, QEMU quit after --timeout, then SIGKILL; their files go.
    #[command(after_help = "\
Examples:
  banyan vm stop cn1:web cn2:web --for-real
  banyan vm stop --all 'cn[1-4]' --timeout 10s --for-real")]
    Stop {
        /// NODE:NAME of each guest.
        #[arg(
            value_name = "NODE:NAME",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        guests: Vec<String>,
        /// Every guest of this node set.
        #[arg(long, value_name = "NODESET")]
        all: Option<String>,
        /// How long a guest may take to power off [default: 30s].
        #[arg(long, value_name = "DUR", value_parser = times::parse_duration)]
        timeout: Option<Duration>,
        /// Really stop them (without it: a dry run).
        #[arg(long, alias = "yes")]
        for_real: bool,
        #[arg(long)]
        json: bool,
    },
    /// A guest's serial console, through the root and the tree; `&.` leaves.
    #[command(after_help = "\
The first to attach may type; others see the same output, read-only, until the writer leaves.
`&.` at the start of a line leaves. Every session is in the audit log (console.start, console.end,
and the order that opened it on the host). Without a terminal, stdin is typed as it comes and its
end leaves.

Examples:
  banyan vm console cn1:web
  banyan vm console cn1:web --read-only

Exit status: 0 after leaving, 1 the console could not be opened (no such guest: one line saying
so), 3 refused, 4 the root is unreachable.")]
    Console {
        #[arg(value_name = "NODE:NAME")]
        guest: String,
        /// Watch only, even if nobody is typing.
        #[arg(long)]
        read_only: bool,
    },
    /// The end of a guest's serial log.
    #[command(after_help = "Example:\n  banyan vm logs cn1:web --bytes 64K")]
    Logs {
        #[arg(value_name = "NODE:NAME")]
        guest: String,
        /// How much of the end [default: 16K].
        #[arg(long, value_name = "SIZE", value_parser = times::parse_size)]
        bytes: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// The nodes: `cn[1-4]`, `@group`.
    #[arg(value_name = "NODESET")]
    pub nodes: String,
    /// The guest's name (NAME-1 .. NAME-K with --count K).
    #[arg(long)]
    pub name: String,
    /// Guests per node.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory per guest (512M, 2G; a bare number is MiB).
    #[arg(long, default_value = "512M", value_parser = parse_mib)]
    pub memory: u64,
    /// A kernel on the nodes.
    #[arg(long, required_unless_present = "disk", conflicts_with = "disk")]
    pub kernel: Option<String>,
    #[arg(long, requires = "kernel")]
    pub initrd: Option<String>,
    /// The kernel command line [default: console=ttyS0 panic=-1].
    #[arg(long, requires = "kernel")]
    pub append: Option<String>,
    /// A disk image on the nodes.
    #[arg(long)]
    pub disk: Option<String>,
    /// Write to an overlay of the disk, leaving the image untouched.
    #[arg(long, requires = "disk")]
    pub overlay: bool,
    /// Boot through UEFI (the nodes' OVMF).
    #[arg(long)]
    pub ovmf: bool,
    /// auto, kvm or tcg [default: the nodes' [vm] accel].
    #[arg(long)]
    pub accel: Option<String>,
    #[arg(long, conflicts_with = "tdx")]
    pub sev_snp: bool,
    #[arg(long)]
    pub tdx: bool,
    /// HOST:GUEST TCP forward on the node's 127.0.0.1 (HOST 0 picks a free port); repeatable.
    #[arg(long = "fwd", value_name = "HOST:GUEST")]
    pub forwards: Vec<String>,
    /// Stop the guests this long after launch (30m, 2h).
    #[arg(long, value_name = "DUR", value_parser = times::parse_duration)]
    pub ttl: Option<Duration>,
    /// Each guest's own agent joins the tree as the node HOST-vm-NAME.
    #[arg(long)]
    pub join: bool,
    /// Really launch (without it: a dry run).
    #[arg(long, alias = "yes")]
    pub for_real: bool,
    #[arg(long)]
    pub json: bool,
}

/// `512M`, `2G`, `1024` (MiB) as MiB.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let bytes = if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse::<u64>()
            .map_err(|e| format!("{s:?}: {e}"))?
            .saturating_mul(1 << 20)
    } else {
        times::parse_size(s)?
    };
    Ok(bytes >> 20)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The task of `vm launch`.
pub fn launch_task(a: &LaunchArgs) -> Result<VmTask, String> {
    let boot = match (&a.kernel, &a.disk) {
        (Some(k), None) => VmBoot::Kernel {
            kernel: k.clone(),
            initrd: a.initrd.clone(),
            append: a.append.clone(),
        },
        (None, Some(d)) => VmBoot::Disk {
            image: d.clone(),
            overlay: a.overlay,
        },
        _ => return Err("give --kernel K or --disk IMG".into()),
    };
    let task = VmTask {
        op: VmOp::Launch(VmLaunch {
            name: a.name.clone(),
            count: a.count,
            cpus: a.cpus,
            memory_mib: a.memory,
            boot,
            ovmf: a.ovmf,
            accel: a.accel.clone(),
            sev_snp: a.sev_snp,
            tdx: a.tdx,
            forwards: a.forwards.clone(),
            ttl_ms: a.ttl.map(ms),
            // The root mints the tokens: a request only asks.
            join: a.join.then(VmJoin::default),
        }),
    };
    task.validate()?;
    Ok(task)
}

/// `NODE:NAME`.
pub fn split_guest(s: &str) -> Result<(String, String), String> {
    match s.split_once(':') {
        Some((node, name)) if !node.is_empty() && !name.is_empty() => {
            banyan_protocol::action::validate_vm_name(name)?;
            Ok((node.to_string(), name.to_string()))
        }
        _ => Err(format!(
            "{:?}: name a guest as NODE:NAME (cn1:web)",
            one_line(s)
        )),
    }
}

/// `vm stop NODE:NAME...`: one stop per set of names, with the nodes that have exactly those
/// names (an order carries one task for all its targets, so cn1:a cn2:b is two orders, or
/// cn2 would be asked to stop an `a` it may have too).
pub fn stops_by_names(
    guests: &[String],
    timeout: Option<Duration>,
) -> Result<Vec<(Vec<String>, VmTask)>, String> {
    let mut per_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for g in guests {
        let (node, name) = split_guest(g)?;
        let names = per_node.entry(node).or_default();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut per_names: BTreeMap<Vec<String>, Vec<String>> = BTreeMap::new();
    for (node, names) in per_node {
        per_names.entry(names).or_default().push(node);
    }
    per_names
        .into_iter()
        .map(|(names, nodes)| {
            let task = stop_task(names, false, timeout);
            task.validate().map(|()| (nodes, task))
        })
        .collect()
}

pub fn stop_task(names: Vec<String>, all: bool, timeout: Option<Duration>) -> VmTask {
    VmTask {
        op: VmOp::Stop {
            names,
            all,
            timeout_ms: timeout.map_or(30_000, ms),
        },
    }
}

/// How long the whole stop action may take: the power-off time, then QEMU's quit (5 s) and
/// kill (10 s) on the node, and slack for the tree.
pub fn stop_action_timeout(timeout: Option<Duration>) -> Duration {
    timeout.unwrap_or(Duration::from_secs(30)) + Duration::from_secs(30)
}

fn mib(m: u64) -> String {
    if m >= 1024 && m.is_multiple_of(1024) {
        format!("{}G", m / 1024)
    } else {
        format!("{m}M")
    }
}

/// The table of guests in a vm action's results (launch, list, stop), one row per guest by host
/// then name; empty when no target reported any. A serial log (`logs`) is printed as it is.
pub fn render(a: &Action, op: &VmOp) -> String {
    if let VmOp::Logs { .. } = op {
        let mut out = String::new();
        for t in a.targets.values() {
            if let Some(r) = t.result.as_ref().filter(|r| r.ok) {
                // A serial console ends its lines with \r\n: shown as plain lines.
                out.push_str(&crate::escape::printable(&r.stdout.replace("\r\n", "\n")));
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        return out;
    }
    let mut t = table::new(&[
        "HOST", "NAME", "STATE", "CPUS", "MEMORY", "ACCEL", "UPTIME", "TTL LEFT", "PID", "AGENT",
        "DETAIL",
    ]);
    let mut rows = 0;
    let hosts = banyan_protocol::nodeset::NodeSet::from_names(a.targets.keys().cloned());
    for host in hosts.iter() {
        let Some(r) = a.targets.get(host).and_then(|t| t.result.as_ref()) else {
            continue;
        };
        for v in &r.vms {
            rows += 1;
            let live = v.uptime_ms > 0;
            t.add_row(vec![
                one_line(host).into_owned(),
                one_line(&v.name).into_owned(),
                v.state.as_str().to_string(),
                v.cpus.to_string(),
                mib(v.memory_mib),
                one_line(&v.accel).into_owned(),
                if live {
                    times::duration(v.uptime_ms)
                } else {
                    "-".into()
                },
                v.ttl_left_ms.map_or("-".into(), times::duration),
                if v.pid > 0 {
                    v.pid.to_string()
                } else {
                    "-".into()
                },
                agent_word(a, &v.node).into(),
                one_line(&v.detail).into_owned(),
            ]);
        }
    }
    if rows == 0 {
        return match op {
            VmOp::List => "no guests\n".into(),
            _ => String::new(),
        };
    }
    table::align_right(&mut t, 3);
    table::render(&t)
}

/// The AGENT column: the guest's node as the command read the tree.
fn agent_word(a: &Action, node: &str) -> &'static str {
    match &a.guest_agents {
        _ if node.is_empty() => "-",
        None => "-",
        Some(up) if up.get(node).copied().unwrap_or(false) => "up",
        Some(_) => "down",
    }
}

/// Whether each node of the tree is up, from the root's `/nodes` answer (`[{name, status}]`).
pub fn agents_up(nodes: &serde_json::Value) -> BTreeMap<String, bool> {
    nodes
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|n| Some((n["name"].as_str()?.to_string(), n["status"] == "up")))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::{render_action, Layout, Outcome};
    use crate::app::{Cli, Command};
    use clap::Parser;
    use serde_json::{json, Value};

    fn vm_action(op: Value, for_real: bool, targets: Value) -> Action {
        serde_json::from_value(json!({
            "id": "00000000000000ee", "kind": "vm", "who": "ops",
            "task": {"vm": {"op": op}}, "nodes": "cn[1-2]", "for_real": for_real,
            "state": "done", "version": 3, "started_ms": 0, "ended_ms": 900, "targets": targets,
        }))
        .unwrap()
    }

    fn answer(ok: bool, summary: &str, vms: Value) -> Value {
        json!({"state": if ok { "ok" } else { "failed" }, "error": null, "result": {
            "ok": ok, "dry_run": false, "summary": summary, "exit": null, "signal": null,
            "stdout": "", "stderr": "", "truncated": false, "units": [], "duration_ms": 40,
            "vms": vms}})
    }

    fn guest(name: &str, cpus: u32, mib: u64, uptime_ms: u64, ttl: Option<u64>, pid: u32) -> Value {
        json!({"name": name, "state": "running", "cpus": cpus, "memory_mib": mib, "accel": "tcg",
               "confidential": "none", "started_ms": 1, "uptime_ms": uptime_ms,
               "ttl_left_ms": ttl, "pid": pid, "forwards": [], "reattached": false, "detail": ""})
    }

    #[test]
    fn list_is_a_table_by_host_then_name() {
        let a = vm_action(
            json!("list"),
            true,
            json!({
                "cn10": answer(true, "1 guest", json!([guest("web", 2, 2048, 125_000, Some(3_540_000), 4242)])),
                "cn2": answer(true, "2 guests", json!([
                    guest("g-1", 1, 128, 61_000, None, 77),
                    {"name": "g-2", "state": "crashed", "cpus": 1, "memory_mib": 128,
                     "accel": "tcg", "detail": "QEMU ended without a stop (killed by SIGKILL)"},
                ])),
            }),
        );
        let text = render(&a, &VmOp::List);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("HOST NAME STATE   CPUS MEMORY ACCEL UPTIME TTL LEFT PID  AGENT"),
            "{text}"
        );
        assert!(
            lines[1].starts_with("cn2  g-1  running    1 128M   tcg   1m"),
            "{text}"
        );
        assert!(
            lines[2].contains("crashed") && lines[2].ends_with("(killed by SIGKILL)"),
            "{text}"
        );
        assert!(
            lines[3].starts_with("cn10 web  running    2 2G     tcg   2m"),
            "{text}"
        );
        assert!(
            lines[3].contains("59m") && lines[3].contains("4242"),
            "{text}"
        );
        // A list reads: no dry-run notice.
        let all = render_action(&a, Layout::Grouped);
        assert!(all.ends_with("All 2 targets succeeded.\n"), "{all}");
        let empty = vm_action(
            json!("list"),
            true,
            json!({"cn1": answer(true, "0 guests", json!([]))}),
        );
        assert_eq!(render(&empty, &VmOp::List), "no guests\n");
    }

    #[test]
    fn the_agent_column_reads_the_tree_for_joined_guests() {
        let mut j1 = guest("j1", 1, 256, 5_000, None, 10);
        j1["node"] = json!("cn1-vm-j1");
        let mut j2 = guest("j2", 1, 256, 5_000, None, 11);
        j2["node"] = json!("cn1-vm-j2");
        let mut a = vm_action(
            json!("list"),
            true,
            json!({"cn1": answer(true, "3 guests", json!([j1, j2, guest("plain", 1, 128, 5_000, None, 12)]))}),
        );
        a.guest_agents = Some(agents_up(&json!([
            {"name": "cn1", "status": "up"},
            {"name": "cn1-vm-j1", "status": "up"},
            {"name": "cn1-vm-j2", "status": "lost"},
        ])));
        let text = render(&a, &VmOp::List);
        let agent: Vec<&str> = text
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(9).unwrap_or("?"))
            .collect();
        assert_eq!(agent, ["up", "down", "-"], "{text}");
    }

    #[test]
    fn a_refused_launch_is_one_failure_and_a_dry_run_says_so() {
        let op = json!({"launch": {"name": "g", "cpus": 1, "memory_mib": 128,
                                   "boot": {"kernel": {"kernel": "/nope"}}}});
        let why = "kernel /nope does not exist: give the path of a kernel image on this node; nothing was launched";
        let a = vm_action(
            op.clone(),
            true,
            json!({"cn1": answer(false, why, json!([]))}),
        );
        let text = render_action(&a, Layout::Grouped);
        assert!(text.contains(&format!("cn1   1 failed {why}")), "{text}");
        assert_eq!(Outcome::of(&a).exit_code(), 1);

        let mut dry = guest("g", 1, 128, 0, None, 0);
        dry["state"] = json!("dry_run");
        dry["detail"] = json!("would run qemu-system-x86_64 -name g");
        let a = vm_action(
            op,
            false,
            json!({"cn1": answer(true, "would launch 1 guest", json!([dry]))}),
        );
        let text = render_action(&a, Layout::Grouped);
        assert!(
            text.contains("dry-run") && text.contains("would run qemu-system-x86_64"),
            "{text}"
        );
        assert!(
            text.ends_with("DRY RUN: nothing was changed; add --for-real\n"),
            "{text}"
        );
    }

    #[test]
    fn logs_print_the_serial_console_escaped() {
        let mut r = answer(true, "", json!([]));
        r["result"]["stdout"] = json!("boot\r\nbanyan-guest: up\r\n\x1b[2J");
        let a = vm_action(
            json!({"logs": {"name": "g", "bytes": 100}}),
            true,
            json!({"cn1": r}),
        );
        let text = render(
            &a,
            &VmOp::Logs {
                name: "g".into(),
                bytes: 100,
            },
        );
        assert_eq!(text, "boot\nbanyan-guest: up\n\\u{1b}[2J\n");
    }

    #[test]
    fn the_command_line_makes_the_tasks() {
        let cli = Cli::try_parse_from([
            "banyan", "vm", "launch", "cn[1-2]", "--name", "g", "--count", "2", "--memory", "1G",
            "--kernel", "/k", "--fwd", "0:22", "--ttl", "2h",
        ])
        .unwrap();
        let Command::Vm(VmArgs {
            cmd: VmCommand::Launch(a),
        }) = cli.command
        else {
            panic!("not vm launch")
        };
        let VmOp::Launch(l) = launch_task(&a).unwrap().op else {
            panic!("not a launch")
        };
        assert_eq!(
            (l.memory_mib, l.count, l.ttl_ms, l.join),
            (1024, 2, Some(7_200_000), None)
        );
        let cli = Cli::try_parse_from([
            "banyan", "vm", "launch", "cn1", "--name", "j", "--kernel", "/k", "--join",
        ])
        .unwrap();
        let Command::Vm(VmArgs {
            cmd: VmCommand::Launch(a),
        }) = cli.command
        else {
            panic!("not vm launch")
        };
        let VmOp::Launch(l) = launch_task(&a).unwrap().op else {
            panic!("not a launch")
        };
        // The request asks; the root fills the tokens in.
        assert_eq!(l.join, Some(VmJoin::default()));
        assert!(!a.for_real);
        // --kernel and --disk exclude each other; one is needed.
        assert!(Cli::try_parse_from(["banyan", "vm", "launch", "cn1", "--name", "g"]).is_err());
        assert!(Cli::try_parse_from([
            "banyan", "vm", "launch", "cn1", "--name", "g", "--kernel", "/k", "--disk", "/d"
        ])
        .is_err());
        assert_eq!(parse_mib("512M"), Ok(512));
        assert_eq!(parse_mib("2048"), Ok(2048));

        // cn1:a cn2:a go as one stop; cn3:b as another.
        let stops =
            stops_by_names(&["cn1:a".into(), "cn2:a".into(), "cn3:b".into()], None).unwrap();
        assert_eq!(stops.len(), 2);
        assert_eq!(stops[0].0, ["cn1", "cn2"]);
        assert_eq!(stops[1].0, ["cn3"]);
        assert!(stops_by_names(&["cn1".into()], None)
            .unwrap_err()
            .contains("NODE:NAME"));
        assert!(stops_by_names(&["cn1:../x".into()], None)
            .unwrap_err()
            .contains("bad guest name"));
    }
}

//! `banyan hv`: OpenStack hypervisors through the root — the arguments, the task they make, and
//! how the results read: the HLT's status table (Hypervisor | Runs VMs? | Alive? | #VMs | VMs)
//! with banyan's agent and daemons columns, servers per hypervisor, and for the changing
//! operations each node's `[ OK ]` lines then "All commands executed successfully." or the
//! failures.

use crate::actions::{Action, TargetState};
use crate::table;
use crate::times;
use banyan_protocol::action::{HvBoot, HvOp, HvTask};
use clap::{Args, Subcommand};
use serde::Deserialize;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// `banyan hv [--os-credentials] COMMAND`.
#[derive(Debug, Args)]
pub struct HvArgs {
    #[command(subcommand)]
    pub cmd: HvCommand,
    /// Use my OpenStack credentials (the OS_* variables of this shell, an openrc's; with
    /// OS_CLOUD, that cloud of my clouds.yaml) for this action instead of the root's.
    #[arg(long, global = true)]
    pub os_credentials: bool,
}

/// The caller's credentials as the root takes them (`openstack` in the action's body): the
/// `OS_*` variables of this process, and the clouds.yaml `OS_CLOUD` refers to, read here.
pub fn caller_credentials() -> Result<serde_json::Value, String> {
    let vars: std::collections::BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("OS_"))
        .collect();
    if vars.is_empty() {
        return Err(
            "--os-credentials: no OS_* variable is set: source your openrc or set OS_CLOUD".into(),
        );
    }
    let mut out = serde_json::json!({ "vars": vars });
    if vars.get("OS_CLOUD").is_some_and(|c| !c.is_empty()) {
        let mut paths: Vec<PathBuf> = Vec::new();
        if let Some(f) = vars.get("OS_CLIENT_CONFIG_FILE") {
            paths.push(PathBuf::from(f));
        }
        paths.push(PathBuf::from("clouds.yaml"));
        if let Some(home) = std::env::var_os("HOME") {
            paths.push(PathBuf::from(home).join(".config/openstack/clouds.yaml"));
        }
        paths.push(PathBuf::from("/etc/openstack/clouds.yaml"));
        let found = paths.iter().find(|p| p.is_file()).ok_or_else(|| {
            format!(
                "--os-credentials: OS_CLOUD is set but there is no clouds.yaml in {}",
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
        let text = std::fs::read_to_string(found)
            .map_err(|e| format!("--os-credentials: cannot read {}: {e}", found.display()))?;
        out["clouds_yaml"] = serde_json::json!(text);
    }
    Ok(out)
}

#[derive(Debug, Subcommand)]
pub enum HvCommand {
    /// Each hypervisor as Nova sees it, with its agent and OpenStack daemons.
    #[command(after_help = "\
Runs VMs? = Nova's compute service is enabled; Alive? = Nova says it is up and the node's
OpenStack daemons run. --nvms counts each hypervisor's servers (all projects) and lists their
addresses. Reads only.

Examples:
  banyan hv status '@cloud'
  banyan hv status @./hlt-nodes.txt --nvms")]
    Status {
        /// The nodes: `cn[1-4]`, `@group`, `@list.txt` (one host a line, # comments)
        /// [default: every node of the cluster].
        nodes: Option<String>,
        #[arg(long)]
        nvms: bool,
        #[arg(long)]
        json: bool,
    },
    /// The servers of each hypervisor, with their state.
    Vms {
        /// [default: every node of the cluster]
        nodes: Option<String>,
        /// Delete the servers in ERROR (with --for-real).
        #[arg(long)]
        cleanup_errors: bool,
        #[arg(long)]
        for_real: bool,
        #[arg(long)]
        json: bool,
    },
    /// Start the nodes' OpenStack daemons, wait until Nova sees them up, enable them.
    #[command(after_help = "\
Examples:
  banyan hv enable 'cn[40-43]'              # dry run: says what it would do
  banyan hv enable 'cn[40-43]' --for-real")]
    Enable {
        nodes: String,
        #[arg(long)]
        for_real: bool,
        #[arg(long)]
        json: bool,
    },
    /// Drain: disable, delete the servers, wait for them to go, stop the daemons.
    #[command(after_help = "\
The sequence of openstack-hlt-manage: the compute service is disabled (the reason names you and
the time), the daemons are started if they were not (deleting servers needs them), every server
on the host is deleted, and the daemons are stopped once the servers are gone. Servers still
there after --vm-timeout fail that node and the daemons are left running, unless
--force-shutoff stops them anyway. One node's failure does not stop the others.

Examples:
  banyan hv disable cn43 --for-real
  banyan hv disable @./drain.txt --vm-timeout 10m --force-shutoff --for-real")]
    Disable {
        nodes: String,
        /// How long the servers are given to go [default: 300s].
        #[arg(long, value_name = "DUR", value_parser = times::parse_duration)]
        vm_timeout: Option<Duration>,
        /// Stop the daemons even when servers remain at the timeout.
        #[arg(long)]
        force_shutoff: bool,
        #[arg(long)]
        for_real: bool,
        #[arg(long)]
        json: bool,
    },
    /// Boot servers on the enabled hypervisors.
    #[command(after_help = "\
--count N spreads N servers over the enabled, up hypervisors within their free capacity;
--fill boots as many as Placement says each one has room for. Servers are named
PREFIX-HOST (PREFIX-HOST-1, -2, ... for several).

Examples:
  banyan hv runvms --flavor m1.small --image cirros --count 4 --for-real
  banyan hv runvms '@cloud' --flavor m1.large --image hlt-worker --fill --user-data boot.sh --for-real")]
    Runvms(RunvmsArgs),
}

#[derive(Debug, Args)]
pub struct RunvmsArgs {
    /// The hypervisors to boot on [default: every node of the cluster].
    pub nodes: Option<String>,
    #[arg(long)]
    pub flavor: String,
    #[arg(long)]
    pub image: String,
    #[arg(long, conflicts_with = "fill", required_unless_present = "fill")]
    pub count: Option<u64>,
    #[arg(long)]
    pub fill: bool,
    /// A key pair's name.
    #[arg(long)]
    pub key: Option<String>,
    /// A file given to the servers as user data.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    #[arg(long, default_value = "banyan")]
    pub name: String,
    /// Delete the servers that ended in ERROR.
    #[arg(long)]
    pub cleanup_errors: bool,
    #[arg(long)]
    pub for_real: bool,
    #[arg(long)]
    pub json: bool,
}

/// The node set, the task, whether for real, and whether JSON is wanted.
pub struct Request {
    /// `None`: every node of the cluster.
    pub nodes: Option<String>,
    pub task: HvTask,
    pub for_real: bool,
    pub json: bool,
}

fn task(op: HvOp) -> HvTask {
    HvTask {
        op,
        nvms: false,
        vm_timeout_ms: None,
        force_shutoff: false,
        boot: None,
        cleanup_errors: false,
    }
}

/// What the command line asks.
pub fn request(cmd: HvCommand) -> Result<Request, String> {
    Ok(match cmd {
        HvCommand::Status { nodes, nvms, json } => Request {
            nodes,
            task: HvTask {
                nvms,
                ..task(HvOp::Status)
            },
            for_real: true,
            json,
        },
        HvCommand::Vms {
            nodes,
            cleanup_errors,
            for_real,
            json,
        } => Request {
            nodes,
            task: HvTask {
                cleanup_errors,
                ..task(HvOp::Vms)
            },
            for_real: for_real || !cleanup_errors,
            json,
        },
        HvCommand::Enable {
            nodes,
            for_real,
            json,
        } => Request {
            nodes: Some(nodes),
            task: task(HvOp::Enable),
            for_real,
            json,
        },
        HvCommand::Disable {
            nodes,
            vm_timeout,
            force_shutoff,
            for_real,
            json,
        } => Request {
            nodes: Some(nodes),
            task: HvTask {
                vm_timeout_ms: vm_timeout.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                force_shutoff,
                ..task(HvOp::Disable)
            },
            for_real,
            json,
        },
        HvCommand::Runvms(a) => {
            let user_data = match &a.user_data {
                None => None,
                Some(p) => {
                    let bytes = std::fs::read(p)
                        .map_err(|e| format!("cannot read the user data {}: {e}", p.display()))?;
                    Some(base64(&bytes))
                }
            };
            Request {
                nodes: a.nodes,
                task: HvTask {
                    boot: Some(HvBoot {
                        flavor: a.flavor,
                        image: a.image,
                        count: a.count,
                        fill: a.fill,
                        key: a.key,
                        user_data,
                        name: a.name,
                    }),
                    cleanup_errors: a.cleanup_errors,
                    ..task(HvOp::Runvms)
                },
                for_real: a.for_real,
                json: a.json,
            }
        }
    })
}

/// Standard base64 with padding (Nova's user data).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A row of `hv status` as the root writes it.
#[derive(Debug, Deserialize)]
struct Row {
    hypervisor: String,
    runs_vms: Option<bool>,
    nova_state: Option<String>,
    alive: bool,
    agent: String,
    daemons: String,
    #[serde(default)]
    servers: Option<Vec<Server>>,
}

#[derive(Debug, Deserialize)]
struct Server {
    id: String,
    name: String,
    status: String,
    #[serde(default)]
    addresses: Vec<String>,
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The table or lines of an hv action's results (failures and the final line are added by the
/// caller, as for every action).
pub fn render(a: &Action, task: &HvTask) -> String {
    match task.op {
        HvOp::Status => render_status(a, task.nvms),
        HvOp::Vms => render_vms(a),
        _ => render_lines(a),
    }
}

fn render_status(a: &Action, nvms: bool) -> String {
    let mut header = vec![
        "NODE",
        "HYPERVISOR",
        "RUNS VMS?",
        "ALIVE?",
        "NOVA",
        "AGENT",
        "DAEMONS",
    ];
    if nvms {
        header.extend(["#VMS", "VMS"]);
    }
    let mut t = table::new(&header);
    for (node, target) in &a.targets {
        let Some(row) = target
            .result
            .as_ref()
            .and_then(|r| serde_json::from_str::<Row>(r.stdout.trim()).ok())
        else {
            continue;
        };
        let mut cells = vec![
            node.clone(),
            row.hypervisor.clone(),
            row.runs_vms.map_or("-", yes_no).to_string(),
            yes_no(row.alive).to_string(),
            row.nova_state.clone().unwrap_or_else(|| "unknown".into()),
            row.agent.clone(),
            row.daemons.clone(),
        ];
        if nvms {
            let servers = row.servers.as_deref().unwrap_or_default();
            cells.push(servers.len().to_string());
            let shown: Vec<String> = servers
                .iter()
                .map(|s| {
                    if s.addresses.is_empty() {
                        s.name.clone()
                    } else {
                        s.addresses.join(" ")
                    }
                })
                .collect();
            cells.push(shown.join(","));
        }
        t.add_row(cells);
    }
    table::render(&t)
}

fn render_vms(a: &Action) -> String {
    let mut t = table::new(&["HYPERVISOR", "SERVER", "ID", "STATUS", "ADDRESSES"]);
    let mut any = false;
    for (node, target) in &a.targets {
        let Some(list) = target
            .result
            .as_ref()
            .and_then(|r| serde_json::from_str::<Vec<Server>>(r.stdout.trim()).ok())
        else {
            continue;
        };
        for s in list {
            any = true;
            t.add_row(vec![
                node.clone(),
                s.name,
                s.id,
                s.status,
                s.addresses.join(" "),
            ]);
        }
    }
    if !any {
        return "no servers on these hypervisors\n".into();
    }
    table::render(&t)
}

fn render_lines(a: &Action) -> String {
    let mut out = String::new();
    for (node, target) in &a.targets {
        let Some(r) = &target.result else {
            continue;
        };
        out.push_str(&r.stdout);
        if target.state == TargetState::Ok {
            let _ = writeln!(out, "{node}: {}", r.summary);
        }
    }
    if !a.targets.is_empty() && a.targets.values().all(|t| t.state == TargetState::Ok) {
        out.push_str("All commands executed successfully.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv_action(task: serde_json::Value, targets: serde_json::Value) -> Action {
        serde_json::from_value(serde_json::json!({
            "id": "0123456789abcdef", "kind": "hv", "who": "admin", "peer": "127.0.0.1:5555",
            "task": {"hv": task}, "nodes": "cn[1-2]", "for_real": true, "state": "done",
            "version": 3, "started_ms": 1_000, "ended_ms": 2_000, "deadline_ms": 61_000,
            "targets": targets,
        }))
        .expect("a well-formed action")
    }

    fn answered(ok: bool, summary: &str, stdout: &str) -> serde_json::Value {
        serde_json::json!({"state": if ok { "ok" } else { "failed" }, "error": null, "result": {
            "ok": ok, "dry_run": false, "summary": summary, "exit": null, "signal": null,
            "stdout": stdout, "stderr": "", "truncated": false, "units": [], "duration_ms": 5}})
    }

    #[test]
    fn status_reads_as_the_hlt_table_with_agent_and_daemons() {
        let up = r#"{"hypervisor":"cn1","runs_vms":true,"nova_state":"up","disabled_reason":null,"alive":true,"agent":"up","daemons":"running","servers":[{"id":"u1","name":"wn-1","status":"ACTIVE","host":"cn1","addresses":["10.0.0.5"],"fault":null},{"id":"u2","name":"wn-2","status":"ACTIVE","host":"cn1","addresses":[],"fault":null}]}"#;
        let unknown = r#"{"hypervisor":"cn2","runs_vms":null,"nova_state":null,"disabled_reason":null,"alive":false,"agent":"up","daemons":"stopped","servers":[]}"#;
        let a = hv_action(
            serde_json::json!({"op": "status", "nvms": true}),
            serde_json::json!({"cn1": answered(true, "enabled, up", up),
                               "cn2": answered(false, "Nova has no nova-compute service on host", unknown)}),
        );
        let out = render(
            &a,
            &HvTask {
                nvms: true,
                ..task(HvOp::Status)
            },
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("NODE")
                && lines[0].contains("RUNS VMS?")
                && lines[0].ends_with("VMS"),
            "{out}"
        );
        let cn1: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cn1,
            [
                "cn1",
                "cn1",
                "yes",
                "yes",
                "up",
                "up",
                "running",
                "2",
                "10.0.0.5,wn-2"
            ]
        );
        let cn2: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            cn2,
            ["cn2", "cn2", "-", "no", "unknown", "up", "stopped", "0"]
        );
    }

    #[test]
    fn changes_print_each_nodes_lines_and_the_hlt_closing_line_only_when_all_succeeded() {
        let ok = answered(
            true,
            "enabled and up (cn1)",
            "[ OK ] Starting OpenStack daemons on cn1\n[ OK ] Enabling hypervisor cn1\n",
        );
        let a = hv_action(
            serde_json::json!({"op": "enable"}),
            serde_json::json!({"cn1": ok.clone()}),
        );
        assert_eq!(
            render(&a, &task(HvOp::Enable)),
            "[ OK ] Starting OpenStack daemons on cn1\n[ OK ] Enabling hypervisor cn1\ncn1: enabled and up (cn1)\nAll commands executed successfully.\n"
        );
        let failed = answered(
            false,
            "Nova did not see nova-compute on cn2 up",
            "[FAIL] Nova did not see nova-compute on cn2 up\n",
        );
        let a = hv_action(
            serde_json::json!({"op": "enable"}),
            serde_json::json!({"cn1": ok, "cn2": failed}),
        );
        let out = render(&a, &task(HvOp::Enable));
        assert!(
            out.contains("[FAIL] Nova did not see")
                && !out.contains("All commands executed successfully."),
            "{out}"
        );
    }

    #[test]
    fn user_data_is_standard_base64() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"#!/bin/sh\n"), "IyEvYmluL3NoCg==");
    }

    #[test]
    fn reads_run_for_real_and_changes_do_not_by_default() {
        let r = request(HvCommand::Status {
            nodes: Some("cn1".into()),
            nvms: true,
            json: false,
        })
        .unwrap();
        assert!(r.for_real && r.task.nvms);
        let r = request(HvCommand::Disable {
            nodes: "cn1".into(),
            vm_timeout: Some(Duration::from_secs(10)),
            force_shutoff: true,
            for_real: false,
            json: false,
        })
        .unwrap();
        assert!(!r.for_real);
        assert_eq!(r.task.vm_timeout_ms, Some(10_000));
        assert!(r.task.validate().is_ok());
        let r = request(HvCommand::Vms {
            nodes: Some("cn1".into()),
            cleanup_errors: true,
            for_real: false,
            json: false,
        })
        .unwrap();
        assert!(
            !r.for_real,
            "deleting ERROR servers is a change: dry run first"
        );
    }
}

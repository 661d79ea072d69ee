//! The action and administration commands: each takes a [`Client`] and its parsed arguments,
//! talks to the root, prints, and returns the exit status (see [`crate::api`] for the values).

use std::io::Write;
use std::time::Duration;

use banyan_protocol::action::{
    validate_order_id, validate_unit_name, ExecTask, PowerOp, PowerTask, ServiceTask, Task,
    DEFAULT_MAX_OUTPUT,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use crate::actions::{render_action, render_list, Action, Layout, Outcome, Started, Summary};
use crate::admin::{self, AuditLine, GroupInfo, TokenInfo, Verified};
use crate::api::{segment, Auth, CliError, Client, EXIT_OK};
use crate::app::{ExecArgs, PowerArgs, ServiceArgs};
use crate::escape::one_line;
use crate::follow::{follow, LivePrinter, OnInterrupt, Progress};
use crate::{nodes, times};

/// Writes to stdout; a closed pipe (`banyan actions | head`) is not an error.
pub fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn parse<T: DeserializeOwned>(client: &Client, path: &str, v: Value) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| CliError::BadAnswer {
        url: format!("{}{path}", client.base()),
        status: 200,
        detail: e.to_string(),
    })
}

/// `banyan exec`.
pub fn exec(client: &Client, args: &ExecArgs) -> Result<u8, CliError> {
    // -L on a real run prints lines as they come, so the agents send them as they come.
    let stream = args.no_group && args.for_real && !args.json;
    let task = Task::Exec(ExecTask {
        argv: args.command.clone(),
        shell: args.shell,
        user: args.user.clone(),
        max_output: args.max_output.unwrap_or(DEFAULT_MAX_OUTPUT),
        stream,
    });
    let layout = if args.no_group {
        Layout::ByNode
    } else {
        Layout::Grouped
    };
    start(
        client,
        &args.nodes,
        task,
        args.for_real,
        args.timeout,
        args.json,
        layout,
    )
}

/// `banyan service`: the last positional argument is the node set, the ones before it units.
pub fn service(client: &Client, args: &ServiceArgs) -> Result<u8, CliError> {
    let Some((nodes, units)) = args.args.split_last().filter(|(_, u)| !u.is_empty()) else {
        return Err(CliError::Usage(
            "give one or more units, then the node set: banyan service start nova-compute 'cn[1-4]'"
                .into(),
        ));
    };
    for u in units {
        validate_unit_name(u).map_err(CliError::Usage)?;
    }
    let task = Task::Service(ServiceTask {
        op: args.op,
        units: units.to_vec(),
    });
    start(
        client,
        nodes,
        task,
        args.for_real,
        args.timeout,
        args.json,
        Layout::Grouped,
    )
}

/// `banyan power`: `status` and `check` read, and are carried out without --for-real.
pub fn power(client: &Client, args: &PowerArgs) -> Result<u8, CliError> {
    let op = match args.op.as_str() {
        "status" => PowerOp::Status,
        "check" => PowerOp::Check,
        "on" => PowerOp::On,
        "off" => PowerOp::Off,
        "reset" => PowerOp::Reset,
        "cycle" => PowerOp::Cycle,
        other => {
            return Err(CliError::Usage(format!(
                "unknown power operation {other:?}"
            )))
        }
    };
    let task = Task::Power(PowerTask {
        op,
        force: args.force,
        grace_ms: args
            .timeout
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        boot: args.boot.clone(),
    });
    let for_real = args.for_real || matches!(op, PowerOp::Status | PowerOp::Check);
    start(
        client,
        &args.nodes,
        task,
        for_real,
        None,
        args.json,
        Layout::Grouped,
    )
}

/// `banyan hv ...`.
pub fn hv(client: &Client, args: crate::hv::HvArgs) -> Result<u8, CliError> {
    let credentials = if args.os_credentials {
        Some(crate::hv::caller_credentials().map_err(CliError::Usage)?)
    } else {
        None
    };
    let r = crate::hv::request(args.cmd).map_err(CliError::Usage)?;
    let task = Task::Hv(r.task);
    task.validate().map_err(CliError::Usage)?;
    let nodes = match &r.nodes {
        Some(expr) => nodes::for_root(expr, client)?,
        None => every_node(client)?,
    };
    let mut body = json!({"nodes": nodes, "for_real": r.for_real, "task": task});
    if let Some(c) = credentials {
        body["openstack"] = c;
    }
    run_action(client, body, &task, r.json, Layout::Grouped)
}

/// `banyan vm ...`: launch and stop are dry runs without --for-real; list and logs read.
pub fn vm(client: &Client, args: crate::vm::VmArgs) -> Result<u8, CliError> {
    use crate::vm::{self, VmCommand};
    let usage = CliError::Usage;
    match args.cmd {
        VmCommand::Launch(a) => {
            let task = Task::Vm(vm::launch_task(&a).map_err(usage)?);
            // Each node checks, then starts its guests in parallel: QMP answers in seconds.
            let timeout = Duration::from_secs(120);
            start(
                client,
                &a.nodes,
                task,
                a.for_real,
                Some(timeout),
                a.json,
                Layout::Grouped,
            )
        }
        VmCommand::List { nodes, json } => {
            let nodes = match nodes {
                Some(expr) => nodes::for_root(&expr, client)?,
                None => every_node(client)?,
            };
            let task = Task::Vm(banyan_protocol::action::VmTask {
                op: banyan_protocol::action::VmOp::List,
            });
            let body = json!({"nodes": nodes, "for_real": true, "task": task});
            // The AGENT column: the tree as it is once the guests answered.
            run_action_with(client, body, &task, json, Layout::Grouped, &|a| {
                let joined = a
                    .targets
                    .values()
                    .filter_map(|t| t.result.as_ref())
                    .any(|r| r.vms.iter().any(|v| !v.node.is_empty()));
                if joined && !json {
                    a.guest_agents = Some(vm::agents_up(&client.get("/nodes")?));
                }
                Ok(())
            })
        }
        VmCommand::Stop {
            guests,
            all,
            timeout,
            for_real,
            json,
        } => {
            let action_timeout = Some(vm::stop_action_timeout(timeout));
            if let Some(expr) = all {
                let task = Task::Vm(vm::stop_task(Vec::new(), true, timeout));
                return start(
                    client,
                    &expr,
                    task,
                    for_real,
                    action_timeout,
                    json,
                    Layout::Grouped,
                );
            }
            // One action per set of names; the exit status is the worst of them.
            let mut code = EXIT_OK;
            for (nodes, task) in vm::stops_by_names(&guests, timeout).map_err(usage)? {
                let set = banyan_protocol::nodeset::NodeSet::from_names(nodes);
                let c = start(
                    client,
                    &set.fold(),
                    Task::Vm(task),
                    for_real,
                    action_timeout,
                    json,
                    Layout::Grouped,
                )?;
                code = code.max(c);
            }
            Ok(code)
        }
        VmCommand::Logs { guest, bytes, json } => {
            let (node, name) = vm::split_guest(&guest).map_err(usage)?;
            let task = Task::Vm(banyan_protocol::action::VmTask {
                op: banyan_protocol::action::VmOp::Logs {
                    name,
                    bytes: bytes.unwrap_or(banyan_protocol::action::DEFAULT_VM_LOG_BYTES),
                },
            });
            start(client, &node, task, true, None, json, Layout::Grouped)
        }
        VmCommand::Console { guest, read_only } => {
            let (node, name) = vm::split_guest(&guest).map_err(usage)?;
            crate::console::console(client, &format!("{node}:{name}"), read_only)
        }
    }
}

/// Every node of the cluster, folded (what `hv status` means without a node set; `@*` would need
/// group files).
fn every_node(client: &Client) -> Result<String, CliError> {
    let v = client.get("/nodes")?;
    let names = v.as_array().ok_or_else(|| CliError::BadAnswer {
        url: format!("{}/nodes", client.base()),
        status: 200,
        detail: "not a list of nodes".into(),
    })?;
    let set = banyan_protocol::nodeset::NodeSet::from_names(
        names
            .iter()
            .filter_map(|n| n["name"].as_str().map(str::to_string)),
    );
    if set.is_empty() {
        return Err(CliError::Usage("the cluster has no node yet".into()));
    }
    Ok(set.fold())
}

/// Starts an action, follows it to its end and prints its results.
fn start(
    client: &Client,
    nodes_expr: &str,
    task: Task,
    for_real: bool,
    timeout: Option<Duration>,
    json: bool,
    layout: Layout,
) -> Result<u8, CliError> {
    task.validate().map_err(CliError::Usage)?;
    let nodes = nodes::for_root(nodes_expr, client)?;
    let body = json!({
        "nodes": nodes,
        "for_real": for_real,
        "timeout_ms": timeout.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        "task": task,
    });
    run_action(client, body, &task, json, layout)
}

/// Posts an action's body, follows the action to its end and prints its results.
fn run_action(
    client: &Client,
    body: Value,
    task: &Task,
    json: bool,
    layout: Layout,
) -> Result<u8, CliError> {
    run_action_with(client, body, task, json, layout, &|_| Ok(()))
}

/// [`run_action`], with `annotate` adding what the command read beside the action before it is
/// shown.
fn run_action_with(
    client: &Client,
    body: Value,
    task: &Task,
    json: bool,
    layout: Layout,
    annotate: &dyn Fn(&mut Action) -> Result<(), CliError>,
) -> Result<u8, CliError> {
    let started: Started = parse(client, "/actions", client.post("/actions", &body)?)?;
    eprintln!(
        "action {}: {} on {} ({} target{}), {}",
        started.id,
        task.kind(),
        one_line(&started.targets),
        started.count,
        if started.count == 1 { "" } else { "s" },
        if started.for_real {
            "for real"
        } else {
            "dry run"
        }
    );
    validate_order_id(&started.id).map_err(|e| CliError::BadAnswer {
        url: format!("{}/actions", client.base()),
        status: 202,
        detail: e,
    })?;
    let streams = matches!(&task, Task::Exec(e) if e.stream);
    let mut printer = LivePrinter::default();
    let (mut action, value) = follow(
        client,
        &started.id,
        Progress::detect(),
        OnInterrupt::AskToCancel,
        streams.then_some(&mut printer),
    )?;
    annotate(&mut action)?;
    let layout = if streams { Layout::Streamed } else { layout };
    show_action(&action, &value, json, layout);
    Ok(Outcome::of(&action).exit_code())
}

fn show_action(action: &Action, value: &Value, json: bool, layout: Layout) {
    if json {
        emit(&format!("{value:#}\n"));
    } else {
        emit(&render_action(action, layout));
    }
}

/// `banyan actions [ID] [--watch]`.
pub fn actions(
    client: &Client,
    id: Option<&str>,
    watch: bool,
    no_group: bool,
    json: bool,
) -> Result<u8, CliError> {
    let Some(id) = id else {
        let v = client.get("/actions")?;
        if json {
            emit(&format!("{v:#}\n"));
        } else {
            let list: Vec<Summary> = parse(client, "/actions", v)?;
            emit(&render_list(&list, times::now_ms()));
        }
        return Ok(EXIT_OK);
    };
    validate_order_id(id).map_err(CliError::Usage)?;
    let (action, value) = if watch {
        follow(client, id, Progress::detect(), OnInterrupt::Detach, None)?
    } else {
        let path = format!("/actions/{}", segment(id));
        let v = client.get(&path)?;
        (parse::<Action>(client, &path, v.clone())?, v)
    };
    let layout = if no_group {
        Layout::ByNode
    } else {
        Layout::Grouped
    };
    show_action(&action, &value, json, layout);
    Ok(Outcome::of(&action).exit_code())
}

/// `banyan cancel ID`.
pub fn cancel(client: &Client, id: &str) -> Result<u8, CliError> {
    validate_order_id(id).map_err(CliError::Usage)?;
    let r = client.delete(&format!("/actions/{}", segment(id)))?;
    emit(&format!(
        "action {id}: {} (its targets were asked to stop; follow it with: banyan actions {id} --watch)\n",
        one_line(r["state"].as_str().unwrap_or("cancelling"))
    ));
    Ok(EXIT_OK)
}

/// `banyan audit`.
pub fn audit(
    client: &Client,
    since: Option<Duration>,
    who: Option<&str>,
    limit: Option<u64>,
    json: bool,
) -> Result<u8, CliError> {
    let since_ms = since.map(|d| {
        times::now_ms()
            .saturating_sub(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .to_string()
    });
    let limit = limit.map(|l| l.to_string());
    let mut query: Vec<(&str, &str)> = Vec::new();
    if let Some(s) = &since_ms {
        query.push(("since_ms", s));
    }
    if let Some(w) = who {
        query.push(("who", w));
    }
    if let Some(l) = &limit {
        query.push(("limit", l));
    }
    let v = client.get_as("/audit", &query, Auth::Required)?;
    if json {
        emit(&format!("{v:#}\n"));
    } else {
        let lines: Vec<AuditLine> = parse(client, "/audit", v)?;
        emit(&admin::render_audit(&lines));
    }
    Ok(EXIT_OK)
}

/// `banyan audit --verify`: exit status 1 when the log does not verify.
pub fn audit_verify(client: &Client, json: bool) -> Result<u8, CliError> {
    let v = client.get_as("/audit/verify", &[], Auth::Required)?;
    let verified: Verified = parse(client, "/audit/verify", v.clone())?;
    let (text, code) = admin::render_verify(&verified);
    if json {
        emit(&format!("{v:#}\n"));
    } else {
        emit(&text);
    }
    Ok(code)
}

/// `banyan token create`.
pub fn token_create(
    client: &Client,
    name: &str,
    role: &str,
    groups: &[String],
    expires: Option<Duration>,
    json: bool,
) -> Result<u8, CliError> {
    let groups: Vec<&str> = groups
        .iter()
        .map(|g| g.trim().trim_start_matches('@'))
        .filter(|g| !g.is_empty())
        .collect();
    let r = client.post(
        "/tokens",
        &json!({
            "name": name,
            "role": role,
            "groups": groups,
            "expires_in_ms": expires.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }),
    )?;
    if json {
        emit(&format!("{r:#}\n"));
    } else {
        let (out, warning) = admin::render_created_token(&r);
        eprint!("{warning}");
        emit(&out);
    }
    Ok(EXIT_OK)
}

/// `banyan token list`.
pub fn token_list(client: &Client, json: bool) -> Result<u8, CliError> {
    let v = client.get_as("/tokens", &[], Auth::Required)?;
    if json {
        emit(&format!("{v:#}\n"));
    } else {
        let list: Vec<TokenInfo> = parse(client, "/tokens", v)?;
        emit(&admin::render_tokens(&list, times::now_ms()));
    }
    Ok(EXIT_OK)
}

/// `banyan token revoke NAME`.
pub fn token_revoke(client: &Client, name: &str) -> Result<u8, CliError> {
    client.delete(&format!("/tokens/{}", segment(name)))?;
    emit(&format!("token {:?} revoked\n", one_line(name)));
    Ok(EXIT_OK)
}

/// `banyan groups`.
pub fn groups(client: &Client, json: bool) -> Result<u8, CliError> {
    let v = client.get("/groups")?;
    if json {
        emit(&format!("{v:#}\n"));
    } else {
        let list: Vec<GroupInfo> = parse(client, "/groups", v)?;
        emit(&admin::render_groups(&list));
    }
    Ok(EXIT_OK)
}

/// `banyan node forget NAME`.
pub fn node_forget(client: &Client, name: &str) -> Result<u8, CliError> {
    client.delete(&format!("/nodes/{}", segment(name)))?;
    emit(&format!("node {} forgotten\n", one_line(name)));
    Ok(EXIT_OK)
}

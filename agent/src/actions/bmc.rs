//! `bmc`: one call to one node's BMC, made by this node for the root — the *BMC gateway* role.
//!
//! The BMC network is often reachable only from a management node. `root.toml` names such a node
//! as the `gateway` of a set of BMCs; the root then carries out `banyan power` itself (the
//! waiting, the graceful-then-forced sequence, the agent's state in the tree) and sends each BMC
//! call it makes down the tree to the gateway as a sealed order of its own ([`BmcTask`]). This
//! executor makes that call with the same drivers the root uses ([`crate::bmc`]) and answers:
//!
//! - `ok` with `stdout` one line of JSON: `{"power": "On"}` for a state, `{"system": ..,
//!   "power": .., "resets": [..]}` for a check, `{}` for a reset or a boot device set;
//! - not `ok` with the BMC's error in `summary` (what failed and what to do, as the drivers word
//!   it), the root adding the node and the gateway.
//!
//! Only a node whose `agent.toml` says `[bmc] gateway = true` makes BMC calls. The password and
//! CA files named in the task are files on this node, checked as the root checks its own
//! (owner-only): a password never travels through the tree. A dry run makes no call that changes
//! anything (it reads, as a dry run of `power status` would).

use super::{BoxFuture, Executor, RunContext};
use crate::bmc::{self, BootDevice, Endpoint, Protocol, ResetKind, Secret, Tls};
use crate::config::BmcGatewayConfig;
use banyan_protocol::action::{BmcCall, BmcTask, NodeResult, Task};
use std::path::PathBuf;
use std::time::Duration;

pub struct Bmc {
    enabled: bool,
}

impl Bmc {
    pub fn new(cfg: &BmcGatewayConfig) -> Bmc {
        Bmc {
            enabled: cfg.gateway,
        }
    }
}

impl Executor for Bmc {
    fn kind(&self) -> &'static str {
        "bmc"
    }

    fn run<'a>(&'a self, task: &'a Task, ctx: RunContext) -> BoxFuture<'a> {
        Box::pin(async move {
            let Task::Bmc(t) = task else {
                return NodeResult::refused("not a bmc task");
            };
            if !self.enabled {
                return NodeResult::refused(
                    "this node is not a BMC gateway: set [bmc] gateway = true in its agent.toml",
                );
            }
            if !ctx.for_real && t.call.changes() {
                return NodeResult {
                    ok: true,
                    summary: format!("would call {:?} on {}'s BMC", t.call, t.node),
                    ..NodeResult::default()
                };
            }
            let endpoint = match endpoint_of(t) {
                Ok(e) => e,
                Err(why) => return NodeResult::refused(why),
            };
            // The driver bounds each operation by the endpoint's timeout; the task's own timeout
            // bounds this whole call too, and a cancel ends it.
            let mut cancel = ctx.cancel.clone();
            tokio::select! {
                r = tokio::time::timeout(ctx.timeout, call(endpoint, &t.call)) => match r {
                    Ok(Ok(stdout)) => NodeResult { ok: true, summary: "done".into(), stdout, ..NodeResult::default() },
                    Ok(Err(why)) => NodeResult::refused(why),
                    Err(_) => NodeResult::refused(format!("no answer from the BMC within {}s", ctx.timeout.as_secs_f64())),
                },
                () = super::cancelled(&mut cancel) => NodeResult::refused("cancelled"),
            }
        })
    }
}

/// The driver's endpoint for `t`, its files read here.
fn endpoint_of(t: &BmcTask) -> Result<Endpoint, String> {
    let protocol = match t.protocol.as_str() {
        "redfish" => Protocol::Redfish,
        "ipmi" => Protocol::Ipmi,
        other => return Err(format!("unknown BMC protocol {other:?}")),
    };
    let tls = match (protocol, t.scheme.as_str(), &t.ca_file, t.insecure) {
        (Protocol::Ipmi, ..) | (Protocol::Redfish, "http", None, false) => Tls::Plain,
        (Protocol::Redfish, "https" | "", Some(ca), false) => Tls::Verify {
            ca_file: PathBuf::from(ca),
        },
        (Protocol::Redfish, "https" | "", None, true) => Tls::Insecure,
        _ => {
            return Err(
                "a Redfish BMC task needs https with a CA file or insecure, or http alone".into(),
            )
        }
    };
    let password =
        Secret::from_file(&PathBuf::from(&t.password_file)).map_err(|e| e.to_string())?;
    Ok(Endpoint {
        node: t.node.clone(),
        protocol,
        host: t.host.clone(),
        port: t.port,
        user: t.user.clone(),
        password,
        tls,
        system_id: t.system_id.clone(),
        timeout: Duration::from_millis(t.timeout_ms),
    })
}

/// Makes the call; its JSON line, or the BMC's error as the drivers word it.
async fn call(endpoint: Endpoint, call: &BmcCall) -> Result<String, String> {
    let driver = bmc::connect(endpoint).map_err(|e| e.kind.to_string())?;
    let value = match call {
        BmcCall::PowerState => {
            let s = driver.power_state().await.map_err(|e| e.kind.to_string())?;
            serde_json::json!({"power": s.to_string()})
        }
        BmcCall::Check => {
            let r = driver.check().await.map_err(|e| e.kind.to_string())?;
            let resets: Vec<&str> = r.resets.iter().map(|k| k.as_str()).collect();
            serde_json::json!({"system": r.system, "power": r.power.to_string(), "resets": resets})
        }
        BmcCall::Reset(kind) => {
            let kind: ResetKind = kind.parse()?;
            driver.reset(kind).await.map_err(|e| e.kind.to_string())?;
            serde_json::json!({})
        }
        BmcCall::NextBoot(device) => {
            let device: BootDevice = device.parse()?;
            driver
                .set_next_boot(device)
                .await
                .map_err(|e| e.kind.to_string())?;
            serde_json::json!({})
        }
    };
    Ok(format!("{value}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::{Executors, RunContext};
    use std::os::unix::fs::PermissionsExt;

    fn task(password_file: &str) -> Task {
        Task::Bmc(BmcTask {
            node: "cn1".into(),
            protocol: "ipmi".into(),
            host: "127.0.0.1".into(),
            port: 1,
            user: "admin".into(),
            password_file: password_file.into(),
            scheme: String::new(),
            ca_file: None,
            insecure: false,
            system_id: None,
            timeout_ms: 1000,
            call: BmcCall::PowerState,
        })
    }

    fn run(gateway: bool, for_real: bool, t: Task) -> NodeResult {
        let executors = Executors::with(vec![std::sync::Arc::new(Bmc::new(&BmcGatewayConfig {
            gateway,
        }))]);
        let (ctx, _cancel) = RunContext::new(for_real, Duration::from_secs(5));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(executors.run(t, ctx))
    }

    #[test]
    fn a_node_that_is_not_a_gateway_refuses() {
        let r = run(false, true, task("/nonexistent"));
        assert!(!r.ok);
        assert_eq!(
            r.summary,
            "this node is not a BMC gateway: set [bmc] gateway = true in its agent.toml"
        );
    }

    #[test]
    fn a_password_file_others_can_read_is_refused_before_any_call() {
        let dir = std::env::temp_dir().join(format!("banyan-bmc-gw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let pw = dir.join("pw");
        std::fs::write(&pw, "secret\n").expect("write");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let r = run(true, true, task(pw.to_str().expect("UTF-8")));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!r.ok);
        assert!(
            r.summary.contains(pw.to_str().expect("UTF-8")) && r.summary.contains("0644"),
            "{}",
            r.summary
        );
    }

    #[test]
    fn a_dry_run_makes_no_change() {
        let mut t = task("/nonexistent");
        if let Task::Bmc(b) = &mut t {
            b.call = BmcCall::Reset("ForceOff".into());
        }
        let r = run(true, false, t);
        assert!(r.ok && r.dry_run, "{r:?}");
        assert!(r.summary.starts_with("would call"), "{}", r.summary);
    }
}

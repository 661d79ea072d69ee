//! The [`Bmc`] driver of a node whose BMC is reached through a *BMC gateway* agent: each call
//! is one order, sealed by the root, sent down the tree to that agent, which makes the call with
//! the ordinary drivers (`banyan_agent::actions::bmc`) and answers with a receipt sealed by its
//! node key. [`crate::power`] uses it exactly as it uses a local driver, so the whole power
//! sequence (graceful then forced, polling, the agent's state in the tree) is the root's
//! wherever the BMC is.
//!
//! Why this shape: the BMC network is often reachable only from a management node, and moving
//! the power logic there would split it in two places; a call is small and the tree answers in
//! milliseconds, so one order per call costs nothing next to a BMC's own seconds.
//!
//! What a caller sees: the gateway not up in the tree fails the call at once with that reason
//! (no order is sent into a void); a gateway that does not answer within the call's timeout
//! fails it with that reason; the BMC's own errors come back as the gateway's drivers word them,
//! with the gateway named. Passwords never travel: the task names the password file, which the
//! gateway reads (see [`crate::bmcconf`]).
//!
//! These orders belong to the power action that makes them: they are not separate actions in
//! the book or the audit log (the action is audited once, with its outcome per node).

use crate::bmcconf::BmcTarget;
use crate::daemon::lock;
use crate::http::Api;
use crate::http_actions::DELIVERY_WINDOW_MS;
use banyan_agent::bmc::{
    Bmc, BmcError, BmcFuture, BootDevice, CheckReport, Endpoint, ErrorKind, PowerState, ResetKind,
    Tls,
};
use banyan_protocol::action::{BmcCall, BmcTask, Order, Task};
use banyan_protocol::seal::Purpose;
use std::time::Duration;

/// Time given to an order to reach the gateway and its answer to come back, beyond the call's
/// own timeout.
const TREE_MARGIN: Duration = Duration::from_secs(5);

/// A node's BMC, reached through the agent `gateway`.
pub struct GatewayBmc {
    api: Api,
    endpoint: Endpoint,
    gateway: String,
    password_file: String,
    /// Who the power action is for (named in each order, for the gateway's log).
    who: String,
    /// Whether changes may be made (reads are made in a dry run too).
    for_real: bool,
}

impl GatewayBmc {
    /// The driver for `target` (which has a gateway), for an action of `who`.
    pub fn new(api: Api, target: &BmcTarget, who: &str, for_real: bool) -> Option<GatewayBmc> {
        Some(GatewayBmc {
            api,
            endpoint: target.endpoint.clone(),
            gateway: target.gateway.clone()?,
            password_file: target.password_file.to_string_lossy().into_owned(),
            who: who.to_string(),
            for_real,
        })
    }

    fn fail(&self, why: String) -> BmcError {
        BmcError {
            node: self.endpoint.node.clone(),
            address: self.endpoint.address(),
            kind: ErrorKind::Gateway(why),
        }
    }

    fn task(&self, call: BmcCall) -> BmcTask {
        let e = &self.endpoint;
        let (scheme, ca_file, insecure) = match &e.tls {
            Tls::Verify { ca_file } => {
                ("https", Some(ca_file.to_string_lossy().into_owned()), false)
            }
            Tls::Insecure => ("https", None, true),
            Tls::Plain => ("http", None, false),
        };
        BmcTask {
            node: e.node.clone(),
            protocol: e.protocol.as_str().to_string(),
            host: e.host.clone(),
            port: e.port,
            user: e.user.clone(),
            password_file: self.password_file.clone(),
            scheme: scheme.to_string(),
            ca_file,
            insecure,
            system_id: e.system_id.clone(),
            timeout_ms: u64::try_from(e.timeout.as_millis()).unwrap_or(u64::MAX),
            call,
        }
    }

    /// Makes `call` through the gateway; the JSON it answered.
    async fn call(&self, call: BmcCall) -> Result<serde_json::Value, BmcError> {
        let g = &self.gateway;
        let word = match crate::http::snapshot_of(&self.api).await {
            Ok(snap) => snap.word_of(g).unwrap_or("not in the tree"),
            Err(_) => "unknown (the root is stopping)",
        };
        if word != "up" {
            return Err(self.fail(format!(
                "its BMC gateway, the agent {g}, is {word}: start that agent (or power this node from elsewhere)"
            )));
        }
        let now = crate::http_actions::now_ms();
        let timeout = self.endpoint.timeout;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let id = format!("{:016x}", rand::random::<u64>());
        let order = Order {
            id: id.clone(),
            issued_ms: now,
            expires_ms: now + DELIVERY_WINDOW_MS,
            timeout_ms,
            for_real: self.for_real || !call.changes(),
            who: self.who.clone(),
            targets: g.clone(),
            task: Task::Bmc(self.task(call)),
        };
        let sealed = self
            .api
            .signer
            .seal(Purpose::Order, &order)
            .map_err(|e| self.fail(format!("cannot sign the order for gateway {g}: {e}")))?;
        let answer = lock(&self.api.root.actions).expect(&id, g);
        let wait = timeout + TREE_MARGIN;
        let deadline_ms = now + u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        if !self
            .api
            .root
            .start_action(id, vec![g.clone()], sealed, deadline_ms)
        {
            return Err(self.fail("the root is stopping".into()));
        }
        let no_answer = || {
            self.fail(format!(
                "no answer from its BMC gateway, the agent {g}, within {}s: is that agent up (`banyan nodes {g}`)?",
                wait.as_secs()
            ))
        };
        let result = match tokio::time::timeout(wait + Duration::from_secs(1), answer).await {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(e))) => return Err(self.fail(format!("through the gateway {g}: {e}"))),
            Ok(Err(_)) | Err(_) => return Err(no_answer()),
        };
        if !result.ok {
            return Err(self.fail(format!("{} (through the gateway {g})", result.summary)));
        }
        serde_json::from_str(result.stdout.trim()).map_err(|e| {
            self.fail(format!(
                "the gateway {g} answered something that is not a BMC call's result: {e}"
            ))
        })
    }
}

fn power_of(v: &serde_json::Value) -> Option<PowerState> {
    Some(match v.get("power")?.as_str()? {
        "On" => PowerState::On,
        "Off" => PowerState::Off,
        other => PowerState::Other(other.to_string()),
    })
}

impl Bmc for GatewayBmc {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn power_state(&self) -> BmcFuture<'_, PowerState> {
        Box::pin(async move {
            let v = self.call(BmcCall::PowerState).await?;
            power_of(&v)
                .ok_or_else(|| self.fail(format!("the gateway answered {v} for a power state")))
        })
    }

    fn reset(&self, kind: ResetKind) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            self.call(BmcCall::Reset(kind.as_str().to_string())).await?;
            Ok(())
        })
    }

    fn set_next_boot(&self, device: BootDevice) -> BmcFuture<'_, ()> {
        Box::pin(async move {
            self.call(BmcCall::NextBoot(device.as_str().to_string()))
                .await?;
            Ok(())
        })
    }

    fn check(&self) -> BmcFuture<'_, CheckReport> {
        Box::pin(async move {
            let v = self.call(BmcCall::Check).await?;
            let bad = || self.fail(format!("the gateway answered {v} for a check"));
            let power = power_of(&v).ok_or_else(bad)?;
            let system = v.get("system").and_then(|s| s.as_str()).ok_or_else(bad)?;
            let resets = v
                .get("resets")
                .and_then(|r| r.as_array())
                .ok_or_else(bad)?
                .iter()
                .filter_map(|k| k.as_str()?.parse().ok())
                .collect();
            Ok(CheckReport {
                system: system.to_string(),
                power,
                resets,
            })
        })
    }
}

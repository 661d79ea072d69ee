//! Planned departures: nodes whose agent leaves the tree because an operator said so (their
//! power cut by `banyan power off`, a reset or a cycle), told apart from nodes that fail.
//!
//! A power action plans the departure of each target just before it asks the BMC; the plan is
//! *armed* until the action's deadline. If the node's agent leaves the tree while it is armed,
//! the node is *off*: the API shows it as `off` (not `lost`, then `stale`, the words of a
//! failure), `/status` counts it apart, and it stays so however long it is away. When its agent
//! is back in the tree the plan is over, and a later loss is a failure again. A plan that
//! expires with the agent never gone (a wrong BMC mapping, a failed call) is dropped.
//!
//! What is not here: the tree's own handling of a departed node, which is the same whether it
//! was planned or not — its parent keeps the counters it reported, so the cluster's totals stay
//! exact while it is away and when it returns (see `agent::tree`). This is a plain state machine
//! fed with the node's liveness and the time; the daemon feeds it before each snapshot.

use std::collections::HashMap;

/// Plans kept at most: a power action on more nodes than this plans the first ones only (their
/// departures show as losses, as without plans).
pub const MAX_PLANS: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Plan {
    /// What the operator did, for the API (`power off by alice, action 0123...`).
    why: String,
    /// Until when the agent is expected to leave (ms, the root's clock).
    armed_until: u64,
    /// When it was seen gone, if it was.
    gone_since: Option<u64>,
}

/// The planned departures of the cluster's nodes.
#[derive(Debug, Default)]
pub struct Departures {
    plans: HashMap<String, Plan>,
}

impl Departures {
    /// `node` is about to leave on purpose (`why`), before `until`. A node already planned keeps
    /// the newest plan (a cycle after an off, say); one already gone stays gone.
    pub fn plan(&mut self, node: &str, why: String, until: u64) {
        if self.plans.len() >= MAX_PLANS && !self.plans.contains_key(node) {
            return;
        }
        let gone_since = self.plans.get(node).and_then(|p| p.gone_since);
        self.plans.insert(
            node.to_string(),
            Plan {
                why,
                armed_until: until,
                gone_since,
            },
        );
    }

    /// The change did not happen (the BMC call failed): an armed plan is dropped, so that a later
    /// loss is a failure. A node already gone stays departed.
    pub fn cancel(&mut self, node: &str) {
        if self.plans.get(node).is_some_and(|p| p.gone_since.is_none()) {
            self.plans.remove(node);
        }
    }

    /// What the tree says of `node` now: `live` when its agent is attached (or being placed).
    pub fn observe(&mut self, node: &str, live: bool, now: u64) {
        let Some(p) = self.plans.get_mut(node) else {
            return;
        };
        match (live, p.gone_since) {
            // Back in the tree after a planned departure: the plan is over.
            (true, Some(_)) => {
                self.plans.remove(node);
            }
            // Still there: armed until the deadline, then forgotten.
            (true, None) => {
                if now > p.armed_until {
                    self.plans.remove(node);
                }
            }
            (false, None) => {
                if now <= p.armed_until {
                    p.gone_since = Some(now);
                } else {
                    // Gone only after the plan expired: a failure like any other.
                    self.plans.remove(node);
                }
            }
            (false, Some(_)) => {}
        }
    }

    /// Why `node` is away, when it left as planned (and has not come back).
    pub fn departed(&self, node: &str) -> Option<&str> {
        self.plans
            .get(node)
            .filter(|p| p.gone_since.is_some())
            .map(|p| p.why.as_str())
    }

    /// Every node away by plan, with why.
    pub fn all_departed(&self) -> HashMap<String, String> {
        self.plans
            .iter()
            .filter(|(_, p)| p.gone_since.is_some())
            .map(|(n, p)| (n.clone(), p.why.clone()))
            .collect()
    }

    /// Nodes with a plan, armed or departed.
    pub fn planned(&self) -> impl Iterator<Item = &str> {
        self.plans.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planned_node_that_leaves_is_off_until_it_returns() {
        let mut d = Departures::default();
        d.plan("cn1", "power off by alice".into(), 1_000);
        d.observe("cn1", true, 100);
        assert_eq!(d.departed("cn1"), None, "still up: not departed yet");
        d.observe("cn1", false, 500);
        assert_eq!(d.departed("cn1"), Some("power off by alice"));
        // Long after the plan's deadline, it is still away by plan, not lost.
        d.observe("cn1", false, 1_000_000);
        assert_eq!(d.departed("cn1"), Some("power off by alice"));
        // Back: the plan is over, and a later loss is a failure.
        d.observe("cn1", true, 1_000_001);
        assert_eq!(d.departed("cn1"), None);
        d.observe("cn1", false, 1_000_002);
        assert_eq!(d.departed("cn1"), None);
        assert_eq!(d.planned().count(), 0);
    }

    #[test]
    fn a_plan_that_expires_before_the_node_leaves_is_dropped() {
        let mut d = Departures::default();
        d.plan("cn1", "power off".into(), 1_000);
        d.observe("cn1", true, 1_001);
        assert_eq!(d.planned().count(), 0, "expired while the node stayed up");
        d.plan("cn2", "power off".into(), 1_000);
        d.observe("cn2", false, 1_001);
        assert_eq!(
            d.departed("cn2"),
            None,
            "left after the deadline: a failure"
        );
        d.plan("cn3", "power off".into(), 1_000);
        d.cancel("cn3");
        d.observe("cn3", false, 10);
        assert_eq!(
            d.departed("cn3"),
            None,
            "the call failed: a later loss is a failure"
        );
    }

    #[test]
    fn unplanned_nodes_are_never_departed() {
        let mut d = Departures::default();
        d.observe("cn9", false, 10);
        assert_eq!(d.departed("cn9"), None);
        assert!(d.all_departed().is_empty());
    }

    #[test]
    fn a_new_plan_for_a_departed_node_keeps_it_departed() {
        let mut d = Departures::default();
        d.plan("cn1", "power off".into(), 1_000);
        d.observe("cn1", false, 10);
        d.plan("cn1", "power cycle".into(), 5_000);
        assert_eq!(d.departed("cn1"), Some("power cycle"));
        assert_eq!(
            d.all_departed(),
            HashMap::from([("cn1".to_string(), "power cycle".to_string())])
        );
    }
}

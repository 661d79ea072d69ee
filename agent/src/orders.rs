//! The node's gate for operator actions: which orders it carries out, and the receipts it signs.
//!
//! An order reaches a node through every node above it, and any of them may be hostile though
//! certified. So the node acts only on an order that the root sealed (checked with the cluster
//! CA's key, pinned at enrolment), that names this node among its targets, that has not expired,
//! and whose id it has not seen before (a relay cannot replay an old order). Everything else is
//! refused with a reason, in a receipt the node signs, so that the root can tell the operator why.
//!
//! Deterministic: time comes in as `now_ms`. The seen ids are kept until their order expires (plus
//! the clock skew allowed), so memory is bounded by the orders of the last minutes.

use banyan_protocol::action::{validate_order_id, NodeResult, Order, OutputLines, Receipt};
use banyan_protocol::console::{ConsoleInput, ConsoleOutput};
use banyan_protocol::nodeset::NodeSet;
use banyan_protocol::seal::{Purpose, Sealed, Signer, Verifier};
use std::collections::HashMap;

/// How far the root's clock may be ahead of this node's before an order looks issued in the
/// future. Clusters run NTP; this only has to absorb a bad clock, not make replays possible.
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// Longest an order may stay valid (from issue to expiry): a bound on the seen-id memory.
pub const MAX_VALIDITY_MS: u64 = 24 * 3600 * 1000;

pub struct OrderGate {
    name: String,
    root: Verifier,
    signer: Signer,
    /// Ids of admitted orders and when the id may be forgotten.
    seen: HashMap<String, u64>,
}

impl OrderGate {
    /// `ca_der` is the cluster CA this node pinned; `key_pem` its own node key.
    pub fn new(name: &str, ca_der: &[u8], key_pem: &str) -> Result<OrderGate, String> {
        Ok(OrderGate {
            name: name.to_string(),
            root: Verifier::from_cert(ca_der, "the root (cluster CA)")
                .map_err(|e| e.to_string())?,
            signer: Signer::from_pem(key_pem).map_err(|e| e.to_string())?,
            seen: HashMap::new(),
        })
    }

    /// Checks a sealed order. `Ok` means: carry it out. `Err` is the reason it was refused, for the
    /// receipt and the log; nothing may run then.
    pub fn admit(&mut self, sealed: &Sealed, now_ms: u64) -> Result<Order, String> {
        let order: Order = self
            .root
            .open(Purpose::Order, sealed)
            .map_err(|e| format!("order refused: {e}"))?;
        validate_order_id(&order.id).map_err(|e| format!("order refused: {e}"))?;
        let named = NodeSet::parse(&order.targets)
            .map(|set| set.contains(&self.name))
            .map_err(|e| format!("order {} refused: its targets do not parse: {e}", order.id))?;
        if !named {
            return Err(format!(
                "order {} refused: it does not name {} among its targets",
                order.id, self.name
            ));
        }
        if now_ms > order.expires_ms {
            return Err(format!(
                "order {} refused: it expired {} ms ago (delivered late, or replayed)",
                order.id,
                now_ms - order.expires_ms
            ));
        }
        if order.issued_ms > now_ms + MAX_SKEW_MS {
            return Err(format!(
                "order {} refused: issued {} ms in this node's future (check the clocks)",
                order.id,
                order.issued_ms - now_ms
            ));
        }
        if order.expires_ms.saturating_sub(order.issued_ms) > MAX_VALIDITY_MS {
            return Err(format!(
                "order {} refused: valid for longer than a day",
                order.id
            ));
        }
        self.seen.retain(|_, until| *until >= now_ms);
        if self.seen.contains_key(&order.id) {
            return Err(format!(
                "order {} refused: this node has already received it (replayed)",
                order.id
            ));
        }
        self.seen
            .insert(order.id.clone(), order.expires_ms + MAX_SKEW_MS);
        Ok(order)
    }

    /// Signs this node's result for an order.
    /// Signs lines a running order printed (their node is this node, whatever they say).
    pub fn seal_output(&self, mut lines: OutputLines) -> Result<Sealed, String> {
        lines.node = self.name.clone();
        self.signer
            .seal(Purpose::Output, &lines)
            .map_err(|e| e.to_string())
    }

    /// Checks keys for a console session: sealed by the root, well formed, for this node. Whether
    /// they name a live session of this node, in order, is the caller's check (it holds them).
    pub fn open_console_input(&self, sealed: &Sealed) -> Result<ConsoleInput, String> {
        let input: ConsoleInput = self
            .root
            .open(Purpose::ConsoleInput, sealed)
            .map_err(|e| format!("console input refused: {e}"))?;
        input
            .validate()
            .map_err(|e| format!("console input refused: {e}"))?;
        if input.node != self.name {
            return Err(format!(
                "console input refused: it is for {}, not {}",
                input.node, self.name
            ));
        }
        Ok(input)
    }

    /// Signs what a guest printed on a console session of this node.
    pub fn seal_console(&self, mut output: ConsoleOutput) -> Result<Sealed, String> {
        output.node = self.name.clone();
        self.signer
            .seal(Purpose::ConsoleOutput, &output)
            .map_err(|e| e.to_string())
    }

    pub fn receipt(&self, order_id: &str, result: NodeResult) -> Result<Sealed, String> {
        self.signer
            .seal(
                Purpose::Receipt,
                &Receipt {
                    order: order_id.to_string(),
                    node: self.name.clone(),
                    result,
                },
            )
            .map_err(|e| e.to_string())
    }

    /// How many order ids are remembered (for tests and logs).
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }
}

/// The id of a sealed order without checking it, to name it in a refusal. Never trusted.
pub fn claimed_id(sealed: &Sealed) -> String {
    postcard::from_bytes::<Order>(&sealed.payload)
        .ok()
        .map(|o| o.id)
        .filter(|id| validate_order_id(id).is_ok())
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use banyan_protocol::action::{ExecTask, Task};
    use banyan_protocol::identity::{ClusterCa, NodeKey};

    struct Fixture {
        ca: ClusterCa,
        root: Signer,
        gate: OrderGate,
        node_key: NodeKey,
    }

    fn fixture() -> Fixture {
        let ca = ClusterCa::generate().unwrap();
        let node_key = NodeKey::generate().unwrap();
        let gate = OrderGate::new("cn2", &ca.cert_der(), &node_key.pem()).unwrap();
        Fixture {
            root: Signer::from_pem(&ca.key_pem()).unwrap(),
            ca,
            gate,
            node_key,
        }
    }

    fn order(id: &str, targets: &[&str]) -> Order {
        Order {
            id: id.into(),
            issued_ms: 1_000,
            expires_ms: 61_000,
            timeout_ms: 10_000,
            for_real: true,
            who: "admin".into(),
            targets: NodeSet::from_names(targets.iter().copied()).fold(),
            task: Task::Exec(ExecTask {
                argv: vec!["true".into()],
                shell: false,
                user: None,
                max_output: 1024,
                stream: false,
            }),
        }
    }

    const ID: &str = "00000000000000aa";

    #[test]
    fn a_sealed_order_naming_the_node_is_admitted_once() {
        let mut f = fixture();
        let sealed = f
            .root
            .seal(Purpose::Order, &order(ID, &["cn1", "cn2"]))
            .unwrap();
        assert_eq!(f.gate.admit(&sealed, 2_000).unwrap().id, ID);
        let again = f.gate.admit(&sealed, 2_500).unwrap_err();
        assert!(again.contains("already received"), "{again}");
    }

    #[test]
    fn orders_for_others_expired_or_not_from_the_root_are_refused() {
        let mut f = fixture();
        let other = f
            .root
            .seal(Purpose::Order, &order(ID, &["cn1", "cn3"]))
            .unwrap();
        assert!(f
            .gate
            .admit(&other, 2_000)
            .unwrap_err()
            .contains("does not name cn2"));

        let late = f.root.seal(Purpose::Order, &order(ID, &["cn2"])).unwrap();
        assert!(f.gate.admit(&late, 61_001).unwrap_err().contains("expired"));

        // A certified node's own key is not the root's.
        let forger = Signer::from_pem(&NodeKey::generate().unwrap().pem()).unwrap();
        let forged = forger.seal(Purpose::Order, &order(ID, &["cn2"])).unwrap();
        assert!(f
            .gate
            .admit(&forged, 2_000)
            .unwrap_err()
            .contains("signature"));

        // Altered targets: the seal no longer verifies.
        let mut altered = f.root.seal(Purpose::Order, &order(ID, &["cn1"])).unwrap();
        let mut o: Order = postcard::from_bytes(&altered.payload).unwrap();
        o.targets = "cn2".into();
        altered.payload = postcard::to_stdvec(&o).unwrap();
        assert!(f
            .gate
            .admit(&altered, 2_000)
            .unwrap_err()
            .contains("signature"));
        assert_eq!(claimed_id(&altered), ID);
        assert_eq!(f.gate.remembered(), 0);
    }

    #[test]
    fn seen_ids_are_forgotten_only_after_their_order_expired() {
        let mut f = fixture();
        let a = f.root.seal(Purpose::Order, &order(ID, &["cn2"])).unwrap();
        f.gate.admit(&a, 2_000).unwrap();
        let b = f
            .root
            .seal(Purpose::Order, &order("00000000000000bb", &["cn2"]))
            .unwrap();
        f.gate.admit(&b, 60_000 + MAX_SKEW_MS).ok();
        assert_eq!(
            f.gate.remembered(),
            1,
            "the first id is past its expiry and skew"
        );
    }

    #[test]
    fn receipts_verify_with_the_node_certificate_only() {
        let f = fixture();
        let sealed = f.gate.receipt(ID, NodeResult::refused("x")).unwrap();
        let cert =
            f.ca.sign_csr(&f.node_key.csr_der("cn2").unwrap(), "cn2")
                .unwrap();
        let r: Receipt = Verifier::from_cert(&cert, "cn2")
            .unwrap()
            .open(Purpose::Receipt, &sealed)
            .unwrap();
        assert_eq!((r.order.as_str(), r.node.as_str()), (ID, "cn2"));
        let ca = Verifier::from_cert(&f.ca.cert_der(), "ca").unwrap();
        assert!(ca.open::<Receipt>(Purpose::Receipt, &sealed).is_err());
    }
}

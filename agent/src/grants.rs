//! Checking the root's placement grants against the cluster CA, for [`crate::tree::Node`].
//!
//! Every node of a subtree travels up with the root's seal over its placement
//! ([`banyan_protocol::wire::Grant`]); each ancestor checks it before believing that the node is
//! below the child that claims it. A subtree re-attaching after a heal brings all its members
//! again, and the same grants reach every ancestor, so verified grants are remembered: a
//! signature is checked once per node and placement, not once per message.
//!
//! What it is not: it does not decide where a member hangs (the tree does), and it holds no key
//! that can sign.

use crate::tree::GrantCheck;
use banyan_protocol::seal::{Purpose, Sealed, Verifier};
use banyan_protocol::wire::{Grant, Member};
use std::collections::HashMap;
use std::sync::Mutex;

/// Verified grants remembered at most; past that the memory starts again (a cluster of that
/// many placements in flight is far beyond what one tree holds).
const REMEMBERED: usize = 1 << 18;

/// Checks grants with the cluster CA's key (the key the root signs with).
pub struct GrantVerifier {
    ca: Verifier,
    /// `(node, generation)` -> the grant (payload and signature) that verified for it.
    verified: Mutex<HashMap<(String, u64), Sealed>>,
}

impl GrantVerifier {
    /// `ca_der` is the cluster CA's certificate as this node pinned it.
    pub fn new(ca_der: &[u8]) -> Result<GrantVerifier, String> {
        Ok(GrantVerifier {
            ca: Verifier::from_cert(ca_der, "the root (cluster CA)").map_err(|e| e.to_string())?,
            verified: Mutex::new(HashMap::new()),
        })
    }

    fn remembered(&self, member: &Member) -> bool {
        let verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        verified
            .get(&(member.name.clone(), member.gen))
            .is_some_and(|sealed| *sealed == member.grant)
    }

    fn remember(&self, member: &Member) {
        let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if verified.len() >= REMEMBERED {
            verified.clear();
        }
        verified.insert((member.name.clone(), member.gen), member.grant.clone());
    }
}

impl GrantCheck for GrantVerifier {
    fn check(&self, member: &Member) -> Result<(), String> {
        if member.grant.payload.is_empty() {
            return Err(format!("no placement grant for {}", member.name));
        }
        // A remembered grant is the very bytes that verified; its content is compared with the
        // member all the same.
        let granted: Grant = if self.remembered(member) {
            postcard::from_bytes(&member.grant.payload).map_err(|e| {
                format!(
                    "the placement grant of {} does not decode: {e}",
                    member.name
                )
            })?
        } else {
            self.ca
                .open(Purpose::Placement, &member.grant)
                .map_err(|e| {
                    format!(
                        "the placement grant of {} is not the root's: {e}",
                        member.name
                    )
                })?
        };
        if granted != Grant::of(member) {
            return Err(format!(
                "the root placed {} under {} (generation {}), not under {} (generation {})",
                granted.node, granted.parent, granted.gen, member.parent, member.gen
            ));
        }
        self.remember(member);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banyan_protocol::identity::{ClusterCa, NodeKey};
    use banyan_protocol::seal::Signer;

    fn member(name: &str, parent: &str, gen: u64, grant: Sealed) -> Member {
        Member {
            name: name.into(),
            parent: parent.into(),
            addr: format!("{name}:1337"),
            gen,
            grant,
        }
    }

    fn grant(signer: &Signer, name: &str, parent: &str, gen: u64) -> Sealed {
        signer
            .seal(
                Purpose::Placement,
                &Grant {
                    node: name.into(),
                    addr: format!("{name}:1337"),
                    parent: parent.into(),
                    gen,
                },
            )
            .unwrap()
    }

    #[test]
    fn a_grant_checks_only_for_the_placement_the_root_signed() {
        let ca = ClusterCa::generate().unwrap();
        let root = Signer::from_pem(&ca.key_pem()).unwrap();
        let v = GrantVerifier::new(&ca.cert_der()).unwrap();
        let g = grant(&root, "cn2", "cn1", 5);
        assert_eq!(v.check(&member("cn2", "cn1", 5, g.clone())), Ok(()));
        // Twice: the second time from memory, with the same answer.
        assert_eq!(v.check(&member("cn2", "cn1", 5, g.clone())), Ok(()));

        let elsewhere = v
            .check(&member("cn2", "mallory", 5, g.clone()))
            .unwrap_err();
        assert!(elsewhere.contains("under cn1"), "{elsewhere}");
        let other_gen = v.check(&member("cn2", "cn1", 6, g.clone()));
        assert!(other_gen.is_err(), "{other_gen:?}");
        let other_node = v.check(&member("cn3", "cn1", 5, g.clone()));
        assert!(other_node.is_err(), "{other_node:?}");
        let mut moved = member("cn2", "cn1", 5, g);
        moved.addr = "10.9.9.9:1337".into();
        assert!(v.check(&moved).is_err(), "another address passed");

        let unsigned = v
            .check(&member("cn2", "cn1", 5, Sealed::default()))
            .unwrap_err();
        assert!(unsigned.contains("no placement grant"), "{unsigned}");
        let mallory = Signer::from_pem(&NodeKey::generate().unwrap().pem()).unwrap();
        let forged = v
            .check(&member("cn2", "cn1", 5, grant(&mallory, "cn2", "cn1", 5)))
            .unwrap_err();
        assert!(forged.contains("not the root's"), "{forged}");
    }

    #[test]
    fn a_remembered_signature_does_not_vouch_for_another_payload() {
        let ca = ClusterCa::generate().unwrap();
        let root = Signer::from_pem(&ca.key_pem()).unwrap();
        let v = GrantVerifier::new(&ca.cert_der()).unwrap();
        let g = grant(&root, "cn2", "cn1", 5);
        assert_eq!(v.check(&member("cn2", "cn1", 5, g.clone())), Ok(()));
        // The same signature beside a payload that places cn2 under mallory.
        let mut swapped = grant(&root, "cn2", "mallory", 5);
        swapped.sig = g.sig.clone();
        assert!(v.check(&member("cn2", "mallory", 5, swapped)).is_err());
    }
}

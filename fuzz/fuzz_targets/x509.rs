//! What a joining node sends to be certified: a CSR (DER) the root's CA signs for a name, and the
//! certificate a peer presents (its name read from the SAN). No panic; a signed certificate names
//! the node.
#![no_main]

use banyan_protocol::identity::{peer_name, ClusterCa};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| ClusterCa::generate().expect("a CA"))
}

fuzz_target!(|data: &[u8]| {
    let _ = peer_name(data);
    if let Ok(cert) = ca().sign_csr(data, "cn1") {
        assert_eq!(peer_name(&cert).ok().as_deref(), Some("cn1"));
    }
});

//! End-to-end signatures inside the tree: what the root signs (actions, placements) and what a
//! target signs (its answer), so that an inner node can relay them but neither forge nor alter them.
//!
//! Links are authenticated hop by hop by mutual TLS; that proves who the *neighbour* is, not who
//! wrote a message it relays. A [`Sealed`] value carries its postcard bytes and an ECDSA P-256
//! signature over them, prefixed with a [`Purpose`] so that a signature made for one kind of
//! message can never be replayed as another. The root signs with the cluster CA's key: every agent
//! already pins the CA (through the join token's fingerprint), so no other key has to be learned
//! or distributed. A node signs with its node key; the root checks it against the certificate it
//! issued for that name.
//!
//! What it is not: it does not decide *whether* to act on a valid signature (expiry, replay and
//! target checks live with the executing side), and it keeps no state.

use rcgen::{KeyPair, SigningKey};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// What a signature is for. Part of the signed bytes: a signature for one purpose does not verify
/// for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// An action order from the root ([`crate::action::Order`]).
    Order,
    /// A target's answer to an order ([`crate::action::Receipt`]).
    Receipt,
    /// A placement of a node in the tree, from the root.
    Placement,
    /// Lines a target printed while an order runs ([`crate::action::OutputLines`]).
    Output,
    /// Keys for a guest's console session, from the root ([`crate::console::ConsoleInput`]).
    ConsoleInput,
    /// What a guest printed on its console, from its host ([`crate::console::ConsoleOutput`]).
    ConsoleOutput,
}

impl Purpose {
    fn context(self) -> &'static [u8] {
        match self {
            Purpose::Order => b"banyan order v1\0",
            Purpose::Receipt => b"banyan receipt v1\0",
            Purpose::Placement => b"banyan placement v1\0",
            Purpose::Output => b"banyan output v1\0",
            Purpose::ConsoleInput => b"banyan console input v1\0",
            Purpose::ConsoleOutput => b"banyan console output v1\0",
        }
    }
}

/// What went wrong with a seal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("signature does not verify (altered, or not signed by {signer})")]
    BadSignature { signer: String },
    #[error("certificate of {what} cannot be read: {detail}")]
    BadCertificate { what: String, detail: String },
    #[error("signed content does not decode: {0}")]
    Decode(String),
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// A value and the signature over its encoding. The bytes are what was signed: the receiver
/// verifies them before decoding anything. The default (both empty) is *unsigned*: what the
/// simulator and unit tests carry, and what no verifier accepts.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Default)]
pub struct Sealed {
    pub payload: Vec<u8>,
    pub sig: Vec<u8>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Sealed({} bytes, {} byte signature)",
            self.payload.len(),
            self.sig.len()
        )
    }
}

/// Something that can sign: the CA's key at the root, a node's key on an agent.
pub struct Signer {
    key: KeyPair,
}

impl Signer {
    /// A signer from a PKCS#8 PEM private key (the CA's or a node's, as stored in state dirs).
    pub fn from_pem(pem: &str) -> Result<Signer, SealError> {
        KeyPair::from_pem(pem)
            .map(|key| Signer { key })
            .map_err(|e| SealError::Sign(format!("the private key does not parse: {e}")))
    }

    /// Signs `value` for `purpose`.
    pub fn seal<T: Serialize>(&self, purpose: Purpose, value: &T) -> Result<Sealed, SealError> {
        let payload = postcard::to_stdvec(value).map_err(|e| SealError::Sign(e.to_string()))?;
        let sig = self
            .key
            .sign(&signed_bytes(purpose, &payload))
            .map_err(|e| SealError::Sign(e.to_string()))?;
        Ok(Sealed { payload, sig })
    }

    /// The raw public key (uncompressed point), as [`Verifier::from_raw`] takes it.
    pub fn public_key_raw(&self) -> &[u8] {
        self.key.public_key_raw()
    }
}

/// Checks seals made by one key.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    /// Uncompressed P-256 point.
    key: Vec<u8>,
    /// Who holds the key, for errors.
    who: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Verifier({})", self.who)
    }
}

impl Verifier {
    /// The key of a certificate (DER): the CA's, to check the root's seals, or a node's.
    pub fn from_cert(cert_der: &[u8], who: &str) -> Result<Verifier, SealError> {
        let (_, cert) = x509_parser::parse_x509_certificate(cert_der).map_err(|e| {
            SealError::BadCertificate {
                what: who.to_string(),
                detail: e.to_string(),
            }
        })?;
        Ok(Verifier {
            key: cert.public_key().subject_public_key.data.to_vec(),
            who: who.to_string(),
        })
    }

    pub fn from_raw(key: &[u8], who: &str) -> Verifier {
        Verifier {
            key: key.to_vec(),
            who: who.to_string(),
        }
    }

    /// Checks the signature, then decodes the payload.
    pub fn open<T: DeserializeOwned>(
        &self,
        purpose: Purpose,
        sealed: &Sealed,
    ) -> Result<T, SealError> {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.key)
            .verify(&signed_bytes(purpose, &sealed.payload), &sealed.sig)
            .map_err(|_| SealError::BadSignature {
                signer: self.who.clone(),
            })?;
        postcard::from_bytes(&sealed.payload).map_err(|e| SealError::Decode(e.to_string()))
    }
}

fn signed_bytes(purpose: Purpose, payload: &[u8]) -> Vec<u8> {
    let ctx = purpose.context();
    let mut v = Vec::with_capacity(ctx.len() + payload.len());
    v.extend_from_slice(ctx);
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{ClusterCa, NodeKey};

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Note {
        text: String,
        n: u32,
    }

    fn note() -> Note {
        Note {
            text: "hello".into(),
            n: 7,
        }
    }

    #[test]
    fn a_seal_opens_with_the_signers_certificate() {
        let ca = ClusterCa::generate().unwrap();
        let signer = Signer::from_pem(&ca.key_pem()).unwrap();
        let sealed = signer.seal(Purpose::Order, &note()).unwrap();
        let v = Verifier::from_cert(&ca.cert_der(), "the cluster CA").unwrap();
        assert_eq!(v.open::<Note>(Purpose::Order, &sealed).unwrap(), note());
    }

    #[test]
    fn an_altered_payload_or_another_purpose_or_another_key_is_refused() {
        let ca = ClusterCa::generate().unwrap();
        let signer = Signer::from_pem(&ca.key_pem()).unwrap();
        let v = Verifier::from_cert(&ca.cert_der(), "the cluster CA").unwrap();
        let sealed = signer.seal(Purpose::Order, &note()).unwrap();

        let mut altered = sealed.clone();
        let last = altered.payload.len() - 1;
        altered.payload[last] ^= 1;
        assert!(matches!(
            v.open::<Note>(Purpose::Order, &altered),
            Err(SealError::BadSignature { .. })
        ));
        assert!(matches!(
            v.open::<Note>(Purpose::Receipt, &sealed),
            Err(SealError::BadSignature { .. })
        ));

        let node = NodeKey::generate().unwrap();
        let other = Signer::from_pem(&node.pem()).unwrap();
        let forged = other.seal(Purpose::Order, &note()).unwrap();
        assert!(matches!(
            v.open::<Note>(Purpose::Order, &forged),
            Err(SealError::BadSignature { .. })
        ));
        let own = Verifier::from_raw(other.public_key_raw(), "cn1");
        assert_eq!(own.open::<Note>(Purpose::Order, &forged).unwrap(), note());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let ca = ClusterCa::generate().unwrap();
        let v = Verifier::from_cert(&ca.cert_der(), "the cluster CA").unwrap();
        let junk = Sealed {
            payload: vec![0xff; 40],
            sig: vec![1, 2, 3],
        };
        assert!(v.open::<Note>(Purpose::Order, &junk).is_err());
        assert!(Verifier::from_cert(b"not a cert", "x").is_err());
    }
}

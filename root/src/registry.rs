//! The nodes' certificates as the root issued them: one live certificate per name.
//!
//! Enrolment with the join token used to hand out a certificate to whoever asked for a name, so a
//! second machine could take a name that was in use. The registry closes that: a name holds one
//! certificate (by fingerprint) until an admin forgets it (`banyan node forget NAME`), and a node
//! that presents another certificate for the name, at enrolment or when it asks for a place, is
//! refused. It also gives the root the public key that checks a node's signed answers
//! ([`crate::actions`]), so that an inner node cannot forge them.
//!
//! Nodes enrolled before the registry existed are learned from the certificate they present when
//! they next join (their certificate chains to the CA; nothing else holds the name yet).
//!
//! Kept in `<state-dir>/nodes.json` (owner-only), rewritten atomically on every change; changes are
//! rare (enrolments, forgets).

use banyan_protocol::identity::{fingerprint, fingerprint_hex};
use banyan_protocol::seal::Verifier;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One node's certificate.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NodeCert {
    /// SHA-256 of the certificate (hex).
    pub fingerprint: String,
    /// The certificate itself (DER, hex): the root checks the node's signatures with its key.
    pub cert: String,
    /// When the root issued it or first saw it (ms since the Unix epoch).
    pub since_ms: u64,
}

/// Why a certificate is refused for a name.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error("the name {name} already has a certificate (since {since_ms} ms after the epoch); if the old node is gone for good, run `banyan node forget {name}` on the root, then enrol again")]
    NameTaken { name: String, since_ms: u64 },
    #[error("this certificate for {name} is not the one the root holds for that name (it was replaced or forgotten); enrol again with the join token")]
    NotCurrent { name: String },
    #[error("cannot keep the node registry {path}: {detail}")]
    Io { path: String, detail: String },
}

#[derive(Serialize, Deserialize, Default)]
struct File {
    nodes: BTreeMap<String, NodeCert>,
}

pub struct Registry {
    path: Option<PathBuf>,
    nodes: BTreeMap<String, NodeCert>,
    /// Verifiers made from the certificates, by name (parsing a certificate per answer would cost
    /// more than checking the signature).
    verifiers: BTreeMap<String, Verifier>,
}

impl Registry {
    /// Opens `<dir>/nodes.json` (absent: empty). A file that does not parse is an error: losing
    /// it would let a second machine take a name.
    pub fn open(dir: Option<&Path>) -> Result<Registry, RegistryError> {
        let path = dir.map(|d| d.join("nodes.json"));
        let mut reg = Registry {
            path: path.clone(),
            nodes: BTreeMap::new(),
            verifiers: BTreeMap::new(),
        };
        let Some(path) = path else { return Ok(reg) };
        let io = |detail: String| RegistryError::Io {
            path: path.display().to_string(),
            detail,
        };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let f: File = serde_json::from_slice(&bytes)
                    .map_err(|e| io(format!("it does not parse ({e}); fix or remove it")))?;
                reg.nodes = f.nodes;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e.to_string())),
        }
        Ok(reg)
    }

    /// Whether a new certificate may be issued for `name`.
    pub fn may_enrol(&self, name: &str) -> Result<(), RegistryError> {
        match self.nodes.get(name) {
            Some(c) => Err(RegistryError::NameTaken {
                name: name.to_string(),
                since_ms: c.since_ms,
            }),
            None => Ok(()),
        }
    }

    /// Records a certificate just issued for `name`.
    pub fn issued(
        &mut self,
        name: &str,
        cert_der: &[u8],
        now_ms: u64,
    ) -> Result<(), RegistryError> {
        self.may_enrol(name)?;
        self.insert(name, cert_der, now_ms);
        self.save()
    }

    /// Checks the certificate a node presents (when it asks for a place or attaches to the root):
    /// it must be the name's current one. A name the registry does not hold yet (enrolled before
    /// it existed) is learned from it.
    pub fn check_presented(
        &mut self,
        name: &str,
        cert_der: &[u8],
        now_ms: u64,
    ) -> Result<(), RegistryError> {
        let fp = fingerprint_hex(&fingerprint(cert_der));
        match self.nodes.get(name) {
            Some(c) if c.fingerprint == fp => Ok(()),
            Some(_) => Err(RegistryError::NotCurrent {
                name: name.to_string(),
            }),
            None => {
                self.insert(name, cert_der, now_ms);
                self.save()
            }
        }
    }

    /// Forgets `name`'s certificate: it can no longer join, and the name may be enrolled again.
    /// Answers whether the name was known.
    pub fn forget(&mut self, name: &str) -> Result<bool, RegistryError> {
        let known = self.nodes.remove(name).is_some();
        self.verifiers.remove(name);
        if known {
            self.save()?;
        }
        Ok(known)
    }

    /// The key that checks `name`'s signed answers.
    pub fn verifier(&mut self, name: &str) -> Option<&Verifier> {
        if !self.verifiers.contains_key(name) {
            let cert = hex::decode(&self.nodes.get(name)?.cert).ok()?;
            let v = Verifier::from_cert(&cert, name).ok()?;
            self.verifiers.insert(name.to_string(), v);
        }
        self.verifiers.get(name)
    }

    pub fn get(&self, name: &str) -> Option<&NodeCert> {
        self.nodes.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    fn insert(&mut self, name: &str, cert_der: &[u8], now_ms: u64) {
        self.verifiers.remove(name);
        self.nodes.insert(
            name.to_string(),
            NodeCert {
                fingerprint: fingerprint_hex(&fingerprint(cert_der)),
                cert: hex::encode(cert_der),
                since_ms: now_ms,
            },
        );
    }

    fn save(&self) -> Result<(), RegistryError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let body = serde_json::to_vec_pretty(&File {
            nodes: self.nodes.clone(),
        })
        .map_err(|e| RegistryError::Io {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
        crate::state::write_private_atomically(path, &body).map_err(|e| RegistryError::Io {
            path: path.display().to_string(),
            detail: e,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banyan_protocol::identity::{ClusterCa, NodeKey};

    fn cert(ca: &ClusterCa, name: &str) -> Vec<u8> {
        let key = NodeKey::generate().unwrap();
        ca.sign_csr(&key.csr_der(name).unwrap(), name).unwrap()
    }

    #[test]
    fn a_name_holds_one_certificate_until_it_is_forgotten() {
        let dir = tempdir();
        let ca = ClusterCa::generate().unwrap();
        let (first, second) = (cert(&ca, "cn1"), cert(&ca, "cn1"));
        let mut reg = Registry::open(Some(&dir)).unwrap();
        reg.issued("cn1", &first, 1).unwrap();
        assert!(matches!(
            reg.may_enrol("cn1"),
            Err(RegistryError::NameTaken { .. })
        ));
        // Kept across a restart of the root.
        let mut reg = Registry::open(Some(&dir)).unwrap();
        assert!(reg.check_presented("cn1", &first, 2).is_ok());
        assert_eq!(
            reg.check_presented("cn1", &second, 2),
            Err(RegistryError::NotCurrent { name: "cn1".into() })
        );
        assert!(reg.forget("cn1").unwrap());
        assert!(!reg.forget("cn1").unwrap());
        // The old certificate no longer joins once another is issued.
        reg.issued("cn1", &second, 3).unwrap();
        assert!(reg.check_presented("cn1", &first, 4).is_err());
        assert!(reg.check_presented("cn1", &second, 4).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_node_enrolled_before_the_registry_is_learned_when_it_joins() {
        let ca = ClusterCa::generate().unwrap();
        let c = cert(&ca, "cn2");
        let mut reg = Registry::open(None).unwrap();
        reg.check_presented("cn2", &c, 5).unwrap();
        assert_eq!(reg.get("cn2").unwrap().since_ms, 5);
        assert!(reg.verifier("cn2").is_some());
        assert!(reg.verifier("cn3").is_none());
    }

    #[test]
    fn a_broken_registry_file_is_an_error_not_an_empty_registry() {
        let dir = tempdir();
        std::fs::write(dir.join("nodes.json"), b"{not json").unwrap();
        let err = Registry::open(Some(&dir)).err().unwrap();
        assert!(err.to_string().contains("does not parse"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "banyan-registry-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

//! How an agent gets its node certificate: from its state dir, or by enrolling with the root.
//!
//! Enrolment pins the cluster CA by the fingerprint in the join token (no trust on first use),
//! sends a certificate request for the node's name with the token's secret, and keeps the signed
//! certificate, its key and the CA in the state dir when one is given.

use crate::transport::{self, close, Framed, LinkError};
use banyan_protocol::identity::{self, Identity, JoinToken, NodeKey};
use banyan_protocol::wire::{Msg, ROOT_NAME};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The root (or the TLS handshake) said no: wrong secret, foreign CA, bad name. Not retried.
    #[error("enrolment refused: {0}")]
    Refused(String),
    /// The root could not be reached or the link broke. Worth retrying.
    #[error("{0}")]
    Network(String),
    /// Local trouble: state dir unreadable, no token.
    #[error("{0}")]
    Local(String),
}

const CERT: &str = "node.crt";
const KEY: &str = "node.key";
const CA: &str = "ca.crt";

/// The identity kept in `state_dir`, if it is there, is for `name`, and (when a token is given)
/// chains to the token's CA.
pub fn load(
    state_dir: &Path,
    name: &str,
    token: Option<&JoinToken>,
) -> Result<Option<Identity>, EnrolError> {
    let paths = [
        state_dir.join(CERT),
        state_dir.join(KEY),
        state_dir.join(CA),
    ];
    if !paths.iter().all(|p| p.exists()) {
        return Ok(None);
    }
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p)
            .map_err(|e| EnrolError::Local(format!("cannot read {}: {e}", p.display())))
    };
    let id = Identity::from_pem_files(&read(&paths[0])?, &read(&paths[1])?, &read(&paths[2])?)
        .map_err(|e| {
            EnrolError::Local(format!(
                "identity in {} is unusable: {e}",
                state_dir.display()
            ))
        })?;
    let id_name = id
        .name()
        .map_err(|e| EnrolError::Local(format!("identity in {}: {e}", state_dir.display())))?;
    if id_name != name {
        return Ok(None);
    }
    if let Some(t) = token {
        if identity::fingerprint(&id.ca_der) != t.ca_fingerprint {
            return Ok(None);
        }
    }
    Ok(Some(id))
}

/// Saves an identity in `state_dir` (key readable by the owner only).
pub fn save(state_dir: &Path, id: &Identity) -> Result<(), EnrolError> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| EnrolError::Local(format!("cannot create {}: {e}", state_dir.display())))?;
    let (cert, key, ca) = id.to_pem_files();
    write_private(&state_dir.join(KEY), &key)?;
    write_file(&state_dir.join(CERT), &cert)?;
    write_file(&state_dir.join(CA), &ca)?;
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<(), EnrolError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| EnrolError::Local(format!("cannot write {}: {e}", path.display())))
}

/// Writes a secret file, mode 0600 from the start.
pub fn write_private(path: &Path, text: &str) -> Result<(), EnrolError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|_| std::fs::rename(&tmp, path));
    result.map_err(|e| EnrolError::Local(format!("cannot write {}: {e}", path.display())))
}

/// Enrols `name` with the root at `root` using `token`.
pub async fn enrol(
    root: SocketAddr,
    token: &JoinToken,
    name: &str,
) -> Result<Identity, EnrolError> {
    let key = NodeKey::generate().map_err(|e| EnrolError::Local(e.to_string()))?;
    let csr = key
        .csr_der(name)
        .map_err(|e| EnrolError::Refused(format!("{e}")))?;
    let config = identity::enrol_client_config(token.ca_fingerprint)
        .map_err(|e| EnrolError::Local(e.to_string()))?;
    let ep = transport::client_endpoint(config).map_err(|e| EnrolError::Local(e.to_string()))?;
    let result = async {
        let conn = transport::connect(&ep, root, ROOT_NAME, None)
            .await
            .map_err(classify)?;
        let mut f = Framed::open(&conn, ROOT_NAME).await.map_err(classify)?;
        f.send(&Msg::Enrol {
            name: name.to_string(),
            secret: token.secret.clone(),
            csr_der: csr,
        })
        .await
        .map_err(classify)?;
        let reply = f.recv().await.map_err(classify)?;
        let chain = conn.peer_identity().and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        });
        transport::refuse(&conn, close::DONE, "enrolled");
        match reply {
            Some(Msg::Enrolled { cert_der }) => {
                let ca = chain
                    .and_then(|c| identity::ca_from_presented_chain(&c, token.ca_fingerprint))
                    .ok_or_else(|| {
                        EnrolError::Refused("the root did not present the token's CA".into())
                    })?;
                let id = Identity::from_parts(cert_der, &key, ca);
                id.check().map_err(|e| {
                    EnrolError::Refused(format!("the root's certificate for us is unusable: {e}"))
                })?;
                Ok(id)
            }
            Some(Msg::Refused { reason }) => Err(EnrolError::Refused(reason)),
            Some(other) => Err(EnrolError::Network(format!(
                "the root answered an enrolment with {}",
                other.kind()
            ))),
            None => Err(EnrolError::Network(
                "the root closed the enrolment stream".into(),
            )),
        }
    }
    .await;
    ep.close(0u32.into(), b"");
    result
}

fn classify(e: LinkError) -> EnrolError {
    if e.is_auth_refusal() {
        EnrolError::Refused(match e {
            LinkError::Refused { reason, .. } => reason,
            other => format!(
                "{other} (is the token from this cluster? its CA fingerprint must match the root's CA)"
            ),
        })
    } else {
        EnrolError::Network(e.to_string())
    }
}

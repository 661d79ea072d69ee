//! The cluster's TLS identities: the cluster CA that the root creates on its first start, the join
//! token that lets an agent enrol (the CA's fingerprint, pinned by the agent, and a secret, checked by
//! the root), node certificates issued from an agent's certificate signing request, and the rustls
//! configurations of the mesh (TLS 1.3 only, mutual TLS, ALPN [`crate::wire::ALPN`], the *ring*
//! provider passed explicitly, never a process-wide default). kubeadm/k3s join tokens are the model.
//!
//! What it is not: it opens no socket (quinn wraps these configurations in the agent and the root),
//! writes no file (callers store the PEM strings it returns), and does not rotate or revoke
//! certificates (node certificates live ten years; rotation is future work). It reads the clock
//! only to date the certificates it issues (the `*_at` variants, such as [`ClusterCa::sign_csr_at`],
//! take `now` instead) and to check that a loaded [`Identity`] is valid now; rustls itself reads
//! the clock during handshakes.
//!
//! The types that matter are [`ClusterCa`] (root only), [`JoinToken`], [`NodeKey`] and [`Identity`]
//! (what a process presents on the mesh), then [`server_config`], [`client_config`] and
//! [`enrol_client_config`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateSigningRequestDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, OtherError, RootCertStore, ServerConfig,
    SignatureScheme,
};
use sha2::{Digest, Sha256};

use crate::wire::{ALPN, ROOT_NAME};

/// SHA-256 of a certificate's DER encoding.
pub type Fingerprint = [u8; 32];

/// Prefix of the text form of a [`JoinToken`]; the digit is the token format's version.
const TOKEN_PREFIX: &str = "BNY1";

/// Bytes of randomness in a join token's secret (written as twice as many hex digits).
const TOKEN_SECRET_BYTES: usize = 32;

/// How far back certificates are dated, so that a node whose clock is a little behind the root's
/// still accepts a certificate issued a moment ago.
const BACKDATE: Duration = Duration::from_secs(3600);

const DAY: u64 = 24 * 3600;

/// Lifetime of node certificates. Clusters live long and rotation is out of scope for now, so a
/// node certificate lasts ten years; re-enrolling a node is how it gets a new one.
const NODE_LIFETIME: Duration = Duration::from_secs(3653 * DAY);

/// Lifetime of the cluster CA: longer than a node certificate, so that a node enrolled years after
/// the cluster was created still gets a certificate that the CA covers for most of its life.
const CA_LIFETIME: Duration = Duration::from_secs(30 * 366 * DAY);

/// What failed while making, reading or using an identity, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("join token is malformed: expected BNY1.<fingerprint>.<secret>; copy the whole token from the root's join-token file")]
    TokenMalformed,
    #[error("join token has a bad fingerprint: {0}; copy the whole token from the root's join-token file")]
    TokenBadFingerprint(String),
    #[error(
        "join token has a bad secret: {0}; copy the whole token from the root's join-token file"
    )]
    TokenBadSecret(String),
    #[error("invalid node name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("cannot create {what}: {detail}")]
    Create { what: &'static str, detail: String },
    #[error("{what} is not usable: {detail}")]
    BadInput { what: &'static str, detail: String },
    #[error("certificate signing request refused: {0}; the agent must send a DER-encoded PKCS#10 request signed by its own key")]
    Csr(String),
    #[error("{what}: the private key does not belong to the certificate; restore the key that was saved with this certificate, or enrol again")]
    KeyMismatch { what: &'static str },
    #[error("the certificate for {name:?} is not valid under the cluster CA: {detail}; enrol this node again, or restore the CA certificate it was enrolled with")]
    NotUnderCa { name: String, detail: String },
    #[error("certificate has no DNS name; it was not issued by a banyan root")]
    NoName,
    #[error("cannot build the TLS configuration: {0}")]
    Tls(String),
    #[error("the system clock is out of range ({0}); set the clock and retry")]
    Clock(&'static str),
}

impl From<rustls::Error> for IdentityError {
    fn from(e: rustls::Error) -> Self {
        IdentityError::Tls(e.to_string())
    }
}

impl From<rustls::server::VerifierBuilderError> for IdentityError {
    fn from(e: rustls::server::VerifierBuilderError) -> Self {
        IdentityError::Tls(e.to_string())
    }
}

/// SHA-256 of a certificate's DER encoding, as pinned by join tokens.
pub fn fingerprint(cert_der: &[u8]) -> Fingerprint {
    Sha256::digest(cert_der).into()
}

/// A fingerprint as 64 lowercase hex digits, for logs and error messages.
pub fn fingerprint_hex(fp: &Fingerprint) -> String {
    hex::encode(fp)
}

/// `bytes` bytes from the operating system's random source, as lowercase hex (twice as many
/// characters). Used for join token secrets and the admin token.
pub fn random_secret_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buf);
    hex::encode(buf)
}

/// What an agent needs to enrol: the fingerprint of the cluster CA, which it pins when it first
/// connects to the root (no trust on first use), and a secret that the root checks.
///
/// Text form: `BNY1.<64 hex digits of fingerprint>.<64 hex digits of secret>`. `Debug` hides the
/// secret; `Display` shows it (that is the token).
#[derive(Clone)]
pub struct JoinToken {
    pub ca_fingerprint: Fingerprint,
    /// 64 lowercase hex digits.
    pub secret: String,
}

impl JoinToken {
    /// A token for the CA with this fingerprint and a fresh random secret.
    pub fn generate(ca_fingerprint: Fingerprint) -> JoinToken {
        JoinToken {
            ca_fingerprint,
            secret: random_secret_hex(TOKEN_SECRET_BYTES),
        }
    }

    /// Whether `offered` is this token's secret, in time that depends on neither the secrets'
    /// contents nor their lengths (both sides are hashed first, then compared in full).
    pub fn secret_matches(&self, offered: &str) -> bool {
        constant_time_eq(
            &Sha256::digest(self.secret.as_bytes()).into(),
            &Sha256::digest(offered.as_bytes()).into(),
        )
    }
}

/// Whether two 32-byte values (hashes of secrets) are equal, in time that does not depend on
/// where they differ.
pub fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        // black_box keeps the compiler from turning the loop into an early exit.
        diff = std::hint::black_box(diff | (x ^ y));
    }
    diff == 0
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}",
            hex::encode(self.ca_fingerprint),
            self.secret
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &hex::encode(self.ca_fingerprint))
            .field("secret", &"<hidden>")
            .finish()
    }
}

impl FromStr for JoinToken {
    type Err = IdentityError;

    /// Parses the text form; surrounding whitespace (a token file's newline) is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('.');
        let (Some(TOKEN_PREFIX), Some(fp), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(IdentityError::TokenMalformed);
        };
        let ca_fingerprint = decode_hex32(fp).map_err(IdentityError::TokenBadFingerprint)?;
        decode_hex32(secret).map_err(IdentityError::TokenBadSecret)?;
        Ok(JoinToken {
            ca_fingerprint,
            secret: secret.to_ascii_lowercase(),
        })
    }
}

/// 64 hex digits to 32 bytes, or what is wrong with them.
fn decode_hex32(s: &str) -> Result<[u8; 32], String> {
    if s.len() != 64 {
        return Err(format!(
            "expected 64 hex digits, found {} characters",
            s.chars().count()
        ));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).map_err(|e| format!("not hexadecimal ({e})"))?;
    Ok(out)
}

/// Checks that `name` can be a node's name: a host name that works as a DNS name in a certificate
/// and as a TLS server name. The root's own name is reserved.
pub fn validate_node_name(name: &str) -> Result<(), String> {
    check_host_name(name)?;
    if name.eq_ignore_ascii_case(ROOT_NAME) {
        // Case-insensitive because certificate name matching is.
        return Err(format!(
            "{ROOT_NAME:?} is reserved for the root; give this node another name"
        ));
    }
    Ok(())
}

/// The host-name rules of [`validate_node_name`], without the reservation of the root's name.
fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a node name cannot be empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.'))
    {
        return Err(match c {
            '_' => {
                "underscores are not allowed in host names (nor in certificate DNS names); use '-'"
                    .into()
            }
            c => format!("character {c:?} is not allowed; use letters, digits, '-' and '.'"),
        });
    }
    if name.len() > 253 {
        return Err(format!(
            "a node name has at most 253 characters, this one has {}",
            name.len()
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err("empty label: a name cannot start or end with '.' nor contain '..'".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
    }
    // TLS libraries read a name whose last label is all digits as an IP address.
    if labels
        .last()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the last label is all digits, which reads as an IP address; host names need a letter there".into());
    }
    Ok(())
}

fn invalid_name(name: &str, reason: String) -> IdentityError {
    IdentityError::InvalidName {
        name: name.to_string(),
        reason,
    }
}

/// A node's key pair (ECDSA P-256). It never leaves the node: the root only sees its public half,
/// in a certificate signing request.
pub struct NodeKey {
    key: KeyPair,
}

impl NodeKey {
    pub fn generate() -> Result<NodeKey, IdentityError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| {
            IdentityError::Create {
                what: "a key pair",
                detail: e.to_string(),
            }
        })?;
        Ok(NodeKey { key })
    }

    /// Reads a PKCS#8 PEM private key, as written by [`NodeKey::pem`].
    pub fn from_pem(pem: &str) -> Result<NodeKey, IdentityError> {
        let key = KeyPair::from_pem(pem).map_err(|e| IdentityError::BadInput {
            what: "the private key PEM",
            detail: format!("{e}; expected a PKCS#8 \"PRIVATE KEY\""),
        })?;
        Ok(NodeKey { key })
    }

    /// PKCS#8 PEM. Secret: store it readable by the owner only.
    pub fn pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate signing request (DER) for `name`, signed by this key. The root ignores
    /// everything in it but the public key: it sets the names and usages itself.
    pub fn csr_der(&self, name: &str) -> Result<Vec<u8>, IdentityError> {
        validate_node_name(name).map_err(|reason| invalid_name(name, reason))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![dns_san(name)?];
        let csr = params
            .serialize_request(&self.key)
            .map_err(|e| IdentityError::Create {
                what: "a certificate signing request",
                detail: e.to_string(),
            })?;
        Ok(csr.der().to_vec())
    }

    /// Whether this key is the one certified by `cert_der`.
    fn matches(&self, cert_der: &[u8]) -> Result<bool, IdentityError> {
        let cert = parse_cert(cert_der, "the certificate")?;
        Ok(cert.public_key().subject_public_key.data.as_ref() == self.key.public_key_raw())
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeKey(<private>)")
    }
}

fn dns_san(name: &str) -> Result<SanType, IdentityError> {
    let ia5 =
        rcgen::string::Ia5String::try_from(name).map_err(|e| invalid_name(name, e.to_string()))?;
    Ok(SanType::DnsName(ia5))
}

fn parse_cert<'a>(
    der: &'a [u8],
    what: &'static str,
) -> Result<x509_parser::certificate::X509Certificate<'a>, IdentityError> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(IdentityError::BadInput {
            what,
            detail: "trailing bytes after the DER certificate".into(),
        }),
        Err(e) => Err(IdentityError::BadInput {
            what,
            detail: format!("not a DER X.509 certificate ({e})"),
        }),
    }
}

/// The cluster's certificate authority, held by the root only: its certificate and private key.
pub struct ClusterCa {
    cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl ClusterCa {
    /// A new self-signed CA (ECDSA P-256) named `banyan cluster CA <random id>`, dated from now.
    pub fn generate() -> Result<ClusterCa, IdentityError> {
        Self::generate_at(SystemTime::now())
    }

    /// [`ClusterCa::generate`] with the time given.
    pub fn generate_at(now: SystemTime) -> Result<ClusterCa, IdentityError> {
        let creating = |e: rcgen::Error| IdentityError::Create {
            what: "the cluster CA",
            detail: e.to_string(),
        };
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(creating)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            format!("banyan cluster CA {}", random_secret_hex(8)),
        );
        // Path length 0: the CA signs node certificates, never another CA.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        params.not_before = since(now, BACKDATE)?.into();
        params.not_after = until(now, CA_LIFETIME)?.into();
        let cert = params.self_signed(&key).map_err(creating)?;
        Self::from_der_and_key(cert.der().to_vec(), key)
    }

    /// Reads a CA saved with [`ClusterCa::cert_pem`] and [`ClusterCa::key_pem`].
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, IdentityError> {
        let cert_der = cert_der_from_pem(cert_pem, "the CA certificate PEM")?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| IdentityError::BadInput {
            what: "the CA private key PEM",
            detail: format!("{e}; expected a PKCS#8 \"PRIVATE KEY\""),
        })?;
        Self::from_der_and_key(cert_der, key)
    }

    fn from_der_and_key(cert_der: Vec<u8>, key: KeyPair) -> Result<ClusterCa, IdentityError> {
        let cert = parse_cert(&cert_der, "the CA certificate")?;
        if !cert.is_ca() {
            return Err(IdentityError::BadInput {
                what: "the CA certificate",
                detail: "it is not a CA certificate (no CA basic constraint)".into(),
            });
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(IdentityError::KeyMismatch {
                what: "the cluster CA",
            });
        }
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key)
            .map_err(|e| IdentityError::BadInput {
                what: "the CA certificate",
                detail: e.to_string(),
            })?;
        Ok(ClusterCa { cert_der, issuer })
    }

    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert_der)
    }

    /// PKCS#8 PEM. The cluster's most sensitive secret: store it readable by the owner only.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.cert_der)
    }

    /// A complete identity for `name`, with a key pair generated here. This is how the root makes
    /// its own identity (`name` = [`ROOT_NAME`], which only this function accepts); agents use
    /// [`NodeKey::csr_der`] and [`ClusterCa::sign_csr`] so that their key never leaves them.
    pub fn issue(&self, name: &str) -> Result<Identity, IdentityError> {
        self.issue_at(name, SystemTime::now())
    }

    /// [`ClusterCa::issue`] with the time given.
    pub fn issue_at(&self, name: &str, now: SystemTime) -> Result<Identity, IdentityError> {
        if name != ROOT_NAME {
            validate_node_name(name).map_err(|reason| invalid_name(name, reason))?;
        }
        let key = NodeKey::generate()?;
        let cert = node_params(name, now)?
            .signed_by(&key.key, &self.issuer)
            .map_err(|e| IdentityError::Create {
                what: "a node certificate",
                detail: e.to_string(),
            })?;
        Ok(Identity::from_parts(
            cert.der().to_vec(),
            &key,
            self.cert_der.clone(),
        ))
    }

    /// Signs a node certificate for `name` (returned as DER) with the public key of the CSR and
    /// nothing else from it: the subject, names, usages and dates are the root's choice, so a CSR
    /// cannot ask for more than a node certificate. The CSR's own signature is checked, which
    /// proves the agent holds the key. Refuses invalid names, including [`ROOT_NAME`].
    pub fn sign_csr(&self, csr_der: &[u8], name: &str) -> Result<Vec<u8>, IdentityError> {
        self.sign_csr_at(csr_der, name, SystemTime::now())
    }

    /// [`ClusterCa::sign_csr`] with the time given.
    pub fn sign_csr_at(
        &self,
        csr_der: &[u8],
        name: &str,
        now: SystemTime,
    ) -> Result<Vec<u8>, IdentityError> {
        validate_node_name(name).map_err(|reason| invalid_name(name, reason))?;
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| IdentityError::Csr(e.to_string()))?;
        let cert = node_params(name, now)?
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| IdentityError::Create {
                what: "a node certificate",
                detail: e.to_string(),
            })?;
        Ok(cert.der().to_vec())
    }
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &fingerprint_hex(&self.fingerprint()))
            .finish_non_exhaustive()
    }
}

/// The certificate profile of every node, the root included: CN and DNS name `name`, a signing key
/// that is a TLS server (for its children) and a TLS client (of its parent).
fn node_params(name: &str, now: SystemTime) -> Result<CertificateParams, IdentityError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![dns_san(name)?];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    params.not_before = since(now, BACKDATE)?.into();
    params.not_after = until(now, NODE_LIFETIME)?.into();
    Ok(params)
}

/// 16 random bytes, positive and of fixed length once DER-encoded.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn since(now: SystemTime, d: Duration) -> Result<SystemTime, IdentityError> {
    now.checked_sub(d)
        .ok_or(IdentityError::Clock("cannot date a certificate before it"))
}

fn until(now: SystemTime, d: Duration) -> Result<SystemTime, IdentityError> {
    now.checked_add(d).ok_or(IdentityError::Clock(
        "cannot date a certificate's expiry after it",
    ))
}

/// What a process presents on the mesh: its certificate (DER), its private key (PKCS#8 PEM), and
/// the cluster CA's certificate (DER), which is also the only thing it trusts. `Debug` hides the key.
#[derive(Clone)]
pub struct Identity {
    pub cert_der: Vec<u8>,
    pub key_pem: String,
    pub ca_der: Vec<u8>,
}

impl Identity {
    /// Puts together a certificate received from the root with the key it was requested for. Use
    /// [`Identity::check`] (or [`Identity::from_pem_files`]) to verify that they fit.
    pub fn from_parts(cert_der: Vec<u8>, key: &NodeKey, ca_der: Vec<u8>) -> Identity {
        Identity {
            cert_der,
            key_pem: key.pem(),
            ca_der,
        }
    }

    /// The node name in the certificate (its DNS name).
    pub fn name(&self) -> Result<String, IdentityError> {
        peer_name(&self.cert_der)
    }

    /// `(certificate, private key, CA certificate)` as PEM, for the state dir. The key is secret.
    pub fn to_pem_files(&self) -> (String, String, String) {
        (
            pem_encode("CERTIFICATE", &self.cert_der),
            self.key_pem.clone(),
            pem_encode("CERTIFICATE", &self.ca_der),
        )
    }

    /// Reads what [`Identity::to_pem_files`] wrote and [checks](Identity::check) it.
    pub fn from_pem_files(
        cert_pem: &str,
        key_pem: &str,
        ca_pem: &str,
    ) -> Result<Identity, IdentityError> {
        let id = Identity {
            cert_der: cert_der_from_pem(cert_pem, "the node certificate PEM")?,
            key_pem: key_pem.to_string(),
            ca_der: cert_der_from_pem(ca_pem, "the CA certificate PEM")?,
        };
        id.check()?;
        Ok(id)
    }

    /// Checks that the key belongs to the certificate and that the certificate chains to the CA
    /// and is valid now, for its own name, as a TLS server (its peers will check the same).
    pub fn check(&self) -> Result<(), IdentityError> {
        let key = NodeKey::from_pem(&self.key_pem)?;
        if !key.matches(&self.cert_der)? {
            return Err(IdentityError::KeyMismatch {
                what: "the node identity",
            });
        }
        let name = self.name()?;
        let not_under_ca = |detail: String| IdentityError::NotUnderCa {
            name: name.clone(),
            detail,
        };
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| not_under_ca(format!("its name is not a DNS name ({e})")))?;
        let verifier = WebPkiServerVerifier::builder_with_provider(
            Arc::new(ca_roots(&self.ca_der)?),
            provider(),
        )
        .build()?;
        verifier
            .verify_server_cert(
                &CertificateDer::from(self.cert_der.as_slice()),
                &[],
                &server_name,
                &[],
                UnixTime::now(),
            )
            .map_err(|e| not_under_ca(describe_verify_error(e)))?;
        Ok(())
    }

    /// What this identity presents in a handshake: its certificate, then the CA's, so that an
    /// enrolling agent can find the CA it pinned.
    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![
            CertificateDer::from(self.cert_der.clone()),
            CertificateDer::from(self.ca_der.clone()),
        ]
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, IdentityError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| {
            IdentityError::BadInput {
                what: "the node private key PEM",
                detail: e.to_string(),
            }
        })
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name().ok())
            .field(
                "ca_fingerprint",
                &fingerprint_hex(&fingerprint(&self.ca_der)),
            )
            .finish_non_exhaustive()
    }
}

/// A rustls verification error without its "peer" framing, for errors about local files.
fn describe_verify_error(e: rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "it was not signed by this CA".into()
        }
        rustls::Error::InvalidCertificate(e) => e.to_string(),
        e => e.to_string(),
    }
}

/// The node name of a certificate: its first DNS name. Only meaningful for a certificate that
/// rustls has verified, e.g. the first of a connection's peer certificates.
pub fn peer_name(cert_der: &[u8]) -> Result<String, IdentityError> {
    let cert = parse_cert(cert_der, "the peer certificate")?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadInput {
            what: "the peer certificate",
            detail: format!("its subject alternative names do not parse ({e})"),
        })?
        .ok_or(IdentityError::NoName)?;
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .ok_or(IdentityError::NoName)
}

/// The certificate in `chain` whose fingerprint is `pinned` (DER), if any: after enrolment, the
/// agent saves the CA the root presented, which its pin has already authenticated.
pub fn ca_from_presented_chain(
    chain: &[CertificateDer<'_>],
    pinned: Fingerprint,
) -> Option<Vec<u8>> {
    chain
        .iter()
        .find(|c| fingerprint(c) == pinned)
        .map(|c| c.to_vec())
}

/// Whether a server accepts clients without a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every client presents a certificate from the cluster CA (tree links).
    Required,
    /// Clients may also connect without one (the root, for enrolment). Those that do present one
    /// are verified all the same; the application must check the connection's peer identity and
    /// allow only enrolment to clients without a certificate.
    Optional,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ca_roots(ca_der: &[u8]) -> Result<RootCertStore, IdentityError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_der.to_vec()))
        .map_err(|e| IdentityError::BadInput {
            what: "the CA certificate",
            detail: e.to_string(),
        })?;
    Ok(roots)
}

/// The server side of a mesh link: presents `id` (its certificate, then the CA's) and verifies
/// client certificates against `id`'s CA. TLS 1.3 only, ALPN [`ALPN`], ready for quinn.
pub fn server_config(id: &Identity, clients: ClientAuth) -> Result<ServerConfig, IdentityError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(ca_roots(&id.ca_der)?),
        provider.clone(),
    );
    let verifier = match clients {
        ClientAuth::Required => verifier,
        ClientAuth::Optional => verifier.allow_unauthenticated(),
    }
    .build()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain(), id.private_key()?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The client side of a mesh link: presents `id`'s certificate and trusts only `id`'s CA. The
/// caller passes the expected peer's node name as the server name (quinn's `connect`), so a
/// certificate for another node is refused.
pub fn client_config(id: &Identity) -> Result<ClientConfig, IdentityError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(ca_roots(&id.ca_der)?)
        .with_client_auth_cert(
            vec![CertificateDer::from(id.cert_der.clone())],
            id.private_key()?,
        )?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The client side of enrolment: no client certificate; the server is accepted only if its chain
/// contains the CA with fingerprint `ca_fingerprint` and its certificate verifies under that CA
/// for the server name the caller passes ([`ROOT_NAME`]). No trust on first use.
pub fn enrol_client_config(ca_fingerprint: Fingerprint) -> Result<ClientConfig, IdentityError> {
    let provider = provider();
    let verifier = Arc::new(PinnedCaVerifier {
        pinned: ca_fingerprint,
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Verifies a server against the CA named by a join token's fingerprint, taken from the chain the
/// server presents. The pin only selects the trust anchor; the real check is rustls' own.
#[derive(Debug)]
struct PinnedCaVerifier {
    pinned: Fingerprint,
    provider: Arc<CryptoProvider>,
}

/// Why an enrolling agent refused the server: its chain lacks the pinned CA.
#[derive(thiserror::Error)]
#[error("the server's certificate chain does not contain the cluster CA of the join token (fingerprint {0}); check that the token and the root address belong to the same cluster")]
struct PinMismatch(String);

/// rustls prints this error with `Debug` (inside "invalid peer certificate: Other(..)"), so
/// `Debug` says the same as `Display`.
impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Only the intermediates: a CA certificate presented as the end entity is refused anyway.
        let Some(ca) = intermediates.iter().find(|c| fingerprint(c) == self.pinned) else {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch(fingerprint_hex(&self.pinned)))),
            )));
        };
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn cert_der_from_pem(pem: &str, what: &'static str) -> Result<Vec<u8>, IdentityError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| IdentityError::BadInput {
            what,
            detail: format!("{e}; expected a \"CERTIFICATE\" PEM block"),
        })
}

/// PEM armour: base64 in lines of 64 characters between BEGIN and END lines.
fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let triple = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ALPHABET[((triple >> (18 - 6 * i)) & 63) as usize]);
            } else {
                b64.push(b'=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.extend(line.iter().map(|&b| char::from(b)));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    /// Runs a TLS handshake in memory. Err says which side refused, and why.
    fn handshake(
        client: ClientConfig,
        server: ServerConfig,
        server_name: &str,
    ) -> Result<(ClientConnection, ServerConnection), String> {
        let name = ServerName::try_from(server_name.to_string()).map_err(|e| e.to_string())?;
        let mut c = ClientConnection::new(Arc::new(client), name).map_err(|e| e.to_string())?;
        let mut s = ServerConnection::new(Arc::new(server)).map_err(|e| e.to_string())?;
        for _ in 0..10 {
            pump(&mut *c, &mut *s).map_err(|e| format!("server: {e}"))?;
            pump(&mut *s, &mut *c).map_err(|e| format!("client: {e}"))?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok((c, s));
            }
        }
        Err("handshake did not finish".into())
    }

    /// Moves everything `from` has to send into `to`, and lets `to` process it.
    fn pump<A, B>(
        from: &mut rustls::ConnectionCommon<A>,
        to: &mut rustls::ConnectionCommon<B>,
    ) -> Result<(), String> {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).map_err(|e| e.to_string())?;
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            to.read_tls(&mut rd).map_err(|e| e.to_string())?;
            to.process_new_packets().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn enrolled(ca: &ClusterCa, name: &str) -> Identity {
        let key = NodeKey::generate().unwrap();
        let cert = ca.sign_csr(&key.csr_der(name).unwrap(), name).unwrap();
        Identity::from_parts(cert, &key, ca.cert_der())
    }

    fn peer_of_server(s: &ServerConnection) -> Option<String> {
        s.peer_certificates().map(|c| peer_name(&c[0]).unwrap())
    }

    #[test]
    fn node_from_csr_completes_mutual_handshake_and_is_named() {
        let ca = ClusterCa::generate().unwrap();
        let node = enrolled(&ca, "node01.cluster");
        node.check().unwrap();
        assert_eq!(node.name().unwrap(), "node01.cluster");
        let parent = ca.issue("parent7").unwrap();
        let (c, s) = handshake(
            client_config(&node).unwrap(),
            server_config(&parent, ClientAuth::Required).unwrap(),
            "parent7",
        )
        .unwrap();
        assert_eq!(peer_of_server(&s).as_deref(), Some("node01.cluster"));
        assert_eq!(
            peer_name(&c.peer_certificates().unwrap()[0]).unwrap(),
            "parent7"
        );
        assert_eq!(c.alpn_protocol(), Some(ALPN));
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    }

    #[test]
    fn root_sets_the_name_whatever_the_csr_asks() {
        let ca = ClusterCa::generate().unwrap();
        let key = NodeKey::generate().unwrap();
        let cert = ca.sign_csr(&key.csr_der("evil").unwrap(), "node2").unwrap();
        assert_eq!(peer_name(&cert).unwrap(), "node2");
        let parsed = parse_cert(&cert, "test").unwrap();
        let sans = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(sans.value.general_names.len(), 1);
        assert!(!parsed.is_ca());
        assert!(key.matches(&cert).unwrap());
    }

    #[test]
    fn node_from_another_ca_is_refused_by_server() {
        let ca = ClusterCa::generate().unwrap();
        let other = ClusterCa::generate().unwrap();
        // The intruder knows the real CA certificate (it is public) but cannot get it to sign.
        let intruder = Identity {
            ca_der: ca.cert_der(),
            ..enrolled(&other, "node1")
        };
        let parent = ca.issue("parent").unwrap();
        let err = handshake(
            client_config(&intruder).unwrap(),
            server_config(&parent, ClientAuth::Optional).unwrap(),
            "parent",
        )
        .err()
        .unwrap();
        assert!(err.starts_with("server:"), "{err}");
    }

    #[test]
    fn server_from_another_ca_is_refused_by_client() {
        let ca = ClusterCa::generate().unwrap();
        let other = ClusterCa::generate().unwrap();
        let node = enrolled(&ca, "node1");
        let impostor = other.issue("parent").unwrap();
        let err = handshake(
            client_config(&node).unwrap(),
            server_config(&impostor, ClientAuth::Required).unwrap(),
            "parent",
        )
        .err()
        .unwrap();
        assert!(err.starts_with("client:"), "{err}");
    }

    #[test]
    fn server_named_a_is_refused_when_b_is_expected() {
        let ca = ClusterCa::generate().unwrap();
        let node = enrolled(&ca, "node1");
        let a = ca.issue("node-a").unwrap();
        let err = handshake(
            client_config(&node).unwrap(),
            server_config(&a, ClientAuth::Required).unwrap(),
            "node-b",
        )
        .err()
        .unwrap();
        assert!(err.starts_with("client:"), "{err}");
    }

    #[test]
    fn enrolment_accepts_pinned_root_and_refuses_others() {
        let ca = ClusterCa::generate().unwrap();
        let root = ca.issue(ROOT_NAME).unwrap();
        let (c, s) = handshake(
            enrol_client_config(ca.fingerprint()).unwrap(),
            server_config(&root, ClientAuth::Optional).unwrap(),
            ROOT_NAME,
        )
        .unwrap();
        assert_eq!(peer_of_server(&s), None);
        let chain = c.peer_certificates().unwrap();
        assert_eq!(
            ca_from_presented_chain(chain, ca.fingerprint()),
            Some(ca.cert_der())
        );
        assert_eq!(ca_from_presented_chain(chain, [0; 32]), None);

        // A root of another cluster.
        let other = ClusterCa::generate().unwrap();
        let foreign = other.issue(ROOT_NAME).unwrap();
        let err = handshake(
            enrol_client_config(ca.fingerprint()).unwrap(),
            server_config(&foreign, ClientAuth::Optional).unwrap(),
            ROOT_NAME,
        )
        .err()
        .unwrap();
        assert!(
            err.starts_with("client:") && err.contains("join token"),
            "{err}"
        );

        // A foreign root that appends the real CA certificate to its chain.
        let forged = Identity {
            ca_der: ca.cert_der(),
            ..foreign
        };
        let err = handshake(
            enrol_client_config(ca.fingerprint()).unwrap(),
            server_config(&forged, ClientAuth::Optional).unwrap(),
            ROOT_NAME,
        )
        .err()
        .unwrap();
        assert!(err.starts_with("client:"), "{err}");

        // A node of the right cluster posing as the root.
        let node = ca.issue("node1").unwrap();
        let err = handshake(
            enrol_client_config(ca.fingerprint()).unwrap(),
            server_config(&node, ClientAuth::Optional).unwrap(),
            ROOT_NAME,
        )
        .err()
        .unwrap();
        assert!(err.starts_with("client:"), "{err}");
    }

    #[test]
    fn unauthenticated_client_is_accepted_only_when_optional() {
        let ca = ClusterCa::generate().unwrap();
        let root = ca.issue(ROOT_NAME).unwrap();
        let (_, s) = handshake(
            enrol_client_config(ca.fingerprint()).unwrap(),
            server_config(&root, ClientAuth::Optional).unwrap(),
            ROOT_NAME,
        )
        .unwrap();
        assert_eq!(peer_of_server(&s), None);
        let err = handshake(
            enrol_client_config(ca.fingerprint()).unwrap(),
            server_config(&root, ClientAuth::Required).unwrap(),
            ROOT_NAME,
        )
        .err()
        .unwrap();
        assert!(err.starts_with("server:"), "{err}");
    }

    #[test]
    fn token_round_trips_and_malformed_tokens_say_why() {
        let token = JoinToken::generate([0xab; 32]);
        let text = token.to_string();
        assert!(text.starts_with("BNY1.abab"), "{text}");
        assert_eq!(text.len(), 5 + 64 + 1 + 64);
        let back: JoinToken = format!("  {text}\n").parse().unwrap();
        assert_eq!(back.ca_fingerprint, token.ca_fingerprint);
        assert_eq!(back.secret, token.secret);
        assert!(back.secret_matches(&token.secret));
        assert!(!back.secret_matches(&random_secret_hex(32)));
        assert!(!back.secret_matches(""));
        assert!(!back.secret_matches(&token.secret[..63]));
        assert!(!format!("{token:?}").contains(&token.secret));

        let fp = "ab".repeat(32);
        let secret = "cd".repeat(32);
        let err = |s: &str| s.parse::<JoinToken>().err().unwrap().to_string();
        for bad in [
            String::new(),
            "BNY1".into(),
            format!("BNY2.{fp}.{secret}"),
            format!("BNY1.{fp}"),
            format!("BNY1.{fp}.{secret}.x"),
        ] {
            assert!(
                err(&bad)
                    .starts_with("join token is malformed: expected BNY1.<fingerprint>.<secret>"),
                "{bad}: {}",
                err(&bad)
            );
        }
        let e = err(&format!("BNY1.{}.{secret}", &fp[..10]));
        assert!(
            e.starts_with("join token has a bad fingerprint: expected 64 hex digits"),
            "{e}"
        );
        let e = err(&format!("BNY1.{}zz.{secret}", &fp[..62]));
        assert!(
            e.starts_with("join token has a bad fingerprint: not hexadecimal"),
            "{e}"
        );
        let e = err(&format!("BNY1.{fp}.{}", &secret[..3]));
        assert!(e.starts_with("join token has a bad secret"), "{e}");
        let upper: JoinToken = format!("BNY1.{}.{}", fp.to_uppercase(), secret.to_uppercase())
            .parse()
            .unwrap();
        assert!(upper.secret_matches(&secret));
        assert_eq!(random_secret_hex(16).len(), 32);
    }

    #[test]
    fn sign_csr_refuses_garbage_and_bad_names() {
        let ca = ClusterCa::generate().unwrap();
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_der("node1").unwrap();
        for garbage in [
            &b""[..],
            b"garbage",
            &csr[..csr.len() / 2],
            &[0x30, 0x82, 0xff, 0xff],
        ] {
            let e = ca.sign_csr(garbage, "node1").err().unwrap();
            assert!(matches!(e, IdentityError::Csr(_)), "{e}");
        }
        // A CSR whose signature does not verify.
        let mut tampered = csr.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(matches!(
            ca.sign_csr(&tampered, "node1"),
            Err(IdentityError::Csr(_))
        ));
        for name in [
            "banyan-root",
            "Banyan-Root",
            "a_b",
            "",
            "-a",
            "a-",
            "a..b",
            "a.",
            "10.0.0.1",
        ] {
            let e = ca.sign_csr(&csr, name).err().unwrap();
            assert!(
                matches!(e, IdentityError::InvalidName { .. }),
                "{name}: {e}"
            );
            assert!(e.to_string().starts_with("invalid node name"), "{e}");
        }
        assert!(ca.sign_csr(&csr, "node1").is_ok());
        assert!(matches!(
            key.csr_der("bad name"),
            Err(IdentityError::InvalidName { .. })
        ));
    }

    #[test]
    fn node_names_follow_host_name_rules() {
        let long_label = "a".repeat(63);
        let long_name = format!("{long_label}.{long_label}.{long_label}.{}", "b".repeat(61));
        assert_eq!(long_name.len(), 253);
        for ok in [
            "a",
            "node01",
            "n-1.rack2.cluster",
            "X9",
            "1node",
            "12.node",
            &long_label,
            &long_name,
        ] {
            assert_eq!(validate_node_name(ok), Ok(()), "{ok}");
            // Every accepted name works as a TLS server name.
            assert!(
                matches!(ServerName::try_from(ok), Ok(ServerName::DnsName(_))),
                "{ok}"
            );
        }
        let reason = |n: &str| validate_node_name(n).err().unwrap();
        assert!(reason("").contains("empty"));
        assert!(reason("a_b").contains("underscores"));
        assert!(reason("banyan-root").contains("reserved"));
        assert!(reason("BANYAN-ROOT").contains("reserved"));
        assert!(reason("-a").contains("'-'"));
        assert!(reason("a-.b").contains("'-'"));
        assert!(reason(".a").contains("empty label"));
        assert!(reason("a..b").contains("empty label"));
        assert!(reason("a.").contains("empty label"));
        assert!(reason(&"a".repeat(64)).contains("63"));
        assert!(reason(&format!("{long_name}c")).contains("253"));
        assert!(reason("123").contains("IP address"));
        assert!(reason("10.0.0.1").contains("IP address"));
        assert!(reason("nöde").contains("not allowed"));
        assert!(reason("a b").contains("not allowed"));
    }

    #[test]
    fn identity_and_ca_round_trip_through_pem() {
        let ca = ClusterCa::generate().unwrap();
        let id = enrolled(&ca, "node3");
        let (cert, key, ca_pem) = id.to_pem_files();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----\n"));
        let back = Identity::from_pem_files(&cert, &key, &ca_pem).unwrap();
        assert_eq!(back.cert_der, id.cert_der);
        assert_eq!(back.key_pem, id.key_pem);
        assert_eq!(back.ca_der, id.ca_der);
        assert!(!format!("{back:?}").contains("PRIVATE"));

        // The wrong key, or the wrong CA, is refused with a clear error.
        let (_, other_key, _) = enrolled(&ca, "node4").to_pem_files();
        assert!(matches!(
            Identity::from_pem_files(&cert, &other_key, &ca_pem),
            Err(IdentityError::KeyMismatch { .. })
        ));
        let other_ca = ClusterCa::generate().unwrap();
        let e = Identity::from_pem_files(&cert, &key, &other_ca.cert_pem())
            .err()
            .unwrap();
        assert!(matches!(e, IdentityError::NotUnderCa { .. }), "{e}");
        assert!(matches!(
            Identity::from_pem_files("not pem", &key, &ca_pem),
            Err(IdentityError::BadInput { .. })
        ));

        // The CA survives its own round trip and still issues certificates that verify.
        let ca2 = ClusterCa::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(ca2.fingerprint(), ca.fingerprint());
        ca2.issue("node5").unwrap().check().unwrap();
        assert!(matches!(
            ClusterCa::from_pem(&ca.cert_pem(), &other_ca.key_pem()),
            Err(IdentityError::KeyMismatch { .. })
        ));
        assert!(
            ClusterCa::from_pem(&cert, &key).is_err(),
            "a node certificate is not a CA"
        );
    }

    #[test]
    fn certificates_have_the_promised_dates_and_usages() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ca = ClusterCa::generate_at(now).unwrap();
        let id = ca.issue_at("node1", now).unwrap();
        let cert = parse_cert(&id.cert_der, "test").unwrap();
        let secs =
            |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        assert_eq!(cert.validity().not_before.timestamp(), secs(now) - 3600);
        assert_eq!(
            cert.validity().not_after.timestamp(),
            secs(now) + NODE_LIFETIME.as_secs() as i64
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(cert.key_usage().unwrap().unwrap().value.digital_signature());
        let ca_cert = parse_cert(&id.ca_der, "test").unwrap();
        assert!(ca_cert.validity().not_after > cert.validity().not_after);
        assert!(ca_cert.subject().to_string().contains("banyan cluster CA "));
    }

    #[test]
    fn pem_encoding_decodes_back() {
        for len in 0..70 {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let pem = pem_encode("CERTIFICATE", &data);
            let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
            assert_eq!(back.as_ref(), data.as_slice(), "length {len}");
        }
    }
}

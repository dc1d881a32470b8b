//! Attested TLS for Coffer.
//!
//! Each side of a connection presents a fresh, self-signed certificate whose extension
//! OID 2.23.133.5.4.9 (TCG DICE tagged evidence) carries TEE evidence — see [`extension`] for the
//! exact encoding. **The evidence commits to SHA-512(SPKI)**: its 64 bytes of report data are the
//! SHA-512 digest of the certificate's DER SubjectPublicKeyInfo, so the evidence cannot be
//! replayed with another key, and the TLS handshake signature proves the peer holds that key.
//!
//! Peers: Coffer verifies Coffer certificates and Gramine ≥ 1.8 RA-TLS certificates (SGX quote
//! under tag 60000, bound through SHA-256 of its claims buffer; see [`extension::Binding`]).
//! Gramine's verifier does not accept Coffer's certificates, and rats-tls certificates are
//! refused, as are Gramine's legacy ones (OID 1.2.840.113741.1337.6).
//!
//! * [`attested_certificate`] makes such a certificate (P-256 key, 24 h validity).
//! * [`AttestedServerVerifier`] / [`AttestedClientVerifier`] are rustls verifiers that parse the
//!   peer's certificate, check its validity period, extract and verify the evidence with a
//!   pluggable [`EvidenceVerifier`], check the binding, and evaluate the role [`Policy`]. Client
//!   authentication is mandatory. Server names are not checked: the identity is the attestation.
//! * After the handshake, [`AttestedVerifier::peer`] returns the peer's verified [`Claims`] and
//!   [`Role`] for the certificate the connection saw.
//! * [`server_config`] / [`client_config`] build TLS 1.3-only rustls configurations (ring).

#![deny(missing_docs)]

mod binding;
mod cbor;
mod describe;
pub mod extension;
mod key;
mod offline;
mod server_identity;

pub use describe::{describe_certificate_error, describe_io_error, describe_tls_error};
pub use key::{LockedKey, LockedSigningKey};
pub use offline::OfflineVerifier;
pub use server_identity::{ServerIdentity, DEFAULT_RENEWAL};

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coffer_attest::policy::{Denial, Policy, Role};
use coffer_attest::Claims;
use coffer_platform::{Evidence, Platform, PlatformError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256, Sha512};

pub use extension::{decode_extension, encode_extension, DecodedExtension, EVIDENCE_OID};

/// Validity of the certificates [`attested_certificate`] makes.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// How far back a new certificate's `notBefore` is set, to tolerate clock skew between peers.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// The subject common name of attested certificates.
pub const COMMON_NAME: &str = "coffer attested";

/// How long a verified certificate's result is reused by default (see [`AttestedVerifier`]).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5 * 60);

/// Most certificates remembered by one verifier.
pub const MAX_CACHE_ENTRIES: usize = 4096;

/// Errors of attested TLS.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RatlsError {
    /// The platform could not produce evidence.
    #[error("getting attestation evidence: {0}")]
    Platform(#[from] PlatformError),
    /// Key or certificate generation failed.
    #[error("generating the attested certificate: {0}")]
    Generate(String),
    /// The certificate could not be parsed or is outside its validity period.
    #[error("peer certificate: {0}")]
    Certificate(String),
    /// The evidence extension is missing or malformed.
    #[error("evidence extension: {0}")]
    Extension(String),
    /// The evidence did not verify.
    #[error("evidence verification failed: {0}")]
    Evidence(String),
    /// The evidence is not bound to the certificate's key.
    #[error("evidence binding: {0}")]
    Binding(String),
    /// The policy grants no role.
    #[error("attestation policy refused the peer: {0}")]
    Denied(#[from] Denial),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

impl From<RatlsError> for rustls::Error {
    fn from(e: RatlsError) -> Self {
        match e {
            RatlsError::Tls(e) => e,
            other => rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
                rustls::OtherError(Arc::new(Reason(other.to_string()))),
            )),
        }
    }
}

/// A refusal reason whose `Debug` is its text, so that rustls' error messages (which format the
/// inner error with `Debug`) read cleanly.
struct Reason(String);

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Reason {}

/// The crypto provider used throughout: rustls' ring provider.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-512 of a DER SubjectPublicKeyInfo: the report data an attested certificate's evidence
/// must carry.
pub fn report_data_for_spki(spki_der: &[u8]) -> [u8; 64] {
    Sha512::digest(spki_der).into()
}

// ---------------------------------------------------------------------------------------------
// Our identity.

/// A freshly generated attested certificate and its private key.
pub struct AttestedIdentity {
    cert: CertificateDer<'static>,
    key: Arc<LockedKey>,
    certified: Arc<CertifiedKey>,
    evidence: Evidence,
}

impl fmt::Debug for AttestedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedIdentity")
            .field("tee", &self.evidence.tee)
            .field("cert_sha256", &hex::encode(Sha256::digest(&self.cert)))
            .finish_non_exhaustive()
    }
}

impl AttestedIdentity {
    /// The DER certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate chain to present (just the self-signed certificate).
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    /// A copy of the PKCS#8 private key. The copy is the caller's to protect; prefer
    /// [`certified_key`](Self::certified_key), which never exposes the key bytes.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        self.key.pkcs8_copy()
    }

    /// The private key, on locked memory (see [`LockedKey`]).
    pub fn key(&self) -> &LockedKey {
        &self.key
    }

    /// The certificate and signing key, ready for a rustls certificate resolver.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// The evidence embedded in the certificate.
    pub fn evidence(&self) -> &Evidence {
        &self.evidence
    }
}

/// Generates a fresh P-256 key pair, gets evidence whose report data is SHA-512 of its DER
/// SubjectPublicKeyInfo from `platform`, and self-signs a certificate valid for
/// [`DEFAULT_VALIDITY`] carrying that evidence in the TCG DICE tagged-evidence extension.
pub fn attested_certificate(platform: &dyn Platform) -> Result<AttestedIdentity, RatlsError> {
    attested_certificate_with_validity(platform, DEFAULT_VALIDITY)
}

/// [`attested_certificate`] with an explicit validity period.
pub fn attested_certificate_with_validity(
    platform: &dyn Platform,
    validity: Duration,
) -> Result<AttestedIdentity, RatlsError> {
    use rcgen::PublicKeyData;
    let gen = |e: rcgen::Error| RatlsError::Generate(e.to_string());

    let key = LockedKey::generate()?;
    let spki = key.subject_public_key_info();
    let report_data = report_data_for_spki(&spki);
    let evidence = platform.evidence(&report_data)?;
    let ext_value = encode_extension(&evidence, &report_data);

    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(gen)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, COMMON_NAME);
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SKEW;
    params.not_after = now + validity;
    let mut serial = [0u8; 16];
    coffer_platform::fill_random(&mut serial)?;
    serial[0] &= 0x7f;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    // Not critical: webpki, which rustls uses to check handshake signatures, refuses
    // certificates with critical extensions it does not know.
    let mut ext = rcgen::CustomExtension::from_oid_content(EVIDENCE_OID, ext_value);
    ext.set_criticality(false);
    params.custom_extensions.push(ext);
    let cert = params.self_signed(key.as_ref()).map_err(gen)?;

    let cert_der = cert.der().clone();
    let certified = Arc::new(CertifiedKey::new(
        vec![cert_der.clone()],
        Arc::new(LockedSigningKey(key.clone())),
    ));
    Ok(AttestedIdentity {
        cert: cert_der,
        key,
        certified,
        evidence,
    })
}

/// Extracts the evidence from an attested certificate, without verifying anything.
pub fn evidence_from_certificate(cert_der: &[u8]) -> Result<DecodedExtension, RatlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| RatlsError::Certificate(format!("not a DER X.509 certificate: {e}")))?;
    extension_of(&cert)
}

fn extension_of(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<DecodedExtension, RatlsError> {
    let oid = x509_parser::oid_registry::Oid::from(EVIDENCE_OID)
        .map_err(|_| RatlsError::Extension("bad OID constant".into()))?;
    let mut found = None;
    for ext in cert.extensions() {
        if ext.oid == oid {
            if found.is_some() {
                return Err(RatlsError::Extension(
                    "the certificate carries the evidence extension twice".into(),
                ));
            }
            found = Some(ext.value);
        }
    }
    let value = found.ok_or_else(|| {
        RatlsError::Extension(
            "the certificate has no evidence extension (OID 2.23.133.5.4.9): not an attested certificate"
                .into(),
        )
    })?;
    decode_extension(value)
}

// ---------------------------------------------------------------------------------------------
// Verification.

/// Verifies evidence cryptographically and returns its claims (not yet checked against a
/// policy). `coffer_attest`'s verifiers are adapted to this; tests plug in their own.
pub trait EvidenceVerifier: Send + Sync + fmt::Debug {
    /// Verifies `evidence`; the error says why it is not genuine.
    fn verify(&self, evidence: &Evidence) -> Result<Claims, String>;
}

/// What the peer proved: verified claims and the role the policy granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The verified claims from the peer's evidence.
    pub claims: Claims,
    /// The role the policy granted.
    pub role: Role,
}

/// Why [`AttestedVerifier::verify_certificate_detailed`] refused a certificate.
#[derive(Debug)]
pub struct Refusal {
    /// The reason.
    pub error: RatlsError,
    /// The verified claims, when only the policy refused (the evidence itself verified).
    pub claims: Option<Box<Claims>>,
}

impl From<RatlsError> for Refusal {
    fn from(error: RatlsError) -> Self {
        Refusal {
            error,
            claims: None,
        }
    }
}

/// What [`AttestedVerifier::verified_claims`] established.
enum Verified {
    /// A certificate verified (policy included) within the cache TTL.
    Cached(PeerIdentity),
    /// Fresh claims and the certificate's cache key; the policy is still to be applied.
    Fresh([u8; 32], Claims),
}

/// The verification shared by [`AttestedServerVerifier`] and [`AttestedClientVerifier`], with a
/// cache of verified certificates (keyed by SHA-256 of the DER certificate) so that the
/// application can look up the peer's identity after the handshake and repeated handshakes with
/// the same certificate skip evidence verification for a while.
pub struct AttestedVerifier {
    evidence_verifier: Arc<dyn EvidenceVerifier>,
    policy: Arc<Policy>,
    algorithms: WebPkiSupportedAlgorithms,
    cache_ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], (Instant, PeerIdentity)>>,
}

impl fmt::Debug for AttestedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttestedVerifier")
            .field("evidence_verifier", &self.evidence_verifier)
            .field("roles", &self.policy.roles().collect::<Vec<_>>())
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl AttestedVerifier {
    /// A verifier that checks evidence with `evidence_verifier` and grants roles by `policy`.
    pub fn new(evidence_verifier: Arc<dyn EvidenceVerifier>, policy: Arc<Policy>) -> Self {
        AttestedVerifier {
            evidence_verifier,
            policy,
            algorithms: crypto_provider().signature_verification_algorithms,
            cache_ttl: DEFAULT_CACHE_TTL,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Sets how long a verified certificate is trusted without re-verifying its evidence
    /// (validity period and handshake signature are always checked). Zero disables reuse; the
    /// result is still recorded for [`peer`](Self::peer).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache_ttl = ttl;
        self
    }

    /// Verifies an end-entity certificate at `now`: validity period, evidence, binding, policy.
    pub fn verify_certificate(
        &self,
        end_entity: &[u8],
        now: UnixTime,
    ) -> Result<PeerIdentity, RatlsError> {
        self.verify_certificate_detailed(end_entity, now)
            .map_err(|refusal| refusal.error)
    }

    /// [`Self::verify_certificate`], but a refusal keeps the claims when the evidence itself
    /// verified and only the policy refused: an audit record can then name who was refused.
    pub fn verify_certificate_detailed(
        &self,
        end_entity: &[u8],
        now: UnixTime,
    ) -> Result<PeerIdentity, Refusal> {
        let (key, claims) = match self.verified_claims(end_entity, now)? {
            Verified::Cached(hit) => return Ok(hit),
            Verified::Fresh(key, claims) => (key, claims),
        };
        let role = match self.policy.evaluate(&claims) {
            Ok(role) => role,
            Err(denial) => {
                return Err(Refusal {
                    error: denial.into(),
                    claims: Some(Box::new(claims)),
                })
            }
        };
        let identity = PeerIdentity { claims, role };
        self.remember(key, identity.clone());
        Ok(identity)
    }

    /// Validity period, evidence and binding: everything but the policy.
    fn verified_claims(&self, end_entity: &[u8], now: UnixTime) -> Result<Verified, RatlsError> {
        let (rest, cert) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|e| RatlsError::Certificate(format!("not a DER X.509 certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(RatlsError::Certificate(
                "trailing bytes after the certificate".into(),
            ));
        }
        let at = x509_parser::time::ASN1Time::from_timestamp(now.as_secs() as i64)
            .map_err(|e| RatlsError::Certificate(format!("bad current time: {e}")))?;
        let validity = cert.validity();
        if at < validity.not_before {
            return Err(RatlsError::Certificate(format!(
                "not valid before {}",
                validity.not_before
            )));
        }
        if at > validity.not_after {
            return Err(RatlsError::Certificate(format!(
                "expired at {}",
                validity.not_after
            )));
        }

        let key: [u8; 32] = Sha256::digest(end_entity).into();
        if let Some(hit) = self.cached(&key) {
            return Ok(Verified::Cached(hit));
        }

        let decoded = extension_of(&cert)?;
        let spki = cert.public_key().raw;
        binding::check_pubkey_claim(&decoded, spki)?;
        let claims = self
            .evidence_verifier
            .verify(&decoded.evidence)
            .map_err(RatlsError::Evidence)?;
        if claims.tee != decoded.evidence.tee {
            return Err(RatlsError::Evidence(format!(
                "the verifier reported {} claims for {} evidence",
                claims.tee, decoded.evidence.tee
            )));
        }
        binding::check_report_data(&decoded, spki, &claims.report_data.0)?;
        Ok(Verified::Fresh(key, claims))
    }

    fn cached(&self, key: &[u8; 32]) -> Option<PeerIdentity> {
        if self.cache_ttl.is_zero() {
            return None;
        }
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.cache_ttl)
            .map(|(_, id)| id.clone())
    }

    fn remember(&self, key: [u8; 32], identity: PeerIdentity) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHE_ENTRIES {
            let keep = self.cache_ttl.max(Duration::from_secs(60));
            cache.retain(|_, (at, _)| at.elapsed() < keep);
            if cache.len() >= MAX_CACHE_ENTRIES {
                if let Some(oldest) = cache.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| *k) {
                    cache.remove(&oldest);
                }
            }
        }
        cache.insert(key, (Instant::now(), identity));
    }

    /// The identity this verifier established for a connection's peer, from the connection's
    /// `peer_certificates()`. `None` when the certificate was not verified by this verifier.
    pub fn peer(&self, peer_certificates: Option<&[CertificateDer<'_>]>) -> Option<PeerIdentity> {
        let end_entity = peer_certificates?.first()?;
        let key: [u8; 32] = Sha256::digest(end_entity).into();
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&key).map(|(_, id)| id.clone())
    }

    fn verify_for_rustls(
        &self,
        end_entity: &CertificateDer<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        self.verify_certificate(end_entity, now)
            .map(|_| ())
            .map_err(Into::into)
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A rustls server-certificate verifier for attested servers (used by clients).
#[derive(Debug, Clone)]
pub struct AttestedServerVerifier(Arc<AttestedVerifier>);

impl AttestedServerVerifier {
    /// Wraps `verifier`; keep a clone of the `Arc` to look up peers after handshakes.
    pub fn new(verifier: Arc<AttestedVerifier>) -> Self {
        AttestedServerVerifier(verifier)
    }

    /// The shared verifier (for [`AttestedVerifier::peer`]).
    pub fn verifier(&self) -> &Arc<AttestedVerifier> {
        &self.0
    }
}

impl ServerCertVerifier for AttestedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.verify_for_rustls(end_entity, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.schemes()
    }
}

/// A rustls client-certificate verifier for attested clients (used by servers).
///
/// [`AttestedClientVerifier::new`] checks the client's attestation during the handshake and
/// makes a client certificate mandatory. [`AttestedClientVerifier::deferred`] checks only that
/// the client holds the key of the certificate it presents (the handshake signature) and lets
/// clients without a certificate in: the application **must** then call
/// [`AttestedVerifier::verify_certificate`] on the peer certificate after the handshake and
/// refuse every request when it fails. Deferring lets a server answer a refused client with
/// its reason (e.g. "measurement not allowed by any role") in a protocol error the client can
/// show, instead of a bare TLS alert, and record the refusal with the reason.
#[derive(Debug, Clone)]
pub struct AttestedClientVerifier {
    verifier: Arc<AttestedVerifier>,
    deferred: bool,
}

impl AttestedClientVerifier {
    /// Checks attestation in the handshake; keep a clone of the `Arc` to look up peers after
    /// handshakes.
    pub fn new(verifier: Arc<AttestedVerifier>) -> Self {
        AttestedClientVerifier {
            verifier,
            deferred: false,
        }
    }

    /// Leaves the attestation check to the application, after the handshake.
    pub fn deferred(verifier: Arc<AttestedVerifier>) -> Self {
        AttestedClientVerifier {
            verifier,
            deferred: true,
        }
    }

    /// The shared verifier (for [`AttestedVerifier::peer`]).
    pub fn verifier(&self) -> &Arc<AttestedVerifier> {
        &self.verifier
    }
}

impl ClientCertVerifier for AttestedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.deferred
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !self.deferred {
            self.verifier.verify_for_rustls(end_entity, now)?;
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.schemes()
    }
}

/// Like [`server_config`], but the client's attestation is checked by the application after
/// the handshake (see [`AttestedClientVerifier::deferred`]), so refused clients can be told why.
///
/// `certificates` chooses the server's certificate for each handshake, so that a long-running
/// server can renew its attested certificate (see [`attested_certificate`]) before it expires.
pub fn server_config_deferred_client_check(
    certificates: Arc<dyn rustls::server::ResolvesServerCert>,
    verifier: Arc<AttestedVerifier>,
) -> Result<rustls::ServerConfig, RatlsError> {
    tls13_server(AttestedClientVerifier::deferred(verifier), certificates)
}

fn tls13_server(
    clients: AttestedClientVerifier,
    certificates: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<rustls::ServerConfig, RatlsError> {
    let config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(clients))
        .with_cert_resolver(certificates);
    Ok(config)
}

/// A TLS 1.3-only server configuration presenting `identity` and requiring attested clients.
pub fn server_config(
    identity: &AttestedIdentity,
    verifier: Arc<AttestedVerifier>,
) -> Result<rustls::ServerConfig, RatlsError> {
    tls13_server(
        AttestedClientVerifier::new(verifier),
        Arc::new(rustls::sign::SingleCertAndKey::from(
            identity.certified_key(),
        )),
    )
}

/// A TLS 1.3-only server configuration presenting the certificates `certificates` resolves and
/// asking clients for none: for a server whose clients run outside any TEE (the host-side
/// `coffer kms bridge`), so have no evidence to present.
pub fn server_config_without_client_auth(
    certificates: Arc<dyn rustls::server::ResolvesServerCert>,
) -> Result<rustls::ServerConfig, RatlsError> {
    let config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    Ok(config)
}

/// A TLS 1.3-only client configuration that requires an attested server and presents no
/// certificate: for clients outside any TEE (the host-side `coffer kms bridge`).
pub fn client_config_without_identity(
    verifier: Arc<AttestedVerifier>,
) -> Result<rustls::ClientConfig, RatlsError> {
    let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AttestedServerVerifier::new(verifier)))
        .with_no_client_auth();
    Ok(config)
}

/// A TLS 1.3-only client configuration presenting `identity` and requiring an attested server.
pub fn client_config(
    identity: &AttestedIdentity,
    verifier: Arc<AttestedVerifier>,
) -> Result<rustls::ClientConfig, RatlsError> {
    let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AttestedServerVerifier::new(verifier)))
        .with_client_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(
            identity.certified_key(),
        )));
    Ok(config)
}

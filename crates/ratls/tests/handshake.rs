//! Attested TLS over real TCP on 127.0.0.1 (tokio-rustls, TLS 1.3).

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use coffer_platform::{Evidence, TeeType};
use coffer_ratls::{
    attested_certificate, attested_certificate_with_validity, client_config,
    evidence_from_certificate, extension, server_config, AttestedIdentity, AttestedVerifier,
    EvidenceVerifier, RatlsError,
};
use common::*;
use rustls::pki_types::{ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

struct Outcome {
    client: Result<Option<coffer_ratls::PeerIdentity>, String>,
    server: Result<Option<coffer_ratls::PeerIdentity>, String>,
}

/// Runs one handshake: the server presents `server_id` and checks clients with `server_v`; the
/// client presents `client_id` and checks the server with `client_v`. Each side echoes a line.
async fn handshake(
    server_id: &AttestedIdentity,
    server_v: Arc<AttestedVerifier>,
    client_id: &AttestedIdentity,
    client_v: Arc<AttestedVerifier>,
) -> Outcome {
    let acceptor = TlsAcceptor::from(Arc::new(
        server_config(server_id, server_v.clone()).unwrap(),
    ));
    let connector = TlsConnector::from(Arc::new(
        client_config(client_id, client_v.clone()).unwrap(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();

    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = server_v.peer(tls.get_ref().1.peer_certificates());
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(&buf).await.map_err(|e| e.to_string())?;
        tls.shutdown().await.ok();
        Ok::<_, String>(peer)
    });

    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = ServerName::try_from("coffer.invalid").unwrap();
        let mut tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(
            tls.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let peer = client_v.peer(tls.get_ref().1.peer_certificates());
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"hello");
        Ok::<_, String>(peer)
    }
    .await;
    let server = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server timed out")
        .unwrap();
    Outcome { client, server }
}

#[tokio::test]
async fn mutual_handshake_with_sim_evidence() {
    let server_platform = TestSimPlatform::new();
    let client_platform = TestSimPlatform::new();
    let server_id = attested_certificate(&server_platform).unwrap();
    let client_id = attested_certificate(&client_platform).unwrap();
    let server_v = sim_verifier("workload:test", true);
    let client_v = sim_verifier("keyd", true);

    let out = handshake(&server_id, server_v, &client_id, client_v).await;
    let server_sees = out
        .server
        .unwrap_or_else(|e| panic!("server: {e}; client: {:?}", out.client.as_ref().err()))
        .expect("server knows the client");
    let client_sees = out.client.unwrap().expect("client knows the server");
    assert_eq!(server_sees.role.name, "workload:test");
    assert_eq!(client_sees.role.name, "keyd");
    assert_eq!(server_sees.claims.tee, TeeType::Sim);
    match &client_sees.claims.measurements {
        coffer_attest::Measurements::Sim { signer, .. } => {
            assert_eq!(signer.0, server_platform.signer())
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn evidence_bound_to_another_key_is_refused() {
    let platform = TestSimPlatform::new();
    let honest = attested_certificate(&platform).unwrap();
    // Certificate B: a new key, carrying A's (genuine, correctly signed) evidence.
    let stolen = attested_certificate(&FixedPlatform(honest.evidence().clone())).unwrap();
    let client_id = attested_certificate(&TestSimPlatform::new()).unwrap();

    let out = handshake(
        &stolen,
        sim_verifier("workload:test", true),
        &client_id,
        sim_verifier("keyd", true),
    )
    .await;
    let err = out.client.unwrap_err();
    assert!(err.contains("evidence binding"), "{err}");
    assert!(err.contains("the evidence belongs to another key"), "{err}");
    assert!(out.server.is_err());

    // And the same certificate used as a client certificate is refused by the server.
    let server_id = attested_certificate(&TestSimPlatform::new()).unwrap();
    let out = handshake(
        &server_id,
        sim_verifier("workload:test", true),
        &stolen,
        sim_verifier("keyd", true),
    )
    .await;
    let err = out.server.unwrap_err();
    assert!(err.contains("the evidence belongs to another key"), "{err}");
}

#[tokio::test]
async fn sim_certificate_refused_without_allow_simulation() {
    let server_id = attested_certificate(&TestSimPlatform::new()).unwrap();
    let client_id = attested_certificate(&TestSimPlatform::new()).unwrap();

    // Client refuses the server.
    let out = handshake(
        &server_id,
        sim_verifier("workload:test", true),
        &client_id,
        sim_verifier("keyd", false),
    )
    .await;
    let err = out.client.unwrap_err();
    assert!(
        err.contains("attestation policy refused the peer: simulation evidence refused: allow_simulation is false"),
        "{err}"
    );

    // Server refuses the client.
    let out = handshake(
        &server_id,
        sim_verifier("workload:test", false),
        &client_id,
        sim_verifier("keyd", true),
    )
    .await;
    let err = out.server.unwrap_err();
    assert!(err.contains("allow_simulation is false"), "{err}");
    assert!(out.client.is_err());
}

#[tokio::test]
async fn policy_mismatch_names_the_role_and_rule() {
    let mut platform = TestSimPlatform::new();
    platform.measurement = [0x99; 32];
    let server_id = attested_certificate(&platform).unwrap();
    let client_id = attested_certificate(&TestSimPlatform::new()).unwrap();
    let out = handshake(
        &server_id,
        sim_verifier("workload:test", true),
        &client_id,
        sim_verifier("keyd", true),
    )
    .await;
    let err = out.client.unwrap_err();
    assert!(
        err.contains(&format!(
            "role keyd: sim measurement {} is not accepted",
            hex::encode([0x99; 32])
        )),
        "{err}"
    );
}

#[test]
fn certificate_shape_and_validity() {
    let id = attested_certificate(&TestSimPlatform::new()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(id.certificate()).unwrap();
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "coffer attested"
    );
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "2.23.133.5.4.9")
        .unwrap();
    assert!(!ext.critical, "webpki refuses unknown critical extensions");
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 24 * 3600 + 300);
    let report_data = coffer_ratls::report_data_for_spki(cert.public_key().raw);
    let decoded = evidence_from_certificate(id.certificate()).unwrap();
    assert_eq!(&decoded.evidence.report[54..118], &report_data[..]);
    assert_eq!(decoded.tag, extension::TAG_COFFER_SIM);

    // Validity period is enforced.
    let v = sim_verifier("x", true);
    let short =
        attested_certificate_with_validity(&TestSimPlatform::new(), Duration::from_secs(60))
            .unwrap();
    let later = UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            + Duration::from_secs(3600),
    );
    let e = v
        .verify_certificate(short.certificate(), later)
        .unwrap_err();
    assert!(e.to_string().contains("expired at"), "{e}");
    let earlier = UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            - Duration::from_secs(3600),
    );
    let e = v
        .verify_certificate(short.certificate(), earlier)
        .unwrap_err();
    assert!(e.to_string().contains("not valid before"), "{e}");
    assert!(v
        .verify_certificate(short.certificate(), UnixTime::now())
        .is_ok());
}

#[test]
fn plain_certificate_without_evidence_is_refused() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["x".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let e = sim_verifier("x", true)
        .verify_certificate(cert.der(), UnixTime::now())
        .unwrap_err();
    assert!(e.to_string().contains("no evidence extension"), "{e}");
}

use coffer_test_fixtures::attestation_dir as fixtures;

/// `coffer_attest::verify` as an [`EvidenceVerifier`], at a fixed time with a collateral directory.
#[derive(Debug)]
struct RealVerifier {
    now: SystemTime,
    collateral_dir: PathBuf,
    file: &'static str,
}

impl EvidenceVerifier for RealVerifier {
    fn verify(&self, evidence: &Evidence) -> Result<coffer_attest::Claims, String> {
        let mut opts = coffer_attest::VerifyOptions::new(self.now);
        opts.collateral = Arc::new(coffer_attest::CollateralDir::with_file(
            self.collateral_dir.clone(),
            self.file,
        ));
        coffer_attest::verify(evidence, &opts).map_err(|e| e.to_string())
    }
}

#[test]
fn real_sgx_quote_round_trips_and_is_refused_for_its_binding() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let dir = fixtures().join("sgx");
    let quote = std::fs::read(dir.join("sgx_quote")).expect("fixture sgx_quote");
    let evidence = Evidence {
        tee: TeeType::Sgx,
        report: quote,
        certificates: vec![],
    };
    let id = attested_certificate(&FixedPlatform(evidence.clone())).unwrap();
    let decoded = evidence_from_certificate(id.certificate()).unwrap();
    assert_eq!(decoded.evidence, evidence, "quote comes back intact");
    assert_eq!(decoded.tag, extension::TAG_INTEL_TEE_QUOTE);

    // 2025-06-19T12:00:00Z: inside the fixture collateral's window.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_334_400);
    let real = RealVerifier {
        now,
        collateral_dir: dir,
        file: "sgx_quote_collateral.json",
    };
    // The genuine quote verifies...
    let claims = real.verify(&evidence).expect("fixture quote verifies");
    assert_eq!(claims.tee, TeeType::Sgx);
    // ...but it does not commit to this certificate's key.
    let policy = Arc::new(
        coffer_attest::policy::Policy::from_yaml(&format!(
            "version: 1\naccepted_tcb_statuses: [ConfigurationAndSWHardeningNeeded]\nroles:\n  - name: any\n    sgx: {{ mr_enclave: [\"{}\"] }}\n",
            match &claims.measurements {
                coffer_attest::Measurements::Sgx { mr_enclave, .. } => hex::encode(&mr_enclave.0),
                _ => unreachable!(),
            }
        ))
        .unwrap(),
    );
    let v = AttestedVerifier::new(Arc::new(real), policy);
    let e = v
        .verify_certificate(id.certificate(), UnixTime::now())
        .unwrap_err();
    assert!(matches!(e, RatlsError::Binding(_)), "{e}");
    assert!(e.to_string().contains("belongs to another key"), "{e}");
}

/// CBOR head (RFC 8949 §3), shortest form: enough to write Gramine's extension by hand.
fn cbor_head(out: &mut Vec<u8>, major: u8, value: u64) {
    let m = major << 5;
    match value {
        0..=23 => out.push(m | value as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, value as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(value as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 26);
            out.extend_from_slice(&(value as u32).to_be_bytes());
        }
    }
}

fn cbor_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    cbor_head(out, 2, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A certificate built as Gramine v1.8's `ra_tls_create_key_and_crt_der()` builds one: a P-384
/// key, subject `CN=RATLS,O=GramineDevelopers,C=US`, and a non-critical extension
/// 2.23.133.5.4.9 holding `#6.60000([quote, claims])` with claims `{"pubkey-hash": bstr .cbor
/// [1, SHA-256(SPKI)]}`. `spki_for_claim` is the key the claim names (normally the cert's own).
fn gramine_certificate(quote: &[u8], spki_for_claim: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    use rcgen::PublicKeyData;
    use sha2::{Digest, Sha256};
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let spki = key.subject_public_key_info();
    let mut entry = Vec::new();
    cbor_head(&mut entry, 4, 2);
    cbor_head(&mut entry, 0, 1);
    cbor_bytes(&mut entry, &Sha256::digest(spki_for_claim.unwrap_or(&spki)));
    let mut claims = Vec::new();
    cbor_head(&mut claims, 5, 1);
    cbor_head(&mut claims, 3, 11);
    claims.extend_from_slice(b"pubkey-hash");
    cbor_bytes(&mut claims, &entry);
    let mut ext = Vec::new();
    cbor_head(&mut ext, 6, extension::TAG_GRAMINE_TEE_QUOTE);
    cbor_head(&mut ext, 4, 2);
    cbor_bytes(&mut ext, quote);
    cbor_bytes(&mut ext, &claims);

    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "RATLS");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "GramineDevelopers");
    params
        .distinguished_name
        .push(rcgen::DnType::CountryName, "US");
    let mut custom = rcgen::CustomExtension::from_oid_content(extension::EVIDENCE_OID, ext);
    custom.set_criticality(false);
    params.custom_extensions.push(custom);
    let cert = params.self_signed(&key).unwrap();
    (cert.der().to_vec(), claims)
}

#[test]
fn gramine_certificate_with_a_real_quote_is_verified_and_refused_for_its_claims() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let dir = fixtures().join("sgx");
    let quote = std::fs::read(dir.join("sgx_quote")).expect("fixture sgx_quote");
    let (cert, claims) = gramine_certificate(&quote, None);
    let decoded = evidence_from_certificate(&cert).unwrap();
    assert_eq!(decoded.tag, extension::TAG_GRAMINE_TEE_QUOTE);
    assert_eq!(decoded.evidence.tee, TeeType::Sgx);
    assert_eq!(decoded.evidence.report, quote);
    let claims_hash: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(&claims).into()
    };
    assert_eq!(
        decoded.binding,
        extension::Binding::ClaimsSha256(claims_hash)
    );

    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_334_400);
    let real = RealVerifier {
        now,
        collateral_dir: dir.clone(),
        file: "sgx_quote_collateral.json",
    };
    let claims = real
        .verify(&decoded.evidence)
        .expect("fixture quote verifies");
    let policy = Arc::new(
        coffer_attest::policy::Policy::from_yaml(&format!(
            "version: 1\naccepted_tcb_statuses: [ConfigurationAndSWHardeningNeeded]\nroles:\n  - name: any\n    sgx: {{ mr_enclave: [\"{}\"] }}\n",
            match &claims.measurements {
                coffer_attest::Measurements::Sgx { mr_enclave, .. } => hex::encode(&mr_enclave.0),
                _ => unreachable!(),
            }
        ))
        .unwrap(),
    );
    // The genuine quote verifies with DCAP, but its report data is not SHA-256 of these claims:
    // a quote lifted from one Gramine certificate does not vouch for another key.
    let v = AttestedVerifier::new(Arc::new(real), policy.clone());
    let e = v.verify_certificate(&cert, UnixTime::now()).unwrap_err();
    assert!(matches!(e, RatlsError::Binding(_)), "{e}");
    assert!(e.to_string().contains("belongs to other claims"), "{e}");

    // A pubkey-hash naming another key is refused before the quote is even verified.
    let (other, _) = gramine_certificate(&quote, Some(b"some other key"));
    let never = RealVerifier {
        now: SystemTime::UNIX_EPOCH,
        collateral_dir: dir,
        file: "sgx_quote_collateral.json",
    };
    let e = AttestedVerifier::new(Arc::new(never), policy)
        .verify_certificate(&other, UnixTime::now())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("pubkey-hash claim does not match the certificate's public key"),
        "{e}"
    );
}

#[tokio::test]
async fn real_sim_platform_mutual_handshake() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server_platform = coffer_platform::sim::SimPlatform::open_or_create(dirs.0.path()).unwrap();
    let client_platform = coffer_platform::sim::SimPlatform::open_or_create(dirs.1.path()).unwrap();
    let server_id = attested_certificate(&server_platform).unwrap();
    let client_id = attested_certificate(&client_platform).unwrap();
    let measurement = hex::encode(coffer_platform::sim::executable_measurement().unwrap());
    let policy = |role: &str| {
        Arc::new(
            coffer_attest::policy::Policy::from_yaml(&format!(
                "version: 1\nallow_simulation: true\nroles:\n  - name: {role}\n    sim: {{ measurement: [\"{measurement}\"] }}\n"
            ))
            .unwrap(),
        )
    };
    let verifier = |role: &str| {
        Arc::new(AttestedVerifier::new(
            Arc::new(coffer_ratls::OfflineVerifier::new(
                coffer_attest::VerifyOptions::new(SystemTime::now()),
            )),
            policy(role),
        ))
    };
    let out = handshake(
        &server_id,
        verifier("kms-plugin"),
        &client_id,
        verifier("keyd"),
    )
    .await;
    let server_sees = out.server.unwrap().expect("server knows the client");
    let client_sees = out.client.unwrap().expect("client knows the server");
    assert_eq!(server_sees.role.name, "kms-plugin");
    assert_eq!(client_sees.role.name, "keyd");
    match &client_sees.claims.measurements {
        coffer_attest::Measurements::Sim { signer, .. } => {
            assert_eq!(
                signer.0,
                server_platform.attestation_public_key().unwrap().to_vec()
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_private_key_lives_on_locked_memory_and_is_never_printed() {
    let id = attested_certificate(&TestSimPlatform::new()).unwrap();
    // rustls signs with the locked key itself, not with a heap copy of it.
    let signer = format!("{:?}", id.certified_key().key);
    assert!(signer.starts_with("LockedSigningKey("), "{signer}");
    assert!(
        id.key().is_locked() || coffer_platform::secret::lock_failures() > 0,
        "the key is on locked pages unless mlock was refused (which is counted)"
    );
    let der = match id.private_key_der() {
        rustls::pki_types::PrivateKeyDer::Pkcs8(der) => der.secret_pkcs8_der().to_vec(),
        other => panic!("{other:?}"),
    };
    let hex_der = hex::encode(&der);
    for shown in [signer, format!("{id:?}"), format!("{:?}", id.key())] {
        assert!(
            shown.contains("redacted") || !shown.contains("Locked"),
            "{shown}"
        );
        assert!(!shown.contains(&hex_der[..32]), "{shown}");
        assert!(!shown.contains(&format!("{:?}", &der[..16])), "{shown}");
    }
    // The certificate's public key is the locked key's.
    let (_, cert) = x509_parser::parse_x509_certificate(id.certificate()).unwrap();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &der,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        ring::signature::KeyPair::public_key(&pair).as_ref()
    );
}

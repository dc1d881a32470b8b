//! Attacks on a real `coffer keyd serve` process over real TCP: callers that lack attestation,
//! present evidence the policy refuses, replay someone else's evidence, or hold a role for
//! another keyring. Each is refused with its reason in the client's error and an audit record
//! in keyd, and nothing is ever unwrapped for it.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use coffer_keyd_client::pb::key_service_client::KeyServiceClient;
use coffer_keyd_client::{pb, KeydClient, KeydClientOptions};
use coffer_platform::sim::SimPlatform;
use coffer_platform::{Evidence, Platform, PlatformError, PlatformKind, SealingKey};
use coffer_ratls::{AttestedServerVerifier, AttestedVerifier, OfflineVerifier};
use common::keyd::{
    audit_records, client_options, create_keyd_data, free_addr, keyd_policy,
    raw_key_service_client, sim_signer, KeydProcess,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::Channel;

/// A platform that puts evidence captured from another TLS key into its certificates: the
/// replay of a legitimate caller's attestation.
#[derive(Debug)]
struct ReplayPlatform {
    stolen: Evidence,
}

impl Platform for ReplayPlatform {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Sim
    }
    fn sealing_key(&self, _purpose: &str) -> Result<SealingKey, PlatformError> {
        Err(PlatformError::UnsealFailed)
    }
    fn evidence(&self, _report_data: &[u8; 64]) -> Result<Evidence, PlatformError> {
        Ok(self.stolen.clone())
    }
}

/// A gRPC client over TLS with `client_auth` (or none), checking keyd's attestation.
async fn raw_client(
    addr: SocketAddr,
    keyd_signer: &str,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> KeyServiceClient<Channel> {
    let verifier = Arc::new(AttestedVerifier::new(
        Arc::new(OfflineVerifier::new(coffer_attest::VerifyOptions::new(
            SystemTime::now(),
        ))),
        Arc::new(keyd_policy(keyd_signer, true)),
    ));
    let builder = rustls::ClientConfig::builder_with_provider(coffer_ratls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AttestedServerVerifier::new(verifier)));
    let config = match client_auth {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
    };
    raw_key_service_client(addr, config).await
}

fn unwrap_request(ciphertext: &[u8], key_id: &str) -> pb::UnwrapRequest {
    pb::UnwrapRequest {
        keyring: "cluster-a".into(),
        key_id: key_id.into(),
        ciphertext: ciphertext.to_vec(),
    }
}

/// Asserts that keyd audited a refusal whose reason contains `reason`, at connect and for the
/// call.
fn assert_audited_refusal(data: &Path, event: &str, reason: &str) {
    let records = audit_records(data);
    let matching = |e: &str| {
        records.iter().any(|r| {
            r["event"] == e
                && r["result"] == "denied"
                && r["reason"].as_str().unwrap_or("").contains(reason)
        })
    };
    assert!(
        matching("connect") && matching(event),
        "no audited refusal {event:?} with {reason:?}: {records:#?}"
    );
}

/// Asserts that keyd refused a call with PERMISSION_DENIED naming `reason`, and audited it.
fn assert_refused(data: &Path, status: &tonic::Status, reason: &str) {
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains(reason), "{}", status.message());
    assert_audited_refusal(data, "unwrap", reason);
}

/// Connects as `options` describes and tries to unwrap; returns keyd's answer, which must be an
/// error.
async fn try_unwrap(
    addr: SocketAddr,
    options: KeydClientOptions,
    key_id: &str,
    ciphertext: &[u8],
) -> tonic::Status {
    let err = KeydClient::connect(addr, options)
        .await
        .unwrap()
        .unwrap("cluster-a", Some(key_id), ciphertext)
        .await
        .expect_err("keyd unwrapped for a caller it should refuse");
    err.status().expect("a gRPC status").clone()
}

fn write(path: &Path, text: &str) -> std::path::PathBuf {
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyd_refuses_every_unentitled_caller_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["cluster-a", "cluster-b"]);
    let (a, b, measured, debug) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("m"),
        dir.path().join("d"),
    );
    let policy = write(
        &dir.path().join("policy.yaml"),
        &format!(
            "version: 1\nallow_simulation: true\nroles:\n  - name: kms-plugin:a\n    sim: {{ signer: [\"{}\"] }}\n  - name: kms-plugin:b\n    sim: {{ signer: [\"{}\"] }}\n  - name: kms-plugin:m\n    sim: {{ signer: [\"{}\"], measurement: [\"{}\"] }}\n  - name: kms-plugin:d\n    sim: {{ signer: [\"{}\"] }}\n",
            sim_signer(&a),
            sim_signer(&b),
            sim_signer(&measured),
            "ab".repeat(32),
            sim_signer(&debug),
        ),
    );
    let config = write(
        &dir.path().join("keyd.yaml"),
        "keyrings:\n  cluster-a:\n    wrap: [\"kms-plugin:a\", \"kms-plugin:m\", \"kms-plugin:d\"]\n    unwrap: [\"kms-plugin:a\", \"kms-plugin:m\", \"kms-plugin:d\"]\n  cluster-b:\n    unwrap: [\"kms-plugin:b\"]\n",
    );
    let keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &[]);
    let signer = keyd.signer();

    // The legitimate caller wraps a DEK seed: the target of every attack below.
    let mut legit = KeydClient::connect(keyd.addr, client_options(&a, &signer))
        .await
        .unwrap();
    let (ciphertext, key_id) = legit.wrap("cluster-a", &[0x42; 32]).await.unwrap();

    // 1. No client certificate at all.
    let mut c = raw_client(keyd.addr, &signer, None).await;
    let status = c
        .unwrap(unwrap_request(&ciphertext, &key_id))
        .await
        .unwrap_err();
    assert_refused(&data, &status, "presented no certificate");

    // 2. An ordinary TLS certificate without attestation evidence.
    let plain = rcgen::generate_simple_self_signed(vec!["client.example".to_string()]).unwrap();
    let mut c = raw_client(
        keyd.addr,
        &signer,
        Some((
            vec![plain.cert.der().clone()],
            PrivateKeyDer::Pkcs8(plain.signing_key.serialize_der().into()),
        )),
    )
    .await;
    let status = c
        .unwrap(unwrap_request(&ciphertext, &key_id))
        .await
        .unwrap_err();
    assert_refused(&data, &status, "evidence extension");

    // 3. Evidence for a different measurement than the role pins.
    let options = client_options(&measured, &signer);
    let status = try_unwrap(keyd.addr, options, &key_id, &ciphertext).await;
    assert_refused(&data, &status, "measurement");
    // The policy refused verified evidence: the records name the verified measurement as a
    // field, not only inside the reason text.
    let records = audit_records(&data);
    let refused: Vec<_> = records
        .iter()
        .filter(|r| {
            r["result"] == "denied" && r["reason"].as_str().unwrap_or("").contains("measurement")
        })
        .collect();
    assert!(refused.len() >= 2, "{records:#?}");
    for r in refused {
        let measurement = r["caller"]["measurement"].as_str().unwrap();
        assert_eq!(measurement.len(), 64, "{r:#}");
        assert_eq!(r["caller"]["tee"], "sim", "{r:#}");
        assert!(r["reason"].as_str().unwrap().contains(measurement), "{r:#}");
    }

    // 4. A debug-mode TEE (the sim platform posing as one): refused although its signer has a
    // role.
    let mut options = client_options(&debug, &signer);
    options.platform = Arc::new(
        SimPlatform::open_or_create(&debug)
            .unwrap()
            .with_debug(true),
    );
    let status = try_unwrap(keyd.addr, options, &key_id, &ciphertext).await;
    assert_refused(&data, &status, "debug");

    // 5. Replay: caller A's genuine evidence, presented with another TLS key.
    let stolen = coffer_ratls::attested_certificate(&SimPlatform::open_or_create(&a).unwrap())
        .unwrap()
        .evidence()
        .clone();
    let mut options = client_options(&a, &signer);
    options.platform = Arc::new(ReplayPlatform { stolen });
    let status = try_unwrap(keyd.addr, options, &key_id, &ciphertext).await;
    assert_refused(&data, &status, "another key");

    // 6. A genuine caller whose role belongs to another keyring.
    let status = try_unwrap(keyd.addr, client_options(&b, &signer), &key_id, &ciphertext).await;
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("kms-plugin:b") && status.message().contains("cluster-a"),
        "{}",
        status.message()
    );
    let records = audit_records(&data);
    assert!(records.iter().any(|r| r["event"] == "unwrap"
        && r["result"] == "denied"
        && r["caller"]["role"] == "kms-plugin:b"
        && r["keyring"] == "cluster-a"));

    // The batch call is held to the same rules: B's role gets nothing from cluster A, and a
    // batch must have 1 to 64 items.
    let identity = |state: &Path| {
        let id = coffer_ratls::attested_certificate(&SimPlatform::open_or_create(state).unwrap())
            .unwrap();
        Some((id.cert_chain(), id.private_key_der()))
    };
    let batch = |items: usize| pb::UnwrapBatchRequest {
        keyring: "cluster-a".into(),
        items: (0..items)
            .map(|_| pb::UnwrapItem {
                key_id: key_id.clone(),
                ciphertext: ciphertext.clone(),
            })
            .collect(),
    };
    let mut as_b = raw_client(keyd.addr, &signer, identity(&b)).await;
    let status = as_b.unwrap_batch(batch(3)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let mut as_a = raw_client(keyd.addr, &signer, identity(&a)).await;
    for items in [0, coffer_keyd_client::MAX_BATCH_ITEMS + 1] {
        let status = as_a.unwrap_batch(batch(items)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }

    // Nothing was ever unwrapped: the only successful unwrap is none at all (the legitimate
    // caller only wrapped).
    let unwrapped: Vec<_> = records
        .iter()
        .filter(|r| r["event"] == "unwrap" && r["result"] == "ok")
        .collect();
    assert!(unwrapped.is_empty(), "{unwrapped:#?}");
    // The legitimate caller still can.
    let plain = legit
        .unwrap("cluster-a", Some(&key_id), &ciphertext)
        .await
        .unwrap();
    assert_eq!(plain.as_slice(), &[0x42; 32]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyd_under_a_production_policy_refuses_simulated_callers() {
    let dir = tempfile::tempdir().unwrap();
    // Started with --init on an empty data directory, as a Deployment or a signed enclave
    // does: keyd initialises itself and creates the configured keyring.
    let data = dir.path().join("keyd");
    let caller = dir.path().join("caller");
    // Production: no simulation; the role names a real SGX enclave and the sim signer.
    let policy = write(
        &dir.path().join("policy.yaml"),
        &format!(
            "version: 1\nroles:\n  - name: kms-plugin:a\n    sgx: {{ mr_enclave: [\"{}\"] }}\n    sim: {{ signer: [\"{}\"] }}\n",
            "11".repeat(32),
            sim_signer(&caller)
        ),
    );
    let config = write(
        &dir.path().join("keyd.yaml"),
        "keyrings:\n  cluster-a:\n    wrap: [\"kms-plugin:a\"]\n    unwrap: [\"kms-plugin:a\"]\n",
    );
    let keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &["--init"]);
    let options: KeydClientOptions = client_options(&caller, &keyd.signer());
    let err = KeydClient::connect(keyd.addr, options)
        .await
        .unwrap()
        .wrap("cluster-a", &[1; 32])
        .await
        .unwrap_err();
    let status = err.status().unwrap();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("simulation"),
        "{}",
        status.message()
    );
    assert_audited_refusal(&data, "wrap", "simulation");
    assert!(!audit_records(&data)
        .iter()
        .any(|r| r["result"] == "ok" && r["event"] == "wrap"));
}

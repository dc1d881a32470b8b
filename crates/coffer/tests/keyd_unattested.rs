//! The keyd client's unattested mode (a workstation, no TEE): against a real `coffer keyd
//! serve` on the sim platform, keyd's attestation is still verified, calls keyd reserves for
//! attested callers are refused with keyd's reason, and bad requests never leave the client.

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keyd_client::{ClientError, KeydAddr, KeydClient};
use coffer_sealed::bundle::KeyBundle;
use coffer_sealed::{seal, Binding, Scope, SealedValue};
use common::keyd::{
    client_options, create_keyd_data, free_addr, location, sim_role_policy, KeydProcess,
};

/// A secret that must come back only to the attested, granted caller.
const SECRET: &[u8] = b"s3cr3t-db-password-41d9";

/// A policy for keyd's certificate: keyd's sim signer, with simulation allowed or not.
fn keyd_policy(signer: &str, allow_simulation: bool) -> Arc<Policy> {
    Arc::new(common::keyd::keyd_policy(signer, allow_simulation))
}

/// Asserts that keyd refused `err`'s call with gRPC status `code`.
fn assert_status_code(err: &ClientError, code: tonic::Code) {
    assert_eq!(err.status().map(|s| s.code()), Some(code), "{err}");
}

/// Asserts that keyd refused `err`'s call because the caller is not attested, and said so.
fn assert_refused_unattested(err: &ClientError) {
    let status = err
        .status()
        .unwrap_or_else(|| panic!("not a gRPC status: {err}"));
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(
        status.message().contains("presented no certificate"),
        "{}",
        status.message()
    );
}

fn start_keyd(dir: &std::path::Path) -> KeydProcess {
    let data = dir.join("keyd");
    create_keyd_data(&data, &["cluster-a"]);
    let policy = sim_role_policy(dir, "kms-plugin:a", &dir.join("a"));
    let config = dir.join("keyd.yaml");
    std::fs::write(
        &config,
        "keyrings:\n  cluster-a:\n    status: [\"kms-plugin:a\"]\n    unseal:\n      - role: \"kms-plugin:a\"\n        namespaces: [\"default\"]\n",
    )
    .unwrap();
    KeydProcess::start(&data, free_addr(), &policy, &config, &[])
}

#[tokio::test]
async fn unattested_client_fetches_the_bundle_and_reseals_and_only_granted_attested_callers_unseal()
{
    let dir = tempfile::tempdir().unwrap();
    let keyd = start_keyd(dir.path());
    let policy = keyd_policy(&keyd.signer(), true);

    // The connection works without a client certificate (keyd's host given by name) ...
    let addr: KeydAddr = format!("localhost:{}", keyd.addr.port()).parse().unwrap();
    let mut client =
        KeydClient::connect_unattested(addr, policy.clone(), VerifyOptions::new(SystemTime::now()))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", keyd.log_text()));

    // ... but a call keyd serves only to attested callers is refused, and keyd says why.
    let err = client.status("cluster-a").await.unwrap_err();
    assert_refused_unattested(&err);

    // The key bundle is served without attestation, and verifies against keyd's policy.
    let json = client.key_bundle("cluster-a").await.unwrap();
    let bundle = KeyBundle::from_json(&json).unwrap();
    bundle
        .verify(&policy, &VerifyOptions::new(SystemTime::now()))
        .unwrap();
    assert_eq!(bundle.keyring(), "cluster-a");
    let primary = bundle.primary().unwrap();

    // Reseal: a value sealed on the workstation comes back sealed to the newest key, with the
    // same binding.
    let at = location("default", "db", "password");
    let binding = Binding::new(Scope::Strict, &at).unwrap();
    let sealed = seal("cluster-a", &primary, &binding, SECRET)
        .unwrap()
        .to_text();
    let (resealed, key_id) = client.reseal("cluster-a", &sealed).await.unwrap();
    assert_eq!(key_id, primary.id());
    assert_ne!(resealed, sealed);
    let parsed = SealedValue::parse(&resealed).unwrap();
    assert_eq!(parsed.binding(), &binding);
    assert_eq!(parsed.key_id(), key_id);

    // keyd's refusals arrive as its status: an unknown keyring, a value that does not parse,
    // and Unseal, which needs an attested caller.
    let err = client.key_bundle("cluster-zz").await.unwrap_err();
    assert_status_code(&err, tonic::Code::NotFound);
    let err = client
        .reseal("cluster-a", "coffer.v1.AAAA")
        .await
        .unwrap_err();
    assert_status_code(&err, tonic::Code::InvalidArgument);
    let err = client
        .unseal("cluster-a", &resealed, &at)
        .await
        .unwrap_err();
    assert_refused_unattested(&err);
    assert!(!err.to_string().contains("s3cr3t"), "{err}");

    // The attested caller the keyring's unseal grant names opens it where it was bound, and
    // only there.
    let mut attested = KeydClient::connect(
        keyd.addr,
        client_options(&dir.path().join("a"), &keyd.signer()),
    )
    .await
    .unwrap();
    let plain = attested.unseal("cluster-a", &resealed, &at).await.unwrap();
    assert_eq!(plain.as_slice(), SECRET);
    let err = attested
        .unseal("cluster-a", &resealed, &location("default", "db", "user"))
        .await
        .unwrap_err();
    assert_status_code(&err, tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn unattested_client_refuses_a_keyd_its_policy_does_not_allow() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = start_keyd(dir.path());

    // keyd runs on the sim platform; a policy that refuses simulation refuses this keyd.
    let err = KeydClient::connect_unattested(
        keyd.addr,
        keyd_policy(&keyd.signer(), false),
        VerifyOptions::new(SystemTime::now()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Untrusted { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("keyd at {} is not trusted", keyd.addr))
            && text.contains("simulation evidence refused"),
        "{text}"
    );

    // A policy naming another keyd refuses it too.
    let err = KeydClient::connect_unattested(
        keyd.addr,
        keyd_policy(&"00".repeat(32), true),
        VerifyOptions::new(SystemTime::now()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Untrusted { .. }), "{err:?}");
}

#[tokio::test]
async fn bad_requests_are_refused_before_they_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = start_keyd(dir.path());
    let mut client = KeydClient::connect_unattested(
        keyd.addr,
        keyd_policy(&keyd.signer(), true),
        VerifyOptions::new(SystemTime::now()),
    )
    .await
    .unwrap();

    let err = client.key_bundle("Cluster_A").await.unwrap_err();
    assert!(matches!(err, ClientError::InvalidKeyringName(_)), "{err:?}");
    assert!(err.to_string().contains("invalid keyring name"), "{err}");

    let huge = format!(
        "{}{}",
        coffer_sealed::PREFIX,
        "A".repeat(coffer_sealed::MAX_SEALED_TEXT_LEN)
    );
    let err = client.reseal("cluster-a", &huge).await.unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err:?}");
    let err = client
        .unseal("cluster-a", &huge, &location("default", "db", "password"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { .. }), "{err:?}");
}

#[tokio::test]
async fn unreachable_and_unknown_hosts_are_connection_errors() {
    let policy = keyd_policy(&"00".repeat(32), true);
    let err = KeydClient::connect_unattested(
        free_addr(),
        policy.clone(),
        VerifyOptions::new(SystemTime::now()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err:?}");
    let addr: KeydAddr = "keyd.invalid:7443".parse().unwrap();
    let err = KeydClient::connect_unattested(addr, policy, VerifyOptions::new(SystemTime::now()))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("connecting to keyd at keyd.invalid:7443"),
        "{text}"
    );
}

//! The keyd client's unattested mode (a workstation, no TEE): against a real `coffer keyd
//! serve` on the sim platform, keyd's attestation is still verified, calls keyd reserves for
//! attested callers are refused with keyd's reason, and bad requests never leave the client.

mod common;

use std::sync::Arc;
use std::time::SystemTime;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keyd_client::{ClientError, KeydAddr, KeydClient};
use common::keyd::{create_keyd_data, free_addr, sim_role_policy, KeydProcess};

/// A policy for keyd's certificate: keyd's sim signer, with simulation allowed or not.
fn keyd_policy(signer: &str, allow_simulation: bool) -> Arc<Policy> {
    Arc::new(
        Policy::from_yaml(&format!(
            "version: 1\nallow_simulation: {allow_simulation}\nroles:\n  - name: keyd\n    sim: {{ signer: [\"{signer}\"] }}\n"
        ))
        .unwrap(),
    )
}

fn start_keyd(dir: &std::path::Path) -> KeydProcess {
    let data = dir.join("keyd");
    create_keyd_data(&data, &["cluster-a"]);
    let policy = sim_role_policy(dir, "kms-plugin:a", &dir.join("a"));
    let config = dir.join("keyd.yaml");
    std::fs::write(
        &config,
        "keyrings:\n  cluster-a:\n    status: [\"kms-plugin:a\"]\n",
    )
    .unwrap();
    KeydProcess::start(&data, free_addr(), &policy, &config, &[])
}

#[tokio::test]
async fn unattested_client_verifies_keyd_and_is_refused_attested_calls_with_keyds_reason() {
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
    let status = err
        .status()
        .unwrap_or_else(|| panic!("not a gRPC status: {err}"));
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{err}");
    assert!(
        status.message().contains("presented no certificate"),
        "{}",
        status.message()
    );

    // Calls for the key bundle reach keyd; before keyd serves them, the answer says so.
    match client.key_bundle("cluster-a").await {
        Ok(bundle) => assert!(!bundle.is_empty()),
        Err(ClientError::Unsupported { rpc, .. }) => assert_eq!(rpc, "GetKeyBundle"),
        Err(e) => panic!("unexpected error: {e}"),
    }
    let unsupported = ClientError::Unsupported {
        rpc: "Reseal",
        detail: String::new(),
    };
    assert_eq!(
        unsupported.to_string(),
        "keyd does not serve Reseal (UNIMPLEMENTED); upgrade keyd to a version that does"
    );
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
    let location = coffer_sealed::Location {
        namespace: "default".into(),
        secret: "db".into(),
        key: "password".into(),
    };
    let err = client
        .unseal("cluster-a", &huge, &location)
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

//! `coffer keyd serve` as a real process: callers over real TCP with mutual attested TLS get
//! exactly what the policy and the keyring ACL grant them.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_attest::policy::Policy;
use coffer_keyd::{KeydClient, KeydClientOptions};
use coffer_platform::sim::SimPlatform;
use common::{coffer, coffer_bin, signal, wait_timeout};

fn signer_of(state: &Path) -> String {
    hex::encode(
        SimPlatform::open_or_create(state)
            .unwrap()
            .attestation_public_key()
            .unwrap(),
    )
}

fn client(state: &Path, keyd_signer: &str) -> KeydClientOptions {
    let policy = format!(
        "version: 1\nallow_simulation: true\nroles:\n  - name: keyd\n    sim: {{ signer: [\"{keyd_signer}\"] }}\n"
    );
    KeydClientOptions {
        platform: Arc::new(SimPlatform::open_or_create(state).unwrap()),
        policy: Arc::new(Policy::from_yaml(&policy).unwrap()),
        verify_options: coffer_attest::VerifyOptions::new(std::time::SystemTime::now()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyd_process_serves_only_what_each_caller_is_granted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    for name in ["cluster-a", "cluster-b"] {
        let out = coffer(&[
            "keyd",
            "keyring",
            "create",
            name,
            "--platform",
            "sim",
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (a, b, stranger) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nallow_simulation: true\nroles:\n  - name: kms-plugin:a\n    sim: {{ signer: [\"{}\"] }}\n  - name: kms-plugin:b\n    sim: {{ signer: [\"{}\"] }}\n",
            signer_of(&a),
            signer_of(&b)
        ),
    )
    .unwrap();
    let config = dir.path().join("keyd.yaml");
    std::fs::write(
        &config,
        "keyrings:\n  cluster-a:\n    wrap: [\"kms-plugin:a\"]\n    unwrap: [\"kms-plugin:a\"]\n    status: [\"kms-plugin:a\"]\n  cluster-b:\n    wrap: [\"kms-plugin:b\"]\n    unwrap: [\"kms-plugin:b\"]\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = dir.path().join("keyd.log");
    let mut keyd = Command::new(coffer_bin())
        .args([
            "keyd",
            "serve",
            "--platform",
            "sim",
            "--listen",
            &addr.to_string(),
        ])
        .arg("--data-dir")
        .arg(&data)
        .arg("--policy")
        .arg(&policy)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "keyd did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let keyd_signer = signer_of(&data);

    // Caller A: wrap and unwrap on its own keyring.
    let mut client_a = KeydClient::connect(addr, client(&a, &keyd_signer))
        .await
        .unwrap();
    let (ciphertext, key_id) = client_a.wrap("cluster-a", &[7u8; 32]).await.unwrap();
    let plain = client_a
        .unwrap("cluster-a", Some(&key_id), &ciphertext)
        .await
        .unwrap();
    assert_eq!(plain.as_slice(), &[7u8; 32]);
    assert_eq!(client_a.status("cluster-a").await.unwrap().0, key_id);

    // Caller B (role kms-plugin:b) may not unwrap cluster A's data; nothing is unwrapped.
    let mut client_b = KeydClient::connect(addr, client(&b, &keyd_signer))
        .await
        .unwrap();
    let err = client_b
        .unwrap("cluster-a", Some(&key_id), &ciphertext)
        .await
        .unwrap_err();
    let status = err.status().expect("a gRPC status");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("kms-plugin:b"),
        "{}",
        status.message()
    );
    // ... nor rotate anything (no role has rotate).
    let err = client_a.rotate("cluster-a").await.unwrap_err();
    assert_eq!(err.status().unwrap().code(), tonic::Code::PermissionDenied);

    // A caller whose evidence maps to no role is refused.
    let refused = async {
        let mut c = KeydClient::connect(addr, client(&stranger, &keyd_signer)).await?;
        c.status("cluster-a").await
    }
    .await;
    let err = refused.expect_err("a caller with no role was served");
    assert!(err.to_string().contains("refused"), "{err}");

    // A client that expects another keyd refuses this one.
    let wrong = KeydClient::connect(addr, client(&a, &"00".repeat(32))).await;
    let wrong = match wrong {
        Ok(mut c) => c.status("cluster-a").await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        wrong.is_err(),
        "client accepted a keyd its policy does not name"
    );

    signal(keyd.id(), "TERM");
    assert_eq!(wait_timeout(&mut keyd, Duration::from_secs(20)), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("SIMULATION PLATFORM"), "{text}");
}

#[test]
fn keyd_refuses_bad_configuration_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    let out = coffer(&[
        "keyd",
        "keyring",
        "create",
        "Bad_Name",
        "--platform",
        "sim",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("keyring name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.path().join("keyd.yaml");
    std::fs::write(&config, "keyrings:\n  a:\n    decrypt: [x]\n").unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nroles: []\n").unwrap();
    assert!(coffer(&[
        "keyd",
        "keyring",
        "create",
        "a",
        "--platform",
        "sim",
        "--data-dir",
        data.to_str().unwrap()
    ])
    .status
    .success());
    let out = coffer(&[
        "keyd",
        "serve",
        "--platform",
        "sim",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn audit_verify_detects_an_edited_log() {
    use coffer_audit::{AuditEntry, AuditLog, AuditOptions, Caller, Outcome};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    {
        let mut log = AuditLog::open(&path, AuditOptions::default()).unwrap();
        for i in 0..5 {
            log.append(AuditEntry {
                event: "unwrap".into(),
                caller: Caller::new("sim", &[i; 32], Some("kms-plugin:a"), "127.0.0.1:5000"),
                keyring: Some("cluster-a".into()),
                key_id: Some("coffer-0001-0011223344556677".into()),
                result: Outcome::Ok,
                reason: None,
            })
            .unwrap();
        }
    }
    let out = coffer(&[
        "keyd",
        "audit",
        "verify",
        path.to_str().unwrap(),
        "--require-head",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("5 records"));

    // Someone changes the caller's role on line 3.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[2] = lines[2].replace("kms-plugin:a", "kms-plugin:z");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let out = coffer(&["keyd", "audit", "verify", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3"), "{err}");
}

//! `coffer kms bridge` in front of an "enclave" `coffer kms serve --listen-tcp` (both real
//! processes on the sim platform, over loopback), called the way kube-apiserver calls: over the
//! bridge's unix socket. Also: `kms serve` refuses a unix socket where peer credentials are not
//! real.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer_proto::v2;
use common::keyd::{free_addr, sim_signer};
use common::raw_grpc::raw_grpc_call;
use common::run::output_within;
use common::{channel, coffer_bin, decrypt, encrypt, v1_round_trip, v2_client, V1Client, V2Client};
use prost::Message;
use tonic::Code;

/// A running `coffer` process with its log; killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}-{}.log", rand::random::<u32>()));
        let child = Command::new(coffer_bin())
            .args(["--log-level", "debug"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn coffer");
        Proc { child, log }
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The plugin "in the enclave": sim platform with state `state`, serving on `addr`.
fn start_enclave(dir: &Path, state: &Path, addr: SocketAddr) -> Proc {
    Proc::spawn(
        dir,
        "enclave",
        &[
            "kms",
            "serve",
            "--platform",
            "sim",
            "--state-dir",
            state.to_str().unwrap(),
            "--listen-tcp",
            &addr.to_string(),
        ],
    )
}

/// A policy that trusts only the sim platform whose state is `trusted_state`.
fn policy_trusting(dir: &Path, trusted_state: &Path) -> PathBuf {
    let path = dir.join("enclave-policy.yaml");
    let policy = format!(
        "version: 1\nallow_simulation: true\nroles:\n  - name: kms-enclave\n    sim: {{ signer: [\"{}\"] }}\n",
        sim_signer(trusted_state)
    );
    fs::write(&path, policy).unwrap();
    path
}

fn start_bridge(
    dir: &Path,
    socket: &Path,
    enclave: SocketAddr,
    policy: &Path,
    extra: &[&str],
) -> Proc {
    let mut args = vec![
        "kms",
        "bridge",
        "--socket",
        socket.to_str().unwrap(),
        "--enclave",
    ];
    let enclave = enclave.to_string();
    args.push(&enclave);
    args.extend_from_slice(&["--enclave-policy", policy.to_str().unwrap()]);
    args.extend_from_slice(extra);
    Proc::spawn(dir, "bridge", &args)
}

/// A client of the bridge's socket, once the socket is there.
async fn client(socket: &Path, bridge: &Proc) -> V2Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if socket.exists() {
            if let Ok(c) = v2_client(socket).await {
                return c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the bridge did not open its socket; log:\n{}",
            bridge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls Status until it is OK; returns it.
async fn wait_ok(client: &mut V2Client, logs: &[&Proc]) -> v2::StatusResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.status(v2::StatusRequest {}).await {
            Ok(r) => return r.into_inner(),
            Err(status) => assert!(
                Instant::now() < deadline,
                "Status never became OK: {status:?}; logs:\n{}",
                logs.iter()
                    .map(|p| p.log_text())
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bridge_serves_v2_and_v1beta1_from_the_enclave() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("enclave-state");
    let policy = policy_trusting(dir.path(), &state);
    let addr = free_addr();
    let enclave = start_enclave(dir.path(), &state, addr);
    let socket = dir.path().join("kms.sock");
    let bridge = start_bridge(dir.path(), &socket, addr, &policy, &[]);
    let mut v2c = client(&socket, &bridge).await;
    let status = wait_ok(&mut v2c, &[&enclave, &bridge]).await;
    assert_eq!(status.healthz, "ok");
    assert_eq!(status.version, "v2");

    let sealed = encrypt(&mut v2c, b"a DEK").await;
    assert_eq!(sealed.key_id, status.key_id, "the enclave's primary KEK");
    let opened = decrypt(&mut v2c, &sealed.ciphertext, &sealed.key_id)
        .await
        .unwrap();
    assert_eq!(opened, b"a DEK");
    // The enclave's own answers pass through unchanged (not turned into UNAVAILABLE).
    let unknown = decrypt(&mut v2c, &sealed.ciphertext, "no-such-kek")
        .await
        .unwrap_err();
    assert!(
        matches!(unknown.code(), Code::NotFound | Code::InvalidArgument)
            && !unknown.message().contains("bridge"),
        "{unknown:?}"
    );

    let mut v1c = V1Client::new(channel(&socket).await.unwrap());
    let (version, _) = v1_round_trip(&mut v1c, b"a v1 DEK").await;
    assert_eq!(version.version, "v1beta1");

    // kube-apiserver before 1.31 sends the socket path as :authority.
    let socket_for_raw = socket.clone();
    let raw = tokio::task::spawn_blocking(move || {
        raw_grpc_call(
            &socket_for_raw,
            socket_for_raw.to_str().unwrap(),
            "/v2.KeyManagementService/Status",
            &[0, 0, 0, 0, 0],
        )
    })
    .await
    .unwrap()
    .expect("Status with the socket path as :authority");
    assert_eq!(raw.header("grpc-status"), Some("0"), "{:?}", raw.headers);
    let answer = v2::StatusResponse::decode(&raw.body[5..]).unwrap();
    assert_eq!(answer.key_id, status.key_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn bridge_refuses_a_caller_its_allow_list_does_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("enclave-state");
    let policy = policy_trusting(dir.path(), &state);
    // No enclave at all: the refusal comes from the bridge, before anything is forwarded.
    let addr = free_addr();
    let socket = dir.path().join("kms.sock");
    // Our uid is not 4242424, and any --allow-uid replaces the default list.
    let bridge = start_bridge(
        dir.path(),
        &socket,
        addr,
        &policy,
        &["--allow-uid", "4242424"],
    );
    let mut v2c = client(&socket, &bridge).await;
    let refused = v2c.status(v2::StatusRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("--allow-uid"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn substituted_enclave_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("trusted-state");
    let policy = policy_trusting(dir.path(), &trusted);
    // Another sim identity on the port the bridge was told about.
    let impostor_state = dir.path().join("impostor-state");
    let addr = free_addr();
    let impostor = start_enclave(dir.path(), &impostor_state, addr);
    let socket = dir.path().join("kms.sock");
    let bridge = start_bridge(dir.path(), &socket, addr, &policy, &[]);
    let mut v2c = client(&socket, &bridge).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        let status = v2c.status(v2::StatusRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        // Until the impostor listens, the reason is that it is unreachable.
        if status.message().contains("not trusted") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "never refused for its attestation: {status:?}; impostor log:\n{}",
            impostor.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        refusal.message().contains("signer"),
        "the reason names what did not match: {refusal:?}"
    );
    let encrypt = v2c
        .encrypt(v2::EncryptRequest {
            plaintext: b"never for the impostor".to_vec(),
            uid: common::uid(),
        })
        .await
        .unwrap_err();
    assert_eq!(encrypt.code(), Code::Unavailable, "{encrypt:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn enclave_down_fails_within_the_deadline_and_the_bridge_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("enclave-state");
    let policy = policy_trusting(dir.path(), &state);
    let addr = free_addr();
    let enclave = start_enclave(dir.path(), &state, addr);
    let socket = dir.path().join("kms.sock");
    let bridge = start_bridge(dir.path(), &socket, addr, &policy, &[]);
    let mut v2c = client(&socket, &bridge).await;
    wait_ok(&mut v2c, &[&enclave, &bridge]).await;
    let sealed = encrypt(&mut v2c, b"kept across the outage").await;

    drop(enclave);
    // The client gives up after 3 s, like kube-apiserver: the bridge must answer first.
    let down = v2c.status(v2::StatusRequest {}).await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert!(down.message().contains("coffer kms bridge"), "{down:?}");
    let down = v2c.status(v2::StatusRequest {}).await.unwrap_err();
    assert_eq!(down.code(), Code::Unavailable, "{down:?}");
    assert!(down.message().contains("unreachable"), "{down:?}");

    let enclave = start_enclave(dir.path(), &state, addr);
    wait_ok(&mut v2c, &[&enclave, &bridge]).await;
    let opened = decrypt(&mut v2c, &sealed.ciphertext, &sealed.key_id)
        .await
        .unwrap();
    assert_eq!(opened, b"kept across the outage");
}

#[test]
fn kms_serve_refuses_a_unix_socket_where_peer_credentials_are_not_real() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kms.sock");
    for libos in ["sgx-occlum", "sgx-gramine"] {
        let out = output_within(
            Command::new(coffer_bin())
                .args(["kms", "serve", "--platform", "sim", "--state-dir"])
                .arg(dir.path().join("state"))
                .arg("--socket")
                .arg(&socket)
                .env("COFFER_SIM_POSE_AS_LIBOS", libos),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(libos), "{stderr}");
        assert!(
            stderr.contains("--listen-tcp") && stderr.contains("coffer kms bridge"),
            "the error says what to do: {stderr}"
        );
        assert!(!socket.exists());
    }
}

#[test]
fn listen_tcp_refuses_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = output_within(
        Command::new(coffer_bin())
            .args(["kms", "serve", "--platform", "sim", "--state-dir"])
            .arg(dir.path().join("state"))
            .args(["--listen-tcp", "0.0.0.0:1"]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--listen-tcp-allow-remote"),
        "{stderr}"
    );
}

#[test]
fn listen_tcp_refuses_a_socket_it_would_not_serve() {
    let dir = tempfile::tempdir().unwrap();
    let out = output_within(
        Command::new(coffer_bin())
            .args(["kms", "serve", "--platform", "sim", "--state-dir"])
            .arg(dir.path().join("state"))
            .args(["--listen-tcp", "127.0.0.1:1", "--socket"])
            .arg(dir.path().join("kms.sock")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--listen-tcp") && stderr.contains("--socket"),
        "{stderr}"
    );
    assert!(!dir.path().join("kms.sock").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn insecure_override_serves_the_unix_socket_anyway() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kms.sock");
    let log = dir.path().join("plugin.log");
    let child = Command::new(coffer_bin())
        .args(["kms", "serve", "--platform", "sim", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .arg("--insecure-unreal-peer-credentials")
        .env("COFFER_SIM_POSE_AS_LIBOS", "sgx-occlum")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let plugin = Proc { child, log };
    let mut v2c = client(&socket, &plugin).await;
    wait_ok(&mut v2c, &[&plugin]).await;
    assert!(
        plugin.log_text().contains("admits every caller"),
        "the override is said loudly: {}",
        plugin.log_text()
    );
}

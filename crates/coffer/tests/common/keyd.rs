//! A real `coffer keyd serve` process for integration tests: its own data directory, sim
//! platform, policy, keyd configuration and log file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use coffer_attest::policy::Policy;
use coffer_keyd_client::pb;
use coffer_keyd_client::pb::key_service_client::KeyServiceClient;
use coffer_keyd_client::KeydClientOptions;
use coffer_platform::sim::SimPlatform;
use coffer_ratls::{AttestedVerifier, OfflineVerifier};
use coffer_sealed::bundle::KeyBundle;
use coffer_sealed::{Binding, Location, Scope};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{coffer, coffer_bin, signal, wait_timeout};

/// The hex Ed25519 key that signs the sim evidence of the platform whose state is `state`
/// (created if missing): what a policy's `sim.signer` names.
pub fn sim_signer(state: &Path) -> String {
    hex::encode(
        SimPlatform::open_or_create(state)
            .unwrap()
            .attestation_public_key()
            .unwrap(),
    )
}

/// Writes `<dir>/policy.yaml`, a policy that allows simulation and gives `role` to the sim
/// platform whose state is `caller`; returns its path.
pub fn sim_role_policy(dir: &Path, role: &str, caller: &Path) -> PathBuf {
    signer_role_policy(dir, role, &sim_signer(caller))
}

/// Writes `<dir>/policy.yaml`, a policy that allows simulation and gives `role` to the sim
/// signer `signer` (hex); returns its path.
pub fn signer_role_policy(dir: &Path, role: &str, signer: &str) -> PathBuf {
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nallow_simulation: true\nroles:\n  - name: {role}\n    sim: {{ signer: [\"{signer}\"] }}\n"
        ),
    )
    .unwrap();
    policy
}

/// The YAML of a policy for checking keyd's evidence: role `keyd` for keyd's sim signer
/// `keyd_signer`, with simulation allowed or not.
pub fn keyd_policy_yaml(keyd_signer: &str, allow_simulation: bool) -> String {
    format!(
        "version: 1\nallow_simulation: {allow_simulation}\nroles:\n  - name: keyd\n    sim: {{ signer: [\"{keyd_signer}\"] }}\n"
    )
}

/// Writes [`keyd_policy_yaml`], simulation allowed, to `path`.
pub fn write_keyd_policy(path: &Path, keyd_signer: &str) {
    std::fs::write(path, keyd_policy_yaml(keyd_signer, true)).unwrap();
}

/// A policy for checking keyd's evidence: role `keyd` for keyd's sim signer `keyd_signer`,
/// with simulation allowed or not.
pub fn keyd_policy(keyd_signer: &str, allow_simulation: bool) -> Policy {
    Policy::from_yaml(&keyd_policy_yaml(keyd_signer, allow_simulation)).unwrap()
}

/// A free loopback TCP address.
pub fn free_addr() -> SocketAddr {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Runs `coffer keyd <args>` with the sim platform and `--data-dir data`; panics with its
/// stderr on failure and returns its stdout.
pub fn keyd_cli(data: &Path, args: &[&str]) -> String {
    let mut full = vec!["keyd"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--platform", "sim", "--data-dir", data.to_str().unwrap()]);
    let out = coffer(&full);
    assert!(
        out.status.success(),
        "coffer {full:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `coffer keyd audit verify --require-head` on `data` (sim platform): (success, stdout,
/// stderr).
pub fn audit_verify(data: &Path) -> (bool, String, String) {
    let out = coffer(&[
        "keyd",
        "audit",
        "verify",
        "--require-head",
        "--platform",
        "sim",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Initialises keyd's data directory `data` (sim platform) and creates `keyrings` in it.
pub fn create_keyd_data(data: &Path, keyrings: &[&str]) {
    keyd_cli(data, &["init"]);
    for name in keyrings {
        keyd_cli(data, &["keyring", "create", name]);
    }
}

/// `count` keyd data directories `<dir>/keyd-<i>` holding one root and `keyrings`: the first
/// made by [`create_keyd_data`], the others copies of it (replicas of one state).
pub fn replica_data_dirs(dir: &Path, keyrings: &[&str], count: usize) -> Vec<PathBuf> {
    let first = dir.join("keyd-0");
    create_keyd_data(&first, keyrings);
    let mut data = vec![first.clone()];
    for i in 1..count {
        let copy = dir.join(format!("keyd-{i}"));
        let out = std::process::Command::new("cp")
            .arg("-a")
            .arg(&first)
            .arg(&copy)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        data.push(copy);
    }
    data
}

/// Options for a keyd client with sim state `state` that trusts the keyd whose sim signer is
/// `keyd_signer`.
pub fn client_options(state: &Path, keyd_signer: &str) -> KeydClientOptions {
    KeydClientOptions {
        platform: Arc::new(SimPlatform::open_or_create(state).unwrap()),
        policy: Arc::new(keyd_policy(keyd_signer, true)),
        verify_options: coffer_attest::VerifyOptions::new(std::time::SystemTime::now()),
    }
}

/// A gRPC client of keyd at `addr` over TLS with `config` (ALPN h2 is set here), without
/// the keyd client crate, so a test controls exactly what the client presents.
pub async fn raw_key_service_client(
    addr: SocketAddr,
    mut config: rustls::ClientConfig,
) -> KeyServiceClient<Channel> {
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = connector
                    .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .unwrap();
    KeyServiceClient::new(channel)
}

/// Every record of keyd's audit log in `data` (none if there is no log yet).
pub fn audit_records(data: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The place `namespace/secret/key` in the cluster.
pub fn location(namespace: &str, secret: &str, key: &str) -> Location {
    Location {
        namespace: namespace.into(),
        secret: secret.into(),
        key: key.into(),
    }
}

/// A running `coffer keyd serve`.
pub struct KeydProcess {
    /// The data directory (also the sim platform's state).
    pub data: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its stderr.
    pub log: PathBuf,
    /// The process, until stopped.
    pub child: Option<Child>,
}

impl KeydProcess {
    /// Starts keyd on `addr` with `policy` and `config` files and `extra` flags, and waits
    /// until it says it is listening.
    pub fn start(
        data: &Path,
        addr: SocketAddr,
        policy: &Path,
        config: &Path,
        extra: &[&str],
    ) -> KeydProcess {
        let log = data.with_file_name(format!(
            "keyd-{}-{}.log",
            addr.port(),
            rand::random::<u32>()
        ));
        let child = Command::new(coffer_bin())
            .args([
                "--log-level",
                "trace",
                "keyd",
                "serve",
                "--platform",
                "sim",
                "--listen",
            ])
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data)
            .arg("--policy")
            .arg(policy)
            .arg("--config")
            .arg(config)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut keyd = KeydProcess {
            data: data.to_path_buf(),
            addr,
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        // keyd says so once it accepts connections. A probe connection would take one of the
        // per-address unverified slots until keyd notices it closed, and with a small
        // --max-connections the test's first real client could then be turned away.
        while !keyd.log_text().contains("coffer keyd listening on") {
            if let Some(status) = keyd.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("keyd exited with {status}: {}", keyd.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "keyd did not start: {}",
                keyd.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        keyd
    }

    /// The sim signer of this keyd's evidence.
    pub fn signer(&self) -> String {
        sim_signer(&self.data)
    }

    /// Its stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit code (None if it did not exit within 20 s).
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(child.id(), "TERM");
        wait_timeout(&mut child, Duration::from_secs(20))
    }

    /// SIGKILL (a crash), waiting for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for KeydProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gRPC client over TLS that checks keyd's attestation and presents `platform`'s attested
/// certificate, or none (a workstation).
pub async fn client(
    addr: SocketAddr,
    keyd_signer: &str,
    platform: Option<&SimPlatform>,
) -> KeyServiceClient<Channel> {
    let verifier = Arc::new(AttestedVerifier::new(
        Arc::new(OfflineVerifier::new(coffer_attest::VerifyOptions::new(
            SystemTime::now(),
        ))),
        Arc::new(keyd_policy(keyd_signer, true)),
    ));
    let config = match platform {
        None => coffer_ratls::client_config_without_identity(verifier).unwrap(),
        Some(platform) => {
            let identity = coffer_ratls::attested_certificate(platform).unwrap();
            coffer_ratls::client_config(&identity, verifier).unwrap()
        }
    };
    raw_key_service_client(addr, config)
        .await
        .max_decoding_message_size(4 << 20)
        .max_encoding_message_size(4 << 20)
}

/// The wire form of `l`.
pub fn pb_location(l: &Location) -> Option<pb::SecretLocation> {
    Some(pb::SecretLocation {
        namespace: l.namespace.clone(),
        secret: l.secret.clone(),
        key: l.key.clone(),
    })
}

/// Fetches and fully verifies keyring `keyring`'s bundle.
pub async fn bundle(c: &mut KeyServiceClient<Channel>, keyring: &str, signer: &str) -> KeyBundle {
    let json = c
        .get_key_bundle(pb::GetKeyBundleRequest {
            keyring: keyring.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .bundle;
    let bundle = KeyBundle::from_json(&json).unwrap();
    bundle
        .verify(
            &keyd_policy(signer, true),
            &coffer_attest::VerifyOptions::new(SystemTime::now()),
        )
        .unwrap();
    assert_eq!(bundle.keyring(), keyring);
    bundle
}

/// `plaintext` sealed to `bundle`'s primary key, bound with `scope` to `at`.
pub fn seal_to(bundle: &KeyBundle, scope: Scope, at: &Location, plaintext: &[u8]) -> String {
    let binding = Binding::new(scope, at).unwrap();
    coffer_sealed::seal(
        bundle.keyring(),
        &bundle.primary().unwrap(),
        &binding,
        plaintext,
    )
    .unwrap()
    .to_text()
}

//! End-to-end tests: real TCP on 127.0.0.1, real mutual attested TLS, real gRPC, simulation
//! platforms with separate state directories for keyd and for each client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keyd::{create_keyring, serve, KeydConfig, KeydError, KeydServeOptions};
use coffer_keyd_client::{ClientError, KeydClient, KeydClientOptions};
use coffer_platform::sim::{executable_measurement, SimPlatform};
use coffer_platform::Platform;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;

const CONFIG: &str = "\
keyrings:
  a:
    wrap: [\"kms-plugin:a\"]
    unwrap: [\"kms-plugin:a\"]
    status: [\"kms-plugin:a\"]
    rotate: [\"kms-plugin:a\"]
    list: [\"kms-plugin:a\"]
  b:
    wrap: [\"kms-plugin:b\"]
    unwrap: [\"kms-plugin:b\"]
    status: [\"kms-plugin:b\"]
";

struct Sim {
    _dir: TempDir,
    platform: Arc<SimPlatform>,
}

impl Sim {
    fn new() -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let platform = Arc::new(SimPlatform::open_or_create(&dir.path().join("sim")).unwrap());
        Sim {
            _dir: dir,
            platform,
        }
    }

    fn signer(&self) -> String {
        hex::encode(self.platform.attestation_public_key().unwrap())
    }
}

/// A policy with one role per (name, signer), all pinned to this executable's sim measurement.
fn policy(allow_simulation: bool, roles: &[(&str, &Sim)]) -> Arc<Policy> {
    let measurement = hex::encode(executable_measurement().unwrap());
    let mut yaml = format!("version: 1\nallow_simulation: {allow_simulation}\nroles:\n");
    for (name, sim) in roles {
        yaml.push_str(&format!(
            "  - name: \"{name}\"\n    sim: {{ measurement: [\"{measurement}\"], signer: [\"{}\"] }}\n",
            sim.signer()
        ));
    }
    Arc::new(Policy::from_yaml(&yaml).unwrap())
}

fn options() -> VerifyOptions {
    VerifyOptions::new(SystemTime::now())
}

struct Keyd {
    sim: Sim,
    _data: TempDir,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), KeydError>>>,
}

impl Keyd {
    async fn start(policy: Arc<Policy>, sim: Sim) -> Keyd {
        let data = tempfile::tempdir().unwrap();
        let platform: Arc<dyn Platform> = sim.platform.clone();
        coffer_keyd::KeydRoot::init(data.path(), platform.as_ref(), None).unwrap();
        for name in ["a", "b"] {
            create_keyring(data.path(), platform.clone(), name).unwrap();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let serve_options = KeydServeOptions::new(
            data.path().to_path_buf(),
            platform,
            policy,
            KeydConfig::from_yaml(CONFIG).unwrap(),
            options(),
            listener,
        );
        let task = tokio::spawn(serve(serve_options, async {
            let _ = stopped.await;
        }));
        Keyd {
            sim,
            _data: data,
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn client(&self, sim: &Sim) -> Result<KeydClient, ClientError> {
        KeydClient::connect(
            self.addr,
            KeydClientOptions {
                platform: sim.platform.clone(),
                policy: policy(true, &[("keyd", &self.sim)]),
                verify_options: options(),
            },
        )
        .await
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

fn code(e: &ClientError) -> Code {
    e.status()
        .unwrap_or_else(|| panic!("expected a gRPC status, got {e}"))
        .code()
}

/// keyd with roles `kms-plugin:a` (client A) and `kms-plugin:b` (client B).
async fn setup() -> (Keyd, Sim, Sim) {
    let (a, b) = (Sim::new(), Sim::new());
    let keyd = Keyd::start(
        policy(true, &[("kms-plugin:a", &a), ("kms-plugin:b", &b)]),
        Sim::new(),
    )
    .await;
    (keyd, a, b)
}

#[tokio::test]
async fn wrap_unwrap_round_trip_and_rotation() {
    let (keyd, a, _b) = setup().await;
    let mut client = keyd.client(&a).await.unwrap();

    let (primary, keys) = client.status("a").await.unwrap();
    assert_eq!(keys, 1);
    let (ciphertext, key_id) = client
        .wrap("a", b"dek seed 0123456789abcdef")
        .await
        .unwrap();
    assert_eq!(key_id, primary);
    assert!(!ciphertext.windows(8).any(|w| w == b"dek seed"));
    let plaintext = client
        .unwrap("a", Some(&key_id), &ciphertext)
        .await
        .unwrap();
    assert_eq!(&plaintext[..], b"dek seed 0123456789abcdef");

    let new_id = client.rotate("a").await.unwrap();
    assert_ne!(new_id, key_id);
    let (primary, keys) = client.status("a").await.unwrap();
    assert_eq!((primary.as_str(), keys), (new_id.as_str(), 2));
    // The old ciphertext still unwraps; new wraps use the new KEK.
    let plaintext = client
        .unwrap("a", Some(&key_id), &ciphertext)
        .await
        .unwrap();
    assert_eq!(&plaintext[..], b"dek seed 0123456789abcdef");
    let (ciphertext2, key_id2) = client.wrap("a", b"second").await.unwrap();
    assert_eq!(key_id2, new_id);
    assert_eq!(
        &client.unwrap("a", None, &ciphertext2).await.unwrap()[..],
        b"second"
    );

    let listed = client.list_keys("a").await.unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().any(|k| k.key_id == new_id && k.primary));
    assert!(listed.iter().any(|k| k.key_id == key_id && !k.primary));
    keyd.stop().await;
}

#[tokio::test]
async fn role_for_keyring_a_cannot_use_keyring_b() {
    let (keyd, a, b) = setup().await;
    let mut client_a = keyd.client(&a).await.unwrap();
    let mut client_b = keyd.client(&b).await.unwrap();

    let (ciphertext_b, key_id_b) = client_b.wrap("b", b"b's secret").await.unwrap();
    let err = client_a
        .unwrap("b", Some(&key_id_b), &ciphertext_b)
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::PermissionDenied, "{err}");
    let message = err.status().unwrap().message();
    assert!(message.contains("kms-plugin:a"), "{message}");
    assert!(message.contains("\"b\""), "{message}");
    assert!(message.contains("unwrap"), "{message}");
    assert!(!message.contains("b's secret"));

    let err = client_a.wrap("b", b"x").await.unwrap_err();
    assert_eq!(code(&err), Code::PermissionDenied, "{err}");
    // B may wrap/unwrap/status its keyring but not rotate it (not listed).
    let err = client_b.rotate("b").await.unwrap_err();
    assert_eq!(code(&err), Code::PermissionDenied, "{err}");
    // B's own data still unwraps for B.
    assert_eq!(
        &client_b.unwrap("b", None, &ciphertext_b).await.unwrap()[..],
        b"b's secret"
    );
    keyd.stop().await;
}

/// Connects and makes one call; returns the first error.
async fn first_error(keyd: &Keyd, sim: &Sim) -> ClientError {
    match keyd.client(sim).await {
        Err(e) => e,
        Ok(mut client) => client.status("a").await.unwrap_err(),
    }
}

#[tokio::test]
async fn client_matching_no_role_is_refused_with_the_reason() {
    let (keyd, _a, _b) = setup().await;
    let stranger = Sim::new();
    let err = first_error(&keyd, &stranger).await;
    assert_eq!(code(&err), Code::PermissionDenied, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("keyd refused this client's attestation") && text.contains("is not accepted"),
        "{text}"
    );
    keyd.stop().await;
}

#[tokio::test]
async fn policy_without_allow_simulation_refuses_sim_clients() {
    let a = Sim::new();
    let keyd = Keyd::start(policy(false, &[("kms-plugin:a", &a)]), Sim::new()).await;
    let err = first_error(&keyd, &a).await;
    assert_eq!(code(&err), Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("simulation"), "{err}");
    keyd.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_right_codes() {
    let (keyd, a, _b) = setup().await;
    let mut client = keyd.client(&a).await.unwrap();

    let err = client.wrap("a", &[7; 513]).await.unwrap_err();
    assert_eq!(code(&err), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("513"), "{err}");
    let err = client.wrap("a", b"").await.unwrap_err();
    assert_eq!(code(&err), Code::InvalidArgument, "{err}");
    assert!(client.wrap("a", &[7; 512]).await.is_ok());

    // An unknown keyring is indistinguishable from a forbidden one.
    let err = client.wrap("nope", b"x").await.unwrap_err();
    assert_eq!(code(&err), Code::PermissionDenied, "{err}");
    let err = client.status("nope").await.unwrap_err();
    assert_eq!(code(&err), Code::PermissionDenied, "{err}");
    let err = client.wrap("Not/A/Name", b"x").await.unwrap_err();
    assert_eq!(code(&err), Code::InvalidArgument, "{err}");

    let err = client.unwrap("a", None, &[0xC0; 1025]).await.unwrap_err();
    assert_eq!(code(&err), Code::InvalidArgument, "{err}");
    let err = client.unwrap("a", None, b"garbage").await.unwrap_err();
    assert_eq!(code(&err), Code::InvalidArgument, "{err}");
    let (ciphertext, _) = client.wrap("a", b"x").await.unwrap();
    let err = client
        .unwrap("a", Some("other-key"), &ciphertext)
        .await
        .unwrap_err();
    assert_eq!(code(&err), Code::InvalidArgument, "{err}");
    keyd.stop().await;
}

#[tokio::test]
async fn serve_refuses_a_configured_keyring_that_does_not_exist() {
    let sim = Sim::new();
    let data = tempfile::tempdir().unwrap();
    let serve_once = || async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        serve(
            KeydServeOptions::new(
                data.path().to_path_buf(),
                sim.platform.clone(),
                policy(true, &[]),
                KeydConfig::from_yaml(CONFIG).unwrap(),
                options(),
                listener,
            ),
            std::future::pending(),
        )
        .await
        .unwrap_err()
    };
    // Not initialised: says to run init.
    let err = serve_once().await;
    assert!(matches!(err, KeydError::NotInitialised { .. }), "{err}");
    assert!(err.to_string().contains("coffer keyd init"), "{err}");
    coffer_keyd::KeydRoot::init(data.path(), sim.platform.as_ref(), None).unwrap();
    let err = serve_once().await;
    assert!(matches!(err, KeydError::MissingKeyring { .. }), "{err}");
    assert!(err.to_string().contains("create it first"), "{err}");
}

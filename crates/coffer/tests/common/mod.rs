//! Shared helpers for the integration tests: they start the real `coffer` binary on a real unix
//! socket and talk to it with a real gRPC client.
#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use coffer_proto::{v1beta1, v2};
use tonic::transport::{Channel, Endpoint};

pub mod deploy;
pub mod etcd;
pub mod keyd;
pub mod keyd_cluster;
pub mod kubelet;
pub mod load;
pub mod raw_grpc;
pub mod run;

pub type V2Client = v2::key_management_service_client::KeyManagementServiceClient<Channel>;
pub type V1Client = v1beta1::key_management_service_client::KeyManagementServiceClient<Channel>;

pub fn coffer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_coffer")
}

/// The `kubectl-coffer` binary beside the `coffer` under test (`cargo test --workspace` builds
/// both); built once here when this package's tests run alone.
pub fn kubectl_coffer_bin() -> PathBuf {
    let bin = Path::new(coffer_bin()).with_file_name("kubectl-coffer");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "kubectl-coffer", "--bin", "kubectl-coffer"])
            .status()
            .unwrap();
        assert!(status.success(), "building kubectl-coffer failed");
    }
    bin
}

/// Runs `coffer <args>` to completion.
pub fn coffer(args: &[&str]) -> Output {
    Command::new(coffer_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run coffer")
}

/// A running `coffer kms serve` with its own state directory, socket and log file.
pub struct Plugin {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Plugin {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Starts a plugin with `extra` flags and waits until Status answers.
    pub async fn start(extra: &[&str]) -> Plugin {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra).await
    }

    pub async fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> Plugin {
        let plugin = Self::spawn_in(dir, extra);
        plugin.wait_ready().await;
        plugin
    }

    pub fn spawn_in(dir: tempfile::TempDir, extra: &[&str]) -> Plugin {
        Self::spawn_mode(dir, &["--reload-interval", "200ms"], extra)
    }

    /// Spawns a plugin in service mode: `extra` carries `--keyd` and its flags (the keystore
    /// flags of standalone mode are refused there).
    pub fn spawn_service_in(dir: tempfile::TempDir, extra: &[&str]) -> Plugin {
        Self::spawn_mode(dir, &[], extra)
    }

    fn spawn_mode(dir: tempfile::TempDir, mode: &[&str], extra: &[&str]) -> Plugin {
        let socket = dir.path().join("kms.sock");
        let state = dir.path().join("state");
        let log = dir
            .path()
            .join(format!("plugin-{}.log", rand::random::<u32>()));
        let child = Command::new(coffer_bin())
            .args(["--log-level", "trace", "kms", "serve", "--platform", "sim"])
            .args(mode)
            .arg("--state-dir")
            .arg(&state)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn coffer kms serve");
        Plugin {
            dir,
            child: Some(child),
            socket,
            log,
        }
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.socket.exists() {
                if let Ok(mut c) = v2_client(&self.socket).await {
                    if c.status(v2::StatusRequest {}).await.is_ok() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "plugin did not become ready; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn v2(&self) -> V2Client {
        v2_client(&self.socket).await.expect("connect v2")
    }

    pub async fn v1(&self) -> V1Client {
        V1Client::new(channel(&self.socket).await.expect("connect v1"))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Sends SIGTERM and waits for exit; returns the exit status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(child.id(), "TERM");
        wait_timeout(&mut child, Duration::from_secs(20))
    }

    /// Runs `coffer keys ...` against this plugin's state directory.
    pub fn keys(&self, args: &[&str]) -> Output {
        let state = self.state_dir();
        let mut all = vec!["keys"];
        all.extend_from_slice(&args[..1]);
        all.extend_from_slice(&["--platform", "sim", "--state-dir", state.to_str().unwrap()]);
        all.extend_from_slice(&args[1..]);
        coffer(&all)
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn signal(pid: u32, name: &str) {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process {} did not exit within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub async fn channel(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_path_buf();
    Endpoint::try_from("http://localhost")?
        .timeout(Duration::from_secs(3))
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
}

pub async fn v2_client(socket: &Path) -> Result<V2Client, tonic::transport::Error> {
    Ok(V2Client::new(channel(socket).await?))
}

pub fn uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub async fn encrypt(client: &mut V2Client, plaintext: &[u8]) -> v2::EncryptResponse {
    client
        .encrypt(v2::EncryptRequest {
            plaintext: plaintext.to_vec(),
            uid: uid(),
        })
        .await
        .expect("encrypt")
        .into_inner()
}

/// One KMS v2 Encrypt, its answer or status.
pub async fn try_encrypt(
    client: &mut V2Client,
    plaintext: &[u8],
) -> Result<v2::EncryptResponse, tonic::Status> {
    client
        .encrypt(v2::EncryptRequest {
            plaintext: plaintext.to_vec(),
            uid: uid(),
        })
        .await
        .map(|r| r.into_inner())
}

/// One KMS v2 Status, its answer or status.
pub async fn try_status(client: &mut V2Client) -> Result<v2::StatusResponse, tonic::Status> {
    client
        .status(v2::StatusRequest {})
        .await
        .map(|r| r.into_inner())
}

pub async fn decrypt(
    client: &mut V2Client,
    ciphertext: &[u8],
    key_id: &str,
) -> Result<Vec<u8>, tonic::Status> {
    client
        .decrypt(v2::DecryptRequest {
            ciphertext: ciphertext.to_vec(),
            uid: uid(),
            key_id: key_id.to_string(),
            annotations: Default::default(),
        })
        .await
        .map(|r| r.into_inner().plaintext)
}

/// KMS v1beta1 as kube-apiserver used it: Version, then `plain` encrypted and decrypted back
/// (asserted equal). Returns the Version answer and the ciphertext.
pub async fn v1_round_trip(
    client: &mut V1Client,
    plain: &[u8],
) -> (v1beta1::VersionResponse, Vec<u8>) {
    let version = client
        .version(v1beta1::VersionRequest {
            version: "v1beta1".into(),
        })
        .await
        .expect("v1beta1 version")
        .into_inner();
    let cipher = client
        .encrypt(v1beta1::EncryptRequest {
            version: "v1beta1".into(),
            plain: plain.to_vec(),
        })
        .await
        .expect("v1beta1 encrypt")
        .into_inner()
        .cipher;
    let decrypted = client
        .decrypt(v1beta1::DecryptRequest {
            version: "v1beta1".into(),
            cipher: cipher.clone(),
        })
        .await
        .expect("v1beta1 decrypt")
        .into_inner()
        .plain;
    assert_eq!(decrypted, plain, "v1beta1 round trip");
    (version, cipher)
}

pub async fn status(client: &mut V2Client) -> v2::StatusResponse {
    client
        .status(v2::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// Polls Status until `pred` holds (or panics after 15 s).
pub async fn wait_for_status(
    client: &mut V2Client,
    pred: impl Fn(&v2::StatusResponse) -> bool,
) -> v2::StatusResponse {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = status(client).await;
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "status never changed: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `coffer kms serve` on the simulation platform expecting it to refuse to start; returns
/// its output.
pub fn serve_to_exit(state: &Path, socket: &Path, extra: &[&str]) -> Output {
    Command::new(coffer_bin())
        .args(["kms", "serve", "--platform", "sim", "--state-dir"])
        .arg(state)
        .arg("--socket")
        .arg(socket)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run coffer kms serve")
}

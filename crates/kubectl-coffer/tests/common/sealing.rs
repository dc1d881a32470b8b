//! Key bundles and policies for sealing tests, made with the sim platform as keyd would.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use coffer_platform::sim::SimPlatform;
use coffer_sealed::bundle::{BundleBody, BundleKey, KeyBundle, BUNDLE_FORMAT};
use coffer_sealed::SealingKeyPair;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A sim "keyd": its platform state and its sealing keys (the test keeps the private halves to
/// check what was sealed).
pub struct SimKeyd {
    pub state: PathBuf,
    pub keyring: String,
    pub keys: Vec<SealingKeyPair>,
}

fn rfc3339(t: SystemTime) -> String {
    OffsetDateTime::from(t).format(&Rfc3339).unwrap()
}

impl SimKeyd {
    /// A keyd with `keys` sealing keys for `keyring`, its sim state under `dir`.
    pub fn new(dir: &Path, keyring: &str, keys: usize) -> SimKeyd {
        let state = dir.join("keyd-state");
        std::fs::create_dir_all(&state).unwrap();
        SimKeyd {
            state,
            keyring: keyring.to_string(),
            keys: (0..keys)
                .map(|_| SealingKeyPair::generate().unwrap())
                .collect(),
        }
    }

    /// A bundle of every key (the last is primary), valid from `issued` to `expires`.
    pub fn bundle_at(&self, issued: SystemTime, expires: SystemTime) -> KeyBundle {
        let last = self.keys.len() - 1;
        let body = BundleBody {
            format: BUNDLE_FORMAT,
            keyring: self.keyring.clone(),
            instance: "test-instance".to_string(),
            issued: rfc3339(issued),
            expires: rfc3339(expires),
            keys: self
                .keys
                .iter()
                .enumerate()
                .map(|(i, k)| BundleKey {
                    id: k.id().to_string(),
                    public_key: base64_url(k.public().bytes()),
                    created: rfc3339(issued),
                    primary: i == last,
                })
                .collect(),
        };
        let platform = SimPlatform::open_or_create(&self.state).unwrap();
        KeyBundle::attest(body, &platform).unwrap()
    }

    /// A bundle valid from an hour ago for a day.
    pub fn bundle(&self) -> KeyBundle {
        let now = SystemTime::now();
        self.bundle_at(
            now - Duration::from_secs(3600),
            now + Duration::from_secs(86400),
        )
    }

    /// Writes [`Self::bundle`] to `path`.
    pub fn write_bundle(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.bundle().to_json()).unwrap();
        path.to_path_buf()
    }

    /// A policy giving role `keyd` to this keyd's sim identity (simulation allowed or not).
    pub fn policy(&self, path: &Path, allow_simulation: bool) -> PathBuf {
        write_keyd_policy(path, &self.state, allow_simulation)
    }

    /// The key pair with id `id`.
    pub fn key(&self, id: &str) -> &SealingKeyPair {
        self.keys
            .iter()
            .find(|k| k.id() == id)
            .expect("known key id")
    }
}

/// Writes to `path` a policy giving role `keyd` to the sim platform whose state is `state`
/// (simulation allowed or not); returns `path`.
fn write_keyd_policy(path: &Path, state: &Path, allow_simulation: bool) -> PathBuf {
    let signer = hex::encode(
        SimPlatform::open_or_create(state)
            .unwrap()
            .attestation_public_key()
            .unwrap(),
    );
    std::fs::write(
        path,
        format!(
            "version: 1\nallow_simulation: {allow_simulation}\nroles:\n  - name: keyd\n    sim: {{ signer: [\"{signer}\"] }}\n"
        ),
    )
    .unwrap();
    path.to_path_buf()
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A real `coffer keyd serve` (sim platform) with one keyring, killed on drop.
pub struct KeydProcess {
    child: std::process::Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its data directory (also its sim platform state).
    pub data: PathBuf,
    /// A policy that accepts this keyd's sim evidence as role `keyd`.
    pub policy: PathBuf,
}

impl KeydProcess {
    /// Initialises keyd under `dir` with keyring `keyring` and serves it.
    pub fn start(dir: &Path, keyring: &str) -> KeydProcess {
        KeydProcess::start_with(dir, keyring, &[])
    }

    /// [`Self::start`] with more `coffer keyd serve` flags.
    pub fn start_with(dir: &Path, keyring: &str, serve_flags: &[&str]) -> KeydProcess {
        let data = dir.join("keyd");
        let data_arg = data.to_str().unwrap();
        let sim = ["--platform", "sim", "--data-dir", data_arg];
        keyd_cli(&data, &["init"]);
        keyd_cli(&data, &["keyring", "create", keyring]);
        let callers = dir.join("callers.yaml");
        std::fs::write(&callers, "version: 1\nallow_simulation: true\nroles: []\n").unwrap();
        let config = dir.join("keyd.yaml");
        std::fs::write(&config, format!("keyrings:\n  {keyring}: {{}}\n")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("keyd.log")).unwrap();
        let child = std::process::Command::new(super::coffer_bin())
            .args([
                "keyd",
                "serve",
                "--listen",
                &addr,
                "--reload-interval",
                "200ms",
            ])
            .args(sim)
            .args(["--policy", callers.to_str().unwrap()])
            .args(["--config", config.to_str().unwrap()])
            .args(serve_flags)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let policy = write_keyd_policy(&dir.join("keyd-policy.yaml"), &data, true);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "keyd did not start: {}",
                std::fs::read_to_string(dir.join("keyd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        KeydProcess {
            child,
            addr,
            data,
            policy,
        }
    }

    /// `coffer keyd sealing-key rotate` for `keyring` (the running keyd reloads it).
    pub fn rotate(&self, keyring: &str) {
        keyd_cli(&self.data, &["sealing-key", "rotate", "--keyring", keyring]);
    }
}

/// Runs `coffer keyd <args>` with the sim platform and `--data-dir data`, asserting success.
fn keyd_cli(data: &Path, args: &[&str]) {
    let sim = ["--platform", "sim", "--data-dir", data.to_str().unwrap()];
    let out = super::coffer(&[&["keyd"][..], args, &sim].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for KeydProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

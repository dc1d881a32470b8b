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
        let signer = hex::encode(
            SimPlatform::open_or_create(&self.state)
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

    /// The key pair with id `id`.
    pub fn key(&self, id: &str) -> &SealingKeyPair {
        self.keys
            .iter()
            .find(|k| k.id() == id)
            .expect("known key id")
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

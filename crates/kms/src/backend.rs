//! Where the keys are. The gRPC handlers call a [`Backend`] and do not know which one it is:
//!
//! * [`LocalKeys`] (standalone mode): the plugin's own keyring, loaded from the sealed keystore,
//!   hot-reloaded and rotated by the server's background task.
//! * [`RemoteKeys`] (service mode): keyd holds the keys and every call is forwarded to it.
//! * [`EnclaveKeys`] (`coffer kms bridge`): the plugin inside an SGX enclave holds them, and
//!   every call is forwarded to it.
//!
//! An enum rather than a trait object: the standalone path stays a direct, synchronous call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use coffer_keystore::kek::EncryptError;
use coffer_keystore::{DecryptError, Keyring};
use tonic::Status;
use zeroize::Zeroizing;

use crate::enclave::EnclaveKeys;
use crate::metrics::Metrics;
use crate::remote::RemoteKeys;

/// How long a passed self-test is trusted before Status runs another.
pub const SELF_TEST_TTL: Duration = Duration::from_secs(30);

/// The keys the plugin serves from.
pub enum Backend {
    /// Standalone mode: this plugin's keyring.
    Local(LocalKeys),
    /// Service mode: keyd's keyring, over attested TLS.
    Remote(Box<RemoteKeys>),
    /// Bridge: the enclave plugin's keys, over attested TLS.
    Enclave(Box<EnclaveKeys>),
}

impl Backend {
    /// Encrypts with the primary KEK; returns the ciphertext and the KEK id.
    pub async fn encrypt(&self, plaintext: &[u8]) -> Result<(Vec<u8>, String), Status> {
        match self {
            Backend::Local(local) => local.encrypt(plaintext),
            Backend::Remote(remote) => remote.encrypt(plaintext).await,
            Backend::Enclave(enclave) => enclave.encrypt(plaintext).await,
        }
    }

    /// Decrypts; with `key_id`, the ciphertext must have been made with that KEK.
    pub async fn decrypt(
        &self,
        key_id: Option<&str>,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Status> {
        match self {
            Backend::Local(local) => local.decrypt(key_id, ciphertext),
            Backend::Remote(remote) => remote.decrypt(key_id, ciphertext).await,
            Backend::Enclave(enclave) => enclave.decrypt(key_id, ciphertext).await,
        }
    }

    /// The primary KEK id if the plugin can encrypt right now; UNAVAILABLE with the reason
    /// otherwise.
    pub async fn status(&self) -> Result<String, Status> {
        match self {
            Backend::Local(local) => local.status(),
            Backend::Remote(remote) => remote.status().await,
            Backend::Enclave(enclave) => enclave.status().await,
        }
    }

    /// For `/healthz`: whether the plugin can serve, from what is already known (no I/O).
    pub fn health(&self) -> Result<(), String> {
        match self {
            Backend::Local(local) => local.check_health(),
            Backend::Remote(remote) => remote.health(),
            Backend::Enclave(enclave) => enclave.health(),
        }
    }

    /// The local keyring, in standalone mode.
    pub fn local(&self) -> Option<&LocalKeys> {
        match self {
            Backend::Local(local) => Some(local),
            Backend::Remote(_) | Backend::Enclave(_) => None,
        }
    }

    /// The keyd connection, in service mode.
    pub fn remote(&self) -> Option<&RemoteKeys> {
        match self {
            Backend::Local(_) | Backend::Enclave(_) => None,
            Backend::Remote(remote) => Some(remote),
        }
    }
}

/// Standalone mode's keys: the keyring loaded from this node's sealed keystore.
pub struct LocalKeys {
    keyring: ArcSwap<Keyring>,
    metrics: Metrics,
    self_test_passed_at_ms: AtomicU64,
}

impl LocalKeys {
    /// Serves from `keyring` (already self-tested when it was built).
    pub fn new(keyring: Keyring, metrics: Metrics) -> Self {
        metrics.set_keyring(keyring.primary_id(), keyring.generation(), keyring.len());
        LocalKeys {
            keyring: ArcSwap::from_pointee(keyring),
            metrics,
            self_test_passed_at_ms: AtomicU64::new(now_ms()),
        }
    }

    /// The keyring in use.
    pub fn keyring(&self) -> arc_swap::Guard<Arc<Keyring>> {
        self.keyring.load()
    }

    /// Swaps in a newly loaded (and self-tested) keyring.
    pub fn replace_keyring(&self, keyring: Keyring) {
        self.metrics
            .set_keyring(keyring.primary_id(), keyring.generation(), keyring.len());
        self.keyring.store(Arc::new(keyring));
        self.self_test_passed_at_ms
            .store(now_ms(), Ordering::Relaxed);
    }

    /// Whether the primary KEK can encrypt; re-runs the self-test when the last pass is older
    /// than [`SELF_TEST_TTL`], so frequent Status polling costs nothing.
    pub fn check_health(&self) -> Result<(), String> {
        let last = self.self_test_passed_at_ms.load(Ordering::Relaxed);
        if now_ms().saturating_sub(last) < SELF_TEST_TTL.as_millis() as u64 {
            return Ok(());
        }
        let ring = self.keyring();
        match ring.self_test() {
            Ok(()) => {
                self.self_test_passed_at_ms
                    .store(now_ms(), Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(format!(
                "primary KEK {} cannot encrypt: {e}",
                ring.primary_id()
            )),
        }
    }

    fn status(&self) -> Result<String, Status> {
        self.check_health().map_err(|reason| {
            tracing::error!(reason = %reason, "Status: unhealthy");
            Status::unavailable(format!("coffer kms cannot encrypt: {reason}"))
        })?;
        Ok(self.keyring().primary_id().to_string())
    }

    fn encrypt(&self, plaintext: &[u8]) -> Result<(Vec<u8>, String), Status> {
        let ring = self.keyring();
        match ring.encrypt(plaintext) {
            Ok(ciphertext) => Ok((ciphertext, ring.primary_id().to_string())),
            Err(e @ (EncryptError::Empty | EncryptError::TooLong(_))) => {
                Err(Status::invalid_argument(e.to_string()))
            }
            Err(e) => Err(Status::internal(e.to_string())),
        }
    }

    fn decrypt(
        &self,
        key_id: Option<&str>,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Status> {
        self.keyring()
            .decrypt(key_id, ciphertext)
            .map_err(|e| decrypt_status(&e))
    }
}

fn decrypt_status(e: &DecryptError) -> Status {
    let message = format!("coffer kms: {e}");
    match e {
        DecryptError::UnknownKey(_) => Status::not_found(message),
        _ => Status::invalid_argument(message),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

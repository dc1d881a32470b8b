//! keyd's error type.

use std::path::PathBuf;

/// Errors from configuring or starting the key service (calls to it fail with
/// `coffer_keyd_client::ClientError`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeydError {
    /// The keyd configuration could not be read or is invalid.
    #[error("keyd configuration {}: {message}", path.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "(inline)".into()))]
    Config {
        /// The file, when it came from one.
        path: Option<PathBuf>,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A keyring name is not `[a-z0-9-]{1,63}`.
    #[error(
        "invalid keyring name {name:?}: {reason} (use 1 to 63 characters of a-z, 0-9 and '-')"
    )]
    InvalidKeyringName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// A keyring's keystore could not be created, loaded or changed.
    #[error("keyring {name:?} at {}: {source}", dir.display())]
    Keystore {
        /// The keyring.
        name: String,
        /// Its keystore directory.
        dir: PathBuf,
        /// The keystore's error.
        #[source]
        source: coffer_keystore::KeystoreError,
    },

    /// The configuration names a keyring that has no keystore yet.
    #[error("keyring {name:?} is configured but {} does not exist; create it first (coffer keyd keyring create)", dir.display())]
    MissingKeyring {
        /// The keyring.
        name: String,
        /// Where its keystore was expected.
        dir: PathBuf,
    },

    /// The attested TLS identity or configuration could not be built.
    #[error("attested TLS: {0}")]
    Ratls(#[from] coffer_ratls::RatlsError),

    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The gRPC transport failed (connecting, or serving).
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),

    /// `keyd-root.json` is unreadable, malformed, or cannot be written.
    #[error("keyd root {}: {message}", path.display())]
    Root {
        /// The root file.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },

    /// The data directory has no root yet.
    #[error("keyd data directory {} is not initialised; run `coffer keyd init --data-dir {}` first", data_dir.display(), data_dir.display())]
    NotInitialised {
        /// The data directory.
        data_dir: PathBuf,
    },

    /// The root was sealed by another platform identity (another machine or TEE).
    #[error("keyd root {} was sealed by another platform identity ({sealed_by}) and cannot be opened here; {}", path.display(), match recovery {
        Some(r) => format!("restore it with `coffer keyd recover` and {} of the {} recovery shares", r.threshold, r.total),
        None => "no recovery shares were emitted at init, so it can only be opened on the original platform".to_string(),
    })]
    RootSealedElsewhere {
        /// The root file.
        path: PathBuf,
        /// The platform kind recorded in the file.
        sealed_by: String,
        /// The recovery split, if any.
        recovery: Option<crate::root::RecoveryInfo>,
    },

    /// No peer handed this new replica keyd's root (`coffer keyd join`, `serve --join`).
    #[error("could not join keyd through {peers} ({gave_up}): {}. Each peer must be a running keyd replica whose --policy grants the keyd-peer role to this replica's measurement, on the same kind of TEE, and this replica's --policy must grant keyd-peer to the peers' measurement", reasons.join("; "))]
    Join {
        /// The peers given.
        peers: String,
        /// Why joining stopped: every peer refused, or the time ran out.
        gave_up: String,
        /// Each peer's last error.
        reasons: Vec<String>,
    },

    /// The TEE platform failed (sealing, randomness).
    #[error("platform: {0}")]
    Platform(#[source] coffer_platform::PlatformError),

    /// Recovery shares could not be made, opened or combined.
    #[error("recovery: {0}")]
    Recovery(#[source] coffer_recovery::RecoveryError),

    /// A keyring's sealing keys could not be created, loaded or changed.
    #[error(transparent)]
    SealingKeys(#[from] crate::sealing::SealingKeyError),

    /// The audit log could not be opened or written.
    #[error(transparent)]
    Audit(#[from] coffer_audit::AuditError),

    /// keyd's state in etcd could not be read or changed.
    #[error(transparent)]
    SharedState(#[from] crate::shared::SharedStateError),
}

impl KeydError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        KeydError::Io {
            context: context.into(),
            source,
        }
    }
}

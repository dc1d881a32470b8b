use std::io;
use std::path::PathBuf;

use coffer_platform::PlatformError;

/// Why the keystore could not be read, written or changed. Every variant that names a file
/// also promises that the file was left as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeystoreError {
    /// There is no keystore yet.
    #[error(
        "no keystore at {path}; check --state-dir, or create one with \
         `coffer keys init --platform <platform> --state-dir <dir>` (`coffer kms serve` creates \
         one on first start)"
    )]
    NotInitialized {
        /// Where it was expected.
        path: PathBuf,
    },

    /// `init` was asked for, but a keystore exists and must not be replaced.
    #[error("a keystore already exists at {path}; it was not modified (Coffer never overwrites a keystore)")]
    AlreadyInitialized {
        /// The existing file.
        path: PathBuf,
    },

    /// The file is shorter than its header says.
    #[error(
        "keystore {path} is truncated ({len} bytes, header needs {needed}); it was not modified; \
         restore it from backup"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// How many bytes its header calls for.
        needed: usize,
    },

    /// The file does not start with the keystore magic bytes.
    #[error("{path} is not a Coffer keystore (wrong magic bytes); it was not modified")]
    NotAKeystore {
        /// The file.
        path: PathBuf,
    },

    /// Written by a newer Coffer in a format this binary does not know.
    #[error(
        "keystore {path} uses format version {found}, but this coffer reads only up to version \
         {supported}; upgrade coffer (the file was not modified)"
    )]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u16,
        /// The newest version this binary reads.
        supported: u16,
    },

    /// The integrity check over the whole file failed.
    #[error(
        "keystore {path} failed its integrity check: it was modified, or it was sealed by a \
         different TEE identity (another machine, platform or state directory; on SGX also a TCB \
         update — new microcode, a TCB recovery — or an ISVSVN bump, which change the seal key); \
         it was not modified; restore it from backup or run coffer on the platform that created \
         it (see \"TCB updates\" in docs/operations.md)"
    )]
    Tampered {
        /// The file.
        path: PathBuf,
    },

    /// The file authenticates but its contents are inconsistent.
    #[error("keystore {path} is corrupt: {problem}; it was not modified; restore it from backup")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is inconsistent.
        problem: String,
    },

    /// A sealed KEK could not be unsealed.
    #[error(
        "KEK {key_id} in {path} could not be unsealed by this platform (sealed by another TEE \
         identity — on SGX also the same enclave before a TCB update or ISVSVN bump — or \
         damaged); the keystore was not modified"
    )]
    Unseal {
        /// The file.
        path: PathBuf,
        /// The KEK.
        key_id: String,
    },

    /// The named KEK is not in the keystore.
    #[error("no KEK with id {key_id:?} in the keystore; `coffer keys list` shows the ids")]
    UnknownKey {
        /// The id asked for.
        key_id: String,
    },

    /// Retiring the primary KEK would leave nothing to encrypt with.
    #[error(
        "KEK {key_id} is the primary key and cannot be retired; run `coffer keys rotate` first"
    )]
    RetirePrimary {
        /// The primary KEK's id.
        key_id: String,
    },

    /// A freshly loaded KEK failed to encrypt and decrypt a test value.
    #[error("KEK {key_id} failed its encrypt/decrypt self-test")]
    SelfTestFailed {
        /// The KEK.
        key_id: String,
    },

    /// A file operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What Coffer was doing.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The TEE platform failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

impl KeystoreError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        KeystoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Why a KMS ciphertext could not be decrypted. Messages never contain key material or
/// plaintext; ids and lengths only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecryptError {
    /// The bytes are not a Coffer ciphertext.
    #[error("ciphertext is malformed: {0}")]
    Malformed(&'static str),

    /// The ciphertext names a different KEK than the request's key_id.
    #[error(
        "ciphertext was made with KEK {embedded:?} but the request names key_id {requested:?}"
    )]
    KeyIdMismatch {
        /// The id inside the ciphertext.
        embedded: String,
        /// The id in the request.
        requested: String,
    },

    /// The KEK is not (or no longer) in the keystore.
    #[error("KEK {0:?} is not in the keystore (never existed here, or was retired)")]
    UnknownKey(String),

    /// AES-GCM authentication failed: tampered ciphertext.
    #[error("ciphertext failed authentication (tampered or corrupted)")]
    Authentication,
}

use std::io;
use std::path::PathBuf;

/// What went wrong talking to the TEE platform.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlatformError {
    /// `--platform auto` found no TEE interface on this machine.
    #[error(
        "no TEE detected on this machine (looked for SGX, TDX and SEV-SNP interfaces); \
         run inside a TEE, or pass --platform sim for development (INSECURE: keys are not protected)"
    )]
    NoTeeDetected,

    /// A platform file could not be read or written.
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

    /// A platform file exists but is not what it should be.
    #[error("{path} is not a valid {what}: {problem} (the file was not modified)")]
    InvalidFile {
        /// The file involved.
        path: PathBuf,
        /// What the file should have been.
        what: &'static str,
        /// What is wrong with it.
        problem: String,
    },

    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),

    /// The platform does not offer this operation.
    #[error("{0}")]
    Unsupported(&'static str),

    /// A TEE device or pseudo-file this backend needs does not exist.
    #[error("{backend}: {path} does not exist: {hint}")]
    DeviceMissing {
        /// The backend (`sgx-gramine`, `sgx-occlum`, `tdx`, `snp`).
        backend: &'static str,
        /// The missing device, file or directory.
        path: PathBuf,
        /// What is probably wrong and how to fix it.
        hint: &'static str,
    },

    /// The TEE interface exists but refused or garbled a request.
    #[error("{backend}: {problem}")]
    Tee {
        /// The backend (`sgx-gramine`, `sgx-occlum`, `tdx`, `snp`).
        backend: &'static str,
        /// What went wrong, including the file or ioctl involved.
        problem: String,
    },

    /// TDX offers no sealing key, so the standalone (self-sealing) mode cannot run on it.
    #[error(
        "tdx: Intel TDX offers no sealing key, so standalone mode cannot run on TDX; \
         use service mode instead, where keys come from an attested key service \
         (`coffer kms serve --keyd`, coming soon)"
    )]
    TdxNoSealingKey,

    /// Sealed data could not be opened: tampered, truncated, or sealed by another TEE identity.
    #[error("sealed data failed authentication (tampered, truncated, or sealed by another TEE identity)")]
    UnsealFailed,
}

impl PlatformError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        PlatformError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

impl PlatformError {
    /// A [`PlatformError::Tee`] for an I/O error on a TEE file, with a hint for the common
    /// cases (permission denied, missing file).
    pub(crate) fn tee_io(
        backend: &'static str,
        action: &str,
        path: &std::path::Path,
        e: io::Error,
    ) -> Self {
        let hint = match e.kind() {
            io::ErrorKind::PermissionDenied => {
                " (permission denied: run Coffer as a user allowed to use the TEE interface, \
                 usually root or a member of the group owning it)"
            }
            io::ErrorKind::NotFound => " (it does not exist: is this the right TEE backend?)",
            _ => "",
        };
        PlatformError::Tee {
            backend,
            problem: format!("{action} {}: {e}{hint}", path.display()),
        }
    }
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), PlatformError> {
    getrandom::getrandom(buf).map_err(|e| PlatformError::Random(e.to_string()))
}

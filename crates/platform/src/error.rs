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

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), PlatformError> {
    getrandom::getrandom(buf).map_err(|e| PlatformError::Random(e.to_string()))
}

//! Why `coffer run` could not start or keep the app, and the exit code each reason gives.

/// Exit code when keyd stayed unreachable until `--keyd-deadline` (EX_UNAVAILABLE): Kubernetes
/// restarts the pod.
pub const EXIT_UNAVAILABLE: i32 = 69;
/// Exit code when keyd refused a value (EX_NOPERM); the message names the Secret, the key and
/// keyd's reason, and the app was not started.
pub const EXIT_REFUSED: i32 = 77;
/// Exit code for a configuration `coffer run` cannot work with (EX_CONFIG): no namespace, an
/// unprotected `--out`, an unreadable volume, a bad policy.
pub const EXIT_CONFIG: i32 = 78;
/// Exit code for a failure of `coffer run` itself (EX_SOFTWARE).
pub const EXIT_INTERNAL: i32 = 70;

/// Why `coffer run` stopped. Messages never contain plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// Placeholder until i11-run fills in the variants.
    #[error("{0}")]
    Other(String),

    // --- i11-supervise: the app could not be started or supervised (126/127/70/78). ---
    /// The app could not be started or supervised.
    #[error(transparent)]
    App(#[from] crate::supervise::AppError),
}

impl RunError {
    /// The process exit code for this error (one of the `EXIT_*` constants, or 126/127 when the
    /// app cannot be executed / found, as a shell does).
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::App(err) => err.exit_code(),
            _ => EXIT_INTERNAL,
        }
    }
}

//! Why `coffer run` could not start or keep the app, and the exit code each reason gives.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

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

/// Where a sealed value was found: what an error names so an operator can find it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Origin {
    /// An environment variable.
    Env {
        /// The variable's name.
        var: String,
    },
    /// A file of a mounted Secret volume.
    File {
        /// The volume's mount directory (`--files`).
        dir: PathBuf,
        /// The file name: the Secret's data key.
        key: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env { var } => write!(f, "environment variable {var}"),
            Origin::File { dir, key } => write!(f, "file {}", dir.join(key).display()),
        }
    }
}

/// One value keyd (or `coffer run` itself, for a value that is not a valid sealed value)
/// refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Where the value was found.
    pub origin: Origin,
    /// The Secret it was presented as coming from (`namespace/name`).
    pub secret: String,
    /// The data key it was presented as.
    pub key: String,
    /// Why it was refused (keyd's reason, never the value).
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Secret {} key {:?} ({}): {}",
            self.secret, self.key, self.origin, self.reason
        )
    }
}

/// Why `coffer run` stopped. Messages never contain plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// No namespace from `--namespace`, `POD_NAMESPACE` or the namespace file.
    #[error(
        "the pod's namespace is unknown: no --namespace, no POD_NAMESPACE, and {file}: {detail}; \
         add to the container `env: [{{name: POD_NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: \
         metadata.namespace}}}}}}]` (the Downward API), or pass --namespace",
        file = .file.display()
    )]
    NoNamespace {
        /// The namespace file that was tried.
        file: PathBuf,
        /// Why it gave no namespace.
        detail: String,
    },

    /// A flag's value cannot be used.
    #[error("{flag} {value}: {reason}")]
    BadFlag {
        /// The flag.
        flag: &'static str,
        /// Its value (never a secret: names and paths only).
        value: String,
        /// What is wrong and what to do.
        reason: String,
    },

    /// `--files` was given without `--out`.
    #[error(
        "--files needs --out: unsealed files are written only to a TEE-private directory; add \
         --out DIR on a memory-backed volume (an emptyDir with `medium: Memory`)"
    )]
    FilesWithoutOut,

    /// `--out` is not TEE-private memory and `--allow-unprotected-out` was not given.
    #[error(
        "--out {out} is on {filesystem}, not TEE-private memory: the node could read the \
         plaintext written there. {fix}. (--allow-unprotected-out overrides this check; never \
         use it in production)",
        out = .out.display()
    )]
    UnprotectedOut {
        /// The `--out` directory.
        out: PathBuf,
        /// What file system it is on.
        filesystem: String,
        /// How to give it a private file system on this platform.
        fix: String,
    },

    /// A mounted Secret volume cannot be read.
    #[error("--files {dir}: {reason}", dir = .dir.display())]
    Volume {
        /// The volume's mount directory.
        dir: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },

    /// The `--out` directory cannot be written.
    #[error("--out {path}: {detail}", path = .path.display())]
    Out {
        /// The path that failed.
        path: PathBuf,
        /// The error.
        detail: String,
    },

    /// A sealed value's Secret or data key cannot be known: the kubelet does not say which
    /// Secret a variable or a volume came from, and the value's binding does not fix it.
    #[error(
        "{origin} holds a sealed value whose binding ({scope} scope) does not name its Secret \
         and data key, and no flag says where it came from: add {hint}"
    )]
    UnknownSource {
        /// Where the value was found.
        origin: Origin,
        /// The value's scope.
        scope: String,
        /// The flag to add.
        hint: String,
    },

    /// keyd could not be reached before `--keyd-deadline`.
    #[error(
        "keyd at {addr} stayed unreachable for {}s (--keyd-deadline): {last}; exiting so \
         Kubernetes will restart the pod",
        .after.as_secs_f64()
    )]
    KeydUnavailable {
        /// keyd's address.
        addr: String,
        /// How long `coffer run` tried.
        after: Duration,
        /// The last error.
        last: String,
    },

    /// keyd is not trusted, or refused this workload as a whole.
    #[error("keyd at {addr} refused this workload or is not trusted: {detail}")]
    KeydRefused {
        /// keyd's address.
        addr: String,
        /// keyd's reason, or why its evidence was refused.
        detail: String,
    },

    /// keyd answered in a way `coffer run` cannot use.
    #[error("keyd at {addr}: {detail}")]
    KeydFailed {
        /// keyd's address.
        addr: String,
        /// What went wrong.
        detail: String,
    },

    /// keyd refused values; the app was not started (no `--allow-missing`).
    #[error(
        "keyd refused {} sealed value(s); the app was not started (--allow-missing starts it \
         without them): {}",
        .0.len(),
        .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    Refused(Vec<Refusal>),

    /// A failure of `coffer run` itself.
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
            RunError::NoNamespace { .. }
            | RunError::BadFlag { .. }
            | RunError::FilesWithoutOut
            | RunError::UnprotectedOut { .. }
            | RunError::Volume { .. }
            | RunError::Out { .. }
            | RunError::UnknownSource { .. } => EXIT_CONFIG,
            RunError::KeydUnavailable { .. } => EXIT_UNAVAILABLE,
            RunError::KeydRefused { .. } | RunError::Refused(_) => EXIT_REFUSED,
            RunError::App(e) => e.exit_code(),
            RunError::KeydFailed { .. } | RunError::Other(_) => EXIT_INTERNAL,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_secret_the_key_the_origin_and_the_reason() {
        let e = RunError::Refused(vec![Refusal {
            origin: Origin::Env {
                var: "DB_PASSWORD".into(),
            },
            secret: "payments/db".into(),
            key: "password".into(),
            reason: "no grant".into(),
        }]);
        let text = e.to_string();
        for needle in ["payments/db", "\"password\"", "DB_PASSWORD", "no grant"] {
            assert!(text.contains(needle), "{text}");
        }
        assert_eq!(e.exit_code(), EXIT_REFUSED);
    }
}

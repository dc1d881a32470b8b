//! Errors of the state store.

use crate::format::FormatError;

/// Why a state-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The options cannot work (a malformed endpoint, an unreadable TLS file, …).
    #[error("etcd configuration: {0}")]
    Config(String),
    /// No etcd endpoint answered: reads keep being served from memory, writes fail.
    #[error("etcd is unavailable ({endpoints}): {message}; check that etcd runs and that the endpoints, TLS files and credentials given are right")]
    Unavailable {
        /// The endpoints tried.
        endpoints: String,
        /// What the transport said.
        message: String,
    },
    /// etcd refused the credentials.
    #[error("etcd refused authentication as {user:?}: {message}; check --etcd-user and --etcd-password-file")]
    Auth {
        /// The user name sent.
        user: String,
        /// What etcd said.
        message: String,
    },
    /// etcd answered the request with an error.
    #[error("etcd refused {operation} on {key}: {message}")]
    Rejected {
        /// The operation (`get`, `put`, …).
        operation: &'static str,
        /// The key or prefix, as text.
        key: String,
        /// What etcd said.
        message: String,
    },
    /// A watch ended: etcd compacted past the revision it started from, or cancelled it.
    #[error("etcd watch on {prefix} ended: {reason}")]
    WatchEnded {
        /// The prefix watched.
        prefix: String,
        /// Why.
        reason: String,
    },
    /// A stored record cannot be opened.
    #[error(transparent)]
    Format(#[from] FormatError),
}

impl StoreError {
    /// Maps a gRPC status, calling an unreachable cluster [`StoreError::Unavailable`].
    pub(crate) fn from_status(
        status: tonic::Status,
        endpoints: &str,
        operation: &'static str,
        key: &[u8],
    ) -> Self {
        if is_unavailable(&status) {
            return StoreError::Unavailable {
                endpoints: endpoints.to_string(),
                message: describe(&status),
            };
        }
        StoreError::Rejected {
            operation,
            key: String::from_utf8_lossy(key).into_owned(),
            message: format!("{:?}: {}", status.code(), status.message()),
        }
    }
}

/// Whether `status` means no etcd member could be reached. A refused connection reaches us as
/// `Unknown: transport error` (tonic's transport error as the source), not as `Unavailable`.
pub(crate) fn is_unavailable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
    ) || sources(status).any(|e| e.is::<tonic::transport::Error>())
}

fn sources(status: &tonic::Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(status), |e| e.source())
}

/// The status message and the innermost cause ("Connection refused", …).
pub(crate) fn describe(status: &tonic::Status) -> String {
    match sources(status).last() {
        Some(cause) => format!("{}: {cause}", status.message()),
        None => status.message().to_string(),
    }
}

//! The client's error type, and the error-chain text both the client and the pool report.

use std::time::Duration;

/// Why connecting to keyd or a [`KeydClient`](crate::KeydClient) call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The attested TLS identity or configuration could not be built.
    #[error("attested TLS: {0}")]
    Ratls(#[from] coffer_ratls::RatlsError),

    /// The gRPC transport could not be set up.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),

    /// Connecting to keyd failed (name resolution, TCP, attested TLS handshake, or HTTP/2).
    #[error("connecting to keyd at {addr}: {detail}")]
    Connect {
        /// keyd's address.
        addr: String,
        /// The error and its causes.
        detail: String,
    },

    /// keyd did not complete the connection or answer a call in time.
    #[error("keyd at {addr} did not answer within {}s ({what}); is keyd listening there? is a firewall dropping the connection?", .after.as_secs_f64())]
    TimedOut {
        /// keyd's address.
        addr: String,
        /// What was waiting: connecting, or the RPC's name.
        what: &'static str,
        /// The limit that passed.
        after: Duration,
    },

    /// keyd's attested certificate does not satisfy the policy this client holds keyd to.
    #[error("keyd at {addr} is not trusted: {detail}; check that the policy names this keyd's measurement and TCB (and allows simulation if keyd runs on the sim platform)")]
    Untrusted {
        /// keyd's address.
        addr: String,
        /// Why its certificate or evidence was refused.
        detail: String,
    },

    /// keyd closed the TLS connection during or right after the handshake: it did not accept
    /// this client's attestation.
    #[error("keyd refused this client at the TLS layer ({detail}); check that keyd's attestation policy grants a role to this client's evidence (and allows simulation if the client runs in sim mode)")]
    RefusedByServer {
        /// The TLS or transport error the client saw.
        detail: String,
    },

    /// A keyring name is not `[a-z0-9-]{1,63}`.
    #[error(transparent)]
    InvalidKeyringName(#[from] crate::InvalidKeyringName),

    /// keyd's answer does not have the shape the API promises.
    #[error("keyd sent a malformed {rpc} answer: {detail}")]
    MalformedAnswer {
        /// The RPC.
        rpc: &'static str,
        /// What is wrong with it.
        detail: String,
    },

    /// keyd does not serve this RPC (it predates it): the call cannot work against this keyd.
    #[error("keyd does not serve {rpc} (UNIMPLEMENTED{}); upgrade keyd to a version that does", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Unsupported {
        /// The RPC.
        rpc: &'static str,
        /// keyd's message, if any.
        detail: String,
    },

    /// A request is larger than keyd accepts; it was not sent.
    #[error("the {what} is {len} bytes; keyd accepts at most {limit}")]
    TooLarge {
        /// What is too large.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },

    /// The RPC reached keyd and failed; the status says why.
    #[error("keyd returned {}: {}", .0.code(), .0.message())]
    Rpc(Box<tonic::Status>),
}

impl ClientError {
    /// The gRPC status, when keyd answered the call with an error.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Rpc(status) => Some(status),
            _ => None,
        }
    }
}

/// `first`, then the text of `source` and each of its causes, joined with ": " (repeated
/// texts are dropped).
pub fn error_chain(first: String, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut parts: Vec<String> = vec![first];
    let mut next = source;
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// The error text and all its causes, joined (repeated texts are dropped).
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    error_chain(e.to_string(), e.source())
}

/// The status message and its error sources, joined (repeated texts are dropped).
pub(crate) fn status_chain(status: &tonic::Status) -> String {
    error_chain(
        status.message().to_string(),
        std::error::Error::source(status),
    )
}

//! What a failed connection attempt means: keyd unreachable, keyd refusing this client, or
//! keyd not trusted by this client. The pool keeps it per connection; the single client turns it
//! into its error.

use std::io;

/// What went wrong with a connection, kept per connection so that calls failing on it can say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FailureKind {
    Unreachable,
    Refused,
    Untrusted,
}

impl Failure {
    pub(crate) fn unreachable(detail: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Unreachable,
            detail: detail.into(),
        }
    }

    /// Classifies an I/O error from the TLS handshake or the first reads after it.
    pub(crate) fn from_io(e: &io::Error) -> Self {
        let tls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls {
            // TLS 1.3 finishes the client's side of the handshake before the server has checked
            // the client certificate, so keyd's refusal arrives as an alert on the first read.
            Some(rustls::Error::AlertReceived(alert)) => Failure {
                kind: FailureKind::Refused,
                detail: format!(
                    "TLS alert {alert:?} at the handshake: keyd did not accept this client's attestation \
                     (check that keyd's policy grants a role to this client's evidence, and allows \
                     simulation if this client runs on the sim platform)"
                ),
            },
            Some(rustls::Error::InvalidCertificate(why)) => Failure {
                kind: FailureKind::Untrusted,
                detail: format!(
                    "its attested certificate was refused: {}",
                    coffer_ratls::describe_certificate_error(why)
                ),
            },
            // rustls' text for this points at its manual; say what happened instead.
            _ if e.kind() == io::ErrorKind::UnexpectedEof => {
                Failure::unreachable("keyd closed the connection")
            }
            _ => Failure::unreachable(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_untrusted_peers_are_told_apart() {
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
        );
        assert_eq!(Failure::from_io(&alert).kind, FailureKind::Refused);
        let cert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding),
        );
        assert_eq!(Failure::from_io(&cert).kind, FailureKind::Untrusted);
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(Failure::from_io(&reset).kind, FailureKind::Unreachable);
    }
}

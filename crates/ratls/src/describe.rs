//! Human text for TLS failures. rustls formats a certificate refusal with `Debug`
//! (`invalid peer certificate: Other(OtherError(…))`); operators get the refusal's own words.

use std::io;

/// Why a certificate was refused: the attestation refusal's own text when it is one.
pub fn describe_certificate_error(why: &rustls::CertificateError) -> String {
    match why {
        rustls::CertificateError::Other(other) => other.0.to_string(),
        other => format!("{other:?}"),
    }
}

/// Describes a handshake failure: the refusal itself when the peer's certificate was refused,
/// the alert when the peer ended the handshake, rustls' text otherwise.
pub fn describe_tls_error(error: &rustls::Error) -> String {
    match error {
        rustls::Error::InvalidCertificate(why) => format!(
            "the peer's certificate was refused: {}",
            describe_certificate_error(why)
        ),
        rustls::Error::AlertReceived(alert) => format!(
            "the peer ended the handshake with TLS alert {alert:?} (it did not accept this \
             side's certificate or attestation)"
        ),
        other => other.to_string(),
    }
}

/// As [`describe_tls_error`], for the I/O error a TLS stream returns (rustls' error inside).
pub fn describe_io_error(error: &io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => describe_tls_error(tls),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn refusals_read_without_debug_wrappers() {
        let refusal = crate::RatlsError::Evidence("sim signer ab is not accepted".into());
        let tls: rustls::Error = refusal.into();
        let io = io::Error::new(io::ErrorKind::InvalidData, tls);
        assert_eq!(
            describe_io_error(&io),
            "the peer's certificate was refused: evidence verification failed: sim signer ab is \
             not accepted"
        );
        let other = rustls::OtherError(Arc::new(io::Error::other("x")));
        let text = describe_tls_error(&rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(other),
        ));
        assert!(!text.contains("OtherError"), "{text}");
    }
}

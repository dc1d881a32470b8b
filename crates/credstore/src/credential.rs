//! One stored credential: what kubectl needs to authenticate as one kubeconfig user.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use zeroize::Zeroizing;

use crate::Error;

/// The largest credential (certificate + key + token, in bytes) the store accepts, so that an
/// agent can hold each one on a fixed number of locked pages.
pub const MAX_CREDENTIAL_BYTES: usize = 32 * 1024;

/// Bytes that must not leak: zeroized on drop, redacted in `Debug`, base64 in the store.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Wraps secret bytes.
    pub fn new(bytes: Zeroizing<Vec<u8>>) -> Self {
        SecretBytes(bytes)
    }

    /// The secret bytes; keep any copy zeroized.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text, for the fields that kubectl takes as strings (PEM, tokens).
    pub fn as_str(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.0)
            .map_err(|_| Error::InvalidCredential("a credential is not valid UTF-8 text".into()))
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<redacted {} bytes>)", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let encoded = Zeroizing::new(STANDARD.encode(&self.0[..]));
        serializer.serialize_str(&encoded)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Base64Visitor;
        impl Visitor<'_> for Base64Visitor {
            type Value = SecretBytes;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("base64 text")
            }

            // Base64 has nothing to unescape, so serde_json hands out a slice of the (zeroized)
            // input instead of an unzeroized scratch copy.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SecretBytes, E> {
                if v.len() > MAX_CREDENTIAL_BYTES.div_ceil(3) * 4 {
                    return Err(E::custom("credential too large"));
                }
                let mut out = Zeroizing::new(Vec::with_capacity(v.len() / 4 * 3 + 3));
                STANDARD
                    .decode_vec(v, &mut out)
                    .map_err(|_| E::custom("credential is not valid base64"))?;
                Ok(SecretBytes(out))
            }
        }
        deserializer.deserialize_str(Base64Visitor)
    }
}

/// A kubeconfig user's credential: a client certificate and key (PEM), a bearer token, or
/// both. Never printed: `Debug` shows only which parts are present.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// Client certificate (chain), PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<SecretBytes>,
    /// Client private key, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<SecretBytes>,
    /// Bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretBytes>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({})", self.parts().join(", "))
    }
}

impl Credential {
    /// Names of the parts present (`client certificate`, `client key`, `token`).
    pub fn parts(&self) -> Vec<&'static str> {
        let mut parts = Vec::new();
        if self.client_certificate.is_some() {
            parts.push("client certificate");
        }
        if self.client_key.is_some() {
            parts.push("client key");
        }
        if self.token.is_some() {
            parts.push("token");
        }
        parts
    }

    /// An upper bound of this credential's length as JSON, to reserve buffers that never
    /// reallocate (a reallocation would leave an unzeroized copy behind).
    pub fn json_len_hint(&self) -> usize {
        let parts = [&self.client_certificate, &self.client_key, &self.token];
        // Base64 (4/3) or JSON escaping of PEM text (newlines: 2 bytes each) plus the names.
        128 + parts
            .into_iter()
            .flatten()
            .map(|p| p.len() * 2)
            .sum::<usize>()
    }

    /// Checks what kubectl needs: certificate and key together, or a token, all text, within
    /// [`MAX_CREDENTIAL_BYTES`].
    pub fn validate(&self) -> Result<(), Error> {
        match (&self.client_certificate, &self.client_key) {
            (Some(_), None) => {
                return Err(Error::InvalidCredential(
                    "a client certificate without its client key cannot be used; the kubeconfig \
                     user needs both (client-certificate[-data] and client-key[-data])"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(Error::InvalidCredential(
                    "a client key without its client certificate cannot be used; the kubeconfig \
                     user needs both (client-certificate[-data] and client-key[-data])"
                        .into(),
                ))
            }
            (None, None) if self.token.is_none() => {
                return Err(Error::InvalidCredential(
                    "no credential: expected a client certificate and key, or a token".into(),
                ))
            }
            _ => {}
        }
        let parts = [&self.client_certificate, &self.client_key, &self.token];
        let mut total = 0;
        for part in parts.into_iter().flatten() {
            if part.is_empty() {
                return Err(Error::InvalidCredential(
                    "a credential part is empty".into(),
                ));
            }
            part.as_str()?;
            total += part.len();
        }
        if total > MAX_CREDENTIAL_BYTES {
            return Err(Error::InvalidCredential(format!(
                "the credential is {total} bytes, more than the {MAX_CREDENTIAL_BYTES}-byte limit"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn secret(s: &str) -> SecretBytes {
        SecretBytes::new(Zeroizing::new(s.as_bytes().to_vec()))
    }

    #[test]
    fn debug_never_shows_bytes() {
        let c = Credential {
            client_certificate: Some(secret("CERTPEM")),
            client_key: Some(secret("KEYPEM")),
            token: Some(secret("tok3n")),
        };
        let shown = format!("{c:?} {:?}", c.token);
        assert!(
            !shown.contains("PEM") && !shown.contains("tok3n"),
            "{shown}"
        );
        assert!(
            shown.contains("client certificate, client key, token"),
            "{shown}"
        );
    }

    #[test]
    fn validation() {
        let cert_only = Credential {
            client_certificate: Some(secret("c")),
            client_key: None,
            token: None,
        };
        assert!(cert_only
            .validate()
            .unwrap_err()
            .to_string()
            .contains("needs both"));
        let none = Credential {
            client_certificate: None,
            client_key: None,
            token: None,
        };
        assert!(none.validate().is_err());
        let big = Credential {
            client_certificate: None,
            client_key: None,
            token: Some(secret(&"x".repeat(MAX_CREDENTIAL_BYTES + 1))),
        };
        assert!(big.validate().unwrap_err().to_string().contains("limit"));
        let binary = Credential {
            client_certificate: None,
            client_key: None,
            token: Some(SecretBytes::new(Zeroizing::new(vec![0xff, 0xfe]))),
        };
        assert!(binary.validate().unwrap_err().to_string().contains("UTF-8"));
        let token = Credential {
            client_certificate: None,
            client_key: None,
            token: Some(secret("t")),
        };
        token.validate().unwrap();
        let json = serde_json::to_string(&token).unwrap();
        assert_eq!(json, r#"{"token":"dA=="}"#);
        assert_eq!(serde_json::from_str::<Credential>(&json).unwrap(), token);
        assert!(serde_json::from_str::<Credential>(r#"{"token":"%%"}"#).is_err());
    }
}

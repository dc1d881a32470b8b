//! Sealing key pairs, their public halves and their ids.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::suite;

/// The domain separator of [`key_id`].
const KEY_ID_LABEL: &[u8] = b"coffer sealing key v1\0";
/// `sk-` and 16 lower-case hex digits.
pub(crate) const KEY_ID_LEN: usize = 3 + 16;

/// The id of a sealing public key: lower-case hex of the first 8 bytes of
/// SHA-256("coffer sealing key v1\0" || public key), prefixed `sk-` (e.g. `sk-0123456789abcdef`).
pub fn key_id(public_key: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(KEY_ID_LABEL)
        .chain_update(public_key)
        .finalize();
    format!("sk-{}", hex::encode(&digest[..8]))
}

/// Whether `id` has the form of a [`key_id`] (it cannot say whose).
pub(crate) fn is_key_id_form(id: &str) -> bool {
    id.len() == KEY_ID_LEN
        && id.starts_with("sk-")
        && id[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A public X25519 sealing key and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealingPublicKey {
    id: String,
    bytes: [u8; 32],
}

impl SealingPublicKey {
    /// The key from its 32 bytes; the id is computed ([`key_id`]).
    pub fn from_bytes(bytes: [u8; 32]) -> SealingPublicKey {
        SealingPublicKey {
            id: key_id(&bytes),
            bytes,
        }
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The 32 public key bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

/// A sealing key pair. The private key is zeroized on drop and never printed.
pub struct SealingKeyPair {
    private: Zeroizing<[u8; 32]>,
    public: SealingPublicKey,
}

impl fmt::Debug for SealingKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKeyPair")
            .field("id", &self.public.id)
            .field("private", &"<redacted>")
            .finish()
    }
}

impl SealingKeyPair {
    /// A new random key pair (from the OS's CSPRNG).
    ///
    /// Fails only when the operating system's random number generator does.
    pub fn generate() -> Result<SealingKeyPair, coffer_platform::PlatformError> {
        let mut private = Zeroizing::new([0u8; 32]);
        coffer_platform::fill_random(&mut private[..])?;
        Ok(SealingKeyPair::from_private(private))
    }

    /// The key pair of a stored private key.
    pub fn from_private(private: Zeroizing<[u8; 32]>) -> SealingKeyPair {
        // Every 32-byte string is an X25519 private key (it is clamped when used).
        let public = suite::public_key(&private).unwrap_or([0; 32]);
        SealingKeyPair {
            private,
            public: SealingPublicKey::from_bytes(public),
        }
    }

    /// The key pair RFC 9180's `DeriveKeyPair` makes from `ikm` (test vectors, and keys
    /// derived from a secret seed).
    pub fn derive(ikm: &[u8]) -> SealingKeyPair {
        let (private, public) = suite::derive_key_pair(ikm);
        SealingKeyPair {
            private,
            public: SealingPublicKey::from_bytes(public),
        }
    }

    /// The private key bytes, for sealing them into durable storage.
    pub fn private_bytes(&self) -> &[u8; 32] {
        &self.private
    }

    /// The public half.
    pub fn public(&self) -> &SealingPublicKey {
        &self.public
    }

    /// The key id.
    pub fn id(&self) -> &str {
        self.public.id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_form_and_debug_redaction() {
        let pair = SealingKeyPair::generate().unwrap();
        assert!(is_key_id_form(pair.id()), "{}", pair.id());
        assert_eq!(pair.id(), key_id(pair.public().bytes()));
        let again = SealingKeyPair::from_private(Zeroizing::new(*pair.private_bytes()));
        assert_eq!(again.public(), pair.public());
        let debug = format!("{pair:?}");
        assert!(!debug.contains(&hex::encode(pair.private_bytes())));
        assert!(debug.contains("<redacted>"));
        assert!(!is_key_id_form("sk-0123456789ABCDEF"));
        assert!(!is_key_id_form("sk-0123456789abcde"));
    }

    #[test]
    fn key_id_is_the_documented_hash() {
        // SHA-256("coffer sealing key v1\0" || 32 zero bytes), first 8 bytes.
        let mut input = KEY_ID_LABEL.to_vec();
        input.extend_from_slice(&[0u8; 32]);
        let digest = Sha256::digest(&input);
        assert_eq!(
            key_id(&[0; 32]),
            format!("sk-{}", hex::encode(&digest[..8]))
        );
    }
}

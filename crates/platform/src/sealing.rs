//! Sealing: authenticated encryption under a key bound to the TEE's identity.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use std::fmt;
use zeroize::Zeroizing;

use crate::{fill_random, PlatformError};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A 256-bit sealing key. Zeroized on drop; never printed.
pub struct SealingKey {
    key: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

impl SealingKey {
    /// Wraps raw key bytes produced by a platform backend.
    pub fn from_bytes(key: Zeroizing<[u8; 32]>) -> Self {
        SealingKey { key }
    }

    /// The raw key, for deriving subkeys (e.g. a MAC key). Keep derived material zeroized.
    pub fn expose(&self) -> &[u8; 32] {
        &self.key
    }

    /// Seals `plaintext`, binding it to `aad`: `nonce(12) ‖ AES-256-GCM(ciphertext ‖ tag)`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, PlatformError> {
        let cipher =
            Aes256Gcm::new_from_slice(&self.key[..]).map_err(|_| PlatformError::UnsealFailed)?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| PlatformError::UnsealFailed)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Opens data made by [`SealingKey::seal`] with the same key and `aad`.
    pub fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, PlatformError> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(PlatformError::UnsealFailed);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let cipher =
            Aes256Gcm::new_from_slice(&self.key[..]).map_err(|_| PlatformError::UnsealFailed)?;
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| PlatformError::UnsealFailed)
    }
}

/// Derives a per-purpose [`SealingKey`] from raw TEE key material with HKDF-SHA256
/// (`salt` names the backend, `info` is the purpose). Raw TEE keys are never used directly.
pub(crate) fn derive_sealing_key(
    salt: &[u8],
    ikm: &[u8],
    purpose: &str,
) -> Result<SealingKey, PlatformError> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), ikm);
    let mut key = Zeroizing::new([0u8; 32]);
    hk.expand(purpose.as_bytes(), &mut key[..])
        .map_err(|_| PlatformError::Random("HKDF output length".into()))?;
    Ok(SealingKey::from_bytes(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> SealingKey {
        SealingKey::from_bytes(Zeroizing::new([byte; 32]))
    }

    #[test]
    fn round_trip_and_binding() {
        let k = key(7);
        let sealed = k.seal(b"aad", b"secret").unwrap();
        assert_eq!(&k.unseal(b"aad", &sealed).unwrap()[..], b"secret");
        assert!(matches!(
            k.unseal(b"other", &sealed),
            Err(PlatformError::UnsealFailed)
        ));
        assert!(matches!(
            key(8).unseal(b"aad", &sealed),
            Err(PlatformError::UnsealFailed)
        ));
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert!(k.unseal(b"aad", &t).is_err(), "bit flip at {i} accepted");
        }
        assert!(k.unseal(b"aad", &sealed[..20]).is_err());
        assert!(k.unseal(b"aad", &[]).is_err());
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", key(0x41)), "SealingKey(<redacted>)");
    }
}

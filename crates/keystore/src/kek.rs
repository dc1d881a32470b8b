//! Key-encryption keys in memory, and the keyring the plugin serves from.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use coffer_platform::secret::Locked;
use coffer_platform::{fill_random, PlatformError};
use zeroize::Zeroizing;

use crate::ciphertext::{self, NONCE_LEN, TAG_LEN};
use crate::{DecryptError, KeystoreError, MAX_PLAINTEXT_LEN};

/// One AES-256-GCM key-encryption key. The expanded key lives on locked, wiped-on-drop pages;
/// the raw key bytes are not kept.
pub struct Kek {
    id: String,
    created: SystemTime,
    aad: Vec<u8>,
    cipher: Locked<Aes256Gcm>,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .field("created", &humantime::format_rfc3339_seconds(self.created))
            .finish_non_exhaustive()
    }
}

impl Kek {
    /// Builds a KEK from its raw 32 bytes.
    pub fn from_raw(id: String, created: SystemTime, raw: &[u8; 32]) -> Self {
        let cipher = Locked::new_with(|| Aes256Gcm::new(raw.into()));
        Kek {
            aad: ciphertext::associated_data(&id),
            id,
            created,
            cipher,
        }
    }

    /// The KEK's public, never-reused id (the KMS `key_id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When the KEK was created.
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// Encrypts `plaintext` into the [`ciphertext`] format.
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, PlatformError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let mut out = ciphertext::header(&self.id, &nonce, plaintext.len() + TAG_LEN);
        let body_start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), &self.aad, &mut out[body_start..])
            .map_err(|_| PlatformError::Random("AES-GCM refused the input length".into()))?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts a parsed ciphertext made with this KEK.
    fn decrypt(&self, parsed: &ciphertext::Parsed<'_>) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let (body, tag) = parsed.sealed.split_at(parsed.sealed.len() - TAG_LEN);
        let mut plaintext = Zeroizing::new(body.to_vec());
        self.cipher
            .decrypt_in_place_detached(
                Nonce::from_slice(parsed.nonce),
                &self.aad,
                &mut plaintext,
                Tag::from_slice(tag),
            )
            .map_err(|_| DecryptError::Authentication)?;
        Ok(plaintext)
    }

    /// Encrypts and decrypts a random value; proves the key works before it is used.
    pub fn self_test(&self) -> Result<(), KeystoreError> {
        let failed = || KeystoreError::SelfTestFailed {
            key_id: self.id.clone(),
        };
        let mut probe = Zeroizing::new([0u8; 32]);
        fill_random(&mut probe[..])?;
        let ct = self.encrypt(&probe[..]).map_err(|_| failed())?;
        let parsed = ciphertext::parse(&ct).map_err(|_| failed())?;
        let back = self.decrypt(&parsed).map_err(|_| failed())?;
        if back.as_slice() != &probe[..] {
            return Err(failed());
        }
        Ok(())
    }
}

/// Errors from [`Keyring::encrypt`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncryptError {
    /// Nothing to encrypt.
    #[error("plaintext is empty")]
    Empty,
    /// Over [`MAX_PLAINTEXT_LEN`].
    #[error("plaintext is {0} bytes; the limit is {MAX_PLAINTEXT_LEN} (kube-apiserver sends 32)")]
    TooLong(usize),
    /// The random number generator failed.
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

/// All KEKs of a keystore generation: the primary encrypts, all of them decrypt.
/// Immutable; a rotation builds a new keyring and the server swaps it in.
pub struct Keyring {
    primary: Arc<Kek>,
    by_id: HashMap<String, Arc<Kek>>,
    generation: u64,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<&str> = self.by_id.keys().map(String::as_str).collect();
        ids.sort_unstable();
        f.debug_struct("Keyring")
            .field("primary", &self.primary.id)
            .field("keys", &ids)
            .field("generation", &self.generation)
            .finish()
    }
}

impl Keyring {
    /// Builds a keyring and self-tests every KEK in it.
    pub fn new(keks: Vec<Kek>, primary_id: &str, generation: u64) -> Result<Self, KeystoreError> {
        let mut by_id = HashMap::with_capacity(keks.len());
        for kek in keks {
            kek.self_test()?;
            by_id.insert(kek.id.clone(), Arc::new(kek));
        }
        let primary = by_id
            .get(primary_id)
            .cloned()
            .ok_or_else(|| KeystoreError::UnknownKey {
                key_id: primary_id.to_string(),
            })?;
        Ok(Keyring {
            primary,
            by_id,
            generation,
        })
    }

    /// The primary KEK's id: what Status and Encrypt report.
    pub fn primary_id(&self) -> &str {
        &self.primary.id
    }

    /// When the primary KEK was created (drives `--rotate-every`).
    pub fn primary_created(&self) -> SystemTime {
        self.primary.created
    }

    /// Self-tests the primary KEK: can the plugin encrypt and decrypt right now?
    pub fn self_test(&self) -> Result<(), KeystoreError> {
        self.primary.self_test()
    }

    /// The keystore generation this keyring was loaded from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of KEKs that can decrypt.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Always false: a keyring has at least its primary.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Encrypts with the primary KEK; returns the ciphertext (the KEK id is inside it).
    pub fn encrypt(&self, plaintext: &[u8]) -> Result<Vec<u8>, EncryptError> {
        if plaintext.is_empty() {
            return Err(EncryptError::Empty);
        }
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(EncryptError::TooLong(plaintext.len()));
        }
        Ok(self.primary.encrypt(plaintext)?)
    }

    /// Decrypts with whichever KEK the ciphertext names. When the caller states the key id it
    /// expects (`requested_key_id`, as KMS v2 does), a ciphertext naming another KEK is refused.
    pub fn decrypt(
        &self,
        requested_key_id: Option<&str>,
        ciphertext_bytes: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let parsed = ciphertext::parse(ciphertext_bytes)?;
        if let Some(requested) = requested_key_id {
            if requested != parsed.key_id {
                return Err(DecryptError::KeyIdMismatch {
                    embedded: parsed.key_id.to_string(),
                    requested: requested.to_string(),
                });
            }
        }
        let kek = self
            .by_id
            .get(parsed.key_id)
            .ok_or_else(|| DecryptError::UnknownKey(parsed.key_id.to_string()))?;
        kek.decrypt(&parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        let a = Kek::from_raw("coffer-0001-aaaa".into(), SystemTime::now(), &[1; 32]);
        let b = Kek::from_raw("coffer-0002-bbbb".into(), SystemTime::now(), &[2; 32]);
        Keyring::new(vec![a, b], "coffer-0002-bbbb", 2).unwrap()
    }

    #[test]
    fn encrypts_with_primary_and_decrypts_with_any() {
        let ring = keyring();
        let ct = ring.encrypt(&[42; 32]).unwrap();
        assert!(ct.len() < 120, "ciphertext is {} bytes", ct.len());
        assert_eq!(ciphertext::parse(&ct).unwrap().key_id, "coffer-0002-bbbb");
        assert_eq!(
            &ring.decrypt(Some("coffer-0002-bbbb"), &ct).unwrap()[..],
            &[42; 32]
        );
        assert_eq!(&ring.decrypt(None, &ct).unwrap()[..], &[42; 32]);
        let old = ring.by_id["coffer-0001-aaaa"].encrypt(b"older").unwrap();
        assert_eq!(
            &ring.decrypt(Some("coffer-0001-aaaa"), &old).unwrap()[..],
            b"older"
        );
    }

    #[test]
    fn refuses_mismatch_unknown_tampered_and_bad_lengths() {
        let ring = keyring();
        let ct = ring.encrypt(b"dek").unwrap();
        assert!(matches!(
            ring.decrypt(Some("coffer-0001-aaaa"), &ct),
            Err(DecryptError::KeyIdMismatch { .. })
        ));
        for i in 0..ct.len() {
            let mut t = ct.clone();
            t[i] ^= 0x01;
            assert!(ring.decrypt(None, &t).is_err(), "flip at byte {i} accepted");
        }
        let stranger = Kek::from_raw("coffer-0009-cccc".into(), SystemTime::now(), &[3; 32]);
        let foreign = stranger.encrypt(b"x").unwrap();
        assert_eq!(
            ring.decrypt(None, &foreign),
            Err(DecryptError::UnknownKey("coffer-0009-cccc".into()))
        );
        assert!(matches!(ring.encrypt(b""), Err(EncryptError::Empty)));
        assert!(matches!(
            ring.encrypt(&[0; MAX_PLAINTEXT_LEN + 1]),
            Err(EncryptError::TooLong(_))
        ));
        let max = ring.encrypt(&[0; MAX_PLAINTEXT_LEN]).unwrap();
        assert!(max.len() < 1024);
    }

    #[test]
    fn relabelled_ciphertext_fails_authentication() {
        // Same key material under two ids: the id is bound as AAD, so relabelling fails.
        let a = Kek::from_raw("coffer-0001-aaaa".into(), SystemTime::now(), &[1; 32]);
        let twin = Kek::from_raw("coffer-0001-aaab".into(), SystemTime::now(), &[1; 32]);
        let ring = Keyring::new(vec![a, twin], "coffer-0001-aaaa", 1).unwrap();
        let mut ct = ring.encrypt(b"secret").unwrap();
        let last = 3 + "coffer-0001-aaaa".len() - 1;
        ct[last] = b'b';
        assert_eq!(ring.decrypt(None, &ct), Err(DecryptError::Authentication));
    }

    #[test]
    fn debug_shows_ids_only() {
        let shown = format!("{:?}", keyring());
        assert!(shown.contains("coffer-0002-bbbb"));
        assert!(!shown.contains("cipher"));
    }
}

//! One record as stored: `version (1 byte) || nonce (12 bytes) || AES-256-GCM ciphertext`.
//!
//! The associated data is a label, the version byte and the record's full store key. Binding
//! the key means a record copied or moved to another key does not open: a store operator
//! cannot make keyd load keyring `a`'s keys as keyring `b`'s. Binding the version means a
//! record cannot be reinterpreted under another format. AES-GCM's 96-bit random nonces are
//! safe here: a keyd root writes far fewer than 2^32 records.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

/// The record format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Domain separation for the associated data.
const AAD_LABEL: &[u8] = b"coffer-keyd-store record\0";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The key records are encrypted with, derived from keyd's root. Zeroized on drop; never printed.
pub struct StoreKey(Zeroizing<[u8; 32]>);

impl StoreKey {
    /// Wraps key bytes (from `KeydRoot::state_store_key`).
    pub fn new(bytes: Zeroizing<[u8; 32]>) -> Self {
        StoreKey(bytes)
    }
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(<redacted>)")
    }
}

/// Why a record does not open. Each names the store key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// The value is empty or shorter than a nonce and a tag.
    #[error("state record {key} is truncated ({len} bytes): it was not written by keyd; restore it from a backup")]
    Truncated {
        /// The store key.
        key: String,
        /// Its length.
        len: usize,
    },
    /// The value starts with a version this build does not know.
    #[error("state record {key} has format version {version}; this build reads version {FORMAT_VERSION}: run a coffer release that matches the replica that wrote it")]
    UnknownVersion {
        /// The store key.
        key: String,
        /// The version byte found.
        version: u8,
    },
    /// Authentication failed: the value was altered, moved from another key, or written under
    /// another keyd root. Nothing from it is used.
    #[error("state record {key} does not authenticate under this keyd's root: it was altered, moved from another key, or written by another keyd (another root); nothing from it is used")]
    NotAuthentic {
        /// The store key.
        key: String,
    },
    /// The system random number generator failed.
    #[error("cannot draw a nonce for state record {key}: {message}")]
    Random {
        /// The store key.
        key: String,
        /// What failed.
        message: String,
    },
}

fn key_text(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

fn aad(version: u8, key: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 1 + key.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.push(version);
    aad.extend_from_slice(key);
    aad
}

fn cipher(key: &StoreKey) -> Aes256Gcm {
    Aes256Gcm::new_from_slice(&key.0[..]).expect("AES-256 takes a 32-byte key")
}

/// Encrypts `plaintext` as the record stored at `store_key`.
pub fn seal(key: &StoreKey, store_key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, FormatError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(|e| FormatError::Random {
        key: key_text(store_key),
        message: e.to_string(),
    })?;
    let aad = aad(FORMAT_VERSION, store_key);
    let ciphertext = cipher(key)
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .expect("AES-GCM encrypts any message under the length limit");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    out.push(FORMAT_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Decrypts the record stored at `store_key`.
pub fn open(
    key: &StoreKey,
    store_key: &[u8],
    value: &[u8],
) -> Result<Zeroizing<Vec<u8>>, FormatError> {
    let Some((&version, rest)) = value.split_first() else {
        return Err(FormatError::Truncated {
            key: key_text(store_key),
            len: 0,
        });
    };
    if version != FORMAT_VERSION {
        return Err(FormatError::UnknownVersion {
            key: key_text(store_key),
            version,
        });
    }
    if rest.len() < NONCE_LEN + TAG_LEN {
        return Err(FormatError::Truncated {
            key: key_text(store_key),
            len: value.len(),
        });
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let aad = aad(version, store_key);
    cipher(key)
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| FormatError::NotAuthentic {
            key: key_text(store_key),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> StoreKey {
        StoreKey::new(Zeroizing::new([byte; 32]))
    }

    const PATH: &[u8] = b"/coffer/keyd/keyrings/a/keystore";

    #[test]
    fn round_trip_and_fresh_nonces() {
        let k = key(1);
        let a = seal(&k, PATH, b"kek bytes").unwrap();
        let b = seal(&k, PATH, b"kek bytes").unwrap();
        assert_ne!(a, b, "every write draws a new nonce");
        assert_eq!(a[0], FORMAT_VERSION);
        assert!(!a.windows(9).any(|w| w == b"kek bytes"));
        assert_eq!(&open(&k, PATH, &a).unwrap()[..], b"kek bytes");
        assert_eq!(
            &open(&k, PATH, &seal(&k, PATH, b"").unwrap()).unwrap()[..],
            b""
        );
    }

    #[test]
    fn tampered_value_is_refused_naming_its_key() {
        let k = key(1);
        let sealed = seal(&k, PATH, b"kek bytes").unwrap();
        for i in 1..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = open(&k, PATH, &bad).unwrap_err();
            assert!(
                matches!(err, FormatError::NotAuthentic { .. }),
                "byte {i}: {err}"
            );
            assert!(
                err.to_string().contains("/coffer/keyd/keyrings/a/keystore"),
                "{err}"
            );
        }
        let err = open(&k, PATH, &sealed[..sealed.len() - 1]).unwrap_err();
        assert!(matches!(err, FormatError::NotAuthentic { .. }), "{err}");
        let err = open(&k, PATH, &sealed[..20]).unwrap_err();
        assert!(
            matches!(err, FormatError::Truncated { len: 20, .. }),
            "{err}"
        );
        let err = open(&k, PATH, b"").unwrap_err();
        assert!(
            matches!(err, FormatError::Truncated { len: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn moved_value_is_refused() {
        let k = key(1);
        let sealed = seal(&k, PATH, b"keyring a").unwrap();
        let other = b"/coffer/keyd/keyrings/b/keystore";
        let err = open(&k, other, &sealed).unwrap_err();
        assert_eq!(
            err,
            FormatError::NotAuthentic {
                key: "/coffer/keyd/keyrings/b/keystore".into()
            }
        );
    }

    #[test]
    fn another_root_is_refused() {
        let sealed = seal(&key(1), PATH, b"kek bytes").unwrap();
        let err = open(&key(2), PATH, &sealed).unwrap_err();
        assert!(err.to_string().contains("another keyd"), "{err}");
    }

    #[test]
    fn unknown_version_is_refused_with_upgrade_advice() {
        let k = key(1);
        let mut sealed = seal(&k, PATH, b"kek bytes").unwrap();
        sealed[0] = 2;
        let err = open(&k, PATH, &sealed).unwrap_err();
        assert!(
            matches!(err, FormatError::UnknownVersion { version: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("coffer release"), "{err}");
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", key(7)), "StoreKey(<redacted>)");
    }
}

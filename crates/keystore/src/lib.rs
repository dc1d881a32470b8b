//! Coffer's key-encryption keys (KEKs).
//!
//! * [`ciphertext`] — the bytes `Encrypt` returns: KEK id, nonce, AES-256-GCM output.
//! * [`kek`] — one KEK in locked memory, and the [`Keyring`] the server encrypts and decrypts with.
//! * [`file`] — the on-disk keystore format: versioned, authenticated, KEKs sealed by the platform.
//! * [`store`] — the keystore directory: locking, atomic updates, init, rotate, retire.

#![deny(missing_docs)]

pub mod ciphertext;
mod error;
pub mod file;
pub mod kek;
pub mod store;

pub use error::{DecryptError, KeystoreError};
pub use kek::{Kek, Keyring};
pub use store::{KeyInfo, KeyState, Keystore, KeystoreInfo};

/// The largest plaintext `Encrypt` accepts. kube-apiserver sends 32 bytes (a DEK or DEK seed);
/// the bound keeps every ciphertext well under the API server's 1 KiB limit.
pub const MAX_PLAINTEXT_LEN: usize = 512;

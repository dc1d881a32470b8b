//! The sealed kubeconfig credential store of `kubectl coffer`, and the protocol of its agent.
//!
//! `kubectl coffer kubeconfig protect` moves a kubeconfig user's client certificate and key or
//! bearer token into one [`Store`] file, sealed under one of three [`Protection`]s:
//!
//! * `platform` — the workstation is itself a TEE: its sealing key (see `coffer_platform`).
//! * `passphrase` — a key derived from the user's passphrase with argon2id.
//! * `sim` — the simulation platform's key, a plain file next to the store. Protects nothing.
//!
//! kubectl then gets the credential through `kubectl coffer credential` (an exec credential
//! plugin), directly from the store or from `kubectl coffer agent`, which holds unsealed
//! credentials in locked memory and answers the small JSON-lines protocol of [`agent`] on a
//! user-private unix socket.

#![deny(missing_docs)]

pub mod agent;
mod credential;
mod error;
mod protection;
mod store;

pub use credential::{Credential, SecretBytes, MAX_CREDENTIAL_BYTES};
pub use error::Error;
pub use protection::{Passphrase, Protection, ARGON2_ITERATIONS, ARGON2_MEMORY_KIB};
pub use store::{Store, StoreLock, FORMAT_VERSION, STORE_ENV};

/// Environment variable naming a file whose contents are the store's passphrase (automation
/// and tests; a trailing newline is ignored). Passphrases are never taken from the command line.
pub const PASSPHRASE_FILE_ENV: &str = "COFFER_PASSPHRASE_FILE";

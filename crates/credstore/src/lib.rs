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

/// Creates `dir` (and its parents) with mode 0700 for files only this user may reach. An
/// existing directory must belong to this user; its mode is left alone (it may be the working
/// directory), since the files in it are 0600 anyway.
pub fn create_private_dir(dir: &std::path::Path) -> Result<(), Error> {
    use std::fs;
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("creating the directory", dir, e))?;
    let meta = fs::metadata(dir).map_err(|e| Error::io("reading", dir, e))?;
    let uid = coffer_platform::process::current_uid();
    if meta.uid() != uid {
        return Err(Error::io(
            "using",
            dir,
            std::io::Error::other(format!(
                "it belongs to uid {}, not to you (uid {uid}); choose another location",
                meta.uid()
            )),
        ));
    }
    Ok(())
}

/// Environment variable naming a file whose contents are the store's passphrase (automation
/// and tests; a trailing newline is ignored). Passphrases are never taken from the command line.
pub const PASSPHRASE_FILE_ENV: &str = "COFFER_PASSPHRASE_FILE";

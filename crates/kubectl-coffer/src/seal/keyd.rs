//! The two keyd calls a workstation may make without attestation: `GetKeyBundle` and `Reseal`.

use crate::error::Error;

/// The keyring's key bundle (JSON) from keyd at `addr`. Not verified here.
pub fn key_bundle(addr: &str, keyring: &str) -> Result<Vec<u8>, Error> {
    Err(Error::new(format!(
        "cannot reach keyd at {addr} for keyring {keyring:?}: no keyd client in this build"
    )))
}

/// Re-seals each value to the keyring's newest sealing key; returns the new sealed texts in
/// order.
pub fn reseal(addr: &str, keyring: &str, values: &[String]) -> Result<Vec<String>, Error> {
    let _ = values;
    Err(Error::new(format!(
        "cannot reach keyd at {addr} for keyring {keyring:?}: no keyd client in this build"
    )))
}

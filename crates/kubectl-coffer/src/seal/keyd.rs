//! The two keyd calls a workstation may make without attestation: `GetKeyBundle` and `Reseal`,
//! over TLS that verifies keyd's attested certificate (the workstation presents none).

use std::sync::Arc;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keyd_client::{KeydAddr, KeydClient};

use crate::error::Error;

/// A connection to keyd, with the runtime its calls run on.
pub struct Keyd {
    runtime: tokio::runtime::Runtime,
    client: KeydClient,
}

impl Keyd {
    /// Connects to keyd at `addr` (HOST:PORT); keyd's certificate must satisfy `policy`.
    pub fn connect(addr: &str, policy: Policy, options: VerifyOptions) -> Result<Keyd, Error> {
        let target: KeydAddr = addr
            .parse()
            .map_err(|e| Error::usage(format!("--keyd {addr}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(format!("starting the async runtime: {e}")))?;
        let client = runtime
            .block_on(KeydClient::connect_unattested(
                target,
                Arc::new(policy),
                options,
            ))
            .map_err(|e| Error::new(e.to_string()))?;
        Ok(Keyd { runtime, client })
    }

    /// The keyring's key bundle (JSON), not verified yet.
    pub fn key_bundle(&mut self, keyring: &str) -> Result<Vec<u8>, Error> {
        let addr = self.client.addr().to_string();
        self.runtime
            .block_on(self.client.key_bundle(keyring))
            .map_err(|e| Error::new(format!("keyd at {addr}: keyring {keyring:?}: {e}")))
    }

    /// Re-seals `sealed` to the keyring's newest sealing key; returns the new sealed text.
    pub fn reseal(&mut self, keyring: &str, sealed: &str) -> Result<String, Error> {
        let addr = self.client.addr().to_string();
        self.runtime
            .block_on(self.client.reseal(keyring, sealed))
            .map(|(text, _key_id)| text)
            .map_err(|e| Error::new(format!("keyd at {addr}: Reseal: {e}")))
    }
}

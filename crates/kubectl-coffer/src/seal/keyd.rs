//! The two keyd calls a workstation may make without attestation: `GetKeyBundle` and `Reseal`,
//! over TLS that verifies keyd's attested certificate (the workstation presents none).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keyd_client::{ClientError, KeydAddr, KeydClient};

use crate::error::Error;

/// How long to keep retrying a call keyd refuses for its per-address rate limit of
/// certificate-less calls (20/s by default: a reseal of many values runs into it).
const RATE_LIMIT_PATIENCE: Duration = Duration::from_secs(120);
/// The longest pause between two such retries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A connection to keyd, with the runtime its calls run on.
pub struct Keyd {
    runtime: tokio::runtime::Runtime,
    client: KeydClient,
}

impl Keyd {
    /// Connects to keyd at `addr` (HOST:PORT); keyd's certificate must satisfy `policy`.
    /// Connecting, and then each call, fails once `timeout` has passed.
    pub fn connect(
        addr: &str,
        policy: Policy,
        options: VerifyOptions,
        timeout: Duration,
    ) -> Result<Keyd, Error> {
        let target: KeydAddr = addr
            .parse()
            .map_err(|e| Error::usage(format!("--keyd {addr}: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::new(format!("starting the async runtime: {e}")))?;
        let client = runtime
            .block_on(KeydClient::connect_unattested_within(
                target,
                Arc::new(policy),
                options,
                timeout,
            ))
            .map_err(|e| Error::new(e.to_string()))?;
        Ok(Keyd { runtime, client })
    }

    /// The keyring's key bundle (JSON), not verified yet.
    pub fn key_bundle(&mut self, keyring: &str) -> Result<Vec<u8>, Error> {
        let addr = self.client.addr().to_string();
        let client = &self.client;
        self.runtime
            .block_on(patiently(|| {
                let mut client = client.clone();
                async move { client.key_bundle(keyring).await }
            }))
            .map_err(|e| Error::new(format!("keyd at {addr}: keyring {keyring:?}: {e}")))
    }

    /// Re-seals `sealed` to the keyring's newest sealing key; returns the new sealed text.
    pub fn reseal(&mut self, keyring: &str, sealed: &str) -> Result<String, Error> {
        let addr = self.client.addr().to_string();
        let client = &self.client;
        self.runtime
            .block_on(patiently(|| {
                let mut client = client.clone();
                async move { client.reseal(keyring, sealed).await }
            }))
            .map(|(text, _key_id)| text)
            .map_err(|e| Error::new(format!("keyd at {addr}: Reseal: {e}")))
    }
}

/// Runs `call`, retrying with backoff while keyd answers RESOURCE_EXHAUSTED (its rate limit),
/// for at most [`RATE_LIMIT_PATIENCE`].
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let deadline = Instant::now() + RATE_LIMIT_PATIENCE;
    let mut pause = Duration::from_millis(100);
    loop {
        match call().await {
            Err(e)
                if e.status().map(tonic::Status::code) == Some(tonic::Code::ResourceExhausted)
                    && Instant::now() + pause < deadline =>
            {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_BACKOFF);
            }
            result => return result,
        }
    }
}

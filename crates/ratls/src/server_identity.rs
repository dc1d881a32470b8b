//! A server's own attested TLS certificate, renewed before it expires: what keyd presents, and
//! what `coffer kms serve --listen-tcp` presents to the host-side bridge.
//!
//! The certificate carries fresh evidence and is valid for a limited time (a day by default),
//! so a server that runs longer must make a new one: callers refuse an expired certificate.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use coffer_platform::Platform;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::RatlsError;

/// How often a server makes a new certificate by default: half the certificate's validity.
pub const DEFAULT_RENEWAL: Duration = Duration::from_secs(12 * 60 * 60);
/// Wait before retrying a failed renewal.
const RETRY: Duration = Duration::from_secs(60);

/// The certificate a server presents; [`ServerIdentity::renew`] swaps in a new one for the next
/// handshakes, while established connections keep theirs.
#[derive(Debug)]
pub struct ServerIdentity {
    platform: Arc<dyn Platform>,
    current: ArcSwap<CertifiedKey>,
}

impl ServerIdentity {
    /// Makes the first certificate.
    pub fn new(platform: Arc<dyn Platform>) -> Result<Self, RatlsError> {
        let identity = crate::attested_certificate(platform.as_ref())?;
        Ok(ServerIdentity {
            platform,
            current: ArcSwap::new(identity.certified_key()),
        })
    }

    /// Makes a new certificate (new key, fresh evidence) and serves it from now on.
    pub fn renew(&self) -> Result<(), RatlsError> {
        let identity = crate::attested_certificate(self.platform.as_ref())?;
        self.current.store(identity.certified_key());
        Ok(())
    }

    /// Renews every `every` until the task is dropped; a failure is logged and retried.
    pub async fn renew_forever(self: Arc<Self>, every: Duration) {
        let mut wait = every;
        loop {
            tokio::time::sleep(wait).await;
            let this = self.clone();
            match tokio::task::spawn_blocking(move || this.renew()).await {
                Ok(Ok(())) => {
                    tracing::info!("renewed the attested TLS certificate");
                    wait = every;
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, retry_in = ?RETRY, "could not renew the attested TLS certificate; the current one stays in use until it expires");
                    wait = RETRY.min(every);
                }
                Err(e) => {
                    tracing::error!(error = %e, "certificate renewal task failed");
                    wait = RETRY.min(every);
                }
            }
        }
    }
}

impl ResolvesServerCert for ServerIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_serves_a_new_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let platform: Arc<dyn Platform> =
            Arc::new(coffer_platform::sim::SimPlatform::open_or_create(dir.path()).unwrap());
        let identity = ServerIdentity::new(platform).unwrap();
        let before = identity.current.load_full().cert[0].clone();
        identity.renew().unwrap();
        let after = identity.current.load_full().cert[0].clone();
        assert_ne!(before, after);
    }
}

//! Unsealing through keyd: one mutual attested TLS connection, one `UnsealBatch` per keyring,
//! and retries with backoff while keyd is unreachable, up to a deadline. With several keyd
//! replicas, each attempt tries them in turn (starting from a different one each time) until
//! one answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keyd_client::{
    Backoff, ClientError, KeydAddr, KeydAddrs, KeydClient, KeydClientOptions,
};
use coffer_platform::Platform;
use tonic::Code;
use zeroize::Zeroizing;

use crate::discover::Item;
use crate::error::RunError;

/// How `coffer run` reaches keyd.
#[derive(Clone)]
pub struct Keyd {
    /// keyd's replicas: addresses, or names resolving to several.
    pub addrs: KeydAddrs,
    /// The policy keyd's evidence must satisfy.
    pub policy: Arc<Policy>,
    /// How keyd's evidence is verified.
    pub verify_options: VerifyOptions,
    /// This workload's TEE.
    pub platform: Arc<dyn Platform>,
    /// Limit on connecting and on each call.
    pub timeout: Duration,
}

impl std::fmt::Debug for Keyd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyd")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// Each item's plaintext, or keyd's reason for refusing it, in the order of the items.
pub type Outcome = Vec<Result<Zeroizing<Vec<u8>>, String>>;

/// Whether an error means keyd could not be reached (worth retrying), rather than that keyd
/// answered with a refusal.
fn unreachable(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::TimedOut { .. } | ClientError::Transport(_) => {
            true
        }
        ClientError::Rpc(status) => matches!(
            status.code(),
            Code::Unavailable | Code::ResourceExhausted | Code::Cancelled | Code::DeadlineExceeded
        ),
        _ => false,
    }
}

impl Keyd {
    /// Unseals `items`, retrying while keyd is unreachable until `deadline` has passed since
    /// the first attempt (zero: one attempt).
    pub async fn unseal(&self, items: &[Item], deadline: Duration) -> Result<Outcome, RunError> {
        let start = Instant::now();
        let backoff = Backoff::DEFAULT;
        let mut failures = 0u32;
        loop {
            let (addr, e) = match self.attempt_replicas(items, failures).await {
                Ok(outcome) => return Ok(outcome),
                Err(failed) => failed,
            };
            if !unreachable(&e) {
                let detail =
                    coffer_keyd_client::error_chain(e.to_string(), std::error::Error::source(&e));
                let refused = matches!(
                    e,
                    ClientError::Untrusted { .. } | ClientError::RefusedByServer { .. }
                ) || e.status().is_some_and(|s| {
                    matches!(
                        s.code(),
                        Code::PermissionDenied | Code::Unauthenticated | Code::FailedPrecondition
                    )
                });
                return Err(if refused {
                    RunError::KeydRefused { addr, detail }
                } else {
                    RunError::KeydFailed { addr, detail }
                });
            }
            failures += 1;
            let elapsed = start.elapsed();
            let left = deadline.saturating_sub(elapsed);
            let addr = self.addrs.to_string();
            if left.is_zero() {
                return Err(RunError::KeydUnavailable {
                    addr,
                    after: elapsed,
                    last: e.to_string(),
                });
            }
            let delay = backoff.delay(failures, random()).min(left);
            tracing::warn!(
                keyd = %addr,
                error = %e,
                retry_in_ms = delay.as_millis() as u64,
                "cannot reach keyd; retrying with backoff until --keyd-deadline"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt on each replica in turn, from the `round`th on, until one answers or one
    /// refuses. A replica that is unreachable or whose evidence fails `--keyd-policy` (one not
    /// yet admitted during an upgrade, or an impostor) is skipped for the next, as the plugin
    /// does. When none answered: one replica's own error; every replica untrusted, the first
    /// untrusted one's (a refusal); otherwise every replica's error as one unreachable error
    /// (retried until the deadline).
    async fn attempt_replicas(
        &self,
        items: &[Item],
        round: u32,
    ) -> Result<Outcome, (String, ClientError)> {
        let replicas = self.addrs.resolve().await;
        let n = replicas.len();
        let mut skipped: Vec<(String, ClientError)> = Vec::new();
        for k in 0..n {
            let addr = &replicas[(round as usize + k) % n];
            match self.attempt(addr, items).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) if unreachable(&e) || matches!(e, ClientError::Untrusted { .. }) => {
                    if k + 1 < n {
                        tracing::warn!(keyd = %addr, error = %e, "keyd replica unreachable or untrusted; trying the next one");
                    }
                    skipped.push((addr.to_string(), e));
                }
                Err(e) => return Err((addr.to_string(), e)),
            }
        }
        if skipped.len() <= 1 {
            return Err(skipped.pop().unwrap_or_else(|| {
                (
                    self.addrs.to_string(),
                    ClientError::Connect {
                        addr: self.addrs.to_string(),
                        detail: "no keyd address".into(),
                    },
                )
            }));
        }
        if skipped
            .iter()
            .all(|(_, e)| matches!(e, ClientError::Untrusted { .. }))
        {
            return Err(skipped.swap_remove(0));
        }
        let detail = skipped
            .iter()
            .map(|(addr, e)| format!("{addr}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        Err((
            self.addrs.to_string(),
            ClientError::Connect {
                addr: self.addrs.to_string(),
                detail: format!("no replica answered: {detail}"),
            },
        ))
    }

    /// One connection to `addr` and one `unseal_batch` per keyring.
    async fn attempt(&self, addr: &KeydAddr, items: &[Item]) -> Result<Outcome, ClientError> {
        let options = KeydClientOptions {
            platform: self.platform.clone(),
            policy: self.policy.clone(),
            verify_options: self.verify_options.clone(),
        };
        let mut client = KeydClient::connect_within(addr.clone(), options, self.timeout).await?;
        let mut by_keyring: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, item) in items.iter().enumerate() {
            by_keyring.entry(item.value.keyring()).or_default().push(i);
        }
        let mut outcome: Vec<Option<Result<Zeroizing<Vec<u8>>, String>>> =
            (0..items.len()).map(|_| None).collect();
        for (keyring, indices) in by_keyring {
            let batch: Vec<(&str, &coffer_sealed::Location)> = indices
                .iter()
                .map(|&i| (items[i].sealed.as_str(), &items[i].location))
                .collect();
            let results = client.unseal_batch(keyring, &batch).await?;
            for (&i, result) in indices.iter().zip(results) {
                outcome[i] = Some(result.map_err(|r| r.message));
            }
        }
        Ok(outcome
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err("keyd gave no answer for this value".into())))
            .collect())
    }
}

fn random() -> u64 {
    let mut bytes = [0u8; 8];
    // Jitter only spreads retries; without randomness they are merely less spread.
    let _ = coffer_platform::fill_random(&mut bytes);
    u64::from_le_bytes(bytes)
}

//! Several keyd replicas behind one handle: a [`KeydPool`] per replica address, calls spread
//! across the replicas that answer, and a call one replica could not answer retried on another
//! within the caller's deadline.
//!
//! * The replicas are the addresses given, with each host name expanded to every address it
//!   resolves to ([`KeydAddrs::resolve`]); [`KeydReplicas::refresh`] resolves again, so a scaled
//!   Deployment or headless Service is followed. Pools of replicas that stay are kept.
//! * Each call starts on the next replica round-robin, preferring one with an established
//!   connection, then one whose backoff is over; a replica in backoff fails at once, so it
//!   costs a retry nothing.
//! * A replica that was unreachable, too slow or untrusted
//!   ([`CallError::another_replica_may_answer`]) hands the call to the next one. Any other
//!   answer (a refusal, an unknown keyring, ...) is keyd's verdict and is returned as is.
//! * While other replicas are left, an attempt gets half the time remaining, so one hung
//!   replica cannot use up the whole deadline.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use zeroize::Zeroizing;

use crate::{
    CallError, ClientError, ClientIdentity, KeydAddr, KeydAddrs, KeydPool, KeyringStatus,
    PoolOptions,
};

/// How often a caller should [`refresh`](KeydReplicas::refresh) the replicas' addresses.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// Pooled connections to every keyd replica, used as one.
pub struct KeydReplicas {
    addrs: KeydAddrs,
    identity: Arc<ClientIdentity>,
    options: PoolOptions,
    pools: ArcSwap<Vec<Arc<KeydPool>>>,
    next: AtomicUsize,
}

impl fmt::Debug for KeydReplicas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeydReplicas")
            .field("addrs", &self.addrs.to_string())
            .field("pools", &*self.pools.load())
            .finish_non_exhaustive()
    }
}

/// Whether a failed attempt passes the call to the next replica.
#[derive(Clone, Copy)]
enum Failover {
    /// Only when another replica may answer: calls whose refusal is the answer.
    Unanswered,
    /// On any error: a probe that wants any replica that can serve.
    Any,
}

impl KeydReplicas {
    /// One pool per address given (names not yet expanded: call [`refresh`](Self::refresh)),
    /// presenting `identity`; connects nothing yet. Must be called inside a tokio runtime.
    pub fn new(
        addrs: KeydAddrs,
        identity: Arc<ClientIdentity>,
        options: PoolOptions,
    ) -> Result<Self, ClientError> {
        let pools = addrs
            .given()
            .iter()
            .map(|a| KeydPool::new(a.clone(), identity.clone(), options.clone()).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(KeydReplicas {
            addrs,
            identity,
            options,
            pools: ArcSwap::from_pointee(pools),
            next: AtomicUsize::new(0),
        })
    }

    /// Resolves the addresses again and follows the change: a pool for each new replica, the
    /// pools of vanished ones dropped (their calls in flight finish).
    pub async fn refresh(&self) -> Result<(), ClientError> {
        let resolved = self.addrs.resolve().await;
        let current = self.pools.load_full();
        if current.iter().map(|p| p.addr()).eq(resolved.iter()) {
            return Ok(());
        }
        let mut pools = Vec::with_capacity(resolved.len());
        for addr in &resolved {
            let pool = match current.iter().find(|p| p.addr() == addr) {
                Some(pool) => pool.clone(),
                None => Arc::new(KeydPool::new(
                    addr.clone(),
                    self.identity.clone(),
                    self.options.clone(),
                )?),
            };
            pools.push(pool);
        }
        let list = |addrs: &mut dyn Iterator<Item = &KeydAddr>| {
            addrs.map(ToString::to_string).collect::<Vec<_>>().join(",")
        };
        tracing::info!(
            keyd = %self.addrs,
            replicas = %list(&mut resolved.iter()),
            previous = %list(&mut current.iter().map(|p| p.addr())),
            "keyd replicas changed"
        );
        self.pools.store(Arc::new(pools));
        Ok(())
    }

    /// The addresses given.
    pub fn addrs(&self) -> &KeydAddrs {
        &self.addrs
    }

    /// The replicas in use now.
    pub fn replicas(&self) -> Vec<KeydAddr> {
        self.pools.load().iter().map(|p| p.addr().clone()).collect()
    }

    /// The identity every connection presents.
    pub fn identity(&self) -> &Arc<ClientIdentity> {
        &self.identity
    }

    /// The deadline of every call, failovers included.
    pub fn timeout(&self) -> Duration {
        self.options.timeout
    }

    /// Connections established, over all replicas.
    pub fn connected(&self) -> usize {
        self.pools.load().iter().map(|p| p.connected()).sum()
    }

    /// The replicas in the order a call tries them: round-robin from the next one, those with
    /// an established connection first, then those allowed to connect, then the rest.
    fn order(&self) -> Vec<Arc<KeydPool>> {
        let pools = self.pools.load_full();
        let n = pools.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<Arc<KeydPool>> = (0..pools.len())
            .map(|k| pools[(start + k) % n].clone())
            .collect();
        order.sort_by_key(|p| match (p.connected() > 0, p.available()) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 2,
        });
        order
    }

    async fn spread<T, F, Fut>(&self, failover: Failover, attempt: F) -> Result<T, CallError>
    where
        F: Fn(Arc<KeydPool>, Duration) -> Fut,
        Fut: Future<Output = Result<T, CallError>>,
    {
        let start = Instant::now();
        let deadline = self.timeout();
        let order = self.order();
        let mut errors = Vec::new();
        for (k, pool) in order.iter().enumerate() {
            let left = deadline.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            let budget = if k + 1 < order.len() { left / 2 } else { left };
            match attempt(pool.clone(), budget).await {
                Ok(value) => return Ok(value),
                Err(e) => {
                    let next = match failover {
                        Failover::Unanswered => e.another_replica_may_answer(),
                        Failover::Any => true,
                    };
                    if !next {
                        return Err(e);
                    }
                    tracing::debug!(keyd = %pool.addr(), error = %e, "keyd replica did not answer; trying the next one");
                    errors.push(e);
                }
            }
        }
        Err(match errors.len() {
            1 => errors.remove(0),
            0 => CallError::TimedOut {
                addr: self.addrs.to_string(),
                after: deadline,
            },
            _ => CallError::NoReplica(errors),
        })
    }

    /// Encrypts `plaintext` with keyring `keyring`'s primary KEK on one replica; returns the
    /// ciphertext and the KEK id.
    pub async fn wrap(
        &self,
        keyring: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, String), CallError> {
        self.spread(Failover::Unanswered, |pool, timeout| async move {
            pool.wrap_within(timeout, keyring, plaintext).await
        })
        .await
    }

    /// Decrypts `ciphertext` with keyring `keyring` on one replica; with `key_id`, the
    /// ciphertext must have been made with that KEK.
    pub async fn unwrap(
        &self,
        keyring: &str,
        key_id: Option<&str>,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CallError> {
        self.spread(Failover::Unanswered, |pool, timeout| async move {
            pool.unwrap_within(timeout, keyring, key_id, ciphertext)
                .await
        })
        .await
    }

    /// Decrypts several `(key_id, ciphertext)` items in one call to one replica (see
    /// [`KeydPool::unwrap_batch`]).
    pub async fn unwrap_batch(
        &self,
        keyring: &str,
        items: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Result<Zeroizing<Vec<u8>>, CallError>>, CallError> {
        let items = &items;
        self.spread(Failover::Unanswered, |pool, timeout| async move {
            pool.unwrap_batch_within(timeout, keyring, items.clone())
                .await
        })
        .await
    }

    /// The keyring's primary KEK id and size from the first replica that answers with them:
    /// the caller can serve while any replica with the keyring does.
    pub async fn status(&self, keyring: &str) -> Result<KeyringStatus, CallError> {
        self.spread(Failover::Any, |pool, timeout| async move {
            pool.status_on(None, timeout, keyring).await
        })
        .await
    }

    /// Re-establishes, on every replica at once, the connections that are down and past their
    /// backoff (see [`KeydPool::connect_idle`]).
    pub async fn connect_idle(&self, keyring: &str) {
        let mut tasks = tokio::task::JoinSet::new();
        for pool in self.pools.load().iter() {
            let (pool, keyring) = (pool.clone(), keyring.to_string());
            tasks.spawn(async move { pool.connect_idle(&keyring).await });
        }
        while tasks.join_next().await.is_some() {}
    }
}

//! Service mode: the keys stay in keyd and every Encrypt and Decrypt is forwarded to it over a
//! [`KeydPool`] of mutual attested TLS connections per keyd replica ([`KeydReplicas`]) that
//! this plugin opens with its own platform's evidence.
//!
//! * Status is a live keyd Status call for the keyring, shared by all callers for up to
//!   [`STATUS_TTL`], so a rotation in keyd shows as a new key_id within a second and heavy
//!   polling does not reach keyd. It stays healthy while any replica with the keyring answers.
//! * Calls are spread over the replicas that answer; one a replica could not answer is retried
//!   on another within the same deadline.
//! * Every call ends within the `--keyd-timeout` deadline (below the API server's 3 s), with
//!   UNAVAILABLE naming keyd's address when keyd is unreachable or slow, PERMISSION_DENIED when
//!   keyd refuses this plugin, and keyd's own INVALID_ARGUMENT / NOT_FOUND otherwise.
//! * Decrypts keyd answered are remembered for `--keyd-cache-ttl` in a [`DekCache`] (bounded,
//!   zeroizing, forgotten when keyd's keyring changes or keyd refuses this plugin), so a
//!   repeated encrypted DEK does not cost a round trip.
//! * A background task ([`RemoteKeys::maintain`]) keeps probing keyd, so the pools reconnect
//!   and `/healthz` follows keyd's reachability without any traffic, and resolves keyd's
//!   names again every [`RESOLVE_INTERVAL`] to follow replicas coming and going.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[cfg(doc)]
use coffer_keyd_client::KeydPool;
use coffer_keyd_client::{
    CallError, ClientError, ClientIdentity, InvalidKeyringName, KeydAddrs, KeydClientOptions,
    KeydReplicas, KeyringStatus, PoolEvents, PoolOptions, RESOLVE_INTERVAL,
};
use tonic::Status;
use zeroize::Zeroizing;

use crate::dek_cache::DekCache;
use crate::metrics::{KeydMetrics, KeydOp, Metrics};

/// The API server's per-call timeout: every answer must come before it.
pub const API_SERVER_TIMEOUT: Duration = Duration::from_secs(3);
/// Most connections to keyd.
pub const MAX_CONNECTIONS: usize = 16;
/// How long one keyd Status answer serves Status calls and `/healthz`.
pub const STATUS_TTL: Duration = Duration::from_secs(1);
/// How often the background task probes keyd.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Wait between failed renewals of the attested certificate.
const RENEWAL_RETRY: Duration = Duration::from_secs(60);

/// What service mode needs.
#[derive(Debug)]
pub struct RemoteOptions {
    /// keyd's replicas: addresses, or names resolving to several.
    pub addrs: KeydAddrs,
    /// The keyring in keyd that holds this cluster's KEKs.
    pub keyring: String,
    /// This plugin's platform, and how keyd's attestation is checked.
    pub client: KeydClientOptions,
    /// Connections to each keyd replica (1 to [`MAX_CONNECTIONS`]).
    pub connections: usize,
    /// Deadline of every forwarded call; below [`API_SERVER_TIMEOUT`].
    pub timeout: Duration,
    /// How long a DEK seed keyd unwrapped answers repeats of its Decrypt (at most
    /// [`crate::dek_cache::MAX_TTL`]); zero turns the cache off.
    pub cache_ttl: Duration,
}

/// Why service mode could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The call deadline would let the API server give up first.
    #[error("--keyd-timeout {}ms is not below the API server's {}s per-call timeout: the plugin must answer first (use e.g. 2s)", .0.as_millis(), API_SERVER_TIMEOUT.as_secs())]
    TimeoutTooLong(Duration),
    /// A zero deadline would fail every call.
    #[error("--keyd-timeout must be more than zero (use e.g. 2s)")]
    TimeoutZero,
    /// The connection count is out of range.
    #[error("--keyd-connections {0} is out of range: use 1 to {MAX_CONNECTIONS}")]
    Connections(usize),
    /// The cache would keep seeds too long.
    #[error("--keyd-cache-ttl {}s is too long: use at most {}s (0 turns the cache off)", .0.as_secs(), crate::dek_cache::MAX_TTL.as_secs())]
    CacheTtl(Duration),
    /// The keyring name is invalid.
    #[error("--keyd-keyring: {0}")]
    Keyring(InvalidKeyringName),
    /// The attested identity could not be made.
    #[error("making this plugin's attested TLS identity: {0}")]
    Identity(ClientError),
    /// The pool could not be set up.
    #[error("setting up connections to keyd: {0}")]
    Pool(ClientError),
    /// A start-up task failed.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl RemoteOptions {
    /// Checks the options without connecting.
    pub fn validate(&self) -> Result<(), RemoteError> {
        if self.timeout.is_zero() {
            return Err(RemoteError::TimeoutZero);
        }
        if self.timeout >= API_SERVER_TIMEOUT {
            return Err(RemoteError::TimeoutTooLong(self.timeout));
        }
        if !(1..=MAX_CONNECTIONS).contains(&self.connections) {
            return Err(RemoteError::Connections(self.connections));
        }
        if self.cache_ttl > crate::dek_cache::MAX_TTL {
            return Err(RemoteError::CacheTtl(self.cache_ttl));
        }
        coffer_keyd_client::validate_keyring_name(&self.keyring).map_err(RemoteError::Keyring)?;
        Ok(())
    }
}

/// keyd's answer to the last Status probe, shared by Status callers and `/healthz`.
#[derive(Clone)]
struct Probe {
    at: Instant,
    result: Result<KeyringStatus, String>,
}

impl Probe {
    fn key_id(&self) -> Result<String, Status> {
        match &self.result {
            Ok(s) => Ok(s.primary_key_id.clone()),
            Err(message) => Err(Status::unavailable(message.clone())),
        }
    }
}

/// One Decrypt waiting to be forwarded.
struct UnwrapJob {
    key_id: Option<String>,
    ciphertext: Vec<u8>,
    reply: tokio::sync::oneshot::Sender<Result<Zeroizing<Vec<u8>>, CallError>>,
}

/// Decrypts queued for the batcher; beyond this, callers wait (within their deadline).
const UNWRAP_QUEUE: usize = 1024;

/// Forwards queued Decrypts to keyd, coalescing those that arrive while earlier calls are in
/// flight into one `UnwrapBatch`.
///
/// At most `in_flight` calls are outstanding. Under light load every Decrypt goes out at once,
/// alone (no added latency); under heavy load the Decrypts that queue behind the outstanding
/// calls leave together, so keyd's per-call cost (TLS record, HTTP/2 frame, gRPC, audit write)
/// is paid once per batch instead of once per Decrypt.
async fn batch_unwraps(
    pool: Arc<KeydReplicas>,
    keyring: String,
    mut jobs: tokio::sync::mpsc::Receiver<UnwrapJob>,
    in_flight: usize,
    metrics: KeydMetrics,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    while let Some(first) = jobs.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < coffer_keyd_client::MAX_BATCH_ITEMS {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        let keyring = keyring.clone();
        if batch.len() > 1 {
            metrics.batches.inc();
            metrics.batched_unwraps.inc_by(batch.len() as u64);
        }
        tokio::spawn(async move {
            let _slot = slot;
            if batch.len() == 1 {
                let job = batch.remove(0);
                let result = pool
                    .unwrap(&keyring, job.key_id.as_deref(), &job.ciphertext)
                    .await;
                let _ = job.reply.send(result);
                return;
            }
            let (replies, items): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .map(|job| (job.reply, (job.key_id.unwrap_or_default(), job.ciphertext)))
                .unzip();
            match pool.unwrap_batch(&keyring, items).await {
                Ok(results) => {
                    for (reply, result) in replies.into_iter().zip(results) {
                        let _ = reply.send(result);
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        });
    }
}

/// Whether a Status answer means the cached seeds may no longer be released: keyd's keyring
/// changed (a KEK retired or added, a new primary), or keyd refuses or is not trusted. keyd
/// being merely unreachable or slow changes nothing about what it would release.
fn keyring_changed(last: Option<&KeyringStatus>, now: &Result<KeyringStatus, CallError>) -> bool {
    match now {
        Ok(now) => last
            .is_some_and(|last| last.primary_key_id != now.primary_key_id || last.keys != now.keys),
        Err(CallError::Unreachable { .. } | CallError::TimedOut { .. }) => false,
        Err(CallError::NoReplica(errors)) => !errors.iter().all(|e| {
            matches!(
                e,
                CallError::Unreachable { .. } | CallError::TimedOut { .. }
            )
        }),
        Err(_) => true,
    }
}

/// keyd's last keyring answer, kept across failed probes, so that a keyring changed while keyd
/// was unreachable is still noticed when it answers again.
#[derive(Default)]
struct LastKeyring(Mutex<Option<KeyringStatus>>);

impl LastKeyring {
    /// Whether `now` means the cached seeds may no longer be released ([`keyring_changed`]
    /// against the last answer); remembers `now` when it is an answer.
    fn changed(&self, now: &Result<KeyringStatus, CallError>) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let changed = keyring_changed(last.as_ref(), now);
        if let Ok(now) = now {
            *last = Some(now.clone());
        }
        changed
    }
}

/// Service mode's keys: keyd's keyring, reached through [`KeydReplicas`].
pub struct RemoteKeys {
    pool: Arc<KeydReplicas>,
    unwraps: tokio::sync::mpsc::Sender<UnwrapJob>,
    keyring: String,
    metrics: Metrics,
    keyd_metrics: KeydMetrics,
    last: Mutex<Option<Probe>>,
    /// One Status refresh at a time; the others wait for its answer.
    refresh: tokio::sync::Mutex<()>,
    /// Seeds keyd released, for repeated Decrypts; `None` with `--keyd-cache-ttl 0`.
    cache: Option<DekCache>,
    /// What the cache was filled under.
    last_keyring: LastKeyring,
}

struct MetricEvents(KeydMetrics);

impl PoolEvents for MetricEvents {
    fn connected(&self) {
        self.0.connected.inc();
    }
    fn disconnected(&self) {
        self.0.connected.dec();
    }
    fn reconnecting(&self) {
        self.0.reconnects.inc();
    }
}

impl RemoteKeys {
    /// Makes this plugin's attested identity and the (not yet connected) pool. `metrics` must
    /// come from [`Metrics::for_service_mode`].
    pub async fn new(options: RemoteOptions, metrics: Metrics) -> Result<Self, RemoteError> {
        options.validate()?;
        let keyd_metrics = metrics
            .keyd
            .clone()
            .ok_or_else(|| RemoteError::Task("metrics lack the service-mode metrics".into()))?;
        let client = options.client;
        // Evidence from a real TEE can take a while: off the async threads.
        let identity = tokio::task::spawn_blocking(move || ClientIdentity::new(client))
            .await
            .map_err(|e| RemoteError::Task(e.to_string()))?
            .map_err(RemoteError::Identity)?;
        let in_flight = options.connections * options.addrs.given().len();
        let pool = KeydReplicas::new(
            options.addrs,
            Arc::new(identity),
            PoolOptions {
                connections: options.connections,
                timeout: options.timeout,
                events: Some(Arc::new(MetricEvents(keyd_metrics.clone()))),
                ..PoolOptions::default()
            },
        )
        .map_err(RemoteError::Pool)?;
        // Names expanded to every replica they resolve to before the first call.
        pool.refresh().await.map_err(RemoteError::Pool)?;
        let pool = Arc::new(pool);
        let (unwraps, queue) = tokio::sync::mpsc::channel(UNWRAP_QUEUE);
        tokio::spawn(batch_unwraps(
            pool.clone(),
            options.keyring.clone(),
            queue,
            in_flight,
            keyd_metrics.clone(),
        ));
        Ok(RemoteKeys {
            pool,
            unwraps,
            keyring: options.keyring,
            metrics,
            keyd_metrics,
            last: Mutex::new(None),
            refresh: tokio::sync::Mutex::new(()),
            cache: (!options.cache_ttl.is_zero()).then(|| DekCache::new(options.cache_ttl)),
            last_keyring: LastKeyring::default(),
        })
    }

    /// keyd's addresses, as given.
    pub fn addr(&self) -> &KeydAddrs {
        self.pool.addrs()
    }

    /// The keyring used.
    pub fn keyring(&self) -> &str {
        &self.keyring
    }

    fn to_status(&self, e: CallError) -> Status {
        match e {
            CallError::Refused { reason, .. } => {
                Status::permission_denied(format!("keyd refused this plugin: {reason}"))
            }
            CallError::Rejected { status, .. } => {
                Status::new(status.code(), format!("keyd: {}", status.message()))
            }
            other => Status::unavailable(other.to_string()),
        }
    }

    fn record<T>(&self, op: KeydOp, result: &Result<T, CallError>) {
        let label = match result {
            Ok(_) => "ok",
            Err(CallError::Unreachable { .. } | CallError::NoReplica(_)) => "unreachable",
            Err(CallError::TimedOut { .. }) => "timeout",
            Err(CallError::Refused { .. }) => "refused",
            Err(CallError::Untrusted { .. }) => "untrusted",
            Err(_) => "rejected",
        };
        self.keyd_metrics.call(op, label);
    }

    pub(crate) async fn encrypt(&self, plaintext: &[u8]) -> Result<(Vec<u8>, String), Status> {
        // keyd's own bounds, checked here to spare the round trip.
        if plaintext.is_empty() {
            return Err(Status::invalid_argument("plaintext is empty"));
        }
        if plaintext.len() > coffer_keyd_client::MAX_PLAINTEXT_LEN {
            return Err(Status::invalid_argument(format!(
                "plaintext is {} bytes; the limit is {} (kube-apiserver sends 32)",
                plaintext.len(),
                coffer_keyd_client::MAX_PLAINTEXT_LEN
            )));
        }
        let result = self.pool.wrap(&self.keyring, plaintext).await;
        self.record(KeydOp::Wrap, &result);
        result.map_err(|e| self.to_status(e))
    }

    pub(crate) async fn decrypt(
        &self,
        key_id: Option<&str>,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Status> {
        if ciphertext.is_empty() {
            return Err(Status::invalid_argument("ciphertext is empty"));
        }
        if ciphertext.len() > coffer_keyd_client::MAX_CIPHERTEXT_LEN {
            return Err(Status::invalid_argument(format!(
                "ciphertext is {} bytes; the limit is {}",
                ciphertext.len(),
                coffer_keyd_client::MAX_CIPHERTEXT_LEN
            )));
        }
        if let Some(seed) = self.cache.as_ref().and_then(|c| c.get(key_id, ciphertext)) {
            self.keyd_metrics.cache_hits.inc();
            return Ok(seed);
        }
        let generation = self.cache.as_ref().map(DekCache::generation);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = UnwrapJob {
            key_id: key_id.map(str::to_string),
            ciphertext: ciphertext.to_vec(),
            reply,
        };
        // The deadline covers the wait in the queue as well as the call itself.
        let timeout = self.pool.timeout();
        let lost = |reason: &str| CallError::Unreachable {
            addr: self.pool.addrs().to_string(),
            reason: reason.to_string(),
            retry_in: None,
        };
        let forwarded = async {
            if self.unwraps.send(job).await.is_err() {
                return Err(lost("the plugin's forwarding task stopped"));
            }
            answer
                .await
                .unwrap_or_else(|_| Err(lost("the plugin's forwarding task dropped the call")))
        };
        let result = match tokio::time::timeout(timeout, forwarded).await {
            Ok(result) => result,
            Err(_) => Err(CallError::TimedOut {
                addr: self.pool.addrs().to_string(),
                after: timeout,
            }),
        };
        self.record(KeydOp::Unwrap, &result);
        if let (Some(cache), Some(generation)) = (&self.cache, generation) {
            match &result {
                Ok(seed) => cache.insert(generation, key_id, ciphertext, seed),
                // keyd no longer releases keys to this plugin: nor may the cache.
                Err(CallError::Refused { .. } | CallError::Untrusted { .. }) => cache.clear(),
                Err(_) => {}
            }
        }
        result.map_err(|e| self.to_status(e))
    }

    fn fresh(&self) -> Option<Probe> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.as_ref()
            .filter(|p| p.at.elapsed() < STATUS_TTL)
            .cloned()
    }

    /// keyd's primary key id for the keyring, at most [`STATUS_TTL`] old; UNAVAILABLE with the
    /// reason when keyd cannot say (unreachable, slow, refusing this plugin, untrusted).
    pub(crate) async fn status(&self) -> Result<String, Status> {
        if let Some(probe) = self.fresh() {
            return probe.key_id();
        }
        let _turn = self.refresh.lock().await;
        if let Some(probe) = self.fresh() {
            return probe.key_id();
        }
        let result = self.pool.status(&self.keyring).await;
        self.record(KeydOp::Status, &result);
        if let Some(cache) = &self.cache {
            if self.last_keyring.changed(&result) {
                cache.clear();
            }
        }
        // Whatever keeps keyd from answering, the plugin cannot serve: UNAVAILABLE, with
        // the reason (unreachable, refused, untrusted, ...) in the message.
        let probe = Probe {
            at: Instant::now(),
            result: result.map_err(|e| self.to_status(e).message().to_string()),
        };
        self.remember(probe.clone());
        probe.key_id()
    }

    /// Stores a probe and logs what changed: keyd lost or back, a new primary key.
    fn remember(&self, probe: Probe) {
        let previous = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            last.replace(probe.clone())
        };
        let before = previous.map(|p| p.result);
        match (&before, &probe.result) {
            (Some(Ok(old)), Ok(new)) if old.primary_key_id == new.primary_key_id => {}
            (_, Ok(new)) => {
                self.metrics
                    .set_primary(&new.primary_key_id, new.keys as usize);
                let previous_key_id = match &before {
                    Some(Ok(old)) => old.primary_key_id.as_str(),
                    _ => "",
                };
                tracing::info!(
                    target: "coffer::audit",
                    event = "keyd_status",
                    keyd = %self.pool.addrs(),
                    keyring = %self.keyring,
                    key_id = %new.primary_key_id,
                    previous_key_id,
                    keys = new.keys,
                    "keyd answers; primary key {}", new.primary_key_id
                );
            }
            (Some(Err(old)), Err(new)) if old == new => {}
            (_, Err(message)) => tracing::warn!(
                keyd = %self.pool.addrs(),
                error = %message,
                "keyd cannot serve this plugin; Status reports it until keyd answers again"
            ),
        }
    }

    /// For `/healthz`: the last Status probe's verdict.
    pub(crate) fn health(&self) -> Result<(), String> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.as_ref().map(|p| &p.result) {
            Some(Ok(_)) => Ok(()),
            Some(Err(message)) => Err(message.clone()),
            None => Err(format!("keyd at {} not reached yet", self.pool.addrs())),
        }
    }

    /// Runs until dropped: probes keyd every [`PROBE_INTERVAL`] (refreshing Status and
    /// `/healthz`, wiping expired cached seeds), re-establishes connections that are down, resolves keyd's names again every
    /// [`RESOLVE_INTERVAL`], and renews this plugin's attested certificate before it expires.
    pub async fn maintain(&self) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_renewal = Instant::now();
        let mut next_resolve = Instant::now() + RESOLVE_INTERVAL;
        loop {
            tick.tick().await;
            if Instant::now() >= next_resolve {
                if let Err(e) = self.pool.refresh().await {
                    tracing::error!(error = %e, "cannot follow keyd's replicas; keeping the current ones");
                }
                next_resolve = Instant::now() + RESOLVE_INTERVAL;
            }
            let _ = self.status().await;
            if let Some(cache) = &self.cache {
                cache.purge_expired();
            }
            self.pool.connect_idle(&self.keyring).await;
            let identity = self.pool.identity();
            if identity.due_for_renewal() && Instant::now() >= next_renewal {
                let identity = identity.clone();
                match tokio::task::spawn_blocking(move || identity.renew()).await {
                    Ok(Ok(())) => tracing::info!("renewed this plugin's attested TLS certificate"),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot renew this plugin's attested TLS certificate; retrying in a minute")
                    }
                    Err(e) => tracing::error!(error = %e, "certificate renewal task failed"),
                }
                next_renewal = Instant::now() + RENEWAL_RETRY;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(primary: &str, keys: u32) -> KeyringStatus {
        KeyringStatus {
            primary_key_id: primary.into(),
            keys,
        }
    }

    fn unreachable() -> CallError {
        CallError::Unreachable {
            addr: "127.0.0.1:1".into(),
            reason: "refused".into(),
            retry_in: None,
        }
    }

    #[test]
    fn the_cache_is_forgotten_when_the_keyring_changes_or_keyd_refuses() {
        let last = status("k2", 2);
        // A KEK retired (fewer keys), rotated (new primary): forget.
        assert!(keyring_changed(Some(&last), &Ok(status("k2", 1))));
        assert!(keyring_changed(Some(&last), &Ok(status("k3", 3))));
        assert!(!keyring_changed(Some(&last), &Ok(status("k2", 2))));
        assert!(!keyring_changed(None, &Ok(status("k2", 2))));
        // keyd refusing or untrusted: forget; merely unreachable or slow: keep.
        let refused = CallError::Refused {
            addr: "a".into(),
            reason: "no grant".into(),
        };
        assert!(keyring_changed(Some(&last), &Err(refused.clone())));
        assert!(!keyring_changed(Some(&last), &Err(unreachable())));
        let timed_out = CallError::TimedOut {
            addr: "a".into(),
            after: Duration::from_secs(2),
        };
        assert!(!keyring_changed(
            Some(&last),
            &Err(CallError::NoReplica(vec![unreachable(), timed_out]))
        ));
        assert!(keyring_changed(
            Some(&last),
            &Err(CallError::NoReplica(vec![unreachable(), refused]))
        ));
    }

    #[test]
    fn a_keyring_changed_while_keyd_was_unreachable_is_noticed_when_it_answers() {
        let last = LastKeyring::default();
        assert!(!last.changed(&Ok(status("k2", 2))));
        assert!(!last.changed(&Err(unreachable())));
        // A KEK retired during the outage: the next answer forgets the seeds.
        assert!(last.changed(&Ok(status("k2", 1))));
        assert!(!last.changed(&Ok(status("k2", 1))));
    }
}

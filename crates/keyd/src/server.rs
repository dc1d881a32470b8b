//! The attested TLS listener and the serve loop: accept, attest, limit, serve, shut down.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_audit::{
    Aggregator, AuditEntry, AuditLog, AuditOptions, ChainMode, Outcome, SharedAuditLog, SyncPolicy,
};
use coffer_keystore::store::FileStamp;
use coffer_platform::Platform;
use coffer_ratls::{AttestedVerifier, OfflineVerifier};
use rustls::pki_types::UnixTime;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use crate::anchors::AnchorTarget;
use crate::config::KeydConfig;
use crate::identity::ServerIdentity;
use crate::keyrings::{load_keyrings, load_sealing_keys, KeyringSlot, SlotBackend};
use crate::limits::{KeydLimits, RateLimiter};
use crate::metrics::{ConnectionResult, KeydMetrics};
use crate::pb::key_service_server::KeyServiceServer;
use crate::root::KeydRoot;
use crate::service::{KeydConnectInfo, KeydService};
use crate::shared::{
    reload_record, serve_keyring, watch_loop, ConfigFrom, ConfigWatch, SharedState,
};
use crate::slots::{ConnectionSlots, Slot};
use crate::KeydError;

/// How long a client may take, by default, to complete the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections that completed the handshake and wait for the gRPC server.
const ACCEPT_QUEUE: usize = 64;
/// How long a key bundle is valid by default: 30 days.
pub const DEFAULT_KEY_BUNDLE_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// The audit log is made durable at least this often (and on shutdown).
const AUDIT_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// How keyd writes its audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuditSettings {
    /// Start a new segment before the active file exceeds this many bytes (at least
    /// [`coffer_audit::MIN_SEGMENT_BYTES`]).
    pub segment_bytes: u64,
    /// Keep at most this many closed segments; `None` keeps all.
    pub retention_segments: Option<u64>,
    /// Count successful unwraps and write one record per caller, keyring and key id this
    /// often, instead of one per unwrap; `None` writes every unwrap.
    pub aggregate_interval: Option<Duration>,
}

/// Default audit segment size: 64 MiB.
pub const DEFAULT_AUDIT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            segment_bytes: DEFAULT_AUDIT_SEGMENT_BYTES,
            retention_segments: None,
            aggregate_interval: None,
        }
    }
}

/// Everything [`serve`] needs.
pub struct KeydServeOptions {
    /// keyd's data directory: `keyd-root.json` and `keyrings/<name>/`.
    pub data_dir: PathBuf,
    /// The TEE platform: unseals the root and attests keyd's TLS certificate.
    pub platform: Arc<dyn Platform>,
    /// The attestation policy that grants callers their roles.
    pub policy: Arc<Policy>,
    /// Which roles may do what on which keyring (unused with `config_from_store`).
    pub config: KeydConfig,
    /// Serve the configuration stored in etcd (`--config etcd:`, needs `shared`) and apply
    /// each new version of it while running.
    pub config_from_store: bool,
    /// How callers' evidence is verified (collateral and VCEK sources).
    pub verify_options: VerifyOptions,
    /// The bound TCP listener to serve on.
    pub listener: TcpListener,
    /// The audit log (default `<data_dir>/audit.log`).
    pub audit_log: Option<PathBuf>,
    /// Audit segments, retention and aggregation.
    pub audit: AuditSettings,
    /// Connection, message-size and rate limits.
    pub limits: KeydLimits,
    /// A bound listener for `/metrics` and `/healthz`, if wanted.
    pub metrics_listener: Option<TcpListener>,
    /// How often keyring files are checked for changes made by `coffer keyd rotate`.
    pub reload_interval: Duration,
    /// How long in-flight calls may finish after shutdown begins.
    pub drain_timeout: Duration,
    /// How often keyd makes a new attested TLS certificate (its certificates are valid for a
    /// day; renew well within that).
    pub cert_renewal: Duration,
    /// Called with the listening address once the root, keyrings and audit log are loaded and
    /// connections are being accepted: the moment to say "listening".
    pub on_ready: Option<ReadyHook>,
    /// How long a client may take to complete the TLS handshake; also how long a client whose
    /// attestation was refused keeps its connection (its calls get PERMISSION_DENIED).
    pub handshake_timeout: Duration,
    /// How long the key bundles keyd serves are valid (issued to expires); a bundle is rebuilt
    /// with fresh evidence when half of it has passed or the sealing keys change.
    pub key_bundle_validity: Duration,
    /// Keyrings and sealing keys in etcd instead of the data directory (`--store etcd`);
    /// `None` serves the data directory's.
    pub shared: Option<crate::SharedStore>,
    /// This replica's name, unique among the replicas that share a store: its audit chain is
    /// anchored in the store under it.
    pub replica_id: String,
    /// How often this replica anchors its audit chain head in the shared store.
    pub audit_anchor_interval: Duration,
}

/// How often a replica anchors its audit chain head in the shared store, by default.
pub const DEFAULT_AUDIT_ANCHOR_INTERVAL: Duration = Duration::from_secs(10);

/// The host name (`/proc/sys/kernel/hostname`: a pod's name in Kubernetes), else `keyd`.
pub fn default_replica_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keyd".to_string())
}

/// See [`KeydServeOptions::on_ready`].
pub type ReadyHook = Box<dyn FnOnce(std::net::SocketAddr) + Send>;

impl KeydServeOptions {
    /// Options with default limits, audit log, no metrics endpoint, 2 s reload, 10 s drain and
    /// 12 h certificate renewal.
    pub fn new(
        data_dir: PathBuf,
        platform: Arc<dyn Platform>,
        policy: Arc<Policy>,
        config: KeydConfig,
        verify_options: VerifyOptions,
        listener: TcpListener,
    ) -> Self {
        KeydServeOptions {
            data_dir,
            platform,
            policy,
            config,
            config_from_store: false,
            verify_options,
            listener,
            audit_log: None,
            audit: AuditSettings::default(),
            limits: KeydLimits::default(),
            metrics_listener: None,
            reload_interval: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(10),
            cert_renewal: crate::identity::DEFAULT_RENEWAL,
            on_ready: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            key_bundle_validity: DEFAULT_KEY_BUNDLE_VALIDITY,
            shared: None,
            replica_id: default_replica_id(),
            audit_anchor_interval: DEFAULT_AUDIT_ANCHOR_INTERVAL,
        }
    }
}

impl std::fmt::Debug for KeydServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeydServeOptions")
            .field("data_dir", &self.data_dir)
            .field("config", &self.config)
            .field("listener", &self.listener.local_addr().ok())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A TLS connection and the facts established when it was accepted.
struct KeydConn {
    io: TlsStream<TcpStream>,
    info: KeydConnectInfo,
    /// Holds one of the `max_connections` slots until the connection closes.
    _slot: Slot,
    /// When a refused client's connection is closed.
    refused_until: Option<Pin<Box<Sleep>>>,
    metrics: KeydMetrics,
}

impl Drop for KeydConn {
    fn drop(&mut self) {
        self.metrics.open_connections().dec();
    }
}

impl tonic::transport::server::Connected for KeydConn {
    type ConnectInfo = KeydConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for KeydConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Failing the read makes the HTTP/2 server drop the connection and its slot.
        if let Some(until) = self.refused_until.as_mut() {
            if until.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "closing the connection of a client whose attestation was refused",
                )));
            }
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

crate::io::forward_async_write!(KeydConn, io);

/// Serves the key service on `options.listener` until `shutdown` completes, then lets
/// in-flight calls finish (up to `drain_timeout`) and makes the audit log durable.
///
/// Opens keyd's root with the platform (a root sealed elsewhere needs `coffer keyd recover`),
/// loads every configured keyring, and makes an attested TLS certificate. A client's
/// attestation is checked right after the TLS handshake: a client the policy grants no role
/// keeps its connection but every call is refused with PERMISSION_DENIED and the reason, and
/// audited. Each call of an attested client is checked against the keyd configuration.
pub async fn serve(
    options: KeydServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), KeydError> {
    let KeydServeOptions {
        data_dir,
        platform,
        policy,
        config,
        config_from_store,
        verify_options,
        listener,
        audit_log,
        audit: audit_settings,
        limits,
        metrics_listener,
        reload_interval,
        drain_timeout,
        cert_renewal,
        on_ready,
        handshake_timeout,
        key_bundle_validity,
        shared,
        replica_id,
        audit_anchor_interval,
    } = options;
    let addr = listener
        .local_addr()
        .map_err(|e| KeydError::io("listener address", e))?;
    let audit_path = audit_log.unwrap_or_else(|| data_dir.join("audit.log"));
    let from_dir = shared.is_none();
    if config_from_store && from_dir {
        return Err(KeydError::Config {
            path: None,
            message:
                "--config etcd: serves the configuration stored in etcd: it needs --store etcd"
                    .into(),
        });
    }
    let (root, dir_keyrings, audit) = {
        let platform = platform.clone();
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            // Best effort, like the plugin's: leftovers only wait for the next write.
            if let Err(e) = crate::root::remove_stale_temps(&data_dir) {
                tracing::warn!(error = %e, "could not check the data directory for temporary files left by killed writers");
            }
            let root = KeydRoot::open(&data_dir, platform.as_ref())?;
            let keyrings = if from_dir {
                Some(load_keyrings(&data_dir, &root, &platform, &config)?)
            } else {
                None
            };
            let log = AuditLog::open(
                &audit_path,
                AuditOptions {
                    chain: ChainMode::Hmac(root.audit_chain_key()),
                    sync: SyncPolicy::Batched {
                        interval: AUDIT_SYNC_INTERVAL,
                    },
                    mode: 0o600,
                    segment_bytes: Some(audit_settings.segment_bytes),
                    retention_segments: audit_settings.retention_segments,
                },
            )?;
            Ok::<_, KeydError>((root, keyrings, SharedAuditLog::new(log)))
        })
        .await
        .map_err(|e| KeydError::io("loading keyd state", io::Error::other(e)))??
    };
    let instance_id = root.instance_id().to_string();
    let handover = Arc::new(root.hand_over());
    // With --store etcd the audit chain head is anchored there.
    let anchors = shared
        .as_ref()
        .map(|shared| AnchorTarget::new(shared, &root, replica_id))
        .transpose()?;
    // With --store etcd: the keyrings from one listing of the prefix, watched from there.
    let (keyrings, watched) = match shared {
        None => (dir_keyrings.unwrap_or_default(), None),
        Some(shared) => {
            let state = Arc::new(SharedState::open(shared, &root, platform.clone()).await?);
            let watch = config_from_store.then(|| ConfigWatch {
                policy: policy.clone(),
                revision: std::sync::atomic::AtomicI64::new(0),
            });
            let from = match &watch {
                Some(watch) => ConfigFrom::Store(watch),
                None => ConfigFrom::File(&config),
            };
            let (keyrings, revision) = state.load_keyrings(from).await?;
            (keyrings, Some((state, revision, watch)))
        }
    };
    drop(root);
    let metrics = KeydMetrics::new();
    for slot in keyrings.values() {
        metrics.set_keyring_keys(&slot.name, slot.current.load().len());
    }
    let identity = Arc::new(ServerIdentity::new(platform.clone())?);
    let verifier = Arc::new(AttestedVerifier::new(
        Arc::new(OfflineVerifier::new(verify_options)),
        policy,
    ));
    let mut tls =
        coffer_ratls::server_config_deferred_client_check(identity.clone(), verifier.clone())?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<KeydConn, io::Error>>(ACCEPT_QUEUE);
    let accept = Acceptor {
        acceptor,
        verifier,
        audit: audit.clone(),
        metrics: metrics.clone(),
        rates: Arc::new(RateLimiter::new(limits.rate_per_second, limits.rate_burst)),
        public_rates: Arc::new(RateLimiter::new(
            limits.public_rate_per_second,
            limits.public_rate_burst,
        )),
        slots: ConnectionSlots::new(limits.max_connections),
        handshake_timeout,
    };
    let accept_task = tokio::spawn(accept.run(listener, tx));
    let reload_task = tokio::spawn(reload_loop(
        keyrings
            .values()
            .filter(|slot| matches!(slot.backend, SlotBackend::Dir { .. }))
            .cloned()
            .collect(),
        audit.clone(),
        metrics.clone(),
        reload_interval,
    ));
    let watch_task = watched.map(|(state, revision, config_watch)| {
        tokio::spawn(watch_loop(
            state,
            keyrings.values().cloned().collect(),
            revision,
            config_watch,
            audit.clone(),
            metrics.clone(),
        ))
    });
    let renewal_task = tokio::spawn(identity.renew_forever(cert_renewal));
    let anchor_task =
        anchors.map(|a| a.start(audit.clone(), metrics.clone(), audit_anchor_interval));
    let metrics_task = metrics_listener.map(|listener| {
        let render_metrics = metrics.clone();
        let health_audit = audit.clone();
        tokio::spawn(coffer_telemetry::serve_http(
            listener,
            Arc::new(move || render_metrics.render()),
            Arc::new(move || {
                health_audit
                    .healthy()
                    .map_err(|e| format!("the audit log cannot be written: {e}"))
            }),
        ))
    });
    tracing::info!(instance = %instance_id, keyrings = keyrings.len(), audit_log = %audit.path().display(), %addr, "keyd ready");
    if let Some(ready) = on_ready {
        ready(addr);
    }

    let aggregate = audit_settings
        .aggregate_interval
        .map(|every| (every, Arc::new(Aggregator::new())));
    let flush_task = aggregate.as_ref().map(|(every, aggregator)| {
        tokio::spawn(flush_loop(
            aggregator.clone(),
            audit.clone(),
            metrics.clone(),
            *every,
        ))
    });
    let service = KeyServiceServer::new(KeydService {
        keyrings,
        audit: audit.clone(),
        aggregate: aggregate.as_ref().map(|(_, a)| a.clone()),
        metrics: metrics.clone(),
        instance_id: instance_id.clone(),
        platform: platform.clone(),
        bundle_validity: key_bundle_validity,
        handover,
    })
    .max_decoding_message_size(limits.max_message_len)
    .max_encoding_message_size(limits.max_message_len);

    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits.max_concurrent_streams))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .layer(coffer_proto::framing::RequestFramingLayer::new(
            limits.max_message_len,
        ))
        .add_service(service)
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), async move {
            let _ = drain_rx.await;
        });
    tokio::pin!(server);
    tokio::pin!(shutdown);
    let result = tokio::select! {
        r = &mut server => r.map_err(KeydError::from),
        _ = &mut shutdown => {
            tracing::info!("shutting down: no new connections; draining in-flight calls");
            accept_task.abort();
            let _ = drain_tx.send(());
            match tokio::time::timeout(drain_timeout, &mut server).await {
                Ok(r) => r.map_err(KeydError::from),
                Err(_) => {
                    tracing::warn!(timeout = ?drain_timeout, "drain timeout reached; closing remaining connections");
                    Ok(())
                }
            }
        }
    };
    accept_task.abort();
    reload_task.abort();
    if let Some(task) = watch_task {
        task.abort();
    }
    renewal_task.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let Some(task) = flush_task {
        task.abort();
    }
    // Counts of calls that completed during the drain are written before keyd stops.
    if let Some((_, aggregator)) = &aggregate {
        flush_counts(aggregator, &audit, &metrics).await;
    }
    if let Err(e) = audit.sync() {
        tracing::error!(error = %e, "could not make the audit log durable at shutdown");
    }
    if let Some(task) = anchor_task {
        task.stop().await;
    }
    tracing::info!("coffer keyd stopped");
    result
}

/// What the accept loop needs to turn TCP connections into attested, limited connections.
struct Acceptor {
    acceptor: TlsAcceptor,
    verifier: Arc<AttestedVerifier>,
    audit: SharedAuditLog,
    metrics: KeydMetrics,
    rates: Arc<RateLimiter>,
    /// Per-address budgets of the public calls.
    public_rates: Arc<RateLimiter>,
    slots: ConnectionSlots,
    handshake_timeout: Duration,
}

impl Acceptor {
    async fn run(
        self,
        listener: TcpListener,
        tx: tokio::sync::mpsc::Sender<Result<KeydConn, io::Error>>,
    ) {
        let this = Arc::new(self);
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(slot) = this.slots.take(remote.ip()) else {
                this.metrics.connection(ConnectionResult::OverLimit);
                tracing::warn!(peer = %remote, "connection limit reached; closing the new connection");
                drop(tcp);
                continue;
            };
            let this = this.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(conn) = this.establish(tcp, remote, slot).await {
                    let _ = tx.send(Ok(conn)).await;
                }
            });
        }
    }

    /// TLS handshake, then the attestation check; `None` when the handshake failed.
    async fn establish(
        &self,
        tcp: TcpStream,
        remote: std::net::SocketAddr,
        mut slot: Slot,
    ) -> Option<KeydConn> {
        let _ = tcp.set_nodelay(true);
        let accepted = tokio::time::Instant::now();
        let tls =
            match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    self.metrics.connection(ConnectionResult::HandshakeFailed);
                    tracing::warn!(peer = %remote, error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    self.metrics.connection(ConnectionResult::HandshakeFailed);
                    tracing::warn!(peer = %remote, "TLS handshake timed out");
                    return None;
                }
            };
        let peer_addr = remote.to_string();
        let certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec());
        let verdict = match &certificate {
            None => Err((
                "the client presented no certificate; keyd accepts only attested TLS clients (coffer's attested certificate with TEE evidence)"
                    .to_string(),
                None,
            )),
            Some(der) => {
                // Evidence verification can take milliseconds (DCAP, SNP chains): off the
                // async workers.
                let verifier = self.verifier.clone();
                let der = der.clone();
                match tokio::task::spawn_blocking(move || verifier.verify_certificate_detailed(&der, UnixTime::now())).await {
                    Ok(result) => result.map_err(|r| (r.error.to_string(), r.claims)),
                    Err(e) => Err((format!("verification task failed: {e}"), None)),
                }
            }
        };
        let attested = verdict.is_ok();
        let (peer, caller, bucket_key) = match verdict {
            Ok(identity) => {
                let caller = coffer_audit::Caller::new(
                    identity.claims.tee.name(),
                    identity.claims.primary_measurement(),
                    Some(&identity.role.name),
                    &peer_addr,
                );
                let key = format!("{}/{}", identity.role.name, caller.measurement);
                self.metrics.connection(ConnectionResult::Attested);
                tracing::debug!(peer = %remote, role = %identity.role, "attested client connected");
                (Ok(Arc::new(identity)), caller, key)
            }
            Err((reason, claims)) => {
                // The policy refused verified evidence: record whose it was. Otherwise only the
                // claimed TEE type is known, and no measurement is recorded as verified.
                let caller = match claims {
                    Some(claims) => coffer_audit::Caller::new(
                        claims.tee.name(),
                        claims.primary_measurement(),
                        None,
                        &peer_addr,
                    ),
                    None => coffer_audit::Caller {
                        tee: certificate
                            .as_deref()
                            .and_then(|der| coffer_ratls::evidence_from_certificate(der).ok())
                            .map(|d| d.evidence.tee.name().to_string())
                            .unwrap_or_else(|| "none".to_string()),
                        measurement: String::new(),
                        role: None,
                        peer: peer_addr.clone(),
                    },
                };
                self.metrics.connection(ConnectionResult::Refused);
                tracing::warn!(peer = %remote, reason = %reason, "client attestation refused; its calls will be refused");
                let _ = self.audit.append(AuditEntry {
                    event: "connect".to_string(),
                    caller: caller.clone(),
                    keyring: None,
                    key_id: None,
                    location: None,
                    binding: None,
                    result: Outcome::Denied,
                    reason: Some(reason.clone()),
                });
                // Refused clients share a budget per address, so they cannot flood the log.
                (
                    Err(Arc::from(reason)),
                    caller,
                    format!("refused/{}", remote.ip()),
                )
            }
        };
        self.metrics.open_connections().inc();
        // A refused client keeps its unverified slot, and only for a while: long enough to
        // learn why from its calls, not long enough to crowd out attested clients.
        let refused_until = if attested {
            slot.verified();
            None
        } else {
            Some(Box::pin(tokio::time::sleep_until(
                accepted + self.handshake_timeout,
            )))
        };
        Some(KeydConn {
            io: tls,
            info: KeydConnectInfo {
                peer,
                remote_addr: Some(remote),
                caller: Arc::new(caller),
                bucket: self.rates.bucket(&bucket_key),
                public_bucket: self.public_rates.bucket(&format!("public/{}", remote.ip())),
            },
            _slot: slot,
            refused_until,
            metrics: self.metrics.clone(),
        })
    }
}

/// Writes the aggregated unwrap counts every `every`.
async fn flush_loop(
    aggregator: Arc<Aggregator>,
    audit: SharedAuditLog,
    metrics: KeydMetrics,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        flush_counts(&aggregator, &audit, &metrics).await;
    }
}

/// Writes the aggregated counts (off the async workers: the write may fsync and rotate).
async fn flush_counts(aggregator: &Arc<Aggregator>, audit: &SharedAuditLog, metrics: &KeydMetrics) {
    let (aggregator, log) = (aggregator.clone(), audit.clone());
    let flushed = tokio::task::spawn_blocking(move || aggregator.flush(&log)).await;
    let error = match flushed {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    // The log is now unwritable: keyd refuses further calls (fail closed) and /healthz fails.
    metrics.audit_failure();
    tracing::error!(error = %error, "could not write aggregated unwrap counts to the audit log");
}

/// Reloads keyrings whose keystore file changed (e.g. `coffer keyd rotate` while serving).
async fn reload_loop(
    slots: Vec<Arc<KeyringSlot>>,
    audit: SharedAuditLog,
    metrics: KeydMetrics,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for slot in &slots {
            let SlotBackend::Dir {
                stamp: served,
                sealing_stamp,
            } = &slot.backend
            else {
                continue;
            };
            reload_sealing_keys(slot, sealing_stamp, &audit).await;
            let stamp = slot.store.stamp();
            if *served.lock().unwrap_or_else(|p| p.into_inner()) == stamp {
                continue;
            }
            let _guard = slot.rotate.lock().await;
            let worker = slot.clone();
            match tokio::task::spawn_blocking(move || worker.store.load()).await {
                Ok(Ok(keyring)) => {
                    let key_id = keyring.primary_id().to_string();
                    serve_keyring(slot, keyring, 0, &metrics);
                    *served.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
                    tracing::info!(keyring = %slot.name, key_id = %key_id, "keyring changed on disk: reloaded");
                    let _ = audit.append(reload_record(Some(&slot.name), Some(key_id), None));
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %slot.keystore_error(e), "keyring changed on disk but cannot be loaded; still serving the previous keys");
                }
                Err(e) => tracing::error!(error = %e, "keyring reload task failed"),
            }
        }
    }
}

/// Reloads the keyring's sealing keys if their file changed (`coffer keyd sealing-key rotate`
/// or `retire` while serving); the next key bundle is then built from them.
async fn reload_sealing_keys(
    slot: &Arc<KeyringSlot>,
    served: &std::sync::Mutex<Option<FileStamp>>,
    audit: &SharedAuditLog,
) {
    let stamp = slot.sealing_store.stamp();
    if *served.lock().unwrap_or_else(|p| p.into_inner()) == stamp {
        return;
    }
    let _guard = slot.rotate.lock().await;
    let worker = slot.clone();
    match tokio::task::spawn_blocking(move || load_sealing_keys(&worker.sealing_store)).await {
        Ok(Ok(keys)) => {
            let primary = keys.as_ref().map(|k| k.primary().id().to_string());
            slot.sealing.store(keys.map(Arc::new));
            *served.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
            tracing::info!(keyring = %slot.name, primary = ?primary, "sealing keys changed on disk: reloaded");
            let _ = audit.append(reload_record(
                Some(&slot.name),
                primary,
                Some("sealing keys".to_string()),
            ));
        }
        Ok(Err(e)) => {
            tracing::error!(keyring = %slot.name, error = %e, "sealing keys changed on disk but cannot be loaded; still serving the previous keys");
        }
        Err(e) => tracing::error!(error = %e, "sealing-key reload task failed"),
    }
}

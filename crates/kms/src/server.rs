//! `coffer kms serve`: wires the keys (a local keystore, or keyd in service mode), the gRPC
//! services, the socket, metrics and the background tasks (hot reload, scheduled rotation,
//! keyd probing, aggregated audit) together.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use coffer_keystore::{Keystore, KeystoreError};
use coffer_proto::{v1beta1, v2};
use tokio_stream::wrappers::ReceiverStream;

use crate::backend::{Backend, LocalKeys};
use crate::enclave::{EnclaveError, EnclaveKeys, EnclaveOptions};
use crate::listener::{BoundSocket, SocketError, SocketOptions};
use crate::metrics::Metrics;
use crate::peer::{CallerPolicy, UnrealCredentials};
use crate::remote::{RemoteError, RemoteKeys, RemoteOptions};
use crate::service::{KmsState, StatusVersion, V1Service, V2Service};
use crate::tcp::{TcpError, TcpListening, TcpOptions};

/// Largest gRPC message the plugin decodes or encodes. Requests are at most a 1 KiB
/// ciphertext plus 32 KiB of annotations; anything bigger is refused before it is parsed.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// Where the plugin's keys are.
#[derive(Debug)]
pub enum KeySource {
    /// Standalone mode: KEKs in this sealed keystore (created on first start).
    Keystore(Keystore),
    /// Service mode: KEKs stay in keyd; every call is forwarded to it.
    Keyd(RemoteOptions),
    /// Bridge (`coffer kms bridge`): KEKs stay in the plugin inside an SGX enclave; every call
    /// is forwarded to it.
    Enclave(EnclaveOptions),
}

/// Everything `serve` needs besides the keys.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The unix socket.
    pub socket: SocketOptions,
    /// Who may call.
    pub callers: CallerPolicy,
    /// What v2 Status reports as `version`.
    pub status_version: StatusVersion,
    /// Where to serve `/metrics` and `/healthz`, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Allow a non-loopback metrics address.
    pub metrics_allow_remote: bool,
    /// Rotate the primary KEK when it is older than this.
    pub rotate_every: Option<Duration>,
    /// How often to check the keystore file for changes (rotation by the CLI).
    pub reload_interval: Duration,
    /// How long to wait for in-flight calls after SIGTERM.
    pub drain_timeout: Duration,
    /// How often to write the aggregated "decrypt ok" audit line.
    pub decrypt_audit_interval: Duration,
    /// Serve on TCP over attested TLS for the host-side bridge instead of on the unix socket
    /// (`--listen-tcp`, inside an SGX LibOS).
    pub tcp: Option<TcpOptions>,
    /// The platform this process runs on: on an SGX LibOS, peer credentials are not the host's,
    /// so no unix socket is served (see [`crate::peer::credentials_are_real`]).
    pub platform_kind: coffer_platform::PlatformKind,
    /// Serve the unix socket even where peer credentials are not real (tests of a LibOS only:
    /// every caller then passes the caller check).
    pub insecure_unreal_peer_credentials: bool,
}

impl ServeOptions {
    /// Defaults for a socket path: mode 0600, root and own uid, v2, reload every 2 s.
    pub fn new(socket: impl Into<std::path::PathBuf>) -> Self {
        ServeOptions {
            socket: SocketOptions {
                path: socket.into(),
                mode: 0o600,
                owner: None,
                group: None,
                max_connections: 64,
                timeouts: crate::deadline::ConnTimeouts::default(),
            },
            callers: CallerPolicy::default_for_this_process(),
            status_version: StatusVersion::V2,
            metrics_addr: None,
            metrics_allow_remote: false,
            rotate_every: None,
            reload_interval: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(10),
            decrypt_audit_interval: Duration::from_secs(60),
            tcp: None,
            platform_kind: coffer_platform::PlatformKind::Sim,
            insecure_unreal_peer_credentials: false,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The keystore could not be loaded.
    #[error(transparent)]
    Keystore(#[from] KeystoreError),
    /// Service mode could not be set up.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// A caller check cannot work here: peer credentials are not real.
    #[error("{0}, so a caller check on a unix socket here would let every caller in. Inside an SGX LibOS, serve with --listen-tcp 127.0.0.1:PORT and run `coffer kms bridge` on the host: it owns the socket and checks callers with the host kernel's credentials (see docs/tee-platforms.md)")]
    UnrealPeerCredentials(UnrealCredentials),
    /// The TCP listener (`--listen-tcp`) could not be set up.
    #[error(transparent)]
    Tcp(#[from] TcpError),
    /// The bridge's connection to the enclave could not be set up.
    #[error(transparent)]
    Enclave(#[from] EnclaveError),
    /// The metrics listener could not be set up.
    #[error("metrics endpoint: {0}")]
    Metrics(std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A background task panicked or was cancelled.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Called once the socket is accepting, with the primary key id (a note instead when it is not
/// known yet: in service mode, while keyd cannot be reached).
pub type ReadyHook = Box<dyn FnOnce(&str) + Send>;

/// Runs the plugin until `shutdown` completes, then drains in-flight calls (up to
/// `drain_timeout`) and removes the socket.
pub async fn serve(
    keys: KeySource,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: Option<ReadyHook>,
) -> Result<(), ServeError> {
    let (backend, metrics, keystore) = match keys {
        KeySource::Keystore(keystore) => {
            let ks = keystore.clone();
            let (keyring, created) = tokio::task::spawn_blocking(move || ks.load_or_init())
                .await
                .map_err(|e| ServeError::Task(e.to_string()))??;
            if created {
                tracing::info!(path = %keystore.path().display(), "created a new keystore");
            }
            let metrics = Metrics::new();
            let local = LocalKeys::new(keyring, metrics.clone());
            (Backend::Local(local), metrics, Some(keystore))
        }
        KeySource::Keyd(remote) => {
            let metrics = Metrics::for_service_mode();
            let remote = RemoteKeys::new(remote, metrics.clone()).await?;
            (Backend::Remote(Box::new(remote)), metrics, None)
        }
        KeySource::Enclave(enclave) => {
            let metrics = Metrics::new();
            let enclave = EnclaveKeys::new(enclave)?;
            (Backend::Enclave(Box::new(enclave)), metrics, None)
        }
    };
    let state = KmsState::new(backend, metrics.clone(), options.status_version);

    // Bound before the metrics listener, so a second instance stops here.
    let listening = match &options.tcp {
        Some(tcp) => Listening::Tcp(TcpListening::bind(tcp).await?),
        None => {
            check_peer_credentials(&options)?;
            Listening::Unix(BoundSocket::bind(&options.socket)?)
        }
    };
    let metrics_task = match options.metrics_addr {
        Some(addr) => {
            let listener = coffer_telemetry::bind(
                addr,
                options.metrics_allow_remote,
                "--metrics-addr",
                "--metrics-allow-remote",
            )
            .await
            .map_err(ServeError::Metrics)?;
            let health_state = state.clone();
            let render_metrics = metrics.clone();
            tracing::info!(%addr, "serving /metrics and /healthz");
            Some(tokio::spawn(coffer_telemetry::serve_http(
                listener,
                Arc::new(move || render_metrics.render()),
                Arc::new(move || health_state.backend().health()),
            )))
        }
        None => None,
    };

    let rewrites = Arc::new(AtomicU64::new(0));
    let (socket, endpoint, (incoming, accept_task)) = match listening {
        Listening::Unix(mut socket) => {
            let endpoint = format!("unix://{}", socket.path().display());
            let accepting = socket.accept_loop(
                Arc::new(options.callers.clone()),
                &options.socket,
                rewrites.clone(),
            );
            (Some(socket), endpoint, accepting)
        }
        Listening::Tcp(tcp) => {
            let endpoint = match tcp.local_addr() {
                Ok(addr) => format!("tcp://{addr} (attested TLS, for coffer kms bridge)"),
                Err(_) => "tcp (attested TLS, for coffer kms bridge)".to_string(),
            };
            let accepting = tcp.accept_loop(&options.socket, rewrites.clone());
            (None, endpoint, accepting)
        }
    };
    let background = tokio::spawn(background_tasks(
        keystore,
        state.clone(),
        options.clone(),
        rewrites,
    ));
    let keyd_probe = state.backend().remote().is_some().then(|| {
        let state = state.clone();
        tokio::spawn(async move {
            if let Some(remote) = state.backend().remote() {
                remote.maintain().await;
            }
        })
    });

    let v2 = v2::key_management_service_server::KeyManagementServiceServer::new(V2Service(
        state.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_LEN)
    .max_encoding_message_size(MAX_MESSAGE_LEN);
    let v1 = v1beta1::key_management_service_server::KeyManagementServiceServer::new(V1Service(
        state.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_LEN)
    .max_encoding_message_size(MAX_MESSAGE_LEN);

    let primary = match state.backend().status().await {
        Ok(key_id) => key_id,
        Err(status) => {
            tracing::warn!(error = %status.message(), "primary key unknown for now; serving anyway (Status reports UNAVAILABLE with the reason until it is known)");
            "unknown for now".to_string()
        }
    };
    let mode = match state.backend() {
        Backend::Remote(remote) => format!(
            "service mode: keyd {} keyring {}",
            remote.addr(),
            remote.keyring()
        ),
        Backend::Enclave(enclave) => format!("bridge to the enclave plugin at {}", enclave.addr()),
        Backend::Local(_) => "standalone".to_string(),
    };
    tracing::info!(
        socket = %endpoint,
        key_id = %primary,
        status_version = options.status_version.as_str(),
        mode = %mode,
        "coffer kms serving KMS v2 and v1beta1"
    );
    if let Some(hook) = on_ready {
        hook(&primary);
    }

    // tonic's graceful shutdown starts only after the socket is unlinked, so no new caller
    // can connect while in-flight calls drain.
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let graceful = async move {
        let _ = drain_rx.await;
    };
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(1024))
        .layer(crate::deadline::CallLayer)
        .layer(coffer_proto::framing::RequestFramingLayer::new(
            MAX_MESSAGE_LEN,
        ))
        .add_service(v2)
        .add_service(v1)
        .serve_with_incoming_shutdown(ReceiverStream::new(incoming), graceful);
    tokio::pin!(server);

    tokio::pin!(shutdown);
    let result = tokio::select! {
        r = &mut server => r.map_err(ServeError::from),
        _ = &mut shutdown => {
            tracing::info!("shutting down: socket removed, no new connections; draining in-flight calls");
            accept_task.abort();
            if let Some(socket) = &socket {
                socket.unlink();
            }
            let _ = drain_tx.send(());
            match tokio::time::timeout(options.drain_timeout, &mut server).await {
                Ok(r) => r.map_err(ServeError::from),
                Err(_) => {
                    tracing::warn!(timeout = ?options.drain_timeout, "drain timeout reached; closing remaining connections");
                    Ok(())
                }
            }
        }
    };
    accept_task.abort();
    background.abort();
    if let Some(task) = keyd_probe {
        task.abort();
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    flush_decrypt_audit(&state);
    drop(socket);
    tracing::info!("coffer kms stopped");
    result
}

/// Where the plugin accepts connections.
enum Listening {
    Unix(BoundSocket),
    Tcp(TcpListening),
}

/// Refuses a unix socket where the caller check could not be real (see [`crate::peer`]).
fn check_peer_credentials(options: &ServeOptions) -> Result<(), ServeError> {
    match crate::peer::check_this_process(options.platform_kind) {
        Ok(()) => Ok(()),
        Err(why) if options.insecure_unreal_peer_credentials => {
            tracing::warn!(reason = %why, "--insecure-unreal-peer-credentials: serving a unix socket whose caller check admits every caller");
            Ok(())
        }
        Err(why) => Err(ServeError::UnrealPeerCredentials(why)),
    }
}

fn flush_decrypt_audit(state: &KmsState) {
    let count = state.take_decrypt_count();
    if count > 0 {
        tracing::info!(target: "coffer::audit", event = "decrypt", count, "decrypt ok (aggregated since the last line)");
    }
}

/// Counts `:authority` rewrites, writes the aggregated audit line and, in standalone mode,
/// reloads the keystore when it changes and rotates it on schedule.
async fn background_tasks(
    keystore: Option<Keystore>,
    state: Arc<KmsState>,
    options: ServeOptions,
    rewrites: Arc<AtomicU64>,
) {
    let mut reload_tick = tokio::time::interval(options.reload_interval);
    reload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut audit_tick = tokio::time::interval(options.decrypt_audit_interval);
    audit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let local = keystore.as_ref().zip(state.backend().local());
    let mut stamp = keystore.as_ref().map(Keystore::stamp);
    let mut last_reload_error: Option<String> = None;
    let mut seen_rewrites = 0;
    loop {
        tokio::select! {
            _ = reload_tick.tick() => {
                let now_rewrites = rewrites.load(Ordering::Relaxed);
                state.metrics.authority_rewrites.inc_by(now_rewrites - seen_rewrites);
                seen_rewrites = now_rewrites;
                let Some((keystore, keys)) = local else { continue };
                if let Some(every) = options.rotate_every {
                    let age = SystemTime::now().duration_since(keys.keyring().primary_created()).unwrap_or_default();
                    if age >= every {
                        let ks = keystore.clone();
                        match tokio::task::spawn_blocking(move || ks.rotate()).await {
                            Ok(Ok(info)) => tracing::info!(key_id = %info.id, "scheduled rotation (--rotate-every)"),
                            Ok(Err(e)) => tracing::error!(error = %e, "scheduled rotation failed; will retry"),
                            Err(e) => tracing::error!(error = %e, "scheduled rotation task failed"),
                        }
                    }
                }
                let current = Some(keystore.stamp());
                if current != stamp {
                    let ks = keystore.clone();
                    match tokio::task::spawn_blocking(move || ks.load()).await {
                        Ok(Ok(ring)) => {
                            let old = keys.keyring().primary_id().to_string();
                            tracing::info!(
                                target: "coffer::audit",
                                event = "reload",
                                key_id = ring.primary_id(),
                                previous_key_id = %old,
                                generation = ring.generation(),
                                keys = ring.len(),
                                "keystore changed: reloaded keys"
                            );
                            keys.replace_keyring(ring);
                            stamp = current;
                            last_reload_error = None;
                        }
                        Ok(Err(e)) => {
                            // Retried every tick until it loads (e.g. after a permissions fix);
                            // logged once per distinct error.
                            state.metrics.reload_failures.inc();
                            let message = e.to_string();
                            if last_reload_error.as_deref() != Some(message.as_str()) {
                                tracing::error!(error = %message, "keystore changed but could not be loaded; still serving the previous keys");
                                last_reload_error = Some(message);
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "keystore reload task failed"),
                    }
                }
            }
            _ = audit_tick.tick() => flush_decrypt_audit(&state),
        }
    }
}

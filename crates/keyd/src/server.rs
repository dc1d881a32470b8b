//! The key service: keyrings, authorisation, the gRPC service and the attested TLS listener.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keystore::kek::{EncryptError, Keyring};
use coffer_keystore::store::{KeyState, Keystore};
use coffer_platform::Platform;
use coffer_ratls::{AttestedVerifier, OfflineVerifier, PeerIdentity};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use zeroize::Zeroize;

use crate::config::{validate_keyring_name, KeydConfig, KeyringAccess, Operation};
use crate::pb;
use crate::pb::key_service_server::{KeyService, KeyServiceServer};
use crate::KeydError;

/// Largest plaintext `Wrap` accepts.
pub const MAX_PLAINTEXT_LEN: usize = 512;
/// Largest ciphertext `Unwrap` accepts.
pub const MAX_CIPHERTEXT_LEN: usize = 1024;
/// Longest key id `Unwrap` accepts.
const MAX_KEY_ID_LEN: usize = 255;
/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections that completed the handshake and wait for the gRPC server.
const ACCEPT_QUEUE: usize = 64;

/// Everything [`serve`] needs.
pub struct KeydServeOptions {
    /// keyd's data directory; keyrings live in `<data_dir>/keyrings/<name>/`.
    pub data_dir: PathBuf,
    /// The TEE platform: seals the keyrings and attests keyd's TLS certificate.
    pub platform: Arc<dyn Platform>,
    /// The attestation policy that grants callers their roles.
    pub policy: Arc<Policy>,
    /// Which roles may do what on which keyring.
    pub config: KeydConfig,
    /// How callers' evidence is verified (collateral and VCEK sources).
    pub verify_options: VerifyOptions,
    /// The bound TCP listener to serve on.
    pub listener: TcpListener,
}

impl std::fmt::Debug for KeydServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeydServeOptions")
            .field("data_dir", &self.data_dir)
            .field("config", &self.config)
            .field("listener", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// The keystore directory of keyring `name` under `data_dir`.
pub fn keyring_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("keyrings").join(name)
}

/// Creates keyring `name` under `data_dir` (a new keystore sealed by `platform`) and returns
/// its primary KEK id. Refuses to overwrite an existing keyring.
pub fn create_keyring(
    data_dir: &Path,
    platform: Arc<dyn Platform>,
    name: &str,
) -> Result<String, KeydError> {
    validate_keyring_name(name)?;
    let dir = keyring_dir(data_dir, name);
    let ks_err = |source| KeydError::Keystore {
        name: name.to_string(),
        dir: dir.clone(),
        source,
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| KeydError::io(format!("creating {}", dir.display()), e))?;
    let store = Keystore::new(&dir, platform);
    let info = store.init().map_err(ks_err)?;
    Ok(info.primary().map(|k| k.id.clone()).unwrap_or_default())
}

/// What tonic's request extensions carry for every call: the attested peer.
#[derive(Debug, Clone)]
pub struct KeydConnectInfo {
    /// The peer's verified claims and granted role.
    pub peer: Arc<PeerIdentity>,
    /// The peer's TCP address.
    pub remote_addr: Option<SocketAddr>,
}

/// A TLS connection whose client passed attestation.
struct KeydConn {
    io: TlsStream<TcpStream>,
    info: KeydConnectInfo,
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
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for KeydConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// One served keyring.
struct KeyringSlot {
    name: String,
    access: KeyringAccess,
    store: Keystore,
    current: ArcSwap<Keyring>,
    /// Serialises rotations.
    rotate: tokio::sync::Mutex<()>,
}

struct KeydService {
    keyrings: HashMap<String, Arc<KeyringSlot>>,
}

fn load_keyrings(
    data_dir: &Path,
    platform: &Arc<dyn Platform>,
    config: &KeydConfig,
) -> Result<HashMap<String, Arc<KeyringSlot>>, KeydError> {
    let mut keyrings = HashMap::new();
    for (name, access) in &config.keyrings {
        let dir = keyring_dir(data_dir, name);
        let store = Keystore::new(&dir, platform.clone());
        if !store.exists() {
            return Err(KeydError::MissingKeyring {
                name: name.clone(),
                dir,
            });
        }
        let keyring = store.load().map_err(|source| KeydError::Keystore {
            name: name.clone(),
            dir: dir.clone(),
            source,
        })?;
        tracing::info!(keyring = %name, primary = keyring.primary_id(), keys = keyring.len(), "keyring loaded");
        keyrings.insert(
            name.clone(),
            Arc::new(KeyringSlot {
                name: name.clone(),
                access: access.clone(),
                store,
                current: ArcSwap::from_pointee(keyring),
                rotate: tokio::sync::Mutex::new(()),
            }),
        );
    }
    Ok(keyrings)
}

impl KeydService {
    /// Finds the keyring and checks that the caller may use `op` on it.
    fn authorize<T>(
        &self,
        request: &Request<T>,
        keyring: &str,
        op: Operation,
    ) -> Result<Arc<KeyringSlot>, Status> {
        let Some(info) = request.extensions().get::<KeydConnectInfo>() else {
            return Err(Status::unauthenticated(
                "the connection carries no attested peer identity",
            ));
        };
        if validate_keyring_name(keyring).is_err() {
            return Err(Status::invalid_argument(format!(
                "invalid keyring name {:?}: use 1 to 63 characters of a-z, 0-9 and '-'",
                keyring.chars().take(80).collect::<String>()
            )));
        }
        let Some(slot) = self.keyrings.get(keyring) else {
            return Err(Status::not_found(format!(
                "keyring {keyring:?} is not served by this keyd"
            )));
        };
        let role = &info.peer.role.name;
        if !slot.access.allows(op, role) {
            tracing::warn!(role = %role, keyring = %keyring, operation = %op, "permission denied");
            return Err(Status::permission_denied(format!(
                "role {role:?} may not {op} on keyring {keyring:?} (the keyd configuration does not list it under keyrings.{keyring}.{op})"
            )));
        }
        Ok(slot.clone())
    }
}

fn internal(context: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "{context}");
    Status::internal(format!("{context}: {e}"))
}

#[tonic::async_trait]
impl KeyService for KeydService {
    async fn wrap(
        &self,
        request: Request<pb::WrapRequest>,
    ) -> Result<Response<pb::WrapResponse>, Status> {
        let slot = self.authorize(&request, &request.get_ref().keyring, Operation::Wrap)?;
        let mut req = request.into_inner();
        let result = if req.plaintext.is_empty() {
            Err(Status::invalid_argument("plaintext is empty"))
        } else if req.plaintext.len() > MAX_PLAINTEXT_LEN {
            Err(Status::invalid_argument(format!(
                "plaintext is {} bytes; the limit is {MAX_PLAINTEXT_LEN}",
                req.plaintext.len()
            )))
        } else {
            let keyring = slot.current.load();
            match keyring.encrypt(&req.plaintext) {
                Ok(ciphertext) => Ok(Response::new(pb::WrapResponse {
                    ciphertext,
                    key_id: keyring.primary_id().to_string(),
                })),
                Err(e @ (EncryptError::Empty | EncryptError::TooLong(_))) => {
                    Err(Status::invalid_argument(e.to_string()))
                }
                Err(e) => Err(internal("wrap failed", e)),
            }
        };
        req.plaintext.zeroize();
        result
    }

    async fn unwrap(
        &self,
        request: Request<pb::UnwrapRequest>,
    ) -> Result<Response<pb::UnwrapResponse>, Status> {
        let slot = self.authorize(&request, &request.get_ref().keyring, Operation::Unwrap)?;
        let req = request.into_inner();
        if req.ciphertext.is_empty() {
            return Err(Status::invalid_argument("ciphertext is empty"));
        }
        if req.ciphertext.len() > MAX_CIPHERTEXT_LEN {
            return Err(Status::invalid_argument(format!(
                "ciphertext is {} bytes; the limit is {MAX_CIPHERTEXT_LEN}",
                req.ciphertext.len()
            )));
        }
        if req.key_id.len() > MAX_KEY_ID_LEN {
            return Err(Status::invalid_argument(format!(
                "key_id is {} bytes; the limit is {MAX_KEY_ID_LEN}",
                req.key_id.len()
            )));
        }
        let key_id = (!req.key_id.is_empty()).then_some(req.key_id.as_str());
        let keyring = slot.current.load();
        match keyring.decrypt(key_id, &req.ciphertext) {
            // The response owns a copy; the Zeroizing buffer is wiped on drop.
            Ok(plaintext) => Ok(Response::new(pb::UnwrapResponse {
                plaintext: plaintext.to_vec(),
            })),
            Err(e) => {
                tracing::warn!(keyring = %slot.name, error = %e, "unwrap refused");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let slot = self.authorize(&request, &request.get_ref().keyring, Operation::Status)?;
        let keyring = slot.current.load();
        Ok(Response::new(pb::StatusResponse {
            primary_key_id: keyring.primary_id().to_string(),
            keys: u32::try_from(keyring.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        let slot = self.authorize(&request, &request.get_ref().keyring, Operation::Rotate)?;
        let _guard = slot.rotate.lock().await;
        let worker = slot.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let info = worker.store.rotate()?;
            let keyring = worker.store.load()?;
            Ok::<_, coffer_keystore::KeystoreError>((info, keyring))
        })
        .await
        .map_err(|e| internal("rotate task failed", e))?;
        let (info, keyring) = outcome.map_err(|e| internal("rotate failed", e))?;
        slot.current.store(Arc::new(keyring));
        tracing::info!(keyring = %slot.name, key_id = %info.id, "keyring rotated");
        Ok(Response::new(pb::RotateResponse { key_id: info.id }))
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let slot = self.authorize(&request, &request.get_ref().keyring, Operation::List)?;
        let worker = slot.clone();
        let info = tokio::task::spawn_blocking(move || worker.store.info())
            .await
            .map_err(|e| internal("list task failed", e))?
            .map_err(|e| internal("reading the keystore failed", e))?;
        Ok(Response::new(pb::ListKeysResponse {
            keys: info
                .keys
                .into_iter()
                .map(|k| pb::KeyEntry {
                    key_id: k.id,
                    created: k.created,
                    primary: k.state == KeyState::Primary,
                })
                .collect(),
        }))
    }
}

/// Serves the key service on `options.listener` until `shutdown` completes.
///
/// Loads every configured keyring (a configured keyring without a keystore is an error), makes
/// an attested TLS certificate with the platform, and accepts only clients whose attestation the
/// policy grants a role; each RPC then checks the role against the keyd configuration.
pub async fn serve(
    options: KeydServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), KeydError> {
    let KeydServeOptions {
        data_dir,
        platform,
        policy,
        config,
        verify_options,
        listener,
    } = options;
    let keyrings = {
        let platform = platform.clone();
        tokio::task::spawn_blocking(move || load_keyrings(&data_dir, &platform, &config))
            .await
            .map_err(|e| KeydError::io("loading keyrings", io::Error::other(e)))??
    };
    let identity = coffer_ratls::attested_certificate(platform.as_ref())?;
    let verifier = Arc::new(AttestedVerifier::new(
        Arc::new(OfflineVerifier::new(verify_options)),
        policy,
    ));
    let mut tls = coffer_ratls::server_config(&identity, verifier.clone())?;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<KeydConn, io::Error>>(ACCEPT_QUEUE);
    let accept_task = tokio::spawn(accept_loop(listener, acceptor, verifier, tx));

    let service = KeydService { keyrings };
    let result = tonic::transport::Server::builder()
        .add_service(KeyServiceServer::new(service))
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
        .await;
    accept_task.abort();
    result.map_err(KeydError::from)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    verifier: Arc<AttestedVerifier>,
    tx: tokio::sync::mpsc::Sender<Result<KeydConn, io::Error>>,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let verifier = verifier.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(peer = %remote, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(peer = %remote, "TLS handshake timed out");
                    return;
                }
            };
            let Some(peer) = verifier.peer(tls.get_ref().1.peer_certificates()) else {
                tracing::warn!(peer = %remote, "no attested identity after the handshake; closing");
                return;
            };
            tracing::debug!(peer = %remote, role = %peer.role, "attested client connected");
            let conn = KeydConn {
                io: tls,
                info: KeydConnectInfo {
                    peer: Arc::new(peer),
                    remote_addr: Some(remote),
                },
            };
            let _ = tx.send(Ok(conn)).await;
        });
    }
}

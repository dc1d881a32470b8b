//! `coffer kms bridge`'s keys: the plugin inside an SGX enclave, reached over attested TLS on
//! the TCP address it serves with `kms serve --listen-tcp`.
//!
//! Every call kube-apiserver makes on the bridge's unix socket (after the bridge's caller
//! check) becomes the same KMS call to the enclave, with the generated v2 / v1beta1 clients.
//! The enclave's certificate must carry evidence that satisfies the bridge's policy: a
//! substituted enclave (another signer or measurement, a debug enclave, a simulation) gets no
//! call, and every call then fails UNAVAILABLE with the reason. Each call has one deadline
//! covering connect, handshake and RPC, below the API server's 3 s. Connections are made on
//! the first call and again after the enclave restarts; nothing needs restarting here.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_proto::{v1beta1, v2};
use coffer_ratls::{AttestedVerifier, OfflineVerifier};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};
use zeroize::Zeroizing;

use crate::remote::API_SERVER_TIMEOUT;

type V2Client = v2::key_management_service_client::KeyManagementServiceClient<Channel>;
type V1Client = v1beta1::key_management_service_client::KeyManagementServiceClient<Channel>;

/// HTTP/2 keep-alive ping interval: finds a connection whose enclave vanished without closing it.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Where the enclave plugin is and how it is trusted.
#[derive(Clone)]
pub struct EnclaveOptions {
    /// The enclave plugin's `--listen-tcp` address.
    pub addr: SocketAddr,
    /// The policy the enclave's evidence must satisfy (any role it grants will do).
    pub policy: Arc<Policy>,
    /// Collateral and verification time for the enclave's evidence.
    pub verify_options: VerifyOptions,
    /// Deadline of every forwarded call, covering connect, handshake and RPC.
    pub timeout: Duration,
}

impl std::fmt::Debug for EnclaveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnclaveOptions")
            .field("addr", &self.addr)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnclaveError {
    /// The deadline would not leave the bridge time to answer the API server first.
    #[error("--enclave-timeout {}ms is not below the API server's {}s per-call timeout: the bridge must answer first (use e.g. 2s)", .0.as_millis(), API_SERVER_TIMEOUT.as_secs())]
    Timeout(Duration),
    /// The TLS configuration could not be built.
    #[error("attested TLS client for the enclave: {0}")]
    Tls(#[from] coffer_ratls::RatlsError),
    /// The address is not usable as an endpoint.
    #[error("--enclave {0}: {1}")]
    Endpoint(SocketAddr, tonic::transport::Error),
}

/// The forwarding client: one lazily connected HTTP/2 connection to the enclave plugin.
pub struct EnclaveKeys {
    addr: SocketAddr,
    v2: V2Client,
    v1: V1Client,
    timeout: Duration,
    /// Why the last connection attempt failed, until one succeeds: what calls report.
    last_failure: Arc<Mutex<Option<String>>>,
}

impl EnclaveKeys {
    /// Prepares the connection (nothing connects until the first call, so the bridge can start
    /// before the enclave). Must be called inside a tokio runtime.
    pub fn new(options: EnclaveOptions) -> Result<Self, EnclaveError> {
        if options.timeout >= API_SERVER_TIMEOUT {
            return Err(EnclaveError::Timeout(options.timeout));
        }
        let verifier = Arc::new(AttestedVerifier::new(
            Arc::new(OfflineVerifier::new(options.verify_options)),
            options.policy,
        ));
        let mut tls = coffer_ratls::client_config_without_identity(verifier)?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        // Every connection is a full handshake that checks the enclave's evidence again.
        tls.resumption = rustls::client::Resumption::disabled();
        let connector = TlsConnector::from(Arc::new(tls));
        let addr = options.addr;
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| EnclaveError::Endpoint(addr, e))?
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(options.timeout)
            .keep_alive_while_idle(true);
        // The handshake gives up a little before the call deadline, so that the call that
        // started it can say why.
        let connect_timeout = options.timeout.mul_f64(0.9);
        let last_failure = Arc::new(Mutex::new(None));
        let failures = last_failure.clone();
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let (connector, failures) = (connector.clone(), failures.clone());
            async move {
                let attempt = async {
                    let tcp = TcpStream::connect(addr).await?;
                    let _ = tcp.set_nodelay(true);
                    connector
                        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                        .await
                };
                let result = match tokio::time::timeout(connect_timeout, attempt).await {
                    Ok(Ok(tls)) => Ok(TokioIo::new(tls)),
                    Ok(Err(e)) => Err(describe_connect_failure(addr, &e)),
                    Err(_) => Err(format!(
                        "the enclave plugin at {addr} did not complete the attested TLS handshake within {} ms",
                        connect_timeout.as_millis()
                    )),
                };
                let mut last = failures.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok(io) => {
                        if last.take().is_some() {
                            tracing::info!(enclave = %addr, "connected to the enclave plugin again");
                        }
                        Ok(io)
                    }
                    Err(reason) => {
                        if last.as_deref() != Some(reason.as_str()) {
                            tracing::warn!(enclave = %addr, error = %reason, "cannot connect to the enclave plugin; retrying on the next call");
                        }
                        *last = Some(reason.clone());
                        Err(io::Error::other(reason))
                    }
                }
            }
        }));
        Ok(EnclaveKeys {
            addr,
            v2: V2Client::new(channel.clone()),
            v1: V1Client::new(channel),
            timeout: options.timeout,
            last_failure,
        })
    }

    /// The enclave plugin's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Encrypts in the enclave; returns the ciphertext and the KEK id.
    pub async fn encrypt(&self, plaintext: &[u8]) -> Result<(Vec<u8>, String), Status> {
        let request = v2::EncryptRequest {
            plaintext: plaintext.to_vec(),
            uid: String::new(),
        };
        let mut client = self.v2.clone();
        let response = self.call(client.encrypt(request)).await;
        response.map(|r| (r.ciphertext, r.key_id))
    }

    /// Decrypts in the enclave: with `key_id` over v2, without it (v1beta1 callers) over v1beta1.
    pub async fn decrypt(
        &self,
        key_id: Option<&str>,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Status> {
        match key_id {
            Some(key_id) => {
                let request = v2::DecryptRequest {
                    ciphertext: ciphertext.to_vec(),
                    uid: String::new(),
                    key_id: key_id.to_string(),
                    annotations: Default::default(),
                };
                let mut client = self.v2.clone();
                let response = self.call(client.decrypt(request)).await;
                response.map(|r| Zeroizing::new(r.plaintext))
            }
            None => {
                let request = v1beta1::DecryptRequest {
                    version: crate::service::V1BETA1.to_string(),
                    cipher: ciphertext.to_vec(),
                };
                let mut client = self.v1.clone();
                let response = self.call(client.decrypt(request)).await;
                response.map(|r| Zeroizing::new(r.plain))
            }
        }
    }

    /// The enclave's primary KEK id, or UNAVAILABLE with the reason.
    pub async fn status(&self) -> Result<String, Status> {
        let mut client = self.v2.clone();
        let response = self.call(client.status(v2::StatusRequest {})).await?;
        if response.healthz != "ok" {
            return Err(Status::unavailable(format!(
                "coffer kms bridge: the enclave plugin at {} reports healthz {:?}",
                self.addr, response.healthz
            )));
        }
        Ok(response.key_id)
    }

    /// For `/healthz`: the last connection failure, if the enclave has not been reached since.
    pub fn health(&self) -> Result<(), String> {
        match self.failure() {
            Some(reason) => Err(reason),
            None => Ok(()),
        }
    }

    fn failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn call<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.classify(status)),
            Err(_) => Err(Status::unavailable(format!(
                "coffer kms bridge: the enclave plugin at {} did not answer within {} ms (--enclave-timeout)",
                self.addr,
                self.timeout.as_millis()
            ))),
        }
    }

    /// The enclave's own answers pass through unchanged; transport failures become UNAVAILABLE
    /// with what the last connection attempt found (unreachable, or not trusted and why).
    fn classify(&self, status: Status) -> Status {
        // tonic reports transport failures as UNAVAILABLE or CANCELLED, or with a source; an
        // UNAVAILABLE from the enclave itself keeps its message below.
        let transport = std::error::Error::source(&status).is_some()
            || matches!(status.code(), Code::Unavailable | Code::Cancelled);
        if !transport {
            return status;
        }
        let reason = self.failure().unwrap_or_else(|| {
            format!(
                "the enclave plugin at {}: {}",
                self.addr,
                error_chain(&status)
            )
        });
        Status::unavailable(format!("coffer kms bridge: {reason}"))
    }
}

/// What a failed connection attempt means for the operator.
fn describe_connect_failure(addr: SocketAddr, e: &io::Error) -> String {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(rustls::Error::InvalidCertificate(why)) => format!(
            "the enclave at {addr} is not trusted (substituted or changed enclave?): its attested certificate was refused: {}",
            coffer_ratls::describe_certificate_error(why)
        ),
        Some(other) => format!(
            "attested TLS with the enclave plugin at {addr} failed: {}",
            coffer_ratls::describe_tls_error(other)
        ),
        None => format!(
            "the enclave plugin at {addr} is unreachable: {}",
            coffer_ratls::describe_io_error(e)
        ),
    }
}

fn error_chain(status: &Status) -> String {
    coffer_keyd_client::error_chain(
        status.message().to_string(),
        std::error::Error::source(status),
    )
}

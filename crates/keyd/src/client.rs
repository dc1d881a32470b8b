//! A key service client over mutual attested TLS.

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::Arc;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_platform::Platform;
use coffer_ratls::{AttestedVerifier, OfflineVerifier};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use zeroize::Zeroizing;

use crate::pb;
use crate::pb::key_service_client::KeyServiceClient;
use crate::KeydError;

/// How a client proves itself to keyd and checks keyd's attestation.
pub struct KeydClientOptions {
    /// The client's TEE platform: attests the client's TLS certificate.
    pub platform: Arc<dyn Platform>,
    /// The policy keyd's evidence must satisfy (any role it grants is accepted).
    pub policy: Arc<Policy>,
    /// How keyd's evidence is verified.
    pub verify_options: VerifyOptions,
}

impl std::fmt::Debug for KeydClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeydClientOptions").finish_non_exhaustive()
    }
}

/// A connected key service client.
#[derive(Debug, Clone)]
pub struct KeydClient {
    inner: KeyServiceClient<Channel>,
}

/// The error text and all its causes, joined (repeated texts are dropped).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    error_chain(e.to_string(), e.source())
}

/// `first`, then the text of `source` and each of its causes, joined with ": " (repeated
/// texts are dropped).
pub fn error_chain(first: String, source: Option<&(dyn std::error::Error + 'static)>) -> String {
    let mut parts: Vec<String> = vec![first];
    let mut next = source;
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// Whether an error says that the peer sent a TLS alert (it refused us during the handshake).
fn is_tls_refusal(detail: &str) -> bool {
    detail.contains("received fatal alert")
}

fn map_status(status: tonic::Status) -> KeydError {
    let mut detail = status.message().to_string();
    if let Some(source) = status.source() {
        let causes = chain(source);
        if causes.starts_with(&detail) {
            detail = causes;
        } else {
            detail = format!("{detail}: {causes}");
        }
    }
    if is_tls_refusal(&detail) {
        KeydError::RefusedByServer { detail }
    } else {
        KeydError::Rpc(Box::new(status))
    }
}

impl KeydClient {
    /// Connects to keyd at `addr` over mutual attested TLS.
    pub async fn connect(addr: SocketAddr, options: KeydClientOptions) -> Result<Self, KeydError> {
        let identity = coffer_ratls::attested_certificate(options.platform.as_ref())?;
        let verifier = Arc::new(AttestedVerifier::new(
            Arc::new(OfflineVerifier::new(options.verify_options)),
            options.policy,
        ));
        let mut tls = coffer_ratls::client_config(&identity, verifier)?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = TlsConnector::from(Arc::new(tls));
        let endpoint =
            Endpoint::from_shared(format!("http://{addr}")).map_err(|e| KeydError::Connect {
                addr,
                detail: chain(&e),
            })?;
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let connector = connector.clone();
                async move {
                    let tcp = TcpStream::connect(addr).await?;
                    let _ = tcp.set_nodelay(true);
                    let tls = connector
                        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                        .await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await
            .map_err(|e| {
                let detail = chain(&e);
                if is_tls_refusal(&detail) {
                    KeydError::RefusedByServer { detail }
                } else {
                    KeydError::Connect { addr, detail }
                }
            })?;
        Ok(KeydClient {
            inner: KeyServiceClient::new(channel),
        })
    }

    /// Encrypts `plaintext` (at most 512 bytes) with keyring `keyring`'s primary KEK; returns
    /// the ciphertext and the KEK id.
    pub async fn wrap(
        &mut self,
        keyring: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, String), KeydError> {
        let request = pb::WrapRequest {
            keyring: keyring.to_string(),
            plaintext: plaintext.to_vec(),
        };
        let response = self.inner.wrap(request).await.map_err(map_status)?;
        let response = response.into_inner();
        Ok((response.ciphertext, response.key_id))
    }

    /// Decrypts `ciphertext` with keyring `keyring`. With `key_id`, the ciphertext must have
    /// been made with that KEK.
    pub async fn unwrap(
        &mut self,
        keyring: &str,
        key_id: Option<&str>,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeydError> {
        let request = pb::UnwrapRequest {
            keyring: keyring.to_string(),
            key_id: key_id.unwrap_or_default().to_string(),
            ciphertext: ciphertext.to_vec(),
        };
        let response = self.inner.unwrap(request).await.map_err(map_status)?;
        Ok(Zeroizing::new(response.into_inner().plaintext))
    }

    /// The keyring's primary KEK id and number of KEKs.
    pub async fn status(&mut self, keyring: &str) -> Result<(String, u32), KeydError> {
        let request = pb::StatusRequest {
            keyring: keyring.to_string(),
        };
        let response = self.inner.status(request).await.map_err(map_status)?;
        let response = response.into_inner();
        Ok((response.primary_key_id, response.keys))
    }

    /// Rotates the keyring; returns the new primary KEK id.
    pub async fn rotate(&mut self, keyring: &str) -> Result<String, KeydError> {
        let request = pb::RotateRequest {
            keyring: keyring.to_string(),
        };
        let response = self.inner.rotate(request).await.map_err(map_status)?;
        Ok(response.into_inner().key_id)
    }

    /// Public facts about the keyring's KEKs.
    pub async fn list_keys(&mut self, keyring: &str) -> Result<Vec<pb::KeyEntry>, KeydError> {
        let request = pb::ListKeysRequest {
            keyring: keyring.to_string(),
        };
        let response = self.inner.list_keys(request).await.map_err(map_status)?;
        Ok(response.into_inner().keys)
    }
}

//! A single connection to keyd: over mutual attested TLS for callers in a TEE, or over
//! server-only attested TLS for a workstation, which has no evidence to present.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_platform::Platform;
use coffer_ratls::{AttestedVerifier, OfflineVerifier};
use coffer_sealed::Location;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::Code;
use zeroize::{Zeroize, Zeroizing};

use crate::error::chain;
use crate::handshake::{Failure, FailureKind};
use crate::pb;
use crate::pb::key_service_client::KeyServiceClient;
use crate::{
    validate_keyring_name, ClientError, KeydAddr, MAX_UNSEAL_BATCH_BYTES, MAX_UNSEAL_BATCH_ITEMS,
};

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
    addr: String,
    /// The limit on connecting and on each call; `None` waits as long as the OS does.
    timeout: Option<Duration>,
}

/// Whether an error says that the peer sent a TLS alert (it refused us during the handshake).
fn is_tls_refusal(detail: &str) -> bool {
    detail.contains("received fatal alert")
}

fn map_status(status: tonic::Status, rpc: &'static str) -> ClientError {
    if status.code() == Code::Unimplemented && std::error::Error::source(&status).is_none() {
        return ClientError::Unsupported {
            rpc,
            detail: status.message().to_string(),
        };
    }
    let mut detail = status.message().to_string();
    if let Some(source) = std::error::Error::source(&status) {
        let causes = chain(source);
        if causes.starts_with(&detail) {
            detail = causes;
        } else {
            detail = format!("{detail}: {causes}");
        }
    }
    if is_tls_refusal(&detail) {
        ClientError::RefusedByServer { detail }
    } else {
        ClientError::Rpc(Box::new(status))
    }
}

/// Runs `fut`, or gives up with [`ClientError::TimedOut`] (naming `what` at `addr`) once
/// `timeout` has passed.
async fn within<T>(
    timeout: Option<Duration>,
    addr: &str,
    what: &'static str,
    fut: impl Future<Output = T>,
) -> Result<T, ClientError> {
    let Some(after) = timeout else {
        return Ok(fut.await);
    };
    tokio::time::timeout(after, fut)
        .await
        .map_err(|_| ClientError::TimedOut {
            addr: addr.to_string(),
            what,
            after,
        })
}

/// Runs the call `rpc` within `timeout`, its error status turned into a [`ClientError`].
async fn call<T>(
    timeout: Option<Duration>,
    addr: &str,
    rpc: &'static str,
    fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, ClientError> {
    within(timeout, addr, rpc, fut)
        .await?
        .map_err(|s| map_status(s, rpc))
}

/// Refuses a sealed value longer than any keyd accepts before it is sent.
fn check_sealed_len(sealed: &str) -> Result<(), ClientError> {
    if sealed.len() > coffer_sealed::MAX_SEALED_TEXT_LEN {
        return Err(ClientError::TooLarge {
            what: "sealed value",
            len: sealed.len(),
            limit: coffer_sealed::MAX_SEALED_TEXT_LEN,
        });
    }
    Ok(())
}

impl KeydClient {
    /// Connects to keyd at `addr` (an IP address or a host name, resolved now) over mutual
    /// attested TLS: this client presents a certificate attested by `options.platform` and
    /// holds keyd's to `options.policy`.
    pub async fn connect(
        addr: impl Into<KeydAddr>,
        options: KeydClientOptions,
    ) -> Result<Self, ClientError> {
        Self::connect_attested(addr.into(), options, None).await
    }

    /// Like [`connect`](Self::connect), but gives up with [`ClientError::TimedOut`] when the
    /// TCP connection and the TLS and HTTP/2 handshakes take longer than `timeout`, and holds
    /// every call on the client to the same limit: a keyd behind a firewall that drops packets,
    /// or a port that accepts but never speaks TLS, fails fast instead of hanging.
    pub async fn connect_within(
        addr: impl Into<KeydAddr>,
        options: KeydClientOptions,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::connect_attested(addr.into(), options, Some(timeout)).await
    }

    async fn connect_attested(
        addr: KeydAddr,
        options: KeydClientOptions,
        timeout: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let identity = coffer_ratls::attested_certificate(options.platform.as_ref())?;
        let verifier = Arc::new(AttestedVerifier::new(
            Arc::new(OfflineVerifier::new(options.verify_options)),
            options.policy,
        ));
        let tls = coffer_ratls::client_config(&identity, verifier)?;
        Self::open(addr, tls, timeout).await
    }

    /// Connects to keyd at `addr` from outside any TEE (a workstation): TLS 1.3 without a
    /// client certificate, keyd's attested certificate still verified with `verify_options` and
    /// held to `server_policy`. keyd serves such a caller only what it serves without
    /// attestation: [`key_bundle`](Self::key_bundle) and [`reseal`](Self::reseal).
    pub async fn connect_unattested(
        addr: impl Into<KeydAddr>,
        server_policy: Arc<Policy>,
        verify_options: VerifyOptions,
    ) -> Result<Self, ClientError> {
        Self::unattested(addr.into(), server_policy, verify_options, None).await
    }

    /// Like [`connect_unattested`](Self::connect_unattested), with the limits of
    /// [`connect_within`](Self::connect_within) on connecting and on every call.
    pub async fn connect_unattested_within(
        addr: impl Into<KeydAddr>,
        server_policy: Arc<Policy>,
        verify_options: VerifyOptions,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::unattested(addr.into(), server_policy, verify_options, Some(timeout)).await
    }

    async fn unattested(
        addr: KeydAddr,
        server_policy: Arc<Policy>,
        verify_options: VerifyOptions,
        timeout: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let verifier = Arc::new(AttestedVerifier::new(
            Arc::new(OfflineVerifier::new(verify_options)),
            server_policy,
        ));
        let tls = coffer_ratls::client_config_without_identity(verifier)?;
        Self::open(addr, tls, timeout).await
    }

    async fn open(
        addr: KeydAddr,
        tls: rustls::ClientConfig,
        timeout: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let addr_text = addr.to_string();
        let inner = within(
            timeout,
            &addr_text,
            "TCP connect and TLS handshake",
            Self::handshake(addr, tls, &addr_text),
        )
        .await??;
        Ok(KeydClient {
            inner,
            addr: addr_text,
            timeout,
        })
    }

    async fn handshake(
        addr: KeydAddr,
        mut tls: rustls::ClientConfig,
        addr_text: &str,
    ) -> Result<KeyServiceClient<Channel>, ClientError> {
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let connector = TlsConnector::from(Arc::new(tls));
        let endpoint = Endpoint::from_shared(format!("http://{addr_text}")).map_err(|e| {
            ClientError::Connect {
                addr: addr_text.to_string(),
                detail: chain(&e),
            }
        })?;
        // The connector's handshake failure, classified before tonic wraps it in its own error.
        let failed: Arc<Mutex<Option<Failure>>> = Arc::default();
        let failed_in_connector = failed.clone();
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let (connector, addr, failed) =
                    (connector.clone(), addr.clone(), failed_in_connector.clone());
                async move {
                    let tcp = TcpStream::connect((addr.host(), addr.port())).await?;
                    let _ = tcp.set_nodelay(true);
                    // keyd's certificate is attested, not issued for a name: the server name
                    // only fills SNI, and is the address actually reached.
                    let ip = tcp.peer_addr()?.ip();
                    let tls = connector
                        .connect(ServerName::IpAddress(ip.into()), tcp)
                        .await
                        .inspect_err(|e| {
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) =
                                Some(Failure::from_io(e));
                        })?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await
            .map_err(|e| {
                let failure = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
                match failure {
                    Some(Failure {
                        kind: FailureKind::Untrusted,
                        detail,
                    }) => ClientError::Untrusted {
                        addr: addr_text.to_string(),
                        detail,
                    },
                    Some(Failure {
                        kind: FailureKind::Refused,
                        detail,
                    }) => ClientError::RefusedByServer { detail },
                    _ => {
                        let detail = chain(&e);
                        if is_tls_refusal(&detail) {
                            ClientError::RefusedByServer { detail }
                        } else {
                            ClientError::Connect {
                                addr: addr_text.to_string(),
                                detail,
                            }
                        }
                    }
                }
            })?;
        Ok(KeyServiceClient::new(channel))
    }

    /// keyd's address, as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Encrypts `plaintext` (at most 512 bytes) with keyring `keyring`'s primary KEK; returns
    /// the ciphertext and the KEK id.
    pub async fn wrap(
        &mut self,
        keyring: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, String), ClientError> {
        let request = pb::WrapRequest {
            keyring: keyring.to_string(),
            plaintext: plaintext.to_vec(),
        };
        let response = call(self.timeout, &self.addr, "Wrap", self.inner.wrap(request)).await?;
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
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let request = pb::UnwrapRequest {
            keyring: keyring.to_string(),
            key_id: key_id.unwrap_or_default().to_string(),
            ciphertext: ciphertext.to_vec(),
        };
        let response = call(
            self.timeout,
            &self.addr,
            "Unwrap",
            self.inner.unwrap(request),
        )
        .await?;
        Ok(Zeroizing::new(response.into_inner().plaintext))
    }

    /// The keyring's primary KEK id and number of KEKs.
    pub async fn status(&mut self, keyring: &str) -> Result<(String, u32), ClientError> {
        let request = pb::StatusRequest {
            keyring: keyring.to_string(),
        };
        let response = call(
            self.timeout,
            &self.addr,
            "Status",
            self.inner.status(request),
        )
        .await?;
        let response = response.into_inner();
        Ok((response.primary_key_id, response.keys))
    }

    /// Rotates the keyring; returns the new primary KEK id.
    pub async fn rotate(&mut self, keyring: &str) -> Result<String, ClientError> {
        let request = pb::RotateRequest {
            keyring: keyring.to_string(),
        };
        let response = call(
            self.timeout,
            &self.addr,
            "Rotate",
            self.inner.rotate(request),
        )
        .await?;
        Ok(response.into_inner().key_id)
    }

    /// Public facts about the keyring's KEKs.
    pub async fn list_keys(&mut self, keyring: &str) -> Result<Vec<pb::KeyEntry>, ClientError> {
        let request = pb::ListKeysRequest {
            keyring: keyring.to_string(),
        };
        let response = call(
            self.timeout,
            &self.addr,
            "ListKeys",
            self.inner.list_keys(request),
        )
        .await?;
        Ok(response.into_inner().keys)
    }

    /// The keyring's public key bundle, as keyd sent it (JSON, see
    /// `coffer_sealed::bundle::KeyBundle`). Unverified: the caller checks its evidence against
    /// its policy before sealing anything to it.
    pub async fn key_bundle(&mut self, keyring: &str) -> Result<Vec<u8>, ClientError> {
        validate_keyring_name(keyring)?;
        let request = pb::GetKeyBundleRequest {
            keyring: keyring.to_string(),
        };
        let response = call(
            self.timeout,
            &self.addr,
            "GetKeyBundle",
            self.inner.get_key_bundle(request),
        )
        .await?;
        let bundle = response.into_inner().bundle;
        if bundle.is_empty() {
            return Err(ClientError::MalformedAnswer {
                rpc: "GetKeyBundle",
                detail: "the bundle is empty".into(),
            });
        }
        Ok(bundle)
    }

    /// Re-seals `sealed` (`coffer.v1.…`) to keyring `keyring`'s newest sealing key inside keyd,
    /// with the same binding; returns the new sealed value and the sealing key id it is sealed
    /// to. Nothing but ciphertext crosses the connection.
    pub async fn reseal(
        &mut self,
        keyring: &str,
        sealed: &str,
    ) -> Result<(String, String), ClientError> {
        validate_keyring_name(keyring)?;
        check_sealed_len(sealed)?;
        let request = pb::ResealRequest {
            keyring: keyring.to_string(),
            sealed: sealed.to_string(),
        };
        let response = call(
            self.timeout,
            &self.addr,
            "Reseal",
            self.inner.reseal(request),
        )
        .await?
        .into_inner();
        if !response.sealed.starts_with(coffer_sealed::PREFIX) || response.key_id.is_empty() {
            return Err(ClientError::MalformedAnswer {
                rpc: "Reseal",
                detail: format!(
                    "expected a {}… value and a sealing key id",
                    coffer_sealed::PREFIX
                ),
            });
        }
        Ok((response.sealed, response.key_id))
    }

    /// Opens `sealed` (`coffer.v1.…`), found at `location`, with keyring `keyring`. keyd opens
    /// it only for an attested caller whose role the keyring's unseal grants allow for the
    /// value's binding, and only when `location` satisfies that binding.
    pub async fn unseal(
        &mut self,
        keyring: &str,
        sealed: &str,
        location: &Location,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        validate_keyring_name(keyring)?;
        check_sealed_len(sealed)?;
        let request = pb::UnsealRequest {
            keyring: keyring.to_string(),
            sealed: sealed.to_string(),
            location: Some(pb_location(location)),
        };
        let response = call(
            self.timeout,
            &self.addr,
            "Unseal",
            self.inner.unseal(request),
        )
        .await?;
        Ok(Zeroizing::new(response.into_inner().plaintext))
    }
}

/// What [`KeydClient::join_replica`] receives: keyd's root secret and the public facts of its
/// root file. The root is zeroized on drop and `Debug` never shows it.
pub struct ReplicaRoot {
    /// The root secret.
    pub root: Zeroizing<[u8; 32]>,
    /// The keyd instance id (`keyd-…`).
    pub instance_id: String,
    /// When the root was created (RFC 3339).
    pub created: String,
    /// The root check keyd's root file records (hex).
    pub root_check: String,
    /// The recovery split made at init, if any.
    pub recovery: Option<pb::ReplicaRecoveryInfo>,
}

impl std::fmt::Debug for ReplicaRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaRoot")
            .field("instance_id", &self.instance_id)
            .field("created", &self.created)
            .field("root", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl KeydClient {
    /// Asks keyd for its root secret, as a new replica of it (`JoinReplica`); with
    /// `instance_id`, a keyd of another instance refuses. keyd answers only a caller its policy
    /// grants the `keyd-peer` role, on its own kind of TEE; hold keyd to the same role when
    /// connecting (`Policy::only_role`), or the root may come from a keyd that is not a peer.
    pub async fn join_replica(
        &mut self,
        instance_id: Option<&str>,
    ) -> Result<ReplicaRoot, ClientError> {
        let request = pb::JoinReplicaRequest {
            instance_id: instance_id.unwrap_or_default().to_string(),
        };
        let response = call(
            self.timeout,
            &self.addr,
            "JoinReplica",
            self.inner.join_replica(request),
        )
        .await?;
        let mut response = response.into_inner();
        let root = <[u8; 32]>::try_from(response.root.as_slice()).map(Zeroizing::new);
        response.root.zeroize();
        let root = root.map_err(|_| ClientError::MalformedAnswer {
            rpc: "JoinReplica",
            detail: "the root is not 32 bytes".to_string(),
        })?;
        if response.instance_id.is_empty() || response.root_check.is_empty() {
            return Err(ClientError::MalformedAnswer {
                rpc: "JoinReplica",
                detail: "the instance id or root check is missing".to_string(),
            });
        }
        Ok(ReplicaRoot {
            root,
            instance_id: response.instance_id,
            created: response.created,
            root_check: response.root_check,
            recovery: response.recovery,
        })
    }
}

/// Why keyd refused one item of an [`unseal_batch`](KeydClient::unseal_batch): the gRPC code
/// and the reason `Unseal` would have given for that value alone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct ItemRefusal {
    /// The gRPC code keyd gave the item (e.g. `PermissionDenied` for a grant or binding that
    /// does not allow it, `InvalidArgument` for a tampered value).
    pub code: Code,
    /// keyd's reason.
    pub message: String,
}

/// Splits `items` into runs that each fit one `UnsealBatch` call: at most
/// [`MAX_UNSEAL_BATCH_ITEMS`] items and [`MAX_UNSEAL_BATCH_BYTES`] of sealed text (a longer
/// value goes alone).
fn unseal_chunks(items: &[(&str, &Location)]) -> Vec<std::ops::Range<usize>> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (sealed, _)) in items.iter().enumerate() {
        let full = i - start == MAX_UNSEAL_BATCH_ITEMS
            || (i > start && bytes + sealed.len() > MAX_UNSEAL_BATCH_BYTES);
        if full {
            chunks.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes += sealed.len();
    }
    if start < items.len() {
        chunks.push(start..items.len());
    }
    chunks
}

impl KeydClient {
    /// Opens several sealed values of keyring `keyring`, each found at its location, in as few
    /// `UnsealBatch` calls as the limits allow (usually one). The outer error is a call's (keyd
    /// unreachable, the caller refused outright); each item then succeeds or carries keyd's
    /// reason on its own, in the order given. Plaintexts are zeroized when dropped.
    pub async fn unseal_batch(
        &mut self,
        keyring: &str,
        items: &[(&str, &Location)],
    ) -> Result<Vec<Result<Zeroizing<Vec<u8>>, ItemRefusal>>, ClientError> {
        validate_keyring_name(keyring)?;
        for (sealed, _) in items {
            check_sealed_len(sealed)?;
        }
        let mut out = Vec::with_capacity(items.len());
        for range in unseal_chunks(items) {
            let chunk = &items[range];
            let request = pb::UnsealBatchRequest {
                keyring: keyring.to_string(),
                items: chunk
                    .iter()
                    .map(|(sealed, location)| pb::UnsealItem {
                        sealed: sealed.to_string(),
                        location: Some(pb_location(location)),
                    })
                    .collect(),
            };
            let response = call(
                self.timeout,
                &self.addr,
                "UnsealBatch",
                self.inner.unseal_batch(request),
            )
            .await?
            .into_inner();
            if response.results.len() != chunk.len() {
                return Err(ClientError::MalformedAnswer {
                    rpc: "UnsealBatch",
                    detail: format!(
                        "{} results for {} items",
                        response.results.len(),
                        chunk.len()
                    ),
                });
            }
            for result in response.results {
                out.push(match result.result {
                    Some(pb::unseal_result::Result::Plaintext(p)) => Ok(Zeroizing::new(p)),
                    Some(pb::unseal_result::Result::Error(e)) => Err(ItemRefusal {
                        code: Code::from(e.code as i32),
                        message: e.message,
                    }),
                    None => {
                        return Err(ClientError::MalformedAnswer {
                            rpc: "UnsealBatch",
                            detail: "an empty result".to_string(),
                        })
                    }
                });
            }
        }
        Ok(out)
    }
}

fn pb_location(location: &Location) -> pb::SecretLocation {
    pb::SecretLocation {
        namespace: location.namespace.clone(),
        secret: location.secret.clone(),
        key: location.key.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_that_never_answers_times_out_naming_the_rpc() {
        let err = within(
            Some(Duration::from_millis(1)),
            "127.0.0.1:1",
            "Reseal",
            std::future::pending::<()>(),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, ClientError::TimedOut { what: "Reseal", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("keyd at 127.0.0.1:1"), "{err}");
    }

    fn at() -> Location {
        Location {
            namespace: "ns".into(),
            secret: "s".into(),
            key: "k".into(),
        }
    }

    #[test]
    fn unseal_chunks_respect_item_and_byte_limits() {
        let loc = at();
        let small = "x".repeat(10);
        let items: Vec<(&str, &Location)> = (0..MAX_UNSEAL_BATCH_ITEMS * 2 + 1)
            .map(|_| (small.as_str(), &loc))
            .collect();
        let chunks = unseal_chunks(&items);
        assert_eq!(
            chunks,
            vec![
                0..MAX_UNSEAL_BATCH_ITEMS,
                MAX_UNSEAL_BATCH_ITEMS..2 * MAX_UNSEAL_BATCH_ITEMS,
                2 * MAX_UNSEAL_BATCH_ITEMS..2 * MAX_UNSEAL_BATCH_ITEMS + 1
            ]
        );
        let big = "y".repeat(MAX_UNSEAL_BATCH_BYTES - 5);
        let items = vec![
            (small.as_str(), &loc),
            (big.as_str(), &loc),
            (small.as_str(), &loc),
        ];
        assert_eq!(unseal_chunks(&items), vec![0..1, 1..2, 2..3]);
        assert!(unseal_chunks(&[]).is_empty());
    }
}

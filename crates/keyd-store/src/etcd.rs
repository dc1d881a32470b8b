//! The etcd v3 backend of [`StateStore`], over etcd's gRPC API.
//!
//! Writes are single-key transactions comparing the key's revision, so two replicas writing
//! the same record cannot both succeed. Connections are lazy and balanced over every endpoint:
//! an etcd outage fails calls with [`StoreError::Unavailable`] and the next call after etcd is
//! back succeeds, with no restart.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

use crate::pb::auth_client::AuthClient;
use crate::pb::compare::{CompareResult, CompareTarget, TargetUnion};
use crate::pb::kv_client::KvClient;
use crate::pb::watch_client::WatchClient;
use crate::pb::{self, request_op, response_op};
use crate::store::{prefix_end, Entry, Expect, Listing, StateStore, Swap, WatchEvent, Watcher};
use crate::StoreError;

/// TLS to etcd: the CA that signed etcd's server certificates and, when etcd requires client
/// certificates (`--client-cert-auth`), this client's certificate and key.
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM CA certificate(s).
    pub ca_pem: Vec<u8>,
    /// PEM client certificate chain and private key.
    pub client: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_cert", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

/// How to reach etcd.
#[derive(Clone)]
pub struct EtcdOptions {
    /// `host:port` or `http(s)://host:port`, one per cluster member.
    pub endpoints: Vec<String>,
    /// TLS; without it the endpoints are plain HTTP/2 (loopback or a private network only).
    pub tls: Option<EtcdTls>,
    /// etcd user for `--auth` clusters.
    pub user: Option<String>,
    /// That user's password.
    pub password: Option<Zeroizing<String>>,
    /// Connect and per-call timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("tls", &self.tls)
            .field("user", &self.user)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl EtcdOptions {
    /// Plain-HTTP options for `endpoints` with a 5 s timeout.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdOptions {
            endpoints,
            tls: None,
            user: None,
            password: None,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A connection to an etcd cluster. Clones share the connection and the authentication token.
#[derive(Debug, Clone)]
pub struct EtcdStore {
    kv: KvClient<Channel>,
    watch: WatchClient<Channel>,
    auth: AuthClient<Channel>,
    credentials: Option<(String, Zeroizing<String>)>,
    token: Arc<RwLock<Option<MetadataValue<tonic::metadata::Ascii>>>>,
    endpoints: String,
}

fn endpoint(raw: &str, options: &EtcdOptions) -> Result<Endpoint, StoreError> {
    let url = if raw.contains("://") {
        raw.to_string()
    } else if options.tls.is_some() {
        format!("https://{raw}")
    } else {
        format!("http://{raw}")
    };
    if options.tls.is_none() && url.starts_with("https://") {
        return Err(StoreError::Config(format!(
            "endpoint {raw} is https but no --etcd-cacert was given"
        )));
    }
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(|e| StoreError::Config(format!("endpoint {raw:?} is not a URL: {e}")))?
        .connect_timeout(options.timeout)
        .timeout(options.timeout)
        .tcp_nodelay(true);
    if let Some(tls) = &options.tls {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.client {
            config = config.identity(Identity::from_pem(cert, &key[..]));
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| StoreError::Config(format!("TLS for endpoint {raw}: {e}")))?;
    }
    Ok(endpoint)
}

impl EtcdStore {
    /// Connects (lazily: a cluster that is down fails the first call, not this) and, with a
    /// user, authenticates.
    pub async fn connect(options: &EtcdOptions) -> Result<Self, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Config(
                "no etcd endpoint given (host:port, one per etcd member)".into(),
            ));
        }
        let endpoints = options
            .endpoints
            .iter()
            .map(|raw| endpoint(raw, options))
            .collect::<Result<Vec<_>, _>>()?;
        let channel = Channel::balance_list(endpoints.into_iter());
        let credentials = match (&options.user, &options.password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (None, None) => None,
            _ => {
                return Err(StoreError::Config(
                    "--etcd-user and --etcd-password-file go together".into(),
                ))
            }
        };
        let store = EtcdStore {
            kv: KvClient::new(channel.clone()),
            watch: WatchClient::new(channel.clone()),
            auth: AuthClient::new(channel),
            credentials,
            token: Arc::new(RwLock::new(None)),
            endpoints: options.endpoints.join(","),
        };
        store.authenticate().await?;
        Ok(store)
    }

    async fn authenticate(&self) -> Result<(), StoreError> {
        let Some((user, password)) = &self.credentials else {
            return Ok(());
        };
        let response = self
            .auth
            .clone()
            .authenticate(pb::AuthenticateRequest {
                name: user.clone(),
                password: password.to_string(),
            })
            .await
            .map_err(|status| {
                if crate::error::is_unavailable(&status) {
                    StoreError::Unavailable {
                        endpoints: self.endpoints.clone(),
                        message: crate::error::describe(&status),
                    }
                } else {
                    StoreError::Auth {
                        user: user.clone(),
                        message: status.message().to_string(),
                    }
                }
            })?;
        let token =
            MetadataValue::try_from(response.into_inner().token).map_err(|_| StoreError::Auth {
                user: user.clone(),
                message: "etcd returned a token that is not a header value".into(),
            })?;
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
        Ok(())
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = self.token.read().unwrap_or_else(|e| e.into_inner()).clone() {
            request.metadata_mut().insert("token", token);
        }
        request
    }

    /// Runs `call`, authenticating again once when etcd says the token expired.
    async fn call<T, R, F, Fut>(
        &self,
        operation: &'static str,
        key: &[u8],
        message: T,
        call: F,
    ) -> Result<R, StoreError>
    where
        T: Clone,
        F: Fn(tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        match call(self.request(message.clone())).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status)
                if status.code() == tonic::Code::Unauthenticated && self.credentials.is_some() =>
            {
                self.authenticate().await?;
                call(self.request(message))
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| StoreError::from_status(s, &self.endpoints, operation, key))
            }
            Err(status) => Err(StoreError::from_status(
                status,
                &self.endpoints,
                operation,
                key,
            )),
        }
    }

    async fn range(&self, key: &[u8], range_end: Vec<u8>) -> Result<pb::RangeResponse, StoreError> {
        let message = pb::RangeRequest {
            key: key.to_vec(),
            range_end,
            ..Default::default()
        };
        self.call("get", key, message, |request| {
            let mut kv = self.kv.clone();
            async move { kv.range(request).await }
        })
        .await
    }

    async fn txn(
        &self,
        operation: &'static str,
        key: &[u8],
        compare: pb::Compare,
        op: request_op::Request,
    ) -> Result<Swap, StoreError> {
        let message = pb::TxnRequest {
            compare: vec![compare],
            success: vec![pb::RequestOp { request: Some(op) }],
            failure: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestRange(pb::RangeRequest {
                    key: key.to_vec(),
                    ..Default::default()
                })),
            }],
        };
        let response = self
            .call(operation, key, message, |request| {
                let mut kv = self.kv.clone();
                async move { kv.txn(request).await }
            })
            .await?;
        let revision = response.header.as_ref().map_or(0, |h| h.revision);
        if response.succeeded {
            return Ok(Swap::Done { revision });
        }
        let current = response
            .responses
            .into_iter()
            .find_map(|r| match r.response {
                Some(response_op::Response::ResponseRange(range)) => {
                    range.kvs.into_iter().next().map(entry)
                }
                _ => None,
            });
        Ok(Swap::Conflict { current })
    }
}

fn entry(kv: pb::KeyValue) -> Entry {
    Entry {
        key: kv.key,
        value: kv.value,
        mod_revision: kv.mod_revision,
    }
}

fn condition(key: &[u8], expect: Expect) -> pb::Compare {
    let (target, union) = match expect {
        // A key that does not exist has create revision 0.
        Expect::Absent => (CompareTarget::Create, TargetUnion::CreateRevision(0)),
        Expect::ModRevision(revision) => (CompareTarget::Mod, TargetUnion::ModRevision(revision)),
    };
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key: key.to_vec(),
        target_union: Some(union),
        range_end: Vec::new(),
    }
}

impl StateStore for EtcdStore {
    async fn get(&self, key: &[u8]) -> Result<Option<Entry>, StoreError> {
        let response = self.range(key, Vec::new()).await?;
        Ok(response.kvs.into_iter().next().map(entry))
    }

    async fn list(&self, prefix: &[u8]) -> Result<Listing, StoreError> {
        let response = self.range(prefix, prefix_end(prefix)).await?;
        Ok(Listing {
            revision: response.header.as_ref().map_or(0, |h| h.revision),
            entries: response.kvs.into_iter().map(entry).collect(),
        })
    }

    async fn put(&self, key: &[u8], value: Vec<u8>, expect: Expect) -> Result<Swap, StoreError> {
        let put = request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_vec(),
            value,
            ..Default::default()
        });
        self.txn("put", key, condition(key, expect), put).await
    }

    async fn delete(&self, key: &[u8], mod_revision: i64) -> Result<Swap, StoreError> {
        let delete = request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        });
        self.txn(
            "delete",
            key,
            condition(key, Expect::ModRevision(mod_revision)),
            delete,
        )
        .await
    }

    async fn watch(&self, prefix: &[u8], after: i64) -> Result<Watcher, StoreError> {
        let prefix_text = String::from_utf8_lossy(prefix).into_owned();
        let (requests, request_rx) = mpsc::channel(1);
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: prefix.to_vec(),
                    range_end: prefix_end(prefix),
                    start_revision: after + 1,
                    ..Default::default()
                },
            )),
        };
        requests
            .send(create)
            .await
            .expect("the receiver is alive until the stream is dropped");
        let mut stream = self
            .watch
            .clone()
            .watch(self.request(ReceiverStream::new(request_rx)))
            .await
            .map_err(|s| StoreError::from_status(s, &self.endpoints, "watch", prefix))?
            .into_inner();
        let (events, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            // Closing the request stream would end the watch: keep it open while we run.
            let _requests = requests;
            let ended = |reason: String| StoreError::WatchEnded {
                prefix: prefix_text.clone(),
                reason,
            };
            loop {
                let batch = match stream.message().await {
                    Ok(Some(response)) if response.canceled || response.compact_revision > 0 => {
                        Err(ended(format!(
                            "cancelled by etcd (compacted to revision {}): {}",
                            response.compact_revision, response.cancel_reason
                        )))
                    }
                    Ok(Some(response)) if response.events.is_empty() => continue,
                    Ok(Some(response)) => {
                        Ok(response.events.into_iter().filter_map(event).collect())
                    }
                    Ok(None) => Err(ended("etcd closed the stream".into())),
                    Err(status) => Err(ended(status.message().to_string())),
                };
                let last = batch.is_err();
                if events.send(batch).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Watcher { events: rx })
    }
}

fn event(event: pb::Event) -> Option<WatchEvent> {
    let kv = event.kv?;
    Some(match pb::event::EventType::try_from(event.r#type) {
        Ok(pb::event::EventType::Delete) => WatchEvent::Delete {
            key: kv.key,
            revision: kv.mod_revision,
        },
        _ => WatchEvent::Put(entry(kv)),
    })
}

//! A pool of long-lived mutual attested TLS connections to keyd, for callers that forward
//! traffic to it (the KMS plugin in service mode).
//!
//! * One attested identity ([`ClientIdentity`]) is made at start-up and presented on every
//!   connection; [`ClientIdentity::renew`] replaces it before its certificate expires.
//! * A fixed number of HTTP/2 connections, each a lazy tonic channel, used round-robin; an
//!   established connection is preferred over one that is down. Nothing connects until the
//!   first call, so the caller can start while keyd is down.
//! * Each connection's connector is gated: after a failed attempt it refuses further attempts
//!   until a backoff deadline ([`Backoff`]: exponential with jitter), so calls during an outage
//!   fail at once with the last error instead of piling up behind connection attempts.
//! * Every call has one deadline covering connect, handshake and RPC.
//! * [`CallError`] says which of five things happened: keyd is unreachable, keyd did not answer
//!   in time, keyd refused this client, keyd's attestation does not satisfy our policy, or keyd
//!   answered the call with an error.
//!
//! TLS session resumption is off: every new connection is a full handshake in which keyd
//! verifies this client's evidence against its current policy (and we verify keyd's).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use coffer_platform::Platform;
use coffer_ratls::{AttestedVerifier, OfflineVerifier};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};
use zeroize::Zeroizing;

use crate::error::status_chain;
use crate::handshake::{Failure, FailureKind};
use crate::pb;
use crate::pb::key_service_client::KeyServiceClient;
use crate::{ClientError, KeydAddr, KeydClientOptions};

/// HTTP/2 keep-alive ping interval: finds a connection whose peer vanished without closing it.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Identity.

/// This client's attested TLS identity and its check of keyd's attestation: what every
/// connection of a pool presents and verifies.
pub struct ClientIdentity {
    platform: Arc<dyn Platform>,
    verifier: Arc<AttestedVerifier>,
    current: ArcSwap<Issued>,
}

struct Issued {
    connector: TlsConnector,
    made: Instant,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("platform", &self.platform.kind())
            .field("age", &self.age())
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Makes an attested certificate with `options.platform` (this gets evidence from the TEE,
    /// so it may block for a while on real hardware).
    pub fn new(options: KeydClientOptions) -> Result<Self, ClientError> {
        let verifier = Arc::new(AttestedVerifier::new(
            Arc::new(OfflineVerifier::new(options.verify_options)),
            options.policy,
        ));
        let issued = Self::issue(options.platform.as_ref(), &verifier)?;
        Ok(ClientIdentity {
            platform: options.platform,
            verifier,
            current: ArcSwap::from_pointee(issued),
        })
    }

    fn issue(
        platform: &dyn Platform,
        verifier: &Arc<AttestedVerifier>,
    ) -> Result<Issued, ClientError> {
        let identity = coffer_ratls::attested_certificate(platform)?;
        let mut tls = coffer_ratls::client_config(&identity, verifier.clone())?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        tls.resumption = rustls::client::Resumption::disabled();
        Ok(Issued {
            connector: TlsConnector::from(Arc::new(tls)),
            made: Instant::now(),
        })
    }

    /// How long ago the certificate in use was made.
    pub fn age(&self) -> Duration {
        self.current.load().made.elapsed()
    }

    /// Whether the certificate is past half its validity, so it is time to [`renew`](Self::renew).
    pub fn due_for_renewal(&self) -> bool {
        self.age() >= coffer_ratls::DEFAULT_VALIDITY / 2
    }

    /// Makes a new certificate (with fresh evidence) for the connections made from now on;
    /// established connections keep theirs. Blocks like [`new`](Self::new).
    pub fn renew(&self) -> Result<(), ClientError> {
        let issued = Self::issue(self.platform.as_ref(), &self.verifier)?;
        self.current.store(Arc::new(issued));
        Ok(())
    }

    fn connector(&self) -> TlsConnector {
        self.current.load().connector.clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Backoff.

/// Reconnection backoff: the delay doubles with every consecutive failure, from `initial` up to
/// `max`, with jitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the delay after the first failure.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Backoff {
    /// 100 ms doubling to 10 s.
    pub const DEFAULT: Backoff = Backoff {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(10),
    };

    /// The delay ceiling after `failures` consecutive failures: `initial · 2^(failures−1)`,
    /// at most `max`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }

    /// The delay after `failures` consecutive failures, given a random number: half the ceiling
    /// plus a random part of the other half ("equal jitter"). Clients that lost keyd at the same
    /// moment spread their attempts out, and none retries sooner than half the ceiling.
    pub fn delay(&self, failures: u32, random: u64) -> Duration {
        let ceiling = self.ceiling(failures);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random % span.saturating_add(1))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::DEFAULT
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    if coffer_platform::fill_random(&mut bytes).is_err() {
        // Jitter only spreads load; the clock's low bits do when the RNG cannot.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()))
            .unwrap_or(0);
    }
    u64::from_le_bytes(bytes)
}

// ---------------------------------------------------------------------------------------------
// Errors.

/// Why a call to keyd failed.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// keyd could not be reached (connection refused, reset, no answer to the handshake, ...).
    #[error("keyd at {addr} unreachable ({reason}); {}", next_attempt(.retry_in))]
    Unreachable {
        /// keyd's address.
        addr: String,
        /// The last connection error.
        reason: String,
        /// When the next connection attempt is allowed, if one is scheduled.
        retry_in: Option<Duration>,
    },
    /// keyd did not answer within the call deadline.
    #[error("keyd at {addr} did not answer within {} ms (connect, attested TLS handshake and call)", .after.as_millis())]
    TimedOut {
        /// keyd's address.
        addr: String,
        /// The deadline.
        after: Duration,
    },
    /// keyd refused this client: at the TLS handshake (its policy grants our evidence no role),
    /// or with PERMISSION_DENIED / UNAUTHENTICATED (our role may not do this).
    #[error("keyd at {addr} refused this client: {reason}")]
    Refused {
        /// keyd's address.
        addr: String,
        /// keyd's reason, or what the handshake showed.
        reason: String,
    },
    /// keyd's attestation does not satisfy our policy.
    #[error("keyd at {addr} is not trusted: {reason}")]
    Untrusted {
        /// keyd's address.
        addr: String,
        /// Why its certificate or evidence was refused.
        reason: String,
    },
    /// keyd answered the call with another error (invalid argument, unknown keyring, ...).
    #[error("keyd at {addr} returned {}: {}", .status.code(), .status.message())]
    Rejected {
        /// keyd's address.
        addr: String,
        /// keyd's answer.
        status: Box<Status>,
    },
    /// None of several keyd replicas answered; each one's error, in the order tried.
    #[error("no keyd replica answered: {}", each(.0))]
    NoReplica(Vec<CallError>),
}

impl CallError {
    /// Whether another keyd replica may answer the same call: this one was not reached, did not
    /// answer in time, or is not trusted; never when keyd answered (a refusal or an error).
    pub fn another_replica_may_answer(&self) -> bool {
        matches!(
            self,
            CallError::Unreachable { .. }
                | CallError::TimedOut { .. }
                | CallError::Untrusted { .. }
                | CallError::NoReplica(_)
        )
    }
}

fn each(errors: &[CallError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn next_attempt(retry_in: &Option<Duration>) -> String {
    match retry_in {
        Some(d) => format!("next reconnect attempt in {} ms", d.as_millis()),
        None => "reconnecting on the next call".to_string(),
    }
}

/// The error a gated connector returns; its text ends up in the transport error.
#[derive(Debug)]
struct ConnectFailed(String);

impl fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectFailed {}

// ---------------------------------------------------------------------------------------------
// Connections.

/// Hooks for a pool's connection events (e.g. metrics). Called with no pool lock held.
pub trait PoolEvents: Send + Sync {
    /// A connection to keyd was established and keyd answered on it.
    fn connected(&self) {}
    /// An established connection closed.
    fn disconnected(&self) {}
    /// A connection attempt began that was not its slot's first.
    fn reconnecting(&self) {}
}

struct NoEvents;
impl PoolEvents for NoEvents {}

/// The state of one pool slot: at most one connection at a time, and its backoff.
struct Link {
    index: usize,
    addr: String,
    backoff: Backoff,
    events: Arc<dyn PoolEvents>,
    connected: AtomicBool,
    state: Mutex<LinkState>,
}

#[derive(Default)]
struct LinkState {
    /// Connection attempts so far.
    attempts: u64,
    /// Consecutive failed attempts (reset once keyd answers on a connection).
    failures: u32,
    /// No attempt before this.
    retry_at: Option<Instant>,
    /// The last failure, until a connection works again.
    last: Option<Failure>,
    /// The connection keyd answered on, while it is open.
    live: Option<u64>,
}

impl Link {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an attempt, or refuses it while the backoff lasts. Returns the connection's id.
    fn begin_attempt(&self) -> Result<u64, ConnectFailed> {
        let mut state = self.lock();
        let now = Instant::now();
        if let Some(at) = state.retry_at.filter(|at| *at > now) {
            let reason = state
                .last
                .as_ref()
                .map(|f| f.detail.as_str())
                .unwrap_or("an earlier attempt failed");
            return Err(ConnectFailed(format!(
                "keyd at {} unreachable ({reason}); next reconnect attempt in {} ms",
                self.addr,
                (at - now).as_millis()
            )));
        }
        state.attempts += 1;
        let id = state.attempts;
        drop(state);
        if id > 1 {
            self.events.reconnecting();
        }
        Ok(id)
    }

    fn attempt_failed(&self, failure: Failure) {
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        let delay = self.backoff.delay(state.failures, random_u64());
        state.retry_at = Some(Instant::now() + delay);
        // One line per distinct problem, not one per attempt.
        if state.last.as_ref() != Some(&failure) {
            tracing::warn!(
                keyd = %self.addr,
                connection = self.index,
                error = %failure.detail,
                retry_in_ms = delay.as_millis() as u64,
                "cannot connect to keyd; retrying with backoff"
            );
        }
        state.last = Some(failure);
    }

    fn proven(&self, id: u64) {
        let mut state = self.lock();
        let recovered = state.last.take().is_some();
        state.failures = 0;
        state.retry_at = None;
        state.live = Some(id);
        self.connected.store(true, Ordering::Relaxed);
        drop(state);
        if recovered {
            tracing::info!(keyd = %self.addr, connection = self.index, "reconnected to keyd");
        } else {
            tracing::debug!(keyd = %self.addr, connection = self.index, "connected to keyd");
        }
        self.events.connected();
    }

    fn lost(&self, id: u64, failure: Option<Failure>) {
        let mut state = self.lock();
        if state.live != Some(id) {
            return;
        }
        state.live = None;
        self.connected.store(false, Ordering::Relaxed);
        let detail = failure.as_ref().map(|f| f.detail.clone());
        state.last = failure;
        drop(state);
        // A closed connection is routine (keyd restarts, the pool shuts down); if keyd is gone,
        // the next attempt's failure is logged as a warning.
        match detail {
            Some(error) => {
                tracing::warn!(keyd = %self.addr, connection = self.index, %error, "connection to keyd lost; reconnecting on the next call")
            }
            None => {
                tracing::info!(keyd = %self.addr, connection = self.index, "connection to keyd closed; reconnecting on the next call")
            }
        }
        self.events.disconnected();
    }

    /// Whether an attempt would be allowed now (no backoff pending).
    fn due(&self) -> bool {
        self.lock().retry_at.is_none_or(|at| at <= Instant::now())
    }

    fn last_failure(&self) -> (Option<Failure>, Option<Duration>) {
        let state = self.lock();
        let now = Instant::now();
        let retry_in = state.retry_at.filter(|at| *at > now).map(|at| at - now);
        (state.last.clone(), retry_in)
    }

    async fn connect(
        self: Arc<Self>,
        identity: Arc<ClientIdentity>,
        addr: KeydAddr,
        timeout: Duration,
    ) -> Result<TokioIo<Tracked>, ConnectFailed> {
        let id = self.begin_attempt()?;
        let attempt = async {
            let tcp = TcpStream::connect((addr.host(), addr.port()))
                .await
                .map_err(|e| Failure::unreachable(format!("TCP connect: {e}")))?;
            let _ = tcp.set_nodelay(true);
            identity
                .connector()
                .connect(addr.server_name(), tcp)
                .await
                .map_err(|e| Failure::from_io(&e))
        };
        let failure = match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(tls)) => {
                return Ok(TokioIo::new(Tracked {
                    io: tls,
                    link: self,
                    id,
                    proven: false,
                    failed: false,
                }))
            }
            Ok(Err(failure)) => failure,
            Err(_) => Failure::unreachable(format!(
                "no answer to TCP connect and attested TLS handshake within {} ms",
                timeout.as_millis()
            )),
        };
        let message = format!("keyd at {}: {}", self.addr, failure.detail);
        self.attempt_failed(failure);
        Err(ConnectFailed(message))
    }
}

/// A connection's TLS stream, reporting to its [`Link`]: the first bytes from keyd prove that
/// keyd accepted us (only then is the backoff reset), and errors and closing are recorded.
struct Tracked {
    io: TlsStream<TcpStream>,
    link: Arc<Link>,
    id: u64,
    proven: bool,
    failed: bool,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let wanted = buf.remaining() > 0;
        let this = &mut *self;
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        match &result {
            Poll::Ready(Ok(())) if buf.filled().len() > before && !this.proven => {
                this.proven = true;
                this.link.proven(this.id);
            }
            // End of stream before keyd sent anything.
            Poll::Ready(Ok(()))
                if buf.filled().len() == before && wanted && !this.proven && !this.failed =>
            {
                this.failed = true;
                this.link.attempt_failed(Failure::unreachable(
                    "keyd closed the connection before answering",
                ));
            }
            Poll::Ready(Err(e)) => {
                let failure = Failure::from_io(e);
                if this.proven {
                    this.link.lost(this.id, Some(failure));
                } else if !this.failed {
                    this.failed = true;
                    this.link.attempt_failed(failure);
                }
            }
            _ => {}
        }
        result
    }
}

crate::forward_async_write!(Tracked, io);

impl Drop for Tracked {
    fn drop(&mut self) {
        if self.proven {
            self.link.lost(self.id, None);
        } else if !self.failed {
            self.link.attempt_failed(Failure::unreachable(
                "the connection closed before keyd answered",
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pool.

/// How a [`KeydPool`] connects and calls.
#[derive(Clone)]
pub struct PoolOptions {
    /// HTTP/2 connections to keep (at least 1).
    pub connections: usize,
    /// Deadline of every call, covering connect, handshake and RPC.
    pub timeout: Duration,
    /// Reconnection backoff.
    pub backoff: Backoff,
    /// Connection event hooks.
    pub events: Option<Arc<dyn PoolEvents>>,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            connections: 2,
            timeout: Duration::from_secs(2),
            backoff: Backoff::DEFAULT,
            events: None,
        }
    }
}

impl fmt::Debug for PoolOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolOptions")
            .field("connections", &self.connections)
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

/// A keyring's state as keyd reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyringStatus {
    /// The primary KEK's id: what Wrap encrypts with.
    pub primary_key_id: String,
    /// KEKs in the keyring.
    pub keys: u32,
}

/// Pooled, reconnecting mutual attested TLS connections to one keyd.
pub struct KeydPool {
    addr: KeydAddr,
    addr_text: String,
    identity: Arc<ClientIdentity>,
    links: Box<[Arc<Link>]>,
    clients: Box<[KeyServiceClient<Channel>]>,
    next: AtomicUsize,
    timeout: Duration,
}

impl fmt::Debug for KeydPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeydPool")
            .field("addr", &self.addr_text)
            .field("connections", &self.links.len())
            .field("connected", &self.connected())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KeydPool {
    /// A pool of `options.connections` connections to keyd at `addr`, presenting `identity`.
    /// Connects nothing yet: each connection is made on its first use. Must be called inside a
    /// tokio runtime.
    pub fn new(
        addr: KeydAddr,
        identity: Arc<ClientIdentity>,
        options: PoolOptions,
    ) -> Result<Self, ClientError> {
        let addr_text = addr.to_string();
        let endpoint = Endpoint::from_shared(format!("http://{addr_text}"))?
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(options.timeout)
            .keep_alive_while_idle(true);
        // The handshake gives up a little before the call deadline, so that the call that
        // started it reports why instead of just a timeout.
        let connect_timeout = options.timeout.mul_f64(0.9);
        let events = options.events.unwrap_or_else(|| Arc::new(NoEvents));
        let mut links = Vec::new();
        let mut clients = Vec::new();
        for index in 0..options.connections.max(1) {
            let link = Arc::new(Link {
                index,
                addr: addr_text.clone(),
                backoff: options.backoff,
                events: events.clone(),
                connected: AtomicBool::new(false),
                state: Mutex::new(LinkState::default()),
            });
            let (connector_link, identity, addr) = (link.clone(), identity.clone(), addr.clone());
            let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                connector_link
                    .clone()
                    .connect(identity.clone(), addr.clone(), connect_timeout)
            }));
            links.push(link);
            clients.push(KeyServiceClient::new(channel));
        }
        Ok(KeydPool {
            addr,
            addr_text,
            identity,
            links: links.into(),
            clients: clients.into(),
            next: AtomicUsize::new(0),
            timeout: options.timeout,
        })
    }

    /// keyd's address.
    pub fn addr(&self) -> &KeydAddr {
        &self.addr
    }

    /// The identity the pool presents.
    pub fn identity(&self) -> &Arc<ClientIdentity> {
        &self.identity
    }

    /// The call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Connections currently established (keyd answered on them).
    pub fn connected(&self) -> usize {
        self.links
            .iter()
            .filter(|l| l.connected.load(Ordering::Relaxed))
            .count()
    }

    /// Round-robin over established connections; when none is, over those allowed to attempt
    /// a connection now; when none is, the next one (whose call then fails at once).
    fn pick(&self) -> usize {
        let n = self.links.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let order = (0..n).map(|k| (start + k) % n);
        if let Some(i) = order
            .clone()
            .find(|&i| self.links[i].connected.load(Ordering::Relaxed))
        {
            return i;
        }
        order
            .clone()
            .find(|&i| self.links[i].due())
            .unwrap_or(start)
    }

    /// Whether a call now could reach keyd: a connection is established, or one may attempt to
    /// connect (its backoff is over).
    pub fn available(&self) -> bool {
        self.links
            .iter()
            .any(|l| l.connected.load(Ordering::Relaxed) || l.due())
    }

    async fn call<Req, Resp, F, Fut>(
        &self,
        slot: Option<usize>,
        timeout: Duration,
        message: Req,
        rpc: F,
    ) -> Result<Resp, CallError>
    where
        F: FnOnce(KeyServiceClient<Channel>, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        let index = slot.unwrap_or_else(|| self.pick());
        // The deadline is enforced here; a grpc-timeout header would cost every call its
        // encoding and parsing for a deadline keyd cannot usefully act on (its calls take µs).
        let call = rpc(self.clients[index].clone(), tonic::Request::new(message));
        match tokio::time::timeout(timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(self.classify(&self.links[index], status)),
            Err(_) => Err(CallError::TimedOut {
                addr: self.addr_text.clone(),
                after: timeout,
            }),
        }
    }

    fn classify(&self, link: &Link, status: Status) -> CallError {
        let addr = self.addr_text.clone();
        // keyd's own answers carry no error source; tonic reports transport failures (and the
        // connector's refusals) as UNAVAILABLE or CANCELLED, or with the error as source.
        let transport = std::error::Error::source(&status).is_some()
            || matches!(status.code(), Code::Unavailable | Code::Cancelled);
        if !transport {
            return match status.code() {
                Code::PermissionDenied | Code::Unauthenticated => CallError::Refused {
                    addr,
                    reason: status.message().to_string(),
                },
                _ => CallError::Rejected {
                    addr,
                    status: Box::new(status),
                },
            };
        }
        let (last, retry_in) = link.last_failure();
        match last {
            Some(Failure {
                kind: FailureKind::Refused,
                detail,
            }) => CallError::Refused {
                addr,
                reason: detail,
            },
            Some(Failure {
                kind: FailureKind::Untrusted,
                detail,
            }) => CallError::Untrusted {
                addr,
                reason: detail,
            },
            Some(Failure { detail, .. }) => CallError::Unreachable {
                addr,
                reason: detail,
                retry_in,
            },
            None => CallError::Unreachable {
                addr,
                reason: status_chain(&status),
                retry_in,
            },
        }
    }

    /// Encrypts `plaintext` with keyring `keyring`'s primary KEK; returns the ciphertext and the
    /// KEK id.
    pub async fn wrap(
        &self,
        keyring: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, String), CallError> {
        self.wrap_within(self.timeout, keyring, plaintext).await
    }

    pub(crate) async fn wrap_within(
        &self,
        timeout: Duration,
        keyring: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, String), CallError> {
        let message = pb::WrapRequest {
            keyring: keyring.to_string(),
            plaintext: plaintext.to_vec(),
        };
        let response = self
            .call(
                None,
                timeout,
                message,
                |mut c, r| async move { c.wrap(r).await },
            )
            .await?;
        Ok((response.ciphertext, response.key_id))
    }

    /// Decrypts `ciphertext` with keyring `keyring`; with `key_id`, the ciphertext must have been
    /// made with that KEK.
    pub async fn unwrap(
        &self,
        keyring: &str,
        key_id: Option<&str>,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CallError> {
        self.unwrap_within(self.timeout, keyring, key_id, ciphertext)
            .await
    }

    pub(crate) async fn unwrap_within(
        &self,
        timeout: Duration,
        keyring: &str,
        key_id: Option<&str>,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CallError> {
        let message = pb::UnwrapRequest {
            keyring: keyring.to_string(),
            key_id: key_id.unwrap_or_default().to_string(),
            ciphertext: ciphertext.to_vec(),
        };
        let response = self
            .call(None, timeout, message, |mut c, r| async move {
                c.unwrap(r).await
            })
            .await?;
        Ok(Zeroizing::new(response.plaintext))
    }

    /// Decrypts several `(key_id, ciphertext)` items of keyring `keyring` in one call (at most
    /// [`crate::MAX_BATCH_ITEMS`]); the outer error is the call's, the inner ones the items'.
    pub async fn unwrap_batch(
        &self,
        keyring: &str,
        items: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Result<Zeroizing<Vec<u8>>, CallError>>, CallError> {
        self.unwrap_batch_within(self.timeout, keyring, items).await
    }

    pub(crate) async fn unwrap_batch_within(
        &self,
        timeout: Duration,
        keyring: &str,
        items: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Result<Zeroizing<Vec<u8>>, CallError>>, CallError> {
        let count = items.len();
        let message = pb::UnwrapBatchRequest {
            keyring: keyring.to_string(),
            items: items
                .into_iter()
                .map(|(key_id, ciphertext)| pb::UnwrapItem { key_id, ciphertext })
                .collect(),
        };
        let response = self
            .call(None, timeout, message, |mut c, r| async move {
                c.unwrap_batch(r).await
            })
            .await?;
        if response.results.len() != count {
            return Err(CallError::Rejected {
                addr: self.addr_text.clone(),
                status: Box::new(Status::internal(format!(
                    "keyd answered {} results for {count} items",
                    response.results.len()
                ))),
            });
        }
        Ok(response
            .results
            .into_iter()
            .map(|r| match r.result {
                Some(pb::unwrap_result::Result::Plaintext(p)) => Ok(Zeroizing::new(p)),
                Some(pb::unwrap_result::Result::Error(e)) => Err(CallError::Rejected {
                    addr: self.addr_text.clone(),
                    status: Box::new(Status::new(Code::from(e.code as i32), e.message)),
                }),
                None => Err(CallError::Rejected {
                    addr: self.addr_text.clone(),
                    status: Box::new(Status::internal("keyd sent an empty result")),
                }),
            })
            .collect())
    }

    /// The keyring's primary KEK id and size.
    pub async fn status(&self, keyring: &str) -> Result<KeyringStatus, CallError> {
        self.status_on(None, self.timeout, keyring).await
    }

    pub(crate) async fn status_on(
        &self,
        slot: Option<usize>,
        timeout: Duration,
        keyring: &str,
    ) -> Result<KeyringStatus, CallError> {
        let message = pb::StatusRequest {
            keyring: keyring.to_string(),
        };
        let response = self
            .call(slot, timeout, message, |mut c, r| async move {
                c.status(r).await
            })
            .await?;
        Ok(KeyringStatus {
            primary_key_id: response.primary_key_id,
            keys: response.keys,
        })
    }

    /// Re-establishes every connection that is down and past its backoff, with a Status call
    /// for `keyring` on each, so that a pool recovers without any traffic and every connection
    /// is ready before calls need it.
    pub async fn connect_idle(&self, keyring: &str) {
        for (index, link) in self.links.iter().enumerate() {
            if !link.connected.load(Ordering::Relaxed) && link.due() {
                // Failures are recorded on the link (and logged once); nothing more to do.
                let _ = self.status_on(Some(index), self.timeout, keyring).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let b = Backoff::DEFAULT;
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(7), Duration::from_millis(6400));
        assert_eq!(b.ceiling(8), Duration::from_secs(10));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(10));
        for failures in [1, 3, 20] {
            let ceiling = b.ceiling(failures);
            for random in [0, 1, 12345, u64::MAX / 3, u64::MAX] {
                let d = b.delay(failures, random);
                assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} for {failures}");
            }
        }
        let zero = Backoff {
            initial: Duration::ZERO,
            max: Duration::ZERO,
        };
        assert_eq!(zero.delay(3, u64::MAX), Duration::ZERO);
    }
}

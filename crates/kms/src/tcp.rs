//! `kms serve --listen-tcp`: the plugin's gRPC services on a TCP address, over attested TLS, for
//! a plugin inside an SGX enclave.
//!
//! Neither Gramine nor released Occlum lets a host process connect to a unix socket inside the
//! enclave, but both pass TCP through to the host. So the enclave serves here, and the host-side
//! `coffer kms bridge` owns kube-apiserver's unix socket, checks callers on it, and forwards each
//! call. The server's certificate carries this platform's evidence (bound to its key, see
//! `coffer_ratls`), so the bridge can refuse a substituted enclave. Clients present no
//! certificate: the bridge runs outside any TEE. Who may reach the port is the deployment's
//! business: loopback only by default, in the pod's own network namespace (see
//! docs/tee-platforms.md, "The SGX bridge").

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use coffer_platform::Platform;
use coffer_ratls::ServerIdentity;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::listener::{KmsConn, Slots, SocketOptions};
use crate::peer::Verdict;

/// Where and as whom to serve TCP.
#[derive(Clone)]
pub struct TcpOptions {
    /// The address (loopback unless `allow_remote`).
    pub addr: SocketAddr,
    /// Allow a non-loopback address.
    pub allow_remote: bool,
    /// The platform whose evidence the server certificate carries.
    pub platform: Arc<dyn Platform>,
}

impl fmt::Debug for TcpOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpOptions")
            .field("addr", &self.addr)
            .field("allow_remote", &self.allow_remote)
            .field("platform", &self.platform.kind())
            .finish()
    }
}

/// Why the TCP listener could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TcpError {
    /// A non-loopback address without `--listen-tcp-allow-remote`.
    #[error("--listen-tcp {0} is not a loopback address: anyone who can reach it could call the plugin without the bridge's caller check. Use 127.0.0.1:PORT (the bridge runs in the same pod), or pass --listen-tcp-allow-remote if the network is otherwise closed")]
    NotLoopback(SocketAddr),
    /// The address could not be bound.
    #[error("--listen-tcp {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The attested certificate could not be made.
    #[error("making the attested TLS certificate for --listen-tcp: {0}")]
    Certificate(String),
}

/// A bound TCP listener and the attested identity it presents.
pub struct TcpListening {
    listener: TcpListener,
    identity: Arc<ServerIdentity>,
    acceptor: TlsAcceptor,
}

impl TcpListening {
    /// Checks the address, makes the attested certificate (this gets evidence from the TEE) and
    /// binds.
    pub async fn bind(options: &TcpOptions) -> Result<Self, TcpError> {
        if !options.addr.ip().is_loopback() && !options.allow_remote {
            return Err(TcpError::NotLoopback(options.addr));
        }
        let platform = options.platform.clone();
        let identity = tokio::task::spawn_blocking(move || ServerIdentity::new(platform))
            .await
            .map_err(|e| TcpError::Certificate(e.to_string()))?
            .map_err(|e| TcpError::Certificate(e.to_string()))?;
        let identity = Arc::new(identity);
        let mut tls = coffer_ratls::server_config_without_client_auth(identity.clone())
            .map_err(|e| TcpError::Certificate(e.to_string()))?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let listener = TcpListener::bind(options.addr)
            .await
            .map_err(|source| TcpError::Bind {
                addr: options.addr,
                source,
            })?;
        Ok(TcpListening {
            listener,
            identity,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Starts accepting: each connection gets the TLS handshake (within the socket's handshake
    /// timeout) and is handed to the returned channel, counted against `max_connections` and
    /// closed when idle like a unix-socket connection. Also renews the certificate before it
    /// expires, for as long as the task runs.
    pub fn accept_loop(
        self,
        options: &SocketOptions,
        rewrites: Arc<AtomicU64>,
    ) -> (
        mpsc::Receiver<io::Result<KmsConn>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let slots = Slots::new(options.max_connections);
        let timeouts = options.timeouts;
        let TcpListening {
            listener,
            identity,
            acceptor,
        } = self;
        let accept = async move {
            loop {
                let (stream, from) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a TCP connection failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(slot) = slots.take(true) else {
                    tracing::warn!(%from, "connection limit reached (--max-connections); closing the new connection");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (acceptor, tx, rewrites) = (acceptor.clone(), tx.clone(), rewrites.clone());
                tokio::spawn(async move {
                    let tls =
                        match tokio::time::timeout(timeouts.handshake, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => tls,
                            Ok(Err(e)) => {
                                tracing::debug!(%from, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%from, "TLS handshake timed out");
                                return;
                            }
                        };
                    tracing::debug!(%from, "accepted TCP connection");
                    let conn = KmsConn::new(
                        Box::new(tls),
                        Verdict::checked_by_bridge(),
                        slot,
                        timeouts,
                        rewrites,
                    );
                    let _ = tx.send(Ok(conn)).await;
                });
            }
        };
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = accept => {}
                _ = identity.renew_forever(coffer_ratls::DEFAULT_RENEWAL) => {}
            }
        });
        (rx, task)
    }
}

//! The plugin's unix socket: one instance per socket, stale files cleaned up, created with its
//! final permissions (bound under a temporary name, chmod/chown, then renamed into place, so
//! there is no moment when the socket exists with the default mode).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::authority::AuthorityRewrite;
use crate::deadline::{Activity, ConnTimeouts, Deadline};
use crate::peer::{CallerPolicy, Peer, Verdict};

/// Longest socket path accepted: `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// How the socket file is created.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// Where kube-apiserver finds the plugin (the EncryptionConfiguration `endpoint`).
    pub path: PathBuf,
    /// File mode of the socket; 0600 by default so only its owner can connect.
    pub mode: u32,
    /// Owner uid to set on the socket (needs privilege).
    pub owner: Option<u32>,
    /// Group gid to set on the socket (needs privilege or group membership).
    pub group: Option<u32>,
    /// Most simultaneous connections (the API server uses one or a few). A share of them,
    /// [`reserved_for_allowed`], only allowed callers can take.
    pub max_connections: usize,
    /// How long a connection may go without calls before it is closed.
    pub timeouts: ConnTimeouts,
}

/// Connection slots only allowed callers can take: a quarter of `max_connections`, at least
/// one. Refused callers share the rest, so they can never lock the API server out.
pub fn reserved_for_allowed(max_connections: usize) -> usize {
    (max_connections / 4).max(1)
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// Another `coffer kms` holds the instance lock for this socket.
    #[error("another coffer kms is already serving {path} (its lock {lock} is held); stop it first or choose another --socket")]
    AlreadyServing {
        /// The socket.
        path: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// Some other process answers on the socket.
    #[error("{path} is in use: another process accepts connections on it; stop it or choose another --socket")]
    InUse {
        /// The socket.
        path: PathBuf,
    },
    /// The path exists and is not a socket: never removed.
    #[error(
        "{path} exists and is not a unix socket; refusing to remove it (choose another --socket)"
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Unix socket paths are limited by the kernel (`sun_path`).
    #[error("socket path {path} is {len} bytes; unix socket paths can be at most {MAX_SOCKET_PATH} bytes (choose a shorter --socket)")]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// A system call failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SocketError + 'a {
    move |source| SocketError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// The bound socket plus the instance lock; removes the socket file when dropped.
pub struct BoundSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    lock_path: PathBuf,
    inode: u64,
    _lock: File,
}

impl BoundSocket {
    /// Takes the instance lock, clears a stale socket, and binds.
    pub fn bind(options: &SocketOptions) -> Result<Self, SocketError> {
        let path = options.path.clone();
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(SocketError::PathTooLong { path, len });
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .create(&dir)
                .map_err(io_err("creating socket directory", &dir))?;
        }
        let lock_path = lock_path_for(&path);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("opening instance lock", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SocketError::AlreadyServing {
                    path,
                    lock: lock_path,
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("locking", &lock_path)(e)),
        }
        remove_stale(&path)?;

        let mut nonce = [0u8; 4];
        coffer_platform::fill_random(&mut nonce)
            .map_err(|e| io_err("binding", &path)(io::Error::other(e)))?;
        // Same directory, so the rename is atomic; a short name, so the length check above
        // also covers it.
        let temp = dir.join(format!(".{}", hex(&nonce)));
        if temp.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(SocketError::PathTooLong { path, len });
        }
        let listener = UnixListener::bind(&temp).map_err(io_err("binding", &temp))?;
        let prepared = (|| {
            fs::set_permissions(&temp, fs::Permissions::from_mode(options.mode))
                .map_err(io_err("setting mode of", &temp))?;
            if options.owner.is_some() || options.group.is_some() {
                std::os::unix::fs::chown(&temp, options.owner, options.group)
                    .map_err(io_err("changing owner of", &temp))?;
            }
            fs::rename(&temp, &path).map_err(io_err("moving socket into place at", &path))
        })();
        if let Err(e) = prepared {
            let _ = fs::remove_file(&temp);
            return Err(e);
        }
        let inode = fs::metadata(&path).map(|m| m.ino()).unwrap_or(0);
        Ok(BoundSocket {
            listener: Some(listener),
            path,
            lock_path,
            inode,
            _lock: lock,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Starts accepting: every connection is credential-checked and wrapped, then handed to
    /// the returned channel. At most `max_connections` are open at once, and refused callers
    /// hold at most all but [`reserved_for_allowed`] of them; a connection over its limit is
    /// closed at once.
    pub fn accept_loop(
        &mut self,
        policy: Arc<CallerPolicy>,
        options: &SocketOptions,
        rewrites: Arc<std::sync::atomic::AtomicU64>,
    ) -> (
        mpsc::Receiver<io::Result<KmsConn>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let listener = self.listener.take();
        let slots = Slots::new(options.max_connections);
        let timeouts = options.timeouts;
        let task = tokio::spawn(async move {
            let Some(listener) = listener else { return };
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let verdict = verdict_of(&stream, &policy);
                        let Some(slot) = slots.take(verdict.is_allowed()) else {
                            tracing::warn!(
                                peer = %verdict.peer,
                                allowed = verdict.is_allowed(),
                                "connection limit reached (--max-connections); closing the new connection"
                            );
                            continue;
                        };
                        let conn = KmsConn::new(
                            Box::new(stream),
                            verdict,
                            slot,
                            timeouts,
                            rewrites.clone(),
                        );
                        if tx.send(Ok(conn)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        (rx, task)
    }

    /// Removes the socket file now (if it is still ours), so no new caller can connect.
    pub fn unlink(&self) {
        let ours = fs::symlink_metadata(&self.path)
            .map(|m| m.ino() == self.inode && m.file_type().is_socket())
            .unwrap_or(false);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        self.unlink();
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// The lock file that makes a socket single-instance.
pub fn lock_path_for(socket: &Path) -> PathBuf {
    let mut name = socket
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    socket.with_file_name(name)
}

fn remove_stale(path: &Path) -> Result<(), SocketError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspecting", path)(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(SocketError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing stale socket left by a previous run");
            fs::remove_file(path).map_err(io_err("removing stale socket", path))
        }
        Err(e) => Err(io_err("probing existing socket", path)(e)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The connection slots: every connection takes one of `all`; a refused caller's connection
/// also takes one of `refused`, which has fewer, so allowed callers always find a slot that
/// refused callers cannot take.
pub(crate) struct Slots {
    all: Arc<Semaphore>,
    refused: Arc<Semaphore>,
}

/// The slot permits one connection holds until it closes.
pub(crate) struct Slot {
    _all: OwnedSemaphorePermit,
    _refused: Option<OwnedSemaphorePermit>,
}

impl Slots {
    /// Slots for at most `max` connections (at least one).
    pub(crate) fn new(max: usize) -> Self {
        let max = max.max(1);
        Slots {
            all: Arc::new(Semaphore::new(max)),
            refused: Arc::new(Semaphore::new(max - reserved_for_allowed(max))),
        }
    }

    pub(crate) fn take(&self, allowed: bool) -> Option<Slot> {
        let refused = if allowed {
            None
        } else {
            Some(self.refused.clone().try_acquire_owned().ok()?)
        };
        Some(Slot {
            _all: self.all.clone().try_acquire_owned().ok()?,
            _refused: refused,
        })
    }
}

/// The caller check for a freshly accepted connection.
fn verdict_of(stream: &UnixStream, policy: &CallerPolicy) -> Verdict {
    match stream.peer_cred() {
        Ok(cred) => policy.check(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        }),
        Err(e) => Verdict {
            peer: Peer {
                uid: u32::MAX,
                gid: u32::MAX,
                pid: None,
            },
            refusal: Some(format!("the caller's credentials could not be read: {e}").into()),
            executable: None,
        },
    }
}

/// What every request on a connection carries: the caller verdict, and the connection's call
/// record that keeps it open.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Whether the caller may call, and who it is.
    pub verdict: Arc<Verdict>,
    /// The connection's calls (see [`crate::deadline`]).
    pub activity: Arc<Activity>,
}

/// The byte stream under a connection: the unix socket, or TLS over TCP (`--listen-tcp`).
pub(crate) trait ConnIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> ConnIo for T {}

/// One accepted connection: the `:authority`-normalising stream, the caller verdict every
/// request on it carries, and the deadline that closes it when unused.
pub struct KmsConn {
    io: AuthorityRewrite<Box<dyn ConnIo>>,
    info: ConnInfo,
    deadline: Deadline,
    expired: bool,
    _slot: Slot,
}

impl KmsConn {
    pub(crate) fn new(
        stream: Box<dyn ConnIo>,
        verdict: Verdict,
        slot: Slot,
        timeouts: ConnTimeouts,
        rewrites: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        if let Some(reason) = &verdict.refusal {
            tracing::warn!(
                target: "coffer::audit",
                event = "refused_connection",
                uid = verdict.peer.uid,
                gid = verdict.peer.gid,
                pid = verdict.peer.pid.unwrap_or(0),
                reason = %reason,
                "connection from a caller that is not allowed; its first call gets PERMISSION_DENIED, then it is closed"
            );
        } else {
            tracing::debug!(peer = %verdict.peer, "accepted connection");
        }
        let activity = Activity::new(!verdict.is_allowed());
        KmsConn {
            io: AuthorityRewrite::with_counter(stream, rewrites),
            deadline: Deadline::new(activity.clone(), timeouts),
            info: ConnInfo {
                verdict: Arc::new(verdict),
                activity,
            },
            expired: false,
            _slot: slot,
        }
    }
}

impl tonic::transport::server::Connected for KmsConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for KmsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Failing the read makes the HTTP/2 server drop the connection, freeing its slot.
        if self.expired {
            return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
        }
        if let Poll::Ready(why) = self.deadline.poll_expired(cx) {
            self.expired = true;
            tracing::debug!(peer = %self.info.verdict.peer, reason = %why, "closing connection");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                why.to_string(),
            )));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for KmsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
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

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

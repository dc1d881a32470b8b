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
    /// Most simultaneous connections (the API server uses one or a few).
    pub max_connections: usize,
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
    /// the returned channel. At most `max_connections` are open at once.
    pub fn accept_loop(
        &mut self,
        policy: Arc<CallerPolicy>,
        max_connections: usize,
        rewrites: Arc<std::sync::atomic::AtomicU64>,
    ) -> (
        mpsc::Receiver<io::Result<KmsConn>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        let listener = self.listener.take();
        let limit = Arc::new(Semaphore::new(max_connections.max(1)));
        let task = tokio::spawn(async move {
            let Some(listener) = listener else { return };
            loop {
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let conn = KmsConn::new(stream, &policy, permit, rewrites.clone());
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

/// One accepted connection: the `:authority`-normalising stream plus the caller verdict that
/// every request on it carries.
pub struct KmsConn {
    io: AuthorityRewrite<UnixStream>,
    verdict: Arc<Verdict>,
    _permit: OwnedSemaphorePermit,
}

impl KmsConn {
    fn new(
        stream: UnixStream,
        policy: &CallerPolicy,
        permit: OwnedSemaphorePermit,
        rewrites: Arc<std::sync::atomic::AtomicU64>,
    ) -> Self {
        let verdict = match stream.peer_cred() {
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
        };
        if let Some(reason) = &verdict.refusal {
            tracing::warn!(
                target: "coffer::audit",
                event = "refused_connection",
                uid = verdict.peer.uid,
                gid = verdict.peer.gid,
                pid = verdict.peer.pid.unwrap_or(0),
                reason = %reason,
                "connection from a caller that is not allowed; its calls get PERMISSION_DENIED"
            );
        } else {
            tracing::debug!(peer = %verdict.peer, "accepted connection");
        }
        KmsConn {
            io: AuthorityRewrite::with_counter(stream, rewrites),
            verdict: Arc::new(verdict),
            _permit: permit,
        }
    }
}

impl tonic::transport::server::Connected for KmsConn {
    type ConnectInfo = Arc<Verdict>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.verdict.clone()
    }
}

impl AsyncRead for KmsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
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

//! Unix-socket addressing and tonic channel setup.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::error::{chain, BenchError};

/// Turns a `--socket` value into a filesystem path.
///
/// Accepts a plain path, `unix:///abs/path` (the form kube-apiserver's `EncryptionConfiguration`
/// uses) and grpc-go's `unix:relative/path`. `unix://host/path` is rejected because the part
/// after `//` would be an authority, not a path.
pub(crate) fn socket_path(raw: &Path) -> Result<PathBuf, BenchError> {
    let bytes = raw.as_os_str().as_bytes();
    let path: &[u8] = if let Some(rest) = bytes.strip_prefix(b"unix://") {
        if !rest.starts_with(b"/") {
            return Err(BenchError::InvalidArgs(format!(
                "--socket {}: a unix:// address needs an absolute path, as in unix:///run/kms.sock",
                raw.display()
            )));
        }
        rest
    } else if let Some(rest) = bytes.strip_prefix(b"unix:") {
        rest
    } else {
        bytes
    };
    if path.is_empty() {
        return Err(BenchError::InvalidArgs(format!(
            "--socket {:?} names no path; pass e.g. /run/coffer/kms.sock or unix:///run/coffer/kms.sock",
            raw.display().to_string()
        )));
    }
    Ok(PathBuf::from(OsStr::from_bytes(path)))
}

/// Checks that `path` exists and is a unix socket, so the user gets a precise message rather
/// than a transport error.
pub(crate) fn check_socket(path: &Path) -> Result<(), BenchError> {
    match std::fs::metadata(path) {
        Ok(md) if md.file_type().is_socket() => Ok(()),
        Ok(_) => Err(BenchError::NotASocket {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BenchError::SocketMissing {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(BenchError::Connect {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }),
    }
}

/// Opens one HTTP/2 connection to the plugin socket (eagerly, so connection errors surface here).
pub(crate) async fn connect(path: &Path, connect_timeout: Duration) -> Result<Channel, BenchError> {
    let target = path.to_path_buf();
    // The authority is ignored by the connector; it only has to be a valid URI.
    let endpoint = Endpoint::from_static("http://localhost").connect_timeout(connect_timeout);
    endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let p = target.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .map_err(|e| BenchError::Connect {
            path: path.to_path_buf(),
            detail: chain(&e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(s: &str) -> Result<PathBuf, BenchError> {
        socket_path(Path::new(s))
    }

    #[test]
    fn plain_paths_pass_through() {
        assert_eq!(sp("/run/kms.sock").unwrap(), PathBuf::from("/run/kms.sock"));
        assert_eq!(sp("rel/kms.sock").unwrap(), PathBuf::from("rel/kms.sock"));
    }

    #[test]
    fn unix_scheme_is_stripped() {
        assert_eq!(
            sp("unix:///var/run/kmsplugin/socket.sock").unwrap(),
            PathBuf::from("/var/run/kmsplugin/socket.sock")
        );
        assert_eq!(sp("unix:rel.sock").unwrap(), PathBuf::from("rel.sock"));
        assert_eq!(sp("unix:/abs.sock").unwrap(), PathBuf::from("/abs.sock"));
    }

    #[test]
    fn bad_unix_addresses_are_rejected_with_a_hint() {
        let e = sp("unix://host/kms.sock").unwrap_err().to_string();
        assert!(e.contains("unix:///"), "{e}");
        assert!(matches!(sp("unix://"), Err(BenchError::InvalidArgs(_))));
        assert!(matches!(sp("unix:"), Err(BenchError::InvalidArgs(_))));
        assert!(matches!(sp(""), Err(BenchError::InvalidArgs(_))));
    }

    #[test]
    fn check_socket_distinguishes_missing_and_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.sock");
        let e = check_socket(&missing).unwrap_err();
        assert!(matches!(e, BenchError::SocketMissing { .. }));
        assert!(e.to_string().contains(&missing.display().to_string()));

        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            check_socket(&file),
            Err(BenchError::NotASocket { .. })
        ));

        let sock = dir.path().join("ok.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        check_socket(&sock).unwrap();
    }
}

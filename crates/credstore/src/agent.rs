//! The agent protocol: over a user-private unix socket, one JSON request line, one JSON
//! response line, then the connection closes. Both directions are bounded.
//!
//! Requests: `{"op":"get","id":ID}`, `{"op":"status"}`, `{"op":"lock"}`. A response carries
//! `error` when the request failed, else what was asked for (`credential` and `expires_unix`,
//! or `ids`, `protection` and `expires_unix`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{Credential, Error};

/// Environment variable naming the agent's socket (both for the agent and its clients).
pub const SOCKET_ENV: &str = "COFFER_AGENT_SOCKET";
/// The largest request line, newline included.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// The largest response line, newline included.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// How long either side waits for the other to send or take a line.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// The credential stored under `id`.
    Get {
        /// The store id (the exec plugin's `--id`).
        id: String,
    },
    /// Which ids the agent holds, its protection and expiry.
    Status,
    /// Forget every credential now and exit.
    Lock,
}

/// The agent's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Response {
    /// Why the request failed (nothing secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the agent forgets its credentials, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix: Option<u64>,
    /// The credential asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<Credential>,
    /// The ids held (status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// The store's protection (status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protection: Option<String>,
}

/// The default socket: `$XDG_RUNTIME_DIR/coffer/agent.sock`, else
/// `$HOME/.kube/coffer/agent.sock` (both in directories only the user can enter).
pub fn default_socket_path() -> Option<PathBuf> {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    non_empty("XDG_RUNTIME_DIR")
        .map(|dir| PathBuf::from(dir).join("coffer/agent.sock"))
        .or_else(|| non_empty("HOME").map(|h| PathBuf::from(h).join(".kube/coffer/agent.sock")))
}

/// Whether the agent answers a peer: only processes of the agent's own user, whatever their
/// privileges elsewhere (root included), since the credentials are that user's.
pub fn peer_allowed(agent_uid: u32, peer_uid: u32) -> bool {
    agent_uid == peer_uid
}

/// Reads one line of at most `max` bytes (newline included) into zeroized memory; a longer
/// line is `InvalidData`, a line cut off by EOF is `UnexpectedEof`.
pub fn read_line(reader: &mut impl BufRead, max: usize) -> io::Result<Zeroizing<Vec<u8>>> {
    let mut line = Zeroizing::new(Vec::with_capacity(max));
    reader.take(max as u64).read_until(b'\n', &mut line)?;
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(line);
    }
    if line.len() >= max {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
    }
    Err(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "connection closed mid-line",
    ))
}

/// Sends `request` to the agent at `socket` and returns its answer.
///
/// [`Error::AgentNotRunning`] when nothing listens there (no socket, or a stale one).
pub fn call(socket: &Path, request: &Request) -> Result<Response, Error> {
    let failed = |problem: String| Error::Agent {
        socket: socket.to_path_buf(),
        problem,
    };
    let mut stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(Error::AgentNotRunning {
                socket: socket.to_path_buf(),
            })
        }
        Err(e) => return Err(failed(format!("connecting: {e}"))),
    };
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
        .map_err(|e| failed(e.to_string()))?;
    let mut line = serde_json::to_vec(request).map_err(|e| failed(e.to_string()))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .map_err(|e| failed(format!("sending: {e}")))?;
    let answer = read_line(&mut BufReader::new(stream), MAX_RESPONSE_BYTES)
        .map_err(|e| failed(format!("reading the answer: {e}")))?;
    // serde_json's messages can quote the offending value, which may be credential bytes:
    // only the position is reported.
    serde_json::from_slice(&answer).map_err(|e| {
        failed(format!(
            "unreadable answer (at byte {} of its line; is the agent the same version?)",
            e.column()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_agents_own_user_is_answered() {
        assert!(peer_allowed(1000, 1000));
        assert!(!peer_allowed(1000, 0), "root is another user here");
        assert!(!peer_allowed(1000, 1001));
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(0, 1000));
    }

    #[test]
    fn lines_are_bounded() {
        let mut ok = io::Cursor::new(b"{\"op\":\"status\"}\nrest".to_vec());
        let line = read_line(&mut ok, MAX_REQUEST_BYTES).unwrap();
        let request: Request = serde_json::from_slice(&line).unwrap();
        assert_eq!(request, Request::Status);
        let long = vec![b'x'; MAX_REQUEST_BYTES + 10];
        let err = read_line(&mut io::Cursor::new(long), MAX_REQUEST_BYTES).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let cut = read_line(&mut io::Cursor::new(b"{\"op\"".to_vec()), 100).unwrap_err();
        assert_eq!(cut.kind(), io::ErrorKind::UnexpectedEof);
        assert!(serde_json::from_str::<Request>(r#"{"op":"get"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"dump"}"#).is_err());
    }

    #[test]
    fn a_missing_or_stale_socket_means_no_agent() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let err = call(&socket, &Request::Status).unwrap_err();
        assert!(matches!(err, Error::AgentNotRunning { .. }), "{err}");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let err = call(&socket, &Request::Status).unwrap_err();
        assert!(matches!(err, Error::AgentNotRunning { .. }), "{err}");
    }
}

//! The running agent: unlock, hold, serve the socket, forget.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_credstore::agent::{self, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use zeroize::Zeroizing;

use super::held::Held;
use crate::credential::unlock;
use crate::error::Error;

/// Why the agent stopped serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Expired,
    Locked,
    Signal,
}

struct State {
    held: BTreeMap<String, Held>,
    protection: String,
    expires_unix: u64,
    uid: u32,
}

/// Unlocks `store`, serves `socket` until `timeout` ends or a lock request, then forgets.
pub(super) fn run(store: &Path, socket: &Path, timeout: Duration) -> Result<ExitCode, Error> {
    if let Err(e) = coffer_platform::process::harden() {
        eprintln!(
            "warning: could not disable core dumps ({e}); credentials could reach a core file"
        );
    }
    match agent::call(socket, &Request::Status) {
        Ok(_) => {
            return Err(Error::new(format!(
                "an agent is already running at {} (stop it with `kubectl coffer agent lock`)",
                socket.display()
            )))
        }
        Err(coffer_credstore::Error::AgentNotRunning { .. }) => {}
        Err(e) => return Err(Error::new(e.to_string())),
    }
    let opened = unlock::open_store(store, unlock::terminal())?;
    let mut held = BTreeMap::new();
    for id in opened.ids() {
        let credential = opened.get(id).map_err(unlock::store_error)?;
        held.insert(id.to_string(), Held::new(credential).map_err(Error::new)?);
    }
    let protection = opened.protection().describe();
    let protection_name = opened.protection().name().to_string();
    // The store's unsealed copy goes now; only the locked copies remain.
    drop(opened);
    if held.is_empty() {
        return Err(Error::new(format!(
            "{} holds no credentials: protect a kubeconfig user first",
            store.display()
        )));
    }
    if held.values().any(|h| !h.is_locked()) {
        eprintln!(
            "warning: could not lock the credentials into memory (RLIMIT_MEMLOCK too low?): they \
             may be written to swap"
        );
    }
    let expires_unix = unix_now() + timeout.as_secs();
    let state = State {
        held,
        protection: protection_name,
        expires_unix,
        uid: coffer_platform::process::current_uid(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::new(format!("starting the agent's runtime: {e}")))?;
    let stop = runtime.block_on(async {
        let listener = bind(socket)?;
        eprintln!(
            "kubectl coffer agent: holding {} credential(s) from {} in locked memory until {} \
             (--timeout {}); socket {}\nprotection: {protection}\n`kubectl coffer agent lock` \
             makes it forget them now",
            state.held.len(),
            store.display(),
            rfc3339(expires_unix),
            humantime::format_duration(timeout),
            socket.display(),
        );
        let stop = serve(&listener, &state, timeout).await;
        Ok::<_, Error>(stop)
    });
    // Forget first, then remove the socket, whatever happened while serving.
    drop(state);
    let _ = fs::remove_file(socket);
    let reason = match stop? {
        Stop::Expired => "its --timeout ended",
        Stop::Locked => "`kubectl coffer agent lock`",
        Stop::Signal => "a signal",
    };
    eprintln!("kubectl coffer agent: forgot the credentials ({reason}) and exits");
    Ok(ExitCode::SUCCESS)
}

async fn serve(listener: &UnixListener, state: &State, timeout: Duration) -> Stop {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        tokio::select! {
            // Expiry and signals first: nothing is handed out once the time is up.
            biased;
            () = tokio::time::sleep_until(deadline) => return Stop::Expired,
            _ = tokio::signal::ctrl_c() => return Stop::Signal,
            Some(()) = async { match terminate.as_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            } } => return Stop::Signal,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                // One connection at a time, each bounded by IO_TIMEOUT: the only clients are
                // the user's own short-lived kubectl runs.
                let handled = tokio::time::timeout(agent::IO_TIMEOUT, handle(stream, state)).await;
                if handled == Ok(Some(Stop::Locked)) {
                    return Stop::Locked;
                }
            }
        }
    }
}

/// Answers one connection; `Some(Stop::Locked)` when it asked the agent to lock.
async fn handle(mut stream: UnixStream, state: &State) -> Option<Stop> {
    let peer_uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            eprintln!(
                "kubectl coffer agent: refused a connection: its credentials are unreadable ({e})"
            );
            return None;
        }
    };
    let mut line = Zeroizing::new(Vec::with_capacity(agent::MAX_REQUEST_BYTES));
    let read = BufReader::new(&mut stream)
        .take(agent::MAX_REQUEST_BYTES as u64)
        .read_until(b'\n', &mut line)
        .await;
    if read.is_err() || line.last() != Some(&b'\n') {
        let bad = Response {
            error: Some("bad request: expected one JSON line of at most 4096 bytes".into()),
            ..Response::default()
        };
        let _ = write_json(&mut stream, &bad).await;
        return None;
    }
    // Checked after reading the (bounded) request, so the refused client reads the refusal
    // instead of failing to send.
    if !agent::peer_allowed(state.uid, peer_uid) {
        eprintln!(
            "kubectl coffer agent: refused a connection from uid {peer_uid} (only uid {} may ask)",
            state.uid
        );
        let refusal = Response {
            error: Some(format!(
                "refused: uid {peer_uid} is not the agent's user (uid {})",
                state.uid
            )),
            ..Response::default()
        };
        let _ = write_json(&mut stream, &refusal).await;
        return None;
    }
    let request = match serde_json::from_slice::<Request>(&line) {
        Ok(request) => request,
        Err(e) => {
            let bad = Response {
                error: Some(format!("bad request: {e}")),
                ..Response::default()
            };
            let _ = write_json(&mut stream, &bad).await;
            return None;
        }
    };
    match request {
        Request::Get { id } => match state.held.get(&id) {
            Some(held) => {
                let prefix = format!("{{\"expires_unix\":{},\"credential\":", state.expires_unix);
                let mut answer =
                    Zeroizing::new(Vec::with_capacity(prefix.len() + held.json().len() + 2));
                answer.extend_from_slice(prefix.as_bytes());
                answer.extend_from_slice(held.json());
                answer.extend_from_slice(b"}\n");
                let _ = stream.write_all(&answer).await;
                eprintln!("kubectl coffer agent: handed out credential {id:?}");
                None
            }
            None => {
                let missing = Response {
                    error: Some(format!(
                        "the agent holds no credential with id {id:?} (it holds: {})",
                        state.held.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                    ..Response::default()
                };
                let _ = write_json(&mut stream, &missing).await;
                None
            }
        },
        Request::Status => {
            let status = Response {
                expires_unix: Some(state.expires_unix),
                ids: Some(state.held.keys().cloned().collect()),
                protection: Some(state.protection.clone()),
                ..Response::default()
            };
            let _ = write_json(&mut stream, &status).await;
            None
        }
        Request::Lock => {
            let _ = write_json(&mut stream, &Response::default()).await;
            Some(Stop::Locked)
        }
    }
}

async fn write_json(stream: &mut UnixStream, response: &Response) -> io::Result<()> {
    let mut line = serde_json::to_vec(response).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

/// Binds the socket, mode 0600, in a directory of this user's (created 0700), replacing a
/// stale socket file (a live agent was ruled out before).
fn bind(socket: &Path) -> Result<UnixListener, Error> {
    let dir = match socket.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io_error = |action: &str, path: &Path, e: io::Error| {
        Error::new(format!("{action} {}: {e}", path.display()))
    };
    coffer_credstore::create_private_dir(dir).map_err(unlock::store_error)?;
    match fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("removing the stale socket", socket, e)),
    }
    let listener = UnixListener::bind(socket).map_err(|e| io_error("listening on", socket, e))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o600))
        .map_err(|e| io_error("restricting to mode 0600", socket, e))?;
    Ok(listener)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `unix` seconds as RFC 3339 (UTC), for people.
pub(super) fn rfc3339(unix: u64) -> String {
    crate::credential::exec::rfc3339(unix).unwrap_or_else(|| unix.to_string())
}

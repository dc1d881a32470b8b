//! `kubectl coffer credential`: the exec credential plugin that kubectl runs for a protected
//! kubeconfig user. It prints a `client.authentication.k8s.io/v1` ExecCredential on stdout —
//! from the agent when one runs, else unsealed from the store — and nothing secret elsewhere.

pub(crate) mod exec;
pub(crate) mod unlock;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args as ClapArgs;
use coffer_credstore::agent::{self, Request, Response};
use coffer_credstore::{Credential, STORE_ENV};

use crate::error::Error;

/// How long kubectl may keep a credential the plugin unsealed itself before asking again.
const UNSEALED_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Arguments of `kubectl coffer credential` (written into the kubeconfig by `protect`).
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// The sealed credential store [default: ~/.kube/coffer/credentials.sealed].
    #[arg(long, env = STORE_ENV, value_name = "FILE")]
    pub store: Option<PathBuf>,
    /// The credential's id in the store.
    #[arg(long)]
    pub id: String,
    /// The agent's socket [default: $XDG_RUNTIME_DIR/coffer/agent.sock].
    #[arg(long, env = agent::SOCKET_ENV, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

/// Runs `kubectl coffer credential`.
pub fn run(args: Args) -> Result<ExitCode, Error> {
    // Keeps the unsealed credential out of core dumps; failure only loses that extra.
    let _ = coffer_platform::process::harden();
    let store_path = unlock::store_path(args.store)?;
    let socket = unlock::socket_path(args.socket)?;
    let agent_said = match agent::call(
        &socket,
        &Request::Get {
            id: args.id.clone(),
        },
    ) {
        Ok(Response {
            credential: Some(credential),
            expires_unix: Some(expires),
            ..
        }) => return print(&credential, expires),
        Ok(Response {
            error: Some(problem),
            ..
        }) => format!("the agent at {} answered: {problem}", socket.display()),
        Ok(_) => format!(
            "the agent at {} gave an incomplete answer",
            socket.display()
        ),
        Err(coffer_credstore::Error::AgentNotRunning { .. }) => {
            format!("no kubectl coffer agent is running at {}", socket.display())
        }
        Err(e) => e.to_string(),
    };
    // Every failure from here on also says why the agent did not answer, which is usually
    // what the user has to fix.
    let with_agent_note = |e: Error| Error::new(format!("{agent_said}, and {e}"));
    let store = unlock::open_store(&store_path, exec::interactive()).map_err(with_agent_note)?;
    let credential = store
        .get(&args.id)
        .map_err(|e| with_agent_note(Error::new(e.to_string())))?;
    let expires = SystemTime::now()
        .checked_add(UNSEALED_LIFETIME)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    print(credential, expires)
}

fn print(credential: &Credential, expires_unix: u64) -> Result<ExitCode, Error> {
    let json = exec::exec_credential(credential, expires_unix)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&json)
        .and_then(|()| out.flush())
        .map_err(|e| Error::new(format!("writing the ExecCredential to stdout: {e}")))?;
    Ok(ExitCode::SUCCESS)
}

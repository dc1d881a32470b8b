//! `kubectl coffer agent`: unlocks the credential store once and holds the credentials in
//! locked memory for `--timeout`, answering `kubectl coffer credential` on a user-private unix
//! socket, so kubectl does not ask for the passphrase on every call. When the time is up, or on
//! `kubectl coffer agent lock`, it forgets them (zeroized) and exits.

mod held;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args as ClapArgs, Subcommand};
use coffer_credstore::agent::{self, Request};
use coffer_credstore::STORE_ENV;

use crate::credential::unlock;
use crate::error::Error;

const MIN_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Arguments of `kubectl coffer agent`.
#[derive(ClapArgs, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Talk to a running agent instead of starting one.
    #[command(subcommand)]
    pub action: Option<Action>,
    /// How long to hold the credentials (1s to 24h); then the agent forgets them and exits.
    #[arg(long, default_value = "15m", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// The sealed credential store [default: ~/.kube/coffer/credentials.sealed].
    #[arg(long, env = STORE_ENV, value_name = "FILE")]
    pub store: Option<PathBuf>,
    /// The agent's socket [default: $XDG_RUNTIME_DIR/coffer/agent.sock].
    #[arg(long, env = agent::SOCKET_ENV, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
}

/// What to ask a running agent.
#[derive(Subcommand, Debug)]
pub enum Action {
    /// Make the running agent forget its credentials now (it exits).
    Lock,
    /// Show which credentials the running agent holds, and until when.
    Status,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    crate::duration::parse_within(text, MIN_TIMEOUT, MAX_TIMEOUT)
}

/// Runs `kubectl coffer agent [lock|status]`.
pub fn run(args: Args) -> Result<ExitCode, Error> {
    let socket = unlock::socket_path(args.socket)?;
    match args.action {
        None => server::run(&unlock::store_path(args.store)?, &socket, args.timeout),
        Some(Action::Lock) => {
            let answer = agent::call(&socket, &Request::Lock).map_err(not_running_hint)?;
            if let Some(problem) = answer.error {
                return Err(Error::new(problem));
            }
            println!(
                "the agent at {} forgot its credentials and exits",
                socket.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Action::Status) => {
            let answer = agent::call(&socket, &Request::Status).map_err(not_running_hint)?;
            if let Some(problem) = answer.error {
                return Err(Error::new(problem));
            }
            let ids = answer.ids.unwrap_or_default();
            println!("agent: {}", socket.display());
            println!(
                "protection: {}",
                answer.protection.as_deref().unwrap_or("unknown")
            );
            println!("credentials: {}", ids.join(", "));
            if let Some(expires) = answer.expires_unix {
                println!("forgets them at: {}", server::rfc3339(expires));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn not_running_hint(e: coffer_credstore::Error) -> Error {
    match e {
        coffer_credstore::Error::AgentNotRunning { .. } => Error::new(format!(
            "{e} (it exits when its --timeout ends or on `kubectl coffer agent lock`; start one \
             with `kubectl coffer agent`)"
        )),
        other => Error::new(other.to_string()),
    }
}

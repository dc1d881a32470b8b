//! The command line: `kubectl coffer <command>`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error::Error;

/// kubectl coffer: seal Secret values to the Coffer key service's attested key, and keep
/// kubeconfig credentials off the disk.
#[derive(Parser, Debug)]
#[command(name = "kubectl coffer", bin_name = "kubectl coffer", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Sealing Secret values (fetch-key, verify-key, seal, create, reseal, inspect).
    #[command(flatten)]
    Seal(crate::seal::Command),
    /// Move kubeconfig credentials into a sealed store (protect) or back (restore).
    #[command(subcommand)]
    Kubeconfig(crate::kubeconfig::Command),
    /// Print an ExecCredential for kubectl (used from the kubeconfig's exec section).
    Credential(crate::credential::Args),
    /// Hold unsealed credentials in locked memory so kubectl does not prompt on every call.
    Agent(crate::agent::Args),
}

/// Runs a command.
pub fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Seal(command) => crate::seal::run(command),
        Command::Kubeconfig(command) => crate::kubeconfig::run(command),
        Command::Credential(args) => crate::credential::run(args),
        Command::Agent(args) => crate::agent::run(args),
    }
}

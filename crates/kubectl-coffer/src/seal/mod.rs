//! The sealing commands: fetch and pin keyd's key bundle, seal Secret values to it (offline or
//! online), create sealed Secrets through the user's kubeconfig, re-seal to the newest key, and
//! inspect sealed manifests without decrypting them.

mod create;
mod fsio;
mod input;
mod inspect;
mod keyd;
mod keys;
mod manifest;
mod reseal;
mod sealing;
mod source;
mod typed;

use std::process::ExitCode;

use clap::Subcommand;

use crate::error::Error;

// Variants are boxed: the flag structs are large and the command is parsed once.

/// The sealing commands, flattened into `kubectl coffer <command>`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Fetch a keyring's key bundle from keyd, verify keyd's evidence against a policy, and pin
    /// the bundle in a file (sealing then needs no network).
    FetchKey(Box<keys::FetchArgs>),
    /// Re-check a pinned key bundle against a policy, offline.
    VerifyKey(Box<keys::VerifyArgs>),
    /// Seal a Secret manifest (-f) or `generic NAME --from-literal …` values; prints an ordinary
    /// v1 Secret whose values are sealed.
    Seal(Box<sealing::SealArgs>),
    /// Seal and create a Secret through your kubeconfig: `create secret generic NAME …`.
    #[command(subcommand)]
    Create(Box<create::CreateCommand>),
    /// Re-seal every value of a sealed Secret file to the keyring's newest sealing key,
    /// through keyd.
    Reseal(Box<reseal::ResealArgs>),
    /// Show each value's keyring, sealing key and binding, and whether it is stale; never
    /// decrypts.
    Inspect(Box<inspect::InspectArgs>),
}

/// Runs a sealing command.
pub fn run(command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::FetchKey(args) => keys::fetch(*args),
        Command::VerifyKey(args) => keys::verify(*args),
        Command::Seal(args) => sealing::run(*args),
        Command::Create(command) => create::run(*command),
        Command::Reseal(args) => reseal::run(*args),
        Command::Inspect(args) => inspect::run(*args),
    }
}

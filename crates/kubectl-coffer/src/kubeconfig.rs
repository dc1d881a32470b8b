//! Placeholder: filled in by the kubeconfig work.

use std::process::ExitCode;

use clap::Subcommand;

use crate::error::Error;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Move credentials into the sealed store (not implemented yet).
    Protect,
    /// Move credentials back (not implemented yet).
    Restore,
}

pub fn run(command: Command) -> Result<ExitCode, Error> {
    Err(Error::new(format!("{command:?}: not implemented yet")))
}

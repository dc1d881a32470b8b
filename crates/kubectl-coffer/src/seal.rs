//! Placeholder: filled in by the sealing work.

use std::process::ExitCode;

use clap::Subcommand;

use crate::error::Error;

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Seal Secret values (not implemented yet).
    Seal,
}

pub fn run(command: Command) -> Result<ExitCode, Error> {
    Err(Error::new(format!("{command:?}: not implemented yet")))
}

//! Placeholder: filled in by the kubeconfig work.

use std::process::ExitCode;

use clap::Args as ClapArgs;

use crate::error::Error;

#[derive(ClapArgs, Debug)]
pub struct Args {}

pub fn run(args: Args) -> Result<ExitCode, Error> {
    Err(Error::new(format!("{args:?}: not implemented yet")))
}

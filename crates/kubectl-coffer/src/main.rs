//! `kubectl-coffer`: the kubectl plugin (`kubectl coffer …`). Logic lives in the modules.

mod agent;
mod cli;
mod credential;
mod duration;
mod error;
mod kubeconfig;
mod seal;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

//! `coffer`: the command-line entry point. Parsing and dispatch only; the work happens in the
//! library crates under `crates/`.

mod attest;
mod cli;
mod cmd;
mod duration;
mod keyd;
mod logging;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    logging::init(&cli.log);
    match cmd::run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::from(1)
        }
    }
}

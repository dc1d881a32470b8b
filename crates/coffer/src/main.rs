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
    if let Err(e) = logging::init(&cli.log) {
        // A usage error, like a bad flag value: nothing has started.
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
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

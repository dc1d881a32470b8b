//! `coffer`: the command-line entry point. Parsing and dispatch only; the work happens in the
//! library crates under `crates/`.

mod attest;
mod cli;
mod cmd;
mod duration;
mod keyd;
mod keyd_audit;
mod keyd_bootstrap;
mod keyd_config;
mod keyd_etcd;
mod keyd_join;
mod keyd_migrate;
mod keys_root;
mod logging;
mod run;

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
            eprint!("{}", report(e.as_ref()));
            ExitCode::from(1)
        }
    }
}

/// The error and its chain of causes, one line each. Many errors already quote their source
/// in their own message (`audit log: {0}`, `#[error(transparent)]`); a cause whose text was
/// already printed is left out rather than said twice.
fn report(error: &(dyn std::error::Error + 'static)) -> String {
    let mut printed = error.to_string();
    let mut out = format!("error: {printed}\n");
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !printed.contains(&text) {
            out.push_str(&format!("  caused by: {text}\n"));
            printed.push('\n');
            printed.push_str(&text);
        }
        source = cause.source();
    }
    out
}

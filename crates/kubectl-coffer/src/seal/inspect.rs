//! `kubectl coffer inspect`: what each value of a sealed Secret is sealed to, whether its binding
//! admits where it is, and (with a bundle) whether its key is current. Never decrypts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;
use coffer_sealed::{Location, SealedValue};

use super::keys;
use super::manifest::{Entry, SecretDoc};
use crate::error::Error;

/// `kubectl coffer inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The sealed Secret manifest (YAML or JSON; `-` for stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filename: PathBuf,
    /// A pinned key bundle: also say whether each value's key is the primary, an older key, or
    /// not in the bundle (retired, or another keyring's).
    #[arg(long, value_name = "FILE")]
    pub key_bundle: Option<PathBuf>,
    /// Exit 1 if any value is not sealed, sealed for another place, or sealed to a key other
    /// than the bundle's primary (for CI).
    #[arg(long, requires = "key_bundle")]
    pub check: bool,
}

/// Runs `inspect`.
pub fn run(args: InspectArgs) -> Result<ExitCode, Error> {
    let doc = SecretDoc::read(&args.filename)?;
    let bundle = args
        .key_bundle
        .as_deref()
        .map(|path| keys::load_pinned(path, SystemTime::now()))
        .transpose()?;
    let namespace = doc.namespace().unwrap_or_default().to_string();
    let name = doc.name().unwrap_or_default().to_string();
    println!(
        "Secret {namespace}/{name} ({})",
        doc.secret_type().unwrap_or("Opaque")
    );
    let mut rows = vec![[
        "KEY".to_string(),
        "KEYRING".to_string(),
        "SEALING KEY".to_string(),
        "BINDING".to_string(),
        "HERE".to_string(),
        "KEY STATUS".to_string(),
    ]];
    let mut stale = 0usize;
    for (key, entry) in doc.entries()? {
        let text = match entry {
            Entry::Plain(_) => {
                stale += 1;
                rows.push(row(&key, "-", "-", "-", "-", "NOT SEALED (plaintext)"));
                continue;
            }
            Entry::Sealed(text) => text,
        };
        let value = match SealedValue::parse(&text) {
            Ok(value) => value,
            Err(e) => {
                stale += 1;
                rows.push(row(&key, "-", "-", "-", "-", &format!("INVALID: {e}")));
                continue;
            }
        };
        let location = Location {
            namespace: namespace.clone(),
            secret: name.clone(),
            key: key.clone(),
        };
        let here = match value.binding().admits(&location) {
            Ok(()) => "ok".to_string(),
            Err(e) => {
                stale += 1;
                format!("NO: {e}")
            }
        };
        let status = match &bundle {
            None => "(no --key-bundle)".to_string(),
            Some(bundle) if bundle.body.keyring != value.keyring() => {
                stale += 1;
                format!("FOREIGN: bundle is keyring {:?}", bundle.body.keyring)
            }
            Some(bundle) => match bundle.body.keys.iter().find(|k| k.id == value.key_id()) {
                Some(k) if k.primary => "primary".to_string(),
                Some(_) => {
                    stale += 1;
                    "OLD: reseal".to_string()
                }
                None => {
                    stale += 1;
                    "RETIRED or unknown: reseal".to_string()
                }
            },
        };
        rows.push(row(
            &key,
            value.keyring(),
            value.key_id(),
            &value.binding().to_string(),
            &here,
            &status,
        ));
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if args.check && stale > 0 {
        eprintln!(
            "{stale} value(s) need attention (not sealed, misplaced, or not on the primary key)"
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn row(key: &str, keyring: &str, id: &str, binding: &str, here: &str, status: &str) -> [String; 6] {
    [key, keyring, id, binding, here, status].map(str::to_string)
}

//! `kubectl coffer reseal`: every sealed value of a file re-sealed to the keyring's newest
//! sealing key by keyd (after verifying keyd's bundle), everything else kept.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use coffer_sealed::SealedValue;

use super::fsio;
use super::keys;
use super::manifest::{Entry, Format, SecretDoc};
use super::sealing::print;
use super::source::KeydArgs;
use crate::error::Error;

/// `kubectl coffer reseal`.
#[derive(Args, Debug)]
pub struct ResealArgs {
    /// The sealed Secret manifest (YAML or JSON; `-` for stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filename: PathBuf,
    /// Replace the file (atomically) instead of printing the result.
    #[arg(long, conflicts_with = "output")]
    pub in_place: bool,
    /// Output format when printing.
    #[arg(short = 'o', long = "output", value_enum)]
    pub output: Option<Format>,
    #[command(flatten)]
    pub keyd: KeydArgs,
}

/// Runs `reseal`.
pub fn run(mut args: ResealArgs) -> Result<ExitCode, Error> {
    if args.in_place && args.filename == std::path::Path::new("-") {
        return Err(Error::usage("--in-place needs a file, not stdin"));
    }
    let mut doc = SecretDoc::read(&args.filename)?;
    let mut values = BTreeMap::new();
    for (key, entry) in doc.entries()? {
        let Entry::Sealed(text) = entry else {
            return Err(Error::usage(format!(
                "{}: key {key} is not sealed; seal it first with `kubectl coffer seal`",
                args.filename.display()
            )));
        };
        let value = SealedValue::parse(&text)
            .map_err(|e| Error::usage(format!("key {key:?} looks sealed but is not: {e}")))?;
        values.insert(key, value);
    }
    let keyring = match (args.keyd.keyring.as_deref(), values.values().next()) {
        (Some(k), _) => k.to_string(),
        (None, Some(v)) => v.keyring().to_string(),
        (None, None) => return Err(Error::usage("the Secret has no values to re-seal")),
    };
    if let Some(other) = values.values().find(|v| v.keyring() != keyring) {
        return Err(Error::usage(format!(
            "a value is sealed to keyring {:?}, not {keyring:?}: re-seal one keyring at a time",
            other.keyring()
        )));
    }
    args.keyd.keyring = Some(keyring.clone());
    let (bundle, _, mut keyd) = keys::fetch_verified(&args.keyd)?;
    let primary = bundle
        .primary()
        .map_err(|e| Error::new(format!("keyd's bundle has no usable primary key: {e}")))?;
    let (stale, current): (Vec<_>, Vec<_>) =
        values.iter().partition(|(_, v)| v.key_id() != primary.id());
    let mut out = BTreeMap::new();
    for (key, old) in &stale {
        let text = keyd.reseal(&keyring, &old.to_text())?;
        let new = SealedValue::parse(&text).map_err(|e| {
            Error::new(format!(
                "keyd returned an invalid sealed value for {key}: {e}"
            ))
        })?;
        if new.keyring() != old.keyring() || new.binding() != old.binding() {
            return Err(Error::new(format!(
                "keyd returned a value for {key} with another keyring or binding; refusing it"
            )));
        }
        if new.key_id() != primary.id() {
            return Err(Error::new(format!(
                "keyd re-sealed {key} to {}, but its verified bundle's primary key is {}; \
                 fetch the bundle again and retry",
                new.key_id(),
                primary.id()
            )));
        }
        out.insert((*key).clone(), new);
    }
    for (key, value) in current {
        out.insert(key.clone(), value.clone());
    }
    eprintln!(
        "re-sealed {} value(s) to {}; {} already on it",
        stale.len(),
        primary.id(),
        values.len() - stale.len()
    );
    doc.set_sealed(&out);
    let format = args.output.unwrap_or(doc.format());
    if args.in_place {
        fsio::write_atomic(&args.filename, doc.to_text(format).as_bytes())?;
    } else {
        print(&doc.to_text(format))?;
    }
    Ok(ExitCode::SUCCESS)
}

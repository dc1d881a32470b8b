//! `fetch-key` and `verify-key`: get keyd's key bundle, verify keyd's evidence against a
//! policy, and pin it; and the checks every sealing command makes on a bundle.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;
use coffer_attest::policy::Policy;
use coffer_platform::TeeType;
use coffer_sealed::bundle::{KeyBundle, VerifiedBundle, MAX_BUNDLE_LEN};

use super::fsio;
use super::keyd::Keyd;
use super::source::{KeydArgs, SourceArgs};
use crate::error::Error;

/// `kubectl coffer fetch-key`.
#[derive(Args, Debug)]
pub struct FetchArgs {
    #[command(flatten)]
    pub keyd: KeydArgs,
    /// Where to write the pinned bundle.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// Replace an existing, different bundle file (e.g. after a rotation).
    #[arg(long)]
    pub force: bool,
}

/// `kubectl coffer verify-key`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The pinned bundle to check.
    #[arg(long, value_name = "FILE")]
    pub key_bundle: PathBuf,
    /// The policy keyd's evidence must satisfy.
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// The keyring the bundle must be for.
    #[arg(long)]
    pub keyring: Option<String>,
    #[command(flatten)]
    pub sources: SourceArgs,
}

/// Runs `fetch-key`.
pub fn fetch(args: FetchArgs) -> Result<ExitCode, Error> {
    let (bundle, _, _) = fetch_verified(&args.keyd)?;
    let json = bundle.to_json();
    match std::fs::read(&args.output) {
        Ok(existing) if existing == json => {
            eprintln!("{}: unchanged", args.output.display());
            return Ok(ExitCode::SUCCESS);
        }
        Ok(_) if !args.force => {
            return Err(Error::usage(format!(
                "{} already holds a different key bundle; check the change (kubectl coffer \
                 verify-key) and pass --force to replace it",
                args.output.display()
            )))
        }
        _ => {}
    }
    fsio::write_atomic(&args.output, &json)?;
    eprintln!("pinned: {}", args.output.display());
    Ok(ExitCode::SUCCESS)
}

/// Runs `verify-key`.
pub fn verify(args: VerifyArgs) -> Result<ExitCode, Error> {
    let policy = Policy::load(&args.policy).map_err(|e| Error::usage(e.to_string()))?;
    let bundle = read_bundle(&args.key_bundle)?;
    if let Some(keyring) = &args.keyring {
        check_keyring(&bundle, keyring)?;
    }
    let verified = verify_bundle(&bundle, &policy, &args.sources)
        .map_err(|e| Error::new(format!("{}: {e}", args.key_bundle.display())))?;
    report(&bundle, &verified);
    Ok(ExitCode::SUCCESS)
}

/// Connects to keyd, fetches the keyring's bundle and verifies it against the policy; prints
/// what was verified on stderr. Returns the connection too, for further calls.
pub fn fetch_verified(args: &KeydArgs) -> Result<(KeyBundle, VerifiedBundle, Keyd), Error> {
    let (addr, keyring, policy) = args.require()?;
    let mut keyd = Keyd::connect(
        addr,
        policy.clone(),
        args.sources.options(SystemTime::now())?,
        args.timeout,
    )?;
    let bytes = keyd.key_bundle(keyring)?;
    let bundle = KeyBundle::from_json(&bytes)
        .map_err(|e| Error::new(format!("keyd at {addr} sent an invalid key bundle: {e}")))?;
    check_keyring(&bundle, keyring)?;
    let verified = verify_bundle(&bundle, &policy, &args.sources)
        .map_err(|e| Error::new(format!("keyd at {addr}: {e}")))?;
    report(&bundle, &verified);
    Ok((bundle, verified, keyd))
}

fn verify_bundle(
    bundle: &KeyBundle,
    policy: &Policy,
    sources: &SourceArgs,
) -> Result<VerifiedBundle, Error> {
    let options = sources.options(SystemTime::now())?;
    bundle.verify(policy, &options).map_err(|e| {
        Error::new(format!(
            "the key bundle does not verify: {e}; do not seal to it"
        ))
    })
}

/// Reads and parses a bundle file (structure only).
pub fn read_bundle(path: &Path) -> Result<KeyBundle, Error> {
    let bytes = fsio::read_limited(path, MAX_BUNDLE_LEN, "key bundle")?;
    KeyBundle::from_json(&bytes).map_err(|e| Error::usage(format!("{}: {e}", path.display())))
}

/// Reads a pinned bundle and checks what needs no network: structure, that keyd's evidence
/// commits to it, and that it has not expired. Warns when its evidence is simulation.
pub fn load_pinned(path: &Path, now: SystemTime) -> Result<KeyBundle, Error> {
    let bundle = read_bundle(path)?;
    bundle
        .check_pinned(now)
        .map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
    if bundle.evidence.tee == TeeType::Sim {
        sim_warning();
    }
    Ok(bundle)
}

/// Refuses a bundle of another keyring than `keyring`.
pub fn check_keyring(bundle: &KeyBundle, keyring: &str) -> Result<(), Error> {
    bundle
        .check_keyring(keyring)
        .map_err(|e| Error::usage(e.to_string()))
}

fn sim_warning() {
    eprintln!(
        "WARNING: the key bundle carries SIMULATION evidence: nothing proves its keys live in a \
         TEE, anyone could have made it; values sealed to it are not protected. For development \
         only."
    );
}

/// Prints what was verified on stderr.
fn report(bundle: &KeyBundle, verified: &VerifiedBundle) {
    if verified.claims.tee == TeeType::Sim {
        sim_warning();
    }
    eprintln!("{}", bundle.describe(verified));
}

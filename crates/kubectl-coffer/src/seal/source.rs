//! Where the sealing key comes from: a pinned key bundle (offline) or keyd, verified each time;
//! and where the collateral that verifies keyd's evidence comes from.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::Args;
use coffer_attest::policy::Policy;
use coffer_attest::sources::VerifySources;
use coffer_attest::VerifyOptions;
use coffer_sealed::bundle::KeyBundle;

use super::keys;
use crate::error::Error;

/// Where the DCAP collateral and SEV-SNP VCEKs that verify keyd's evidence come from (the
/// flags of `coffer attest verify`). Simulation evidence needs none of them.
#[derive(Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// Directory of DCAP collateral JSON files (air-gapped sites).
    #[arg(long)]
    pub collateral_dir: Option<PathBuf>,
    /// PCCS or Intel PCS base URL to fetch DCAP collateral from (cached in --cache-dir).
    #[arg(long, conflicts_with = "collateral_dir", requires = "cache_dir")]
    pub pccs_url: Option<String>,
    /// Cache directory for fetched collateral and VCEKs.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// SEV-SNP: directory of cached VCEKs, used when the evidence carries none.
    #[arg(long)]
    pub vcek_dir: Option<PathBuf>,
    /// SEV-SNP: fetch VCEKs from AMD KDS at this URL (e.g. https://kdsintf.amd.com), cached in
    /// --cache-dir.
    #[arg(long, conflicts_with = "vcek_dir", requires = "cache_dir")]
    pub kds_url: Option<String>,
    /// PEM file of CA certificates to trust for --pccs-url and --kds-url, besides Mozilla's
    /// roots and the system trust store.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

impl SourceArgs {
    /// Verification options at `now`. Simulation evidence is verified and left to the policy,
    /// which refuses it unless it says `allow_simulation: true`.
    pub fn options(&self, now: SystemTime) -> Result<VerifyOptions, Error> {
        let sources = VerifySources {
            collateral_dir: self.collateral_dir.clone(),
            pccs_url: self.pccs_url.clone(),
            cache_dir: self.cache_dir.clone(),
            vcek_dir: self.vcek_dir.clone(),
            kds_url: self.kds_url.clone(),
            ca_file: self.ca_file.clone(),
            ..VerifySources::default()
        };
        sources
            .options(now)
            .map_err(|e| Error::usage(e.to_string()))
    }
}

/// keyd's address, the keyring, and how keyd's evidence is verified.
#[derive(Args, Debug, Clone)]
pub struct KeydArgs {
    /// keyd's address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub keyd: Option<String>,
    /// The keyring to seal to (with --key-bundle: must be the bundle's keyring).
    #[arg(long)]
    pub keyring: Option<String>,
    /// The policy keyd's evidence must satisfy (measurement, TCB, debug; simulation is
    /// refused unless the policy allows it).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// How long connecting to keyd (TCP and TLS handshake), and then each call to it, may take
    /// (1s to 5m).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_keyd_timeout)]
    pub timeout: Duration,
    #[command(flatten)]
    pub sources: SourceArgs,
}

/// The bounds of `--timeout`: a keyd that answers at all does so well within a second; five
/// minutes outlasts any sane network path.
const MIN_KEYD_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_KEYD_TIMEOUT: Duration = Duration::from_secs(5 * 60);

fn parse_keyd_timeout(text: &str) -> Result<Duration, String> {
    crate::duration::parse_within(text, MIN_KEYD_TIMEOUT, MAX_KEYD_TIMEOUT)
}

impl KeydArgs {
    /// The keyd address, keyring and policy, or a usage error naming the missing flag.
    pub fn require(&self) -> Result<(&str, &str, Policy), Error> {
        let addr = self
            .keyd
            .as_deref()
            .ok_or_else(|| Error::usage("give keyd's address with --keyd HOST:PORT"))?;
        let keyring = self
            .keyring
            .as_deref()
            .ok_or_else(|| Error::usage("give the keyring with --keyring NAME"))?;
        let path = self.policy.as_deref().ok_or_else(|| {
            Error::usage(
                "give the policy keyd's evidence must satisfy with --policy FILE \
                 (see `coffer attest` for writing one)",
            )
        })?;
        let policy = Policy::load(path).map_err(|e| Error::usage(e.to_string()))?;
        Ok((addr, keyring, policy))
    }
}

/// The sealing key: a pinned bundle (offline) or keyd (verified on every run).
#[derive(Args, Debug, Clone)]
pub struct KeySourceArgs {
    /// A pinned key bundle from `fetch-key`: seal offline, without any network access.
    #[arg(long, value_name = "FILE", conflicts_with = "keyd")]
    pub key_bundle: Option<PathBuf>,
    #[command(flatten)]
    pub keyd: KeydArgs,
}

impl KeySourceArgs {
    /// The bundle to seal to: the pinned one, checked (structure, commitment, expiry), or one
    /// fetched from keyd and fully verified against the policy.
    pub fn bundle(&self) -> Result<KeyBundle, Error> {
        let bundle =
            match &self.key_bundle {
                Some(path) => keys::load_pinned(path, SystemTime::now())?,
                None if self.keyd.keyd.is_some() => keys::fetch_verified(&self.keyd)?.0,
                None => return Err(Error::usage(
                    "no sealing key: give a pinned bundle with --key-bundle FILE (offline; see \
                     `kubectl coffer fetch-key`) or --keyd HOST:PORT --keyring NAME --policy FILE",
                )),
            };
        if let Some(keyring) = &self.keyd.keyring {
            keys::check_keyring(&bundle, keyring)?;
        }
        Ok(bundle)
    }
}

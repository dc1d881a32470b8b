//! The TEE platform layer.
//!
//! Everything Coffer needs from a Trusted Execution Environment goes through the [`Platform`]
//! trait: a sealing key bound to the TEE's identity (and, in the attestation work, evidence bound
//! to report data). Backends:
//!
//! * [`sim::SimPlatform`] — development and CI only. Its "sealing key" is a file on disk; it
//!   protects nothing and says so on every start.
//!
//! Key material in memory lives in [`secret::Locked`] pages (mlocked, excluded from core dumps,
//! zeroized on drop), and [`process::harden`] disables core dumps for server processes.
//! This crate is the only one in Coffer that uses `unsafe`.

#![deny(missing_docs)]

pub mod durable;
mod error;
pub mod process;
pub mod sealing;
pub mod secret;
pub mod sim;

pub use error::{fill_random, PlatformError};
pub use sealing::SealingKey;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The kind of TEE a [`Platform`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PlatformKind {
    /// Simulation: no TEE, no protection. For development and tests only.
    Sim,
}

impl PlatformKind {
    /// The stable name used on the command line and in state files.
    pub fn name(self) -> &'static str {
        match self {
            PlatformKind::Sim => "sim",
        }
    }

    /// Parses a name given on the command line. `auto` is handled by [`open_platform`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sim" => Some(PlatformKind::Sim),
            _ => None,
        }
    }
}

impl fmt::Display for PlatformKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The kind of hardware evidence, independent of the LibOS that produced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TeeType {
    /// Simulation evidence (signed by a per-installation key; proves nothing).
    Sim,
    /// Intel SGX DCAP quote (v3).
    Sgx,
    /// Intel TDX DCAP quote (v4).
    Tdx,
    /// AMD SEV-SNP attestation report.
    Snp,
}

impl TeeType {
    /// Stable lower-case name (`sim`, `sgx`, `tdx`, `snp`), used in policies and JSON.
    pub fn name(self) -> &'static str {
        match self {
            TeeType::Sim => "sim",
            TeeType::Sgx => "sgx",
            TeeType::Tdx => "tdx",
            TeeType::Snp => "snp",
        }
    }

    /// Parses [`TeeType::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "sim" => TeeType::Sim,
            "sgx" => TeeType::Sgx,
            "tdx" => TeeType::Tdx,
            "snp" => TeeType::Snp,
            _ => return None,
        })
    }
}

impl fmt::Display for TeeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Attestation evidence bound to 64 bytes of report data, as produced by a [`Platform`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// What kind of evidence `report` is.
    pub tee: TeeType,
    /// The quote (SGX/TDX), attestation report (SNP) or simulation evidence, as raw bytes.
    pub report: Vec<u8>,
    /// Certificates delivered with the evidence: for SNP, the GUID certificate table from
    /// configfs-tsm `auxblob` (holding the VCEK); empty otherwise.
    pub certificates: Vec<u8>,
}

/// A Trusted Execution Environment, as Coffer uses it.
pub trait Platform: Send + Sync + fmt::Debug {
    /// Which TEE this is.
    fn kind(&self) -> PlatformKind;

    /// True when this platform offers no hardware protection at all.
    fn is_simulation(&self) -> bool {
        self.kind() == PlatformKind::Sim
    }

    /// A 256-bit key bound to this TEE's identity, derived for one `purpose` (a short label such
    /// as `"coffer keystore v1"`), so that keys for different uses are independent.
    ///
    /// The same TEE identity and purpose always yield the same key; another identity cannot
    /// obtain it.
    fn sealing_key(&self, purpose: &str) -> Result<SealingKey, PlatformError>;

    /// Attestation evidence whose report data is exactly `report_data`, so a verifier can
    /// check what the TEE vouches for (e.g. a hash of a TLS public key).
    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError>;
}

/// Which platform to open, as chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformChoice {
    /// Detect the TEE the environment offers.
    Auto,
    /// A named backend.
    Named(PlatformKind),
}

impl std::str::FromStr for PlatformChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "auto" {
            return Ok(PlatformChoice::Auto);
        }
        PlatformKind::from_name(s)
            .map(PlatformChoice::Named)
            .ok_or_else(|| format!("unknown platform {s:?}; expected one of: auto, sim"))
    }
}

/// Whether opening a platform may create its per-installation files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Create missing files (first start of a server, `keys init`).
    CreateIfMissing,
    /// Only use what exists (read-only and maintenance commands).
    ExistingOnly,
}

/// Opens the chosen platform. `state_dir` holds per-installation files of backends that need
/// them (the simulation key).
pub fn open_platform(
    choice: PlatformChoice,
    state_dir: &Path,
    access: Access,
) -> Result<Arc<dyn Platform>, PlatformError> {
    match (choice, access) {
        (PlatformChoice::Named(PlatformKind::Sim), Access::CreateIfMissing) => {
            Ok(Arc::new(sim::SimPlatform::open_or_create(state_dir)?))
        }
        (PlatformChoice::Named(PlatformKind::Sim), Access::ExistingOnly) => {
            Ok(Arc::new(sim::SimPlatform::open_existing(state_dir)?))
        }
        (PlatformChoice::Auto, _) => Err(PlatformError::NoTeeDetected),
    }
}

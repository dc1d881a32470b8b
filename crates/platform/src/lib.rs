//! The TEE platform layer.
//!
//! Everything Coffer needs from a Trusted Execution Environment goes through the [`Platform`]
//! trait: a sealing key bound to the TEE's identity (and, in the attestation work, evidence bound
//! to report data). Backends:
//!
//! * [`sim::SimPlatform`] — development and CI only. Its "sealing key" is a file on disk; it
//!   protects nothing and says so on every start.
//! * [`gramine::GraminePlatform`] (`sgx-gramine`) — Intel SGX under Gramine (`/dev/attestation`).
//! * [`occlum::OcclumPlatform`] (`sgx-occlum`) — Intel SGX under Occlum (`/dev/sgx` ioctls).
//! * [`tsm::TdxPlatform`] (`tdx`) — Intel TDX through configfs-tsm; no sealing key.
//! * [`tsm::SnpPlatform`] (`snp`) — AMD SEV-SNP through configfs-tsm and `/dev/sev-guest`.
//!
//! [`open_platform`] picks one ([`detect`] for `auto`). Every backend reads its devices below a
//! root directory — `/`, or `$COFFER_PLATFORM_ROOT` ([`PLATFORM_ROOT_ENV`]) so tests can point
//! the binaries at a fake device tree.
//!
//! Key material in memory lives in [`secret::Locked`] pages (mlocked, excluded from core dumps,
//! zeroized on drop), and [`process::harden`] disables core dumps for server processes.
//! This crate is the only one in Coffer that uses `unsafe`.

#![deny(missing_docs)]

pub mod dcap_quote;
pub mod detect;
pub mod durable;
mod error;
pub mod gramine;
pub mod occlum;
pub mod process;
pub mod sealing;
pub mod secret;
pub mod sevguest;
mod sgx;
pub mod sim;
pub mod tsm;

pub use error::{fill_random, PlatformError};
pub use sealing::SealingKey;
pub use sgx::SealPolicy;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// The kind of TEE a [`Platform`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PlatformKind {
    /// Simulation: no TEE, no protection. For development and tests only.
    Sim,
    /// Intel SGX under the Gramine LibOS (`sgx-gramine`).
    SgxGramine,
    /// Intel SGX under the Occlum LibOS (`sgx-occlum`).
    SgxOcclum,
    /// Intel TDX (`tdx`). Evidence only: TDX has no sealing key.
    Tdx,
    /// AMD SEV-SNP (`snp`).
    Snp,
}

impl PlatformKind {
    /// The stable name used on the command line and in state files.
    pub fn name(self) -> &'static str {
        match self {
            PlatformKind::Sim => "sim",
            PlatformKind::SgxGramine => "sgx-gramine",
            PlatformKind::SgxOcclum => "sgx-occlum",
            PlatformKind::Tdx => "tdx",
            PlatformKind::Snp => "snp",
        }
    }

    /// Every kind, in the order they are listed to users.
    pub const ALL: [PlatformKind; 5] = [
        PlatformKind::Sim,
        PlatformKind::SgxGramine,
        PlatformKind::SgxOcclum,
        PlatformKind::Tdx,
        PlatformKind::Snp,
    ];

    /// The kind of evidence this platform produces.
    pub fn tee_type(self) -> TeeType {
        match self {
            PlatformKind::Sim => TeeType::Sim,
            PlatformKind::SgxGramine | PlatformKind::SgxOcclum => TeeType::Sgx,
            PlatformKind::Tdx => TeeType::Tdx,
            PlatformKind::Snp => TeeType::Snp,
        }
    }

    /// Parses a name given on the command line. `auto` is handled by [`open_platform`].
    pub fn from_name(name: &str) -> Option<Self> {
        PlatformKind::ALL.into_iter().find(|k| k.name() == name)
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
            .ok_or_else(|| {
                format!(
                    "unknown platform {s:?}; expected one of: auto, sim, sgx-gramine, \
                     sgx-occlum, tdx, snp"
                )
            })
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

/// Environment variable naming the root directory below which backends look for their
/// devices (`/dev/attestation`, `/dev/sgx`, `/sys/kernel/config/tsm`, ...). Default `/`; tests
/// point it at a fake device tree.
pub const PLATFORM_ROOT_ENV: &str = "COFFER_PLATFORM_ROOT";

/// Environment variable choosing the SGX sealing policy: `mrsigner` (default; survives
/// enclave upgrades) or `mrenclave` (only this exact enclave build). See [`SealPolicy`].
pub const SGX_SEAL_POLICY_ENV: &str = "COFFER_SGX_SEAL_POLICY";

/// The platform root: `$COFFER_PLATFORM_ROOT` or `/`.
pub fn platform_root() -> std::path::PathBuf {
    std::env::var_os(PLATFORM_ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/"))
}

fn sgx_seal_policy() -> Result<SealPolicy, PlatformError> {
    match std::env::var(SGX_SEAL_POLICY_ENV) {
        Err(_) => Ok(SealPolicy::MrSigner),
        Ok(v) => SealPolicy::from_name(&v).ok_or_else(|| PlatformError::Tee {
            backend: "sgx",
            problem: format!(
                "{SGX_SEAL_POLICY_ENV}={v:?} is not a sealing policy; use mrsigner or mrenclave"
            ),
        }),
    }
}

/// Opens the chosen platform. `state_dir` holds per-installation files of backends that need
/// them (the simulation key). Hardware backends read their devices below [`platform_root`];
/// `auto` uses [`detect::detect`] and logs what it picked and why.
pub fn open_platform(
    choice: PlatformChoice,
    state_dir: &Path,
    access: Access,
) -> Result<Arc<dyn Platform>, PlatformError> {
    let root = platform_root();
    let kind = match choice {
        PlatformChoice::Named(kind) => kind,
        PlatformChoice::Auto => match detect::detect(&root) {
            Some(found) => {
                tracing::info!(
                    platform = found.kind.name(),
                    "detected TEE platform {}: {}",
                    found.kind,
                    found.reason
                );
                found.kind
            }
            None => return Err(PlatformError::NoTeeDetected),
        },
    };
    Ok(match (kind, access) {
        (PlatformKind::Sim, Access::CreateIfMissing) => {
            Arc::new(sim::SimPlatform::open_or_create(state_dir)?)
        }
        (PlatformKind::Sim, Access::ExistingOnly) => {
            Arc::new(sim::SimPlatform::open_existing(state_dir)?)
        }
        (PlatformKind::SgxGramine, _) => {
            Arc::new(gramine::GraminePlatform::new(&root, sgx_seal_policy()?)?)
        }
        (PlatformKind::SgxOcclum, _) => {
            Arc::new(occlum::OcclumPlatform::new(&root, sgx_seal_policy()?, 0)?)
        }
        (PlatformKind::Tdx, _) => Arc::new(tsm::TdxPlatform::new(&root)?),
        (PlatformKind::Snp, _) => Arc::new(tsm::SnpPlatform::new(&root)?),
    })
}

/// Helpers for tests.
#[cfg(test)]
pub(crate) mod testutil {
    /// Runs `f` on a new thread whose effective capabilities lack `CAP_DAC_OVERRIDE` and
    /// `CAP_DAC_READ_SEARCH`, so file modes apply even when the tests run as root (Linux
    /// credentials are per thread). `None` (with a note printed) if that is impossible.
    pub fn without_file_permission_override<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        use rustix::thread::{capabilities, set_capabilities, CapabilitySet};
        std::thread::spawn(move || {
            let mut caps = match capabilities(None) {
                Ok(c) => c,
                Err(e) => {
                    println!("note: skipping permission test: capget failed: {e}");
                    return None;
                }
            };
            caps.effective
                .remove(CapabilitySet::DAC_OVERRIDE | CapabilitySet::DAC_READ_SEARCH);
            if let Err(e) = set_capabilities(None, caps) {
                println!("note: skipping permission test: capset failed: {e}");
                return None;
            }
            Some(f())
        })
        .join()
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_names_round_trip() {
        for kind in PlatformKind::ALL {
            assert_eq!(PlatformKind::from_name(kind.name()), Some(kind));
            assert_eq!(
                kind.name().parse::<PlatformChoice>(),
                Ok(PlatformChoice::Named(kind))
            );
        }
        assert_eq!("auto".parse::<PlatformChoice>(), Ok(PlatformChoice::Auto));
        let err = "sgx".parse::<PlatformChoice>().unwrap_err();
        assert!(err.contains("sgx-gramine, sgx-occlum, tdx, snp"), "{err}");
        assert_eq!(PlatformKind::SgxOcclum.tee_type(), TeeType::Sgx);
        assert_eq!(PlatformKind::Snp.to_string(), "snp");
    }
}

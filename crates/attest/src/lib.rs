//! Attestation evidence verification, offline and in pure Rust.
//!
//! One module per TEE type (`sgx`, `tdx`, `snp`, `sim`), each behind a cargo feature and each
//! with its own claim extraction, all producing the normalised [`Claims`]. [`policy`] maps claims
//! to roles.
//!
//! [`verify`] checks a piece of [`Evidence`] cryptographically — vendor certificate chains,
//! signatures, collateral dates and TCB level — and returns what it vouches for. Nothing in the
//! returned claims has been compared with a policy yet.

#![deny(missing_docs)]

pub mod claims;
pub mod policy;
pub mod yaml;

#[cfg(feature = "dcap")]
pub mod dcap;
mod error;
#[cfg(any(feature = "dcap", feature = "snp"))]
mod fsutil;
#[cfg(any(feature = "dcap", feature = "snp"))]
mod http;
#[cfg(feature = "sgx")]
pub mod sgx;
#[cfg(feature = "sim")]
pub mod sim;
#[cfg(feature = "snp")]
pub mod snp;
#[cfg(all(feature = "dcap", feature = "snp"))]
pub mod sources;
#[cfg(feature = "tdx")]
pub mod tdx;

pub use claims::{Claims, Measurements, SnpTcb};
#[cfg(feature = "dcap")]
pub use dcap::collateral::{CollateralDir, CollateralSource, NoCollateral, PccsCollateral};
pub use error::VerifyError;
#[cfg(any(feature = "dcap", feature = "snp"))]
pub use http::{CaFileError, Fetcher};
#[cfg(feature = "snp")]
pub use snp::vcek::{FixedVcek, KdsVcek, NoVcek, SnpProduct, VcekDir, VcekRequest, VcekSource};

pub use coffer_platform::{Evidence, TeeType};

use std::time::SystemTime;

/// How to verify evidence: the time to verify at, where collateral and VCEKs come from, and
/// what the evidence must commit to.
#[derive(Clone)]
pub struct VerifyOptions {
    /// The verification time: collateral and certificates must be valid at this instant.
    pub now: SystemTime,
    /// Where DCAP (SGX/TDX) collateral comes from.
    #[cfg(feature = "dcap")]
    pub collateral: std::sync::Arc<dyn CollateralSource>,
    /// Where SEV-SNP VCEKs come from when the evidence carries none.
    #[cfg(feature = "snp")]
    pub vcek: std::sync::Arc<dyn VcekSource>,
    /// When set, the evidence's report data must equal this.
    pub expected_report_data: Option<[u8; 64]>,
    /// Accept simulation evidence (development only). Off by default: simulation evidence is
    /// then refused with [`VerifyError::SimulationNotAllowed`].
    pub allow_simulation: bool,
}

impl VerifyOptions {
    /// Options verifying at `now`, with no collateral source, VCEKs only from the evidence, no
    /// expected report data, and simulation refused.
    pub fn new(now: SystemTime) -> Self {
        VerifyOptions {
            now,
            #[cfg(feature = "dcap")]
            collateral: std::sync::Arc::new(NoCollateral),
            #[cfg(feature = "snp")]
            vcek: std::sync::Arc::new(NoVcek),
            expected_report_data: None,
            allow_simulation: false,
        }
    }
}

impl std::fmt::Debug for VerifyOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("now", &self.now)
            .field(
                "expected_report_data",
                &self.expected_report_data.map(hex::encode),
            )
            .field("allow_simulation", &self.allow_simulation)
            .finish_non_exhaustive()
    }
}

/// Verifies `evidence` cryptographically and returns its claims.
///
/// The claims are not yet checked against any policy, except for what is refused whatever the
/// policy: a TCB below every known level ([`VerifyError::TcbNotMatched`]), a revoked TCB, and
/// (unless allowed) simulation evidence.
#[cfg_attr(
    not(any(feature = "sgx", feature = "tdx", feature = "snp", feature = "sim")),
    allow(unreachable_code, unused_variables)
)]
pub fn verify(evidence: &Evidence, options: &VerifyOptions) -> Result<Claims, VerifyError> {
    let claims = match evidence.tee {
        #[cfg(feature = "sgx")]
        TeeType::Sgx => sgx::verify(&evidence.report, options)?,
        #[cfg(feature = "tdx")]
        TeeType::Tdx => tdx::verify(&evidence.report, options)?,
        #[cfg(feature = "snp")]
        TeeType::Snp => snp::verify(&evidence.report, &evidence.certificates, options)?,
        #[cfg(feature = "sim")]
        TeeType::Sim => sim::verify(&evidence.report, options)?,
        tee => return Err(VerifyError::Unsupported { tee }),
    };
    check_report_data(&claims, options)?;
    Ok(claims)
}

fn check_report_data(claims: &Claims, options: &VerifyOptions) -> Result<(), VerifyError> {
    if let Some(expected) = &options.expected_report_data {
        if claims.report_data.0.as_slice() != expected.as_slice() {
            return Err(VerifyError::ReportData {
                expected: hex::encode(expected),
                actual: hex::encode(&claims.report_data.0),
            });
        }
    }
    Ok(())
}

//! Why evidence was refused.
//!
//! Every variant names what failed (which structure, which signature, which certificate chain,
//! which date), so that an operator reading a refusal knows where to look. Messages never contain
//! secrets: evidence is public by nature.

use coffer_platform::TeeType;
use std::time::{SystemTime, UNIX_EPOCH};

/// Evidence verification failed. The evidence (or the collateral used to check it) must not be
/// trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The evidence's `tee` type is not supported by this build (cargo feature disabled).
    #[error("{tee} evidence is not supported by this build (the `{tee}` feature is disabled)")]
    Unsupported {
        /// The evidence type.
        tee: TeeType,
    },
    /// The evidence could not be parsed: wrong length, wrong version, bad structure.
    #[error("{tee} evidence is malformed: {reason}")]
    Malformed {
        /// The evidence type.
        tee: TeeType,
        /// What is wrong with it.
        reason: String,
    },
    /// A signature did not verify.
    #[error("{tee} evidence: the {what} signature is invalid")]
    Signature {
        /// The evidence type.
        tee: TeeType,
        /// Which signature (e.g. "quote body (attestation key)", "TCB info", "VCEK report").
        what: &'static str,
    },
    /// A certificate chain did not lead to the vendor's root, or a certificate in it is revoked
    /// or unparsable.
    #[error("{tee} certificate chain rejected: {reason}")]
    CertificateChain {
        /// The evidence type.
        tee: TeeType,
        /// Which chain and why.
        reason: String,
    },
    /// Verification collateral (TCB info, QE identity, CRLs) is missing, unparsable, or does
    /// not belong to this evidence.
    #[error("collateral rejected: {reason}")]
    Collateral {
        /// What is wrong with it.
        reason: String,
    },
    /// The platform's TCB is below every level in the vendor's TCB info. Refused whatever the
    /// policy says.
    #[error(
        "No matching TCB level found: the platform's TCB is below every level in the TCB info"
    )]
    TcbNotMatched,
    /// The platform's TCB level is revoked (its keys are compromised). Refused whatever the
    /// policy says.
    #[error("the platform's TCB status is Revoked")]
    TcbRevoked,
    /// The quoting enclave or TDX module does not match the identity the vendor publishes.
    #[error("{tee} evidence: {reason}")]
    VendorIdentity {
        /// The evidence type.
        tee: TeeType,
        /// Which identity check failed.
        reason: String,
    },
    /// The TEE attributes make the evidence unacceptable (e.g. a migratable TD).
    #[error("{tee} evidence: unacceptable attributes: {reason}")]
    Attributes {
        /// The evidence type.
        tee: TeeType,
        /// Which attribute.
        reason: String,
    },
    /// The evidence commits to other report data than the verifier expected.
    #[error("report data mismatch: the evidence commits to {actual}, expected {expected}")]
    ReportData {
        /// Expected report data, hex.
        expected: String,
        /// Report data in the evidence, hex.
        actual: String,
    },
    /// Something (collateral, a certificate) has expired at the verification time.
    #[error("{what} expired: verification time {} is after {}", unix(*.now), unix(*.not_after))]
    Expired {
        /// What expired.
        what: String,
        /// Verification time, seconds since the Unix epoch.
        now: u64,
        /// End of validity (e.g. `nextUpdate`), seconds since the Unix epoch.
        not_after: u64,
    },
    /// Something (collateral, a certificate) is not valid yet at the verification time.
    #[error("{what} is not valid yet: verification time {} is before {}", unix(*.now), unix(*.not_before))]
    NotYetValid {
        /// What is not valid yet.
        what: String,
        /// Verification time, seconds since the Unix epoch.
        now: u64,
        /// Start of validity (e.g. `issueDate`), seconds since the Unix epoch.
        not_before: u64,
    },
    /// Simulation evidence, which proves nothing, and the options do not allow it.
    #[error("simulation evidence refused: it proves nothing, and simulation is not allowed")]
    SimulationNotAllowed,
    /// The SNP VCEK could not be found in the evidence, the cache, or the AMD KDS.
    #[error("no VCEK available: {reason}")]
    VcekUnavailable {
        /// Where it was looked for and why each failed.
        reason: String,
    },
    /// Fetching collateral or a VCEK over HTTP failed.
    #[error("fetching {url} failed: {reason}")]
    Fetch {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Reading or writing a cache or collateral file failed.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The verifier rejected the evidence for a reason not covered above (the text is the
    /// underlying verifier's).
    #[error("{tee} evidence rejected: {reason}")]
    Rejected {
        /// The evidence type.
        tee: TeeType,
        /// The underlying verifier's reason.
        reason: String,
    },
}

#[cfg_attr(
    not(any(feature = "sgx", feature = "tdx", feature = "snp", feature = "sim")),
    allow(dead_code)
)]
impl VerifyError {
    pub(crate) fn malformed(tee: TeeType, reason: impl Into<String>) -> Self {
        VerifyError::Malformed {
            tee,
            reason: reason.into(),
        }
    }

    #[cfg_attr(not(any(feature = "dcap", feature = "snp")), allow(dead_code))]
    pub(crate) fn io(path: &std::path::Path, e: impl std::fmt::Display) -> Self {
        VerifyError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

/// Seconds since the Unix epoch (0 for times before it).
#[cfg_attr(not(feature = "dcap"), allow(dead_code))]
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 rendering of a Unix time, for messages.
pub(crate) fn unix(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

/// Parses an RFC 3339 date as Intel's collateral writes it.
#[cfg_attr(not(feature = "dcap"), allow(dead_code))]
pub(crate) fn parse_rfc3339(text: &str) -> Option<u64> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

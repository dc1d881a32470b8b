//! DCAP quote verification shared by SGX (quote v3) and TDX (quotes v4 and v5), with `dcap-qvl`.
//!
//! The `ring` backend of dcap-qvl is used: it is about four times faster than the RustCrypto
//! one, and ring is already in the dependency tree (rustls for PCCS/KDS fetches).

pub mod collateral;

use crate::error::{parse_rfc3339, unix_secs};
use crate::{VerifyError, VerifyOptions};
use coffer_platform::{dcap_quote, TeeType};
use dcap_qvl::verify::VerifiedReport;
use dcap_qvl::QuoteCollateralV3;

/// Largest quote accepted (real quotes are 4–6 KiB with the embedded PCK chain).
pub(crate) const MAX_QUOTE_LEN: usize = 64 * 1024;

/// A verified quote.
pub(crate) struct Verified {
    pub report: VerifiedReport,
}

/// Parses the quote header enough to check it is the expected TEE type and version.
fn check_header(tee: TeeType, quote: &[u8]) -> Result<(), VerifyError> {
    if quote.len() > MAX_QUOTE_LEN {
        return Err(VerifyError::malformed(
            tee,
            format!("quote of {} bytes exceeds {MAX_QUOTE_LEN}", quote.len()),
        ));
    }
    if quote.len() < 48 {
        return Err(VerifyError::malformed(
            tee,
            "quote shorter than its 48-byte header",
        ));
    }
    // The same versions the generating side accepts from its own TEE (coffer_platform's
    // `dcap_quote`), so that Coffer never produces evidence it then refuses.
    let (version, tee_type) = dcap_quote::version_and_tee_type(quote).unwrap_or_default();
    let (want_type, versions) = match tee {
        TeeType::Sgx => (dcap_quote::TEE_TYPE_SGX, dcap_quote::SGX_QUOTE_VERSIONS),
        _ => (dcap_quote::TEE_TYPE_TDX, dcap_quote::TDX_QUOTE_VERSIONS),
    };
    if tee_type != want_type {
        return Err(VerifyError::malformed(
            tee,
            format!("quote header TEE type {tee_type:#x} is not {tee}"),
        ));
    }
    if !versions.contains(&version) {
        return Err(VerifyError::malformed(
            tee,
            format!("quote version {version} (expected {versions:?})"),
        ));
    }
    if version >= 4 {
        check_certification_data_type(tee, quote)?;
    }
    Ok(())
}

/// Quote v4/v5 certification data type 6: QE report certification data (QE report, its
/// signature, QE authentication data, and the inner certification data with the PCK chain).
/// Intel's `sgx_quote_4.h` and `sgx_quote_5.h` define no other outer type.
const QE_REPORT_CERTIFICATION_DATA: u16 = 6;

/// Refuses a v4/v5 quote whose outer certification data is not of type 6. dcap-qvl 0.7.1
/// decodes the outer body as QE report certification data whatever its type says
/// (`AuthDataV4::decode` in `src/quote.rs`), and no signature covers that type field, so
/// without this check a quote labelled otherwise would verify.
fn check_certification_data_type(tee: TeeType, quote: &[u8]) -> Result<(), VerifyError> {
    let parsed = dcap_qvl::quote::Quote::parse(quote)
        .map_err(|e| VerifyError::malformed(tee, format!("cannot decode quote: {e:#}")))?;
    if let dcap_qvl::quote::AuthData::V4(auth) = &parsed.auth_data {
        let outer = auth.certification_data.cert_type;
        if outer != QE_REPORT_CERTIFICATION_DATA {
            return Err(VerifyError::malformed(
                tee,
                format!(
                    "the quote's certification data has type {outer}; a quote v4/v5 must carry \
                     type {QE_REPORT_CERTIFICATION_DATA} (QE report certification data): it \
                     was not produced by Intel's quoting enclave or was altered"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that `issueDate <= now <= nextUpdate` for the TCB info and QE identity, so that a
/// wrong time is reported with the dates involved.
fn check_collateral_dates(collateral: &QuoteCollateralV3, now: u64) -> Result<(), VerifyError> {
    for (what, json) in [
        ("TCB info", &collateral.tcb_info),
        ("QE identity", &collateral.qe_identity),
    ] {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| VerifyError::Collateral {
                reason: format!("{what} is not JSON: {e}"),
            })?;
        let date = |field: &str| {
            value
                .get(field)
                .and_then(|v| v.as_str())
                .and_then(parse_rfc3339)
                .ok_or_else(|| VerifyError::Collateral {
                    reason: format!("{what} has no valid {field}"),
                })
        };
        let issue = date("issueDate")?;
        let next = date("nextUpdate")?;
        if now < issue {
            return Err(VerifyError::NotYetValid {
                what: format!("{what} (issueDate)"),
                now,
                not_before: issue,
            });
        }
        if now > next {
            return Err(VerifyError::Expired {
                what: format!("{what} (nextUpdate)"),
                now,
                not_after: next,
            });
        }
    }
    Ok(())
}

/// Verifies a DCAP quote of type `tee` with collateral from the options.
pub(crate) fn verify(
    tee: TeeType,
    quote: &[u8],
    options: &VerifyOptions,
) -> Result<Verified, VerifyError> {
    check_header(tee, quote)?;
    let collateral = options.collateral.collateral(tee, quote)?;
    let now = unix_secs(options.now);
    check_collateral_dates(&collateral, now)?;
    let report = dcap_qvl::verify::QuoteVerifier::new_prod()
        .with_config::<dcap_qvl::configs::RingConfig>()
        // Debug enclaves/TDs verify; the claims say `debug: true` and the policy decides.
        .allow_debug(true)
        .verify(quote, &collateral, now)
        .map_err(|e| classify(tee, &e))?;
    Ok(Verified { report })
}

/// Maps a dcap-qvl error (an `anyhow` chain of messages) to a [`VerifyError`] that names what
/// failed.
pub(crate) fn classify(tee: TeeType, error: &impl std::fmt::Display) -> VerifyError {
    let full = format!("{error:#}");
    let has = |s: &str| full.contains(s);
    let chain = |reason: String| VerifyError::CertificateChain { tee, reason };
    if has("No matching TCB level found") {
        VerifyError::TcbNotMatched
    } else if has("TCB status is invalid: Revoked") {
        VerifyError::TcbRevoked
    } else if has("Signature is invalid for tcb_info") {
        VerifyError::Signature {
            tee,
            what: "TCB info",
        }
    } else if has("Signature is invalid for qe_identity") {
        VerifyError::Signature {
            tee,
            what: "QE identity",
        }
    } else if has("Signature is invalid for qe_report") {
        VerifyError::Signature {
            tee,
            what: "QE report (PCK certificate)",
        }
    } else if has("ISV enclave report signature is invalid") {
        VerifyError::Signature {
            tee,
            what: "quote body (attestation key)",
        }
    } else if has("QE report hash mismatch") {
        VerifyError::Signature {
            tee,
            what: "attestation key certification (QE report data)",
        }
    } else if has("PCK certificates from quote")
        || has("PCK certificate")
        || has("Certificate chain is too short in quote")
        || has("Unsupported DCAP PCK cert format")
    {
        chain(format!("PCK certificate chain in the quote: {full}"))
    } else if has("Failed to verify certificate chain")
        || has("root ca")
        || has("Too many intermediate")
    {
        chain(format!(
            "a certificate chain (PCK chain in the quote, or a collateral signing chain) does not lead to Intel's root: {full}"
        ))
    } else if has("CRL") {
        VerifyError::Collateral { reason: full }
    } else if has("Fmspc mismatch") {
        VerifyError::Collateral {
            reason: "the TCB info is for another platform (FMSPC mismatch)".to_string(),
        }
    } else if has("TCB info in the collateral")
        || has("QE Identity id/version")
        || has("TcbInfo")
        || has("QeIdentity")
        || has("issuer chain")
        || has("Failed to parse certs")
    {
        VerifyError::Collateral { reason: full }
    } else if has("QE MRSIGNER")
        || has("QE ISVPRODID")
        || has("QE MISCSELECT")
        || has("QE ATTRIBUTES")
        || has("QE ISVSVN")
        || has("QE report validation")
        || has("TDX module")
    {
        VerifyError::VendorIdentity { tee, reason: full }
    } else if has("TD profiling")
        || has("Reserved bits in TD attributes")
        || has("TD migration")
        || has("SERVTD_EXT")
        || has("SEPT_VE_DISABLE")
        || has("MR service TD")
    {
        VerifyError::Attributes { tee, reason: full }
    } else if has("decode quote")
        || has("quote version")
        || has("QE vendor ID")
        || has("TEE type")
        || has("must have version")
        || has("attestation key type")
        || has("Invalid key length")
        || has("auth data length")
    {
        VerifyError::Malformed { tee, reason: full }
    } else if has("expired") {
        VerifyError::Collateral { reason: full }
    } else {
        VerifyError::Rejected { tee, reason: full }
    }
}

/// TCB status and advisories of a verified quote.
pub(crate) fn tcb(report: &VerifiedReport) -> (String, Vec<String>) {
    let mut advisories = report.advisory_ids.clone();
    advisories.sort();
    advisories.dedup();
    (report.status.clone(), advisories)
}

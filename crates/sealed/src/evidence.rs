//! The report data evidence *claims*, read without verifying anything: enough for a pinned
//! bundle to check that its evidence commits to its body before (or without) full verification.

use coffer_platform::{dcap_quote, sim, Evidence, TeeType};

/// SGX quote v3: the report body follows the 48-byte header; report data is at 320 in it.
const SGX_REPORT_DATA_AT: usize = dcap_quote::HEADER_LEN + 320;
/// SEV-SNP ATTESTATION_REPORT: REPORT_DATA at 0x50.
const SNP_REPORT_DATA_AT: usize = 0x50;
/// Simulation evidence: magic (20) ‖ version (2) ‖ measurement (32) ‖ report data.
const SIM_REPORT_DATA_AT: usize = 20 + 2 + 32;

/// The 64 bytes of report data `evidence` carries, or why they cannot be found.
pub(crate) fn claimed_report_data(evidence: &Evidence) -> Result<[u8; 64], String> {
    let report = &evidence.report;
    let at = match evidence.tee {
        TeeType::Sim => {
            if report.len() != sim::EVIDENCE_LEN || !report.starts_with(sim::EVIDENCE_MAGIC) {
                return Err("it is not simulation evidence".into());
            }
            SIM_REPORT_DATA_AT
        }
        TeeType::Sgx => SGX_REPORT_DATA_AT,
        TeeType::Tdx => dcap_quote::tdx_report_data_offset(report).map_err(|e| e.to_string())?,
        TeeType::Snp => SNP_REPORT_DATA_AT,
        other => return Err(format!("{other} evidence is not supported by this build")),
    };
    report
        .get(at..at + 64)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            format!(
                "it is {} bytes, too short to hold report data",
                report.len()
            )
        })
}

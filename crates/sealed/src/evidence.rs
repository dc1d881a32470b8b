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

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_attest::snp::{build_cert_table, CertEntry, VCEK_GUID};
    use coffer_attest::{CollateralDir, VerifyOptions};
    use coffer_platform::Platform as _;
    use coffer_test_fixtures::attestation_dir as fixtures;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    /// What this module reads must be what verification vouches for, for every evidence type.
    #[test]
    fn claimed_report_data_is_what_verification_vouches_for() {
        coffer_test_fixtures::skip_without_attestation_fixtures!(
            "claimed report data of vendor evidence"
        );
        // When the DCAP fixtures' collateral is valid: 2025-06-19T12:00:00Z.
        let dcap_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_334_400);
        let cases = [
            (
                TeeType::Sgx,
                "sgx",
                "sgx_quote",
                "sgx_quote_collateral.json",
            ),
            (
                TeeType::Tdx,
                "tdx",
                "tdx_quote",
                "tdx_quote_collateral.json",
            ),
        ];
        for (tee, dir, quote, collateral) in cases {
            let evidence = Evidence {
                tee,
                report: std::fs::read(fixtures().join(dir).join(quote)).unwrap(),
                certificates: Vec::new(),
            };
            let mut options = VerifyOptions::new(dcap_time);
            options.collateral =
                Arc::new(CollateralDir::with_file(fixtures().join(dir), collateral));
            let claims = coffer_attest::verify(&evidence, &options).unwrap();
            assert_eq!(
                claimed_report_data(&evidence).unwrap().to_vec(),
                claims.report_data.0,
                "{tee}"
            );
        }

        let report = std::fs::read_to_string(fixtures().join("snp/report_milan.hex")).unwrap();
        let vcek = std::fs::read(fixtures().join("snp/vcek_milan.der")).unwrap();
        let snp = Evidence {
            tee: TeeType::Snp,
            report: hex::decode(report.trim()).unwrap(),
            certificates: build_cert_table(&[CertEntry {
                guid: VCEK_GUID,
                data: vcek,
            }]),
        };
        let claims = coffer_attest::verify(&snp, &VerifyOptions::new(SystemTime::now())).unwrap();
        assert_eq!(
            claimed_report_data(&snp).unwrap().to_vec(),
            claims.report_data.0
        );

        let dir = tempfile::tempdir().unwrap();
        let sim = coffer_platform::sim::SimPlatform::open_or_create(dir.path())
            .unwrap()
            .evidence(&[9; 64])
            .unwrap();
        assert_eq!(claimed_report_data(&sim).unwrap(), [9; 64]);
    }

    #[test]
    fn short_or_foreign_evidence_is_refused() {
        for tee in [TeeType::Sim, TeeType::Sgx, TeeType::Tdx, TeeType::Snp] {
            let evidence = Evidence {
                tee,
                report: vec![0; 40],
                certificates: Vec::new(),
            };
            assert!(claimed_report_data(&evidence).is_err(), "{tee}");
        }
    }
}

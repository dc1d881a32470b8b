//! TD report → normalised claims.

use crate::claims::Hex;
use crate::{Claims, Measurements, VerifyError};
use coffer_platform::TeeType;
use dcap_qvl::verify::VerifiedReport;

/// Whether a TD's host can read or influence it: any of the TUD ("TD under debug") bits 7:0 of
/// TD_ATTRIBUTES set. Intel's TDX module ABI specification groups DEBUG (bit 0) with the
/// debug/profiling bits 7:1 as TUD and makes a TD with any of them set untrusted (the TDX
/// module's `td_param_attributes_t`: `debug` bit 0, `reserved_tud` bits 7:1; dcap-qvl 0.7.1
/// `TDAttributes::tud` in `src/quote.rs`). dcap-qvl runs with `allow_debug`, so bits 4–6
/// (profiling) reach the claims; it refuses bits 1–3 and 7 itself as reserved.
fn td_under_debug(td_attributes: &[u8; 8]) -> bool {
    td_attributes[0] != 0
}

pub(crate) fn claims(verified: &VerifiedReport) -> Result<Claims, VerifyError> {
    let report = verified
        .report
        .as_td10()
        .ok_or_else(|| VerifyError::malformed(TeeType::Tdx, "the quote body is not a TD report"))?;
    let (tcb_status, advisories) = crate::dcap::tcb(verified);
    let h = |b: &[u8]| Hex::from(b);
    Ok(Claims {
        tee: TeeType::Tdx,
        debug: td_under_debug(&report.td_attributes),
        tcb_status,
        advisories,
        report_data: h(&report.report_data),
        measurements: Measurements::Tdx {
            mr_td: h(&report.mr_td),
            rtmr: [
                h(&report.rt_mr0),
                h(&report.rt_mr1),
                h(&report.rt_mr2),
                h(&report.rt_mr3),
            ],
            mr_config_id: h(&report.mr_config_id),
            mr_owner: h(&report.mr_owner),
            mr_owner_config: h(&report.mr_owner_config),
            tee_tcb_svn: h(&report.tee_tcb_svn),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CollateralDir, VerifyOptions};
    use coffer_test_fixtures::attestation_dir as fixtures;
    use dcap_qvl::quote::Report;
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn any_td_under_debug_bit_makes_the_claims_say_debug() {
        coffer_test_fixtures::skip_without_attestation_fixtures!();
        let quote = std::fs::read(fixtures().join("tdx/tdx_quote")).unwrap();
        let mut options = VerifyOptions::new(UNIX_EPOCH + Duration::from_secs(1_750_334_400));
        options.collateral = Arc::new(CollateralDir::with_file(
            fixtures().join("tdx"),
            "tdx_quote_collateral.json",
        ));
        let mut verified = crate::dcap::verify(TeeType::Tdx, &quote, &options)
            .unwrap()
            .report;
        assert!(!claims(&verified).unwrap().debug, "a production TD");
        for bit in 0..8 {
            let Report::TD10(report) = &mut verified.report else {
                panic!("the fixture is a TDX 1.0 quote")
            };
            report.td_attributes[0] = 1 << bit;
            assert!(claims(&verified).unwrap().debug, "TUD bit {bit}");
        }
    }
}

//! TD report → normalised claims.

use crate::claims::Hex;
use crate::{Claims, Measurements, VerifyError};
use coffer_platform::TeeType;
use dcap_qvl::verify::VerifiedReport;

/// TDX `TD_ATTRIBUTES.DEBUG` (bit 0).
const TD_ATTRIBUTE_DEBUG: u8 = 0x01;

pub(crate) fn claims(verified: &VerifiedReport) -> Result<Claims, VerifyError> {
    let report = verified
        .report
        .as_td10()
        .ok_or_else(|| VerifyError::malformed(TeeType::Tdx, "the quote body is not a TD report"))?;
    let (tcb_status, advisories) = crate::dcap::tcb(verified);
    let h = |b: &[u8]| Hex::from(b);
    Ok(Claims {
        tee: TeeType::Tdx,
        debug: report.td_attributes[0] & TD_ATTRIBUTE_DEBUG != 0,
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

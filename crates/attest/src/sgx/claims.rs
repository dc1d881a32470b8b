//! SGX enclave report → normalised claims.

use crate::claims::Hex;
use crate::{Claims, Measurements, VerifyError};
use coffer_platform::TeeType;
use dcap_qvl::verify::VerifiedReport;

/// SGX `ATTRIBUTES.DEBUG` (bit 1 of the first attributes byte).
const ATTRIBUTE_DEBUG: u8 = 0x02;

pub(crate) fn claims(verified: &VerifiedReport) -> Result<Claims, VerifyError> {
    let report = verified.report.as_sgx().ok_or_else(|| {
        VerifyError::malformed(TeeType::Sgx, "the quote body is not an SGX enclave report")
    })?;
    let (tcb_status, advisories) = crate::dcap::tcb(verified);
    Ok(Claims {
        tee: TeeType::Sgx,
        debug: report.attributes[0] & ATTRIBUTE_DEBUG != 0,
        tcb_status,
        advisories,
        report_data: Hex::from(&report.report_data[..]),
        measurements: Measurements::Sgx {
            mr_enclave: Hex::from(&report.mr_enclave[..]),
            mr_signer: Hex::from(&report.mr_signer[..]),
            isv_prod_id: report.isv_prod_id,
            isv_svn: report.isv_svn,
        },
    })
}

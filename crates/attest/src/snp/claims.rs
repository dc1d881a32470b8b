//! SNP attestation report → normalised claims.

use super::Report;
use crate::claims::Hex;
use crate::{Claims, Measurements};
use coffer_platform::TeeType;

/// Guest policy bit 19: debugging allowed.
const POLICY_DEBUG: u64 = 1 << 19;

pub(crate) fn claims(report: &Report<'_>) -> Claims {
    let policy = report.u64(0x08);
    Claims {
        tee: TeeType::Snp,
        debug: policy & POLICY_DEBUG != 0,
        tcb_status: "NotApplicable".to_string(),
        advisories: Vec::new(),
        report_data: Hex::from(report.bytes(0x50, 64)),
        measurements: Measurements::Snp {
            measurement: Hex::from(report.bytes(0x90, 48)),
            host_data: Hex::from(report.bytes(0xC0, 32)),
            policy,
            guest_svn: report.u32(0x04),
            vmpl: report.u32(0x30),
            reported_tcb: report.u64(0x180),
            // Milan and Genoa, which a version 2 report cannot tell apart, share a layout.
            reported_tcb_spl: report.vcek_request().tcb(report.products()[0]),
        },
    }
}

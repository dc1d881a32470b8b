//! Simulation evidence → normalised claims.

use crate::claims::Hex;
use crate::{Claims, Measurements};
use coffer_platform::TeeType;

pub(crate) fn claims(measurement: &[u8], report_data: &[u8], signer: &[u8], debug: bool) -> Claims {
    Claims {
        tee: TeeType::Sim,
        debug,
        tcb_status: "NotApplicable".to_string(),
        advisories: Vec::new(),
        report_data: Hex::from(report_data),
        measurements: Measurements::Sim {
            measurement: Hex::from(measurement),
            signer: Hex::from(signer),
        },
    }
}

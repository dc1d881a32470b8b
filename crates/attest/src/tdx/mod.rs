//! Intel TDX DCAP quotes (v4; v5 is accepted too).

mod claims;

use crate::{dcap, Claims, VerifyError, VerifyOptions};
use coffer_platform::TeeType;

/// Verifies a TDX quote against collateral from `options` and returns its claims.
pub fn verify(quote: &[u8], options: &VerifyOptions) -> Result<Claims, VerifyError> {
    let verified = dcap::verify(TeeType::Tdx, quote, options)?;
    claims::claims(&verified.report)
}

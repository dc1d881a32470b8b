//! Intel SGX DCAP quotes (v3).

mod claims;

use crate::{dcap, Claims, VerifyError, VerifyOptions};
use coffer_platform::TeeType;

/// Verifies an SGX quote v3 against collateral from `options` and returns its claims.
pub fn verify(quote: &[u8], options: &VerifyOptions) -> Result<Claims, VerifyError> {
    let verified = dcap::verify(TeeType::Sgx, quote, options)?;
    claims::claims(&verified.report)
}

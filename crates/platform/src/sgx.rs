//! Pieces shared by the SGX backends ([`crate::gramine`], [`crate::occlum`]).

use crate::PlatformError;

/// Which enclave identity an SGX sealing key is bound to.
///
/// * [`SealPolicy::MrEnclave`]: bound to the exact enclave measurement. Only this exact build
///   (same code, same manifest) can re-derive the key, so **an enclave upgrade loses access**
///   to everything sealed under it unless the data is migrated first.
/// * [`SealPolicy::MrSigner`]: bound to the enclave signer (MRSIGNER) and product ID: a rebuild
///   signed by the same key derives it too, but every enclave that key signs can, so the signing
///   key must be guarded like the data itself.
///
/// Neither policy alone survives a TCB update: the key request also carries CPUSVN and ISVSVN,
/// and Gramine fills in the running enclave's current values (so a microcode update, a TCB
/// recovery or an `isvsvn` bump changes both keys), while the Occlum backend pins them to 0. A
/// standalone keystore gets through such an update with `coffer keys init --recovery-key` and
/// `coffer keys recover`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SealPolicy {
    /// Bind to MRENCLAVE (this exact enclave; a new build cannot derive it).
    MrEnclave,
    /// Bind to MRSIGNER (any enclave from the same signer and product).
    MrSigner,
}

impl SealPolicy {
    /// Stable name: `mrenclave` or `mrsigner`.
    pub fn name(self) -> &'static str {
        match self {
            SealPolicy::MrEnclave => "mrenclave",
            SealPolicy::MrSigner => "mrsigner",
        }
    }

    /// Parses [`SealPolicy::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "mrenclave" => Some(SealPolicy::MrEnclave),
            "mrsigner" => Some(SealPolicy::MrSigner),
            _ => None,
        }
    }
}

/// Length of the SGX quote header.
pub(crate) const QUOTE_HEADER_LEN: usize = crate::dcap_quote::HEADER_LEN;
/// Length of the SGX report body that follows the header.
pub(crate) const REPORT_BODY_LEN: usize = 384;
/// Offset of `report_data` inside the report body.
pub(crate) const REPORT_DATA_OFFSET: usize = 320;

/// Checks that `quote` is an SGX DCAP quote of a version Coffer verifies
/// ([`crate::dcap_quote::SGX_QUOTE_VERSIONS`]: v3, what Gramine and Occlum produce) whose report
/// data is `report_data`. Evidence the verifier would refuse is refused here already.
pub(crate) fn check_quote(
    backend: &'static str,
    quote: &[u8],
    report_data: &[u8; 64],
) -> Result<(), PlatformError> {
    let bad = |problem: String| PlatformError::Tee { backend, problem };
    let min = QUOTE_HEADER_LEN + REPORT_BODY_LEN;
    if quote.len() < min {
        return Err(bad(format!(
            "the quote is {} bytes long, shorter than an SGX quote header and report body \
             ({min} bytes); the quoting enclave or its configuration is broken",
            quote.len()
        )));
    }
    use crate::dcap_quote::{version_and_tee_type, SGX_QUOTE_VERSIONS, TEE_TYPE_SGX};
    let (version, tee_type) = version_and_tee_type(quote).unwrap_or_default();
    if tee_type != TEE_TYPE_SGX || !SGX_QUOTE_VERSIONS.contains(&version) {
        return Err(bad(format!(
            "the quote has version {version} and TEE type {tee_type:#x}; expected an SGX DCAP \
             quote of version 3 (TEE type 0), which Intel's quoting enclave produces and \
             Coffer's verifier accepts: check the DCAP quote library and quote provider"
        )));
    }
    let at = QUOTE_HEADER_LEN + REPORT_DATA_OFFSET;
    if quote[at..at + 64] != report_data[..] {
        return Err(bad(
            "the quote's report data differs from the report data written: another process \
             in this TEE requested a quote at the same time, or the quote is stale"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) fn fake_quote(report_data: &[u8; 64]) -> Vec<u8> {
    let mut q = vec![0u8; QUOTE_HEADER_LEN + REPORT_BODY_LEN + 4 + 100];
    q[0..2].copy_from_slice(&3u16.to_le_bytes());
    let at = QUOTE_HEADER_LEN + REPORT_DATA_OFFSET;
    q[at..at + 64].copy_from_slice(report_data);
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_checks() {
        let rd = [7u8; 64];
        let q = fake_quote(&rd);
        check_quote("t", &q, &rd).unwrap();
        let err = check_quote("t", &q, &[8u8; 64]).unwrap_err().to_string();
        assert!(err.contains("differs"), "{err}");
        let err = check_quote("t", &q[..400], &rd).unwrap_err().to_string();
        assert!(err.contains("400 bytes long"), "{err}");
        let mut v5 = q.clone();
        v5[0] = 5;
        let err = check_quote("t", &v5, &rd).unwrap_err().to_string();
        assert!(err.contains("version 5"), "{err}");
        // The verifier (dcap-qvl) refuses SGX quotes v4, so the platform does not produce them.
        let mut v4 = q.clone();
        v4[0] = 4;
        let err = check_quote("t", &v4, &rd).unwrap_err().to_string();
        assert!(
            err.contains("version 4 and TEE type 0x0") && err.contains("version 3"),
            "{err}"
        );
        // A v3 header with a TDX TEE type is not an SGX quote either.
        let mut tdx = q.clone();
        tdx[4] = 0x81;
        let err = check_quote("t", &tdx, &rd).unwrap_err().to_string();
        assert!(err.contains("TEE type 0x81"), "{err}");
        assert_eq!(
            SealPolicy::from_name("mrsigner"),
            Some(SealPolicy::MrSigner)
        );
        assert_eq!(
            SealPolicy::from_name(SealPolicy::MrEnclave.name()),
            Some(SealPolicy::MrEnclave)
        );
    }
}

//! The DCAP quote layouts Coffer produces and verifies, shared by the generating side (the SGX
//! backends and the configfs-tsm TDX backend read the report data back from their own quote)
//! and the verifier's header check (`coffer-attest`), so that the two accept the same quotes.
//!
//! Layouts from Intel's `sgx_quote_3.h`, `sgx_quote_4.h` and `sgx_quote_5.h`
//! (intel/SGXDataCenterAttestationPrimitives, `QuoteGeneration/quote_wrapper/common/inc/`) and
//! from the verifier Coffer uses, dcap-qvl 0.7.1 (`src/quote.rs` `Quote::decode`,
//! `src/constants.rs`):
//!
//! * v3 (SGX): header (48) ‖ enclave report (384) ‖ signature data length (u32) ‖ …
//! * v4 (TDX): header (48) ‖ TD report (584, TDX 1.0) ‖ signature data length (u32) ‖ …
//! * v5 (TDX): header (48) ‖ body type (u16) ‖ body size (u32) ‖ body ‖ signature data
//!   length (u32) ‖ …, where the body is a TD report of TDX 1.0 (type 2, 584 bytes), TDX 1.5
//!   (type 3, 648 bytes) or TDX 1.5 "ex" (type 4, 885 bytes). Every TD report starts with the
//!   TDX 1.0 fields, so REPORTDATA is at body offset 520 in each.
//!
//! All integers are little-endian.

use std::fmt;

/// Length of the quote header (every version).
pub const HEADER_LEN: usize = 48;
/// The header's TEE type of an SGX quote.
pub const TEE_TYPE_SGX: u32 = 0x0000_0000;
/// The header's TEE type of a TDX quote.
pub const TEE_TYPE_TDX: u32 = 0x0000_0081;
/// The SGX quote versions Coffer produces and verifies: only v3. Intel's quoting enclave QE3,
/// which Gramine (`/dev/attestation/quote`) and Occlum (`SGXIOC_GEN_DCAP_QUOTE`) both use,
/// emits v3 (`QE_QUOTE_VERSION 3` in DCAP's `quote_wrapper/quote/enclave/qe3.h`), and dcap-qvl
/// 0.7.1 refuses SGX quotes of any other version ("SGX TEE quote must have version 3").
pub const SGX_QUOTE_VERSIONS: &[u16] = &[3];
/// The TDX quote versions Coffer produces and verifies: v4 (Intel's TDQE for TDX 1.0) and v5
/// (Intel's quote generator for TDX 1.5 and later).
pub const TDX_QUOTE_VERSIONS: &[u16] = &[4, 5];
/// Offset of REPORTDATA (64 bytes) inside every TD report body.
pub const TD_REPORT_DATA_OFFSET: usize = 520;
/// Length of a TDX 1.0 TD report (`sgx_report2_body_t`), the body of a v4 quote.
pub const TD_REPORT10_LEN: usize = 584;
/// Length of the v5 body header: body type (u16) and body size (u32).
const V5_BODY_HEADER_LEN: usize = 6;
/// Length of the signature data length field that follows the body.
const SIGNATURE_LEN_FIELD: usize = 4;

/// The version and TEE type of a quote header, or `None` when `quote` is shorter than one.
pub fn version_and_tee_type(quote: &[u8]) -> Option<(u16, u32)> {
    if quote.len() < HEADER_LEN {
        return None;
    }
    let version = u16::from_le_bytes([quote[0], quote[1]]);
    let tee_type = u32::from_le_bytes([quote[4], quote[5], quote[6], quote[7]]);
    Some((version, tee_type))
}

/// The TD report length of a v5 body type, or `None` for a type that is not a TD report.
fn td_report_len(body_type: u16) -> Option<usize> {
    match body_type {
        2 => Some(TD_REPORT10_LEN),
        3 => Some(648),
        4 => Some(885),
        _ => None,
    }
}

/// Why a quote does not have the layout of a TDX quote Coffer verifies.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TdxQuoteError {
    /// Shorter than the parts its header announces.
    TooShort {
        /// The quote's length.
        len: usize,
        /// The length its header and body require.
        needed: usize,
    },
    /// Not a TDX quote of version 4 or 5.
    Version {
        /// The header's version.
        version: u16,
        /// The header's TEE type.
        tee_type: u32,
    },
    /// A v5 quote whose body is not a TD report.
    BodyType {
        /// The v5 body type.
        body_type: u16,
    },
    /// A v5 quote whose body size does not match its body type.
    BodySize {
        /// The v5 body type.
        body_type: u16,
        /// The size the quote states.
        size: u32,
        /// The size of that body type.
        expected: usize,
    },
}

impl fmt::Display for TdxQuoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TdxQuoteError::TooShort { len, needed } => write!(
                f,
                "the TDX quote is {len} bytes long, shorter than the {needed} bytes its header \
                 and TD report need"
            ),
            TdxQuoteError::Version { version, tee_type } => write!(
                f,
                "the quote has version {version} and TEE type {tee_type:#x}; expected a TDX \
                 quote (TEE type {TEE_TYPE_TDX:#x}) of version 4 or 5"
            ),
            TdxQuoteError::BodyType { body_type } => write!(
                f,
                "the v5 quote body has type {body_type}; expected a TD report (type 2 for \
                 TDX 1.0, 3 for TDX 1.5, 4 for TDX 1.5 with extensions)"
            ),
            TdxQuoteError::BodySize {
                body_type,
                size,
                expected,
            } => write!(
                f,
                "the v5 quote body of type {body_type} states {size} bytes; that type is \
                 {expected} bytes"
            ),
        }
    }
}

impl std::error::Error for TdxQuoteError {}

/// The offset of the 64 bytes of report data in a TDX quote (v4, or v5 with a TD report body),
/// after checking that the quote is long enough for its header, body and signature length.
pub fn tdx_report_data_offset(quote: &[u8]) -> Result<usize, TdxQuoteError> {
    let too_short = |needed: usize| TdxQuoteError::TooShort {
        len: quote.len(),
        needed,
    };
    let (version, tee_type) = version_and_tee_type(quote).ok_or_else(|| too_short(HEADER_LEN))?;
    let (body_at, body_len) = match (version, tee_type) {
        (4, TEE_TYPE_TDX) => (HEADER_LEN, TD_REPORT10_LEN),
        (5, TEE_TYPE_TDX) => {
            let body_at = HEADER_LEN + V5_BODY_HEADER_LEN;
            if quote.len() < body_at {
                return Err(too_short(body_at));
            }
            let body_type = u16::from_le_bytes([quote[48], quote[49]]);
            let size = u32::from_le_bytes([quote[50], quote[51], quote[52], quote[53]]);
            let expected = td_report_len(body_type).ok_or(TdxQuoteError::BodyType { body_type })?;
            if usize::try_from(size).ok() != Some(expected) {
                return Err(TdxQuoteError::BodySize {
                    body_type,
                    size,
                    expected,
                });
            }
            (body_at, expected)
        }
        _ => return Err(TdxQuoteError::Version { version, tee_type }),
    };
    let needed = body_at + body_len + SIGNATURE_LEN_FIELD;
    if quote.len() < needed {
        return Err(too_short(needed));
    }
    Ok(body_at + TD_REPORT_DATA_OFFSET)
}

/// A TDX quote of `version` (v5: with body `body_type`) carrying `report_data`, with zeroed
/// measurements and 100 bytes of zeroed signature data: the layout, nothing more.
#[cfg(test)]
pub(crate) fn fake_tdx_quote(version: u16, body_type: u16, report_data: &[u8; 64]) -> Vec<u8> {
    let mut quote = vec![0u8; HEADER_LEN];
    quote[0..2].copy_from_slice(&version.to_le_bytes());
    quote[2..4].copy_from_slice(&2u16.to_le_bytes()); // ECDSA P-256
    quote[4..8].copy_from_slice(&TEE_TYPE_TDX.to_le_bytes());
    let body_len = if version == 5 {
        let len = td_report_len(body_type).unwrap_or(TD_REPORT10_LEN);
        quote.extend_from_slice(&body_type.to_le_bytes());
        quote.extend_from_slice(&(len as u32).to_le_bytes());
        len
    } else {
        TD_REPORT10_LEN
    };
    let body_at = quote.len();
    quote.resize(body_at + body_len, 0);
    let at = body_at + TD_REPORT_DATA_OFFSET;
    quote[at..at + 64].copy_from_slice(report_data);
    quote.extend_from_slice(&100u32.to_le_bytes());
    quote.resize(quote.len() + 100, 0);
    quote
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_data_of_v4_and_every_v5_td_body() {
        let rd = [0x5au8; 64];
        for (version, body_type, at) in [(4, 0, 568), (5, 2, 574), (5, 3, 574), (5, 4, 574)] {
            let quote = fake_tdx_quote(version, body_type, &rd);
            assert_eq!(
                tdx_report_data_offset(&quote),
                Ok(at),
                "v{version} {body_type}"
            );
            assert_eq!(&quote[at..at + 64], &rd[..]);
        }
    }

    #[test]
    fn v5_body_sizes_are_the_td_report_sizes() {
        // sgx_report2_body_t, sgx_report2_body_v1_5_t (+ tee_tcb_svn2 16 + mr_servicetd 48),
        // and the 1.5 "ex" body of dcap-qvl 0.7.1 (TD_REPORT15_EX_BYTE_LEN).
        assert_eq!(td_report_len(2), Some(584));
        assert_eq!(td_report_len(3), Some(584 + 16 + 48));
        assert_eq!(td_report_len(4), Some(885));
        assert_eq!(
            td_report_len(1),
            None,
            "an SGX enclave report is not a TD report"
        );
    }

    #[test]
    fn malformed_tdx_quotes_are_refused_with_the_reason() {
        let rd = [1u8; 64];
        let v4 = fake_tdx_quote(4, 0, &rd);
        let err = tdx_report_data_offset(&v4[..100]).unwrap_err();
        assert_eq!(
            err,
            TdxQuoteError::TooShort {
                len: 100,
                needed: 636
            }
        );
        assert!(err.to_string().contains("100 bytes long"), "{err}");
        assert!(matches!(
            tdx_report_data_offset(&v4[..10]),
            Err(TdxQuoteError::TooShort { needed: 48, .. })
        ));

        let mut sgx = v4.clone();
        sgx[0] = 3;
        sgx[4] = 0;
        let err = tdx_report_data_offset(&sgx).unwrap_err().to_string();
        assert!(
            err.contains("version 3 and TEE type 0x0") && err.contains("version 4 or 5"),
            "{err}"
        );
        let mut v6 = v4.clone();
        v6[0] = 6;
        assert!(matches!(
            tdx_report_data_offset(&v6),
            Err(TdxQuoteError::Version { version: 6, .. })
        ));

        let mut v5 = fake_tdx_quote(5, 3, &rd);
        v5[48] = 1; // an SGX enclave report body
        let err = tdx_report_data_offset(&v5).unwrap_err();
        assert_eq!(err, TdxQuoteError::BodyType { body_type: 1 });
        assert!(err.to_string().contains("type 1"), "{err}");
        v5[48] = 3;
        v5[50] = 0x48; // 0x248 = 584 bytes: a TDX 1.0 size on a TDX 1.5 body
        let err = tdx_report_data_offset(&v5).unwrap_err().to_string();
        assert!(err.contains("that type is 648 bytes"), "{err}");
        let v5 = fake_tdx_quote(5, 3, &rd);
        assert!(matches!(
            tdx_report_data_offset(&v5[..54 + 648]),
            Err(TdxQuoteError::TooShort { needed: 706, .. })
        ));
        assert!(matches!(
            tdx_report_data_offset(&v5[..50]),
            Err(TdxQuoteError::TooShort { needed: 54, .. })
        ));
    }
}

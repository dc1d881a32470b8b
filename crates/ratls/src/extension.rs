//! The evidence extension: OID 2.23.133.5.4.9 (`tcg-dice-conceptual-message-wrapper`, TCG DICE
//! tagged evidence), in the layout of the CCC "Interoperable RA-TLS" formats:
//!
//! ```text
//! extnValue     = tagged-evidence                     ; raw CBOR bytes; extension not critical
//! tagged-evidence = #6.<tag>([ bstr report, bstr claims-buffer ])
//! claims-buffer = serialized CBOR map {
//!     "pubkey-hash":         bstr .cbor [ 8, bstr SHA-512(SubjectPublicKeyInfo) ]   ; 8 = sha-512 (IANA named information)
//!     "coffer-tee":          bstr "sgx" / "tdx" / "snp" / "sim"
//!     ? "coffer-certificates": bstr certificates      ; SNP: the configfs-tsm auxblob certificate table
//! }
//! ```
//!
//! Tags: [`TAG_INTEL_TEE_QUOTE`] (0x1a7501) for SGX and TDX DCAP quotes and [`TAG_SEV_SNP`]
//! (0x1a7504) for SEV-SNP reports, as defined by the interoperable RA-TLS work (rats-tls'
//! `OCBR_TAG_EVIDENCE_*`). Simulation evidence has no standard tag; Coffer uses the private
//! [`TAG_COFFER_SIM`] (0x636f6673, ASCII "cofs").
//!
//! **What the evidence commits to** ([`Binding`]) depends on the tag:
//!
//! * Coffer's tags: **the evidence commits to SHA-512(SPKI)**: its 64 bytes of report data are
//!   exactly the SHA-512 digest of the certificate's DER SubjectPublicKeyInfo. The claims buffer
//!   is *not* covered by the evidence: `pubkey-hash` is informational (and checked for
//!   consistency), `coffer-tee` only selects the verifier, and `coffer-certificates` is input
//!   that the SNP verifier checks against AMD's roots anyway.
//! * Gramine's tag [`TAG_GRAMINE_TEE_QUOTE`] (60000, Gramine ≥ 1.8 RA-TLS): the first 32 bytes
//!   of the SGX quote's report data are SHA-256 of the claims buffer, and the buffer's
//!   `pubkey-hash` claim (`[alg, hash]`, SHA-256, -384 or -512 of the SPKI) names the key
//!   (Gramine v1.8 `tools/sgx/ra-tls/ra_tls_verify_common.c`,
//!   `extract_standard_quote_and_verify_claims()` and
//!   `cmp_crt_pk_against_cbor_claim_hash_entry()`). Coffer verifies exactly that, and requires
//!   the `pubkey-hash` claim, without which such evidence names no key.
//!
//! Other formats are refused: rats-tls certificates (tag 0x1a7501 with their own claims binding)
//! fail the SHA-512(SPKI) binding, and Gramine's legacy non-standard extension (OID
//! 1.2.840.113741.1337.6, a raw quote) is not an evidence extension at all.

use coffer_platform::{Evidence, TeeType};
use sha2::{Digest, Sha256};

use crate::cbor::{self, Item};
use crate::RatlsError;

/// OID of the TCG DICE tagged-evidence extension, 2.23.133.5.4.9.
pub const EVIDENCE_OID: &[u64] = &[2, 23, 133, 5, 4, 9];

/// CBOR tag for Intel TEE quotes (SGX and TDX DCAP), interoperable RA-TLS / rats-tls.
pub const TAG_INTEL_TEE_QUOTE: u64 = 0x1a7501;
/// CBOR tag for SEV-SNP attestation reports, interoperable RA-TLS / rats-tls.
pub const TAG_SEV_SNP: u64 = 0x1a7504;
/// CBOR tag Gramine ≥ 1.8 uses for SGX quotes (`TCG_DICE_TAGGED_EVIDENCE_TEE_QUOTE_CBOR_TAG`
/// in Gramine v1.8 `tools/sgx/ra-tls/ra_tls_common.h`); accepted on input with Gramine's
/// [`Binding::ClaimsSha256`].
pub const TAG_GRAMINE_TEE_QUOTE: u64 = 60000;
/// Coffer's private CBOR tag for simulation evidence (ASCII "cofs").
pub const TAG_COFFER_SIM: u64 = 0x636f_6673;

/// IANA named-information hash algorithm id for SHA-256.
pub const HASH_ALG_SHA256: u64 = 1;
/// IANA named-information hash algorithm id for SHA-384.
pub const HASH_ALG_SHA384: u64 = 7;
/// IANA named-information hash algorithm id for SHA-512.
pub const HASH_ALG_SHA512: u64 = 8;

/// Largest evidence extension accepted (SNP certificate tables are a few KiB, quotes ~5–10 KiB).
pub const MAX_EXTENSION_SIZE: usize = 256 * 1024;

const CLAIM_PUBKEY_HASH: &str = "pubkey-hash";
const CLAIM_TEE: &str = "coffer-tee";
const CLAIM_CERTIFICATES: &str = "coffer-certificates";

/// The CBOR tag used for evidence of type `tee`.
pub fn tag_for(tee: TeeType) -> u64 {
    match tee {
        TeeType::Sgx | TeeType::Tdx => TAG_INTEL_TEE_QUOTE,
        TeeType::Snp => TAG_SEV_SNP,
        _ => TAG_COFFER_SIM,
    }
}

/// What a certificate's evidence commits to in its report data, by the format it was made in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Coffer's format: all 64 bytes of report data are SHA-512 of the certificate's DER
    /// SubjectPublicKeyInfo.
    SpkiSha512,
    /// Gramine's format (tag 60000): the first 32 bytes of report data are this value, SHA-256
    /// of the claims buffer, whose `pubkey-hash` claim names the certificate's key.
    ClaimsSha256([u8; 32]),
}

/// The content of the evidence extension after decoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedExtension {
    /// The CBOR tag found.
    pub tag: u64,
    /// The evidence (report, certificates, TEE type).
    pub evidence: Evidence,
    /// The `pubkey-hash` claim: (IANA hash algorithm id, digest), if present.
    pub pubkey_hash: Option<(u64, Vec<u8>)>,
    /// What the evidence's report data must commit to.
    pub binding: Binding,
}

/// Encodes `evidence` for a certificate whose SubjectPublicKeyInfo hashes to `spki_sha512`.
pub fn encode_extension(evidence: &Evidence, spki_sha512: &[u8; 64]) -> Vec<u8> {
    let hash_entry = cbor::to_vec(&Item::Array(vec![
        Item::Uint(HASH_ALG_SHA512),
        Item::Bytes(spki_sha512),
    ]));
    let mut claims = vec![
        (Item::Text(CLAIM_PUBKEY_HASH), Item::Bytes(&hash_entry)),
        (
            Item::Text(CLAIM_TEE),
            Item::Bytes(evidence.tee.name().as_bytes()),
        ),
    ];
    if !evidence.certificates.is_empty() {
        claims.push((
            Item::Text(CLAIM_CERTIFICATES),
            Item::Bytes(&evidence.certificates),
        ));
    }
    let claims_buffer = cbor::to_vec(&Item::Map(claims));
    cbor::to_vec(&Item::Tag(
        tag_for(evidence.tee),
        Box::new(Item::Array(vec![
            Item::Bytes(&evidence.report),
            Item::Bytes(&claims_buffer),
        ])),
    ))
}

fn bad(msg: impl Into<String>) -> RatlsError {
    RatlsError::Extension(msg.into())
}

/// TEE type of an Intel quote from its header (version, attestation key type, TEE type).
fn intel_quote_tee(report: &[u8]) -> Option<TeeType> {
    if report.len() < 8 {
        return None;
    }
    let version = u16::from_le_bytes([report[0], report[1]]);
    let tee_type = u32::from_le_bytes([report[4], report[5], report[6], report[7]]);
    match (version, tee_type) {
        (3, _) => Some(TeeType::Sgx),
        (4 | 5, 0) => Some(TeeType::Sgx),
        (4 | 5, 0x81) => Some(TeeType::Tdx),
        _ => None,
    }
}

/// Decodes the evidence extension's value.
pub fn decode_extension(value: &[u8]) -> Result<DecodedExtension, RatlsError> {
    if value.len() > MAX_EXTENSION_SIZE {
        return Err(bad(format!(
            "evidence extension is {} bytes; at most {MAX_EXTENSION_SIZE} accepted",
            value.len()
        )));
    }
    let item = cbor::decode(value).map_err(|e| bad(format!("evidence extension: {e}")))?;
    let Item::Tag(tag, inner) = item else {
        return Err(bad("evidence extension is not a tagged CBOR item"));
    };
    let Item::Array(parts) = *inner else {
        return Err(bad("tagged evidence is not a CBOR array"));
    };
    let (report, claims_buffer) = match parts.as_slice() {
        [Item::Bytes(r)] => (*r, None),
        [Item::Bytes(r), Item::Bytes(c)] => (*r, Some(*c)),
        _ => {
            return Err(bad(
                "tagged evidence must be [bstr evidence, bstr claims-buffer]",
            ))
        }
    };
    if report.is_empty() {
        return Err(bad("tagged evidence holds an empty report"));
    }

    let mut tee_claim = None;
    let mut certificates = Vec::new();
    let mut pubkey_hash = None;
    if let Some(buf) = claims_buffer {
        let Item::Map(pairs) = cbor::decode(buf).map_err(|e| bad(format!("claims buffer: {e}")))?
        else {
            return Err(bad("claims buffer is not a CBOR map"));
        };
        let mut seen = Vec::new();
        for (k, v) in pairs {
            let Item::Text(name) = k else {
                return Err(bad("claims buffer keys must be text strings"));
            };
            if seen.contains(&name) {
                return Err(bad(format!("claim {name:?} appears twice")));
            }
            seen.push(name);
            // Claims Coffer does not use may hold any value (Gramine ignores them too).
            let value = match (name, v) {
                (CLAIM_PUBKEY_HASH | CLAIM_TEE | CLAIM_CERTIFICATES, Item::Bytes(value)) => value,
                (CLAIM_PUBKEY_HASH | CLAIM_TEE | CLAIM_CERTIFICATES, _) => {
                    return Err(bad(format!("claim {name:?} is not a byte string")))
                }
                _ => continue,
            };
            match name {
                CLAIM_PUBKEY_HASH => {
                    let entry =
                        cbor::decode(value).map_err(|e| bad(format!("pubkey-hash: {e}")))?;
                    let Item::Array(e) = entry else {
                        return Err(bad("pubkey-hash is not [alg, hash]"));
                    };
                    match e.as_slice() {
                        [Item::Uint(alg), Item::Bytes(h)] => pubkey_hash = Some((*alg, h.to_vec())),
                        _ => return Err(bad("pubkey-hash is not [alg, hash]")),
                    }
                }
                CLAIM_TEE => {
                    let name = std::str::from_utf8(value)
                        .ok()
                        .and_then(TeeType::from_name)
                        .ok_or_else(|| bad("coffer-tee names no known TEE type"))?;
                    tee_claim = Some(name);
                }
                CLAIM_CERTIFICATES => certificates = value.to_vec(),
                _ => {} // skipped above
            }
        }
    }

    let binding = match (tag, claims_buffer) {
        (TAG_GRAMINE_TEE_QUOTE, Some(buf)) if !buf.is_empty() => {
            Binding::ClaimsSha256(Sha256::digest(buf).into())
        }
        (TAG_GRAMINE_TEE_QUOTE, _) => {
            return Err(bad(
                "Gramine tagged evidence (tag 60000) must carry a claims buffer: its quote \
                 commits to SHA-256 of that buffer",
            ))
        }
        _ => Binding::SpkiSha512,
    };
    let tee = match tag {
        TAG_INTEL_TEE_QUOTE | TAG_GRAMINE_TEE_QUOTE => {
            let from_header = intel_quote_tee(report)
                .ok_or_else(|| bad("Intel TEE quote has an unknown header"))?;
            if let Some(claimed) = tee_claim {
                if claimed != from_header {
                    return Err(bad(format!(
                        "coffer-tee says {claimed} but the quote header says {from_header}"
                    )));
                }
            }
            from_header
        }
        TAG_SEV_SNP => match tee_claim {
            None | Some(TeeType::Snp) => TeeType::Snp,
            Some(other) => {
                return Err(bad(format!(
                    "coffer-tee says {other} under the SEV-SNP tag"
                )))
            }
        },
        TAG_COFFER_SIM => match tee_claim {
            None | Some(TeeType::Sim) => TeeType::Sim,
            Some(other) => {
                return Err(bad(format!(
                    "coffer-tee says {other} under the simulation tag"
                )))
            }
        },
        other => return Err(bad(format!("unsupported evidence CBOR tag {other:#x}"))),
    };

    Ok(DecodedExtension {
        tag,
        evidence: Evidence {
            tee,
            report: report.to_vec(),
            certificates,
        },
        pubkey_hash,
        binding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_sim_and_snp() {
        let ev = Evidence {
            tee: TeeType::Sim,
            report: vec![1, 2, 3],
            certificates: vec![],
        };
        let enc = encode_extension(&ev, &[9; 64]);
        let dec = decode_extension(&enc).unwrap();
        assert_eq!(dec.evidence, ev);
        assert_eq!(dec.tag, TAG_COFFER_SIM);
        assert_eq!(dec.pubkey_hash, Some((8, vec![9; 64])));

        let ev = Evidence {
            tee: TeeType::Snp,
            report: vec![5; 1184],
            certificates: vec![6; 3000],
        };
        let dec = decode_extension(&encode_extension(&ev, &[0; 64])).unwrap();
        assert_eq!(dec.evidence, ev);
        assert_eq!(dec.tag, TAG_SEV_SNP);
    }

    #[test]
    fn gramine_tag_and_header_detection() {
        let mut quote = vec![0u8; 64];
        quote[0] = 4;
        quote[4] = 0x81;
        let claims = cbor::to_vec(&Item::Map(vec![]));
        let enc = cbor::to_vec(&Item::Tag(
            TAG_GRAMINE_TEE_QUOTE,
            Box::new(Item::Array(vec![Item::Bytes(&quote), Item::Bytes(&claims)])),
        ));
        assert_eq!(decode_extension(&enc).unwrap().evidence.tee, TeeType::Tdx);
    }

    #[test]
    fn inconsistent_or_malformed_extensions_are_refused() {
        let mut quote = vec![0u8; 64];
        quote[0] = 3;
        let ev = Evidence {
            tee: TeeType::Tdx, // lies: header says SGX
            report: quote,
            certificates: vec![],
        };
        let e = decode_extension(&encode_extension(&ev, &[0; 64])).unwrap_err();
        assert!(e.to_string().contains("quote header says sgx"), "{e}");
        assert!(decode_extension(&[0x01]).is_err());
        let untagged = cbor::to_vec(&Item::Array(vec![Item::Bytes(b"x")]));
        assert!(decode_extension(&untagged).is_err());
        let unknown = cbor::to_vec(&Item::Tag(
            7,
            Box::new(Item::Array(vec![Item::Bytes(b"x")])),
        ));
        assert!(decode_extension(&unknown)
            .unwrap_err()
            .to_string()
            .contains("unsupported evidence CBOR tag 0x7"));
    }
}

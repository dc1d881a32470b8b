//! Whether a certificate's evidence commits to the certificate's own key, in each format
//! accepted (see [`Binding`]).
//!
//! The `pubkey-hash` claim is checked before the evidence is verified (it is cheap, and a
//! mismatch needs no TEE verification to be refused); the report data after.

use sha2::{Digest, Sha256, Sha384, Sha512};

use crate::extension::{
    Binding, DecodedExtension, HASH_ALG_SHA256, HASH_ALG_SHA384, HASH_ALG_SHA512,
};
use crate::RatlsError;

fn refuse(msg: impl Into<String>) -> RatlsError {
    RatlsError::Binding(msg.into())
}

/// Checks the `pubkey-hash` claim against the certificate's DER SubjectPublicKeyInfo. Coffer's
/// format needs it only to be consistent (the report data binds the key itself); Gramine's
/// needs it present, since there it is the only thing that names the key.
pub(crate) fn check_pubkey_claim(
    decoded: &DecodedExtension,
    spki_der: &[u8],
) -> Result<(), RatlsError> {
    let mismatch = || refuse("the pubkey-hash claim does not match the certificate's public key");
    match (&decoded.binding, &decoded.pubkey_hash) {
        (Binding::SpkiSha512, None) => Ok(()),
        (Binding::SpkiSha512, Some((alg, hash))) => {
            if *alg == HASH_ALG_SHA512 && hash.as_slice() == Sha512::digest(spki_der).as_slice() {
                Ok(())
            } else {
                Err(mismatch())
            }
        }
        (Binding::ClaimsSha256(_), None) => Err(refuse(
            "the Gramine RA-TLS claims carry no pubkey-hash claim, so the evidence names no key",
        )),
        (Binding::ClaimsSha256(_), Some((alg, hash))) => {
            let expected = match *alg {
                HASH_ALG_SHA256 => Sha256::digest(spki_der).to_vec(),
                HASH_ALG_SHA384 => Sha384::digest(spki_der).to_vec(),
                HASH_ALG_SHA512 => Sha512::digest(spki_der).to_vec(),
                other => {
                    return Err(refuse(format!(
                        "the pubkey-hash claim uses hash algorithm {other}; Gramine RA-TLS \
                         uses 1 (SHA-256), 7 (SHA-384) or 8 (SHA-512)"
                    )))
                }
            };
            if hash.as_slice() == expected.as_slice() {
                Ok(())
            } else {
                Err(mismatch())
            }
        }
    }
}

/// Checks the verified evidence's `report_data` against what the format says it commits to.
pub(crate) fn check_report_data(
    decoded: &DecodedExtension,
    spki_der: &[u8],
    report_data: &[u8],
) -> Result<(), RatlsError> {
    match &decoded.binding {
        Binding::SpkiSha512 => {
            let spki_hash = crate::report_data_for_spki(spki_der);
            if report_data == spki_hash {
                return Ok(());
            }
            Err(refuse(format!(
                "the evidence's report data {} is not SHA-512 of this certificate's public key \
                 ({}): the evidence belongs to another key",
                hex::encode(report_data),
                hex::encode(spki_hash)
            )))
        }
        // Gramine leaves the other 32 bytes to the enclave and does not check them either.
        Binding::ClaimsSha256(claims_hash) => {
            if report_data.get(..32) == Some(&claims_hash[..]) {
                return Ok(());
            }
            Err(refuse(format!(
                "the evidence's report data {} does not start with SHA-256 of this \
                 certificate's claims buffer ({}): the evidence belongs to other claims, and so \
                 to another key",
                hex::encode(report_data),
                hex::encode(claims_hash)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cbor::{self, Item};
    use crate::extension::{decode_extension, TAG_GRAMINE_TEE_QUOTE};

    /// A minimal SGX v3 quote header: what decoding looks at to name the TEE type.
    fn sgx_quote() -> Vec<u8> {
        let mut quote = vec![0u8; 64];
        quote[0] = 3;
        quote
    }

    /// An extension exactly in Gramine's layout: `#6.60000([quote, claims])`, with claims
    /// `{"pubkey-hash": bstr .cbor [alg, hash]}` plus whatever `extra` claims.
    fn gramine_extension(alg: u64, hash: &[u8], extra: Vec<(Item, Item)>) -> (Vec<u8>, Vec<u8>) {
        let entry = cbor::to_vec(&Item::Array(vec![Item::Uint(alg), Item::Bytes(hash)]));
        let mut claims = vec![(Item::Text("pubkey-hash"), Item::Bytes(&entry))];
        claims.extend(extra);
        let claims = cbor::to_vec(&Item::Map(claims));
        let quote = sgx_quote();
        let ext = cbor::to_vec(&Item::Tag(
            TAG_GRAMINE_TEE_QUOTE,
            Box::new(Item::Array(vec![Item::Bytes(&quote), Item::Bytes(&claims)])),
        ));
        (ext, claims)
    }

    const SPKI: &[u8] = b"a DER SubjectPublicKeyInfo";

    #[test]
    fn gramine_binding_accepts_each_hash_and_the_claims_hash() {
        for (alg, hash) in [
            (HASH_ALG_SHA256, Sha256::digest(SPKI).to_vec()),
            (HASH_ALG_SHA384, Sha384::digest(SPKI).to_vec()),
            (HASH_ALG_SHA512, Sha512::digest(SPKI).to_vec()),
        ] {
            let (ext, claims) =
                gramine_extension(alg, &hash, vec![(Item::Text("nonce"), Item::Uint(7))]);
            let decoded = decode_extension(&ext).unwrap();
            let claims_hash: [u8; 32] = Sha256::digest(&claims).into();
            assert_eq!(decoded.binding, Binding::ClaimsSha256(claims_hash));
            check_pubkey_claim(&decoded, SPKI).unwrap();
            let mut report_data = [0u8; 64];
            report_data[..32].copy_from_slice(&claims_hash);
            check_report_data(&decoded, SPKI, &report_data).unwrap();
            // Gramine zero-fills the rest, but does not check it.
            report_data[40] = 1;
            check_report_data(&decoded, SPKI, &report_data).unwrap();
        }
    }

    #[test]
    fn gramine_binding_refusals() {
        let (ext, claims) = gramine_extension(HASH_ALG_SHA256, &Sha256::digest(SPKI), vec![]);
        let decoded = decode_extension(&ext).unwrap();
        let claims_hash: [u8; 32] = Sha256::digest(&claims).into();

        // Another key.
        let e = check_pubkey_claim(&decoded, b"another key").unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        // Report data over other claims, or Coffer's binding of the same key.
        let mut other = [0u8; 64];
        other[..32].copy_from_slice(&claims_hash);
        other[0] ^= 1;
        let e = check_report_data(&decoded, SPKI, &other).unwrap_err();
        assert!(e.to_string().contains("belongs to other claims"), "{e}");
        let coffer = crate::report_data_for_spki(SPKI);
        assert!(check_report_data(&decoded, SPKI, &coffer).is_err());
        assert!(check_report_data(&decoded, SPKI, &claims_hash[..31]).is_err());

        // No pubkey-hash: the evidence names no key.
        let empty = cbor::to_vec(&Item::Map(vec![(Item::Text("nonce"), Item::Bytes(b"n"))]));
        let quote = sgx_quote();
        let ext = cbor::to_vec(&Item::Tag(
            TAG_GRAMINE_TEE_QUOTE,
            Box::new(Item::Array(vec![Item::Bytes(&quote), Item::Bytes(&empty)])),
        ));
        let e = check_pubkey_claim(&decode_extension(&ext).unwrap(), SPKI).unwrap_err();
        assert!(e.to_string().contains("no pubkey-hash"), "{e}");

        // An unknown hash algorithm, or a hash of the wrong length.
        let (ext, _) = gramine_extension(2, &Sha256::digest(SPKI), vec![]);
        let e = check_pubkey_claim(&decode_extension(&ext).unwrap(), SPKI).unwrap_err();
        assert!(e.to_string().contains("hash algorithm 2"), "{e}");
        let (ext, _) = gramine_extension(HASH_ALG_SHA384, &Sha256::digest(SPKI), vec![]);
        assert!(check_pubkey_claim(&decode_extension(&ext).unwrap(), SPKI).is_err());

        // Without a claims buffer there is nothing the quote could commit to.
        let ext = cbor::to_vec(&Item::Tag(
            TAG_GRAMINE_TEE_QUOTE,
            Box::new(Item::Array(vec![Item::Bytes(&quote)])),
        ));
        let e = decode_extension(&ext).unwrap_err();
        assert!(e.to_string().contains("must carry a claims buffer"), "{e}");
    }

    #[test]
    fn coffer_binding_is_unchanged() {
        let ev = coffer_platform::Evidence {
            tee: coffer_platform::TeeType::Sim,
            report: vec![1],
            certificates: vec![],
        };
        let spki_hash = crate::report_data_for_spki(SPKI);
        let decoded = decode_extension(&crate::encode_extension(&ev, &spki_hash)).unwrap();
        assert_eq!(decoded.binding, Binding::SpkiSha512);
        check_pubkey_claim(&decoded, SPKI).unwrap();
        check_report_data(&decoded, SPKI, &spki_hash).unwrap();
        assert!(check_pubkey_claim(&decoded, b"another key").is_err());
        let e = check_report_data(&decoded, b"another key", &spki_hash).unwrap_err();
        assert!(e.to_string().contains("belongs to another key"), "{e}");
        // A SHA-256 pubkey-hash is Gramine's, not Coffer's.
        let mut decoded = decoded;
        decoded.pubkey_hash = Some((HASH_ALG_SHA256, Sha256::digest(SPKI).to_vec()));
        assert!(check_pubkey_claim(&decoded, SPKI).is_err());
    }
}

//! The keystore file format, version 1.
//!
//! ```text
//! "COFFERKS" (8) | format version u16 BE | reserved u16 (0) | body length u32 BE | body (JSON) | HMAC-SHA256 (32)
//! ```
//! The HMAC covers everything before it and is keyed from the platform's sealing key, so any
//! edit, truncation or transplant to another TEE identity is detected before anything is used.
//! The version is read before the HMAC so that a file from a newer Coffer gets a clear
//! "upgrade" message rather than an integrity failure. KEKs inside the body are sealed
//! individually (AES-256-GCM under the sealing key, bound to the keystore and KEK ids).

use std::path::Path;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::KeystoreError;

/// Magic bytes at the start of every keystore.
pub const MAGIC: &[u8; 8] = b"COFFERKS";
/// The newest format this binary reads and the one it writes.
pub const FORMAT_VERSION: u16 = 1;
/// Largest keystore file accepted (thousands of KEKs fit in far less).
pub const MAX_FILE_LEN: usize = 4 << 20;
const HEADER_LEN: usize = 16;
const MAC_LEN: usize = 32;

/// The authenticated body of a keystore file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contents {
    /// Random id of this keystore, part of every KEK id and sealing binding.
    pub keystore_id: String,
    /// The platform kind whose sealing key protects this file.
    pub platform: String,
    /// Incremented on every change.
    pub generation: u64,
    /// The serial number the next KEK gets; never decreases, so ids are never reused.
    pub next_serial: u64,
    /// Id of the KEK that encrypts.
    pub primary: String,
    /// KEKs that can decrypt, oldest first.
    pub keys: Vec<SealedKek>,
    /// KEKs that were retired: their ids stay reserved.
    #[serde(default)]
    pub retired: Vec<RetiredKek>,
}

/// A KEK sealed by the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKek {
    /// The KMS key_id.
    pub id: String,
    /// Its serial number in this keystore.
    pub serial: u64,
    /// Creation time, RFC 3339.
    pub created: String,
    /// The sealed 32-byte key, base64.
    pub sealed: String,
}

/// A KEK that was retired; its material is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredKek {
    /// The key_id it had.
    pub id: String,
    /// When it was created, RFC 3339.
    pub created: String,
    /// When it was retired, RFC 3339.
    pub retired: String,
}

type HmacSha256 = Hmac<Sha256>;

/// Serialises and authenticates `contents`.
pub fn encode(contents: &Contents, mac_key: &[u8; 32]) -> Vec<u8> {
    // Serialising plain strings and integers cannot fail.
    let body = serde_json::to_vec_pretty(contents).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + MAC_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    let tag = mac_tag(mac_key, &out);
    out.extend_from_slice(&tag);
    out
}

/// HMAC-SHA256 of `data` under `mac_key`: how Coffer authenticates a whole file under a
/// platform-derived key (this keystore, keyd's sealing-key files).
pub fn mac_tag(mac_key: &[u8; 32], data: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = mac(mac_key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Whether `tag` is the [`mac_tag`] of `data` under `mac_key`, compared in constant time.
pub fn mac_verifies(mac_key: &[u8; 32], data: &[u8], tag: &[u8]) -> bool {
    let mut mac = mac(mac_key);
    mac.update(data);
    mac.verify_slice(tag).is_ok()
}

fn mac(key: &[u8; 32]) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Reads the format version without authenticating anything (for diagnostics).
pub fn peek_version(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < 10 || &bytes[..8] != MAGIC {
        return None;
    }
    Some(u16::from_be_bytes([bytes[8], bytes[9]]))
}

/// Checks and parses a keystore file read from `path`.
pub fn decode(path: &Path, bytes: &[u8], mac_key: &[u8; 32]) -> Result<Contents, KeystoreError> {
    let corrupt = |problem: String| KeystoreError::Corrupt {
        path: path.to_path_buf(),
        problem,
    };
    let truncated = |needed: usize| KeystoreError::Truncated {
        path: path.to_path_buf(),
        len: bytes.len(),
        needed,
    };
    if bytes.len() < HEADER_LEN {
        return if MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC.len())]) {
            Err(truncated(HEADER_LEN))
        } else {
            Err(KeystoreError::NotAKeystore {
                path: path.to_path_buf(),
            })
        };
    }
    if &bytes[..8] != MAGIC {
        return Err(KeystoreError::NotAKeystore {
            path: path.to_path_buf(),
        });
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version > FORMAT_VERSION {
        return Err(KeystoreError::NewerFormat {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(corrupt("format version 0 does not exist".into()));
    }
    let body_len = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    if body_len > MAX_FILE_LEN {
        return Err(corrupt(format!("its header claims a {body_len}-byte body")));
    }
    let needed = HEADER_LEN + body_len + MAC_LEN;
    if bytes.len() < needed {
        return Err(truncated(needed));
    }
    if bytes.len() > needed {
        return Err(corrupt(format!(
            "{} unexpected bytes after the end",
            bytes.len() - needed
        )));
    }
    let (signed, tag) = bytes.split_at(HEADER_LEN + body_len);
    if !mac_verifies(mac_key, signed, tag) {
        return Err(KeystoreError::Tampered {
            path: path.to_path_buf(),
        });
    }
    let contents: Contents = serde_json::from_slice(&signed[HEADER_LEN..])
        .map_err(|e| corrupt(format!("its body is not valid: {e}")))?;
    validate(&contents).map_err(corrupt)?;
    Ok(contents)
}

fn validate(c: &Contents) -> Result<(), String> {
    if c.keys.is_empty() {
        return Err("it holds no KEK".into());
    }
    let mut seen = std::collections::HashSet::new();
    for id in c
        .keys
        .iter()
        .map(|k| &k.id)
        .chain(c.retired.iter().map(|r| &r.id))
    {
        crate::store::validate_key_id(id)?;
        if !seen.insert(id.as_str()) {
            return Err(format!("KEK id {id} appears twice"));
        }
    }
    if !c.keys.iter().any(|k| k.id == c.primary) {
        return Err(format!(
            "the primary KEK {} is not among its keys",
            c.primary
        ));
    }
    if let Some(k) = c.keys.iter().find(|k| k.serial >= c.next_serial) {
        return Err(format!(
            "KEK {} has serial {} but next_serial is {}",
            k.id, k.serial, c.next_serial
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [5; 32];

    fn contents() -> Contents {
        Contents {
            keystore_id: "0011223344556677".into(),
            platform: "sim".into(),
            generation: 1,
            next_serial: 2,
            primary: "coffer-0001-aabbccddeeff0011".into(),
            keys: vec![SealedKek {
                id: "coffer-0001-aabbccddeeff0011".into(),
                serial: 1,
                created: "2026-11-27T00:00:00Z".into(),
                sealed: "AAAA".into(),
            }],
            retired: vec![],
        }
    }

    fn decode_bytes(bytes: &[u8]) -> Result<Contents, KeystoreError> {
        decode(Path::new("/state/keystore"), bytes, &KEY)
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&contents(), &KEY);
        assert_eq!(decode_bytes(&bytes).unwrap(), contents());
        assert_eq!(peek_version(&bytes), Some(1));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused() {
        let bytes = encode(&contents(), &KEY);
        for len in 0..bytes.len() {
            let err = decode_bytes(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, KeystoreError::Truncated { .. }),
                "len {len}: {err}"
            );
        }
        for i in 0..bytes.len() {
            let mut t = bytes.clone();
            t[i] ^= 0x04;
            assert!(decode_bytes(&t).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn names_the_problem() {
        let bytes = encode(&contents(), &KEY);
        let mut newer = bytes.clone();
        newer[9] = 2;
        let err = decode_bytes(&newer).unwrap_err().to_string();
        assert!(
            err.contains("version 2") && err.contains("upgrade coffer"),
            "{err}"
        );
        let err = decode_bytes(b"{\"json\": true, \"padding\": 1}").unwrap_err();
        assert!(matches!(err, KeystoreError::NotAKeystore { .. }));
        let err = decode(Path::new("/k"), &bytes, &[6; 32])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("integrity check") && err.contains("/k"),
            "{err}"
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_bytes(&longer)
            .unwrap_err()
            .to_string()
            .contains("unexpected bytes"));
    }

    #[test]
    fn inconsistent_contents_are_corrupt() {
        let mut c = contents();
        c.primary = "coffer-0002-0000000000000000".into();
        let err = decode_bytes(&encode(&c, &KEY)).unwrap_err().to_string();
        assert!(err.contains("primary"), "{err}");
        let mut c = contents();
        c.next_serial = 1;
        assert!(decode_bytes(&encode(&c, &KEY))
            .unwrap_err()
            .to_string()
            .contains("next_serial"));
        let mut c = contents();
        c.keys.push(c.keys[0].clone());
        assert!(decode_bytes(&encode(&c, &KEY))
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }
}

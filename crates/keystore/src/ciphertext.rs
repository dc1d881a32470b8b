//! The ciphertext format returned by `Encrypt` and accepted by `Decrypt`.
//!
//! ```text
//! 0xC0 | version (1) | id_len (u8) | KEK id (id_len bytes, ASCII) | nonce (12) | AES-256-GCM ciphertext ‖ tag (16)
//! ```
//! The KEK id and version are authenticated as associated data, so a ciphertext cannot be
//! relabelled with another id. For the API server's 32-byte plaintext it is about 100 bytes,
//! well under the 1 KiB limit.

use crate::DecryptError;

/// First byte of every Coffer KMS ciphertext.
pub const MAGIC: u8 = 0xC0;
/// The format version written by this binary.
pub const VERSION: u8 = 1;
/// AES-GCM nonce length.
pub const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// The longest KEK id the format can carry.
pub const MAX_KEY_ID_LEN: usize = 255;
/// The longest ciphertext `Decrypt` looks at.
pub const MAX_CIPHERTEXT_LEN: usize = 1024;

const AAD_LABEL: &[u8] = b"coffer kms ciphertext v1\0";

/// A parsed ciphertext, borrowing from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The KEK id it was made with.
    pub key_id: &'a str,
    /// The AES-GCM nonce.
    pub nonce: &'a [u8; NONCE_LEN],
    /// AES-GCM ciphertext followed by the tag.
    pub sealed: &'a [u8],
}

/// The associated data bound into every ciphertext made with `key_id`.
pub fn associated_data(key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + key_id.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

/// Writes the header (magic, version, id) and nonce; the caller appends the sealed bytes.
pub fn header(key_id: &str, nonce: &[u8; NONCE_LEN], sealed_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 + key_id.len() + NONCE_LEN + sealed_len);
    out.push(MAGIC);
    out.push(VERSION);
    // Ids are validated to fit in a byte when the keystore is loaded.
    out.push(key_id.len().min(MAX_KEY_ID_LEN) as u8);
    out.extend_from_slice(&key_id.as_bytes()[..key_id.len().min(MAX_KEY_ID_LEN)]);
    out.extend_from_slice(nonce);
    out
}

/// Splits a ciphertext into its parts, checking every length.
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, DecryptError> {
    if bytes.is_empty() {
        return Err(DecryptError::Malformed("it is empty"));
    }
    if bytes.len() > MAX_CIPHERTEXT_LEN {
        return Err(DecryptError::Malformed("it is longer than 1024 bytes"));
    }
    let [magic, version, id_len, rest @ ..] = bytes else {
        return Err(DecryptError::Malformed("it is shorter than the header"));
    };
    if *magic != MAGIC {
        return Err(DecryptError::Malformed(
            "it was not made by Coffer (wrong magic byte)",
        ));
    }
    if *version != VERSION {
        return Err(DecryptError::Malformed(
            "it uses an unknown format version (made by a newer Coffer?)",
        ));
    }
    let id_len = usize::from(*id_len);
    if id_len == 0 {
        return Err(DecryptError::Malformed("the KEK id is empty"));
    }
    if rest.len() < id_len + NONCE_LEN + TAG_LEN {
        return Err(DecryptError::Malformed("it is truncated"));
    }
    let (id, rest) = rest.split_at(id_len);
    let key_id =
        std::str::from_utf8(id).map_err(|_| DecryptError::Malformed("the KEK id is not UTF-8"))?;
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce: &[u8; NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| DecryptError::Malformed("it is truncated"))?;
    Ok(Parsed {
        key_id,
        nonce,
        sealed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut ct = header("coffer-0001-00112233aabbccdd", &[7; NONCE_LEN], 48);
        ct.extend_from_slice(&[9; 48]);
        ct
    }

    #[test]
    fn parses_what_header_writes() {
        let ct = sample();
        let p = parse(&ct).unwrap();
        assert_eq!(p.key_id, "coffer-0001-00112233aabbccdd");
        assert_eq!(p.nonce, &[7; NONCE_LEN]);
        assert_eq!(p.sealed, &[9; 48]);
    }

    #[test]
    fn every_truncation_is_refused() {
        let ct = sample();
        for len in 0..(3 + 28 + NONCE_LEN + TAG_LEN) {
            assert!(parse(&ct[..len]).is_err(), "accepted a {len}-byte prefix");
        }
    }

    #[test]
    fn rejects_wrong_magic_version_empty_id_and_oversize() {
        let mut ct = sample();
        ct[0] = 0;
        assert_eq!(
            parse(&ct),
            Err(DecryptError::Malformed(
                "it was not made by Coffer (wrong magic byte)"
            ))
        );
        let mut ct = sample();
        ct[1] = 2;
        assert!(matches!(parse(&ct), Err(DecryptError::Malformed(m)) if m.contains("version")));
        let mut ct = sample();
        ct[2] = 0;
        assert!(matches!(parse(&ct), Err(DecryptError::Malformed(m)) if m.contains("empty")));
        assert!(parse(&vec![MAGIC; 1025]).is_err());
        let mut ct = sample();
        ct[3] = 0xff;
        assert!(matches!(parse(&ct), Err(DecryptError::Malformed(m)) if m.contains("UTF-8")));
    }
}

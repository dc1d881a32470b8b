//! The wire format of a sealed value and sealing/opening it.
//!
//! `coffer.v1.` + base64url (no padding) of `header || enc (32) || ciphertext+tag`, where the
//! header is: version byte 1, scope byte, then the u8-length-prefixed UTF-8 strings keyring,
//! key id, namespace, Secret name, data key (empty where the scope does not fix them). The
//! header is the HPKE `aad`, so everything in it is authenticated. docs/sealed-values.md
//! specifies it byte by byte.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::binding::{Binding, BindingFields, FieldProblem};
use crate::error::{FormatError, OpenError, SealError};
use crate::keys::{is_key_id_form, SealingKeyPair, SealingPublicKey};
use crate::{names, suite, Scope};

/// The text prefix of every sealed value of format version 1.
pub const PREFIX: &str = "coffer.v1.";
/// Largest plaintext that can be sealed: a whole Secret's limit (1 MiB).
pub const MAX_PLAINTEXT_LEN: usize = 1 << 20;
/// Longest sealed-value text accepted by [`SealedValue::parse`] (a sealed 1 MiB value plus
/// header, base64url-encoded).
pub const MAX_SEALED_TEXT_LEN: usize = PREFIX.len() + ((MAX_PLAINTEXT_LEN + 1024) * 4).div_ceil(3);

/// The header version byte of format v1.
const VERSION: u8 = 1;

/// A parsed sealed value. Holds only ciphertext and public header fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValue {
    keyring: String,
    key_id: String,
    binding: Binding,
    /// The HPKE encapsulated key.
    enc: [u8; 32],
    /// AES-256-GCM ciphertext and tag.
    ciphertext: Vec<u8>,
}

impl SealedValue {
    /// Parses `coffer.v1.<base64url>`; bounded by [`MAX_SEALED_TEXT_LEN`].
    pub fn parse(text: &str) -> Result<SealedValue, FormatError> {
        if text.len() > MAX_SEALED_TEXT_LEN {
            return Err(FormatError::TooLong {
                len: text.len(),
                max: MAX_SEALED_TEXT_LEN,
            });
        }
        let Some(encoded) = text.strip_prefix(PREFIX) else {
            return Err(other_version(text));
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|e| FormatError::Base64 {
                reason: e.to_string(),
            })?;
        let mut reader = Reader(&bytes);
        let version = reader.byte("header")?;
        if version != VERSION {
            return Err(FormatError::HeaderVersion(version));
        }
        let scope_byte = reader.byte("header")?;
        let scope =
            Scope::from_wire_byte(scope_byte).ok_or(FormatError::UnknownScope(scope_byte))?;
        let keyring = reader.string("keyring")?;
        if let Some(reason) = names::keyring_problem(keyring) {
            return Err(FormatError::InvalidField {
                field: "keyring",
                reason,
            });
        }
        let key_id = reader.string("key id")?;
        if !is_key_id_form(key_id) {
            return Err(FormatError::InvalidField {
                field: "key id",
                reason: "it is not \"sk-\" and 16 lower-case hex digits",
            });
        }
        let fields = BindingFields {
            namespace: reader.string("namespace")?,
            secret: reader.string("Secret name")?,
            key: reader.string("data key")?,
        };
        let binding = Binding::from_fields(scope, &fields).map_err(|problem| match problem {
            FieldProblem::Scope { field, present } => FormatError::ScopeFields {
                scope,
                field,
                present,
            },
            FieldProblem::Name { field, reason, .. } => FormatError::InvalidField { field, reason },
        })?;
        let enc = reader.array("encapsulated key")?;
        let ciphertext = reader.0;
        if ciphertext.len() <= suite::TAG_LEN {
            return Err(FormatError::EmptyCiphertext);
        }
        Ok(SealedValue {
            keyring: keyring.to_string(),
            key_id: key_id.to_string(),
            binding,
            enc,
            ciphertext: ciphertext.to_vec(),
        })
    }

    /// Whether `text` looks like a sealed value (starts with a `coffer.` prefix), so tools can
    /// tell sealed from plaintext values without parsing.
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with("coffer.")
    }

    /// The text form, `coffer.v1.<base64url>`.
    pub fn to_text(&self) -> String {
        let mut bytes = header(&self.keyring, &self.key_id, &self.binding);
        bytes.extend_from_slice(&self.enc);
        bytes.extend_from_slice(&self.ciphertext);
        let mut text = String::with_capacity(PREFIX.len() + (bytes.len() * 4).div_ceil(3));
        text.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&bytes, &mut text);
        text
    }

    /// The keyring it is sealed to.
    pub fn keyring(&self) -> &str {
        &self.keyring
    }

    /// The sealing key id it is sealed to.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The authenticated binding.
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// The header bytes: what HPKE authenticates as `aad`.
    pub fn header(&self) -> Vec<u8> {
        header(&self.keyring, &self.key_id, &self.binding)
    }

    /// The HPKE encapsulated key (`enc`).
    pub fn enc(&self) -> &[u8; 32] {
        &self.enc
    }

    /// The AES-256-GCM ciphertext with its tag.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }
}

impl fmt::Display for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// What a text that is not `coffer.v1.…` is: a later version, or no sealed value at all.
fn other_version(text: &str) -> FormatError {
    let version = text
        .strip_prefix("coffer.v")
        .and_then(|rest| rest.split_once('.'))
        .filter(|(digits, _)| {
            !digits.is_empty() && digits.len() <= 9 && digits.bytes().all(|b| b.is_ascii_digit())
        })
        .and_then(|(digits, _)| digits.parse::<u32>().ok());
    match version {
        Some(version) if version > 1 => FormatError::NewerVersion { version },
        _ => FormatError::NotSealed,
    }
}

fn header(keyring: &str, key_id: &str, binding: &Binding) -> Vec<u8> {
    let fields = binding.fields();
    let strings = [keyring, key_id, fields.namespace, fields.secret, fields.key];
    let mut out = Vec::with_capacity(2 + strings.iter().map(|s| 1 + s.len()).sum::<usize>());
    out.push(VERSION);
    out.push(binding.scope().wire_byte());
    for s in strings {
        // Every field is validated to at most 253 bytes before it gets here.
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }
    out
}

/// Reads the header fields off the front of the decoded bytes.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, part: &'static str) -> Result<&'a [u8], FormatError> {
        if self.0.len() < n {
            return Err(FormatError::Truncated { part });
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn byte(&mut self, part: &'static str) -> Result<u8, FormatError> {
        Ok(self.take(1, part)?[0])
    }

    fn string(&mut self, part: &'static str) -> Result<&'a str, FormatError> {
        let len = self.byte(part)?;
        std::str::from_utf8(self.take(usize::from(len), part)?).map_err(|_| {
            FormatError::InvalidField {
                field: part,
                reason: "it is not UTF-8",
            }
        })
    }

    fn array(&mut self, part: &'static str) -> Result<[u8; 32], FormatError> {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.take(32, part)?);
        Ok(out)
    }
}

/// Seals `plaintext` (1 byte to [`MAX_PLAINTEXT_LEN`]) to `key` of `keyring` with `binding`.
pub fn seal(
    keyring: &str,
    key: &SealingPublicKey,
    binding: &Binding,
    plaintext: &[u8],
) -> Result<SealedValue, SealError> {
    let mut ikm_e = Zeroizing::new([0u8; 32]);
    coffer_platform::fill_random(&mut ikm_e[..]).map_err(|e| SealError::Random(e.to_string()))?;
    seal_with_ephemeral_ikm(keyring, key, binding, plaintext, &ikm_e)
}

/// [`seal`] with the ephemeral key derived from `ikm_e` (`DeriveKeyPair(ikm_e)`) instead of
/// fresh randomness: only for test vectors, as a reused `ikm_e` gives away the plaintexts.
pub(crate) fn seal_with_ephemeral_ikm(
    keyring: &str,
    key: &SealingPublicKey,
    binding: &Binding,
    plaintext: &[u8],
    ikm_e: &[u8; 32],
) -> Result<SealedValue, SealError> {
    if plaintext.is_empty() {
        return Err(SealError::EmptyPlaintext);
    }
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(SealError::PlaintextTooLarge {
            len: plaintext.len(),
            max: MAX_PLAINTEXT_LEN,
        });
    }
    if let Some(reason) = names::keyring_problem(keyring) {
        return Err(SealError::invalid_name("keyring name", keyring, reason));
    }
    let aad = header(keyring, key.id(), binding);
    let (enc, ciphertext) = suite::seal(key.bytes(), ikm_e, &aad, plaintext).map_err(|_| {
        SealError::InvalidPublicKey {
            key_id: key.id().to_string(),
        }
    })?;
    Ok(SealedValue {
        keyring: keyring.to_string(),
        key_id: key.id().to_string(),
        binding: binding.clone(),
        enc,
        ciphertext,
    })
}

/// Opens `value` with `key` (whose id must be the value's key id). Only keyd calls this.
pub fn open(value: &SealedValue, key: &SealingKeyPair) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if value.key_id != key.id() {
        return Err(OpenError::WrongKey {
            value_key_id: value.key_id.clone(),
            key_id: key.id().to_string(),
        });
    }
    suite::open(
        key.private_bytes(),
        &value.enc,
        &value.header(),
        &value.ciphertext,
    )
    .map_err(|_| OpenError::Decrypt {
        key_id: key.id().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Location;

    fn location() -> Location {
        Location {
            namespace: "prod".into(),
            secret: "db".into(),
            key: "password".into(),
        }
    }

    fn sealed(scope: Scope, pair: &SealingKeyPair, plaintext: &[u8]) -> SealedValue {
        let binding = Binding::new(scope, &location()).unwrap();
        seal("apps", pair.public(), &binding, plaintext).unwrap()
    }

    #[test]
    fn round_trips_every_scope() {
        let pair = SealingKeyPair::generate().unwrap();
        for scope in [Scope::Strict, Scope::Namespace, Scope::Cluster] {
            let value = sealed(scope, &pair, b"hunter2");
            let text = value.to_text();
            assert!(text.starts_with(PREFIX));
            let parsed = SealedValue::parse(&text).unwrap();
            assert_eq!(parsed, value);
            assert_eq!(parsed.keyring(), "apps");
            assert_eq!(parsed.key_id(), pair.id());
            assert_eq!(parsed.binding().scope(), scope);
            assert_eq!(&open(&parsed, &pair).unwrap()[..], b"hunter2");
            assert!(!format!("{parsed:?}").contains("hunter2"));
        }
    }

    #[test]
    fn every_seal_has_a_fresh_ephemeral_key() {
        let pair = SealingKeyPair::generate().unwrap();
        let a = sealed(Scope::Strict, &pair, b"same");
        let b = sealed(Scope::Strict, &pair, b"same");
        assert_ne!(a.enc(), b.enc());
        assert_ne!(a.to_text(), b.to_text());
    }

    #[test]
    fn header_is_authenticated() {
        let pair = SealingKeyPair::generate().unwrap();
        let value = sealed(Scope::Strict, &pair, b"v");
        let mut moved = value.clone();
        moved.binding = Binding::new(
            Scope::Strict,
            &Location {
                key: "user".into(),
                ..location()
            },
        )
        .unwrap();
        assert_eq!(
            open(&moved, &pair).unwrap_err(),
            OpenError::Decrypt {
                key_id: pair.id().to_string()
            }
        );
        let mut renamed = value.clone();
        renamed.keyring = "other".into();
        assert!(matches!(
            open(&renamed, &pair),
            Err(OpenError::Decrypt { .. })
        ));
        let widened = SealedValue {
            binding: Binding::new(Scope::Cluster, &location()).unwrap(),
            ..value.clone()
        };
        assert!(matches!(
            open(&widened, &pair),
            Err(OpenError::Decrypt { .. })
        ));
        let other = SealingKeyPair::generate().unwrap();
        assert!(matches!(
            open(&value, &other),
            Err(OpenError::WrongKey { .. })
        ));
    }

    #[test]
    fn size_limits() {
        let pair = SealingKeyPair::generate().unwrap();
        let binding = Binding::new(Scope::Cluster, &location()).unwrap();
        assert_eq!(
            seal("apps", pair.public(), &binding, b"").unwrap_err(),
            SealError::EmptyPlaintext
        );
        let too_big = vec![0u8; MAX_PLAINTEXT_LEN + 1];
        assert!(matches!(
            seal("apps", pair.public(), &binding, &too_big),
            Err(SealError::PlaintextTooLarge { .. })
        ));
        // The largest value with the longest header still fits MAX_SEALED_TEXT_LEN.
        let long = Location {
            namespace: "n".repeat(63),
            secret: "s".repeat(253),
            key: "k".repeat(253),
        };
        let binding = Binding::new(Scope::Strict, &long).unwrap();
        let keyring = "r".repeat(63);
        let max = vec![7u8; MAX_PLAINTEXT_LEN];
        let text = seal(&keyring, pair.public(), &binding, &max)
            .unwrap()
            .to_text();
        assert!(text.len() <= MAX_SEALED_TEXT_LEN);
        let parsed = SealedValue::parse(&text).unwrap();
        assert_eq!(open(&parsed, &pair).unwrap().len(), MAX_PLAINTEXT_LEN);
        assert!(matches!(
            seal("Bad", pair.public(), &binding, b"x"),
            Err(SealError::InvalidName {
                what: "keyring name",
                ..
            })
        ));
    }

    #[test]
    fn low_order_public_key_is_refused() {
        let binding = Binding::new(Scope::Cluster, &location()).unwrap();
        let zero = SealingPublicKey::from_bytes([0; 32]);
        assert!(matches!(
            seal("apps", &zero, &binding, b"x"),
            Err(SealError::InvalidPublicKey { .. })
        ));
    }

    fn encode(bytes: &[u8]) -> String {
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    #[test]
    fn parse_refusals() {
        let pair = SealingKeyPair::generate().unwrap();
        let value = sealed(Scope::Strict, &pair, b"v");
        let header = value.header();
        let body = |header: &[u8], rest: &[u8]| {
            let mut b = header.to_vec();
            b.extend_from_slice(rest);
            encode(&b)
        };
        let tail: Vec<u8> = value
            .enc()
            .iter()
            .chain(value.ciphertext())
            .copied()
            .collect();

        assert_eq!(
            SealedValue::parse("hunter2").unwrap_err(),
            FormatError::NotSealed
        );
        assert_eq!(
            SealedValue::parse("coffer.v0.AA").unwrap_err(),
            FormatError::NotSealed
        );
        let newer = SealedValue::parse("coffer.v2.AAAA").unwrap_err();
        assert_eq!(newer, FormatError::NewerVersion { version: 2 });
        assert!(newer.to_string().contains("made by a newer kubectl coffer"));
        assert!(matches!(
            SealedValue::parse("coffer.v1.A+=="),
            Err(FormatError::Base64 { .. })
        ));
        // Non-canonical base64url: trailing bits set.
        assert!(matches!(
            SealedValue::parse("coffer.v1.AB"),
            Err(FormatError::Base64 { .. })
        ));
        assert_eq!(
            SealedValue::parse(PREFIX).unwrap_err(),
            FormatError::Truncated { part: "header" }
        );
        let too_long = format!("{PREFIX}{}", "A".repeat(MAX_SEALED_TEXT_LEN));
        assert!(matches!(
            SealedValue::parse(&too_long),
            Err(FormatError::TooLong { .. })
        ));

        let mut h = header.clone();
        h[0] = 2;
        assert_eq!(
            SealedValue::parse(&body(&h, &tail)).unwrap_err(),
            FormatError::HeaderVersion(2)
        );
        h[0] = 1;
        h[1] = 9;
        assert_eq!(
            SealedValue::parse(&body(&h, &tail)).unwrap_err(),
            FormatError::UnknownScope(9)
        );
        h[1] = Scope::Namespace.wire_byte();
        assert_eq!(
            SealedValue::parse(&body(&h, &tail)).unwrap_err(),
            FormatError::ScopeFields {
                scope: Scope::Namespace,
                field: "Secret name",
                present: true
            }
        );
        // Truncated inside the header and inside enc.
        assert_eq!(
            SealedValue::parse(&encode(&header[..header.len() - 2])).unwrap_err(),
            FormatError::Truncated { part: "data key" }
        );
        assert_eq!(
            SealedValue::parse(&body(&header, &tail[..20])).unwrap_err(),
            FormatError::Truncated {
                part: "encapsulated key"
            }
        );
        assert_eq!(
            SealedValue::parse(&body(&header, &tail[..32 + 16])).unwrap_err(),
            FormatError::EmptyCiphertext
        );
        // A length byte that runs past the end.
        let mut h = header.clone();
        h[2] = 200;
        assert!(matches!(
            SealedValue::parse(&encode(&h)),
            Err(FormatError::Truncated { .. })
        ));
    }
}

//! Offline decryption of the values kube-apiserver stores in etcd with a KMS v2 provider.
//!
//! This is the disaster-recovery path: with the plugin's keystore (to unwrap the DEK source) and a
//! raw value read from etcd, an operator can recover the object without a running API server.
//! It re-implements the read side of kube-apiserver's KMS v2 envelope
//! (`k8s.io/apiserver/pkg/storage/value/encrypt/envelope/kmsv2` and `.../encrypt/aes`):
//!
//! * the etcd value is `k8s:enc:kms:v2:<provider name>:` followed by a protobuf
//!   [`EncryptedObject`];
//! * `encryptedDEKSource` is what the KMS plugin's Encrypt returned; the plugin's Decrypt (here: the
//!   closure given to [`decrypt_etcd_value`]) turns it back into the *DEK source*;
//! * for [`EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed`] the DEK source is a seed (32 bytes
//!   as written, at least 32 accepted), `encryptedData` is
//!   `info (32) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`, and the AES-256-GCM key is
//!   HKDF-Expand-SHA256(PRK = seed, info, 32 bytes), with no Extract step;
//! * for [`EncryptedDekSourceType::AesGcmKey`] the DEK source is the AES key itself (16, 24 or 32
//!   bytes) and `encryptedData` is `nonce (12) ‖ ciphertext ‖ tag (16)`;
//! * in both cases the GCM additional data is the etcd key the value is stored under, such as
//!   `/registry/secrets/default/db`.
//!
//! Parsing applies the same checks kube-apiserver applies before it decrypts (size limits, empty
//! fields, annotation keys), plus an overall bound on the value's size, so hostile input is refused
//! early. Nothing here panics on any input.
//!
//! Key hygiene: the AES key derived from a seed is held in [`Zeroizing`], and the AES round keys and
//! GHASH key that AES-GCM expands from it are zeroized on drop (the `zeroize` features of `aes` and
//! `polyval`). The HMAC state inside the `hkdf` crate during the derivation is not: `hkdf`, `hmac`
//! and `sha2` offer no zeroization. The DEK source itself belongs to the caller (the unwrap
//! closure returns it as [`Zeroizing`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;

use std::collections::HashMap;
use std::fmt;

use aes_gcm::aead::consts::{U12, U16};
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aes::Aes192;
use aes_gcm::{AeadInPlace, Aes128Gcm, Aes256Gcm, AesGcm, KeyInit};
use hkdf::Hkdf;
use prost::Message;
use sha2::Sha256;
use zeroize::Zeroizing;

pub use coffer_proto::envelope::{EncryptedDekSourceType, EncryptedObject};
pub use error::{EnvelopeError, Field, StoredAs};

/// The prefix kube-apiserver writes before the provider name of every KMS v2 value.
pub const KMS_V2_PREFIX: &[u8] = b"k8s:enc:kms:v2:";

/// The largest raw etcd value [`parse_etcd_value`] accepts: 16 MiB (etcd's own default request
/// limit is 1.5 MiB).
pub const MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;

/// The largest `keyID` kube-apiserver accepts: 1 KiB.
pub const MAX_KEY_ID_SIZE: usize = 1024;

/// The largest `encryptedDEKSource` kube-apiserver accepts: 1 KiB.
pub const MAX_ENCRYPTED_DEK_SOURCE_SIZE: usize = 1024;

/// The largest total size of the annotations (every key and value length summed) kube-apiserver
/// accepts: 32 KiB.
pub const MAX_ANNOTATIONS_SIZE: usize = 32 * 1024;

/// Prefix of every value written by an encrypting provider.
const ENCRYPTED_PREFIX: &[u8] = b"k8s:enc:";
/// Prefix of Kubernetes' protobuf serialisation (what the identity provider stores).
const PROTOBUF_PREFIX: &[u8] = b"k8s\x00";
/// CBOR self-described tag that Kubernetes' CBOR serialisation starts with.
const CBOR_PREFIX: &[u8] = &[0xd9, 0xd9, 0xf7];

/// Length of the HKDF info stored in front of seed-based ciphertexts.
const INFO_LEN: usize = 32;
/// AES-GCM nonce length used by kube-apiserver.
const NONCE_LEN: usize = 12;
/// AES-GCM tag length.
const TAG_LEN: usize = 16;
/// Least seed length kube-apiserver accepts (`aes.MinSeedSizeExtendedNonceGCM`).
const MIN_SEED_LEN: usize = 32;
/// Length of the key derived from a seed.
const DERIVED_KEY_LEN: usize = 32;

/// A KMS v2 etcd value split into its provider name and decoded, validated envelope.
///
/// Produced by [`parse_etcd_value`]; its `encrypted_dek_source_type` is known to be valid and its
/// fields are within kube-apiserver's limits. `Debug` summarises the byte fields by length.
#[derive(Clone, PartialEq)]
pub struct ParsedValue {
    /// The provider name from the prefix `k8s:enc:kms:v2:<provider>:` (the `name` of the KMS
    /// provider in the API server's EncryptionConfiguration).
    pub provider: String,
    /// The decoded envelope.
    pub object: EncryptedObject,
}

impl fmt::Debug for ParsedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let obj = &self.object;
        let mut keys: Vec<&str> = obj.annotations.keys().map(String::as_str).collect();
        keys.sort_unstable();
        f.debug_struct("ParsedValue")
            .field("provider", &self.provider)
            .field("key_id", &obj.key_id)
            .field(
                "source_type",
                &EncryptedDekSourceType::try_from(obj.encrypted_dek_source_type)
                    .map(|t| t.as_str_name())
                    .unwrap_or("unknown"),
            )
            .field("encrypted_dek_source_len", &obj.encrypted_dek_source.len())
            .field("encrypted_data_len", &obj.encrypted_data.len())
            .field("annotation_keys", &keys)
            .finish()
    }
}

/// The result of [`decrypt_etcd_value`]: the object plaintext and where it came from.
///
/// The plaintext is the serialised Kubernetes object (usually protobuf starting `k8s\0`, or JSON).
/// It is secret: `Debug` prints only its length, and the caller should zeroize it when done (for
/// example with `zeroize::Zeroize::zeroize(&mut decrypted.plaintext)`).
#[derive(Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The provider name from the value's prefix.
    pub provider: String,
    /// The `keyID` the DEK source was wrapped under.
    pub key_id: String,
    /// How the data key was obtained from the DEK source.
    pub source_type: EncryptedDekSourceType,
    /// The decrypted object, exactly as kube-apiserver serialised it.
    pub plaintext: Vec<u8>,
}

impl fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decrypted")
            .field("provider", &self.provider)
            .field("key_id", &self.key_id)
            .field("source_type", &self.source_type.as_str_name())
            .field("plaintext_len", &self.plaintext.len())
            .finish_non_exhaustive()
    }
}

/// Parses a raw etcd value written by kube-apiserver with a KMS v2 provider.
///
/// Checks, in order: the value is at most [`MAX_VALUE_SIZE`]; it starts with [`KMS_V2_PREFIX`]
/// (otherwise [`EnvelopeError::NotKmsV2`] says what it is instead); the provider name after the
/// prefix is non-empty UTF-8 ended by `:`; the rest decodes as an [`EncryptedObject`]; and the
/// object passes kube-apiserver's own validation: known source type, non-empty `encryptedData`,
/// `encryptedDEKSource` and `keyID` of at most 1 KiB each, annotations of at most 32 KiB in total
/// whose keys are fully qualified domain names.
///
/// Nothing is decrypted here; see [`decrypt_object`] and [`decrypt_etcd_value`].
pub fn parse_etcd_value(raw: &[u8]) -> Result<ParsedValue, EnvelopeError> {
    if raw.len() > MAX_VALUE_SIZE {
        return Err(EnvelopeError::FieldTooLarge {
            field: Field::Value,
            size: raw.len(),
            max: MAX_VALUE_SIZE,
        });
    }
    let Some(rest) = raw.strip_prefix(KMS_V2_PREFIX) else {
        return Err(not_kms_v2(raw));
    };
    let Some(colon) = rest.iter().position(|&b| b == b':') else {
        return Err(EnvelopeError::InvalidProviderName(
            "no ':' ends the provider name",
        ));
    };
    let (name, rest) = (&rest[..colon], &rest[colon + 1..]);
    if name.is_empty() {
        return Err(EnvelopeError::InvalidProviderName(
            "the provider name is empty",
        ));
    }
    let provider = std::str::from_utf8(name)
        .map_err(|_| EnvelopeError::InvalidProviderName("the provider name is not UTF-8"))?
        .to_owned();
    let object = EncryptedObject::decode(rest)?;
    validate_object(&object)?;
    Ok(ParsedValue { provider, object })
}

/// Decrypts a parsed envelope, given the DEK source that the KMS plugin unwrapped from its
/// `encryptedDEKSource`.
///
/// `etcd_key` must be exactly the etcd key the value was read from (such as
/// `/registry/secrets/default/db`): kube-apiserver authenticates it as AES-GCM additional data.
/// `dek_source` is a seed of at least 32 bytes for
/// [`EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed`], or a 16, 24 or 32-byte AES key for
/// [`EncryptedDekSourceType::AesGcmKey`].
///
/// Checks the source type and the length of `encryptedData` and of `dek_source`, but not the size
/// limits [`parse_etcd_value`] applies. Keys derived here are zeroized when dropped; the caller owns
/// `dek_source`.
pub fn decrypt_object(
    obj: &EncryptedObject,
    etcd_key: &str,
    dek_source: &[u8],
) -> Result<Vec<u8>, EnvelopeError> {
    let source_type = source_type_of(obj)?;
    check_encrypted_data_len(source_type, &obj.encrypted_data)?;
    let aad = etcd_key.as_bytes();
    match source_type {
        EncryptedDekSourceType::AesGcmKey => {
            let data = &obj.encrypted_data[..];
            match dek_source.len() {
                16 => open(
                    &aead::<Aes128Gcm>(dek_source, source_type)?,
                    data,
                    aad,
                    source_type,
                ),
                24 => open(
                    &aead::<AesGcm<Aes192, U12>>(dek_source, source_type)?,
                    data,
                    aad,
                    source_type,
                ),
                32 => open(
                    &aead::<Aes256Gcm>(dek_source, source_type)?,
                    data,
                    aad,
                    source_type,
                ),
                len => Err(EnvelopeError::DekSourceLength {
                    source_type,
                    len,
                    expected: "an AES key of 16, 24 or 32 bytes",
                }),
            }
        }
        EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed => {
            let wrong_length = || EnvelopeError::DekSourceLength {
                source_type,
                len: dek_source.len(),
                expected: "a seed of at least 32 bytes",
            };
            if dek_source.len() < MIN_SEED_LEN {
                return Err(wrong_length());
            }
            let (info, data) =
                obj.encrypted_data
                    .split_at_checked(INFO_LEN)
                    .ok_or(EnvelopeError::Truncated {
                        source_type,
                        len: obj.encrypted_data.len(),
                        min: INFO_LEN + NONCE_LEN + TAG_LEN,
                    })?;
            // HKDF-Expand only: kube-apiserver uses the seed itself as the PRK.
            let hkdf = Hkdf::<Sha256>::from_prk(dek_source).map_err(|_| wrong_length())?;
            let mut key = Zeroizing::new([0u8; DERIVED_KEY_LEN]);
            hkdf.expand(info, &mut key[..])
                .map_err(|_| wrong_length())?;
            open(
                &aead::<Aes256Gcm>(&key[..], source_type)?,
                data,
                aad,
                source_type,
            )
        }
    }
}

/// Parses a raw KMS v2 etcd value, unwraps its DEK source and decrypts it.
///
/// `etcd_key` must be exactly the etcd key the value was read from (see [`decrypt_object`]).
/// `unwrap_dek_source` plays the KMS plugin's Decrypt: it is called at most once, with the value's
/// `keyID`, `encryptedDEKSource` and annotations, and returns the DEK source; its error is
/// reported as [`EnvelopeError::Unwrap`] with the error's message (and those of its sources). It is
/// not called when the value fails to parse or its `encryptedData` is truncated.
pub fn decrypt_etcd_value<F>(
    raw: &[u8],
    etcd_key: &str,
    unwrap_dek_source: F,
) -> Result<Decrypted, EnvelopeError>
where
    F: FnOnce(
        &str,
        &[u8],
        &HashMap<String, Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, Box<dyn std::error::Error + Send + Sync>>,
{
    let ParsedValue { provider, object } = parse_etcd_value(raw)?;
    let source_type = source_type_of(&object)?;
    check_encrypted_data_len(source_type, &object.encrypted_data)?;
    let dek_source = unwrap_dek_source(
        &object.key_id,
        &object.encrypted_dek_source,
        &object.annotations,
    )
    .map_err(|err| EnvelopeError::Unwrap {
        key_id: object.key_id.clone(),
        message: error_chain(err.as_ref()),
    })?;
    let plaintext = decrypt_object(&object, etcd_key, &dek_source)?;
    Ok(Decrypted {
        provider,
        key_id: object.key_id,
        source_type,
        plaintext,
    })
}

/// Says what a value that lacks the KMS v2 prefix is instead.
fn not_kms_v2(raw: &[u8]) -> EnvelopeError {
    if raw.len() > ENCRYPTED_PREFIX.len() && KMS_V2_PREFIX.starts_with(raw) {
        return EnvelopeError::InvalidProviderName("the value ends before the provider name");
    }
    let stored_as = if let Some(rest) = raw.strip_prefix(ENCRYPTED_PREFIX) {
        other_provider_type(rest)
            .map(|provider_type| StoredAs::OtherProvider { provider_type })
            .unwrap_or(StoredAs::Unrecognised)
    } else if raw.starts_with(PROTOBUF_PREFIX) {
        StoredAs::UnencryptedProtobuf
    } else if raw.starts_with(b"{") {
        StoredAs::UnencryptedJson
    } else if raw.starts_with(CBOR_PREFIX) {
        StoredAs::UnencryptedCbor
    } else {
        StoredAs::Unrecognised
    };
    EnvelopeError::NotKmsV2(stored_as)
}

/// Reads `<type>:<version>:` from the part of a `k8s:enc:` value after that prefix.
fn other_provider_type(rest: &[u8]) -> Option<String> {
    let mut parts = rest.splitn(3, |&b| b == b':');
    let (kind, version) = (parts.next()?, parts.next()?);
    parts.next()?; // both segments must be ended by ':'
    let plausible = |s: &[u8]| {
        (1..=32).contains(&s.len())
            && s.iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
    };
    if !plausible(kind) || !plausible(version) {
        return None;
    }
    let mut out = String::with_capacity(kind.len() + 1 + version.len());
    out.extend(kind.iter().map(|&b| char::from(b)));
    out.push(':');
    out.extend(version.iter().map(|&b| char::from(b)));
    Some(out)
}

/// kube-apiserver's `ValidateEncryptedObject`, in its order.
fn validate_object(obj: &EncryptedObject) -> Result<(), EnvelopeError> {
    source_type_of(obj)?;
    if obj.encrypted_data.is_empty() {
        return Err(EnvelopeError::EmptyField {
            field: Field::EncryptedData,
        });
    }
    check_size(
        Field::EncryptedDekSource,
        obj.encrypted_dek_source.len(),
        MAX_ENCRYPTED_DEK_SOURCE_SIZE,
    )?;
    check_size(Field::KeyId, obj.key_id.len(), MAX_KEY_ID_SIZE)?;
    let annotations_size = obj.annotations.iter().fold(0usize, |sum, (k, v)| {
        sum.saturating_add(k.len()).saturating_add(v.len())
    });
    if annotations_size > MAX_ANNOTATIONS_SIZE {
        return Err(EnvelopeError::FieldTooLarge {
            field: Field::Annotations,
            size: annotations_size,
            max: MAX_ANNOTATIONS_SIZE,
        });
    }
    let mut bad_keys: Vec<&String> = obj
        .annotations
        .keys()
        .filter(|k| !is_fully_qualified_domain_name(k))
        .collect();
    bad_keys.sort_unstable();
    if let Some(key) = bad_keys.first() {
        return Err(EnvelopeError::InvalidAnnotationKey {
            key: (*key).clone(),
        });
    }
    Ok(())
}

/// A field kube-apiserver requires to be non-empty and at most `max` bytes.
fn check_size(field: Field, size: usize, max: usize) -> Result<(), EnvelopeError> {
    if size == 0 {
        Err(EnvelopeError::EmptyField { field })
    } else if size > max {
        Err(EnvelopeError::FieldTooLarge { field, size, max })
    } else {
        Ok(())
    }
}

/// `k8s.io/apimachinery/pkg/util/validation.IsFullyQualifiedDomainName`: an optional trailing
/// dot, at most 253 characters, at least two RFC 1123 labels.
fn is_fully_qualified_domain_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let is_label = |label: &str| {
        let bytes = label.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                bytes.len() <= 63
                    && first.is_ascii_alphanumeric()
                    && last.is_ascii_alphanumeric()
                    && bytes
                        .iter()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            }
            _ => false,
        }
    };
    name.len() <= 253 && name.split('.').count() >= 2 && name.split('.').all(is_label)
}

/// The object's source type, or [`EnvelopeError::UnknownSourceType`].
fn source_type_of(obj: &EncryptedObject) -> Result<EncryptedDekSourceType, EnvelopeError> {
    EncryptedDekSourceType::try_from(obj.encrypted_dek_source_type)
        .map_err(|_| EnvelopeError::UnknownSourceType(obj.encrypted_dek_source_type))
}

/// Refuses `encryptedData` too short for the header and tag of its source type.
fn check_encrypted_data_len(
    source_type: EncryptedDekSourceType,
    data: &[u8],
) -> Result<(), EnvelopeError> {
    let min = match source_type {
        EncryptedDekSourceType::AesGcmKey => NONCE_LEN + TAG_LEN,
        EncryptedDekSourceType::HkdfSha256XnonceAesGcmSeed => INFO_LEN + NONCE_LEN + TAG_LEN,
    };
    if data.len() < min {
        return Err(EnvelopeError::Truncated {
            source_type,
            len: data.len(),
            min,
        });
    }
    Ok(())
}

/// Builds an AES-GCM instance from a key whose length the caller has checked.
fn aead<C: KeyInit>(key: &[u8], source_type: EncryptedDekSourceType) -> Result<C, EnvelopeError> {
    C::new_from_slice(key).map_err(|_| EnvelopeError::DekSourceLength {
        source_type,
        len: key.len(),
        expected: "an AES key of 16, 24 or 32 bytes",
    })
}

/// Opens `nonce ‖ ciphertext ‖ tag` with `aad`, decrypting in a fresh buffer that becomes the
/// plaintext. The tag is verified before anything is decrypted.
fn open<C: AeadInPlace<NonceSize = U12, TagSize = U16>>(
    cipher: &C,
    data: &[u8],
    aad: &[u8],
    source_type: EncryptedDekSourceType,
) -> Result<Vec<u8>, EnvelopeError> {
    let truncated = || EnvelopeError::Truncated {
        source_type,
        len: data.len(),
        min: NONCE_LEN + TAG_LEN,
    };
    let (nonce, rest) = data.split_at_checked(NONCE_LEN).ok_or_else(truncated)?;
    let tag_at = rest.len().checked_sub(TAG_LEN).ok_or_else(truncated)?;
    let (ciphertext, tag) = rest.split_at(tag_at);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| truncated())?;
    let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| truncated())?;
    let mut buffer = ciphertext.to_vec();
    cipher
        .decrypt_in_place_detached(
            &GenericArray::from(nonce),
            aad,
            &mut buffer,
            &GenericArray::from(tag),
        )
        .map_err(|_| EnvelopeError::Authentication { source_type })?;
    Ok(buffer)
}

/// An error's message followed by those of its sources, joined by `": "`.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = inner.source();
    }
    message
}

#[cfg(test)]
mod tests;

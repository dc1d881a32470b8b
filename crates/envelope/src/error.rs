//! Errors returned while parsing and decrypting a KMS v2 etcd value.
//!
//! Every variant says what was wrong with the input and, in its `Display` text, what the operator
//! can do about it. No message ever contains key material or plaintext.

use std::fmt;

use coffer_proto::envelope::EncryptedDekSourceType;

/// Why a raw etcd value could not be parsed or decrypted.
///
/// The variants fall in three groups:
///
/// * the value is not a KMS v2 envelope at all ([`NotKmsV2`](Self::NotKmsV2),
///   [`InvalidProviderName`](Self::InvalidProviderName));
/// * the envelope is malformed, in a way kube-apiserver itself would also refuse
///   ([`Decode`](Self::Decode), [`UnknownSourceType`](Self::UnknownSourceType),
///   [`FieldTooLarge`](Self::FieldTooLarge), [`EmptyField`](Self::EmptyField),
///   [`InvalidAnnotationKey`](Self::InvalidAnnotationKey), [`Truncated`](Self::Truncated));
/// * the envelope is well formed but the keys do not open it
///   ([`Unwrap`](Self::Unwrap), [`DekSourceLength`](Self::DekSourceLength),
///   [`Authentication`](Self::Authentication)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The value does not start with `k8s:enc:kms:v2:`; [`StoredAs`] says what it looks like instead.
    #[error("not a KMS v2 value; it is stored {0}")]
    NotKmsV2(StoredAs),

    /// The value starts with `k8s:enc:kms:v2:` but the provider name after it is missing, not
    /// UTF-8, or not followed by `:`. kube-apiserver writes `k8s:enc:kms:v2:<name>:` where the name
    /// is non-empty and contains no `:`, so the value is corrupt or was cut short.
    #[error(
        "invalid KMS v2 provider name: {0}; kube-apiserver writes `k8s:enc:kms:v2:<name>:` with a \
         non-empty name containing no ':', so the value is corrupt or truncated — re-read it from etcd \
         as raw bytes"
    )]
    InvalidProviderName(&'static str),

    /// The bytes after the prefix are not a valid `EncryptedObject` protobuf.
    #[error(
        "the bytes after the KMS v2 prefix are not a valid EncryptedObject protobuf ({0}); the value \
         is corrupt or truncated — re-read it from etcd as raw binary (for example `etcdctl get \
         --print-value-only KEY > file`), never through a terminal, text editor or string conversion"
    )]
    Decode(#[from] prost::DecodeError),

    /// `encryptedDEKSourceType` holds a value this crate does not know.
    #[error(
        "unknown encryptedDEKSourceType {0}; kube-apiserver knows only AES_GCM_KEY (0) and \
         HKDF_SHA256_XNONCE_AES_GCM_SEED (1): the value was written by a newer kube-apiserver than \
         this tool understands, or is corrupt — upgrade this tool"
    )]
    UnknownSourceType(i32),

    /// A field, or the whole value, is larger than the bound kube-apiserver enforces.
    #[error(
        "{field} is {size} bytes, over the limit of {max} bytes that kube-apiserver enforces; the \
         value is corrupt or was not written by kube-apiserver"
    )]
    FieldTooLarge {
        /// Which field (or the whole value) is too large.
        field: Field,
        /// Its size in bytes (for annotations: the sum of all key and value lengths).
        size: usize,
        /// The largest size accepted.
        max: usize,
    },

    /// A field that kube-apiserver always fills in is empty.
    #[error(
        "{field} is empty, but kube-apiserver never writes it empty; the value is corrupt or was not \
         written by kube-apiserver"
    )]
    EmptyField {
        /// Which field is empty.
        field: Field,
    },

    /// An annotation key is not a fully qualified domain name (such as `version.coffer.io`), which
    /// kube-apiserver requires of every annotation key.
    #[error(
        "annotation key {key:?} is not a fully qualified domain name (lowercase RFC 1123 labels, at \
         least two of them, such as `version.example.com`), which kube-apiserver requires; the value \
         is corrupt or was not written by kube-apiserver"
    )]
    InvalidAnnotationKey {
        /// The offending key.
        key: String,
    },

    /// `encryptedData` is too short to hold the header and GCM tag its source type needs.
    #[error(
        "encryptedData is {len} bytes, shorter than the {min} bytes that {} ciphertext needs at \
         least; the value was truncated — re-read it from etcd as raw binary",
        source_type.as_str_name()
    )]
    Truncated {
        /// The source type, which fixes the layout of `encryptedData`.
        source_type: EncryptedDekSourceType,
        /// The length of `encryptedData`.
        len: usize,
        /// The least length that layout allows (header plus 16-byte tag, for an empty plaintext).
        min: usize,
    },

    /// The unwrapped DEK source does not have a length its source type allows.
    #[error(
        "the KMS plugin's Decrypt returned a {len}-byte DEK source, but {} needs {expected}; the \
         keystore or key ID used to unwrap it is not the one that wrapped it, or the plugin is \
         misbehaving — check that the keystore holds the key named by the value's keyID",
        source_type.as_str_name()
    )]
    DekSourceLength {
        /// The source type, which fixes the allowed lengths.
        source_type: EncryptedDekSourceType,
        /// The length the plugin returned.
        len: usize,
        /// A description of the allowed lengths.
        expected: &'static str,
    },

    /// The closure that unwraps `encryptedDEKSource` (the KMS plugin's Decrypt) failed.
    #[error(
        "unwrapping encryptedDEKSource with key ID {key_id:?} failed: {message}; make sure the \
         keystore given holds the key with that ID (it may have been retired) and that it runs \
         on the platform that sealed the keystore"
    )]
    Unwrap {
        /// The `keyID` stored in the value, as passed to the unwrap closure.
        key_id: String,
        /// The unwrap error's message (its `Display` text).
        message: String,
    },

    /// AES-GCM rejected the ciphertext.
    #[error(
        "AES-GCM authentication failed ({}): the etcd key given must be exactly the key the value \
         was read from (for example `/registry/secrets/default/db`, with the API server's \
         --etcd-prefix and no trailing newline), since kube-apiserver authenticates it; otherwise \
         the value was modified or the DEK source is not the one it was written with (wrong \
         keystore or key)",
        source_type.as_str_name()
    )]
    Authentication {
        /// The source type of the value that failed to open.
        source_type: EncryptedDekSourceType,
    },
}

/// What a value that is not a KMS v2 envelope appears to be, as reported by
/// [`EnvelopeError::NotKmsV2`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoredAs {
    /// Plain Kubernetes protobuf (starts with `k8s\0`): written with the `identity` provider or
    /// before encryption at rest was configured. No decryption is needed.
    UnencryptedProtobuf,
    /// Plain JSON (starts with `{`): written with the `identity` provider (custom resources and
    /// older clusters store JSON). No decryption is needed.
    UnencryptedJson,
    /// Plain CBOR (starts with the self-described CBOR tag `d9 d9 f7`): written with the
    /// `identity` provider. No decryption is needed.
    UnencryptedCbor,
    /// Encrypted by another provider: `k8s:enc:<provider_type>:`, such as `aescbc:v1`,
    /// `aesgcm:v1`, `secretbox:v1` or `kms:v1`.
    OtherProvider {
        /// The provider type and version as written in the prefix, such as `aescbc:v1`.
        provider_type: String,
    },
    /// None of the formats kube-apiserver writes.
    Unrecognised,
}

impl fmt::Display for StoredAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnencryptedProtobuf => f.write_str(
                "unencrypted (Kubernetes protobuf, `k8s\\0`): no decryption is needed, or the \
                 resource was written before KMS v2 encryption was enabled",
            ),
            Self::UnencryptedJson => f.write_str(
                "unencrypted (JSON): no decryption is needed, or the resource was written before \
                 KMS v2 encryption was enabled",
            ),
            Self::UnencryptedCbor => f.write_str(
                "unencrypted (CBOR): no decryption is needed, or the resource was written before \
                 KMS v2 encryption was enabled",
            ),
            Self::OtherProvider { provider_type } => write!(
                f,
                "with provider type {provider_type} (`k8s:enc:{provider_type}:`): decrypt it with \
                 that provider's key, not with this KMS v2 tool"
            ),
            Self::Unrecognised => f.write_str(
                "in no format kube-apiserver writes: check that this is a raw value read from etcd \
                 (not the output of kubectl, nor base64 or hex text)",
            ),
        }
    }
}

/// A part of the etcd value, named in [`EnvelopeError::FieldTooLarge`] and
/// [`EnvelopeError::EmptyField`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Field {
    /// The whole raw etcd value.
    Value,
    /// `EncryptedObject.encryptedData`.
    EncryptedData,
    /// `EncryptedObject.keyID`.
    KeyId,
    /// `EncryptedObject.encryptedDEKSource`.
    EncryptedDekSource,
    /// `EncryptedObject.annotations`, keys and values summed.
    Annotations,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Value => "the etcd value",
            Self::EncryptedData => "encryptedData",
            Self::KeyId => "keyID",
            Self::EncryptedDekSource => "encryptedDEKSource",
            Self::Annotations => "the annotations (keys and values together)",
        })
    }
}

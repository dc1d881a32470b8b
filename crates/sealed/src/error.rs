//! Why a value cannot be parsed, sealed or opened.

use crate::Scope;

/// Why a text is not a sealed value this build can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The text does not start with a `coffer.vN.` prefix at all.
    #[error("not a sealed value: it does not start with \"coffer.v1.\"")]
    NotSealed,
    /// A later format version, which this build predates.
    #[error(
        "this value is in format coffer.v{version}, made by a newer kubectl coffer; \
         upgrade kubectl coffer (this build reads coffer.v1)"
    )]
    NewerVersion {
        /// The version number after `coffer.v`.
        version: u32,
    },
    /// Longer than [`crate::MAX_SEALED_TEXT_LEN`].
    #[error("the sealed value is {len} characters long; at most {max} are accepted")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The text after the prefix is not canonical base64url without padding.
    #[error("the sealed value is not valid base64url (no padding) after \"coffer.v1.\": {reason}")]
    Base64 {
        /// The decoder's complaint (positions and bytes of the encoding, nothing secret).
        reason: String,
    },
    /// The bytes end before the part named.
    #[error("the sealed value is truncated: it ends inside its {part}")]
    Truncated {
        /// `header`, `keyring`, `key id`, `namespace`, `Secret name`, `data key` or
        /// `encapsulated key`.
        part: &'static str,
    },
    /// The header's version byte is not 1 although the prefix says `coffer.v1.`.
    #[error(
        "the sealed value's header version is {0}, but its prefix says coffer.v1; it was altered"
    )]
    HeaderVersion(u8),
    /// The scope byte is none of 1 (strict), 2 (namespace), 3 (cluster).
    #[error("the sealed value has unknown scope byte {0} (1 strict, 2 namespace, 3 cluster)")]
    UnknownScope(u8),
    /// A binding field is set that the scope leaves open, or missing where the scope fixes it.
    #[error(
        "the sealed value's {field} is {}, which scope {scope} does not allow",
        if *present { "set" } else { "empty" }
    )]
    ScopeFields {
        /// The scope byte's scope.
        scope: Scope,
        /// `namespace`, `Secret name` or `data key`.
        field: &'static str,
        /// Whether the field was set (true) or empty (false).
        present: bool,
    },
    /// A header field breaks its naming rule.
    #[error("the sealed value's {field} is invalid: {reason}")]
    InvalidField {
        /// `keyring`, `key id`, `namespace`, `Secret name` or `data key`.
        field: &'static str,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// Nothing (or less than an AES-GCM tag and one byte) after the encapsulated key.
    #[error("the sealed value has no ciphertext after its encapsulated key")]
    EmptyCiphertext,
}

/// Why a value cannot be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// Nothing to seal.
    #[error("an empty value cannot be sealed; give a value of at least one byte")]
    EmptyPlaintext,
    /// More than [`crate::MAX_PLAINTEXT_LEN`].
    #[error(
        "the value is {len} bytes; at most {max} bytes (a whole Secret's 1 MiB limit) can be sealed"
    )]
    PlaintextTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A keyring, namespace, Secret name or data key that keyd or Kubernetes would refuse.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// `keyring name`, `namespace`, `Secret name` or `data key`.
        what: &'static str,
        /// The name (at most 80 characters of it).
        name: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// The sealing public key is a low-order X25519 point: no shared secret can be agreed.
    #[error(
        "sealing key {key_id} is not a usable X25519 public key; \
         fetch a new bundle with kubectl coffer fetch-key"
    )]
    InvalidPublicKey {
        /// The key's id.
        key_id: String,
    },
    /// The operating system's random number generator failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(String),
}

impl SealError {
    pub(crate) fn invalid_name(what: &'static str, name: &str, reason: &'static str) -> Self {
        SealError::InvalidName {
            what,
            name: name.chars().take(80).collect(),
            reason,
        }
    }
}

/// Why a sealed value cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The value names another sealing key than the one given.
    #[error("the value is sealed to key {value_key_id}, not to {key_id}")]
    WrongKey {
        /// The key id in the value's header.
        value_key_id: String,
        /// The id of the key pair given.
        key_id: String,
    },
    /// Decapsulation or AES-GCM authentication failed.
    #[error(
        "the value does not open with sealing key {key_id}: its ciphertext, keyring, key id or \
         binding was altered, or it was not sealed to this key"
    )]
    Decrypt {
        /// The key id tried.
        key_id: String,
    },
}

//! Coffer sealed values and key bundles.
//!
//! A *sealed value* is one Secret data value, `coffer.v1.<base64url>`: HPKE (RFC 9180, base mode,
//! DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM) to one *sealing key* of one keyd
//! keyring. It names the keyring and the sealing key id and authenticates a [`Binding`] (where the
//! value may be used), so a value copied to another Secret, data key or namespace does not unseal.
//!
//! A *key bundle* ([`bundle::KeyBundle`]) is what keyd publishes for a keyring: its usable public
//! sealing keys plus keyd's attestation evidence whose report data commits to the bundle, so a
//! client verifies it once against a policy, pins it, and seals offline from then on.
//!
//! API contract for issue 10 (bodies filled in by the `sealed` work):
//! - [`seal`] / [`open`] / [`SealedValue::parse`] / [`SealedValue::to_text`]
//! - [`SealingKeyPair`] (private key, zeroized) and [`SealingPublicKey`]; ids from [`key_id`].
//! - [`Binding::admits`]: the refusal rules `Unseal` applies to a value found at a location.

pub mod bundle;

use std::fmt;

use zeroize::Zeroizing;

/// The text prefix of every sealed value of format version 1.
pub const PREFIX: &str = "coffer.v1.";
/// Largest plaintext that can be sealed: a whole Secret's limit (1 MiB).
pub const MAX_PLAINTEXT_LEN: usize = 1 << 20;
/// Longest sealed-value text accepted by [`SealedValue::parse`] (a sealed 1 MiB value plus
/// header, base64url-encoded).
pub const MAX_SEALED_TEXT_LEN: usize = PREFIX.len() + ((MAX_PLAINTEXT_LEN + 1024) * 4).div_ceil(3);

/// Where a sealed value may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Only in the Secret (namespace + name) and data key it was sealed for.
    Strict,
    /// In any Secret and data key of the namespace it was sealed for.
    Namespace,
    /// Anywhere in the cluster (any namespace, Secret and key).
    Cluster,
}

impl Scope {
    /// `strict`, `namespace` or `cluster`.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Strict => "strict",
            Scope::Namespace => "namespace",
            Scope::Cluster => "cluster",
        }
    }

    /// Parses [`Scope::name`].
    pub fn from_name(name: &str) -> Option<Scope> {
        match name {
            "strict" => Some(Scope::Strict),
            "namespace" => Some(Scope::Namespace),
            "cluster" => Some(Scope::Cluster),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a value was found (or is meant to go): a Secret's namespace and name and a data key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The data key within the Secret.
    pub key: String,
}

/// The authenticated binding of a sealed value: its scope and the parts of the location the
/// scope fixes (strict: all three; namespace: the namespace; cluster: none — the others are
/// empty strings).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    scope: Scope,
    namespace: String,
    secret: String,
    key: String,
}

impl Binding {
    /// The binding of `scope` for a value meant for `location` (the parts the scope does not
    /// fix are dropped). Refuses names Kubernetes would refuse (namespace: DNS-1123 label;
    /// Secret name: DNS-1123 subdomain; data key: `[-._a-zA-Z0-9]+`, at most 253).
    pub fn new(scope: Scope, location: &Location) -> Result<Binding, SealError> {
        let _ = (scope, location);
        todo!()
    }

    /// The scope.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The namespace the value is bound to (`None` for cluster scope).
    pub fn namespace(&self) -> Option<&str> {
        (!self.namespace.is_empty()).then_some(self.namespace.as_str())
    }

    /// The Secret name the value is bound to (strict scope only).
    pub fn secret(&self) -> Option<&str> {
        (!self.secret.is_empty()).then_some(self.secret.as_str())
    }

    /// The data key the value is bound to (strict scope only).
    pub fn key(&self) -> Option<&str> {
        (!self.key.is_empty()).then_some(self.key.as_str())
    }

    /// Whether a value with this binding may be used at `location`; the error says which part
    /// differs (e.g. "sealed for namespace \"a\", found in namespace \"b\"").
    pub fn admits(&self, location: &Location) -> Result<(), BindingMismatch> {
        let _ = location;
        todo!()
    }
}

impl fmt::Display for Binding {
    /// `strict ns/secret/key`, `namespace ns`, or `cluster`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let _ = f;
        todo!()
    }
}

/// Why a binding refuses a location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BindingMismatch(pub String);

/// The id of a sealing public key: lower-case hex of the first 8 bytes of
/// SHA-256("coffer sealing key v1\0" || public key), prefixed `sk-` (e.g. `sk-0123456789abcdef`).
pub fn key_id(public_key: &[u8; 32]) -> String {
    let _ = public_key;
    todo!()
}

/// A public X25519 sealing key and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealingPublicKey {
    id: String,
    bytes: [u8; 32],
}

impl SealingPublicKey {
    /// The key from its 32 bytes; the id is computed ([`key_id`]).
    pub fn from_bytes(bytes: [u8; 32]) -> SealingPublicKey {
        SealingPublicKey {
            id: key_id(&bytes),
            bytes,
        }
    }

    /// The key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The 32 public key bytes.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }
}

/// A sealing key pair. The private key is zeroized on drop and never printed.
pub struct SealingKeyPair {
    private: Zeroizing<[u8; 32]>,
    public: SealingPublicKey,
}

impl fmt::Debug for SealingKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealingKeyPair")
            .field("id", &self.public.id)
            .field("private", &"<redacted>")
            .finish()
    }
}

impl SealingKeyPair {
    /// A new random key pair (from the OS's CSPRNG).
    pub fn generate() -> SealingKeyPair {
        todo!()
    }

    /// The key pair of a stored private key.
    pub fn from_private(private: Zeroizing<[u8; 32]>) -> SealingKeyPair {
        let _ = private;
        todo!()
    }

    /// The private key bytes, for sealing them into durable storage.
    pub fn private_bytes(&self) -> &[u8; 32] {
        &self.private
    }

    /// The public half.
    pub fn public(&self) -> &SealingPublicKey {
        &self.public
    }

    /// The key id.
    pub fn id(&self) -> &str {
        self.public.id()
    }
}

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
        let _ = text;
        todo!()
    }

    /// Whether `text` looks like a sealed value (starts with a `coffer.` prefix), so tools can
    /// tell sealed from plaintext values without parsing.
    pub fn is_sealed(text: &str) -> bool {
        text.starts_with("coffer.")
    }

    /// The text form, `coffer.v1.<base64url>`.
    pub fn to_text(&self) -> String {
        todo!()
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
}

impl fmt::Display for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

/// Seals `plaintext` (1 byte to [`MAX_PLAINTEXT_LEN`]) to `key` of `keyring` with `binding`.
pub fn seal(
    keyring: &str,
    key: &SealingPublicKey,
    binding: &Binding,
    plaintext: &[u8],
) -> Result<SealedValue, SealError> {
    let _ = (keyring, key, binding, plaintext);
    todo!()
}

/// Opens `value` with `key` (whose id must be the value's key id). Only keyd calls this.
pub fn open(value: &SealedValue, key: &SealingKeyPair) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let _ = (value, key);
    todo!()
}

/// Why a text is not a sealed value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// Placeholder until the format work defines the variants.
    #[error("{0}")]
    Invalid(String),
}

/// Why a value cannot be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// Placeholder until the format work defines the variants.
    #[error("{0}")]
    Invalid(String),
}

/// Why a sealed value cannot be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Placeholder until the format work defines the variants.
    #[error("{0}")]
    Invalid(String),
}

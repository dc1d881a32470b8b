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
//! The API:
//! - [`seal`] / [`open`] / [`SealedValue::parse`] / [`SealedValue::to_text`]
//! - [`SealingKeyPair`] (private key, zeroized) and [`SealingPublicKey`]; ids from [`key_id`].
//! - [`Binding::admits`]: the refusal rules `Unseal` applies to a value found at a location.
//!
//! docs/sealed-values.md specifies the format and carries test vectors.

#![deny(missing_docs)]

mod binding;
pub mod bundle;
mod error;
mod evidence;
mod keys;
mod names;
mod suite;
mod value;

pub use binding::{Binding, BindingMismatch, Location, Scope};
pub use error::{FormatError, OpenError, SealError};
pub use keys::{key_id, SealingKeyPair, SealingPublicKey};
pub use names::{MAX_DATA_KEY_LEN, MAX_KEYRING_NAME_LEN, MAX_NAMESPACE_LEN, MAX_SECRET_NAME_LEN};
pub use suite::INFO as HPKE_INFO;
pub use value::{open, seal, SealedValue, MAX_PLAINTEXT_LEN, MAX_SEALED_TEXT_LEN, PREFIX};

//! The key bundle: a keyring's public sealing keys and keyd's evidence committing to them.
//!
//! JSON, as keyd's `GetKeyBundle` returns it and `kubectl coffer fetch-key` pins it:
//!
//! ```json
//! {"format":1,"keyring":"apps","instance":"…","issued":"2026-12-02T08:00:00Z",
//!  "expires":"2027-01-01T08:00:00Z",
//!  "keys":[{"id":"sk-…","public_key":"<base64url>","created":"…","primary":true}],
//!  "evidence":{"tee":"sim","report":"<base64>","certificates":"<base64>"}}
//! ```
//!
//! The evidence's report data is [`report_data`] of the bundle without its evidence.

use coffer_attest::policy::{Policy, Role};
use coffer_attest::{Claims, VerifyOptions};
use coffer_platform::{Evidence, Platform};
use serde::{Deserialize, Serialize};

use crate::SealingPublicKey;

/// The bundle format this build writes and reads.
pub const BUNDLE_FORMAT: u32 = 1;
/// Largest bundle accepted (JSON bytes).
pub const MAX_BUNDLE_LEN: usize = 256 * 1024;

/// One public sealing key in a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleKey {
    /// The key id ([`crate::key_id`] of the public key; checked on load).
    pub id: String,
    /// base64url (no padding) of the 32-byte X25519 public key.
    pub public_key: String,
    /// RFC 3339, when keyd generated it.
    pub created: String,
    /// The newest key, the one to seal to.
    pub primary: bool,
}

/// What the evidence commits to: everything in the bundle but the evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleBody {
    /// [`BUNDLE_FORMAT`].
    pub format: u32,
    /// The keyring the keys belong to.
    pub keyring: String,
    /// keyd's instance id.
    pub instance: String,
    /// RFC 3339.
    pub issued: String,
    /// RFC 3339; a bundle is refused after this.
    pub expires: String,
    /// The usable (not retired) sealing keys, exactly one of them primary.
    pub keys: Vec<BundleKey>,
}

/// A key bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBundle {
    /// The committed part.
    pub body: BundleBody,
    /// keyd's evidence; its report data is [`report_data`] of `body`.
    pub evidence: Evidence,
}

/// The 64 bytes of report data a bundle's evidence carries: SHA-512 of
/// `"coffer key bundle v1\0"` followed by the body's canonical JSON (serde_json of
/// [`BundleBody`], fields in declaration order, no whitespace).
pub fn report_data(body: &BundleBody) -> [u8; 64] {
    let _ = body;
    todo!()
}

/// A bundle that passed [`KeyBundle::verify`].
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    /// The verified claims of keyd's evidence.
    pub claims: Claims,
    /// The role the policy granted keyd.
    pub role: Role,
}

/// Why a bundle is refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Placeholder until the bundle work defines the variants.
    #[error("{0}")]
    Invalid(String),
}

impl KeyBundle {
    /// Makes a bundle: evidence from `platform` over [`report_data`] of `body`.
    pub fn attest(body: BundleBody, platform: &dyn Platform) -> Result<KeyBundle, BundleError> {
        let _ = (body, platform);
        todo!()
    }

    /// Parses the JSON form (bounded by [`MAX_BUNDLE_LEN`]) and checks its structure: format,
    /// key ids match their keys, exactly one primary, keyring name valid. Not the evidence.
    pub fn from_json(bytes: &[u8]) -> Result<KeyBundle, BundleError> {
        let _ = bytes;
        todo!()
    }

    /// The JSON form (pretty, ending in a newline).
    pub fn to_json(&self) -> Vec<u8> {
        todo!()
    }

    /// Checks what needs no verification service: the structure (as [`Self::from_json`]), that
    /// the evidence's report data commits to the body, and that `now` is within issued..expires.
    /// This is what sealing from a pinned bundle checks.
    pub fn check_pinned(&self, now: std::time::SystemTime) -> Result<(), BundleError> {
        let _ = now;
        todo!()
    }

    /// Full verification: [`Self::check_pinned`] at `options.now`, the evidence verified
    /// cryptographically (with `options`' collateral and VCEK sources, report data = the body's
    /// commitment), and the claims accepted by `policy` (which refuses simulation unless it
    /// allows it).
    pub fn verify(
        &self,
        policy: &Policy,
        options: &VerifyOptions,
    ) -> Result<VerifiedBundle, BundleError> {
        let _ = (policy, options);
        todo!()
    }

    /// The primary key, to seal to.
    pub fn primary(&self) -> Result<SealingPublicKey, BundleError> {
        todo!()
    }

    /// The key with id `id`, if the bundle has it.
    pub fn key(&self, id: &str) -> Option<SealingPublicKey> {
        let _ = id;
        todo!()
    }
}

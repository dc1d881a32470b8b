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

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use coffer_attest::policy::{Denial, Policy, Role};
use coffer_attest::{Claims, VerifyError, VerifyOptions};
use coffer_platform::{Evidence, Platform, PlatformError, TeeType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::{evidence, names, SealingPublicKey};

/// The bundle format this build writes and reads.
pub const BUNDLE_FORMAT: u32 = 1;
/// Largest bundle accepted (JSON bytes).
pub const MAX_BUNDLE_LEN: usize = 256 * 1024;
/// Most sealing keys a bundle may list.
pub const MAX_BUNDLE_KEYS: usize = 64;
/// How far this machine's clock may be off keyd's before a bundle's validity is doubted.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Longest keyd instance id.
const MAX_INSTANCE_LEN: usize = 128;
/// The domain separator of [`report_data`].
const REPORT_DATA_LABEL: &[u8] = b"coffer key bundle v1\0";
/// What to do about a bundle that is not (or no longer) usable.
const FETCH_NEW: &str = "fetch a new bundle with kubectl coffer fetch-key";

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

impl BundleKey {
    /// The entry for `key`, created at `created` (RFC 3339).
    pub fn new(key: &SealingPublicKey, created: String, primary: bool) -> BundleKey {
        BundleKey {
            id: key.id().to_string(),
            public_key: URL_SAFE_NO_PAD.encode(key.bytes()),
            created,
            primary,
        }
    }

    /// The public key, if `public_key` is base64url of 32 bytes and `id` is its id.
    pub fn public_key(&self) -> Result<SealingPublicKey, BundleError> {
        let bytes: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&self.public_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| BundleError::KeyEncoding {
                id: self.id.chars().take(40).collect(),
            })?;
        let key = SealingPublicKey::from_bytes(bytes);
        if key.id() != self.id {
            return Err(BundleError::KeyId {
                stated: self.id.chars().take(40).collect(),
                actual: key.id().to_string(),
            });
        }
        Ok(key)
    }
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
    let mut hasher = Sha512::new();
    hasher.update(REPORT_DATA_LABEL);
    hasher.update(canonical_json(body));
    hasher.finalize().into()
}

fn canonical_json(body: &BundleBody) -> Vec<u8> {
    // Strings, integers, booleans and a sequence of structs: serde_json cannot fail on them.
    serde_json::to_vec(body).expect("a BundleBody always serializes")
}

/// An RFC 3339 timestamp as bundles write them (UTC, whole seconds).
pub fn timestamp(time: SystemTime) -> String {
    let time = OffsetDateTime::from(time)
        .replace_nanosecond(0)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    // Formatting a UTC date between years 0 and 9999 as RFC 3339 cannot fail.
    time.format(&Rfc3339).unwrap_or_default()
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
#[non_exhaustive]
pub enum BundleError {
    /// Longer than [`MAX_BUNDLE_LEN`].
    #[error("the key bundle is {len} bytes; at most {max} are accepted")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not JSON of the bundle's shape (unknown or missing fields, wrong types, bad base64).
    #[error("not a key bundle: {0}; {FETCH_NEW}")]
    Json(String),
    /// Another bundle format than [`BUNDLE_FORMAT`].
    #[error(
        "the key bundle has format {0}; this build reads format {BUNDLE_FORMAT} \
         (a newer bundle needs a newer kubectl coffer)"
    )]
    Format(u32),
    /// The keyring name breaks keyd's rule.
    #[error("the key bundle's keyring name {name:?} is invalid: {reason}")]
    Keyring {
        /// The name (at most 80 characters of it).
        name: String,
        /// What rule it breaks.
        reason: &'static str,
    },
    /// The instance id is empty, too long or has characters outside `[A-Za-z0-9._:-]`.
    #[error("the key bundle's keyd instance id is invalid (1 to 128 of A-Z a-z 0-9 . _ : -)")]
    Instance,
    /// A timestamp is not RFC 3339.
    #[error("the key bundle's {field} {value:?} is not an RFC 3339 timestamp")]
    Timestamp {
        /// `issued`, `expires`, or `created of sk-…`.
        field: String,
        /// The text (at most 40 characters of it).
        value: String,
    },
    /// `expires` is not after `issued`.
    #[error("the key bundle expires ({expires}) before it is issued ({issued})")]
    Validity {
        /// `issued`.
        issued: String,
        /// `expires`.
        expires: String,
    },
    /// No keys, or more than [`MAX_BUNDLE_KEYS`].
    #[error("the key bundle lists {0} sealing keys; it must list 1 to {MAX_BUNDLE_KEYS}")]
    KeyCount(usize),
    /// Not exactly one key is primary.
    #[error("the key bundle marks {0} keys primary; exactly one must be")]
    Primary(usize),
    /// A key id appears twice.
    #[error("the key bundle lists key {0} twice")]
    DuplicateKey(String),
    /// A public key is not base64url (no padding) of 32 bytes.
    #[error("the public key of {id} in the key bundle is not base64url of 32 bytes")]
    KeyEncoding {
        /// The stated id.
        id: String,
    },
    /// A key's stated id is not the id of its public key.
    #[error(
        "the key bundle says {stated} but that public key's id is {actual}; the bundle was altered"
    )]
    KeyId {
        /// The id the bundle states.
        stated: String,
        /// The id of the public key.
        actual: String,
    },
    /// Past `expires` (beyond [`CLOCK_SKEW`]).
    #[error("the key bundle expired at {expires}; {FETCH_NEW}")]
    Expired {
        /// `expires`.
        expires: String,
    },
    /// Before `issued` (beyond [`CLOCK_SKEW`]).
    #[error(
        "the key bundle is issued at {issued}, more than 5 minutes in this machine's future; \
         check this machine's clock"
    )]
    NotYetValid {
        /// `issued`.
        issued: String,
    },
    /// The evidence's report data cannot be read.
    #[error(
        "cannot read the report data of the key bundle's {tee} evidence: {reason}; {FETCH_NEW}"
    )]
    EvidenceUnreadable {
        /// The evidence type.
        tee: TeeType,
        /// What is wrong with it.
        reason: String,
    },
    /// The evidence does not commit to this body.
    #[error(
        "the key bundle's evidence does not commit to its keys (report data mismatch): the \
         bundle was altered; {FETCH_NEW}"
    )]
    ReportData,
    /// The evidence does not verify cryptographically.
    #[error("keyd's evidence in the key bundle does not verify: {0}")]
    Verify(#[source] VerifyError),
    /// The policy refuses keyd's claims.
    #[error("keyd's evidence in the key bundle is not accepted by the policy: {0}")]
    Policy(#[source] Denial),
    /// The bundle is for another keyring than the one asked for.
    #[error(
        "the bundle is for keyring {actual:?}, not {expected:?}; fetch the bundle of keyring \
         {expected:?} with kubectl coffer fetch-key"
    )]
    WrongKeyring {
        /// The keyring wanted.
        expected: String,
        /// The bundle's keyring.
        actual: String,
    },
    /// The platform could not produce evidence for a bundle.
    #[error("cannot attest the key bundle: {0}")]
    Platform(#[source] PlatformError),
}

/// The JSON shape of a whole bundle (the body's fields and the evidence).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleJson {
    format: u32,
    keyring: String,
    instance: String,
    issued: String,
    expires: String,
    keys: Vec<BundleKey>,
    evidence: EvidenceJson,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceJson {
    tee: String,
    report: String,
    certificates: String,
}

impl KeyBundle {
    /// Makes a bundle: evidence from `platform` over [`report_data`] of `body`, after checking
    /// `body`'s structure (as [`Self::from_json`] would).
    pub fn attest(body: BundleBody, platform: &dyn Platform) -> Result<KeyBundle, BundleError> {
        check_body(&body)?;
        let evidence = platform
            .evidence(&report_data(&body))
            .map_err(BundleError::Platform)?;
        Ok(KeyBundle { body, evidence })
    }

    /// Parses the JSON form (bounded by [`MAX_BUNDLE_LEN`]) and checks its structure: format,
    /// key ids match their keys, exactly one primary, keyring name valid. Not the evidence.
    pub fn from_json(bytes: &[u8]) -> Result<KeyBundle, BundleError> {
        if bytes.len() > MAX_BUNDLE_LEN {
            return Err(BundleError::TooLarge {
                len: bytes.len(),
                max: MAX_BUNDLE_LEN,
            });
        }
        let json: BundleJson =
            serde_json::from_slice(bytes).map_err(|e| BundleError::Json(e.to_string()))?;
        if json.format != BUNDLE_FORMAT {
            return Err(BundleError::Format(json.format));
        }
        let tee = TeeType::from_name(&json.evidence.tee).ok_or_else(|| {
            BundleError::Json(format!(
                "evidence.tee {:?} is none of sim, sgx, tdx, snp",
                json.evidence.tee.chars().take(20).collect::<String>()
            ))
        })?;
        let decode = |field: &str, text: &str| {
            STANDARD
                .decode(text)
                .map_err(|e| BundleError::Json(format!("evidence.{field} is not base64: {e}")))
        };
        let evidence = Evidence {
            tee,
            report: decode("report", &json.evidence.report)?,
            certificates: decode("certificates", &json.evidence.certificates)?,
        };
        let body = BundleBody {
            format: json.format,
            keyring: json.keyring,
            instance: json.instance,
            issued: json.issued,
            expires: json.expires,
            keys: json.keys,
        };
        check_body(&body)?;
        Ok(KeyBundle { body, evidence })
    }

    /// The JSON form (pretty, ending in a newline).
    pub fn to_json(&self) -> Vec<u8> {
        let body = self.body.clone();
        let json = BundleJson {
            format: body.format,
            keyring: body.keyring,
            instance: body.instance,
            issued: body.issued,
            expires: body.expires,
            keys: body.keys,
            evidence: EvidenceJson {
                tee: self.evidence.tee.name().to_string(),
                report: STANDARD.encode(&self.evidence.report),
                certificates: STANDARD.encode(&self.evidence.certificates),
            },
        };
        // Plain strings, integers and booleans: serde_json cannot fail on them.
        let mut out = serde_json::to_vec_pretty(&json).expect("a key bundle always serializes");
        out.push(b'\n');
        out
    }

    /// Checks what needs no verification service: the structure (as [`Self::from_json`]), that
    /// the evidence's report data commits to the body, and that `now` is within issued..expires.
    /// This is what sealing from a pinned bundle checks.
    pub fn check_pinned(&self, now: SystemTime) -> Result<(), BundleError> {
        let (issued, expires) = check_body(&self.body)?;
        let claimed = evidence::claimed_report_data(&self.evidence).map_err(|reason| {
            BundleError::EvidenceUnreadable {
                tee: self.evidence.tee,
                reason,
            }
        })?;
        if claimed != report_data(&self.body) {
            return Err(BundleError::ReportData);
        }
        let now = OffsetDateTime::from(now);
        if now + CLOCK_SKEW < issued {
            return Err(BundleError::NotYetValid {
                issued: self.body.issued.clone(),
            });
        }
        if now - CLOCK_SKEW > expires {
            return Err(BundleError::Expired {
                expires: self.body.expires.clone(),
            });
        }
        Ok(())
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
        self.check_pinned(options.now)?;
        let mut options = options.clone();
        options.expected_report_data = Some(report_data(&self.body));
        // Simulation is the policy's call, whose refusal names the rule to change.
        options.allow_simulation = true;
        let claims =
            coffer_attest::verify(&self.evidence, &options).map_err(BundleError::Verify)?;
        let role = policy.evaluate(&claims).map_err(BundleError::Policy)?;
        Ok(VerifiedBundle { claims, role })
    }

    /// The primary key, to seal to.
    pub fn primary(&self) -> Result<SealingPublicKey, BundleError> {
        let primaries: Vec<&BundleKey> = self.body.keys.iter().filter(|k| k.primary).collect();
        match primaries.as_slice() {
            [key] => key.public_key(),
            other => Err(BundleError::Primary(other.len())),
        }
    }

    /// The key with id `id`, if the bundle has it.
    pub fn key(&self, id: &str) -> Option<SealingPublicKey> {
        self.body
            .keys
            .iter()
            .find(|k| k.id == id)
            .and_then(|k| k.public_key().ok())
    }

    /// The keyring the bundle's keys belong to.
    pub fn keyring(&self) -> &str {
        &self.body.keyring
    }

    /// Refuses a bundle for another keyring than `expected`.
    pub fn check_keyring(&self, expected: &str) -> Result<(), BundleError> {
        if self.body.keyring == expected {
            Ok(())
        } else {
            Err(BundleError::WrongKeyring {
                expected: expected.chars().take(80).collect(),
                actual: self.body.keyring.clone(),
            })
        }
    }

    /// The keys, in bundle order.
    pub fn keys(&self) -> &[BundleKey] {
        &self.body.keys
    }

    /// When the bundle stops being accepted (`expires`), if it parses.
    pub fn expires(&self) -> Option<SystemTime> {
        parse_time(&self.body.expires).map(SystemTime::from)
    }

    /// SHA-256 of [`Self::to_json`], hex: what a user compares to pin a bundle by hand.
    pub fn fingerprint(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.to_json()))
    }

    /// What `verified` (this bundle's [`Self::verify`]) established, as two lines for a person
    /// to check before sealing to the bundle: keyd's TEE, measurement, debug, TCB and policy
    /// role; then the keyring, keyd instance, sealing keys (the primary marked), fingerprint and
    /// validity. Every tool that verifies a bundle prints this same text.
    pub fn describe(&self, verified: &VerifiedBundle) -> String {
        let claims = &verified.claims;
        let body = &self.body;
        let keys: Vec<String> = body
            .keys
            .iter()
            .map(|k| {
                if k.primary {
                    format!("{} (primary)", k.id)
                } else {
                    k.id.clone()
                }
            })
            .collect();
        format!(
            "verified keyd: TEE {}, measurement {}, debug {}, TCB {}, policy role {}\n\
             keyring {:?} (keyd instance {}): sealing keys {}; bundle fingerprint {}, issued {}, \
             expires {}",
            claims.tee,
            hex::encode(claims.primary_measurement()),
            claims.debug,
            claims.tcb_status,
            verified.role.name,
            body.keyring,
            body.instance,
            keys.join(", "),
            self.fingerprint(),
            body.issued,
            body.expires
        )
    }
}

fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

fn timestamp_field(field: &str, text: &str) -> Result<OffsetDateTime, BundleError> {
    parse_time(text).ok_or_else(|| BundleError::Timestamp {
        field: field.to_string(),
        value: text.chars().take(40).collect(),
    })
}

/// The structural rules of a body; returns (issued, expires).
fn check_body(body: &BundleBody) -> Result<(OffsetDateTime, OffsetDateTime), BundleError> {
    if body.format != BUNDLE_FORMAT {
        return Err(BundleError::Format(body.format));
    }
    if let Some(reason) = names::keyring_problem(&body.keyring) {
        return Err(BundleError::Keyring {
            name: body.keyring.chars().take(80).collect(),
            reason,
        });
    }
    let instance_ok = !body.instance.is_empty()
        && body.instance.len() <= MAX_INSTANCE_LEN
        && body
            .instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if !instance_ok {
        return Err(BundleError::Instance);
    }
    let issued = timestamp_field("issued", &body.issued)?;
    let expires = timestamp_field("expires", &body.expires)?;
    if expires <= issued {
        return Err(BundleError::Validity {
            issued: body.issued.clone(),
            expires: body.expires.clone(),
        });
    }
    if body.keys.is_empty() || body.keys.len() > MAX_BUNDLE_KEYS {
        return Err(BundleError::KeyCount(body.keys.len()));
    }
    let mut seen = HashSet::new();
    for key in &body.keys {
        key.public_key()?;
        if !seen.insert(key.id.as_str()) {
            return Err(BundleError::DuplicateKey(key.id.clone()));
        }
        timestamp_field(&format!("created of {}", key.id), &key.created)?;
    }
    let primaries = body.keys.iter().filter(|k| k.primary).count();
    if primaries != 1 {
        return Err(BundleError::Primary(primaries));
    }
    Ok((issued, expires))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SealingKeyPair;

    fn sim() -> (tempfile::TempDir, coffer_platform::sim::SimPlatform) {
        let dir = tempfile::tempdir().unwrap();
        let platform = coffer_platform::sim::SimPlatform::open_or_create(dir.path()).unwrap();
        (dir, platform)
    }

    fn body(keys: &[(&SealingKeyPair, bool)]) -> BundleBody {
        let now = SystemTime::now();
        BundleBody {
            format: BUNDLE_FORMAT,
            keyring: "apps".into(),
            instance: "keyd-0123abcd".into(),
            issued: timestamp(now),
            expires: timestamp(now + Duration::from_secs(3600)),
            keys: keys
                .iter()
                .map(|(pair, primary)| BundleKey::new(pair.public(), timestamp(now), *primary))
                .collect(),
        }
    }

    fn policy(allow_simulation: bool) -> Policy {
        Policy::from_yaml(&format!(
            "version: 1\nallow_simulation: {allow_simulation}\nroles:\n  - name: keyd\n    sim: {{}}\n"
        ))
        .unwrap()
    }

    #[test]
    fn attest_json_round_trip_and_verify() {
        let (_dir, platform) = sim();
        let old = SealingKeyPair::generate().unwrap();
        let new = SealingKeyPair::generate().unwrap();
        let bundle = KeyBundle::attest(body(&[(&old, false), (&new, true)]), &platform).unwrap();
        let json = bundle.to_json();
        assert!(json.ends_with(b"\n"));
        let parsed = KeyBundle::from_json(&json).unwrap();
        assert_eq!(parsed, bundle);
        assert_eq!(parsed.keyring(), "apps");
        assert_eq!(parsed.primary().unwrap(), *new.public());
        assert_eq!(parsed.key(old.id()).unwrap(), *old.public());
        assert_eq!(parsed.key("sk-0000000000000000"), None);
        parsed.check_pinned(SystemTime::now()).unwrap();
        parsed.check_keyring("apps").unwrap();
        let e = parsed.check_keyring("payments").unwrap_err();
        assert!(
            e.to_string()
                .contains("the bundle is for keyring \"apps\", not \"payments\""),
            "{e}"
        );

        let options = VerifyOptions::new(SystemTime::now());
        let verified = parsed.verify(&policy(true), &options).unwrap();
        assert_eq!(verified.role.name, "keyd");
        assert_eq!(verified.claims.tee, TeeType::Sim);
        let e = parsed.verify(&policy(false), &options).unwrap_err();
        assert!(matches!(e, BundleError::Policy(_)), "{e}");
        assert!(e.to_string().contains("allow_simulation is false"), "{e}");
    }

    #[test]
    fn pinned_checks_time_and_commitment() {
        let (_dir, platform) = sim();
        let pair = SealingKeyPair::generate().unwrap();
        let bundle = KeyBundle::attest(body(&[(&pair, true)]), &platform).unwrap();
        let now = SystemTime::now();
        // Within the skew allowance on both ends.
        bundle.check_pinned(now - Duration::from_secs(60)).unwrap();
        bundle
            .check_pinned(now + Duration::from_secs(3600 + 60))
            .unwrap();
        let e = bundle
            .check_pinned(now + Duration::from_secs(3600 + 600))
            .unwrap_err();
        assert!(matches!(e, BundleError::Expired { .. }));
        assert!(e
            .to_string()
            .contains("fetch a new bundle with kubectl coffer fetch-key"));
        let e = bundle
            .check_pinned(now - Duration::from_secs(600))
            .unwrap_err();
        assert!(matches!(e, BundleError::NotYetValid { .. }), "{e}");

        // Any change to the body breaks the commitment.
        let mut altered = bundle.clone();
        altered.body.expires = timestamp(now + Duration::from_secs(7200));
        assert!(matches!(
            altered.check_pinned(now),
            Err(BundleError::ReportData)
        ));
        let other = SealingKeyPair::generate().unwrap();
        let mut swapped = bundle.clone();
        swapped.body.keys = vec![BundleKey::new(other.public(), timestamp(now), true)];
        assert!(matches!(
            swapped.check_pinned(now),
            Err(BundleError::ReportData)
        ));
        let e = swapped
            .verify(&policy(true), &VerifyOptions::new(now))
            .unwrap_err();
        assert!(matches!(e, BundleError::ReportData), "{e}");

        // Forged evidence with the right report data fails full verification only.
        let mut forged = bundle.clone();
        let last = forged.evidence.report.len() - 1;
        forged.evidence.report[last] ^= 1;
        forged.check_pinned(now).unwrap();
        let e = forged
            .verify(&policy(true), &VerifyOptions::new(now))
            .unwrap_err();
        assert!(matches!(e, BundleError::Verify(_)), "{e}");
    }

    #[test]
    fn from_json_is_strict() {
        let (_dir, platform) = sim();
        let a = SealingKeyPair::generate().unwrap();
        let b = SealingKeyPair::generate().unwrap();
        let good = KeyBundle::attest(body(&[(&a, true)]), &platform).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&good.to_json()).unwrap();
        let with = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut v = json.clone();
            edit(&mut v);
            KeyBundle::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err()
        };
        assert!(matches!(
            with(&|v| v["extra"] = 1.into()),
            BundleError::Json(_)
        ));
        assert!(matches!(
            with(&|v| v["keys"][0]["extra"] = 1.into()),
            BundleError::Json(_)
        ));
        assert!(matches!(
            with(&|v| v["format"] = 2.into()),
            BundleError::Format(2)
        ));
        assert!(matches!(
            with(&|v| v["keyring"] = "Apps".into()),
            BundleError::Keyring { .. }
        ));
        assert!(matches!(
            with(&|v| v["instance"] = "a b".into()),
            BundleError::Instance
        ));
        assert!(matches!(
            with(&|v| v["issued"] = "yesterday".into()),
            BundleError::Timestamp { .. }
        ));
        assert!(matches!(
            with(&|v| v["expires"] = v["issued"].clone()),
            BundleError::Validity { .. }
        ));
        assert!(matches!(
            with(&|v| v["keys"] = serde_json::json!([])),
            BundleError::KeyCount(0)
        ));
        assert!(matches!(
            with(&|v| v["keys"][0]["primary"] = false.into()),
            BundleError::Primary(0)
        ));
        assert!(matches!(
            with(&|v| v["keys"][0]["id"] = b.id().into()),
            BundleError::KeyId { .. }
        ));
        assert!(matches!(
            with(&|v| v["keys"][0]["public_key"] = "AAAA".into()),
            BundleError::KeyEncoding { .. }
        ));
        assert!(matches!(
            with(&|v| {
                let k = v["keys"][0].clone();
                v["keys"].as_array_mut().unwrap().push(k);
            }),
            BundleError::DuplicateKey(_)
        ));
        assert!(matches!(
            with(&|v| v["evidence"]["tee"] = "tpm".into()),
            BundleError::Json(_)
        ));
        let huge = vec![b' '; MAX_BUNDLE_LEN + 1];
        assert!(matches!(
            KeyBundle::from_json(&huge),
            Err(BundleError::TooLarge { .. })
        ));
        assert!(matches!(
            KeyBundle::from_json(b"not json"),
            Err(BundleError::Json(_))
        ));
    }

    #[test]
    fn report_data_is_the_documented_hash() {
        let pair = SealingKeyPair::derive(&[7; 32]);
        let body = body(&[(&pair, true)]);
        let mut input = b"coffer key bundle v1\0".to_vec();
        input.extend_from_slice(&serde_json::to_vec(&body).unwrap());
        assert_eq!(report_data(&body).to_vec(), Sha512::digest(&input).to_vec());
        let text = String::from_utf8(serde_json::to_vec(&body).unwrap()).unwrap();
        assert!(
            text.starts_with("{\"format\":1,\"keyring\":\"apps\",\"instance\":"),
            "{text}"
        );
    }
}

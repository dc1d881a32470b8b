//! Recovery shares for the key service's root secret.
//!
//! At initialisation `coffer keyd` can split its 32-byte root secret into `n` Shamir shares
//! (threshold `k`), each sealed with HPKE (RFC 9180, base mode,
//! DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / ChaCha20-Poly1305) to one operator's X25519 public
//! key. A fresh keyd on another machine restores the root secret from any `k` shares, which the
//! operators open with their secret keys ([`open_share`]) and hand to [`combine`].
//!
//! Binding and integrity:
//! - the HPKE `info` binds every share to the keyd instance id and the share index;
//! - the HPKE AAD covers a header with the format version, instance id, `k`, `n`, index, operator
//!   key fingerprint and the public root check, so none of these can be altered undetected;
//! - every share carries `root_check = HMAC-SHA256(root, "coffer recovery check v1" || 0 ||
//!   instance_id)`, which lets [`combine`] tell a correct reconstruction from a wrong one instead
//!   of silently returning a wrong secret.
//!
//! Threshold policy: `1 <= k <= n <= 255`. `k = 1` is accepted (single-operator escrow) but every
//! share is then the whole secret; it is logged as a warning, and `k >= 2` is recommended.
//!
//! The Shamir arithmetic comes from the `shamirsecretsharing` crate's `hazmat` key-share API: a
//! bitsliced, table-free (constant-time) GF(2^8) implementation specialised to 32-byte keys.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use rand_core::{OsRng, TryRngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

type Kem = X25519HkdfSha256;
type Kdf = HkdfSha256;
type Aead = ChaCha20Poly1305;
type HmacSha256 = Hmac<Sha256>;

/// Version of the [`SealedShare`] format written by this crate (the only one it reads).
pub const FORMAT_VERSION: u32 = 1;
/// Text prefix of an operator public key ([`OperatorPublicKey`]).
pub const PUBLIC_KEY_PREFIX: &str = "coffer-recovery-pk:";
/// Text prefix of an operator secret key ([`OperatorSecretKey`]).
pub const SECRET_KEY_PREFIX: &str = "coffer-recovery-sk:";
/// Longest accepted keyd instance id, in bytes.
pub const MAX_INSTANCE_ID_LEN: usize = 256;

const CHECK_LABEL: &[u8] = b"coffer recovery check v1";
const INFO_LABEL: &[u8] = b"coffer recovery share v1";
const AAD_LABEL: &[u8] = b"coffer recovery share header v1";
const FINGERPRINT_LABEL: &[u8] = b"coffer recovery operator key v1";
/// Shamir key share as produced by `shamirsecretsharing::hazmat`: x coordinate || 32-byte y.
const KEYSHARE_LEN: usize = 33;

/// Everything that can go wrong while splitting, sealing, opening or combining recovery shares.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// The threshold is outside `1..=n` or `n` is outside `1..=255`.
    #[error(
        "invalid threshold {threshold} of {total} shares: need 1 <= threshold <= shares <= 255 \
         (supply between threshold and 255 operator keys; threshold >= 2 is recommended)"
    )]
    InvalidThreshold {
        /// Requested threshold `k`.
        threshold: usize,
        /// Number of shares `n` (operator keys supplied).
        total: usize,
    },
    /// The same operator public key was supplied twice.
    #[error(
        "operator key at position {position} is supplied more than once (fingerprint \
         {fingerprint}); give every operator a distinct key so one person cannot hold two shares"
    )]
    DuplicateOperatorKey {
        /// Zero-based position of the repeated key in the operator list.
        position: usize,
        /// Fingerprint of the repeated key.
        fingerprint: String,
    },
    /// The instance id is empty or longer than [`MAX_INSTANCE_ID_LEN`] bytes.
    #[error(
        "invalid instance id: must be 1..={MAX_INSTANCE_ID_LEN} bytes; pass keyd's instance id"
    )]
    InvalidInstanceId,
    /// An operator key in text form could not be parsed.
    #[error("invalid operator key: {reason}; expected `{PUBLIC_KEY_PREFIX}<base64 of 32 bytes>` or `{SECRET_KEY_PREFIX}<base64 of 32 bytes>`")]
    InvalidKey {
        /// What is wrong with the key.
        reason: &'static str,
    },
    /// A sealed share file is malformed.
    #[error(
        "malformed sealed share: {reason}; re-export the share file from the original keyd output"
    )]
    Format {
        /// What is wrong with the file.
        reason: String,
    },
    /// A sealed share was written by a newer (or unknown) format version.
    #[error(
        "sealed share format version {found} is not supported (this build reads version \
         {FORMAT_VERSION}); use a coffer release that understands it"
    )]
    UnsupportedVersion {
        /// Version found in the file.
        found: u32,
    },
    /// A share belongs to a different keyd instance.
    #[error(
        "share {index} belongs to keyd instance {found:?}, not {expected:?}; use the shares \
         emitted by the instance being recovered"
    )]
    WrongInstance {
        /// Share index (1-based).
        index: u8,
        /// Instance id being recovered.
        expected: String,
        /// Instance id recorded in the share.
        found: String,
    },
    /// The share is sealed to a different operator key than the one supplied.
    #[error(
        "share {index} is not sealed to this operator key (share is for fingerprint \
         {share_fingerprint}, key is {key_fingerprint}); open it with the matching operator \
         secret key"
    )]
    NotForThisKey {
        /// Share index (1-based).
        index: u8,
        /// Fingerprint recorded in the share.
        share_fingerprint: String,
        /// Fingerprint of the supplied secret key.
        key_fingerprint: String,
    },
    /// HPKE decryption failed: the share (or its header) was altered or corrupted.
    #[error(
        "share {index} failed to decrypt: the file was tampered with or corrupted; obtain an \
         intact copy of share {index} or use another share"
    )]
    Decrypt {
        /// Share index (1-based).
        index: u8,
    },
    /// HPKE encryption failed (should not happen with valid keys).
    #[error("sealing share {index} failed: {reason}; check the operator public key")]
    Encrypt {
        /// Share index (1-based).
        index: u8,
        /// Underlying HPKE error.
        reason: String,
    },
    /// Two shares with the same index were supplied.
    #[error("share {index} was supplied more than once; supply distinct shares")]
    DuplicateIndex {
        /// The repeated share index (1-based).
        index: u8,
    },
    /// Shares disagree on threshold, share count or root check (they come from different splits).
    #[error(
        "share {index} does not belong to the same split as the others (threshold, share count \
         or root check differ); use shares from a single keyd initialisation"
    )]
    InconsistentShares {
        /// Index (1-based) of the first share that disagrees with the first one supplied.
        index: u8,
    },
    /// No shares were supplied to [`combine`].
    #[error("no shares supplied; open at least the threshold number of shares first")]
    NoShares,
    /// Fewer shares than the threshold were supplied.
    #[error("not enough shares: have {have}, need {need}; collect more operator shares")]
    NotEnoughShares {
        /// Distinct shares supplied.
        have: usize,
        /// Threshold recorded in the shares.
        need: usize,
    },
    /// The reconstructed secret does not match the root check.
    #[error(
        "the reconstructed root secret does not match the recorded check; at least one share \
         is wrong — try a different set of shares"
    )]
    Mismatch,
    /// The Shamir library rejected its input (internal error).
    #[error("secret sharing failed: {0}")]
    Sharing(String),
}

// ---------------------------------------------------------------------------------------------
// Operator keys
// ---------------------------------------------------------------------------------------------

/// An operator's X25519 public key; shares are sealed to it.
///
/// Text form: `coffer-recovery-pk:<standard base64 of 32 bytes>` (see [`fmt::Display`] and
/// [`FromStr`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OperatorPublicKey {
    bytes: [u8; 32],
}

impl OperatorPublicKey {
    /// Builds a key from its 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self { bytes }
    }

    /// The 32 raw bytes of the key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Fingerprint: lowercase hex of `SHA-256("coffer recovery operator key v1" || 0 || key)`.
    pub fn fingerprint(&self) -> String {
        hex::encode(self.fingerprint_bytes())
    }

    fn fingerprint_bytes(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(FINGERPRINT_LABEL);
        h.update([0u8]);
        h.update(self.bytes);
        h.finalize().into()
    }

    fn to_hpke(self) -> Result<<Kem as hpke::Kem>::PublicKey, RecoveryError> {
        <Kem as hpke::Kem>::PublicKey::from_bytes(&self.bytes).map_err(|_| {
            RecoveryError::InvalidKey {
                reason: "not a valid X25519 public key",
            }
        })
    }
}

impl fmt::Display for OperatorPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_KEY_PREFIX}{}", B64.encode(self.bytes))
    }
}

impl fmt::Debug for OperatorPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OperatorPublicKey")
            .field(&self.to_string())
            .finish()
    }
}

impl FromStr for OperatorPublicKey {
    type Err = RecoveryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .trim()
            .strip_prefix(PUBLIC_KEY_PREFIX)
            .ok_or(RecoveryError::InvalidKey {
                reason: "missing `coffer-recovery-pk:` prefix",
            })?;
        let raw = B64.decode(body).map_err(|_| RecoveryError::InvalidKey {
            reason: "key body is not valid base64",
        })?;
        let bytes: [u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| RecoveryError::InvalidKey {
                reason: "key body is not 32 bytes",
            })?;
        Ok(Self { bytes })
    }
}

/// An operator's X25519 secret key, used to open shares sealed to its public key.
///
/// Text form: `coffer-recovery-sk:<standard base64 of 32 bytes>`. Zeroized on drop; `Debug`
/// never prints the key.
#[derive(Clone)]
pub struct OperatorSecretKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl OperatorSecretKey {
    /// Generates a fresh key pair from the operating system's random number generator.
    pub fn generate() -> (OperatorSecretKey, OperatorPublicKey) {
        let mut rng = OsRng.unwrap_err();
        let (sk, _pk) = Kem::gen_keypair(&mut rng);
        let mut raw = sk.to_bytes();
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&raw);
        raw.as_mut_slice().zeroize();
        let secret = OperatorSecretKey { bytes };
        let public = secret.public_key();
        (secret, public)
    }

    /// Builds a key from its 32 raw bytes.
    pub fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self { bytes }
    }

    /// The public key matching this secret key.
    pub fn public_key(&self) -> OperatorPublicKey {
        let sk = self.to_hpke();
        let pk = Kem::sk_to_pk(&sk);
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&pk.to_bytes());
        OperatorPublicKey { bytes }
    }

    /// The text form `coffer-recovery-sk:<base64>`, in a buffer that is zeroized on drop.
    pub fn to_text(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(SECRET_KEY_PREFIX.len() + 44));
        s.push_str(SECRET_KEY_PREFIX);
        B64.encode_string(*self.bytes, &mut s);
        s
    }

    fn to_hpke(&self) -> <Kem as hpke::Kem>::PrivateKey {
        // Any 32 bytes are a valid X25519 secret key (clamping happens at use).
        <Kem as hpke::Kem>::PrivateKey::from_bytes(&self.bytes[..])
            .expect("32 bytes are always a valid X25519 secret key")
    }
}

impl fmt::Debug for OperatorSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperatorSecretKey")
            .field("public", &self.public_key())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl FromStr for OperatorSecretKey {
    type Err = RecoveryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .trim()
            .strip_prefix(SECRET_KEY_PREFIX)
            .ok_or(RecoveryError::InvalidKey {
                reason: "missing `coffer-recovery-sk:` prefix",
            })?;
        let raw = Zeroizing::new(B64.decode(body).map_err(|_| RecoveryError::InvalidKey {
            reason: "key body is not valid base64",
        })?);
        if raw.len() != 32 {
            return Err(RecoveryError::InvalidKey {
                reason: "key body is not 32 bytes",
            });
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&raw);
        Ok(Self { bytes })
    }
}

// ---------------------------------------------------------------------------------------------
// Share formats
// ---------------------------------------------------------------------------------------------

/// One recovery share sealed to one operator: the on-disk/JSON file format (version 1).
///
/// Binary fields are standard base64; the fingerprint is lowercase hex. Unknown fields are
/// refused, and [`SealedShare::from_json`] / [`open_share`] refuse versions other than
/// [`FORMAT_VERSION`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedShare {
    /// Format version; always [`FORMAT_VERSION`] when written by this crate.
    pub version: u32,
    /// The keyd instance whose root secret this share protects.
    pub instance_id: String,
    /// Threshold `k`: shares needed to recover.
    pub threshold: u8,
    /// Total number of shares `n` emitted.
    pub total: u8,
    /// This share's index, `1..=n` (the Shamir x coordinate).
    pub index: u8,
    /// Fingerprint ([`OperatorPublicKey::fingerprint`]) of the operator key it is sealed to.
    pub operator_fingerprint: String,
    /// Public commitment to the root secret (base64 of 32 bytes), identical in all shares.
    pub root_check: String,
    /// HPKE encapsulated key (base64 of 32 bytes).
    pub enc: String,
    /// HPKE ciphertext of the share value (base64).
    pub ciphertext: String,
}

impl fmt::Debug for SealedShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedShare")
            .field("version", &self.version)
            .field("instance_id", &self.instance_id)
            .field("threshold", &self.threshold)
            .field("total", &self.total)
            .field("index", &self.index)
            .field("operator_fingerprint", &self.operator_fingerprint)
            .finish_non_exhaustive()
    }
}

impl SealedShare {
    /// Serialises the share as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("SealedShare always serialises")
    }

    /// Parses a share from JSON, refusing unknown fields and unsupported versions.
    pub fn from_json(json: &str) -> Result<Self, RecoveryError> {
        let share: SealedShare = serde_json::from_str(json).map_err(|e| RecoveryError::Format {
            reason: e.to_string(),
        })?;
        share.check_version()?;
        Ok(share)
    }

    fn check_version(&self) -> Result<(), RecoveryError> {
        if self.version != FORMAT_VERSION {
            return Err(RecoveryError::UnsupportedVersion {
                found: self.version,
            });
        }
        Ok(())
    }
}

/// One opened (decrypted) recovery share, ready for [`combine`].
///
/// Only [`open_share`] creates it. The share value is zeroized on drop and never printed by
/// `Debug`.
#[derive(Clone)]
pub struct PlainShare {
    instance_id: String,
    threshold: u8,
    total: u8,
    index: u8,
    root_check: [u8; 32],
    value: Zeroizing<[u8; KEYSHARE_LEN]>,
}

impl PlainShare {
    /// The share's index (`1..=n`).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The threshold `k` recorded in the share.
    pub fn threshold(&self) -> u8 {
        self.threshold
    }

    /// The total share count `n` recorded in the share.
    pub fn total(&self) -> u8 {
        self.total
    }

    /// The keyd instance id the share belongs to.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
}

impl fmt::Debug for PlainShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlainShare")
            .field("instance_id", &self.instance_id)
            .field("threshold", &self.threshold)
            .field("total", &self.total)
            .field("index", &self.index)
            .field("value", &"<redacted>")
            .finish()
    }
}

// ---------------------------------------------------------------------------------------------
// Binding helpers
// ---------------------------------------------------------------------------------------------

fn check_instance_id(instance_id: &str) -> Result<(), RecoveryError> {
    if instance_id.is_empty() || instance_id.len() > MAX_INSTANCE_ID_LEN {
        return Err(RecoveryError::InvalidInstanceId);
    }
    Ok(())
}

fn root_check(root: &[u8; 32], instance_id: &str) -> HmacSha256 {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(root).expect("HMAC accepts any key length");
    mac.update(CHECK_LABEL);
    mac.update(&[0u8]);
    mac.update(instance_id.as_bytes());
    mac
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// HPKE `info`: label || 0 || len16(instance_id) || instance_id || index.
fn hpke_info(instance_id: &str, index: u8) -> Vec<u8> {
    let mut info = Vec::with_capacity(INFO_LABEL.len() + 4 + instance_id.len());
    info.extend_from_slice(INFO_LABEL);
    info.push(0);
    put_str(&mut info, instance_id);
    info.push(index);
    info
}

/// HPKE AAD: label || 0 || version32 || len16(instance_id) || instance_id || k || n || index ||
/// fingerprint(32) || root_check(32).
fn hpke_aad(
    instance_id: &str,
    threshold: u8,
    total: u8,
    index: u8,
    fingerprint: &[u8; 32],
    check: &[u8; 32],
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_LABEL.len() + 80 + instance_id.len());
    aad.extend_from_slice(AAD_LABEL);
    aad.push(0);
    aad.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    put_str(&mut aad, instance_id);
    aad.extend_from_slice(&[threshold, total, index]);
    aad.extend_from_slice(fingerprint);
    aad.extend_from_slice(check);
    aad
}

fn decode_fixed<const N: usize>(field: &str, value: &str) -> Result<[u8; N], RecoveryError> {
    let raw = B64.decode(value).map_err(|_| RecoveryError::Format {
        reason: format!("field `{field}` is not valid base64"),
    })?;
    raw.as_slice()
        .try_into()
        .map_err(|_| RecoveryError::Format {
            reason: format!("field `{field}` is not {N} bytes"),
        })
}

// ---------------------------------------------------------------------------------------------
// API
// ---------------------------------------------------------------------------------------------

/// Splits `root` into `operators.len()` shares with threshold `threshold` and seals share `i`
/// (index `i + 1`) to `operators[i]`.
///
/// Requires `1 <= threshold <= operators.len() <= 255`, distinct operator keys and a non-empty
/// instance id of at most [`MAX_INSTANCE_ID_LEN`] bytes. `threshold == 1` is allowed but logged as
/// a warning, since every share then reveals the whole secret to its operator.
pub fn split(
    root: &Zeroizing<[u8; 32]>,
    instance_id: &str,
    threshold: u8,
    operators: &[OperatorPublicKey],
) -> Result<Vec<SealedShare>, RecoveryError> {
    check_instance_id(instance_id)?;
    let total = operators.len();
    if total == 0 || total > 255 || threshold == 0 || usize::from(threshold) > total {
        return Err(RecoveryError::InvalidThreshold {
            threshold: threshold.into(),
            total,
        });
    }
    let total = total as u8;
    if threshold == 1 {
        tracing::warn!(
            instance_id,
            total,
            "recovery threshold is 1: every share alone recovers the root secret"
        );
    }
    let fingerprints: Vec<[u8; 32]> = operators.iter().map(|k| k.fingerprint_bytes()).collect();
    for (position, fp) in fingerprints.iter().enumerate() {
        if fingerprints[..position].contains(fp) {
            return Err(RecoveryError::DuplicateOperatorKey {
                position,
                fingerprint: hex::encode(fp),
            });
        }
    }
    let hpke_keys = operators
        .iter()
        .map(|k| k.to_hpke())
        .collect::<Result<Vec<_>, _>>()?;

    let check: [u8; 32] = root_check(root, instance_id).finalize().into_bytes().into();
    let check_b64 = B64.encode(check);

    let raw_shares = shamirsecretsharing::hazmat::create_keyshares(&root[..], total, threshold)
        .map_err(|e| RecoveryError::Sharing(e.to_string()))?;
    let mut raw_shares: Vec<Zeroizing<Vec<u8>>> =
        raw_shares.into_iter().map(Zeroizing::new).collect();

    let mut rng = OsRng.unwrap_err();
    let mut out = Vec::with_capacity(operators.len());
    for (i, (pk, raw)) in hpke_keys.iter().zip(raw_shares.iter_mut()).enumerate() {
        let index = (i + 1) as u8;
        if raw.len() != KEYSHARE_LEN || raw[0] != index {
            return Err(RecoveryError::Sharing("unexpected key share layout".into()));
        }
        let info = hpke_info(instance_id, index);
        let aad = hpke_aad(
            instance_id,
            threshold,
            total,
            index,
            &fingerprints[i],
            &check,
        );
        let (enc, ciphertext) = hpke::single_shot_seal::<Aead, Kdf, Kem, _>(
            &OpModeS::Base,
            pk,
            &info,
            raw,
            &aad,
            &mut rng,
        )
        .map_err(|e| RecoveryError::Encrypt {
            index,
            reason: e.to_string(),
        })?;
        out.push(SealedShare {
            version: FORMAT_VERSION,
            instance_id: instance_id.to_owned(),
            threshold,
            total,
            index,
            operator_fingerprint: hex::encode(fingerprints[i]),
            root_check: check_b64.clone(),
            enc: B64.encode(enc.to_bytes()),
            ciphertext: B64.encode(ciphertext),
        });
    }
    Ok(out)
}

/// Opens one sealed share with the operator's secret key, checking that it belongs to
/// `instance_id` and is sealed to this key.
///
/// Errors: [`RecoveryError::UnsupportedVersion`], [`RecoveryError::WrongInstance`],
/// [`RecoveryError::NotForThisKey`], [`RecoveryError::Format`], and [`RecoveryError::Decrypt`]
/// when the ciphertext or any header field was altered.
pub fn open_share(
    share: &SealedShare,
    operator_secret: &OperatorSecretKey,
    instance_id: &str,
) -> Result<PlainShare, RecoveryError> {
    share.check_version()?;
    check_instance_id(instance_id)?;
    let index = share.index;
    if share.instance_id != instance_id {
        return Err(RecoveryError::WrongInstance {
            index,
            expected: instance_id.to_owned(),
            found: share.instance_id.clone(),
        });
    }
    if share.total == 0 || share.threshold == 0 || share.threshold > share.total {
        return Err(RecoveryError::Format {
            reason: format!(
                "threshold {} of {} shares is invalid",
                share.threshold, share.total
            ),
        });
    }
    if index == 0 || index > share.total {
        return Err(RecoveryError::Format {
            reason: format!("share index {index} is outside 1..={}", share.total),
        });
    }
    let key_fp = operator_secret.public_key().fingerprint_bytes();
    if share.operator_fingerprint != hex::encode(key_fp) {
        return Err(RecoveryError::NotForThisKey {
            index,
            share_fingerprint: share.operator_fingerprint.clone(),
            key_fingerprint: hex::encode(key_fp),
        });
    }
    let check: [u8; 32] = decode_fixed("root_check", &share.root_check)?;
    let enc_raw: [u8; 32] = decode_fixed("enc", &share.enc)?;
    let enc = <Kem as hpke::Kem>::EncappedKey::from_bytes(&enc_raw).map_err(|_| {
        RecoveryError::Format {
            reason: "field `enc` is not a valid X25519 public key".into(),
        }
    })?;
    let ciphertext = B64
        .decode(&share.ciphertext)
        .map_err(|_| RecoveryError::Format {
            reason: "field `ciphertext` is not valid base64".into(),
        })?;
    let info = hpke_info(instance_id, index);
    let aad = hpke_aad(
        instance_id,
        share.threshold,
        share.total,
        index,
        &key_fp,
        &check,
    );
    let sk = operator_secret.to_hpke();
    let plain = Zeroizing::new(
        hpke::single_shot_open::<Aead, Kdf, Kem>(
            &OpModeR::Base,
            &sk,
            &enc,
            &info,
            &ciphertext,
            &aad,
        )
        .map_err(|_| RecoveryError::Decrypt { index })?,
    );
    if plain.len() != KEYSHARE_LEN || plain[0] != index {
        return Err(RecoveryError::Decrypt { index });
    }
    let mut value = Zeroizing::new([0u8; KEYSHARE_LEN]);
    value.copy_from_slice(&plain);
    Ok(PlainShare {
        instance_id: instance_id.to_owned(),
        threshold: share.threshold,
        total: share.total,
        index,
        root_check: check,
        value,
    })
}

/// Recovers the root secret of `instance_id` from opened shares.
///
/// Requires at least the recorded threshold of distinct shares from one split of this instance;
/// otherwise returns [`RecoveryError::NotEnoughShares`] without attempting reconstruction. The
/// result is verified against the root check, so a wrong reconstruction is reported as
/// [`RecoveryError::Mismatch`], never returned.
pub fn combine(
    shares: &[PlainShare],
    instance_id: &str,
) -> Result<Zeroizing<[u8; 32]>, RecoveryError> {
    let first = shares.first().ok_or(RecoveryError::NoShares)?;
    let mut seen = [false; 256];
    for share in shares {
        if share.instance_id != instance_id {
            return Err(RecoveryError::WrongInstance {
                index: share.index,
                expected: instance_id.to_owned(),
                found: share.instance_id.clone(),
            });
        }
        if share.threshold != first.threshold
            || share.total != first.total
            || share.root_check != first.root_check
        {
            return Err(RecoveryError::InconsistentShares { index: share.index });
        }
        if std::mem::replace(&mut seen[usize::from(share.index)], true) {
            return Err(RecoveryError::DuplicateIndex { index: share.index });
        }
    }
    let need = usize::from(first.threshold);
    if shares.len() < need {
        return Err(RecoveryError::NotEnoughShares {
            have: shares.len(),
            need,
        });
    }
    // Exactly `need` shares determine the polynomial; extra shares are not needed.
    // The library takes `&[Vec<u8>]`; the copies are zeroized right after use.
    let mut plain: Vec<Vec<u8>> = shares[..need].iter().map(|s| s.value.to_vec()).collect();
    let result = shamirsecretsharing::hazmat::combine_keyshares(&plain);
    for v in plain.iter_mut() {
        v.zeroize();
    }
    let recovered = Zeroizing::new(result.map_err(|e| RecoveryError::Sharing(e.to_string()))?);
    if recovered.len() != 32 {
        return Err(RecoveryError::Sharing("unexpected key length".into()));
    }
    let mut root = Zeroizing::new([0u8; 32]);
    root.copy_from_slice(&recovered);
    root_check(&root, instance_id)
        .verify_slice(&first.root_check)
        .map_err(|_| RecoveryError::Mismatch)?;
    Ok(root)
}

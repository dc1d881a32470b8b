//! keyd's root secret: the one key everything else in the data directory is sealed under.
//!
//! `coffer keyd init` generates a random 32-byte root secret inside the TEE and writes
//! `<data-dir>/keyd-root.json`: the root sealed with the *platform's* sealing key, plus public
//! facts (instance id, a root check). Keyrings are sealed with keys derived from the root (see
//! [`KeydRoot::platform`]), not with the platform key directly, so a copy of the data directory
//! on another machine is useless until the root is restored there, and restoring the root —
//! from `k` of the `n` recovery shares emitted at init — makes every keyring readable again.
//!
//! The root check (`HMAC-SHA256(root, "coffer-keyd root check v1" || instance_id)`) lets keyd
//! tell a correctly recovered root from a wrong one before it reseals anything.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use coffer_audit::ChainKey;
use coffer_platform::{durable, Evidence, Platform, PlatformError, PlatformKind, SealingKey};
use coffer_recovery::{OperatorPublicKey, PlainShare, SealedShare};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::KeydError;

/// The root file's name inside the data directory.
pub const ROOT_FILE: &str = "keyd-root.json";
/// The lock file that serialises writers of the root file.
const ROOT_LOCK_FILE: &str = "keyd-root.lock";
/// The root file format this build writes and reads.
const ROOT_FORMAT: u32 = 1;
/// The platform sealing-key purpose that protects the root.
const ROOT_SEAL_PURPOSE: &str = "coffer-keyd/root/v1";
/// Largest root file accepted.
const MAX_ROOT_FILE_LEN: u64 = 64 * 1024;

/// `<data-dir>/keyd-root.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RootFile {
    format: u32,
    /// Names this keyd; recovery shares are bound to it.
    instance_id: String,
    /// RFC 3339, when `init` ran.
    created: String,
    /// The platform kind that sealed `sealed_root`.
    platform: String,
    /// base64 of `SealingKey::seal(aad = instance id, root)`.
    sealed_root: String,
    /// hex of the root check.
    root_check: String,
    /// The recovery split made at init, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    recovery: Option<RecoveryInfo>,
}

/// Public facts about the recovery shares emitted at init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryInfo {
    /// Shares needed to recover.
    pub threshold: u8,
    /// Shares emitted.
    pub total: u8,
    /// Fingerprints of the operator keys, in share order.
    pub operators: Vec<String>,
}

/// What `coffer keyd init` asks for: who gets recovery shares and how many are needed.
#[derive(Debug, Clone)]
pub struct RecoveryRequest {
    /// Shares needed to recover (`k`).
    pub threshold: u8,
    /// One operator public key per share (`n` keys).
    pub operators: Vec<OperatorPublicKey>,
}

/// Public facts about a data directory's root, readable without the TEE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    /// The keyd instance id.
    pub instance_id: String,
    /// When the root was created (RFC 3339).
    pub created: String,
    /// The platform kind that sealed it.
    pub platform: String,
    /// The recovery split, if shares were emitted.
    pub recovery: Option<RecoveryInfo>,
}

/// The root as one replica hands it to another (`JoinReplica`): the secret and the public facts
/// of its root file, which the joining replica's root file repeats. Zeroized on drop; `Debug`
/// never shows the secret.
pub struct HandedRoot {
    /// The root secret.
    pub root: Zeroizing<[u8; 32]>,
    /// The keyd instance id.
    pub instance_id: String,
    /// When the root was created (RFC 3339).
    pub created: String,
    /// hex of the root check.
    pub root_check: String,
    /// The recovery split made at init, if any.
    pub recovery: Option<RecoveryInfo>,
}

impl fmt::Debug for HandedRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandedRoot")
            .field("instance_id", &self.instance_id)
            .field("created", &self.created)
            .field("root", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What [`KeydRoot::adopt`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// The root file was written: this data directory is now a replica.
    Written,
    /// The data directory already held this root, sealed to this platform: nothing changed.
    AlreadyPresent,
}

/// Longest instance id or creation time accepted from a peer.
const MAX_FACT_LEN: usize = 128;

/// The opened root secret of one keyd data directory. Zeroized on drop; never printed.
pub struct KeydRoot {
    instance_id: String,
    root: Zeroizing<[u8; 32]>,
    /// The root file's creation time and recovery split, handed on to a joining replica.
    created: String,
    recovery: Option<RecoveryInfo>,
}

impl fmt::Debug for KeydRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeydRoot")
            .field("instance_id", &self.instance_id)
            .field("root", &"<redacted>")
            .finish()
    }
}

fn root_path(data_dir: &Path) -> PathBuf {
    data_dir.join(ROOT_FILE)
}

fn root_check(root: &[u8; 32], instance_id: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(root).expect("HMAC takes any key length");
    mac.update(b"coffer-keyd root check v1\0");
    mac.update(instance_id.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Takes the root file's writer lock, released when the returned file is dropped, and removes
/// the temporaries killed writers left: each holds a sealed root.
fn lock_root(data_dir: &Path) -> Result<std::fs::File, KeydError> {
    let lock_path = data_dir.join(ROOT_LOCK_FILE);
    let lock = durable::lock_exclusive(&lock_path)
        .map_err(|e| KeydError::io(format!("locking {}", lock_path.display()), e))?;
    let removed = durable::remove_stale_temps(&root_path(data_dir)).map_err(|e| {
        root_error(
            data_dir,
            format!("cannot remove stale temporary files: {e}"),
        )
    })?;
    for tmp in &removed {
        tracing::warn!(path = %tmp.display(), "removed a temporary root file left by a writer that was killed");
    }
    Ok(lock)
}

/// Removes the temporary files killed writers left in `data_dir`: root file temporaries, under
/// the root's lock, and keystore temporaries in every keyring directory, under that keyring's
/// lock. Writers do this too; keyd calls it at start so leftovers do not wait for a write.
pub fn remove_stale_temps(data_dir: &Path) -> Result<(), KeydError> {
    if !data_dir.exists() {
        return Ok(());
    }
    drop(lock_root(data_dir)?);
    let keyrings = data_dir.join("keyrings");
    let entries = match std::fs::read_dir(&keyrings) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(KeydError::io(format!("listing {}", keyrings.display()), e)),
    };
    for entry in entries {
        let entry =
            entry.map_err(|e| KeydError::io(format!("listing {}", keyrings.display()), e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            coffer_keystore::store::remove_stale_temps(&entry.path()).map_err(|source| {
                KeydError::Keystore {
                    name,
                    dir: entry.path(),
                    source,
                }
            })?;
            crate::sealing::remove_stale_temps(&entry.path())?;
        }
    }
    Ok(())
}

fn root_error(data_dir: &Path, message: impl Into<String>) -> KeydError {
    KeydError::Root {
        path: root_path(data_dir),
        message: message.into(),
    }
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn read_root_file(data_dir: &Path) -> Result<RootFile, KeydError> {
    let path = root_path(data_dir);
    let meta = match std::fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeydError::NotInitialised {
                data_dir: data_dir.to_path_buf(),
            })
        }
        Err(e) => return Err(root_error(data_dir, format!("cannot read: {e}"))),
    };
    if meta.len() > MAX_ROOT_FILE_LEN {
        return Err(root_error(
            data_dir,
            format!(
                "file is {} bytes, the limit is {MAX_ROOT_FILE_LEN}; it is not a keyd root file",
                meta.len()
            ),
        ));
    }
    let text =
        std::fs::read(&path).map_err(|e| root_error(data_dir, format!("cannot read: {e}")))?;
    parse_root_file(&text).map_err(|message| root_error(data_dir, message))
}

/// A root file's contents (from the data directory, or the `keyd-root.json` record in etcd),
/// or why they are not one.
fn parse_root_file(text: &[u8]) -> Result<RootFile, String> {
    let file: RootFile =
        serde_json::from_slice(text).map_err(|e| format!("not a valid keyd root file: {e}"))?;
    if file.format != ROOT_FORMAT {
        return Err(format!(
            "format {} is not supported by this build (it reads format {ROOT_FORMAT}); use a matching coffer release",
            file.format
        ));
    }
    Ok(file)
}

/// Reads the public facts of `data_dir`'s root (no TEE needed): what operators need to open
/// their shares.
pub fn root_info(data_dir: &Path) -> Result<RootInfo, KeydError> {
    let file = read_root_file(data_dir)?;
    Ok(RootInfo {
        instance_id: file.instance_id,
        created: file.created,
        platform: file.platform,
        recovery: file.recovery,
    })
}

fn seal_root(
    platform: &dyn Platform,
    instance_id: &str,
    root: &[u8; 32],
) -> Result<String, KeydError> {
    let sealer = platform
        .sealing_key(ROOT_SEAL_PURPOSE)
        .map_err(KeydError::Platform)?;
    let sealed = sealer
        .seal(instance_id.as_bytes(), root)
        .map_err(KeydError::Platform)?;
    Ok(B64.encode(sealed))
}

impl KeydRoot {
    /// Initialises `data_dir`: generates the root secret, seals it to `platform`, writes
    /// `keyd-root.json` (never replacing one) and, with `recovery`, returns the sealed recovery
    /// shares — the caller writes them out; keyd keeps no copy.
    pub fn init(
        data_dir: &Path,
        platform: &dyn Platform,
        recovery: Option<&RecoveryRequest>,
    ) -> Result<(KeydRoot, Vec<SealedShare>), KeydError> {
        let path = root_path(data_dir);
        if path.exists() {
            return Err(root_error(
                data_dir,
                "already exists: this data directory is initialised (keyd never replaces its root; use a new --data-dir)",
            ));
        }
        coffer_platform::sim::create_private_dir(data_dir).map_err(KeydError::Platform)?;
        let _lock = lock_root(data_dir)?;
        let mut root = Zeroizing::new([0u8; 32]);
        coffer_platform::fill_random(&mut root[..]).map_err(KeydError::Platform)?;
        let mut id = [0u8; 8];
        coffer_platform::fill_random(&mut id).map_err(KeydError::Platform)?;
        let instance_id = format!("keyd-{}", hex::encode(id));
        let shares = match recovery {
            Some(request) => {
                coffer_recovery::split(&root, &instance_id, request.threshold, &request.operators)
                    .map_err(KeydError::Recovery)?
            }
            None => Vec::new(),
        };
        let file = RootFile {
            format: ROOT_FORMAT,
            instance_id: instance_id.clone(),
            created: now_rfc3339(),
            platform: platform.kind().name().to_string(),
            sealed_root: seal_root(platform, &instance_id, &root)?,
            root_check: root_check(&root, &instance_id),
            recovery: recovery.map(|r| RecoveryInfo {
                threshold: r.threshold,
                total: u8::try_from(r.operators.len()).unwrap_or(u8::MAX),
                operators: r.operators.iter().map(|k| k.fingerprint()).collect(),
            }),
        };
        let json = serde_json::to_vec_pretty(&file).expect("RootFile always serialises");
        durable::write_new_atomic(&path, &json, 0o600).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                root_error(
                    data_dir,
                    "was created by another process at the same moment; nothing was changed",
                )
            } else {
                root_error(data_dir, format!("cannot write: {e}"))
            }
        })?;
        Ok((
            KeydRoot {
                instance_id,
                root,
                created: file.created,
                recovery: file.recovery,
            },
            shares,
        ))
    }

    /// Opens `data_dir`'s root with `platform`. A root sealed by another platform identity
    /// (the directory was copied to a new machine, or the TEE's identity changed) is refused
    /// with [`KeydError::RootSealedElsewhere`]: recover it with `coffer keyd recover`.
    pub fn open(data_dir: &Path, platform: &dyn Platform) -> Result<KeydRoot, KeydError> {
        let file = read_root_file(data_dir)?;
        let sealed = B64
            .decode(&file.sealed_root)
            .map_err(|_| root_error(data_dir, "sealed_root is not base64"))?;
        let sealer = platform
            .sealing_key(ROOT_SEAL_PURPOSE)
            .map_err(KeydError::Platform)?;
        let plain = sealer
            .unseal(file.instance_id.as_bytes(), &sealed)
            .map_err(|_| KeydError::RootSealedElsewhere {
                path: root_path(data_dir),
                sealed_by: file.platform.clone(),
                recovery: file.recovery.clone(),
            })?;
        let root: Zeroizing<[u8; 32]> = Zeroizing::new(
            plain
                .as_slice()
                .try_into()
                .map_err(|_| root_error(data_dir, "sealed root has the wrong length"))?,
        );
        if root_check(&root, &file.instance_id) != file.root_check {
            return Err(root_error(
                data_dir,
                "the unsealed root does not match root_check: the file was altered",
            ));
        }
        Ok(KeydRoot {
            instance_id: file.instance_id,
            root,
            created: file.created,
            recovery: file.recovery,
        })
    }

    /// Restores `data_dir`'s root from opened recovery shares and reseals it to `platform`.
    ///
    /// Needs at least the threshold of distinct shares of this instance; the result must match
    /// the root check in `keyd-root.json`. The previous root file is kept as
    /// `keyd-root.json.replaced-<time>`; nothing else in the data directory changes.
    pub fn recover(
        data_dir: &Path,
        platform: &dyn Platform,
        shares: &[PlainShare],
    ) -> Result<KeydRoot, KeydError> {
        let _lock = lock_root(data_dir)?;
        let mut file = read_root_file(data_dir)?;
        if Self::open(data_dir, platform).is_ok() {
            return Err(root_error(
                data_dir,
                "already opens on this platform: there is nothing to recover",
            ));
        }
        let root =
            coffer_recovery::combine(shares, &file.instance_id).map_err(KeydError::Recovery)?;
        if root_check(&root, &file.instance_id) != file.root_check {
            return Err(root_error(
                data_dir,
                "the recovered secret does not match this data directory's root check: the shares belong to another initialisation",
            ));
        }
        let path = root_path(data_dir);
        let backup = data_dir.join(format!(
            "{ROOT_FILE}.replaced-{}",
            now_rfc3339().replace(':', "")
        ));
        std::fs::copy(&path, &backup).map_err(|e| {
            root_error(
                data_dir,
                format!("cannot keep a copy at {}: {e}", backup.display()),
            )
        })?;
        file.sealed_root = seal_root(platform, &file.instance_id, &root)?;
        file.platform = platform.kind().name().to_string();
        let json = serde_json::to_vec_pretty(&file).expect("RootFile always serialises");
        durable::write_atomic(&path, &json, 0o600)
            .map_err(|e| root_error(data_dir, format!("cannot write: {e}")))?;
        Ok(KeydRoot {
            instance_id: file.instance_id,
            root,
            created: file.created,
            recovery: file.recovery,
        })
    }

    /// This root as handed to a joining replica, with the public facts of the root file it
    /// was opened from.
    pub fn hand_over(&self) -> HandedRoot {
        HandedRoot {
            root: self.root.clone(),
            instance_id: self.instance_id.clone(),
            created: self.created.clone(),
            root_check: root_check(&self.root, &self.instance_id),
            recovery: self.recovery.clone(),
        }
    }

    /// Makes `data_dir` a replica of the keyd whose root another replica handed over: checks
    /// the root against its root check, seals it to `platform` and writes `keyd-root.json`
    /// with the same instance id, creation time and recovery facts (so that keyd's recovery
    /// shares restore this replica too). Never replaces a root file: one holding this same
    /// root, that opens on `platform`, is [`Adoption::AlreadyPresent`]; any other is refused.
    pub fn adopt(
        data_dir: &Path,
        platform: &dyn Platform,
        handed: &HandedRoot,
    ) -> Result<(KeydRoot, Adoption), KeydError> {
        let fact_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= MAX_FACT_LEN
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.' | '+'))
        };
        if !fact_ok(&handed.instance_id) || !fact_ok(&handed.created) {
            return Err(root_error(
                data_dir,
                "the peer sent a malformed instance id or creation time; nothing was written",
            ));
        }
        if root_check(&handed.root, &handed.instance_id) != handed.root_check {
            return Err(root_error(
                data_dir,
                format!(
                    "the root received for keyd {} does not match its root check; nothing was written (is the peer's keyd-root.json damaged?)",
                    handed.instance_id
                ),
            ));
        }
        coffer_platform::sim::create_private_dir(data_dir).map_err(KeydError::Platform)?;
        let _lock = lock_root(data_dir)?;
        if root_path(data_dir).exists() {
            let file = read_root_file(data_dir)?;
            if file.instance_id != handed.instance_id || file.root_check != handed.root_check {
                return Err(root_error(
                    data_dir,
                    format!(
                        "already holds the root of keyd {}, not the root of keyd {} that the peer serves; keyd never replaces its root: join with a new, empty --data-dir",
                        file.instance_id, handed.instance_id
                    ),
                ));
            }
            return Ok((Self::open(data_dir, platform)?, Adoption::AlreadyPresent));
        }
        let file = RootFile {
            format: ROOT_FORMAT,
            instance_id: handed.instance_id.clone(),
            created: handed.created.clone(),
            platform: platform.kind().name().to_string(),
            sealed_root: seal_root(platform, &handed.instance_id, &handed.root)?,
            root_check: handed.root_check.clone(),
            recovery: handed.recovery.clone(),
        };
        let json = serde_json::to_vec_pretty(&file).expect("RootFile always serialises");
        durable::write_new_atomic(&root_path(data_dir), &json, 0o600)
            .map_err(|e| root_error(data_dir, format!("cannot write: {e}")))?;
        Ok((
            KeydRoot {
                instance_id: handed.instance_id.clone(),
                root: handed.root.clone(),
                created: handed.created.clone(),
                recovery: handed.recovery.clone(),
            },
            Adoption::Written,
        ))
    }

    /// The keyd instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn derive(&self, label: &str) -> Zeroizing<[u8; 32]> {
        derive(&self.root, label)
    }

    /// The platform keyd's keyrings are sealed with: sealing keys derived from the root,
    /// evidence from `inner` (the real TEE).
    pub fn platform(&self, inner: Arc<dyn Platform>) -> Arc<dyn Platform> {
        Arc::new(RootPlatform {
            inner,
            base: self.derive("sealing"),
        })
    }

    /// The key keyd's records in a shared store (etcd) are encrypted with
    /// (`coffer_keyd_store::StoreKey`). Derived from the root, so every replica of this keyd,
    /// and one restored from recovery shares, opens the same records.
    pub fn state_store_key(&self) -> Zeroizing<[u8; 32]> {
        self.derive("state-store")
    }

    /// The HMAC key that chains keyd's audit log. Derived from the root, so a recovered keyd
    /// keeps verifying and extending the same log.
    pub fn audit_chain_key(&self) -> ChainKey {
        ChainKey::new(*self.derive("audit-chain"))
    }
}

/// The key derived from keyd's root for `label`.
fn derive(root: &[u8; 32], label: &str) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha256>::new(Some(b"coffer-keyd root v1"), &root[..]);
    let mut out = Zeroizing::new([0u8; 32]);
    hk.expand(label.as_bytes(), &mut out[..])
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    out
}

/// keyd's root combined from recovery shares when no replica's root file is left (keyd's state
/// is in etcd and every replica was lost). Its public facts come from the `keyd-root.json`
/// record in etcd, which only this root opens ([`RecoveredRoot::state_store_key`]); then
/// [`KeydRoot::adopt`] seals it to the new platform. Zeroized on drop; never printed.
pub struct RecoveredRoot {
    instance_id: String,
    root: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for RecoveredRoot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecoveredRoot")
            .field("instance_id", &self.instance_id)
            .field("root", &"<redacted>")
            .finish()
    }
}

impl RecoveredRoot {
    /// Combines opened shares of keyd `instance_id` (at least its threshold).
    pub fn combine(instance_id: &str, shares: &[PlainShare]) -> Result<Self, KeydError> {
        let root = coffer_recovery::combine(shares, instance_id).map_err(KeydError::Recovery)?;
        Ok(RecoveredRoot {
            instance_id: instance_id.to_string(),
            root,
        })
    }

    /// The key keyd's records in etcd are encrypted with, as [`KeydRoot::state_store_key`].
    pub fn state_store_key(&self) -> Zeroizing<[u8; 32]> {
        derive(&self.root, "state-store")
    }

    /// This root with the public facts of `root_file`, keyd's original root file (the
    /// `keyd-root.json` record, opened with [`state_store_key`](Self::state_store_key)), for
    /// [`KeydRoot::adopt`]. `record` names where it came from in errors. The file must be
    /// this instance's, and the root must match its root check.
    pub fn with_root_file(self, record: &Path, root_file: &[u8]) -> Result<HandedRoot, KeydError> {
        let error = |message: String| KeydError::Root {
            path: record.to_path_buf(),
            message,
        };
        let file = parse_root_file(root_file).map_err(error)?;
        if file.instance_id != self.instance_id {
            return Err(error(format!(
                "holds keyd {}, but the shares are keyd {}'s; nothing was written",
                file.instance_id, self.instance_id
            )));
        }
        if root_check(&self.root, &file.instance_id) != file.root_check {
            return Err(error(
                "the recovered secret does not match its root check: the shares belong to another initialisation; nothing was written".to_string(),
            ));
        }
        Ok(HandedRoot {
            root: self.root,
            instance_id: file.instance_id,
            created: file.created,
            root_check: file.root_check,
            recovery: file.recovery,
        })
    }
}

/// A [`Platform`] whose sealing keys come from keyd's root instead of the TEE.
struct RootPlatform {
    inner: Arc<dyn Platform>,
    base: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for RootPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootPlatform")
            .field("inner", &self.inner)
            .field("base", &"<redacted>")
            .finish()
    }
}

impl Platform for RootPlatform {
    fn kind(&self) -> PlatformKind {
        self.inner.kind()
    }

    fn sealing_key(&self, purpose: &str) -> Result<SealingKey, PlatformError> {
        let hk =
            Hkdf::<Sha256>::from_prk(&self.base[..]).map_err(|_| PlatformError::UnsealFailed)?;
        let mut key = Zeroizing::new([0u8; 32]);
        hk.expand(purpose.as_bytes(), &mut key[..])
            .map_err(|_| PlatformError::UnsealFailed)?;
        Ok(SealingKey::from_bytes(key))
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError> {
        self.inner.evidence(report_data)
    }
}

/// Opens sealed recovery shares with operator secret keys: each share with whichever key it was
/// sealed to.
pub fn open_shares(
    instance_id: &str,
    shares: &[SealedShare],
    operator_keys: &[coffer_recovery::OperatorSecretKey],
) -> Result<Vec<PlainShare>, KeydError> {
    let mut opened = Vec::with_capacity(shares.len());
    for share in shares {
        let key = operator_keys
            .iter()
            .find(|k| k.public_key().fingerprint() == share.operator_fingerprint)
            .ok_or_else(|| KeydError::Config {
                path: None,
                message: format!(
                    "no --operator-key matches share {} (sealed to operator key {}); pass that operator's secret key",
                    share.index, share.operator_fingerprint
                ),
            })?;
        opened.push(
            coffer_recovery::open_share(share, key, instance_id).map_err(KeydError::Recovery)?,
        );
    }
    Ok(opened)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_platform::sim::SimPlatform;
    use coffer_recovery::OperatorSecretKey;

    fn sim(dir: &Path) -> Arc<dyn Platform> {
        Arc::new(SimPlatform::open_or_create(dir).unwrap())
    }

    #[test]
    fn stale_root_and_keyring_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("keyrings/ring")).unwrap();
        let root_tmp = data.join(".keyd-root.json.tmp-0123456789abcdef");
        let ring_tmp = data.join("keyrings/ring/.keystore.tmp-0123456789abcdef");
        std::fs::write(&root_tmp, b"sealed root").unwrap();
        std::fs::write(&ring_tmp, b"sealed keys").unwrap();
        remove_stale_temps(&data).unwrap();
        assert!(!root_tmp.exists() && !ring_tmp.exists());

        std::fs::write(&root_tmp, b"sealed root").unwrap();
        let platform = sim(&data);
        KeydRoot::init(&data, platform.as_ref(), None).unwrap();
        assert!(!root_tmp.exists(), "init leaves a stale root temporary");
        remove_stale_temps(&dir.path().join("missing")).unwrap();
    }

    #[test]
    fn a_handed_root_is_adopted_once_and_never_replaces_another() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        let (pa, pb, pc) = (sim(&a), sim(&b), sim(&c));
        let (root, _) = KeydRoot::init(&a, pa.as_ref(), None).unwrap();
        let handed = root.hand_over();
        assert!(!format!("{handed:?}").contains(&hex::encode(&handed.root[..])));

        let (joined, adoption) = KeydRoot::adopt(&b, pb.as_ref(), &handed).unwrap();
        assert_eq!(adoption, Adoption::Written);
        assert_eq!(joined.instance_id(), root.instance_id());
        let written = std::fs::read(b.join(ROOT_FILE)).unwrap();
        assert_ne!(written, std::fs::read(a.join(ROOT_FILE)).unwrap());
        let opened = KeydRoot::open(&b, pb.as_ref()).unwrap();
        assert_eq!(*opened.derive("x"), *root.derive("x"));
        assert_eq!(
            root_info(&b).unwrap().created,
            root_info(&a).unwrap().created
        );
        assert!(
            KeydRoot::open(&b, pa.as_ref()).is_err(),
            "sealed to b's platform"
        );

        // Again: nothing to do, nothing rewritten.
        let (_, adoption) = KeydRoot::adopt(&b, pb.as_ref(), &handed).unwrap();
        assert_eq!(adoption, Adoption::AlreadyPresent);
        assert_eq!(std::fs::read(b.join(ROOT_FILE)).unwrap(), written);

        // Another keyd's root is never replaced.
        KeydRoot::init(&c, pc.as_ref(), None).unwrap();
        let before = std::fs::read(c.join(ROOT_FILE)).unwrap();
        let err = KeydRoot::adopt(&c, pc.as_ref(), &handed).unwrap_err();
        assert!(err.to_string().contains("never replaces its root"), "{err}");
        assert_eq!(std::fs::read(c.join(ROOT_FILE)).unwrap(), before);

        // A root that does not match its check is refused before anything is written.
        let d = dir.path().join("d");
        let mut bad = root.hand_over();
        bad.root[0] ^= 1;
        let err = KeydRoot::adopt(&d, sim(&d).as_ref(), &bad).unwrap_err();
        assert!(err.to_string().contains("root check"), "{err}");
        assert!(!d.join(ROOT_FILE).exists());
    }

    #[test]
    fn a_root_recovered_from_shares_takes_its_facts_from_the_original_root_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        let ops: Vec<_> = (0..3).map(|_| OperatorSecretKey::generate()).collect();
        let request = RecoveryRequest {
            threshold: 2,
            operators: ops.iter().map(|(_, pk)| *pk).collect(),
        };
        let (root, shares) = KeydRoot::init(&a, sim(&a).as_ref(), Some(&request)).unwrap();
        let original = std::fs::read(a.join(ROOT_FILE)).unwrap();
        let secrets: Vec<_> = ops.iter().map(|(sk, _)| sk.clone()).collect();
        let two = open_shares(root.instance_id(), &shares[1..], &secrets).unwrap();
        let recovered = RecoveredRoot::combine(root.instance_id(), &two).unwrap();
        assert!(!format!("{recovered:?}").contains(&hex::encode(&root.root[..])));
        assert_eq!(*recovered.state_store_key(), *root.state_store_key());

        let record = Path::new("etcd:/coffer/keyd/keyd-root.json");
        let handed = recovered.with_root_file(record, &original).unwrap();
        let pb = sim(&b);
        let (adopted, adoption) = KeydRoot::adopt(&b, pb.as_ref(), &handed).unwrap();
        assert_eq!(adoption, Adoption::Written);
        assert_eq!(*adopted.derive("x"), *root.derive("x"));
        assert_eq!(
            root_info(&b).unwrap().recovery,
            root_info(&a).unwrap().recovery
        );
        KeydRoot::open(&b, pb.as_ref()).unwrap();

        // Another keyd's root file: refused, nothing written.
        let (other, _) = KeydRoot::init(&c, sim(&c).as_ref(), None).unwrap();
        let foreign = std::fs::read(c.join(ROOT_FILE)).unwrap();
        let recovered = RecoveredRoot::combine(root.instance_id(), &two).unwrap();
        let err = recovered.with_root_file(record, &foreign).unwrap_err();
        assert!(err.to_string().contains(other.instance_id()), "{err}");
    }

    #[test]
    fn init_open_and_recover_on_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let ops: Vec<_> = (0..3).map(|_| OperatorSecretKey::generate()).collect();
        let request = RecoveryRequest {
            threshold: 2,
            operators: ops.iter().map(|(_, pk)| *pk).collect(),
        };
        let platform = sim(&data);
        let (root, shares) = KeydRoot::init(&data, platform.as_ref(), Some(&request)).unwrap();
        assert_eq!(shares.len(), 3);
        let key_a = root
            .platform(platform.clone())
            .sealing_key("x")
            .unwrap()
            .expose()
            .to_vec();
        // Never replaced.
        assert!(KeydRoot::init(&data, platform.as_ref(), None).is_err());
        let reopened = KeydRoot::open(&data, platform.as_ref()).unwrap();
        assert_eq!(reopened.instance_id(), root.instance_id());
        assert!(!format!("{reopened:?}").contains(&hex::encode(&reopened.root[..])));

        // Another platform identity cannot open it.
        let other = sim(&dir.path().join("other"));
        let err = KeydRoot::open(&data, other.as_ref()).unwrap_err();
        assert!(
            matches!(err, KeydError::RootSealedElsewhere { .. }),
            "{err}"
        );

        let secrets: Vec<_> = ops.iter().map(|(sk, _)| sk.clone()).collect();
        let one = open_shares(root.instance_id(), &shares[..1], &secrets).unwrap();
        let err = KeydRoot::recover(&data, other.as_ref(), &one).unwrap_err();
        assert!(err.to_string().contains("share"), "{err}");
        assert!(KeydRoot::open(&data, other.as_ref()).is_err());

        let two = open_shares(root.instance_id(), &shares[1..], &secrets).unwrap();
        let recovered = KeydRoot::recover(&data, other.as_ref(), &two).unwrap();
        let key_b = recovered
            .platform(other.clone())
            .sealing_key("x")
            .unwrap()
            .expose()
            .to_vec();
        assert_eq!(key_a, key_b, "derived keys survive recovery");
        KeydRoot::open(&data, other.as_ref()).unwrap();
        assert!(KeydRoot::open(&data, platform.as_ref()).is_err());
    }
}

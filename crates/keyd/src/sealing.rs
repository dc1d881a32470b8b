//! keyd's sealing keys: per keyring, the HPKE (X25519) key pairs that sealed values
//! (`coffer.v1.…`, see `coffer_sealed`) are sealed to.
//!
//! `<data-dir>/keyrings/<name>/sealing-keys.json` holds, per key, its id, public key, creation
//! time and the 32-byte private key sealed with keyd's root-derived sealing key (purpose
//! [`SEAL_PURPOSE`]), the AAD naming the keyring and the key id, so a key cannot be moved to
//! another keyring or swapped for another key. The newest key is the primary, the one clients
//! seal to; older keys keep opening values until they are retired, which deletes the private
//! key and keeps its id in `retired` so callers are told "retired" rather than "unknown".
//! The whole file (all but its `mac`) is authenticated with HMAC-SHA256 under the root-derived
//! key of purpose [`MAC_PURPOSE`], so which key is primary and which are retired cannot be
//! changed outside keyd either. Writers take `sealing-keys.lock` and replace the file atomically.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use coffer_keystore::file::{mac_tag, mac_verifies};
use coffer_keystore::store::FileStamp;
use coffer_platform::{durable, Platform, PlatformError};
use coffer_sealed::bundle::{timestamp, BundleBody, BundleKey, BUNDLE_FORMAT};
use coffer_sealed::SealingKeyPair;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::config::validate_keyring_name;
use crate::keyrings::keyring_dir;
use crate::root::now_rfc3339;
use crate::KeydError;

/// The sealing-key file's name inside a keyring directory.
pub const SEALING_KEYS_FILE: &str = "sealing-keys.json";
/// The lock file that serialises writers of the sealing-key file.
const LOCK_FILE: &str = "sealing-keys.lock";
/// The file format this build writes and reads.
const FORMAT: u32 = 1;
/// The sealing-key purpose (of keyd's root-derived platform) that seals the private keys.
pub const SEAL_PURPOSE: &str = "coffer-keyd/sealing-keys/v1";
/// The sealing-key purpose (of keyd's root-derived platform) whose key MACs the whole file.
pub const MAC_PURPOSE: &str = "coffer-keyd/sealing-keys-mac/v1";
/// Largest file accepted: thousands of keys fit in far less.
const MAX_FILE_LEN: u64 = 1 << 20;

/// Why the sealing keys of a keyring cannot be read, used or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealingKeyError {
    /// The keyring has no sealing key yet.
    #[error("keyring {keyring} has no sealing key; run coffer keyd sealing-key rotate --keyring {keyring}")]
    Missing {
        /// The keyring.
        keyring: String,
    },
    /// The file was written by a newer coffer.
    #[error("{}: format {found} is newer than this build reads (format {supported}); upgrade coffer", path.display())]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The format it has.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// The file is not a valid sealing-key file.
    #[error("{}: not a valid sealing-key file: {problem}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The file's MAC does not verify: it was edited, or written under another keyd root.
    #[error("{}: the sealing-key file was modified outside keyd (its MAC does not verify under this keyd's root); restore it from a backup of the data directory, or recover keyd (coffer keyd recover) if this data directory came from another keyd", path.display())]
    Tampered {
        /// The file.
        path: PathBuf,
    },
    /// A private key does not unseal here.
    #[error("{}: sealing key {key_id} does not unseal: it was sealed for another keyring or under another keyd root, or the file was altered", path.display())]
    Unseal {
        /// The file.
        path: PathBuf,
        /// The key.
        key_id: String,
    },
    /// Retiring the primary key was asked.
    #[error("sealing key {key_id} is the primary of keyring {keyring}: rotate first (coffer keyd sealing-key rotate --keyring {keyring}), reseal the values sealed to it, then retire it")]
    RetirePrimary {
        /// The keyring.
        keyring: String,
        /// The key.
        key_id: String,
    },
    /// The key id is not in the keyring.
    #[error("keyring {keyring} has no sealing key {key_id} (coffer keyd sealing-key list shows its keys)")]
    UnknownKey {
        /// The keyring.
        keyring: String,
        /// The key asked for.
        key_id: String,
    },
    /// The key was retired already.
    #[error("sealing key {key_id} of keyring {keyring} was retired already")]
    AlreadyRetired {
        /// The keyring.
        keyring: String,
        /// The key.
        key_id: String,
    },
    /// A file operation failed.
    #[error("{context} {}: {source}", path.display())]
    Io {
        /// What was being done.
        context: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The platform failed (sealing, randomness).
    #[error("platform: {0}")]
    Platform(#[from] PlatformError),
}

/// `sealing-keys.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SealingFile {
    format: u32,
    /// The keyring the keys belong to (also bound into every sealed private key).
    keyring: String,
    /// The platform kind whose (root-derived) sealing key protects the private keys.
    platform: String,
    /// Incremented on every change.
    generation: u64,
    /// The id of the key to seal to.
    primary: String,
    /// Usable keys, oldest first.
    keys: Vec<StoredKey>,
    /// Retired keys: their private keys are gone.
    #[serde(default)]
    retired: Vec<RetiredKey>,
    /// Hex HMAC-SHA256 of [`mac_input`] under [`MAC_PURPOSE`]; empty only while it is computed
    /// or checked, so the MAC input is the file without it. Missing means unauthenticated.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    mac: String,
}

/// Only the format, read first so that a newer file gets "upgrade" rather than a parse error.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredKey {
    id: String,
    /// base64url (no padding) of the X25519 public key.
    public_key: String,
    /// RFC 3339.
    created: String,
    /// base64 of the private key sealed with [`SEAL_PURPOSE`], AAD [`key_aad`].
    sealed_private: String,
}

/// A retired sealing key: its id stays known so callers are told what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetiredKey {
    /// The key id.
    pub id: String,
    /// When it was created, RFC 3339.
    pub created: String,
    /// When it was retired, RFC 3339.
    pub retired: String,
}

/// Public facts about one usable sealing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealingKeyInfo {
    /// The key id (`sk-…`).
    pub id: String,
    /// When it was created, RFC 3339.
    pub created: String,
    /// Whether it is the key new values are sealed to.
    pub primary: bool,
}

/// Public facts about a keyring's sealing keys: no key material.
#[derive(Debug, Clone)]
pub struct SealingKeysInfo {
    /// The file.
    pub path: PathBuf,
    /// Change counter.
    pub generation: u64,
    /// Usable keys, oldest first.
    pub keys: Vec<SealingKeyInfo>,
    /// Retired keys.
    pub retired: Vec<RetiredKey>,
}

/// One unsealed key.
struct LoadedKey {
    pair: SealingKeyPair,
    created: String,
}

/// A keyring's sealing keys, unsealed (private keys zeroized on drop, never printed).
pub struct SealingKeys {
    keyring: String,
    generation: u64,
    primary: usize,
    keys: Vec<LoadedKey>,
    retired: Vec<RetiredKey>,
}

impl std::fmt::Debug for SealingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealingKeys")
            .field("keyring", &self.keyring)
            .field("generation", &self.generation)
            .field("primary", &self.primary().id())
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// What a key id names in a keyring.
#[derive(Debug)]
pub enum KeyLookup<'a> {
    /// A usable key.
    Usable(&'a SealingKeyPair),
    /// A key that was retired: its private key is gone.
    Retired,
    /// No key of this keyring ever had this id.
    Unknown,
}

impl SealingKeys {
    /// The key new values are sealed to.
    pub fn primary(&self) -> &SealingKeyPair {
        &self.keys[self.primary].pair
    }

    /// The change counter of the file they were loaded from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The key with id `id`.
    pub fn find(&self, id: &str) -> KeyLookup<'_> {
        if let Some(key) = self.keys.iter().find(|k| k.pair.id() == id) {
            KeyLookup::Usable(&key.pair)
        } else if self.retired.iter().any(|r| r.id == id) {
            KeyLookup::Retired
        } else {
            KeyLookup::Unknown
        }
    }

    /// The committed part of a key bundle of these keys, issued by keyd `instance` at `issued`
    /// and valid for `validity`.
    pub fn bundle_body(
        &self,
        instance: &str,
        issued: SystemTime,
        validity: Duration,
    ) -> BundleBody {
        BundleBody {
            format: BUNDLE_FORMAT,
            keyring: self.keyring.clone(),
            instance: instance.to_string(),
            issued: timestamp(issued),
            expires: timestamp(issued + validity),
            keys: self
                .keys
                .iter()
                .enumerate()
                .map(|(i, k)| BundleKey::new(k.pair.public(), k.created.clone(), i == self.primary))
                .collect(),
        }
    }
}

/// What the MAC covers: every field of `file` but the MAC itself, so a field added later is
/// covered too.
fn mac_input(file: &SealingFile) -> Vec<u8> {
    debug_assert!(file.mac.is_empty(), "the MAC input excludes the MAC");
    serde_json::to_vec(file).expect("SealingFile always serialises")
}

/// The AAD of a sealed private key: names the keyring and the key, so neither can be swapped.
fn key_aad(keyring: &str, key_id: &str) -> Vec<u8> {
    format!("coffer-keyd sealing key v1\0{keyring}\0{key_id}").into_bytes()
}

/// The sealing keys of one keyring directory, sealed with keyd's root-derived platform.
#[derive(Debug, Clone)]
pub struct SealingKeyStore {
    keyring: String,
    dir: PathBuf,
    path: PathBuf,
    platform: Arc<dyn Platform>,
}

impl SealingKeyStore {
    /// The sealing keys of keyring `keyring` under `data_dir`; `platform` is keyd's root
    /// platform ([`crate::KeydRoot::platform`]). Nothing is read until asked.
    pub fn new(
        data_dir: &Path,
        keyring: &str,
        platform: Arc<dyn Platform>,
    ) -> Result<SealingKeyStore, KeydError> {
        validate_keyring_name(keyring)?;
        let dir = keyring_dir(data_dir, keyring);
        Ok(SealingKeyStore {
            keyring: keyring.to_string(),
            path: dir.join(SEALING_KEYS_FILE),
            dir,
            platform,
        })
    }

    /// The keyring.
    pub fn keyring(&self) -> &str {
        &self.keyring
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file exists (valid or not).
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// A cheap fingerprint of the file as it is now.
    pub fn stamp(&self) -> Option<FileStamp> {
        FileStamp::of(&self.path)
    }

    fn corrupt(&self, problem: impl Into<String>) -> SealingKeyError {
        SealingKeyError::Corrupt {
            path: self.path.clone(),
            problem: problem.into(),
        }
    }

    /// Reads the file's bytes; `None` if there is none.
    fn read_bytes(&self) -> Result<Option<Vec<u8>>, SealingKeyError> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(SealingKeyError::Io {
                    context: "reading",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut bytes = Vec::new();
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| SealingKeyError::Io {
                context: "reading",
                path: self.path.clone(),
                source,
            })?;
        Ok(Some(bytes))
    }

    /// Reads the file; `None` if there is none.
    fn read(&self) -> Result<Option<SealingFile>, SealingKeyError> {
        self.read_bytes()?.map(|b| self.decode(&b)).transpose()
    }

    /// Parses, authenticates and checks the bytes of a sealing-key file.
    fn decode(&self, bytes: &[u8]) -> Result<SealingFile, SealingKeyError> {
        if bytes.len() as u64 > MAX_FILE_LEN {
            return Err(self.corrupt(format!("it is larger than {MAX_FILE_LEN} bytes")));
        }
        let format: FormatOnly = serde_json::from_slice(bytes)
            .map_err(|e| self.corrupt(format!("no format version: {e}")))?;
        if format.format > FORMAT {
            return Err(SealingKeyError::NewerFormat {
                path: self.path.clone(),
                found: format.format,
                supported: FORMAT,
            });
        }
        if format.format != FORMAT {
            return Err(self.corrupt(format!("format {} does not exist", format.format)));
        }
        let mut file: SealingFile =
            serde_json::from_slice(bytes).map_err(|e| self.corrupt(e.to_string()))?;
        // Checked before anything in the file is trusted, validation included.
        let tag = hex::decode(std::mem::take(&mut file.mac)).unwrap_or_default();
        if !mac_verifies(self.mac_key()?.expose(), &mac_input(&file), &tag) {
            return Err(SealingKeyError::Tampered {
                path: self.path.clone(),
            });
        }
        self.validate(&file)?;
        Ok(file)
    }

    fn mac_key(&self) -> Result<coffer_platform::SealingKey, SealingKeyError> {
        Ok(self.platform.sealing_key(MAC_PURPOSE)?)
    }

    fn validate(&self, file: &SealingFile) -> Result<(), SealingKeyError> {
        if file.keyring != self.keyring {
            return Err(self.corrupt(format!(
                "it belongs to keyring {:?}, not {:?}",
                file.keyring, self.keyring
            )));
        }
        let ours = self.platform.kind().name();
        if file.platform != ours {
            return Err(self.corrupt(format!(
                "it was sealed by the {} platform but this run uses {ours}",
                file.platform
            )));
        }
        if file.keys.is_empty() {
            return Err(self.corrupt("it holds no usable key"));
        }
        let mut seen = std::collections::HashSet::new();
        for id in file
            .keys
            .iter()
            .map(|k| &k.id)
            .chain(file.retired.iter().map(|r| &r.id))
        {
            if !seen.insert(id.as_str()) {
                return Err(self.corrupt(format!("key {id} appears twice")));
            }
        }
        if !file.keys.iter().any(|k| k.id == file.primary) {
            return Err(self.corrupt(format!(
                "the primary {} is not among its usable keys",
                file.primary
            )));
        }
        Ok(())
    }

    /// Authenticates `file` (read with its MAC taken out, or new): the bytes to store.
    fn encode(&self, file: &SealingFile) -> Result<Vec<u8>, SealingKeyError> {
        let signed = SealingFile {
            mac: hex::encode(mac_tag(self.mac_key()?.expose(), &mac_input(file))),
            ..file.clone()
        };
        Ok(serde_json::to_vec_pretty(&signed).expect("SealingFile always serialises"))
    }

    /// Authenticates `file` (read with its MAC taken out, or new) and replaces the file with it.
    #[cfg(test)]
    fn write(&self, file: &SealingFile) -> Result<(), SealingKeyError> {
        self.write_bytes(&self.encode(file)?)
    }

    fn write_bytes(&self, bytes: &[u8]) -> Result<(), SealingKeyError> {
        durable::write_atomic(&self.path, bytes, 0o600).map_err(|source| SealingKeyError::Io {
            context: "writing",
            path: self.path.clone(),
            source,
        })
    }

    /// Reads the file without unsealing anything.
    pub fn info(&self) -> Result<SealingKeysInfo, SealingKeyError> {
        let file = self.read()?.ok_or_else(|| self.missing())?;
        Ok(self.info_of(&file))
    }

    /// Describes sealing-key file `bytes` without unsealing anything.
    pub fn info_bytes(&self, bytes: &[u8]) -> Result<SealingKeysInfo, SealingKeyError> {
        Ok(self.info_of(&self.decode(bytes)?))
    }

    fn missing(&self) -> SealingKeyError {
        SealingKeyError::Missing {
            keyring: self.keyring.clone(),
        }
    }

    fn info_of(&self, file: &SealingFile) -> SealingKeysInfo {
        SealingKeysInfo {
            path: self.path.clone(),
            generation: file.generation,
            keys: file
                .keys
                .iter()
                .map(|k| SealingKeyInfo {
                    id: k.id.clone(),
                    created: k.created.clone(),
                    primary: k.id == file.primary,
                })
                .collect(),
            retired: file.retired.clone(),
        }
    }

    /// Reads the file and unseals every usable private key, checking each against its id and
    /// public key.
    pub fn load(&self) -> Result<SealingKeys, SealingKeyError> {
        let bytes = self.read_bytes()?.ok_or_else(|| self.missing())?;
        self.load_bytes(&bytes)
    }

    /// Authenticates sealing-key file `bytes` and unseals every usable private key, checking
    /// each against its id and public key.
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<SealingKeys, SealingKeyError> {
        let file = self.decode(bytes)?;
        let sealer = self.platform.sealing_key(SEAL_PURPOSE)?;
        let mut keys = Vec::with_capacity(file.keys.len());
        for stored in &file.keys {
            let unseal = || SealingKeyError::Unseal {
                path: self.path.clone(),
                key_id: stored.id.clone(),
            };
            let sealed = B64.decode(&stored.sealed_private).map_err(|_| unseal())?;
            let plain = sealer
                .unseal(&key_aad(&self.keyring, &stored.id), &sealed)
                .map_err(|_| unseal())?;
            let private: Zeroizing<[u8; 32]> =
                Zeroizing::new(plain.as_slice().try_into().map_err(|_| unseal())?);
            let pair = SealingKeyPair::from_private(private);
            let public = B64URL.decode(&stored.public_key).ok();
            if pair.id() != stored.id || public.as_deref() != Some(&pair.public().bytes()[..]) {
                return Err(self.corrupt(format!(
                    "sealing key {} does not match its id or public key",
                    stored.id
                )));
            }
            keys.push(LoadedKey {
                pair,
                created: stored.created.clone(),
            });
        }
        let primary = keys
            .iter()
            .position(|k| k.pair.id() == file.primary)
            .ok_or_else(|| self.corrupt("no primary key"))?;
        Ok(SealingKeys {
            keyring: self.keyring.clone(),
            generation: file.generation,
            primary,
            keys,
            retired: file.retired,
        })
    }

    /// Generates a new key pair, makes it the primary and returns it; the first call creates
    /// the file. Older keys keep opening values.
    pub fn rotate(&self) -> Result<SealingKeyInfo, SealingKeyError> {
        let _lock = self.lock()?;
        let (bytes, info) = self.rotate_bytes(self.read_bytes()?.as_deref())?;
        self.write_bytes(&bytes)?;
        tracing::info!(keyring = %self.keyring, key_id = %info.id, "new primary sealing key");
        Ok(info)
    }

    /// Sealing-key file `current` (`None`: the keyring has none yet) with a new primary key:
    /// the bytes to store in its place (only if `current` is still what is stored) and the key.
    pub fn rotate_bytes(
        &self,
        current: Option<&[u8]>,
    ) -> Result<(Vec<u8>, SealingKeyInfo), SealingKeyError> {
        let mut file = match current {
            Some(bytes) => self.decode(bytes)?,
            None => SealingFile {
                format: FORMAT,
                keyring: self.keyring.clone(),
                platform: self.platform.kind().name().to_string(),
                generation: 0,
                primary: String::new(),
                keys: Vec::new(),
                retired: Vec::new(),
                mac: String::new(),
            },
        };
        let pair = SealingKeyPair::generate()?;
        let sealed = self
            .platform
            .sealing_key(SEAL_PURPOSE)?
            .seal(&key_aad(&self.keyring, pair.id()), pair.private_bytes())?;
        let key = StoredKey {
            id: pair.id().to_string(),
            public_key: B64URL.encode(pair.public().bytes()),
            created: now_rfc3339(),
            sealed_private: B64.encode(sealed),
        };
        if file.keys.iter().any(|k| k.id == key.id) || file.retired.iter().any(|r| r.id == key.id) {
            // 64 bits of a fresh random key's hash: only a broken random generator gets here.
            return Err(self.corrupt(format!("generated key id {} is already taken", key.id)));
        }
        file.primary = key.id.clone();
        let info = SealingKeyInfo {
            id: key.id.clone(),
            created: key.created.clone(),
            primary: true,
        };
        file.keys.push(key);
        file.generation += 1;
        Ok((self.encode(&file)?, info))
    }

    /// Deletes the private key of a non-primary key for good, keeping its id in `retired`.
    /// Values sealed to it can no longer be opened.
    pub fn retire(&self, key_id: &str) -> Result<RetiredKey, SealingKeyError> {
        let _lock = self.lock()?;
        let bytes = self.read_bytes()?.ok_or_else(|| self.missing())?;
        let (bytes, retired) = self.retire_bytes(&bytes, key_id)?;
        self.write_bytes(&bytes)?;
        tracing::warn!(keyring = %self.keyring, key_id = %retired.id, "retired sealing key: values sealed to it can no longer be opened");
        Ok(retired)
    }

    /// Sealing-key file `current` with key `key_id` retired: the bytes to store in its place
    /// (only if `current` is still what is stored) and the retired key.
    pub fn retire_bytes(
        &self,
        current: &[u8],
        key_id: &str,
    ) -> Result<(Vec<u8>, RetiredKey), SealingKeyError> {
        let mut file = self.decode(current)?;
        if file.primary == key_id {
            return Err(SealingKeyError::RetirePrimary {
                keyring: self.keyring.clone(),
                key_id: key_id.to_string(),
            });
        }
        if file.retired.iter().any(|r| r.id == key_id) {
            return Err(SealingKeyError::AlreadyRetired {
                keyring: self.keyring.clone(),
                key_id: key_id.to_string(),
            });
        }
        let index = file
            .keys
            .iter()
            .position(|k| k.id == key_id)
            .ok_or_else(|| SealingKeyError::UnknownKey {
                keyring: self.keyring.clone(),
                key_id: key_id.chars().take(80).collect(),
            })?;
        let removed = file.keys.remove(index);
        let retired = RetiredKey {
            id: removed.id,
            created: removed.created,
            retired: now_rfc3339(),
        };
        file.retired.push(retired.clone());
        file.generation += 1;
        Ok((self.encode(&file)?, retired))
    }

    /// Takes the writer lock, released when the returned file is dropped; see [`lock_dir`].
    fn lock(&self) -> Result<File, SealingKeyError> {
        lock_dir(&self.dir)
    }
}

/// Takes the sealing-key writer lock of keyring directory `dir` and removes the temporaries
/// killed writers left: each holds sealed private keys, retired ones included.
fn lock_dir(dir: &Path) -> Result<File, SealingKeyError> {
    coffer_platform::sim::create_private_dir(dir)?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = durable::lock_exclusive(&lock_path).map_err(|source| SealingKeyError::Io {
        context: "locking",
        path: lock_path,
        source,
    })?;
    let path = dir.join(SEALING_KEYS_FILE);
    let removed = durable::remove_stale_temps(&path).map_err(|source| SealingKeyError::Io {
        context: "removing stale temporary files of",
        path: path.clone(),
        source,
    })?;
    for tmp in &removed {
        tracing::warn!(path = %tmp.display(), "removed a temporary sealing-key file left by a writer that was killed");
    }
    Ok(lock)
}

/// Removes the sealing-key temporaries killed writers left in keyring directory `dir`, under
/// its lock. A directory without sealing keys is left alone.
pub(crate) fn remove_stale_temps(dir: &Path) -> Result<(), SealingKeyError> {
    if !dir.join(LOCK_FILE).exists() {
        return Ok(());
    }
    lock_dir(dir).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_platform::sim::SimPlatform;

    fn store(data: &Path, keyring: &str) -> SealingKeyStore {
        let platform: Arc<dyn Platform> = Arc::new(SimPlatform::open_or_create(data).unwrap());
        SealingKeyStore::new(data, keyring, platform).unwrap()
    }

    fn json(s: &SealingKeyStore) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(s.path()).unwrap()).unwrap()
    }

    /// Edits the file as someone with write access to keyd's disk can: the MAC stays as it was.
    fn edit_on_disk(s: &SealingKeyStore, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut file = json(s);
        edit(&mut file);
        std::fs::write(s.path(), serde_json::to_vec_pretty(&file).unwrap()).unwrap();
    }

    /// Edits the file and MACs it again, as only keyd's root can: reaches the checks behind
    /// the MAC.
    fn edit_and_resign(s: &SealingKeyStore, edit: impl FnOnce(&mut serde_json::Value)) {
        let mut file = json(s);
        edit(&mut file);
        file.as_object_mut().unwrap().remove("mac");
        s.write(&serde_json::from_value(file).unwrap()).unwrap();
    }

    fn assert_tampered(s: &SealingKeyStore, what: &str) {
        let err = s.load().unwrap_err();
        assert!(
            matches!(err, SealingKeyError::Tampered { .. }),
            "{what}: {err}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&s.path().display().to_string())
                && text.contains("modified outside keyd")
                && text.contains("restore it from a backup"),
            "{what}: {text}"
        );
        assert!(
            matches!(s.info(), Err(SealingKeyError::Tampered { .. })),
            "{what}"
        );
        let before = std::fs::read(s.path()).unwrap();
        assert!(
            matches!(s.rotate(), Err(SealingKeyError::Tampered { .. })),
            "{what}"
        );
        assert_eq!(
            std::fs::read(s.path()).unwrap(),
            before,
            "{what}: a refused file was rewritten"
        );
    }

    type Edit<'a> = dyn Fn(&mut serde_json::Value) + 'a;

    #[test]
    fn edits_outside_keyd_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "apps");
        let oldest = s.rotate().unwrap();
        let older = s.rotate().unwrap();
        let primary = s.rotate().unwrap();
        s.retire(&oldest.id).unwrap();
        let valid = std::fs::read(s.path()).unwrap();
        let mac = json(&s)["mac"].as_str().unwrap().to_string();
        assert!(
            mac.len() == 64 && mac.bytes().all(|b| b.is_ascii_hexdigit()),
            "{mac}"
        );
        let edits: [(&str, Box<Edit<'_>>); 7] = [
            (
                "primary id",
                Box::new(|f| f["primary"] = older.id.clone().into()),
            ),
            (
                "retired list emptied",
                Box::new(|f| f["retired"] = serde_json::json!([])),
            ),
            (
                "retired key's dates",
                Box::new(|f| f["retired"][0]["retired"] = "2020-01-01T00:00:00Z".into()),
            ),
            ("change counter", Box::new(|f| f["generation"] = 99.into())),
            ("keyring name", Box::new(|f| f["keyring"] = "other".into())),
            (
                "a key dropped",
                Box::new(|f| {
                    f["keys"].as_array_mut().unwrap().remove(0);
                }),
            ),
            (
                "MAC removed",
                Box::new(|f| {
                    f.as_object_mut().unwrap().remove("mac");
                }),
            ),
        ];
        for (what, edit) in &edits {
            edit_on_disk(&s, edit);
            assert_tampered(&s, what);
            std::fs::write(s.path(), &valid).unwrap();
        }
        // The valid file, untouched, still loads and can still change.
        let keys = s.load().unwrap();
        assert_eq!(keys.primary().id(), primary.id);
        assert_eq!(keys.generation(), 4);
        assert!(matches!(keys.find(&oldest.id), KeyLookup::Retired));
        s.retire(&older.id).unwrap();
        assert_eq!(s.load().unwrap().generation(), 5);
    }

    #[test]
    fn a_file_from_another_keyd_root_is_refused() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let theirs = store(one.path(), "apps");
        theirs.rotate().unwrap();
        let ours = store(two.path(), "apps");
        std::fs::create_dir_all(keyring_dir(two.path(), "apps")).unwrap();
        std::fs::copy(theirs.path(), ours.path()).unwrap();
        assert_tampered(&ours, "another root");
    }

    #[test]
    fn rotate_load_and_retire() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "apps");
        assert!(matches!(s.load(), Err(SealingKeyError::Missing { .. })));
        let err = s.info().unwrap_err().to_string();
        assert!(
            err.contains("coffer keyd sealing-key rotate --keyring apps"),
            "{err}"
        );
        let first = s.rotate().unwrap();
        let second = s.rotate().unwrap();
        assert_ne!(first.id, second.id);
        let keys = s.load().unwrap();
        assert_eq!(keys.primary().id(), second.id);
        assert!(matches!(keys.find(&first.id), KeyLookup::Usable(_)));
        assert!(matches!(
            keys.find("sk-0000000000000000"),
            KeyLookup::Unknown
        ));
        assert!(!format!("{keys:?}").contains(&hex::encode(keys.primary().private_bytes())));
        let json = std::fs::read_to_string(s.path()).unwrap();
        assert!(!json.contains(&B64.encode(keys.primary().private_bytes())));
        assert!(!json.contains(&B64URL.encode(keys.primary().private_bytes())));

        let err = s.retire(&second.id).unwrap_err();
        assert!(
            matches!(err, SealingKeyError::RetirePrimary { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("rotate first"), "{err}");
        s.retire(&first.id).unwrap();
        let err = s.retire(&first.id).unwrap_err();
        assert!(
            matches!(err, SealingKeyError::AlreadyRetired { .. }),
            "{err}"
        );
        let err = s.retire("sk-0000000000000000").unwrap_err();
        assert!(matches!(err, SealingKeyError::UnknownKey { .. }), "{err}");
        let keys = s.load().unwrap();
        assert!(matches!(keys.find(&first.id), KeyLookup::Retired));
        let info = s.info().unwrap();
        assert_eq!(info.keys.len(), 1);
        assert_eq!(info.retired[0].id, first.id);
        assert_eq!(info.generation, 3);
        let json = std::fs::read_to_string(s.path()).unwrap();
        let file: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(file["keys"].as_array().unwrap().len(), 1, "{json}");
    }

    #[test]
    fn byte_level_changes_never_touch_files() {
        let dir = tempfile::tempdir().unwrap();
        let platform: Arc<dyn Platform> =
            Arc::new(SimPlatform::open_or_create(dir.path()).unwrap());
        let s = SealingKeyStore::new(Path::new("etcd:/coffer/keyd"), "apps", platform).unwrap();
        let (v1, first) = s.rotate_bytes(None).unwrap();
        let (v2, second) = s.rotate_bytes(Some(&v1)).unwrap();
        assert_eq!(s.load_bytes(&v2).unwrap().primary().id(), second.id);
        let (v3, retired) = s.retire_bytes(&v2, &first.id).unwrap();
        assert_eq!(retired.id, first.id);
        let info = s.info_bytes(&v3).unwrap();
        assert_eq!((info.generation, info.keys.len()), (3, 1));
        assert!(!s.exists(), "a byte-level change wrote a file");
        let mut edited = v3.clone();
        let at = edited.iter().position(|b| *b == b'3').unwrap();
        edited[at] = b'4';
        let err = s.load_bytes(&edited).unwrap_err().to_string();
        assert!(
            err.contains("etcd:/coffer/keyd/keyrings/apps/sealing-keys.json"),
            "{err}"
        );
    }

    #[test]
    fn writes_are_atomic_and_leave_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "apps");
        s.rotate().unwrap();
        let keyring_dir = keyring_dir(dir.path(), "apps");
        // What a writer killed between its temporary and the rename leaves behind.
        let stale = keyring_dir.join(".sealing-keys.json.tmp-0123456789abcdef");
        std::fs::write(&stale, b"sealed private keys").unwrap();
        let before = s.stamp();
        s.rotate().unwrap();
        assert!(!stale.exists(), "a writer left a stale temporary");
        assert_ne!(before, s.stamp(), "an atomic replace changes the stamp");
        std::fs::write(&stale, b"sealed private keys").unwrap();
        remove_stale_temps(&keyring_dir).unwrap();
        assert!(!stale.exists());
        let names: Vec<String> = std::fs::read_dir(&keyring_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn newer_format_is_refused_with_upgrade_advice() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "apps");
        s.rotate().unwrap();
        let mut file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(s.path()).unwrap()).unwrap();
        file["format"] = 2.into();
        file["new_field"] = "from the future".into();
        std::fs::write(s.path(), serde_json::to_vec(&file).unwrap()).unwrap();
        let err = s.load().unwrap_err();
        assert!(
            matches!(err, SealingKeyError::NewerFormat { found: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("upgrade coffer"), "{err}");
        assert!(s.rotate().is_err(), "a newer file must not be overwritten");
    }

    #[test]
    fn keys_cannot_move_to_another_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let a = store(dir.path(), "ring-a");
        a.rotate().unwrap();
        let b = store(dir.path(), "ring-b");
        std::fs::create_dir_all(keyring_dir(dir.path(), "ring-b")).unwrap();
        let text = std::fs::read_to_string(a.path()).unwrap();
        // Copied as is: the file says whose it is.
        std::fs::write(b.path(), &text).unwrap();
        let err = b.load().unwrap_err();
        assert!(err.to_string().contains("belongs to keyring"), "{err}");
        // Relabelled: the MAC covers the keyring name.
        edit_on_disk(&b, |f| f["keyring"] = "ring-b".into());
        let err = b.load().unwrap_err();
        assert!(matches!(err, SealingKeyError::Tampered { .. }), "{err}");
        // Relabelled and MACed again: the AAD of each sealed private key still names ring-a.
        edit_and_resign(&b, |f| f["keyring"] = "ring-b".into());
        let err = b.load().unwrap_err();
        assert!(matches!(err, SealingKeyError::Unseal { .. }), "{err}");
    }

    #[test]
    fn a_swapped_public_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), "apps");
        s.rotate().unwrap();
        let swap = |f: &mut serde_json::Value| {
            f["keys"][0]["public_key"] = B64URL.encode([9u8; 32]).into();
        };
        edit_on_disk(&s, swap);
        assert!(matches!(s.load(), Err(SealingKeyError::Tampered { .. })));
        // Behind the MAC, the key is checked against its public key too.
        edit_and_resign(&s, swap);
        let err = s.load().unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
    }
}

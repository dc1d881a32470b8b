//! The keystore directory: the sealed keystore file plus a lock file, so a CLI (`coffer keys
//! rotate`) and a running daemon never corrupt each other's updates.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use coffer_platform::{durable, fill_random, Platform, SealingKey};
use zeroize::Zeroizing;

use crate::file::{self, Contents, RetiredKek, SealedKek};
use crate::{Kek, Keyring, KeystoreError};

/// Name of the keystore file inside the state directory.
pub const KEYSTORE_FILE: &str = "keystore";
/// Name of the lock file that serialises writers.
pub const LOCK_FILE: &str = "keystore.lock";

const KEK_SEAL_PURPOSE: &str = "coffer keystore kek v1";
const MAC_PURPOSE: &str = "coffer keystore mac v1";

/// Whether a KEK encrypts or only decrypts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Encrypt uses it; Status reports it.
    Primary,
    /// Decrypts existing ciphertexts only.
    Active,
}

/// Public facts about one KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The KMS key_id.
    pub id: String,
    /// Serial number within the keystore.
    pub serial: u64,
    /// Creation time, RFC 3339.
    pub created: String,
    /// Primary or not.
    pub state: KeyState,
}

/// Public facts about a keystore: no key material.
#[derive(Debug, Clone)]
pub struct KeystoreInfo {
    /// The file.
    pub path: PathBuf,
    /// The keystore's random id.
    pub keystore_id: String,
    /// Platform kind that sealed it.
    pub platform: String,
    /// Change counter.
    pub generation: u64,
    /// Usable KEKs, oldest first.
    pub keys: Vec<KeyInfo>,
    /// Retired KEK ids and when they were retired.
    pub retired: Vec<RetiredKek>,
}

impl KeystoreInfo {
    /// The primary KEK.
    pub fn primary(&self) -> Option<&KeyInfo> {
        self.keys.iter().find(|k| k.state == KeyState::Primary)
    }
}

/// Identifies one version of the keystore file, to notice changes cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl FileStamp {
    /// The stamp of the file at `path` now, or `None` if it cannot be read. An atomic rewrite
    /// (a new inode) always changes it.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = fs::metadata(path).ok()?;
        Some(FileStamp {
            ino: m.ino(),
            len: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        })
    }
}

/// A keystore directory opened with a platform.
#[derive(Debug, Clone)]
pub struct Keystore {
    dir: PathBuf,
    path: PathBuf,
    platform: Arc<dyn Platform>,
}

/// Checks that a KEK id can be carried in a ciphertext and logged safely.
pub fn validate_key_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > crate::ciphertext::MAX_KEY_ID_LEN {
        return Err(format!("KEK id {id:?} must be 1 to 255 bytes"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "KEK id {id:?} may only hold ASCII letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn random_hex(bytes: usize) -> Result<String, KeystoreError> {
    let mut buf = vec![0u8; bytes];
    fill_random(&mut buf)?;
    Ok(hex::encode(buf))
}

fn kek_aad(keystore_id: &str, key_id: &str) -> Vec<u8> {
    format!("coffer kek v1\0{keystore_id}\0{key_id}").into_bytes()
}

impl Keystore {
    /// A keystore in `dir`, sealed with `platform`. Nothing is read until asked.
    pub fn new(dir: impl Into<PathBuf>, platform: Arc<dyn Platform>) -> Self {
        let dir = dir.into();
        Keystore {
            path: dir.join(KEYSTORE_FILE),
            dir,
            platform,
        }
    }

    /// The keystore file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True if a keystore file exists (valid or not).
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// A cheap fingerprint of the current file, or `None` if it cannot be read.
    pub fn stamp(&self) -> Option<FileStamp> {
        FileStamp::of(&self.path)
    }

    fn mac_key(&self) -> Result<SealingKey, KeystoreError> {
        Ok(self.platform.sealing_key(MAC_PURPOSE)?)
    }

    /// Takes the writer lock; see [`lock_dir`].
    fn lock(&self) -> Result<File, KeystoreError> {
        lock_dir(&self.dir)
    }

    /// Removes the temporary files that killed writers left in the keystore directory; see
    /// [`remove_stale_temps`].
    pub fn remove_stale_temps(&self) -> Result<(), KeystoreError> {
        remove_stale_temps(&self.dir)
    }

    fn read_bytes(&self) -> Result<Vec<u8>, KeystoreError> {
        match read_bounded(&self.path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(KeystoreError::NotInitialized {
                path: self.path.clone(),
            }),
            Err(e) => Err(KeystoreError::io("reading keystore", &self.path, e)),
        }
    }

    fn decode_contents(&self, bytes: &[u8]) -> Result<Contents, KeystoreError> {
        let contents = file::decode(&self.path, bytes, self.mac_key()?.expose())?;
        let ours = self.platform.kind().name();
        if contents.platform != ours {
            return Err(KeystoreError::Corrupt {
                path: self.path.clone(),
                problem: format!(
                    "it was sealed by the {} platform but this run uses {ours}",
                    contents.platform
                ),
            });
        }
        Ok(contents)
    }

    fn encode_contents(&self, contents: &Contents) -> Result<Vec<u8>, KeystoreError> {
        Ok(file::encode(contents, self.mac_key()?.expose()))
    }

    fn write_bytes(&self, bytes: &[u8], new_file: bool) -> Result<(), KeystoreError> {
        let written = if new_file {
            durable::write_new_atomic(&self.path, bytes, 0o600)
        } else {
            durable::write_atomic(&self.path, bytes, 0o600)
        };
        written.map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => KeystoreError::AlreadyInitialized {
                path: self.path.clone(),
            },
            _ => KeystoreError::io("writing keystore", &self.path, e),
        })
    }

    fn new_sealed_kek(&self, contents: &mut Contents) -> Result<SealedKek, KeystoreError> {
        let serial = contents.next_serial;
        // The random part keeps ids unique even if an old backup of the keystore is restored
        // and its serial counter runs again.
        let id = format!("coffer-{serial:04}-{}", random_hex(8)?);
        let mut raw = Zeroizing::new([0u8; 32]);
        fill_random(&mut raw[..])?;
        let sealer = self.platform.sealing_key(KEK_SEAL_PURPOSE)?;
        let sealed = sealer.seal(&kek_aad(&contents.keystore_id, &id), &raw[..])?;
        contents.next_serial += 1;
        Ok(SealedKek {
            id,
            serial,
            created: now_rfc3339(),
            sealed: B64.encode(sealed),
        })
    }

    /// Creates a keystore with one primary KEK. Refuses to replace an existing one.
    pub fn init(&self) -> Result<KeystoreInfo, KeystoreError> {
        let _lock = self.lock()?;
        if self.exists() {
            return Err(KeystoreError::AlreadyInitialized {
                path: self.path.clone(),
            });
        }
        let (bytes, info) = self.init_bytes()?;
        self.write_bytes(&bytes, true)?;
        let key_id = info.primary().map(|k| k.id.as_str()).unwrap_or_default();
        tracing::info!(target: "coffer::audit", event = "keystore_init", path = %self.path.display(), key_id = %key_id, "created keystore with its first KEK");
        Ok(info)
    }

    /// A new keystore with one primary KEK, as the bytes to store and its description. The
    /// caller stores them where the keystore lives (a file, an etcd record), never over an
    /// existing keystore.
    pub fn init_bytes(&self) -> Result<(Vec<u8>, KeystoreInfo), KeystoreError> {
        let mut contents = Contents {
            keystore_id: random_hex(8)?,
            platform: self.platform.kind().name().to_string(),
            generation: 1,
            next_serial: 1,
            primary: String::new(),
            keys: Vec::new(),
            retired: Vec::new(),
        };
        let kek = self.new_sealed_kek(&mut contents)?;
        contents.primary = kek.id.clone();
        contents.keys.push(kek);
        Ok((self.encode_contents(&contents)?, self.info_of(&contents)))
    }

    /// Reads, authenticates and describes the keystore, without unsealing any key.
    pub fn info(&self) -> Result<KeystoreInfo, KeystoreError> {
        self.info_bytes(&self.read_bytes()?)
    }

    /// Authenticates and describes keystore `bytes`, without unsealing any key.
    pub fn info_bytes(&self, bytes: &[u8]) -> Result<KeystoreInfo, KeystoreError> {
        Ok(self.info_of(&self.decode_contents(bytes)?))
    }

    fn info_of(&self, c: &Contents) -> KeystoreInfo {
        KeystoreInfo {
            path: self.path.clone(),
            keystore_id: c.keystore_id.clone(),
            platform: c.platform.clone(),
            generation: c.generation,
            keys: c
                .keys
                .iter()
                .map(|k| KeyInfo {
                    id: k.id.clone(),
                    serial: k.serial,
                    created: k.created.clone(),
                    state: if k.id == c.primary {
                        KeyState::Primary
                    } else {
                        KeyState::Active
                    },
                })
                .collect(),
            retired: c.retired.clone(),
        }
    }

    /// Reads the keystore, unseals every KEK into locked memory and self-tests it.
    pub fn load(&self) -> Result<Keyring, KeystoreError> {
        self.load_bytes(&self.read_bytes()?)
    }

    /// Authenticates keystore `bytes`, unseals every KEK into locked memory and self-tests it.
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Keyring, KeystoreError> {
        let contents = self.decode_contents(bytes)?;
        let sealer = self.platform.sealing_key(KEK_SEAL_PURPOSE)?;
        let mut keks = Vec::with_capacity(contents.keys.len());
        for k in &contents.keys {
            let unseal_err = || KeystoreError::Unseal {
                path: self.path.clone(),
                key_id: k.id.clone(),
            };
            let sealed = B64.decode(&k.sealed).map_err(|_| unseal_err())?;
            let raw = sealer
                .unseal(&kek_aad(&contents.keystore_id, &k.id), &sealed)
                .map_err(|_| unseal_err())?;
            let raw: &[u8; 32] = raw.as_slice().try_into().map_err(|_| unseal_err())?;
            let created = humantime::parse_rfc3339(&k.created).unwrap_or(SystemTime::UNIX_EPOCH);
            keks.push(Kek::from_raw(k.id.clone(), created, raw));
        }
        Keyring::new(keks, &contents.primary, contents.generation)
    }

    /// Loads the keystore, creating it first if there is none. Returns whether it was created.
    pub fn load_or_init(&self) -> Result<(Keyring, bool), KeystoreError> {
        // Best effort: a read-only state directory still serves; its leftovers go once it is
        // writable and a writer runs.
        if let Err(e) = self.remove_stale_temps() {
            tracing::warn!(error = %e, "could not check the keystore directory for temporary files left by killed writers");
        }
        match self.load() {
            Err(KeystoreError::NotInitialized { .. }) => match self.init() {
                Ok(_) => Ok((self.load()?, true)),
                // Another process initialised it between our read and our init: use theirs.
                Err(KeystoreError::AlreadyInitialized { .. }) => Ok((self.load()?, false)),
                Err(e) => Err(e),
            },
            other => other.map(|ring| (ring, false)),
        }
    }

    /// Adds a new KEK and makes it primary. Older KEKs keep decrypting.
    pub fn rotate(&self) -> Result<KeyInfo, KeystoreError> {
        let _lock = self.lock()?;
        let (bytes, primary) = self.rotate_bytes(&self.read_bytes()?)?;
        self.write_bytes(&bytes, false)?;
        tracing::info!(target: "coffer::audit", event = "rotate", key_id = %primary.id, serial = primary.serial, "rotated: new primary KEK");
        Ok(primary)
    }

    /// Keystore `current` with a new primary KEK: the bytes to store in its place (only if
    /// `current` is still what is stored, or a concurrent change is lost) and the new KEK.
    pub fn rotate_bytes(&self, current: &[u8]) -> Result<(Vec<u8>, KeyInfo), KeystoreError> {
        let mut contents = self.decode_contents(current)?;
        let kek = self.new_sealed_kek(&mut contents)?;
        contents.primary = kek.id.clone();
        contents.keys.push(kek);
        contents.generation += 1;
        let primary = self.info_of(&contents).primary().cloned().ok_or_else(|| {
            KeystoreError::UnknownKey {
                key_id: contents.primary.clone(),
            }
        })?;
        Ok((self.encode_contents(&contents)?, primary))
    }

    /// Removes a non-primary KEK for good. Ciphertexts made with it become undecryptable.
    pub fn retire(&self, key_id: &str) -> Result<KeyInfo, KeystoreError> {
        let _lock = self.lock()?;
        let (bytes, removed) = self.retire_bytes(&self.read_bytes()?, key_id)?;
        self.write_bytes(&bytes, false)?;
        tracing::warn!(target: "coffer::audit", event = "retire", key_id = %removed.id, "retired KEK: data encrypted under it can no longer be decrypted");
        Ok(removed)
    }

    /// Keystore `current` without the non-primary KEK `key_id`: the bytes to store in its
    /// place (only if `current` is still what is stored) and the retired KEK.
    pub fn retire_bytes(
        &self,
        current: &[u8],
        key_id: &str,
    ) -> Result<(Vec<u8>, KeyInfo), KeystoreError> {
        let mut contents = self.decode_contents(current)?;
        if contents.primary == key_id {
            return Err(KeystoreError::RetirePrimary {
                key_id: key_id.to_string(),
            });
        }
        let index = contents
            .keys
            .iter()
            .position(|k| k.id == key_id)
            .ok_or_else(|| KeystoreError::UnknownKey {
                key_id: key_id.to_string(),
            })?;
        let removed = contents.keys.remove(index);
        contents.retired.push(RetiredKek {
            id: removed.id.clone(),
            created: removed.created.clone(),
            retired: now_rfc3339(),
        });
        contents.generation += 1;
        Ok((
            self.encode_contents(&contents)?,
            KeyInfo {
                id: removed.id,
                serial: removed.serial,
                created: removed.created,
                state: KeyState::Active,
            },
        ))
    }
}

/// Takes the writer lock of the keystore directory `dir`, released when the returned file is
/// dropped, and removes what killed writers left there: their temporaries are whole keystores,
/// retired KEKs included.
fn lock_dir(dir: &Path) -> Result<File, KeystoreError> {
    coffer_platform::sim::create_private_dir(dir)?;
    let lock_path = dir.join(LOCK_FILE);
    let file = durable::lock_exclusive(&lock_path)
        .map_err(|e| KeystoreError::io("locking", &lock_path, e))?;
    let path = dir.join(KEYSTORE_FILE);
    let removed = durable::remove_stale_temps(&path)
        .map_err(|e| KeystoreError::io("removing stale temporary files of", &path, e))?;
    for tmp in &removed {
        tracing::warn!(path = %tmp.display(), "removed a temporary keystore left by a writer that was killed");
    }
    Ok(file)
}

/// Removes the temporary files that killed writers left in the keystore directory `dir`, under
/// its writer lock so a live writer's is never touched. Every write does this too; call it at
/// start so leftovers do not wait for the next rotation. A missing `dir` is left missing.
pub fn remove_stale_temps(dir: &Path) -> Result<(), KeystoreError> {
    if !dir.exists() {
        return Ok(());
    }
    lock_dir(dir).map(drop)
}

fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let file = File::open(path)?;
    let mut bytes = Vec::new();
    // One byte more than the limit, so an oversize file is seen as such (Corrupt/Truncated).
    file.take((file::MAX_FILE_LEN + 64) as u64)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_platform::sim::SimPlatform;

    fn store(dir: &Path) -> Keystore {
        Keystore::new(dir, Arc::new(SimPlatform::open_or_create(dir).unwrap()))
    }

    #[test]
    fn init_rotate_retire_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(dir.path());
        assert!(matches!(
            ks.load(),
            Err(KeystoreError::NotInitialized { .. })
        ));
        let info = ks.init().unwrap();
        let first = info.primary().unwrap().id.clone();
        assert!(first.starts_with("coffer-0001-"));
        assert!(matches!(
            ks.init(),
            Err(KeystoreError::AlreadyInitialized { .. })
        ));

        let ring1 = ks.load().unwrap();
        let ct1 = ring1.encrypt(b"seed-one").unwrap();
        let second = ks.rotate().unwrap();
        assert!(second.id.starts_with("coffer-0002-"));
        let ring2 = ks.load().unwrap();
        assert_eq!(ring2.primary_id(), second.id);
        assert_eq!(&ring2.decrypt(Some(&first), &ct1).unwrap()[..], b"seed-one");

        assert!(matches!(
            ks.retire(&second.id),
            Err(KeystoreError::RetirePrimary { .. })
        ));
        assert!(matches!(
            ks.retire("nope"),
            Err(KeystoreError::UnknownKey { .. })
        ));
        ks.retire(&first).unwrap();
        let ring3 = ks.load().unwrap();
        assert!(ring3.decrypt(Some(&first), &ct1).is_err());
        let third = ks.rotate().unwrap();
        assert!(
            third.id.starts_with("coffer-0003-"),
            "serial reused: {}",
            third.id
        );
        let info = ks.info().unwrap();
        assert_eq!(info.generation, 4);
        assert_eq!(info.retired.len(), 1);
        assert_eq!(info.keys.len(), 2);
    }

    #[test]
    fn another_identity_cannot_open_and_nothing_is_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(dir.path());
        ks.init().unwrap();
        let before = fs::read(ks.path()).unwrap();
        // Same keystore file, different platform identity (another sim key).
        let other_dir = tempfile::tempdir().unwrap();
        let stranger = Keystore::new(
            dir.path(),
            Arc::new(SimPlatform::open_or_create(other_dir.path()).unwrap()),
        );
        assert!(matches!(
            stranger.load(),
            Err(KeystoreError::Tampered { .. })
        ));
        assert!(matches!(
            stranger.rotate(),
            Err(KeystoreError::Tampered { .. })
        ));
        assert!(matches!(
            stranger.load_or_init(),
            Err(KeystoreError::Tampered { .. })
        ));
        assert_eq!(fs::read(ks.path()).unwrap(), before);
    }

    #[test]
    fn truncated_and_newer_files_are_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(dir.path());
        ks.init().unwrap();
        let good = fs::read(ks.path()).unwrap();
        fs::write(ks.path(), &good[..good.len() / 2]).unwrap();
        let err = ks.load_or_init().unwrap_err();
        assert!(matches!(err, KeystoreError::Truncated { .. }), "{err}");
        assert!(matches!(ks.rotate(), Err(KeystoreError::Truncated { .. })));
        assert_eq!(fs::read(ks.path()).unwrap(), &good[..good.len() / 2]);
        let mut newer = good.clone();
        newer[9] = 9;
        fs::write(ks.path(), &newer).unwrap();
        let err = ks.load().unwrap_err().to_string();
        assert!(
            err.contains("version 9") && err.contains(&ks.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn concurrent_rotations_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(dir.path());
        ks.init().unwrap();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ks = ks.clone();
                std::thread::spawn(move || {
                    for _ in 0..5 {
                        ks.rotate().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let info = ks.info().unwrap();
        assert_eq!(info.keys.len(), 21);
        assert_eq!(info.generation, 21);
        assert_eq!(ks.load().unwrap().len(), 21);
    }

    #[test]
    fn writers_and_start_remove_stale_temporaries_only() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(dir.path());
        ks.init().unwrap();
        let stale = dir.path().join(".keystore.tmp-00112233445566ff");
        let foreign = dir.path().join(".keystore.tmp-not-ours");
        fs::copy(ks.path(), &stale).unwrap();
        fs::write(&foreign, b"x").unwrap();
        ks.rotate().unwrap();
        assert!(!stale.exists());
        assert!(foreign.exists());

        fs::copy(ks.path(), &stale).unwrap();
        ks.load_or_init().unwrap();
        assert!(!stale.exists(), "start leaves a stale temporary");
        assert!(foreign.exists());
        remove_stale_temps(&dir.path().join("missing")).unwrap();
        assert!(!dir.path().join("missing").exists());
    }

    #[test]
    fn byte_level_changes_never_touch_files_and_name_their_path() {
        let dir = tempfile::tempdir().unwrap();
        let platform = Arc::new(SimPlatform::open_or_create(dir.path()).unwrap());
        let ks = Keystore::new("etcd:/coffer/keyd/keyrings/a", platform);
        let (v1, info) = ks.init_bytes().unwrap();
        let first = info.primary().unwrap().id.clone();
        let (v2, second) = ks.rotate_bytes(&v1).unwrap();
        // Two writers that both start from v1 make different ids: only the store's
        // compare-and-swap keeps one of them from losing the other's key.
        let (_, racing) = ks.rotate_bytes(&v1).unwrap();
        assert_ne!(second.id, racing.id);
        let ring = ks.load_bytes(&v2).unwrap();
        assert_eq!((ring.primary_id(), ring.len()), (second.id.as_str(), 2));
        let (v3, retired) = ks.retire_bytes(&v2, &first).unwrap();
        assert_eq!(retired.id, first);
        let info = ks.info_bytes(&v3).unwrap();
        assert_eq!(
            (info.generation, info.keys.len(), info.retired.len()),
            (3, 1, 1)
        );
        assert!(!ks.exists(), "a byte-level change wrote a file");
        let err = ks.load_bytes(&v3[..v3.len() / 2]).unwrap_err().to_string();
        assert!(
            err.contains("etcd:/coffer/keyd/keyrings/a/keystore"),
            "{err}"
        );
    }

    #[test]
    fn stamp_changes_on_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let ks = store(dir.path());
        assert!(ks.stamp().is_none());
        ks.init().unwrap();
        let a = ks.stamp().unwrap();
        ks.rotate().unwrap();
        assert_ne!(a, ks.stamp().unwrap());
    }
}

//! The store file: a versioned header naming the protection, and every credential sealed
//! together under the key that protection derives (AES-256-GCM, the header as associated data).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use coffer_platform::durable;
use coffer_platform::SealingKey;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{create_private_dir, Credential, Error, Passphrase, Protection, MAX_CREDENTIAL_BYTES};

/// Environment variable naming the store file (default `~/.kube/coffer/credentials.sealed`).
pub const STORE_ENV: &str = "COFFER_CREDENTIAL_STORE";
/// The store format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
const FORMAT: &str = "coffer-credstore";
const MAX_ENTRIES: usize = 256;
const MAX_ID_BYTES: usize = 256;
const MAX_FILE_BYTES: u64 = (MAX_ENTRIES * MAX_CREDENTIAL_BYTES * 2) as u64;

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    format: String,
    version: u32,
    protection: Protection,
    /// `nonce ‖ AES-256-GCM(entries JSON)`, base64.
    sealed: String,
}

/// An open (unsealed) credential store. Its credentials are zeroized when it is dropped.
pub struct Store {
    path: PathBuf,
    protection: Protection,
    key: SealingKey,
    entries: BTreeMap<String, Credential>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("protection", &self.protection.name())
            .field("ids", &self.entries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// An exclusive lock on a store, held by every writer from reading it to writing it back.
pub struct StoreLock {
    _file: File,
}

impl Store {
    /// The default store path: `$HOME/.kube/coffer/credentials.sealed`.
    pub fn default_path() -> Option<PathBuf> {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|home| PathBuf::from(home).join(".kube/coffer/credentials.sealed"))
    }

    /// Takes the store's writer lock (`<store>.lock`), creating the store's directory (0700)
    /// if needed, and removes temporaries a crashed writer left behind.
    pub fn lock(path: &Path) -> Result<StoreLock, Error> {
        create_private_dir(parent(path))?;
        let lock_path = sibling(path, ".lock");
        let file =
            durable::lock_exclusive(&lock_path).map_err(|e| Error::io("locking", &lock_path, e))?;
        durable::remove_stale_temps(path).map_err(|e| Error::io("cleaning up after", path, e))?;
        Ok(StoreLock { _file: file })
    }

    /// The protection of the store at `path` (reads only the header; unseals nothing), or
    /// `None` when there is no store there yet.
    pub fn protection_of(path: &Path) -> Result<Option<Protection>, Error> {
        Ok(read_file(path)?.map(|file| file.protection))
    }

    /// A new, empty store (written by [`Store::save`]). Fails if the protection's key cannot
    /// be had (no TEE; empty passphrase).
    pub fn create(
        path: &Path,
        protection: Protection,
        passphrase: Option<&Passphrase>,
    ) -> Result<Store, Error> {
        create_private_dir(parent(path))?;
        let key = protection.key(parent(path), passphrase, path, true)?;
        Ok(Store {
            path: path.to_path_buf(),
            protection,
            key,
            entries: BTreeMap::new(),
        })
    }

    /// Opens and unseals the store at `path`.
    pub fn open(path: &Path, passphrase: Option<&Passphrase>) -> Result<Store, Error> {
        let file = read_file(path)?.ok_or_else(|| {
            Error::io(
                "opening the credential store",
                path,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such file (run `kubectl coffer kubeconfig protect` first)",
                ),
            )
        })?;
        let malformed = |problem: &str| Error::Malformed {
            path: path.to_path_buf(),
            problem: problem.to_string(),
        };
        let sealed = STANDARD
            .decode(&file.sealed)
            .map_err(|_| malformed("the sealed part is not base64"))?;
        let key = file.protection.key(parent(path), passphrase, path, false)?;
        let plain = key
            .unseal(&associated_data(&file.protection)?, &sealed)
            .map_err(|_| match file.protection {
                Protection::Passphrase { .. } => Error::WrongPassphrase {
                    path: path.to_path_buf(),
                },
                ref other => Error::UnsealFailed {
                    path: path.to_path_buf(),
                    protection: match other {
                        Protection::Platform { platform } => format!("platform ({platform})"),
                        _ => other.name().to_string(),
                    },
                },
            })?;
        let entries: BTreeMap<String, Credential> = serde_json::from_slice(&plain)
            // Not `e` itself: serde_json quotes offending values, here credential bytes.
            .map_err(|e| {
                malformed(&format!(
                    "its sealed contents are not a credential list (at byte {}; written by \
                     another version?)",
                    e.column()
                ))
            })?;
        Ok(Store {
            path: path.to_path_buf(),
            protection: file.protection,
            key,
            entries,
        })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How the store is sealed.
    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    /// The ids of the stored credentials.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The credential stored under `id`.
    pub fn get(&self, id: &str) -> Result<&Credential, Error> {
        self.entries.get(id).ok_or_else(|| Error::NotFound {
            id: id.to_string(),
            path: self.path.clone(),
        })
    }

    /// Adds a credential under a new `id` (call [`Store::save`] to keep it).
    pub fn insert(&mut self, id: &str, credential: Credential) -> Result<(), Error> {
        check_id(id)?;
        credential.validate()?;
        if self.entries.contains_key(id) {
            return Err(Error::Exists {
                id: id.to_string(),
                path: self.path.clone(),
            });
        }
        if self.entries.len() >= MAX_ENTRIES {
            return Err(Error::InvalidCredential(format!(
                "the credential store {} already holds {MAX_ENTRIES} credentials",
                self.path.display()
            )));
        }
        self.entries.insert(id.to_string(), credential);
        Ok(())
    }

    /// Removes and returns the credential under `id` (call [`Store::save`] to keep that).
    pub fn remove(&mut self, id: &str) -> Result<Credential, Error> {
        self.entries.remove(id).ok_or_else(|| Error::NotFound {
            id: id.to_string(),
            path: self.path.clone(),
        })
    }

    /// Seals every credential and writes the store atomically (temp, fsync, rename, fsync
    /// directory), mode 0600. Hold [`Store::lock`] from opening to saving.
    pub fn save(&self) -> Result<(), Error> {
        let estimate = 16
            + self
                .entries
                .iter()
                .map(|(id, c)| id.len() + c.json_len_hint())
                .sum::<usize>();
        // Reserved up front so that growing the buffer leaves no unzeroized copies behind.
        let mut plain = Zeroizing::new(Vec::with_capacity(estimate));
        serde_json::to_writer(&mut *plain, &self.entries)
            .map_err(|e| Error::Crypto(format!("encoding the store: {e}")))?;
        let sealed = self
            .key
            .seal(&associated_data(&self.protection)?, &plain)
            .map_err(|e| Error::Crypto(e.to_string()))?;
        let file = StoreFile {
            format: FORMAT.into(),
            version: FORMAT_VERSION,
            protection: self.protection.clone(),
            sealed: STANDARD.encode(sealed),
        };
        let mut bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::Crypto(format!("encoding the store: {e}")))?;
        bytes.push(b'\n');
        durable::write_atomic(&self.path, &bytes, 0o600)
            .map_err(|e| Error::io("writing", &self.path, e))
    }
}

/// The header fields every sealed store authenticates, so that its protection parameters
/// (salt, cost, platform) cannot be swapped.
fn associated_data(protection: &Protection) -> Result<Vec<u8>, Error> {
    let mut aad = format!("{FORMAT} v{FORMAT_VERSION}\0").into_bytes();
    serde_json::to_writer(&mut aad, protection)
        .map_err(|e| Error::Crypto(format!("encoding the header: {e}")))?;
    Ok(aad)
}

fn read_file(path: &Path) -> Result<Option<StoreFile>, Error> {
    let malformed = |problem: String| Error::Malformed {
        path: path.to_path_buf(),
        problem,
    };
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading", path, e)),
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(malformed(format!(
            "it is {} bytes, more than the {MAX_FILE_BYTES}-byte limit",
            meta.len()
        )));
    }
    let bytes = fs::read(path).map_err(|e| Error::io("reading", path, e))?;
    let header: Header =
        serde_json::from_slice(&bytes).map_err(|e| malformed(format!("not JSON: {e}")))?;
    if header.format != FORMAT {
        return Err(malformed(format!("its format is {:?}", header.format)));
    }
    if header.version > FORMAT_VERSION {
        return Err(Error::NewerVersion {
            path: path.to_path_buf(),
            version: header.version,
            supported: FORMAT_VERSION,
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| malformed(e.to_string()))
}

fn check_id(id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.chars().any(char::is_control) {
        return Err(Error::InvalidCredential(format!(
            "credential id {id:?} must be 1 to {MAX_ID_BYTES} bytes without control characters"
        )));
    }
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretBytes;
    use std::os::unix::fs::PermissionsExt;

    const TOKEN: &str = "tok-3f9a7c1e-very-secret";

    fn token_credential() -> Credential {
        Credential {
            client_certificate: None,
            client_key: None,
            token: Some(SecretBytes::new(Zeroizing::new(TOKEN.as_bytes().to_vec()))),
        }
    }

    fn passphrase(s: &str) -> Passphrase {
        Passphrase::new(Zeroizing::new(s.into())).unwrap()
    }

    fn assert_no_plaintext(dir: &Path) {
        for entry in fs::read_dir(dir).unwrap() {
            let bytes = fs::read(entry.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
                "plaintext token on disk"
            );
        }
    }

    #[test]
    fn passphrase_store_round_trip_and_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kube/coffer/credentials.sealed");
        let _lock = Store::lock(&path).unwrap();
        let pw = passphrase("correct horse battery staple");
        let mut store =
            Store::create(&path, Protection::new_passphrase().unwrap(), Some(&pw)).unwrap();
        store.insert("alice", token_credential()).unwrap();
        assert!(matches!(
            store.insert("alice", token_credential()),
            Err(Error::Exists { .. })
        ));
        store.save().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_no_plaintext(path.parent().unwrap());

        assert_eq!(
            Store::protection_of(&path).unwrap().unwrap().name(),
            "passphrase"
        );
        let opened = Store::open(&path, Some(&pw)).unwrap();
        assert_eq!(opened.get("alice").unwrap(), &token_credential());
        assert!(matches!(opened.get("bob"), Err(Error::NotFound { .. })));
        assert!(!format!("{opened:?}").contains(TOKEN));

        let err = Store::open(&path, Some(&passphrase("wrong"))).unwrap_err();
        assert!(matches!(err, Error::WrongPassphrase { .. }), "{err}");
        assert!(err.to_string().contains("wrong passphrase"));
        assert!(matches!(
            Store::open(&path, None),
            Err(Error::PassphraseRequired { .. })
        ));
    }

    #[test]
    fn sim_store_round_trip_and_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.sealed");
        let mut store = Store::create(&path, Protection::Sim, None).unwrap();
        store.insert("bob", token_credential()).unwrap();
        store.save().unwrap();
        assert_no_plaintext(dir.path());
        let mut opened = Store::open(&path, None).unwrap();
        assert_eq!(opened.ids().collect::<Vec<_>>(), ["bob"]);
        opened.remove("bob").unwrap();
        opened.save().unwrap();
        assert_eq!(Store::open(&path, None).unwrap().ids().count(), 0);

        // Any altered byte of the sealed part is refused.
        store.save().unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let mut file: serde_json::Value = serde_json::from_str(&text).unwrap();
        let sealed = file["sealed"].as_str().unwrap().to_string();
        let mut raw = STANDARD.decode(sealed).unwrap();
        raw[20] ^= 1;
        file["sealed"] = STANDARD.encode(raw).into();
        fs::write(&path, file.to_string()).unwrap();
        let err = Store::open(&path, None).unwrap_err();
        assert!(matches!(err, Error::UnsealFailed { .. }), "{err}");
    }

    #[test]
    fn newer_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.sealed");
        fs::write(&path, r#"{"format":"coffer-credstore","version":2}"#).unwrap();
        let err = Store::open(&path, None).unwrap_err();
        assert!(err.to_string().contains("upgrade kubectl-coffer"), "{err}");
        fs::write(&path, "apiVersion: v1\n").unwrap();
        assert!(matches!(
            Store::open(&path, None),
            Err(Error::Malformed { .. })
        ));
        let missing = Store::open(&dir.path().join("none"), None).unwrap_err();
        assert!(
            missing.to_string().contains("kubeconfig protect"),
            "{missing}"
        );
        assert!(Store::protection_of(&dir.path().join("none"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn ids_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(&dir.path().join("s"), Protection::Sim, None).unwrap();
        assert!(store.insert("", token_credential()).is_err());
        assert!(store.insert("a\nb", token_credential()).is_err());
        assert!(store.insert(&"u".repeat(300), token_credential()).is_err());
        store
            .insert("arn:aws:eks:eu-west-1:1:cluster/x", token_credential())
            .unwrap();
    }
}

//! The simulation platform: INSECURE, for development and CI on machines without a TEE.
//!
//! Its root secret is an ordinary file (`sim-platform.key`, mode 0600) in the state directory,
//! so anyone who can read that directory can unseal every key. It exists so that the whole
//! system can be built, tested and demonstrated without TEE hardware; every start says so.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::durable;
use crate::{fill_random, Platform, PlatformError, PlatformKind, SealingKey};

/// File name of the simulated root secret inside the state directory.
pub const KEY_FILE_NAME: &str = "sim-platform.key";
const MAGIC: &[u8; 8] = b"CFRSIM1\n";
const ROOT_LEN: usize = 32;

/// The warning printed on every start of the simulation platform.
pub const INSECURE_WARNING: &str =
    "SIMULATION PLATFORM — NOT SECURE: there is no TEE; key-encryption keys are sealed \
with a key stored in a plain file and can be read by anyone with access to the state directory. \
Use only for development and tests; production runs inside SGX (Gramine/Occlum), TDX or SEV-SNP.";

/// The simulation backend of [`Platform`].
pub struct SimPlatform {
    root: Zeroizing<[u8; ROOT_LEN]>,
    key_path: PathBuf,
}

impl fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimPlatform")
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl SimPlatform {
    /// Opens the simulated root secret in `state_dir`, creating the directory (0700) and the
    /// secret (0600) on first use. Logs [`INSECURE_WARNING`] every time.
    pub fn open_or_create(state_dir: &Path) -> Result<Self, PlatformError> {
        tracing::warn!("{INSECURE_WARNING}");
        create_private_dir(state_dir)?;
        let key_path = state_dir.join(KEY_FILE_NAME);
        match Self::read(&key_path) {
            Err(PlatformError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                let mut root = Zeroizing::new([0u8; ROOT_LEN]);
                fill_random(&mut root[..])?;
                let mut contents = Zeroizing::new(Vec::with_capacity(MAGIC.len() + ROOT_LEN));
                contents.extend_from_slice(MAGIC);
                contents.extend_from_slice(&root[..]);
                match durable::write_new_atomic(&key_path, &contents, 0o600) {
                    Ok(()) => Ok(SimPlatform { root, key_path }),
                    // Another process created it first: use theirs.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Self::read(&key_path),
                    Err(e) => Err(PlatformError::io("creating", &key_path, e)),
                }
            }
            other => other,
        }
    }

    /// Opens an existing simulated root secret; never creates anything (for read-only
    /// commands, so a mistyped `--state-dir` does not leave a new key behind).
    pub fn open_existing(state_dir: &Path) -> Result<Self, PlatformError> {
        tracing::warn!("{INSECURE_WARNING}");
        let key_path = state_dir.join(KEY_FILE_NAME);
        match Self::read(&key_path) {
            Err(PlatformError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Err(PlatformError::InvalidFile {
                    path: key_path,
                    what: "simulation platform key",
                    problem: "it does not exist; check --state-dir (it must be the directory \
                              the keystore was created in)"
                        .into(),
                })
            }
            other => other,
        }
    }

    fn read(key_path: &Path) -> Result<Self, PlatformError> {
        let invalid = |problem: String| PlatformError::InvalidFile {
            path: key_path.to_path_buf(),
            what: "simulation platform key",
            problem,
        };
        let meta = fs::metadata(key_path).map_err(|e| PlatformError::io("reading", key_path, e))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(invalid(format!(
                "its mode is {mode:o}; it must be readable by its owner only: run chmod 600 on it"
            )));
        }
        if meta.len() != (MAGIC.len() + ROOT_LEN) as u64 {
            return Err(invalid(format!(
                "it is {} bytes long, expected {}; restore it from backup",
                meta.len(),
                MAGIC.len() + ROOT_LEN
            )));
        }
        let contents = Zeroizing::new(
            fs::read(key_path).map_err(|e| PlatformError::io("reading", key_path, e))?,
        );
        let (magic, secret) = contents.split_at(MAGIC.len().min(contents.len()));
        if magic != MAGIC || secret.len() != ROOT_LEN {
            return Err(invalid(
                "it does not start with the Coffer simulation key header; restore it from backup"
                    .into(),
            ));
        }
        let mut root = Zeroizing::new([0u8; ROOT_LEN]);
        root.copy_from_slice(secret);
        Ok(SimPlatform {
            root,
            key_path: key_path.to_path_buf(),
        })
    }
}

impl Platform for SimPlatform {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Sim
    }

    fn sealing_key(&self, purpose: &str) -> Result<SealingKey, PlatformError> {
        let hk = Hkdf::<Sha256>::new(Some(b"coffer sim sealing v1"), &self.root[..]);
        let mut key = Zeroizing::new([0u8; 32]);
        hk.expand(purpose.as_bytes(), &mut key[..])
            .map_err(|_| PlatformError::Random("HKDF output length".into()))?;
        Ok(SealingKey::from_bytes(key))
    }

    fn evidence(&self, _report_data: &[u8; 64]) -> Result<crate::Evidence, PlatformError> {
        Err(PlatformError::Unsupported("simulation evidence is not implemented yet"))
    }
}

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<(), PlatformError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| PlatformError::io("creating directory", dir, e))
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_stable_per_installation_and_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let a = SimPlatform::open_or_create(dir.path()).unwrap();
        let b = SimPlatform::open_or_create(dir.path()).unwrap();
        let ka = a.sealing_key("p1").unwrap();
        assert_eq!(ka.expose(), b.sealing_key("p1").unwrap().expose());
        assert_ne!(ka.expose(), a.sealing_key("p2").unwrap().expose());
        let other = tempfile::tempdir().unwrap();
        let c = SimPlatform::open_or_create(other.path()).unwrap();
        assert_ne!(ka.expose(), c.sealing_key("p1").unwrap().expose());
        let mode = fs::metadata(dir.path().join(KEY_FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn refuses_bad_key_files_without_touching_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE_NAME);
        fs::write(&path, b"short").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = SimPlatform::open_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bytes long"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"short");

        fs::write(&path, [0u8; 40]).unwrap();
        let err = SimPlatform::open_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("header"), "{err}");

        SimPlatform::open_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = SimPlatform::open_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn debug_does_not_print_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let p = SimPlatform::open_or_create(dir.path()).unwrap();
        let shown = format!("{p:?}");
        assert!(
            shown.contains("key_path") && !shown.contains("root"),
            "{shown}"
        );
    }
}

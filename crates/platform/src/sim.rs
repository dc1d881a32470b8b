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

use std::sync::OnceLock;

use ed25519_dalek::{Signer, SigningKey};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::durable;
use crate::{fill_random, Platform, PlatformError, PlatformKind, SealingKey};

/// File name of the simulated root secret inside the state directory.
pub const KEY_FILE_NAME: &str = "sim-platform.key";
const MAGIC: &[u8; 8] = b"CFRSIM1\n";
const ROOT_LEN: usize = 32;

/// Simulation evidence starts with these 20 bytes.
pub const EVIDENCE_MAGIC: &[u8; 20] = b"COFFER-SIM-EVIDENCE\0";
/// The simulation evidence format version (big endian u16 after the magic) of a simulated
/// production-mode TEE.
pub const EVIDENCE_VERSION: u16 = 1;
/// The same format from a simulated *debug-mode* TEE (`COFFER_SIM_DEBUG=1`): verifiers report
/// `debug: true`, so policies refuse it like a debug enclave unless they allow debug.
pub const EVIDENCE_VERSION_DEBUG: u16 = 2;
/// Environment variable that makes the sim platform pose as a debug-mode TEE.
pub const DEBUG_ENV: &str = "COFFER_SIM_DEBUG";
/// Length of simulation evidence: magic 20 ‖ version 2 ‖ measurement 32 ‖ report data 64 ‖
/// Ed25519 public key 32 ‖ Ed25519 signature 64 (over all preceding bytes).
pub const EVIDENCE_LEN: usize = 20 + 2 + 32 + 64 + 32 + 64;
/// HKDF info for the per-installation simulation attestation key.
const ATTESTATION_KEY_INFO: &[u8] = b"coffer sim attestation key v1";
const SEALING_SALT: &[u8] = b"coffer sim sealing v1";

/// SHA-256 of the running executable (`/proc/self/exe`), computed once: the simulated
/// "measurement" in simulation evidence.
pub fn executable_measurement() -> Result<[u8; 32], PlatformError> {
    static MEASUREMENT: OnceLock<Result<[u8; 32], String>> = OnceLock::new();
    MEASUREMENT
        .get_or_init(|| {
            let path = Path::new("/proc/self/exe");
            let mut f =
                fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
            let mut h = Sha256::new();
            io::copy(&mut f, &mut h).map_err(|e| format!("reading {}: {e}", path.display()))?;
            Ok(h.finalize().into())
        })
        .clone()
        .map_err(|problem| PlatformError::Tee {
            backend: "sim",
            problem: format!("cannot measure the executable: {problem}"),
        })
}

/// The warning printed on every start of the simulation platform.
pub const INSECURE_WARNING: &str =
    "SIMULATION PLATFORM — NOT SECURE: there is no TEE; key-encryption keys are sealed \
with a key stored in a plain file and can be read by anyone with access to the state directory. \
Use only for development and tests; production runs inside SGX (Gramine/Occlum), TDX or SEV-SNP.";

/// The simulation backend of [`Platform`].
pub struct SimPlatform {
    root: Zeroizing<[u8; ROOT_LEN]>,
    key_path: PathBuf,
    debug: bool,
}

impl fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimPlatform")
            .field("key_path", &self.key_path)
            .field("debug", &self.debug)
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
                    Ok(()) => Ok(SimPlatform {
                        root,
                        key_path,
                        debug: debug_from_env(),
                    }),
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
            debug: debug_from_env(),
        })
    }
}

/// Whether `COFFER_SIM_DEBUG` asks the sim platform to pose as a debug-mode TEE.
fn debug_from_env() -> bool {
    matches!(
        std::env::var(DEBUG_ENV).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

impl SimPlatform {
    /// Makes the evidence claim a debug-mode TEE (or not), whatever `COFFER_SIM_DEBUG` says.
    pub fn with_debug(mut self, debug: bool) -> Self {
        self.debug = debug;
        self
    }

    fn attestation_key(&self) -> Result<SigningKey, PlatformError> {
        let hk = Hkdf::<Sha256>::new(Some(SEALING_SALT), &self.root[..]);
        let mut seed = Zeroizing::new([0u8; 32]);
        hk.expand(ATTESTATION_KEY_INFO, &mut seed[..])
            .map_err(|_| PlatformError::Random("HKDF output length".into()))?;
        Ok(SigningKey::from_bytes(&seed))
    }

    /// This installation's simulation attestation public key (Ed25519), as it appears in
    /// its evidence.
    pub fn attestation_public_key(&self) -> Result<[u8; 32], PlatformError> {
        Ok(self.attestation_key()?.verifying_key().to_bytes())
    }
}

impl Platform for SimPlatform {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Sim
    }

    fn sealing_key(&self, purpose: &str) -> Result<SealingKey, PlatformError> {
        crate::sealing::derive_sealing_key(SEALING_SALT, &self.root[..], purpose)
    }

    /// Simulation evidence ([`EVIDENCE_LEN`] bytes): [`EVIDENCE_MAGIC`] ‖ version (u16 BE: 1, or
    /// 2 when posing as a debug-mode TEE)
    /// ‖ measurement (SHA-256 of the executable) ‖ report data ‖ Ed25519 public key ‖
    /// Ed25519 signature over all preceding bytes. The key is per installation (derived from
    /// the simulated root secret), so the evidence proves nothing about a TEE.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<crate::Evidence, PlatformError> {
        let signing = self.attestation_key()?;
        let mut out = Vec::with_capacity(EVIDENCE_LEN);
        out.extend_from_slice(EVIDENCE_MAGIC);
        let version = if self.debug {
            EVIDENCE_VERSION_DEBUG
        } else {
            EVIDENCE_VERSION
        };
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&executable_measurement()?);
        out.extend_from_slice(report_data);
        out.extend_from_slice(signing.verifying_key().as_bytes());
        let signature = signing.sign(&out);
        out.extend_from_slice(&signature.to_bytes());
        debug_assert_eq!(out.len(), EVIDENCE_LEN);
        Ok(crate::Evidence {
            tee: crate::TeeType::Sim,
            report: out,
            certificates: Vec::new(),
        })
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
    fn sim_evidence_layout_and_signature() {
        use ed25519_dalek::{Signature, Verifier, VerifyingKey};
        let dir = tempfile::tempdir().unwrap();
        let p = SimPlatform::open_or_create(dir.path()).unwrap();
        let rd: [u8; 64] = std::array::from_fn(|i| i as u8);
        let ev = p.evidence(&rd).unwrap();
        assert_eq!(ev.tee, crate::TeeType::Sim);
        assert!(ev.certificates.is_empty());
        let r = &ev.report;
        assert_eq!(r.len(), 214);
        assert_eq!(&r[..20], b"COFFER-SIM-EVIDENCE\0");
        assert_eq!(&r[20..22], &[0, 1]);
        let exe = fs::read("/proc/self/exe").unwrap();
        assert_eq!(&r[22..54], &Sha256::digest(&exe)[..]);
        assert_eq!(&r[54..118], &rd[..]);
        let pk: [u8; 32] = r[118..150].try_into().unwrap();
        assert_eq!(pk, p.attestation_public_key().unwrap());
        let sig = Signature::from_bytes(&r[150..214].try_into().unwrap());
        let vk = VerifyingKey::from_bytes(&pk).unwrap();
        vk.verify(&r[..150], &sig).unwrap();
        // Tampering breaks the signature.
        let mut t = r[..150].to_vec();
        t[60] ^= 1;
        assert!(vk.verify(&t, &sig).is_err());
        // Stable per installation, different across installations.
        let again = SimPlatform::open_existing(dir.path()).unwrap();
        assert_eq!(again.evidence(&rd).unwrap().report[118..150], pk);
        let other = SimPlatform::open_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_ne!(other.attestation_public_key().unwrap(), pk);
        // The attestation key is not a sealing key.
        assert_ne!(
            &p.sealing_key("coffer sim attestation key v1")
                .unwrap()
                .expose()[..],
            &pk[..]
        );
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

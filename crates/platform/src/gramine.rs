//! Intel SGX under Gramine: the `/dev/attestation` pseudo-filesystem.
//!
//! * Evidence: write exactly 64 bytes to `/dev/attestation/user_report_data`, then read the
//!   DCAP quote from `/dev/attestation/quote` (the manifest must set
//!   `sgx.remote_attestation = "dcap"`; `/dev/attestation/attestation_type` says so).
//! * Sealing: Gramine exposes the 128-bit SGX seal keys as `/dev/attestation/keys/_sgx_mrenclave`
//!   and `/dev/attestation/keys/_sgx_mrsigner`; Coffer never uses them raw but derives a key
//!   per purpose with HKDF-SHA256. See [`SealPolicy`] for which one a rebuild can derive.
//!   Both are EGETKEY results for the enclave's *current* CPUSVN and ISVSVN (Gramine v1.8
//!   `pal/src/host/linux-sgx/enclave_framework.c`, `sgx_get_seal_key()`), so a TCB update or an
//!   `isvsvn` bump changes them: data sealed with them directly does not survive one.
//!
//! The pseudo-files are process-global (report data written by one thread is what the next
//! quote read by any thread uses), so evidence requests are serialised with a mutex.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use zeroize::Zeroizing;

use crate::sealing::derive_sealing_key;
pub use crate::sgx::SealPolicy;
use crate::{Evidence, Platform, PlatformError, PlatformKind, SealingKey, TeeType};

const BACKEND: &str = "sgx-gramine";
const SALT: &[u8] = b"coffer sgx sealing v1";
/// Upper bound on a quote read from `/dev/attestation/quote` (DCAP quotes are a few KiB).
const MAX_QUOTE_LEN: u64 = 1 << 20;

/// The Gramine SGX backend of [`Platform`].
#[derive(Debug)]
pub struct GraminePlatform {
    attestation: PathBuf,
    policy: SealPolicy,
    lock: Mutex<()>,
}

impl GraminePlatform {
    /// Opens Gramine's `/dev/attestation` under `root` (`/` in production).
    pub fn new(root: &Path, policy: SealPolicy) -> Result<Self, PlatformError> {
        let attestation = root.join("dev/attestation");
        if !attestation.is_dir() {
            return Err(PlatformError::DeviceMissing {
                backend: BACKEND,
                path: attestation,
                hint: "this process does not run under Gramine-SGX (gramine-direct has no \
                       attestation; use gramine-sgx with sgx.remote_attestation = \"dcap\")",
            });
        }
        Ok(GraminePlatform {
            attestation,
            policy,
            lock: Mutex::new(()),
        })
    }

    /// The sealing policy in use.
    pub fn policy(&self) -> SealPolicy {
        self.policy
    }

    fn check_attestation_type(&self) -> Result<(), PlatformError> {
        let path = self.attestation.join("attestation_type");
        match fs::read(&path) {
            Ok(kind) => {
                let kind = String::from_utf8_lossy(&kind);
                let kind = kind.trim_end_matches(['\0', '\n', ' ']);
                if kind != "dcap" {
                    return Err(PlatformError::Tee {
                        backend: BACKEND,
                        problem: format!(
                            "{} says {kind:?}; Coffer needs DCAP attestation: set \
                             sgx.remote_attestation = \"dcap\" in the Gramine manifest",
                            path.display()
                        ),
                    });
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PlatformError::tee_io(BACKEND, "reading", &path, e)),
        }
    }
}

impl Platform for GraminePlatform {
    fn kind(&self) -> PlatformKind {
        PlatformKind::SgxGramine
    }

    fn sealing_key(&self, purpose: &str) -> Result<SealingKey, PlatformError> {
        let path = self.attestation.join(match self.policy {
            SealPolicy::MrEnclave => "keys/_sgx_mrenclave",
            SealPolicy::MrSigner => "keys/_sgx_mrsigner",
        });
        let raw = Zeroizing::new(
            fs::read(&path).map_err(|e| PlatformError::tee_io(BACKEND, "reading", &path, e))?,
        );
        if raw.len() != 16 {
            return Err(PlatformError::Tee {
                backend: BACKEND,
                problem: format!(
                    "{} held {} bytes, expected a 16-byte SGX seal key",
                    path.display(),
                    raw.len()
                ),
            });
        }
        derive_sealing_key(SALT, &raw, purpose)
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.check_attestation_type()?;
        let urd = self.attestation.join("user_report_data");
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&urd)
            .map_err(|e| PlatformError::tee_io(BACKEND, "opening", &urd, e))?;
        let n = f
            .write(report_data)
            .map_err(|e| PlatformError::tee_io(BACKEND, "writing", &urd, e))?;
        if n != report_data.len() {
            return Err(PlatformError::Tee {
                backend: BACKEND,
                problem: format!("{} accepted only {n} of 64 bytes", urd.display()),
            });
        }
        drop(f);
        let quote_path = self.attestation.join("quote");
        let quote = read_bounded(&quote_path, MAX_QUOTE_LEN)
            .map_err(|e| PlatformError::tee_io(BACKEND, "reading", &quote_path, e))?;
        if quote.is_empty() {
            return Err(PlatformError::Tee {
                backend: BACKEND,
                problem: format!(
                    "{} is empty: the quoting enclave (AESM/DCAP QE) is unreachable",
                    quote_path.display()
                ),
            });
        }
        crate::sgx::check_quote(BACKEND, &quote, report_data)?;
        Ok(Evidence {
            tee: TeeType::Sgx,
            report: quote,
            certificates: Vec::new(),
        })
    }
}

/// Reads at most `limit` bytes of `path`; more is an error (a hostile or broken file).
pub(crate) fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("longer than the {limit}-byte limit"),
        ));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sgx::fake_quote;

    /// A fake `/dev/attestation`: the quote is pre-computed for `rd` (a real Gramine computes it
    /// on read from what was last written to `user_report_data`).
    fn fake_tree(rd: &[u8; 64]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let att = dir.path().join("dev/attestation");
        fs::create_dir_all(att.join("keys")).unwrap();
        fs::write(att.join("user_report_data"), [0u8; 64]).unwrap();
        fs::write(att.join("quote"), fake_quote(rd)).unwrap();
        fs::write(att.join("attestation_type"), "dcap").unwrap();
        fs::write(att.join("keys/_sgx_mrenclave"), [1u8; 16]).unwrap();
        fs::write(att.join("keys/_sgx_mrsigner"), [2u8; 16]).unwrap();
        dir
    }

    #[test]
    fn gramine_evidence_happy_path() {
        let rd = [0x5au8; 64];
        let dir = fake_tree(&rd);
        let p = GraminePlatform::new(dir.path(), SealPolicy::MrSigner).unwrap();
        let ev = p.evidence(&rd).unwrap();
        assert_eq!(ev.tee, TeeType::Sgx);
        assert_eq!(ev.report, fake_quote(&rd));
        assert!(ev.certificates.is_empty());
        let written = fs::read(dir.path().join("dev/attestation/user_report_data")).unwrap();
        assert_eq!(written, rd);
        assert_eq!(p.kind(), PlatformKind::SgxGramine);
    }

    #[test]
    fn gramine_evidence_mismatch_and_bad_files() {
        let dir = fake_tree(&[1u8; 64]);
        let p = GraminePlatform::new(dir.path(), SealPolicy::MrEnclave).unwrap();
        let err = p.evidence(&[2u8; 64]).unwrap_err().to_string();
        assert!(err.contains("differs"), "{err}");

        let att = dir.path().join("dev/attestation");
        fs::write(att.join("quote"), [3u8; 100]).unwrap();
        let err = p.evidence(&[1u8; 64]).unwrap_err().to_string();
        assert!(err.contains("100 bytes long"), "{err}");

        fs::write(att.join("quote"), []).unwrap();
        let err = p.evidence(&[1u8; 64]).unwrap_err().to_string();
        assert!(err.contains("is empty"), "{err}");

        fs::write(att.join("attestation_type"), "epid").unwrap();
        let err = p.evidence(&[1u8; 64]).unwrap_err().to_string();
        assert!(err.contains("\"epid\"") && err.contains("dcap"), "{err}");

        fs::write(att.join("attestation_type"), "dcap").unwrap();
        fs::remove_file(att.join("user_report_data")).unwrap();
        let err = p.evidence(&[1u8; 64]).unwrap_err().to_string();
        assert!(err.contains("user_report_data"), "{err}");
    }

    #[test]
    fn gramine_missing_device() {
        let dir = tempfile::tempdir().unwrap();
        let err = GraminePlatform::new(dir.path(), SealPolicy::MrSigner)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dev/attestation does not exist") && err.contains("gramine-sgx"),
            "{err}"
        );
    }

    #[test]
    fn gramine_sealing_keys_are_derived_per_policy_and_purpose() {
        let dir = fake_tree(&[0u8; 64]);
        let enclave = GraminePlatform::new(dir.path(), SealPolicy::MrEnclave).unwrap();
        let signer = GraminePlatform::new(dir.path(), SealPolicy::MrSigner).unwrap();
        let a = enclave.sealing_key("p").unwrap();
        assert_eq!(a.expose(), enclave.sealing_key("p").unwrap().expose());
        assert_ne!(a.expose(), enclave.sealing_key("q").unwrap().expose());
        assert_ne!(a.expose(), signer.sealing_key("p").unwrap().expose());
        // Never the raw key.
        assert_ne!(&a.expose()[..16], &[1u8; 16]);

        let key = dir.path().join("dev/attestation/keys/_sgx_mrsigner");
        fs::write(&key, [2u8; 15]).unwrap();
        let err = signer.sealing_key("p").unwrap_err().to_string();
        assert!(err.contains("15 bytes"), "{err}");
        fs::remove_file(&key).unwrap();
        let err = signer.sealing_key("p").unwrap_err().to_string();
        assert!(err.contains("_sgx_mrsigner"), "{err}");
    }

    #[test]
    fn gramine_permission_denied() {
        use std::os::unix::fs::PermissionsExt;
        let dir = fake_tree(&[0u8; 64]);
        let key = dir.path().join("dev/attestation/keys/_sgx_mrenclave");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o000)).unwrap();
        let urd = dir.path().join("dev/attestation/user_report_data");
        fs::set_permissions(&urd, fs::Permissions::from_mode(0o444)).unwrap();
        let p = GraminePlatform::new(dir.path(), SealPolicy::MrEnclave).unwrap();
        let errs = crate::testutil::without_file_permission_override(move || {
            (
                p.sealing_key("p").unwrap_err().to_string(),
                p.evidence(&[0u8; 64]).unwrap_err().to_string(),
            )
        });
        if let Some((seal, evidence)) = errs {
            assert!(
                seal.contains("permission denied") && seal.contains("_sgx_mrenclave"),
                "{seal}"
            );
            assert!(
                evidence.contains("permission denied") && evidence.contains("user_report_data"),
                "{evidence}"
            );
        }
    }
}

//! `--platform auto`: which TEE interface does this environment offer?
//!
//! In order:
//! 1. **Gramine** (`sgx-gramine`): `<root>/dev/attestation/quote` exists.
//! 2. **Occlum** (`sgx-occlum`): `<root>/dev/sgx` exists and either is a character device or
//!    the environment has `OCCLUM=yes` (Occlum's default `Occlum.json` sets it). Outside a
//!    LibOS, `/dev/sgx` is never a character device: the in-kernel driver offers
//!    `/dev/sgx_enclave`, and the old out-of-tree DCAP driver made `/dev/sgx` a directory.
//! 3. **TDX / SEV-SNP** (`tdx`, `snp`): `<root>/dev/tdx_guest` or `<root>/dev/sev-guest`
//!    exists, or the configfs-tsm report directory exists, in which case a report directory is
//!    created and its `provider` read (`tdx_guest` / `sev_guest`). A guest device without
//!    configfs-tsm still selects its backend, which then explains how to mount configfs.
//! 4. Otherwise [`crate::PlatformError::NoTeeDetected`]. Simulation is never auto-detected.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use crate::tsm::{RealTsmFs, TsmFs, REPORT_DIR};
use crate::PlatformKind;

/// What [`detect`] found, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    /// The backend to use.
    pub kind: PlatformKind,
    /// Human-readable reason (logged).
    pub reason: String,
}

/// Detects the TEE under `root` (`/` in production), consulting the `OCCLUM` environment
/// variable. `None` when there is none.
pub fn detect(root: &Path) -> Option<Detection> {
    let occlum_env = std::env::var("OCCLUM").is_ok_and(|v| v == "yes");
    detect_with(root, occlum_env, &RealTsmFs)
}

/// [`detect`] with the environment and configfs access made explicit (tests).
pub fn detect_with(root: &Path, occlum_env: bool, fs: &dyn TsmFs) -> Option<Detection> {
    let found = |kind, reason: String| Some(Detection { kind, reason });
    let quote = root.join("dev/attestation/quote");
    if quote.exists() {
        return found(
            PlatformKind::SgxGramine,
            format!("{} exists (Gramine-SGX)", quote.display()),
        );
    }
    let sgx = root.join("dev/sgx");
    if let Ok(meta) = std::fs::metadata(&sgx) {
        if meta.file_type().is_char_device() {
            return found(
                PlatformKind::SgxOcclum,
                format!("{} is a character device (Occlum LibOS)", sgx.display()),
            );
        }
        if occlum_env && !meta.is_dir() {
            return found(
                PlatformKind::SgxOcclum,
                format!("{} exists and OCCLUM=yes is set", sgx.display()),
            );
        }
    }
    for (dev, kind) in [
        ("dev/tdx_guest", PlatformKind::Tdx),
        ("dev/sev-guest", PlatformKind::Snp),
    ] {
        let path = root.join(dev);
        if path.exists() {
            return found(kind, format!("{} exists", path.display()));
        }
    }
    let report_dir = root.join(REPORT_DIR);
    if fs.is_dir(&report_dir) {
        match crate::tsm::probe_provider(root, fs) {
            Ok(p) if p == "tdx_guest" => {
                return found(PlatformKind::Tdx, format!("configfs-tsm provider is {p}"))
            }
            Ok(p) if p == "sev_guest" => {
                return found(PlatformKind::Snp, format!("configfs-tsm provider is {p}"))
            }
            Ok(p) => tracing::info!(
                "{} exists but its provider {p:?} is not supported",
                report_dir.display()
            ),
            Err(e) => tracing::info!(
                "{} exists but probing its provider failed: {e}",
                report_dir.display()
            ),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tsm::fake::FakeTsm;
    use std::fs;

    #[test]
    fn detect_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect_with(dir.path(), true, &RealTsmFs), None);
    }

    #[test]
    fn detect_gramine_first() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("dev/attestation")).unwrap();
        fs::write(dir.path().join("dev/attestation/quote"), b"").unwrap();
        fs::write(dir.path().join("dev/sgx"), b"").unwrap();
        let d = detect_with(dir.path(), true, &RealTsmFs).unwrap();
        assert_eq!(d.kind, PlatformKind::SgxGramine);
        assert!(d.reason.contains("Gramine"), "{}", d.reason);
    }

    #[test]
    fn detect_occlum_needs_the_occlum_marker() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("dev")).unwrap();
        fs::write(dir.path().join("dev/sgx"), b"").unwrap();
        assert_eq!(detect_with(dir.path(), false, &RealTsmFs), None);
        let d = detect_with(dir.path(), true, &RealTsmFs).unwrap();
        assert_eq!(d.kind, PlatformKind::SgxOcclum);
        // The old out-of-tree driver's /dev/sgx directory is not Occlum.
        fs::remove_file(dir.path().join("dev/sgx")).unwrap();
        fs::create_dir(dir.path().join("dev/sgx")).unwrap();
        assert_eq!(detect_with(dir.path(), true, &RealTsmFs), None);
    }

    #[test]
    fn detect_guest_devices() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("dev")).unwrap();
        fs::write(dir.path().join("dev/sev-guest"), b"").unwrap();
        assert_eq!(
            detect_with(dir.path(), false, &RealTsmFs).unwrap().kind,
            PlatformKind::Snp
        );
        fs::write(dir.path().join("dev/tdx_guest"), b"").unwrap();
        assert_eq!(
            detect_with(dir.path(), false, &RealTsmFs).unwrap().kind,
            PlatformKind::Tdx
        );
    }

    #[test]
    fn detect_by_configfs_tsm_provider() {
        let root = Path::new("/fake-root");
        let tdx = FakeTsm::new(root, "tdx_guest");
        let d = detect_with(root, false, &*tdx).unwrap();
        assert_eq!(d.kind, PlatformKind::Tdx);
        assert!(d.reason.contains("tdx_guest"), "{}", d.reason);
        assert_eq!(tdx.live_reports(), 0);
        let snp = FakeTsm::new(root, "sev_guest");
        assert_eq!(
            detect_with(root, false, &*snp).unwrap().kind,
            PlatformKind::Snp
        );
        let other = FakeTsm::new(root, "arm_cca_guest");
        assert_eq!(detect_with(root, false, &*other), None);
        assert_eq!(other.live_reports(), 0);
    }
}

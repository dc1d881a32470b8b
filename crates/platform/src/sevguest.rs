//! AMD SEV-SNP sealing keys: `SNP_GET_DERIVED_KEY` on `/dev/sev-guest` (through the `sev`
//! crate's `Firmware::get_derived_key`).
//!
//! The request mixes in the guest's launch **measurement** and **guest policy**
//! (`GUEST_FIELD_SELECT` bits 3 and 0), so only a guest launched with the same image and
//! policy obtains the same key. Root key: **VCEK** (`root_key_select = 0`), the chip-unique
//! key every SNP guest can use; the key is therefore also bound to this physical CPU — a VM
//! moved to another host cannot unseal (use service mode / key backup for that). VMRK would
//! survive migration but only exists when a migration agent is launched with the guest, which
//! Coffer deployments do not have. The TCB version, guest SVN, image and family IDs are not
//! mixed in, so firmware (TCB) updates do not change the key. Message version 1 is used, which
//! every SNP firmware supports. The 32-byte key from the firmware is never used raw: each
//! purpose gets its own HKDF-SHA256 derivation.

use std::path::Path;

use sev::firmware::guest::{DerivedKey, Firmware, GuestFieldSelect};
use zeroize::Zeroizing;

use crate::PlatformError;

const BACKEND: &str = "snp";

/// The `GUEST_FIELD_SELECT` Coffer uses: guest policy (bit 0) and measurement (bit 3).
pub fn guest_field_select() -> GuestFieldSelect {
    let mut fields = GuestFieldSelect(0);
    fields.set_guest_policy(true);
    fields.set_measurement(true);
    fields
}

/// The derived-key request Coffer sends (VCEK root, measurement and policy mixed in).
pub fn derived_key_request(vmpl: u32) -> DerivedKey {
    DerivedKey::new(false, guest_field_select(), vmpl, 0, 0, None)
}

/// Fetches the raw 32-byte SNP derived key for `vmpl` (which must be ≥ the guest's current
/// VMPL; 0 when the guest OS runs at VMPL 0, the usual case without an SVSM).
pub fn derived_key(root: &Path, vmpl: u32) -> Result<Zeroizing<[u8; 32]>, PlatformError> {
    let device = root.join("dev/sev-guest");
    if !device.exists() {
        return Err(PlatformError::DeviceMissing {
            backend: BACKEND,
            path: device,
            hint: "the sev-guest driver is not loaded (modprobe sev-guest) or this is not an \
                   SEV-SNP guest",
        });
    }
    if root != Path::new("/") {
        return Err(PlatformError::Tee {
            backend: BACKEND,
            problem: format!(
                "SNP derived keys can only be fetched from /dev/sev-guest, not from {} \
                 (COFFER_PLATFORM_ROOT is for tests)",
                device.display()
            ),
        });
    }
    let mut fw =
        Firmware::open().map_err(|e| PlatformError::tee_io(BACKEND, "opening", &device, e))?;
    let key = fw
        .get_derived_key(Some(1), derived_key_request(vmpl))
        .map_err(|e| PlatformError::Tee {
            backend: BACKEND,
            problem: format!("SNP_GET_DERIVED_KEY on {} failed: {e}", device.display()),
        })?;
    Ok(Zeroizing::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snp_key_request_selects_measurement_and_policy_with_vcek() {
        let fields = guest_field_select();
        assert_eq!(fields.0, 0b1001);
        let req = derived_key_request(0);
        assert_eq!(req.get_root_key_select(), 0);
        assert_eq!(req.guest_field_select, fields);
        assert_eq!(req.vmpl, 0);
        assert_eq!(req.tcb_version, 0);
    }

    #[test]
    fn snp_missing_sev_guest_device() {
        let dir = tempfile::tempdir().unwrap();
        let err = derived_key(dir.path(), 0).unwrap_err().to_string();
        assert!(
            err.contains("dev/sev-guest does not exist") && err.contains("modprobe sev-guest"),
            "{err}"
        );
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/sev-guest"), b"").unwrap();
        let err = derived_key(dir.path(), 0).unwrap_err().to_string();
        assert!(err.contains("only be fetched from /dev/sev-guest"), "{err}");
    }
}

//! Intel SGX under Occlum: the LibOS's `/dev/sgx` ioctls.
//!
//! * Evidence: `SGXIOC_GET_DCAP_QUOTE_SIZE` (`_IOR('s', 7, u32)` = `0x80047307`), then
//!   `SGXIOC_GEN_DCAP_QUOTE` (`_IOWR('s', 8, IoctlGenDcapQuoteArg)` = `0xc0187308`).
//! * Sealing: `SGXIOC_GET_KEY` (`_IOWR('s', 11, IoctlGetKeyArg)` = `0xc010730b`) with an SGX
//!   `KEYREQUEST` for the seal key, then HKDF-SHA256 per purpose (never the raw key).
//!
//! The argument structs follow Occlum's `src/libos/src/fs/dev_fs/dev_sgx/mod.rs`
//! (`IoctlGenDCAPQuoteArg { report_data: *const sgx_report_data_t, quote_size: *mut u32,
//! quote_buf: *mut u8 }` and `IoctlGetKeyArg { key_request: *const sgx_key_request_t,
//! key: *mut sgx_key_128bit_t }`). Occlum writes the quote but does **not** write the quote's
//! length back, so the length comes from `SGXIOC_GET_DCAP_QUOTE_SIZE`.
//!
//! Request encoding and decoding are plain functions (unit-tested here); only
//! [`ioctl_quote_size`], [`ioctl_gen_quote`] and [`ioctl_get_key`] are `unsafe` inside.
//!
//! Key request choices (Coffer needs the same key on every start, with nothing stored next to
//! the sealed data): `CPUSVN` all zero and `ISVSVN` 0 (configurable), so the key survives CPU
//! microcode (TCB) updates — the price is that an enclave on an older, unpatched TCB can derive
//! the same key; `KEYID` is a fixed Coffer constant; the attribute and MISCSELECT masks are the
//! SGX SDK's `TSEAL_DEFAULT_FLAGSMASK` (`0xFF0000000000000B`: INITTED, DEBUG and the
//! security-relevant high bits — a debug enclave never gets a production key) and
//! `TSEAL_DEFAULT_MISCMASK` (`0xF0000000`).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::ioctl::{opcode, Getter, Opcode, Updater};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::sealing::derive_sealing_key;
pub use crate::sgx::SealPolicy;
use crate::{Evidence, Platform, PlatformError, PlatformKind, SealingKey, TeeType};

const BACKEND: &str = "sgx-occlum";
const SALT: &[u8] = b"coffer sgx sealing v1";
/// Upper bound on the quote size Occlum may report.
const MAX_QUOTE_LEN: u32 = 1 << 20;

/// `SGXIOC_GET_DCAP_QUOTE_SIZE` = `_IOR('s', 7, u32)`.
pub const SGXIOC_GET_DCAP_QUOTE_SIZE: Opcode = opcode::read::<u32>(b's', 7);
/// `SGXIOC_GEN_DCAP_QUOTE` = `_IOWR('s', 8, IoctlGenDcapQuoteArg)`.
pub const SGXIOC_GEN_DCAP_QUOTE: Opcode = opcode::read_write::<IoctlGenDcapQuoteArg>(b's', 8);
/// `SGXIOC_GET_KEY` = `_IOWR('s', 11, IoctlGetKeyArg)`.
pub const SGXIOC_GET_KEY: Opcode = opcode::read_write::<IoctlGetKeyArg>(b's', 11);

/// Occlum's `IoctlGenDCAPQuoteArg`.
#[repr(C)]
#[derive(Debug)]
pub struct IoctlGenDcapQuoteArg {
    report_data: *const [u8; 64],
    quote_len: *mut u32,
    quote_buf: *mut u8,
}

/// Occlum's `IoctlGetKeyArg`.
#[repr(C)]
#[derive(Debug)]
pub struct IoctlGetKeyArg {
    key_request: *const KeyRequest,
    key: *mut SgxKey,
}

/// SGX `KEYREQUEST` (`sgx_key_request_t`), 512 bytes, 512-byte aligned as EGETKEY requires.
#[repr(C, align(512))]
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRequest(pub [u8; KEY_REQUEST_LEN]);

/// An SGX 128-bit key (`sgx_key_128bit_t`), 16-byte aligned.
#[repr(C, align(16))]
struct SgxKey([u8; 16]);

impl Drop for SgxKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Size of `sgx_key_request_t`.
pub const KEY_REQUEST_LEN: usize = 512;
/// `SGX_KEYSELECT_SEAL`.
pub const KEYNAME_SEAL: u16 = 4;
/// `SGX_KEYPOLICY_MRENCLAVE`.
pub const KEYPOLICY_MRENCLAVE: u16 = 1;
/// `SGX_KEYPOLICY_MRSIGNER`.
pub const KEYPOLICY_MRSIGNER: u16 = 2;
/// `TSEAL_DEFAULT_FLAGSMASK`.
pub const SEAL_FLAGS_MASK: u64 = 0xFF00_0000_0000_000B;
/// `TSEAL_DEFAULT_MISCMASK`.
pub const SEAL_MISC_MASK: u32 = 0xF000_0000;

/// Encodes a seal-key `KEYREQUEST`. Layout (little endian): `key_name u16 @0`,
/// `key_policy u16 @2`, `isv_svn u16 @4`, `reserved1 u16 @6`, `cpu_svn [16] @8`,
/// `attribute_mask { flags u64 @24, xfrm u64 @32 }`, `key_id [32] @40`, `misc_mask u32 @72`,
/// `config_svn u16 @76`, `reserved2 [434] @78`.
pub fn encode_key_request(policy: SealPolicy, isv_svn: u16) -> KeyRequest {
    let mut r = [0u8; KEY_REQUEST_LEN];
    r[0..2].copy_from_slice(&KEYNAME_SEAL.to_le_bytes());
    let key_policy = match policy {
        SealPolicy::MrEnclave => KEYPOLICY_MRENCLAVE,
        SealPolicy::MrSigner => KEYPOLICY_MRSIGNER,
    };
    r[2..4].copy_from_slice(&key_policy.to_le_bytes());
    r[4..6].copy_from_slice(&isv_svn.to_le_bytes());
    // cpu_svn (8..24) stays zero: see the module documentation.
    r[24..32].copy_from_slice(&SEAL_FLAGS_MASK.to_le_bytes());
    // xfrm mask (32..40) zero, as the SGX SDK's sealing does.
    let key_id = Sha256::digest(b"coffer sgx seal key id v1");
    r[40..72].copy_from_slice(&key_id);
    r[72..76].copy_from_slice(&SEAL_MISC_MASK.to_le_bytes());
    KeyRequest(r)
}

/// Validates the size `SGXIOC_GET_DCAP_QUOTE_SIZE` reported.
pub fn check_quote_size(size: u32) -> Result<usize, PlatformError> {
    let min = (crate::sgx::QUOTE_HEADER_LEN + crate::sgx::REPORT_BODY_LEN) as u32;
    if size < min || size > MAX_QUOTE_LEN {
        return Err(PlatformError::Tee {
            backend: BACKEND,
            problem: format!(
                "SGXIOC_GET_DCAP_QUOTE_SIZE reported {size} bytes, outside {min}..={MAX_QUOTE_LEN}"
            ),
        });
    }
    Ok(size as usize)
}

/// Which ioctl failed, for error messages.
fn ioctl_error(name: &str, path: &Path, e: io::Error) -> PlatformError {
    let hint = match e.raw_os_error() {
        Some(code) if code == rustix::io::Errno::NOTTY.raw_os_error() => {
            " — this file does not implement Occlum's SGX ioctls: is the process running \
             inside Occlum (and is this Occlum's /dev/sgx)?"
        }
        Some(code) if code == rustix::io::Errno::IO.raw_os_error() => {
            " — Occlum's DCAP quote generator is not ready: check the DCAP quote provider \
             library and PCCS configuration on the host"
        }
        _ => "",
    };
    PlatformError::Tee {
        backend: BACKEND,
        problem: format!("ioctl {name} on {} failed: {e}{hint}", path.display()),
    }
}

/// `SGXIOC_GET_DCAP_QUOTE_SIZE`.
pub fn ioctl_quote_size(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: the opcode is `_IOR('s', 7, u32)` and the kernel (Occlum LibOS) writes exactly
    // one `u32` into the `Getter`'s output, which is a `u32`.
    let size =
        unsafe { rustix::ioctl::ioctl(fd, Getter::<{ SGXIOC_GET_DCAP_QUOTE_SIZE }, u32>::new()) }?;
    Ok(size)
}

/// `SGXIOC_GEN_DCAP_QUOTE` into `quote` (which must be as long as the size Occlum reported).
pub fn ioctl_gen_quote(
    fd: BorrowedFd<'_>,
    report_data: &[u8; 64],
    quote: &mut [u8],
) -> io::Result<()> {
    let mut len = u32::try_from(quote.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "quote buffer too large"))?;
    let mut arg = IoctlGenDcapQuoteArg {
        report_data,
        quote_len: &mut len,
        quote_buf: quote.as_mut_ptr(),
    };
    // SAFETY: the opcode is `_IOWR('s', 8, IoctlGenDcapQuoteArg)` and `arg` is that
    // `#[repr(C)]` struct. Its pointers are valid for the whole call: `report_data` points to
    // 64 readable bytes, `quote_len` to a `u32` holding `quote.len()`, and `quote_buf` to
    // `quote.len()` writable bytes; Occlum writes at most `*quote_len` bytes there.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            Updater::<{ SGXIOC_GEN_DCAP_QUOTE }, IoctlGenDcapQuoteArg>::new(&mut arg),
        )
    }?;
    Ok(())
}

/// `SGXIOC_GET_KEY` for `request`; returns the raw 128-bit key (zeroized on drop).
fn ioctl_get_key(fd: BorrowedFd<'_>, request: &KeyRequest) -> io::Result<Zeroizing<[u8; 16]>> {
    let mut key = SgxKey([0u8; 16]);
    let mut arg = IoctlGetKeyArg {
        key_request: request,
        key: &mut key,
    };
    // SAFETY: the opcode is `_IOWR('s', 11, IoctlGetKeyArg)` and `arg` is that `#[repr(C)]`
    // struct. `key_request` points to a 512-byte, 512-aligned `sgx_key_request_t` and `key`
    // to 16 writable, 16-aligned bytes; both outlive the call.
    unsafe {
        rustix::ioctl::ioctl(
            fd,
            Updater::<{ SGXIOC_GET_KEY }, IoctlGetKeyArg>::new(&mut arg),
        )
    }?;
    Ok(Zeroizing::new(key.0))
}

/// The Occlum SGX backend of [`Platform`].
#[derive(Debug)]
pub struct OcclumPlatform {
    device: PathBuf,
    policy: SealPolicy,
    isv_svn: u16,
}

impl OcclumPlatform {
    /// Uses Occlum's `<root>/dev/sgx` (`root` is `/` in production). `isv_svn` is the
    /// ISVSVN mixed into sealing keys: it must not exceed the enclave's own ISVSVN; 0 lets
    /// every version of the enclave derive the key.
    pub fn new(root: &Path, policy: SealPolicy, isv_svn: u16) -> Result<Self, PlatformError> {
        let device = root.join("dev/sgx");
        if !device.exists() {
            return Err(PlatformError::DeviceMissing {
                backend: BACKEND,
                path: device,
                hint: "this process does not run inside Occlum (Occlum provides /dev/sgx to \
                       enclave applications)",
            });
        }
        Ok(OcclumPlatform {
            device,
            policy,
            isv_svn,
        })
    }

    fn open(&self) -> Result<File, PlatformError> {
        File::open(&self.device)
            .map_err(|e| PlatformError::tee_io(BACKEND, "opening", &self.device, e))
    }
}

impl Platform for OcclumPlatform {
    fn kind(&self) -> PlatformKind {
        PlatformKind::SgxOcclum
    }

    fn sealing_key(&self, purpose: &str) -> Result<SealingKey, PlatformError> {
        let dev = self.open()?;
        let request = encode_key_request(self.policy, self.isv_svn);
        let raw = ioctl_get_key(dev.as_fd(), &request)
            .map_err(|e| ioctl_error("SGXIOC_GET_KEY", &self.device, e))?;
        derive_sealing_key(SALT, &raw[..], purpose)
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError> {
        let dev = self.open()?;
        let size = ioctl_quote_size(dev.as_fd())
            .map_err(|e| ioctl_error("SGXIOC_GET_DCAP_QUOTE_SIZE", &self.device, e))?;
        let size = check_quote_size(size)?;
        let mut quote = vec![0u8; size];
        ioctl_gen_quote(dev.as_fd(), report_data, &mut quote)
            .map_err(|e| ioctl_error("SGXIOC_GEN_DCAP_QUOTE", &self.device, e))?;
        crate::sgx::check_quote(BACKEND, &quote, report_data)?;
        Ok(Evidence {
            tee: TeeType::Sgx,
            report: quote,
            certificates: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn occlum_opcodes_match_occlum() {
        assert_eq!(SGXIOC_GET_DCAP_QUOTE_SIZE as u64, 0x8004_7307);
        assert_eq!(SGXIOC_GEN_DCAP_QUOTE as u64, 0xc018_7308);
        assert_eq!(SGXIOC_GET_KEY as u64, 0xc010_730b);
    }

    #[test]
    fn occlum_struct_layouts() {
        assert_eq!(size_of::<IoctlGenDcapQuoteArg>(), 24);
        assert_eq!(offset_of!(IoctlGenDcapQuoteArg, report_data), 0);
        assert_eq!(offset_of!(IoctlGenDcapQuoteArg, quote_len), 8);
        assert_eq!(offset_of!(IoctlGenDcapQuoteArg, quote_buf), 16);
        assert_eq!(size_of::<IoctlGetKeyArg>(), 16);
        assert_eq!(size_of::<KeyRequest>(), 512);
        assert_eq!(align_of::<KeyRequest>(), 512);
        assert_eq!(align_of::<SgxKey>(), 16);
    }

    #[test]
    fn occlum_key_request_encoding() {
        let r = encode_key_request(SealPolicy::MrSigner, 3).0;
        assert_eq!(&r[0..2], &[4, 0]); // SEAL_KEY
        assert_eq!(&r[2..4], &[2, 0]); // MRSIGNER
        assert_eq!(&r[4..6], &[3, 0]); // isv_svn
        assert_eq!(&r[6..8], &[0, 0]);
        assert_eq!(&r[8..24], &[0u8; 16]); // cpu_svn
        assert_eq!(&r[24..32], &0xFF00_0000_0000_000Bu64.to_le_bytes());
        assert_eq!(&r[32..40], &[0u8; 8]);
        assert_eq!(
            &r[40..72],
            &Sha256::digest(b"coffer sgx seal key id v1")[..]
        );
        assert_eq!(&r[72..76], &0xF000_0000u32.to_le_bytes());
        assert_eq!(&r[76..78], &[0, 0]);
        assert!(r[78..].iter().all(|&b| b == 0));
        let e = encode_key_request(SealPolicy::MrEnclave, 0).0;
        assert_eq!(&e[2..4], &[1, 0]);
        // Deterministic.
        assert!(encode_key_request(SealPolicy::MrEnclave, 0) == KeyRequest(e));
    }

    #[test]
    fn occlum_quote_size_bounds() {
        assert!(check_quote_size(0).is_err());
        assert!(check_quote_size(431).is_err());
        assert_eq!(check_quote_size(4600).unwrap(), 4600);
        let err = check_quote_size(u32::MAX).unwrap_err().to_string();
        assert!(err.contains("outside"), "{err}");
    }

    #[test]
    fn occlum_missing_device() {
        let dir = tempfile::tempdir().unwrap();
        let err = OcclumPlatform::new(dir.path(), SealPolicy::MrSigner, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("dev/sgx does not exist") && err.contains("inside Occlum"),
            "{err}"
        );
    }

    #[test]
    fn occlum_ioctl_on_regular_file_is_reported_clearly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/sgx"), b"").unwrap();
        let p = OcclumPlatform::new(dir.path(), SealPolicy::MrSigner, 0).unwrap();
        let err = p.evidence(&[0u8; 64]).unwrap_err().to_string();
        assert!(
            err.contains("SGXIOC_GET_DCAP_QUOTE_SIZE") && err.contains("inside Occlum"),
            "{err}"
        );
        let err = p.sealing_key("p").unwrap_err().to_string();
        assert!(
            err.contains("SGXIOC_GET_KEY") && err.contains("inside Occlum"),
            "{err}"
        );
        // The quote ioctl itself, too.
        let f = File::open(dir.path().join("dev/sgx")).unwrap();
        let mut buf = vec![0u8; 512];
        let e = ioctl_gen_quote(f.as_fd(), &[0u8; 64], &mut buf).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(rustix::io::Errno::NOTTY.raw_os_error())
        );
    }
}

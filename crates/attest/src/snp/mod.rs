//! AMD SEV-SNP attestation reports.
//!
//! The VCEK (from the evidence's certificate table, else the [`VcekSource`]) must chain to the
//! `sev` crate's built-in AMD ASK and ARK (Milan, Genoa, Turin); the report signature is then
//! checked with the VCEK over the raw report bytes `0x000..0x2A0` (not over a re-encoding).

mod certtable;
mod claims;
pub mod vcek;

pub use certtable::{
    build as build_cert_table, parse as parse_cert_table, CertEntry, ARK_GUID, ASK_GUID, VCEK_GUID,
    VLEK_GUID,
};

use crate::{Claims, VerifyError, VerifyOptions};
use coffer_platform::TeeType;
use sev::certs::snp::{builtin, Certificate, Verifiable};
use std::sync::OnceLock;
use vcek::{SnpProduct, VcekRequest, VcekSource};

/// Length of an SNP attestation report.
pub const REPORT_LEN: usize = 0x4A0;
/// End of the signed part of the report.
const SIGNED_LEN: usize = 0x2A0;
/// Where the signature's R and S (72 bytes each, little-endian) live.
const SIG_R: usize = 0x2A0;
const SIG_S: usize = 0x2E8;
const SIG_END: usize = 0x330;
/// Signature algorithm 1: ECDSA P-384 with SHA-384.
const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Largest certificate table accepted.
const MAX_CERT_TABLE: usize = 64 * 1024;

const TEE: TeeType = TeeType::Snp;

/// The fields of a report that verification and claims need.
pub(crate) struct Report<'a> {
    raw: &'a [u8],
}

impl<'a> Report<'a> {
    fn parse(raw: &'a [u8]) -> Result<Self, VerifyError> {
        if raw.len() != REPORT_LEN {
            return Err(VerifyError::malformed(
                TEE,
                format!("report of {} bytes, expected {REPORT_LEN}", raw.len()),
            ));
        }
        let report = Report { raw };
        let version = report.u32(0x00);
        if !(2..=5).contains(&version) {
            return Err(VerifyError::malformed(
                TEE,
                format!("report version {version} is not supported"),
            ));
        }
        let algo = report.u32(0x34);
        if algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(VerifyError::malformed(
                TEE,
                format!("signature algorithm {algo} is not ECDSA P-384/SHA-384"),
            ));
        }
        // Bytes outside the signed range must be exactly what the signature covers: the
        // zero padding of R and S and the reserved tail.
        let unsigned_zero = [SIG_R + 48..SIG_S, SIG_S + 48..SIG_END, SIG_END..REPORT_LEN];
        if unsigned_zero
            .into_iter()
            .any(|r| raw[r].iter().any(|&b| b != 0))
        {
            return Err(VerifyError::malformed(
                TEE,
                "non-zero bytes in the unsigned signature padding or reserved tail",
            ));
        }
        Ok(report)
    }

    fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.raw[at..at + 4].try_into().unwrap_or_default())
    }

    fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.raw[at..at + 8].try_into().unwrap_or_default())
    }

    fn bytes(&self, at: usize, len: usize) -> &'a [u8] {
        &self.raw[at..at + len]
    }

    /// SIGNING_KEY of KEY_INFO: 0 = VCEK, 1 = VLEK.
    fn signing_key(&self) -> u32 {
        (self.u32(0x48) >> 2) & 0x7
    }

    fn products(&self) -> Vec<SnpProduct> {
        if self.u32(0x00) >= 3 {
            let (family, model) = (self.raw[0x188], self.raw[0x189]);
            match (family, model) {
                (0x19, 0x00..=0x0F) => return vec![SnpProduct::Milan],
                (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => return vec![SnpProduct::Genoa],
                (0x1A, 0x00..=0x11) => return vec![SnpProduct::Turin],
                _ => {}
            }
        }
        vec![SnpProduct::Milan, SnpProduct::Genoa]
    }

    fn vcek_request(&self) -> VcekRequest {
        let mut chip_id = [0u8; 64];
        chip_id.copy_from_slice(self.bytes(0x1A0, 64));
        let mut reported_tcb = [0u8; 8];
        reported_tcb.copy_from_slice(self.bytes(0x180, 8));
        VcekRequest {
            products: self.products(),
            chip_id,
            reported_tcb,
        }
    }
}

/// The built-in ASK of `product`, checked once against the built-in ARK (which is
/// self-signed).
fn builtin_ask(product: SnpProduct) -> Result<&'static Certificate, String> {
    static CHAINS: [OnceLock<Result<Certificate, String>>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let (index, ark, ask) = match product {
        SnpProduct::Milan => (0, builtin::milan::ark(), builtin::milan::ask()),
        SnpProduct::Genoa => (1, builtin::genoa::ark(), builtin::genoa::ask()),
        SnpProduct::Turin => (2, builtin::turin::ark(), builtin::turin::ask()),
    };
    CHAINS[index]
        .get_or_init(|| {
            let ark = ark.map_err(|e| format!("built-in {} ARK: {e}", product.name()))?;
            let ask = ask.map_err(|e| format!("built-in {} ASK: {e}", product.name()))?;
            (&ark, &ark)
                .verify()
                .map_err(|e| format!("built-in {} ARK is not self-signed: {e}", product.name()))?;
            (&ark, &ask).verify().map_err(|e| {
                format!(
                    "built-in {} ASK is not signed by the ARK: {e}",
                    product.name()
                )
            })?;
            Ok(ask)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Checks that `vcek` chains to a built-in ASK of one of `products`.
fn verify_vcek_chain(
    vcek: &Certificate,
    products: &[SnpProduct],
    origin: &str,
) -> Result<SnpProduct, VerifyError> {
    let mut failures = Vec::new();
    for &product in products {
        match builtin_ask(product) {
            Ok(ask) => match (ask, vcek).verify() {
                Ok(()) => return Ok(product),
                Err(e) => failures.push(format!(
                    "not signed by the AMD {} ASK ({e})",
                    product.name()
                )),
            },
            Err(e) => failures.push(e),
        }
    }
    Err(VerifyError::CertificateChain {
        tee: TEE,
        reason: format!(
            "the VCEK ({origin}) does not chain to AMD's root: {}",
            failures.join("; ")
        ),
    })
}

/// Finds the VCEK: in the evidence's certificate table, else from `source`.
fn find_vcek(
    report: &Report<'_>,
    certificates: &[u8],
    source: &dyn VcekSource,
) -> Result<(Vec<u8>, &'static str), VerifyError> {
    if !certificates.is_empty() {
        if certificates.len() > MAX_CERT_TABLE {
            return Err(VerifyError::malformed(
                TEE,
                format!(
                    "certificate table of {} bytes exceeds {MAX_CERT_TABLE}",
                    certificates.len()
                ),
            ));
        }
        let entries =
            certtable::parse(certificates).map_err(|reason| VerifyError::CertificateChain {
                tee: TEE,
                reason: format!("the evidence's certificate table: {reason}"),
            })?;
        if let Some(entry) = entries.into_iter().find(|e| e.guid == VCEK_GUID) {
            return Ok((entry.data, "from the evidence"));
        }
    }
    Ok((source.vcek(&report.vcek_request())?, "from the VCEK source"))
}

/// Verifies an SNP attestation report; `certificates` is the evidence's certificate table
/// (possibly empty).
pub fn verify(
    report: &[u8],
    certificates: &[u8],
    options: &VerifyOptions,
) -> Result<Claims, VerifyError> {
    let report = Report::parse(report)?;
    if report.signing_key() != 0 {
        return Err(VerifyError::malformed(
            TEE,
            format!(
                "the report is signed by key type {} (only VCEK-signed reports are supported)",
                report.signing_key()
            ),
        ));
    }
    let (der, origin) = find_vcek(&report, certificates, options.vcek.as_ref())?;
    let vcek = Certificate::from_der(&der).map_err(|e| VerifyError::CertificateChain {
        tee: TEE,
        reason: format!("the VCEK ({origin}) is not a valid certificate: {e}"),
    })?;
    verify_vcek_chain(&vcek, &report.products(), origin)?;
    verify_signature(&report, &vcek)?;
    Ok(claims::claims(&report))
}

fn verify_signature(report: &Report<'_>, vcek: &Certificate) -> Result<(), VerifyError> {
    use p384::ecdsa::signature::Verifier;
    let bad = || VerifyError::Signature {
        tee: TEE,
        what: "attestation report (VCEK)",
    };
    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(vcek.public_key_sec1()).map_err(|_| {
        VerifyError::CertificateChain {
            tee: TEE,
            reason: "the VCEK's public key is not a P-384 key".to_string(),
        }
    })?;
    let mut rs = [0u8; 96];
    for (i, at) in [SIG_R, SIG_S].into_iter().enumerate() {
        let mut scalar = [0u8; 48];
        scalar.copy_from_slice(report.bytes(at, 48));
        scalar.reverse(); // little-endian in the report, big-endian for p384
        rs[i * 48..(i + 1) * 48].copy_from_slice(&scalar);
    }
    let signature = p384::ecdsa::Signature::from_slice(&rs).map_err(|_| bad())?;
    key.verify(&report.raw[..SIGNED_LEN], &signature)
        .map_err(|_| bad())
}

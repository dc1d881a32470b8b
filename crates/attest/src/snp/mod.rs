//! AMD SEV-SNP attestation reports.
//!
//! The report names its signing key: the chip's VCEK, or a VLEK a cloud provider loaded (AWS).
//! The key's certificate (from the evidence's certificate table; for a stale or missing one,
//! from the [`VcekSource`](vcek::VcekSource)) must chain to AMD's root — VCEK → ASK → ARK,
//! VLEK → ASVK → ARK (Milan, Genoa, Turin) — with every certificate valid at the verification
//! time and issued for the report's reported TCB (module `certs`); the report signature is then
//! checked over the raw report bytes `0x000..0x2A0` (not over a re-encoding).

mod certs;
mod certtable;
mod claims;
pub mod vcek;

pub use certtable::{
    build as build_cert_table, parse as parse_cert_table, CertEntry, ARK_GUID, ASK_GUID, VCEK_GUID,
    VLEK_GUID,
};

use crate::{Claims, VerifyError, VerifyOptions};
use certs::KeyKind;
use coffer_platform::TeeType;
use sev::certs::snp::Certificate;
use vcek::{SnpProduct, VcekRequest};

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

/// Finds the endorsement key that signed the report and checks it: first the one in the
/// evidence's certificate table; when that one is stale (expired, or issued for another TCB or
/// chip — hosts keep serving the VCEK of the TCB they booted with), the one from the VCEK
/// source, then from that source's fallbacks (cache directory, KDS).
fn endorsement(
    report: &Report<'_>,
    kind: KeyKind,
    certificates: &[u8],
    options: &VerifyOptions,
) -> Result<certs::Endorsement, VerifyError> {
    let request = report.vcek_request();
    let mut stale = None;
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
        let guid = |kind| match kind {
            KeyKind::Vcek => VCEK_GUID,
            KeyKind::Vlek => VLEK_GUID,
        };
        if let Some(entry) = entries.iter().find(|e| e.guid == guid(kind)) {
            match certs::check(
                &entry.data,
                "from the evidence",
                kind,
                &request,
                options.now,
            ) {
                Ok(found) => return Ok(found),
                Err(certs::Unusable::Refused(e)) => return Err(e),
                Err(certs::Unusable::Stale(e)) => stale = Some(e),
            }
        } else if entries.iter().any(|e| e.guid == guid(kind.other())) {
            return Err(VerifyError::CertificateChain {
                tee: TEE,
                reason: format!(
                    "the report is signed by a {key} (signing_key {}), but the evidence's \
                     certificate table carries only a {other}: a {key}-signed report cannot be \
                     verified with a {other}",
                    kind.signing_key(),
                    key = kind.name(),
                    other = kind.other().name(),
                ),
            });
        }
    }
    let mut source: &dyn vcek::VcekSource = options.vcek.as_ref();
    loop {
        let der = match source.vcek(&request) {
            Ok(der) => der,
            // Nothing to replace the stale certificate with: its own problem is the reason.
            Err(e @ VerifyError::VcekUnavailable { .. }) => {
                return Err(match (stale, kind) {
                    (Some(stale), _) => stale,
                    (None, KeyKind::Vlek) => VerifyError::VcekUnavailable {
                        reason: format!(
                            "the report is VLEK-signed and the evidence carries no VLEK: the \
                             cloud's host supplies it in the certificate table (configfs-tsm \
                             auxblob), AMD KDS does not serve VLEKs by chip ({e})"
                        ),
                    },
                    (None, KeyKind::Vcek) => e,
                })
            }
            Err(e) => return Err(e),
        };
        match certs::check(&der, "from the VCEK source", kind, &request, options.now) {
            Ok(found) => return Ok(found),
            Err(certs::Unusable::Stale(e)) => match source.fallback() {
                Some(next) => {
                    source = next;
                    stale = Some(e);
                }
                None => return Err(e),
            },
            Err(certs::Unusable::Refused(e)) => return Err(e),
        }
    }
}

/// Verifies an SNP attestation report; `certificates` is the evidence's certificate table
/// (possibly empty).
pub fn verify(
    report: &[u8],
    certificates: &[u8],
    options: &VerifyOptions,
) -> Result<Claims, VerifyError> {
    let report = Report::parse(report)?;
    let kind = KeyKind::from_signing_key(report.signing_key())?;
    let key = endorsement(&report, kind, certificates, options)?;
    verify_signature(&report, &key.cert, kind)?;
    Ok(claims::claims(&report))
}

fn verify_signature(
    report: &Report<'_>,
    cert: &Certificate,
    kind: KeyKind,
) -> Result<(), VerifyError> {
    use p384::ecdsa::signature::Verifier;
    let bad = || VerifyError::Signature {
        tee: TEE,
        what: match kind {
            KeyKind::Vcek => "attestation report (VCEK)",
            KeyKind::Vlek => "attestation report (VLEK)",
        },
    };
    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(cert.public_key_sec1()).map_err(|_| {
        VerifyError::CertificateChain {
            tee: TEE,
            reason: format!("the {}'s public key is not a P-384 key", kind.name()),
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

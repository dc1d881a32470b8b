//! AMD's certificate hierarchy for SEV-SNP reports and what an endorsement certificate says.
//!
//! A report is signed either by the chip-unique VCEK (ARK → ASK → VCEK) or by a VLEK that a
//! cloud provider loaded into the firmware (ARK → ASVK → VLEK); `SIGNING_KEY` in the report says
//! which (AMD SEV-SNP Firmware ABI spec 56860, ATTESTATION_REPORT, bits 4:2 of offset 0x48:
//! 0 = VCEK, 1 = VLEK). Every certificate of the chain must be valid at the verification time.
//! The endorsement certificate also names the TCB it was issued for and, for a VCEK, the chip
//! (AMD "Versioned Chip Endorsement Key (VCEK) Certificate and KDS Interface Specification"
//! 57230, extensions under 1.3.6.1.4.1.3704.1; the same OIDs trustee's verifier reads in
//! confidential-containers/trustee deps/verifier/src/snp/mod.rs).

use super::vcek::{SnpProduct, VcekRequest};
use super::TEE;
use crate::error::{unix, unix_secs};
use crate::VerifyError;
use sev::certs::snp::{builtin, Certificate, Verifiable};
use std::sync::OnceLock;
use std::time::SystemTime;

/// AMD's ASVKs (the VLEK intermediates), as AMD KDS serves them in
/// `/vlek/v1/{product}/cert_chain`; copied from confidential-containers/trustee
/// `deps/verifier/src/snp/{milan,genoa,turin}_ask_ark_asvk.pem` (the third certificate of each).
/// Each is checked against the `sev` crate's built-in ARK before use.
const ASVK_MILAN: &[u8] = include_bytes!("asvk/milan.pem");
const ASVK_GENOA: &[u8] = include_bytes!("asvk/genoa.pem");
const ASVK_TURIN: &[u8] = include_bytes!("asvk/turin.pem");

/// Bootloader, TEE, SNP and microcode SPL extensions of VCEK and VLEK certificates.
const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
/// The chip id a VCEK was issued for (64 bytes; 8 on Turin), raw or as an OCTET STRING.
const OID_HW_ID: &str = "1.3.6.1.4.1.3704.1.4";

/// Which key signed a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// The Versioned Chip Endorsement Key, unique to the chip and its TCB.
    Vcek,
    /// The Versioned Loaded Endorsement Key a cloud provider loads (e.g. AWS).
    Vlek,
}

impl KeyKind {
    /// The kind named by the report's `SIGNING_KEY` field.
    pub(crate) fn from_signing_key(signing_key: u32) -> Result<Self, VerifyError> {
        match signing_key {
            0 => Ok(KeyKind::Vcek),
            1 => Ok(KeyKind::Vlek),
            other => Err(VerifyError::malformed(
                TEE,
                format!(
                    "the report's signing_key is {other} (0 = VCEK, 1 = VLEK, 7 = unsigned): \
                     only VCEK- and VLEK-signed reports can be verified"
                ),
            )),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            KeyKind::Vcek => "VCEK",
            KeyKind::Vlek => "VLEK",
        }
    }

    pub(crate) fn signing_key(self) -> u32 {
        match self {
            KeyKind::Vcek => 0,
            KeyKind::Vlek => 1,
        }
    }

    pub(crate) fn other(self) -> Self {
        match self {
            KeyKind::Vcek => KeyKind::Vlek,
            KeyKind::Vlek => KeyKind::Vcek,
        }
    }

    /// The subject common name AMD gives this kind of certificate.
    fn common_name(self) -> &'static str {
        match self {
            KeyKind::Vcek => "SEV-VCEK",
            KeyKind::Vlek => "SEV-VLEK",
        }
    }

    fn intermediate(self) -> &'static str {
        match self {
            KeyKind::Vcek => "ASK",
            KeyKind::Vlek => "ASVK",
        }
    }
}

/// Why an endorsement certificate was not usable.
pub(crate) enum Unusable {
    /// Genuine but not for this report now: expired, or issued for another TCB or chip. A
    /// fresh one from the cache or KDS may do.
    Stale(VerifyError),
    /// Not a certificate AMD issued for this kind of key: no other copy will help.
    Refused(VerifyError),
}

/// A validity window, for messages.
#[derive(Clone, Debug)]
struct Window {
    not_before: i64,
    not_after: i64,
}

impl Window {
    fn of(cert: &x509_parser::certificate::X509Certificate<'_>) -> Self {
        let validity = cert.tbs_certificate.validity();
        Window {
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
        }
    }

    /// Refuses `now` outside the window, naming `what` and the window.
    fn check(&self, what: &str, now: SystemTime) -> Result<(), VerifyError> {
        let secs = unix_secs(now);
        let clamp = |t: i64| u64::try_from(t).unwrap_or(0);
        let what = format!(
            "{what} (valid from {} to {})",
            unix(clamp(self.not_before)),
            unix(clamp(self.not_after))
        );
        if (secs as i128) < i128::from(self.not_before) {
            return Err(VerifyError::NotYetValid {
                what,
                now: secs,
                not_before: clamp(self.not_before),
            });
        }
        if (secs as i128) > i128::from(self.not_after) {
            return Err(VerifyError::Expired {
                what,
                now: secs,
                not_after: clamp(self.not_after),
            });
        }
        Ok(())
    }
}

/// A built-in ARK and the intermediate (ASK or ASVK) it signed, with their validity windows.
struct Anchor {
    intermediate: Certificate,
    windows: [(String, Window); 2],
}

fn window_of(cert: &Certificate, what: &str) -> Result<Window, String> {
    let der = cert.to_der().map_err(|e| format!("built-in {what}: {e}"))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| format!("built-in {what}: {e}"))?;
    Ok(Window::of(&parsed))
}

/// The built-in ARK → ASK (VCEK) or ARK → ASVK (VLEK) chain of `product`, checked once.
fn anchor(product: SnpProduct, kind: KeyKind) -> Result<&'static Anchor, String> {
    static ANCHORS: [OnceLock<Result<Anchor, String>>; 6] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let (index, ark, ask, asvk) = match product {
        SnpProduct::Milan => (0, builtin::milan::ark(), builtin::milan::ask(), ASVK_MILAN),
        SnpProduct::Genoa => (1, builtin::genoa::ark(), builtin::genoa::ask(), ASVK_GENOA),
        SnpProduct::Turin => (2, builtin::turin::ark(), builtin::turin::ask(), ASVK_TURIN),
    };
    let slot = index * 2 + usize::from(kind == KeyKind::Vlek);
    ANCHORS[slot]
        .get_or_init(|| {
            let name = product.name();
            let inter_name = format!("AMD {name} {}", kind.intermediate());
            let ark_name = format!("AMD {name} ARK");
            let ark = ark.map_err(|e| format!("built-in {ark_name}: {e}"))?;
            let intermediate = match kind {
                KeyKind::Vcek => ask,
                KeyKind::Vlek => Certificate::from_pem(asvk),
            }
            .map_err(|e| format!("built-in {inter_name}: {e}"))?;
            (&ark, &ark)
                .verify()
                .map_err(|e| format!("built-in {ark_name} is not self-signed: {e}"))?;
            (&ark, &intermediate)
                .verify()
                .map_err(|e| format!("built-in {inter_name} is not signed by the ARK: {e}"))?;
            let windows = [
                (ark_name.clone(), window_of(&ark, &ark_name)?),
                (inter_name.clone(), window_of(&intermediate, &inter_name)?),
            ];
            Ok(Anchor {
                intermediate,
                windows,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// An endorsement certificate that chains to AMD's root and is valid for the report now.
pub(crate) struct Endorsement {
    /// The certificate, for the report signature.
    pub(crate) cert: Certificate,
}

/// The SPLs a certificate was issued for, as (name, value) in KDS order.
fn spls(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<(&'static str, u8)> {
    let mut out = Vec::new();
    for (name, oid) in [
        ("bootloader", OID_BL_SPL),
        ("tee", OID_TEE_SPL),
        ("snp", OID_SNP_SPL),
        ("microcode", OID_UCODE_SPL),
    ] {
        if let Some(value) = extension(cert, oid).and_then(der_small_integer) {
            out.push((name, value));
        }
    }
    out
}

fn extension<'a>(
    cert: &'a x509_parser::certificate::X509Certificate<'_>,
    oid: &str,
) -> Option<&'a [u8]> {
    cert.tbs_certificate
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == oid)
        .map(|e| e.value)
}

/// A DER INTEGER in 0..=255 (AMD encodes SPLs as INTEGERs, e.g. `02 01 03` or `02 02 00 d9`).
fn der_small_integer(value: &[u8]) -> Option<u8> {
    let (&tag, rest) = value.split_first()?;
    let (&len, body) = rest.split_first()?;
    if tag != 0x02 || usize::from(len) != body.len() || body.is_empty() {
        return None;
    }
    let body = match body {
        [0, rest @ ..] if !rest.is_empty() => rest,
        b => b,
    };
    match body {
        [b] => Some(*b),
        _ => None,
    }
}

/// The hwID extension: raw bytes (older certificates) or a DER OCTET STRING.
fn hw_id<'a>(cert: &'a x509_parser::certificate::X509Certificate<'_>) -> Option<&'a [u8]> {
    let value = extension(cert, OID_HW_ID)?;
    match value {
        [0x04, len, body @ ..] if usize::from(*len) == body.len() && *len < 0x80 => Some(body),
        raw => Some(raw),
    }
}

/// Checks `der` as the endorsement certificate of `kind` for `request`'s report at `now`:
/// the certificate type, the chain to a built-in ARK of one of `request.products`, every
/// validity window, and the TCB and chip the certificate was issued for.
pub(crate) fn check(
    der: &[u8],
    origin: &str,
    kind: KeyKind,
    request: &VcekRequest,
    now: SystemTime,
) -> Result<Endorsement, Unusable> {
    let key = kind.name();
    let refused =
        |reason: String| Unusable::Refused(VerifyError::CertificateChain { tee: TEE, reason });
    let parsed = x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| {
            refused(format!(
                "the {key} ({origin}) is not a valid certificate: {e}"
            ))
        })?;
    let cert = Certificate::from_der(der).map_err(|e| {
        refused(format!(
            "the {key} ({origin}) is not a valid certificate: {e}"
        ))
    })?;
    let common_name = parsed
        .tbs_certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("");
    let other = kind.other();
    if common_name == other.common_name() {
        return Err(refused(format!(
            "the report is signed by a {key} (signing_key {}), but the certificate {origin} is \
             a {} (subject CN {common_name}): a {key}-signed report cannot be verified with a \
             {}; supply the {key}",
            kind.signing_key(),
            other.name(),
            other.name()
        )));
    }

    let mut failures = Vec::new();
    let mut chained = None;
    for &product in &request.products {
        match anchor(product, kind) {
            Ok(anchor) => match (&anchor.intermediate, &cert).verify() {
                Ok(()) => {
                    chained = Some((product, anchor));
                    break;
                }
                Err(e) => failures.push(format!(
                    "not signed by the AMD {} {} ({e})",
                    product.name(),
                    kind.intermediate()
                )),
            },
            Err(e) => failures.push(e),
        }
    }
    let Some((product, anchor)) = chained else {
        return Err(refused(format!(
            "the {key} ({origin}) does not chain to AMD's root: {}",
            failures.join("; ")
        )));
    };
    for (what, window) in &anchor.windows {
        window
            .check(&format!("the built-in {what} certificate"), now)
            .map_err(Unusable::Refused)?;
    }
    Window::of(&parsed)
        .check(&format!("the AMD {key} certificate {origin}"), now)
        .map_err(Unusable::Stale)?;

    let tcb = request.tcb(product);
    let reported = [
        ("bootloader", tcb.bootloader),
        ("tee", tcb.tee),
        ("snp", tcb.snp),
        ("microcode", tcb.microcode),
    ];
    let issued = spls(&parsed);
    let mismatched: Vec<String> = issued
        .iter()
        .filter_map(|&(name, have)| {
            let want = reported.iter().find(|(n, _)| *n == name)?.1;
            (have != want).then(|| format!("{name} SPL {have} (report: {want})"))
        })
        .collect();
    if !mismatched.is_empty() {
        return Err(Unusable::Stale(VerifyError::CertificateChain {
            tee: TEE,
            reason: format!(
                "the {key} ({origin}) was issued for another TCB than the report's reported TCB: \
                 {}; the host supplied a stale {key}",
                mismatched.join(", ")
            ),
        }));
    }
    if kind == KeyKind::Vcek && request.chip_id != [0u8; 64] {
        if let Some(id) = hw_id(&parsed) {
            let matches = matches!(id.len(), 8 | 64) && request.chip_id[..id.len()] == *id;
            if !matches {
                return Err(Unusable::Stale(VerifyError::CertificateChain {
                    tee: TEE,
                    reason: format!(
                        "the VCEK ({origin}) was issued for another chip (hwID {}) than the \
                         report's CHIP_ID {}",
                        hex::encode(id),
                        hex::encode(request.chip_id)
                    ),
                }));
            }
        }
    }
    Ok(Endorsement { cert })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_small_integers() {
        assert_eq!(der_small_integer(&[2, 1, 3]), Some(3));
        assert_eq!(der_small_integer(&[2, 2, 0, 0xd9]), Some(0xd9));
        assert_eq!(der_small_integer(&[2, 2, 1, 0]), None);
        assert_eq!(der_small_integer(&[4, 1, 3]), None);
        assert_eq!(der_small_integer(&[2, 3, 0]), None);
        assert_eq!(der_small_integer(&[]), None);
    }

    #[test]
    fn built_in_asvks_chain_to_the_arks() {
        for product in [SnpProduct::Milan, SnpProduct::Genoa, SnpProduct::Turin] {
            let vlek = anchor(product, KeyKind::Vlek).unwrap_or_else(|e| panic!("{e}"));
            assert!(vlek.windows[1].0.ends_with("ASVK"), "{}", vlek.windows[1].0);
            anchor(product, KeyKind::Vcek).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn signing_key_kinds() {
        assert_eq!(KeyKind::from_signing_key(0).unwrap(), KeyKind::Vcek);
        assert_eq!(KeyKind::from_signing_key(1).unwrap(), KeyKind::Vlek);
        let e = KeyKind::from_signing_key(7).unwrap_err().to_string();
        assert!(e.contains("signing_key is 7"), "{e}");
    }
}

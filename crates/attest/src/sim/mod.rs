//! Simulation evidence: signed by a per-installation Ed25519 key, proves nothing about the
//! machine. Refused unless [`VerifyOptions::allow_simulation`] is set.
//!
//! Layout (214 bytes), as `coffer_platform::sim` produces it:
//! `b"COFFER-SIM-EVIDENCE\0"` (20) ‖ version u16 BE = 1 ‖ measurement (32) ‖ report data (64)
//! ‖ Ed25519 public key (32) ‖ Ed25519 signature (64) over all preceding bytes. Version 2 is
//! the same layout from a sim platform posing as a debug-mode TEE (`COFFER_SIM_DEBUG=1`).

mod claims;

use crate::{Claims, VerifyError, VerifyOptions};
use coffer_platform::TeeType;

/// The magic that starts simulation evidence.
pub const MAGIC: &[u8; 20] = b"COFFER-SIM-EVIDENCE\0";
/// The format version of a simulated production-mode TEE.
pub const VERSION: u16 = 1;
/// The format version of a simulated debug-mode TEE: its claims say `debug: true`.
pub const VERSION_DEBUG: u16 = 2;
/// Total length of simulation evidence.
pub const EVIDENCE_LEN: usize = 20 + 2 + 32 + 64 + 32 + 64;
/// Length of the signed part (everything but the signature).
pub const SIGNED_LEN: usize = EVIDENCE_LEN - 64;

/// Verifies simulation evidence and returns its claims.
pub fn verify(evidence: &[u8], options: &VerifyOptions) -> Result<Claims, VerifyError> {
    let tee = TeeType::Sim;
    if !options.allow_simulation {
        return Err(VerifyError::SimulationNotAllowed);
    }
    if evidence.len() != EVIDENCE_LEN {
        return Err(VerifyError::malformed(
            tee,
            format!("{} bytes, expected {EVIDENCE_LEN}", evidence.len()),
        ));
    }
    let (signed, signature) = evidence.split_at(SIGNED_LEN);
    if &signed[..20] != MAGIC {
        return Err(VerifyError::malformed(tee, "bad magic"));
    }
    let version = u16::from_be_bytes([signed[20], signed[21]]);
    if version != VERSION && version != VERSION_DEBUG {
        return Err(VerifyError::malformed(
            tee,
            format!("version {version}, expected {VERSION} or {VERSION_DEBUG}"),
        ));
    }
    let measurement = &signed[22..54];
    let report_data = &signed[54..118];
    let public_key: [u8; 32] = signed[118..150]
        .try_into()
        .map_err(|_| VerifyError::malformed(tee, "public key"))?;
    let signature: [u8; 64] = signature
        .try_into()
        .map_err(|_| VerifyError::malformed(tee, "signature"))?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&public_key)
        .map_err(|_| VerifyError::malformed(tee, "the public key is not a valid Ed25519 point"))?;
    key.verify_strict(signed, &ed25519_dalek::Signature::from_bytes(&signature))
        .map_err(|_| VerifyError::Signature {
            tee,
            what: "simulation evidence (Ed25519)",
        })?;
    Ok(claims::claims(
        measurement,
        report_data,
        &public_key,
        version == VERSION_DEBUG,
    ))
}

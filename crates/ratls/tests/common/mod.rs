//! Test-only simulation platform and evidence verifier, producing and checking the layout that
//! `coffer_platform::sim::SimPlatform::evidence` uses:
//!
//! `b"COFFER-SIM-EVIDENCE\0"` (20) ‖ version u16 BE = 1 ‖ measurement [32] ‖ report_data [64] ‖
//! Ed25519 public key [32] ‖ Ed25519 signature [64] over all preceding bytes.
//!
//! An independent generator of that layout: the tests check it against the real verifier
//! (`coffer_attest::verify` through `OfflineVerifier`), and `real_sim_platform_*` tests use the
//! real `SimPlatform` as well.
#![allow(dead_code)]

use std::sync::Arc;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_platform::{Evidence, Platform, PlatformError, PlatformKind, SealingKey, TeeType};
use coffer_ratls::{AttestedVerifier, OfflineVerifier};
use ed25519_dalek::{Signer, SigningKey};
use std::time::SystemTime;

pub const MAGIC: &[u8; 20] = b"COFFER-SIM-EVIDENCE\0";
pub const LEN: usize = 20 + 2 + 32 + 64 + 32 + 64;
pub const MEASUREMENT: [u8; 32] = [0x51; 32];

pub struct TestSimPlatform {
    key: SigningKey,
    pub measurement: [u8; 32],
}

impl std::fmt::Debug for TestSimPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestSimPlatform")
    }
}

impl TestSimPlatform {
    pub fn new() -> Self {
        TestSimPlatform {
            key: SigningKey::generate(&mut rand::rngs::OsRng),
            measurement: MEASUREMENT,
        }
    }

    pub fn signer(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
}

impl Platform for TestSimPlatform {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Sim
    }

    fn sealing_key(&self, _purpose: &str) -> Result<SealingKey, PlatformError> {
        Err(PlatformError::Unsupported(
            "test platform has no sealing key",
        ))
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<Evidence, PlatformError> {
        let mut out = Vec::with_capacity(LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&self.measurement);
        out.extend_from_slice(report_data);
        out.extend_from_slice(self.key.verifying_key().as_bytes());
        let sig = self.key.sign(&out);
        out.extend_from_slice(&sig.to_bytes());
        Ok(Evidence {
            tee: TeeType::Sim,
            report: out,
            certificates: vec![],
        })
    }
}

/// Returns fixed evidence whatever the report data (for embedding real fixture quotes).
#[derive(Debug)]
pub struct FixedPlatform(pub Evidence);

impl Platform for FixedPlatform {
    fn kind(&self) -> PlatformKind {
        PlatformKind::Sim
    }
    fn sealing_key(&self, _purpose: &str) -> Result<SealingKey, PlatformError> {
        Err(PlatformError::Unsupported(
            "fixed platform has no sealing key",
        ))
    }
    fn evidence(&self, _report_data: &[u8; 64]) -> Result<Evidence, PlatformError> {
        Ok(self.0.clone())
    }
}

/// A policy granting `role` to simulation evidence with [`MEASUREMENT`].
pub fn sim_policy(role: &str, allow_simulation: bool) -> Arc<Policy> {
    Arc::new(
        Policy::from_yaml(&format!(
            "version: 1\nallow_simulation: {allow_simulation}\nroles:\n  - name: {role}\n    sim: {{ measurement: [\"{}\"] }}\n",
            hex::encode(MEASUREMENT)
        ))
        .unwrap(),
    )
}

pub fn sim_verifier(role: &str, allow_simulation: bool) -> Arc<AttestedVerifier> {
    Arc::new(AttestedVerifier::new(
        Arc::new(OfflineVerifier::new(VerifyOptions::new(SystemTime::now()))),
        sim_policy(role, allow_simulation),
    ))
}

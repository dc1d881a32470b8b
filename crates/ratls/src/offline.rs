//! The production [`EvidenceVerifier`]: `coffer_attest::verify`, offline, at the current time.

use std::time::SystemTime;

use coffer_attest::{Claims, Evidence, VerifyOptions};

use crate::EvidenceVerifier;

/// Verifies evidence with [`coffer_attest::verify`] using fixed collateral and VCEK sources.
///
/// Simulation evidence is verified cryptographically here and left to the policy to accept or
/// refuse: every [`coffer_attest::policy::Policy`] refuses it unless `allow_simulation: true`,
/// and that refusal names the rule, which an operator can act on.
#[derive(Debug, Clone)]
pub struct OfflineVerifier {
    options: VerifyOptions,
}

impl OfflineVerifier {
    /// A verifier with these sources; `options.now` is replaced by the time of each check.
    pub fn new(mut options: VerifyOptions) -> Self {
        options.allow_simulation = true;
        OfflineVerifier { options }
    }
}

impl EvidenceVerifier for OfflineVerifier {
    fn verify(&self, evidence: &Evidence) -> Result<Claims, String> {
        let mut options = self.options.clone();
        options.now = SystemTime::now();
        coffer_attest::verify(evidence, &options).map_err(|e| e.to_string())
    }
}

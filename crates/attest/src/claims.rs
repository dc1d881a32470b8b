//! The verified-evidence result: what a policy needs to know, normalised across TEEs.

use coffer_platform::TeeType;
use serde::{Deserialize, Serialize};

/// Bytes shown as lower-case hex in JSON and policies.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Hex(pub Vec<u8>);

impl std::fmt::Debug for Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl Serialize for Hex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        hex::decode(text.trim())
            .map(Hex)
            .map_err(serde::de::Error::custom)
    }
}

impl From<&[u8]> for Hex {
    fn from(b: &[u8]) -> Self {
        Hex(b.to_vec())
    }
}

/// Claims from evidence that passed cryptographic verification. Nothing here has been checked
/// against a policy yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Which TEE produced the evidence.
    #[serde(with = "tee_name")]
    pub tee: TeeType,
    /// True for debug enclaves / debug guests, whose memory the host can read.
    pub debug: bool,
    /// The TCB status from the vendor's TCB info: `UpToDate`, `SWHardeningNeeded`,
    /// `ConfigurationNeeded`, `ConfigurationAndSWHardeningNeeded`, `OutOfDate`,
    /// `OutOfDateConfigurationNeeded`, `Revoked`; `NotApplicable` for SNP and sim.
    pub tcb_status: String,
    /// Security advisory ids that apply (e.g. `INTEL-SA-00615`).
    pub advisories: Vec<String>,
    /// The 64 bytes of report data the evidence commits to.
    pub report_data: Hex,
    /// TEE-specific measurements.
    pub measurements: Measurements,
}

impl Claims {
    /// The measurement that names the code: the sim executable hash, SGX MRENCLAVE, TDX MRTD,
    /// or the SNP launch measurement. For logs and audit records.
    pub fn primary_measurement(&self) -> &[u8] {
        match &self.measurements {
            Measurements::Sim { measurement, .. } => &measurement.0,
            Measurements::Sgx { mr_enclave, .. } => &mr_enclave.0,
            Measurements::Tdx { mr_td, .. } => &mr_td.0,
            Measurements::Snp { measurement, .. } => &measurement.0,
        }
    }
}

/// Measurements, per TEE type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Measurements {
    /// Simulation evidence.
    Sim {
        /// SHA-256 of the executable that produced the evidence.
        measurement: Hex,
        /// The per-installation simulation signing key (Ed25519 public key).
        signer: Hex,
    },
    /// SGX enclave identity.
    Sgx {
        /// MRENCLAVE: hash of the enclave's initial contents.
        mr_enclave: Hex,
        /// MRSIGNER: hash of the enclave signer's public key.
        mr_signer: Hex,
        /// ISV product id.
        isv_prod_id: u16,
        /// ISV security version number.
        isv_svn: u16,
    },
    /// TDX trust domain identity.
    Tdx {
        /// MRTD: measurement of the initial TD contents.
        mr_td: Hex,
        /// RTMR0..3: runtime measurement registers.
        rtmr: [Hex; 4],
        /// MRCONFIGID.
        mr_config_id: Hex,
        /// MROWNER.
        mr_owner: Hex,
        /// MROWNERCONFIG.
        mr_owner_config: Hex,
        /// TEE_TCB_SVN.
        tee_tcb_svn: Hex,
    },
    /// SEV-SNP guest identity.
    Snp {
        /// Launch measurement.
        measurement: Hex,
        /// HOST_DATA provided at launch.
        host_data: Hex,
        /// Guest policy bits.
        policy: u64,
        /// Guest SVN.
        guest_svn: u32,
        /// VMPL the report was requested at.
        vmpl: u32,
        /// The reported TCB version (raw u64).
        reported_tcb: u64,
        /// The reported TCB split into its security patch levels (the layout depends on the
        /// CPU generation, which the report names from version 3 on).
        #[serde(default)]
        reported_tcb_spl: SnpTcb,
    },
}

/// An SEV-SNP TCB version split into its security patch levels (SPLs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpTcb {
    /// Bootloader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
    /// FMC SPL (Turin only).
    pub fmc: Option<u8>,
}

mod tee_name {
    use coffer_platform::TeeType;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &TeeType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TeeType, D::Error> {
        let name = String::deserialize(d)?;
        TeeType::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown TEE type {name:?}")))
    }
}

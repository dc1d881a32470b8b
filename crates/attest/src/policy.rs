//! Role policy: maps verified [`Claims`] to a named role.
//!
//! A policy is a YAML file:
//!
//! ```yaml
//! version: 1
//! allow_simulation: false       # default false: simulation evidence is refused
//! allow_debug: false            # default false: debug enclaves and guests are refused
//! accepted_tcb_statuses: [UpToDate, SWHardeningNeeded]   # default [UpToDate]
//! roles:
//!   - name: kms-plugin
//!     sgx:
//!       mr_enclave: ["<64 hex>", "<64 hex>"]   # any of these
//!       mr_signer: ["<64 hex>"]
//!       isv_prod_id: 1
//!       min_isv_svn: 2
//!     tdx:
//!       mr_td: ["<96 hex>"]
//!       rtmr: { 0: ["<96 hex>"], 1: ["<96 hex>"] }
//!       mr_config_id: ["<96 hex>"]
//!       min_tee_tcb_svn: "<32 hex>"   # each of the 16 components must be >= this
//!     snp:
//!       measurement: ["<96 hex>"]
//!       host_data: ["<64 hex>"]
//!       min_guest_svn: 1
//!       vmpl: [0]                  # default [0]; e.g. [0, 2] for a guest under an SVSM
//!       min_reported_tcb: { bootloader: 3, tee: 0, snp: 8, microcode: 115 }
//!       policy_must_not_have: [debug, migrate_ma]
//!     accepted_tcb_statuses: [UpToDate]   # optional per-role override
//!   - name: workload:payments
//!     sim: { measurement: ["<64 hex>"] }
//! ```
//!
//! Rules:
//!
//! * Every mapping refuses unknown keys, so a typo (`mr_encalve`) is an error, not a silently
//!   ignored rule.
//! * Within a TEE section every field given must match; a field left out accepts any value. A list
//!   accepts any of its values. An empty list is an error (leave the field out instead).
//! * SGX, TDX and SNP sections must pin an identity (SGX: `mr_enclave` or `mr_signer`; TDX: `mr_td`,
//!   `rtmr`, `mr_config_id`, `mr_owner` or `mr_owner_config`; SNP: `measurement` or `host_data`).
//!   A `sim` section may be empty (any simulation evidence), since simulation is refused unless
//!   `allow_simulation: true` anyway.
//! * Evaluation: first the global refusals (simulation, debug), then the roles in file order; the
//!   first role whose section for the evidence's TEE type matches wins, including its TCB status
//!   check (the role's `accepted_tcb_statuses`, else the global one). `NotApplicable` (SNP, sim)
//!   passes the TCB status check; for SNP, pin `min_guest_svn`, `min_reported_tcb` and the launch
//!   measurement instead. An SNP section accepts reports requested at VMPL 0 only unless its
//!   `vmpl` lists others.
//!
//! Validation errors name the file, the field path and, where the YAML parser knows it, the line
//! and column: `policy.yaml: roles[0].sgx.mr_enclave[1]: expected 64 hex characters, got 63 at line
//! 7 column 9`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use coffer_platform::TeeType;
use serde::{Deserialize, Deserializer};

use crate::claims::{Claims, Measurements, SnpTcb};

/// The only policy file format version this build understands.
pub const POLICY_VERSION: u32 = 1;

/// Longest accepted role name.
pub const MAX_ROLE_NAME_LEN: usize = 128;

/// Largest policy file [`Policy::load`] reads.
pub const MAX_POLICY_FILE_SIZE: u64 = 1 << 20;

/// A policy file that could not be read or is not valid.
#[derive(Debug)]
pub struct PolicyError {
    file: Option<PathBuf>,
    message: String,
    line: Option<usize>,
    column: Option<usize>,
}

impl PolicyError {
    fn new(message: impl Into<String>) -> Self {
        PolicyError {
            file: None,
            message: message.into(),
            line: None,
            column: None,
        }
    }

    fn from_yaml(e: serde_yaml_ng::Error, text: &str) -> Self {
        let location = e.location();
        PolicyError {
            file: None,
            message: crate::yaml::error_text(&e, text),
            line: Some(location.as_ref().map_or(1, |l| l.line())),
            column: Some(location.as_ref().map_or(1, |l| l.column())),
        }
    }

    fn in_file(mut self, file: &Path) -> Self {
        self.file = Some(file.to_path_buf());
        self
    }

    /// The policy file, when the policy was [loaded](Policy::load) from one.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The 1-based line of the error, when the YAML parser reported one.
    pub fn line(&self) -> Option<usize> {
        self.line
    }

    /// The 1-based column of the error, when the YAML parser reported one.
    pub fn column(&self) -> Option<usize> {
        self.column
    }

    /// The message without the file name: field path, problem and, when known, position.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "policy {}: {}", file.display(), self.message),
            None => write!(f, "policy: {}", self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

/// The role a peer was granted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Role {
    /// The role's name as written in the policy (e.g. `kms-plugin`, `workload:payments`).
    pub name: String,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// Why no role was granted: global refusals first, then one reason per role considered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Human-readable reasons, e.g. `role kms-plugin: sgx mr_enclave 9f… is not accepted`.
    pub reasons: Vec<String>,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reasons.is_empty() {
            return f.write_str("no role matches");
        }
        f.write_str(&self.reasons.join("; "))
    }
}

impl std::error::Error for Denial {}

/// A validated role policy.
#[derive(Clone, Debug)]
pub struct Policy {
    allow_simulation: bool,
    allow_debug: bool,
    accepted_tcb_statuses: Vec<TcbStatus>,
    roles: Vec<RoleRule>,
}

impl Policy {
    /// Parses and validates a policy.
    pub fn from_yaml(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile =
            serde_yaml_ng::from_str(text).map_err(|e| PolicyError::from_yaml(e, text))?;
        Ok(Policy {
            allow_simulation: file.allow_simulation,
            allow_debug: file.allow_debug,
            accepted_tcb_statuses: file
                .accepted_tcb_statuses
                .unwrap_or_else(|| vec![TcbStatus::UpToDate]),
            roles: file.roles,
        })
    }

    /// Reads, parses and validates a policy file (at most [`MAX_POLICY_FILE_SIZE`] bytes).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let meta = std::fs::metadata(path)
            .map_err(|e| PolicyError::new(format!("cannot read: {e}")).in_file(path))?;
        if meta.len() > MAX_POLICY_FILE_SIZE {
            return Err(PolicyError::new(format!(
                "file is {} bytes; the limit is {MAX_POLICY_FILE_SIZE}",
                meta.len()
            ))
            .in_file(path));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::new(format!("cannot read: {e}")).in_file(path))?;
        Policy::from_yaml(&text).map_err(|e| e.in_file(path))
    }

    /// The role names, in evaluation order.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().map(|r| r.name.as_str())
    }

    /// The same policy granting only role `name` (`None` when it does not define it): for a
    /// caller that must hold its peer to one role, such as a keyd replica checking that the
    /// replica it joins is a `keyd-peer`. The global rules and the role's rule are unchanged;
    /// a role listed earlier no longer shadows it.
    pub fn only_role(&self, name: &str) -> Option<Policy> {
        let roles: Vec<RoleRule> = self
            .roles
            .iter()
            .filter(|r| r.name == name)
            .cloned()
            .collect();
        if roles.is_empty() {
            return None;
        }
        Some(Policy {
            roles,
            ..self.clone()
        })
    }

    /// True when the policy accepts simulation evidence at all.
    pub fn allows_simulation(&self) -> bool {
        self.allow_simulation
    }

    /// Grants the first role whose rule for the claims' TEE type matches, or says why none did.
    pub fn evaluate(&self, claims: &Claims) -> Result<Role, Denial> {
        let mut reasons = Vec::new();
        if claims.tee == TeeType::Sim && !self.allow_simulation {
            reasons.push("simulation evidence refused: allow_simulation is false".to_string());
        }
        if claims.debug && !self.allow_debug {
            reasons.push(format!(
                "debug {} refused: allow_debug is false",
                if matches!(claims.tee, TeeType::Sgx) {
                    "enclave"
                } else {
                    "TEE"
                }
            ));
        }
        if !reasons.is_empty() {
            return Err(Denial { reasons });
        }
        if self.roles.is_empty() {
            return Err(Denial {
                reasons: vec!["the policy defines no roles".to_string()],
            });
        }
        for role in &self.roles {
            match role.check(claims, &self.accepted_tcb_statuses) {
                Ok(()) => {
                    return Ok(Role {
                        name: role.name.clone(),
                    })
                }
                Err(why) => reasons.push(format!("role {}: {why}", role.name)),
            }
        }
        Err(Denial { reasons })
    }
}

// ---------------------------------------------------------------------------------------------
// File format.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFileRaw {
    #[allow(dead_code)] // checked while parsing, for the position
    version: Version,
    #[serde(default)]
    allow_simulation: bool,
    #[serde(default)]
    allow_debug: bool,
    #[serde(default, deserialize_with = "non_empty_statuses")]
    accepted_tcb_statuses: Option<Vec<TcbStatus>>,
    #[serde(default, deserialize_with = "unique_roles")]
    roles: Vec<RoleRule>,
}

/// The policy format version; checked inside the visitor so the error carries its position.
struct Version;

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Version;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "the policy version, {POLICY_VERSION}")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Version, E> {
                if v == u64::from(POLICY_VERSION) {
                    return Ok(Version);
                }
                Err(E::custom(format!(
                    "unsupported policy version {v} (this build understands version {POLICY_VERSION})"
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Version, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("unsupported policy version {v}")))
                    .and_then(|v| self.visit_u64(v))
            }
        }
        d.deserialize_u64(V)
    }
}

/// A TCB status list that is left out or names at least one status; checked while the list is
/// read, so the error carries its position.
fn non_empty_statuses<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<TcbStatus>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<TcbStatus>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of TCB statuses")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut list = Vec::new();
            while let Some(status) = seq.next_element()? {
                list.push(status);
            }
            if list.is_empty() {
                return Err(serde::de::Error::custom(
                    "must not be empty (leave it out for the default: [UpToDate] globally, the \
                     global list in a role)",
                ));
            }
            Ok(list)
        }
    }
    d.deserialize_seq(V).map(Some)
}

/// The roles, refusing a repeated name while the list is read, so that the error carries the
/// list's position.
fn unique_roles<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RoleRule>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<RoleRule>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of roles")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            let mut roles: Vec<RoleRule> = Vec::new();
            while let Some(role) = seq.next_element::<RoleRule>()? {
                if let Some(first) = roles.iter().position(|r| r.name == role.name) {
                    return Err(serde::de::Error::custom(format!(
                        "duplicate role name {:?} at roles[{}] (already defined by roles[{first}])",
                        role.name,
                        roles.len()
                    )));
                }
                roles.push(role);
            }
            Ok(roles)
        }
    }
    d.deserialize_seq(V)
}

#[derive(Deserialize)]
#[serde(try_from = "PolicyFileRaw")]
struct PolicyFile {
    allow_simulation: bool,
    allow_debug: bool,
    accepted_tcb_statuses: Option<Vec<TcbStatus>>,
    roles: Vec<RoleRule>,
}

impl TryFrom<PolicyFileRaw> for PolicyFile {
    type Error = String;

    fn try_from(raw: PolicyFileRaw) -> Result<Self, String> {
        Ok(PolicyFile {
            allow_simulation: raw.allow_simulation,
            allow_debug: raw.allow_debug,
            accepted_tcb_statuses: raw.accepted_tcb_statuses,
            roles: raw.roles,
        })
    }
}

/// TCB status names, as in Intel's TCB info.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
enum TcbStatus {
    UpToDate,
    SWHardeningNeeded,
    ConfigurationNeeded,
    ConfigurationAndSWHardeningNeeded,
    OutOfDate,
    OutOfDateConfigurationNeeded,
    Revoked,
}

impl TcbStatus {
    fn name(self) -> &'static str {
        match self {
            TcbStatus::UpToDate => "UpToDate",
            TcbStatus::SWHardeningNeeded => "SWHardeningNeeded",
            TcbStatus::ConfigurationNeeded => "ConfigurationNeeded",
            TcbStatus::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            TcbStatus::OutOfDate => "OutOfDate",
            TcbStatus::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            TcbStatus::Revoked => "Revoked",
        }
    }
}

fn status_list(list: &[TcbStatus]) -> String {
    let names: Vec<&str> = list.iter().map(|s| s.name()).collect();
    format!("[{}]", names.join(", "))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleRuleRaw {
    name: RoleName,
    #[serde(default)]
    sgx: Option<SgxRule>,
    #[serde(default)]
    tdx: Option<TdxRule>,
    #[serde(default)]
    snp: Option<SnpRule>,
    #[serde(default)]
    sim: Option<SimRule>,
    #[serde(default, deserialize_with = "non_empty_statuses")]
    accepted_tcb_statuses: Option<Vec<TcbStatus>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "RoleRuleRaw")]
struct RoleRule {
    name: String,
    sgx: Option<SgxRule>,
    tdx: Option<TdxRule>,
    snp: Option<SnpRule>,
    sim: Option<SimRule>,
    accepted_tcb_statuses: Option<Vec<TcbStatus>>,
}

impl TryFrom<RoleRuleRaw> for RoleRule {
    type Error = String;

    fn try_from(raw: RoleRuleRaw) -> Result<Self, String> {
        if raw.sgx.is_none() && raw.tdx.is_none() && raw.snp.is_none() && raw.sim.is_none() {
            return Err(format!(
                "role {:?} has no TEE section: give at least one of sgx, tdx, snp, sim",
                raw.name.0
            ));
        }
        Ok(RoleRule {
            name: raw.name.0,
            sgx: raw.sgx,
            tdx: raw.tdx,
            snp: raw.snp,
            sim: raw.sim,
            accepted_tcb_statuses: raw.accepted_tcb_statuses,
        })
    }
}

/// A role name: 1..=128 characters, lower-case ASCII letters, digits, `-`, `_`, `.` and `:`
/// (as a separator, e.g. `workload:payments`); starts with a letter; every `:`-separated part
/// is non-empty and ends with a letter or digit.
struct RoleName(String);

impl<'de> Deserialize<'de> for RoleName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Checked inside the visitor so that the error carries this field's path and position.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RoleName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a role name")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RoleName, E> {
                check_role_name(s).map_err(E::custom)?;
                Ok(RoleName(s.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

fn check_role_name(name: &str) -> Result<(), String> {
    const SYNTAX: &str = "lower-case letters, digits, '-', '_', '.', and ':' between non-empty parts, starting with a letter, e.g. kms-plugin or workload:payments";
    if name.is_empty() {
        return Err("role name must not be empty".into());
    }
    if name.len() > MAX_ROLE_NAME_LEN {
        return Err(format!(
            "role name is {} characters; at most {MAX_ROLE_NAME_LEN} allowed",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.' | ':'))
    {
        return Err(format!(
            "invalid character {bad:?} in role name {name:?}: use {SYNTAX}"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!(
            "role name {name:?} must start with a letter: use {SYNTAX}"
        ));
    }
    for part in name.split(':') {
        if !part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return Err(format!("invalid role name {name:?}: use {SYNTAX}"));
        }
    }
    Ok(())
}

/// Exactly `N` bytes, written as `2N` hex digits.
#[derive(Clone, PartialEq, Eq)]
struct HexN<const N: usize>(Vec<u8>);

impl<const N: usize> fmt::Debug for HexN<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl<'de, const N: usize> Deserialize<'de> for HexN<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const N: usize>;
        impl<const N: usize> serde::de::Visitor<'_> for V<N> {
            type Value = HexN<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a string of {} hex characters", 2 * N)
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HexN<N>, E> {
                let s = s.trim();
                let s = s
                    .strip_prefix("0x")
                    .or_else(|| s.strip_prefix("0X"))
                    .unwrap_or(s);
                let got = s.chars().count();
                if got != 2 * N {
                    return Err(E::custom(format!(
                        "expected {} hex characters, got {got}",
                        2 * N
                    )));
                }
                match hex::decode(s) {
                    Ok(bytes) => Ok(HexN(bytes)),
                    Err(_) => Err(E::custom(format!(
                        "expected {} hex characters, got non-hex {:?}",
                        2 * N,
                        s.chars().find(|c| !c.is_ascii_hexdigit()).unwrap_or('?')
                    ))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<HexN<N>, E> {
                Err(E::custom(format!(
                    "expected {} hex characters in quotes, got a number",
                    2 * N
                )))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<HexN<N>, E> {
                self.visit_u64(v.unsigned_abs())
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<HexN<N>, E> {
                self.visit_u64(0)
            }
        }
        d.deserialize_any(V::<N>)
    }
}

/// A non-empty list of accepted values.
#[derive(Clone, Debug)]
struct OneOf<const N: usize>(Vec<HexN<N>>);

impl<'de, const N: usize> Deserialize<'de> for OneOf<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Checked inside the visitor so that the error carries this field's path and position.
        struct V<const N: usize>;
        impl<'de, const N: usize> serde::de::Visitor<'de> for V<N> {
            type Value = OneOf<N>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a list of strings of {} hex characters", 2 * N)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOf<N>, A::Error> {
                let mut list = Vec::new();
                while let Some(item) = seq.next_element::<HexN<N>>()? {
                    list.push(item);
                }
                if list.is_empty() {
                    return Err(serde::de::Error::custom(
                        "must not be empty (leave the field out to accept any value)",
                    ));
                }
                Ok(OneOf(list))
            }
        }
        d.deserialize_seq(V::<N>)
    }
}

impl<const N: usize> OneOf<N> {
    fn accepts(&self, value: &[u8]) -> bool {
        self.0.iter().any(|v| v.0 == value)
    }
}

fn check_one_of<const N: usize>(
    tee: &str,
    field: &str,
    rule: &Option<OneOf<N>>,
    value: &[u8],
) -> Result<(), String> {
    match rule {
        Some(list) if !list.accepts(value) => Err(format!(
            "{tee} {field} {} is not accepted",
            hex::encode(value)
        )),
        _ => Ok(()),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "SgxRuleRaw")]
struct SgxRule {
    mr_enclave: Option<OneOf<32>>,
    mr_signer: Option<OneOf<32>>,
    isv_prod_id: Option<u16>,
    min_isv_svn: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SgxRuleRaw {
    #[serde(default)]
    mr_enclave: Option<OneOf<32>>,
    #[serde(default)]
    mr_signer: Option<OneOf<32>>,
    #[serde(default)]
    isv_prod_id: Option<u16>,
    #[serde(default)]
    min_isv_svn: Option<u16>,
}

impl TryFrom<SgxRuleRaw> for SgxRule {
    type Error = &'static str;
    fn try_from(r: SgxRuleRaw) -> Result<Self, Self::Error> {
        if r.mr_enclave.is_none() && r.mr_signer.is_none() {
            return Err("sgx: must pin mr_enclave or mr_signer (a rule with neither would accept any enclave)");
        }
        Ok(SgxRule {
            mr_enclave: r.mr_enclave,
            mr_signer: r.mr_signer,
            isv_prod_id: r.isv_prod_id,
            min_isv_svn: r.min_isv_svn,
        })
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "TdxRuleRaw")]
struct TdxRule {
    mr_td: Option<OneOf<48>>,
    rtmr: BTreeMap<usize, OneOf<48>>,
    mr_config_id: Option<OneOf<48>>,
    mr_owner: Option<OneOf<48>>,
    mr_owner_config: Option<OneOf<48>>,
    min_tee_tcb_svn: Option<HexN<16>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TdxRuleRaw {
    #[serde(default)]
    mr_td: Option<OneOf<48>>,
    #[serde(default)]
    rtmr: BTreeMap<usize, OneOf<48>>,
    #[serde(default)]
    mr_config_id: Option<OneOf<48>>,
    #[serde(default)]
    mr_owner: Option<OneOf<48>>,
    #[serde(default)]
    mr_owner_config: Option<OneOf<48>>,
    #[serde(default)]
    min_tee_tcb_svn: Option<HexN<16>>,
}

impl TryFrom<TdxRuleRaw> for TdxRule {
    type Error = String;
    fn try_from(r: TdxRuleRaw) -> Result<Self, String> {
        if let Some(bad) = r.rtmr.keys().find(|&&k| k > 3) {
            return Err(format!(
                "tdx.rtmr: index {bad} out of range (RTMRs are 0 to 3)"
            ));
        }
        if r.mr_td.is_none()
            && r.rtmr.is_empty()
            && r.mr_config_id.is_none()
            && r.mr_owner.is_none()
            && r.mr_owner_config.is_none()
        {
            return Err(
                "tdx: must pin at least one of mr_td, rtmr, mr_config_id, mr_owner, mr_owner_config"
                    .into(),
            );
        }
        Ok(TdxRule {
            mr_td: r.mr_td,
            rtmr: r.rtmr,
            mr_config_id: r.mr_config_id,
            mr_owner: r.mr_owner,
            mr_owner_config: r.mr_owner_config,
            min_tee_tcb_svn: r.min_tee_tcb_svn,
        })
    }
}

/// SEV-SNP guest policy bits a rule can require or forbid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SnpPolicyFlag {
    /// Bit 16: SMT allowed.
    Smt,
    /// Bit 18: migration agent allowed.
    MigrateMa,
    /// Bit 19: debugging allowed.
    Debug,
    /// Bit 20: single socket only.
    SingleSocket,
    /// Bit 21: CXL may be populated with guest memory.
    CxlAllow,
    /// Bit 22: AES-256-XTS memory encryption required.
    MemAes256Xts,
    /// Bit 23: RAPL disabled.
    RaplDis,
    /// Bit 24: ciphertext hiding required.
    CiphertextHiding,
    /// Bit 25: guest page swap disabled.
    PageSwapDisable,
}

impl SnpPolicyFlag {
    fn bit(self) -> u64 {
        1 << match self {
            SnpPolicyFlag::Smt => 16,
            SnpPolicyFlag::MigrateMa => 18,
            SnpPolicyFlag::Debug => 19,
            SnpPolicyFlag::SingleSocket => 20,
            SnpPolicyFlag::CxlAllow => 21,
            SnpPolicyFlag::MemAes256Xts => 22,
            SnpPolicyFlag::RaplDis => 23,
            SnpPolicyFlag::CiphertextHiding => 24,
            SnpPolicyFlag::PageSwapDisable => 25,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SnpPolicyFlag::Smt => "smt",
            SnpPolicyFlag::MigrateMa => "migrate_ma",
            SnpPolicyFlag::Debug => "debug",
            SnpPolicyFlag::SingleSocket => "single_socket",
            SnpPolicyFlag::CxlAllow => "cxl_allow",
            SnpPolicyFlag::MemAes256Xts => "mem_aes_256_xts",
            SnpPolicyFlag::RaplDis => "rapl_dis",
            SnpPolicyFlag::CiphertextHiding => "ciphertext_hiding",
            SnpPolicyFlag::PageSwapDisable => "page_swap_disable",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "SnpRuleRaw")]
struct SnpRule {
    measurement: Option<OneOf<48>>,
    host_data: Option<OneOf<32>>,
    min_guest_svn: Option<u32>,
    vmpl: Option<Vec<u32>>,
    min_reported_tcb: Option<MinReportedTcb>,
    policy_must_have: Vec<SnpPolicyFlag>,
    policy_must_not_have: Vec<SnpPolicyFlag>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnpRuleRaw {
    #[serde(default)]
    measurement: Option<OneOf<48>>,
    #[serde(default)]
    host_data: Option<OneOf<32>>,
    #[serde(default)]
    min_guest_svn: Option<u32>,
    #[serde(default)]
    vmpl: Option<Vmpls>,
    #[serde(default)]
    min_reported_tcb: Option<MinReportedTcb>,
    #[serde(default)]
    policy_must_have: Vec<SnpPolicyFlag>,
    #[serde(default)]
    policy_must_not_have: Vec<SnpPolicyFlag>,
}

impl TryFrom<SnpRuleRaw> for SnpRule {
    type Error = String;
    fn try_from(r: SnpRuleRaw) -> Result<Self, String> {
        if r.measurement.is_none() && r.host_data.is_none() {
            return Err("snp: must pin measurement or host_data (a rule with neither would accept any guest)".into());
        }
        if let Some(Vmpls(list)) = &r.vmpl {
            if let Some(bad) = list.iter().find(|&&v| v > 3) {
                return Err(format!("snp.vmpl: {bad} out of range (0 to 3)"));
            }
        }
        if let Some(both) = r
            .policy_must_have
            .iter()
            .find(|f| r.policy_must_not_have.contains(f))
        {
            return Err(format!(
                "snp: policy flag {} is both in policy_must_have and policy_must_not_have",
                both.name()
            ));
        }
        Ok(SnpRule {
            measurement: r.measurement,
            host_data: r.host_data,
            min_guest_svn: r.min_guest_svn,
            vmpl: r.vmpl.map(|v| v.0),
            min_reported_tcb: r.min_reported_tcb,
            policy_must_have: r.policy_must_have,
            policy_must_not_have: r.policy_must_not_have,
        })
    }
}

/// The VMPLs a rule accepts: one number or a non-empty list.
struct Vmpls(Vec<u32>);

impl<'de> Deserialize<'de> for Vmpls {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vmpls;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a VMPL (0 to 3) or a list of VMPLs")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Vmpls, E> {
                u32::try_from(v)
                    .map(|v| Vmpls(vec![v]))
                    .map_err(|_| E::custom(format!("{v} out of range (0 to 3)")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Vmpls, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("{v} out of range (0 to 3)")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Vmpls, A::Error> {
                let mut list = Vec::new();
                while let Some(v) = seq.next_element::<u32>()? {
                    list.push(v);
                }
                if list.is_empty() {
                    return Err(serde::de::Error::custom(
                        "must not be empty (leave it out to accept VMPL 0 only)",
                    ));
                }
                Ok(Vmpls(list))
            }
        }
        d.deserialize_any(V)
    }
}

/// The lowest reported TCB an SNP rule accepts, per security patch level; a level left out is
/// not checked.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MinReportedTcb {
    #[serde(default)]
    bootloader: Option<u8>,
    #[serde(default)]
    tee: Option<u8>,
    #[serde(default)]
    snp: Option<u8>,
    #[serde(default)]
    microcode: Option<u8>,
    #[serde(default)]
    fmc: Option<u8>,
}

impl MinReportedTcb {
    /// The first level below its minimum, as a refusal.
    fn check(&self, have: &SnpTcb) -> Result<(), String> {
        let levels = [
            ("bootloader", self.bootloader, Some(have.bootloader)),
            ("tee", self.tee, Some(have.tee)),
            ("snp", self.snp, Some(have.snp)),
            ("microcode", self.microcode, Some(have.microcode)),
            ("fmc", self.fmc, have.fmc),
        ];
        for (name, min, have) in levels {
            match (min, have) {
                (Some(min), Some(have)) if have < min => {
                    return Err(format!(
                        "snp reported TCB {name} SPL {have} is below min_reported_tcb.{name} {min}"
                    ))
                }
                (Some(min), None) => {
                    return Err(format!(
                        "snp reported TCB has no {name} SPL (only Turin and later have one), but \
                         min_reported_tcb.{name} is {min}"
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimRule {
    #[serde(default)]
    measurement: Option<OneOf<32>>,
    #[serde(default)]
    signer: Option<OneOf<32>>,
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

impl RoleRule {
    fn check(&self, claims: &Claims, global_tcb: &[TcbStatus]) -> Result<(), String> {
        let tee = claims.tee;
        let section_missing = || format!("no {tee} rule");
        match (&claims.measurements, tee) {
            (Measurements::Sgx { .. }, TeeType::Sgx) => self
                .sgx
                .as_ref()
                .ok_or_else(section_missing)?
                .check(claims)?,
            (Measurements::Tdx { .. }, TeeType::Tdx) => self
                .tdx
                .as_ref()
                .ok_or_else(section_missing)?
                .check(claims)?,
            (Measurements::Snp { .. }, TeeType::Snp) => self
                .snp
                .as_ref()
                .ok_or_else(section_missing)?
                .check(claims)?,
            (Measurements::Sim { .. }, TeeType::Sim) => self
                .sim
                .as_ref()
                .ok_or_else(section_missing)?
                .check(claims)?,
            _ => {
                return Err(format!(
                    "claims are inconsistent: TEE type {tee} with other measurements"
                ))
            }
        }
        self.check_tcb(claims, global_tcb)
    }

    fn check_tcb(&self, claims: &Claims, global: &[TcbStatus]) -> Result<(), String> {
        if claims.tcb_status == "NotApplicable" && matches!(claims.tee, TeeType::Snp | TeeType::Sim)
        {
            return Ok(());
        }
        let accepted = self.accepted_tcb_statuses.as_deref().unwrap_or(global);
        if accepted.iter().any(|s| s.name() == claims.tcb_status) {
            return Ok(());
        }
        let mut msg = format!(
            "tcb status {} is not accepted (accepted: {}",
            claims.tcb_status,
            status_list(accepted)
        );
        if self.accepted_tcb_statuses.is_none() {
            msg.push_str(" from the global accepted_tcb_statuses");
        }
        msg.push(')');
        if !claims.advisories.is_empty() {
            msg.push_str(&format!("; advisories: {}", claims.advisories.join(", ")));
        }
        Err(msg)
    }
}

impl SgxRule {
    fn check(&self, claims: &Claims) -> Result<(), String> {
        let Measurements::Sgx {
            mr_enclave,
            mr_signer,
            isv_prod_id,
            isv_svn,
        } = &claims.measurements
        else {
            return Err("not sgx claims".into());
        };
        check_one_of("sgx", "mr_enclave", &self.mr_enclave, &mr_enclave.0)?;
        check_one_of("sgx", "mr_signer", &self.mr_signer, &mr_signer.0)?;
        if let Some(want) = self.isv_prod_id {
            if *isv_prod_id != want {
                return Err(format!(
                    "sgx isv_prod_id {isv_prod_id} is not accepted (want {want})"
                ));
            }
        }
        if let Some(min) = self.min_isv_svn {
            if *isv_svn < min {
                return Err(format!("sgx isv_svn {isv_svn} is below min_isv_svn {min}"));
            }
        }
        Ok(())
    }
}

impl TdxRule {
    fn check(&self, claims: &Claims) -> Result<(), String> {
        let Measurements::Tdx {
            mr_td,
            rtmr,
            mr_config_id,
            mr_owner,
            mr_owner_config,
            tee_tcb_svn,
        } = &claims.measurements
        else {
            return Err("not tdx claims".into());
        };
        check_one_of("tdx", "mr_td", &self.mr_td, &mr_td.0)?;
        for (index, accepted) in &self.rtmr {
            let value = &rtmr[*index].0;
            if !accepted.accepts(value) {
                return Err(format!(
                    "tdx rtmr[{index}] {} is not accepted",
                    hex::encode(value)
                ));
            }
        }
        check_one_of("tdx", "mr_config_id", &self.mr_config_id, &mr_config_id.0)?;
        check_one_of("tdx", "mr_owner", &self.mr_owner, &mr_owner.0)?;
        check_one_of(
            "tdx",
            "mr_owner_config",
            &self.mr_owner_config,
            &mr_owner_config.0,
        )?;
        if let Some(min) = &self.min_tee_tcb_svn {
            let have = &tee_tcb_svn.0;
            let below = have.len() != min.0.len() || have.iter().zip(&min.0).any(|(h, m)| h < m);
            if below {
                return Err(format!(
                    "tdx tee_tcb_svn {} is below min_tee_tcb_svn {}",
                    hex::encode(have),
                    hex::encode(&min.0)
                ));
            }
        }
        Ok(())
    }
}

impl SnpRule {
    fn check(&self, claims: &Claims) -> Result<(), String> {
        let Measurements::Snp {
            measurement,
            host_data,
            policy,
            guest_svn,
            vmpl,
            reported_tcb_spl,
            ..
        } = &claims.measurements
        else {
            return Err("not snp claims".into());
        };
        check_one_of("snp", "measurement", &self.measurement, &measurement.0)?;
        check_one_of("snp", "host_data", &self.host_data, &host_data.0)?;
        if let Some(min) = self.min_guest_svn {
            if *guest_svn < min {
                return Err(format!(
                    "snp guest_svn {guest_svn} is below min_guest_svn {min}"
                ));
            }
        }
        match &self.vmpl {
            Some(accepted) if !accepted.contains(vmpl) => {
                return Err(format!(
                    "snp vmpl {vmpl} is not accepted (accepted: {accepted:?} from snp.vmpl)"
                ));
            }
            // A report requested at VMPL 1-3 was asked for by software less privileged than
            // the guest's VMPL 0 (under an SVSM, the guest OS itself).
            None if *vmpl != 0 => {
                return Err(format!(
                    "snp vmpl {vmpl} is not accepted (only VMPL 0 by default; list the VMPLs to \
                     accept in snp.vmpl, e.g. vmpl: [0, {vmpl}] for a guest under an SVSM)"
                ));
            }
            _ => {}
        }
        if let Some(min) = &self.min_reported_tcb {
            min.check(reported_tcb_spl)?;
        }
        for flag in &self.policy_must_have {
            if policy & flag.bit() == 0 {
                return Err(format!(
                    "snp guest policy {policy:#x} lacks required flag {}",
                    flag.name()
                ));
            }
        }
        for flag in &self.policy_must_not_have {
            if policy & flag.bit() != 0 {
                return Err(format!(
                    "snp guest policy {policy:#x} has forbidden flag {}",
                    flag.name()
                ));
            }
        }
        Ok(())
    }
}

impl SimRule {
    fn check(&self, claims: &Claims) -> Result<(), String> {
        let Measurements::Sim {
            measurement,
            signer,
        } = &claims.measurements
        else {
            return Err("not sim claims".into());
        };
        check_one_of("sim", "measurement", &self.measurement, &measurement.0)?;
        check_one_of("sim", "signer", &self.signer, &signer.0)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::Hex;

    fn h(byte: u8, n: usize) -> String {
        hex::encode(vec![byte; n])
    }

    fn sgx_claims(mr_enclave: u8, mr_signer: u8, prod: u16, svn: u16) -> Claims {
        Claims {
            tee: TeeType::Sgx,
            debug: false,
            tcb_status: "UpToDate".into(),
            advisories: vec![],
            report_data: Hex(vec![0; 64]),
            measurements: Measurements::Sgx {
                mr_enclave: Hex(vec![mr_enclave; 32]),
                mr_signer: Hex(vec![mr_signer; 32]),
                isv_prod_id: prod,
                isv_svn: svn,
            },
        }
    }

    fn tdx_claims() -> Claims {
        Claims {
            tee: TeeType::Tdx,
            debug: false,
            tcb_status: "UpToDate".into(),
            advisories: vec![],
            report_data: Hex(vec![0; 64]),
            measurements: Measurements::Tdx {
                mr_td: Hex(vec![0xd1; 48]),
                rtmr: [
                    Hex(vec![0x10; 48]),
                    Hex(vec![0x11; 48]),
                    Hex(vec![0x12; 48]),
                    Hex(vec![0x13; 48]),
                ],
                mr_config_id: Hex(vec![0xc0; 48]),
                mr_owner: Hex(vec![0; 48]),
                mr_owner_config: Hex(vec![0; 48]),
                tee_tcb_svn: Hex(vec![3; 16]),
            },
        }
    }

    fn snp_claims(policy: u64) -> Claims {
        Claims {
            tee: TeeType::Snp,
            debug: false,
            tcb_status: "NotApplicable".into(),
            advisories: vec![],
            report_data: Hex(vec![0; 64]),
            measurements: Measurements::Snp {
                measurement: Hex(vec![0x5e; 48]),
                host_data: Hex(vec![0x4d; 32]),
                policy,
                guest_svn: 2,
                vmpl: 0,
                reported_tcb: 0,
                reported_tcb_spl: SnpTcb {
                    bootloader: 3,
                    tee: 0,
                    snp: 8,
                    microcode: 115,
                    fmc: None,
                },
            },
        }
    }

    fn sim_claims() -> Claims {
        Claims {
            tee: TeeType::Sim,
            debug: false,
            tcb_status: "NotApplicable".into(),
            advisories: vec![],
            report_data: Hex(vec![0; 64]),
            measurements: Measurements::Sim {
                measurement: Hex(vec![0x51; 32]),
                signer: Hex(vec![0x52; 32]),
            },
        }
    }

    fn sgx_policy(extra_global: &str, role_fields: &str) -> Policy {
        let text = format!(
            "version: 1\n{extra_global}roles:\n  - name: kms-plugin\n    sgx:\n      mr_enclave: [\"{}\"]\n{role_fields}",
            h(0xaa, 32)
        );
        Policy::from_yaml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn err(text: &str) -> String {
        match Policy::from_yaml(text) {
            Ok(_) => panic!("policy accepted:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    fn denial(p: &Policy, c: &Claims) -> String {
        p.evaluate(c).unwrap_err().to_string()
    }

    // ---- evaluation -------------------------------------------------------------------------

    #[test]
    fn sgx_role_matches_and_names_are_listed() {
        let p = sgx_policy("", "      isv_prod_id: 1\n      min_isv_svn: 2\n");
        assert_eq!(p.roles().collect::<Vec<_>>(), vec!["kms-plugin"]);
        let role = p.evaluate(&sgx_claims(0xaa, 1, 1, 2)).unwrap();
        assert_eq!(role.name, "kms-plugin");
    }

    #[test]
    fn sgx_mr_enclave_mismatch_is_named() {
        let p = sgx_policy("", "");
        let d = denial(&p, &sgx_claims(0xbb, 1, 1, 1));
        assert_eq!(
            d,
            format!(
                "role kms-plugin: sgx mr_enclave {} is not accepted",
                h(0xbb, 32)
            )
        );
    }

    #[test]
    fn sgx_mr_signer_prod_id_and_svn_rules() {
        let text = format!(
            "version: 1\nroles:\n  - name: signed\n    sgx: {{ mr_signer: [\"{}\"], isv_prod_id: 7, min_isv_svn: 3 }}\n",
            h(0x01, 32)
        );
        let p = Policy::from_yaml(&text).unwrap();
        assert!(p.evaluate(&sgx_claims(0x99, 0x01, 7, 3)).is_ok());
        assert!(denial(&p, &sgx_claims(0x99, 0x02, 7, 3)).contains("sgx mr_signer 0202"));
        assert!(denial(&p, &sgx_claims(0x99, 0x01, 8, 3))
            .contains("sgx isv_prod_id 8 is not accepted (want 7)"));
        assert!(denial(&p, &sgx_claims(0x99, 0x01, 7, 2))
            .contains("sgx isv_svn 2 is below min_isv_svn 3"));
    }

    #[test]
    fn first_matching_role_wins_and_every_role_reports() {
        let text = format!(
            "version: 1\nroles:\n  - name: admin\n    sgx: {{ mr_enclave: [\"{a}\"] }}\n  - name: kms-plugin\n    sgx: {{ mr_enclave: [\"{b}\", \"{a}\"] }}\n",
            a = h(0xaa, 32),
            b = h(0xbb, 32)
        );
        let p = Policy::from_yaml(&text).unwrap();
        assert_eq!(
            p.evaluate(&sgx_claims(0xaa, 0, 0, 0)).unwrap().name,
            "admin"
        );
        assert_eq!(
            p.evaluate(&sgx_claims(0xbb, 0, 0, 0)).unwrap().name,
            "kms-plugin"
        );
        let d = p.evaluate(&sgx_claims(0xcc, 0, 0, 0)).unwrap_err();
        assert_eq!(d.reasons.len(), 2);
        assert!(d.reasons[0].starts_with("role admin: sgx mr_enclave cccc"));
        assert!(d.reasons[1].starts_with("role kms-plugin: sgx mr_enclave cccc"));
    }

    #[test]
    fn role_without_section_for_the_tee_type_is_skipped() {
        let p = sgx_policy("", "");
        assert_eq!(denial(&p, &tdx_claims()), "role kms-plugin: no tdx rule");
    }

    #[test]
    fn simulation_refused_by_default_and_listed_first() {
        let text = "version: 1\nroles:\n  - name: dev\n    sim: {}\n";
        let p = Policy::from_yaml(text).unwrap();
        assert!(!p.allows_simulation());
        let d = p.evaluate(&sim_claims()).unwrap_err();
        assert_eq!(
            d.reasons,
            vec!["simulation evidence refused: allow_simulation is false"]
        );
        let p = Policy::from_yaml(&format!("allow_simulation: true\n{text}")).unwrap();
        assert_eq!(p.evaluate(&sim_claims()).unwrap().name, "dev");
    }

    #[test]
    fn sim_measurement_and_signer_rules() {
        let text = format!(
            "version: 1\nallow_simulation: true\nroles:\n  - name: dev\n    sim: {{ measurement: [\"{}\"], signer: [\"{}\"] }}\n",
            h(0x51, 32),
            h(0x52, 32)
        );
        let p = Policy::from_yaml(&text).unwrap();
        assert!(p.evaluate(&sim_claims()).is_ok());
        let mut c = sim_claims();
        c.measurements = Measurements::Sim {
            measurement: Hex(vec![0x51; 32]),
            signer: Hex(vec![0x53; 32]),
        };
        assert!(denial(&p, &c).contains("sim signer 5353"));
        c.measurements = Measurements::Sim {
            measurement: Hex(vec![0x50; 32]),
            signer: Hex(vec![0x52; 32]),
        };
        assert!(denial(&p, &c).contains("sim measurement 5050"));
    }

    #[test]
    fn debug_refused_unless_allowed() {
        let mut c = sgx_claims(0xaa, 0, 0, 0);
        c.debug = true;
        let p = sgx_policy("", "");
        assert_eq!(
            denial(&p, &c),
            "debug enclave refused: allow_debug is false"
        );
        let p = sgx_policy("allow_debug: true\n", "");
        assert!(p.evaluate(&c).is_ok());
    }

    #[test]
    fn global_refusals_are_all_listed() {
        let mut c = sim_claims();
        c.debug = true;
        let p = Policy::from_yaml("version: 1\nroles:\n  - name: dev\n    sim: {}\n").unwrap();
        let d = p.evaluate(&c).unwrap_err();
        assert_eq!(d.reasons.len(), 2);
        assert!(d.reasons[0].starts_with("simulation evidence refused"));
        assert!(d.reasons[1].starts_with("debug TEE refused"));
    }

    #[test]
    fn tcb_status_global_default_and_per_role_override() {
        let mut c = sgx_claims(0xaa, 0, 0, 0);
        c.tcb_status = "SWHardeningNeeded".into();
        c.advisories = vec!["INTEL-SA-00615".into()];
        let p = sgx_policy("", "");
        assert_eq!(
            denial(&p, &c),
            "role kms-plugin: tcb status SWHardeningNeeded is not accepted (accepted: [UpToDate] from the global accepted_tcb_statuses); advisories: INTEL-SA-00615"
        );
        let p = sgx_policy("accepted_tcb_statuses: [UpToDate, SWHardeningNeeded]\n", "");
        assert!(p.evaluate(&c).is_ok());
        // Per-role override, stricter than the global list.
        let p = sgx_policy(
            "accepted_tcb_statuses: [UpToDate, SWHardeningNeeded]\n",
            "    accepted_tcb_statuses: [UpToDate]\n",
        );
        assert!(denial(&p, &c).contains("(accepted: [UpToDate])"));
        // Per-role override, looser than the global list.
        let p = sgx_policy("", "    accepted_tcb_statuses: [SWHardeningNeeded]\n");
        assert!(p.evaluate(&c).is_ok());
        // Statuses the verifier reports that no list can name are refused.
        c.tcb_status = "NotApplicable".into();
        assert!(denial(&p, &c).contains("tcb status NotApplicable is not accepted"));
    }

    #[test]
    fn tdx_rules() {
        let text = format!(
            "version: 1\nroles:\n  - name: td\n    tdx:\n      mr_td: [\"{}\"]\n      rtmr: {{ 0: [\"{}\"], 3: [\"{}\"] }}\n      mr_config_id: [\"{}\"]\n      min_tee_tcb_svn: \"{}\"\n",
            h(0xd1, 48),
            h(0x10, 48),
            h(0x13, 48),
            h(0xc0, 48),
            h(3, 16)
        );
        let p = Policy::from_yaml(&text).unwrap();
        assert!(p.evaluate(&tdx_claims()).is_ok());

        let mut c = tdx_claims();
        if let Measurements::Tdx { rtmr, .. } = &mut c.measurements {
            rtmr[3] = Hex(vec![0xff; 48]);
        }
        assert!(denial(&p, &c).contains("tdx rtmr[3] ffff"));

        let mut c = tdx_claims();
        if let Measurements::Tdx { mr_td, .. } = &mut c.measurements {
            *mr_td = Hex(vec![0xd2; 48]);
        }
        assert!(denial(&p, &c).contains("tdx mr_td d2d2"));

        let mut c = tdx_claims();
        if let Measurements::Tdx { mr_config_id, .. } = &mut c.measurements {
            *mr_config_id = Hex(vec![0; 48]);
        }
        assert!(denial(&p, &c).contains("tdx mr_config_id 0000"));

        let mut c = tdx_claims();
        if let Measurements::Tdx { tee_tcb_svn, .. } = &mut c.measurements {
            tee_tcb_svn.0[5] = 2;
        }
        assert!(denial(&p, &c).contains("is below min_tee_tcb_svn"));
    }

    #[test]
    fn snp_rules() {
        let text = format!(
            "version: 1\nroles:\n  - name: guest\n    snp:\n      measurement: [\"{}\"]\n      host_data: [\"{}\"]\n      min_guest_svn: 2\n      vmpl: 0\n      policy_must_have: [single_socket]\n      policy_must_not_have: [debug, migrate_ma]\n",
            h(0x5e, 48),
            h(0x4d, 32)
        );
        let p = Policy::from_yaml(&text).unwrap();
        let base = 0x30000 | (1 << 20);
        assert!(p.evaluate(&snp_claims(base)).is_ok());
        assert!(denial(&p, &snp_claims(base | (1 << 19))).contains("has forbidden flag debug"));
        assert!(denial(&p, &snp_claims(base | (1 << 18))).contains("has forbidden flag migrate_ma"));
        assert!(denial(&p, &snp_claims(0x30000)).contains("lacks required flag single_socket"));

        let mut c = snp_claims(base);
        if let Measurements::Snp {
            guest_svn, vmpl, ..
        } = &mut c.measurements
        {
            *guest_svn = 1;
            *vmpl = 0;
        }
        assert!(denial(&p, &c).contains("snp guest_svn 1 is below min_guest_svn 2"));

        let mut c = snp_claims(base);
        if let Measurements::Snp { vmpl, .. } = &mut c.measurements {
            *vmpl = 2;
        }
        assert!(denial(&p, &c).contains("snp vmpl 2 is not accepted"));

        let mut c = snp_claims(base);
        if let Measurements::Snp { host_data, .. } = &mut c.measurements {
            *host_data = Hex(vec![0; 32]);
        }
        assert!(denial(&p, &c).contains("snp host_data 0000"));

        let mut c = snp_claims(base);
        if let Measurements::Snp { measurement, .. } = &mut c.measurements {
            *measurement = Hex(vec![1; 48]);
        }
        assert!(denial(&p, &c).contains("snp measurement 0101"));
    }

    #[test]
    fn snp_vmpl_is_checked_by_default() {
        let m = h(0x5e, 48);
        let with_vmpl = |vmpl: u32| {
            let mut c = snp_claims(0x30000);
            if let Measurements::Snp { vmpl: v, .. } = &mut c.measurements {
                *v = vmpl;
            }
            c
        };
        let p = Policy::from_yaml(&format!(
            "version: 1\nroles:\n  - name: guest\n    snp: {{ measurement: [\"{m}\"] }}\n"
        ))
        .unwrap();
        assert!(p.evaluate(&with_vmpl(0)).is_ok());
        let d = denial(&p, &with_vmpl(2));
        assert!(
            d.contains("snp vmpl 2 is not accepted (only VMPL 0 by default")
                && d.contains("vmpl: [0, 2]"),
            "{d}"
        );
        let p = Policy::from_yaml(&format!(
            "version: 1\nroles:\n  - name: guest\n    snp: {{ measurement: [\"{m}\"], vmpl: [0, 2] }}\n"
        ))
        .unwrap();
        assert!(p.evaluate(&with_vmpl(2)).is_ok());
        assert!(p.evaluate(&with_vmpl(0)).is_ok());
        let d = denial(&p, &with_vmpl(1));
        assert!(
            d.contains("snp vmpl 1 is not accepted (accepted: [0, 2]"),
            "{d}"
        );
        let e = err(&format!(
            "version: 1\nroles:\n  - name: x\n    snp: {{ measurement: [\"{m}\"], vmpl: [] }}\n"
        ));
        assert!(e.contains("vmpl: must not be empty"), "{e}");
        let e = err(&format!(
            "version: 1\nroles:\n  - name: x\n    snp: {{ measurement: [\"{m}\"], vmpl: [1, 5] }}\n"
        ));
        assert!(e.contains("vmpl: 5 out of range"), "{e}");
    }

    #[test]
    fn snp_min_reported_tcb() {
        let m = h(0x5e, 48);
        let policy = |min: &str| {
            Policy::from_yaml(&format!(
                "version: 1\nroles:\n  - name: guest\n    snp:\n      measurement: [\"{m}\"]\n      min_reported_tcb: {min}\n"
            ))
        };
        // The claims' reported TCB: bootloader 3, tee 0, snp 8, microcode 115.
        let c = snp_claims(0x30000);
        let p = policy("{ bootloader: 3, tee: 0, snp: 8, microcode: 115 }").unwrap();
        assert!(p.evaluate(&c).is_ok());
        for (min, refusal) in [
            (
                "{ bootloader: 4 }",
                "bootloader SPL 3 is below min_reported_tcb.bootloader 4",
            ),
            ("{ tee: 1 }", "tee SPL 0 is below min_reported_tcb.tee 1"),
            (
                "{ snp: 9, microcode: 100 }",
                "snp SPL 8 is below min_reported_tcb.snp 9",
            ),
            (
                "{ microcode: 200 }",
                "microcode SPL 115 is below min_reported_tcb.microcode 200",
            ),
            ("{ fmc: 1 }", "no fmc SPL (only Turin"),
        ] {
            let d = denial(&policy(min).unwrap(), &c);
            assert!(d.contains(refusal), "{min}: {d}");
        }
        let e = policy("{ bootloadr: 1 }").unwrap_err().to_string();
        assert!(e.contains("unknown field `bootloadr`"), "{e}");
        let e = policy("{ snp: 256 }").unwrap_err().to_string();
        assert!(e.contains("min_reported_tcb.snp"), "{e}");
    }

    #[test]
    fn empty_roles_deny_everything() {
        let p = Policy::from_yaml("version: 1\n").unwrap();
        assert_eq!(
            denial(&p, &sgx_claims(0, 0, 0, 0)),
            "the policy defines no roles"
        );
    }

    #[test]
    fn hex_accepts_upper_case_and_0x_prefix() {
        let text = format!(
            "version: 1\nroles:\n  - name: a\n    sgx: {{ mr_enclave: [\"0x{}\"] }}\n",
            h(0xab, 32).to_uppercase()
        );
        let p = Policy::from_yaml(&text).unwrap();
        assert!(p.evaluate(&sgx_claims(0xab, 0, 0, 0)).is_ok());
    }

    // ---- validation -------------------------------------------------------------------------

    #[test]
    fn hex_length_error_names_path_and_position() {
        let text = format!(
            "version: 1\nroles:\n  - name: kms-plugin\n    sgx:\n      mr_enclave:\n        - \"{}\"\n        - \"{}\"\n",
            h(0xaa, 32),
            &h(0xaa, 32)[1..]
        );
        let e = Policy::from_yaml(&text).unwrap_err();
        assert_eq!(
            e.to_string(),
            "policy: roles[0].sgx.mr_enclave[1]: expected 64 hex characters, got 63 at line 7 column 11"
        );
        assert_eq!(e.line(), Some(7));
        assert_eq!(e.column(), Some(11));
    }

    #[test]
    fn hex_lengths_per_field() {
        let cases = [
            (
                "sgx: { mr_signer: [\"00\"] }",
                "roles[0].sgx.mr_signer[0]: expected 64 hex characters, got 2",
            ),
            (
                "tdx: { mr_td: [\"00\"] }",
                "roles[0].tdx.mr_td[0]: expected 96 hex characters, got 2",
            ),
            (
                "tdx: { mr_config_id: [\"00\"] }",
                "roles[0].tdx.mr_config_id[0]: expected 96 hex characters",
            ),
            (
                "tdx: { rtmr: { 1: [\"00\"] } }",
                "expected 96 hex characters, got 2",
            ),
            (
                "snp: { measurement: [\"00\"] }",
                "roles[0].snp.measurement[0]: expected 96 hex characters",
            ),
            (
                "snp: { host_data: [\"00\"] }",
                "roles[0].snp.host_data[0]: expected 64 hex characters",
            ),
            (
                "sim: { measurement: [\"00\"] }",
                "roles[0].sim.measurement[0]: expected 64 hex characters",
            ),
            (
                "sim: { signer: [\"00\"] }",
                "roles[0].sim.signer[0]: expected 64 hex characters",
            ),
        ];
        for (section, want) in cases {
            let e = err(&format!("version: 1\nroles:\n  - name: a\n    {section}\n"));
            assert!(e.contains(want), "{section}: {e}");
        }
        let e = err(&format!(
            "version: 1\nroles:\n  - name: a\n    tdx: {{ mr_td: [\"{}\"], min_tee_tcb_svn: \"00\" }}\n",
            h(1, 48)
        ));
        assert!(
            e.contains("roles[0].tdx.min_tee_tcb_svn: expected 32 hex characters, got 2"),
            "{e}"
        );
    }

    #[test]
    fn non_hex_and_unquoted_numbers_rejected() {
        let mut bad = h(0xaa, 32);
        bad.replace_range(10..11, "g");
        let e = err(&format!(
            "version: 1\nroles:\n  - name: a\n    sgx: {{ mr_enclave: [\"{bad}\"] }}\n"
        ));
        assert!(e.contains("got non-hex 'g'"), "{e}");
        let e = err("version: 1\nroles:\n  - name: a\n    sgx: { mr_enclave: [1234] }\n");
        assert!(e.contains("in quotes, got a number"), "{e}");
    }

    #[test]
    fn unknown_fields_rejected_everywhere() {
        let a = h(0xaa, 32);
        let cases = [
            "version: 1\nallow_simulaton: true\n".to_string(),
            format!("version: 1\nroles:\n  - name: a\n    sgx: {{ mr_encalve: [\"{a}\"] }}\n"),
            format!("version: 1\nroles:\n  - name: a\n    sgx: {{ mr_enclave: [\"{a}\"] }}\n    sgxx: {{}}\n"),
            "version: 1\nroles:\n  - name: a\n    tdx: { mr_tdd: [] }\n".to_string(),
            "version: 1\nroles:\n  - name: a\n    snp: { measurment: [] }\n".to_string(),
            "version: 1\nroles:\n  - name: a\n    sim: { sgner: [] }\n".to_string(),
        ];
        for text in &cases {
            let e = err(text);
            assert!(e.contains("unknown field"), "{text}: {e}");
        }
        assert!(err(&cases[1]).contains("roles[0].sgx: unknown field `mr_encalve`"));
    }

    #[test]
    fn role_name_rules() {
        let a = h(0xaa, 32);
        let role = |name: &str| {
            format!(
                "version: 1\nroles:\n  - name: \"{name}\"\n    sgx: {{ mr_enclave: [\"{a}\"] }}\n"
            )
        };
        for good in [
            "kms-plugin",
            "workload:payments",
            "admin",
            "a1",
            "workload:ns.app_1",
        ] {
            assert!(Policy::from_yaml(&role(good)).is_ok(), "{good}");
        }
        assert!(err(&role("")).contains("roles[0].name: role name must not be empty"));
        assert!(err(&role("KMS")).contains("invalid character 'K'"));
        assert!(err(&role("kms plugin")).contains("invalid character ' '"));
        assert!(err(&role("1kms")).contains("must start with a letter"));
        assert!(err(&role("workload:")).contains("invalid role name"));
        assert!(err(&role("a::b")).contains("invalid role name"));
        assert!(err(&role("kms-")).contains("invalid role name"));
        assert!(err(&role(&"a".repeat(129))).contains("at most 128"));
    }

    #[test]
    fn duplicate_role_names_rejected() {
        let a = h(0xaa, 32);
        let e = err(&format!(
            "version: 1\nroles:\n  - name: x\n    sgx: {{ mr_enclave: [\"{a}\"] }}\n  - name: y\n    sgx: {{ mr_enclave: [\"{a}\"] }}\n  - name: x\n    sim: {{}}\n"
        ));
        assert!(
            e.contains(
                "duplicate role name \"x\" at roles[2] (already defined by roles[0]) at line 3"
            ),
            "{e}"
        );
    }

    #[test]
    fn role_needs_a_tee_section_and_sections_need_identity() {
        let e = err("version: 1\nroles:\n  - name: x\n");
        assert!(e.contains("roles: role \"x\" has no TEE section: give at least one of sgx, tdx, snp, sim at line 3 column 3"), "{e}");
        let e = err("version: 1\nroles:\n  - name: x\n    sgx: { isv_prod_id: 1 }\n");
        assert!(
            e.contains("roles[0]: sgx: must pin mr_enclave or mr_signer"),
            "{e}"
        );
        let e = err("version: 1\nroles:\n  - name: x\n    tdx: {}\n");
        assert!(e.contains("roles[0]: tdx: must pin at least one of"), "{e}");
        let e = err("version: 1\nroles:\n  - name: x\n    snp: { min_guest_svn: 1 }\n");
        assert!(
            e.contains("roles[0]: snp: must pin measurement or host_data"),
            "{e}"
        );
        let e = err("version: 1\nroles:\n  - name: x\n    sgx: { mr_enclave: [] }\n");
        assert!(
            e.contains("roles[0].sgx.mr_enclave: must not be empty"),
            "{e}"
        );
    }

    #[test]
    fn tdx_rtmr_index_and_snp_field_ranges() {
        let e = err(&format!(
            "version: 1\nroles:\n  - name: x\n    tdx: {{ rtmr: {{ 4: [\"{}\"] }} }}\n",
            h(1, 48)
        ));
        assert!(e.contains("rtmr: index 4 out of range"), "{e}");
        let m = h(1, 48);
        let e = err(&format!(
            "version: 1\nroles:\n  - name: x\n    snp: {{ measurement: [\"{m}\"], vmpl: 4 }}\n"
        ));
        assert!(e.contains("vmpl: 4 out of range"), "{e}");
        let e = err(&format!(
            "version: 1\nroles:\n  - name: x\n    snp: {{ measurement: [\"{m}\"], policy_must_not_have: [debugg] }}\n"
        ));
        assert!(e.contains("unknown variant `debugg`"), "{e}");
        let e = err(&format!(
            "version: 1\nroles:\n  - name: x\n    snp: {{ measurement: [\"{m}\"], policy_must_have: [smt], policy_must_not_have: [smt] }}\n"
        ));
        assert!(e.contains("policy flag smt is both"), "{e}");
    }

    #[test]
    fn unknown_tcb_status_rejected() {
        let e = err("version: 1\naccepted_tcb_statuses: [UpToDate, UpTodate]\n");
        assert!(
            e.contains("accepted_tcb_statuses[1]: unknown variant `UpTodate`"),
            "{e}"
        );
        let a = h(0xaa, 32);
        let e = err(&format!(
            "version: 1\nroles:\n  - name: x\n    sgx: {{ mr_enclave: [\"{a}\"] }}\n    accepted_tcb_statuses: [Fine]\n"
        ));
        assert!(
            e.contains("roles[0].accepted_tcb_statuses[0]: unknown variant `Fine`"),
            "{e}"
        );
        let e = err("version: 1\naccepted_tcb_statuses: []\n");
        assert!(
            e.contains("accepted_tcb_statuses: must not be empty"),
            "{e}"
        );
    }

    #[test]
    fn version_is_required_and_checked() {
        assert!(err("roles: []\n").contains("missing field `version`"));
        assert!(err("version: 2\n").contains("unsupported policy version 2"));
    }

    #[test]
    fn only_role_grants_that_role_even_when_an_earlier_one_matches() {
        let text = format!(
            "version: 1\nallow_simulation: true\nroles:\n  - name: kms-plugin\n    sim: {{}}\n  - name: keyd-peer\n    sim: {{ measurement: [\"{}\"] }}\n",
            h(0x51, 32)
        );
        let p = Policy::from_yaml(&text).unwrap();
        assert_eq!(p.evaluate(&sim_claims()).unwrap().name, "kms-plugin");
        let peer = p.only_role("keyd-peer").unwrap();
        assert_eq!(peer.roles().collect::<Vec<_>>(), ["keyd-peer"]);
        assert_eq!(peer.evaluate(&sim_claims()).unwrap().name, "keyd-peer");
        let mut other = sim_claims();
        other.measurements = Measurements::Sim {
            measurement: Hex(vec![0x61; 32]),
            signer: Hex(vec![0x52; 32]),
        };
        assert!(peer.evaluate(&other).is_err());
        assert!(p.only_role("nobody").is_none());
        // The global rules still apply.
        let strict =
            Policy::from_yaml(&text.replace("allow_simulation: true", "allow_simulation: false"))
                .unwrap();
        assert!(strict
            .only_role("keyd-peer")
            .unwrap()
            .evaluate(&sim_claims())
            .is_err());
    }

    #[test]
    fn yaml_syntax_error_has_position() {
        let e = Policy::from_yaml("version: 1\nroles: [\n").unwrap_err();
        assert!(e.line().is_some(), "{e}");
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("coffer-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy.yaml");
        std::fs::write(&path, "version: 1\nallow_simulation: yes please\n").unwrap();
        let e = Policy::load(&path).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with(&format!("policy {}: allow_simulation: ", path.display())),
            "{s}"
        );
        assert!(s.contains("line 2"), "{s}");
        assert_eq!(e.file(), Some(path.as_path()));

        std::fs::write(&path, "version: 1\nallow_simulation: true\n").unwrap();
        assert!(Policy::load(&path).unwrap().allows_simulation());

        let missing = dir.join("missing.yaml");
        let e = Policy::load(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.yaml: cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

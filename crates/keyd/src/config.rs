//! The keyd configuration: which roles may do what on which keyring.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::grants::UnsealGrant;
use crate::KeydError;

/// Largest configuration file accepted.
const MAX_CONFIG_LEN: u64 = 1 << 20;

/// An operation of the key service, as the configuration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `Wrap`: encrypt with the primary KEK.
    Wrap,
    /// `Unwrap`: decrypt.
    Unwrap,
    /// `Status`: primary KEK id and key count.
    Status,
    /// `Rotate`: new primary KEK.
    Rotate,
    /// `ListKeys`: public facts about the KEKs.
    List,
    /// `GetKeyBundle`: the public sealing keys with keyd's evidence. Public: no role needed.
    KeyBundle,
    /// `Reseal`: a sealed value re-sealed to the newest sealing key. Public: no role needed.
    Reseal,
    /// `Unseal`: open a sealed value; allowed by the keyring's `unseal` grants.
    Unseal,
    /// `JoinReplica`: a new replica receives keyd's root. Allowed by the policy role
    /// [`KEYD_PEER_ROLE`](crate::KEYD_PEER_ROLE), never by the configuration.
    JoinReplica,
}

impl Operation {
    /// Every operation granted by a list of roles, in configuration order.
    pub const ALL: [Operation; 5] = [
        Operation::Wrap,
        Operation::Unwrap,
        Operation::Status,
        Operation::Rotate,
        Operation::List,
    ];

    /// The configuration key for this operation.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Wrap => "wrap",
            Operation::Unwrap => "unwrap",
            Operation::Status => "status",
            Operation::Rotate => "rotate",
            Operation::List => "list",
            Operation::KeyBundle => "key-bundle",
            Operation::Reseal => "reseal",
            Operation::Unseal => "unseal",
            Operation::JoinReplica => "join-replica",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which policy roles may use each operation on one keyring. An omitted list allows nobody.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyringAccess {
    /// Roles allowed to call `Wrap`.
    #[serde(default, deserialize_with = "role_list")]
    pub wrap: Vec<String>,
    /// Roles allowed to call `Unwrap`.
    #[serde(default, deserialize_with = "role_list")]
    pub unwrap: Vec<String>,
    /// Roles allowed to call `Status`.
    #[serde(default, deserialize_with = "role_list")]
    pub status: Vec<String>,
    /// Roles allowed to call `Rotate`.
    #[serde(default, deserialize_with = "role_list")]
    pub rotate: Vec<String>,
    /// Roles allowed to call `ListKeys`.
    #[serde(default, deserialize_with = "role_list")]
    pub list: Vec<String>,
    /// Who may `Unseal` sealed values found where: grants by role and location patterns.
    #[serde(default)]
    pub unseal: Vec<UnsealGrant>,
}

impl KeyringAccess {
    /// The roles allowed to use `op` by a role list (none for the public operations, for
    /// `unseal`, whose grants are [`Self::unseal`], and for `join-replica`, which only the
    /// policy's `keyd-peer` role may call).
    pub fn roles(&self, op: Operation) -> &[String] {
        match op {
            Operation::Wrap => &self.wrap,
            Operation::Unwrap => &self.unwrap,
            Operation::Status => &self.status,
            Operation::Rotate => &self.rotate,
            Operation::List => &self.list,
            Operation::KeyBundle
            | Operation::Reseal
            | Operation::Unseal
            | Operation::JoinReplica => &[],
        }
    }

    /// Whether `role` may use `op` at all (for `unseal`: whether any grant names the role;
    /// where it may unseal is [`UnsealGrant::admits`]).
    pub fn allows(&self, op: Operation, role: &str) -> bool {
        match op {
            Operation::KeyBundle | Operation::Reseal => true,
            Operation::Unseal => self.unseal.iter().any(|g| g.role == role),
            _ => self.roles(op).iter().any(|r| r == role),
        }
    }
}

/// The keyd configuration (YAML):
///
/// ```yaml
/// keyrings:
///   cluster-a:
///     wrap: ["kms-plugin:cluster-a"]
///     unwrap: ["kms-plugin:cluster-a"]
///     status: ["kms-plugin:cluster-a"]
///     unseal:
///       - role: "app:payments"
///         namespaces: ["payments", "payments-*"]
///         secrets: ["db-*"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeydConfig {
    /// Keyrings by name, with who may use them.
    #[serde(deserialize_with = "keyring_map")]
    pub keyrings: BTreeMap<String, KeyringAccess>,
}

// Names are checked inside the visitors, while the parser still knows their line and column.

/// A role name that is not empty.
pub(crate) struct RoleName(pub(crate) String);

impl<'de> Deserialize<'de> for RoleName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RoleName;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a role name from the policy")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RoleName, E> {
                if s.is_empty() {
                    return Err(E::custom("empty role name"));
                }
                Ok(RoleName(s.to_string()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A role list whose names are not empty.
fn role_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let roles = Vec::<RoleName>::deserialize(d)?;
    Ok(roles.into_iter().map(|r| r.0).collect())
}

/// The keyrings, each name a valid keyring name.
fn keyring_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, KeyringAccess>, D::Error> {
    #[derive(PartialEq, Eq, PartialOrd, Ord)]
    struct Name(String);
    impl<'de> Deserialize<'de> for Name {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Name;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a keyring name")
                }
                fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Name, E> {
                    validate_keyring_name(s).map_err(E::custom)?;
                    Ok(Name(s.to_string()))
                }
            }
            d.deserialize_str(V)
        }
    }
    let map = BTreeMap::<Name, KeyringAccess>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, v)| (k.0, v)).collect())
}

impl KeydConfig {
    /// Parses and validates a configuration.
    pub fn from_yaml(text: &str) -> Result<Self, KeydError> {
        Self::parse(text, None)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, KeydError> {
        let err = |message: String| KeydError::Config {
            path: Some(path.to_path_buf()),
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read: {e}")))?;
        if meta.len() > MAX_CONFIG_LEN {
            return Err(err(format!(
                "file is {} bytes; the limit is {MAX_CONFIG_LEN}",
                meta.len()
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(&text, Some(path))
    }

    fn parse(text: &str, path: Option<&Path>) -> Result<Self, KeydError> {
        let err = |message: String| KeydError::Config {
            path: path.map(Path::to_path_buf),
            message,
        };
        serde_yaml_ng::from_str(text).map_err(|e| err(coffer_attest::yaml::error_text(&e, text)))
    }

    /// Every grant of a role that `policy` does not define, as (keyring, operation, role).
    /// Such a grant can never be used (no caller is ever given that role), so it is almost
    /// always a typo that silently locks the intended callers out.
    pub fn undefined_roles(
        &self,
        policy: &coffer_attest::policy::Policy,
    ) -> Vec<(&str, Operation, &str)> {
        let mut undefined = Vec::new();
        for (name, access) in &self.keyrings {
            for op in Operation::ALL {
                for role in access.roles(op) {
                    if !policy.roles().any(|defined| defined == role) {
                        undefined.push((name.as_str(), op, role.as_str()));
                    }
                }
            }
            for grant in &access.unseal {
                if !policy.roles().any(|defined| defined == grant.role) {
                    undefined.push((name.as_str(), Operation::Unseal, grant.role.as_str()));
                }
            }
        }
        undefined
    }

    /// Refuses a configuration that grants a role `policy` does not define, naming the first
    /// such grant and the roles the policy has (see [`Self::undefined_roles`]); messages call
    /// the policy `policy_name` (e.g. `--policy /etc/coffer/policy.yaml`).
    pub fn check_roles(
        &self,
        policy: &coffer_attest::policy::Policy,
        policy_name: &str,
    ) -> Result<(), String> {
        let Some((keyring, op, role)) = self.undefined_roles(policy).first().copied() else {
            return Ok(());
        };
        let defined: Vec<&str> = policy.roles().collect();
        Err(format!(
            "keyring {keyring:?} grants {op} to role {role:?}, which {policy_name} does not define \
             (its roles: {}); fix the role name or add the role to the policy",
            if defined.is_empty() {
                "none".to_string()
            } else {
                defined.join(", ")
            }
        ))
    }

    /// What changes from `self` to `new`, one line each: keyrings added or removed, and per
    /// kept keyring each operation whose grants changed (roles removed and added).
    pub fn changes(&self, new: &KeydConfig) -> Vec<String> {
        let mut lines = Vec::new();
        for name in new.keyrings.keys() {
            if !self.keyrings.contains_key(name) {
                lines.push(format!("keyring {name}: added"));
            }
        }
        for (name, old) in &self.keyrings {
            let Some(access) = new.keyrings.get(name) else {
                lines.push(format!("keyring {name}: removed"));
                continue;
            };
            for op in Operation::ALL {
                let (before, after) = (old.roles(op), access.roles(op));
                let removed: Vec<&str> = before
                    .iter()
                    .filter(|r| !after.contains(r))
                    .map(String::as_str)
                    .collect();
                let added: Vec<&str> = after
                    .iter()
                    .filter(|r| !before.contains(r))
                    .map(String::as_str)
                    .collect();
                if !removed.is_empty() || !added.is_empty() {
                    lines.push(format!(
                        "keyring {name} {op}: removed [{}] added [{}]",
                        removed.join(", "),
                        added.join(", ")
                    ));
                }
            }
            if old.unseal != access.unseal {
                lines.push(format!(
                    "keyring {name} unseal: {} grants before, {} now",
                    old.unseal.len(),
                    access.unseal.len()
                ));
            }
        }
        lines
    }

    /// The access rules of keyring `name`, if it is configured.
    pub fn keyring(&self, name: &str) -> Option<&KeyringAccess> {
        self.keyrings.get(name)
    }
}

/// Checks that `name` is a valid keyring name: `[a-z0-9-]{1,63}`.
pub fn validate_keyring_name(name: &str) -> Result<(), KeydError> {
    coffer_keyd_client::validate_keyring_name(name).map_err(|e| KeydError::InvalidKeyringName {
        name: e.name,
        reason: e.reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_roles_per_operation() {
        let c = KeydConfig::from_yaml(
            "keyrings:\n  cluster-a:\n    wrap: [\"kms-plugin:a\"]\n    unwrap: [\"kms-plugin:a\"]\n",
        )
        .unwrap();
        let a = c.keyring("cluster-a").unwrap();
        assert!(a.allows(Operation::Wrap, "kms-plugin:a"));
        assert!(!a.allows(Operation::Rotate, "kms-plugin:a"));
        assert!(!a.allows(Operation::Wrap, "kms-plugin:b"));
    }

    #[test]
    fn changes_name_keyrings_and_grants() {
        let old = KeydConfig::from_yaml(
            "keyrings:\n  a:\n    wrap: [x]\n    unwrap: [x, y]\n  gone: {}\n",
        )
        .unwrap();
        let new = KeydConfig::from_yaml(
            "keyrings:\n  a:\n    wrap: [x]\n    unwrap: [y, z]\n  new: {}\n",
        )
        .unwrap();
        assert_eq!(
            old.changes(&new),
            [
                "keyring new: added",
                "keyring a unwrap: removed [x] added [z]",
                "keyring gone: removed",
            ]
        );
        assert!(new.changes(&new).is_empty());
    }

    #[test]
    fn rejects_unknown_fields_and_bad_names() {
        let e = KeydConfig::from_yaml("keyrings:\n  a:\n    decrypt: [x]\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = KeydConfig::from_yaml("keyrings: {}\nextra: 1\n").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = KeydConfig::from_yaml("keyrings:\n  Bad_Name: {}\n").unwrap_err();
        assert!(e.to_string().contains("invalid keyring name"), "{e}");
        assert!(validate_keyring_name(&"a".repeat(63)).is_ok());
        assert!(validate_keyring_name(&"a".repeat(64)).is_err());
        assert!(validate_keyring_name("").is_err());
        assert!(validate_keyring_name("../x").is_err());
    }
}

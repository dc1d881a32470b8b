//! Unseal grants: which role may open sealed values found in which Secrets.
//!
//! ```yaml
//! unseal:
//!   - role: "app:payments"
//!     namespaces: ["payments", "payments-*"]   # required
//!     secrets: ["db-*"]                         # default ["*"]
//!     keys: ["*"]                               # default ["*"]
//! ```
//!
//! A pattern is an exact name or a glob whose `*` matches any run of characters (none
//! included). Patterns are checked when the configuration loads, with the line and column of a
//! bad one, so a typo cannot silently grant or withhold anything.

use std::fmt;

use coffer_sealed::Location;
use serde::Deserialize;

use crate::config::RoleName;

/// Longest pattern accepted: the longest Kubernetes name.
const MAX_PATTERN_LEN: usize = 253;

/// A name pattern of an unseal grant: an exact name, or a glob where `*` matches any run of
/// characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        glob_matches(self.0.as_bytes(), name.as_bytes())
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*`-only glob matching, linear in practice: on a mismatch, retry from the last `*` one
/// character further.
fn glob_matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// What a pattern list matches, for its allowed characters and messages.
#[derive(Clone, Copy)]
enum Part {
    Namespace,
    Secret,
    Key,
}

impl Part {
    fn allowed(self, b: u8) -> bool {
        match self {
            Part::Namespace => b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-',
            Part::Secret => b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.',
            Part::Key => b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'),
        }
    }

    fn what(self) -> &'static str {
        match self {
            Part::Namespace => "a namespace pattern (a-z, 0-9, '-' and '*')",
            Part::Secret => "a Secret name pattern (a-z, 0-9, '-', '.' and '*')",
            Part::Key => "a data key pattern (a-z, A-Z, 0-9, '-', '.', '_' and '*')",
        }
    }

    fn check(self, text: &str) -> Result<(), String> {
        if text.is_empty() {
            return Err(format!("empty pattern: expected {}", self.what()));
        }
        if text.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "pattern is longer than {MAX_PATTERN_LEN} characters"
            ));
        }
        if let Some(c) = text
            .chars()
            .find(|&c| !(c == '*' || (c.is_ascii() && self.allowed(c as u8))))
        {
            return Err(format!(
                "pattern {:?} contains {c:?}: expected {}",
                text.chars().take(80).collect::<String>(),
                self.what()
            ));
        }
        Ok(())
    }
}

/// A non-empty list of patterns of one part, checked while the parser knows where it is.
fn patterns<'de, D: serde::Deserializer<'de>>(
    d: D,
    part: Part,
) -> Result<Vec<NamePattern>, D::Error> {
    struct Checked(NamePattern);
    struct V(Part);
    impl serde::de::Visitor<'_> for V {
        type Value = Checked;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0.what())
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Checked, E> {
            self.0.check(s).map_err(E::custom)?;
            Ok(Checked(NamePattern(s.to_string())))
        }
    }
    struct List(Part);
    impl<'de> serde::de::DeserializeSeed<'de> for List {
        type Value = Vec<NamePattern>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> serde::de::Visitor<'de> for List {
        type Value = Vec<NamePattern>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of {}", self.0.what())
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Self::Value, A::Error> {
            struct One(Part);
            impl<'de> serde::de::DeserializeSeed<'de> for One {
                type Value = Checked;
                fn deserialize<D: serde::Deserializer<'de>>(
                    self,
                    d: D,
                ) -> Result<Self::Value, D::Error> {
                    d.deserialize_str(V(self.0))
                }
            }
            let mut out = Vec::new();
            while let Some(Checked(p)) = seq.next_element_seed(One(self.0))? {
                out.push(p);
            }
            if out.is_empty() {
                return Err(serde::de::Error::custom(
                    "an empty list matches nothing; list names or patterns, or [\"*\"] for any",
                ));
            }
            Ok(out)
        }
    }
    serde::de::DeserializeSeed::deserialize(List(part), d)
}

fn namespaces<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<NamePattern>, D::Error> {
    patterns(d, Part::Namespace)
}

fn secrets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<NamePattern>, D::Error> {
    patterns(d, Part::Secret)
}

fn keys<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<NamePattern>, D::Error> {
    patterns(d, Part::Key)
}

fn role<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    RoleName::deserialize(d).map(|r| r.0)
}

fn any() -> Vec<NamePattern> {
    vec![NamePattern("*".to_string())]
}

/// One unseal grant: `role` may open values found in Secrets whose namespace, name and data
/// key match the patterns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnsealGrant {
    /// The policy role granted.
    #[serde(deserialize_with = "role")]
    pub role: String,
    /// Namespace patterns (required).
    #[serde(deserialize_with = "namespaces")]
    pub namespaces: Vec<NamePattern>,
    /// Secret name patterns (default: any).
    #[serde(default = "any", deserialize_with = "secrets")]
    pub secrets: Vec<NamePattern>,
    /// Data key patterns (default: any).
    #[serde(default = "any", deserialize_with = "keys")]
    pub keys: Vec<NamePattern>,
}

impl UnsealGrant {
    /// Whether this grant lets `role` unseal a value found at `location`.
    pub fn admits(&self, role: &str, location: &Location) -> bool {
        let any = |patterns: &[NamePattern], name: &str| patterns.iter().any(|p| p.matches(name));
        self.role == role
            && any(&self.namespaces, &location.namespace)
            && any(&self.secrets, &location.secret)
            && any(&self.keys, &location.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeydConfig;

    fn loc(namespace: &str, secret: &str, key: &str) -> Location {
        Location {
            namespace: namespace.into(),
            secret: secret.into(),
            key: key.into(),
        }
    }

    #[test]
    fn globs_match_runs_of_characters() {
        let p = |s: &str| NamePattern(s.to_string());
        assert!(p("payments").matches("payments"));
        assert!(!p("payments").matches("payments-eu"));
        assert!(p("payments-*").matches("payments-eu"));
        assert!(p("payments-*").matches("payments-"));
        assert!(!p("payments-*").matches("payments"));
        assert!(p("*").matches(""));
        assert!(p("db-*-password").matches("db-main-password"));
        assert!(!p("db-*-password").matches("db-main-passwords"));
        assert!(p("*a*b*").matches("xxaybzz"));
        assert!(!p("*a*b*").matches("xxbyazz"));
    }

    #[test]
    fn grants_parse_with_defaults_and_admit_locations() {
        let c = KeydConfig::from_yaml(
            "keyrings:\n  apps:\n    unseal:\n      - role: app\n        namespaces: [\"pay\", \"pay-*\"]\n        secrets: [\"db-*\"]\n",
        )
        .unwrap();
        let access = c.keyring("apps").unwrap();
        let grant = &access.unseal[0];
        assert_eq!(grant.keys, any());
        assert!(access.allows(crate::Operation::Unseal, "app"));
        assert!(!access.allows(crate::Operation::Unseal, "other"));
        assert!(grant.admits("app", &loc("pay-eu", "db-main", "password")));
        assert!(!grant.admits("other", &loc("pay-eu", "db-main", "password")));
        assert!(!grant.admits("app", &loc("shop", "db-main", "password")));
        assert!(!grant.admits("app", &loc("pay", "api-token", "token")));
    }

    #[test]
    fn bad_grants_are_refused_with_their_place() {
        let bad = |grant: &str| {
            let text = format!("keyrings:\n  apps:\n    unseal:\n      - {grant}\n");
            KeydConfig::from_yaml(&text).unwrap_err().to_string()
        };
        let e = bad("{role: app, namespaces: [\"Pay\"]}");
        assert!(
            e.contains("namespace pattern") && e.contains("line 4"),
            "{e}"
        );
        let e = bad("{role: app, namespaces: []}");
        assert!(e.contains("matches nothing"), "{e}");
        let e = bad("{role: app}");
        assert!(e.contains("namespaces"), "{e}");
        let e = bad("{role: \"\", namespaces: [\"*\"]}");
        assert!(e.contains("empty role"), "{e}");
        let e = bad("{role: app, namespaces: [\"*\"], keys: [\"a/b\"]}");
        assert!(e.contains("data key pattern"), "{e}");
        let e = bad("{role: app, namespaces: [\"*\"], secret: [\"x\"]}");
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn undefined_grant_roles_are_reported() {
        let c = KeydConfig::from_yaml(
            "keyrings:\n  apps:\n    unseal:\n      - {role: typo, namespaces: [\"*\"]}\n",
        )
        .unwrap();
        let policy = coffer_attest::policy::Policy::from_yaml(&format!(
            "version: 1\nallow_simulation: true\nroles:\n  - name: app\n    sim: {{ signer: [\"{}\"] }}\n",
            "ab".repeat(32)
        ))
        .unwrap();
        let undefined = c.undefined_roles(&policy);
        assert_eq!(undefined, vec![("apps", crate::Operation::Unseal, "typo")]);
    }
}

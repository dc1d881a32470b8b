//! Scopes, locations and the binding rules a sealed value carries.

use std::fmt;

use crate::error::SealError;
use crate::names;

/// Where a sealed value may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Only in the Secret (namespace + name) and data key it was sealed for.
    Strict,
    /// In any Secret and data key of the namespace it was sealed for.
    Namespace,
    /// Anywhere in the cluster (any namespace, Secret and key).
    Cluster,
}

impl Scope {
    /// `strict`, `namespace` or `cluster`.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Strict => "strict",
            Scope::Namespace => "namespace",
            Scope::Cluster => "cluster",
        }
    }

    /// Parses [`Scope::name`].
    pub fn from_name(name: &str) -> Option<Scope> {
        match name {
            "strict" => Some(Scope::Strict),
            "namespace" => Some(Scope::Namespace),
            "cluster" => Some(Scope::Cluster),
            _ => None,
        }
    }

    /// The scope's byte in the wire header (1 strict, 2 namespace, 3 cluster).
    pub fn wire_byte(self) -> u8 {
        match self {
            Scope::Strict => 1,
            Scope::Namespace => 2,
            Scope::Cluster => 3,
        }
    }

    /// Parses [`Scope::wire_byte`].
    pub fn from_wire_byte(byte: u8) -> Option<Scope> {
        match byte {
            1 => Some(Scope::Strict),
            2 => Some(Scope::Namespace),
            3 => Some(Scope::Cluster),
            _ => None,
        }
    }

    fn fixes_namespace(self) -> bool {
        self != Scope::Cluster
    }

    fn fixes_secret_and_key(self) -> bool {
        self == Scope::Strict
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a value was found (or is meant to go): a Secret's namespace and name and a data key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Location {
    /// The Secret's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The data key within the Secret.
    pub key: String,
}

/// The authenticated binding of a sealed value: its scope and the parts of the location the
/// scope fixes (strict: all three; namespace: the namespace; cluster: none — the others are
/// empty strings).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    scope: Scope,
    namespace: String,
    secret: String,
    key: String,
}

/// The fields of a binding as they appear in a header, before their rules are checked.
pub(crate) struct BindingFields<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) secret: &'a str,
    pub(crate) key: &'a str,
}

/// Why header fields do not make a binding: a field present or missing against the scope,
/// or a name that breaks its rule.
pub(crate) enum FieldProblem<'a> {
    Scope {
        field: &'static str,
        present: bool,
    },
    Name {
        field: &'static str,
        value: &'a str,
        reason: &'static str,
    },
}

impl Binding {
    /// The binding of `scope` for a value meant for `location` (the parts the scope does not
    /// fix are dropped). Refuses names Kubernetes would refuse (namespace: DNS-1123 label;
    /// Secret name: DNS-1123 subdomain; data key: `[-._a-zA-Z0-9]+`, at most 253).
    pub fn new(scope: Scope, location: &Location) -> Result<Binding, SealError> {
        fn fixed(fixes: bool, part: &str) -> &str {
            if fixes {
                part
            } else {
                ""
            }
        }
        let fields = BindingFields {
            namespace: fixed(scope.fixes_namespace(), &location.namespace),
            secret: fixed(scope.fixes_secret_and_key(), &location.secret),
            key: fixed(scope.fixes_secret_and_key(), &location.key),
        };
        Binding::from_fields(scope, &fields).map_err(|problem| match problem {
            // Only a fixed part can be missing here, and an empty name is an invalid one.
            FieldProblem::Scope { field, .. } => SealError::invalid_name(field, "", "it is empty"),
            FieldProblem::Name {
                field,
                value,
                reason,
            } => SealError::invalid_name(field, value, reason),
        })
    }

    /// The binding a header spells: every field the scope fixes present and valid, every
    /// other field empty.
    pub(crate) fn from_fields<'a>(
        scope: Scope,
        fields: &BindingFields<'a>,
    ) -> Result<Binding, FieldProblem<'a>> {
        let parts: [(&'static str, &'a str, bool, names::Rule); 3] = [
            (
                "namespace",
                fields.namespace,
                scope.fixes_namespace(),
                names::namespace_problem,
            ),
            (
                "Secret name",
                fields.secret,
                scope.fixes_secret_and_key(),
                names::secret_name_problem,
            ),
            (
                "data key",
                fields.key,
                scope.fixes_secret_and_key(),
                names::data_key_problem,
            ),
        ];
        for (field, value, fixed, problem) in parts {
            if fixed == value.is_empty() {
                return Err(FieldProblem::Scope {
                    field,
                    present: !value.is_empty(),
                });
            }
            if let Some(reason) = fixed.then(|| problem(value)).flatten() {
                return Err(FieldProblem::Name {
                    field,
                    value,
                    reason,
                });
            }
        }
        Ok(Binding {
            scope,
            namespace: fields.namespace.to_string(),
            secret: fields.secret.to_string(),
            key: fields.key.to_string(),
        })
    }

    /// The three binding fields as the header stores them (empty where the scope leaves them
    /// open).
    pub(crate) fn fields(&self) -> BindingFields<'_> {
        BindingFields {
            namespace: &self.namespace,
            secret: &self.secret,
            key: &self.key,
        }
    }

    /// The scope.
    pub fn scope(&self) -> Scope {
        self.scope
    }

    /// The namespace the value is bound to (`None` for cluster scope).
    pub fn namespace(&self) -> Option<&str> {
        (!self.namespace.is_empty()).then_some(self.namespace.as_str())
    }

    /// The Secret name the value is bound to (strict scope only).
    pub fn secret(&self) -> Option<&str> {
        (!self.secret.is_empty()).then_some(self.secret.as_str())
    }

    /// The data key the value is bound to (strict scope only).
    pub fn key(&self) -> Option<&str> {
        (!self.key.is_empty()).then_some(self.key.as_str())
    }

    /// Whether a value with this binding may be used at `location`; the error says which part
    /// differs (e.g. "sealed for namespace \"a\", found in namespace \"b\"").
    pub fn admits(&self, location: &Location) -> Result<(), BindingMismatch> {
        let mut differences = Vec::new();
        if self.scope.fixes_namespace() && self.namespace != location.namespace {
            differences.push(format!(
                "sealed for namespace {:?}, found in namespace {:?}",
                self.namespace, location.namespace
            ));
        }
        if self.scope.fixes_secret_and_key() {
            if self.secret != location.secret {
                differences.push(format!(
                    "sealed for Secret {:?}, found in Secret {:?}",
                    self.secret, location.secret
                ));
            }
            if self.key != location.key {
                differences.push(format!(
                    "sealed for data key {:?}, found under data key {:?}",
                    self.key, location.key
                ));
            }
        }
        if differences.is_empty() {
            Ok(())
        } else {
            Err(BindingMismatch(format!(
                "{} (scope {})",
                differences.join("; "),
                self.scope
            )))
        }
    }
}

impl fmt::Display for Binding {
    /// `strict ns/secret/key`, `namespace ns`, or `cluster`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scope {
            Scope::Strict => write!(f, "strict {}/{}/{}", self.namespace, self.secret, self.key),
            Scope::Namespace => write!(f, "namespace {}", self.namespace),
            Scope::Cluster => f.write_str("cluster"),
        }
    }
}

/// Why a binding refuses a location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BindingMismatch(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    fn at(namespace: &str, secret: &str, key: &str) -> Location {
        Location {
            namespace: namespace.into(),
            secret: secret.into(),
            key: key.into(),
        }
    }

    #[test]
    fn strict_admits_only_its_location() {
        let b = Binding::new(Scope::Strict, &at("prod", "db", "password")).unwrap();
        assert_eq!(b.to_string(), "strict prod/db/password");
        b.admits(&at("prod", "db", "password")).unwrap();
        let e = b.admits(&at("dev", "db", "password")).unwrap_err();
        assert_eq!(
            e.0,
            "sealed for namespace \"prod\", found in namespace \"dev\" (scope strict)"
        );
        let e = b.admits(&at("prod", "api", "password")).unwrap_err();
        assert!(
            e.0.contains("sealed for Secret \"db\", found in Secret \"api\""),
            "{e}"
        );
        let e = b.admits(&at("prod", "db", "user")).unwrap_err();
        assert!(
            e.0.contains("sealed for data key \"password\", found under data key \"user\""),
            "{e}"
        );
    }

    #[test]
    fn namespace_scope_admits_any_secret_of_its_namespace() {
        let b = Binding::new(Scope::Namespace, &at("prod", "db", "password")).unwrap();
        assert_eq!(b.to_string(), "namespace prod");
        assert_eq!((b.secret(), b.key()), (None, None));
        b.admits(&at("prod", "other", "k")).unwrap();
        let e = b.admits(&at("dev", "db", "password")).unwrap_err();
        assert!(e
            .0
            .contains("namespace \"prod\", found in namespace \"dev\""));
    }

    #[test]
    fn cluster_scope_admits_anything() {
        let b = Binding::new(Scope::Cluster, &at("", "", "")).unwrap();
        assert_eq!(b.to_string(), "cluster");
        assert_eq!(b.namespace(), None);
        b.admits(&at("any", "where", "at-all")).unwrap();
    }

    #[test]
    fn new_refuses_names_kubernetes_refuses() {
        let e = Binding::new(Scope::Strict, &at("Prod", "db", "k")).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid namespace \"Prod\""),
            "{e}"
        );
        let e = Binding::new(Scope::Strict, &at("prod", "db_1", "k")).unwrap_err();
        assert!(e.to_string().starts_with("invalid Secret name"), "{e}");
        let e = Binding::new(Scope::Strict, &at("prod", "db", "a/b")).unwrap_err();
        assert!(e.to_string().starts_with("invalid data key"), "{e}");
        // Parts the scope does not fix are not checked, since they are dropped.
        Binding::new(Scope::Namespace, &at("prod", "db_1", "a/b")).unwrap();
    }
}

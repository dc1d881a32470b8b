//! Finding the sealed values the kubelet delivered and where each came from: the environment
//! (`secretKeyRef`, `envFrom`), the pod's namespace, and the location keyd checks a value's
//! binding against.
//!
//! The kubelet does not tell a container which Secret a variable or a volume came from, so the
//! Secret and data key come from a flag (`--env-source`, `--files SECRET=DIR`) or from the
//! value's own strict binding; a value with neither is refused before keyd is asked.

use std::ffi::OsString;
use std::path::Path;

use coffer_sealed::{Location, Scope, SealedValue, PREFIX};

use crate::error::{Origin, Refusal, RunError};
use crate::EnvSource;

/// A sealed value found in the pod's environment or volumes, and where keyd should be told it
/// was found.
#[derive(Debug)]
pub struct Item {
    /// Where it was found.
    pub origin: Origin,
    /// The sealed text (`coffer.v1.…`): ciphertext only.
    pub sealed: String,
    /// Its parsed header (keyring, binding).
    pub value: SealedValue,
    /// The Secret and data key it is presented as.
    pub location: Location,
}

/// What resolving one found value gives: an item to unseal, or a refusal decided locally
/// (a `coffer.v1.` text that does not parse).
#[derive(Debug)]
pub enum Resolved {
    /// Ask keyd.
    Item(Box<Item>),
    /// Refused without asking keyd.
    Refused(Refusal),
}

/// The sealed values among `vars`: `(name, sealed text)` for every variable whose value starts
/// with `coffer.v1.`. Other variables, and names or values that are not UTF-8, are left alone.
pub fn sealed_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<(String, String)> {
    vars.into_iter()
        .filter_map(|(name, value)| {
            let value = value.into_string().ok()?;
            if !value.starts_with(PREFIX) {
                return None;
            }
            Some((name.into_string().ok()?, value))
        })
        .collect()
}

/// The pod's namespace: `flag` (from `--namespace` or `POD_NAMESPACE`) if given, else the
/// content of `file` (the service account's namespace file).
pub fn namespace(flag: Option<&str>, file: &Path) -> Result<String, RunError> {
    let (namespace, from) = match flag {
        Some(n) => (n.to_string(), "--namespace / POD_NAMESPACE".to_string()),
        None => {
            let text = std::fs::read(file).map_err(|e| RunError::NoNamespace {
                file: file.to_path_buf(),
                detail: e.to_string(),
            })?;
            // The file is a few bytes; anything longer is not a namespace.
            let text = String::from_utf8(text.into_iter().take(256).collect()).map_err(|_| {
                RunError::NoNamespace {
                    file: file.to_path_buf(),
                    detail: "not UTF-8".into(),
                }
            })?;
            (text.trim().to_string(), file.display().to_string())
        }
    };
    check_namespace(&namespace).map_err(|reason| RunError::BadFlag {
        flag: "namespace",
        value: format!("{namespace:?} (from {from})"),
        reason: reason.into(),
    })?;
    Ok(namespace)
}

/// A Kubernetes namespace name: a DNS-1123 label.
fn check_namespace(name: &str) -> Result<(), &'static str> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err("not a namespace name (a DNS-1123 label: lower-case letters, digits and '-', at most 63)")
    }
}

/// Resolves one sealed text found at `origin`. `source` is the Secret and data key a flag
/// says it came from (`--env-source`, or `--files SECRET=` plus the file name); without one,
/// a strict binding names them. The namespace is always the pod's: keyd refuses a value bound
/// to another.
pub fn resolve(
    origin: Origin,
    sealed: String,
    source: Option<(String, String)>,
    namespace: &str,
) -> Result<Resolved, RunError> {
    let qualified = |secret: &str| format!("{namespace}/{secret}");
    let value = match SealedValue::parse(&sealed) {
        Ok(value) => value,
        Err(e) => {
            let (secret, key) = source.unwrap_or_else(|| match &origin {
                Origin::File { key, .. } => ("(unknown)".into(), key.clone()),
                Origin::Env { .. } => ("(unknown)".into(), "(unknown)".into()),
            });
            return Ok(Resolved::Refused(Refusal {
                origin,
                secret: qualified(&secret),
                key,
                reason: format!(
                    "not a valid sealed value ({e}); reseal it with `kubectl coffer seal`"
                ),
            }));
        }
    };
    let binding = value.binding();
    let (secret, key) = match source {
        Some(source) => source,
        None => match (binding.scope(), binding.secret(), binding.key()) {
            (Scope::Strict, Some(secret), Some(key)) => (secret.to_string(), key.to_string()),
            (scope, ..) => {
                let hint = match &origin {
                    Origin::Env { var } => format!("--env-source {var}=SECRET/KEY"),
                    Origin::File { dir, .. } => format!("--files SECRET={}", dir.display()),
                };
                return Err(RunError::UnknownSource {
                    origin,
                    scope: scope.name().into(),
                    hint,
                });
            }
        },
    };
    let location = Location {
        namespace: namespace.to_string(),
        secret,
        key,
    };
    Ok(Resolved::Item(Box::new(Item {
        origin,
        sealed,
        value,
        location,
    })))
}

/// The `--env-source` entry for `var`, as `(secret, key)`.
pub fn env_source(sources: &[EnvSource], var: &str) -> Option<(String, String)> {
    sources
        .iter()
        .find(|s| s.var == var)
        .map(|s| (s.secret.clone(), s.key.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sealed_values_are_found() {
        let vars = [
            ("A".into(), "coffer.v1.AAAA".into()),
            ("B".into(), "plain".into()),
            ("C".into(), "coffer.v2.AAAA".into()),
        ];
        assert_eq!(
            sealed_env(vars),
            vec![("A".to_string(), "coffer.v1.AAAA".to_string())]
        );
    }

    #[test]
    fn namespace_comes_from_the_flag_then_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("namespace");
        assert_eq!(namespace(Some("payments"), &file).unwrap(), "payments");
        let e = namespace(None, &file).unwrap_err();
        assert!(e.to_string().contains("POD_NAMESPACE"), "{e}");
        std::fs::write(&file, "shop\n").unwrap();
        assert_eq!(namespace(None, &file).unwrap(), "shop");
        assert!(namespace(Some("Bad_NS"), &file).is_err());
    }

    #[test]
    fn a_value_without_a_strict_binding_needs_a_flag_naming_its_secret() {
        let key = coffer_sealed::SealingKeyPair::generate().unwrap();
        let at = Location {
            namespace: "ns".into(),
            secret: "db".into(),
            key: "password".into(),
        };
        let binding = coffer_sealed::Binding::new(Scope::Namespace, &at).unwrap();
        let sealed = coffer_sealed::seal("apps", key.public(), &binding, b"x")
            .unwrap()
            .to_text();
        let origin = Origin::Env { var: "PW".into() };
        let e = resolve(origin.clone(), sealed.clone(), None, "ns").unwrap_err();
        assert!(e.to_string().contains("--env-source PW=SECRET/KEY"), "{e}");
        assert_eq!(e.exit_code(), crate::EXIT_CONFIG);
        let source = Some(("db".to_string(), "password".to_string()));
        let Resolved::Item(item) = resolve(origin, sealed, source, "ns").unwrap() else {
            panic!("refused")
        };
        assert_eq!(item.location, at);
    }

    #[test]
    fn an_unparsable_value_is_refused_locally_naming_its_origin() {
        let origin = Origin::Env { var: "X".into() };
        let r = resolve(origin, "coffer.v1.!!".into(), None, "ns").unwrap();
        let Resolved::Refused(refusal) = r else {
            panic!("not refused")
        };
        assert!(refusal.reason.contains("not a valid sealed value"));
    }
}

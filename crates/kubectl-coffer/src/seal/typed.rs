//! The keys the built-in Secret types require (as the API server checks them), checked before
//! sealing: once sealed, a missing key would only show when the Secret is created, and a
//! malformed docker config only when a pod pulls.

use std::collections::BTreeMap;

use super::manifest::Entry;
use crate::error::Error;

/// Checks `entries` against what `secret_type` requires.
pub fn check(
    secret_type: Option<&str>,
    entries: &BTreeMap<String, Entry>,
    secret: &str,
) -> Result<(), Error> {
    let missing = |keys: &[&str]| -> Error {
        Error::usage(format!(
            "Secret {secret:?} has type {}, which needs the key{} {}; add {}",
            secret_type.unwrap_or_default(),
            if keys.len() > 1 { "s" } else { "" },
            keys.join(" and "),
            if keys.len() > 1 { "them" } else { "it" },
        ))
    };
    let require = |keys: &[&str]| -> Result<(), Error> {
        let absent: Vec<&str> = keys
            .iter()
            .copied()
            .filter(|k| !entries.contains_key(*k))
            .collect();
        if absent.is_empty() {
            Ok(())
        } else {
            Err(missing(&absent))
        }
    };
    let json = |key: &str| -> Result<(), Error> {
        require(&[key])?;
        if let Some(Entry::Plain(bytes)) = entries.get(key) {
            // Only the position is reported: the value is a registry credential.
            if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
                return Err(Error::usage(format!(
                    "Secret {secret:?}: {key} is not valid JSON (line {}, column {}); give the \
                     content of a docker config.json",
                    e.line(),
                    e.column()
                )));
            }
        }
        Ok(())
    };
    match secret_type.unwrap_or("Opaque") {
        "kubernetes.io/tls" => require(&["tls.crt", "tls.key"]),
        "kubernetes.io/dockerconfigjson" => json(".dockerconfigjson"),
        "kubernetes.io/dockercfg" => json(".dockercfg"),
        "kubernetes.io/ssh-auth" => require(&["ssh-privatekey"]),
        "kubernetes.io/basic-auth" => {
            if entries.contains_key("username") || entries.contains_key("password") {
                Ok(())
            } else {
                Err(Error::usage(format!(
                    "Secret {secret:?} has type kubernetes.io/basic-auth, which needs the key \
                     username or password (or both)"
                )))
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn entries(pairs: &[(&str, &str)]) -> BTreeMap<String, Entry> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Entry::Plain(Zeroizing::new(v.as_bytes().to_vec())),
                )
            })
            .collect()
    }

    #[test]
    fn typed_secrets_need_their_keys() {
        let tls = Some("kubernetes.io/tls");
        let e = check(tls, &entries(&[("tls.crt", "c")]), "web")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs the key tls.key"), "{e}");
        check(tls, &entries(&[("tls.crt", "c"), ("tls.key", "k")]), "web").unwrap();
        let docker = Some("kubernetes.io/dockerconfigjson");
        let e = check(docker, &entries(&[(".dockerconfigjson", "{not json")]), "r")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not valid JSON") && !e.contains("not json"),
            "{e}"
        );
        check(docker, &entries(&[(".dockerconfigjson", "{}")]), "r").unwrap();
        let basic = Some("kubernetes.io/basic-auth");
        assert!(check(basic, &entries(&[("user", "u")]), "b").is_err());
        check(basic, &entries(&[("password", "p")]), "b").unwrap();
        assert!(check(Some("kubernetes.io/ssh-auth"), &entries(&[]), "s").is_err());
        check(None, &entries(&[]), "o").unwrap();
    }
}

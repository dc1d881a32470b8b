//! Editing a kubeconfig as a YAML value tree: find a user, take its credential out, put an
//! exec section in (and back). Everything else in the file is kept as it was (comments aside).

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use coffer_credstore::{Credential, SecretBytes};
use serde_yaml_ng::{Mapping, Value};
use zeroize::Zeroizing;

use crate::error::Error;

/// The exec plugin command written into the kubeconfig (found on `PATH` by kubectl).
pub(crate) const PLUGIN_COMMAND: &str = "kubectl-coffer";
const EXEC_API_VERSION: &str = "client.authentication.k8s.io/v1";

/// The credential fields `protect` moves, in kubeconfig spelling.
const CREDENTIAL_FIELDS: [&str; 6] = [
    "client-certificate-data",
    "client-certificate",
    "client-key-data",
    "client-key",
    "token",
    "tokenFile",
];

/// What `protect` took out of a user (`Debug` shows no credential bytes).
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) credential: Credential,
    /// The kubeconfig fields it came from.
    pub(crate) fields: Vec<&'static str>,
    /// Files it was read from (`client-certificate`, `client-key`, `tokenFile`), which still
    /// exist.
    pub(crate) files: Vec<PathBuf>,
}

/// Where a protected user's credential lives, read back from its exec section.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ExecRef {
    pub(crate) store: PathBuf,
    pub(crate) id: String,
}

/// The user `protect`/`restore` act on: `--user`, else the current context's.
pub(crate) fn selected_user(doc: &Value, user: Option<&str>) -> Result<String, Error> {
    if let Some(user) = user {
        return Ok(user.to_string());
    }
    let current = doc
        .get("current-context")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Error::usage("the kubeconfig has no current-context: pass --user"))?;
    named(doc, "contexts", current)
        .and_then(|c| c.get("context"))
        .and_then(|c| c.get("user"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            Error::usage(format!(
                "the current context {current:?} names no user: pass --user"
            ))
        })
}

fn named<'a>(doc: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    doc.get(list)?
        .as_sequence()?
        .iter()
        .find(|item| item.get("name").and_then(Value::as_str) == Some(name))
}

/// The `user:` mapping of the named user.
pub(crate) fn user_mut<'a>(doc: &'a mut Value, name: &str) -> Result<&'a mut Mapping, Error> {
    let users = doc
        .get_mut("users")
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| Error::usage("the kubeconfig has no users"))?;
    let entry = users
        .iter_mut()
        .find(|item| item.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| Error::usage(format!("the kubeconfig has no user named {name:?}")))?;
    let Value::Mapping(entry) = entry else {
        return Err(Error::usage(format!("user {name:?} is not a mapping")));
    };
    let user = entry
        .entry(Value::from("user"))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if user.is_null() {
        *user = Value::Mapping(Mapping::new());
    }
    user.as_mapping_mut()
        .ok_or_else(|| Error::usage(format!("user {name:?} has a `user` that is not a mapping")))
}

/// Reads the user's credential (relative file paths are relative to the kubeconfig's
/// directory, as kubectl takes them). Changes nothing.
pub(crate) fn take_credential(user: &Mapping, name: &str, base: &Path) -> Result<Taken, Error> {
    if user.contains_key("exec") {
        return Err(Error::usage(format!(
            "user {name:?} already gets its credential from an exec plugin; nothing to protect"
        )));
    }
    if user.contains_key("auth-provider") {
        return Err(Error::usage(format!(
            "user {name:?} uses an auth-provider, which kubectl coffer cannot protect"
        )));
    }
    let mut taken = Taken {
        credential: Credential {
            client_certificate: None,
            client_key: None,
            token: None,
        },
        fields: Vec::new(),
        files: Vec::new(),
    };
    taken.credential.client_certificate = pem_part(
        user,
        name,
        base,
        "client-certificate-data",
        "client-certificate",
        &mut taken,
    )?;
    taken.credential.client_key = pem_part(
        user,
        name,
        base,
        "client-key-data",
        "client-key",
        &mut taken,
    )?;
    taken.credential.token = token_part(user, name, base, &mut taken)?;
    if taken.fields.is_empty() {
        return Err(Error::usage(format!(
            "user {name:?} has no client certificate, client key or token to protect"
        )));
    }
    taken
        .credential
        .validate()
        .map_err(|e| Error::usage(format!("user {name:?}: {e}")))?;
    Ok(taken)
}

fn string_field<'a>(user: &'a Mapping, name: &str, field: &str) -> Result<Option<&'a str>, Error> {
    match user.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::usage(format!(
            "user {name:?}: {field} is not a string"
        ))),
    }
}

fn pem_part(
    user: &Mapping,
    name: &str,
    base: &Path,
    data_field: &'static str,
    file_field: &'static str,
    taken: &mut Taken,
) -> Result<Option<SecretBytes>, Error> {
    let data = string_field(user, name, data_field)?;
    let file = string_field(user, name, file_field)?;
    match (data, file) {
        (Some(_), Some(_)) => Err(Error::usage(format!(
            "user {name:?} has both {data_field} and {file_field}; keep one"
        ))),
        (Some(data), None) => {
            let mut pem = Zeroizing::new(Vec::with_capacity(data.len()));
            STANDARD
                .decode_vec(data.trim(), &mut pem)
                .map_err(|_| Error::usage(format!("user {name:?}: {data_field} is not base64")))?;
            taken.fields.push(data_field);
            Ok(Some(SecretBytes::new(pem)))
        }
        (None, Some(file)) => {
            let path = base.join(file);
            let bytes = read_secret_file(&path, name, file_field)?;
            taken.fields.push(file_field);
            taken.files.push(path);
            Ok(Some(SecretBytes::new(bytes)))
        }
        (None, None) => Ok(None),
    }
}

fn token_part(
    user: &Mapping,
    name: &str,
    base: &Path,
    taken: &mut Taken,
) -> Result<Option<SecretBytes>, Error> {
    let token = string_field(user, name, "token")?;
    let file = string_field(user, name, "tokenFile")?;
    match (token, file) {
        (Some(_), Some(_)) => Err(Error::usage(format!(
            "user {name:?} has both token and tokenFile; keep one"
        ))),
        (Some(token), None) => {
            taken.fields.push("token");
            Ok(Some(SecretBytes::new(Zeroizing::new(
                token.as_bytes().to_vec(),
            ))))
        }
        (None, Some(file)) => {
            let path = base.join(file);
            let bytes = read_secret_file(&path, name, "tokenFile")?;
            // kubectl trims whitespace around a token read from a file.
            let token = std::str::from_utf8(&bytes)
                .map_err(|_| Error::usage(format!("{} is not text", path.display())))?
                .trim();
            taken.fields.push("tokenFile");
            taken.files.push(path);
            Ok(Some(SecretBytes::new(Zeroizing::new(
                token.as_bytes().to_vec(),
            ))))
        }
        (None, None) => Ok(None),
    }
}

fn read_secret_file(path: &Path, name: &str, field: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let limit = coffer_credstore::MAX_CREDENTIAL_BYTES as u64;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::usage(format!("user {name:?}: {field} {}: {e}", path.display())))?;
    if meta.len() > limit {
        return Err(Error::usage(format!(
            "user {name:?}: {field} {} is larger than {limit} bytes",
            path.display()
        )));
    }
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| Error::usage(format!("user {name:?}: {field} {}: {e}", path.display())))
}

/// Replaces the user's credential fields with the `kubectl-coffer credential` exec section.
pub(crate) fn install_exec(user: &mut Mapping, exec: &ExecRef) {
    for field in CREDENTIAL_FIELDS {
        user.remove(field);
    }
    let mut section = Mapping::new();
    section.insert("apiVersion".into(), EXEC_API_VERSION.into());
    section.insert("command".into(), PLUGIN_COMMAND.into());
    section.insert(
        "args".into(),
        Value::Sequence(vec![
            "credential".into(),
            "--store".into(),
            exec.store.to_string_lossy().into_owned().into(),
            "--id".into(),
            exec.id.clone().into(),
        ]),
    );
    section.insert("interactiveMode".into(), "IfAvailable".into());
    section.insert("provideClusterInfo".into(), false.into());
    user.insert("exec".into(), Value::Mapping(section));
}

/// The store and id of a user protected by [`install_exec`].
pub(crate) fn exec_ref(user: &Mapping, name: &str) -> Result<ExecRef, Error> {
    let not_ours = || {
        Error::usage(format!(
            "user {name:?} is not protected by kubectl coffer (no `{PLUGIN_COMMAND} credential` \
             exec section); nothing to restore"
        ))
    };
    let exec = user.get("exec").ok_or_else(not_ours)?;
    let command = exec.get("command").and_then(Value::as_str).unwrap_or("");
    if Path::new(command).file_name() != Some(PLUGIN_COMMAND.as_ref()) {
        return Err(not_ours());
    }
    let args: Vec<&str> = exec
        .get("args")
        .and_then(Value::as_sequence)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if args.first() != Some(&"credential") {
        return Err(not_ours());
    }
    let after = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .map(|v| v.to_string())
    };
    let store = after("--store").ok_or_else(not_ours)?;
    let id = after("--id").ok_or_else(not_ours)?;
    Ok(ExecRef {
        store: PathBuf::from(store),
        id,
    })
}

/// Replaces the exec section with the credential, as `*-data` fields and `token`.
pub(crate) fn install_credential(user: &mut Mapping, credential: &Credential) -> Result<(), Error> {
    user.remove("exec");
    if let Some(cert) = &credential.client_certificate {
        user.insert(
            "client-certificate-data".into(),
            STANDARD.encode(cert.expose()).into(),
        );
    }
    if let Some(key) = &credential.client_key {
        user.insert(
            "client-key-data".into(),
            STANDARD.encode(key.expose()).into(),
        );
    }
    if let Some(token) = &credential.token {
        user.insert(
            "token".into(),
            token
                .as_str()
                .map_err(|e| Error::new(e.to_string()))?
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
preferences: {}
clusters:
- name: prod
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: Q0E=
contexts:
- name: prod-admin
  context: {cluster: prod, user: admin, namespace: kube-system}
- name: prod-dev
  context: {cluster: prod, user: dev}
current-context: prod-admin
users:
- name: admin
  user:
    client-certificate-data: Q0VSVA==
    client-key-data: S0VZ
- name: dev
  user:
    token: dev-token
    extra-field: kept
"#;

    fn doc() -> Value {
        serde_yaml_ng::from_str(KUBECONFIG).unwrap()
    }

    #[test]
    fn protect_then_restore_round_trips_and_keeps_the_rest() {
        let mut doc = doc();
        let name = selected_user(&doc, None).unwrap();
        assert_eq!(name, "admin");
        let user = user_mut(&mut doc, &name).unwrap();
        let taken = take_credential(user, &name, Path::new("/")).unwrap();
        assert_eq!(taken.fields, ["client-certificate-data", "client-key-data"]);
        assert_eq!(
            taken
                .credential
                .client_certificate
                .as_ref()
                .unwrap()
                .expose(),
            b"CERT"
        );
        let exec = ExecRef {
            store: "/s/credentials.sealed".into(),
            id: "admin".into(),
        };
        install_exec(user, &exec);
        let text = serde_yaml_ng::to_string(&doc).unwrap();
        assert!(
            !text.contains("Q0VSVA==") && !text.contains("S0VZ"),
            "{text}"
        );
        let reread: Value = serde_yaml_ng::from_str(&text).unwrap();
        let mut reread_doc = reread.clone();
        let user = user_mut(&mut reread_doc, "admin").unwrap();
        assert_eq!(exec_ref(user, "admin").unwrap(), exec);
        assert_eq!(user["exec"]["interactiveMode"], "IfAvailable");
        assert_eq!(user["exec"]["provideClusterInfo"], false);
        assert!(take_credential(user, "admin", Path::new("/")).is_err());
        install_credential(user, &taken.credential).unwrap();
        assert_eq!(
            reread_doc,
            self::doc(),
            "restore gives back the original document"
        );
        // Everything else came through the rewrite untouched.
        assert_eq!(reread["contexts"], doc["contexts"]);
        assert_eq!(reread["preferences"], doc["preferences"]);
    }

    #[test]
    fn user_selection_and_refusals() {
        let mut doc = doc();
        assert_eq!(selected_user(&doc, Some("dev")).unwrap(), "dev");
        let err = user_mut(&mut doc, "nobody").unwrap_err();
        assert!(err.to_string().contains("no user named"), "{err}");
        let dev = user_mut(&mut doc, "dev").unwrap();
        let taken = take_credential(dev, "dev", Path::new("/")).unwrap();
        assert_eq!(taken.fields, ["token"]);
        install_exec(
            dev,
            &ExecRef {
                store: "/s".into(),
                id: "dev".into(),
            },
        );
        assert_eq!(dev["extra-field"], "kept");
        assert!(dev.get("token").is_none());

        let mut half: Value = serde_yaml_ng::from_str(
            "users:\n- name: u\n  user:\n    client-certificate-data: Q0VSVA==\n",
        )
        .unwrap();
        let err =
            take_credential(user_mut(&mut half, "u").unwrap(), "u", Path::new("/")).unwrap_err();
        assert!(err.to_string().contains("needs both"), "{err}");
        let mut none: Value =
            serde_yaml_ng::from_str("users:\n- name: u\n  user: {}\ncurrent-context: x\n").unwrap();
        let err =
            take_credential(user_mut(&mut none, "u").unwrap(), "u", Path::new("/")).unwrap_err();
        assert!(
            err.to_string().contains("nothing") || err.to_string().contains("no client"),
            "{err}"
        );
        assert!(selected_user(&none, None)
            .unwrap_err()
            .to_string()
            .contains("pass --user"));
        let mut other: Value = serde_yaml_ng::from_str(
            "users:\n- name: u\n  user:\n    exec: {command: aws, args: [eks, get-token]}\n",
        )
        .unwrap();
        let user = user_mut(&mut other, "u").unwrap();
        assert!(exec_ref(user, "u")
            .unwrap_err()
            .to_string()
            .contains("not protected"));
    }
}

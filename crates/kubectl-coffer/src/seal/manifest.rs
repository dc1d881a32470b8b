//! Secret manifests in and out: one `v1` Secret as YAML or JSON, its values (plaintext or
//! already sealed), and the sealed Secret written back with everything else kept.

use std::collections::BTreeMap;
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use clap::ValueEnum;
use coffer_sealed::SealedValue;
use serde::Deserialize;
use serde_json::{Map, Value as Json};
use zeroize::Zeroizing;

use super::fsio;
use crate::error::Error;

/// Largest manifest read: a Secret's 1 MiB of values, sealed (base64url and HPKE overhead),
/// plus metadata.
pub const MAX_MANIFEST_LEN: usize = 4 << 20;
/// Kubernetes' limit on a Secret's data: the sealed values must fit in it.
pub const MAX_SECRET_DATA_LEN: usize = 1 << 20;

/// The annotation naming the keyring the values are sealed to.
pub const ANNOTATION_KEYRING: &str = "coffer.dev/keyring";
/// The annotation naming the sealing key id(s) the values are sealed to (comma-separated).
pub const ANNOTATION_SEALING_KEY: &str = "coffer.dev/sealing-key";
/// The annotation naming the scope(s) of the values' bindings (comma-separated).
pub const ANNOTATION_SCOPE: &str = "coffer.dev/scope";

/// Metadata the API server fills in, dropped from sealed output so it applies anywhere.
const SERVER_FIELDS: [&str; 7] = [
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
];
/// `kubectl apply` keeps the whole previous object here, plaintext values included.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Output format.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// YAML.
    #[default]
    Yaml,
    /// JSON (pretty).
    Json,
}

/// Why a manifest is refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not UTF-8 text.
    #[error("{origin}: not text (UTF-8): {detail}")]
    NotText { origin: String, detail: String },
    /// A YAML or JSON syntax error (the detail has the line and column).
    #[error("{origin}: not a valid YAML or JSON manifest: {detail}")]
    Syntax { origin: String, detail: String },
    /// No document at all.
    #[error("{origin}: empty manifest; give one v1 Secret")]
    Empty { origin: String },
    /// Several documents or a List.
    #[error("{origin}: holds {count} objects; give one Secret per file (one sealed Secret per file keeps Git diffs clean)")]
    Several { origin: String, count: usize },
    /// Not a v1 Secret.
    #[error("{origin}: {what}; give a v1 Secret (apiVersion: v1, kind: Secret)")]
    NotSecret { origin: String, what: String },
    /// A field of the wrong shape.
    #[error("{origin}: {field}: {problem}")]
    Field {
        origin: String,
        field: String,
        problem: String,
    },
}

impl From<ManifestError> for Error {
    fn from(e: ManifestError) -> Error {
        Error::usage(e.to_string())
    }
}

/// One value of a Secret.
pub enum Entry {
    /// A plaintext value (zeroized on drop).
    Plain(Zeroizing<Vec<u8>>),
    /// An already sealed value, kept as it is.
    Sealed(String),
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Entry::Plain(v) => write!(f, "Plain(<{} bytes redacted>)", v.len()),
            Entry::Sealed(s) => write!(f, "Sealed({s})"),
        }
    }
}

impl Entry {
    /// Classifies a value's bytes: text that looks sealed is sealed.
    pub fn from_bytes(bytes: Zeroizing<Vec<u8>>) -> Entry {
        match std::str::from_utf8(&bytes) {
            Ok(text) if SealedValue::is_sealed(text) => Entry::Sealed(text.to_string()),
            _ => Entry::Plain(bytes),
        }
    }
}

/// A validated `v1` Secret manifest. Unknown fields are kept.
#[derive(Debug, Clone)]
pub struct SecretDoc {
    doc: Map<String, Json>,
    origin: String,
    format: Format,
}

impl SecretDoc {
    /// Reads one Secret from `path` (`-` is stdin).
    pub fn read(path: &Path) -> Result<SecretDoc, Error> {
        let bytes = fsio::read_limited(path, MAX_MANIFEST_LEN, "manifest")?;
        Ok(SecretDoc::parse(&bytes, &fsio::display(path))?)
    }

    /// Parses one Secret, YAML or JSON.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<SecretDoc, ManifestError> {
        let origin = origin.to_string();
        let text = std::str::from_utf8(bytes).map_err(|e| ManifestError::NotText {
            origin: origin.clone(),
            detail: e.to_string(),
        })?;
        let json = text.trim_start().starts_with('{');
        let mut docs = Vec::new();
        if json {
            // JSON's own parser: YAML would accept (and misread) some broken JSON.
            let value: Json = serde_json::from_str(text).map_err(|e| ManifestError::Syntax {
                origin: origin.clone(),
                detail: e.to_string(),
            })?;
            docs.push(value);
        }
        for document in serde_yaml_ng::Deserializer::from_str(text).filter(|_| !json) {
            let value = Json::deserialize(document).map_err(|e| ManifestError::Syntax {
                origin: origin.clone(),
                detail: e.to_string(),
            })?;
            if !value.is_null() {
                docs.push(value);
            }
        }
        let doc = match docs.len() {
            0 => return Err(ManifestError::Empty { origin }),
            1 => docs.remove(0),
            count => return Err(ManifestError::Several { origin, count }),
        };
        let Json::Object(doc) = doc else {
            return Err(ManifestError::NotSecret {
                origin,
                what: "the document is not a map".to_string(),
            });
        };
        let kind = doc.get("kind").and_then(Json::as_str).unwrap_or("");
        if kind == "List" || kind.ends_with("List") {
            let count = doc
                .get("items")
                .and_then(Json::as_array)
                .map_or(0, Vec::len);
            return Err(ManifestError::Several { origin, count });
        }
        if kind != "Secret" {
            return Err(ManifestError::NotSecret {
                origin,
                what: format!("kind is {kind:?}"),
            });
        }
        let api_version = doc.get("apiVersion").and_then(Json::as_str).unwrap_or("");
        if api_version != "v1" {
            return Err(ManifestError::NotSecret {
                origin,
                what: format!("apiVersion is {api_version:?}"),
            });
        }
        let format = if json { Format::Json } else { Format::Yaml };
        let secret = SecretDoc {
            doc,
            origin,
            format,
        };
        secret.object("metadata")?;
        for field in ["data", "stringData"] {
            for (key, value) in secret.object(field)?.into_iter().flatten() {
                if !value.is_string() && !value.is_null() {
                    return Err(secret.field_error(
                        &format!("{field}.{key}"),
                        "must be a string (quote it in YAML)",
                    ));
                }
            }
        }
        if let Some(t) = secret.doc.get("type") {
            if !t.is_string() {
                return Err(secret.field_error("type", "must be a string"));
            }
        }
        if let Some(m) = secret.doc.get("metadata").and_then(Json::as_object) {
            for field in ["name", "namespace"] {
                if m.get(field).is_some_and(|v| !v.is_string()) {
                    return Err(
                        secret.field_error(&format!("metadata.{field}"), "must be a string")
                    );
                }
            }
        }
        Ok(secret)
    }

    /// A new, empty Secret.
    pub fn new(name: &str, namespace: Option<&str>, secret_type: Option<&str>) -> SecretDoc {
        let mut metadata = Map::new();
        metadata.insert("name".into(), Json::String(name.to_string()));
        if let Some(ns) = namespace {
            metadata.insert("namespace".into(), Json::String(ns.to_string()));
        }
        let mut doc = Map::new();
        doc.insert("apiVersion".into(), Json::String("v1".into()));
        doc.insert("kind".into(), Json::String("Secret".into()));
        doc.insert("metadata".into(), Json::Object(metadata));
        if let Some(t) = secret_type {
            doc.insert("type".into(), Json::String(t.to_string()));
        }
        SecretDoc {
            doc,
            origin: "(arguments)".to_string(),
            format: Format::Yaml,
        }
    }

    /// The format it was read in (JSON if it starts with `{`).
    pub fn format(&self) -> Format {
        self.format
    }

    /// Where it came from, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    fn field_error(&self, field: &str, problem: &str) -> ManifestError {
        ManifestError::Field {
            origin: self.origin.clone(),
            field: field.to_string(),
            problem: problem.to_string(),
        }
    }

    fn object(&self, field: &str) -> Result<Option<&Map<String, Json>>, ManifestError> {
        match self.doc.get(field) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Object(map)) => Ok(Some(map)),
            Some(_) => Err(self.field_error(field, "must be a map")),
        }
    }

    fn metadata_str(&self, field: &str) -> Option<&str> {
        self.doc.get("metadata")?.get(field)?.as_str()
    }

    /// `metadata.name`.
    pub fn name(&self) -> Option<&str> {
        self.metadata_str("name")
    }

    /// `metadata.namespace`.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata_str("namespace")
    }

    /// `type` (`None`: Opaque).
    pub fn secret_type(&self) -> Option<&str> {
        self.doc.get("type").and_then(Json::as_str)
    }

    /// An annotation.
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.doc
            .get("metadata")?
            .get("annotations")?
            .get(name)?
            .as_str()
    }

    fn metadata_mut(&mut self) -> &mut Map<String, Json> {
        let metadata = self
            .doc
            .entry("metadata")
            .or_insert_with(|| Json::Object(Map::new()));
        if !metadata.is_object() {
            *metadata = Json::Object(Map::new());
        }
        metadata.as_object_mut().expect("made an object above")
    }

    /// Sets `metadata.namespace`.
    pub fn set_namespace(&mut self, namespace: &str) {
        self.metadata_mut()
            .insert("namespace".into(), Json::String(namespace.to_string()));
    }

    /// Every value, by data key: `data` (base64) and `stringData` (which wins, as in
    /// Kubernetes). A text that looks sealed is [`Entry::Sealed`].
    pub fn entries(&self) -> Result<BTreeMap<String, Entry>, ManifestError> {
        let mut out = BTreeMap::new();
        for (key, value) in self.object("data")?.into_iter().flatten() {
            let text = value.as_str().unwrap_or("");
            let bytes = B64.decode(text).map_err(|e| {
                self.field_error(
                    &format!("data.{key}"),
                    &format!("not base64 ({e}); put text values in stringData"),
                )
            })?;
            out.insert(key.clone(), Entry::from_bytes(Zeroizing::new(bytes)));
        }
        for (key, value) in self.object("stringData")?.into_iter().flatten() {
            let text = value.as_str().unwrap_or("");
            out.insert(
                key.clone(),
                Entry::from_bytes(Zeroizing::new(text.as_bytes().to_vec())),
            );
        }
        Ok(out)
    }

    /// Replaces every value by `sealed` (in `stringData`, which the API server stores as
    /// `data` unchanged), records the keyring, key ids and scopes in annotations, and drops
    /// what the API server filled in and `kubectl apply`'s copy of the previous object.
    pub fn set_sealed(&mut self, sealed: &BTreeMap<String, SealedValue>) {
        let mut keyrings: Vec<&str> = sealed.values().map(SealedValue::keyring).collect();
        let mut key_ids: Vec<&str> = sealed.values().map(SealedValue::key_id).collect();
        let mut scopes: Vec<&str> = sealed
            .values()
            .map(|v| v.binding().scope().name())
            .collect();
        for list in [&mut keyrings, &mut key_ids, &mut scopes] {
            list.sort_unstable();
            list.dedup();
        }
        let (keyrings, key_ids, scopes) = (keyrings.join(","), key_ids.join(","), scopes.join(","));
        self.doc.remove("data");
        let values: Map<String, Json> = sealed
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.to_text())))
            .collect();
        self.doc.insert("stringData".into(), Json::Object(values));
        let metadata = self.metadata_mut();
        for field in SERVER_FIELDS {
            metadata.remove(field);
        }
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Json::Object(Map::new()));
        if !annotations.is_object() {
            *annotations = Json::Object(Map::new());
        }
        let annotations = annotations.as_object_mut().expect("made an object above");
        annotations.remove(LAST_APPLIED);
        for (name, value) in [
            (ANNOTATION_KEYRING, keyrings),
            (ANNOTATION_SEALING_KEY, key_ids),
            (ANNOTATION_SCOPE, scopes),
        ] {
            annotations.insert(name.to_string(), Json::String(value));
        }
        self.doc.remove("status");
    }

    /// The manifest as text.
    pub fn to_text(&self, format: Format) -> String {
        match format {
            Format::Yaml => serde_yaml_ng::to_string(&self.doc).expect("JSON values serialise"),
            Format::Json => {
                let mut text =
                    serde_json::to_string_pretty(&self.doc).expect("JSON values serialise");
                text.push('\n');
                text
            }
        }
    }

    /// The manifest as a JSON value (for the Kubernetes client).
    pub fn to_json(&self) -> Json {
        Json::Object(self.doc.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_syntax_errors_name_line_and_column() {
        let e = SecretDoc::parse(b"apiVersion: v1\nkind: Secret\ndata: [\n", "s.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("s.yaml") && e.contains("line"), "{e}");
        let e = SecretDoc::parse(b"{\"apiVersion\": \"v1\",\n \"kind\": }", "s.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn refuses_lists_multi_documents_and_other_kinds() {
        let two = b"apiVersion: v1\nkind: Secret\n---\napiVersion: v1\nkind: Secret\n";
        let e = SecretDoc::parse(two, "m").unwrap_err().to_string();
        assert!(e.contains("holds 2 objects"), "{e}");
        let list = b"apiVersion: v1\nkind: List\nitems: [{}, {}, {}]\n";
        assert!(SecretDoc::parse(list, "m")
            .unwrap_err()
            .to_string()
            .contains("holds 3 objects"));
        let cm = b"apiVersion: v1\nkind: ConfigMap\n";
        assert!(SecretDoc::parse(cm, "m")
            .unwrap_err()
            .to_string()
            .contains("kind is \"ConfigMap\""));
        assert!(SecretDoc::parse(b"", "m")
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    #[test]
    fn string_data_wins_over_data_and_bad_base64_is_named() {
        let doc = SecretDoc::parse(
            b"apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: YQ==, b: Yg==}\nstringData: {a: x}\n",
            "m",
        )
        .unwrap();
        let entries = doc.entries().unwrap();
        assert!(matches!(&entries["a"], Entry::Plain(v) if v.as_slice() == b"x"));
        assert!(matches!(&entries["b"], Entry::Plain(v) if v.as_slice() == b"b"));
        let bad = SecretDoc::parse(b"apiVersion: v1\nkind: Secret\ndata: {a: '!!'}\n", "m")
            .unwrap()
            .entries()
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("data.a") && bad.contains("not base64"),
            "{bad}"
        );
        let number = SecretDoc::parse(b"apiVersion: v1\nkind: Secret\nstringData: {a: 1}\n", "m")
            .unwrap_err()
            .to_string();
        assert!(number.contains("stringData.a"), "{number}");
    }

    #[test]
    fn sealed_values_read_back_from_the_api_server_stay_sealed() {
        // `kubectl get secret -o yaml` returns stringData's sealed text base64-encoded in data.
        let doc = SecretDoc::parse(
            b"apiVersion: v1\nkind: Secret\nmetadata: {name: s, resourceVersion: '7'}\ndata: {a: Y29mZmVyLnYxLnh5eg==}\n",
            "m",
        )
        .unwrap();
        let entries = doc.entries().unwrap();
        assert!(matches!(&entries["a"], Entry::Sealed(t) if t == "coffer.v1.xyz"));
        assert!(format!("{entries:?}").contains("coffer.v1.xyz"));
        let plain = SecretDoc::parse(
            b"apiVersion: v1\nkind: Secret\nstringData: {a: hunter2}\n",
            "m",
        )
        .unwrap()
        .entries()
        .unwrap();
        assert!(!format!("{plain:?}").contains("hunter2"));
    }
}

//! Values given as `kubectl create secret generic` arguments: `--from-literal key=value`,
//! `--from-file [key=]path` (a file or a directory of files) and `--from-env-file FILE`, with
//! kubectl's key validation and duplicate-key errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use coffer_sealed::MAX_PLAINTEXT_LEN;
use zeroize::Zeroizing;

use super::fsio;
use super::manifest::Entry;
use crate::error::Error;

/// The value flags of `kubectl create secret generic`.
#[derive(Args, Clone, Default)]
pub struct ValueArgs {
    /// A value: KEY=VALUE (repeatable). It ends up in your shell history; prefer --from-file
    /// or stdin for real secrets.
    #[arg(long = "from-literal", value_name = "KEY=VALUE")]
    pub literals: Vec<String>,
    /// A value from a file: [KEY=]PATH, the key defaulting to the file name; a directory adds
    /// each regular file in it (repeatable).
    #[arg(long = "from-file", value_name = "[KEY=]PATH")]
    pub files: Vec<String>,
    /// Values from a file of KEY=VALUE lines (`#` comments; a line with only KEY takes the
    /// value from the environment) (repeatable).
    #[arg(long = "from-env-file", value_name = "FILE")]
    pub env_files: Vec<PathBuf>,
}

// A literal is the secret itself: Debug shows only the keys.
impl std::fmt::Debug for ValueArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self
            .literals
            .iter()
            .map(|l| l.split('=').next().unwrap_or(""))
            .collect();
        f.debug_struct("ValueArgs")
            .field("literal_keys", &keys)
            .field("files", &self.files)
            .field("env_files", &self.env_files)
            .finish()
    }
}

impl ValueArgs {
    /// Whether any value flag was given.
    pub fn is_empty(&self) -> bool {
        self.literals.is_empty() && self.files.is_empty() && self.env_files.is_empty()
    }

    /// The values, by key, refusing invalid and duplicate keys as kubectl does.
    pub fn entries(&self, secret: &str) -> Result<BTreeMap<String, Entry>, Error> {
        if !self.env_files.is_empty() && (!self.literals.is_empty() || !self.files.is_empty()) {
            return Err(Error::usage(
                "--from-env-file cannot be combined with --from-file or --from-literal",
            ));
        }
        let mut out = BTreeMap::new();
        for literal in &self.literals {
            let Some((key, value)) = literal.split_once('=').filter(|(k, _)| !k.is_empty()) else {
                // Not echoed: without a `=` the whole argument may be the secret.
                return Err(Error::usage(
                    "invalid --from-literal: expected KEY=VALUE (the argument is not shown, it \
                     may be a secret)",
                ));
            };
            add(
                &mut out,
                secret,
                key,
                Zeroizing::new(value.as_bytes().to_vec()),
            )?;
        }
        for source in &self.files {
            add_file_source(&mut out, secret, source)?;
        }
        for path in &self.env_files {
            add_env_file(&mut out, secret, path)?;
        }
        Ok(out)
    }
}

fn add_file_source(
    out: &mut BTreeMap<String, Entry>,
    secret: &str,
    source: &str,
) -> Result<(), Error> {
    let (key, path) = match source.split_once('=') {
        Some(("", _)) | Some((_, "")) => {
            return Err(Error::usage(format!(
                "invalid --from-file {source:?}: expected [KEY=]PATH"
            )))
        }
        Some((key, path)) => (Some(key), Path::new(path)),
        None => (None, Path::new(source)),
    };
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::usage(format!("--from-file {}: {e}", path.display())))?;
    if meta.is_dir() {
        if key.is_some() {
            return Err(Error::usage("cannot give a key name for a directory path"));
        }
        let mut names = Vec::new();
        for item in std::fs::read_dir(path)
            .map_err(|e| Error::usage(format!("--from-file {}: {e}", path.display())))?
        {
            let item = item.map_err(|e| Error::usage(format!("{}: {e}", path.display())))?;
            if item.file_type().is_ok_and(|t| t.is_file()) {
                names.push(item.path());
            }
        }
        names.sort();
        for file in names {
            let key = file_key(&file)?;
            add(out, secret, &key, read_value(&file)?)?;
        }
        return Ok(());
    }
    let key = match key {
        Some(key) => key.to_string(),
        None => file_key(path)?,
    };
    add(out, secret, &key, read_value(path)?)
}

fn file_key(path: &Path) -> Result<String, Error> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| {
            Error::usage(format!(
                "{}: no usable file name for a key; give KEY=PATH",
                path.display()
            ))
        })
}

fn read_value(path: &Path) -> Result<Zeroizing<Vec<u8>>, Error> {
    fsio::read_limited(path, MAX_PLAINTEXT_LEN, "value file").map_err(|e| {
        Error::usage(format!(
            "{e} (a sealed value holds at most {MAX_PLAINTEXT_LEN} bytes: a Secret's limit)"
        ))
    })
}

fn add_env_file(out: &mut BTreeMap<String, Entry>, secret: &str, path: &Path) -> Result<(), Error> {
    let bytes = fsio::read_limited(path, MAX_PLAINTEXT_LEN, "env file")?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Error::usage(format!("{}: not UTF-8 text: {e}", path.display())))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((key, value)) => (key, Zeroizing::new(value.as_bytes().to_vec())),
            // As kubectl: a bare name takes its value from the environment.
            None => (
                line,
                Zeroizing::new(std::env::var(line).unwrap_or_default().into_bytes()),
            ),
        };
        if !is_env_var_name(key) && !line.contains('=') {
            // Not echoed: a line that is neither KEY=VALUE nor a name may be a stray secret.
            return Err(Error::usage(format!(
                "{}:{}: expected KEY=VALUE or a variable name (the line is not shown, it may be \
                 a secret)",
                path.display(),
                number + 1
            )));
        }
        if !is_env_var_name(key) {
            return Err(Error::usage(format!(
                "{}:{}: {key:?} is not a valid key name: a valid environment variable name \
                 must consist of alphabetic characters, digits, '_', '-', or '.', and must not \
                 start with a digit",
                path.display(),
                number + 1
            )));
        }
        add(out, secret, key, value)?;
    }
    Ok(())
}

fn add(
    out: &mut BTreeMap<String, Entry>,
    secret: &str,
    key: &str,
    value: Zeroizing<Vec<u8>>,
) -> Result<(), Error> {
    check_key(key)?;
    if out.contains_key(key) {
        return Err(Error::usage(format!(
            "cannot add key {key}, another key by that name already exists in Secret {secret:?}"
        )));
    }
    out.insert(key.to_string(), Entry::from_bytes(value));
    Ok(())
}

/// Refuses a data key Kubernetes would refuse (`[-._a-zA-Z0-9]+`, at most 253 characters).
pub fn check_key(key: &str) -> Result<(), Error> {
    let valid = !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        && key != "."
        && key != ".."
        && !key.starts_with("..");
    if !valid {
        return Err(Error::usage(format!(
            "{key:?} is not a valid key name for a Secret: a valid key must consist of \
             alphanumeric characters, '-', '_' or '.' (e.g. 'key.name', 'KEY_NAME' or \
             'key-name'), at most 253 of them"
        )));
    }
    Ok(())
}

fn is_env_var_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b"-._".contains(&b))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(literals: &[&str]) -> ValueArgs {
        ValueArgs {
            literals: literals.iter().map(|s| s.to_string()).collect(),
            ..ValueArgs::default()
        }
    }

    #[test]
    fn literals_split_at_the_first_equals_and_refuse_duplicates() {
        let entries = args(&["a=b=c", "k="]).entries("s").unwrap();
        assert!(matches!(&entries["a"], Entry::Plain(v) if v.as_slice() == b"b=c"));
        let e = args(&["a=1", "a=2"]).entries("s").unwrap_err().to_string();
        assert!(e.contains("cannot add key a, another key"), "{e}");
        let e = args(&["a b=1"]).entries("s").unwrap_err().to_string();
        assert!(e.contains("\"a b\" is not a valid key name"), "{e}");
        let e = args(&["hunter2"]).entries("s").unwrap_err().to_string();
        assert!(
            e.contains("expected KEY=VALUE") && !e.contains("hunter2"),
            "{e}"
        );
        let debug = format!("{:?}", args(&["pw=hunter2"]));
        assert!(
            debug.contains("pw") && !debug.contains("hunter2"),
            "{debug}"
        );
    }

    #[test]
    fn env_files_follow_kubectl() {
        let dir = tempfile::tempdir().unwrap();
        let env = dir.path().join("e.env");
        std::fs::write(&env, "\u{feff}A=1\n# comment\n\n  B=x y \n").unwrap();
        let values = ValueArgs {
            env_files: vec![env.clone()],
            ..ValueArgs::default()
        };
        let entries = values.entries("s").unwrap();
        assert!(matches!(&entries["B"], Entry::Plain(v) if v.as_slice() == b"x y "));
        std::fs::write(&env, "hunter2 and more\n").unwrap();
        let e = values.entries("s").unwrap_err().to_string();
        assert!(e.contains("e.env:1") && !e.contains("hunter2"), "{e}");
        std::fs::write(&env, "1A=1\n").unwrap();
        let e = values.entries("s").unwrap_err().to_string();
        assert!(
            e.contains("e.env:1") && e.contains("not a valid key name"),
            "{e}"
        );
        let mixed = ValueArgs {
            literals: vec!["a=1".into()],
            env_files: vec![env],
            ..ValueArgs::default()
        };
        assert!(mixed.entries("s").is_err());
    }

    #[test]
    fn files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tls.crt"), "c").unwrap();
        std::fs::write(dir.path().join("tls.key"), "k").unwrap();
        let by_dir = ValueArgs {
            files: vec![dir.path().display().to_string()],
            ..ValueArgs::default()
        };
        let entries = by_dir.entries("s").unwrap();
        assert_eq!(entries.keys().collect::<Vec<_>>(), ["tls.crt", "tls.key"]);
        let named = ValueArgs {
            files: vec![format!("k={}", dir.path().display())],
            ..ValueArgs::default()
        };
        assert!(named
            .entries("s")
            .unwrap_err()
            .to_string()
            .contains("directory"));
    }
}

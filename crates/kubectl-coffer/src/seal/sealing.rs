//! `kubectl coffer seal`: a Secret manifest or `generic NAME --from-…` values in, an ordinary
//! v1 Secret whose values are sealed out (or one raw sealed value, or merged into a file).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use coffer_sealed::bundle::KeyBundle;
use coffer_sealed::{Binding, Location, Scope, SealedValue, SealingPublicKey, MAX_PLAINTEXT_LEN};

use super::fsio;
use super::input::ValueArgs;
use super::manifest::{Entry, Format, SecretDoc, ANNOTATION_KEYRING, MAX_SECRET_DATA_LEN};
use super::source::KeySourceArgs;
use super::typed;
use crate::error::Error;

/// Where a sealed value may be used (`--scope`).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScopeArg {
    /// Only in this namespace, Secret name and data key.
    #[default]
    Strict,
    /// In any Secret and key of this namespace.
    Namespace,
    /// Anywhere in the cluster.
    Cluster,
}

impl From<ScopeArg> for Scope {
    fn from(s: ScopeArg) -> Scope {
        match s {
            ScopeArg::Strict => Scope::Strict,
            ScopeArg::Namespace => Scope::Namespace,
            ScopeArg::Cluster => Scope::Cluster,
        }
    }
}

/// The sealing flags shared by `seal` and `create secret generic`.
#[derive(Args, Debug, Clone)]
pub struct SealingArgs {
    /// Where the sealed values may be used: strict (this namespace, Secret and key),
    /// namespace, or cluster.
    #[arg(long, value_enum, default_value = "strict")]
    pub scope: ScopeArg,
    #[command(flatten)]
    pub keys: KeySourceArgs,
}

/// `kubectl coffer seal`.
#[derive(Args, Debug)]
pub struct SealArgs {
    /// `generic`: build the Secret from --from-literal/--from-file/--from-env-file, as
    /// `kubectl create secret generic NAME` does.
    #[arg(value_parser = ["generic"], requires = "name", conflicts_with = "filename")]
    pub generic: Option<String>,
    /// The Secret's name (after `generic`).
    pub name: Option<String>,
    /// The Secret manifest to seal (YAML or JSON; `-` for stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub filename: Option<PathBuf>,
    #[command(flatten)]
    pub values: ValueArgs,
    /// The Secret's namespace (the values are bound to it unless --scope cluster).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The Secret's type (e.g. kubernetes.io/tls), as `kubectl create secret generic --type`.
    #[arg(long = "type", value_name = "TYPE")]
    pub secret_type: Option<String>,
    #[command(flatten)]
    pub sealing: SealingArgs,
    /// Seal one value (from --from-literal, --from-file, or stdin) and print only the sealed
    /// text; give the location it is for with --namespace, --name and --key as the
    /// scope needs.
    #[arg(long, conflicts_with_all = ["generic", "filename", "merge_into"])]
    pub raw: bool,
    /// With --raw: the Secret name the value is for.
    #[arg(long = "name", id = "raw_name", value_name = "NAME")]
    pub secret_name: Option<String>,
    /// With --raw: the data key the value is for.
    #[arg(long)]
    pub key: Option<String>,
    /// Add (or replace) the sealed values in this sealed Secret file, atomically, keeping its
    /// other values and metadata.
    #[arg(long, value_name = "FILE")]
    pub merge_into: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "yaml")]
    pub output: Format,
}

/// Runs `seal`.
pub fn run(args: SealArgs) -> Result<ExitCode, Error> {
    if args.raw {
        return raw(&args);
    }
    if args.secret_name.is_some() || args.key.is_some() {
        return Err(Error::usage(
            "--name and --key give the location of a --raw value; a Secret's name comes after \
             `generic` or from the manifest",
        ));
    }
    let (mut doc, mut entries) = input_secret(&args)?;
    let bundle = args.sealing.keys.bundle()?;
    let target = match &args.merge_into {
        Some(path) => {
            let existing = SecretDoc::read(path)?;
            if let Some(keyring) = existing.annotation(ANNOTATION_KEYRING) {
                if keyring != bundle.body.keyring {
                    return Err(Error::usage(format!(
                        "{} is sealed to keyring {keyring:?}, not {:?}: merge into it with that \
                         keyring's bundle",
                        path.display(),
                        bundle.body.keyring
                    )));
                }
            }
            let existing_entries = existing.entries()?;
            for (key, entry) in &existing_entries {
                if matches!(entry, Entry::Plain(_)) {
                    return Err(Error::usage(format!(
                        "{}: key {key} is not sealed; --merge-into takes a sealed Secret file",
                        path.display()
                    )));
                }
            }
            for (what, mine, theirs) in [
                ("name", doc.name(), existing.name()),
                ("namespace", doc.namespace(), existing.namespace()),
            ] {
                if mine.is_some() && mine != theirs {
                    return Err(Error::usage(format!(
                        "the {what} {mine:?} differs from the {what} {theirs:?} of {}",
                        path.display()
                    )));
                }
            }
            let mut merged = existing_entries;
            merged.append(&mut entries);
            entries = merged;
            doc = existing;
            Some(path.clone())
        }
        None => None,
    };
    let sealer = Sealer::new(&bundle, args.sealing.scope.into())?;
    let sealed = sealer.seal_secret(&doc, entries)?;
    doc.set_sealed(&sealed);
    match target {
        Some(path) => {
            let format = doc.format();
            fsio::write_atomic(&path, doc.to_text(format).as_bytes())?;
            eprintln!("{}: {} sealed values", path.display(), sealed.len());
        }
        None => print(&doc.to_text(args.output))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `text` to stdout.
pub fn print(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::new(format!("writing to stdout: {e}")))
}

/// The Secret the arguments describe (a manifest, or `generic NAME` values), and its values.
fn input_secret(args: &SealArgs) -> Result<(SecretDoc, BTreeMap<String, Entry>), Error> {
    if let Some(path) = &args.filename {
        if !args.values.is_empty() {
            return Err(Error::usage(
                "-f takes the values from the manifest; --from-literal/--from-file/--from-env-file \
                 go with `seal generic NAME`",
            ));
        }
        let mut doc = SecretDoc::read(path)?;
        if let Some(ns) = &args.namespace {
            match doc.namespace() {
                Some(theirs) if theirs != ns => {
                    return Err(Error::usage(format!(
                        "the namespace from the manifest ({theirs:?}) does not match \
                         --namespace {ns:?}"
                    )))
                }
                _ => doc.set_namespace(ns),
            }
        }
        let entries = doc.entries()?;
        return Ok((doc, entries));
    }
    let Some(name) = &args.name else {
        if args.merge_into.is_some() && args.generic.is_none() {
            return Err(Error::usage(
                "give the values to merge with `seal generic NAME --from-literal …` or -f FILE",
            ));
        }
        return Err(Error::usage(
            "give a Secret manifest with -f FILE (- for stdin), or values with `seal generic \
             NAME --from-literal KEY=VALUE …`",
        ));
    };
    let doc = SecretDoc::new(name, args.namespace.as_deref(), args.secret_type.as_deref());
    let entries = args.values.entries(name)?;
    Ok((doc, entries))
}

fn raw(args: &SealArgs) -> Result<ExitCode, Error> {
    let mut entries = if args.values.is_empty() {
        let value = fsio::read_limited(std::path::Path::new("-"), MAX_PLAINTEXT_LEN, "value")?;
        BTreeMap::from([(String::new(), Entry::Plain(value))])
    } else {
        args.values
            .entries(args.secret_name.as_deref().unwrap_or(""))?
    };
    if entries.len() != 1 {
        return Err(Error::usage(format!(
            "--raw seals exactly one value, got {}",
            entries.len()
        )));
    }
    let (_, entry) = entries.pop_first().expect("one entry");
    let Entry::Plain(value) = entry else {
        return Err(Error::usage("the value is already sealed"));
    };
    let scope: Scope = args.sealing.scope.into();
    let location = Location {
        namespace: args.namespace.clone().unwrap_or_default(),
        secret: args.secret_name.clone().unwrap_or_default(),
        key: args.key.clone().unwrap_or_default(),
    };
    let needs: &[(&str, &str)] = match scope {
        Scope::Strict => &[
            ("--namespace", &location.namespace),
            ("--name", &location.secret),
            ("--key", &location.key),
        ],
        Scope::Namespace => &[("--namespace", &location.namespace)],
        Scope::Cluster => &[],
    };
    for (flag, value) in needs {
        if value.is_empty() {
            return Err(Error::usage(format!(
                "--raw with --scope {scope} binds the value to its location: give {flag}"
            )));
        }
    }
    let bundle = args.sealing.keys.bundle()?;
    let sealer = Sealer::new(&bundle, scope)?;
    let sealed = sealer.seal_value(&location, &value)?;
    print(&format!("{}\n", sealed.to_text()))?;
    Ok(ExitCode::SUCCESS)
}

/// Seals values to a bundle's primary key with one scope.
pub struct Sealer<'a> {
    bundle: &'a KeyBundle,
    primary: SealingPublicKey,
    scope: Scope,
}

impl<'a> Sealer<'a> {
    /// A sealer for `bundle`'s primary key.
    pub fn new(bundle: &'a KeyBundle, scope: Scope) -> Result<Sealer<'a>, Error> {
        let primary = bundle
            .primary()
            .map_err(|e| Error::new(format!("the key bundle has no usable primary key: {e}")))?;
        Ok(Sealer {
            bundle,
            primary,
            scope,
        })
    }

    fn keyring(&self) -> &str {
        &self.bundle.body.keyring
    }

    /// Seals one value for `location`.
    pub fn seal_value(&self, location: &Location, value: &[u8]) -> Result<SealedValue, Error> {
        let key = &location.key;
        if value.is_empty() {
            return Err(Error::usage(format!(
                "key {key:?} has an empty value: there is nothing to seal; leave the key out"
            )));
        }
        if value.len() > MAX_PLAINTEXT_LEN {
            return Err(Error::usage(format!(
                "key {key:?}: the value is {} bytes; a sealed value holds at most \
                 {MAX_PLAINTEXT_LEN} bytes (a Secret's limit)",
                value.len()
            )));
        }
        let binding = Binding::new(self.scope, location)
            .map_err(|e| Error::usage(format!("key {key:?}: {e}")))?;
        coffer_sealed::seal(self.keyring(), &self.primary, &binding, value)
            .map_err(|e| Error::usage(format!("key {key:?}: {e}")))
    }

    /// Seals every plaintext value of `doc` (kept: values already sealed for this keyring and
    /// this location), after checking the Secret's type and sizes.
    pub fn seal_secret(
        &self,
        doc: &SecretDoc,
        entries: BTreeMap<String, Entry>,
    ) -> Result<BTreeMap<String, SealedValue>, Error> {
        let name = doc.name().unwrap_or_default().to_string();
        let namespace = doc.namespace().unwrap_or_default().to_string();
        if name.is_empty() && self.scope == Scope::Strict {
            return Err(Error::usage(format!(
                "{}: the Secret has no metadata.name, which --scope strict binds the values to",
                doc.origin()
            )));
        }
        if namespace.is_empty() && self.scope != Scope::Cluster {
            return Err(Error::usage(format!(
                "{}: --scope {} binds the values to their namespace, and the Secret has none: \
                 give -n/--namespace (or set metadata.namespace)",
                doc.origin(),
                self.scope
            )));
        }
        if entries.is_empty() {
            return Err(Error::usage(format!(
                "{}: the Secret has no values to seal",
                doc.origin()
            )));
        }
        typed::check(doc.secret_type(), &entries, &name)?;
        let mut out = BTreeMap::new();
        let mut total = 0usize;
        for (key, entry) in entries {
            let location = Location {
                namespace: namespace.clone(),
                secret: name.clone(),
                key: key.clone(),
            };
            let sealed = match entry {
                Entry::Plain(value) => self.seal_value(&location, &value)?,
                Entry::Sealed(text) => self.keep(&location, &text)?,
            };
            total += key.len() + sealed.to_text().len();
            out.insert(key, sealed);
        }
        if total > MAX_SECRET_DATA_LEN {
            return Err(Error::usage(format!(
                "{}: the sealed values come to {total} bytes, and Kubernetes keeps a Secret's \
                 data under {MAX_SECRET_DATA_LEN} bytes (1 MiB): split the values over several \
                 Secrets",
                doc.origin()
            )));
        }
        Ok(out)
    }

    /// An already sealed value, if it belongs in this keyring at this location.
    fn keep(&self, location: &Location, text: &str) -> Result<SealedValue, Error> {
        let key = &location.key;
        let value = SealedValue::parse(text)
            .map_err(|e| Error::usage(format!("key {key:?} looks sealed but is not: {e}")))?;
        if value.keyring() != self.keyring() {
            return Err(Error::usage(format!(
                "key {key:?} is sealed to keyring {:?}, not {:?}: seal it again from the \
                 plaintext, or use that keyring's bundle",
                value.keyring(),
                self.keyring()
            )));
        }
        value.binding().admits(location).map_err(|e| {
            Error::usage(format!(
                "key {key:?} is sealed for another place ({e}): it would not unseal here; seal \
                 it again from the plaintext"
            ))
        })?;
        Ok(value)
    }
}

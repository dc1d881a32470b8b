//! `coffer keyd migrate`: moves a data directory's durable state into etcd and back.
//!
//! The records are the data directory's files under their relative paths (`keyd-root.json`,
//! `keyrings/<name>/keystore`, `keyrings/<name>/sealing-keys.json`), each encrypted under
//! keyd's root and bound to its etcd key (`coffer_keyd_store::format`). The files are already
//! sealed under the root; the second layer is what makes a record refuse to be moved,
//! altered or read under another root. keyd's configuration stays a file.
//!
//! Both directions check everything before writing anything, never replace what is there,
//! and skip what already matches, so a run that failed halfway is finished by running it
//! again. `keyd-root.json` goes to etcd last: a prefix without it is an unfinished migration.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use coffer_keyd::KeydRoot;
use coffer_keyd_store::{EtcdStore, Expect, SealedStore, StoreError, Swap};
use coffer_platform::{durable, Access};
use zeroize::Zeroizing;

use crate::keyd::KeydStoreArgs;
use crate::keyd_etcd::EtcdArgs;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The record holding `keyd-root.json`: written last, so its absence marks an unfinished run.
const ROOT_RECORD: &str = coffer_keyd::ROOT_FILE;
/// A keyring's files that are durable state (locks and temporaries are not).
const KEYRING_FILES: [&str; 2] = [
    coffer_keystore::store::KEYSTORE_FILE,
    coffer_keyd::SEALING_KEYS_FILE,
];

/// `coffer keyd migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    store: KeydStoreArgs,
    /// Copy the data directory's state into etcd at these endpoints (host:port, comma-separated).
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',', num_args = 1..,
          required_unless_present = "from_etcd", conflicts_with = "from_etcd")]
    to_etcd: Vec<String>,
    /// Copy the state in etcd at these endpoints back into the data directory (which keeps its
    /// own keyd-root.json: the root opens from it).
    #[arg(long, value_name = "ENDPOINTS", value_delimiter = ',', num_args = 1..)]
    from_etcd: Vec<String>,
    #[command(flatten)]
    etcd: EtcdArgs,
}

/// One durable file: its record name and bytes.
struct StateFile {
    name: String,
    bytes: Zeroizing<Vec<u8>>,
}

fn read_state_file(data_dir: &Path, name: &str) -> Result<Option<StateFile>, Error> {
    let path = data_dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(StateFile {
            name: name.to_string(),
            bytes: Zeroizing::new(bytes),
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", path.display()).into()),
    }
}

/// The data directory's durable files, keyrings first (by name) and the root file last.
fn state_files(data_dir: &Path) -> Result<Vec<StateFile>, Error> {
    let keyrings = data_dir.join("keyrings");
    let mut names = Vec::new();
    match std::fs::read_dir(&keyrings) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| format!("listing {}: {e}", keyrings.display()))?;
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    names.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("listing {}: {e}", keyrings.display()).into()),
    }
    names.sort();
    let mut files = Vec::new();
    for keyring in names {
        coffer_keyd::validate_keyring_name(&keyring)?;
        for file in KEYRING_FILES {
            files.extend(read_state_file(
                data_dir,
                &format!("keyrings/{keyring}/{file}"),
            )?);
        }
    }
    files.extend(read_state_file(data_dir, ROOT_RECORD)?);
    Ok(files)
}

/// Writes `data_dir`'s root file as the prefix's `keyd-root.json` record if there is none
/// (`Swap::Conflict`: someone wrote one first; nothing was replaced): the record a prefix
/// holding keyd's state starts with, as `migrate --to-etcd` writes it.
pub(crate) async fn publish_root(
    data_dir: &Path,
    store: &SealedStore<EtcdStore>,
) -> Result<Swap, Error> {
    let file = read_state_file(data_dir, ROOT_RECORD)?.ok_or_else(|| {
        coffer_keyd::KeydError::NotInitialised {
            data_dir: data_dir.to_path_buf(),
        }
    })?;
    Ok(store.put(&file.name, &file.bytes, Expect::Absent).await?)
}

/// Runs `coffer keyd migrate`.
pub fn run(args: MigrateArgs) -> Result<ExitCode, Error> {
    let platform = args.store.platform(Access::ExistingOnly)?;
    let root = KeydRoot::open(&args.store.data_dir, platform.as_ref())?;
    let to_etcd = !args.to_etcd.is_empty();
    let endpoints = if to_etcd {
        &args.to_etcd
    } else {
        &args.from_etcd
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let store = args.etcd.open_records(endpoints, &root).await?;
        if to_etcd {
            to_etcd_run(&args.store.data_dir, &store, endpoints).await
        } else {
            from_etcd_run(&args.store.data_dir, &store).await
        }
    })
}

/// Explains a record that does not open: the prefix belongs to another keyd, or was altered.
fn foreign(prefix: &str, e: StoreError) -> Error {
    match e {
        StoreError::Format(e) => format!(
            "{e}. etcd prefix {prefix} is refused as a whole: if it belongs to another keyd, \
             choose another --etcd-prefix; if a record was altered, restore it from an etcd \
             snapshot"
        )
        .into(),
        e => e.into(),
    }
}

async fn to_etcd_run(
    data_dir: &Path,
    store: &SealedStore<EtcdStore>,
    endpoints: &[String],
) -> Result<ExitCode, Error> {
    let files = state_files(data_dir)?;
    let (existing, _) = store.list().await.map_err(|e| foreign(store.prefix(), e))?;
    // Check everything before writing anything: a refused run changes nothing.
    for (name, _) in &existing {
        // Replicas' audit anchors live only in etcd.
        if !files.iter().any(|f| &f.name == name) && !name.starts_with(coffer_keyd::AUDIT_ANCHORS) {
            return Err(format!(
                "etcd prefix {} already holds {name}, which {} does not have: refusing to \
                 write into another keyd's state; choose another --etcd-prefix",
                store.prefix(),
                data_dir.display()
            )
            .into());
        }
    }
    let mut present = 0;
    let mut written = 0;
    for file in &files {
        if let Some((_, record)) = existing.iter().find(|(n, _)| *n == file.name) {
            if record.plaintext[..] != file.bytes[..] {
                return Err(differs(store, &file.name, data_dir));
            }
            present += 1;
        }
    }
    for file in &files {
        if existing.iter().any(|(n, _)| *n == file.name) {
            continue;
        }
        match store.put(&file.name, &file.bytes, Expect::Absent).await? {
            Swap::Done { .. } => written += 1,
            Swap::Conflict { .. } => {
                return Err(format!(
                    "{}{} was created in etcd by someone else during the migration; nothing \
                     was replaced: find the other writer, then run the migration again",
                    store.prefix(),
                    file.name
                )
                .into())
            }
        }
    }
    println!(
        "migrated {} to etcd ({}) under {}: {written} record(s) written, {present} already \
         there; the data directory is unchanged (keep it until keyd serves from etcd)",
        data_dir.display(),
        endpoints.join(","),
        store.prefix()
    );
    Ok(ExitCode::SUCCESS)
}

fn differs(store: &SealedStore<EtcdStore>, name: &str, data_dir: &Path) -> Error {
    format!(
        "{}{name} in etcd differs from {}: refusing to replace either (the two have diverged \
         since a previous migration; decide which is current and remove the other)",
        store.prefix(),
        data_dir.join(name).display()
    )
    .into()
}

async fn from_etcd_run(data_dir: &Path, store: &SealedStore<EtcdStore>) -> Result<ExitCode, Error> {
    let (records, _) = store.list().await.map_err(|e| foreign(store.prefix(), e))?;
    if !records.iter().any(|(name, _)| name == ROOT_RECORD) {
        return Err(format!(
            "etcd prefix {} has no {ROOT_RECORD} record: it holds no keyd state, or a \
             migration to etcd did not finish (run it again)",
            store.prefix()
        )
        .into());
    }
    let mut to_write = Vec::new();
    let mut present = 0;
    for (name, record) in &records {
        // The data directory keeps its own root file: it is sealed to this machine. Audit
        // anchors witness the replicas' logs and have no file.
        if name == ROOT_RECORD || name.starts_with(coffer_keyd::AUDIT_ANCHORS) {
            continue;
        }
        let valid = name
            .strip_prefix("keyrings/")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(keyring, file)| {
                coffer_keyd::validate_keyring_name(keyring).is_ok() && KEYRING_FILES.contains(&file)
            });
        if !valid {
            return Err(format!(
                "{}{name} is not a keyd state record this build knows; run a coffer release \
                 that matches the one that wrote it",
                store.prefix()
            )
            .into());
        }
        match read_state_file(data_dir, name)? {
            Some(local) if local.bytes[..] == record.plaintext[..] => present += 1,
            Some(_) => return Err(differs(store, name, data_dir)),
            None => to_write.push((name, record)),
        }
    }
    for (name, record) in &to_write {
        let path = data_dir.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        durable::write_new_atomic(&path, &record.plaintext, 0o600).map_err(|e| {
            format!(
                "writing {}: {e} (an existing file is never replaced)",
                path.display()
            )
        })?;
    }
    println!(
        "copied {} record(s) from etcd under {} into {}, {present} already there",
        to_write.len(),
        store.prefix(),
        data_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

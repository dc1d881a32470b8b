//! keyd's keyrings on disk: one keystore directory per keyring, sealed under keyd's root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use coffer_keystore::kek::Keyring;
use coffer_keystore::store::{FileStamp, Keystore};
use coffer_platform::Platform;

use crate::config::{validate_keyring_name, KeydConfig, KeyringAccess};
use crate::root::KeydRoot;
use crate::sealing::{SealingKeyError, SealingKeyStore, SealingKeys};
use crate::KeydError;

/// The keystore directory of keyring `name` under `data_dir`.
pub fn keyring_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join("keyrings").join(name)
}

/// The keystore of keyring `name`, sealed under `root`.
pub fn keyring_store(
    data_dir: &Path,
    root: &KeydRoot,
    platform: Arc<dyn Platform>,
    name: &str,
) -> Result<Keystore, KeydError> {
    validate_keyring_name(name)?;
    Ok(Keystore::new(
        keyring_dir(data_dir, name),
        root.platform(platform),
    ))
}

/// The sealing keys of keyring `name`, sealed under `root`.
pub fn sealing_key_store(
    data_dir: &Path,
    root: &KeydRoot,
    platform: Arc<dyn Platform>,
    name: &str,
) -> Result<SealingKeyStore, KeydError> {
    SealingKeyStore::new(data_dir, name, root.platform(platform))
}

/// What [`create_keyring`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedKeyring {
    /// The primary KEK id.
    pub kek_id: String,
    /// The primary sealing key id.
    pub sealing_key_id: String,
}

/// Creates keyring `name` under an initialised `data_dir` (a new keystore sealed under keyd's
/// root, and its first sealing key). Refuses to overwrite an existing keyring.
pub fn create_keyring(
    data_dir: &Path,
    platform: Arc<dyn Platform>,
    name: &str,
) -> Result<CreatedKeyring, KeydError> {
    let root = KeydRoot::open(data_dir, platform.as_ref())?;
    let store = keyring_store(data_dir, &root, platform.clone(), name)?;
    let dir = keyring_dir(data_dir, name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| KeydError::io(format!("creating {}", dir.display()), e))?;
    let info = store.init().map_err(|source| KeydError::Keystore {
        name: name.to_string(),
        dir,
        source,
    })?;
    let sealing = sealing_key_store(data_dir, &root, platform, name)?.rotate()?;
    Ok(CreatedKeyring {
        kek_id: info.primary().map(|k| k.id.clone()).unwrap_or_default(),
        sealing_key_id: sealing.id,
    })
}

/// Where a served keyring's keys are stored, and how keyd notices changes to them.
pub(crate) enum SlotBackend {
    /// Files in the data directory, polled for changes made by `coffer keyd rotate`.
    Dir {
        /// The keystore file as last loaded.
        stamp: std::sync::Mutex<Option<FileStamp>>,
        /// The sealing-key file as last loaded.
        sealing_stamp: std::sync::Mutex<Option<FileStamp>>,
    },
    /// Records in etcd, changed by compare-and-swap and watched.
    Etcd {
        /// The records.
        state: Arc<crate::shared::SharedState>,
        /// The etcd revision of the keystore record served.
        revision: std::sync::atomic::AtomicI64,
        /// The etcd revision of the sealing-key record served (0: none).
        sealing_revision: std::sync::atomic::AtomicI64,
    },
}

/// One served keyring.
pub(crate) struct KeyringSlot {
    pub(crate) name: String,
    /// Who may do what on it; swapped whole when the configuration in etcd changes.
    pub(crate) access: ArcSwap<KeyringAccess>,
    /// Opens the keystore (its file, or its record's bytes).
    pub(crate) store: Keystore,
    pub(crate) current: ArcSwap<Keyring>,
    /// Serialises changes of the served keys.
    pub(crate) rotate: tokio::sync::Mutex<()>,
    /// Opens the sealing keys (their file, or their record's bytes).
    pub(crate) sealing_store: SealingKeyStore,
    /// The sealing keys as last loaded; `None` while the keyring has none.
    pub(crate) sealing: ArcSwapOption<SealingKeys>,
    /// Where the keys are stored.
    pub(crate) backend: SlotBackend,
    /// The key bundle last built, rebuilt when the keys change or half its validity passed.
    pub(crate) bundle: tokio::sync::Mutex<Option<CachedBundle>>,
}

/// A key bundle as served, and what it was built from.
pub(crate) struct CachedBundle {
    /// The sealing keys it lists.
    pub(crate) keys: Arc<SealingKeys>,
    /// When it was built.
    pub(crate) built: std::time::Instant,
    /// Its JSON.
    pub(crate) json: Arc<Vec<u8>>,
}

impl KeyringSlot {
    /// A slot serving `keyring` and `sealing`.
    pub(crate) fn new(
        name: &str,
        access: KeyringAccess,
        store: Keystore,
        keyring: Keyring,
        sealing_store: SealingKeyStore,
        sealing: Option<SealingKeys>,
        backend: SlotBackend,
    ) -> KeyringSlot {
        KeyringSlot {
            name: name.to_string(),
            access: ArcSwap::from_pointee(access),
            store,
            current: ArcSwap::from_pointee(keyring),
            rotate: tokio::sync::Mutex::new(()),
            sealing_store,
            sealing: ArcSwapOption::new(sealing.map(Arc::new)),
            backend,
            bundle: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn keystore_error(&self, source: coffer_keystore::KeystoreError) -> KeydError {
        KeydError::Keystore {
            name: self.name.clone(),
            dir: self.store.path().to_path_buf(),
            source,
        }
    }
}

/// Loads every keyring the configuration names; one without a keystore is an error.
pub(crate) fn load_keyrings(
    data_dir: &Path,
    root: &KeydRoot,
    platform: &Arc<dyn Platform>,
    config: &KeydConfig,
) -> Result<HashMap<String, Arc<KeyringSlot>>, KeydError> {
    let mut keyrings = HashMap::new();
    for (name, access) in &config.keyrings {
        let store = keyring_store(data_dir, root, platform.clone(), name)?;
        if !store.exists() {
            return Err(KeydError::MissingKeyring {
                name: name.clone(),
                dir: keyring_dir(data_dir, name),
            });
        }
        let stamp = store.stamp();
        let keyring = store.load().map_err(|source| KeydError::Keystore {
            name: name.clone(),
            dir: keyring_dir(data_dir, name),
            source,
        })?;
        tracing::info!(keyring = %name, primary = keyring.primary_id(), keys = keyring.len(), "keyring loaded");
        let sealing_store = sealing_key_store(data_dir, root, platform.clone(), name)?;
        let sealing_stamp = sealing_store.stamp();
        let sealing = load_sealing_keys(&sealing_store)?;
        let backend = SlotBackend::Dir {
            stamp: std::sync::Mutex::new(stamp),
            sealing_stamp: std::sync::Mutex::new(sealing_stamp),
        };
        keyrings.insert(
            name.clone(),
            Arc::new(KeyringSlot::new(
                name,
                access.clone(),
                store,
                keyring,
                sealing_store,
                sealing,
                backend,
            )),
        );
    }
    Ok(keyrings)
}

/// The sealing keys of a keyring; `None` when it has none yet (a keyring created before
/// sealing keys existed): keyd serves it, and answers its sealing calls with what to run.
pub(crate) fn load_sealing_keys(
    store: &SealingKeyStore,
) -> Result<Option<SealingKeys>, SealingKeyError> {
    match store.load() {
        Ok(keys) => {
            tracing::info!(keyring = %store.keyring(), primary = keys.primary().id(), generation = keys.generation(), "sealing keys loaded");
            Ok(Some(keys))
        }
        Err(SealingKeyError::Missing { keyring }) => {
            tracing::warn!(keyring = %keyring, "keyring has no sealing key: key bundles, Reseal and Unseal refuse it until `coffer keyd sealing-key rotate --keyring {keyring}` runs");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

//! keyd's keyrings on disk: one keystore directory per keyring, sealed under keyd's root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use coffer_keystore::kek::Keyring;
use coffer_keystore::store::{FileStamp, Keystore};
use coffer_platform::Platform;

use crate::config::{validate_keyring_name, KeydConfig, KeyringAccess};
use crate::root::KeydRoot;
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

/// Creates keyring `name` under an initialised `data_dir` (a new keystore sealed under keyd's
/// root) and returns its primary KEK id. Refuses to overwrite an existing keyring.
pub fn create_keyring(
    data_dir: &Path,
    platform: Arc<dyn Platform>,
    name: &str,
) -> Result<String, KeydError> {
    let root = KeydRoot::open(data_dir, platform.as_ref())?;
    let store = keyring_store(data_dir, &root, platform, name)?;
    let dir = keyring_dir(data_dir, name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| KeydError::io(format!("creating {}", dir.display()), e))?;
    let info = store.init().map_err(|source| KeydError::Keystore {
        name: name.to_string(),
        dir,
        source,
    })?;
    Ok(info.primary().map(|k| k.id.clone()).unwrap_or_default())
}

/// One served keyring.
pub(crate) struct KeyringSlot {
    pub(crate) name: String,
    pub(crate) access: KeyringAccess,
    pub(crate) store: Keystore,
    pub(crate) current: ArcSwap<Keyring>,
    /// The keystore file as last loaded, to notice changes made by `coffer keyd rotate`.
    pub(crate) stamp: std::sync::Mutex<Option<FileStamp>>,
    /// Serialises rotations.
    pub(crate) rotate: tokio::sync::Mutex<()>,
}

impl KeyringSlot {
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
        keyrings.insert(
            name.clone(),
            Arc::new(KeyringSlot {
                name: name.clone(),
                access: access.clone(),
                store,
                current: ArcSwap::from_pointee(keyring),
                stamp: std::sync::Mutex::new(stamp),
                rotate: tokio::sync::Mutex::new(()),
            }),
        );
    }
    Ok(keyrings)
}

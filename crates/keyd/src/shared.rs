//! keyd's state in a shared store (etcd), so several replicas serve one set of keys.
//!
//! With a [`SharedStore`], keyd loads its keyrings and sealing keys from records under the
//! store's prefix (`keyrings/<name>/keystore`, `keyrings/<name>/sealing-keys.json`, the bytes
//! of the files a data directory would hold, each sealed again under keyd's root by
//! `coffer_keyd_store`), makes every change with a compare-and-swap on the record's revision,
//! and watches the prefix to serve the changes other replicas make. The data directory keeps
//! only this replica's sealed root and its audit log.
//!
//! Every write reads the record and its revision, computes the new bytes, and writes them only
//! if nobody wrote the record since; on a conflict it starts over from what is there now. So
//! two replicas rotating at once both add their key (none is lost), and key ids stay unique
//! (each write starts from the other's serial counter).
//!
//! With `--config etcd:` keyd's configuration (its grants) is a record too, `config/keyd.yaml`:
//! read at start and watched like the keys, each new version applied to the served keyrings
//! only if it parses and every role it grants is in the policy.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use coffer_attest::policy::Policy;
use coffer_audit::{AuditEntry, Outcome, SharedAuditLog};
use coffer_keyd_store::{
    Entry, EtcdStore, Expect, SealedStore, StateStore, StoreError, StoreKey, Swap, WatchEvent,
};
use coffer_keystore::kek::Keyring;
use coffer_keystore::store::{KeyInfo, Keystore, KeystoreInfo, KEYSTORE_FILE};
use coffer_platform::Platform;
use zeroize::Zeroizing;

use crate::config::{validate_keyring_name, KeydConfig, KeyringAccess};
use crate::keyrings::{keyring_dir, CreatedKeyring, KeyringSlot, SlotBackend};
use crate::metrics::KeydMetrics;
use crate::root::{KeydRoot, ROOT_FILE};
use crate::sealing::{
    RetiredKey, SealingKeyError, SealingKeyInfo, SealingKeyStore, SealingKeys, SealingKeysInfo,
    SEALING_KEYS_FILE,
};
use crate::KeydError;

/// The record of keyd's configuration (`--config etcd:`): the YAML of a `--config` file.
pub const CONFIG_RECORD: &str = "config/keyd.yaml";

/// How often a write starts over after another replica changed its record first.
const MAX_WRITE_ATTEMPTS: usize = 8;
/// The longest pause between attempts to watch etcd again while it is unreachable.
const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(2);

/// A connection to the etcd that holds keyd's state, and the key prefix of its records.
#[derive(Debug)]
pub struct SharedStore {
    /// The etcd connection.
    pub etcd: EtcdStore,
    /// The key prefix (`--etcd-prefix`, e.g. `/coffer/keyd`).
    pub prefix: String,
}

/// Why keyd's state in etcd cannot be read or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SharedStateError {
    /// etcd did not answer a write: nothing was changed.
    #[error("{source}; nothing was changed (reads are still served; retry when etcd is back)")]
    WriteUnavailable {
        /// The store's error, naming the endpoints.
        source: StoreError,
    },
    /// A record under the prefix does not open: keyd serves nothing from the prefix.
    #[error("{source}. etcd prefix {prefix} is refused as a whole: restore the record from an etcd snapshot, or if the prefix belongs to another keyd, choose another --etcd-prefix")]
    Refused {
        /// The prefix.
        prefix: String,
        /// Which record and why.
        source: StoreError,
    },
    /// Another store error (etcd down at start, a refused request).
    #[error(transparent)]
    Store(StoreError),
    /// The prefix holds no `keyd-root.json` record: nothing was migrated there yet.
    #[error("etcd prefix {prefix} holds no {ROOT_FILE} record: move this data directory's state there first with `coffer keyd migrate --to-etcd <endpoints> --etcd-prefix {prefix}`")]
    NotMigrated {
        /// The prefix.
        prefix: String,
    },
    /// The prefix holds another keyd's state.
    #[error("etcd prefix {prefix} holds the state of keyd {theirs}, but this data directory's root is keyd {ours}; point --etcd-prefix at this keyd's records")]
    OtherInstance {
        /// The prefix.
        prefix: String,
        /// The instance id in the store.
        theirs: String,
        /// This replica's instance id.
        ours: String,
    },
    /// `--config etcd:`, but nobody pushed a configuration.
    #[error("etcd prefix {prefix} holds no keyd configuration ({CONFIG_RECORD}), which --config etcd: serves: push one first with `coffer keyd config push FILE --store etcd --etcd-endpoints <endpoints> --etcd-prefix {prefix}`")]
    NoConfig {
        /// The prefix.
        prefix: String,
    },
    /// A keyring has no keystore record.
    #[error("keyring {name:?} has no record {prefix}keyrings/{name}/{KEYSTORE_FILE} in etcd; create it with `coffer keyd keyring create {name} --store etcd --etcd-endpoints <endpoints> --etcd-prefix {}`", prefix.trim_end_matches('/'))]
    MissingKeyring {
        /// The keyring.
        name: String,
        /// The prefix, ending in `/`.
        prefix: String,
    },
    /// `keyring create` of a keyring that exists.
    #[error(
        "keyring {name:?} already exists in etcd ({prefix}keyrings/{name}/); it is never replaced"
    )]
    KeyringExists {
        /// The keyring.
        name: String,
        /// The prefix, ending in `/`.
        prefix: String,
    },
    /// Other replicas kept changing the record while this write was computed.
    #[error("record {record} changed under this write {attempts} times in a row (other replicas are writing it); nothing was changed by this call: retry")]
    Contended {
        /// The record's full key.
        record: String,
        /// How often it was tried.
        attempts: usize,
    },
}

impl SharedStateError {
    /// Whether the call may succeed later unchanged (etcd down, contention): gRPC UNAVAILABLE.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SharedStateError::WriteUnavailable { .. } | SharedStateError::Contended { .. }
        )
    }
}

/// The record of keyring `name`'s keystore.
pub fn keystore_record(name: &str) -> String {
    format!("keyrings/{name}/{KEYSTORE_FILE}")
}

/// The record of keyring `name`'s sealing keys.
pub fn sealing_record(name: &str) -> String {
    format!("keyrings/{name}/{SEALING_KEYS_FILE}")
}

/// What a record is, by its name.
enum RecordKind<'a> {
    Keystore(&'a str),
    Sealing(&'a str),
}

fn record_kind(name: &str) -> Option<RecordKind<'_>> {
    let rest = name.strip_prefix("keyrings/")?;
    let (keyring, file) = rest.split_once('/')?;
    match file {
        KEYSTORE_FILE => Some(RecordKind::Keystore(keyring)),
        SEALING_KEYS_FILE => Some(RecordKind::Sealing(keyring)),
        _ => None,
    }
}

/// A write that went through: its result, the bytes stored and the revision they got.
struct Written<T> {
    value: T,
    bytes: Zeroizing<Vec<u8>>,
    revision: i64,
}

/// A KEK rotation done in etcd.
#[derive(Debug)]
pub struct Rotated {
    /// The new primary KEK.
    pub key: KeyInfo,
    /// The keyring as stored now, loaded.
    pub keyring: Keyring,
    /// The record's revision.
    pub revision: i64,
}

/// A sealing-key change done in etcd.
#[derive(Debug)]
pub struct SealingChanged<T> {
    /// The key made or retired.
    pub key: T,
    /// The sealing keys as stored now, loaded.
    pub keys: SealingKeys,
    /// The record's revision.
    pub revision: i64,
}

/// keyd's records in etcd, opened with keyd's root: the keyrings and sealing keys of every
/// replica that shares the prefix.
pub struct SharedState {
    records: SealedStore<EtcdStore>,
    /// keyd's root-derived platform: seals KEKs and sealing keys, as in a data directory.
    platform: Arc<dyn Platform>,
}

impl std::fmt::Debug for SharedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedState")
            .field("prefix", &self.records.prefix())
            .finish_non_exhaustive()
    }
}

impl SharedState {
    /// Opens the records under `shared`'s prefix with `root` (opened from this replica's data
    /// directory with `platform`): the prefix must hold this keyd's `keyd-root.json` record.
    pub async fn open(
        shared: SharedStore,
        root: &KeydRoot,
        platform: Arc<dyn Platform>,
    ) -> Result<SharedState, KeydError> {
        let records = SealedStore::new(
            shared.etcd,
            StoreKey::new(root.state_store_key()),
            &shared.prefix,
        )
        .map_err(SharedStateError::Store)?;
        let state = SharedState {
            records,
            platform: root.platform(platform),
        };
        let record = state
            .records
            .get(ROOT_FILE)
            .await
            .map_err(|e| state.read_error(e))?
            .ok_or_else(|| SharedStateError::NotMigrated {
                prefix: state.prefix_arg(),
            })?;
        let theirs = serde_json::from_slice::<serde_json::Value>(&record.plaintext)
            .ok()
            .and_then(|v| v["instance_id"].as_str().map(str::to_string))
            .unwrap_or_default();
        if theirs != root.instance_id() {
            return Err(SharedStateError::OtherInstance {
                prefix: state.prefix_arg(),
                theirs,
                ours: root.instance_id().to_string(),
            }
            .into());
        }
        Ok(state)
    }

    /// The sealed records under the prefix, for other records that live there (audit
    /// anchors) on the same etcd connection.
    pub fn records(&self) -> &SealedStore<EtcdStore> {
        &self.records
    }

    /// The prefix as given on the command line (no trailing `/`).
    fn prefix_arg(&self) -> String {
        self.records.prefix().trim_end_matches('/').to_string()
    }

    fn read_error(&self, e: StoreError) -> KeydError {
        match e {
            StoreError::Format(_) => SharedStateError::Refused {
                prefix: self.prefix_arg(),
                source: e,
            },
            e => SharedStateError::Store(e),
        }
        .into()
    }

    fn write_error(&self, e: StoreError) -> KeydError {
        match e {
            StoreError::Unavailable { .. } => {
                SharedStateError::WriteUnavailable { source: e }.into()
            }
            e => self.read_error(e),
        }
    }

    /// Where messages say a record lives: `etcd:<prefix>`, never opened as a file.
    fn location(&self) -> PathBuf {
        PathBuf::from(format!("etcd:{}", self.prefix_arg()))
    }

    /// Keyring `name`'s keystore, for its record's bytes (messages name `etcd:<key>`).
    pub fn keystore(&self, name: &str) -> Result<Keystore, KeydError> {
        validate_keyring_name(name)?;
        Ok(Keystore::new(
            keyring_dir(&self.location(), name),
            self.platform.clone(),
        ))
    }

    /// Keyring `name`'s sealing keys, for their record's bytes.
    pub fn sealing_store(&self, name: &str) -> Result<SealingKeyStore, KeydError> {
        SealingKeyStore::new(&self.location(), name, self.platform.clone())
    }

    fn keystore_error(&self, name: &str, source: coffer_keystore::KeystoreError) -> KeydError {
        KeydError::Keystore {
            name: name.to_string(),
            dir: keyring_dir(&self.location(), name),
            source,
        }
    }

    fn missing(&self, name: &str) -> KeydError {
        SharedStateError::MissingKeyring {
            name: name.to_string(),
            prefix: self.records.prefix().to_string(),
        }
        .into()
    }

    /// The keyrings in etcd, by name.
    pub async fn keyring_names(&self) -> Result<Vec<String>, KeydError> {
        let (records, _) = self.records.list().await.map_err(|e| self.read_error(e))?;
        let mut names: Vec<String> = records
            .iter()
            .filter_map(|(name, _)| match record_kind(name) {
                Some(RecordKind::Keystore(keyring)) => Some(keyring.to_string()),
                _ => None,
            })
            .collect();
        names.sort();
        Ok(names)
    }

    async fn keystore_bytes(&self, name: &str) -> Result<Zeroizing<Vec<u8>>, KeydError> {
        let record = self
            .records
            .get(&keystore_record(name))
            .await
            .map_err(|e| self.read_error(e))?;
        Ok(record.ok_or_else(|| self.missing(name))?.plaintext)
    }

    async fn sealing_bytes(&self, name: &str) -> Result<Zeroizing<Vec<u8>>, KeydError> {
        self.keystore_bytes(name).await?;
        let record = self
            .records
            .get(&sealing_record(name))
            .await
            .map_err(|e| self.read_error(e))?;
        Ok(record
            .ok_or_else(|| SealingKeyError::Missing {
                keyring: name.to_string(),
            })?
            .plaintext)
    }

    /// Keyring `name`'s KEKs, unsealed.
    pub async fn load_keyring(&self, name: &str) -> Result<Keyring, KeydError> {
        let bytes = self.keystore_bytes(name).await?;
        self.keystore(name)?
            .load_bytes(&bytes)
            .map_err(|e| self.keystore_error(name, e))
    }

    /// Describes keyring `name`'s KEKs.
    pub async fn keyring_info(&self, name: &str) -> Result<KeystoreInfo, KeydError> {
        let bytes = self.keystore_bytes(name).await?;
        self.keystore(name)?
            .info_bytes(&bytes)
            .map_err(|e| self.keystore_error(name, e))
    }

    /// Keyring `name`'s sealing keys, unsealed ([`SealingKeyError::Missing`] if none).
    pub async fn load_sealing_keys(&self, name: &str) -> Result<SealingKeys, KeydError> {
        let bytes = self.sealing_bytes(name).await?;
        Ok(self.sealing_store(name)?.load_bytes(&bytes)?)
    }

    /// Describes keyring `name`'s sealing keys ([`SealingKeyError::Missing`] if none).
    pub async fn sealing_info(&self, name: &str) -> Result<SealingKeysInfo, KeydError> {
        let bytes = self.sealing_bytes(name).await?;
        Ok(self.sealing_store(name)?.info_bytes(&bytes)?)
    }

    /// Changes record `name`: `change` gets its bytes (`None`: absent) and returns the new
    /// bytes, which are written only if the record was not written since it was read; on a
    /// conflict, it starts over from the record as it is then.
    async fn update<T>(
        &self,
        name: &str,
        change: impl Fn(Option<&[u8]>) -> Result<(Vec<u8>, T), KeydError>,
    ) -> Result<Written<T>, KeydError> {
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let current = self
                .records
                .get(name)
                .await
                .map_err(|e| self.write_error(e))?;
            let expect = current
                .as_ref()
                .map_or(Expect::Absent, |r| Expect::ModRevision(r.mod_revision));
            let (bytes, value) = change(current.as_ref().map(|r| &r.plaintext[..]))?;
            let bytes = Zeroizing::new(bytes);
            match self
                .records
                .put(name, &bytes, expect)
                .await
                .map_err(|e| self.write_error(e))?
            {
                Swap::Done { revision } => {
                    return Ok(Written {
                        value,
                        bytes,
                        revision,
                    })
                }
                Swap::Conflict { .. } => {
                    tracing::debug!(record = %name, "another replica wrote the record first; starting over from its version");
                }
            }
        }
        Err(SharedStateError::Contended {
            record: String::from_utf8_lossy(&self.records.path(name)).into_owned(),
            attempts: MAX_WRITE_ATTEMPTS,
        }
        .into())
    }

    /// Parses and validates a stored configuration; with `policy`, every granted role must be
    /// one the policy defines.
    fn parse_config(&self, bytes: &[u8], policy: Option<&Policy>) -> Result<KeydConfig, KeydError> {
        let err = |message: String| KeydError::Config {
            path: Some(PathBuf::from(format!(
                "etcd:{}{CONFIG_RECORD}",
                self.records.prefix()
            ))),
            message,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| err("not UTF-8 text".into()))?;
        let config = match KeydConfig::from_yaml(text) {
            Ok(config) => config,
            Err(KeydError::Config { message, .. }) => return Err(err(message)),
            Err(e) => return Err(e),
        };
        if let Some(policy) = policy {
            config.check_roles(policy, "keyd's --policy").map_err(err)?;
        }
        Ok(config)
    }

    /// keyd's configuration as stored (its YAML) and the revision of its record; `None` if
    /// nobody pushed one.
    pub async fn config_text(&self) -> Result<Option<(String, i64)>, KeydError> {
        let Some(record) = self
            .records
            .get(CONFIG_RECORD)
            .await
            .map_err(|e| self.read_error(e))?
        else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&record.plaintext).into_owned();
        Ok(Some((text, record.mod_revision)))
    }

    /// Stores `yaml` as keyd's configuration, replacing the version read just before (by
    /// compare-and-swap on its revision, starting over if another write came first). The
    /// caller validated it. Returns the version replaced (`None`: there was none) and the new
    /// revision.
    pub async fn push_config(&self, yaml: &str) -> Result<(Option<String>, i64), KeydError> {
        let written = self
            .update(CONFIG_RECORD, |current| {
                Ok((
                    yaml.as_bytes().to_vec(),
                    current.map(|c| String::from_utf8_lossy(c).into_owned()),
                ))
            })
            .await?;
        tracing::info!(
            revision = written.revision,
            "keyd configuration pushed to etcd"
        );
        Ok((written.value, written.revision))
    }

    /// Adds a new primary KEK to keyring `name`.
    pub async fn rotate(&self, name: &str) -> Result<Rotated, KeydError> {
        let keystore = self.keystore(name)?;
        let written = self
            .update(&keystore_record(name), |current| {
                let current = current.ok_or_else(|| self.missing(name))?;
                keystore
                    .rotate_bytes(current)
                    .map_err(|e| self.keystore_error(name, e))
            })
            .await?;
        let keyring = keystore
            .load_bytes(&written.bytes)
            .map_err(|e| self.keystore_error(name, e))?;
        tracing::info!(target: "coffer::audit", event = "rotate", keyring = %name, key_id = %written.value.id, revision = written.revision, "rotated in etcd: new primary KEK");
        Ok(Rotated {
            key: written.value,
            keyring,
            revision: written.revision,
        })
    }

    /// Creates keyring `name` (its keystore with a first KEK, and a first sealing key);
    /// refuses to replace an existing one.
    pub async fn create_keyring(&self, name: &str) -> Result<CreatedKeyring, KeydError> {
        let keystore = self.keystore(name)?;
        let written = self
            .update(&keystore_record(name), |current| {
                if current.is_some() {
                    return Err(SharedStateError::KeyringExists {
                        name: name.to_string(),
                        prefix: self.records.prefix().to_string(),
                    }
                    .into());
                }
                keystore
                    .init_bytes()
                    .map_err(|e| self.keystore_error(name, e))
            })
            .await?;
        let sealing = self.rotate_sealing_key(name).await?;
        Ok(CreatedKeyring {
            kek_id: written
                .value
                .primary()
                .map(|k| k.id.clone())
                .unwrap_or_default(),
            sealing_key_id: sealing.key.id,
        })
    }

    /// Makes a new primary sealing key for keyring `name` (its first, if it has none).
    pub async fn rotate_sealing_key(
        &self,
        name: &str,
    ) -> Result<SealingChanged<SealingKeyInfo>, KeydError> {
        self.keystore_bytes(name).await?;
        let store = self.sealing_store(name)?;
        let written = self
            .update(&sealing_record(name), |current| {
                Ok(store.rotate_bytes(current)?)
            })
            .await?;
        tracing::info!(keyring = %name, key_id = %written.value.id, revision = written.revision, "new primary sealing key in etcd");
        Ok(SealingChanged {
            keys: store.load_bytes(&written.bytes)?,
            key: written.value,
            revision: written.revision,
        })
    }

    /// Retires sealing key `key_id` of keyring `name` for good.
    pub async fn retire_sealing_key(
        &self,
        name: &str,
        key_id: &str,
    ) -> Result<SealingChanged<RetiredKey>, KeydError> {
        self.keystore_bytes(name).await?;
        let store = self.sealing_store(name)?;
        let written = self
            .update(&sealing_record(name), |current| {
                let current = current.ok_or_else(|| SealingKeyError::Missing {
                    keyring: name.to_string(),
                })?;
                Ok(store.retire_bytes(current, key_id)?)
            })
            .await?;
        tracing::warn!(keyring = %name, key_id = %written.value.id, revision = written.revision, "retired sealing key in etcd: values sealed to it can no longer be opened");
        Ok(SealingChanged {
            keys: store.load_bytes(&written.bytes)?,
            key: written.value,
            revision: written.revision,
        })
    }

    /// Loads every keyring `config` names from one listing of the prefix, and the revision to
    /// watch from. With [`ConfigFrom::Store`] the configuration is the listing's
    /// [`CONFIG_RECORD`] (the watch serves later versions from the same revision on), validated
    /// against the policy. One record that does not open fails it all: nothing is served from
    /// a store someone tampered with.
    pub(crate) async fn load_keyrings(
        self: &Arc<Self>,
        config: ConfigFrom<'_>,
    ) -> Result<(HashMap<String, Arc<KeyringSlot>>, i64), KeydError> {
        let (records, revision) = self.records.list().await.map_err(|e| self.read_error(e))?;
        let records: HashMap<String, coffer_keyd_store::Record> = records.into_iter().collect();
        let stored;
        let config = match config {
            ConfigFrom::File(config) => config,
            ConfigFrom::Store(watch) => {
                let record =
                    records
                        .get(CONFIG_RECORD)
                        .ok_or_else(|| SharedStateError::NoConfig {
                            prefix: self.prefix_arg(),
                        })?;
                stored = self.parse_config(&record.plaintext, Some(&watch.policy))?;
                watch.revision.store(record.mod_revision, Ordering::Release);
                tracing::info!(
                    revision = record.mod_revision,
                    keyrings = stored.keyrings.len(),
                    "keyd configuration loaded from etcd"
                );
                &stored
            }
        };
        let mut slots = HashMap::new();
        for (name, access) in &config.keyrings {
            let keystore = self.keystore(name)?;
            let record = records
                .get(&keystore_record(name))
                .ok_or_else(|| self.missing(name))?;
            let keyring = keystore
                .load_bytes(&record.plaintext)
                .map_err(|e| self.keystore_error(name, e))?;
            tracing::info!(keyring = %name, primary = keyring.primary_id(), keys = keyring.len(), revision = record.mod_revision, "keyring loaded from etcd");
            let sealing_store = self.sealing_store(name)?;
            let (sealing, sealing_revision) = match records.get(&sealing_record(name)) {
                Some(r) => (
                    Some(sealing_store.load_bytes(&r.plaintext)?),
                    r.mod_revision,
                ),
                None => {
                    tracing::warn!(keyring = %name, "keyring has no sealing key: key bundles, Reseal and Unseal refuse it until `coffer keyd sealing-key rotate --keyring {name} --store etcd` runs");
                    (None, 0)
                }
            };
            let backend = SlotBackend::Etcd {
                state: self.clone(),
                revision: AtomicI64::new(record.mod_revision),
                sealing_revision: AtomicI64::new(sealing_revision),
            };
            slots.insert(
                name.clone(),
                Arc::new(KeyringSlot::new(
                    name,
                    access.clone(),
                    keystore,
                    keyring,
                    sealing_store,
                    sealing,
                    backend,
                )),
            );
        }
        Ok((slots, revision))
    }
}

/// Where a replica's configuration comes from.
pub(crate) enum ConfigFrom<'a> {
    /// A `--config` file, read once.
    File(&'a KeydConfig),
    /// The [`CONFIG_RECORD`] in etcd (`--config etcd:`), watched.
    Store(&'a ConfigWatch),
}

/// What the watch needs to apply new versions of the configuration record.
pub(crate) struct ConfigWatch {
    /// The policy whose roles the grants must name.
    pub(crate) policy: Arc<Policy>,
    /// The revision of the version applied (or refused) last.
    pub(crate) revision: AtomicI64,
}

/// The revisions a slot serves, when it is served from etcd.
fn revisions(slot: &KeyringSlot) -> Option<(&AtomicI64, &AtomicI64)> {
    match &slot.backend {
        SlotBackend::Etcd {
            revision,
            sealing_revision,
            ..
        } => Some((revision, sealing_revision)),
        SlotBackend::Dir { .. } => None,
    }
}

/// Serves keyring `keyring`, stored at `revision`, in `slot` unless it already serves a newer
/// one. The caller holds `slot.rotate`.
pub(crate) fn serve_keyring(
    slot: &KeyringSlot,
    keyring: Keyring,
    revision: i64,
    metrics: &KeydMetrics,
) -> bool {
    if let Some((served, _)) = revisions(slot) {
        if served.load(Ordering::Acquire) >= revision {
            return false;
        }
        served.store(revision, Ordering::Release);
    }
    metrics.set_keyring_keys(&slot.name, keyring.len());
    slot.current.store(Arc::new(keyring));
    true
}

/// Serves sealing keys `keys`, stored at `revision`, in `slot` unless it already serves newer
/// ones. The caller holds `slot.rotate`.
pub(crate) fn serve_sealing_keys(slot: &KeyringSlot, keys: SealingKeys, revision: i64) -> bool {
    if let Some((_, served)) = revisions(slot) {
        if served.load(Ordering::Acquire) >= revision {
            return false;
        }
        served.store(revision, Ordering::Release);
    }
    slot.sealing.store(Some(Arc::new(keys)));
    true
}

/// Watches the prefix from `revision` for the changes other replicas (and the CLI) make, and
/// serves them in `slots`. While etcd is unreachable the keys in memory stay served; the
/// watch is set up again, with a fresh listing, once etcd answers.
pub(crate) async fn watch_loop(
    state: Arc<SharedState>,
    slots: Vec<Arc<KeyringSlot>>,
    mut revision: i64,
    config: Option<ConfigWatch>,
    audit: SharedAuditLog,
    metrics: KeydMetrics,
) {
    let config = config.as_ref();
    let slots: HashMap<String, Arc<KeyringSlot>> =
        slots.into_iter().map(|s| (s.name.clone(), s)).collect();
    let prefix = state.records.prefix().as_bytes().to_vec();
    let mut backoff = Duration::from_millis(100);
    loop {
        match state.records.inner().watch(&prefix, revision).await {
            Ok(mut watcher) => {
                backoff = Duration::from_millis(100);
                while let Some(batch) = watcher.next().await {
                    match batch {
                        Ok(events) => {
                            for event in events {
                                match event {
                                    WatchEvent::Put(entry) => {
                                        revision = revision.max(entry.mod_revision);
                                        apply(&state, &slots, config, &entry, &audit, &metrics)
                                            .await;
                                    }
                                    WatchEvent::Delete { key, revision: at } => {
                                        revision = revision.max(at);
                                        tracing::warn!(key = %String::from_utf8_lossy(&key), "a keyd record was deleted from etcd; still serving the keys in memory");
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "etcd watch ended; serving the keys in memory and watching again");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot watch etcd; serving the keys in memory until it is back");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
        // What changed while the watch was down: everything newer than what is served.
        match state.records.inner().list(&prefix).await {
            Ok(listing) => {
                for entry in &listing.entries {
                    apply(&state, &slots, config, entry, &audit, &metrics).await;
                }
                revision = listing.revision;
                tracing::info!(revision, "etcd answers again: caught up and watching");
            }
            Err(e) => {
                tracing::debug!(error = %e, "etcd still unreachable");
            }
        }
    }
}

/// Serves a written record if it belongs to a served keyring and is newer than what it
/// serves. A record that does not open or load is refused: the keys served stay.
async fn apply(
    state: &SharedState,
    slots: &HashMap<String, Arc<KeyringSlot>>,
    config: Option<&ConfigWatch>,
    entry: &Entry,
    audit: &SharedAuditLog,
    metrics: &KeydMetrics,
) {
    let Some(name) = entry
        .key
        .strip_prefix(state.records.prefix().as_bytes())
        .and_then(|n| std::str::from_utf8(n).ok())
    else {
        return;
    };
    if name == CONFIG_RECORD {
        if let Some(watch) = config {
            apply_config(state, slots, watch, entry, audit, metrics);
        }
        return;
    }
    let Some(kind) = record_kind(name) else {
        return;
    };
    let keyring = match kind {
        RecordKind::Keystore(k) | RecordKind::Sealing(k) => k,
    };
    let Some(slot) = slots.get(keyring) else {
        return;
    };
    let Some((served, sealing_served)) = revisions(slot) else {
        return;
    };
    let _guard = slot.rotate.lock().await;
    let newest = match kind {
        RecordKind::Keystore(_) => served,
        RecordKind::Sealing(_) => sealing_served,
    };
    if entry.mod_revision <= newest.load(Ordering::Acquire) {
        return;
    }
    let key = String::from_utf8_lossy(&entry.key).into_owned();
    let refuse = |error: String| {
        metrics.store_record_refused();
        tracing::error!(key = %key, error = %error, "a changed keyd record in etcd is refused; still serving the previous keys");
    };
    let record = match state.records.open_entry(entry) {
        Ok((_, record)) => record,
        Err(e) => return refuse(e.to_string()),
    };
    let (key_id, reason) = match kind {
        RecordKind::Keystore(_) => match slot.store.load_bytes(&record.plaintext) {
            Ok(keyring) => {
                let key_id = keyring.primary_id().to_string();
                serve_keyring(slot, keyring, entry.mod_revision, metrics);
                (key_id, None)
            }
            Err(e) => return refuse(slot.keystore_error(e).to_string()),
        },
        RecordKind::Sealing(_) => match slot.sealing_store.load_bytes(&record.plaintext) {
            Ok(keys) => {
                let key_id = keys.primary().id().to_string();
                serve_sealing_keys(slot, keys, entry.mod_revision);
                (key_id, Some("sealing keys".to_string()))
            }
            Err(e) => return refuse(e.to_string()),
        },
    };
    tracing::info!(keyring = %slot.name, key_id = %key_id, revision = entry.mod_revision, "keyring changed in etcd: now served");
    let _ = audit.append(reload_record(Some(&slot.name), Some(key_id), reason));
}

/// Applies a new version of keyd's configuration to the served keyrings, each keyring's
/// grants swapped whole; a version that does not open, parse or validate is refused and the
/// grants served stay. The keyring set is fixed at start: a keyring added is served after a
/// restart, one removed is granted to nobody.
fn apply_config(
    state: &SharedState,
    slots: &HashMap<String, Arc<KeyringSlot>>,
    watch: &ConfigWatch,
    entry: &Entry,
    audit: &SharedAuditLog,
    metrics: &KeydMetrics,
) {
    let revision = entry.mod_revision;
    // A refused version is not tried again at every reconnect: only a newer one is.
    if watch.revision.load(Ordering::Acquire) >= revision {
        return;
    }
    watch.revision.store(revision, Ordering::Release);
    let config = state
        .records
        .open_entry(entry)
        .map_err(|e| state.read_error(e))
        .and_then(|(_, record)| state.parse_config(&record.plaintext, Some(&watch.policy)));
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            metrics.store_record_refused();
            tracing::error!(revision, error = %e, "a new keyd configuration in etcd is refused; still applying the previous grants");
            return;
        }
    };
    for (name, slot) in slots {
        match config.keyring(name) {
            Some(access) => slot.access.store(Arc::new(access.clone())),
            None => {
                tracing::warn!(keyring = %name, revision, "keyring removed from keyd's configuration in etcd: nothing is granted on it any more (restart the replica to stop serving it)");
                slot.access.store(Arc::new(KeyringAccess::default()));
            }
        }
    }
    for name in config.keyrings.keys().filter(|n| !slots.contains_key(*n)) {
        tracing::warn!(keyring = %name, revision, "keyring added to keyd's configuration in etcd: this replica serves it only after a restart (the set of keyrings changes at start)");
    }
    tracing::info!(target: "coffer::audit", event = "reload", revision, "keyd configuration changed in etcd: new grants applied");
    let _ = audit.append(reload_record(
        None,
        None,
        Some(format!("configuration revision {revision}")),
    ));
}

/// The audit record of keys (of `keyring`) or of the grants (`None`) reloaded from where
/// they are stored.
pub(crate) fn reload_record(
    keyring: Option<&str>,
    key_id: Option<String>,
    reason: Option<String>,
) -> AuditEntry {
    AuditEntry {
        event: "reload".to_string(),
        caller: coffer_audit::Caller {
            tee: "none".to_string(),
            measurement: String::new(),
            role: None,
            peer: "local".to_string(),
        },
        keyring: keyring.map(str::to_string),
        key_id,
        location: None,
        binding: None,
        result: Outcome::Ok,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_names_map_to_keyrings() {
        assert!(matches!(
            record_kind("keyrings/a/keystore"),
            Some(RecordKind::Keystore("a"))
        ));
        assert!(matches!(
            record_kind("keyrings/b-2/sealing-keys.json"),
            Some(RecordKind::Sealing("b-2"))
        ));
        assert!(record_kind("keyd-root.json").is_none());
        assert!(record_kind("keyrings/a/keystore.lock").is_none());
        assert!(record_kind("anchors/r1").is_none());
    }
}

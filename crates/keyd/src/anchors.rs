//! Audit anchors: each replica's audit chain head, kept in the shared store where the
//! replica's own disk cannot roll it back.
//!
//! Every replica keeps its own hash-chained audit log. A log's tail can be deleted together
//! with its head file, or the whole log swapped for another replica's (all replicas chain
//! under the same root-derived key), and the chain alone stays valid. So every
//! `--audit-anchor-interval` and at shutdown a replica writes its durable chain head as
//! record `audit-anchors/<replica-id>` in the shared store (sealed under the root like every
//! record, so it cannot be forged or moved to another replica's name), and
//! `coffer keyd audit verify --etcd-endpoints` checks each log against its anchor.
//!
//! An anchor never moves backwards: writes are compare-and-swap on the revision last read,
//! and a stored anchor this replica's log does not contain (ahead of its end, or with
//! another hash at its position) is left in place, logged as an error and counted in
//! `coffer_keyd_audit_anchor_conflict`: the log lost or changed records, or two replicas use
//! one `--replica-id`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use coffer_audit::{ChainMode, Checkpoint, CheckpointStatus, SharedAuditLog};
use coffer_keyd_store::{EtcdStore, Expect, SealedStore, StateStore, StoreError, StoreKey, Swap};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::metrics::KeydMetrics;
use crate::root::KeydRoot;
use crate::{KeydError, SharedStore};

/// Record names of the anchors: `audit-anchors/<replica-id>` under the store's prefix.
pub const AUDIT_ANCHORS: &str = "audit-anchors/";

/// The anchor record format this build writes and reads.
const ANCHOR_VERSION: u32 = 1;

/// How long shutdown waits for the last anchor.
const ANCHOR_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest replica id (a DNS name, like a pod's host name).
const MAX_REPLICA_ID: usize = 253;

/// One replica's audit chain head as anchored in the shared store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditAnchor {
    /// The record format version.
    pub version: u32,
    /// The replica (`--replica-id`).
    pub replica: String,
    /// The segment the anchored record is in (its `<log>.NNNNNN` number once closed).
    pub segment: u64,
    /// The anchored record's `seq`: also how many records the chain holds up to it.
    pub seq: u64,
    /// The anchored record's link value (hex).
    pub hash: String,
    /// When it was anchored (RFC 3339 UTC).
    pub time: String,
}

impl AuditAnchor {
    /// The log position it anchors.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            seq: self.seq,
            hash: self.hash.clone(),
            segment: self.segment,
        }
    }

    /// Parses a record's plaintext; `name` is the record name, for the message.
    pub fn decode(name: &str, bytes: &[u8]) -> Result<AuditAnchor, AnchorError> {
        let anchor: AuditAnchor =
            serde_json::from_slice(bytes).map_err(|e| AnchorError::Malformed {
                name: name.to_string(),
                reason: e.to_string(),
            })?;
        if anchor.version != ANCHOR_VERSION {
            return Err(AnchorError::Malformed {
                name: name.to_string(),
                reason: format!(
                    "format version {}, this build reads {ANCHOR_VERSION} (use the coffer release that wrote it)",
                    anchor.version
                ),
            });
        }
        if Some(anchor.replica.as_str()) != name.strip_prefix(AUDIT_ANCHORS) {
            return Err(AnchorError::Malformed {
                name: name.to_string(),
                reason: format!("it names replica {:?}", anchor.replica),
            });
        }
        Ok(anchor)
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an anchor serialises")
    }
}

/// Why anchoring or reading anchors failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnchorError {
    /// The shared store failed or refused (an outage: anchoring resumes when it is back).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The record opened (it is authentic) but is not an anchor this build understands.
    #[error("audit anchor record {name} is malformed: {reason}")]
    Malformed {
        /// The record name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The local audit log could not be synced or read.
    #[error(transparent)]
    Audit(#[from] coffer_audit::AuditError),
    /// Another writer changed the anchor between this replica's read and its write.
    #[error("audit anchor {key} was changed by another writer while this replica anchored; it is read and checked again at the next interval")]
    ChangedMeanwhile {
        /// The store key.
        key: String,
    },
    /// The stored anchor names a record this replica's log does not hold.
    #[error("the audit anchor of replica {replica} in the shared store is at seq {anchored} (anchored {time}) but {problem}: the log lost or changed records, or another replica uses --replica-id {replica}. The anchor is kept, not moved back; check the log with `coffer keyd audit verify --etcd-endpoints … --replica {replica}=<log>`, then give this replica a new --replica-id")]
    Conflict {
        /// The replica id.
        replica: String,
        /// The anchored seq.
        anchored: u64,
        /// When it was anchored.
        time: String,
        /// How the log differs.
        problem: String,
    },
}

/// Checks a `--replica-id`: it becomes a store key component, so `[A-Za-z0-9._-]`, 1 to 253.
pub fn validate_replica_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_REPLICA_ID {
        return Err(format!(
            "--replica-id {id:?} must have 1 to {MAX_REPLICA_ID} characters"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "--replica-id {id:?} contains {c:?}: use letters, digits, '.', '_' and '-' (a host name)"
        ));
    }
    Ok(())
}

/// Every anchor under the store's prefix, by replica, in name order. A record that does not
/// authenticate or parse fails the whole read.
pub async fn read_anchors(store: &SealedStore<EtcdStore>) -> Result<Vec<AuditAnchor>, AnchorError> {
    let prefix = store.path(AUDIT_ANCHORS);
    let listing = store.inner().list(&prefix).await?;
    listing
        .entries
        .iter()
        .map(|entry| {
            let (name, record) = store.open_entry(entry)?;
            AuditAnchor::decode(&name, &record.plaintext)
        })
        .collect()
}

/// Where and as whom a replica anchors: prepared while keyd's root is open.
pub(crate) struct AnchorTarget {
    store: SealedStore<EtcdStore>,
    replica: String,
    chain: ChainMode,
}

impl AnchorTarget {
    /// Anchors as `replica` in `shared`'s store, sealed under `root`.
    pub(crate) fn new(
        shared: &SharedStore,
        root: &KeydRoot,
        replica: String,
    ) -> Result<Self, KeydError> {
        let config = |message: String| KeydError::Config {
            path: None,
            message,
        };
        validate_replica_id(&replica).map_err(config)?;
        let store = SealedStore::new(
            shared.etcd.clone(),
            StoreKey::new(root.state_store_key()),
            &shared.prefix,
        )
        .map_err(|e| config(e.to_string()))?;
        Ok(AnchorTarget {
            store,
            replica,
            chain: ChainMode::Hmac(root.audit_chain_key()),
        })
    }

    /// Anchors `audit` every `every` until [`AnchorTask::stop`].
    pub(crate) fn start(
        self,
        audit: SharedAuditLog,
        metrics: KeydMetrics,
        every: Duration,
    ) -> AnchorTask {
        let (stop, stopped) = oneshot::channel();
        let log = audit.path();
        let anchorer = Anchorer {
            store: self.store,
            replica: self.replica,
            audit,
            log,
            chain: self.chain,
            metrics,
            trusted: None,
        };
        AnchorTask {
            task: tokio::spawn(anchorer.run(every, stopped)),
            stop,
        }
    }
}

/// The running anchor task.
pub(crate) struct AnchorTask {
    task: tokio::task::JoinHandle<()>,
    stop: oneshot::Sender<()>,
}

impl AnchorTask {
    /// Anchors the records written up to now and ends; a store that does not answer does not
    /// hold up the shutdown for long.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        if tokio::time::timeout(ANCHOR_SHUTDOWN_TIMEOUT, self.task)
            .await
            .is_err()
        {
            tracing::warn!("the last audit anchor was not written before shutdown");
        }
    }
}

/// Writes one replica's anchors.
struct Anchorer {
    store: SealedStore<EtcdStore>,
    replica: String,
    audit: SharedAuditLog,
    log: PathBuf,
    chain: ChainMode,
    metrics: KeydMetrics,
    /// The revision of the anchor as this replica last wrote or checked it: a stored anchor
    /// at another revision was written by someone else and is checked against the log first.
    trusted: Option<i64>,
}

impl Anchorer {
    /// Anchors every `every` until `stop` fires (or its sender is dropped), then once more,
    /// so the records written up to shutdown are anchored too.
    async fn run(mut self, every: Duration, mut stop: oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.anchor_and_report().await,
                _ = &mut stop => break,
            }
        }
        self.anchor_and_report().await;
    }

    /// One anchor; failures are logged and counted, never fatal: serving goes on.
    async fn anchor_and_report(&mut self) {
        match self.anchor().await {
            Ok(()) => self.metrics.set_audit_anchor_conflict(false),
            Err(e @ AnchorError::Conflict { .. }) => {
                self.metrics.set_audit_anchor_conflict(true);
                tracing::error!(replica = %self.replica, error = %e, "audit anchor not written");
            }
            Err(e) => {
                self.metrics.audit_anchor_failure();
                tracing::warn!(replica = %self.replica, error = %e, "could not anchor the audit chain head in the shared store; retrying at the next interval");
            }
        }
    }

    async fn anchor(&mut self) -> Result<(), AnchorError> {
        let audit = self.audit.clone();
        let head = tokio::task::spawn_blocking(move || audit.checkpoint())
            .await
            .map_err(|e| coffer_audit::AuditError::Io {
                op: "checkpoint",
                path: self.log.clone(),
                source: std::io::Error::other(e),
            })??;
        let name = format!("{AUDIT_ANCHORS}{}", self.replica);
        let expect = match self.store.get(&name).await? {
            None => Expect::Absent,
            Some(record) => {
                let stored = AuditAnchor::decode(&name, &record.plaintext)?;
                if self.trusted != Some(record.mod_revision) {
                    self.check(&stored, &head).await?;
                }
                self.trusted = Some(record.mod_revision);
                if stored.seq == head.seq && stored.hash == head.hash {
                    return Ok(());
                }
                Expect::ModRevision(record.mod_revision)
            }
        };
        let anchor = AuditAnchor {
            version: ANCHOR_VERSION,
            replica: self.replica.clone(),
            segment: head.segment,
            seq: head.seq,
            hash: head.hash,
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        match self.store.put(&name, &anchor.encode(), expect).await? {
            Swap::Done { revision } => {
                self.trusted = Some(revision);
                tracing::debug!(replica = %self.replica, seq = anchor.seq, "audit chain head anchored");
                Ok(())
            }
            // Someone else wrote it meanwhile: the next round reads and checks theirs.
            Swap::Conflict { .. } => {
                self.trusted = None;
                Err(AnchorError::ChangedMeanwhile {
                    key: String::from_utf8_lossy(&self.store.path(&name)).into_owned(),
                })
            }
        }
    }

    /// Whether this replica's log holds the stored anchor (which this process did not write).
    async fn check(&self, stored: &AuditAnchor, head: &Checkpoint) -> Result<(), AnchorError> {
        let conflict = |problem: String| AnchorError::Conflict {
            replica: self.replica.clone(),
            anchored: stored.seq,
            time: stored.time.clone(),
            problem,
        };
        if stored.seq > head.seq {
            return Err(conflict(format!(
                "this replica's log ends at seq {} (its tail was deleted)",
                head.seq
            )));
        }
        let (log, chain, checkpoint) = (self.log.clone(), self.chain.clone(), stored.checkpoint());
        let status = tokio::task::spawn_blocking(move || {
            coffer_audit::check_checkpoint(&log, &chain, &checkpoint)
        })
        .await
        .map_err(|e| coffer_audit::AuditError::Io {
            op: "check",
            path: self.log.clone(),
            source: std::io::Error::other(e),
        })??;
        match status {
            CheckpointStatus::Holds { .. } | CheckpointStatus::NotKept { .. } => Ok(()),
            CheckpointStatus::Rewritten => Err(conflict(format!(
                "record seq {} of this replica's log has another hash (the log was rewritten or replaced)",
                stored.seq
            ))),
            CheckpointStatus::TailDeleted { last_seq } => Err(conflict(format!(
                "this replica's log ends at seq {last_seq} (its tail was deleted)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn anchor() -> AuditAnchor {
        AuditAnchor {
            version: ANCHOR_VERSION,
            replica: "keyd-0".into(),
            segment: 3,
            seq: 42,
            hash: "ab".repeat(32),
            time: "2026-12-02T15:00:00.000Z".into(),
        }
    }

    #[test]
    fn an_anchor_round_trips_and_must_match_its_record_name() {
        let bytes = anchor().encode();
        assert_eq!(
            AuditAnchor::decode("audit-anchors/keyd-0", &bytes).unwrap(),
            anchor()
        );
        let moved = AuditAnchor::decode("audit-anchors/keyd-1", &bytes).unwrap_err();
        assert!(moved.to_string().contains("names replica"), "{moved}");
        let future = AuditAnchor {
            version: 2,
            ..anchor()
        };
        let err = AuditAnchor::decode("audit-anchors/keyd-0", &future.encode()).unwrap_err();
        assert!(err.to_string().contains("format version 2"), "{err}");
        assert!(AuditAnchor::decode("audit-anchors/keyd-0", b"{}").is_err());
    }

    #[test]
    fn replica_ids_are_host_names() {
        validate_replica_id("keyd-0.keyd.coffer-system").unwrap();
        for bad in ["", "a/b", "a b", &"x".repeat(254)] {
            assert!(validate_replica_id(bad).is_err(), "{bad:?}");
        }
    }
}

//! Aggregated records for high-rate successful operations: one record per (event, caller,
//! keyring, key id) and flush, with the number of operations it stands for.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::{AuditEntry, AuditError, Caller, Outcome, SharedAuditLog};

/// What one aggregated record counts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    event: String,
    caller: Caller,
    keyring: Option<String>,
    key_id: Option<String>,
}

/// Counts successful operations until [`Aggregator::flush`] writes them, one record per
/// distinct (event, caller, keyring, key id) with its `count`.
///
/// Only successes are counted: a refusal or error carries its own reason and must stay one
/// record each, written before the caller sees the result. Counts not yet flushed are lost in a
/// crash; the caller flushes on a timer and at shutdown.
#[derive(Debug, Default)]
pub struct Aggregator {
    pending: Mutex<HashMap<Key, u64>>,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Aggregator::default()
    }

    /// Counts one successful operation. An entry whose result is not [`Outcome::Ok`], or that
    /// names a location (which a count would lose), is refused and handed back: write it on
    /// its own.
    pub fn add(&self, entry: AuditEntry) -> Result<(), Box<AuditEntry>> {
        if entry.result != Outcome::Ok || entry.reason.is_some() || entry.location.is_some() {
            return Err(Box::new(entry));
        }
        let key = Key {
            event: entry.event,
            caller: entry.caller,
            keyring: entry.keyring,
            key_id: entry.key_id,
        };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        *pending.entry(key).or_insert(0) += 1;
        Ok(())
    }

    /// Operations counted and not yet written.
    pub fn pending(&self) -> u64 {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.values().sum()
    }

    /// Writes one record per counted key, with its count, in one write; returns how many
    /// records were written. The counts are taken out first, so operations counted meanwhile
    /// go to the next flush.
    pub fn flush(&self, log: &SharedAuditLog) -> Result<usize, AuditError> {
        let taken = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let mut entries: Vec<(AuditEntry, u64)> = taken
            .into_iter()
            .map(|(key, count)| {
                let entry = AuditEntry {
                    event: key.event,
                    caller: key.caller,
                    keyring: key.keyring,
                    key_id: key.key_id,
                    location: None,
                    binding: None,
                    result: Outcome::Ok,
                    reason: None,
                };
                (entry, count)
            })
            .collect();
        // A stable order makes logs of the same traffic comparable.
        entries.sort_by(|(a, _), (b, _)| {
            (&a.caller.peer, &a.keyring, &a.key_id, &a.event).cmp(&(
                &b.caller.peer,
                &b.keyring,
                &b.key_id,
                &b.event,
            ))
        });
        let written = entries.len();
        log.append_counted(entries)?;
        Ok(written)
    }
}

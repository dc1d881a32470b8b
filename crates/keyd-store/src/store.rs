//! What keyd needs from a shared store: versioned keys, compare-and-swap, prefix watches.

use std::future::Future;

use tokio::sync::mpsc;

use crate::StoreError;

/// One stored key and its value as the store holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The full key.
    pub key: Vec<u8>,
    /// The stored value (ciphertext, for keyd's records).
    pub value: Vec<u8>,
    /// The store revision of the last write to this key; compare-and-swap checks it.
    pub mod_revision: i64,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("value_len", &self.value.len())
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

/// The condition a write needs to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist (create-only).
    Absent,
    /// The key was last written at this revision (nobody wrote it since it was read).
    ModRevision(i64),
}

/// The outcome of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swap {
    /// Written; the store's revision after the write.
    Done {
        /// The new revision.
        revision: i64,
    },
    /// The condition did not hold; what the key holds now (`None`: absent).
    Conflict {
        /// The current entry.
        current: Option<Entry>,
    },
}

/// The entries under a prefix at one store revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The entries, in key order.
    pub entries: Vec<Entry>,
    /// The store revision they were read at: watch from it to miss nothing.
    pub revision: i64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was written.
    Put(Entry),
    /// A key was deleted.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The revision of the deletion.
        revision: i64,
    },
}

/// The changes under a prefix, in revision order, one batch per store revision.
#[derive(Debug)]
pub struct Watcher {
    pub(crate) events: mpsc::Receiver<Result<Vec<WatchEvent>, StoreError>>,
}

impl Watcher {
    /// The next batch; an error ends the watch (start a new one from a fresh read); `None`
    /// when the watcher's task stopped.
    pub async fn next(&mut self) -> Option<Result<Vec<WatchEvent>, StoreError>> {
        self.events.recv().await
    }
}

/// A key-value store with revisions, as keyd's replicas share it.
pub trait StateStore: Send + Sync {
    /// The entry at `key`, if any.
    fn get(&self, key: &[u8]) -> impl Future<Output = Result<Option<Entry>, StoreError>> + Send;

    /// Every entry whose key starts with `prefix`, in key order, read at one revision.
    fn list(&self, prefix: &[u8]) -> impl Future<Output = Result<Listing, StoreError>> + Send;

    /// Writes `value` at `key` if `expect` holds, atomically.
    fn put(
        &self,
        key: &[u8],
        value: Vec<u8>,
        expect: Expect,
    ) -> impl Future<Output = Result<Swap, StoreError>> + Send;

    /// Deletes `key` if it was last written at `mod_revision`.
    fn delete(
        &self,
        key: &[u8],
        mod_revision: i64,
    ) -> impl Future<Output = Result<Swap, StoreError>> + Send;

    /// Watches the keys under `prefix` for changes after revision `after` (from a [`list`]
    /// or [`get`], so no change between the read and the watch is missed).
    ///
    /// [`list`]: StateStore::list
    /// [`get`]: StateStore::get
    fn watch(
        &self,
        prefix: &[u8],
        after: i64,
    ) -> impl Future<Output = Result<Watcher, StoreError>> + Send;
}

/// The end of the key range that holds every key starting with `prefix` (etcd's convention:
/// the prefix with its last byte below 0xff incremented).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): every key from the prefix on.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_covers_the_prefix() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}

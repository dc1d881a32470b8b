//! keyd's state in a shared store (etcd), so several replicas serve one set of keys.
//!
//! With a [`SharedStore`], keyd loads its keyrings and sealing keys from records under the
//! store's prefix (`keyrings/<name>/keystore`, `keyrings/<name>/sealing-keys.json`, the bytes
//! of the files a data directory would hold, each sealed again under keyd's root by
//! `coffer_keyd_store`), makes every change with a compare-and-swap on the record's revision,
//! and watches the prefix to serve the changes other replicas make. The data directory keeps
//! only this replica's sealed root and its audit log.

use coffer_keyd_store::EtcdStore;

/// A connection to the etcd that holds keyd's state, and the key prefix of its records.
#[derive(Debug)]
pub struct SharedStore {
    /// The etcd connection.
    pub etcd: EtcdStore,
    /// The key prefix (`--etcd-prefix`, e.g. `/coffer/keyd`).
    pub prefix: String,
}

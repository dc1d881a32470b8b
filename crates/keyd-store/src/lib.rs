//! keyd's durable state in a shared store, so several keyd replicas can serve one set of keys.
//!
//! Three layers, each in its own module:
//! * [`format`]: one record's bytes: a format version, a random nonce and AES-256-GCM ciphertext
//!   under a key derived from keyd's root, authenticated with the full store key path, so a
//!   value that was altered, moved to another key or written under another root is refused.
//! * [`store`]: the [`StateStore`] trait (get, list a prefix, compare-and-swap by revision,
//!   delete, watch a prefix) that keyd needs from a store, and [`etcd`], its etcd v3 backend.
//! * [`sealed`]: [`SealedStore`], a [`StateStore`] under a prefix whose values go through
//!   [`format`]: plaintext in, ciphertext in the store.

pub mod error;
pub mod etcd;
pub mod format;
pub mod sealed;
pub mod store;

/// The etcd v3 wire types and clients (the subset in `proto/etcd.proto`).
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

pub use error::StoreError;
pub use etcd::{EtcdOptions, EtcdStore, EtcdTls};
pub use format::{FormatError, StoreKey, FORMAT_VERSION};
pub use sealed::{record_key, Record, SealedStore};
pub use store::{Entry, Expect, Listing, StateStore, Swap, WatchEvent, Watcher};

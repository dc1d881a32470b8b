//! The client of the Coffer key service (`coffer keyd`), shared by every caller: the KMS
//! plugin in service mode, `kubectl coffer` on a workstation and `coffer run` in a workload.
//!
//! * [`KeydClient`]: one connection. [`KeydClient::connect`] presents this caller's attested
//!   certificate (mutual attested TLS); [`KeydClient::connect_unattested`] presents none, for a
//!   workstation, and can use only what keyd serves without attestation (the key bundle and
//!   Reseal). Either way keyd's attested certificate is verified against the caller's policy.
//! * [`KeydPool`]: pooled, reconnecting mutual attested TLS connections with backoff and a
//!   deadline on every call, for a caller that forwards traffic to keyd.
//! * [`KeydReplicas`]: a [`KeydPool`] per keyd replica, calls spread across the replicas that
//!   answer and failed over to another within the deadline.
//! * [`limits`]: the bounds keyd's API puts on requests, so callers can refuse early.

#![deny(missing_docs)]

mod addr;
mod client;
mod error;
mod handshake;
mod io;
pub mod limits;
mod pool;
mod replicas;

/// Generated gRPC types and stubs of `coffer.keyd.v1.KeyService` (from `coffer-proto`).
pub use coffer_proto::keyd as pb;

pub use addr::{KeydAddr, KeydAddrs};
pub use client::{ItemRefusal, KeydClient, KeydClientOptions, ReplicaRoot};
pub use error::{error_chain, ClientError};
pub use limits::{
    validate_keyring_name, InvalidKeyringName, MAX_BATCH_ITEMS, MAX_CIPHERTEXT_LEN,
    MAX_PLAINTEXT_LEN, MAX_UNSEAL_BATCH_BYTES, MAX_UNSEAL_BATCH_ITEMS,
};
pub use pool::{
    Backoff, CallError, ClientIdentity, KeydPool, KeyringStatus, PoolEvents, PoolOptions,
};
pub use replicas::{KeydReplicas, RESOLVE_INTERVAL};

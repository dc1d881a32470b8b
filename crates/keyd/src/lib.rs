//! The Coffer key service (`coffer keyd`), first milestone.
//!
//! keyd keeps named KEK keyrings — one [`coffer_keystore::store::Keystore`] directory each, under
//! `<data-dir>/keyrings/<name>/`, sealed by the TEE platform — and serves them over mutual
//! attested TLS. A caller's role comes from its attestation evidence and the attestation policy
//! ([`coffer_attest::policy::Policy`]); the keyd configuration ([`KeydConfig`]) says which roles
//! may use which operation on which keyring.

mod anchors;
mod config;
mod error;
mod grants;
mod identity;
mod io;
mod join;
mod keyrings;
mod limits;
mod metrics;
mod root;
mod sealing;
mod server;
mod service;
mod shared;
mod slots;

/// Generated gRPC types and stubs of `coffer.keyd.v1.KeyService` (from `coffer-proto`).
pub use coffer_proto::keyd as pb;

pub use anchors::{read_anchors, validate_replica_id, AnchorError, AuditAnchor, AUDIT_ANCHORS};
pub use config::{validate_keyring_name, KeydConfig, KeyringAccess, Operation};
pub use error::KeydError;
pub use grants::{NamePattern, UnsealGrant};
pub use join::{join, JoinOptions, Joined, KEYD_PEER_ROLE};
pub use keyrings::{create_keyring, keyring_dir, keyring_store, sealing_key_store, CreatedKeyring};
pub use limits::KeydLimits;
pub use metrics::KeydMetrics;
pub use root::{
    open_shares, root_info, Adoption, HandedRoot, KeydRoot, RecoveredRoot, RecoveryInfo,
    RecoveryRequest, RootInfo, ROOT_FILE,
};
pub use sealing::{
    KeyLookup, RetiredKey, SealingKeyError, SealingKeyInfo, SealingKeyStore, SealingKeys,
    SealingKeysInfo, SEALING_KEYS_FILE,
};
pub use server::{
    default_replica_id, serve, AuditSettings, KeydServeOptions, ReadyHook,
    DEFAULT_AUDIT_ANCHOR_INTERVAL, DEFAULT_AUDIT_SEGMENT_BYTES, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_KEY_BUNDLE_VALIDITY,
};
pub use service::KeydConnectInfo;
pub use shared::{
    keystore_record, sealing_record, Rotated, SealingChanged, SharedState, SharedStateError,
    SharedStore, CONFIG_RECORD,
};

//! The Coffer KMS plugin server.
//!
//! kube-apiserver talks to it over a unix socket with the KMS v2 (or legacy v1beta1) gRPC API.
//! Keys come from a [`coffer_keystore::Keystore`] sealed by the TEE platform (standalone mode)
//! or stay in `coffer keyd`, to which every call is forwarded (service mode).
//!
//! * [`server::serve`] — run the plugin.
//! * [`service`] — the gRPC handlers and their input checks.
//! * [`backend`] — where the keys are: the local keyring or keyd.
//! * [`remote`] — service mode: forwarding to keyd, Status caching, probing.
//! * [`dek_cache`] — service mode: the DEK seeds keyd released, for repeated Decrypts.
//! * [`enclave`] — `coffer kms bridge`: forwarding to the plugin inside an SGX enclave.
//! * [`tcp`] — `kms serve --listen-tcp`: serving the bridge over attested TLS.
//! * [`listener`] — the socket: single instance, stale cleanup, permissions, connection slots.
//! * [`deadline`] — closes connections that make no calls.
//! * [`peer`] — caller checks with kernel credentials.
//! * [`authority`] — accepts the socket-path `:authority` older API servers send.
//! * [`metrics`] — Prometheus metrics and `/healthz`.

#![deny(missing_docs)]

pub mod authority;
pub mod backend;
pub mod deadline;
pub mod dek_cache;
pub mod enclave;
pub mod listener;
pub mod metrics;
pub mod peer;
pub mod remote;
pub mod server;
pub mod service;
pub mod tcp;

pub use enclave::EnclaveOptions;
pub use remote::RemoteOptions;
pub use server::{serve, KeySource, ServeError, ServeOptions};
pub use service::StatusVersion;

//! `coffer run`: the first process inside a workload's TEE.
//!
//! The kubelet delivers a pod's Secrets as it always does — environment variables
//! (`secretKeyRef`, `envFrom`) and mounted Secret volumes (the `..data` symlink layout) — but
//! their values are sealed (`coffer.v1.…`, see `coffer-sealed`), so the node only ever holds
//! ciphertext. `coffer run`:
//!
//! 1. finds the sealed values ([`discover`], [`volume`]) and the pod's namespace;
//! 2. attests to `coffer keyd` with this platform's evidence and unseals them all in one
//!    batched call ([`unseal`]), retrying an unreachable keyd with backoff up to a deadline;
//! 3. writes unsealed files only into TEE-private memory ([`outdir`]) and starts the app with
//!    the plaintext environment ([`supervise`]): it forwards signals, propagates the exit code
//!    and reaps orphans;
//! 4. watches the mounted Secrets and, when the kubelet swaps `..data`, re-unseals, replaces
//!    the files atomically and tells the app ([`watch`]).
//!
//! Plaintext is never written or logged anywhere but the app's environment and `--out`.

#![deny(missing_docs)]

pub mod config;
pub mod discover;
pub mod error;
pub mod outdir;
pub mod supervise;
pub mod unseal;
pub mod volume;
pub mod watch;

pub use config::{EnvSource, FilesSource, OnChange, RunConfig};
pub use error::{RunError, EXIT_CONFIG, EXIT_INTERNAL, EXIT_REFUSED, EXIT_UNAVAILABLE};

/// Runs `coffer run` to the end: unseals, starts the app, supervises it until it exits.
/// Returns the process exit code: the app's own (128 + N when a signal N killed it), or one
/// of the `EXIT_*` codes of [`error`] when `coffer run` itself could not start the app.
pub async fn run(config: RunConfig) -> Result<i32, RunError> {
    let _ = config;
    todo!("i11-run: discover → unseal → write --out → supervise → watch")
}

//! Coffer's built-in load generator: the code behind `coffer bench kms`, `startup`,
//! `keyd-handshake`, `keyd-unseal` and `run-start`.
//!
//! * [`run_kms`] drives a running KMS plugin over its unix socket the way kube-apiserver does
//!   (one shared HTTP/2 connection by default, a fresh `uid` per call, a per-call deadline) in a
//!   closed loop and reports throughput, latency percentiles, errors by gRPC code and the CPU
//!   cost on both sides; with `--kill-pid` it kills a process (a keyd replica) mid-run and
//!   reports the failover the callers saw ([`FailoverReport`]).
//! * [`run_keyd_handshake`] times service mode's attested connections to keyd: making the
//!   attested certificate and opening a connection (mutual attested TLS handshake).
//! * [`run_keyd_unseal`] measures keyd's Unseal throughput: values per second with one value
//!   per `Unseal` call and with `UnsealBatch`, from concurrent attested callers.
//! * [`run_run_start`] measures the time `coffer run` adds to a pod's start (attest, unseal,
//!   exec) for a few numbers of sealed values delivered as the kubelet delivers them.
//! * [`run_startup`] starts `coffer kms serve --platform sim` repeatedly and measures the time
//!   from spawn to the first successful `Status` call.
//!
//! Each returns a report that implements [`std::fmt::Display`] (a human table) and
//! [`serde::Serialize`] (for `--json`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod conn;
mod error;
mod failover;
mod handshake;
mod kms;
mod procfs;
mod runstart;
mod sealing;
mod startup;
mod stats;
mod unseal;

pub use error::BenchError;
pub use failover::{FailoverReport, Stretch};
pub use handshake::{run_keyd_handshake, HandshakeBenchArgs, HandshakeBenchReport, Step};
pub use kms::{run_kms, KmsBenchArgs, KmsBenchReport, Op};
pub use runstart::{run_run_start, Delivery, RunStartBenchArgs, RunStartReport, RunStartRow};
pub use startup::{run_startup, StartupBenchArgs, StartupReport};
pub use stats::Timing;
pub use unseal::{
    run_keyd_unseal, UnsealBenchArgs, UnsealBenchReport, UnsealMode, UnsealModeReport,
};

//! Checkpoints: a record's position and link value, kept by a witness the log's writer cannot
//! roll back (keyd anchors them in etcd), and how a log compares with one.
//!
//! The head file next to the log detects a truncated tail only while nobody rolls it back
//! too. A checkpoint held elsewhere closes that gap: the log must still hold the record at the
//! checkpoint's `seq` with the same link value. If it ends before it, its tail was deleted; if
//! the record there has another link, the log was rewritten from there or replaced by
//! another log under the same chain key.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{verify_scan, AuditError, ChainMode, HeadCheck, VerifyOptions, VerifyReport};

/// A durable record of a log: its `seq`, its link value and the segment it is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// The record's `seq` (0: the log was empty).
    pub seq: u64,
    /// The record's link value (hex), as the next record's `prev` holds it (the genesis value
    /// for an empty log).
    pub hash: String,
    /// The number of the segment the record is in (`<log>.NNNNNN` once closed; the active
    /// file's future number while it is active).
    pub segment: u64,
}

/// How a log compares with a checkpoint taken from it earlier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointStatus {
    /// The log holds the checkpointed record with the checkpointed link.
    Holds {
        /// Records written after it.
        records_after: u64,
    },
    /// The log ends before the checkpointed record: its tail was deleted.
    TailDeleted {
        /// The last record the log still has (0: none).
        last_seq: u64,
    },
    /// The record at the checkpoint's `seq` has another link value: the log was rewritten
    /// from there, or it is another log written under the same chain key.
    Rewritten,
    /// The checkpointed record is in segments that are no longer present (shipped away or
    /// removed by retention), so it cannot be compared.
    NotKept {
        /// The first record the log still has.
        first_seq: u64,
    },
}

/// Verifies the whole log like [`crate::verify`] and compares it with `checkpoint`.
pub fn verify_against(
    path: &Path,
    options: &VerifyOptions,
    checkpoint: &Checkpoint,
) -> Result<(VerifyReport, CheckpointStatus), AuditError> {
    let (report, link) = verify_scan(path, options, Some(checkpoint.seq), None)?;
    let status = compare(&options.chain, &report, link, checkpoint);
    Ok((report, status))
}

/// Compares the log at `path`, which its writer may be appending to, with `checkpoint`,
/// verifying the chain only up to the checkpointed record (later records and the head file
/// are not read). The log must already hold every record up to the checkpoint's `seq` durably,
/// e.g. because its writer's own [`Checkpoint`] is at least that far.
pub fn check_checkpoint(
    path: &Path,
    chain: &ChainMode,
    checkpoint: &Checkpoint,
) -> Result<CheckpointStatus, AuditError> {
    let options = VerifyOptions {
        chain: chain.clone(),
        head: HeadCheck::Ignore,
    };
    let (report, link) = verify_scan(path, &options, Some(checkpoint.seq), Some(checkpoint.seq))?;
    Ok(compare(chain, &report, link, checkpoint))
}

fn compare(
    chain: &ChainMode,
    report: &VerifyReport,
    link: Option<String>,
    checkpoint: &Checkpoint,
) -> CheckpointStatus {
    let link = if checkpoint.seq == 0 {
        Some(chain.genesis())
    } else {
        link
    };
    if checkpoint.seq > report.last_seq {
        CheckpointStatus::TailDeleted {
            last_seq: report.last_seq,
        }
    } else if checkpoint.seq != 0 && checkpoint.seq < report.first_seq {
        CheckpointStatus::NotKept {
            first_seq: report.first_seq,
        }
    } else if link.as_deref() == Some(checkpoint.hash.as_str()) {
        CheckpointStatus::Holds {
            records_after: report.last_seq - checkpoint.seq,
        }
    } else {
        CheckpointStatus::Rewritten
    }
}

//! The key service's append-only, tamper-evident audit log.
//!
//! `coffer keyd` records every operation — who asked (the caller's *verified* identity: TEE type,
//! measurement, role, peer address), on which keyring and key, and how it ended — as one JSON
//! object per line. Each line commits to the exact bytes of the line before it, so editing,
//! deleting, inserting or reordering lines breaks the chain, and [`verify`] names the line.
//!
//! # Line format
//!
//! Every line is a compact JSON object (serialised from [`AuditRecord`], fields in this order)
//! followed by `\n`:
//!
//! ```text
//! {"seq":1,"time":"2026-11-27T06:07:00.123Z","event":"unwrap",
//!  "caller":{"tee":"sgx","measurement":"ab…","role":"kms","peer":"10.0.0.7:4431"},
//!  "keyring":"prod","key_id":"kek-3","result":"ok","prev":"000…000"}
//! ```
//!
//! * `seq` starts at 1 and increases by exactly 1 per line.
//! * `prev` is the hex *link value* of the previous line: `SHA-256(line)` in
//!   [`ChainMode::Sha256`], `HMAC-SHA256(chain key, line)` in [`ChainMode::Hmac`], computed over
//!   the previous line's exact bytes without its trailing newline. The verifier never
//!   re-serialises a record; it hashes the bytes on disk.
//! * The first line's `prev` is the *genesis* value: 64 zeros in SHA-256 mode,
//!   `HMAC-SHA256(chain key, "coffer-audit/v1 genesis")` in HMAC mode. A keyed genesis means
//!   that even a one-line log reveals a wrong key ([`AuditError::WrongKey`]) and that a
//!   SHA-256-chained log is never mistaken for an HMAC-chained one.
//!
//! * `count` (absent on ordinary records) says how many operations an aggregated record stands
//!   for ([`Aggregator`]).
//!
//! # Segments and retention
//!
//! With [`AuditOptions::segment_bytes`] the log is a series of files: closed segments
//! `<log>.000001`, `<log>.000002`, … (never written again) and the active `<log>`. Before the
//! active file would grow past the limit the writer syncs it, hard-links it to the next closed
//! name, and atomically replaces `<log>` with a new file whose first record
//! ([`SEGMENT_EVENT`]) names the closed segment and chains from its last record: `seq` and
//! `prev` run on across segments, so the whole series is one chain. With
//! [`AuditOptions::retention_segments`] the oldest closed segments beyond the limit are removed
//! after a [`PRUNE_EVENT`] record naming them; [`verify`] then starts at the first kept
//! segment's header, takes its `prev` as given and reports the removed segments and records. A
//! crash between the link and the replace leaves one file under both names; [`AuditLog::open`]
//! completes that rotation. A log written before segments existed is simply a first segment.
//!
//! # What the two chain modes protect against
//!
//! * **SHA-256** detects accidental corruption and edits, deletions, insertions and reordering
//!   in the middle of the log by anyone who does not also rewrite every following line. Someone
//!   who can write the file *can* recompute a consistent chain after editing it.
//! * **HMAC-SHA256** (the caller derives the 32-byte [`ChainKey`] from the TEE sealing key, so
//!   only the key service's TEE holds it) additionally makes a consistent forgery impossible
//!   without the key.
//!
//! # Truncation at the end and the head file
//!
//! Dropping the last lines leaves a perfectly valid shorter chain, so the chain alone cannot
//! detect it. The writer therefore keeps `<log>.head` — `{"seq":N,"hash":"<link of line N>"}` —
//! replaced atomically (temp file, fsync, rename, fsync directory) *after* each durable sync of
//! the log. Consequently the head never runs ahead of durable log content: after a crash the log
//! may contain lines the head does not mention yet (reported as
//! [`VerifyReport::unanchored_lines`]), but a head that names a `seq` beyond the last line means
//! lines were lost ([`AuditError::Truncated`]), and a head whose hash differs from that line's
//! link means the line was edited ([`AuditError::Edited`]).
//!
//! The head file sits next to the log, so an attacker who can write both can truncate the log
//! and roll the head back to an older (genuine) value. Protecting against that needs the head
//! (`VerifyReport::last_seq`/`last_hash`) exported somewhere the attacker cannot write — for
//! example sealed TEE state or a remote witness. This crate provides the values
//! ([`AuditLog::checkpoint`]) and the comparison ([`verify_against`]), not the witness (keyd
//! keeps its replicas' checkpoints in etcd).
//! Likewise, two logs written under the same HMAC key cannot be told apart by the chain alone;
//! use one chain key per log (derive it with the log's name as context).
//!
//! # Writing
//!
//! [`AuditLog::open`] takes an exclusive `flock` on the log (one writer at a time), recovers
//! `seq` and the link value from the last two lines and the head file, and *refuses* to append
//! to a log whose tail does not verify — it never truncates or rewrites existing content. A
//! crash in the middle of a write leaves a last line without a newline; `open` reports it as
//! [`AuditError::PartialTail`] and the operator runs [`repair_truncated_tail`], which moves the
//! partial bytes into `<log>.partial-<time>` (nothing is deleted).
//!
//! [`AuditLog::append`] writes one complete line through an `O_APPEND` descriptor in a single
//! `write` (continuing only after a short write), then — per [`SyncPolicy`] — `fdatasync`s and
//! updates the head. With [`SyncPolicy::Batched`] there is no background thread: the sync
//! happens on the first append after the interval has elapsed, on [`AuditLog::sync`], and on
//! drop. [`AuditLog`] needs `&mut self`; [`SharedAuditLog`] is the cloneable, thread-safe
//! wrapper (a mutex serialises appends, so concurrent callers still produce one valid chain).
//!
//! # No secrets, by construction
//!
//! Records have no byte-array or free-form payload fields: only the listed identity and
//! outcome fields, every one a bounded string (see [`limits`]). The measurement is public
//! attestation data, hex-encoded. `event` is restricted to `[a-z0-9_.-]`. The one free-text
//! field, `reason`, is bounded and truncated with a marker; **callers must never put key
//! material, plaintext, tokens or sealed blobs into `reason` (or any other field)** — use fixed
//! messages such as `"policy: measurement not allowed"`. A whole line never exceeds
//! [`limits::MAX_LINE`] bytes; over-long values are truncated, never a panic.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod aggregate;
mod checkpoint;
mod segment;

pub use aggregate::Aggregator;
pub use checkpoint::{check_checkpoint, verify_against, Checkpoint, CheckpointStatus};
pub use segment::{closed_segments, segment_path};

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Size limits. Every limit is in bytes of UTF-8; longer values are cut at a character boundary
/// and end with [`TRUNCATION_MARKER`](limits::TRUNCATION_MARKER).
pub mod limits {
    /// Maximum length of one log line, without its newline.
    pub const MAX_LINE: usize = 16 * 1024;
    /// Maximum length of `event`.
    pub const EVENT: usize = 64;
    /// Maximum length of `caller.tee`.
    pub const TEE: usize = 64;
    /// Maximum length of `caller.measurement` (hex; 256 bytes of measurement).
    pub const MEASUREMENT: usize = 512;
    /// Maximum length of `caller.role`, `caller.peer`, `keyring` and `key_id`.
    pub const NAME: usize = 256;
    /// Maximum length of `location` (`namespace/secret/key`: 63 + 253 + 253 and separators).
    pub const LOCATION: usize = 600;
    /// Maximum length of `binding` (a scope word and a location).
    pub const BINDING: usize = 620;
    /// Maximum length of `reason` (it is shortened further if the line would still be too long,
    /// e.g. because JSON escaping expanded it).
    pub const REASON: usize = 4096;
    /// Appended to a value that was cut short.
    pub const TRUNCATION_MARKER: &str = "…[truncated]";
}

/// Genesis `prev` value of a SHA-256 chain.
pub const SHA256_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HMAC_GENESIS_INPUT: &[u8] = b"coffer-audit/v1 genesis";

/// Everything that can go wrong writing or verifying an audit log. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A file system operation failed.
    #[error(
        "audit log: cannot {op} {path}: {source} (check the path, permissions and free space)"
    )]
    Io {
        /// What was being done, e.g. "open", "read", "fdatasync".
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The line does not hash to what the following line (or the head file) committed to.
    #[error("audit log line {line} was edited (its hash no longer matches the chain; or the `prev` field of the next line was edited): treat the log as tampered, keep a copy, investigate")]
    Edited {
        /// 1-based line number of the edited line.
        line: u64,
    },
    /// The expected `seq` appears later in the log: records were moved.
    #[error("audit log line {line} holds record seq {found_seq}, expected {expected_seq}: records were reordered (seq {expected_seq} comes later in the log); treat the log as tampered")]
    Reordered {
        /// 1-based line number.
        line: u64,
        /// The seq the chain requires here.
        expected_seq: u64,
        /// The seq found in the line.
        found_seq: u64,
    },
    /// A line holds a `seq` that already appeared: a record was copied (replayed).
    #[error("audit log line {line} holds record seq {found_seq} again, expected {expected_seq}: a record was duplicated; treat the log as tampered")]
    Duplicated {
        /// 1-based line number.
        line: u64,
        /// The seq the chain requires here.
        expected_seq: u64,
        /// The seq found in the line.
        found_seq: u64,
    },
    /// A line's `seq` is higher than expected and the skipped ones appear nowhere: lines are
    /// missing.
    #[error("audit log line {line} holds record seq {found_seq}, expected {expected_seq}: {} line(s) were deleted before it; treat the log as tampered", found_seq.saturating_sub(*expected_seq))]
    Gap {
        /// 1-based line number.
        line: u64,
        /// The seq the chain requires here.
        expected_seq: u64,
        /// The seq found in the line.
        found_seq: u64,
    },
    /// The head file says the log had more lines than it has now.
    #[error("audit log truncated: the head file records {expected_lines} line(s) but the log has {found_lines}: lines were removed from the end; treat the log as tampered")]
    Truncated {
        /// Lines the head file vouches for.
        expected_lines: u64,
        /// Lines actually present.
        found_lines: u64,
    },
    /// A line is not a valid audit record.
    #[error("audit log line {line} is malformed: {reason}; the log was corrupted or tampered with at this line (line 0: number unknown, run verify): keep a copy and investigate")]
    Malformed {
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The HMAC chain does not start with this key's genesis value.
    #[error("audit log: wrong chain key (line 1 does not start an HMAC chain under this key; or the log is SHA-256-chained, or line 1 was edited): verify with the key the log was written with")]
    WrongKey,
    /// SHA-256 verification of a log whose first line does not start a SHA-256 chain.
    #[error("audit log line 1 does not start a SHA-256 chain: the log is probably HMAC-chained; verify it with its chain key")]
    NotSha256Chain,
    /// The last line has no newline: a write was interrupted (crash or full disk).
    #[error("audit log {path}: line {line} is incomplete ({bytes} byte(s) without a newline, probably a crash mid-write); run `repair_truncated_tail` (`coffer keyd audit repair`) to move it aside, then reopen")]
    PartialTail {
        /// The log file.
        path: PathBuf,
        /// 1-based line number of the partial line.
        line: u64,
        /// Its length in bytes.
        bytes: u64,
    },
    /// The head file cannot be parsed.
    #[error("audit head file {path} is unreadable: {reason}; verify the log without it and, if the log is intact, restore the head from a backup")]
    BadHead {
        /// The head file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another writer holds the log.
    #[error("audit log {path} is locked by another writer: only one process may append; stop the other keyd instance")]
    Locked {
        /// The log file.
        path: PathBuf,
    },
    /// An earlier write failed part-way; the writer refuses to continue.
    #[error("audit log writer stopped after a failed write: reopen the log (which checks the tail) before appending again")]
    Poisoned,
    /// A closed segment between two others is gone (retention only removes the oldest).
    #[error("audit log segment {missing} is missing although later segments exist: a segment was deleted; treat the log as tampered")]
    SegmentMissing {
        /// Where the segment should be.
        missing: PathBuf,
    },
    /// An error in one file of a segmented log.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The segment file.
        path: PathBuf,
        /// What is wrong in it.
        source: Box<AuditError>,
    },
    /// The segment size is below [`MIN_SEGMENT_BYTES`].
    #[error(
        "audit segment size {bytes} bytes is too small: use at least {MIN_SEGMENT_BYTES} bytes"
    )]
    SegmentTooSmall {
        /// The size asked for.
        bytes: u64,
    },
    /// The record cannot be made to fit in one line.
    #[error("audit record does not fit in {max} bytes even after truncating `reason` ({len} bytes); shorten the identity fields")]
    LineTooLong {
        /// Length of the smallest serialisation.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl AuditError {
    fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        AuditError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A 32-byte HMAC-SHA256 chain key, zeroized on drop and never printed.
#[derive(Clone)]
pub struct ChainKey(Zeroizing<[u8; 32]>);

impl ChainKey {
    /// Wraps key bytes (derive them from the TEE sealing key, with the log's name as context).
    pub fn new(bytes: [u8; 32]) -> Self {
        ChainKey(Zeroizing::new(bytes))
    }
}

impl fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChainKey(<redacted>)")
    }
}

/// How lines are chained.
#[derive(Clone, Debug, Default)]
pub enum ChainMode {
    /// `prev` = SHA-256 of the previous line: detects edits, not forgery by a file writer.
    #[default]
    Sha256,
    /// `prev` = HMAC-SHA256 of the previous line: forging a consistent chain needs the key.
    Hmac(ChainKey),
}

impl ChainMode {
    fn link(&self, line: &[u8]) -> String {
        match self {
            ChainMode::Sha256 => hex::encode(Sha256::digest(line)),
            ChainMode::Hmac(key) => {
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key.0[..])
                    .expect("HMAC accepts any key length");
                mac.update(line);
                hex::encode(mac.finalize().into_bytes())
            }
        }
    }

    fn genesis(&self) -> String {
        match self {
            ChainMode::Sha256 => SHA256_GENESIS.to_string(),
            ChainMode::Hmac(_) => self.link(HMAC_GENESIS_INPUT),
        }
    }
}

/// When the writer makes appended lines durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// `fdatasync` and update the head after every record (the default).
    #[default]
    EveryRecord,
    /// Sync at most once per interval: on the first append after it elapsed, on
    /// [`AuditLog::sync`] and on drop. Records appended since the last sync can be lost in a
    /// crash (the chain stays valid; the head never claims them).
    Batched {
        /// Minimum time between syncs.
        interval: Duration,
    },
}

/// Options for [`AuditLog::open`].
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Chain mode; must match the existing log.
    pub chain: ChainMode,
    /// Durability policy.
    pub sync: SyncPolicy,
    /// Permission bits for a newly created log and head file.
    pub mode: u32,
    /// Start a new segment before the active file would grow beyond this many bytes (at least
    /// [`MIN_SEGMENT_BYTES`]; one record or batch is never split). `None`: one unbounded file.
    pub segment_bytes: Option<u64>,
    /// Keep at most this many closed segments, removing the oldest (at least 1). `None`: keep
    /// every segment.
    pub retention_segments: Option<u64>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            chain: ChainMode::Sha256,
            sync: SyncPolicy::EveryRecord,
            mode: 0o600,
            segment_bytes: None,
            retention_segments: None,
        }
    }
}

/// The smallest segment size [`AuditLog::open`] accepts: room for several maximal lines.
pub const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

/// Event of the first record of every segment after the first: it names the closed segment it
/// continues, and its `prev` is the link of that segment's last record.
pub const SEGMENT_EVENT: &str = "audit.segment";

/// Event of the record written when retention removes old segments.
pub const PRUNE_EVENT: &str = "audit.prune";

/// In a [`PRUNE_EVENT`] record's reason, precedes the first `seq` that is kept.
const PRUNED_BEFORE: &str = "records before seq ";

/// How [`verify`] uses the head file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum HeadCheck {
    /// Check the head file if it exists (the default).
    #[default]
    IfPresent,
    /// A missing head file is an error (truncation at the end could go unnoticed without it).
    Require,
    /// Do not read the head file (e.g. verifying a copy of the log alone).
    Ignore,
}

/// Options for [`verify`].
#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// Chain mode the log was written with.
    pub chain: ChainMode,
    /// Head file policy.
    pub head: HeadCheck,
}

/// The outcome of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It succeeded.
    Ok,
    /// Policy refused the caller.
    Denied,
    /// It failed.
    Error,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        })
    }
}

/// The caller's verified identity (from attestation and the transport), never a credential.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caller {
    /// TEE type, e.g. `sgx`, `tdx`, `snp`, `sim`, or `none` for unattested local callers.
    pub tee: String,
    /// The verified measurement, hex-encoded (public attestation data).
    pub measurement: String,
    /// The role granted by policy, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The peer address (socket address or unix peer description).
    pub peer: String,
}

impl Caller {
    /// Builds a caller from a raw measurement (hex-encoded here).
    pub fn new(tee: &str, measurement: &[u8], role: Option<&str>, peer: &str) -> Self {
        Caller {
            tee: tee.to_string(),
            measurement: hex::encode(measurement),
            role: role.map(str::to_string),
            peer: peer.to_string(),
        }
    }
}

/// What the caller asks to log: an [`AuditRecord`] without `seq`, `time` and `prev`, which the
/// writer fills in. Over-long fields are truncated on append; see [`limits`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Operation: `wrap`, `unwrap`, `rotate`, `refused`, … (`[a-z0-9_.-]`, other bytes become `_`).
    pub event: String,
    /// Who asked.
    pub caller: Caller,
    /// Keyring concerned, if any.
    pub keyring: Option<String>,
    /// Key id concerned, if any.
    pub key_id: Option<String>,
    /// Where the operation applied, if it has a place: for `unseal`, the Secret location
    /// `namespace/secret/key` the caller found the value at.
    pub location: Option<String>,
    /// The binding of the value the operation concerned, if any: for `unseal`, the scope and
    /// the names the sealed value is bound to (`strict payments/db/password`, `namespace
    /// payments`, `cluster`), as the sealer fixed it.
    pub binding: Option<String>,
    /// How it ended.
    pub result: Outcome,
    /// Why (for `denied` / `error`). Bounded; must never contain key material or plaintext.
    pub reason: Option<String>,
}

/// One line of the log, exactly as serialised (field order is the on-disk order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Sequence number, 1 for the first line, +1 per line.
    pub seq: u64,
    /// RFC 3339 UTC time of the append, millisecond precision.
    pub time: String,
    /// Operation name.
    pub event: String,
    /// Who asked.
    pub caller: Caller,
    /// Keyring concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyring: Option<String>,
    /// Key id concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Where it applied, if it has a place (absent in records of operations without one, and
    /// in every record written before the field existed, which still verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The binding of the value concerned, if any (absent in records written before the field
    /// existed, which still verify).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
    /// How it ended.
    pub result: Outcome,
    /// Why, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// In an aggregated record, how many operations it stands for (absent: exactly one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Link value (hex) of the previous line, or the genesis value on line 1.
    pub prev: String,
}

impl fmt::Display for AuditRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seq={} time={} event={} caller.tee={} caller.measurement={} caller.role={} caller.peer={} keyring={} key_id={} location={} binding={} result={} reason={:?} count={} prev={}",
            self.seq,
            self.time,
            self.event,
            self.caller.tee,
            self.caller.measurement,
            self.caller.role.as_deref().unwrap_or("-"),
            self.caller.peer,
            self.keyring.as_deref().unwrap_or("-"),
            self.key_id.as_deref().unwrap_or("-"),
            self.location.as_deref().unwrap_or("-"),
            self.binding.as_deref().unwrap_or("-"),
            self.result,
            self.reason.as_deref().unwrap_or(""),
            self.count.unwrap_or(1),
            self.prev,
        )
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary, ending with the marker.
fn bound(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(limits::TRUNCATION_MARKER.len());
    let mut end = keep.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{}", &s[..end], limits::TRUNCATION_MARKER)
}

fn sanitize_event(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '_' | '.' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '_',
        })
        .collect();
    let cleaned = bound(&cleaned, limits::EVENT);
    if cleaned.is_empty() {
        "unknown".to_string()
    } else {
        cleaned
    }
}

impl AuditEntry {
    fn to_record(&self, seq: u64, time: String, prev: String, count: Option<u64>) -> AuditRecord {
        AuditRecord {
            seq,
            time,
            event: sanitize_event(&self.event),
            caller: Caller {
                tee: bound(&self.caller.tee, limits::TEE),
                measurement: bound(&self.caller.measurement, limits::MEASUREMENT),
                role: self.caller.role.as_ref().map(|r| bound(r, limits::NAME)),
                peer: bound(&self.caller.peer, limits::NAME),
            },
            keyring: self.keyring.as_ref().map(|k| bound(k, limits::NAME)),
            key_id: self.key_id.as_ref().map(|k| bound(k, limits::NAME)),
            location: self.location.as_ref().map(|l| bound(l, limits::LOCATION)),
            binding: self.binding.as_ref().map(|b| bound(b, limits::BINDING)),
            result: self.result,
            reason: self.reason.as_ref().map(|r| bound(r, limits::REASON)),
            count,
            prev,
        }
    }

    /// A record keyd's log writes about itself (segment headers, retention).
    fn local(event: &str, reason: String) -> AuditEntry {
        AuditEntry {
            event: event.to_string(),
            caller: Caller {
                tee: "none".to_string(),
                measurement: String::new(),
                role: None,
                peer: "local".to_string(),
            },
            keyring: None,
            key_id: None,
            location: None,
            binding: None,
            result: Outcome::Ok,
            reason: Some(reason),
        }
    }
}

/// Serialises a record into at most [`limits::MAX_LINE`] bytes, shrinking `reason` if needed.
fn encode_line(record: &mut AuditRecord) -> Result<Vec<u8>, AuditError> {
    loop {
        let line = serde_json::to_vec(record).map_err(|e| AuditError::Malformed {
            line: record.seq,
            reason: format!("cannot serialise record: {e}"),
        })?;
        if line.len() <= limits::MAX_LINE {
            return Ok(line);
        }
        match record.reason.as_deref() {
            Some(r) if r.len() > limits::TRUNCATION_MARKER.len() => {
                record.reason = Some(bound(r, r.len() / 2));
            }
            Some(_) => record.reason = None,
            None => {
                return Err(AuditError::LineTooLong {
                    len: line.len(),
                    max: limits::MAX_LINE,
                })
            }
        }
    }
}

/// The contents of `<log>.head`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    seq: u64,
    hash: String,
}

/// Path of the head file belonging to `log`: `<log>.head`.
pub fn head_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(".head");
    PathBuf::from(name)
}

fn read_head(log: &Path) -> Result<Option<Head>, AuditError> {
    let path = head_path(log);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuditError::io("read", &path, e)),
    };
    let head: Head = serde_json::from_slice(&bytes).map_err(|e| AuditError::BadHead {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    if !is_hex64(&head.hash) {
        return Err(AuditError::BadHead {
            path,
            reason: "hash is not 64 hex digits".into(),
        });
    }
    Ok(Some(head))
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Parses one line (without newline) into a record, checking the `prev` format.
fn parse_line(line_no: u64, line: &[u8]) -> Result<AuditRecord, AuditError> {
    let record: AuditRecord = serde_json::from_slice(line).map_err(|e| {
        let hint = if e.to_string().contains("unknown field") {
            " (if a newer coffer release wrote this log, verify it with that release)"
        } else {
            ""
        };
        AuditError::Malformed {
            line: line_no,
            reason: format!("not an audit record: {e}{hint}"),
        }
    })?;
    if !is_hex64(&record.prev) {
        return Err(AuditError::Malformed {
            line: line_no,
            reason: "`prev` is not 64 lowercase hex digits".into(),
        });
    }
    Ok(record)
}

/// Summary of a successfully verified log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Number of lines (records) verified, over every kept segment.
    pub lines: u64,
    /// `seq` of the first kept record (0 for an empty log).
    pub first_seq: u64,
    /// `seq` of the last record (0 for an empty log).
    pub last_seq: u64,
    /// Link value of the last line (the genesis value for an empty log): export it together with
    /// `last_seq` to a witness to detect later truncation.
    pub last_hash: String,
    /// The `seq` the head file vouched for, if it was checked.
    pub head_seq: Option<u64>,
    /// Lines after the head's `seq` (written, but the head was not updated yet — normal after a
    /// crash or with batched sync; they are chained but not anchored by the head).
    pub unanchored_lines: u64,
    /// Files verified: closed segments plus the active file.
    pub segments: u64,
    /// Oldest segments removed by retention (verification started from the first kept
    /// segment's recorded predecessor hash).
    pub pruned_segments: u64,
    /// Records in the removed segments (`first_seq - 1`).
    pub pruned_records: u64,
    /// Whether an [`PRUNE_EVENT`] record in the kept log accounts for exactly the removed
    /// records. `false` with `pruned_records > 0`: the oldest segments were removed by something
    /// other than retention (moved away by an operator, or deleted by an attacker).
    pub pruning_recorded: bool,
}

/// Reads at most `MAX_LINE + 1` bytes up to and including the next newline into `buf`;
/// returns the number of bytes read (0 at EOF).
fn read_bounded_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    reader
        .by_ref()
        .take(limits::MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)
}

/// Verifies the whole log at `path` — its closed segments `<path>.NNNNNN`, oldest first, then
/// `path` itself — and, per `options.head`, its head file.
///
/// Checks for every line, in order: complete (ends in a newline), at most
/// [`limits::MAX_LINE`] bytes, a valid record, `seq` one more than the previous record's (else
/// [`AuditError::Reordered`] when the expected record comes later, [`AuditError::Duplicated`]
/// for a repeated one, [`AuditError::Edited`] when only this line's `seq` changed,
/// [`AuditError::Gap`] when records are gone), `prev` = link of the previous line (else
/// [`AuditError::Edited`] naming the previous line; on the first record
/// [`AuditError::WrongKey`] or [`AuditError::NotSha256Chain`]). The first kept record either
/// starts the chain (seq 1, genesis `prev`) or is the header of a later segment, whose `prev`
/// is taken as given (older segments were removed by retention; they are counted in the
/// report). Closed segments must be numbered without holes ([`AuditError::SegmentMissing`]).
/// Then the head: a `seq` beyond the last record is [`AuditError::Truncated`], a different
/// hash is [`AuditError::Edited`]. With closed segments, errors name the file
/// ([`AuditError::InFile`]) and line numbers count within it.
/// A missing log file verifies as empty (unless the head says otherwise).
pub fn verify(path: &Path, options: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    verify_scan(path, options, None, None).map(|(report, _)| report)
}

/// [`verify`], also returning the link value of the record at `link_of` if the log holds it;
/// with `stop`, the scan ends after the record at that `seq` (the records after it and the
/// head file are not read, so a log being appended to can be checked up to a durable point).
pub(crate) fn verify_scan(
    path: &Path,
    options: &VerifyOptions,
    link_of: Option<u64>,
    stop: Option<u64>,
) -> Result<(VerifyReport, Option<String>), AuditError> {
    let head = match options.head {
        _ if stop.is_some() => None,
        HeadCheck::Ignore => None,
        HeadCheck::IfPresent => read_head(path)?,
        HeadCheck::Require => Some(read_head(path)?.ok_or_else(|| {
            AuditError::io(
                "read",
                &head_path(path),
                io::Error::new(io::ErrorKind::NotFound, "head file required but missing"),
            )
        })?),
    };
    let closed = segment::closed_segments(path)?;
    for pair in closed.windows(2) {
        if pair[1].0 != pair[0].0 + 1 {
            return Err(AuditError::SegmentMissing {
                missing: segment::segment_path(path, pair[0].0 + 1),
            });
        }
    }
    let pruned_segments = closed.first().map_or(0, |(n, _)| n - 1);
    let mut files: Vec<PathBuf> = closed.into_iter().map(|(_, p)| p).collect();
    // After an interrupted rotation the active file is also the last closed segment.
    if !files
        .last()
        .is_some_and(|last| segment::same_file(path, last))
    {
        files.push(path.to_path_buf());
    }
    if stop == Some(0) {
        // Nothing to check before the genesis value.
        files.clear();
    }
    let segmented = files.len() > 1;
    let in_file = |file: &Path, e: AuditError| {
        if segmented {
            AuditError::InFile {
                path: file.to_path_buf(),
                source: Box::new(e),
            }
        } else {
            e
        }
    };
    let genesis = options.chain.genesis();
    let mut prev_link = genesis.clone();
    // Where the previous record is: (file index, line in that file).
    let mut prev_at: Option<(usize, u64)> = None;
    let mut last_seq = 0u64;
    let mut lines = 0u64;
    let mut first_seq = 0u64;
    let mut head_link: Option<String> = None;
    let mut pruned_before: Option<u64> = None;
    let mut found_link: Option<String> = None;
    'files: for (index, file_path) in files.iter().enumerate() {
        let file = match File::open(file_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(AuditError::io("open", file_path, e)),
        };
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        loop {
            let n = read_bounded_line(&mut reader, &mut buf)
                .map_err(|e| AuditError::io("read", file_path, e))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            if buf.last() != Some(&b'\n') {
                if buf.len() > limits::MAX_LINE {
                    return Err(in_file(
                        file_path,
                        AuditError::Malformed {
                            line: line_no,
                            reason: format!("line longer than {} bytes", limits::MAX_LINE),
                        },
                    ));
                }
                return Err(in_file(
                    file_path,
                    AuditError::PartialTail {
                        path: file_path.clone(),
                        line: line_no,
                        bytes: buf.len() as u64,
                    },
                ));
            }
            let line = &buf[..buf.len() - 1];
            let record = parse_line(line_no, line).map_err(|e| in_file(file_path, e))?;
            let first = prev_at.is_none();
            let pruned_start = first && record.seq > 1 && record.event == SEGMENT_EVENT;
            let expected = last_seq + 1;
            if record.seq != expected && !pruned_start {
                let chained = record.prev == prev_link;
                let e = classify_seq(&files[index..], line_no, expected, record.seq, chained);
                return Err(in_file(file_path, e));
            }
            if record.prev != prev_link && !pruned_start {
                return Err(match prev_at {
                    None => match options.chain {
                        ChainMode::Sha256 => AuditError::NotSha256Chain,
                        ChainMode::Hmac(_) => AuditError::WrongKey,
                    },
                    Some((at, line)) => in_file(&files[at], AuditError::Edited { line }),
                });
            }
            if first {
                first_seq = record.seq;
            }
            if record.event == PRUNE_EVENT {
                pruned_before = record
                    .reason
                    .as_deref()
                    .and_then(|r| r.rsplit_once(PRUNED_BEFORE))
                    .and_then(|(_, n)| n.parse().ok())
                    .or(pruned_before);
            }
            prev_link = options.chain.link(line);
            prev_at = Some((index, line_no));
            last_seq = record.seq;
            lines += 1;
            if head.as_ref().is_some_and(|h| h.seq == record.seq) {
                head_link = Some(prev_link.clone());
            }
            if link_of == Some(record.seq) {
                found_link = Some(prev_link.clone());
            }
            if stop == Some(record.seq) {
                break 'files;
            }
        }
    }
    let mut unanchored_lines = 0;
    if let Some(h) = &head {
        if h.seq > last_seq {
            return Err(AuditError::Truncated {
                expected_lines: h.seq,
                found_lines: last_seq,
            });
        }
        let expected = if h.seq == 0 { Some(genesis) } else { head_link };
        if expected.as_deref() != Some(h.hash.as_str()) {
            return Err(AuditError::Edited { line: h.seq });
        }
        unanchored_lines = last_seq - h.seq;
    }
    let report = VerifyReport {
        lines,
        first_seq,
        last_seq,
        last_hash: prev_link,
        head_seq: head.map(|h| h.seq),
        unanchored_lines,
        segments: files.len() as u64,
        pruned_segments,
        pruned_records: first_seq.saturating_sub(1),
        pruning_recorded: first_seq <= 1 || pruned_before == Some(first_seq),
    };
    Ok((report, found_link))
}

/// Names what happened when line `line` of `files[0]` holds `found` instead of `expected`
/// (`chained`: its `prev` is the previous line's link). A lower seq is a duplicate. A line that
/// still chains to the previous one had its `seq` edited (a deletion would break the link).
/// Otherwise the records after it decide: the expected one later means a reordering, the next
/// line continuing as if this one were right an edit of this line's `seq`; else records were
/// deleted.
fn classify_seq(
    files: &[PathBuf],
    line: u64,
    expected: u64,
    found: u64,
    chained: bool,
) -> AuditError {
    if found < expected {
        return AuditError::Duplicated {
            line,
            expected_seq: expected,
            found_seq: found,
        };
    }
    if chained {
        return AuditError::Edited { line };
    }
    let mut next_seq = None;
    let mut expected_later = false;
    'files: for (index, path) in files.iter().enumerate() {
        let Ok(file) = File::open(path) else { continue };
        let mut reader = BufReader::new(file);
        let mut buf = Vec::new();
        let mut line_no = 0u64;
        while let Ok(n) = read_bounded_line(&mut reader, &mut buf) {
            if n == 0 {
                break;
            }
            line_no += 1;
            if index == 0 && line_no <= line {
                continue;
            }
            let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
            let Ok(record) = parse_line(line_no, body) else {
                continue;
            };
            next_seq.get_or_insert(record.seq);
            if record.seq == expected {
                expected_later = true;
                break 'files;
            }
        }
    }
    if expected_later {
        AuditError::Reordered {
            line,
            expected_seq: expected,
            found_seq: found,
        }
    } else if next_seq == Some(expected + 1) {
        AuditError::Edited { line }
    } else {
        seq_error(line, expected, found)
    }
}

fn seq_error(line: u64, expected_seq: u64, found_seq: u64) -> AuditError {
    if found_seq > expected_seq {
        AuditError::Gap {
            line,
            expected_seq,
            found_seq,
        }
    } else {
        AuditError::Reordered {
            line,
            expected_seq,
            found_seq,
        }
    }
}

/// Chain state recovered from the end of an existing log.
struct Tail {
    last_seq: u64,
    last_link: String,
    /// Link value of the line before the last one, when it was read.
    prev_link: Option<String>,
}

/// Reads and checks the last two lines of `file` (length `len`).
/// `continued`: closed segments exist, so a lone first line may continue their chain.
fn recover_tail(
    file: &mut File,
    path: &Path,
    len: u64,
    chain: &ChainMode,
    continued: bool,
) -> Result<Tail, AuditError> {
    if len == 0 {
        return Ok(Tail {
            last_seq: 0,
            last_link: chain.genesis(),
            prev_link: None,
        });
    }
    let window = 2 * (limits::MAX_LINE as u64 + 1) + 1;
    let start = len.saturating_sub(window);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| AuditError::io("seek", path, e))?;
    let mut buf = Vec::new();
    file.take(window)
        .read_to_end(&mut buf)
        .map_err(|e| AuditError::io("read", path, e))?;
    // Drop a leading fragment unless the window starts at the file start or on a line start.
    let mut body: &[u8] = &buf;
    if start > 0 {
        match body.iter().position(|&b| b == b'\n') {
            Some(i) => body = &body[i + 1..],
            None => body = &[],
        }
    }
    if buf.last() != Some(&b'\n') {
        let partial_start = buf.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let bytes = (buf.len() - partial_start) as u64;
        // The line number is only known from the seq of the line before it.
        let before = &buf[..partial_start];
        let line = last_complete_seq(before).map_or(1, |s| s + 1);
        return Err(AuditError::PartialTail {
            path: path.to_path_buf(),
            line: if partial_start == 0 && start == 0 {
                1
            } else {
                line
            },
            bytes,
        });
    }
    // `body` is empty or ends with a newline; the last two entries are the last two lines.
    let lines: Vec<&[u8]> = match body.strip_suffix(b"\n") {
        Some(complete) => complete.split(|&b| b == b'\n').collect(),
        None => Vec::new(),
    };
    let too_long = || AuditError::Malformed {
        line: 0,
        reason: format!(
            "the last line is longer than {} bytes (line number unknown; run verify)",
            limits::MAX_LINE
        ),
    };
    let Some(&last) = lines.last() else {
        return Err(too_long());
    };
    if last.len() > limits::MAX_LINE {
        return Err(too_long());
    }
    let prev_line = (lines.len() >= 2).then(|| lines[lines.len() - 2]);
    let prev_rec = match prev_line {
        Some(p) => Some(parse_line(0, p).map_err(|e| renumber(e, None))?),
        None => None,
    };
    let last_rec = parse_line(0, last).map_err(|e| renumber(e, prev_rec.as_ref()))?;
    match (prev_line, &prev_rec) {
        (Some(prev_line), Some(prev_rec)) => {
            if last_rec.seq != prev_rec.seq.saturating_add(1) {
                return Err(seq_error(
                    prev_rec.seq.saturating_add(1),
                    prev_rec.seq.saturating_add(1),
                    last_rec.seq,
                ));
            }
            if prev_rec.seq == 1 && prev_rec.prev != chain.genesis() {
                return Err(genesis_error(chain));
            }
            if last_rec.prev != chain.link(prev_line) {
                return Err(tail_mismatch(chain, prev_rec.seq));
            }
        }
        _ => {
            // A lone record that starts a later segment chains into the closed one; `verify`
            // checks that link.
            let continues = continued && last_rec.seq != 1 && last_rec.event == SEGMENT_EVENT;
            if start == 0 && !continues {
                if last_rec.seq != 1 {
                    return Err(seq_error(1, 1, last_rec.seq));
                }
                if last_rec.prev != chain.genesis() {
                    return Err(genesis_error(chain));
                }
            }
        }
    }
    Ok(Tail {
        last_seq: last_rec.seq,
        last_link: chain.link(last),
        prev_link: prev_line.map(|p| chain.link(p)),
    })
}

/// Gives a malformed tail line its line number (inferred from the line before it).
fn renumber(e: AuditError, before: Option<&AuditRecord>) -> AuditError {
    match e {
        AuditError::Malformed { reason, .. } => AuditError::Malformed {
            line: before.map_or(0, |r| r.seq.saturating_add(1)),
            reason: format!("{reason} (at the end of the log)"),
        },
        other => other,
    }
}

fn tail_mismatch(chain: &ChainMode, line: u64) -> AuditError {
    match chain {
        // With one link we cannot tell an edit from a wrong key; a wrong key is the likelier
        // operator mistake, and `verify` pinpoints edits.
        ChainMode::Hmac(_) => AuditError::WrongKey,
        ChainMode::Sha256 => AuditError::Edited { line },
    }
}

fn genesis_error(chain: &ChainMode) -> AuditError {
    match chain {
        ChainMode::Sha256 => AuditError::NotSha256Chain,
        ChainMode::Hmac(_) => AuditError::WrongKey,
    }
}

fn last_complete_seq(before: &[u8]) -> Option<u64> {
    let body = before.strip_suffix(b"\n")?;
    let line = body.rsplit(|&b| b == b'\n').next()?;
    parse_line(0, line).ok().map(|r| r.seq)
}

/// The single writer of an audit log. Appends need `&mut self`; share it between threads with
/// [`SharedAuditLog`].
pub struct AuditLog {
    path: PathBuf,
    file: File,
    chain: ChainMode,
    sync: SyncPolicy,
    mode: u32,
    seq: u64,
    link: String,
    /// Highest seq that is durable and recorded in the head.
    synced_seq: u64,
    last_sync: Instant,
    poisoned: bool,
    /// Bytes in the active file.
    len: u64,
    /// `seq` of the active file's first record (0 while it is empty).
    active_first_seq: u64,
    /// Number the active file gets when it is closed.
    next_segment: u64,
    segment_bytes: Option<u64>,
    retention_segments: Option<u64>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("seq", &self.seq)
            .field("synced_seq", &self.synced_seq)
            .field("sync", &self.sync)
            .field("segment_bytes", &self.segment_bytes)
            .field("retention_segments", &self.retention_segments)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens (creating if missing) the log at `path` for appending.
    ///
    /// Takes an exclusive lock, checks the last two lines (complete, well-formed, consecutive
    /// `seq`, chained under `options.chain`) and the head file (not ahead of the log, hash
    /// matching when it names one of the last two lines). Lines after the head's `seq` (a crash
    /// between log write and head update) are anchored by updating the head. A rotation that a
    /// crash interrupted is completed. Any failure is returned and nothing is written:
    /// a partial last line gives [`AuditError::PartialTail`] (run [`repair_truncated_tail`]);
    /// a head ahead of the log gives [`AuditError::Truncated`]. Run [`verify`] for a full check.
    pub fn open(path: &Path, options: AuditOptions) -> Result<AuditLog, AuditError> {
        if let Some(bytes) = options.segment_bytes.filter(|b| *b < MIN_SEGMENT_BYTES) {
            return Err(AuditError::SegmentTooSmall { bytes });
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(options.mode)
            .open(path)
            .map_err(|e| AuditError::io("open", path, e))?;
        lock_exclusive(&file, path)?;
        let len = file
            .metadata()
            .map_err(|e| AuditError::io("stat", path, e))?
            .len();
        let segments = segment::closed_segments(path)?;
        let tail = recover_tail(&mut file, path, len, &options.chain, !segments.is_empty())?;
        let head = read_head(path)?;
        let mut synced_seq = 0;
        if let Some(head) = head {
            if head.seq > tail.last_seq {
                return Err(AuditError::Truncated {
                    expected_lines: head.seq,
                    found_lines: tail.last_seq,
                });
            }
            let anchored = if head.seq == tail.last_seq {
                Some(&tail.last_link)
            } else if head.seq + 1 == tail.last_seq {
                tail.prev_link.as_ref()
            } else {
                None
            };
            if anchored.is_some_and(|link| *link != head.hash) {
                return Err(tail_mismatch(&options.chain, head.seq));
            }
            synced_seq = head.seq;
        }
        let active_first_seq = if len == 0 {
            0
        } else {
            first_seq(&mut file, path)?
        };
        // A crash between linking the active file to its closed name and replacing it leaves
        // both names on one file: finish that rotation instead of starting a new one.
        let interrupted = segments
            .last()
            .filter(|(_, closed)| segment::same_file(path, closed))
            .map(|(n, _)| *n);
        let mut log = AuditLog {
            path: path.to_path_buf(),
            file,
            chain: options.chain,
            sync: options.sync,
            mode: options.mode,
            seq: tail.last_seq,
            link: tail.last_link,
            synced_seq,
            last_sync: Instant::now(),
            poisoned: false,
            len,
            active_first_seq,
            next_segment: segments.last().map_or(1, |(n, _)| n + 1),
            segment_bytes: options.segment_bytes,
            retention_segments: options.retention_segments.map(|k| k.max(1)),
        };
        if log.synced_seq < log.seq || len == 0 {
            // Anchor lines written before a crash (and create the head of a new log).
            log.sync()?;
        }
        if let Some(number) = interrupted {
            log.next_segment = number;
            log.start_segment()?;
        }
        Ok(log)
    }

    /// Appends one record; returns its `seq`. The line is complete on disk (single `write`)
    /// when this returns, and durable per the [`SyncPolicy`].
    ///
    /// If the write itself fails the writer is poisoned ([`AuditError::Poisoned`] afterwards;
    /// reopen, which checks the tail). If only the sync fails, the line may already be in the
    /// log; a failed `fdatasync` also poisons the writer, a failed head update is retried on the
    /// next sync.
    pub fn append(&mut self, entry: AuditEntry) -> Result<u64, AuditError> {
        self.append_records(&[(entry, None)])
    }

    /// Appends several records with one `write` (e.g. the items of one batched call); returns
    /// the `seq` of the last. Same guarantees as [`AuditLog::append`]: on a failed write none of
    /// the chain state advances and the writer is poisoned.
    pub fn append_all(&mut self, entries: Vec<AuditEntry>) -> Result<u64, AuditError> {
        let entries: Vec<_> = entries.into_iter().map(|e| (e, None)).collect();
        self.append_records(&entries)
    }

    /// Appends aggregated records, each standing for `count` operations; see
    /// [`AuditLog::append_all`].
    pub fn append_counted(&mut self, entries: Vec<(AuditEntry, u64)>) -> Result<u64, AuditError> {
        let entries: Vec<_> = entries.into_iter().map(|(e, n)| (e, Some(n))).collect();
        self.append_records(&entries)
    }

    fn append_records(&mut self, entries: &[(AuditEntry, Option<u64>)]) -> Result<u64, AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned);
        }
        if entries.is_empty() {
            return Ok(self.seq);
        }
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut encoded = self.encode(entries, &time)?;
        if let Some(max) = self.segment_bytes {
            let grows_past = self.len + encoded.0.len() as u64 > max;
            // A segment always keeps at least one record after its header.
            if grows_past && self.seq > self.active_first_seq && self.active_first_seq > 0 {
                if let Err(e) = self.rotate() {
                    self.poisoned = true;
                    return Err(e);
                }
                encoded = self.encode(entries, &time)?;
            }
        }
        let (lines, seq, link) = encoded;
        if let Err(e) = write_line(&mut self.file, &lines) {
            self.poisoned = true;
            return Err(AuditError::io("append to", &self.path, e));
        }
        if self.active_first_seq == 0 {
            self.active_first_seq = self.seq + 1;
        }
        self.len += lines.len() as u64;
        self.seq = seq;
        self.link = link;
        let due = match self.sync {
            SyncPolicy::EveryRecord => true,
            SyncPolicy::Batched { interval } => self.last_sync.elapsed() >= interval,
        };
        if due {
            self.sync()?;
        }
        Ok(seq)
    }

    /// The lines for `entries` chained after the current last record, their last `seq` and
    /// link.
    fn encode(
        &self,
        entries: &[(AuditEntry, Option<u64>)],
        time: &str,
    ) -> Result<(Vec<u8>, u64, String), AuditError> {
        let mut seq = self.seq;
        let mut link = self.link.clone();
        let mut lines = Vec::new();
        for (entry, count) in entries {
            seq += 1;
            let mut record = entry.to_record(seq, time.to_string(), link, *count);
            let line = encode_line(&mut record)?;
            link = self.chain.link(&line);
            lines.extend_from_slice(&line);
            lines.push(b'\n');
        }
        Ok((lines, seq, link))
    }

    /// Closes the active file as segment `next_segment` and starts a new one.
    fn rotate(&mut self) -> Result<(), AuditError> {
        self.sync()?;
        let closed = segment::segment_path(&self.path, self.next_segment);
        // A hard link, not a rename: the active name never disappears, so a second writer can
        // never create a fresh log under it.
        fs::hard_link(&self.path, &closed).map_err(|e| AuditError::io("link", &closed, e))?;
        self.start_segment()
    }

    /// Replaces the active file (already linked as closed segment `next_segment`) with a new
    /// file whose first record, chained to the last record, names the closed segment; then
    /// applies retention.
    fn start_segment(&mut self) -> Result<(), AuditError> {
        let closed = segment::segment_path(&self.path, self.next_segment);
        let header = AuditEntry::local(
            SEGMENT_EVENT,
            format!(
                "continues {} (records {}..={})",
                segment::display_name(&closed),
                self.active_first_seq,
                self.seq
            ),
        );
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let (line, seq, link) = self.encode(&[(header, None)], &time)?;
        let next = segment::next_path(&self.path);
        match fs::remove_file(&next) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(AuditError::io("remove", &next, e)),
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(self.mode)
            .open(&next)
            .map_err(|e| AuditError::io("create", &next, e))?;
        lock_exclusive(&file, &next)?;
        write_line(&mut file, &line).map_err(|e| AuditError::io("write", &next, e))?;
        file.sync_data()
            .map_err(|e| AuditError::io("fdatasync", &next, e))?;
        fs::rename(&next, &self.path).map_err(|e| AuditError::io("rename", &next, e))?;
        segment::sync_dir(&self.path)?;
        self.file = file;
        self.len = line.len() as u64;
        self.active_first_seq = seq;
        self.seq = seq;
        self.link = link;
        self.next_segment += 1;
        self.sync()?;
        self.prune()
    }

    /// Removes the oldest closed segments beyond the retention setting, after recording which.
    fn prune(&mut self) -> Result<(), AuditError> {
        let Some(keep) = self.retention_segments else {
            return Ok(());
        };
        let segments = segment::closed_segments(&self.path)?;
        let Some(excess) = (segments.len() as u64).checked_sub(keep).filter(|n| *n > 0) else {
            return Ok(());
        };
        let (removed, kept) = segments.split_at(excess as usize);
        let mut oldest_kept =
            File::open(&kept[0].1).map_err(|e| AuditError::io("open", &kept[0].1, e))?;
        let kept_from = first_seq(&mut oldest_kept, &kept[0].1)?;
        let names = match removed {
            [only] => segment::display_name(&only.1),
            [first, .., last] => format!(
                "{} to {}",
                segment::display_name(&first.1),
                segment::display_name(&last.1)
            ),
            [] => unreachable!("excess is positive"),
        };
        // Recorded first: a crash after it repeats the removal; the reverse would lose the fact.
        self.append(AuditEntry::local(
            PRUNE_EVENT,
            format!(
                "retention ({keep} closed segments) removes {names}: {PRUNED_BEFORE}{kept_from}"
            ),
        ))?;
        self.sync()?;
        for (_, old) in removed {
            fs::remove_file(old).map_err(|e| AuditError::io("remove", old, e))?;
        }
        segment::sync_dir(&self.path)
    }

    /// Makes every appended line durable (`fdatasync`) and records the last one in the head
    /// file (atomic replace). Cheap when nothing is pending.
    pub fn sync(&mut self) -> Result<(), AuditError> {
        if self.poisoned {
            return Err(AuditError::Poisoned);
        }
        let head_missing = self.seq == 0 && !head_path(&self.path).exists();
        if self.synced_seq == self.seq && !head_missing {
            return Ok(());
        }
        if let Err(e) = self.file.sync_data() {
            // After a failed fsync the page cache state is unknown: stop writing.
            self.poisoned = true;
            return Err(AuditError::io("fdatasync", &self.path, e));
        }
        let head = Head {
            seq: self.seq,
            hash: self.link.clone(),
        };
        let bytes = serde_json::to_vec(&head).expect("head serialises");
        let hp = head_path(&self.path);
        coffer_platform::durable::write_atomic(&hp, &bytes, self.mode)
            .map_err(|e| AuditError::io("write", &hp, e))?;
        self.synced_seq = self.seq;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Makes every appended record durable ([`AuditLog::sync`]) and returns the position and
    /// link of the last one: a checkpoint that never names a record a crash could lose.
    pub fn checkpoint(&mut self) -> Result<Checkpoint, AuditError> {
        self.sync()?;
        Ok(Checkpoint {
            seq: self.seq,
            hash: self.link.clone(),
            segment: self.next_segment,
        })
    }

    /// `seq` of the last appended record (0 for an empty log).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Link value of the last appended record (the genesis value for an empty log).
    pub fn last_hash(&self) -> &str {
        &self.link
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.sync();
    }
}

/// `seq` of the first record of a non-empty segment file.
fn first_seq(file: &mut File, path: &Path) -> Result<u64, AuditError> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| AuditError::io("seek", path, e))?;
    let mut reader = BufReader::new(&mut *file);
    let mut buf = Vec::new();
    read_bounded_line(&mut reader, &mut buf).map_err(|e| AuditError::io("read", path, e))?;
    let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
    Ok(parse_line(1, line)?.seq)
}

fn write_line(file: &mut File, line: &[u8]) -> io::Result<()> {
    // One write(2) on an O_APPEND descriptor places the whole line at the end atomically with
    // respect to other appenders; continue only if the kernel wrote less.
    let mut written = 0;
    while written < line.len() {
        match file.write(&line[written..]) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "short write")),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A cloneable, thread-safe [`AuditLog`]: a mutex serialises appends.
#[derive(Clone, Debug)]
pub struct SharedAuditLog(Arc<Mutex<AuditLog>>);

impl SharedAuditLog {
    /// Wraps an open log.
    pub fn new(log: AuditLog) -> Self {
        SharedAuditLog(Arc::new(Mutex::new(log)))
    }

    /// Appends one record; see [`AuditLog::append`].
    pub fn append(&self, entry: AuditEntry) -> Result<u64, AuditError> {
        self.lock().append(entry)
    }

    /// Appends several records with one write; see [`AuditLog::append_all`].
    pub fn append_all(&self, entries: Vec<AuditEntry>) -> Result<u64, AuditError> {
        self.lock().append_all(entries)
    }

    /// Appends aggregated records; see [`AuditLog::append_counted`].
    pub fn append_counted(&self, entries: Vec<(AuditEntry, u64)>) -> Result<u64, AuditError> {
        self.lock().append_counted(entries)
    }

    /// Syncs pending records; see [`AuditLog::sync`].
    pub fn sync(&self) -> Result<(), AuditError> {
        self.lock().sync()
    }

    /// Syncs and returns the last record's checkpoint; see [`AuditLog::checkpoint`].
    pub fn checkpoint(&self) -> Result<Checkpoint, AuditError> {
        self.lock().checkpoint()
    }

    /// `seq` of the last appended record.
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq()
    }

    /// The log file's path.
    pub fn path(&self) -> PathBuf {
        self.lock().path().to_path_buf()
    }

    /// `Ok` while appends can succeed; an error once a failed write poisoned the writer
    /// (reopen the log to recover).
    pub fn healthy(&self) -> Result<(), AuditError> {
        if self.lock().poisoned {
            Err(AuditError::Poisoned)
        } else {
            Ok(())
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AuditLog> {
        // A panic while holding the lock cannot leave a half-written line behind (the write is
        // one call and `poisoned` tracks failures), so recovering the guard is safe.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Takes the single-writer lock on the log (an advisory lock: other writers and repair refuse).
fn lock_exclusive(file: &File, path: &Path) -> Result<(), AuditError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Locked {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(AuditError::io("lock", path, e)),
    }
}

/// Moves an incomplete last line (no trailing newline, left by a crash mid-write) out of the log
/// into `<log>.partial-<UTC time>` and cuts the log back to its last complete line.
///
/// The partial bytes are written and synced to the new file *before* the log is shortened, so
/// nothing is lost. Returns the new file's path, or `None` if the log ends cleanly (nothing to
/// do). Run it only while no writer has the log open (it takes the writer's lock).
pub fn repair_truncated_tail(path: &Path) -> Result<Option<PathBuf>, AuditError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| AuditError::io("open", path, e))?;
    lock_exclusive(&file, path)?;
    let len = file
        .metadata()
        .map_err(|e| AuditError::io("stat", path, e))?
        .len();
    if len == 0 {
        return Ok(None);
    }
    // Find the last newline by scanning backwards in chunks.
    let mut end = len;
    let mut cut = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut first = true;
    'scan: while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))
            .map_err(|e| AuditError::io("seek", path, e))?;
        file.read_exact(&mut chunk[..n])
            .map_err(|e| AuditError::io("read", path, e))?;
        if first {
            if chunk[n - 1] == b'\n' {
                return Ok(None);
            }
            first = false;
        }
        if let Some(i) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            cut = start + i as u64 + 1;
            break 'scan;
        }
        end = start;
    }
    let mut partial = Vec::with_capacity((len - cut) as usize);
    file.seek(SeekFrom::Start(cut))
        .map_err(|e| AuditError::io("seek", path, e))?;
    (&mut file)
        .take(len - cut)
        .read_to_end(&mut partial)
        .map_err(|e| AuditError::io("read", path, e))?;
    let stamp = humantime::format_rfc3339_micros(SystemTime::now())
        .to_string()
        .replace(':', "");
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".partial-{stamp}"));
    let target = PathBuf::from(name);
    coffer_platform::durable::write_new_atomic(&target, &partial, 0o600)
        .map_err(|e| AuditError::io("write", &target, e))?;
    file.set_len(cut)
        .map_err(|e| AuditError::io("truncate", path, e))?;
    file.sync_all()
        .map_err(|e| AuditError::io("fsync", path, e))?;
    Ok(Some(target))
}

#[cfg(test)]
mod tests;

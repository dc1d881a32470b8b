//! Naming and listing of closed segments: `<log>.000001`, `<log>.000002`, … next to the active
//! `<log>`.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::AuditError;

/// Digits in a closed segment's number (more are accepted when the count outgrows them).
const DIGITS: usize = 6;

/// Path of closed segment `number` of `log`: `<log>.000042`.
pub fn segment_path(log: &Path, number: u64) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(format!(".{number:0DIGITS$}"));
    PathBuf::from(name)
}

/// The closed segments of `log`, oldest first, as `(number, path)`.
pub fn closed_segments(log: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let dir = match log.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let Some(base) = log.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{base}.");
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io("list", dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .filter(|d| d.len() >= DIGITS && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((number, segment_path(log, number)));
    }
    found.sort_unstable_by_key(|(n, _)| *n);
    Ok(found)
}

/// Whether `a` and `b` are the same file (a rotation was interrupted after the active log was
/// linked to its closed name and before the new active log replaced it).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Path of the next active segment while it is being prepared: `<log>.next`.
pub fn next_path(log: &Path) -> PathBuf {
    let mut name = log.as_os_str().to_os_string();
    name.push(".next");
    PathBuf::from(name)
}

/// Makes renames, links and removals in `log`'s directory durable.
pub fn sync_dir(log: &Path) -> Result<(), AuditError> {
    let dir = match log.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AuditError::io("fsync", dir, e))
}

/// The file name of `path`, for messages and records.
pub fn display_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

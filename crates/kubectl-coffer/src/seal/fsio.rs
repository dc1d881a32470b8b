//! Bounded reads of the user's files (or stdin) and atomic writes of sealed output.

use std::io::Read;
use std::path::Path;

use zeroize::Zeroizing;

use crate::error::Error;

/// Reads `path` (`-` is stdin), refusing more than `max` bytes. The bytes may be plaintext, so
/// they are zeroized when dropped.
pub fn read_limited(path: &Path, max: usize, what: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    let mut bytes = Zeroizing::new(Vec::new());
    let limit = max as u64 + 1;
    let read = if path == Path::new("-") {
        std::io::stdin().lock().take(limit).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(limit).read_to_end(&mut bytes))
    };
    let name = display(path);
    read.map_err(|e| Error::usage(format!("reading {what} {name}: {e}")))?;
    if bytes.len() > max {
        return Err(Error::usage(format!(
            "{what} {name} is larger than {max} bytes"
        )));
    }
    Ok(bytes)
}

/// `path` for messages (`-` is stdin).
pub fn display(path: &Path) -> String {
    if path == Path::new("-") {
        "(stdin)".to_string()
    } else {
        path.display().to_string()
    }
}

/// Replaces `path` with `contents` atomically (a reader sees the old or the new file, never a
/// mix). Only sealed values and public keys are ever written: no plaintext reaches the disk.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), Error> {
    coffer_platform::durable::write_atomic(path, contents, 0o644)
        .map_err(|e| Error::new(format!("writing {}: {e}", path.display())))
}

//! Reading a mounted Secret volume in the kubelet's layout: `DIR/..data` is a symlink to a
//! timestamped directory (`..2026_12_02_11_00_00.123456789`) holding one file per data key,
//! and `DIR/KEY` links to `..data/KEY`. The kubelet replaces a Secret by writing a new
//! timestamped directory and renaming a new `..data` link over the old one.
//!
//! A version is read through its timestamped directory only, so a swap in the middle of a read
//! cannot mix two versions; when that directory vanishes mid-read, the read starts over.

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::error::RunError;

/// The `..data` link of a kubelet-written volume.
pub const DATA_LINK: &str = "..data";

/// Largest file read from a volume: the largest sealed value (1 MiB of plaintext, sealed and
/// base64-encoded); a Kubernetes Secret cannot hold more in one key.
pub const MAX_FILE_LEN: usize = coffer_sealed::MAX_SEALED_TEXT_LEN;

/// Most data keys read from one volume.
pub const MAX_KEYS: usize = 1000;

/// How many times a read restarts because the kubelet swapped `..data` during it.
const MAX_RESTARTS: usize = 5;

/// A volume's files: `(data key, content)`.
pub type Files = Vec<(String, Zeroizing<Vec<u8>>)>;

/// One version of a volume's content.
#[derive(Debug)]
pub struct Snapshot {
    /// The target of `..data` this was read through; `None` for a plain directory (not written
    /// by the kubelet's atomic writer: never watched).
    pub version: Option<OsString>,
    /// `(data key, content)`, sorted by key.
    pub files: Files,
}

/// The current target of `dir/..data`, or `None` when `dir` has no `..data` link.
pub fn version(dir: &Path) -> std::io::Result<Option<OsString>> {
    match std::fs::read_link(dir.join(DATA_LINK)) {
        Ok(target) => Ok(Some(target.into_os_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the current version of the volume mounted at `dir`.
pub fn read(dir: &Path) -> Result<Snapshot, RunError> {
    let fail = |reason: String| RunError::Volume {
        dir: dir.to_path_buf(),
        reason,
    };
    for _ in 0..MAX_RESTARTS {
        let version = version(dir).map_err(|e| fail(format!("reading {DATA_LINK}: {e}")))?;
        let content = match &version {
            Some(target) => {
                let target = Path::new(target);
                if target.is_absolute() || target.components().count() != 1 {
                    return Err(fail(format!(
                        "{DATA_LINK} points to {}, not to a directory beside it as the \
                         kubelet writes it",
                        target.display()
                    )));
                }
                dir.join(target)
            }
            None => dir.to_path_buf(),
        };
        match read_dir_files(&content) {
            Ok(files) => return Ok(Snapshot { version, files }),
            // The kubelet removed the version being read: read the new one.
            Err(ReadError::Io(e))
                if version.is_some() && e.kind() == std::io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    Err(fail(format!(
        "{DATA_LINK} changed {MAX_RESTARTS} times while it was being read; try again"
    )))
}

#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{path} is larger than {MAX_FILE_LEN} bytes, more than a Secret value can be", path = .0.display())]
    TooLarge(PathBuf),
    #[error("more than {MAX_KEYS} data keys; coffer run reads at most {MAX_KEYS} per volume")]
    TooManyKeys,
}

/// The regular files directly in `dir`, except kubelet bookkeeping entries (`..…`).
/// Subdirectories (a projection with `items[].path` holding a `/`) are skipped with a warning.
fn read_dir_files(dir: &Path) -> Result<Files, ReadError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::warn!(dir = %dir.display(), "skipping a file whose name is not UTF-8");
            continue;
        };
        if name.starts_with("..") {
            continue;
        }
        let path = entry.path();
        // Through a symlink (a plain directory's `KEY -> ..data/KEY`) to what it names.
        let meta = std::fs::metadata(&path)?;
        if !meta.is_file() {
            tracing::warn!(path = %path.display(), "skipping an entry that is not a regular file");
            continue;
        }
        if files.len() == MAX_KEYS {
            return Err(ReadError::TooManyKeys);
        }
        let mut content = Zeroizing::new(Vec::new());
        std::fs::File::open(&path)?
            .take(MAX_FILE_LEN as u64 + 1)
            .read_to_end(&mut content)?;
        if content.len() > MAX_FILE_LEN {
            return Err(ReadError::TooLarge(path));
        }
        files.push((name, content));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn kubelet_version(dir: &Path, version: &str, files: &[(&str, &str)]) {
        std::fs::create_dir(dir.join(version)).unwrap();
        for (k, v) in files {
            std::fs::write(dir.join(version).join(k), v).unwrap();
            let _ = symlink(format!("{DATA_LINK}/{k}"), dir.join(k));
        }
        symlink(version, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join(DATA_LINK)).unwrap();
    }

    #[test]
    fn reads_the_version_data_points_to() {
        let dir = tempfile::tempdir().unwrap();
        kubelet_version(dir.path(), "..v1", &[("a", "1"), (".dotkey", "2")]);
        let snap = read(dir.path()).unwrap();
        assert_eq!(snap.version.as_deref(), Some("..v1".as_ref()));
        let keys: Vec<_> = snap.files.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, [".dotkey", "a"]);
        kubelet_version(dir.path(), "..v2", &[("a", "3")]);
        let snap = read(dir.path()).unwrap();
        assert_eq!(snap.files.len(), 1);
        assert_eq!(snap.files[0].1.as_slice(), b"3");
    }

    #[test]
    fn a_plain_directory_is_read_without_version() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("k"), "v").unwrap();
        let snap = read(dir.path()).unwrap();
        assert!(snap.version.is_none());
        assert_eq!(snap.files.len(), 1);
    }

    #[test]
    fn too_many_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..=MAX_KEYS {
            std::fs::write(dir.path().join(format!("k{i}")), "v").unwrap();
        }
        let e = read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("more than 1000"), "{e}");
    }
}

//! Crash-safe file writes: a reader sees either the old or the new file, never a mix.
//!
//! A writer killed between creating its temporary and renaming it leaves the temporary behind,
//! complete or not. Those can hold secrets the final file no longer does (a keystore temp holds
//! every KEK of its moment, including ones retired since), so every writer that serialises on a
//! lock file removes the leftovers under that lock: see [`lock_exclusive`] and
//! [`remove_stale_temps`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Writes `contents` to `path` atomically: temp file (mode `mode`) in the same directory,
/// fsync, rename over `path`, fsync the directory.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = write_temp(path, contents, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path)
}

/// Like [`write_atomic`], but fails with `AlreadyExists` instead of replacing an existing file,
/// even if another process creates `path` at the same moment.
pub fn write_new_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = write_temp(path, contents, mode)?;
    // link(2) refuses to replace an existing name, unlike rename(2).
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    linked?;
    sync_parent(path)
}

/// Opens (creating it with mode 0600 if needed) and exclusively locks `lock_path`; the lock is
/// held until the returned file is dropped, and also ends when the process dies however it dies.
pub fn lock_exclusive(lock_path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(lock_path)?;
    file.lock()?;
    Ok(file)
}

/// Removes the temporaries that [`write_atomic`] and [`write_new_atomic`] left next to `path`
/// when their writer died, and returns their paths.
///
/// Only names of exactly the form these functions create (`.<name>.tmp-<16 hex digits>`) are
/// touched. A live writer's temporary has the same form, so call this only while holding the
/// lock that every writer of `path` takes (for example with [`lock_exclusive`]).
pub fn remove_stale_temps(path: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = parent(path);
    let prefix = temp_prefix(path);
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(suffix) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        // `hex8` writes lowercase only; anything else is not ours.
        if suffix.len() != 16
            || !suffix
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => removed.push(entry.path()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if !removed.is_empty() {
        // The removal must survive a crash too, or the secrets it held come back.
        sync_parent(path)?;
    }
    Ok(removed)
}

fn temp_prefix(path: &Path) -> String {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    format!(".{name}.tmp-")
}

/// The environment variable of the crash tests' hook; see [`stall_if_testing`].
pub const TEST_STALL_ENV: &str = "COFFER_TEST_ONLY_STALL_AFTER_TEMP";

/// Crash-test hook, inert unless [`TEST_STALL_ENV`] names `path`'s file name: then the writer
/// prints `coffer-test: temp complete <temp path>` on stderr and stalls forever, so a test can
/// SIGKILL it exactly between a complete temporary and its rename. It can only stop a process
/// that sets it, never change what is written.
fn stall_if_testing(path: &Path, tmp: &Path) {
    let Some(target) = std::env::var_os(TEST_STALL_ENV) else {
        return;
    };
    if path.file_name() != Some(target.as_os_str()) {
        return;
    }
    eprintln!("coffer-test: temp complete {}", tmp.display());
    loop {
        std::thread::park();
    }
}

fn write_temp(path: &Path, contents: &[u8], mode: u32) -> io::Result<PathBuf> {
    let dir = parent(path);
    let mut nonce = [0u8; 8];
    crate::fill_random(&mut nonce).map_err(io::Error::other)?;
    let tmp = dir.join(format!("{}{}", temp_prefix(path), hex8(&nonce)));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    stall_if_testing(path, &tmp);
    Ok(tmp)
}

fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(parent(path))?.sync_all()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn hex8(bytes: &[u8; 8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file left behind"
        );
    }

    #[test]
    fn only_our_stale_temps_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keystore");
        write_atomic(&path, b"live", 0o600).unwrap();
        let stale = [
            ".keystore.tmp-0123456789abcdef",
            ".keystore.tmp-fedcba9876543210",
        ];
        let kept = [
            ".keystore.tmp-0123",
            ".keystore.tmp-0123456789abcdefg",
            ".keystore.tmp-0123456789abcdeg",
            ".keystore.tmp-0123456789ABCDEF",
            ".other.tmp-0123456789abcdef",
            "keystore.tmp-0123456789abcdef",
            "keystore.lock",
        ];
        for name in stale.iter().chain(&kept) {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        let mut removed = remove_stale_temps(&path).unwrap();
        removed.sort();
        let expected: Vec<_> = stale.iter().map(|n| dir.path().join(n)).collect();
        assert_eq!(removed, expected);
        for name in &kept {
            assert!(dir.path().join(name).exists(), "{name} was removed");
        }
        assert_eq!(fs::read(&path).unwrap(), b"live");
        assert!(remove_stale_temps(&dir.path().join("missing/keystore"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn new_atomic_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        write_new_atomic(&path, b"first", 0o600).unwrap();
        let err = write_new_atomic(&path, b"second", 0o600).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

//! `--out`: the only place unsealed files are written. It must be TEE-private memory, and each
//! volume is written there in the kubelet's own atomic layout, so an app reading a Secret
//! volume reads its copy the same way.
//!
//! Privacy. In a confidential VM (sim, tdx, snp) a tmpfs or ramfs lives in encrypted guest
//! memory, so `statfs(2)`'s `f_type` decides; Occlum reports its in-enclave ramfs as tmpfs
//! (occlum src/libos/src/fs/fs_ops/statfs.rs). Gramine answers `f_type` 0 for every mount
//! (libos/src/sys/libos_stat.c), so there the measured manifest lists its tmpfs mounts in
//! `loader.env.COFFER_RUN_PRIVATE_DIRS`, which the host cannot change.
//!
//! Layout of `OUT/<name>/`: `..<timestamp>/KEY` (mode 0400), `..data -> ..<timestamp>` replaced
//! with rename(2), and `KEY -> ..data/KEY`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use coffer_platform::PlatformKind;

use crate::error::RunError;
use crate::volume::{Files, DATA_LINK};

/// `statfs` `f_type` of tmpfs.
pub const TMPFS_MAGIC: u32 = 0x0102_1994;
/// `statfs` `f_type` of ramfs.
pub const RAMFS_MAGIC: u32 = 0x8584_58f6;
/// The measured Gramine manifest's list of its tmpfs mounts (colon-separated absolute paths):
/// `loader.env.COFFER_RUN_PRIVATE_DIRS`.
pub const GRAMINE_PRIVATE_DIRS_ENV: &str = "COFFER_RUN_PRIVATE_DIRS";

/// Why a directory is not TEE-private: the file system it is on and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotPrivate {
    /// The file system, for the message.
    pub filesystem: String,
    /// What to do on this platform.
    pub fix: String,
}

/// Whether `out` (canonical) is TEE-private memory on `kind`, given its `statfs` `f_type`
/// and, for Gramine, the manifest's [`GRAMINE_PRIVATE_DIRS_ENV`].
pub fn check_private(
    kind: PlatformKind,
    out: &Path,
    f_type: u32,
    gramine_private_dirs: Option<&str>,
) -> Result<(), NotPrivate> {
    if kind == PlatformKind::SgxGramine {
        let listed = gramine_private_dirs
            .unwrap_or("")
            .split(':')
            .map(Path::new)
            .filter(|d| d.is_absolute())
            .any(|d| out.starts_with(d));
        return if listed {
            Ok(())
        } else {
            Err(NotPrivate {
                filesystem: format!(
                    "a mount the Gramine manifest does not list in loader.env.{GRAMINE_PRIVATE_DIRS_ENV} \
                     (Gramine does not report file system types)"
                ),
                fix: format!(
                    "Mount a tmpfs there in the manifest (`fs.mounts = [{{ type = \"tmpfs\", \
                     path = \"{}\" }}]`) and list that path in \
                     `loader.env.{GRAMINE_PRIVATE_DIRS_ENV}`",
                    out.display()
                ),
            })
        };
    }
    if f_type == TMPFS_MAGIC || f_type == RAMFS_MAGIC {
        return Ok(());
    }
    let fix = match kind {
        PlatformKind::SgxOcclum => format!(
            "Mount an in-enclave ramfs there in Occlum.json (`\"mount\": [{{\"target\": \"{}\", \
             \"type\": \"ramfs\"}}]`)",
            out.display()
        ),
        _ => "Mount an emptyDir with `medium: Memory` there (a tmpfs; in a confidential VM it \
              lives in encrypted guest memory)"
            .to_string(),
    };
    Err(NotPrivate {
        filesystem: filesystem_name(f_type),
        fix,
    })
}

/// A readable name for a `statfs` `f_type`.
fn filesystem_name(f_type: u32) -> String {
    let name = match f_type {
        0xEF53 => "ext2/3/4",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x794C_7630 => "overlayfs",
        0x6969 => "nfs",
        0x0102_1997 => "9p (host-shared)",
        0x6573_5546 => "fuse (e.g. virtiofs, host-shared)",
        0 => "an unknown file system",
        _ => "a file system that is not tmpfs or ramfs",
    };
    format!("{name} (f_type {f_type:#x})")
}

/// Checks `out` and returns its canonical path: an existing directory on TEE-private memory,
/// unless `allow_unprotected` on the sim platform (then a loud warning; on a TEE the override
/// is refused, because whoever writes the pod spec or the LibOS command line is outside it).
pub fn prepare(
    out: &Path,
    kind: PlatformKind,
    allow_unprotected: bool,
) -> Result<PathBuf, RunError> {
    let fail = |detail: String| RunError::Out {
        path: out.to_path_buf(),
        detail,
    };
    let canonical = std::fs::canonicalize(out).map_err(|e| {
        fail(format!(
            "{e}; it must be an existing directory on TEE-private memory (an emptyDir with \
             `medium: Memory`)"
        ))
    })?;
    if !canonical.is_dir() {
        return Err(fail("not a directory".into()));
    }
    let stat = rustix::fs::statfs(&canonical).map_err(|e| fail(format!("statfs: {e}")))?;
    // Magic numbers are 32-bit; `f_type`'s width varies by architecture.
    let f_type = stat.f_type as u32;
    let dirs = std::env::var(GRAMINE_PRIVATE_DIRS_ENV).ok();
    if let Err(not) = check_private(kind, &canonical, f_type, dirs.as_deref()) {
        // On a TEE the flags come from outside it (the pod spec, `occlum run`'s host command
        // line), so an override there would let the host redirect plaintext to itself.
        if allow_unprotected && kind != PlatformKind::Sim {
            return Err(RunError::UnprotectedOut {
                out: out.to_path_buf(),
                filesystem: not.filesystem,
                fix: format!(
                    "{}. --allow-unprotected-out is honoured only on the sim platform: on {} the \
                     flags come from the pod spec or the host, which must not be able to send \
                     plaintext out of the TEE",
                    not.fix,
                    kind.name()
                ),
            });
        }
        if !allow_unprotected {
            return Err(RunError::UnprotectedOut {
                out: out.to_path_buf(),
                filesystem: not.filesystem,
                fix: not.fix,
            });
        }
        tracing::warn!(
            out = %out.display(),
            filesystem = %not.filesystem,
            "--allow-unprotected-out: WRITING PLAINTEXT SECRETS TO A DIRECTORY THAT IS NOT \
             TEE-PRIVATE MEMORY; the node can read them. Never do this in production"
        );
    }
    Ok(canonical)
}

/// A fresh `..<timestamp>` name in the kubelet's format (`..2026_12_02_11_00_00.123456789`).
fn version_name(dir: &Path) -> String {
    let stamp = humantime::format_rfc3339_nanos(std::time::SystemTime::now())
        .to_string()
        .trim_end_matches('Z')
        .replace(['-', 'T', ':'], "_");
    let mut name = format!("..{stamp}");
    let mut n = 1;
    while dir.join(&name).symlink_metadata().is_ok() {
        name = format!("..{stamp}-{n}");
        n += 1;
    }
    name
}

/// A data key usable as a file name in the layout.
fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.contains('/') || key == "." || key.starts_with("..") {
        return Err(format!("data key {key:?} cannot be a file name here"));
    }
    Ok(())
}

/// Writes `files` as the new version of `dir` (created with mode 0700 if missing) and
/// removes what the previous version had that this one does not.
pub fn write_version(dir: &Path, files: &Files) -> Result<(), RunError> {
    let fail = |path: &Path, detail: String| RunError::Out {
        path: path.to_path_buf(),
        detail,
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| RunError::Out {
            path,
            detail: e.to_string(),
        }
    };
    match dir.symlink_metadata() {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(fail(dir, "exists and is not a directory".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?,
        Err(e) => return Err(io(dir)(e)),
    }
    for (key, _) in files {
        check_key(key).map_err(|d| fail(dir, d))?;
    }
    let name = version_name(dir);
    let version = dir.join(&name);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&version)
        .map_err(io(&version))?;
    let written = files.iter().try_for_each(|(key, content)| {
        let path = version.join(key);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .and_then(|mut f| f.write_all(content))
            .map_err(io(&path))
    });
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&version);
        return Err(e);
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&name, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dir.join(DATA_LINK)).map_err(io(&tmp))?;
    for (key, _) in files {
        let link = dir.join(key);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(format!("{DATA_LINK}/{key}"), &link).map_err(io(&link))?;
        }
    }
    remove_stale(dir, &name, files);
    Ok(())
}

/// Removes old versions and the links of keys that are gone. Failures only leave garbage
/// behind (the new version is in place), so they are logged.
fn remove_stale(dir: &Path, current: &str, files: &Files) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == DATA_LINK || name == current || files.iter().any(|(k, _)| k == name) {
            continue;
        }
        let path = entry.path();
        let removed = if name.starts_with("..") {
            if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            }
        } else if std::fs::read_link(&path).is_ok_and(|t| t.starts_with(DATA_LINK)) {
            std::fs::remove_file(&path)
        } else {
            continue;
        };
        if let Err(e) = removed {
            tracing::warn!(path = %path.display(), error = %e, "could not remove an old entry of --out");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const EXT4: u32 = 0xEF53;

    #[test]
    fn a_cvm_or_sim_accepts_tmpfs_and_ramfs_only() {
        for kind in [PlatformKind::Sim, PlatformKind::Tdx, PlatformKind::Snp] {
            let out = Path::new("/secrets");
            assert!(check_private(kind, out, TMPFS_MAGIC, None).is_ok());
            assert!(check_private(kind, out, RAMFS_MAGIC, None).is_ok());
            let e = check_private(kind, out, EXT4, None).unwrap_err();
            assert!(e.filesystem.contains("ext2/3/4"), "{e:?}");
            assert!(e.fix.contains("medium: Memory"), "{e:?}");
        }
    }

    #[test]
    fn the_override_is_honoured_on_sim_only() {
        // The test's temp dir is on disk here (/tmp); skip where it happens to be a tmpfs.
        let dir = tempfile::tempdir().unwrap();
        let f_type = rustix::fs::statfs(dir.path()).unwrap().f_type as u32;
        if f_type == TMPFS_MAGIC || f_type == RAMFS_MAGIC {
            eprintln!("skipped: the temp dir is on tmpfs here");
            return;
        }
        assert!(prepare(dir.path(), PlatformKind::Sim, true).is_ok());
        assert!(matches!(
            prepare(dir.path(), PlatformKind::Sim, false),
            Err(RunError::UnprotectedOut { .. })
        ));
        for kind in [
            PlatformKind::Tdx,
            PlatformKind::Snp,
            PlatformKind::SgxOcclum,
        ] {
            let e = prepare(dir.path(), kind, true).unwrap_err();
            assert!(
                e.to_string().contains("honoured only on the sim platform"),
                "{e}"
            );
        }
    }

    #[test]
    fn occlum_accepts_its_ramfs_reported_as_tmpfs() {
        let out = Path::new("/secrets");
        assert!(check_private(PlatformKind::SgxOcclum, out, TMPFS_MAGIC, None).is_ok());
        let e = check_private(PlatformKind::SgxOcclum, out, EXT4, None).unwrap_err();
        assert!(e.fix.contains("ramfs"), "{e:?}");
    }

    #[test]
    fn gramine_trusts_only_the_manifests_list_not_f_type() {
        let kind = PlatformKind::SgxGramine;
        let out = Path::new("/run/secrets/app");
        // Gramine reports 0; even a tmpfs magic means nothing there.
        assert!(check_private(kind, out, TMPFS_MAGIC, None).is_err());
        assert!(check_private(kind, out, 0, Some("/tmp:/run/secrets")).is_ok());
        assert!(check_private(kind, out, 0, Some("/run/secrets/app")).is_ok());
        // A prefix of a name is not a parent directory; relative entries are ignored.
        assert!(check_private(kind, out, 0, Some("/run/sec:run/secrets")).is_err());
        let e = check_private(kind, out, 0, Some("")).unwrap_err();
        assert!(e.fix.contains("type = \"tmpfs\""), "{e:?}");
    }

    fn files(pairs: &[(&str, &str)]) -> Files {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    zeroize::Zeroizing::new(v.as_bytes().to_vec()),
                )
            })
            .collect()
    }

    #[test]
    fn versions_are_swapped_like_the_kubelet_does() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("db");
        write_version(&dir, &files(&[("a", "1"), ("b", "2")])).unwrap();
        let first = std::fs::read_link(dir.join(DATA_LINK)).unwrap();
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"1");
        let mode = std::fs::metadata(dir.join("a"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
        write_version(&dir, &files(&[("a", "3"), ("c", "4")])).unwrap();
        assert_ne!(std::fs::read_link(dir.join(DATA_LINK)).unwrap(), first);
        assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"3");
        assert_eq!(std::fs::read(dir.join("c")).unwrap(), b"4");
        assert!(
            dir.join("b").symlink_metadata().is_err(),
            "a gone key stays"
        );
        assert!(!dir.join(&first).exists(), "the old version stays");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names.len(), 4, "{names:?}");
    }

    #[test]
    fn a_bad_key_is_refused_before_anything_is_written() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("db");
        assert!(write_version(&dir, &files(&[("../x", "1")])).is_err());
        assert!(!root.path().join("x").exists());
    }
}

//! What the kubelet hands a container from a Secret, without a kubelet: the Secret as the API
//! server stores it (from the manifest a user applies), its values as `secretKeyRef` and
//! `envFrom` environment variables, and a Secret volume in the kubelet's atomic `..data` layout
//! that [`SecretVolume::update`] swaps the way the kubelet does when the Secret changes.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

/// The link naming the current version of a volume's files.
const DATA_LINK: &str = "..data";
/// The link made beside [`DATA_LINK`] and renamed over it.
const DATA_LINK_TMP: &str = "..data_tmp";
/// A Secret volume's files' mode when the volume sets no `defaultMode` (the API default 0644).
pub const DEFAULT_MODE: u32 = 0o644;

/// One Secret as the API server holds it: `stringData` merged into `data` (`stringData` wins,
/// as the API server does on write), values as bytes.
#[derive(Debug, Clone)]
pub struct Secret {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The values by data key.
    pub data: BTreeMap<String, Vec<u8>>,
}

impl Secret {
    /// Parses a Secret manifest (YAML or JSON), as `kubectl apply` would send it. Panics on
    /// anything but one v1 Secret: a test's own manifest is wrong then.
    pub fn parse(manifest: &str) -> Secret {
        let doc: serde_json::Value = serde_yaml_ng::from_str(manifest).unwrap();
        assert_eq!(doc["apiVersion"], "v1", "{manifest}");
        assert_eq!(doc["kind"], "Secret", "{manifest}");
        let text = |field: &str| doc["metadata"][field].as_str().unwrap().to_string();
        let mut data = BTreeMap::new();
        if let Some(values) = doc["data"].as_object() {
            for (key, value) in values {
                data.insert(key.clone(), B64.decode(value.as_str().unwrap()).unwrap());
            }
        }
        if let Some(values) = doc["stringData"].as_object() {
            for (key, value) in values {
                data.insert(key.clone(), value.as_str().unwrap().as_bytes().to_vec());
            }
        }
        Secret {
            namespace: text("namespace"),
            name: text("name"),
            data,
        }
    }

    /// Reads and parses the manifest at `path`.
    pub fn load(path: &Path) -> Secret {
        Secret::parse(&std::fs::read_to_string(path).unwrap())
    }

    /// The value of `key` as an environment variable's value (`valueFrom.secretKeyRef`): the
    /// bytes as they are, which must be text.
    pub fn key_ref(&self, key: &str) -> String {
        String::from_utf8(self.data[key].clone()).unwrap()
    }

    /// The variables `envFrom: [{prefix, secretRef}]` gives: one per data key, named prefix +
    /// key, holding the value as it is.
    pub fn env_from(&self, prefix: &str) -> Vec<(String, String)> {
        self.data
            .keys()
            .map(|key| (format!("{prefix}{key}"), self.key_ref(key)))
            .collect()
    }
}

/// A Secret volume as the kubelet lays it out (pkg/volume/util/atomic_writer.go,
/// `AtomicWriter.Write`): the files live in a hidden `..<timestamp>` directory, `..data` links
/// to it, and each visible `KEY` is a link to `..data/KEY`. A change writes a new timestamped
/// directory and moves `..data` to it with one rename(2), so a reader sees the old files or the
/// new ones, never a mix.
#[derive(Debug)]
pub struct SecretVolume {
    /// The volume's mount point.
    pub dir: PathBuf,
    /// The files' mode (the volume's `defaultMode`).
    pub mode: u32,
}

impl SecretVolume {
    /// Projects `secret` into the new volume directory `dir` with files of `mode`.
    pub fn project(dir: &Path, secret: &Secret, mode: u32) -> SecretVolume {
        std::fs::create_dir_all(dir).unwrap();
        let volume = SecretVolume {
            dir: dir.to_path_buf(),
            mode,
        };
        volume.update(secret);
        volume
    }

    /// The timestamped directory `..data` names now, if any.
    pub fn current(&self) -> Option<PathBuf> {
        std::fs::read_link(self.dir.join(DATA_LINK))
            .ok()
            .map(|target| self.dir.join(target))
    }

    /// Writes `secret`'s values as a new version, in AtomicWriter's order: (5) a new
    /// `..<timestamp>` directory (0755), (6) the files in it, (7) a `KEY -> ..data/KEY` link for
    /// each new key, (8) `..data_tmp` linking to the new directory, (9) rename(2) of
    /// `..data_tmp` over `..data`, (10) the links of keys no longer in the Secret removed, (11)
    /// the previous directory removed.
    pub fn update(&self, secret: &Secret) {
        let old = self.current();
        let old_keys: Vec<String> = old
            .as_deref()
            .map(|dir| {
                std::fs::read_dir(dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();

        let version = self.dir.join(timestamp_name());
        std::fs::create_dir(&version).unwrap();
        std::fs::set_permissions(&version, std::fs::Permissions::from_mode(0o755)).unwrap();
        for (key, value) in &secret.data {
            let path = version.join(key);
            std::fs::write(&path, value).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(self.mode)).unwrap();
        }
        for key in secret.data.keys() {
            let visible = self.dir.join(key);
            if std::fs::symlink_metadata(&visible).is_err() {
                symlink(Path::new(DATA_LINK).join(key), &visible).unwrap();
            }
        }
        let tmp = self.dir.join(DATA_LINK_TMP);
        symlink(version.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join(DATA_LINK)).unwrap();
        for key in old_keys {
            if !secret.data.contains_key(&key) {
                std::fs::remove_file(self.dir.join(&key)).unwrap();
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(old).unwrap();
        }
    }

    /// Every regular file's contents under the volume (the visible links resolve into these).
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let dir = self.current().unwrap();
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }
}

/// A fresh `..YYYY_MM_DD_HH_MM_SS.<random>` name, as AtomicWriter's `newTimestampDir` makes
/// with Go's `ioutil.TempDir`.
fn timestamp_name() -> String {
    let rfc3339 = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let stamp: String = rfc3339
        .trim_end_matches('Z')
        .chars()
        .map(|c| if c.is_ascii_digit() { c } else { '_' })
        .collect();
    format!("..{stamp}.{}", rand::random::<u32>())
}

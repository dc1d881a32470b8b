//! [`SealedStore`]: keyd's records under one prefix of a [`StateStore`], encrypted with
//! [`format`](crate::format) on the way in and authenticated on the way out.

use zeroize::Zeroizing;

use crate::format::{self, StoreKey};
use crate::store::{Entry, Expect, StateStore, Swap};
use crate::StoreError;

/// One opened record.
pub struct Record {
    /// The plaintext (key material: zeroized on drop, never printed).
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The store revision of its last write, for compare-and-swap.
    pub mod_revision: i64,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("len", &self.plaintext.len())
            .field("mod_revision", &self.mod_revision)
            .finish()
    }
}

/// `prefix` with its trailing `/`, if it is an absolute path.
fn checked_prefix(prefix: &str) -> Result<String, StoreError> {
    let trimmed = prefix.trim_end_matches('/');
    if !trimmed.starts_with('/') || trimmed.contains("//") {
        return Err(StoreError::Config(format!(
            "--etcd-prefix {prefix:?} must be an absolute path like /coffer/keyd"
        )));
    }
    Ok(format!("{trimmed}/"))
}

/// The full store key of record `name` under `prefix`, as a [`SealedStore`] names it: for
/// seeing whether a record exists without the key that opens it (a replica with no root yet).
pub fn record_key(prefix: &str, name: &str) -> Result<Vec<u8>, StoreError> {
    Ok(format!("{}{name}", checked_prefix(prefix)?).into_bytes())
}

/// Records named by relative paths (`keyrings/a/keystore`) under `<prefix>/`.
#[derive(Debug)]
pub struct SealedStore<S> {
    inner: S,
    key: StoreKey,
    /// The prefix with its trailing `/`.
    prefix: String,
}

impl<S: StateStore> SealedStore<S> {
    /// Records of `inner` under `prefix` (absolute, like `/coffer/keyd`), sealed with `key`.
    pub fn new(inner: S, key: StoreKey, prefix: &str) -> Result<Self, StoreError> {
        Ok(SealedStore {
            inner,
            key,
            prefix: checked_prefix(prefix)?,
        })
    }

    /// The store underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The prefix, ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full store key of record `name`.
    pub fn path(&self, name: &str) -> Vec<u8> {
        format!("{}{name}", self.prefix).into_bytes()
    }

    /// Opens an entry read from the store (by [`list`](Self::list) or a watch): its record
    /// name and plaintext. An entry outside the prefix or that does not authenticate is an
    /// error naming its key.
    pub fn open_entry(&self, entry: &Entry) -> Result<(String, Record), StoreError> {
        let name = entry
            .key
            .strip_prefix(self.prefix.as_bytes())
            .and_then(|n| std::str::from_utf8(n).ok())
            .ok_or_else(|| StoreError::Rejected {
                operation: "open",
                key: String::from_utf8_lossy(&entry.key).into_owned(),
                message: format!("not a record name under {}", self.prefix),
            })?;
        let plaintext = format::open(&self.key, &entry.key, &entry.value)?;
        Ok((
            name.to_string(),
            Record {
                plaintext,
                mod_revision: entry.mod_revision,
            },
        ))
    }

    /// Record `name`, if present.
    pub async fn get(&self, name: &str) -> Result<Option<Record>, StoreError> {
        match self.inner.get(&self.path(name)).await? {
            Some(entry) => Ok(Some(self.open_entry(&entry)?.1)),
            None => Ok(None),
        }
    }

    /// Every record under the prefix and the revision they were read at. One record that does
    /// not open fails the whole listing: nothing is served from a store someone tampered with.
    pub async fn list(&self) -> Result<(Vec<(String, Record)>, i64), StoreError> {
        let listing = self.inner.list(self.prefix.as_bytes()).await?;
        let records = listing
            .entries
            .iter()
            .map(|entry| self.open_entry(entry))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((records, listing.revision))
    }

    /// Seals `plaintext` and writes it as record `name` if `expect` holds.
    pub async fn put(
        &self,
        name: &str,
        plaintext: &[u8],
        expect: Expect,
    ) -> Result<Swap, StoreError> {
        let path = self.path(name);
        let value = format::seal(&self.key, &path, plaintext)?;
        self.inner.put(&path, value, expect).await
    }

    /// Deletes record `name` if it was last written at `mod_revision`.
    pub async fn delete(&self, name: &str, mod_revision: i64) -> Result<Swap, StoreError> {
        self.inner.delete(&self.path(name), mod_revision).await
    }
}

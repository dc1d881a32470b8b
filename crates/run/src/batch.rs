//! One round of unsealing: what was found in the environment and the volumes becomes one batch
//! for keyd, and keyd's answers become the app's environment values and `--out` files.

use std::path::PathBuf;
use std::time::Duration;

use coffer_sealed::PREFIX;
use zeroize::Zeroizing;

use crate::discover::{self, Item, Resolved};
use crate::error::{Origin, Refusal, RunError};
use crate::unseal::Keyd;
use crate::volume::{Files, Snapshot};
use crate::EnvSource;

/// A `--files` volume and where its copy goes.
#[derive(Debug, Clone)]
pub struct Volume {
    /// The mount directory.
    pub dir: PathBuf,
    /// The Secret mounted there (`--files SECRET=DIR`), if given.
    pub secret: Option<String>,
    /// `OUT/<basename of dir>`.
    pub out: PathBuf,
}

/// What every round needs.
#[derive(Debug)]
pub struct Context {
    /// keyd.
    pub keyd: Keyd,
    /// The pod's namespace.
    pub namespace: String,
    /// `--env-source`.
    pub env_sources: Vec<EnvSource>,
    /// `--files`.
    pub volumes: Vec<Volume>,
    /// `--allow-missing`.
    pub allow_missing: bool,
}

/// The result of a round. Holds plaintext: its `Debug` shows only counts.
#[derive(Default)]
pub struct Opened {
    /// Unsealed environment variables.
    pub env: Vec<(String, Zeroizing<Vec<u8>>)>,
    /// The files of each volume given, sorted by key: unsealed values and non-sealed files as
    /// they were.
    pub volumes: Vec<Files>,
    /// The values that were refused, each with its reason.
    pub refused: Vec<Refusal>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("env", &self.env.len())
            .field(
                "files",
                &self.volumes.iter().map(Vec::len).collect::<Vec<_>>(),
            )
            .field("refused", &self.refused)
            .finish()
    }
}

enum Slot {
    Env(String),
    File(usize, String),
}

impl Context {
    /// Unseals the sealed `env` values (`(var, sealed text)`) and the files of `volumes`
    /// (snapshots of `self.volumes[i]`, as `(i, snapshot)`), asking keyd once (retrying an
    /// unreachable keyd until `deadline`). Nothing sealed: keyd is not contacted.
    pub async fn open(
        &self,
        env: Vec<(String, String)>,
        volumes: Vec<(usize, Snapshot)>,
        deadline: Duration,
    ) -> Result<Opened, RunError> {
        let mut opened = Opened {
            volumes: vec![Vec::new(); volumes.len()],
            ..Opened::default()
        };
        let mut items: Vec<Item> = Vec::new();
        let mut slots: Vec<Slot> = Vec::new();
        let mut push = |resolved: Resolved, slot: Slot, opened: &mut Opened| match resolved {
            Resolved::Item(item) => {
                items.push(*item);
                slots.push(slot);
            }
            Resolved::Refused(refusal) => opened.refused.push(refusal),
        };
        for (var, sealed) in env {
            let source = discover::env_source(&self.env_sources, &var);
            let origin = Origin::Env { var: var.clone() };
            let resolved = discover::resolve(origin, sealed, source, &self.namespace)?;
            push(resolved, Slot::Env(var), &mut opened);
        }
        for (slot_index, (index, snapshot)) in volumes.into_iter().enumerate() {
            let volume = &self.volumes[index];
            for (key, content) in snapshot.files {
                if !content.starts_with(PREFIX.as_bytes()) {
                    opened.volumes[slot_index].push((key, content));
                    continue;
                }
                // Not UTF-8 cannot be a sealed value: it fails to parse and is refused, rather
                // than handed to the app as if it were plaintext.
                let sealed = String::from_utf8_lossy(&content).into_owned();
                let source = volume.secret.clone().map(|s| (s, key.clone()));
                let origin = Origin::File {
                    dir: volume.dir.clone(),
                    key: key.clone(),
                };
                let resolved = discover::resolve(origin, sealed, source, &self.namespace)?;
                push(resolved, Slot::File(slot_index, key), &mut opened);
            }
        }
        if !items.is_empty() {
            let outcome = self.keyd.unseal(&items, deadline).await?;
            for ((item, slot), result) in items.into_iter().zip(slots).zip(outcome) {
                let result = result.and_then(|plaintext| match slot {
                    Slot::Env(_) if plaintext.contains(&0) => Err("the plaintext holds a NUL \
                         byte, which an environment variable cannot carry; mount it as a file \
                         instead"
                        .to_string()),
                    _ => Ok(plaintext),
                });
                match (result, slot) {
                    (Ok(plaintext), Slot::Env(var)) => opened.env.push((var, plaintext)),
                    (Ok(plaintext), Slot::File(v, key)) => opened.volumes[v].push((key, plaintext)),
                    (Err(reason), _) => opened.refused.push(Refusal {
                        origin: item.origin,
                        secret: format!("{}/{}", item.location.namespace, item.location.secret),
                        key: item.location.key,
                        reason,
                    }),
                }
            }
        }
        for files in &mut opened.volumes {
            files.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(opened)
    }

    /// Fails with the refusals unless `--allow-missing`, which logs each and goes on without
    /// those values.
    pub fn check_refusals(&self, refused: Vec<Refusal>) -> Result<(), RunError> {
        if refused.is_empty() {
            return Ok(());
        }
        if !self.allow_missing {
            return Err(RunError::Refused(refused));
        }
        for r in &refused {
            tracing::warn!(
                secret = %r.secret,
                key = %r.key,
                origin = %r.origin,
                reason = %r.reason,
                "--allow-missing: going on without a value keyd refused"
            );
        }
        Ok(())
    }
}

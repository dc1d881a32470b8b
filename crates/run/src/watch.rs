//! Watching mounted Secrets: every `--watch-interval`, each volume's `..data` link is read
//! (polling, because inotify does not exist inside Gramine or Occlum). When the kubelet has
//! swapped it, the new version is unsealed in one batch and written to `--out` atomically,
//! then the supervisor is told. On failure the old files stay: keyd unreachable is retried at
//! the next tick, a refusal only when `..data` changes again (asking again would only be refused
//! and audited again).

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::batch::Context;
use crate::error::RunError;
use crate::{outdir, volume};

/// Polls the volumes of `context` whose starting versions are `versions` (indexed like
/// `context.volumes`; `None`: not a kubelet layout, not watched) until `changes` is closed.
pub async fn watch(
    context: Arc<Context>,
    versions: Vec<Option<OsString>>,
    interval: Duration,
    changes: mpsc::Sender<()>,
) {
    let mut current = versions;
    let mut failed: Vec<Option<OsString>> = vec![None; current.len()];
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = changes.closed() => return,
        }
        let mut changed = false;
        for index in 0..current.len() {
            if current[index].is_none() {
                continue;
            }
            let dir = &context.volumes[index].dir;
            let seen = match volume::version(dir) {
                Ok(Some(seen)) => seen,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read ..data");
                    continue;
                }
            };
            if Some(&seen) == current[index].as_ref() || Some(&seen) == failed[index].as_ref() {
                continue;
            }
            match refresh(&context, index).await {
                Ok(version) => {
                    tracing::info!(dir = %dir.display(), "mounted Secret changed; --out updated");
                    current[index] = version;
                    failed[index] = None;
                    changed = true;
                }
                Err(e) => {
                    tracing::error!(
                        dir = %dir.display(),
                        error = %e,
                        "cannot update --out for a changed Secret; the app keeps the previous values"
                    );
                    if matches!(e, RunError::Refused(_) | RunError::KeydRefused { .. }) {
                        failed[index] = Some(seen);
                    }
                }
            }
        }
        // One pending notice covers any number of changes the supervisor has not acted on yet.
        if changed && changes.try_send(()).is_err() && changes.is_closed() {
            return;
        }
    }
}

/// Reads, unseals and writes the current version of volume `index`; returns its version.
async fn refresh(context: &Context, index: usize) -> Result<Option<OsString>, RunError> {
    let volume = &context.volumes[index];
    let snapshot = volume::read(&volume.dir)?;
    let version = snapshot.version.clone();
    let mut opened = context
        .open(Vec::new(), vec![(index, snapshot)], Duration::ZERO)
        .await?;
    context.check_refusals(std::mem::take(&mut opened.refused))?;
    outdir::write_version(&volume.out, &opened.volumes[0])?;
    Ok(version)
}

//! `coffer run`: the first process inside a workload's TEE.
//!
//! The kubelet delivers a pod's Secrets as it always does — environment variables
//! (`secretKeyRef`, `envFrom`) and mounted Secret volumes (the `..data` symlink layout) — but
//! their values are sealed (`coffer.v1.…`, see `coffer-sealed`), so the node only ever holds
//! ciphertext. `coffer run`:
//!
//! 1. finds the sealed values ([`discover`], [`volume`]) and the pod's namespace;
//! 2. attests to `coffer keyd` with this platform's evidence and unseals them all in one
//!    batched call ([`unseal`]), retrying an unreachable keyd with backoff up to a deadline;
//! 3. writes unsealed files only into TEE-private memory ([`outdir`]) and starts the app with
//!    the plaintext environment ([`supervise`]): it forwards signals, propagates the exit code
//!    and reaps orphans;
//! 4. watches the mounted Secrets and, when the kubelet swaps `..data`, re-unseals, replaces
//!    the files atomically and tells the app ([`watch`]).
//!
//! Plaintext is never written or logged anywhere but the app's environment and `--out`.

#![deny(missing_docs)]

pub mod batch;
pub mod config;
pub mod discover;
pub mod error;
pub mod outdir;
pub mod supervise;
pub mod unseal;
pub mod volume;
pub mod watch;

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use zeroize::Zeroizing;

pub use config::{EnvSource, FilesSource, OnChange, RunConfig};
pub use error::{
    Origin, Refusal, RunError, EXIT_CONFIG, EXIT_INTERNAL, EXIT_REFUSED, EXIT_UNAVAILABLE,
};
pub use supervise::{EXIT_APP_NOT_EXECUTABLE, EXIT_APP_NOT_FOUND};

use batch::{Context, Volume};

/// How long a restart (`--on-change restart`) waits for the app to stop before SIGKILL.
pub const RESTART_GRACE: Duration = Duration::from_secs(10);

/// Runs `coffer run` to the end: unseals, starts the app, supervises it until it exits.
/// Returns the process exit code: the app's own (128 + N when a signal N killed it), or one
/// of the `EXIT_*` codes of [`error`] when `coffer run` itself could not start the app.
pub async fn run(config: RunConfig) -> Result<i32, RunError> {
    let Some((program, args)) = config.app.split_first() else {
        return Err(RunError::BadFlag {
            flag: "--",
            value: String::new(),
            reason: "no app to start: give it after `--`".into(),
        });
    };
    if !config.files.is_empty() && config.out.is_none() {
        return Err(RunError::FilesWithoutOut);
    }
    let out = match &config.out {
        Some(out) => Some(outdir::prepare(
            out,
            config.platform.kind(),
            config.allow_unprotected_out,
        )?),
        None => None,
    };
    if config.platform.kind() == coffer_platform::PlatformKind::SgxGramine
        && !config.files.is_empty()
        && matches!(config.on_change, OnChange::Signal(_))
    {
        // Gramine keeps a tmpfs per process: the app got a copy of --out when it started and
        // never sees the files replaced in coffer run's copy.
        tracing::warn!(
            "--on-change signal on sgx-gramine: the app's tmpfs is its own copy and will not show \
             the new files; use --on-change restart"
        );
    }
    let volumes = match &out {
        Some(out) => volumes(&config.files, out)?,
        None => Vec::new(),
    };
    let context = Arc::new(Context {
        keyd: unseal::Keyd {
            addrs: config.keyd.clone(),
            policy: config.keyd_policy.clone(),
            verify_options: config.verify_options.clone(),
            platform: config.platform.clone(),
            timeout: config.keyd_timeout,
        },
        namespace: config.namespace.clone(),
        env_sources: config.env_sources.clone(),
        volumes,
        allow_missing: config.allow_missing,
    });

    let started = Instant::now();
    let sealed_env = discover::sealed_env(std::env::vars_os());
    let sealed_env = if config.env {
        sealed_env
    } else {
        if !sealed_env.is_empty() {
            tracing::warn!(
                variables = %sealed_env.iter().map(|(v, _)| v.as_str()).collect::<Vec<_>>().join(","),
                "environment variables hold sealed values but --env is not given: the app gets \
                 them sealed"
            );
        }
        Vec::new()
    };
    let sealed_vars: HashSet<String> = sealed_env.iter().map(|(v, _)| v.clone()).collect();
    let snapshots = context
        .volumes
        .iter()
        .map(|v| volume::read(&v.dir))
        .collect::<Result<Vec<_>, _>>()?;
    let versions: Vec<_> = snapshots.iter().map(|s| s.version.clone()).collect();
    let sealed_files = snapshots
        .iter()
        .flat_map(|s| &s.files)
        .filter(|(_, content)| content.starts_with(coffer_sealed::PREFIX.as_bytes()))
        .count();
    if sealed_vars.is_empty() && sealed_files == 0 {
        tracing::info!("no sealed value found; starting the app without contacting keyd");
    }
    let mut opened = context
        .open(
            sealed_env,
            snapshots.into_iter().enumerate().collect(),
            config.keyd_deadline,
        )
        .await?;
    context.check_refusals(std::mem::take(&mut opened.refused))?;
    for (volume, files) in context.volumes.iter().zip(&opened.volumes) {
        outdir::write_version(&volume.out, files)?;
    }
    if sealed_vars.len() + sealed_files > 0 {
        tracing::info!(
            env = opened.env.len(),
            files = sealed_files,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "unsealed the pod's values; starting the app"
        );
    }
    let env = app_env(std::env::vars_os(), &sealed_vars, opened.env);

    let (changes, receiver) = mpsc::channel(1);
    let watcher = versions.iter().any(Option::is_some).then(|| {
        tokio::spawn(watch::watch(
            context.clone(),
            versions,
            config.watch_interval,
            changes.clone(),
        ))
    });
    let app = supervise::App {
        program: program.clone(),
        args: args.to_vec(),
        env,
    };
    let code = supervise::supervise(app, receiver, config.on_change, RESTART_GRACE).await;
    if let Some(watcher) = watcher {
        watcher.abort();
    }
    drop(changes);
    code
}

/// The `--files` volumes, each copied to `OUT/<basename>`; two with the same basename are
/// refused.
fn volumes(files: &[FilesSource], out: &Path) -> Result<Vec<Volume>, RunError> {
    let mut seen: Vec<(OsString, PathBuf)> = Vec::new();
    let mut volumes = Vec::new();
    for source in files {
        let name = source
            .dir
            .file_name()
            .ok_or_else(|| RunError::BadFlag {
                flag: "--files",
                value: source.dir.display().to_string(),
                reason: "the directory needs a name: --out holds each volume under its \
                         directory's name"
                    .into(),
            })?
            .to_os_string();
        if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
            return Err(RunError::BadFlag {
                flag: "--files",
                value: source.dir.display().to_string(),
                reason: format!(
                    "{} has the same directory name; --out holds each volume under its \
                     directory's name, so mount them at paths with different last components",
                    first.display()
                ),
            });
        }
        seen.push((name.clone(), source.dir.clone()));
        volumes.push(Volume {
            dir: source.dir.clone(),
            secret: source.secret.clone(),
            out: out.join(name),
        });
    }
    Ok(volumes)
}

/// The app's environment: the inherited one, with each sealed variable replaced by its
/// plaintext, or left out when it was not unsealed (refused under `--allow-missing`).
fn app_env(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    sealed: &HashSet<String>,
    unsealed: Vec<(String, Zeroizing<Vec<u8>>)>,
) -> Vec<(OsString, Zeroizing<Vec<u8>>)> {
    use std::os::unix::ffi::OsStringExt;
    let mut env: Vec<(OsString, Zeroizing<Vec<u8>>)> = inherited
        .into_iter()
        .filter(|(name, _)| name.to_str().is_none_or(|n| !sealed.contains(n)))
        .map(|(name, value)| (name, Zeroizing::new(value.into_vec())))
        .collect();
    env.extend(
        unsealed
            .into_iter()
            .map(|(name, value)| (OsString::from(name), value)),
    );
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_variables_are_replaced_or_left_out() {
        let inherited = [
            ("PATH".into(), "/bin".into()),
            ("A".into(), "coffer.v1.x".into()),
            ("B".into(), "coffer.v1.y".into()),
        ];
        let sealed: HashSet<String> = ["A".to_string(), "B".to_string()].into();
        let env = app_env(
            inherited,
            &sealed,
            vec![("A".into(), Zeroizing::new(b"plain".to_vec()))],
        );
        let names: Vec<_> = env.iter().map(|(n, _)| n.to_str().unwrap()).collect();
        assert_eq!(names, ["PATH", "A"]);
        assert_eq!(env[1].1.as_slice(), b"plain");
    }

    #[test]
    fn two_volumes_with_one_name_are_refused() {
        let files = [
            FilesSource {
                secret: None,
                dir: "/a/db".into(),
            },
            FilesSource {
                secret: None,
                dir: "/b/db".into(),
            },
        ];
        let e = volumes(&files, Path::new("/out")).unwrap_err();
        assert!(e.to_string().contains("/a/db"), "{e}");
        assert_eq!(e.exit_code(), EXIT_CONFIG);
    }
}

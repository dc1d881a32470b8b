//! Starting and restoring keyd replicas whose state is in etcd: `keyd serve --init --store
//! etcd` (initialise only if etcd holds no keyd yet; with `--join`, join one that it holds) and
//! `keyd recover --store etcd` when every replica's data directory was lost.
//!
//! etcd's `keyd-root.json` record says whether a keyd exists under the prefix. Its value opens
//! only with that keyd's root, so a replica without a root can see that it exists but not
//! whose it is: it either joins a running replica or, from recovery shares, rebuilds the root
//! that opens it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keyd::{
    KeydConfig, KeydError, KeydRoot, RecoveredRoot, SealingKeyError, SharedState, SharedStateError,
    SharedStore, ROOT_FILE,
};
use coffer_keyd_store::{EtcdStore, SealedStore, StateStore, StoreError, StoreKey, Swap};
use coffer_platform::Access;

use crate::keyd::{KeydServeArgs, RecoverArgs};
use crate::keyd_etcd::StoreKind;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Refuses `serve` flag combinations that cannot mean anything: `--init --join` only makes
/// sense where etcd says which of the two applies.
pub(crate) fn check_init_and_join(args: &KeydServeArgs) -> Result<(), Error> {
    if args.join.join.is_none() {
        return Ok(());
    }
    if args.init && args.shared.store == StoreKind::Dir {
        return Err(
            "--init and --join exclude each other with --store dir: a data directory is \
                    either initialised here (--init) or receives a running replica's root \
                    (--join). With --store etcd, --init --join initialises only if etcd holds \
                    no keyd yet, and joins otherwise"
                .into(),
        );
    }
    if !args.init && !args.recovery.recovery_keys.is_empty() {
        return Err(
            "--recovery-key needs --init: a replica that joins receives keyd's existing \
                    root, whose recovery shares were made when keyd was initialised"
                .into(),
        );
    }
    Ok(())
}

/// `serve --init --store etcd`: makes sure this replica has keyd's root and etcd has its
/// record, then creates the configured keyrings missing in etcd (never in the data directory).
pub(crate) async fn init_on_etcd(
    args: &KeydServeArgs,
    config: &KeydConfig,
    policy: Arc<Policy>,
    verify_options: VerifyOptions,
) -> Result<(), Error> {
    let shared = connect(args).await?;
    let data_dir = &args.store.data_dir;
    let prefix = shared.prefix.trim_end_matches('/').to_string();
    let root_key = coffer_keyd_store::record_key(&shared.prefix, ROOT_FILE)?;
    // The shares of a root this run initialised, which it removes if it loses the race.
    let mut initialised = None;
    if !data_dir.join(ROOT_FILE).exists() {
        if shared.etcd.get(&root_key).await?.is_some() {
            if args.join.join.is_none() {
                return Err(format!(
                    "etcd prefix {prefix} already holds a keyd's state (its {ROOT_FILE} record, \
                     readable only with that keyd's root): start this replica with --join PEERS \
                     to receive the root from a running replica"
                )
                .into());
            }
            tracing::info!(%prefix, "--init --join: etcd already holds keyd; joining a running replica");
            crate::keyd_join::join_on_first_start(&args.store, &args.join, policy, verify_options)
                .await?;
        } else {
            tracing::info!(%prefix, data_dir = %data_dir.display(), "--init: etcd holds no keyd yet; initialising");
            initialised = Some(crate::keyd::initialise(&args.store, &args.recovery)?);
        }
    }
    let platform = args.store.platform(Access::ExistingOnly)?;
    let root = KeydRoot::open(data_dir, platform.as_ref())?;
    let records = SealedStore::new(
        shared.etcd.clone(),
        StoreKey::new(root.state_store_key()),
        &shared.prefix,
    )?;
    match initialised {
        Some(shares) => publish_new_root(data_dir, &records, &shares).await?,
        // Killed between initialising the data directory and writing the record: finish. A
        // record written meanwhile by someone else is judged by `SharedState::open`.
        None if shared.etcd.get(&root_key).await?.is_none() => {
            if let Swap::Done { .. } = crate::keyd_migrate::publish_root(data_dir, &records).await?
            {
                tracing::info!(%prefix, "--init: wrote keyd's root record to etcd");
            }
        }
        None => {}
    }
    // Another keyd's record is refused here, before anything is written under its prefix.
    let state = SharedState::open(shared, &root, platform).await?;
    create_missing_keyrings(&state, config).await
}

async fn connect(args: &KeydServeArgs) -> Result<SharedStore, Error> {
    Ok(args
        .shared
        .connect()
        .await?
        .ok_or("--store etcd did not connect to etcd")?)
}

/// Writes the root this run just initialised as etcd's root record. If another replica wrote
/// one first, removes the root file and the `shares` this run made: this replica is then as
/// it was before, and joins when restarted with `--join`.
async fn publish_new_root(
    data_dir: &Path,
    records: &SealedStore<EtcdStore>,
    shares: &[PathBuf],
) -> Result<(), Error> {
    match crate::keyd_migrate::publish_root(data_dir, records).await? {
        Swap::Done { .. } => {
            tracing::info!(prefix = %records.prefix(), "--init: wrote keyd's root record to etcd");
            Ok(())
        }
        Swap::Conflict { .. } => {
            for path in shares
                .iter()
                .map(PathBuf::as_path)
                .chain([data_dir.join(ROOT_FILE).as_path()])
            {
                if let Err(e) = std::fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove what this --init made");
                }
            }
            Err(
                "another replica initialised keyd at the same time; restart this one with \
                 --join: it will join"
                    .into(),
            )
        }
    }
}

/// Creates every keyring `config` names that etcd does not hold, and the first sealing key of
/// one that has none. Another replica creating the same keyring at once is not an error.
async fn create_missing_keyrings(state: &SharedState, config: &KeydConfig) -> Result<(), Error> {
    let existing = state.keyring_names().await?;
    for name in config.keyrings.keys() {
        if !existing.contains(name) {
            match state.create_keyring(name).await {
                Ok(created) => {
                    tracing::info!(keyring = %name, key_id = %created.kek_id, sealing_key_id = %created.sealing_key_id, "--init: created keyring in etcd");
                }
                Err(KeydError::SharedState(SharedStateError::KeyringExists { .. })) => {}
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        match state.sealing_info(name).await {
            Ok(_) => {}
            Err(KeydError::SealingKeys(SealingKeyError::Missing { .. })) => {
                let key = state.rotate_sealing_key(name).await?.key;
                tracing::info!(keyring = %name, sealing_key_id = %key.id, "--init: created the keyring's first sealing key in etcd");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `keyd recover --store etcd` into a data directory without a root: the root from the shares,
/// its public facts from etcd's root record (which only that root opens), sealed to this
/// platform. Nothing is written unless the record opens and matches.
pub(crate) fn recover_from_etcd(args: &RecoverArgs) -> Result<ExitCode, Error> {
    let shares = crate::keyd::read_shares(&args.shares)?;
    let keys = crate::keyd::read_operator_keys(&args.operator_keys)?;
    let instance_id = shares
        .first()
        .map(|s| s.instance_id.clone())
        .ok_or("pass at least one --share")?;
    if let Some(other) = shares.iter().find(|s| s.instance_id != instance_id) {
        return Err(format!(
            "the --share files belong to different keyds ({instance_id} and {}): pass shares of one keyd",
            other.instance_id
        )
        .into());
    }
    let opened = coffer_keyd::open_shares(&instance_id, &shares, &keys)?;
    let recovered = RecoveredRoot::combine(&instance_id, &opened)?;
    let prefix = args
        .shared
        .etcd
        .etcd_prefix
        .trim_end_matches('/')
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let handed = runtime.block_on(async {
        let shared = args
            .shared
            .connect()
            .await?
            .ok_or("--store etcd did not connect to etcd")?;
        let records = SealedStore::new(
            shared.etcd,
            StoreKey::new(recovered.state_store_key()),
            &shared.prefix,
        )?;
        let record = match records.get(ROOT_FILE).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                return Err(format!(
                    "etcd prefix {prefix} holds no {ROOT_FILE} record: there is no keyd state to \
                     recover there (check --etcd-endpoints and --etcd-prefix); nothing was written"
                )
                .into())
            }
            Err(StoreError::Format(e)) => {
                return Err(format!(
                    "{e}: the shares belong to another keyd or the etcd prefix {prefix} is \
                     another keyd's; nothing was written"
                )
                .into())
            }
            Err(e) => return Err(Error::from(e)),
        };
        let source = PathBuf::from(format!("etcd:{prefix}/{ROOT_FILE}"));
        Ok::<_, Error>(recovered.with_root_file(&source, &record.plaintext)?)
    })?;
    let platform = args.store.platform(Access::CreateIfMissing)?;
    let (root, _) = KeydRoot::adopt(&args.store.data_dir, platform.as_ref(), &handed)?;
    println!(
        "recovered keyd {} from etcd prefix {prefix} into {}: its root is now sealed to this {} \
         platform; serve it with --store etcd",
        root.instance_id(),
        args.store.data_dir.display(),
        platform.kind().name()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[path = "keyd_bootstrap_tests.rs"]
mod tests;

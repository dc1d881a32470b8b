//! `coffer keyd join` and `coffer keyd serve --join`: a new keyd replica receives keyd's root
//! from a running replica over mutual attested TLS, and seals it to its own platform.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keyd::{Adoption, JoinOptions, KEYD_PEER_ROLE};
use coffer_keyd_client::KeydAddrs;
use coffer_platform::Access;

use crate::attest::SourceArgs;
use crate::keyd::KeydStoreArgs;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Args, Debug)]
pub struct JoinArgs {
    #[command(flatten)]
    pub store: KeydStoreArgs,
    /// Running keyd replicas to receive keyd's root from: HOST:PORT, comma-separated; a name
    /// may resolve to several (a headless Service). Tried in turn until one hands it over.
    /// Each peer's --policy must grant the keyd-peer role to this replica's measurement (and
    /// --policy here must grant keyd-peer to the peer's).
    #[arg(long, value_name = "HOST:PORT[,…]")]
    pub peer: KeydAddrs,
    /// Attestation policy (keyd serve's --policy): a peer is trusted only if it grants the
    /// peer's evidence the keyd-peer role.
    #[arg(long)]
    pub policy: PathBuf,
    /// Join only the keyd with this instance id (`keyd-…`, from `coffer keyd status` on a
    /// running replica); a replica of another keyd refuses.
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,
    /// Keep retrying peers that do not answer (with backoff) this long, then fail; a round in
    /// which every peer refused fails at once. A duration such as 2m; 1s to 1h.
    #[arg(long, default_value = "2m", value_parser = crate::duration::within(
        Duration::from_secs(1),
        Duration::from_secs(3600),
    ))]
    pub timeout: Duration,
    #[command(flatten)]
    pub sources: SourceArgs,
}

/// `keyd serve`'s flags for joining on first start.
#[derive(Args, Debug, Clone)]
pub struct ServeJoinArgs {
    /// On first start (no keyd-root.json in --data-dir), receive keyd's root from these
    /// running replicas instead of initialising, then serve: HOST:PORT, comma-separated; a
    /// name may resolve to several (a headless Service). Each peer's --policy must grant the
    /// keyd-peer role to this replica's measurement (and --policy here must grant keyd-peer
    /// to the peer's). A data directory that has a root is served as it is. With --store
    /// etcd, --init --join initialises only if etcd holds no keyd yet, and joins otherwise.
    #[arg(long, value_name = "HOST:PORT[,…]")]
    pub join: Option<KeydAddrs>,
    /// With --join: keep retrying peers that do not answer this long before giving up (1s to
    /// 1h).
    #[arg(long, default_value = "2m", requires = "join", value_parser = crate::duration::within(
        Duration::from_secs(1),
        Duration::from_secs(3600),
    ))]
    pub join_timeout: Duration,
    /// With --join: join only the keyd with this instance id (`keyd-…`).
    #[arg(long, value_name = "ID", requires = "join")]
    pub join_instance_id: Option<String>,
}

/// `coffer keyd join`.
pub fn run(args: JoinArgs) -> Result<ExitCode, Error> {
    // The process holds keyd's root: keep it out of core dumps, as keyd serve does.
    if let Err(e) = coffer_platform::process::harden() {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    let policy = Arc::new(Policy::load(&args.policy)?);
    let verify_options = args.sources.options(SystemTime::now())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(join(
        &args.store,
        &args.peer,
        policy,
        verify_options,
        args.instance_id.clone(),
        args.timeout,
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `serve --join`: joins when the data directory has no root yet; a no-op otherwise.
pub async fn join_on_first_start(
    store: &KeydStoreArgs,
    flags: &ServeJoinArgs,
    policy: Arc<Policy>,
    verify_options: VerifyOptions,
) -> Result<(), Error> {
    let Some(peers) = &flags.join else {
        return Ok(());
    };
    if has_root(&store.data_dir) {
        tracing::info!(data_dir = %store.data_dir.display(), "--join: the data directory already has keyd's root; serving it");
        return Ok(());
    }
    tracing::info!(peers = %peers, "--join: no root yet; joining a running replica");
    join(
        store,
        peers,
        policy,
        verify_options,
        flags.join_instance_id.clone(),
        flags.join_timeout,
    )
    .await
}

fn has_root(data_dir: &Path) -> bool {
    data_dir.join(coffer_keyd::ROOT_FILE).exists()
}

async fn join(
    store: &KeydStoreArgs,
    peers: &KeydAddrs,
    policy: Arc<Policy>,
    verify_options: VerifyOptions,
    instance_id: Option<String>,
    timeout: Duration,
) -> Result<(), Error> {
    if policy.only_role(KEYD_PEER_ROLE).is_none() {
        return Err(format!(
            "--policy defines no {KEYD_PEER_ROLE} role: a new replica trusts only a peer its policy grants {KEYD_PEER_ROLE} (add a {KEYD_PEER_ROLE} role naming the keyd replicas' measurement; the peers need it in theirs too)"
        )
        .into());
    }
    let platform = store.platform(Access::CreateIfMissing)?;
    let joined = coffer_keyd::join(JoinOptions {
        peers: peers.clone(),
        platform: platform.clone(),
        policy,
        verify_options,
        data_dir: store.data_dir.clone(),
        instance_id,
        timeout,
    })
    .await?;
    match joined.adoption {
        Adoption::Written => println!(
            "joined keyd {} through {}: its root is now sealed to this {} platform in {}",
            joined.root.instance_id(),
            joined.peer,
            platform.kind().name(),
            store.data_dir.display()
        ),
        Adoption::AlreadyPresent => println!(
            "{} already holds keyd {}'s root, sealed to this platform: nothing to do",
            store.data_dir.display(),
            joined.root.instance_id()
        ),
    }
    Ok(())
}

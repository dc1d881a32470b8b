//! `coffer keyd config`: keyd's configuration (its grants) as a record in etcd, which replicas
//! started with `--config etcd:` serve and apply when it changes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use coffer_attest::policy::Policy;
use coffer_keyd::KeydConfig;

use crate::keyd::{etcd_state, KeydStoreArgs};
use crate::keyd_etcd::SharedStoreArgs;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The `--config` value that means "the configuration stored in etcd".
pub const FROM_STORE: &str = "etcd:";

/// Where `keyd serve` reads its configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A YAML file, read once at start.
    File(PathBuf),
    /// The record in etcd (`--config etcd:`), applied again whenever it changes.
    Store,
}

/// Parses `--config`: `etcd:` or a file.
pub fn parse_config_source(arg: &str) -> Result<ConfigSource, String> {
    match arg {
        FROM_STORE => Ok(ConfigSource::Store),
        "" => Err(format!(
            "give a YAML file, or {FROM_STORE} for the configuration stored in etcd"
        )),
        file => Ok(ConfigSource::File(PathBuf::from(file))),
    }
}

/// keyd's configuration in etcd.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Check FILE (YAML, as for `keyd serve --config FILE`) and store it in etcd as keyd's
    /// configuration, encrypted under keyd's root; replicas serving `--config etcd:` apply its
    /// grants within seconds. Prints what changed and the new revision.
    Push(Box<PushArgs>),
    /// Print the configuration stored in etcd and its revision.
    Show(Box<ShowArgs>),
}

/// `keyd config show`.
#[derive(Args, Debug)]
pub struct ShowArgs {
    #[command(flatten)]
    pub store: KeydStoreArgs,
    #[command(flatten)]
    pub shared: SharedStoreArgs,
}

/// `keyd config push`.
#[derive(Args, Debug)]
pub struct PushArgs {
    #[command(flatten)]
    pub store: KeydStoreArgs,
    #[command(flatten)]
    pub shared: SharedStoreArgs,
    /// The configuration (YAML).
    pub file: PathBuf,
    /// The replicas' attestation policy: refuse a grant to a role it does not define, as
    /// `keyd serve` does.
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<PathBuf>,
}

/// Runs a `keyd config` subcommand.
pub fn run(command: ConfigCommand) -> Result<ExitCode, Error> {
    match command {
        ConfigCommand::Push(args) => push(*args),
        ConfigCommand::Show(args) => {
            let ShowArgs { store, shared } = *args;
            let (runtime, state) = etcd_state(&store, &shared)?.ok_or(NEEDS_ETCD)?;
            let (text, revision) = runtime.block_on(state.config_text())?.ok_or_else(|| {
                coffer_keyd::SharedStateError::NoConfig {
                    prefix: shared.etcd.etcd_prefix.clone(),
                }
            })?;
            println!("# keyd configuration in etcd, revision {revision}");
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

const NEEDS_ETCD: &str = "keyd's configuration is stored only in etcd: give --store etcd --etcd-endpoints host:port (with a data directory, `keyd serve --config FILE` reads the file)";

fn push(args: PushArgs) -> Result<ExitCode, Error> {
    let config = KeydConfig::load(&args.file)?;
    if let Some(path) = &args.policy {
        let policy = Policy::load(path)?;
        config
            .check_roles(&policy, &format!("--policy {}", path.display()))
            .map_err(|m| format!("{}: {m}", args.file.display()))?;
    }
    // The bytes checked above, stored as they are (comments and all).
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| format!("reading {}: {e}", args.file.display()))?;
    if KeydConfig::from_yaml(&text)? != config {
        return Err(format!(
            "{} changed while it was read; run again",
            args.file.display()
        )
        .into());
    }
    let (runtime, state) = etcd_state(&args.store, &args.shared)?.ok_or(NEEDS_ETCD)?;
    let (previous, revision) = runtime.block_on(state.push_config(&text))?;
    let changes = match previous.as_deref().map(KeydConfig::from_yaml) {
        None => KeydConfig::default().changes(&config),
        Some(Ok(old)) => old.changes(&config),
        Some(Err(_)) => vec!["replaced a stored configuration that did not parse".to_string()],
    };
    for line in &changes {
        println!("{line}");
    }
    if changes.is_empty() {
        println!("no grant changed");
    }
    println!("stored keyd's configuration in etcd at revision {revision}; replicas serving --config etcd: apply it within seconds (a keyring added is served after a restart)");
    Ok(ExitCode::SUCCESS)
}

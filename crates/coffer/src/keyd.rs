//! `coffer keyd`: the central key service (keyrings in a TEE, served over mutual attested TLS).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use coffer_attest::policy::Policy;
use coffer_keyd::{KeydConfig, KeydServeOptions};
use coffer_platform::{open_platform, Access, PlatformChoice};

use crate::attest::SourceArgs;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Subcommand, Debug)]
pub enum KeydCommand {
    /// Serve the key service on TCP with mutual attested TLS. Callers get roles from --policy;
    /// --config says which roles may wrap, unwrap, rotate, … on which keyring.
    Serve(Box<KeydServeArgs>),
    /// Keyrings (one per cluster or tenant), each a list of KEKs sealed to keyd's platform.
    #[command(subcommand)]
    Keyring(KeyringCommand),
    /// keyd's audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// Where keyd keeps its state and which TEE protects it.
#[derive(Args, Debug, Clone)]
pub struct KeydStoreArgs {
    /// TEE platform (auto, sim, sgx-gramine, sgx-occlum, tdx, snp).
    #[arg(long, default_value = "auto", env = "COFFER_PLATFORM")]
    pub platform: PlatformChoice,
    /// keyd's data directory (keyrings under `keyrings/<name>/`).
    #[arg(
        long,
        default_value = "/var/lib/coffer-keyd",
        env = "COFFER_KEYD_DATA_DIR"
    )]
    pub data_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct KeydServeArgs {
    #[command(flatten)]
    pub store: KeydStoreArgs,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// Attestation policy mapping callers' evidence to roles.
    #[arg(long)]
    pub policy: PathBuf,
    /// keyd configuration: per keyring, the roles allowed for each operation.
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub sources: SourceArgs,
}

#[derive(Subcommand, Debug)]
pub enum KeyringCommand {
    /// Create a keyring with its first KEK, generated and sealed inside keyd's TEE.
    Create {
        #[command(flatten)]
        store: KeydStoreArgs,
        /// Keyring name: lowercase letters, digits and '-', at most 63.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check an audit log's hash chain (edits, deletions, reordering, truncation).
    Verify {
        /// The audit log (JSON lines).
        log: PathBuf,
        /// Fail if the log's head file is missing (it detects truncation at the end).
        #[arg(long)]
        require_head: bool,
    },
}

/// Runs a keyd subcommand.
pub fn run(command: KeydCommand) -> Result<ExitCode, Error> {
    match command {
        KeydCommand::Keyring(KeyringCommand::Create { store, name }) => {
            let platform = open_platform(store.platform, &store.data_dir, Access::CreateIfMissing)?;
            let key_id = coffer_keyd::create_keyring(&store.data_dir, platform, &name)?;
            println!("created keyring {name} with primary KEK {key_id}");
            Ok(ExitCode::SUCCESS)
        }
        KeydCommand::Audit(AuditCommand::Verify { log, require_head }) => {
            let options = coffer_audit::VerifyOptions {
                head: if require_head {
                    coffer_audit::HeadCheck::Require
                } else {
                    coffer_audit::HeadCheck::IfPresent
                },
                ..Default::default()
            };
            let report = coffer_audit::verify(&log, &options)?;
            println!(
                "{}: chain intact, {} records (seq {}..{}), last hash {}",
                log.display(),
                report.lines,
                report.first_seq,
                report.last_seq,
                report.last_hash
            );
            Ok(ExitCode::SUCCESS)
        }
        KeydCommand::Serve(args) => serve(*args),
    }
}

fn serve(args: KeydServeArgs) -> Result<ExitCode, Error> {
    if let Err(e) = coffer_platform::process::harden() {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    let platform = open_platform(
        args.store.platform,
        &args.store.data_dir,
        Access::ExistingOnly,
    )?;
    let policy = Arc::new(Policy::load(&args.policy)?);
    let config = KeydConfig::load(&args.config)?;
    let verify_options = args.sources.options(SystemTime::now())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .thread_name("coffer-keyd")
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("listening on {}: {e}", args.listen))?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "coffer keyd serving (mutual attested TLS)");
        eprintln!("coffer keyd listening on {addr}");
        let options = KeydServeOptions {
            data_dir: args.store.data_dir.clone(),
            platform,
            policy,
            config,
            verify_options,
            listener,
        };
        coffer_keyd::serve(options, crate::cmd::shutdown_signal()).await?;
        Ok::<_, Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

//! `coffer keyd`: the central key service (keyrings in a TEE, served over mutual attested TLS).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use coffer_attest::policy::Policy;
use coffer_keyd::{KeydConfig, KeydLimits, KeydRoot, KeydServeOptions, RecoveryRequest};
use coffer_platform::{open_platform, Access, Platform, PlatformChoice};
use coffer_recovery::{OperatorPublicKey, OperatorSecretKey, SealedShare};

use crate::attest::SourceArgs;
use crate::keyd_config::ConfigSource;
use crate::keyd_etcd::{SharedStoreArgs, StoreKind};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Largest share or operator key file read.
const MAX_SMALL_FILE: u64 = 64 * 1024;

#[derive(Subcommand, Debug)]
pub enum KeydCommand {
    /// Initialise a data directory: generate keyd's root secret in the TEE, seal it to this
    /// platform, and (with --recovery-key) write k-of-n recovery shares for operators.
    Init(InitArgs),
    /// Serve the key service on TCP with mutual attested TLS. Callers get roles from --policy;
    /// --config says which roles may wrap, unwrap, rotate, … on which keyring.
    Serve(Box<KeydServeArgs>),
    /// Keyrings (one per cluster or tenant), each a list of KEKs sealed under keyd's root.
    #[command(subcommand)]
    Keyring(KeyringCommand),
    /// Make a new primary KEK for a keyring; a running keyd picks it up within seconds and
    /// older KEKs keep decrypting.
    Rotate {
        #[command(flatten)]
        store: KeydStoreArgs,
        #[command(flatten)]
        shared: SharedStoreArgs,
        /// The keyring.
        keyring: String,
    },
    /// A keyring's sealing keys: the HPKE key pairs that Secret values are sealed to
    /// (`kubectl coffer seal`) and that keyd's Unseal opens them with.
    #[command(subcommand)]
    SealingKey(SealingKeyCommand),
    /// Show the data directory: instance id, platform, recovery split, keyrings and their
    /// primary KEKs.
    Status {
        #[command(flatten)]
        store: KeydStoreArgs,
        #[command(flatten)]
        shared: SharedStoreArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore keyd's root on a new platform identity from k recovery shares (after moving the
    /// data directory to a new machine, or a TEE identity change; with --store etcd, into an
    /// empty data directory when every replica was lost).
    Recover(RecoverArgs),
    /// Operator key pairs that recovery shares are sealed to.
    #[command(subcommand)]
    RecoveryKey(RecoveryKeyCommand),
    /// keyd's audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Copy a data directory's keyrings, sealing keys and recovery metadata into etcd as
    /// records encrypted under keyd's root (--to-etcd), or back (--from-etcd). Never replaces
    /// existing state; re-running after a failure finishes the job.
    Migrate(crate::keyd_migrate::MigrateArgs),
    /// Make this data directory a new replica of a running keyd: receive keyd's root from a
    /// replica over mutual attested TLS (this replica's measurement needs the keyd-peer role in
    /// the peer's --policy) and seal it to this platform. Never replaces an existing root.
    Join(Box<crate::keyd_join::JoinArgs>),
    /// keyd's configuration (its grants) stored in etcd, for replicas started with
    /// `--config etcd:`.
    #[command(subcommand)]
    Config(crate::keyd_config::ConfigCommand),
}

/// Where keyd keeps its state and which TEE protects it.
#[derive(Args, Debug, Clone)]
pub struct KeydStoreArgs {
    /// TEE platform (auto, sim, sgx-gramine, sgx-occlum, tdx, snp).
    #[arg(long, default_value = "auto", env = "COFFER_PLATFORM")]
    pub platform: PlatformChoice,
    /// keyd's data directory (`keyd-root.json`, `keyrings/<name>/`, `audit.log`).
    #[arg(
        long,
        default_value = "/var/lib/coffer-keyd",
        env = "COFFER_KEYD_DATA_DIR"
    )]
    pub data_dir: PathBuf,
}

impl KeydStoreArgs {
    /// Opens the platform for this data directory. With [`Access::ExistingOnly`], an
    /// uninitialised directory is named as such (with the command that initialises it) before
    /// the platform's own state is looked for, whose error would name kms's `--state-dir`.
    pub(crate) fn platform(&self, access: Access) -> Result<Arc<dyn Platform>, Error> {
        if access == Access::ExistingOnly && !self.data_dir.join(coffer_keyd::ROOT_FILE).exists() {
            return Err(coffer_keyd::KeydError::NotInitialised {
                data_dir: self.data_dir.clone(),
            }
            .into());
        }
        open_platform(self.platform, &self.data_dir, access).map_err(|e| match e {
            coffer_platform::PlatformError::InvalidFile { ref path, .. } if !path.exists() => {
                format!(
                    "{} does not exist: check --data-dir (the platform keeps its state in \
                     keyd's data directory, beside {})",
                    path.display(),
                    coffer_keyd::ROOT_FILE
                )
                .into()
            }
            e => e.into(),
        })
    }
}

#[derive(Args, Debug)]
pub struct InitArgs {
    #[command(flatten)]
    pub store: KeydStoreArgs,
    #[command(flatten)]
    pub recovery: RecoveryArgs,
}

/// Who gets recovery shares of a root secret (keyd's, or a standalone keystore's), and how many
/// restore it.
#[derive(Args, Debug, Clone)]
pub struct RecoveryArgs {
    /// An operator's recovery public key (`coffer-recovery-pk:…`, from `coffer keyd
    /// recovery-key generate`), or a file holding one; repeat once per operator (n shares).
    #[arg(long = "recovery-key", value_name = "KEY|FILE")]
    pub recovery_keys: Vec<String>,
    /// Shares needed to recover (k). Defaults to a majority of the operators.
    #[arg(long, requires = "recovery_keys")]
    pub recovery_threshold: Option<u8>,
    /// Where to write the sealed shares (`share-<i>-<operator>.json`, never overwritten).
    #[arg(long, default_value = "recovery-shares", requires = "recovery_keys")]
    pub recovery_shares_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct RecoverArgs {
    #[command(flatten)]
    pub store: KeydStoreArgs,
    /// A sealed share file from `coffer keyd init`; repeat (at least k).
    #[arg(long = "share", value_name = "FILE", required = true)]
    pub shares: Vec<PathBuf>,
    /// An operator's secret key file (`coffer-recovery-sk:…`); repeat. Each share is opened
    /// with the key it was sealed to.
    #[arg(long = "operator-key", value_name = "FILE", required = true)]
    pub operator_keys: Vec<PathBuf>,
    /// With --store etcd and no keyd-root.json in --data-dir (every replica was lost): take
    /// keyd's root facts from the keyd-root.json record in etcd, which only the recovered root
    /// opens.
    #[command(flatten)]
    pub shared: SharedStoreArgs,
}

#[derive(Subcommand, Debug)]
pub enum RecoveryKeyCommand {
    /// Generate an operator key pair: the secret key goes to --out (mode 0600, never
    /// overwritten), the public key is printed for `coffer keyd init --recovery-key`.
    Generate {
        /// Where to write the secret key.
        #[arg(long)]
        out: PathBuf,
    },
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
    /// keyd configuration: per keyring, the roles allowed for each operation. A YAML file, or
    /// `etcd:` for the configuration stored in etcd with `coffer keyd config push` (needs
    /// --store etcd; each new version pushed is applied while serving).
    #[arg(long, value_name = "FILE|etcd:", value_parser = crate::keyd_config::parse_config_source)]
    pub config: crate::keyd_config::ConfigSource,
    /// The audit log (JSON lines, HMAC hash chain). Default: <data-dir>/audit.log.
    #[arg(long)]
    pub audit_log: Option<PathBuf>,
    /// Start a new audit segment before the active log exceeds this many bytes; the full one
    /// becomes <audit-log>.000001, .000002, … (at least 65536; default 64 MiB).
    #[arg(
        long,
        default_value_t = coffer_keyd::DEFAULT_AUDIT_SEGMENT_BYTES,
        value_parser = clap::value_parser!(u64).range(coffer_audit::MIN_SEGMENT_BYTES..)
    )]
    pub audit_segment_bytes: u64,
    /// Keep at most this many closed audit segments, removing the oldest (1 to 1000000). The
    /// removal is itself recorded. Default: keep every segment.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub audit_retention_segments: Option<u64>,
    /// Write successful unwraps as one record per caller, keyring and key id per interval, with
    /// a count, instead of one record each (a duration such as 10s or 1m, from 1s to 1h).
    /// Refusals, errors and other operations stay one record each. Default: off.
    #[arg(long, value_parser = crate::duration::within(
        Duration::from_secs(1),
        Duration::from_secs(3600),
    ))]
    pub audit_aggregate_interval: Option<Duration>,
    /// Serve Prometheus /metrics and /healthz on this address (e.g. 127.0.0.1:9465).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Allow --metrics-addr to be a non-loopback address.
    #[arg(long)]
    pub metrics_allow_remote: bool,
    /// Connections open at once (1 to 65536); more are closed right after accept. Connections
    /// that have not attested yet (or whose attestation was refused) may hold at most three
    /// quarters of them, and one address at most 16 of those.
    #[arg(long, default_value_t = KeydLimits::default().max_connections,
          value_parser = crate::cli::connection_count())]
    pub max_connections: usize,
    /// A client must complete the TLS handshake within this time of connecting, or it is
    /// closed; a client whose attestation is refused keeps its connection this long (its calls
    /// are answered PERMISSION_DENIED with the reason). A duration such as 10s; 1s to 60s.
    #[arg(long, default_value = "10s", value_parser = crate::cli::handshake_timeout())]
    pub handshake_timeout: Duration,
    /// Largest gRPC message accepted or sent, in bytes (1024 to 16777216). The default, 2 MiB,
    /// fits a sealed 1 MiB Secret value (Reseal, Unseal); below about 1.5 MiB, large sealed
    /// values are refused with OUT_OF_RANGE.
    #[arg(long, default_value_t = KeydLimits::default().max_message_len,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1024..=16 << 20))]
    pub max_message_bytes: usize,
    /// Sustained calls per second per caller (role and measurement); 0 disables the limit.
    #[arg(long, default_value_t = KeydLimits::default().rate_per_second)]
    pub rate_limit: u32,
    /// Calls a caller may burst above --rate-limit.
    #[arg(long, default_value_t = KeydLimits::default().rate_burst)]
    pub rate_burst: u32,
    /// Sustained key-bundle and Reseal calls per second per remote address (these need no
    /// attestation, so they have their own budget); 0 disables the limit.
    #[arg(long, default_value_t = KeydLimits::default().public_rate_per_second)]
    pub public_rate_per_second: u32,
    /// Key-bundle and Reseal calls an address may burst above --public-rate-per-second.
    #[arg(long, default_value_t = KeydLimits::default().public_rate_burst)]
    pub public_rate_burst: u32,
    /// How long the key bundles keyd serves are valid (clients refuse an expired one); keyd
    /// builds a new one, with fresh evidence, when half of it has passed or the sealing keys
    /// change. A duration such as 30d or 12h; 1h to 365d.
    #[arg(long, default_value = "30d", value_parser = crate::duration::within(
        Duration::from_secs(3600),
        Duration::from_secs(365 * 24 * 3600),
    ))]
    pub key_bundle_validity: Duration,
    /// How long in-flight calls may finish after SIGTERM (a duration such as 10s or 1m30s; 0s
    /// closes them at once).
    #[arg(long, default_value = "10s", value_parser = crate::duration::at_least(Duration::ZERO))]
    pub drain_timeout: Duration,
    /// How often keyring files are checked for rotations made with `coffer keyd rotate` (a
    /// duration such as 2s or 500ms; at least 100ms).
    #[arg(long, default_value = "2s",
          value_parser = crate::duration::at_least(crate::cli::MIN_RELOAD_INTERVAL))]
    pub reload_interval: Duration,
    /// How often keyd makes a new attested TLS certificate (fresh evidence, new key), as a
    /// duration such as 12h; at least 1m and less than 24h, the certificates' validity (callers
    /// refuse an expired one).
    #[arg(long, default_value = "12h", value_parser = crate::duration::between(
        Duration::from_secs(60),
        coffer_ratls::DEFAULT_VALIDITY,
        "not below the certificates' validity",
    ))]
    pub cert_renewal: Duration,
    /// Worker threads of the async runtime (1 to 256).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
    /// On first start, initialise the data directory (as `coffer keyd init`, with the
    /// --recovery-* flags) and create every keyring --config names that does not exist yet
    /// (and the first sealing key of a configured keyring that has none).
    /// For TEEs whose command line is fixed at signing time (Gramine, Occlum) and for
    /// Deployments, where there is no separate init step. With --store etcd, the root is
    /// initialised only if etcd's prefix holds no keyd yet (then its record is written there)
    /// and the keyrings are created in etcd; with --join too, a replica that finds a keyd in
    /// etcd joins it instead (one set of arguments for every pod of a StatefulSet).
    #[arg(long)]
    pub init: bool,
    #[command(flatten)]
    pub recovery: RecoveryArgs,
    #[command(flatten)]
    pub sources: SourceArgs,
    #[command(flatten)]
    pub shared: crate::keyd_etcd::SharedStoreArgs,
    #[command(flatten)]
    pub join: crate::keyd_join::ServeJoinArgs,
    /// This replica's name among the replicas sharing --store etcd (unique; its audit chain is
    /// anchored in etcd under it). Default: the host name (a pod's name).
    #[arg(long, value_name = "NAME", value_parser = crate::keyd_audit::parse_replica_id)]
    pub replica_id: Option<String>,
    /// How often this replica anchors its audit chain head in etcd (with --store etcd), so a
    /// deleted or rewritten tail of its log is detected (`coffer keyd audit verify --etcd-endpoints`).
    #[arg(long, default_value = "10s", value_parser = crate::duration::within(
        Duration::from_secs(1),
        Duration::from_secs(3600),
    ))]
    pub audit_anchor_interval: Duration,
}

#[derive(Subcommand, Debug)]
pub enum KeyringCommand {
    /// Create a keyring with its first KEK, generated inside keyd's TEE and sealed under its
    /// root. The data directory must be initialised (`coffer keyd init`).
    Create {
        #[command(flatten)]
        store: KeydStoreArgs,
        #[command(flatten)]
        shared: SharedStoreArgs,
        /// Keyring name: lowercase letters, digits and '-', at most 63.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum SealingKeyCommand {
    /// Make a new primary sealing key for a keyring, generated inside keyd's TEE and sealed
    /// under its root (the first call gives a keyring created before sealing keys existed its
    /// first key). Clients seal to it once they fetch the new key bundle; values sealed to
    /// older keys keep unsealing until those are retired. A running keyd picks it up within
    /// --reload-interval.
    Rotate {
        #[command(flatten)]
        store: KeydStoreArgs,
        #[command(flatten)]
        shared: SharedStoreArgs,
        /// The keyring.
        #[arg(long)]
        keyring: String,
    },
    /// List a keyring's sealing keys: id, when created, and whether primary (sealed to),
    /// active (still unseals) or retired (its private key is gone).
    List {
        #[command(flatten)]
        store: KeydStoreArgs,
        #[command(flatten)]
        shared: SharedStoreArgs,
        /// The keyring.
        #[arg(long)]
        keyring: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a sealing key's private key for good, keeping its id so callers are told it was
    /// retired. Values still sealed to it can never be unsealed again: reseal them to the
    /// primary first (`kubectl coffer reseal`). The primary cannot be retired (rotate first).
    /// Needs --confirm.
    Retire {
        #[command(flatten)]
        store: KeydStoreArgs,
        #[command(flatten)]
        shared: SharedStoreArgs,
        /// The keyring.
        #[arg(long)]
        keyring: String,
        /// The sealing key to retire (`sk-…`, from `coffer keyd sealing-key list`).
        #[arg(long)]
        key_id: String,
        /// Confirm that values sealed to this key may become unrecoverable.
        #[arg(long)]
        confirm: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// After a crash in the middle of a write (keyd then refuses to start: "line N is
    /// incomplete"), move the incomplete last line into `<log>.partial-<time>` and cut the log
    /// back to its last complete line. Nothing is deleted. Run it while keyd is stopped.
    Repair {
        #[command(flatten)]
        store: KeydStoreArgs,
        /// The audit log. Default: <data-dir>/audit.log.
        log: Option<PathBuf>,
    },
    /// Check an audit log's HMAC hash chain (edits, deletions, reordering, truncation) across
    /// its closed segments (<log>.000001, …) and the active file; with --etcd-endpoints, check
    /// each replica's log (--replica NAME=LOG) against the chain head it anchored in etcd. The
    /// chain key comes from keyd's root, so this runs where keyd's root opens (its TEE).
    Verify(Box<crate::keyd_audit::VerifyArgs>),
}

/// Runs a keyd subcommand.
pub fn run(command: KeydCommand) -> Result<ExitCode, Error> {
    match command {
        KeydCommand::Init(args) => init(args),
        KeydCommand::Migrate(args) => crate::keyd_migrate::run(args),
        KeydCommand::Join(args) => crate::keyd_join::run(*args),
        KeydCommand::Serve(args) => serve(*args),
        KeydCommand::Keyring(KeyringCommand::Create {
            store,
            shared,
            name,
        }) => {
            let created = match etcd_state(&store, &shared)? {
                Some((runtime, state)) => runtime.block_on(state.create_keyring(&name))?,
                None => {
                    let platform = store.platform(Access::ExistingOnly)?;
                    coffer_keyd::create_keyring(&store.data_dir, platform, &name)?
                }
            };
            println!(
                "created keyring {name} with primary KEK {} and sealing key {}",
                created.kek_id, created.sealing_key_id
            );
            Ok(ExitCode::SUCCESS)
        }
        KeydCommand::SealingKey(command) => sealing_key(command),
        KeydCommand::Rotate {
            store,
            shared,
            keyring,
        } => {
            if let Some((runtime, state)) = etcd_state(&store, &shared)? {
                let rotated = runtime.block_on(state.rotate(&keyring))?;
                println!("rotated keyring {keyring} in etcd: new primary KEK {} (every keyd replica serves it within seconds)", rotated.key.id);
                return Ok(ExitCode::SUCCESS);
            }
            let platform = store.platform(Access::ExistingOnly)?;
            let root = KeydRoot::open(&store.data_dir, platform.as_ref())?;
            let keystore = coffer_keyd::keyring_store(&store.data_dir, &root, platform, &keyring)?;
            if !keystore.exists() {
                return Err(format!(
                    "keyring {keyring:?} does not exist in {}; create it with `coffer keyd keyring create {keyring}`",
                    store.data_dir.display()
                )
                .into());
            }
            let info = keystore.rotate()?;
            println!("rotated keyring {keyring}: new primary KEK {} (a running keyd reloads it within --reload-interval)", info.id);
            Ok(ExitCode::SUCCESS)
        }
        KeydCommand::Status {
            store,
            shared,
            json,
        } => status(&store, &shared, json),
        KeydCommand::Recover(args) => recover(args),
        KeydCommand::RecoveryKey(RecoveryKeyCommand::Generate { out }) => {
            let (secret, public) = OperatorSecretKey::generate();
            coffer_platform::durable::write_new_atomic(&out, secret.to_text().as_bytes(), 0o600)
                .map_err(|e| {
                    format!(
                        "writing {}: {e} (an existing key file is never replaced)",
                        out.display()
                    )
                })?;
            println!("{public}");
            eprintln!(
                "secret key written to {} (keep it offline; it opens this operator's recovery shares)",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        KeydCommand::Audit(AuditCommand::Repair { store, log }) => {
            let log = log.unwrap_or_else(|| store.data_dir.join("audit.log"));
            match coffer_audit::repair_truncated_tail(&log)? {
                Some(moved) => println!(
                    "{}: the incomplete last line was moved to {}; the log now ends with its last complete line (check it with `coffer keyd audit verify`)",
                    log.display(),
                    moved.display()
                ),
                None => println!("{}: ends with a complete line; nothing to repair", log.display()),
            }
            Ok(ExitCode::SUCCESS)
        }
        KeydCommand::Audit(AuditCommand::Verify(args)) => crate::keyd_audit::verify(*args),
        KeydCommand::Config(command) => crate::keyd_config::run(command),
    }
}

pub(crate) fn read_small(path: &Path) -> Result<String, Error> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_SMALL_FILE {
        return Err(format!(
            "{}: {} bytes is too large for a key or share file (limit {MAX_SMALL_FILE})",
            path.display(),
            meta.len()
        )
        .into());
    }
    Ok(std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// `--recovery-key KEY|FILE`: an operator's public key, given inline or in a file.
fn operator_key(arg: &str) -> Result<OperatorPublicKey, Error> {
    let (text, origin) = if Path::new(arg).is_file() {
        (zeroize::Zeroizing::new(read_small(Path::new(arg))?), arg)
    } else if arg.starts_with("coffer-recovery-") {
        (zeroize::Zeroizing::new(arg.to_string()), "the key given")
    } else {
        return Err(format!(
            "--recovery-key {arg:?} is neither a file nor an operator public key \
             (`{}…`, from `coffer keyd recovery-key generate`)",
            coffer_recovery::PUBLIC_KEY_PREFIX
        )
        .into());
    };
    if text
        .trim_start()
        .starts_with(coffer_recovery::SECRET_KEY_PREFIX)
    {
        // Never echo it: this key opens the operator's shares.
        return Err(format!(
            "--recovery-key {origin}: this is an operator SECRET key (`{}…`), but --recovery-key \
             takes the operator's PUBLIC key (`{}…`), which `coffer keyd recovery-key generate` \
             printed. Keep the secret key offline; it is only for `coffer keyd recover \
             --operator-key`",
            coffer_recovery::SECRET_KEY_PREFIX,
            coffer_recovery::PUBLIC_KEY_PREFIX
        )
        .into());
    }
    text.trim()
        .parse::<OperatorPublicKey>()
        .map_err(|e| format!("--recovery-key {origin}: {e}").into())
}

fn init(args: InitArgs) -> Result<ExitCode, Error> {
    initialise(&args.store, &args.recovery)?;
    Ok(ExitCode::SUCCESS)
}

/// `coffer keyd init`: the root, and the recovery shares when operators are named (their
/// files are returned).
pub(crate) fn initialise(
    store: &KeydStoreArgs,
    recovery: &RecoveryArgs,
) -> Result<Vec<PathBuf>, Error> {
    let request = recovery_request(recovery)?;
    let platform = store.platform(Access::CreateIfMissing)?;
    let (root, shares) = KeydRoot::init(&store.data_dir, platform.as_ref(), request.as_ref())?;
    println!(
        "initialised keyd {} in {} ({} platform)",
        root.instance_id(),
        store.data_dir.display(),
        platform.kind().name()
    );
    match &request {
        Some(request) => write_shares(recovery, request, &shares, "this keyd"),
        None => {
            println!("no recovery shares were requested: this data directory opens only on this platform identity");
            Ok(Vec::new())
        }
    }
}

/// The recovery split `--recovery-key` and `--recovery-threshold` ask for (`None` without
/// operators), checked with the shares directory before anything is written, so a bad split
/// leaves no half-initialised state.
pub(crate) fn recovery_request(recovery: &RecoveryArgs) -> Result<Option<RecoveryRequest>, Error> {
    if recovery.recovery_keys.is_empty() {
        return Ok(None);
    }
    let operators = recovery
        .recovery_keys
        .iter()
        .map(|k| operator_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let majority = u8::try_from(operators.len() / 2 + 1).unwrap_or(u8::MAX);
    let request = RecoveryRequest {
        threshold: recovery.recovery_threshold.unwrap_or(majority),
        operators,
    };
    coffer_recovery::split(
        &zeroize::Zeroizing::new([0u8; 32]),
        "check",
        request.threshold,
        &request.operators,
    )?;
    let dir = &recovery.recovery_shares_dir;
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        return Err(format!(
            "--recovery-shares-dir {} is not empty; choose an empty or new directory",
            dir.display()
        )
        .into());
    }
    Ok(Some(request))
}

/// Writes the sealed shares into `--recovery-shares-dir` (never replacing a file), tells the
/// operator how many restore `what`, and returns the files written.
pub(crate) fn write_shares(
    recovery: &RecoveryArgs,
    request: &RecoveryRequest,
    shares: &[SealedShare],
    what: &str,
) -> Result<Vec<PathBuf>, Error> {
    let dir = &recovery.recovery_shares_dir;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::with_capacity(shares.len());
    for share in shares {
        let fingerprint: String = share.operator_fingerprint.chars().take(16).collect();
        let path = dir.join(format!("share-{}-{fingerprint}.json", share.index));
        coffer_platform::durable::write_new_atomic(&path, share.to_json().as_bytes(), 0o600)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        println!(
            "  share {} of {} -> {}",
            share.index,
            share.total,
            path.display()
        );
        written.push(path);
    }
    println!(
        "recovery: any {} of these {} shares (with their operators' secret keys) restore {what} on a new platform; hand each file to its operator and delete it here",
        request.threshold,
        shares.len()
    );
    Ok(written)
}

/// `serve --init`: initialise an empty data directory and create missing configured keyrings.
fn init_on_first_start(args: &KeydServeArgs, config: &KeydConfig) -> Result<(), Error> {
    if !args.store.data_dir.join(coffer_keyd::ROOT_FILE).exists() {
        tracing::info!(data_dir = %args.store.data_dir.display(), "--init: initialising keyd");
        initialise(&args.store, &args.recovery)?;
    }
    let platform = args.store.platform(Access::ExistingOnly)?;
    let root = KeydRoot::open(&args.store.data_dir, platform.as_ref())?;
    for name in config.keyrings.keys() {
        let store =
            coffer_keyd::keyring_store(&args.store.data_dir, &root, platform.clone(), name)?;
        if !store.exists() {
            let created =
                coffer_keyd::create_keyring(&args.store.data_dir, platform.clone(), name)?;
            tracing::info!(keyring = %name, key_id = %created.kek_id, sealing_key_id = %created.sealing_key_id, "--init: created keyring");
            continue;
        }
        // A keyring made before sealing keys existed; where the command line is fixed at
        // signing time, this is the only way it gets one.
        let sealing =
            coffer_keyd::sealing_key_store(&args.store.data_dir, &root, platform.clone(), name)?;
        if !sealing.exists() {
            let key = sealing.rotate()?;
            tracing::info!(keyring = %name, sealing_key_id = %key.id, "--init: created the keyring's first sealing key");
        }
    }
    Ok(())
}

/// With `--store etcd`: keyd's records in etcd, opened with the data directory's root, and
/// the runtime to call etcd on; `None` with `--store dir`.
pub(crate) fn etcd_state(
    store: &KeydStoreArgs,
    shared: &SharedStoreArgs,
) -> Result<Option<(tokio::runtime::Runtime, coffer_keyd::SharedState)>, Error> {
    if shared.store == StoreKind::Dir {
        return Ok(None);
    }
    let platform = store.platform(Access::ExistingOnly)?;
    let root = KeydRoot::open(&store.data_dir, platform.as_ref())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let state = runtime.block_on(async {
        let connection = shared
            .connect()
            .await?
            .ok_or("--store etcd did not connect to etcd")?;
        coffer_keyd::SharedState::open(connection, &root, platform)
            .await
            .map_err(|e| match e {
                // Running replicas are unaffected: say so, as a failed write does.
                coffer_keyd::KeydError::SharedState(coffer_keyd::SharedStateError::Store(
                    source @ coffer_keyd_store::StoreError::Unavailable { .. },
                )) => coffer_keyd::SharedStateError::WriteUnavailable { source }.into(),
                e => Error::from(e),
            })
    })?;
    Ok(Some((runtime, state)))
}

/// The sealing keys of an existing keyring.
fn sealing_store(
    store: &KeydStoreArgs,
    keyring: &str,
) -> Result<coffer_keyd::SealingKeyStore, Error> {
    let platform = store.platform(Access::ExistingOnly)?;
    let root = KeydRoot::open(&store.data_dir, platform.as_ref())?;
    let keystore = coffer_keyd::keyring_store(&store.data_dir, &root, platform.clone(), keyring)?;
    if !keystore.exists() {
        return Err(format!(
            "keyring {keyring:?} does not exist in {}; create it with `coffer keyd keyring create {keyring}`",
            store.data_dir.display()
        )
        .into());
    }
    Ok(coffer_keyd::sealing_key_store(
        &store.data_dir,
        &root,
        platform,
        keyring,
    )?)
}

/// A keyring's sealing keys, in the data directory or in etcd.
enum SealingKeys {
    Files(coffer_keyd::SealingKeyStore),
    Etcd {
        runtime: tokio::runtime::Runtime,
        state: Box<coffer_keyd::SharedState>,
        keyring: String,
    },
}

impl SealingKeys {
    /// The sealing keys of existing keyring `keyring`, where `--store` says they are.
    fn open(
        store: &KeydStoreArgs,
        shared: &SharedStoreArgs,
        keyring: &str,
    ) -> Result<SealingKeys, Error> {
        Ok(match etcd_state(store, shared)? {
            Some((runtime, state)) => SealingKeys::Etcd {
                runtime,
                state: Box::new(state),
                keyring: keyring.to_string(),
            },
            None => SealingKeys::Files(sealing_store(store, keyring)?),
        })
    }

    fn info(&self) -> Result<coffer_keyd::SealingKeysInfo, Error> {
        Ok(match self {
            SealingKeys::Files(files) => files.info()?,
            SealingKeys::Etcd {
                runtime,
                state,
                keyring,
            } => runtime.block_on(state.sealing_info(keyring))?,
        })
    }

    fn rotate(&self) -> Result<coffer_keyd::SealingKeyInfo, Error> {
        Ok(match self {
            SealingKeys::Files(files) => files.rotate()?,
            SealingKeys::Etcd {
                runtime,
                state,
                keyring,
            } => runtime.block_on(state.rotate_sealing_key(keyring))?.key,
        })
    }

    fn retire(&self, key_id: &str) -> Result<coffer_keyd::RetiredKey, Error> {
        Ok(match self {
            SealingKeys::Files(files) => files.retire(key_id)?,
            SealingKeys::Etcd {
                runtime,
                state,
                keyring,
            } => {
                runtime
                    .block_on(state.retire_sealing_key(keyring, key_id))?
                    .key
            }
        })
    }
}

/// `coffer keyd sealing-key …`.
fn sealing_key(command: SealingKeyCommand) -> Result<ExitCode, Error> {
    match command {
        SealingKeyCommand::Rotate {
            store,
            shared,
            keyring,
        } => {
            let info = SealingKeys::open(&store, &shared, &keyring)?.rotate()?;
            println!(
                "keyring {keyring}: new primary sealing key {} (a running keyd serves it within --reload-interval; clients seal to it once they fetch the new key bundle)",
                info.id
            );
        }
        SealingKeyCommand::List {
            store,
            shared,
            keyring,
            json,
        } => {
            let info = SealingKeys::open(&store, &shared, &keyring)?.info()?;
            let rows = info
                .keys
                .iter()
                .map(|k| {
                    let state = if k.primary { "primary" } else { "active" };
                    (k.id.as_str(), k.created.as_str(), state, None)
                })
                .chain(info.retired.iter().map(|r| {
                    (
                        r.id.as_str(),
                        r.created.as_str(),
                        "retired",
                        Some(r.retired.as_str()),
                    )
                }));
            if json {
                let keys: Vec<_> = rows
                    .map(|(id, created, state, retired)| {
                        serde_json::json!({"id": id, "created": created, "state": state, "retired": retired})
                    })
                    .collect();
                let value = serde_json::json!({"keyring": keyring, "keys": keys});
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                for (id, created, state, retired) in rows {
                    match retired {
                        Some(at) => println!("{id}  created {created}  {state} {at}"),
                        None => println!("{id}  created {created}  {state}"),
                    }
                }
            }
        }
        SealingKeyCommand::Retire {
            store,
            shared,
            keyring,
            key_id,
            confirm,
        } => {
            let sealing = SealingKeys::open(&store, &shared, &keyring)?;
            let info = sealing.info()?;
            // Only a retirement that would succeed asks for --confirm: the primary, an unknown
            // and a retired key are refused by `retire` with their own reason, changing nothing.
            let retirable = info.keys.iter().any(|k| k.id == key_id && !k.primary);
            if retirable && !confirm {
                return Err(format!(
                    "retiring sealing key {key_id} deletes its private key for good: values still sealed to it can never be unsealed again. Reseal them first (kubectl coffer reseal), then run this again with --confirm"
                )
                .into());
            }
            let retired = sealing.retire(&key_id)?;
            eprintln!(
                "warning: values still sealed to {} can no longer be unsealed (reseal them first next time: kubectl coffer reseal)",
                retired.id
            );
            println!(
                "keyring {keyring}: retired sealing key {} (a running keyd drops it within --reload-interval)",
                retired.id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn recover(args: RecoverArgs) -> Result<ExitCode, Error> {
    if args.shared.store == StoreKind::Etcd
        && !args.store.data_dir.join(coffer_keyd::ROOT_FILE).exists()
    {
        return crate::keyd_bootstrap::recover_from_etcd(&args);
    }
    let info = coffer_keyd::root_info(&args.store.data_dir)?;
    let shares = read_shares(&args.shares)?;
    let keys = read_operator_keys(&args.operator_keys)?;
    let opened = coffer_keyd::open_shares(&info.instance_id, &shares, &keys)?;
    let platform = args.store.platform(Access::CreateIfMissing)?;
    let root = KeydRoot::recover(&args.store.data_dir, platform.as_ref(), &opened)?;
    println!(
        "recovered keyd {} in {}: its root is now sealed to this {} platform",
        root.instance_id(),
        args.store.data_dir.display(),
        platform.kind().name()
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads the sealed share files given with `--share`.
pub(crate) fn read_shares(paths: &[PathBuf]) -> Result<Vec<SealedShare>, Error> {
    paths
        .iter()
        .map(|p| {
            SealedShare::from_json(&read_small(p)?)
                .map_err(|e| format!("{}: {e}", p.display()).into())
        })
        .collect()
}

/// Reads the operator secret key files given with `--operator-key`.
pub(crate) fn read_operator_keys(paths: &[PathBuf]) -> Result<Vec<OperatorSecretKey>, Error> {
    paths
        .iter()
        .map(|p| {
            let text = zeroize::Zeroizing::new(read_small(p)?);
            if text
                .trim_start()
                .starts_with(coffer_recovery::PUBLIC_KEY_PREFIX)
            {
                return Err(format!(
                    "--operator-key {}: this is an operator PUBLIC key (`{}…`), but \
                     --operator-key takes the operator's SECRET key file (`{}…`) that \
                     `coffer keyd recovery-key generate --out` wrote",
                    p.display(),
                    coffer_recovery::PUBLIC_KEY_PREFIX,
                    coffer_recovery::SECRET_KEY_PREFIX
                )
                .into());
            }
            text.trim()
                .parse::<OperatorSecretKey>()
                .map_err(|e| format!("{}: {e}", p.display()).into())
        })
        .collect()
}

#[derive(serde::Serialize)]
struct KeyringStatus {
    name: String,
    primary_key_id: Option<String>,
    keys: usize,
    /// The keystore's change counter (0 when it does not load).
    generation: u64,
    /// The primary sealing key (`None`: the keyring has none yet, or they do not load).
    primary_sealing_key_id: Option<String>,
    error: Option<String>,
    /// Why the sealing keys do not load.
    sealing_error: Option<String>,
}

/// What `keyd status` shows of one keyring, from its loaded KEKs and sealing keys (`None`:
/// it has none yet).
fn keyring_status(
    name: String,
    loaded: Result<coffer_keystore::kek::Keyring, String>,
    sealing: Result<Option<coffer_keyd::SealingKeys>, String>,
) -> KeyringStatus {
    let (primary_sealing_key_id, sealing_error) = match sealing {
        Ok(keys) => (keys.map(|k| k.primary().id().to_string()), None),
        Err(e) => (None, Some(e)),
    };
    match loaded {
        Ok(ring) => KeyringStatus {
            primary_key_id: Some(ring.primary_id().to_string()),
            keys: ring.len(),
            generation: ring.generation(),
            primary_sealing_key_id,
            error: None,
            sealing_error,
            name,
        },
        Err(e) => KeyringStatus {
            primary_key_id: None,
            keys: 0,
            generation: 0,
            primary_sealing_key_id,
            error: Some(e),
            sealing_error,
            name,
        },
    }
}

/// `keyd status` of the keyrings in etcd.
fn etcd_keyrings(
    runtime: &tokio::runtime::Runtime,
    state: &coffer_keyd::SharedState,
) -> Result<Vec<KeyringStatus>, Error> {
    runtime.block_on(async {
        let mut keyrings = Vec::new();
        for name in state.keyring_names().await? {
            let loaded = state.load_keyring(&name).await.map_err(|e| e.to_string());
            let sealing = match state.load_sealing_keys(&name).await {
                Ok(keys) => Ok(Some(keys)),
                Err(coffer_keyd::KeydError::SealingKeys(
                    coffer_keyd::SealingKeyError::Missing { .. },
                )) => Ok(None),
                Err(e) => Err(e.to_string()),
            };
            keyrings.push(keyring_status(name, loaded, sealing));
        }
        Ok(keyrings)
    })
}

/// `keyd status` of the keyrings in the data directory.
fn dir_keyrings(store: &KeydStoreArgs) -> Result<Vec<KeyringStatus>, Error> {
    let platform = store.platform(Access::ExistingOnly)?;
    let root = KeydRoot::open(&store.data_dir, platform.as_ref())?;
    let mut names: Vec<String> = match std::fs::read_dir(store.data_dir.join("keyrings")) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| coffer_keyd::validate_keyring_name(n).is_ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", store.data_dir.display()).into()),
    };
    names.sort();
    Ok(names
        .into_iter()
        .map(|name| {
            let loaded =
                coffer_keyd::keyring_store(&store.data_dir, &root, platform.clone(), &name)
                    .map_err(|e| e.to_string())
                    .and_then(|ks| ks.load().map_err(|e| e.to_string()));
            // A keyring without a sealing-key file simply has none yet.
            let sealing =
                coffer_keyd::sealing_key_store(&store.data_dir, &root, platform.clone(), &name)
                    .map_err(|e| e.to_string())
                    .and_then(|s| match s.exists() {
                        false => Ok(None),
                        true => s.load().map(Some).map_err(|e| e.to_string()),
                    });
            keyring_status(name, loaded, sealing)
        })
        .collect())
}

fn status(store: &KeydStoreArgs, shared: &SharedStoreArgs, json: bool) -> Result<ExitCode, Error> {
    let info = coffer_keyd::root_info(&store.data_dir)?;
    let keyrings = match etcd_state(store, shared)? {
        Some((runtime, state)) => etcd_keyrings(&runtime, &state)?,
        None => dir_keyrings(store)?,
    };
    if json {
        let value = serde_json::json!({
            "instance_id": info.instance_id,
            "created": info.created,
            "platform": info.platform,
            "recovery": info.recovery.as_ref().map(|r| serde_json::json!({
                "threshold": r.threshold, "total": r.total, "operators": r.operators,
            })),
            "keyrings": keyrings,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("instance:  {}", info.instance_id);
        println!("created:   {}", info.created);
        println!("platform:  {}", info.platform);
        match &info.recovery {
            Some(r) => println!("recovery:  {} of {} operator shares", r.threshold, r.total),
            None => println!("recovery:  none (opens only on this platform identity)"),
        }
        println!("keyrings:");
        for k in &keyrings {
            match (&k.primary_key_id, &k.error) {
                (Some(primary), _) => {
                    println!("  {:<24} primary {primary}  ({} keys)", k.name, k.keys)
                }
                (None, Some(e)) => println!("  {:<24} ERROR: {e}", k.name),
                _ => {}
            }
            match (&k.primary_sealing_key_id, &k.sealing_error) {
                (Some(sealing), _) => println!("  {:<24} sealing key {sealing}", ""),
                (None, Some(e)) => println!("  {:<24} sealing keys ERROR: {e}", ""),
                (None, None) => println!(
                    "  {:<24} no sealing key (coffer keyd sealing-key rotate --keyring {})",
                    "", k.name
                ),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(args: KeydServeArgs) -> Result<ExitCode, Error> {
    if let Err(e) = coffer_platform::process::harden() {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    let policy = Arc::new(Policy::load(&args.policy)?);
    let config = match &args.config {
        ConfigSource::File(path) => {
            let config = KeydConfig::load(path)?;
            // Before `--init` writes anything: a grant nobody can hold is a configuration mistake.
            config
                .check_roles(&policy, &format!("--policy {}", args.policy.display()))
                .map_err(|m| format!("--config {}: {m}", path.display()))?;
            config
        }
        // Read, and checked the same way, once keyd's root opens the record; `--init` creates
        // no keyrings then (push the configuration, then `keyd keyring create`).
        ConfigSource::Store if args.shared.store == StoreKind::Etcd => KeydConfig::default(),
        ConfigSource::Store => {
            return Err(
                "--config etcd: serves the configuration stored in etcd: it needs --store etcd --etcd-endpoints host:port"
                    .into(),
            )
        }
    };
    crate::keyd_bootstrap::check_init_and_join(&args)?;
    if args.init && args.shared.store == StoreKind::Dir {
        init_on_first_start(&args, &config)?;
    }
    let verify_options = args.sources.options(SystemTime::now())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.worker_threads))
        .max_blocking_threads(4)
        .enable_all()
        .thread_name("coffer-keyd")
        .build()?;
    if args.init && args.shared.store == StoreKind::Etcd {
        runtime.block_on(crate::keyd_bootstrap::init_on_etcd(
            &args,
            &config,
            policy.clone(),
            verify_options.clone(),
        ))?;
    }
    runtime.block_on(crate::keyd_join::join_on_first_start(
        &args.store,
        &args.join,
        policy.clone(),
        verify_options.clone(),
    ))?;
    let platform = args.store.platform(Access::ExistingOnly)?;
    runtime.block_on(async move {
        let shutdown = crate::cmd::shutdown_signal();
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| format!("listening on {}: {e}", args.listen))?;
        let metrics_listener = match args.metrics_addr {
            Some(m) => Some(
                coffer_telemetry::bind(
                    m,
                    args.metrics_allow_remote,
                    "--metrics-addr",
                    "--metrics-allow-remote",
                )
                .await
                .map_err(|e| format!("metrics endpoint: {e}"))?,
            ),
            None => None,
        };
        let mut options = KeydServeOptions::new(
            args.store.data_dir.clone(),
            platform,
            policy,
            config,
            verify_options,
            listener,
        );
        options.audit_log = args.audit_log.clone();
        options.audit = coffer_keyd::AuditSettings {
            segment_bytes: args.audit_segment_bytes,
            retention_segments: args.audit_retention_segments,
            aggregate_interval: args.audit_aggregate_interval,
        };
        options.metrics_listener = metrics_listener;
        options.limits = KeydLimits {
            max_connections: args.max_connections,
            max_message_len: args.max_message_bytes,
            rate_per_second: args.rate_limit,
            rate_burst: args.rate_burst.max(1),
            public_rate_per_second: args.public_rate_per_second,
            public_rate_burst: args.public_rate_burst.max(1),
            ..KeydLimits::default()
        };
        options.key_bundle_validity = args.key_bundle_validity;
        options.drain_timeout = args.drain_timeout;
        options.reload_interval = args.reload_interval;
        options.cert_renewal = args.cert_renewal;
        options.handshake_timeout = args.handshake_timeout;
        options.shared = args.shared.connect().await?;
        options.config_from_store = args.config == ConfigSource::Store;
        if let Some(replica) = &args.replica_id {
            options.replica_id = replica.clone();
        }
        options.audit_anchor_interval = args.audit_anchor_interval;
        options.on_ready = Some(Box::new(|addr| {
            tracing::info!(%addr, "coffer keyd serving (mutual attested TLS)");
            eprintln!("coffer keyd listening on {addr}");
        }));
        coffer_keyd::serve(options, shutdown).await?;
        Ok::<_, Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

//! Command-line definitions. Every flag explains itself in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use coffer_kms::StatusVersion;
use coffer_platform::PlatformChoice;

/// Coffer protects Kubernetes Secrets with Trusted Execution Environments (TEEs).
///
/// `coffer kms serve` is a KMS v2 plugin for kube-apiserver whose key-encryption keys exist
/// unsealed only inside the TEE. Start with `coffer kms serve --dev` to try it on any machine
/// (simulation platform, NOT secure) and see the EncryptionConfiguration to give the API server.
/// With `--keyd`, the plugin holds no keys and forwards every call to the central key service.
#[derive(Parser, Debug)]
#[command(
    name = "coffer",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Logging flags, shared by every command.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter such as
    /// `info,coffer=debug`); anything else is refused. RUST_LOG overrides it. Logs go to stderr
    /// and never contain keys or plaintext, at any level.
    #[arg(long, global = true, default_value = "info", env = "COFFER_LOG_LEVEL",
          value_parser = crate::logging::check_filter)]
    pub log_level: String,
    /// Log format: human-readable text or one JSON object per line.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "COFFER_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON lines, for log shippers.
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The Kubernetes KMS plugin (run it beside kube-apiserver).
    #[command(subcommand)]
    Kms(KmsCommand),
    /// Manage key-encryption keys: list, rotate, retire.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Disaster recovery: decrypt values read straight from etcd.
    #[command(subcommand)]
    Etcd(EtcdCommand),
    /// Attestation: show this platform's evidence, verify evidence and key bundles, check policies.
    #[command(subcommand)]
    Attest(crate::attest::AttestCommand),
    /// The central key service: keyrings in a TEE, served over mutual attested TLS.
    #[command(subcommand)]
    Keyd(crate::keyd::KeydCommand),
    /// Built-in load generator and start-up timer.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Inside a workload's TEE: unseal the pod's sealed Secret values through keyd, then start
    /// the app with them.
    Run(Box<crate::run::RunArgs>),
}

/// Where keys live and which TEE protects them; shared by every command that opens the keystore.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// TEE platform: `auto` detects the TEE this machine offers; `sim` is a simulation for
    /// development that protects nothing.
    #[arg(long, default_value = "auto", env = "COFFER_PLATFORM")]
    pub platform: PlatformChoice,
    /// Directory holding the sealed keystore (and, on `sim`, the simulation key).
    #[arg(long, default_value = "/var/lib/coffer", env = "COFFER_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Development mode: `--platform sim --state-dir ./.coffer-dev` (and, for `kms serve`,
    /// `--socket ./.coffer-dev/kms.sock`). NOT SECURE.
    #[arg(long)]
    pub dev: bool,
}

/// Where kube-apiserver's static pod usually mounts the plugin socket.
pub const DEFAULT_SOCKET: &str = "/var/run/kmsplugin/socket.sock";

/// Default state directory for `--dev`.
pub const DEV_DIR: &str = ".coffer-dev";

impl StoreArgs {
    /// Applies `--dev`.
    pub fn resolved(&self) -> (PlatformChoice, PathBuf) {
        if self.dev {
            (
                PlatformChoice::Named(coffer_platform::PlatformKind::Sim),
                PathBuf::from(DEV_DIR),
            )
        } else {
            (self.platform, self.state_dir.clone())
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum KmsCommand {
    /// Serve KMS v2 (and v1beta1) on a unix socket for kube-apiserver.
    ///
    /// Standalone mode (default): on first start it creates a keystore with one key-encryption
    /// key (KEK), generated in the TEE and written only sealed to the TEE's identity. It reloads
    /// the keystore within seconds when `coffer keys rotate` changes it.
    ///
    /// Service mode (`--keyd HOST:PORT --keyd-keyring NAME --keyd-policy FILE`): no KEK on this
    /// node. Every Encrypt and Decrypt is forwarded to `coffer keyd` over pooled mutual attested
    /// TLS connections that the plugin opens with its own platform's evidence; keyd's evidence
    /// must satisfy --keyd-policy. Status reports keyd's primary key_id for the keyring (a
    /// rotation in keyd shows within a second), or UNAVAILABLE while keyd is unreachable or
    /// refuses this plugin. Every call ends within --keyd-timeout (below the API server's 3 s);
    /// connections come back by themselves with backoff when keyd does. Rotate in keyd.
    ///
    /// Inside an SGX LibOS (Gramine, Occlum) the host cannot reach a unix socket in the enclave
    /// and peer credentials are not real there, so a unix socket is refused: serve with
    /// --listen-tcp 127.0.0.1:PORT and run `coffer kms bridge` on the host.
    ///
    /// SIGTERM drains in-flight calls and removes the socket.
    Serve(Box<ServeArgs>),
    /// Host side of a plugin inside an SGX enclave: owns kube-apiserver's unix socket.
    ///
    /// Gramine and Occlum cannot share a unix socket between the enclave and the host, so the
    /// plugin runs `kms serve --listen-tcp 127.0.0.1:PORT` inside the enclave and this command
    /// runs beside it on the host (a sidecar in the same pod). It checks every caller with the
    /// host kernel's peer credentials (--allow-uid, --allow-gid, --allow-exe, as `kms serve`),
    /// then forwards each KMS v2 / v1beta1 call to the enclave over TLS, verifying that the
    /// enclave's attested certificate satisfies --enclave-policy: a substituted enclave gets no
    /// call, and Status then reports UNAVAILABLE with the reason. Every call ends within
    /// --enclave-timeout (below the API server's 3 s); when the enclave restarts, the next call
    /// reconnects. It holds no key. See docs/tee-platforms.md for the threat model.
    Bridge(Box<BridgeArgs>),
    /// Print the EncryptionConfiguration that points kube-apiserver at a plugin socket.
    EncryptionConfig(EncryptionConfigArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub front: FrontArgs,
    /// Rotate the primary KEK automatically when it is older than this (a duration such as
    /// 720h or 30d; at least 1s, and longer than --reload-interval, which is when the age is
    /// checked). Standalone mode only.
    #[arg(long, value_parser = crate::duration::at_least(MIN_ROTATE_EVERY))]
    pub rotate_every: Option<Duration>,
    /// How often to check the keystore for changes made by `coffer keys` (a duration such as
    /// 2s or 500ms; at least 100ms) [default: 2s]. Standalone mode only.
    #[arg(long, value_parser = crate::duration::at_least(MIN_RELOAD_INTERVAL))]
    pub reload_interval: Option<Duration>,
    /// Inside an SGX enclave (Gramine, Occlum): serve KMS on this TCP address over attested TLS
    /// (the certificate carries this enclave's evidence) instead of on a unix socket, for
    /// `coffer kms bridge` on the host, which owns kube-apiserver's socket and checks callers.
    /// Loopback only (e.g. 127.0.0.1:7700) unless --listen-tcp-allow-remote.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        conflicts_with_all = ["insecure_unreal_peer_credentials", "socket"]
    )]
    pub listen_tcp: Option<SocketAddr>,
    /// Allow --listen-tcp on a non-loopback address (anyone who reaches it can call the plugin
    /// without the bridge's caller check).
    #[arg(long, requires = "listen_tcp")]
    pub listen_tcp_allow_remote: bool,
    /// INSECURE, for tests: serve the unix socket even where peer credentials are not real
    /// (inside Occlum or Gramine), so that the caller check admits every caller.
    #[arg(long)]
    pub insecure_unreal_peer_credentials: bool,
    #[command(flatten)]
    pub keyd: KeydArgs,
}

/// The side kube-apiserver sees, shared by `kms serve` and `kms bridge`: the unix socket, the
/// caller check, connection limits, Status, metrics and shutdown.
#[derive(Args, Debug)]
pub struct FrontArgs {
    /// The unix socket kube-apiserver connects to (its EncryptionConfiguration `endpoint`), as
    /// a path without `unix://`. Default: /var/run/kmsplugin/socket.sock (with --dev:
    /// ./.coffer-dev/kms.sock).
    #[arg(long, env = "COFFER_SOCKET", value_parser = parse_socket_path)]
    pub socket: Option<PathBuf>,
    /// Socket file mode (octal). 600 lets only the socket's owner connect.
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Give the socket to this uid (numeric).
    #[arg(long)]
    pub socket_owner: Option<u32>,
    /// Give the socket to this gid (numeric); combine with --socket-mode 660 and --allow-gid.
    #[arg(long)]
    pub socket_group: Option<u32>,
    /// Uids allowed to call the plugin, checked with the kernel's peer credentials on every
    /// connection. Repeatable. Default: root and the plugin's own uid.
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uids: Vec<u32>,
    /// Gids allowed to call the plugin. Repeatable.
    #[arg(long = "allow-gid", value_name = "GID")]
    pub allow_gids: Vec<u32>,
    /// Only these executables may call (e.g. /usr/local/bin/kube-apiserver), checked via
    /// /proc/<pid>/exe where the caller's process is visible. Repeatable.
    #[arg(long = "allow-exe", value_name = "PATH")]
    pub allow_exes: Vec<PathBuf>,
    /// `version` reported by Status: v2 for Kubernetes 1.29+, v2beta1 for 1.27 and 1.28.
    #[arg(long, default_value = "v2")]
    pub status_version: StatusVersion,
    /// Serve Prometheus /metrics and /healthz on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "COFFER_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Allow --metrics-addr to be a non-loopback address.
    #[arg(long)]
    pub metrics_allow_remote: bool,
    /// How long SIGTERM waits for in-flight calls before closing connections (a duration such
    /// as 10s or 1m30s; 0s closes them at once).
    #[arg(long, default_value = "10s", value_parser = crate::duration::at_least(Duration::ZERO))]
    pub drain_timeout: Duration,
    /// Threads serving gRPC calls. kube-apiserver sends every call over one HTTP/2 connection,
    /// which one thread serves best: measured here, 1 thread gives 1.6x the throughput of 2 and
    /// a third of the p99 latency (see BENCHMARKS.md). Raise it only for many client connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub worker_threads: u16,
    /// Most simultaneous client connections (1 to 65536). A quarter of them (at least one) is
    /// reserved for allowed callers: connections of refused callers never take those.
    #[arg(long, default_value_t = 64, value_parser = connection_count())]
    pub max_connections: usize,
    /// A connection must send the HTTP/2 preface and its first request within this time of
    /// connecting, or it is closed (a refused caller's connection is closed at this time, or
    /// right after its first call is answered). A duration such as 5s or 1500ms; 1s to 60s.
    #[arg(long, default_value = "5s", value_parser = handshake_timeout())]
    pub handshake_timeout: Duration,
    /// A connection without a call for this long is closed. kube-apiserver calls Status every
    /// minute on its connection, so this must stay above that: at least 90s (e.g. 5m, 1h).
    #[arg(long, default_value = "5m", value_parser = crate::duration::at_least(MIN_IDLE_TIMEOUT))]
    pub idle_timeout: Duration,
    /// Print the EncryptionConfiguration for this socket on stdout once serving (implied by --dev).
    #[arg(long)]
    pub print_encryption_config: bool,
    /// Provider name in the printed EncryptionConfiguration (it becomes part of every etcd value;
    /// letters, digits, '.', '_' and '-').
    #[arg(long, default_value = "coffer", value_parser = parse_provider_name)]
    pub provider_name: String,
}

#[derive(Args, Debug)]
pub struct BridgeArgs {
    #[command(flatten)]
    pub front: FrontArgs,
    /// The enclave plugin's --listen-tcp address (e.g. 127.0.0.1:7700).
    #[arg(long, value_name = "ADDR:PORT")]
    pub enclave: SocketAddr,
    /// Attestation policy the enclave's evidence must satisfy (YAML; see `coffer attest policy
    /// check`): pin its MRENCLAVE or MRSIGNER there. Any role it grants will do.
    #[arg(long, value_name = "FILE")]
    pub enclave_policy: PathBuf,
    /// Deadline of every forwarded call, covering connect, attested handshake and RPC (a
    /// duration such as 2s or 1500ms; at least 1ms). Must be below 3s, the API server's
    /// per-call timeout, so the bridge always answers first.
    #[arg(long, default_value = "2s", value_parser = crate::duration::between(
        Duration::from_millis(1),
        coffer_kms::remote::API_SERVER_TIMEOUT,
        "not below the API server's per-call timeout: the bridge must answer first, with a \
         clear error, when the enclave is slow or down",
    ))]
    pub enclave_timeout: Duration,
    #[command(flatten)]
    pub sources: EnclaveSourceArgs,
}

/// Where the DCAP collateral that verifies the enclave's SGX quote comes from: the flags of
/// `coffer attest verify`, prefixed with `enclave-`.
#[derive(Args, Debug)]
#[command(next_help_heading = "Collateral for the enclave's evidence")]
pub struct EnclaveSourceArgs {
    /// Directory of DCAP collateral JSON files for the enclave's quote (air-gapped sites).
    #[arg(long)]
    pub enclave_collateral_dir: Option<PathBuf>,
    /// Use exactly this collateral file name inside --enclave-collateral-dir.
    #[arg(long, requires = "enclave_collateral_dir")]
    pub enclave_collateral_file: Option<String>,
    /// PCCS or Intel PCS base URL to fetch DCAP collateral from (cached in --enclave-cache-dir).
    #[arg(
        long,
        requires = "enclave_cache_dir",
        conflicts_with = "enclave_collateral_dir"
    )]
    pub enclave_pccs_url: Option<String>,
    /// Cache directory for fetched collateral.
    #[arg(long)]
    pub enclave_cache_dir: Option<PathBuf>,
    /// PEM file of CA certificates to trust for --enclave-pccs-url, besides Mozilla's roots and
    /// the system trust store.
    #[arg(long, value_name = "FILE")]
    pub enclave_ca_file: Option<PathBuf>,
}

impl EnclaveSourceArgs {
    /// The same sources as `coffer attest verify` flags (SGX needs no VCEK).
    pub fn sources(&self) -> coffer_attest::sources::VerifySources {
        coffer_attest::sources::VerifySources {
            collateral_dir: self.enclave_collateral_dir.clone(),
            collateral_file: self.enclave_collateral_file.clone(),
            pccs_url: self.enclave_pccs_url.clone(),
            cache_dir: self.enclave_cache_dir.clone(),
            vcek: None,
            vcek_dir: None,
            kds_url: None,
            ca_file: self.enclave_ca_file.clone(),
        }
    }
}

/// Service mode: where keyd is and how the plugin trusts it.
#[derive(Args, Debug)]
#[command(next_help_heading = "Service mode (keys in coffer keyd)")]
pub struct KeydArgs {
    /// Service mode: forward every call to `coffer keyd` at HOST:PORT instead of holding KEKs
    /// on this node (no keystore is created). Needs --keyd-keyring and --keyd-policy. Several
    /// replicas: a comma-separated list, or a name resolving to several addresses (resolved
    /// again every 30s); calls are spread over the replicas that answer and a call one cannot
    /// answer is retried on another within --keyd-timeout.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]", requires_all = ["keyd_keyring", "keyd_policy"])]
    pub keyd: Option<coffer_keyd_client::KeydAddrs>,
    /// The keyring in keyd that holds this cluster's KEKs.
    #[arg(long, value_name = "NAME", requires = "keyd")]
    pub keyd_keyring: Option<String>,
    /// Attestation policy keyd's evidence must satisfy (YAML; see `coffer attest policy check`).
    /// The plugin refuses to talk to a keyd it does not grant a role.
    #[arg(long, value_name = "FILE", requires = "keyd")]
    pub keyd_policy: Option<PathBuf>,
    /// Deadline of every forwarded call, covering connect, attested handshake and RPC (a
    /// duration such as 2s or 1500ms; at least 1ms). Must be below 3s, the API server's
    /// per-call timeout, so the plugin always answers first.
    #[arg(long, default_value = "2s", value_parser = crate::duration::between(
        Duration::from_millis(1),
        coffer_kms::remote::API_SERVER_TIMEOUT,
        "not below the API server's per-call timeout: the plugin must answer first, with a \
         clear error, when keyd is slow or unreachable",
    ))]
    pub keyd_timeout: Duration,
    /// HTTP/2 connections to each keyd replica, used round-robin (each carries many concurrent
    /// calls).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub keyd_connections: u16,
    /// How long the DEK seed keyd released for one encrypted DEK answers repeated Decrypts of
    /// it without asking keyd (0 turns the cache off; at most 5m). At most 1024 seeds are
    /// kept, wiped when they expire; all are forgotten when keyd's keyring changes (a KEK
    /// rotated or retired) or keyd refuses this plugin. keyd authorises, and audits, each
    /// encrypted DEK at most once per this interval per plugin.
    #[arg(long, default_value = "10s", value_parser = crate::duration::within(
        Duration::ZERO,
        coffer_kms::dek_cache::MAX_TTL,
    ))]
    pub keyd_cache_ttl: Duration,
    #[command(flatten)]
    pub sources: KeydSourceArgs,
}

/// Where the collateral and VCEKs that verify keyd's evidence come from: the flags of
/// `coffer attest verify`, prefixed with `keyd-` because they concern keyd's evidence.
#[derive(Args, Debug)]
pub struct KeydSourceArgs {
    /// Directory of DCAP collateral JSON files for keyd's evidence (air-gapped sites).
    #[arg(long, requires = "keyd")]
    pub keyd_collateral_dir: Option<PathBuf>,
    /// Use exactly this collateral file name inside --keyd-collateral-dir.
    #[arg(long, requires = "keyd_collateral_dir")]
    pub keyd_collateral_file: Option<String>,
    /// PCCS or Intel PCS base URL to fetch DCAP collateral for keyd's evidence from (cached in
    /// --keyd-cache-dir).
    #[arg(long, requires_all = ["keyd", "keyd_cache_dir"], conflicts_with = "keyd_collateral_dir")]
    pub keyd_pccs_url: Option<String>,
    /// Cache directory for fetched collateral and VCEKs.
    #[arg(long, requires = "keyd")]
    pub keyd_cache_dir: Option<PathBuf>,
    /// SEV-SNP keyd: the VCEK (or VLEK) certificate (DER) for keyd's report, used when its
    /// evidence carries none or a stale one; when this one is stale too, --keyd-vcek-dir or
    /// --keyd-kds-url is asked.
    #[arg(long, requires = "keyd")]
    pub keyd_vcek: Option<PathBuf>,
    /// SEV-SNP keyd: directory of cached VCEKs.
    #[arg(long, requires = "keyd")]
    pub keyd_vcek_dir: Option<PathBuf>,
    /// SEV-SNP keyd: fetch VCEKs from AMD KDS at this URL (e.g. https://kdsintf.amd.com), cached
    /// in --keyd-cache-dir.
    #[arg(long, requires_all = ["keyd", "keyd_cache_dir"], conflicts_with = "keyd_vcek_dir")]
    pub keyd_kds_url: Option<String>,
    /// PEM file of CA certificates to trust for --keyd-pccs-url and --keyd-kds-url, besides
    /// Mozilla's roots and the system trust store (e.g. a PCCS's self-signed certificate).
    #[arg(long, value_name = "FILE", requires = "keyd")]
    pub keyd_ca_file: Option<PathBuf>,
}

impl KeydSourceArgs {
    /// The same sources as `coffer attest verify` flags.
    pub fn sources(&self) -> coffer_attest::sources::VerifySources {
        coffer_attest::sources::VerifySources {
            collateral_dir: self.keyd_collateral_dir.clone(),
            collateral_file: self.keyd_collateral_file.clone(),
            pccs_url: self.keyd_pccs_url.clone(),
            cache_dir: self.keyd_cache_dir.clone(),
            vcek: self.keyd_vcek.clone(),
            vcek_dir: self.keyd_vcek_dir.clone(),
            kds_url: self.keyd_kds_url.clone(),
            ca_file: self.keyd_ca_file.clone(),
        }
    }
}

#[derive(Args, Debug)]
pub struct EncryptionConfigArgs {
    /// The plugin's socket, as a path without `unix://` (the configuration adds it).
    #[arg(long, default_value = DEFAULT_SOCKET, value_parser = parse_socket_path)]
    pub socket: PathBuf,
    /// Provider name (part of every stored value: `k8s:enc:kms:v2:<name>:`; letters, digits,
    /// '.', '_' and '-'). Never reuse a name for a different key service.
    #[arg(long, default_value = "coffer", value_parser = parse_provider_name)]
    pub provider_name: String,
    /// KMS API version: v2 (recommended) or v1 (deprecated).
    #[arg(long, default_value = "v2", value_parser = ["v2", "v1"])]
    pub api_version: String,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a keystore with its first KEK (`kms serve` does this on first start). With
    /// --recovery-key, its KEKs are sealed under a keystore root secret whose k-of-n recovery
    /// shares go to operators, so that `coffer keys recover` can reopen it after a TCB update.
    Init(KeysInitArgs),
    /// List KEKs: id, creation time, and which is primary.
    List(ListArgs),
    /// Create a new primary KEK. Running plugins pick it up within seconds; older KEKs keep
    /// decrypting.
    Rotate(StoreArgs),
    /// Delete a non-primary KEK for good. Data encrypted under it becomes unreadable: first
    /// rewrite all Secrets (see docs/operations.md, "Retiring a key").
    Retire(RetireArgs),
    /// Reopen a keystore that no longer opens on this platform (after a TCB update — microcode,
    /// TCB recovery, an ISVSVN bump — or a move to another machine): rebuild its root secret
    /// from k recovery shares and reseal it to this platform. Needs `keys init --recovery-key`.
    Recover(KeysRecoverArgs),
}

#[derive(Args, Debug)]
pub struct KeysInitArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub recovery: crate::keyd::RecoveryArgs,
}

#[derive(Args, Debug)]
pub struct KeysRecoverArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// A sealed share file from `coffer keys init --recovery-key`; repeat (at least k).
    #[arg(long = "share", value_name = "FILE", required = true)]
    pub shares: Vec<PathBuf>,
    /// An operator's secret key file (`coffer-recovery-sk:…`); repeat. Each share is opened
    /// with the key it was sealed to.
    #[arg(long = "operator-key", value_name = "FILE", required = true)]
    pub operator_keys: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RetireArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The KEK id to retire (from `coffer keys list`).
    pub key_id: String,
    /// Confirm that every Secret was rewritten under a newer key
    /// (`kubectl get secrets -A -o json | kubectl replace -f -`) so nothing still needs this KEK.
    #[arg(long)]
    pub confirm: bool,
}

#[derive(Subcommand, Debug)]
pub enum EtcdCommand {
    /// Decrypt one value read from etcd (bytes starting `k8s:enc:kms:v2:<provider>:`) with the
    /// keystore, or through keyd with --keyd for values written in service mode, exactly as
    /// kube-apiserver would, and write the object bytes.
    Decrypt(EtcdDecryptArgs),
}

#[derive(Args, Debug)]
pub struct EtcdDecryptArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The etcd key the value was stored under (e.g. /registry/secrets/default/db); it is
    /// authenticated, so it must be exact. Optional with --input-format etcdctl-json.
    #[arg(long)]
    pub etcd_key: Option<String>,
    /// File with the value (default: stdin). Raw bytes from
    /// `etcdctl get --print-value-only KEY`, or the output of `etcdctl get -w json KEY`.
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// How the input is encoded.
    #[arg(long, value_enum, default_value = "raw")]
    pub input_format: InputFormat,
    /// Where to write the decrypted object (default: stdout). Created with mode 0600.
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub keyd: EtcdKeydArgs,
}

/// `etcd decrypt` through keyd: for values written by a plugin in service mode, whose DEK
/// sources only keyd can unwrap.
#[derive(Args, Debug)]
#[command(next_help_heading = "Through keyd (values written by a plugin in service mode)")]
pub struct EtcdKeydArgs {
    /// Unwrap the value's DEK source with `coffer keyd` at HOST:PORT instead of a local
    /// keystore. This command attests to keyd with the evidence of --platform (mutual attested
    /// TLS, as `kms serve --keyd` does), so keyd must grant its role `unwrap` on the keyring.
    /// Needs --keyd-keyring and --keyd-policy.
    #[arg(long, value_name = "HOST:PORT", requires_all = ["keyd_keyring", "keyd_policy"])]
    pub keyd: Option<coffer_keyd_client::KeydAddr>,
    /// The keyring in keyd that wrapped the value (the plugin's --keyd-keyring).
    #[arg(long, value_name = "NAME", requires = "keyd")]
    pub keyd_keyring: Option<String>,
    /// Attestation policy keyd's evidence must satisfy (YAML, as for `kms serve --keyd-policy`).
    #[arg(long, value_name = "FILE", requires = "keyd")]
    pub keyd_policy: Option<PathBuf>,
    #[command(flatten)]
    pub sources: KeydSourceArgs,
}

/// Encoding of `etcd decrypt` input.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// The value's bytes as stored.
    Raw,
    /// `etcdctl get -w json` output (base64 key and value).
    EtcdctlJson,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Closed-loop load against a running plugin, like kube-apiserver (fresh uid per call).
    Kms(coffer_bench::KmsBenchArgs),
    /// Time from process start to the first served Status.
    Startup(coffer_bench::StartupBenchArgs),
    /// Cost of service mode's attested connections to a running keyd: making the attested
    /// certificate, and a full mutual attested TLS handshake.
    KeydHandshake(Box<KeydHandshakeArgs>),
    /// keyd's Unseal throughput: values/s with Unseal (one value per call) and UnsealBatch,
    /// from concurrent attested callers, on values the benchmark seals itself.
    KeydUnseal(Box<KeydUnsealArgs>),
    /// The time `coffer run` adds to a pod's start (attest, unseal, exec) for 1, 10 and 100
    /// sealed values delivered as env and as a Secret volume, against the app alone.
    RunStart(Box<RunStartArgs>),
}

#[derive(Args, Debug)]
pub struct KeydHandshakeArgs {
    #[command(flatten)]
    pub bench: coffer_bench::HandshakeBenchArgs,
    #[command(flatten)]
    pub client: BenchKeydClientArgs,
}

#[derive(Args, Debug)]
pub struct KeydUnsealArgs {
    #[command(flatten)]
    pub bench: coffer_bench::UnsealBenchArgs,
    #[command(flatten)]
    pub client: BenchKeydClientArgs,
}

#[derive(Args, Debug)]
pub struct RunStartArgs {
    #[command(flatten)]
    pub bench: coffer_bench::RunStartBenchArgs,
    /// The workload's flags (`coffer run` gets the same --platform, --state-dir, --keyd-policy
    /// and collateral flags).
    #[command(flatten)]
    pub client: BenchKeydClientArgs,
}

/// How a benchmark's keyd client attests itself and checks keyd.
#[derive(Args, Debug)]
pub struct BenchKeydClientArgs {
    /// This client's platform (its evidence goes into each certificate).
    #[arg(long, default_value = "auto", env = "COFFER_PLATFORM")]
    pub platform: PlatformChoice,
    /// State directory (the simulation platform keeps its key there).
    #[arg(long, default_value = "/var/lib/coffer", env = "COFFER_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Attestation policy keyd's evidence must satisfy.
    #[arg(long, value_name = "FILE")]
    pub keyd_policy: PathBuf,
    #[command(flatten)]
    pub sources: KeydSourceArgs,
}

/// Shortest `--reload-interval` (kms and keyd): a keystore check is a file stat, but a zero
/// interval is refused by the timer and a tiny one only burns CPU.
pub const MIN_RELOAD_INTERVAL: Duration = Duration::from_millis(100);

/// Shortest `--rotate-every`: every rotation adds a KEK for good, so anything shorter only fills
/// the keystore.
pub const MIN_ROTATE_EVERY: Duration = Duration::from_secs(1);

/// `--max-connections`: at least one connection, or nothing could ever be served.
pub fn connection_count() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..=65536)
}

/// Longest provider name accepted (it is repeated in every etcd value).
const MAX_PROVIDER_NAME_LEN: usize = 64;

/// A KMS provider name kube-apiserver accepts and the printed YAML needs no quoting for.
/// kube-apiserver refuses an empty name and, for KMS v2, any `:` (the name sits between `:`s
/// in the stored value's prefix); this also keeps out what would change the YAML's meaning.
fn parse_provider_name(s: &str) -> Result<String, String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if s.is_empty() || s.len() > MAX_PROVIDER_NAME_LEN {
        return Err(format!(
            "a provider name has 1 to {MAX_PROVIDER_NAME_LEN} characters (e.g. coffer)"
        ));
    }
    if s.contains(':') {
        return Err(format!(
            "{s:?} contains ':', which kube-apiserver refuses in a KMS v2 provider name (the \
             name sits between ':'s in every stored value's prefix); use e.g. coffer"
        ));
    }
    if !s.chars().all(allowed) || !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "{s:?} is not a provider name: use letters, digits, '.', '_' and '-', starting \
             with a letter or digit (e.g. coffer)"
        ));
    }
    Ok(s.to_string())
}

/// A socket path that survives kube-apiserver reading `unix://<path>` as a URL.
fn parse_socket_path(s: &str) -> Result<PathBuf, String> {
    if let Some(path) = s.strip_prefix("unix://") {
        return Err(format!(
            "--socket takes the socket's path; `unix://` is added in the EncryptionConfiguration \
             (use --socket {path})"
        ));
    }
    if s.contains("://") {
        return Err(format!(
            "{s:?}: kube-apiserver talks to KMS plugins only over unix sockets; give the \
             socket's path (e.g. {DEFAULT_SOCKET})"
        ));
    }
    if s.is_empty() {
        return Err(format!("the socket path is empty (e.g. {DEFAULT_SOCKET})"));
    }
    if let Some(c) = s
        .chars()
        .find(|&c| matches!(c, '?' | '#' | '%') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{s:?} contains {c:?}: kube-apiserver reads the endpoint as a URL, where it would \
             change the path; choose a socket path without '?', '#', '%' or spaces"
        ));
    }
    Ok(PathBuf::from(s))
}

/// The `--handshake-timeout` parser (kms and keyd): long enough for a loaded API server, short
/// enough that silent connections give their slots back quickly.
pub(crate) fn handshake_timeout() -> impl Fn(&str) -> Result<Duration, String> + Clone {
    crate::duration::within(Duration::from_secs(1), Duration::from_secs(60))
}

/// The shortest `--idle-timeout`: above kube-apiserver's one-minute Status poll, so the API
/// server's own connection is never closed as idle.
const MIN_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

fn parse_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal file mode such as 600 or 660"))?;
    if mode > 0o777 {
        return Err(format!("{s:?} is not a file mode (at most 777)"));
    }
    Ok(mode)
}

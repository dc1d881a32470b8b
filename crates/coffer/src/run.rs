//! `coffer run`: flags, and their translation into a [`coffer_run::RunConfig`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clap::Args;
use coffer_attest::policy::Policy;
use coffer_platform::{open_platform, Access, PlatformChoice, PlatformKind};
use coffer_run::{EnvSource, FilesSource, OnChange, RunConfig, RunError};

use crate::cli::KeydSourceArgs;

/// The manual of `coffer run --help`, after the flags.
const RUN_HELP: &str = "\
HOW IT WORKS:
  The kubelet delivers the pod's Secrets as usual, but their values are sealed (`coffer.v1.`,
  from `kubectl coffer seal`): the node only ever holds ciphertext. `coffer run` is the
  container's entrypoint inside the workload's TEE. It finds the sealed values, attests to
  keyd with this platform's evidence, unseals them all in one call, and starts the app (it
  stays its parent: it forwards signals, reaps orphans and exits with the app's code).

  --env        sealed values in the environment (secretKeyRef, envFrom) are replaced by their
               plaintext in the app's environment. Environment values never change while the
               app runs: a changed Secret needs a restart of the pod.
  --files      a mounted Secret volume; its copy, with sealed values unsealed and other files as
               they are, is written to OUT/<directory name>/ in the kubelet's layout (files
               mode 0400, `..data` swapped atomically). When the kubelet updates the volume,
               the copy is updated and --on-change tells the app.

WHERE A VALUE CAME FROM:
  keyd unseals a value only where it was sealed for, and only for a role granted that place.
  The kubelet does not tell a container which Secret a variable or a volume came from, so:
    namespace  --namespace, else POD_NAMESPACE (the Downward API: env POD_NAMESPACE with
               valueFrom.fieldRef.fieldPath: metadata.namespace), else --namespace-file;
    variable   Secret and key from --env-source VAR=SECRET/KEY, else from the value's strict
               binding; otherwise it is refused;
    file       key = the file name; Secret from --files SECRET=DIR, else from the value's
               strict binding; otherwise it is refused.

--out MUST BE TEE-PRIVATE MEMORY:
  an emptyDir with `medium: Memory` (tmpfs: encrypted guest memory in a confidential VM), an
  Occlum ramfs mount, or a Gramine tmpfs mount listed in the measured manifest's
  loader.env.COFFER_RUN_PRIVATE_DIRS. Anything else is refused (exit 78); on the sim platform
  only, --allow-unprotected-out overrides that. Plaintext is written nowhere else and never
  logged.

EXIT CODES:
  the app's own; 128+N when signal N killed it
  69   keyd unreachable until --keyd-deadline (Kubernetes restarts the pod)
  77   keyd refused this workload or a value (names the Secret, key, variable or file and
       keyd's reason; the app is not started unless --allow-missing)
  78   configuration: no namespace, --out not private, unreadable volume, bad policy or flag
  70   internal error
  126  the app cannot be executed; 127 the app is not found

EXAMPLE (a container's command):
  coffer run --keyd keyd.coffer.svc:7443 --keyd-policy /etc/coffer/keyd-policy.yaml \\
    --env --env-source DB_PASSWORD=db/password \\
    --files db=/etc/db --out /run/secrets --on-change signal:HUP \\
    -- /app/server --config /etc/app.yaml
";

/// Flags of `coffer run`.
#[derive(Args, Debug)]
#[command(after_long_help = RUN_HELP)]
pub struct RunArgs {
    /// keyd's address; several replicas as a comma-separated list or a name resolving to
    /// several addresses, tried in turn until one answers.
    #[arg(long, value_name = "HOST:PORT[,HOST:PORT...]", env = "COFFER_KEYD")]
    pub keyd: coffer_keyd_client::KeydAddrs,
    /// Attestation policy keyd's evidence must satisfy (YAML).
    #[arg(long, value_name = "FILE", env = "COFFER_KEYD_POLICY")]
    pub keyd_policy: PathBuf,
    #[command(flatten)]
    pub sources: KeydSourceArgs,
    /// This workload's TEE platform: `auto` detects it; `sim` protects nothing.
    #[arg(long, default_value = "auto", env = "COFFER_PLATFORM")]
    pub platform: PlatformChoice,
    /// State directory (the simulation platform keeps its key there).
    #[arg(long, default_value = "/var/lib/coffer", env = "COFFER_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Limit on connecting to keyd and on each call (1ms..5m).
    #[arg(long, default_value = "5s", value_parser = crate::duration::within(Duration::from_millis(1), Duration::from_secs(300)))]
    pub keyd_timeout: Duration,
    /// How long to keep retrying an unreachable keyd at start, with backoff, before exiting 69
    /// (1ms..1h).
    #[arg(long, default_value = "60s", env = "COFFER_KEYD_DEADLINE", value_parser = crate::duration::within(Duration::from_millis(1), Duration::from_secs(3600)))]
    pub keyd_deadline: Duration,
    /// Unseal `coffer.v1.` values found in the environment (without it the environment is
    /// passed on untouched).
    #[arg(long)]
    pub env: bool,
    /// The environment variable VAR holds data key KEY of Secret SECRET (in the pod's
    /// namespace); needed for a value whose binding is not strict. Repeatable.
    #[arg(long, value_name = "VAR=SECRET/KEY")]
    pub env_source: Vec<EnvSource>,
    /// A mounted Secret volume to unseal into --out (SECRET: the Secret mounted there, needed
    /// for values whose binding is not strict). Repeatable; directory names must differ.
    #[arg(long, value_name = "[SECRET=]DIR")]
    pub files: Vec<FilesSource>,
    /// Where unsealed files go: an existing directory on TEE-private memory.
    #[arg(long, value_name = "DIR", env = "COFFER_OUT")]
    pub out: Option<PathBuf>,
    /// Accept an --out that is not TEE-private memory (the node can read it): testing only, and
    /// honoured only on the sim platform (on a TEE the flags come from the pod spec or the
    /// host, which must not be able to send plaintext out of the TEE).
    #[arg(long)]
    pub allow_unprotected_out: bool,
    /// The pod's namespace (set POD_NAMESPACE with the Downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// File holding the pod's namespace when --namespace and POD_NAMESPACE are not given.
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    )]
    pub namespace_file: PathBuf,
    /// What to do when a mounted Secret changed and --out was updated: signal:NAME (HUP, INT,
    /// QUIT, TERM, USR1, USR2, WINCH) sends the app that signal, restart stops it (SIGTERM,
    /// then SIGKILL after 10s) and starts it again, none only replaces the files.
    #[arg(long, default_value = "none", value_name = "signal:NAME|restart|none")]
    pub on_change: OnChange,
    /// How often mounted Secrets are checked for a change (100ms..1h).
    #[arg(long, default_value = "2s", value_parser = crate::duration::within(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub watch_interval: Duration,
    /// Start the app without the values keyd refuses (each logged), instead of exiting 77.
    #[arg(long)]
    pub allow_missing: bool,
    /// The app and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "APP ARGS")]
    pub app: Vec<OsString>,
}

/// Runs `coffer run`: the app's exit code, or the code of the reason it could not start.
pub fn run(args: RunArgs) -> ExitCode {
    // The app inherits RLIMIT_CORE 0 too: its memory holds the same plaintext.
    if let Err(e) = coffer_platform::process::harden() {
        tracing::warn!(error = %e, "could not disable core dumps");
    }
    let code = match config(args) {
        Ok(config) => match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .max_blocking_threads(4)
            .enable_all()
            .thread_name("coffer-run")
            .build()
        {
            Ok(runtime) => runtime.block_on(coffer_run::run(config)),
            Err(e) => Err(RunError::Other(format!(
                "cannot start the async runtime: {e}"
            ))),
        },
        Err(e) => Err(e),
    };
    match code {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        Err(e) => {
            eprint!("{}", crate::report(&e));
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(u8::MAX))
        }
    }
}

/// Checks the flags and opens what `coffer run` needs: the policy, the platform, the
/// collateral sources and the namespace.
fn config(args: RunArgs) -> Result<RunConfig, RunError> {
    let bad = |flag: &'static str, value: String, reason: String| RunError::BadFlag {
        flag,
        value,
        reason,
    };
    let namespace =
        coffer_run::discover::namespace(args.namespace.as_deref(), &args.namespace_file)?;
    let policy = Policy::load(&args.keyd_policy).map_err(|e| {
        bad(
            "--keyd-policy",
            args.keyd_policy.display().to_string(),
            e.to_string(),
        )
    })?;
    let verify_options = args
        .sources
        .sources()
        .options(SystemTime::now())
        .map_err(|e| {
            bad(
                "--keyd-…",
                "(collateral and VCEK sources)".into(),
                e.to_string(),
            )
        })?;
    // The sim platform keeps its key in the state directory; a real TEE needs nothing there.
    let access = match args.platform {
        PlatformChoice::Named(PlatformKind::Sim) => Access::CreateIfMissing,
        _ => Access::ExistingOnly,
    };
    let platform = open_platform(args.platform, &args.state_dir, access)
        .map_err(|e| bad("--platform", format!("{:?}", args.platform), e.to_string()))?;
    Ok(RunConfig {
        keyd: args.keyd,
        keyd_policy: Arc::new(policy),
        verify_options,
        platform,
        keyd_timeout: args.keyd_timeout,
        keyd_deadline: args.keyd_deadline,
        env: args.env,
        env_sources: args.env_source,
        files: args.files,
        out: args.out,
        allow_unprotected_out: args.allow_unprotected_out,
        namespace,
        on_change: args.on_change,
        watch_interval: args.watch_interval,
        allow_missing: args.allow_missing,
        app: args.app,
    })
}

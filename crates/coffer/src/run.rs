//! `coffer run`: flags, and their translation into a [`coffer_run::RunConfig`].

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use coffer_platform::PlatformChoice;

use crate::cli::KeydSourceArgs;

/// Flags of `coffer run`. (Help text is the user's documentation: i11-run completes it.)
#[derive(Args, Debug)]
pub struct RunArgs {
    /// keyd's address.
    #[arg(long, value_name = "HOST:PORT", env = "COFFER_KEYD")]
    pub keyd: coffer_keyd_client::KeydAddr,
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
    /// Limit on connecting to keyd and on each call.
    #[arg(long, default_value = "5s", value_parser = crate::duration::within(Duration::from_millis(1), Duration::from_secs(300)))]
    pub keyd_timeout: Duration,
    /// How long to keep retrying an unreachable keyd at start before exiting 69.
    #[arg(long, default_value = "60s", env = "COFFER_KEYD_DEADLINE", value_parser = crate::duration::within(Duration::from_millis(1), Duration::from_secs(3600)))]
    pub keyd_deadline: Duration,
    /// Unseal `coffer.v1.` values found in the environment.
    #[arg(long)]
    pub env: bool,
    /// VAR=SECRET/KEY: where an environment value came from.
    #[arg(long, value_name = "VAR=SECRET/KEY")]
    pub env_source: Vec<String>,
    /// [SECRET=]DIR: a mounted Secret volume to unseal.
    #[arg(long, value_name = "[SECRET=]DIR")]
    pub files: Vec<String>,
    /// Where unsealed files go: TEE-private memory.
    #[arg(long, value_name = "DIR", env = "COFFER_OUT")]
    pub out: Option<PathBuf>,
    /// Accept an --out that is not TEE-private memory.
    #[arg(long)]
    pub allow_unprotected_out: bool,
    /// The pod's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// File holding the pod's namespace when --namespace is not given.
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    )]
    pub namespace_file: PathBuf,
    /// signal:NAME | restart | none.
    #[arg(long, default_value = "none")]
    pub on_change: String,
    /// How often mounted Secrets are checked for a change.
    #[arg(long, default_value = "2s", value_parser = crate::duration::within(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub watch_interval: Duration,
    /// Start the app without the values keyd refuses.
    #[arg(long)]
    pub allow_missing: bool,
    /// The app and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "APP ARGS")]
    pub app: Vec<OsString>,
}

/// Runs `coffer run`.
pub fn run(args: RunArgs) -> ExitCode {
    let _ = args;
    todo!("i11-run")
}

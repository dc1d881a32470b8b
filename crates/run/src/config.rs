//! What `coffer run` was asked to do, parsed and checked by the CLI (`crates/coffer/src/run.rs`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keyd_client::KeydAddr;
use coffer_platform::Platform;

/// Everything `coffer run` needs.
pub struct RunConfig {
    /// Where keyd listens.
    pub keyd: KeydAddr,
    /// The policy keyd's evidence must satisfy.
    pub keyd_policy: Arc<Policy>,
    /// How keyd's evidence is verified (collateral, VCEKs, time).
    pub verify_options: VerifyOptions,
    /// This workload's TEE: attests its TLS certificate to keyd.
    pub platform: Arc<dyn Platform>,
    /// Limit on connecting to keyd and on each call (`--keyd-timeout`).
    pub keyd_timeout: Duration,
    /// How long to keep retrying an unreachable keyd at start before giving up
    /// (`--keyd-deadline`).
    pub keyd_deadline: Duration,
    /// Unseal `coffer.v1.` values found in the environment (`--env`).
    pub env: bool,
    /// Where environment values came from, for values whose binding does not name it
    /// (`--env-source VAR=SECRET/KEY`).
    pub env_sources: Vec<EnvSource>,
    /// Mounted Secret volumes to unseal (`--files [SECRET=]DIR`).
    pub files: Vec<FilesSource>,
    /// Where unsealed files go (`--out`): TEE-private memory.
    pub out: Option<PathBuf>,
    /// Accept an `--out` that is not TEE-private memory (`--allow-unprotected-out`).
    pub allow_unprotected_out: bool,
    /// The pod's namespace (`--namespace`, `POD_NAMESPACE`, or the service account's
    /// namespace file).
    pub namespace: String,
    /// What to do when a mounted Secret changes (`--on-change`).
    pub on_change: OnChange,
    /// How often mounted Secrets are checked for a new `..data` (`--watch-interval`).
    pub watch_interval: Duration,
    /// Start the app without values keyd refuses, instead of not starting it
    /// (`--allow-missing`).
    pub allow_missing: bool,
    /// The app and its arguments.
    pub app: Vec<OsString>,
}

impl std::fmt::Debug for RunConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunConfig")
            .field("keyd", &self.keyd)
            .field("namespace", &self.namespace)
            .field("files", &self.files)
            .field("out", &self.out)
            .field("app", &self.app)
            .finish_non_exhaustive()
    }
}

/// `--env-source VAR=SECRET/KEY`: the environment variable `VAR` holds the value of data key
/// `KEY` of Secret `SECRET` (in the pod's namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSource {
    /// The environment variable.
    pub var: String,
    /// The Secret's name.
    pub secret: String,
    /// The data key.
    pub key: String,
}

/// `--files [SECRET=]DIR`: a mounted Secret volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesSource {
    /// The Secret mounted there, when given; otherwise each value's binding names it.
    pub secret: Option<String>,
    /// The mount directory (holding `..data` and one symlink per key).
    pub dir: PathBuf,
}

/// `--on-change`: how the app learns that mounted Secrets changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnChange {
    /// Send the app this signal (`signal:HUP`).
    Signal(rustix::process::Signal),
    /// Stop the app (SIGTERM, then SIGKILL after a grace period) and start it again.
    Restart,
    /// Replace the files only (the kubelet's own behaviour).
    None,
}

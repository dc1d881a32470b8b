//! What `coffer run` was asked to do, parsed and checked by the CLI (`crates/coffer/src/run.rs`).

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keyd_client::KeydAddrs;
use coffer_platform::Platform;
use coffer_sealed::{Binding, Location, Scope};

/// Everything `coffer run` needs.
pub struct RunConfig {
    /// Where keyd's replicas listen.
    pub keyd: KeydAddrs,
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

/// Checks a Secret name and a data key with the rules a sealed value's binding applies (so a
/// flag cannot name a place no value could be bound to).
fn check_secret_and_key(secret: &str, key: &str) -> Result<(), String> {
    let at = Location {
        // Any valid namespace: only the Secret name and the key are checked here.
        namespace: "default".into(),
        secret: secret.into(),
        key: key.into(),
    };
    Binding::new(Scope::Strict, &at)
        .map(drop)
        .map_err(|e| e.to_string())
}

impl std::str::FromStr for EnvSource {
    type Err = String;

    /// `VAR=SECRET/KEY`.
    fn from_str(s: &str) -> Result<Self, String> {
        let shape = || format!("{s:?} is not VAR=SECRET/KEY (e.g. DB_PASSWORD=db/password)");
        let (var, place) = s.split_once('=').ok_or_else(shape)?;
        let (secret, key) = place.split_once('/').ok_or_else(shape)?;
        if var.is_empty() {
            return Err(shape());
        }
        check_secret_and_key(secret, key)?;
        Ok(EnvSource {
            var: var.into(),
            secret: secret.into(),
            key: key.into(),
        })
    }
}

impl std::str::FromStr for FilesSource {
    type Err = String;

    /// `[SECRET=]DIR`: the part before the first `=` is a Secret name when it holds no `/`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (secret, dir) = match s.split_once('=') {
            Some((secret, dir)) if !secret.contains('/') => {
                check_secret_and_key(secret, "key").map_err(|e| format!("{s:?}: {e}"))?;
                (Some(secret.to_string()), dir)
            }
            _ => (None, s),
        };
        if dir.is_empty() {
            return Err(format!("{s:?} names no directory: use [SECRET=]DIR"));
        }
        Ok(FilesSource {
            secret,
            dir: dir.into(),
        })
    }
}

/// The signals `--on-change signal:NAME` accepts.
const SIGNALS: [(&str, rustix::process::Signal); 7] = [
    ("HUP", rustix::process::Signal::HUP),
    ("INT", rustix::process::Signal::INT),
    ("QUIT", rustix::process::Signal::QUIT),
    ("TERM", rustix::process::Signal::TERM),
    ("USR1", rustix::process::Signal::USR1),
    ("USR2", rustix::process::Signal::USR2),
    ("WINCH", rustix::process::Signal::WINCH),
];

impl std::str::FromStr for OnChange {
    type Err = String;

    /// `signal:NAME` (`HUP` or `SIGHUP`), `restart` or `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "restart" => return Ok(OnChange::Restart),
            "none" => return Ok(OnChange::None),
            _ => {}
        }
        let names = || {
            SIGNALS
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(name) = s.strip_prefix("signal:") else {
            return Err(format!(
                "{s:?} is not signal:NAME, restart or none (e.g. signal:HUP)"
            ));
        };
        let upper = name.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        SIGNALS
            .iter()
            .find(|(n, _)| *n == bare)
            .map(|(_, signal)| OnChange::Signal(*signal))
            .ok_or_else(|| format!("unknown signal {name:?}; one of {}", names()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_sources_parse_and_check_names() {
        let s: EnvSource = "DB_PASSWORD=db-main/password".parse().unwrap();
        assert_eq!(
            (s.var.as_str(), s.secret.as_str(), s.key.as_str()),
            ("DB_PASSWORD", "db-main", "password")
        );
        for bad in ["DB", "DB=db", "=db/k", "DB=Db_Main/k", "DB=db/a b"] {
            assert!(bad.parse::<EnvSource>().is_err(), "{bad}");
        }
    }

    #[test]
    fn files_take_an_optional_secret() {
        let f: FilesSource = "db=/etc/db".parse().unwrap();
        assert_eq!(f.secret.as_deref(), Some("db"));
        let f: FilesSource = "/etc/a=b".parse().unwrap();
        assert_eq!((f.secret, f.dir), (None, PathBuf::from("/etc/a=b")));
        assert!("Bad_Name=/etc/db".parse::<FilesSource>().is_err());
        assert!("db=".parse::<FilesSource>().is_err());
    }

    #[test]
    fn on_change_names_signals_with_or_without_sig() {
        use rustix::process::Signal;
        assert_eq!("signal:HUP".parse(), Ok(OnChange::Signal(Signal::HUP)));
        assert_eq!("signal:sigusr1".parse(), Ok(OnChange::Signal(Signal::USR1)));
        assert_eq!("restart".parse(), Ok(OnChange::Restart));
        assert_eq!("none".parse(), Ok(OnChange::None));
        assert!("signal:KILL"
            .parse::<OnChange>()
            .unwrap_err()
            .contains("HUP"));
        assert!("hup".parse::<OnChange>().is_err());
    }
}

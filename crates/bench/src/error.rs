//! The crate's error type.

use std::path::PathBuf;

/// Everything that can make a benchmark fail. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// A command-line argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgs(String),

    /// The plugin socket does not exist.
    #[error(
        "plugin socket {} does not exist: start the plugin (`coffer kms serve ...`) or point \
         --socket at the socket it listens on",
        path.display()
    )]
    SocketMissing {
        /// The socket path that was looked up.
        path: PathBuf,
    },

    /// The `--socket` path exists but is not a unix socket.
    #[error(
        "{} is not a unix socket: point --socket at the socket the plugin listens on",
        path.display()
    )]
    NotASocket {
        /// The offending path.
        path: PathBuf,
    },

    /// Connecting to the plugin socket failed.
    #[error(
        "cannot connect to plugin socket {}: {detail}; check that the plugin is running and \
         that this user may open the socket",
        path.display()
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error, with its causes.
        detail: String,
    },

    /// A setup call (Status, Version, the initial Encrypt/Decrypt) failed or returned something
    /// kube-apiserver would reject.
    #[error("{call} on {} failed: {detail}; check the plugin's logs", path.display())]
    Setup {
        /// The socket path.
        path: PathBuf,
        /// The RPC that failed, e.g. `v2 Status`.
        call: &'static str,
        /// What went wrong.
        detail: String,
    },

    /// `/proc/<pid>` of the plugin could not be read.
    #[error(
        "cannot read /proc/{pid}: {detail}; pass the pid of the running plugin with \
         --plugin-pid (e.g. `pidof coffer`) or omit it"
    )]
    PluginProc {
        /// The `--plugin-pid` value.
        pid: u32,
        /// What went wrong.
        detail: String,
    },

    /// Connecting to or calling keyd failed.
    #[error("{0}; check that keyd is running, that its policy grants this client's evidence a role (with status on the keyring for keyd-handshake, unseal for keyd-unseal and run-start), and that --keyd-policy accepts keyd")]
    Keyd(String),

    /// keyd would not unseal the benchmark's first value.
    #[error(
        "keyd did not unseal a value sealed to keyring {keyring} for {namespace}/{secret}: \
         {detail}; check that keyd's configuration grants this client's role unseal on it \
         (keyrings.{keyring}.unseal with namespaces [{namespace}] and secrets [{secret}]), or \
         pass the --namespace and --secret a grant allows"
    )]
    Unseal {
        /// The keyring.
        keyring: String,
        /// The namespace the value was sealed for.
        namespace: String,
        /// The Secret the value was sealed for.
        secret: String,
        /// keyd's answer.
        detail: String,
    },

    /// An I/O error outside the plugin (tokio runtime, temp dir, child process handling).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The coffer binary could not be started.
    #[error("cannot start {}: {source}; pass a coffer binary with --exe", exe.display())]
    Spawn {
        /// The binary that was started.
        exe: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A `coffer run` (or the app alone) of `coffer bench run-start` failed.
    #[error(
        "run-start with {values} values, run {run}: {status}; check the keyd grants for \
         --namespace and --secret and the coffer run flags. Its stderr:\n{stderr}"
    )]
    RunFailed {
        /// The row's number of values.
        values: usize,
        /// The 1-based run number (0: the untimed check run).
        run: usize,
        /// The exit status, or what was wrong with the app's plaintexts.
        status: String,
        /// The tail of its stderr.
        stderr: String,
    },

    /// The plugin exited before it answered `Status`.
    #[error(
        "run {run}: {} exited ({status}) before answering Status; check that it supports \
         `kms serve --platform sim`. Its stderr:\n{stderr}",
        exe.display()
    )]
    ExitedEarly {
        /// The binary that was started.
        exe: PathBuf,
        /// The 1-based run number.
        run: usize,
        /// The exit status.
        status: String,
        /// The tail of its stderr.
        stderr: String,
    },

    /// The plugin did not answer `Status` in time (it was killed).
    #[error(
        "run {run}: {} did not answer Status on {} within {}; it was killed. Its stderr:\n{stderr}",
        exe.display(),
        socket.display(),
        humantime::format_duration(*timeout)
    )]
    StartupTimeout {
        /// The binary that was started.
        exe: PathBuf,
        /// The socket that was polled.
        socket: PathBuf,
        /// The 1-based run number.
        run: usize,
        /// How long we waited.
        timeout: std::time::Duration,
        /// The tail of its stderr.
        stderr: String,
    },

    /// The plugin did not exit after SIGTERM in time (it was killed).
    #[error(
        "run {run}: {} did not exit within {} of SIGTERM; it was killed. Fix its graceful \
         shutdown. Its stderr:\n{stderr}",
        exe.display(),
        humantime::format_duration(*timeout)
    )]
    ShutdownTimeout {
        /// The binary that was started.
        exe: PathBuf,
        /// The 1-based run number.
        run: usize,
        /// How long we waited.
        timeout: std::time::Duration,
        /// The tail of its stderr.
        stderr: String,
    },

    /// Merging latency histograms failed (a bug in this crate).
    #[error("cannot merge latency histograms: {0}; please report this bug")]
    Histogram(String),
}

impl BenchError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Formats an error with its chain of causes: `outer: inner: innermost`.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

/// Describes a failed gRPC call: `INVALID_ARGUMENT: message (causes)`.
pub(crate) fn describe_status(status: &tonic::Status) -> String {
    let mut out = format!("{}: {}", code_name(status.code()), status.message());
    if let Some(src) = std::error::Error::source(status) {
        out.push_str(" (");
        out.push_str(&chain(src));
        out.push(')');
    }
    out
}

/// The canonical gRPC name of a status code (`DEADLINE_EXCEEDED`, as grpc-go prints it).
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_grpc_canonical() {
        assert_eq!(
            code_name(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
        let s = tonic::Status::invalid_argument("bad uid");
        assert_eq!(describe_status(&s), "INVALID_ARGUMENT: bad uid");
    }

    #[test]
    fn missing_socket_message_names_path_and_fix() {
        let e = BenchError::SocketMissing {
            path: "/run/x.sock".into(),
        };
        let m = e.to_string();
        assert!(m.contains("/run/x.sock"), "{m}");
        assert!(m.contains("--socket"), "{m}");
    }
}

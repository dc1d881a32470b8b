use std::io;
use std::path::PathBuf;

/// What went wrong with the credential store or the agent.
///
/// Messages name files and ids, never credential bytes or passphrases.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// The store file exists but is not a credential store this version can read.
    #[error(
        "{path} is not a valid coffer credential store: {problem} (the file was not modified)"
    )]
    Malformed {
        /// The store file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },

    /// The store was written by a newer `kubectl coffer`.
    #[error(
        "{path} is a version {version} credential store, newer than this kubectl-coffer \
         understands (version {supported}); upgrade kubectl-coffer"
    )]
    NewerVersion {
        /// The store file.
        path: PathBuf,
        /// Its version.
        version: u32,
        /// The newest version this build reads.
        supported: u32,
    },

    /// The passphrase does not open the store (or the file was altered).
    #[error("wrong passphrase for {path} (or the store file was altered): nothing was unsealed")]
    WrongPassphrase {
        /// The store file.
        path: PathBuf,
    },

    /// The platform sealing key does not open the store: another TEE identity, another
    /// machine, or an altered file.
    #[error(
        "{path} cannot be unsealed with this machine's {protection} sealing key (sealed by another \
         TEE identity or machine, or the file was altered)"
    )]
    UnsealFailed {
        /// The store file.
        path: PathBuf,
        /// `platform (<kind>)` or `sim`.
        protection: String,
    },

    /// The store is passphrase-protected and no passphrase was given.
    #[error("{path} is protected by a passphrase and none was given")]
    PassphraseRequired {
        /// The store file.
        path: PathBuf,
    },

    /// A passphrase is empty or unreadable.
    #[error("{0}")]
    BadPassphrase(String),

    /// The TEE platform could not provide its sealing key.
    #[error("the {protection} protection needs this machine's TEE sealing key: {source}")]
    Platform {
        /// The protection asked for.
        protection: &'static str,
        /// Why the platform failed.
        #[source]
        source: coffer_platform::PlatformError,
    },

    /// A credential or id is out of bounds or inconsistent.
    #[error("{0}")]
    InvalidCredential(String),

    /// No entry with that id.
    #[error("the credential store {path} holds no credential with id {id:?}")]
    NotFound {
        /// The id asked for.
        id: String,
        /// The store file.
        path: PathBuf,
    },

    /// An entry with that id exists already.
    #[error(
        "the credential store {path} already holds a credential with id {id:?}; \
         pass another --id, or restore that one first"
    )]
    Exists {
        /// The id.
        id: String,
        /// The store file.
        path: PathBuf,
    },

    /// No agent listens on the socket (none started, or it has locked itself and exited).
    #[error("no kubectl coffer agent is running at {socket}")]
    AgentNotRunning {
        /// The socket.
        socket: PathBuf,
    },

    /// Talking to the agent failed.
    #[error("the kubectl coffer agent at {socket}: {problem}")]
    Agent {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        problem: String,
    },

    /// The store's key derivation or encryption failed (not an input problem).
    #[error("credential store cryptography failed: {0}")]
    Crypto(String),
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

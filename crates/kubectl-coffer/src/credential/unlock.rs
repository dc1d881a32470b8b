//! Opening the credential store: where it is, and the passphrase — from the file named by
//! `COFFER_PASSPHRASE_FILE`, or typed on the terminal without echo; never from the command line.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use coffer_credstore::{agent, Passphrase, Protection, Store, PASSPHRASE_FILE_ENV};
use zeroize::Zeroizing;

use crate::error::Error;

/// `--store`, or the default `~/.kube/coffer/credentials.sealed`.
pub(crate) fn store_path(arg: Option<PathBuf>) -> Result<PathBuf, Error> {
    arg.or_else(Store::default_path).ok_or_else(|| {
        Error::usage(format!(
            "no credential store given and $HOME is not set: pass --store or set {}",
            coffer_credstore::STORE_ENV
        ))
    })
}

/// `--socket`, or the default agent socket.
pub(crate) fn socket_path(arg: Option<PathBuf>) -> Result<PathBuf, Error> {
    arg.or_else(agent::default_socket_path).ok_or_else(|| {
        Error::usage(format!(
            "no agent socket given and neither $XDG_RUNTIME_DIR nor $HOME is set: pass --socket \
             or set {}",
            agent::SOCKET_ENV
        ))
    })
}

/// Whether a passphrase can be typed: stdin is a terminal.
pub(crate) fn terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Opens the store at `path`, asking for its passphrase when it has one (prompting only when
/// `interactive`).
pub(crate) fn open_store(path: &Path, interactive: bool) -> Result<Store, Error> {
    let protection = Store::protection_of(path)
        .map_err(store_error)?
        .ok_or_else(|| {
            Error::new(format!(
                "there is no credential store at {} (run `kubectl coffer kubeconfig protect` \
                 first, or pass the right --store)",
                path.display()
            ))
        })?;
    warn_if_simulation(&protection);
    let passphrase = if protection.needs_passphrase() {
        Some(passphrase(path, interactive)?)
    } else {
        None
    };
    Store::open(path, passphrase.as_ref()).map_err(store_error)
}

/// Says loudly, on stderr, that a `sim` store protects nothing.
pub(crate) fn warn_if_simulation(protection: &Protection) {
    if *protection == Protection::Sim {
        eprintln!(
            "WARNING: credential store protection: {}",
            protection.describe()
        );
    }
}

/// The passphrase of an existing store.
pub(crate) fn passphrase(path: &Path, interactive: bool) -> Result<Passphrase, Error> {
    if let Some(file) = std::env::var_os(PASSPHRASE_FILE_ENV) {
        return Passphrase::from_file(Path::new(&file)).map_err(store_error);
    }
    if !interactive {
        return Err(Error::new(format!(
            "{} is protected by a passphrase but there is no terminal to ask for it: run \
             `kubectl coffer agent` in a terminal (it asks once and holds the credentials for a \
             while), or set {PASSPHRASE_FILE_ENV} to a file holding the passphrase",
            path.display()
        )));
    }
    prompt(&format!("Passphrase for {}: ", path.display()))
}

/// The passphrase of a store about to be created: typed twice, or from the file.
pub(crate) fn new_passphrase(path: &Path) -> Result<Passphrase, Error> {
    if let Some(file) = std::env::var_os(PASSPHRASE_FILE_ENV) {
        return Passphrase::from_file(Path::new(&file)).map_err(store_error);
    }
    if !terminal() {
        return Err(Error::usage(format!(
            "a new passphrase is needed for {} but there is no terminal to ask for it: run this \
             in a terminal, or set {PASSPHRASE_FILE_ENV} to a file holding the passphrase",
            path.display()
        )));
    }
    let first = prompt(&format!("New passphrase for {}: ", path.display()))?;
    let second = read_tty("Repeat the passphrase: ")?;
    if !first.matches(&second) {
        return Err(Error::usage(
            "the two passphrases differ; nothing was changed",
        ));
    }
    Ok(first)
}

fn prompt(message: &str) -> Result<Passphrase, Error> {
    Passphrase::new(read_tty(message)?).map_err(store_error)
}

fn read_tty(message: &str) -> Result<Zeroizing<String>, Error> {
    rpassword::prompt_password(message)
        .map(Zeroizing::new)
        .map_err(|e| Error::new(format!("reading the passphrase from the terminal: {e}")))
}

/// A store error as a command error.
pub(crate) fn store_error(e: coffer_credstore::Error) -> Error {
    Error::new(e.to_string())
}

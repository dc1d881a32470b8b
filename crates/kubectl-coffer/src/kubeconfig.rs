//! `kubectl coffer kubeconfig protect|restore`: move a kubeconfig user's client certificate and
//! key or token into the sealed credential store, leaving an exec section that runs
//! `kubectl-coffer credential` — and, after explicit confirmation, back.

mod edit;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use coffer_credstore::{Protection, Store, STORE_ENV};
use serde_yaml_ng::Value;

use crate::credential::unlock;
use crate::error::Error;

/// `kubectl coffer kubeconfig …`
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Move a user's client certificate and key or token into the sealed credential store and
    /// make kubectl get them through `kubectl-coffer credential`.
    Protect(ProtectArgs),
    /// Put a protected user's credential back into the kubeconfig, in plaintext.
    Restore(RestoreArgs),
}

/// Which protection a new store gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtectionChoice {
    /// `platform` where this machine is a TEE with a sealing key, else `passphrase`.
    Auto,
    /// This machine's TEE sealing key.
    Platform,
    /// A key derived from a passphrase (argon2id).
    Passphrase,
    /// Simulation: protects nothing (tests only).
    Sim,
}

/// Arguments of `kubeconfig protect`.
#[derive(Args, Debug)]
pub struct ProtectArgs {
    /// The kubeconfig [default: the first file of $KUBECONFIG, else ~/.kube/config].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The user to protect [default: the current context's user].
    #[arg(long)]
    pub user: Option<String>,
    /// The credential's id in the store [default: the user's name].
    #[arg(long)]
    pub id: Option<String>,
    /// The sealed credential store [default: ~/.kube/coffer/credentials.sealed].
    #[arg(long, env = STORE_ENV, value_name = "FILE")]
    pub store: Option<PathBuf>,
    /// How a new store is sealed (an existing store keeps its protection).
    #[arg(long, value_enum, default_value_t = ProtectionChoice::Auto)]
    pub protection: ProtectionChoice,
    /// Delete the files named by client-certificate, client-key or tokenFile once their
    /// contents are sealed.
    #[arg(long)]
    pub remove_files: bool,
}

/// Arguments of `kubeconfig restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The kubeconfig [default: the first file of $KUBECONFIG, else ~/.kube/config].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The user to restore [default: the current context's user].
    #[arg(long)]
    pub user: Option<String>,
    /// Really write the credential into the kubeconfig in plaintext. Without it, only says
    /// what would be written (exit 2).
    #[arg(long)]
    pub confirm: bool,
}

/// Runs `kubectl coffer kubeconfig …`.
pub fn run(command: Command) -> Result<ExitCode, Error> {
    match command {
        Command::Protect(args) => protect(args),
        Command::Restore(args) => restore(args),
    }
}

fn protect(args: ProtectArgs) -> Result<ExitCode, Error> {
    let path = kubeconfig_path(args.kubeconfig)?;
    let (mut doc, mode) = load(&path)?;
    let name = edit::selected_user(&doc, args.user.as_deref())?;
    let id = args.id.unwrap_or_else(|| name.clone());
    let store_path = absolute(&unlock::store_path(args.store)?)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let user = edit::user_mut(&mut doc, &name)?;
    let taken = edit::take_credential(user, &name, base)?;

    // The store is written (and fsynced) before the kubeconfig loses the credential, so a
    // crash in between leaves it in both places, never in neither.
    let _lock = Store::lock(&store_path).map_err(unlock::store_error)?;
    remove_stale_kubeconfig_temps(&path)?;
    let mut store = match Store::protection_of(&store_path).map_err(unlock::store_error)? {
        Some(existing) => {
            if args.protection != ProtectionChoice::Auto
                && existing.name() != choice_name(args.protection)
            {
                return Err(Error::usage(format!(
                    "{} is already sealed with {} protection, not {}; a store has one protection",
                    store_path.display(),
                    existing.name(),
                    choice_name(args.protection)
                )));
            }
            unlock::open_store(&store_path, unlock::terminal())?
        }
        None => {
            let protection = new_protection(args.protection)?;
            unlock::warn_if_simulation(&protection);
            let passphrase = if protection.needs_passphrase() {
                Some(unlock::new_passphrase(&store_path)?)
            } else {
                None
            };
            Store::create(&store_path, protection, passphrase.as_ref())
                .map_err(unlock::store_error)?
        }
    };
    // The same credential under the same id is what a protect interrupted after saving the
    // store left behind: carry on with the kubeconfig.
    if store.get(&id).ok() != Some(&taken.credential) {
        store
            .insert(&id, taken.credential)
            .map_err(unlock::store_error)?;
        store.save().map_err(unlock::store_error)?;
    }

    edit::install_exec(
        user,
        &edit::ExecRef {
            store: store_path.clone(),
            id: id.clone(),
        },
    );
    save(&path, &doc, mode)?;

    println!(
        "protected user {name:?} of {}: moved {} into {} (id {id:?})",
        path.display(),
        taken.fields.join(", "),
        store_path.display()
    );
    println!("protection: {}", store.protection().describe());
    println!(
        "kubectl now runs `{} credential` for this user; `kubectl coffer agent` unlocks the store \
         once and holds the credential for a while",
        edit::PLUGIN_COMMAND
    );
    println!("note: the rewrite keeps every setting of the kubeconfig but not its comments");
    if !taken.files.is_empty() {
        let files: Vec<String> = taken
            .files
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        if args.remove_files {
            for file in &taken.files {
                fs::remove_file(file).map_err(|e| {
                    Error::new(format!(
                        "the credential is protected, but removing {} failed: {e}; delete it yourself",
                        file.display()
                    ))
                })?;
            }
            println!("removed {}", files.join(", "));
        } else {
            println!(
                "note: {} still hold(s) the credential in plaintext: delete them (or use \
                 --remove-files next time)",
                files.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn restore(args: RestoreArgs) -> Result<ExitCode, Error> {
    let path = kubeconfig_path(args.kubeconfig)?;
    let (mut doc, mode) = load(&path)?;
    let name = edit::selected_user(&doc, args.user.as_deref())?;
    let user = edit::user_mut(&mut doc, &name)?;
    let exec = edit::exec_ref(user, &name)?;
    if !args.confirm {
        eprintln!(
            "would write user {name:?}'s credential (id {:?} in {}) into {} in PLAINTEXT and \
             remove it from the store; run again with --confirm to do that",
            exec.id,
            exec.store.display(),
            path.display()
        );
        return Ok(ExitCode::from(2));
    }
    let _lock = Store::lock(&exec.store).map_err(unlock::store_error)?;
    remove_stale_kubeconfig_temps(&path)?;
    let mut store = unlock::open_store(&exec.store, unlock::terminal())?;
    let credential = store.get(&exec.id).map_err(unlock::store_error)?;
    let parts = credential.parts().join(", ");
    edit::install_credential(user, credential)?;
    // The kubeconfig gets the credential before the store lets go of it.
    save(&path, &doc, mode)?;
    store.remove(&exec.id).map_err(unlock::store_error)?;
    store.save().map_err(unlock::store_error)?;
    println!(
        "restored user {name:?} of {}: its {parts} are back in the kubeconfig, in plaintext; \
         removed id {:?} from {}",
        path.display(),
        exec.id,
        exec.store.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn new_protection(choice: ProtectionChoice) -> Result<Protection, Error> {
    Ok(match choice {
        ProtectionChoice::Auto => match Protection::detect_platform() {
            Some(platform) => platform,
            None => Protection::new_passphrase().map_err(unlock::store_error)?,
        },
        ProtectionChoice::Platform => Protection::detect_platform().ok_or_else(|| {
            Error::usage(
                "--protection platform needs a TEE with a sealing key (SGX or SEV-SNP) and none \
                 was detected on this machine; use --protection passphrase",
            )
        })?,
        ProtectionChoice::Passphrase => {
            Protection::new_passphrase().map_err(unlock::store_error)?
        }
        ProtectionChoice::Sim => Protection::Sim,
    })
}

fn choice_name(choice: ProtectionChoice) -> &'static str {
    match choice {
        ProtectionChoice::Auto => "auto",
        ProtectionChoice::Platform => "platform",
        ProtectionChoice::Passphrase => "passphrase",
        ProtectionChoice::Sim => "sim",
    }
}

/// `--kubeconfig`, else the first file of `$KUBECONFIG`, else `~/.kube/config`; symlinks
/// resolved so the rewrite replaces the real file.
fn kubeconfig_path(arg: Option<PathBuf>) -> Result<PathBuf, Error> {
    let from_env = || {
        std::env::var_os("KUBECONFIG")
            .and_then(|list| std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty()))
    };
    let home = || {
        std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .map(|h| PathBuf::from(h).join(".kube/config"))
    };
    let path = arg
        .or_else(from_env)
        .or_else(home)
        .ok_or_else(|| Error::usage("no kubeconfig: pass --kubeconfig"))?;
    fs::canonicalize(&path).map_err(|e| Error::usage(format!("kubeconfig {}: {e}", path.display())))
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    std::env::current_dir()
        .map(|dir| dir.join(path))
        .map_err(|e| Error::new(format!("resolving {}: {e}", path.display())))
}

fn load(path: &Path) -> Result<(Value, u32), Error> {
    let text = fs::read_to_string(path)
        .map_err(|e| Error::usage(format!("reading {}: {e}", path.display())))?;
    let mode = fs::metadata(path)
        .map_err(|e| Error::new(format!("reading {}: {e}", path.display())))?
        .permissions()
        .mode()
        & 0o7777;
    let doc: Value = serde_yaml_ng::from_str(&text)
        .map_err(|e| Error::usage(format!("{} is not a YAML kubeconfig: {e}", path.display())))?;
    if !doc.is_mapping() {
        return Err(Error::usage(format!(
            "{} is not a kubeconfig",
            path.display()
        )));
    }
    Ok((doc, mode))
}

/// Removes kubeconfig temporaries that a killed protect or restore left behind: a restore's
/// holds the plaintext credential. Only this tool makes such names, and its writers hold the
/// store lock.
fn remove_stale_kubeconfig_temps(path: &Path) -> Result<(), Error> {
    coffer_platform::durable::remove_stale_temps(path)
        .map(drop)
        .map_err(|e| Error::new(format!("cleaning up after {}: {e}", path.display())))
}

/// Writes the kubeconfig atomically with its old mode; no backup is kept (it would hold the
/// plaintext credential).
fn save(path: &Path, doc: &Value, mode: u32) -> Result<(), Error> {
    let text = serde_yaml_ng::to_string(doc)
        .map_err(|e| Error::new(format!("encoding the kubeconfig: {e}")))?;
    coffer_platform::durable::write_atomic(path, text.as_bytes(), mode)
        .map_err(|e| Error::new(format!("writing {}: {e}", path.display())))
}

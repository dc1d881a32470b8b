//! Standalone keystores through a TCB update: the keystore root and `coffer keys recover`.
//!
//! SGX seal keys are derived with the enclave's *current* CPUSVN and ISVSVN: Gramine's
//! `/dev/attestation/keys/_sgx_mrenclave` and `_sgx_mrsigner` are EGETKEY results for the
//! running enclave (Gramine `pal/src/host/linux-sgx/enclave_framework.c`, `sgx_get_seal_key`,
//! v1.8), so a microcode update, a TCB recovery or an `isvsvn` bump changes them and a keystore
//! sealed with them directly no longer opens. (Occlum's backend pins CPUSVN and ISVSVN to 0.)
//!
//! `coffer keys init --recovery-key …` therefore gives the keystore a root secret exactly as
//! keyd has one — `keyd-root.json` in the state directory, written and opened by
//! [`KeydRoot`] — and seals the keystore's KEKs and integrity key under keys derived from that
//! root ([`KeydRoot::platform`]). Only the root is sealed to the platform, and `k` of the `n`
//! recovery shares emitted at init rebuild it: `coffer keys recover` reseals the root to the new
//! platform identity and nothing else in the directory changes, so every KEK, and every
//! ciphertext made with one, works again.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use coffer_keyd::{KeydError, KeydRoot};
use coffer_keystore::store::KEYSTORE_FILE;
use coffer_keystore::Keystore;
use coffer_platform::{Access, Platform};

use crate::cli::{KeysInitArgs, KeysRecoverArgs};
use crate::cmd::open_store_platform;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The platform the keystore in `state_dir` is sealed with: `platform` itself, or, when the
/// state directory has a keystore root, keys derived from that root (opened with `platform`).
/// A root that no longer opens is reported with the way back: `coffer keys recover`.
pub(crate) fn keystore_platform(
    state_dir: &Path,
    platform: Arc<dyn Platform>,
) -> Result<Arc<dyn Platform>, Error> {
    if !state_dir.join(coffer_keyd::ROOT_FILE).exists() {
        return Ok(platform);
    }
    match KeydRoot::open(state_dir, platform.as_ref()) {
        Ok(root) => Ok(root.platform(platform)),
        Err(KeydError::RootSealedElsewhere {
            path,
            sealed_by,
            recovery,
        }) => {
            let way_back = match recovery {
                Some(r) => format!(
                    "reopen it with `coffer keys recover --state-dir {} --share FILE \
                     --operator-key FILE`, giving {} of its {} recovery shares",
                    state_dir.display(),
                    r.threshold,
                    r.total
                ),
                None => "it has no recovery shares, so only the platform identity that sealed \
                         it can open it"
                    .to_string(),
            };
            Err(format!(
                "the keystore root {} (sealed by the {sealed_by} platform) does not open on this \
                 platform identity: a TCB update (new microcode, a TCB recovery) or an ISVSVN \
                 bump changed the SGX seal key, or the state directory was moved to another \
                 machine; nothing was changed; {way_back}",
                path.display()
            )
            .into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The recovery split of the keystore root in `state_dir`, if it has one (no TEE needed).
pub(crate) fn recovery_info(state_dir: &Path) -> Result<Option<coffer_keyd::RecoveryInfo>, Error> {
    if !state_dir.join(coffer_keyd::ROOT_FILE).exists() {
        return Ok(None);
    }
    Ok(coffer_keyd::root_info(state_dir)?.recovery)
}

/// `coffer keys init`: a keystore with its first KEK; with `--recovery-key`, under a new
/// keystore root whose recovery shares are written for the operators.
pub(crate) fn init(args: KeysInitArgs) -> Result<ExitCode, Error> {
    let request = crate::keyd::recovery_request(&args.recovery)?;
    let (platform, state_dir) = open_store_platform(&args.store, Access::CreateIfMissing)?;
    let Some(request) = request else {
        let keystore = Keystore::new(&state_dir, keystore_platform(&state_dir, platform)?);
        let info = keystore.init()?;
        print_created(&info);
        return Ok(ExitCode::SUCCESS);
    };
    let keystore_path = state_dir.join(KEYSTORE_FILE);
    if keystore_path.exists() {
        return Err(format!(
            "--recovery-key applies to a new keystore, but {} exists and its KEKs are sealed \
             without a root; it was not modified. Use a new --state-dir (and move Secrets to it \
             with a key rotation) to get recovery shares",
            keystore_path.display()
        )
        .into());
    }
    let (root, shares) = KeydRoot::init(&state_dir, platform.as_ref(), Some(&request))?;
    let info = Keystore::new(&state_dir, root.platform(platform)).init()?;
    print_created(&info);
    crate::keyd::write_shares(&args.recovery, &request, &shares, "this keystore")?;
    Ok(ExitCode::SUCCESS)
}

fn print_created(info: &coffer_keystore::KeystoreInfo) {
    let primary = info.primary().map(|k| k.id.as_str()).unwrap_or("");
    println!(
        "created keystore {} with primary KEK {primary}",
        info.path.display()
    );
}

/// `coffer keys recover`: rebuilds the keystore root from opened shares, reseals it to this
/// platform, and checks that the keystore opens and every KEK unseals with it.
pub(crate) fn recover(args: KeysRecoverArgs) -> Result<ExitCode, Error> {
    let (_, state_dir) = args.store.resolved();
    let info = match coffer_keyd::root_info(&state_dir) {
        Err(KeydError::NotInitialised { .. }) => {
            return Err(format!(
                "{} has no keystore root ({}): the keystore there was created without `coffer \
                 keys init --recovery-key`, so there are no recovery shares for it and only the \
                 platform identity that sealed it can open it",
                state_dir.display(),
                coffer_keyd::ROOT_FILE
            )
            .into())
        }
        other => other?,
    };
    let shares = crate::keyd::read_shares(&args.shares)?;
    let keys = crate::keyd::read_operator_keys(&args.operator_keys)?;
    let opened = coffer_keyd::open_shares(&info.instance_id, &shares, &keys)?;
    let (platform, state_dir) = open_store_platform(&args.store, Access::CreateIfMissing)?;
    let root = KeydRoot::recover(&state_dir, platform.as_ref(), &opened)?;
    let keystore = Keystore::new(&state_dir, root.platform(platform.clone()));
    let ring = keystore.load()?;
    println!(
        "recovered keystore {} ({} KEKs, primary {}): its root is now sealed to this {} \
         platform; start (or restart) `coffer kms serve`",
        keystore.path().display(),
        ring.len(),
        ring.primary_id(),
        platform.kind().name()
    );
    Ok(ExitCode::SUCCESS)
}

//! How a store is sealed: the platform's sealing key, a passphrase (argon2id), or simulation.

use std::fmt;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use coffer_platform::{Access, PlatformChoice, PlatformKind, SealingKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Error;

/// The platform sealing-key purpose of credential stores, so the key is independent of every
/// other key Coffer derives on the same TEE.
const PLATFORM_PURPOSE: &str = "coffer credstore v1";
/// argon2id memory cost of new stores, KiB (64 MiB).
pub const ARGON2_MEMORY_KIB: u32 = 64 * 1024;
/// argon2id passes of new stores.
pub const ARGON2_ITERATIONS: u32 = 3;
const ARGON2_PARALLELISM: u32 = 1;
const SALT_LEN: usize = 16;
// Bounds on parameters read from a file, so an altered store cannot make us allocate or spin
// without limit before the authentication check fails.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MIN_MEMORY_KIB: u32 = 8 * 1024;
const MAX_ITERATIONS: u32 = 16;
const MAX_PARALLELISM: u32 = 8;
const MAX_PASSPHRASE_BYTES: usize = 1024;

/// A passphrase: zeroized on drop, never printed.
pub struct Passphrase(Zeroizing<String>);

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl Passphrase {
    /// A passphrase typed by the user (one trailing newline is ignored). Refuses an empty one.
    pub fn new(mut text: Zeroizing<String>) -> Result<Self, Error> {
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        if text.is_empty() {
            return Err(Error::BadPassphrase("the passphrase is empty".into()));
        }
        if text.len() > MAX_PASSPHRASE_BYTES {
            return Err(Error::BadPassphrase(format!(
                "the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes"
            )));
        }
        Ok(Passphrase(text))
    }

    /// Reads a passphrase from a file (see [`crate::PASSPHRASE_FILE_ENV`]).
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
            Error::BadPassphrase(format!(
                "reading the passphrase file {}: {e}",
                path.display()
            ))
        })?);
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            Error::BadPassphrase(format!(
                "the passphrase file {} is not UTF-8 text",
                path.display()
            ))
        })?;
        Passphrase::new(Zeroizing::new(text.to_owned()))
            .map_err(|e| Error::BadPassphrase(format!("passphrase file {}: {e}", path.display())))
    }

    /// True when `typed` is the same passphrase (for "repeat the passphrase" prompts).
    pub fn matches(&self, typed: &str) -> bool {
        self.0.as_str() == typed.trim_end_matches(['\r', '\n'])
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// How a store is sealed. Recorded in the store's header (nothing secret) and authenticated
/// with its contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Protection {
    /// The workstation's TEE sealing key.
    Platform {
        /// The platform's name (`sgx-gramine`, `sgx-occlum`, `snp`).
        platform: String,
    },
    /// A key derived from a passphrase with argon2id.
    Passphrase {
        /// Always `argon2id`.
        kdf: String,
        /// Memory cost, KiB.
        memory_kib: u32,
        /// Passes.
        iterations: u32,
        /// Lanes.
        parallelism: u32,
        /// Random salt, base64.
        salt: String,
    },
    /// The simulation platform's key, a plain file next to the store: no protection.
    Sim,
}

impl Protection {
    /// Passphrase protection with the default argon2id cost and a fresh random salt.
    pub fn new_passphrase() -> Result<Self, Error> {
        let mut salt = [0u8; SALT_LEN];
        coffer_platform::fill_random(&mut salt).map_err(|e| Error::Crypto(e.to_string()))?;
        Ok(Protection::Passphrase {
            kdf: "argon2id".into(),
            memory_kib: ARGON2_MEMORY_KIB,
            iterations: ARGON2_ITERATIONS,
            parallelism: ARGON2_PARALLELISM,
            salt: STANDARD.encode(salt),
        })
    }

    /// Platform protection with this machine's TEE, if one is detected and offers a sealing
    /// key (TDX does not); `None` otherwise.
    pub fn detect_platform() -> Option<Self> {
        let found = coffer_platform::detect::detect(&coffer_platform::platform_root())?;
        (found.kind != PlatformKind::Tdx).then(|| Protection::Platform {
            platform: found.kind.name().to_string(),
        })
    }

    /// The protection's short name: `platform`, `passphrase` or `sim`.
    pub fn name(&self) -> &'static str {
        match self {
            Protection::Platform { .. } => "platform",
            Protection::Passphrase { .. } => "passphrase",
            Protection::Sim => "sim",
        }
    }

    /// True when opening the store needs a passphrase.
    pub fn needs_passphrase(&self) -> bool {
        matches!(self, Protection::Passphrase { .. })
    }

    /// What this protection defends against, in one sentence for the user.
    pub fn describe(&self) -> String {
        match self {
            Protection::Platform { platform } => format!(
                "platform ({platform}): sealed with this machine's TEE sealing key; only the same \
                 TEE identity on this machine can unseal it"
            ),
            Protection::Passphrase {
                memory_kib,
                iterations,
                ..
            } => format!(
                "passphrase: sealed with a key derived from your passphrase (argon2id, {} MiB, \
                 {iterations} passes); whoever copies the file must still guess the passphrase, \
                 so choose a long one",
                memory_kib / 1024
            ),
            Protection::Sim => "SIMULATION — PROTECTS NOTHING: the sealing key is a plain file \
                 (sim-platform.key) next to the store, so anyone who can read that directory can \
                 read the credentials; use only for tests"
                .to_string(),
        }
    }

    /// Derives the store key. `dir` is the store's directory (the simulation key lives there;
    /// `create` allows making it).
    pub(crate) fn key(
        &self,
        dir: &Path,
        passphrase: Option<&Passphrase>,
        store: &Path,
        create: bool,
    ) -> Result<SealingKey, Error> {
        match self {
            Protection::Platform { platform } => {
                let kind = PlatformKind::from_name(platform)
                    .filter(|k| *k != PlatformKind::Sim)
                    .ok_or_else(|| Error::Malformed {
                        path: store.to_path_buf(),
                        problem: format!("unknown platform {platform:?}"),
                    })?;
                platform_key(
                    PlatformChoice::Named(kind),
                    dir,
                    Access::ExistingOnly,
                    "platform",
                )
            }
            Protection::Sim => {
                let access = if create {
                    Access::CreateIfMissing
                } else {
                    Access::ExistingOnly
                };
                platform_key(PlatformChoice::Named(PlatformKind::Sim), dir, access, "sim")
            }
            Protection::Passphrase {
                kdf,
                memory_kib,
                iterations,
                parallelism,
                salt,
            } => {
                let malformed = |problem: String| Error::Malformed {
                    path: store.to_path_buf(),
                    problem,
                };
                if kdf != "argon2id" {
                    return Err(malformed(format!("unknown key derivation {kdf:?}")));
                }
                if !(MIN_MEMORY_KIB..=MAX_MEMORY_KIB).contains(memory_kib)
                    || !(1..=MAX_ITERATIONS).contains(iterations)
                    || !(1..=MAX_PARALLELISM).contains(parallelism)
                {
                    return Err(malformed(format!(
                        "argon2id parameters out of range (memory {memory_kib} KiB, \
                         {iterations} passes, {parallelism} lanes)"
                    )));
                }
                let salt = STANDARD
                    .decode(salt)
                    .ok()
                    .filter(|s| (SALT_LEN..=64).contains(&s.len()))
                    .ok_or_else(|| {
                        malformed("the passphrase salt is not 16 to 64 bytes of base64".into())
                    })?;
                let passphrase = passphrase.ok_or_else(|| Error::PassphraseRequired {
                    path: store.to_path_buf(),
                })?;
                let params = argon2::Params::new(*memory_kib, *iterations, *parallelism, Some(32))
                    .map_err(|e| malformed(format!("argon2id parameters: {e}")))?;
                let argon = argon2::Argon2::new(
                    argon2::Algorithm::Argon2id,
                    argon2::Version::V0x13,
                    params,
                );
                let mut key = Zeroizing::new([0u8; 32]);
                argon
                    .hash_password_into(passphrase.bytes(), &salt, &mut key[..])
                    .map_err(|e| Error::Crypto(format!("argon2id: {e}")))?;
                Ok(SealingKey::from_bytes(key))
            }
        }
    }
}

fn platform_key(
    choice: PlatformChoice,
    dir: &Path,
    access: Access,
    protection: &'static str,
) -> Result<SealingKey, Error> {
    let platform_error = |source| Error::Platform { protection, source };
    let platform = coffer_platform::open_platform(choice, dir, access).map_err(platform_error)?;
    platform
        .sealing_key(PLATFORM_PURPOSE)
        .map_err(platform_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_input_rules() {
        let p = Passphrase::new(Zeroizing::new("correct horse\n".into())).unwrap();
        assert_eq!(p.bytes(), b"correct horse");
        assert_eq!(format!("{p:?}"), "Passphrase(<redacted>)");
        assert!(Passphrase::new(Zeroizing::new("\n".into())).is_err());
        assert!(Passphrase::new(Zeroizing::new("x".repeat(2000))).is_err());
    }

    #[test]
    fn hostile_argon2_parameters_are_refused_before_hashing() {
        let dir = tempfile::tempdir().unwrap();
        let p = Passphrase::new(Zeroizing::new("pw".into())).unwrap();
        let mut protection = Protection::new_passphrase().unwrap();
        if let Protection::Passphrase { memory_kib, .. } = &mut protection {
            *memory_kib = u32::MAX;
        }
        let err = protection
            .key(dir.path(), Some(&p), &dir.path().join("s"), false)
            .unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}

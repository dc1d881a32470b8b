//! The bounds keyd's API puts on requests: callers check them before sending, keyd enforces
//! them.

/// Largest plaintext `Wrap` accepts.
pub const MAX_PLAINTEXT_LEN: usize = 512;
/// Largest ciphertext `Unwrap` accepts.
pub const MAX_CIPHERTEXT_LEN: usize = 1024;
/// Most items `UnwrapBatch` accepts.
pub const MAX_BATCH_ITEMS: usize = 64;
/// Most items `UnsealBatch` accepts (a pod's sealed values, unsealed at its start).
pub const MAX_UNSEAL_BATCH_ITEMS: usize = 256;
/// Most bytes of sealed text one `UnsealBatch` call carries; the client splits larger lists
/// into several calls (one value longer than this goes alone), so a request stays well below
/// keyd's default message limit (2 MiB).
pub const MAX_UNSEAL_BATCH_BYTES: usize = 1024 * 1024;
/// Longest keyring name.
pub const MAX_KEYRING_NAME_LEN: usize = 63;

/// A keyring name that is not `[a-z0-9-]{1,63}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid keyring name {name:?}: {reason} (use 1 to 63 characters of a-z, 0-9 and '-')")]
pub struct InvalidKeyringName {
    /// The rejected name (at most 80 characters of it).
    pub name: String,
    /// Why it was rejected.
    pub reason: &'static str,
}

/// Checks that `name` is a valid keyring name: `[a-z0-9-]{1,63}`.
pub fn validate_keyring_name(name: &str) -> Result<(), InvalidKeyringName> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.len() > MAX_KEYRING_NAME_LEN {
        "it is longer than 63 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        "it contains a character other than a-z, 0-9 and '-'"
    } else {
        return Ok(());
    };
    Err(InvalidKeyringName {
        name: name.chars().take(80).collect(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyring_names() {
        assert!(validate_keyring_name("cluster-a").is_ok());
        assert!(validate_keyring_name(&"a".repeat(63)).is_ok());
        let long = validate_keyring_name(&"a".repeat(200)).unwrap_err();
        assert_eq!(long.reason, "it is longer than 63 characters");
        assert_eq!(long.name.len(), 80);
        assert!(validate_keyring_name("").is_err());
        let e = validate_keyring_name("../x").unwrap_err();
        assert!(e.to_string().contains("other than a-z"), "{e}");
    }
}

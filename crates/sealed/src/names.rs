//! The naming rules of Kubernetes and keyd that bindings, headers and bundles enforce.
//!
//! Kept here (not borrowed from `coffer-keyd`) so a workstation tool depends on nothing of the
//! key service; the keyring rule must stay identical to `coffer_keyd::validate_keyring_name`.

/// Longest keyring name (as keyd's rule).
pub const MAX_KEYRING_NAME_LEN: usize = 63;
/// Longest namespace (a DNS-1123 label).
pub const MAX_NAMESPACE_LEN: usize = 63;
/// Longest Secret name (a DNS-1123 subdomain).
pub const MAX_SECRET_NAME_LEN: usize = 253;
/// Longest Secret data key.
pub const MAX_DATA_KEY_LEN: usize = 253;

/// A naming rule: why a name breaks it, or `None` when it does not.
pub(crate) type Rule = fn(&str) -> Option<&'static str>;

/// Why a keyring name is invalid, or `None` when keyd would accept it.
pub(crate) fn keyring_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_KEYRING_NAME_LEN {
        Some("it is longer than 63 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        Some("it contains a character other than a-z, 0-9 and '-'")
    } else {
        None
    }
}

/// Why `name` is not a DNS-1123 label (a namespace), or `None`.
pub(crate) fn namespace_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAMESPACE_LEN {
        Some("it is longer than 63 characters")
    } else {
        label_problem(name)
    }
}

/// Why `name` is not a DNS-1123 subdomain (a Secret name), or `None`.
pub(crate) fn secret_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_SECRET_NAME_LEN {
        Some("it is longer than 253 characters")
    } else {
        name.split('.').find_map(label_problem)
    }
}

/// Why `key` is not a valid Secret data key, or `None` (Kubernetes' `IsConfigMapKey`).
pub(crate) fn data_key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("it is empty")
    } else if key.len() > MAX_DATA_KEY_LEN {
        Some("it is longer than 253 characters")
    } else if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        Some("it contains a character other than a-z, A-Z, 0-9, '-', '_' and '.'")
    } else if key == "." || key == ".." || key.starts_with("..") {
        Some("it is '.' or starts with '..'")
    } else {
        None
    }
}

/// Lower-case alphanumerics and '-', starting and ending alphanumeric.
fn label_problem(label: &str) -> Option<&'static str> {
    let bytes = label.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (None, _) | (_, None) => {
            Some("it has an empty label (two dots in a row, or a leading or trailing dot)")
        }
        (Some(&first), Some(&last)) if !alnum(first) || !alnum(last) => {
            Some("it must start and end with a lower-case letter or digit")
        }
        _ if !bytes.iter().all(|&b| alnum(b) || b == b'-') => {
            Some("it contains a character other than a-z, 0-9, '-' (and '.' between labels)")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_name_rules() {
        assert_eq!(namespace_problem("prod-1"), None);
        assert!(namespace_problem("Prod").is_some());
        assert!(namespace_problem("-a").is_some());
        assert!(namespace_problem("a.b").is_some());
        assert!(namespace_problem(&"a".repeat(64)).is_some());
        assert_eq!(namespace_problem(&"a".repeat(63)), None);

        assert_eq!(secret_name_problem("db.creds-2"), None);
        assert!(secret_name_problem("db..x").is_some());
        assert!(secret_name_problem(".db").is_some());
        assert!(secret_name_problem("db_x").is_some());
        assert_eq!(secret_name_problem(&"a".repeat(253)), None);
        assert!(secret_name_problem(&"a".repeat(254)).is_some());

        assert_eq!(data_key_problem("tls.crt"), None);
        assert_eq!(data_key_problem(".dockerconfigjson"), None);
        assert_eq!(data_key_problem("A_b-9"), None);
        assert!(data_key_problem("a/b").is_some());
        assert!(data_key_problem("..data").is_some());
        assert!(data_key_problem(".").is_some());
        assert!(data_key_problem(&"k".repeat(254)).is_some());

        assert_eq!(keyring_problem("apps-1"), None);
        assert!(keyring_problem("Apps").is_some());
        assert!(keyring_problem("").is_some());
    }
}

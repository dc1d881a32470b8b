//! The exec credential protocol: the `ExecCredential` kubectl reads from the plugin's stdout,
//! and `KUBERNETES_EXEC_INFO`, which kubectl sets to say whether the plugin may prompt.

use std::io::IsTerminal;

use coffer_credstore::Credential;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::error::Error;

const API_VERSION: &str = "client.authentication.k8s.io/v1";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExecCredential<'a> {
    api_version: &'static str,
    kind: &'static str,
    status: Status<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate_data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key_data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    expiration_timestamp: String,
}

/// The ExecCredential JSON (with a final newline) for `credential`, expiring at
/// `expires_unix`, in a buffer reserved up front so no unzeroized copy is left behind.
pub(crate) fn exec_credential(
    credential: &Credential,
    expires_unix: u64,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    let expiration_timestamp = rfc3339(expires_unix)
        .ok_or_else(|| Error::new(format!("invalid expiry time {expires_unix}")))?;
    let value = ExecCredential {
        api_version: API_VERSION,
        kind: "ExecCredential",
        status: Status {
            client_certificate_data: text(&credential.client_certificate)?,
            client_key_data: text(&credential.client_key)?,
            token: text(&credential.token)?,
            expiration_timestamp,
        },
    };
    let mut out = Zeroizing::new(Vec::with_capacity(credential.json_len_hint() + 256));
    serde_json::to_writer(&mut *out, &value)
        .map_err(|e| Error::new(format!("encoding the ExecCredential: {e}")))?;
    out.push(b'\n');
    Ok(out)
}

fn text(part: &Option<coffer_credstore::SecretBytes>) -> Result<Option<&str>, Error> {
    part.as_ref()
        .map(|p| p.as_str())
        .transpose()
        .map_err(|e| Error::new(e.to_string()))
}

/// `unix` seconds as an RFC 3339 UTC timestamp, as kubectl expects it.
pub(crate) fn rfc3339(unix: u64) -> Option<String> {
    let time = time::OffsetDateTime::from_unix_timestamp(i64::try_from(unix).ok()?).ok()?;
    time.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// Whether the plugin may prompt: what kubectl says in `KUBERNETES_EXEC_INFO`
/// (`spec.interactive`), or, when run by hand, whether stdin is a terminal.
pub(crate) fn interactive() -> bool {
    match std::env::var("KUBERNETES_EXEC_INFO") {
        Ok(info) => interactive_from_exec_info(&info),
        Err(_) => std::io::stdin().is_terminal(),
    }
}

fn interactive_from_exec_info(info: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(info)
        .ok()
        .and_then(|v| v.pointer("/spec/interactive").and_then(|i| i.as_bool()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_credstore::SecretBytes;

    fn secret(s: &str) -> Option<SecretBytes> {
        Some(SecretBytes::new(Zeroizing::new(s.as_bytes().to_vec())))
    }

    #[test]
    fn exec_credential_shape() {
        let cert = Credential {
            client_certificate: secret(
                "-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n",
            ),
            client_key: secret("-----BEGIN PRIVATE KEY-----\nBBB\n-----END PRIVATE KEY-----\n"),
            token: None,
        };
        let json = exec_credential(&cert, 1_700_000_000).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["kind"], "ExecCredential");
        assert_eq!(v["status"]["expirationTimestamp"], "2023-11-14T22:13:20Z");
        assert!(v["status"]["clientCertificateData"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(v["status"].get("token").is_none());
        let token = Credential {
            client_certificate: None,
            client_key: None,
            token: secret("abc"),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&exec_credential(&token, 0).unwrap()).unwrap();
        assert_eq!(v["status"]["token"], "abc");
        assert!(v["status"].get("clientKeyData").is_none());
    }

    #[test]
    fn exec_info_interactive_flag() {
        let info = |i: &str| {
            format!(
                r#"{{"kind":"ExecCredential","apiVersion":"{API_VERSION}","spec":{{"interactive":{i}}}}}"#
            )
        };
        assert!(interactive_from_exec_info(&info("true")));
        assert!(!interactive_from_exec_info(&info("false")));
        assert!(!interactive_from_exec_info("not json"));
        assert!(!interactive_from_exec_info(r#"{"spec":{}}"#));
    }
}

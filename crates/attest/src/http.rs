//! Blocking HTTP GET for PCCS/PCS collateral and AMD KDS VCEKs (ureq, rustls).

use crate::VerifyError;
use std::time::Duration;

/// Largest response body accepted (collateral and certificates are a few KiB).
const MAX_BODY: u64 = 4 * 1024 * 1024;

/// A fetched response.
#[cfg_attr(not(feature = "dcap"), allow(dead_code))]
pub(crate) struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[cfg_attr(not(feature = "dcap"), allow(dead_code))]
impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// GETs `url`; any status is returned, transport failures are errors.
pub(crate) fn get(url: &str) -> Result<Response, VerifyError> {
    let fail = |reason: String| VerifyError::Fetch {
        url: url.to_string(),
        reason,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY)
        .read_to_vec()
        .map_err(|e| fail(e.to_string()))?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// GETs `url` and requires a 200 response.
#[cfg_attr(not(feature = "dcap"), allow(dead_code))]
pub(crate) fn get_ok(url: &str) -> Result<Response, VerifyError> {
    let response = get(url)?;
    if response.status != 200 {
        return Err(VerifyError::Fetch {
            url: url.to_string(),
            reason: format!("HTTP status {}", response.status),
        });
    }
    Ok(response)
}

#[cfg_attr(not(feature = "dcap"), allow(dead_code))]
/// Decodes `%XX` escapes (PCCS issuer-chain headers are URL-encoded PEM).
pub(crate) fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
                out.push(hex);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 after decoding".to_string())
}

/// Encodes everything but unreserved characters as `%XX`.
#[cfg(test)]
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_round_trip() {
        let text = "-----BEGIN CERTIFICATE-----\nMIIB+/=\n";
        assert_eq!(percent_decode(&percent_encode(text)).unwrap(), text);
        assert!(percent_decode("%G1").is_err());
        assert!(percent_decode("%4").is_err());
    }
}

//! Blocking HTTPS GET for PCCS/PCS collateral and AMD KDS VCEKs (ureq, rustls), and the
//! certificate authorities those fetches trust.
//!
//! What is fetched is signed by Intel or AMD and verified against their pinned roots, so TLS
//! only decides which servers may be asked. That is why the system trust store is trusted by
//! default, next to Mozilla's roots: it is where operators install the CA of a private PCCS.

use crate::VerifyError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

/// Largest response body accepted (collateral and certificates are a few KiB).
const MAX_BODY: u64 = 4 * 1024 * 1024;

/// Largest CA file read (a full system bundle is about 250 KiB).
const MAX_CA_FILE: u64 = 16 * 1024 * 1024;

/// Appended to TLS failures, which are most often a private CA nobody told us about.
const CA_HINT: &str = "if the server uses a private CA (a PCCS's default self-signed \
    certificate, for one), give that CA's PEM file with --ca-file (--keyd-ca-file for keyd's \
    evidence in service mode)";

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

/// A CA file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// The file cannot be read.
    #[error("CA file {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, not a separate cause, so it is said once).
        error: std::io::Error,
    },
    /// The file is not PEM, or a PEM section in it is damaged.
    #[error(
        "CA file {}: {reason}: give the CA certificate(s) in PEM \
         (-----BEGIN CERTIFICATE----- sections)",
        path.display()
    )]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file is PEM but holds no certificate (a key, say).
    #[error(
        "CA file {}: no CERTIFICATE section in it: give the CA certificate(s) in PEM",
        path.display()
    )]
    NoCertificates {
        /// The file.
        path: PathBuf,
    },
}

/// Mozilla's roots (the set ureq bundles) and whatever the system trust store holds, loaded
/// once. A missing or unreadable system store (a distroless image has none) leaves Mozilla's.
fn default_roots() -> &'static [Certificate<'static>] {
    static ROOTS: OnceLock<Vec<Certificate<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let system = rustls_native_certs::load_native_certs().certs;
        webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .chain(system.iter())
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect()
    })
}

/// The rustls error inside `error` when the server's certificate was refused. ureq reports
/// handshake failures as I/O errors wrapping it.
fn untrusted_certificate(error: &ureq::Error) -> Option<&rustls::Error> {
    let tls = match error {
        ureq::Error::Rustls(e) => e,
        ureq::Error::Io(e) => e.get_ref()?.downcast_ref::<rustls::Error>()?,
        _ => return None,
    };
    matches!(tls, rustls::Error::InvalidCertificate(_)).then_some(tls)
}

/// The certificates of a PEM CA file.
fn read_ca_file(path: &Path) -> Result<Vec<Certificate<'static>>, CaFileError> {
    use std::io::Read;
    let read_error = |error| CaFileError::Read {
        path: path.to_path_buf(),
        error,
    };
    let mut pem = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_CA_FILE + 1).read_to_end(&mut pem))
        .map_err(read_error)?;
    let not_pem = |reason: String| CaFileError::NotPem {
        path: path.to_path_buf(),
        reason,
    };
    if pem.len() as u64 > MAX_CA_FILE {
        return Err(not_pem(format!("larger than {MAX_CA_FILE} bytes")));
    }
    if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(not_pem("no PEM section in it".to_string()));
    }
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|e| not_pem(e.to_string()))? {
            PemItem::Certificate(cert) => certs.push(cert),
            _ => continue,
        }
    }
    if certs.is_empty() {
        return Err(CaFileError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// How collateral and VCEKs are fetched over HTTPS: the trusted CAs are Mozilla's roots, the
/// system trust store and, optionally, the certificates of a CA file.
#[derive(Clone)]
pub struct Fetcher {
    agent: ureq::Agent,
    ca_file: Option<Arc<Path>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

impl Default for Fetcher {
    fn default() -> Self {
        Fetcher::trusting(Vec::new(), None)
    }
}

impl Fetcher {
    /// Trusts Mozilla's roots and the system trust store.
    pub fn new() -> Self {
        Fetcher::default()
    }

    /// Also trusts every certificate in the PEM file `path` (a private PCCS's CA, say).
    pub fn with_ca_file(path: &Path) -> Result<Self, CaFileError> {
        Ok(Fetcher::trusting(read_ca_file(path)?, Some(path)))
    }

    fn trusting(extra: Vec<Certificate<'static>>, ca_file: Option<&Path>) -> Self {
        let roots: Vec<Certificate<'static>> =
            default_roots().iter().cloned().chain(extra).collect();
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::from(roots))
                    .build(),
            )
            .build()
            .into();
        Fetcher {
            agent,
            ca_file: ca_file.map(Arc::from),
        }
    }

    /// GETs `url`; any status is returned, transport failures are errors.
    pub(crate) fn get(&self, url: &str) -> Result<Response, VerifyError> {
        let fail = |reason: String| VerifyError::Fetch {
            url: url.to_string(),
            reason,
        };
        let mut response = self
            .agent
            .get(url)
            .call()
            .map_err(|e| fail(self.explain(e)))?;
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
    pub(crate) fn get_ok(&self, url: &str) -> Result<Response, VerifyError> {
        let response = self.get(url)?;
        if response.status != 200 {
            return Err(VerifyError::Fetch {
                url: url.to_string(),
                reason: format!("HTTP status {}", response.status),
            });
        }
        Ok(response)
    }

    /// `error`, with what to do about it when it is an untrusted server certificate.
    fn explain(&self, error: ureq::Error) -> String {
        let Some(tls) = untrusted_certificate(&error) else {
            return error.to_string();
        };
        let trusted = match &self.ca_file {
            Some(path) => format!(
                "Mozilla's roots, the system trust store and {}",
                path.display()
            ),
            None => "Mozilla's roots and the system trust store".to_string(),
        };
        format!("TLS: {tls} (trusted: {trusted}); {CA_HINT}")
    }
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

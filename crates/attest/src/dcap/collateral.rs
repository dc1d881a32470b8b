//! Where DCAP collateral comes from: an air-gapped directory, or a PCCS/PCS with an on-disk
//! cache.
//!
//! Both use dcap-qvl's `QuoteCollateralV3` JSON form (the form of the fixtures'
//! `*_collateral.json`), so a [`PccsCollateral`] cache directory is also a valid
//! [`CollateralDir`].

use crate::error::{parse_rfc3339, unix_secs};
use crate::fsutil::write_atomically;
use crate::http::{self, Fetcher};
use crate::VerifyError;
use coffer_platform::TeeType;
use dcap_qvl::QuoteCollateralV3;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Largest collateral file read (real ones are about 20 KiB).
const MAX_COLLATERAL_FILE: u64 = 1024 * 1024;
/// Most files a [`CollateralDir`] scan looks at.
const MAX_SCANNED_FILES: usize = 256;
/// Intel's root CA CRL, from the CRL distribution point of the SGX root CA certificate
/// (used when the collateral service has no `rootcacrl` endpoint, like Intel's PCS).
pub const INTEL_ROOT_CA_CRL_URL: &str =
    "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der";

/// Supplies the collateral (TCB info, QE identity, CRLs and their signing chains) that a DCAP
/// quote is verified against.
pub trait CollateralSource: Send + Sync {
    /// Collateral for `quote`, a quote of type `tee` (SGX or TDX).
    fn collateral(&self, tee: TeeType, quote: &[u8]) -> Result<QuoteCollateralV3, VerifyError>;
}

/// No collateral: every DCAP verification fails with [`VerifyError::Collateral`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCollateral;

impl CollateralSource for NoCollateral {
    fn collateral(&self, _tee: TeeType, _quote: &[u8]) -> Result<QuoteCollateralV3, VerifyError> {
        Err(VerifyError::Collateral {
            reason: "no collateral source is configured".to_string(),
        })
    }
}

/// The platform a quote comes from, as collateral is keyed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformKey {
    /// `sgx` or `tdx`.
    pub tee: TeeType,
    /// FMSPC from the PCK certificate, upper-case hex (12 characters).
    pub fmspc: String,
    /// The PCK CA: `processor` or `platform`.
    pub ca: &'static str,
}

impl PlatformKey {
    /// Reads the FMSPC and PCK CA from the PCK certificate chain inside `quote`.
    pub fn from_quote(tee: TeeType, quote: &[u8]) -> Result<Self, VerifyError> {
        let parsed = dcap_qvl::quote::Quote::parse(quote)
            .map_err(|e| VerifyError::malformed(tee, format!("cannot parse the quote: {e:#}")))?;
        let chain_error = |e: &dyn std::fmt::Display| VerifyError::CertificateChain {
            tee,
            reason: format!("PCK certificate chain in the quote: {e:#}"),
        };
        let fmspc = dcap_qvl::intel::quote_fmspc(&parsed).map_err(|e| chain_error(&e))?;
        let ca = dcap_qvl::intel::quote_ca(&parsed).map_err(|e| chain_error(&e))?;
        Ok(PlatformKey {
            tee,
            fmspc: hex::encode_upper(fmspc),
            ca: ca.as_id_str(),
        })
    }

    /// The file name collateral for this platform is stored under:
    /// `{tee}-{FMSPC}-{ca}.json`, e.g. `sgx-00906ED50000-processor.json`.
    pub fn file_name(&self) -> String {
        format!("{}-{}-{}.json", self.tee.name(), self.fmspc, self.ca)
    }
}

fn read_collateral(path: &Path) -> Result<QuoteCollateralV3, VerifyError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| VerifyError::io(path, e))?;
    let mut text = String::new();
    file.take(MAX_COLLATERAL_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| VerifyError::io(path, e))?;
    if text.len() as u64 > MAX_COLLATERAL_FILE {
        return Err(VerifyError::io(path, "collateral file too large"));
    }
    serde_json::from_str(&text).map_err(|e| VerifyError::Collateral {
        reason: format!("{}: not QuoteCollateralV3 JSON: {e}", path.display()),
    })
}

/// The `(id, fmspc)` of a collateral's TCB info, e.g. `("TDX", "90C06F000000")`.
fn tcb_info_identity(collateral: &QuoteCollateralV3) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_str(&collateral.tcb_info).ok()?;
    let id = value.get("id").and_then(|v| v.as_str()).unwrap_or("SGX");
    let fmspc = value.get("fmspc")?.as_str()?;
    Some((id.to_string(), fmspc.to_ascii_uppercase()))
}

/// The earliest `nextUpdate` of the TCB info and the QE identity.
fn next_update(collateral: &QuoteCollateralV3) -> Option<u64> {
    let date = |json: &str| {
        let value: serde_json::Value = serde_json::from_str(json).ok()?;
        parse_rfc3339(value.get("nextUpdate")?.as_str()?)
    };
    Some(date(&collateral.tcb_info)?.min(date(&collateral.qe_identity)?))
}

/// An air-gapped directory of collateral files in dcap-qvl's `QuoteCollateralV3` JSON form.
///
/// Lookup: the explicit file if one is set; otherwise `{tee}-{FMSPC}-{ca}.json`
/// (see [`PlatformKey::file_name`]); otherwise the first `*.json` file (in name order) whose TCB
/// info is for this TEE type and FMSPC.
#[derive(Clone, Debug)]
pub struct CollateralDir {
    dir: PathBuf,
    file: Option<String>,
}

impl CollateralDir {
    /// Looks collateral up by platform in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CollateralDir {
            dir: dir.into(),
            file: None,
        }
    }

    /// Always uses the file `name` in `dir`.
    pub fn with_file(dir: impl Into<PathBuf>, name: impl Into<String>) -> Self {
        CollateralDir {
            dir: dir.into(),
            file: Some(name.into()),
        }
    }

    fn find(&self, key: &PlatformKey) -> Result<QuoteCollateralV3, VerifyError> {
        let named = self.dir.join(key.file_name());
        if named.is_file() {
            return read_collateral(&named);
        }
        let want_id = match key.tee {
            TeeType::Tdx => "TDX",
            _ => "SGX",
        };
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|e| VerifyError::io(&self.dir, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "json") && p.is_file())
            .collect();
        names.sort();
        for path in names.iter().take(MAX_SCANNED_FILES) {
            let Ok(collateral) = read_collateral(path) else {
                continue;
            };
            if tcb_info_identity(&collateral)
                .is_some_and(|(id, fmspc)| id == want_id && fmspc == key.fmspc)
            {
                return Ok(collateral);
            }
        }
        Err(VerifyError::Collateral {
            reason: format!(
                "no collateral for {} FMSPC {} ({} CA) in {}",
                key.tee,
                key.fmspc,
                key.ca,
                self.dir.display()
            ),
        })
    }
}

impl CollateralSource for CollateralDir {
    fn collateral(&self, tee: TeeType, quote: &[u8]) -> Result<QuoteCollateralV3, VerifyError> {
        if let Some(name) = &self.file {
            return read_collateral(&self.dir.join(name));
        }
        let key = PlatformKey::from_quote(tee, quote)?;
        self.find(&key)
    }
}

/// A clock, so that cache freshness can be judged at the verification time in tests.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// Collateral fetched from a PCCS (or Intel's PCS) with an on-disk cache keyed by TEE type,
/// FMSPC and PCK CA. A cached entry is used until the earlier `nextUpdate` of its TCB info and
/// QE identity; then it is fetched again and replaced.
///
/// The PCCS API paths are those dcap-qvl's own client uses:
/// `{url}/sgx/certification/v4/pckcrl?ca={ca}&encoding=der`,
/// `{url}/{tee}/certification/v4/tcb?fmspc={fmspc}&update=standard`,
/// `{url}/{tee}/certification/v4/qe/identity?update=standard`,
/// `{url}/sgx/certification/v4/rootcacrl` (falling back to [`INTEL_ROOT_CA_CRL_URL`]).
#[derive(Clone)]
pub struct PccsCollateral {
    url: String,
    cache_dir: PathBuf,
    clock: Clock,
    root_ca_crl_url: String,
    fetcher: Fetcher,
}

impl std::fmt::Debug for PccsCollateral {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PccsCollateral")
            .field("url", &self.url)
            .field("cache_dir", &self.cache_dir)
            .finish_non_exhaustive()
    }
}

impl PccsCollateral {
    /// Fetches from `url` (e.g. `https://api.trustedservices.intel.com` or a PCCS base URL),
    /// caching in `cache_dir` (created when needed).
    pub fn new(url: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        let url = url.into();
        let base = url
            .trim_end_matches('/')
            .trim_end_matches("/sgx/certification/v4")
            .trim_end_matches("/tdx/certification/v4")
            .to_string();
        PccsCollateral {
            url: base,
            cache_dir: cache_dir.into(),
            clock: Arc::new(SystemTime::now),
            root_ca_crl_url: INTEL_ROOT_CA_CRL_URL.to_string(),
            fetcher: Fetcher::new(),
        }
    }

    /// Fetches with `fetcher` (which decides the trusted CAs) instead of the default one.
    pub fn with_fetcher(mut self, fetcher: Fetcher) -> Self {
        self.fetcher = fetcher;
        self
    }

    /// Judges cache freshness with `clock` instead of the system time.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Where to get Intel's root CA CRL when the service has no `rootcacrl` endpoint.
    pub fn with_root_ca_crl_url(mut self, url: impl Into<String>) -> Self {
        self.root_ca_crl_url = url.into();
        self
    }

    fn cached(&self, path: &Path) -> Option<QuoteCollateralV3> {
        let collateral = read_collateral(path).ok()?;
        let now = unix_secs((self.clock)());
        (now <= next_update(&collateral)?).then_some(collateral)
    }

    fn fetch(&self, key: &PlatformKey) -> Result<QuoteCollateralV3, VerifyError> {
        let tee = key.tee.name();
        let base = &self.url;
        let header = |response: &http::Response, url: &str, names: &[&str]| {
            names
                .iter()
                .find_map(|n| response.header(n))
                .ok_or_else(|| VerifyError::Fetch {
                    url: url.to_string(),
                    reason: format!("response has no {} header", names[0]),
                })
                .and_then(|v| {
                    http::percent_decode(v).map_err(|e| VerifyError::Fetch {
                        url: url.to_string(),
                        reason: format!("{} header: {e}", names[0]),
                    })
                })
        };

        let url = format!(
            "{base}/sgx/certification/v4/pckcrl?ca={}&encoding=der",
            key.ca
        );
        let response = self.fetcher.get_ok(&url)?;
        let pck_crl_issuer_chain = header(&response, &url, &["SGX-PCK-CRL-Issuer-Chain"])?;
        let pck_crl = der_or_hex(response.body);

        let url = format!(
            "{base}/{tee}/certification/v4/tcb?fmspc={}&update=standard",
            key.fmspc
        );
        let response = self.fetcher.get_ok(&url)?;
        let tcb_info_issuer_chain = header(
            &response,
            &url,
            &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"],
        )?;
        let (tcb_info, tcb_info_signature) = signed_json(&response.body, "tcbInfo", &url)?;

        let url = format!("{base}/{tee}/certification/v4/qe/identity?update=standard");
        let response = self.fetcher.get_ok(&url)?;
        let qe_identity_issuer_chain =
            header(&response, &url, &["SGX-Enclave-Identity-Issuer-Chain"])?;
        let (qe_identity, qe_identity_signature) =
            signed_json(&response.body, "enclaveIdentity", &url)?;

        let url = format!("{base}/sgx/certification/v4/rootcacrl");
        let root_ca_crl = match self.fetcher.get_ok(&url) {
            Ok(response) => der_or_hex(response.body),
            Err(_) => der_or_hex(self.fetcher.get_ok(&self.root_ca_crl_url)?.body),
        };

        Ok(QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        })
    }
}

impl CollateralSource for PccsCollateral {
    fn collateral(&self, tee: TeeType, quote: &[u8]) -> Result<QuoteCollateralV3, VerifyError> {
        let key = PlatformKey::from_quote(tee, quote)?;
        let path = self.cache_dir.join(key.file_name());
        if let Some(collateral) = self.cached(&path) {
            return Ok(collateral);
        }
        let collateral = self.fetch(&key)?;
        let json = serde_json::to_vec_pretty(&collateral).map_err(|e| VerifyError::io(&path, e))?;
        write_atomically(&self.cache_dir, &path, &json)?;
        Ok(collateral)
    }
}

/// PCCS returns CRLs hex-encoded, PCS as DER.
fn der_or_hex(body: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&body);
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_hexdigit()) {
        if let Ok(der) = hex::decode(trimmed) {
            return der;
        }
    }
    body
}

/// Splits `{"<field>": {...}, "signature": "<hex>"}` into the exact signed JSON text of the
/// field and the signature bytes.
fn signed_json(body: &[u8], field: &str, url: &str) -> Result<(String, Vec<u8>), VerifyError> {
    let fail = |reason: String| VerifyError::Fetch {
        url: url.to_string(),
        reason,
    };
    let map: std::collections::BTreeMap<String, Box<serde_json::value::RawValue>> =
        serde_json::from_slice(body).map_err(|e| fail(format!("not JSON: {e}")))?;
    let signed = map
        .get(field)
        .ok_or_else(|| fail(format!("no {field} in the response")))?
        .get()
        .to_string();
    let signature: String = map
        .get("signature")
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .ok_or_else(|| fail("no signature in the response".to_string()))?;
    let signature = hex::decode(signature).map_err(|_| fail("signature is not hex".to_string()))?;
    Ok((signed, signature))
}

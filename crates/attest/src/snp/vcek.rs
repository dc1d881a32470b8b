//! Where SEV-SNP VCEKs come from when the evidence carries none: a cache directory, or AMD's
//! Key Distribution Service (KDS) with the result cached so that the same VCEK is never fetched
//! twice (KDS rate-limits).

use crate::fsutil::write_atomically;
use crate::http::Fetcher;
use crate::VerifyError;
use std::path::{Path, PathBuf};

/// Public AMD KDS base URL.
pub const AMD_KDS_URL: &str = "https://kdsintf.amd.com";
/// Largest VCEK accepted (real ones are about 1.4 KiB).
const MAX_VCEK_LEN: u64 = 16 * 1024;

/// An AMD EPYC generation that supports SEV-SNP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SnpProduct {
    /// 3rd generation (Zen 3).
    Milan,
    /// 4th generation (Zen 4).
    Genoa,
    /// 5th generation (Zen 5).
    Turin,
}

impl SnpProduct {
    /// The name KDS uses in URLs.
    pub fn name(self) -> &'static str {
        match self {
            SnpProduct::Milan => "Milan",
            SnpProduct::Genoa => "Genoa",
            SnpProduct::Turin => "Turin",
        }
    }
}

/// The reported TCB, split into its security patch levels.
pub type TcbParts = crate::claims::SnpTcb;

/// What identifies a VCEK: the chip and the TCB it was derived for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VcekRequest {
    /// Generations the report may come from, most likely first (a v2 report does not say).
    pub products: Vec<SnpProduct>,
    /// CHIP_ID from the report (64 bytes).
    pub chip_id: [u8; 64],
    /// REPORTED_TCB from the report, raw (little-endian u64 bytes).
    pub reported_tcb: [u8; 8],
}

impl VcekRequest {
    /// The cache file name: `vcek-{chip_id hex}-{reported_tcb hex}.der`.
    pub fn file_name(&self) -> String {
        format!(
            "vcek-{}-{}.der",
            hex::encode(self.chip_id),
            hex::encode(self.reported_tcb)
        )
    }

    /// The TCB split as `product` lays it out.
    pub fn tcb(&self, product: SnpProduct) -> TcbParts {
        let t = self.reported_tcb;
        match product {
            SnpProduct::Turin => TcbParts {
                fmc: Some(t[0]),
                bootloader: t[1],
                tee: t[2],
                snp: t[3],
                microcode: t[7],
            },
            _ => TcbParts {
                fmc: None,
                bootloader: t[0],
                tee: t[1],
                snp: t[6],
                microcode: t[7],
            },
        }
    }

    /// The KDS URL path and query for `product`:
    /// `/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..`.
    pub fn kds_path(&self, product: SnpProduct) -> String {
        let tcb = self.tcb(product);
        let hwid = match product {
            SnpProduct::Turin => hex::encode(&self.chip_id[..8]),
            _ => hex::encode(self.chip_id),
        };
        let mut path = format!(
            "/vcek/v1/{}/{hwid}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
            product.name(),
            tcb.bootloader,
            tcb.tee,
            tcb.snp,
            tcb.microcode
        );
        if let Some(fmc) = tcb.fmc {
            path.push_str(&format!("&fmcSPL={fmc}"));
        }
        path
    }
}

/// Supplies the VCEK (DER) for a report whose evidence carried none, or a stale one.
pub trait VcekSource: Send + Sync {
    /// The VCEK for `request`, DER-encoded. It is verified against AMD's ARK/ASK afterwards.
    fn vcek(&self, request: &VcekRequest) -> Result<Vec<u8>, VerifyError>;

    /// Where to look next when this source's VCEK turns out stale (expired, or for another
    /// TCB or chip), e.g. after an operator-supplied VCEK, the cache and KDS. None by default.
    fn fallback(&self) -> Option<&dyn VcekSource> {
        None
    }
}

/// No VCEK source: only VCEKs carried in the evidence are used.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoVcek;

impl VcekSource for NoVcek {
    fn vcek(&self, _request: &VcekRequest) -> Result<Vec<u8>, VerifyError> {
        Err(VerifyError::VcekUnavailable {
            reason: "the evidence carries no VCEK and no VCEK source is configured".to_string(),
        })
    }
}

/// One VCEK given by the operator (e.g. `--vcek FILE`), used whatever the request; when it
/// turns out stale (expired, or for another TCB or chip), `then` is asked.
pub struct FixedVcek {
    der: Vec<u8>,
    then: std::sync::Arc<dyn VcekSource>,
}

impl FixedVcek {
    /// The VCEK `der`, falling back to `then`.
    pub fn new(der: Vec<u8>, then: std::sync::Arc<dyn VcekSource>) -> Self {
        FixedVcek { der, then }
    }

    /// The VCEK in file `path` (DER, at most 16 KiB), falling back to `then`.
    pub fn from_file(
        path: &Path,
        then: std::sync::Arc<dyn VcekSource>,
    ) -> Result<Self, VerifyError> {
        let der = read_vcek(path)?.ok_or_else(|| VerifyError::io(path, "no such file"))?;
        Ok(FixedVcek::new(der, then))
    }
}

impl std::fmt::Debug for FixedVcek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedVcek")
            .field("len", &self.der.len())
            .finish_non_exhaustive()
    }
}

impl VcekSource for FixedVcek {
    fn vcek(&self, _request: &VcekRequest) -> Result<Vec<u8>, VerifyError> {
        Ok(self.der.clone())
    }

    fn fallback(&self) -> Option<&dyn VcekSource> {
        Some(self.then.as_ref())
    }
}

fn read_vcek(path: &Path) -> Result<Option<Vec<u8>>, VerifyError> {
    use std::io::Read;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(VerifyError::io(path, e)),
    };
    let mut data = Vec::new();
    file.take(MAX_VCEK_LEN + 1)
        .read_to_end(&mut data)
        .map_err(|e| VerifyError::io(path, e))?;
    if data.len() as u64 > MAX_VCEK_LEN {
        return Err(VerifyError::io(path, "VCEK file too large"));
    }
    Ok(Some(data))
}

/// A directory of VCEKs named by [`VcekRequest::file_name`] (an air-gapped cache).
#[derive(Clone, Debug)]
pub struct VcekDir {
    dir: PathBuf,
}

impl VcekDir {
    /// VCEKs in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        VcekDir { dir: dir.into() }
    }

    /// Stores `der` as the VCEK for `request`.
    pub fn store(&self, request: &VcekRequest, der: &[u8]) -> Result<(), VerifyError> {
        write_atomically(&self.dir, &self.dir.join(request.file_name()), der)
    }
}

impl VcekSource for VcekDir {
    fn vcek(&self, request: &VcekRequest) -> Result<Vec<u8>, VerifyError> {
        let path = self.dir.join(request.file_name());
        read_vcek(&path)?.ok_or_else(|| VerifyError::VcekUnavailable {
            reason: format!("{} does not exist", path.display()),
        })
    }
}

/// VCEKs from AMD KDS, cached in a directory (a [`VcekDir`]); a cached VCEK is fetched again
/// only when it turned out stale (e.g. expired).
#[derive(Clone, Debug)]
pub struct KdsVcek {
    base_url: String,
    cache: VcekDir,
    fetcher: Fetcher,
    /// The same service without the cache, as this one's fallback; `None` in that copy.
    refetch: Option<Box<KdsVcek>>,
}

impl KdsVcek {
    /// Fetches from `base_url` (normally [`AMD_KDS_URL`]), caching in `cache_dir`.
    pub fn new(base_url: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        let uncached = KdsVcek {
            base_url: base_url.into().trim_end_matches('/').to_string(),
            cache: VcekDir::new(cache_dir),
            fetcher: Fetcher::new(),
            refetch: None,
        };
        KdsVcek {
            refetch: Some(Box::new(uncached.clone())),
            ..uncached
        }
    }

    /// Fetches with `fetcher` (which decides the trusted CAs) instead of the default one.
    pub fn with_fetcher(mut self, fetcher: Fetcher) -> Self {
        if let Some(refetch) = &mut self.refetch {
            refetch.fetcher = fetcher.clone();
        }
        self.fetcher = fetcher;
        self
    }
}

impl VcekSource for KdsVcek {
    fn vcek(&self, request: &VcekRequest) -> Result<Vec<u8>, VerifyError> {
        if self.refetch.is_some() {
            if let Some(der) = read_vcek(&self.cache.dir.join(request.file_name()))? {
                return Ok(der);
            }
        }
        if request.chip_id == [0u8; 64] {
            return Err(VerifyError::VcekUnavailable {
                reason: "the report's CHIP_ID is masked, so KDS cannot be asked".to_string(),
            });
        }
        let mut failures = Vec::new();
        for &product in &request.products {
            let url = format!("{}{}", self.base_url, request.kds_path(product));
            match self.fetcher.get(&url) {
                Ok(response) if response.status == 200 => {
                    if response.body.len() as u64 > MAX_VCEK_LEN
                        || sev::certs::snp::Certificate::from_der(&response.body).is_err()
                    {
                        failures.push(format!("{url}: not a DER certificate"));
                        continue;
                    }
                    self.cache.store(request, &response.body)?;
                    return Ok(response.body);
                }
                Ok(response) => failures.push(format!("{url}: HTTP status {}", response.status)),
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(VerifyError::VcekUnavailable {
            reason: format!("KDS: {}", failures.join("; ")),
        })
    }

    /// A stale cached VCEK is fetched again (once), replacing the cached copy.
    fn fallback(&self) -> Option<&dyn VcekSource> {
        self.refetch.as_deref().map(|k| k as &dyn VcekSource)
    }
}

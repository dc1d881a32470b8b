//! Where the collateral and VCEKs that verify evidence come from, as the command-line tools
//! take them (`coffer attest verify`, `coffer kms serve --keyd-…`, `coffer keyd serve`,
//! `kubectl coffer fetch-key`): one plain struct, turned into [`VerifyOptions`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::{
    CaFileError, CollateralDir, CollateralSource, Fetcher, FixedVcek, KdsVcek, NoCollateral,
    NoVcek, PccsCollateral, VcekDir, VcekSource, VerifyError, VerifyOptions,
};

/// The sources of DCAP collateral (SGX, TDX) and SEV-SNP VCEKs. Everything unset means: only
/// what the evidence itself carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifySources {
    /// Directory of DCAP collateral JSON files (air-gapped sites).
    pub collateral_dir: Option<PathBuf>,
    /// Use exactly this collateral file name inside `collateral_dir`.
    pub collateral_file: Option<String>,
    /// PCCS or Intel PCS base URL to fetch DCAP collateral from, cached in `cache_dir`.
    /// Exclusive with `collateral_dir`.
    pub pccs_url: Option<String>,
    /// Cache directory for fetched collateral and VCEKs.
    pub cache_dir: Option<PathBuf>,
    /// SEV-SNP: the VCEK (or VLEK) certificate file (DER), used when the evidence carries none
    /// or a stale one; when it is stale too, `vcek_dir` or `kds_url` is asked.
    pub vcek: Option<PathBuf>,
    /// SEV-SNP: directory of cached VCEKs.
    pub vcek_dir: Option<PathBuf>,
    /// SEV-SNP: AMD KDS base URL to fetch VCEKs from, cached in `cache_dir`. Exclusive with
    /// `vcek_dir`.
    pub kds_url: Option<String>,
    /// PEM file of CA certificates to trust for `pccs_url` and `kds_url`, besides Mozilla's
    /// roots and the system trust store.
    pub ca_file: Option<PathBuf>,
}

/// Why [`VerifySources`] cannot be turned into verification options.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SourcesError {
    /// Two sources that exclude each other are both set.
    #[error("{first} and {second} exclude each other: give one of them")]
    Conflict {
        /// One source.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// A source is set without another it needs.
    #[error("{source_name} needs {needs}")]
    Missing {
        /// The source that is set.
        source_name: &'static str,
        /// What it needs.
        needs: &'static str,
    },
    /// The CA file cannot be used.
    #[error(transparent)]
    CaFile(#[from] CaFileError),
    /// The VCEK file cannot be read.
    #[error("reading the VCEK: {0}")]
    Vcek(#[source] VerifyError),
}

impl VerifySources {
    /// Checks that the sources fit together, without touching any file.
    pub fn validate(&self) -> Result<(), SourcesError> {
        if self.collateral_file.is_some() && self.collateral_dir.is_none() {
            return Err(SourcesError::Missing {
                source_name: "a collateral file name",
                needs: "a collateral directory",
            });
        }
        if self.pccs_url.is_some() && self.collateral_dir.is_some() {
            return Err(SourcesError::Conflict {
                first: "a PCCS URL",
                second: "a collateral directory",
            });
        }
        if self.kds_url.is_some() && self.vcek_dir.is_some() {
            return Err(SourcesError::Conflict {
                first: "a KDS URL",
                second: "a VCEK directory",
            });
        }
        for (set, source_name) in [
            (self.pccs_url.is_some(), "a PCCS URL"),
            (self.kds_url.is_some(), "a KDS URL"),
        ] {
            if set && self.cache_dir.is_none() {
                return Err(SourcesError::Missing {
                    source_name,
                    needs: "a cache directory (fetched collateral and VCEKs are kept there)",
                });
            }
        }
        Ok(())
    }

    /// Verification options at `now` with these sources (reads the CA and VCEK files).
    /// Simulation evidence is verified and left to the policy, which refuses it unless it says
    /// `allow_simulation: true`.
    pub fn options(&self, now: SystemTime) -> Result<VerifyOptions, SourcesError> {
        self.validate()?;
        let fetcher = match &self.ca_file {
            Some(path) => Fetcher::with_ca_file(path)?,
            None => Fetcher::new(),
        };
        let cache_dir = || self.cache_dir.clone().unwrap_or_default();
        let mut options = VerifyOptions::new(now);
        options.allow_simulation = true;
        options.collateral = match (&self.collateral_dir, &self.pccs_url) {
            (Some(dir), _) => match &self.collateral_file {
                Some(name) => {
                    Arc::new(CollateralDir::with_file(dir, name)) as Arc<dyn CollateralSource>
                }
                None => Arc::new(CollateralDir::new(dir)),
            },
            (None, Some(url)) => {
                Arc::new(PccsCollateral::new(url, cache_dir()).with_fetcher(fetcher.clone()))
            }
            (None, None) => Arc::new(NoCollateral),
        };
        let store = match (&self.vcek_dir, &self.kds_url) {
            (Some(dir), _) => Arc::new(VcekDir::new(dir)) as Arc<dyn VcekSource>,
            (None, Some(url)) => Arc::new(KdsVcek::new(url, cache_dir()).with_fetcher(fetcher)),
            (None, None) => Arc::new(NoVcek),
        };
        options.vcek = match &self.vcek {
            Some(file) => Arc::new(FixedVcek::from_file(file, store).map_err(SourcesError::Vcek)?),
            None => store,
        };
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn sources_that_do_not_fit_together_are_refused() {
        let cases = [
            (
                VerifySources {
                    collateral_file: Some("c.json".into()),
                    ..Default::default()
                },
                "a collateral file name needs a collateral directory",
            ),
            (
                VerifySources {
                    collateral_dir: Some("/c".into()),
                    pccs_url: Some("https://pccs".into()),
                    cache_dir: Some("/cache".into()),
                    ..Default::default()
                },
                "a PCCS URL and a collateral directory exclude each other",
            ),
            (
                VerifySources {
                    pccs_url: Some("https://pccs".into()),
                    ..Default::default()
                },
                "a PCCS URL needs a cache directory",
            ),
            (
                VerifySources {
                    kds_url: Some("https://kds".into()),
                    vcek_dir: Some("/v".into()),
                    cache_dir: Some("/cache".into()),
                    ..Default::default()
                },
                "a KDS URL and a VCEK directory exclude each other",
            ),
            (
                VerifySources {
                    kds_url: Some("https://kds".into()),
                    ..Default::default()
                },
                "a KDS URL needs a cache directory",
            ),
        ];
        for (sources, expected) in cases {
            let err = sources.options(now()).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{sources:?}: {err}");
        }
    }

    #[test]
    fn unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("vcek.der");
        let err = VerifySources {
            vcek: Some(missing.clone()),
            ..Default::default()
        }
        .options(now())
        .unwrap_err();
        assert!(matches!(err, SourcesError::Vcek(_)), "{err:?}");
        assert!(
            err.to_string().contains(&missing.display().to_string()),
            "{err}"
        );
        let err = VerifySources {
            ca_file: Some(missing.clone()),
            ..Default::default()
        }
        .options(now())
        .unwrap_err();
        assert!(matches!(err, SourcesError::CaFile(_)), "{err:?}");
    }

    #[test]
    fn a_given_vcek_is_used_then_falls_back_to_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("vcek.der");
        std::fs::write(&file, b"not really DER").unwrap();
        let options = VerifySources {
            vcek: Some(file),
            vcek_dir: Some(dir.path().join("cache")),
            ..Default::default()
        }
        .options(now())
        .unwrap();
        assert!(options.allow_simulation);
        let request = crate::VcekRequest {
            products: vec![crate::SnpProduct::Milan],
            chip_id: [0; 64],
            reported_tcb: [0; 8],
        };
        assert_eq!(options.vcek.vcek(&request).unwrap(), b"not really DER");
        assert!(options.vcek.fallback().is_some());
        let none = VerifySources::default().options(now()).unwrap();
        assert!(none.vcek.vcek(&request).is_err());
    }
}

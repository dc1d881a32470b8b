//! DCAP quote formats on real vendor evidence: the generating side (coffer-platform) and the
//! verifier accept the same quote versions and read the report data at the same place; quotes
//! whose format the verifier does not cover are refused with the reason.

use coffer_attest::{verify, CollateralDir, Evidence, TeeType, VerifyError, VerifyOptions};
use coffer_platform::tsm::{TdxPlatform, TsmFs};
use coffer_platform::Platform;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_test_fixtures::attestation_dir as fixtures;

fn read(rel: &str) -> Vec<u8> {
    let path = fixtures().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// 2025-06-19T12:00:00Z, inside the validity of the `tdx_quote` and `sgx_quote` collateral.
fn june_2025() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_750_334_400)
}

/// 2026-02-18T12:00:00Z, inside the validity of the `tdx_quote_outdated` collateral.
fn february_2026() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_771_416_000)
}

fn options(now: SystemTime, dir: &str, file: &str) -> VerifyOptions {
    let mut options = VerifyOptions::new(now);
    options.collateral = Arc::new(CollateralDir::with_file(fixtures().join(dir), file));
    options
}

fn tdx(report: Vec<u8>) -> Evidence {
    Evidence {
        tee: TeeType::Tdx,
        report,
        certificates: Vec::new(),
    }
}

/// The report data of `quote` as the verifier's parser (dcap-qvl) reads it.
fn verifier_report_data(quote: &[u8]) -> [u8; 64] {
    let parsed = dcap_qvl::quote::Quote::parse(quote).unwrap();
    parsed.report.as_td10().unwrap().report_data
}

/// configfs-tsm as the kernel's tdx-guest provider presents it, with the host's quote
/// generation service answering with `quote`, a real quote.
#[derive(Debug)]
struct QuotingTsm {
    report_dir: PathBuf,
    quote: Vec<u8>,
    /// The live report directory's generation (writes so far).
    live: Mutex<Option<u64>>,
}

impl TsmFs for QuotingTsm {
    fn is_dir(&self, path: &Path) -> bool {
        path == self.report_dir
    }
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        assert_eq!(path.parent(), Some(self.report_dir.as_path()));
        *self.live.lock().unwrap() = Some(0);
        Ok(())
    }
    fn rmdir(&self, _path: &Path) -> io::Result<()> {
        *self.live.lock().unwrap() = None;
        Ok(())
    }
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let mut live = self.live.lock().unwrap();
        let generation = live.as_mut().ok_or(io::ErrorKind::NotFound)?;
        assert!(
            path.ends_with("inblob") && data.len() == 64,
            "{}",
            path.display()
        );
        *generation += 1;
        Ok(())
    }
    fn read(&self, path: &Path, _limit: u64) -> io::Result<Vec<u8>> {
        let generation = self.live.lock().unwrap().ok_or(io::ErrorKind::NotFound)?;
        match path.file_name().and_then(|n| n.to_str()) {
            Some("provider") => Ok(b"tdx_guest\n".to_vec()),
            Some("generation") => Ok(format!("{generation}\n").into_bytes()),
            // The host's quote, whatever was written: a real quote commits to its own report
            // data only.
            Some("outblob") => Ok(self.quote.clone()),
            _ => Err(io::ErrorKind::NotFound.into()),
        }
    }
}

fn tdx_platform(quote: Vec<u8>) -> TdxPlatform {
    let root = Path::new("/fake-root");
    let fs = QuotingTsm {
        report_dir: root.join(coffer_platform::tsm::REPORT_DIR),
        quote,
        live: Mutex::new(None),
    };
    TdxPlatform::with_fs(root, Arc::new(fs)).unwrap()
}

#[test]
fn tdx_platform_accepts_real_v4_and_v5_quotes_and_the_verifier_agrees() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    // `tdx_quote` is a v4 quote; `tdx_quote_outdated` a v5 quote with a TDX 1.5 body (type 3),
    // as Intel's quote generator emits them.
    let v4 = read("tdx/tdx_quote");
    let v5 = read("tdx/tdx_quote_outdated");
    assert_eq!((v4[0], v5[0], v5[48]), (4, 5, 3));
    for quote in [&v4, &v5] {
        let offset = coffer_platform::dcap_quote::tdx_report_data_offset(quote).unwrap();
        assert_eq!(quote[offset..offset + 64], verifier_report_data(quote)[..]);
    }

    let evidence = tdx_platform(v4.clone())
        .evidence(&verifier_report_data(&v4))
        .unwrap();
    let claims = verify(
        &evidence,
        &options(june_2025(), "tdx", "tdx_quote_collateral.json"),
    )
    .unwrap();
    assert_eq!(claims.report_data.0, verifier_report_data(&v4));

    // The platform accepts its own v5 evidence; the verifier takes it through every check up
    // to the TCB level, which this platform is below.
    let evidence = tdx_platform(v5.clone())
        .evidence(&verifier_report_data(&v5))
        .unwrap();
    assert_eq!(evidence.report, v5);
    let e = verify(
        &evidence,
        &options(february_2026(), "tdx", "tdx_quote_outdated_collateral.json"),
    )
    .unwrap_err();
    assert_eq!(e, VerifyError::TcbNotMatched);

    // A quote that does not commit to the report data written (stale, or another writer's)
    // is refused.
    let mut other = verifier_report_data(&v5);
    other[0] ^= 1;
    let err = tdx_platform(v5).evidence(&other).unwrap_err().to_string();
    assert!(err.contains("does not carry the report data"), "{err}");
}

/// Offset of the outer certification data type in a quote: after the header, the body, the
/// signature data length, the ECDSA signature (64) and the attestation key (64).
fn outer_certification_type_at(quote: &[u8]) -> usize {
    let body_end = match quote[0] {
        4 => 48 + 584,
        _ => 54 + u32::from_le_bytes(quote[50..54].try_into().unwrap()) as usize,
    };
    body_end + 4 + 64 + 64
}

#[test]
fn quotes_whose_outer_certification_data_is_not_type_6_are_refused() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    for (file, now, collateral) in [
        ("tdx/tdx_quote", june_2025(), "tdx_quote_collateral.json"),
        (
            "tdx/tdx_quote_outdated",
            february_2026(),
            "tdx_quote_outdated_collateral.json",
        ),
    ] {
        let mut quote = read(file);
        let at = outer_certification_type_at(&quote);
        assert_eq!(quote[at..at + 2], [6, 0], "{file}");
        for cert_type in [1u8, 5, 7] {
            quote[at] = cert_type;
            let e = verify(&tdx(quote.clone()), &options(now, "tdx", collateral)).unwrap_err();
            let VerifyError::Malformed { tee, reason } = &e else {
                panic!("{file} type {cert_type}: {e}")
            };
            assert_eq!(*tee, TeeType::Tdx);
            assert!(
                reason.contains(&format!("certification data has type {cert_type}"))
                    && reason.contains("must carry type 6"),
                "{reason}"
            );
        }
    }
}

#[test]
fn sgx_quotes_other_than_v3_are_refused_by_the_verifier() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    // The generating side refuses them too (coffer-platform's SGX quote check): Intel's QE3,
    // behind Gramine and Occlum, emits v3, and dcap-qvl verifies SGX quotes v3 only.
    let options = options(june_2025(), "sgx", "sgx_quote_collateral.json");
    let mut quote = read("sgx/sgx_quote");
    assert_eq!(quote[0], 3);
    for version in [4u8, 5] {
        quote[0] = version;
        let evidence = Evidence {
            tee: TeeType::Sgx,
            report: quote.clone(),
            certificates: Vec::new(),
        };
        let e = verify(&evidence, &options).unwrap_err();
        assert!(
            matches!(&e, VerifyError::Malformed { reason, .. }
                if reason.contains(&format!("quote version {version} (expected [3])"))),
            "{e}"
        );
    }
}

//! Verification cost on the real fixtures: DCAP SGX, DCAP TDX, SEV-SNP.

use coffer_attest::snp::{build_cert_table, CertEntry, VCEK_GUID};
use coffer_attest::{verify, CollateralSource, Evidence, TeeType, VerifyError, VerifyOptions};
use criterion::{criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use coffer_test_fixtures::attestation_dir as fixtures;

/// Collateral held in memory, so the benchmark measures verification, not file reads.
struct InMemory(dcap_qvl::QuoteCollateralV3);

impl CollateralSource for InMemory {
    fn collateral(&self, _: TeeType, _: &[u8]) -> Result<dcap_qvl::QuoteCollateralV3, VerifyError> {
        Ok(self.0.clone())
    }
}

fn dcap(tee: TeeType, quote: &str, collateral: &str) -> (Evidence, VerifyOptions) {
    let collateral =
        serde_json::from_slice(&std::fs::read(fixtures().join(collateral)).unwrap()).unwrap();
    // 2025-06-19T12:00:00Z
    let mut options =
        VerifyOptions::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_334_400));
    options.collateral = Arc::new(InMemory(collateral));
    let evidence = Evidence {
        tee,
        report: std::fs::read(fixtures().join(quote)).unwrap(),
        certificates: Vec::new(),
    };
    (evidence, options)
}

fn bench(c: &mut Criterion) {
    coffer_test_fixtures::skip_without_attestation_fixtures!("the verification benchmarks");
    let (sgx, sgx_options) = dcap(
        TeeType::Sgx,
        "sgx/sgx_quote",
        "sgx/sgx_quote_collateral.json",
    );
    let (tdx, tdx_options) = dcap(
        TeeType::Tdx,
        "tdx/tdx_quote",
        "tdx/tdx_quote_collateral.json",
    );
    let report = std::fs::read_to_string(fixtures().join("snp/report_milan.hex")).unwrap();
    let vcek = std::fs::read(fixtures().join("snp/vcek_milan.der")).unwrap();
    let snp = Evidence {
        tee: TeeType::Snp,
        report: hex::decode(report.trim()).unwrap(),
        certificates: build_cert_table(&[CertEntry {
            guid: VCEK_GUID,
            data: vcek,
        }]),
    };
    let snp_options = VerifyOptions::new(SystemTime::now());
    verify(&sgx, &sgx_options).unwrap();
    verify(&tdx, &tdx_options).unwrap();
    verify(&snp, &snp_options).unwrap();

    let mut group = c.benchmark_group("verify");
    group.bench_function("dcap_sgx", |b| {
        b.iter(|| verify(&sgx, &sgx_options).unwrap())
    });
    // The on-disk form the PCCS cache and air-gapped directories serve: read + parse per call.
    let mut from_disk = sgx_options.clone();
    from_disk.collateral = Arc::new(coffer_attest::CollateralDir::with_file(
        fixtures().join("sgx"),
        "sgx_quote_collateral.json",
    ));
    verify(&sgx, &from_disk).unwrap();
    group.bench_function("dcap_sgx_collateral_from_disk_cache", |b| {
        b.iter(|| verify(&sgx, &from_disk).unwrap())
    });
    group.bench_function("dcap_tdx", |b| {
        b.iter(|| verify(&tdx, &tdx_options).unwrap())
    });
    group.bench_function("snp_milan", |b| {
        b.iter(|| verify(&snp, &snp_options).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

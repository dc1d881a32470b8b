//! Real vendor evidence from the shared fixtures: the genuine files verify, every tampered copy
//! is refused with a reason naming what failed.

use coffer_attest::policy::Policy;
use coffer_attest::snp::{build_cert_table, CertEntry, VCEK_GUID, VLEK_GUID};
use coffer_attest::{
    verify, CaFileError, CollateralDir, Evidence, Fetcher, KdsVcek, Measurements, PccsCollateral,
    TeeType, VcekDir, VerifyError, VerifyOptions,
};
use coffer_test_fixtures::server::{serve, PrivateCa, Reply, Server};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use coffer_test_fixtures::attestation_dir as fixtures;

fn read(rel: &str) -> Vec<u8> {
    let path = fixtures().join(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn at(rfc3339: &str) -> SystemTime {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .unwrap();
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(t.unix_timestamp() as u64)
}

const SGX_NOW: &str = "2025-06-19T12:00:00Z";
const TDX_NOW: &str = "2025-06-19T12:00:00Z";
const OUTDATED_NOW: &str = "2026-02-18T12:00:00Z";

fn dcap_options(now: &str, dir: &str, file: &str) -> VerifyOptions {
    let mut options = VerifyOptions::new(at(now));
    options.collateral = Arc::new(CollateralDir::with_file(fixtures().join(dir), file));
    options
}

fn sgx() -> (Evidence, VerifyOptions) {
    let evidence = Evidence {
        tee: TeeType::Sgx,
        report: read("sgx/sgx_quote"),
        certificates: Vec::new(),
    };
    (
        evidence,
        dcap_options(SGX_NOW, "sgx", "sgx_quote_collateral.json"),
    )
}

fn tdx() -> (Evidence, VerifyOptions) {
    let evidence = Evidence {
        tee: TeeType::Tdx,
        report: read("tdx/tdx_quote"),
        certificates: Vec::new(),
    };
    (
        evidence,
        dcap_options(TDX_NOW, "tdx", "tdx_quote_collateral.json"),
    )
}

fn flip(data: &mut [u8], at: usize) {
    data[at] ^= 0x01;
}

/// Flips one bit of a base64 character of the first PEM certificate in `quote` (keeping it
/// valid base64), `skip` characters into the certificate.
fn flip_pem(quote: &mut [u8], skip: usize) {
    let marker = b"-----BEGIN CERTIFICATE-----\n";
    let start = quote
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("PCK chain in the quote")
        + marker.len();
    let at = (start + skip..quote.len())
        .find(|&i| matches!(quote[i], b'b'..=b'y' | b'B'..=b'Y'))
        .unwrap();
    flip(quote, at);
}

// ---------------------------------------------------------------- SGX

#[test]
fn sgx_quote_verifies() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (evidence, options) = sgx();
    let claims = verify(&evidence, &options).unwrap();
    assert_eq!(claims.tee, TeeType::Sgx);
    assert_eq!(claims.tcb_status, "ConfigurationAndSWHardeningNeeded");
    assert!(claims.advisories.contains(&"INTEL-SA-00289".to_string()));
    assert!(claims.advisories.contains(&"INTEL-SA-00615".to_string()));
    assert_eq!(claims.report_data.0.len(), 64);
    let Measurements::Sgx {
        mr_enclave,
        mr_signer,
        ..
    } = &claims.measurements
    else {
        panic!("{claims:?}")
    };
    assert_eq!(mr_enclave.0, evidence.report[48 + 64..48 + 96]);
    assert_eq!(mr_signer.0, evidence.report[48 + 128..48 + 160]);
    assert_eq!(claims.debug, evidence.report[48 + 48] & 2 != 0);
}

#[test]
fn sgx_collateral_found_by_fmspc_in_directory() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (evidence, mut options) = sgx();
    options.collateral = Arc::new(CollateralDir::new(fixtures().join("sgx")));
    verify(&evidence, &options).unwrap();
}

#[test]
fn sgx_tampered_report_body() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (mut evidence, options) = sgx();
    flip(&mut evidence.report, 48 + 64); // MRENCLAVE
    let e = verify(&evidence, &options).unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::Signature {
                what: "quote body (attestation key)",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn sgx_tampered_report_data() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (mut evidence, options) = sgx();
    flip(&mut evidence.report, 48 + 320); // REPORTDATA
    let e = verify(&evidence, &options).unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::Signature {
                what: "quote body (attestation key)",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn sgx_tampered_signature() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (mut evidence, options) = sgx();
    flip(&mut evidence.report, 436 + 5); // ECDSA signature of the quote
    let e = verify(&evidence, &options).unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::Signature {
                what: "quote body (attestation key)",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn sgx_tampered_qe_report() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (mut evidence, options) = sgx();
    flip(&mut evidence.report, 564 + 64); // QE report MRENCLAVE, signed by the PCK key
    let e = verify(&evidence, &options).unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::Signature {
                what: "QE report (PCK certificate)",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn sgx_tampered_pck_chain() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    for skip in [200, 600, 900] {
        let (mut evidence, options) = sgx();
        flip_pem(&mut evidence.report, skip);
        let e = verify(&evidence, &options).unwrap_err();
        assert!(
            matches!(
                e,
                VerifyError::CertificateChain {
                    tee: TeeType::Sgx,
                    ..
                }
            ),
            "{skip}: {e}"
        );
    }
}

#[test]
fn sgx_tampered_collateral() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (evidence, mut options) = sgx();
    let mut collateral: dcap_qvl::QuoteCollateralV3 =
        serde_json::from_slice(&read("sgx/sgx_quote_collateral.json")).unwrap();
    collateral.tcb_info = collateral.tcb_info.replacen(
        "\"tcbStatus\":\"OutOfDate\"",
        "\"tcbStatus\":\"UpToDate\"",
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.json"),
        serde_json::to_vec(&collateral).unwrap(),
    )
    .unwrap();
    options.collateral = Arc::new(CollateralDir::with_file(dir.path(), "c.json"));
    let e = verify(&evidence, &options).unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::Signature {
                what: "TCB info",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn sgx_wrong_time() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (evidence, mut options) = sgx();
    options.now = at("2025-06-19T10:00:00Z"); // before the TCB info's issueDate
    let e = verify(&evidence, &options).unwrap_err();
    assert!(matches!(e, VerifyError::NotYetValid { .. }), "{e}");
    assert!(e.to_string().contains("issueDate"), "{e}");
    options.now = at("2025-07-20T00:00:00Z"); // after nextUpdate
    let e = verify(&evidence, &options).unwrap_err();
    assert!(matches!(e, VerifyError::Expired { .. }), "{e}");
    assert!(e.to_string().contains("nextUpdate"), "{e}");
}

#[test]
fn sgx_expected_report_data() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (evidence, mut options) = sgx();
    let mut expected = [0u8; 64];
    expected.copy_from_slice(&evidence.report[368..432]);
    options.expected_report_data = Some(expected);
    verify(&evidence, &options).unwrap();
    expected[0] ^= 1;
    options.expected_report_data = Some(expected);
    let e = verify(&evidence, &options).unwrap_err();
    assert!(matches!(e, VerifyError::ReportData { .. }), "{e}");
}

#[test]
fn sgx_without_collateral_or_with_wrong_type() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (evidence, _) = sgx();
    let e = verify(&evidence, &VerifyOptions::new(at(SGX_NOW))).unwrap_err();
    assert!(matches!(e, VerifyError::Collateral { .. }), "{e}");
    let (_, options) = tdx();
    let e = verify(
        &Evidence {
            tee: TeeType::Tdx,
            ..evidence.clone()
        },
        &options,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::Malformed {
                tee: TeeType::Tdx,
                ..
            }
        ),
        "{e}"
    );
    let e = verify(
        &Evidence {
            report: evidence.report[..100].to_vec(),
            ..evidence
        },
        &sgx().1,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::Malformed { .. } | VerifyError::CertificateChain { .. }
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------- TDX

/// TD report field offsets in a v4 quote (48-byte header first).
const TD_MR_TD: usize = 48 + 136;
const TD_REPORT_DATA: usize = 48 + 520;
const TD_SIGNATURE: usize = 48 + 584 + 4;

#[test]
fn tdx_quote_verifies() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (evidence, options) = tdx();
    let claims = verify(&evidence, &options).unwrap();
    assert_eq!(claims.tee, TeeType::Tdx);
    assert_eq!(claims.tcb_status, "UpToDate");
    assert_eq!(
        claims.report_data.0,
        evidence.report[TD_REPORT_DATA..TD_REPORT_DATA + 64]
    );
    let Measurements::Tdx {
        mr_td,
        rtmr,
        tee_tcb_svn,
        ..
    } = &claims.measurements
    else {
        panic!("{claims:?}")
    };
    assert_eq!(mr_td.0, evidence.report[TD_MR_TD..TD_MR_TD + 48]);
    assert_eq!(rtmr[3].0, evidence.report[48 + 472..48 + 520]);
    assert_eq!(tee_tcb_svn.0, evidence.report[48..64]);
}

#[test]
fn tdx_outdated_platform_is_refused() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let evidence = Evidence {
        tee: TeeType::Tdx,
        report: read("tdx/tdx_quote_outdated"),
        certificates: Vec::new(),
    };
    let options = dcap_options(OUTDATED_NOW, "tdx", "tdx_quote_outdated_collateral.json");
    let e = verify(&evidence, &options).unwrap_err();
    assert_eq!(e, VerifyError::TcbNotMatched);
    assert!(e.to_string().contains("No matching TCB level found"));
}

#[test]
fn tdx_tampered() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    for (what, at) in [
        ("body", TD_MR_TD),
        ("report data", TD_REPORT_DATA),
        ("signature", TD_SIGNATURE + 3),
    ] {
        let (mut evidence, options) = tdx();
        flip(&mut evidence.report, at);
        let e = verify(&evidence, &options).unwrap_err();
        assert!(
            matches!(
                e,
                VerifyError::Signature {
                    tee: TeeType::Tdx,
                    what: "quote body (attestation key)"
                }
            ),
            "{what}: {e}"
        );
    }
}

#[test]
fn tdx_tampered_pck_chain() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    for skip in [200, 600, 900] {
        let (mut evidence, options) = tdx();
        flip_pem(&mut evidence.report, skip);
        let e = verify(&evidence, &options).unwrap_err();
        assert!(
            matches!(
                e,
                VerifyError::CertificateChain {
                    tee: TeeType::Tdx,
                    ..
                }
            ),
            "{skip}: {e}"
        );
    }
}

#[test]
fn tdx_wrong_time() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (evidence, mut options) = tdx();
    options.now = at("2025-06-19T10:00:00Z");
    let e = verify(&evidence, &options).unwrap_err();
    assert!(matches!(e, VerifyError::NotYetValid { .. }), "{e}");
    options.now = at("2025-07-20T00:00:00Z");
    let e = verify(&evidence, &options).unwrap_err();
    assert!(matches!(e, VerifyError::Expired { .. }), "{e}");
}

// ---------------------------------------------------------------- PCCS

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Serves a fixture's collateral the way a PCCS does.
fn pccs_handler(collateral: dcap_qvl::QuoteCollateralV3) -> impl Fn(&str) -> Reply {
    move |path: &str| {
        let c = &collateral;
        if path.starts_with("/sgx/certification/v4/pckcrl?ca=processor") {
            Some((
                vec![(
                    "SGX-PCK-CRL-Issuer-Chain".into(),
                    percent_encode(&c.pck_crl_issuer_chain),
                )],
                c.pck_crl.clone(),
            ))
        } else if path.contains("/certification/v4/tcb?fmspc=") {
            let body = format!(
                "{{\"tcbInfo\":{},\"signature\":\"{}\"}}",
                c.tcb_info,
                hex::encode(&c.tcb_info_signature)
            );
            Some((
                vec![(
                    "TCB-Info-Issuer-Chain".into(),
                    percent_encode(&c.tcb_info_issuer_chain),
                )],
                body.into_bytes(),
            ))
        } else if path.contains("/certification/v4/qe/identity") {
            let body = format!(
                "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
                c.qe_identity,
                hex::encode(&c.qe_identity_signature)
            );
            Some((
                vec![(
                    "SGX-Enclave-Identity-Issuer-Chain".into(),
                    percent_encode(&c.qe_identity_issuer_chain),
                )],
                body.into_bytes(),
            ))
        } else if path == "/sgx/certification/v4/rootcacrl" {
            Some((Vec::new(), hex::encode(&c.root_ca_crl).into_bytes()))
        } else {
            None
        }
    }
}

#[test]
fn sgx_collateral_from_pccs_is_cached() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let collateral: dcap_qvl::QuoteCollateralV3 =
        serde_json::from_slice(&read("sgx/sgx_quote_collateral.json")).unwrap();
    let Server { base, count, paths } = serve(32, None, pccs_handler(collateral));
    let cache = tempfile::tempdir().unwrap();
    let clock_now = Arc::new(std::sync::Mutex::new(at(SGX_NOW)));
    let clock = clock_now.clone();
    let source = PccsCollateral::new(format!("{base}/sgx/certification/v4/"), cache.path())
        .with_clock(Arc::new(move || *clock.lock().unwrap()));
    let (evidence, mut options) = sgx();
    options.collateral = Arc::new(source);

    let claims = verify(&evidence, &options).unwrap();
    assert_eq!(claims.tcb_status, "ConfigurationAndSWHardeningNeeded");
    assert_eq!(
        count.load(Ordering::SeqCst),
        4,
        "{:?}",
        paths.lock().unwrap()
    );
    assert!(
        paths
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.contains("fmspc=00A067110000")),
        "{:?}",
        paths.lock().unwrap()
    );
    let cached: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(
        cached[0]
            .to_string_lossy()
            .starts_with("sgx-00A067110000-processor"),
        "{cached:?}"
    );

    // Second verification: from the cache, no request.
    verify(&evidence, &options).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 4);

    // The cache directory is also an air-gapped collateral directory.
    let mut offline = options.clone();
    offline.collateral = Arc::new(CollateralDir::new(cache.path()));
    verify(&evidence, &offline).unwrap();

    // Past nextUpdate the cached entry is stale and fetched again.
    *clock_now.lock().unwrap() = at("2025-07-20T00:00:00Z");
    verify(&evidence, &options).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 8);
}

#[test]
fn pccs_unreachable_is_a_fetch_error() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let cache = tempfile::tempdir().unwrap();
    let (evidence, mut options) = sgx();
    options.collateral = Arc::new(PccsCollateral::new(base, cache.path()));
    let e = verify(&evidence, &options).unwrap_err();
    assert!(matches!(e, VerifyError::Fetch { .. }), "{e}");
}

#[test]
fn pccs_with_a_private_ca_is_trusted_only_through_a_ca_file() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let collateral: dcap_qvl::QuoteCollateralV3 =
        serde_json::from_slice(&read("sgx/sgx_quote_collateral.json")).unwrap();
    let ca = PrivateCa::new();
    let Server { base, count, .. } = serve(32, Some(ca.server.clone()), pccs_handler(collateral));
    let cache = tempfile::tempdir().unwrap();
    let (evidence, mut options) = sgx();

    // Neither Mozilla's roots nor the system store know the PCCS's own CA.
    options.collateral = Arc::new(PccsCollateral::new(&base, cache.path()));
    let e = verify(&evidence, &options).unwrap_err();
    assert!(matches!(e, VerifyError::Fetch { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&format!("fetching {base}/sgx/certification/v4/pckcrl"))
            && text.contains("invalid peer certificate")
            && text.contains("--ca-file"),
        "{text}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 0);

    let ca_file = cache.path().join("pccs-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let fetcher = Fetcher::with_ca_file(&ca_file).unwrap();
    options.collateral = Arc::new(PccsCollateral::new(&base, cache.path()).with_fetcher(fetcher));
    let claims = verify(&evidence, &options).unwrap();
    assert_eq!(claims.tcb_status, "ConfigurationAndSWHardeningNeeded");
    assert_eq!(count.load(Ordering::SeqCst), 4);
}

#[test]
fn unusable_ca_files_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let refused = |name: &str, content: Option<&[u8]>| {
        let path = dir.path().join(name);
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        let e = Fetcher::with_ca_file(&path).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        (e, text)
    };
    let (e, _) = refused("missing.pem", None);
    assert!(matches!(e, CaFileError::Read { .. }), "{e}");
    let (e, text) = refused("ca.der", Some(&[0x30, 0x82, 0x01, 0x0a, 0x02]));
    assert!(matches!(e, CaFileError::NotPem { .. }), "{e}");
    assert!(text.contains("in PEM"), "{text}");
    let (e, _) = refused(
        "damaged.pem",
        Some(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\n"),
    );
    assert!(matches!(e, CaFileError::NotPem { .. }), "{e}");
    let (e, _) = refused(
        "params.pem",
        Some(b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"),
    );
    assert!(matches!(e, CaFileError::NoCertificates { .. }), "{e}");
}

// ---------------------------------------------------------------- SNP

fn snp_milan() -> (Vec<u8>, Vec<u8>) {
    let text = String::from_utf8(read("snp/report_milan.hex")).unwrap();
    (
        hex::decode(text.trim()).unwrap(),
        read("snp/vcek_milan.der"),
    )
}

fn snp_trustee() -> (Vec<u8>, Vec<u8>) {
    (read("snp/trustee-report.bin"), read("snp/trustee-vcek.der"))
}

fn snp_evidence(report: &[u8], vcek: &[u8]) -> Evidence {
    Evidence {
        tee: TeeType::Snp,
        report: report.to_vec(),
        certificates: build_cert_table(&[CertEntry {
            guid: VCEK_GUID,
            data: vcek.to_vec(),
        }]),
    }
}

fn snp_options() -> VerifyOptions {
    VerifyOptions::new(SystemTime::now())
}

#[test]
fn snp_reports_verify() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    for (name, (report, vcek)) in [("milan", snp_milan()), ("trustee", snp_trustee())] {
        let claims = verify(&snp_evidence(&report, &vcek), &snp_options())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(claims.tee, TeeType::Snp);
        assert_eq!(claims.tcb_status, "NotApplicable");
        assert_eq!(claims.report_data.0, report[0x50..0x90]);
        let Measurements::Snp {
            measurement,
            policy,
            reported_tcb,
            ..
        } = &claims.measurements
        else {
            panic!("{claims:?}")
        };
        assert_eq!(measurement.0, report[0x90..0xC0]);
        assert_eq!(claims.debug, policy & (1 << 19) != 0);
        assert_eq!(
            *reported_tcb,
            u64::from_le_bytes(report[0x180..0x188].try_into().unwrap())
        );
    }
}

#[test]
fn snp_tampered() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    for (name, (report, vcek)) in [("milan", snp_milan()), ("trustee", snp_trustee())] {
        for (what, at) in [
            ("body", 0x90),
            ("report data", 0x50),
            ("signature", 0x2A0 + 7),
            ("policy", 0x08),
        ] {
            let mut bad = report.clone();
            flip(&mut bad, at);
            let e = verify(&snp_evidence(&bad, &vcek), &snp_options()).unwrap_err();
            assert!(
                matches!(
                    e,
                    VerifyError::Signature {
                        tee: TeeType::Snp,
                        what: "attestation report (VCEK)"
                    }
                ),
                "{name} {what}: {e}"
            );
        }
        let mut bad = report.clone();
        flip(&mut bad, 0x2A0 + 60); // zero padding of R: not covered by the signature
        let e = verify(&snp_evidence(&bad, &vcek), &snp_options()).unwrap_err();
        assert!(
            matches!(e, VerifyError::Malformed { .. }),
            "{name} padding: {e}"
        );
        for at in [vcek.len() - 20, vcek.len() / 2, 300] {
            let mut bad_vcek = vcek.clone();
            flip(&mut bad_vcek, at);
            let e = verify(&snp_evidence(&report, &bad_vcek), &snp_options()).unwrap_err();
            assert!(
                matches!(
                    e,
                    VerifyError::CertificateChain {
                        tee: TeeType::Snp,
                        ..
                    }
                ),
                "{name} VCEK byte {at}: {e}"
            );
        }
    }
}

#[test]
fn snp_vcek_of_another_chip_is_refused() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (report, _) = snp_milan();
    // A genuine VCEK, chaining to AMD's root, but issued for another chip: refused by its
    // hwID before the signature is even tried.
    let (_, trustee_vcek) = snp_trustee();
    let e = verify(&snp_evidence(&report, &trustee_vcek), &snp_options()).unwrap_err();
    assert!(
        matches!(e, VerifyError::CertificateChain { .. })
            && e.to_string()
                .contains("the VCEK (from the evidence) was issued for another chip"),
        "{e}"
    );
}

const VLEK_NOW: &str = "2025-06-19T12:00:00Z";

fn snp_vlek() -> (Vec<u8>, Vec<u8>) {
    (
        read("snp/trustee-vlek-report.bin"),
        read("snp/trustee-vlek.der"),
    )
}

fn snp_table(guid: [u8; 16], der: &[u8]) -> Vec<u8> {
    build_cert_table(&[CertEntry {
        guid,
        data: der.to_vec(),
    }])
}

#[test]
fn snp_vlek_report_verifies_through_the_asvk() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (report, vlek) = snp_vlek();
    assert_eq!((report[0x48] >> 2) & 7, 1, "the fixture is VLEK-signed");
    let evidence = Evidence {
        tee: TeeType::Snp,
        report: report.clone(),
        certificates: snp_table(VLEK_GUID, &vlek),
    };
    let options = VerifyOptions::new(at(VLEK_NOW));
    let claims = verify(&evidence, &options).unwrap_or_else(|e| panic!("{e}"));
    let Measurements::Snp {
        vmpl,
        reported_tcb_spl,
        ..
    } = &claims.measurements
    else {
        panic!("{claims:?}")
    };
    assert_eq!(*vmpl, 1);
    assert_eq!(
        (
            reported_tcb_spl.bootloader,
            reported_tcb_spl.snp,
            reported_tcb_spl.microcode
        ),
        (4, 24, 0xd9)
    );

    // The policy checks the VMPL by default: this report was requested at VMPL 1.
    let measurement = hex::encode(&report[0x90..0xC0]);
    let policy = |extra: &str| {
        Policy::from_yaml(&format!(
            "version: 1\nroles:\n  - name: aws\n    snp: {{ measurement: [\"{measurement}\"]{extra} }}\n"
        ))
        .unwrap()
    };
    let denial = policy("").evaluate(&claims).unwrap_err().to_string();
    assert!(denial.contains("snp vmpl 1 is not accepted"), "{denial}");
    policy(", vmpl: [1]").evaluate(&claims).unwrap();
    let denial = policy(", vmpl: 1, min_reported_tcb: { snp: 25 }")
        .evaluate(&claims)
        .unwrap_err()
        .to_string();
    assert!(
        denial.contains("snp SPL 24 is below min_reported_tcb.snp 25"),
        "{denial}"
    );

    // Tampering is caught by the VLEK's signature.
    let mut bad = evidence.clone();
    flip(&mut bad.report, 0x90);
    let e = verify(&bad, &options).unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::Signature {
                what: "attestation report (VLEK)",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn snp_vlek_and_vcek_are_not_interchangeable() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (vlek_report, vlek) = snp_vlek();
    let (vcek_report, vcek) = snp_trustee();
    let options = VerifyOptions::new(at(VLEK_NOW));
    let refusal = |report: &[u8], certificates: Vec<u8>| {
        let evidence = Evidence {
            tee: TeeType::Snp,
            report: report.to_vec(),
            certificates,
        };
        let e = verify(&evidence, &options).unwrap_err();
        assert!(matches!(e, VerifyError::CertificateChain { .. }), "{e}");
        e.to_string()
    };
    let e = refusal(&vlek_report, snp_table(VCEK_GUID, &vcek));
    assert!(
        e.contains("signed by a VLEK (signing_key 1)") && e.contains("carries only a VCEK"),
        "{e}"
    );
    let e = refusal(&vlek_report, snp_table(VLEK_GUID, &vcek));
    assert!(
        e.contains("signed by a VLEK") && e.contains("is a VCEK (subject CN SEV-VCEK)"),
        "{e}"
    );
    let e = refusal(&vcek_report, snp_table(VLEK_GUID, &vlek));
    assert!(
        e.contains("signed by a VCEK (signing_key 0)") && e.contains("carries only a VLEK"),
        "{e}"
    );
    let e = refusal(&vcek_report, snp_table(VCEK_GUID, &vlek));
    assert!(
        e.contains("signed by a VCEK") && e.contains("is a VLEK (subject CN SEV-VLEK)"),
        "{e}"
    );
}

#[test]
fn snp_certificates_are_checked_against_the_verification_time() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (report, vcek) = snp_milan();
    let evidence = snp_evidence(&report, &vcek);
    // The VCEK is valid 2023-04-03T19:23:43Z – 2030-04-03T19:23:43Z.
    let e = verify(&evidence, &VerifyOptions::new(at("2031-01-01T00:00:00Z"))).unwrap_err();
    assert!(matches!(e, VerifyError::Expired { .. }), "{e}");
    assert!(
        e.to_string().contains(
            "the AMD VCEK certificate from the evidence (valid from 2023-04-03T19:23:43Z to \
             2030-04-03T19:23:43Z) expired: verification time 2031-01-01T00:00:00Z"
        ),
        "{e}"
    );
    let e = verify(&evidence, &VerifyOptions::new(at("2023-01-01T00:00:00Z"))).unwrap_err();
    assert!(
        matches!(e, VerifyError::NotYetValid { .. })
            && e.to_string().contains("AMD VCEK certificate"),
        "{e}"
    );
    // The built-in ARK-Milan ends 2045-10-22.
    let e = verify(&evidence, &VerifyOptions::new(at("2046-01-01T00:00:00Z"))).unwrap_err();
    assert!(
        e.to_string()
            .contains("the built-in AMD Milan ARK certificate"),
        "{e}"
    );
    // The VLEK (valid until 2025-12-10T22:14:21Z), months later.
    let (vlek_report, vlek) = snp_vlek();
    let evidence = Evidence {
        tee: TeeType::Snp,
        report: vlek_report,
        certificates: snp_table(VLEK_GUID, &vlek),
    };
    let e = verify(&evidence, &VerifyOptions::new(at("2026-03-01T00:00:00Z"))).unwrap_err();
    assert!(
        matches!(e, VerifyError::Expired { .. })
            && e.to_string().contains("AMD VLEK certificate")
            && e.to_string().contains("to 2025-12-10T22:14:21Z"),
        "{e}"
    );
}

#[test]
fn snp_vcek_for_another_tcb_is_refused() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (mut report, vcek) = snp_milan();
    report[0x187] += 1; // reported microcode SPL 115 -> 116
    let e = verify(&snp_evidence(&report, &vcek), &snp_options()).unwrap_err();
    assert!(
        e.to_string()
            .contains("was issued for another TCB than the report's reported TCB: microcode SPL 115 (report: 116)"),
        "{e}"
    );
}

#[test]
fn snp_stale_vcek_from_the_evidence_falls_back_to_kds() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (report, vcek) = snp_milan();
    let (_, other_chip) = snp_trustee();
    let served = vcek.clone();
    let hwid = hex::encode(&report[0x1A0..0x1E0]);
    let Server { base, count, .. } = serve(16, None, move |path| {
        path.starts_with(&format!("/vcek/v1/Milan/{hwid}?"))
            .then(|| (Vec::new(), served.clone()))
    });
    let cache = tempfile::tempdir().unwrap();
    let mut options = snp_options();
    options.vcek = Arc::new(KdsVcek::new(base, cache.path()));
    // The host hands out a VCEK that is not this report's: the verifier fetches the right one.
    verify(&snp_evidence(&report, &other_chip), &options).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // A fresh VCEK in the evidence is used as is.
    verify(&snp_evidence(&report, &vcek), &options).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // A stale VCEK in the cache (here: another chip's under this report's name) is fetched
    // again and replaced.
    let name = format!(
        "vcek-{}-{}.der",
        hex::encode(&report[0x1A0..0x1E0]),
        hex::encode(&report[0x180..0x188])
    );
    std::fs::write(cache.path().join(&name), &other_chip).unwrap();
    let mut evidence = snp_evidence(&report, &vcek);
    evidence.certificates.clear();
    verify(&evidence, &options).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert_eq!(std::fs::read(cache.path().join(&name)).unwrap(), vcek);
    verify(&evidence, &options).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2, "the fresh copy is cached");

    // An expired VCEK in the evidence, and the cache has no other: the expiry is the reason.
    let empty = tempfile::tempdir().unwrap();
    let mut options = VerifyOptions::new(at("2031-01-01T00:00:00Z"));
    options.vcek = Arc::new(VcekDir::new(empty.path()));
    let e = verify(&snp_evidence(&report, &vcek), &options).unwrap_err();
    assert!(matches!(e, VerifyError::Expired { .. }), "{e}");
}

#[test]
fn snp_malformed_inputs() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (report, vcek) = snp_milan();
    let e = verify(&snp_evidence(&report[..1000], &vcek), &snp_options()).unwrap_err();
    assert!(matches!(e, VerifyError::Malformed { .. }), "{e}");
    let mut evidence = snp_evidence(&report, &vcek);
    evidence.certificates.truncate(30);
    let e = verify(&evidence, &snp_options()).unwrap_err();
    assert!(matches!(e, VerifyError::CertificateChain { .. }), "{e}");
    evidence.certificates.clear();
    let e = verify(&evidence, &snp_options()).unwrap_err();
    assert!(matches!(e, VerifyError::VcekUnavailable { .. }), "{e}");
}

#[test]
fn snp_vcek_from_cache_directory() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (report, vcek) = snp_milan();
    let dir = tempfile::tempdir().unwrap();
    let mut evidence = snp_evidence(&report, &vcek);
    evidence.certificates.clear();
    let mut options = snp_options();
    options.vcek = Arc::new(VcekDir::new(dir.path()));
    let e = verify(&evidence, &options).unwrap_err();
    assert!(matches!(e, VerifyError::VcekUnavailable { .. }), "{e}");
    let name = format!(
        "vcek-{}-{}.der",
        hex::encode(&report[0x1A0..0x1E0]),
        hex::encode(&report[0x180..0x188])
    );
    std::fs::write(dir.path().join(name), &vcek).unwrap();
    verify(&evidence, &options).unwrap();
}

#[test]
fn snp_vcek_from_kds_fetched_once() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let (report, vcek) = snp_milan();
    let hwid = hex::encode(&report[0x1A0..0x1E0]);
    let served = vcek.clone();
    let Server { base, count, paths } = serve(16, None, move |path| {
        path.starts_with(&format!("/vcek/v1/Milan/{hwid}?"))
            .then(|| (Vec::new(), served.clone()))
    });
    let cache = tempfile::tempdir().unwrap();
    let mut evidence = snp_evidence(&report, &vcek);
    evidence.certificates.clear();
    let mut options = snp_options();
    options.vcek = Arc::new(KdsVcek::new(base, cache.path()));
    verify(&evidence, &options).unwrap();
    verify(&evidence, &options).unwrap();
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "{:?}",
        paths.lock().unwrap()
    );
    let path = paths.lock().unwrap()[0].clone();
    let t = &report[0x180..0x188];
    assert!(
        path.ends_with(&format!(
            "?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
            t[0], t[1], t[6], t[7]
        )),
        "{path}"
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1);
}

// ---------------------------------------------------------------- sim

fn sim_evidence(
    key: &ed25519_dalek::SigningKey,
    measurement: [u8; 32],
    report_data: [u8; 64],
) -> Vec<u8> {
    use ed25519_dalek::Signer;
    let mut out = b"COFFER-SIM-EVIDENCE\0".to_vec();
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&measurement);
    out.extend_from_slice(&report_data);
    out.extend_from_slice(key.verifying_key().as_bytes());
    let signature = key.sign(&out);
    out.extend_from_slice(&signature.to_bytes());
    out
}

#[test]
fn sim_evidence_verifies_only_when_allowed() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let report = sim_evidence(&key, [1u8; 32], [2u8; 64]);
    assert_eq!(report.len(), 214);
    let evidence = Evidence {
        tee: TeeType::Sim,
        report,
        certificates: Vec::new(),
    };
    let mut options = VerifyOptions::new(SystemTime::now());
    assert_eq!(
        verify(&evidence, &options).unwrap_err(),
        VerifyError::SimulationNotAllowed
    );
    options.allow_simulation = true;
    let claims = verify(&evidence, &options).unwrap();
    assert_eq!(claims.tcb_status, "NotApplicable");
    assert!(!claims.debug);
    assert_eq!(claims.report_data.0, vec![2u8; 64]);
    assert_eq!(
        claims.measurements,
        Measurements::Sim {
            measurement: coffer_attest::claims::Hex(vec![1u8; 32]),
            signer: coffer_attest::claims::Hex(key.verifying_key().as_bytes().to_vec()),
        }
    );
    for (what, at) in [
        ("measurement", 22),
        ("report data", 54),
        ("key", 118),
        ("signature", 150),
    ] {
        let mut bad = evidence.clone();
        flip(&mut bad.report, at);
        let e = verify(&bad, &options).unwrap_err();
        assert!(
            matches!(
                e,
                VerifyError::Signature { .. } | VerifyError::Malformed { .. }
            ),
            "{what}: {e}"
        );
        if what != "key" {
            assert!(matches!(e, VerifyError::Signature { .. }), "{what}: {e}");
        }
    }
    let mut bad = evidence.clone();
    bad.report.push(0);
    assert!(matches!(
        verify(&bad, &options).unwrap_err(),
        VerifyError::Malformed { .. }
    ));
    let mut bad = evidence.clone();
    bad.report[21] = 3; // an unknown version
    assert!(matches!(
        verify(&bad, &options).unwrap_err(),
        VerifyError::Malformed { .. }
    ));
    // Turning production evidence into "debug" evidence (or back) breaks the signature.
    let mut bad = evidence;
    bad.report[21] = 2;
    assert!(matches!(
        verify(&bad, &options).unwrap_err(),
        VerifyError::Signature { .. }
    ));
}

#[test]
fn sim_platform_posing_as_a_debug_tee_claims_debug() {
    use coffer_platform::Platform;
    let dir = tempfile::tempdir().unwrap();
    let platform = coffer_platform::sim::SimPlatform::open_or_create(dir.path()).unwrap();
    let mut options = VerifyOptions::new(SystemTime::now());
    options.allow_simulation = true;
    let production = verify(&platform.evidence(&[3; 64]).unwrap(), &options).unwrap();
    assert!(!production.debug);
    let debug = platform.with_debug(true);
    let claims = verify(&debug.evidence(&[3; 64]).unwrap(), &options).unwrap();
    assert!(claims.debug);
    assert_eq!(claims.measurements, production.measurements);
}

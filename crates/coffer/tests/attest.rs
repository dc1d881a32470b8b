//! `coffer attest` on real vendor evidence (../shared/fixtures/attestation) and on this
//! machine's simulation evidence.

mod common;

use std::path::PathBuf;

use common::coffer;

fn fixtures() -> PathBuf {
    if let Ok(dir) = std::env::var("COFFER_FIXTURES") {
        return PathBuf::from(dir);
    }
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/attestation"
    ))
}

fn fx(rel: &str) -> String {
    fixtures().join(rel).to_str().unwrap().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn verifies_real_sgx_tdx_and_snp_evidence() {
    let out = coffer(&[
        "attest",
        "verify",
        "--tee",
        "sgx",
        "--evidence",
        &fx("sgx/sgx_quote"),
        "--collateral-dir",
        &fx("sgx"),
        "--collateral-file",
        "sgx_quote_collateral.json",
        "--now",
        "2025-06-19T12:00:00Z",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["tee"], "sgx");
    assert_eq!(claims["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    let advisories = claims["advisories"].to_string();
    assert!(advisories.contains("INTEL-SA-00289") && advisories.contains("INTEL-SA-00615"));
    assert_eq!(claims["measurements"]["type"], "sgx");
    assert_eq!(
        claims["measurements"]["mr_enclave"].as_str().unwrap().len(),
        64
    );

    let out = coffer(&[
        "attest",
        "verify",
        "--tee",
        "tdx",
        "--evidence",
        &fx("tdx/tdx_quote"),
        "--collateral-dir",
        &fx("tdx"),
        "--collateral-file",
        "tdx_quote_collateral.json",
        "--now",
        "2025-06-19T12:00:00Z",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["tcb_status"], "UpToDate");
    assert_eq!(claims["measurements"]["mr_td"].as_str().unwrap().len(), 96);

    let out = coffer(&[
        "attest",
        "verify",
        "--tee",
        "snp",
        "--evidence",
        &fx("snp/report_milan.hex"),
        "--vcek",
        &fx("snp/vcek_milan.der"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["tee"], "snp");
    assert_eq!(
        claims["measurements"]["measurement"]
            .as_str()
            .unwrap()
            .len(),
        96
    );
}

#[test]
fn outdated_and_tampered_evidence_is_refused_with_the_reason() {
    let out = coffer(&[
        "attest",
        "verify",
        "--tee",
        "tdx",
        "--evidence",
        &fx("tdx/tdx_quote_outdated"),
        "--collateral-dir",
        &fx("tdx"),
        "--collateral-file",
        "tdx_quote_outdated_collateral.json",
        "--now",
        "2026-02-18T12:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("No matching TCB level found"),
        "{}",
        text(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let mut quote = std::fs::read(fx("sgx/sgx_quote")).unwrap();
    quote[48 + 320] ^= 1; // report data
    let tampered = dir.path().join("quote");
    std::fs::write(&tampered, &quote).unwrap();
    let out = coffer(&[
        "attest",
        "verify",
        "--tee",
        "sgx",
        "--evidence",
        tampered.to_str().unwrap(),
        "--collateral-dir",
        &fx("sgx"),
        "--collateral-file",
        "sgx_quote_collateral.json",
        "--now",
        "2025-06-19T12:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("signature"),
        "{}",
        text(&out.stderr)
    );

    let out = coffer(&[
        "attest",
        "verify",
        "--tee",
        "sgx",
        "--evidence",
        &fx("sgx/sgx_quote"),
        "--collateral-dir",
        &fx("sgx"),
        "--collateral-file",
        "sgx_quote_collateral.json",
        "--now",
        "2025-08-01T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(1), "expired collateral accepted");
}

#[test]
fn simulation_evidence_round_trip_and_policy() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    // The sim key is created by `keys init` (or kms serve); evidence never creates state.
    let init = coffer(&[
        "keys",
        "init",
        "--platform",
        "sim",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(init.status.success(), "{}", text(&init.stderr));
    let evidence = dir.path().join("evidence.json");
    let report_data = "ab".repeat(64);
    let out = coffer(&[
        "attest",
        "evidence",
        "--platform",
        "sim",
        "--state-dir",
        state.to_str().unwrap(),
        "--report-data",
        &report_data,
        "--output",
        evidence.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = coffer(&[
        "attest",
        "verify",
        "--evidence",
        evidence.to_str().unwrap(),
        "--report-data",
        &report_data,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["tee"], "sim");
    assert_eq!(claims["report_data"], report_data);
    let measurement = claims["measurements"]["measurement"]
        .as_str()
        .unwrap()
        .to_string();

    let out = coffer(&[
        "attest",
        "verify",
        "--evidence",
        evidence.to_str().unwrap(),
        "--report-data",
        &"cd".repeat(64),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("report data"),
        "{}",
        text(&out.stderr)
    );

    let production = dir.path().join("production.yaml");
    std::fs::write(
        &production,
        format!("version: 1\nroles:\n  - name: kms-plugin\n    sim: {{ measurement: [\"{measurement}\"] }}\n"),
    )
    .unwrap();
    let out = coffer(&[
        "attest",
        "verify",
        "--evidence",
        evidence.to_str().unwrap(),
        "--policy",
        production.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("allow_simulation is false"),
        "{}",
        text(&out.stderr)
    );

    let dev = dir.path().join("dev.yaml");
    std::fs::write(
        &dev,
        format!("version: 1\nallow_simulation: true\nroles:\n  - name: kms-plugin\n    sim: {{ measurement: [\"{measurement}\"] }}\n"),
    )
    .unwrap();
    let out = coffer(&[
        "attest",
        "verify",
        "--evidence",
        evidence.to_str().unwrap(),
        "--policy",
        dev.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("role kms-plugin"));

    // Tampered evidence.
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&evidence).unwrap()).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut report = b64.decode(doc["report"].as_str().unwrap()).unwrap();
    report[30] ^= 1;
    doc["report"] = serde_json::Value::String(b64.encode(report));
    std::fs::write(&evidence, doc.to_string()).unwrap();
    let out = coffer(&["attest", "verify", "--evidence", evidence.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).to_lowercase().contains("signature"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn policy_check_reports_typos_with_their_location() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, format!("version: 1\nroles:\n  - name: kms-plugin\n    sgx: {{ mr_signer: [\"{}\"], min_isv_svn: 1 }}\n", "ab".repeat(32))).unwrap();
    let out = coffer(&["attest", "policy", "check", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("kms-plugin"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "version: 1\nallow_simulaton: true\nroles: []\n").unwrap();
    let out = coffer(&["attest", "policy", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("allow_simulaton") && err.contains("line"),
        "{err}"
    );

    let short = dir.path().join("short.yaml");
    std::fs::write(
        &short,
        format!(
            "version: 1\nroles:\n  - name: kms-plugin\n    sgx: {{ mr_enclave: [\"{}\"] }}\n",
            "ab".repeat(31)
        ),
    )
    .unwrap();
    let out = coffer(&["attest", "policy", "check", short.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("mr_enclave"),
        "{}",
        text(&out.stderr)
    );
}

//! `coffer attest` on real vendor evidence (../shared/fixtures/attestation) and on this
//! machine's simulation evidence.

mod common;

use coffer_test_fixtures::server::{serve, PrivateCa, Server};
use common::coffer;
use std::sync::atomic::Ordering;

use coffer_test_fixtures::attestation_dir as fixtures;

fn fx(rel: &str) -> String {
    fixtures().join(rel).to_str().unwrap().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn verifies_real_sgx_tdx_and_snp_evidence() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
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
fn a_stale_vcek_on_the_command_line_falls_back_to_the_vcek_dir() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    // --vcek names a genuine VCEK of another chip (as a host with a stale certificate would
    // hand out): refused with the reason alone, accepted once --vcek-dir holds the right one.
    let report = hex::decode(
        std::fs::read_to_string(fx("snp/report_milan.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["attest", "verify", "--tee", "snp", "--evidence"];
        args.extend_from_slice(extra);
        args
    }
    let evidence = fx("snp/report_milan.hex");
    let stale = fx("snp/trustee-vcek.der");
    let out = coffer(&args(&[&evidence, "--vcek", &stale]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("was issued for another chip"),
        "{}",
        text(&out.stderr)
    );
    let name = format!(
        "vcek-{}-{}.der",
        hex::encode(&report[0x1A0..0x1E0]),
        hex::encode(&report[0x180..0x188])
    );
    std::fs::copy(fx("snp/vcek_milan.der"), dir.path().join(name)).unwrap();
    let vcek_dir = dir.path().to_str().unwrap().to_string();
    let out = coffer(&args(&[
        &evidence,
        "--vcek",
        &stale,
        "--vcek-dir",
        &vcek_dir,
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn hex_evidence_with_0x_prefix_and_line_breaks_is_read_as_hex() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("quote.hex");
    let verify_tdx = || {
        coffer(&[
            "attest",
            "verify",
            "--tee",
            "tdx",
            "--evidence",
            file.to_str().unwrap(),
            "--collateral-dir",
            &fx("tdx"),
            "--collateral-file",
            "tdx_quote_collateral.json",
            "--now",
            "2025-06-19T12:00:00Z",
        ])
    };
    let hex = hex::encode(std::fs::read(fx("tdx/tdx_quote")).unwrap());
    let lines: Vec<&str> = hex
        .as_bytes()
        .chunks(64)
        .map(|line| std::str::from_utf8(line).unwrap())
        .collect();
    for (form, body) in [
        (
            "0x prefix, line breaks",
            format!("0x{}\n", lines.join("\n")),
        ),
        ("0X prefix, CRLF", format!("0X{}\r\n", lines.join("\r\n"))),
        ("upper case, spaces", format!("  {}  ", hex.to_uppercase())),
        ("0x on every line", format!("0x{}\n", lines.join("\n0x"))),
    ] {
        std::fs::write(&file, body).unwrap();
        let out = verify_tdx();
        assert!(out.status.success(), "{form}: {}", text(&out.stderr));
        let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(claims["tcb_status"], "UpToDate", "{form}");
    }

    // Text that is not hex is refused as such, not handed to the verifier as bytes.
    std::fs::write(&file, "0x04000200zz\n").unwrap();
    let out = verify_tdx();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("is text but not hex") && stderr.contains("0x prefix"),
        "{stderr}"
    );
    // Hex of digits alone is hex, not a JSON number.
    std::fs::write(&file, "1234\n").unwrap();
    let out = verify_tdx();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("tdx evidence is malformed") && !stderr.contains("JSON"),
        "{stderr}"
    );
}

#[test]
fn outdated_and_tampered_evidence_is_refused_with_the_reason() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
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
fn kds_behind_a_private_ca_is_trusted_through_ca_file() {
    coffer_test_fixtures::skip_without_attestation_fixtures!();
    let vcek = std::fs::read(fixtures().join("snp/vcek_milan.der")).unwrap();
    let ca = PrivateCa::new();
    let Server { base, count, .. } = serve(4, Some(ca.server.clone()), move |path| {
        path.starts_with("/vcek/v1/Milan/")
            .then(|| (Vec::new(), vcek.clone()))
    });
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let verify = |extra: &[&str]| {
        let report = fx("snp/report_milan.hex");
        let mut args = vec![
            "attest",
            "verify",
            "--tee",
            "snp",
            "--evidence",
            &report,
            "--kds-url",
            &base,
            "--cache-dir",
            cache.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        coffer(&args)
    };

    let out = verify(&[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("fetching {base}/vcek/v1/Milan/"))
            && stderr.contains("invalid peer certificate")
            && stderr.contains("--ca-file"),
        "{stderr}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 0);

    let ca_file = dir.path().join("kds-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let out = verify(&["--ca-file", ca_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["tee"], "snp");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[test]
fn unusable_ca_file_is_refused_before_anything_is_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let evidence = dir.path().join("report.bin");
    std::fs::write(&evidence, [0u8; 64]).unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(
        &key,
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n",
    )
    .unwrap();
    let missing = dir.path().join("missing.pem");
    for (ca_file, reason) in [
        (&missing, "No such file"),
        (&evidence, "no PEM section"),
        (&key, "no CERTIFICATE section"),
    ] {
        let out = coffer(&[
            "attest",
            "verify",
            "--tee",
            "snp",
            "--evidence",
            evidence.to_str().unwrap(),
            "--kds-url",
            "https://127.0.0.1:9",
            "--cache-dir",
            dir.path().to_str().unwrap(),
            "--ca-file",
            ca_file.to_str().unwrap(),
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(&format!("CA file {}", ca_file.display())) && stderr.contains(reason),
            "{stderr}"
        );
        // The reason is said once, not again as its own cause.
        assert!(!stderr.contains("caused by"), "{stderr}");
    }
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

/// A real attested-TLS server (the library the key service will use) on 127.0.0.1, checked by
/// `coffer attest endpoint`, which also presents its own attested certificate.
#[test]
fn endpoint_is_verified_over_mutual_attested_tls() {
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let server_state = dir.path().join("server");
    let server_platform = coffer_platform::sim::SimPlatform::open_or_create(&server_state).unwrap();
    let server_measurement = hex::encode(coffer_platform::sim::executable_measurement().unwrap());
    let client_state = dir.path().join("client");
    assert!(coffer(&[
        "keys",
        "init",
        "--platform",
        "sim",
        "--state-dir",
        client_state.to_str().unwrap()
    ])
    .status
    .success());
    let client_measurement = {
        let bytes = std::fs::read(common::coffer_bin()).unwrap();
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    };
    let policy_for = |role: &str, measurement: &str| {
        format!("version: 1\nallow_simulation: true\nroles:\n  - name: {role}\n    sim: {{ measurement: [\"{measurement}\"] }}\n")
    };
    // The server accepts only the coffer CLI's sim identity.
    let server_policy = Arc::new(
        coffer_attest::policy::Policy::from_yaml(&policy_for("operator", &client_measurement))
            .unwrap(),
    );
    let server_verifier = Arc::new(coffer_ratls::AttestedVerifier::new(
        Arc::new(coffer_ratls::OfflineVerifier::new(
            coffer_attest::VerifyOptions::new(std::time::SystemTime::now()),
        )),
        server_policy,
    ));
    let identity = coffer_ratls::attested_certificate(&server_platform).unwrap();
    let config = Arc::new(coffer_ratls::server_config(&identity, server_verifier.clone()).unwrap());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let mut results = Vec::new();
        for _ in 0..2 {
            let (mut sock, _) = listener.accept().unwrap();
            sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut tls = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut outcome = Ok(());
            while tls.is_handshaking() {
                if let Err(e) = tls.complete_io(&mut sock) {
                    outcome = Err(e.to_string());
                    break;
                }
            }
            if outcome.is_ok() {
                let role = server_verifier
                    .peer(tls.peer_certificates())
                    .map(|p| p.role.name);
                outcome = role
                    .ok_or("no peer".to_string())
                    .map(|r| assert_eq!(r, "operator"));
            }
            results.push(outcome);
        }
        results
    });

    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, policy_for("keyd", &server_measurement)).unwrap();
    let out = coffer(&[
        "attest",
        "endpoint",
        "--connect",
        &addr,
        "--policy",
        policy.to_str().unwrap(),
        "--platform",
        "sim",
        "--state-dir",
        client_state.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["tee"], "sim");
    assert_eq!(
        claims["measurements"]["measurement"],
        server_measurement.as_str()
    );
    assert!(text(&out.stderr).contains("policy role keyd"));

    // A policy the endpoint does not satisfy: refused, with the measurement in the reason.
    std::fs::write(&policy, policy_for("keyd", &"00".repeat(32))).unwrap();
    let out = coffer(&[
        "attest",
        "endpoint",
        "--connect",
        &addr,
        "--policy",
        policy.to_str().unwrap(),
        "--platform",
        "sim",
        "--state-dir",
        client_state.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("is not accepted") && err.contains(&server_measurement),
        "{err}"
    );
    let results = server.join().unwrap();
    assert!(results[0].is_ok(), "{:?}", results[0]);
}

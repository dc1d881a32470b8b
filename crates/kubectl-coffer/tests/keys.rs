//! `verify-key` offline, and `fetch-key` / `reseal` against a real `coffer keyd serve` (sim).

mod common;

use common::sealing::SimKeyd;
use common::{fails_with, kubectl, text};

#[test]
fn verify_key_checks_evidence_and_policy_offline() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = SimKeyd::new(dir.path(), "apps", 2);
    let bundle = keyd.write_bundle(&dir.path().join("bundle.json"));
    let bundle = bundle.to_str().unwrap();
    let allow = keyd.policy(&dir.path().join("allow.yaml"), true);
    let out = kubectl(&[
        "coffer",
        "verify-key",
        "--key-bundle",
        bundle,
        "--policy",
        allow.to_str().unwrap(),
        "--keyring",
        "apps",
    ]);
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("verified keyd: TEE sim"), "{stderr}");
    assert!(stderr.contains("SIMULATION"), "{stderr}");
    assert!(
        stderr.contains(&format!("{} (primary)", keyd.keys[1].id())),
        "{stderr}"
    );

    // A production policy refuses simulation evidence.
    let deny = keyd.policy(&dir.path().join("deny.yaml"), false);
    fails_with(
        &kubectl(&[
            "coffer",
            "verify-key",
            "--key-bundle",
            bundle,
            "--policy",
            deny.to_str().unwrap(),
        ]),
        "simulation evidence refused",
    );
    // Evidence from another identity than the policy names.
    let stranger = SimKeyd::new(&dir.path().join("stranger"), "apps", 1);
    let foreign = stranger.policy(&dir.path().join("stranger.yaml"), true);
    fails_with(
        &kubectl(&[
            "coffer",
            "verify-key",
            "--key-bundle",
            bundle,
            "--policy",
            foreign.to_str().unwrap(),
        ]),
        "does not verify",
    );
    // Another keyring than expected.
    fails_with(
        &kubectl(&[
            "coffer",
            "verify-key",
            "--key-bundle",
            bundle,
            "--policy",
            allow.to_str().unwrap(),
            "--keyring",
            "payments",
        ]),
        "is for keyring \"apps\", not \"payments\"",
    );
}

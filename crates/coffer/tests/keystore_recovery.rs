//! A standalone keystore through a TCB update, with the real CLI and a real plugin: the
//! platform's sealing key changes in place (as a microcode update or an ISVSVN bump changes
//! Gramine's seal keys), the keystore then refuses to open and says how to recover; k-1 shares
//! change nothing; k shares reseal its root, and the plugin decrypts what it encrypted before.

mod common;

use std::path::{Path, PathBuf};

use coffer_platform::sim::{SimPlatform, KEY_FILE_NAME};
use common::{decrypt, encrypt, serve_to_exit, Plugin};

fn run(args: &[&str]) -> (bool, String, String) {
    let out = common::coffer(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn keys<'a>(state: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec!["keys"];
    full.extend_from_slice(&args[..1]);
    full.extend_from_slice(&["--platform", "sim", "--state-dir", state.to_str().unwrap()]);
    full.extend_from_slice(&args[1..]);
    full
}

/// `n` operator key pairs: (public key text, secret key file).
fn operators(dir: &Path, n: usize) -> Vec<(String, PathBuf)> {
    (1..=n)
        .map(|i| {
            let out = dir.join(format!("operator-{i}.key"));
            let (ok, stdout, stderr) = run(&[
                "keyd",
                "recovery-key",
                "generate",
                "--out",
                out.to_str().unwrap(),
            ]);
            assert!(ok, "{stderr}");
            (stdout.trim().to_string(), out)
        })
        .collect()
}

/// The TEE's sealing key changes under the same state directory, as SGX seal keys do when the
/// CPUSVN or ISVSVN changes.
fn tcb_update(state: &Path) {
    std::fs::remove_file(state.join(KEY_FILE_NAME)).unwrap();
    SimPlatform::open_or_create(state).unwrap();
}

fn recover_args<'a>(shares: &[&'a Path], keys: &[&'a Path]) -> Vec<&'a str> {
    let mut args = vec!["recover"];
    for s in shares {
        args.extend_from_slice(&["--share", s.to_str().unwrap()]);
    }
    for k in keys {
        args.extend_from_slice(&["--operator-key", k.to_str().unwrap()]);
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystore_survives_a_tcb_update_with_k_shares_but_not_k_minus_1() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let shares_dir = dir.path().join("shares");
    let ops = operators(dir.path(), 3);

    let mut init = vec!["init", "--recovery-threshold", "2", "--recovery-shares-dir"];
    init.push(shares_dir.to_str().unwrap());
    for (pk, _) in &ops {
        init.extend_from_slice(&["--recovery-key", pk.as_str()]);
    }
    let (ok, stdout, stderr) = run(&keys(&state, &init));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("created keystore") && stdout.contains("any 2 of these 3 shares"),
        "{stdout}"
    );
    let mut shares: Vec<PathBuf> = std::fs::read_dir(&shares_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    shares.sort();
    assert_eq!(shares.len(), 3);
    let (ok, stdout, stderr) = run(&keys(&state, &["list"]));
    assert!(
        ok && stdout.contains("recovery: 2 of 3 operator shares"),
        "{stdout}{stderr}"
    );

    // The plugin serves the keystore made with a root, and encrypts under it.
    let mut plugin = Plugin::start_in(dir, &[]).await;
    let before = encrypt(&mut plugin.v2().await, b"written before the update").await;
    assert_eq!(plugin.terminate(), Some(0));
    let dir = std::mem::replace(&mut plugin.dir, tempfile::tempdir().unwrap());
    drop(plugin);

    tcb_update(&state);
    let socket = dir.path().join("refused.sock");
    let out = serve_to_exit(&state, &socket, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "served after the TCB update");
    assert!(
        stderr.contains("TCB update")
            && stderr.contains("coffer keys recover")
            && stderr.contains("2 of its 3 recovery shares"),
        "{stderr}"
    );
    let (ok, _, stderr) = run(&keys(&state, &["list"]));
    assert!(!ok && stderr.contains("coffer keys recover"), "{stderr}");

    // k-1 shares: refused, and nothing in the state directory changes.
    let root_before = std::fs::read(state.join("keyd-root.json")).unwrap();
    let keystore_before = std::fs::read(state.join("keystore")).unwrap();
    let all_keys: Vec<&Path> = ops.iter().map(|(_, k)| k.as_path()).collect();
    let (ok, _, stderr) = run(&keys(
        &state,
        &recover_args(&[shares[0].as_path()], &all_keys),
    ));
    assert!(!ok, "recovered with k-1 shares");
    assert!(stderr.contains("share"), "{stderr}");
    assert_eq!(
        std::fs::read(state.join("keyd-root.json")).unwrap(),
        root_before
    );
    assert_eq!(
        std::fs::read(state.join("keystore")).unwrap(),
        keystore_before
    );
    assert!(!run(&keys(&state, &["list"])).0);

    // k shares (1 and 3): the root is resealed; the keystore file itself is untouched.
    let (ok, stdout, stderr) = run(&keys(
        &state,
        &recover_args(
            &[shares[0].as_path(), shares[2].as_path()],
            &[ops[0].1.as_path(), ops[2].1.as_path()],
        ),
    ));
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("recovered keystore") && stdout.contains(&before.key_id),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read(state.join("keystore")).unwrap(),
        keystore_before
    );
    let (ok, _, stderr) = run(&keys(
        &state,
        &recover_args(&[shares[0].as_path(), shares[1].as_path()], &all_keys),
    ));
    assert!(!ok && stderr.contains("nothing to recover"), "{stderr}");

    // The plugin starts again and decrypts what it encrypted before the update.
    let plugin = Plugin::start_in(dir, &[]).await;
    let plain = decrypt(&mut plugin.v2().await, &before.ciphertext, &before.key_id)
        .await
        .unwrap();
    assert_eq!(plain, b"written before the update");
}

#[test]
fn keystore_without_recovery_shares_names_the_tcb_update_and_has_no_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (ok, stdout, stderr) = run(&keys(&state, &["init"]));
    assert!(ok && stdout.contains("created keystore"), "{stderr}");
    let (ok, stdout, _) = run(&keys(&state, &["list"]));
    assert!(ok && stdout.contains("recovery: none"), "{stdout}");

    // Recovery shares cannot be added to a keystore sealed without a root.
    let ops = operators(dir.path(), 1);
    let shares_dir = dir.path().join("shares");
    let (ok, _, stderr) = run(&keys(
        &state,
        &[
            "init",
            "--recovery-key",
            &ops[0].0,
            "--recovery-shares-dir",
            shares_dir.to_str().unwrap(),
        ],
    ));
    assert!(
        !ok && stderr.contains("--recovery-key applies to a new keystore"),
        "{stderr}"
    );
    assert!(!state.join("keyd-root.json").exists());
    assert!(!shares_dir.exists());

    tcb_update(&state);
    let (ok, _, stderr) = run(&keys(&state, &["list"]));
    assert!(
        !ok && stderr.contains("integrity check") && stderr.contains("TCB update"),
        "{stderr}"
    );
    let missing_share = dir.path().join("share.json");
    let (ok, _, stderr) = run(&keys(
        &state,
        &recover_args(&[missing_share.as_path()], &[ops[0].1.as_path()]),
    ));
    assert!(
        !ok && stderr.contains("has no keystore root")
            && stderr.contains("without `coffer keys init --recovery-key`"),
        "{stderr}"
    );
}

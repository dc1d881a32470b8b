//! Recovery of keyd's root on a new platform identity, with the real CLI and a real keyd: a
//! data directory moved to another machine does not open; k-1 shares do not restore it; k
//! shares do, and every keyring decrypts what it encrypted before.

mod common;

use std::path::Path;

use coffer_keyd_client::KeydClient;
use coffer_platform::sim::SimPlatform;
use common::coffer;
use common::keyd::{client_options, free_addr, keyd_cli, sim_role_policy, KeydProcess};

fn run(args: &[&str]) -> (bool, String, String) {
    let out = coffer(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn keyd_args<'a>(data: &'a Path, args: &[&'a str]) -> Vec<&'a str> {
    let mut full = vec!["keyd"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--platform", "sim", "--data-dir", data.to_str().unwrap()]);
    full
}

/// Copies `from` to `to` without the sim platform's key: the same data on a machine whose TEE
/// has another identity.
fn move_to_new_machine(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == coffer_platform::sim::KEY_FILE_NAME {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            move_to_new_machine(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_data_dir_opens_with_k_shares_but_not_k_minus_1() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    let shares_dir = dir.path().join("shares");

    // Three operators, threshold 2.
    let mut public_keys = Vec::new();
    let mut secret_files = Vec::new();
    for i in 1..=3 {
        let out = dir.path().join(format!("operator-{i}.key"));
        let (ok, stdout, stderr) = run(&[
            "keyd",
            "recovery-key",
            "generate",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{stderr}");
        public_keys.push(stdout.trim().to_string());
        secret_files.push(out);
    }
    // An existing key file is never replaced.
    let (ok, _, stderr) = run(&[
        "keyd",
        "recovery-key",
        "generate",
        "--out",
        secret_files[0].to_str().unwrap(),
    ]);
    assert!(!ok && stderr.contains("never replaced"), "{stderr}");

    let mut init = vec!["init", "--recovery-threshold", "2", "--recovery-shares-dir"];
    init.push(shares_dir.to_str().unwrap());
    for pk in &public_keys {
        init.extend_from_slice(&["--recovery-key", pk]);
    }
    let stdout = keyd_cli(&data, &init);
    assert!(stdout.contains("any 2 of these 3 shares"), "{stdout}");
    keyd_cli(&data, &["keyring", "create", "cluster-a"]);
    let mut shares: Vec<_> = std::fs::read_dir(&shares_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    shares.sort();
    assert_eq!(shares.len(), 3);
    let status = keyd_cli(&data, &["status"]);
    assert!(
        status.contains("2 of 3 operator shares") && status.contains("cluster-a"),
        "{status}"
    );

    // Serve, and wrap a secret under the original identity.
    let caller = dir.path().join("caller");
    let policy = sim_role_policy(dir.path(), "kms-plugin:a", &caller);
    let config = dir.path().join("keyd.yaml");
    std::fs::write(
        &config,
        "keyrings:\n  cluster-a:\n    wrap: [\"kms-plugin:a\"]\n    unwrap: [\"kms-plugin:a\"]\n",
    )
    .unwrap();
    let mut keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &[]);
    let mut client = KeydClient::connect(keyd.addr, client_options(&caller, &keyd.signer()))
        .await
        .unwrap();
    let (ciphertext, key_id) = client.wrap("cluster-a", &[9; 32]).await.unwrap();
    drop(client);
    assert_eq!(keyd.terminate(), Some(0));

    let sealing_keys = keyd_cli(&data, &["sealing-key", "list", "--keyring", "cluster-a"]);

    // The data directory moves to a machine whose TEE has another identity.
    let moved = dir.path().join("moved");
    move_to_new_machine(&data, &moved);
    SimPlatform::open_or_create(&moved).unwrap();
    let (ok, _, stderr) = run(&keyd_args(&moved, &["status"]));
    assert!(!ok, "a moved data directory opened without recovery");
    assert!(
        stderr.contains("another platform identity") && stderr.contains("coffer keyd recover"),
        "{stderr}"
    );

    // k-1 shares: refused, nothing changes.
    let root_before = std::fs::read(moved.join("keyd-root.json")).unwrap();
    let (ok, _, stderr) = run(&keyd_args(
        &moved,
        &[
            "recover",
            "--share",
            shares[0].to_str().unwrap(),
            "--operator-key",
            secret_files[0].to_str().unwrap(),
            "--operator-key",
            secret_files[1].to_str().unwrap(),
            "--operator-key",
            secret_files[2].to_str().unwrap(),
        ],
    ));
    assert!(!ok, "recovered with k-1 shares");
    assert!(stderr.contains("share"), "{stderr}");
    assert_eq!(
        std::fs::read(moved.join("keyd-root.json")).unwrap(),
        root_before
    );
    assert!(!run(&keyd_args(&moved, &["status"])).0);

    // A share opened with the wrong operator's key is refused by name.
    let (ok, _, stderr) = run(&keyd_args(
        &moved,
        &[
            "recover",
            "--share",
            shares[0].to_str().unwrap(),
            "--share",
            shares[2].to_str().unwrap(),
            "--operator-key",
            secret_files[1].to_str().unwrap(),
        ],
    ));
    assert!(
        !ok && stderr.contains("no --operator-key matches share"),
        "{stderr}"
    );

    // k shares (1 and 3): restored, resealed to the new identity.
    let stdout = keyd_cli(
        &moved,
        &[
            "recover",
            "--share",
            shares[0].to_str().unwrap(),
            "--share",
            shares[2].to_str().unwrap(),
            "--operator-key",
            secret_files[0].to_str().unwrap(),
            "--operator-key",
            secret_files[2].to_str().unwrap(),
        ],
    );
    assert!(stdout.contains("recovered keyd"), "{stdout}");
    // The sealing keys are sealed under the root too: they come back with it.
    assert_eq!(
        keyd_cli(&moved, &["sealing-key", "list", "--keyring", "cluster-a"]),
        sealing_keys
    );
    assert!(std::fs::read_dir(&moved).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("keyd-root.json.replaced-")));

    // The recovered keyd decrypts what the original encrypted, and extends the same audit chain.
    let keyd = KeydProcess::start(&moved, free_addr(), &policy, &config, &[]);
    let mut client = KeydClient::connect(keyd.addr, client_options(&caller, &keyd.signer()))
        .await
        .unwrap();
    let plain = client
        .unwrap("cluster-a", Some(&key_id), &ciphertext)
        .await
        .unwrap();
    assert_eq!(plain.as_slice(), &[9; 32]);
    drop(client);
    drop(keyd);
    let stdout = keyd_cli(&moved, &["audit", "verify"]);
    assert!(stdout.contains("chain intact"), "{stdout}");
}

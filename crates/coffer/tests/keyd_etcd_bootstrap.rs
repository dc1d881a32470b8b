//! Bootstrapping and restoring keyd replicas on a real etcd (Debian's etcd-server, started on
//! loopback by the test) with real `coffer keyd` processes on the sim platform: `serve --init
//! --store etcd` initialises an empty etcd (root record, keyrings in etcd, none in the data
//! directory); replicas started with the same `--init --join` arguments join it; `--init`
//! without `--join` refuses an etcd that already holds a keyd; after every replica is lost,
//! `keyd recover --store etcd` rebuilds a replica from recovery shares and etcd's records,
//! and shares of another keyd are refused with nothing written.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use coffer_keyd_client::KeydClient;
use common::etcd::Etcd;
use common::keyd::{client_options, free_addr, keyd_cli, sim_signer, KeydProcess};
use common::run::output_within;
use common::{coffer, coffer_bin};
use sha2::{Digest, Sha256};

const KEYRING: &str = "cluster-a";

/// One etcd, the policy and config every replica shares, and operators' recovery keys.
struct Setup {
    dir: tempfile::TempDir,
    etcd: Etcd,
    policy: PathBuf,
    config: PathBuf,
    /// The test's own sim state: a caller with role kms-plugin:a.
    caller: PathBuf,
    /// `coffer-recovery-pk:…` of each of three operators, and their secret key files.
    public_keys: Vec<String>,
    secret_keys: Vec<PathBuf>,
}

impl Setup {
    fn new() -> Option<Setup> {
        let etcd = Etcd::start_or_skip()?;
        let dir = tempfile::tempdir().unwrap();
        let caller = dir.path().join("caller");
        // Every replica runs the same binary: keyd-peer names its sim measurement.
        let measurement = hex::encode(Sha256::digest(std::fs::read(coffer_bin()).unwrap()));
        let policy = dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            format!(
                "version: 1\nallow_simulation: true\nroles:\n  - name: kms-plugin:a\n    sim: {{ signer: [\"{}\"] }}\n  - name: keyd-peer\n    sim: {{ measurement: [\"{measurement}\"] }}\n",
                sim_signer(&caller)
            ),
        )
        .unwrap();
        let config = dir.path().join("keyd.yaml");
        std::fs::write(
            &config,
            format!("keyrings:\n  {KEYRING}:\n    wrap: [\"kms-plugin:a\"]\n    unwrap: [\"kms-plugin:a\"]\n"),
        )
        .unwrap();
        let (public_keys, secret_keys) = operators(dir.path(), "operator");
        Some(Setup {
            dir,
            etcd,
            policy,
            config,
            caller,
            public_keys,
            secret_keys,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `--store etcd` and this etcd.
    fn etcd_flags(&self) -> Vec<String> {
        vec![
            "--store".into(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            self.etcd.endpoint.clone(),
        ]
    }

    /// The arguments every replica of a StatefulSet gets: `--init` with 2-of-3 recovery
    /// shares into `shares`, `--store etcd`, and `extra`.
    fn init_flags(&self, shares: &Path, extra: &[&str]) -> Vec<String> {
        let mut flags = vec!["--init".to_string()];
        for pk in &self.public_keys {
            flags.extend(["--recovery-key".to_string(), pk.clone()]);
        }
        flags.extend([
            "--recovery-threshold".to_string(),
            "2".to_string(),
            "--recovery-shares-dir".to_string(),
            shares.to_str().unwrap().to_string(),
        ]);
        flags.extend(self.etcd_flags());
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    }

    fn serve(&self, data: &Path, flags: &[String]) -> KeydProcess {
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        KeydProcess::start(data, free_addr(), &self.policy, &self.config, &flags)
    }

    /// `keyd serve` expected to exit on its own: (success, stderr).
    fn serve_expecting_exit(&self, data: &Path, flags: &[String]) -> (bool, String) {
        let out = output_within(
            Command::new(coffer_bin())
                .args(["keyd", "serve", "--platform", "sim", "--listen"])
                .arg(free_addr().to_string())
                .arg("--data-dir")
                .arg(data)
                .arg("--policy")
                .arg(&self.policy)
                .arg("--config")
                .arg(&self.config)
                .args(flags),
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    async fn wrap(&self, keyd: &KeydProcess, secret: &[u8]) -> Vec<u8> {
        let mut client =
            KeydClient::connect(keyd.addr, client_options(&self.caller, &keyd.signer()))
                .await
                .unwrap();
        client.wrap(KEYRING, secret).await.unwrap().0
    }

    async fn unwrap(&self, keyd: &KeydProcess, ciphertext: &[u8]) -> Vec<u8> {
        let mut client =
            KeydClient::connect(keyd.addr, client_options(&self.caller, &keyd.signer()))
                .await
                .unwrap();
        client
            .unwrap(KEYRING, None, ciphertext)
            .await
            .unwrap()
            .to_vec()
    }

    /// `keyd recover --store etcd` into `data` with `shares` and `keys`: (success, stdout,
    /// stderr).
    fn recover(&self, data: &Path, shares: &[PathBuf], keys: &[PathBuf]) -> (bool, String, String) {
        let mut args: Vec<String> = ["keyd", "recover", "--platform", "sim", "--data-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.push(data.to_str().unwrap().to_string());
        for s in shares {
            args.extend(["--share".to_string(), s.to_str().unwrap().to_string()]);
        }
        for k in keys {
            args.extend([
                "--operator-key".to_string(),
                k.to_str().unwrap().to_string(),
            ]);
        }
        args.extend(self.etcd_flags());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = coffer(&args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// Three operator key pairs named `<name>-<i>.key` in `dir`: their public keys and secret
/// key files.
fn operators(dir: &Path, name: &str) -> (Vec<String>, Vec<PathBuf>) {
    let mut public_keys = Vec::new();
    let mut secret_keys = Vec::new();
    for i in 1..=3 {
        let out = dir.join(format!("{name}-{i}.key"));
        let got = coffer(&[
            "keyd",
            "recovery-key",
            "generate",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(got.status.success(), "{got:?}");
        public_keys.push(String::from_utf8_lossy(&got.stdout).trim().to_string());
        secret_keys.push(out);
    }
    (public_keys, secret_keys)
}

fn share_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn instance_id(data: &Path) -> String {
    let status = keyd_cli(data, &["status", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&status).unwrap();
    value["instance_id"].as_str().unwrap().to_string()
}

fn addr_arg(addr: SocketAddr) -> String {
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_on_an_empty_etcd_then_replicas_with_the_same_args_join_and_shares_restore_them() {
    let Some(setup) = Setup::new() else { return };
    let shares_dir = setup.path("shares-0");
    let first_data = setup.path("keyd-0");
    let mut first = setup.serve(&first_data, &setup.init_flags(&shares_dir, &[]));
    let instance = instance_id(&first_data);
    assert_eq!(share_files(&shares_dir).len(), 3, "2-of-3 shares written");
    assert!(
        !first_data.join("keyrings").exists(),
        "the configured keyring lives in etcd, not in the data directory"
    );
    let mut status = vec!["status"];
    let etcd_flags = setup.etcd_flags();
    status.extend(etcd_flags.iter().map(String::as_str));
    let listed = keyd_cli(&first_data, &status);
    assert!(
        listed.contains(KEYRING) && listed.contains("sealing key sk-"),
        "{listed}"
    );
    let ciphertext = setup.wrap(&first, b"wrapped by the first").await;

    // A second replica with the same arguments (its own shares directory would stay empty).
    let second_data = setup.path("keyd-1");
    let second_shares = setup.path("shares-1");
    let peer = addr_arg(first.addr);
    let mut second = setup.serve(
        &second_data,
        &setup.init_flags(&second_shares, &["--join", &peer, "--join-timeout", "20s"]),
    );
    assert_eq!(
        instance_id(&second_data),
        instance,
        "joined, not initialised"
    );
    assert!(
        share_files(&second_shares).is_empty(),
        "a joining replica makes no shares"
    );
    assert!(!second_data.join("keyrings").exists());
    assert_eq!(
        setup.unwrap(&second, &ciphertext).await,
        b"wrapped by the first"
    );

    // --init without --join against an initialised etcd: refused, nothing initialised.
    let third_data = setup.path("keyd-2");
    let (ok, stderr) =
        setup.serve_expecting_exit(&third_data, &setup.init_flags(&setup.path("shares-2"), &[]));
    assert!(!ok);
    assert!(
        stderr.contains("etcd prefix /coffer/keyd already holds a keyd's state")
            && stderr.contains("--join"),
        "{stderr}"
    );
    assert!(!third_data.join("keyd-root.json").exists());
    assert!(share_files(&setup.path("shares-2")).is_empty());

    // Every replica is lost with its data directory; etcd and the shares remain.
    assert_eq!(first.terminate(), Some(0));
    assert_eq!(second.terminate(), Some(0));
    std::fs::remove_dir_all(&first_data).unwrap();
    std::fs::remove_dir_all(&second_data).unwrap();

    // Shares of another keyd (same threshold, other operators): refused, nothing written.
    let other_data = setup.path("other");
    let (other_pks, other_sks) = operators(setup.dir.path(), "other-operator");
    let other_shares = setup.path("other-shares");
    let mut init = vec!["init", "--recovery-threshold", "2", "--recovery-shares-dir"];
    init.push(other_shares.to_str().unwrap());
    for pk in &other_pks {
        init.extend(["--recovery-key", pk.as_str()]);
    }
    keyd_cli(&other_data, &init);
    let restored_data = setup.path("restored");
    let (ok, _, stderr) = setup.recover(
        &restored_data,
        &share_files(&other_shares)[..2],
        &other_sks[..2],
    );
    assert!(!ok);
    assert!(
        stderr.contains(
            "the shares belong to another keyd or the etcd prefix /coffer/keyd is another keyd's"
        ),
        "{stderr}"
    );
    assert!(
        !restored_data.join("keyd-root.json").exists(),
        "nothing written"
    );

    // One share is not enough; two of three restore keyd into a fresh data directory.
    let shares = share_files(&shares_dir);
    let (ok, _, stderr) = setup.recover(&restored_data, &shares[..1], &setup.secret_keys);
    assert!(!ok, "{stderr}");
    assert!(!restored_data.join("keyd-root.json").exists());
    let (ok, stdout, stderr) = setup.recover(&restored_data, &shares[1..], &setup.secret_keys[1..]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!("recovered keyd {instance}")),
        "{stdout}"
    );
    assert_eq!(instance_id(&restored_data), instance);
    let status = keyd_cli(&restored_data, &["status"]);
    assert!(status.contains("2 of 3 operator shares"), "{status}");
    // Never replaced: a second run is refused.
    let (ok, _, _) = setup.recover(&restored_data, &shares[1..], &setup.secret_keys[1..]);
    assert!(!ok);

    let mut restored = setup.serve(&restored_data, &setup.etcd_flags());
    assert_eq!(
        setup.unwrap(&restored, &ciphertext).await,
        b"wrapped by the first"
    );
    assert!(!restored_data.join("keyrings").exists());
    assert_eq!(restored.terminate(), Some(0));
}

#[test]
fn init_and_join_exclude_each_other_with_the_data_directory_store() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nallow_simulation: true\nroles: []\n").unwrap();
    let config = dir.path().join("keyd.yaml");
    std::fs::write(&config, "keyrings: {}\n").unwrap();
    let data = dir.path().join("data");
    let out = output_within(
        Command::new(coffer_bin())
            .args(["keyd", "serve", "--platform", "sim", "--init", "--join"])
            .arg(free_addr().to_string())
            .arg("--listen")
            .arg(free_addr().to_string())
            .arg("--data-dir")
            .arg(&data)
            .arg("--policy")
            .arg(&policy)
            .arg("--config")
            .arg(&config),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--init and --join exclude each other with --store dir"),
        "{stderr}"
    );
    assert!(!data.join("keyd-root.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_finishes_a_root_made_before_its_record_and_refuses_another_keyds_etcd() {
    let Some(setup) = Setup::new() else { return };
    // A data directory initialised before etcd had the record (as after a crash between the
    // two): --init writes the record and creates the keyring in etcd.
    let data = setup.path("keyd-0");
    keyd_cli(&data, &["init"]);
    let mut keyd = setup.serve(
        &data,
        &[vec!["--init".to_string()], setup.etcd_flags()].concat(),
    );
    assert!(!data.join("keyrings").exists());
    let ciphertext = setup.wrap(&keyd, b"after the record").await;
    assert_eq!(keyd.terminate(), Some(0));
    let mut again = setup.serve(&data, &setup.etcd_flags());
    assert_eq!(setup.unwrap(&again, &ciphertext).await, b"after the record");
    assert_eq!(again.terminate(), Some(0));

    // Another keyd's data directory against this etcd: refused, nothing written there.
    let other = setup.path("other");
    keyd_cli(&other, &["init"]);
    let (ok, stderr) = setup.serve_expecting_exit(
        &other,
        &[vec!["--init".to_string()], setup.etcd_flags()].concat(),
    );
    assert!(!ok);
    assert!(stderr.contains("is refused as a whole"), "{stderr}");
    assert!(!other.join("keyrings").exists());
}

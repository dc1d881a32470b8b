//! keyd's state in a real etcd (Debian's etcd-server, started on loopback by the test):
//! `coffer keyd migrate` to etcd and back, what etcd holds, tampered and foreign records, and
//! the store's compare-and-swap, watch and outage behaviour.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use coffer_keyd_store::{EtcdOptions, EtcdStore, Expect, StateStore, StoreError, Swap, WatchEvent};
use common::etcd::Etcd;
use common::keyd::{create_keyd_data, keyd_cli};
use common::{coffer, uid};

const PREFIX: &str = "/coffer/keyd/";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn connect(rt: &tokio::runtime::Runtime, etcd: &Etcd) -> EtcdStore {
    let mut options = EtcdOptions::new(vec![etcd.endpoint.clone()]);
    options.timeout = Duration::from_secs(2);
    rt.block_on(EtcdStore::connect(&options)).unwrap()
}

/// `coffer keyd migrate <args> --platform sim --data-dir data`: (success, stdout, stderr).
fn migrate(data: &Path, args: &[&str]) -> (bool, String, String) {
    let mut full = vec!["keyd", "migrate"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--platform", "sim", "--data-dir", data.to_str().unwrap()]);
    let out = coffer(&full);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every keyring file of `data`, by path relative to it.
fn keyring_files(data: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    let Ok(keyrings) = std::fs::read_dir(data.join("keyrings")) else {
        return files;
    };
    for keyring in keyrings {
        let keyring = keyring.unwrap();
        for file in ["keystore", "sealing-keys.json"] {
            let path = keyring.path().join(file);
            if let Ok(bytes) = std::fs::read(&path) {
                let name = format!("keyrings/{}/{file}", keyring.file_name().to_string_lossy());
                files.insert(name, bytes);
            }
        }
    }
    files
}

fn etcd_values(rt: &tokio::runtime::Runtime, store: &EtcdStore) -> BTreeMap<String, Vec<u8>> {
    rt.block_on(store.list(PREFIX.as_bytes()))
        .unwrap()
        .entries
        .into_iter()
        .map(|e| (String::from_utf8(e.key).unwrap(), e.value))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn migrate_to_etcd_and_back_keeps_every_byte_and_etcd_holds_only_ciphertext() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_keyd_data(&data, &["alpha", "beta"]);
    keyd_cli(&data, &["rotate", "alpha"]);
    let before = keyring_files(&data);
    assert_eq!(before.len(), 4, "{:?}", before.keys());
    let root_file = std::fs::read(data.join("keyd-root.json")).unwrap();

    let (ok, out, err) = migrate(&data, &["--to-etcd", &etcd.endpoint]);
    assert!(ok, "{err}");
    assert!(
        out.contains("5 record(s) written, 0 already there"),
        "{out}"
    );

    let rt = runtime();
    let store = connect(&rt, &etcd);
    let values = etcd_values(&rt, &store);
    let expected: Vec<String> = before
        .keys()
        .map(|k| format!("{PREFIX}{k}"))
        .chain([format!("{PREFIX}keyd-root.json")])
        .collect();
    assert_eq!(
        values
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        expected.into_iter().collect()
    );
    // Nothing of the files (sealed KEKs and sealing keys, ids, the instance id, the sealed root)
    // appears in etcd: every value is ciphertext under the root.
    let status: serde_json::Value =
        serde_json::from_str(&keyd_cli(&data, &["status", "--json"])).unwrap();
    let mut needles: Vec<Vec<u8>> = vec![status["instance_id"].as_str().unwrap().into()];
    for ring in status["keyrings"].as_array().unwrap() {
        for field in ["primary_key_id", "primary_sealing_key_id"] {
            if let Some(id) = ring[field].as_str() {
                needles.push(id.into());
            }
        }
    }
    assert!(needles.len() >= 3, "{status}");
    for bytes in before.values().chain([&root_file]) {
        needles.extend(
            bytes
                .chunks(16)
                .filter(|c| c.len() == 16)
                .map(<[u8]>::to_vec),
        );
    }
    needles.push(b"coffer-0".to_vec());
    for (key, value) in &values {
        assert_eq!(value[0], 1, "{key}: format version byte");
        for needle in &needles {
            assert!(!contains(value, needle), "{key} holds plaintext {needle:?}");
        }
    }

    // Running it again is a no-op that says so.
    let (ok, out, err) = migrate(&data, &["--to-etcd", &etcd.endpoint]);
    assert!(ok, "{err}");
    assert!(
        out.contains("0 record(s) written, 5 already there"),
        "{out}"
    );
    assert_eq!(etcd_values(&rt, &store), values, "a re-run rewrote records");

    // A run that stopped halfway (the root record goes last) is finished by running it again.
    for name in ["keyd-root.json", "keyrings/beta/sealing-keys.json"] {
        let key = format!("{PREFIX}{name}");
        let entry = rt.block_on(store.get(key.as_bytes())).unwrap().unwrap();
        let swap = rt
            .block_on(store.delete(key.as_bytes(), entry.mod_revision))
            .unwrap();
        assert!(matches!(swap, Swap::Done { .. }), "{swap:?}");
    }
    let (ok, _, err) = migrate(&data, &["--from-etcd", &etcd.endpoint]);
    assert!(!ok && err.contains("did not finish"), "{err}");
    let (ok, out, err) = migrate(&data, &["--to-etcd", &etcd.endpoint]);
    assert!(ok, "{err}");
    assert!(
        out.contains("2 record(s) written, 3 already there"),
        "{out}"
    );

    // Back: the keyrings come out of etcd byte for byte, and keyd uses them.
    std::fs::remove_dir_all(data.join("keyrings")).unwrap();
    let (ok, out, err) = migrate(&data, &["--from-etcd", &etcd.endpoint]);
    assert!(ok, "{err}");
    assert!(out.contains("copied 4 record(s)"), "{out}");
    assert_eq!(keyring_files(&data), before);
    assert_eq!(
        std::fs::read(data.join("keyd-root.json")).unwrap(),
        root_file
    );
    // Copying back after a partial copy finishes it too.
    std::fs::remove_file(data.join("keyrings/alpha/keystore")).unwrap();
    let (ok, out, err) = migrate(&data, &["--from-etcd", &etcd.endpoint]);
    assert!(ok, "{err}");
    assert!(
        out.contains("copied 1 record(s)") && out.contains("3 already there"),
        "{out}"
    );
    assert_eq!(keyring_files(&data), before);
    let status_after: serde_json::Value =
        serde_json::from_str(&keyd_cli(&data, &["status", "--json"])).unwrap();
    assert_eq!(status_after["keyrings"], status["keyrings"]);
}

#[test]
fn tampered_or_moved_etcd_record_is_refused_naming_its_key_and_nothing_is_written() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_keyd_data(&data, &["alpha", "beta"]);
    let (ok, _, err) = migrate(&data, &["--to-etcd", &etcd.endpoint]);
    assert!(ok, "{err}");
    std::fs::remove_dir_all(data.join("keyrings")).unwrap();

    let rt = runtime();
    let store = connect(&rt, &etcd);
    let alpha = format!("{PREFIX}keyrings/alpha/keystore");
    let beta = format!("{PREFIX}keyrings/beta/keystore");
    let original = rt.block_on(store.get(alpha.as_bytes())).unwrap().unwrap();
    let mut tampered = original.value.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let swap = rt
        .block_on(store.put(
            alpha.as_bytes(),
            tampered,
            Expect::ModRevision(original.mod_revision),
        ))
        .unwrap();
    assert!(matches!(swap, Swap::Done { .. }), "{swap:?}");

    let (ok, _, err) = migrate(&data, &["--from-etcd", &etcd.endpoint]);
    assert!(!ok, "a tampered record was accepted");
    assert!(
        err.contains(&alpha) && err.contains("does not authenticate"),
        "{err}"
    );
    assert!(
        !data.join("keyrings").exists(),
        "something was written from a tampered store"
    );

    // alpha's genuine record copied to beta's key does not open as beta's.
    let current = rt.block_on(store.get(alpha.as_bytes())).unwrap().unwrap();
    rt.block_on(store.put(
        alpha.as_bytes(),
        original.value.clone(),
        Expect::ModRevision(current.mod_revision),
    ))
    .unwrap();
    let beta_entry = rt.block_on(store.get(beta.as_bytes())).unwrap().unwrap();
    rt.block_on(store.put(
        beta.as_bytes(),
        original.value,
        Expect::ModRevision(beta_entry.mod_revision),
    ))
    .unwrap();
    let (ok, _, err) = migrate(&data, &["--from-etcd", &etcd.endpoint]);
    assert!(!ok, "a moved record was accepted");
    assert!(
        err.contains(&beta) && err.contains("moved from another key"),
        "{err}"
    );
    assert!(!data.join("keyrings").exists());
}

#[test]
fn migrating_onto_existing_state_is_refused() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    create_keyd_data(&first, &["alpha"]);
    create_keyd_data(&second, &["alpha"]);
    let (ok, _, err) = migrate(&first, &["--to-etcd", &etcd.endpoint]);
    assert!(ok, "{err}");
    let rt = runtime();
    let store = connect(&rt, &etcd);
    let before = etcd_values(&rt, &store);

    // Another keyd (another root) onto the same prefix.
    let (ok, _, err) = migrate(&second, &["--to-etcd", &etcd.endpoint]);
    assert!(!ok, "another keyd's state was overwritten");
    assert!(
        err.contains("another keyd") && err.contains("--etcd-prefix"),
        "{err}"
    );
    assert_eq!(etcd_values(&rt, &store), before);
    // Its own prefix is fine.
    let prefix = format!("/coffer/{}", uid());
    let (ok, out, err) = migrate(
        &second,
        &["--to-etcd", &etcd.endpoint, "--etcd-prefix", &prefix],
    );
    assert!(ok, "{err}");
    assert!(out.contains("3 record(s) written"), "{out}");

    // The same keyd after a change: the records differ, and neither side is replaced.
    keyd_cli(&first, &["rotate", "alpha"]);
    let (ok, _, err) = migrate(&first, &["--to-etcd", &etcd.endpoint]);
    assert!(!ok, "a diverged record was overwritten");
    assert!(
        err.contains(&format!("{PREFIX}keyrings/alpha/keystore")) && err.contains("differs"),
        "{err}"
    );
    assert_eq!(etcd_values(&rt, &store), before);
    // And back: the data directory's diverged file is not replaced either.
    let (ok, _, err) = migrate(&first, &["--from-etcd", &etcd.endpoint]);
    assert!(!ok && err.contains("differs"), "{err}");

    // An empty prefix has nothing to copy back.
    let (ok, _, err) = migrate(
        &first,
        &[
            "--from-etcd",
            &etcd.endpoint,
            "--etcd-prefix",
            "/coffer/empty",
        ],
    );
    assert!(!ok && err.contains("no keyd-root.json record"), "{err}");
}

#[test]
fn etcd_store_compare_and_swap_watch_and_outage() {
    let Some(mut etcd) = Etcd::start_or_skip() else {
        return;
    };
    let rt = runtime();
    let store = connect(&rt, &etcd);
    let key = b"/coffer/test/cas";

    let Swap::Done { revision } = rt
        .block_on(store.put(key, b"one".to_vec(), Expect::Absent))
        .unwrap()
    else {
        panic!("first create failed");
    };
    // Create-only loses against an existing key and says what is there.
    match rt
        .block_on(store.put(key, b"two".to_vec(), Expect::Absent))
        .unwrap()
    {
        Swap::Conflict { current: Some(e) } => {
            assert_eq!(e.value, b"one");
            assert_eq!(e.mod_revision, revision);
        }
        other => panic!("{other:?}"),
    }
    let mut watcher = rt
        .block_on(store.watch(b"/coffer/test/", revision))
        .unwrap();
    // Two writers read the same revision: exactly one wins.
    let first = rt
        .block_on(store.put(key, b"a".to_vec(), Expect::ModRevision(revision)))
        .unwrap();
    let second = rt
        .block_on(store.put(key, b"b".to_vec(), Expect::ModRevision(revision)))
        .unwrap();
    assert!(matches!(first, Swap::Done { .. }), "{first:?}");
    assert!(matches!(second, Swap::Conflict { .. }), "{second:?}");
    assert_eq!(rt.block_on(store.get(key)).unwrap().unwrap().value, b"a");

    // The watch sees the winning write.
    let batch = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), watcher.next()).await })
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        matches!(&batch[..], [WatchEvent::Put(e)] if e.value == b"a"),
        "{batch:?}"
    );
    let current = rt.block_on(store.get(key)).unwrap().unwrap();
    assert!(matches!(
        rt.block_on(store.delete(key, current.mod_revision - 1))
            .unwrap(),
        Swap::Conflict { .. }
    ));
    assert!(matches!(
        rt.block_on(store.delete(key, current.mod_revision))
            .unwrap(),
        Swap::Done { .. }
    ));

    // etcd down: calls fail with an error that says so; back up: the same client works again.
    etcd.stop();
    let err = rt.block_on(store.get(key)).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("etcd is unavailable"), "{err}");
    etcd.spawn();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match rt.block_on(store.put(key, b"back".to_vec(), Expect::Absent)) {
            Ok(swap) => {
                assert!(matches!(swap, Swap::Done { .. }), "{swap:?}");
                break;
            }
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "etcd did not come back: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

#[test]
fn migrate_over_tls_with_a_client_certificate() {
    let Some(etcd) = Etcd::start_tls_or_skip() else {
        return;
    };
    let tls = etcd.tls.as_ref().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_keyd_data(&data, &["alpha"]);
    let ca = tls.ca.to_str().unwrap();

    // etcd requires a client certificate: without one nothing is written and the error says
    // where it could not get through.
    let (ok, _, err) = migrate(&data, &["--to-etcd", &etcd.endpoint, "--etcd-cacert", ca]);
    assert!(
        !ok,
        "etcd with --client-cert-auth accepted a client without a certificate"
    );
    assert!(err.contains(&etcd.endpoint), "{err}");
    // Plain HTTP to a TLS-only etcd fails too.
    let (ok, _, _) = migrate(&data, &["--to-etcd", &etcd.endpoint]);
    assert!(!ok);

    let client = [
        "--etcd-cacert",
        ca,
        "--etcd-cert",
        tls.client_cert.to_str().unwrap(),
        "--etcd-key",
        tls.client_key.to_str().unwrap(),
    ];
    let mut args = vec!["--to-etcd", &etcd.endpoint];
    args.extend_from_slice(&client);
    let (ok, out, err) = migrate(&data, &args);
    assert!(ok, "{err}");
    assert!(out.contains("3 record(s) written"), "{out}");

    let before = keyring_files(&data);
    std::fs::remove_dir_all(data.join("keyrings")).unwrap();
    let mut args = vec!["--from-etcd", &etcd.endpoint];
    args.extend_from_slice(&client);
    let (ok, out, err) = migrate(&data, &args);
    assert!(ok, "{err}");
    assert!(out.contains("copied 2 record(s)"), "{out}");
    assert_eq!(keyring_files(&data), before);
}

/// Turns on etcd's authentication with user `root` (etcd's superuser) and `password`.
fn enable_auth(rt: &tokio::runtime::Runtime, etcd: &Etcd, password: &str) {
    use coffer_keyd_store::pb;
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(etcd.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut auth = pb::auth_client::AuthClient::new(channel);
        auth.user_add(pb::AuthUserAddRequest {
            name: "root".into(),
            password: password.into(),
        })
        .await
        .unwrap();
        auth.user_grant_role(pb::AuthUserGrantRoleRequest {
            user: "root".into(),
            role: "root".into(),
        })
        .await
        .unwrap();
        auth.auth_enable(pb::AuthEnableRequest {}).await.unwrap();
    });
}

#[test]
fn migrate_with_etcd_authentication() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let rt = runtime();
    enable_auth(&rt, &etcd, "s3cret-pw");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_keyd_data(&data, &["alpha"]);
    let good = dir.path().join("pw");
    let bad = dir.path().join("bad-pw");
    std::fs::write(&good, "s3cret-pw\n").unwrap();
    std::fs::write(&bad, "wrong\n").unwrap();

    // Without credentials etcd refuses the reads; with a wrong password it says so.
    let (ok, _, err) = migrate(&data, &["--to-etcd", &etcd.endpoint]);
    assert!(!ok, "etcd with auth served an anonymous client");
    assert!(err.contains("etcd refused"), "{err}");
    let auth = |file: &Path| {
        vec![
            "--etcd-user".to_string(),
            "root".to_string(),
            "--etcd-password-file".to_string(),
            file.to_str().unwrap().to_string(),
        ]
    };
    let mut args = vec!["--to-etcd".to_string(), etcd.endpoint.clone()];
    args.extend(auth(&bad));
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = migrate(&data, &args_ref);
    assert!(!ok);
    assert!(
        err.contains("etcd refused authentication as \"root\"") && !err.contains("wrong"),
        "{err}"
    );

    let mut args = vec!["--to-etcd".to_string(), etcd.endpoint.clone()];
    args.extend(auth(&good));
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = migrate(&data, &args_ref);
    assert!(ok, "{err}");
    assert!(out.contains("3 record(s) written"), "{out}");
}

#[test]
fn an_expired_etcd_token_is_renewed() {
    let Some(etcd) = Etcd::start_with_or_skip(&["--auth-token-ttl", "1"]) else {
        return;
    };
    let rt = runtime();
    enable_auth(&rt, &etcd, "pw");
    let mut options = EtcdOptions::new(vec![etcd.endpoint.clone()]);
    options.user = Some("root".into());
    options.password = Some(zeroize::Zeroizing::new("pw".into()));
    let store = rt.block_on(EtcdStore::connect(&options)).unwrap();
    rt.block_on(store.put(b"/coffer/test/t", b"1".to_vec(), Expect::Absent))
        .unwrap();
    // Idle past the token's TTL: etcd forgets the token, the store authenticates again.
    std::thread::sleep(Duration::from_secs(3));
    let entry = rt.block_on(store.get(b"/coffer/test/t")).unwrap().unwrap();
    assert_eq!(entry.value, b"1");
}

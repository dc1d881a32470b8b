//! keyd replicas serving one state from a real etcd (Debian's etcd-server, started on loopback
//! by the test): real `coffer keyd serve --store etcd` processes over copies of one data
//! directory whose state was moved to etcd with `coffer keyd migrate --to-etcd`. Every
//! replica serves every change within seconds, concurrent rotations on two replicas lose
//! nothing, an etcd outage keeps reads and fails writes clearly, and a tampered record is
//! never served.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use coffer_keyd_client::pb;
use coffer_keyd_client::pb::key_service_client::KeyServiceClient;
use coffer_keyd_store::{Expect, StateStore, Swap};
use common::keyd::write_keyd_policy;
use common::keyd::{bundle, sim_signer};
use common::keyd_cluster::{unwrap, Cluster, KEYRING, PREFIX};
use common::load::{plugin_dir, Load};
use common::{try_status, Plugin};
use tonic::transport::Channel;
use tonic::Code;

/// Generous: a change is normally served within the watch's round trip.
const SEEN_WITHIN: Duration = Duration::from_secs(10);

async fn primary(c: &mut KeyServiceClient<Channel>) -> Result<String, tonic::Status> {
    c.status(pb::StatusRequest {
        keyring: KEYRING.into(),
    })
    .await
    .map(|r| r.into_inner().primary_key_id)
}

async fn rotate(c: &mut KeyServiceClient<Channel>) -> Result<String, tonic::Status> {
    c.rotate(pb::RotateRequest {
        keyring: KEYRING.into(),
    })
    .await
    .map(|r| r.into_inner().key_id)
}

async fn wrap(c: &mut KeyServiceClient<Channel>, plaintext: &[u8]) -> pb::WrapResponse {
    c.wrap(pb::WrapRequest {
        keyring: KEYRING.into(),
        plaintext: plaintext.to_vec(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// Polls replica `c`'s Status until its primary is `expected`; how long that took.
async fn until_primary(c: &mut KeyServiceClient<Channel>, expected: &str, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        if primary(c).await.ok().as_deref() == Some(expected) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < SEEN_WITHIN,
            "{what}: primary {expected} not served after {SEEN_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn list(c: &mut KeyServiceClient<Channel>) -> Vec<pb::KeyEntry> {
    c.list_keys(pb::ListKeysRequest {
        keyring: KEYRING.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_each_others_writes_and_concurrent_rotations_lose_nothing() {
    let Some(mut cluster) = Cluster::prepare(3) else {
        return;
    };
    for i in 0..3 {
        cluster.start(i);
    }
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(cluster.client(i).await);
    }
    // One state: what one replica wraps, every replica unwraps.
    let first = wrap(&mut clients[0], b"wrapped before any rotation").await;
    for c in clients.iter_mut() {
        assert_eq!(
            unwrap(c, &first).await.unwrap(),
            b"wrapped before any rotation"
        );
    }

    // A rotation on one replica is served by the others.
    let rotated = rotate(&mut clients[0]).await.unwrap();
    assert_eq!(primary(&mut clients[0]).await.unwrap(), rotated);
    for (i, c) in clients.iter_mut().enumerate().skip(1) {
        let took = until_primary(c, &rotated, "RPC rotation").await;
        eprintln!("replica {i} served replica 0's rotation after {took:?}");
    }
    for c in clients.iter_mut() {
        assert_eq!(
            unwrap(c, &first).await.unwrap(),
            b"wrapped before any rotation"
        );
    }

    // Rotations on two replicas at once, by RPC and by the CLI: every key kept, ids distinct.
    const ROUNDS: usize = 8;
    let mut rpc_client = clients[1].clone();
    let by_rpc = tokio::spawn(async move {
        let mut ids = Vec::new();
        for _ in 0..ROUNDS {
            ids.push(rotate(&mut rpc_client).await.unwrap());
        }
        ids
    });
    let mut by_cli = Vec::new();
    for _ in 0..ROUNDS {
        let out = tokio::task::block_in_place(|| cluster.cli_ok(2, &["rotate", KEYRING]));
        assert!(out.contains("in etcd: new primary KEK"), "{out}");
        let id = out
            .split_whitespace()
            .find(|w| w.starts_with("coffer-"))
            .unwrap()
            .to_string();
        by_cli.push(id);
    }
    let by_rpc = by_rpc.await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&tokio::task::block_in_place(|| {
        cluster.cli_ok(0, &["status", "--json"])
    }))
    .unwrap();
    let ring = &status["keyrings"][0];
    assert_eq!(ring["name"], KEYRING, "{status}");
    let total = 2 + 2 * ROUNDS;
    assert_eq!(ring["keys"], total, "{status}");
    assert_eq!(ring["generation"], total, "{status}");
    let last = ring["primary_key_id"].as_str().unwrap().to_string();
    for (i, c) in clients.iter_mut().enumerate() {
        until_primary(c, &last, "concurrent rotations").await;
        let keys = list(c).await;
        let ids: HashSet<&str> = keys.iter().map(|k| k.key_id.as_str()).collect();
        assert_eq!(
            ids.len(),
            total,
            "replica {i}: duplicate or lost ids {keys:?}"
        );
        for id in by_rpc.iter().chain(&by_cli).chain([&rotated]) {
            assert!(ids.contains(id.as_str()), "replica {i} lost {id}");
        }
        assert_eq!(
            unwrap(c, &first).await.unwrap(),
            b"wrapped before any rotation"
        );
    }

    // Sealing keys rotated and retired through etcd: every replica's key bundle follows.
    let signer = sim_signer(&cluster.data[0]);
    let old = bundle(&mut clients[0], KEYRING, &signer).await;
    let old_id = old.primary().unwrap().id().to_string();
    let out = cluster.cli_ok(1, &["sealing-key", "rotate", "--keyring", KEYRING]);
    let new_id = out
        .split_whitespace()
        .find(|w| w.starts_with("sk-"))
        .unwrap()
        .to_string();
    for c in clients.iter_mut() {
        let started = Instant::now();
        while bundle(c, KEYRING, &signer).await.primary().unwrap().id() != new_id {
            assert!(
                started.elapsed() < SEEN_WITHIN,
                "new sealing key not served"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    cluster.cli_ok(
        2,
        &[
            "sealing-key",
            "retire",
            "--keyring",
            KEYRING,
            "--key-id",
            &old_id,
            "--confirm",
        ],
    );
    let listed = cluster.cli_ok(0, &["sealing-key", "list", "--keyring", KEYRING]);
    assert!(
        listed.contains(&format!("{old_id}  created")) && listed.contains("retired"),
        "{listed}"
    );
    for c in clients.iter_mut() {
        let started = Instant::now();
        while bundle(c, KEYRING, &signer).await.key(&old_id).is_some() {
            assert!(
                started.elapsed() < SEEN_WITHIN,
                "retired sealing key still served"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // A keyring created through etcd is there for every replica's data directory.
    let out = cluster.cli_ok(0, &["keyring", "create", "tenant-b"]);
    assert!(out.contains("created keyring tenant-b"), "{out}");
    let (ok, _, err) = cluster.cli(1, &["keyring", "create", "tenant-b"]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let status = cluster.cli_ok(2, &["status"]);
    assert!(
        status.contains("tenant-b") && status.contains("sealing key sk-"),
        "{status}"
    );
    for i in 0..3 {
        cluster.assert_running(i);
        let log = cluster.process(i).log_text();
        assert!(!log.contains("panicked"), "{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_outage_keeps_reads_fails_writes_clearly_and_heals_without_a_restart() {
    let Some(mut cluster) = Cluster::prepare(2) else {
        return;
    };
    cluster.start(0);
    cluster.start(1);
    let (mut a, mut b) = (cluster.client(0).await, cluster.client(1).await);
    let wrapped = wrap(&mut a, b"kept through the outage").await;
    let before = primary(&mut a).await.unwrap();

    cluster.etcd.stop();
    for c in [&mut a, &mut b] {
        assert_eq!(
            unwrap(c, &wrapped).await.unwrap(),
            b"kept through the outage"
        );
        assert_eq!(primary(c).await.unwrap(), before);
    }
    let err = rotate(&mut a).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains(&cluster.etcd.endpoint)
            && err
                .message()
                .contains("reads are still served; retry when etcd is back"),
        "{err:?}"
    );
    let (ok, _, stderr) = tokio::task::block_in_place(|| cluster.cli(1, &["rotate", KEYRING]));
    assert!(!ok, "rotated with etcd down");
    assert!(
        stderr.contains(&cluster.etcd.endpoint)
            && stderr.contains("etcd is unavailable")
            && stderr.contains("reads are still served; retry when etcd is back"),
        "{stderr}"
    );
    assert_eq!(primary(&mut b).await.unwrap(), before);

    // etcd back: writes work again and are served everywhere, by the same processes.
    cluster.etcd.spawn();
    let started = Instant::now();
    let rotated = loop {
        match rotate(&mut a).await {
            Ok(id) => break id,
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(
                    started.elapsed() < SEEN_WITHIN,
                    "rotate never worked again: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let took = until_primary(&mut b, &rotated, "after etcd came back").await;
    eprintln!("after etcd restarted: rotation served by the other replica after {took:?}");
    // And the other direction, through the CLI.
    let out = tokio::task::block_in_place(|| cluster.cli_ok(1, &["rotate", KEYRING]));
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("coffer-"))
        .unwrap()
        .to_string();
    until_primary(&mut a, &id, "CLI rotation after etcd came back").await;
    until_primary(&mut b, &id, "CLI rotation after etcd came back").await;
    assert_eq!(
        unwrap(&mut b, &wrapped).await.unwrap(),
        b"kept through the outage"
    );
    cluster.assert_running(0);
    cluster.assert_running(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_record_is_refused_and_nothing_is_served_from_it() {
    let Some(mut cluster) = Cluster::prepare(2) else {
        return;
    };
    cluster.start(0);
    let mut a = cluster.client(0).await;
    let wrapped = wrap(&mut a, b"before the tampering").await;
    let before = primary(&mut a).await.unwrap();

    // Someone with write access to etcd replaces the keystore record.
    let store = cluster.etcd_store().await;
    let key = format!("{PREFIX}/keyrings/{KEYRING}/keystore");
    let current = store.get(key.as_bytes()).await.unwrap().unwrap();
    let mut forged = current.value.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let swap = store
        .put(
            key.as_bytes(),
            forged,
            Expect::ModRevision(current.mod_revision),
        )
        .await
        .unwrap();
    assert!(matches!(swap, Swap::Done { .. }), "{swap:?}");

    // The running replica keeps its keys and says why.
    let started = Instant::now();
    while !cluster.process(0).log_text().contains("is refused") {
        assert!(
            started.elapsed() < SEEN_WITHIN,
            "{}",
            cluster.process(0).log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(primary(&mut a).await.unwrap(), before);
    assert_eq!(
        unwrap(&mut a, &wrapped).await.unwrap(),
        b"before the tampering"
    );
    let log = cluster.process(0).log_text();
    assert!(
        log.contains(&key) && log.contains("does not authenticate"),
        "{log}"
    );
    // Its writes refuse the record too, rather than build on it.
    let err = rotate(&mut a).await.unwrap_err();
    assert!(err.message().contains(&key), "{err:?}");

    // A replica starting now refuses the whole prefix, naming the record.
    let config = cluster.config.clone();
    let err = tokio::task::block_in_place(|| cluster.refused_start(1, &config, &[]));
    assert!(
        err.contains(&key)
            && err.contains("does not authenticate")
            && err.contains("refused as a whole"),
        "{err}"
    );

    // A prefix nothing was migrated to, and a keyring missing from etcd, say what to run.
    let err = tokio::task::block_in_place(|| {
        cluster.refused_start(1, &config, &["--etcd-prefix", "/elsewhere"])
    });
    assert!(
        err.contains("coffer keyd migrate --to-etcd") && err.contains("/elsewhere"),
        "{err}"
    );
    // The record restored from a backup: the prefix opens again.
    let forged = store.get(key.as_bytes()).await.unwrap().unwrap();
    let swap = store
        .put(
            key.as_bytes(),
            current.value,
            Expect::ModRevision(forged.mod_revision),
        )
        .await
        .unwrap();
    assert!(matches!(swap, Swap::Done { .. }), "{swap:?}");
    let more = cluster.dir.path().join("more.yaml");
    std::fs::write(
        &more,
        format!(
            "keyrings:\n  {KEYRING}:\n    status: [admin]\n  absent-one:\n    status: [admin]\n"
        ),
    )
    .unwrap();
    let err =
        tokio::task::block_in_place(|| cluster.refused_start(1, &more, &["--etcd-prefix", PREFIX]));
    assert!(
        err.contains("absent-one") && err.contains("keyring create absent-one --store etcd"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_decrypt_load_fails_no_call_beyond_those_in_flight() {
    /// Concurrent callers: at most this many calls are in flight at the kill.
    const WORKERS: usize = 4;
    let (plugin_dir, plugin_state) = plugin_dir();
    let Some(mut cluster) = Cluster::prepare_for(3, Some(&plugin_state)) else {
        return;
    };
    for i in 0..3 {
        cluster.start(i);
    }
    let keyd_policy = cluster.dir.path().join("keyd-policy.yaml");
    write_keyd_policy(&keyd_policy, &sim_signer(&cluster.data[0]));
    let addrs: Vec<String> = cluster.addrs.iter().map(ToString::to_string).collect();
    let plugin = Plugin::spawn_service_in(
        plugin_dir,
        &[
            "--keyd",
            &addrs.join(","),
            "--keyd-keyring",
            KEYRING,
            "--keyd-policy",
            keyd_policy.to_str().unwrap(),
        ],
    );
    plugin.wait_ready().await;
    let client = plugin.v2().await;

    let load = Load::start(&client, WORKERS);
    load.more(100).await;
    cluster.process(0).kill();
    load.more(300).await;

    // A rotation on a surviving replica reaches the plugin through the other one too.
    let mut admin = cluster.client(1).await;
    let rotated = rotate(&mut admin).await.unwrap();
    let mut status_client = client.clone();
    let started = Instant::now();
    while try_status(&mut status_client).await.unwrap().key_id != rotated {
        assert!(
            started.elapsed() < SEEN_WITHIN,
            "the plugin never reported {rotated}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.more(100).await;
    load.finish("kill -9 of one of 3 etcd-backed replicas under load")
        .await;
    let log = plugin.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

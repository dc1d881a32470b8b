//! keyd's audit log as an operator runs it: size-bounded segments with retention, verified
//! across segments by `coffer keyd audit verify`, and aggregated records for high-rate unwraps.

mod common;

use std::path::{Path, PathBuf};

use std::sync::Arc;

use coffer_keyd_client::{ClientIdentity, KeydClient, KeydPool, PoolOptions};
use common::keyd::{
    audit_verify, client_options, create_keyd_data, free_addr, sim_signer, KeydProcess,
};

/// Writes a policy granting `kms-plugin:a` to the sim platform in `a` and `kms-plugin:b` to
/// the one in `b`, and a configuration letting only `kms-plugin:a` use `cluster-a`.
fn policy_and_config(dir: &Path, a: &Path, b: &Path) -> (PathBuf, PathBuf) {
    let policy = dir.join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nallow_simulation: true\nroles:\n  - name: kms-plugin:a\n    sim: {{ signer: [\"{}\"] }}\n  - name: kms-plugin:b\n    sim: {{ signer: [\"{}\"] }}\n",
            sim_signer(a),
            sim_signer(b)
        ),
    )
    .unwrap();
    let config = dir.join("keyd.yaml");
    std::fs::write(
        &config,
        "keyrings:\n  cluster-a:\n    wrap: [\"kms-plugin:a\"]\n    unwrap: [\"kms-plugin:a\"]\n",
    )
    .unwrap();
    (policy, config)
}

/// The closed segments next to `data/audit.log`, oldest first.
fn closed_segments(data: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.strip_prefix("audit.log.")
                .is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    found.sort();
    found
}

/// Every record of the log: closed segments, then the active file.
fn records(data: &Path) -> Vec<serde_json::Value> {
    let mut files = closed_segments(data);
    files.push(data.join("audit.log"));
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_segments_rotate_prune_and_verify_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["cluster-a"]);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (policy, config) = policy_and_config(dir.path(), &a, &b);
    let mut keyd = KeydProcess::start(
        &data,
        free_addr(),
        &policy,
        &config,
        &[
            "--audit-segment-bytes",
            "65536",
            "--audit-retention-segments",
            "2",
            "--rate-limit",
            "0",
        ],
    );
    let mut client = KeydClient::connect(keyd.addr, client_options(&a, &keyd.signer()))
        .await
        .unwrap();
    let (ciphertext, key_id) = client.wrap("cluster-a", &[0x42; 32]).await.unwrap();
    for _ in 0..800 {
        client
            .unwrap("cluster-a", Some(&key_id), &ciphertext)
            .await
            .unwrap();
    }
    drop(client);
    assert_eq!(keyd.terminate(), Some(0), "{}", keyd.log_text());

    // Bounded segments; the oldest were removed by retention.
    let closed = closed_segments(&data);
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(!data.join("audit.log.000001").exists());
    for file in closed.iter().chain([&data.join("audit.log")]) {
        let len = std::fs::metadata(file).unwrap().len();
        assert!(len <= 65536, "{} is {len} bytes", file.display());
    }
    let all = records(&data);
    let unwraps: Vec<_> = all
        .iter()
        .filter(|r| r["event"] == "unwrap" && r["result"] == "ok")
        .map(|r| serde_json::to_string(r).unwrap().len() + 1)
        .collect();
    eprintln!(
        "bytes per unwrap record: {} (over {} records)",
        unwraps.iter().sum::<usize>() / unwraps.len(),
        unwraps.len()
    );
    assert!(all
        .iter()
        .any(|r| r["event"] == "audit.prune" && r["result"] == "ok"));

    // The chain verifies from the first kept segment, and the pruning is reported.
    let (ok, stdout, stderr) = audit_verify(&data);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("in 3 segment(s)"), "{stdout}");
    assert!(stdout.contains("removed by retention"), "{stdout}");

    // Two records swapped inside a closed segment: a reordering, in that file.
    let newest = &closed[1];
    let mut lines: Vec<String> = std::fs::read_to_string(newest)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    lines.swap(10, 11);
    std::fs::write(newest, lines.join("\n") + "\n").unwrap();
    let (ok, _, stderr) = audit_verify(&data);
    assert!(!ok);
    assert!(
        stderr.contains(&newest.display().to_string())
            && stderr.contains("line 11 holds record seq")
            && stderr.contains("records were reordered"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregated_unwraps_become_one_counted_record_and_refusals_stay_single() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["cluster-a"]);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (policy, config) = policy_and_config(dir.path(), &a, &b);
    let mut keyd = KeydProcess::start(
        &data,
        free_addr(),
        &policy,
        &config,
        // Longer than the test: the counts are written by the shutdown flush.
        &["--audit-aggregate-interval", "1h", "--rate-limit", "0"],
    );
    let signer = keyd.signer();
    let mut client = KeydClient::connect(keyd.addr, client_options(&a, &signer))
        .await
        .unwrap();
    let (ciphertext, key_id) = client.wrap("cluster-a", &[0x42; 32]).await.unwrap();
    let n = 50;
    for _ in 0..n {
        client
            .unwrap("cluster-a", Some(&key_id), &ciphertext)
            .await
            .unwrap();
    }
    // A failed unwrap (tampered ciphertext) and a refused caller: one record each, at once.
    let mut bad = ciphertext.clone();
    *bad.last_mut().unwrap() ^= 1;
    // A batch (another connection, so another caller address): its good items are counted,
    // its bad item is recorded on its own.
    let pool = KeydPool::new(
        keyd.addr.to_string().parse().unwrap(),
        Arc::new(ClientIdentity::new(client_options(&a, &signer)).unwrap()),
        PoolOptions {
            connections: 1,
            ..PoolOptions::default()
        },
    )
    .unwrap();
    let mut items = vec![(key_id.clone(), ciphertext.clone()); 10];
    items.push((key_id.clone(), bad.clone()));
    let results = pool.unwrap_batch("cluster-a", items).await.unwrap();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 10);
    drop(pool);
    client
        .unwrap("cluster-a", Some(&key_id), &bad)
        .await
        .unwrap_err();
    let mut stranger = KeydClient::connect(keyd.addr, client_options(&b, &signer))
        .await
        .unwrap();
    stranger
        .unwrap("cluster-a", Some(&key_id), &ciphertext)
        .await
        .unwrap_err();
    let before_shutdown = records(&data);
    assert!(
        before_shutdown
            .iter()
            .any(|r| r["event"] == "unwrap" && r["result"] == "denied"),
        "{before_shutdown:#?}"
    );
    assert!(
        before_shutdown
            .iter()
            .any(|r| r["event"] == "unwrap" && r["result"] == "error"),
        "{before_shutdown:#?}"
    );
    assert!(!before_shutdown
        .iter()
        .any(|r| r["event"] == "unwrap" && r["result"] == "ok"));
    drop((client, stranger));
    assert_eq!(keyd.terminate(), Some(0), "{}", keyd.log_text());

    let all = records(&data);
    let ok: Vec<_> = all
        .iter()
        .filter(|r| r["event"] == "unwrap" && r["result"] == "ok")
        .collect();
    // One record per caller (the client's and the batch pool's connections) and key.
    assert_eq!(ok.len(), 2, "{all:#?}");
    let mut counts: Vec<u64> = ok.iter().map(|r| r["count"].as_u64().unwrap()).collect();
    counts.sort_unstable();
    assert_eq!(counts, [10, n], "{all:#?}");
    for r in &ok {
        assert_eq!(r["caller"]["role"], "kms-plugin:a");
        assert_eq!(r["keyring"], "cluster-a");
        assert_eq!(r["key_id"], key_id.as_str());
    }
    let single = |result: &str| {
        all.iter()
            .filter(|r| r["event"] == "unwrap" && r["result"] == result)
            .inspect(|r| assert!(r.get("count").is_none(), "{r:#}"))
            .count()
    };
    assert_eq!(single("denied"), 1, "{all:#?}");
    assert_eq!(single("error"), 2, "{all:#?}");
    // Wrap is not aggregated.
    assert_eq!(
        all.iter()
            .filter(|r| r["event"] == "wrap" && r.get("count").is_none())
            .count(),
        1
    );
    let (ok, stdout, stderr) = audit_verify(&data);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("chain intact"), "{stdout}");
}

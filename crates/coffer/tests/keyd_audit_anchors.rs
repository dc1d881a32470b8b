//! Audit anchors across keyd replicas, with a real etcd (started on loopback) and real
//! `coffer keyd serve --store etcd` processes serving copies of one data directory: each
//! replica anchors its chain head in etcd, and `coffer keyd audit verify --etcd-endpoints
//! --replica NAME=LOG` detects a replica log whose tail was deleted (head file too) or that
//! was replaced by another valid chain, while shipped-away old segments still verify. A
//! replica restarted on a truncated log refuses to move its anchor back.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_keyd_client::KeydClient;
use coffer_keyd_store::{EtcdOptions, EtcdStore, Expect, StateStore, Swap};
use common::coffer;
use common::etcd::Etcd;
use common::keyd::{client_options, free_addr, replica_data_dirs, sim_role_policy, KeydProcess};

const KEYRING: &str = "cluster-a";

/// A data directory with `cluster-a`, `count` copies of it, its state migrated to `etcd`
/// once, and a policy and configuration granting the sim platform `caller` wrap and unwrap.
struct Setup {
    dir: tempfile::TempDir,
    data: Vec<PathBuf>,
    caller: PathBuf,
    policy: PathBuf,
    config: PathBuf,
}

impl Setup {
    fn new(etcd: &Etcd, count: usize) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let data = replica_data_dirs(dir.path(), &[KEYRING], count);
        let first = data[0].clone();
        let out = coffer(&[
            "keyd",
            "migrate",
            "--to-etcd",
            &etcd.endpoint,
            "--platform",
            "sim",
            "--data-dir",
            first.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{out:?}");
        let caller = dir.path().join("caller");
        let policy = sim_role_policy(dir.path(), "kms-plugin:a", &caller);
        let config = dir.path().join("keyd.yaml");
        std::fs::write(
            &config,
            format!("keyrings:\n  {KEYRING}:\n    wrap: [\"kms-plugin:a\"]\n    unwrap: [\"kms-plugin:a\"]\n"),
        )
        .unwrap();
        Setup {
            dir,
            data,
            caller,
            policy,
            config,
        }
    }

    fn log(&self, i: usize) -> PathBuf {
        self.data[i].join("audit.log")
    }

    /// Starts replica `i` as `keyd-<i>` on `--store etcd`, anchoring every second.
    fn start(&self, i: usize, etcd: &Etcd, extra: &[&str]) -> KeydProcess {
        let id = format!("keyd-{i}");
        let mut args = vec![
            "--store",
            "etcd",
            "--etcd-endpoints",
            &etcd.endpoint,
            "--etcd-timeout",
            "2s",
            "--replica-id",
            &id,
            "--audit-anchor-interval",
            "1s",
            "--rate-limit",
            "0",
        ];
        args.extend_from_slice(extra);
        KeydProcess::start(
            &self.data[i],
            free_addr(),
            &self.policy,
            &self.config,
            &args,
        )
    }

    /// `coffer keyd audit verify` of replicas `(i, log)` against the anchors in `etcd`, plus
    /// `extra`: (success, stdout, stderr).
    fn verify(
        &self,
        etcd: &Etcd,
        logs: &[(usize, &Path)],
        extra: &[&str],
    ) -> (bool, String, String) {
        let mut args: Vec<String> = [
            "keyd",
            "audit",
            "verify",
            "--platform",
            "sim",
            "--data-dir",
            self.data[0].to_str().unwrap(),
            "--etcd-endpoints",
            &etcd.endpoint,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (i, log) in logs {
            args.push("--replica".into());
            args.push(format!("keyd-{i}={}", log.display()));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = coffer(&args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Verifies until every replica in `logs` holds an anchor with no record after it (its
    /// latest records are anchored); panics after 30 s.
    fn wait_anchored(&self, etcd: &Etcd, logs: &[(usize, &Path)]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ok, out, err) = self.verify(etcd, logs, &[]);
            let all = logs.iter().all(|(i, _)| {
                out.lines().any(|l| {
                    l.starts_with(&format!("replica keyd-{i}:"))
                        && l.contains("holds its anchor")
                        && l.ends_with(" 0 record(s) after it")
                })
            });
            if ok && all {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "anchors did not catch up:\n{out}\n{err}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// `n` wrap calls to `keyd` as the setup's caller.
async fn wraps(setup: &Setup, keyd: &KeydProcess, n: usize) {
    let mut client = KeydClient::connect(keyd.addr, client_options(&setup.caller, &keyd.signer()))
        .await
        .unwrap();
    for _ in 0..n {
        client.wrap(KEYRING, &[7; 32]).await.unwrap();
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| format!("{l}\n"))
        .collect()
}

fn head(log: &Path) -> PathBuf {
    PathBuf::from(format!("{}.head", log.display()))
}

async fn etcd_client(etcd: &Etcd) -> EtcdStore {
    let mut options = EtcdOptions::new(vec![etcd.endpoint.clone()]);
    options.timeout = Duration::from_secs(2);
    EtcdStore::connect(&options).await.unwrap()
}

/// The etcd revision of replica `id`'s anchor record.
async fn anchor_revision(store: &EtcdStore, id: &str) -> i64 {
    let key = format!("/coffer/keyd/audit-anchors/{id}");
    store
        .get(key.as_bytes())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no anchor for {id}"))
        .mod_revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_anchor_their_logs_and_verify_detects_a_deleted_or_replaced_tail() {
    let Some(etcd) = Etcd::start_or_skip() else {
        return;
    };
    let setup = Setup::new(&etcd, 2);
    let mut keyd0 = setup.start(0, &etcd, &[]);
    let mut keyd1 = setup.start(1, &etcd, &[]);
    // More records on keyd-1 than on keyd-0: its log, put in keyd-0's place, reaches past
    // keyd-0's anchor.
    wraps(&setup, &keyd0, 3).await;
    wraps(&setup, &keyd1, 12).await;
    let (log0, log1) = (setup.log(0), setup.log(1));
    let both: [(usize, &Path); 2] = [(0, &log0), (1, &log1)];
    let out = setup.wait_anchored(&etcd, &both);
    assert!(
        out.contains("verified 2 audit log(s) against 2 anchor(s) in etcd"),
        "{out}"
    );
    let store = etcd_client(&etcd).await;
    // etcd holds the anchors only as ciphertext: no replica name, seq or hash in the clear.
    let anchors = store
        .list(b"/coffer/keyd/audit-anchors/")
        .await
        .unwrap()
        .entries;
    assert_eq!(anchors.len(), 2, "{anchors:?}");
    for entry in &anchors {
        for clear in [&b"keyd-"[..], b"\"seq\"", b"\"hash\""] {
            assert!(
                !entry.value.windows(clear.len()).any(|w| w == clear),
                "{entry:?}"
            );
        }
    }

    // A stopped replica anchors its last records on the way out.
    assert_eq!(keyd1.terminate(), Some(0), "{}", keyd1.log_text());
    assert_eq!(keyd0.terminate(), Some(0), "{}", keyd0.log_text());
    let (ok, out, err) = setup.verify(&etcd, &both, &["--require-all-replicas"]);
    assert!(ok, "{out}\n{err}");
    let snapshot0 = (lines(&log0), std::fs::read(head(&log0)).unwrap());
    let snapshot1 = lines(&log1);
    let snapshot1_head = std::fs::read(head(&log1)).unwrap();

    // keyd-1's tail cut off, head file removed: its chain alone is valid, its anchor is not.
    std::fs::write(&log1, snapshot1[..4].concat()).unwrap();
    std::fs::remove_file(head(&log1)).unwrap();
    let (ok, out, err) = setup.verify(&etcd, &both, &[]);
    assert!(!ok, "{out}\n{err}");
    assert!(
        err.contains("replica keyd-1: ")
            && err.contains("FAILED: tail deleted: the log ends at seq 4"),
        "{err}"
    );
    assert!(
        out.contains("replica keyd-0: ") && out.contains("holds its anchor"),
        "{out}"
    );
    assert!(!err.contains("replica keyd-0:"), "{err}");

    // Restarted on the truncated log, keyd-1 serves but keeps its anchor where it was, even
    // once its new records go past the anchored seq (they are another chain from seq 5).
    let revision = anchor_revision(&store, "keyd-1").await;
    let mut keyd1 = setup.start(1, &etcd, &[]);
    wait_for_log(&keyd1, "its tail was deleted");
    assert!(
        keyd1
            .log_text()
            .contains("The anchor is kept, not moved back"),
        "{}",
        keyd1.log_text()
    );
    wraps(&setup, &keyd1, snapshot1.len() + 2).await;
    wait_for_log(&keyd1, "has another hash");
    assert_eq!(anchor_revision(&store, "keyd-1").await, revision);
    assert_eq!(keyd1.terminate(), Some(0), "{}", keyd1.log_text());
    let (ok, _, err) = setup.verify(&etcd, &both, &[]);
    assert!(
        !ok && err.contains("replica keyd-1: ") && err.contains("FAILED: rewritten"),
        "{err}"
    );

    // keyd-0's log replaced by keyd-1's earlier log: a valid chain under the same key, with
    // another record at keyd-0's anchored seq.
    std::fs::write(&log0, snapshot1.concat()).unwrap();
    std::fs::write(head(&log0), &snapshot1_head).unwrap();
    let (ok, _, err) = setup.verify(&etcd, &[(0, &log0)], &[]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("replica keyd-0: ") && err.contains("FAILED: rewritten: record seq"),
        "{err}"
    );

    // An edited byte is a broken chain, whatever the anchor says.
    let mut edited = snapshot1.clone();
    let at = edited.iter().position(|l| l.contains("\"wrap\"")).unwrap();
    edited[at] = edited[at].replacen("\"wrap\"", "\"wrao\"", 1);
    std::fs::write(&log0, edited.concat()).unwrap();
    let (ok, _, err) = setup.verify(&etcd, &[(0, &log0)], &[]);
    assert!(
        !ok && err.contains("replica keyd-0: ") && err.contains("was edited"),
        "{err}"
    );

    // An anchor without its log is reported, and fails with --require-all-replicas.
    std::fs::write(&log0, snapshot0.0.concat()).unwrap();
    std::fs::write(head(&log0), &snapshot0.1).unwrap();
    let (ok, out, err) = setup.verify(&etcd, &[(0, &log0)], &[]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("replica keyd-1: anchored at seq") && out.contains("its log was not given"),
        "{out}"
    );
    let (ok, _, err) = setup.verify(&etcd, &[(0, &log0)], &["--require-all-replicas"]);
    assert!(!ok && err.contains("its log was not given"), "{err}");
}

fn wait_for_log(keyd: &KeydProcess, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !keyd.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "keyd never logged {needle:?}:\n{}",
            keyd.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_segments_still_verify_and_a_tampered_anchor_is_refused() {
    let Some(mut etcd) = Etcd::start_or_skip() else {
        return;
    };
    let setup = Setup::new(&etcd, 1);
    let mut keyd = setup.start(0, &etcd, &["--audit-segment-bytes", "65536"]);
    wraps(&setup, &keyd, 700).await;
    let log = setup.log(0);
    setup.wait_anchored(&etcd, &[(0, &log)]);

    // etcd down: keyd keeps serving, anchoring waits and catches up when etcd is back.
    etcd.stop();
    wraps(&setup, &keyd, 3).await;
    wait_for_log(&keyd, "could not anchor the audit chain head");
    etcd.spawn();
    setup.wait_anchored(&etcd, &[(0, &log)]);
    assert_eq!(keyd.terminate(), Some(0), "{}", keyd.log_text());

    // Anchors live only in etcd: migrating again, either way, leaves them alone.
    let data = setup.data[0].to_str().unwrap();
    for direction in ["--to-etcd", "--from-etcd"] {
        let out = coffer(&[
            "keyd",
            "migrate",
            direction,
            &etcd.endpoint,
            "--platform",
            "sim",
            "--data-dir",
            data,
        ]);
        assert!(out.status.success(), "{direction}: {out:?}");
    }

    // The operator ships the oldest closed segments away (copy, then remove), keeping the
    // newest closed one: the chain is checked from it and the anchor still holds.
    let closed: Vec<PathBuf> = (1..)
        .map(|n| PathBuf::from(format!("{}.{n:06}", log.display())))
        .take_while(|p| p.exists())
        .collect();
    assert!(closed.len() >= 2, "{closed:?}");
    let archive = setup.dir.path().join("archive");
    std::fs::create_dir(&archive).unwrap();
    for segment in &closed[..closed.len() - 1] {
        std::fs::copy(segment, archive.join(segment.file_name().unwrap())).unwrap();
        std::fs::remove_file(segment).unwrap();
    }
    let (ok, out, err) = setup.verify(&etcd, &[(0, &log)], &["--require-head"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("holds its anchor") && out.contains("shipped those segments away"),
        "{out}"
    );

    // A replaced anchor value does not open under keyd's root: nothing is used from it.
    let store = etcd_client(&etcd).await;
    let revision = anchor_revision(&store, "keyd-0").await;
    let swap = store
        .put(
            b"/coffer/keyd/audit-anchors/keyd-0",
            vec![1; 80],
            Expect::ModRevision(revision),
        )
        .await
        .unwrap();
    assert!(matches!(swap, Swap::Done { .. }), "{swap:?}");
    let (ok, _, err) = setup.verify(&etcd, &[(0, &log)], &[]);
    assert!(!ok && err.contains("does not authenticate"), "{err}");
}

#[test]
fn a_replica_id_that_cannot_name_an_anchor_is_a_usage_error() {
    let out = coffer(&[
        "keyd",
        "serve",
        "--replica-id",
        "keyd/0",
        "--platform",
        "sim",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--replica-id \"keyd/0\" contains '/'"),
        "{err}"
    );
}

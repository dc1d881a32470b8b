//! Joining keyd replicas without an operator, with real `coffer keyd` processes on the sim
//! platform: a new replica receives keyd's root from a running one over mutual attested TLS
//! (`coffer keyd join`, `coffer keyd serve --join`), seals it to its own platform and serves
//! the same keys. Callers without the keyd-peer role, another measurement (a modified copy of
//! the binary) and sim under a production policy are refused with nothing written; a replica
//! joined with an empty data directory serves keyd's state from a real etcd; an
//! existing root is never replaced; keyd's recovery shares restore a joined replica; the root
//! never appears in any log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use coffer_keyd_client::{ClientError, KeydClient};
use coffer_platform::sim::SimPlatform;
use common::keyd::{
    audit_records, client_options, create_keyd_data, free_addr, keyd_cli, sim_signer, KeydProcess,
};
use common::{coffer, coffer_bin};
use sha2::{Digest, Sha256};
use tonic::Code;

const KEYRING: &str = "cluster-a";

/// hex SHA-256 of `path`: the sim measurement of a process running that executable.
fn measurement_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// One running keyd (replica A) and what a test needs around it.
struct Cluster {
    dir: tempfile::TempDir,
    /// keyd's --policy, shared by every replica: `kms-plugin:a` for the test's caller (by
    /// signer), `keyd-peer` for the coffer binary's measurement.
    policy: PathBuf,
    config: PathBuf,
    /// The test's own sim state: a caller with role kms-plugin:a.
    caller: PathBuf,
    a: KeydProcess,
}

/// The policy text: simulation allowed or not.
fn policy_text(caller_signer: &str, peer_measurement: &str, allow_simulation: bool) -> String {
    format!(
        "version: 1\nallow_simulation: {allow_simulation}\nroles:\n  - name: kms-plugin:a\n    sim: {{ signer: [\"{caller_signer}\"] }}\n  - name: keyd-peer\n    sim: {{ measurement: [\"{peer_measurement}\"] }}\n"
    )
}

impl Cluster {
    /// Replica A with keyring cluster-a, initialised with `init` extra arguments.
    fn start(init: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let a_data = dir.path().join("a");
        let mut args = vec!["init"];
        args.extend_from_slice(init);
        keyd_cli(&a_data, &args);
        keyd_cli(&a_data, &["keyring", "create", KEYRING]);
        let caller = dir.path().join("caller");
        let policy = dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            policy_text(
                &sim_signer(&caller),
                &measurement_of(Path::new(coffer_bin())),
                true,
            ),
        )
        .unwrap();
        let config = dir.path().join("keyd.yaml");
        std::fs::write(
            &config,
            format!("keyrings:\n  {KEYRING}:\n    wrap: [\"kms-plugin:a\"]\n    unwrap: [\"kms-plugin:a\"]\n"),
        )
        .unwrap();
        let a = KeydProcess::start(&a_data, free_addr(), &policy, &config, &[]);
        Cluster {
            dir,
            policy,
            config,
            caller,
            a,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `<binary> keyd join --peer A --policy <policy>` for data directory `data`, logging at
    /// trace: (success, stdout, stderr).
    fn join_with(&self, binary: &Path, data: &Path, policy: &Path) -> (bool, String, String) {
        let out = Command::new(binary)
            .args(["--log-level", "trace", "keyd", "join", "--platform", "sim"])
            .arg("--data-dir")
            .arg(data)
            .arg("--peer")
            .arg(self.a.addr.to_string())
            .arg("--policy")
            .arg(policy)
            .args(["--timeout", "5s"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn join(&self, data: &Path) -> (bool, String, String) {
        self.join_with(Path::new(coffer_bin()), data, &self.policy)
    }

    /// Copies A's keyrings (sealed under keyd's root) into `data`, as `keyd migrate` or a
    /// shared store would provide them.
    fn copy_keyrings(&self, data: &Path) {
        std::fs::create_dir_all(data).unwrap();
        let out = Command::new("cp")
            .arg("-a")
            .arg(self.a.data.join("keyrings"))
            .arg(data.join("keyrings"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    /// Wraps a secret through replica A.
    async fn wrap_on_a(&self, secret: &[u8]) -> Vec<u8> {
        let mut client =
            KeydClient::connect(self.a.addr, client_options(&self.caller, &self.a.signer()))
                .await
                .unwrap();
        client.wrap(KEYRING, secret).await.unwrap().0
    }

    /// A's JoinReplica audit records.
    fn join_records(&self) -> Vec<serde_json::Value> {
        audit_records(&self.a.data)
            .into_iter()
            .filter(|r| r["event"] == "join-replica")
            .collect()
    }
}

/// Unwraps `ciphertext` through `keyd` as the test's caller.
async fn unwrap_on(keyd: &KeydProcess, caller: &Path, ciphertext: &[u8]) -> Vec<u8> {
    let mut client = KeydClient::connect(keyd.addr, client_options(caller, &keyd.signer()))
        .await
        .unwrap();
    client
        .unwrap(KEYRING, None, ciphertext)
        .await
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_joins_seals_the_root_to_itself_and_serves_the_same_keys() {
    let cluster = Cluster::start(&[]);
    let ciphertext = cluster.wrap_on_a(b"a DEK seed").await;

    let b = cluster.path("b");
    let (ok, stdout, stderr) = cluster.join(&b);
    assert!(ok, "join failed: {stderr}");
    assert!(stdout.contains("joined keyd keyd-"), "{stdout}");
    let (a_root, b_root) = (
        std::fs::read_to_string(cluster.a.data.join("keyd-root.json")).unwrap(),
        std::fs::read_to_string(b.join("keyd-root.json")).unwrap(),
    );
    assert_ne!(
        a_root, b_root,
        "B's root must be sealed to B's own platform"
    );
    let (a_info, b_info) = (
        coffer_keyd::root_info(&cluster.a.data).unwrap(),
        coffer_keyd::root_info(&b).unwrap(),
    );
    assert_eq!(
        a_info, b_info,
        "same instance, creation time, platform kind"
    );
    let b_platform = SimPlatform::open_existing(&b).unwrap();
    coffer_keyd::KeydRoot::open(&b, &b_platform).unwrap();
    let a_platform = SimPlatform::open_existing(&cluster.a.data).unwrap();
    assert!(
        coffer_keyd::KeydRoot::open(&b, &a_platform).is_err(),
        "B's root opens only on B's platform"
    );

    // Joining again finds the same root: nothing is rewritten.
    let (ok, stdout, stderr) = cluster.join(&b);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("nothing to do"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(b.join("keyd-root.json")).unwrap(),
        b_root
    );

    // B serves A's keys (copies of A's keyrings; they are sealed under the shared root).
    cluster.copy_keyrings(&b);
    let mut replica = KeydProcess::start(&b, free_addr(), &cluster.policy, &cluster.config, &[]);
    assert_eq!(
        unwrap_on(&replica, &cluster.caller, &ciphertext).await,
        b"a DEK seed"
    );
    assert_eq!(replica.terminate(), Some(0));

    // A audited the handover with the joiner's TEE, measurement and role.
    let records = cluster.join_records();
    let granted: Vec<_> = records.iter().filter(|r| r["result"] == "ok").collect();
    assert_eq!(granted.len(), 2, "{records:?}");
    let caller = &granted[0]["caller"];
    assert_eq!(caller["tee"], "sim", "{caller}");
    assert_eq!(caller["role"], "keyd-peer", "{caller}");
    assert_eq!(
        caller["measurement"],
        measurement_of(Path::new(coffer_bin())),
        "{caller}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_join_joins_on_first_start_then_serves() {
    let cluster = Cluster::start(&[]);
    let ciphertext = cluster.wrap_on_a(b"through serve --join").await;
    let b = cluster.path("b");
    cluster.copy_keyrings(&b);
    assert!(!b.join("keyd-root.json").exists());
    let peers = format!("127.0.0.1:1,{}", cluster.a.addr);
    let mut replica = KeydProcess::start(
        &b,
        free_addr(),
        &cluster.policy,
        &cluster.config,
        &["--join", &peers, "--join-timeout", "20s"],
    );
    assert!(b.join("keyd-root.json").exists());
    assert_eq!(
        unwrap_on(&replica, &cluster.caller, &ciphertext).await,
        b"through serve --join"
    );
    assert_eq!(replica.terminate(), Some(0));

    // Restarted with --join, it serves the root it has without asking anyone (A is gone).
    let mut a = cluster.a;
    assert_eq!(a.terminate(), Some(0));
    let mut again = KeydProcess::start(
        &b,
        free_addr(),
        &cluster.policy,
        &cluster.config,
        &["--join", &peers],
    );
    assert!(
        again.log_text().contains("already has keyd's root"),
        "{}",
        again.log_text()
    );
    assert_eq!(again.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_joins_a_keyd_on_etcd_and_serves_its_keys_from_there() {
    let Some(etcd) = common::etcd::Etcd::start_or_skip() else {
        return;
    };
    let cluster = Cluster::start(&[]);
    keyd_cli(&cluster.a.data, &["migrate", "--to-etcd", &etcd.endpoint]);
    let ciphertext = cluster.wrap_on_a(b"kept in etcd").await;

    // B starts with an empty data directory: the root from A, the keyrings from etcd.
    let b = cluster.path("b");
    let mut replica = KeydProcess::start(
        &b,
        free_addr(),
        &cluster.policy,
        &cluster.config,
        &[
            "--join",
            &cluster.a.addr.to_string(),
            "--store",
            "etcd",
            "--etcd-endpoints",
            &etcd.endpoint,
        ],
    );
    assert!(!b.join("keyrings").exists(), "B's keyrings came from etcd");
    assert_eq!(
        unwrap_on(&replica, &cluster.caller, &ciphertext).await,
        b"kept in etcd"
    );
    assert_eq!(replica.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_keyd_peer_and_foreign_measurements_get_nothing() {
    let cluster = Cluster::start(&[]);

    // The test's caller holds kms-plugin:a, not keyd-peer.
    let mut client = KeydClient::connect(
        cluster.a.addr,
        client_options(&cluster.caller, &cluster.a.signer()),
    )
    .await
    .unwrap();
    let err = client.join_replica(None).await.unwrap_err();
    let status = err.status().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(status.code(), Code::PermissionDenied, "{err}");
    assert!(
        status.message().contains("keyd-peer") && status.message().contains("kms-plugin:a"),
        "{err}"
    );
    assert!(matches!(err, ClientError::Rpc(_)));

    // A caller the policy grants no role at all.
    let stranger = cluster.path("stranger");
    let mut client = KeydClient::connect(
        cluster.a.addr,
        client_options(&stranger, &cluster.a.signer()),
    )
    .await
    .unwrap();
    let err = client.join_replica(None).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.code()), Some(Code::PermissionDenied));

    // Another measurement: a modified copy of the coffer binary.
    let other = cluster.path("coffer-other");
    std::fs::copy(coffer_bin(), &other).unwrap();
    let mut bytes = std::fs::OpenOptions::new()
        .append(true)
        .open(&other)
        .unwrap();
    std::io::Write::write_all(&mut bytes, b"another build").unwrap();
    drop(bytes);
    let other_measurement = measurement_of(&other);
    assert_ne!(other_measurement, measurement_of(Path::new(coffer_bin())));
    let c = cluster.path("c");
    let (ok, _, stderr) = cluster.join_with(&other, &c, &cluster.policy);
    assert!(!ok, "a foreign measurement joined");
    assert!(
        stderr.contains("every peer refused")
            && stderr.contains("role keyd-peer: sim measurement")
            && stderr.contains("is not accepted"),
        "{stderr}"
    );
    assert!(
        !c.join("keyd-root.json").exists(),
        "a refused join wrote a root"
    );

    // A wrong --peer: the joiner holds its peer to keyd-peer too. A production policy (no
    // simulation) trusts no sim keyd.
    let production = cluster.path("production.yaml");
    std::fs::write(
        &production,
        policy_text(
            &sim_signer(&cluster.caller),
            &measurement_of(Path::new(coffer_bin())),
            false,
        ),
    )
    .unwrap();
    let d = cluster.path("d");
    let (ok, _, stderr) = cluster.join_with(Path::new(coffer_bin()), &d, &production);
    assert!(!ok, "joined a sim keyd under a production policy");
    assert!(
        stderr.contains("not trusted") && stderr.contains("allow_simulation"),
        "{stderr}"
    );
    assert!(!d.join("keyd-root.json").exists());

    // Every refusal is audited with who asked.
    let records = cluster.join_records();
    assert!(
        records.iter().all(|r| r["result"] == "denied"),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["caller"]["role"] == "kms-plugin:a"),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r["caller"]["measurement"] == other_measurement),
        "{records:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_is_refused_by_a_keyd_under_a_production_policy() {
    let mut cluster = Cluster::start(&[]);
    let production = cluster.path("production.yaml");
    std::fs::write(
        &production,
        policy_text(
            &sim_signer(&cluster.caller),
            &measurement_of(Path::new(coffer_bin())),
            false,
        ),
    )
    .unwrap();
    assert_eq!(cluster.a.terminate(), Some(0));
    let a_data = cluster.a.data.clone();
    cluster.a = KeydProcess::start(&a_data, cluster.a.addr, &production, &cluster.config, &[]);
    let b = cluster.path("b");
    let (ok, _, stderr) = cluster.join(&b);
    assert!(
        !ok,
        "a sim replica joined a keyd whose policy refuses simulation"
    );
    assert!(
        stderr.contains("every peer refused") && stderr.contains("allow_simulation is false"),
        "{stderr}"
    );
    assert!(!b.join("keyd-root.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_root_of_another_keyd_is_never_replaced() {
    let cluster = Cluster::start(&[]);
    let c = cluster.path("c");
    create_keyd_data(&c, &[]);
    let before = std::fs::read(c.join("keyd-root.json")).unwrap();
    let (ok, _, stderr) = cluster.join(&c);
    assert!(!ok, "joined over another root");
    assert!(
        stderr.contains("never replaces its root") && stderr.contains("empty --data-dir"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(c.join("keyd-root.json")).unwrap(), before);

    // Asking for a particular instance: a replica of another keyd hands nothing over.
    let e = cluster.path("e");
    let out = coffer(&[
        "keyd",
        "join",
        "--platform",
        "sim",
        "--data-dir",
        e.to_str().unwrap(),
        "--peer",
        &cluster.a.addr.to_string(),
        "--policy",
        cluster.policy.to_str().unwrap(),
        "--instance-id",
        "keyd-0000000000000000",
        "--timeout",
        "5s",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("keyd-0000000000000000")
            && stderr.contains("a replica of the keyd it should join"),
        "{stderr}"
    );
    assert!(!e.join("keyd-root.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_shares_of_the_keyd_restore_a_joined_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut public_keys = Vec::new();
    let mut secret_files = Vec::new();
    for i in 1..=2 {
        let out = dir.path().join(format!("operator-{i}.key"));
        let got = coffer(&[
            "keyd",
            "recovery-key",
            "generate",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(got.status.success());
        public_keys.push(String::from_utf8_lossy(&got.stdout).trim().to_string());
        secret_files.push(out);
    }
    let shares = dir.path().join("shares");
    let mut init = vec![
        "--recovery-threshold",
        "2",
        "--recovery-shares-dir",
        shares.to_str().unwrap(),
    ];
    for pk in &public_keys {
        init.extend_from_slice(&["--recovery-key", pk]);
    }
    let cluster = Cluster::start(&init);
    let ciphertext = cluster.wrap_on_a(b"recoverable").await;
    let b = cluster.path("b");
    let (ok, _, stderr) = cluster.join(&b);
    assert!(ok, "{stderr}");
    let status = keyd_cli(&b, &["status"]);
    assert!(status.contains("2 of 2 operator shares"), "{status}");

    // Every replica is lost; B's files land on a machine with another TEE identity.
    let moved = cluster.path("moved");
    std::fs::create_dir_all(&moved).unwrap();
    std::fs::copy(b.join("keyd-root.json"), moved.join("keyd-root.json")).unwrap();
    cluster.copy_keyrings(&moved);
    let mut recover = vec!["recover"];
    let share_files: Vec<String> = std::fs::read_dir(&shares)
        .unwrap()
        .map(|e| e.unwrap().path().to_str().unwrap().to_string())
        .collect();
    for s in &share_files {
        recover.extend_from_slice(&["--share", s]);
    }
    for k in &secret_files {
        recover.extend_from_slice(&["--operator-key", k.to_str().unwrap()]);
    }
    let stdout = keyd_cli(&moved, &recover);
    assert!(stdout.contains("recovered keyd"), "{stdout}");
    let mut restored =
        KeydProcess::start(&moved, free_addr(), &cluster.policy, &cluster.config, &[]);
    assert_eq!(
        unwrap_on(&restored, &cluster.caller, &ciphertext).await,
        b"recoverable"
    );
    assert_eq!(restored.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_never_appears_in_any_log() {
    let cluster = Cluster::start(&[]);
    let b = cluster.path("b");
    let (ok, stdout, stderr) = cluster.join(&b);
    assert!(ok, "{stderr}");
    cluster.copy_keyrings(&b);
    let mut replica = KeydProcess::start(&b, free_addr(), &cluster.policy, &cluster.config, &[]);
    assert_eq!(replica.terminate(), Some(0));

    let platform = SimPlatform::open_existing(&cluster.a.data).unwrap();
    let root = coffer_keyd::KeydRoot::open(&cluster.a.data, &platform)
        .unwrap()
        .hand_over();
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let needles = [
        hex::encode(&root.root[..]),
        hex::encode_upper(&root.root[..]),
        b64.encode(&root.root[..]).trim_end_matches('=').to_string(),
        b64url.encode(&root.root[..]),
        format!("{:?}", &root.root[..8])
            .trim_end_matches(']')
            .to_string(),
    ];
    let texts = [
        ("A's log", cluster.a.log_text()),
        ("B's log", replica.log_text()),
        ("join stdout", stdout),
        ("join stderr", stderr),
        (
            "A's audit log",
            std::fs::read_to_string(cluster.a.data.join("audit.log")).unwrap(),
        ),
    ];
    assert!(
        texts[3].1.contains("TRACE"),
        "the join did not log at trace"
    );
    for (what, text) in &texts {
        for needle in &needles {
            assert!(!text.contains(needle.as_str()), "{what} holds the root");
        }
    }
}

#[test]
fn a_join_without_a_peer_role_or_a_reachable_peer_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let run = |policy: &Path, timeout: &str| {
        let out = coffer(&[
            "keyd",
            "join",
            "--platform",
            "sim",
            "--data-dir",
            data.to_str().unwrap(),
            "--peer",
            "127.0.0.1:1",
            "--policy",
            policy.to_str().unwrap(),
            "--timeout",
            timeout,
        ]);
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let no_peer_role =
        common::keyd::sim_role_policy(dir.path(), "kms-plugin:a", &dir.path().join("x"));
    let stderr = run(&no_peer_role, "1s");
    assert!(
        stderr.contains("--policy defines no keyd-peer role"),
        "{stderr}"
    );

    let policy = dir.path().join("peers.yaml");
    std::fs::write(
        &policy,
        policy_text(&"ab".repeat(32), &"cd".repeat(32), true),
    )
    .unwrap();
    let stderr = run(&policy, "1s");
    assert!(
        stderr.contains("still failing after 1s") && stderr.contains("127.0.0.1:1"),
        "{stderr}"
    );
    assert!(!data.join("keyd-root.json").exists());
}

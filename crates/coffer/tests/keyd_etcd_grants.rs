//! keyd's grants in etcd (`coffer keyd config push`, `keyd serve --config etcd:`): real etcd on
//! loopback, real `coffer keyd serve --store etcd` replicas. A pushed change of the grants is
//! applied by every replica without a restart; a configuration that does not validate is
//! refused by push, and one written into etcd anyway is refused by the replicas, which keep
//! the grants they had. etcd never holds the configuration in plaintext.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use coffer_keyd_client::pb;
use coffer_keyd_client::pb::key_service_client::KeyServiceClient;
use coffer_keyd_store::{Expect, SealedStore, StateStore, StoreKey, Swap};
use coffer_platform::sim::SimPlatform;
use common::keyd::audit_records;
use common::keyd_cluster::{unwrap, Cluster, KEYRING, PREFIX};
use tonic::transport::Channel;
use tonic::Code;

/// Generous: a change is normally applied within the watch's round trip.
const APPLIED_WITHIN: Duration = Duration::from_secs(10);

/// The cluster's grants with `unwrap` given to `unwrap_roles`.
fn grants(unwrap_roles: &str) -> String {
    format!("keyrings:\n  {KEYRING}:\n    wrap: [admin]\n    unwrap: {unwrap_roles}\n    status: [admin]\n    rotate: [admin]\n    list: [admin]\n")
}

/// Polls until replica `c`'s Unwrap is allowed (`allowed`) or PERMISSION_DENIED; how long it
/// took.
async fn until_unwrap(
    c: &mut KeyServiceClient<Channel>,
    wrapped: &pb::WrapResponse,
    allowed: bool,
    what: &str,
) -> Duration {
    let started = Instant::now();
    loop {
        let seen = match unwrap(c, wrapped).await {
            Ok(plaintext) => {
                assert_eq!(plaintext, b"dek");
                true
            }
            Err(status) => {
                assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status}");
                false
            }
        };
        if seen == allowed {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < APPLIED_WITHIN,
            "{what}: unwrap allowed={allowed} not applied after {APPLIED_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `keyd config push FILE` with the cluster's policy, from replica 0's data directory.
fn push(cluster: &Cluster, yaml: &str) -> (bool, String, String) {
    let file = cluster.dir.path().join("push.yaml");
    std::fs::write(&file, yaml).unwrap();
    let policy = cluster.policy.to_str().unwrap().to_string();
    cluster.cli(
        0,
        &[
            "config",
            "push",
            file.to_str().unwrap(),
            "--policy",
            &policy,
        ],
    )
}

fn push_ok(cluster: &Cluster, yaml: &str) -> String {
    let (ok, out, err) = push(cluster, yaml);
    assert!(ok, "keyd config push failed: {err}");
    out
}

/// The revision `keyd config show` reports.
fn shown_revision(cluster: &Cluster) -> (String, String) {
    let out = cluster.cli_ok(1, &["config", "show"]);
    let first = out.lines().next().unwrap();
    let revision = first
        .strip_prefix("# keyd configuration in etcd, revision ")
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();
    (revision, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_pushed_to_etcd_are_applied_by_every_replica() {
    let Some(mut cluster) = Cluster::prepare(2) else {
        return;
    };
    // Nothing pushed yet: a replica says what to run.
    let (ok, _, err) = cluster.cli(0, &["config", "show"]);
    assert!(!ok);
    assert!(err.contains("keyd config push"), "{err}");

    let out = push_ok(&cluster, &grants("[admin]"));
    assert!(out.contains(&format!("keyring {KEYRING}: added")), "{out}");
    assert!(out.contains("at revision "), "{out}");
    let (_, shown) = shown_revision(&cluster);
    assert!(shown.contains("unwrap: [admin]"), "{shown}");

    for i in 0..2 {
        cluster.start_with_config(i, Path::new("etcd:"));
    }
    let mut clients = vec![cluster.client(0).await, cluster.client(1).await];
    let wrapped = clients[0]
        .wrap(pb::WrapRequest {
            keyring: KEYRING.into(),
            plaintext: b"dek".to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    for c in &mut clients {
        assert_eq!(unwrap(c, &wrapped).await.unwrap(), b"dek");
    }

    // Revoked: both replicas refuse, without a restart.
    let out = push_ok(&cluster, &grants("[]"));
    assert!(
        out.contains(&format!(
            "keyring {KEYRING} unwrap: removed [admin] added []"
        )),
        "{out}"
    );
    for (i, c) in clients.iter_mut().enumerate() {
        let took = until_unwrap(c, &wrapped, false, "revoked").await;
        println!("replica {i} refused unwrap {took:?} after the push");
    }
    // Granted again.
    push_ok(&cluster, &grants("[admin]"));
    for (i, c) in clients.iter_mut().enumerate() {
        let took = until_unwrap(c, &wrapped, true, "granted again").await;
        println!("replica {i} allowed unwrap again {took:?} after the push");
    }
    let (revision, _) = shown_revision(&cluster);

    // Refused by push: a role the policy does not define, and YAML that does not parse.
    let (ok, _, err) = push(&cluster, &grants("[admni]"));
    assert!(!ok);
    assert!(
        err.contains("\"admni\"") && err.contains("does not define"),
        "{err}"
    );
    let (ok, _, err) = push(&cluster, "keyrings: [unclosed\n");
    assert!(!ok);
    assert!(err.contains("keyd configuration"), "{err}");
    assert_eq!(shown_revision(&cluster).0, revision, "a refused push wrote");

    // Written into etcd anyway, sealed under keyd's root: the replicas refuse both, and keep
    // allowing unwrap as the last good version does.
    let platform = SimPlatform::open_existing(&cluster.data[0]).unwrap();
    let root = coffer_keyd::KeydRoot::open(&cluster.data[0], &platform).unwrap();
    let records = SealedStore::new(
        cluster.etcd_store().await,
        StoreKey::new(root.state_store_key()),
        PREFIX,
    )
    .unwrap();
    for (bad, refused) in [
        ("keyrings: [unclosed\n".to_string(), 1),
        (grants("[admni]"), 2),
    ] {
        let current = records
            .get(coffer_keyd::CONFIG_RECORD)
            .await
            .unwrap()
            .unwrap();
        let swap = records
            .put(
                coffer_keyd::CONFIG_RECORD,
                bad.as_bytes(),
                Expect::ModRevision(current.mod_revision),
            )
            .await
            .unwrap();
        assert!(matches!(swap, Swap::Done { .. }), "{swap:?}");
        let started = Instant::now();
        for i in 0..2 {
            loop {
                let log = cluster.process(i).log_text();
                if log
                    .matches("a new keyd configuration in etcd is refused")
                    .count()
                    >= refused
                {
                    break;
                }
                assert!(
                    started.elapsed() < APPLIED_WITHIN,
                    "replica {i} did not refuse: {log}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        for c in &mut clients {
            assert_eq!(unwrap(c, &wrapped).await.unwrap(), b"dek");
        }
    }
    // A replica does not start on a configuration that does not validate.
    cluster.process(1).terminate();
    let err = cluster.refused_start(1, Path::new("etcd:"), &[]);
    assert!(err.contains("does not define"), "{err}");

    // The keyring set is fixed at start: a removed keyring is granted to nobody at once, an
    // added one waits for a restart; both are said.
    let out = push_ok(&cluster, "keyrings:\n  cluster-b:\n    unwrap: [admin]\n");
    assert!(
        out.contains("keyring cluster-b: added")
            && out.contains(&format!("keyring {KEYRING}: removed")),
        "{out}"
    );
    until_unwrap(&mut clients[0], &wrapped, false, "keyring removed").await;
    let log = cluster.process(0).log_text();
    assert!(
        log.contains("keyring removed from keyd's configuration in etcd"),
        "{log}"
    );
    assert!(log.contains("only after a restart"), "{log}");

    // The applied versions are audited with their revision.
    let started = Instant::now();
    while !audit_records(&cluster.data[0]).iter().any(|r| {
        r["event"] == "reload"
            && r["reason"]
                .as_str()
                .is_some_and(|s| s.starts_with("configuration revision "))
    }) {
        assert!(
            started.elapsed() < APPLIED_WITHIN,
            "no reload record in the audit log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // etcd holds ciphertext only: no role name, operation or YAML key in any value.
    let listing = cluster
        .etcd_store()
        .await
        .list(PREFIX.as_bytes())
        .await
        .unwrap();
    assert!(listing
        .entries
        .iter()
        .any(|e| e.key.ends_with(b"config/keyd.yaml")));
    for entry in &listing.entries {
        for needle in [&b"admin"[..], b"admni", b"unwrap", b"keyrings"] {
            assert!(
                !entry.value.windows(needle.len()).any(|w| w == needle),
                "{:?} holds {:?} in plaintext",
                String::from_utf8_lossy(&entry.key),
                String::from_utf8_lossy(needle)
            );
        }
    }
}

#[test]
fn config_from_etcd_needs_store_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nallow_simulation: true\nroles: []\n").unwrap();
    let out = common::run::output_within(
        std::process::Command::new(common::coffer_bin())
            .args(["keyd", "serve", "--platform", "sim", "--data-dir"])
            .arg(dir.path())
            .arg("--policy")
            .arg(&policy)
            .args(["--config", "etcd:"]),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--config etcd:") && err.contains("--store etcd"),
        "{err}"
    );
}

/// `--init --config etcd:` on an empty etcd initialises keyd there but has no grants to serve:
/// it stops saying to push them; once pushed (and the keyring created), the replica serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_with_config_from_etcd_asks_for_a_push_first() {
    let Some(etcd) = common::etcd::Etcd::start_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    let admin = dir.path().join("admin");
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        format!(
            "version: 1\nallow_simulation: true\nroles:\n  - name: admin\n    sim: {{ signer: [\"{}\"] }}\n",
            common::keyd::sim_signer(&admin)
        ),
    )
    .unwrap();
    let etcd_flags = ["--store", "etcd", "--etcd-endpoints", &etcd.endpoint];
    let out = common::run::output_within(
        std::process::Command::new(common::coffer_bin())
            .args(["keyd", "serve", "--platform", "sim", "--init", "--listen"])
            .arg(common::keyd::free_addr().to_string())
            .arg("--data-dir")
            .arg(&data)
            .arg("--policy")
            .arg(&policy)
            .args(["--config", "etcd:"])
            .args(etcd_flags),
    );
    assert!(!out.status.success(), "keyd served without a configuration");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds no keyd configuration") && err.contains("keyd config push"),
        "{err}"
    );

    let file = dir.path().join("keyd.yaml");
    std::fs::write(&file, grants("[admin]")).unwrap();
    let cli = |args: &[&str]| {
        let mut full = vec!["keyd"];
        full.extend_from_slice(args);
        full.extend_from_slice(&etcd_flags);
        full.extend_from_slice(&["--platform", "sim", "--data-dir", data.to_str().unwrap()]);
        let out = common::coffer(&full);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cli(&["config", "push", file.to_str().unwrap()]);
    cli(&["keyring", "create", KEYRING]);
    let addr = common::keyd::free_addr();
    let _keyd =
        common::keyd::KeydProcess::start(&data, addr, &policy, Path::new("etcd:"), &etcd_flags);
    let admin = SimPlatform::open_or_create(&admin).unwrap();
    let mut c = common::keyd::client(addr, &common::keyd::sim_signer(&data), Some(&admin)).await;
    c.status(pb::StatusRequest {
        keyring: KEYRING.into(),
    })
    .await
    .unwrap();
}

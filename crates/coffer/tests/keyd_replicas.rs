//! Service mode with several keyd replicas: `coffer kms serve --keyd a,b,c` as a real process in
//! front of three real `coffer keyd` processes serving copies of one data directory (same root
//! secret, same sim platform key, same keyrings). Calls spread over the replicas, survive a
//! replica killed under load, come back to a restarted replica, and fail with a clear
//! UNAVAILABLE only when no replica answers.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_keyd_client::KeydClient;
use coffer_sealed::bundle::KeyBundle;
use coffer_sealed::{Binding, Scope};
use common::keyd::{
    create_keyd_data, free_addr, keyd_policy, location, replica_data_dirs, sim_role_policy,
    sim_signer, write_keyd_policy, KeydProcess,
};
use common::load::{plugin_dir, Load};
use common::run::output_within;
use common::{coffer_bin, decrypt, signal, try_encrypt, try_status, Plugin, V2Client};
use tonic::Code;

const KEYRING: &str = "cluster-a";
/// Concurrent callers in the load stream: at most this many calls are in flight at a kill.
const WORKERS: usize = 4;

/// Three keyd replicas of one state, and the plugin's view of them.
struct Replicas {
    dir: tempfile::TempDir,
    policy: PathBuf,
    config: PathBuf,
    data: Vec<PathBuf>,
    addrs: Vec<SocketAddr>,
    processes: Vec<Option<KeydProcess>>,
}

impl Replicas {
    /// Creates one data directory granting the plugin whose sim state is `plugin_state` wrap,
    /// unwrap and status on `cluster-a`, and copies it for the other replicas.
    fn prepare(plugin_state: &Path, count: usize) -> Replicas {
        let dir = tempfile::tempdir().unwrap();
        let data = replica_data_dirs(dir.path(), &[KEYRING], count);
        let policy = dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            format!(
                "version: 1\nallow_simulation: true\nroles:\n  - name: kms-plugin:a\n    sim: {{ signer: [\"{}\"] }}\n",
                sim_signer(plugin_state),
            ),
        )
        .unwrap();
        let config = dir.path().join("keyd.yaml");
        std::fs::write(
            &config,
            format!("keyrings:\n  {KEYRING}:\n    wrap: [\"kms-plugin:a\"]\n    unwrap: [\"kms-plugin:a\"]\n    status: [\"kms-plugin:a\"]\n"),
        )
        .unwrap();
        Replicas {
            dir,
            policy,
            config,
            addrs: (0..count).map(|_| free_addr()).collect(),
            processes: (0..count).map(|_| None).collect(),
            data,
        }
    }

    fn start(&mut self, i: usize) {
        let config = self.config.clone();
        self.start_with(i, &config);
    }

    fn start_with(&mut self, i: usize, config: &Path) {
        self.processes[i] = Some(KeydProcess::start(
            &self.data[i],
            self.addrs[i],
            &self.policy,
            config,
            &[],
        ));
    }

    fn pid(&self, i: usize) -> u32 {
        self.processes[i]
            .as_ref()
            .unwrap()
            .child
            .as_ref()
            .unwrap()
            .id()
    }

    /// SIGKILL: a crash.
    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.processes[i].take() {
            p.kill();
        }
    }

    /// The policy the plugin checks keyd against: the replicas' common sim signer.
    fn plugin_policy(&self) -> PathBuf {
        let signers: Vec<String> = self.data.iter().map(|d| sim_signer(d)).collect();
        assert!(signers.iter().all(|s| *s == signers[0]), "{signers:?}");
        let path = self.dir.path().join("keyd-policy.yaml");
        write_keyd_policy(&path, &signers[0]);
        path
    }

    fn flag(&self) -> String {
        let addrs: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        addrs.join(",")
    }

    /// Wrap calls with `result` replica `i` has recorded in its audit log (a line cut short by a kill is
    /// skipped).
    fn wraps(&self, i: usize) -> usize {
        self.wraps_with(i, "ok")
    }

    fn wraps_with(&self, i: usize, result: &str) -> usize {
        std::fs::read_to_string(self.data[i].join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["event"] == "wrap" && r["result"] == result)
            .count()
    }
}

/// `call`'s answer, which must come within kube-apiserver's 3 s KMS timeout, as it enforces it.
async fn api_server<T>(what: &str, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .unwrap_or_else(|_| panic!("{what} outlived the API server's 3 s timeout"))
}

/// Encrypts until `done` holds (panics after 30 s with the plugin log).
async fn encrypt_until(plugin: &Plugin, client: &mut V2Client, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        try_encrypt(client, &[5; 32]).await.unwrap();
        assert!(
            Instant::now() < deadline,
            "condition never held; plugin log:\n{}",
            plugin.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_replicas_survive_a_kill_and_fail_clearly_when_all_are_down() {
    let (plugin_dir, plugin_state) = plugin_dir();
    let mut replicas = Replicas::prepare(&plugin_state, 3);
    for i in 0..3 {
        replicas.start(i);
    }
    let plugin = spawn_plugin(plugin_dir, &replicas);
    plugin.wait_ready().await;
    let mut client = plugin.v2().await;

    // Spreading: every replica serves Encrypts (counted from its own audit log).
    encrypt_until(&plugin, &mut client, || {
        (0..3).all(|i| replicas.wraps(i) >= 5)
    })
    .await;
    let primary = try_status(&mut client).await.unwrap().key_id;

    // A replica killed under a stream of Encrypt/Decrypt calls: only calls in flight at the
    // kill may fail (failover retries them on another replica, so normally none does).
    let load = Load::start(&client, WORKERS);
    load.more(50).await;
    replicas.kill(0);
    load.more(200).await;
    // Status stays healthy with one replica gone (its 1 s cache expires on the way).
    for _ in 0..4 {
        let s = try_status(&mut client).await.unwrap();
        assert_eq!(
            (s.key_id.as_str(), s.healthz.as_str()),
            (primary.as_str(), "ok")
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    load.finish("kill -9 under load").await;

    // The replica back on its address is used again.
    replicas.start(0);
    let before = replicas.wraps(0);
    encrypt_until(&plugin, &mut client, || replicas.wraps(0) > before).await;

    // No replica: UNAVAILABLE naming every replica, before the API server's 3 s deadline.
    for i in 0..3 {
        replicas.kill(i);
    }
    let started = Instant::now();
    let err = try_encrypt(&mut client, &[6; 32]).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("no keyd replica answered"),
        "{err:?}"
    );
    for addr in &replicas.addrs {
        assert!(
            err.message().contains(&format!("keyd at {addr}")),
            "the error does not name {addr}: {err:?}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match try_status(&mut client).await {
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                break;
            }
            Ok(_) => assert!(
                Instant::now() < deadline,
                "Status stayed ok with no replica"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = plugin.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// The plugin in front of `replicas`, with its sim state made beforehand in `dir`.
fn spawn_plugin(dir: tempfile::TempDir, replicas: &Replicas) -> Plugin {
    let flags = [
        "--keyd".to_string(),
        replicas.flag(),
        "--keyd-keyring".into(),
        KEYRING.into(),
        "--keyd-policy".into(),
        replicas.plugin_policy().display().to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Plugin::spawn_service_in(dir, &flags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_was_never_up_costs_no_call() {
    let (plugin_dir, plugin_state) = plugin_dir();
    let mut replicas = Replicas::prepare(&plugin_state, 2);
    // Only the second replica runs; the first address has nothing listening.
    replicas.start(1);
    let plugin = spawn_plugin(plugin_dir, &replicas);
    plugin.wait_ready().await;
    let mut client = plugin.v2().await;
    for n in 0..20u8 {
        let enc = try_encrypt(&mut client, &[n; 32]).await.unwrap();
        assert_eq!(
            decrypt(&mut client, &enc.ciphertext, &enc.key_id)
                .await
                .unwrap(),
            [n; 32]
        );
    }
    assert_eq!(try_status(&mut client).await.unwrap().healthz, "ok");
    assert_eq!(replicas.wraps(1), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coffer_run_tries_the_next_replica_within_one_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["apps"]);
    let workload = dir.path().join("workload");
    let policy = sim_role_policy(dir.path(), "app", &workload);
    let config = dir.path().join("keyd.yaml");
    std::fs::write(
        &config,
        "keyrings:\n  apps:\n    unseal:\n      - role: app\n        namespaces: [\"payments\"]\n        secrets: [\"db-*\"]\n",
    )
    .unwrap();
    let keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &[]);
    let keyd_policy_path = dir.path().join("keyd-policy.yaml");
    write_keyd_policy(&keyd_policy_path, &keyd.signer());
    let trust = Arc::new(keyd_policy(&keyd.signer(), true));
    let options = coffer_attest::VerifyOptions::new(std::time::SystemTime::now());
    let mut client =
        KeydClient::connect_unattested_within(keyd.addr, trust, options, Duration::from_secs(10))
            .await
            .unwrap();
    let bundle = KeyBundle::from_json(&client.key_bundle("apps").await.unwrap()).unwrap();
    let secret = "pw-5d2e-only-for-the-app";
    let sealed = coffer_sealed::seal(
        bundle.keyring(),
        &bundle.primary().unwrap(),
        &Binding::new(Scope::Strict, &location("payments", "db-main", "password")).unwrap(),
        secret.as_bytes(),
    )
    .unwrap()
    .to_text();

    // The first replica is another keyd (its identity fails --keyd-policy: a replica not yet
    // admitted, or an impostor) and the second is down; a 1 ms --keyd-deadline leaves no time
    // for a retry round, so the value can only come from trying the third replica in the same
    // attempt.
    let foreign_data = dir.path().join("foreign");
    create_keyd_data(&foreign_data, &["apps"]);
    let foreign = KeydProcess::start(&foreign_data, free_addr(), &policy, &config, &[]);
    let dead = free_addr();
    let seen = dir.path().join("app-env");
    let out = output_within(
        Command::new(coffer_bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("DB_PASSWORD", &sealed)
            .env("SEEN", &seen)
            .args(["run", "--platform", "sim", "--keyd"])
            .arg(format!("{},{dead},{}", foreign.addr, keyd.addr))
            .arg("--keyd-policy")
            .arg(&keyd_policy_path)
            .arg("--state-dir")
            .arg(&workload)
            .args(["--keyd-deadline", "1ms", "--env", "--namespace", "payments"])
            .args(["--", "sh", "-c", r#"printf %s "$DB_PASSWORD" > "$SEEN""#]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), secret);
    for skipped in [dead, foreign.addr] {
        assert!(
            stderr.contains(&skipped.to_string()),
            "the skipped replica {skipped} is not logged: {stderr}"
        );
    }
    assert!(!stderr.contains(secret));

    // With only the untrusted replica left to answer, the run is refused (exit 77), not retried.
    let out = output_within(
        Command::new(coffer_bin())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("DB_PASSWORD", &sealed)
            .args(["run", "--platform", "sim", "--keyd"])
            .arg(format!("{},{}", foreign.addr, foreign.addr))
            .arg("--keyd-policy")
            .arg(&keyd_policy_path)
            .arg("--state-dir")
            .arg(&workload)
            .args(["--keyd-deadline", "30s", "--env", "--namespace", "payments"])
            .args(["--", "true"]),
    );
    assert_eq!(
        out.status.code(),
        Some(77),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_the_answer_and_is_not_retried_on_another_replica() {
    let (plugin_dir, plugin_state) = plugin_dir();
    let mut replicas = Replicas::prepare(&plugin_state, 2);
    replicas.start(0);
    // The second replica's configuration lets the plugin ask for Status but not Wrap.
    let stricter = replicas.dir.path().join("keyd-no-wrap.yaml");
    std::fs::write(
        &stricter,
        format!("keyrings:\n  {KEYRING}:\n    unwrap: [\"kms-plugin:a\"]\n    status: [\"kms-plugin:a\"]\n"),
    )
    .unwrap();
    replicas.start_with(1, &stricter);
    let plugin = spawn_plugin(plugin_dir, &replicas);
    plugin.wait_ready().await;
    let mut client = plugin.v2().await;
    // Both replicas carry calls once the probe has connected them.
    let (mut ok, mut denied) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ok < 3 || denied < 3 {
        match try_encrypt(&mut client, &[3; 32]).await {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
                assert!(e.message().contains("keyd refused this plugin"), "{e:?}");
                denied += 1;
            }
        }
        assert!(Instant::now() < deadline, "ok {ok}, denied {denied}");
    }
    // Every refusal reached the plugin as such: none was retried on the granting replica.
    assert_eq!(replicas.wraps_with(1, "denied"), denied);
    assert_eq!(replicas.wraps(0), ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_leaves_time_for_another_within_the_api_servers_budget() {
    let (plugin_dir, plugin_state) = plugin_dir();
    let mut replicas = Replicas::prepare(&plugin_state, 2);
    replicas.start(0);
    replicas.start(1);
    let plugin = spawn_plugin(plugin_dir, &replicas);
    plugin.wait_ready().await;
    let mut client = plugin.v2().await;
    encrypt_until(&plugin, &mut client, || {
        (0..2).all(|i| replicas.wraps(i) >= 2)
    })
    .await;
    // The first replica stops answering with its connections open (SIGSTOP).
    signal(replicas.pid(0), "STOP");
    let served = replicas.wraps(1);
    for n in 0..6u8 {
        let secret = [n; 32];
        let enc = api_server("Encrypt", try_encrypt(&mut client, &secret))
            .await
            .unwrap();
        let plain = api_server(
            "Decrypt",
            decrypt(&mut client, &enc.ciphertext, &enc.key_id),
        )
        .await
        .unwrap();
        assert_eq!(plain, secret);
        api_server("Status", try_status(&mut client)).await.unwrap();
    }
    assert_eq!(replicas.wraps(1), served + 6);
    signal(replicas.pid(0), "CONT");
}

//! Service mode: `coffer kms serve --keyd` as a real process in front of a real `coffer keyd`
//! process. The API server's view (KMS v2 and v1 over the unix socket) while keyd rotates,
//! dies, hangs, comes back, refuses the plugin, or is not there yet.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use coffer_keyd_client::KeydClient;
use common::keyd::{
    client_options, create_keyd_data, free_addr, sim_signer, write_keyd_policy, KeydProcess,
};
use common::{
    decrypt, encrypt, serve_to_exit, status, try_encrypt, try_status, v1_round_trip, v2_client,
    Plugin, V2Client,
};
use tonic::Code;

const KEYRING: &str = "cluster-a";

/// A keyd with keyring `cluster-a` that grants role `kms-plugin:a` (the plugin whose sim state
/// is `plugin_state`) wrap, unwrap and status, role `kms-plugin:b` (`other_state`) nothing on
/// it, and role `admin` (`admin_state`) status and rotate.
struct Keyd {
    dir: tempfile::TempDir,
    data: PathBuf,
    policy: PathBuf,
    config: PathBuf,
    addr: SocketAddr,
    process: Option<KeydProcess>,
}

impl Keyd {
    fn prepare(plugin_state: &Path, other_state: &Path) -> Keyd {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("keyd");
        create_keyd_data(&data, &[KEYRING]);
        let policy = dir.path().join("policy.yaml");
        std::fs::write(
            &policy,
            format!(
                "version: 1\nallow_simulation: true\nroles:\n  - name: kms-plugin:a\n    sim: {{ signer: [\"{}\"] }}\n  - name: kms-plugin:b\n    sim: {{ signer: [\"{}\"] }}\n  - name: admin\n    sim: {{ signer: [\"{}\"] }}\n",
                sim_signer(plugin_state),
                sim_signer(other_state),
                sim_signer(&dir.path().join("admin")),
            ),
        )
        .unwrap();
        let config = dir.path().join("keyd.yaml");
        std::fs::write(
            &config,
            format!("keyrings:\n  {KEYRING}:\n    wrap: [\"kms-plugin:a\"]\n    unwrap: [\"kms-plugin:a\"]\n    status: [\"kms-plugin:a\", \"admin\"]\n    rotate: [\"admin\"]\n"),
        )
        .unwrap();
        Keyd {
            dir,
            data,
            policy,
            config,
            addr: free_addr(),
            process: None,
        }
    }

    fn start(&mut self) {
        self.process = Some(KeydProcess::start(
            &self.data,
            self.addr,
            &self.policy,
            &self.config,
            &[],
        ));
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    fn signer(&self) -> String {
        sim_signer(&self.data)
    }

    /// The policy a plugin checks keyd against: keyd's own sim signer.
    fn plugin_policy(&self) -> PathBuf {
        let path = self.dir.path().join("keyd-policy.yaml");
        write_keyd_policy(&path, &self.signer());
        path
    }

    /// A keyd client with role `admin`.
    async fn admin(&self) -> KeydClient {
        KeydClient::connect(
            self.addr,
            client_options(&self.dir.path().join("admin"), &self.signer()),
        )
        .await
        .unwrap()
    }
}

/// A plugin directory whose sim platform state exists, so its signer can go into keyd's
/// policy before the plugin starts.
fn plugin_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    sim_signer(&state);
    (dir, state)
}

fn service_flags(keyd: &Keyd, policy: &Path) -> Vec<String> {
    vec![
        "--keyd".into(),
        keyd.addr.to_string(),
        "--keyd-keyring".into(),
        KEYRING.into(),
        "--keyd-policy".into(),
        policy.display().to_string(),
    ]
}

fn spawn_plugin(dir: tempfile::TempDir, flags: &[String]) -> Plugin {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Plugin::spawn_service_in(dir, &flags)
}

/// Waits until the plugin's socket accepts connections (its Status need not succeed).
async fn wait_socket(plugin: &Plugin) -> V2Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if plugin.socket.exists() {
            if let Ok(client) = v2_client(&plugin.socket).await {
                return client;
            }
        }
        assert!(
            Instant::now() < deadline,
            "plugin socket never came up; log:\n{}",
            plugin.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asserts that `result` is the plugin's own UNAVAILABLE (or DEADLINE_EXCEEDED) naming keyd —
/// not the client's 3 s deadline, which tonic reports as CANCELLED "Timeout expired".
fn assert_keyd_unavailable<T: std::fmt::Debug>(result: Result<T, tonic::Status>, addr: SocketAddr) {
    let status = result.expect_err("the call succeeded while keyd was out");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{status:?}"
    );
    assert!(
        status.message().contains(&format!("keyd at {addr}")),
        "the error does not name keyd: {status:?}"
    );
}

/// Polls `call` until it succeeds (panics after 30 s with the last error and the plugin log).
async fn eventually<T, F, Fut>(plugin: &Plugin, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) => assert!(
                Instant::now() < deadline,
                "never recovered; last error {e:?}; log:\n{}",
                plugin.log_text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_mode_round_trips_through_keyd_with_keyds_key_id() {
    let (dir, state) = plugin_dir();
    let mut keyd = Keyd::prepare(&state, &tempfile::tempdir().unwrap().path().join("b"));
    keyd.start();
    let metrics_addr = free_addr().to_string();
    let mut flags = service_flags(&keyd, &keyd.plugin_policy());
    flags.extend(["--metrics-addr".into(), metrics_addr.clone()]);
    let plugin = spawn_plugin(dir, &flags);
    plugin.wait_ready().await;
    let mut client = plugin.v2().await;

    // Status reports keyd's primary for the keyring; Encrypt uses it.
    let (primary, _) = keyd.admin().await.status(KEYRING).await.unwrap();
    let s = status(&mut client).await;
    assert_eq!(
        (s.key_id.as_str(), s.healthz.as_str()),
        (primary.as_str(), "ok")
    );
    let secret = [0x42u8; 32];
    let enc = encrypt(&mut client, &secret).await;
    assert_eq!(enc.key_id, primary);
    assert_eq!(
        decrypt(&mut client, &enc.ciphertext, &enc.key_id)
            .await
            .unwrap(),
        secret
    );

    // keyd's refusals pass through with keyd's reason: a ciphertext made under another key id.
    let err = decrypt(&mut client, &enc.ciphertext, "coffer-0099-0000000000000000")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().starts_with("keyd: "), "{err:?}");
    // The plugin's own bounds still apply before anything is forwarded.
    let err = try_encrypt(&mut client, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // KMS v1 through keyd too.
    let mut v1 = plugin.v1().await;
    let (version, _) = v1_round_trip(&mut v1, b"v1 secret").await;
    assert_eq!(version.runtime_name, "coffer");

    // Metrics count the calls to keyd; /healthz follows keyd.
    let metrics = http_get(&metrics_addr, "/metrics");
    for needle in [
        "coffer_kms_keyd_calls_total{op=\"unwrap\",result=\"ok\"} 2",
        "coffer_kms_keyd_calls_total{op=\"wrap\",result=\"ok\"} 2",
        "coffer_kms_keyd_calls_total{op=\"unwrap\",result=\"rejected\"} 1",
        &format!("coffer_kms_primary_key{{key_id=\"{primary}\"}} 1"),
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle:?}:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("coffer_kms_keyd_connected 0"),
        "{metrics}"
    );
    assert!(!metrics.contains("keystore_generation"), "{metrics}");
    assert!(http_get(&metrics_addr, "/healthz").ends_with("ok\n"));

    // No keystore on this node, and no secret in its log.
    assert!(!plugin.state_dir().join("keystore").exists());
    assert!(!plugin.state_dir().join("keystore.lock").exists());
    let log = plugin.log_text();
    assert!(log.contains("service mode"), "{log}");
    assert!(!log.contains(&hex::encode(secret)), "plaintext in the log");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_in_keyd_shows_in_status_and_old_ciphertexts_still_decrypt() {
    let (dir, state) = plugin_dir();
    let mut keyd = Keyd::prepare(&state, &tempfile::tempdir().unwrap().path().join("b"));
    keyd.start();
    let plugin = spawn_plugin(dir, &service_flags(&keyd, &keyd.plugin_policy()));
    plugin.wait_ready().await;
    let mut client = plugin.v2().await;
    let old = encrypt(&mut client, &[1; 32]).await;

    let new_key = keyd.admin().await.rotate(KEYRING).await.unwrap();
    assert_ne!(new_key, old.key_id);
    // Status follows within its cache time (well within the API server's polling interval).
    let s = common::wait_for_status(&mut client, |s| s.key_id == new_key).await;
    assert_eq!(s.healthz, "ok");
    assert_eq!(encrypt(&mut client, &[2; 32]).await.key_id, new_key);
    assert_eq!(
        decrypt(&mut client, &old.ciphertext, &old.key_id)
            .await
            .unwrap(),
        vec![1; 32]
    );
    assert!(plugin.log_text().contains(&new_key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyd_outage_fails_fast_with_unavailable_and_recovers_without_restart() {
    let (dir, state) = plugin_dir();
    let mut keyd = Keyd::prepare(&state, &tempfile::tempdir().unwrap().path().join("b"));
    keyd.start();
    let metrics_addr = free_addr().to_string();
    let mut flags = service_flags(&keyd, &keyd.plugin_policy());
    flags.extend(["--metrics-addr".into(), metrics_addr.clone()]);
    let plugin = spawn_plugin(dir, &flags);
    plugin.wait_ready().await;
    let mut client = plugin.v2().await;
    let before = encrypt(&mut client, &[7; 32]).await;

    keyd.kill();
    // Every call gets the plugin's answer, naming keyd, before the client's 3 s deadline —
    // the first ones (connection just lost) and the later ones (during backoff) alike.
    for _ in 0..5 {
        assert_keyd_unavailable(try_encrypt(&mut client, &[8; 32]).await, keyd.addr);
        assert_keyd_unavailable(
            decrypt(&mut client, &before.ciphertext, &before.key_id).await,
            keyd.addr,
        );
    }
    // Status (cached for at most a second) turns UNAVAILABLE, and so does /healthz.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status_err = loop {
        match try_status(&mut client).await {
            Err(e) => break e,
            Ok(_) => assert!(Instant::now() < deadline, "Status stayed ok with keyd down"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_keyd_unavailable::<()>(Err(status_err), keyd.addr);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let health = http_get(&metrics_addr, "/healthz");
        if health.starts_with("HTTP/1.1 503") {
            assert!(
                health.contains(&format!("keyd at {}", keyd.addr)),
                "{health}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "/healthz stayed ok: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(metrics.contains("coffer_kms_keyd_connected 0"), "{metrics}");
    assert!(
        metrics.contains("coffer_kms_keyd_calls_total{op=\"wrap\",result=\"unreachable\"}"),
        "{metrics}"
    );

    // keyd comes back on the same address with the same data: the plugin recovers by itself.
    keyd.start();
    let mut c = client.clone();
    let after = eventually(&plugin, || {
        let mut c = c.clone();
        async move { try_encrypt(&mut c, &[9; 32]).await }
    })
    .await;
    assert_eq!(after.key_id, before.key_id);
    assert_eq!(
        decrypt(&mut c, &before.ciphertext, &before.key_id)
            .await
            .unwrap(),
        vec![7; 32]
    );
    eventually(&plugin, || {
        let mut c = client.clone();
        async move { try_status(&mut c).await }
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !http_get(&metrics_addr, "/healthz").ends_with("ok\n") {
        assert!(Instant::now() < deadline, "/healthz never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(
        !metrics.contains("coffer_kms_keyd_reconnects_total 0"),
        "{metrics}"
    );
    assert!(!plugin.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyd_that_never_answers_gets_an_answer_before_the_api_server_deadline() {
    // A TCP listener that accepts connections and never says a word (a hung keyd, or a
    // firewall that blackholes the handshake).
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = blackhole.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in blackhole.incoming().flatten() {
            held.push(stream);
        }
    });
    let (dir, _) = plugin_dir();
    let policy = dir.path().join("keyd-policy.yaml");
    write_keyd_policy(&policy, &"00".repeat(32));
    let plugin = spawn_plugin(
        dir,
        &[
            "--keyd".into(),
            addr.to_string(),
            "--keyd-keyring".into(),
            KEYRING.into(),
            "--keyd-policy".into(),
            policy.display().to_string(),
        ],
    );
    let mut client = wait_socket(&plugin).await;
    for _ in 0..3 {
        assert_keyd_unavailable(try_status(&mut client).await, addr);
        assert_keyd_unavailable(try_encrypt(&mut client, &[1; 32]).await, addr);
        assert_keyd_unavailable(
            decrypt(&mut client, &[1; 60], "coffer-0001-0000000000000000").await,
            addr,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_that_keyd_refuses_or_that_do_not_trust_keyd_get_clear_errors() {
    let (_dir_a, state_a) = plugin_dir();
    let (dir_b, state_b) = plugin_dir();
    let mut keyd = Keyd::prepare(&state_a, &state_b);
    keyd.start();

    // Role kms-plugin:b exists but may not use keyring cluster-a: keyd's reason comes through.
    let plugin_b = spawn_plugin(dir_b, &service_flags(&keyd, &keyd.plugin_policy()));
    let mut client = wait_socket(&plugin_b).await;
    let err = try_encrypt(&mut client, &[1; 32]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().starts_with("keyd refused this plugin: "),
        "{err:?}"
    );
    assert!(err.message().contains("kms-plugin:b"), "{err:?}");
    let err = decrypt(&mut client, &[1; 60], "coffer-0001-0000000000000000")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Status cannot serve either: UNAVAILABLE, with the same reason.
    let err = try_status(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("keyd refused this plugin"),
        "{err:?}"
    );

    // A plugin whose evidence maps to no role in keyd's policy at all.
    let (dir_c, _) = plugin_dir();
    let plugin_c = spawn_plugin(dir_c, &service_flags(&keyd, &keyd.plugin_policy()));
    let mut client = wait_socket(&plugin_c).await;
    let err = try_encrypt(&mut client, &[1; 32]).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().starts_with("keyd refused this plugin: "),
        "{err:?}"
    );

    // A plugin whose --keyd-policy does not accept this keyd's evidence talks to nobody.
    let (dir_d, state_d) = plugin_dir();
    let wrong = state_d.with_file_name("wrong-policy.yaml");
    write_keyd_policy(&wrong, &"00".repeat(32));
    let plugin_d = spawn_plugin(dir_d, &service_flags(&keyd, &wrong));
    let mut client = wait_socket(&plugin_d).await;
    let err = try_encrypt(&mut client, &[1; 32]).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("is not trusted"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_started_before_keyd_serves_unavailable_then_recovers() {
    let (dir, state) = plugin_dir();
    let mut keyd = Keyd::prepare(&state, &tempfile::tempdir().unwrap().path().join("b"));
    let plugin = spawn_plugin(dir, &service_flags(&keyd, &keyd.plugin_policy()));
    let mut client = wait_socket(&plugin).await;
    let err = try_status(&mut client).await.unwrap_err();
    assert_keyd_unavailable::<()>(Err(err.clone()), keyd.addr);
    assert!(err.message().contains("unreachable"), "{err:?}");
    assert_keyd_unavailable(try_encrypt(&mut client, &[1; 32]).await, keyd.addr);

    keyd.start();
    let (primary, _) = keyd.admin().await.status(KEYRING).await.unwrap();
    let s = eventually(&plugin, || {
        let mut c = client.clone();
        async move { try_status(&mut c).await }
    })
    .await;
    assert_eq!(s.key_id, primary);
    let enc = encrypt(&mut client, &[3; 32]).await;
    assert_eq!(
        decrypt(&mut client, &enc.ciphertext, &enc.key_id)
            .await
            .unwrap(),
        vec![3; 32]
    );
}

#[test]
fn service_mode_flags_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let (state, socket) = (dir.path().join("s"), dir.path().join("k.sock"));
    let policy = dir.path().join("p.yaml");
    std::fs::write(&policy, "version: 1\nroles: []\n").unwrap();
    let policy = policy.to_str().unwrap();
    let service = [
        "--keyd",
        "127.0.0.1:7443",
        "--keyd-keyring",
        "a",
        "--keyd-policy",
        policy,
    ];
    let refused = |extra: &[&str], needle: &str| {
        let out = serve_to_exit(&state, &socket, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
        assert!(!socket.exists());
    };
    refused(&["--keyd", "127.0.0.1:7443"], "--keyd-keyring");
    refused(&["--keyd", "keyd-without-port"], "host:port");
    refused(
        &[&service[..], &["--keyd-timeout", "3s"]].concat(),
        "below the API server's per-call timeout",
    );
    refused(
        &[&service[..], &["--keyd-connections", "0"]].concat(),
        "--keyd-connections",
    );
    // Cached DEK seeds must not outlive a revoked grant for long.
    refused(
        &[&service[..], &["--keyd-cache-ttl", "6m"]].concat(),
        "from 0s to 5m",
    );
    refused(
        &[&service[..], &["--rotate-every", "24h"]].concat(),
        "Rotate the keyring in keyd",
    );
    refused(
        &[&service[..], &["--reload-interval", "1s"]].concat(),
        "no local keystore",
    );
    refused(&["--keyd-keyring", "a"], "--keyd");
    refused(
        &["--keyd-collateral-dir", "/tmp"],
        "--keyd <HOST:PORT[,HOST:PORT...]>",
    );
    refused(
        &[&service[..], &["--keyd-pccs-url", "https://pccs.example"]].concat(),
        "--keyd-cache-dir",
    );
    let bad_name = [
        "--keyd",
        "127.0.0.1:7443",
        "--keyd-keyring",
        "Bad_Name",
        "--keyd-policy",
        policy,
    ];
    refused(&bad_name, "keyring name");

    let help = common::coffer(&["kms", "serve", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("Service mode"), "{help}");
    assert!(help.contains("--keyd-timeout"), "{help}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decrypts_are_batched_and_each_gets_its_own_answer() {
    let (dir, state) = plugin_dir();
    let mut keyd = Keyd::prepare(&state, &tempfile::tempdir().unwrap().path().join("b"));
    keyd.start();
    let metrics_addr = free_addr().to_string();
    let mut flags = service_flags(&keyd, &keyd.plugin_policy());
    flags.extend(["--metrics-addr".into(), metrics_addr.clone()]);
    let plugin = spawn_plugin(dir, &flags);
    plugin.wait_ready().await;
    let mut client = plugin.v2().await;

    // 48 distinct secrets, then decrypted all at once over one HTTP/2 connection, with some
    // requests that keyd must refuse mixed in: every caller gets its own plaintext or error.
    let mut sealed = Vec::new();
    for i in 0..48u8 {
        let secret = [i; 32];
        let enc = encrypt(&mut client, &secret).await;
        sealed.push((secret, enc.ciphertext, enc.key_id));
    }
    let calls: Vec<_> = sealed
        .into_iter()
        .enumerate()
        .map(|(i, (secret, mut ciphertext, key_id))| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let tampered = i % 7 == 3;
                if tampered {
                    let last = ciphertext.len() - 1;
                    ciphertext[last] ^= 1;
                }
                let result = decrypt(&mut client, &ciphertext, &key_id).await;
                (tampered, secret, result)
            })
        })
        .collect();
    let mut refused = 0;
    for call in calls {
        let (tampered, secret, result) = call.await.unwrap();
        if tampered {
            let err = result.expect_err("a tampered ciphertext was decrypted");
            assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
            assert!(err.message().starts_with("keyd: "), "{err:?}");
            refused += 1;
        } else {
            assert_eq!(result.unwrap(), secret);
        }
    }
    assert_eq!(refused, 7);
    // Some of them went to keyd together.
    let metrics = http_get(&metrics_addr, "/metrics");
    let batched: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("coffer_kms_keyd_batched_unwraps_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(batched >= 2, "no Decrypt was batched:\n{metrics}");

    // keyd audited every one of them, one record per Decrypt.
    let audit = std::fs::read_to_string(keyd.data.join("audit.log")).unwrap();
    let unwraps = audit
        .lines()
        .filter(|l| l.contains("\"event\":\"unwrap\""))
        .count();
    assert_eq!(unwraps, 48, "{audit}");
    assert_eq!(
        audit
            .lines()
            .filter(|l| l.contains("\"event\":\"unwrap\"") && l.contains("\"result\":\"error\""))
            .count(),
        7
    );
}

/// Successful unwraps keyd has audited.
fn audited_unwraps(keyd: &Keyd) -> usize {
    common::keyd::audit_records(&keyd.data)
        .iter()
        .filter(|r| r["event"] == "unwrap" && r["result"] == "ok")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_decrypts_skip_keyd_until_its_keyring_changes() {
    let (dir, state) = plugin_dir();
    let mut keyd = Keyd::prepare(&state, &tempfile::tempdir().unwrap().path().join("b"));
    keyd.start();
    let metrics_addr = free_addr().to_string();
    let mut flags = service_flags(&keyd, &keyd.plugin_policy());
    // Long enough that no seed expires during the test: only the keyring change may clear it.
    flags.extend(["--keyd-cache-ttl", "5m", "--metrics-addr", &metrics_addr].map(String::from));
    let plugin = spawn_plugin(dir, &flags);
    plugin.wait_ready().await;
    let mut client = plugin.v2().await;
    let old = encrypt(&mut client, &[4; 32]).await;

    // The API server decrypting one DEK again and again (a restart, several API servers): keyd
    // is asked once.
    let before = audited_unwraps(&keyd);
    for _ in 0..5 {
        let plain = decrypt(&mut client, &old.ciphertext, &old.key_id).await;
        assert_eq!(plain.unwrap(), vec![4; 32]);
    }
    assert_eq!(audited_unwraps(&keyd), before + 1);
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(
        metrics.contains("coffer_kms_keyd_cache_hits_total 4"),
        "{metrics}"
    );
    // Only the same request hits: another KEK id goes to keyd, which refuses it.
    let err = decrypt(&mut client, &old.ciphertext, "coffer-0099-0000000000000000")
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);

    // A change of keyd's keyring (here a rotation; a retirement changes it the same way) makes
    // the plugin forget every seed: the next Decrypt is authorised by keyd again.
    let new_key = keyd.admin().await.rotate(KEYRING).await.unwrap();
    common::wait_for_status(&mut client, |s| s.key_id == new_key).await;
    let before = audited_unwraps(&keyd);
    for _ in 0..3 {
        let plain = decrypt(&mut client, &old.ciphertext, &old.key_id).await;
        assert_eq!(plain.unwrap(), vec![4; 32]);
    }
    assert_eq!(audited_unwraps(&keyd), before + 1);

    // --keyd-cache-ttl 0: every Decrypt goes to keyd.
    let (dir, _) = plugin_dir();
    let mut flags = service_flags(&keyd, &keyd.plugin_policy());
    flags.extend(["--keyd-cache-ttl", "0s"].map(String::from));
    // Another plugin identity: keyd's policy names the first one's, so reuse its state.
    std::fs::remove_dir_all(dir.path().join("state")).unwrap();
    copy_dir(&state, &dir.path().join("state"));
    let uncached = spawn_plugin(dir, &flags);
    uncached.wait_ready().await;
    let mut client = uncached.v2().await;
    let before = audited_unwraps(&keyd);
    for _ in 0..3 {
        let plain = decrypt(&mut client, &old.ciphertext, &old.key_id).await;
        assert_eq!(plain.unwrap(), vec![4; 32]);
    }
    assert_eq!(audited_unwraps(&keyd), before + 3);
    let log = plugin.log_text();
    assert!(!log.contains(&hex::encode([4u8; 32])), "a seed in the log");
}

fn copy_dir(from: &Path, to: &Path) {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

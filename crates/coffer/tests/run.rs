//! `coffer run` as a pod would run it: the real binary on the sim platform, a real `coffer keyd`
//! over mutual attested TLS, sealed values delivered in the environment and in a volume laid
//! out like the kubelet's, `--out` on tmpfs (/dev/shm), and `sh` as the app. The app never
//! prints a plaintext: it copies what it sees into --out, where the test reads it.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use coffer_keyd_client::KeydClient;
use coffer_sealed::bundle::KeyBundle;
use coffer_sealed::{Binding, Location, Scope, SealingKeyPair};
use common::keyd::{
    audit_records, create_keyd_data, free_addr, keyd_policy, location, sim_role_policy,
    write_keyd_policy, KeydProcess,
};
use common::run::output_within;
use common::{coffer_bin, wait_timeout};

/// Plaintexts that must reach the app and nothing else.
const PASSWORD: &str = "pw-9c1e55d0-never-on-the-node";
const CERT: &str = "cert-3b7f0a41-never-on-the-node";
const TOKEN: &str = "token-77aa0e12-never-on-the-node";

/// keyd lets role `app` unseal values found in Secrets `db-*` of namespace `payments`.
const KEYD_CONFIG: &str = "keyrings:
  apps:
    unseal:
      - role: app
        namespaces: [\"payments\"]
        secrets: [\"db-*\"]
";

/// A keyd with keyring `apps`, the policy `coffer run` holds it to, and the sim state of the
/// workload, which keyd's policy gives role `app`.
struct Setup {
    dir: tempfile::TempDir,
    keyd: KeydProcess,
    keyd_policy: PathBuf,
    workload: PathBuf,
    bundle: KeyBundle,
}

impl Setup {
    async fn start() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("keyd");
        create_keyd_data(&data, &["apps"]);
        let workload = dir.path().join("workload");
        let policy = sim_role_policy(dir.path(), "app", &workload);
        let config = dir.path().join("keyd.yaml");
        std::fs::write(&config, KEYD_CONFIG).unwrap();
        let keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &[]);
        let keyd_policy = dir.path().join("keyd-policy.yaml");
        write_keyd_policy(&keyd_policy, &keyd.signer());
        let bundle = fetch_bundle(&keyd).await;
        Setup {
            dir,
            keyd,
            keyd_policy,
            workload,
            bundle,
        }
    }

    fn seal(&self, scope: Scope, at: &Location, plaintext: &str) -> String {
        seal_with(&self.bundle, scope, at, plaintext)
    }

    /// `coffer run` against this keyd, with `extra` flags and `sh -c script` as the app.
    fn command(&self, extra: &[&str], script: &str) -> Command {
        run_command(
            &self.keyd.addr.to_string(),
            &self.keyd_policy,
            &self.workload,
            extra,
            script,
        )
    }
}

/// keyring `apps`'s bundle, as `kubectl coffer` fetches and checks it.
async fn fetch_bundle(keyd: &KeydProcess) -> KeyBundle {
    let policy = Arc::new(keyd_policy(&keyd.signer(), true));
    let options = coffer_attest::VerifyOptions::new(SystemTime::now());
    let mut client = KeydClient::connect_unattested_within(
        keyd.addr,
        policy.clone(),
        options.clone(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let bundle = KeyBundle::from_json(&client.key_bundle("apps").await.unwrap()).unwrap();
    bundle.verify(&policy, &options).unwrap();
    bundle
}

fn seal_with(bundle: &KeyBundle, scope: Scope, at: &Location, plaintext: &str) -> String {
    coffer_sealed::seal(
        bundle.keyring(),
        &bundle.primary().unwrap(),
        &Binding::new(scope, at).unwrap(),
        plaintext.as_bytes(),
    )
    .unwrap()
    .to_text()
}

/// `coffer run` with a clean environment (PATH only; the test adds what the pod would have).
fn run_command(
    keyd: &str,
    keyd_policy: &Path,
    workload: &Path,
    extra: &[&str],
    script: &str,
) -> Command {
    let mut cmd = Command::new(coffer_bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap())
        .args([
            "--log-level",
            "trace",
            "run",
            "--platform",
            "sim",
            "--keyd",
            keyd,
        ])
        .arg("--keyd-policy")
        .arg(keyd_policy)
        .arg("--state-dir")
        .arg(workload)
        .env("COFFER_KEYD_DEADLINE", "20s")
        .args(["--keyd-timeout", "5s"])
        .args(extra)
        .args(["--", "sh", "-c", script]);
    cmd
}

/// A directory on tmpfs for --out, removed when dropped.
fn shm_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("coffer-run-test-")
        .tempdir_in("/dev/shm")
        .unwrap()
}

/// A directory on disk (the target directory), like a node's.
fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Writes `files` into the Secret volume `dir` as the kubelet's AtomicWriter does: a new
/// `..<timestamp>` directory, `..data` renamed over, `KEY -> ..data/KEY`, the old version
/// removed.
fn kubelet_write(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    let version = format!("..2026_12_02_11_00_00.{}", rand::random::<u32>());
    std::fs::create_dir(dir.join(&version)).unwrap();
    for (key, value) in files {
        std::fs::write(dir.join(&version).join(key), value).unwrap();
    }
    symlink(&version, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for (key, _) in files {
        let link = dir.join(key);
        if link.symlink_metadata().is_err() {
            symlink(format!("..data/{key}"), link).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// A spawned `coffer run`, killed if the test fails before it exits (its app would otherwise
/// outlive the test).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            // SIGTERM first: coffer run forwards it, so the app goes too.
            common::signal(self.0.id(), "TERM");
            if wait_timeout(&mut self.0, Duration::from_secs(10)).is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every regular file below `dir` (following no symlinks), with its content.
fn files_below(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.push((entry.path(), std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    out
}

fn assert_no_plaintext(what: &str, haystack: &str) {
    for secret in [PASSWORD, CERT, TOKEN] {
        assert!(
            !haystack.contains(secret),
            "{what} holds a plaintext: {haystack}"
        );
    }
}

fn assert_exit(out: &Output, code: i32, needles: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    for needle in needles {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_and_volume_values_reach_the_app_and_the_node_holds_only_ciphertext() {
    let s = Setup::start().await;
    let volume = s.dir.path().join("pod/volumes/db-main");
    let out = shm_dir();
    let password = location("payments", "db-main", "password");
    let cert = location("payments", "db-main", "tls.crt");
    let token = location("payments", "db-main", "token");
    kubelet_write(
        &volume,
        &[
            ("tls.crt", &s.seal(Scope::Strict, &cert, CERT)),
            // Namespace scope: the Secret comes from --files db-main=DIR.
            ("token", &s.seal(Scope::Namespace, &token, TOKEN)),
            ("config.yaml", "plain: true\n"),
        ],
    );
    let sealed_password = s.seal(Scope::Strict, &password, PASSWORD);
    let script = r#"printf %s "$DB_PASSWORD" > "$OUT/app-env"; printf %s "$PLAIN" > "$OUT/app-plain"; exit 7"#;
    let mut cmd = s.command(
        &[
            "--env",
            "--files",
            &format!("db-main={}", volume.display()),
            "--out",
            out.path().to_str().unwrap(),
            "--namespace",
            "payments",
        ],
        script,
    );
    cmd.env("DB_PASSWORD", &sealed_password)
        .env("PLAIN", "not-sealed")
        .env("OUT", out.path());
    let output = output_within(&mut cmd);
    // The app's own exit code comes back.
    let stderr = assert_exit(&output, 7, &["unsealed the pod's values"]);
    assert_no_plaintext("coffer run's stderr", &stderr);
    assert_no_plaintext("coffer run's stdout", &text(&output.stdout));

    assert_eq!(
        std::fs::read_to_string(out.path().join("app-env")).unwrap(),
        PASSWORD
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("app-plain")).unwrap(),
        "not-sealed"
    );
    let copy = out.path().join("db-main");
    assert_eq!(std::fs::read_to_string(copy.join("tls.crt")).unwrap(), CERT);
    assert_eq!(std::fs::read_to_string(copy.join("token")).unwrap(), TOKEN);
    assert_eq!(
        std::fs::read_to_string(copy.join("config.yaml")).unwrap(),
        "plain: true\n"
    );
    // The kubelet's layout: KEY -> ..data/KEY, ..data -> ..<timestamp>, files 0400.
    assert_eq!(
        std::fs::read_link(copy.join("token")).unwrap(),
        Path::new("..data/token")
    );
    let version = std::fs::read_link(copy.join("..data")).unwrap();
    assert!(version.to_str().unwrap().starts_with("..20"), "{version:?}");
    let mode = std::fs::metadata(copy.join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400);

    // What the node can read — the volume, the test's state, keyd's files and logs — holds
    // ciphertext only.
    for (path, content) in files_below(s.dir.path()) {
        assert_no_plaintext(&path.display().to_string(), &text(&content));
    }
    // keyd audited each value with its location and binding.
    let records = audit_records(&s.keyd.data);
    for at in [
        "payments/db-main/password",
        "payments/db-main/tls.crt",
        "payments/db-main/token",
    ] {
        assert!(
            records
                .iter()
                .any(|r| r["location"] == at && r["result"] == "ok" && r["binding"].is_string()),
            "no audit record for {at}: {records:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubelet_swap_of_the_volume_replaces_the_files_in_out() {
    let s = Setup::start().await;
    let volume = s.dir.path().join("db-main");
    let out = shm_dir();
    let token = location("payments", "db-main", "token");
    kubelet_write(&volume, &[("token", &s.seal(Scope::Strict, &token, TOKEN))]);
    // The app runs until the test tells it to stop.
    let script = r#"while [ ! -e "$OUT/stop" ]; do sleep 0.05; done"#;
    let mut cmd = s.command(
        &[
            "--files",
            volume.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
            "--namespace",
            "payments",
            "--watch-interval",
            "100ms",
            "--on-change",
            "none",
        ],
        script,
    );
    let log = s.dir.path().join("run.log");
    let mut child = Running(
        cmd.env("OUT", out.path())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let file = out.path().join("db-main/token");
    let wait_for = |expected: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::fs::read_to_string(&file).ok().as_deref() != Some(expected) {
            assert!(
                Instant::now() < deadline,
                "--out never held the expected value: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(TOKEN);
    let first = std::fs::read_link(out.path().join("db-main/..data")).unwrap();

    // The Secret is updated: a new value for `token`, and a new key.
    let password = location("payments", "db-main", "password");
    kubelet_write(
        &volume,
        &[
            ("token", &s.seal(Scope::Strict, &token, CERT)),
            ("password", &s.seal(Scope::Strict, &password, PASSWORD)),
        ],
    );
    wait_for(CERT);
    assert_eq!(
        std::fs::read_to_string(out.path().join("db-main/password")).unwrap(),
        PASSWORD
    );
    assert!(
        !out.path().join("db-main").join(first).exists(),
        "the old version stays"
    );

    std::fs::write(out.path().join("stop"), "").unwrap();
    assert_eq!(wait_timeout(&mut child.0, Duration::from_secs(30)), Some(0));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(stderr.contains("mounted Secret changed"), "{stderr}");
    assert_no_plaintext("coffer run's stderr", &stderr);
}

#[test]
fn an_out_on_disk_is_refused_unless_explicitly_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nroles: []\n").unwrap();
    let disk = disk_dir();
    let flags = [
        "--out",
        disk.path().to_str().unwrap(),
        "--namespace",
        "payments",
    ];
    // Nothing sealed, so keyd (unreachable here) is never asked.
    let refused = output_within(&mut run_command(
        "127.0.0.1:1",
        &policy,
        &dir.path().join("state"),
        &flags,
        "echo started",
    ));
    assert_exit(
        &refused,
        78,
        &[
            "not TEE-private memory",
            "medium: Memory",
            "--allow-unprotected-out",
        ],
    );
    assert!(!text(&refused.stdout).contains("started"));

    let mut allowed = flags.to_vec();
    allowed.push("--allow-unprotected-out");
    let out = output_within(&mut run_command(
        "127.0.0.1:1",
        &policy,
        &dir.path().join("state"),
        &allowed,
        "echo started",
    ));
    assert_exit(&out, 0, &["WRITING PLAINTEXT SECRETS", "ext2/3/4"]);
    assert!(text(&out.stdout).contains("started"));
}

#[test]
fn without_a_namespace_coffer_run_says_how_to_add_the_downward_api() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nroles: []\n").unwrap();
    let missing = dir.path().join("no-such-namespace-file");
    let out = output_within(&mut run_command(
        "127.0.0.1:1",
        &policy,
        &dir.path().join("state"),
        &["--env", "--namespace-file", missing.to_str().unwrap()],
        "echo started",
    ));
    assert_exit(
        &out,
        78,
        &["POD_NAMESPACE", "fieldPath: metadata.namespace"],
    );
    assert!(!text(&out.stdout).contains("started"));
}

#[test]
fn files_without_out_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nroles: []\n").unwrap();
    let out = output_within(&mut run_command(
        "127.0.0.1:1",
        &policy,
        &dir.path().join("state"),
        &["--files", "/etc", "--namespace", "payments"],
        "echo started",
    ));
    assert_exit(&out, 78, &["--files needs --out"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_value_is_named_and_the_app_does_not_start_unless_allow_missing() {
    let s = Setup::start().await;
    let out = shm_dir();
    let marker = out.path().join("started");
    // No grant covers Secret `api-keys`.
    let elsewhere = location("payments", "api-keys", "token");
    let sealed = s.seal(Scope::Strict, &elsewhere, TOKEN);
    let granted = s.seal(
        Scope::Strict,
        &location("payments", "db-main", "password"),
        PASSWORD,
    );
    let script = format!(
        r#"touch {m}; [ -z "${{API_TOKEN+x}}" ] && touch {m}.no-token; [ "$DB_PASSWORD" = "{PASSWORD}" ] && touch {m}.password"#,
        m = marker.display()
    );
    let run = |extra: &[&str]| {
        let mut flags = vec!["--env", "--namespace", "payments"];
        flags.extend_from_slice(extra);
        let mut cmd = s.command(&flags, &script);
        cmd.env("API_TOKEN", &sealed).env("DB_PASSWORD", &granted);
        output_within(&mut cmd)
    };
    let refused = run(&[]);
    let stderr = assert_exit(
        &refused,
        77,
        &[
            "payments/api-keys",
            "\"token\"",
            "API_TOKEN",
            "no grant under keyrings.apps.unseal",
            "--allow-missing",
        ],
    );
    assert_no_plaintext("coffer run's stderr", &stderr);
    assert!(!marker.exists(), "the app started");
    assert!(
        audit_records(&s.keyd.data)
            .iter()
            .any(|r| r["location"] == "payments/api-keys/token" && r["result"] == "denied"),
        "the refusal was not audited"
    );

    let allowed = run(&["--allow-missing"]);
    let stderr = assert_exit(&allowed, 0, &["--allow-missing", "API_TOKEN"]);
    assert_no_plaintext("coffer run's stderr", &stderr);
    assert!(marker.exists(), "the app did not start");
    assert!(
        Path::new(&format!("{}.no-token", marker.display())).exists(),
        "the refused variable reached the app"
    );
    assert!(Path::new(&format!("{}.password", marker.display())).exists());
}

#[test]
fn an_unreachable_keyd_is_retried_until_the_deadline_then_exits_69() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nroles: []\n").unwrap();
    let at = location("payments", "db-main", "password");
    let key = SealingKeyPair::generate().unwrap();
    let sealed = coffer_sealed::seal(
        "apps",
        key.public(),
        &Binding::new(Scope::Strict, &at).unwrap(),
        PASSWORD.as_bytes(),
    )
    .unwrap()
    .to_text();
    let addr = free_addr().to_string();
    let mut cmd = run_command(
        &addr,
        &policy,
        &dir.path().join("state"),
        &[
            "--env",
            "--namespace",
            "payments",
            "--keyd-deadline",
            "1500ms",
        ],
        "echo started",
    );
    cmd.env("DB_PASSWORD", sealed);
    let out = output_within(&mut cmd);
    let stderr = assert_exit(
        &out,
        69,
        &[
            &addr,
            "--keyd-deadline",
            "Kubernetes will restart the pod",
            "retrying",
        ],
    );
    assert!(!text(&out.stdout).contains("started"));
    assert_no_plaintext("coffer run's stderr", &stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyd_that_starts_late_is_waited_for() {
    let mut s = Setup::start().await;
    let sealed = s.seal(
        Scope::Strict,
        &location("payments", "db-main", "password"),
        PASSWORD,
    );
    assert_eq!(s.keyd.terminate(), Some(0));
    let out = shm_dir();
    let script = r#"printf %s "$DB_PASSWORD" > "$OUT/app-env""#;
    let log = s.dir.path().join("run.log");
    let mut cmd = s.command(&["--env", "--namespace", "payments"], script);
    let mut child = Running(
        cmd.env("DB_PASSWORD", &sealed)
            .env("OUT", out.path())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    // keyd comes back on the same address once coffer run has been retrying.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log).unwrap().contains("retrying") {
        assert!(Instant::now() < deadline, "coffer run never retried");
        std::thread::sleep(Duration::from_millis(20));
    }
    let policy = s.dir.path().join("policy.yaml");
    let config = s.dir.path().join("keyd.yaml");
    let _keyd = KeydProcess::start(&s.keyd.data, s.keyd.addr, &policy, &config, &[]);
    let code = wait_timeout(&mut child.0, Duration::from_secs(30));
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(out.path().join("app-env")).unwrap(),
        PASSWORD
    );
    assert_no_plaintext("coffer run's stderr", &stderr);
}

#[test]
fn with_nothing_sealed_the_app_starts_without_keyd() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nroles: []\n").unwrap();
    let volume = dir.path().join("config");
    kubelet_write(&volume, &[("settings", "plain")]);
    let out = shm_dir();
    let mut cmd = run_command(
        // Nothing listens here; a long deadline would show if coffer run waited for it.
        &free_addr().to_string(),
        &policy,
        &dir.path().join("state"),
        &[
            "--env",
            "--files",
            volume.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
            "--namespace",
            "payments",
            "--keyd-deadline",
            "1h",
        ],
        r#"printf %s "$GREETING"; exit 3"#,
    );
    cmd.env("GREETING", "hello");
    let output = output_within(&mut cmd);
    assert_exit(&output, 3, &["no sealed value found"]);
    assert_eq!(text(&output.stdout), "hello");
    assert_eq!(
        std::fs::read_to_string(out.path().join("config/settings")).unwrap(),
        "plain"
    );
}

#[test]
fn help_explains_the_model_the_rules_and_the_exit_codes() {
    let out = common::coffer(&["run", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for needle in [
        "--env-source VAR=SECRET/KEY",
        "--files SECRET=DIR",
        "POD_NAMESPACE",
        "medium: Memory",
        "COFFER_RUN_PRIVATE_DIRS",
        "69",
        "77",
        "78",
        "126",
        "127",
        "128+N",
        "needs a restart",
        "-- /app/server",
    ] {
        assert!(help.contains(needle), "no {needle:?} in coffer run --help");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secret_is_signalled_to_the_app_with_on_change() {
    let s = Setup::start().await;
    let volume = s.dir.path().join("db-main");
    let out = shm_dir();
    let token = location("payments", "db-main", "token");
    kubelet_write(&volume, &[("token", &s.seal(Scope::Strict, &token, TOKEN))]);
    // On SIGHUP the app copies what it reads into --out, where the test looks.
    let script = r#"trap 'cat "$OUT/db-main/token" > "$OUT/seen"' HUP; touch "$OUT/ready"
        while [ ! -e "$OUT/stop" ]; do sleep 0.05; done"#;
    let log = s.dir.path().join("run.log");
    let mut child = Running(
        s.command(
            &[
                "--files",
                volume.to_str().unwrap(),
                "--out",
                out.path().to_str().unwrap(),
                "--namespace",
                "payments",
                "--watch-interval",
                "100ms",
                "--on-change",
                "signal:HUP",
            ],
            script,
        )
        .env("OUT", out.path())
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap(),
    );
    let wait_for = |path: &Path, expected: Option<&str>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let content = std::fs::read_to_string(path).ok();
            if content.is_some() && (expected.is_none() || content.as_deref() == expected) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never appeared: {}",
                path.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for(&out.path().join("ready"), None);
    kubelet_write(&volume, &[("token", &s.seal(Scope::Strict, &token, CERT))]);
    wait_for(&out.path().join("seen"), Some(CERT));
    std::fs::write(out.path().join("stop"), "").unwrap();
    assert_eq!(wait_timeout(&mut child.0, Duration::from_secs(30)), Some(0));
    assert_no_plaintext(
        "coffer run's stderr",
        &std::fs::read_to_string(&log).unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyd_the_policy_does_not_trust_is_refused_with_77() {
    let s = Setup::start().await;
    let sealed = s.seal(
        Scope::Strict,
        &location("payments", "db-main", "password"),
        PASSWORD,
    );
    // A policy that names another signer than keyd's.
    let other = s.dir.path().join("other-policy.yaml");
    write_keyd_policy(&other, &common::keyd::sim_signer(&s.workload));
    let mut cmd = run_command(
        &s.keyd.addr.to_string(),
        &other,
        &s.workload,
        &["--env", "--namespace", "payments"],
        "echo started",
    );
    cmd.env("DB_PASSWORD", sealed);
    let out = output_within(&mut cmd);
    assert_exit(&out, 77, &["not trusted", &s.keyd.addr.to_string()]);
    assert!(!text(&out.stdout).contains("started"));
}

#[test]
fn an_app_that_does_not_exist_exits_127() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nroles: []\n").unwrap();
    let mut cmd = Command::new(coffer_bin());
    cmd.env_clear()
        .args([
            "run",
            "--platform",
            "sim",
            "--keyd",
            "127.0.0.1:1",
            "--namespace",
            "ns",
        ])
        .arg("--keyd-policy")
        .arg(&policy)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .args(["--", "/no/such/app"]);
    assert_exit(&output_within(&mut cmd), 127, &["/no/such/app"]);
}

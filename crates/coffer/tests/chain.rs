//! The whole chain on one machine, every hop a real process (sim platform): `coffer keyd serve`
//! → `kubectl coffer fetch-key` pins its key bundle → `kubectl coffer seal` writes a Secret
//! manifest → the values delivered as the kubelet would (environment variables and a `..data`
//! Secret volume) → `coffer run` attests to keyd, unseals, and starts the app, which sees the
//! plaintext while every file the node could read holds only `coffer.v1.` values. Each way the
//! chain must break is refused with its reason and audited; and `coffer attest` verifies the
//! evidence of every hop, whose measurements are the ones keyd's audit records name.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use coffer_sealed::SealedValue;
use common::keyd::{
    audit_records, create_keyd_data, free_addr, sim_signer, write_keyd_policy, KeydProcess,
};
use common::kubelet::{Secret, SecretVolume, DEFAULT_MODE};
use common::run::output_within;
use common::{coffer, coffer_bin, kubectl_coffer_bin, Plugin};
use sha2::{Digest, Sha256};

/// The Secret's plaintext values; none may ever reach a file the node can read.
const VALUES: [(&str, &str); 3] = [
    ("password", "chain-pw-9d41f0e2"),
    ("username", "chain-user-5c7a"),
    ("url", "postgres://chain-db-3e8b.internal:5432/pay"),
];
/// The keyring the Secret is sealed to.
const KEYRING: &str = "apps";
/// Exit codes of `coffer run` (crates/run/src/error.rs).
const EXIT_UNAVAILABLE: i32 = 69;
const EXIT_REFUSED: i32 = 77;

/// Role `app` may unseal Secret `db` in namespace `payments`; role `kms` (the plugin) may wrap
/// and unwrap.
const KEYD_CONFIG: &str = "keyrings:
  apps:
    wrap: [kms]
    unwrap: [kms]
    status: [kms]
    unseal:
      - role: app
        namespaces: [\"payments\"]
        secrets: [\"db\"]
";

/// SHA-256 of a file, hex: a sim workload's measurement when the file is its executable.
fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// What `sha256sum` prints for `text` read from stdin.
fn sha256sum_line(text: &str) -> String {
    format!("{}  -\n", hex::encode(Sha256::digest(text.as_bytes())))
}

/// A directory under /dev/shm (tmpfs: TEE-private memory as `coffer run` accepts it for
/// `--out`), removed when dropped.
struct ShmDir(PathBuf);

impl ShmDir {
    fn new() -> ShmDir {
        let path = PathBuf::from(format!("/dev/shm/coffer-chain-{}", rand::random::<u64>()));
        std::fs::create_dir(&path).unwrap();
        ShmDir(path)
    }
}

impl Drop for ShmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything the node holds: keyd (its data, log and policies), the pinned bundle, the
/// manifests and volumes, the workload's sim state and `coffer run`'s stderr all live in `dir`.
struct Chain {
    dir: tempfile::TempDir,
    keyd: KeydProcess,
    /// The policy keyd's evidence must satisfy (for kubectl coffer, coffer run, the plugin).
    keyd_policy: PathBuf,
    /// The policy keyd holds its callers to.
    callers_policy: PathBuf,
    /// The pinned key bundle.
    bundle: PathBuf,
    /// The kms plugin's sim state (its signer gives it role `kms`).
    plugin_state: PathBuf,
}

impl Chain {
    /// keyd with [`KEYD_CONFIG`], whose callers' policy gives role `kms` to the plugin's sim
    /// signer and role `app` to the `coffer` executable's measurement, simulation allowed or
    /// not; and the bundle pinned with `kubectl coffer fetch-key`.
    fn start(allow_simulation: bool) -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("keyd");
        create_keyd_data(&data, &[KEYRING]);
        let plugin_state = dir.path().join("plugin-state");
        let callers_policy = dir.path().join("callers-policy.yaml");
        std::fs::write(
            &callers_policy,
            format!(
                "version: 1\nallow_simulation: {allow_simulation}\nroles:\n  - name: kms\n    sim: {{ signer: [\"{}\"] }}\n  - name: app\n    sim: {{ measurement: [\"{}\"] }}\n",
                sim_signer(&plugin_state),
                sha256_file(Path::new(coffer_bin()))
            ),
        )
        .unwrap();
        let config = dir.path().join("keyd.yaml");
        std::fs::write(&config, KEYD_CONFIG).unwrap();
        let keyd = KeydProcess::start(&data, free_addr(), &callers_policy, &config, &[]);
        let keyd_policy = dir.path().join("keyd-policy.yaml");
        write_keyd_policy(&keyd_policy, &keyd.signer());
        let bundle = dir.path().join("bundle.json");
        let chain = Chain {
            dir,
            keyd,
            keyd_policy,
            callers_policy,
            bundle,
            plugin_state,
        };
        chain.kubectl_ok(&[
            "coffer",
            "fetch-key",
            "--keyd",
            &chain.keyd.addr.to_string(),
            "--keyring",
            KEYRING,
            "--policy",
            chain.keyd_policy.to_str().unwrap(),
            "-o",
            chain.bundle.to_str().unwrap(),
        ]);
        chain
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `kubectl <args>`, the plugin found through kubectl's plugin mechanism; panics with its
    /// stderr unless it succeeds; returns its stdout.
    fn kubectl_ok(&self, args: &[&str]) -> String {
        let plugin_dir = kubectl_coffer_bin().parent().unwrap().to_path_buf();
        let out = output_within(
            Command::new("kubectl")
                .args(args)
                .env(
                    "PATH",
                    format!(
                        "{}:{}",
                        plugin_dir.display(),
                        std::env::var("PATH").unwrap_or_default()
                    ),
                )
                .env("KUBECONFIG", "/nonexistent/kubeconfig"),
        );
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `kubectl coffer seal generic NAME -n NAMESPACE --from-literal …` of `values` from the
    /// pinned bundle (strict scope); writes the manifest to the node and returns its path.
    fn seal(&self, namespace: &str, name: &str, values: &[(&str, &str)]) -> PathBuf {
        let literals: Vec<String> = values
            .iter()
            .map(|(k, v)| format!("--from-literal={k}={v}"))
            .collect();
        let mut args = vec!["coffer", "seal", "generic", name, "-n", namespace];
        args.extend(literals.iter().map(String::as_str));
        args.extend(["--key-bundle", self.bundle.to_str().unwrap()]);
        let manifest = self.kubectl_ok(&args);
        let path = self.path(&format!("{namespace}-{name}.yaml"));
        std::fs::write(&path, manifest).unwrap();
        path
    }

    /// One value sealed with `kubectl coffer seal --raw` for `namespace/secret/key`.
    fn seal_raw(&self, namespace: &str, secret: &str, key: &str, plaintext: &str) -> String {
        let out = self.kubectl_ok(&[
            "coffer",
            "seal",
            "--raw",
            "-n",
            namespace,
            "--name",
            secret,
            "--key",
            key,
            "--from-literal",
            &format!("{key}={plaintext}"),
            "--key-bundle",
            self.bundle.to_str().unwrap(),
        ]);
        out.trim().to_string()
    }

    /// `coffer run` (the executable `bin`) as the first process of a container in namespace
    /// `payments`, against this chain's keyd: see [`Chain::run_against`].
    fn run(
        &self,
        bin: &Path,
        name: &str,
        env: &[(String, String)],
        flags: &[&str],
        out: &Path,
        script: &str,
    ) -> Output {
        let keyd = self.keyd.addr.to_string();
        self.run_against(&keyd, "20s", bin, name, env, flags, out, script)
    }

    /// `coffer run` (the executable `bin`) as the first process of container `name` in
    /// namespace `payments`, with keyd at `keyd` and `--keyd-deadline deadline`: the
    /// container's own sim state, `env` as the kubelet set it, the Downward API's POD_NAMESPACE,
    /// `flags`, then `sh -c script` with COFFER_TEST_OUT set to `out`. Its output is kept on
    /// the node, where it must hold no plaintext either.
    #[allow(clippy::too_many_arguments)]
    fn run_against(
        &self,
        keyd: &str,
        deadline: &str,
        bin: &Path,
        name: &str,
        env: &[(String, String)],
        flags: &[&str],
        out: &Path,
        script: &str,
    ) -> Output {
        let mut command = Command::new(bin);
        command
            .args(["--log-level", "debug", "run", "--platform", "sim"])
            .arg("--state-dir")
            .arg(self.path(&format!("workload-{name}")))
            .args(["--keyd", keyd, "--keyd-deadline", deadline])
            .arg("--keyd-policy")
            .arg(&self.keyd_policy)
            .args(flags)
            .args(["--", "sh", "-c", script])
            .env("POD_NAMESPACE", "payments")
            .env("COFFER_TEST_OUT", out)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let output = output_within(&mut command);
        std::fs::write(self.path(&format!("run-{name}.stdout")), &output.stdout).unwrap();
        std::fs::write(self.path(&format!("run-{name}.stderr")), &output.stderr).unwrap();
        output
    }

    /// Every regular file under the node's directory (symlinks not followed).
    fn node_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        let mut stack = vec![self.dir.path().to_path_buf()];
        // keyd's log is written beside its data directory, inside the node's directory.
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let entry = entry.unwrap();
                let kind = entry.file_type().unwrap();
                if kind.is_dir() {
                    stack.push(entry.path());
                } else if kind.is_file() {
                    files.push(entry.path());
                }
            }
        }
        files
    }

    /// No file of the node holds any of `plaintexts`, and those it has that hold sealed values
    /// include the manifest, the volume, keyd's data and log, and `coffer run`'s stderr.
    fn assert_node_holds_no_plaintext(&self, plaintexts: &[&str]) {
        let files = self.node_files();
        assert!(files.len() > 5, "{files:?}");
        for file in &files {
            let bytes = std::fs::read(file).unwrap();
            for plain in plaintexts {
                assert!(
                    !bytes.windows(plain.len()).any(|w| w == plain.as_bytes()),
                    "{} holds a plaintext",
                    file.display()
                );
            }
        }
    }

    /// The latest audit record of an unseal at `location` with `result`.
    fn unseal_record(&self, location: &str, result: &str) -> serde_json::Value {
        let records = audit_records(&self.keyd.data);
        records
            .iter()
            .rev()
            .find(|r| r["event"] == "unseal" && r["location"] == location && r["result"] == result)
            .unwrap_or_else(|| panic!("no unseal/{result} record at {location}: {records:#?}"))
            .clone()
    }

    /// Asserts `coffer run` refused to start the app (exit 77, no `started` marker in `out`)
    /// with a message holding every one of `needles`, and that keyd audited the refusal of
    /// the value found at `location` with `result`, the value's `binding` and the measurement of
    /// the `coffer` executable.
    #[allow(clippy::too_many_arguments)]
    fn assert_value_refused(
        &self,
        run: &Output,
        out: &Path,
        needles: &[&str],
        location: &str,
        result: &str,
        binding: &str,
    ) {
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(EXIT_REFUSED), "{stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
        }
        assert!(!out.join("started").exists(), "the app was started");
        let record = self.unseal_record(location, result);
        assert_eq!(record["binding"], binding, "{record}");
        assert_eq!(
            record["caller"]["measurement"],
            sha256_file(Path::new(coffer_bin())).as_str(),
            "{record}"
        );
        assert!(
            stderr.contains(record["reason"].as_str().unwrap()),
            "keyd's reason is not the one coffer run gives: {record} vs {stderr}"
        );
    }
}

/// The app of the chain: writes `sha256sum` of every value it sees (environment, then files
/// under --out), so the test can compare without the plaintext ever touching the disk.
const APP: &str = r#"set -e
o="$COFFER_TEST_OUT"
{
  printf %s "$PASSWORD" | sha256sum
  printf %s "$DB_username" | sha256sum
  printf %s "$DB_url" | sha256sum
  sha256sum < "$o/db/password"
  sha256sum < "$o/db/url"
  printf %s "$DB_host" | sha256sum
  sha256sum < "$o/db/host"
} > "$o/seen"
"#;

/// The Secret's delivery to the container: `PASSWORD` from a `secretKeyRef` to key `password`,
/// and every key as `DB_<key>` from `envFrom` with prefix `DB_`.
fn kubelet_env(secret: &Secret) -> Vec<(String, String)> {
    let mut env = vec![("PASSWORD".to_string(), secret.key_ref("password"))];
    env.extend(secret.env_from("DB_"));
    env
}

#[test]
fn sealed_secret_reaches_the_app_in_plaintext_and_the_node_only_ever_holds_ciphertext() {
    let chain = Chain::start(true);

    // The pinned bundle verifies offline, and names keyd's measurement (keyd runs the same
    // coffer executable).
    let coffer_measurement = sha256_file(Path::new(coffer_bin()));
    let out = coffer(&[
        "attest",
        "bundle",
        chain.bundle.to_str().unwrap(),
        "--policy",
        chain.keyd_policy.to_str().unwrap(),
        "--keyring",
        KEYRING,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["tee"], "sim", "{claims}");
    assert!(
        serde_json::to_string(&claims)
            .unwrap()
            .contains(&coffer_measurement),
        "{claims}"
    );
    assert!(
        stderr.contains("policy role keyd") && stderr.contains("keyring \"apps\""),
        "{stderr}"
    );

    // kubectl coffer seal → the manifest the user commits and applies: only sealed values.
    let manifest = chain.seal("payments", "db", &VALUES);
    let secret = Secret::load(&manifest);
    assert_eq!(
        secret.data.keys().collect::<Vec<_>>(),
        ["password", "url", "username"]
    );
    for value in secret.data.values() {
        let value = SealedValue::parse(std::str::from_utf8(value).unwrap()).unwrap();
        assert_eq!(value.keyring(), KEYRING);
    }

    // A value that is not secret, added unsealed to the manifest, is delivered as it is.
    let mut secret = secret;
    secret
        .data
        .insert("host".into(), b"db.payments.svc".to_vec());

    // The kubelet's delivery: a Secret volume and environment variables, all ciphertext.
    let volume = SecretVolume::project(&chain.path("volumes/db"), &secret, DEFAULT_MODE);
    assert_eq!(volume.files(), secret.data);
    let env = kubelet_env(&secret);
    assert!(env
        .iter()
        .all(|(k, v)| v.starts_with("coffer.v1.") || k == "DB_host"));

    let out_dir = ShmDir::new();
    let files = format!("db={}", volume.dir.display());
    let out = chain.run(
        Path::new(coffer_bin()),
        "app",
        &env,
        &[
            "--env",
            "--env-source",
            "PASSWORD=db/password",
            "--files",
            &files,
            "--out",
            out_dir.0.to_str().unwrap(),
        ],
        &out_dir.0,
        APP,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plain: BTreeMap<&str, &str> = VALUES.into_iter().collect();
    let expected: String = [
        plain["password"],
        plain["username"],
        plain["url"],
        plain["password"],
        plain["url"],
        "db.payments.svc",
        "db.payments.svc",
    ]
    .iter()
    .map(|p| sha256sum_line(p))
    .collect();
    assert_eq!(
        std::fs::read_to_string(out_dir.0.join("seen")).unwrap(),
        expected
    );
    // Unsealed files are readable by their owner only; the node's volume kept the kubelet's
    // mode.
    for key in ["password", "username", "url"] {
        let mode = |path: PathBuf| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions())
                & 0o777
        };
        assert_eq!(mode(out_dir.0.join("db").join(key)), 0o400, "{key}");
        assert_eq!(mode(volume.dir.join(key)), DEFAULT_MODE, "{key}");
    }

    // keyd audited each value with where it was found, its binding and the workload's
    // measurement: that of the coffer executable that ran.
    for key in ["password", "username", "url"] {
        let record = chain.unseal_record(&format!("payments/db/{key}"), "ok");
        assert_eq!(record["binding"], format!("strict payments/db/{key}"));
        assert_eq!(record["caller"]["measurement"], coffer_measurement.as_str());
        assert_eq!(record["caller"]["role"], "app");
    }

    // The workload's evidence, verified offline against keyd's callers' policy, maps to role
    // app with the measurement keyd audited.
    let evidence = chain.path("workload-evidence.json");
    let out = coffer(&[
        "attest",
        "evidence",
        "--platform",
        "sim",
        "--state-dir",
        chain.path("workload-app").to_str().unwrap(),
        "--output",
        evidence.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let out = coffer(&[
        "attest",
        "verify",
        "--evidence",
        evidence.to_str().unwrap(),
        "--policy",
        chain.callers_policy.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("policy: role app"),
        "{stderr}"
    );
    let claims = String::from_utf8_lossy(&out.stdout);
    assert!(claims.contains(&coffer_measurement), "{claims}");

    chain.assert_node_holds_no_plaintext(&VALUES.map(|(_, v)| v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kms_plugin_hop_is_attested_and_audited_with_its_verified_measurement() {
    let chain = Chain::start(true);
    let dir = tempfile::tempdir().unwrap();
    // The plugin uses the state whose signer keyd's policy names.
    std::os::unix::fs::symlink(&chain.plugin_state, dir.path().join("state")).unwrap();
    let addr = chain.keyd.addr.to_string();
    let mut plugin = Plugin::spawn_service_in(
        dir,
        &[
            "--keyd",
            &addr,
            "--keyd-keyring",
            KEYRING,
            "--keyd-policy",
            chain.keyd_policy.to_str().unwrap(),
        ],
    );
    plugin.wait_ready().await;
    let mut v2 = plugin.v2().await;
    let encrypted = common::encrypt(&mut v2, b"dek-of-the-chain").await;
    assert_eq!(
        common::decrypt(&mut v2, &encrypted.ciphertext, &encrypted.key_id)
            .await
            .unwrap(),
        b"dek-of-the-chain"
    );
    plugin.terminate();

    let evidence = chain.path("plugin-evidence.json");
    let out = coffer(&[
        "attest",
        "evidence",
        "--platform",
        "sim",
        "--state-dir",
        chain.plugin_state.to_str().unwrap(),
        "--output",
        evidence.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let out = coffer(&[
        "attest",
        "verify",
        "--evidence",
        evidence.to_str().unwrap(),
        "--policy",
        chain.callers_policy.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("policy: role kms"),
        "{stderr}"
    );
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let verified = serde_json::to_string(&claims).unwrap();
    let records = audit_records(&chain.keyd.data);
    let wraps: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["event"] == "wrap" && r["result"] == "ok")
        .collect();
    assert!(!wraps.is_empty(), "{records:#?}");
    for record in wraps {
        assert_eq!(record["caller"]["role"], "kms", "{record}");
        let measurement = record["caller"]["measurement"].as_str().unwrap();
        assert!(verified.contains(measurement), "{record} vs {claims}");
    }
}

#[test]
fn coffer_attest_bundle_names_what_fails() {
    let chain = Chain::start(true);
    let bundle = chain.bundle.to_str().unwrap();
    let attest = |file: &str, policy: &Path, extra: &[&str]| {
        let mut args = vec![
            "attest",
            "bundle",
            file,
            "--policy",
            policy.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = coffer(&args);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // Another keyd's signer: the policy's denial, naming the rule.
    let other = chain.path("other-keyd-policy.yaml");
    write_keyd_policy(&other, &"ab".repeat(32));
    let (code, err) = attest(bundle, &other, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("does not verify") && err.contains("do not seal to it"),
        "{err}"
    );

    // Simulation refused by a production policy.
    let production = chain.path("production-policy.yaml");
    let text = std::fs::read_to_string(&chain.keyd_policy).unwrap();
    std::fs::write(
        &production,
        text.replace("allow_simulation: true", "allow_simulation: false"),
    )
    .unwrap();
    let (code, err) = attest(bundle, &production, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("allow_simulation is false"), "{err}");

    // Another keyring than asked for.
    let (code, err) = attest(bundle, &chain.keyd_policy, &["--keyring", "payments"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("payments") && err.contains("apps"), "{err}");

    // A key swapped in after keyd attested the bundle: the evidence no longer commits to it.
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&chain.bundle).unwrap()).unwrap();
    json["expires"] = "2099-01-01T00:00:00Z".into();
    let forged = chain.path("forged-bundle.json");
    std::fs::write(&forged, serde_json::to_vec(&json).unwrap()).unwrap();
    let (code, err) = attest(forged.to_str().unwrap(), &chain.keyd_policy, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("forged-bundle.json"), "{err}");

    // Not a bundle at all.
    let (code, err) = attest(chain.keyd_policy.to_str().unwrap(), &chain.keyd_policy, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("keyd-policy.yaml"), "{err}");

    // And the real one passes, with the policy that names keyd.
    let (code, err) = attest(bundle, &chain.keyd_policy, &["--keyring", KEYRING]);
    assert_eq!(code, Some(0), "{err}");
}

/// An app that only marks that it started.
const MARK_STARTED: &str = r#"touch "$COFFER_TEST_OUT/started""#;

/// A Secret `payments/db` holding `values` (already sealed) as the API server would store it.
fn payments_db(values: &[(&str, &str)]) -> Secret {
    Secret {
        namespace: "payments".into(),
        name: "db".into(),
        data: values
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
    }
}

#[test]
fn values_sealed_for_another_place_or_tampered_are_refused_with_the_reason_and_audited() {
    let chain = Chain::start(true);
    let out = ShmDir::new();
    let coffer = Path::new(coffer_bin());
    let secrets = [
        "moved-ns-0a1b",
        "moved-secret-2c3d",
        "moved-key-4e5f",
        "tampered-6a7b",
    ];

    // Sealed for namespace shop, copied into payments' Secret db: delivered by envFrom.
    let shop = Secret::load(&chain.seal("shop", "db", &[("password", secrets[0])]));
    let env = payments_db(&[("password", &shop.key_ref("password"))]).env_from("DB_");
    let run = chain.run(coffer, "ns", &env, &["--env"], &out.0, MARK_STARTED);
    chain.assert_value_refused(
        &run,
        &out.0,
        &[
            "DB_password",
            "db",
            "password",
            "may not be used at payments/db/password",
        ],
        "payments/db/password",
        "denied",
        "strict shop/db/password",
    );

    // Sealed for Secret cache, mounted as Secret db's volume.
    let moved = chain.seal_raw("payments", "cache", "password", secrets[1]);
    let volume = SecretVolume::project(
        &chain.path("volumes/secret/db"),
        &payments_db(&[("password", &moved)]),
        DEFAULT_MODE,
    );
    let files = format!("db={}", volume.dir.display());
    let flags = ["--files", &files, "--out", out.0.to_str().unwrap()];
    let run = chain.run(coffer, "secret", &[], &flags, &out.0, MARK_STARTED);
    chain.assert_value_refused(
        &run,
        &out.0,
        &["db", "password", "may not be used at payments/db/password"],
        "payments/db/password",
        "denied",
        "strict payments/cache/password",
    );
    assert!(!out.0.join("db").join("password").exists());

    // Sealed for key username, delivered as key password by a secretKeyRef.
    let moved = chain.seal_raw("payments", "db", "username", secrets[2]);
    let env = [("PASSWORD".to_string(), moved)];
    let flags = ["--env", "--env-source", "PASSWORD=db/password"];
    let run = chain.run(coffer, "key", &env, &flags, &out.0, MARK_STARTED);
    chain.assert_value_refused(
        &run,
        &out.0,
        &["PASSWORD", "may not be used at payments/db/password"],
        "payments/db/password",
        "denied",
        "strict payments/db/username",
    );

    // A sealed value altered in the manifest.
    let db = Secret::load(&chain.seal("payments", "db", &[("password", secrets[3])]));
    let mut value = db.key_ref("password").into_bytes();
    let i = value.len() - 12;
    value[i] = if value[i] == b'A' { b'B' } else { b'A' };
    let env = payments_db(&[("password", std::str::from_utf8(&value).unwrap())]).env_from("DB_");
    let run = chain.run(coffer, "tampered", &env, &["--env"], &out.0, MARK_STARTED);
    chain.assert_value_refused(
        &run,
        &out.0,
        &["DB_password", "does not open"],
        "payments/db/password",
        "error",
        "strict payments/db/password",
    );

    chain.assert_node_holds_no_plaintext(&secrets);
}

#[test]
fn workloads_keyd_does_not_trust_are_refused_at_attestation_and_audited() {
    // A workload built from other code: the coffer executable with bytes appended.
    let bin_dir = tempfile::tempdir().unwrap();
    let other = bin_dir.path().join("coffer");
    let mut bytes = std::fs::read(coffer_bin()).unwrap();
    bytes.extend_from_slice(b"\0not the coffer keyd's policy names");
    std::fs::write(&other, &bytes).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let other_measurement = sha256_file(&other);
    drop(bytes);

    let chain = Chain::start(true);
    let db = Secret::load(&chain.seal("payments", "db", &VALUES));
    let env = db.env_from("DB_");
    let out = ShmDir::new();
    let run = chain.run(&other, "other", &env, &["--env"], &out.0, MARK_STARTED);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(EXIT_REFUSED), "{stderr}");
    assert!(stderr.contains("refused this workload"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "sim measurement {other_measurement} is not accepted"
        )),
        "{stderr}"
    );
    assert!(!out.0.join("started").exists(), "the app was started");
    let records = audit_records(&chain.keyd.data);
    let refusal = records
        .iter()
        .find(|r| r["caller"]["measurement"] == other_measurement.as_str())
        .unwrap_or_else(|| panic!("no record of the other workload: {records:#?}"));
    assert_eq!(refusal["result"], "denied", "{refusal}");
    assert!(
        !records
            .iter()
            .any(|r| r["event"] == "unseal" && r["result"] == "ok"),
        "{records:#?}"
    );
    chain.assert_node_holds_no_plaintext(&VALUES.map(|(_, v)| v));

    // A sim workload under a production policy (no simulation): refused the same way.
    let production = Chain::start(false);
    let db = Secret::load(&production.seal("payments", "db", &VALUES));
    let env = db.env_from("DB_");
    let run = production.run(
        Path::new(coffer_bin()),
        "sim",
        &env,
        &["--env"],
        &out.0,
        MARK_STARTED,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(EXIT_REFUSED), "{stderr}");
    assert!(
        stderr.contains("refused this workload")
            && stderr.contains("simulation evidence refused: allow_simulation is false"),
        "{stderr}"
    );
    assert!(!out.0.join("started").exists(), "the app was started");
    let records = audit_records(&production.keyd.data);
    let coffer_measurement = sha256_file(Path::new(coffer_bin()));
    assert!(
        records.iter().any(|r| r["result"] == "denied"
            && r["caller"]["measurement"] == coffer_measurement.as_str()
            && r["reason"]
                .as_str()
                .is_some_and(|r| r.contains("allow_simulation is false"))),
        "{records:#?}"
    );
    production.assert_node_holds_no_plaintext(&VALUES.map(|(_, v)| v));
}

#[test]
fn keyd_down_exits_69_after_the_deadline_without_starting_the_app() {
    let chain = Chain::start(true);
    let db = Secret::load(&chain.seal("payments", "db", &VALUES));
    let env = db.env_from("DB_");
    let out = ShmDir::new();
    let nobody = free_addr().to_string();
    let run = chain.run_against(
        &nobody,
        "2s",
        Path::new(coffer_bin()),
        "down",
        &env,
        &["--env", "--keyd-timeout", "500ms"],
        &out.0,
        MARK_STARTED,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(EXIT_UNAVAILABLE), "{stderr}");
    assert!(
        stderr.contains(&nobody) && stderr.contains("Kubernetes will restart the pod"),
        "{stderr}"
    );
    assert!(!out.0.join("started").exists(), "the app was started");
    chain.assert_node_holds_no_plaintext(&VALUES.map(|(_, v)| v));
}

/// An app that records the hash of the password file it starts with, waits (bounded) until the
/// file changes under it, and records the new hash.
const AWAIT_CHANGE: &str = r#"o="$COFFER_TEST_OUT"
first=$(sha256sum < "$o/db/password")
i=0
while [ "$(sha256sum < "$o/db/password")" = "$first" ]; do
  i=$((i+1)); [ "$i" -lt 1200 ] || exit 9; sleep 0.1
done
sha256sum < "$o/db/password" > "$o/second"
echo "$first" > "$o/first"
"#;

#[test]
fn a_secret_the_kubelet_updates_is_unsealed_again_and_replaces_the_apps_files() {
    let chain = Chain::start(true);
    let before = Secret::load(&chain.seal("payments", "db", &VALUES));
    let volume = SecretVolume::project(&chain.path("volumes/db"), &before, DEFAULT_MODE);
    let out = ShmDir::new();
    let files = format!("db={}", volume.dir.display());
    let stderr = chain.path("run-update.stderr");
    let mut child = Command::new(coffer_bin())
        .args(["--log-level", "debug", "run", "--platform", "sim"])
        .arg("--state-dir")
        .arg(chain.path("workload-update"))
        .args(["--keyd", &chain.keyd.addr.to_string()])
        .arg("--keyd-policy")
        .arg(&chain.keyd_policy)
        .args(["--files", &files, "--out", out.0.to_str().unwrap()])
        .args(["--watch-interval", "200ms", "--", "sh", "-c", AWAIT_CHANGE])
        .env("POD_NAMESPACE", "payments")
        .env("COFFER_TEST_OUT", &out.0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    // The app has its first files once they exist under --out.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !out.0.join("db/password").exists() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{status}: {}", std::fs::read_to_string(&stderr).unwrap());
        }
        assert!(std::time::Instant::now() < deadline, "no files under --out");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // The Secret is resealed with a new password and applied; the kubelet swaps `..data`.
    let new_password = "chain-pw-rotated-71be";
    let after = Secret::load(&chain.seal(
        "payments",
        "db",
        &[("password", new_password), VALUES[1], VALUES[2]],
    ));
    volume.update(&after);
    assert_eq!(volume.files(), after.data);

    let code = common::wait_timeout(&mut child, std::time::Duration::from_secs(120));
    let log = std::fs::read_to_string(&stderr).unwrap();
    assert_eq!(code, Some(0), "{log}");
    assert_eq!(
        std::fs::read_to_string(out.0.join("first")).unwrap(),
        sha256sum_line(VALUES[0].1)
    );
    assert_eq!(
        std::fs::read_to_string(out.0.join("second")).unwrap(),
        sha256sum_line(new_password)
    );
    chain.unseal_record("payments/db/password", "ok");
    chain.assert_node_holds_no_plaintext(&[VALUES[0].1, VALUES[1].1, VALUES[2].1, new_password]);
}

//! `kubectl coffer seal` and `inspect`, offline from a pinned bundle, driven through the real
//! kubectl plugin mechanism; and every bad input: clear error, non-zero exit, nothing written.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use coffer_sealed::{Location, Scope, SealedValue};
use common::sealing::SimKeyd;
use common::{
    fails_with, files_containing, inspect_check, kubectl, kubectl_command, ok, run_with, seal_db,
    text,
};
use serde_json::Value;

const SECRET: &str = "s3cr3t-PLAINTEXT-marker";

fn parse(yaml: &str) -> Value {
    serde_yaml_ng::from_str(yaml).unwrap()
}

/// Opens the value of `key` in a sealed Secret and checks its binding admits the Secret.
fn open(keyd: &SimKeyd, secret: &Value, key: &str) -> Vec<u8> {
    let text = secret["stringData"][key].as_str().unwrap();
    let value = SealedValue::parse(text).unwrap();
    assert_eq!(value.keyring(), keyd.keyring);
    let location = Location {
        namespace: secret["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .into(),
        secret: secret["metadata"]["name"].as_str().unwrap().into(),
        key: key.into(),
    };
    value.binding().admits(&location).unwrap();
    coffer_sealed::open(&value, keyd.key(value.key_id()))
        .unwrap()
        .to_vec()
}

fn setup() -> (tempfile::TempDir, SimKeyd, String) {
    let dir = tempfile::tempdir().unwrap();
    let keyd = SimKeyd::new(dir.path(), "apps", 1);
    let bundle = keyd.write_bundle(&dir.path().join("bundle.json"));
    (dir, keyd, bundle.display().to_string())
}

#[test]
fn seal_generic_offline_through_kubectl_without_network() {
    let (dir, keyd, bundle) = setup();
    let file = dir.path().join("cfg.txt");
    std::fs::write(&file, format!("{SECRET}-file")).unwrap();
    let from_file = format!("config={}", file.display());
    let args = [
        "coffer",
        "seal",
        "generic",
        "db",
        "-n",
        "apps",
        "--from-literal",
        &format!("password={SECRET}"),
        "--from-file",
        &from_file,
        "--key-bundle",
        &bundle,
    ];
    // No network at all where the test may make a network namespace (root): sealing from a
    // pinned bundle must not need one.
    let isolated = std::process::Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let out = if isolated {
        let mut command = std::process::Command::new("unshare");
        command
            .args(["--net", "kubectl"])
            .args(args)
            .env("PATH", common::plugin_path())
            .env("KUBECONFIG", "/nonexistent/kubeconfig");
        run_with(command, b"")
    } else {
        eprintln!("note: cannot make a network namespace here; sealing with the network up");
        kubectl(&args)
    };
    let stdout = ok(&out);
    let (_, stderr) = text(&out);
    assert!(stderr.contains("SIMULATION"), "no sim warning: {stderr}");
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
    let secret = parse(&stdout);
    assert_eq!(secret["apiVersion"], "v1");
    assert_eq!(secret["kind"], "Secret");
    assert!(secret.get("data").is_none());
    let annotations = &secret["metadata"]["annotations"];
    assert_eq!(annotations["coffer.dev/keyring"], "apps");
    assert_eq!(annotations["coffer.dev/sealing-key"], keyd.keys[0].id());
    assert_eq!(annotations["coffer.dev/scope"], "strict");
    assert_eq!(open(&keyd, &secret, "password"), SECRET.as_bytes());
    assert_eq!(
        open(&keyd, &secret, "config"),
        format!("{SECRET}-file").as_bytes()
    );
    // Strict: the same value at another key does not pass the binding.
    let value = SealedValue::parse(secret["stringData"]["password"].as_str().unwrap()).unwrap();
    assert_eq!(value.binding().scope(), Scope::Strict);
    let elsewhere = Location {
        namespace: "apps".into(),
        secret: "db".into(),
        key: "config".into(),
    };
    assert!(value.binding().admits(&elsewhere).is_err());
    // Only the value file the user gave holds the plaintext.
    assert_eq!(files_containing(dir.path(), SECRET.as_bytes()), vec![file]);
}

#[test]
fn seal_manifests_yaml_json_stdin_and_keeps_sealed_values() {
    let (dir, keyd, bundle) = setup();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, SECRET);
    let manifest = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: web\n  namespace: shop\n  labels: {{app: web}}\n  resourceVersion: \"42\"\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: '{{\"data\":{{\"token\":\"{b64}\"}}}}'\ntype: kubernetes.io/tls\ndata:\n  tls.key: {b64}\nstringData:\n  tls.crt: cert-{SECRET}\n"
    );
    let path = dir.path().join("web.yaml");
    std::fs::write(&path, &manifest).unwrap();
    let out = kubectl(&[
        "coffer",
        "seal",
        "-f",
        path.to_str().unwrap(),
        "--key-bundle",
        &bundle,
    ]);
    let stdout = ok(&out);
    assert!(
        !stdout.contains(SECRET) && !stdout.contains(&b64),
        "{stdout}"
    );
    let secret = parse(&stdout);
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert_eq!(secret["metadata"]["labels"]["app"], "web");
    assert!(secret["metadata"].get("resourceVersion").is_none());
    assert_eq!(open(&keyd, &secret, "tls.key"), SECRET.as_bytes());
    assert_eq!(
        open(&keyd, &secret, "tls.crt"),
        format!("cert-{SECRET}").as_bytes()
    );

    // Sealing the sealed output again (from stdin, to JSON) keeps every value as it is.
    let again = run_with(
        kubectl_command(&[
            "coffer",
            "seal",
            "-f",
            "-",
            "-o",
            "json",
            "--key-bundle",
            &bundle,
        ]),
        stdout.as_bytes(),
    );
    let resealed: Value = serde_json::from_str(&ok(&again)).unwrap();
    assert_eq!(resealed["stringData"], secret["stringData"]);

    // A JSON manifest in, with --raw-free namespace scope.
    let json = format!(
        "{{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{{\"name\":\"j\",\"namespace\":\"shop\"}},\"stringData\":{{\"k\":\"{SECRET}\"}}}}"
    );
    let out = run_with(
        kubectl_command(&[
            "coffer",
            "seal",
            "-f",
            "-",
            "--scope",
            "namespace",
            "--key-bundle",
            &bundle,
        ]),
        json.as_bytes(),
    );
    let secret = parse(&ok(&out));
    assert_eq!(
        secret["metadata"]["annotations"]["coffer.dev/scope"],
        "namespace"
    );
    let value = SealedValue::parse(secret["stringData"]["k"].as_str().unwrap()).unwrap();
    let other_secret = Location {
        namespace: "shop".into(),
        secret: "other".into(),
        key: "x".into(),
    };
    value.binding().admits(&other_secret).unwrap();
    let other_namespace = Location {
        namespace: "prod".into(),
        ..other_secret
    };
    assert!(value.binding().admits(&other_namespace).is_err());
}

#[test]
fn raw_prints_one_sealed_value() {
    let (_dir, keyd, bundle) = setup();
    let out = run_with(
        kubectl_command(&[
            "coffer",
            "seal",
            "--raw",
            "-n",
            "apps",
            "--name",
            "db",
            "--key",
            "pw",
            "--key-bundle",
            &bundle,
        ]),
        SECRET.as_bytes(),
    );
    let stdout = ok(&out);
    let line = stdout.trim_end();
    assert_eq!(stdout.lines().count(), 1);
    let value = SealedValue::parse(line).unwrap();
    assert_eq!(
        value.binding().to_string(),
        "strict apps/db/pw",
        "binding as sealed"
    );
    let opened = coffer_sealed::open(&value, keyd.key(value.key_id())).unwrap();
    assert_eq!(opened.as_slice(), SECRET.as_bytes());
    // Strict scope needs the whole location.
    let out = kubectl(&[
        "coffer",
        "seal",
        "--raw",
        "-n",
        "apps",
        "--from-literal",
        "pw=x",
        "--key-bundle",
        &bundle,
    ]);
    fails_with(&out, "give --name");
}

#[test]
fn merge_into_adds_and_replaces_keeping_the_rest() {
    let (dir, keyd, bundle) = setup();
    let file = dir.path().join("db.yaml");
    let first = seal_db(&[
        "--from-literal",
        "a=one",
        "--from-literal",
        "b=two",
        "--key-bundle",
        &bundle,
    ]);
    std::fs::write(&file, ok(&first)).unwrap();
    let before = parse(&std::fs::read_to_string(&file).unwrap());
    let out = seal_db(&[
        "--from-literal",
        "b=TWO",
        "--from-literal",
        "c=three",
        "--merge-into",
        file.to_str().unwrap(),
        "--key-bundle",
        &bundle,
    ]);
    assert!(ok(&out).is_empty());
    let after = parse(&std::fs::read_to_string(&file).unwrap());
    assert_eq!(after["stringData"]["a"], before["stringData"]["a"]);
    assert_eq!(open(&keyd, &after, "b"), b"TWO");
    assert_eq!(open(&keyd, &after, "c"), b"three");

    // Another keyring's bundle may not merge into it; the file is left as it was.
    let other = SimKeyd::new(&dir.path().join("other"), "payments", 1);
    std::fs::create_dir_all(dir.path().join("other")).unwrap();
    let other_bundle = other.write_bundle(&dir.path().join("other.json"));
    let unchanged = std::fs::read(&file).unwrap();
    let out = seal_db(&[
        "--from-literal",
        "d=x",
        "--merge-into",
        file.to_str().unwrap(),
        "--key-bundle",
        other_bundle.to_str().unwrap(),
    ]);
    fails_with(&out, "sealed to keyring \"apps\"");
    assert_eq!(std::fs::read(&file).unwrap(), unchanged);
}

#[test]
fn inspect_reports_bindings_and_stale_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut keyd = SimKeyd::new(dir.path(), "apps", 1);
    let old_bundle = keyd.write_bundle(&dir.path().join("old.json"));
    let sealed = ok(&seal_db(&[
        "--from-literal",
        "a=1",
        "--key-bundle",
        old_bundle.to_str().unwrap(),
    ]));
    let file = dir.path().join("db.yaml");
    std::fs::write(&file, &sealed).unwrap();
    let f = file.to_str().unwrap();

    let current = inspect_check(f, &old_bundle);
    let table = ok(&current);
    assert!(
        table.contains("strict apps/db/a") && table.contains("primary"),
        "{table}"
    );

    // After a rotation the value is on an older key: --check fails, for CI.
    keyd.keys
        .push(coffer_sealed::SealingKeyPair::generate().unwrap());
    let new_bundle = keyd.write_bundle(&dir.path().join("new.json"));
    let stale = inspect_check(f, &new_bundle);
    assert_eq!(stale.status.code(), Some(1));
    assert!(text(&stale).0.contains("OLD"), "{}", text(&stale).0);

    // Moved to another Secret name: the binding refuses it there.
    std::fs::write(&file, sealed.replace("name: db", "name: other")).unwrap();
    let moved = ok(&kubectl(&["coffer", "inspect", "-f", f]));
    assert!(moved.contains("NO: "), "{moved}");
}

/// Runs a seal that must fail, and checks nothing was printed or written.
fn refused(dir: &Path, args: &[&str], needle: &str) {
    let before = std::fs::read_dir(dir).unwrap().count();
    let out = kubectl(args);
    let stderr = fails_with(&out, needle);
    assert!(!stderr.contains(SECRET), "plaintext in the error: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        before,
        "a file was written"
    );
}

#[test]
fn bad_bundles_are_refused() {
    let (dir, keyd, bundle) = setup();
    let literal = format!("pw={SECRET}");
    let seal = |bundle: &str| -> Vec<String> {
        [
            "coffer",
            "seal",
            "generic",
            "db",
            "-n",
            "apps",
            "--from-literal",
            &literal,
            "--key-bundle",
            bundle,
        ]
        .map(str::to_string)
        .to_vec()
    };
    let run = |args: Vec<String>, needle: &str| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(dir.path(), &args, needle);
    };

    // Expired.
    let now = SystemTime::now();
    let expired = dir.path().join("expired.json");
    let old = keyd.bundle_at(
        now - Duration::from_secs(7200),
        now - Duration::from_secs(3600),
    );
    std::fs::write(&expired, old.to_json()).unwrap();
    run(seal(expired.to_str().unwrap()), "fetch-key");

    // Unverifiable: a key swapped in after keyd attested the bundle.
    let mut forged = keyd.bundle();
    let attacker = coffer_sealed::SealingKeyPair::generate().unwrap();
    forged.body.keys[0].public_key = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        attacker.public().bytes(),
    );
    forged.body.keys[0].id = attacker.id().to_string();
    let forged_path = dir.path().join("forged.json");
    std::fs::write(&forged_path, forged.to_json()).unwrap();
    run(seal(forged_path.to_str().unwrap()), "forged.json");

    // Not a bundle at all.
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"format\": 1}").unwrap();
    run(seal(junk.to_str().unwrap()), "junk.json: not a key bundle");

    // Foreign keyring: the bundle is for "apps", the user asked for "payments".
    let mut foreign = seal(&bundle);
    foreign.extend(["--keyring".to_string(), "payments".to_string()]);
    run(foreign, "is for keyring \"apps\", not \"payments\"");
}

#[test]
fn bad_values_and_manifests_are_refused() {
    let (dir, _keyd, bundle) = setup();
    let inputs = tempfile::tempdir().unwrap();
    let d = dir.path();

    // A value over 1 MiB.
    let big = inputs.path().join("big");
    std::fs::write(&big, vec![b'x'; (1 << 20) + 1]).unwrap();
    let from = format!("blob={}", big.display());
    refused(
        d,
        &[
            "coffer",
            "seal",
            "generic",
            "db",
            "-n",
            "apps",
            "--from-file",
            &from,
            "--key-bundle",
            &bundle,
        ],
        "larger than 1048576 bytes",
    );
    // Values that together exceed a Secret's 1 MiB once sealed.
    let half = inputs.path().join("half");
    std::fs::write(&half, vec![b'x'; 600 * 1024]).unwrap();
    let (a, b) = (
        format!("a={}", half.display()),
        format!("b={}", half.display()),
    );
    refused(
        d,
        &[
            "coffer",
            "seal",
            "generic",
            "db",
            "-n",
            "apps",
            "--from-file",
            &a,
            "--from-file",
            &b,
            "--key-bundle",
            &bundle,
        ],
        "1 MiB",
    );

    // Malformed manifests: the line and column of the problem.
    let broken = inputs.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: Secret\nstringData:\n  a: [unclosed\n",
    )
    .unwrap();
    refused(
        d,
        &[
            "coffer",
            "seal",
            "-f",
            broken.to_str().unwrap(),
            "--key-bundle",
            &bundle,
        ],
        "line",
    );
    let not_secret = inputs.path().join("cm.yaml");
    std::fs::write(
        &not_secret,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    )
    .unwrap();
    refused(
        d,
        &[
            "coffer",
            "seal",
            "-f",
            not_secret.to_str().unwrap(),
            "--key-bundle",
            &bundle,
        ],
        "kind is \"ConfigMap\"",
    );

    // Typed Secrets missing their keys.
    let tls = format!("tls.crt={SECRET}");
    refused(
        d,
        &[
            "coffer",
            "seal",
            "generic",
            "web",
            "-n",
            "apps",
            "--type",
            "kubernetes.io/tls",
            "--from-literal",
            &tls,
            "--key-bundle",
            &bundle,
        ],
        "needs the key tls.key",
    );
    let docker = format!(".dockerconfigjson={{{SECRET}");
    refused(
        d,
        &[
            "coffer",
            "seal",
            "generic",
            "reg",
            "-n",
            "apps",
            "--type",
            "kubernetes.io/dockerconfigjson",
            "--from-literal",
            &docker,
            "--key-bundle",
            &bundle,
        ],
        "not valid JSON",
    );
    refused(
        d,
        &[
            "coffer",
            "seal",
            "generic",
            "reg",
            "-n",
            "apps",
            "--type",
            "kubernetes.io/dockerconfigjson",
            "--from-literal",
            "x=1",
            "--key-bundle",
            &bundle,
        ],
        "needs the key .dockerconfigjson",
    );

    // kubectl's key rules.
    refused(
        d,
        &[
            "coffer",
            "seal",
            "generic",
            "db",
            "-n",
            "apps",
            "--from-literal",
            "a=1",
            "--from-literal",
            "a=2",
            "--key-bundle",
            &bundle,
        ],
        "cannot add key a, another key by that name already exists",
    );
    refused(
        d,
        &[
            "coffer",
            "seal",
            "generic",
            "db",
            "-n",
            "apps",
            "--from-literal",
            "a b=1",
            "--key-bundle",
            &bundle,
        ],
        "is not a valid key name",
    );
    // Strict scope needs a namespace.
    refused(
        d,
        &[
            "coffer",
            "seal",
            "generic",
            "db",
            "--from-literal",
            "a=1",
            "--key-bundle",
            &bundle,
        ],
        "-n/--namespace",
    );
}

//! Errors say what is wrong and what to do, in the words of the command that failed.

mod common;

use std::path::Path;

use common::coffer;
use common::keyd::{create_keyd_data, free_addr, keyd_cli, sim_role_policy, KeydProcess};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `coffer keyd serve` on the simulation platform with `extra` flags, to completion.
fn keyd_serve(data: &Path, policy: &Path, config: &Path, extra: &[&str]) -> std::process::Output {
    common::run::output_within(
        std::process::Command::new(common::coffer_bin())
            .args([
                "keyd",
                "serve",
                "--platform",
                "sim",
                "--listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(data)
            .arg("--policy")
            .arg(policy)
            .arg("--config")
            .arg(config)
            .args(extra),
    )
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let config = dir.join("keyd.yaml");
    std::fs::write(&config, text).unwrap();
    config
}

#[test]
fn keyd_names_its_own_flags_and_says_listening_only_once_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let policy = sim_role_policy(dir.path(), "kms-plugin:a", &dir.path().join("a"));
    let config = write_config(
        dir.path(),
        "keyrings:\n  cluster-a:\n    wrap: [kms-plugin:a]\n",
    );
    let data = dir.path().join("keyd");

    // Not initialised: the keyd command to run, never kms's --state-dir.
    let out = keyd_serve(&data, &policy, &config, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not initialised") && err.contains("coffer keyd init --data-dir"),
        "{err}"
    );
    assert!(
        !err.contains("--state-dir") && !err.contains("listening"),
        "{err}"
    );
    let rotate = coffer(&[
        "keyd",
        "rotate",
        "cluster-a",
        "--platform",
        "sim",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let err = stderr(&rotate);
    assert!(err.contains("coffer keyd init --data-dir"), "{err}");
    assert!(!err.contains("--state-dir"), "{err}");

    // Initialised, but the configured keyring is missing: still no "listening".
    keyd_cli(&data, &["init"]);
    let out = keyd_serve(&data, &policy, &config, &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cluster-a"), "{err}");
    assert!(!err.contains("listening"), "{err}");

    // The platform's own state missing from an initialised directory names --data-dir.
    std::fs::remove_file(data.join("sim-platform.key")).unwrap();
    let out = keyd_serve(&data, &policy, &config, &[]);
    let err = stderr(&out);
    assert!(err.contains("check --data-dir"), "{err}");
    assert!(!err.contains("--state-dir"), "{err}");
}

/// Error types that quote their source used to have it printed again as "caused by".
#[test]
fn no_cause_repeats_what_was_already_said() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["cluster-a"]);
    let policy = sim_role_policy(dir.path(), "kms-plugin:a", &dir.path().join("a"));
    let config = write_config(
        dir.path(),
        "keyrings:\n  cluster-a:\n    wrap: [kms-plugin:a]\n",
    );
    let missing = dir.path().join("no-such-dir/audit.log");
    let out = keyd_serve(
        &data,
        &policy,
        &config,
        &["--audit-log", missing.to_str().unwrap()],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot open"), "{err}");
    assert!(!err.contains("audit log: audit log"), "{err}");
    let mut said = String::new();
    for line in err.lines().filter(|l| !l.contains("WARN")) {
        if let Some(cause) = line.trim_start().strip_prefix("caused by: ") {
            assert!(!said.contains(cause), "repeated cause {cause:?} in:\n{err}");
        }
        said.push_str(line);
    }
}

#[test]
fn keyd_refuses_a_grant_to_a_role_the_policy_does_not_define() {
    let dir = tempfile::tempdir().unwrap();
    let policy = sim_role_policy(dir.path(), "kms-plugin:a", &dir.path().join("a"));
    let config = write_config(
        dir.path(),
        "keyrings:\n  cluster-a:\n    wrap: [kms-plugin:a]\n    unwrap: [kms-plugin:typo]\n",
    );
    let data = dir.path().join("keyd");
    // With --init too, and before it writes anything.
    let out = keyd_serve(&data, &policy, &config, &["--init"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("\"kms-plugin:typo\"")
            && err.contains(policy.to_str().unwrap())
            && err.contains("unwrap"),
        "{err}"
    );
    assert!(!data.exists(), "--init initialised before refusing");
}

#[test]
fn attest_endpoint_refusals_read_without_debug_wrappers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["cluster-a"]);
    let caller = dir.path().join("caller");
    let policy = sim_role_policy(dir.path(), "kms-plugin:a", &caller);
    let config = write_config(
        dir.path(),
        "keyrings:\n  cluster-a:\n    wrap: [kms-plugin:a]\n",
    );
    let keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &[]);
    // The caller's policy names the caller, not keyd: keyd's evidence maps to no role.
    let out = coffer(&[
        "attest",
        "endpoint",
        "--connect",
        &keyd.addr.to_string(),
        "--policy",
        policy.to_str().unwrap(),
        "--platform",
        "sim",
        "--state-dir",
        caller.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is not accepted"), "{err}");
    assert!(
        !err.contains("OtherError") && !err.contains("Other("),
        "{err}"
    );
}

#[test]
fn a_secret_key_given_as_recovery_key_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("op.sk");
    let public = coffer(&[
        "keyd",
        "recovery-key",
        "generate",
        "--out",
        secret.to_str().unwrap(),
    ]);
    assert!(public.status.success(), "{}", stderr(&public));
    let data = dir.path().join("keyd");
    let out = coffer(&[
        "keyd",
        "init",
        "--platform",
        "sim",
        "--data-dir",
        data.to_str().unwrap(),
        "--recovery-key",
        secret.to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("SECRET key")
            && err.contains("PUBLIC key")
            && err.contains("coffer-recovery-pk:"),
        "{err}"
    );
    let secret_text = std::fs::read_to_string(&secret).unwrap();
    let secret_b64 = secret_text.trim().trim_start_matches("coffer-recovery-sk:");
    assert!(!err.contains(secret_b64), "the secret key was echoed");
    assert!(!data.exists());
}

#[test]
fn yaml_errors_always_carry_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.yaml");
    let signer = "ab".repeat(32);
    for text in [
        String::new(),
        "- a\n".to_string(),
        "version: 2\nroles: []\n".to_string(),
        "version: 1\naccepted_tcb_statuses: []\n".to_string(),
        format!("version: 1\nroles:\n  - name: a\n    sim: {{ signer: [\"{signer}\"] }}\n  - name: a\n    sim: {{}}\n"),
    ] {
        std::fs::write(&file, &text).unwrap();
        let out = coffer(&["attest", "policy", "check", file.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{text:?}: {err}");
        assert!(
            err.contains(" at line ") && err.contains(" column "),
            "{text:?}: {err}"
        );
    }
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &[]);
    let policy = sim_role_policy(dir.path(), "kms-plugin:a", &dir.path().join("a"));
    for text in [
        "",
        "keyrings:\n  Bad_Name: {}\n",
        "keyrings:\n  a:\n    wrap: [\"\"]\n",
    ] {
        let config = write_config(dir.path(), text);
        let err = stderr(&keyd_serve(&data, &policy, &config, &[]));
        assert!(
            err.contains(" at line ") && err.contains(" column "),
            "{text:?}: {err}"
        );
    }
}

#[test]
fn retiring_the_primary_says_so_before_asking_for_confirm() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let store = ["--platform", "sim", "--state-dir", state.to_str().unwrap()];
    let init = coffer(&[&["keys", "init"][..], &store].concat());
    assert!(init.status.success(), "{}", stderr(&init));
    let list = coffer(&[&["keys", "list", "--json"][..], &store].concat());
    let json: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let primary = json["keys"][0]["id"].as_str().unwrap().to_string();
    let out = coffer(&[&["keys", "retire", &primary][..], &store].concat());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("is the primary key") && err.contains("coffer keys rotate"),
        "{err}"
    );
    assert!(!err.contains("--confirm"), "{err}");
    let out = coffer(
        &[
            &["keys", "retire", "coffer-9999-0000000000000000"][..],
            &store,
        ]
        .concat(),
    );
    assert!(stderr(&out).contains("no KEK with id"), "{}", stderr(&out));
}

#[test]
fn encryption_config_validates_socket_and_provider_name() {
    for (flags, expected) in [
        (
            &["--socket", "unix:///var/run/kmsplugin/socket.sock"][..],
            "use --socket /var/run/kmsplugin/socket.sock",
        ),
        (&["--socket", "/run/k?x.sock"], "'?'"),
        (&["--provider-name", "coffer:a"], "contains ':'"),
        (
            &["--provider-name", "my provider"],
            "is not a provider name",
        ),
    ] {
        let out = coffer(&[&["kms", "encryption-config"][..], flags].concat());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let out = common::run::output_within(
        std::process::Command::new(common::coffer_bin())
            .current_dir(dir.path())
            .args(["kms", "serve", "--platform", "sim", "--state-dir"])
            .arg(dir.path().join("state"))
            .args(["--socket", "unix:///tmp/k.sock"]),
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!dir.path().join("state").exists());
}

//! The command line explains itself.

mod common;

use common::{coffer, serve_to_exit};

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["kms", "--help"],
        vec!["kms", "serve", "--help"],
        vec!["kms", "encryption-config", "--help"],
        vec!["keys", "--help"],
        vec!["keys", "list", "--help"],
        vec!["keys", "rotate", "--help"],
        vec!["keys", "retire", "--help"],
        vec!["etcd", "decrypt", "--help"],
        vec!["bench", "kms", "--help"],
        vec!["bench", "startup", "--help"],
        vec!["attest", "--help"],
        vec!["attest", "evidence", "--help"],
        vec!["attest", "verify", "--help"],
        vec!["attest", "policy", "check", "--help"],
        vec!["keyd", "--help"],
        vec!["keyd", "serve", "--help"],
        vec!["keyd", "keyring", "create", "--help"],
        vec!["keyd", "audit", "verify", "--help"],
    ] {
        let out = coffer(&args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
    let serve = String::from_utf8_lossy(&coffer(&["kms", "serve", "--help"]).stdout).into_owned();
    for flag in [
        "--socket",
        "--allow-uid",
        "--status-version",
        "--metrics-addr",
        "--rotate-every",
        "--dev",
        "--platform",
    ] {
        assert!(serve.contains(flag), "kms serve --help lacks {flag}");
    }
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    let out = coffer(&["kms", "serve", "--status-version", "v3"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("v2beta1"));
    let out = coffer(&["kms", "serve", "--platform", "tpm"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected one of"));
    let out = coffer(&["kms", "serve", "--socket-mode", "999"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn auto_platform_without_a_tee_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = coffer(&["keys", "list", "--state-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no TEE detected") && err.contains("--platform sim"),
        "{err}"
    );
}

#[test]
fn encryption_config_points_at_the_socket() {
    let out = coffer(&[
        "kms",
        "encryption-config",
        "--socket",
        "/var/run/kmsplugin/socket.sock",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kind: EncryptionConfiguration"));
    assert!(text.contains("endpoint: unix:///var/run/kmsplugin/socket.sock"));
    assert!(text.contains("apiVersion: v2"));
}

#[test]
fn read_only_commands_do_not_create_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("typo");
    for args in [
        vec!["keys", "list"],
        vec!["keys", "rotate"],
        vec!["etcd", "decrypt", "--etcd-key", "/registry/secrets/a/b"],
    ] {
        let mut all = args.clone();
        all.extend(["--platform", "sim", "--state-dir", state.to_str().unwrap()]);
        if args[0] == "etcd" {
            all.extend(["--input", "/dev/null"]);
        }
        let out = coffer(&all);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("check --state-dir"), "{args:?}: {err}");
        assert!(!state.exists(), "{args:?} created {}", state.display());
    }
}

#[test]
fn overlong_socket_path_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s".repeat(120));
    let out = serve_to_exit(&dir.path().join("state"), &socket, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("at most 107 bytes") && err.contains("shorter --socket"),
        "{err}"
    );
}

#[test]
fn standalone_mode_refuses_tdx_and_points_at_service_mode() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("sys/kernel/config/tsm/report")).unwrap();
    let out = std::process::Command::new(common::coffer_bin())
        .env("COFFER_PLATFORM_ROOT", root.path())
        .args(["kms", "serve", "--platform", "tdx", "--state-dir"])
        .arg(root.path().join("state"))
        .arg("--socket")
        .arg(root.path().join("k.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no sealing key") && err.contains("service mode"),
        "{err}"
    );
    assert!(!root.path().join("k.sock").exists());
    assert!(!root.path().join("state/keystore").exists());
}

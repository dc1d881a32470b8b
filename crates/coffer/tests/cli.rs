//! The command line explains itself.

mod common;

use std::process::{Command, Output};

use common::{coffer, serve_to_exit, Plugin};

#[test]
fn every_command_has_help() {
    // Walks the whole command tree from `coffer --help`, so a new command cannot go unchecked.
    let mut pending = vec![Vec::<String>::new()];
    let mut seen = 0;
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = coffer(&args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
        seen += 1;
        for name in subcommands(&text) {
            let mut child = path.clone();
            child.push(name);
            pending.push(child);
        }
    }
    // The tree really was walked (kms, keys, etcd, attest, keyd, bench, run and their children).
    assert!(seen > 30, "only {seen} commands found");
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

/// `coffer kms serve` on the simulation platform, expected to refuse to start.
fn serve_refused(state: &std::path::Path, socket: &std::path::Path, extra: &[&str]) -> Output {
    common::run::output_within(
        Command::new(common::coffer_bin())
            .args(["kms", "serve", "--platform", "sim", "--state-dir"])
            .arg(state)
            .arg("--socket")
            .arg(socket)
            .args(extra),
    )
}

/// Each value was once accepted: zero intervals panicked in the timer (exit 134, socket left
/// behind), `--rotate-every 0s` rotated on every check, zero connections or threads served
/// nothing. Each is now a usage error naming the allowed range, before anything is created.
#[test]
fn zero_and_out_of_range_flag_values_are_refused_at_parse_time() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let socket = dir.path().join("k.sock");
    for (flags, expected) in [
        (&["--reload-interval", "0s"][..], "at least 100ms"),
        (&["--rotate-every", "0s"], "at least 1s"),
        (&["--rotate-every", "abc"], "use e.g. 2s, 500ms, 1h30m"),
        (&["--drain-timeout", "soon"], "use e.g. 2s, 500ms, 1h30m"),
        (&["--max-connections", "0"], "1..=65536"),
    ] {
        let out = serve_refused(&state, &socket, flags);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(expected), "{flags:?}: {err}");
        assert!(!socket.exists(), "{flags:?} left {}", socket.display());
        assert!(!state.exists(), "{flags:?} created {}", state.display());
    }
    let data = dir.path().join("keyd");
    for (flags, expected) in [
        (&["--reload-interval", "0s"][..], "at least 100ms"),
        (&["--worker-threads", "0"], "1..=256"),
        (&["--max-connections", "0"], "1..=65536"),
        (&["--cert-renewal", "0s"], "at least 1m and less than 24h"),
        (&["--key-bundle-validity", "30m"], "at least 1h"),
        (&["--key-bundle-validity", "366d"], "from 1h to 8760h"),
    ] {
        let mut args = vec!["keyd", "serve", "--platform", "sim", "--data-dir"];
        args.push(data.to_str().unwrap());
        args.extend([
            "--listen",
            "127.0.0.1:0",
            "--policy",
            "p.yaml",
            "--config",
            "c.yaml",
        ]);
        args.extend(flags);
        let out = common::run::output_within(Command::new(common::coffer_bin()).args(&args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert!(err.contains(expected), "{flags:?}: {err}");
        assert!(!data.exists(), "{flags:?} created {}", data.display());
    }
}

#[test]
fn rotate_every_must_outlast_the_reload_interval() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("k.sock");
    let flags = ["--rotate-every", "1s", "--reload-interval", "1s"];
    let out = serve_refused(&dir.path().join("state"), &socket, &flags);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not longer than --reload-interval"), "{err}");
    assert!(!socket.exists());
}

#[test]
fn help_states_the_duration_syntax_and_minimums() {
    let kms = String::from_utf8_lossy(&coffer(&["kms", "serve", "--help"]).stdout).into_owned();
    let keyd = String::from_utf8_lossy(&coffer(&["keyd", "serve", "--help"]).stdout).into_owned();
    for (help, flag, minimum) in [
        (&kms, "--reload-interval", "at least 100ms"),
        (&kms, "--rotate-every", "at least 1s"),
        (&kms, "--max-connections", "1 to 65536"),
        (&keyd, "--reload-interval", "at least 100ms"),
        (&keyd, "--cert-renewal", "at least 1m"),
        (&keyd, "--worker-threads", "1 to 256"),
    ] {
        // The flag's paragraph runs from its name to the next flag.
        let start = help.find(&format!("{flag} <")).expect(flag);
        let end = help[start + 2..]
            .find("\n  -")
            .map_or(help.len(), |i| start + 2 + i);
        let paragraph = help[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(paragraph.contains(minimum), "{flag}: {paragraph}");
        assert!(paragraph.contains("duration such as") || !minimum.starts_with("at least"));
    }
}

/// Cargo metadata must not send users to a repository that does not exist.
#[test]
fn manifest_names_no_invented_repository() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml")).unwrap();
    assert!(!manifest.contains("coffer-kms/coffer"), "{manifest}");
}

/// `EnvFilter` reads `verbose` as a target name: the plugin served with no audit lines at all.
#[test]
fn an_invalid_log_filter_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("k.sock");
    let state = dir.path().join("state");
    let run = |env: (&str, &str), flags: &[&str]| {
        let out = common::run::output_within(
            Command::new(common::coffer_bin())
                .env(env.0, env.1)
                .args(flags)
                .args(["kms", "serve", "--platform", "sim", "--state-dir"])
                .arg(&state)
                .arg("--socket")
                .arg(&socket),
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (env, flags) in [
        (("RUST_LOG", ""), &["--log-level", "verbose"][..]),
        (("RUST_LOG", ""), &["--log-level", "warn,coffer=loud"]),
        (("COFFER_LOG_LEVEL", "verbose"), &[]),
        (("RUST_LOG", "verbose"), &[]),
    ] {
        let (code, err) = run(env, flags);
        assert_eq!(code, Some(2), "{env:?} {flags:?}: {err}");
        assert!(
            err.contains("is not a level") && err.contains("info,coffer=debug"),
            "{env:?} {flags:?}: {err}"
        );
        assert!(
            !socket.exists() && !state.exists(),
            "{env:?} {flags:?} started"
        );
    }
}

/// The documented way to quiet everything but the audit trail keeps the audit lines.
#[tokio::test]
async fn a_valid_filter_keeps_the_audit_lines() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kms.sock");
    let log = dir.path().join("plugin.log");
    let child = std::process::Command::new(common::coffer_bin())
        .env_remove("RUST_LOG")
        .args(["--log-level", "warn,coffer::audit=info", "kms", "serve"])
        .args(["--platform", "sim", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--socket")
        .arg(&socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut plugin = Plugin {
        dir,
        child: Some(child),
        socket,
        log,
    };
    plugin.wait_ready().await;
    common::encrypt(&mut plugin.v2().await, b"audited").await;
    assert_eq!(plugin.terminate(), Some(0));
    let text = plugin.log_text();
    assert!(
        text.lines()
            .any(|l| l.contains("coffer::audit") && l.contains("encrypt")),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains(" INFO ") && !l.contains("coffer::audit")),
        "info lines of other targets: {text}"
    );
}

/// A keyd VCEK given on the command line falls back to the VCEK directory or KDS when stale
/// (as `attest verify --vcek` does), so the flags combine instead of conflicting.
#[test]
fn keyd_vcek_flags_combine_as_a_fallback_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (state, policy, vcek, cache) = (path("s"), path("none.yaml"), path("v.der"), path("c"));
    let out = common::run::output_within(Command::new(common::coffer_bin()).args([
        "kms",
        "serve",
        "--platform",
        "sim",
        "--state-dir",
        &state,
        "--socket",
        &path("kms.sock"),
        "--keyd",
        "127.0.0.1:1",
        "--keyd-keyring",
        "cluster-a",
        "--keyd-policy",
        &policy,
        "--keyd-vcek",
        &vcek,
        "--keyd-kds-url",
        "https://kds.invalid",
        "--keyd-cache-dir",
        &cache,
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Parsed: the run stops later, at the missing policy file, not at a usage error.
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("none.yaml"), "{stderr}");
}

/// The subcommand names listed under `Commands:` in a `--help` text (without `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| line.trim() != "Commands:")
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

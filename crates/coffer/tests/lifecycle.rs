//! Rotation, retirement, socket handling, shutdown, refusal of damaged keystores, and caller
//! checks — each against the real binary.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use common::*;
use tonic::Code;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn rotation_is_picked_up_without_restart_and_old_keys_still_decrypt() {
    let plugin = Plugin::start(&[]).await;
    let mut client = plugin.v2().await;
    let first = status(&mut client).await.key_id;
    let old = encrypt(&mut client, b"sealed under the first KEK......").await;

    let out = plugin.keys(&["rotate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let new = wait_for_status(&mut client, |s| s.key_id != first)
        .await
        .key_id;
    assert!(new.starts_with("coffer-0002-"), "{new}");
    assert!(stdout(&out).contains(&new));

    let fresh = encrypt(&mut client, b"sealed under the second KEK.....").await;
    assert_eq!(fresh.key_id, new);
    assert_eq!(
        decrypt(&mut client, &old.ciphertext, &first).await.unwrap(),
        b"sealed under the first KEK......"
    );
    assert_eq!(
        decrypt(&mut client, &fresh.ciphertext, &new).await.unwrap(),
        b"sealed under the second KEK....."
    );

    let list = plugin.keys(&["list"]);
    let text = stdout(&list);
    assert!(text.contains(&new) && text.contains("primary"), "{text}");
    assert!(
        text.contains(&first) && text.contains("decrypt-only"),
        "{text}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&plugin.keys(&["list", "--json"]).stdout).unwrap();
    assert_eq!(json["keys"].as_array().unwrap().len(), 2);

    // Retiring needs explicit confirmation, never the primary, and then the old data is gone.
    let refused = plugin.keys(&["retire", &first]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        stderr(&refused).contains("kubectl replace"),
        "{}",
        stderr(&refused)
    );
    let primary = plugin.keys(&["retire", &new, "--confirm"]);
    assert_eq!(primary.status.code(), Some(1));
    assert!(stderr(&primary).contains("primary"));
    let retired = plugin.keys(&["retire", &first, "--confirm"]);
    assert!(retired.status.success(), "{}", stderr(&retired));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match decrypt(&mut client, &old.ciphertext, &first).await {
            Err(e) if e.code() == Code::NotFound => break,
            _ => assert!(
                std::time::Instant::now() < deadline,
                "retired key still decrypts"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A key id is never reused, even after retirement.
    assert!(plugin.keys(&["rotate"]).status.success());
    let third = wait_for_status(&mut client, |s| s.key_id != new)
        .await
        .key_id;
    assert!(third.starts_with("coffer-0003-") && third != first);
    let log = plugin.log_text();
    assert!(
        log.contains("event=\"reload\"") || log.contains("keystore changed"),
        "no reload audit line"
    );
}

#[tokio::test]
async fn a_damaged_keystore_on_reload_keeps_the_old_keys_until_it_is_fixed() {
    let plugin = Plugin::start(&[]).await;
    let mut client = plugin.v2().await;
    let first = status(&mut client).await.key_id;
    let enc = encrypt(&mut client, &[5; 32]).await;
    let keystore = plugin.state_dir().join("keystore");
    let good = fs::read(&keystore).unwrap();
    // Someone writes garbage over the keystore (not atomically, not through coffer).
    fs::write(&keystore, b"garbage").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !plugin.log_text().contains("could not be loaded") {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload error logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status(&mut client).await.key_id, first);
    assert_eq!(
        decrypt(&mut client, &enc.ciphertext, &first).await.unwrap(),
        vec![5; 32]
    );
    // Fixed (restored and rotated): picked up without a restart.
    fs::write(&keystore, &good).unwrap();
    assert!(plugin.keys(&["rotate"]).status.success());
    let new = wait_for_status(&mut client, |s| s.key_id != first)
        .await
        .key_id;
    assert!(new.starts_with("coffer-0002-"));
    assert_eq!(
        plugin.log_text().matches("could not be loaded").count(),
        1,
        "error logged repeatedly"
    );
}

#[tokio::test]
async fn scheduled_rotation() {
    let plugin = Plugin::start(&["--rotate-every", "1s"]).await;
    let mut client = plugin.v2().await;
    let first = status(&mut client).await.key_id;
    let enc = encrypt(&mut client, &[9; 32]).await;
    let next = wait_for_status(&mut client, |s| s.key_id != first)
        .await
        .key_id;
    assert_ne!(next, first);
    assert_eq!(
        decrypt(&mut client, &enc.ciphertext, &first).await.unwrap(),
        vec![9; 32]
    );
}

// Multi-threaded: `terminate` blocks this thread while the client keeps calling on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_private_single_instance_and_removed_on_sigterm() {
    let mut plugin = Plugin::start(&[]).await;
    let meta = fs::symlink_metadata(&plugin.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    // A second instance on the same socket refuses to start and leaves the first serving.
    let second = serve_to_exit(&plugin.state_dir(), &plugin.socket, &[]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("already serving"),
        "{}",
        stderr(&second)
    );
    let mut client = plugin.v2().await;
    assert_eq!(status(&mut client).await.healthz, "ok");

    // SIGTERM with calls in flight: they finish or fail cleanly; the socket is removed.
    let socket = plugin.socket.clone();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done_by_client = done.clone();
    let load = tokio::spawn(async move {
        let mut client = v2_client(&socket).await.unwrap();
        let mut ok = 0;
        for _ in 0..100_000 {
            match client
                .encrypt(coffer_proto::v2::EncryptRequest {
                    plaintext: vec![1; 32],
                    uid: uid(),
                })
                .await
            {
                Ok(_) => {
                    ok += 1;
                    done_by_client.store(ok, std::sync::atomic::Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
        ok
    });
    // Terminate only once calls are flowing, however slow the machine is.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while done.load(std::sync::atomic::Ordering::Relaxed) < 10 {
        assert!(std::time::Instant::now() < deadline, "no calls succeeded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let code = plugin.terminate();
    assert_eq!(code, Some(0), "log:\n{}", plugin.log_text());
    let ok = tokio::time::timeout(Duration::from_secs(10), load)
        .await
        .expect("client hung")
        .unwrap();
    assert!(ok > 0);
    assert!(!plugin.socket.exists(), "socket left behind");
    let log = plugin.log_text();
    assert!(log.contains("draining"));
    assert!(
        !log.contains("drain timeout reached"),
        "in-flight calls did not drain:\n{log}"
    );
}

#[tokio::test]
async fn stale_socket_is_replaced_but_other_files_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kms.sock");
    // A socket file whose listener is gone: what a crash leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let plugin = Plugin::start_in(dir, &[]).await;
    let mut client = plugin.v2().await;
    assert_eq!(status(&mut client).await.healthz, "ok");
    drop(plugin);

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kms.sock");
    fs::write(&socket, b"not a socket").unwrap();
    let out = serve_to_exit(&dir.path().join("state"), &socket, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a unix socket"),
        "{}",
        stderr(&out)
    );
    assert_eq!(fs::read(&socket).unwrap(), b"not a socket");
}

#[tokio::test]
async fn damaged_keystore_is_refused_at_start_and_left_untouched() {
    let mut plugin = Plugin::start(&[]).await;
    assert_eq!(plugin.terminate(), Some(0));
    let keystore = plugin.state_dir().join("keystore");
    let good = fs::read(&keystore).unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() - 40].to_vec(), "truncated"),
        (
            "tampered",
            {
                let mut t = good.clone();
                let mid = t.len() / 2;
                t[mid] ^= 0x20;
                t
            },
            "integrity check",
        ),
        (
            "newer",
            {
                let mut t = good.clone();
                t[9] = 7;
                t
            },
            "upgrade coffer",
        ),
        (
            "garbage",
            b"hello world, definitely not a keystore".to_vec(),
            "not a Coffer keystore",
        ),
    ];
    for (name, bytes, needle) in cases {
        fs::write(&keystore, &bytes).unwrap();
        let out = serve_to_exit(&plugin.state_dir(), &plugin.socket, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(err.contains(needle), "{name}: {err}");
        assert!(
            err.contains(keystore.to_str().unwrap()),
            "{name}: message must name the file: {err}"
        );
        assert_eq!(
            fs::read(&keystore).unwrap(),
            bytes,
            "{name}: keystore was modified"
        );
        assert!(!plugin.socket.exists(), "{name}: socket left behind");
    }
    // Restored from backup, it serves again with the same key.
    fs::write(&keystore, &good).unwrap();
    let dir = std::mem::replace(&mut plugin.dir, tempfile::tempdir().unwrap());
    let restarted = Plugin::start_in(dir, &[]).await;
    let mut client = restarted.v2().await;
    assert!(status(&mut client).await.key_id.starts_with("coffer-0001-"));
}

async fn spawn_and_wait_for_socket(extra: &[&str]) -> Plugin {
    let plugin = Plugin::spawn_in(tempfile::tempdir().unwrap(), extra);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !plugin.socket.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no socket; log:\n{}",
            plugin.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    plugin
}

#[tokio::test]
async fn callers_outside_the_allowlist_get_permission_denied_and_an_audit_line() {
    // The test runs as some uid other than 54321: it is refused.
    let plugin = spawn_and_wait_for_socket(&["--allow-uid", "54321"]).await;
    let mut client = plugin.v2().await;
    let err = client
        .status(coffer_proto::v2::StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("not allowed"), "{}", err.message());
    let err = client
        .decrypt(coffer_proto::v2::DecryptRequest {
            ciphertext: vec![1; 60],
            uid: uid(),
            key_id: "x".into(),
            annotations: Default::default(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let log = plugin.log_text();
    let me = std::process::id();
    let audit = log
        .lines()
        .find(|l| l.contains("event=\"refused\"") && l.contains("Decrypt"))
        .unwrap_or_else(|| panic!("no audit line for the refused Decrypt:\n{log}"));
    assert!(
        audit.contains(&format!("pid={me}")) && audit.contains("uid=") && audit.contains("gid="),
        "{audit}"
    );

    // The executable pin: this test binary is not kube-apiserver...
    let pinned = spawn_and_wait_for_socket(&["--allow-exe", "/usr/local/bin/kube-apiserver"]).await;
    let mut client = pinned.v2().await;
    let err = client
        .status(coffer_proto::v2::StatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("executable"), "{}", err.message());
    // ...but pinning this very executable lets it in.
    let me_exe = std::env::current_exe().unwrap();
    let allowed = Plugin::start(&["--allow-exe", me_exe.to_str().unwrap()]).await;
    let mut client = allowed.v2().await;
    assert_eq!(status(&mut client).await.healthz, "ok");
}

//! The KMS v2 and v1beta1 APIs over a real unix socket against the real `coffer kms serve`.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};

use coffer_proto::{v1beta1, v2};
use common::*;
use tonic::Code;

#[tokio::test]
async fn v2_status_encrypt_decrypt_round_trip() {
    let plugin = Plugin::start(&[]).await;
    let mut client = plugin.v2().await;
    let status = status(&mut client).await;
    assert_eq!(status.version, "v2");
    assert_eq!(status.healthz, "ok");
    assert!(
        status.key_id.starts_with("coffer-0001-"),
        "{}",
        status.key_id
    );

    let seed: [u8; 32] = rand::random();
    let enc = encrypt(&mut client, &seed).await;
    assert_eq!(
        enc.key_id, status.key_id,
        "Encrypt must report the Status key_id"
    );
    assert!(
        !enc.ciphertext.is_empty() && enc.ciphertext.len() < 1024,
        "{} bytes",
        enc.ciphertext.len()
    );
    assert!(
        !enc.ciphertext.windows(32).any(|w| w == seed),
        "plaintext visible in ciphertext"
    );
    let plain = decrypt(&mut client, &enc.ciphertext, &enc.key_id)
        .await
        .unwrap();
    assert_eq!(plain, seed);
    // Two encryptions of the same value differ (fresh nonce).
    let again = encrypt(&mut client, &seed).await;
    assert_ne!(again.ciphertext, enc.ciphertext);
}

#[tokio::test]
async fn v1beta1_version_encrypt_decrypt() {
    let plugin = Plugin::start(&[]).await;
    let mut v1 = plugin.v1().await;
    let dek: [u8; 32] = rand::random();
    let (version, cipher) = v1_round_trip(&mut v1, &dek).await;
    assert_eq!(version.version, "v1beta1");
    assert_eq!(version.runtime_name, "coffer");
    // v1 and v2 share keys: a v1 ciphertext decrypts through v2 with its key id.
    let mut v2c = plugin.v2().await;
    let key_id = status(&mut v2c).await.key_id;
    assert_eq!(decrypt(&mut v2c, &cipher, &key_id).await.unwrap(), dek);

    let err = v1
        .version(v1beta1::VersionRequest {
            version: "v2".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("unsupported KMS API version"),
        "{}",
        err.message()
    );
    let err = v1
        .encrypt(v1beta1::EncryptRequest {
            version: "".into(),
            plain: dek.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn status_reports_v2beta1_when_asked() {
    let plugin = Plugin::start(&["--status-version", "v2beta1"]).await;
    let mut client = plugin.v2().await;
    assert_eq!(status(&mut client).await.version, "v2beta1");
}

async fn expect_decrypt_error(
    client: &mut V2Client,
    req: v2::DecryptRequest,
    code: Code,
    needle: &str,
) {
    let err = client.decrypt(req).await.expect_err("decrypt should fail");
    assert_eq!(err.code(), code, "{}", err.message());
    assert!(
        err.message().contains(needle),
        "message {:?} lacks {needle:?}",
        err.message()
    );
}

fn decrypt_req(ciphertext: Vec<u8>, key_id: &str) -> v2::DecryptRequest {
    v2::DecryptRequest {
        ciphertext,
        uid: uid(),
        key_id: key_id.to_string(),
        annotations: HashMap::new(),
    }
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_plugin_keeps_serving() {
    let plugin = Plugin::start(&[]).await;
    let mut client = plugin.v2().await;
    let key_id = status(&mut client).await.key_id;
    let good = encrypt(&mut client, &[7u8; 32]).await.ciphertext;

    // Encrypt: empty and oversized plaintext, oversized uid.
    let err = client
        .encrypt(v2::EncryptRequest {
            plaintext: vec![],
            uid: uid(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("empty"));
    let err = client
        .encrypt(v2::EncryptRequest {
            plaintext: vec![1; 513],
            uid: uid(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("limit"), "{}", err.message());
    let err = client
        .encrypt(v2::EncryptRequest {
            plaintext: vec![1; 32],
            uid: "u".repeat(300),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Decrypt: empty, garbage, truncated, tampered, unknown key, mismatched key id.
    expect_decrypt_error(
        &mut client,
        decrypt_req(vec![], &key_id),
        Code::InvalidArgument,
        "empty",
    )
    .await;
    expect_decrypt_error(
        &mut client,
        decrypt_req(b"garbage!".repeat(8), &key_id),
        Code::InvalidArgument,
        "not made by Coffer",
    )
    .await;
    expect_decrypt_error(
        &mut client,
        decrypt_req(good[..good.len() - 20].to_vec(), &key_id),
        Code::InvalidArgument,
        "",
    )
    .await;
    expect_decrypt_error(
        &mut client,
        decrypt_req(good[..10].to_vec(), &key_id),
        Code::InvalidArgument,
        "truncated",
    )
    .await;
    let mut tampered = good.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x80;
    expect_decrypt_error(
        &mut client,
        decrypt_req(tampered, &key_id),
        Code::InvalidArgument,
        "authentication",
    )
    .await;
    expect_decrypt_error(
        &mut client,
        decrypt_req(vec![0xC0; 2000], &key_id),
        Code::InvalidArgument,
        "longer than",
    )
    .await;
    expect_decrypt_error(
        &mut client,
        decrypt_req(good.clone(), "coffer-0009-0000000000000000"),
        Code::InvalidArgument,
        "request names key_id",
    )
    .await;
    expect_decrypt_error(
        &mut client,
        decrypt_req(good.clone(), ""),
        Code::InvalidArgument,
        "key_id is required",
    )
    .await;
    expect_decrypt_error(
        &mut client,
        decrypt_req(good.clone(), &"k".repeat(2000)),
        Code::InvalidArgument,
        "limit",
    )
    .await;

    // A ciphertext from another plugin (another keystore): unknown key.
    let other = Plugin::start(&[]).await;
    let mut other_client = other.v2().await;
    let foreign = encrypt(&mut other_client, &[1; 32]).await;
    expect_decrypt_error(
        &mut client,
        decrypt_req(foreign.ciphertext, &foreign.key_id),
        Code::NotFound,
        "not in the keystore",
    )
    .await;

    // Annotations: oversized, and keys that are not domain names.
    let mut req = decrypt_req(good.clone(), &key_id);
    req.annotations
        .insert("big.example.com".into(), vec![0; 33 * 1024]);
    expect_decrypt_error(&mut client, req, Code::InvalidArgument, "annotations total").await;
    let mut req = decrypt_req(good.clone(), &key_id);
    req.annotations.insert("Not A Domain".into(), vec![1]);
    expect_decrypt_error(&mut client, req, Code::InvalidArgument, "domain name").await;

    // A message over the transport limit is refused before it is parsed.
    let err = client
        .decrypt(decrypt_req(vec![0; 100 * 1024], &key_id))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);

    // Garbage bytes on a raw connection: the connection dies, the plugin does not.
    let mut raw = std::os::unix::net::UnixStream::connect(&plugin.socket).unwrap();
    raw.write_all(&[0xff; 4096]).unwrap();
    let mut sink = Vec::new();
    let _ = raw.read_to_end(&mut sink);

    // Still serving, still correct.
    let mut client = plugin.v2().await;
    assert_eq!(status(&mut client).await.healthz, "ok");
    assert_eq!(
        decrypt(&mut client, &good, &key_id).await.unwrap(),
        vec![7u8; 32]
    );
    let log = plugin.log_text();
    assert!(!log.contains("panicked"), "plugin panicked:\n{log}");
}

#[tokio::test]
async fn metrics_and_healthz_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let plugin = Plugin::start(&["--metrics-addr", &addr]).await;
    let mut client = plugin.v2().await;
    let key_id = status(&mut client).await.key_id;
    let enc = encrypt(&mut client, &[3; 32]).await;
    decrypt(&mut client, &enc.ciphertext, &key_id)
        .await
        .unwrap();
    let _ = decrypt(&mut client, b"junk", &key_id).await;

    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for needle in [
        "coffer_kms_requests_total{method=\"v2/Decrypt\",code=\"OK\"} 1",
        "coffer_kms_requests_total{method=\"v2/Decrypt\",code=\"INVALID_ARGUMENT\"} 1",
        "coffer_kms_requests_total{method=\"v2/Encrypt\",code=\"OK\"} 1",
        "coffer_kms_request_duration_seconds_bucket{le=",
        &format!("coffer_kms_primary_key{{key_id=\"{key_id}\"}} 1"),
        "coffer_kms_keystore_generation 1",
        "coffer_kms_key_memory_lock_failures 0",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle:?}:\n{metrics}"
        );
    }
    let health = http_get(&addr, "/healthz");
    assert!(
        health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"),
        "{health}"
    );
    assert!(http_get(&addr, "/nope").starts_with("HTTP/1.1 404"));

    // A non-loopback metrics address is refused unless explicitly allowed.
    let dir = tempfile::tempdir().unwrap();
    let out = serve_to_exit(
        &dir.path().join("s"),
        &dir.path().join("k.sock"),
        &["--metrics-addr", "0.0.0.0:9"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
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

//! Key material and plaintext never reach the logs (at trace level), core dumps are off, and
//! KEK pages are locked in memory.

mod common;

use std::fs;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use coffer_platform::Platform;
use common::*;

/// Every printable form a secret could take in a log line.
fn forms(secret: &[u8]) -> Vec<String> {
    let dec: Vec<String> = secret.iter().take(6).map(|b| b.to_string()).collect();
    vec![
        hex::encode(secret),
        hex::encode_upper(secret),
        B64.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        format!("[{}", dec.join(", ")),
        dec.join(","),
    ]
}

fn assert_absent(log: &[u8], what: &str, secret: &[u8]) {
    assert!(
        !log.windows(secret.len()).any(|w| w == secret),
        "{what} appears raw in the log"
    );
    let text = String::from_utf8_lossy(log);
    for form in forms(secret) {
        assert!(
            !text.contains(&form),
            "{what} appears in the log as {form:?}"
        );
    }
}

/// Unseals the KEKs with the simulation key, independently of the plugin, to know what to look for.
fn kek_bytes(state: &std::path::Path) -> Vec<Vec<u8>> {
    let file = fs::read(state.join("keystore")).unwrap();
    let body_len = u32::from_be_bytes(file[12..16].try_into().unwrap()) as usize;
    let body: serde_json::Value = serde_json::from_slice(&file[16..16 + body_len]).unwrap();
    let platform = coffer_platform::sim::SimPlatform::open_or_create(state).unwrap();
    let sealer = platform.sealing_key("coffer keystore kek v1").unwrap();
    let ks_id = body["keystore_id"].as_str().unwrap();
    body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let id = k["id"].as_str().unwrap();
            let sealed = B64.decode(k["sealed"].as_str().unwrap()).unwrap();
            let aad = format!("coffer kek v1\0{ks_id}\0{id}");
            sealer.unseal(aad.as_bytes(), &sealed).unwrap().to_vec()
        })
        .collect()
}

#[tokio::test]
async fn no_key_or_plaintext_in_trace_logs() {
    let mut plugin = Plugin::start(&[]).await;
    let mut client = plugin.v2().await;
    let key_id = status(&mut client).await.key_id;
    let mut plaintexts = Vec::new();
    for _ in 0..20 {
        let p: [u8; 32] = rand::random();
        let enc = encrypt(&mut client, &p).await;
        assert_eq!(
            decrypt(&mut client, &enc.ciphertext, &key_id)
                .await
                .unwrap(),
            p
        );
        plaintexts.push(p);
    }
    // Failures must not echo the input either.
    let p: [u8; 32] = rand::random();
    let _ = client
        .encrypt(coffer_proto::v2::EncryptRequest {
            plaintext: [p.as_slice(); 20].concat(),
            uid: uid(),
        })
        .await
        .unwrap_err();
    plaintexts.push(p);
    assert!(plugin.keys(&["rotate"]).status.success());
    wait_for_status(&mut client, |s| s.key_id != key_id).await;
    let p: [u8; 32] = rand::random();
    let enc = encrypt(&mut client, &p).await;
    decrypt(&mut client, &enc.ciphertext, &enc.key_id)
        .await
        .unwrap();
    plaintexts.push(p);
    assert_eq!(plugin.terminate(), Some(0));

    let log = fs::read(&plugin.log).unwrap();
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("TRACE"),
        "the plugin did not log at trace level"
    );
    assert!(text.contains("event=\"encrypt\""), "no encrypt audit lines");
    assert!(
        text.contains("SIMULATION PLATFORM"),
        "sim mode must say it is insecure"
    );

    let keks = kek_bytes(&plugin.state_dir());
    assert_eq!(keks.len(), 2);
    for (i, kek) in keks.iter().enumerate() {
        assert_eq!(kek.len(), 32);
        assert_absent(&log, &format!("KEK {i}"), kek);
    }
    let sim_root = fs::read(plugin.state_dir().join("sim-platform.key")).unwrap();
    assert_absent(&log, "simulation root key", &sim_root[8..]);
    for (i, p) in plaintexts.iter().enumerate() {
        assert_absent(&log, &format!("plaintext {i}"), p);
    }
}

#[tokio::test]
async fn core_dumps_disabled_and_key_pages_locked() {
    let plugin = Plugin::start(&[]).await;
    let pid = plugin.pid();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(&fields[4..6], ["0", "0"], "{core}");
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let locked_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let memlock = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))
        .unwrap_or("");
    if memlock.split_whitespace().nth(3) == Some("0") {
        eprintln!("RLIMIT_MEMLOCK is 0 here; cannot check locked pages");
    } else {
        assert!(
            locked_kib >= 4,
            "KEK pages are not locked (VmLck {locked_kib} kB; {memlock})"
        );
    }
}

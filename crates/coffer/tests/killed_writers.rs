//! Writers killed mid-write (SIGKILL) must not leave key material behind. A keystore write goes
//! through a temporary file that is a complete sealed keystore; a writer killed before its
//! rename leaves that file, and with it every KEK of its moment. Here `coffer keys rotate` /
//! `keys retire` and `coffer keyd rotate` are killed over and over, half the time at a random
//! moment and half the time exactly when the temporary is complete (the writer stalls there
//! when `COFFER_TEST_ONLY_STALL_AFTER_TEMP` names the file), and then every byte in the
//! directory is searched for the KEKs that are gone.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::keyd::{create_keyd_data, keyd_cli};
use common::*;

const TRIALS: usize = 32;
const STALL_ENV: &str = "COFFER_TEST_ONLY_STALL_AFTER_TEMP";

/// Runs `coffer args` and SIGKILLs it: with `stall`, once it reports its temporary keystore
/// complete; otherwise after a random delay (it may have finished by then).
fn run_and_kill(args: &[String], stall: bool) {
    let mut cmd = Command::new(coffer_bin());
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
    if stall {
        cmd.env(STALL_ENV, "keystore").stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = Vec::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            if line.starts_with("coffer-test: temp complete ") {
                child.kill().unwrap();
                child.wait().unwrap();
                return;
            }
            seen.push(line);
        }
        panic!(
            "coffer {args:?} exited ({:?}) without stalling: {seen:?}",
            child.wait().unwrap()
        );
    }
    let mut child = cmd.stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 40));
    let _ = child.kill();
    child.wait().unwrap();
}

/// Every regular file under `dir`, with its bytes.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                out.insert(entry.path(), fs::read(entry.path()).unwrap());
            }
        }
    }
    out
}

/// The JSON body of a keystore file (see crates/keystore/src/file.rs), if `bytes` is one.
fn keystore_body(bytes: &[u8]) -> Option<serde_json::Value> {
    if bytes.len() < 48 || &bytes[..8] != b"COFFERKS" {
        return None;
    }
    let len = u32::from_be_bytes(bytes[12..16].try_into().unwrap()) as usize;
    serde_json::from_slice(bytes.get(16..16 + len)?).ok()
}

/// KEK id -> sealed material (base64), from every keystore-format file under `dir`: the live
/// keystores and whatever temporaries killed writers left.
fn sealed_keks_under(dir: &Path) -> BTreeMap<String, String> {
    let mut keks = BTreeMap::new();
    for bytes in files_under(dir).values() {
        let Some(body) = keystore_body(bytes) else {
            continue;
        };
        for k in body["keys"].as_array().unwrap() {
            keks.insert(
                k["id"].as_str().unwrap().to_string(),
                k["sealed"].as_str().unwrap().to_string(),
            );
        }
    }
    keks
}

fn temps_under(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_keys()
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp-"))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Proves that no KEK in `gone` (id -> sealed base64) exists anywhere under `dir`: neither its
/// sealed material (as base64 or raw bytes) in any file, nor its id anywhere except as a
/// `retired` record of a live keystore.
fn assert_gone(dir: &Path, gone: &BTreeMap<String, String>) {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    for (path, bytes) in files_under(dir) {
        let body = keystore_body(&bytes);
        for (id, sealed) in gone {
            assert!(
                !contains(&bytes, sealed.as_bytes()),
                "sealed KEK {id} is still in {}",
                path.display()
            );
            assert!(
                !contains(&bytes, &b64.decode(sealed).unwrap()),
                "sealed KEK {id} (raw) is still in {}",
                path.display()
            );
            if !contains(&bytes, id.as_bytes()) {
                continue;
            }
            let body = body.as_ref().unwrap_or_else(|| {
                panic!("KEK id {id} is in {}", path.display());
            });
            let live = body["keys"].as_array().unwrap();
            assert!(
                !live.iter().any(|k| k["id"] == id.as_str()),
                "KEK {id} is still a key of {}",
                path.display()
            );
            let retired = body["retired"].as_array().unwrap();
            assert!(
                retired.iter().any(|r| r["id"] == id.as_str())
                    && bytes
                        .windows(id.len())
                        .filter(|w| *w == id.as_bytes())
                        .count()
                        == 1,
                "KEK id {id} is in {} other than as a retired record",
                path.display()
            );
        }
    }
    assert!(temps_under(dir).is_empty(), "{:?}", temps_under(dir));
}

fn keys_args(verb: &str, state: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec!["keys".into(), verb.into()];
    args.extend(["--platform", "sim", "--state-dir"].map(String::from));
    args.push(state.to_str().unwrap().into());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn live_keys(state: &Path) -> (String, Vec<String>) {
    let out = coffer(
        &keys_args("list", state, &["--json"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys = doc["keys"].as_array().unwrap();
    let primary = keys.iter().find(|k| k["primary"] == true).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let others = keys
        .iter()
        .filter(|k| k["primary"] != true)
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    (primary, others)
}

fn run_ok(args: &[String]) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = coffer(&args);
    assert!(
        out.status.success(),
        "coffer {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn killed_rotations_and_retirements_leave_no_retired_kek_in_the_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    run_ok(&keys_args("init", &state, &[]));
    // Every KEK that ever existed, in the keystore or only in a killed writer's temporary.
    let mut seen = BTreeMap::new();
    let mut stalled = 0;
    for trial in 0..TRIALS {
        let stall = trial % 2 == 0;
        let (_, others) = live_keys(&state);
        let args = match others.first() {
            Some(old) if trial % 4 >= 2 => keys_args("retire", &state, &[old, "--confirm"]),
            _ => keys_args("rotate", &state, &[]),
        };
        run_and_kill(&args, stall);
        stalled += usize::from(stall);
        seen.extend(sealed_keks_under(&state));
    }
    assert!(stalled > 0);

    // The next writer removes the leftovers; then everything but the primary is retired.
    run_ok(&keys_args("rotate", &state, &[]));
    let (primary, others) = live_keys(&state);
    for id in &others {
        run_ok(&keys_args("retire", &state, &[id, "--confirm"]));
    }
    let (after, rest) = live_keys(&state);
    assert_eq!((&after, rest.len()), (&primary, 0));
    let gone: BTreeMap<_, _> = seen.into_iter().filter(|(id, _)| *id != primary).collect();
    assert!(gone.len() >= TRIALS / 4, "{gone:?}");
    assert_gone(&state, &gone);
}

#[tokio::test]
async fn the_plugin_removes_a_killed_writers_keystore_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    run_ok(&keys_args("init", &state, &[]));
    run_and_kill(&keys_args("rotate", &state, &[]), true);
    let (primary, _) = live_keys(&state);
    assert_eq!(temps_under(&state).len(), 1);
    let gone: BTreeMap<_, _> = sealed_keks_under(&state)
        .into_iter()
        .filter(|(id, _)| *id != primary)
        .collect();
    assert_eq!(gone.len(), 1, "the killed rotation's new KEK");

    let plugin = Plugin::start_in(dir, &[]).await;
    assert_gone(&plugin.state_dir(), &gone);
    assert!(
        plugin.log_text().contains("removed a temporary keystore"),
        "{}",
        plugin.log_text()
    );
}

#[test]
fn killed_keyd_rotations_leave_no_stray_kek_in_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    create_keyd_data(&data, &["ring"]);
    let rotate: Vec<String> = ["keyd", "rotate", "--platform", "sim", "--data-dir"]
        .iter()
        .map(|s| s.to_string())
        .chain([data.to_str().unwrap().to_string(), "ring".to_string()])
        .collect();
    let mut before = BTreeMap::new();
    for trial in 0..TRIALS / 2 {
        run_and_kill(&rotate, trial % 2 == 0);
        before.extend(sealed_keks_under(&data));
    }

    keyd_cli(&data, &["rotate", "ring"]);
    let ring = fs::read(data.join("keyrings/ring/keystore")).unwrap();
    let live: Vec<String> = keystore_body(&ring).unwrap()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap().to_string())
        .collect();
    // keyd has no retirement; what must be gone are the KEKs only killed writers ever held.
    let gone: BTreeMap<_, _> = before
        .into_iter()
        .filter(|(id, _)| !live.contains(id))
        .collect();
    assert!(!gone.is_empty());
    assert_gone(&data, &gone);
}

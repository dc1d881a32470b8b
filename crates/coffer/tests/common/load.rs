//! A stream of KMS calls through a real plugin, for the tests that kill keyd replicas under
//! load, and the plugin directory those tests start from.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use super::keyd::sim_signer;
use super::{decrypt, try_encrypt, V2Client};

/// Encrypt then Decrypt in a loop until `stop`, counting the calls and the failed ones.
pub async fn load(
    mut client: V2Client,
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<tonic::Status>>>,
) {
    let mut n = 0u8;
    while !stop.load(Ordering::Relaxed) {
        n = n.wrapping_add(1);
        let secret = [n; 32];
        calls.fetch_add(1, Ordering::Relaxed);
        let enc = match try_encrypt(&mut client, &secret).await {
            Ok(enc) => enc,
            Err(e) => {
                failed.lock().unwrap().push(e);
                continue;
            }
        };
        calls.fetch_add(1, Ordering::Relaxed);
        match decrypt(&mut client, &enc.ciphertext, &enc.key_id).await {
            Ok(plain) => assert_eq!(plain, secret),
            Err(e) => failed.lock().unwrap().push(e),
        }
    }
}

/// A plugin directory whose sim state exists, so its signer can go into keyd's policy.
pub fn plugin_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    sim_signer(&state);
    (dir, state)
}

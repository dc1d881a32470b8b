//! A stream of KMS calls through a real plugin, for the tests that kill keyd replicas under
//! load, and the plugin directory those tests start from.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// [`load`] on several workers at once, counting calls and failures across them.
pub struct Load {
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<tonic::Status>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `workers` callers on clones of `client`.
    pub fn start(client: &V2Client, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let workers = (0..workers)
            .map(|_| {
                tokio::spawn(load(
                    client.clone(),
                    stop.clone(),
                    calls.clone(),
                    failed.clone(),
                ))
            })
            .collect();
        Load {
            stop,
            calls,
            failed,
            workers,
        }
    }

    /// Calls made so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// Waits until `more` calls were made after this one (a stalled load fails after 60 s).
    pub async fn more(&self, more: usize) {
        let target = self.calls() + more;
        let started = Instant::now();
        while self.calls() < target {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the load stalled"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the workers, prints `what` with the counts, and checks that at most one call per
    /// worker failed (the calls in flight when something was killed).
    pub async fn finish(self, what: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let workers = self.workers.len();
        for w in self.workers {
            w.await.unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        let calls = self.calls.load(Ordering::Relaxed);
        eprintln!("{what}: {calls} calls, {} failed", failed.len());
        assert!(
            failed.len() <= workers,
            "{} of {calls} calls failed: {failed:?}",
            failed.len()
        );
    }
}

/// A plugin directory whose sim state exists, so its signer can go into keyd's policy.
pub fn plugin_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    sim_signer(&state);
    (dir, state)
}

//! Runs the load generator against an in-process fake plugin on a unix socket.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use coffer_bench::{run_kms, BenchError, KmsBenchArgs};
use coffer_proto::{v1beta1, v2};
use tonic::{Request, Response, Status};

const KEY_ID: &str = "fake-key-1";

/// Fault injection knobs.
#[derive(Default, Clone, Copy)]
struct Faults {
    /// Every n-th Decrypt (v1 and v2) returns a wrong plaintext.
    corrupt_every: u64,
    /// Every n-th Decrypt fails with UNAVAILABLE.
    unavailable_every: u64,
    /// Decrypts after the first one sleep this long.
    slow_after_first: Option<Duration>,
    /// Status fails with INTERNAL.
    status_fails: bool,
}

#[derive(Default)]
struct Fake {
    faults: Faults,
    decrypts: AtomicU64,
    uids: Mutex<HashSet<String>>,
    duplicate_or_empty_uids: AtomicU64,
    wrong_key_ids: AtomicU64,
    missing_deadline: AtomicU64,
    /// Every ciphertext a v2 Decrypt carried.
    ciphertexts: Mutex<HashSet<Vec<u8>>>,
}

impl Fake {
    fn seen_uid(&self, uid: &str) {
        if uid.len() != 36 || !self.uids.lock().unwrap().insert(uid.to_string()) {
            self.duplicate_or_empty_uids.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn check_deadline<T>(&self, req: &Request<T>) {
        if req.metadata().get("grpc-timeout").is_none() {
            self.missing_deadline.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Shared fault logic for both Decrypt versions.
    async fn decrypt(&self, ciphertext: &[u8]) -> Result<Vec<u8>, Status> {
        let n = self.decrypts.fetch_add(1, Ordering::Relaxed) + 1;
        if let (Some(d), true) = (self.faults.slow_after_first, n > 1) {
            tokio::time::sleep(d).await;
        }
        if self.faults.unavailable_every > 0 && n.is_multiple_of(self.faults.unavailable_every) {
            return Err(Status::unavailable("injected"));
        }
        let mut plain = ciphertext
            .strip_prefix(b"ct:")
            .ok_or_else(|| Status::invalid_argument("not our ciphertext"))?
            .to_vec();
        if self.faults.corrupt_every > 0 && n.is_multiple_of(self.faults.corrupt_every) {
            plain[0] ^= 1;
        }
        Ok(plain)
    }
}

fn seal(plain: &[u8]) -> Vec<u8> {
    [b"ct:".as_slice(), plain].concat()
}

struct V2(Arc<Fake>);
struct V1(Arc<Fake>);

#[tonic::async_trait]
impl v2::key_management_service_server::KeyManagementService for V2 {
    async fn status(
        &self,
        req: Request<v2::StatusRequest>,
    ) -> Result<Response<v2::StatusResponse>, Status> {
        self.0.check_deadline(&req);
        if self.0.faults.status_fails {
            return Err(Status::internal("kek unavailable"));
        }
        Ok(Response::new(v2::StatusResponse {
            version: "v2".into(),
            healthz: "ok".into(),
            key_id: KEY_ID.into(),
        }))
    }

    async fn decrypt(
        &self,
        req: Request<v2::DecryptRequest>,
    ) -> Result<Response<v2::DecryptResponse>, Status> {
        self.0.check_deadline(&req);
        let r = req.into_inner();
        self.0.seen_uid(&r.uid);
        if r.key_id != KEY_ID
            || r.annotations.get("fake.coffer.dev").map(Vec::as_slice) != Some(b"1")
        {
            self.0.wrong_key_ids.fetch_add(1, Ordering::Relaxed);
        }
        self.0
            .ciphertexts
            .lock()
            .unwrap()
            .insert(r.ciphertext.clone());
        let plaintext = self.0.decrypt(&r.ciphertext).await?;
        Ok(Response::new(v2::DecryptResponse { plaintext }))
    }

    async fn encrypt(
        &self,
        req: Request<v2::EncryptRequest>,
    ) -> Result<Response<v2::EncryptResponse>, Status> {
        self.0.check_deadline(&req);
        let r = req.into_inner();
        self.0.seen_uid(&r.uid);
        Ok(Response::new(v2::EncryptResponse {
            ciphertext: seal(&r.plaintext),
            key_id: KEY_ID.into(),
            annotations: [("fake.coffer.dev".to_string(), b"1".to_vec())].into(),
        }))
    }
}

#[tonic::async_trait]
impl v1beta1::key_management_service_server::KeyManagementService for V1 {
    async fn version(
        &self,
        req: Request<v1beta1::VersionRequest>,
    ) -> Result<Response<v1beta1::VersionResponse>, Status> {
        Ok(Response::new(v1beta1::VersionResponse {
            version: req.into_inner().version,
            runtime_name: "fake".into(),
            runtime_version: "0.0.1".into(),
        }))
    }

    async fn decrypt(
        &self,
        req: Request<v1beta1::DecryptRequest>,
    ) -> Result<Response<v1beta1::DecryptResponse>, Status> {
        let r = req.into_inner();
        let plain = self.0.decrypt(&r.cipher).await?;
        Ok(Response::new(v1beta1::DecryptResponse { plain }))
    }

    async fn encrypt(
        &self,
        req: Request<v1beta1::EncryptRequest>,
    ) -> Result<Response<v1beta1::EncryptResponse>, Status> {
        Ok(Response::new(v1beta1::EncryptResponse {
            cipher: seal(&req.into_inner().plain),
        }))
    }
}

/// Serves the fake on `<dir>/kms.sock` from a background thread for the rest of the test.
fn serve(dir: &Path, faults: Faults) -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake {
        faults,
        ..Fake::default()
    });
    let path = dir.join("kms.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let f = Arc::clone(&fake);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(
                    v2::key_management_service_server::KeyManagementServiceServer::new(V2(
                        Arc::clone(&f),
                    )),
                )
                .add_service(
                    v1beta1::key_management_service_server::KeyManagementServiceServer::new(V1(f)),
                )
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
                .unwrap();
        });
    });
    (fake, format!("unix://{}", path.display()))
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: KmsBenchArgs,
}

/// Parses `extra` plus short defaults for whatever `extra` does not set.
fn args(socket: &str, extra: &[&str]) -> KmsBenchArgs {
    let mut argv = vec!["bench", "--socket", socket];
    argv.extend_from_slice(extra);
    for (flag, value) in [
        ("--warmup", "100ms"),
        ("--duration", "400ms"),
        ("--concurrency", "4"),
    ] {
        if !extra.contains(&flag) {
            argv.extend([flag, value]);
        }
    }
    Cli::try_parse_from(argv).unwrap().args
}

#[test]
fn decrypt_happy_path() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, socket) = serve(dir.path(), Faults::default());
    let pid = std::process::id().to_string();
    let r = run_kms(&args(
        &socket,
        &["--connections", "2", "--threads", "2", "--plugin-pid", &pid],
    ))
    .unwrap();
    println!("{r}");
    assert!(r.ops > 0, "{r}");
    assert!(r.errors.is_empty(), "{r}");
    assert_eq!(r.key_id.as_deref(), Some(KEY_ID));
    assert!(r.elapsed >= Duration::from_millis(400), "{r}");
    assert!(
        r.p50 > Duration::ZERO && r.p50 <= r.p99 && r.p99 <= r.max,
        "{r}"
    );
    assert!(r.generator_cpu_cores > 0.0, "{r}");
    // The fake plugin lives in this process, so its CPU includes the generator's.
    assert!(
        r.plugin_cpu_cores.is_some() && r.plugin_peak_rss_kib.unwrap() > 0,
        "{r}"
    );
    assert!(r.notes.is_empty(), "{r}");
    assert_eq!(fake.duplicate_or_empty_uids.load(Ordering::Relaxed), 0);
    assert_eq!(fake.wrong_key_ids.load(Ordering::Relaxed), 0);
    assert_eq!(fake.missing_deadline.load(Ordering::Relaxed), 0);
    // Every call (setup, warmup and measured) carried a distinct uid.
    assert!(fake.uids.lock().unwrap().len() as u64 > r.ops);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["op"], "decrypt");
}

#[test]
fn other_ops() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, socket) = serve(dir.path(), Faults::default());
    for op in ["encrypt", "status", "v1-decrypt"] {
        let r = run_kms(&args(&socket, &["--op", op])).unwrap();
        assert!(r.ops > 0, "{op}: {r}");
        assert!(r.errors.is_empty(), "{op}: {r}");
    }
}

#[test]
fn errors_are_counted_by_code() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, socket) = serve(
        dir.path(),
        Faults {
            corrupt_every: 5,
            unavailable_every: 7,
            ..Faults::default()
        },
    );
    let r = run_kms(&args(&socket, &[])).unwrap();
    println!("{r}");
    assert!(r.errors.get("MISMATCH").copied().unwrap_or(0) > 0, "{r}");
    assert!(r.errors.get("UNAVAILABLE").copied().unwrap_or(0) > 0, "{r}");
    assert_eq!(r.errors.len(), 2, "{r}");
    assert!(r.ops > 0);
}

#[test]
fn slow_calls_hit_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, socket) = serve(
        dir.path(),
        Faults {
            slow_after_first: Some(Duration::from_millis(500)),
            ..Faults::default()
        },
    );
    let r = run_kms(&args(&socket, &["--timeout", "50ms", "--warmup", "0s"])).unwrap();
    println!("{r}");
    assert_eq!(r.ops, 0, "{r}");
    assert!(
        r.errors.get("DEADLINE_EXCEEDED").copied().unwrap_or(0) >= 4,
        "{r}"
    );
    assert!(!r.notes.is_empty(), "{r}");
}

#[test]
fn failing_status_is_a_setup_error() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, socket) = serve(
        dir.path(),
        Faults {
            status_fails: true,
            ..Faults::default()
        },
    );
    let err = run_kms(&args(&socket, &[])).unwrap_err();
    assert!(matches!(err, BenchError::Setup { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("v2 Status") && msg.contains("INTERNAL") && msg.contains("kek unavailable"),
        "{msg}"
    );
}

#[test]
fn several_ciphertexts_are_decrypted_in_turn() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, socket) = serve(dir.path(), Faults::default());
    let r = run_kms(&args(&socket, &["--ciphertexts", "5"])).unwrap();
    assert!(r.ops > 5 && r.errors.is_empty(), "{r}");
    assert_eq!(r.ciphertexts, 5);
    // Every plaintext was checked against its own DEK (a mix-up would be a MISMATCH).
    assert_eq!(fake.ciphertexts.lock().unwrap().len(), 5);
}

#[test]
fn kill_pid_kills_the_process_mid_run_and_reports_the_failover() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, socket) = serve(dir.path(), Faults::default());
    let mut victim = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let pid = victim.id().to_string();
    let r = run_kms(&args(
        &socket,
        &["--kill-pid", &pid, "--kill-after", "200ms"],
    ))
    .unwrap();
    println!("{r}");
    let status = victim.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "{status:?}");
    let fo = r.failover.as_ref().expect("a failover report");
    assert!(fo.killed_at >= Duration::from_millis(200), "{r}");
    // The fake did not depend on the victim: nothing failed, and calls went on after it.
    assert_eq!((fo.in_flight_failed, fo.failed_after), (0, 0), "{r}");
    assert!(
        fo.in_flight <= 4 && fo.after.calls > 0 && fo.before.calls > 0,
        "{r}"
    );
    assert!(
        r.to_string().contains(&format!("kill       pid {pid} at")),
        "{r}"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["failover"]["stall_us"].as_u64().is_some(), "{json}");
}

#[test]
fn a_kill_that_fails_is_a_note_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let (_fake, socket) = serve(dir.path(), Faults::default());
    // No such process: above any pid_max (killing a reaped child's pid could hit a reused one).
    let pid = i32::MAX.to_string();
    let r = run_kms(&args(
        &socket,
        &["--kill-pid", &pid, "--kill-after", "100ms"],
    ))
    .unwrap();
    assert!(r.failover.is_none(), "{r}");
    assert!(r.notes.iter().any(|n| n.contains("cannot kill it")), "{r}");
}

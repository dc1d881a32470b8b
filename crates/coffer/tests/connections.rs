//! Connection slots and deadlines: silent, idle and refused connections must not lock the
//! API server out of the plugin (or callers out of keyd).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use coffer_keyd_client::KeydClient;
use coffer_proto::v2;
use common::*;
use tonic::Code;

/// The uid the refused caller runs as.
const NOBODY: u32 = 65534;
/// Environment of [`hold_refused_connections`]: the socket, and how many connections to hold.
const HOLD_SOCKET: &str = "COFFER_TEST_HOLD_SOCKET";
const HOLD_COUNT: &str = "COFFER_TEST_HOLD_COUNT";

/// Status as kube-apiserver calls it: a fresh connection, and 3 s for the whole call.
async fn status_within_api_server_deadline(socket: &Path) -> Result<v2::StatusResponse, String> {
    let call = async {
        let mut client = v2_client(socket).await.map_err(|e| e.to_string())?;
        client
            .status(v2::StatusRequest {})
            .await
            .map(|r| r.into_inner())
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .map_err(|_| "no answer within 3s".to_string())?
}

/// Waits (generously: this is not a speed test) until the plugin closes `conn`.
fn closed_by_peer(conn: &mut UnixStream) -> bool {
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 64];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            // The server's HTTP/2 settings frame: keep reading.
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn silent_and_refused_connections_do_not_lock_out_the_api_server() {
    if coffer_platform::process::current_uid() != 0 {
        eprintln!("skipping: running a refused caller as uid {NOBODY} needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The refused caller must reach the socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let plugin = Plugin::start_in(
        dir,
        &[
            "--socket-mode",
            "666",
            "--max-connections",
            "16",
            "--handshake-timeout",
            "1s",
        ],
    )
    .await;

    // A caller the plugin refuses holds as many silent connections as it can, reconnecting
    // as they are closed: more than all slots.
    let mut holder = Command::new(std::env::current_exe().unwrap())
        .args([
            "hold_refused_connections",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(HOLD_SOCKET, &plugin.socket)
        .env(HOLD_COUNT, "64")
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .find(|l| l.starts_with("holding") || l.starts_with("FAILED"));
    assert_eq!(
        ready.as_deref(),
        Some("holding"),
        "refused caller helper did not start; plugin log:\n{}",
        plugin.log_text()
    );

    // The allowed caller still gets its answer within the API server's deadline, every time.
    for _ in 0..3 {
        let status = status_within_api_server_deadline(&plugin.socket)
            .await
            .unwrap_or_else(|e| panic!("Status refused by a full plugin: {e}"));
        assert_eq!(status.healthz, "ok");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Silent connections of the allowed caller fill the remaining slots, and are closed after
    // --handshake-timeout, so the API server gets in again.
    let mut silent: Vec<UnixStream> = (0..64)
        .filter_map(|_| UnixStream::connect(&plugin.socket).ok())
        .collect();
    assert!(!silent.is_empty());
    for conn in &mut silent {
        assert!(
            closed_by_peer(conn),
            "a silent connection was not closed; plugin log:\n{}",
            plugin.log_text()
        );
    }
    let status = status_within_api_server_deadline(&plugin.socket)
        .await
        .unwrap_or_else(|e| panic!("Status after the silent connections were closed: {e}"));
    assert_eq!(status.healthz, "ok");

    let _ = holder.kill();
    let _ = holder.wait();
}

/// Not a test of its own: run by the test above as uid 65534, a caller the plugin refuses.
/// Checks that a refused call is answered with PERMISSION_DENIED and its connection then
/// closed, prints `holding`, then keeps `COFFER_TEST_HOLD_COUNT` silent connections open until
/// it is killed, replacing each one the plugin closes.
#[tokio::test]
#[ignore = "helper: run as another uid by silent_and_refused_connections_do_not_lock_out_the_api_server"]
async fn hold_refused_connections() {
    let socket = std::path::PathBuf::from(std::env::var_os(HOLD_SOCKET).expect(HOLD_SOCKET));
    let count: usize = std::env::var(HOLD_COUNT).unwrap().parse().unwrap();
    let refused = async {
        let mut client = v2_client(&socket).await.map_err(|e| e.to_string())?;
        match client.status(v2::StatusRequest {}).await {
            Err(e) if e.code() == Code::PermissionDenied && e.message().contains("--allow-uid") => {
                Ok(())
            }
            other => Err(format!("a refused caller's Status: {other:?}")),
        }
    }
    .await;
    if let Err(e) = refused {
        println!("FAILED");
        panic!("{e}");
    }

    let mut held: Vec<UnixStream> = Vec::new();
    let mut announced = false;
    loop {
        held.retain(still_open);
        while held.len() < count {
            match UnixStream::connect(&socket) {
                Ok(c) => held.push(c),
                Err(_) => break,
            }
        }
        if !announced {
            println!("holding");
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the plugin still keeps `conn` open (a read would block rather than report EOF).
fn still_open(conn: &UnixStream) -> bool {
    conn.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match (&*conn).read(&mut buf) {
            Ok(0) => return false,
            // The server's HTTP/2 settings frame.
            Ok(_) => continue,
            Err(e) => return e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyd_closes_silent_peers_and_keeps_room_for_attested_callers() {
    use common::keyd::{client_options, create_keyd_data, free_addr, sim_role_policy, KeydProcess};
    use tokio::io::AsyncReadExt;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["cluster-a"]);
    let caller = dir.path().join("a");
    let policy = sim_role_policy(dir.path(), "kms-plugin:a", &caller);
    let config = dir.path().join("keyd.yaml");
    std::fs::write(
        &config,
        "keyrings:\n  cluster-a:\n    status: [\"kms-plugin:a\"]\n",
    )
    .unwrap();
    let keyd = KeydProcess::start(
        &data,
        free_addr(),
        &policy,
        &config,
        &["--max-connections", "8", "--handshake-timeout", "1s"],
    );

    // Peers on another address connect and never speak, more of them than keyd has slots.
    let mut silent = Vec::new();
    for _ in 0..40 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        if let Ok(conn) = socket.connect(keyd.addr).await {
            silent.push(conn);
        }
    }

    // An attested caller still connects and is answered.
    let mut client = KeydClient::connect(keyd.addr, client_options(&caller, &keyd.signer()))
        .await
        .unwrap_or_else(|e| panic!("attested caller locked out: {e}\n{}", keyd.log_text()));
    client
        .status("cluster-a")
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    // Every silent peer is closed: at once when over its budget, else at --handshake-timeout.
    for conn in &mut silent {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(30), conn.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "a silent peer was not closed: {read:?}\n{}",
            keyd.log_text()
        );
    }
    // keyd logs the timeout right after closing the connection.
    let logged = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        keyd.log_text().contains("TLS handshake timed out")
    });
    assert!(logged, "{}", keyd.log_text());
}

//! A keyd address that accepts TCP but never completes the TLS handshake (a wrong port, a
//! half-dead proxy) makes a client with a timeout give up with the timeout error, not hang.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_keyd_client::{ClientError, KeydClient};

#[tokio::test]
async fn connecting_to_a_port_that_never_speaks_tls_times_out() {
    // The kernel completes TCP connections into the backlog; nothing ever reads or answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let policy = Policy::from_yaml(&format!(
        "version: 1\nallow_simulation: true\nroles:\n  - name: keyd\n    sim: {{ signer: [\"{}\"] }}\n",
        "00".repeat(32)
    ))
    .unwrap();

    let err = KeydClient::connect_unattested_within(
        addr,
        Arc::new(policy),
        VerifyOptions::new(SystemTime::now()),
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();

    let ClientError::TimedOut { addr: named, .. } = &err else {
        panic!("expected the timeout error, got {err}");
    };
    assert_eq!(named, &addr.to_string());
    let text = err.to_string();
    assert!(text.contains(&addr.to_string()), "{text}");
    assert!(text.contains("is keyd listening there?"), "{text}");
    assert!(text.contains("firewall"), "{text}");
}

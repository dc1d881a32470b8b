//! Requests that are the client's fault (not protobuf, a string field that is not UTF-8, a
//! body shorter than its gRPC length prefix) are answered INVALID_ARGUMENT, not INTERNAL,
//! by the real plugin over its real socket.

mod common;

use common::raw_grpc::raw_grpc_call;
use common::*;

/// gRPC framing: uncompressed, big-endian length, message.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    body
}

#[tokio::test]
async fn malformed_requests_are_invalid_argument() {
    let plugin = Plugin::start(&[]).await;
    // Field 1 (bytes) "A", then field 2 (string) holding bytes that are not UTF-8.
    let non_utf8_uid = framed(&[0x0a, 0x01, b'A', 0x12, 0x02, 0xff, 0xfe]);
    // v1beta1: field 1 is the `version` string.
    let non_utf8_version = framed(&[0x0a, 0x02, 0xc3, 0x28]);
    let not_protobuf = framed(&[0xff, 0xff, 0xff, 0xff]);
    let mut short = framed(&[0x0a, 0x08, 1, 2, 3, 4, 5, 6, 7, 8]);
    short.truncate(9);
    let cases: [(&str, &str, Vec<u8>, &str); 6] = [
        (
            "v2 uid not UTF-8",
            "/v2.KeyManagementService/Decrypt",
            non_utf8_uid.clone(),
            "UTF-8",
        ),
        (
            "v2 Encrypt uid not UTF-8",
            "/v2.KeyManagementService/Encrypt",
            non_utf8_uid,
            "UTF-8",
        ),
        (
            "v1beta1 version not UTF-8",
            "/v1beta1.KeyManagementService/Decrypt",
            non_utf8_version,
            "UTF-8",
        ),
        (
            "not protobuf",
            "/v2.KeyManagementService/Decrypt",
            not_protobuf,
            "not a valid protobuf message",
        ),
        (
            "body shorter than its length prefix",
            "/v2.KeyManagementService/Decrypt",
            short,
            "length prefix",
        ),
        (
            "empty body",
            "/v2.KeyManagementService/Status",
            Vec::new(),
            "empty",
        ),
    ];
    for (name, path, body, needle) in cases {
        let socket = plugin.socket.clone();
        let response =
            tokio::task::spawn_blocking(move || raw_grpc_call(&socket, "localhost", path, &body))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            response.header("grpc-status"),
            Some("3"),
            "{name}: expected INVALID_ARGUMENT, got {:?}",
            response.headers
        );
        let message = response.grpc_message();
        assert!(message.contains(needle), "{name}: {message:?}");
    }
    // None of it disturbed the plugin.
    let mut client = plugin.v2().await;
    assert_eq!(status(&mut client).await.healthz, "ok");
}

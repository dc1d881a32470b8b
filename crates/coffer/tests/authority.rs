//! kube-apiserver releases without the fix for kubernetes#126929 send the socket path itself as
//! the HTTP/2 `:authority`. Both that and `localhost` must work, over the real socket.

mod common;

use std::path::Path;

use common::raw_grpc::raw_grpc_call;
use common::Plugin;
use prost::Message;

/// A hand-built gRPC call to v2 Status with the given `:authority`, the way a Go HTTP/2 client
/// sends it. Returns the response headers+trailers and the decoded response, or the reason the
/// server refused the stream.
fn raw_status_call(
    socket: &Path,
    authority: &str,
) -> Result<(Vec<(String, String)>, coffer_proto::v2::StatusResponse), String> {
    let response = raw_grpc_call(
        socket,
        authority,
        "/v2.KeyManagementService/Status",
        &[0, 0, 0, 0, 0],
    )?;
    let (got_headers, data) = (response.headers, response.body);
    if data.len() < 5 {
        return Err(format!("no response message; headers {got_headers:?}"));
    }
    let response =
        coffer_proto::v2::StatusResponse::decode(&data[5..]).map_err(|e| e.to_string())?;
    Ok((got_headers, response))
}

#[tokio::test]
async fn socket_path_and_localhost_authorities_are_both_served() {
    let plugin = Plugin::start(&[]).await;
    let socket_authority = plugin.socket.to_str().unwrap().to_string();
    for authority in [
        "localhost",
        "/var/run/kmsplugin/socket.sock",
        socket_authority.as_str(),
    ] {
        let socket = plugin.socket.clone();
        let authority_owned = authority.to_string();
        let (headers, response) =
            tokio::task::spawn_blocking(move || raw_status_call(&socket, &authority_owned))
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!(":authority {authority:?} refused: {e}"));
        assert!(
            headers.contains(&(":status".into(), "200".into())),
            "{headers:?}"
        );
        assert!(
            headers.contains(&("grpc-status".into(), "0".into())),
            "{headers:?}"
        );
        assert_eq!(response.healthz, "ok");
        assert_eq!(response.version, "v2");
    }
}

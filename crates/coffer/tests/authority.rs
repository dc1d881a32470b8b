//! kube-apiserver releases without the fix for kubernetes#126929 send the socket path itself as
//! the HTTP/2 `:authority`. Both that and `localhost` must work, over the real socket.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::Plugin;
use prost::Message;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn read_frame(s: &mut UnixStream) -> (u8, u8, u32, Vec<u8>) {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).expect("read frame header");
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0; len];
    s.read_exact(&mut payload).expect("read frame payload");
    (head[3], head[4], stream, payload)
}

/// A hand-built gRPC call to v2 Status with the given `:authority`, the way a Go HTTP/2 client
/// sends it. Returns the response headers+trailers and the decoded response, or the reason the
/// server refused the stream.
fn raw_status_call(
    socket: &Path,
    authority: &str,
) -> Result<(Vec<(String, String)>, coffer_proto::v2::StatusResponse), String> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut encoder = loona_hpack::Encoder::new();
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/v2.KeyManagementService/Status"),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"user-agent", b"grpc-go/1.65.0"),
        (b"te", b"trailers"),
        (b"grpc-timeout", b"2999965u"),
    ];
    let block = encoder.encode(headers);
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out.extend(frame(0x1, 0x4, 1, &block));
    out.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0]));
    s.write_all(&out).unwrap();

    let mut decoder = loona_hpack::Decoder::new();
    let mut got_headers = Vec::new();
    let mut data = Vec::new();
    loop {
        let (kind, flags, stream, payload) = read_frame(&mut s);
        match kind {
            0x4 if flags & 1 == 0 => s.write_all(&frame(0x4, 1, 0, &[])).unwrap(),
            0x6 if flags & 1 == 0 => s.write_all(&frame(0x6, 1, 0, &payload)).unwrap(),
            0x1 if stream == 1 => {
                for (n, v) in decoder.decode(&payload).map_err(|e| format!("{e:?}"))? {
                    got_headers.push((
                        String::from_utf8_lossy(&n).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    ));
                }
                if flags & 1 != 0 {
                    break;
                }
            }
            0x0 if stream == 1 => {
                data.extend_from_slice(&payload);
                if flags & 1 != 0 {
                    break;
                }
            }
            0x3 if stream == 1 => return Err(format!("stream reset, error code {:?}", payload)),
            0x7 => return Err(format!("connection closed with GOAWAY {:?}", payload)),
            _ => {}
        }
    }
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

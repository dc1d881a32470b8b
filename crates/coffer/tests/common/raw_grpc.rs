//! Hand-built HTTP/2 gRPC calls over the plugin's unix socket: what a client sends byte for
//! byte (a Go client's headers, malformed bodies), without a gRPC library in between.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

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

/// The answer to a raw call: response headers and trailers in order, and the response body.
pub struct RawResponse {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The value of the first header or trailer called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `grpc-message`, percent-decoded as the gRPC wire format requires.
    pub fn grpc_message(&self) -> String {
        let raw = self.header("grpc-message").unwrap_or_default().as_bytes();
        let mut out = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match (raw[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'%', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (other, _) => {
                    out.push(other);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Calls `path` with `authority` and the request body `body` (gRPC framing included, so it
/// can be malformed) the way a Go HTTP/2 client does. Returns the answer, or the reason the
/// server refused the stream.
pub fn raw_grpc_call(
    socket: &Path,
    authority: &str,
    path: &str,
    body: &[u8],
) -> Result<RawResponse, String> {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut encoder = loona_hpack::Encoder::new();
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
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
    out.extend(frame(0x0, 0x1, 1, body));
    s.write_all(&out).unwrap();

    let mut decoder = loona_hpack::Decoder::new();
    let mut response = RawResponse {
        headers: Vec::new(),
        body: Vec::new(),
    };
    loop {
        let (kind, flags, stream, payload) = read_frame(&mut s);
        match kind {
            0x4 if flags & 1 == 0 => s.write_all(&frame(0x4, 1, 0, &[])).unwrap(),
            0x6 if flags & 1 == 0 => s.write_all(&frame(0x6, 1, 0, &payload)).unwrap(),
            0x1 if stream == 1 => {
                for (n, v) in decoder.decode(&payload).map_err(|e| format!("{e:?}"))? {
                    response.headers.push((
                        String::from_utf8_lossy(&n).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    ));
                }
                if flags & 1 != 0 {
                    break;
                }
            }
            0x0 if stream == 1 => {
                response.body.extend_from_slice(&payload);
                if flags & 1 != 0 {
                    break;
                }
            }
            0x3 if stream == 1 => return Err(format!("stream reset, error code {:?}", payload)),
            0x7 => return Err(format!("connection closed with GOAWAY {:?}", payload)),
            _ => {}
        }
    }
    Ok(response)
}

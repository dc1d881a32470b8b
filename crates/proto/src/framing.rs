//! Request framing checks for the unary gRPC servers (the plugin and keyd).
//!
//! A unary request body is one gRPC frame: a flag byte, a 4-byte length, then that many bytes
//! of message. tonic reports a body that ends early ("Unexpected EOF"), an empty body and an
//! unknown flag as INTERNAL, as if the server had failed. They are the client's fault, so this
//! layer reads the (small) body first and answers them with INVALID_ARGUMENT saying what is
//! wrong; a well-formed body is handed on unchanged. A length over the server's message limit
//! is answered OUT_OF_RANGE before the rest is read, as tonic would.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tonic::body::Body;
use tonic::Status;

/// Flag byte and big-endian length before every gRPC message.
const FRAME_HEADER: usize = 5;

/// Checks the framing of every request before the gRPC server decodes it.
#[derive(Debug, Clone, Copy)]
pub struct RequestFramingLayer {
    max_message_len: usize,
}

impl RequestFramingLayer {
    /// Requests whose message is longer than `max_message_len` are refused with OUT_OF_RANGE.
    pub fn new(max_message_len: usize) -> Self {
        RequestFramingLayer { max_message_len }
    }
}

impl<S> tower::Layer<S> for RequestFramingLayer {
    type Service = RequestFraming<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestFraming {
            inner,
            max_message_len: self.max_message_len,
        }
    }
}

/// The service [`RequestFramingLayer`] wraps.
#[derive(Debug, Clone)]
pub struct RequestFraming<S> {
    inner: S,
    max_message_len: usize,
}

impl<S> tower::Service<http::Request<Body>> for RequestFraming<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was not polled ready stays here; the ready one serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max = self.max_message_len;
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            match read_frame(body, max).await {
                Ok(frame) => {
                    let body = Body::new(http_body_util::Full::new(frame));
                    let request = http::Request::from_parts(parts, body);
                    inner.call(request).await
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Reads the one frame of a unary request, refusing what cannot be a well-formed one.
async fn read_frame(mut body: Body, max_message_len: usize) -> Result<Bytes, Status> {
    let mut buf = BytesMut::new();
    let mut announced: Option<usize> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Status::cancelled(format!(
                "the request body could not be read: {}",
                e.message()
            ))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        if announced.is_none() && buf.len() >= FRAME_HEADER {
            announced = Some(check_header(&buf, max_message_len)?);
        }
        if let Some(len) = announced {
            if buf.len() > FRAME_HEADER + len {
                return Err(Status::invalid_argument(
                    "the request body holds more than one gRPC message; a unary call sends exactly one",
                ));
            }
        }
    }
    match announced {
        None if buf.is_empty() => Err(Status::invalid_argument(
            "the request body is empty; a unary call sends exactly one gRPC message",
        )),
        None => Err(Status::invalid_argument(format!(
            "the request body is {} bytes, shorter than a gRPC message header ({FRAME_HEADER} bytes)",
            buf.len()
        ))),
        Some(len) if buf.len() < FRAME_HEADER + len => Err(Status::invalid_argument(format!(
            "the request body ends after {} of the {len} message bytes its gRPC length prefix announces",
            buf.len() - FRAME_HEADER
        ))),
        Some(_) => Ok(buf.freeze()),
    }
}

/// The message length a frame header announces.
fn check_header(header: &[u8], max_message_len: usize) -> Result<usize, Status> {
    if header[0] != 0 {
        return Err(Status::invalid_argument(format!(
            "gRPC message flag {} is not accepted: this server takes uncompressed messages only (flag 0)",
            header[0]
        )));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > max_message_len {
        return Err(Status::out_of_range(format!(
            "the request message is {len} bytes; the limit is {max_message_len} bytes"
        )));
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: &'static [u8]) -> Body {
        Body::new(http_body_util::Full::new(Bytes::from_static(bytes)))
    }

    async fn code(bytes: &'static [u8]) -> tonic::Code {
        match read_frame(body(bytes), 16).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    }

    #[tokio::test]
    async fn only_one_whole_uncompressed_frame_passes() {
        use tonic::Code::*;
        assert_eq!(code(b"\0\0\0\0\x02ab").await, Ok);
        assert_eq!(
            code(b"\0\0\0\0\0").await,
            Ok,
            "an empty message is a valid one"
        );
        assert_eq!(code(b"").await, InvalidArgument);
        assert_eq!(code(b"\0\0\0").await, InvalidArgument);
        assert_eq!(code(b"\0\0\0\0\x09ab").await, InvalidArgument);
        assert_eq!(code(b"\0\0\0\0\x01ab").await, InvalidArgument);
        assert_eq!(code(b"\x01\0\0\0\x02ab").await, InvalidArgument);
        assert_eq!(code(b"\0\0\0\0\x20").await, OutOfRange);
    }
}

//! The `/metrics` and `/healthz` HTTP endpoint shared by Coffer's servers.
//!
//! Each server renders its own OpenMetrics text and answers its own health question; this crate
//! only binds the listener (loopback unless explicitly allowed: metrics reveal key ids and
//! traffic) and serves HTTP/1.1 with bounded header and connection times.

#![deny(missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Renders the current metrics as OpenMetrics text.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;
/// Answers whether the server can do its job right now; `Err` says why not.
pub type Health = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Binds the metrics listener, refusing a non-loopback address unless `allow_remote`
/// (`flag` and `allow_flag` name the command-line options in the error).
pub async fn bind(
    addr: SocketAddr,
    allow_remote: bool,
    flag: &str,
    allow_flag: &str,
) -> std::io::Result<TcpListener> {
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{flag} {addr} is not a loopback address; metrics reveal key ids and traffic \
                 (pass {allow_flag} to serve them on {addr} anyway)"
            ),
        ));
    }
    TcpListener::bind(addr).await
}

/// Serves `/metrics` and `/healthz` (also `/livez`, `/readyz`) on `listener` until the task is
/// dropped.
pub async fn serve_http(listener: TcpListener, render: Render, health: Health) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let render = render.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = respond(req.uri().path(), render.as_ref(), health.as_ref());
                async move { Ok::<_, Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

fn respond(
    path: &str,
    render: &(dyn Fn() -> String + Send + Sync),
    health: &(dyn Fn() -> Result<(), String> + Send + Sync),
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(),
        ),
        "/healthz" | "/livez" | "/readyz" => match health() {
            Ok(()) => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("unhealthy: {reason}\n"),
            ),
        },
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /metrics or /healthz\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

/// The canonical upper-case name of a gRPC status code, for metric labels.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

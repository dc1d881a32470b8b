//! A tiny HTTP/1.1 server on 127.0.0.1, plain or HTTPS under a private CA, standing in for a
//! PCCS or AMD KDS in fetch tests.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A handler's answer: headers and body (200), or `None` (404).
pub type Reply = Option<(Vec<(String, String)>, Vec<u8>)>;

/// A running test server.
pub struct Server {
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub base: String,
    /// Requests answered so far.
    pub count: Arc<AtomicUsize>,
    /// Their paths, in order.
    pub paths: Arc<Mutex<Vec<String>>>,
}

/// A private certificate authority and a server certificate it issued for 127.0.0.1, like a
/// PCCS installed with its own CA.
pub struct PrivateCa {
    /// The CA certificate, PEM (what an operator gives as a CA file).
    pub pem: String,
    /// A rustls server configuration presenting the issued certificate.
    pub server: Arc<rustls::ServerConfig>,
}

impl PrivateCa {
    /// A fresh CA and server certificate.
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "coffer test PCCS CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        PrivateCa {
            pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }
}

impl Default for PrivateCa {
    fn default() -> Self {
        PrivateCa::new()
    }
}

/// Serves `handler(path)` for at most `max` connections, over HTTPS when `tls` is given.
pub fn serve(
    max: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: impl Fn(&str) -> Reply + Send + 'static,
) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{}", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let paths = Arc::new(Mutex::new(Vec::new()));
    let (c, p) = (count.clone(), paths.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().take(max) {
            let Ok(stream) = stream else { continue };
            let answered = match &tls {
                Some(config) => {
                    let Ok(connection) = rustls::ServerConnection::new(config.clone()) else {
                        continue;
                    };
                    answer(rustls::StreamOwned::new(connection, stream), &handler)
                }
                None => answer(stream, &handler),
            };
            if let Some(path) = answered {
                c.fetch_add(1, Ordering::SeqCst);
                p.lock().unwrap().push(path);
            }
        }
    });
    Server { base, count, paths }
}

/// Reads one request from `stream` and answers it; returns its path, or `None` when the
/// client went away first (a refused TLS handshake, say).
fn answer(mut stream: impl Read + Write, handler: &impl Fn(&str) -> Reply) -> Option<String> {
    let mut request = Vec::new();
    let mut byte = [0u8; 1];
    while !request.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => request.push(byte[0]),
            _ => return None,
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let (status, headers, body) = match handler(&path) {
        Some((h, b)) => ("200 OK", h, b),
        None => ("404 Not Found", Vec::new(), b"not found".to_vec()),
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (n, v) in headers {
        response.push_str(&format!("{n}: {v}\r\n"));
    }
    response.push_str("\r\n");
    let _ = stream.write_all(response.as_bytes());
    let _ = stream.write_all(&body);
    let _ = stream.flush();
    // Wait for the client to close first, so that closing here cannot reset the connection
    // before the client has read the response.
    let _ = stream.read(&mut byte);
    Some(path)
}

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

/// A request as a handler of [`serve_requests`] sees it.
pub struct Request {
    /// The request target.
    pub path: String,
    /// The header fields, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A private certificate authority and a server certificate it issued for 127.0.0.1, like a
/// PCCS installed with its own CA (or a kube-apiserver with its cluster CA).
pub struct PrivateCa {
    /// The CA certificate, PEM (what an operator gives as a CA file).
    pub pem: String,
    /// A rustls server configuration presenting the issued certificate.
    pub server: Arc<rustls::ServerConfig>,
    /// The same, but refusing clients without a certificate issued by this CA.
    pub server_requiring_client_certificate: Arc<rustls::ServerConfig>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
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
        let chain = vec![cert.der().clone()];
        let key_der = || rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key_der())
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let mutual = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key_der())
            .unwrap();
        PrivateCa {
            pem: ca_cert.pem(),
            server: Arc::new(server),
            server_requiring_client_certificate: Arc::new(mutual),
            issuer,
        }
    }

    /// A client certificate for `name` issued by this CA, and its private key: both PEM.
    pub fn client_certificate(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
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
    serve_requests(max, tls, move |request: &Request| handler(&request.path))
}

/// Like [`serve`], for handlers that look at the request's headers too.
pub fn serve_requests(
    max: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: impl Fn(&Request) -> Reply + Send + 'static,
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
fn answer(mut stream: impl Read + Write, handler: &impl Fn(&Request) -> Reply) -> Option<String> {
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
    let headers = request
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let request = Request { path, headers };
    let path = request.path.clone();
    let (status, headers, body) = match handler(&request) {
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

//! A real etcd on loopback for the tests: free ports, its own temp data directory, healthy
//! before use, killed on drop.
//!
//! Tests start with `let Some(etcd) = Etcd::start_or_skip() else { return };`: without an
//! `etcd` binary (Debian's `etcd-server` package) they print one line and pass, unless
//! `COFFER_REQUIRE_ETCD=1` (set by `.ci/run`) makes a missing etcd a failure.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::keyd::free_addr;

/// Set to 1 to fail instead of skip when etcd is not installed.
pub const REQUIRE_VAR: &str = "COFFER_REQUIRE_ETCD";

/// A running single-member etcd.
pub struct Etcd {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// `127.0.0.1:port` of its client endpoint.
    pub endpoint: String,
    peer: String,
    /// Plain-HTTP `/health` and metrics, which answer whatever the client endpoint requires.
    metrics: String,
    /// With TLS: the PEM files etcd and its clients use.
    pub tls: Option<EtcdTlsFiles>,
    /// More etcd flags.
    extra: Vec<String>,
}

/// A private CA, etcd's server certificate for 127.0.0.1 and a client certificate, as files.
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl EtcdTlsFiles {
    fn generate(dir: &std::path::Path) -> EtcdTlsFiles {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "coffer test etcd CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let issue = |names: Vec<String>| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let (server_cert, server_key) = issue(vec!["127.0.0.1".into(), "localhost".into()]);
        let (client_cert, client_key) = issue(vec!["coffer-keyd".into()]);
        EtcdTlsFiles {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client-key.pem", &client_key),
        }
    }
}

fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

impl Etcd {
    /// Starts etcd, or returns `None` after printing why the test is skipped.
    pub fn start_or_skip() -> Option<Etcd> {
        Self::start(false, &[])
    }

    /// [`Etcd::start_or_skip`] with more etcd flags.
    pub fn start_with_or_skip(extra: &[&str]) -> Option<Etcd> {
        Self::start(false, extra)
    }

    /// Starts etcd serving clients over TLS only, requiring a client certificate from its CA
    /// (`--client-cert-auth`), or returns `None` after printing why the test is skipped.
    pub fn start_tls_or_skip() -> Option<Etcd> {
        Self::start(true, &[])
    }

    fn start(tls: bool, extra: &[&str]) -> Option<Etcd> {
        if etcd_binary().is_none() {
            let message = "etcd not found on PATH: install Debian's etcd-server package to run \
                           the keyd-on-etcd tests";
            if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") {
                panic!("{message} ({REQUIRE_VAR}=1, so a missing etcd is a failure)");
            }
            eprintln!(
                "skipping {}: {message}",
                std::thread::current().name().unwrap_or("test")
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let tls = tls.then(|| EtcdTlsFiles::generate(dir.path()));
        let mut etcd = Etcd {
            dir,
            child: None,
            endpoint: free_addr().to_string(),
            peer: free_addr().to_string(),
            metrics: free_addr().to_string(),
            tls,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        etcd.spawn();
        Some(etcd)
    }

    /// `http(s)://127.0.0.1:port`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.endpoint)
    }

    /// Starts (or restarts, on the same data and ports) the etcd process and waits until it
    /// answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "etcd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .unwrap();
        let mut command = Command::new("etcd");
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command
            .args(&self.extra)
            .args([
                "--name",
                "coffer-test",
                "--data-dir",
                self.dir.path().join("data").to_str().unwrap(),
                "--listen-client-urls",
                &self.url(),
                "--advertise-client-urls",
                &self.url(),
                "--listen-peer-urls",
                &format!("http://{}", self.peer),
                "--initial-advertise-peer-urls",
                &format!("http://{}", self.peer),
                "--initial-cluster",
                &format!("coffer-test=http://{}", self.peer),
                "--listen-metrics-urls",
                &format!("http://{}", self.metrics),
                "--log-level",
                "warn",
            ])
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        self.wait_healthy();
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let health = format!("GET /health HTTP/1.0\r\nHost: {}\r\n\r\n", self.metrics);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("etcd exited with {status}: {}", self.log_text());
            }
            if let Ok(mut stream) = std::net::TcpStream::connect(&self.metrics) {
                use std::io::{Read, Write};
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut answer = String::new();
                if stream.write_all(health.as_bytes()).is_ok()
                    && stream.read_to_string(&mut answer).is_ok()
                    && answer.contains("\"health\":\"true\"")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills etcd (SIGKILL) and waits for it; [`Etcd::spawn`] brings it back with its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

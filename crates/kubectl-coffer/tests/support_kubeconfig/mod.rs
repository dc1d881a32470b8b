//! The kubeconfig tests' world: a local HTTPS "API server" that requires a client certificate
//! or a bearer token and serves /version, a kubeconfig for it, and the real `kubectl` finding
//! the `kubectl-coffer` under test on PATH.

#![allow(dead_code)]

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use coffer_test_fixtures::server::{serve, serve_requests, PrivateCa, Server};

/// What `/version` answers.
pub const VERSION_BODY: &str = r#"{"major":"1","minor":"32","gitVersion":"v1.32.0-coffer-test"}"#;
/// The passphrase of the tests' stores.
pub const PASSPHRASE: &str = "correct horse battery staple";

/// How the test API server authenticates clients.
pub enum Auth {
    /// TLS client certificate issued by the cluster CA.
    ClientCertificate,
    /// `Authorization: Bearer <token>`.
    Token(String),
}

/// One test's files, server and credentials.
pub struct World {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
    pub kubeconfig: PathBuf,
    pub store: PathBuf,
    pub run_dir: PathBuf,
    pub passphrase_file: PathBuf,
    pub server: Server,
    /// The client certificate and key PEM (certificate auth).
    pub client: Option<(String, String)>,
    /// The token (token auth).
    pub token: Option<String>,
    /// `COFFER_PLATFORM_ROOT` for every command (a fake TEE device tree).
    pub platform_root: Option<PathBuf>,
}

impl World {
    /// A server with `auth` and a kubeconfig whose only user, `alice`, holds the matching
    /// credential inline (`*-data`, `token`).
    pub fn new(auth: Auth) -> World {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let run_dir = dir.path().join("run");
        fs::create_dir_all(home.join(".kube")).unwrap();
        fs::create_dir_all(&run_dir).unwrap();
        let ca = PrivateCa::new();
        let version = || Some((vec![], VERSION_BODY.as_bytes().to_vec()));
        let (server, client, token, user) = match auth {
            Auth::ClientCertificate => {
                let server = serve(
                    10_000,
                    Some(ca.server_requiring_client_certificate.clone()),
                    move |path| (endpoint(path) == "/version").then(version).flatten(),
                );
                let (cert, key) = ca.client_certificate("alice");
                let user = format!(
                    "    client-certificate-data: {}\n    client-key-data: {}\n",
                    STANDARD.encode(&cert),
                    STANDARD.encode(&key)
                );
                (server, Some((cert, key)), None, user)
            }
            Auth::Token(token) => {
                let expected = format!("Bearer {token}");
                let server = serve_requests(10_000, Some(ca.server.clone()), move |request| {
                    let authorized = request.header("authorization") == Some(expected.as_str());
                    (authorized && endpoint(&request.path) == "/version")
                        .then(version)
                        .flatten()
                });
                let user = format!("    token: {token}\n");
                (server, None, Some(token), user)
            }
        };
        let kubeconfig = home.join(".kube/config");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    \
             certificate-authority-data: {}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    \
             user: alice\ncurrent-context: local\nusers:\n- name: alice\n  user:\n{user}",
            server.base,
            STANDARD.encode(&ca.pem)
        );
        fs::write(&kubeconfig, text).unwrap();
        fs::set_permissions(&kubeconfig, fs::Permissions::from_mode(0o600)).unwrap();
        let passphrase_file = dir.path().join("passphrase");
        fs::write(&passphrase_file, format!("{PASSPHRASE}\n")).unwrap();
        World {
            store: home.join(".kube/coffer/credentials.sealed"),
            dir,
            home,
            kubeconfig,
            run_dir,
            passphrase_file,
            server,
            client,
            token,
            platform_root: None,
        }
    }

    /// The default agent socket in this world.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join("coffer/agent.sock")
    }

    /// A command in this world's environment.
    pub fn command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        passphrase: Option<&Path>,
    ) -> Command {
        let mut command = Command::new(program);
        command
            .env("PATH", path_with_plugin())
            .env("HOME", &self.home)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("XDG_RUNTIME_DIR", &self.run_dir)
            .env_remove("COFFER_CREDENTIAL_STORE")
            .env_remove("COFFER_AGENT_SOCKET")
            .env_remove("KUBERNETES_EXEC_INFO")
            .stdin(Stdio::null());
        match &self.platform_root {
            Some(root) => command.env("COFFER_PLATFORM_ROOT", root),
            None => command.env_remove("COFFER_PLATFORM_ROOT"),
        };
        match passphrase {
            Some(file) => command.env("COFFER_PASSPHRASE_FILE", file),
            None => command.env_remove("COFFER_PASSPHRASE_FILE"),
        };
        command
    }

    /// `kubectl get --raw /version`, with `COFFER_PASSPHRASE_FILE` set to `passphrase` if given.
    pub fn kubectl_version(&self, passphrase: Option<&Path>) -> Output {
        self.command("kubectl", passphrase)
            .args(["get", "--raw", "/version", "--request-timeout=60s"])
            .output()
            .unwrap()
    }

    /// `kubectl-coffer ARGS`.
    pub fn coffer(&self, args: &[&str], passphrase: Option<&Path>) -> Output {
        self.command(plugin(), passphrase)
            .args(args)
            .output()
            .unwrap()
    }

    /// Starts `kubectl-coffer agent ARGS` and waits until it answers `agent status`.
    pub fn start_agent(&self, args: &[&str], passphrase: Option<&Path>) -> Agent {
        let mut child = self
            .command(plugin(), passphrase)
            .arg("agent")
            .args(args)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The agent says where it listens once it does; read until then.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("agent exited before listening: {seen} {:?}", child.wait());
            }
            seen.push_str(&line);
            if line.contains("makes it forget them now") {
                break;
            }
        }
        Agent {
            child,
            stderr,
            started: seen,
        }
    }

    /// Every file under the test directory (kubeconfig, store, lock, sockets, temporaries).
    pub fn all_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    walk(&path, out);
                } else if meta.is_file() {
                    out.push(path);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.dir.path(), &mut out);
        out
    }

    /// Asserts no file in the world (but `except`) contains any of `needles`.
    pub fn assert_nowhere_on_disk(&self, needles: &[&str], except: &[&Path]) {
        for file in self.all_files() {
            if except.contains(&file.as_path()) {
                continue;
            }
            let bytes = fs::read(&file).unwrap();
            for needle in needles {
                assert!(
                    !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{} holds plaintext credential bytes",
                    file.display()
                );
            }
        }
    }

    /// What must never be on disk: the key's PEM body, the PEM certificate body, the
    /// base64 forms kubeconfig used, and the token.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some((cert, key)) = &self.client {
            for pem in [cert, key] {
                // A middle line of the PEM body, and of the kubeconfig's base64 of the whole
                // PEM (their starts are the same for every certificate, the CA's included).
                let lines: Vec<&str> = pem.lines().collect();
                out.push(lines[lines.len() / 2].to_string());
                let encoded = STANDARD.encode(pem);
                out.push(encoded[encoded.len() / 2..encoded.len() / 2 + 40].to_string());
            }
        }
        if let Some(token) = &self.token {
            out.push(token.clone());
        }
        out
    }
}

/// A running agent.
pub struct Agent {
    pub child: Child,
    pub stderr: BufReader<std::process::ChildStderr>,
    pub started: String,
}

impl Agent {
    /// Waits for the agent to exit; returns its status and the rest of its stderr.
    pub fn wait(mut self) -> (std::process::ExitStatus, String) {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.stderr, &mut rest).unwrap();
        (self.child.wait().unwrap(), rest)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A request target without its query (kubectl adds `?timeout=…`).
fn endpoint(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

/// The plugin binary under test: this build's, or (for the timing harness, to time a release
/// build) the one `KUBECTL_COFFER_BIN` names.
pub fn plugin() -> PathBuf {
    std::env::var_os("KUBECTL_COFFER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_kubectl-coffer")))
}

/// `PATH` with the plugin's directory first, so kubectl finds `kubectl-coffer`.
pub fn path_with_plugin() -> OsString {
    let mut dirs = vec![plugin().parent().unwrap().to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

/// stdout and stderr as text, for messages.
pub fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Asserts `kubectl get --raw /version` printed the server's answer.
pub fn assert_version_ok(output: &Output) {
    let (stdout, stderr) = text(output);
    assert!(
        output.status.success() && stdout.contains("v1.32.0-coffer-test"),
        "kubectl failed: {:?}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
}

/// Asserts kubectl failed and its stderr (which carries the plugin's) contains `expected`.
pub fn assert_fails_with(output: &Output, expected: &str) {
    let (stdout, stderr) = text(output);
    assert!(
        !output.status.success(),
        "expected failure, got success: {stdout}"
    );
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in stderr: {stderr}"
    );
}

//! `kubectl coffer create secret generic` against a stand-in API server (HTTPS under a private
//! CA, hyper + rustls) that requires the kubeconfig's bearer token and records each request:
//! the Secret it receives holds only sealed values.

mod common;

use std::convert::Infallible;
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};

use common::sealing::SimKeyd;
use common::{fails_with, kubectl, ok, text};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const SECRET: &str = "pl41ntext-DB-password";
const TOKEN: &str = "test-bearer-token";

/// One request the stand-in API server received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    body: Vec<u8>,
}

struct ApiServer {
    base: String,
    ca_pem: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// Serves on 127.0.0.1: a Secret POST with the right token gets `status` (201 echoes the
/// Secret; 409 and 403 a Kubernetes Status), anything without the token 401.
fn api_server(status: u16) -> ApiServer {
    let ca = coffer_test_fixtures::server::PrivateCa::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let tls = tokio_rustls::TlsAcceptor::from(ca.server.clone());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let Ok(stream) = tls.accept(tcp).await else {
                    continue;
                };
                let record = record.clone();
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let record = record.clone();
                    async move { Ok::<_, Infallible>(answer(req, status, &record).await) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    });
    ApiServer {
        base,
        ca_pem: ca.pem,
        seen,
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    })
    .to_string()
}

async fn answer(
    req: Request<Incoming>,
    status: u16,
    seen: &Mutex<Vec<Seen>>,
) -> Response<Full<Bytes>> {
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {TOKEN}"));
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.unwrap().to_bytes().to_vec();
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        body: body.clone(),
    });
    let (code, text) = if !authorized {
        (401, status_body(401, "Unauthorized", "Unauthorized"))
    } else if method != "POST" || !path.ends_with("/secrets") {
        (404, status_body(404, "NotFound", "not found"))
    } else {
        match status {
            201 => (201, String::from_utf8(body).unwrap()),
            409 => (
                409,
                status_body(409, "AlreadyExists", "secrets \"db\" already exists"),
            ),
            _ => (
                403,
                status_body(
                    403,
                    "Forbidden",
                    "secrets is forbidden: User \"dev\" cannot create resource \"secrets\"",
                ),
            ),
        }
    };
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap()
}

/// A kubeconfig for `server` with two contexts: `token` (the bearer token inline, namespace
/// `team`) and `exec` (the token from an exec credential plugin).
fn kubeconfig(dir: &std::path::Path, server: &ApiServer) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(&server.ca_pem);
    let plugin = dir.join("credential.sh");
    std::fs::write(
        &plugin,
        format!(
            "#!/bin/sh\necho '{{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{TOKEN}\"}}}}'\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: token\n  user:\n    token: {TOKEN}\n- name: exec\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      interactiveMode: Never\ncontexts:\n- name: token\n  context: {{cluster: test, user: token, namespace: team}}\n- name: exec\n  context: {{cluster: test, user: exec, namespace: ops}}\ncurrent-context: token\n",
            server.base,
            plugin.display()
        ),
    )
    .unwrap();
    path.display().to_string()
}

/// `kubectl coffer create secret generic db --from-literal <literal>` sealed to `bundle`,
/// against `kubeconfig`, with `extra` flags.
fn create_db(literal: &str, bundle: &Path, kubeconfig: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "coffer",
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal",
        literal,
        "--key-bundle",
        bundle.to_str().unwrap(),
        "--kubeconfig",
        kubeconfig,
    ];
    args.extend_from_slice(extra);
    kubectl(&args)
}

#[test]
fn create_sends_only_sealed_values() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = SimKeyd::new(dir.path(), "apps", 1);
    let bundle = keyd.write_bundle(&dir.path().join("bundle.json"));
    let server = api_server(201);
    let kubeconfig = kubeconfig(dir.path(), &server);
    let literal = format!("password={SECRET}");
    let out = create_db(&literal, &bundle, &kubeconfig, &[]);
    let stdout = ok(&out);
    assert!(
        stdout.contains("secret/db created in namespace team"),
        "{stdout}"
    );
    let seen = server.seen.lock().unwrap().clone();
    let post = seen.iter().find(|s| s.method == "POST").expect("a POST");
    assert_eq!(post.path, "/api/v1/namespaces/team/secrets");
    let body = String::from_utf8(post.body.clone()).unwrap();
    let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, SECRET);
    assert!(
        !body.contains(SECRET) && !body.contains(&encoded),
        "plaintext sent: {body}"
    );
    let secret: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sealed = secret["stringData"]["password"].as_str().unwrap();
    let value = coffer_sealed::SealedValue::parse(sealed).unwrap();
    assert_eq!(value.binding().to_string(), "strict team/db/password");
    let opened = coffer_sealed::open(&value, keyd.key(value.key_id())).unwrap();
    assert_eq!(opened.as_slice(), SECRET.as_bytes());

    // Through an exec credential plugin (as `kubeconfig protect` sets up), another context.
    let out = create_db(&literal, &bundle, &kubeconfig, &["--context", "exec"]);
    assert!(ok(&out).contains("created in namespace ops"));

    // --dry-run=client sends nothing.
    let before = server.seen.lock().unwrap().len();
    let out = create_db(
        &literal,
        &bundle,
        &kubeconfig,
        &["-n", "x", "--dry-run=client"],
    );
    assert!(ok(&out).contains("coffer.v1."));
    assert_eq!(server.seen.lock().unwrap().len(), before);
}

#[test]
fn create_maps_conflict_and_forbidden_to_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = SimKeyd::new(dir.path(), "apps", 1);
    let bundle = keyd.write_bundle(&dir.path().join("bundle.json"));
    for (status, needle) in [
        (409, "already exists in namespace \"team\""),
        (403, "needs permission to create secrets"),
    ] {
        let server = api_server(status);
        let kubeconfig = kubeconfig(dir.path(), &server);
        let out = create_db(&format!("pw={SECRET}"), &bundle, &kubeconfig, &[]);
        let stderr = fails_with(&out, needle);
        assert!(!stderr.contains(SECRET), "{stderr}");
        assert!(!text(&out).1.contains("panicked"));
    }
}

#[test]
fn create_through_a_kubeconfig_protected_by_kubectl_coffer() {
    let dir = tempfile::tempdir().unwrap();
    let keyd = SimKeyd::new(dir.path(), "apps", 1);
    let bundle = keyd.write_bundle(&dir.path().join("bundle.json"));
    let server = api_server(201);
    let kubeconfig = kubeconfig(dir.path(), &server);
    let store = dir.path().join("credentials.sealed");
    let protect = kubectl(&[
        "coffer",
        "kubeconfig",
        "protect",
        "--kubeconfig",
        &kubeconfig,
        "--user",
        "token",
        "--store",
        store.to_str().unwrap(),
        "--protection",
        "sim",
    ]);
    ok(&protect);
    assert!(!std::fs::read_to_string(&kubeconfig)
        .unwrap()
        .contains(TOKEN));

    // kube's exec support runs `kubectl-coffer credential` for the bearer token.
    let out = create_db(&format!("pw={SECRET}"), &bundle, &kubeconfig, &[]);
    assert!(ok(&out).contains("secret/db created in namespace team"));
    let seen = server.seen.lock().unwrap().clone();
    let post = seen
        .iter()
        .find(|s| s.method == "POST")
        .expect("an authorised POST");
    assert!(!String::from_utf8_lossy(&post.body).contains(SECRET));
}

//! The gRPC services kube-apiserver calls: `v2.KeyManagementService` and the legacy
//! `v1beta1.KeyManagementService`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use coffer_proto::{v1beta1, v2};
use tonic::{Code, Request, Response, Status};

use crate::backend::Backend;
use crate::listener::ConnInfo;
use crate::metrics::{Method, Metrics};
use crate::peer::Verdict;

/// Longest request `uid` accepted (the API server sends a UUID).
pub const MAX_UID_LEN: usize = 256;
/// Longest `key_id` accepted in a Decrypt request (the KMS API limit is 1 KiB).
pub const MAX_REQUEST_KEY_ID_LEN: usize = 1024;
/// Largest total size of annotation keys and values (the KMS API limit).
pub const MAX_ANNOTATIONS_LEN: usize = 32 * 1024;

/// The `version` string v2 Status reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StatusVersion {
    /// `v2`: Kubernetes 1.29 and later.
    #[default]
    V2,
    /// `v2beta1`: what Kubernetes 1.27 and 1.28 require.
    V2beta1,
}

impl StatusVersion {
    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusVersion::V2 => "v2",
            StatusVersion::V2beta1 => "v2beta1",
        }
    }
}

impl std::str::FromStr for StatusVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v2" => Ok(StatusVersion::V2),
            "v2beta1" => Ok(StatusVersion::V2beta1),
            other => Err(format!("unknown status version {other:?}; use v2 (Kubernetes 1.29+) or v2beta1 (1.27, 1.28)")),
        }
    }
}

/// State shared by both services and the background tasks.
pub struct KmsState {
    backend: Backend,
    /// Metrics for every call.
    pub metrics: Metrics,
    status_version: StatusVersion,
    decrypts_since_audit: AtomicU64,
}

impl KmsState {
    /// Starts serving from `backend`.
    pub fn new(backend: Backend, metrics: Metrics, status_version: StatusVersion) -> Arc<Self> {
        Arc::new(KmsState {
            backend,
            metrics,
            status_version,
            decrypts_since_audit: AtomicU64::new(0),
        })
    }

    /// Where the keys are.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Takes the count of successful decrypts since the last call (for the aggregated audit line).
    pub fn take_decrypt_count(&self) -> u64 {
        self.decrypts_since_audit.swap(0, Ordering::Relaxed)
    }

    fn authorize<T>(&self, method: Method, request: &Request<T>) -> Result<Verdict, Status> {
        let Some(verdict) = request.extensions().get::<ConnInfo>().map(|c| &c.verdict) else {
            return Err(Status::internal("connection has no caller credentials"));
        };
        if let Some(reason) = &verdict.refusal {
            self.metrics.refused_calls.inc();
            tracing::warn!(
                target: "coffer::audit",
                event = "refused",
                method = method.name(),
                uid = verdict.peer.uid,
                gid = verdict.peer.gid,
                pid = verdict.peer.pid.unwrap_or(0),
                reason = %reason,
                "refused call"
            );
            return Err(Status::permission_denied(format!("coffer kms: {reason}")));
        }
        Ok(Verdict::clone(verdict))
    }

    fn finish<T>(
        &self,
        method: Method,
        start: Instant,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        let code = match &result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        self.metrics.observe(method, code, start.elapsed());
        result.map(Response::new)
    }

    async fn status(&self) -> Result<v2::StatusResponse, Status> {
        let key_id = self.backend.status().await?;
        Ok(v2::StatusResponse {
            version: self.status_version.as_str().to_string(),
            healthz: "ok".to_string(),
            key_id,
        })
    }

    async fn encrypt(
        &self,
        verdict: &Verdict,
        uid: &str,
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, String), Status> {
        match self.backend.encrypt(plaintext).await {
            Ok((ciphertext, key_id)) => {
                tracing::info!(
                    target: "coffer::audit",
                    event = "encrypt",
                    request_uid = uid,
                    key_id,
                    caller_uid = verdict.peer.uid,
                    caller_pid = verdict.peer.pid.unwrap_or(0),
                    "encrypt ok"
                );
                Ok((ciphertext, key_id))
            }
            Err(status) => {
                tracing::warn!(target: "coffer::audit", event = "encrypt_failed", request_uid = uid, caller_uid = verdict.peer.uid, code = ?status.code(), reason = %status.message(), "encrypt refused");
                Err(status)
            }
        }
    }

    async fn decrypt(
        &self,
        verdict: &Verdict,
        uid: &str,
        requested_key_id: Option<&str>,
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, Status> {
        match self.backend.decrypt(requested_key_id, ciphertext).await {
            Ok(mut plaintext) => {
                self.decrypts_since_audit.fetch_add(1, Ordering::Relaxed);
                // The response owns its bytes; the zeroizing buffer is wiped here.
                Ok(std::mem::take(&mut *plaintext))
            }
            Err(status) => {
                tracing::warn!(
                    target: "coffer::audit",
                    event = "decrypt_failed",
                    request_uid = uid,
                    key_id = requested_key_id.unwrap_or(""),
                    caller_uid = verdict.peer.uid,
                    caller_pid = verdict.peer.pid.unwrap_or(0),
                    code = ?status.code(),
                    reason = %status.message(),
                    "decrypt refused"
                );
                Err(status)
            }
        }
    }
}

fn check_uid(uid: &str) -> Result<(), Status> {
    if uid.len() > MAX_UID_LEN {
        return Err(Status::invalid_argument(format!(
            "uid is {} bytes; the limit is {MAX_UID_LEN}",
            uid.len()
        )));
    }
    Ok(())
}

fn check_annotations(annotations: &HashMap<String, Vec<u8>>) -> Result<(), Status> {
    let total: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total > MAX_ANNOTATIONS_LEN {
        return Err(Status::invalid_argument(format!(
            "annotations total {total} bytes; the limit is {MAX_ANNOTATIONS_LEN}"
        )));
    }
    if let Some(bad) = annotations.keys().find(|k| !is_qualified_domain_name(k)) {
        let shown: String = bad.chars().take(64).collect();
        return Err(Status::invalid_argument(format!(
            "annotation key {shown:?} is not a fully qualified domain name"
        )));
    }
    Ok(())
}

fn is_qualified_domain_name(name: &str) -> bool {
    name.len() <= 253
        && name.contains('.')
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// `v2.KeyManagementService`.
#[derive(Clone)]
pub struct V2Service(pub Arc<KmsState>);

impl V2Service {
    async fn encrypt_checked(
        &self,
        request: &Request<v2::EncryptRequest>,
    ) -> Result<v2::EncryptResponse, Status> {
        let state = &self.0;
        let verdict = state.authorize(Method::Encrypt, request)?;
        let req = request.get_ref();
        check_uid(&req.uid)?;
        let (ciphertext, key_id) = state.encrypt(&verdict, &req.uid, &req.plaintext).await?;
        Ok(v2::EncryptResponse {
            ciphertext,
            key_id,
            annotations: HashMap::new(),
        })
    }

    async fn decrypt_checked(
        &self,
        request: &Request<v2::DecryptRequest>,
    ) -> Result<v2::DecryptResponse, Status> {
        let state = &self.0;
        let verdict = state.authorize(Method::Decrypt, request)?;
        let req = request.get_ref();
        check_uid(&req.uid)?;
        if req.key_id.is_empty() {
            return Err(Status::invalid_argument(
                "key_id is required (the API server sends the key_id Encrypt returned)",
            ));
        }
        if req.key_id.len() > MAX_REQUEST_KEY_ID_LEN {
            return Err(Status::invalid_argument(format!(
                "key_id is {} bytes; the limit is {MAX_REQUEST_KEY_ID_LEN}",
                req.key_id.len()
            )));
        }
        check_annotations(&req.annotations)?;
        let plaintext = state
            .decrypt(&verdict, &req.uid, Some(&req.key_id), &req.ciphertext)
            .await?;
        Ok(v2::DecryptResponse { plaintext })
    }
}

#[tonic::async_trait]
impl v2::key_management_service_server::KeyManagementService for V2Service {
    async fn status(
        &self,
        request: Request<v2::StatusRequest>,
    ) -> Result<Response<v2::StatusResponse>, Status> {
        let start = Instant::now();
        let state = &self.0;
        let result = match state.authorize(Method::Status, &request) {
            Ok(_) => state.status().await,
            Err(e) => Err(e),
        };
        state.finish(Method::Status, start, result)
    }

    async fn encrypt(
        &self,
        request: Request<v2::EncryptRequest>,
    ) -> Result<Response<v2::EncryptResponse>, Status> {
        let start = Instant::now();
        let result = self.encrypt_checked(&request).await;
        // The request's plaintext buffer is wiped before it is freed.
        zeroize::Zeroize::zeroize(&mut request.into_inner().plaintext);
        self.0.finish(Method::Encrypt, start, result)
    }

    async fn decrypt(
        &self,
        request: Request<v2::DecryptRequest>,
    ) -> Result<Response<v2::DecryptResponse>, Status> {
        let start = Instant::now();
        let result = self.decrypt_checked(&request).await;
        self.0.finish(Method::Decrypt, start, result)
    }
}

/// The only version string v1beta1 requests may carry.
pub const V1BETA1: &str = "v1beta1";

fn check_v1_version(version: &str) -> Result<(), Status> {
    if version != V1BETA1 {
        let shown: String = version.chars().take(32).collect();
        return Err(Status::invalid_argument(format!(
            "unsupported KMS API version {shown:?}; this endpoint speaks {V1BETA1} (use the v2 service for apiVersion: v2)"
        )));
    }
    Ok(())
}

/// `v1beta1.KeyManagementService` (deprecated KMS v1).
#[derive(Clone)]
pub struct V1Service(pub Arc<KmsState>);

impl V1Service {
    async fn version_checked(
        &self,
        request: &Request<v1beta1::VersionRequest>,
    ) -> Result<v1beta1::VersionResponse, Status> {
        let state = &self.0;
        state.authorize(Method::V1Version, request)?;
        check_v1_version(&request.get_ref().version)?;
        state.backend.status().await?;
        Ok(v1beta1::VersionResponse {
            version: V1BETA1.to_string(),
            runtime_name: "coffer".to_string(),
            runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        })
    }

    async fn encrypt_checked(
        &self,
        request: &Request<v1beta1::EncryptRequest>,
    ) -> Result<v1beta1::EncryptResponse, Status> {
        let state = &self.0;
        let verdict = state.authorize(Method::V1Encrypt, request)?;
        let req = request.get_ref();
        check_v1_version(&req.version)?;
        let (cipher, _) = state.encrypt(&verdict, "", &req.plain).await?;
        Ok(v1beta1::EncryptResponse { cipher })
    }

    async fn decrypt_checked(
        &self,
        request: &Request<v1beta1::DecryptRequest>,
    ) -> Result<v1beta1::DecryptResponse, Status> {
        let state = &self.0;
        let verdict = state.authorize(Method::V1Decrypt, request)?;
        let req = request.get_ref();
        check_v1_version(&req.version)?;
        let plain = state.decrypt(&verdict, "", None, &req.cipher).await?;
        Ok(v1beta1::DecryptResponse { plain })
    }
}

#[tonic::async_trait]
impl v1beta1::key_management_service_server::KeyManagementService for V1Service {
    async fn version(
        &self,
        request: Request<v1beta1::VersionRequest>,
    ) -> Result<Response<v1beta1::VersionResponse>, Status> {
        let start = Instant::now();
        let result = self.version_checked(&request).await;
        self.0.finish(Method::V1Version, start, result)
    }

    async fn encrypt(
        &self,
        request: Request<v1beta1::EncryptRequest>,
    ) -> Result<Response<v1beta1::EncryptResponse>, Status> {
        let start = Instant::now();
        let result = self.encrypt_checked(&request).await;
        zeroize::Zeroize::zeroize(&mut request.into_inner().plain);
        self.0.finish(Method::V1Encrypt, start, result)
    }

    async fn decrypt(
        &self,
        request: Request<v1beta1::DecryptRequest>,
    ) -> Result<Response<v1beta1::DecryptResponse>, Status> {
        let start = Instant::now();
        let result = self.decrypt_checked(&request).await;
        self.0.finish(Method::V1Decrypt, start, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names() {
        assert!(is_qualified_domain_name("kms.coffer.dev"));
        assert!(is_qualified_domain_name("a.b"));
        assert!(!is_qualified_domain_name("nodot"));
        assert!(!is_qualified_domain_name("UPPER.case"));
        assert!(!is_qualified_domain_name("-a.b"));
        assert!(!is_qualified_domain_name("a..b"));
        assert!(!is_qualified_domain_name(&format!("{}.b", "a".repeat(64))));
    }

    #[test]
    fn annotation_bounds() {
        let mut a = HashMap::new();
        a.insert("ok.example.com".to_string(), vec![0; 100]);
        assert!(check_annotations(&a).is_ok());
        a.insert("big.example.com".to_string(), vec![0; MAX_ANNOTATIONS_LEN]);
        assert_eq!(
            check_annotations(&a).unwrap_err().code(),
            Code::InvalidArgument
        );
        let mut b = HashMap::new();
        b.insert("bad key".to_string(), vec![]);
        assert!(check_annotations(&b)
            .unwrap_err()
            .message()
            .contains("domain name"));
    }

    #[test]
    fn v1_version_check() {
        assert!(check_v1_version("v1beta1").is_ok());
        let err = check_v1_version("v2").unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("unsupported KMS API version"));
    }
}

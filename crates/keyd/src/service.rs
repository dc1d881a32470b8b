//! The `KeyService` handlers: authorisation, rate limits, bounds, audit records.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coffer_audit::{Aggregator, AuditEntry, Outcome, SharedAuditLog};
use coffer_keyd_client::{
    MAX_BATCH_ITEMS, MAX_CIPHERTEXT_LEN, MAX_PLAINTEXT_LEN, MAX_UNSEAL_BATCH_ITEMS,
};
use coffer_keystore::kek::EncryptError;
use coffer_keystore::store::KeyState;
use coffer_platform::Platform;
use coffer_ratls::PeerIdentity;
use coffer_sealed::bundle::KeyBundle;
use coffer_sealed::{Binding, Location, Scope, SealedValue, SealingKeyPair, MAX_SEALED_TEXT_LEN};
use tonic::{Code, Request, Response, Status};
use zeroize::{Zeroize, Zeroizing};

use crate::config::{validate_keyring_name, Operation};
use crate::keyrings::{CachedBundle, KeyringSlot, SlotBackend};
use crate::limits::RateBucket;
use crate::metrics::KeydMetrics;
use crate::pb;
use crate::pb::key_service_server::KeyService;
use crate::sealing::{KeyLookup, SealingKeyError, SealingKeys};
use crate::shared::serve_keyring;

/// Longest key id `Unwrap` accepts.
const MAX_KEY_ID_LEN: usize = 255;

/// What tonic's request extensions carry for every call: who is on the other end of the
/// connection, as established once when it was accepted.
#[derive(Debug, Clone)]
pub struct KeydConnectInfo {
    /// The attested identity, or why attestation refused the client (every call is then
    /// refused with that reason).
    pub peer: Result<Arc<PeerIdentity>, Arc<str>>,
    /// The peer's TCP address.
    pub remote_addr: Option<SocketAddr>,
    pub(crate) caller: Arc<coffer_audit::Caller>,
    pub(crate) bucket: Arc<RateBucket>,
    /// The budget of the public calls (key bundles, reseals), shared by every connection from
    /// the peer's address, attested or not.
    pub(crate) public_bucket: Arc<RateBucket>,
}

/// The gRPC service over the loaded keyrings.
pub(crate) struct KeydService {
    pub(crate) keyrings: HashMap<String, Arc<KeyringSlot>>,
    pub(crate) audit: SharedAuditLog,
    /// With `--audit-aggregate-interval`: where successful unwraps are counted instead of
    /// written one by one.
    pub(crate) aggregate: Option<Arc<Aggregator>>,
    pub(crate) metrics: KeydMetrics,
    /// keyd's instance id, named in key bundles.
    pub(crate) instance_id: String,
    /// The TEE platform whose evidence key bundles carry.
    pub(crate) platform: Arc<dyn Platform>,
    /// How long a key bundle is valid; it is rebuilt when half of that has passed.
    pub(crate) bundle_validity: Duration,
    /// keyd's root, for a replica that joins (`JoinReplica`).
    pub(crate) handover: Arc<crate::root::HandedRoot>,
}

/// An authorised call in progress.
struct Call {
    op: Operation,
    info: KeydConnectInfo,
    slot: Arc<KeyringSlot>,
}

/// The audit record of one operation by the connection's caller.
pub(crate) fn audit_entry(
    event: &str,
    info: &KeydConnectInfo,
    keyring: Option<&str>,
    key_id: Option<&str>,
    (result, reason): (Outcome, Option<String>),
) -> AuditEntry {
    AuditEntry {
        event: event.to_string(),
        caller: (*info.caller).clone(),
        keyring: keyring.map(str::to_string),
        key_id: key_id.map(str::to_string),
        location: None,
        binding: None,
        result,
        reason,
    }
}

/// How an operation ended, for its audit record: `ok`, `denied` (a refusal by the rules) or
/// `error`, with the status message.
fn outcome_of<T>(result: &Result<T, Status>) -> (Outcome, Option<String>) {
    match result {
        Ok(_) => (Outcome::Ok, None),
        Err(status) => (
            outcome_of_code(status.code()),
            Some(status.message().to_string()),
        ),
    }
}

fn outcome_of_code(code: Code) -> Outcome {
    match code {
        Code::PermissionDenied | Code::Unauthenticated => Outcome::Denied,
        _ => Outcome::Error,
    }
}

/// The connection facts every call carries.
fn connect_info<T>(request: &Request<T>) -> Result<KeydConnectInfo, Status> {
    request
        .extensions()
        .get::<KeydConnectInfo>()
        .cloned()
        .ok_or_else(|| Status::internal("the connection carries no peer information"))
}

fn invalid_keyring(keyring: &str) -> Status {
    Status::invalid_argument(format!(
        "invalid keyring name {:?}: use 1 to 63 characters of a-z, 0-9 and '-'",
        shown(keyring)
    ))
}

fn shown(name: &str) -> String {
    name.chars().take(80).collect()
}

impl KeydService {
    /// Audits the records of one call; a record that cannot be written fails the call: keyd
    /// never does unaudited work. With aggregation on, successful unwraps are counted
    /// (released at once, written at the next flush, if the log is still writable); every other
    /// record is written before this returns, so its result is released only after it.
    pub(crate) fn record_all(&self, op: Operation, entries: Vec<AuditEntry>) -> Result<(), Status> {
        let entries = match &self.aggregate {
            Some(aggregator) if op == Operation::Unwrap => {
                // Fail closed as without aggregation: no result while the log cannot be written.
                self.audit.healthy().map_err(|e| self.audit_failed(e))?;
                entries
                    .into_iter()
                    .filter_map(|entry| aggregator.add(entry).err().map(|e| *e))
                    .collect()
            }
            _ => entries,
        };
        self.audit
            .append_all(entries)
            .map(|_| ())
            .map_err(|e| self.audit_failed(e))
    }

    /// Counts and logs a failed audit write; the status that refuses the operation.
    fn audit_failed(&self, e: coffer_audit::AuditError) -> Status {
        self.metrics.audit_failure();
        tracing::error!(error = %e, "audit log write failed; refusing the operation");
        Status::unavailable(
            "keyd cannot write its audit log, so it refuses to operate; check the log's disk and permissions",
        )
    }

    /// Refuses a call: audit record, metric, status.
    pub(crate) fn deny(
        &self,
        op: Operation,
        info: &KeydConnectInfo,
        keyring: Option<&str>,
        status: Status,
    ) -> Status {
        self.metrics.request(op, status.code());
        let outcome = outcome_of_code(status.code());
        let entry = audit_entry(
            op.name(),
            info,
            keyring,
            None,
            (outcome, Some(status.message().to_string())),
        );
        if let Err(audit) = self.record_all(op, vec![entry]) {
            return audit;
        }
        status
    }

    /// Checks the caller's attestation, rate and role for `op` on `keyring`.
    fn begin<T>(&self, request: &Request<T>, keyring: &str, op: Operation) -> Result<Call, Status> {
        self.begin_n(request, keyring, op, 1)
    }

    /// [`Self::begin`] for a call that does `items` operations (a batch): it spends one
    /// rate-limit token per item.
    fn begin_n<T>(
        &self,
        request: &Request<T>,
        keyring: &str,
        op: Operation,
        items: u32,
    ) -> Result<Call, Status> {
        let (info, peer) = self.attested(request, Some(&shown(keyring)), op, items)?;
        if validate_keyring_name(keyring).is_err() {
            let status = invalid_keyring(keyring);
            return Err(self.deny(op, &info, Some(&shown(keyring)), status));
        }
        let role = &peer.role.name;
        // An unknown keyring and a forbidden one get the same answer, so callers cannot probe
        // which keyrings exist.
        match self.keyrings.get(keyring) {
            Some(slot) if slot.access.load().allows(op, role) => Ok(Call {
                op,
                info,
                slot: slot.clone(),
            }),
            _ => {
                tracing::warn!(role = %role, keyring = %keyring, operation = %op, "permission denied");
                let status = Status::permission_denied(format!(
                    "role {role:?} may not {op} on keyring {keyring:?} (keyd's configuration does not list this role under keyrings.{keyring}.{op}, or keyd serves no such keyring)"
                ));
                Err(self.deny(op, &info, Some(keyring), status))
            }
        }
    }

    /// The caller of an operation that needs attestation, within its rate (one token per item
    /// of the call); a refusal is audited naming `keyring`, if the call has one.
    pub(crate) fn attested<T>(
        &self,
        request: &Request<T>,
        keyring: Option<&str>,
        op: Operation,
        items: u32,
    ) -> Result<(KeydConnectInfo, Arc<PeerIdentity>), Status> {
        let info = connect_info(request)?;
        let peer = match &info.peer {
            Ok(peer) => peer.clone(),
            Err(reason) => {
                tracing::warn!(peer = ?info.remote_addr, operation = %op, reason = %reason, "call from a refused client");
                let status = Status::permission_denied(format!(
                    "keyd refused this client's attestation: {reason}"
                ));
                return Err(self.deny(op, &info, keyring, status));
            }
        };
        if !info.bucket.try_acquire_n(items) {
            // Not audited line by line: a flood must not become a flood of audit records.
            self.metrics.rate_limited();
            self.metrics.request(op, Code::ResourceExhausted);
            return Err(Status::resource_exhausted(format!(
                "caller (role {}) is over keyd's per-caller rate limit; retry with backoff",
                peer.role
            )));
        }
        Ok((info, peer))
    }

    /// Checks a public call (key bundle, reseal): any caller, attested or not, within its
    /// address's public rate, on a keyring keyd serves (bundles are public, so an unknown
    /// keyring may be named as such).
    fn begin_public<T>(
        &self,
        request: &Request<T>,
        keyring: &str,
        op: Operation,
    ) -> Result<Call, Status> {
        let info = connect_info(request)?;
        if !info.public_bucket.try_acquire_n(1) {
            // Not audited line by line: a flood must not become a flood of audit records.
            self.metrics.rate_limited();
            self.metrics.request(op, Code::ResourceExhausted);
            return Err(Status::resource_exhausted(
                "this address is over keyd's rate limit for key bundles and reseals (keyd serve --public-rate-per-second); retry with backoff",
            ));
        }
        if validate_keyring_name(keyring).is_err() {
            let status = invalid_keyring(keyring);
            return Err(self.deny(op, &info, Some(&shown(keyring)), status));
        }
        match self.keyrings.get(keyring) {
            Some(slot) => Ok(Call {
                op,
                info,
                slot: slot.clone(),
            }),
            None => {
                let status = Status::not_found(format!("keyd serves no keyring {keyring:?}"));
                Err(self.deny(op, &info, Some(keyring), status))
            }
        }
    }

    /// Audits and counts the end of an authorised call.
    fn finish<T>(
        &self,
        call: &Call,
        key_id: Option<&str>,
        result: Result<T, Status>,
    ) -> Result<Response<T>, Status> {
        self.record_end(call, key_id, None, &result)?;
        result.map(Response::new)
    }

    /// Audits (with `location`, if the call has one) and counts how an authorised call ended.
    /// Its result (maybe a plaintext) may be released only when this succeeds: after its audit
    /// record is written (or, for an aggregated unwrap, counted).
    fn record_end<T>(
        &self,
        call: &Call,
        key_id: Option<&str>,
        location: Option<&str>,
        result: &Result<T, Status>,
    ) -> Result<(), Status> {
        let code = result
            .as_ref()
            .map(|_| Code::Ok)
            .unwrap_or_else(|s| s.code());
        let mut entry = audit_entry(
            call.op.name(),
            &call.info,
            Some(&call.slot.name),
            key_id,
            outcome_of(result),
        );
        entry.location = location.map(str::to_string);
        if let Err(status) = self.record_all(call.op, vec![entry]) {
            self.metrics.request(call.op, status.code());
            return Err(status);
        }
        self.metrics.request(call.op, code);
        Ok(())
    }

    /// The keyring's key bundle JSON: the cached one while its keys are current and less than
    /// half its validity has passed, else a new one with fresh evidence.
    async fn key_bundle(&self, slot: &KeyringSlot) -> Result<Arc<Vec<u8>>, Status> {
        let keys = slot
            .sealing
            .load_full()
            .ok_or_else(|| no_sealing_key(&slot.name))?;
        let mut cached = slot.bundle.lock().await;
        if let Some(bundle) = cached.as_ref() {
            if Arc::ptr_eq(&bundle.keys, &keys) && bundle.built.elapsed() < self.bundle_validity / 2
            {
                return Ok(bundle.json.clone());
            }
        }
        let (platform, instance, validity) = (
            self.platform.clone(),
            self.instance_id.clone(),
            self.bundle_validity,
        );
        let worker = keys.clone();
        // Evidence can take milliseconds (a quote): off the async workers.
        let built = tokio::task::spawn_blocking(move || {
            let body = worker.bundle_body(&instance, std::time::SystemTime::now(), validity);
            KeyBundle::attest(body, platform.as_ref()).map(|b| b.to_json())
        })
        .await
        .map_err(|e| internal("key bundle task failed", e))?
        .map_err(|e| internal("attesting the key bundle failed", e))?;
        let json = Arc::new(built);
        tracing::info!(keyring = %slot.name, primary = keys.primary().id(), "key bundle built");
        *cached = Some(CachedBundle {
            keys,
            built: Instant::now(),
            json: json.clone(),
        });
        Ok(json)
    }
}

/// FAILED_PRECONDITION for a keyring without sealing keys, saying what to run.
fn no_sealing_key(keyring: &str) -> Status {
    Status::failed_precondition(
        SealingKeyError::Missing {
            keyring: keyring.to_string(),
        }
        .to_string(),
    )
}

/// Parses a sealed value sent for keyring `keyring`.
fn parse_sealed(text: &str, keyring: &str) -> Result<SealedValue, Status> {
    if text.len() > MAX_SEALED_TEXT_LEN {
        return Err(Status::invalid_argument(format!(
            "the sealed value is {} bytes; the limit is {MAX_SEALED_TEXT_LEN}",
            text.len()
        )));
    }
    let value = SealedValue::parse(text)
        .map_err(|e| Status::invalid_argument(format!("not a sealed value: {e}")))?;
    if value.keyring() != keyring {
        return Err(Status::invalid_argument(format!(
            "the value is sealed to keyring {:?}, not {keyring:?}; send it to that keyring",
            shown(value.keyring())
        )));
    }
    Ok(value)
}

/// The usable private key a value is sealed to.
fn sealing_key_of<'a>(
    keys: Option<&'a SealingKeys>,
    value: &SealedValue,
    keyring: &str,
) -> Result<&'a SealingKeyPair, Status> {
    let id = shown(value.key_id());
    match keys.map(|k| k.find(value.key_id())) {
        Some(KeyLookup::Usable(pair)) => Ok(pair),
        Some(KeyLookup::Retired) => Err(Status::failed_precondition(format!(
            "sealing key {id} was retired; the value cannot be recovered"
        ))),
        _ => Err(Status::not_found(format!(
            "keyring {keyring} has no sealing key {id}: the value was not sealed by this keyd"
        ))),
    }
}

/// Opens `value` with its key; the plaintext is zeroized when dropped.
fn open_value(value: &SealedValue, key: &SealingKeyPair) -> Result<Zeroizing<Vec<u8>>, Status> {
    coffer_sealed::open(value, key).map_err(|e| {
        Status::invalid_argument(format!(
            "the value does not open: it was altered or not sealed by this keyd ({e})"
        ))
    })
}

/// The location an `Unseal` caller found the value at, checked as Kubernetes names.
fn location_of(location: Option<pb::SecretLocation>) -> Result<Location, Status> {
    let location = location.ok_or_else(|| {
        Status::invalid_argument(
            "location is missing: say where the value was found (namespace, Secret name, data key)",
        )
    })?;
    let location = Location {
        namespace: location.namespace,
        secret: location.secret,
        key: location.key,
    };
    Binding::new(Scope::Strict, &location)
        .map_err(|e| Status::invalid_argument(format!("invalid location: {e}")))?;
    Ok(location)
}

fn location_text(location: &Location) -> String {
    format!(
        "{}/{}/{}",
        location.namespace, location.secret, location.key
    )
}

/// What keyd decided about one sealed value: its answer and what its audit record names.
struct UnsealDecision {
    /// The sealing key the value names, once it parsed.
    key_id: Option<String>,
    /// Where the caller says it found the value, once that parsed.
    location: Option<String>,
    /// The value's binding, once it parsed.
    binding: Option<String>,
    /// The plaintext, or why not.
    result: Result<Zeroizing<Vec<u8>>, Status>,
}

impl UnsealDecision {
    fn code(&self) -> Code {
        self.result
            .as_ref()
            .map(|_| Code::Ok)
            .unwrap_or_else(|s| s.code())
    }

    fn audit_entry(&self, call: &Call) -> AuditEntry {
        let mut entry = audit_entry(
            call.op.name(),
            &call.info,
            Some(&call.slot.name),
            self.key_id.as_deref(),
            outcome_of(&self.result),
        );
        entry.location = self.location.clone();
        entry.binding = self.binding.clone();
        entry
    }
}

/// Applies Unseal's rules, in order, to one value found at `location` by `call`'s caller:
/// the value parses, the location is valid and satisfies the value's binding, a grant of the
/// keyring lets the caller's role unseal at that location, and the value opens.
fn unseal_item(
    call: &Call,
    keys: Option<&SealingKeys>,
    sealed: &str,
    location: Option<pb::SecretLocation>,
) -> UnsealDecision {
    let role = match &call.info.peer {
        Ok(peer) => peer.role.name.as_str(),
        Err(_) => "",
    };
    let mut decision = UnsealDecision {
        key_id: None,
        location: None,
        binding: None,
        result: Err(Status::internal("unreached")),
    };
    decision.result = (|| {
        let value = parse_sealed(sealed, &call.slot.name)?;
        decision.key_id = Some(shown(value.key_id()));
        decision.binding = Some(value.binding().to_string());
        let location = location_of(location)?;
        let at = location_text(&location);
        decision.location = Some(at.clone());
        value.binding().admits(&location).map_err(|mismatch| {
            Status::permission_denied(format!(
                "the value is bound to {} and may not be used at {at}: {mismatch}",
                value.binding()
            ))
        })?;
        if !call
            .slot
            .access
            .load()
            .unseal
            .iter()
            .any(|grant| grant.admits(role, &location))
        {
            tracing::warn!(role = %role, keyring = %call.slot.name, location = %at, "unseal not granted");
            return Err(Status::permission_denied(format!(
                "role {role:?} may not unseal values found at {at}: no grant under keyrings.{}.unseal matches that namespace, Secret and key",
                call.slot.name
            )));
        }
        let key = sealing_key_of(keys, &value, &call.slot.name)?;
        open_value(&value, key)
    })();
    decision
}

/// Bounds, then decrypts one ciphertext with the keyring.
fn unwrap_one(slot: &KeyringSlot, key_id: &str, ciphertext: &[u8]) -> Result<Vec<u8>, Status> {
    if ciphertext.is_empty() {
        return Err(Status::invalid_argument("ciphertext is empty"));
    }
    if ciphertext.len() > MAX_CIPHERTEXT_LEN {
        return Err(Status::invalid_argument(format!(
            "ciphertext is {} bytes; the limit is {MAX_CIPHERTEXT_LEN}",
            ciphertext.len()
        )));
    }
    if key_id.len() > MAX_KEY_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "key_id is {} bytes; the limit is {MAX_KEY_ID_LEN}",
            key_id.len()
        )));
    }
    let requested = (!key_id.is_empty()).then_some(key_id);
    match slot.current.load().decrypt(requested, ciphertext) {
        // The response owns the bytes; the zeroizing buffer is emptied, not copied.
        Ok(mut plaintext) => Ok(std::mem::take(&mut *plaintext)),
        Err(e) => {
            tracing::warn!(keyring = %slot.name, error = %e, "unwrap refused");
            Err(match e {
                coffer_keystore::DecryptError::UnknownKey(_) => Status::not_found(e.to_string()),
                _ => Status::invalid_argument(e.to_string()),
            })
        }
    }
}

/// A failed read or write of keyd's state in etcd: UNAVAILABLE when retrying later can work
/// (etcd down, other replicas writing), INTERNAL otherwise.
fn shared_state_status(context: &str, e: crate::KeydError) -> Status {
    match &e {
        crate::KeydError::SharedState(s) if s.is_transient() => {
            tracing::warn!(error = %e, "{context}");
            Status::unavailable(format!("{context}: {e}"))
        }
        _ => internal(context, e),
    }
}

fn internal(context: &str, e: impl std::fmt::Display) -> Status {
    tracing::error!(error = %e, "{context}");
    Status::internal(format!("{context}: {e}"))
}

#[tonic::async_trait]
impl KeyService for KeydService {
    async fn wrap(
        &self,
        request: Request<pb::WrapRequest>,
    ) -> Result<Response<pb::WrapResponse>, Status> {
        let call = self.begin(&request, &request.get_ref().keyring, Operation::Wrap);
        let mut req = request.into_inner();
        let call = match call {
            Ok(call) => call,
            Err(status) => {
                req.plaintext.zeroize();
                return Err(status);
            }
        };
        let keyring = call.slot.current.load();
        let key_id = keyring.primary_id();
        let result = if req.plaintext.is_empty() {
            Err(Status::invalid_argument("plaintext is empty"))
        } else if req.plaintext.len() > MAX_PLAINTEXT_LEN {
            Err(Status::invalid_argument(format!(
                "plaintext is {} bytes; the limit is {MAX_PLAINTEXT_LEN}",
                req.plaintext.len()
            )))
        } else {
            match keyring.encrypt(&req.plaintext) {
                Ok(ciphertext) => Ok(pb::WrapResponse {
                    ciphertext,
                    key_id: key_id.to_string(),
                }),
                Err(e @ (EncryptError::Empty | EncryptError::TooLong(_))) => {
                    Err(Status::invalid_argument(e.to_string()))
                }
                Err(e) => Err(internal("wrap failed", e)),
            }
        };
        req.plaintext.zeroize();
        self.finish(&call, Some(key_id), result)
    }

    async fn unwrap(
        &self,
        request: Request<pb::UnwrapRequest>,
    ) -> Result<Response<pb::UnwrapResponse>, Status> {
        let call = self.begin(&request, &request.get_ref().keyring, Operation::Unwrap)?;
        let req = request.into_inner();
        let key_id = (!req.key_id.is_empty()).then(|| shown(&req.key_id));
        let result = unwrap_one(&call.slot, &req.key_id, &req.ciphertext)
            .map(|plaintext| pb::UnwrapResponse { plaintext });
        self.finish(&call, key_id.as_deref(), result)
    }

    async fn unwrap_batch(
        &self,
        request: Request<pb::UnwrapBatchRequest>,
    ) -> Result<Response<pb::UnwrapBatchResponse>, Status> {
        let items = request.get_ref().items.len();
        if items == 0 || items > MAX_BATCH_ITEMS {
            return Err(Status::invalid_argument(format!(
                "a batch has {items} items; send 1 to {MAX_BATCH_ITEMS}"
            )));
        }
        let call = self.begin_n(
            &request,
            &request.get_ref().keyring,
            Operation::Unwrap,
            items as u32,
        )?;
        let req = request.into_inner();
        let mut results = Vec::with_capacity(items);
        let mut entries = Vec::with_capacity(items);
        for item in &req.items {
            let outcome = unwrap_one(&call.slot, &item.key_id, &item.ciphertext);
            let code = outcome
                .as_ref()
                .map(|_| Code::Ok)
                .unwrap_or_else(|s| s.code());
            self.metrics.request(call.op, code);
            let key_id = (!item.key_id.is_empty()).then(|| shown(&item.key_id));
            entries.push(audit_entry(
                call.op.name(),
                &call.info,
                Some(&call.slot.name),
                key_id.as_deref(),
                outcome_of(&outcome),
            ));
            results.push(pb::UnwrapResult {
                result: Some(match outcome {
                    Ok(plaintext) => pb::unwrap_result::Result::Plaintext(plaintext),
                    Err(status) => pb::unwrap_result::Result::Error(pb::ItemError {
                        code: status.code() as u32,
                        message: status.message().to_string(),
                    }),
                }),
            });
        }
        // The plaintexts are released only after every item's record is written (or counted).
        if let Err(status) = self.record_all(call.op, entries) {
            for result in &mut results {
                if let Some(pb::unwrap_result::Result::Plaintext(p)) = &mut result.result {
                    p.zeroize();
                }
            }
            return Err(status);
        }
        Ok(Response::new(pb::UnwrapBatchResponse { results }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let call = self.begin(&request, &request.get_ref().keyring, Operation::Status)?;
        let keyring = call.slot.current.load();
        let response = pb::StatusResponse {
            primary_key_id: keyring.primary_id().to_string(),
            keys: u32::try_from(keyring.len()).unwrap_or(u32::MAX),
        };
        self.finish(&call, Some(keyring.primary_id()), Ok(response))
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateRequest>,
    ) -> Result<Response<pb::RotateResponse>, Status> {
        let call = self.begin(&request, &request.get_ref().keyring, Operation::Rotate)?;
        let _guard = call.slot.rotate.lock().await;
        let result = match &call.slot.backend {
            SlotBackend::Etcd { state, .. } => match state.rotate(&call.slot.name).await {
                Ok(rotated) => {
                    serve_keyring(&call.slot, rotated.keyring, rotated.revision, &self.metrics);
                    tracing::info!(keyring = %call.slot.name, key_id = %rotated.key.id, revision = rotated.revision, "keyring rotated in etcd");
                    Ok(pb::RotateResponse {
                        key_id: rotated.key.id,
                    })
                }
                Err(e) => Err(shared_state_status("rotate failed", e)),
            },
            SlotBackend::Dir { stamp: served, .. } => {
                let worker = call.slot.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let info = worker.store.rotate()?;
                    let stamp = worker.store.stamp();
                    let keyring = worker.store.load()?;
                    Ok::<_, coffer_keystore::KeystoreError>((info, stamp, keyring))
                })
                .await;
                match outcome {
                    Ok(Ok((info, stamp, keyring))) => {
                        serve_keyring(&call.slot, keyring, 0, &self.metrics);
                        *served.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
                        tracing::info!(keyring = %call.slot.name, key_id = %info.id, "keyring rotated");
                        Ok(pb::RotateResponse { key_id: info.id })
                    }
                    Ok(Err(e)) => Err(internal("rotate failed", e)),
                    Err(e) => Err(internal("rotate task failed", e)),
                }
            }
        };
        let key_id = result.as_ref().ok().map(|r| r.key_id.clone());
        self.finish(&call, key_id.as_deref(), result)
    }

    async fn list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let call = self.begin(&request, &request.get_ref().keyring, Operation::List)?;
        let info = match &call.slot.backend {
            SlotBackend::Etcd { state, .. } => state
                .keyring_info(&call.slot.name)
                .await
                .map_err(|e| shared_state_status("reading the keystore failed", e)),
            SlotBackend::Dir { .. } => {
                let worker = call.slot.clone();
                match tokio::task::spawn_blocking(move || worker.store.info()).await {
                    Ok(Ok(info)) => Ok(info),
                    Ok(Err(e)) => Err(internal("reading the keystore failed", e)),
                    Err(e) => Err(internal("list task failed", e)),
                }
            }
        };
        let result = match info {
            Ok(info) => Ok(pb::ListKeysResponse {
                keys: info
                    .keys
                    .into_iter()
                    .map(|k| pb::KeyEntry {
                        key_id: k.id,
                        created: k.created,
                        primary: k.state == KeyState::Primary,
                    })
                    .collect(),
            }),
            Err(status) => Err(status),
        };
        self.finish(&call, None, result)
    }

    async fn get_key_bundle(
        &self,
        request: Request<pb::GetKeyBundleRequest>,
    ) -> Result<Response<pb::GetKeyBundleResponse>, Status> {
        let call = self.begin_public(&request, &request.get_ref().keyring, Operation::KeyBundle)?;
        let primary = call
            .slot
            .sealing
            .load_full()
            .map(|k| k.primary().id().to_string());
        let result = self
            .key_bundle(&call.slot)
            .await
            .map(|json| pb::GetKeyBundleResponse {
                bundle: json.to_vec(),
            });
        self.finish(&call, primary.as_deref(), result)
    }

    async fn reseal(
        &self,
        request: Request<pb::ResealRequest>,
    ) -> Result<Response<pb::ResealResponse>, Status> {
        let call = self.begin_public(&request, &request.get_ref().keyring, Operation::Reseal)?;
        let req = request.into_inner();
        let keys = call.slot.sealing.load_full();
        let mut key_id = None;
        let result = (|| {
            let keys = keys
                .as_deref()
                .ok_or_else(|| no_sealing_key(&call.slot.name))?;
            let value = parse_sealed(&req.sealed, &call.slot.name)?;
            key_id = Some(shown(value.key_id()));
            let key = sealing_key_of(Some(keys), &value, &call.slot.name)?;
            let plaintext = open_value(&value, key)?;
            let primary = keys.primary();
            let resealed = coffer_sealed::seal(
                &call.slot.name,
                primary.public(),
                value.binding(),
                &plaintext,
            )
            .map_err(|e| internal("resealing failed", e))?;
            Ok(pb::ResealResponse {
                sealed: resealed.to_text(),
                key_id: primary.id().to_string(),
            })
        })();
        // The record names the key the value was sealed to: what retiring it would break.
        self.finish(&call, key_id.as_deref(), result)
    }

    async fn unseal(
        &self,
        request: Request<pb::UnsealRequest>,
    ) -> Result<Response<pb::UnsealResponse>, Status> {
        let call = self.begin(&request, &request.get_ref().keyring, Operation::Unseal)?;
        let req = request.into_inner();
        let keys = call.slot.sealing.load_full();
        let decided = unseal_item(&call, keys.as_deref(), &req.sealed, req.location);
        let code = decided.code();
        // On an audit failure the plaintext is dropped here, and zeroized.
        if let Err(status) = self.record_all(call.op, vec![decided.audit_entry(&call)]) {
            self.metrics.request(call.op, status.code());
            return Err(status);
        }
        self.metrics.request(call.op, code);
        decided.result.map(|mut plaintext| {
            Response::new(pb::UnsealResponse {
                plaintext: std::mem::take(&mut *plaintext),
            })
        })
    }

    async fn unseal_batch(
        &self,
        request: Request<pb::UnsealBatchRequest>,
    ) -> Result<Response<pb::UnsealBatchResponse>, Status> {
        let items = request.get_ref().items.len();
        if items == 0 || items > MAX_UNSEAL_BATCH_ITEMS {
            return Err(Status::invalid_argument(format!(
                "a batch has {items} items; send 1 to {MAX_UNSEAL_BATCH_ITEMS}"
            )));
        }
        let call = self.begin_n(
            &request,
            &request.get_ref().keyring,
            Operation::Unseal,
            items as u32,
        )?;
        let req = request.into_inner();
        let keys = call.slot.sealing.load_full();
        let decided: Vec<UnsealDecision> = req
            .items
            .into_iter()
            .map(|item| unseal_item(&call, keys.as_deref(), &item.sealed, item.location))
            .collect();
        let entries = decided.iter().map(|d| d.audit_entry(&call)).collect();
        // The plaintexts are released only after every item's record is written; on an audit
        // failure they are dropped here, and zeroized.
        if let Err(status) = self.record_all(call.op, entries) {
            self.metrics.request(call.op, status.code());
            return Err(status);
        }
        let results = decided
            .into_iter()
            .map(|d| {
                self.metrics.request(call.op, d.code());
                pb::UnsealResult {
                    result: Some(match d.result {
                        Ok(mut plaintext) => {
                            pb::unseal_result::Result::Plaintext(std::mem::take(&mut *plaintext))
                        }
                        Err(status) => pb::unseal_result::Result::Error(pb::ItemError {
                            code: status.code() as u32,
                            message: status.message().to_string(),
                        }),
                    }),
                }
            })
            .collect();
        Ok(Response::new(pb::UnsealBatchResponse { results }))
    }

    async fn join_replica(
        &self,
        request: Request<pb::JoinReplicaRequest>,
    ) -> Result<Response<pb::JoinReplicaResponse>, Status> {
        crate::join::join_replica(self, request).map(Response::new)
    }
}

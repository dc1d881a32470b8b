//! keyd's Prometheus metrics.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::Operation;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyringLabels {
    keyring: String,
}

/// How a connection attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionResult {
    /// Attested and granted a role.
    Attested,
    /// Completed TLS but its attestation was refused; its calls get PERMISSION_DENIED.
    Refused,
    /// The TLS handshake failed or timed out.
    HandshakeFailed,
    /// Closed at once: the connection limit was reached.
    OverLimit,
}

impl ConnectionResult {
    fn name(self) -> &'static str {
        match self {
            ConnectionResult::Attested => "attested",
            ConnectionResult::Refused => "refused",
            ConnectionResult::HandshakeFailed => "handshake_failed",
            ConnectionResult::OverLimit => "over_limit",
        }
    }
}

/// Counters and gauges of one keyd process; cheap to clone.
#[derive(Clone)]
pub struct KeydMetrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    connections: Family<ConnectionLabels, Counter>,
    open_connections: Gauge,
    rate_limited: Counter,
    audit_failures: Counter,
    keyring_keys: Family<KeyringLabels, Gauge>,
    audit_anchor_conflict: Gauge,
    audit_anchor_failures: Counter,
    store_records_refused: Counter,
}

impl std::fmt::Debug for KeydMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeydMetrics")
    }
}

impl Default for KeydMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl KeydMetrics {
    /// A fresh registry with every keyd metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("coffer_keyd");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Key service calls by operation and gRPC status code",
            requests.clone(),
        );
        let connections = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "connections",
            "Accepted TCP connections by how the attested TLS handshake ended",
            connections.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Connections currently open",
            open_connections.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Calls refused with RESOURCE_EXHAUSTED by the per-caller rate limit",
            rate_limited.clone(),
        );
        let audit_failures = Counter::default();
        registry.register(
            "audit_failures",
            "Audit records that could not be written (the operation was refused)",
            audit_failures.clone(),
        );
        let keyring_keys = Family::<KeyringLabels, Gauge>::default();
        registry.register(
            "keyring_keys",
            "KEKs that can decrypt, per keyring",
            keyring_keys.clone(),
        );
        let audit_anchor_conflict = Gauge::default();
        registry.register(
            "audit_anchor_conflict",
            "1 while the audit anchor in the shared store names a record this replica's log does not hold (tail deleted or rewritten, or a duplicate --replica-id)",
            audit_anchor_conflict.clone(),
        );
        let audit_anchor_failures = Counter::default();
        registry.register(
            "audit_anchor_failures",
            "Audit anchors that could not be written to the shared store (unreachable or refused)",
            audit_anchor_failures.clone(),
        );
        let store_records_refused = Counter::default();
        registry.register(
            "store_records_refused",
            "Records in the shared store (etcd) that did not open or load; the previous keys stay served",
            store_records_refused.clone(),
        );
        KeydMetrics {
            registry: Arc::new(registry),
            requests,
            connections,
            open_connections,
            rate_limited,
            audit_failures,
            keyring_keys,
            audit_anchor_conflict,
            audit_anchor_failures,
            store_records_refused,
        }
    }

    /// Counts one shared-store record refused (tampered, or written by another root).
    pub fn store_record_refused(&self) {
        self.store_records_refused.inc();
    }

    /// Counts one call.
    pub fn request(&self, op: Operation, code: tonic::Code) {
        self.requests
            .get_or_create(&RequestLabels {
                operation: op.name(),
                code: coffer_telemetry::code_name(code),
            })
            .inc();
    }

    /// Counts one connection attempt.
    pub fn connection(&self, result: ConnectionResult) {
        self.connections
            .get_or_create(&ConnectionLabels {
                result: result.name(),
            })
            .inc();
    }

    /// The open-connections gauge.
    pub fn open_connections(&self) -> &Gauge {
        &self.open_connections
    }

    /// Counts one rate-limited call.
    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    /// Counts one audit write failure.
    pub fn audit_failure(&self) {
        self.audit_failures.inc();
    }

    /// Sets whether the stored audit anchor conflicts with this replica's log.
    pub fn set_audit_anchor_conflict(&self, conflict: bool) {
        self.audit_anchor_conflict.set(i64::from(conflict));
    }

    /// Counts one audit anchor that could not be written.
    pub fn audit_anchor_failure(&self) {
        self.audit_anchor_failures.inc();
    }

    /// Records how many KEKs keyring `name` has.
    pub fn set_keyring_keys(&self, name: &str, keys: usize) {
        self.keyring_keys
            .get_or_create(&KeyringLabels {
                keyring: name.to_string(),
            })
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

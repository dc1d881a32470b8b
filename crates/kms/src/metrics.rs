//! The plugin's Prometheus metrics (served with `/healthz` by `coffer-telemetry`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The gRPC methods the plugin serves, as metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// v2 Status.
    Status,
    /// v2 Encrypt.
    Encrypt,
    /// v2 Decrypt.
    Decrypt,
    /// v1beta1 Version.
    V1Version,
    /// v1beta1 Encrypt.
    V1Encrypt,
    /// v1beta1 Decrypt.
    V1Decrypt,
}

impl Method {
    const ALL: [Method; 6] = [
        Method::Status,
        Method::Encrypt,
        Method::Decrypt,
        Method::V1Version,
        Method::V1Encrypt,
        Method::V1Decrypt,
    ];

    /// The label value, `<api>/<method>`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Status => "v2/Status",
            Method::Encrypt => "v2/Encrypt",
            Method::Decrypt => "v2/Decrypt",
            Method::V1Version => "v1beta1/Version",
            Method::V1Encrypt => "v1beta1/Encrypt",
            Method::V1Decrypt => "v1beta1/Decrypt",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    key_id: String,
}

/// The keyd RPCs the plugin makes in service mode, as metric labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeydOp {
    /// Wrap (for Encrypt).
    Wrap,
    /// Unwrap (for Decrypt).
    Unwrap,
    /// Status (for Status, `/healthz` and the background probe).
    Status,
}

impl KeydOp {
    const ALL: [KeydOp; 3] = [KeydOp::Wrap, KeydOp::Unwrap, KeydOp::Status];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            KeydOp::Wrap => "wrap",
            KeydOp::Unwrap => "unwrap",
            KeydOp::Status => "status",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeydCallLabels {
    op: &'static str,
    result: &'static str,
}

/// Service-mode metrics: the calls to keyd and the connections they use.
#[derive(Clone)]
pub struct KeydMetrics {
    calls: Family<KeydCallLabels, Counter>,
    ok: Arc<[Counter; 3]>,
    /// Connection attempts to keyd after each connection's first.
    pub reconnects: Counter,
    /// Connections to keyd that are established (0: keyd is unreachable).
    pub connected: Gauge,
    /// `UnwrapBatch` calls to keyd (several Decrypts in one call).
    pub batches: Counter,
    /// Decrypts forwarded inside an `UnwrapBatch`.
    pub batched_unwraps: Counter,
    /// Decrypts answered from the DEK cache, without a call to keyd.
    pub cache_hits: Counter,
}

impl KeydMetrics {
    fn register(registry: &mut Registry) -> Self {
        let calls = Family::<KeydCallLabels, Counter>::default();
        registry.register(
            "keyd_calls",
            "calls to keyd by operation and result (ok, unreachable, timeout, refused, untrusted, rejected)",
            calls.clone(),
        );
        let reconnects = Counter::default();
        registry.register(
            "keyd_reconnects",
            "connection attempts to keyd after each pool connection's first",
            reconnects.clone(),
        );
        let connected = Gauge::default();
        registry.register(
            "keyd_connected",
            "attested connections to keyd that are established (0 means keyd is unreachable)",
            connected.clone(),
        );
        let batches = Counter::default();
        registry.register(
            "keyd_batches",
            "UnwrapBatch calls to keyd (Decrypts that queued behind calls in flight, sent together)",
            batches.clone(),
        );
        let batched_unwraps = Counter::default();
        registry.register(
            "keyd_batched_unwraps",
            "Decrypts forwarded to keyd inside an UnwrapBatch call",
            batched_unwraps.clone(),
        );
        let cache_hits = Counter::default();
        registry.register(
            "keyd_cache_hits",
            "Decrypts answered from the plugin's cache of DEK seeds keyd released (--keyd-cache-ttl), without a call to keyd",
            cache_hits.clone(),
        );
        let ok = KeydOp::ALL.map(|op| {
            calls
                .get_or_create(&KeydCallLabels {
                    op: op.name(),
                    result: "ok",
                })
                .clone()
        });
        KeydMetrics {
            calls,
            ok: Arc::new(ok),
            reconnects,
            connected,
            batches,
            batched_unwraps,
            cache_hits,
        }
    }

    /// Records one call to keyd; `result` is `ok` or the kind of failure.
    pub fn call(&self, op: KeydOp, result: &'static str) {
        if result == "ok" {
            let index = KeydOp::ALL.iter().position(|o| *o == op).unwrap_or(0);
            self.ok[index].inc();
        } else {
            self.calls
                .get_or_create(&KeydCallLabels {
                    op: op.name(),
                    result,
                })
                .inc();
        }
    }
}

/// All plugin metrics. Cheap to clone (every metric is reference-counted).
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    requests: Family<RequestLabels, Counter>,
    ok: Arc<[(Counter, Histogram); 6]>,
    primary_key: Family<KeyLabels, Gauge>,
    generation: Gauge,
    keys_loaded: Gauge,
    /// Calls refused by the caller check.
    pub refused_calls: Counter,
    /// Keystore reloads that failed (the previous keys stay in use).
    pub reload_failures: Counter,
    /// HTTP/2 `:authority` values rewritten for older API servers.
    pub authority_rewrites: Counter,
    lock_failures: Gauge,
    /// Service mode only: calls to keyd and its connections.
    pub keyd: Option<KeydMetrics>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.1,
        0.5, 1.0, 3.0,
    ])
}

impl Metrics {
    /// Registers every standalone-mode metric in a fresh registry.
    pub fn new() -> Self {
        Self::build(false)
    }

    /// Registers the service-mode metrics (no keystore; calls to keyd instead) in a fresh
    /// registry.
    pub fn for_service_mode() -> Self {
        Self::build(true)
    }

    fn build(service_mode: bool) -> Self {
        let mut registry = Registry::with_prefix("coffer_kms");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "gRPC calls by method and status code",
            requests.clone(),
        );
        let latency = Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "gRPC call latency inside the plugin",
            latency.clone(),
        );
        let primary_key = Family::<KeyLabels, Gauge>::default();
        registry.register(
            "primary_key",
            "1 for the primary KEK id that Status and Encrypt report",
            primary_key.clone(),
        );
        let generation = Gauge::default();
        if !service_mode {
            registry.register(
                "keystore_generation",
                "generation of the loaded keystore",
                generation.clone(),
            );
        }
        let keys_loaded = Gauge::default();
        registry.register(
            "keys_loaded",
            "KEKs that can decrypt (primary plus older ones), in this plugin or, in service mode, in keyd's keyring",
            keys_loaded.clone(),
        );
        let refused_calls = Counter::default();
        registry.register(
            "refused_calls",
            "calls refused by the caller check",
            refused_calls.clone(),
        );
        let reload_failures = Counter::default();
        if !service_mode {
            registry.register(
                "keystore_reload_failures",
                "keystore reloads that failed; the previous keys stay in use",
                reload_failures.clone(),
            );
        }
        let authority_rewrites = Counter::default();
        registry.register(
            "authority_rewrites",
            "HTTP/2 :authority header fields rewritten for API servers that send the socket path (counts literal fields, not requests: later requests reuse the rewritten HPACK table entry)",
            authority_rewrites.clone(),
        );
        let lock_failures = Gauge::default();
        registry.register(
            "key_memory_lock_failures",
            "key pages that could not be locked into RAM (0 expected)",
            lock_failures.clone(),
        );
        let keyd = service_mode.then(|| KeydMetrics::register(&mut registry));

        let ok = Method::ALL.map(|m| {
            let counter = requests
                .get_or_create(&RequestLabels {
                    method: m.name(),
                    code: "OK",
                })
                .clone();
            let histogram = latency
                .get_or_create(&MethodLabels { method: m.name() })
                .clone();
            (counter, histogram)
        });
        Metrics {
            registry: Arc::new(registry),
            requests,
            ok: Arc::new(ok),
            primary_key,
            generation,
            keys_loaded,
            refused_calls,
            reload_failures,
            authority_rewrites,
            lock_failures,
            keyd,
        }
    }

    /// Records one finished call.
    pub fn observe(&self, method: Method, code: tonic::Code, elapsed: Duration) {
        let index = Method::ALL.iter().position(|m| *m == method).unwrap_or(0);
        let (ok_counter, histogram) = &self.ok[index];
        histogram.observe(elapsed.as_secs_f64());
        if code == tonic::Code::Ok {
            ok_counter.inc();
        } else {
            self.requests
                .get_or_create(&RequestLabels {
                    method: method.name(),
                    code: coffer_telemetry::code_name(code),
                })
                .inc();
        }
    }

    /// Records the keyring now in use.
    pub fn set_keyring(&self, primary: &str, generation: u64, keys: usize) {
        self.set_primary(primary, keys);
        self.generation.set(generation as i64);
    }

    /// Records the primary KEK id and the number of KEKs.
    pub fn set_primary(&self, primary: &str, keys: usize) {
        self.primary_key.clear();
        self.primary_key
            .get_or_create(&KeyLabels {
                key_id: primary.to_string(),
            })
            .set(1);
        self.keys_loaded.set(keys as i64);
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        self.lock_failures
            .set(coffer_platform::secret::lock_failures() as i64);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

//! Per-caller request rate limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Limits keyd enforces on every connection and call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeydLimits {
    /// Connections open at once; further ones are closed right after accept.
    pub max_connections: usize,
    /// Largest gRPC message decoded or encoded.
    pub max_message_len: usize,
    /// Sustained calls per second per caller identity (0: unlimited).
    pub rate_per_second: u32,
    /// Calls a caller may make in a burst above the sustained rate.
    pub rate_burst: u32,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Sustained public calls (key bundles, reseals) per second per remote address (0:
    /// unlimited); these need no attestation, so they get a budget of their own.
    pub public_rate_per_second: u32,
    /// Public calls an address may make in a burst above the sustained rate.
    pub public_rate_burst: u32,
}

impl Default for KeydLimits {
    fn default() -> Self {
        KeydLimits {
            max_connections: 1024,
            // A sealed 1 MiB Secret value (Reseal, Unseal) fits.
            max_message_len: 2 << 20,
            rate_per_second: 50_000,
            rate_burst: 100_000,
            max_concurrent_streams: 256,
            public_rate_per_second: 20,
            public_rate_burst: 40,
        }
    }
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug)]
pub struct RateBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateBucket {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        RateBucket {
            rate: f64::from(rate),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes `n` tokens at once (one per operation of the call), or none; false when the
    /// caller is over its rate.
    pub fn try_acquire_n(&self, n: u32) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let n = f64::from(n.max(1));
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(state.1).as_secs_f64() * self.rate;
        state.0 = (state.0 + refill).min(self.burst);
        state.1 = now;
        if state.0 >= n {
            state.0 -= n;
            true
        } else {
            false
        }
    }
}

/// The buckets of every caller identity seen, so that all connections of one caller share one
/// budget.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u32,
    burst: u32,
    buckets: Mutex<HashMap<String, Arc<RateBucket>>>,
}

/// Most distinct caller identities remembered; beyond it, idle buckets are dropped.
const MAX_BUCKETS: usize = 16 * 1024;

impl RateLimiter {
    /// A limiter granting `rate` calls per second (0: unlimited) with bursts of `burst`.
    pub fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The shared bucket of caller identity `key`.
    pub fn bucket(&self, key: &str) -> Arc<RateBucket> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(key) {
            // Buckets held by no connection are idle; dropping them loses nothing that matters.
            buckets.retain(|_, b| Arc::strong_count(b) > 1);
        }
        buckets
            .entry(key.to_string())
            .or_insert_with(|| Arc::new(RateBucket::new(self.rate, self.burst)))
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refuses() {
        let limiter = RateLimiter::new(1, 3);
        let bucket = limiter.bucket("role/abc");
        assert!(bucket.try_acquire_n(1));
        assert!(bucket.try_acquire_n(1));
        assert!(bucket.try_acquire_n(1));
        assert!(!bucket.try_acquire_n(1));
        // Connections of the same caller share the budget.
        assert!(!limiter.bucket("role/abc").try_acquire_n(1));
        assert!(limiter.bucket("other").try_acquire_n(1));
        assert!(RateLimiter::new(0, 0).bucket("x").try_acquire_n(1));
        // A batch takes one token per item, all or nothing.
        let batch = RateLimiter::new(1, 5).bucket("b");
        assert!(!batch.try_acquire_n(6));
        assert!(batch.try_acquire_n(5));
    }

    #[test]
    fn a_sealed_secret_of_the_largest_size_fits_the_default_message_limit() {
        // Unseal's response carries the 1 MiB plaintext; Reseal's and Unseal's requests the
        // sealed text, plus the keyring and location.
        let limits = KeydLimits::default();
        assert!(limits.max_message_len >= coffer_sealed::MAX_SEALED_TEXT_LEN + 4096);
        assert!(limits.max_message_len >= coffer_sealed::MAX_PLAINTEXT_LEN + 64);
    }
}

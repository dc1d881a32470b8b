//! Service mode's cache of the DEK seeds keyd unwrapped for this plugin, keyed by the encrypted
//! DEK and the KEK id the API server sent with it.
//!
//! KMS v2 reuses one DEK seed for many Secrets, so the same encrypted DEK comes back in many
//! Decrypts (every API server restart, every API server of the cluster behind one plugin, the
//! API server's own cache evicting it). kube-apiserver caches decrypted DEKs for the same
//! reason; this cache spares the round trip to keyd for the plugin's repeats.
//!
//! What keeps it as safe as asking keyd each time:
//! * bounded ([`MAX_ENTRIES`], oldest evicted first) and expiring (`--keyd-cache-ttl`): keyd
//!   authorises every encrypted DEK again at least once per TTL, so a revoked grant takes
//!   effect within it;
//! * [`DekCache::clear`] forgets everything, which the plugin does whenever keyd's keyring
//!   changes (a retired or rotated KEK, seen by the Status probe within a second) and whenever
//!   keyd refuses this plugin; a generation counter keeps an unwrap that was in flight across
//!   a clear from refilling the cache with a value keyd may no longer release;
//! * the seeds are held in [`Zeroizing`] buffers, wiped when evicted, expired or cleared, and
//!   never printed (the cache has no `Debug` of its contents).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

/// Most DEK seeds held. KMS v2 makes one DEK seed per API server start and KEK rotation, so a
/// cluster has a handful in use; the bound only caps memory.
pub const MAX_ENTRIES: usize = 1024;
/// Longest `--keyd-cache-ttl`: a revoked grant must not stay ineffective for long.
pub const MAX_TTL: Duration = Duration::from_secs(300);

/// What a seed is filed under: the KEK id sent with the Decrypt and the encrypted DEK, so a
/// hit is exactly a request keyd already answered.
#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    key_id: Option<String>,
    ciphertext: Vec<u8>,
}

struct Entry {
    seed: Zeroizing<Vec<u8>>,
    stored: Instant,
    /// Matches the eviction queue's record of this insert (a key stored again gets a new one).
    serial: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<CacheKey, Entry>,
    /// Inserts, oldest first: what to evict when full.
    order: VecDeque<(u64, CacheKey)>,
    serial: u64,
    /// Bumped by every clear.
    generation: u64,
}

/// A bounded, expiring, zeroizing map from encrypted DEK to DEK seed.
pub struct DekCache {
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl fmt::Debug for DekCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DekCache")
            .field("ttl", &self.ttl)
            .field("entries", &self.len())
            .finish()
    }
}

/// A point in the cache's history: an unwrap started before a clear must not be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generation(u64);

impl DekCache {
    /// An empty cache whose seeds live `ttl` (at most [`MAX_TTL`]).
    pub fn new(ttl: Duration) -> Self {
        DekCache {
            ttl: ttl.min(MAX_TTL),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-made entry that matters: at worst
        // one seed is missing, which costs a round trip to keyd.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The seed keyd released for this request less than the TTL ago.
    pub fn get(&self, key_id: Option<&str>, ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let key = CacheKey {
            key_id: key_id.map(str::to_string),
            ciphertext: ciphertext.to_vec(),
        };
        let mut inner = self.lock();
        let entry = inner.entries.get(&key)?;
        if entry.stored.elapsed() < self.ttl {
            return Some(entry.seed.clone());
        }
        inner.entries.remove(&key);
        None
    }

    /// Where the cache is now; pass it to [`insert`](Self::insert) with the answer.
    pub fn generation(&self) -> Generation {
        Generation(self.lock().generation)
    }

    /// Files keyd's answer to a request made at `since`, unless the cache was cleared since.
    pub fn insert(
        &self,
        since: Generation,
        key_id: Option<&str>,
        ciphertext: &[u8],
        seed: &Zeroizing<Vec<u8>>,
    ) {
        let mut inner = self.lock();
        if inner.generation != since.0 {
            return;
        }
        let key = CacheKey {
            key_id: key_id.map(str::to_string),
            ciphertext: ciphertext.to_vec(),
        };
        // Stored again (two Decrypts of one DEK raced to keyd): replaced, evicting nothing.
        inner.entries.remove(&key);
        while inner.entries.len() >= MAX_ENTRIES {
            let Some((serial, oldest)) = inner.order.pop_front() else {
                break;
            };
            if inner
                .entries
                .get(&oldest)
                .is_some_and(|e| e.serial == serial)
            {
                inner.entries.remove(&oldest);
            }
        }
        inner.serial += 1;
        let serial = inner.serial;
        inner.order.push_back((serial, key.clone()));
        inner.entries.insert(
            key,
            Entry {
                seed: seed.clone(),
                stored: Instant::now(),
                serial,
            },
        );
        // Stale queue records (keys stored again, or expired and removed) are dropped here so
        // the queue stays within a small multiple of the bound.
        if inner.order.len() > 2 * MAX_ENTRIES {
            let Inner { entries, order, .. } = &mut *inner;
            order.retain(|(s, k)| entries.get(k).is_some_and(|e| e.serial == *s));
        }
    }

    /// Wipes the seeds whose time is up; the plugin calls it every second, so no seed stays
    /// in memory much past its TTL even when its DEK is never asked for again.
    pub fn purge_expired(&self) {
        let mut inner = self.lock();
        let ttl = self.ttl;
        inner.entries.retain(|_, e| e.stored.elapsed() < ttl);
        if inner.entries.is_empty() {
            inner.order.clear();
        }
    }

    /// Forgets (and wipes) every seed, and keeps unwraps in flight from storing theirs.
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.entries.clear();
        inner.order.clear();
    }

    /// Seeds held, expired ones included until they are looked up or evicted.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no seed is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(b: u8) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(vec![b; 32])
    }

    #[test]
    fn a_hit_needs_the_same_key_id_and_ciphertext() {
        let cache = DekCache::new(Duration::from_secs(60));
        let g = cache.generation();
        cache.insert(g, Some("k1"), b"ct", &seed(1));
        assert_eq!(cache.get(Some("k1"), b"ct").unwrap().as_slice(), &[1; 32]);
        assert!(cache.get(Some("k2"), b"ct").is_none());
        assert!(cache.get(None, b"ct").is_none());
        assert!(cache.get(Some("k1"), b"cu").is_none());
    }

    #[test]
    fn entries_expire() {
        let cache = DekCache::new(Duration::from_millis(20));
        cache.insert(cache.generation(), None, b"ct", &seed(1));
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get(None, b"ct").is_none());
        assert!(cache.is_empty());
    }

    #[test]
    fn purge_wipes_expired_seeds_nobody_asks_for() {
        // A TTL far above the time between the second insert and the purge.
        let cache = DekCache::new(Duration::from_secs(1));
        cache.insert(cache.generation(), None, b"old", &seed(1));
        std::thread::sleep(Duration::from_millis(1100));
        cache.insert(cache.generation(), None, b"new", &seed(2));
        cache.purge_expired();
        assert_eq!(cache.len(), 1);
        assert!(cache.get(None, b"new").is_some());
    }

    #[test]
    fn bounded_oldest_evicted_first() {
        let cache = DekCache::new(Duration::from_secs(60));
        let g = cache.generation();
        for i in 0..MAX_ENTRIES + 10 {
            cache.insert(g, None, &i.to_be_bytes(), &seed(i as u8));
            // Re-inserting keys leaves stale queue records; the bound must still hold.
            cache.insert(g, None, &i.to_be_bytes(), &seed(i as u8));
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        assert!(cache.get(None, &0usize.to_be_bytes()).is_none());
        assert!(cache.get(None, &(MAX_ENTRIES + 9).to_be_bytes()).is_some());
        assert!(cache.lock().order.len() <= 2 * MAX_ENTRIES + 1);
    }

    #[test]
    fn clear_forgets_and_blocks_answers_from_before_it() {
        let cache = DekCache::new(Duration::from_secs(60));
        let before = cache.generation();
        cache.insert(before, None, b"a", &seed(1));
        cache.clear();
        assert!(cache.get(None, b"a").is_none());
        // An unwrap that started before the clear (e.g. before a KEK was retired).
        cache.insert(before, None, b"b", &seed(2));
        assert!(cache.get(None, b"b").is_none());
        cache.insert(cache.generation(), None, b"b", &seed(2));
        assert!(cache.get(None, b"b").is_some());
    }

    #[test]
    fn debug_shows_no_seed() {
        let cache = DekCache::new(Duration::from_secs(1000));
        cache.insert(cache.generation(), Some("k"), b"ct", &seed(0xAB));
        let text = format!("{cache:?}");
        assert!(!text.contains("171") && !text.contains("ab"), "{text}");
        assert!(
            text.contains("300s") && text.contains("entries: 1"),
            "{text}"
        );
    }
}

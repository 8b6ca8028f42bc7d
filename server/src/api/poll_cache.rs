//! The unchanged poll without the database: which device a key belongs to and the ETag
//! of its last answer, kept in memory and trusted only while the store's poll generation
//! (`Store::poll_generation`, moved by every write that can change a key or a poll
//! answer) is the one it was read at. A 304 — most of a fleet's traffic — then costs a
//! SHA-256 and a shared read lock of one shard of sixteen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

const SHARDS: usize = 16;
/// Entries per shard before it is emptied (16 × 8,192 devices; ~200 bytes each).
const MAX_PER_SHARD: usize = 8_192;

/// What one device's last answered poll was, as of `generation`.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    uuid: String,
    etag: String,
    generation: u64,
}

#[derive(Debug)]
pub struct PollCache {
    /// By the SHA-256 (hex) of the device key.
    shards: Vec<RwLock<HashMap<String, Entry>>>,
    /// Lookups that found a current entry, and those that did not.
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Default for PollCache {
    fn default() -> Self {
        PollCache {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }
}

impl PollCache {
    /// The ETag last answered to the key hashing to `key_hash` for device `uuid`, if the
    /// store has not changed since (`generation` is the store's now).
    pub fn etag(&self, key_hash: &str, uuid: &str, generation: u64) -> Option<String> {
        let shard = self.shard(key_hash).read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let current = shard.get(key_hash).filter(|e| e.generation == generation && e.uuid == uuid);
        let counter = if current.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        current.map(|entry| entry.etag.clone())
    }

    /// (lookups answered from memory, lookups that had to ask the store) so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }

    /// Remembers an answer read from the store at `generation` (read *before* the store
    /// was asked, so that a write in between leaves the entry already outdated).
    pub fn remember(&self, key_hash: &str, uuid: &str, etag: &str, generation: u64) {
        let mut shard = self.shard(key_hash).write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if shard.len() >= MAX_PER_SHARD && !shard.contains_key(key_hash) {
            shard.clear();
        }
        shard.insert(key_hash.to_string(), Entry { uuid: uuid.to_string(), etag: etag.to_string(), generation });
    }

    fn shard(&self, key_hash: &str) -> &RwLock<HashMap<String, Entry>> {
        let digit = key_hash.chars().next().and_then(|c| c.to_digit(16)).unwrap_or(0);
        &self.shards[digit as usize % SHARDS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_holds_only_for_its_device_and_generation() {
        let cache = PollCache::default();
        assert_eq!(cache.etag("k1", "gw-1", 7), None);
        cache.remember("k1", "gw-1", "\"e1\"", 7);
        assert_eq!(cache.etag("k1", "gw-1", 7).as_deref(), Some("\"e1\""));
        assert_eq!(cache.etag("k1", "gw-1", 8), None, "the store changed since");
        assert_eq!(cache.etag("k1", "gw-2", 7), None, "the key is another device's");
        assert_eq!(cache.etag("k2", "gw-1", 7), None);
        cache.remember("k1", "gw-1", "\"e2\"", 8);
        assert_eq!(cache.etag("k1", "gw-1", 8).as_deref(), Some("\"e2\""));
    }

    #[test]
    fn a_full_shard_is_emptied_not_grown() {
        let cache = PollCache::default();
        // Keys starting with 0: all in one shard.
        for i in 0..(MAX_PER_SHARD * 3) {
            cache.remember(&format!("{i:064x}"), "gw", "\"e\"", 1);
        }
        let total: usize = cache.shards.iter().map(|s| s.read().unwrap().len()).sum();
        assert!(total <= MAX_PER_SHARD, "{total} entries");
        assert!(cache.etag(&format!("{:064x}", MAX_PER_SHARD * 3 - 1), "gw", 1).is_some(), "the newest is kept");
    }
}

//! The in-memory `wasi:keyvalue` store (the default): named buckets shared
//! by every request's instance, under one byte limit. A write that does not
//! fit evicts the least recently used entries of its own bucket, so a busy
//! response cache never pushes out a small bucket of counters. The handler
//! keeps its response cache here; `tern:llm/store-usage` reports what each
//! bucket holds (the WIT glue is `keyvalue.rs`).
//!
//! Policy (what to cache, for how long) is the guest's: the store only keeps
//! bytes and forgets the least recently used ones when full.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};

use crate::bindings::store_usage::BucketUsage;

/// Bytes an entry costs beyond its key and value (map and LRU bookkeeping).
const ENTRY_OVERHEAD: u64 = 64;

/// Keys `list-keys` returns per page.
const KEYS_PER_PAGE: usize = 1000;

/// Buckets of key/value pairs under one byte limit.
#[derive(Debug)]
pub struct KvStore {
    max_bytes: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    buckets: HashMap<String, Bucket>,
    tick: u64,
    bytes: u64,
}

#[derive(Debug, Default)]
struct Bucket {
    entries: HashMap<String, Entry>,
    /// Use order: tick → key.
    lru: BTreeMap<u64, String>,
    bytes: u64,
    evictions: u64,
}

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    tick: u64,
}

fn cost(key: &str, value: &[u8]) -> u64 {
    (key.len() + value.len()) as u64 + ENTRY_OVERHEAD
}

impl Inner {
    fn touch(&mut self, bucket: &str, key: &str) {
        self.tick += 1;
        let tick = self.tick;
        if let Some(b) = self.buckets.get_mut(bucket) {
            if let Some(e) = b.entries.get_mut(key) {
                b.lru.remove(&e.tick);
                e.tick = tick;
                b.lru.insert(tick, key.to_string());
            }
        }
    }

    fn remove(&mut self, bucket: &str, key: &str) -> bool {
        let Some(b) = self.buckets.get_mut(bucket) else { return false };
        let Some(e) = b.entries.remove(key) else { return false };
        let c = cost(key, &e.value);
        b.bytes -= c;
        b.lru.remove(&e.tick);
        self.bytes -= c;
        true
    }
}

impl KvStore {
    /// A store that keeps at most `max_bytes` of keys, values and overhead.
    pub fn new(max_bytes: u64) -> Self {
        Self { max_bytes, inner: Mutex::new(Inner::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens (creating if new) bucket `name`.
    pub fn open(&self, name: &str) {
        self.lock().buckets.entry(name.to_string()).or_default();
    }

    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let mut inner = self.lock();
        let value = inner.buckets.get(bucket)?.entries.get(key)?.value.clone();
        inner.touch(bucket, key);
        Some(value)
    }

    /// Stores `value` under `key`, evicting the bucket's least recently used
    /// entries until it fits. A value bigger than the whole store, or than
    /// what other buckets leave free, is refused.
    pub fn set(&self, bucket: &str, key: &str, value: Vec<u8>) -> Result<(), String> {
        let c = cost(key, &value);
        let mut inner = self.lock();
        inner.remove(bucket, key);
        let inner = &mut *inner;
        let b = inner.buckets.entry(bucket.to_string()).or_default();
        while inner.bytes + c > self.max_bytes {
            let Some((_, old_key)) = b.lru.pop_first() else {
                return Err(format!(
                    "an entry of {c} bytes does not fit: the store holds {} of {} bytes",
                    inner.bytes, self.max_bytes
                ));
            };
            let old = b.entries.remove(&old_key).expect("an entry of the bucket's order");
            let oc = cost(&old_key, &old.value);
            inner.bytes -= oc;
            b.bytes -= oc;
            b.evictions += 1;
        }
        inner.tick += 1;
        let tick = inner.tick;
        inner.bytes += c;
        b.bytes += c;
        b.lru.insert(tick, key.to_string());
        b.entries.insert(key.to_string(), Entry { value, tick });
        Ok(())
    }

    pub fn delete(&self, bucket: &str, key: &str) {
        self.lock().remove(bucket, key);
    }

    pub fn exists(&self, bucket: &str, key: &str) -> bool {
        self.lock().buckets.get(bucket).is_some_and(|b| b.entries.contains_key(key))
    }

    /// One page of keys in sorted order, from `cursor` (an offset), and the
    /// cursor of the next page if there is one.
    pub fn list_keys(&self, bucket: &str, cursor: u64) -> (Vec<String>, Option<u64>) {
        let inner = self.lock();
        let mut keys: Vec<&String> = inner.buckets.get(bucket).map(|b| b.entries.keys().collect()).unwrap_or_default();
        keys.sort();
        let start = (cursor as usize).min(keys.len());
        let end = (start + KEYS_PER_PAGE).min(keys.len());
        let next = (end < keys.len()).then_some(end as u64);
        (keys[start..end].iter().map(|k| k.to_string()).collect(), next)
    }

    /// Adds `delta` to the little-endian u64 under `key` (0 if absent) and
    /// returns the sum.
    pub fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64, String> {
        let current = match self.get(bucket, key) {
            None => 0,
            Some(bytes) => {
                let raw: [u8; 8] = bytes.try_into().map_err(|_| format!("{key} does not hold a counter"))?;
                u64::from_le_bytes(raw)
            }
        };
        let next = current.wrapping_add(delta);
        self.set(bucket, key, next.to_le_bytes().to_vec())?;
        Ok(next)
    }

    /// What bucket `name` holds; none if it was never opened.
    pub fn usage(&self, name: &str) -> Option<BucketUsage> {
        let inner = self.lock();
        let b = inner.buckets.get(name)?;
        Some(BucketUsage {
            entries: b.entries.len() as u64,
            bytes: b.bytes,
            max_bytes: self.max_bytes,
            evictions: b.evictions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_entries_go_first_and_are_counted() {
        let store = KvStore::new(3 * (ENTRY_OVERHEAD + 2));
        for k in ["a", "b", "c"] {
            store.set("cache", k, vec![1]).unwrap();
        }
        assert!(store.get("cache", "a").is_some()); // "b" is now the oldest
        store.set("cache", "d", vec![1]).unwrap();
        assert!(!store.exists("cache", "b"));
        assert!(store.exists("cache", "a") && store.exists("cache", "c") && store.exists("cache", "d"));
        let u = store.usage("cache").unwrap();
        assert_eq!((u.entries, u.evictions, u.bytes), (3, 1, 3 * (ENTRY_OVERHEAD + 2)));
        assert!(store.usage("never-opened").is_none());
    }

    #[test]
    fn a_full_bucket_evicts_its_own_entries_not_another_buckets() {
        let store = KvStore::new(4 * (ENTRY_OVERHEAD + 2));
        store.set("counters", "n", vec![1]).unwrap();
        for k in ["a", "b", "c", "d", "e"] {
            store.set("cache", k, vec![1]).unwrap();
        }
        assert!(store.exists("counters", "n"));
        assert_eq!(store.usage("cache").unwrap().entries, 3);
        assert_eq!(store.usage("counters").unwrap().evictions, 0);
        // A bucket with nothing to give up cannot take the others' room.
        assert!(store.set("other", "x", vec![1]).is_err());
    }

    #[test]
    fn replacing_and_deleting_keep_the_byte_count_true() {
        let store = KvStore::new(1 << 20);
        store.set("b", "k", vec![0; 100]).unwrap();
        store.set("b", "k", vec![0; 10]).unwrap();
        assert_eq!(store.usage("b").unwrap().bytes, 11 + ENTRY_OVERHEAD);
        store.delete("b", "k");
        assert_eq!(store.usage("b").unwrap().bytes, 0);
        assert!(store.set("b", "big", vec![0; 2 << 20]).is_err());
    }

    #[test]
    fn counters_add_up_and_keys_list_in_pages() {
        let store = KvStore::new(1 << 24);
        assert_eq!(store.increment("n", "hits", 2).unwrap(), 2);
        assert_eq!(store.increment("n", "hits", 0).unwrap(), 2);
        store.set("n", "text", b"hello".to_vec()).unwrap();
        assert!(store.increment("n", "text", 1).is_err());
        for i in 0..1500 {
            store.set("many", &format!("{i:04}"), vec![]).unwrap();
        }
        let (first, next) = store.list_keys("many", 0);
        assert_eq!((first.len(), next), (1000, Some(1000)));
        let (rest, next) = store.list_keys("many", 1000);
        assert_eq!((rest.len(), next, rest[0].as_str()), (500, None, "1000"));
    }
}

//! `wasi:keyvalue` in the instance's memory: the handler's response cache
//! then hits for as long as the runtime keeps the instance (jco keeps one
//! for its life; `wasmtime serve` makes one per request, so there every
//! lookup misses, and nothing fails).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};

use crate::bindings::exports::wasi::keyvalue::atomics;
use crate::bindings::exports::wasi::keyvalue::store::{self, Bucket, BucketBorrow, Error, GuestBucket, KeyResponse};
use crate::Adapter;

/// Most bytes the instance keeps, keys and values together; beyond it
/// writes are refused (the cache then stores nothing more).
const MAX_BYTES: usize = 16 << 20;

thread_local! {
    static BUCKETS: RefCell<HashMap<String, BTreeMap<String, Vec<u8>>>> = RefCell::new(HashMap::new());
    static BYTES: RefCell<usize> = const { RefCell::new(0) };
}

pub struct MemoryBucket {
    name: String,
}

fn with<T>(name: &str, work: impl FnOnce(&mut BTreeMap<String, Vec<u8>>) -> T) -> T {
    BUCKETS.with(|b| work(b.borrow_mut().entry(name.to_string()).or_default()))
}

fn put(name: &str, key: &str, value: Vec<u8>) -> Result<(), Error> {
    with(name, |bucket| {
        let old = bucket.get(key).map_or(0, |v| key.len() + v.len());
        let new = key.len() + value.len();
        BYTES.with(|total| {
            let mut total = total.borrow_mut();
            if *total - old + new > MAX_BYTES {
                return Err(Error::Other("the instance's store is full".into()));
            }
            *total = *total - old + new;
            bucket.insert(key.to_string(), value);
            Ok(())
        })
    })
}

impl store::Guest for Adapter {
    type Bucket = MemoryBucket;

    fn open(identifier: String) -> Result<Bucket, Error> {
        Ok(Bucket::new(MemoryBucket { name: identifier }))
    }
}

impl GuestBucket for MemoryBucket {
    fn get(&self, key: String) -> Result<Option<Vec<u8>>, Error> {
        Ok(with(&self.name, |b| b.get(&key).cloned()))
    }

    fn set(&self, key: String, value: Vec<u8>) -> Result<(), Error> {
        put(&self.name, &key, value)
    }

    fn delete(&self, key: String) -> Result<(), Error> {
        if let Some(old) = with(&self.name, |b| b.remove(&key)) {
            BYTES.with(|total| *total.borrow_mut() -= key.len() + old.len());
        }
        Ok(())
    }

    fn exists(&self, key: String) -> Result<bool, Error> {
        Ok(with(&self.name, |b| b.contains_key(&key)))
    }

    fn list_keys(&self, _cursor: Option<u64>) -> Result<KeyResponse, Error> {
        Ok(KeyResponse { keys: with(&self.name, |b| b.keys().cloned().collect()), cursor: None })
    }
}

impl atomics::Guest for Adapter {
    fn increment(bucket: BucketBorrow<'_>, key: String, delta: u64) -> Result<u64, Error> {
        let name = bucket.get::<MemoryBucket>().name.clone();
        let current = with(&name, |b| b.get(&key).and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok()));
        let next = u64::from_le_bytes(current.unwrap_or_default()).wrapping_add(delta);
        put(&name, &key, next.to_le_bytes().to_vec())?;
        Ok(next)
    }
}

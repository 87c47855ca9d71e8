//! The host's `wasi:keyvalue` store, one of two kinds: in memory (the
//! default, one server's own) or on Redis (`--keyvalue redis://…`, shared
//! by replicas). `keyvalue.rs` is the WIT glue over this.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use crate::bindings::store_usage::BucketUsage;

/// Where the buckets live.
#[derive(Clone)]
pub enum KeyValue {
    Memory(Arc<memory::KvStore>),
    Redis(Arc<redis::RedisStore>),
}

/// A failure the guest sees as `wasi:keyvalue`'s `other` error.
pub type Failure = String;

impl KeyValue {
    /// The store `--keyvalue` names: `memory` or a `redis://` URL.
    pub fn open(spec: &str, memory_bytes: u64, value_ttl: u64) -> anyhow::Result<Self> {
        if spec == "memory" {
            return Ok(KeyValue::Memory(Arc::new(memory::KvStore::new(memory_bytes))));
        }
        anyhow::ensure!(
            spec.starts_with("redis://") || spec.starts_with("rediss://") || spec.starts_with("unix://"),
            "--keyvalue must be `memory` or a redis:// URL, not {spec:?}"
        );
        Ok(KeyValue::Redis(Arc::new(redis::RedisStore::new(spec, value_ttl)?)))
    }

    /// The Redis server, when the store is one.
    pub fn redis(&self) -> Option<&Arc<redis::RedisStore>> {
        match self {
            KeyValue::Redis(r) => Some(r),
            KeyValue::Memory(_) => None,
        }
    }

    pub fn open_bucket(&self, name: &str) {
        if let KeyValue::Memory(m) = self {
            m.open(name);
        }
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, Failure> {
        match self {
            KeyValue::Memory(m) => Ok(m.get(bucket, key)),
            KeyValue::Redis(r) => r.get(bucket, key).await,
        }
    }

    pub async fn set(&self, bucket: &str, key: &str, value: Vec<u8>) -> Result<(), Failure> {
        match self {
            KeyValue::Memory(m) => m.set(bucket, key, value),
            KeyValue::Redis(r) => r.set(bucket, key, value).await,
        }
    }

    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), Failure> {
        match self {
            KeyValue::Memory(m) => {
                m.delete(bucket, key);
                Ok(())
            }
            KeyValue::Redis(r) => r.delete(bucket, key).await,
        }
    }

    pub async fn exists(&self, bucket: &str, key: &str) -> Result<bool, Failure> {
        match self {
            KeyValue::Memory(m) => Ok(m.exists(bucket, key)),
            KeyValue::Redis(r) => r.exists(bucket, key).await,
        }
    }

    pub async fn list_keys(&self, bucket: &str, cursor: u64) -> Result<(Vec<String>, Option<u64>), Failure> {
        match self {
            KeyValue::Memory(m) => Ok(m.list_keys(bucket, cursor)),
            KeyValue::Redis(r) => r.list_keys(bucket, cursor).await,
        }
    }

    pub async fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64, Failure> {
        match self {
            KeyValue::Memory(m) => m.increment(bucket, key, delta),
            KeyValue::Redis(r) => r.increment(bucket, key, delta).await,
        }
    }

    /// What a bucket holds; none if the memory store never opened it or
    /// Redis cannot be reached.
    pub async fn usage(&self, bucket: &str) -> Option<BucketUsage> {
        match self {
            KeyValue::Memory(m) => m.usage(bucket),
            KeyValue::Redis(r) => r.usage(bucket).await.ok(),
        }
    }

    /// False while a configured Redis has not answered since start.
    pub fn ready(&self) -> bool {
        self.redis().is_none_or(|r| r.reached())
    }
}

//! `wasi:keyvalue` on Redis (`--keyvalue redis://…`), so that every replica
//! of a server sees one response cache, one set of counters and one table
//! of jobs ([`crate::shared_jobs`]).
//!
//! - Bucket `b`'s key `k` is the Redis key `tern:kv:b:k` (a `:` or `%` in a
//!   bucket's name is percent-escaped, so names never run into keys).
//! - Values expire after the response cache's lifetime (`--cache-ttl`): the
//!   store holds caches, not records. Counters (`atomics.increment`) are
//!   `INCRBY`s and do not expire. Size and eviction are Redis's own
//!   (`maxmemory`, `maxmemory-policy allkeys-lru` to evict as the memory
//!   store does).
//! - Redis being down never fails a request: every command has a short
//!   deadline, and after a failure the store answers "unavailable" at once
//!   for [`RETRY_AFTER`] before trying again. The guest reads that as a
//!   cache miss. Each failure is counted (`tern_keyvalue_errors_total`), and
//!   the change between reachable and not is logged once each way.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::FromRedisValue;

use crate::bindings::store_usage::BucketUsage;

/// Longest a command may take before it counts as a failure.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// After a failure, commands fail at once for this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Keys asked for per `SCAN`.
const SCAN_COUNT: u64 = 1000;

/// The Redis server a server's replicas share.
pub struct RedisStore {
    conn: ConnectionManager,
    /// Seconds a value lives; 0 keeps it until Redis evicts it.
    value_ttl: u64,
    /// Until when commands fail without being sent.
    down_until: Mutex<Option<Instant>>,
    /// Some command has succeeded since start.
    reached: AtomicBool,
    errors: AtomicU64,
}

/// Why a command failed, for the guest (which treats it as a miss).
pub type Failure = String;

impl RedisStore {
    /// A store on `url`, connected lazily: start-up does not wait for Redis,
    /// `/ready` does ([`RedisStore::reached`]).
    pub fn new(url: &str, value_ttl: u64) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("--keyvalue {url:?}: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| anyhow::anyhow!("--keyvalue {url:?}: {e}"))?;
        Ok(Self {
            conn,
            value_ttl,
            down_until: Mutex::new(None),
            reached: AtomicBool::new(false),
            errors: AtomicU64::new(0),
        })
    }

    /// True once Redis has answered since start.
    pub fn reached(&self) -> bool {
        self.reached.load(Ordering::Acquire)
    }

    /// Commands that failed or timed out, and those refused while down.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Pings until Redis answers once, logging why not (each new reason
    /// once) while it does not.
    pub async fn wait_reachable(&self) {
        let mut last = String::new();
        while !self.reached() {
            match self.query::<String>(&redis::cmd("PING")).await {
                Ok(_) => tracing::info!("Redis answers"),
                Err(e) if e != last && !e.contains("unreachable") => {
                    tracing::warn!(error = %e, "waiting for Redis (--keyvalue); not ready until it answers");
                    last = e;
                }
                Err(_) => {}
            }
            tokio::time::sleep(RETRY_AFTER).await;
        }
    }

    /// Runs one command or pipeline within the deadline, keeping the
    /// reachable/unreachable state.
    pub async fn query<T: FromRedisValue>(&self, command: &impl Command) -> Result<T, Failure> {
        {
            let down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
            if down.is_some_and(|t| Instant::now() < t) {
                self.errors.fetch_add(1, Ordering::Relaxed);
                return Err("Redis is unreachable".to_string());
            }
        }
        let mut conn = self.conn.clone();
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, command.run(&mut conn)).await {
            Ok(Ok(value)) => T::from_redis_value(value).map_err(|e| e.to_string()),
            Ok(Err(e)) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Err(e.to_string()),
            // Redis answered: it is up, the command was wrong.
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => Err(format!("no answer from Redis within {COMMAND_TIMEOUT:?}")),
        };
        let mut down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => {
                if down.take().is_some() {
                    tracing::info!("Redis is reachable again");
                }
                self.reached.store(true, Ordering::Release);
            }
            Err(e) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if down.is_none() && self.reached() {
                    tracing::warn!(error = %e, "Redis is unreachable: the response cache misses until it is back");
                }
                *down = Some(Instant::now() + RETRY_AFTER);
            }
        }
        result
    }

    pub async fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, Failure> {
        self.query(redis::cmd("GET").arg(full_key(bucket, key))).await
    }

    pub async fn set(&self, bucket: &str, key: &str, value: Vec<u8>) -> Result<(), Failure> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(full_key(bucket, key)).arg(value);
        if self.value_ttl > 0 {
            cmd.arg("EX").arg(self.value_ttl);
        }
        self.query::<()>(&cmd).await
    }

    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), Failure> {
        self.query::<()>(redis::cmd("DEL").arg(full_key(bucket, key))).await
    }

    pub async fn exists(&self, bucket: &str, key: &str) -> Result<bool, Failure> {
        self.query(redis::cmd("EXISTS").arg(full_key(bucket, key))).await
    }

    /// One `SCAN` page of the bucket's keys; Redis's cursor is the WIT's.
    pub async fn list_keys(&self, bucket: &str, cursor: u64) -> Result<(Vec<String>, Option<u64>), Failure> {
        let prefix = bucket_prefix(bucket);
        let pattern = format!("{}*", glob_escape(&prefix));
        let (next, keys): (u64, Vec<String>) =
            self.query(redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(SCAN_COUNT)).await?;
        let keys = keys.into_iter().filter_map(|k| k.strip_prefix(&prefix).map(str::to_string)).collect();
        Ok((keys, (next != 0).then_some(next)))
    }

    pub async fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64, Failure> {
        let delta = i64::try_from(delta).map_err(|_| format!("{delta} is larger than Redis counters hold"))?;
        let sum: i64 = self.query(redis::cmd("INCRBY").arg(full_key(bucket, key)).arg(delta)).await?;
        Ok(sum as u64)
    }

    /// The bucket's entries and their bytes (one walk over its keys), with
    /// Redis's own memory limit and eviction count.
    pub async fn usage(&self, bucket: &str) -> Result<BucketUsage, Failure> {
        let (mut entries, mut bytes) = (0u64, 0u64);
        let mut cursor = 0;
        loop {
            let (keys, next) = self.list_keys(bucket, cursor).await?;
            if !keys.is_empty() {
                let mut lengths = redis::pipe();
                for k in &keys {
                    lengths.cmd("STRLEN").arg(full_key(bucket, k));
                }
                let sizes: Vec<u64> = self.query(&lengths).await?;
                entries += keys.len() as u64;
                bytes += keys.iter().map(|k| k.len() as u64).sum::<u64>() + sizes.iter().sum::<u64>();
            }
            match next {
                Some(n) => cursor = n,
                None => break,
            }
        }
        let memory: String = self.query(redis::cmd("INFO").arg("memory")).await?;
        let stats: String = self.query(redis::cmd("INFO").arg("stats")).await?;
        Ok(BucketUsage {
            entries,
            bytes,
            max_bytes: info_field(&memory, "maxmemory"),
            evictions: info_field(&stats, "evicted_keys"),
        })
    }
}

/// A single command or a pipeline.
pub trait Command: Sync {
    fn run<'a>(
        &'a self,
        conn: &'a mut ConnectionManager,
    ) -> impl std::future::Future<Output = redis::RedisResult<redis::Value>> + Send + 'a;
}

impl Command for redis::Cmd {
    fn run<'a>(
        &'a self,
        conn: &'a mut ConnectionManager,
    ) -> impl std::future::Future<Output = redis::RedisResult<redis::Value>> + Send + 'a {
        self.query_async(conn)
    }
}

impl Command for redis::Pipeline {
    fn run<'a>(
        &'a self,
        conn: &'a mut ConnectionManager,
    ) -> impl std::future::Future<Output = redis::RedisResult<redis::Value>> + Send + 'a {
        self.query_async(conn)
    }
}

fn bucket_prefix(bucket: &str) -> String {
    format!("tern:kv:{}:", bucket.replace('%', "%25").replace(':', "%3A"))
}

fn full_key(bucket: &str, key: &str) -> String {
    bucket_prefix(bucket) + key
}

/// `text` matched literally in a `SCAN MATCH` pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A number from `INFO`'s `name:value` lines; 0 if absent.
fn info_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_never_run_into_keys() {
        assert_eq!(full_key("a:b", "c"), "tern:kv:a%3Ab:c");
        assert_ne!(full_key("a:b", "c"), full_key("a", "b:c"));
        assert_eq!(full_key("100%", "k"), "tern:kv:100%25:k");
        assert_eq!(glob_escape("tern:kv:a*[b]?\\:"), "tern:kv:a\\*\\[b\\]\\?\\\\:");
    }

    #[test]
    fn info_fields_are_read_by_exact_name() {
        let info = "# Memory\r\nused_memory:100\r\nmaxmemory:4096\r\nmaxmemory_human:4K\r\n";
        assert_eq!(info_field(info, "maxmemory"), 4096);
        assert_eq!(info_field(info, "evicted_keys"), 0);
    }
}

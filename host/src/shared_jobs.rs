//! Jobs (`/api/chat-queue`) every replica can answer, over the shared Redis.
//!
//! The replica whose engine runs a job owns it: it writes the job's state
//! and text to `tern:job:{id}` when it is submitted and then every
//! [`MIRROR_INTERVAL`] while it changes, until it ends (the record expires
//! `--job-ttl` later, as the engine's own copy does). Another replica
//! answers a status from that record. A cancel there sets
//! `tern:job:{id}:cancel`; the owner sees it at its next look, cancels the
//! generation in its engine and writes the ended record, which the
//! cancelling replica waits for (up to [`CANCEL_WAIT`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tern_engine::{Engine, JobInfo};

use crate::kv::redis::RedisStore;

/// How often the owner writes its running jobs and looks for cancels.
const MIRROR_INTERVAL: Duration = Duration::from_millis(100);
/// How long a cancel from another replica waits for the owner to confirm.
const CANCEL_WAIT: Duration = Duration::from_secs(2);
/// How long a cancel request waits for its owner to see it.
const CANCEL_REQUEST_SECONDS: u64 = 60;

pub struct SharedJobs {
    redis: Arc<RedisStore>,
    engine: Engine,
    /// Seconds an ended job's record is kept.
    ttl: u64,
    /// This replica's jobs not yet ended, with the record last written.
    live: Mutex<HashMap<String, String>>,
}

fn record_key(id: &str) -> String {
    format!("tern:job:{id}")
}

fn cancel_key(id: &str) -> String {
    format!("tern:job:{id}:cancel")
}

impl SharedJobs {
    pub fn new(redis: Arc<RedisStore>, engine: Engine, ttl: Duration) -> Self {
        Self { redis, engine, ttl: ttl.as_secs().max(1), live: Mutex::new(HashMap::new()) }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the record of a job this replica runs now: when it is
    /// accepted (before its id is returned, so any replica can be asked
    /// about it at once) and when it is cancelled here.
    pub async fn publish(&self, id: &str) {
        if let Some(info) = self.engine.job_status(id) {
            let json = serde_json::to_string(&info).expect("a job serialises");
            self.live().entry(id.to_string()).or_default();
            self.write(&[(id.to_string(), json, info.state.is_ended())]).await;
        }
    }

    /// A job another replica owns, from its record.
    pub async fn status(&self, id: &str) -> Option<JobInfo> {
        let json: Option<String> = self.redis.query(redis::cmd("GET").arg(record_key(id))).await.ok()?;
        serde_json::from_str(&json?).ok()
    }

    /// Asks the replica running `caller`'s job to cancel it, and waits a
    /// short while for the ended record. Another caller's job is unknown.
    pub async fn cancel(&self, id: &str, caller: Option<&str>) -> Option<JobInfo> {
        let info = self.status(id).await.filter(|i| i.owner.as_deref() == caller)?;
        if info.state.is_ended() {
            return Some(info);
        }
        let request = redis::cmd("SET").arg(cancel_key(id)).arg(1).arg("EX").arg(CANCEL_REQUEST_SECONDS).clone();
        if self.redis.query::<()>(&request).await.is_err() {
            return Some(info);
        }
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        let mut latest = info;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(MIRROR_INTERVAL / 2).await;
            if let Some(now) = self.status(id).await {
                latest = now;
                if latest.state.is_ended() {
                    break;
                }
            }
        }
        Some(latest)
    }

    /// Writes this replica's live jobs while they change and carries out
    /// cancels asked for elsewhere; runs for the server's life.
    pub async fn mirror(self: Arc<Self>) {
        loop {
            tokio::time::sleep(MIRROR_INTERVAL).await;
            let ids: Vec<String> = self.live().keys().cloned().collect();
            if ids.is_empty() {
                continue;
            }
            let mut asks = redis::pipe();
            for id in &ids {
                asks.cmd("EXISTS").arg(cancel_key(id));
            }
            let cancels: Vec<bool> = self.redis.query(&asks).await.unwrap_or_default();
            let mut changed = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                let info = if cancels.get(i).copied().unwrap_or(false) {
                    tracing::info!(job = %id, "cancelled from another replica");
                    self.engine.cancel_job(id)
                } else {
                    self.engine.job_status(id)
                };
                let Some(info) = info else {
                    self.live().remove(id);
                    continue;
                };
                let json = serde_json::to_string(&info).expect("a job serialises");
                if self.live().get(id) != Some(&json) {
                    changed.push((id.clone(), json, info.state.is_ended()));
                }
            }
            self.write(&changed).await;
        }
    }

    /// Writes records; a job whose ended record is written is let go.
    async fn write(&self, records: &[(String, String, bool)]) {
        if records.is_empty() {
            return;
        }
        let mut writes = redis::pipe();
        for (id, json, _) in records {
            writes.cmd("SET").arg(record_key(id)).arg(json).arg("EX").arg(self.ttl).ignore();
        }
        if self.redis.query::<()>(&writes).await.is_err() {
            return; // tried again at the next look
        }
        let mut live = self.live();
        for (id, json, ended) in records {
            if *ended {
                live.remove(id);
            } else if let Some(last) = live.get_mut(id) {
                last.clone_from(json);
            }
        }
    }
}

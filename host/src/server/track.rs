//! One request's bookkeeping: counted in flight from arrival until its
//! response (streamed or not) is finished, then logged and counted, with a
//! request id the client sent or a fresh one.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::HostMetrics;
use crate::server::connection::ConnState;

/// A request in flight.
pub struct Track {
    metrics: Arc<HostMetrics>,
    /// Told when the last request in flight ends (draining waits on it).
    idle: Arc<tokio::sync::Notify>,
    conn: Arc<ConnState>,
    pub id: String,
    method: http::Method,
    path: String,
    started: Instant,
    pub status: AtomicU16,
    /// Tokens its generations produced.
    pub tokens: AtomicU32,
    /// The handler ran past its deadline.
    pub timed_out: AtomicBool,
}

impl Track {
    /// Counts `req` in flight, on the server and on its connection.
    pub fn new(
        metrics: Arc<HostMetrics>,
        idle: Arc<tokio::sync::Notify>,
        id: String,
        req: &hyper::Request<hyper::body::Incoming>,
        conn: Arc<ConnState>,
    ) -> Self {
        metrics.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            metrics,
            idle,
            conn,
            id,
            method: req.method().clone(),
            path: req.uri().path().to_string(),
            started: Instant::now(),
            status: AtomicU16::new(0),
            tokens: AtomicU32::new(0),
            timed_out: AtomicBool::new(false),
        }
    }
}

impl Drop for Track {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let status = self.status.load(Ordering::Relaxed);
        tracing::info!(id = %self.id, method = %self.method, route = %self.path, status,
            ms = elapsed.as_secs_f64() * 1e3, tokens = self.tokens.load(Ordering::Relaxed), "request");
        self.metrics.request(&self.path, status, elapsed);
        self.conn.touch();
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.metrics.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// Request ids: the client's `X-Request-Id` when it is reasonable, else a
/// fresh one.
#[derive(Default)]
pub struct RequestIds(AtomicU64);

impl RequestIds {
    pub fn for_request(&self, headers: &http::HeaderMap) -> String {
        if let Some(id) = headers.get("x-request-id").and_then(|v| v.to_str().ok()) {
            if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
                return id.to_string();
            }
        }
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        format!("{:016x}", splitmix(nanos as u64 ^ n.rotate_left(32) ^ std::process::id() as u64))
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

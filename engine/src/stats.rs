//! Counters and latency histograms the scheduler keeps for `/health` and
//! `/metrics`, and the [`EngineStatus`] they add up to.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::kv::{KvUsage, BLOCK_TOKENS};

/// Readiness and load of the engine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStatus {
    pub ready: bool,
    /// Set when loading failed; the engine then never becomes ready.
    pub load_error: Option<String>,
    pub running: u32,
    pub waiting: u32,
    pub max_waiting: u32,
    /// Prompt tokens run through the model (cached ones excluded).
    pub prompt_tokens_total: u64,
    pub generated_tokens_total: u64,
    /// Generations finished for any reason.
    pub requests_total: u64,
    /// Generations whose client left or whose deadline passed.
    pub cancelled_total: u64,
    /// Generations refused because the queue was full.
    pub rejected_total: u64,
    /// Running generations sent back to the queue to free KV blocks.
    pub preempted_total: u64,
    pub kv_block_tokens: u32,
    pub kv_blocks_total: u32,
    /// Held by running generations.
    pub kv_blocks_used: u32,
    /// Held by nobody, kept for prefix reuse.
    pub kv_blocks_cached: u32,
    /// Generations that reused cached prefix blocks.
    pub prefix_hits_total: u64,
    /// Prompt tokens taken from the prefix cache.
    pub cached_tokens_total: u64,
    pub steps_total: u64,
    pub latencies: Latencies,
}

/// Bucket upper bounds of every latency histogram, in seconds.
pub const LATENCY_BOUNDS: [f64; 17] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0];

/// Counts of observations per bucket, Prometheus style.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds, ascending; a last unbounded bucket follows.
    pub bounds: Vec<f64>,
    /// Per bucket, not cumulative: `bounds.len() + 1` entries.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { bounds: LATENCY_BOUNDS.to_vec(), counts: vec![0; LATENCY_BOUNDS.len() + 1], sum: 0.0, count: 0 }
    }
}

impl Histogram {
    pub fn observe(&mut self, value: Duration) {
        let s = value.as_secs_f64();
        let bucket = self.bounds.iter().position(|&b| s <= b).unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += s;
        self.count += 1;
    }

    /// The value below which a fraction `q` of observations fall, as the
    /// upper bound of its bucket (None when empty).
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let want = (q * self.count as f64).ceil() as u64;
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= want.max(1) {
                return Some(self.bounds.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
    }
}

/// The latency histograms.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latencies {
    /// Admission to first generated token.
    pub time_to_first_token: Histogram,
    /// Between consecutive tokens of one generation.
    pub inter_token: Histogram,
    /// Admission to the start of prompt processing.
    pub queue_time: Histogram,
    /// Admission to the end.
    pub request: Histogram,
}

/// Everything the scheduler counts; read by any thread.
#[derive(Default)]
pub(crate) struct Stats {
    pub running: AtomicU32,
    pub waiting: AtomicU32,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    pub requests: AtomicU64,
    pub cancelled: AtomicU64,
    pub rejected: AtomicU64,
    pub preempted: AtomicU64,
    pub prefix_hits: AtomicU64,
    pub cached_tokens: AtomicU64,
    pub steps: AtomicU64,
    /// Moving average of a generation's time from start to end, in
    /// microseconds (0 until one finished): the basis of wait estimates.
    pub service_us: AtomicU64,
    pub latencies: Mutex<Latencies>,
}

impl Stats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn observe(&self, f: impl FnOnce(&mut Latencies)) {
        f(&mut self.latencies.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// The counters now, with the KV blocks of every model (`kv`) and the
    /// queue's bound; readiness is the caller's to fill in.
    pub fn snapshot(&self, kv: KvUsage, max_waiting: u32) -> EngineStatus {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let k = |c: &AtomicU32| c.load(Ordering::Relaxed);
        EngineStatus {
            ready: false,
            load_error: None,
            running: k(&self.running),
            waiting: k(&self.waiting),
            max_waiting,
            prompt_tokens_total: n(&self.prompt_tokens),
            generated_tokens_total: n(&self.generated_tokens),
            requests_total: n(&self.requests),
            cancelled_total: n(&self.cancelled),
            rejected_total: n(&self.rejected),
            preempted_total: n(&self.preempted),
            kv_block_tokens: BLOCK_TOKENS as u32,
            kv_blocks_total: kv.total,
            kv_blocks_used: kv.used,
            kv_blocks_cached: kv.cached,
            prefix_hits_total: n(&self.prefix_hits),
            cached_tokens_total: n(&self.cached_tokens),
            steps_total: n(&self.steps),
            latencies: self.latencies.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }

    /// Folds one finished generation's service time into the average.
    pub fn record_service(&self, took: Duration) {
        let new = took.as_micros() as u64;
        let old = self.service_us.load(Ordering::Relaxed);
        let avg = if old == 0 { new } else { (old * 7 + new) / 8 };
        self.service_us.store(avg, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_counts_each_value_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::default();
        for ms in [0, 1, 2, 700, 400_000] {
            h.observe(Duration::from_millis(ms));
        }
        assert_eq!(h.count, 5);
        assert_eq!(h.counts[0], 2); // 0 and 1 ms are <= 1 ms
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[9], 1); // 0.7 s <= 1 s
        assert_eq!(h.counts[LATENCY_BOUNDS.len()], 1);
        assert!((h.sum - 400.703).abs() < 1e-9);
        assert_eq!(h.quantile_bound(0.5), Some(0.0025));
        assert_eq!(h.quantile_bound(1.0), Some(f64::INFINITY));
    }
}

//! The host's own counters, in Prometheus text at `GET /metrics/host`: HTTP
//! requests by route and status, handler instantiation time, component
//! swaps and rejections, traps, open connections and requests in flight,
//! and the process's resident memory.
//!
//! Routes are labelled by path; past [`MAX_ROUTES`] distinct paths (a client
//! probing random URLs) the rest count as `other`, so the label set stays
//! bounded.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Distinct route labels kept.
const MAX_ROUTES: usize = 64;

/// Upper bounds of the instantiation-time histogram, in seconds.
const INSTANTIATION_BOUNDS: [f64; 8] = [0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05];

#[derive(Default)]
pub struct HostMetrics {
    requests: Mutex<BTreeMap<(String, u16), (u64, f64)>>,
    instantiations: Mutex<Histogram>,
    swaps: AtomicU64,
    rejected: AtomicU64,
    traps: AtomicU64,
    reused: AtomicU64,
    busy: AtomicU64,
    pub connections: AtomicU64,
    pub in_flight: AtomicU64,
}

#[derive(Default)]
struct Histogram {
    counts: [u64; INSTANTIATION_BOUNDS.len() + 1],
    sum: f64,
    count: u64,
}

impl HostMetrics {
    /// Counts one finished request.
    pub fn request(&self, path: &str, status: u16, elapsed: Duration) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        let known = map.keys().any(|(r, _)| r == path);
        let distinct = || map.keys().map(|(r, _)| r).collect::<std::collections::BTreeSet<_>>().len();
        let route = if known || distinct() < MAX_ROUTES { path.to_string() } else { "other".to_string() };
        let entry = map.entry((route, status)).or_default();
        entry.0 += 1;
        entry.1 += elapsed.as_secs_f64();
    }

    pub fn instantiated(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let mut h = self.instantiations.lock().unwrap_or_else(|p| p.into_inner());
        let bucket = INSTANTIATION_BOUNDS.iter().position(|&b| secs <= b).unwrap_or(INSTANTIATION_BOUNDS.len());
        h.counts[bucket] += 1;
        h.sum += secs;
        h.count += 1;
    }

    pub fn reused(&self) {
        self.reused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn swapped(&self) {
        self.swaps.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A request refused because every handler instance was taken.
    pub fn busy(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
    }

    pub fn trapped(&self) {
        self.traps.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition, with `extra` counters (name, help,
    /// value) kept elsewhere.
    pub fn render(&self, extra: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        out.push_str("# HELP tern_http_requests_total HTTP requests answered, by route and status.\n");
        out.push_str("# TYPE tern_http_requests_total counter\n");
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((route, status), (n, _)) in requests.iter() {
            let _ = writeln!(out, "tern_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", escape(route));
        }
        out.push_str("# HELP tern_http_request_seconds_total Time spent answering, by route and status.\n");
        out.push_str("# TYPE tern_http_request_seconds_total counter\n");
        for ((route, status), (_, secs)) in requests.iter() {
            let _ = writeln!(
                out,
                "tern_http_request_seconds_total{{route=\"{}\",status=\"{status}\"}} {secs}",
                escape(route)
            );
        }
        drop(requests);
        let h = self.instantiations.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP tern_instantiation_seconds Time to instantiate the handler for a request.\n");
        out.push_str("# TYPE tern_instantiation_seconds histogram\n");
        let mut cumulative = 0;
        for (i, bound) in INSTANTIATION_BOUNDS.iter().enumerate() {
            cumulative += h.counts[i];
            let _ = writeln!(out, "tern_instantiation_seconds_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "tern_instantiation_seconds_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "tern_instantiation_seconds_sum {}", h.sum);
        let _ = writeln!(out, "tern_instantiation_seconds_count {}", h.count);
        drop(h);
        let counters = [
            ("tern_instances_reused_total", "Requests answered by a reused instance.", get(&self.reused)),
            ("tern_component_swaps_total", "Handler components swapped in.", get(&self.swaps)),
            ("tern_component_rejected_total", "Components that failed to compile or link.", get(&self.rejected)),
            ("tern_handler_traps_total", "Requests whose handler trapped or overran its deadline.", get(&self.traps)),
            (
                "tern_instances_exhausted_total",
                "Requests refused (503) with every handler instance taken.",
                get(&self.busy),
            ),
        ];
        for &(name, help, value) in counters.iter().chain(extra) {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let gauges = [
            ("tern_connections_open", "Open client connections.", get(&self.connections) as f64),
            ("tern_http_in_flight", "Requests being answered.", get(&self.in_flight) as f64),
            ("tern_process_resident_memory_bytes", "Resident memory of the process.", rss_bytes() as f64),
            ("tern_uptime_seconds", "Seconds since the process started.", uptime().as_secs_f64()),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

static STARTED: OnceLock<Instant> = OnceLock::new();

/// Marks the process start; the first call wins.
pub fn mark_start() {
    STARTED.get_or_init(Instant::now);
}

/// Time since [`mark_start`].
pub fn uptime() -> Duration {
    STARTED.get_or_init(Instant::now).elapsed()
}

/// Resident memory of this process (`VmRSS`), 0 where `/proc` is absent.
pub fn rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return 0 };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_past_the_limit_count_as_other() {
        let m = HostMetrics::default();
        for i in 0..MAX_ROUTES + 10 {
            m.request(&format!("/probe/{i}"), 404, Duration::from_millis(1));
        }
        m.request("/probe/0", 404, Duration::from_millis(1));
        let text = m.render(&[]);
        assert!(text.contains("tern_http_requests_total{route=\"other\",status=\"404\"} 10"), "{text}");
        assert!(text.contains("tern_http_requests_total{route=\"/probe/0\",status=\"404\"} 2"), "{text}");
    }

    #[test]
    fn the_resident_memory_is_measured() {
        let rss = rss_bytes();
        assert!(rss > 1 << 20, "VmRSS of a running test is more than 1 MiB, got {rss}");
    }
}

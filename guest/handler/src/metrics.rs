//! `GET /metrics`: the engine's status in the Prometheus text format
//! (version 0.0.4). It answers while the model loads too, with `tern_ready`
//! 0 and whatever the engine has counted, so scrapers see the start-up.

use std::fmt::Write as _;

use crate::backend::{EngineStatus, Histogram};
use crate::http::Response;

/// The exposition of `s`: gauges, counters and latency histograms, each
/// family with `# HELP` and `# TYPE`.
pub fn render(s: &EngineStatus) -> Response {
    let mut out = String::new();
    let ratio = if s.kv_blocks_total > 0 { f64::from(s.kv_blocks_used) / f64::from(s.kv_blocks_total) } else { 0.0 };
    let gauges: [(&str, &str, f64); 8] = [
        ("tern_ready", "1 once the model is loaded", f64::from(u8::from(s.ready))),
        ("tern_requests_running", "Generations decoding now", f64::from(s.running)),
        ("tern_requests_waiting", "Generations waiting in the queue", f64::from(s.waiting)),
        ("tern_requests_waiting_max", "Most generations allowed to wait", f64::from(s.max_waiting)),
        ("tern_kv_blocks_total", "KV cache blocks in the pool", f64::from(s.kv_blocks_total)),
        ("tern_kv_blocks_used", "KV cache blocks held by running generations", f64::from(s.kv_blocks_used)),
        ("tern_kv_blocks_cached", "KV cache blocks kept only for prefix reuse", f64::from(s.kv_blocks_cached)),
        ("tern_kv_cache_usage_ratio", "Share of KV blocks held by running generations", ratio),
    ];
    for (name, help, value) in gauges {
        family(&mut out, name, help, "gauge");
        let _ = writeln!(out, "{name} {}", number(value));
    }
    let counters: [(&str, &str, u64); 9] = [
        (
            "tern_prompt_tokens_total",
            "Prompt tokens run through the model (cached ones excluded)",
            s.prompt_tokens_total,
        ),
        ("tern_generated_tokens_total", "Tokens generated", s.generated_tokens_total),
        ("tern_requests_total", "Generations finished, for any reason", s.requests_total),
        ("tern_requests_cancelled_total", "Generations cancelled or past their deadline", s.cancelled_total),
        ("tern_requests_rejected_total", "Generations refused because the queue was full", s.rejected_total),
        ("tern_requests_preempted_total", "Running generations sent back to free KV blocks", s.preempted_total),
        ("tern_prefix_cache_hits_total", "Generations that reused cached prefix blocks", s.prefix_hits_total),
        ("tern_prefix_cache_tokens_total", "Prompt tokens taken from the prefix cache", s.cached_tokens_total),
        ("tern_steps_total", "Scheduler steps (one batched forward pass each)", s.steps_total),
    ];
    for (name, help, value) in counters {
        family(&mut out, name, help, "counter");
        let _ = writeln!(out, "{name} {value}");
    }
    let histograms = [
        ("tern_time_to_first_token_seconds", "Admission to the first generated token", &s.time_to_first_token),
        ("tern_inter_token_latency_seconds", "Between consecutive tokens of one generation", &s.inter_token_latency),
        ("tern_request_queue_time_seconds", "Admission to the start of prompt processing", &s.queue_time),
        ("tern_e2e_request_latency_seconds", "Admission to the end of the generation", &s.request_latency),
    ];
    for (name, help, h) in histograms {
        family(&mut out, name, help, "histogram");
        histogram(&mut out, name, h);
    }
    Response::text(200, "text/plain; version=0.0.4; charset=utf-8", out.into_bytes())
}

fn family(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}.");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Cumulative `_bucket` lines from the per-bucket counts, then `_sum` and
/// `_count`. Prometheus wants the `+Inf` bucket equal to `_count` and no
/// bucket below an earlier one; a status taken while an observation lands
/// might break that by one, so `+Inf` and `_count` take the larger of the
/// engine's count and the buckets' total.
fn histogram(out: &mut String, name: &str, h: &Histogram) {
    let mut cumulative = 0u64;
    for (i, bound) in h.bounds.iter().enumerate() {
        cumulative += h.counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {cumulative}", number(*bound));
    }
    let count = h.counts.iter().sum::<u64>().max(h.count);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", number(h.sum));
    let _ = writeln!(out, "{name}_count {count}");
}

/// A sample value as the text format spells it: Rust's shortest decimal,
/// and `+Inf`, `-Inf`, `NaN` where Rust would write `inf` or `NaN`.
fn number(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_string()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        x.to_string()
    }
}

//! The service's own routes: `GET /health`, `GET /metrics`,
//! `GET /openapi.json`, and the chat page at `GET /` with its files under
//! `GET /static/` (`page.rs`).
//!
//! `/metrics` reports the engine's and the handler's counters:
//!
//! - By default a JSON summary: `requests_total`, `generation_time_total_ms`,
//!   `errors_total`, `average_generation_time_ms`, the engine's load and the
//!   response cache.
//! - Prometheus text (version 0.0.4) when `Accept` asks for `text/plain` or
//!   OpenMetrics, as scrapers do, and always at `GET /metrics/prometheus`:
//!   tern's own families plus llama.cpp's and vLLM's names for the same
//!   figures, so their dashboards work unchanged.
//!
//! Both answer while the model loads too, with `tern_ready` 0 and whatever
//! the engine has counted, so scrapers see the start-up.

use std::fmt::Write as _;

use serde_json::json;

use crate::cache::{self, Stats};
use crate::engine_client::{EngineClient, EngineStatus, Histogram, ModelInfo};
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::page;

/// The OpenAPI 3.0 description of every route, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// `GET /` and `HEAD /`: the chat page for browsers, Ollama's liveness
/// answer for everything else ([`page::root`]).
pub fn root(req: &Request) -> Response {
    page::root(req)
}

/// `GET /static/{name}`: one of the chat page's files, or 404.
pub fn static_file(req: &Request, name: &str) -> Result<Response, ApiError> {
    page::static_file(req, name)
}

/// `GET /openapi.json`.
pub fn openapi() -> Response {
    Response::text(200, "application/json", OPENAPI.as_bytes().to_vec())
}

/// `GET /health`: 200 once the engine is ready (with the engine's load, the
/// server's uptime and its measured resident memory), llama.cpp's 503 before.
pub fn health(engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let s = engine.status();
    if s.ready {
        Ok(Response::json(
            200,
            &json!({
                "status": "ok",
                "running": s.running,
                "waiting": s.waiting,
                "max_waiting": s.max_waiting,
                "prompt_tokens_total": s.prompt_tokens_total,
                "generated_tokens_total": s.generated_tokens_total,
                "kv_blocks_total": s.kv_blocks_total,
                "kv_blocks_used": s.kv_blocks_used,
                "kv_blocks_cached": s.kv_blocks_cached,
                "uptime_s": s.uptime_ms as f64 / 1e3,
                "memory_bytes": s.rss_bytes,
            }),
        ))
    } else {
        Err(ApiError::Loading)
    }
}

// Metrics

/// Counter in [`cache::COUNTERS`] of responses with status 400 or more.
pub const ERRORS: &str = "errors";

/// `GET /metrics` and `GET /metrics/prometheus`.
pub fn metrics(req: &Request, engine: &dyn EngineClient) -> Response {
    let store = engine.store();
    let (status, stats, errors) = (engine.status(), cache::stats(store), cache::counter(store, ERRORS));
    let models = engine.list_models();
    if req.path == "/metrics/prometheus" || wants_text(req.header("accept")) {
        let mut out = exposition(&status);
        model_families(&mut out, &models);
        guest_families(&mut out, &stats, errors);
        text(out)
    } else {
        summary(&status, &stats, errors, &models)
    }
}

/// Whether an `Accept` header asks for the text exposition (Prometheus
/// sends `application/openmetrics-text` and `text/plain`).
fn wants_text(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        let a = a.to_ascii_lowercase();
        a.contains("text/plain") || a.contains("openmetrics")
    })
}

/// The JSON summary. Generation time is the engine's admission-to-end time
/// summed over finished generations; answers from the cache count as
/// requests but took no generation time.
fn summary(s: &EngineStatus, stats: &Stats, errors: u64, models: &[ModelInfo]) -> Response {
    let generation_time_total_ms = s.request_latency.sum * 1000.0;
    let generations = s.request_latency.count.max(s.requests_total);
    let average = if generations > 0 { generation_time_total_ms / generations as f64 } else { 0.0 };
    Response::json(
        200,
        &json!({
            "requests_total": s.requests_total + stats.hits,
            "generations_total": s.requests_total,
            "generation_time_total_ms": generation_time_total_ms,
            "average_generation_time_ms": average,
            "errors_total": errors,
            "ready": s.ready,
            "requests_running": s.running,
            "requests_waiting": s.waiting,
            "prompt_tokens_total": s.prompt_tokens_total,
            "generated_tokens_total": s.generated_tokens_total,
            "cancelled_total": s.cancelled_total,
            "rejected_total": s.rejected_total,
            "kv_cache_usage_ratio": kv_ratio(s),
            "cache": stats.json(),
            "models": models.iter().map(|m| json!({
                "id": m.id,
                "device": m.device,
                "device_memory_bytes": m.device_memory_bytes,
            })).collect::<Vec<_>>(),
        }),
    )
}

/// `tern_model_info{model, device} 1` and the bytes each model holds in a
/// GPU's memory.
fn model_families(out: &mut String, models: &[ModelInfo]) {
    out.push_str("# HELP tern_model_info The served models and what runs them\n# TYPE tern_model_info gauge\n");
    for m in models {
        let _ = writeln!(out, "tern_model_info{{model=\"{}\",device=\"{}\"}} 1", label(&m.id), label(&m.device));
    }
    out.push_str(
        "# HELP tern_model_device_memory_bytes Bytes of weights and KV memory a model holds in a GPU's memory\n\
         # TYPE tern_model_device_memory_bytes gauge\n",
    );
    for m in models {
        let _ = writeln!(out, "tern_model_device_memory_bytes{{model=\"{}\"}} {}", label(&m.id), m.device_memory_bytes);
    }
}

/// A Prometheus label value: backslashes, quotes and newlines escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn kv_ratio(s: &EngineStatus) -> f64 {
    if s.kv_blocks_total > 0 {
        f64::from(s.kv_blocks_used) / f64::from(s.kv_blocks_total)
    } else {
        0.0
    }
}

fn text(out: String) -> Response {
    Response::text(200, "text/plain; version=0.0.4; charset=utf-8", out.into_bytes())
}

/// The engine's gauges, counters and latency histograms, each family with
/// `# HELP` and `# TYPE`, tern's names first and then llama.cpp's and vLLM's.
pub fn exposition(s: &EngineStatus) -> String {
    let mut out = String::new();
    let ratio = kv_ratio(s);
    let gauges: [(&str, &str, f64); 13] = [
        ("tern_ready", "1 once the model is loaded", f64::from(u8::from(s.ready))),
        ("tern_requests_running", "Generations decoding now", f64::from(s.running)),
        ("tern_requests_waiting", "Generations waiting in the queue", f64::from(s.waiting)),
        ("tern_requests_waiting_max", "Most generations allowed to wait", f64::from(s.max_waiting)),
        ("tern_kv_blocks_total", "KV cache blocks in the pool", f64::from(s.kv_blocks_total)),
        ("tern_kv_blocks_used", "KV cache blocks held by running generations", f64::from(s.kv_blocks_used)),
        ("tern_kv_blocks_cached", "KV cache blocks kept only for prefix reuse", f64::from(s.kv_blocks_cached)),
        ("tern_kv_cache_usage_ratio", "Share of KV blocks held by running generations", ratio),
        ("llamacpp:requests_processing", "Requests processing", f64::from(s.running)),
        ("llamacpp:requests_deferred", "Requests deferred", f64::from(s.waiting)),
        ("llamacpp:kv_cache_usage_ratio", "KV-cache usage, 1 means 100 percent usage", ratio),
        ("vllm:num_requests_running", "Number of requests in model execution batches", f64::from(s.running)),
        ("vllm:num_requests_waiting", "Number of requests waiting to be processed", f64::from(s.waiting)),
    ];
    let gauges = gauges.map(|(name, help, value)| (name, help, number(value)));
    scalars(&mut out, "gauge", &gauges);
    let counters: [(&str, &str, u64); 12] = [
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
        ("llamacpp:prompt_tokens_total", "Number of prompt tokens processed", s.prompt_tokens_total),
        ("llamacpp:tokens_predicted_total", "Number of generation tokens processed", s.generated_tokens_total),
        (
            "vllm:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens",
            s.cached_tokens_total,
        ),
    ];
    scalars(&mut out, "counter", &counters);
    let histograms = [
        ("tern_time_to_first_token_seconds", "Admission to the first generated token", &s.time_to_first_token),
        ("tern_inter_token_latency_seconds", "Between consecutive tokens of one generation", &s.inter_token_latency),
        ("tern_request_queue_time_seconds", "Admission to the start of prompt processing", &s.queue_time),
        ("tern_e2e_request_latency_seconds", "Admission to the end of the generation", &s.request_latency),
        ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds", &s.time_to_first_token),
        ("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds", &s.inter_token_latency),
        ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds", &s.request_latency),
        ("vllm:request_queue_time_seconds", "Histogram of time spent waiting in the queue", &s.queue_time),
    ];
    for (name, help, h) in histograms {
        family(&mut out, name, help, "histogram");
        histogram(&mut out, name, h);
    }
    out
}

/// The handler's own families: response cache and error responses.
fn guest_families(out: &mut String, stats: &Stats, errors: u64) {
    let counters: [(&str, &str, u64); 6] = [
        ("tern_response_cache_hits_total", "Requests answered from the response cache", stats.hits),
        ("tern_response_cache_misses_total", "Cacheable requests the response cache did not hold", stats.misses),
        ("tern_response_cache_stores_total", "Answers stored in the response cache", stats.stores),
        (
            "tern_response_cache_invalidations_total",
            "Cached answers removed by expiry, invalidation or clearing",
            stats.invalidations,
        ),
        (
            "tern_response_cache_evictions_total",
            "Cached answers evicted to stay under the byte limit",
            stats.usage.evictions,
        ),
        ("tern_http_errors_total", "Responses with a status of 400 or more", errors),
    ];
    scalars(out, "counter", &counters);
    let gauges: [(&str, &str, u64); 3] = [
        ("tern_response_cache_entries", "Answers in the response cache", stats.usage.entries),
        ("tern_response_cache_bytes", "Bytes of keys and answers in the response cache", stats.usage.bytes),
        ("tern_response_cache_max_bytes", "Most bytes the response cache keeps", stats.usage.max_bytes),
    ];
    scalars(out, "gauge", &gauges);
}

/// One single-sample family per `(name, help, value)`.
fn scalars<T: std::fmt::Display>(out: &mut String, kind: &str, families: &[(&str, &str, T)]) {
    for (name, help, value) in families {
        family(out, name, help, kind);
        let _ = writeln!(out, "{name} {value}");
    }
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

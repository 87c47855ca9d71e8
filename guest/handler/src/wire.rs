//! What several APIs write the same way: finish reasons, usage and
//! timings, ids, clocks and times, and the framing of server-sent events and
//! NDJSON lines.

use std::hash::{BuildHasher, RandomState};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::engine_client::{FinishReason, Usage};

/// Version stamped on every response as `x-tern-handler`, so a client can tell
/// which handler component served it across hot swaps.
pub const HANDLER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// OpenAI's name for why a generation ended (`timeout` and `cancelled` are
/// tern's own: a deadline passed, or a job was cancelled).
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::Timeout => "timeout",
    }
}

/// OpenAI's usage object.
pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens),
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

/// llama.cpp server's `timings` object.
pub fn timings_json(usage: &Usage) -> Value {
    let per_second = |n: u32, ms: f64| if ms > 0.0 { f64::from(n) * 1000.0 / ms } else { 0.0 };
    let prompt_n = usage.prompt_tokens.saturating_sub(usage.cached_tokens);
    json!({
        "prompt_n": prompt_n,
        "prompt_ms": usage.prompt_ms,
        "prompt_per_second": per_second(prompt_n, usage.prompt_ms),
        "predicted_n": usage.completion_tokens,
        "predicted_ms": usage.generation_ms,
        "predicted_per_second": per_second(usage.completion_tokens, usage.generation_ms),
        "cache_n": usage.cached_tokens,
    })
}

/// Milliseconds from admission to the end of a generation by the engine's
/// own clock: queueing, prompt and generation together.
pub fn engine_ms(usage: &Usage) -> f64 {
    usage.queue_ms + usage.prompt_ms + usage.generation_ms
}

/// A fresh id such as `chatcmpl-…` or `cmpl-…`.
pub fn completion_id(prefix: &str) -> String {
    format!("{prefix}-{}", unique_hex())
}

/// 32 hex digits, unique, not secret. std seeds `RandomState` from the wasi
/// random source, so two instances never share them.
pub fn unique_hex() -> String {
    let state = RandomState::new();
    let high = state.hash_one(SystemTime::now());
    let low = state.hash_one(high);
    format!("{high:016x}{low:016x}")
}

/// Seconds since the Unix epoch by the wall clock (wasi:clocks in a component).
pub fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The wall clock now (wasi:clocks in a component) as RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

/// `secs` and `nanos` since the Unix epoch as RFC 3339 in UTC, to the
/// microsecond (`2023-11-14T22:13:20.000123Z`), or to the second when
/// `nanos` is 0. Microseconds, not nanoseconds: some clients' date parsers
/// stop at six fractional digits.
pub fn rfc3339(secs: u64, nanos: u32) -> String {
    let (year, month, day) = civil_date(secs / 86_400);
    let second_of_day = secs % 86_400;
    let (hour, minute, second) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
    let fraction = if nanos == 0 { String::new() } else { format!(".{:06}", nanos / 1000) };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

/// The proleptic Gregorian (year, month, day) of a day count since
/// 1970-01-01, by Howard Hinnant's `civil_from_days`: eras of 400 years,
/// with years starting in March so the leap day falls last.
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// One server-sent event carrying `value` as its data.
pub fn sse_data(value: impl Into<Value>) -> Vec<u8> {
    format!("data: {}\n\n", value.into()).into_bytes()
}

/// One server-sent event named `event` carrying `value` as its data (the
/// Anthropic and Responses APIs name their events).
pub fn sse_event(event: &str, value: &Value) -> Vec<u8> {
    format!("event: {event}\ndata: {value}\n\n").into_bytes()
}

/// One NDJSON line carrying `value`.
pub fn ndjson_line(value: &Value) -> Vec<u8> {
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    line
}

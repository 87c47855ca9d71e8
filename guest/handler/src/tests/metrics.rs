//! `/metrics`: the JSON summary and the Prometheus exposition.

use super::script::*;

// Metrics

fn metrics_text(script: &Script) -> String {
    let response = route(&Request::new("GET", "/metrics/prometheus"), script);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let Body::Full(bytes) = response.body else { panic!("streamed metrics") };
    String::from_utf8(bytes).expect("metrics are UTF-8")
}

/// The value of the sample line starting with `series ` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap_or_else(|_| panic!("not a number: {line}"))
}

/// Checks the exposition the way a scraper would: every family declared
/// once with help and type, every sample in a declared family, every value
/// a number, and histograms with non-decreasing buckets ending in `+Inf`
/// equal to `_count`.
pub(crate) fn assert_valid_exposition(text: &str) {
    let mut helps = std::collections::HashSet::new();
    let mut types = std::collections::HashMap::new();
    for line in text.lines() {
        let words: Vec<&str> = line.splitn(4, ' ').collect();
        match words.as_slice() {
            ["#", "HELP", name, _] => assert!(helps.insert(name.to_string()), "HELP twice: {name}"),
            ["#", "TYPE", name, kind] => {
                assert!(helps.contains(*name), "TYPE before HELP: {name}");
                assert!(["gauge", "counter", "histogram"].contains(kind), "{line}");
                assert!(types.insert(name.to_string(), kind.to_string()).is_none(), "TYPE twice: {name}");
            }
            _ => {
                assert!(!line.starts_with('#'), "stray comment: {line}");
                let series = line.rsplit_once(' ').expect("name and value").0;
                let value = line.rsplit(' ').next().unwrap();
                assert!(value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value), "{line}");
                let name = series.split('{').next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        name.strip_suffix(suffix).filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                    })
                    .unwrap_or(name);
                assert!(types.contains_key(family), "sample of an undeclared family: {line}");
            }
        }
    }
    for (family, _) in types.iter().filter(|(_, kind)| *kind == "histogram") {
        let buckets: Vec<(String, f64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{family}_bucket{{le=\"")))
            .map(|rest| {
                let (le, value) = rest.split_once("\"} ").expect("bucket line");
                (le.to_string(), value.parse().expect("bucket count"))
            })
            .collect();
        assert_eq!(buckets.last().map(|(le, _)| le.as_str()), Some("+Inf"), "{family} ends with +Inf");
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{family} buckets are cumulative: {buckets:?}");
        let bounds: Vec<f64> = buckets[..buckets.len() - 1].iter().map(|(le, _)| le.parse().unwrap()).collect();
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{family} bounds ascend");
        assert_eq!(buckets.last().unwrap().1, sample(text, &format!("{family}_count")), "{family}: +Inf is _count");
        sample(text, &format!("{family}_sum"));
    }
}

#[test]
fn metrics_are_prometheus_text_with_cumulative_buckets() {
    let script = Script::saying(&[], FinishReason::Stop);
    let text = metrics_text(&script);
    for line in [
        "# TYPE tern_ready gauge",
        "tern_ready 1",
        "# TYPE tern_requests_running gauge",
        "tern_requests_running 1",
        "tern_requests_waiting 2",
        "tern_kv_blocks_total 200",
        "tern_kv_blocks_used 50",
        "tern_kv_blocks_cached 10",
        "tern_kv_cache_usage_ratio 0.25",
        "# TYPE tern_prompt_tokens_total counter",
        "tern_prompt_tokens_total 100",
        "tern_generated_tokens_total 50",
        "tern_requests_total 4",
        "tern_requests_cancelled_total 1",
        "tern_requests_rejected_total 0",
        "tern_requests_preempted_total 0",
        "tern_prefix_cache_hits_total 1",
        "# TYPE tern_prefix_cache_tokens_total counter",
        "tern_prefix_cache_tokens_total 32",
        "tern_steps_total 40",
        "# TYPE tern_time_to_first_token_seconds histogram",
        "tern_time_to_first_token_seconds_bucket{le=\"0.1\"} 2",
        "tern_time_to_first_token_seconds_bucket{le=\"1\"} 3",
        "tern_time_to_first_token_seconds_bucket{le=\"+Inf\"} 4",
        "tern_time_to_first_token_seconds_sum 3.5",
        "tern_time_to_first_token_seconds_count 4",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    for family in [
        "tern_time_to_first_token_seconds",
        "tern_inter_token_latency_seconds",
        "tern_request_queue_time_seconds",
        "tern_e2e_request_latency_seconds",
    ] {
        assert!(text.contains(&format!("# HELP {family} ")), "{family}");
        assert!(text.contains(&format!("# TYPE {family} histogram\n")), "{family}");
    }
    assert_valid_exposition(&text);
}

#[test]
fn metrics_answer_while_loading_with_ready_zero() {
    let mut script = Script::new(Vec::new());
    script.ready = false;
    let text = metrics_text(&script);
    assert_eq!(sample(&text, "tern_ready"), 0.0);
    assert_eq!(sample(&text, "tern_requests_running"), 1.0);
    assert_valid_exposition(&text);
}

#[test]
fn metrics_histogram_keeps_inf_equal_to_count_when_the_engine_disagrees() {
    use crate::engine_client::EngineStatus;
    let mut status: EngineStatus = Script::new(Vec::new()).status();
    // Counts one short of the bounds, and a count ahead of the buckets: a
    // snapshot taken while an observation landed.
    status.time_to_first_token = Histogram { bounds: vec![0.5, 2.0], counts: vec![1], sum: 0.75, count: 3 };
    // Buckets ahead of the count.
    status.inter_token_latency = Histogram { bounds: vec![0.01], counts: vec![4, 2], sum: 0.1, count: 5 };
    // Nothing observed yet.
    status.queue_time = Histogram { bounds: vec![0.1, 1.0], counts: vec![0, 0, 0], sum: 0.0, count: 0 };
    let text = crate::routes::service::exposition(&status);
    assert_valid_exposition(&text);
    assert_eq!(sample(&text, "tern_time_to_first_token_seconds_bucket{le=\"2\"}"), 1.0);
    assert_eq!(sample(&text, "tern_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), 3.0);
    assert_eq!(sample(&text, "tern_inter_token_latency_seconds_bucket{le=\"0.01\"}"), 4.0);
    assert_eq!(sample(&text, "tern_inter_token_latency_seconds_count"), 6.0);
    assert_eq!(sample(&text, "tern_request_queue_time_seconds_bucket{le=\"+Inf\"}"), 0.0);
    assert_eq!(text.matches("tern_inter_token_latency_seconds_bucket{le=\"+Inf\"}").count(), 1);
}

#[test]
fn metrics_ratio_is_zero_without_a_kv_pool() {
    let mut status = Script::new(Vec::new()).status();
    status.kv_blocks_total = 0;
    status.kv_blocks_used = 0;
    assert_eq!(sample(&crate::routes::service::exposition(&status), "tern_kv_cache_usage_ratio"), 0.0);
}

#[test]
fn metrics_accept_only_get() {
    let script = Script::new(Vec::new());
    let response = route(&Request::new("POST", "/metrics"), &script);
    assert_eq!(response.header("allow"), Some("GET"));
    assert_openai_error(response, 405);
}

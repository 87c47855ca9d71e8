//! The response cache, `/api/chat-optimized`, `/api/cache-stats` and the
//! negotiated `/metrics`.

use super::script::*;
use crate::cache::{self, RESPONSES};
use crate::engine_client::Constraint;

fn greedy(extra: Value) -> Request {
    let mut body = hello(json!({"temperature": 0}));
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    chat(body)
}

fn starts(script: &Script) -> usize {
    script.log().iter().filter(|&&e| e == "start").count()
}

fn stats(script: &Script) -> Value {
    let response = route(&Request::new("GET", "/api/cache-stats"), script);
    assert_eq!(response.status, 200);
    json_of(response)
}

fn stored_keys(script: &Script) -> Vec<String> {
    script.store.keys(RESPONSES)
}

fn optimized(body: Value) -> Request {
    post("/api/chat-optimized", &body)
}

/// The server-sent events of a streamed response, however they were split
/// into pieces.
fn events(response: Response) -> Vec<String> {
    frames(response).concat().split_inclusive("\n\n").map(String::from).collect()
}

fn with_auth(mut req: Request, token: &str) -> Request {
    req.headers.push(("authorization".into(), format!("Bearer {token}")));
    req
}

#[test]
fn greedy_chat_misses_then_hits_without_the_engine() {
    let script = Script::saying(&["Hel", "lo"], FinishReason::Stop);
    let first = route(&greedy(json!({})), &script);
    assert_eq!(first.header("x-cache"), Some("miss"));
    let first = json_of(first);
    assert_eq!(first["cached"], false);
    assert_eq!(starts(&script), 1);

    let second = route(&greedy(json!({})), &script);
    assert_eq!(second.header("x-cache"), Some("hit"));
    let second = json_of(second);
    assert_eq!(starts(&script), 1, "a hit never starts a generation");
    assert_eq!(second["cached"], true);
    assert_eq!(second["choices"][0]["message"]["content"], "Hello");
    assert_eq!(second["choices"][0]["message"], first["choices"][0]["message"]);
    assert_eq!(second["choices"][0]["finish_reason"], "stop");
    assert_eq!(second["usage"], first["usage"], "usage reports the original counts");
    assert_eq!(second["usage"]["prompt_tokens"], 7);
    assert_eq!(second["usage"]["completion_tokens"], 2);
    assert_ne!(second["id"], first["id"]);

    let s = stats(&script);
    assert_eq!((s["hits"].as_u64(), s["misses"].as_u64(), s["stores"].as_u64()), (Some(1), Some(1), Some(1)));
    assert_eq!(s["hit_rate"], 0.5);
    assert_eq!(s["entries"], 1);
    assert!(s["bytes"].as_u64().unwrap() > 0);
}

#[test]
fn streamed_hit_frames_like_a_fresh_answer() {
    let script = Script::saying(&["Hel", "lo"], FinishReason::Length);
    let request = || greedy(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let fresh = route(&request(), &script);
    assert_eq!(fresh.header("x-cache"), Some("miss"));
    let fresh = events(fresh);
    assert_eq!(stored_keys(&script).len(), 1, "a stream read to its end is stored");

    let hit = route(&request(), &script);
    assert_eq!(hit.header("x-cache"), Some("hit"));
    assert_eq!(hit.header("content-type"), Some("text/event-stream"));
    let hit = frames(hit);
    assert_eq!(hit.len(), 1, "a hit is written at once");
    let hit: Vec<String> = hit[0].split_inclusive("\n\n").map(String::from).collect();
    assert_eq!(starts(&script), 1);
    assert_eq!(hit.last().map(String::as_str), Some("data: [DONE]\n\n"));
    let chunks: Vec<Value> = hit[..hit.len() - 1].iter().map(|f| frame_json(f)).collect();
    assert!(chunks.iter().all(|c| c["cached"] == true && c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, "Hello");
    let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("length"));
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 2);
    // The fresh stream said the same, over more chunks.
    let fresh_usage = frame_json(&fresh[fresh.len() - 2])["usage"].clone();
    assert_eq!(*usage, fresh_usage);
    assert!(fresh[..fresh.len() - 1].iter().all(|f| frame_json(f)["cached"] == false));
}

#[test]
fn key_covers_every_parameter_and_the_rendered_prompt() {
    let base = SamplingParams {
        max_tokens: 16,
        temperature: 0.0,
        top_k: 40,
        top_p: 0.9,
        min_p: 0.05,
        repeat_penalty: 1.1,
        repeat_last_n: 64,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        seed: None,
        stop: vec!["ab".into()],
        ignore_eos: false,
        logprobs: None,
        constraint: None,
        timeout_ms: None,
        priority: Priority::Interactive,
    };
    let key = |p: &SamplingParams| cache::key("chat", MODEL, "<user>Hi<assistant>", p, None);
    let k0 = key(&base);
    type Change = fn(&mut SamplingParams);
    let variants: [(&str, Change); 17] = [
        ("max_tokens", |p| p.max_tokens = 17),
        ("temperature", |p| p.temperature = 0.5),
        ("top_k", |p| p.top_k = 41),
        ("top_p", |p| p.top_p = 0.95),
        ("min_p", |p| p.min_p = 0.0),
        ("repeat_penalty", |p| p.repeat_penalty = 1.2),
        ("repeat_last_n", |p| p.repeat_last_n = 0),
        ("presence_penalty", |p| p.presence_penalty = 0.5),
        ("frequency_penalty", |p| p.frequency_penalty = 0.5),
        ("seed", |p| p.seed = Some(0)),
        ("stop split", |p| p.stop = vec!["a".into(), "b".into()]),
        ("stop none", |p| p.stop.clear()),
        ("ignore_eos", |p| p.ignore_eos = true),
        ("json object", |p| p.constraint = Some(Constraint::JsonObject)),
        ("json schema", |p| p.constraint = Some(Constraint::JsonSchema("{}".into()))),
        ("another schema", |p| p.constraint = Some(Constraint::JsonSchema("{\"type\":\"object\"}".into()))),
        ("grammar", |p| p.constraint = Some(Constraint::Gbnf("{}".into()))),
    ];
    let mut seen = std::collections::HashSet::from([k0.clone()]);
    for (name, change) in &variants {
        let mut p = base.clone();
        change(&mut p);
        assert!(seen.insert(key(&p)), "{name} must change the key");
    }
    // When an answer comes does not change what it says.
    let mut later = base.clone();
    later.priority = Priority::Batch;
    later.timeout_ms = Some(5);
    assert_eq!(key(&later), k0);

    let other = [
        cache::key("generate", MODEL, "<user>Hi<assistant>", &base, None),
        cache::key("chat", "other-model", "<user>Hi<assistant>", &base, None),
        cache::key("chat", MODEL, "<user>Hi!<assistant>", &base, None),
        cache::key("chat", MODEL, "<user>Hi<assistant>", &base, Some("Bearer a")),
        cache::key("chat", MODEL, "<user>Hi<assistant>", &base, Some("Bearer b")),
    ];
    for k in other {
        assert!(seen.insert(k.clone()), "{k} collides");
    }
    assert!(k0.starts_with("chat:") && k0.len() == "chat:".len() + 64, "{k0}");
}

#[test]
fn different_prompts_parameters_or_tenants_never_share_an_answer() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    let mut requests = vec![
        greedy(json!({})),
        greedy(json!({"messages": [{"role": "user", "content": "Hi!"}]})),
        // Same text, different turns: the rendered prompt differs.
        greedy(json!({"messages": [{"role": "system", "content": "Hi"}]})),
        greedy(json!({"max_tokens": 5})),
        greedy(json!({"stop": ["."]})),
        greedy(json!({"top_k": 3})),
        with_auth(greedy(json!({})), "tenant-a"),
        with_auth(greedy(json!({})), "tenant-b"),
    ];
    for (i, request) in requests.drain(..).enumerate() {
        let response = route(&request, &script);
        assert_eq!(response.header("x-cache"), Some("miss"), "request {i}");
    }
    assert_eq!(starts(&script), 8);
    let again = route(&with_auth(greedy(json!({})), "tenant-b"), &script);
    assert_eq!(again.header("x-cache"), Some("hit"));
}

#[test]
fn sampled_requests_bypass_the_cache_unless_opted_in() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    for _ in 0..2 {
        let response = route(&chat(hello(json!({"temperature": 0.7}))), &script);
        assert_eq!(response.header("x-cache"), None);
        assert!(json_of(response).get("cached").is_none());
    }
    assert!(stored_keys(&script).is_empty());
    assert_eq!(stats(&script)["misses"], 0, "a bypass is not a lookup");

    let opted_in = || chat(hello(json!({"temperature": 0.7, "use_cache": true})));
    assert_eq!(route(&opted_in(), &script).header("x-cache"), Some("miss"));
    assert_eq!(route(&opted_in(), &script).header("x-cache"), Some("hit"));

    let seeded = || chat(hello(json!({"temperature": 0.7, "seed": 42})));
    assert_eq!(route(&seeded(), &script).header("x-cache"), Some("miss"));
    assert_eq!(route(&seeded(), &script).header("x-cache"), Some("hit"));

    // `use_cache: false` bypasses even a stored, deterministic answer.
    route(&greedy(json!({})), &script);
    let before = starts(&script);
    let refused = route(&greedy(json!({"use_cache": false})), &script);
    assert_eq!(refused.header("x-cache"), None);
    assert_eq!(starts(&script), before + 1);

    assert_openai_error(route(&greedy(json!({"use_cache": "yes"})), &script), 400);
}

#[test]
fn expired_entries_are_deleted_and_count_as_misses() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    route(&greedy(json!({})), &script);
    let key = stored_keys(&script).pop().expect("stored");
    // Age the entry past any time to live.
    let mut entry: Value = serde_json::from_slice(&script.store.get(RESPONSES, &key).unwrap()).unwrap();
    let ttl_ms = cache::ttl_seconds() * 1000;
    entry["created_ms"] = Value::from(entry["created_ms"].as_u64().unwrap() - ttl_ms);
    script.store.set(RESPONSES, &key, entry.to_string().as_bytes()).unwrap();

    let response = route(&greedy(json!({})), &script);
    assert_eq!(response.header("x-cache"), Some("miss"));
    assert_eq!(starts(&script), 2, "an expired answer is generated afresh");
    let s = stats(&script);
    assert_eq!((s["hits"].as_u64(), s["misses"].as_u64()), (Some(0), Some(2)));
    assert_eq!(s["invalidations"], 1);
    assert_eq!(s["stores"], 2, "the fresh answer replaces it");
    assert_eq!(route(&greedy(json!({})), &script).header("x-cache"), Some("hit"));

    // An unreadable entry is treated the same way.
    script.store.set(RESPONSES, &key, b"not json").unwrap();
    assert_eq!(route(&greedy(json!({})), &script).header("x-cache"), Some("miss"));
}

#[test]
fn time_to_live_comes_from_tern_cache_ttl() {
    assert_eq!(cache::ttl_from(None), cache::DEFAULT_TTL_SECONDS);
    assert_eq!(cache::ttl_from(Some("1")), 1);
    assert_eq!(cache::ttl_from(Some(" 90 ")), 90);
    assert_eq!(cache::ttl_from(Some("soon")), cache::DEFAULT_TTL_SECONDS);
    assert_eq!(stats(&Script::new(Vec::new()))["ttl_seconds"], cache::ttl_seconds());
}

#[test]
fn a_stream_dropped_before_its_end_is_not_stored() {
    let script = Script::saying(&["a", "b", "c"], FinishReason::Stop);
    let response = route(&greedy(json!({"stream": true})), &script);
    let Body::Stream(mut events) = response.body else { panic!("a stream") };
    // Everything but `[DONE]`: the engine finished, the client did not.
    for _ in 0..5 {
        events.next().expect("an event");
    }
    drop(events);
    assert!(*script.dropped.borrow());
    assert!(stored_keys(&script).is_empty());
    assert_eq!(stats(&script)["stores"], 0);
}

#[test]
fn cancelled_timed_out_or_failed_answers_are_not_stored() {
    for reason in [FinishReason::Cancelled, FinishReason::Timeout] {
        let script = Script::saying(&["a"], reason);
        json_of(route(&greedy(json!({})), &script));
        events(route(&greedy(json!({"stream": true})), &script));
        assert!(stored_keys(&script).is_empty(), "{reason:?}");
    }
    let failing = Script::new(vec![Ok(Event::Text("a".into())), Err(Error::Internal("boom".into()))]);
    events(route(&greedy(json!({"stream": true})), &failing));
    assert_openai_error(route(&greedy(json!({})), &failing), 500);
    assert!(stored_keys(&failing).is_empty());
}

#[test]
fn cache_stats_lists_clears_and_invalidates() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    route(&greedy(json!({})), &script);
    route(&greedy(json!({"max_tokens": 3})), &script);
    let listed = json_of(route(&admin(Request::new("GET", "/api/cache-stats?keys=1")), &script));
    let keys: Vec<String> = serde_json::from_value(listed["keys"].clone()).unwrap();
    assert_eq!(keys.len(), 2);
    assert!(stats(&script).get("keys").is_none());

    let invalidate = json!({"action": "invalidate", "key": keys[0]});
    let done = json_of(route(&admin(post("/api/cache-stats", &invalidate)), &script));
    assert_eq!(done["deleted"], 1);
    let again = json_of(route(&admin(post("/api/cache-stats", &invalidate)), &script));
    assert_eq!(again["deleted"], 0);
    assert_eq!(stored_keys(&script), vec![keys[1].clone()]);

    let cleared = json_of(route(&admin(post("/api/cache-stats", &json!({"action": "clear"}))), &script));
    assert_eq!(cleared["deleted"], 1);
    let s = stats(&script);
    assert_eq!((s["entries"].as_u64(), s["invalidations"].as_u64()), (Some(0), Some(2)));
    assert_eq!(route(&greedy(json!({})), &script).header("x-cache"), Some("miss"));
}

/// `req` as tern's host passes on a request made with an admin key.
fn admin(req: Request) -> Request {
    req.with_header(cache::ROLE_HEADER, "admin")
}

#[test]
fn listing_invalidating_and_clearing_the_cache_need_an_admin_key() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    route(&greedy(json!({})), &script);
    let refused = [
        Request::new("GET", "/api/cache-stats?keys=1"),
        post("/api/cache-stats", &json!({"action": "clear"})),
        post("/api/cache-stats", &json!({"action": "clear"})).with_header(cache::ROLE_HEADER, "user"),
    ];
    for req in refused {
        let error = assert_openai_error(route(&req, &script), 403);
        assert!(error["message"].as_str().unwrap().contains("admin key"), "{error}");
    }
    assert_eq!(stored_keys(&script).len(), 1);
    // The figures themselves are anyone's.
    assert_eq!(stats(&script)["entries"], 1);
}

#[test]
fn tenants_named_by_the_host_or_by_their_credentials_never_share_an_answer() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    let as_tenant = |name: &str, value: &str| route(&greedy(json!({})).with_header(name, value), &script);
    assert_eq!(as_tenant(cache::IDENTITY_HEADER, "k1").header("x-cache"), Some("miss"));
    assert_eq!(as_tenant(cache::IDENTITY_HEADER, "k1").header("x-cache"), Some("hit"));
    for (name, value) in
        [(cache::IDENTITY_HEADER, "k2"), ("x-api-key", "k1"), ("authorization", "Bearer k1"), ("x-api-key", "k2")]
    {
        assert_eq!(as_tenant(name, value).header("x-cache"), Some("miss"), "{name}: {value}");
    }
}

#[test]
fn cache_stats_rejects_unknown_actions_and_missing_keys() {
    let script = Script::new(Vec::new());
    for body in [json!({"action": "flush"}), json!({"action": "invalidate"}), json!({}), json!({"action": 1})] {
        let error = assert_openai_error(route(&admin(post("/api/cache-stats", &body)), &script), 400);
        assert!(error["param"] == "action" || error["param"] == "key", "{error}");
    }
    assert_openai_error(route(&admin(Request::new("POST", "/api/cache-stats").with_body("{")), &script), 400);
    let response = route(&Request::new("DELETE", "/api/cache-stats"), &script);
    assert_eq!(response.header("allow"), Some("GET, POST"));
    assert_openai_error(response, 405);
}

#[test]
fn chat_optimized_streams_pieces_then_done_with_usage() {
    let script = Script::saying(&["Hel", "lo"], FinishReason::Stop);
    let response = route(&optimized(json!({"message": "Hi", "system_prompt": "Be brief.", "temperature": 0})), &script);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(response.header("x-cache"), Some("miss"));
    let events: Vec<Value> = events(response).iter().map(|f| frame_json(f)).collect();
    assert_eq!(events.len(), 3);
    let id = events[0]["request_id"].as_str().unwrap().to_string();
    assert!(id.starts_with("req-"));
    for (event, piece) in events.iter().zip(["Hel", "lo"]) {
        assert_eq!(*event, json!({"content": piece, "done": false, "request_id": id, "cached": false}));
    }
    let done = &events[2];
    assert_eq!((done["content"].as_str(), done["done"].as_bool()), (Some(""), Some(true)));
    assert_eq!(done["request_id"], id.as_str());
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["usage"]["completion_tokens"], 2);
    assert_eq!(done["timings"]["predicted_n"], 2);

    let started = script.started();
    assert_eq!(started.model, MODEL, "the first model answers by default");
    let Prompt::Chat(messages) = started.prompt else { panic!("a chat prompt") };
    let turns: Vec<(&str, &str)> = messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
    assert_eq!(turns, [("system", "Be brief."), ("user", "Hi")]);
    assert_eq!(started.params.temperature, 0.0);
}

#[test]
fn chat_optimized_caches_by_default_and_ids_are_unique() {
    let script = Script::saying(&["Hel", "lo"], FinishReason::Stop);
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "temperature": 0.7, "seed": 3});
    let first: Vec<Value> = events(route(&optimized(body.clone()), &script)).iter().map(|f| frame_json(f)).collect();
    let hit = route(&optimized(body.clone()), &script);
    assert_eq!(hit.header("x-cache"), Some("hit"));
    let second: Vec<Value> = events(hit).iter().map(|f| frame_json(f)).collect();
    assert_eq!(starts(&script), 1);
    assert!(second.iter().all(|e| e["cached"] == true));
    let text = |events: &[Value]| events.iter().filter_map(|e| e["content"].as_str()).collect::<String>();
    assert_eq!(text(&second), text(&first));
    assert_eq!(second.last().unwrap()["usage"], first.last().unwrap()["usage"]);
    assert_ne!(second[0]["request_id"], first[0]["request_id"]);

    let mut unsampled = body;
    unsampled["use_cache"] = json!(false);
    let bypass = route(&optimized(unsampled), &script);
    assert_eq!(bypass.header("x-cache"), None);
    assert!(events(bypass).iter().all(|f| frame_json(f)["cached"] == false));
    assert_eq!(starts(&script), 2);
}

#[test]
fn chat_optimized_errors_are_one_event() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    for (body, status) in [
        (json!({}), 400),
        (json!({"message": 3}), 400),
        (json!({"message": "Hi", "max_tokens": 0}), 400),
        (json!({"message": "Hi", "model": "nope"}), 404),
    ] {
        let response = route(&optimized(body.clone()), &script);
        assert_eq!(response.status, status, "{body}");
        let events = events(response);
        assert_eq!(events.len(), 1);
        let event = frame_json(&events[0]);
        assert!(event["error"].as_str().is_some_and(|e| !e.is_empty()), "{event}");
        assert_eq!(event["done"], true);
        assert!(event["request_id"].as_str().unwrap().starts_with("req-"));
    }
    let malformed = route(&Request::new("POST", "/api/chat-optimized").with_body("{"), &script);
    assert_eq!(malformed.status, 400);

    let failing = Script::new(vec![Ok(Event::Text("a".into())), Err(Error::Internal("boom".into()))]);
    let response = route(&optimized(json!({"message": "Hi"})), &failing);
    assert_eq!(response.status, 200);
    let events: Vec<Value> = events(response).iter().map(|f| frame_json(f)).collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["done"], true);
    assert!(events[1]["error"].is_string());
    assert!(stored_keys(&failing).is_empty());
}

#[test]
fn metrics_are_json_by_default_and_prometheus_on_request() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    route(&greedy(json!({})), &script);
    route(&greedy(json!({})), &script);
    assert_openai_error(route(&chat(json!({})), &script), 400);
    route(&Request::new("GET", "/nowhere"), &script);

    let response = route(&Request::new("GET", "/metrics"), &script);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let m = json_of(response);
    // The script's engine finished 4 generations; one more came from the cache.
    assert_eq!(m["requests_total"], 5);
    assert_eq!(m["errors_total"], 2);
    assert_eq!(m["generation_time_total_ms"], 3500.0);
    assert_eq!(m["average_generation_time_ms"], 875.0);
    assert_eq!(m["cache"]["hits"], 1);

    for accept in ["text/plain", "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"] {
        let mut req = Request::new("GET", "/metrics");
        req.headers.push(("accept".into(), accept.into()));
        let response = route(&req, &script);
        assert!(response.header("content-type").unwrap().starts_with("text/plain"), "{accept}");
    }
    let Body::Full(bytes) = route(&Request::new("GET", "/metrics/prometheus"), &script).body else {
        panic!("streamed metrics")
    };
    let text = String::from_utf8(bytes).unwrap();
    for line in [
        "llamacpp:prompt_tokens_total 100",
        "llamacpp:tokens_predicted_total 50",
        "llamacpp:requests_processing 1",
        "llamacpp:requests_deferred 2",
        "llamacpp:kv_cache_usage_ratio 0.25",
        "vllm:num_requests_running 1",
        "vllm:num_requests_waiting 2",
        "vllm:time_to_first_token_seconds_count 4",
        "vllm:inter_token_latency_seconds_count 4",
        "vllm:e2e_request_latency_seconds_sum 3.5",
        "vllm:request_queue_time_seconds_bucket{le=\"+Inf\"} 4",
        "vllm:prefix_cache_hits_total 32",
        "tern_response_cache_hits_total 1",
        "tern_response_cache_misses_total 1",
        "tern_response_cache_stores_total 1",
        "tern_response_cache_entries 1",
        "tern_http_errors_total 2",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
    }
    super::metrics::assert_valid_exposition(&text);
}

//! The project's original API: `/generate`, `/batch` and the detached jobs
//! of `/api/chat-queue`.

use super::script::*;

// The original /generate API

#[test]
fn generate_answers_with_text_timing_and_usage() {
    let script = Script::saying(&["Once", " upon"], FinishReason::Length);
    let response = route(&post("/generate", &json!({"prompt": "Tell me"})), &script);
    assert_eq!(response.status, 200);
    let body = json_of(response);
    assert_eq!(body["text"], "Once upon");
    assert_eq!(body["prompt"], "Tell me");
    assert_eq!(body["max_tokens"], 128);
    assert_eq!(body["generation_time_ms"], 20.0);
    assert_eq!(body["tokens_per_second"], 100.0);
    assert_eq!(body["finish_reason"], "length");
    assert_eq!(body["usage"], json!({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}));
    assert_eq!(body["prompt_tokens"], 7);
    assert_eq!(body["completion_tokens"], 2);
    assert_eq!(body["cached_tokens"], 3);

    let started = script.started();
    assert_eq!(started.model, MODEL, "the first model serves requests that name none");
    assert!(matches!(&started.prompt, Prompt::Text(t) if t == "Tell me"));
    assert_eq!(started.params.max_tokens, 128);
    assert_eq!(started.params.temperature, 0.7);
    assert_eq!(started.params.top_p, 0.9);
    assert_eq!(started.params.priority, Priority::Interactive);
}

#[test]
fn generate_validates_its_fields() {
    assert_eq!(param_error(post("/generate", &json!({})))["param"], "prompt");
    assert_eq!(param_error(post("/generate", &json!({"prompt": 1})))["param"], "prompt");
    let error = param_error(post("/generate", &json!({"prompt": "x", "max_tokens": 0})));
    assert_eq!(error["param"], "max_tokens");
    let error = param_error(post("/generate", &json!({"prompt": "x", "temperature": [1]})));
    assert_eq!(error["param"], "temperature");
}

#[test]
fn generate_context_overflow_names_the_prompt() {
    let overflow = Error::ContextOverflow(ContextOverflow { prompt_tokens: 9000, context_length: 2048 });
    let script = Script::refusing(overflow);
    let error = assert_openai_error(route(&post("/generate", &json!({"prompt": "x"})), &script), 400);
    assert_eq!(error["param"], "prompt");
    assert!(error["message"].as_str().unwrap().contains("2048"));
    assert!(error["message"].as_str().unwrap().contains("9000"));
}

#[test]
fn priority_is_interactive_by_default_and_validated() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    route(&chat(hello(json!({}))), &script);
    assert_eq!(script.started().params.priority, Priority::Interactive);
    route(&chat(hello(json!({"priority": "batch"}))), &script);
    assert_eq!(script.started().params.priority, Priority::Batch);
    assert_eq!(param_error(chat(hello(json!({"priority": "urgent"}))))["param"], "priority");
    assert_eq!(param_error(post("/generate", &json!({"prompt": "x", "priority": 3})))["param"], "priority");
}

// Detached jobs: /api/chat-queue

fn job_request(extra: Value) -> Request {
    let mut body = json!({"messages": [{"role": "user", "content": "Hello"}]});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    post("/api/chat-queue", &body)
}

#[test]
fn chat_queue_submit_is_202_with_id_and_place() {
    let script = Script::saying(&[], FinishReason::Stop);
    let response = route(&job_request(json!({"max_tokens": 5, "seed": 9, "stop": "\n", "timeout_ms": 60000})), &script);
    assert_eq!(response.status, 202);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let job = json_of(response);
    assert_eq!(
        job,
        json!({
            "id": job_id("job-1"),
            "model": MODEL,
            "status": "queued",
            "position": 3,
            "estimated_wait_ms": 1500,
            "created_at": 1_700_000_000u64,
            "prompt_tokens": 7,
            "text": "Once upon",
        })
    );
    let started = script.started();
    assert_eq!(started.model, MODEL, "the first model when none is named");
    assert!(matches!(&started.prompt, Prompt::Chat(m) if m.len() == 1 && m[0].content == "Hello"));
    let params = started.params;
    assert_eq!(params.priority, Priority::Batch, "jobs wait in the batch queue by default");
    assert_eq!(params.max_tokens, 5);
    assert_eq!(params.seed, Some(9));
    assert_eq!(params.stop, ["\n"]);
    assert_eq!(params.timeout_ms, Some(60000));
}

#[test]
fn chat_queue_submit_takes_a_named_model_and_priority() {
    let script = Script::saying(&[], FinishReason::Stop);
    let response = route(&job_request(json!({"model": MODEL, "priority": "interactive"})), &script);
    assert_eq!(response.status, 202);
    assert_eq!(script.started().params.priority, Priority::Interactive);
    let response = route(&job_request(json!({"model": null})), &script);
    assert_eq!(response.status, 202, "a null model is no model");
    assert_eq!(script.started().model, MODEL);
}

#[test]
fn chat_queue_submit_validates_like_chat_completions() {
    for (extra, param) in [
        (json!({"messages": []}), "messages"),
        (json!({"messages": [{"role": "robot", "content": "x"}]}), "messages[0].role"),
        (json!({"tools": [{"type": "function", "function": {"name": "f"}}]}), "tools"),
        (json!({"max_tokens": -1}), "max_tokens"),
        (json!({"temperature": 3}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"seed": "x"}), "seed"),
        (json!({"stop": ["a", 1]}), "stop[1]"),
        (json!({"timeout_ms": 0}), "timeout_ms"),
        (json!({"priority": "urgent"}), "priority"),
        (json!({"model": 7}), "model"),
        (json!({"stream": true}), "stream"),
    ] {
        let error = param_error(job_request(extra.clone()));
        assert_eq!(error["param"], param, "{extra}");
    }
    param_error(Request::new("POST", "/api/chat-queue").with_body("{"));
}

#[test]
fn chat_queue_submit_maps_engine_refusals() {
    let script = Script::saying(&[], FinishReason::Stop);
    let error = assert_openai_error(route(&job_request(json!({"model": "gpt-4o"})), &script), 404);
    assert_eq!(error["code"], "model_not_found");

    let script = Script::refusing(Error::Overloaded("jobs full".into()));
    let response = route(&job_request(json!({})), &script);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_openai_error(response, 429);

    let overflow = Error::ContextOverflow(ContextOverflow { prompt_tokens: 9000, context_length: 2048 });
    let error = assert_openai_error(route(&job_request(json!({})), &Script::refusing(overflow)), 400);
    assert_eq!(error["param"], "messages");
    assert_eq!(error["code"], "context_length_exceeded");
}

#[test]
fn chat_queue_status_reports_each_state() {
    let script = Script::saying(&[], FinishReason::Stop);
    let get = |id: &str| {
        let response = route(&Request::new("GET", &format!("/api/chat-queue/{id}")), &script);
        assert_eq!(response.status, 200);
        json_of(response)
    };

    let queued = get(&job_id("job-1"));
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["position"], 3);
    assert_eq!(queued["estimated_wait_ms"], 1500);
    assert!(queued.get("usage").is_none() && queued.get("finish_reason").is_none());

    let running = get(&job_id("job-running"));
    assert_eq!(running["status"], "running");
    assert_eq!(running["text"], "Once upon", "the text so far");
    assert!(running.get("position").is_none() && running.get("usage").is_none());

    let done = get(&job_id("job-done"));
    assert_eq!(
        done,
        json!({
            "id": job_id("job-done"),
            "model": MODEL,
            "status": "done",
            "created_at": 1_700_000_000u64,
            "prompt_tokens": 7,
            "text": "Once upon",
            "finish_reason": "stop",
            "usage": {
                "prompt_tokens": 7,
                "completion_tokens": 2,
                "total_tokens": 9,
                "prompt_tokens_details": {"cached_tokens": 3},
            },
        })
    );

    let failed = get(&job_id("job-failed"));
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["error"],
        json!({"message": "the engine fell over", "type": "server_error", "param": null, "code": null})
    );
}

#[test]
fn chat_queue_delete_cancels_and_reports_the_state() {
    let script = Script::saying(&[], FinishReason::Stop);
    let path = format!("/api/chat-queue/{}", job_id("job-running"));
    let response = route(&Request::new("DELETE", &path), &script);
    assert_eq!(response.status, 200);
    let job = json_of(response);
    assert_eq!(job["id"], job_id("job-running"));
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["text"], "Once upon", "what was made before the cancel");
}

#[test]
fn chat_queue_unknown_id_is_404_not_found_error() {
    let script = Script::saying(&[], FinishReason::Stop);
    for method in ["GET", "DELETE"] {
        let error = assert_openai_error(route(&Request::new(method, "/api/chat-queue/job-nope"), &script), 404);
        assert_eq!(error["type"], "not_found_error");
        assert_eq!(error["code"], "job_not_found");
        assert!(error["message"].as_str().unwrap().contains("job-nope"));
    }
}

#[test]
fn another_tenants_job_or_a_bare_engine_id_is_404() {
    let script = Script::saying(&[], FinishReason::Stop);
    let as_k1 = |req: Request| req.with_header(crate::cache::IDENTITY_HEADER, "k1");
    let submitted = json_of(route(&as_k1(job_request(json!({}))), &script));
    let id = submitted["id"].as_str().unwrap().to_string();
    let path = format!("/api/chat-queue/{id}");
    assert_eq!(route(&as_k1(Request::new("GET", &path)), &script).status, 200);
    for method in ["GET", "DELETE"] {
        let others = [
            Request::new(method, &path).with_header(crate::cache::IDENTITY_HEADER, "k2"),
            Request::new(method, &path),
            Request::new(method, &path).with_header("authorization", "Bearer k1"),
            as_k1(Request::new(method, "/api/chat-queue/job-1")),
            as_k1(Request::new(method, &format!("/api/chat-queue?requestId={}", job_id("job-1")))),
        ];
        for req in others {
            assert_openai_error(route(&req, &script), 404);
        }
    }
    assert_eq!(json_of(route(&as_k1(Request::new("GET", &path)), &script))["status"], "queued", "nothing cancelled it");
}

#[test]
fn chat_queue_routes_check_methods_and_paths() {
    let script = Script::saying(&[], FinishReason::Stop);
    for method in ["PUT", "POST", "PATCH"] {
        let response = route(&Request::new(method, "/api/chat-queue/job-1"), &script);
        assert_eq!(response.header("allow"), Some("GET, DELETE"), "{method}");
        assert_openai_error(response, 405);
    }
    for method in ["PUT", "PATCH"] {
        let response = route(&Request::new(method, "/api/chat-queue"), &script);
        assert_eq!(response.header("allow"), Some("POST, GET, DELETE"), "{method}");
        assert_openai_error(response, 405);
    }
    for path in ["/api/chat-queue/", "/api/chat-queue/job-1/extra", "/api/chat-queue-x"] {
        let error = assert_openai_error(route(&Request::new("GET", path), &script), 404);
        assert_eq!(error["code"], "unknown_url", "{path}");
    }
    let response = route(&Request::new("GET", &format!("/api/chat-queue/{}?wait=1", job_id("job-done"))), &script);
    assert_eq!(response.status, 200, "a query string does not change the id");
    assert_eq!(response.header("x-tern-handler"), Some(HANDLER_VERSION));
}

// The seed API: /batch

#[test]
fn batch_starts_every_prompt_then_reports_each() {
    let script = Script::saying(&["Once", " upon"], FinishReason::Length);
    let response = route(&post("/batch", &json!({"prompts": ["a", "b", "c"], "max_tokens": 2})), &script);
    assert_eq!(response.status, 200);
    let body = json_of(response);
    assert_eq!(body["batch_size"], 3);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (i, prompt) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(
            results[i],
            json!({
                "index": i,
                "prompt": prompt,
                "text": "Once upon",
                "finish_reason": "length",
                "prompt_tokens": 7,
                "completion_tokens": 2,
                "cached_tokens": 3,
            })
        );
    }
    assert_eq!(body["total_time_ms"], 20.0, "the engine's clock, as /generate reports it");
    let log = script.log();
    assert_eq!(&log[..3], ["start", "start", "start"], "every prompt starts before any is read: {log:?}");
    assert_eq!(log.iter().filter(|&&e| e == "drop").count(), 3);
    let started = script.started();
    assert!(matches!(&started.prompt, Prompt::Text(t) if t == "c"));
    assert_eq!(started.model, MODEL);
    assert_eq!(started.params.priority, Priority::Batch);
    assert_eq!(started.params.max_tokens, 2);
}

#[test]
fn batch_shares_generate_defaults_and_ignores_priority() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    route(&post("/generate", &json!({"prompt": "x"})), &script);
    let generate = script.started().params;
    route(&post("/batch", &json!({"prompts": ["x"], "priority": "interactive"})), &script);
    let batch = script.started().params;
    assert_eq!(batch.priority, Priority::Batch);
    // Debug output covers every field; the generated type has no PartialEq.
    assert_eq!(format!("{:?}", SamplingParams { priority: Priority::Interactive, ..batch }), format!("{generate:?}"));

    route(&post("/batch", &json!({"prompts": ["x"], "temperature": 0, "top_p": 0.5, "model": MODEL})), &script);
    let params = script.started().params;
    assert_eq!((params.temperature, params.top_p), (0.0, 0.5));
}

#[test]
fn batch_validates_its_fields() {
    assert_eq!(param_error(post("/batch", &json!({})))["param"], "prompts");
    assert_eq!(param_error(post("/batch", &json!({"prompts": null})))["param"], "prompts");
    assert_eq!(param_error(post("/batch", &json!({"prompts": []})))["param"], "prompts");
    assert_eq!(param_error(post("/batch", &json!({"prompts": "x"})))["param"], "prompts");
    assert_eq!(param_error(post("/batch", &json!({"prompts": ["x", 2]})))["param"], "prompts[1]");
    assert_eq!(param_error(post("/batch", &json!({"prompts": ["x"], "max_tokens": 0})))["param"], "max_tokens");
    assert_eq!(param_error(post("/batch", &json!({"prompts": ["x"], "temperature": "0"})))["param"], "temperature");
    assert_eq!(param_error(post("/batch", &json!({"prompts": ["x"], "top_p": 2})))["param"], "top_p");
    assert_eq!(param_error(post("/batch", &json!({"prompts": ["x"], "model": 1})))["param"], "model");
    param_error(Request::new("POST", "/batch").with_body("[]"));
}

#[test]
fn batch_over_the_limit_is_400_naming_prompts() {
    // The default unless whoever runs the tests set TERN_MAX_BATCH.
    let limit = crate::params::batch_limit(std::env::var("TERN_MAX_BATCH").ok().as_deref());
    let many: Vec<String> = (0..=limit).map(|i| i.to_string()).collect();
    let error = param_error(post("/batch", &json!({"prompts": many})));
    assert_eq!(error["param"], "prompts");
    assert!(error["message"].as_str().unwrap().contains(&format!("between 1 and {limit}")), "{error}");
    let script = Script::saying(&["x"], FinishReason::Stop);
    let body = json_of(route(&post("/batch", &json!({"prompts": &many[..limit]})), &script));
    assert_eq!(body["batch_size"], limit);
}

#[test]
fn batch_limit_comes_from_tern_max_batch() {
    use crate::params::{batch_limit, DEFAULT_MAX_BATCH};
    assert_eq!(DEFAULT_MAX_BATCH, 32);
    assert_eq!(batch_limit(None), 32);
    assert_eq!(batch_limit(Some("4")), 4);
    assert_eq!(batch_limit(Some(" 128\n")), 128);
    for bad in ["0", "-3", "many", ""] {
        assert_eq!(batch_limit(Some(bad)), 32, "{bad:?} falls back to the default");
    }
}

#[test]
fn batch_refused_by_the_engine_is_429() {
    let script = Script::refusing(Error::Overloaded("full".into()));
    let response = route(&post("/batch", &json!({"prompts": ["a", "b"]})), &script);
    assert_eq!(response.status, 429);
    assert_eq!(response.header("retry-after"), Some("1"));
}

#[test]
fn batch_refused_midway_drops_the_prompts_already_started() {
    let script = Script::refusing_after(2, Error::Overloaded("full".into()));
    let response = route(&post("/batch", &json!({"prompts": ["a", "b", "c", "d"]})), &script);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_openai_error(response, 429);
    assert_eq!(script.log(), ["start", "start", "drop", "drop"], "started ones are cancelled, none read");
}

#[test]
fn batch_with_an_unknown_model_is_404() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    let error =
        assert_openai_error(route(&post("/batch", &json!({"prompts": ["a"], "model": "gpt-4o"})), &script), 404);
    assert_eq!(error["code"], "model_not_found");
}

#[test]
fn batch_engine_error_while_reading_fails_the_batch_and_drops_the_rest() {
    let script = Script::new(vec![Ok(Event::Text("partial".into())), Err(Error::Internal("decode failed".into()))]);
    let error = assert_openai_error(route(&post("/batch", &json!({"prompts": ["a", "b"]})), &script), 500);
    assert_eq!(error["message"], "decode failed");
    let log = script.log();
    assert_eq!(log.iter().filter(|&&e| e == "drop").count(), 2, "{log:?}");
}

#[test]
fn batch_accepts_only_post() {
    let script = Script::new(Vec::new());
    let response = route(&Request::new("GET", "/batch"), &script);
    assert_eq!(response.header("allow"), Some("POST"));
    assert_openai_error(response, 405);
}

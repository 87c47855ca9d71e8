//! Behaviour of the router, driven natively with a scripted backend
//! (`script.rs`). Each API family has its own file; this one holds routing,
//! chat completions, the plain APIs and the queue.

mod cache;
mod completions;
mod cors;
mod llamacpp;
mod ollama;
mod openapi;
mod page;
mod queue_query;
mod script;
mod spin;

use script::*;

// Routing

#[test]
fn unknown_route_is_404_json() {
    let script = Script::new(Vec::new());
    let error = assert_openai_error(route(&Request::new("GET", "/v2/nothing"), &script), 404);
    assert_eq!(error["code"], "unknown_url");
}

#[test]
fn wrong_method_is_405_with_allow_header() {
    let script = Script::new(Vec::new());
    let response = route(&Request::new("GET", "/v1/chat/completions"), &script);
    assert_eq!(response.header("allow"), Some("POST"));
    assert_openai_error(response, 405);
    let response = route(&Request::new("DELETE", "/health"), &script);
    assert_eq!(response.header("allow"), Some("GET"));
}

#[test]
fn every_response_carries_the_handler_version() {
    let script = Script::saying(&["a"], FinishReason::Stop);
    let requests = [
        Request::new("GET", "/health"),
        Request::new("GET", "/nope"),
        Request::new("GET", "/v1/models"),
        chat(hello(json!({}))),
        chat(hello(json!({"stream": true}))),
        Request::new("POST", "/v1/chat/completions").with_body("{"),
    ];
    for request in &requests {
        let response = route(request, &script);
        assert_eq!(response.header("x-tern-handler"), Some(HANDLER_VERSION), "{request:?}");
    }
    let refused = refuse(&ApiError::BodyTooLarge);
    assert_eq!(refused.header("x-tern-handler"), Some(HANDLER_VERSION));
}

#[test]
fn query_string_does_not_change_the_route() {
    let script = Script::new(Vec::new());
    let request = Request::new("GET", "/health?verbose=1");
    assert_eq!(request.query.as_deref(), Some("verbose=1"));
    assert_eq!(route(&request, &script).status, 200);
}

// Health and models

#[test]
fn health_is_503_until_ready() {
    let mut script = Script::new(Vec::new());
    script.ready = false;
    let response = route(&Request::new("GET", "/health"), &script);
    assert_eq!(response.status, 503);
    let body = json_of(response);
    assert_eq!(body["error"]["code"], 503);
    assert_eq!(body["error"]["message"], "Loading model");
    assert_eq!(body["error"]["type"], "unavailable_error");

    script.ready = true;
    let response = route(&Request::new("GET", "/health"), &script);
    assert_eq!(response.status, 200);
    let body = json_of(response);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["running"], 1);
    assert_eq!(body["waiting"], 2);
    assert_eq!(body["max_waiting"], 64);
    assert_eq!(body["kv_blocks_total"], 200);
    assert_eq!(body["kv_blocks_used"], 50);
    assert_eq!(body["kv_blocks_cached"], 10);
}

#[test]
fn models_lists_openai_fields_and_engine_details() {
    let script = Script::new(Vec::new());
    let response = route(&Request::new("GET", "/v1/models"), &script);
    assert_eq!(response.status, 200);
    let body = json_of(response);
    assert_eq!(body["object"], "list");
    assert_eq!(
        body["data"][0],
        json!({
            "id": MODEL,
            "object": "model",
            "created": 1_700_000_000u64,
            "owned_by": "tern",
            "architecture": "bitnet-b1.58",
            "context_length": 4096,
            "quantization": "TQ2_0",
            "parameter_count": 2_400_000_000u64,
        })
    );
}

#[test]
fn one_model_by_id_or_404() {
    let script = Script::new(Vec::new());
    let response = route(&Request::new("GET", &format!("/v1/models/{MODEL}")), &script);
    assert_eq!(json_of(response)["id"], MODEL);
    let error = assert_openai_error(route(&Request::new("GET", "/v1/models/gpt-4"), &script), 404);
    assert_eq!(error["code"], "model_not_found");
}

// Request validation

#[test]
fn malformed_json_is_400_with_openai_error() {
    let request = Request::new("POST", "/v1/chat/completions").with_body("{\"model\": ");
    let error = param_error(request);
    assert_eq!(error["param"], Value::Null);
    assert!(error["message"].as_str().unwrap().contains("parse the JSON body"));
}

#[test]
fn empty_or_non_object_body_is_400() {
    param_error(Request::new("POST", "/v1/chat/completions"));
    param_error(Request::new("POST", "/v1/chat/completions").with_body("[1, 2]"));
    param_error(Request::new("POST", "/generate").with_body("\"hello\""));
}

#[test]
fn negative_max_tokens_is_400_naming_param() {
    let error = param_error(chat(hello(json!({"max_tokens": -5}))));
    assert_eq!(error["param"], "max_tokens");
    assert!(error["message"].as_str().unwrap().contains("-5"));
    let error = param_error(chat(hello(json!({"max_completion_tokens": 0}))));
    assert_eq!(error["param"], "max_completion_tokens");
}

#[test]
fn fractional_max_tokens_is_400() {
    let error = param_error(chat(hello(json!({"max_tokens": 10.5}))));
    assert_eq!(error["param"], "max_tokens");
}

#[test]
fn wrong_type_for_temperature_is_400() {
    let error = param_error(chat(hello(json!({"temperature": "hot"}))));
    assert_eq!(error["param"], "temperature");
    assert!(error["message"].as_str().unwrap().contains("expected a number"));
}

#[test]
fn out_of_range_sampling_values_are_400_naming_param() {
    for (field, value) in [
        ("temperature", json!(2.5)),
        ("temperature", json!(-0.1)),
        ("top_p", json!(0)),
        ("top_p", json!(1.01)),
        ("presence_penalty", json!(3)),
        ("frequency_penalty", json!(-2.5)),
        ("min_p", json!(1.5)),
        ("repeat_penalty", json!(0)),
        ("top_k", json!(-1)),
        ("timeout_ms", json!(0)),
        ("seed", json!("42")),
        ("stream", json!("yes")),
        ("user", json!(7)),
    ] {
        let error = param_error(chat(hello(json!({ field: value }))));
        assert_eq!(error["param"], field, "{field} = {value}");
    }
}

#[test]
fn missing_or_empty_messages_is_400() {
    let error = param_error(chat(json!({"model": MODEL})));
    assert_eq!(error["param"], "messages");
    let error = param_error(chat(json!({"model": MODEL, "messages": []})));
    assert_eq!(error["param"], "messages");
    let error = param_error(chat(json!({"model": MODEL, "messages": "Hi"})));
    assert_eq!(error["param"], "messages");
}

#[test]
fn missing_model_is_400() {
    let error = param_error(chat(json!({"messages": [{"role": "user", "content": "Hi"}]})));
    assert_eq!(error["param"], "model");
}

#[test]
fn bad_messages_are_400_naming_the_element() {
    let bad_role = json!({"model": MODEL, "messages": [
        {"role": "user", "content": "Hi"},
        {"role": "tool", "content": "42"},
    ]});
    assert_eq!(param_error(chat(bad_role))["param"], "messages[1].role");

    let bad_content = json!({"model": MODEL, "messages": [{"role": "user", "content": 5}]});
    assert_eq!(param_error(chat(bad_content))["param"], "messages[0].content");

    let image = json!({"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}},
    ]}]});
    assert_eq!(param_error(chat(image))["param"], "messages[0].content[0].type");

    let not_object = json!({"model": MODEL, "messages": ["Hi"]});
    assert_eq!(param_error(chat(not_object))["param"], "messages[0]");
}

#[test]
fn n_greater_than_one_is_rejected() {
    let error = param_error(chat(hello(json!({"n": 2}))));
    assert_eq!(error["param"], "n");
}

#[test]
fn json_response_format_is_rejected_as_unsupported() {
    let error = param_error(chat(hello(json!({"response_format": {"type": "json_object"}}))));
    assert_eq!(error["param"], "response_format");
    assert!(error["message"].as_str().unwrap().contains("not supported"));
}

#[test]
fn too_many_stop_sequences_is_400() {
    let error = param_error(chat(hello(json!({"stop": ["a", "b", "c", "d", "e"]}))));
    assert_eq!(error["param"], "stop");
    let error = param_error(chat(hello(json!({"stop": ["a", 1]}))));
    assert_eq!(error["param"], "stop[1]");
}

#[test]
fn logit_bias_is_validated() {
    let error = param_error(chat(hello(json!({"logit_bias": {"abc": 1}}))));
    assert_eq!(error["param"], "logit_bias");
    let error = param_error(chat(hello(json!({"logit_bias": {"42": 101}}))));
    assert_eq!(error["param"], "logit_bias");
    let script = Script::saying(&["ok"], FinishReason::Stop);
    let request = chat(hello(json!({"logit_bias": {"42": -100}, "user": "u1"})));
    assert_eq!(route(&request, &script).status, 200);
}

#[test]
fn nulls_count_as_absent() {
    let script = Script::saying(&["ok"], FinishReason::Stop);
    let request = chat(hello(json!({
        "max_tokens": null, "temperature": null, "stop": null, "seed": null,
        "stream": null, "response_format": null, "logit_bias": null,
    })));
    assert_eq!(route(&request, &script).status, 200);
}

// Parameters reaching the engine

#[test]
fn openai_defaults_reach_the_engine() {
    let script = Script::saying(&["ok"], FinishReason::Stop);
    route(&chat(hello(json!({}))), &script);
    let started = script.started();
    assert_eq!(started.model, MODEL);
    let params = started.params;
    assert_eq!(params.max_tokens, 0, "no limit means until the context is full");
    assert_eq!(params.temperature, 1.0);
    assert_eq!(params.top_p, 1.0);
    assert_eq!(params.top_k, 0);
    assert_eq!(params.min_p, 0.0);
    assert_eq!(params.repeat_penalty, 1.0);
    assert_eq!(params.seed, None);
    assert!(params.stop.is_empty());
    assert_eq!(params.timeout_ms, None);
}

#[test]
fn request_parameters_reach_the_engine() {
    let script = Script::saying(&["ok"], FinishReason::Stop);
    let request = chat(json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": null},
        ],
        "max_tokens": 5,
        "max_completion_tokens": 9,
        "temperature": 0,
        "top_p": 0.5,
        "stop": "\n\n",
        "seed": 42,
        "top_k": 40,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "repeat_last_n": 32,
        "timeout_ms": 2000,
        "presence_penalty": 0.5,
        "response_format": {"type": "text"},
    }));
    assert_eq!(route(&request, &script).status, 200);
    let started = script.started();
    let Prompt::Chat(messages) = started.prompt else {
        panic!("chat requests send a chat prompt");
    };
    let turns: Vec<_> = messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
    assert_eq!(turns, [("system", "Be brief."), ("user", "Hi\nthere"), ("assistant", "")]);
    let params = started.params;
    assert_eq!(params.max_tokens, 9, "max_completion_tokens wins");
    assert_eq!(params.temperature, 0.0);
    assert_eq!(params.top_p, 0.5);
    assert_eq!(params.stop, ["\n\n"]);
    assert_eq!(params.seed, Some(42));
    assert_eq!(params.top_k, 40);
    assert_eq!(params.min_p, 0.05);
    assert_eq!(params.repeat_penalty, 1.1);
    assert_eq!(params.repeat_last_n, 32);
    assert_eq!(params.timeout_ms, Some(2000));
}

// Engine errors

#[test]
fn unknown_model_is_404() {
    let script = Script::saying(&["ok"], FinishReason::Stop);
    let request = chat(hello(json!({"model": "gpt-4o"})));
    let error = assert_openai_error(route(&request, &script), 404);
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["param"], "model");
    assert!(error["message"].as_str().unwrap().contains("gpt-4o"));
}

#[test]
fn context_overflow_error_names_both_counts() {
    let overflow = Error::ContextOverflow(ContextOverflow { prompt_tokens: 5000, context_length: 4096 });
    let script = Script::refusing(overflow);
    let error = assert_openai_error(route(&chat(hello(json!({}))), &script), 400);
    assert_eq!(error["code"], "context_length_exceeded");
    assert_eq!(error["param"], "messages");
    assert_eq!(error["message"], "This model's maximum context length is 4096 tokens, but the prompt has 5000 tokens.");
}

#[test]
fn overloaded_is_429_with_retry_after_and_no_internals() {
    let script = Script::refusing(Error::Overloaded("queue 64/64 on worker 3".into()));
    let response = route(&chat(hello(json!({}))), &script);
    assert_eq!(response.header("retry-after"), Some("1"));
    let error = assert_openai_error(response, 429);
    assert_eq!(error["type"], "rate_limit_error");
    assert!(!error["message"].as_str().unwrap().contains("worker"));
}

#[test]
fn engine_errors_map_to_their_statuses() {
    let cases = [
        (Error::InvalidRequest("top_k too large".into()), 400, "invalid_request_error"),
        (Error::Internal("the model file vanished".into()), 500, "server_error"),
    ];
    for (error, status, kind) in cases {
        let script = Script::refusing(error);
        let body = assert_openai_error(route(&chat(hello(json!({}))), &script), status);
        assert_eq!(body["type"], kind);
    }
}

#[test]
fn every_error_has_the_four_openai_keys() {
    let errors = [
        ApiError::MalformedJson("x".into()),
        ApiError::param("top_p", "bad"),
        ApiError::BodyTooLarge,
        ApiError::UnreadableBody,
        ApiError::NotFound { method: "GET".into(), path: "/x".into() },
        ApiError::MethodNotAllowed { method: "PUT".into(), allow: "GET" },
        ApiError::engine(Error::InvalidRequest("x".into()), "prompt"),
        ApiError::engine(Error::UnknownModel("m".into()), "prompt"),
        ApiError::engine(Error::ContextOverflow(ContextOverflow { prompt_tokens: 2, context_length: 1 }), "prompt"),
        ApiError::engine(Error::Overloaded("x".into()), "prompt"),
        ApiError::engine(Error::Internal("x".into()), "prompt"),
    ];
    for err in &errors {
        let response = error_response(err);
        let status = response.status;
        assert!((400..600).contains(&status));
        assert_openai_error(response, status);
    }
}

#[test]
fn body_over_one_mib_is_413() {
    assert!(http::check_declared_length(Some("1048576")).is_ok());
    assert!(http::check_declared_length(Some("not a number")).is_ok());
    assert!(matches!(http::check_declared_length(Some("1048577")), Err(ApiError::BodyTooLarge)));

    let mut body = Vec::new();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..MAX_BODY_BYTES / chunk.len() {
        http::append_body_chunk(&mut body, &chunk).expect("within the limit");
    }
    let err = http::append_body_chunk(&mut body, b"x").expect_err("one byte over");
    let error = assert_openai_error(refuse(&err), 413);
    assert_eq!(error["code"], "request_too_large");
}

// Responses

#[test]
fn chat_completion_has_openai_shape_and_usage() {
    let script = Script::saying(&["Hel", "lo", "!"], FinishReason::Stop);
    let response = route(&chat(hello(json!({}))), &script);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = json_of(response);
    let id = body["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-") && id.len() > "chatcmpl-".len() + 16, "{id}");
    assert!(id["chatcmpl-".len()..].chars().all(|c| c.is_ascii_hexdigit()));
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["system_fingerprint"], Value::Null);
    assert_eq!(
        body["choices"],
        json!([{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!"},
            "logprobs": null,
            "finish_reason": "stop",
        }])
    );
    assert_eq!(
        body["usage"],
        json!({
            "prompt_tokens": 7,
            "completion_tokens": 3,
            "total_tokens": 10,
            "prompt_tokens_details": {"cached_tokens": 3},
        })
    );
}

#[test]
fn finish_reasons_map_to_openai_names() {
    for (reason, name) in [
        (FinishReason::Stop, "stop"),
        (FinishReason::Length, "length"),
        (FinishReason::Cancelled, "cancelled"),
        (FinishReason::Timeout, "timeout"),
    ] {
        let script = Script::saying(&["x"], reason);
        let body = json_of(route(&chat(hello(json!({}))), &script));
        assert_eq!(body["choices"][0]["finish_reason"], name);
        let frames = frames(route(&chat(hello(json!({"stream": true}))), &script));
        assert_eq!(frame_json(&frames[2])["choices"][0]["finish_reason"], name);
        let body = json_of(route(&post("/generate", &json!({"prompt": "x"})), &script));
        assert_eq!(body["finish_reason"], name);
        let body = json_of(route(&post("/batch", &json!({"prompts": ["x"]})), &script));
        assert_eq!(body["results"][0]["finish_reason"], name);
    }
}

#[test]
fn engine_error_mid_completion_is_an_error_response() {
    let script = Script::new(vec![Ok(Event::Text("partial".into())), Err(Error::Internal("decode failed".into()))]);
    let error = assert_openai_error(route(&chat(hello(json!({}))), &script), 500);
    assert_eq!(error["message"], "decode failed");
    assert!(*script.dropped.borrow());
}

#[test]
fn sse_stream_frames_role_content_finish_usage_done() {
    let script = Script::saying(&["Hel", "lo"], FinishReason::Length);
    let request = chat(hello(json!({"stream": true, "stream_options": {"include_usage": true}})));
    let response = route(&request, &script);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    let frames = frames(response);
    assert_eq!(frames.len(), 6, "{frames:#?}");
    assert_eq!(frames[5], "data: [DONE]\n\n");

    let chunks: Vec<Value> = frames[..5].iter().map(|f| frame_json(f)).collect();
    let id = chunks[0]["id"].as_str().unwrap();
    assert!(id.starts_with("chatcmpl-"));
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["created"], chunks[0]["created"]);
        assert_eq!(chunk["model"], MODEL);
    }
    let delta = |i: usize| chunks[i]["choices"][0]["delta"].clone();
    let finish = |i: usize| chunks[i]["choices"][0]["finish_reason"].clone();
    assert_eq!(delta(0), json!({"role": "assistant", "content": ""}));
    assert_eq!(delta(1), json!({"content": "Hel"}));
    assert_eq!(delta(2), json!({"content": "lo"}));
    assert_eq!(delta(3), json!({}));
    for (i, chunk) in chunks.iter().enumerate().take(3) {
        assert_eq!(finish(i), Value::Null);
        assert_eq!(chunk["usage"], Value::Null);
    }
    assert_eq!(finish(3), "length");
    assert_eq!(chunks[4]["choices"], json!([]));
    assert_eq!(chunks[4]["usage"]["prompt_tokens"], 7);
    assert_eq!(chunks[4]["usage"]["completion_tokens"], 2);
    assert_eq!(chunks[4]["usage"]["total_tokens"], 9);
    assert_eq!(chunks[4]["usage"]["prompt_tokens_details"], json!({"cached_tokens": 3}));
    assert_eq!(chunks[4]["timings"]["cache_n"], 3);
    assert_eq!(chunks[4]["timings"]["predicted_n"], 2);
    assert!(chunks[..4].iter().all(|c| c.get("timings").is_none()), "timings ride on the last chunk only");
}

#[test]
fn sse_stream_without_include_usage_has_no_usage_chunk() {
    let script = Script::saying(&["a"], FinishReason::Stop);
    let frames = frames(route(&chat(hello(json!({"stream": true}))), &script));
    assert_eq!(frames.len(), 4, "{frames:#?}");
    assert_eq!(frames[3], "data: [DONE]\n\n");
    let last = frame_json(&frames[2]);
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(frames[..3].iter().all(|f| !frame_json(f).as_object().unwrap().contains_key("usage")));
    assert_eq!(last["timings"]["prompt_n"], 4, "the finish chunk is the last one and carries the timings");
    assert!(frames[..2].iter().all(|f| !frame_json(f).as_object().unwrap().contains_key("timings")));
}

#[test]
fn engine_error_mid_stream_emits_one_error_event_and_stops() {
    let script = Script::new(vec![
        Ok(Event::Text("partial".into())),
        Err(Error::Internal("decode failed".into())),
        Ok(Event::Text("never sent".into())),
    ]);
    let frames = frames(route(&chat(hello(json!({"stream": true}))), &script));
    assert_eq!(frames.len(), 3, "{frames:#?}");
    assert_eq!(frame_json(&frames[1])["choices"][0]["delta"]["content"], "partial");
    let error = frame_json(&frames[2]);
    assert_eq!(error["error"]["message"], "decode failed");
    assert_eq!(error["error"]["type"], "server_error");
    assert!(!frames.iter().any(|f| f.contains("[DONE]")));
    assert!(*script.dropped.borrow(), "the failed generation is released");
}

#[test]
fn stream_errors_before_the_first_event_are_plain_http_errors() {
    let script = Script::refusing(Error::Overloaded("full".into()));
    let response = route(&chat(hello(json!({"stream": true}))), &script);
    assert_openai_error(response, 429);
}

#[test]
fn dropping_the_stream_body_drops_the_generation() {
    let script = Script::saying(&["a", "b", "c"], FinishReason::Stop);
    let response = route(&chat(hello(json!({"stream": true}))), &script);
    let Body::Stream(mut events) = response.body else {
        panic!("expected a stream");
    };
    events.next();
    events.next();
    assert!(!*script.dropped.borrow());
    drop(events);
    assert!(*script.dropped.borrow(), "a client that leaves cancels the generation");
}

#[test]
fn generation_is_released_as_soon_as_the_stream_finishes() {
    let script = Script::saying(&["a"], FinishReason::Stop);
    let response = route(&chat(hello(json!({"stream": true}))), &script);
    let Body::Stream(mut events) = response.body else {
        panic!("expected a stream");
    };
    for frame in events.by_ref() {
        if frame_json_opt(&frame).is_some_and(|c| c["choices"][0]["finish_reason"] == "stop") {
            break;
        }
    }
    assert!(*script.dropped.borrow());
}

fn frame_json_opt(frame: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(frame).ok()?;
    serde_json::from_str(text.strip_prefix("data: ")?.trim_end()).ok()
}

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

#[test]
fn chat_reports_cached_tokens_and_llama_cpp_timings() {
    let script = Script::saying(&["Once", " upon"], FinishReason::Stop);
    let body = json_of(route(&chat(hello(json!({}))), &script));
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 3);
    assert_eq!(
        body["timings"],
        json!({
            "prompt_n": 4,
            "prompt_ms": 4.0,
            "prompt_per_second": 1000.0,
            "predicted_n": 2,
            "predicted_ms": 15.0,
            "predicted_per_second": 2000.0 / 15.0,
            "cache_n": 3,
        })
    );
}

#[test]
fn timings_survive_zero_durations_and_more_cached_than_prompt_tokens() {
    let mut u = usage(2, 0);
    u.cached_tokens = 5;
    u.prompt_ms = 0.0;
    u.generation_ms = 0.0;
    let t = crate::chat::timings_json(&u);
    assert_eq!(t["prompt_n"], 0);
    assert_eq!(t["prompt_per_second"], 0.0);
    assert_eq!(t["predicted_per_second"], 0.0);
}

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
fn assert_valid_exposition(text: &str) {
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
    use crate::backend::EngineStatus;
    let mut status: EngineStatus = Script::new(Vec::new()).status();
    // Counts one short of the bounds, and a count ahead of the buckets: a
    // snapshot taken while an observation landed.
    status.time_to_first_token = Histogram { bounds: vec![0.5, 2.0], counts: vec![1], sum: 0.75, count: 3 };
    // Buckets ahead of the count.
    status.inter_token_latency = Histogram { bounds: vec![0.01], counts: vec![4, 2], sum: 0.1, count: 5 };
    // Nothing observed yet.
    status.queue_time = Histogram { bounds: vec![0.1, 1.0], counts: vec![0, 0, 0], sum: 0.0, count: 0 };
    let text = crate::metrics::exposition(&status);
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
    assert_eq!(sample(&crate::metrics::exposition(&status), "tern_kv_cache_usage_ratio"), 0.0);
}

#[test]
fn metrics_accept_only_get() {
    let script = Script::new(Vec::new());
    let response = route(&Request::new("POST", "/metrics"), &script);
    assert_eq!(response.header("allow"), Some("GET"));
    assert_openai_error(response, 405);
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
            "id": "job-1",
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
        (json!({"messages": [{"role": "tool", "content": "x"}]}), "messages[0].role"),
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

    let queued = get("job-1");
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["position"], 3);
    assert_eq!(queued["estimated_wait_ms"], 1500);
    assert!(queued.get("usage").is_none() && queued.get("finish_reason").is_none());

    let running = get("job-running");
    assert_eq!(running["status"], "running");
    assert_eq!(running["text"], "Once upon", "the text so far");
    assert!(running.get("position").is_none() && running.get("usage").is_none());

    let done = get("job-done");
    assert_eq!(
        done,
        json!({
            "id": "job-done",
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

    let failed = get("job-failed");
    assert_eq!(failed["status"], "failed");
    assert_eq!(
        failed["error"],
        json!({"message": "the engine fell over", "type": "server_error", "param": null, "code": null})
    );
}

#[test]
fn chat_queue_delete_cancels_and_reports_the_state() {
    let script = Script::saying(&[], FinishReason::Stop);
    let response = route(&Request::new("DELETE", "/api/chat-queue/job-running"), &script);
    assert_eq!(response.status, 200);
    let job = json_of(response);
    assert_eq!(job["id"], "job-running");
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
    let response = route(&Request::new("GET", "/api/chat-queue/job-done?wait=1"), &script);
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
    let limit = crate::queue::batch_limit(std::env::var("TERN_MAX_BATCH").ok().as_deref());
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
    use crate::queue::{batch_limit, DEFAULT_MAX_BATCH};
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

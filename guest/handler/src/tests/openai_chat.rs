//! OpenAI's chat completions: validation, the parameters that reach the
//! engine, engine errors, whole and streamed answers, usage and timings.

use super::script::*;
use crate::engine_client::Constraint;

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
        {"role": "function", "content": "42"},
    ]});
    assert_eq!(param_error(chat(bad_role))["param"], "messages[1].role");
    let no_call_id = json!({"model": MODEL, "messages": [{"role": "tool", "content": "42"}]});
    assert_eq!(param_error(chat(no_call_id))["param"], "messages[0].tool_call_id");

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
fn response_format_asks_for_a_json_object_or_a_schema() {
    let schema = json!({"type": "object", "properties": {"z": {"type": "string"}, "a": {"type": "integer"}}, "required": ["z", "a"]});
    for (format, expected) in [
        (json!({"type": "text"}), None),
        (json!({"type": "json_object"}), Some(Constraint::JsonObject)),
        (
            json!({"type": "json_schema", "json_schema": {"name": "thing", "strict": true, "schema": schema}}),
            Some(Constraint::JsonSchema(
                r#"{"type":"object","properties":{"z":{"type":"string"},"a":{"type":"integer"}},"required":["z","a"]}"#
                    .into(),
            )),
        ),
    ] {
        let script = Script::saying(&["{}"], FinishReason::Stop);
        assert_eq!(route(&chat(hello(json!({"response_format": format}))), &script).status, 200);
        assert_eq!(format!("{:?}", script.started().params.constraint), format!("{expected:?}"), "{format}");
    }
    for (format, param) in [
        (json!({"type": "yaml"}), "response_format.type"),
        (json!({"type": "json_schema"}), "response_format.json_schema"),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": "object"}}),
            "response_format.json_schema.schema",
        ),
        (json!("json"), "response_format"),
    ] {
        assert_eq!(param_error(chat(hello(json!({"response_format": format}))))["param"], param, "{format}");
    }
    let two = hello(json!({"response_format": {"type": "json_object"}, "grammar": "root ::= \"a\""}));
    assert_eq!(param_error(chat(two))["param"], "grammar");
}

#[test]
fn too_many_stop_sequences_is_400() {
    let error = param_error(chat(hello(json!({"stop": ["a", "b", "c", "d", "e"]}))));
    assert_eq!(error["param"], "stop");
    let error = param_error(chat(hello(json!({"stop": ["a", 1]}))));
    assert_eq!(error["param"], "stop[1]");
}

#[test]
fn logit_bias_is_validated_then_refused_unless_empty() {
    let error = param_error(chat(hello(json!({"logit_bias": {"abc": 1}}))));
    assert_eq!(error["param"], "logit_bias");
    let error = param_error(chat(hello(json!({"logit_bias": {"42": 101}}))));
    assert_eq!(error["param"], "logit_bias");
    let error = param_error(chat(hello(json!({"logit_bias": {"42": -100}}))));
    assert!(error["message"].as_str().unwrap().contains("not supported"), "{error}");
    let script = Script::saying(&["ok"], FinishReason::Stop);
    let request = chat(hello(json!({"logit_bias": {}, "user": "u1"})));
    assert_eq!(route(&request, &script).status, 200);
}

#[test]
fn fields_the_engine_cannot_honour_are_400_naming_them_never_ignored() {
    let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let cases = [
        (
            json!({"tools": tool, "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice.function.name",
        ),
        (json!({"tools": tool, "tool_choice": "always"}), "tool_choice"),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"tools": [{"type": "retrieval"}]}), "tools[0].type"),
        (json!({"tools": [{"type": "function", "function": {"name": "two words"}}]}), "tools[0].function.name"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}),
            "tools[0].function.parameters",
        ),
        (json!({"tools": [tool[0], tool[0]]}), "tools[1]"),
        (json!({"tools": tool, "response_format": {"type": "json_object"}}), "tools"),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (json!({"function_call": {"name": "f"}}), "function_call"),
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (json!({"logprobs": true, "top_logprobs": 21}), "top_logprobs"),
        (json!({"audio": {"voice": "alloy"}}), "audio"),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
        (json!({"prediction": {"type": "content", "content": "x"}}), "prediction"),
    ];
    for (extra, param) in cases {
        let error = param_error(chat(hello(extra.clone())));
        assert_eq!(error["param"], param, "{extra}");
    }
    let script = Script::saying(&["ok"], FinishReason::Stop);
    let harmless = [
        json!({"tools": tool, "tool_choice": "none"}),
        json!({"tools": [], "tool_choice": "auto"}),
        json!({"logprobs": false, "top_logprobs": 0, "modalities": ["text"], "functions": null}),
    ];
    for extra in harmless {
        assert_eq!(route(&chat(hello(extra.clone())), &script).status, 200, "{extra}");
    }
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

// Usage and timings

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
    let t = crate::wire::timings_json(&u);
    assert_eq!(t["prompt_n"], 0);
    assert_eq!(t["prompt_per_second"], 0.0);
    assert_eq!(t["predicted_per_second"], 0.0);
}

#[test]
fn ignore_eos_reaches_the_engine() {
    let script = Script::saying(&["x"], FinishReason::Length);
    route(&chat(hello(json!({"ignore_eos": true}))), &script);
    assert!(script.started().params.ignore_eos);
    route(&chat(hello(json!({}))), &script);
    assert!(!script.started().params.ignore_eos);
    assert_eq!(param_error(chat(hello(json!({"ignore_eos": "yes"}))))["param"], "ignore_eos");
}

#[test]
fn stop_strings_longer_than_256_bytes_are_400() {
    let error = param_error(chat(hello(json!({"stop": ["ok", "x".repeat(257)]}))));
    assert_eq!(error["param"], "stop[1]");
}

/// "Hello" in two tokens, each with its log-probability before its text.
fn saying_hello_with_logprobs() -> Script {
    Script::new(vec![
        Ok(Event::Logprobs(vec![token("Hel", -0.5, &[("Hel", -0.5), ("Hi", -1.5)])])),
        Ok(Event::Text("Hel".into())),
        Ok(Event::Logprobs(vec![token("lo", -0.25, &[("lo", -0.25), ("p", -2.0)])])),
        Ok(Event::Text("lo".into())),
        Ok(Event::Finished(Finished { reason: FinishReason::Stop, usage: usage(3, 2) })),
    ])
}

#[test]
fn logprobs_are_reported_whole_and_per_chunk_and_never_cached() {
    let script = saying_hello_with_logprobs();
    let answer = json_of(route(&chat(hello(json!({"logprobs": true, "top_logprobs": 2, "temperature": 0}))), &script));
    assert_eq!(script.started().params.logprobs, Some(2));
    let content = &answer["choices"][0]["logprobs"]["content"];
    assert_eq!(content[0]["token"], "Hel");
    assert_eq!(content[1]["logprob"], -0.25);
    assert_eq!(content[1]["bytes"], json!([108, 111]));
    assert_eq!(content[0]["top_logprobs"][1], json!({"token": "Hi", "logprob": -1.5, "bytes": [72, 105]}));
    assert_eq!(answer.get("cached"), None, "a request for log-probabilities skips the cache");

    let script = saying_hello_with_logprobs();
    let frames = frames(route(&chat(hello(json!({"logprobs": true, "stream": true}))), &script));
    let chunks: Vec<Value> = frames.iter().filter(|f| !f.contains("[DONE]")).map(|f| frame_json(f)).collect();
    let texts: Vec<(Value, Value)> = chunks
        .iter()
        .map(|c| (c["choices"][0]["delta"]["content"].clone(), c["choices"][0]["logprobs"]["content"].clone()))
        .collect();
    assert_eq!(texts[1].0, "Hel");
    assert_eq!(texts[1].1[0]["token"], "Hel");
    assert_eq!(texts[2].0, "lo");
    assert_eq!(texts[2].1[0]["token"], "lo");
    assert_eq!(script.started().params.logprobs, Some(0));

    let script = saying_hello_with_logprobs();
    let answer = json_of(route(&chat(hello(json!({}))), &script));
    assert_eq!(answer["choices"][0]["logprobs"], Value::Null);
    assert_eq!(script.started().params.logprobs, None);
}

#[test]
fn text_completions_report_logprobs_in_the_legacy_shape_with_offsets_after_the_echo() {
    let script = saying_hello_with_logprobs();
    let body = json!({"model": MODEL, "prompt": "Say: ", "logprobs": 1, "echo": true});
    let answer = json_of(route(&post("/v1/completions", &body), &script));
    assert_eq!(script.started().params.logprobs, Some(1));
    let logprobs = &answer["choices"][0]["logprobs"];
    assert_eq!(logprobs["tokens"], json!(["Hel", "lo"]));
    assert_eq!(logprobs["token_logprobs"], json!([-0.5, -0.25]));
    assert_eq!(logprobs["text_offset"], json!([5, 8]));
    assert_eq!(logprobs["top_logprobs"][0]["Hi"], -1.5);
    assert_eq!(answer["choices"][0]["text"], "Say: Hello");
}

#[test]
fn a_queued_job_cannot_ask_for_logprobs() {
    let error = param_error(post("/api/chat-queue", &hello(json!({"logprobs": true}))));
    assert_eq!(error["param"], "logprobs");
}

#[test]
fn n_choices_start_after_the_first_has_read_its_prompt_and_count_the_prompt_once() {
    let script = Script::saying(&["Hi", "!"], FinishReason::Stop);
    let answer = json_of(route(&chat(hello(json!({"n": 3, "seed": 10}))), &script));
    let choices = answer["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["message"]["content"], "Hi!");
    }
    // The first choice's first event came before the others started.
    let log = script.log();
    let starts: Vec<usize> = log.iter().enumerate().filter(|(_, e)| **e == "start").map(|(i, _)| i).collect();
    let first_read = log.iter().position(|e| *e == "read").unwrap();
    assert_eq!(starts.len(), 3);
    assert!(starts[0] < first_read && first_read < starts[1], "{log:?}");
    assert_eq!(script.started().params.seed, Some(12), "choice i samples with seed + i");
    let usage = &answer["usage"];
    assert_eq!((usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64()), (Some(7), Some(6)));

    assert_eq!(param_error(chat(hello(json!({"n": 9}))))["param"], "n");
    assert_eq!(param_error(post("/api/chat-queue", &hello(json!({"n": 2}))))["param"], "n");
}

#[test]
fn n_choices_stream_interleaved_each_with_its_index_and_one_usage_at_the_end() {
    let script = Script::saying(&["Hi", "!"], FinishReason::Stop);
    let body = hello(json!({"n": 3, "stream": true, "stream_options": {"include_usage": true}}));
    let frames = frames(route(&chat(body), &script));
    assert_eq!(frames.last().unwrap(), "data: [DONE]\n\n");
    let chunks: Vec<Value> = frames[..frames.len() - 1].iter().map(|f| frame_json(f)).collect();
    let mut texts = vec![String::new(); 3];
    let mut finishes = [0; 3];
    for c in &chunks[..chunks.len() - 1] {
        let choice = &c["choices"][0];
        let i = choice["index"].as_u64().unwrap() as usize;
        texts[i] += choice["delta"]["content"].as_str().unwrap_or("");
        finishes[i] += usize::from(choice["finish_reason"] == "stop");
    }
    assert_eq!(texts, ["Hi!", "Hi!", "Hi!"]);
    assert_eq!(finishes, [1, 1, 1]);
    // Text of the choices is interleaved, not one choice after another.
    let order: Vec<u64> = chunks
        .iter()
        .filter(|c| c["choices"][0]["delta"]["content"] == "!")
        .map(|c| c["choices"][0]["index"].as_u64().unwrap())
        .collect();
    assert_eq!(order.len(), 3);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert_eq!((usage["prompt_tokens"].as_u64(), usage["completion_tokens"].as_u64()), (Some(7), Some(6)));
}

//! llama.cpp server's API: `/completion`, `/tokenize`, `/detokenize`,
//! `/props`.

use super::script::*;
use crate::engine_client::Constraint;

fn completion(body: Value) -> Request {
    post("/completion", &body)
}

/// Asserts a llama.cpp-shaped error (`code` the numeric status).
fn assert_llama_error(response: Response, status: u16) -> Value {
    assert_eq!(response.status, status);
    let body = json_of(response);
    assert_eq!(body["error"]["code"], status, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"]["type"].is_string(), "{body}");
    body["error"].clone()
}

#[test]
fn completion_answers_content_stop_type_and_timings() {
    let script = Script::saying(&["Once", " upon"], FinishReason::Stop);
    let response = route(&completion(json!({"prompt": "Tell", "n_predict": 8})), &script);
    assert_eq!(response.status, 200);
    let body = json_of(response);
    assert_eq!(body["content"], "Once upon");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["stop"], true);
    assert_eq!(body["stop_type"], "eos");
    assert_eq!(body["stopped_eos"], true);
    assert_eq!(body["tokens_predicted"], 2);
    assert_eq!(body["tokens_evaluated"], 7);
    let timings = &body["timings"];
    for key in
        ["prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms", "predicted_per_second", "cache_n"]
    {
        assert!(timings[key].is_number(), "timings lack {key}: {body}");
    }
    assert_eq!(timings["prompt_n"], 4, "7 prompt tokens, 3 of them cached");
    assert_eq!(timings["cache_n"], 3);

    let started = script.started();
    assert!(matches!(&started.prompt, Prompt::Text(text) if text == "Tell"));
    assert_eq!(started.params.max_tokens, 8);
}

#[test]
fn completion_uses_llama_cpp_defaults() {
    let script = Script::saying(&["x"], FinishReason::Length);
    let body = json_of(route(&completion(json!({"prompt": [1, 2, 3], "cache_prompt": true, "seed": -1})), &script));
    assert_eq!(body["stop_type"], "limit");
    assert_eq!(body["stopped_limit"], true);
    let started = script.started();
    assert!(matches!(&started.prompt, Prompt::Tokens(ids) if ids == &[1, 2, 3]));
    let params = started.params;
    assert_eq!(params.max_tokens, 0, "no n_predict: until the context is full");
    assert!((params.temperature - 0.8).abs() < 1e-6);
    assert_eq!(params.top_k, 40);
    assert!((params.top_p - 0.95).abs() < 1e-6);
    assert!((params.min_p - 0.05).abs() < 1e-6);
    assert_eq!(params.seed, None, "seed -1 draws a fresh one");

    let script = Script::saying(&["x"], FinishReason::Stop);
    route(&completion(json!({"prompt": "a", "n_predict": -1, "seed": 7, "top_k": 0})), &script);
    let params = script.started().params;
    assert_eq!(params.max_tokens, 0);
    assert_eq!(params.seed, Some(7));
    assert_eq!(params.top_k, 0);
}

#[test]
fn completion_with_stop_strings_reports_a_word_stop() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    let body = json_of(route(&completion(json!({"prompt": "a", "stop": ["\n"]})), &script));
    assert_eq!(body["stop_type"], "word");
    assert_eq!(body["stopped_word"], true);
    assert_eq!(script.started().params.stop, vec!["\n".to_string()]);
}

#[test]
fn streamed_completion_sends_content_then_one_stop_event() {
    let script = Script::saying(&["Once", "", " upon"], FinishReason::Stop);
    let response = route(&completion(json!({"prompt": "a", "stream": true})), &script);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let frames = frames(response);
    assert_eq!(frames.len(), 3, "{frames:#?}");
    assert_eq!(frame_json(&frames[0]), json!({"content": "Once", "stop": false}));
    assert_eq!(frame_json(&frames[1]), json!({"content": " upon", "stop": false}));
    let last = frame_json(&frames[2]);
    assert_eq!(last["stop"], true);
    assert_eq!(last["content"], "");
    assert_eq!(last["tokens_predicted"], 3);
    assert!(last["timings"]["predicted_per_second"].is_number());
    assert!(*script.dropped.borrow());
}

#[test]
fn streamed_completion_error_is_a_llama_error_event() {
    let script = Script::new(vec![Ok(Event::Text("a".into())), Err(Error::Internal("decode failed".into()))]);
    let frames = frames(route(&completion(json!({"prompt": "a", "stream": true})), &script));
    assert_eq!(frames.len(), 2);
    let error = frame_json(&frames[1]);
    assert_eq!(error["error"]["code"], 500);
    assert_eq!(error["error"]["message"], "decode failed");
}

#[test]
fn completion_errors_take_llama_cpp_shape() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    for body in [
        json!({"prompt": "a", "n_predict": 0}),
        json!({"prompt": "a", "n_predict": -2}),
        json!({"n_predict": 4}),
        json!({"prompt": "a", "temperature": "hot"}),
        json!({"prompt": "a", "cache_prompt": "yes"}),
    ] {
        let error = assert_llama_error(route(&completion(body.clone()), &script), 400);
        assert_eq!(error["type"], "invalid_request_error", "{body}");
    }
    assert_llama_error(route(&post("/completion", &json!([1])), &script), 400);
    assert_llama_error(route(&completion(json!({"prompt": "a", "model": "nope"})), &script), 404);
    let overloaded = Script::refusing(Error::Overloaded("full".into()));
    let response = route(&completion(json!({"prompt": "a"})), &overloaded);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_llama_error(response, 429);
}

#[test]
fn tokenize_then_detokenize_round_trips() {
    let script = Script::new(Vec::new());
    let body = json_of(route(&post("/tokenize", &json!({"content": "Hi!"})), &script));
    assert_eq!(body["tokens"], json!([72, 105, 33]));
    let back = json_of(route(&post("/detokenize", &json!({"tokens": body["tokens"]})), &script));
    assert_eq!(back["content"], "Hi!");
    let empty = json_of(route(&post("/detokenize", &json!({"tokens": []})), &script));
    assert_eq!(empty["content"], "");
}

#[test]
fn tokenize_with_pieces_names_each_token() {
    let script = Script::new(Vec::new());
    let body = json_of(route(&post("/tokenize", &json!({"content": "Hi", "with_pieces": true})), &script));
    assert_eq!(body["tokens"], json!([{"id": 72, "piece": "H"}, {"id": 105, "piece": "i"}]));
}

#[test]
fn tokenize_and_detokenize_refuse_bad_fields() {
    let script = Script::new(Vec::new());
    for (path, body, param) in [
        ("/tokenize", json!({}), "content"),
        ("/tokenize", json!({"content": 5}), "content"),
        ("/tokenize", json!({"content": "a", "add_special": true}), "add_special"),
        ("/tokenize", json!({"content": "a", "with_pieces": 1}), "with_pieces"),
        ("/detokenize", json!({}), "tokens"),
        ("/detokenize", json!({"tokens": "1 2"}), "tokens"),
        ("/detokenize", json!({"tokens": [1, -1]}), "tokens[1]"),
    ] {
        let error = assert_llama_error(route(&post(path, &body), &script), 400);
        assert_eq!(error["param"], param, "{path} {body}: {error}");
    }
    // Ids outside the vocabulary are the engine's to refuse.
    assert_llama_error(route(&post("/detokenize", &json!({"tokens": [300]})), &script), 400);
}

#[test]
fn props_reports_context_model_and_slots() {
    let script = Script::new(Vec::new());
    let response = route(&Request::new("GET", "/props"), &script);
    assert_eq!(response.status, 200);
    let body = json_of(response);
    let settings = &body["default_generation_settings"];
    assert_eq!(settings["n_ctx"], 4096);
    assert_eq!(settings["model"], MODEL);
    assert_eq!(settings["top_k"], 40);
    // 200 blocks of 16 positions hold no full 4096-token context: one slot.
    assert_eq!(body["total_slots"], 1);
    assert!(body["build_info"].as_str().is_some_and(|b| b.contains(HANDLER_VERSION)));
}

#[test]
fn props_is_503_while_loading_and_post_only_routes_refuse_get() {
    let mut script = Script::new(Vec::new());
    script.ready = false;
    assert_llama_error(route(&Request::new("GET", "/props"), &script), 503);
    script.ready = true;
    for path in ["/completion", "/tokenize", "/detokenize"] {
        let response = route(&Request::new("GET", path), &script);
        assert_eq!(response.status, 405, "{path}");
        assert_eq!(response.header("allow"), Some("POST"));
    }
    assert_eq!(route(&Request::new("POST", "/props"), &script).status, 405);
}

#[test]
fn grammars_and_schemas_reach_the_engine_one_at_a_time() {
    for (field, value, expected) in [
        ("grammar", json!("root ::= \"a\""), Constraint::Gbnf("root ::= \"a\"".into())),
        ("json_schema", json!({"type": "object"}), Constraint::JsonSchema(r#"{"type":"object"}"#.into())),
    ] {
        let script = Script::saying(&["a"], FinishReason::Stop);
        let response = route(&post("/completion", &json!({"prompt": "Hi", field: value})), &script);
        assert_eq!(response.status, 200, "{field}");
        assert_eq!(format!("{:?}", script.started().params.constraint), format!("{:?}", Some(expected)));
    }
    let script = Script::saying(&["a"], FinishReason::Stop);
    let both = json!({"prompt": "Hi", "grammar": "root ::= \"a\"", "json_schema": {"type": "object"}});
    assert_eq!(route(&post("/completion", &both), &script).status, 400);
    let script = Script::saying(&["a"], FinishReason::Stop);
    let bad = json!({"prompt": "Hi", "json_schema": "object"});
    assert_eq!(route(&post("/completion", &bad), &script).status, 400);
}

#[test]
fn n_probs_reports_each_tokens_probabilities_whole_and_streamed() {
    let script = || {
        Script::new(vec![
            Ok(Event::Logprobs(vec![token("Hel", -0.5, &[("Hel", -0.5), ("Hi", -1.5)])])),
            Ok(Event::Text("Hel".into())),
            Ok(Event::Logprobs(vec![token("lo", -0.25, &[("lo", -0.25), ("p", -2.0)])])),
            Ok(Event::Text("lo".into())),
            Ok(Event::Finished(Finished { reason: FinishReason::Stop, usage: usage(2, 2) })),
        ])
    };
    let s = script();
    let body = json_of(route(&post("/completion", &json!({"prompt": "Hi", "n_probs": 2})), &s));
    assert_eq!(s.started().params.logprobs, Some(2));
    assert_eq!(body["content"], "Hello");
    let probs = body["completion_probabilities"].as_array().unwrap();
    assert_eq!(probs.len(), 2);
    assert_eq!(probs[0]["token"], "Hel");
    assert_eq!(probs[0]["id"], u32::from(b'H'));
    assert_eq!(probs[0]["bytes"], json!([72, 101, 108]));
    assert_eq!(probs[0]["logprob"], -0.5);
    assert_eq!(
        probs[1]["top_logprobs"][1],
        json!({"id": u32::from(b'p'), "token": "p", "bytes": [112], "logprob": -2.0})
    );

    let s = script();
    let response = route(&post("/completion", &json!({"prompt": "Hi", "n_probs": 2, "stream": true})), &s);
    let events: Vec<Value> = frames(response).iter().map(|f| frame_json(f)).collect();
    assert_eq!(events[0]["content"], "Hel");
    assert_eq!(events[0]["completion_probabilities"][0]["token"], "Hel");
    assert_eq!(events[1]["completion_probabilities"][0]["token"], "lo");

    for bad in [json!({"n_probs": 21}), json!({"n_probs": -1}), json!({"post_sampling_probs": true})] {
        let s = script();
        let mut body = json!({"prompt": "Hi"});
        body.as_object_mut().unwrap().extend(bad.as_object().unwrap().clone());
        assert_eq!(route(&post("/completion", &body), &s).status, 400, "{bad}");
    }
    let s = Script::saying(&["x"], FinishReason::Stop);
    let body = json_of(route(&post("/completion", &json!({"prompt": "Hi"})), &s));
    assert!(body.get("completion_probabilities").is_none(), "only when asked");
    assert_eq!(s.started().params.logprobs, None);
}

//! OpenAI's text completions (`/v1/completions`) and embeddings
//! (`/v1/embeddings`).

use super::script::*;

fn completion(extra: Value) -> Request {
    let mut body = json!({"model": MODEL, "prompt": "Once"});
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    post("/v1/completions", &body)
}

fn embeddings(body: Value) -> Request {
    post("/v1/embeddings", &body)
}

// Text completions

#[test]
fn completion_answers_with_a_text_completion_and_usage() {
    let script = Script::saying(&["Once", " upon"], FinishReason::Length);
    let response = route(&completion(json!({})), &script);
    assert_eq!(response.status, 200);
    let body = json_of(response);
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("cmpl-")), "{body}");
    assert_eq!(body["model"], MODEL);
    assert!(body["created"].as_u64().is_some());
    let choice = &body["choices"][0];
    assert_eq!(choice["text"], "Once upon");
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(body["usage"]["prompt_tokens"], 7);
    assert_eq!(body["usage"]["completion_tokens"], 2);
    assert_eq!(body["usage"]["total_tokens"], 9);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 3);

    let started = script.started();
    assert_eq!(started.model, MODEL);
    assert!(matches!(&started.prompt, Prompt::Text(text) if text == "Once"));
    assert_eq!(started.params.max_tokens, 16, "OpenAI's default");
    assert_eq!(started.params.temperature, 1.0);
    assert_eq!(started.params.priority, Priority::Interactive);
}

#[test]
fn completion_passes_sampling_fields_and_extensions_to_the_engine() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    let request = completion(json!({
        "max_tokens": 5, "temperature": 0.2, "top_p": 0.5, "seed": 9, "stop": ["\n", "."],
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "top_k": 7, "min_p": 0.1,
        "repeat_penalty": 1.2, "repeat_last_n": 32, "timeout_ms": 500, "priority": "batch",
        "logit_bias": {}, "user": "u1", "n": 1, "best_of": 1, "suffix": "", "logprobs": 0,
    }));
    assert_eq!(route(&request, &script).status, 200);
    let params = script.started().params;
    assert_eq!(params.max_tokens, 5);
    assert_eq!(params.temperature, 0.2);
    assert_eq!(params.top_p, 0.5);
    assert_eq!(params.seed, Some(9));
    assert_eq!(params.stop, vec!["\n".to_string(), ".".to_string()]);
    assert_eq!(params.presence_penalty, 0.5);
    assert_eq!(params.frequency_penalty, -0.5);
    assert_eq!(params.top_k, 7);
    assert!((params.min_p - 0.1).abs() < 1e-6);
    assert!((params.repeat_penalty - 1.2).abs() < 1e-6);
    assert_eq!(params.repeat_last_n, 32);
    assert_eq!(params.timeout_ms, Some(500));
    assert_eq!(params.priority, Priority::Batch);
}

#[test]
fn completion_prompt_may_be_one_string_or_token_ids() {
    let cases = [
        (json!(["Once"]), Prompt::Text("Once".into())),
        (json!([79, 110]), Prompt::Tokens(vec![79, 110])),
        (json!([[79, 110, 99]]), Prompt::Tokens(vec![79, 110, 99])),
        (json!(""), Prompt::Text(String::new())),
    ];
    for (prompt, expected) in cases {
        let script = Script::saying(&["x"], FinishReason::Stop);
        assert_eq!(route(&completion(json!({"prompt": prompt})), &script).status, 200, "{prompt}");
        assert_eq!(format!("{:?}", script.started().prompt), format!("{expected:?}"), "{prompt}");
    }
}

#[test]
fn completion_refuses_bad_prompts() {
    let cases = [
        (json!(["a", "b"]), "prompt"),
        (json!([]), "prompt"),
        (json!([[]]), "prompt[0]"),
        (json!([1, -2]), "prompt[1]"),
        (json!([1, 4_294_967_296u64]), "prompt[1]"),
        (json!([1, "a"]), "prompt[1]"),
        (json!(3), "prompt"),
        (json!({"text": "a"}), "prompt"),
    ];
    for (prompt, param) in cases {
        let error = param_error(completion(json!({"prompt": prompt})));
        assert_eq!(error["param"], param, "{prompt}: {error}");
    }
    let error = param_error(post("/v1/completions", &json!({"model": MODEL})));
    assert_eq!(error["param"], "prompt");
    let error = param_error(post("/v1/completions", &json!({"prompt": "a"})));
    assert_eq!(error["param"], "model");
}

#[test]
fn completion_refuses_what_the_engine_cannot_do() {
    let cases = [
        (json!({"n": 9}), "n"),
        (json!({"best_of": 3}), "best_of"),
        (json!({"suffix": "the end"}), "suffix"),
        (json!({"logprobs": 6}), "logprobs"),
        (json!({"logprobs": true}), "logprobs"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"temperature": 3}), "temperature"),
        (json!({"echo": "yes"}), "echo"),
        (json!({"stream_options": 1}), "stream_options"),
    ];
    for (extra, param) in cases {
        let error = param_error(completion(extra.clone()));
        assert_eq!(error["param"], param, "{extra}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[test]
fn completion_echo_prepends_the_prompt_text() {
    let script = Script::saying(&[" upon"], FinishReason::Stop);
    let body = json_of(route(&completion(json!({"echo": true})), &script));
    assert_eq!(body["choices"][0]["text"], "Once upon");

    // Token prompts are echoed as their text (the script's ids are bytes).
    let script = Script::saying(&[" upon"], FinishReason::Stop);
    let body = json_of(route(&completion(json!({"echo": true, "prompt": [79, 110]})), &script));
    assert_eq!(body["choices"][0]["text"], "On upon");
}

#[test]
fn completion_errors_name_the_prompt() {
    let overflow = Error::ContextOverflow(ContextOverflow { prompt_tokens: 5000, context_length: 4096 });
    let error = assert_openai_error(route(&completion(json!({})), &Script::refusing(overflow)), 400);
    assert_eq!(error["param"], "prompt");
    assert_eq!(error["code"], "context_length_exceeded");
    let error = assert_openai_error(route(&completion(json!({"model": "nope"})), &Script::new(Vec::new())), 404);
    assert_eq!(error["code"], "model_not_found");
}

#[test]
fn streamed_completion_sends_text_chunks_usage_and_done() {
    let script = Script::saying(&["Once", " upon"], FinishReason::Stop);
    let request = completion(json!({"stream": true, "stream_options": {"include_usage": true}}));
    let response = route(&request, &script);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    let frames = frames(response);
    assert_eq!(frames.len(), 5, "{frames:#?}");
    let chunks: Vec<Value> = frames[..4].iter().map(|f| frame_json(f)).collect();
    let id = chunks[0]["id"].as_str().expect("an id");
    assert!(id.starts_with("cmpl-"));
    for chunk in &chunks {
        assert_eq!(chunk["object"], "text_completion");
        assert_eq!(chunk["id"], id);
        assert_eq!(chunk["model"], MODEL);
    }
    assert_eq!(chunks[0]["choices"][0]["text"], "Once");
    assert_eq!(chunks[0]["choices"][0]["finish_reason"], Value::Null);
    assert_eq!(chunks[0]["usage"], Value::Null);
    assert_eq!(chunks[1]["choices"][0]["text"], " upon");
    assert_eq!(chunks[2]["choices"][0]["text"], "");
    assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[3]["choices"], json!([]));
    assert_eq!(chunks[3]["usage"]["completion_tokens"], 2);
    assert_eq!(chunks[3]["usage"]["total_tokens"], 9);
    assert_eq!(frames[4], "data: [DONE]\n\n");
}

#[test]
fn streamed_completion_echoes_the_prompt_first() {
    let script = Script::saying(&[" upon"], FinishReason::Stop);
    let frames = frames(route(&completion(json!({"stream": true, "echo": true})), &script));
    assert_eq!(frame_json(&frames[0])["choices"][0]["text"], "Once");
    assert_eq!(frame_json(&frames[1])["choices"][0]["text"], " upon");
    assert!(frame_json(&frames[2])["timings"].is_object(), "timings ride on the last chunk without usage");
    assert_eq!(frames.last().map(String::as_str), Some("data: [DONE]\n\n"));
}

#[test]
fn streamed_completion_error_is_one_last_event() {
    let script = Script::new(vec![Ok(Event::Text("partial".into())), Err(Error::Internal("decode failed".into()))]);
    let frames = frames(route(&completion(json!({"stream": true})), &script));
    assert_eq!(frames.len(), 2, "{frames:#?}");
    assert_eq!(frame_json(&frames[0])["choices"][0]["text"], "partial");
    assert_eq!(frame_json(&frames[1])["error"]["type"], "server_error");
    assert!(*script.dropped.borrow());
}

// Embeddings

#[test]
fn embeddings_of_a_string_are_a_float_list_with_usage() {
    let script = Script::new(Vec::new());
    let response = route(&embeddings(json!({"model": MODEL, "input": "Hi"})), &script);
    assert_eq!(response.status, 200);
    let body = json_of(response);
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], MODEL);
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["object"], "embedding");
    assert_eq!(data[0]["index"], 0);
    let vector: Vec<f64> = data[0]["embedding"].as_array().expect("floats").iter().filter_map(Value::as_f64).collect();
    assert_eq!(vector.len(), 4);
    let norm: f64 = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-6, "{norm}");
    // The script counts one token per byte plus one.
    assert_eq!(body["usage"]["prompt_tokens"], 3);
    assert_eq!(body["usage"]["total_tokens"], 3);
}

#[test]
fn embeddings_keep_input_order_and_embed_token_ids_as_their_text() {
    let script = Script::new(Vec::new());
    let request = embeddings(json!({"model": MODEL, "input": ["Hi", "Hello", [72, 105]]}));
    let body = json_of(route(&request, &script));
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.iter().map(|d| d["index"].clone()).collect::<Vec<_>>(), [json!(0), json!(1), json!(2)]);
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
    assert_eq!(data[0]["embedding"], data[2]["embedding"], "[72, 105] spells \"Hi\"");
    assert_eq!(body["usage"]["prompt_tokens"], 3 + 6 + 3);

    let one = json_of(route(&embeddings(json!({"model": MODEL, "input": [72, 105]})), &script));
    assert_eq!(one["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(one["data"][0]["embedding"], data[0]["embedding"]);
}

#[test]
fn embeddings_in_base64_are_the_little_endian_floats() {
    assert_eq!(crate::routes::openai::base64_f32(&[1.0]), "AACAPw==");
    assert_eq!(crate::routes::openai::base64_f32(&[1.0, -2.0]), "AACAPwAAAMA=");
    assert_eq!(crate::routes::openai::base64_f32(&[0.5, 0.25, 3.0]), "AAAAPwAAgD4AAEBA");
    assert_eq!(crate::routes::openai::base64_f32(&[]), "");

    let script = Script::new(Vec::new());
    let float = json_of(route(&embeddings(json!({"model": MODEL, "input": "Hi"})), &script));
    let base64 =
        json_of(route(&embeddings(json!({"model": MODEL, "input": "Hi", "encoding_format": "base64"})), &script));
    let floats: Vec<f32> =
        float["data"][0]["embedding"].as_array().expect("floats").iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(base64["data"][0]["embedding"], crate::routes::openai::base64_f32(&floats));
}

#[test]
fn embeddings_dimensions_must_be_the_models() {
    let script = Script::new(Vec::new());
    let ok = route(&embeddings(json!({"model": MODEL, "input": "Hi", "dimensions": 4})), &script);
    assert_eq!(ok.status, 200);
    let error =
        assert_openai_error(route(&embeddings(json!({"model": MODEL, "input": "Hi", "dimensions": 3})), &script), 400);
    assert_eq!(error["param"], "dimensions");
    assert!(error["message"].as_str().is_some_and(|m| m.contains('4')), "{error}");
}

#[test]
fn embeddings_refuse_bad_input() {
    let cases = [
        (json!({"model": MODEL, "input": ""}), "input"),
        (json!({"model": MODEL, "input": []}), "input"),
        (json!({"model": MODEL, "input": ["a", ""]}), "input[1]"),
        (json!({"model": MODEL, "input": [[]]}), "input[0]"),
        (json!({"model": MODEL, "input": [[1, -1]]}), "input[0][1]"),
        (json!({"model": MODEL, "input": [1, "a"]}), "input[0]"),
        (json!({"model": MODEL, "input": 5}), "input"),
        (json!({"model": MODEL}), "input"),
        (json!({"input": "Hi"}), "model"),
        (json!({"model": MODEL, "input": "Hi", "encoding_format": "binary"}), "encoding_format"),
        (json!({"model": MODEL, "input": "Hi", "dimensions": 0}), "dimensions"),
        (json!({"model": MODEL, "input": "Hi", "user": 1}), "user"),
    ];
    let script = Script::new(Vec::new());
    for (body, param) in cases {
        let error = assert_openai_error(route(&embeddings(body.clone()), &script), 400);
        assert_eq!(error["param"], param, "{body}: {error}");
    }
    let error = assert_openai_error(route(&embeddings(json!({"model": "nope", "input": "Hi"})), &script), 404);
    assert_eq!(error["code"], "model_not_found");
}

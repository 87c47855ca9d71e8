//! Ollama's native API: NDJSON framing, nanosecond durations, options
//! mapped onto the engine's sampling, model listings and Ollama's error
//! shape.

use super::script::*;
use crate::engine_client::Constraint;
use crate::routes::ollama::{digest, parameter_size};
use crate::wire::rfc3339;

fn generate(extra: Value) -> Request {
    post("/api/generate", &merged(json!({"model": MODEL, "prompt": "Tell me"}), extra))
}

fn ollama_chat(extra: Value) -> Request {
    post("/api/chat", &merged(json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}), extra))
}

fn merged(mut body: Value, extra: Value) -> Value {
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

/// The lines of an NDJSON stream, checking that each piece is exactly one
/// newline-terminated JSON object.
fn ndjson(response: Response) -> Vec<Value> {
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/x-ndjson"));
    frames(response)
        .iter()
        .map(|frame| {
            let line = frame.strip_suffix('\n').unwrap_or_else(|| panic!("line lacks its newline: {frame:?}"));
            assert!(!line.contains('\n'), "one object per line: {frame:?}");
            serde_json::from_str(line).expect("each line is JSON")
        })
        .collect()
}

/// Asserts Ollama's `{"error": "message"}` with `status`, returning the
/// message.
fn ollama_error(response: Response, status: u16) -> String {
    assert_eq!(response.status, status);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = json_of(response);
    let object = body.as_object().expect("an object");
    assert_eq!(object.len(), 1, "only the error: {body}");
    body["error"].as_str().unwrap_or_else(|| panic!("error is a string: {body}")).to_string()
}

fn is_rfc3339_utc(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() >= 20
        && text.ends_with('Z')
        && [4, 7].iter().all(|&i| b[i] == b'-')
        && b[10] == b'T'
        && [13, 16].iter().all(|&i| b[i] == b':')
        && text[..4].bytes().all(|c| c.is_ascii_digit())
}

#[test]
fn generate_streams_ndjson_by_default_and_ends_with_nanosecond_durations() {
    let script = Script::saying(&["Once", " upon"], FinishReason::Stop);
    let lines = ndjson(route(&generate(json!({})), &script));
    assert_eq!(lines.len(), 3);
    for (line, piece) in lines.iter().zip(["Once", " upon"]) {
        assert_eq!(line["model"], MODEL);
        assert_eq!(line["response"], piece);
        assert_eq!(line["done"], false);
        assert!(is_rfc3339_utc(line["created_at"].as_str().unwrap()), "{line}");
        assert!(line.get("done_reason").is_none());
    }
    let last = &lines[2];
    assert_eq!(last["response"], "");
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    // The script's usage: queue 1 ms, prompt 4 ms, generation 15 ms.
    assert_eq!(last["total_duration"], 20_000_000);
    assert_eq!(last["load_duration"], 1_000_000);
    assert_eq!(last["prompt_eval_duration"], 4_000_000);
    assert_eq!(last["eval_duration"], 15_000_000);
    assert_eq!(last["prompt_eval_count"], 7);
    assert_eq!(last["eval_count"], 2);
    assert!(*script.dropped.borrow(), "the generation is released after the last line");
}

#[test]
fn generate_without_stream_answers_one_object_with_the_whole_response() {
    let script = Script::saying(&["Once", " upon"], FinishReason::Length);
    let response = route(&generate(json!({"stream": false})), &script);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let body = json_of(response);
    assert_eq!(body["response"], "Once upon");
    assert_eq!(body["done"], true);
    assert_eq!(body["done_reason"], "length");
    assert_eq!(body["eval_count"], 2);
    assert_eq!(body["total_duration"], 20_000_000);
}

#[test]
fn generate_renders_a_chat_unless_raw() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    route(&generate(json!({"system": "Be brief.", "stream": false})), &script);
    match script.started().prompt {
        Prompt::Chat(messages) => {
            let pairs: Vec<_> = messages.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
            assert_eq!(pairs, [("system", "Be brief."), ("user", "Tell me")]);
        }
        other => panic!("expected a chat, got {other:?}"),
    }
    route(&generate(json!({"stream": false})), &script);
    assert!(matches!(script.started().prompt, Prompt::Chat(m) if m.len() == 1 && m[0].role == "user"));
    route(&generate(json!({"raw": true, "system": "ignored", "stream": false})), &script);
    assert!(matches!(script.started().prompt, Prompt::Text(t) if t == "Tell me"));
}

#[test]
fn empty_prompt_answers_like_a_load_without_generating() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    let body = json_of(route(&post("/api/generate", &json!({"model": MODEL})), &script));
    assert_eq!(body["done"], true);
    assert_eq!(body["done_reason"], "load");
    assert_eq!(body["response"], "");
    assert!(script.started.borrow().is_none());
    let body = json_of(route(&post("/api/chat", &json!({"model": MODEL, "messages": []})), &script));
    assert_eq!(body["done_reason"], "load");
    assert_eq!(body["message"], json!({"role": "assistant", "content": ""}));
    assert!(script.started.borrow().is_none());
    let unknown = post("/api/generate", &json!({"model": "nope"}));
    assert_eq!(ollama_error(route(&unknown, &script), 404), "model \"nope\" not found");
}

#[test]
fn chat_streams_assistant_messages() {
    let script = Script::saying(&["Hel", "lo"], FinishReason::Length);
    let lines = ndjson(route(&ollama_chat(json!({})), &script));
    let contents: Vec<_> = lines.iter().map(|l| l["message"]["content"].as_str().unwrap().to_string()).collect();
    assert_eq!(contents, ["Hel", "lo", ""]);
    assert!(lines.iter().all(|l| l["message"]["role"] == "assistant"));
    assert_eq!(lines[2]["done_reason"], "length");
    assert_eq!(lines[2]["eval_duration"], 15_000_000);
    assert!(matches!(script.started().prompt, Prompt::Chat(m) if m[0].content == "Hi"));

    let body = json_of(route(&ollama_chat(json!({"stream": false})), &script));
    assert_eq!(body["message"], json!({"role": "assistant", "content": "Hello"}));
}

#[test]
fn options_map_onto_the_engine() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    let options = json!({
        "num_predict": 12, "temperature": 0.3, "top_k": 5, "top_p": 0.5, "min_p": 0.05,
        "repeat_penalty": 1.3, "repeat_last_n": 32, "presence_penalty": 0.4, "frequency_penalty": -0.2,
        "seed": 42, "stop": ["\n", ""], "num_ctx": 2048, "mirostat": 2, "num_thread": 8,
    });
    route(&generate(json!({"options": options, "stream": false})), &script);
    let p = script.started().params;
    assert_eq!(p.max_tokens, 12);
    assert_eq!(p.temperature, 0.3);
    assert_eq!(p.top_k, 5);
    assert_eq!(p.top_p, 0.5);
    assert_eq!(p.min_p, 0.05);
    assert_eq!(p.repeat_penalty, 1.3);
    assert_eq!(p.repeat_last_n, 32);
    assert_eq!(p.presence_penalty, 0.4);
    assert_eq!(p.frequency_penalty, -0.2);
    assert_eq!(p.seed, Some(42));
    assert_eq!(p.stop, ["\n"]);
    assert_eq!(p.priority, Priority::Interactive);
}

#[test]
fn absent_options_take_ollamas_defaults() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    route(&ollama_chat(json!({"stream": false})), &script);
    let p = script.started().params;
    assert_eq!(p.max_tokens, 0, "until the context is full");
    assert_eq!(p.temperature, 0.8);
    assert_eq!(p.top_k, 40);
    assert_eq!(p.top_p, 0.9);
    assert_eq!(p.min_p, 0.0);
    assert_eq!(p.repeat_penalty, 1.1);
    assert_eq!(p.repeat_last_n, 64);
    assert_eq!(p.seed, None);
    assert!(p.stop.is_empty());
}

#[test]
fn special_option_values_follow_ollama() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    for num_predict in [-1, -2, 0] {
        let options = json!({"num_predict": num_predict, "repeat_last_n": -1, "seed": -1, "stop": "END"});
        route(&generate(json!({"options": options, "stream": false})), &script);
        let p = script.started().params;
        assert_eq!(p.max_tokens, 0, "num_predict {num_predict}");
        assert_eq!(p.repeat_last_n, 4096, "-1 looks back over the whole context");
        assert_eq!(p.seed, None, "a negative seed draws a fresh one");
        assert_eq!(p.stop, ["END"]);
    }
    route(&generate(json!({"options": {"num_ctx": 1_000_000}, "stream": false})), &script);
    assert_eq!(script.started().params.max_tokens, 0, "num_ctx beyond the model is accepted and ignored");
}

#[test]
fn wrong_option_types_and_values_are_400_in_ollamas_shape() {
    let cases = [
        json!({"options": "fast"}),
        json!({"options": {"temperature": "hot"}}),
        json!({"options": {"top_k": 1.5}}),
        json!({"options": {"num_predict": -3}}),
        json!({"options": {"repeat_last_n": -2}}),
        json!({"options": {"top_p": 0}}),
        json!({"options": {"stop": [1]}}),
        json!({"options": {"stop": vec!["x"; 17]}}),
        json!({"options": {"stop": ["x".repeat(257)]}}),
        json!({"options": {"num_ctx": 0}}),
        json!({"options": {"seed": "x"}}),
        json!({"stream": "yes"}),
        json!({"keep_alive": [1]}),
        json!({"raw": 1}),
    ];
    for extra in cases {
        let script = Script::saying(&["x"], FinishReason::Stop);
        let message = ollama_error(route(&generate(extra.clone()), &script), 400);
        assert!(!message.is_empty(), "{extra}");
        assert!(script.started.borrow().is_none(), "{extra} never reaches the engine");
    }
    let script = Script::saying(&["x"], FinishReason::Stop);
    let message = ollama_error(route(&generate(json!({"options": {"temperature": "hot"}})), &script), 400);
    assert!(message.contains("options.temperature"), "{message}");
}

#[test]
fn format_asks_for_json_or_a_schema() {
    for (format, expected) in [
        (json!("json"), Some(Constraint::JsonObject)),
        (
            json!({"type": "object", "properties": {"b": {}, "a": {}}}),
            Some(Constraint::JsonSchema(r#"{"type":"object","properties":{"b":{},"a":{}}}"#.into())),
        ),
        (json!(""), None),
    ] {
        for request in [generate(json!({"format": format})), ollama_chat(json!({"format": format}))] {
            let script = Script::saying(&["{}"], FinishReason::Stop);
            assert_eq!(route(&request, &script).status, 200);
            assert_eq!(format!("{:?}", script.started().params.constraint), format!("{expected:?}"), "{format}");
        }
    }
}

#[test]
fn unsupported_fields_are_400_but_empty_values_pass() {
    let refused = [
        generate(json!({"suffix": "end"})),
        generate(json!({"template": "{{ .Prompt }}"})),
        generate(json!({"format": "yaml"})),
        generate(json!({"format": 3})),
        generate(json!({"format": ["json"]})),
        generate(json!({"images": ["aGk="]})),
        generate(json!({"context": [1, 2]})),
        generate(json!({"think": true})),
        ollama_chat(json!({"tools": [{"type": "function"}]})),
        ollama_chat(json!({"tools": [{"type": "function", "function": {"name": "f"}}], "format": "json"})),
        ollama_chat(json!({"format": false})),
        post("/api/chat", &json!({"model": MODEL, "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]})),
        post("/api/chat", &json!({"model": MODEL, "messages": [{"role": "robot", "content": "x"}]})),
        post(
            "/api/chat",
            &json!({"model": MODEL, "messages": [{"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}]}),
        ),
        post("/api/chat", &json!({"model": MODEL, "messages": ["hi"]})),
        post("/api/generate", &json!({"prompt": "x"})),
    ];
    for request in refused {
        let script = Script::saying(&["x"], FinishReason::Stop);
        ollama_error(route(&request, &script), 400);
        assert!(script.started.borrow().is_none());
    }
    let accepted = [
        generate(json!({"suffix": "", "template": "", "format": "", "images": [], "think": false, "keep_alive": "5m"})),
        ollama_chat(json!({"tools": [], "format": null, "keep_alive": 0})),
    ];
    for request in accepted {
        let script = Script::saying(&["x"], FinishReason::Stop);
        assert_eq!(route(&request, &script).status, 200);
    }
}

#[test]
fn engine_errors_use_ollamas_shape_and_statuses() {
    let overloaded = Script::refusing(Error::Overloaded("queue full: 64 waiting".into()));
    let response = route(&generate(json!({})), &overloaded);
    assert_eq!(response.header("retry-after"), Some("1"));
    let message = ollama_error(response, 503);
    assert!(!message.contains("64"), "no internals: {message}");

    let script = Script::saying(&["x"], FinishReason::Stop);
    let message = ollama_error(route(&ollama_chat(json!({"model": "ghost"})), &script), 404);
    assert_eq!(message, "model \"ghost\" not found");

    let overflow = Error::ContextOverflow(ContextOverflow { prompt_tokens: 9000, context_length: 4096 });
    let message = ollama_error(route(&generate(json!({})), &Script::refusing(overflow)), 400);
    assert!(message.contains("9000") && message.contains("4096"), "{message}");

    let message = ollama_error(route(&Request::new("POST", "/api/chat").with_body("{"), &script), 400);
    assert!(message.contains("JSON"), "{message}");
}

#[test]
fn error_after_streaming_began_is_a_last_error_line() {
    let script = Script::new(vec![
        Ok(Event::Text("Once".into())),
        Err(Error::Internal("the engine fell over".into())),
        Ok(Event::Text("never".into())),
    ]);
    let lines = ndjson(route(&generate(json!({})), &script));
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["response"], "Once");
    assert_eq!(lines[1], json!({"error": "the engine fell over"}));
    assert!(*script.dropped.borrow());
}

#[test]
fn model_names_may_carry_the_latest_tag() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    let body = json_of(route(&generate(json!({"model": format!("{MODEL}:latest"), "stream": false})), &script));
    assert_eq!(body["model"], format!("{MODEL}:latest"), "the reply echoes the name asked for");
    assert_eq!(script.started().model, MODEL);
}

#[test]
fn tags_lists_models_with_details_and_an_identity_digest() {
    let script = Script::new(Vec::new());
    let body = json_of(route(&Request::new("GET", "/api/tags"), &script));
    let models = body["models"].as_array().unwrap();
    assert_eq!(models.len(), 1);
    let m = &models[0];
    assert_eq!(m["name"], MODEL);
    assert_eq!(m["model"], MODEL);
    assert_eq!(m["size"], 1_100_000_000u64);
    assert_eq!(m["modified_at"], "2023-11-14T22:13:20Z");
    let digest = m["digest"].as_str().unwrap();
    assert_eq!(digest.len(), 16);
    assert!(digest.bytes().all(|c| c.is_ascii_hexdigit()) && !digest.contains("sha256"));
    assert_eq!(
        m["details"],
        json!({
            "parent_model": "", "format": "gguf", "family": "bitnet-b1.58", "families": ["bitnet-b1.58"],
            "parameter_size": "2.4B", "quantization_level": "TQ2_0",
        })
    );
    let response = route(&Request::new("POST", "/api/tags"), &script);
    assert_eq!(response.header("allow"), Some("GET"));
    assert!(ollama_error(response, 405).contains("GET"));
    let response = route(&Request::new("GET", "/api/generate"), &script);
    assert_eq!(response.header("allow"), Some("POST"));
    ollama_error(response, 405);
}

#[test]
fn digest_is_stable_and_changes_with_the_file() {
    let model = Script::new(Vec::new()).list_models().remove(0);
    assert_eq!(digest(&model), digest(&model.clone()));
    let mut replaced = model.clone();
    replaced.modified_at += 1;
    assert_ne!(digest(&model), digest(&replaced));
    let mut resized = model.clone();
    resized.size_bytes += 1;
    assert_ne!(digest(&model), digest(&resized));
}

#[test]
fn parameter_sizes_read_like_ollamas() {
    assert_eq!(parameter_size(2_400_000_000), "2.4B");
    assert_eq!(parameter_size(7_000_000_000), "7B");
    assert_eq!(parameter_size(2_960_000_000), "3B");
    assert_eq!(parameter_size(125_500_000), "125.5M");
    assert_eq!(parameter_size(4_200), "4.2K");
    assert_eq!(parameter_size(999), "999");
}

#[test]
fn rfc3339_spells_utc_dates() {
    assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(951_782_400, 0), "2000-02-29T00:00:00Z");
    assert_eq!(rfc3339(951_868_799, 0), "2000-02-29T23:59:59Z");
    assert_eq!(rfc3339(1_700_000_000, 123_456_789), "2023-11-14T22:13:20.123456Z");
    assert_eq!(rfc3339(4_107_542_400, 0), "2100-03-01T00:00:00Z");
    assert_eq!(rfc3339(253_402_300_799, 0), "9999-12-31T23:59:59Z");
}

#[test]
fn show_describes_the_model() {
    let script = Script::new(Vec::new());
    let body = json_of(route(&post("/api/show", &json!({"model": MODEL})), &script));
    assert_eq!(body["model_info"]["general.architecture"], "bitnet-b1.58");
    assert_eq!(body["model_info"]["general.parameter_count"], 2_400_000_000u64);
    assert_eq!(body["model_info"]["bitnet-b1.58.context_length"], 4096);
    assert_eq!(body["details"]["parameter_size"], "2.4B");
    assert_eq!(body["modified_at"], "2023-11-14T22:13:20Z");
    assert_eq!(body["template"], "<system>{{ .System }}<user>{{ .Prompt }}<assistant>");
    let parameters = body["parameters"].as_str().unwrap();
    assert!(parameters.contains("temperature 0.8") && parameters.contains("top_k 40"), "{parameters}");
    let modelfile = body["modelfile"].as_str().unwrap();
    assert!(modelfile.contains(&format!("FROM {MODEL}")) && modelfile.contains("PARAMETER top_p 0.9"), "{modelfile}");

    let legacy = json_of(route(&post("/api/show", &json!({"name": MODEL})), &script));
    assert_eq!(legacy["details"], body["details"]);
    assert_eq!(ollama_error(route(&post("/api/show", &json!({"model": "x"})), &script), 404), "model \"x\" not found");
    ollama_error(route(&post("/api/show", &json!({})), &script), 400);
}

#[test]
fn ps_lists_the_loaded_models_in_memory() {
    let script = Script::new(Vec::new());
    let body = json_of(route(&Request::new("GET", "/api/ps"), &script));
    let m = &body["models"][0];
    assert_eq!(m["name"], MODEL);
    assert_eq!(m["size_vram"], 0);
    assert_eq!(m["context_length"], 4096);
    assert_eq!(m["expires_at"], "9999-12-31T23:59:59Z");
    assert_eq!(m["details"]["format"], "gguf");
}

#[test]
fn version_is_the_handlers() {
    let body = json_of(route(&Request::new("GET", "/api/version"), &Script::new(Vec::new())));
    assert_eq!(body, json!({"version": HANDLER_VERSION}));
}

#[test]
fn embed_takes_a_string_or_a_list() {
    let script = Script::new(Vec::new());
    let body = json_of(route(&post("/api/embed", &json!({"model": MODEL, "input": "abc"})), &script));
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["embeddings"].as_array().unwrap().len(), 1);
    assert_eq!(body["prompt_eval_count"], 4);
    assert!(body["total_duration"].is_u64());

    let body = json_of(route(&post("/api/embed", &json!({"model": MODEL, "input": ["a", "abc"]})), &script));
    let vectors = body["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    assert_ne!(vectors[0], vectors[1]);
    assert_eq!(body["prompt_eval_count"], 2 + 4);

    let body = json_of(route(&post("/api/embed", &json!({"model": MODEL, "input": []})), &script));
    assert_eq!(body["embeddings"], json!([]));
}

#[test]
fn embed_truncates_to_the_context_unless_told_not_to() {
    let script = Script::new(Vec::new());
    let long = "a".repeat(5000);
    let body = json_of(route(&post("/api/embed", &json!({"model": MODEL, "input": long})), &script));
    // The script's tokens are bytes plus a BOS: cut to 4095 bytes, 4096 tokens.
    assert_eq!(body["prompt_eval_count"], 4096);
    let refused = post("/api/embed", &json!({"model": MODEL, "input": "", "truncate": false}));
    ollama_error(route(&refused, &script), 400);
    let bad = post("/api/embed", &json!({"model": MODEL, "input": [1]}));
    assert!(ollama_error(route(&bad, &script), 400).contains("input[0]"));
}

#[test]
fn embed_dimensions_keep_a_unit_prefix() {
    let script = Script::new(Vec::new());
    let body = json_of(route(&post("/api/embed", &json!({"model": MODEL, "input": "abc", "dimensions": 1})), &script));
    assert_eq!(body["embeddings"], json!([[1.0]]));
    let body = json_of(route(&post("/api/embed", &json!({"model": MODEL, "input": "abc", "dimensions": 9})), &script));
    assert_eq!(body["embeddings"][0].as_array().unwrap().len(), 4);
}

#[test]
fn legacy_embeddings_answer_one_vector() {
    let script = Script::new(Vec::new());
    let body = json_of(route(&post("/api/embeddings", &json!({"model": MODEL, "prompt": "abc"})), &script));
    let vector: Vec<f64> = body["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(vector.len(), 4);
    assert!((vector.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-6);
    let body = json_of(route(&post("/api/embeddings", &json!({"model": MODEL})), &script));
    assert_eq!(body["embedding"], json!([]));
    let unknown = post("/api/embeddings", &json!({"model": "x", "prompt": "abc"}));
    assert_eq!(ollama_error(route(&unknown, &script), 404), "model \"x\" not found");
}

#[test]
fn tools_are_offered_and_a_call_comes_back_in_ollamas_shape() {
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let said = [r#"{"name": "get_weather", "#, r#""arguments": {"city": "Oslo"}}"#];
    let script = Script::saying(&said, FinishReason::Stop);
    let body = json_of(route(&ollama_chat(json!({"tools": tools, "stream": false})), &script));
    assert!(matches!(script.started().params.constraint, Some(crate::engine_client::Constraint::JsonOrText(_))));
    assert_eq!(
        body["message"]["tool_calls"],
        json!([{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}])
    );
    assert_eq!(body["message"]["content"], "");
    assert_eq!(body["done"], true);

    let script = Script::saying(&said, FinishReason::Stop);
    let lines = ndjson(route(&ollama_chat(json!({"tools": tools})), &script));
    assert_eq!(lines.len(), 2, "the call, then the last line: {lines:?}");
    assert_eq!(lines[0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(lines[1]["done"], true);

    // A conversation carrying the call and its result.
    let script = Script::saying(&["Sunny."], FinishReason::Stop);
    let messages = json!([
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]);
    let request = post("/api/chat", &json!({"model": MODEL, "messages": messages, "tools": tools, "stream": false}));
    assert_eq!(json_of(route(&request, &script))["message"]["content"], "Sunny.");
    let Prompt::Chat(sent) = script.started().prompt else { panic!("a chat") };
    assert_eq!(sent[3].content, r#"{"tool_result":{"name":"get_weather","content":"sunny"}}"#);
}

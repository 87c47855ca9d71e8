//! Spin's remote LLM protocol: `/infer` and `/embed`.

use super::script::*;

#[test]
fn infer_maps_spin_options_and_answers_with_spin_usage() {
    let script = Script::saying(&["Once", " upon"], FinishReason::Length);
    let body = json!({"model": MODEL, "prompt": "Tell me", "options": {
        "maxTokens": 12, "temperature": 0.0, "topK": 5, "topP": 0.5,
        "repeatPenalty": 1.3, "repeatPenaltyLastNTokenCount": 32}});
    let response = route(&post("/infer", &body), &script);
    assert_eq!(response.status, 200);
    let json = json_of(response);
    assert_eq!(json["text"], "Once upon");
    assert_eq!(json["usage"], json!({"promptTokenCount": 7, "generatedTokenCount": 2}));
    let started = script.started();
    assert!(matches!(started.prompt, Prompt::Text(ref t) if t == "Tell me"));
    let p = started.params;
    assert_eq!((p.max_tokens, p.top_k, p.repeat_last_n), (12, 5, 32));
    assert_eq!((p.temperature, p.top_p, p.repeat_penalty), (0.0, 0.5, 1.3));
}

#[test]
fn infer_without_options_uses_spins_defaults() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    let response = route(&post("/infer", &json!({"model": MODEL, "prompt": "Hi"})), &script);
    assert_eq!(response.status, 200);
    let p = script.started().params;
    assert_eq!((p.max_tokens, p.top_k, p.repeat_last_n), (100, 40, 64));
    assert_eq!((p.temperature, p.top_p, p.repeat_penalty), (0.8, 0.9, 1.1));
}

#[test]
fn infer_refuses_bad_input_with_400_and_unknown_models_with_404() {
    for body in [
        json!({"prompt": "Hi"}),
        json!({"model": MODEL}),
        json!({"model": MODEL, "prompt": "Hi", "options": []}),
        json!({"model": MODEL, "prompt": "Hi", "options": {"maxTokens": "many"}}),
        json!({"model": MODEL, "prompt": "Hi", "options": {"topP": 3}}),
    ] {
        param_error(post("/infer", &body));
    }
    let script = Script::saying(&["x"], FinishReason::Stop);
    assert_openai_error(route(&post("/infer", &json!({"model": "nope", "prompt": "Hi"})), &script), 404);
}

#[test]
fn embed_returns_one_unit_vector_per_input_and_counts_tokens() {
    let script = Script::saying(&[], FinishReason::Stop);
    let response = route(&post("/embed", &json!({"model": MODEL, "input": ["a", "bcd"]})), &script);
    assert_eq!(response.status, 200);
    let json = json_of(response);
    let vectors = json["embeddings"].as_array().unwrap();
    assert_eq!(vectors.len(), 2);
    for v in vectors {
        let norm: f64 = v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap().powi(2)).sum();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    assert_ne!(vectors[0], vectors[1]);
    assert_eq!(json["usage"]["promptTokenCount"], 2 + 4);
}

#[test]
fn embed_refuses_missing_empty_or_mistyped_input() {
    for body in [
        json!({"model": MODEL}),
        json!({"model": MODEL, "input": []}),
        json!({"model": MODEL, "input": "a string, not a list"}),
        json!({"model": MODEL, "input": ["ok", 3]}),
        json!({"model": MODEL, "input": [""]}),
    ] {
        let script = Script::saying(&[], FinishReason::Stop);
        assert_openai_error(route(&post("/embed", &body), &script), 400);
    }
}

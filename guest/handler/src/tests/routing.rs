//! Routing: unknown paths and methods, the version stamp, health, the
//! model list, and how errors and refusals are answered.

use super::script::*;

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
fn head_is_answered_on_every_get_route_without_a_body() {
    let script = Script::new(Vec::new());
    for path in ["/health", "/v1/models", "/api/tags", "/"] {
        let response = route(&Request::new("HEAD", path), &script);
        assert_eq!(response.status, 200, "{path}");
        assert!(matches!(&response.body, Body::Full(b) if b.is_empty()), "{path}");
    }
    assert_eq!(route(&Request::new("HEAD", "/v1/chat/completions"), &script).status, 405);
}

#[test]
fn openai_routes_answer_without_v1_as_llama_server_does() {
    let script = Script::saying(&["ok"], FinishReason::Stop);
    assert_eq!(json_of(route(&Request::new("GET", "/models"), &script))["data"][0]["id"], MODEL);
    assert_eq!(route(&Request::new("GET", &format!("/models/{MODEL}")), &script).status, 200);
    let answer = json_of(route(&post("/chat/completions", &hello(json!({}))), &script));
    assert_eq!(answer["object"], "chat.completion");
    let script = Script::saying(&["ok"], FinishReason::Stop);
    let answer = json_of(route(&post("/completions", &json!({"model": MODEL, "prompt": "Hi"})), &script));
    assert_eq!(answer["object"], "text_completion");
}

#[test]
fn slots_is_501_saying_where_the_same_facts_are() {
    let script = Script::new(Vec::new());
    let response = route(&Request::new("GET", "/slots"), &script);
    assert_eq!(response.status, 501);
    let body = json_of(response);
    assert_eq!(body["error"]["code"], 501);
    assert!(body["error"]["message"].as_str().unwrap().contains("/health"), "{body}");
}

#[test]
fn methods_are_case_sensitive() {
    let script = Script::new(Vec::new());
    let response = route(&Request::new("get", "/health"), &script);
    assert_eq!(response.header("allow"), Some("GET"));
    assert_openai_error(response, 405);
}

#[test]
fn a_stopping_server_is_503_not_a_rate_limit() {
    let script = Script::refusing(Error::Unavailable("the server is shutting down".into()));
    let error = assert_openai_error(route(&chat(hello(json!({}))), &script), 503);
    assert_eq!(error["code"], "server_shutting_down");
    assert!(error["message"].as_str().unwrap().contains("shutting down"), "{error}");
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
            "device": "cpu avx2",
            "device_memory_bytes": 0,
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

// Errors and refusals

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
        ApiError::engine(Error::Unavailable("x".into()), "prompt"),
        ApiError::engine(Error::Internal("x".into()), "prompt"),
        ApiError::Forbidden("x".into()),
        ApiError::NotImplemented("x".into()),
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
    assert!(body_limit::check_declared_length(Some("1048576"), MAX_BODY_BYTES).is_ok());
    assert!(body_limit::check_declared_length(Some("not a number"), MAX_BODY_BYTES).is_ok());
    assert!(matches!(body_limit::check_declared_length(Some("1048577"), MAX_BODY_BYTES), Err(ApiError::BodyTooLarge)));

    let mut body = Vec::new();
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..MAX_BODY_BYTES / chunk.len() {
        body_limit::append_body_chunk(&mut body, &chunk, MAX_BODY_BYTES).expect("within the limit");
    }
    let err = body_limit::append_body_chunk(&mut body, b"x", MAX_BODY_BYTES).expect_err("one byte over");
    let error = assert_openai_error(refuse(&err), 413);
    assert_eq!(error["code"], "request_too_large");
}

#[test]
fn app_routes_without_a_database_are_503_in_open_webuis_shape() {
    let script = Script::new(Vec::new());
    for (method, path) in [("GET", "/api/config"), ("POST", "/api/v1/auths/signin"), ("GET", "/api/v1/chats/")] {
        let response = route(&Request::new(method, path), &script);
        assert_eq!(response.status, 503, "{method} {path}");
        assert_eq!(response.header("cache-control"), Some("no-store"));
        assert!(json_of(response)["detail"].is_string(), "{method} {path}");
    }
    // Ollama's `/api/version` and the model APIs are not the app's.
    assert_eq!(route(&Request::new("GET", "/api/version"), &script).status, 200);
}

#[test]
fn what_a_runtime_lacks_is_503_with_its_reason() {
    let script = Script::refusing(Error::Unavailable("no model: set TERN_MODEL to a GGUF file".into()));
    let error = assert_openai_error(route(&chat(hello(json!({}))), &script), 503);
    assert_eq!(error["code"], "unavailable");
    assert!(error["message"].as_str().unwrap().contains("TERN_MODEL"), "{error}");
}

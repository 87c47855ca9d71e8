//! `/openapi.json` describes the routes the router serves.

use super::script::*;
use crate::routes::service::OPENAPI;

fn spec() -> Value {
    serde_json::from_str(OPENAPI).expect("the OpenAPI document is JSON")
}

#[test]
fn the_document_is_served_as_json_with_the_handler_version() {
    let script = Script::saying(&[], FinishReason::Stop);
    let response = route(&Request::new("GET", "/openapi.json"), &script);
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("application/json"));
    let served = json_of(response);
    assert_eq!(served, spec());
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(served["info"]["version"], HANDLER_VERSION);
}

#[test]
fn every_documented_operation_is_routed() {
    let script = Script::saying(&["x"], FinishReason::Stop);
    let spec = spec();
    let paths = spec["paths"].as_object().unwrap();
    assert!(paths.len() >= 20, "{}", paths.len());
    for (path, ops) in paths {
        let concrete = path.replace("{id}", "job-1");
        for (method, op) in ops.as_object().unwrap() {
            if op["x-tern-host"] == true {
                continue; // answered by the host, never reaches the handler
            }
            let mut request = Request::new(&method.to_uppercase(), &concrete);
            if path == "/api/chat-queue" && method != "post" {
                request = Request::new(&method.to_uppercase(), "/api/chat-queue?requestId=job-1");
            }
            let response = route(&request.with_body("{}"), &script);
            assert_ne!(response.status, 405, "{method} {path}");
            if let Body::Full(bytes) = &response.body {
                let body: Value = serde_json::from_slice(bytes).unwrap_or(Value::Null);
                assert_ne!(body["error"]["code"], "unknown_url", "{method} {path}");
            }
        }
    }
}

#[test]
fn every_reference_resolves() {
    let spec = spec();
    let text = spec.to_string();
    let schemas = spec["components"]["schemas"].as_object().unwrap();
    for piece in text.split("\"#/components/schemas/").skip(1) {
        let name = &piece[..piece.find('"').unwrap()];
        assert!(schemas.contains_key(name), "{name}");
    }
}

//! `/admin/component`: the host's own route for the handler component.
//!
//! - `GET` reports the active component: digest, size, source, load time,
//!   whether its compiled code came from the disk cache, and its world.
//! - `POST` with the component's bytes as the body compiles and links it off
//!   the request path and swaps it in; 422 with the reason if it fails (the
//!   active one keeps serving).
//!
//! Both need an admin key (`--admin-key`); without one configured the route
//! answers 403, so a server never takes code from an unauthenticated caller.

use std::sync::Arc;

use http_body_util::BodyExt as _;

use crate::auth::Keys;
use crate::components::Components;
use crate::responses::{error_response, text_response, unauthorized, Response};

/// Answers `/admin/component` for callers holding one of `admin_keys`;
/// uploads are at most `max_bytes`.
pub async fn component(
    components: &Arc<Components>,
    admin_keys: &Keys,
    max_bytes: usize,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    if admin_keys.is_empty() {
        return error_response(
            403,
            "invalid_request_error",
            "admin_disabled",
            "The admin API is off; start tern with --admin-key to use it.",
        );
    }
    if !admin_keys.allows(req.headers()) {
        return unauthorized();
    }
    match *req.method() {
        http::Method::GET => describe(components),
        http::Method::POST => upload(components, max_bytes, req).await,
        _ => {
            let mut resp = error_response(
                405,
                "invalid_request_error",
                "method_not_allowed",
                "Use GET to see the active component, POST to replace it.",
            );
            resp.headers_mut().insert(http::header::ALLOW, http::HeaderValue::from_static("GET, POST"));
            resp
        }
    }
}

fn describe(components: &Components) -> Response {
    text_response(200, "application/json", components.active().describe().to_string())
}

async fn upload(components: &Arc<Components>, limit: usize, req: hyper::Request<hyper::body::Incoming>) -> Response {
    let body = http_body_util::Limited::new(req.into_body(), limit);
    let wasm = match body.collect().await {
        Ok(b) => b.to_bytes().to_vec(),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return error_response(
                413,
                "invalid_request_error",
                "request_too_large",
                &format!("A component may be at most {limit} bytes."),
            );
        }
        Err(e) => {
            return error_response(400, "invalid_request_error", "bad_body", &format!("Reading the body failed: {e}"))
        }
    };
    if wasm.is_empty() {
        return error_response(400, "invalid_request_error", "empty_component", "The body must be a component.");
    }
    match components.load(wasm, "upload".into()).await {
        Ok(loaded) => text_response(200, "application/json", loaded.describe().to_string()),
        Err(e) => error_response(
            422,
            "invalid_request_error",
            "component_rejected",
            &format!("The component was rejected and the active one keeps serving: {e:#}"),
        ),
    }
}

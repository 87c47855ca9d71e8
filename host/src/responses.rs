//! The responses the host writes itself (its own routes, and refusals
//! before the handler runs): OpenAI's error shape, as the handler's.

use bytes::Bytes;
use http_body_util::BodyExt as _;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

pub type Response = hyper::Response<HyperOutgoingBody>;

/// A whole response with a fixed body.
pub fn text_response(status: u16, content_type: &'static str, body: String) -> Response {
    let body = http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    resp
}

/// An error in the OpenAI error schema.
pub fn error_response(status: u16, kind: &str, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    text_response(status, "application/json", body.to_string())
}

/// 401 in the OpenAI error schema with OpenAI's code (`invalid_api_key`)
/// and llama-server's type (`authentication_error`), for a missing or
/// wrong key.
pub fn unauthorized() -> Response {
    let mut resp = error_response(
        401,
        "authentication_error",
        "invalid_api_key",
        "Incorrect or missing API key. Send it as `Authorization: Bearer KEY`.",
    );
    resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
    resp
}

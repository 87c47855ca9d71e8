//! Every way a request can fail, and the one function that turns each into an
//! HTTP status and an OpenAI error object.

use serde_json::{json, Value};

use crate::engine_client::Error;
use crate::http::{Response, MAX_BODY_BYTES};

/// A request the handler refuses or the engine could not serve.
#[derive(Debug, Clone)]
pub enum ApiError {
    /// The body is not JSON, or not a JSON object; the text says why.
    MalformedJson(String),
    /// A request field has the wrong type or value.
    InvalidParam {
        /// The field, e.g. `max_tokens` or `messages[2].role`.
        param: String,
        /// What is wrong, in words a client can act on.
        message: String,
    },
    /// The body is larger than [`MAX_BODY_BYTES`].
    BodyTooLarge,
    /// The body could not be read from the connection.
    UnreadableBody,
    /// No route has this path.
    NotFound {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// The path exists but not with this method.
    MethodNotAllowed {
        /// The request's method.
        method: String,
        /// The methods the path accepts, for the `allow` header.
        allow: &'static str,
    },
    /// No model is loaded yet (llama.cpp's `/health` answer while loading).
    Loading,
    /// No queued job has this id (or its result expired).
    JobNotFound(String),
    /// The caller's key is valid but does not allow this (e.g. clearing the
    /// cache without the admin key); the text says what is needed.
    Forbidden(String),
    /// A route of another server that tern answers only to say why not.
    NotImplemented(String),
    /// A CORS preflight from an origin the server does not allow.
    OriginNotAllowed(String),
    /// The engine refused or failed; `prompt_param` names the request field
    /// holding the prompt, for context-overflow errors.
    Engine {
        /// The error the engine returned.
        error: Error,
        /// `messages` or `prompt`.
        prompt_param: &'static str,
    },
}

impl ApiError {
    /// A field with the wrong type or value.
    pub fn param(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidParam { param: param.into(), message: message.into() }
    }

    /// An engine error for a request whose prompt is in field `prompt_param`.
    pub fn engine(error: Error, prompt_param: &'static str) -> Self {
        ApiError::Engine { error, prompt_param }
    }
}

/// The status and OpenAI error object for `err`:
/// `{"error": {"message", "type", "param", "code"}}` with all four keys
/// present. Messages never carry internals beyond what the engine marks as
/// safe to show.
pub fn error_response(err: &ApiError) -> Response {
    let (status, body) = error_body(err);
    with_error_headers(err, Response::json(status, &body))
}

/// [`error_response`] in llama.cpp server's shape, for its routes: the same
/// status and message, with `code` the HTTP status as a number
/// (`{"error": {"code": 400, "message", "type", "param"}}`).
pub fn llama_error_response(err: &ApiError) -> Response {
    let (status, body) = llama_error_body(err);
    with_error_headers(err, Response::json(status, &body))
}

/// The status and body [`llama_error_response`] sends for `err`, for a
/// stream's last event.
pub fn llama_error_body(err: &ApiError) -> (u16, Value) {
    let (status, mut body) = error_body(err);
    body["error"]["code"] = Value::from(status);
    (status, body)
}

fn with_error_headers(err: &ApiError, response: Response) -> Response {
    match err {
        ApiError::MethodNotAllowed { allow, .. } => response.with_header("allow", allow),
        ApiError::Engine { error: Error::Overloaded(_), .. } => response.with_header("retry-after", "1"),
        _ => response,
    }
}

/// The status and body [`error_response`] sends for `err`, for answers that
/// carry an error inside another body (a failed job, a stream's last event).
pub fn error_body(err: &ApiError) -> (u16, Value) {
    let (status, kind, message, param, code): (u16, &str, String, Option<&str>, Option<&str>) = match err {
        ApiError::MalformedJson(why) => (
            400,
            "invalid_request_error",
            format!("We could not parse the JSON body of your request: {why}."),
            None,
            None,
        ),
        ApiError::InvalidParam { param, message } => {
            (400, "invalid_request_error", message.clone(), Some(param.as_str()), None)
        }
        ApiError::BodyTooLarge => (
            413,
            "invalid_request_error",
            format!("The request body is larger than the limit of {MAX_BODY_BYTES} bytes."),
            None,
            Some("request_too_large"),
        ),
        ApiError::UnreadableBody => {
            (400, "invalid_request_error", "The request body could not be read.".to_string(), None, None)
        }
        ApiError::NotFound { method, path } => {
            (404, "invalid_request_error", format!("Unknown request URL: {method} {path}."), None, Some("unknown_url"))
        }
        ApiError::MethodNotAllowed { method, allow } => (
            405,
            "invalid_request_error",
            format!("Method {method} is not allowed here; use {allow}."),
            None,
            Some("method_not_allowed"),
        ),
        ApiError::JobNotFound(id) => (
            404,
            "not_found_error",
            format!("No job `{id}`: it never existed or its result has expired."),
            None,
            Some("job_not_found"),
        ),
        ApiError::NotImplemented(why) => (501, "not_implemented_error", why.clone(), None, Some("not_implemented")),
        ApiError::Forbidden(why) => (403, "permission_error", why.clone(), None, Some("forbidden")),
        ApiError::OriginNotAllowed(origin) => (
            403,
            "invalid_request_error",
            format!("Cross-origin requests from {origin} are not allowed; see `tern serve --cors-origin`."),
            None,
            Some("origin_not_allowed"),
        ),
        ApiError::Loading => {
            // llama.cpp's exact shape, which its clients poll for; `param`
            // is added so the object still has all four keys.
            let body = json!({"error": {
                "code": 503,
                "message": "Loading model",
                "type": "unavailable_error",
                "param": null,
            }});
            return (503, body);
        }
        ApiError::Engine { error, prompt_param } => match error {
            Error::InvalidRequest(why) => (400, "invalid_request_error", why.clone(), None, None),
            Error::UnknownModel(id) => (
                404,
                "invalid_request_error",
                format!("The model `{id}` does not exist."),
                Some("model"),
                Some("model_not_found"),
            ),
            Error::ContextOverflow(overflow) => (
                400,
                "invalid_request_error",
                format!(
                    "This model's maximum context length is {} tokens, but the prompt has {} tokens.",
                    overflow.context_length, overflow.prompt_tokens
                ),
                Some(*prompt_param),
                Some("context_length_exceeded"),
            ),
            // The engine's text describes its queue, which is not the
            // client's business; the status and retry-after say enough.
            Error::Overloaded(_) => {
                (429, "rate_limit_error", "The server is busy; retry the request shortly.".to_string(), None, None)
            }
            Error::Unavailable(why) if why.contains("shutting down") => (
                503,
                "server_error",
                "The server is shutting down; send the request again to another server or once it is back.".to_string(),
                None,
                Some("server_shutting_down"),
            ),
            // What this runtime lacks (an adapter without jobs, a model
            // that did not load): the reason is the client's to read.
            Error::Unavailable(why) => (503, "server_error", why.clone(), None, Some("unavailable")),
            Error::Internal(why) => (500, "server_error", why.clone(), None, None),
        },
    };

    let body = json!({"error": {
        "message": message,
        "type": kind,
        "param": param.map_or(Value::Null, Value::from),
        "code": code.map_or(Value::Null, Value::from),
    }});
    (status, body)
}

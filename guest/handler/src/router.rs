//! The request router: a plain function from request to response.

use serde_json::{json, Value};

use crate::backend::{Backend, ModelInfo};
use crate::error::{error_response, ApiError};
use crate::http::{Request, Response};
use crate::{chat, generate};

/// Version stamped on every response as `x-tern-handler`, so a client can tell
/// which handler component served it across hot swaps.
pub const HANDLER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Answers `req` using `backend` for inference. Never panics on client input:
/// every failure becomes an OpenAI-shaped error response.
pub fn route(req: &Request, backend: &dyn Backend) -> Response {
    let response = match dispatch(req, backend) {
        Ok(response) => response,
        Err(err) => error_response(&err),
    };
    stamp(response)
}

/// The response for a request refused before routing (e.g. a body over the
/// limit), stamped like every other response.
pub fn refuse(err: &ApiError) -> Response {
    stamp(error_response(err))
}

fn stamp(response: Response) -> Response {
    response.with_header("x-tern-handler", HANDLER_VERSION)
}

fn dispatch(req: &Request, backend: &dyn Backend) -> Result<Response, ApiError> {
    let path = req.path.as_str();
    let (allow, handler): (&'static str, Handler) = match path {
        "/health" => ("GET", Handler::Health),
        "/v1/models" => ("GET", Handler::Models),
        "/v1/chat/completions" => ("POST", Handler::Chat),
        "/generate" => ("POST", Handler::Generate),
        _ => match path.strip_prefix("/v1/models/") {
            Some(id) if !id.is_empty() => ("GET", Handler::Model(id)),
            _ => return Err(ApiError::NotFound { method: req.method.clone(), path: req.path.clone() }),
        },
    };
    if req.method != allow {
        return Err(ApiError::MethodNotAllowed { method: req.method.clone(), allow });
    }
    match handler {
        Handler::Health => health(backend),
        Handler::Models => Ok(models(backend)),
        Handler::Model(id) => model(backend, id),
        Handler::Chat => chat::handle(req, backend),
        Handler::Generate => generate::handle(req, backend),
    }
}

enum Handler<'a> {
    Health,
    Models,
    Model(&'a str),
    Chat,
    Generate,
}

/// `GET /health`: 200 once the engine is ready (with the engine's load),
/// llama.cpp's 503 before.
fn health(backend: &dyn Backend) -> Result<Response, ApiError> {
    let s = backend.status();
    if s.ready {
        Ok(Response::json(
            200,
            &json!({
                "status": "ok",
                "running": s.running,
                "waiting": s.waiting,
                "prompt_tokens_total": s.prompt_tokens_total,
                "generated_tokens_total": s.generated_tokens_total,
            }),
        ))
    } else {
        Err(ApiError::Loading)
    }
}

/// `GET /v1/models`: OpenAI's model list, with the engine's details added.
fn models(backend: &dyn Backend) -> Response {
    let data: Vec<Value> = backend.list_models().iter().map(model_json).collect();
    Response::json(200, &json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`: one model, or 404 `model_not_found`.
fn model(backend: &dyn Backend, id: &str) -> Result<Response, ApiError> {
    match backend.list_models().iter().find(|m| m.id == id) {
        Some(info) => Ok(Response::json(200, &model_json(info))),
        None => Err(ApiError::engine(crate::backend::Error::UnknownModel(id.to_string()), "model")),
    }
}

fn model_json(info: &ModelInfo) -> Value {
    json!({
        "id": info.id,
        "object": "model",
        "created": info.modified_at,
        "owned_by": "tern",
        "architecture": info.architecture,
        "context_length": info.context_length,
        "quantization": info.quantization,
        "parameter_count": info.parameter_count,
    })
}

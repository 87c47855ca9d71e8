//! The request router: a plain function from request to response.

use serde_json::{json, Value};

use crate::backend::{Backend, ModelInfo};
use crate::error::{error_response, ApiError};
use crate::http::{Request, Response};
use crate::{chat, completions, embeddings, generate, llamacpp, metrics, queue};

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
        "/metrics" => ("GET", Handler::Metrics),
        "/v1/models" => ("GET", Handler::Models),
        "/v1/chat/completions" => ("POST", Handler::Chat),
        "/generate" => ("POST", Handler::Generate),
        "/batch" => ("POST", Handler::Batch),
        "/api/chat-queue" => ("POST", Handler::QueueSubmit),
        "/v1/completions" => ("POST", Handler::Completions),
        "/v1/embeddings" => ("POST", Handler::Embeddings),
        "/completion" => ("POST", Handler::LlamaCompletion),
        "/tokenize" => ("POST", Handler::LlamaTokenize),
        "/detokenize" => ("POST", Handler::LlamaDetokenize),
        "/props" => ("GET", Handler::LlamaProps),
        _ => match (path.strip_prefix("/v1/models/"), path.strip_prefix("/api/chat-queue/")) {
            (Some(id), _) if !id.is_empty() => ("GET", Handler::Model(id)),
            (_, Some(id)) if !id.is_empty() && !id.contains('/') => match req.method.as_str() {
                "DELETE" => ("GET, DELETE", Handler::QueueCancel(id)),
                _ => ("GET, DELETE", Handler::QueueStatus(id)),
            },
            _ => return Err(ApiError::NotFound { method: req.method.clone(), path: req.path.clone() }),
        },
    };
    if !allow.split(", ").any(|m| m == req.method) {
        return Err(ApiError::MethodNotAllowed { method: req.method.clone(), allow });
    }
    match handler {
        Handler::Health => health(backend),
        Handler::Metrics => Ok(metrics::render(&backend.status())),
        Handler::Models => Ok(models(backend)),
        Handler::Model(id) => model(backend, id),
        Handler::Chat => chat::handle(req, backend),
        Handler::Generate => generate::handle(req, backend),
        Handler::Batch => queue::batch(req, backend),
        Handler::QueueSubmit => queue::submit(req, backend),
        Handler::QueueStatus(id) => queue::status(id, backend),
        Handler::QueueCancel(id) => queue::cancel(id, backend),
        Handler::Completions => completions::handle(req, backend),
        Handler::Embeddings => embeddings::handle(req, backend),
        Handler::LlamaCompletion => Ok(llamacpp::completion(req, backend)),
        Handler::LlamaTokenize => Ok(llamacpp::tokenize(req, backend)),
        Handler::LlamaDetokenize => Ok(llamacpp::detokenize(req, backend)),
        Handler::LlamaProps => Ok(llamacpp::props(backend)),
    }
}

enum Handler<'a> {
    Health,
    Metrics,
    Models,
    Model(&'a str),
    Chat,
    Generate,
    Batch,
    QueueSubmit,
    QueueStatus(&'a str),
    QueueCancel(&'a str),
    Completions,
    Embeddings,
    LlamaCompletion,
    LlamaTokenize,
    LlamaDetokenize,
    LlamaProps,
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
                "max_waiting": s.max_waiting,
                "prompt_tokens_total": s.prompt_tokens_total,
                "generated_tokens_total": s.generated_tokens_total,
                "kv_blocks_total": s.kv_blocks_total,
                "kv_blocks_used": s.kv_blocks_used,
                "kv_blocks_cached": s.kv_blocks_cached,
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

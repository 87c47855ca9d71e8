//! The request router: a plain function from request to response.

use serde_json::{json, Value};

use crate::backend::{Backend, ModelInfo};
use crate::cors::CorsPolicy;
use crate::error::{error_response, ApiError};
use crate::http::{Body, Request, Response};
use crate::ollama::{self, Route as Ollama};
use crate::{cache, chat, completions, embeddings, generate, llamacpp, metrics, optimized, page, queue, spin};

/// Version stamped on every response as `x-tern-handler`, so a client can tell
/// which handler component served it across hot swaps.
pub const HANDLER_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The OpenAPI 3.0 description of every route, served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Answers `req` using `backend` for inference, under the CORS policy in
/// `TERN_CORS_ORIGINS`. Never panics on client input: every failure becomes
/// an OpenAI-shaped error response.
pub fn route(req: &Request, backend: &dyn Backend) -> Response {
    route_with(req, backend, &CorsPolicy::from_env())
}

/// [`route`] under an explicit CORS policy. `HEAD` answers are `GET`'s
/// without the body.
pub fn route_with(req: &Request, backend: &dyn Backend, cors: &CorsPolicy) -> Response {
    let response = match dispatch(req, backend, cors) {
        Ok(response) => response,
        Err(err) => error_response(&err),
    };
    if response.status >= 400 {
        backend.store().increment(cache::COUNTERS, metrics::ERRORS, 1);
    }
    let response = if req.method == "HEAD" { Response { body: Body::Full(Vec::new()), ..response } } else { response };
    stamp(cors.decorate(req, response))
}

/// The response for a request refused before routing (e.g. a body over the
/// limit), stamped like every other response.
pub fn refuse(err: &ApiError) -> Response {
    stamp(error_response(err))
}

fn stamp(response: Response) -> Response {
    response.with_header("x-tern-handler", HANDLER_VERSION)
}

/// Routes by path, answers `OPTIONS` for every route, then checks the method.
fn dispatch(req: &Request, backend: &dyn Backend, cors: &CorsPolicy) -> Result<Response, ApiError> {
    let path = req.path.as_str();
    let (allow, handler): (&'static str, Handler) = match path {
        "/" => ("GET, HEAD", Handler::Root),
        "/health" => ("GET", Handler::Health),
        "/metrics" | "/metrics/prometheus" => ("GET", Handler::Metrics),
        "/v1/models" => ("GET", Handler::Models),
        "/v1/chat/completions" => ("POST", Handler::Chat),
        "/generate" => ("POST", Handler::Generate),
        "/batch" => ("POST", Handler::Batch),
        // The seed's spelling: `?requestId=` instead of a path segment.
        "/api/chat-queue" => match (req.method.as_str(), req.query_param("requestId")) {
            ("GET", Some(id)) => ("POST, GET, DELETE", Handler::QueueStatusQuery(id)),
            ("DELETE", Some(id)) => ("POST, GET, DELETE", Handler::QueueCancelQuery(id)),
            ("GET" | "DELETE", None) => return Err(ApiError::param("requestId", "'requestId' is required.")),
            _ => ("POST, GET, DELETE", Handler::QueueSubmit),
        },
        "/openapi.json" => ("GET", Handler::OpenApi),
        "/infer" => ("POST", Handler::SpinInfer),
        "/embed" => ("POST", Handler::SpinEmbed),
        "/api/chat-optimized" => ("POST", Handler::ChatOptimized),
        "/api/cache-stats" => ("GET, POST", Handler::CacheStats),
        "/api/generate" => ("POST", Handler::Ollama(Ollama::Generate)),
        "/api/chat" => ("POST", Handler::Ollama(Ollama::Chat)),
        "/api/tags" => ("GET", Handler::Ollama(Ollama::Tags)),
        "/api/show" => ("POST", Handler::Ollama(Ollama::Show)),
        "/api/ps" => ("GET", Handler::Ollama(Ollama::Ps)),
        "/api/version" => ("GET", Handler::Ollama(Ollama::Version)),
        "/api/embed" => ("POST", Handler::Ollama(Ollama::Embed)),
        "/api/embeddings" => ("POST", Handler::Ollama(Ollama::Embeddings)),
        "/v1/completions" => ("POST", Handler::Completions),
        "/v1/embeddings" => ("POST", Handler::Embeddings),
        "/completion" => ("POST", Handler::LlamaCompletion),
        "/tokenize" => ("POST", Handler::LlamaTokenize),
        "/detokenize" => ("POST", Handler::LlamaDetokenize),
        "/props" => ("GET", Handler::LlamaProps),
        _ if path.starts_with("/static/") => ("GET, HEAD", Handler::Static(&path["/static/".len()..])),
        _ => match (path.strip_prefix("/v1/models/"), path.strip_prefix("/api/chat-queue/")) {
            (Some(id), _) if !id.is_empty() => ("GET", Handler::Model(id)),
            (_, Some(id)) if !id.is_empty() && !id.contains('/') => match req.method.as_str() {
                "DELETE" => ("GET, DELETE", Handler::QueueCancel(id)),
                _ => ("GET, DELETE", Handler::QueueStatus(id)),
            },
            _ => return Err(ApiError::NotFound { method: req.method.clone(), path: req.path.clone() }),
        },
    };
    if req.method == "OPTIONS" {
        return cors.preflight(req, allow);
    }
    if !allow.split(", ").any(|m| m == req.method) {
        let refused = ApiError::MethodNotAllowed { method: req.method.clone(), allow };
        return match handler {
            Handler::Ollama(_) => Ok(ollama::error_response(&refused)),
            _ => Err(refused),
        };
    }
    match handler {
        Handler::Root => Ok(page::root(req)),
        Handler::Static(name) => page::static_file(req, name),
        Handler::Health => health(backend),
        Handler::Metrics => Ok(metrics::handle(req, backend)),
        Handler::Models => Ok(models(backend)),
        Handler::Model(id) => model(backend, id),
        Handler::Chat => chat::handle(req, backend),
        Handler::Generate => generate::handle(req, backend),
        Handler::Batch => queue::batch(req, backend),
        Handler::QueueSubmit => queue::submit(req, backend),
        Handler::QueueStatus(id) => queue::status(id, backend),
        Handler::QueueCancel(id) => queue::cancel(id, backend),
        Handler::QueueStatusQuery(id) => queue::status(&id, backend),
        Handler::QueueCancelQuery(id) => queue::cancel(&id, backend),
        Handler::OpenApi => Ok(Response::text(200, "application/json", OPENAPI.as_bytes().to_vec())),
        Handler::SpinInfer => spin::infer(req, backend),
        Handler::SpinEmbed => spin::embed(req, backend),
        Handler::ChatOptimized => Ok(optimized::handle(req, backend)),
        Handler::CacheStats => cache::handle_stats(req, backend),
        Handler::Ollama(api) => Ok(ollama::handle(api, req, backend)),
        Handler::Completions => completions::handle(req, backend),
        Handler::Embeddings => embeddings::handle(req, backend),
        Handler::LlamaCompletion => Ok(llamacpp::completion(req, backend)),
        Handler::LlamaTokenize => Ok(llamacpp::tokenize(req, backend)),
        Handler::LlamaDetokenize => Ok(llamacpp::detokenize(req, backend)),
        Handler::LlamaProps => Ok(llamacpp::props(backend)),
    }
}

enum Handler<'a> {
    Root,
    Static(&'a str),
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
    QueueStatusQuery(String),
    QueueCancelQuery(String),
    OpenApi,
    SpinInfer,
    SpinEmbed,
    ChatOptimized,
    CacheStats,
    Ollama(Ollama),
    Completions,
    Embeddings,
    LlamaCompletion,
    LlamaTokenize,
    LlamaDetokenize,
    LlamaProps,
}

/// `GET /health`: 200 once the engine is ready (with the engine's load, the
/// server's uptime and its measured resident memory), llama.cpp's 503 before.
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
                "uptime_s": s.uptime_ms as f64 / 1e3,
                "memory_bytes": s.rss_bytes,
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

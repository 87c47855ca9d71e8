//! The request router: a plain function from request to response. It holds
//! the route table (path and method to a route of `routes/`), answers
//! `OPTIONS` and `HEAD`, counts error responses, and stamps every response
//! with the handler's version.

use crate::app::Platform;
use crate::cache::COUNTERS;
use crate::cors::CorsPolicy;
use crate::engine_client::EngineClient;
use crate::error::{error_response, ApiError};
use crate::http::{Body, Request, Response};
use crate::routes::ollama::{self, Route as Ollama};
use crate::routes::service::{self, ERRORS};
use crate::routes::{anthropic, llamacpp, openai, responses, seed, spin};
use crate::wire::HANDLER_VERSION;

/// Answers `req` using `engine` for inference, under the CORS policy in
/// `TERN_CORS_ORIGINS`. Never panics on client input: every failure becomes
/// an OpenAI-shaped error response.
pub fn route(req: &Request, engine: &dyn EngineClient) -> Response {
    route_with(req, engine, &CorsPolicy::from_env())
}

/// [`route`] under an explicit CORS policy. `HEAD` is answered on every
/// `GET` route (load balancers probe with it): `GET`'s answer without the
/// body.
pub fn route_with(req: &Request, engine: &dyn EngineClient, cors: &CorsPolicy) -> Response {
    answer(req, engine, None, cors)
}

/// [`route`] with the app layer's database, settings and upstream (in a
/// component: the host's imports).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub fn route_with_platform(req: &Request, engine: &dyn EngineClient, platform: &dyn Platform) -> Response {
    answer(req, engine, Some(platform), &CorsPolicy::from_env())
}

fn answer(req: &Request, engine: &dyn EngineClient, platform: Option<&dyn Platform>, cors: &CorsPolicy) -> Response {
    let as_get;
    let routed = if req.method == "HEAD" {
        as_get = Request { method: "GET".into(), body: Vec::new(), ..req.clone() };
        &as_get
    } else {
        req
    };
    let response = match dispatch(routed, engine, platform, cors) {
        Ok(response) => response,
        Err(err) => error_response(&err),
    };
    if response.status >= 400 {
        engine.store().increment(COUNTERS, ERRORS, 1);
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
fn dispatch(
    req: &Request,
    engine: &dyn EngineClient,
    platform: Option<&dyn Platform>,
    cors: &CorsPolicy,
) -> Result<Response, ApiError> {
    let path = req.path.as_str();
    // With Open WebUI's frontend, its files come first (`/static/` too).
    let frontend = crate::webui::Frontend::from_env();
    if let Some(file) = frontend.as_ref().and_then(|f| f.file(req)) {
        return Ok(file);
    }
    if crate::app::claims(path) {
        if req.method == "OPTIONS" {
            return cors.preflight(req, "GET, POST, DELETE");
        }
        return Ok(crate::app::dispatch(req, engine, platform).expect("an app path"));
    }
    let (allow, handler): (&'static str, Handler) = match path {
        "/" => ("GET, HEAD", Handler::Root),
        "/health" => ("GET", Handler::Health),
        "/metrics" | "/metrics/prometheus" => ("GET", Handler::Metrics),
        // llama-server serves OpenAI's routes with and without `/v1`.
        "/v1/models" | "/models" => ("GET", Handler::Models),
        "/v1/chat/completions" | "/chat/completions" => ("POST", Handler::Chat),
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
        "/v1/completions" | "/completions" => ("POST", Handler::Completions),
        "/v1/embeddings" | "/embeddings" => ("POST", Handler::Embeddings),
        "/completion" => ("POST", Handler::LlamaCompletion),
        "/tokenize" => ("POST", Handler::LlamaTokenize),
        "/detokenize" => ("POST", Handler::LlamaDetokenize),
        "/props" => ("GET", Handler::LlamaProps),
        "/v1/messages" => ("POST", Handler::AnthropicMessages),
        "/v1/responses" | "/responses" => ("POST", Handler::Responses),
        "/slots" => ("GET", Handler::LlamaSlots),
        _ if path.starts_with("/static/") => ("GET, HEAD", Handler::Static(&path["/static/".len()..])),
        _ => match (
            path.strip_prefix("/v1/models/").or(path.strip_prefix("/models/")),
            path.strip_prefix("/api/chat-queue/"),
        ) {
            (Some(id), _) if !id.is_empty() => ("GET", Handler::Model(id)),
            (_, Some(id)) if !id.is_empty() && !id.contains('/') => match req.method.as_str() {
                "DELETE" => ("GET, DELETE", Handler::QueueCancel(id)),
                _ => ("GET, DELETE", Handler::QueueStatus(id)),
            },
            // The frontend's client-side routes (`/auth`, `/c/{id}`) load its index page.
            _ => {
                return frontend
                    .and_then(|f| f.fallback(req))
                    .ok_or_else(|| ApiError::NotFound { method: req.method.clone(), path: req.path.clone() })
            }
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
        Handler::Root => Ok(service::root(req)),
        Handler::Static(name) => service::static_file(req, name),
        Handler::Health => service::health(engine),
        Handler::Metrics => Ok(service::metrics(req, engine)),
        Handler::Models => Ok(openai::models(engine)),
        Handler::Model(id) => openai::model(engine, id),
        Handler::Chat => openai::chat(req, engine),
        Handler::Generate => seed::generate(req, engine),
        Handler::Batch => seed::batch(req, engine),
        Handler::QueueSubmit => seed::submit_job(req, engine),
        Handler::QueueStatus(id) => seed::job_status(id, req, engine),
        Handler::QueueCancel(id) => seed::cancel_job(id, req, engine),
        Handler::QueueStatusQuery(id) => seed::job_status(&id, req, engine),
        Handler::QueueCancelQuery(id) => seed::cancel_job(&id, req, engine),
        Handler::OpenApi => Ok(service::openapi()),
        Handler::SpinInfer => spin::infer(req, engine),
        Handler::SpinEmbed => spin::embed(req, engine),
        Handler::ChatOptimized => Ok(seed::chat_optimized(req, engine)),
        Handler::CacheStats => seed::cache_stats(req, engine),
        Handler::Ollama(api) => Ok(ollama::handle(api, req, engine)),
        Handler::Completions => openai::completions(req, engine),
        Handler::Embeddings => openai::embeddings(req, engine),
        Handler::LlamaCompletion => Ok(llamacpp::completion(req, engine)),
        Handler::LlamaTokenize => Ok(llamacpp::tokenize(req, engine)),
        Handler::LlamaDetokenize => Ok(llamacpp::detokenize(req, engine)),
        Handler::LlamaProps => Ok(llamacpp::props(engine)),
        Handler::LlamaSlots => Ok(llamacpp::slots()),
        Handler::AnthropicMessages => Ok(anthropic::messages(req, engine)),
        Handler::Responses => responses::create(req, engine),
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
    LlamaSlots,
    AnthropicMessages,
    Responses,
}

//! The project's original API: plain completions, batches, detached jobs,
//! the streaming chat that answers from the response cache, and the cache's
//! statistics.
//!
//! - `POST /generate` `{prompt, max_tokens?, temperature?, top_p?,
//!   priority?, model?}` → `{text, prompt, max_tokens, generation_time_ms,
//!   tokens_per_second, finish_reason, usage, prompt_tokens,
//!   completion_tokens, cached_tokens}`. Without `model`, the engine's first
//!   model answers; without `priority`, it is `interactive`.
//! - `POST /batch` `{prompts, max_tokens?, temperature?, top_p?, model?}`
//!   starts every prompt before reading any, so the engine runs them as one
//!   batch, and answers `{results, total_time_ms, batch_size}`. At most
//!   `TERN_MAX_BATCH` prompts (the host sets it from `--max-batch`).
//! - `POST /api/chat-queue` takes a chat-completions body (model optional,
//!   priority `batch` unless it says otherwise, no `stream`) and answers 202
//!   with the job's id and place; the engine, not this instance, holds the
//!   job.
//! - `GET /api/chat-queue/{id}` reports `queued` (with `position` and
//!   `estimated_wait_ms`), `running`, `done` (with `finish_reason`, `usage`),
//!   `cancelled` or `failed` (with `error`), and the text so far.
//! - `DELETE /api/chat-queue/{id}` cancels the job and reports it.
//! - `GET` and `DELETE /api/chat-queue?requestId={id}` are the seed's
//!   spelling of the two above.
//! - A job's id is the engine's id and a tag bound to the caller's
//!   [`cache::identity`]: another tenant's id, even a guessed one, is 404.
//! - `POST /api/chat-optimized` `{message | messages, system_prompt?,
//!   use_cache? (true), model?, max_tokens?, temperature?, top_p?, seed?}`,
//!   with `/generate`'s sampling defaults, always answers with server-sent
//!   events: `{"content", "done": false, "request_id", "cached"}` per piece,
//!   then `{"content": "", "done": true, "request_id", "cached",
//!   "finish_reason", "usage", "timings"}`. Any error, before or during the
//!   stream, is one `{"error", "done": true, "request_id"}` event; before
//!   the stream it comes with the error's status.
//! - `GET /api/cache-stats` (with `?keys=1`, the keys too) reports the
//!   response cache; `POST /api/cache-stats` `{"action": "clear"}` or
//!   `{"action": "invalidate", "key": ".."}` empties it or drops one entry.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::cache;
use crate::engine_client::{EngineClient, Error, Finished, JobInfo, JobState, Message, Priority, Prompt, Store};
use crate::error::{error_body, ApiError};
use crate::http::{Request, Response};
use crate::json::{self, Fields};
use crate::params::{
    batch_limit, first_model, model_or_first, parse_chat_fields, parse_messages, parse_priority, plain_params,
};
use crate::stream::{collect, Frames, Framing};
use crate::wire::{engine_ms, finish_reason, sse_data, timings_json, unique_hex, usage_json};

/// Field holding `/generate`'s prompt, named by context-overflow errors.
const GENERATE_PROMPT_PARAM: &str = "prompt";
/// Field holding a batch's prompts, named by its errors.
const BATCH_PROMPT_PARAM: &str = "prompts";
/// Field holding a job's prompt, named by its errors.
const JOB_PROMPT_PARAM: &str = "messages";
/// Field holding `/api/chat-optimized`'s prompt, named by context-overflow
/// errors.
const CHAT_PROMPT_PARAM: &str = "messages";

// /generate and /batch

/// `POST /generate`.
pub fn generate(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let prompt = f.required_string("prompt")?.to_string();
    let params = plain_params(&f, parse_priority(&f, Priority::Interactive)?)?;
    let model = model_or_first(&f, engine)?;

    let engine_error = |e| ApiError::engine(e, GENERATE_PROMPT_PARAM);
    let generation = engine.generate(&model, &Prompt::Text(prompt.clone()), &params).map_err(engine_error)?;
    let (text, finished) = collect(generation).map_err(engine_error)?;

    let usage = finished.usage;
    let generation_time_ms = engine_ms(&usage);
    let tokens_per_second =
        if generation_time_ms > 0.0 { f64::from(usage.completion_tokens) * 1000.0 / generation_time_ms } else { 0.0 };
    let body = json!({
        "text": text,
        "prompt": prompt,
        "max_tokens": params.max_tokens,
        "generation_time_ms": generation_time_ms,
        "tokens_per_second": tokens_per_second,
        "finish_reason": finish_reason(finished.reason),
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens),
        },
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
    });
    Ok(Response::json(200, &body))
}

/// `POST /batch`.
pub fn batch(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let limit = batch_limit(std::env::var("TERN_MAX_BATCH").ok().as_deref());
    let prompts = f.strings(BATCH_PROMPT_PARAM)?.ok_or_else(|| f.missing(BATCH_PROMPT_PARAM))?;
    if prompts.is_empty() || prompts.len() > limit {
        return Err(ApiError::param(
            BATCH_PROMPT_PARAM,
            format!("'prompts' must hold between 1 and {limit} prompts, but got {}.", prompts.len()),
        ));
    }
    let params = plain_params(&f, Priority::Batch)?;
    let model = model_or_first(&f, engine)?;
    let engine_error = |e| ApiError::engine(e, BATCH_PROMPT_PARAM);

    // Every prompt is admitted before any is read, so the engine batches
    // them; a refusal returns early, dropping (and so cancelling) the ones
    // already started.
    let mut generations = Vec::with_capacity(prompts.len());
    for prompt in &prompts {
        generations.push(engine.generate(&model, &Prompt::Text(prompt.clone()), &params).map_err(engine_error)?);
    }
    let mut results = Vec::with_capacity(prompts.len());
    let mut total_time_ms = 0.0f64;
    for (index, (prompt, generation)) in prompts.iter().zip(generations).enumerate() {
        let (text, finished) = collect(generation).map_err(engine_error)?;
        let u = &finished.usage;
        // The engine's clock, as `/generate` reports it. Admissions were
        // microseconds apart, so the longest admission-to-end time spans
        // the whole batch.
        total_time_ms = total_time_ms.max(engine_ms(u));
        results.push(json!({
            "index": index,
            "prompt": prompt,
            "text": text,
            "finish_reason": finish_reason(finished.reason),
            "prompt_tokens": u.prompt_tokens,
            "completion_tokens": u.completion_tokens,
            "cached_tokens": u.cached_tokens,
        }));
    }
    let body = json!({
        "results": results,
        "total_time_ms": total_time_ms,
        "batch_size": prompts.len(),
    });
    Ok(Response::json(200, &body))
}

// /api/chat-queue

/// `POST /api/chat-queue`.
pub fn submit_job(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let mut map = json::parse_object(&req.body)?;
    // Unlike chat completions, a job may leave the model to the engine.
    if Fields::new(&map).get("model").is_none() {
        map.insert("model".into(), Value::from(first_model(engine)?));
    }
    let chat = parse_chat_fields(&map, Priority::Batch)?;
    if chat.params.logprobs.is_some() {
        return Err(ApiError::param("logprobs", "A queued job reports its text only, not log-probabilities."));
    }
    if chat.n > 1 {
        return Err(ApiError::param("n", "A queued job makes one choice: submit one job per choice."));
    }
    if chat.tools.is_some() {
        return Err(ApiError::param(
            "tools",
            "A queued job reports its text only: call tools through /v1/chat/completions.",
        ));
    }
    if chat.stream {
        return Err(ApiError::param(
            "stream",
            "A queued job is not streamed: poll GET /api/chat-queue/{id} for its text.",
        ));
    }
    let id = engine
        .submit_job(&chat.model, &Prompt::Chat(chat.messages), &chat.params)
        .map_err(|e| ApiError::engine(e, JOB_PROMPT_PARAM))?;
    let info = engine.job_status(&id).ok_or(ApiError::JobNotFound(id))?;
    let mut body = job_json(&info, req);
    // The submitter always learns its place; a job already started is at
    // the front with nothing left to wait.
    for key in ["position", "estimated_wait_ms"] {
        if body.get(key).is_none() {
            body[key] = Value::from(0);
        }
    }
    Ok(Response::json(202, &body))
}

/// `GET /api/chat-queue/{id}`.
pub fn job_status(id: &str, req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let not_found = || ApiError::JobNotFound(id.to_string());
    let info = engine.job_status(engine_job_id(id, req).ok_or_else(not_found)?).ok_or_else(not_found)?;
    Ok(Response::json(200, &job_json(&info, req)))
}

/// `DELETE /api/chat-queue/{id}`.
pub fn cancel_job(id: &str, req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let not_found = || ApiError::JobNotFound(id.to_string());
    let info = engine.cancel_job(engine_job_id(id, req).ok_or_else(not_found)?).ok_or_else(not_found)?;
    Ok(Response::json(200, &job_json(&info, req)))
}

/// The id a client sees for the engine's job `engine_id`: the engine's id,
/// `-`, and 16 hex digits of a digest of it and the caller's identity.
pub(crate) fn client_job_id(engine_id: &str, req: &Request) -> String {
    format!("{engine_id}-{}", owner_tag(engine_id, req))
}

/// The engine's id within `client_id`, if the tag says the caller owns it.
fn engine_job_id<'a>(client_id: &'a str, req: &Request) -> Option<&'a str> {
    let (engine_id, tag) = client_id.rsplit_once('-')?;
    (tag == owner_tag(engine_id, req)).then_some(engine_id)
}

fn owner_tag(engine_id: &str, req: &Request) -> String {
    let mut h = Sha256::new();
    h.update(b"tern job owner\0");
    h.update(cache::identity(req).unwrap_or_default().as_bytes());
    h.update(b"\0");
    h.update(engine_id.as_bytes());
    h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `{id, model, status, created_at, prompt_tokens, text}` and what the
/// state adds: `position`, `estimated_wait_ms` while queued;
/// `finish_reason`, `usage` once done; `error` once failed.
fn job_json(info: &JobInfo, req: &Request) -> Value {
    let mut body = json!({
        "id": client_job_id(&info.id, req),
        "model": info.model,
        "created_at": info.created_at_ms / 1000,
        "prompt_tokens": info.prompt_tokens,
        "text": info.text,
    });
    let (status, extra) = match &info.state {
        JobState::Queued(place) => {
            ("queued", json!({"position": place.position, "estimated_wait_ms": place.estimated_wait_ms}))
        }
        JobState::Running => ("running", json!({})),
        JobState::Done(finished) => {
            ("done", json!({"finish_reason": finish_reason(finished.reason), "usage": usage_json(&finished.usage)}))
        }
        JobState::Cancelled => ("cancelled", json!({})),
        JobState::Failed(error) => {
            let (_, mut object) = error_body(&ApiError::engine(error.clone(), JOB_PROMPT_PARAM));
            ("failed", json!({"error": object["error"].take()}))
        }
    };
    body["status"] = Value::from(status);
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    body
}

// /api/chat-optimized

/// `POST /api/chat-optimized`. Never an `Err`: refusals are events too.
pub fn chat_optimized(req: &Request, engine: &dyn EngineClient) -> Response {
    let request_id = format!("req-{}", unique_hex());
    match start_chat(req, engine, &request_id) {
        Ok(response) => response,
        Err(err) => {
            let mut response = Response::event_stream(std::iter::once(error_event(&err, &request_id)));
            response.status = error_body(&err).0;
            response
        }
    }
}

fn start_chat(req: &Request, engine: &dyn EngineClient, request_id: &str) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let messages = conversation(&f)?;
    let use_cache = f.boolean("use_cache")?.unwrap_or(true);
    let mut params = plain_params(&f, Priority::Interactive)?;
    // Seeds are 64 random bits to the sampler: a negative seed keeps its bits.
    params.seed = f.integer("seed")?.map(|s| s as u64);
    let model = model_or_first(&f, engine)?;

    let lookup = cache::look_up(req, engine, &model, &messages, &params, Some(use_cache))?;
    let (header, cached) = (lookup.header(), lookup.cached().unwrap_or(false));
    let prompt = Prompt::Chat(messages);
    let (generation, pending) = lookup
        .generation(engine, || engine.generate(&model, &prompt, &params))
        .map_err(|e| ApiError::engine(e, CHAT_PROMPT_PARAM))?;
    let events = Frames::new(generation, OptimizedEvents { request_id: request_id.to_string(), cached });
    Ok(cache::event_stream(events, pending, header))
}

/// `messages` when given, else `message` as the user's turn; either way
/// after `system_prompt` when there is one.
fn conversation(f: &Fields<'_>) -> Result<Vec<Message>, ApiError> {
    let system = f.string("system_prompt")?;
    let mut messages = match f.get("messages") {
        Some(_) => parse_messages(f)?,
        None => vec![Message { role: "user".into(), content: f.required_string("message")?.to_string() }],
    };
    if let Some(system) = system {
        messages.insert(0, Message { role: "system".into(), content: system.to_string() });
    }
    Ok(messages)
}

fn error_event(err: &ApiError, request_id: &str) -> Vec<u8> {
    let (_, body) = error_body(err);
    sse_data(json!({"error": body["error"]["message"], "done": true, "request_id": request_id}))
}

/// How one answer of `/api/chat-optimized` is written.
struct OptimizedEvents {
    request_id: String,
    cached: bool,
}

impl OptimizedEvents {
    fn piece(&self, content: &str, done: bool) -> Value {
        json!({"content": content, "done": done, "request_id": self.request_id, "cached": self.cached})
    }
}

impl Framing for OptimizedEvents {
    fn text(&mut self, text: &str) -> Vec<u8> {
        sse_data(self.piece(text, false))
    }

    fn finished(&mut self, finished: &Finished) -> Vec<Vec<u8>> {
        let mut last = self.piece("", true);
        last["finish_reason"] = Value::from(finish_reason(finished.reason));
        last["usage"] = usage_json(&finished.usage);
        last["timings"] = timings_json(&finished.usage);
        vec![sse_data(last)]
    }

    fn failed(&mut self, error: Error) -> Vec<u8> {
        error_event(&ApiError::engine(error, CHAT_PROMPT_PARAM), &self.request_id)
    }
}

// /api/cache-stats

/// `GET /api/cache-stats` (with `?keys=1`, the keys too) and
/// `POST /api/cache-stats` `{"action": "clear"}` or
/// `{"action": "invalidate", "key": ".."}`.
pub fn cache_stats(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let store = engine.store();
    let wants_keys =
        req.query.as_deref().is_some_and(|q| q.split('&').any(|pair| matches!(pair, "keys" | "keys=1" | "keys=true")));
    if (req.method == "POST" || wants_keys) && !cache::is_admin(req) {
        return Err(ApiError::Forbidden(
            "Listing, invalidating or clearing cached answers needs an admin key (tern serve --admin-key).".into(),
        ));
    }
    if req.method == "POST" {
        return cache_action(req, store);
    }
    let mut body = cache::stats(store).json();
    body["ttl_seconds"] = Value::from(cache::ttl_seconds());
    if wants_keys {
        body["keys"] = Value::from(store.keys(cache::RESPONSES));
    }
    Ok(Response::json(200, &body))
}

fn cache_action(req: &Request, store: &dyn Store) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let keys = match f.required_string("action")? {
        "clear" => store.keys(cache::RESPONSES),
        "invalidate" => {
            let key = f.required_string("key")?;
            store.get(cache::RESPONSES, key).map(|_| vec![key.to_string()]).unwrap_or_default()
        }
        other => {
            return Err(ApiError::param("action", format!("'action' must be 'clear' or 'invalidate', not {other:?}.")))
        }
    };
    for key in &keys {
        store.delete(cache::RESPONSES, key);
    }
    store.increment(cache::COUNTERS, cache::INVALIDATIONS, keys.len() as u64);
    Ok(Response::json(200, &json!({"action": f.required_string("action")?, "deleted": keys.len()})))
}

//! Work nobody watches token by token: detached jobs (`/api/chat-queue`)
//! and `POST /batch`.
//!
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
//! - `POST /batch` `{prompts, max_tokens?, temperature?, top_p?, model?}`
//!   starts every prompt before reading any, so the engine runs them as one
//!   batch, and answers `{results, total_time_ms, batch_size}`. At most
//!   `TERN_MAX_BATCH` prompts (the host sets it from `--max-batch`).

use serde_json::{json, Value};

use crate::backend::{Backend, JobInfo, JobState, Priority, Prompt};
use crate::chat::{finish_reason, parse_fields, usage_json};
use crate::error::{error_body, ApiError};
use crate::generate::{collect, engine_ms, first_model, model_or_first, plain_params};
use crate::http::{Request, Response};
use crate::json::{self, Fields};

/// Prompts one `/batch` may carry unless the host sets `TERN_MAX_BATCH`.
pub const DEFAULT_MAX_BATCH: usize = 32;
/// Field holding a job's prompt, named by its errors.
const JOB_PROMPT_PARAM: &str = "messages";
/// Field holding a batch's prompts, named by its errors.
const BATCH_PROMPT_PARAM: &str = "prompts";

/// `POST /api/chat-queue`.
pub fn submit(req: &Request, backend: &dyn Backend) -> Result<Response, ApiError> {
    let mut map = json::parse_object(&req.body)?;
    // Unlike chat completions, a job may leave the model to the engine.
    if Fields::new(&map).get("model").is_none() {
        map.insert("model".into(), Value::from(first_model(backend)?));
    }
    let chat = parse_fields(&map, Priority::Batch)?;
    if chat.stream {
        return Err(ApiError::param(
            "stream",
            "A queued job is not streamed: poll GET /api/chat-queue/{id} for its text.",
        ));
    }
    let id = backend
        .submit_job(&chat.model, &Prompt::Chat(chat.messages), &chat.params)
        .map_err(|e| ApiError::engine(e, JOB_PROMPT_PARAM))?;
    let info = backend.job_status(&id).ok_or(ApiError::JobNotFound(id))?;
    let mut body = job_json(&info);
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
pub fn status(id: &str, backend: &dyn Backend) -> Result<Response, ApiError> {
    let info = backend.job_status(id).ok_or_else(|| ApiError::JobNotFound(id.to_string()))?;
    Ok(Response::json(200, &job_json(&info)))
}

/// `DELETE /api/chat-queue/{id}`.
pub fn cancel(id: &str, backend: &dyn Backend) -> Result<Response, ApiError> {
    let info = backend.cancel_job(id).ok_or_else(|| ApiError::JobNotFound(id.to_string()))?;
    Ok(Response::json(200, &job_json(&info)))
}

/// `{id, model, status, created_at, prompt_tokens, text}` and what the
/// state adds: `position`, `estimated_wait_ms` while queued;
/// `finish_reason`, `usage` once done; `error` once failed.
fn job_json(info: &JobInfo) -> Value {
    let mut body = json!({
        "id": info.id,
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

/// Most prompts one `/batch` may carry, from the host's `TERN_MAX_BATCH`
/// setting; [`DEFAULT_MAX_BATCH`] when it is unset or not a positive number.
pub fn batch_limit(setting: Option<&str>) -> usize {
    setting.and_then(|v| v.trim().parse().ok()).filter(|&n| n > 0).unwrap_or(DEFAULT_MAX_BATCH)
}

/// `POST /batch`.
pub fn batch(req: &Request, backend: &dyn Backend) -> Result<Response, ApiError> {
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
    let model = model_or_first(&f, backend)?;
    let engine_error = |e| ApiError::engine(e, BATCH_PROMPT_PARAM);

    // Every prompt is admitted before any is read, so the engine batches
    // them; a refusal returns early, dropping (and so cancelling) the ones
    // already started.
    let mut generations = Vec::with_capacity(prompts.len());
    for prompt in &prompts {
        generations.push(backend.generate(&model, &Prompt::Text(prompt.clone()), &params).map_err(engine_error)?);
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

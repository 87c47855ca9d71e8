//! `POST /api/chat-optimized`: the project's original streaming chat API,
//! answered from the response cache by default.
//!
//! Request `{message | messages, system_prompt?, use_cache? (true), model?,
//! max_tokens?, temperature?, top_p?, seed?}`, with `/generate`'s sampling
//! defaults. The answer is always server-sent events:
//! `{"content", "done": false, "request_id", "cached"}` per piece, then
//! `{"content": "", "done": true, "request_id", "cached", "finish_reason",
//! "usage", "timings"}`. Any error, before or during the stream, is one
//! `{"error", "done": true, "request_id"}` event; before the stream it comes
//! with the error's status.

use serde_json::{json, Value};

use crate::backend::{Backend, Error, Finished, Message, Priority, Prompt};
use crate::cache;
use crate::chat::{finish_reason, parse_messages, sse_data, timings_json, unique_hex, usage_json};
use crate::error::{error_body, ApiError};
use crate::generate::{model_or_first, plain_params, Frames, Framing};
use crate::http::{Request, Response};
use crate::json::{self, Fields};

/// Field holding the prompt, named by context-overflow errors.
const PROMPT_PARAM: &str = "messages";

/// Serves one request. Never an `Err`: refusals are events too.
pub fn handle(req: &Request, backend: &dyn Backend) -> Response {
    let request_id = format!("req-{}", unique_hex());
    match start(req, backend, &request_id) {
        Ok(response) => response,
        Err(err) => {
            let mut response = Response::event_stream(std::iter::once(error_event(&err, &request_id)));
            response.status = error_body(&err).0;
            response
        }
    }
}

fn start(req: &Request, backend: &dyn Backend, request_id: &str) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let messages = conversation(&f)?;
    let use_cache = f.boolean("use_cache")?.unwrap_or(true);
    let mut params = plain_params(&f, Priority::Interactive)?;
    // Seeds are 64 random bits to the sampler: a negative seed keeps its bits.
    params.seed = f.integer("seed")?.map(|s| s as u64);
    let model = model_or_first(&f, backend)?;

    let lookup = cache::look_up(req, backend, &model, &messages, &params, Some(use_cache))?;
    let (header, cached) = (lookup.header(), lookup.cached().unwrap_or(false));
    let prompt = Prompt::Chat(messages);
    let (generation, pending) = lookup
        .generation(backend, || backend.generate(&model, &prompt, &params))
        .map_err(|e| ApiError::engine(e, PROMPT_PARAM))?;
    let events = Frames::new(generation, Events { request_id: request_id.to_string(), cached });
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
struct Events {
    request_id: String,
    cached: bool,
}

impl Events {
    fn piece(&self, content: &str, done: bool) -> Value {
        json!({"content": content, "done": done, "request_id": self.request_id, "cached": self.cached})
    }
}

impl Framing for Events {
    fn text(&mut self, text: &str) -> Vec<u8> {
        sse_data(self.piece(text, false))
    }

    fn finished(&mut self, finished: &Finished) -> Vec<u8> {
        let mut last = self.piece("", true);
        last["finish_reason"] = Value::from(finish_reason(finished.reason));
        last["usage"] = usage_json(&finished.usage);
        last["timings"] = timings_json(&finished.usage);
        sse_data(last)
    }

    fn failed(&mut self, error: Error) -> Vec<u8> {
        error_event(&ApiError::engine(error, PROMPT_PARAM), &self.request_id)
    }
}

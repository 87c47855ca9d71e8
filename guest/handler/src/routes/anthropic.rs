//! Anthropic's Messages API: `POST /v1/messages`, whole or streamed, over
//! the same engine and queue as every other route.
//!
//! - Request: `model`, `max_tokens` (required), `messages` (`user` and
//!   `assistant` turns whose `content` is a string or text blocks),
//!   `system` (a string or text blocks), `stop_sequences`, `temperature`
//!   (0 to 1, default 1), `top_p`, `top_k`, `stream`, `metadata`.
//!   Anything the engine cannot honour (images, documents, tools, extended
//!   thinking) is a 400 naming the field, never ignored.
//! - Answer: `{id: "msg_…", type: "message", role: "assistant", model,
//!   content: [{type: "text", text}], stop_reason, stop_sequence: null,
//!   usage: {input_tokens, output_tokens, cache_read_input_tokens}}`.
//!   `stop_reason` is `max_tokens` when the limit, the context or the
//!   deadline ran out, else `end_turn` (the engine does not say whether a
//!   stop sequence or the end of text came first).
//! - Streamed: `message_start`, `content_block_start`, `ping`, a
//!   `content_block_delta` per piece of text, `content_block_stop`,
//!   `message_delta` (stop reason and output tokens), `message_stop`; a
//!   failure after the start is an `error` event.
//! - Errors: `{type: "error", error: {type, message}}`, with Anthropic's
//!   error types (`overloaded_error` with status 529 for a full queue).

use serde_json::{json, Value};

use crate::engine_client::{EngineClient, Error, FinishReason, Finished, Message, Prompt, SamplingParams, Usage};
use crate::error::{error_body, ApiError};
use crate::http::{Request, Response};
use crate::json::{self, Fields};
use crate::params::{base_params, parse_objects, parse_stop_list, text_of_typed_parts, OPENAI_CHAT_DEFAULTS};
use crate::stream::{read_all, Frames, Framing};
use crate::wire::{sse_event, unique_hex};

/// Usage before anything is counted.
const NO_USAGE: Usage = Usage {
    prompt_tokens: 0,
    completion_tokens: 0,
    cached_tokens: 0,
    queue_ms: 0.0,
    prompt_ms: 0.0,
    generation_ms: 0.0,
};

/// Field holding the conversation, named by context-overflow errors.
const PROMPT_PARAM: &str = "messages";

/// `POST /v1/messages`.
pub fn messages(req: &Request, engine: &dyn EngineClient) -> Response {
    serve(req, engine).unwrap_or_else(|err| error_response(&err))
}

fn serve(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let model = f.required_string("model")?.to_string();
    let max_tokens = f.integer_at_least("max_tokens", 1)?.ok_or_else(|| f.missing("max_tokens"))?;
    let mut messages = Vec::new();
    if let Some(system) = text_field(&f, "system")? {
        messages.push(Message { role: "system".into(), content: system });
    }
    messages.extend(parse_turns(&f)?);
    check_unhonoured(&f)?;
    // Anthropic samples as OpenAI's chat does by default: plain softmax at 1.
    let defaults = &OPENAI_CHAT_DEFAULTS;
    let params = SamplingParams {
        max_tokens,
        temperature: f.number_in("temperature", 0.0, false, 1.0)?.unwrap_or(defaults.temperature) as f32,
        top_k: f.integer_at_least("top_k", 0)?.unwrap_or(defaults.top_k),
        top_p: f.number_in("top_p", 0.0, true, 1.0)?.unwrap_or(defaults.top_p) as f32,
        stop: parse_stop_list(&f, "stop_sequences")?,
        ..base_params(defaults)
    };
    let stream = f.boolean("stream")?.unwrap_or(false);
    let generation =
        engine.generate(&model, &Prompt::Chat(messages), &params).map_err(|e| ApiError::engine(e, PROMPT_PARAM))?;
    let id = format!("msg_{}", unique_hex());
    if stream {
        let events = MessageEvents { id, model, started: false };
        return Ok(Response::event_stream(Frames::new(generation, events)));
    }
    let (text, finished) = read_all(generation, PROMPT_PARAM)?;
    let mut body = message_json(&id, &model, &finished);
    body["content"] = json!([{"type": "text", "text": text}]);
    Ok(Response::json(200, &body))
}

/// A string or a list of text blocks, joined; `None` when absent.
fn text_field(f: &Fields<'_>, name: &str) -> Result<Option<String>, ApiError> {
    match f.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(Value::Array(blocks)) => text_of_typed_parts(f, name, blocks, &["text"]).map(Some),
        Some(other) => Err(f.wrong_type(name, "a string or an array of text blocks", other)),
    }
}

/// The `messages`: `user` and `assistant` turns, at least one.
fn parse_turns(f: &Fields<'_>) -> Result<Vec<Message>, ApiError> {
    parse_objects(f, "messages", "message", |m| {
        let role = match m.required_string("role")? {
            role @ ("user" | "assistant") => role,
            other => {
                return Err(ApiError::param(
                    m.name("role"),
                    format!(
                        "Unsupported role '{other}': expected 'user' or 'assistant' (the system prompt is 'system')."
                    ),
                ))
            }
        };
        let content = text_field(m, "content")?.ok_or_else(|| m.missing("content"))?;
        Ok(Message { role: role.into(), content })
    })
}

/// Fields asking for what the engine cannot do are refused, never ignored.
fn check_unhonoured(f: &Fields<'_>) -> Result<(), ApiError> {
    f.refuse_nonempty("tools", "the model cannot call tools")?;
    match f.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::Object(choice)) if matches!(choice.get("type"), Some(t) if t == "auto" || t == "none") => {}
        Some(_) => {
            return Err(ApiError::param(
                "tool_choice",
                "'tool_choice' may only be auto or none: the model cannot call tools.",
            ))
        }
    }
    match f.get("thinking") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(t)) if matches!(t.get("type"), Some(kind) if kind == "disabled") => Ok(()),
        Some(_) => Err(ApiError::param("thinking", "'thinking' is not supported: the model does not think aloud.")),
    }
}

/// The message object without its content.
fn message_json(id: &str, model: &str, finished: &Finished) -> Value {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": stop_reason(finished.reason),
        "stop_sequence": null,
        "usage": usage_json(finished),
    })
}

fn usage_json(finished: &Finished) -> Value {
    let u = &finished.usage;
    json!({
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "cache_creation_input_tokens": 0,
    })
}

fn stop_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length | FinishReason::Timeout => "max_tokens",
        FinishReason::Stop | FinishReason::Cancelled => "end_turn",
    }
}

/// The status and Anthropic error object for `err`.
fn error_parts(err: &ApiError) -> (u16, Value) {
    let (status, body) = error_body(err);
    let message = body["error"]["message"].as_str().unwrap_or("The request failed.").to_string();
    let (status, kind) = match status {
        400 | 405 | 422 => (status, "invalid_request_error"),
        401 => (status, "authentication_error"),
        403 => (status, "permission_error"),
        404 => (status, "not_found_error"),
        413 => (status, "request_too_large"),
        429 => (429, "rate_limit_error"),
        503 if matches!(err, ApiError::Engine { error: Error::Overloaded(_), .. }) => (529, "overloaded_error"),
        503 => (503, "overloaded_error"),
        _ => (status, "api_error"),
    };
    (status, json!({"type": "error", "error": {"type": kind, "message": message}}))
}

fn error_response(err: &ApiError) -> Response {
    let (status, body) = error_parts(err);
    let response = Response::json(status, &body);
    match err {
        ApiError::Engine { error: Error::Overloaded(_), .. } => response.with_header("retry-after", "1"),
        _ => response,
    }
}

/// How a streamed message is written: Anthropic's named events.
struct MessageEvents {
    id: String,
    model: String,
    started: bool,
}

impl Framing for MessageEvents {
    fn opening(&mut self) -> Option<Vec<u8>> {
        self.started = true;
        let mut message =
            message_json(&self.id, &self.model, &Finished { reason: FinishReason::Stop, usage: NO_USAGE });
        message["stop_reason"] = Value::Null;
        let mut frames = sse_event("message_start", &json!({"type": "message_start", "message": message}));
        frames.extend(sse_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ));
        frames.extend(sse_event("ping", &json!({"type": "ping"})));
        Some(frames)
    }

    fn text(&mut self, text: &str) -> Vec<u8> {
        sse_event(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        )
    }

    fn finished(&mut self, finished: &Finished) -> Vec<Vec<u8>> {
        vec![
            sse_event("content_block_stop", &json!({"type": "content_block_stop", "index": 0})),
            sse_event(
                "message_delta",
                &json!({
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason(finished.reason), "stop_sequence": null},
                    "usage": usage_json(finished),
                }),
            ),
            sse_event("message_stop", &json!({"type": "message_stop"})),
        ]
    }

    fn failed(&mut self, error: Error) -> Vec<u8> {
        sse_event("error", &error_parts(&ApiError::engine(error, PROMPT_PARAM)).1)
    }
}

//! OpenAI's Responses API: `POST /v1/responses`, whole or streamed, over
//! the same engine and queue as every other route.
//!
//! - Request: `model`, `input` (a string, or messages: `{role, content}`
//!   with `content` a string or `input_text`/`output_text` parts, optionally
//!   typed `message`), `instructions` (the system prompt),
//!   `max_output_tokens`, `temperature`, `top_p`, `stream`. `store`,
//!   `metadata`, `user`, `truncation` and `parallel_tool_calls` are accepted
//!   (nothing is stored: there is no `GET /v1/responses/{id}`). What the
//!   engine cannot honour (`previous_response_id`, tools, reasoning, a text
//!   format other than text, background runs, non-text input) is a 400
//!   naming the field, never ignored.
//! - Answer: a `response` object with one `message` output item holding one
//!   `output_text` part; `status` is `incomplete` with
//!   `incomplete_details.reason: "max_output_tokens"` when the limit, the
//!   context or the deadline ran out, else `completed`.
//! - Streamed: `response.created`, `response.in_progress`,
//!   `response.output_item.added`, `response.content_part.added`, a
//!   `response.output_text.delta` per piece of text, then
//!   `response.output_text.done`, `response.content_part.done`,
//!   `response.output_item.done` and `response.completed` (or
//!   `response.incomplete`); every event has a `sequence_number`. A failure
//!   after the start is a `response.failed` event with the error.

use serde_json::{json, Map, Value};

use crate::engine_client::{Constraint, EngineClient, Error, FinishReason, Finished, Message, Prompt, SamplingParams};
use crate::error::{error_body, ApiError};
use crate::http::{Request, Response};
use crate::json::{self, Fields};
use crate::params::{base_params, format_constraint, parse_objects, text_of_typed_parts, OPENAI_CHAT_DEFAULTS};
use crate::stream::{read_all, Frames, Framing};
use crate::wire::{sse_event, unique_hex, unix_seconds};

/// Field holding the conversation, named by context-overflow errors.
const PROMPT_PARAM: &str = "input";

/// `POST /v1/responses`.
pub fn create(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let model = f.required_string("model")?.to_string();
    let mut messages = Vec::new();
    if let Some(instructions) = f.string("instructions")? {
        messages.push(Message { role: "system".into(), content: instructions.to_string() });
    }
    messages.extend(parse_input(&f)?);
    check_unhonoured(&f)?;
    for name in ["store", "parallel_tool_calls"] {
        f.boolean(name)?;
    }
    f.string("user")?;
    let defaults = &OPENAI_CHAT_DEFAULTS;
    let params = SamplingParams {
        max_tokens: f.integer_at_least("max_output_tokens", 1)?.unwrap_or(defaults.max_tokens),
        temperature: f.number_in("temperature", 0.0, false, 2.0)?.unwrap_or(defaults.temperature) as f32,
        top_p: f.number_in("top_p", 0.0, true, 1.0)?.unwrap_or(defaults.top_p) as f32,
        constraint: text_format(&f)?,
        ..base_params(defaults)
    };
    let stream = f.boolean("stream")?.unwrap_or(false);
    let generation =
        engine.generate(&model, &Prompt::Chat(messages), &params).map_err(|e| ApiError::engine(e, PROMPT_PARAM))?;
    let shape = Shape {
        id: format!("resp_{}", unique_hex()),
        message_id: format!("msg_{}", unique_hex()),
        model,
        created_at: unix_seconds(),
        max_output_tokens: (params.max_tokens > 0).then_some(params.max_tokens),
    };
    if stream {
        let events = ResponseEvents { shape, sequence: 0, text: String::new() };
        return Ok(Response::event_stream(Frames::new(generation, events)));
    }
    let (text, finished) = read_all(generation, PROMPT_PARAM)?;
    Ok(Response::json(200, &shape.response(Some((&text, &finished)))))
}

/// `input`: a string (one user message) or a list of messages.
fn parse_input(f: &Fields<'_>) -> Result<Vec<Message>, ApiError> {
    if let Some(Value::String(text)) = f.get("input") {
        return Ok(vec![Message { role: "user".into(), content: text.clone() }]);
    }
    parse_objects(f, "input", "message", |m| {
        match m.string("type")? {
            None | Some("message") => {}
            Some(other) => {
                return Err(ApiError::param(
                    m.name("type"),
                    format!("Input items of type '{other}' are not supported: only messages are."),
                ))
            }
        }
        let role = match m.required_string("role")? {
            "system" | "developer" => "system",
            role @ ("user" | "assistant") => role,
            other => {
                return Err(ApiError::param(
                    m.name("role"),
                    format!("Unsupported role '{other}': expected 'user', 'assistant', 'system' or 'developer'."),
                ))
            }
        };
        let content = match m.get("content") {
            Some(Value::String(text)) => text.clone(),
            Some(Value::Array(parts)) => text_of_typed_parts(m, "content", parts, &["input_text", "output_text"])?,
            None => return Err(m.missing("content")),
            Some(other) => return Err(m.wrong_type("content", "a string or an array of parts", other)),
        };
        Ok(Message { role: role.into(), content })
    })
}

/// `text.format`: `{"type": "text" | "json_object" | "json_schema", ...}`,
/// a schema beside the type.
fn text_format(f: &Fields<'_>) -> Result<Option<Constraint>, ApiError> {
    let Some(text) = f.object("text")? else { return Ok(None) };
    text.string("verbosity")?;
    match text.object("format")? {
        None => Ok(None),
        Some(format) => format_constraint(&format, ""),
    }
}

/// Fields asking for what the engine cannot do are refused, never ignored.
fn check_unhonoured(f: &Fields<'_>) -> Result<(), ApiError> {
    f.refuse_nonempty("previous_response_id", "responses are not stored; send the whole conversation as input")?;
    f.refuse_nonempty("conversation", "responses are not stored; send the whole conversation as input")?;
    f.refuse_nonempty("tools", "the model cannot call tools")?;
    match f.get("tool_choice") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "auto" || s == "none" => {}
        Some(_) => {
            return Err(ApiError::param(
                "tool_choice",
                "'tool_choice' may only be 'auto' or 'none': the model cannot call tools.",
            ))
        }
    }
    f.refuse_nonempty("background", "responses run while the client waits")?;
    f.refuse_nonempty("reasoning", "the model does not reason aloud")?;
    f.refuse_nonempty("prompt", "stored prompts are not supported")?;
    Ok(())
}

/// What every event and the final object say about the response.
struct Shape {
    id: String,
    message_id: String,
    model: String,
    created_at: u64,
    max_output_tokens: Option<u32>,
}

impl Shape {
    /// The response object: in progress (`None`) or finished with its text.
    fn response(&self, done: Option<(&str, &Finished)>) -> Value {
        let mut body = Map::new();
        body.insert("id".into(), Value::from(self.id.as_str()));
        body.insert("object".into(), Value::from("response"));
        body.insert("created_at".into(), Value::from(self.created_at));
        body.insert("model".into(), Value::from(self.model.as_str()));
        body.insert("error".into(), Value::Null);
        body.insert("instructions".into(), Value::Null);
        body.insert("max_output_tokens".into(), self.max_output_tokens.map_or(Value::Null, Value::from));
        body.insert("parallel_tool_calls".into(), Value::from(false));
        body.insert("tool_choice".into(), Value::from("none"));
        body.insert("tools".into(), json!([]));
        body.insert("text".into(), json!({"format": {"type": "text"}}));
        body.insert("store".into(), Value::from(false));
        match done {
            None => {
                body.insert("status".into(), Value::from("in_progress"));
                body.insert("incomplete_details".into(), Value::Null);
                body.insert("output".into(), json!([]));
                body.insert("usage".into(), Value::Null);
            }
            Some((text, finished)) => {
                let complete = matches!(finished.reason, FinishReason::Stop | FinishReason::Cancelled);
                body.insert("status".into(), Value::from(if complete { "completed" } else { "incomplete" }));
                body.insert(
                    "incomplete_details".into(),
                    if complete { Value::Null } else { json!({"reason": "max_output_tokens"}) },
                );
                body.insert("output".into(), json!([self.message(text, "completed")]));
                let u = &finished.usage;
                body.insert(
                    "usage".into(),
                    json!({
                        "input_tokens": u.prompt_tokens,
                        "input_tokens_details": {"cached_tokens": u.cached_tokens},
                        "output_tokens": u.completion_tokens,
                        "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": u.prompt_tokens + u.completion_tokens,
                    }),
                );
            }
        }
        Value::Object(body)
    }

    /// The output message item holding `text`.
    fn message(&self, text: &str, status: &str) -> Value {
        json!({
            "type": "message",
            "id": self.message_id,
            "status": status,
            "role": "assistant",
            "content": [output_text(text)],
        })
    }
}

fn output_text(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// How a streamed response is written: the Responses API's named events.
struct ResponseEvents {
    shape: Shape,
    sequence: u64,
    /// The text so far, repeated by the `done` events.
    text: String,
}

impl ResponseEvents {
    /// The event `kind` with `fields`, numbered.
    fn event(&mut self, kind: &str, mut fields: Value) -> Vec<u8> {
        fields["type"] = Value::from(kind);
        fields["sequence_number"] = Value::from(self.sequence);
        self.sequence += 1;
        sse_event(kind, &fields)
    }

    /// The fields naming the output text's place.
    fn place(&self) -> Value {
        json!({"item_id": self.shape.message_id, "output_index": 0, "content_index": 0})
    }
}

impl Framing for ResponseEvents {
    fn opening(&mut self) -> Option<Vec<u8>> {
        let response = self.shape.response(None);
        let mut frames = self.event("response.created", json!({"response": response}));
        frames.extend(self.event("response.in_progress", json!({"response": response})));
        let mut item = self.shape.message("", "in_progress");
        item["content"] = json!([]);
        frames.extend(self.event("response.output_item.added", json!({"output_index": 0, "item": item})));
        let mut part = self.place();
        part["part"] = output_text("");
        frames.extend(self.event("response.content_part.added", part));
        Some(frames)
    }

    fn text(&mut self, text: &str) -> Vec<u8> {
        self.text.push_str(text);
        let mut delta = self.place();
        delta["delta"] = Value::from(text);
        delta["logprobs"] = json!([]);
        self.event("response.output_text.delta", delta)
    }

    fn finished(&mut self, finished: &Finished) -> Vec<Vec<u8>> {
        let text = std::mem::take(&mut self.text);
        let mut done = self.place();
        done["text"] = Value::from(text.as_str());
        done["logprobs"] = json!([]);
        let mut part = self.place();
        part["part"] = output_text(&text);
        let item = json!({"output_index": 0, "item": self.shape.message(&text, "completed")});
        let response = self.shape.response(Some((&text, finished)));
        let last = if response["status"] == "completed" { "response.completed" } else { "response.incomplete" };
        vec![
            self.event("response.output_text.done", done),
            self.event("response.content_part.done", part),
            self.event("response.output_item.done", item),
            self.event(last, json!({"response": response})),
        ]
    }

    fn failed(&mut self, error: Error) -> Vec<u8> {
        let (_, body) = error_body(&ApiError::engine(error, PROMPT_PARAM));
        let mut response = self.shape.response(None);
        response["status"] = Value::from("failed");
        response["error"] = json!({"code": "server_error", "message": body["error"]["message"]});
        self.event("response.failed", json!({"response": response}))
    }
}

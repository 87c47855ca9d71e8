//! `POST /v1/chat/completions`: OpenAI's chat completions, whole or streamed
//! as server-sent events.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::backend::{
    Backend, Error, Event, FinishReason, Finished, GenerationStream, Message, Priority, Prompt, SamplingParams, Usage,
};
use crate::cache;
use crate::error::{error_body, ApiError};
use crate::http::{Request, Response};
use crate::json::{self, Fields};

/// Field holding the prompt, named by context-overflow errors.
const PROMPT_PARAM: &str = "messages";
/// OpenAI accepts at most this many stop sequences.
const MAX_STOP_SEQUENCES: usize = 4;
/// Recent tokens the repeat penalty looks at unless `repeat_last_n` says
/// otherwise (llama.cpp's default).
pub const DEFAULT_REPEAT_LAST_N: u32 = 64;

/// A validated chat completion request.
#[derive(Debug)]
pub struct ChatRequest {
    /// The requested model id.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Sampling settings for the engine.
    pub params: SamplingParams,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Send a final usage chunk when streaming.
    pub include_usage: bool,
}

/// Validates a chat completion request body.
///
/// `presence_penalty` and `frequency_penalty` are checked and then ignored:
/// they subtract a constant from logits (once, or once per occurrence), while
/// the engine's repeat penalty divides them over a window, and no rescaling of
/// one into the other holds across models. Clients that want a penalty send
/// the `repeat_penalty` extension. `logit_bias` and `user` are checked and
/// ignored likewise; the engine has no per-token bias.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    parse_fields(&json::parse_object(body)?, Priority::Interactive)
}

/// Validates a chat completion request already read into a JSON object;
/// `default_priority` applies when the request names none.
pub fn parse_fields(map: &Map<String, Value>, default_priority: Priority) -> Result<ChatRequest, ApiError> {
    let f = Fields::new(map);

    let messages = parse_messages(&f)?;
    let model = f.required_string("model")?.to_string();

    // Both spellings are validated; the newer one wins when both are given.
    let max_tokens = f.integer_at_least("max_tokens", 1)?;
    let max_completion_tokens = f.integer_at_least("max_completion_tokens", 1)?;
    let max_tokens = max_completion_tokens.or(max_tokens).unwrap_or(0);

    let sampling = parse_sampling(&f, max_tokens, &OPENAI_DEFAULTS, default_priority)?;
    check_response_format(&f)?;

    Ok(ChatRequest {
        model,
        messages,
        params: sampling.params,
        stream: sampling.stream,
        include_usage: sampling.include_usage,
    })
}

/// What a request that leaves a sampling field out gets.
pub struct SamplingDefaults {
    /// `temperature`.
    pub temperature: f64,
    /// `top_k` (0 keeps every token).
    pub top_k: u32,
    /// `top_p`.
    pub top_p: f64,
    /// `min_p`.
    pub min_p: f64,
}

/// OpenAI's defaults: plain softmax sampling at temperature 1.
pub const OPENAI_DEFAULTS: SamplingDefaults = SamplingDefaults { temperature: 1.0, top_k: 0, top_p: 1.0, min_p: 0.0 };

/// The sampling and streaming fields every completion API shares.
pub struct Sampling {
    /// Settings for the engine.
    pub params: SamplingParams,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

/// Validates the fields OpenAI's chat and text completions share
/// (`temperature, top_p, n, stop, stream, stream_options, seed,
/// presence_penalty, frequency_penalty, logit_bias, user`) and the
/// llama.cpp/Ollama extensions (`top_k, min_p, repeat_penalty,
/// repeat_last_n, timeout_ms, priority`). `max_tokens` comes from the
/// caller, which knows the API's spelling and default.
pub fn parse_sampling(
    f: &Fields<'_>,
    max_tokens: u32,
    defaults: &SamplingDefaults,
    default_priority: Priority,
) -> Result<Sampling, ApiError> {
    let temperature = f.number_in("temperature", 0.0, false, 2.0)?.unwrap_or(defaults.temperature);
    let top_p = f.number_in("top_p", 0.0, true, 1.0)?.unwrap_or(defaults.top_p);

    if let Some(n) = f.integer("n")? {
        if n != 1 {
            return Err(ApiError::param("n", format!("Only n=1 is supported, but got {n}.")));
        }
    }

    let stop = parse_stop(f)?;
    let stream = f.boolean("stream")?.unwrap_or(false);
    let include_usage = match f.get("stream_options") {
        None => false,
        Some(Value::Object(options)) => {
            Fields::nested(options, "stream_options").boolean("include_usage")?.unwrap_or(false)
        }
        Some(other) => return Err(f.wrong_type("stream_options", "an object", other)),
    };

    // Seeds are 64 random bits to the sampler: a negative seed keeps its bits.
    let seed = f.integer("seed")?.map(|s| s as u64);

    let presence_penalty = f.number_in("presence_penalty", -2.0, false, 2.0)?.unwrap_or(0.0);
    let frequency_penalty = f.number_in("frequency_penalty", -2.0, false, 2.0)?.unwrap_or(0.0);
    check_logit_bias(f)?;
    f.string("user")?;

    // Extensions shared with llama.cpp and Ollama.
    let top_k = f.integer_at_least("top_k", 0)?.unwrap_or(defaults.top_k);
    let min_p = f.number_in("min_p", 0.0, false, 1.0)?.unwrap_or(defaults.min_p);
    let repeat_penalty = f.number_above("repeat_penalty", 0.0)?.unwrap_or(1.0);
    let repeat_last_n = f.integer_at_least("repeat_last_n", 0)?.unwrap_or(DEFAULT_REPEAT_LAST_N);
    let timeout_ms = f.integer_at_least("timeout_ms", 1)?;
    let priority = parse_priority(f, default_priority)?;

    Ok(Sampling {
        params: SamplingParams {
            max_tokens,
            temperature: temperature as f32,
            top_k,
            top_p: top_p as f32,
            min_p: min_p as f32,
            repeat_penalty: repeat_penalty as f32,
            repeat_last_n,
            presence_penalty: presence_penalty as f32,
            frequency_penalty: frequency_penalty as f32,
            seed,
            stop,
            timeout_ms,
            priority,
        },
        stream,
        include_usage,
    })
}

/// The required, non-empty `messages` list.
pub fn parse_messages(f: &Fields<'_>) -> Result<Vec<Message>, ApiError> {
    let list = match f.get("messages") {
        None => return Err(f.missing("messages")),
        Some(Value::Array(list)) => list,
        Some(other) => return Err(f.wrong_type("messages", "an array", other)),
    };
    if list.is_empty() {
        return Err(ApiError::param("messages", "'messages' must contain at least one message."));
    }
    list.iter()
        .enumerate()
        .map(|(i, value)| {
            let path = format!("messages[{i}]");
            match value {
                Value::Object(map) => parse_message(&Fields::nested(map, &path)),
                other => Err(ApiError::param(
                    path.clone(),
                    format!("Invalid type for '{path}': expected an object, but got {} instead.", json::kind(other)),
                )),
            }
        })
        .collect()
}

fn parse_message(f: &Fields<'_>) -> Result<Message, ApiError> {
    let role = match f.required_string("role")? {
        // OpenAI's newer name for the system role.
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        other => {
            return Err(ApiError::param(
                f.name("role"),
                format!(
                    "Unsupported role '{other}' in '{}': expected 'system', 'user' or 'assistant'.",
                    f.name("role")
                ),
            ))
        }
    };
    let content = match f.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => text_of_parts(f, parts)?,
        // An assistant turn that only called tools has no content.
        None if role == "assistant" => String::new(),
        None => return Err(f.missing("content")),
        Some(other) => return Err(f.wrong_type("content", "a string or an array of parts", other)),
    };
    Ok(Message { role: role.to_string(), content })
}

/// The text of a content list (`[{"type": "text", "text": ".."}, ..]`), parts
/// joined by newlines.
fn text_of_parts(f: &Fields<'_>, parts: &[Value]) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let path = format!("{}[{j}]", f.name("content"));
        let map = match part {
            Value::Object(map) => map,
            other => {
                return Err(ApiError::param(
                    path.clone(),
                    format!("Invalid type for '{path}': expected an object, but got {} instead.", json::kind(other)),
                ))
            }
        };
        let part = Fields::nested(map, &path);
        match part.required_string("type")? {
            "text" => texts.push(part.required_string("text")?),
            other => {
                return Err(ApiError::param(
                    part.name("type"),
                    format!("Unsupported content part type '{other}': only 'text' is supported."),
                ))
            }
        }
    }
    Ok(texts.join("\n"))
}

fn parse_stop(f: &Fields<'_>) -> Result<Vec<String>, ApiError> {
    let stop = match f.get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => {
            if list.len() > MAX_STOP_SEQUENCES {
                return Err(ApiError::param(
                    "stop",
                    format!("'stop' may hold at most {MAX_STOP_SEQUENCES} sequences, but got {}.", list.len()),
                ));
            }
            let mut out = Vec::with_capacity(list.len());
            for (i, item) in list.iter().enumerate() {
                match item {
                    Value::String(s) => out.push(s.clone()),
                    other => {
                        return Err(f.wrong_type(&format!("stop[{i}]"), "a string", other));
                    }
                }
            }
            out
        }
        Some(other) => return Err(f.wrong_type("stop", "a string or an array of strings", other)),
    };
    // An empty stop string would end every generation before it starts.
    Ok(stop.into_iter().filter(|s| !s.is_empty()).collect())
}

fn check_logit_bias(f: &Fields<'_>) -> Result<(), ApiError> {
    let map = match f.get("logit_bias") {
        None => return Ok(()),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(f.wrong_type("logit_bias", "an object", other)),
    };
    for (token, bias) in map {
        if token.parse::<u32>().is_err() {
            return Err(ApiError::param(
                "logit_bias",
                format!("Invalid 'logit_bias': key '{token}' is not a token id."),
            ));
        }
        match bias.as_f64() {
            Some(b) if (-100.0..=100.0).contains(&b) => {}
            _ => {
                return Err(ApiError::param(
                    "logit_bias",
                    format!("Invalid 'logit_bias': the bias for token {token} must be a number between -100 and 100."),
                ))
            }
        }
    }
    Ok(())
}

fn check_response_format(f: &Fields<'_>) -> Result<(), ApiError> {
    let map = match f.get("response_format") {
        None => return Ok(()),
        Some(Value::Object(map)) => map,
        Some(other) => return Err(f.wrong_type("response_format", "an object", other)),
    };
    let format = Fields::nested(map, "response_format");
    match format.required_string("type")? {
        "text" => Ok(()),
        kind @ ("json_object" | "json_schema") => Err(ApiError::param(
            "response_format",
            format!("response_format type '{kind}' is not supported; only 'text' is."),
        )),
        other => Err(ApiError::param(
            "response_format.type",
            format!("Invalid 'response_format.type': '{other}'; only 'text' is supported."),
        )),
    }
}

/// Serves one chat completion request, from the response cache when it
/// holds the answer (see [`cache`]).
pub fn handle(req: &Request, backend: &dyn Backend) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let chat = parse_fields(&map, Priority::Interactive)?;
    let use_cache = Fields::new(&map).boolean("use_cache")?;
    let lookup = cache::look_up(req, backend, &chat.model, &chat.messages, &chat.params, use_cache)?;
    let (header, cached) = (lookup.header(), lookup.cached());
    let prompt = Prompt::Chat(chat.messages);
    let (generation, pending) = lookup
        .generation(backend, || backend.generate(&chat.model, &prompt, &chat.params))
        .map_err(|e| ApiError::engine(e, PROMPT_PARAM))?;

    let id = completion_id("chatcmpl");
    let created = unix_seconds();
    if chat.stream {
        let stream =
            CompletionStream { id, model: chat.model, include_usage: chat.include_usage, chunks: Chunks::Chat, cached };
        return Ok(cache::event_stream(stream.events(generation), pending, header));
    }

    let (content, finished) = read_all(generation, PROMPT_PARAM)?;
    if let Some(pending) = pending {
        pending.commit();
    }

    let mut body = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": chat.model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": finish_reason(finished.reason),
        }],
        "usage": usage_json(&finished.usage),
        "timings": timings_json(&finished.usage),
    });
    if let Some(cached) = cached {
        body["cached"] = Value::from(cached);
    }
    Ok(cache::mark(Response::json(200, &body), header))
}

/// The optional `priority` field: `"interactive"` or `"batch"`.
pub fn parse_priority(f: &Fields<'_>, default: Priority) -> Result<Priority, ApiError> {
    match f.string("priority")? {
        None => Ok(default),
        Some("interactive") => Ok(Priority::Interactive),
        Some("batch") => Ok(Priority::Batch),
        Some(other) => {
            Err(ApiError::param("priority", format!("'priority' must be 'interactive' or 'batch', not {other:?}.")))
        }
    }
}

/// OpenAI's name for why a generation ended (`timeout` and `cancelled` are
/// tern's own: a deadline passed, or a job was cancelled).
pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => "cancelled",
        FinishReason::Timeout => "timeout",
    }
}

/// llama.cpp server's `timings` object.
pub fn timings_json(usage: &Usage) -> Value {
    let per_second = |n: u32, ms: f64| if ms > 0.0 { f64::from(n) * 1000.0 / ms } else { 0.0 };
    let prompt_n = usage.prompt_tokens.saturating_sub(usage.cached_tokens);
    json!({
        "prompt_n": prompt_n,
        "prompt_ms": usage.prompt_ms,
        "prompt_per_second": per_second(prompt_n, usage.prompt_ms),
        "predicted_n": usage.completion_tokens,
        "predicted_ms": usage.generation_ms,
        "predicted_per_second": per_second(usage.completion_tokens, usage.generation_ms),
        "cache_n": usage.cached_tokens,
    })
}

/// OpenAI's usage object.
pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens),
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

/// A fresh id such as `chatcmpl-…` or `cmpl-…`.
pub fn completion_id(prefix: &str) -> String {
    format!("{prefix}-{}", unique_hex())
}

/// 32 hex digits, unique, not secret. std seeds `RandomState` from the wasi
/// random source, so two instances never share them.
pub fn unique_hex() -> String {
    let state = RandomState::new();
    let high = state.hash_one(SystemTime::now());
    let low = state.hash_one(high);
    format!("{high:016x}{low:016x}")
}

/// Seconds since the Unix epoch by the wall clock (wasi:clocks in a component).
pub fn unix_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Which OpenAI API a stream of chunks speaks.
pub enum Chunks {
    /// `chat.completion.chunk`: text in `delta.content`, opened by a chunk
    /// naming the assistant role.
    Chat,
    /// `text_completion`: text in `text`, opened by the prompt when it is
    /// echoed.
    Text {
        /// The prompt text to send first (`echo`), if any.
        echo: Option<String>,
    },
}

/// What a streamed completion says about itself in every chunk.
pub struct CompletionStream {
    /// `id` of every chunk.
    pub id: String,
    /// `model` of every chunk.
    pub model: String,
    /// Send a last chunk with `usage` (and `usage: null` in the others).
    pub include_usage: bool,
    /// The API's chunk shape.
    pub chunks: Chunks,
    /// Whether the answer came from the response cache, said in every
    /// chunk; none when the cache was not consulted.
    pub cached: Option<bool>,
}

impl CompletionStream {
    /// A 200 `text/event-stream` of [`CompletionStream::events`].
    pub fn respond(self, generation: Box<dyn GenerationStream>) -> Response {
        Response::event_stream(self.events(generation))
    }

    /// `generation`'s chunks, produced as the client reads them; then the
    /// finish reason, the usage chunk if asked for, and `data: [DONE]`.
    /// Dropping the iterator cancels the generation.
    pub fn events(self, generation: Box<dyn GenerationStream>) -> impl Iterator<Item = Vec<u8>> + 'static {
        let prompt_param = match self.chunks {
            Chunks::Chat => PROMPT_PARAM,
            Chunks::Text { .. } => "prompt",
        };
        CompletionEvents {
            generation: Some(generation),
            stream: self,
            created: unix_seconds(),
            prompt_param,
            queued: VecDeque::new(),
            started: false,
        }
    }
}

/// [`crate::generate::collect`] with errors naming `prompt_param` as the
/// field holding the prompt.
pub fn read_all(
    generation: Box<dyn GenerationStream>,
    prompt_param: &'static str,
) -> Result<(String, Finished), ApiError> {
    crate::generate::collect(generation).map_err(|e| ApiError::engine(e, prompt_param))
}

/// The server-sent events of one streamed completion, produced as the client
/// reads them. Owns the generation: dropping this cancels it.
struct CompletionEvents {
    generation: Option<Box<dyn GenerationStream>>,
    stream: CompletionStream,
    created: u64,
    prompt_param: &'static str,
    /// Events decided but not yet handed out (the tail after `finished`).
    queued: VecDeque<Vec<u8>>,
    started: bool,
}

impl CompletionEvents {
    /// A chunk carrying `text` (none: no text) and, at the end, the finish
    /// reason.
    fn chunk(&self, text: Option<&str>, finish: Option<&str>) -> Map<String, Value> {
        let choice = match self.stream.chunks {
            Chunks::Chat => json!({
                "index": 0,
                "delta": text.map_or_else(|| json!({}), |t| json!({"content": t})),
                "logprobs": null,
                "finish_reason": finish,
            }),
            Chunks::Text { .. } => json!({
                "text": text.unwrap_or(""),
                "index": 0,
                "logprobs": null,
                "finish_reason": finish,
            }),
        };
        self.choice_chunk(choice)
    }

    fn choice_chunk(&self, choice: Value) -> Map<String, Value> {
        let mut chunk = self.envelope(json!([choice]));
        if self.stream.include_usage {
            chunk.insert("usage".into(), Value::Null);
        }
        chunk
    }

    /// The first event: the assistant's role (chat) or the echoed prompt.
    fn opening(&self) -> Option<Vec<u8>> {
        match &self.stream.chunks {
            Chunks::Chat => Some(sse_data(self.choice_chunk(json!({
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": null,
                "finish_reason": null,
            })))),
            Chunks::Text { echo: Some(prompt) } if !prompt.is_empty() => Some(sse_data(self.chunk(Some(prompt), None))),
            Chunks::Text { .. } => None,
        }
    }

    fn envelope(&self, choices: Value) -> Map<String, Value> {
        let object = match self.stream.chunks {
            Chunks::Chat => "chat.completion.chunk",
            Chunks::Text { .. } => "text_completion",
        };
        let mut chunk = Map::new();
        chunk.insert("id".into(), Value::from(self.stream.id.as_str()));
        chunk.insert("object".into(), Value::from(object));
        chunk.insert("created".into(), Value::from(self.created));
        chunk.insert("model".into(), Value::from(self.stream.model.as_str()));
        chunk.insert("system_fingerprint".into(), Value::Null);
        chunk.insert("choices".into(), choices);
        if let Some(cached) = self.stream.cached {
            chunk.insert("cached".into(), Value::from(cached));
        }
        chunk
    }

    /// The chunk with the finish reason, then the usage chunk if asked
    /// for, then `[DONE]`. `timings` ride on the last JSON chunk, as in
    /// llama.cpp's server.
    fn finish(&mut self, finished: &Finished) -> Vec<u8> {
        let mut last = self.chunk(None, Some(finish_reason(finished.reason)));
        let timings = timings_json(&finished.usage);
        if self.stream.include_usage {
            let mut usage = self.envelope(json!([]));
            usage.insert("usage".into(), usage_json(&finished.usage));
            usage.insert("timings".into(), timings);
            self.queued.push_back(sse_data(usage));
        } else {
            last.insert("timings".into(), timings);
        }
        self.queued.push_back(b"data: [DONE]\n\n".to_vec());
        sse_data(last)
    }

    /// The error object a whole response would have carried, as one last
    /// event: the status line is long gone.
    fn fail(&mut self, error: Error) -> Vec<u8> {
        sse_data(error_body(&ApiError::engine(error, self.prompt_param)).1)
    }
}

impl Iterator for CompletionEvents {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if let Some(event) = self.queued.pop_front() {
            return Some(event);
        }
        if !self.started {
            self.started = true;
            if let Some(opening) = self.opening() {
                return Some(opening);
            }
        }
        loop {
            let generation = self.generation.as_mut()?;
            match generation.next_event() {
                Ok(Event::Text(text)) if text.is_empty() => {}
                Ok(Event::Text(text)) => return Some(sse_data(self.chunk(Some(&text), None))),
                Ok(Event::Pending) => {}
                Ok(Event::Finished(finished)) => {
                    self.generation = None;
                    return Some(self.finish(&finished));
                }
                Err(error) => {
                    self.generation = None;
                    return Some(self.fail(error));
                }
            }
        }
    }
}

/// One server-sent event carrying `value` as its data.
pub fn sse_data(value: impl Into<Value>) -> Vec<u8> {
    format!("data: {}\n\n", value.into()).into_bytes()
}

//! OpenAI's API: `POST /v1/chat/completions`, `POST /v1/completions`,
//! `POST /v1/embeddings`, `GET /v1/models` and `GET /v1/models/{id}`.
//!
//! Both completion APIs answer whole or as server-sent events of OpenAI's
//! chunks: opened by the assistant's role (chat) or the echoed prompt
//! (text), then a chunk per piece of text, the finish reason, the usage
//! chunk if asked for, and `data: [DONE]`. Chat completions are answered
//! from the response cache when it holds the answer (`cache.rs`).
//!
//! Text completions take one prompt per request: a string, an array holding
//! one string, or token ids (used exactly as given). `n` and `best_of` must
//! be 1; `suffix` and `logprobs` are refused, since the engine neither fills
//! in the middle nor reports token probabilities. The sampling fields are
//! chat's ([`parse_sampling`]), with OpenAI's defaults and `max_tokens` 16.
//!
//! Each embedding is the mean of the model's final normalised hidden states
//! (the output norm's result) over the input's tokens, scaled to unit
//! length, so a dot product is the cosine similarity. `input` is a string,
//! an array of strings, an array of token ids or an array of token-id
//! arrays; token ids are turned back into text and the text is embedded, so
//! an input spelled in ids the tokenizer would not produce is embedded as
//! its tokenization. `encoding_format` is `float` (the default) or
//! `base64`: the vector's little-endian `f32` bytes, base64-encoded, which
//! the official clients ask for. The vector size is the model's;
//! `dimensions` may only repeat it.

use serde_json::{json, Map, Value};

use crate::cache;
use crate::engine_client::{
    EngineClient, Error, Finished, GenerationStream, ModelInfo, Priority, Prompt, TokenLogprob, Usage,
};
use crate::error::{error_body, ApiError};
use crate::http::{Request, Response};
use crate::json::{self, Fields};
use crate::params::{
    parse_chat_fields, parse_prompt, parse_sampling, token_ids, ChatRequest, Sampling, OPENAI_COMPLETIONS_DEFAULTS,
};
use crate::stream::{collect_all, start_choices, Ending, Frames, Framing, Whole};
use crate::tools::{call_id, Held, StreamedCall, ToolCall, Tools};
use crate::wire::{completion_id, finish_reason, sse_data, timings_json, unix_seconds, usage_json};

/// Field holding a chat's prompt, named by context-overflow errors.
const CHAT_PROMPT_PARAM: &str = "messages";
/// Field holding a text completion's prompt, named by context-overflow
/// errors.
const TEXT_PROMPT_PARAM: &str = "prompt";
/// Field holding the inputs to embed, named by errors about them.
const INPUT_PARAM: &str = "input";
/// Most inputs one embeddings request may carry (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

// Models

/// `GET /v1/models`: OpenAI's model list, with the engine's details added.
pub fn models(engine: &dyn EngineClient) -> Response {
    let data: Vec<Value> = engine.list_models().iter().map(model_json).collect();
    Response::json(200, &json!({"object": "list", "data": data}))
}

/// `GET /v1/models/{id}`: one model, or 404 `model_not_found`.
pub fn model(engine: &dyn EngineClient, id: &str) -> Result<Response, ApiError> {
    match engine.list_models().iter().find(|m| m.id == id) {
        Some(info) => Ok(Response::json(200, &model_json(info))),
        None => Err(ApiError::engine(Error::UnknownModel(id.to_string()), "model")),
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
        "device": info.device,
        "device_memory_bytes": info.device_memory_bytes,
    })
}

// Chat completions

/// `POST /v1/chat/completions`, from the response cache when it holds the
/// answer.
pub fn chat(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let mut chat = parse_chat_fields(&map, Priority::Interactive)?;
    let use_cache = Fields::new(&map).boolean("use_cache")?;
    if chat.n > 1 && chat.stream {
        let engine_error = |e| ApiError::engine(e, CHAT_PROMPT_PARAM);
        let prompt = Prompt::Chat(std::mem::take(&mut chat.messages));
        let generations = start_choices(engine, &chat.model, &prompt, &chat.params, chat.n).map_err(engine_error)?;
        return Ok(streamed_choices(generations, || CompletionChunks::chat(&chat, None)));
    }
    if chat.n > 1 {
        return chat_choices(chat, engine);
    }
    let lookup = cache::look_up(req, engine, &chat.model, &chat.messages, &chat.params, use_cache)?;
    let (header, cached) = (lookup.header(), lookup.cached());
    let prompt = Prompt::Chat(std::mem::take(&mut chat.messages));
    let (generation, pending) = lookup
        .generation(engine, || engine.generate(&chat.model, &prompt, &chat.params))
        .map_err(|e| ApiError::engine(e, CHAT_PROMPT_PARAM))?;

    if chat.stream {
        let chunks = CompletionChunks::chat(&chat, cached);
        return Ok(cache::event_stream(Frames::new(generation, chunks), pending, header));
    }

    let whole = collect_all(generation).map_err(|e| ApiError::engine(e, CHAT_PROMPT_PARAM))?;
    if let Some(pending) = pending {
        pending.commit();
    }
    let mut body =
        chat_answer(&chat.model, chat.params.logprobs.is_some(), chat.tools.as_ref(), std::slice::from_ref(&whole));
    if let Some(cached) = cached {
        body["cached"] = Value::from(cached);
    }
    Ok(cache::mark(Response::json(200, &body), header))
}

/// A chat answered with `n` > 1 choices, whole (never from the cache).
fn chat_choices(chat: ChatRequest, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let engine_error = |e| ApiError::engine(e, CHAT_PROMPT_PARAM);
    let prompt = Prompt::Chat(chat.messages);
    let generations = start_choices(engine, &chat.model, &prompt, &chat.params, chat.n).map_err(engine_error)?;
    let wholes = generations.into_iter().map(collect_all).collect::<Result<Vec<_>, _>>().map_err(engine_error)?;
    Ok(Response::json(200, &chat_answer(&chat.model, chat.params.logprobs.is_some(), chat.tools.as_ref(), &wholes)))
}

/// The `chat.completion` object of the choices `wholes`, with their
/// log-probabilities when `logprobs`; an answer that calls one of `tools`
/// is a message with `tool_calls` and finish reason `tool_calls`.
fn chat_answer(model: &str, logprobs: bool, tools: Option<&Tools>, wholes: &[Whole]) -> Value {
    let choices = wholes.iter().map(|whole| {
        let call = tools.and_then(|t| t.read_call(&whole.text));
        let (message, finish) = match call {
            Some(call) => {
                (json!({"role": "assistant", "content": null, "tool_calls": [tool_call_json(&call)]}), "tool_calls")
            }
            None => (json!({"role": "assistant", "content": whole.text}), finish_reason(whole.finished.reason)),
        };
        json!({
            "message": message,
            "logprobs": if logprobs { chat_logprobs_json(&whole.logprobs) } else { Value::Null },
            "finish_reason": finish,
        })
    });
    whole_answer("chatcmpl", "chat.completion", model, choices, wholes)
}

/// OpenAI's `tool_calls` entry: the arguments as JSON text.
fn tool_call_json(call: &ToolCall) -> Value {
    json!({
        "id": call_id(),
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments.to_string()},
    })
}

/// The usage of several choices of one prompt: the prompt (and its times)
/// counted once, the generated tokens summed.
fn choices_usage(wholes: &[Whole]) -> Usage {
    total_usage(&wholes.iter().map(|w| w.finished).collect::<Vec<_>>())
}

/// [`choices_usage`] of the choices' ends.
fn total_usage(ends: &[Finished]) -> Usage {
    let mut usage = ends[0].usage;
    usage.completion_tokens = ends.iter().map(|f| f.usage.completion_tokens).sum();
    usage.generation_ms = ends.iter().map(|f| f.usage.generation_ms).fold(0.0, f64::max);
    usage
}

/// `n` choices of one prompt in one stream: each choice's chunks (as
/// `make` makes a single answer's) carry the first's id and their own
/// `index`; the usage chunk (when asked for) and `[DONE]` follow the last.
fn streamed_choices(generations: Vec<Box<dyn GenerationStream>>, make: impl Fn() -> CompletionChunks) -> Response {
    let last = make();
    let choices = generations
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let chunks = CompletionChunks {
                id: last.id.clone(),
                created: last.created,
                index: i as u32,
                trailer: false,
                ..make()
            };
            (g, chunks)
        })
        .collect();
    let ending: Ending = Box::new(move |ends: &[Finished]| {
        let mut frames = Vec::with_capacity(2);
        if last.include_usage && !ends.is_empty() {
            let usage = total_usage(ends);
            let mut chunk = last.envelope(json!([]));
            chunk.insert("usage".into(), usage_json(&usage));
            chunk.insert("timings".into(), timings_json(&usage));
            frames.push(sse_data(chunk));
        }
        frames.push(b"data: [DONE]\n\n".to_vec());
        frames
    });
    Response::event_stream(Frames::interleaved(choices, ending))
}

// Text completions

/// `POST /v1/completions`.
pub fn completions(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let prompt = parse_prompt(&f)?;
    let model = f.required_string("model")?.to_string();
    let max_tokens = f.integer_at_least("max_tokens", 1)?.unwrap_or(OPENAI_COMPLETIONS_DEFAULTS.max_tokens);
    let mut sampling = parse_sampling(&f, max_tokens, &OPENAI_COMPLETIONS_DEFAULTS, Priority::Interactive)?;
    let echo = f.boolean("echo")?.unwrap_or(false);
    check_unsupported(&f)?;
    sampling.params.logprobs = text_logprobs(&f)?;

    let engine_error = |e| ApiError::engine(e, TEXT_PROMPT_PARAM);
    // `parse_prompt` makes text or token ids, never a chat.
    let echoed = match &prompt {
        _ if !echo => None,
        Prompt::Tokens(ids) => Some(engine.detokenize(&model, ids).map_err(engine_error)?),
        Prompt::Text(text) => Some(text.clone()),
        Prompt::Chat(_) => None,
    };
    if sampling.stream && sampling.n > 1 {
        let generations = start_choices(engine, &model, &prompt, &sampling.params, sampling.n).map_err(engine_error)?;
        return Ok(streamed_choices(generations, || CompletionChunks::text(&model, &sampling, echoed.clone())));
    }
    if sampling.stream {
        let generation = engine.generate(&model, &prompt, &sampling.params).map_err(engine_error)?;
        let chunks = CompletionChunks::text(&model, &sampling, echoed);
        return Ok(Response::event_stream(Frames::new(generation, chunks)));
    }

    // Whole: one choice or several.
    let generations = start_choices(engine, &model, &prompt, &sampling.params, sampling.n).map_err(engine_error)?;
    let wholes = generations.into_iter().map(collect_all).collect::<Result<Vec<_>, _>>().map_err(engine_error)?;
    let echoed = echoed.unwrap_or_default();
    let start = echoed.chars().count();
    let choices = wholes.iter().map(|whole| {
        json!({
            "text": format!("{echoed}{}", whole.text),
            "logprobs": sampling.params.logprobs.map_or(Value::Null, |_| text_logprobs_json(&whole.logprobs, start)),
            "finish_reason": finish_reason(whole.finished.reason),
        })
    });
    Ok(Response::json(200, &whole_answer("cmpl", "text_completion", &model, choices, &wholes)))
}

/// A whole answer of `object` kind with the `choices` made from `wholes`
/// (each numbered by its `index`), their usage and timings.
fn whole_answer(
    id_prefix: &str,
    object: &str,
    model: &str,
    choices: impl Iterator<Item = Value>,
    wholes: &[Whole],
) -> Value {
    let choices: Vec<Value> = choices
        .enumerate()
        .map(|(i, mut choice)| {
            choice["index"] = Value::from(i);
            choice
        })
        .collect();
    let usage = choices_usage(wholes);
    json!({
        "id": completion_id(id_prefix),
        "object": object,
        "created": unix_seconds(),
        "model": model,
        "system_fingerprint": null,
        "choices": choices,
        "usage": usage_json(&usage),
        "timings": timings_json(&usage),
    })
}

/// Most alternatives a text completion's `logprobs` may ask for, as OpenAI
/// allows.
const MAX_TEXT_LOGPROBS: i64 = 5;

/// A text completion's `logprobs`: how many alternatives to report with
/// each token's log-probability (0 to 5); absent, null or false: none.
fn text_logprobs(f: &Fields<'_>) -> Result<Option<u8>, ApiError> {
    match f.get("logprobs") {
        None | Some(Value::Bool(false)) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n @ 0..=MAX_TEXT_LOGPROBS) => Ok(Some(n as u8)),
            _ => Err(f.out_of_range("logprobs", "an integer from 0 to 5", v)),
        },
    }
}

/// A token's text as the APIs show it (a token holding part of a
/// character shows the replacement character).
fn token_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Chat's `logprobs`: `{content: [{token, logprob, bytes, top_logprobs}],
/// refusal: null}`.
fn chat_logprobs_json(tokens: &[TokenLogprob]) -> Value {
    let entry = |bytes: &[u8], logprob: f32| json!({"token": token_text(bytes), "logprob": logprob, "bytes": bytes});
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let mut e = entry(&t.bytes, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|a| entry(&a.bytes, a.logprob)).collect();
            e
        })
        .collect();
    json!({"content": content, "refusal": null})
}

/// Text completions' `logprobs`: `{tokens, token_logprobs, top_logprobs,
/// text_offset}`, offsets in characters from `start`.
fn text_logprobs_json(tokens: &[TokenLogprob], start: usize) -> Value {
    let mut offset = start;
    let mut text_offset = Vec::with_capacity(tokens.len());
    for t in tokens {
        text_offset.push(offset);
        offset += token_text(&t.bytes).chars().count();
    }
    let top: Vec<Value> = tokens
        .iter()
        .map(|t| Value::Object(t.top.iter().map(|a| (token_text(&a.bytes), Value::from(a.logprob))).collect()))
        .collect();
    json!({
        "tokens": tokens.iter().map(|t| token_text(&t.bytes)).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

/// `best_of` must be 1; `suffix` is refused unless empty (`logprobs` is,
/// with every completion API, by [`parse_sampling`]).
fn check_unsupported(f: &Fields<'_>) -> Result<(), ApiError> {
    if let Some(best_of) = f.integer("best_of")? {
        if best_of != 1 {
            return Err(ApiError::param("best_of", format!("Only best_of=1 is supported, but got {best_of}.")));
        }
    }
    f.string("suffix")?;
    f.refuse_nonempty("suffix", "the engine only continues a prompt")
}

// Streamed chunks

/// Which OpenAI API a stream of chunks speaks.
enum ChunkKind {
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

/// How a streamed completion is written: one server-sent event per chunk,
/// each saying the same things about the completion.
struct CompletionChunks {
    /// `id` of every chunk.
    id: String,
    /// `model` of every chunk.
    model: String,
    /// `created` of every chunk.
    created: u64,
    /// Send a last chunk with `usage` (and `usage: null` in the others).
    include_usage: bool,
    /// The API's chunk shape.
    kind: ChunkKind,
    /// Whether the answer came from the response cache, said in every
    /// chunk; none when the cache was not consulted.
    cached: Option<bool>,
    /// Log-probabilities not yet sent, when they were asked for.
    logprobs: Option<Vec<TokenLogprob>>,
    /// Characters of text before the next token (text completions'
    /// `text_offset`).
    text_offset: usize,
    /// Tools the answer may call (chat).
    call: Option<StreamedCall>,
    /// The choice's number (`n` > 1).
    index: u32,
    /// Whether its end also writes the usage chunk and `[DONE]` (false for
    /// one of several choices, whose stream ends once all have).
    trailer: bool,
}

impl CompletionChunks {
    /// A chat answer's chunks (one choice, ending the stream).
    fn chat(chat: &ChatRequest, cached: Option<bool>) -> Self {
        CompletionChunks {
            id: completion_id("chatcmpl"),
            model: chat.model.clone(),
            created: unix_seconds(),
            include_usage: chat.include_usage,
            kind: ChunkKind::Chat,
            cached,
            logprobs: chat.params.logprobs.map(|_| Vec::new()),
            text_offset: 0,
            call: chat.tools.clone().map(StreamedCall::new),
            index: 0,
            trailer: true,
        }
    }

    /// A text completion's chunks, after the `echoed` prompt if any.
    fn text(model: &str, sampling: &Sampling, echoed: Option<String>) -> Self {
        CompletionChunks {
            id: completion_id("cmpl"),
            model: model.to_string(),
            created: unix_seconds(),
            include_usage: sampling.include_usage,
            text_offset: echoed.as_deref().map_or(0, |e| e.chars().count()),
            kind: ChunkKind::Text { echo: echoed },
            cached: None,
            logprobs: sampling.params.logprobs.map(|_| Vec::new()),
            call: None,
            index: 0,
            trailer: true,
        }
    }

    /// Field holding the prompt, named by context-overflow errors.
    fn prompt_param(&self) -> &'static str {
        match self.kind {
            ChunkKind::Chat => CHAT_PROMPT_PARAM,
            ChunkKind::Text { .. } => TEXT_PROMPT_PARAM,
        }
    }

    /// A chunk carrying `text` (none: no text), the log-probabilities kept
    /// so far when they were asked for, and, at the end, the finish reason.
    fn chunk(&mut self, text: Option<&str>, finish: Option<&str>) -> Map<String, Value> {
        let tokens = self.logprobs.as_mut().map(std::mem::take);
        let logprobs = match (&self.kind, tokens) {
            (_, None) => Value::Null,
            (ChunkKind::Chat, Some(tokens)) => chat_logprobs_json(&tokens),
            (ChunkKind::Text { .. }, Some(tokens)) => {
                let json = text_logprobs_json(&tokens, self.text_offset);
                self.text_offset += tokens.iter().map(|t| token_text(&t.bytes).chars().count()).sum::<usize>();
                json
            }
        };
        let choice = match self.kind {
            ChunkKind::Chat => json!({
                "index": self.index,
                "delta": text.map_or_else(|| json!({}), |t| json!({"content": t})),
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
            ChunkKind::Text { .. } => json!({
                "text": text.unwrap_or(""),
                "index": self.index,
                "logprobs": logprobs,
                "finish_reason": finish,
            }),
        };
        self.choice_chunk(choice)
    }

    fn choice_chunk(&self, choice: Value) -> Map<String, Value> {
        let mut chunk = self.envelope(json!([choice]));
        if self.include_usage {
            chunk.insert("usage".into(), Value::Null);
        }
        chunk
    }

    fn envelope(&self, choices: Value) -> Map<String, Value> {
        let object = match self.kind {
            ChunkKind::Chat => "chat.completion.chunk",
            ChunkKind::Text { .. } => "text_completion",
        };
        let mut chunk = Map::new();
        chunk.insert("id".into(), Value::from(self.id.as_str()));
        chunk.insert("object".into(), Value::from(object));
        chunk.insert("created".into(), Value::from(self.created));
        chunk.insert("model".into(), Value::from(self.model.as_str()));
        chunk.insert("system_fingerprint".into(), Value::Null);
        chunk.insert("choices".into(), choices);
        if let Some(cached) = self.cached {
            chunk.insert("cached".into(), Value::from(cached));
        }
        chunk
    }
}

impl Framing for CompletionChunks {
    /// The assistant's role (chat) or the echoed prompt.
    fn opening(&mut self) -> Option<Vec<u8>> {
        match &self.kind {
            ChunkKind::Chat => Some(sse_data(self.choice_chunk(json!({
                "index": self.index,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": null,
                "finish_reason": null,
            })))),
            ChunkKind::Text { echo: Some(prompt) } if !prompt.is_empty() => {
                let prompt = prompt.clone();
                // The echoed prompt is not generated: it has no log-probabilities.
                let chunk = self.choice_chunk(
                    json!({"text": prompt, "index": self.index, "logprobs": null, "finish_reason": null}),
                );
                Some(sse_data(chunk))
            }
            ChunkKind::Text { .. } => None,
        }
    }

    fn logprobs(&mut self, tokens: Vec<TokenLogprob>) {
        if let Some(kept) = self.logprobs.as_mut() {
            kept.extend(tokens);
        }
    }

    fn text(&mut self, text: &str) -> Vec<u8> {
        match self.call.as_mut().map_or(Some(text), |c| c.pass(text)) {
            Some(text) => sse_data(self.chunk(Some(text), None)),
            None => Vec::new(),
        }
    }

    /// The chunk with the finish reason, then the usage chunk if asked for,
    /// then `[DONE]`. `timings` ride on the last JSON chunk, as in
    /// llama.cpp's server. A held call goes first, as one `tool_calls`
    /// delta (or, if it never became a whole call, as text).
    fn finished(&mut self, finished: &Finished) -> Vec<Vec<u8>> {
        let mut frames = Vec::with_capacity(4);
        let mut reason = finish_reason(finished.reason);
        match self.call.as_mut().map_or(Held::Nothing, StreamedCall::finish) {
            Held::Nothing => {}
            Held::Call(call) => {
                let mut delta = tool_call_json(&call);
                delta["index"] = Value::from(0);
                let chunk = self.choice_chunk(json!({
                    "index": self.index, "delta": {"tool_calls": [delta]}, "logprobs": null, "finish_reason": null,
                }));
                frames.push(sse_data(chunk));
                reason = "tool_calls";
            }
            Held::Text(text) => frames.push(sse_data(self.chunk(Some(&text), None))),
        }
        let mut last = self.chunk(None, Some(reason));
        if !self.trailer {
            frames.push(sse_data(last));
            return frames;
        }
        let timings = timings_json(&finished.usage);
        if self.include_usage {
            let mut usage = self.envelope(json!([]));
            usage.insert("usage".into(), usage_json(&finished.usage));
            usage.insert("timings".into(), timings);
            frames.push(sse_data(last));
            frames.push(sse_data(usage));
        } else {
            last.insert("timings".into(), timings);
            frames.push(sse_data(last));
        }
        frames.push(b"data: [DONE]\n\n".to_vec());
        frames
    }

    /// The error object a whole response would have carried.
    fn failed(&mut self, error: Error) -> Vec<u8> {
        sse_data(error_body(&ApiError::engine(error, self.prompt_param())).1)
    }
}

// Embeddings

/// `POST /v1/embeddings`.
pub fn embeddings(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let model = f.required_string("model")?;
    let inputs = parse_input(&f)?;
    let base64 = match f.string("encoding_format")? {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::param(
                "encoding_format",
                format!("Invalid 'encoding_format': {other:?}; expected 'float' or 'base64'."),
            ))
        }
    };
    let dimensions = f.integer_at_least("dimensions", 1)?;
    f.string("user")?;

    let engine_error = |e| ApiError::engine(e, INPUT_PARAM);
    let texts = inputs
        .into_iter()
        .map(|input| match input {
            Input::Text(text) => Ok(text),
            Input::Tokens(ids) => engine.detokenize(model, &ids).map_err(engine_error),
        })
        .collect::<Result<Vec<String>, ApiError>>()?;
    let embeddings = engine.embed(model, &texts).map_err(engine_error)?;

    // The size is only known once the model has answered.
    let size = embeddings.first().map_or(0, |e| e.vector.len());
    if let Some(asked) = dimensions {
        if asked as usize != size {
            return Err(ApiError::param(
                "dimensions",
                format!("This model's embeddings have {size} dimensions; 'dimensions' must be {size}, not {asked}."),
            ));
        }
    }

    let data: Vec<Value> = embeddings
        .iter()
        .enumerate()
        .map(|(index, e)| {
            let embedding = if base64 { Value::from(base64_f32(&e.vector)) } else { json!(e.vector) };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: u64 = embeddings.iter().map(|e| u64::from(e.tokens)).sum();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok(Response::json(200, &body))
}

/// One input as the request spelled it.
enum Input {
    Text(String),
    Tokens(Vec<u32>),
}

/// The `input` field: one or more non-empty texts or token-id lists.
fn parse_input(f: &Fields<'_>) -> Result<Vec<Input>, ApiError> {
    let empty = |param: String| ApiError::param(param.clone(), format!("'{param}' must not be empty."));
    let list = match f.get(INPUT_PARAM) {
        None => return Err(f.missing(INPUT_PARAM)),
        Some(Value::String(text)) if text.is_empty() => return Err(empty(f.name(INPUT_PARAM))),
        Some(Value::String(text)) => return Ok(vec![Input::Text(text.clone())]),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(f.wrong_type(
                INPUT_PARAM,
                "a string, an array of strings, an array of token ids or an array of token-id arrays",
                other,
            ))
        }
    };
    if list.is_empty() {
        return Err(empty(f.name(INPUT_PARAM)));
    }
    if list.len() > MAX_INPUTS {
        return Err(ApiError::param(
            INPUT_PARAM,
            format!("'input' may hold at most {MAX_INPUTS} inputs, but got {}.", list.len()),
        ));
    }
    if list.iter().all(Value::is_number) {
        return Ok(vec![Input::Tokens(token_ids(&f.name(INPUT_PARAM), list)?)]);
    }
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("{}[{i}]", f.name(INPUT_PARAM));
            match item {
                Value::String(text) if text.is_empty() => Err(empty(path)),
                Value::String(text) => Ok(Input::Text(text.clone())),
                Value::Array(ids) => Ok(Input::Tokens(token_ids(&path, ids)?)),
                other => Err(ApiError::param(
                    path.clone(),
                    format!(
                        "Invalid type for '{path}': expected a string or an array of token ids, but got {} instead.",
                        json::kind(other)
                    ),
                )),
            }
        })
        .collect()
}

/// The little-endian bytes of `vector`, base64-encoded with padding
/// (RFC 4648's standard alphabet), as OpenAI's `encoding_format: "base64"`.
pub fn base64_f32(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], group.get(1).copied().unwrap_or(0), group.get(2).copied().unwrap_or(0)];
        let bits = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            // A group of n bytes fills n + 1 characters; `=` pads the rest.
            if i <= group.len() {
                out.push(char::from(ALPHABET[(bits >> shift) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

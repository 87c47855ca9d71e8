//! The remote adapter: `tern:llm/inference` over an OpenAI-compatible
//! upstream, for runtimes without tern's host.
//!
//! Composed with the handler (`tern compose`), it turns every inference call
//! into a request to the upstream named by `TERN_UPSTREAM` (e.g.
//! `http://127.0.0.1:8080`, a `tern serve` or a `llama-server`), with
//! `TERN_UPSTREAM_KEY` as its bearer key:
//! - a generation is a streamed `/v1/chat/completions` (or `/v1/completions`
//!   for text and token prompts) whose server-sent events become the
//!   interface's events; its pollable is the upstream body's, so the
//!   handler sleeps until bytes arrive; dropping the generation closes the
//!   upstream request, which cancels the upstream's work;
//! - an upstream error keeps its status: 400 is `invalid-request`, 404
//!   `unknown-model`, 429 `overloaded`, 503 `unavailable`;
//! - models, tokens and embeddings come from `/v1/models`, `/tokenize`,
//!   `/detokenize` and `/v1/embeddings`; queued jobs need tern's own host.
//!
//! It also stands in for what such runtimes lack: a key-value store in the
//! instance's memory, `wasi:config` answering `TERN_<KEY>` from the
//! environment, and no app database (the app layer's routes answer 503).

#[allow(clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "tern:llm/remote-adapter",
        generate_all,
    });
}

// The stand-ins every adapter carries (guest/stand-ins), written against
// `crate::bindings` and `crate::Adapter`.
#[path = "../../stand-ins/absent.rs"]
mod absent;
#[path = "../../stand-ins/memory_store.rs"]
mod memory_store;
mod sse;
mod upstream;

use std::cell::RefCell;

use bindings::exports::tern::llm::inference::{
    Embedding, EngineStatus, Error, Event, FinishReason, Finished, Generation, Guest, GuestGeneration, Histogram,
    JobInfo, Message, ModelInfo, Prompt, SamplingParams, Usage,
};
use bindings::wasi::io::poll::Pollable;
use serde_json::{json, Value};

use upstream::Stream;

struct Remote;

/// The type the stand-ins implement their interfaces on.
type Adapter = Remote;

impl Guest for Remote {
    type Generation = RemoteGeneration;

    fn list_models() -> Vec<ModelInfo> {
        let Ok(list) = upstream::get_json("/v1/models") else { return Vec::new() };
        list["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some(ModelInfo {
                    id: m["id"].as_str()?.to_string(),
                    architecture: m["architecture"].as_str().unwrap_or("remote").to_string(),
                    parameter_count: m["parameter_count"].as_u64().unwrap_or(0),
                    context_length: m["context_length"]
                        .as_u64()
                        .or(m["meta"]["n_ctx_train"].as_u64())
                        .unwrap_or(4096)
                        .try_into()
                        .unwrap_or(u32::MAX),
                    quantization: m["quantization"].as_str().unwrap_or_default().to_string(),
                    size_bytes: m["size_bytes"].as_u64().unwrap_or(0),
                    modified_at: m["created"].as_u64().unwrap_or(0),
                    device: m["device"].as_str().unwrap_or("remote").to_string(),
                    device_memory_bytes: m["device_memory_bytes"].as_u64().unwrap_or(0),
                })
            })
            .collect()
    }

    fn status() -> EngineStatus {
        let empty = || Histogram { bounds: Vec::new(), counts: Vec::new(), sum: 0.0, count: 0 };
        EngineStatus {
            ready: true,
            running: 0,
            waiting: 0,
            max_waiting: 0,
            prompt_tokens_total: 0,
            generated_tokens_total: 0,
            requests_total: 0,
            cancelled_total: 0,
            rejected_total: 0,
            preempted_total: 0,
            kv_block_tokens: 0,
            kv_blocks_total: 0,
            kv_blocks_used: 0,
            kv_blocks_cached: 0,
            prefix_hits_total: 0,
            cached_tokens_total: 0,
            steps_total: 0,
            time_to_first_token: empty(),
            inter_token_latency: empty(),
            queue_time: empty(),
            request_latency: empty(),
            uptime_ms: 0,
            rss_bytes: 0,
        }
    }

    fn tokenize(_model: String, text: String) -> Result<Vec<u32>, Error> {
        let answer = upstream::post_json("/tokenize", &json!({ "content": text }))?;
        Ok(answer["tokens"].as_array().into_iter().flatten().filter_map(|t| t.as_u64()).map(|t| t as u32).collect())
    }

    fn detokenize(_model: String, tokens: Vec<u32>) -> Result<String, Error> {
        let answer = upstream::post_json("/detokenize", &json!({ "tokens": tokens }))?;
        Ok(answer["content"].as_str().unwrap_or_default().to_string())
    }

    /// Upstreams do not share their templates; the rendering is only used
    /// as a key (the response cache), so a plain one serves.
    fn render_chat(_model: String, messages: Vec<Message>) -> Result<String, Error> {
        Ok(messages.iter().map(|m| format!("<|{}|>{}\n", m.role, m.content)).collect())
    }

    fn embed(model: String, inputs: Vec<String>) -> Result<Vec<Embedding>, Error> {
        let answer = upstream::post_json("/v1/embeddings", &json!({ "model": model, "input": inputs }))?;
        let tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0) as u32 / inputs.len().max(1) as u32;
        Ok(answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| Embedding {
                vector: d["embedding"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_f64)
                    .map(|f| f as f32)
                    .collect(),
                tokens,
            })
            .collect())
    }

    fn generate(model: String, prompt: Prompt, params: SamplingParams) -> Result<Generation, Error> {
        let (path, body) = request_body(&model, prompt, &params)?;
        let stream = upstream::open_stream(&path, &body)?;
        Ok(Generation::new(RemoteGeneration {
            state: RefCell::new(State::new(stream, path.ends_with("chat/completions"))),
        }))
    }

    fn submit_job(_model: String, _prompt: Prompt, _params: SamplingParams) -> Result<String, Error> {
        Err(Error::Unavailable("queued jobs need tern's own host; this runtime forwards to an upstream".into()))
    }

    fn job_status(_id: String) -> Option<JobInfo> {
        None
    }

    fn cancel_job(_id: String) -> Option<JobInfo> {
        None
    }
}

/// The upstream path and body for a generation.
fn request_body(model: &str, prompt: Prompt, p: &SamplingParams) -> Result<(String, Value), Error> {
    if p.logprobs.is_some() {
        return Err(Error::InvalidRequest("log-probabilities are not forwarded to the upstream".into()));
    }
    let mut body = json!({
        "model": model,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "min_p": p.min_p,
        "repeat_penalty": p.repeat_penalty,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "stop": p.stop,
    });
    let fields = body.as_object_mut().expect("an object");
    if p.max_tokens > 0 {
        fields.insert("max_tokens".into(), json!(p.max_tokens));
    }
    if let Some(seed) = p.seed {
        fields.insert("seed".into(), json!(seed));
    }
    if p.ignore_eos {
        fields.insert("ignore_eos".into(), json!(true));
    }
    if let Some(ms) = p.timeout_ms {
        fields.insert("timeout_ms".into(), json!(ms));
    }
    use bindings::exports::tern::llm::inference::Constraint;
    match &p.constraint {
        None => {}
        Some(Constraint::JsonObject) => {
            fields.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(Constraint::JsonSchema(schema)) => {
            let schema: Value = serde_json::from_str(schema).map_err(|e| Error::InvalidRequest(e.to_string()))?;
            fields.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}),
            );
        }
        Some(Constraint::Gbnf(grammar)) => {
            fields.insert("grammar".into(), json!(grammar));
        }
        Some(Constraint::JsonOrText(_)) => {
            return Err(Error::InvalidRequest("tool calls are not forwarded to the upstream".into()));
        }
    }
    let path = match prompt {
        Prompt::Chat(messages) => {
            let messages: Vec<Value> = messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect();
            fields.insert("messages".into(), json!(messages));
            "/v1/chat/completions"
        }
        Prompt::Text(text) => {
            fields.insert("prompt".into(), json!(text));
            "/v1/completions"
        }
        Prompt::Tokens(tokens) => {
            fields.insert("prompt".into(), json!(tokens));
            "/v1/completions"
        }
    };
    Ok((path.to_string(), body))
}

/// A generation read from the upstream's event stream.
pub struct RemoteGeneration {
    state: RefCell<State>,
}

struct State {
    stream: Stream,
    events: sse::Events,
    chat: bool,
    reason: FinishReason,
    usage: Usage,
    done: bool,
}

impl State {
    fn new(stream: Stream, chat: bool) -> Self {
        State {
            stream,
            events: sse::Events::default(),
            chat,
            reason: FinishReason::Stop,
            usage: Usage {
                prompt_tokens: 0,
                completion_tokens: 0,
                cached_tokens: 0,
                queue_ms: 0.0,
                prompt_ms: 0.0,
                generation_ms: 0.0,
            },
            done: false,
        }
    }

    fn finished(&mut self) -> Event {
        self.done = true;
        Event::Finished(Finished { reason: self.reason, usage: self.usage })
    }

    /// What one upstream event says; none when it carries nothing to pass on.
    fn read_event(&mut self, data: &str) -> Result<Option<Event>, Error> {
        if data == "[DONE]" {
            return Ok(Some(self.finished()));
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| Error::Internal(format!("the upstream sent {e}")))?;
        if let Some(error) = chunk.get("error") {
            let message = error["message"].as_str().unwrap_or("the upstream failed").to_string();
            return Err(Error::Internal(message));
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            let count = |v: &Value| v.as_u64().unwrap_or(0) as u32;
            self.usage.prompt_tokens = count(&usage["prompt_tokens"]);
            self.usage.completion_tokens = count(&usage["completion_tokens"]);
            self.usage.cached_tokens = count(&usage["prompt_tokens_details"]["cached_tokens"]);
        }
        let Some(choice) = chunk["choices"].get(0) else { return Ok(None) };
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.reason = match reason {
                "length" => FinishReason::Length,
                "timeout" => FinishReason::Timeout,
                "cancelled" => FinishReason::Cancelled,
                _ => FinishReason::Stop,
            };
        }
        let text = if self.chat { choice["delta"]["content"].as_str() } else { choice["text"].as_str() };
        Ok(text.filter(|t| !t.is_empty()).map(|t| Event::Text(t.to_string())))
    }
}

impl GuestGeneration for RemoteGeneration {
    /// Ready while the upstream's body has unread bytes or has ended.
    fn subscribe(&self) -> Pollable {
        self.state.borrow().stream.subscribe()
    }

    fn next(&self) -> Result<Event, Error> {
        let mut state = self.state.borrow_mut();
        loop {
            if state.done {
                return Ok(Event::Finished(Finished { reason: state.reason, usage: state.usage }));
            }
            if let Some(data) = state.events.next_data() {
                match state.read_event(&data)? {
                    Some(event) => return Ok(event),
                    None => continue,
                }
            }
            match state.stream.read()? {
                Some(bytes) if bytes.is_empty() => return Ok(Event::Pending),
                Some(bytes) => state.events.push(&bytes),
                // The upstream ended without `[DONE]` (llama-server's
                // completions end so too when cut short).
                None => return Ok(state.finished()),
            }
        }
    }
}

// Natively (unit tests) the exported symbols' names are not valid linker
// symbols; only a wasm build exports.
#[cfg(target_arch = "wasm32")]
bindings::export!(Remote with_types_in bindings);

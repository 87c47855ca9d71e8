//! Ollama's native API under `/api/`: generate, chat, tags, show, ps,
//! version, embed and the legacy embeddings, so Ollama clients (the `ollama`
//! CLI and libraries, Open WebUI, editors) can use tern unchanged.
//!
//! Ollama streams by default, as NDJSON: one JSON object per line with
//! `done: false`, then a last object with `done: true`, `done_reason` and the
//! engine's counts, its durations in nanoseconds. Errors use Ollama's shape,
//! `{"error": "message"}`, with the same statuses as the OpenAI routes except
//! that a full queue is 503, as in Ollama. An error after streaming began is
//! sent as one last line `{"error": "..."}`.
//!
//! Options a request leaves out take Ollama's defaults
//! ([`OLLAMA_DEFAULTS`]: `temperature 0.8`, `top_k 40`, `top_p 0.9`,
//! `repeat_penalty 1.1`, `repeat_last_n 64`), not the OpenAI routes' ones,
//! so a client sees what it would see on Ollama.

use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::engine_client::{Constraint, EngineClient, Error, Finished, Message, ModelInfo, Prompt, SamplingParams};
use crate::error::{error_body, ApiError};
use crate::http::{Body, Request, Response};
use crate::json::{self, parse_objects, Fields};
use crate::params::{ollama_sampling, schema_constraint, OLLAMA_DEFAULTS};
use crate::stream::{collect, Frames, Framing};
use crate::tools::{self, Choice, Held, StreamedCall, ToolCall, Tools};
use crate::wire::{engine_ms, finish_reason, ndjson_line, now_rfc3339, rfc3339};

/// `expires_at` of a model in `/api/ps`: tern never unloads a served model,
/// so it reports the last second RFC 3339 can spell (9999-12-31T23:59:59Z).
const NEVER_EXPIRES: u64 = 253_402_300_799;

/// The Ollama routes, each one path.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    /// `POST /api/generate`
    Generate,
    /// `POST /api/chat`
    Chat,
    /// `GET /api/tags`
    Tags,
    /// `POST /api/show`
    Show,
    /// `GET /api/ps`
    Ps,
    /// `GET /api/version`
    Version,
    /// `POST /api/embed`
    Embed,
    /// `POST /api/embeddings` (legacy)
    Embeddings,
}

/// Serves one Ollama request; every failure is answered in Ollama's error
/// shape.
pub fn handle(route: Route, req: &Request, engine: &dyn EngineClient) -> Response {
    let answer = match route {
        Route::Generate => generate(req, engine),
        Route::Chat => chat(req, engine),
        Route::Tags => Ok(tags(engine)),
        Route::Show => show(req, engine),
        Route::Ps => Ok(ps(engine)),
        Route::Version => Ok(Response::json(200, &json!({"version": crate::webui::reported_version()}))),
        Route::Embed => embed(req, engine),
        Route::Embeddings => embeddings(req, engine),
    };
    answer.unwrap_or_else(|err| error_response(&err))
}

/// The status and message of `err` as Ollama reports them.
fn native_error(err: &ApiError) -> (u16, String) {
    if let ApiError::Engine { error: Error::UnknownModel(id), .. } = err {
        return (404, format!("model \"{id}\" not found"));
    }
    let (status, body) = error_body(err);
    let message = body["error"]["message"].as_str().unwrap_or("the request failed").to_string();
    match err {
        // Ollama answers a full queue with 503, not OpenAI's 429.
        ApiError::Engine { error: Error::Overloaded(_), .. } => (503, message),
        _ => (status, message),
    }
}

/// `{"error": "message"}` with the status Ollama would use, and the same
/// `allow` and `retry-after` headers as the OpenAI errors.
pub fn error_response(err: &ApiError) -> Response {
    let (status, message) = native_error(err);
    let response = Response::json(status, &json!({ "error": message }));
    match err {
        ApiError::MethodNotAllowed { allow, .. } => response.with_header("allow", allow),
        ApiError::Engine { error: Error::Overloaded(_), .. } => response.with_header("retry-after", "1"),
        _ => response,
    }
}

// Requests

/// `keep_alive` is accepted and ignored (tern keeps its models loaded), but
/// must be a duration string or a number of seconds.
fn check_keep_alive(f: &Fields<'_>) -> Result<(), ApiError> {
    match f.get("keep_alive") {
        None | Some(Value::String(_)) | Some(Value::Number(_)) => Ok(()),
        Some(other) => Err(f.wrong_type("keep_alive", "a duration string or a number", other)),
    }
}

/// The served model `name` refers to: its id, or its id with Ollama's
/// default tag `:latest`.
fn find_model(engine: &dyn EngineClient, name: &str) -> Result<ModelInfo, ApiError> {
    let found =
        engine.list_models().into_iter().find(|m| m.id == name || name.strip_suffix(":latest") == Some(m.id.as_str()));
    match found {
        Some(model) => Ok(model),
        None if !engine.status().ready => Err(ApiError::Loading),
        None => Err(ApiError::engine(Error::UnknownModel(name.to_string()), "model")),
    }
}

/// The `options` object, empty when absent.
fn options<'a>(f: &Fields<'a>, empty: &'a Map<String, Value>) -> Result<Fields<'a>, ApiError> {
    match f.get("options") {
        None => Ok(Fields::nested(empty, "options")),
        Some(Value::Object(map)) => Ok(Fields::nested(map, "options")),
        Some(other) => Err(f.wrong_type("options", "an object", other)),
    }
}

/// `format`: `"json"` (any JSON object) or a JSON Schema; `""` is none.
fn ollama_format(f: &Fields<'_>) -> Result<Option<Constraint>, ApiError> {
    match f.get("format") {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(Constraint::JsonObject)),
        Some(Value::String(s)) => Err(ApiError::param(
            "format",
            format!("Invalid 'format': '{s}'; expected \"json\" or a JSON Schema object."),
        )),
        Some(schema) => schema_constraint(f, "format", schema).map(Some),
    }
}

/// What `/api/generate` and `/api/chat` share: the model, whether to stream,
/// and the sampling.
struct Call {
    /// The name the client used, echoed in every reply.
    name: String,
    model: ModelInfo,
    stream: bool,
    params: SamplingParams,
    /// Tools the reply may call (`/api/chat`).
    tools: Option<Tools>,
}

impl Call {
    fn parse(f: &Fields<'_>, engine: &dyn EngineClient) -> Result<Call, ApiError> {
        let name = f.required_string("model")?;
        let stream = f.boolean("stream")?.unwrap_or(true);
        f.refuse_nonempty("think", "the model does not think aloud")?;
        check_keep_alive(f)?;
        let empty = Map::new();
        let options = options(f, &empty)?;
        let model = find_model(engine, name)?;
        let params = SamplingParams { constraint: ollama_format(f)?, ..ollama_sampling(&options, &model)? };
        Ok(Call { name: name.to_string(), model, stream, params, tools: None })
    }

    /// Ollama's answer to a request with nothing to generate, which clients
    /// send to load a model: the model is always loaded, so it says so.
    fn loaded(&self, reply: Reply) -> Response {
        let mut object = reply.object(&self.name, "", true);
        object.insert("done_reason".into(), Value::from("load"));
        Response::json(200, &Value::Object(object))
    }

    /// Starts the generation and answers with NDJSON lines or, when not
    /// streaming, one object holding the whole reply.
    fn run(self, reply: Reply, prompt: Prompt, engine: &dyn EngineClient) -> Result<Response, ApiError> {
        let engine_error = |e| ApiError::engine(e, reply.prompt_param());
        let generation = engine.generate(&self.model.id, &prompt, &self.params).map_err(engine_error)?;
        if self.stream {
            let lines =
                Frames::new(generation, Lines { reply, name: self.name, call: self.tools.map(StreamedCall::new) });
            return Ok(Response {
                status: 200,
                headers: vec![("content-type".into(), "application/x-ndjson".into())],
                body: Body::Stream(Box::new(lines)),
            });
        }
        let (text, finished) = collect(generation).map_err(engine_error)?;
        let mut last = reply.last(&self.name, &text, &finished);
        if let Some(call) = self.tools.as_ref().and_then(|t| t.read_call(&text)) {
            last["message"] = call_message(&call);
        }
        Ok(Response::json(200, &last))
    }
}

/// `POST /api/generate`: a prompt, rendered as a chat of an optional system
/// message and one user message unless `raw`.
fn generate(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let prompt = f.string("prompt")?.unwrap_or_default();
    let system = f.string("system")?.unwrap_or_default();
    let raw = f.boolean("raw")?.unwrap_or(false);
    f.refuse_nonempty("suffix", "the model has no fill-in-the-middle")?;
    f.refuse_nonempty("template", "prompts use the model's own chat template")?;
    f.refuse_nonempty("images", "the model reads text only")?;
    f.refuse_nonempty("context", "send the conversation to /api/chat instead")?;
    let call = Call::parse(&f, engine)?;
    if prompt.is_empty() {
        return Ok(call.loaded(Reply::Generate));
    }
    let prompt = if raw {
        Prompt::Text(prompt.to_string())
    } else {
        let mut messages = Vec::with_capacity(2);
        if !system.is_empty() {
            messages.push(Message { role: "system".into(), content: system.to_string() });
        }
        messages.push(Message { role: "user".into(), content: prompt.to_string() });
        Prompt::Chat(messages)
    };
    call.run(Reply::Generate, prompt, engine)
}

/// `POST /api/chat`: a conversation of `{role, content}` messages.
fn chat(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let messages = match f.get("messages") {
        None => Vec::new(),
        Some(Value::Array(list)) => {
            list.iter().enumerate().map(|(i, m)| message(&f, i, m)).collect::<Result<_, _>>()?
        }
        Some(other) => return Err(f.wrong_type("messages", "an array", other)),
    };
    let mut call = Call::parse(&f, engine)?;
    let mut messages = messages;
    let tools = tools::parse_tools(&f)?;
    if !tools.is_empty() {
        if call.params.constraint.is_some() {
            return Err(ApiError::param("tools", "'tools' cannot be combined with 'format': send one of them."));
        }
        let tools = Tools { tools, choice: Choice::Auto };
        call.params.constraint = Some(tools.constraint());
        tools.describe_to(&mut messages);
        call.tools = Some(tools);
    }
    if messages.is_empty() {
        return Ok(call.loaded(Reply::Chat));
    }
    call.run(Reply::Chat, Prompt::Chat(messages), engine)
}

/// Message `i` of `messages`: a text turn of `system`, `user` or
/// `assistant` (whose `tool_calls` are written into its text), or a `tool`
/// result.
fn message(f: &Fields<'_>, i: usize, value: &Value) -> Result<Message, ApiError> {
    let path = format!("messages[{i}]");
    let Value::Object(map) = value else {
        return Err(f.wrong_type(&path, "an object", value));
    };
    let m = Fields::nested(map, &path);
    let role = m.required_string("role")?;
    if !matches!(role, "system" | "user" | "assistant" | "tool") {
        let param = m.name("role");
        return Err(ApiError::param(
            param.clone(),
            format!("Unsupported role '{role}' in '{param}': expected 'system', 'user', 'assistant' or 'tool'."),
        ));
    }
    m.refuse_nonempty("images", "the model reads text only")?;
    let content = m.string("content")?.unwrap_or_default();
    if role == "tool" {
        return Ok(tools::result_message(None, m.string("tool_name")?, content));
    }
    let calls = match m.get("tool_calls") {
        None => Vec::new(),
        Some(Value::Array(list)) if list.is_empty() => Vec::new(),
        Some(_) if role != "assistant" => {
            return Err(ApiError::param(m.name("tool_calls"), "Only assistant messages carry 'tool_calls'."))
        }
        Some(_) => parse_objects(&m, "tool_calls", "call", |c| {
            let function = c.required_object("function")?;
            let name = function.required_string("name")?;
            let arguments = function.get("arguments").cloned().unwrap_or_else(|| json!({}));
            Ok(tools::call_text(name, &arguments))
        })?,
    };
    let content =
        std::iter::once(content.to_string()).filter(|c| !c.is_empty()).chain(calls).collect::<Vec<_>>().join("\n");
    Ok(Message { role: role.to_string(), content })
}

// Replies

/// The two shapes of a generated reply: `/api/generate`'s `response` text or
/// `/api/chat`'s assistant `message`.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Generate,
    Chat,
}

impl Reply {
    /// Field holding the prompt, named by context-overflow errors.
    fn prompt_param(self) -> &'static str {
        match self {
            Reply::Generate => "prompt",
            Reply::Chat => "messages",
        }
    }

    /// `{model, created_at, response | message, done}`.
    fn object(self, name: &str, text: &str, done: bool) -> Map<String, Value> {
        let mut object = Map::new();
        object.insert("model".into(), Value::from(name));
        object.insert("created_at".into(), Value::from(now_rfc3339()));
        match self {
            Reply::Generate => object.insert("response".into(), Value::from(text)),
            Reply::Chat => object.insert("message".into(), json!({"role": "assistant", "content": text})),
        };
        object.insert("done".into(), Value::from(done));
        object
    }

    /// The last object: `text` (empty when streaming), why it ended, and
    /// the engine's counts with durations in nanoseconds.
    ///
    /// `load_duration` is the time the request waited for the engine: the
    /// model is always loaded, and Ollama counts the wait for its scheduler
    /// there too. `prompt_eval_count` counts the whole prompt, cached tokens
    /// included.
    fn last(self, name: &str, text: &str, finished: &Finished) -> Value {
        let usage = &finished.usage;
        let mut object = self.object(name, text, true);
        object.insert("done_reason".into(), Value::from(finish_reason(finished.reason)));
        object.insert("total_duration".into(), Value::from(nanos(engine_ms(usage))));
        object.insert("load_duration".into(), Value::from(nanos(usage.queue_ms)));
        object.insert("prompt_eval_count".into(), Value::from(usage.prompt_tokens));
        object.insert("prompt_eval_duration".into(), Value::from(nanos(usage.prompt_ms)));
        object.insert("eval_count".into(), Value::from(usage.completion_tokens));
        object.insert("eval_duration".into(), Value::from(nanos(usage.generation_ms)));
        Value::Object(object)
    }
}

/// Whole nanoseconds in `ms` milliseconds.
fn nanos(ms: f64) -> u64 {
    // `as` saturates: a negative or NaN time reads as 0.
    (ms * 1e6).round() as u64
}

/// An assistant message that calls a tool, in Ollama's shape (the
/// arguments as an object).
fn call_message(call: &ToolCall) -> Value {
    json!({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": call.name, "arguments": call.arguments}}]})
}

/// The NDJSON lines of one streamed reply.
struct Lines {
    reply: Reply,
    name: String,
    /// Tools the reply may call.
    call: Option<StreamedCall>,
}

impl Framing for Lines {
    fn text(&mut self, text: &str) -> Vec<u8> {
        match self.call.as_mut().map_or(Some(text), |c| c.pass(text)) {
            Some(text) => ndjson_line(&Value::Object(self.reply.object(&self.name, text, false))),
            None => Vec::new(),
        }
    }

    /// A held call goes out as its own line before the last one.
    fn finished(&mut self, finished: &Finished) -> Vec<Vec<u8>> {
        let mut lines = Vec::with_capacity(2);
        match self.call.as_mut().map_or(Held::Nothing, StreamedCall::finish) {
            Held::Nothing => {}
            Held::Call(call) => {
                let mut line = self.reply.object(&self.name, "", false);
                line.insert("message".into(), call_message(&call));
                lines.push(ndjson_line(&Value::Object(line)));
            }
            Held::Text(text) => lines.push(ndjson_line(&Value::Object(self.reply.object(&self.name, &text, false)))),
        }
        lines.push(ndjson_line(&self.reply.last(&self.name, "", finished)));
        lines
    }

    fn failed(&mut self, error: Error) -> Vec<u8> {
        let (_, message) = native_error(&ApiError::engine(error, self.reply.prompt_param()));
        ndjson_line(&json!({ "error": message }))
    }
}

// Models

/// `details` of a model as Ollama lists it.
fn details(m: &ModelInfo) -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": m.architecture,
        "families": [m.architecture],
        "parameter_size": parameter_size(m.parameter_count),
        "quantization_level": m.quantization,
    })
}

/// The fields `/api/tags` and `/api/ps` share.
fn listing(m: &ModelInfo) -> Map<String, Value> {
    let mut entry = Map::new();
    entry.insert("name".into(), Value::from(m.id.as_str()));
    entry.insert("model".into(), Value::from(m.id.as_str()));
    entry.insert("size".into(), Value::from(m.size_bytes));
    entry.insert("digest".into(), Value::from(digest(m)));
    entry.insert("details".into(), details(m));
    entry
}

/// `GET /api/tags`: the served models.
fn tags(engine: &dyn EngineClient) -> Response {
    let models: Vec<Value> = engine
        .list_models()
        .iter()
        .map(|m| {
            let mut entry = listing(m);
            entry.insert("modified_at".into(), Value::from(rfc3339(m.modified_at, 0)));
            Value::Object(entry)
        })
        .collect();
    Response::json(200, &json!({ "models": models }))
}

/// `GET /api/ps`: the loaded models, which are all the served ones, with
/// the bytes each holds in a GPU's memory (`size_vram`, 0 on the CPU).
fn ps(engine: &dyn EngineClient) -> Response {
    let models: Vec<Value> = engine
        .list_models()
        .iter()
        .map(|m| {
            let mut entry = listing(m);
            entry.insert("expires_at".into(), Value::from(rfc3339(NEVER_EXPIRES, 0)));
            entry.insert("size_vram".into(), Value::from(m.device_memory_bytes));
            entry.insert("context_length".into(), Value::from(m.context_length));
            Value::Object(entry)
        })
        .collect();
    Response::json(200, &json!({ "models": models }))
}

/// The defaults [`ollama_sampling`] applies, as Ollama's `parameters` text
/// lists a model's: one `name value` per line.
fn default_parameters() -> String {
    let d = &OLLAMA_DEFAULTS;
    format!(
        "temperature {}\ntop_k {}\ntop_p {}\nrepeat_penalty {}\nrepeat_last_n {}",
        d.temperature, d.top_k, d.top_p, d.repeat_penalty, d.repeat_last_n
    )
}

/// `POST /api/show {model}` (or the legacy `name`): a model's details.
///
/// `template` is the model's chat template rendered around Ollama's
/// placeholders (`{{ .System }}`, `{{ .Prompt }}`), so it shows exactly how
/// `/api/generate` wraps a prompt.
fn show(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let name = match f.string("model")? {
        Some(name) => name,
        None => f.required_string("name")?,
    };
    f.boolean("verbose")?;
    let m = find_model(engine, name)?;
    let placeholders = [
        Message { role: "system".into(), content: "{{ .System }}".into() },
        Message { role: "user".into(), content: "{{ .Prompt }}".into() },
    ];
    let template = engine.render_chat(&m.id, &placeholders).map_err(|e| ApiError::engine(e, "model"))?;
    let parameters = default_parameters();
    let modelfile = format!(
        "# The model as tern serves it.\nFROM {}\nTEMPLATE \"\"\"{template}\"\"\"\n{}\n",
        m.id,
        parameters.lines().map(|line| format!("PARAMETER {line}")).collect::<Vec<_>>().join("\n"),
    );
    let mut model_info = Map::new();
    model_info.insert("general.architecture".into(), Value::from(m.architecture.as_str()));
    model_info.insert("general.parameter_count".into(), Value::from(m.parameter_count));
    model_info.insert(format!("{}.context_length", m.architecture), Value::from(m.context_length));
    Ok(Response::json(
        200,
        &json!({
            "modelfile": modelfile,
            "parameters": parameters,
            "template": template,
            "details": details(&m),
            "model_info": model_info,
            "capabilities": ["completion", "embedding"],
            "modified_at": rfc3339(m.modified_at, 0),
        }),
    ))
}

/// A stable identity for a served model: FNV-1a 64 over its id, file size
/// and modification time, as 16 hex digits. It is not a content hash (tern
/// never hashes the weights), so it carries no `sha256:` label; it changes
/// when the file is replaced.
pub(crate) fn digest(m: &ModelInfo) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let bytes = m.id.bytes().chain(m.size_bytes.to_le_bytes()).chain(m.modified_at.to_le_bytes());
    let hash = bytes.fold(OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(PRIME));
    format!("{hash:016x}")
}

/// A parameter count the way Ollama prints it: `2.4B`, `7B`, `125.5M`.
pub(crate) fn parameter_size(count: u64) -> String {
    let (value, unit) = match count {
        c if c >= 1_000_000_000 => (c as f64 / 1e9, "B"),
        c if c >= 1_000_000 => (c as f64 / 1e6, "M"),
        c if c >= 1_000 => (c as f64 / 1e3, "K"),
        c => return c.to_string(),
    };
    let digits = format!("{value:.1}");
    format!("{}{unit}", digits.strip_suffix(".0").unwrap_or(&digits))
}

// Embeddings

/// `POST /api/embed {model, input, truncate, dimensions}`: unit-length
/// embeddings of one string or a list.
///
/// With `truncate` (the default) an input longer than the context is cut to
/// its first tokens, leaving room for the BOS token; without it, such an
/// input is a 400. `dimensions` keeps the first components and scales them
/// back to unit length.
fn embed(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let name = f.required_string("model")?;
    let mut inputs = match f.get("input") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(f.wrong_type(&format!("input[{i}]"), "a string", other)),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(f.wrong_type("input", "a string or an array of strings", other)),
    };
    let truncate = f.boolean("truncate")?.unwrap_or(true);
    let dimensions = f.integer_at_least("dimensions", 1)?;
    let empty = Map::new();
    options(&f, &empty)?;
    check_keep_alive(&f)?;
    let m = find_model(engine, name)?;

    let start = Instant::now();
    let engine_error = |e| ApiError::engine(e, "input");
    if truncate {
        let keep = m.context_length.saturating_sub(1) as usize;
        for input in &mut inputs {
            let tokens = engine.tokenize(&m.id, input).map_err(engine_error)?;
            if tokens.len() > keep {
                *input = engine.detokenize(&m.id, &tokens[..keep]).map_err(engine_error)?;
            }
        }
    }
    let embeddings = if inputs.is_empty() { Vec::new() } else { engine.embed(&m.id, &inputs).map_err(engine_error)? };
    let total_duration = start.elapsed().as_nanos() as u64;
    let prompt_eval_count: u64 = embeddings.iter().map(|e| u64::from(e.tokens)).sum();
    let vectors: Vec<Vec<f32>> = embeddings.into_iter().map(|e| shorten(e.vector, dimensions)).collect();
    Ok(Response::json(
        200,
        &json!({
            "model": name,
            "embeddings": vectors,
            "total_duration": total_duration,
            "load_duration": 0,
            "prompt_eval_count": prompt_eval_count,
        }),
    ))
}

/// The first `dimensions` components of a unit vector, scaled back to unit
/// length; the whole vector when `dimensions` is absent or not smaller.
fn shorten(mut vector: Vec<f32>, dimensions: Option<u32>) -> Vec<f32> {
    let Some(keep) = dimensions.map(|d| d as usize).filter(|&d| d < vector.len()) else {
        return vector;
    };
    vector.truncate(keep);
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    vector
}

/// `POST /api/embeddings {model, prompt}` (legacy): one embedding; an empty
/// prompt has an empty one, as in Ollama.
fn embeddings(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let name = f.required_string("model")?;
    let prompt = f.string("prompt")?.unwrap_or_default();
    let empty = Map::new();
    options(&f, &empty)?;
    check_keep_alive(&f)?;
    let m = find_model(engine, name)?;
    if prompt.is_empty() {
        return Ok(Response::json(200, &json!({ "embedding": [] })));
    }
    let mut embeddings = engine.embed(&m.id, &[prompt.to_string()]).map_err(|e| ApiError::engine(e, "prompt"))?;
    let vector = embeddings.pop().map(|e| e.vector).unwrap_or_default();
    Ok(Response::json(200, &json!({ "embedding": vector })))
}

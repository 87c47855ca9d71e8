//! Request parameters: every API family's fields read into what the engine
//! takes, and every default a request can leave out, in one place.
//!
//! Each family has one named set of sampling defaults, so a client sees what
//! it would see on the server it was written for: OpenAI's chat and text
//! completions, llama.cpp's `/completion`, Ollama's `options`, Spin's
//! `/infer` options and the seed's plain `/generate`, `/batch` and
//! `/api/chat-optimized`. Routes that list their defaults (`/props`,
//! `/api/show`) read them from here too.

use serde_json::{Map, Value};

use crate::engine_client::{Constraint, EngineClient, Message, ModelInfo, Priority, Prompt, SamplingParams};
use crate::error::ApiError;
pub use crate::json::parse_objects;
use crate::json::{self, Fields};
use crate::tools::{self, Tools};

// Defaults

/// What a request that leaves a sampling field out gets.
pub struct SamplingDefaults {
    /// Most tokens to generate (0: until the context is full).
    pub max_tokens: u32,
    /// `temperature`.
    pub temperature: f64,
    /// `top_k` (0 keeps every token).
    pub top_k: u32,
    /// `top_p`.
    pub top_p: f64,
    /// `min_p`.
    pub min_p: f64,
    /// `repeat_penalty` (1 is none).
    pub repeat_penalty: f64,
    /// Recent tokens the repeat penalty looks at.
    pub repeat_last_n: u32,
}

/// Recent tokens the repeat penalty looks at unless `repeat_last_n` says
/// otherwise (llama.cpp's default, which Ollama and Spin share).
pub const DEFAULT_REPEAT_LAST_N: u32 = 64;

/// OpenAI's chat completions: plain softmax sampling at temperature 1, no
/// token limit.
pub const OPENAI_CHAT_DEFAULTS: SamplingDefaults = SamplingDefaults {
    max_tokens: 0,
    temperature: 1.0,
    top_k: 0,
    top_p: 1.0,
    min_p: 0.0,
    repeat_penalty: 1.0,
    repeat_last_n: DEFAULT_REPEAT_LAST_N,
};

/// OpenAI's text completions: chat's sampling, 16 tokens.
pub const OPENAI_COMPLETIONS_DEFAULTS: SamplingDefaults = SamplingDefaults { max_tokens: 16, ..OPENAI_CHAT_DEFAULTS };

/// llama.cpp server's `/completion` (`n_predict` -1: no token limit).
pub const LLAMA_CPP_DEFAULTS: SamplingDefaults = SamplingDefaults {
    max_tokens: 0,
    temperature: 0.8,
    top_k: 40,
    top_p: 0.95,
    min_p: 0.05,
    repeat_penalty: 1.0,
    repeat_last_n: DEFAULT_REPEAT_LAST_N,
};

/// Ollama's `options`, which `/api/show` lists as every model's parameters.
pub const OLLAMA_DEFAULTS: SamplingDefaults = SamplingDefaults {
    max_tokens: 0,
    temperature: 0.8,
    top_k: 40,
    top_p: 0.9,
    min_p: 0.0,
    repeat_penalty: 1.1,
    repeat_last_n: DEFAULT_REPEAT_LAST_N,
};

/// Spin's `/infer` options: `maxTokens` 100 as in `spin_sdk::llm`, and the
/// sampling Spin's own engine applies.
pub const SPIN_DEFAULTS: SamplingDefaults = SamplingDefaults {
    max_tokens: 100,
    temperature: 0.8,
    top_k: 40,
    top_p: 0.9,
    min_p: 0.0,
    repeat_penalty: 1.1,
    repeat_last_n: DEFAULT_REPEAT_LAST_N,
};

/// The engine's settings from `defaults` alone: no penalties, stop strings,
/// seed or deadline, interactive. Each API overrides what its request says.
pub fn base_params(defaults: &SamplingDefaults) -> SamplingParams {
    SamplingParams {
        max_tokens: defaults.max_tokens,
        temperature: defaults.temperature as f32,
        top_k: defaults.top_k,
        top_p: defaults.top_p as f32,
        min_p: defaults.min_p as f32,
        repeat_penalty: defaults.repeat_penalty as f32,
        repeat_last_n: defaults.repeat_last_n,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        seed: None,
        stop: Vec::new(),
        ignore_eos: false,
        logprobs: None,
        constraint: None,
        timeout_ms: None,
        priority: Priority::Interactive,
    }
}

/// The seed's plain APIs (`/generate`, `/batch`, `/api/chat-optimized`):
/// temperature and nucleus sampling only, no repeat penalty.
pub const PLAIN_DEFAULTS: SamplingDefaults = SamplingDefaults {
    max_tokens: 128,
    temperature: 0.7,
    top_k: 0,
    top_p: 0.9,
    min_p: 0.0,
    repeat_penalty: 1.0,
    repeat_last_n: 0,
};

/// Prompts one `/batch` may carry unless the host sets `TERN_MAX_BATCH`.
pub const DEFAULT_MAX_BATCH: usize = 32;

/// Most prompts one `/batch` may carry, from the host's `TERN_MAX_BATCH`
/// setting; [`DEFAULT_MAX_BATCH`] when it is unset or not a positive number.
pub fn batch_limit(setting: Option<&str>) -> usize {
    setting.and_then(|v| v.trim().parse().ok()).filter(|&n| n > 0).unwrap_or(DEFAULT_MAX_BATCH)
}

// OpenAI's sampling fields, which llama.cpp's `/completion` shares

/// OpenAI accepts at most this many stop sequences.
const MAX_STOP_SEQUENCES: usize = 4;
/// Ollama and Anthropic set no limit; the engine takes at most this many.
const MAX_STOPS: usize = 16;
/// Longest stop string the engine takes, in bytes.
const MAX_STOP_BYTES: usize = 256;
/// Field holding a completion's prompt, named by errors about it.
const PROMPT_PARAM: &str = "prompt";

/// The sampling and streaming fields every completion API shares.
pub struct Sampling {
    /// Settings for the engine.
    pub params: SamplingParams,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
    /// `n`: choices to generate (1 unless the API answers several).
    pub n: u32,
}

/// Most choices one request may ask for with `n`.
pub const MAX_CHOICES: i64 = 8;

/// Validates the fields OpenAI's chat and text completions share
/// (`temperature, top_p, n, stop, stream, stream_options, seed,
/// presence_penalty, frequency_penalty, logit_bias, user`) and the
/// llama.cpp/Ollama extensions (`top_k, min_p, repeat_penalty,
/// repeat_last_n, timeout_ms, priority`). `max_tokens` comes from the
/// caller, which knows the API's spelling.
pub fn parse_sampling(
    f: &Fields<'_>,
    max_tokens: u32,
    defaults: &SamplingDefaults,
    default_priority: Priority,
) -> Result<Sampling, ApiError> {
    let temperature = f.number_in("temperature", 0.0, false, 2.0)?.unwrap_or(defaults.temperature);
    let top_p = f.number_in("top_p", 0.0, true, 1.0)?.unwrap_or(defaults.top_p);

    let n = match f.integer("n")? {
        None => 1,
        Some(n @ 1..=MAX_CHOICES) => n as u32,
        Some(n) => return Err(f.out_of_range("n", "an integer from 1 to 8", &Value::from(n))),
    };

    let stop = parse_stop(f)?;
    // llama.cpp's and vLLM's extension: run to `max_tokens` past the end of text.
    let ignore_eos = f.boolean("ignore_eos")?.unwrap_or(false);
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
    let repeat_penalty = f.number_above("repeat_penalty", 0.0)?.unwrap_or(defaults.repeat_penalty);
    let repeat_last_n = f.integer_at_least("repeat_last_n", 0)?.unwrap_or(defaults.repeat_last_n);
    let timeout_ms = f.integer_at_least("timeout_ms", 1)?;
    let priority = parse_priority(f, default_priority)?;
    let constraint = parse_constraint(f)?;

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
            ignore_eos,
            // Each API asks for log-probabilities in its own way.
            logprobs: None,
            constraint,
            timeout_ms,
            priority,
        },
        stream,
        include_usage,
        n,
    })
}

/// `stop`: one string or at most [`MAX_STOP_SEQUENCES`] of them.
pub fn parse_stop(f: &Fields<'_>) -> Result<Vec<String>, ApiError> {
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
    check_stop_lengths(f, "stop", &stop)?;
    // An empty stop string would end every generation before it starts.
    Ok(stop.into_iter().filter(|s| !s.is_empty()).collect())
}

/// A 400 naming the first stop string (of field `name`) longer than
/// [`MAX_STOP_BYTES`].
fn check_stop_lengths(f: &Fields<'_>, name: &str, stop: &[String]) -> Result<(), ApiError> {
    match stop.iter().position(|s| s.len() > MAX_STOP_BYTES) {
        Some(i) => Err(ApiError::param(
            f.name(&format!("{name}[{i}]")),
            format!("A stop string may be at most {MAX_STOP_BYTES} bytes, but {name}[{i}] has {}.", stop[i].len()),
        )),
        None => Ok(()),
    }
}

/// `logit_bias` is checked, then refused unless empty: the engine has no
/// per-token bias.
pub fn check_logit_bias(f: &Fields<'_>) -> Result<(), ApiError> {
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
    f.refuse_nonempty("logit_bias", "the engine applies no per-token bias")
}

// Structured output

/// What the output must be, from the fields OpenAI's chat and text
/// completions and llama.cpp's `/completion` accept: OpenAI's
/// `response_format`, and llama.cpp's `json_schema` (an object) and
/// `grammar` (GBNF). At most one of them may ask for something.
pub fn parse_constraint(f: &Fields<'_>) -> Result<Option<Constraint>, ApiError> {
    let mut found: Vec<(&str, Constraint)> = Vec::new();
    if let Some(format) = f.object("response_format")? {
        if let Some(c) = format_constraint(&format, "json_schema")? {
            found.push(("response_format", c));
        }
    }
    if let Some(schema) = f.get("json_schema").filter(|v| !v.is_null()) {
        found.push(("json_schema", schema_constraint(f, "json_schema", schema)?));
    }
    match f.string("grammar")? {
        None | Some("") => {}
        Some(g) => found.push(("grammar", Constraint::Gbnf(g.to_string()))),
    }
    match <[_; 2]>::try_from(found) {
        Ok([(a, _), (b, _)]) => {
            Err(ApiError::param(b, format!("'{a}' and '{b}' both constrain the output: send one of them.")))
        }
        Err(found) if found.len() > 2 => Err(ApiError::param(
            "grammar",
            "'response_format', 'json_schema' and 'grammar' all constrain the output: send one of them.",
        )),
        Err(mut found) => Ok(found.pop().map(|(_, c)| c)),
    }
}

/// An output format object (`{"type": "text" | "json_object" |
/// "json_schema", ...}`): OpenAI's `response_format`, whose schema sits in
/// `json_schema.schema` (`nested` = `"json_schema"`), or the Responses API's
/// `text.format`, whose schema sits beside the type (`nested` = `""`).
pub fn format_constraint(format: &Fields<'_>, nested: &str) -> Result<Option<Constraint>, ApiError> {
    match format.required_string("type")? {
        "text" => Ok(None),
        "json_object" => Ok(Some(Constraint::JsonObject)),
        "json_schema" => {
            let holder_fields;
            let holder = if nested.is_empty() {
                format
            } else {
                holder_fields = format.required_object(nested)?;
                &holder_fields
            };
            holder.string("name")?;
            holder.boolean("strict")?;
            holder.string("description")?;
            match holder.get("schema") {
                None | Some(Value::Null) => Ok(Some(Constraint::JsonObject)),
                Some(schema) => schema_constraint(holder, "schema", schema).map(Some),
            }
        }
        other => Err(ApiError::param(
            format.name("type"),
            format!("Invalid '{}': '{other}'; expected 'text', 'json_object' or 'json_schema'.", format.name("type")),
        )),
    }
}

/// A JSON Schema in field `name`: an object (or `true`), passed on as JSON
/// text with its keys in the order written.
pub fn schema_constraint(f: &Fields<'_>, name: &str, schema: &Value) -> Result<Constraint, ApiError> {
    match schema {
        Value::Object(_) | Value::Bool(true) => Ok(Constraint::JsonSchema(schema.to_string())),
        other => Err(f.wrong_type(name, "a JSON Schema object", other)),
    }
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

// Chat completions

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
    /// Choices to generate.
    pub n: u32,
    /// The tools the model may call, unless none were offered.
    pub tools: Option<Tools>,
}

/// Validates a chat completion request body.
///
/// `presence_penalty` and `frequency_penalty` are checked and then ignored:
/// they subtract a constant from logits (once, or once per occurrence), while
/// the engine's repeat penalty divides them over a window, and no rescaling of
/// one into the other holds across models. Clients that want a penalty send
/// the `repeat_penalty` extension. `logit_bias` and `user` are checked and
/// ignored likewise; the engine has no per-token bias.
pub fn parse_chat_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    parse_chat_fields(&json::parse_object(body)?, Priority::Interactive)
}

/// Validates a chat completion request already read into a JSON object;
/// `default_priority` applies when the request names none.
pub fn parse_chat_fields(map: &Map<String, Value>, default_priority: Priority) -> Result<ChatRequest, ApiError> {
    let f = Fields::new(map);

    let mut messages = parse_messages(&f)?;
    let model = f.required_string("model")?.to_string();

    // Both spellings are validated; the newer one wins when both are given.
    let max_tokens = f.integer_at_least("max_tokens", 1)?;
    let max_completion_tokens = f.integer_at_least("max_completion_tokens", 1)?;
    let max_tokens = max_completion_tokens.or(max_tokens).unwrap_or(OPENAI_CHAT_DEFAULTS.max_tokens);

    let mut sampling = parse_sampling(&f, max_tokens, &OPENAI_CHAT_DEFAULTS, default_priority)?;
    sampling.params.logprobs = chat_logprobs(&f)?;
    check_unhonoured_chat_fields(&f)?;
    let tools = tools::parse_choice(&f, tools::parse_tools(&f)?)?;
    f.boolean("parallel_tool_calls")?;
    if let Some(tools) = &tools {
        if sampling.params.constraint.is_some() {
            return Err(ApiError::param(
                "tools",
                "'tools' cannot be combined with 'response_format', 'json_schema' or 'grammar': send one of them.",
            ));
        }
        sampling.params.constraint = Some(tools.constraint());
        tools.describe_to(&mut messages);
    }

    Ok(ChatRequest {
        model,
        messages,
        params: sampling.params,
        stream: sampling.stream,
        include_usage: sampling.include_usage,
        n: sampling.n,
        tools,
    })
}

/// Most alternatives a chat's `top_logprobs` may ask for, as OpenAI allows.
const MAX_TOP_LOGPROBS: i64 = 20;

/// A chat's `logprobs` (true: report them) and `top_logprobs` (0 to 20
/// alternatives, only with `logprobs`), as the engine's setting.
fn chat_logprobs(f: &Fields<'_>) -> Result<Option<u8>, ApiError> {
    let wanted = f.boolean("logprobs")?.unwrap_or(false);
    let top = match f.integer("top_logprobs")? {
        None => 0,
        Some(n @ 0..=MAX_TOP_LOGPROBS) => n as u8,
        Some(n) => return Err(f.out_of_range("top_logprobs", "an integer from 0 to 20", &Value::from(n))),
    };
    if !wanted && top > 0 {
        return Err(ApiError::param("top_logprobs", "'top_logprobs' needs 'logprobs': true."));
    }
    Ok(wanted.then_some(top))
}

/// Chat fields asking for what the engine cannot do are refused, never
/// ignored: the deprecated functions, audio, and predicted outputs.
fn check_unhonoured_chat_fields(f: &Fields<'_>) -> Result<(), ApiError> {
    // The deprecated spelling of tools.
    let why = "the deprecated 'functions' are not supported: send them as 'tools'";
    match f.get("function_call") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) if s == "none" || s == "auto" => {}
        Some(_) => return Err(ApiError::param("function_call", format!("'function_call' is not supported: {why}."))),
    }
    f.refuse_nonempty("functions", why)?;
    f.refuse_nonempty("audio", "the model reads and writes text only")?;
    f.refuse_nonempty("prediction", "the engine does not use predicted outputs")?;
    match f.get("modalities") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(list)) if list.iter().all(|m| m == "text") => Ok(()),
        Some(_) => {
            Err(ApiError::param("modalities", "'modalities' may only be [\"text\"]: the model writes text only."))
        }
    }
}

/// The required, non-empty `messages` list.
pub fn parse_messages(f: &Fields<'_>) -> Result<Vec<Message>, ApiError> {
    parse_objects(f, "messages", "message", parse_message)
}

/// One message: a `role` and its text `content`. A `tool` message (with
/// its `tool_call_id`) and an assistant's `tool_calls` are written into the
/// text as [`tools`] writes them.
pub fn parse_message(f: &Fields<'_>) -> Result<Message, ApiError> {
    let role = match f.required_string("role")? {
        // OpenAI's newer name for the system role.
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(ApiError::param(
                f.name("role"),
                format!(
                    "Unsupported role '{other}' in '{}': expected 'system', 'user', 'assistant' or 'tool'.",
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
    if role == "tool" {
        let id = f.required_string("tool_call_id")?;
        return Ok(tools::result_message(Some(id), None, &content));
    }
    let calls = match (role, f.get("tool_calls")) {
        (_, None) => Vec::new(),
        ("assistant", Some(Value::Array(list))) if list.is_empty() => Vec::new(),
        ("assistant", Some(Value::Array(_))) => parse_objects(f, "tool_calls", "call", |c| {
            let function = c.required_object("function")?;
            let name = function.required_string("name")?;
            let arguments = function.required_string("arguments")?;
            let arguments: Value = serde_json::from_str(arguments).map_err(|e| {
                ApiError::param(
                    function.name("arguments"),
                    format!("'{}' is not JSON: {e}.", function.name("arguments")),
                )
            })?;
            Ok(tools::call_text(name, &arguments))
        })?,
        ("assistant", Some(other)) => return Err(f.wrong_type("tool_calls", "an array", other)),
        (_, Some(_)) => {
            return Err(ApiError::param(f.name("tool_calls"), "Only assistant messages carry 'tool_calls'."))
        }
    };
    let content = std::iter::once(content).filter(|c| !c.is_empty()).chain(calls).collect::<Vec<_>>().join("\n");
    Ok(Message { role: role.to_string(), content })
}

/// The text of a content list (`[{"type": "text", "text": ".."}, ..]`), parts
/// joined by newlines.
pub fn text_of_parts(f: &Fields<'_>, parts: &[Value]) -> Result<String, ApiError> {
    text_of_typed_parts(f, "content", parts, &["text"])
}

/// The text of the list `parts` in field `name` whose text parts have one
/// of the types in `text_types` (e.g. the Responses API's `input_text`);
/// any other part is a 400 naming it.
pub fn text_of_typed_parts(
    f: &Fields<'_>,
    name: &str,
    parts: &[Value],
    text_types: &[&str],
) -> Result<String, ApiError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.iter().enumerate() {
        let path = format!("{}[{j}]", f.name(name));
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
            kind if text_types.contains(&kind) => texts.push(part.required_string("text")?),
            other => {
                return Err(ApiError::param(
                    part.name("type"),
                    format!("Unsupported content part type '{other}': only {} is supported.", text_types.join(", ")),
                ))
            }
        }
    }
    Ok(texts.join("\n"))
}

// Prompts and models

/// The `prompt` field: a string, an array holding one string or one list of
/// token ids, or a list of token ids. Several prompts are refused: one
/// request is one generation.
pub fn parse_prompt(f: &Fields<'_>) -> Result<Prompt, ApiError> {
    let list = match f.get(PROMPT_PARAM) {
        None => return Err(f.missing(PROMPT_PARAM)),
        Some(Value::String(text)) => return Ok(Prompt::Text(text.clone())),
        Some(Value::Array(list)) => list,
        Some(other) => {
            return Err(f.wrong_type(PROMPT_PARAM, "a string, an array of strings or an array of token ids", other))
        }
    };
    match list.as_slice() {
        [] => Err(ApiError::param(PROMPT_PARAM, "'prompt' must not be an empty array.")),
        [Value::String(text)] => Ok(Prompt::Text(text.clone())),
        [Value::Array(ids)] => Ok(Prompt::Tokens(token_ids(&f.name("prompt[0]"), ids)?)),
        [Value::String(_) | Value::Array(_), ..] => Err(ApiError::param(
            PROMPT_PARAM,
            format!("Only one prompt per request is supported, but 'prompt' holds {}.", list.len()),
        )),
        ids => Ok(Prompt::Tokens(token_ids(&f.name(PROMPT_PARAM), ids)?)),
    }
}

/// Token ids from a JSON list at `path`: at least one, each an integer that
/// fits a `u32`. Whether each is in the vocabulary is the engine's to say.
pub fn token_ids(path: &str, list: &[Value]) -> Result<Vec<u32>, ApiError> {
    if list.is_empty() {
        return Err(ApiError::param(path, format!("'{path}' must hold at least one token id.")));
    }
    let expected = format!("a token id (an integer from 0 to {})", u32::MAX);
    list.iter()
        .enumerate()
        .map(|(i, value)| {
            let id = value.as_u64().and_then(|id| u32::try_from(id).ok());
            id.ok_or_else(|| {
                let param = format!("{path}[{i}]");
                let message = format!("Invalid '{param}': expected {expected}, but got {value} instead.");
                ApiError::param(param, message)
            })
        })
        .collect()
}

/// The request's `model`, or the engine's first model when it names none.
pub fn model_or_first(f: &Fields<'_>, engine: &dyn EngineClient) -> Result<String, ApiError> {
    match f.string("model")? {
        Some(model) => Ok(model.to_string()),
        None => first_model(engine),
    }
}

/// The id of the engine's first model; 503 while none is loaded.
pub fn first_model(engine: &dyn EngineClient) -> Result<String, ApiError> {
    engine.list_models().into_iter().next().map(|info| info.id).ok_or(ApiError::Loading)
}

// The seed's plain APIs

/// Sampling of the plain APIs (`/generate`, `/batch`,
/// `/api/chat-optimized`) from the request's `max_tokens`, `temperature`
/// and `top_p`, with [`PLAIN_DEFAULTS`]: nothing else is sampled, no stops,
/// the host's deadline.
pub fn plain_params(f: &Fields<'_>, priority: Priority) -> Result<SamplingParams, ApiError> {
    let defaults = &PLAIN_DEFAULTS;
    let max_tokens = f.integer_at_least("max_tokens", 1)?.unwrap_or(defaults.max_tokens);
    let temperature = f.number_in("temperature", 0.0, false, 2.0)?.unwrap_or(defaults.temperature);
    let top_p = f.number_in("top_p", 0.0, true, 1.0)?.unwrap_or(defaults.top_p);
    Ok(SamplingParams {
        max_tokens,
        temperature: temperature as f32,
        top_p: top_p as f32,
        priority,
        ..base_params(defaults)
    })
}

// Ollama's options

/// The engine's sampling from Ollama's `options` for `model`, with
/// [`OLLAMA_DEFAULTS`]. Unknown options are ignored, as Ollama does; known
/// ones with a wrong type or value are a 400.
///
/// `num_predict` -1 (infinite), -2 (fill the context) and 0 all mean "until
/// the context is full". `repeat_last_n` -1 means the whole context. A
/// negative `seed` (Ollama's -1) draws a fresh one. `num_ctx` is checked as
/// a positive integer and then ignored: every generation may use the
/// model's whole context, and a larger `num_ctx` cannot extend it.
pub fn ollama_sampling(o: &Fields<'_>, model: &ModelInfo) -> Result<SamplingParams, ApiError> {
    let defaults = &OLLAMA_DEFAULTS;
    let max_tokens = match o.integer("num_predict")? {
        None => defaults.max_tokens,
        Some(-2..=0) => 0,
        Some(n) if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
        Some(n) => return Err(o.out_of_range("num_predict", "an integer >= -2", &Value::from(n))),
    };
    let repeat_last_n = match o.integer("repeat_last_n")? {
        None => defaults.repeat_last_n,
        Some(-1) => model.context_length,
        Some(n) if n >= 0 => u32::try_from(n).unwrap_or(u32::MAX),
        Some(n) => return Err(o.out_of_range("repeat_last_n", "an integer >= -1", &Value::from(n))),
    };
    o.integer_at_least("num_ctx", 1)?;
    Ok(SamplingParams {
        max_tokens,
        temperature: o.number_in("temperature", 0.0, false, f64::MAX)?.unwrap_or(defaults.temperature) as f32,
        top_k: o.integer_at_least("top_k", 0)?.unwrap_or(defaults.top_k),
        top_p: o.number_in("top_p", 0.0, true, 1.0)?.unwrap_or(defaults.top_p) as f32,
        min_p: o.number_in("min_p", 0.0, false, 1.0)?.unwrap_or(defaults.min_p) as f32,
        repeat_penalty: o.number_above("repeat_penalty", 0.0)?.unwrap_or(defaults.repeat_penalty) as f32,
        repeat_last_n,
        presence_penalty: any_number(o, "presence_penalty")?.unwrap_or(0.0) as f32,
        frequency_penalty: any_number(o, "frequency_penalty")?.unwrap_or(0.0) as f32,
        seed: o.integer("seed")?.and_then(|s| u64::try_from(s).ok()),
        stop: parse_stop_list(o, "stop")?,
        ..base_params(defaults)
    })
}

/// An optional finite number with no range (the penalties Ollama leaves
/// unbounded).
fn any_number(o: &Fields<'_>, name: &str) -> Result<Option<f64>, ApiError> {
    o.number_in(name, f64::MIN, false, f64::MAX)
}

/// A list of stop strings in field `name` (Ollama's `options.stop`,
/// Anthropic's `stop_sequences`; one string is taken as a list of one): at
/// most [`MAX_STOPS`] of at most [`MAX_STOP_BYTES`] bytes. Empty strings are
/// dropped, as they would end every generation at once.
pub fn parse_stop_list(o: &Fields<'_>, name: &str) -> Result<Vec<String>, ApiError> {
    let list: &[Value] = match o.get(name) {
        None => return Ok(Vec::new()),
        Some(one @ Value::String(_)) => std::slice::from_ref(one),
        Some(Value::Array(list)) => list,
        Some(other) => return Err(o.wrong_type(name, "an array of strings", other)),
    };
    if list.len() > MAX_STOPS {
        return Err(ApiError::param(
            o.name(name),
            format!("'{name}' may hold at most {MAX_STOPS} strings, but got {}.", list.len()),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        match item {
            Value::String(s) if s.is_empty() => {}
            Value::String(s) => out.push(s.clone()),
            other => return Err(o.wrong_type(&format!("{name}[{i}]"), "a string", other)),
        }
    }
    check_stop_lengths(o, name, &out)?;
    Ok(out)
}

// Spin's options

/// The engine's sampling from Spin's inferencing options, with
/// [`SPIN_DEFAULTS`].
pub fn spin_sampling(o: &Fields<'_>) -> Result<SamplingParams, ApiError> {
    let defaults = &SPIN_DEFAULTS;
    Ok(SamplingParams {
        max_tokens: o.integer_at_least("maxTokens", 1)?.unwrap_or(defaults.max_tokens),
        temperature: o.number_in("temperature", 0.0, false, 2.0)?.unwrap_or(defaults.temperature) as f32,
        top_k: o.integer_at_least("topK", 0)?.unwrap_or(defaults.top_k),
        top_p: o.number_in("topP", 0.0, true, 1.0)?.unwrap_or(defaults.top_p) as f32,
        min_p: defaults.min_p as f32,
        repeat_penalty: o.number_above("repeatPenalty", 0.0)?.unwrap_or(defaults.repeat_penalty) as f32,
        repeat_last_n: o.integer_at_least("repeatPenaltyLastNTokenCount", 0)?.unwrap_or(defaults.repeat_last_n),
        ..base_params(defaults)
    })
}

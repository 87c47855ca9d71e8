//! llama.cpp server's native API, for its clients and UIs: `POST /completion`,
//! `POST /tokenize`, `POST /detokenize` and `GET /props` (`/health` is
//! `service.rs`'s). Errors take llama.cpp's shape, `code` being the HTTP
//! status.
//!
//! `/completion` reads `prompt` (a string or token ids), `n_predict` (-1 or
//! absent: until the model ends its text or the context is full), the
//! sampling fields with llama.cpp's defaults ([`LLAMA_CPP_DEFAULTS`]:
//! `temperature` 0.8, `top_k` 40, `top_p` 0.95, `min_p` 0.05, `seed` -1 for
//! a random one), `stop`, `stream` and `cache_prompt`, which is accepted and
//! always on: the engine reuses every cached prefix. The engine reports a stop string and the end of text
//! alike, so `stop_type` is `word` whenever stop strings were given and the
//! generation stopped by itself, `eos` otherwise; `limit` means `n_predict`,
//! the context or the deadline ran out.

use serde_json::{json, Value};

use crate::engine_client::{EngineClient, Error, FinishReason, Finished, ModelInfo, Priority, TokenLogprob};
use crate::error::{llama_error_body, llama_error_response, ApiError};
use crate::http::{Request, Response};
use crate::json::{self, Fields};
use crate::params::{first_model, model_or_first, parse_prompt, parse_sampling, token_ids, LLAMA_CPP_DEFAULTS};
use crate::stream::{collect_all, Frames, Framing};
use crate::wire::{sse_data, timings_json, HANDLER_VERSION};

/// Field holding the prompt, named by context-overflow errors.
const PROMPT_PARAM: &str = "prompt";

/// `POST /completion`.
pub fn completion(req: &Request, engine: &dyn EngineClient) -> Response {
    answer(serve_completion(req, engine))
}

/// `POST /tokenize`: `{content, with_pieces?, model?}` → `{tokens}`, each
/// token `{id, piece}` with `with_pieces`.
pub fn tokenize(req: &Request, engine: &dyn EngineClient) -> Response {
    answer(serve_tokenize(req, engine))
}

/// `POST /detokenize`: `{tokens, model?}` → `{content}`.
pub fn detokenize(req: &Request, engine: &dyn EngineClient) -> Response {
    answer(serve_detokenize(req, engine))
}

/// `GET /props`: the server's settings as llama.cpp reports them.
pub fn props(engine: &dyn EngineClient) -> Response {
    answer(serve_props(engine))
}

/// `GET /slots`: 501. llama-server lists its fixed slots; tern's engine has
/// none (any sequence runs in any of `--max-running` places, its KV in
/// blocks shared by all), so the same facts are in `/health` and `/metrics`.
pub fn slots() -> Response {
    let why = "tern has no fixed slots: sequences share one pool of KV blocks. \
        See GET /health (running, waiting, kv_blocks_used) and GET /metrics.";
    llama_error_response(&ApiError::NotImplemented(why.into()))
}

fn answer(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|err| llama_error_response(&err))
}

fn serve_completion(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let prompt = parse_prompt(&f)?;
    let model = model_or_first(&f, engine)?;
    let max_tokens = match f.integer("n_predict")? {
        None => LLAMA_CPP_DEFAULTS.max_tokens,
        // The engine's "until the context is full".
        Some(-1) => 0,
        Some(n) if n >= 1 => u32::try_from(n).unwrap_or(u32::MAX),
        Some(n) => return Err(f.out_of_range("n_predict", "-1 or an integer >= 1", &Value::from(n))),
    };
    let mut sampling = parse_sampling(&f, max_tokens, &LLAMA_CPP_DEFAULTS, Priority::Interactive)?;
    if sampling.n > 1 {
        return Err(ApiError::param("n", "'/completion' makes one completion per request."));
    }
    if f.integer("seed")? == Some(-1) {
        sampling.params.seed = None;
    }
    f.boolean("cache_prompt")?;
    sampling.params.logprobs = match f.integer("n_probs")? {
        None | Some(0) => None,
        Some(n @ 1..=20) => Some(n as u8),
        Some(n) => return Err(f.out_of_range("n_probs", "an integer from 0 to 20", &Value::from(n))),
    };
    f.refuse_nonempty(
        "post_sampling_probs",
        "probabilities are reported under the model, before sampling settings (as with post_sampling_probs false)",
    )?;

    let generation =
        engine.generate(&model, &prompt, &sampling.params).map_err(|e| ApiError::engine(e, PROMPT_PARAM))?;
    let words = !sampling.params.stop.is_empty();
    let probs = sampling.params.logprobs.is_some();
    if sampling.stream {
        let events = Frames::new(generation, LlamaFraming { model, words, pending: Vec::new() });
        return Ok(Response::event_stream(events));
    }
    let whole = collect_all(generation).map_err(|e| ApiError::engine(e, PROMPT_PARAM))?;
    let mut body = last_json(&whole.text, &model, &whole.finished, words);
    if probs {
        body["completion_probabilities"] = probabilities_json(&whole.logprobs);
    }
    Ok(Response::json(200, &body))
}

/// `completion_probabilities` (`n_probs`): per token its id, text, bytes,
/// log-probability and the likeliest tokens at its position.
fn probabilities_json(tokens: &[TokenLogprob]) -> Value {
    let entry = |id: u32, bytes: &[u8], logprob: f32| json!({"id": id, "token": String::from_utf8_lossy(bytes), "bytes": bytes, "logprob": logprob});
    tokens
        .iter()
        .map(|t| {
            let mut e = entry(t.id, &t.bytes, t.logprob);
            e["top_logprobs"] = t.top.iter().map(|a| entry(a.id, &a.bytes, a.logprob)).collect();
            e
        })
        .collect()
}

/// `stop_type` for a generation that ended for `reason`; `words` says
/// whether stop strings were given.
fn stop_type(reason: FinishReason, words: bool) -> &'static str {
    match reason {
        FinishReason::Stop if words => "word",
        FinishReason::Stop => "eos",
        FinishReason::Length | FinishReason::Timeout => "limit",
        FinishReason::Cancelled => "none",
    }
}

/// The answer to a whole `/completion`, or the last event of a stream (with
/// `content` empty: it was all sent already).
fn last_json(content: &str, model: &str, finished: &Finished, words: bool) -> Value {
    let kind = stop_type(finished.reason, words);
    let usage = &finished.usage;
    json!({
        "content": content,
        "model": model,
        "stop": true,
        "stop_type": kind,
        "stopped_eos": kind == "eos",
        "stopped_word": kind == "word",
        "stopped_limit": kind == "limit",
        "tokens_predicted": usage.completion_tokens,
        "tokens_evaluated": usage.prompt_tokens,
        "tokens_cached": usage.cached_tokens,
        "truncated": false,
        "timings": timings_json(usage),
    })
}

/// A streamed `/completion`: one `data: {"content", "stop": false}` event
/// per piece of text (with the `completion_probabilities` of its tokens
/// when `n_probs` asked), then the last object with `stop: true`.
struct LlamaFraming {
    model: String,
    words: bool,
    /// Probabilities of tokens whose text has not been sent yet.
    pending: Vec<TokenLogprob>,
}

impl Framing for LlamaFraming {
    fn logprobs(&mut self, tokens: Vec<TokenLogprob>) {
        self.pending.extend(tokens);
    }

    fn text(&mut self, text: &str) -> Vec<u8> {
        let mut event = json!({"content": text, "stop": false});
        if !self.pending.is_empty() {
            event["completion_probabilities"] = probabilities_json(&std::mem::take(&mut self.pending));
        }
        sse_data(event)
    }

    fn finished(&mut self, finished: &Finished) -> Vec<Vec<u8>> {
        let mut last = last_json("", &self.model, finished, self.words);
        if !self.pending.is_empty() {
            last["completion_probabilities"] = probabilities_json(&std::mem::take(&mut self.pending));
        }
        vec![sse_data(last)]
    }

    fn failed(&mut self, error: Error) -> Vec<u8> {
        sse_data(llama_error_body(&ApiError::engine(error, PROMPT_PARAM)).1)
    }
}

fn serve_tokenize(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let content = f.required_string("content")?;
    let with_pieces = f.boolean("with_pieces")?.unwrap_or(false);
    if f.boolean("add_special")? == Some(true) {
        return Err(ApiError::param(
            "add_special",
            "'add_special' is not supported: /tokenize returns the text's tokens without BOS.",
        ));
    }
    let model = model_or_first(&f, engine)?;
    let engine_error = |e| ApiError::engine(e, "content");
    let ids = engine.tokenize(&model, content).map_err(engine_error)?;
    // A piece is its token's own text: one detokenize call per token.
    let tokens: Vec<Value> = if with_pieces {
        ids.iter()
            .map(|&id| Ok(json!({"id": id, "piece": engine.detokenize(&model, &[id]).map_err(engine_error)?})))
            .collect::<Result<_, ApiError>>()?
    } else {
        ids.iter().map(|&id| Value::from(id)).collect()
    };
    Ok(Response::json(200, &json!({"tokens": tokens})))
}

fn serve_detokenize(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let ids = match f.get("tokens") {
        None => return Err(f.missing("tokens")),
        // llama.cpp answers an empty list with empty text.
        Some(Value::Array(list)) if list.is_empty() => Vec::new(),
        Some(Value::Array(list)) => token_ids("tokens", list)?,
        Some(other) => return Err(f.wrong_type("tokens", "an array of token ids", other)),
    };
    let model = model_or_first(&f, engine)?;
    let content = if ids.is_empty() {
        String::new()
    } else {
        engine.detokenize(&model, &ids).map_err(|e| ApiError::engine(e, "tokens"))?
    };
    Ok(Response::json(200, &json!({"content": content})))
}

fn serve_props(engine: &dyn EngineClient) -> Result<Response, ApiError> {
    if !engine.status().ready {
        return Err(ApiError::Loading);
    }
    let id = first_model(engine)?;
    let models = engine.list_models();
    let info = models.iter().find(|m| m.id == id).ok_or(ApiError::Loading)?;
    let body = json!({
        "default_generation_settings": {
            "n_ctx": info.context_length,
            "model": info.id,
            "n_predict": -1,
            "temperature": LLAMA_CPP_DEFAULTS.temperature,
            "top_k": LLAMA_CPP_DEFAULTS.top_k,
            "top_p": LLAMA_CPP_DEFAULTS.top_p,
            "min_p": LLAMA_CPP_DEFAULTS.min_p,
            "repeat_penalty": LLAMA_CPP_DEFAULTS.repeat_penalty,
            "repeat_last_n": LLAMA_CPP_DEFAULTS.repeat_last_n,
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "seed": -1,
            "stream": false,
            "cache_prompt": true,
        },
        "total_slots": total_slots(info, engine),
        "model_path": info.id,
        "device": info.device,
        "build_info": format!("tern-handler {HANDLER_VERSION}"),
    });
    Ok(Response::json(200, &body))
}

/// llama.cpp's parallel slots, in an engine without slots: how many
/// sequences of the full context its KV pool holds at once (at least one).
fn total_slots(info: &ModelInfo, engine: &dyn EngineClient) -> u64 {
    let status = engine.status();
    let positions = u64::from(status.kv_blocks_total) * u64::from(status.kv_block_tokens);
    (positions / u64::from(info.context_length.max(1))).max(1)
}

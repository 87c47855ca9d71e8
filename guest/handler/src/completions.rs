//! `POST /v1/completions`: OpenAI's (legacy) text completions, whole or
//! streamed as server-sent events.
//!
//! One prompt per request: a string, an array holding one string, or token
//! ids (used exactly as given). `n` and `best_of` must be 1; `suffix` and
//! `logprobs` are refused, since the engine neither fills in the middle nor
//! reports token probabilities. The sampling fields are chat's
//! ([`parse_sampling`]), with OpenAI's defaults and `max_tokens` 16.

use serde_json::{json, Value};

use crate::backend::{Backend, Priority, Prompt};
use crate::chat::{
    completion_id, finish_reason, parse_sampling, read_all, timings_json, unix_seconds, usage_json, Chunks,
    CompletionStream, OPENAI_DEFAULTS,
};
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::json::{self, Fields};

/// Field holding the prompt, named by context-overflow errors.
const PROMPT_PARAM: &str = "prompt";
/// OpenAI's `max_tokens` when a completion request names none.
const DEFAULT_MAX_TOKENS: u32 = 16;

/// Serves one text completion request.
pub fn handle(req: &Request, backend: &dyn Backend) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let prompt = parse_prompt(&f)?;
    let model = f.required_string("model")?.to_string();
    let max_tokens = f.integer_at_least("max_tokens", 1)?.unwrap_or(DEFAULT_MAX_TOKENS);
    let sampling = parse_sampling(&f, max_tokens, &OPENAI_DEFAULTS, Priority::Interactive)?;
    let echo = f.boolean("echo")?.unwrap_or(false);
    check_unsupported(&f)?;

    let engine_error = |e| ApiError::engine(e, PROMPT_PARAM);
    // `parse_prompt` makes text or token ids, never a chat.
    let echoed = match &prompt {
        _ if !echo => None,
        Prompt::Tokens(ids) => Some(backend.detokenize(&model, ids).map_err(engine_error)?),
        Prompt::Text(text) => Some(text.clone()),
        Prompt::Chat(_) => None,
    };
    let generation = backend.generate(&model, &prompt, &sampling.params).map_err(engine_error)?;

    let id = completion_id("cmpl");
    if sampling.stream {
        let chunks = Chunks::Text { echo: echoed };
        let stream = CompletionStream { id, model, include_usage: sampling.include_usage, chunks, cached: None };
        return Ok(stream.respond(generation));
    }

    let (completion, finished) = read_all(generation, PROMPT_PARAM)?;
    let text = echoed.unwrap_or_default() + &completion;
    let body = json!({
        "id": id,
        "object": "text_completion",
        "created": unix_seconds(),
        "model": model,
        "system_fingerprint": null,
        "choices": [{
            "text": text,
            "index": 0,
            "logprobs": null,
            "finish_reason": finish_reason(finished.reason),
        }],
        "usage": usage_json(&finished.usage),
        "timings": timings_json(&finished.usage),
    });
    Ok(Response::json(200, &body))
}

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

/// `best_of` must be 1; `suffix` and `logprobs` are refused unless empty.
fn check_unsupported(f: &Fields<'_>) -> Result<(), ApiError> {
    if let Some(best_of) = f.integer("best_of")? {
        if best_of != 1 {
            return Err(ApiError::param("best_of", format!("Only best_of=1 is supported, but got {best_of}.")));
        }
    }
    if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::param("suffix", "'suffix' is not supported: the engine only continues a prompt."));
    }
    match f.get("logprobs") {
        None | Some(Value::Bool(false)) => Ok(()),
        Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(()),
        Some(_) => {
            Err(ApiError::param("logprobs", "'logprobs' is not supported: the engine reports no token probabilities."))
        }
    }
}

//! Spin's remote LLM protocol, so a Spin app can use tern as its LLM
//! backend (`runtime-config.toml`: `[llm_compute] type = "remote_http"`,
//! `url` = this server, `auth_token` = one of its API keys).
//!
//! - `POST /infer` `{model, prompt, options?{maxTokens, repeatPenalty,
//!   repeatPenaltyLastNTokenCount, temperature, topK, topP}}` →
//!   `{text, usage{promptTokenCount, generatedTokenCount}}`. The prompt is
//!   plain text, continued as it is (Spin apps format their own prompts).
//! - `POST /embed` `{model, input[]}` →
//!   `{embeddings[[f32]], usage{promptTokenCount}}`: unit-length means of
//!   the final hidden states, as `/v1/embeddings`.
//!
//! Spin sends `Authorization: bearer <token>`; the token is checked where
//! every route's key is checked, so these routes need nothing of their own.

use serde_json::{json, Value};

use crate::backend::{Backend, Priority, Prompt, SamplingParams};
use crate::error::ApiError;
use crate::generate::collect;
use crate::http::{Request, Response};
use crate::json::{self, Fields};
use crate::ollama::{DEFAULT_REPEAT_LAST_N, DEFAULT_REPEAT_PENALTY, DEFAULT_TEMPERATURE, DEFAULT_TOP_K, DEFAULT_TOP_P};

/// Spin's default when the app leaves `maxTokens` out (`spin_sdk::llm`);
/// its other defaults are Ollama's.
const DEFAULT_MAX_TOKENS: u32 = 100;

/// `POST /infer`.
pub fn infer(req: &Request, backend: &dyn Backend) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let model = f.required_string("model")?.to_string();
    let prompt = f.required_string("prompt")?.to_string();
    let params = match f.get("options") {
        None | Some(Value::Null) => options(&Fields::new(&serde_json::Map::new()))?,
        Some(Value::Object(o)) => options(&Fields::nested(o, "options"))?,
        Some(other) => return Err(f.wrong_type("options", "an object", other)),
    };
    let engine_error = |e| ApiError::engine(e, "prompt");
    let generation = backend.generate(&model, &Prompt::Text(prompt), &params).map_err(engine_error)?;
    let (text, finished) = collect(generation).map_err(engine_error)?;
    Ok(Response::json(
        200,
        &json!({
            "text": text,
            "usage": {
                "promptTokenCount": finished.usage.prompt_tokens,
                "generatedTokenCount": finished.usage.completion_tokens,
            },
        }),
    ))
}

/// Spin's inferencing options as engine sampling.
fn options(o: &Fields<'_>) -> Result<SamplingParams, ApiError> {
    Ok(SamplingParams {
        max_tokens: o.integer_at_least("maxTokens", 1)?.unwrap_or(DEFAULT_MAX_TOKENS),
        temperature: o.number_in("temperature", 0.0, false, 2.0)?.unwrap_or(DEFAULT_TEMPERATURE) as f32,
        top_k: o.integer_at_least("topK", 0)?.unwrap_or(DEFAULT_TOP_K),
        top_p: o.number_in("topP", 0.0, true, 1.0)?.unwrap_or(DEFAULT_TOP_P) as f32,
        min_p: 0.0,
        repeat_penalty: o.number_above("repeatPenalty", 0.0)?.unwrap_or(DEFAULT_REPEAT_PENALTY) as f32,
        repeat_last_n: o.integer_at_least("repeatPenaltyLastNTokenCount", 0)?.unwrap_or(DEFAULT_REPEAT_LAST_N),
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        seed: None,
        stop: Vec::new(),
        timeout_ms: None,
        priority: Priority::Interactive,
    })
}

/// `POST /embed`.
pub fn embed(req: &Request, backend: &dyn Backend) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let model = f.required_string("model")?.to_string();
    let inputs = f.strings("input")?.ok_or_else(|| f.missing("input"))?;
    if inputs.is_empty() {
        return Err(ApiError::param("input", "'input' must hold at least one string."));
    }
    let embeddings = backend.embed(&model, &inputs).map_err(|e| ApiError::engine(e, "input"))?;
    let prompt_tokens: u64 = embeddings.iter().map(|e| u64::from(e.tokens)).sum();
    let vectors: Vec<&[f32]> = embeddings.iter().map(|e| e.vector.as_slice()).collect();
    Ok(Response::json(200, &json!({"embeddings": vectors, "usage": {"promptTokenCount": prompt_tokens}})))
}

//! Spin's remote LLM protocol, so a Spin app can use tern as its LLM
//! backend (`runtime-config.toml`: `[llm_compute] type = "remote_http"`,
//! `url` = this server, `auth_token` = one of its API keys).
//!
//! - `POST /infer` `{model, prompt, options?{maxTokens, repeatPenalty,
//!   repeatPenaltyLastNTokenCount, temperature, topK, topP}}` →
//!   `{text, usage{promptTokenCount, generatedTokenCount}}`. The prompt is
//!   plain text, continued as it is (Spin apps format their own prompts).
//!   Options left out take Spin's defaults
//!   ([`SPIN_DEFAULTS`](crate::params::SPIN_DEFAULTS)).
//! - `POST /embed` `{model, input[]}` →
//!   `{embeddings[[f32]], usage{promptTokenCount}}`: unit-length means of
//!   the final hidden states, as `/v1/embeddings`.
//!
//! Spin sends `Authorization: bearer <token>`; the token is checked where
//! every route's key is checked, so these routes need nothing of their own.

use serde_json::{json, Value};

use crate::engine_client::{EngineClient, Prompt};
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::json::{self, Fields};
use crate::params::spin_sampling;
use crate::stream::collect;

/// `POST /infer`.
pub fn infer(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let model = f.required_string("model")?.to_string();
    let prompt = f.required_string("prompt")?.to_string();
    let params = match f.get("options") {
        None | Some(Value::Null) => spin_sampling(&Fields::new(&serde_json::Map::new()))?,
        Some(Value::Object(o)) => spin_sampling(&Fields::nested(o, "options"))?,
        Some(other) => return Err(f.wrong_type("options", "an object", other)),
    };
    let engine_error = |e| ApiError::engine(e, "prompt");
    let generation = engine.generate(&model, &Prompt::Text(prompt), &params).map_err(engine_error)?;
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

/// `POST /embed`.
pub fn embed(req: &Request, engine: &dyn EngineClient) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let model = f.required_string("model")?.to_string();
    let inputs = f.strings("input")?.ok_or_else(|| f.missing("input"))?;
    if inputs.is_empty() {
        return Err(ApiError::param("input", "'input' must hold at least one string."));
    }
    let embeddings = engine.embed(&model, &inputs).map_err(|e| ApiError::engine(e, "input"))?;
    let prompt_tokens: u64 = embeddings.iter().map(|e| u64::from(e.tokens)).sum();
    let vectors: Vec<&[f32]> = embeddings.iter().map(|e| e.vector.as_slice()).collect();
    Ok(Response::json(200, &json!({"embeddings": vectors, "usage": {"promptTokenCount": prompt_tokens}})))
}

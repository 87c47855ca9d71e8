//! `POST /v1/embeddings`: OpenAI's embeddings.
//!
//! Each vector is the mean of the model's final normalised hidden states (the
//! output norm's result) over the input's tokens, scaled to unit length, so a
//! dot product is the cosine similarity. `input` is a string, an array of
//! strings, an array of token ids or an array of token-id arrays; token ids
//! are turned back into text and the text is embedded, so an input spelled
//! in ids the tokenizer would not produce is embedded as its tokenization.
//! `encoding_format` is `float` (the default) or `base64`: the vector's
//! little-endian `f32` bytes, base64-encoded, which the official clients ask
//! for. The vector size is the model's; `dimensions` may only repeat it.

use serde_json::{json, Value};

use crate::backend::Backend;
use crate::completions::token_ids;
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::json::{self, Fields};

/// Field holding the inputs, named by errors about them.
const INPUT_PARAM: &str = "input";
/// Most inputs one request may carry (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

/// Serves one embeddings request.
pub fn handle(req: &Request, backend: &dyn Backend) -> Result<Response, ApiError> {
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
            Input::Tokens(ids) => backend.detokenize(model, &ids).map_err(engine_error),
        })
        .collect::<Result<Vec<String>, ApiError>>()?;
    let embeddings = backend.embed(model, &texts).map_err(engine_error)?;

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

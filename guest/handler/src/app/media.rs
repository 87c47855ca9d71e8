//! Images and audio (`/api/v1/images/generations`, `/api/v1/audio/speech`,
//! `/api/v1/audio/transcriptions`), forwarded to the OpenAI-compatible
//! upstream the host is configured with (`media_upstream`, its key
//! `media_upstream_key`). Without one they answer 503; an upstream's error
//! keeps its status. Generated images are stored as the caller's files.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::auth::{verified, User};
use super::{method_not_allowed, ok, AppError, Ctx};
use crate::http::Response;
use crate::json::Fields;

/// A request for the upstream (read by the platform; natively there is
/// none).
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
pub struct Outgoing {
    pub method: &'static str,
    /// Full URL.
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The upstream's answer.
pub struct Incoming {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

pub fn route(ctx: &mut Ctx<'_>, method: &str, family: &str, rest: &str) -> Result<Response, AppError> {
    let user = verified(ctx)?;
    let known = matches!((family, rest), ("images", "generations") | ("audio", "speech" | "transcriptions"));
    if !known {
        return Err(AppError::not_found());
    }
    if method != "POST" {
        return Err(method_not_allowed("POST"));
    }
    let base = ctx.platform.setting("media_upstream").ok_or_else(|| {
        AppError::new(
            503,
            "No media upstream is configured; start tern with --media-upstream URL to serve images and audio.",
        )
    })?;
    match rest {
        "generations" => images(ctx, &user, &base),
        "speech" => {
            ctx.body()?;
            let reply = send(ctx, &format!("{base}/audio/speech"), "application/json", ctx.req.body.clone())?;
            let kind = reply.content_type.unwrap_or_else(|| "audio/mpeg".into());
            Ok(Response::text(200, &kind, reply.body))
        }
        _ => {
            let kind = ctx.req.header("content-type").unwrap_or_default().to_string();
            if super::multipart::boundary(&kind).is_none() {
                return Err(AppError::bad_request(
                    "A transcription is a multipart/form-data body with a 'file' field.",
                ));
            }
            let reply = send(ctx, &format!("{base}/audio/transcriptions"), &kind, ctx.req.body.clone())?;
            Ok(Response::text(200, reply.content_type.as_deref().unwrap_or("application/json"), reply.body))
        }
    }
}

/// Sends a POST to the upstream; a non-2xx answer becomes an error with its
/// status and the upstream's message.
fn send(ctx: &Ctx<'_>, url: &str, content_type: &str, body: Vec<u8>) -> Result<Incoming, AppError> {
    let mut headers = vec![("content-type".to_string(), content_type.to_string())];
    if let Some(key) = ctx.platform.setting("media_upstream_key") {
        headers.push(("authorization".to_string(), format!("Bearer {key}")));
    }
    let reply = ctx
        .platform
        .forward(Outgoing { method: "POST", url: url.to_string(), headers, body })
        .map_err(|why| AppError::new(502, format!("The media upstream could not be reached: {why}")))?;
    if (200..300).contains(&reply.status) {
        return Ok(reply);
    }
    let message = serde_json::from_slice::<Value>(&reply.body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).chars().take(500).collect());
    Err(AppError::new(reply.status, format!("External: {message}")))
}

fn images(ctx: &Ctx<'_>, user: &User, base: &str) -> Result<Response, AppError> {
    let body = ctx.body()?;
    let f = Fields::new(&body);
    let prompt = f.required_string("prompt")?;
    let n = f.integer("n")?.unwrap_or(1);
    if !(1..=4).contains(&n) {
        return Err(AppError::bad_request("'n' must be 1 to 4."));
    }
    let mut request = json!({
        "model": f.string("model")?.unwrap_or("dall-e-2"),
        "prompt": prompt,
        "n": n,
        "size": f.string("size")?.unwrap_or("512x512"),
        "response_format": "b64_json",
    });
    if request["model"].as_str().is_some_and(|m| m.starts_with("gpt-image")) {
        request.as_object_mut().expect("an object").remove("response_format");
    }
    let reply = send(ctx, &format!("{base}/images/generations"), "application/json", request.to_string().into_bytes())?;
    let answer: Value = serde_json::from_slice(&reply.body)
        .map_err(|_| AppError::new(502, "The media upstream's answer is not JSON."))?;
    let mut images = Vec::new();
    for item in answer["data"].as_array().into_iter().flatten() {
        if let Some(encoded) = item["b64_json"].as_str() {
            let bytes = STANDARD
                .decode(encoded)
                .map_err(|_| AppError::new(502, "The media upstream sent an image that is not base64."))?;
            let id = super::files::store(&*ctx.db, &user.id, "generated-image.png", "image/png", &bytes, json!({}))?;
            images.push(json!({"id": id, "url": format!("/api/v1/files/{id}/content")}));
        } else if let Some(url) = item["url"].as_str() {
            images.push(json!({"url": url}));
        }
    }
    ok(Value::Array(images))
}

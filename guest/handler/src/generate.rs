//! `POST /generate`: the project's original plain-text completion API.
//!
//! Request `{prompt, max_tokens?, temperature?, top_p?, priority?, model?}`;
//! response `{text, prompt, max_tokens, generation_time_ms,
//! tokens_per_second, finish_reason, usage, prompt_tokens,
//! completion_tokens, cached_tokens}`. Without `model`, the engine's first
//! model answers; without `priority`, it is `interactive`.

use serde_json::json;

use crate::backend::{Backend, Error, Event, Finished, GenerationStream, Priority, Prompt, SamplingParams, Usage};
use crate::chat::{finish_reason, parse_priority};
use crate::error::ApiError;
use crate::http::{Request, Response};
use crate::json::{self, Fields};

const PROMPT_PARAM: &str = "prompt";
const DEFAULT_MAX_TOKENS: u32 = 128;
const DEFAULT_TEMPERATURE: f64 = 0.7;
const DEFAULT_TOP_P: f64 = 0.9;

/// Serves one `/generate` request.
pub fn handle(req: &Request, backend: &dyn Backend) -> Result<Response, ApiError> {
    let map = json::parse_object(&req.body)?;
    let f = Fields::new(&map);
    let prompt = f.required_string("prompt")?.to_string();
    let params = plain_params(&f, parse_priority(&f, Priority::Interactive)?)?;
    let model = model_or_first(&f, backend)?;

    let engine_error = |e| ApiError::engine(e, PROMPT_PARAM);
    let generation = backend.generate(&model, &Prompt::Text(prompt.clone()), &params).map_err(engine_error)?;
    let (text, finished) = collect(generation).map_err(engine_error)?;

    let usage = finished.usage;
    let generation_time_ms = engine_ms(&usage);
    let tokens_per_second =
        if generation_time_ms > 0.0 { f64::from(usage.completion_tokens) * 1000.0 / generation_time_ms } else { 0.0 };
    let body = json!({
        "text": text,
        "prompt": prompt,
        "max_tokens": params.max_tokens,
        "generation_time_ms": generation_time_ms,
        "tokens_per_second": tokens_per_second,
        "finish_reason": finish_reason(finished.reason),
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens),
        },
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
    });
    Ok(Response::json(200, &body))
}

/// The request's `model`, or the engine's first model when it names none.
pub fn model_or_first(f: &Fields<'_>, backend: &dyn Backend) -> Result<String, ApiError> {
    match f.string("model")? {
        Some(model) => Ok(model.to_string()),
        None => first_model(backend),
    }
}

/// The id of the engine's first model; 503 while none is loaded.
pub fn first_model(backend: &dyn Backend) -> Result<String, ApiError> {
    backend.list_models().into_iter().next().map(|info| info.id).ok_or(ApiError::Loading)
}

/// Milliseconds from admission to the end of a generation by the engine's
/// own clock: queueing, prompt and generation together.
pub fn engine_ms(usage: &Usage) -> f64 {
    usage.queue_ms + usage.prompt_ms + usage.generation_ms
}

/// Sampling of the plain APIs (`/generate`, `/batch`) from the request's
/// `max_tokens`, `temperature` and `top_p`, with one set of defaults:
/// nothing else is sampled, no stops, the host's deadline.
pub fn plain_params(f: &Fields<'_>, priority: Priority) -> Result<SamplingParams, ApiError> {
    let max_tokens = f.integer_at_least("max_tokens", 1)?.unwrap_or(DEFAULT_MAX_TOKENS);
    let temperature = f.number_in("temperature", 0.0, false, 2.0)?.unwrap_or(DEFAULT_TEMPERATURE);
    let top_p = f.number_in("top_p", 0.0, true, 1.0)?.unwrap_or(DEFAULT_TOP_P);
    Ok(SamplingParams {
        max_tokens,
        temperature: temperature as f32,
        top_k: 0,
        top_p: top_p as f32,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 0,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        seed: None,
        stop: Vec::new(),
        timeout_ms: None,
        priority,
    })
}

/// Reads a generation to its end: the whole text and how it finished. The
/// generation is dropped (released in the engine) before this returns.
pub fn collect(mut generation: Box<dyn GenerationStream>) -> Result<(String, Finished), Error> {
    let mut text = String::new();
    loop {
        match generation.next_event()? {
            Event::Text(piece) => text.push_str(&piece),
            Event::Finished(finished) => return Ok((text, finished)),
            Event::Pending => {}
        }
    }
}

/// How one streaming API writes a generation: a frame per piece of text,
/// then one last frame for its end or its failure.
pub trait Framing {
    /// The frame of a (non-empty) piece of text.
    fn text(&mut self, text: &str) -> Vec<u8>;
    /// The last frame of a generation that finished.
    fn finished(&mut self, finished: &Finished) -> Vec<u8>;
    /// The last frame of a generation the engine failed: the status line is
    /// long gone, so the error travels in the body.
    fn failed(&mut self, error: Error) -> Vec<u8>;
}

/// A generation's frames, produced as the client reads them and ending after
/// the last one. Owns the generation: dropping this cancels it.
pub struct Frames<F> {
    generation: Option<Box<dyn GenerationStream>>,
    framing: F,
}

impl<F: Framing> Frames<F> {
    pub fn new(generation: Box<dyn GenerationStream>, framing: F) -> Self {
        Frames { generation: Some(generation), framing }
    }
}

impl<F: Framing> Iterator for Frames<F> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            let event = self.generation.as_mut()?.next_event();
            match event {
                Ok(Event::Text(text)) if text.is_empty() => {}
                Ok(Event::Pending) => {}
                Ok(Event::Text(text)) => return Some(self.framing.text(&text)),
                Ok(Event::Finished(finished)) => {
                    self.generation = None;
                    return Some(self.framing.finished(&finished));
                }
                Err(error) => {
                    self.generation = None;
                    return Some(self.framing.failed(error));
                }
            }
        }
    }
}

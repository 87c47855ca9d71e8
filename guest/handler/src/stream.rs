//! The one stream pump: a generation read event by event and written in one
//! API's framing, a frame per body piece, as the client reads them.
//!
//! Every streaming route (OpenAI's chunks, Ollama's NDJSON lines,
//! llama.cpp's events, the seed's chat events) is a [`Framing`] driven by
//! [`Frames`]; the routes that answer whole read the generation with
//! [`collect`] or [`read_all`].

use std::collections::VecDeque;

use crate::engine_client::{
    EngineClient, Error, Event, Finished, GenerationStream, Prompt, SamplingParams, TokenLogprob,
};
use crate::error::ApiError;

/// Reads a generation to its end: the whole text and how it finished. The
/// generation is dropped (released in the engine) before this returns.
pub fn collect(generation: Box<dyn GenerationStream>) -> Result<(String, Finished), Error> {
    collect_all(generation).map(|whole| (whole.text, whole.finished))
}

/// A whole generation: its text, the log-probabilities of its tokens (when
/// they were asked for) and how it finished.
pub struct Whole {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finished: Finished,
}

/// [`collect`], keeping the log-probabilities too.
pub fn collect_all(mut generation: Box<dyn GenerationStream>) -> Result<Whole, Error> {
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    loop {
        match generation.next_event()? {
            Event::Text(piece) => text.push_str(&piece),
            Event::Logprobs(tokens) => logprobs.extend(tokens),
            Event::Finished(finished) => return Ok(Whole { text, logprobs, finished }),
            Event::Pending => {}
        }
    }
}

/// [`collect`] with errors naming `prompt_param` as the field holding the
/// prompt.
pub fn read_all(
    generation: Box<dyn GenerationStream>,
    prompt_param: &'static str,
) -> Result<(String, Finished), ApiError> {
    collect(generation).map_err(|e| ApiError::engine(e, prompt_param))
}

/// Starts `n` generations of one prompt: the first alone, the others once
/// its prompt is in the engine's KV cache (its first event has come), so
/// that they take its filed prompt blocks instead of computing the prompt
/// again. Choice `i` samples with `seed + i` when a seed is given.
pub fn start_choices(
    engine: &dyn EngineClient,
    model: &str,
    prompt: &Prompt,
    params: &SamplingParams,
    n: u32,
) -> Result<Vec<Box<dyn GenerationStream>>, Error> {
    let mut first = engine.generate(model, prompt, params)?;
    let event = first.next_event()?;
    let mut choices: Vec<Box<dyn GenerationStream>> = vec![Box::new(Prefixed { first: Some(event), rest: first })];
    for i in 1..n {
        let seed = params.seed.map(|s| s.wrapping_add(u64::from(i)));
        choices.push(engine.generate(model, prompt, &SamplingParams { seed, ..params.clone() })?);
    }
    Ok(choices)
}

/// A generation whose first event was already read.
struct Prefixed {
    first: Option<Event>,
    rest: Box<dyn GenerationStream>,
}

impl GenerationStream for Prefixed {
    fn next_event(&mut self) -> Result<Event, Error> {
        match self.first.take() {
            Some(event) => Ok(event),
            None => self.rest.next_event(),
        }
    }
}

/// How one streaming API writes a generation: maybe an opening frame, a
/// frame per piece of text, then the last frames for its end or one for its
/// failure.
pub trait Framing {
    /// The frame sent before any text, if the API opens with one.
    fn opening(&mut self) -> Option<Vec<u8>> {
        None
    }
    /// Log-probabilities of the tokens the next pieces of text are made of,
    /// when they were asked for; an API that reports them keeps them for the
    /// next frame.
    fn logprobs(&mut self, _tokens: Vec<TokenLogprob>) {}
    /// The frame of a (non-empty) piece of text.
    fn text(&mut self, text: &str) -> Vec<u8>;
    /// The last frames of a generation that finished, each its own body
    /// piece.
    fn finished(&mut self, finished: &Finished) -> Vec<Vec<u8>>;
    /// The last frame of a generation the engine failed: the status line is
    /// long gone, so the error travels in the body.
    fn failed(&mut self, error: Error) -> Vec<u8>;
}

/// What ends a stream of several choices once every one has finished: the
/// frames made from all their ends (a usage total, `[DONE]`).
pub type Ending = Box<dyn FnOnce(&[Finished]) -> Vec<Vec<u8>>>;

/// A generation's frames, or those of several generations of one request
/// (`n` choices) written into one stream, an event of each in turn; they
/// run in the same engine steps, so each has about one token per turn.
/// Produced as the client reads them. Owns the generations: dropping this
/// cancels them, and each is released as soon as it finishes, before its
/// last frames go out. Each choice has its own framing (which numbers its
/// frames); the `ending` follows the last. A failure ends the stream with
/// that choice's error frame and drops the others (cancelling them).
pub struct Frames<F> {
    choices: Vec<(Option<Box<dyn GenerationStream>>, F)>,
    ends: Vec<Option<Finished>>,
    turn: usize,
    opened: bool,
    queued: VecDeque<Vec<u8>>,
    ending: Option<Ending>,
}

impl<F: Framing> Frames<F> {
    /// The frames of `generation` in `framing`.
    pub fn new(generation: Box<dyn GenerationStream>, framing: F) -> Self {
        Self::interleaved(vec![(generation, framing)], Box::new(|_| Vec::new()))
    }

    /// The frames of several choices, then the `ending`.
    pub fn interleaved(choices: Vec<(Box<dyn GenerationStream>, F)>, ending: Ending) -> Self {
        let ends = choices.iter().map(|_| None).collect();
        let choices = choices.into_iter().map(|(g, f)| (Some(g), f)).collect();
        Frames { choices, ends, turn: 0, opened: false, queued: VecDeque::new(), ending: Some(ending) }
    }
}

impl<F: Framing> Iterator for Frames<F> {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        if !self.opened {
            self.opened = true;
            let openings: Vec<Vec<u8>> = self.choices.iter_mut().filter_map(|(_, f)| f.opening()).collect();
            self.queued.extend(openings);
        }
        loop {
            if let Some(frame) = self.queued.pop_front() {
                return Some(frame);
            }
            let n = self.choices.len();
            let Some(i) = (0..n).map(|k| (self.turn + k) % n).find(|&i| self.choices[i].0.is_some()) else {
                let ends: Vec<Finished> = self.ends.iter_mut().filter_map(Option::take).collect();
                let ending = self.ending.take()?;
                self.queued.extend(ending(&ends));
                continue;
            };
            self.turn = (i + 1) % n;
            let (generation, framing) = &mut self.choices[i];
            let event = generation.as_mut().map(|g| g.next_event())?;
            match event {
                Ok(Event::Pending) => {}
                Ok(Event::Logprobs(tokens)) => framing.logprobs(tokens),
                Ok(Event::Text(text)) if text.is_empty() => {}
                Ok(Event::Text(text)) => {
                    // A framing that holds text back sends nothing yet.
                    let frame = framing.text(&text);
                    if !frame.is_empty() {
                        return Some(frame);
                    }
                }
                Ok(Event::Finished(finished)) => {
                    *generation = None;
                    self.queued.extend(framing.finished(&finished));
                    self.ends[i] = Some(finished);
                }
                Err(error) => {
                    let frame = framing.failed(error);
                    self.choices.clear();
                    self.ending = None;
                    return Some(frame);
                }
            }
        }
    }
}

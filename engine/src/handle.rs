//! What a caller holds while the scheduler works: a [`Generation`] that
//! streams text, or the embeddings of a request being computed. The
//! scheduler writes into the slot half; dropping the caller's half
//! cancels the work within one step.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::error::EngineError;

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FinishReason {
    /// End of turn or a stop string.
    Stop,
    /// `max_tokens` or the context.
    Length,
    /// Cancelled by its owner.
    Cancelled,
    /// Its deadline passed.
    Timeout,
}

/// Counts and times of a generation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub cached_tokens: u32,
    pub queue_ms: f64,
    pub prompt_ms: f64,
    pub generation_ms: f64,
}

/// The last event of a generation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Finished {
    pub reason: FinishReason,
    pub usage: Usage,
}

/// One input's embedding (see [`crate::Engine::embed`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Embedding {
    /// Unit-length mean of the final hidden states.
    pub vector: Vec<f32>,
    /// Tokens the input had.
    pub tokens: u32,
}

/// A generated token's log-probability and the likeliest tokens at its
/// position, when the generation asked for them.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    /// The token's bytes (a token may hold part of a character).
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// The likeliest tokens, most likely first.
    pub top: Vec<TopLogprob>,
}

/// One of the likeliest tokens at a position.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub id: u32,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// What [`Generation::next`] returns.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Pending,
    /// Log-probabilities of the tokens generated since the last such event,
    /// in order; they come before the text those tokens make.
    Logprobs(Vec<TokenLogprob>),
    Text(String),
    Finished(Finished),
}

#[derive(Default)]
pub(crate) struct SlotState {
    pub logprobs: Vec<TokenLogprob>,
    pub text: String,
    pub finished: Option<Finished>,
    pub error: Option<EngineError>,
    waker: Option<Waker>,
}

impl SlotState {
    /// Adds generated text, unless the generation has already ended (e.g. a
    /// job cancelled while its last step ran): an ended text never changes.
    pub fn append(&mut self, text: &str) {
        if self.finished.is_none() && self.error.is_none() {
            self.text.push_str(text);
        }
    }

    fn has_news(&self) -> bool {
        !self.logprobs.is_empty() || !self.text.is_empty() || self.finished.is_some() || self.error.is_some()
    }
}

/// The state a generation handle and the scheduler share.
#[derive(Default)]
pub(crate) struct GenerationSlot {
    pub state: Mutex<SlotState>,
    cond: Condvar,
    pub cancelled: AtomicBool,
}

impl GenerationSlot {
    pub fn update(&self, f: impl FnOnce(&mut SlotState)) {
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut s);
            s.waker.take()
        };
        self.cond.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A running generation; dropping it cancels the work.
pub struct Generation {
    slot: Arc<GenerationSlot>,
    prompt_tokens: u32,
}

impl Generation {
    /// The caller's half of a generation whose prompt has `prompt_tokens` tokens.
    pub(crate) fn new(slot: Arc<GenerationSlot>, prompt_tokens: u32) -> Self {
        Self { slot, prompt_tokens }
    }

    /// Takes the text generated since the last call, or the end.
    pub fn next(&self) -> Result<Event, EngineError> {
        let mut s = self.slot.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !s.logprobs.is_empty() {
            return Ok(Event::Logprobs(std::mem::take(&mut s.logprobs)));
        }
        if !s.text.is_empty() {
            return Ok(Event::Text(std::mem::take(&mut s.text)));
        }
        if let Some(e) = &s.error {
            return Err(e.clone());
        }
        Ok(match &s.finished {
            Some(f) => Event::Finished(f.clone()),
            None => Event::Pending,
        })
    }

    /// Blocks the calling thread until [`Generation::next`] has news.
    pub fn wait(&self) {
        let mut s = self.slot.state.lock().unwrap_or_else(PoisonError::into_inner);
        while !s.has_news() {
            s = self.slot.cond.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Resolves when [`Generation::next`] has news.
    pub fn ready(&self) -> impl Future<Output = ()> + Send + 'static {
        Ready(self.slot.clone())
    }

    /// Tokens in the prompt, known at admission.
    pub fn prompt_tokens(&self) -> u32 {
        self.prompt_tokens
    }

    /// Blocks until the end; returns all text and how it ended.
    pub fn collect(self) -> Result<(String, Finished), EngineError> {
        let mut text = String::new();
        loop {
            match self.next()? {
                Event::Pending => self.wait(),
                Event::Logprobs(_) => {}
                Event::Text(t) => text.push_str(&t),
                Event::Finished(f) => return Ok((text, f)),
            }
        }
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.slot.cancelled.store(true, Ordering::Release);
    }
}

struct Ready(Arc<GenerationSlot>);

impl Future for Ready {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.0.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.has_news() {
            Poll::Ready(())
        } else {
            s.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }
}

/// The state an embedding request and the scheduler share.
#[derive(Default)]
pub(crate) struct EmbeddingSlot {
    result: Mutex<Option<Result<Vec<Embedding>, EngineError>>>,
    done: Condvar,
    pub cancelled: AtomicBool,
}

impl EmbeddingSlot {
    /// Ends the request with `result` (the first end counts).
    pub fn finish(&self, result: Result<Vec<Embedding>, EngineError>) {
        self.result.lock().unwrap_or_else(PoisonError::into_inner).get_or_insert(result);
        self.done.notify_all();
    }

    pub fn gone(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}

/// The caller's half of an embedding request; dropping it cancels the work.
pub(crate) struct PendingEmbeddings(pub Arc<EmbeddingSlot>);

impl PendingEmbeddings {
    /// The result, if it has come.
    pub fn take(&self) -> Option<Result<Vec<Embedding>, EngineError>> {
        self.0.result.lock().unwrap_or_else(PoisonError::into_inner).take()
    }

    /// Blocks until every input is embedded, or the request failed.
    pub fn wait(self) -> Result<Vec<Embedding>, EngineError> {
        let mut result = self.0.result.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(r) = result.take() {
                return r;
            }
            result = self.0.done.wait(result).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Drop for PendingEmbeddings {
    fn drop(&mut self) {
        self.0.cancelled.store(true, Ordering::Release);
    }
}

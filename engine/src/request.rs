//! What a caller asks the engine for.

use std::time::Duration;

use crate::sampler::SamplingParams;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What a generation continues.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Plain text; BOS is added if the model wants it; never parsed for control tokens.
    Text(String),
    /// A conversation rendered with the model's chat template.
    Chat(Vec<Message>),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
}

/// Which queue a generation waits in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Someone reads it as it comes: starts before any batch work.
    #[default]
    Interactive,
    /// Nobody watches it token by token (`/batch`, queued jobs).
    Batch,
}

/// Most stop strings one generation may have.
pub const MAX_STOPS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// Why `stop` cannot be used, if it cannot: more than [`MAX_STOPS`]
/// strings or one longer than [`MAX_STOP_BYTES`] (every generated token is
/// matched against them on the scheduler's thread).
pub fn check_stops(stop: &[String]) -> Result<(), String> {
    if stop.len() > MAX_STOPS {
        return Err(format!("at most {MAX_STOPS} stop strings are allowed, but got {}", stop.len()));
    }
    match stop.iter().position(|s| s.len() > MAX_STOP_BYTES) {
        Some(i) => Err(format!("stop string {i} is {} bytes; at most {MAX_STOP_BYTES} are allowed", stop[i].len())),
        None => Ok(()),
    }
}

/// A request for a generation.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub model: String,
    pub prompt: Prompt,
    /// Most tokens to generate; 0 means until the context is full.
    pub max_tokens: u32,
    /// Its `seed` is replaced by [`GenerateRequest::seed`].
    pub sampling: SamplingParams,
    /// Seed `None` draws a fresh one.
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub timeout: Option<Duration>,
    pub priority: Priority,
}

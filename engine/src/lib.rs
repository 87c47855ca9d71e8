//! tern's inference engine: everything between a model file and a stream of
//! text, with no knowledge of HTTP or wasm.
//!
//! 1. [`gguf`] maps a GGUF file and describes its tensors and metadata.
//! 2. [`tokenizer`] and [`template`] turn text and conversations into token
//!    ids (control tokens only where the chat template puts them) and back;
//!    [`text`] turns generated tokens into the text a client sees.
//! 3. [`model`] repacks the weights into the kernels' layout and runs the
//!    BitNet b1.58 forward pass on a [`model::ComputeBackend`] (the CPU's
//!    kernels, or a GPU), whose KV blocks [`kv`] shares out.
//! 4. [`sampler`] picks tokens. The [`Engine`] admits requests and hands
//!    out [`Generation`] handles that stream text and cancel on drop; the
//!    scheduler thread batches every running sequence into one forward pass
//!    per step, reusing cached prompt prefixes, and [`stats`] counts what it
//!    does. [`jobs`] keeps generations for clients that come back by id.
//! 5. [`contract`] maps these types onto the `tern:llm/inference` WIT
//!    contract's generated ones, for the host and the local adapter.
//!
//! ```no_run
//! use tern_engine::{Engine, EngineConfig, GenerateRequest, Priority, Prompt, SamplingParams};
//! use std::time::Duration;
//!
//! let engine = Engine::load(EngineConfig { models: vec!["models/tern-tiny.gguf".into()], ..Default::default() })?;
//! let generation = engine.generate(GenerateRequest {
//!     model: "tern-tiny".into(),
//!     prompt: Prompt::Text("To be, or not to be".into()),
//!     max_tokens: 32,
//!     sampling: SamplingParams::default(),
//!     seed: Some(1),
//!     stop: vec![],
//!     timeout: Some(Duration::from_secs(10)),
//!     priority: Priority::Interactive,
//! })?;
//! let (text, finished) = generation.collect()?;
//! println!("{text} ({:?})", finished.reason);
//! # Ok::<(), tern_engine::EngineError>(())
//! ```

pub mod contract;
mod engine;
mod error;
pub mod gguf;
pub mod grammar;
mod handle;
pub mod hf;
pub mod jobs;
pub mod kv;
mod loaded;
pub mod model;
mod request;
pub mod sampler;
mod scheduler;
pub mod stats;
pub mod template;
pub mod text;
pub mod tokenizer;

pub use engine::{Engine, EngineConfig};
pub use error::EngineError;
pub use handle::{Embedding, Event, FinishReason, Finished, Generation, TokenLogprob, TopLogprob, Usage};
pub use jobs::{JobInfo, JobState};
pub use loaded::{LoadedModel, ModelInfo};
pub use request::{check_stops, GenerateRequest, Message, Priority, Prompt, MAX_STOPS, MAX_STOP_BYTES};
pub use sampler::{SamplingParams, MAX_TOP_LOGPROBS};
pub use stats::EngineStatus;

/// Sets how many threads the kernels split each product over (the calling
/// thread included), before the first product runs. Returns the count in
/// effect: once products have run, the pool keeps its size.
pub fn set_threads(threads: usize) -> usize {
    tern_kernels::pool::init_global(threads)
}

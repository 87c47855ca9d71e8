//! tern's inference engine: everything between a model file and a stream of
//! text, with no knowledge of HTTP or wasm.
//!
//! 1. [`gguf`] maps a GGUF file and describes its tensors and metadata.
//! 2. [`tokenizer`] and [`chat`] turn text and conversations into token ids
//!    (control tokens only where the template puts them) and back.
//! 3. [`model`] repacks the weights into the kernels' layout and runs the
//!    BitNet b1.58 forward pass behind the [`model::Backend`] trait.
//! 4. [`sampler`] picks tokens; [`engine`] admits requests and hands out
//!    [`Generation`] handles that stream text and cancel on drop; the
//!    scheduler thread batches every running generation into one forward
//!    pass per step over a shared, prefix-reusing KV pool ([`kv`]), and
//!    [`stats`] counts what it does.
//! 5. [`gguf_write`] streams GGUF files out; [`synth`] uses it to write
//!    full-size models with random ternary weights for benchmarks, and
//!    [`bench`] measures bandwidth, products and models against each other.
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

pub mod bench;
pub mod chat;
pub mod engine;
pub mod gguf;
pub mod gguf_write;
pub mod kv;
pub mod model;
pub mod sampler;
mod scheduler;
pub mod stats;
pub mod synth;
pub mod tokenizer;

pub use engine::{
    Embedding, Engine, EngineConfig, EngineError, EngineStatus, Event, FinishReason, Finished, GenerateRequest,
    Generation, JobInfo, JobState, LoadedModel, Message, ModelInfo, Priority, Prompt, Usage,
};
pub use sampler::SamplingParams;

/// Sets how many threads the kernels split each product over (the calling
/// thread included), before the first product runs. Returns the count in
/// effect: once products have run, the pool keeps its size.
pub fn set_threads(threads: usize) -> usize {
    tern_kernels::pool::init_global(threads)
}

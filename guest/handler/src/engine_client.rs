//! What the routes need from the inference engine: an engine client.
//!
//! The engine is remote, behind the host's `tern:llm/inference` interface.
//! The trait mirrors the functions the routes call and speaks the
//! WIT-generated types, re-exported here, so no route holds a copy of a
//! cross-boundary type. `host.rs` implements it over the host's imports;
//! unit tests implement it with a scripted generation (`tests/script.rs`).

pub use crate::bindings::tern::llm::inference::{
    Constraint, ContextOverflow, Embedding, EngineStatus, Error, Event, FinishReason, Finished, Histogram, JobInfo,
    JobState, Message, ModelInfo, Priority, Prompt, QueuePlace, SamplingParams, TokenLogprob, Usage,
};
pub use crate::bindings::tern::llm::store_usage::BucketUsage;

/// The inference functions the routes use.
pub trait EngineClient {
    /// The models this engine serves (`list-models`).
    fn list_models(&self) -> Vec<ModelInfo>;
    /// Readiness and load (`status`).
    fn status(&self) -> EngineStatus;
    /// Starts a generation (`generate`); validation and context errors come
    /// back here, before any work is queued.
    fn generate(
        &self,
        model: &str,
        prompt: &Prompt,
        params: &SamplingParams,
    ) -> Result<Box<dyn GenerationStream>, Error>;
    /// Starts a generation the engine holds (`submit-job`); returns its id.
    fn submit_job(&self, model: &str, prompt: &Prompt, params: &SamplingParams) -> Result<String, Error>;
    /// A job by id (`job-status`).
    fn job_status(&self, id: &str) -> Option<JobInfo>;
    /// Cancels a job (`cancel-job`) and returns its state after.
    fn cancel_job(&self, id: &str) -> Option<JobInfo>;
    /// Token ids of plain text, no BOS (`tokenize`).
    fn tokenize(&self, model: &str, text: &str) -> Result<Vec<u32>, Error>;
    /// Text of token ids (`detokenize`).
    fn detokenize(&self, model: &str, tokens: &[u32]) -> Result<String, Error>;
    /// A conversation rendered with the model's chat template (`render-chat`).
    fn render_chat(&self, model: &str, messages: &[Message]) -> Result<String, Error>;
    /// Unit-length mean-pooled embeddings of `inputs`, in order (`embed`).
    fn embed(&self, model: &str, inputs: &[String]) -> Result<Vec<Embedding>, Error>;
    /// The host's key-value store (`wasi:keyvalue`), shared by every request.
    fn store(&self) -> &dyn Store;
}

/// Buckets of bytes the host keeps across requests (`wasi:keyvalue/store`
/// and `atomics`, plus `tern:llm/store-usage`). A store that fails reads as
/// empty: the callers use it as a cache.
pub trait Store {
    /// The value under `key`, if any.
    fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>>;
    /// Stores `value` under `key`; an error says why it was not kept.
    fn set(&self, bucket: &str, key: &str, value: &[u8]) -> Result<(), String>;
    /// Forgets `key`.
    fn delete(&self, bucket: &str, key: &str);
    /// Every key of the bucket.
    fn keys(&self, bucket: &str) -> Vec<String>;
    /// Adds `delta` to the counter under `key` and returns the new value
    /// (0 if the store cannot count).
    fn increment(&self, bucket: &str, key: &str, delta: u64) -> u64;
    /// What the bucket holds, where the runtime reports it.
    fn usage(&self, bucket: &str) -> Option<BucketUsage>;
    /// An owned handle to the same store, for work that outlives the
    /// request's borrow (a streamed answer stored at its end).
    fn share(&self) -> Box<dyn Store>;
}

/// A running generation read one event at a time. Dropping it cancels the
/// generation.
pub trait GenerationStream {
    /// Waits for the next event: `Event::Text` or `Event::Finished`, never
    /// `Event::Pending`. After `Finished`, keeps returning `Finished`.
    fn next_event(&mut self) -> Result<Event, Error>;
}

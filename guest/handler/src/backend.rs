//! What the router needs from the inference engine.
//!
//! The trait mirrors the `tern:llm/inference` functions the routes call and
//! speaks the WIT-generated types, re-exported here, so the router never holds
//! a copy of a cross-boundary type. `lib.rs` implements it over the host's
//! imports; unit tests implement it with a scripted generation.

pub use crate::bindings::tern::llm::inference::{
    ContextOverflow, EngineStatus, Error, Event, FinishReason, Finished, Histogram, JobInfo, JobState, Message,
    ModelInfo, Priority, Prompt, QueuePlace, SamplingParams, Usage,
};

/// The inference functions the routes use.
pub trait Backend {
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
}

/// A running generation read one event at a time. Dropping it cancels the
/// generation.
pub trait GenerationStream {
    /// Waits for the next event: `Event::Text` or `Event::Finished`, never
    /// `Event::Pending`. After `Finished`, keeps returning `Finished`.
    fn next_event(&mut self) -> Result<Event, Error>;
}

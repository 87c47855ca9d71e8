//! tern's HTTP handler: a wasi:http component that speaks the OpenAI and tern
//! APIs and asks the host's `tern:llm/inference` interface for text.
//!
//! How it fits:
//! 1. The host (`tern serve`) instantiates this component per request and
//!    calls its `wasi:http/incoming-handler` export.
//! 2. The export (`component.rs`) reads the request body (up to 1 MiB) into a
//!    plain [`Request`] and calls [`route`], handing it [`Backend`] calls
//!    that go to the host's inference imports.
//! 3. [`route`] validates, calls the engine, and returns a [`Response`] whose
//!    body is whole or a lazy stream of server-sent events; every failure is
//!    mapped once, in [`error_response`], to a status and an OpenAI error.
//! 4. The export writes the response. While streaming, a failed write means
//!    the client left: the generation is dropped, which cancels it in the
//!    host.
//!
//! The router is plain Rust, so it runs natively with any [`Backend`]:
//!
//! ```no_run
//! use tern_handler::{route, Backend, Request};
//!
//! fn health(engine: &dyn Backend) -> u16 {
//!     route(&Request::new("GET", "/health"), engine).status
//! }
//! ```

mod backend;
// Natively nothing invokes the generated `export!` macro.
#[cfg_attr(not(target_arch = "wasm32"), allow(unused_imports))]
mod bindings;
mod cache;
mod chat;
mod completions;
// The wasi:http export. Only a wasm build links it: natively, the exported
// symbol names (`wasi:http/incoming-handler@0.2.12#handle`) are not valid
// linker symbols, and unit tests only need the router.
#[cfg(target_arch = "wasm32")]
mod component;
mod cors;
mod embeddings;
mod error;
mod generate;
mod http;
mod json;
mod llamacpp;
mod metrics;
mod ollama;
mod optimized;
mod page;
mod queue;
mod router;
mod spin;
#[cfg(test)]
mod tests;

pub use backend::{
    Backend, BucketUsage, ContextOverflow, Embedding, EngineStatus, Error, Event, FinishReason, Finished,
    GenerationStream, Histogram, JobInfo, JobState, Message, ModelInfo, Priority, Prompt, QueuePlace, SamplingParams,
    Store, Usage,
};
pub use chat::{parse_request as parse_chat_request, ChatRequest};
pub use cors::CorsPolicy;
pub use error::{error_response, ApiError};
pub use http::{append_body_chunk, check_declared_length, Body, Request, Response, MAX_BODY_BYTES};
pub use router::{refuse, route, route_with, HANDLER_VERSION};

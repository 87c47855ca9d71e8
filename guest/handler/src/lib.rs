//! tern's HTTP handler: a wasi:http component that speaks the OpenAI and tern
//! APIs and asks the host's `tern:llm/inference` interface for text.
//!
//! How it fits:
//! 1. The host (`tern serve`) instantiates this component per request and
//!    calls its `wasi:http/incoming-handler` export.
//! 2. The export (`export.rs`) reads the request body (up to 1 MiB) into a
//!    plain [`Request`] and calls [`route`], handing it an [`EngineClient`]
//!    whose calls go to the host's inference imports (`host.rs`).
//! 3. [`route`] picks the route of the request's API family (`routes/`),
//!    which validates its parameters (`params.rs`), calls the engine, and
//!    returns a [`Response`] whose body is whole or a lazy stream of frames
//!    (`stream.rs`); every failure is mapped once, in [`error_response`], to
//!    a status and an OpenAI error.
//! 4. The export writes the response. While streaming, a failed write means
//!    the client left: the generation is dropped, which cancels it in the
//!    host.
//!
//! The router is plain Rust, so it runs natively with any [`EngineClient`]:
//!
//! ```no_run
//! use tern_handler::{route, EngineClient, Request};
//!
//! fn health(engine: &dyn EngineClient) -> u16 {
//!     route(&Request::new("GET", "/health"), engine).status
//! }
//! ```

// Natively nothing invokes the generated `export!` macro.
mod app;
#[cfg_attr(not(target_arch = "wasm32"), allow(unused_imports))]
mod bindings;
// The app layer's database, settings and upstream over the host's imports.
#[cfg(target_arch = "wasm32")]
mod app_host;
mod body_limit;
mod cache;
mod cors;
mod engine_client;
mod error;
// The wasi:http export and the host's imports behind the engine client. Only
// a wasm build links them: natively, the exported symbol names
// (`wasi:http/incoming-handler@0.2.12#handle`) are not valid linker symbols,
// and unit tests only need the router.
#[cfg(target_arch = "wasm32")]
mod export;
#[cfg(target_arch = "wasm32")]
mod host;
mod http;
mod json;
mod page;
mod params;
mod router;
mod routes;
mod stream;
#[cfg(test)]
mod tests;
mod tools;
mod webui;
mod wire;

pub use body_limit::{append_body_chunk, body_limit, check_declared_length};
pub use cors::CorsPolicy;
pub use engine_client::{
    BucketUsage, ContextOverflow, Embedding, EngineClient, EngineStatus, Error, Event, FinishReason, Finished,
    GenerationStream, Histogram, JobInfo, JobState, Message, ModelInfo, Priority, Prompt, QueuePlace, SamplingParams,
    Store, Usage,
};
pub use error::{error_response, ApiError};
pub use http::{Body, Request, Response, MAX_BODY_BYTES};
pub use params::{parse_chat_request, ChatRequest};
pub use router::{refuse, route, route_with};
pub use wire::HANDLER_VERSION;

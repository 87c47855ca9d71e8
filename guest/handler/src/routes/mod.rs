//! The routes, one file per API family. Each imports only the shared layer
//! (the engine client, HTTP values, errors, parameters, wire helpers, the
//! stream pump, the response cache, the chat page), never another family or
//! the router.

pub mod anthropic;
pub mod llamacpp;
pub mod ollama;
pub mod openai;
pub mod responses;
pub mod seed;
pub mod service;
pub mod spin;

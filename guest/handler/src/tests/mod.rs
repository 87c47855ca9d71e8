//! Behaviour of the router, driven natively with a scripted engine client
//! (`script.rs`). Each API family has its own file.

mod cache;
mod completions;
mod cors;
mod llamacpp;
mod metrics;
mod ollama;
mod openai_chat;
mod openapi;
mod page;
mod queue_query;
mod routing;
mod script;
mod seed;
mod socket;
mod spin;
mod tools;

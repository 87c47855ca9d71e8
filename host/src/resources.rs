//! What the guest holds handles to: the Rust values behind the WIT
//! resources of the handler's world, named in `bindings` and stored in each
//! request's resource table.

use tern_engine as engine;
use wasmtime_wasi::p2::Pollable;

/// A generation as the guest holds it. Dropping the resource drops the
/// engine's handle, which cancels the work.
pub struct GenerationResource {
    pub generation: engine::Generation,
}

#[wasmtime_wasi::async_trait]
impl Pollable for GenerationResource {
    async fn ready(&mut self) {
        self.generation.ready().await
    }
}

/// An open `wasi:keyvalue` bucket as the guest holds it.
pub struct BucketHandle {
    pub name: String,
}

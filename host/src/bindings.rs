//! Host bindings of the `tern:llm/handler` world, generated from `wit/`.
//! Never edited by hand; the rest of the crate imports the few names it needs.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "tern:llm/handler",
    imports: { default: trappable },
    exports: { default: async },
    require_store_data_send: true,
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "tern:llm/inference.generation": crate::resources::GenerationResource,
        "wasi:keyvalue/store.bucket": crate::resources::BucketHandle,
    },
});

pub use tern::llm::{inference, store_usage};

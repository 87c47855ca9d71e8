//! Host bindings of the `tern:llm/handler` world, generated from `wit/`.
//! Never edited by hand; the rest of the crate imports the few names it needs.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "tern:llm/handler",
    imports: {
        default: trappable,
        // Statements run off the async threads (SQLite) or over the network
        // (PostgreSQL): the guest's call awaits them.
        "spin:sqlite/sqlite": async | trappable,
        "spin:postgres/postgres": async | trappable,
        // The key-value store and the job table may be on Redis.
        "wasi:keyvalue/store": async | trappable,
        "wasi:keyvalue/atomics": async | trappable,
        "tern:llm/store-usage": async | trappable,
        // A poll waits for packets.
        "tern:llm/sessions": async | trappable,
        "tern:llm/inference.submit-job": async | trappable,
        "tern:llm/inference.job-status": async | trappable,
        "tern:llm/inference.cancel-job": async | trappable,
    },
    exports: { default: async },
    require_store_data_send: true,
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "tern:llm/inference.generation": crate::resources::GenerationResource,
        "wasi:keyvalue/store.bucket": crate::resources::BucketHandle,
        "spin:sqlite/sqlite.connection": crate::database::sqlite::Connection,
        "spin:postgres/postgres.connection": crate::database::postgres::Connection,
    },
});

pub use spin::postgres::postgres as spin_postgres;
pub use spin::sqlite::sqlite as spin_sqlite;
pub use tern::llm::{inference, sessions, store_usage};
pub use wasi::config::store as config_store;

//! Bindings generated from `wit/` for the `tern:llm/handler` world.
//!
//! Nothing here is written by hand: the rest of the crate imports the few
//! names it needs from this module and never edits what the macro emits.

wit_bindgen::generate!({
    path: "../../wit",
    world: "handler",
    generate_all,
});

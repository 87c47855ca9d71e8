# tern's daily commands. `just` lists them.

# List the recipes.
default:
    @just --list

# Serve the bundled model on 127.0.0.1:8080.
serve *ARGS:
    cargo run --release --package tern -- serve {{ARGS}}

# Generate from the command line, e.g. `just generate --prompt "To be"`.
generate *ARGS:
    cargo run --release --package tern -- generate {{ARGS}}

# Run every test (Rust crates, the handler natively, end-to-end with real clients).
test:
    tests/run

# Test the kernels' NEON (qemu-user, with and without dotprod) and wasm simd128 (wasmtime) variants.
test-cross:
    scripts/test-cross

# Build the handler component alone (target/wasm32-wasip2/release/tern_handler.wasm).
handler:
    cargo build --release --package tern-handler --target wasm32-wasip2

# Build the handler composed with each adapter into dist/ (remote, local with
# the bundled model, local reading TERN_MODEL), each checked against the
# stock-http world: `wasmtime serve -Scli dist/tern-local.wasm`.
dist:
    scripts/dist

# Regenerate the small GGUF test fixtures and their golden logits.
fixtures:
    python3 tests/fixtures/make_fixtures.py

# Compare decode and prefill with llama.cpp on synthetic 2B-4T-sized models (slow; not part of CI).
bench-peer *ARGS:
    scripts/bench-peer {{ARGS}}

# Format and lint everything.
lint:
    cargo fmt --all
    cargo clippy --workspace --all-targets

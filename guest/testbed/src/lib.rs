//! A wasi:http test component for exercising the host's limits: `/loop`
//! spins without end (deadlines), `/grow` allocates without bound (memory
//! limits), `/recurse` recurses until the stack overflows, `/sleep?ms=N`
//! answers after a pause (slow requests), and `/hello` answers at once, for
//! throughput comparisons with stock `wasmtime serve`.
//!
//! It exports `wasi:http/incoming-handler` and imports only what the
//! `wasi:http/proxy` world and `wasi:cli` provide, so it runs under tern's
//! host and under `wasmtime serve -Scli` alike. Every response carries
//! `x-testbed: 1`.

use std::hint::black_box;

use exports::wasi::http::incoming_handler::Guest;
use wasi::clocks::monotonic_clock;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

wit_bindgen::generate!({
    inline: "
        package tern:testbed;

        world testbed {
            import wasi:clocks/monotonic-clock@0.2.12;
            export wasi:http/incoming-handler@0.2.12;
        }
    ",
    // One file per package, each after the packages it uses.
    path: [
        "../../wit/deps/io.wit",
        "../../wit/deps/clocks.wit",
        "../../wit/deps/random.wit",
        "../../wit/deps/filesystem.wit",
        "../../wit/deps/sockets.wit",
        "../../wit/deps/cli.wit",
        "../../wit/deps/http.wit",
    ],
    world: "tern:testbed/testbed",
    generate_all,
});

/// `/sleep`'s pause when the query gives none.
const DEFAULT_SLEEP_MS: u64 = 100;
/// What `/grow` allocates per step.
const GROW_STEP_BYTES: usize = 1 << 20;

struct Testbed;

impl Guest for Testbed {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let target = request.path_with_query().unwrap_or_default();
        drop(request);
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        match path {
            "/hello" => respond(response_out, 200, b"hello\n"),
            "/loop" => spin(),
            "/grow" => grow(),
            "/recurse" => {
                black_box(recurse(0));
            }
            "/sleep" => {
                let ms = query_param(query, "ms").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SLEEP_MS);
                monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000)).block();
                respond(response_out, 200, b"slept\n");
            }
            _ => respond(response_out, 404, b"not found\n"),
        }
    }
}

export!(Testbed);

/// Computes forever without calling the host.
fn spin() -> ! {
    let mut x = black_box(1u64);
    loop {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407));
    }
}

/// Keeps allocating filled megabytes until the allocator aborts.
fn grow() -> ! {
    let mut kept: Vec<Vec<u8>> = Vec::new();
    loop {
        kept.push(vec![0xa5; GROW_STEP_BYTES]);
        black_box(&kept);
    }
}

/// Recurses until the stack overflows. Each frame keeps sixteen opaque values
/// alive across the call: wasm locals that the compiled code spills to the
/// native stack, so the host's wasm stack limit is what runs out (not the
/// shadow stack in linear memory). The end condition is never met; it only
/// keeps the recursion from being unconditional.
fn recurse(depth: u64) -> u64 {
    let frame: [u64; 16] = std::array::from_fn(|i| black_box(depth + i as u64));
    if black_box(depth) == u64::MAX {
        return 0;
    }
    let below = black_box(recurse(black_box(depth + 1)));
    frame.iter().fold(below, |acc, v| acc.wrapping_mul(31).wrapping_add(*v))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::new();
    for (name, value) in [
        ("content-type", b"text/plain".as_slice()),
        ("content-length", body.len().to_string().as_bytes()),
        ("x-testbed", b"1"),
    ] {
        let _ = headers.append(name, value);
    }
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));
    let Ok(stream) = outgoing.write() else {
        return;
    };
    // Every body here is far below the 4096 bytes one write may carry.
    let written = stream.blocking_write_and_flush(body);
    drop(stream);
    if written.is_ok() {
        let _ = OutgoingBody::finish(outgoing, None);
    }
}

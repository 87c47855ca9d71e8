//! The local adapter: `tern:llm/inference` served by tern's engine inside
//! the component, for runtimes without tern's host.
//!
//! Composed with the handler (`tern compose --adapter`), it answers every
//! inference call from a model it loads on first use:
//! - `TERN_MODEL`, a GGUF path the runtime preopened
//!   (`wasmtime serve --dir models::/models --env TERN_MODEL=/models/x.gguf`),
//!   when set; else the bundled model compiled in (feature `bundled-model`);
//! - the engine runs inline ([`Engine::inline`]): there are no threads, so
//!   reading a generation turns the scheduler (one batched step for every
//!   running sequence) until it has something to give, and its pollables
//!   are always ready;
//! - the kernels are the simd128 variant when built with
//!   `-C target-feature=+simd128` (scripts/dist does), bit-identical in
//!   their integer results to every other variant;
//! - an F16 output head is widened to F32 at load when it is small: simd128
//!   has no half conversion, and the F32 product gives the same sums;
//! - queued jobs need a host that keeps the engine between requests, so
//!   they are refused as unavailable.
//!
//! It carries the same stand-ins as the remote adapter (guest/stand-ins):
//! a key-value store in the instance's memory, settings from the
//! environment, no app database.

#[allow(clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "tern:llm/local-adapter",
        generate_all,
    });
}

#[path = "../../stand-ins/absent.rs"]
mod absent;
#[path = "../../stand-ins/memory_store.rs"]
mod memory_store;

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use bindings::exports::tern::llm::inference::{
    self as wit, Embedding, EngineStatus, Error, Event, Generation, Guest, GuestGeneration, JobInfo, Message,
    ModelInfo, Prompt, SamplingParams,
};
use bindings::wasi::clocks::monotonic_clock;
use bindings::wasi::io::poll::Pollable;
use tern_engine::gguf::GgufFile;
use tern_engine::model::LoadOptions;
use tern_engine::{Engine, EngineConfig, LoadedModel};

tern_engine::contract_conversions!(wit);

/// The bundled model, when compiled in.
#[cfg(feature = "bundled-model")]
static BUNDLED: Option<&[u8]> = Some(include_bytes!("../../../models/tern-tiny.gguf"));
#[cfg(not(feature = "bundled-model"))]
static BUNDLED: Option<&[u8]> = None;

/// KV cache for a few contexts of the bundled model; a larger model keeps
/// at least one full context whatever this says.
const KV_MEMORY: usize = 16 << 20;

/// Largest output head widened to F32 at load (the bundled model's is
/// 2 MiB; 2B-4T's would be 1.3 GB and stays F16).
const MAX_F32_HEAD: usize = 256 << 20;

struct Local;

/// The type the stand-ins implement their interfaces on.
type Adapter = Local;

/// When the instance started (uptime in the status).
static STARTED: OnceLock<Instant> = OnceLock::new();

/// The engine, loaded on first use; the reason when it cannot be.
fn engine() -> Result<&'static Engine, Error> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    STARTED.get_or_init(Instant::now);
    ENGINE.get_or_init(load).as_ref().map_err(|e| Error::Unavailable(e.clone()))
}

fn load() -> Result<Engine, String> {
    let (bytes, name, modified_at) = match std::env::var("TERN_MODEL") {
        Ok(path) => {
            let bytes = std::fs::read(&path).map_err(|e| format!("reading the model {path}: {e}"))?;
            let modified_at = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            let stem = path.rsplit('/').next().unwrap_or(&path).trim_end_matches(".gguf").to_string();
            (bytes, stem, modified_at)
        }
        Err(_) => match BUNDLED {
            Some(bytes) => (bytes.to_vec(), "tern-tiny".to_string(), 0),
            None => return Err("no model: set TERN_MODEL to a GGUF file in a preopened directory".into()),
        },
    };
    let file = GgufFile::from_bytes(bytes).map_err(|e| format!("{name}: {e}"))?;
    // simd128 converts halves in software: an F16 head that fits is
    // widened once at load, to the same values and sums.
    let head_bytes = ["output.weight", "token_embd.weight"]
        .iter()
        .find_map(|name| file.tensors.get(*name))
        .map_or(0, |t| t.n_elements() as usize * 4);
    let options = LoadOptions { f32_head: head_bytes <= MAX_F32_HEAD, kv_memory: KV_MEMORY, ..LoadOptions::default() };
    let model = LoadedModel::from_gguf(&file, None, &name, modified_at, &options)?;
    let config = EngineConfig { max_running: 4, max_queue: 16, ..EngineConfig::default() };
    Engine::inline(config, vec![model]).map_err(|e| e.to_string())
}

impl Guest for Local {
    type Generation = LocalGeneration;

    fn list_models() -> Vec<ModelInfo> {
        engine().map(|e| to_wit_models(e.models())).unwrap_or_default()
    }

    fn status() -> EngineStatus {
        let uptime_ms = STARTED.get_or_init(Instant::now).elapsed().as_millis() as u64;
        match engine() {
            Ok(e) => to_wit_status(e.status(), uptime_ms, 0),
            Err(_) => to_wit_status(Default::default(), uptime_ms, 0),
        }
    }

    fn tokenize(model: String, text: String) -> Result<Vec<u32>, Error> {
        engine()?.tokenize(&model, &text).map_err(to_wit_error)
    }

    fn detokenize(model: String, tokens: Vec<u32>) -> Result<String, Error> {
        engine()?.detokenize(&model, &tokens).map_err(to_wit_error)
    }

    fn render_chat(model: String, messages: Vec<Message>) -> Result<String, Error> {
        engine()?.render_chat(&model, &to_engine_messages(messages)).map_err(to_wit_error)
    }

    fn embed(model: String, inputs: Vec<String>) -> Result<Vec<Embedding>, Error> {
        engine()?.embed(&model, &inputs).map(to_wit_embeddings).map_err(to_wit_error)
    }

    fn generate(model: String, prompt: Prompt, params: SamplingParams) -> Result<Generation, Error> {
        let engine = engine()?;
        let generation = engine.generate(to_engine_request(model, prompt, params)).map_err(to_wit_error)?;
        Ok(Generation::new(LocalGeneration { engine, generation }))
    }

    fn submit_job(_model: String, _prompt: Prompt, _params: SamplingParams) -> Result<String, Error> {
        Err(Error::Unavailable("queued jobs need tern's own host, which keeps the engine between requests".into()))
    }

    fn job_status(_id: String) -> Option<JobInfo> {
        None
    }

    fn cancel_job(_id: String) -> Option<JobInfo> {
        None
    }
}

/// A generation of the inline engine; dropping it ends the sequence at the
/// next turn.
pub struct LocalGeneration {
    engine: &'static Engine,
    generation: tern_engine::Generation,
}

impl GuestGeneration for LocalGeneration {
    /// Always ready: [`LocalGeneration::next`] does the work itself.
    fn subscribe(&self) -> Pollable {
        monotonic_clock::subscribe_duration(0)
    }

    /// Turns the scheduler until this generation has an event.
    fn next(&self) -> Result<Event, Error> {
        loop {
            match self.generation.next().map_err(to_wit_error)? {
                tern_engine::Event::Pending if self.engine.turn() => continue,
                event => return Ok(to_wit_event(event)),
            }
        }
    }
}

// Natively (unit tests) the exported symbols' names are not valid linker
// symbols; only a wasm build exports.
#[cfg(target_arch = "wasm32")]
bindings::export!(Local with_types_in bindings);

//! `tern`: serves ternary (BitNet b1.58) language models over HTTP through a
//! WebAssembly handler component, or generates from the command line.
//!
//! 1. `tern serve` loads the model on a background thread, compiles the
//!    handler (embedded at build time, or `--component FILE`), and answers
//!    every request with a fresh instance of it (see `server`).
//! 2. `tern generate` runs the same engine without HTTP and streams to stdout.

mod bench;
mod bindings;
mod inference;
mod server;
mod state;
mod store;
mod synth;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tern_engine::{Engine, EngineConfig, Event, GenerateRequest, Message, Prompt, SamplingParams};

/// The handler component built from guest/handler by build.rs.
static BUILT_HANDLER: &[u8] = include_bytes!(env!("TERN_HANDLER_WASM"));

/// The bundled model, looked for in the working directory first, then in the
/// source tree this binary was built from.
const BUNDLED_MODEL: &str = "models/tern-tiny.gguf";

#[derive(Parser)]
#[command(name = "tern", version, about = "Serve ternary (BitNet b1.58) language models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the model over HTTP (OpenAI-compatible API and more).
    Serve(ServeArgs),
    /// Generate text from a prompt and stream it to stdout.
    Generate(GenerateArgs),
    /// Measure prefill and decode speed against the memory bandwidth.
    Bench(bench::BenchArgs),
    /// Write a GGUF with a known model's shapes and random ternary weights (for benchmarks).
    Synth(synth::SynthArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// GGUF model file (default: the bundled model).
    #[arg(long, env = "TERN_MODEL")]
    model: Option<PathBuf>,
    /// A HF tokenizer.json to use instead of the tokenizer in the GGUF.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Threads each matrix product is split over (default: one per core).
    #[arg(long, short = 't', env = "TERN_THREADS")]
    threads: Option<usize>,
    /// Convert a dense (F16) output head to Q8_0 at load: fewer bytes per
    /// token, faster decode, slightly different logits.
    #[arg(long)]
    q8_0_head: bool,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Handler component (default: the one built into this binary).
    #[arg(long, env = "TERN_COMPONENT")]
    component: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "TERN_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Sequences decoded at the same time; more wait in the queue.
    #[arg(long, default_value_t = 16)]
    max_running: usize,
    /// Sequences allowed to wait; more are refused with 429.
    #[arg(long, default_value_t = 64)]
    max_queue: usize,
    /// KV cache per model, in MiB (at least one full context is kept).
    #[arg(long, default_value_t = 2048)]
    kv_memory_mib: usize,
    /// Tokens one scheduler step runs: every decoding sequence's next
    /// token plus prompt chunks.
    #[arg(long, default_value_t = 64)]
    step_tokens: usize,
    /// Most prompt tokens per step of a prompt that cannot finish within the
    /// step: smaller keeps other sequences' tokens coming while a long
    /// prompt is read.
    #[arg(long, default_value_t = 16)]
    prefill_chunk: usize,
    /// Seconds a finished `/api/chat-queue` job's result is kept.
    #[arg(long, default_value_t = 600)]
    job_ttl: u64,
    /// Most prompts one `POST /batch` may carry.
    #[arg(long, default_value_t = 32)]
    max_batch: usize,
    /// Memory of the response cache (the host's `wasi:keyvalue` store), in
    /// MiB; the least recently used answers are evicted beyond it.
    #[arg(long, default_value_t = 64)]
    cache_mib: u64,
    /// Seconds a cached answer stays valid.
    #[arg(long, default_value_t = 3600)]
    cache_ttl: u64,
    /// Origin allowed to call the API from a browser (CORS); repeat for
    /// several, `*` for any. Default: same-origin only.
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// Seconds a request may take, queueing and generation included.
    #[arg(long, default_value_t = 600)]
    request_timeout: u64,
    /// Linear memory one request's handler instance may use, in MiB.
    #[arg(long, default_value_t = 64)]
    instance_memory_mib: usize,
    /// Handler instances alive at once.
    #[arg(long, default_value_t = 256)]
    max_instances: u32,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(long, short)]
    prompt: String,
    /// Treat the prompt as a user message and apply the chat template.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate (0: until the context is full).
    #[arg(long, short = 'n', default_value_t = 128)]
    max_tokens: u32,
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Seed of the sampler (default: a fresh one).
    #[arg(long)]
    seed: Option<u64>,
    /// Stop at this string (repeatable).
    #[arg(long)]
    stop: Vec<String>,
}

fn model_path(args: &ModelArgs) -> PathBuf {
    if let Some(p) = &args.model {
        return p.clone();
    }
    let local = PathBuf::from(BUNDLED_MODEL);
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(BUNDLED_MODEL)
}

/// Threads asked for, or one per core; applied to the kernels' pool.
fn apply_threads(args: &ModelArgs) -> usize {
    let wanted = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tern_engine::set_threads(wanted)
}

fn engine_config(args: &ModelArgs) -> EngineConfig {
    apply_threads(args);
    EngineConfig {
        models: vec![model_path(args)],
        tokenizer: args.tokenizer.clone(),
        q8_0_head: args.q8_0_head,
        ..Default::default()
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args),
        Command::Generate(args) => generate(args),
        Command::Synth(args) => synth::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = engine_config(&args.model);
    config.max_running = args.max_running;
    config.max_queue = args.max_queue;
    config.default_timeout = Some(Duration::from_secs(args.request_timeout));
    config.kv_memory = args.kv_memory_mib << 20;
    config.step_tokens = args.step_tokens;
    config.prefill_chunk = args.prefill_chunk;
    config.job_ttl = Duration::from_secs(args.job_ttl);
    let model = config.models[0].clone();
    anyhow::ensure!(model.exists(), "model file {} not found (give one with --model)", model.display());
    let engine = Engine::start(config);

    let limits = server::ServeLimits {
        memory_bytes: args.instance_memory_mib << 20,
        request_timeout: Duration::from_secs(args.request_timeout),
        max_instances: args.max_instances,
        guest_env: vec![
            ("TERN_MAX_BATCH".into(), args.max_batch.to_string()),
            ("TERN_CACHE_TTL".into(), args.cache_ttl.to_string()),
            ("TERN_CORS_ORIGINS".into(), args.cors_origins.join(",")),
        ],
    };
    let store = Arc::new(store::KvStore::new(args.cache_mib << 20));
    let wasm_engine = server::wasm_engine(&limits)?;
    let wasm = match &args.component {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => BUILT_HANDLER.to_vec(),
    };
    let started = std::time::Instant::now();
    let handler = Arc::new(server::Handler::new(&wasm_engine, &wasm, engine, store, limits)?);
    tracing::info!(ms = started.elapsed().as_millis() as u64, bytes = wasm.len(), "handler compiled");
    server::start_epoch_ticker(&wasm_engine);

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = server::bind(args.addr).await?;
        tracing::info!(addr = %listener.local_addr()?, model = %model.display(), "listening");
        tokio::select! {
            r = server::serve(listener, handler) => r,
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; exiting");
                Ok(())
            }
        }
    })
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let engine = Engine::load(engine_config(&args.model))?;
    let model = engine.models().into_iter().next().context("no model loaded")?;
    let prompt = if args.chat {
        Prompt::Chat(vec![Message { role: "user".into(), content: args.prompt.clone() }])
    } else {
        Prompt::Text(args.prompt.clone())
    };
    let generation = engine.generate(GenerateRequest {
        model: model.id,
        prompt,
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repeat_penalty: args.repeat_penalty,
            repeat_last_n: 64,
            seed: 0,
            ..Default::default()
        },
        seed: args.seed,
        stop: args.stop,
        timeout: None,
        priority: tern_engine::Priority::Interactive,
    })?;
    let mut out = std::io::stdout().lock();
    if !args.chat {
        write!(out, "{}", args.prompt)?;
    }
    loop {
        match generation.next()? {
            Event::Pending => generation.wait(),
            Event::Text(t) => {
                write!(out, "{t}")?;
                out.flush()?;
            }
            Event::Finished(f) => {
                writeln!(out)?;
                let u = f.usage;
                let tps = if u.generation_ms > 0.0 { u.completion_tokens as f64 * 1e3 / u.generation_ms } else { 0.0 };
                eprintln!(
                    "[{:?}] prompt {} tokens in {:.1} ms, generated {} tokens in {:.1} ms ({tps:.1} tok/s)",
                    f.reason, u.prompt_tokens, u.prompt_ms, u.completion_tokens, u.generation_ms
                );
                return Ok(());
            }
        }
    }
}

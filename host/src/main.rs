//! `tern`: serves ternary (BitNet b1.58) language models over HTTP through a
//! WebAssembly handler component, or generates from the command line.
//!
//! 1. `tern serve` loads the model on a background thread, compiles the
//!    handler (embedded at build time, or `--component FILE`), and answers
//!    every request with a fresh instance of it (see `server`).
//! 2. `tern generate` runs the same engine without HTTP and streams to stdout.

mod admin;
mod auth;
mod bench;
mod bindings;
mod component;
mod compress;
mod config;
mod inference;
mod metrics;
mod server;
mod state;
mod store;
mod synth;

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tern_engine::{Engine, EngineConfig, EngineError, Event, GenerateRequest, Message, Prompt, SamplingParams};

/// The handler component built from guest/handler by build.rs.
static BUILT_HANDLER: &[u8] = include_bytes!(env!("TERN_HANDLER_WASM"));

/// The bundled model, looked for in the working directory first, then in the
/// source tree this binary was built from.
const BUNDLED_MODEL: &str = "models/tern-tiny.gguf";

/// Task polls between tokio's checks for I/O and for work from other threads.
const EVENT_INTERVAL: u32 = 4;

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
    /// Show the settings `tern serve` would use (flags, TERN_* variables, tern.toml).
    Config(ConfigArgs),
}

#[derive(Args)]
struct ModelArgs {
    /// GGUF model file (default: the bundled model).
    #[arg(long, env = "TERN_MODEL", help_heading = "model")]
    model: Option<PathBuf>,
    /// A HF tokenizer.json to use instead of the tokenizer in the GGUF.
    #[arg(long, env = "TERN_TOKENIZER", help_heading = "model")]
    tokenizer: Option<PathBuf>,
    /// Threads each matrix product is split over (default: one per core).
    #[arg(long, short = 't', env = "TERN_THREADS", help_heading = "model")]
    threads: Option<usize>,
    /// Convert a dense (F16) output head to Q8_0 at load: fewer bytes per
    /// token, faster decode, slightly different logits.
    #[arg(long, env = "TERN_Q8_0_HEAD", help_heading = "model")]
    q8_0_head: bool,
}

/// `tern serve`'s settings. Each flag's help heading is its `tern.toml`
/// section; each has a `TERN_*` variable.
#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Settings file (default: ./tern.toml when it exists).
    #[arg(long, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (`PORT` in the environment sets just the port).
    #[arg(long, env = "TERN_ADDR", default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Handler component file (default: the one built into this binary);
    /// watched, and reloaded when it changes or on SIGHUP.
    #[arg(long, env = "TERN_COMPONENT")]
    component: Option<PathBuf>,
    /// Folder of compiled components, keyed by content and engine, so a
    /// restart skips compilation (default: ~/.cache/tern/components).
    #[arg(long, env = "TERN_COMPILE_CACHE")]
    compile_cache: Option<PathBuf>,
    /// Compile the component at every start, without the disk cache.
    #[arg(long, env = "TERN_NO_COMPILE_CACHE")]
    no_compile_cache: bool,
    /// Requests one handler instance answers before it is dropped; 1 gives
    /// every request a fresh instance. Reuse skips instantiation, but a
    /// request can then see what an earlier one left in the instance's memory.
    #[arg(long, env = "TERN_REUSE_INSTANCES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    reuse_instances: u32,
    /// Handler instances alive at once.
    #[arg(long, env = "TERN_MAX_INSTANCES", default_value_t = 256)]
    max_instances: u32,
    /// Linear memory one request's handler instance may use, in MiB.
    #[arg(long, env = "TERN_INSTANCE_MEMORY_MIB", default_value_t = 64)]
    instance_memory_mib: usize,
    /// Seconds in-flight requests get to finish after SIGTERM or SIGINT;
    /// then their generations end with a final error.
    #[arg(long, env = "TERN_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,
    /// Log lines as `text` or `json` (one object per line).
    #[arg(long, env = "TERN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Sequences decoded at the same time; more wait in the queue.
    #[arg(long, env = "TERN_MAX_RUNNING", default_value_t = 16, help_heading = "engine")]
    max_running: usize,
    /// KV cache per model, in MiB (at least one full context is kept).
    #[arg(long, env = "TERN_KV_MEMORY_MIB", default_value_t = 2048, help_heading = "engine")]
    kv_memory_mib: usize,
    /// Tokens one scheduler step runs: every decoding sequence's next
    /// token plus prompt chunks.
    #[arg(long, env = "TERN_STEP_TOKENS", default_value_t = 64, help_heading = "engine")]
    step_tokens: usize,
    /// Most prompt tokens per step of a prompt that cannot finish within the
    /// step: smaller keeps other sequences' tokens coming while a long
    /// prompt is read.
    #[arg(long, env = "TERN_PREFILL_CHUNK", default_value_t = 16, help_heading = "engine")]
    prefill_chunk: usize,
    /// Seconds a request may take, queueing and generation included; also
    /// the handler instance's deadline.
    #[arg(long, env = "TERN_REQUEST_TIMEOUT", default_value_t = 600, help_heading = "engine")]
    request_timeout: u64,
    /// Sequences allowed to wait; more are refused with 429.
    #[arg(long, env = "TERN_MAX_QUEUE", default_value_t = 64, help_heading = "queue")]
    max_queue: usize,
    /// Seconds a finished `/api/chat-queue` job's result is kept.
    #[arg(long, env = "TERN_JOB_TTL", default_value_t = 600, help_heading = "queue")]
    job_ttl: u64,
    /// Most prompts one `POST /batch` may carry.
    #[arg(long, env = "TERN_MAX_BATCH", default_value_t = 32, help_heading = "batch")]
    max_batch: usize,
    /// Memory of the response cache (the host's `wasi:keyvalue` store), in
    /// MiB; the least recently used answers are evicted beyond it.
    #[arg(long, env = "TERN_CACHE_MIB", default_value_t = 64, help_heading = "cache")]
    cache_mib: u64,
    /// Seconds a cached answer stays valid.
    #[arg(long, env = "TERN_CACHE_TTL", default_value_t = 3600, help_heading = "cache")]
    cache_ttl: u64,
    /// Origin allowed to call the API from a browser (CORS); repeat for
    /// several, `*` for any. Default: same-origin only.
    #[arg(long = "cors-origin", env = "TERN_CORS_ORIGIN", value_delimiter = ',', help_heading = "cors")]
    cors_origins: Vec<String>,
    /// Seconds a client has to send a request's headers.
    #[arg(long, env = "TERN_HEADER_TIMEOUT", default_value_t = 10, help_heading = "limits")]
    header_timeout: u64,
    /// Seconds an idle kept-alive connection stays open.
    #[arg(long, env = "TERN_KEEP_ALIVE", default_value_t = 30, help_heading = "limits")]
    keep_alive: u64,
    /// Largest request head in bytes; larger ones get 431.
    #[arg(long, env = "TERN_MAX_HEADER_BYTES", default_value_t = 16384, help_heading = "limits")]
    max_header_bytes: usize,
    /// Largest request body in KiB (by Content-Length); larger ones get 413.
    #[arg(long, env = "TERN_MAX_BODY_KIB", default_value_t = 1024, help_heading = "limits")]
    max_body_kib: u64,
    /// Client connections open at once; more wait to be accepted.
    #[arg(long, env = "TERN_MAX_CONNECTIONS", default_value_t = 1024, help_heading = "limits")]
    max_connections: usize,
    /// Gzip whole (non-streamed) textual responses of 1 KiB or more for
    /// clients that send `Accept-Encoding: gzip`.
    #[arg(long, env = "TERN_COMPRESS", help_heading = "limits")]
    compress: bool,
    /// Largest component `POST /admin/component` accepts, in MiB.
    #[arg(long, env = "TERN_MAX_COMPONENT_MIB", default_value_t = 64, help_heading = "limits")]
    max_component_mib: usize,
    /// API key every request must carry (Authorization: Bearer KEY), except
    /// /health, /ready and the chat page; repeat for several.
    #[arg(long, env = "TERN_API_KEY", value_delimiter = ',', help_heading = "auth")]
    api_key: Vec<String>,
    /// File of API keys, one per line (`#` comments).
    #[arg(long, env = "TERN_API_KEY_FILE", help_heading = "auth")]
    api_key_file: Vec<PathBuf>,
    /// Key for `/admin/component` (upload and inspect the handler); the
    /// admin API is off without one.
    #[arg(long, env = "TERN_ADMIN_KEY", value_delimiter = ',', help_heading = "auth")]
    admin_key: Vec<String>,
    /// File of admin keys, one per line (`#` comments).
    #[arg(long, env = "TERN_ADMIN_KEY_FILE", help_heading = "auth")]
    admin_key_file: Vec<PathBuf>,
}

#[derive(Args)]
struct ConfigArgs {
    /// Print the effective settings as a tern.toml, with where each came from.
    #[arg(long)]
    print: bool,
    #[command(flatten)]
    serve: ServeArgs,
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
    metrics::mark_start();
    let (matches, from_file) = config::parse(Cli::command(), std::env::args_os().collect())?;
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let json_logs = matches!(&cli.command, Command::Serve(a) if a.log_format == "json");
    init_logging(json_logs);
    match cli.command {
        Command::Serve(args) => {
            let sub = matches.subcommand_matches("serve").context("serve matches")?;
            tracing::info!("settings:\n{}", config::render(&serve_spec("serve"), sub, &from_file).trim_end());
            serve(args, sub)
        }
        Command::Config(args) => {
            let sub = matches.subcommand_matches("config").context("config matches")?;
            if args.print {
                print!("{}", config::render(&serve_spec("config"), sub, &from_file));
            } else {
                eprintln!("nothing to do; `tern config --print` shows the settings");
            }
            Ok(())
        }
        Command::Generate(args) => generate(args),
        Command::Synth(args) => synth::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

fn serve_spec(name: &str) -> clap::Command {
    Cli::command().find_subcommand(name).expect("the subcommand exists").clone()
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,wasmtime=warn,cranelift=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    } else {
        builder.init();
    }
}

/// `--addr`, with the port from `PORT` when the address was not given as a
/// flag or `TERN_ADDR` (the convention of hosting platforms).
fn listen_addr(args: &ServeArgs, matches: &clap::ArgMatches) -> anyhow::Result<SocketAddr> {
    let mut addr = args.addr;
    let explicit = matches!(
        matches.value_source("addr"),
        Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
    );
    if let (false, Ok(port)) = (explicit, std::env::var("PORT")) {
        addr.set_port(port.trim().parse().with_context(|| format!("PORT={port} is not a port number"))?);
    }
    Ok(addr)
}

fn serve(args: ServeArgs, matches: &clap::ArgMatches) -> anyhow::Result<()> {
    let addr = listen_addr(&args, matches)?;
    let keys = auth::Keys::load(&args.api_key, &args.api_key_file)?;
    let admin_keys = auth::Keys::load(&args.admin_key, &args.admin_key_file)?;
    let (server_keys, admin_on) = (keys.len(), !admin_keys.is_empty());
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

    let settings = server::Settings {
        memory_bytes: args.instance_memory_mib << 20,
        request_timeout: Duration::from_secs(args.request_timeout),
        max_instances: args.max_instances,
        reuse_instances: args.reuse_instances,
        guest_env: vec![
            ("TERN_MAX_BATCH".into(), args.max_batch.to_string()),
            ("TERN_CACHE_TTL".into(), args.cache_ttl.to_string()),
            ("TERN_CORS_ORIGINS".into(), args.cors_origins.join(",")),
        ],
        header_timeout: Duration::from_secs(args.header_timeout),
        keep_alive: Duration::from_secs(args.keep_alive),
        max_header_bytes: args.max_header_bytes,
        max_body_bytes: args.max_body_kib << 10,
        max_connections: args.max_connections,
        max_component_bytes: args.max_component_mib << 20,
        compress: args.compress,
    };
    let store = Arc::new(store::KvStore::new(args.cache_mib << 20));
    let metrics = Arc::new(metrics::HostMetrics::default());
    let wasm_engine = server::wasm_engine(&settings)?;
    let (wasm, source) = match &args.component {
        Some(p) => (std::fs::read(p).with_context(|| format!("reading {}", p.display()))?, p.display().to_string()),
        None => (BUILT_HANDLER.to_vec(), "built-in".to_string()),
    };
    let cache_dir =
        if args.no_compile_cache { None } else { args.compile_cache.clone().or_else(component::default_cache_dir) };
    let components =
        Arc::new(component::Components::new(wasm_engine.clone(), cache_dir, &wasm, &source, metrics.clone())?);
    server::start_epoch_ticker(&wasm_engine);
    let server =
        Arc::new(server::Server::new(components.clone(), engine.clone(), store, settings, keys, admin_keys, metrics));

    // A guest that computes yields at every epoch tick, but tokio wakes a
    // yielding task again without looking for I/O; look for it every few
    // polls so new connections are accepted while guests are busy.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .event_interval(EVENT_INTERVAL)
        .global_queue_interval(EVENT_INTERVAL)
        .build()?;
    runtime.block_on(async move {
        let listener = server::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr()?, model = %model.display(), api_keys = server_keys,
            admin = admin_on, "listening");
        if let Some(path) = args.component.clone() {
            tokio::spawn(component::watch(components, path));
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let serving = tokio::spawn(server.clone().serve(listener, stopped));
        let signal = shutdown_signal().await;
        let in_flight = server.metrics.in_flight.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(signal, in_flight, grace_s = args.shutdown_grace, "shutting down: no new connections");
        let _ = stop.send(true);
        let _ = serving.await;
        if !server.drain(Duration::from_secs(args.shutdown_grace)).await {
            tracing::warn!("grace period over; ending the remaining generations with an error");
            engine.abort_all(EngineError::Overloaded("the server is shutting down".into()));
            if !server.drain(Duration::from_secs(5)).await {
                tracing::warn!("requests still running at exit");
            }
        }
        if !server.connections_closed(Duration::from_secs(2)).await {
            tracing::warn!("connections still open at exit");
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// Waits for SIGTERM or SIGINT and names it.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
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

//! The `tern` command line: every subcommand's flags, and how they become
//! the engine's and the tools' settings. Each `serve` flag's help heading is
//! its `tern.toml` section (see `config`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use tern_engine::gguf::GgmlType;
use tern_engine::model::Device;
use tern_engine::EngineConfig;
use tern_tools::bench;
use tern_tools::synth::{self, SynthSpec};

/// The bundled model, looked for in the working directory first, then in the
/// source tree this binary was built from.
const BUNDLED_MODEL: &str = "models/tern-tiny.gguf";

#[derive(Parser)]
#[command(name = "tern", version, about = "Serve ternary (BitNet b1.58) language models")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the model over HTTP (OpenAI-compatible API and more).
    Serve(ServeArgs),
    /// Generate text from a prompt and stream it to stdout.
    Generate(GenerateArgs),
    /// Measure prefill and decode speed against the memory bandwidth.
    Bench(BenchArgs),
    /// Write a GGUF with a known model's shapes and random ternary weights (for benchmarks).
    Synth(SynthArgs),
    /// Show the settings `tern serve` would use (flags, TERN_* variables, tern.toml).
    Config(ConfigArgs),
    /// Compose the handler with the remote adapter into one component for
    /// stock wasi:http runtimes (`wasmtime serve -Scli`, jco).
    Compose(crate::compose::ComposeArgs),
}

#[derive(Args)]
pub struct ModelArgs {
    /// GGUF model file (default: the bundled model).
    #[arg(long, env = "TERN_MODEL", help_heading = "model")]
    pub model: Option<PathBuf>,
    /// A HF tokenizer.json to use instead of the tokenizer in the GGUF.
    #[arg(long, env = "TERN_TOKENIZER", help_heading = "model")]
    pub tokenizer: Option<PathBuf>,
    /// Threads each matrix product is split over (default: one per core).
    #[arg(long, short = 't', env = "TERN_THREADS", help_heading = "model")]
    pub threads: Option<usize>,
    /// Convert a dense (F16) output head to Q8_0 at load: fewer bytes per
    /// token, faster decode, slightly different logits.
    #[arg(long, env = "TERN_Q8_0_HEAD", help_heading = "model")]
    pub q8_0_head: bool,
    /// Where the model runs: `cpu`, `gpu` (any Vulkan, Metal or DX12
    /// adapter, software ones such as llvmpipe included; an error without
    /// one), or `auto` (a real GPU when there is one, else the CPU).
    #[arg(long, env = "TERN_DEVICE", default_value = "cpu", value_parser = ["cpu", "gpu", "auto"], help_heading = "model")]
    pub device: String,
}

impl ModelArgs {
    /// The `--device` chosen.
    pub fn device(&self) -> Device {
        self.device.parse().expect("clap checked the value")
    }
}

/// `tern serve`'s settings. Each flag's help heading is its `tern.toml`
/// section; each has a `TERN_*` variable.
#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Settings file (default: ./tern.toml when it exists).
    #[arg(long, env = "TERN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (`PORT` in the environment sets just the port).
    #[arg(long, env = "TERN_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Handler component file (default: the one built into this binary);
    /// watched, and reloaded when it changes or on SIGHUP.
    #[arg(long, env = "TERN_COMPONENT")]
    pub component: Option<PathBuf>,
    /// Folder of compiled components, keyed by content and engine, so a
    /// restart skips compilation (default: ~/.cache/tern/components).
    #[arg(long, env = "TERN_COMPILE_CACHE")]
    pub compile_cache: Option<PathBuf>,
    /// Compile the component at every start, without the disk cache.
    #[arg(long, env = "TERN_NO_COMPILE_CACHE")]
    pub no_compile_cache: bool,
    /// Requests one handler instance answers before it is dropped; 1 gives
    /// every request a fresh instance. Reuse skips instantiation, but a
    /// request can then see what an earlier one left in the instance's memory.
    #[arg(long, env = "TERN_REUSE_INSTANCES", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub reuse_instances: u32,
    /// Handler instances alive at once.
    #[arg(long, env = "TERN_MAX_INSTANCES", default_value_t = 256)]
    pub max_instances: u32,
    /// Linear memory one request's handler instance may use, in MiB.
    #[arg(long, env = "TERN_INSTANCE_MEMORY_MIB", default_value_t = 64)]
    pub instance_memory_mib: usize,
    /// Seconds in-flight requests get to finish after SIGTERM or SIGINT;
    /// then their generations end with a final error.
    #[arg(long, env = "TERN_SHUTDOWN_GRACE", default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Log lines as `text` or `json` (one object per line).
    #[arg(long, env = "TERN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Sequences decoded at the same time; more wait in the queue.
    #[arg(long, env = "TERN_MAX_RUNNING", default_value_t = 16, help_heading = "engine")]
    pub max_running: usize,
    /// KV cache per model, in MiB (at least one full context is kept).
    #[arg(long, env = "TERN_KV_MEMORY_MIB", default_value_t = 2048, help_heading = "engine")]
    pub kv_memory_mib: usize,
    /// Touch every page of the KV cache at load, as llama.cpp clears its
    /// cache at start: resident memory is the whole cache at once, and no
    /// request pays a first write's page fault later.
    #[arg(long, env = "TERN_KV_PREFAULT", help_heading = "engine")]
    pub kv_prefault: bool,
    /// Tokens one scheduler step runs: every decoding sequence's next
    /// token plus prompt chunks.
    #[arg(long, env = "TERN_STEP_TOKENS", default_value_t = 64, help_heading = "engine")]
    pub step_tokens: usize,
    /// Most prompt tokens per step of a prompt that cannot finish within the
    /// step: smaller keeps other sequences' tokens coming while a long
    /// prompt is read.
    #[arg(long, env = "TERN_PREFILL_CHUNK", default_value_t = 16, help_heading = "engine")]
    pub prefill_chunk: usize,
    /// Seconds a request may take, queueing and generation included; also
    /// the handler instance's deadline.
    #[arg(long, env = "TERN_REQUEST_TIMEOUT", default_value_t = 600, help_heading = "engine")]
    pub request_timeout: u64,
    /// Sequences allowed to wait; more are refused with 429.
    #[arg(long, env = "TERN_MAX_QUEUE", default_value_t = 64, help_heading = "queue")]
    pub max_queue: usize,
    /// Seconds a finished `/api/chat-queue` job's result is kept.
    #[arg(long, env = "TERN_JOB_TTL", default_value_t = 600, help_heading = "queue")]
    pub job_ttl: u64,
    /// Most prompts one `POST /batch` may carry.
    #[arg(long, env = "TERN_MAX_BATCH", default_value_t = 32, help_heading = "batch")]
    pub max_batch: usize,
    /// Memory of the response cache (the host's `wasi:keyvalue` store), in
    /// MiB; the least recently used answers are evicted beyond it.
    #[arg(long, env = "TERN_CACHE_MIB", default_value_t = 64, help_heading = "cache")]
    pub cache_mib: u64,
    /// Seconds a cached answer stays valid.
    #[arg(long, env = "TERN_CACHE_TTL", default_value_t = 3600, help_heading = "cache")]
    pub cache_ttl: u64,
    /// Where the `wasi:keyvalue` store lives: `memory` (this server's own,
    /// `--cache-mib` of it) or a `redis://` URL that replicas share, with
    /// the response cache, its counters and the job table.
    #[arg(long, env = "TERN_KEYVALUE", default_value = "memory", help_heading = "cache")]
    pub keyvalue: String,
    /// Origin allowed to call the API from a browser (CORS); repeat for
    /// several, `*` for any. Default: same-origin only.
    #[arg(long = "cors-origin", env = "TERN_CORS_ORIGIN", value_delimiter = ',', help_heading = "cors")]
    pub cors_origins: Vec<String>,
    /// Another name for the model (llama-server's `--alias`), listed with it
    /// and accepted in requests; repeat (or comma-separate) for several.
    #[arg(long = "alias", env = "TERN_ALIAS", value_delimiter = ',', help_heading = "model")]
    pub aliases: Vec<String>,
    /// Answer requests naming an unknown model with the one served, as
    /// llama-server does; without it they get 404 `model_not_found`.
    #[arg(long, env = "TERN_ACCEPT_ANY_MODEL", help_heading = "model")]
    pub accept_any_model: bool,
    /// Seconds a client has to send a request's headers.
    #[arg(long, env = "TERN_HEADER_TIMEOUT", default_value_t = 10, help_heading = "limits")]
    pub header_timeout: u64,
    /// Seconds a client has to send a request's whole body once its headers
    /// are in; a slower one gets 408. No handler instance is taken until
    /// the body is there.
    #[arg(long, env = "TERN_BODY_TIMEOUT", default_value_t = 30, help_heading = "limits")]
    pub body_timeout: u64,
    /// Seconds an idle kept-alive connection stays open.
    #[arg(long, env = "TERN_KEEP_ALIVE", default_value_t = 30, help_heading = "limits")]
    pub keep_alive: u64,
    /// Largest request head in bytes; larger ones get 431 (any number of
    /// header fields fits, as long as the head does).
    #[arg(long, env = "TERN_MAX_HEADER_BYTES", default_value_t = 16384, help_heading = "limits")]
    pub max_header_bytes: usize,
    /// Largest request body in KiB, declared or sent; larger ones get 413.
    #[arg(long, env = "TERN_MAX_BODY_KIB", default_value_t = 1024, help_heading = "limits")]
    pub max_body_kib: u64,
    /// Client connections open at once; more wait to be accepted.
    #[arg(long, env = "TERN_MAX_CONNECTIONS", default_value_t = 1024, help_heading = "limits")]
    pub max_connections: usize,
    /// Gzip whole (non-streamed) textual responses of 1 KiB or more for
    /// clients that send `Accept-Encoding: gzip`.
    #[arg(long, env = "TERN_COMPRESS", help_heading = "limits")]
    pub compress: bool,
    /// Load balancer whose `X-Forwarded-For` names the client (an address
    /// or a network such as `10.0.0.0/8`); repeat for several. Sign-in
    /// limits count per client address, so behind a balancer set this.
    #[arg(long = "trusted-proxy", env = "TERN_TRUSTED_PROXY", value_delimiter = ',', help_heading = "limits")]
    pub trusted_proxies: Vec<String>,
    /// Largest component `POST /admin/component` accepts, in MiB.
    #[arg(long, env = "TERN_MAX_COMPONENT_MIB", default_value_t = 64, help_heading = "limits")]
    pub max_component_mib: usize,
    /// API key every request must carry (Authorization: Bearer KEY), except
    /// /health, /ready and the chat page; repeat for several.
    #[arg(long, env = "TERN_API_KEY", value_delimiter = ',', help_heading = "auth")]
    pub api_key: Vec<String>,
    /// File of API keys, one per line (`#` comments).
    #[arg(long, env = "TERN_API_KEY_FILE", help_heading = "auth")]
    pub api_key_file: Vec<PathBuf>,
    /// Key for `/admin/component` (upload and inspect the handler); the
    /// admin API is off without one.
    #[arg(long, env = "TERN_ADMIN_KEY", value_delimiter = ',', help_heading = "auth")]
    pub admin_key: Vec<String>,
    /// File of admin keys, one per line (`#` comments).
    #[arg(long, env = "TERN_ADMIN_KEY_FILE", help_heading = "auth")]
    pub admin_key_file: Vec<PathBuf>,
    #[command(flatten)]
    pub app: AppArgs,
}

/// The app layer: accounts, chats and files.
#[derive(Args, Clone)]
pub struct AppArgs {
    /// Folder of the SQLite database (`tern.db`) and the generated sign-in
    /// secret (`jwt-secret`); created when missing.
    #[arg(long, env = "TERN_DATA_DIR", help_heading = "app")]
    pub data_dir: Option<PathBuf>,
    /// PostgreSQL instead of SQLite: `postgres://user:password@host/db` or
    /// `postgres://user@/db?host=/socket/dir`.
    #[arg(long, env = "TERN_DATABASE_URL", help_heading = "app")]
    pub database_url: Option<String>,
    /// Connections to PostgreSQL held at once.
    #[arg(long, env = "TERN_DATABASE_CONNECTIONS", default_value_t = 16, help_heading = "app")]
    pub database_connections: usize,
    /// Secret that signs sign-in tokens (HS256); without one, a random
    /// secret is generated once and kept in the data folder. Replicas
    /// sharing a database must share it.
    #[arg(long, env = "TERN_JWT_SECRET", help_heading = "app")]
    pub jwt_secret: Option<String>,
    /// Hours a sign-in token stays valid.
    #[arg(long, env = "TERN_SESSION_HOURS", default_value_t = 168, help_heading = "app")]
    pub session_hours: u64,
    /// Largest file `POST /api/v1/files/` accepts, in MiB (413 beyond).
    #[arg(long, env = "TERN_MAX_UPLOAD_MIB", default_value_t = 25, help_heading = "app")]
    pub max_upload_mib: u64,
    /// OpenAI-compatible server that answers `/api/v1/images/generations`
    /// and `/api/v1/audio/*` (e.g. `https://api.openai.com/v1`); without
    /// one those routes answer 503.
    #[arg(long, env = "TERN_MEDIA_UPSTREAM", help_heading = "app")]
    pub media_upstream: Option<String>,
    /// Bearer key sent to `--media-upstream`.
    #[arg(long, env = "TERN_MEDIA_UPSTREAM_KEY", help_heading = "app")]
    pub media_upstream_key: Option<String>,
    /// Folder of Open WebUI's built web frontend (`scripts/fetch-webui`
    /// fetches it): served at `/` instead of tern's own chat page.
    #[arg(long, env = "TERN_WEBUI", help_heading = "app")]
    pub webui: Option<PathBuf>,
}

#[derive(Args)]
pub struct ConfigArgs {
    /// Print the effective settings as a tern.toml, with where each came from.
    #[arg(long)]
    pub print: bool,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt.
    #[arg(long, short)]
    pub prompt: String,
    /// Treat the prompt as a user message and apply the chat template.
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate (0: until the context is full).
    #[arg(long, short = 'n', default_value_t = 128)]
    pub max_tokens: u32,
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Seed of the sampler (default: a fresh one).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop at this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
}

/// The model file `args` names, else the bundled one.
pub fn model_path(args: &ModelArgs) -> PathBuf {
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
pub fn apply_threads(args: &ModelArgs) -> usize {
    let wanted = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    tern_engine::set_threads(wanted)
}

/// The engine's settings for the model `args` names (the threads are
/// [`apply_threads`]'s).
pub fn engine_config(args: &ModelArgs) -> EngineConfig {
    EngineConfig {
        models: vec![model_path(args)],
        tokenizer: args.tokenizer.clone(),
        q8_0_head: args.q8_0_head,
        device: args.device(),
        ..Default::default()
    }
}

/// `tern bench`'s flags.
#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt length of the prefill test.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated one at a time in the decode test.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Positions already in the cache when the decode test starts.
    #[arg(long, default_value_t = 0)]
    pub depth: usize,
    /// Repetitions; the figures are their mean.
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Size of the buffer the read bandwidth is measured on, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub bandwidth_mib: usize,
    /// Benchmark the ternary products on 2B-4T's shapes instead of a model.
    #[arg(long)]
    pub kernels: bool,
    /// Serve this many concurrent streams through the engine's scheduler,
    /// each `--prompt-tokens` long and `--decode-tokens` generated, e.g.
    /// `1,4,16`; ratios are against the first count.
    #[arg(long, value_delimiter = ',')]
    pub concurrency: Vec<usize>,
    /// With `--concurrency`: also time the first token of short prompts
    /// arriving while a prompt of this many tokens is read, against idle.
    #[arg(long)]
    pub ttft_behind: Option<usize>,
    /// With `--concurrency`: most prompt tokens of one sequence per step
    /// (as `tern serve --prefill-chunk`).
    #[arg(long, default_value_t = 16)]
    pub prefill_chunk: usize,
    /// Time what constrained generation adds per token (the allowed-token
    /// sets of a JSON Schema, new and cached) against a decode step.
    #[arg(long)]
    pub grammar: bool,
    /// KV cache of the engine under test, in MiB (as `tern serve
    /// --kv-memory-mib`).
    #[arg(long, default_value_t = 2048)]
    pub kv_memory_mib: usize,
    /// Touch the KV cache's pages at load (as `tern serve --kv-prefault`),
    /// so the timed run pays no first-write page faults, as llama.cpp's
    /// benchmarks clear their cache before timing.
    #[arg(long)]
    pub kv_prefault: bool,
    /// Print one JSON line on stdout (the human-readable report goes to stderr).
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    /// What `tern_tools::bench` measures, with the threads applied to the
    /// kernels' pool.
    pub fn options(self) -> bench::Options {
        let threads = apply_threads(&self.model);
        let mut engine = engine_config(&self.model);
        engine.kv_memory = self.kv_memory_mib << 20;
        engine.kv_prefault = self.kv_prefault;
        bench::Options {
            engine,
            threads,
            prompt_tokens: self.prompt_tokens,
            decode_tokens: self.decode_tokens,
            depth: self.depth,
            reps: self.reps,
            bandwidth_mib: self.bandwidth_mib,
            kernels: self.kernels,
            concurrency: self.concurrency,
            ttft_behind: self.ttft_behind,
            prefill_chunk: self.prefill_chunk,
            grammar: self.grammar,
            json: self.json,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Ternary {
    #[value(name = "tq2_0")]
    Tq2_0,
    #[value(name = "tq1_0")]
    Tq1_0,
    #[value(name = "i2_s")]
    I2S,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Head {
    #[value(name = "f16")]
    F16,
    #[value(name = "q8_0")]
    Q8_0,
}

/// `tern synth`'s flags.
#[derive(Args)]
pub struct SynthArgs {
    /// Model whose shapes to copy.
    #[arg(long, default_value = "bitnet-2b-4t", value_parser = PossibleValuesParser::new(synth::PRESETS))]
    pub like: String,
    /// Format of the ternary projections.
    #[arg(long, value_enum, default_value_t = Ternary::Tq2_0)]
    pub ternary: Ternary,
    /// Format of the embedding, which is also the output head.
    #[arg(long, value_enum, default_value_t = Head::F16)]
    pub head: Head,
    /// Number of layers, instead of the model's.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Context length (default: the preset's).
    #[arg(long)]
    pub context: Option<usize>,
    /// `general.name`, the id clients use (default: the preset's name with `-synth`).
    #[arg(long)]
    pub name: Option<String>,
    /// Seed of the weights: one seed gives the same model in every format.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The GGUF file to write.
    #[arg(long)]
    pub out: PathBuf,
}

impl SynthArgs {
    /// The model the flags describe.
    pub fn spec(&self) -> anyhow::Result<SynthSpec> {
        let mut spec = SynthSpec::preset(&self.like).context("unknown preset")?;
        spec.ternary = match self.ternary {
            Ternary::Tq2_0 => GgmlType::TQ2_0,
            Ternary::Tq1_0 => GgmlType::TQ1_0,
            Ternary::I2S => GgmlType::I2_S,
        };
        spec.head = match self.head {
            Head::F16 => GgmlType::F16,
            Head::Q8_0 => GgmlType::Q8_0,
        };
        spec.n_layer = self.layers.unwrap_or(spec.n_layer);
        spec.n_ctx = self.context.unwrap_or(spec.n_ctx);
        if let Some(name) = &self.name {
            spec.name = name.clone();
        }
        spec.seed = self.seed;
        Ok(spec)
    }
}

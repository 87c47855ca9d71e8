//! `tern bench`: a model's prefill and decode speed against the memory
//! bandwidth measured in the same run, (`kernels`) the ternary products
//! alone on 2B-4T's matrix shapes, or (`concurrency`) the engine serving
//! many streams at once against one stream, and time to first token behind
//! a long prompt against idle, or (`grammar`) what constrained generation
//! adds to a decode step: the allowed-token sets of a JSON Schema over the
//! model's vocabulary, computed and cached, against the step itself.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tern_engine::gguf::GgufFile;
use tern_engine::model::{Device, LoadOptions, Model};
use tern_engine::{Engine, EngineConfig, Event, GenerateRequest, Priority, Prompt, SamplingParams};

use crate::measure::{self, HEAD, SHAPES};

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// The model, as the engine would load it (its first file is timed).
    pub engine: EngineConfig,
    /// Threads the kernels' pool was given.
    pub threads: usize,
    /// Prompt length of the prefill test.
    pub prompt_tokens: usize,
    /// Tokens generated one at a time in the decode test.
    pub decode_tokens: usize,
    /// Positions already in the cache when the decode test starts.
    pub depth: usize,
    /// Repetitions; the figures are their mean.
    pub reps: usize,
    /// Size of the buffer the read bandwidth is measured on, in MiB.
    pub bandwidth_mib: usize,
    /// Benchmark the ternary products on 2B-4T's shapes instead of a model.
    pub kernels: bool,
    /// Serve this many concurrent streams through the engine's scheduler;
    /// ratios are against the first count.
    pub concurrency: Vec<usize>,
    /// With `concurrency`: also time the first token of short prompts
    /// arriving while a prompt of this many tokens is read, against idle.
    pub ttft_behind: Option<usize>,
    /// With `concurrency`: most prompt tokens of one sequence per step.
    pub prefill_chunk: usize,
    /// Time the allowed-token sets of a JSON Schema against a decode step.
    pub grammar: bool,
    /// Print one JSON line on stdout (the human-readable report goes to stderr).
    pub json: bool,
}

/// Runs the benchmark `args` asks for and prints its report.
pub fn run(args: Options) -> anyhow::Result<()> {
    let threads = args.threads;
    let report = if args.kernels && args.engine.device != Device::Cpu {
        crate::bench_gpu::kernels(args.engine.device, args.prompt_tokens, args.bandwidth_mib, args.json)?
    } else if args.kernels {
        kernels(&args, threads)
    } else if args.grammar {
        grammar(&args, threads)?
    } else if !args.concurrency.is_empty() {
        serving(&args, threads)?
    } else {
        model(&args, threads)?
    };
    if args.json {
        println!("{report}");
    }
    Ok(())
}

/// Prints a line of the human-readable report (stderr with `--json`).
macro_rules! say {
    ($args:expr, $($t:tt)*) => {
        if $args.json { eprintln!($($t)*) } else { println!($($t)*) }
    };
}

/// A GGUF file, or a Hugging Face checkpoint folder with its tokenizer.
fn open(path: &std::path::Path) -> anyhow::Result<(GgufFile, Option<tern_engine::tokenizer::Tokenizer>)> {
    if tern_engine::hf::is_checkpoint(path) {
        let (file, tokenizer) = tern_engine::hf::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        return Ok((file, Some(tokenizer)));
    }
    Ok((GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?, None))
}

fn bandwidth(args: &Options, threads: usize) -> f64 {
    let gbs = measure::read_bandwidth_gbs(args.bandwidth_mib << 20, 5);
    say!(args, "read bandwidth   {gbs:7.2} GB/s  ({threads} threads, {} MiB, best of 5)", args.bandwidth_mib);
    gbs
}

fn model(args: &Options, threads: usize) -> anyhow::Result<serde_json::Value> {
    let path = args.engine.models.first().context("no model file given")?;
    let q8_0_head = args.engine.q8_0_head;
    let started = Instant::now();
    let (file, _) = open(path)?;
    let device = args.engine.device;
    let model = Model::load(&file, &LoadOptions { q8_0_head, device, ..LoadOptions::default() })
        .with_context(|| format!("loading {}", path.display()))?;
    let c = model.config();
    let bytes_per_token = model.summary().bytes_per_token;
    say!(
        args,
        "model            {} ({}, {} layers, d {}, ff {}, vocab {}, {}{}) loaded in {:.1} s",
        path.display(),
        c.architecture,
        c.n_layer,
        c.n_embd,
        c.n_ff,
        c.n_vocab,
        model.summary().ternary_type.name(),
        if q8_0_head { ", Q8_0 head" } else { "" },
        started.elapsed().as_secs_f64()
    );
    let device = model.backend().device();
    say!(args, "device           {device}");
    say!(args, "bytes per token  {:7.1} MB", bytes_per_token as f64 / 1e6);
    let bw = match model.backend().device_read_bandwidth_gbs(args.bandwidth_mib << 20) {
        Some(gbs) => {
            say!(
                args,
                "read bandwidth   {gbs:7.2} GB/s  (device, a shader over {} MiB, best of 5)",
                args.bandwidth_mib
            );
            gbs
        }
        None => bandwidth(args, threads),
    };
    let run = measure::time_model(&model, args.prompt_tokens, args.decode_tokens, args.depth, args.reps, |rep, r| {
        eprintln!(
            "  rep {}/{}: prefill {:.2} tok/s, decode {:.2} tok/s",
            rep + 1,
            args.reps,
            r.prefill_tok_s,
            r.decode_tok_s
        )
    });
    let read = run.decode_tok_s * bytes_per_token as f64 / 1e9;
    let roofline = read / bw;
    say!(args, "prefill          {:7.2} tok/s  (pp{})", run.prefill_tok_s, args.prompt_tokens);
    say!(
        args,
        "decode           {:7.2} tok/s  (tg{}{}): {read:.2} GB/s of weights, {:.0}% of the read bandwidth",
        run.decode_tok_s,
        args.decode_tokens,
        if args.depth > 0 { format!(" @ d{}", args.depth) } else { String::new() },
        roofline * 100.0
    );
    Ok(json!({
        "model": path.display().to_string(),
        "ternary_type": model.summary().ternary_type.name(),
        "q8_0_head": q8_0_head,
        "kernels": measure::ternary_isa(),
        "device": device,
        "threads": threads,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "depth": args.depth,
        "reps": args.reps,
        "prefill_tok_s": run.prefill_tok_s,
        "decode_tok_s": run.decode_tok_s,
        "bytes_per_token": bytes_per_token,
        "read_bandwidth_gbs": bw,
        "roofline_fraction": roofline,
    }))
}

/// Vectors of the batched head product: a 16-stream decode step.
const HEAD_VECTORS: usize = 16;
/// Tokens of the per-variant product: one tile, so the scalar reference
/// stays quick.
const VARIANT_TOKENS: usize = 4;
/// Matrices cycled through per shape: far more than any cache.
const OUT_OF_CACHE_BYTES: usize = 512 << 20;

fn kernels(args: &Options, threads: usize) -> serde_json::Value {
    let bw = bandwidth(args, threads);
    let isa = measure::ternary_isa();
    // The ceiling of the products below: int8 multiply-adds from registers,
    // the fastest this CPU has.
    let limits = measure::int8_madd_limits(threads, Duration::from_secs(1));
    for (name, gmacs) in &limits {
        say!(args, "int8 madd        {gmacs:7.1} GMAC/s  ({name}, register-only loop, {threads} threads)")
    }
    let limit = limits.last().copied();
    match limit {
        Some((name, _)) => say!(args, "int8 limit       {name}"),
        None => say!(args, "int8 limit       not measured (no AVX2, VNNI, AMX or NEON dot product on this CPU)"),
    }
    // The fastest vector instruction, when a matrix unit (AMX) is faster
    // still: the batched product is given against both.
    let vector = limits.iter().rev().find(|(name, _)| !name.starts_with("AMX")).copied().filter(|v| Some(*v) != limit);
    let of_limit = |gmacs: f64| {
        let mut text = limit.map_or(String::new(), |(_, l)| format!(", {:.0}% of the int8 limit", gmacs / l * 100.0));
        if let Some((name, l)) = vector {
            text += &format!(" ({:.0}% of {name})", gmacs / l * 100.0);
        }
        text
    };
    let mut results = Vec::new();
    for (rows, cols) in SHAPES {
        let mats = measure::random_matrices(rows, cols, OUT_OF_CACHE_BYTES, 1);
        let gemv = measure::time_product(&mats, 1, Duration::from_secs(2));
        let tokens = args.prompt_tokens.max(2);
        let gemm = measure::time_product(&mats[..4], tokens, Duration::from_secs(2));
        // Baseline for the GEMM: the same tokens as one GEMV each, from cache.
        let per_token = measure::time_product(&mats[..1], 1, Duration::from_secs(1));
        let fraction = gemv.weight_gbs() / bw;
        let speedup = per_token.seconds * tokens as f64 / gemm.seconds;
        say!(
            args,
            "gemv {cols:>5}→{rows:<5} {:7.1} µs  {:6.2} GB/s  {:5.1}% of bandwidth ({} matrices, {:.0} MB)",
            gemv.seconds * 1e6,
            gemv.weight_gbs(),
            fraction * 100.0,
            mats.len(),
            (mats.len() * gemv.weight_bytes) as f64 / 1e6
        );
        say!(
            args,
            "gemm {cols:>5}→{rows:<5} {:7.1} µs  {:6.1} GMAC/s  n={tokens}: {speedup:.2}× per-token GEMV from cache{}",
            gemm.seconds * 1e6,
            gemm.gmacs(),
            of_limit(gemm.gmacs())
        );
        results.push(json!({
            "rows": rows, "cols": cols,
            "gemv_us": gemv.seconds * 1e6, "gemv_gbs": gemv.weight_gbs(), "gemv_bandwidth_fraction": fraction,
            "gemm_tokens": tokens, "gemm_us": gemm.seconds * 1e6, "gemm_gmacs": gemm.gmacs(),
            "gemm_vs_gemv_per_token": speedup,
            "gemm_int8_limit_fraction": limit.map(|(_, l)| gemm.gmacs() / l),
            "gemm_vector_limit_fraction": vector.map(|(_, l)| gemm.gmacs() / l),
        }));
        drop(mats);
    }
    let mut heads = Vec::new();
    for (name, q8_0) in [("f16", false), ("q8_0", true)] {
        let (rows, cols) = HEAD;
        let (seconds, bytes) = measure::time_head(rows, cols, q8_0, 1, Duration::from_secs(2));
        let gbs = bytes as f64 / seconds / 1e9;
        say!(
            args,
            "head {name:<4} {cols}→{rows} {:7.1} µs  {gbs:6.2} GB/s  {:5.1}% of bandwidth ({:.0} MB)",
            seconds * 1e6,
            gbs / bw * 100.0,
            bytes as f64 / 1e6
        );
        // The head of a 16-stream decode step, against 16 products of one.
        let (batched, _) = measure::time_head(rows, cols, q8_0, HEAD_VECTORS, Duration::from_secs(2));
        let gmacs = (rows * cols * HEAD_VECTORS) as f64 / batched / 1e9;
        say!(
            args,
            "head {name:<4} n={HEAD_VECTORS}  {:7.1} µs  {gmacs:6.1} GMAC/s  {:.2}× {HEAD_VECTORS} products of one vector",
            batched * 1e6,
            seconds * HEAD_VECTORS as f64 / batched
        );
        heads.push(json!({ "type": name, "rows": rows, "cols": cols, "us": seconds * 1e6, "gbs": gbs,
            "bandwidth_fraction": gbs / bw, "batched_vectors": HEAD_VECTORS, "batched_us": batched * 1e6,
            "batched_gmacs": gmacs }));
    }
    // Attention of a 16-token prompt chunk late in a 2,000-token prompt.
    let (rows, positions) = (16, 2000);
    let (together, alone) = measure::time_attention(rows, positions, Duration::from_secs(2));
    say!(
        args,
        "attention {rows} rows at {positions} positions {:7.1} µs on one thread: {:.2}× one call per row ({:.1} µs)",
        together * 1e6,
        alone / together,
        alone * 1e6
    );
    let attention = json!({ "rows": rows, "positions": positions, "us": together * 1e6,
        "one_row_at_a_time_us": alone * 1e6, "speedup": alone / together });
    // Every variant this CPU runs, on one thread, against the reference.
    let (rows, cols) = SHAPES[1];
    let mut variants = Vec::new();
    let mut reference = None;
    for variant in tern_kernels::dispatch::VARIANTS.iter().filter(|v| v.available()) {
        let run =
            measure::time_variant(variant.kernels.ternary_rows, rows, cols, VARIANT_TOKENS, Duration::from_secs(1));
        let base = *reference.get_or_insert(run.seconds);
        say!(
            args,
            "variant {:<12} gemm {cols:>5}→{rows:<5} n={VARIANT_TOKENS} {:7.1} µs  {:6.2} GMAC/s on one thread: {:.1}× reference",
            variant.name,
            run.seconds * 1e6,
            run.gmacs(),
            base / run.seconds
        );
        variants.push(json!({ "name": variant.name, "us": run.seconds * 1e6, "gmacs": run.gmacs(),
            "speedup_vs_reference": base / run.seconds }));
    }
    json!({ "threads": threads, "ternary_isa": isa, "read_bandwidth_gbs": bw, "products": results, "heads": heads,
        "attention": attention, "variants": variants,
        "int8_limit": limit.map(|(name, gmacs)| json!({"instruction": name, "gmacs": gmacs})),
        "int8_madd": limits.iter().map(|(name, gmacs)| json!({"instruction": name, "gmacs": gmacs})).collect::<Vec<_>>() })
}

/// Short prompts timed for first-token latency.
const PROBE_TOKENS: usize = 16;
/// Probes timed on the idle engine.
const IDLE_PROBES: usize = 8;

fn serving(args: &Options, threads: usize) -> anyhow::Result<serde_json::Value> {
    let most = args.concurrency.iter().copied().max().unwrap_or(1);
    let mut config = args.engine.clone();
    // As `tern serve` by default, or more: probes must not queue.
    config.max_running = most.max(16);
    config.max_queue = most.max(64);
    config.prefill_chunk = args.prefill_chunk;
    let started = Instant::now();
    let engine = Engine::load(config)?;
    let info = engine.models().remove(0);
    say!(
        args,
        "model            {} ({}, context {}) loaded in {:.1} s, {threads} threads",
        info.id,
        info.quantization,
        info.context_length,
        started.elapsed().as_secs_f64()
    );
    // Distinct random prompts: no stream reuses another's prefix.
    let mut salt: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut prompt = |len: usize| -> Vec<u32> {
        (0..len)
            .map(|_| {
                salt = salt.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (salt >> 40) as u32 % 1000 + 100
            })
            .collect()
    };
    let request = |tokens: Vec<u32>, max_tokens: usize| GenerateRequest {
        model: info.id.clone(),
        prompt: Prompt::Tokens(tokens),
        max_tokens: max_tokens as u32,
        sampling: SamplingParams { temperature: 0.0, ..Default::default() },
        seed: Some(1),
        stop: vec![],
        timeout: None,
        priority: Priority::Interactive,
    };
    let mut rows = Vec::new();
    let mut base = None;
    for &streams in &args.concurrency {
        let begun = Instant::now();
        let gens: Vec<_> = (0..streams)
            .map(|_| engine.generate(request(prompt(args.prompt_tokens), args.decode_tokens)))
            .collect::<Result<_, _>>()?;
        let mut tokens = 0;
        let mut decode_rate = 0.0;
        for g in gens {
            let (_, f) = g.collect()?;
            tokens += f.usage.completion_tokens as usize;
            decode_rate += f.usage.completion_tokens.saturating_sub(1) as f64 / (f.usage.generation_ms / 1e3);
        }
        let wall = begun.elapsed().as_secs_f64();
        let aggregate = tokens as f64 / wall;
        let ratio = aggregate / *base.get_or_insert(aggregate);
        say!(args, "streams {streams:>3}      {aggregate:7.2} tok/s aggregate ({tokens} tokens in {wall:.1} s, prompts included), \
            {decode_rate:7.2} tok/s summed decode rate: {ratio:.2}× {} stream(s)", args.concurrency[0]);
        rows.push(json!({ "streams": streams, "tokens": tokens, "wall_s": wall, "aggregate_tok_s": aggregate,
            "summed_decode_tok_s": decode_rate, "ratio_to_first": ratio }));
    }
    let ttft = match args.ttft_behind {
        Some(long) => Some(ttft_behind(args, &engine, long, &mut prompt, &request)?),
        None => None,
    };
    Ok(json!({ "model": info.id, "threads": threads, "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens, "concurrency": rows, "ttft": ttft }))
}

/// Time from submitting a one-token generation of a short prompt to its end.
fn probe(engine: &Engine, req: GenerateRequest) -> anyhow::Result<f64> {
    let asked = Instant::now();
    let g = engine.generate(req)?;
    loop {
        match g.next()? {
            Event::Pending => g.wait(),
            Event::Text(_) | Event::Logprobs(_) => {}
            Event::Finished(_) => return Ok(asked.elapsed().as_secs_f64()),
        }
    }
}

fn ttft_behind(
    args: &Options,
    engine: &Engine,
    long: usize,
    prompt: &mut dyn FnMut(usize) -> Vec<u32>,
    request: &dyn Fn(Vec<u32>, usize) -> GenerateRequest,
) -> anyhow::Result<serde_json::Value> {
    let quantile = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    let mut idle = Vec::new();
    for _ in 0..IDLE_PROBES {
        idle.push(probe(engine, request(prompt(PROBE_TOKENS), 1))?);
    }
    let reader = engine.generate(request(prompt(long), 1))?;
    // Let the long prompt get going before the first probe.
    while engine.status().running == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Probes arrive at random moments relative to the scheduler's steps:
    // a pause of up to twice the idle first-token time before each.
    let spread = quantile(&mut idle, 0.5) * 2.0;
    let mut behind = Vec::new();
    loop {
        let pause = (prompt(1)[0] % 1000) as f64 / 1000.0 * spread;
        std::thread::sleep(Duration::from_secs_f64(pause));
        let t = probe(engine, request(prompt(PROBE_TOKENS), 1))?;
        if !matches!(reader.next()?, Event::Pending) {
            break; // the long prompt ended while this probe ran: not behind it
        }
        behind.push(t);
    }
    anyhow::ensure!(!behind.is_empty(), "the {long}-token prompt ended before any probe ran behind it");
    let (idle50, idle99) = (quantile(&mut idle, 0.5), quantile(&mut idle, 0.99));
    let (b50, b99) = (quantile(&mut behind, 0.5), quantile(&mut behind, 0.99));
    say!(
        args,
        "ttft idle        p50 {:7.1} ms  p99 {:7.1} ms  ({} probes of {PROBE_TOKENS} tokens)",
        idle50 * 1e3,
        idle99 * 1e3,
        idle.len()
    );
    say!(
        args,
        "ttft behind {long:<5}p50 {:7.1} ms  p99 {:7.1} ms  ({} probes): p99 {:.2}× idle p99, {:.2}× idle p50",
        b50 * 1e3,
        b99 * 1e3,
        behind.len(),
        b99 / idle99,
        b99 / idle50
    );
    Ok(json!({ "long_prompt_tokens": long, "probe_tokens": PROBE_TOKENS,
        "idle_p50_ms": idle50 * 1e3, "idle_p99_ms": idle99 * 1e3, "behind_p50_ms": b50 * 1e3,
        "behind_p99_ms": b99 * 1e3, "probes_behind": behind.len(), "p99_ratio": b99 / idle99 }))
}

/// A schema of the kind clients send: nested objects, an array, an enum,
/// bounded numbers, free strings.
const GRAMMAR_SCHEMA: &str = r#"{"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "items": {"type": "string"}},
    "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                "required": ["city", "zip"]},
    "kind": {"enum": ["cat", "dog", "human"]}},
    "required": ["name", "age", "tags", "address", "kind"], "additionalProperties": false}"#;
/// A text the schema accepts, walked token by token.
const GRAMMAR_SAMPLE: &str = r#"{"name": "Ophelia of Denmark", "age": 23, "tags": ["drowned", "flowers", "song"], "address": {"city": "Elsinore", "zip": "DK-3000"}, "kind": "human"}"#;

fn grammar(args: &Options, threads: usize) -> anyhow::Result<serde_json::Value> {
    use std::sync::Arc;
    use tern_engine::grammar::{Automaton, Constraint, TokenTrie};
    use tern_engine::tokenizer::Tokenizer;

    let path = args.engine.models.first().context("no model file given")?;
    let (file, tokenizer) = open(path)?;
    let tokenizer = match tokenizer {
        Some(t) => t,
        None => Tokenizer::from_gguf(&file).context("reading the tokenizer")?,
    };
    let options =
        LoadOptions { q8_0_head: args.engine.q8_0_head, device: args.engine.device, ..LoadOptions::default() };
    let model = Model::load(&file, &options).with_context(|| format!("loading {}", path.display()))?;
    let run = measure::time_model(&model, 16, args.decode_tokens.min(32), 0, 1, |_, _| {});
    let step_ms = 1e3 / run.decode_tok_s;
    say!(args, "decode step      {step_ms:8.2} ms  ({threads} threads, vocabulary {})", tokenizer.vocab_size());

    let started = Instant::now();
    let trie = Arc::new(TokenTrie::new(&tokenizer));
    let trie_ms = started.elapsed().as_secs_f64() * 1e3;
    say!(args, "vocabulary trie  {trie_ms:8.2} ms  (once per model)");

    let grammar = Constraint::JsonSchema(GRAMMAR_SCHEMA.into()).grammar().map_err(|e| anyhow::anyhow!("{e}"))?;
    let automaton = Automaton::new(grammar, trie).map_err(|e| anyhow::anyhow!("{e}"))?;
    let ids = tokenizer.encode_text(GRAMMAR_SAMPLE);
    // Pass 0 meets every state for the first time (a new schema); pass 1
    // finds every token set cached (the steady state).
    let mut passes = Vec::new();
    for _ in 0..2 {
        let mut state = automaton.start();
        let mut times = Vec::with_capacity(ids.len());
        for &id in &ids {
            let started = Instant::now();
            let mask = automaton.mask(state);
            times.push(started.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(mask.allows(id), "the sample's token {id} is refused");
            state = automaton.advance(state, tokenizer.token_bytes_ref(id)).context("the sample leaves the grammar")?;
        }
        anyhow::ensure!(automaton.accepts(state), "the sample is not complete");
        let mean = times.iter().sum::<f64>() / times.len() as f64;
        let max = times.iter().copied().fold(0.0, f64::max);
        passes.push((mean, max));
    }
    let (new_mean, new_max) = passes[0];
    let (cached_mean, _) = passes[1];
    say!(
        args,
        "new schema       {new_mean:8.3} ms per token (max {new_max:.2} ms): {:.1}% of a decode step  ({} tokens, {} states)",
        new_mean / step_ms * 100.0,
        ids.len(),
        automaton.states()
    );
    say!(
        args,
        "cached           {:8.4} ms per token: {:.3}% of a decode step",
        cached_mean,
        cached_mean / step_ms * 100.0
    );
    Ok(json!({
        "model": path.display().to_string(),
        "threads": threads,
        "vocab": tokenizer.vocab_size(),
        "decode_step_ms": step_ms,
        "trie_ms": trie_ms,
        "sample_tokens": ids.len(),
        "new_schema_ms_per_token": new_mean,
        "new_schema_max_ms": new_max,
        "cached_ms_per_token": cached_mean,
        "new_fraction_of_step": new_mean / step_ms,
        "cached_fraction_of_step": cached_mean / step_ms,
    }))
}

//! `tern bench`: a model's prefill and decode speed against the memory
//! bandwidth measured in the same run, or (`--kernels`) the ternary
//! products alone on 2B-4T's matrix shapes.

use crate::ModelArgs;
use anyhow::Context as _;
use clap::Args;
use serde_json::json;
use std::time::{Duration, Instant};
use tern_engine::bench;
use tern_engine::gguf::GgufFile;
use tern_engine::model::{Backend, LoadOptions, Model};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length of the prefill test.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens generated one at a time in the decode test.
    #[arg(long, default_value_t = 128)]
    decode_tokens: usize,
    /// Repetitions; the figures are their mean.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Size of the buffer the read bandwidth is measured on, in MiB.
    #[arg(long, default_value_t = 1024)]
    bandwidth_mib: usize,
    /// Benchmark the ternary products on 2B-4T's shapes instead of a model.
    #[arg(long)]
    kernels: bool,
    /// Print one JSON line on stdout (the human-readable report goes to stderr).
    #[arg(long)]
    json: bool,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let threads = crate::apply_threads(&args.model);
    let report = if args.kernels { kernels(&args, threads) } else { model(&args, threads)? };
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

fn bandwidth(args: &BenchArgs, threads: usize) -> f64 {
    let gbs = bench::read_bandwidth_gbs(args.bandwidth_mib << 20, 5);
    say!(args, "read bandwidth   {gbs:7.2} GB/s  ({threads} threads, {} MiB, best of 5)", args.bandwidth_mib);
    gbs
}

fn model(args: &BenchArgs, threads: usize) -> anyhow::Result<serde_json::Value> {
    let path = crate::model_path(&args.model);
    let started = Instant::now();
    let file = GgufFile::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let model = Model::load_with(&file, LoadOptions { q8_0_head: args.model.q8_0_head })
        .with_context(|| format!("loading {}", path.display()))?;
    let c = model.config();
    let bytes_per_token = model.bytes_per_token();
    say!(
        args,
        "model            {} ({}, {} layers, d {}, ff {}, vocab {}, {}{}) loaded in {:.1} s",
        path.display(),
        c.architecture,
        c.n_layer,
        c.n_embd,
        c.n_ff,
        c.n_vocab,
        model.ternary_type().name(),
        if args.model.q8_0_head { ", Q8_0 head" } else { "" },
        started.elapsed().as_secs_f64()
    );
    say!(args, "bytes per token  {:7.1} MB", bytes_per_token as f64 / 1e6);
    let bw = bandwidth(args, threads);
    let run = bench::time_model(&model, args.prompt_tokens, args.decode_tokens, args.reps, |rep, r| {
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
        "decode           {:7.2} tok/s  (tg{}): {read:.2} GB/s of weights, {:.0}% of the read bandwidth",
        run.decode_tok_s,
        args.decode_tokens,
        roofline * 100.0
    );
    Ok(json!({
        "model": path.display().to_string(),
        "ternary_type": model.ternary_type().name(),
        "q8_0_head": args.model.q8_0_head,
        "threads": threads,
        "prompt_tokens": args.prompt_tokens,
        "decode_tokens": args.decode_tokens,
        "reps": args.reps,
        "prefill_tok_s": run.prefill_tok_s,
        "decode_tok_s": run.decode_tok_s,
        "bytes_per_token": bytes_per_token,
        "read_bandwidth_gbs": bw,
        "roofline_fraction": roofline,
    }))
}

/// 2B-4T's FFN shapes: up/gate (6912 × 2560) and down (2560 × 6912).
const SHAPES: [(usize, usize); 2] = [(6912, 2560), (2560, 6912)];
/// 2B-4T's tied output head: vocabulary × hidden size.
const HEAD: (usize, usize) = (128256, 2560);
/// Matrices cycled through per shape: far more than any cache.
const OUT_OF_CACHE_BYTES: usize = 512 << 20;

fn kernels(args: &BenchArgs, threads: usize) -> serde_json::Value {
    let bw = bandwidth(args, threads);
    let isa = bench::ternary_isa();
    let mut results = Vec::new();
    for (rows, cols) in SHAPES {
        let mats = bench::random_matrices(rows, cols, OUT_OF_CACHE_BYTES, 1);
        let gemv = bench::time_product(&mats, 1, Duration::from_secs(2));
        let tokens = args.prompt_tokens.max(2);
        let gemm = bench::time_product(&mats[..4], tokens, Duration::from_secs(2));
        // Baseline for the GEMM: the same tokens as one GEMV each, from cache.
        let per_token = bench::time_product(&mats[..1], 1, Duration::from_secs(1));
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
            "gemm {cols:>5}→{rows:<5} {:7.1} µs  {:6.1} GMAC/s  n={tokens}: {speedup:.2}× per-token GEMV from cache",
            gemm.seconds * 1e6,
            gemm.gmacs()
        );
        results.push(json!({
            "rows": rows, "cols": cols,
            "gemv_us": gemv.seconds * 1e6, "gemv_gbs": gemv.weight_gbs(), "gemv_bandwidth_fraction": fraction,
            "gemm_tokens": tokens, "gemm_us": gemm.seconds * 1e6, "gemm_gmacs": gemm.gmacs(),
            "gemm_vs_gemv_per_token": speedup,
        }));
        drop(mats);
    }
    let mut heads = Vec::new();
    for (name, q8_0) in [("f16", false), ("q8_0", true)] {
        let (rows, cols) = HEAD;
        let (seconds, bytes) = bench::time_head(rows, cols, q8_0, Duration::from_secs(2));
        let gbs = bytes as f64 / seconds / 1e9;
        say!(
            args,
            "head {name:<4} {cols}→{rows} {:7.1} µs  {gbs:6.2} GB/s  {:5.1}% of bandwidth ({:.0} MB)",
            seconds * 1e6,
            gbs / bw * 100.0,
            bytes as f64 / 1e6
        );
        heads.push(json!({ "type": name, "rows": rows, "cols": cols, "us": seconds * 1e6, "gbs": gbs, "bandwidth_fraction": gbs / bw }));
    }
    json!({ "threads": threads, "ternary_isa": isa, "read_bandwidth_gbs": bw, "products": results, "heads": heads })
}

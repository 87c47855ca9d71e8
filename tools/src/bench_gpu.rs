//! `tern bench --kernels --device gpu`: the shaders' products on 2B-4T's
//! shapes against the device's read bandwidth, measured by a shader in the
//! same run.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tern_engine::model::Device;
use tern_shaders::{Choice, Dense, DenseWeights, Gpu, Quantized, Step, TernaryWeights};

use crate::measure::{self, HEAD, SHAPES};

/// Products recorded into one submission while timing.
const PER_SUBMIT: usize = 16;

/// Seconds per call of `record` (one product), over at least `min_time`.
fn time(gpu: &Gpu, min_time: Duration, record: &dyn Fn(&mut Step, usize)) -> f64 {
    let submit = |first: usize| {
        let mut step = Step::new(gpu);
        (first..first + PER_SUBMIT).for_each(|i| record(&mut step, i));
        step.finish();
    };
    // The first submission also compiles the pipeline and pages buffers in.
    submit(0);
    let (start, mut calls) = (Instant::now(), 0);
    while calls == 0 || start.elapsed() < min_time {
        submit(calls);
        calls += PER_SUBMIT;
    }
    start.elapsed().as_secs_f64() / calls as f64
}

/// The report, on `device` (`gpu` or `auto`), with `tokens` tokens in the
/// batched products and the bandwidth read over `bandwidth_mib` MiB; lines
/// go to stderr when `json`.
pub fn kernels(device: Device, tokens: usize, bandwidth_mib: usize, json: bool) -> anyhow::Result<serde_json::Value> {
    let choice = if device == Device::Gpu { Choice::Any } else { Choice::Hardware };
    let mut gpu = Gpu::open(choice).context("opening the GPU")?;
    let say = |line: String| if json { eprintln!("{line}") } else { println!("{line}") };
    say(format!("adapter          {}", gpu.describe()));
    let bw = gpu.read_bandwidth_gbs((bandwidth_mib << 20) as u64, 5);
    say(format!("read bandwidth   {bw:7.2} GB/s  (a shader over {} MiB, best of 5)", bandwidth_mib));
    let tokens = tokens.max(2);
    let mut products = Vec::new();
    for (rows, cols) in SHAPES {
        // A few copies, so a product rarely finds its weights in a cache.
        let mats = measure::random_matrices(rows, cols, 4 * rows * cols / 4, 1);
        let weights: Vec<TernaryWeights> =
            mats.iter().map(|m| TernaryWeights::upload(&gpu, m, "w")).collect::<Result<_, _>>()?;
        let words = weights[0].input_words();
        let (one, many) = (Quantized::new(&gpu, 1, words), Quantized::new(&gpu, tokens, words));
        let out = gpu.buffer("out", (tokens * rows * 4) as u64);
        let w = |i: usize| &weights[i % weights.len()];
        // The plain-integer dot product first, for comparison.
        gpu.use_packed_dot(false);
        let plain = time(&gpu, Duration::from_secs(1), &|s, i| s.ternary(w(i), &one, 1, &out, rows, 0));
        gpu.use_packed_dot(true);
        let gemv = time(&gpu, Duration::from_secs(2), &|s, i| s.ternary(w(i), &one, 1, &out, rows, 0));
        // Both batched entry points; the default is the one the adapter uses.
        gpu.tile_from(usize::MAX);
        let few = time(&gpu, Duration::from_secs(2), &|s, i| s.ternary(w(i), &many, tokens, &out, rows, 0));
        gpu.tile_from(2);
        let tiled = time(&gpu, Duration::from_secs(2), &|s, i| s.ternary(w(i), &many, tokens, &out, rows, 0));
        let gemm = if gpu.is_software() { few } else { tiled };
        let bytes = (rows * cols / 4) as f64;
        let gbs = bytes / gemv / 1e9;
        let gmacs = (rows * cols * tokens) as f64 / gemm / 1e9;
        say(format!(
            "gemv {cols:>5}→{rows:<5} {:8.1} µs  {gbs:6.2} GB/s  {:5.1}% of bandwidth ({} matrices; the plain dot runs at {:.2}× this speed)",
            gemv * 1e6,
            gbs / bw * 100.0,
            weights.len(),
            gemv / plain
        ));
        say(format!(
            "gemm {cols:>5}→{rows:<5} {:8.1} µs  {gmacs:6.1} GMAC/s  n={tokens} (4 × 4 tiles {:.1}, 32 × 32 tiled {:.1} GMAC/s)",
            gemm * 1e6,
            (rows * cols * tokens) as f64 / few / 1e9,
            (rows * cols * tokens) as f64 / tiled / 1e9
        ));
        products.push(json!({ "rows": rows, "cols": cols, "gemv_us": gemv * 1e6, "gemv_gbs": gbs,
            "gemv_bandwidth_fraction": gbs / bw, "gemv_plain_dot_us": plain * 1e6, "gemm_tokens": tokens, "gemm_us": gemm * 1e6, "gemm_gmacs": gmacs,
            "gemm_four_by_four_us": few * 1e6, "gemm_tiled_us": tiled * 1e6 }));
    }
    let (rows, cols) = HEAD;
    let w: Vec<tern_kernels::f16> =
        (0..rows * cols).map(|i| tern_kernels::f16::from_f32((i % 13) as f32 / 13.0)).collect();
    let head = DenseWeights::upload(&gpu, Dense::F16(&w), rows, cols, "head")?;
    drop(w);
    let x = gpu.buffer("x", (cols * 4) as u64);
    let out = gpu.buffer("logits", (rows * 4) as u64);
    let seconds = time(&gpu, Duration::from_secs(2), &|s, _| s.dense(&head, &x, 1, &out));
    let gbs = (rows * cols * 2) as f64 / seconds / 1e9;
    say(format!(
        "head f16 {cols}→{rows} {:8.1} µs  {gbs:6.2} GB/s  {:5.1}% of bandwidth ({} buffers)",
        seconds * 1e6,
        gbs / bw * 100.0,
        head.parts()
    ));
    Ok(json!({ "device": gpu.describe(), "software": gpu.is_software(), "read_bandwidth_gbs": bw,
        "products": products, "head": { "type": "f16", "rows": rows, "cols": cols, "us": seconds * 1e6, "gbs": gbs,
        "bandwidth_fraction": gbs / bw, "buffers": head.parts() } }))
}

//! Measurements behind `tern bench`: memory read bandwidth, ternary GEMV and
//! GEMM out of cache, and a model's prefill and decode speed.
//!
//! Machines are shared and noisy, so every figure comes with a baseline
//! taken in the same run: products are reported as a fraction of the read
//! bandwidth measured just before them, GEMM against per-token GEMV.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tern_engine::model::{Model, Session};
use tern_engine::sampler::{argmax, Rng};
use tern_kernels::dispatch::TernaryRowsFn;
use tern_kernels::{pool, TernaryMatrix};

/// 2B-4T's FFN shapes: up/gate (6912 × 2560) and down (2560 × 6912).
pub const SHAPES: [(usize, usize); 2] = [(6912, 2560), (2560, 6912)];
/// 2B-4T's tied output head: vocabulary × hidden size.
pub const HEAD: (usize, usize) = (128256, 2560);

/// The kernel variant this CPU runs ("avx2", ...).
pub fn ternary_isa() -> &'static str {
    tern_kernels::dispatch::chosen().name
}

/// Best-of-`reps` read bandwidth in GB/s (10^9 bytes/s) over a buffer of
/// `bytes`, read by the kernels' thread pool in wide independent streams.
pub fn read_bandwidth_gbs(bytes: usize, reps: usize) -> f64 {
    let words = vec![1u64; bytes / 8];
    let chunk = (words.len() / (pool::global().threads() * 8)).max(1024);
    let tasks = words.len().div_ceil(chunk);
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let sink = AtomicU64::new(0);
        let start = Instant::now();
        pool::global().run(tasks, &|i| {
            let part = &words[i * chunk..((i + 1) * chunk).min(words.len())];
            // Eight independent lanes: the compiler keeps them in vector registers.
            let lanes = part.chunks_exact(8).fold([0u64; 8], |mut acc, c| {
                for (a, v) in acc.iter_mut().zip(c) {
                    *a = a.wrapping_add(*v);
                }
                acc
            });
            sink.fetch_add(lanes.iter().fold(0, |a, v| a ^ v), Ordering::Relaxed);
        });
        best = best.min(start.elapsed().as_secs_f64());
        black_box(sink.load(Ordering::Relaxed));
    }
    (words.len() * 8) as f64 / best / 1e9
}

/// One ternary product measured out of cache.
#[derive(Debug, Clone, Copy)]
pub struct ProductRun {
    pub rows: usize,
    pub cols: usize,
    /// Tokens per product: 1 for GEMV.
    pub tokens: usize,
    /// Mean time of one product.
    pub seconds: f64,
    /// Packed weight bytes of one matrix.
    pub weight_bytes: usize,
}

impl ProductRun {
    /// Weight bytes streamed per second, GB/s.
    pub fn weight_gbs(&self) -> f64 {
        self.weight_bytes as f64 / self.seconds / 1e9
    }

    /// Multiply-adds per second, in 10^9.
    pub fn gmacs(&self) -> f64 {
        (self.rows * self.cols * self.tokens) as f64 / self.seconds / 1e9
    }
}

/// Random ternary (rows, cols) matrices, enough copies to hold at least
/// `total_bytes`, so that cycling through them always reads from DRAM.
pub fn random_matrices(rows: usize, cols: usize, total_bytes: usize, seed: u64) -> Vec<TernaryMatrix> {
    let mut rng = Rng::new(seed);
    // A TQ2_0 payload of random codes 0..=2 (no code 3), one shared scale.
    let blocks = rows * cols / tern_kernels::TQ_BLOCK;
    let mut bytes = Vec::with_capacity(blocks * 66);
    let scale = half::f16::from_f32(0.02).to_le_bytes();
    for _ in 0..blocks {
        for _ in 0..8 {
            let r = rng.next_u64();
            for k in 0..8 {
                let b = (r >> (8 * k)) as u8;
                // four 2-bit fields, each folded into 0..=2
                let mut v = 0u8;
                for f in 0..4 {
                    v |= (((b >> (2 * f)) & 3) % 3) << (2 * f);
                }
                bytes.push(v);
            }
        }
        bytes.extend_from_slice(&scale);
    }
    let one = TernaryMatrix::from_tq2_0(&bytes, rows, cols).expect("valid random TQ2_0");
    let copies = total_bytes.div_ceil(one.size_bytes()).max(1);
    vec![one; copies]
}

/// Mean time of one GEMV (`tokens` = 1) or GEMM over `mats`, cycled for at
/// least `min_time`.
pub fn time_product(mats: &[TernaryMatrix], tokens: usize, min_time: Duration) -> ProductRun {
    let (rows, cols) = (mats[0].rows(), mats[0].cols());
    let mut rng = Rng::new(7);
    let q: Vec<i8> = (0..tokens * cols).map(|_| rng.next_u64() as i8).collect();
    let s: Vec<f32> = (0..tokens).map(|t| 1.0 + t as f32).collect();
    let mut out = vec![0.0f32; tokens * rows];
    let run = |m: &TernaryMatrix, out: &mut [f32]| {
        if tokens == 1 {
            tern_kernels::ternary_gemv(m, &q, s[0], out)
        } else {
            tern_kernels::ternary_gemm(m, &q, &s, out)
        }
    };
    run(&mats[0], &mut out); // warm the pool and code paths
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < min_time || n < mats.len() {
        run(&mats[n % mats.len()], &mut out);
        n += 1;
    }
    black_box(&out);
    ProductRun {
        rows,
        cols,
        tokens,
        seconds: start.elapsed().as_secs_f64() / n as f64,
        weight_bytes: mats[0].size_bytes(),
    }
}

/// Mean time of one product of a random (rows, cols) matrix with `tokens`
/// tokens through `rows_fn` (one variant's `ternary_rows`) on the calling
/// thread alone, repeated for at least `min_time`.
pub fn time_variant(rows_fn: TernaryRowsFn, rows: usize, cols: usize, tokens: usize, min_time: Duration) -> ProductRun {
    let w = random_matrices(rows, cols, 0, 2).remove(0);
    let mut rng = Rng::new(9);
    let q: Vec<i8> = (0..tokens * cols).map(|_| rng.next_u64() as i8).collect();
    let s: Vec<f32> = (0..tokens).map(|t| 1.0 + t as f32).collect();
    let mut out = vec![0.0f32; tokens * rows];
    rows_fn(&w, &q, &s, 0..rows, &mut out);
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < min_time || n < 2 {
        rows_fn(&w, &q, &s, 0..rows, &mut out);
        n += 1;
    }
    black_box(&out);
    ProductRun { rows, cols, tokens, seconds: start.elapsed().as_secs_f64() / n as f64, weight_bytes: w.size_bytes() }
}

/// Prefill and decode speed of a model.
#[derive(Debug, Clone, Copy)]
pub struct ModelRun {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

/// Mean over `reps` of: one forward pass over `prompt_tokens` tokens, and
/// `decode_tokens` single-token steps after `depth` cached positions (as
/// llama-bench's pp and tg tests do, and its depth option). `progress` hears
/// each finished repetition.
pub fn time_model(
    model: &Model,
    prompt_tokens: usize,
    decode_tokens: usize,
    depth: usize,
    reps: usize,
    mut progress: impl FnMut(usize, &ModelRun),
) -> ModelRun {
    let c = model.config();
    let mut rng = Rng::new(11);
    let prompt: Vec<u32> = (0..prompt_tokens).map(|_| (rng.next_u64() % c.n_vocab as u64) as u32).collect();
    // Warm-up: touch every weight once and start the pool.
    let warm: &[u32] = if prompt.is_empty() { &[0] } else { &prompt[..prompt.len().min(8)] };
    black_box(Session::new(model).forward(warm, false));
    let (mut prefill, mut decode) = (0.0, 0.0);
    for rep in 0..reps.max(1) {
        let mut run = ModelRun { prefill_tok_s: 0.0, decode_tok_s: 0.0 };
        if prompt_tokens > 0 {
            let mut session = Session::new(model);
            let start = Instant::now();
            black_box(session.forward(&prompt, false));
            run.prefill_tok_s = prompt_tokens as f64 / start.elapsed().as_secs_f64();
        }
        if decode_tokens > 0 {
            let mut session = Session::new(model);
            if depth > 0 {
                let context: Vec<u32> = (0..depth).map(|_| (rng.next_u64() % c.n_vocab as u64) as u32).collect();
                black_box(session.forward(&context, false));
            }
            let mut token = prompt.first().copied().unwrap_or(0);
            let start = Instant::now();
            for _ in 0..decode_tokens {
                let logits = session.forward(&[token], false);
                token = argmax(&logits);
            }
            run.decode_tok_s = decode_tokens as f64 / start.elapsed().as_secs_f64();
        }
        prefill += run.prefill_tok_s;
        decode += run.decode_tok_s;
        progress(rep, &run);
    }
    let n = reps.max(1) as f64;
    ModelRun { prefill_tok_s: prefill / n, decode_tok_s: decode / n }
}

/// Mean time of one output-head product (n_vocab × n_embd) of `vectors`
/// vectors at once over a matrix of random F16 values or its Q8_0
/// conversion, cycled for at least `min_time`. Returns (seconds, weight
/// bytes).
pub fn time_head(rows: usize, cols: usize, q8_0: bool, vectors: usize, min_time: Duration) -> (f64, usize) {
    let mut rng = Rng::new(3);
    let w: Vec<half::f16> = (0..rows * cols).map(|_| half::f16::from_f32(rng.next_f64() as f32 - 0.5)).collect();
    let x: Vec<f32> = (0..cols * vectors).map(|_| rng.next_f64() as f32 - 0.5).collect();
    let mut out = vec![0.0f32; rows * vectors];
    let q8: Vec<u8> = if q8_0 {
        let row_bytes = tern_kernels::q8_0_row_bytes(cols);
        let mut bytes = vec![0u8; rows * row_bytes];
        let mut row = vec![0.0f32; cols];
        for (r, dst) in bytes.chunks_exact_mut(row_bytes).enumerate() {
            tern_kernels::row_f16(&w, cols, r, &mut row);
            tern_kernels::quantize_row_q8_0(&row, dst);
        }
        bytes
    } else {
        Vec::new()
    };
    let run = |out: &mut [f32]| match (q8_0, vectors) {
        (true, 1) => tern_kernels::matvec_q8_0(&q8, rows, cols, &x, out),
        (true, _) => tern_kernels::matmul_q8_0(&q8, rows, cols, &x, out),
        (false, 1) => tern_kernels::matvec_f16(&w, rows, cols, &x, out),
        (false, _) => tern_kernels::matmul_f16(&w, rows, cols, &x, out),
    };
    run(&mut out);
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < min_time || n < 3 {
        run(&mut out);
        n += 1;
    }
    black_box(&out);
    let bytes = if q8_0 { q8.len() } else { w.len() * 2 };
    (start.elapsed().as_secs_f64() / n as f64, bytes)
}

/// One thread's attention over 2B-4T's heads (20 query, 5 kv, 128 wide) for
/// `rows` consecutive queries at the end of `positions` cached positions in
/// 16-position blocks: (seconds with all rows in one call, seconds with one
/// call per row, as each query was computed before rows shared a call).
pub fn time_attention(rows: usize, positions: usize, min_time: Duration) -> (f64, f64) {
    use tern_kernels::KvBlocks;
    let (n_heads, n_kv, hd, block) = (20, 5, 128, 16);
    let mut rng = Rng::new(4);
    let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.next_f64() as f32 - 0.5).collect() };
    let blocks: Vec<(Vec<f32>, Vec<f32>)> =
        (0..positions.div_ceil(block)).map(|_| (random(block * n_kv * hd), random(block * n_kv * hd))).collect();
    let kb: Vec<&[f32]> = blocks.iter().map(|(k, _)| &k[..]).collect();
    let vb: Vec<&[f32]> = blocks.iter().map(|(_, v)| &v[..]).collect();
    let q = random(rows * n_heads * hd);
    let mut out = vec![0.0f32; rows * n_heads * hd];
    let mut scratch = vec![0.0f32; rows * n_heads / n_kv * positions];
    let time = |f: &mut dyn FnMut()| {
        f();
        let start = Instant::now();
        let mut n = 0usize;
        while start.elapsed() < min_time || n < 3 {
            f();
            n += 1;
        }
        start.elapsed().as_secs_f64() / n as f64
    };
    let qd = n_heads * hd;
    let together = time(&mut || {
        let kv = KvBlocks { k: &kb, v: &vb, block_len: block, len: positions, row_stride: n_kv * hd };
        tern_kernels::attention(&q, rows, kv, n_heads, n_kv, hd, &mut scratch, &mut out);
    });
    let one_by_one = time(&mut || {
        for r in 0..rows {
            let kv =
                KvBlocks { k: &kb, v: &vb, block_len: block, len: positions - rows + r + 1, row_stride: n_kv * hd };
            let (q, out) = (&q[r * qd..(r + 1) * qd], &mut out[r * qd..(r + 1) * qd]);
            tern_kernels::attention(q, 1, kv, n_heads, n_kv, hd, &mut scratch, out);
        }
    });
    black_box(&out);
    (together, one_by_one)
}

/// A limit loop: the instruction's name, and the loop run for some
/// iterations, returning the multiply-adds it did.
type MaddLoop = (&'static str, fn(u64) -> u64);

/// Independent dependency chains in the limit loops: enough to cover the
/// multiply-add's latency at its throughput on current cores.
const MADD_CHAINS: usize = 12;

/// The int8 multiply-adds this CPU has (AVX2 `vpmaddubsw`, AVX-VNNI and
/// AVX-512 VNNI `vpdpbusd`, AMX `tdpbusd`, NEON `sdot`), each issued in a loop that
/// touches no memory on `threads` threads at once: each one's name and
/// billions of int8 multiply-adds per second in all, the fastest last.
/// Empty on a CPU with none.
pub fn int8_madd_limits(threads: usize, min_time: Duration) -> Vec<(&'static str, f64)> {
    let mut limits: Vec<(&'static str, f64)> =
        madd_loops().into_iter().map(|(name, run)| (name, madd_rate(run, threads, min_time))).collect();
    limits.sort_by(|a, b| a.1.total_cmp(&b.1));
    limits
}

/// One limit loop's rate on `threads` threads, in billions of
/// multiply-adds per second.
fn madd_rate(run: fn(u64) -> u64, threads: usize, min_time: Duration) -> f64 {
    // Iterations that take about `min_time` on one thread.
    let mut iters = 1u64 << 16;
    loop {
        let started = Instant::now();
        std::hint::black_box(run(iters));
        let elapsed = started.elapsed();
        if elapsed >= min_time / 4 {
            iters = (iters as f64 * min_time.as_secs_f64() / elapsed.as_secs_f64()) as u64;
            break;
        }
        iters *= 4;
    }
    let started = Instant::now();
    let macs: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(move || run(iters))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
    });
    macs as f64 / started.elapsed().as_secs_f64() / 1e9
}

/// The limit loops this CPU can run.
fn madd_loops() -> Vec<MaddLoop> {
    let mut loops: Vec<MaddLoop> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") {
            // SAFETY: AVX2 was detected.
            loops.push(("AVX2 vpmaddubsw", |n| unsafe { maddubs_chains(n) }));
        }
        if has!("avxvnni") {
            // SAFETY: AVX-VNNI was detected.
            loops.push(("AVX-VNNI vpdpbusd ymm", |n| unsafe { dpbusd_ymm_chains(n) }));
        }
        if has!("avx512f") && has!("avx512vnni") {
            // SAFETY: AVX-512F and AVX-512 VNNI were detected.
            loops.push(("AVX-512 VNNI vpdpbusd zmm", |n| unsafe { dpbusd_zmm_chains(n) }));
        }
        if tern_kernels::arch::x86_64_amx::available() {
            loops.push(("AMX tdpbusd tiles", tern_kernels::arch::x86_64_amx::madd_loop));
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("dotprod") {
        // SAFETY: the dot-product extension was detected.
        loops.push(("NEON sdot", |n| unsafe { sdot_chains(n) }));
    }
    loops
}

/// `iters` rounds of one 256-bit `vpdpbusd` (32 u8 x i8 products summed
/// into 8 i32 lanes) on each chain; returns the multiply-adds done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avxvnni")]
unsafe fn dpbusd_ymm_chains(iters: u64) -> u64 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm256_set1_epi8(1), _mm256_set1_epi8(1));
    let mut acc = [_mm256_setzero_si256(); MADD_CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_dpbusd_avx_epi32(*v, a, b);
        }
    }
    std::hint::black_box(acc);
    iters * MADD_CHAINS as u64 * 32
}

/// `iters` rounds of one 512-bit `vpdpbusd` (64 products) on each chain.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpbusd_zmm_chains(iters: u64) -> u64 {
    use std::arch::x86_64::*;
    let (a, b) = (_mm512_set1_epi8(1), _mm512_set1_epi8(1));
    let mut acc = [_mm512_setzero_si512(); MADD_CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_dpbusd_epi32(*v, a, b);
        }
    }
    std::hint::black_box(acc);
    iters * MADD_CHAINS as u64 * 64
}

/// `iters` rounds of one `vpmaddubsw` (32 u8 x i8 products) on each chain,
/// each result feeding the chain's next; returns the multiply-adds done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn maddubs_chains(iters: u64) -> u64 {
    use std::arch::x86_64::*;
    let b = _mm256_set1_epi8(1);
    let mut x = [_mm256_set1_epi8(1); MADD_CHAINS];
    for _ in 0..iters {
        for v in x.iter_mut() {
            *v = _mm256_maddubs_epi16(*v, b);
        }
    }
    std::hint::black_box(x);
    iters * MADD_CHAINS as u64 * 32
}

/// `iters` rounds of one `sdot` (16 i8 x i8 products) on each chain;
/// returns the multiply-adds done.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "dotprod")]
unsafe fn sdot_chains(iters: u64) -> u64 {
    use std::arch::aarch64::*;
    use std::arch::asm;
    let (a, b) = (vdupq_n_s8(1), vdupq_n_s8(1));
    let mut acc = [vdupq_n_s32(0); MADD_CHAINS];
    for _ in 0..iters {
        for v in acc.iter_mut() {
            // SAFETY: SDOT reads and writes only the registers named.
            asm!("sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b", acc = inout(vreg) *v, a = in(vreg) a, b = in(vreg) b,
                 options(pure, nomem, nostack, preserves_flags));
        }
    }
    std::hint::black_box(acc);
    iters * MADD_CHAINS as u64 * 16
}

//! Every shader against the CPU kernels, in the style of llama.cpp's
//! `test-backend-ops`: integer sums bit-identical, floats within the named
//! tolerances below. Shapes have tails (columns past whole groups, rows
//! and tokens past whole workgroup tiles) and the split-binding path runs
//! with a forced small binding limit.
//!
//! These run on whatever adapter there is, software ones included: in CI,
//! Mesa's lavapipe (Debian's mesa-vulkan-drivers, which `.ci/run`
//! installs). With no adapter at all each test prints SKIP and why, and
//! fails instead when `CI` is set.

use std::io::Write as _;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tern_kernels::{self as k, f16, KvBlocks, TernaryMatrix};
use tern_shaders::{Choice, Dense, DenseWeights, Gate, Gpu, Quantized, Step, TernaryWeights};

/// Normalised mean squared error allowed of float results: Σ(a-b)² / Σb².
const NMSE_FLOAT: f64 = 1e-10;
/// …of products summed in another order over thousands of columns.
const NMSE_SUM: f64 = 1e-9;

/// The adapter, with the ternary product tiled from 8 tokens (as on a
/// hardware adapter; software ones never tile by default), or `None` after
/// a visible SKIP when there is none (a failure under CI).
fn gpu() -> Option<Gpu> {
    match Gpu::open(Choice::Any) {
        Ok(mut gpu) => {
            // Once, past the harness's capture: which adapter these ran on.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                let _ = writeln!(std::io::stderr(), "GPU tests on {}", gpu.describe());
            });
            gpu.tile_from(8);
            Some(gpu)
        }
        Err(e) if std::env::var_os("CI").is_some() => panic!("the GPU tests need an adapter: {e}"),
        Err(e) => {
            // Straight to stderr: the harness keeps a passing test's eprintln!.
            let _ = writeln!(std::io::stderr(), "SKIP: {e}");
            None
        }
    }
}

fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "lengths");
    let err: f64 = got.iter().zip(want).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let norm: f64 = want.iter().map(|b| (*b as f64).powi(2)).sum();
    err / norm.max(f64::MIN_POSITIVE)
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tolerance: f64) {
    let e = nmse(got, want);
    assert!(e <= tolerance, "{what}: NMSE {e:e} > {tolerance:e}");
}

fn floats(rng: &mut SmallRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-scale..scale)).collect()
}

fn ternary_matrix(rng: &mut SmallRng, rows: usize, cols: usize, scale: f32) -> TernaryMatrix {
    let values: Vec<i8> = (0..rows * cols).map(|_| rng.random_range(-1..=1)).collect();
    TernaryMatrix::from_ternary(&values, rows, cols, scale).unwrap()
}

/// Int8 rows packed as the ternary shader takes them, padded to `words`.
fn quantized(gpu: &Gpu, q: &[i8], s: &[f32], cols: usize, words: usize) -> Quantized {
    let n = s.len();
    let mut packed = vec![0u32; n * words];
    let mut sums = vec![0i32; n];
    for t in 0..n {
        for (c, &v) in q[t * cols..(t + 1) * cols].iter().enumerate() {
            packed[t * words + c / 4] |= (v as u8 as u32) << (8 * (c % 4));
            sums[t] += v as i32;
        }
    }
    Quantized { q: gpu.upload("q", &packed), s: gpu.upload("s", s), sum: gpu.upload("sum", &sums), words }
}

/// The GPU's ternary product of `m` with q (n, cols), s (n,).
fn gpu_ternary(gpu: &Gpu, m: &TernaryMatrix, q: &[i8], s: &[f32]) -> Vec<f32> {
    let w = TernaryWeights::upload(gpu, m, "w").unwrap();
    let x = quantized(gpu, q, s, m.cols(), w.input_words());
    let n = s.len();
    let out = gpu.buffer("out", (n * m.rows() * 4) as u64);
    let mut step = Step::new(gpu);
    step.ternary(&w, &x, n, &out, m.rows(), 0);
    let id = step.read(&out, 0, n * m.rows());
    step.finish().take(id)
}

#[test]
fn an_adapter_opens_and_says_what_it_is() {
    let Some(gpu) = gpu() else { return };
    assert!(!gpu.name().is_empty());
    assert!(gpu.max_binding() >= 128 << 20, "binding limit {}", gpu.max_binding());
}

#[test]
fn ternary_integer_sums_are_exact_with_both_dot_products() {
    let Some(mut gpu) = gpu() else { return };
    let mut rng = SmallRng::seed_from_u64(1);
    // (rows, cols, tokens): a decode row, tails in every dimension, several groups
    for (rows, cols, n) in [(8, 128, 1), (37, 300, 5), (64, 2560, 9), (3, 640, 4), (70, 300, 40), (33, 256, 32)] {
        let m = ternary_matrix(&mut rng, rows, cols, 1.0);
        let q: Vec<i8> = (0..n * cols).map(|_| rng.random_range(-128..=127)).collect();
        let s = vec![1.0; n];
        let mut want = vec![0.0; n * rows];
        k::ternary_gemm(&m, &q, &s, &mut want);
        for packed in [true, false] {
            gpu.use_packed_dot(packed);
            let got = gpu_ternary(&gpu, &m, &q, &s);
            assert_eq!(got, want, "({rows}, {cols}) × {n} tokens, packed dot {packed}");
        }
    }
}

#[test]
fn ternary_rescales_like_the_kernels_and_splits_across_bindings() {
    let Some(mut gpu) = gpu() else { return };
    let mut rng = SmallRng::seed_from_u64(2);
    let (rows, cols) = (45, 384);
    let m = ternary_matrix(&mut rng, rows, cols, 0.73);
    // A few tokens, and enough for the tiled product.
    let inputs: Vec<(Vec<i8>, Vec<f32>)> = [6, 37]
        .map(|n| {
            let q = (0..n * cols).map(|_| rng.random_range(-128..=127)).collect();
            (q, (0..n).map(|_| rng.random_range(0.5..90.0)).collect())
        })
        .into();
    let mut whole = Vec::new();
    for (q, s) in &inputs {
        let mut want = vec![0.0; s.len() * rows];
        k::ternary_gemm(&m, q, s, &mut want);
        whole.push(gpu_ternary(&gpu, &m, q, s));
        assert_close(&format!("ternary rescaled, {} tokens", s.len()), whole.last().unwrap(), &want, NMSE_FLOAT);
    }
    // 7 rows a binding: 7 parts, the last one short.
    gpu.limit_binding((7 * m.row_bytes()) as u64);
    assert_eq!(TernaryWeights::upload(&gpu, &m, "w").unwrap().parts(), 7);
    for ((q, s), whole) in inputs.iter().zip(&whole) {
        assert_eq!(&gpu_ternary(&gpu, &m, q, s), whole, "{} tokens split into parts", s.len());
    }
}

#[test]
fn the_tiled_and_the_four_by_four_products_agree_bit_for_bit() {
    let Some(mut gpu) = gpu() else { return };
    let mut rng = SmallRng::seed_from_u64(10);
    let (rows, cols, n) = (70, 640, 40);
    let m = ternary_matrix(&mut rng, rows, cols, 0.5);
    let q: Vec<i8> = (0..n * cols).map(|_| rng.random_range(-128..=127)).collect();
    let s: Vec<f32> = (0..n).map(|_| rng.random_range(0.5..90.0)).collect();
    let tiled = gpu_ternary(&gpu, &m, &q, &s);
    gpu.tile_from(usize::MAX);
    assert_eq!(gpu_ternary(&gpu, &m, &q, &s), tiled);
}

#[test]
fn ternary_with_a_scale_per_block() {
    let Some(gpu) = gpu() else { return };
    let mut rng = SmallRng::seed_from_u64(3);
    let (rows, cols, n) = (9, 512, 3);
    // TQ2_0 blocks whose scales differ keep one scale per 256 columns.
    let mut bytes = Vec::new();
    for _ in 0..rows * cols / 256 {
        for _ in 0..64 {
            let codes: [u8; 4] = std::array::from_fn(|_| rng.random_range(0..3));
            bytes.push(codes[0] | codes[1] << 2 | codes[2] << 4 | codes[3] << 6);
        }
        bytes.extend_from_slice(&f16::from_f32(rng.random_range(0.1..2.0)).to_le_bytes());
    }
    let m = TernaryMatrix::from_tq2_0(&bytes, rows, cols).unwrap();
    assert!(m.block_scales().is_some());
    for n in [n, 1, 35] {
        let q: Vec<i8> = (0..n * cols).map(|_| rng.random_range(-128..=127)).collect();
        let s: Vec<f32> = (0..n).map(|_| rng.random_range(0.5..90.0)).collect();
        let mut want = vec![0.0; n * rows];
        k::ternary_gemm(&m, &q, &s, &mut want);
        assert_close(&format!("ternary, block scales, {n} tokens"), &gpu_ternary(&gpu, &m, &q, &s), &want, NMSE_FLOAT);
    }
}

#[test]
fn quantize_matches_the_kernels() {
    let Some(gpu) = gpu() else { return };
    let mut rng = SmallRng::seed_from_u64(4);
    for (rows, cols, words) in [(1, 2560, 640), (5, 300, 96), (3, 6912, 1728)] {
        let mut x = floats(&mut rng, rows * cols, 3.0);
        // a zero at a row's start, and an all-zero row
        x[0] = 0.0;
        if rows > 2 {
            x[2 * cols..3 * cols].fill(0.0);
        }
        let xb = gpu.upload("x", &x);
        let out = Quantized::new(&gpu, rows, words);
        let mut step = Step::new(&gpu);
        step.quantize(&xb, cols, rows, cols, &out);
        let (qid, sid) = (step.read(&out.q, 0, rows * words), step.read(&out.s, 0, rows));
        let mut reads = step.finish();
        let (q, s): (Vec<u32>, Vec<f32>) = (reads.take(qid).iter().map(|v| v.to_bits()).collect(), reads.take(sid));
        let sums = gpu.read_f32(&out.sum, 0, rows).iter().map(|v| v.to_bits() as i32).collect::<Vec<_>>();
        for r in 0..rows {
            let mut want = vec![0i8; cols];
            let want_s = k::quantize_row_i8(&x[r * cols..(r + 1) * cols], &mut want);
            assert!((s[r] - want_s).abs() <= want_s * 1e-6, "row {r}: scale {} vs {want_s}", s[r]);
            let got: Vec<i8> = (0..words * 4).map(|c| (q[r * words + c / 4] >> (8 * (c % 4))) as u8 as i8).collect();
            assert!(got[cols..].iter().all(|&v| v == 0), "row {r}: padding");
            let off = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert_eq!(off, 0, "row {r}: {off} of {cols} values differ");
            assert_eq!(sums[r], want.iter().map(|&v| v as i32).sum::<i32>(), "row {r}: sum");
        }
    }
}

#[test]
fn norm_then_quantize_in_one_dispatch_matches_the_kernels() {
    let Some(gpu) = gpu() else { return };
    let mut rng = SmallRng::seed_from_u64(9);
    let (rows, cols, words) = (4, 2560, 640);
    let x = floats(&mut rng, rows * cols, 3.0);
    let weight = floats(&mut rng, cols, 2.0);
    let (xb, wb) = (gpu.upload("x", &x), gpu.upload("w", &weight));
    let out = Quantized::new(&gpu, rows, words);
    let mut step = Step::new(&gpu);
    step.norm_quantize(&xb, cols, &wb, 1e-6, rows, cols, &out);
    let (qid, sid) = (step.read(&out.q, 0, rows * words), step.read(&out.s, 0, rows));
    let mut reads = step.finish();
    let (q, s): (Vec<u32>, Vec<f32>) = (reads.take(qid).iter().map(|v| v.to_bits()).collect(), reads.take(sid));
    let mut off = 0;
    for r in 0..rows {
        let mut normed = vec![0.0; cols];
        k::rmsnorm(&x[r * cols..(r + 1) * cols], &weight, 1e-6, &mut normed);
        let mut want = vec![0i8; cols];
        let want_s = k::quantize_row_i8(&normed, &mut want);
        assert!((s[r] - want_s).abs() <= want_s * 1e-5, "row {r}: scale {} vs {want_s}", s[r]);
        for (c, &w) in want.iter().enumerate() {
            let got = (q[r * words + c / 4] >> (8 * (c % 4))) as u8 as i8;
            assert!((got as i32 - w as i32).abs() <= 1, "row {r} col {c}: {got} vs {w}");
            off += usize::from(got != w);
        }
    }
    // The norm's sum runs in another order: a value on a rounding boundary
    // may go the other way, rarely.
    assert!(off * 1000 <= rows * cols, "{off} of {} values differ by one", rows * cols);
}

#[test]
fn rmsnorm_gates_and_residual_match_the_kernels() {
    let Some(gpu) = gpu() else { return };
    let mut rng = SmallRng::seed_from_u64(5);
    let (rows, cols) = (3, 1000);
    let x = floats(&mut rng, rows * cols, 2.0);
    let weight = floats(&mut rng, cols, 1.5);
    let y = floats(&mut rng, rows * cols, 2.0);
    let (xb, wb, yb) = (gpu.upload("x", &x), gpu.upload("w", &weight), gpu.upload("y", &y));
    let (norm, relu2, silu) = (
        gpu.buffer("n", (rows * cols * 4) as u64),
        gpu.buffer("g", (rows * cols * 4) as u64),
        gpu.buffer("s", (rows * cols * 4) as u64),
    );
    let mut step = Step::new(&gpu);
    step.rmsnorm(&xb, cols, &wb, 1e-5, rows, cols, &norm, cols);
    step.gate(Gate::Relu2, &xb, &yb, &relu2, rows * cols);
    step.gate(Gate::Silu, &xb, &yb, &silu, rows * cols);
    step.add(&yb, &xb, rows * cols);
    let ids = [&norm, &relu2, &silu, &yb].map(|b| step.read(b, 0, rows * cols));
    let mut reads = step.finish();
    let [norm, relu2, silu, sum] = ids.map(|id| reads.take(id));
    let mut want = vec![0.0; rows * cols];
    for r in 0..rows {
        let s = r * cols..(r + 1) * cols;
        k::rmsnorm(&x[s.clone()], &weight, 1e-5, &mut want[s]);
    }
    assert_close("rmsnorm", &norm, &want, NMSE_FLOAT);
    k::relu2_gate(&x, &y, &mut want);
    assert_close("relu2 gate", &relu2, &want, NMSE_FLOAT);
    k::silu_gate(&x, &y, &mut want);
    assert_close("silu gate", &silu, &want, NMSE_FLOAT);
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    assert_eq!(sum, want, "residual add");
}

#[test]
fn rope_matches_the_kernels() {
    let Some(gpu) = gpu() else { return };
    let mut rng = SmallRng::seed_from_u64(6);
    let (n_heads, head_dim, rot_dim, theta) = (5, 64, 48, 500_000.0);
    let positions = [0usize, 1, 17, 4095];
    let rows = positions.len();
    let x = floats(&mut rng, rows * n_heads * head_dim, 2.0);
    let half = rot_dim / 2;
    let mut cos_sin = Vec::new();
    for &pos in &positions {
        for i in 0..half {
            let (c, s) = k::rope_cos_sin(i, rot_dim, pos, theta);
            cos_sin.extend([c, s]);
        }
    }
    let (xb, cs) = (gpu.upload("x", &x), gpu.upload("cs", &cos_sin));
    let mut step = Step::new(&gpu);
    step.rope(&xb, &cs, rows, n_heads, head_dim, half);
    let id = step.read(&xb, 0, x.len());
    let got = step.finish().take(id);
    let mut want = x.clone();
    for (r, &pos) in positions.iter().enumerate() {
        let d = n_heads * head_dim;
        k::rope_neox(&mut want[r * d..(r + 1) * d], n_heads, head_dim, rot_dim, pos, theta);
    }
    assert_close("rope", &got, &want, NMSE_FLOAT);
}

#[test]
fn keys_values_and_attention_over_paged_memory_match_the_kernels() {
    let Some(gpu) = gpu() else { return };
    let mut rng = SmallRng::seed_from_u64(7);
    let (n_heads, n_kv, head_dim) = (6, 2, 64);
    let kv_dim = n_kv * head_dim;
    let blocks_total = 12;
    // Two sequences with blocks scattered through the memory: one of 70
    // cached positions whose last 3 are this step's rows, one decoding at 21.
    let tables = [vec![7u32, 2, 9, 0, 11], vec![4u32, 10]];
    let lens = [70usize, 21];
    let mut k_mem = floats(&mut rng, blocks_total * 16 * kv_dim, 1.0);
    let mut v_mem = floats(&mut rng, blocks_total * 16 * kv_dim, 1.0);
    let rows: Vec<(usize, usize)> = vec![(0, 67), (0, 68), (0, 69), (1, 20)];
    let n = rows.len();
    let new_k = floats(&mut rng, n * kv_dim, 1.0);
    let new_v = floats(&mut rng, n * kv_dim, 1.0);
    let q = floats(&mut rng, n * n_heads * head_dim, 1.0);
    let slot = |seq: usize, pos: usize| tables[seq][pos / 16] as usize * 16 + pos % 16;
    let slots: Vec<u32> = rows.iter().map(|&(s, p)| slot(s, p) as u32).collect();
    let flat: Vec<u32> = tables.concat();
    let meta: Vec<u32> =
        rows.iter().flat_map(|&(s, p)| [if s == 0 { 0 } else { tables[0].len() as u32 }, p as u32 + 1]).collect();

    let (kb, vb) = (gpu.upload("k mem", &k_mem), gpu.upload("v mem", &v_mem));
    let (nk, nv, qb) = (gpu.upload("k", &new_k), gpu.upload("v", &new_v), gpu.upload("q", &q));
    let (sb, mb, tb) = (gpu.upload("slots", &slots), gpu.upload("meta", &meta), gpu.upload("tables", &flat));
    let out = gpu.buffer("out", (q.len() * 4) as u64);
    let mut step = Step::new(&gpu);
    step.kv_write(&nk, &nv, &sb, &kb, &vb, n, kv_dim);
    step.attention(&qb, &mb, &tb, &kb, &vb, &out, n, (n_heads, n_kv, head_dim));
    let (kid, oid) = (step.read(&kb, 0, k_mem.len()), step.read(&out, 0, q.len()));
    let mut reads = step.finish();
    let (got_k, got) = (reads.take(kid), reads.take(oid));

    for (r, &s) in slots.iter().enumerate() {
        let s = s as usize;
        k_mem[s * kv_dim..(s + 1) * kv_dim].copy_from_slice(&new_k[r * kv_dim..(r + 1) * kv_dim]);
        v_mem[s * kv_dim..(s + 1) * kv_dim].copy_from_slice(&new_v[r * kv_dim..(r + 1) * kv_dim]);
    }
    assert_eq!(got_k, k_mem, "keys written to their slots");
    let qd = n_heads * head_dim;
    let mut want = vec![0.0; q.len()];
    let mut first = 0;
    for (seq, table) in tables.iter().enumerate() {
        let count = rows.iter().filter(|r| r.0 == seq).count();
        let kbl: Vec<&[f32]> =
            table.iter().map(|&b| &k_mem[b as usize * 16 * kv_dim..(b as usize + 1) * 16 * kv_dim]).collect();
        let vbl: Vec<&[f32]> =
            table.iter().map(|&b| &v_mem[b as usize * 16 * kv_dim..(b as usize + 1) * 16 * kv_dim]).collect();
        let kv = KvBlocks { k: &kbl, v: &vbl, block_len: 16, len: lens[seq], row_stride: kv_dim };
        let mut scratch = vec![0.0; count * n_heads * lens[seq]];
        let rows_q = &q[first * qd..(first + count) * qd];
        k::attention(
            rows_q,
            count,
            kv,
            n_heads,
            n_kv,
            head_dim,
            &mut scratch,
            &mut want[first * qd..(first + count) * qd],
        );
        first += count;
    }
    assert_close("attention", &got, &want, NMSE_SUM);
}

#[test]
fn dense_heads_match_the_kernels_and_split_across_bindings() {
    let Some(mut gpu) = gpu() else { return };
    let mut rng = SmallRng::seed_from_u64(8);
    let (rows, cols, n) = (103, 256, 5);
    let w = floats(&mut rng, rows * cols, 1.0);
    let w16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
    let row_bytes = k::q8_0_row_bytes(cols);
    let mut w8 = vec![0u8; rows * row_bytes];
    for (r, dst) in w8.chunks_exact_mut(row_bytes).enumerate() {
        k::quantize_row_q8_0(&w[r * cols..(r + 1) * cols], dst);
    }
    let x = floats(&mut rng, n * cols, 1.0);
    let xb = gpu.upload("x", &x);
    for (split, n) in [(false, n), (false, 1), (true, n), (true, 1)] {
        if split {
            gpu.limit_binding(10 * cols as u64 * 4);
        }
        for (name, dense) in [("f32", Dense::F32(&w)), ("f16", Dense::F16(&w16)), ("q8_0", Dense::Q8_0(&w8))] {
            let head = DenseWeights::upload(&gpu, dense, rows, cols, name).unwrap();
            assert_eq!(head.parts() > 1, split, "{name}: parts");
            let out = gpu.buffer("out", (n * rows * 4) as u64);
            let mut step = Step::new(&gpu);
            step.dense(&head, &xb, n, &out);
            let id = step.read(&out, 0, n * rows);
            let got = step.finish().take(id);
            let mut want = vec![0.0; n * rows];
            match dense {
                Dense::F32(w) => k::matmul_f32(w, rows, cols, &x[..n * cols], &mut want),
                Dense::F16(w) => k::matmul_f16(w, rows, cols, &x[..n * cols], &mut want),
                Dense::Q8_0(w) => k::matmul_q8_0(w, rows, cols, &x[..n * cols], &mut want),
            }
            assert_close(&format!("dense {name}, split {split}, {n} tokens"), &got, &want, NMSE_SUM);
        }
    }
}

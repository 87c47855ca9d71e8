//! Float kernels (norms, RoPE, softmax, attention, gates, dense products and
//! row lookups) against naive f64 computations, within named tolerances
//! reported as normalised MSE.

mod common;

use common::*;
use half::{bf16, f16};
use tern_kernels::*;

/// f32 kernels against f64 math: accumulated rounding only.
const MAX_F32_KERNEL_NMSE: f64 = 1e-10;
/// Dense dot products: a long f32 sum whose terms may cancel.
const MAX_DENSE_DOT_NMSE: f64 = 1e-8;
/// Attention chains a softmax and two dot products in f32.
const MAX_ATTENTION_NMSE: f64 = 1e-9;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn rmsnorm_matches_f64_at_awkward_sizes() {
    let mut rng = rng(21);
    for &n in &AWKWARD_COLS {
        let x = random_f32(&mut rng, n, 4.0);
        let w = random_f32(&mut rng, n, 2.0);
        let mut out = vec![0f32; n];
        rmsnorm(&x, &w, 1e-5, &mut out);
        let ms: f64 = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / n as f64;
        let inv = 1.0 / (ms + 1e-5).sqrt();
        let want: Vec<f64> = x.iter().zip(&w).map(|(&a, &b)| a as f64 * inv * b as f64).collect();
        let err = nmse(&out, &want);
        assert!(err < MAX_F32_KERNEL_NMSE, "n {n}: nmse {err:e}");
    }
}

#[test]
fn rope_neox_rotates_pairs_half_a_rotation_apart() {
    let mut rng = rng(22);
    for &(n_heads, head_dim, rot_dim) in &[(1, 2, 2), (3, 8, 8), (2, 16, 8), (5, 128, 128), (1, 6, 4)] {
        for pos in [0, 1, 17, 4095] {
            let x0 = random_f32(&mut rng, n_heads * head_dim, 1.0);
            let mut x = x0.clone();
            let theta = 500000.0f32;
            rope_neox(&mut x, n_heads, head_dim, rot_dim, pos, theta);
            let mut want = f64s(&x0);
            let half = rot_dim / 2;
            for h in 0..n_heads {
                for i in 0..half {
                    let ang = pos as f64 * (theta as f64).powf(-2.0 * i as f64 / rot_dim as f64);
                    let (a, b) = (x0[h * head_dim + i] as f64, x0[h * head_dim + i + half] as f64);
                    want[h * head_dim + i] = a * ang.cos() - b * ang.sin();
                    want[h * head_dim + i + half] = a * ang.sin() + b * ang.cos();
                }
            }
            let err = nmse(&x, &want);
            assert!(err < MAX_F32_KERNEL_NMSE, "({n_heads}, {head_dim}, {rot_dim}) pos {pos}: nmse {err:e}");
            // Dims past rot_dim pass through untouched.
            for h in 0..n_heads {
                assert_eq!(
                    x[h * head_dim + rot_dim..(h + 1) * head_dim],
                    x0[h * head_dim + rot_dim..(h + 1) * head_dim]
                );
            }
            if pos == 0 {
                assert_eq!(x, x0, "position 0 is the identity");
            }
        }
    }
}

#[test]
fn softmax_sums_to_one_and_survives_large_logits() {
    let mut rng = rng(23);
    for &n in &AWKWARD_COLS {
        let mut x = random_f32(&mut rng, n, 30.0);
        x[0] += 1000.0;
        let x0 = x.clone();
        softmax(&mut x);
        let max = x0.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let z: f64 = x0.iter().map(|&v| (v as f64 - max).exp()).sum();
        let want: Vec<f64> = x0.iter().map(|&v| (v as f64 - max).exp() / z).collect();
        let err = nmse(&x, &want);
        assert!(err < MAX_F32_KERNEL_NMSE, "n {n}: nmse {err:e}");
        assert!(x.iter().all(|v| v.is_finite()));
    }
    softmax(&mut []);
}

/// q (n_heads, hd), k/v (t, n_kv, hd) -> (n_heads, hd), in f64.
fn naive_attention(q: &[f32], k: &[f32], v: &[f32], t: usize, n_heads: usize, n_kv: usize, hd: usize) -> Vec<f64> {
    let mut out = vec![0f64; n_heads * hd];
    for h in 0..n_heads {
        let kvh = h * n_kv / n_heads;
        let scores: Vec<f64> = (0..t)
            .map(|j| {
                (0..hd).map(|d| q[h * hd + d] as f64 * k[(j * n_kv + kvh) * hd + d] as f64).sum::<f64>()
                    / (hd as f64).sqrt()
            })
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = scores.iter().map(|s| (s - max).exp()).sum();
        for j in 0..t {
            let p = (scores[j] - max).exp() / z;
            for d in 0..hd {
                out[h * hd + d] += p * v[(j * n_kv + kvh) * hd + d] as f64;
            }
        }
    }
    out
}

/// t rows of `row` values from x (t, row), in blocks of `len` rows; the last
/// block is filled up with NaN (stale rows the kernels must not read).
fn in_blocks(x: &[f32], t: usize, row: usize, len: usize) -> Vec<Vec<f32>> {
    (0..t.div_ceil(len))
        .map(|b| {
            let mut block = vec![f32::NAN; len * row];
            let rows = &x[b * len * row..t.min(b * len + len) * row];
            block[..rows.len()].copy_from_slice(rows);
            block
        })
        .collect()
}

#[test]
fn attention_matches_f64_with_gqa() {
    let mut rng = rng(24);
    let shapes = [(1, 1, 1), (4, 4, 3), (4, 2, 17), (20, 5, 128), (3, 1, 33)];
    for ((n_heads, n_kv, hd), (name, kern)) in
        shapes.into_iter().flat_map(|s| dense_variants().into_iter().map(move |v| (s, v)))
    {
        for t in [1, 3, 17, 33] {
            let q = random_f32(&mut rng, n_heads * hd, 1.0);
            let k = random_f32(&mut rng, t * n_kv * hd, 1.0);
            let v = random_f32(&mut rng, t * n_kv * hd, 1.0);
            let mut scratch = vec![0f32; n_heads / n_kv * t + 3];
            let want = naive_attention(&q, &k, &v, t, n_heads, n_kv, hd);
            let mut out = vec![f32::NAN; n_heads * hd];
            let (kb, vb) = ([&k[..]], [&v[..]]);
            (kern.attention)(&q, 1, KvBlocks::contiguous(&kb, &vb, t), n_heads, n_kv, hd, &mut scratch, &mut out);
            let err = nmse(&out, &want);
            assert!(err < MAX_ATTENTION_NMSE, "{name} ({n_heads}, {n_kv}, {hd}) t {t}: nmse {err:e}");
            // The same positions in blocks of 4, the last one partly used and
            // with stale rows after the end, must give the same bits.
            let row = n_kv * hd;
            let (kp, vp) = (in_blocks(&k, t, row, 4), in_blocks(&v, t, row, 4));
            let kb: Vec<&[f32]> = kp.iter().map(|b| &b[..]).collect();
            let vb: Vec<&[f32]> = vp.iter().map(|b| &b[..]).collect();
            let mut blocked = vec![f32::NAN; n_heads * hd];
            let kv = KvBlocks { k: &kb, v: &vb, block_len: 4, len: t, row_stride: row };
            (kern.attention)(&q, 1, kv, n_heads, n_kv, hd, &mut scratch, &mut blocked);
            assert_eq!(out, blocked, "{name} ({n_heads}, {n_kv}, {hd}) t {t}: blocks changed the result");
        }
    }
}

#[test]
fn attention_rows_give_each_query_the_bits_it_gets_alone() {
    let mut rng = rng(25);
    for ((n_heads, n_kv, hd), (name, kern)) in [(4, 2, 17), (20, 5, 128), (3, 3, 8)]
        .into_iter()
        .flat_map(|s| dense_variants().into_iter().map(move |v| (s, v)))
    {
        let (qd, row) = (n_heads * hd, n_kv * hd);
        let t = 37;
        let k = random_f32(&mut rng, t * row, 1.0);
        let v = random_f32(&mut rng, t * row, 1.0);
        // Blocks of 8 positions, the last one partly used.
        let (kp, vp) = (in_blocks(&k, t, row, 8), in_blocks(&v, t, row, 8));
        let kb: Vec<&[f32]> = kp.iter().map(|b| &b[..]).collect();
        let vb: Vec<&[f32]> = vp.iter().map(|b| &b[..]).collect();
        // One row through a window of each kv head alone gives that head's bits.
        {
            let q = random_f32(&mut rng, qd, 1.0);
            let mut scratch = vec![0f32; (n_heads / n_kv) * t];
            let mut whole = vec![f32::NAN; qd];
            let kv = KvBlocks { k: &kb, v: &vb, block_len: 8, len: t, row_stride: row };
            (kern.attention)(&q, 1, kv, n_heads, n_kv, hd, &mut scratch, &mut whole);
            let g = n_heads / n_kv;
            for h in 0..n_kv {
                let kw: Vec<&[f32]> = kb.iter().map(|b| &b[h * hd..]).collect();
                let vw: Vec<&[f32]> = vb.iter().map(|b| &b[h * hd..]).collect();
                let kv = KvBlocks { k: &kw, v: &vw, block_len: 8, len: t, row_stride: row };
                let mut one = vec![f32::NAN; g * hd];
                (kern.attention)(&q[h * g * hd..(h + 1) * g * hd], 1, kv, g, 1, hd, &mut scratch, &mut one);
                assert_eq!(
                    one,
                    whole[h * g * hd..(h + 1) * g * hd],
                    "{name} ({n_heads}, {n_kv}, {hd}): kv head {h} alone"
                );
            }
        }
        for rows in [1, 2, 7, 16, t] {
            let q = random_f32(&mut rng, rows * qd, 1.0);
            let mut scratch = vec![0f32; rows * (n_heads / n_kv) * t];
            let mut together = vec![f32::NAN; rows * qd];
            let kv = KvBlocks { k: &kb, v: &vb, block_len: 8, len: t, row_stride: row };
            (kern.attention)(&q, rows, kv, n_heads, n_kv, hd, &mut scratch, &mut together);
            for r in 0..rows {
                let len = t - rows + r + 1;
                let mut alone = vec![f32::NAN; qd];
                let kv = KvBlocks { k: &kb, v: &vb, block_len: 8, len, row_stride: row };
                (kern.attention)(&q[r * qd..(r + 1) * qd], 1, kv, n_heads, n_kv, hd, &mut scratch, &mut alone);
                assert_eq!(
                    alone,
                    together[r * qd..(r + 1) * qd],
                    "{name} ({n_heads}, {n_kv}, {hd}): row {r} of {rows} differs from the query alone"
                );
            }
        }
    }
}

#[test]
fn attention_over_one_position_returns_its_value() {
    let (n_heads, n_kv, hd) = (4, 2, 3);
    let q = [0.3f32; 12];
    let k = [1.0f32; 6];
    let v: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let mut out = [0f32; 12];
    let (kb, vb) = ([&k[..]], [&v[..]]);
    attention(&q, 1, KvBlocks::contiguous(&kb, &vb, 1), n_heads, n_kv, hd, &mut [0.0; 2], &mut out);
    assert_eq!(out, [0., 1., 2., 0., 1., 2., 3., 4., 5., 3., 4., 5.]);
}

#[test]
fn gates_apply_relu2_and_silu() {
    let g = [-2.0f32, -0.0, 0.5, 3.0];
    let u = [5.0f32, 1.0, 2.0, -1.0];
    let mut out = [0f32; 4];
    relu2_gate(&g, &u, &mut out);
    assert_eq!(out, [0.0, 0.0, 0.5, -9.0]);
    silu_gate(&g, &u, &mut out);
    let want: Vec<f64> = g.iter().zip(&u).map(|(&a, &b)| a as f64 / (1.0 + (-a as f64).exp()) * b as f64).collect();
    let err = nmse(&out, &want);
    assert!(err < MAX_F32_KERNEL_NMSE, "nmse {err:e}");
}

/// W (rows, cols) @ x (cols,) in f64 from a value getter.
fn naive_matvec(rows: usize, cols: usize, w: impl Fn(usize, usize) -> f64, x: &[f32]) -> Vec<f64> {
    (0..rows).map(|r| (0..cols).map(|c| w(r, c) * x[c] as f64).sum()).collect()
}

/// The dense products under test: the crate's (dispatched, threaded), and
/// each variant this CPU can run (the reference among them).
fn dense_variants() -> Vec<(&'static str, dispatch::Kernels)> {
    let public = dispatch::Kernels { matvec_f16, matvec_f32, matvec_q8_0, attention, ..dispatch::Kernels::REFERENCE };
    let mut v = vec![("public", public)];
    v.extend(runnable_variants("dense products").into_iter().map(|variant| (variant.name, variant.kernels)));
    v
}

/// Awkward sizes plus one large enough to be split over threads.
fn dense_shapes() -> Vec<(usize, usize)> {
    let mut shapes: Vec<_> = AWKWARD_ROWS.iter().flat_map(|&r| AWKWARD_COLS.iter().map(move |&c| (r, c))).collect();
    shapes.push((700, 544));
    shapes
}

#[test]
fn dense_matvecs_match_f64_at_awkward_sizes() {
    let mut rng = rng(25);
    for (name, k) in dense_variants() {
        for (rows, cols) in dense_shapes() {
            let wf = random_f32(&mut rng, rows * cols, 1.0);
            let x = random_f32(&mut rng, cols, 1.0);
            let mut out = vec![f32::NAN; rows];

            (k.matvec_f32)(&wf, rows, cols, &x, &mut out);
            let err = nmse(&out, &naive_matvec(rows, cols, |r, c| wf[r * cols + c] as f64, &x));
            assert!(err < MAX_DENSE_DOT_NMSE, "{name} f32 ({rows}, {cols}): nmse {err:e}");

            let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
            (k.matvec_f16)(&wh, rows, cols, &x, &mut out);
            let err = nmse(&out, &naive_matvec(rows, cols, |r, c| wh[r * cols + c].to_f64(), &x));
            assert!(err < MAX_DENSE_DOT_NMSE, "{name} f16 ({rows}, {cols}): nmse {err:e}");
        }
    }
}

/// values (rows, cols) i8 and d (rows, cols/32) -> raw Q8_0 bytes
fn pack_q8_0(values: &[i8], d: &[f16]) -> Vec<u8> {
    let mut out = Vec::new();
    for (block, db) in values.chunks(Q8_0_BLOCK).zip(d) {
        out.extend_from_slice(&db.to_le_bytes());
        out.extend(block.iter().map(|&v| v as u8));
    }
    out
}

#[test]
fn q8_0_matvec_and_rows_match_the_gguf_layout() {
    let mut rng = rng(26);
    let shapes = AWKWARD_ROWS.iter().flat_map(|&r| [32, 64, 96, 288].map(|c| (r, c))).chain([(700, 544)]);
    for (rows, cols) in shapes {
        for (name, k) in dense_variants() {
            let values = random_q(&mut rng, rows * cols);
            let d: Vec<f16> =
                (0..rows * cols / Q8_0_BLOCK).map(|i| f16::from_f32(0.001 * (i % 7 + 1) as f32)).collect();
            let bytes = pack_q8_0(&values, &d);
            assert_eq!(bytes.len(), rows * q8_0_row_bytes(cols));
            let value = |r: usize, c: usize| d[(r * cols + c) / Q8_0_BLOCK].to_f64() * values[r * cols + c] as f64;
            let x = random_f32(&mut rng, cols, 1.0);
            let mut out = vec![f32::NAN; rows];
            (k.matvec_q8_0)(&bytes, rows, cols, &x, &mut out);
            let err = nmse(&out, &naive_matvec(rows, cols, value, &x));
            assert!(err < MAX_DENSE_DOT_NMSE, "{name} ({rows}, {cols}): nmse {err:e}");
            let mut row = vec![f32::NAN; cols];
            for r in [0, rows - 1] {
                row_q8_0(&bytes, cols, r, &mut row);
                let want: Vec<f32> = (0..cols).map(|c| value(r, c) as f32).collect();
                assert_eq!(row, want, "row {r}");
            }
        }
    }
}

#[test]
fn f16_and_bf16_rows_decode_exactly() {
    let mut rng = rng(27);
    let (rows, cols) = (3, 17);
    let wf = random_f32(&mut rng, rows * cols, 100.0);
    let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
    let wb: Vec<u8> = wf.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
    let mut out = vec![0f32; cols];
    for r in 0..rows {
        row_f16(&wh, cols, r, &mut out);
        assert_eq!(out, wh[r * cols..(r + 1) * cols].iter().map(|v| v.to_f32()).collect::<Vec<_>>());
        row_bf16(&wb, cols, r, &mut out);
        let want: Vec<f32> = wf[r * cols..(r + 1) * cols].iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
        assert_eq!(out, want);
    }
}

#[test]
#[should_panic(expected = "cols a multiple of 32")]
fn q8_0_matvec_panics_on_cols_off_the_block() {
    matvec_q8_0(&[0u8; 34], 1, 31, &[0.0; 31], &mut [0.0]);
}

#[test]
fn q8_0_quantisation_round_trips_within_half_a_step() {
    let mut rng = rng(27);
    let cols = 96;
    let mut x = random_f32(&mut rng, cols, 2.0);
    x[32..64].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
    let mut bytes = vec![0u8; q8_0_row_bytes(cols)];
    quantize_row_q8_0(&x, &mut bytes);
    let mut back = vec![f32::NAN; cols];
    row_q8_0(&bytes, cols, 0, &mut back);
    for (b, (xb, yb)) in x.chunks(Q8_0_BLOCK).zip(back.chunks(Q8_0_BLOCK)).enumerate() {
        let absmax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        // d is rounded to f16 (relative error 2^-11), so allow a little over half a step.
        let step = absmax / 127.0;
        for (&a, &y) in xb.iter().zip(yb) {
            assert!((a - y).abs() <= step * 0.5 + absmax * 1e-3, "block {b}: {a} -> {y}");
        }
        if absmax == 0.0 {
            assert!(yb.iter().all(|&y| y == 0.0));
        }
    }
}

#[test]
fn dense_matmul_rows_equal_matvec_bit_for_bit() {
    let mut rng = rng(31);
    // Enough rows to be split over the pool and tiled, and an odd count.
    // 16 vectors and more (several token blocks), widths with a tail.
    for (rows, cols, n) in [
        (3, 32, 2),
        (7, 40, 4),
        (2000, 64, 5),
        (9001, 128, 3),
        (5, 72, 7),
        (1001, 160, 13),
        (130, 1100, 16),
        (70, 520, 33),
    ] {
        let wf = random_f32(&mut rng, rows * cols, 1.0);
        let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
        // Q8_0 rows are whole blocks; other widths test the products' tails.
        let whole_blocks = cols % Q8_0_BLOCK == 0;
        let mut wq = vec![0u8; if whole_blocks { rows * q8_0_row_bytes(cols) } else { 0 }];
        for (r, dst) in wq.chunks_exact_mut(q8_0_row_bytes(cols.next_multiple_of(Q8_0_BLOCK))).enumerate() {
            quantize_row_q8_0(&wf[r * cols..(r + 1) * cols], dst);
        }
        let x = random_f32(&mut rng, n * cols, 1.0);
        let check = |name: &str, mv: &dyn Fn(&[f32], &mut [f32]), mm: &dyn Fn(&[f32], &mut [f32])| {
            let mut batched = vec![f32::NAN; n * rows];
            mm(&x, &mut batched);
            for t in 0..n {
                let mut one = vec![f32::NAN; rows];
                mv(&x[t * cols..(t + 1) * cols], &mut one);
                assert!(
                    one.iter().zip(&batched[t * rows..(t + 1) * rows]).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{name} ({rows}, {cols}) vector {t} of {n}"
                );
            }
        };
        check("f16", &|x, o| matvec_f16(&wh, rows, cols, x, o), &|x, o| matmul_f16(&wh, rows, cols, x, o));
        check("f32", &|x, o| matvec_f32(&wf, rows, cols, x, o), &|x, o| matmul_f32(&wf, rows, cols, x, o));
        if whole_blocks {
            check("q8_0", &|x, o| matvec_q8_0(&wq, rows, cols, x, o), &|x, o| matmul_q8_0(&wq, rows, cols, x, o));
        }
    }
}

//! Ternary GEMV/GEMM and int8 quantisation. Integer accumulation must be
//! exact, so every variant is compared bit for bit with a naive i32 sum.

mod common;

use common::*;
use half::f16;
use std::ops::Range;
use tern_kernels::{quantize_row_i8, reference, TernaryMatrix, QUANT_MIN_ABSMAX, TQ_BLOCK};

type GemvFn = Box<dyn Fn(&TernaryMatrix, &[i8], f32, &mut [f32])>;
type GemmFn = Box<dyn Fn(&TernaryMatrix, &[i8], &[f32], &mut [f32])>;
type RowsFn = fn(&TernaryMatrix, &[i8], &[f32], Range<usize>, &mut [f32]);

/// GEMV and GEMM built from one variant's `ternary_rows`, called on three
/// uneven row ranges so range handling is exercised too.
fn from_rows(rows_fn: RowsFn) -> (GemvFn, GemmFn) {
    let gemm = move |w: &TernaryMatrix, q: &[i8], s: &[f32], out: &mut [f32]| {
        let (n, rows) = (s.len(), w.rows());
        let mut tmp = vec![f32::NAN; rows * n]; // tmp (rows, n)
        let cuts = [0, rows / 3, rows / 3 + rows / 2, rows];
        for c in cuts.windows(2) {
            rows_fn(w, q, s, c[0]..c[1], &mut tmp[c[0] * n..c[1] * n]);
        }
        for r in 0..rows {
            for t in 0..n {
                out[t * rows + r] = tmp[r * n + t];
            }
        }
    };
    (Box::new(move |w, q, s, out| gemm(w, q, &[s], out)), Box::new(gemm))
}

fn public() -> (GemvFn, GemmFn) {
    (Box::new(tern_kernels::ternary_gemv), Box::new(tern_kernels::ternary_gemm))
}

/// Runs `body` on the crate's products (dispatched and threaded) and on
/// each variant's `ternary_rows` this CPU can run; the line printed before
/// each run names the one a failure belongs to.
fn on_every_variant(test: &str, body: fn(GemvFn, GemmFn)) {
    eprintln!("{test}: dispatched");
    let (gemv, gemm) = public();
    body(gemv, gemm);
    for variant in runnable_variants(test) {
        eprintln!("{test}: {}", variant.name);
        let (gemv, gemm) = from_rows(variant.kernels.ternary_rows);
        body(gemv, gemm);
    }
}

/// One `#[test]` per behaviour, each run on every variant.
macro_rules! ternary_variant_tests {
    ($($name:ident => $body:ident;)*) => {
        $(#[test] fn $name() { on_every_variant(stringify!($name), $body) })*
    };
}

ternary_variant_tests! {
    gemv_is_exact_at_awkward_sizes => gemv_is_exact_at_awkward_sizes_on;
    gemv_is_exact_with_per_block_scales => gemv_is_exact_with_per_block_scales_on;
    gemv_handles_extreme_activations => gemv_handles_extreme_activations_on;
    gemm_matches_gemv_per_token => gemm_matches_gemv_per_token_on;
    large_products_match_the_reference => large_products_match_the_reference_on;
}

fn gemv_is_exact_at_awkward_sizes_on(gemv: GemvFn, _: GemmFn) {
    let mut rng = rng(11);
    for &rows in &AWKWARD_ROWS {
        for &cols in &AWKWARD_COLS {
            let values = random_ternary(&mut rng, rows * cols);
            let scale = 0.37f32;
            let w = TernaryMatrix::from_ternary(&values, rows, cols, scale).unwrap();
            let q = random_q(&mut rng, cols);
            let s = 42.5f32;
            let mut out = vec![f32::NAN; rows];
            gemv(&w, &q, s, &mut out);
            let dots = naive_ternary_dots(&values, rows, cols, &q);
            for r in 0..rows {
                let want = dots[r] as f32 * scale / s;
                assert_eq!(out[r].to_bits(), want.to_bits(), "({rows}, {cols}) row {r}: {} vs {want}", out[r]);
            }
        }
    }
}

fn gemv_is_exact_with_per_block_scales_on(gemv: GemvFn, _: GemmFn) {
    let mut rng = rng(12);
    let (rows, cols) = (5, 3 * TQ_BLOCK);
    let values = random_ternary(&mut rng, rows * cols);
    let blocks = cols / TQ_BLOCK;
    // TQ2_0 bytes with a different d per block force per-block scales.
    let d: Vec<f16> = (0..rows * blocks).map(|i| f16::from_f32(0.125 + i as f32 * 0.01)).collect();
    let mut bytes = Vec::new();
    for (block, db) in values.chunks(TQ_BLOCK).zip(&d) {
        let mut qs = [0u8; 64];
        for (e, &v) in block.iter().enumerate() {
            qs[32 * (e / 128) + e % 32] |= ((v + 1) as u8) << (2 * ((e % 128) / 32));
        }
        bytes.extend_from_slice(&qs);
        bytes.extend_from_slice(&db.to_le_bytes());
    }
    let w = TernaryMatrix::from_tq2_0(&bytes, rows, cols).unwrap();
    assert_eq!(w.tensor_scale(), None);
    let q = random_q(&mut rng, cols);
    let s = 7.0f32;
    let mut out = vec![f32::NAN; rows];
    gemv(&w, &q, s, &mut out);
    for r in 0..rows {
        let mut acc = 0f32;
        for b in 0..blocks {
            let dot: i32 = (b * TQ_BLOCK..(b + 1) * TQ_BLOCK).map(|c| values[r * cols + c] as i32 * q[c] as i32).sum();
            acc += dot as f32 * d[r * blocks + b].to_f32();
        }
        assert_eq!(out[r].to_bits(), (acc / s).to_bits(), "row {r}");
    }
}

fn gemv_handles_extreme_activations_on(gemv: GemvFn, _: GemmFn) {
    // Every weight +1 or -1 against every activation -128: the largest sums.
    for cols in [128, 129, 4096 + 33] {
        for sign in [-1i8, 1] {
            let w = TernaryMatrix::from_ternary(&vec![sign; cols], 1, cols, 1.0).unwrap();
            let q = vec![-128i8; cols];
            let mut out = [0f32];
            gemv(&w, &q, 1.0, &mut out);
            assert_eq!(out[0], (sign as i32 * -128 * cols as i32) as f32, "cols {cols} sign {sign}");
        }
    }
}

fn gemm_matches_gemv_per_token_on(gemv: GemvFn, gemm: GemmFn) {
    let mut rng = rng(13);
    for &(rows, cols) in &[(1, 1), (3, 17), (17, 129), (33, 256), (4, 385), (5, 3207)] {
        let values = random_ternary(&mut rng, rows * cols);
        let w = TernaryMatrix::from_ternary(&values, rows, cols, 0.9).unwrap();
        for n in [0, 1, 2, 3, 4, 5, 8, 9, 17] {
            let q = random_q(&mut rng, n * cols); // q (n, cols)
            let s: Vec<f32> = (0..n).map(|t| 1.0 + t as f32).collect(); // s (n,)
            let mut out = vec![f32::NAN; n * rows]; // out (n, rows)
            gemm(&w, &q, &s, &mut out);
            for t in 0..n {
                let mut want = vec![0f32; rows];
                gemv(&w, &q[t * cols..(t + 1) * cols], s[t], &mut want);
                assert_eq!(&out[t * rows..(t + 1) * rows], &want[..], "({rows}, {cols}) n {n} token {t}");
            }
        }
    }
}

/// Sizes big enough to be split over threads, to reach the i16 partial
/// sums' widening (8 groups) and to be taken in column chunks (more than
/// 24 groups), with per-tensor and per-block scales.
fn large_products_match_the_reference_on(gemv: GemvFn, gemm: GemmFn) {
    let mut rng = rng(16);
    let (rows, cols) = (130, 17 * TQ_BLOCK);
    let values = random_ternary(&mut rng, rows * cols);
    let w = TernaryMatrix::from_ternary(&values, rows, cols, 0.31).unwrap();
    let mut bytes = Vec::new();
    for (i, block) in values.chunks(TQ_BLOCK).enumerate() {
        let mut qs = [0u8; 64];
        for (e, &v) in block.iter().enumerate() {
            qs[32 * (e / 128) + e % 32] |= ((v + 1) as u8) << (2 * ((e % 128) / 32));
        }
        bytes.extend_from_slice(&qs);
        bytes.extend_from_slice(&f16::from_f32(0.5 + (i % 7) as f32 * 0.125).to_le_bytes());
    }
    let wb = TernaryMatrix::from_tq2_0(&bytes, rows, cols).unwrap();
    for w in [&w, &wb] {
        for n in [1, 6, 11] {
            let q = random_q(&mut rng, n * cols);
            let s: Vec<f32> = (0..n).map(|t| 3.0 + t as f32).collect();
            let mut want = vec![0f32; rows * n]; // (rows, n)
            reference::ternary_rows(w, &q, &s, 0..rows, &mut want);
            let mut got = vec![f32::NAN; n * rows]; // (n, rows)
            if n == 1 {
                gemv(w, &q, s[0], &mut got);
            } else {
                gemm(w, &q, &s, &mut got);
            }
            for r in 0..rows {
                for t in 0..n {
                    assert_eq!(got[t * rows + r].to_bits(), want[r * n + t].to_bits(), "row {r} token {t} n {n}");
                }
            }
        }
    }
}

#[test]
fn gemm_many_equals_gemm_of_each_matrix() {
    let mut rng = rng(17);
    let cols = 385;
    let shapes = [3, 130, 17];
    let mats: Vec<TernaryMatrix> = shapes
        .iter()
        .map(|&rows| TernaryMatrix::from_ternary(&random_ternary(&mut rng, rows * cols), rows, cols, 0.7).unwrap())
        .collect();
    for n in [0, 1, 2, 9] {
        let q = random_q(&mut rng, n * cols);
        let s: Vec<f32> = (0..n).map(|t| 2.0 + t as f32).collect();
        let mut outs: Vec<Vec<f32>> = mats.iter().map(|w| vec![f32::NAN; n * w.rows()]).collect();
        let mut products: Vec<(&TernaryMatrix, &mut [f32])> =
            mats.iter().zip(outs.iter_mut()).map(|(w, o)| (w, &mut o[..])).collect();
        tern_kernels::ternary_gemm_many(&mut products, &q, &s);
        for (w, got) in mats.iter().zip(&outs) {
            let mut want = vec![0f32; n * w.rows()];
            tern_kernels::ternary_gemm(w, &q, &s, &mut want);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "n {n} rows {}",
                w.rows()
            );
        }
    }
}

#[test]
#[should_panic(expected = "widths differ")]
fn gemm_many_refuses_matrices_of_different_widths() {
    let a = TernaryMatrix::from_ternary(&[1, 0, -1, 1], 2, 2, 1.0).unwrap();
    let b = TernaryMatrix::from_ternary(&[1, 0, -1], 1, 3, 1.0).unwrap();
    let (mut oa, mut ob) = ([0f32; 2], [0f32; 1]);
    tern_kernels::ternary_gemm_many(&mut [(&a, &mut oa[..]), (&b, &mut ob[..])], &[0; 2], &[1.0]);
}

#[test]
fn dispatch_keeps_the_last_variant_this_cpu_can_run() {
    let chosen = tern_kernels::dispatch::chosen();
    let want = runnable_variants("dispatch").last().expect("the reference always runs").name;
    assert_eq!(chosen.name, want);
    assert_eq!(tern_kernels::dispatch::VARIANTS[0].name, "reference");
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
    {
        let vnni = ["avx512f", "avx512bw", "avx512vl", "avx512vnni"].iter().all(|f| match *f {
            "avx512f" => std::is_x86_feature_detected!("avx512f"),
            "avx512bw" => std::is_x86_feature_detected!("avx512bw"),
            "avx512vl" => std::is_x86_feature_detected!("avx512vl"),
            _ => std::is_x86_feature_detected!("avx512vnni"),
        });
        let avx_vnni = std::is_x86_feature_detected!("avxvnni");
        // AMX's probe (CPUID, XCR0 and the OS's grant) has no stable
        // feature macro: the variant's own test stands in.
        let amx = tern_kernels::dispatch::VARIANTS.iter().any(|v| v.name == "amx" && v.available());
        assert_eq!(
            chosen.name,
            if amx {
                "amx"
            } else if vnni {
                "avx512"
            } else if avx_vnni {
                "avx-vnni"
            } else {
                "avx2"
            }
        );
    }
}

#[test]
fn quantize_rounds_ties_to_even_and_scales_by_absmax() {
    // absmax 127 -> s = 1, so q is x rounded.
    let x = [127.0f32, 2.5, -2.5, 3.5, -0.5, 0.49, -127.0];
    let mut q = [0i8; 7];
    let s = quantize_row_i8(&x, &mut q);
    assert_eq!(s, 1.0);
    assert_eq!(q, [127, 2, -2, 4, 0, 0, -127]);
}

#[test]
fn quantize_maps_absmax_to_127_at_awkward_sizes() {
    let mut rng = rng(14);
    for &n in &AWKWARD_COLS {
        let x = random_f32(&mut rng, n, 3.0);
        let mut q = vec![0i8; n];
        let s = quantize_row_i8(&x, &mut q);
        let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(s, 127.0 / absmax);
        assert_eq!(q.iter().map(|v| v.unsigned_abs()).max(), Some(127));
        for (&qi, &xi) in q.iter().zip(&x) {
            assert!((qi as f32 / s - xi).abs() <= 0.5 / s * (1.0 + 1e-6), "{xi} -> {qi}");
        }
    }
}

#[test]
fn quantize_of_zeros_is_zero_with_the_floor_scale() {
    let mut q = [9i8; 3];
    let s = quantize_row_i8(&[0.0; 3], &mut q);
    assert_eq!(q, [0; 3]);
    assert_eq!(s, 127.0 / QUANT_MIN_ABSMAX);
    let mut empty: [i8; 0] = [];
    assert!(quantize_row_i8(&[], &mut empty).is_finite());
}

#[test]
fn quantize_then_gemv_approximates_the_float_product() {
    // End to end: a ternary layer on float input, within quantisation noise.
    const MAX_QUANTISED_GEMV_NMSE: f64 = 1e-3;
    let mut rng = rng(15);
    let (rows, cols) = (33, 385);
    let values = random_ternary(&mut rng, rows * cols);
    let w = TernaryMatrix::from_ternary(&values, rows, cols, 0.25).unwrap();
    let x = random_f32(&mut rng, cols, 1.0);
    let mut q = vec![0i8; cols];
    let s = quantize_row_i8(&x, &mut q);
    let mut out = vec![0f32; rows];
    tern_kernels::ternary_gemv(&w, &q, s, &mut out);
    let want: Vec<f64> =
        (0..rows).map(|r| (0..cols).map(|c| values[r * cols + c] as f64 * 0.25 * x[c] as f64).sum()).collect();
    let err = nmse(&out, &want);
    assert!(err < MAX_QUANTISED_GEMV_NMSE, "nmse {err:e}");
}

/// Every quantiser this CPU can run, against the reference bit for bit,
/// specials included (NaN is ignored by the absmax and quantises to 0).
#[test]
fn quantize_variants_match_the_reference_exactly() {
    let mut variants: Vec<(&str, tern_kernels::dispatch::QuantizeFn)> = vec![("dispatched", quantize_row_i8)];
    let runnable = runnable_variants("quantize_variants_match_the_reference_exactly");
    variants.extend(runnable.iter().map(|v| (v.name, v.kernels.quantize_row_i8)));
    let mut rng = rng(17);
    let mut inputs: Vec<Vec<f32>> =
        AWKWARD_COLS.iter().chain(&[2560, 6912]).map(|&n| random_f32(&mut rng, n, 3.0)).collect();
    let mut specials = random_f32(&mut rng, 100, 1.0);
    specials[3] = f32::NAN;
    specials[40] = 0.5; // exact ties after scaling land on both sides
    specials[41] = -0.5;
    inputs.push(specials);
    let mut with_inf = random_f32(&mut rng, 64, 1.0);
    with_inf[10] = f32::INFINITY;
    inputs.push(with_inf);
    inputs.push(vec![0.0; 70]);
    for (name, f) in variants {
        for x in &inputs {
            let (mut want, mut got) = (vec![0i8; x.len()], vec![0i8; x.len()]);
            let s_want = reference::quantize_row_i8(x, &mut want);
            let s_got = f(x, &mut got);
            assert_eq!(s_got.to_bits(), s_want.to_bits(), "{name} n {}", x.len());
            assert_eq!(got, want, "{name} n {}", x.len());
        }
    }
}

/// A variant's whole batched product (`ternary_gemm`, AMX's tiles here):
/// bit-identical to the reference on every matrix it takes, including
/// rows and tokens past whole tiles and several matrices at once; the
/// products it leaves (per-block scales, widths not whole 256-column
/// pairs, too few tokens) come back untouched for `ternary_rows`.
#[test]
fn batched_products_of_every_variant_match_the_reference() {
    let mut rng = rng(19);
    for variant in runnable_variants("batched_products") {
        let Some(gemm) = variant.kernels.ternary_gemm else { continue };
        eprintln!("batched_products: {}", variant.name);
        for (cols, shapes, tokens) in [
            (256, vec![1, 17], vec![6, 7, 16, 17, 33]),
            (512, vec![33, 50, 64], vec![16, 31, 32, 48]),
            (2560, vec![130], vec![16, 40]),
        ] {
            let mats: Vec<TernaryMatrix> = shapes
                .iter()
                .map(|&rows| {
                    TernaryMatrix::from_ternary(&random_ternary(&mut rng, rows * cols), rows, cols, 0.37).unwrap()
                })
                .collect();
            for n in tokens {
                let q = random_q(&mut rng, n * cols);
                let s: Vec<f32> = (0..n).map(|t| 0.5 + t as f32 * 0.25).collect();
                let mut outs: Vec<Vec<f32>> = mats.iter().map(|w| vec![f32::NAN; n * w.rows()]).collect();
                let mut products: Vec<(&TernaryMatrix, &mut [f32])> =
                    mats.iter().zip(outs.iter_mut()).map(|(w, o)| (w, &mut o[..])).collect();
                assert!(gemm(&mut products, &q, &s), "{}: cols {cols} n {n} not taken", variant.name);
                for (w, got) in mats.iter().zip(&outs) {
                    let rows = w.rows();
                    let mut want = vec![0f32; rows * n]; // (rows, n)
                    reference::ternary_rows(w, &q, &s, 0..rows, &mut want);
                    for r in 0..rows {
                        for t in 0..n {
                            assert_eq!(
                                got[t * rows + r].to_bits(),
                                want[r * n + t].to_bits(),
                                "{}: cols {cols} rows {rows} n {n}: row {r} token {t}",
                                variant.name
                            );
                        }
                    }
                }
            }
        }
        // Left to ternary_rows: block scales, a width of 384, one token.
        let blocks = {
            let mut bytes = Vec::new();
            for i in 0..4 {
                bytes.extend_from_slice(&[0b1001_0110u8; 64]);
                bytes.extend_from_slice(&f16::from_f32(0.5 + i as f32).to_le_bytes());
            }
            TernaryMatrix::from_tq2_0(&bytes, 2, 512).unwrap()
        };
        let narrow = TernaryMatrix::from_ternary(&random_ternary(&mut rng, 4 * 384), 4, 384, 1.0).unwrap();
        let wide = TernaryMatrix::from_ternary(&random_ternary(&mut rng, 4 * 512), 4, 512, 1.0).unwrap();
        for (w, n) in [(&blocks, 16), (&narrow, 16), (&wide, 1)] {
            let (q, s) = (vec![1i8; n * w.cols()], vec![1.0f32; n]);
            let mut out = vec![f32::NAN; n * w.rows()];
            assert!(
                !gemm(&mut [(w, &mut out[..])], &q, &s),
                "{}: ({}, {}) n {n} taken",
                variant.name,
                w.rows(),
                w.cols()
            );
            assert!(out.iter().all(|v| v.is_nan()), "{}: a product left to ternary_rows was written", variant.name);
        }
    }
}

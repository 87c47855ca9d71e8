#![allow(unsafe_code)]
//! AVX-512 variants (x86_64): ternary products on VNNI, and F16 products
//! register-blocked over rows and tokens.
//!
//! Ternary products: `vpdpbusd` multiplies 64 unsigned codes by 64 signed
//! activations and adds each four products into one of 16 i32 lanes, in
//! one instruction. No i16 partial sums, no widening: each row and token's
//! sums stay in one 512-bit accumulator, two rows by up to eight tokens at
//! once, so each code vector serves eight tokens and each activation load
//! two rows.
//!
//! The kernels' layout packs a 128-column group into 32 bytes, four runs of
//! 32 columns in the bit pairs of each byte. One 64-byte load holds two
//! groups, so each run of codes covers 32 columns of one group and 32 of
//! the next. [`arrange`] gives each token's activations once per call in
//! that order (the two groups' runs side by side), so every product reads
//! 64 contiguous bytes. A last odd group uses the 256-bit form
//! (AVX-512VL). Codes are weight + 1, and the driver takes Σ q back out, as
//! for AVX2: the sums are bit-identical to the reference.
//!
//! F16 products (the output head): 4 rows by up to 6 tokens at once, each
//! pair summed in one 16-lane f32 accumulator over the columns in order,
//! then its lanes, then the scalar tail. That order is the same for any
//! number of tokens, so a batched row equals the same row alone.

use crate::arch::driver::{self, Lines, Tile, TileKernel};
use crate::reference;
use crate::ternary::{TernaryMatrix, TERNARY_GROUP, TERNARY_GROUP_BYTES};
use half::f16;
use std::arch::x86_64::*;
use std::ops::Range;

/// Bytes ahead of the current groups that the loop prefetches into L1.
const PREFETCH_AHEAD: usize = 2048;
/// Bytes ahead that it also asks for into L2: far enough to cover
/// memory's latency on each row's stream, so the L1 prefetch finds its
/// lines in L2 (decode on the 2B-4T-shaped file: 0.72 to 0.84 of the read
/// bandwidth on one thread).
const PREFETCH_L2_AHEAD: usize = 8192;
/// Columns of two groups.
const PAIR: usize = 2 * TERNARY_GROUP;
/// Columns per run of one group.
const RUN: usize = TERNARY_GROUP / 4;

pub(crate) fn has_avx512_vnni() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
}

/// Whether the `avx512` variant runs here: these and the AVX2 set the
/// rest of its products come from.
pub(crate) fn available() -> bool {
    has_avx512_vnni() && crate::arch::x86_64::has_fma_f16c()
}

/// Rows `rows` of W @ q (n, cols) -> out (rows.len(), n). See
/// [`crate::reference::ternary_rows`].
pub fn ternary_rows(w: &TernaryMatrix, q: &[i8], s: &[f32], rows: Range<usize>, out: &mut [f32]) {
    if !has_avx512_vnni() {
        return crate::arch::x86_64::ternary_rows(w, q, s, rows, out);
    }
    // SAFETY: AVX-512 F, BW, VL and VNNI were detected above.
    unsafe { driver::ternary_rows::<Vnni>(w, q, s, rows, out) }
}

/// The AVX-512 VNNI inner kernel: [`pair_dots`].
struct Vnni;

impl TileKernel for Vnni {
    const SUMS_CODES: bool = true;
    const TILE: usize = 8;

    fn arrange(q: &[i8], cols: usize) -> Option<Lines> {
        Some(arrange(q, cols))
    }

    unsafe fn rows<const T: usize>(tile: &Tile, rows: Range<usize>, out: &mut [f32]) {
        // SAFETY: the caller guarantees AVX-512 F, BW, VL and VNNI.
        unsafe { rows_vnni::<T>(tile, rows, out) }
    }
}

/// Each token's activations (rows of `cols`) with every whole pair of
/// groups reordered run by run: run j of the first group, then run j of
/// the second. A last odd group and the tail stay in place.
fn arrange(q: &[i8], cols: usize) -> Lines {
    let mut lines = Lines::copy_of(q);
    let pairs = cols / PAIR;
    for (src, dst) in q.chunks_exact(cols).zip(lines.as_mut_slice().chunks_exact_mut(cols)) {
        for p in 0..pairs {
            let (src, dst) = (&src[p * PAIR..(p + 1) * PAIR], &mut dst[p * PAIR..(p + 1) * PAIR]);
            for (j, two_runs) in dst.chunks_exact_mut(2 * RUN).enumerate() {
                let (first, second) = two_runs.split_at_mut(RUN);
                first.copy_from_slice(&src[j * RUN..(j + 1) * RUN]);
                second.copy_from_slice(&src[TERNARY_GROUP + j * RUN..TERNARY_GROUP + (j + 1) * RUN]);
            }
        }
    }
    lines
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
fn rows_vnni<const T: usize>(tile: &Tile, rows: Range<usize>, out: &mut [f32]) {
    tile.row_blocks::<T, ROWS>(rows, out, |codes, q, groups| pair_dots::<T>(codes, q, groups))
}

/// Rows that share each activation load.
const ROWS: usize = 2;

/// Σ code·q over `groups` of [`ROWS`] packed rows for T tokens, q as
/// [`arrange`] left it. `groups` starts on a pair (the driver asks for
/// column chunks of whole pairs, or for one 256-column block).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
#[inline]
fn pair_dots<const T: usize>(codes: [&[u8]; ROWS], q: &[&[i8]; T], groups: Range<usize>) -> [[i32; T]; ROWS] {
    assert!(groups.start.is_multiple_of(2), "pair_dots: groups start inside a pair");
    assert!(codes.iter().all(|c| groups.end * TERNARY_GROUP_BYTES <= c.len()), "pair_dots: codes too short");
    assert!(q.iter().all(|qt| groups.end * TERNARY_GROUP <= qt.len()), "pair_dots: q too short");
    let low = _mm512_set1_epi8(0x03);
    let cp: [*const u8; ROWS] = std::array::from_fn(|k| codes[k].as_ptr());
    let qp: [*const i8; T] = std::array::from_fn(|t| q[t].as_ptr());
    // One chain per row and token (16 at the full tile) covers vpdpbusd's
    // latency; small tiles (decode) split each into runs 0, 2 and 1, 3.
    let split = T < 4;
    let mut acc = [[_mm512_setzero_si512(); T]; ROWS];
    let mut acc_odd = [[_mm512_setzero_si512(); T]; ROWS];
    let mut g = groups.start;
    while g + 2 <= groups.end {
        // SAFETY: g + 2 <= groups.end, and the slices were checked to hold
        // every group up to groups.end (asserts above).
        unsafe {
            let c: [[__m512i; 4]; ROWS] = std::array::from_fn(|k| {
                let packed = _mm512_loadu_si512(cp[k].add(g * TERNARY_GROUP_BYTES).cast());
                _mm_prefetch::<_MM_HINT_T0>(cp[k].wrapping_add(g * TERNARY_GROUP_BYTES + PREFETCH_AHEAD).cast());
                _mm_prefetch::<_MM_HINT_T1>(cp[k].wrapping_add(g * TERNARY_GROUP_BYTES + PREFETCH_L2_AHEAD).cast());
                // A 16-bit shift leaks bits across bytes; the mask drops them.
                [
                    _mm512_and_si512(packed, low),
                    _mm512_and_si512(_mm512_srli_epi16::<2>(packed), low),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low),
                    _mm512_and_si512(_mm512_srli_epi16::<6>(packed), low),
                ]
            });
            for t in 0..T {
                let qg = qp[t].add(g * TERNARY_GROUP);
                for j in 0..4 {
                    let qv = _mm512_loadu_si512(qg.add(j * 2 * RUN).cast());
                    for (k, ck) in c.iter().enumerate() {
                        if split && j % 2 == 1 {
                            acc_odd[k][t] = _mm512_dpbusd_epi32(acc_odd[k][t], ck[j], qv);
                        } else {
                            acc[k][t] = _mm512_dpbusd_epi32(acc[k][t], ck[j], qv);
                        }
                    }
                }
            }
        }
        g += 2;
    }
    let mut last = [[_mm256_setzero_si256(); T]; ROWS];
    if g < groups.end {
        // SAFETY: as above, for the one group g.
        unsafe {
            let low = _mm256_set1_epi8(0x03);
            for k in 0..ROWS {
                let packed = _mm256_loadu_si256(cp[k].add(g * TERNARY_GROUP_BYTES).cast());
                let c = [
                    _mm256_and_si256(packed, low),
                    _mm256_and_si256(_mm256_srli_epi16::<2>(packed), low),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low),
                    _mm256_and_si256(_mm256_srli_epi16::<6>(packed), low),
                ];
                for t in 0..T {
                    let qg = qp[t].add(g * TERNARY_GROUP);
                    for (j, cj) in c.into_iter().enumerate() {
                        last[k][t] = _mm256_dpbusd_epi32(last[k][t], cj, _mm256_loadu_si256(qg.add(j * RUN).cast()));
                    }
                }
            }
        }
    }
    let mut wide = [_mm512_setzero_si512(); 16];
    for k in 0..ROWS {
        for t in 0..T {
            let both = _mm512_add_epi32(acc[k][t], acc_odd[k][t]);
            wide[k * T + t] = _mm512_add_epi32(both, _mm512_zextsi256_si512(last[k][t]));
        }
    }
    let sums = if ROWS * T == 16 { sum_lanes_16(wide) } else { wide.map(|v| _mm512_reduce_add_epi32(v)) };
    std::array::from_fn(|k| std::array::from_fn(|t| sums[k * T + t]))
}

/// The lane sums of 16 vectors at once: a tree of interleaving adds, 45
/// operations instead of about 9 per vector.
#[target_feature(enable = "avx512f")]
#[inline]
fn sum_lanes_16(v: [__m512i; 16]) -> [i32; 16] {
    // Within each 128-bit lane: pairs[i] = [a0+a2, b0+b2, a1+a3, b1+b3] of
    // inputs a, b; quads[i] = the lane's sums of four inputs 4i..4i+4.
    let pairs: [__m512i; 8] = std::array::from_fn(|i| {
        let (a, b) = (v[2 * i], v[2 * i + 1]);
        _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b))
    });
    let quads: [__m512i; 4] = std::array::from_fn(|i| {
        let (a, b) = (pairs[2 * i], pairs[2 * i + 1]);
        _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
    });
    // fold(a, b)'s 128-bit lanes: [a0+a1, a2+a3, b0+b1, b2+b3]. Folding
    // twice leaves in lane j the totals of inputs 4j..4j+4.
    let fold = |a: __m512i, b: __m512i| {
        _mm512_add_epi32(_mm512_shuffle_i32x4::<0b10_00_10_00>(a, b), _mm512_shuffle_i32x4::<0b11_01_11_01>(a, b))
    };
    let all = fold(fold(quads[0], quads[1]), fold(quads[2], quads[3]));
    let mut out = [0i32; 16];
    // SAFETY: `out` is 64 writable bytes; storeu has no alignment needs.
    unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), all) };
    out
}

/// Rows of one F16 block.
const F16_ROWS: usize = 4;
/// Most tokens of one F16 block: 4 × 6 accumulators, 4 weight vectors and
/// one activation vector in 32 registers.
const F16_TOKENS: usize = 6;

/// W (rows, cols) f16 @ x (cols,) -> out (rows,): [`matmul_f16`] of one
/// vector.
pub fn matvec_f16(w: &[f16], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    matmul_f16(w, rows, cols, x, out)
}

/// W (rows, cols) f16 @ x (n, cols) -> out (n, rows), every row of the
/// result bit-identical to [`matvec_f16`] of its vector.
pub fn matmul_f16(w: &[f16], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    let n = x.len().checked_div(cols).unwrap_or(0);
    reference::check_matvec("matmul_f16", w.len(), rows, cols, cols, rows);
    assert_eq!(x.len(), n * cols, "matmul_f16: x length vs (n, cols)");
    assert_eq!(out.len(), n * rows, "matmul_f16: out length vs (n, rows)");
    if !has_avx512_vnni() {
        for (xt, ot) in x.chunks_exact(cols.max(1)).zip(out.chunks_exact_mut(rows.max(1))) {
            reference::matvec_f16(w, rows, cols, xt, ot);
        }
        return;
    }
    // SAFETY: AVX-512 F was detected above.
    unsafe { matmul_f16_avx512(w, rows, cols, x, out) }
}

#[target_feature(enable = "avx512f")]
fn matmul_f16_avx512(w: &[f16], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    let n = x.len().checked_div(cols).unwrap_or(0);
    for r0 in (0..rows).step_by(F16_ROWS) {
        // Past the last row, the last row stands in (its sums unused).
        let block: [&[f16]; F16_ROWS] = std::array::from_fn(|k| {
            let r = (r0 + k).min(rows - 1);
            &w[r * cols..(r + 1) * cols]
        });
        let live = (rows - r0).min(F16_ROWS);
        let mut t0 = 0;
        while t0 < n {
            let xs = |t: usize| &x[(t0 + t) * cols..(t0 + t + 1) * cols];
            let mut put = |sums: &[[f32; F16_TOKENS]; F16_ROWS], tokens: usize| {
                for (k, row) in sums.iter().enumerate().take(live) {
                    for (t, &v) in row.iter().enumerate().take(tokens) {
                        out[(t0 + t) * rows + r0 + k] = v;
                    }
                }
            };
            let tokens = (n - t0).min(F16_TOKENS);
            match tokens {
                6 => put(&f16_block::<6>(block, std::array::from_fn(xs)), 6),
                5 => put(&f16_block::<5>(block, std::array::from_fn(xs)), 5),
                4 => put(&f16_block::<4>(block, std::array::from_fn(xs)), 4),
                3 => put(&f16_block::<3>(block, std::array::from_fn(xs)), 3),
                2 => put(&f16_block::<2>(block, std::array::from_fn(xs)), 2),
                _ => put(&f16_block::<1>(block, [xs(0)]), 1),
            }
            t0 += tokens;
        }
    }
}

/// Σ w·x for 4 rows by T vectors, widened to [`F16_TOKENS`] columns.
#[target_feature(enable = "avx512f")]
#[inline]
fn f16_block<const T: usize>(w: [&[f16]; F16_ROWS], x: [&[f32]; T]) -> [[f32; F16_TOKENS]; F16_ROWS] {
    let cols = x[0].len();
    assert!(w.iter().all(|r| r.len() == cols) && x.iter().all(|v| v.len() == cols), "f16_block: lengths");
    let body = cols / 16 * 16;
    let wp: [*const f16; F16_ROWS] = w.map(|r| r.as_ptr());
    let xp: [*const f32; T] = x.map(|v| v.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); T]; F16_ROWS];
    let mut c = 0;
    while c < body {
        // SAFETY: c + 16 <= body <= cols, the length of every row and
        // vector (asserted above).
        unsafe {
            let wv: [__m512; F16_ROWS] = std::array::from_fn(|k| {
                _mm_prefetch::<_MM_HINT_T0>(wp[k].wrapping_add(c + F16_PREFETCH_AHEAD).cast());
                _mm512_cvtph_ps(_mm256_loadu_si256(wp[k].add(c).cast()))
            });
            for t in 0..T {
                let xv = _mm512_loadu_ps(xp[t].add(c));
                for k in 0..F16_ROWS {
                    acc[k][t] = _mm512_fmadd_ps(wv[k], xv, acc[k][t]);
                }
            }
        }
        c += 16;
    }
    let mut sums = [[0.0f32; F16_TOKENS]; F16_ROWS];
    for k in 0..F16_ROWS {
        for t in 0..T {
            let tail: f32 = w[k][body..].iter().zip(&x[t][body..]).map(|(a, b)| a.to_f32() * b).sum();
            sums[k][t] = _mm512_reduce_add_ps(acc[k][t]) + tail;
        }
    }
    sums
}

/// Elements ahead of the current column that the F16 product prefetches
/// on each row (2 KiB).
const F16_PREFETCH_AHEAD: usize = 1024;

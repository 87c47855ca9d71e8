#![allow(unsafe_code)]
//! AVX2 variants (x86_64). Same names and signatures as
//! [`crate::reference`]; each checks for the features it needs itself (a
//! cached atomic load) and falls back to the reference, so calling one
//! directly is always sound.
//!
//! Ternary products, per 128-column group of the packed layout: one 32-byte
//! load of codes → one shift and four masks give four vectors of 32 codes,
//! each lined up with 32 contiguous int8 activations (runs 1 and 3 are
//! masked in place, so they carry code·4) → `maddubs` (u8 × i8 → i16 pairs)
//! → i16 sums over up to [`I16_GROUPS`] groups → `madd` by ones → i32 lanes,
//! where the code·4 sums are divided by 4 exactly. Codes are weight + 1, so
//! Σ code·q − Σ q = Σ w·q, with Σ q computed once per token. Everything
//! stays integer until the one rescale per row (or per block), which makes
//! the result bit-identical to the reference.
//!
//! Several tokens (a tile of up to [`TILE`]) share each unpacked group, so
//! a batch pays for unpacking once per weight instead of once per token.

use crate::reference::{self, check_ternary_rows, Q8_0_BLOCK, Q8_0_BLOCK_BYTES};
use crate::ternary::{get_code, Scales, TernaryMatrix, TERNARY_GROUP, TERNARY_GROUP_BYTES, TQ_BLOCK};
use half::f16;
use std::arch::x86_64::*;
use std::ops::Range;

/// Tokens that share one unpacked group.
const TILE: usize = 4;
/// Groups summed in i16 before widening. With codes scaled by 4 a `maddubs`
/// lane reaches ±2048; two per group over 4 groups: 16384 < 32767.
const I16_GROUPS: usize = 4;
/// Bytes ahead of the current group that the ternary loop prefetches.
const PREFETCH_AHEAD: usize = 2048;
/// Groups per TQ block (per-block scales).
const GROUPS_PER_BLOCK: usize = TQ_BLOCK / TERNARY_GROUP;

fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

fn has_fma_f16c() -> bool {
    has_avx2() && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
}

/// Rows `rows` of W @ q (n, cols) -> out (rows.len(), n). See
/// [`reference::ternary_rows`].
pub fn ternary_rows(w: &TernaryMatrix, q: &[i8], s: &[f32], rows: Range<usize>, out: &mut [f32]) {
    check_ternary_rows(w, q, s, &rows, out);
    if !has_avx2() {
        return reference::ternary_rows(w, q, s, rows, out);
    }
    let n = s.len();
    let full = w.cols / TERNARY_GROUP;
    // gsum (n, full): Σ q of each token over each group, the offset the codes carry.
    let gsum: Vec<i32> = (0..n)
        .flat_map(|t| {
            q[t * w.cols..t * w.cols + full * TERNARY_GROUP]
                .chunks_exact(TERNARY_GROUP)
                .map(|g| g.iter().map(|&v| v as i32).sum::<i32>())
        })
        .collect();
    let mut t0 = 0;
    while t0 < n {
        let tile = (n - t0).min(TILE);
        let job = Tile { w, q, s, gsum: &gsum, n, t0, full };
        // SAFETY: AVX2 was detected above.
        unsafe {
            match tile {
                4 => job.rows::<4>(rows.clone(), out),
                3 => job.rows::<3>(rows.clone(), out),
                2 => job.rows::<2>(rows.clone(), out),
                _ => job.rows::<1>(rows.clone(), out),
            }
        }
        t0 += tile;
    }
}

/// Tokens `t0..t0 + T` of one [`ternary_rows`] call.
struct Tile<'a> {
    w: &'a TernaryMatrix,
    q: &'a [i8],
    s: &'a [f32],
    /// gsum (n, full)
    gsum: &'a [i32],
    n: usize,
    t0: usize,
    /// Whole groups per row; columns past them are the scalar tail.
    full: usize,
}

impl Tile<'_> {
    #[target_feature(enable = "avx2")]
    fn rows<const T: usize>(&self, rows: Range<usize>, out: &mut [f32]) {
        let (w, n, t0, full) = (self.w, self.n, self.t0, self.full);
        let qt: [&[i8]; T] = std::array::from_fn(|t| &self.q[(t0 + t) * w.cols..(t0 + t + 1) * w.cols]);
        let gs: [&[i32]; T] = std::array::from_fn(|t| &self.gsum[(t0 + t) * full..(t0 + t + 1) * full]);
        for (i, r) in rows.enumerate() {
            let codes = w.row_codes(r);
            let o = &mut out[i * n + t0..i * n + t0 + T];
            match &w.scales {
                Scales::Tensor(d) => {
                    let dots = group_dots::<T>(codes, &qt, 0..full);
                    for t in 0..T {
                        let qsum: i32 = gs[t].iter().sum();
                        let tail: i32 = (full * TERNARY_GROUP..w.cols)
                            .map(|c| (get_code(codes, c) as i32 - 1) * qt[t][c] as i32)
                            .sum();
                        o[t] = (dots[t] - qsum + tail) as f32 * d / self.s[t0 + t];
                    }
                }
                Scales::Blocks(ds) => {
                    // Only TQ payloads have block scales: cols % 256 == 0, no tail.
                    let blocks = w.cols / TQ_BLOCK;
                    let mut acc = [0.0f32; T];
                    for b in 0..blocks {
                        let g = b * GROUPS_PER_BLOCK..(b + 1) * GROUPS_PER_BLOCK;
                        let dots = group_dots::<T>(codes, &qt, g.clone());
                        for t in 0..T {
                            let qsum: i32 = gs[t][g.clone()].iter().sum();
                            acc[t] += (dots[t] - qsum) as f32 * ds[r * blocks + b];
                        }
                    }
                    for t in 0..T {
                        o[t] = acc[t] / self.s[t0 + t];
                    }
                }
            }
        }
    }
}

/// Σ code·q over `groups` of one packed row, for T tokens at once.
///
/// The hot loop of every ternary product, so it works on raw pointers: the
/// bounds are checked once here instead of on each of its five loads.
#[target_feature(enable = "avx2")]
#[inline]
fn group_dots<const T: usize>(codes: &[u8], q: &[&[i8]; T], groups: Range<usize>) -> [i32; T] {
    assert!(groups.end * TERNARY_GROUP_BYTES <= codes.len(), "group_dots: codes too short");
    assert!(q.iter().all(|qt| groups.end * TERNARY_GROUP <= qt.len()), "group_dots: q too short");
    let low = _mm256_set1_epi8(0x03);
    let high = _mm256_set1_epi8(0x0c);
    let ones = _mm256_set1_epi16(1);
    let cp = codes.as_ptr();
    let qp: [*const i8; T] = std::array::from_fn(|t| q[t].as_ptr());
    let mut acc = [_mm256_setzero_si256(); T];
    let mut g = groups.start;
    while g < groups.end {
        let end = (g + I16_GROUPS).min(groups.end);
        // Runs 0 and 2 sum into acc1, runs 1 and 3 (codes times 4) into acc4.
        let mut acc1 = [_mm256_setzero_si256(); T];
        let mut acc4 = [_mm256_setzero_si256(); T];
        for gg in g..end {
            // SAFETY: gg < groups.end, and both slices were checked to hold
            // every group up to groups.end (asserts above).
            unsafe {
                let packed = _mm256_loadu_si256(cp.add(gg * TERNARY_GROUP_BYTES).cast());
                // Rows follow each other in memory: ask for the stream well
                // ahead (a prefetch past the end of the matrix is harmless).
                _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(gg * TERNARY_GROUP_BYTES + PREFETCH_AHEAD).cast());
                // One shift instead of three: runs 1 and 3 stay at bits 3:2,
                // i.e. code·4. A 16-bit shift leaks bits across bytes; the
                // masks drop them.
                let shifted = _mm256_srli_epi16::<4>(packed);
                let c0 = _mm256_and_si256(packed, low);
                let c1x4 = _mm256_and_si256(packed, high);
                let c2 = _mm256_and_si256(shifted, low);
                let c3x4 = _mm256_and_si256(shifted, high);
                for t in 0..T {
                    let qg = qp[t].add(gg * TERNARY_GROUP);
                    let p0 = _mm256_maddubs_epi16(c0, _mm256_loadu_si256(qg.cast()));
                    let p1 = _mm256_maddubs_epi16(c1x4, _mm256_loadu_si256(qg.add(32).cast()));
                    let p2 = _mm256_maddubs_epi16(c2, _mm256_loadu_si256(qg.add(64).cast()));
                    let p3 = _mm256_maddubs_epi16(c3x4, _mm256_loadu_si256(qg.add(96).cast()));
                    acc1[t] = _mm256_add_epi16(acc1[t], _mm256_add_epi16(p0, p2));
                    acc4[t] = _mm256_add_epi16(acc4[t], _mm256_add_epi16(p1, p3));
                }
            }
        }
        for t in 0..T {
            // acc4 holds exact multiples of 4.
            let wide4 = _mm256_srai_epi32::<2>(_mm256_madd_epi16(acc4[t], ones));
            acc[t] = _mm256_add_epi32(acc[t], _mm256_add_epi32(_mm256_madd_epi16(acc1[t], ones), wide4));
        }
        g = end;
    }
    std::array::from_fn(|t| hsum_i32(acc[t]))
}

/// W (rows, cols) f16 @ x (cols,) -> out (rows,). See [`reference::matvec_f16`].
pub fn matvec_f16(w: &[f16], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    if !has_fma_f16c() {
        return reference::matvec_f16(w, rows, cols, x, out);
    }
    reference::check_matvec("matvec_f16", w.len(), rows, cols, x.len(), out.len());
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: AVX2, FMA and F16C were detected above.
        *o = unsafe { dot_f16(&w[r * cols..(r + 1) * cols], x) };
    }
}

/// W (rows, cols) f32 @ x (cols,) -> out (rows,). See [`reference::matvec_f32`].
pub fn matvec_f32(w: &[f32], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    if !has_fma_f16c() {
        return reference::matvec_f32(w, rows, cols, x, out);
    }
    reference::check_matvec("matvec_f32", w.len(), rows, cols, x.len(), out.len());
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: AVX2 and FMA were detected above.
        *o = unsafe { dot_f32(&w[r * cols..(r + 1) * cols], x) };
    }
}

/// W (rows, cols) Q8_0 @ x (cols,) -> out (rows,). See [`reference::matvec_q8_0`].
pub fn matvec_q8_0(w: &[u8], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    if !has_fma_f16c() {
        return reference::matvec_q8_0(w, rows, cols, x, out);
    }
    let row_bytes = reference::check_matvec_q8_0(w.len(), rows, cols, x.len(), out.len());
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: AVX2, FMA and F16C were detected above.
        *o = unsafe { dot_q8_0(&w[r * row_bytes..(r + 1) * row_bytes], x) };
    }
}

/// Per-token absmax int8 quantisation. See [`reference::quantize_row_i8`]:
/// the same IEEE operations lane by lane (NaN is ignored by the absmax and
/// quantises to 0, as there), so the result is bit-identical.
pub fn quantize_row_i8(x: &[f32], q: &mut [i8]) -> f32 {
    assert_eq!(x.len(), q.len(), "quantize_row_i8: x and q lengths");
    if !has_avx2() {
        return reference::quantize_row_i8(x, q);
    }
    // SAFETY: AVX2 was detected above.
    unsafe { quantize_avx2(x, q) }
}

#[target_feature(enable = "avx2")]
fn quantize_avx2(x: &[f32], q: &mut [i8]) -> f32 {
    let body = x.len() / 32 * 32;
    let sign = _mm256_set1_ps(-0.0);
    // maxps returns its second operand when either is NaN: NaN lanes keep m.
    let mut m = _mm256_setzero_ps();
    for c in (0..body).step_by(8) {
        m = _mm256_max_ps(_mm256_andnot_ps(sign, load_f32x8(&x[c..])), m);
    }
    let mut absmax = hmax_f32(m);
    absmax = x[body..].iter().fold(absmax, |a, v| a.max(v.abs()));
    let s = 127.0 / absmax.max(reference::QUANT_MIN_ABSMAX);
    let (sv, lo, hi) = (_mm256_set1_ps(s), _mm256_set1_ps(-128.0), _mm256_set1_ps(127.0));
    let quantise = |v: __m256| -> __m256i {
        let v = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v, sv));
        // NaN lanes (x·s of NaN or inf·0) become 0, as `NaN as i8` does;
        // before the clamp, whose maxps would turn them into -128.
        let v = _mm256_and_ps(v, _mm256_cmp_ps::<_CMP_ORD_Q>(v, v));
        _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi))
    };
    for c in (0..body).step_by(32) {
        let a = quantise(load_f32x8(&x[c..]));
        let b = quantise(load_f32x8(&x[c + 8..]));
        let d = quantise(load_f32x8(&x[c + 16..]));
        let e = quantise(load_f32x8(&x[c + 24..]));
        // packs interleave 128-bit lanes; the permute puts the 32 bytes back in order.
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(d, e));
        let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        // SAFETY: c + 32 <= body <= q.len(); storeu has no alignment needs.
        unsafe { _mm256_storeu_si256(q.as_mut_ptr().add(c).cast(), ordered) };
    }
    for (qi, &xi) in q[body..].iter_mut().zip(&x[body..]) {
        *qi = (xi * s).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    s
}

#[target_feature(enable = "avx2")]
#[inline]
fn hmax_f32(v: __m256) -> f32 {
    let x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    let x = _mm_max_ss(x, _mm_shuffle_ps::<0b01>(x, x));
    _mm_cvtss_f32(x)
}

/// Causal attention of one query over `kv.len` positions, GQA. See
/// [`reference::attention`]: the same steps, with vector dot products for
/// the scores and fused multiply-adds for the weighted sum of values.
pub fn attention(
    q: &[f32],
    kv: reference::KvBlocks,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    if !has_fma_f16c() {
        return reference::attention(q, kv, n_heads, n_kv, head_dim, scratch, out);
    }
    // SAFETY (both closures): AVX2 and FMA were detected above.
    let dot = |a: &[f32], b: &[f32]| unsafe { dot_f32(a, b) };
    let axpy = |p: f32, x: &[f32], y: &mut [f32]| unsafe { axpy_f32(p, x, y) };
    reference::attention_with(q, kv, n_heads, n_kv, head_dim, scratch, out, dot, axpy)
}

/// y += a·x
#[target_feature(enable = "avx2,fma")]
fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len());
    let av = _mm256_set1_ps(a);
    let body = x.len() / 8 * 8;
    for c in (0..body).step_by(8) {
        let yv = _mm256_fmadd_ps(av, load_f32x8(&x[c..]), load_f32x8(&y[c..]));
        // SAFETY: c + 8 <= body <= y.len(); storeu has no alignment needs.
        unsafe { _mm256_storeu_ps(y.as_mut_ptr().add(c), yv) };
    }
    for (yi, &xi) in y[body..].iter_mut().zip(&x[body..]) {
        *yi += a * xi;
    }
}

/// Σ w·x over one f16 row: four 8-lane accumulators, then a scalar tail.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let body = w.len() / 32 * 32;
    for c in (0..body).step_by(32) {
        // One 64-byte line of f16 per step; rows follow each other in memory.
        _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().wrapping_add(c + PREFETCH_AHEAD / 2).cast());
        for (k, a) in acc.iter_mut().enumerate() {
            let wv = _mm256_cvtph_ps(load_f16x8(&w[c + 8 * k..]));
            *a = _mm256_fmadd_ps(wv, load_f32x8(&x[c + 8 * k..]), *a);
        }
    }
    let tail: f32 = w[body..].iter().zip(&x[body..]).map(|(a, b)| a.to_f32() * b).sum();
    hsum_f32(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) + tail
}

/// Σ w·x over one f32 row.
#[target_feature(enable = "avx2,fma")]
fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let body = w.len() / 32 * 32;
    for c in (0..body).step_by(32) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = _mm256_fmadd_ps(load_f32x8(&w[c + 8 * k..]), load_f32x8(&x[c + 8 * k..]), *a);
        }
    }
    let tail: f32 = w[body..].iter().zip(&x[body..]).map(|(a, b)| a * b).sum();
    hsum_f32(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) + tail
}

/// Σ w·x over one Q8_0 row: per block, 32 int8 → four f32 vectors, their
/// dot with x, times the block's scale.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (block, xb) in row.chunks_exact(Q8_0_BLOCK_BYTES).zip(x.chunks_exact(Q8_0_BLOCK)) {
        _mm_prefetch::<_MM_HINT_T0>(block.as_ptr().wrapping_add(PREFETCH_AHEAD).cast());
        let d = _mm256_set1_ps(f16::from_le_bytes([block[0], block[1]]).to_f32());
        let qs = load(&block[2..]);
        let lo = _mm256_castsi256_si128(qs);
        let hi = _mm256_extracti128_si256::<1>(qs);
        let parts = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
        let mut dot = _mm256_setzero_ps();
        for (k, p) in parts.into_iter().enumerate() {
            let wv = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(p));
            dot = _mm256_fmadd_ps(wv, load_f32x8(&xb[8 * k..]), dot);
        }
        acc = _mm256_fmadd_ps(d, dot, acc);
    }
    hsum_f32(acc)
}

#[target_feature(enable = "avx2")]
#[inline]
fn hsum_i32(v: __m256i) -> i32 {
    let x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32::<0b01_00_11_10>(x));
    let x = _mm_add_epi32(x, _mm_shuffle_epi32::<0b10_11_00_01>(x));
    _mm_cvtsi128_si32(x)
}

#[target_feature(enable = "avx2")]
#[inline]
fn hsum_f32(v: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    let x = _mm_add_ss(x, _mm_shuffle_ps::<0b01>(x, x));
    _mm_cvtss_f32(x)
}

/// 32 bytes of u8 or i8 from the front of `v`.
#[target_feature(enable = "avx2")]
#[inline]
fn load<T: Copy + Into<i16>>(v: &[T]) -> __m256i {
    assert!(v.len() >= 32 && size_of::<T>() == 1);
    // SAFETY: at least 32 readable bytes (checked above); loadu has no alignment needs.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

#[target_feature(enable = "avx2")]
#[inline]
fn load_f32x8(v: &[f32]) -> __m256 {
    assert!(v.len() >= 8);
    // SAFETY: at least 8 readable f32 (checked above); loadu has no alignment needs.
    unsafe { _mm256_loadu_ps(v.as_ptr()) }
}

#[target_feature(enable = "avx2")]
#[inline]
fn load_f16x8(v: &[f16]) -> __m128i {
    assert!(v.len() >= 8);
    // SAFETY: at least 16 readable bytes (checked above); loadu has no alignment needs.
    unsafe { _mm_loadu_si128(v.as_ptr().cast()) }
}

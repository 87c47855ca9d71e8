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
//! Several tokens (a tile of [`driver`]) share each unpacked group, so a
//! batch pays for unpacking once per weight instead of once per token; the
//! row loop, tail and rescale are the driver's.

use crate::arch::driver::{self, Tile, TileKernel};
use crate::reference::{self, Q8_0_BLOCK, Q8_0_BLOCK_BYTES};
use crate::ternary::{TernaryMatrix, TERNARY_GROUP, TERNARY_GROUP_BYTES};
use half::f16;
use std::arch::x86_64::*;
use std::ops::Range;

/// Groups summed in i16 before widening. With codes scaled by 4 a `maddubs`
/// lane reaches ±2048; two per group over 4 groups: 16384 < 32767.
const I16_GROUPS: usize = 4;
/// Bytes ahead of the current group that the ternary loop prefetches.
const PREFETCH_AHEAD: usize = 2048;

pub(crate) fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2")
}

pub(crate) fn has_fma_f16c() -> bool {
    has_avx2() && std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c")
}

/// Rows `rows` of W @ q (n, cols) -> out (rows.len(), n). See
/// [`reference::ternary_rows`].
pub fn ternary_rows(w: &TernaryMatrix, q: &[i8], s: &[f32], rows: Range<usize>, out: &mut [f32]) {
    if !has_avx2() {
        return reference::ternary_rows(w, q, s, rows, out);
    }
    // SAFETY: AVX2 was detected above.
    unsafe { driver::ternary_rows::<Avx2>(w, q, s, rows, out) }
}

/// The AVX2 inner kernel of the ternary products: [`group_dots`].
struct Avx2;

impl TileKernel for Avx2 {
    const SUMS_CODES: bool = true;

    unsafe fn rows<const T: usize>(tile: &Tile, rows: Range<usize>, out: &mut [f32]) {
        // SAFETY: the caller guarantees AVX2.
        unsafe { rows_avx2::<T>(tile, rows, out) }
    }
}

#[target_feature(enable = "avx2")]
fn rows_avx2<const T: usize>(tile: &Tile, rows: Range<usize>, out: &mut [f32]) {
    tile.rows::<T>(rows, out, |codes, q, groups| group_dots::<T>(codes, q, groups))
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

pub(crate) fn has_avx_vnni() -> bool {
    has_avx2() && std::is_x86_feature_detected!("avxvnni")
}

/// Whether the `avx-vnni` variant runs here: AVX-VNNI and the AVX2 set the
/// rest of its products come from.
pub(crate) fn has_avx_vnni_fma_f16c() -> bool {
    has_avx_vnni() && has_fma_f16c()
}

/// [`ternary_rows`] on AVX-VNNI (`vpdpbusd` on 256 bits, as on CPUs with
/// VNNI but without AVX-512): each group's four runs of codes go straight
/// into i32 sums, with no i16 partial sums and no widening.
pub fn ternary_rows_vnni(w: &TernaryMatrix, q: &[i8], s: &[f32], rows: Range<usize>, out: &mut [f32]) {
    if !has_avx_vnni() {
        return ternary_rows(w, q, s, rows, out);
    }
    // SAFETY: AVX2 and AVX-VNNI were detected above.
    unsafe { driver::ternary_rows::<AvxVnni>(w, q, s, rows, out) }
}

/// The AVX-VNNI inner kernel: [`group_dots_vnni`].
struct AvxVnni;

impl TileKernel for AvxVnni {
    const SUMS_CODES: bool = true;

    unsafe fn rows<const T: usize>(tile: &Tile, rows: Range<usize>, out: &mut [f32]) {
        // SAFETY: the caller guarantees AVX2 and AVX-VNNI.
        unsafe { rows_vnni::<T>(tile, rows, out) }
    }
}

#[target_feature(enable = "avx2,avxvnni")]
fn rows_vnni<const T: usize>(tile: &Tile, rows: Range<usize>, out: &mut [f32]) {
    tile.rows::<T>(rows, out, |codes, q, groups| group_dots_vnni::<T>(codes, q, groups))
}

/// [`group_dots`] with `vpdpbusd`: per group and token, four multiply-adds
/// into two i32 chains (runs 0 and 2, runs 1 and 3), which halves the wait
/// on each.
#[target_feature(enable = "avx2,avxvnni")]
#[inline]
fn group_dots_vnni<const T: usize>(codes: &[u8], q: &[&[i8]; T], groups: Range<usize>) -> [i32; T] {
    assert!(groups.end * TERNARY_GROUP_BYTES <= codes.len(), "group_dots_vnni: codes too short");
    assert!(q.iter().all(|qt| groups.end * TERNARY_GROUP <= qt.len()), "group_dots_vnni: q too short");
    let low = _mm256_set1_epi8(0x03);
    let cp = codes.as_ptr();
    let qp: [*const i8; T] = std::array::from_fn(|t| q[t].as_ptr());
    let mut even = [_mm256_setzero_si256(); T];
    let mut odd = [_mm256_setzero_si256(); T];
    for g in groups {
        // SAFETY: g < groups.end, and both slices were checked to hold every
        // group up to groups.end (asserts above).
        unsafe {
            let packed = _mm256_loadu_si256(cp.add(g * TERNARY_GROUP_BYTES).cast());
            _mm_prefetch::<_MM_HINT_T0>(cp.wrapping_add(g * TERNARY_GROUP_BYTES + PREFETCH_AHEAD).cast());
            // A 16-bit shift leaks bits across bytes; the mask drops them.
            let c0 = _mm256_and_si256(packed, low);
            let c1 = _mm256_and_si256(_mm256_srli_epi16::<2>(packed), low);
            let c2 = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), low);
            let c3 = _mm256_and_si256(_mm256_srli_epi16::<6>(packed), low);
            for t in 0..T {
                let qg = qp[t].add(g * TERNARY_GROUP);
                even[t] = _mm256_dpbusd_avx_epi32(even[t], c0, _mm256_loadu_si256(qg.cast()));
                odd[t] = _mm256_dpbusd_avx_epi32(odd[t], c1, _mm256_loadu_si256(qg.add(32).cast()));
                even[t] = _mm256_dpbusd_avx_epi32(even[t], c2, _mm256_loadu_si256(qg.add(64).cast()));
                odd[t] = _mm256_dpbusd_avx_epi32(odd[t], c3, _mm256_loadu_si256(qg.add(96).cast()));
            }
        }
    }
    std::array::from_fn(|t| hsum_i32(_mm256_add_epi32(even[t], odd[t])))
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

/// W (rows, cols) f16 @ two x (cols,) -> two out (rows,), each row of W
/// converted once for both; each out is bit-identical to [`matvec_f16`]'s.
pub fn matvec2_f16(w: &[f16], rows: usize, cols: usize, x: [&[f32]; 2], out: [&mut [f32]; 2]) {
    let [o0, o1] = out;
    if !has_fma_f16c() {
        reference::matvec_f16(w, rows, cols, x[0], o0);
        return reference::matvec_f16(w, rows, cols, x[1], o1);
    }
    reference::check_matvec("matvec2_f16", w.len(), rows, cols, x[0].len(), o0.len());
    reference::check_matvec("matvec2_f16", w.len(), rows, cols, x[1].len(), o1.len());
    for (r, (a, b)) in o0.iter_mut().zip(o1.iter_mut()).enumerate() {
        // SAFETY: AVX2, FMA and F16C were detected above.
        (*a, *b) = unsafe { dot2_f16(&w[r * cols..(r + 1) * cols], x[0], x[1]) };
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

/// Causal attention of `rows` queries over `kv.len` positions, GQA. See
/// [`reference::attention`]: the same steps, with vector dot products for
/// the scores and fused multiply-adds for the weighted sum of values.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    rows: usize,
    kv: reference::KvBlocks,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    if !has_fma_f16c() {
        return reference::attention(q, rows, kv, n_heads, n_kv, head_dim, scratch, out);
    }
    // SAFETY: AVX2 and FMA were detected above.
    unsafe { attention_avx2(q, rows, kv, n_heads, n_kv, head_dim, scratch, out) }
}

/// [`reference::attention_with`]'s steps for a head width that is a
/// multiple of 8, blocked for the cache and the registers: per kv head and
/// block of positions, each query's scores take eight keys at a time, and its
/// weighted sum of values keeps up to 64 lanes of its output in registers
/// across the block. Each score is one 8-lane multiply-add chain over the
/// head then one horizontal sum, and each output lane adds its values
/// position by position, whichever keys or rows share the work, so a query
/// gets the same bits however many rows share the call.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
fn attention_avx2(
    q: &[f32],
    rows: usize,
    kv: reference::KvBlocks,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    if !head_dim.is_multiple_of(8) {
        let dot = |a: &[f32], b: &[f32]| dot_f32(a, b);
        let axpy = |p: f32, x: &[f32], y: &mut [f32]| axpy_f32(p, x, y);
        return reference::attention_with(q, rows, kv, n_heads, n_kv, head_dim, scratch, out, dot, axpy);
    }
    let shape = reference::AttentionShape::new(q, rows, &kv, n_heads, n_kv, head_dim, scratch, out);
    let reference::AttentionShape { kv_stride, scale, t, queries, .. } = shape;
    let span = |hk: usize, x: usize| shape.at(hk, x);
    // Positions of a block starting at `at` with `used` rows that query x sees.
    let seen = |x: usize, at: usize, used: usize| shape.sees(x).saturating_sub(at).min(used);
    let scores = &mut scratch[..queries * t];
    for hk in 0..n_kv {
        let kv_off = hk * head_dim;
        let mut at = 0;
        for (kb, _, used) in kv.blocks() {
            // Key jj of this kv head starts at keys + jj·kv_stride.
            let keys = kb[kv_off..].as_ptr();
            for x in 0..queries {
                let n = seen(x, at, used);
                let qx = q[span(hk, x)..][..head_dim].as_ptr();
                let sx = &mut scores[x * t + at..x * t + at + n];
                for j0 in (0..n).step_by(8) {
                    // The last group repeats its last key; those sums are dropped.
                    let key = |i: usize| keys.wrapping_add((j0 + i).min(n - 1) * kv_stride);
                    // SAFETY: the query and every key row named are head_dim
                    // long (the slices above and AttentionShape::new).
                    let d = unsafe { dots8(qx, std::array::from_fn(key), head_dim) };
                    let d = _mm256_mul_ps(d, _mm256_set1_ps(scale));
                    let mut sums = [0.0f32; 8];
                    // SAFETY: sums holds 8 f32.
                    unsafe { _mm256_storeu_ps(sums.as_mut_ptr(), d) };
                    let m = (n - j0).min(8);
                    sx[j0..j0 + m].copy_from_slice(&sums[..m]);
                }
            }
            at += used;
        }
        for x in 0..queries {
            softmax_avx2(&mut scores[x * t..x * t + shape.sees(x)]);
        }
        let mut at = 0;
        for (_, vb, used) in kv.blocks() {
            for x in 0..queries {
                let n = seen(x, at, used);
                let o = &mut out[span(hk, x)..][..head_dim];
                let p = &scores[x * t + at..x * t + at + n];
                let values = vb[kv_off..].as_ptr();
                let mut c = 0;
                // SAFETY (both): o and every value row are head_dim long, and
                // each call covers lanes c..c + 8·L <= head_dim.
                while c + 64 <= head_dim {
                    unsafe { weigh::<8>(p, values, kv_stride, c, at == 0, o.as_mut_ptr()) };
                    c += 64;
                }
                while c < head_dim {
                    unsafe { weigh::<1>(p, values, kv_stride, c, at == 0, o.as_mut_ptr()) };
                    c += 8;
                }
            }
            at += used;
        }
    }
}

/// out[c..c + 8·L] = (0 if `fresh`, else out) + Σ_j p[j]·value_j[c..c + 8·L]
/// where value_j starts at `values + j·stride`, position by position, with
/// the L accumulators in registers.
///
/// # Safety
/// `out` and every value row must point at `c + 8·L` or more f32.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn weigh<const L: usize>(p: &[f32], values: *const f32, stride: usize, c: usize, fresh: bool, out: *mut f32) {
    let mut acc = [_mm256_setzero_ps(); L];
    if !fresh {
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: the caller guarantees c + 8·L readable lanes.
            *a = unsafe { _mm256_loadu_ps(out.add(c + 8 * i)) };
        }
    }
    for (j, &pj) in p.iter().enumerate() {
        let pv = _mm256_set1_ps(pj);
        let v = values.wrapping_add(j * stride + c);
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: as above.
            *a = _mm256_fmadd_ps(pv, unsafe { _mm256_loadu_ps(v.add(8 * i)) }, *a);
        }
    }
    for (i, a) in acc.iter().enumerate() {
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(out.add(c + 8 * i), *a) };
    }
}

/// Softmax in place, 8 lanes at a time with [`exp_avx2`]; the sum is 8
/// lane sums then [`hsum_f32`], plus the tail, so it depends only on x.
#[target_feature(enable = "avx2,fma")]
fn softmax_avx2(x: &mut [f32]) {
    let body = x.len() / 8 * 8;
    let mut maxv = _mm256_set1_ps(f32::NEG_INFINITY);
    for c in (0..body).step_by(8) {
        maxv = _mm256_max_ps(maxv, load_f32x8(&x[c..]));
    }
    let max = x[body..].iter().fold(hmax_f32(maxv), |m, &v| m.max(v));
    let (mv, mut sumv) = (_mm256_set1_ps(max), _mm256_setzero_ps());
    for c in (0..body).step_by(8) {
        let e = exp_avx2(_mm256_sub_ps(load_f32x8(&x[c..]), mv));
        sumv = _mm256_add_ps(sumv, e);
        // SAFETY: c + 8 <= body <= x.len().
        unsafe { _mm256_storeu_ps(x.as_mut_ptr().add(c), e) };
    }
    let mut sum = hsum_f32(sumv);
    for v in &mut x[body..] {
        *v = exp_f32(*v - max);
        sum += *v;
    }
    let inv = _mm256_set1_ps(sum);
    for c in (0..body).step_by(8) {
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(x.as_mut_ptr().add(c), _mm256_div_ps(load_f32x8(&x[c..]), inv)) };
    }
    for v in &mut x[body..] {
        *v /= sum;
    }
}

/// e^x for 8 lanes: x = n·ln 2 + r with |r| <= ln 2 / 2, e^r by a degree-6
/// polynomial (relative error about 2e-7), scaled by 2^n through the
/// exponent bits. Inputs below -87 give about 1.6e-38 rather than a
/// denormal; NaN stays NaN.
#[target_feature(enable = "avx2,fma")]
fn exp_avx2(x: __m256) -> __m256 {
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    // ln 2 split in two so that n·LN2_HI is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(EXP_POLY[0]);
    for &c in &EXP_POLY[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    _mm256_mul_ps(p, _mm256_castsi256_ps(scale))
}

/// [`exp_avx2`] of one value (the tails of [`softmax_avx2`]).
#[target_feature(enable = "avx2,fma")]
fn exp_f32(x: f32) -> f32 {
    _mm256_cvtss_f32(exp_avx2(_mm256_set1_ps(x)))
}

const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Taylor-like coefficients of (e^r - 1 - r) / r², highest power first.
const EXP_POLY: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.0e-1];

/// Σ q·k for 8 keys at once, lane i for key i: one 8-lane multiply-add
/// chain per key over `len` (a multiple of 8) values, then the same tree of
/// pairwise sums for every key, so a key's sum does not depend on the
/// others.
///
/// # Safety
/// `q` and every key must point at `len` readable f32.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dots8(q: *const f32, keys: [*const f32; 8], len: usize) -> __m256 {
    let mut a = [_mm256_setzero_ps(); 8];
    for c in (0..len).step_by(8) {
        // SAFETY: c + 8 <= len, which the caller guarantees readable.
        let qv = unsafe { _mm256_loadu_ps(q.add(c)) };
        for (a, k) in a.iter_mut().zip(keys) {
            *a = _mm256_fmadd_ps(qv, unsafe { _mm256_loadu_ps(k.add(c)) }, *a);
        }
    }
    // Per key k: ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)) of its lanes l.
    let h01 = _mm256_hadd_ps(a[0], a[1]);
    let h23 = _mm256_hadd_ps(a[2], a[3]);
    let h45 = _mm256_hadd_ps(a[4], a[5]);
    let h67 = _mm256_hadd_ps(a[6], a[7]);
    // Lanes: keys 0,1,2,3 (low half: lanes 0-3 of each; high: lanes 4-7).
    let g0 = _mm256_hadd_ps(h01, h23);
    let g1 = _mm256_hadd_ps(h45, h67);
    let lo = _mm256_permute2f128_ps::<0x20>(g0, g1);
    let hi = _mm256_permute2f128_ps::<0x31>(g0, g1);
    _mm256_add_ps(lo, hi)
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

/// [`dot_f16`] of one row with two vectors, each through the same steps.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot2_f16(w: &[f16], x0: &[f32], x1: &[f32]) -> (f32, f32) {
    let (mut a0, mut a1) = ([_mm256_setzero_ps(); 4], [_mm256_setzero_ps(); 4]);
    let body = w.len() / 32 * 32;
    for c in (0..body).step_by(32) {
        _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().wrapping_add(c + PREFETCH_AHEAD / 2).cast());
        for k in 0..4 {
            let wv = _mm256_cvtph_ps(load_f16x8(&w[c + 8 * k..]));
            a0[k] = _mm256_fmadd_ps(wv, load_f32x8(&x0[c + 8 * k..]), a0[k]);
            a1[k] = _mm256_fmadd_ps(wv, load_f32x8(&x1[c + 8 * k..]), a1[k]);
        }
    }
    let tail = |x: &[f32]| -> f32 { w[body..].iter().zip(&x[body..]).map(|(a, b)| a.to_f32() * b).sum() };
    let sum = |a: [__m256; 4]| hsum_f32(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
    (sum(a0) + tail(x0), sum(a1) + tail(x1))
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

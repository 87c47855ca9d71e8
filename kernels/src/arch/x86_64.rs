#![allow(unsafe_code)]
//! AVX2 variants (x86_64). Same names and signatures as
//! [`crate::reference`]; each checks for AVX2 itself (a cached atomic load)
//! and falls back to the reference, so calling one directly is always sound.
//!
//! Ternary dot product, per 128-column group of the packed layout:
//! one 32-byte load of codes → four shift-and-mask steps give four vectors
//! of 32 codes (0..2), each lined up with 32 contiguous int8 activations →
//! `maddubs` (u8 × i8 → i16 pairs, at most 2·2·128 = 512 per lane, so it
//! never saturates) → `madd` by ones → i32 lanes. Codes are weight + 1, so
//! Σ code·q − Σ q = Σ w·q, with Σ q computed once per call. Everything stays
//! integer until the one rescale per row (or per block), which makes the
//! result bit-identical to the reference.

use crate::reference;
use crate::ternary::{get_code, Scales, TernaryMatrix, TERNARY_GROUP, TERNARY_GROUP_BYTES, TQ_BLOCK};
use std::arch::x86_64::*;

/// W (rows, cols) ternary @ q (cols,) int8 -> out (rows,). See
/// [`reference::ternary_gemv`].
pub fn ternary_gemv(w: &TernaryMatrix, q: &[i8], s: f32, out: &mut [f32]) {
    assert_eq!(q.len(), w.cols, "ternary_gemv: q length vs cols");
    assert_eq!(out.len(), w.rows, "ternary_gemv: out length vs rows");
    if !std::is_x86_feature_detected!("avx2") {
        return reference::ternary_gemv(w, q, s, out);
    }
    // SAFETY: AVX2 was detected just above.
    unsafe { gemv_avx2(w, q, s, out) }
}

/// W (rows, cols) @ q (n, cols) with s (n,) -> out (n, rows). See
/// [`reference::ternary_gemm`].
pub fn ternary_gemm(w: &TernaryMatrix, q: &[i8], s: &[f32], out: &mut [f32]) {
    let n = s.len();
    assert_eq!(q.len(), n * w.cols, "ternary_gemm: q length vs (n, cols)");
    assert_eq!(out.len(), n * w.rows, "ternary_gemm: out length vs (n, rows)");
    if !std::is_x86_feature_detected!("avx2") {
        return reference::ternary_gemm(w, q, s, out);
    }
    for t in 0..n {
        let (qt, ot) = (&q[t * w.cols..(t + 1) * w.cols], &mut out[t * w.rows..(t + 1) * w.rows]);
        // SAFETY: AVX2 was detected above.
        unsafe { gemv_avx2(w, qt, s[t], ot) }
    }
}

#[target_feature(enable = "avx2")]
fn gemv_avx2(w: &TernaryMatrix, q: &[i8], s: f32, out: &mut [f32]) {
    // q (cols,) = full groups (full, 128) then a scalar tail (cols % 128,)
    let full = w.cols / TERNARY_GROUP;
    let tail = full * TERNARY_GROUP..w.cols;
    // group_qsum (full,): Σ q per group, the offset the codes carry.
    let group_qsum: Vec<i32> =
        q[..full * TERNARY_GROUP].chunks_exact(TERNARY_GROUP).map(|g| g.iter().map(|&v| v as i32).sum()).collect();
    match &w.scales {
        Scales::Tensor(d) => {
            let qsum: i32 = group_qsum.iter().sum();
            for (r, o) in out.iter_mut().enumerate() {
                let codes = w.row_codes(r);
                let mut acc = _mm256_setzero_si256();
                for g in 0..full {
                    acc = _mm256_add_epi32(acc, group_dot(&codes[g * TERNARY_GROUP_BYTES..], &q[g * TERNARY_GROUP..]));
                }
                let tail_dot: i32 = tail.clone().map(|c| (get_code(codes, c) as i32 - 1) * q[c] as i32).sum();
                let dot = hsum_i32(acc) - qsum + tail_dot;
                *o = dot as f32 * d / s;
            }
        }
        Scales::Blocks(ds) => {
            // Block scales only come from TQ payloads: cols % 256 == 0, no tail.
            let blocks = w.cols / TQ_BLOCK;
            let per_block = TQ_BLOCK / TERNARY_GROUP;
            for (r, o) in out.iter_mut().enumerate() {
                let codes = w.row_codes(r);
                let mut acc_f = 0.0f32;
                for b in 0..blocks {
                    let mut acc = _mm256_setzero_si256();
                    let mut qsum = 0i32;
                    for g in b * per_block..(b + 1) * per_block {
                        acc = _mm256_add_epi32(
                            acc,
                            group_dot(&codes[g * TERNARY_GROUP_BYTES..], &q[g * TERNARY_GROUP..]),
                        );
                        qsum += group_qsum[g];
                    }
                    acc_f += (hsum_i32(acc) - qsum) as f32 * ds[r * blocks + b];
                }
                *o = acc_f / s;
            }
        }
    }
}

/// Σ code·q over one group: codes (32 bytes,) @ q (128,) -> 8 partial i32 sums.
#[target_feature(enable = "avx2")]
#[inline]
fn group_dot(codes: &[u8], q: &[i8]) -> __m256i {
    let mask = _mm256_set1_epi8(3);
    let packed = load_u8(codes);
    // 16-bit shifts leak bits across byte boundaries; the mask drops them.
    let c0 = _mm256_and_si256(packed, mask);
    let c1 = _mm256_and_si256(_mm256_srli_epi16::<2>(packed), mask);
    let c2 = _mm256_and_si256(_mm256_srli_epi16::<4>(packed), mask);
    let c3 = _mm256_and_si256(_mm256_srli_epi16::<6>(packed), mask);
    let p0 = _mm256_maddubs_epi16(c0, load_i8(&q[0..]));
    let p1 = _mm256_maddubs_epi16(c1, load_i8(&q[32..]));
    let p2 = _mm256_maddubs_epi16(c2, load_i8(&q[64..]));
    let p3 = _mm256_maddubs_epi16(c3, load_i8(&q[96..]));
    // 4 × 512 per i16 lane: still far from overflow.
    let sum16 = _mm256_add_epi16(_mm256_add_epi16(p0, p1), _mm256_add_epi16(p2, p3));
    _mm256_madd_epi16(sum16, _mm256_set1_epi16(1))
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
fn load_u8(v: &[u8]) -> __m256i {
    assert!(v.len() >= 32);
    // SAFETY: at least 32 readable bytes (checked above); loadu has no alignment needs.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

#[target_feature(enable = "avx2")]
#[inline]
fn load_i8(v: &[i8]) -> __m256i {
    assert!(v.len() >= 32);
    // SAFETY: at least 32 readable bytes (checked above); loadu has no alignment needs.
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

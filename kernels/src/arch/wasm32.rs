//! wasm simd128 variants. Same names and signatures as
//! [`crate::reference`]. wasm has no run-time feature detection: a module
//! either validates with SIMD or not at all, so this module exists only when
//! the crate is compiled with `-C target-feature=+simd128`, and
//! [`crate::dispatch`] picks it at compile time. simd128 has no f16
//! conversion: `matvec_f16` widens halves to floats with integer operations
//! and one exact multiply by 2^112 (see [`f16x4_to_f32x4`]).
//!
//! Ternary products, per 128-column group of the packed layout: two 16-byte
//! loads of codes → four shift-and-mask steps each give eight vectors of 16
//! codes, each lined up with 16 contiguous int8 activations → minus one, so
//! codes become weights (-1, 0, 1); unpacking is paid once per group for a
//! whole tile of tokens. Per token, `i16x8.extmul_{low,high}_i8x16` give
//! i8·i8 products in [-128, 128], summed in i16 over up to `I16_GROUPS`
//! groups and widened by `i32x4.extadd_pairwise_i16x8`. Everything stays
//! integer until the one rescale per row (or per block), in the reference's
//! order, which makes the result bit-identical to it.
#![cfg(target_feature = "simd128")]
#![allow(unsafe_code)]

use crate::arch::driver::{self, Tile, TileKernel};
use crate::reference::{self, Q8_0_BLOCK, Q8_0_BLOCK_BYTES};
use crate::ternary::{TernaryMatrix, TERNARY_GROUP, TERNARY_GROUP_BYTES};
use half::f16;
use std::arch::wasm32::*;
use std::ops::Range;

/// Groups summed in i16 before widening: each i16 lane takes 16 products of
/// magnitude <= 128 per group, so 8 groups stay within 16384.
const I16_GROUPS: usize = 8;

/// Rows `rows` of W @ q (n, cols) -> out (rows.len(), n). See
/// [`reference::ternary_rows`].
pub fn ternary_rows(w: &TernaryMatrix, q: &[i8], s: &[f32], rows: Range<usize>, out: &mut [f32]) {
    // SAFETY: this module exists only in builds with simd128.
    unsafe { driver::ternary_rows::<Simd128>(w, q, s, rows, out) }
}

/// The simd128 inner kernel: [`group_dots`].
struct Simd128;

impl TileKernel for Simd128 {
    const SUMS_CODES: bool = false;

    unsafe fn rows<const T: usize>(tile: &Tile, rows: Range<usize>, out: &mut [f32]) {
        tile.rows::<T>(rows, out, group_dots::<T>)
    }
}

/// The weights of one group (its 32 bytes) as eight vectors of -1/0/1:
/// vector `k` holds columns `16k .. 16k + 16` of the group.
#[inline]
fn unpack(group: &[u8]) -> [v128; 8] {
    let mask = u8x16_splat(3);
    let one = i8x16_splat(1);
    let (lo, hi) = (load(&group[0..]), load(&group[16..]));
    // Byte j holds columns j, 32 + j, 64 + j, 96 + j in bits 1:0, 3:2, 5:4, 7:6.
    let codes = [
        v128_and(lo, mask),
        v128_and(hi, mask),
        v128_and(u8x16_shr(lo, 2), mask),
        v128_and(u8x16_shr(hi, 2), mask),
        v128_and(u8x16_shr(lo, 4), mask),
        v128_and(u8x16_shr(hi, 4), mask),
        u8x16_shr(lo, 6),
        u8x16_shr(hi, 6),
    ];
    codes.map(|c| i8x16_sub(c, one))
}

/// Σ w·q over `groups` of one packed row for T tokens: i8 products into
/// i16 lanes, widened every [`I16_GROUPS`] groups.
#[inline]
fn group_dots<const T: usize>(codes: &[u8], q: &[&[i8]; T], groups: Range<usize>) -> [i32; T] {
    let mut acc = [i32x4_splat(0); T];
    let mut g = groups.start;
    while g < groups.end {
        let end = (g + I16_GROUPS).min(groups.end);
        let mut acc16 = [i16x8_splat(0); T];
        for gg in g..end {
            let wv = unpack(&codes[gg * TERNARY_GROUP_BYTES..]);
            for t in 0..T {
                let qg = &q[t][gg * TERNARY_GROUP..];
                for (k, &wk) in wv.iter().enumerate() {
                    let qk = load(&qg[16 * k..]);
                    let p = i16x8_add(i16x8_extmul_low_i8x16(wk, qk), i16x8_extmul_high_i8x16(wk, qk));
                    acc16[t] = i16x8_add(acc16[t], p);
                }
            }
        }
        for t in 0..T {
            acc[t] = i32x4_add(acc[t], i32x4_extadd_pairwise_i16x8(acc16[t]));
        }
        g = end;
    }
    std::array::from_fn(|t| hsum_i32(acc[t]))
}

/// W (rows, cols) f32 @ x (cols,) -> out (rows,). See [`reference::matvec_f32`].
pub fn matvec_f32(w: &[f32], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    reference::check_matvec("matvec_f32", w.len(), rows, cols, x.len(), out.len());
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_f32(&w[r * cols..(r + 1) * cols], x);
    }
}

/// W (rows, cols) f16 @ x (cols,) -> out (rows,). See [`reference::matvec_f16`].
pub fn matvec_f16(w: &[f16], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    reference::check_matvec("matvec_f16", w.len(), rows, cols, x.len(), out.len());
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_f16(&w[r * cols..(r + 1) * cols], x);
    }
}

/// Σ w·x over one f16 row: each 16-byte load gives eight halves, widened
/// to two f32 vectors; four 4-lane accumulators, then a scalar tail.
fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    let mut acc = [f32x4_splat(0.0); 4];
    let body = w.len() / 16 * 16;
    for c in (0..body).step_by(16) {
        for h in 0..2 {
            let halves = load(&w[c + 8 * h..]);
            let low = f16x4_to_f32x4(u32x4_extend_low_u16x8(halves));
            let high = f16x4_to_f32x4(u32x4_extend_high_u16x8(halves));
            acc[2 * h] = f32x4_add(acc[2 * h], f32x4_mul(low, load(&x[c + 8 * h..])));
            acc[2 * h + 1] = f32x4_add(acc[2 * h + 1], f32x4_mul(high, load(&x[c + 8 * h + 4..])));
        }
    }
    let tail: f32 = w[body..].iter().zip(&x[body..]).map(|(a, b)| a.to_f32() * b).sum();
    hsum_f32(f32x4_add(f32x4_add(acc[0], acc[1]), f32x4_add(acc[2], acc[3]))) + tail
}

/// Four halves (zero-extended to 32 bits) as floats, exactly: exponent
/// and mantissa shifted into a float's place read as 2^-112 times the
/// value (a subnormal half becomes a subnormal float), so one multiply by
/// 2^112 rebiases both; infinities and NaNs get the all-ones exponent;
/// the sign goes back on last.
#[inline]
fn f16x4_to_f32x4(h: v128) -> v128 {
    let sign = i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16);
    let magnitude = i32x4_shl(v128_and(h, u32x4_splat(0x7fff)), 13);
    let rebiased = f32x4_mul(magnitude, f32x4_splat(f32::from_bits(0x7780_0000))); // 2^112
    let special = u32x4_ge(magnitude, u32x4_splat(0x7c00 << 13));
    let value = v128_bitselect(v128_or(magnitude, u32x4_splat(0x7f80_0000)), rebiased, special);
    v128_or(value, sign)
}

/// W (rows, cols) Q8_0 @ x (cols,) -> out (rows,). See [`reference::matvec_q8_0`].
pub fn matvec_q8_0(w: &[u8], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    let row_bytes = reference::check_matvec_q8_0(w.len(), rows, cols, x.len(), out.len());
    for (r, o) in out.iter_mut().enumerate() {
        *o = dot_q8_0(&w[r * row_bytes..(r + 1) * row_bytes], x);
    }
}

/// Causal attention: [`reference::attention_with`]'s steps with 4-lane
/// dot products and `y += p·x`. See [`reference::attention`].
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
    reference::attention_with(q, rows, kv, n_heads, n_kv, head_dim, scratch, out, dot_f32, axpy_f32)
}

/// y += p·x, four lanes at a time, then a scalar tail.
fn axpy_f32(p: f32, x: &[f32], y: &mut [f32]) {
    let body = x.len().min(y.len()) / 4 * 4;
    let pv = f32x4_splat(p);
    for c in (0..body).step_by(4) {
        let sum = f32x4_add(load(&y[c..]), f32x4_mul(pv, load(&x[c..])));
        // SAFETY: c + 4 <= body <= y.len(); v128.store has no alignment needs.
        unsafe { v128_store(y[c..].as_mut_ptr().cast(), sum) };
    }
    for (o, &xv) in y[body..].iter_mut().zip(&x[body..]) {
        *o += p * xv;
    }
}

/// Σ w·x over one f32 row: four 4-lane accumulators (simd128 has no fused
/// multiply-add), then a scalar tail.
fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [f32x4_splat(0.0); 4];
    let body = w.len() / 16 * 16;
    for c in (0..body).step_by(16) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = f32x4_add(*a, f32x4_mul(load(&w[c + 4 * k..]), load(&x[c + 4 * k..])));
        }
    }
    let tail: f32 = w[body..].iter().zip(&x[body..]).map(|(a, b)| a * b).sum();
    hsum_f32(f32x4_add(f32x4_add(acc[0], acc[1]), f32x4_add(acc[2], acc[3]))) + tail
}

/// Σ w·x over one Q8_0 row: per block, 32 int8 → eight f32 vectors, their
/// dot with x, times the block's scale.
fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = f32x4_splat(0.0);
    for (block, xb) in row.chunks_exact(Q8_0_BLOCK_BYTES).zip(x.chunks_exact(Q8_0_BLOCK)) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let mut dot = [f32x4_splat(0.0); 2];
        for h in 0..2 {
            let q8 = load(&block[2 + 16 * h..]);
            for (k, q16) in [i16x8_extend_low_i8x16(q8), i16x8_extend_high_i8x16(q8)].into_iter().enumerate() {
                for (j, q32) in [i32x4_extend_low_i16x8(q16), i32x4_extend_high_i16x8(q16)].into_iter().enumerate() {
                    let xv = load(&xb[16 * h + 8 * k + 4 * j..]);
                    dot[j] = f32x4_add(dot[j], f32x4_mul(f32x4_convert_i32x4(q32), xv));
                }
            }
        }
        acc = f32x4_add(acc, f32x4_mul(f32x4_splat(d), f32x4_add(dot[0], dot[1])));
    }
    hsum_f32(acc)
}

#[inline]
fn hsum_i32(v: v128) -> i32 {
    i32x4_extract_lane::<0>(v) + i32x4_extract_lane::<1>(v) + i32x4_extract_lane::<2>(v) + i32x4_extract_lane::<3>(v)
}

#[inline]
fn hsum_f32(v: v128) -> f32 {
    let pairs = f32x4_add(v, i32x4_shuffle::<2, 3, 0, 1>(v, v));
    f32x4_extract_lane::<0>(pairs) + f32x4_extract_lane::<1>(pairs)
}

/// 16 bytes (16 u8/i8 or 4 f32) from the front of `v`.
#[inline]
fn load<T: Copy>(v: &[T]) -> v128 {
    assert!(size_of_val(v) >= 16);
    // SAFETY: at least 16 readable bytes (checked above); v128.load has no
    // alignment needs.
    unsafe { v128_load(v.as_ptr().cast()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_half_widens_to_its_exact_float() {
        for bits in (0..=u16::MAX).step_by(4) {
            let halves: [u32; 4] = std::array::from_fn(|i| u32::from(bits) + i as u32);
            let got = f16x4_to_f32x4(unsafe { v128_load(halves.as_ptr().cast()) });
            let mut lanes = [0u32; 4];
            unsafe { v128_store(lanes.as_mut_ptr().cast(), got) };
            for (half, lane) in halves.iter().zip(lanes) {
                let want = f16::from_bits(*half as u16).to_f32();
                let got = f32::from_bits(lane);
                assert!(
                    got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                    "{half:#06x}: {got} vs {want}"
                );
            }
        }
    }
}

#![allow(unsafe_code)]
//! NEON variants (aarch64). Same names and signatures as
//! [`crate::reference`]. NEON is part of every aarch64 target std runs on,
//! so the plain-NEON functions need no check; [`ternary_rows_dotprod`]
//! checks for the dot-product extension itself (a cached atomic load) and
//! falls back to [`ternary_rows`], so calling any of them directly is sound.
//!
//! Ternary products, per 128-column group of the packed layout: two 16-byte
//! loads of codes → four shift-and-mask steps each give eight vectors of 16
//! codes, each lined up with 16 contiguous int8 activations → minus one, so
//! codes become weights (-1, 0, 1); unpacking is paid once per group for a
//! whole tile of tokens. Then, per token:
//! - with dotprod ([`ternary_rows_dotprod`]), `sdot` (four i8·i8 products
//!   summed into each i32 lane), accumulated in i32 straight away;
//! - with plain NEON ([`ternary_rows`]), `smlal`/`smlal2` (i8·i8 → i16,
//!   each in [-128, 128]) into i16 sums over up to `I16_GROUPS` groups,
//!   widened into i32 lanes by `sadalp`.
//!
//! NEON multiplies signed bytes, so unlike AVX2's unsigned × signed
//! `maddubs` there is no Σq offset to take back out. Everything stays
//! integer until the one rescale per row (or per block), in the reference's
//! order, which makes the result bit-identical to it.
//!
//! `vdotq_s32` is still unstable on Rust 1.95, so `sdot` issues the one
//! instruction through `asm!`; swap it for the intrinsic once stable.

use crate::arch::driver::{self, Tile, TileKernel};
use crate::reference::{self, Q8_0_BLOCK, Q8_0_BLOCK_BYTES};
use crate::ternary::{TernaryMatrix, TERNARY_GROUP, TERNARY_GROUP_BYTES};
use half::f16;
use std::arch::aarch64::*;
use std::arch::asm;
use std::ops::Range;

/// Groups summed in i16 before widening: each i16 lane takes 8 products of
/// magnitude <= 128 per group, so 16 groups stay within 16384.
const I16_GROUPS: usize = 16;

pub(crate) fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// Rows `rows` of W @ q (n, cols) -> out (rows.len(), n), plain NEON. See
/// [`reference::ternary_rows`].
pub fn ternary_rows(w: &TernaryMatrix, q: &[i8], s: &[f32], rows: Range<usize>, out: &mut [f32]) {
    // SAFETY: NEON is part of every aarch64 target.
    unsafe { driver::ternary_rows::<Neon>(w, q, s, rows, out) }
}

/// [`ternary_rows`] with the dot-product extension (`sdot`); the plain
/// NEON version on CPUs without it.
pub fn ternary_rows_dotprod(w: &TernaryMatrix, q: &[i8], s: &[f32], rows: Range<usize>, out: &mut [f32]) {
    if !has_dotprod() {
        return ternary_rows(w, q, s, rows, out);
    }
    // SAFETY: dotprod was detected above; NEON is part of every aarch64 target.
    unsafe { driver::ternary_rows::<NeonDotprod>(w, q, s, rows, out) }
}

/// The plain NEON inner kernel: [`group_dots_neon`].
struct Neon;

impl TileKernel for Neon {
    const SUMS_CODES: bool = false;

    unsafe fn rows<const T: usize>(tile: &Tile, rows: Range<usize>, out: &mut [f32]) {
        // SAFETY: NEON is part of every aarch64 target.
        unsafe { rows_neon::<T>(tile, rows, out) }
    }
}

/// The dot-product inner kernel: [`group_dots_sdot`].
struct NeonDotprod;

impl TileKernel for NeonDotprod {
    const SUMS_CODES: bool = false;

    unsafe fn rows<const T: usize>(tile: &Tile, rows: Range<usize>, out: &mut [f32]) {
        // SAFETY: the caller guarantees dotprod.
        unsafe { rows_dotprod::<T>(tile, rows, out) }
    }
}

#[target_feature(enable = "neon")]
fn rows_neon<const T: usize>(tile: &Tile, rows: Range<usize>, out: &mut [f32]) {
    tile.rows::<T>(rows, out, |codes, q, groups| group_dots_neon::<T>(codes, q, groups))
}

#[target_feature(enable = "neon,dotprod")]
fn rows_dotprod<const T: usize>(tile: &Tile, rows: Range<usize>, out: &mut [f32]) {
    tile.rows::<T>(rows, out, |codes, q, groups| group_dots_sdot::<T>(codes, q, groups))
}

/// The weights of group `group` (its 32 bytes) as eight vectors of -1/0/1:
/// vector `k` holds columns `16k .. 16k + 16` of the group.
#[target_feature(enable = "neon")]
#[inline]
fn unpack(group: &[u8]) -> [int8x16_t; 8] {
    let mask = vdupq_n_u8(3);
    let one = vdupq_n_s8(1);
    let (lo, hi) = (load_u8x16(&group[0..]), load_u8x16(&group[16..]));
    // Byte j holds columns j, 32 + j, 64 + j, 96 + j in bits 1:0, 3:2, 5:4, 7:6.
    let codes = [
        vandq_u8(lo, mask),
        vandq_u8(hi, mask),
        vandq_u8(vshrq_n_u8::<2>(lo), mask),
        vandq_u8(vshrq_n_u8::<2>(hi), mask),
        vandq_u8(vshrq_n_u8::<4>(lo), mask),
        vandq_u8(vshrq_n_u8::<4>(hi), mask),
        vshrq_n_u8::<6>(lo),
        vshrq_n_u8::<6>(hi),
    ];
    codes.map(|c| vsubq_s8(vreinterpretq_s8_u8(c), one))
}

/// Σ w·q over `groups` of one packed row for T tokens: i8 products into
/// i16 lanes, widened every `I16_GROUPS` groups.
#[target_feature(enable = "neon")]
#[inline]
fn group_dots_neon<const T: usize>(codes: &[u8], q: &[&[i8]; T], groups: Range<usize>) -> [i32; T] {
    let mut acc = [vdupq_n_s32(0); T];
    let mut g = groups.start;
    while g < groups.end {
        let end = (g + I16_GROUPS).min(groups.end);
        // Low and high halves of each product vector in separate i16 sums.
        let mut lo = [vdupq_n_s16(0); T];
        let mut hi = [vdupq_n_s16(0); T];
        for gg in g..end {
            let wv = unpack(&codes[gg * TERNARY_GROUP_BYTES..]);
            for t in 0..T {
                let qg = &q[t][gg * TERNARY_GROUP..];
                for (k, &wk) in wv.iter().enumerate() {
                    let qk = load_i8x16(&qg[16 * k..]);
                    lo[t] = vmlal_s8(lo[t], vget_low_s8(wk), vget_low_s8(qk));
                    hi[t] = vmlal_high_s8(hi[t], wk, qk);
                }
            }
        }
        for t in 0..T {
            acc[t] = vpadalq_s16(vpadalq_s16(acc[t], lo[t]), hi[t]);
        }
        g = end;
    }
    std::array::from_fn(|t| vaddvq_s32(acc[t]))
}

/// Σ w·q over `groups` of one packed row for T tokens, with `sdot`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn group_dots_sdot<const T: usize>(codes: &[u8], q: &[&[i8]; T], groups: Range<usize>) -> [i32; T] {
    // Two accumulators per token halve the dependency chain of `sdot`s.
    let mut acc = [[vdupq_n_s32(0); 2]; T];
    for g in groups {
        let wv = unpack(&codes[g * TERNARY_GROUP_BYTES..]);
        for t in 0..T {
            let qg = &q[t][g * TERNARY_GROUP..];
            for (k, &wk) in wv.iter().enumerate() {
                acc[t][k % 2] = sdot(acc[t][k % 2], wk, load_i8x16(&qg[16 * k..]));
            }
        }
    }
    std::array::from_fn(|t| vaddvq_s32(vaddq_s32(acc[t][0], acc[t][1])))
}

/// `acc` plus, in each i32 lane, the sum of the four products of the
/// matching bytes of `a` and `b`: the SDOT instruction (`vdotq_s32`).
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot(mut acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    // SAFETY: SDOT reads and writes only the three vector registers named;
    // this function enables the dotprod feature it needs.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// W (rows, cols) f16 @ x (cols,) -> out (rows,). See [`reference::matvec_f16`].
pub fn matvec_f16(w: &[f16], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    reference::check_matvec("matvec_f16", w.len(), rows, cols, x.len(), out.len());
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: NEON is part of every aarch64 target.
        *o = unsafe { dot_f16(&w[r * cols..(r + 1) * cols], x) };
    }
}

/// W (rows, cols) f32 @ x (cols,) -> out (rows,). See [`reference::matvec_f32`].
pub fn matvec_f32(w: &[f32], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    reference::check_matvec("matvec_f32", w.len(), rows, cols, x.len(), out.len());
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: NEON is part of every aarch64 target.
        *o = unsafe { dot_f32(&w[r * cols..(r + 1) * cols], x) };
    }
}

/// W (rows, cols) Q8_0 @ x (cols,) -> out (rows,). See [`reference::matvec_q8_0`].
pub fn matvec_q8_0(w: &[u8], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    let row_bytes = reference::check_matvec_q8_0(w.len(), rows, cols, x.len(), out.len());
    for (r, o) in out.iter_mut().enumerate() {
        // SAFETY: NEON is part of every aarch64 target.
        *o = unsafe { dot_q8_0(&w[r * row_bytes..(r + 1) * row_bytes], x) };
    }
}

/// Σ w·x over one f16 row: `fcvtl`/`fcvtl2` widen 8 halves at a time (base
/// NEON, no FP16 arithmetic needed), four 4-lane accumulators, a scalar tail.
#[target_feature(enable = "neon")]
fn dot_f16(w: &[f16], x: &[f32]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let body = w.len() / 16 * 16;
    for c in (0..body).step_by(16) {
        for h in 0..2 {
            let wh = load_f16x8(&w[c + 8 * h..]);
            let lo = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(wh)));
            let hi = vcvt_high_f32_f16(vreinterpretq_f16_u16(wh));
            acc[2 * h] = vfmaq_f32(acc[2 * h], lo, load_f32x4(&x[c + 8 * h..]));
            acc[2 * h + 1] = vfmaq_f32(acc[2 * h + 1], hi, load_f32x4(&x[c + 8 * h + 4..]));
        }
    }
    let tail: f32 = w[body..].iter().zip(&x[body..]).map(|(a, b)| a.to_f32() * b).sum();
    vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]))) + tail
}

/// Σ w·x over one f32 row.
#[target_feature(enable = "neon")]
fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [vdupq_n_f32(0.0); 4];
    let body = w.len() / 16 * 16;
    for c in (0..body).step_by(16) {
        for (k, a) in acc.iter_mut().enumerate() {
            *a = vfmaq_f32(*a, load_f32x4(&w[c + 4 * k..]), load_f32x4(&x[c + 4 * k..]));
        }
    }
    let tail: f32 = w[body..].iter().zip(&x[body..]).map(|(a, b)| a * b).sum();
    vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]))) + tail
}

/// Σ w·x over one Q8_0 row: per block, 32 int8 → eight f32 vectors, their
/// dot with x, times the block's scale.
#[target_feature(enable = "neon")]
fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = vdupq_n_f32(0.0);
    for (block, xb) in row.chunks_exact(Q8_0_BLOCK_BYTES).zip(x.chunks_exact(Q8_0_BLOCK)) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let qs = [vreinterpretq_s8_u8(load_u8x16(&block[2..])), vreinterpretq_s8_u8(load_u8x16(&block[18..]))];
        let mut dot = [vdupq_n_f32(0.0); 2];
        for (h, &q8) in qs.iter().enumerate() {
            let q16 = [vmovl_s8(vget_low_s8(q8)), vmovl_high_s8(q8)];
            for (k, &v) in q16.iter().enumerate() {
                let q32 = [vmovl_s16(vget_low_s16(v)), vmovl_high_s16(v)];
                for (j, &v) in q32.iter().enumerate() {
                    let i = 16 * h + 8 * k + 4 * j;
                    dot[j] = vfmaq_f32(dot[j], vcvtq_f32_s32(v), load_f32x4(&xb[i..]));
                }
            }
        }
        acc = vfmaq_n_f32(acc, vaddq_f32(dot[0], dot[1]), d);
    }
    vaddvq_f32(acc)
}

/// 16 bytes from the front of `v`.
#[target_feature(enable = "neon")]
#[inline]
fn load_u8x16(v: &[u8]) -> uint8x16_t {
    assert!(v.len() >= 16);
    // SAFETY: at least 16 readable bytes (checked above); ld1 has no alignment needs.
    unsafe { vld1q_u8(v.as_ptr()) }
}

#[target_feature(enable = "neon")]
#[inline]
fn load_i8x16(v: &[i8]) -> int8x16_t {
    assert!(v.len() >= 16);
    // SAFETY: at least 16 readable bytes (checked above); ld1 has no alignment needs.
    unsafe { vld1q_s8(v.as_ptr()) }
}

#[target_feature(enable = "neon")]
#[inline]
fn load_f32x4(v: &[f32]) -> float32x4_t {
    assert!(v.len() >= 4);
    // SAFETY: at least 4 readable f32 (checked above); ld1 has no alignment needs.
    unsafe { vld1q_f32(v.as_ptr()) }
}

/// 8 f16 as their raw bits.
#[target_feature(enable = "neon")]
#[inline]
fn load_f16x8(v: &[f16]) -> uint16x8_t {
    assert!(v.len() >= 8);
    // SAFETY: at least 16 readable bytes (checked above; f16 is a u16 in
    // memory); ld1 has no alignment needs beyond u16's.
    unsafe { vld1q_u16(v.as_ptr().cast()) }
}

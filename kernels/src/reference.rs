#![forbid(unsafe_code)]
//! Scalar references: the definition of every operation, written to be read.
//!
//! Every optimised variant in [`crate::arch`] is tested against these. The
//! public functions at the crate root reach them through
//! [`crate::dispatch`] whenever no faster variant applies.

use crate::ternary::{get_code, Scales, TernaryMatrix, TQ_BLOCK};
use half::f16;
use std::ops::Range;

/// Floor of the activation absmax in [`quantize_row_i8`], so that an all-zero
/// row gets a finite scale.
pub const QUANT_MIN_ABSMAX: f32 = 1e-5;
/// Elements per Q8_0 block.
pub const Q8_0_BLOCK: usize = 32;
/// Bytes per Q8_0 block: an f16 scale then 32 int8 values.
pub const Q8_0_BLOCK_BYTES: usize = 2 + Q8_0_BLOCK;

/// Per-token absmax int8 quantisation. Returns `s`; `x ≈ q / s`.
///
/// `s = 127 / max(max|x|, 1e-5)`, `q = clamp(round_ties_even(x * s), -128, 127)`.
pub fn quantize_row_i8(x: &[f32], q: &mut [i8]) -> f32 {
    // x (n,) -> q (n,)
    assert_eq!(x.len(), q.len(), "quantize_row_i8: x and q lengths");
    let absmax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let s = 127.0 / absmax.max(QUANT_MIN_ABSMAX);
    for (qi, &xi) in q.iter_mut().zip(x) {
        *qi = (xi * s).round_ties_even().clamp(-128.0, 127.0) as i8;
    }
    s
}

/// Rows `rows` of W (rows, cols) ternary @ q (n, cols) int8 with scales
/// s (n,) -> out (rows.len(), n), weight-row-major:
/// `out[i·n + t] = (Σ_c w[rows.start + i, c]·q[t, c]) as f32 * w_scale / s[t]`,
/// the sum in i32; with per-block scales each block's integer sum is scaled,
/// then summed in f32 before the division by `s[t]`.
///
/// This is the one ternary product every variant implements; the crate's
/// [`crate::ternary_gemv`] and [`crate::ternary_gemm`] split the rows over
/// threads and lay the result out per token.
pub fn ternary_rows(w: &TernaryMatrix, q: &[i8], s: &[f32], rows: Range<usize>, out: &mut [f32]) {
    check_ternary_rows(w, q, s, &rows, out);
    let n = s.len();
    for (i, r) in rows.enumerate() {
        let codes = w.row_codes(r);
        for t in 0..n {
            let qt = &q[t * w.cols..(t + 1) * w.cols];
            let dot =
                |cols: Range<usize>| -> i32 { cols.map(|c| (get_code(codes, c) as i32 - 1) * qt[c] as i32).sum() };
            out[i * n + t] = match &w.scales {
                Scales::Tensor(d) => dot(0..w.cols) as f32 * d / s[t],
                Scales::Blocks(ds) => {
                    let blocks = w.cols / TQ_BLOCK;
                    let mut acc = 0.0f32;
                    for b in 0..blocks {
                        acc += dot(b * TQ_BLOCK..(b + 1) * TQ_BLOCK) as f32 * ds[r * blocks + b];
                    }
                    acc / s[t]
                }
            };
        }
    }
}

/// The shape checks every [`ternary_rows`] variant starts with.
pub(crate) fn check_ternary_rows(w: &TernaryMatrix, q: &[i8], s: &[f32], rows: &Range<usize>, out: &[f32]) {
    let n = s.len();
    assert_eq!(q.len(), n * w.cols, "ternary_rows: q length vs (n, cols)");
    assert!(rows.start <= rows.end && rows.end <= w.rows, "ternary_rows: rows {rows:?} outside 0..{}", w.rows);
    assert_eq!(out.len(), rows.len() * n, "ternary_rows: out length vs (rows, n)");
}

/// RMS norm: x (n,), weight (n,) -> out (n,) = x / sqrt(mean(x²) + eps) * weight.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), weight.len(), "rmsnorm: x and weight lengths");
    assert_eq!(x.len(), out.len(), "rmsnorm: x and out lengths");
    if x.is_empty() {
        return;
    }
    let mean_sq = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &xi), &wi) in out.iter_mut().zip(x).zip(weight) {
        *o = xi * inv * wi;
    }
}

/// NEOX (rotate-half) RoPE in place. x (n_heads, head_dim); in each head the
/// first `rot_dim` dims rotate as pairs (i, i + rot_dim/2) by angle
/// `pos * theta^(-2i/rot_dim)`; the rest pass through.
pub fn rope_neox(x: &mut [f32], n_heads: usize, head_dim: usize, rot_dim: usize, pos: usize, theta: f32) {
    assert_eq!(x.len(), n_heads * head_dim, "rope_neox: x length vs (n_heads, head_dim)");
    assert!(rot_dim <= head_dim && rot_dim.is_multiple_of(2), "rope_neox: rot_dim {rot_dim} vs head_dim {head_dim}");
    let half = rot_dim / 2;
    for i in 0..half {
        let (cos, sin) = rope_cos_sin(i, rot_dim, pos, theta);
        for h in 0..n_heads {
            let base = h * head_dim;
            let (a, b) = (x[base + i], x[base + i + half]);
            x[base + i] = a * cos - b * sin;
            x[base + i + half] = a * sin + b * cos;
        }
    }
}

/// Cosine and sine of the angle pair i of `rot_dim` turns by at `pos`:
/// `pos · theta^(-2i/rot_dim)`, in f64 (at positions in the thousands an
/// f32 product loses ~1e-3 rad), rounded to f32. Other devices take these
/// from here, so every backend rotates by the same values.
pub fn rope_cos_sin(i: usize, rot_dim: usize, pos: usize, theta: f32) -> (f32, f32) {
    let freq = (theta as f64).powf(-2.0 * i as f64 / rot_dim as f64);
    let (sin, cos) = (pos as f64 * freq).sin_cos();
    (cos as f32, sin as f32)
}

/// Softmax in place over x (n,). An empty slice is left alone.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// Keys and values of `len` positions kept in blocks of `block_len`
/// positions: `k[b]` and `v[b]` hold (block_len, row_stride) rows, position
/// `j` is row `j % block_len` of block `j / block_len`, its kv head h at
/// `h·head_dim` within the row, and the last block may be partly filled.
/// `row_stride` is n_kv·head_dim for a whole cache, more when the slices
/// start at a later kv head of a wider one. One contiguous
/// (len, n_kv·head_dim) pair is one block of `len` positions
/// ([`KvBlocks::contiguous`]).
#[derive(Debug, Clone, Copy)]
pub struct KvBlocks<'a> {
    pub k: &'a [&'a [f32]],
    pub v: &'a [&'a [f32]],
    pub block_len: usize,
    pub len: usize,
    pub row_stride: usize,
}

impl<'a> KvBlocks<'a> {
    /// One block holding every position: `k` and `v` are one-element arrays
    /// of (len, n_kv·head_dim) slices.
    pub fn contiguous(k: &'a [&'a [f32]; 1], v: &'a [&'a [f32]; 1], len: usize) -> Self {
        Self { k, v, block_len: len.max(1), len, row_stride: k[0].len() / len.max(1) }
    }

    /// Blocks with at least one position in use, each with its used rows:
    /// (keys, values, positions).
    pub(crate) fn blocks(&self) -> impl Iterator<Item = (&'a [f32], &'a [f32], usize)> + '_ {
        let (len, bl) = (self.len, self.block_len);
        self.k
            .iter()
            .zip(self.v)
            .take(len.div_ceil(bl))
            .enumerate()
            .map(move |(b, (k, v))| (*k, *v, bl.min(len - b * bl)))
    }
}

/// Causal attention of `rows` queries of one sequence, at the last `rows`
/// of its `kv.len` cached positions (query r sees positions
/// `0..=kv.len - rows + r`), GQA: q (rows, n_heads·head_dim), scratch
/// (>= rows·(n_heads/n_kv)·kv.len,), out (rows, n_heads·head_dim); scores
/// scaled by 1/sqrt(head_dim). Query head h reads kv head
/// `h / (n_heads / n_kv)`.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    rows: usize,
    kv: KvBlocks,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let axpy = |p: f32, x: &[f32], y: &mut [f32]| {
        for (o, &xv) in y.iter_mut().zip(x) {
            *o += p * xv;
        }
    };
    attention_with(q, rows, kv, n_heads, n_kv, head_dim, scratch, out, dot, axpy)
}

/// The steps of [`attention`] with its two vector operations supplied by a
/// variant: `dot(a, b)` = Σ a·b and `axpy(p, x, y)`: y += p·x.
///
/// Each cached key and value row is read once per kv head and used by every
/// query of the group and of the `rows` that see it, while it is in cache.
/// Every query still goes through the same operations in the same order
/// (its scores position by position, one softmax, its values position by
/// position), so a query gets the same bits however many rows share the
/// call.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) fn attention_with(
    q: &[f32],
    rows: usize,
    kv: KvBlocks,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    scratch: &mut [f32],
    out: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
    axpy: impl Fn(f32, &[f32], &mut [f32]),
) {
    let shape = AttentionShape::new(q, rows, &kv, n_heads, n_kv, head_dim, scratch, out);
    let AttentionShape { group, kv_stride, scale, t, first, queries, .. } = shape;
    let span = |hk: usize, x: usize| shape.at(hk, x)..shape.at(hk, x) + head_dim;
    let scores = &mut scratch[..queries * t];
    for hk in 0..n_kv {
        let kv_off = hk * head_dim;
        let mut at = 0;
        for (kb, _, used) in kv.blocks() {
            for jj in 0..used {
                let j = at + jj;
                let key = &kb[jj * kv_stride + kv_off..jj * kv_stride + kv_off + head_dim];
                for x in j.saturating_sub(first) * group..queries {
                    scores[x * t + j] = dot(&q[span(hk, x)], key) * scale;
                }
            }
            at += used;
        }
        for x in 0..queries {
            softmax(&mut scores[x * t..x * t + shape.sees(x)]);
            out[span(hk, x)].fill(0.0);
        }
        let mut at = 0;
        for (_, vb, used) in kv.blocks() {
            for jj in 0..used {
                let j = at + jj;
                let value = &vb[jj * kv_stride + kv_off..jj * kv_stride + kv_off + head_dim];
                for x in j.saturating_sub(first) * group..queries {
                    axpy(scores[x * t + j], value, &mut out[span(hk, x)]);
                }
            }
            at += used;
        }
    }
}

/// gate (n,), up (n,) -> out (n,) = relu(gate)² * up (BitNet b1.58 2B-4T FFN).
pub fn relu2_gate(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len(), "relu2_gate: lengths");
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        let r = g.max(0.0);
        *o = r * r * u;
    }
}

/// gate (n,), up (n,) -> out (n,) = silu(gate) * up, silu(g) = g / (1 + e^-g).
pub fn silu_gate(gate: &[f32], up: &[f32], out: &mut [f32]) {
    assert!(gate.len() == up.len() && up.len() == out.len(), "silu_gate: lengths");
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// W (rows, cols) f16 @ x (cols,) -> out (rows,).
pub fn matvec_f16(w: &[f16], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    check_matvec("matvec_f16", w.len(), rows, cols, x.len(), out.len());
    for (r, o) in out.iter_mut().enumerate() {
        *o = w[r * cols..(r + 1) * cols].iter().zip(x).map(|(a, b)| a.to_f32() * b).sum();
    }
}

/// W (rows, cols) f32 @ x (cols,) -> out (rows,).
pub fn matvec_f32(w: &[f32], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    check_matvec("matvec_f32", w.len(), rows, cols, x.len(), out.len());
    for (r, o) in out.iter_mut().enumerate() {
        *o = w[r * cols..(r + 1) * cols].iter().zip(x).map(|(a, b)| a * b).sum();
    }
}

/// W (rows, cols) Q8_0 @ x (cols,) -> out (rows,). W is raw GGUF bytes:
/// per row, cols/32 blocks of (d: f16, qs: [i8; 32]); value = d * q.
pub fn matvec_q8_0(w: &[u8], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    let row_bytes = check_matvec_q8_0(w.len(), rows, cols, x.len(), out.len());
    for (r, o) in out.iter_mut().enumerate() {
        let row = &w[r * row_bytes..(r + 1) * row_bytes];
        let mut acc = 0.0f32;
        for (block, xb) in row.chunks_exact(Q8_0_BLOCK_BYTES).zip(x.chunks_exact(Q8_0_BLOCK)) {
            let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
            let dot: f32 = block[2..].iter().zip(xb).map(|(&qv, &xv)| qv as i8 as f32 * xv).sum();
            acc += d * dot;
        }
        *o = acc;
    }
}

/// x (cols,) -> one Q8_0 row (raw GGUF bytes, `q8_0_row_bytes(cols)` long):
/// per block of 32, `d = max|x| / 127` stored as f16, `q = round(x / d)`
/// (ties away from zero) clamped to [-127, 127]; an all-zero block has d = 0.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [u8]) {
    assert_eq!(out.len(), q8_0_row_bytes(x.len()), "quantize_row_q8_0: out length vs cols");
    for (xb, ob) in x.chunks_exact(Q8_0_BLOCK).zip(out.chunks_exact_mut(Q8_0_BLOCK_BYTES)) {
        let absmax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = f16::from_f32(absmax / 127.0);
        let inv = if absmax > 0.0 { 127.0 / absmax } else { 0.0 };
        ob[..2].copy_from_slice(&d.to_le_bytes());
        for (o, &v) in ob[2..].iter_mut().zip(xb) {
            *o = (v * inv).round().clamp(-127.0, 127.0) as i8 as u8;
        }
    }
}

/// Row `row` of W (rows, cols) f16 -> out (cols,).
pub fn row_f16(w: &[f16], cols: usize, row: usize, out: &mut [f32]) {
    assert_eq!(out.len(), cols, "row_f16: out length vs cols");
    for (o, v) in out.iter_mut().zip(&w[row * cols..(row + 1) * cols]) {
        *o = v.to_f32();
    }
}

/// Row `row` of W (rows, cols) Q8_0 (raw GGUF bytes) -> out (cols,).
pub fn row_q8_0(w: &[u8], cols: usize, row: usize, out: &mut [f32]) {
    assert_eq!(out.len(), cols, "row_q8_0: out length vs cols");
    let row_bytes = q8_0_row_bytes(cols);
    let src = &w[row * row_bytes..(row + 1) * row_bytes];
    for (block, ob) in src.chunks_exact(Q8_0_BLOCK_BYTES).zip(out.chunks_exact_mut(Q8_0_BLOCK)) {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        for (o, &qv) in ob.iter_mut().zip(&block[2..]) {
            *o = d * qv as i8 as f32;
        }
    }
}

/// Row `row` of W (rows, cols) bf16 (raw little-endian bytes) -> out (cols,).
pub fn row_bf16(w: &[u8], cols: usize, row: usize, out: &mut [f32]) {
    assert_eq!(out.len(), cols, "row_bf16: out length vs cols");
    let src = &w[row * cols * 2..(row + 1) * cols * 2];
    for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
    }
}

/// The shape checks of every Q8_0 product; returns the bytes per row.
pub(crate) fn check_matvec_q8_0(w_len: usize, rows: usize, cols: usize, x_len: usize, out_len: usize) -> usize {
    let row_bytes = q8_0_row_bytes(cols);
    assert_eq!(w_len, rows * row_bytes, "matvec_q8_0: w length vs (rows, cols)");
    assert_eq!(x_len, cols, "matvec_q8_0: x length vs cols");
    assert_eq!(out_len, rows, "matvec_q8_0: out length vs rows");
    row_bytes
}

/// How one [`attention`] call is laid out. Per kv head hk there are
/// `queries` = rows·group queries: x = r·group + g is head hk·group + g of
/// row r, at position first + r, and sees positions 0..=first + r.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttentionShape {
    pub group: usize,
    pub qd: usize,
    pub head_dim: usize,
    pub kv_stride: usize,
    pub scale: f32,
    /// Positions in the cache.
    pub t: usize,
    /// Position of the first row.
    pub first: usize,
    pub queries: usize,
}

impl AttentionShape {
    /// Checks the arguments (the shape checks every [`attention`] variant
    /// starts with) and lays the call out.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        q: &[f32],
        rows: usize,
        kv: &KvBlocks,
        n_heads: usize,
        n_kv: usize,
        head_dim: usize,
        scratch: &[f32],
        out: &[f32],
    ) -> Self {
        assert!(n_kv > 0 && n_heads.is_multiple_of(n_kv), "attention: {n_heads} heads over {n_kv} kv heads");
        assert!(rows > 0 && rows <= kv.len, "attention: {rows} query rows over {} positions", kv.len);
        assert_eq!(q.len(), rows * n_heads * head_dim, "attention: q length");
        assert_eq!(out.len(), rows * n_heads * head_dim, "attention: out length");
        let blocks = kv.len.div_ceil(kv.block_len.max(1));
        assert!(kv.block_len > 0, "attention: empty blocks");
        assert!(
            kv.row_stride >= n_kv * head_dim,
            "attention: rows of {} for {n_kv} kv heads of {head_dim}",
            kv.row_stride
        );
        assert!(kv.k.len() >= blocks && kv.v.len() >= blocks, "attention: fewer blocks than positions need");
        // Every block but the last holds block_len rows; the last its used ones.
        let needs = |b: usize| (kv.block_len.min(kv.len - b * kv.block_len) - 1) * kv.row_stride + n_kv * head_dim;
        assert!(
            (0..blocks).all(|b| kv.k[b].len() >= needs(b) && kv.v[b].len() >= needs(b)),
            "attention: a k/v block is shorter than its rows"
        );
        assert!(
            scratch.len() >= rows * (n_heads / n_kv) * kv.len,
            "attention: scratch shorter than rows x group x positions"
        );
        let group = n_heads / n_kv;
        Self {
            group,
            qd: n_heads * head_dim,
            head_dim,
            kv_stride: kv.row_stride,
            scale: 1.0 / (head_dim as f32).sqrt(),
            t: kv.len,
            first: kv.len - rows,
            queries: rows * group,
        }
    }

    /// Where query x of kv head hk starts in q and in out.
    pub(crate) fn at(&self, hk: usize, x: usize) -> usize {
        (x / self.group) * self.qd + (hk * self.group + x % self.group) * self.head_dim
    }

    /// How many positions query x sees.
    pub(crate) fn sees(&self, x: usize) -> usize {
        self.first + x / self.group + 1
    }
}

/// Bytes per row of a Q8_0 matrix with `cols` columns.
///
/// # Panics
/// If `cols` is not a multiple of [`Q8_0_BLOCK`].
pub fn q8_0_row_bytes(cols: usize) -> usize {
    assert!(cols.is_multiple_of(Q8_0_BLOCK), "Q8_0 needs cols a multiple of {Q8_0_BLOCK}, got {cols}");
    cols / Q8_0_BLOCK * Q8_0_BLOCK_BYTES
}

pub(crate) fn check_matvec(name: &str, w_len: usize, rows: usize, cols: usize, x_len: usize, out_len: usize) {
    assert_eq!(w_len, rows * cols, "{name}: w length vs (rows, cols)");
    assert_eq!(x_len, cols, "{name}: x length vs cols");
    assert_eq!(out_len, rows, "{name}: out length vs rows");
}

//! CPU math for ternary (BitNet b1.58) language models. No I/O.
//!
//! How it fits:
//! 1. The host's model loader reads GGUF tensors and hands their raw bytes
//!    here: ternary projections (I2_S, TQ2_0, TQ1_0) are repacked once into
//!    a [`TernaryMatrix`]; dense tensors (F16, BF16, Q8_0, F32) stay as the
//!    file stores them.
//! 2. For each token the engine quantises the normalised activation row to
//!    int8 ([`quantize_row_i8`]), multiplies it by the ternary weights in
//!    integer arithmetic ([`ternary_gemv`], or [`ternary_gemm`] for a batch
//!    of tokens), and applies the element-wise steps of the layer
//!    ([`rmsnorm`], [`rope_neox`], [`attention`], [`relu2_gate`] /
//!    [`silu_gate`]).
//! 3. The output head and embedding lookups use the dense products
//!    ([`matvec_f16`], [`matvec_q8_0`], [`row_f16`], ...).
//! 4. Every function here forwards to [`dispatch::kernels`], which picks the
//!    fastest variant this CPU supports once ([`arch`]) and otherwise runs the
//!    scalar definition in [`reference`]. Variants are tested against it:
//!    integer sums bit-for-bit, floats within named tolerances.
//!
//! ```no_run
//! use tern_kernels::{quantize_row_i8, ternary_gemv, TernaryMatrix};
//!
//! // W (2, 3) ternary, scale 0.5
//! let w = TernaryMatrix::from_ternary(&[1, 0, -1, -1, 1, 1], 2, 3, 0.5)?;
//! let x = [0.25f32, -1.0, 0.5]; // x (3,)
//! let mut q = [0i8; 3];
//! let s = quantize_row_i8(&x, &mut q);
//! let mut out = [0f32; 2]; // out (2,)
//! ternary_gemv(&w, &q, s, &mut out);
//! # Ok::<(), tern_kernels::KernelError>(())
//! ```
#![deny(unsafe_code)]

pub mod arch;
pub mod dispatch;
mod error;
pub mod pool;
pub mod reference;
mod ternary;

pub use error::KernelError;
pub use half::f16;
pub use reference::{q8_0_row_bytes, rope_cos_sin, KvBlocks, Q8_0_BLOCK, Q8_0_BLOCK_BYTES, QUANT_MIN_ABSMAX};
pub use ternary::{TernaryMatrix, I2S_BLOCK, TERNARY_GROUP, TERNARY_GROUP_BYTES, TQ_BLOCK};

use dispatch::kernels;
use std::ops::Range;

/// Per-token absmax int8 quantisation: `s = 127 / max(max|x|, 1e-5)`,
/// `q = clamp(round_ties_even(x * s), -128, 127)`. Returns `s`.
///
/// # Panics
/// If `x` and `q` differ in length.
pub fn quantize_row_i8(x: &[f32], q: &mut [i8]) -> f32 {
    (kernels().quantize_row_i8)(x, q)
}

/// W (rows, cols) ternary @ q (cols,) int8 -> out (rows,):
/// `out[r] = (Σ_c w[r,c]·q[c]) as f32 * w_scale / s`, integer accumulation
/// (per-block scales: each block's integer sum is scaled, then summed).
/// Large matrices are split by rows over [`pool::global`].
///
/// # Panics
/// If `q.len() != w.cols()` or `out.len() != w.rows()`.
pub fn ternary_gemv(w: &TernaryMatrix, q: &[i8], s: f32, out: &mut [f32]) {
    assert_eq!(q.len(), w.cols(), "ternary_gemv: q length vs cols");
    assert_eq!(out.len(), w.rows(), "ternary_gemv: out length vs rows");
    // With one token, (rows, 1) is already the (1, rows) layout.
    ternary_rows_parallel(w, q, &[s], out);
}

/// n = `s.len()` tokens at once: q (n, cols), s (n,) -> out (n, rows); each
/// weight is unpacked once for a tile of tokens.
///
/// # Panics
/// If `q` or `out` do not hold n rows.
pub fn ternary_gemm(w: &TernaryMatrix, q: &[i8], s: &[f32], out: &mut [f32]) {
    let (n, rows) = (s.len(), w.rows());
    assert_eq!(q.len(), n * w.cols(), "ternary_gemm: q length vs (n, cols)");
    assert_eq!(out.len(), n * rows, "ternary_gemm: out length vs (n, rows)");
    if n <= 1 {
        return ternary_rows_parallel(w, q, s, out);
    }
    ternary_gemm_many(&mut [(w, out)], q, s)
}

/// Tokens per pass of [`transpose_into`]: 16 f32, one cache line of each
/// row of the (rows, n) result.
const TRANSPOSE_TOKENS: usize = 16;

/// tmp (rows, n) -> the rows' columns of out (n, all rows), 16 tokens at a
/// time: one cache line of each row of tmp per pass, each token's part of
/// out written front to back.
fn transpose_into(tmp: &[f32], n: usize, out: &mut pool::Columns<'_, f32>) {
    for t0 in (0..n).step_by(TRANSPOSE_TOKENS) {
        let mut dst: Vec<&mut [f32]> = out.rows_mut(t0..(t0 + TRANSPOSE_TOKENS).min(n)).collect();
        for (r, src) in tmp.chunks_exact(n).enumerate() {
            for (d, &v) in dst.iter_mut().zip(&src[t0..]) {
                d[r] = v;
            }
        }
    }
}

/// Several matrices of the same width against the same q (n, cols) and s
/// (n,), in one pass over the pool: each pair's out (n, its rows) = W @ q.
/// One hand-off to the pool instead of one per matrix, and the threads
/// balance over all the rows at once. Each result is bit-identical to
/// [`ternary_gemm`] of its matrix.
///
/// # Panics
/// If the matrices' widths differ, or `q` or an `out` does not hold n rows.
pub fn ternary_gemm_many(products: &mut [(&TernaryMatrix, &mut [f32])], q: &[i8], s: &[f32]) {
    let n = s.len();
    let Some(cols) = products.first().map(|(w, _)| w.cols()) else { return };
    assert!(products.iter().all(|(w, _)| w.cols() == cols), "ternary_gemm_many: widths differ");
    assert_eq!(q.len(), n * cols, "ternary_gemm_many: q length vs (n, cols)");
    for (w, out) in products.iter() {
        assert_eq!(out.len(), n * w.rows(), "ternary_gemm_many: out length vs (n, rows)");
    }
    if n == 0 {
        return;
    }
    if kernels().ternary_gemm.is_some_and(|gemm| gemm(products, q, s)) {
        return;
    }
    let f = kernels().ternary_rows;
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // Each task's (rows, n) result goes back to (n, rows) while it is
    // still in this core's cache.
    for_each_row_task(products, cols * n, 1, &|w, rows, block| {
        SCRATCH.with_borrow_mut(|tmp| {
            tmp.resize(rows.len() * n, 0.0);
            f(w, q, s, rows, tmp);
            transpose_into(tmp, n, block);
        })
    });
}

/// One task of [`for_each_row_task`]: W, its rows, their output columns.
pub(crate) type RowTask<'a> = dyn Fn(&TernaryMatrix, Range<usize>, &mut pool::Columns<'_, f32>) + Sync + 'a;

/// `f(W, rows, block)` for every matrix's rows, in tasks of a multiple of
/// `align` rows (sized on all the matrices' rows together) split over the
/// pool; `block` is those rows' columns of the matrix's out (n, its rows).
pub(crate) fn for_each_row_task(
    products: &mut [(&TernaryMatrix, &mut [f32])],
    work_per_row: usize,
    align: usize,
    f: &RowTask<'_>,
) {
    let total: usize = products.iter().map(|(w, _)| w.rows()).sum();
    let chunk = rows_per_task(total, work_per_row).next_multiple_of(align);
    let mut tasks: Vec<(usize, Range<usize>)> = Vec::new();
    for (m, (w, _)) in products.iter().enumerate() {
        tasks.extend((0..w.rows()).step_by(chunk).map(|r| (m, r..(r + chunk).min(w.rows()))));
    }
    let ws: Vec<&TernaryMatrix> = products.iter().map(|(w, _)| *w).collect();
    let widths: Vec<usize> = ws.iter().map(|w| w.rows()).collect();
    let mut outs: Vec<&mut [f32]> = products.iter_mut().map(|(_, out)| &mut **out).collect();
    pool::global().for_each_columns(&mut outs, &widths, &tasks, &|i, mut block| {
        let (m, rows) = &tasks[i];
        f(ws[*m], rows.clone(), &mut block)
    });
}

/// Multiply-adds below which a product runs on the calling thread alone:
/// splitting costs a few microseconds.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// Rows per task for a product of `rows` rows of `work_per_row` multiply-adds:
/// a few tasks per thread so a slow core does not hold the others up.
fn rows_per_task(rows: usize, work_per_row: usize) -> usize {
    let threads = pool::global().threads();
    if threads == 1 || rows * work_per_row < PARALLEL_MIN_WORK {
        return rows.max(1);
    }
    rows.div_ceil(threads * 4).next_multiple_of(8)
}

/// out (rows, n) = every row of W against q (n, cols), split over the pool.
fn ternary_rows_parallel(w: &TernaryMatrix, q: &[i8], s: &[f32], out: &mut [f32]) {
    let n = s.len();
    if n == 0 {
        return;
    }
    let f = kernels().ternary_rows;
    let chunk = rows_per_task(w.rows(), w.cols() * n);
    pool::global().for_each_chunk(out, chunk * n, &|i, part| {
        let start = i * chunk;
        f(w, q, s, start..start + part.len() / n, part)
    });
}

/// A dense matvec with rows of `row_len` elements of `w`, split by rows
/// over the pool: `f(w_part, rows, x, out_part)`.
fn matvec_parallel<W: Sync>(
    w: &[W],
    row_len: usize,
    cols: usize,
    x: &[f32],
    out: &mut [f32],
    f: impl Fn(&[W], usize, &[f32], &mut [f32]) + Sync,
) {
    let rows = out.len();
    let chunk = rows_per_task(rows, cols);
    pool::global().for_each_chunk(out, chunk, &|i, part| {
        let start = i * chunk;
        f(&w[start * row_len..(start + part.len()) * row_len], part.len(), x, part)
    });
}

/// A dense product of one tile of rows with two vectors at once:
/// `f(w_part, rows, [x0, x1], [out0, out1])`.
type TwoVectors<W> = dyn Fn(&[W], usize, [&[f32]; 2], [&mut [f32]; 2]) + Sync;

/// Bytes of weights a task of a dense multi-vector product keeps in cache
/// while every vector passes over them.
const DENSE_TILE_BYTES: usize = 128 * 1024;

/// n vectors x (n, cols) through a dense W (rows of `row_bytes` bytes held
/// in `w`, `row_len` elements each) -> out (n, rows). Rows are split over
/// the pool, and within a task every vector passes over a tile of rows
/// while it is in cache, so W is read from memory once for all n. Each
/// output is the variant's matvec of that row, so a result never depends
/// on n or on how rows were split.
#[allow(clippy::too_many_arguments)]
fn matmul_parallel<W: Sync>(
    w: &[W],
    row_len: usize,
    row_bytes: usize,
    cols: usize,
    x: &[f32],
    out: &mut [f32],
    f: impl Fn(&[W], usize, &[f32], &mut [f32]) + Sync,
    f2: Option<&TwoVectors<W>>,
) {
    let n = x.len() / cols;
    let rows = out.len() / n.max(1);
    if n <= 1 {
        return matvec_parallel(w, row_len, cols, x, out, f);
    }
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let chunk = rows_per_task(rows, cols * n);
    let tile = (DENSE_TILE_BYTES / row_bytes.max(1)).clamp(1, chunk);
    SCRATCH.with_borrow_mut(|tmp| {
        // tmp: per task, (n, its rows)
        tmp.resize(n * rows, 0.0);
        pool::global().for_each_chunk(tmp, chunk * n, &|i, part| {
            let start = i * chunk;
            let m = part.len() / n;
            for r0 in (0..m).step_by(tile) {
                let len = tile.min(m - r0);
                let wt = &w[(start + r0) * row_len..(start + r0 + len) * row_len];
                let mut t = 0;
                while t < n {
                    let xt = |t: usize| &x[t * cols..(t + 1) * cols];
                    match f2 {
                        Some(f2) if t + 1 < n => {
                            let (a, b) = part.split_at_mut((t + 1) * m);
                            f2(
                                wt,
                                len,
                                [xt(t), xt(t + 1)],
                                [&mut a[t * m + r0..t * m + r0 + len], &mut b[r0..r0 + len]],
                            );
                            t += 2;
                        }
                        _ => {
                            f(wt, len, xt(t), &mut part[t * m + r0..t * m + r0 + len]);
                            t += 1;
                        }
                    }
                }
            }
        });
        gather_parts(tmp, chunk, n, out);
    });
}

/// out (n, rows) from tmp holding each task's (n, its rows) in turn,
/// tasks of `chunk` rows.
fn gather_parts(tmp: &[f32], chunk: usize, n: usize, out: &mut [f32]) {
    let rows = out.len() / n;
    for (i, part) in tmp.chunks(chunk * n).enumerate() {
        let m = part.len() / n;
        for (t, row) in part.chunks_exact(m).enumerate() {
            out[t * rows + i * chunk..t * rows + i * chunk + m].copy_from_slice(row);
        }
    }
}

/// n vectors x (n, cols) through a dense W whose variant multiplies many
/// vectors at once: `g(w_part, rows, x, out_part (n, rows))` on each task's
/// rows, so W is read from memory once for all n.
fn matmul_blocked<W: Sync>(
    w: &[W],
    row_len: usize,
    cols: usize,
    x: &[f32],
    out: &mut [f32],
    g: impl Fn(&[W], usize, &[f32], &mut [f32]) + Sync,
) {
    let n = x.len() / cols;
    if n == 0 {
        return;
    }
    let rows = out.len() / n;
    if n == 1 {
        return matvec_parallel(w, row_len, cols, x, out, g);
    }
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let chunk = rows_per_task(rows, cols * n);
    SCRATCH.with_borrow_mut(|tmp| {
        tmp.resize(n * rows, 0.0);
        pool::global().for_each_chunk(tmp, chunk * n, &|i, part| {
            let (start, m) = (i * chunk, part.len() / n);
            g(&w[start * row_len..(start + m) * row_len], m, x, part)
        });
        gather_parts(tmp, chunk, n, out);
    });
}

/// W (rows, cols) f16 @ x (n, cols) -> out (n, rows), W read once for all n
/// vectors; each row's result is bit-identical to [`matvec_f16`]'s.
pub fn matmul_f16(w: &[f16], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    check_matmul("matmul_f16", rows, cols, x.len(), out.len());
    reference::check_matvec("matmul_f16", w.len(), rows, cols, cols, rows);
    if let Some(g) = kernels().matmul_f16 {
        return matmul_blocked(w, cols, cols, x, out, |w, rows, x, out| g(w, rows, cols, x, out));
    }
    let (f, f2) = (kernels().matvec_f16, kernels().matvec2_f16);
    let two =
        f2.map(|f2| move |w: &[f16], rows: usize, x: [&[f32]; 2], out: [&mut [f32]; 2]| f2(w, rows, cols, x, out));
    let two = two.as_ref().map(|g| g as &TwoVectors<f16>);
    matmul_parallel(w, cols, cols * 2, cols, x, out, |w, rows, x, out| f(w, rows, cols, x, out), two)
}

/// W (rows, cols) f32 @ x (n, cols) -> out (n, rows); see [`matmul_f16`].
pub fn matmul_f32(w: &[f32], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    check_matmul("matmul_f32", rows, cols, x.len(), out.len());
    reference::check_matvec("matmul_f32", w.len(), rows, cols, cols, rows);
    let f = kernels().matvec_f32;
    matmul_parallel(w, cols, cols * 4, cols, x, out, |w, rows, x, out| f(w, rows, cols, x, out), None)
}

/// W (rows, cols) raw Q8_0 @ x (n, cols) -> out (n, rows); see [`matmul_f16`].
pub fn matmul_q8_0(w: &[u8], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    check_matmul("matmul_q8_0", rows, cols, x.len(), out.len());
    let row_bytes = reference::check_matvec_q8_0(w.len(), rows, cols, cols, rows);
    let f = kernels().matvec_q8_0;
    matmul_parallel(w, row_bytes, row_bytes, cols, x, out, |w, rows, x, out| f(w, rows, cols, x, out), None)
}

fn check_matmul(name: &str, rows: usize, cols: usize, x_len: usize, out_len: usize) {
    assert!(cols > 0 && x_len.is_multiple_of(cols), "{name}: x length {x_len} is not whole rows of {cols}");
    assert_eq!(out_len, x_len / cols * rows, "{name}: out length vs (n, rows)");
}

/// x (n,), weight (n,) -> out (n,) = x / sqrt(mean(x²) + eps) * weight.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    (kernels().rmsnorm)(x, weight, eps, out)
}

/// NEOX (rotate-half) RoPE in place over x (n_heads, head_dim), rotating the
/// first `rot_dim` dims of each head for position `pos`.
pub fn rope_neox(x: &mut [f32], n_heads: usize, head_dim: usize, rot_dim: usize, pos: usize, theta: f32) {
    reference::rope_neox(x, n_heads, head_dim, rot_dim, pos, theta)
}

/// Softmax in place over x (n,).
pub fn softmax(x: &mut [f32]) {
    reference::softmax(x)
}

/// Causal attention of `rows` query positions of one sequence, the last
/// `rows` of its `kv.len` cached positions kept in blocks, GQA:
/// q (rows, n_heads·head_dim), scratch (>= rows·(n_heads/n_kv)·kv.len,),
/// out (rows, n_heads·head_dim); scores scaled by 1/sqrt(head_dim). A
/// query's result does not depend on how many rows share the call.
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
    (kernels().attention)(q, rows, kv, n_heads, n_kv, head_dim, scratch, out)
}

/// gate (n,), up (n,) -> out (n,) = relu(gate)² * up.
pub fn relu2_gate(gate: &[f32], up: &[f32], out: &mut [f32]) {
    reference::relu2_gate(gate, up, out)
}

/// gate (n,), up (n,) -> out (n,) = silu(gate) * up.
pub fn silu_gate(gate: &[f32], up: &[f32], out: &mut [f32]) {
    reference::silu_gate(gate, up, out)
}

/// W (rows, cols) f16 @ x (cols,) -> out (rows,).
pub fn matvec_f16(w: &[f16], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    reference::check_matvec("matvec_f16", w.len(), rows, cols, x.len(), out.len());
    let f = kernels().matvec_f16;
    matvec_parallel(w, cols, cols, x, out, |w, rows, x, out| f(w, rows, cols, x, out))
}

/// W (rows, cols) f32 @ x (cols,) -> out (rows,).
pub fn matvec_f32(w: &[f32], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    reference::check_matvec("matvec_f32", w.len(), rows, cols, x.len(), out.len());
    let f = kernels().matvec_f32;
    matvec_parallel(w, cols, cols, x, out, |w, rows, x, out| f(w, rows, cols, x, out))
}

/// W (rows, cols) as raw GGUF Q8_0 bytes @ x (cols,) -> out (rows,).
///
/// # Panics
/// If `cols` is not a multiple of [`Q8_0_BLOCK`] or `w` is not
/// `rows * q8_0_row_bytes(cols)` long.
pub fn matvec_q8_0(w: &[u8], rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
    let row_bytes = reference::check_matvec_q8_0(w.len(), rows, cols, x.len(), out.len());
    let f = kernels().matvec_q8_0;
    matvec_parallel(w, row_bytes, cols, x, out, |w, rows, x, out| f(w, rows, cols, x, out))
}

/// x (cols,) -> one Q8_0 row of raw GGUF bytes (load-time conversion of a
/// dense head); see [`reference::quantize_row_q8_0`].
pub fn quantize_row_q8_0(x: &[f32], out: &mut [u8]) {
    reference::quantize_row_q8_0(x, out)
}

/// Row `row` of W (rows, cols) f16 -> out (cols,) (embedding lookup).
pub fn row_f16(w: &[f16], cols: usize, row: usize, out: &mut [f32]) {
    reference::row_f16(w, cols, row, out)
}

/// Row `row` of W (rows, cols) raw GGUF Q8_0 -> out (cols,).
pub fn row_q8_0(w: &[u8], cols: usize, row: usize, out: &mut [f32]) {
    reference::row_q8_0(w, cols, row, out)
}

/// Row `row` of W (rows, cols) raw little-endian bf16 -> out (cols,).
pub fn row_bf16(w: &[u8], cols: usize, row: usize, out: &mut [f32]) {
    reference::row_bf16(w, cols, row, out)
}

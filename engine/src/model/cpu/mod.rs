//! The CPU compute backend: the BitNet b1.58 forward pass over the kernels.
//!
//! Per step, every row (one token of one item) goes through, like
//! llama2.c's `forward()`:
//! 1. the embedding lookup;
//! 2. per layer, an attention block (norm, q/k/v from one int8 input in
//!    one hand-off to the thread pool, RoPE,
//!    keys and values into the KV memory, attention over the item's cached
//!    positions, sub-norm, output projection, residual) and a feed-forward
//!    block (norm, gate and up from one int8 input in one hand-off, squared-ReLU or SiLU
//!    gate, sub-norm, down projection, residual);
//! 3. the output norm, then the head for the rows that want logits.
//!
//! Every operation is per row and attention reads only the row's own item,
//! so a row gets the same bits whatever else shares its step.
//!
//! With `RUST_LOG=tern_engine::model::cpu=trace`, each pass logs where its
//! time went ([`Timeline`]): ternary products, attention, the per-row
//! element-wise work (norms, int8 quantisation, RoPE, gates, residuals) and
//! the head, so the next bottleneck of a batched step is visible.

mod attention_plan;
mod kv_memory;
mod scratch;

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use attention_plan::AttentionPlan;
use kv_memory::KvMemory;
use scratch::Scratch;
use tern_kernels::{self as k, KvBlocks, TernaryMatrix};

use crate::kv::BLOCK_TOKENS;
use crate::model::backend::{BatchItem, ComputeBackend, Forward, Output};
use crate::model::config::{Activation, ModelConfig};
use crate::model::weights::{Layer, Weights};

/// A model's weights on the CPU, with its KV memory and scratch buffers.
pub struct CpuBackend {
    weights: Weights,
    /// Taken for a whole forward pass: one pass runs at a time.
    state: Mutex<State>,
}

struct State {
    kv: KvMemory,
    scratch: Scratch,
}

impl CpuBackend {
    /// `weights` on the CPU, with KV memory for `kv_memory` bytes of blocks
    /// (at least one full context). Memory is taken as it is used, or all
    /// at once with `prefault`.
    pub fn new(weights: Weights, kv_memory: usize, prefault: bool) -> Self {
        let c = &weights.config;
        let per_block = KvMemory::block_bytes(c.n_layer, c.kv_dim());
        let blocks = (kv_memory / per_block).max(c.n_ctx.div_ceil(BLOCK_TOKENS));
        let kv = KvMemory::new(c.n_layer, c.kv_dim(), blocks, prefault);
        Self { weights, state: Mutex::new(State { kv, scratch: Scratch::default() }) }
    }

    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// x (n, d) = the embedding rows of every token of the step.
    fn embed(&self, items: &[BatchItem], x: &mut [f32]) {
        let d = self.weights.config.n_embd;
        let tokens = items.iter().flat_map(|it| it.tokens);
        for (i, &t) in tokens.enumerate() {
            // Ids were checked against the vocabulary when the prompt was admitted.
            self.weights.token_embd.row(d, t as usize, &mut x[i * d..(i + 1) * d]);
        }
    }

    /// x += Wo · sub_norm(attention(RoPE(Wq n), RoPE(Wk n), Wv n)), n = norm(x).
    #[allow(clippy::too_many_arguments)]
    fn attention_block(
        &self,
        l: usize,
        layer: &Layer,
        items: &[BatchItem],
        rows: &[(usize, usize)],
        plan: &AttentionPlan,
        kv: &mut KvMemory,
        s: &mut Scratch,
        time: &mut Timeline,
    ) {
        let c = &self.weights.config;
        let (n, d, qd, kvd) = (rows.len(), c.n_embd, c.q_dim(), c.kv_dim());
        // q, k and v share one quantised input.
        rmsnorm_rows(&s.x, &layer.attn_norm, c.rms_eps, n, &mut s.xn);
        quantize_rows(&s.xn, n, d, &mut s.xq, &mut s.xs);
        time.charge(Phase::Elementwise);
        k::ternary_gemm_many(
            &mut [(&layer.wq, &mut s.q[..n * qd]), (&layer.wk, &mut s.k[..n * kvd]), (&layer.wv, &mut s.v[..n * kvd])],
            &s.xq[..n * d],
            &s.xs[..n],
        );
        time.charge(Phase::Ternary);
        for (t, &(i, pos)) in rows.iter().enumerate() {
            k::rope_neox(&mut s.q[t * qd..(t + 1) * qd], c.n_head, c.head_dim, c.rope_dim, pos, c.rope_theta);
            let kt = &mut s.k[t * kvd..(t + 1) * kvd];
            k::rope_neox(kt, c.n_head_kv, c.head_dim, c.rope_dim, pos, c.rope_theta);
            kv.write(l, items[i].blocks, pos, kt, &s.v[t * kvd..(t + 1) * kvd]);
        }
        let views: Vec<_> = items.iter().map(|it| kv.layer_blocks(l, it.blocks)).collect();
        let group = c.n_head / c.n_head_kv;
        let q = &s.q;
        let attend = |p: usize, out: &mut [f32]| {
            let piece = &plan.pieces[p];
            let (kb, vb) = &views[piece.item];
            let last = rows[piece.first + piece.rows - 1].1;
            // A window onto this piece's kv heads of every block.
            let skip = piece.heads.start * c.head_dim;
            let kb: Vec<&[f32]> = kb.iter().map(|b| &b[skip..]).collect();
            let vb: Vec<&[f32]> = vb.iter().map(|b| &b[skip..]).collect();
            // Causal: a position sees everything up to itself.
            let blocks = KvBlocks { k: &kb, v: &vb, block_len: BLOCK_TOKENS, len: last + 1, row_stride: kvd };
            let (n_heads, n_kv) = (piece.heads.len() * group, piece.heads.len());
            with_scores(piece.rows * group * (last + 1), |scores| {
                k::attention(&q[plan.region(piece)], piece.rows, blocks, n_heads, n_kv, c.head_dim, scores, out)
            });
        };
        k::pool::global().for_each_part(&mut s.att, &plan.ends, &attend);
        drop(views);
        time.charge(Phase::Attention);
        rmsnorm_rows(&s.att, &layer.attn_sub_norm, c.rms_eps, n, &mut s.xn);
        quantize_rows(&s.xn[..n * qd], n, qd, &mut s.xq, &mut s.xs);
        time.charge(Phase::Elementwise);
        bitlinear_quantized(&layer.wo, &s.xq[..n * qd], &s.xs[..n], n, &mut s.out);
        time.charge(Phase::Ternary);
        add_rows(&mut s.x, &s.out, n, c.n_embd);
    }

    /// x += Wdown · sub_norm(act(Wgate n) * (Wup n)), n = norm(x).
    fn feed_forward_block(&self, layer: &Layer, n: usize, s: &mut Scratch, time: &mut Timeline) {
        let c = &self.weights.config;
        let (d, ff) = (c.n_embd, c.n_ff);
        // The residual add of the attention block is charged here.
        // gate and up share one quantised input.
        rmsnorm_rows(&s.x, &layer.ffn_norm, c.rms_eps, n, &mut s.xn);
        quantize_rows(&s.xn, n, d, &mut s.xq, &mut s.xs);
        time.charge(Phase::Elementwise);
        k::ternary_gemm_many(
            &mut [(&layer.w_gate, &mut s.gate[..n * ff]), (&layer.w_up, &mut s.up[..n * ff])],
            &s.xq[..n * d],
            &s.xs[..n],
        );
        time.charge(Phase::Ternary);
        let gate_fn = match c.activation {
            Activation::Relu2 => k::relu2_gate,
            Activation::Silu => k::silu_gate,
        };
        let (gate, up) = (&s.gate, &s.up);
        each_row(&mut s.h[..n * ff], ff, |i, h| gate_fn(&gate[i * ff..(i + 1) * ff], &up[i * ff..(i + 1) * ff], h));
        rmsnorm_rows(&s.h, &layer.ffn_sub_norm, c.rms_eps, n, &mut s.gate);
        quantize_rows(&s.gate[..n * ff], n, ff, &mut s.xq, &mut s.xs);
        time.charge(Phase::Elementwise);
        bitlinear_quantized(&layer.w_down, &s.xq[..n * ff], &s.xs[..n], n, &mut s.out);
        time.charge(Phase::Ternary);
        add_rows(&mut s.x, &s.out, n, d);
    }

    /// The output norm of the rows the items want, then the head, once,
    /// for the rows that want logits.
    fn head(&self, items: &[BatchItem], x: &[f32]) -> Forward {
        let c = &self.weights.config;
        let d = c.n_embd;
        let (mut logit_rows, mut hidden_rows) = (Vec::new(), Vec::new());
        let mut first = 0;
        for it in items {
            let len = it.tokens.len();
            match it.output {
                Output::Nothing => {}
                Output::LastLogits => logit_rows.push(first + len - 1),
                Output::AllLogits => logit_rows.extend(first..first + len),
                Output::Hidden => hidden_rows.extend(first..first + len),
            }
            first += len;
        }
        let normed = |rows: &[usize]| {
            let mut out = vec![0.0; rows.len() * d];
            for (j, &i) in rows.iter().enumerate() {
                let (row, o) = (&x[i * d..(i + 1) * d], &mut out[j * d..(j + 1) * d]);
                k::rmsnorm(row, &self.weights.output_norm, c.rms_eps, o);
            }
            out
        };
        let mut logits = vec![0.0; logit_rows.len() * c.n_vocab];
        if !logit_rows.is_empty() {
            self.weights.head().matmul(c.n_vocab, d, &normed(&logit_rows), &mut logits);
        }
        Forward { logits, hidden: normed(&hidden_rows) }
    }
}

impl ComputeBackend for CpuBackend {
    fn config(&self) -> &ModelConfig {
        &self.weights.config
    }

    fn device(&self) -> String {
        format!("cpu {}", k::dispatch::chosen().name)
    }

    fn kv_blocks(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).kv.blocks()
    }

    fn forward(&self, items: &[BatchItem]) -> Forward {
        // Every token of the step with its item and position.
        let mut rows = Vec::new();
        for (i, it) in items.iter().enumerate() {
            let end = it.pos + it.tokens.len();
            assert!(it.blocks.len() * BLOCK_TOKENS >= end, "forward: item {i} has no KV room for {end} positions");
            assert!(!it.tokens.is_empty() || it.output == Output::Nothing, "forward: output of no tokens");
            rows.extend((it.pos..end).map(|pos| (i, pos)));
        }
        if rows.is_empty() {
            return Forward::default();
        }
        let c = &self.weights.config;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let State { kv, scratch: s } = &mut *state;
        s.resize(rows.len(), c);
        let mut time = Timeline::start();
        let plan = AttentionPlan::new(items, c, k::pool::global().threads());
        self.embed(items, &mut s.x);
        for (l, layer) in self.weights.layers.iter().enumerate() {
            self.attention_block(l, layer, items, &rows, &plan, kv, s, &mut time);
            self.feed_forward_block(layer, rows.len(), s, &mut time);
        }
        time.charge(Phase::Elementwise);
        let forward = self.head(items, &s.x);
        time.charge(Phase::Head);
        time.log(rows.len());
        forward
    }
}

/// What a forward pass spends its time on.
#[derive(Clone, Copy)]
enum Phase {
    Ternary,
    Attention,
    Elementwise,
    Head,
}

/// Milliseconds per [`Phase`] of one forward pass, measured only when its
/// trace line is wanted (otherwise every call is a no-op).
struct Timeline {
    last: Option<Instant>,
    spent_ms: [f64; 4],
}

impl Timeline {
    fn start() -> Self {
        Self { last: tracing::enabled!(tracing::Level::TRACE).then(Instant::now), spent_ms: [0.0; 4] }
    }

    /// Charges the time since the last charge to `phase`.
    fn charge(&mut self, phase: Phase) {
        if let Some(last) = self.last {
            let now = Instant::now();
            self.spent_ms[phase as usize] += (now - last).as_secs_f64() * 1e3;
            self.last = Some(now);
        }
    }

    fn log(&self, rows: usize) {
        if self.last.is_some() {
            let [ternary, attention, elementwise, head] = self.spent_ms;
            tracing::trace!(
                rows,
                ternary_ms = ternary,
                attention_ms = attention,
                elementwise_ms = elementwise,
                head_ms = head,
                "forward pass"
            );
        }
    }
}

/// Runs `f` on a scores buffer of `len` floats, kept per thread and grown.
fn with_scores(len: usize, f: impl FnOnce(&mut [f32])) {
    thread_local! {
        static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCORES.with_borrow_mut(|scores| {
        if scores.len() < len {
            scores.resize(len, 0.0);
        }
        f(&mut scores[..len])
    })
}

/// Quantises each of the n rows of x (n, cols) to int8 -> xq (n, cols), xs (n,).
fn quantize_rows(x: &[f32], n: usize, cols: usize, xq: &mut [i8], xs: &mut [f32]) {
    let mut rows: Vec<(&mut [i8], &mut f32)> = xq[..n * cols].chunks_exact_mut(cols).zip(&mut xs[..n]).collect();
    let quantize =
        |i: usize, (q, s): &mut (&mut [i8], &mut f32)| **s = k::quantize_row_i8(&x[i * cols..(i + 1) * cols], q);
    if n * cols < SPLIT_MIN_ELEMENTS || n < 2 {
        rows.iter_mut().enumerate().for_each(|(i, row)| quantize(i, row));
        return;
    }
    let per = rows_per_part(n);
    k::pool::global().for_each_chunk(&mut rows, per, &|c, part| {
        part.iter_mut().enumerate().for_each(|(j, row)| quantize(c * per + j, row))
    });
}

/// Element-wise work on fewer elements than this stays on the calling
/// thread (a decode row's few thousand): a hand-off costs microseconds.
const SPLIT_MIN_ELEMENTS: usize = 1 << 15;

/// Rows per part when n rows are split over the pool: two parts a thread.
fn rows_per_part(n: usize) -> usize {
    n.div_ceil(2 * k::pool::global().threads()).max(1)
}

/// f(i, row i) for each of the first n rows of out (n, cols), split by
/// rows over the pool when there are enough elements. Each row's result
/// is the same either way.
fn each_row(out: &mut [f32], cols: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let n = out.len() / cols.max(1);
    if out.len() < SPLIT_MIN_ELEMENTS || n < 2 {
        out.chunks_exact_mut(cols).enumerate().for_each(|(i, row)| f(i, row));
        return;
    }
    let per = rows_per_part(n);
    k::pool::global().for_each_chunk(out, per * cols, &|c, part| {
        part.chunks_exact_mut(cols).enumerate().for_each(|(j, row)| f(c * per + j, row))
    });
}

/// x (n, cols) += y (n, cols): the residual add.
fn add_rows(x: &mut [f32], y: &[f32], n: usize, cols: usize) {
    each_row(&mut x[..n * cols], cols, |i, row| {
        row.iter_mut().zip(&y[i * cols..(i + 1) * cols]).for_each(|(x, y)| *x += y)
    });
}

/// W (rows, cols) @ already quantised xq (n, cols) -> out (n, rows).
fn bitlinear_quantized(w: &TernaryMatrix, xq: &[i8], xs: &[f32], n: usize, out: &mut [f32]) {
    let rows = w.rows();
    if n == 1 {
        k::ternary_gemv(w, xq, xs[0], &mut out[..rows]);
    } else {
        k::ternary_gemm(w, xq, &xs[..n], &mut out[..n * rows]);
    }
}

/// RMSNorm of every row of x (n, cols) with `weight` (cols,) into out (n, cols).
fn rmsnorm_rows(x: &[f32], weight: &[f32], eps: f32, n: usize, out: &mut [f32]) {
    let cols = weight.len();
    each_row(&mut out[..n * cols], cols, |i, row| k::rmsnorm(&x[i * cols..(i + 1) * cols], weight, eps, row));
}

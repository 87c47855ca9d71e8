//! The GPU compute backend: the same forward pass as the CPU backend, as
//! compute shaders (`tern-shaders`) on a wgpu device.
//!
//! At load, every ternary projection, norm and the output head go to the
//! device once (large tensors split across buffers the adapter can bind);
//! the KV memory lives there too. The embedding lookup stays on the host:
//! a step uploads only its rows' embeddings, positions, RoPE angles and
//! block tables, records every layer into one command submission, and
//! reads back only the logits (or hidden states) its items asked for.
//!
//! Each norm that feeds a ternary product runs with its int8 quantisation
//! in one dispatch.
//!
//! Every operation is per row and attention reads only the row's own item,
//! as on the CPU, so a row gets the same result whatever shares its step.
//!
//! With `RUST_LOG=tern_engine::model::gpu=trace`, each pass logs the time
//! spent recording it on the host and running it on the device.

mod scratch;

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use scratch::Scratch;
use tern_kernels as k;
use tern_shaders::wgpu;
use tern_shaders::{Dense as DeviceDense, DenseWeights, Gate, Gpu, GpuError, ReadId, Step, TernaryWeights};

use crate::kv::BLOCK_TOKENS;
use crate::model::backend::{BatchItem, ComputeBackend, Forward, Output};
use crate::model::config::{Activation, ModelConfig};
use crate::model::error::ModelError;
use crate::model::weights::{Dense, Weights};

/// One transformer block on the device.
struct DeviceLayer {
    attn_norm: wgpu::Buffer,
    wq: TernaryWeights,
    wk: TernaryWeights,
    wv: TernaryWeights,
    wo: TernaryWeights,
    attn_sub_norm: wgpu::Buffer,
    ffn_norm: wgpu::Buffer,
    w_gate: TernaryWeights,
    w_up: TernaryWeights,
    w_down: TernaryWeights,
    ffn_sub_norm: wgpu::Buffer,
    /// Keys and values: (blocks, BLOCK_TOKENS, kv_dim) each.
    k_mem: wgpu::Buffer,
    v_mem: wgpu::Buffer,
}

/// A model's weights and KV memory on a GPU.
pub struct GpuBackend {
    config: ModelConfig,
    gpu: Gpu,
    /// Stays on the host: a step uploads only its rows.
    token_embd: Dense,
    layers: Vec<DeviceLayer>,
    output_norm: wgpu::Buffer,
    head: DenseWeights,
    blocks: usize,
    /// Bytes of weights and KV memory on the device.
    resident: u64,
    /// Taken for a whole forward pass: one pass runs at a time.
    scratch: Mutex<Scratch>,
}

fn device_error(e: GpuError) -> ModelError {
    ModelError::Device(e.to_string())
}

impl GpuBackend {
    /// Uploads `weights` to `gpu`, with KV memory for `kv_memory` bytes of
    /// blocks (at least one full context, at most what one binding holds).
    pub fn new(weights: Weights, gpu: Gpu, kv_memory: usize) -> Result<Self, ModelError> {
        let Weights { config, token_embd, output, output_norm, layers, .. } = weights;
        let c = &config;
        let block_bytes = (BLOCK_TOKENS * c.kv_dim() * 4) as u64;
        let fit = (gpu.max_binding() / block_bytes) as usize;
        // Keys and values of every layer.
        let all_layers = 2 * c.n_layer * block_bytes as usize;
        let wanted = (kv_memory / all_layers).max(c.n_ctx.div_ceil(BLOCK_TOKENS));
        if fit < c.n_ctx.div_ceil(BLOCK_TOKENS) {
            return Err(ModelError::Device(format!(
                "one layer's keys for {} positions are larger than a buffer {} can bind",
                c.n_ctx,
                gpu.name()
            )));
        }
        let blocks = wanted.min(fit);
        let ternary = |m: &k::TernaryMatrix, name: &str| TernaryWeights::upload(&gpu, m, name).map_err(device_error);
        let mut device_layers = Vec::with_capacity(layers.len());
        for layer in &layers {
            let kv = || gpu.buffer("kv memory", blocks as u64 * block_bytes);
            device_layers.push(DeviceLayer {
                attn_norm: gpu.upload("attn_norm", &layer.attn_norm),
                wq: ternary(&layer.wq, "attn_q")?,
                wk: ternary(&layer.wk, "attn_k")?,
                wv: ternary(&layer.wv, "attn_v")?,
                wo: ternary(&layer.wo, "attn_output")?,
                attn_sub_norm: gpu.upload("attn_sub_norm", &layer.attn_sub_norm),
                ffn_norm: gpu.upload("ffn_norm", &layer.ffn_norm),
                w_gate: ternary(&layer.w_gate, "ffn_gate")?,
                w_up: ternary(&layer.w_up, "ffn_up")?,
                w_down: ternary(&layer.w_down, "ffn_down")?,
                ffn_sub_norm: gpu.upload("ffn_sub_norm", &layer.ffn_sub_norm),
                k_mem: kv(),
                v_mem: kv(),
            });
        }
        drop(layers);
        let head = output.as_ref().unwrap_or(&token_embd);
        let head = match head {
            Dense::F32(w) => DeviceDense::F32(w),
            Dense::F16(w) => DeviceDense::F16(w),
            Dense::Q8_0(w) => DeviceDense::Q8_0(w),
        };
        let head = DenseWeights::upload(&gpu, head, c.n_vocab, c.n_embd, "output").map_err(device_error)?;
        drop(output);
        let output_norm = gpu.upload("output_norm", &output_norm);
        let resident = gpu.allocated_bytes();
        Ok(Self {
            config,
            gpu,
            token_embd,
            layers: device_layers,
            output_norm,
            head,
            blocks,
            resident,
            scratch: Mutex::new(Scratch::default()),
        })
    }

    /// The adapter: name, API, driver and kind.
    pub fn adapter(&self) -> String {
        self.gpu.describe()
    }
}

/// Every row of a step as the shaders take it, built on the host.
struct RowInputs {
    /// (rows, n_embd) embeddings
    x: Vec<f32>,
    /// (rows, rope_dim / 2, 2) cosines and sines of each row's angles
    cos_sin: Vec<f32>,
    /// (rows,) KV slot each row writes
    slots: Vec<u32>,
    /// (rows, 2) start of the row's block table in `tables`, positions it sees
    row_info: Vec<u32>,
    /// every item's block table, one after another
    tables: Vec<u32>,
    /// rows that want logits, and rows that want hidden states
    logit_rows: Vec<usize>,
    hidden_rows: Vec<usize>,
}

impl GpuBackend {
    fn row_inputs(&self, items: &[BatchItem]) -> RowInputs {
        let c = &self.config;
        let (d, half) = (c.n_embd, c.rope_dim / 2);
        let mut r = RowInputs {
            x: Vec::new(),
            cos_sin: Vec::new(),
            slots: Vec::new(),
            row_info: Vec::new(),
            tables: Vec::new(),
            logit_rows: Vec::new(),
            hidden_rows: Vec::new(),
        };
        for (i, it) in items.iter().enumerate() {
            let end = it.pos + it.tokens.len();
            assert!(it.blocks.len() * BLOCK_TOKENS >= end, "forward: item {i} has no KV room for {end} positions");
            assert!(!it.tokens.is_empty() || it.output == Output::Nothing, "forward: output of no tokens");
            let table = r.tables.len() as u32;
            r.tables.extend_from_slice(it.blocks);
            let first = r.slots.len();
            for (j, &t) in it.tokens.iter().enumerate() {
                let pos = it.pos + j;
                let at = r.x.len();
                r.x.resize(at + d, 0.0);
                // Ids were checked against the vocabulary when the prompt was admitted.
                self.token_embd.row(d, t as usize, &mut r.x[at..]);
                for p in 0..half {
                    let (cos, sin) = k::rope_cos_sin(p, c.rope_dim, pos, c.rope_theta);
                    r.cos_sin.extend([cos, sin]);
                }
                r.slots.push(it.blocks[pos / BLOCK_TOKENS] * BLOCK_TOKENS as u32 + (pos % BLOCK_TOKENS) as u32);
                r.row_info.extend([table, pos as u32 + 1]);
            }
            let rows = first..r.slots.len();
            match it.output {
                Output::Nothing => {}
                Output::LastLogits => r.logit_rows.push(rows.end - 1),
                Output::AllLogits => r.logit_rows.extend(rows),
                Output::Hidden => r.hidden_rows.extend(rows),
            }
        }
        r
    }

    /// Rows that go through the head at once: their logits fit one binding.
    fn head_rows(&self) -> usize {
        let row_bytes = (self.config.n_vocab * 4) as u64;
        ((self.gpu.max_binding() / row_bytes) as usize).max(1)
    }

    /// The output norm of `rows` of x, then the head when `logits`: reads
    /// of the results, a chunk of at most [`Self::head_rows`] rows each.
    fn output(&self, step: &mut Step, s: &Scratch, rows: &[usize], logits: bool) -> Vec<ReadId> {
        let c = &self.config;
        let d = c.n_embd;
        let mut reads = Vec::new();
        for chunk in rows.chunks(self.head_rows()) {
            let m = chunk.len();
            // Runs of consecutive rows go in one copy each.
            let mut j = 0;
            while j < m {
                let mut end = j + 1;
                while end < m && chunk[end] == chunk[end - 1] + 1 {
                    end += 1;
                }
                step.copy(&s.x, chunk[j] * d, &s.head_in, j * d, (end - j) * d);
                j = end;
            }
            step.rmsnorm(&s.head_in, d, &self.output_norm, c.rms_eps, m, d, &s.head_norm, d);
            reads.push(if logits {
                step.dense(&self.head, &s.head_norm, m, &s.logits);
                step.read(&s.logits, 0, m * c.n_vocab)
            } else {
                step.read(&s.head_norm, 0, m * d)
            });
        }
        reads
    }
}

impl ComputeBackend for GpuBackend {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device(&self) -> String {
        format!("gpu {}", self.gpu.describe())
    }

    fn device_memory_bytes(&self) -> u64 {
        self.resident
    }

    fn device_read_bandwidth_gbs(&self, bytes: usize) -> Option<f64> {
        Some(self.gpu.read_bandwidth_gbs(bytes as u64, 5))
    }

    fn kv_blocks(&self) -> usize {
        self.blocks
    }

    fn forward(&self, items: &[BatchItem]) -> Forward {
        let start = Instant::now();
        let inputs = self.row_inputs(items);
        let n = inputs.slots.len();
        if n == 0 {
            return Forward::default();
        }
        let c = &self.config;
        let (d, qd, kvd, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        let (n_logits, n_hidden) = (inputs.logit_rows.len(), inputs.hidden_rows.len());
        let mut scratch = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        let l0 = &self.layers[0];
        let words = [l0.wq.input_words(), l0.wo.input_words(), l0.w_down.input_words()];
        let head_rows = n_logits.max(n_hidden).min(self.head_rows());
        scratch.reserve(&self.gpu, c, n, head_rows, inputs.tables.len(), words);
        let s = &*scratch;
        let gpu = &self.gpu;
        gpu.write(&s.x, 0, &inputs.x);
        gpu.write(&s.cos_sin, 0, &inputs.cos_sin);
        gpu.write(&s.slots, 0, &inputs.slots);
        gpu.write(&s.row_info, 0, &inputs.row_info);
        gpu.write(&s.tables, 0, &inputs.tables);
        let gate = match c.activation {
            Activation::Relu2 => Gate::Relu2,
            Activation::Silu => Gate::Silu,
        };
        let eps = c.rms_eps;
        let mut step = Step::new(gpu);
        for l in &self.layers {
            // Attention: x += Wo · sub_norm(attention(RoPE(Wq n), RoPE(Wk n), Wv n)), n = norm(x).
            step.norm_quantize(&s.x, d, &l.attn_norm, eps, n, d, &s.xq_embd);
            step.ternary(&l.wq, &s.xq_embd, n, &s.q, qd, 0);
            step.ternary(&l.wk, &s.xq_embd, n, &s.k, kvd, 0);
            step.ternary(&l.wv, &s.xq_embd, n, &s.v, kvd, 0);
            step.rope(&s.q, &s.cos_sin, n, c.n_head, c.head_dim, c.rope_dim / 2);
            step.rope(&s.k, &s.cos_sin, n, c.n_head_kv, c.head_dim, c.rope_dim / 2);
            step.kv_write(&s.k, &s.v, &s.slots, &l.k_mem, &l.v_mem, n, kvd);
            let heads = (c.n_head, c.n_head_kv, c.head_dim);
            step.attention(&s.q, &s.row_info, &s.tables, &l.k_mem, &l.v_mem, &s.att, n, heads);
            step.norm_quantize(&s.att, qd, &l.attn_sub_norm, eps, n, qd, &s.xq_q);
            step.ternary(&l.wo, &s.xq_q, n, &s.out, d, 0);
            step.add(&s.x, &s.out, n * d);
            // Feed-forward: x += Wdown · sub_norm(act(Wgate n) · (Wup n)), n = norm(x).
            step.norm_quantize(&s.x, d, &l.ffn_norm, eps, n, d, &s.xq_embd);
            step.ternary(&l.w_gate, &s.xq_embd, n, &s.gate, ff, 0);
            step.ternary(&l.w_up, &s.xq_embd, n, &s.up, ff, 0);
            step.gate(gate, &s.gate, &s.up, &s.h, n * ff);
            step.norm_quantize(&s.h, ff, &l.ffn_sub_norm, eps, n, ff, &s.xq_ff);
            step.ternary(&l.w_down, &s.xq_ff, n, &s.out, d, 0);
            step.add(&s.x, &s.out, n * d);
        }
        let logits = self.output(&mut step, s, &inputs.logit_rows, true);
        let hidden = self.output(&mut step, s, &inputs.hidden_rows, false);
        let recorded = Instant::now();
        let mut reads = step.finish();
        if tracing::enabled!(tracing::Level::TRACE) {
            let ms = |from: Instant, to: Instant| (to - from).as_secs_f64() * 1e3;
            let done = Instant::now();
            tracing::trace!(rows = n, record_ms = ms(start, recorded), run_ms = ms(recorded, done), "forward pass");
        }
        let mut gather = |ids: Vec<ReadId>| ids.into_iter().flat_map(|id| reads.take(id)).collect();
        Forward { logits: gather(logits), hidden: gather(hidden) }
    }
}

//! The BitNet b1.58 forward pass on the CPU.
//!
//! 1. [`ModelConfig::from_gguf`] reads the hyper-parameters of either naming
//!    (`bitnet-b1.58` as Microsoft's 2B-4T ships it, `bitnet` as mainline
//!    llama.cpp writes it).
//! 2. [`Model::load`] repacks every ternary projection, whatever its on-disk
//!    format (TQ1_0, TQ2_0, I2_S, or full precision ternarised at load), into
//!    the kernels' one layout, so every file runs the same kernels.
//! 3. [`Backend::forward`] appends tokens to a sequence's [`KvCache`] and
//!    returns logits. The CPU backend is [`Model`]; a GPU backend implements
//!    the same trait.

use crate::gguf::{GgmlType, GgufError, GgufFile, TensorInfo};
use crate::kv::{KvPool, SeqKv, BLOCK_TOKENS};
use tern_kernels::{self as k, f16, KvBlocks, TernaryMatrix};

/// Errors found while loading a model file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture {0:?} (supported: bitnet-b1.58, bitnet-25, bitnet)")]
    Architecture(String),
    #[error("tensor {name}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("invalid hyper-parameters: {0}")]
    Config(String),
}

fn tensor_err(t: &TensorInfo, reason: impl Into<String>) -> ModelError {
    ModelError::Tensor { name: t.name.clone(), reason: reason.into() }
}

/// The gate of the feed-forward block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `relu(gate)^2 * up`, as BitNet b1.58 2B-4T uses.
    Relu2,
    /// `silu(gate) * up`, as LLaMA-like BitNet models use.
    Silu,
}

/// Hyper-parameters of a loaded model.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub architecture: String,
    pub n_vocab: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub n_ff: usize,
    pub n_ctx: usize,
    pub rope_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    pub activation: Activation,
}

impl ModelConfig {
    /// Reads the hyper-parameters from GGUF metadata.
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let arch = g.str("general.architecture")?.to_string();
        let activation = match arch.as_str() {
            "bitnet-b1.58" | "bitnet-25" => Activation::Relu2,
            "bitnet" => Activation::Silu,
            _ => return Err(ModelError::Architecture(arch)),
        };
        let key = |name: &str| format!("{arch}.{name}");
        let opt_u32 = |name: &str| g.get(&key(name)).and_then(|v| v.as_u64());
        let n_embd = g.u32(&key("embedding_length"))? as usize;
        let n_head = g.u32(&key("attention.head_count"))? as usize;
        let n_head_kv = opt_u32("attention.head_count_kv").map_or(n_head, |v| v as usize);
        if n_head == 0 || n_head_kv == 0 || !n_head.is_multiple_of(n_head_kv) || !n_embd.is_multiple_of(n_head) {
            return Err(ModelError::Config(format!(
                "{n_head} heads, {n_head_kv} kv heads and width {n_embd} do not divide"
            )));
        }
        let head_dim = opt_u32("attention.key_length").map_or(n_embd / n_head, |v| v as usize);
        let embd = g.tensor("token_embd.weight")?;
        let n_vocab = match opt_u32("vocab_size") {
            Some(v) => v as usize,
            None => embd.dims.get(1).copied().unwrap_or(0) as usize,
        };
        let rope_dim = opt_u32("rope.dimension_count").map_or(head_dim, |v| v as usize);
        if rope_dim > head_dim || rope_dim % 2 != 0 {
            return Err(ModelError::Config(format!(
                "rope dimension {rope_dim} does not fit head dimension {head_dim}"
            )));
        }
        let f32_or = |name: &str, default: f32| g.get(&key(name)).and_then(|v| v.as_f32()).unwrap_or(default);
        Ok(Self {
            n_vocab,
            n_embd,
            n_layer: g.u32(&key("block_count"))? as usize,
            n_head,
            n_head_kv,
            head_dim,
            n_ff: g.u32(&key("feed_forward_length"))? as usize,
            n_ctx: g.u32(&key("context_length"))? as usize,
            rope_dim,
            rope_theta: f32_or("rope.freq_base", 10_000.0),
            rms_eps: f32_or("attention.layer_norm_rms_epsilon", 1e-5),
            activation,
            architecture: arch,
        })
    }

    /// Width of the keys (and values) of one position: kv heads x head dim.
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }

    /// Width of the queries and of the attention output: heads x head dim.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
}

/// A dense matrix kept in its file format (embedding and output head).
#[derive(Clone)]
pub enum Dense {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Q8_0(Vec<u8>),
}

impl Dense {
    fn load(g: &GgufFile, t: &TensorInfo) -> Result<Self, ModelError> {
        let bytes = g.tensor_data(&t.name)?;
        Ok(match t.ggml_type {
            GgmlType::F32 => Dense::F32(f32s(bytes)),
            GgmlType::F16 => Dense::F16(f16s(bytes)),
            GgmlType::BF16 => Dense::F32({
                let mut out = vec![0.0; t.n_elements() as usize];
                let cols = t.dims[0] as usize;
                for (r, row) in out.chunks_exact_mut(cols).enumerate() {
                    k::row_bf16(bytes, cols, r, row);
                }
                out
            }),
            GgmlType::Q8_0 => Dense::Q8_0(bytes.to_vec()),
            other => return Err(tensor_err(t, format!("{} is not supported for a dense matrix", other.name()))),
        })
    }

    /// Row `row` of a (rows, cols) matrix, dequantised into `out` (cols,).
    fn row(&self, cols: usize, row: usize, out: &mut [f32]) {
        match self {
            Dense::F32(w) => out.copy_from_slice(&w[row * cols..(row + 1) * cols]),
            Dense::F16(w) => k::row_f16(w, cols, row, out),
            Dense::Q8_0(w) => k::row_q8_0(w, cols, row, out),
        }
    }

    /// W (rows, cols) @ x (n, cols) -> out (n, rows), W read once.
    fn matmul(&self, rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
        match self {
            Dense::F32(w) => k::matmul_f32(w, rows, cols, x, out),
            Dense::F16(w) => k::matmul_f16(w, rows, cols, x, out),
            Dense::Q8_0(w) => k::matmul_q8_0(w, rows, cols, x, out),
        }
    }

    /// The same (rows, cols) matrix as Q8_0 (unchanged if it already is).
    fn to_q8_0(&self, rows: usize, cols: usize) -> Dense {
        if let Dense::Q8_0(_) = self {
            return self.clone();
        }
        let row_bytes = k::q8_0_row_bytes(cols);
        let mut out = vec![0u8; rows * row_bytes];
        let mut row = vec![0.0f32; cols];
        for (r, dst) in out.chunks_exact_mut(row_bytes).enumerate() {
            self.row(cols, r, &mut row);
            k::quantize_row_q8_0(&row, dst);
        }
        Dense::Q8_0(out)
    }

    fn size_bytes(&self) -> usize {
        match self {
            Dense::F32(w) => w.len() * 4,
            Dense::F16(w) => w.len() * 2,
            Dense::Q8_0(w) => w.len(),
        }
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn f16s(bytes: &[u8]) -> Vec<f16> {
    bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect()
}

/// One transformer block.
struct Layer {
    attn_norm: Vec<f32>,
    wq: TernaryMatrix,
    wk: TernaryMatrix,
    wv: TernaryMatrix,
    wo: TernaryMatrix,
    attn_sub_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    w_gate: TernaryMatrix,
    w_up: TernaryMatrix,
    w_down: TernaryMatrix,
    ffn_sub_norm: Vec<f32>,
}

/// Which logits a [`BatchItem`] wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    None,
    /// Of its last token: what the scheduler samples from.
    Last,
    /// Of every token (tests, scoring).
    All,
    /// Not logits: the output-normed hidden states of every token,
    /// (tokens, n_embd), for embeddings. Such an item runs alone.
    Hidden,
}

/// One sequence's share of a batched forward step.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    /// Its KV blocks, which must hold positions up to `pos + tokens.len()`.
    pub blocks: &'a [u32],
    /// Position of its first token: how many positions are already cached.
    pub pos: usize,
    pub tokens: &'a [u32],
    pub logits: Logits,
}

/// One sequence with a KV pool of its own, for running a model outside
/// the scheduler (tests, benchmarks, `tern generate`'s reference paths).
pub struct KvCache {
    pool: KvPool,
    seq: SeqKv,
    len: usize,
}

impl KvCache {
    /// Room for the model's whole context; memory is taken as it is used.
    pub fn new(config: &ModelConfig) -> Self {
        Self {
            pool: KvPool::new(config.n_layer, config.kv_dim(), config.n_ctx.div_ceil(BLOCK_TOKENS)),
            seq: SeqKv::default(),
            len: 0,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What the scheduler needs from a compute backend.
pub trait Backend: Send + Sync {
    fn config(&self) -> &ModelConfig;

    /// Runs every item's tokens in one pass over the weights: positions
    /// `pos..` of each item's sequence, keys and values written to its
    /// blocks in `kv`. Returns the logits the items asked for, (rows, vocab)
    /// in item order. An item's results never depend on the other items.
    fn forward_batch(&self, kv: &mut KvPool, items: &[BatchItem]) -> Vec<f32>;

    /// Runs `tokens` of one sequence at positions `cache.len()..` and
    /// returns logits: (1, vocab) for the last token, or (tokens, vocab)
    /// when `all_logits` is set.
    ///
    /// # Panics
    /// If the tokens overflow the model's context.
    fn forward(&self, cache: &mut KvCache, tokens: &[u32], all_logits: bool) -> Vec<f32> {
        let end = cache.len + tokens.len();
        assert!(cache.pool.grow(&mut cache.seq, end), "forward: {end} positions overflow the context");
        let item = BatchItem {
            blocks: cache.seq.blocks(),
            pos: cache.len,
            tokens,
            logits: if all_logits { Logits::All } else { Logits::Last },
        };
        let logits = self.forward_batch(&mut cache.pool, &[item]);
        cache.len = end;
        logits
    }

    /// The output-normed hidden states of `tokens` as one fresh sequence:
    /// (tokens, n_embd).
    ///
    /// # Panics
    /// If the tokens overflow the model's context.
    fn hidden_states(&self, tokens: &[u32]) -> Vec<f32> {
        let mut cache = KvCache::new(self.config());
        assert!(cache.pool.grow(&mut cache.seq, tokens.len()), "hidden_states: {} positions overflow", tokens.len());
        let item = BatchItem { blocks: cache.seq.blocks(), pos: 0, tokens, logits: Logits::Hidden };
        self.forward_batch(&mut cache.pool, &[item])
    }
}

/// A BitNet model loaded for the CPU backend.
pub struct Model {
    config: ModelConfig,
    token_embd: Dense,
    output: Option<Dense>,
    output_norm: Vec<f32>,
    layers: Vec<Layer>,
    parameter_count: u64,
    ternary_type: GgmlType,
}

/// Choices made while loading a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Convert a dense (F16/F32/BF16) output head to Q8_0: about half the
    /// bytes read per decoded token for a small loss of precision.
    pub q8_0_head: bool,
}

impl Model {
    /// Loads and repacks every tensor the forward pass needs.
    pub fn load(g: &GgufFile) -> Result<Self, ModelError> {
        Self::load_with(g, LoadOptions::default())
    }

    /// [`Model::load`] with options.
    pub fn load_with(g: &GgufFile, options: LoadOptions) -> Result<Self, ModelError> {
        let config = ModelConfig::from_gguf(g)?;
        let c = &config;
        let vector = |name: &str, len: usize| -> Result<Vec<f32>, ModelError> {
            let t = g.tensor(name)?;
            if t.n_elements() as usize != len {
                return Err(tensor_err(t, format!("has {} elements, expected {len}", t.n_elements())));
            }
            let bytes = g.tensor_data(name)?;
            match t.ggml_type {
                GgmlType::F32 => Ok(f32s(bytes)),
                GgmlType::F16 => Ok(f16s(bytes).into_iter().map(f16::to_f32).collect()),
                other => Err(tensor_err(t, format!("norm weights must be F32 or F16, found {}", other.name()))),
            }
        };
        let mut ternary_type = GgmlType::F32;
        let mut ternary = |name: &str, rows: usize, cols: usize| -> Result<TernaryMatrix, ModelError> {
            let t = g.tensor(&format!("{name}.weight"))?;
            if t.dims.len() != 2 || t.dims[0] as usize != cols || t.dims[1] as usize != rows {
                return Err(tensor_err(t, format!("has shape {:?}, expected [{cols}, {rows}]", t.dims)));
            }
            let bytes = g.tensor_data(&t.name)?;
            let mut m = match t.ggml_type {
                GgmlType::TQ2_0 => TernaryMatrix::from_tq2_0(bytes, rows, cols),
                GgmlType::TQ1_0 => TernaryMatrix::from_tq1_0(bytes, rows, cols),
                GgmlType::I2_S => TernaryMatrix::from_i2_s(bytes, rows, cols),
                GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
                    let dense = Dense::load(g, t)?;
                    let mut w = vec![0.0; rows * cols];
                    for (r, row) in w.chunks_exact_mut(cols).enumerate() {
                        dense.row(cols, r, row);
                    }
                    ternarize_absmean(&w, rows, cols)
                }
                other => return Err(tensor_err(t, format!("{} is not a ternary format", other.name()))),
            }
            .map_err(|e| tensor_err(t, e.to_string()))?;
            ternary_type = t.ggml_type;
            // Mainline llama.cpp may keep the per-tensor scale apart.
            if let Ok(s) = g.tensor(&format!("{name}.scale")) {
                let v = vector(&s.name, 1)?;
                m.scale_by(v[0]);
            }
            Ok(m)
        };
        let (d, q, kv, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        let mut layers = Vec::with_capacity(c.n_layer);
        for i in 0..c.n_layer {
            let p = |n: &str| format!("blk.{i}.{n}");
            layers.push(Layer {
                attn_norm: vector(&p("attn_norm.weight"), d)?,
                wq: ternary(&p("attn_q"), q, d)?,
                wk: ternary(&p("attn_k"), kv, d)?,
                wv: ternary(&p("attn_v"), kv, d)?,
                wo: ternary(&p("attn_output"), d, q)?,
                attn_sub_norm: vector(&p("attn_sub_norm.weight"), q)?,
                ffn_norm: vector(&p("ffn_norm.weight"), d)?,
                w_gate: ternary(&p("ffn_gate"), ff, d)?,
                w_up: ternary(&p("ffn_up"), ff, d)?,
                w_down: ternary(&p("ffn_down"), d, ff)?,
                ffn_sub_norm: vector(&p("ffn_sub_norm.weight"), ff)?,
            });
        }
        let dense = |name: &str| -> Result<Dense, ModelError> {
            let t = g.tensor(name)?;
            if t.dims.len() != 2 || t.dims[0] as usize != d || t.dims[1] as usize != c.n_vocab {
                return Err(tensor_err(t, format!("has shape {:?}, expected [{d}, {}]", t.dims, c.n_vocab)));
            }
            Dense::load(g, t)
        };
        let token_embd = dense("token_embd.weight")?;
        let mut output = if g.tensors.contains_key("output.weight") { Some(dense("output.weight")?) } else { None };
        if options.q8_0_head && d.is_multiple_of(k::Q8_0_BLOCK) {
            // A tied head gets its own Q8_0 copy; embedding lookups keep the original.
            output = Some(output.as_ref().unwrap_or(&token_embd).to_q8_0(c.n_vocab, d));
        }
        let parameter_count = g.tensors.values().map(|t| t.n_elements()).sum();
        Ok(Self {
            output_norm: vector("output_norm.weight", d)?,
            token_embd,
            output,
            layers,
            parameter_count,
            ternary_type,
            config,
        })
    }

    /// Weights in every tensor of the file.
    pub fn parameter_count(&self) -> u64 {
        self.parameter_count
    }

    /// On-disk type of the ternary projections (e.g. TQ2_0).
    pub fn ternary_type(&self) -> GgmlType {
        self.ternary_type
    }

    /// Bytes of weights held in memory after repacking.
    pub fn weight_bytes(&self) -> usize {
        self.ternary_bytes() + self.token_embd.size_bytes() + self.output.as_ref().map_or(0, Dense::size_bytes)
    }

    /// Weight bytes one decoded token reads: every ternary projection and
    /// the output head (one embedding row is noise next to them).
    pub fn bytes_per_token(&self) -> usize {
        self.ternary_bytes() + self.output.as_ref().unwrap_or(&self.token_embd).size_bytes()
    }

    fn ternary_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down])
            .map(|m| m.size_bytes())
            .sum()
    }
}

/// Full-precision weights W (rows, cols) ternarised per tensor by absmean:
/// s = mean|W|, Wq = clamp(round(W / s), -1, 1), scale s.
fn ternarize_absmean(w: &[f32], rows: usize, cols: usize) -> Result<TernaryMatrix, k::KernelError> {
    let scale = (w.iter().map(|x| x.abs() as f64).sum::<f64>() / w.len().max(1) as f64).max(1e-5) as f32;
    let values: Vec<i8> = w.iter().map(|x| (x / scale).round().clamp(-1.0, 1.0) as i8).collect();
    TernaryMatrix::from_ternary(&values, rows, cols, scale)
}

/// Most rows of one sequence in one attention call: enough queries to reuse
/// each cached key many times while it is in cache, and a bounded scores
/// buffer (rows × group × positions) for a long prompt read at once.
const MAX_PIECE_ROWS: usize = 64;

/// Scratch buffers of one forward call over n tokens.
struct Scratch {
    x: Vec<f32>,    // (n, d) residual stream
    xn: Vec<f32>,   // (n, max(d, q)) normed input of a projection
    xq: Vec<i8>,    // (n, max(d, q, ff)) its int8 quantisation
    xs: Vec<f32>,   // (n,) quantisation scales
    q: Vec<f32>,    // (n, q_dim)
    k: Vec<f32>,    // (n, kv_dim)
    v: Vec<f32>,    // (n, kv_dim)
    att: Vec<f32>,  // (n, q_dim)
    out: Vec<f32>,  // (n, d) projection output
    gate: Vec<f32>, // (n, ff)
    up: Vec<f32>,   // (n, ff)
    h: Vec<f32>,    // (n, ff)
}

/// Quantises each of the n rows of x (n, cols) to int8 -> xq (n, cols), xs (n,).
fn quantize_rows(x: &[f32], n: usize, cols: usize, xq: &mut [i8], xs: &mut [f32]) {
    for i in 0..n {
        xs[i] = k::quantize_row_i8(&x[i * cols..(i + 1) * cols], &mut xq[i * cols..(i + 1) * cols]);
    }
}

/// Quantises n rows of `x` (n, cols) to int8, then W (rows, cols) @ x -> out (n, rows).
fn bitlinear(w: &TernaryMatrix, x: &[f32], n: usize, xq: &mut [i8], xs: &mut [f32], out: &mut [f32]) {
    let cols = w.cols();
    quantize_rows(x, n, cols, xq, xs);
    bitlinear_quantized(w, &xq[..n * cols], &xs[..n], n, out);
}

/// W (rows, cols) @ already quantised xq (n, cols) -> out (n, rows).
fn bitlinear_quantized(w: &TernaryMatrix, xq: &[i8], xs: &[f32], n: usize, out: &mut [f32]) {
    let rows = w.rows();
    if n == 1 {
        k::ternary_gemv(w, xq, xs[0], &mut out[..rows]);
    } else {
        k::ternary_gemm(w, xq, xs, &mut out[..n * rows]);
    }
}

/// RMSNorm of every row of x (n, cols) with `weight` (cols,) into out (n, cols).
fn rmsnorm_rows(x: &[f32], weight: &[f32], eps: f32, n: usize, out: &mut [f32]) {
    let cols = weight.len();
    for i in 0..n {
        k::rmsnorm(&x[i * cols..(i + 1) * cols], weight, eps, &mut out[i * cols..(i + 1) * cols]);
    }
}

impl Backend for Model {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn forward_batch(&self, kv: &mut KvPool, items: &[BatchItem]) -> Vec<f32> {
        let c = &self.config;
        // Every token of the step with its item and position.
        let mut owner = Vec::new();
        for (i, it) in items.iter().enumerate() {
            let end = it.pos + it.tokens.len();
            assert!(
                it.blocks.len() * BLOCK_TOKENS >= end,
                "forward_batch: item {i} has no KV room for {end} positions"
            );
            assert!(!it.tokens.is_empty() || it.logits == Logits::None, "forward_batch: logits of no tokens");
            assert!(it.logits != Logits::Hidden || items.len() == 1, "forward_batch: hidden states run alone");
            owner.extend((it.pos..end).map(|pos| (i, pos)));
        }
        let n = owner.len();
        if n == 0 {
            return Vec::new();
        }
        let (d, qd, kvd, ff) = (c.n_embd, c.q_dim(), c.kv_dim(), c.n_ff);
        let widest = d.max(qd).max(ff);
        let mut s = Scratch {
            x: vec![0.0; n * d],
            xn: vec![0.0; n * widest],
            xq: vec![0; n * widest],
            xs: vec![0.0; n],
            q: vec![0.0; n * qd],
            k: vec![0.0; n * kvd],
            v: vec![0.0; n * kvd],
            att: vec![0.0; n * qd],
            out: vec![0.0; n * d],
            gate: vec![0.0; n * ff],
            up: vec![0.0; n * ff],
            h: vec![0.0; n * ff],
        };
        // Attention runs in pieces of consecutive rows of one item, about one
        // per thread for a long item (at most MAX_PIECE_ROWS rows); when there are fewer pieces than
        // threads (one decoding sequence), single rows are split by kv heads
        // instead. A piece is (item, first row, rows, kv heads), and
        // `piece_ends` the end of each one's output in `s.att`.
        let threads = k::pool::global().threads().max(1);
        let mut pieces = Vec::new();
        let mut first = 0;
        for (i, it) in items.iter().enumerate() {
            let len = it.tokens.len();
            let per = len.div_ceil(threads).clamp(1, MAX_PIECE_ROWS);
            for at in (0..len).step_by(per) {
                pieces.push((i, first + at, per.min(len - at), 0..c.n_head_kv));
            }
            first += len;
        }
        if pieces.len() < threads {
            let split = threads.div_ceil(pieces.len()).min(c.n_head_kv);
            let per = c.n_head_kv.div_ceil(split);
            pieces = pieces
                .into_iter()
                .flat_map(|(i, first, rows, heads)| {
                    let parts = if rows == 1 { heads.step_by(per).collect() } else { vec![0] };
                    parts.into_iter().map(move |h0| {
                        let heads = if rows == 1 { h0..(h0 + per).min(c.n_head_kv) } else { 0..c.n_head_kv };
                        (i, first, rows, heads)
                    })
                })
                .collect();
        }
        let group = c.n_head / c.n_head_kv;
        let region = |first: usize, rows: usize, heads: &std::ops::Range<usize>| {
            let at = first * qd + heads.start * group * c.head_dim;
            at..at + (rows - 1) * qd + heads.len() * group * c.head_dim
        };
        let piece_ends: Vec<usize> =
            pieces.iter().map(|(_, first, rows, heads)| region(*first, *rows, heads).end).collect();
        let tokens = items.iter().flat_map(|it| it.tokens);
        for (i, &t) in tokens.enumerate() {
            // Ids were checked against the vocabulary when the prompt was admitted.
            self.token_embd.row(d, t as usize, &mut s.x[i * d..(i + 1) * d]);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention: q, k, v share one quantised input.
            rmsnorm_rows(&s.x, &layer.attn_norm, c.rms_eps, n, &mut s.xn);
            quantize_rows(&s.xn, n, d, &mut s.xq, &mut s.xs);
            bitlinear_quantized(&layer.wq, &s.xq[..n * d], &s.xs, n, &mut s.q);
            bitlinear_quantized(&layer.wk, &s.xq[..n * d], &s.xs, n, &mut s.k);
            bitlinear_quantized(&layer.wv, &s.xq[..n * d], &s.xs, n, &mut s.v);
            for (t, &(i, pos)) in owner.iter().enumerate() {
                k::rope_neox(&mut s.q[t * qd..(t + 1) * qd], c.n_head, c.head_dim, c.rope_dim, pos, c.rope_theta);
                let kt = &mut s.k[t * kvd..(t + 1) * kvd];
                k::rope_neox(kt, c.n_head_kv, c.head_dim, c.rope_dim, pos, c.rope_theta);
                kv.write(l, items[i].blocks, pos, kt, &s.v[t * kvd..(t + 1) * kvd]);
            }
            let views: Vec<_> = items.iter().map(|it| kv.layer_blocks(l, it.blocks)).collect();
            // A piece is consecutive rows of one item: each cached key and
            // value is read once for all its queries.
            let attend = |p: usize, out: &mut [f32]| {
                let (i, first, rows, ref heads) = pieces[p];
                let (kb, vb) = &views[i];
                let last = owner[first + rows - 1].1;
                // A window onto this piece's kv heads of every block.
                let skip = heads.start * c.head_dim;
                let kb: Vec<&[f32]> = kb.iter().map(|b| &b[skip..]).collect();
                let vb: Vec<&[f32]> = vb.iter().map(|b| &b[skip..]).collect();
                // Causal: a position sees everything up to itself.
                let blocks = KvBlocks { k: &kb, v: &vb, block_len: BLOCK_TOKENS, len: last + 1, row_stride: kvd };
                let mut scratch = vec![0.0; rows * group * (last + 1)];
                let q = &s.q[region(first, rows, heads)];
                let (n_heads, n_kv) = (heads.len() * group, heads.len());
                k::attention(q, rows, blocks, n_heads, n_kv, c.head_dim, &mut scratch, out);
            };
            k::pool::global().for_each_part(&mut s.att, &piece_ends, &attend);
            drop(views);
            rmsnorm_rows(&s.att, &layer.attn_sub_norm, c.rms_eps, n, &mut s.xn);
            bitlinear(&layer.wo, &s.xn[..n * qd], n, &mut s.xq, &mut s.xs, &mut s.out);
            s.x.iter_mut().zip(&s.out).for_each(|(x, o)| *x += o);

            // Feed-forward: gate and up share one quantised input.
            rmsnorm_rows(&s.x, &layer.ffn_norm, c.rms_eps, n, &mut s.xn);
            quantize_rows(&s.xn, n, d, &mut s.xq, &mut s.xs);
            bitlinear_quantized(&layer.w_gate, &s.xq[..n * d], &s.xs, n, &mut s.gate);
            bitlinear_quantized(&layer.w_up, &s.xq[..n * d], &s.xs, n, &mut s.up);
            match c.activation {
                Activation::Relu2 => k::relu2_gate(&s.gate, &s.up, &mut s.h),
                Activation::Silu => k::silu_gate(&s.gate, &s.up, &mut s.h),
            }
            rmsnorm_rows(&s.h, &layer.ffn_sub_norm, c.rms_eps, n, &mut s.gate);
            bitlinear(&layer.w_down, &s.gate, n, &mut s.xq, &mut s.xs, &mut s.out);
            s.x.iter_mut().zip(&s.out).for_each(|(x, o)| *x += o);
        }

        // The head, once for every row that wants logits.
        let mut rows = Vec::new();
        let mut first = 0;
        for it in items {
            let len = it.tokens.len();
            match it.logits {
                Logits::None => {}
                Logits::Last => rows.push(first + len - 1),
                Logits::All | Logits::Hidden => rows.extend(first..first + len),
            }
            first += len;
        }
        let mut normed = vec![0.0; rows.len() * d];
        for (j, &i) in rows.iter().enumerate() {
            k::rmsnorm(&s.x[i * d..(i + 1) * d], &self.output_norm, c.rms_eps, &mut normed[j * d..(j + 1) * d]);
        }
        if items[0].logits == Logits::Hidden {
            return normed;
        }
        let head = self.output.as_ref().unwrap_or(&self.token_embd);
        let mut logits = vec![0.0; rows.len() * c.n_vocab];
        head.matmul(c.n_vocab, d, &normed, &mut logits);
        logits
    }
}

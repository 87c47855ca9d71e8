//! A model's weights in host memory, as every compute backend receives them.
//!
//! [`Weights::load`] reads each tensor the forward pass needs and repacks
//! every ternary projection, whatever its on-disk format (TQ1_0, TQ2_0,
//! I2_S, or full precision ternarised at load by absmean), into the
//! kernels' one layout, so every file runs the same kernels. Dense tensors
//! (the embedding and output head) stay as the file stores them.

use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::model::config::ModelConfig;
use crate::model::error::ModelError;
use tern_kernels::{self as k, f16, TernaryMatrix};

/// A dense matrix kept in its file format (embedding and output head).
#[derive(Clone)]
pub enum Dense {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Q8_0(Vec<u8>),
}

impl Dense {
    pub(crate) fn load(g: &GgufFile, t: &TensorInfo) -> Result<Self, ModelError> {
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
            other => {
                return Err(ModelError::tensor(t, format!("{} is not supported for a dense matrix", other.name())))
            }
        })
    }

    /// Row `row` of a (rows, cols) matrix, dequantised into `out` (cols,).
    pub fn row(&self, cols: usize, row: usize, out: &mut [f32]) {
        match self {
            Dense::F32(w) => out.copy_from_slice(&w[row * cols..(row + 1) * cols]),
            Dense::F16(w) => k::row_f16(w, cols, row, out),
            Dense::Q8_0(w) => k::row_q8_0(w, cols, row, out),
        }
    }

    /// W (rows, cols) @ x (n, cols) -> out (n, rows), W read once.
    pub fn matmul(&self, rows: usize, cols: usize, x: &[f32], out: &mut [f32]) {
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

    pub fn size_bytes(&self) -> usize {
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
pub struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: TernaryMatrix,
    pub wk: TernaryMatrix,
    pub wv: TernaryMatrix,
    pub wo: TernaryMatrix,
    pub attn_sub_norm: Vec<f32>,
    pub ffn_norm: Vec<f32>,
    pub w_gate: TernaryMatrix,
    pub w_up: TernaryMatrix,
    pub w_down: TernaryMatrix,
    pub ffn_sub_norm: Vec<f32>,
}

/// Every weight of a BitNet model, repacked for the kernels.
pub struct Weights {
    pub config: ModelConfig,
    /// (n_vocab, n_embd): embedding rows, and the output head when tied.
    pub token_embd: Dense,
    /// (n_vocab, n_embd): a separate output head, or a Q8_0 copy of a tied one.
    pub output: Option<Dense>,
    pub output_norm: Vec<f32>,
    pub layers: Vec<Layer>,
    parameter_count: u64,
    ternary_type: GgmlType,
}

/// Choices made while loading a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Convert a dense (F16/F32/BF16) output head to Q8_0: about half the
    /// bytes read per decoded token for a small loss of precision.
    pub q8_0_head: bool,
    /// Widen an F16 output head to F32: twice the bytes, the same values,
    /// for targets that convert halves in software (wasm simd128), where
    /// the F32 product is faster and sums in the same order. Ignored with
    /// `q8_0_head`.
    pub f32_head: bool,
    /// Touch every page of the KV cache at load, so no step pays a first
    /// write's page fault later; resident memory is the whole cache at once.
    pub kv_prefault: bool,
    /// Bytes of KV cache the backend keeps (at least one full context).
    pub kv_memory: usize,
    /// The compute backend.
    pub device: crate::model::Device,
}

impl Weights {
    /// Loads and repacks every tensor the forward pass needs.
    pub fn load(g: &GgufFile, options: &LoadOptions) -> Result<Self, ModelError> {
        let config = ModelConfig::from_gguf(g)?;
        let c = &config;
        let vector = |name: &str, len: usize| -> Result<Vec<f32>, ModelError> {
            let t = g.tensor(name)?;
            if t.n_elements() as usize != len {
                return Err(ModelError::tensor(t, format!("has {} elements, expected {len}", t.n_elements())));
            }
            let bytes = g.tensor_data(name)?;
            match t.ggml_type {
                GgmlType::F32 => Ok(f32s(bytes)),
                GgmlType::F16 => Ok(f16s(bytes).into_iter().map(f16::to_f32).collect()),
                other => Err(ModelError::tensor(t, format!("norm weights must be F32 or F16, found {}", other.name()))),
            }
        };
        let mut ternary_type = GgmlType::F32;
        let mut ternary = |name: &str, rows: usize, cols: usize| -> Result<TernaryMatrix, ModelError> {
            let t = g.tensor(&format!("{name}.weight"))?;
            if t.dims.len() != 2 || t.dims[0] as usize != cols || t.dims[1] as usize != rows {
                return Err(ModelError::tensor(t, format!("has shape {:?}, expected [{cols}, {rows}]", t.dims)));
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
                other => return Err(ModelError::tensor(t, format!("{} is not a ternary format", other.name()))),
            }
            .map_err(|e| ModelError::tensor(t, e.to_string()))?;
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
                return Err(ModelError::tensor(t, format!("has shape {:?}, expected [{d}, {}]", t.dims, c.n_vocab)));
            }
            Dense::load(g, t)
        };
        let token_embd = dense("token_embd.weight")?;
        let mut output = if g.tensors.contains_key("output.weight") { Some(dense("output.weight")?) } else { None };
        if options.q8_0_head && d.is_multiple_of(k::Q8_0_BLOCK) {
            // A tied head gets its own Q8_0 copy; embedding lookups keep the original.
            output = Some(output.as_ref().unwrap_or(&token_embd).to_q8_0(c.n_vocab, d));
        } else if options.f32_head {
            if let Dense::F16(w) = output.as_ref().unwrap_or(&token_embd) {
                output = Some(Dense::F32(w.iter().map(|h| h.to_f32()).collect()));
            }
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

    /// The head the forward pass multiplies by: the separate or converted
    /// one, else the tied embedding.
    pub fn head(&self) -> &Dense {
        self.output.as_ref().unwrap_or(&self.token_embd)
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
        self.ternary_bytes() + self.head().size_bytes()
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

//! A model's hyper-parameters, read from GGUF metadata in either naming:
//! `bitnet-b1.58` as Microsoft's 2B-4T ships it, `bitnet` as mainline
//! llama.cpp writes it.

use crate::gguf::GgufFile;
use crate::model::error::ModelError;

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

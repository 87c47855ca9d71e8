//! The compute-backend seam: where a model's weights and KV memory live and
//! its forward pass runs.
//!
//! The scheduler plans which tokens run and which KV blocks hold them; a
//! [`ComputeBackend`] only computes. The CPU backend runs the kernels; a GPU
//! backend implements the same trait over compute shaders, so the
//! scheduler, prefix reuse, preemption and cancellation never know which
//! device runs a model.

use crate::model::config::ModelConfig;

/// What a [`BatchItem`] wants back from a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Nothing: a chunk of a prompt that goes on in a later step.
    Nothing,
    /// The logits of its last token: what the scheduler samples from.
    LastLogits,
    /// The logits of every token (tests, scoring).
    AllLogits,
    /// The output-normed hidden states of every token, for embeddings.
    Hidden,
}

/// One sequence's share of a batched forward pass.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    /// Its KV blocks, which must hold positions up to `pos + tokens.len()`.
    pub blocks: &'a [u32],
    /// Position of its first token: how many positions are already cached.
    pub pos: usize,
    pub tokens: &'a [u32],
    pub output: Output,
}

/// What a forward pass hands back, rows in item order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Forward {
    /// (rows, n_vocab): the rows of the items that asked for logits.
    pub logits: Vec<f32>,
    /// (rows, n_embd): the rows of the items that asked for hidden states.
    pub hidden: Vec<f32>,
}

/// A device that holds a model's weights and KV memory and runs its
/// forward pass.
pub trait ComputeBackend: Send + Sync {
    /// The model's hyper-parameters.
    fn config(&self) -> &ModelConfig;

    /// What computes, for logs and benchmarks (e.g. `cpu avx2`).
    fn device(&self) -> String;

    /// Bytes of weights and KV memory it holds in a GPU's memory (0 on the CPU).
    fn device_memory_bytes(&self) -> u64 {
        0
    }

    /// Read bandwidth of the memory its weights live in, in GB/s, when it
    /// is not the host's (a GPU's, measured over `bytes` by a shader).
    fn device_read_bandwidth_gbs(&self, _bytes: usize) -> Option<f64> {
        None
    }

    /// KV blocks of [`crate::kv::BLOCK_TOKENS`] positions its memory holds;
    /// every block id a [`BatchItem`] names is below this.
    fn kv_blocks(&self) -> usize;

    /// Runs every item's tokens in one pass over the weights: positions
    /// `pos..` of each item's sequence, their keys and values written to its
    /// blocks. An item's results never depend on the other items, so a
    /// sequence gets the same bits alone or batched.
    ///
    /// # Panics
    /// If an item's blocks cannot hold its positions.
    fn forward(&self, items: &[BatchItem]) -> Forward;
}

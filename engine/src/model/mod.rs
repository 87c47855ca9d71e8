//! A model ready to run: its weights on a compute backend, and the
//! bookkeeping of the KV blocks that backend's memory holds.
//!
//! 1. [`ModelConfig::from_gguf`] reads the hyper-parameters;
//!    [`Weights::load`] repacks every tensor into the kernels' layout.
//! 2. A [`ComputeBackend`] takes the weights and runs the forward pass
//!    ([`CpuBackend`] over the kernels; `GpuBackend` over the shaders,
//!    with the `gpu` feature), chosen by [`Device`].
//! 3. A [`Model`] pairs the backend with a [`BlockPool`] over its KV
//!    blocks, which the scheduler shares out; a [`Session`] runs one
//!    sequence outside the scheduler (tests, benchmarks).
//!
//! ```no_run
//! use tern_engine::gguf::GgufFile;
//! use tern_engine::model::{LoadOptions, Model, Session};
//!
//! let file = GgufFile::open("models/tern-tiny.gguf".as_ref())?;
//! let model = Model::load(&file, &LoadOptions::default())?;
//! let mut session = Session::new(&model);
//! let logits = session.forward(&[1, 2, 3], false); // (1, vocab)
//! # Ok::<(), tern_engine::model::ModelError>(())
//! ```

mod backend;
mod config;
mod cpu;
mod device;
mod error;
#[cfg(feature = "gpu")]
mod gpu;
mod weights;

use std::sync::{Mutex, MutexGuard, PoisonError};

pub use backend::{BatchItem, ComputeBackend, Forward, Output};
pub use config::{Activation, ModelConfig};
pub use cpu::CpuBackend;
pub use device::Device;
pub use error::ModelError;
#[cfg(feature = "gpu")]
pub use gpu::GpuBackend;
pub use weights::{Dense, Layer, LoadOptions, Weights};

use crate::gguf::{GgmlType, GgufFile};
use crate::kv::{BlockPool, SeqKv};

/// What the weights of a model add up to, kept after they move to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightsSummary {
    /// Weights in every tensor of the file.
    pub parameter_count: u64,
    /// On-disk type of the ternary projections (e.g. TQ2_0).
    pub ternary_type: GgmlType,
    /// Bytes of weights held after repacking.
    pub weight_bytes: usize,
    /// Weight bytes one decoded token reads: every ternary projection and
    /// the output head.
    pub bytes_per_token: usize,
}

impl WeightsSummary {
    fn of(w: &Weights) -> Self {
        Self {
            parameter_count: w.parameter_count(),
            ternary_type: w.ternary_type(),
            weight_bytes: w.weight_bytes(),
            bytes_per_token: w.bytes_per_token(),
        }
    }
}

/// A model on a compute backend, with its KV blocks.
pub struct Model {
    backend: Box<dyn ComputeBackend>,
    blocks: Mutex<BlockPool>,
    summary: WeightsSummary,
}

impl Model {
    /// Loads a GGUF model onto the backend `options.device` asks for.
    pub fn load(g: &GgufFile, options: &LoadOptions) -> Result<Self, ModelError> {
        let weights = Weights::load(g, options)?;
        let summary = WeightsSummary::of(&weights);
        Ok(Self::on(device::backend(weights, options)?, summary))
    }

    /// A model on `backend`, whose weights add up to `summary`.
    pub fn on(backend: Box<dyn ComputeBackend>, summary: WeightsSummary) -> Self {
        let blocks = Mutex::new(BlockPool::new(backend.kv_blocks()));
        Self { backend, blocks, summary }
    }

    pub fn config(&self) -> &ModelConfig {
        self.backend.config()
    }

    pub fn backend(&self) -> &dyn ComputeBackend {
        self.backend.as_ref()
    }

    pub fn summary(&self) -> &WeightsSummary {
        &self.summary
    }

    /// The bookkeeping of the backend's KV blocks. Held briefly: never
    /// across a forward pass.
    pub fn blocks(&self) -> MutexGuard<'_, BlockPool> {
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one batched forward pass ([`ComputeBackend::forward`]).
    pub fn forward(&self, items: &[BatchItem]) -> Forward {
        self.backend.forward(items)
    }
}

/// One sequence run outside the scheduler: its KV blocks come from the
/// model's pool and go back when it is dropped.
pub struct Session<'m> {
    model: &'m Model,
    kv: SeqKv,
    len: usize,
}

impl<'m> Session<'m> {
    pub fn new(model: &'m Model) -> Self {
        Self { model, kv: SeqKv::default(), len: 0 }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Runs `tokens` at positions `len()..` and returns logits: (1, vocab)
    /// for the last token, or (tokens, vocab) when `all_logits` is set.
    ///
    /// # Panics
    /// If the tokens overflow the context or the model's KV blocks.
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Vec<f32> {
        let output = if all_logits { Output::AllLogits } else { Output::LastLogits };
        self.run(tokens, output).logits
    }

    /// The output-normed hidden states of `tokens` at positions `len()..`:
    /// (tokens, n_embd).
    ///
    /// # Panics
    /// As [`Session::forward`].
    pub fn hidden_states(&mut self, tokens: &[u32]) -> Vec<f32> {
        self.run(tokens, Output::Hidden).hidden
    }

    fn run(&mut self, tokens: &[u32], output: Output) -> Forward {
        let end = self.len + tokens.len();
        assert!(end <= self.model.config().n_ctx, "session: {end} positions overflow the context");
        assert!(self.model.blocks().grow(&mut self.kv, end), "session: no KV blocks left for {end} positions");
        let item = BatchItem { blocks: self.kv.blocks(), pos: self.len, tokens, output };
        let out = self.model.forward(&[item]);
        self.len = end;
        out
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.model.blocks().release(&mut self.kv);
    }
}

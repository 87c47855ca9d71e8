//! What can go wrong while loading a model file.

use crate::gguf::{GgufError, TensorInfo};

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
    #[error("compute device: {0}")]
    Device(String),
}

impl ModelError {
    /// A problem with tensor `t`.
    pub(crate) fn tensor(t: &TensorInfo, reason: impl Into<String>) -> Self {
        ModelError::Tensor { name: t.name.clone(), reason: reason.into() }
    }
}

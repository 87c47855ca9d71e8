//! The errors a caller of the engine can act on.

/// Errors a caller can act on; they map one to one onto the WIT `error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum EngineError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("model {0:?} not found")]
    UnknownModel(String),
    #[error("the prompt has {prompt_tokens} tokens but the context holds {context_length}")]
    ContextOverflow { prompt_tokens: u32, context_length: u32 },
    #[error("{0}")]
    Overloaded(String),
    /// The server is stopping: retrying here will not help.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

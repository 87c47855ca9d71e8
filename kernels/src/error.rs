#![forbid(unsafe_code)]
//! The one error type of the crate: a tensor whose shape or bytes cannot be
//! turned into the kernels' layout.

use std::fmt;

/// Why a weight tensor was refused at load time.
///
/// Products and element-wise kernels never return errors: a mismatched slice
/// length there is a caller bug and panics (see each function's `# Panics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// Dimensions that the format cannot describe (e.g. `cols` not a multiple
    /// of the format's block) or a payload of the wrong length.
    Shape(String),
    /// Bytes that decode to something no ternary tensor contains
    /// (e.g. a 2-bit code of 3).
    Format(String),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Shape(msg) => write!(f, "bad tensor shape: {msg}"),
            KernelError::Format(msg) => write!(f, "bad tensor data: {msg}"),
        }
    }
}

impl std::error::Error for KernelError {}

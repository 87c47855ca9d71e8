//! WGSL compute shaders for ternary language models and the wgpu pipelines
//! that run them: the GPU half of tern's compute backends.
//!
//! - [`Gpu`]: an adapter, its device and every pipeline, built once.
//! - [`TernaryWeights`], [`DenseWeights`]: weights uploaded once, split by
//!   rows into buffers no larger than the adapter binds.
//! - [`Step`]: the dispatches of one forward pass, recorded into one
//!   command submission, and the reads that come back from it.
//!
//! Every shader (in `wgsl/`) is tested against the CPU reference kernels of
//! `tern-kernels`: integer sums bit-identical, floats within named
//! tolerances.

mod device;
mod kernels;
mod step;
mod weights;

/// The wgpu this crate builds on, for the buffers its API takes.
pub use wgpu;

pub use device::{find_adapter, Choice, Gpu, GpuError};
pub use kernels::Gate;
pub use step::{Quantized, ReadId, Reads, Step};
pub use weights::{Dense, DenseWeights, TernaryWeights};

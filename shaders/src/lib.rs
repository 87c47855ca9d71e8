//! WGSL compute shaders for ternary language models and the wgpu pipelines
//! that run them: the GPU half of tern's compute backends.
//!
//! 1. [`Gpu::open`] takes an adapter ([`Choice`]), opens its device and
//!    builds every pipeline from the WGSL in `wgsl/` once.
//! 2. [`TernaryWeights`] and [`DenseWeights`] upload weights once, split by
//!    rows into buffers no larger than the adapter binds.
//! 3. A [`Step`] records the dispatches of one forward pass (the engine's
//!    GPU backend records a whole scheduler step) into one submission;
//!    [`Step::finish`] submits it and returns the floats it was asked to
//!    read back.
//!
//! Every shader is tested against the CPU reference kernels of
//! `tern-kernels`: integer sums bit-identical, floats within named
//! tolerances.
//!
//! ```no_run
//! use tern_shaders::{Choice, Gpu, Quantized, Step, TernaryWeights};
//! use tern_kernels::TernaryMatrix;
//!
//! let gpu = Gpu::open(Choice::Any)?;
//! let m = TernaryMatrix::from_ternary(&[1, 0, -1, 1], 2, 2, 0.5).unwrap();
//! let w = TernaryWeights::upload(&gpu, &m, "w")?;
//! // One token of int8 activations, quantised from x on the device.
//! let x = gpu.upload("x", &[0.25f32, -1.0]);
//! let q = Quantized::new(&gpu, 1, w.input_words());
//! let out = gpu.buffer("out", 2 * 4);
//! let mut step = Step::new(&gpu);
//! step.quantize(&x, 2, 1, 2, &q);
//! step.ternary(&w, &q, 1, &out, 2, 0);
//! let read = step.read(&out, 0, 2);
//! let y = step.finish().take(read); // W @ x, (2,)
//! # Ok::<(), tern_shaders::GpuError>(())
//! ```

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

//! Benchmark and fixture tooling for tern, kept apart from the engine so
//! that `engine/src` is the inference engine only.
//!
//! 1. [`gguf_writer`] streams GGUF files out: the inverse of
//!    [`tern_engine::gguf`].
//! 2. [`synth`] uses it to write full-size models with a known model's
//!    shapes and random ternary weights (`tern synth`, and long-context test
//!    fixtures); [`synth_file`] writes one to disk with progress shown.
//! 3. [`measure`] times memory bandwidth, the ternary and dense products,
//!    attention and a model's prefill and decode; [`bench`] is `tern bench`,
//!    which prints every figure next to the baseline measured in the same
//!    run.
//!
//! ```no_run
//! use tern_tools::synth::SynthSpec;
//!
//! let spec = SynthSpec::preset("tern-tiny").expect("a preset");
//! tern_tools::synth_file::write_file(&spec, "tiny-synth.gguf".as_ref())?;
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod bench;
mod bench_gpu;
pub mod gguf_writer;
pub mod measure;
pub mod synth;
pub mod synth_file;

//! Which compute backend a model is loaded onto (`--device`).

use std::fmt;
use std::str::FromStr;

use crate::model::backend::ComputeBackend;
use crate::model::cpu::CpuBackend;
use crate::model::error::ModelError;
use crate::model::weights::{LoadOptions, Weights};

/// Where a model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Device {
    /// The CPU kernels (always there; the reference).
    #[default]
    Cpu,
    /// A GPU, software adapters (llvmpipe) included; an error without one.
    Gpu,
    /// A real GPU when there is one, the CPU otherwise.
    Auto,
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            "auto" => Ok(Device::Auto),
            other => Err(format!("unknown device {other:?} (cpu, gpu or auto)")),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
            Device::Auto => "auto",
        })
    }
}

impl Device {
    /// Whether this device can be had here: for `gpu`, an adapter exists
    /// (found, not opened). `Err` says why not.
    pub fn check(self) -> Result<(), String> {
        match self {
            Device::Cpu | Device::Auto => Ok(()),
            Device::Gpu => find_gpu(),
        }
    }
}

#[cfg(feature = "gpu")]
fn find_gpu() -> Result<(), String> {
    tern_shaders::find_adapter(tern_shaders::Choice::Any).map(drop).map_err(|e| e.to_string())
}

#[cfg(not(feature = "gpu"))]
fn find_gpu() -> Result<(), String> {
    Err("this build of tern has no GPU backend (the engine's `gpu` feature)".into())
}

/// `weights` on the backend `options.device` asks for.
pub(crate) fn backend(weights: Weights, options: &LoadOptions) -> Result<Box<dyn ComputeBackend>, ModelError> {
    let cpu = |weights| Box::new(CpuBackend::new(weights, options.kv_memory, options.kv_prefault));
    match options.device {
        Device::Cpu => Ok(cpu(weights)),
        Device::Gpu | Device::Auto => gpu(weights, options, cpu),
    }
}

#[cfg(feature = "gpu")]
fn gpu(
    weights: Weights,
    options: &LoadOptions,
    cpu: impl FnOnce(Weights) -> Box<CpuBackend>,
) -> Result<Box<dyn ComputeBackend>, ModelError> {
    use tern_shaders::{Choice, Gpu};
    let choice = if options.device == Device::Gpu { Choice::Any } else { Choice::Hardware };
    match Gpu::open(choice) {
        Ok(gpu) => {
            tracing::info!(adapter = %gpu.describe(), "running on the GPU");
            Ok(Box::new(crate::model::gpu::GpuBackend::new(weights, gpu, options.kv_memory)?))
        }
        Err(e) if options.device == Device::Auto => {
            tracing::info!(reason = %e, "running on the CPU");
            Ok(cpu(weights))
        }
        Err(e) => Err(ModelError::Device(e.to_string())),
    }
}

#[cfg(not(feature = "gpu"))]
fn gpu(
    weights: Weights,
    options: &LoadOptions,
    cpu: impl FnOnce(Weights) -> Box<CpuBackend>,
) -> Result<Box<dyn ComputeBackend>, ModelError> {
    if options.device == Device::Auto {
        return Ok(cpu(weights));
    }
    Err(ModelError::Device("this build of tern has no GPU backend (the engine's `gpu` feature)".into()))
}

//! Every compute pipeline, built once per device from the WGSL in `wgsl/`.

use crate::device::GpuError;

/// One entry point of a shader module, with the layout of its bindings.
pub(crate) struct Kernel {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// The feed-forward gate: act(gate) · up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// relu(g)² (BitNet b1.58 2B-4T)
    Relu2,
    /// g / (1 + e^-g)
    Silu,
}

pub(crate) struct Kernels {
    pub quantize: Kernel,
    pub rmsnorm: Kernel,
    pub relu2_gate: Kernel,
    pub silu_gate: Kernel,
    pub add: Kernel,
    pub rope: Kernel,
    pub kv_write: Kernel,
    pub attention: Kernel,
    /// [one token][packed dot][block scales]
    pub ternary: [[[Kernel; 2]; 2]; 2],
    pub dense_f32: Kernel,
    pub dense_f16: Kernel,
    pub dense_q8_0: Kernel,
    /// One token: the rows in the vector lanes.
    pub dense_f16_one: Kernel,
    pub dense_q8_0_one: Kernel,
    pub read_all: Kernel,
}

impl Kernels {
    pub fn build(device: &wgpu::Device) -> Result<Self, GpuError> {
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = |name: &str, source: &'static str| {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            })
        };
        let quantize = module("quantize", include_str!("../wgsl/quantize.wgsl"));
        let rmsnorm = module("rmsnorm", include_str!("../wgsl/rmsnorm.wgsl"));
        let elementwise = module("elementwise", include_str!("../wgsl/elementwise.wgsl"));
        let attention = module("attention", include_str!("../wgsl/attention.wgsl"));
        let ternary = module("ternary", include_str!("../wgsl/ternary.wgsl"));
        let dense = module("dense", include_str!("../wgsl/dense.wgsl"));
        let bandwidth = module("bandwidth", include_str!("../wgsl/bandwidth.wgsl"));
        let kernel = |module: &wgpu::ShaderModule, entry: &str, constants: &[(&str, f64)]| {
            let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: None,
                module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants,
                    // Every shader writes its workgroup memory before reading it.
                    zero_initialize_workgroup_memory: false,
                },
                cache: None,
            });
            let layout = pipeline.get_bind_group_layout(0);
            Kernel { pipeline, layout }
        };
        let ternary_kernel = |one: bool, packed: bool, blocks: bool| {
            let flag = |b: bool| if b { 1.0 } else { 0.0 };
            let entry = if one { "ternary_one" } else { "ternary" };
            kernel(&ternary, entry, &[("PACKED_DOT", flag(packed)), ("BLOCK_SCALES", flag(blocks))])
        };
        let ternary_kernels = |one: bool| {
            [
                [ternary_kernel(one, false, false), ternary_kernel(one, false, true)],
                [ternary_kernel(one, true, false), ternary_kernel(one, true, true)],
            ]
        };
        let kernels = Self {
            quantize: kernel(&quantize, "quantize", &[]),
            rmsnorm: kernel(&rmsnorm, "rmsnorm", &[]),
            relu2_gate: kernel(&elementwise, "relu2_gate", &[]),
            silu_gate: kernel(&elementwise, "silu_gate", &[]),
            add: kernel(&elementwise, "add", &[]),
            rope: kernel(&elementwise, "rope", &[]),
            kv_write: kernel(&attention, "kv_write", &[]),
            attention: kernel(&attention, "attention", &[]),
            ternary: [ternary_kernels(false), ternary_kernels(true)],
            dense_f32: kernel(&dense, "dense_f32", &[]),
            dense_f16: kernel(&dense, "dense_f16", &[]),
            dense_q8_0: kernel(&dense, "dense_q8_0", &[]),
            dense_f16_one: kernel(&dense, "dense_f16_one", &[]),
            dense_q8_0_one: kernel(&dense, "dense_q8_0_one", &[]),
            read_all: kernel(&bandwidth, "read_all", &[]),
        };
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(GpuError::Shader(e.to_string())),
            None => Ok(kernels),
        }
    }
}

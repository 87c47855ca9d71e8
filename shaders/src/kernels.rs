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

/// The ternary product's entry points, by how many tokens it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TernaryShape {
    /// One token: 4 rows a workgroup.
    One,
    /// A few tokens: 4 rows × 4 tokens a workgroup.
    Few,
    /// Many tokens: 32 rows × 32 tokens a workgroup, tiled in workgroup memory.
    Tiled,
}

impl TernaryShape {
    const ALL: [TernaryShape; 3] = [TernaryShape::One, TernaryShape::Few, TernaryShape::Tiled];

    /// The entry point for `tokens` tokens, the tiled one from `tiled_from`.
    pub fn of(tokens: usize, tiled_from: usize) -> Self {
        match tokens {
            0 | 1 => TernaryShape::One,
            n if n < tiled_from => TernaryShape::Few,
            _ => TernaryShape::Tiled,
        }
    }

    fn entry(self) -> &'static str {
        match self {
            TernaryShape::One => "ternary_one",
            TernaryShape::Few => "ternary",
            TernaryShape::Tiled => "ternary_tiled",
        }
    }

    /// (rows, tokens) of one workgroup.
    pub fn tile(self) -> (usize, usize) {
        match self {
            TernaryShape::One => (4, 1),
            TernaryShape::Few => (4, 4),
            TernaryShape::Tiled => (32, 32),
        }
    }
}

pub(crate) struct Kernels {
    pub quantize: Kernel,
    pub norm_quantize: Kernel,
    pub rmsnorm: Kernel,
    pub relu2_gate: Kernel,
    pub silu_gate: Kernel,
    pub add: Kernel,
    pub rope: Kernel,
    pub kv_write: Kernel,
    pub attention: Kernel,
    /// [shape][packed dot][block scales], shapes as [`TernaryShape`].
    pub ternary: [[[Kernel; 2]; 2]; 3],
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
        let ternary_kernel = |shape: TernaryShape, packed: bool, blocks: bool| {
            let flag = |b: bool| if b { 1.0 } else { 0.0 };
            let entry = shape.entry();
            kernel(&ternary, entry, &[("PACKED_DOT", flag(packed)), ("BLOCK_SCALES", flag(blocks))])
        };
        let ternary_kernels = |shape: TernaryShape| {
            [
                [ternary_kernel(shape, false, false), ternary_kernel(shape, false, true)],
                [ternary_kernel(shape, true, false), ternary_kernel(shape, true, true)],
            ]
        };
        let kernels = Self {
            quantize: kernel(&quantize, "quantize", &[]),
            norm_quantize: kernel(&quantize, "norm_quantize", &[]),
            rmsnorm: kernel(&rmsnorm, "rmsnorm", &[]),
            relu2_gate: kernel(&elementwise, "relu2_gate", &[]),
            silu_gate: kernel(&elementwise, "silu_gate", &[]),
            add: kernel(&elementwise, "add", &[]),
            rope: kernel(&elementwise, "rope", &[]),
            kv_write: kernel(&attention, "kv_write", &[]),
            attention: kernel(&attention, "attention", &[]),
            ternary: TernaryShape::ALL.map(ternary_kernels),
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

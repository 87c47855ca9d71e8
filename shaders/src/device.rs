//! Opening an adapter and device, and moving bytes to and from it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use bytemuck::Pod;
use wgpu::util::DeviceExt;

use crate::kernels::Kernels;

/// Tokens from which the ternary product is tiled in workgroup memory, on
/// a hardware adapter.
const TILED_FROM: usize = 8;

/// Which adapters [`Gpu::open`] may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Only a real GPU (`--device auto`): software rasterisers such as
    /// llvmpipe are never taken unasked.
    Hardware,
    /// The best adapter there is, software ones included (`--device gpu`).
    Any,
}

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    #[error("the GPU device could not be opened: {0}")]
    Device(String),
    #[error("a shader did not build: {0}")]
    Shader(String),
    #[error("{0}")]
    Shape(String),
}

/// An adapter, its device and queue, and every pipeline.
pub struct Gpu {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    /// Largest storage buffer binding, in bytes (lowered by tests).
    max_binding: u64,
    pub(crate) kernels: Kernels,
    /// Whether the ternary product uses `dot4I8Packed`.
    pub(crate) packed_dot: bool,
    /// Tokens from which the ternary product is tiled in workgroup memory.
    pub(crate) tiled_from: usize,
    /// Bytes of every buffer made through [`Gpu::buffer`] and [`Gpu::upload`].
    allocated: AtomicU64,
}

impl Gpu {
    /// Opens the best adapter `choice` allows, with the limits it has.
    pub fn open(choice: Choice) -> Result<Self, GpuError> {
        let adapter = adapter(choice)?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("tern"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| GpuError::Device(e.to_string()))?;
        device.on_uncaptured_error(std::sync::Arc::new(|e: wgpu::Error| {
            tracing::error!(error = %e, "GPU error");
        }));
        let kernels = Kernels::build(&device)?;
        let max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size);
        // On a software driver the tiled product is slower than the 4 × 4
        // one (BENCHMARKS.md, "GPU"): its barriers are costly there.
        let tiled_from = if info.device_type == wgpu::DeviceType::Cpu { usize::MAX } else { TILED_FROM };
        Ok(Self {
            device,
            queue,
            info,
            max_binding,
            kernels,
            packed_dot: true,
            tiled_from,
            allocated: AtomicU64::new(0),
        })
    }

    /// The adapter's name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Name, API, driver and kind, for logs and benchmarks.
    pub fn describe(&self) -> String {
        describe(&self.info)
    }

    /// A software rasteriser (llvmpipe, WARP, SwiftShader), not a GPU.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Largest buffer one binding may hold, in bytes.
    pub fn max_binding(&self) -> u64 {
        self.max_binding
    }

    /// Splits tensors as if the adapter bound at most `bytes` at a time
    /// (tests of the split path on adapters with large limits).
    pub fn limit_binding(&mut self, bytes: u64) {
        self.max_binding = self.max_binding.min(bytes);
    }

    /// Whether the ternary product uses the packed 4×int8 dot product
    /// (`true`, the default) or plain integer operations.
    pub fn use_packed_dot(&mut self, packed: bool) {
        self.packed_dot = packed;
    }

    /// Bytes of every storage buffer made so far (freed ones included).
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    /// Tiles the ternary product in workgroup memory from `tokens` tokens
    /// (`usize::MAX`: never). By default from 8 tokens, never on software
    /// adapters.
    pub fn tile_from(&mut self, tokens: usize) {
        self.tiled_from = tokens;
    }

    /// A zeroed storage buffer of `bytes` (at least 4).
    pub fn buffer(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        let bytes = bytes.max(4).next_multiple_of(4);
        self.allocated.fetch_add(bytes, Ordering::Relaxed);
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer holding `data` (padded to whole words).
    pub fn upload<T: Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        if !bytes.len().is_multiple_of(4) || bytes.is_empty() {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().max(4).next_multiple_of(4), 0);
            return self.upload(label, &padded);
        }
        self.allocated.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// Writes `data` at element `at` of `buffer`, before the next submission.
    pub fn write<T: Pod>(&self, buffer: &wgpu::Buffer, at: usize, data: &[T]) {
        if !data.is_empty() {
            self.queue.write_buffer(buffer, (at * size_of::<T>()) as u64, bytemuck::cast_slice(data));
        }
    }

    /// `len` floats of `buffer` from element `at` (waits for the queue).
    pub fn read_f32(&self, buffer: &wgpu::Buffer, at: usize, len: usize) -> Vec<f32> {
        let mut step = crate::Step::new(self);
        let id = step.read(buffer, at, len);
        step.finish().take(id)
    }

    /// Read bandwidth of the device's memory in GB/s: the best of `reps`
    /// passes of a shader over a buffer of `bytes` (at most one binding).
    pub fn read_bandwidth_gbs(&self, bytes: u64, reps: usize) -> f64 {
        let bytes = bytes.min(self.max_binding) / 16 * 16;
        let data = self.buffer("bandwidth", bytes);
        let threads = 256 * 1024;
        let sums = self.buffer("bandwidth sums", threads as u64 * 4);
        // The first pass also pages the buffer in.
        let mut best = f64::INFINITY;
        for _ in 0..reps + 1 {
            let mut step = crate::Step::new(self);
            step.read_all(&data, &sums, threads);
            let start = std::time::Instant::now();
            step.finish();
            best = best.min(start.elapsed().as_secs_f64());
        }
        bytes as f64 / best / 1e9
    }

    /// Blocks until `staging` (a MAP_READ buffer) is mapped; its bytes.
    pub(crate) fn map_read(&self, staging: &wgpu::Buffer) -> Vec<u8> {
        let (tx, rx) = mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.device.poll(wgpu::PollType::wait_indefinitely()).expect("GPU: waiting for the queue");
        rx.recv().expect("GPU: map callback").expect("GPU: mapping a read-back buffer");
        let bytes = staging.get_mapped_range(..).expect("GPU: a mapped read-back buffer").to_vec();
        staging.unmap();
        bytes
    }
}

/// The adapter [`Gpu::open`] would take, described, without opening it.
pub fn find_adapter(choice: Choice) -> Result<String, GpuError> {
    adapter(choice).map(|a| describe(&a.get_info()))
}

/// The best adapter `choice` allows: discrete, then integrated, virtual,
/// other, and software last.
fn adapter(choice: Choice) -> Result<wgpu::Adapter, GpuError> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::PRIMARY));
    let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let seen: Vec<String> = adapters.iter().map(|a| describe(&a.get_info())).collect();
    adapters
        .into_iter()
        .filter(|a| choice == Choice::Any || a.get_info().device_type != wgpu::DeviceType::Cpu)
        .min_by_key(rank)
        .ok_or_else(|| {
            GpuError::NoAdapter(if seen.is_empty() {
                "no Vulkan, Metal or DX12 adapter was found (on Linux without a GPU, Mesa's lavapipe \
                 — Debian's mesa-vulkan-drivers — gives a software one)"
                    .into()
            } else {
                format!("only software adapters were found ({}); ask for one with --device gpu", seen.join("; "))
            })
        })
}

fn describe(info: &wgpu::AdapterInfo) -> String {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Cpu => "software",
        wgpu::DeviceType::Other => "other",
    };
    let driver = [info.driver.as_str(), info.driver_info.as_str()].join(" ");
    format!("{} ({:?}, {}, {kind})", info.name, info.backend, driver.trim())
}

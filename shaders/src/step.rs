//! [`Step`]: the dispatches of one forward pass in one submission.
//!
//! Each operation's parameters go into a uniform ring written just before
//! the submission; its bind group is made as it is recorded. Copies and
//! read-backs split the compute pass where they fall, so everything runs in
//! the order it was recorded.

use bytemuck::{Pod, Zeroable};

use crate::device::Gpu;
use crate::kernels::{Gate, Kernel, TernaryShape};
use crate::weights::{DenseKind, DenseWeights, TernaryWeights};

/// Parameter blocks are this far apart (WebGPU's uniform offset alignment).
const PARAM_STRIDE: u64 = 256;
/// Parameter blocks per uniform buffer of the ring.
const PARAMS_PER_CHUNK: u64 = 256;
/// Workgroups per dimension of a dispatch (WebGPU's minimum limit).
const MAX_GROUPS: u32 = 65_535;

/// Rows of int8 activations as the ternary product takes them: q (rows,
/// words) packed four to a word and zero-padded, scales s (rows,), and
/// each row's sum of q.
pub struct Quantized {
    pub q: wgpu::Buffer,
    pub s: wgpu::Buffer,
    pub sum: wgpu::Buffer,
    /// Words per row: the `input_words()` of the weights it feeds.
    pub words: usize,
}

impl Quantized {
    /// Room for `rows` rows of `words` words.
    pub fn new(gpu: &Gpu, rows: usize, words: usize) -> Self {
        Self {
            q: gpu.buffer("q", (rows * words * 4) as u64),
            s: gpu.buffer("q scales", (rows * 4) as u64),
            sum: gpu.buffer("q sums", (rows * 4) as u64),
            words,
        }
    }
}

/// Which read of a [`Step`] a result is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadId(usize);

/// What a finished [`Step`] read back.
pub struct Reads(Vec<Option<Vec<f32>>>);

impl Reads {
    /// The floats of read `id`.
    pub fn take(&mut self, id: ReadId) -> Vec<f32> {
        self.0[id.0].take().expect("each read is taken once")
    }
}

struct PendingRead {
    staging: wgpu::Buffer,
}

/// The dispatches of one step, submitted together by [`Step::finish`].
pub struct Step<'g> {
    gpu: &'g Gpu,
    encoder: wgpu::CommandEncoder,
    pass: Option<wgpu::ComputePass<'static>>,
    /// Uniform buffers of the ring, with the bytes each will hold.
    params: Vec<(wgpu::Buffer, Vec<u8>)>,
    reads: Vec<PendingRead>,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct QuantizeParams {
    cols: u32,
    x_stride: u32,
    q_words: u32,
    eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    cols: u32,
    x_stride: u32,
    out_stride: u32,
    eps: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct ElementParams {
    len: u32,
    n_heads: u32,
    head_dim: u32,
    half: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct AttentionParams {
    n_heads: u32,
    group: u32,
    head_dim: u32,
    kv_dim: u32,
    len: u32,
    scale: f32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct TernaryParams {
    rows: u32,
    words: u32,
    n: u32,
    out_stride: u32,
    row_offset: u32,
    blocks: u32,
    d: f32,
    _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct DenseParams {
    rows: u32,
    cols: u32,
    n: u32,
    out_stride: u32,
    row_offset: u32,
    _pad: [u32; 3],
}

fn u(v: usize) -> u32 {
    u32::try_from(v).expect("GPU: a size past u32")
}

/// A grid of `groups` workgroups within the per-dimension limit, as
/// (x, y); shaders index them as y · x_count + x.
fn grid(groups: usize) -> (u32, u32) {
    let groups = u(groups.max(1));
    if groups <= MAX_GROUPS {
        (groups, 1)
    } else {
        (MAX_GROUPS, groups.div_ceil(MAX_GROUPS))
    }
}

impl<'g> Step<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        let encoder = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        Self { gpu, encoder, pass: None, params: Vec::new(), reads: Vec::new() }
    }

    /// Where the next parameter block goes: its buffer and offset.
    fn param_slot<P: Pod>(&mut self, p: &P) -> (wgpu::Buffer, u64) {
        let full = self.params.last().is_none_or(|(_, bytes)| bytes.len() as u64 >= PARAM_STRIDE * PARAMS_PER_CHUNK);
        if full {
            let buffer = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("params"),
                size: PARAM_STRIDE * PARAMS_PER_CHUNK,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.params.push((buffer, Vec::new()));
        }
        let (buffer, bytes) = self.params.last_mut().expect("a chunk");
        let at = bytes.len() as u64;
        bytes.extend_from_slice(bytemuck::bytes_of(p));
        bytes.resize((at + PARAM_STRIDE) as usize, 0);
        (buffer.clone(), at)
    }

    /// Records one dispatch of `kernel` with parameters `p` at binding 0
    /// and `buffers` at their binding numbers.
    fn dispatch<P: Pod>(&mut self, kernel: &Kernel, p: &P, buffers: &[(u32, &wgpu::Buffer)], groups: (u32, u32)) {
        let (params, at) = self.param_slot(p);
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &params,
                offset: at,
                size: wgpu::BufferSize::new(size_of::<P>() as u64),
            }),
        }];
        entries.extend(
            buffers.iter().map(|&(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() }),
        );
        let group = self.gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &kernel.layout,
            entries: &entries,
        });
        let pass = self.pass.get_or_insert_with(|| {
            self.encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None })
                .forget_lifetime()
        });
        pass.set_pipeline(&kernel.pipeline);
        pass.set_bind_group(0, &group, &[]);
        pass.dispatch_workgroups(groups.0, groups.1, 1);
    }

    /// Copies `len` elements of 4 bytes from `src` at `src_at` to `dst` at `dst_at`.
    pub fn copy(&mut self, src: &wgpu::Buffer, src_at: usize, dst: &wgpu::Buffer, dst_at: usize, len: usize) {
        self.pass = None;
        self.encoder.copy_buffer_to_buffer(src, (src_at * 4) as u64, dst, (dst_at * 4) as u64, (len * 4) as u64);
    }

    /// Reads `len` floats of `buffer` from element `at` back when the step finishes.
    pub fn read(&mut self, buffer: &wgpu::Buffer, at: usize, len: usize) -> ReadId {
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read-back"),
            size: (len.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.pass = None;
        if len > 0 {
            self.encoder.copy_buffer_to_buffer(buffer, (at * 4) as u64, &staging, 0, (len * 4) as u64);
        }
        self.reads.push(PendingRead { staging });
        ReadId(self.reads.len() - 1)
    }

    /// Submits everything recorded and waits for the reads.
    pub fn finish(mut self) -> Reads {
        self.pass = None;
        for (buffer, bytes) in &self.params {
            self.gpu.queue.write_buffer(buffer, 0, bytes);
        }
        self.gpu.queue.submit([self.encoder.finish()]);
        let reads = self.reads.iter().map(|r| Some(bytemuck::cast_slice(&self.gpu.map_read(&r.staging)).to_vec()));
        let mut out: Vec<_> = reads.collect();
        if self.reads.is_empty() {
            self.gpu.device.poll(wgpu::PollType::wait_indefinitely()).expect("GPU: waiting for the queue");
        }
        out.shrink_to_fit();
        Reads(out)
    }

    /// Each of `rows` rows of x (x_stride floats apart, `cols` used) to int8 in `out`.
    pub fn quantize(&mut self, x: &wgpu::Buffer, x_stride: usize, rows: usize, cols: usize, out: &Quantized) {
        let p = QuantizeParams { cols: u(cols), x_stride: u(x_stride), q_words: u(out.words), eps: 0.0 };
        let k = &self.gpu.kernels.quantize;
        // The norm weight goes unread: x stands in for it.
        self.dispatch(k, &p, &[(1, x), (2, &out.q), (3, &out.s), (4, &out.sum), (5, x)], (u(rows), 1));
    }

    /// RMSNorm of each of `rows` rows of x with `weight` (cols,), then its
    /// int8 quantisation into `out`, in one dispatch: what [`Step::rmsnorm`]
    /// then [`Step::quantize`] give.
    #[allow(clippy::too_many_arguments)]
    pub fn norm_quantize(
        &mut self,
        x: &wgpu::Buffer,
        x_stride: usize,
        weight: &wgpu::Buffer,
        eps: f32,
        rows: usize,
        cols: usize,
        out: &Quantized,
    ) {
        let p = QuantizeParams { cols: u(cols), x_stride: u(x_stride), q_words: u(out.words), eps };
        let k = &self.gpu.kernels.norm_quantize;
        self.dispatch(k, &p, &[(1, x), (2, &out.q), (3, &out.s), (4, &out.sum), (5, weight)], (u(rows), 1));
    }

    /// RMSNorm of `rows` rows of x with `weight` (cols,) into out.
    #[allow(clippy::too_many_arguments)]
    pub fn rmsnorm(
        &mut self,
        x: &wgpu::Buffer,
        x_stride: usize,
        weight: &wgpu::Buffer,
        eps: f32,
        rows: usize,
        cols: usize,
        out: &wgpu::Buffer,
        out_stride: usize,
    ) {
        let p = NormParams { cols: u(cols), x_stride: u(x_stride), out_stride: u(out_stride), eps };
        let k = &self.gpu.kernels.rmsnorm;
        self.dispatch(k, &p, &[(1, x), (2, weight), (3, out)], (u(rows), 1));
    }

    /// out = act(gate) · up over `len` elements.
    pub fn gate(&mut self, gate: Gate, gate_in: &wgpu::Buffer, up: &wgpu::Buffer, out: &wgpu::Buffer, len: usize) {
        let k = match gate {
            Gate::Relu2 => &self.gpu.kernels.relu2_gate,
            Gate::Silu => &self.gpu.kernels.silu_gate,
        };
        let p = ElementParams { len: u(len), n_heads: 0, head_dim: 0, half: 0 };
        self.dispatch(k, &p, &[(1, out), (2, gate_in), (3, up)], grid(len.div_ceil(256)));
    }

    /// x += y over `len` elements.
    pub fn add(&mut self, x: &wgpu::Buffer, y: &wgpu::Buffer, len: usize) {
        let p = ElementParams { len: u(len), n_heads: 0, head_dim: 0, half: 0 };
        self.dispatch(&self.gpu.kernels.add, &p, &[(1, x), (2, y)], grid(len.div_ceil(256)));
    }

    /// NEOX RoPE of `rows` rows of x (rows, n_heads·head_dim) in place, with
    /// `cos_sin` (rows, half, 2) the cosines and sines of each row's angles.
    pub fn rope(
        &mut self,
        x: &wgpu::Buffer,
        cos_sin: &wgpu::Buffer,
        rows: usize,
        n_heads: usize,
        head_dim: usize,
        half: usize,
    ) {
        let len = rows * n_heads * half;
        let p = ElementParams { len: u(len), n_heads: u(n_heads), head_dim: u(head_dim), half: u(half) };
        self.dispatch(&self.gpu.kernels.rope, &p, &[(1, x), (2, cos_sin)], grid(len.div_ceil(256)));
    }

    /// Keys k and values v (rows, kv_dim) into the KV memory of one layer,
    /// row r at slot `slots[r]`.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_write(
        &mut self,
        k: &wgpu::Buffer,
        v: &wgpu::Buffer,
        slots: &wgpu::Buffer,
        k_mem: &wgpu::Buffer,
        v_mem: &wgpu::Buffer,
        rows: usize,
        kv_dim: usize,
    ) {
        let len = rows * kv_dim;
        let p = AttentionParams { kv_dim: u(kv_dim), len: u(len), ..Zeroable::zeroed() };
        let bindings = [(1, slots), (3, k), (4, v), (5, k_mem), (6, v_mem)];
        self.dispatch(&self.gpu.kernels.kv_write, &p, &bindings, grid(len.div_ceil(64)));
    }

    /// Causal attention of `rows` query rows q (rows, n_heads·head_dim) over
    /// one layer's KV memory into out; `meta` (rows, 2) gives each row the
    /// start of its block table in `tables` and how many positions it sees.
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &mut self,
        q: &wgpu::Buffer,
        meta: &wgpu::Buffer,
        tables: &wgpu::Buffer,
        k_mem: &wgpu::Buffer,
        v_mem: &wgpu::Buffer,
        out: &wgpu::Buffer,
        rows: usize,
        (n_heads, n_kv, head_dim): (usize, usize, usize),
    ) {
        assert!(head_dim <= 256, "attention: head_dim {head_dim} past 256");
        let p = AttentionParams {
            n_heads: u(n_heads),
            group: u(n_heads / n_kv),
            head_dim: u(head_dim),
            kv_dim: u(n_kv * head_dim),
            len: 0,
            scale: 1.0 / (head_dim as f32).sqrt(),
            _pad: [0; 2],
        };
        let bindings = [(1, meta), (2, tables), (3, q), (5, k_mem), (6, v_mem), (7, out)];
        self.dispatch(&self.gpu.kernels.attention, &p, &bindings, (u(n_heads), u(rows)));
    }

    /// W @ x for `n` rows of int8 activations -> out (n, out_stride), W's
    /// rows at columns `at..at + W.rows()`.
    pub fn ternary(
        &mut self,
        w: &TernaryWeights,
        x: &Quantized,
        n: usize,
        out: &wgpu::Buffer,
        out_stride: usize,
        at: usize,
    ) {
        assert_eq!(x.words, w.input_words(), "ternary: activation width vs weights");
        let shape = TernaryShape::of(n, self.gpu.tiled_from);
        let (tile_rows, tile_tokens) = shape.tile();
        let k = &self.gpu.kernels.ternary[shape as usize][self.gpu.packed_dot as usize][w.blocks.is_some() as usize];
        for part in &w.parts {
            let p = TernaryParams {
                rows: u(part.rows.len()),
                words: u(w.words),
                n: u(n),
                out_stride: u(out_stride),
                row_offset: u(at + part.rows.start),
                blocks: u(w.blocks.unwrap_or(0)),
                d: w.d,
                _pad: 0,
            };
            let bindings = [(1, &part.data), (2, &x.q), (3, &x.s), (4, &x.sum), (5, &part.scales), (6, out)];
            let groups = (u(part.rows.len().div_ceil(tile_rows)), u(n.div_ceil(tile_tokens)));
            self.dispatch(k, &p, &bindings, groups);
        }
    }

    /// Reads all of `data` (a multiple of 16 bytes) with `threads` threads
    /// (a multiple of 256), writing one sum per thread into `sums`.
    pub fn read_all(&mut self, data: &wgpu::Buffer, sums: &wgpu::Buffer, threads: usize) {
        let p = ElementParams { len: u((data.size() / 16) as usize), n_heads: u(threads), head_dim: 0, half: 0 };
        self.dispatch(&self.gpu.kernels.read_all, &p, &[(1, data), (2, sums)], (u(threads / 256), 1));
    }

    /// W @ x for `n` rows of x (n, cols) -> out (n, W.rows()).
    pub fn dense(&mut self, w: &DenseWeights, x: &wgpu::Buffer, n: usize, out: &wgpu::Buffer) {
        let kernels = &self.gpu.kernels;
        let k = match (w.kind, n) {
            (DenseKind::F32, _) => &kernels.dense_f32,
            (DenseKind::F16, 1) => &kernels.dense_f16_one,
            (DenseKind::F16, _) => &kernels.dense_f16,
            (DenseKind::Q8_0, 1) => &kernels.dense_q8_0_one,
            (DenseKind::Q8_0, _) => &kernels.dense_q8_0,
        };
        for part in &w.parts {
            let p = DenseParams {
                rows: u(part.rows.len()),
                cols: u(w.cols),
                n: u(n),
                out_stride: u(w.rows),
                row_offset: u(part.rows.start),
                _pad: [0; 3],
            };
            let mut bindings = vec![(1, &part.data), (3, x), (4, out)];
            if w.kind == DenseKind::Q8_0 {
                bindings.push((2, &part.scales));
            }
            self.dispatch(k, &p, &bindings, (u(part.rows.len().div_ceil(4)), u(n.div_ceil(4))));
        }
    }
}

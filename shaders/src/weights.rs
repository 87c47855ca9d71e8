//! Weights on the device: uploaded once, split by rows into buffers that
//! each fit one binding.

use std::ops::Range;

use tern_kernels::{f16, TernaryMatrix, Q8_0_BLOCK, Q8_0_BLOCK_BYTES, TQ_BLOCK};

use crate::device::{Gpu, GpuError};

/// Rows `rows` of a matrix, in a buffer of their own.
pub(crate) struct Part {
    pub rows: Range<usize>,
    pub data: wgpu::Buffer,
    /// Per-row scales (ternary block scales, Q8_0 block scales), or a
    /// placeholder word.
    pub scales: wgpu::Buffer,
}

/// Row ranges of at most `max_bytes` of `row_bytes` each.
fn split(rows: usize, row_bytes: usize, max_bytes: u64) -> Result<Vec<Range<usize>>, GpuError> {
    let per = (max_bytes / row_bytes.max(1) as u64) as usize;
    if per == 0 {
        return Err(GpuError::Shape(format!("one row of {row_bytes} bytes is larger than a binding ({max_bytes})")));
    }
    Ok((0..rows.div_ceil(per).max(1)).map(|i| i * per..((i + 1) * per).min(rows)).collect())
}

/// A ternary matrix in the kernels' layout (see `ternary.wgsl`).
pub struct TernaryWeights {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Words per row.
    pub(crate) words: usize,
    /// The tensor scale (1 when scales are per block).
    pub(crate) d: f32,
    /// Scales per row when they are per block.
    pub(crate) blocks: Option<usize>,
    pub(crate) parts: Vec<Part>,
}

impl TernaryWeights {
    pub fn upload(gpu: &Gpu, m: &TernaryMatrix, label: &str) -> Result<Self, GpuError> {
        let (rows, row_bytes) = (m.rows(), m.row_bytes());
        let blocks = m.block_scales().map(|_| m.cols() / TQ_BLOCK);
        let parts = split(rows, row_bytes, gpu.max_binding())?
            .into_iter()
            .map(|r| Part {
                data: gpu.upload(label, m.rows_codes(r.clone())),
                scales: match (m.block_scales(), blocks) {
                    (Some(ds), Some(b)) => gpu.upload(label, &ds[r.start * b..r.end * b]),
                    _ => gpu.buffer(label, 4),
                },
                rows: r,
            })
            .collect();
        Ok(Self { rows, cols: m.cols(), words: row_bytes / 4, d: m.tensor_scale().unwrap_or(1.0), blocks, parts })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Words of int8 activations per row it takes: its padded width over 4.
    pub fn input_words(&self) -> usize {
        4 * self.words
    }

    /// Buffers the rows are split into.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }
}

/// A dense (rows, cols) matrix as a file stores it.
#[derive(Debug, Clone, Copy)]
pub enum Dense<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    /// ggml's Q8_0 blocks: an f16 scale, then 32 int8.
    Q8_0(&'a [u8]),
}

/// How a [`DenseWeights`] is stored on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DenseKind {
    F32,
    F16,
    /// int8 words (rows, cols / 4) and f32 scales (rows, cols / 32).
    Q8_0,
}

/// A dense matrix (the output head).
pub struct DenseWeights {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) kind: DenseKind,
    pub(crate) parts: Vec<Part>,
}

impl DenseWeights {
    pub fn upload(gpu: &Gpu, w: Dense, rows: usize, cols: usize, label: &str) -> Result<Self, GpuError> {
        let (kind, row_bytes, len) = match w {
            Dense::F32(w) => (DenseKind::F32, cols * 4, w.len()),
            Dense::F16(w) => (DenseKind::F16, cols * 2, w.len()),
            Dense::Q8_0(w) => (DenseKind::Q8_0, cols, w.len() / Q8_0_BLOCK_BYTES * Q8_0_BLOCK),
        };
        let aligned = match kind {
            DenseKind::F32 => true,
            DenseKind::F16 => cols.is_multiple_of(2),
            DenseKind::Q8_0 => cols.is_multiple_of(Q8_0_BLOCK),
        };
        if len != rows * cols || !aligned {
            return Err(GpuError::Shape(format!("{label}: {len} elements of {kind:?} for ({rows}, {cols})")));
        }
        let parts = split(rows, row_bytes, gpu.max_binding())?
            .into_iter()
            .map(|r| {
                let (data, scales) = match w {
                    Dense::F32(w) => (gpu.upload(label, &w[r.start * cols..r.end * cols]), gpu.buffer(label, 4)),
                    Dense::F16(w) => (gpu.upload(label, &w[r.start * cols..r.end * cols]), gpu.buffer(label, 4)),
                    Dense::Q8_0(w) => {
                        let blocks = &w[r.start * cols / Q8_0_BLOCK * Q8_0_BLOCK_BYTES
                            ..r.end * cols / Q8_0_BLOCK * Q8_0_BLOCK_BYTES];
                        let mut qs = Vec::with_capacity(r.len() * cols);
                        let mut ds = Vec::with_capacity(r.len() * cols / Q8_0_BLOCK);
                        for b in blocks.chunks_exact(Q8_0_BLOCK_BYTES) {
                            ds.push(f16::from_le_bytes([b[0], b[1]]).to_f32());
                            qs.extend_from_slice(&b[2..]);
                        }
                        (gpu.upload(label, &qs), gpu.upload(label, &ds))
                    }
                };
                Part { rows: r, data, scales }
            })
            .collect();
        Ok(Self { rows, cols, kind, parts })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Buffers the rows are split into.
    pub fn parts(&self) -> usize {
        self.parts.len()
    }
}

#![forbid(unsafe_code)]
//! [`TernaryMatrix`]: ternary weights in the kernels' own layout, and the
//! repackers that build it from GGUF payloads (TQ2_0, TQ1_0, I2_S).
//!
//! # Layout
//!
//! Each row is stored on its own, padded to a whole number of
//! [`TERNARY_GROUP`] (128) columns with the code for zero. A group of 128
//! columns is 32 bytes; byte `j` of group `g` holds the 2-bit codes of
//! columns `128g + j`, `128g + 32 + j`, `128g + 64 + j`, `128g + 96 + j` in
//! bits 1:0, 3:2, 5:4, 7:6. Code = weight + 1 (0, 1, 2 → -1, 0, +1).
//!
//! Why this shape: one 32-byte load holds four runs of 32 *contiguous*
//! columns, each one shift-and-mask away from a vector of codes that lines
//! up with 32 contiguous int8 activations (one AVX2 register, two NEON or
//! simd128 registers). It is also exactly the layout of one half of a TQ2_0
//! block, so TQ2_0 repacks by copying.
//!
//! Scales: BitNet models have one scale per tensor, and then every row's dot
//! product is a single exact integer sum, rescaled once. A TQ payload whose
//! non-zero blocks disagree on `d` keeps one scale per [`TQ_BLOCK`] columns
//! of each row instead.

use crate::error::KernelError;
use half::f16;

/// Block length of TQ1_0 and TQ2_0 (ggml's `QK_K`).
pub const TQ_BLOCK: usize = 256;
/// Block length of I2_S (bitnet.cpp's x86 layout).
pub const I2S_BLOCK: usize = 128;
/// Columns per 32-byte group of the kernels' layout.
pub const TERNARY_GROUP: usize = 128;
/// Bytes per group of the kernels' layout.
pub const TERNARY_GROUP_BYTES: usize = TERNARY_GROUP / 4;

/// Code of a zero weight; a byte of four zeros is `0b01_01_01_01`.
const ZERO_CODE: u8 = 1;
const ZERO_BYTE: u8 = 0x55;

const TQ2_0_BYTES: usize = TQ_BLOCK / 4 + 2; // qs[64], d
const TQ1_0_QS: usize = 48;
const TQ1_0_QH: usize = 4;
const TQ1_0_BYTES: usize = TQ1_0_QS + TQ1_0_QH + 2; // qs[48], qh[4], d
/// I2_S tensors end with an f32 scale and pad it to 32 bytes.
const I2S_TRAILER: usize = 32;

/// How the integer row sums are turned back into floats.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scales {
    /// One scale for the whole tensor.
    Tensor(f32),
    /// One scale per [`TQ_BLOCK`] columns: (rows, cols / TQ_BLOCK).
    Blocks(Vec<f32>),
}

/// Ternary weights (rows, cols) in the kernels' layout (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct TernaryMatrix {
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Bytes per row: `cols` rounded up to [`TERNARY_GROUP`], over 4.
    pub(crate) row_bytes: usize,
    /// codes (rows, row_bytes)
    pub(crate) codes: Vec<u8>,
    pub(crate) scales: Scales,
}

impl TernaryMatrix {
    /// Number of output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes per packed row (a multiple of [`TERNARY_GROUP_BYTES`]).
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The packed codes of one row, `row_bytes()` long.
    pub fn row_codes(&self, row: usize) -> &[u8] {
        &self.codes[row * self.row_bytes..(row + 1) * self.row_bytes]
    }

    /// The packed codes of rows `rows`, one after another.
    pub fn rows_codes(&self, rows: std::ops::Range<usize>) -> &[u8] {
        &self.codes[rows.start * self.row_bytes..rows.end * self.row_bytes]
    }

    /// The per-block scales, (rows, cols / [`TQ_BLOCK`]), or `None` when
    /// the tensor has one scale.
    pub fn block_scales(&self) -> Option<&[f32]> {
        match &self.scales {
            Scales::Tensor(_) => None,
            Scales::Blocks(ds) => Some(ds),
        }
    }

    /// The single tensor scale, or `None` when scales vary per block.
    pub fn tensor_scale(&self) -> Option<f32> {
        match self.scales {
            Scales::Tensor(d) => Some(d),
            Scales::Blocks(_) => None,
        }
    }

    /// The weight at (row, col), in {-1, 0, 1}.
    pub fn weight(&self, row: usize, col: usize) -> i8 {
        assert!(row < self.rows && col < self.cols, "({row}, {col}) outside ({}, {})", self.rows, self.cols);
        get_code(self.row_codes(row), col) as i8 - 1
    }

    /// From plain values in {-1, 0, 1}, row-major (rows, cols), one scale for
    /// the whole tensor. Any `cols` is accepted.
    pub fn from_ternary(values: &[i8], rows: usize, cols: usize, scale: f32) -> Result<Self, KernelError> {
        if values.len() != rows * cols {
            return Err(KernelError::Shape(format!("{} values for a ({rows}, {cols}) tensor", values.len())));
        }
        let mut m = Self::zeros(rows, cols, Scales::Tensor(scale));
        for r in 0..rows {
            let row_codes = &mut m.codes[r * m.row_bytes..(r + 1) * m.row_bytes];
            for (c, &v) in values[r * cols..(r + 1) * cols].iter().enumerate() {
                if !(-1..=1).contains(&v) {
                    return Err(KernelError::Format(format!("value {v} at ({r}, {c}) is not ternary")));
                }
                set_code(row_codes, c, (v + 1) as u8);
            }
        }
        Ok(m)
    }

    /// Repack a GGUF TQ2_0 payload: `rows` rows of `cols` elements (ne0 = cols),
    /// blocks of 256 as `qs[64]`, `d: f16`.
    pub fn from_tq2_0(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, KernelError> {
        let blocks_per_row = tq_blocks_per_row("TQ2_0", bytes.len(), rows, cols, TQ2_0_BYTES)?;
        let mut m = Self::zeros(rows, cols, Scales::Tensor(0.0));
        let mut ds = Vec::with_capacity(rows * blocks_per_row);
        let mut active = Vec::with_capacity(rows * blocks_per_row);
        for (i, block) in bytes.chunks_exact(TQ2_0_BYTES).enumerate() {
            let (qs, d) = block.split_at(TQ_BLOCK / 4);
            // A code of 3 has both bits set: (b & b >> 1) keeps the low bit of each such pair.
            if let Some(b) = qs.iter().find(|&&b| b & (b >> 1) & 0x55 != 0) {
                return Err(KernelError::Format(format!("TQ2_0 block {i}: byte {b:#04x} holds code 3")));
            }
            // Each 32-byte half of qs is already one group of our layout.
            let (r, k) = (i / blocks_per_row, i % blocks_per_row);
            let start = r * m.row_bytes + k * TQ_BLOCK / 4;
            m.codes[start..start + TQ_BLOCK / 4].copy_from_slice(qs);
            ds.push(f16::from_le_bytes([d[0], d[1]]).to_f32());
            active.push(qs.iter().any(|&b| b != ZERO_BYTE));
        }
        m.scales = choose_scales(ds, &active);
        Ok(m)
    }

    /// Repack a GGUF TQ1_0 payload: `rows` rows of `cols` elements (ne0 = cols),
    /// blocks of 256 as `qs[48]`, `qh[4]`, `d: f16`.
    pub fn from_tq1_0(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, KernelError> {
        let blocks_per_row = tq_blocks_per_row("TQ1_0", bytes.len(), rows, cols, TQ1_0_BYTES)?;
        let mut m = Self::zeros(rows, cols, Scales::Tensor(0.0));
        let mut ds = Vec::with_capacity(rows * blocks_per_row);
        let mut active = Vec::with_capacity(rows * blocks_per_row);
        let mut codes = [ZERO_CODE; TQ_BLOCK];
        for (i, block) in bytes.chunks_exact(TQ1_0_BYTES).enumerate() {
            let (qs, rest) = block.split_at(TQ1_0_QS);
            let (qh, d) = rest.split_at(TQ1_0_QH);
            // qs[0..32]: 5 trits each, element m + 32n.
            for (m_, &b) in qs[..32].iter().enumerate() {
                for n in 0..5 {
                    codes[m_ + 32 * n] = tq1_trit(b, n);
                }
            }
            // qs[32..48]: 5 trits each, element 160 + m + 16n.
            for (m_, &b) in qs[32..].iter().enumerate() {
                for n in 0..5 {
                    codes[160 + m_ + 16 * n] = tq1_trit(b, n);
                }
            }
            // qh[0..4]: 4 trits each, element 240 + m + 4n.
            for (m_, &b) in qh.iter().enumerate() {
                for n in 0..4 {
                    codes[240 + m_ + 4 * n] = tq1_trit(b, n);
                }
            }
            let (r, k) = (i / blocks_per_row, i % blocks_per_row);
            let row_codes = &mut m.codes[r * m.row_bytes..(r + 1) * m.row_bytes];
            for (e, &code) in codes.iter().enumerate() {
                set_code(row_codes, k * TQ_BLOCK + e, code);
            }
            ds.push(f16::from_le_bytes([d[0], d[1]]).to_f32());
            active.push(codes.iter().any(|&c| c != ZERO_CODE));
        }
        m.scales = choose_scales(ds, &active);
        Ok(m)
    }

    /// Repack a bitnet.cpp I2_S payload: the (rows, cols) tensor flattened in
    /// blocks of 128 → 32 bytes, then one f32 scale and padding
    /// (`rows * cols / 4 + 32` bytes; a payload cut right after the scale is
    /// accepted too).
    pub fn from_i2_s(bytes: &[u8], rows: usize, cols: usize) -> Result<Self, KernelError> {
        if !cols.is_multiple_of(I2S_BLOCK) {
            return Err(KernelError::Shape(format!("I2_S needs cols a multiple of {I2S_BLOCK}, got {cols}")));
        }
        let packed = rows * cols / 4;
        if bytes.len() < packed + 4 || bytes.len() > packed + I2S_TRAILER {
            return Err(KernelError::Shape(format!(
                "I2_S ({rows}, {cols}) needs {} bytes, got {}",
                packed + I2S_TRAILER,
                bytes.len()
            )));
        }
        let scale = f32::from_le_bytes([bytes[packed], bytes[packed + 1], bytes[packed + 2], bytes[packed + 3]]);
        let mut m = Self::zeros(rows, cols, Scales::Tensor(scale));
        // Blocks never straddle rows (cols % 128 == 0) and row_bytes == cols / 4,
        // so block b of the tensor is group b of our flat code buffer.
        for (i, (src, dst)) in bytes[..packed].iter().zip(m.codes.iter_mut()).enumerate() {
            if src & (src >> 1) & 0x55 != 0 {
                return Err(KernelError::Format(format!("I2_S byte {i} ({src:#04x}) holds code 3")));
            }
            *dst = reverse_pairs(*src);
        }
        Ok(m)
    }

    /// Multiply every scale by `factor` (mainline llama.cpp's optional
    /// `blk.N.*.scale` tensors).
    pub fn scale_by(&mut self, factor: f32) {
        match &mut self.scales {
            Scales::Tensor(d) => *d *= factor,
            Scales::Blocks(ds) => ds.iter_mut().for_each(|d| *d *= factor),
        }
    }

    /// The dequantised row, `cols` long (tests and debugging).
    pub fn row_f32(&self, row: usize) -> Vec<f32> {
        let codes = self.row_codes(row);
        (0..self.cols)
            .map(|c| {
                let w = (get_code(codes, c) as i8 - 1) as f32;
                match &self.scales {
                    Scales::Tensor(d) => w * d,
                    Scales::Blocks(ds) => w * ds[row * (self.cols / TQ_BLOCK) + c / TQ_BLOCK],
                }
            })
            .collect()
    }

    /// Heap bytes held: packed codes plus scales.
    pub fn size_bytes(&self) -> usize {
        let scales = match &self.scales {
            Scales::Tensor(_) => 1,
            Scales::Blocks(ds) => ds.len(),
        };
        self.codes.len() + scales * std::mem::size_of::<f32>()
    }

    fn zeros(rows: usize, cols: usize, scales: Scales) -> Self {
        let row_bytes = cols.div_ceil(TERNARY_GROUP) * TERNARY_GROUP_BYTES;
        TernaryMatrix { rows, cols, row_bytes, codes: vec![ZERO_BYTE; rows * row_bytes], scales }
    }
}

/// Byte and bit position of column `c` inside a packed row.
#[inline]
fn locate(c: usize) -> (usize, u32) {
    let (g, e) = (c / TERNARY_GROUP, c % TERNARY_GROUP);
    (g * TERNARY_GROUP_BYTES + e % 32, 2 * (e / 32) as u32)
}

/// The 2-bit code of column `c` of a packed row.
#[inline]
pub(crate) fn get_code(row_codes: &[u8], c: usize) -> u8 {
    let (byte, shift) = locate(c);
    (row_codes[byte] >> shift) & 3
}

#[inline]
fn set_code(row_codes: &mut [u8], c: usize, code: u8) {
    let (byte, shift) = locate(c);
    row_codes[byte] = (row_codes[byte] & !(3 << shift)) | (code << shift);
}

/// Trit `n` (0 = most significant) of a TQ1_0 byte: the byte is a base-3
/// fraction scaled to 256, so multiplying by 3^n (mod 256) shifts trit `n`
/// to the top and `* 3 >> 8` reads it.
#[inline]
fn tq1_trit(b: u8, n: usize) -> u8 {
    const POW3: [u8; 5] = [1, 3, 9, 27, 81];
    ((b.wrapping_mul(POW3[n]) as u16 * 3) >> 8) as u8
}

/// I2_S puts the first 32-column run in bits 7:6; our layout puts it in 1:0.
#[inline]
fn reverse_pairs(b: u8) -> u8 {
    (b >> 6) | ((b >> 2) & 0x0c) | ((b << 2) & 0x30) | (b << 6)
}

fn tq_blocks_per_row(
    name: &str,
    len: usize,
    rows: usize,
    cols: usize,
    block_bytes: usize,
) -> Result<usize, KernelError> {
    if !cols.is_multiple_of(TQ_BLOCK) {
        return Err(KernelError::Shape(format!("{name} needs cols a multiple of {TQ_BLOCK}, got {cols}")));
    }
    let blocks_per_row = cols / TQ_BLOCK;
    let want = rows * blocks_per_row * block_bytes;
    if len != want {
        return Err(KernelError::Shape(format!("{name} ({rows}, {cols}) needs {want} bytes, got {len}")));
    }
    Ok(blocks_per_row)
}

/// One tensor scale when every block that holds a non-zero weight agrees on
/// `d` (BitNet exports; all-zero blocks may carry d = 0), else per-block.
fn choose_scales(mut ds: Vec<f32>, active: &[bool]) -> Scales {
    let mut shared: Option<f32> = None;
    let mut uniform = true;
    for (&d, _) in ds.iter().zip(active).filter(|(_, &a)| a) {
        match shared {
            None => shared = Some(d),
            Some(s) if s.to_bits() == d.to_bits() => {}
            Some(_) => uniform = false,
        }
    }
    if uniform {
        return Scales::Tensor(shared.unwrap_or(0.0));
    }
    // An all-zero block contributes 0 whatever its d, unless d is inf or NaN.
    for (d, _) in ds.iter_mut().zip(active).filter(|(_, &a)| !a) {
        *d = 0.0;
    }
    Scales::Blocks(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_the_layout() {
        let mut row = vec![ZERO_BYTE; 2 * TERNARY_GROUP_BYTES];
        for c in 0..2 * TERNARY_GROUP {
            set_code(&mut row, c, (c % 3) as u8);
        }
        for c in 0..2 * TERNARY_GROUP {
            assert_eq!(get_code(&row, c), (c % 3) as u8, "column {c}");
        }
    }

    #[test]
    fn reverse_pairs_swaps_2_bit_fields() {
        assert_eq!(reverse_pairs(0b00_01_10_11), 0b11_10_01_00);
        assert_eq!(reverse_pairs(ZERO_BYTE), ZERO_BYTE);
    }

    #[test]
    fn tq1_trits_decode_every_5_trit_number() {
        for v in 0u16..243 {
            let b = ((v * 256).div_ceil(243)) as u8;
            let mut digits = [0u8; 5];
            let mut x = v;
            for n in (0..5).rev() {
                digits[n] = (x % 3) as u8;
                x /= 3;
            }
            for (n, &want) in digits.iter().enumerate() {
                assert_eq!(tq1_trit(b, n), want, "value {v} trit {n}");
            }
        }
    }
}

//! Repacking GGUF ternary payloads (TQ2_0, TQ1_0, I2_S) into the kernels'
//! layout, checked element by element against decoders written here from the
//! format descriptions (REFERENCE.md §2), and against each other.

mod common;

use common::*;
use half::f16;
use tern_kernels::{ternary_gemv, KernelError, TernaryMatrix, I2S_BLOCK, TQ_BLOCK};

const TQ2_0_BLOCK_BYTES: usize = 66;
const TQ1_0_BLOCK_BYTES: usize = 54;

// ---- tiny packers: element -> bytes --------------------------------------

/// values (rows, cols) ternary, d (rows * cols / 256,) -> TQ2_0 bytes
fn pack_tq2_0(values: &[i8], d: &[f16]) -> Vec<u8> {
    let mut out = Vec::new();
    for (block, &db) in values.chunks(TQ_BLOCK).zip(d) {
        let mut qs = [0u8; 64];
        for (e, &v) in block.iter().enumerate() {
            let (g, l, m) = (e / 128, (e % 128) / 32, e % 32);
            qs[32 * g + m] |= ((v + 1) as u8) << (2 * l);
        }
        out.extend_from_slice(&qs);
        out.extend_from_slice(&db.to_le_bytes());
    }
    out
}

/// Base-3 digits, most significant first, stored as ceil(v * 256 / 243).
fn tq1_byte(trits: &[i8]) -> u8 {
    let mut v: u16 = 0;
    for &t in trits {
        v = v * 3 + (t + 1) as u16;
    }
    for _ in trits.len()..5 {
        v *= 3;
    }
    (v * 256).div_ceil(243) as u8
}

/// values (rows, cols) ternary, d (rows * cols / 256,) -> TQ1_0 bytes
fn pack_tq1_0(values: &[i8], d: &[f16]) -> Vec<u8> {
    let mut out = Vec::new();
    for (x, &db) in values.chunks(TQ_BLOCK).zip(d) {
        for m in 0..32 {
            let trits: Vec<i8> = (0..5).map(|n| x[m + 32 * n]).collect();
            out.push(tq1_byte(&trits));
        }
        for m in 0..16 {
            let trits: Vec<i8> = (0..5).map(|n| x[160 + m + 16 * n]).collect();
            out.push(tq1_byte(&trits));
        }
        for m in 0..4 {
            let trits: Vec<i8> = (0..4).map(|n| x[240 + m + 4 * n]).collect();
            out.push(tq1_byte(&trits));
        }
        out.extend_from_slice(&db.to_le_bytes());
    }
    out
}

/// values (rows, cols) ternary flattened -> I2_S bytes (n/4 packed, f32 scale, 28 pad)
fn pack_i2_s(values: &[i8], scale: f32) -> Vec<u8> {
    let mut out = vec![0u8; values.len() / 4];
    for (i, &v) in values.iter().enumerate() {
        let (b, j) = (i / 128, i % 128);
        out[32 * b + j % 32] |= ((v + 1) as u8) << (6 - 2 * (j / 32));
    }
    out.extend_from_slice(&scale.to_le_bytes());
    out.extend_from_slice(&[0u8; 28]);
    out
}

// ---- independent decoders: bytes -> (rows * cols,) f32 -------------------

fn decode_tq2_0(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    for block in bytes.chunks(TQ2_0_BLOCK_BYTES) {
        let d = f16::from_le_bytes([block[64], block[65]]).to_f32();
        let mut vals = [0f32; 256];
        for (byte_idx, &b) in block[..64].iter().enumerate() {
            let (g, m) = (byte_idx / 32, byte_idx % 32);
            for l in 0..4 {
                let code = (b >> (2 * l)) & 3;
                assert!(code < 3, "test data holds code 3");
                vals[128 * g + 32 * l + m] = (code as i8 - 1) as f32 * d;
            }
        }
        out.extend_from_slice(&vals);
    }
    out
}

/// 5 base-3 digits of a TQ1_0 byte, most significant first.
fn tq1_digits(b: u8) -> [u8; 5] {
    let mut v = (b as u32 * 243) >> 8;
    let mut digits = [0u8; 5];
    for n in (0..5).rev() {
        digits[n] = (v % 3) as u8;
        v /= 3;
    }
    digits
}

fn decode_tq1_0(bytes: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    for block in bytes.chunks(TQ1_0_BLOCK_BYTES) {
        let d = f16::from_le_bytes([block[52], block[53]]).to_f32();
        let mut vals = [f32::NAN; 256];
        let mut put = |e: usize, code: u8| vals[e] = (code as i8 - 1) as f32 * d;
        for (m, &b) in block[..32].iter().enumerate() {
            for (n, &t) in tq1_digits(b).iter().enumerate() {
                put(m + 32 * n, t);
            }
        }
        for (m, &b) in block[32..48].iter().enumerate() {
            for (n, &t) in tq1_digits(b).iter().enumerate() {
                put(160 + m + 16 * n, t);
            }
        }
        for (m, &b) in block[48..52].iter().enumerate() {
            for (n, &t) in tq1_digits(b).iter().take(4).enumerate() {
                put(240 + m + 4 * n, t);
            }
        }
        assert!(vals.iter().all(|v| !v.is_nan()), "decoder left an element unset");
        out.extend_from_slice(&vals);
    }
    out
}

fn decode_i2_s(bytes: &[u8], n: usize) -> Vec<f32> {
    let scale = f32::from_le_bytes(bytes[n / 4..n / 4 + 4].try_into().unwrap());
    (0..n)
        .map(|i| {
            let (b, j) = (i / 128, i % 128);
            let code = (bytes[32 * b + j % 32] >> (6 - 2 * (j / 32))) & 3;
            (code as i8 - 1) as f32 * scale
        })
        .collect()
}

fn all_rows(m: &TernaryMatrix) -> Vec<f32> {
    (0..m.rows()).flat_map(|r| m.row_f32(r)).collect()
}

// ---- tests ----------------------------------------------------------------

const TQ_SHAPES: [(usize, usize); 5] = [(1, 256), (3, 512), (17, 256), (2, 768), (33, 256)];
const I2S_SHAPES: [(usize, usize); 6] = [(1, 128), (3, 128), (17, 256), (2, 384), (33, 128), (5, 640)];

#[test]
fn tq2_0_repack_matches_spec_decoder() {
    let mut rng = rng(1);
    for &(rows, cols) in &TQ_SHAPES {
        let values = random_ternary(&mut rng, rows * cols);
        let d: Vec<f16> = (0..rows * cols / TQ_BLOCK).map(|_| f16::from_f32(rng_scale(&mut rng))).collect();
        let bytes = pack_tq2_0(&values, &d);
        let m = TernaryMatrix::from_tq2_0(&bytes, rows, cols).unwrap();
        assert_eq!((m.rows(), m.cols()), (rows, cols));
        assert_eq!(all_rows(&m), decode_tq2_0(&bytes), "({rows}, {cols})");
    }
}

#[test]
fn tq1_0_repack_matches_spec_decoder() {
    let mut rng = rng(2);
    for &(rows, cols) in &TQ_SHAPES {
        let values = random_ternary(&mut rng, rows * cols);
        let d: Vec<f16> = (0..rows * cols / TQ_BLOCK).map(|_| f16::from_f32(rng_scale(&mut rng))).collect();
        let bytes = pack_tq1_0(&values, &d);
        assert_eq!(bytes.len(), rows * cols / TQ_BLOCK * TQ1_0_BLOCK_BYTES);
        let m = TernaryMatrix::from_tq1_0(&bytes, rows, cols).unwrap();
        assert_eq!(all_rows(&m), decode_tq1_0(&bytes), "({rows}, {cols})");
    }
}

#[test]
fn i2_s_repack_matches_spec_decoder() {
    let mut rng = rng(3);
    for &(rows, cols) in &I2S_SHAPES {
        let values = random_ternary(&mut rng, rows * cols);
        let bytes = pack_i2_s(&values, 0.8125);
        assert_eq!(bytes.len(), rows * cols / 4 + 32);
        let m = TernaryMatrix::from_i2_s(&bytes, rows, cols).unwrap();
        assert_eq!(all_rows(&m), decode_i2_s(&bytes, rows * cols), "({rows}, {cols})");
        assert_eq!(m.tensor_scale(), Some(0.8125));
    }
}

#[test]
fn spec_decoders_invert_the_packers() {
    // Guards the test oracles themselves: pack then decode gives the values back.
    let mut rng = rng(4);
    let values = random_ternary(&mut rng, 2 * TQ_BLOCK);
    let want: Vec<f32> = values.iter().map(|&v| v as f32 * 0.5).collect();
    let d = [f16::from_f32(0.5); 2];
    assert_eq!(decode_tq2_0(&pack_tq2_0(&values, &d)), want);
    assert_eq!(decode_tq1_0(&pack_tq1_0(&values, &d)), want);
    assert_eq!(decode_i2_s(&pack_i2_s(&values, 0.5), values.len()), want);
}

#[test]
fn same_values_in_every_format_give_bit_identical_gemv() {
    let mut rng = rng(5);
    for &(rows, cols) in &TQ_SHAPES {
        let values = random_ternary(&mut rng, rows * cols);
        // An f16-representable scale, so TQ's f16 d and I2_S's f32 agree exactly.
        let scale = f16::from_f32(rng_scale(&mut rng));
        let d = vec![scale; rows * cols / TQ_BLOCK];
        let matrices = [
            TernaryMatrix::from_ternary(&values, rows, cols, scale.to_f32()).unwrap(),
            TernaryMatrix::from_tq2_0(&pack_tq2_0(&values, &d), rows, cols).unwrap(),
            TernaryMatrix::from_tq1_0(&pack_tq1_0(&values, &d), rows, cols).unwrap(),
            TernaryMatrix::from_i2_s(&pack_i2_s(&values, scale.to_f32()), rows, cols).unwrap(),
        ];
        let q = random_q(&mut rng, cols);
        let s = 3.7f32;
        let outs: Vec<Vec<u32>> = matrices
            .iter()
            .map(|m| {
                assert_eq!(m.tensor_scale(), Some(scale.to_f32()));
                let mut out = vec![0f32; rows];
                ternary_gemv(m, &q, s, &mut out);
                out.iter().map(|v| v.to_bits()).collect()
            })
            .collect();
        for (name, out) in ["TQ2_0", "TQ1_0", "I2_S"].iter().zip(&outs[1..]) {
            assert_eq!(out, &outs[0], "{name} vs from_ternary at ({rows}, {cols})");
        }
        assert_eq!(matrices[1], matrices[3], "TQ2_0 and I2_S repack to the same matrix");
        assert_eq!(matrices[2], matrices[3], "TQ1_0 and I2_S repack to the same matrix");
    }
}

#[test]
fn tq_blocks_of_zeros_with_zero_d_keep_one_tensor_scale() {
    let (rows, cols) = (3, 512);
    let mut values = random_ternary(&mut rng(6), rows * cols);
    // Blocks 1 and 4 are all zero and carry d = 0, as BitNet exports do.
    let mut d = vec![f16::from_f32(0.625); rows * cols / TQ_BLOCK];
    for b in [1, 4] {
        values[b * TQ_BLOCK..(b + 1) * TQ_BLOCK].fill(0);
        d[b] = f16::ZERO;
    }
    for m in [
        TernaryMatrix::from_tq2_0(&pack_tq2_0(&values, &d), rows, cols).unwrap(),
        TernaryMatrix::from_tq1_0(&pack_tq1_0(&values, &d), rows, cols).unwrap(),
    ] {
        assert_eq!(m.tensor_scale(), Some(0.625));
        assert_eq!(all_rows(&m), values.iter().map(|&v| v as f32 * 0.625).collect::<Vec<_>>());
    }
}

#[test]
fn tq_blocks_with_different_d_keep_per_block_scales() {
    let (rows, cols) = (17, 512);
    let mut rng = rng(7);
    let values = random_ternary(&mut rng, rows * cols);
    let d: Vec<f16> = (0..rows * cols / TQ_BLOCK).map(|_| f16::from_f32(rng_scale(&mut rng))).collect();
    let q = random_q(&mut rng, cols);
    let s = 11.25f32;
    for m in [
        TernaryMatrix::from_tq2_0(&pack_tq2_0(&values, &d), rows, cols).unwrap(),
        TernaryMatrix::from_tq1_0(&pack_tq1_0(&values, &d), rows, cols).unwrap(),
    ] {
        assert_eq!(m.tensor_scale(), None);
        let mut out = vec![0f32; rows];
        ternary_gemv(&m, &q, s, &mut out);
        // Per block: exact integer sum, times that block's d, summed in f32, over s.
        let blocks = cols / TQ_BLOCK;
        for r in 0..rows {
            let mut acc = 0f32;
            for b in 0..blocks {
                let dot: i32 =
                    (b * TQ_BLOCK..(b + 1) * TQ_BLOCK).map(|c| values[r * cols + c] as i32 * q[c] as i32).sum();
                acc += dot as f32 * d[r * blocks + b].to_f32();
            }
            assert_eq!(out[r].to_bits(), (acc / s).to_bits(), "row {r}");
        }
    }
}

#[test]
fn tq_formats_reject_cols_off_the_block() {
    for cols in [1, 128, 300] {
        let bytes = vec![0u8; 66];
        assert!(matches!(TernaryMatrix::from_tq2_0(&bytes, 1, cols), Err(KernelError::Shape(_))), "{cols}");
        assert!(matches!(TernaryMatrix::from_tq1_0(&bytes, 1, cols), Err(KernelError::Shape(_))), "{cols}");
    }
}

#[test]
fn tq_formats_reject_payloads_of_the_wrong_length() {
    let values = vec![0i8; 2 * TQ_BLOCK];
    let d = [f16::ONE; 2];
    let tq2 = pack_tq2_0(&values, &d);
    let tq1 = pack_tq1_0(&values, &d);
    assert!(matches!(TernaryMatrix::from_tq2_0(&tq2[1..], 1, 512), Err(KernelError::Shape(_))));
    assert!(matches!(TernaryMatrix::from_tq2_0(&tq2, 2, 512), Err(KernelError::Shape(_))));
    assert!(matches!(TernaryMatrix::from_tq1_0(&tq1[..53], 1, 512), Err(KernelError::Shape(_))));
    assert!(TernaryMatrix::from_tq1_0(&tq1, 2, 256).is_ok());
}

#[test]
fn i2_s_rejects_bad_shapes() {
    let bytes = pack_i2_s(&[0i8; 256], 1.0);
    assert!(matches!(TernaryMatrix::from_i2_s(&bytes, 4, 64), Err(KernelError::Shape(_))));
    assert!(matches!(TernaryMatrix::from_i2_s(&bytes, 1, 100), Err(KernelError::Shape(_))));
    assert!(matches!(TernaryMatrix::from_i2_s(&bytes[..64 + 3], 2, 128), Err(KernelError::Shape(_))));
    assert!(matches!(TernaryMatrix::from_i2_s(&bytes, 1, 128), Err(KernelError::Shape(_))));
    // Cut right after the scale is fine.
    assert!(TernaryMatrix::from_i2_s(&bytes[..64 + 4], 2, I2S_BLOCK).is_ok());
}

#[test]
fn code_3_is_a_format_error() {
    let mut tq2 = pack_tq2_0(&[0i8; TQ_BLOCK], &[f16::ONE]);
    tq2[17] |= 0b11 << 4;
    assert!(matches!(TernaryMatrix::from_tq2_0(&tq2, 1, TQ_BLOCK), Err(KernelError::Format(_))));
    let mut i2s = pack_i2_s(&[0i8; I2S_BLOCK], 1.0);
    i2s[31] = 0b11_01_01_01;
    assert!(matches!(TernaryMatrix::from_i2_s(&i2s, 1, I2S_BLOCK), Err(KernelError::Format(_))));
}

#[test]
fn from_ternary_rejects_non_ternary_values_and_wrong_lengths() {
    assert!(matches!(TernaryMatrix::from_ternary(&[0, 2, 1], 1, 3, 1.0), Err(KernelError::Format(_))));
    assert!(matches!(TernaryMatrix::from_ternary(&[0, 1], 1, 3, 1.0), Err(KernelError::Shape(_))));
    let err = TernaryMatrix::from_ternary(&[0, 1], 1, 3, 1.0).unwrap_err();
    assert!(err.to_string().contains("(1, 3)"), "{err}");
}

#[test]
fn from_ternary_keeps_every_value_at_awkward_sizes() {
    let mut rng = rng(8);
    for &rows in &AWKWARD_ROWS {
        for &cols in &AWKWARD_COLS {
            let values = random_ternary(&mut rng, rows * cols);
            let m = TernaryMatrix::from_ternary(&values, rows, cols, 2.0).unwrap();
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(m.weight(r, c), values[r * cols + c]);
                }
            }
            assert_eq!(all_rows(&m), values.iter().map(|&v| v as f32 * 2.0).collect::<Vec<_>>());
        }
    }
}

#[test]
fn scale_by_multiplies_tensor_and_block_scales() {
    let values = random_ternary(&mut rng(9), 2 * TQ_BLOCK);
    let mut t = TernaryMatrix::from_ternary(&values, 1, 2 * TQ_BLOCK, 0.5).unwrap();
    t.scale_by(3.0);
    assert_eq!(t.tensor_scale(), Some(1.5));
    let d = [f16::from_f32(0.5), f16::from_f32(0.25)];
    let mut b = TernaryMatrix::from_tq2_0(&pack_tq2_0(&values, &d), 1, 2 * TQ_BLOCK).unwrap();
    b.scale_by(4.0);
    let want: Vec<f32> =
        values.iter().enumerate().map(|(i, &v)| v as f32 * if i < TQ_BLOCK { 2.0 } else { 1.0 }).collect();
    assert_eq!(b.row_f32(0), want);
}

#[test]
fn size_bytes_counts_codes_and_scales() {
    let m = TernaryMatrix::from_ternary(&vec![0i8; 3 * 256], 3, 256, 1.0).unwrap();
    assert_eq!(m.size_bytes(), 3 * 64 + 4);
    // Rows pad to a whole 128-column group.
    let m = TernaryMatrix::from_ternary(&[1i8; 2 * 129], 2, 129, 1.0).unwrap();
    assert_eq!(m.row_bytes(), 64);
    assert_eq!(m.size_bytes(), 2 * 64 + 4);
}

fn rng_scale(rng: &mut rand::rngs::SmallRng) -> f32 {
    use rand::Rng;
    rng.random_range(0.01f32..2.0)
}

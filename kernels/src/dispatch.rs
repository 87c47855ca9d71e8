#![forbid(unsafe_code)]
//! The one place that chooses an implementation for each operation.
//!
//! On first use the CPU is probed once (`is_x86_feature_detected!` on
//! x86_64, `is_aarch64_feature_detected!` on aarch64; wasm32 decides at
//! compile time through `target_feature = "simd128"`), and the chosen
//! function pointers are cached in a [`OnceLock`]. Every slot starts as the
//! scalar reference, so a CPU or target without a variant still runs
//! everything.

use crate::reference;
use crate::ternary::TernaryMatrix;
use half::f16;
use std::ops::Range;
use std::sync::OnceLock;

/// Rows `rows` of W (rows, cols) @ q (n, cols) with scales s (n,) ->
/// out (rows.len(), n); see [`reference::ternary_rows`].
pub type TernaryRowsFn = fn(&TernaryMatrix, &[i8], &[f32], Range<usize>, &mut [f32]);
/// x (n,) -> q (n,), returns s.
pub type QuantizeFn = fn(&[f32], &mut [i8]) -> f32;
/// W (rows, cols) f16 @ x (cols,) -> out (rows,).
pub type MatvecF16Fn = fn(&[f16], usize, usize, &[f32], &mut [f32]);
/// W (rows, cols) f32 @ x (cols,) -> out (rows,).
pub type MatvecF32Fn = fn(&[f32], usize, usize, &[f32], &mut [f32]);
/// W (rows, cols) f16 @ two x (cols,) -> two out (rows,), W read once; each
/// out bit-identical to the same slot's [`MatvecF16Fn`] on its x.
pub type Matvec2F16Fn = fn(&[f16], usize, usize, [&[f32]; 2], [&mut [f32]; 2]);
/// W (rows, cols) Q8_0 bytes @ x (cols,) -> out (rows,).
pub type MatvecQ8Fn = fn(&[u8], usize, usize, &[f32], &mut [f32]);
/// x (n,), weight (n,), eps -> out (n,).
pub type RmsnormFn = fn(&[f32], &[f32], f32, &mut [f32]);
/// q, kv, n_heads, n_kv, head_dim, scratch, out.
pub type AttentionFn = fn(&[f32], usize, reference::KvBlocks, usize, usize, usize, &mut [f32], &mut [f32]);

/// The chosen implementation of each dispatched operation.
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    /// Instruction set of the ternary products: "reference", "avx2", ...
    pub ternary_isa: &'static str,
    pub ternary_rows: TernaryRowsFn,
    pub quantize_row_i8: QuantizeFn,
    pub matvec_f16: MatvecF16Fn,
    /// Two vectors at once where a variant has it (it must match
    /// `matvec_f16` bit for bit); otherwise `matvec_f16` twice.
    pub matvec2_f16: Option<Matvec2F16Fn>,
    pub matvec_f32: MatvecF32Fn,
    pub matvec_q8_0: MatvecQ8Fn,
    pub rmsnorm: RmsnormFn,
    pub attention: AttentionFn,
}

impl Kernels {
    /// Every slot on the scalar reference.
    pub const REFERENCE: Kernels = Kernels {
        ternary_isa: "reference",
        ternary_rows: reference::ternary_rows,
        quantize_row_i8: reference::quantize_row_i8,
        matvec_f16: reference::matvec_f16,
        matvec2_f16: None,
        matvec_f32: reference::matvec_f32,
        matvec_q8_0: reference::matvec_q8_0,
        rmsnorm: reference::rmsnorm,
        attention: reference::attention,
    };

    fn detect() -> Kernels {
        #[allow(unused_mut)]
        let mut k = Kernels::REFERENCE;
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            use crate::arch::x86_64 as v;
            k.ternary_isa = "avx2";
            k.ternary_rows = v::ternary_rows;
            k.quantize_row_i8 = v::quantize_row_i8;
            if std::is_x86_feature_detected!("fma") && std::is_x86_feature_detected!("f16c") {
                k.matvec_f16 = v::matvec_f16;
                k.matvec2_f16 = Some(v::matvec2_f16);
                k.matvec_f32 = v::matvec_f32;
                k.matvec_q8_0 = v::matvec_q8_0;
                k.attention = v::attention;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            // NEON is part of every aarch64 target; dotprod (ARMv8.4, optional from 8.2) is not.
            use crate::arch::aarch64 as v;
            k.ternary_isa = "neon";
            k.ternary_rows = v::ternary_rows;
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                k.ternary_isa = "neon-dotprod";
                k.ternary_rows = v::ternary_rows_dotprod;
            }
            k.matvec_f16 = v::matvec_f16;
            k.matvec_f32 = v::matvec_f32;
            k.matvec_q8_0 = v::matvec_q8_0;
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        {
            use crate::arch::wasm32 as v;
            k.ternary_isa = "simd128";
            k.ternary_rows = v::ternary_rows;
            k.matvec_f32 = v::matvec_f32;
            k.matvec_q8_0 = v::matvec_q8_0;
        }
        k
    }
}

/// The implementations this process uses, chosen on first call.
pub fn kernels() -> &'static Kernels {
    static CHOSEN: OnceLock<Kernels> = OnceLock::new();
    CHOSEN.get_or_init(Kernels::detect)
}

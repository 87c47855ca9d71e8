#![forbid(unsafe_code)]
//! The one place that chooses an implementation for each operation.
//!
//! [`VARIANTS`] lists every set of implementations this build has, with
//! what each needs of the CPU; dispatch, the kernel tests and `tern bench
//! --kernels` all read it, so adding a variant is one entry. On first use
//! the CPU is probed once (`is_x86_feature_detected!` on x86_64,
//! `is_aarch64_feature_detected!` on aarch64; wasm32 decides at compile time
//! through `target_feature = "simd128"`) and the last variant it can run is
//! kept. Every slot a variant does not override is the scalar reference, so
//! a CPU or target without a variant still runs everything.

use crate::reference;
use crate::ternary::TernaryMatrix;
use half::f16;
use std::ops::Range;
use std::sync::OnceLock;

/// Rows `rows` of W (rows, cols) @ q (n, cols) with scales s (n,) ->
/// out (rows.len(), n); see [`reference::ternary_rows`].
pub type TernaryRowsFn = fn(&TernaryMatrix, &[i8], &[f32], Range<usize>, &mut [f32]);
/// Several matrices of one width against q (n, cols), s (n,): each
/// (W, out (n, W's rows)) gets W @ q, bit-identical to the same products
/// through [`TernaryRowsFn`]; returns false, touching nothing, for
/// products the variant leaves to `ternary_rows`.
pub type TernaryGemmFn = fn(&mut [(&TernaryMatrix, &mut [f32])], &[i8], &[f32]) -> bool;
/// x (n,) -> q (n,), returns s.
pub type QuantizeFn = fn(&[f32], &mut [i8]) -> f32;
/// W (rows, cols) f16 @ x (cols,) -> out (rows,).
pub type MatvecF16Fn = fn(&[f16], usize, usize, &[f32], &mut [f32]);
/// W (rows, cols) f32 @ x (cols,) -> out (rows,).
pub type MatvecF32Fn = fn(&[f32], usize, usize, &[f32], &mut [f32]);
/// W (rows, cols) f16 @ two x (cols,) -> two out (rows,), W read once; each
/// out bit-identical to the same slot's [`MatvecF16Fn`] on its x.
pub type Matvec2F16Fn = fn(&[f16], usize, usize, [&[f32]; 2], [&mut [f32]; 2]);
/// W (rows, cols) f16 @ x (n, cols) -> out (n, rows), each row
/// bit-identical to the same variant's [`MatvecF16Fn`] on its vector.
pub type MatmulF16Fn = fn(&[f16], usize, usize, &[f32], &mut [f32]);
/// W (rows, cols) Q8_0 bytes @ x (cols,) -> out (rows,).
pub type MatvecQ8Fn = fn(&[u8], usize, usize, &[f32], &mut [f32]);
/// x (n,), weight (n,), eps -> out (n,).
pub type RmsnormFn = fn(&[f32], &[f32], f32, &mut [f32]);
/// q, kv, n_heads, n_kv, head_dim, scratch, out.
pub type AttentionFn = fn(&[f32], usize, reference::KvBlocks, usize, usize, usize, &mut [f32], &mut [f32]);

/// The implementation of each dispatched operation in one variant.
#[derive(Debug, Clone, Copy)]
pub struct Kernels {
    pub ternary_rows: TernaryRowsFn,
    /// The batched product as a whole (its own split over the pool), where
    /// a variant has one; otherwise `ternary_rows` over row ranges.
    pub ternary_gemm: Option<TernaryGemmFn>,
    pub quantize_row_i8: QuantizeFn,
    pub matvec_f16: MatvecF16Fn,
    /// Two vectors at once where a variant has it (it must match
    /// `matvec_f16` bit for bit); otherwise `matvec_f16` twice.
    pub matvec2_f16: Option<Matvec2F16Fn>,
    /// Many vectors at once, blocked over rows and vectors, where a variant
    /// has it (it must match `matvec_f16` bit for bit); otherwise
    /// `matvec2_f16` or `matvec_f16` per vector.
    pub matmul_f16: Option<MatmulF16Fn>,
    pub matvec_f32: MatvecF32Fn,
    pub matvec_q8_0: MatvecQ8Fn,
    pub rmsnorm: RmsnormFn,
    pub attention: AttentionFn,
}

impl Kernels {
    /// Every slot on the scalar reference.
    pub const REFERENCE: Kernels = Kernels {
        ternary_rows: reference::ternary_rows,
        ternary_gemm: None,
        quantize_row_i8: reference::quantize_row_i8,
        matvec_f16: reference::matvec_f16,
        matvec2_f16: None,
        matmul_f16: None,
        matvec_f32: reference::matvec_f32,
        matvec_q8_0: reference::matvec_q8_0,
        rmsnorm: reference::rmsnorm,
        attention: reference::attention,
    };
}

/// One set of implementations this build has.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// `reference`, `avx2`, `avx-vnni`, `avx512`, `neon`, `neon-dotprod`, `simd128`.
    pub name: &'static str,
    /// What it needs of the CPU, in words (for SKIP lines).
    pub needs: &'static str,
    /// Whether this CPU can run it.
    pub available: fn() -> bool,
    pub kernels: Kernels,
}

impl Variant {
    pub fn available(&self) -> bool {
        (self.available)()
    }
}

fn always() -> bool {
    true
}

/// Every variant of this build, the scalar reference first; dispatch keeps
/// the last one the CPU can run.
pub const VARIANTS: &[Variant] = &[
    Variant { name: "reference", needs: "nothing", available: always, kernels: Kernels::REFERENCE },
    #[cfg(target_arch = "x86_64")]
    Variant { name: "avx2", needs: "AVX2, FMA and F16C", available: crate::arch::x86_64::has_fma_f16c, kernels: AVX2 },
    #[cfg(target_arch = "x86_64")]
    Variant {
        name: "avx-vnni",
        needs: "AVX-VNNI, AVX2, FMA and F16C",
        available: crate::arch::x86_64::has_avx_vnni_fma_f16c,
        kernels: Kernels { ternary_rows: crate::arch::x86_64::ternary_rows_vnni, ..AVX2 },
    },
    #[cfg(target_arch = "x86_64")]
    Variant {
        name: "avx512",
        needs: "AVX-512 (F, BW, VL) with VNNI, AVX2, FMA and F16C",
        available: crate::arch::x86_64_avx512::available,
        kernels: AVX512,
    },
    #[cfg(target_arch = "x86_64")]
    Variant {
        name: "amx",
        needs: "AMX-TILE and AMX-INT8 (granted by the OS), and what avx512 needs",
        available: crate::arch::x86_64_amx::available,
        kernels: Kernels { ternary_gemm: Some(crate::arch::x86_64_amx::ternary_gemm_many), ..AVX512 },
    },
    // NEON is part of every aarch64 target; dotprod (ARMv8.4, optional from 8.2) is not.
    #[cfg(target_arch = "aarch64")]
    Variant { name: "neon", needs: "NEON", available: always, kernels: NEON },
    #[cfg(target_arch = "aarch64")]
    Variant {
        name: "neon-dotprod",
        needs: "the dot-product extension",
        available: crate::arch::aarch64::has_dotprod,
        kernels: Kernels { ternary_rows: crate::arch::aarch64::ternary_rows_dotprod, ..NEON },
    },
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Variant {
        name: "simd128",
        needs: "simd128",
        available: always,
        kernels: {
            use crate::arch::wasm32 as v;
            Kernels {
                ternary_rows: v::ternary_rows,
                matvec_f16: v::matvec_f16,
                matvec_f32: v::matvec_f32,
                matvec_q8_0: v::matvec_q8_0,
                attention: v::attention,
                ..Kernels::REFERENCE
            }
        },
    },
];

#[cfg(target_arch = "x86_64")]
const AVX2: Kernels = {
    use crate::arch::x86_64 as v;
    Kernels {
        ternary_rows: v::ternary_rows,
        quantize_row_i8: v::quantize_row_i8,
        matvec_f16: v::matvec_f16,
        matvec2_f16: Some(v::matvec2_f16),
        matvec_f32: v::matvec_f32,
        matvec_q8_0: v::matvec_q8_0,
        attention: v::attention,
        ..Kernels::REFERENCE
    }
};

#[cfg(target_arch = "x86_64")]
const AVX512: Kernels = {
    use crate::arch::x86_64_avx512 as v;
    Kernels {
        ternary_rows: v::ternary_rows,
        matvec_f16: v::matvec_f16,
        matvec2_f16: None,
        matmul_f16: Some(v::matmul_f16),
        ..AVX2
    }
};

#[cfg(target_arch = "aarch64")]
const NEON: Kernels = {
    use crate::arch::aarch64 as v;
    Kernels {
        ternary_rows: v::ternary_rows,
        matvec_f16: v::matvec_f16,
        matvec_f32: v::matvec_f32,
        matvec_q8_0: v::matvec_q8_0,
        ..Kernels::REFERENCE
    }
};

/// The environment variable that names the variant to use instead of the
/// fastest (`reference`, `avx2`, ...; one this CPU runs).
pub const VARIANT_ENV: &str = "TERN_KERNELS";

/// The variant this process uses, chosen on first call: the one
/// [`VARIANT_ENV`] names if this CPU runs it, else the last one it runs.
pub fn chosen() -> &'static Variant {
    static CHOSEN: OnceLock<&'static Variant> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        named_variant().ok().flatten().or_else(|| VARIANTS.iter().rev().find(|v| v.available())).unwrap_or(&VARIANTS[0])
    })
}

/// Whether [`VARIANT_ENV`], if set, names a variant this CPU runs; the
/// error says which it runs. Programs check it at start, since
/// [`chosen`] falls back to the fastest.
pub fn check_variant_env() -> Result<(), String> {
    named_variant().map(|_| ())
}

/// The variant [`VARIANT_ENV`] names, if it is set.
fn named_variant() -> Result<Option<&'static Variant>, String> {
    let Ok(name) = std::env::var(VARIANT_ENV) else { return Ok(None) };
    let runnable = || VARIANTS.iter().filter(|v| v.available()).map(|v| v.name).collect::<Vec<_>>().join(", ");
    match VARIANTS.iter().find(|v| v.name == name) {
        Some(v) if v.available() => Ok(Some(v)),
        Some(v) => Err(format!("{VARIANT_ENV}={name}: this CPU lacks {}; it runs {}", v.needs, runnable())),
        None => Err(format!("{VARIANT_ENV}={name}: no such kernel variant; this CPU runs {}", runnable())),
    }
}

/// The implementations this process uses.
pub fn kernels() -> &'static Kernels {
    &chosen().kernels
}

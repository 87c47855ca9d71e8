//! Per-architecture variants. Each keeps the name and signature of its
//! [`crate::reference`] counterpart and is tested against it; only
//! [`crate::dispatch`] decides which one runs. The ternary products of
//! every vector instruction set share one row and tile loop ([`driver`]);
//! each supplies only its inner group sums. AMX's tile unit takes a whole
//! batched product instead (the `ternary_gemm` slot), since its unit of
//! work is 16 rows by 16 tokens.
//!
//! | module | ternary products | dense products | chosen |
//! |---|---|---|---|
//! | `x86_64` | AVX2, or AVX-VNNI (`vpdpbusd` on 256 bits) | AVX2 + FMA + F16C | at run time |
//! | `x86_64_avx512` | AVX-512 VNNI (`vpdpbusd`) | F16 blocked over rows and vectors; the rest as `x86_64` | at run time |
//! | `x86_64_amx` | 6 tokens or more: AMX tiles (`tdpbusd`); fewer: as `x86_64_avx512` | as `x86_64_avx512` | at run time (and the OS's grant) |
//! | `aarch64` | NEON, or NEON + dotprod (`sdot`) | NEON (f16, f32, Q8_0) | at run time (dotprod) |
//! | `wasm32` | simd128 | simd128 (f16, f32, Q8_0, attention) | at compile time (`+simd128`) |
//!
//! Whatever has no variant for the running target stays on the reference.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
// wasm32 without simd128 has no variant, so nothing drives.
#[cfg(not(all(target_arch = "wasm32", not(target_feature = "simd128"))))]
pub(crate) mod driver;
#[cfg(target_arch = "wasm32")]
pub mod wasm32;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub mod x86_64_amx;
#[cfg(target_arch = "x86_64")]
pub mod x86_64_avx512;

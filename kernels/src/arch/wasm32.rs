#![forbid(unsafe_code)]
//! wasm simd128 variants (none yet: every operation runs the scalar
//! reference). simd128 is a compile-time choice on wasm, so these will be
//! selected by `cfg(target_feature = "simd128")` in [`crate::dispatch`].

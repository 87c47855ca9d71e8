//! Per-architecture variants. Each keeps the name and signature of its
//! [`crate::reference`] counterpart and is tested against it; only
//! [`crate::dispatch`] decides which one runs.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "wasm32")]
pub mod wasm32;
#[cfg(target_arch = "x86_64")]
pub mod x86_64;

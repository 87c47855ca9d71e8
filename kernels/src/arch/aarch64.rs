#![forbid(unsafe_code)]
//! NEON variants (none yet: every operation runs the scalar reference).
//!
//! The ternary layout was chosen for them too: a 32-byte group is two
//! 16-byte loads, and `vdotq_s32` on codes (0..2) against int8 activations
//! gives the same integer sums as the AVX2 `maddubs` path.

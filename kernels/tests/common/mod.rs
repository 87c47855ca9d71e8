//! Helpers shared by the integration tests: seeded randomness, naive
//! references in wider arithmetic, error metrics.
#![allow(dead_code)]

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tern_kernels::dispatch::{Variant, VARIANTS};

/// Awkward sizes: 1, 3, 17, 33, around the 128-column group and 256 block.
pub const AWKWARD_COLS: [usize; 11] = [1, 3, 17, 33, 127, 128, 129, 255, 256, 257, 385];
pub const AWKWARD_ROWS: [usize; 4] = [1, 3, 17, 33];

pub fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// values (n,) uniformly in {-1, 0, 1}
pub fn random_ternary(rng: &mut SmallRng, n: usize) -> Vec<i8> {
    (0..n).map(|_| rng.random_range(-1..=1)).collect()
}

/// q (n,) over the whole int8 range, extremes included.
pub fn random_q(rng: &mut SmallRng, n: usize) -> Vec<i8> {
    (0..n)
        .map(|i| match i % 11 {
            0 => -128,
            1 => 127,
            _ => rng.random_range(-128..=127),
        })
        .collect()
}

/// x (n,) uniform in [-amp, amp)
pub fn random_f32(rng: &mut SmallRng, n: usize, amp: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-amp..amp)).collect()
}

/// Σ (a-b)² / Σ b², the normalised MSE of `got` against `want`.
pub fn nmse(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let err: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
    let norm: f64 = want.iter().map(|w| w * w).sum();
    if norm == 0.0 {
        err
    } else {
        err / norm
    }
}

/// Σ_c w[r,c]·q[c] in i32 for every row: W (rows, cols) @ q (cols,) -> (rows,)
pub fn naive_ternary_dots(values: &[i8], rows: usize, cols: usize, q: &[i8]) -> Vec<i32> {
    (0..rows).map(|r| (0..cols).map(|c| values[r * cols + c] as i32 * q[c] as i32).sum()).collect()
}

/// The variants of this build this CPU can run, from the one list dispatch
/// uses; prints a SKIP line for each of the others.
pub fn runnable_variants(test: &str) -> Vec<&'static Variant> {
    VARIANTS
        .iter()
        .filter(|v| {
            if !v.available() {
                eprintln!("SKIP {test} on {}: this CPU lacks {}", v.name, v.needs);
            }
            v.available()
        })
        .collect()
}

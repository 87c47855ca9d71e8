#![allow(unsafe_code)]
//! The loop every instruction set's ternary product shares: tokens in tiles
//! of up to [`TILE`], each row of the tile's tokens, the scalar tail past the
//! last whole group, and the rescale by the tensor's or each block's scale.
//! An instruction set supplies only its inner kernel ([`TileKernel`]): the
//! integer sums over whole 128-column groups of one packed row.
//!
//! Everything stays integer until the one rescale per row (or per block),
//! in the reference's order, which makes every variant bit-identical to
//! [`crate::reference::ternary_rows`].

use std::ops::Range;

use crate::reference::check_ternary_rows;
use crate::ternary::{get_code, Scales, TernaryMatrix, TERNARY_GROUP, TQ_BLOCK};

/// Tokens that share one unpacked group.
pub(crate) const TILE: usize = 4;
/// Groups per TQ block (per-block scales).
const GROUPS_PER_BLOCK: usize = TQ_BLOCK / TERNARY_GROUP;

/// An instruction set's inner kernel.
pub(crate) trait TileKernel {
    /// Its sums are Σ code·q, codes being weight + 1 (as AVX2's unsigned ×
    /// signed multiply needs), rather than Σ w·q: the driver takes Σ q back
    /// out.
    const SUMS_CODES: bool;

    /// Rows `rows` of W for the tile's T tokens into `out` (rows.len(), n):
    /// [`Tile::rows`] with this kernel's group sums, compiled with its
    /// target features.
    ///
    /// # Safety
    /// The CPU has the kernel's target features.
    unsafe fn rows<const T: usize>(tile: &Tile, rows: Range<usize>, out: &mut [f32]);
}

/// Rows `rows` of W (rows, cols) @ q (n, cols) with scales s (n,) ->
/// out (rows.len(), n), with kernel `K`'s group sums.
///
/// # Safety
/// The CPU has `K`'s target features.
pub(crate) unsafe fn ternary_rows<K: TileKernel>(
    w: &TernaryMatrix,
    q: &[i8],
    s: &[f32],
    rows: Range<usize>,
    out: &mut [f32],
) {
    check_ternary_rows(w, q, s, &rows, out);
    let n = s.len();
    let full = w.cols / TERNARY_GROUP;
    // gsum (n, full): Σ q of each token over each whole group, the offset
    // that sums of codes carry.
    let gsum: Option<Vec<i32>> = K::SUMS_CODES.then(|| {
        (0..n)
            .flat_map(|t| {
                q[t * w.cols..t * w.cols + full * TERNARY_GROUP]
                    .chunks_exact(TERNARY_GROUP)
                    .map(|g| g.iter().map(|&v| v as i32).sum::<i32>())
            })
            .collect()
    });
    for t0 in (0..n).step_by(TILE) {
        let tile = Tile { w, q, s, gsum: gsum.as_deref(), t0, full };
        // SAFETY: the caller guarantees the kernel's features.
        unsafe {
            match (n - t0).min(TILE) {
                4 => K::rows::<4>(&tile, rows.clone(), out),
                3 => K::rows::<3>(&tile, rows.clone(), out),
                2 => K::rows::<2>(&tile, rows.clone(), out),
                _ => K::rows::<1>(&tile, rows.clone(), out),
            }
        }
    }
}

/// Tokens `t0..t0 + T` of one [`ternary_rows`] call.
pub(crate) struct Tile<'a> {
    w: &'a TernaryMatrix,
    q: &'a [i8],
    s: &'a [f32],
    /// gsum (n, full), for kernels whose sums carry codes.
    gsum: Option<&'a [i32]>,
    t0: usize,
    /// Whole groups per row; columns past them are the scalar tail.
    full: usize,
}

impl Tile<'_> {
    /// The row loop and rescale; `dots` gives the kernel's sums over a
    /// range of whole groups of one packed row for the tile's T tokens.
    /// Inlined into each kernel's `#[target_feature]` function, so `dots`
    /// inlines too.
    #[inline(always)]
    pub fn rows<const T: usize>(
        &self,
        rows: Range<usize>,
        out: &mut [f32],
        dots: impl Fn(&[u8], &[&[i8]; T], Range<usize>) -> [i32; T],
    ) {
        let (w, n, t0, full) = (self.w, self.s.len(), self.t0, self.full);
        let qt: [&[i8]; T] = std::array::from_fn(|t| &self.q[(t0 + t) * w.cols..(t0 + t + 1) * w.cols]);
        // Σ q of token t over `groups`, which sums of codes carry.
        let offset = |t: usize, groups: Range<usize>| -> i32 {
            self.gsum.map_or(0, |gs| gs[(t0 + t) * full..(t0 + t + 1) * full][groups].iter().sum())
        };
        let whole: [i32; T] = std::array::from_fn(|t| offset(t, 0..full));
        for (i, r) in rows.enumerate() {
            let codes = w.row_codes(r);
            let o = &mut out[i * n + t0..i * n + t0 + T];
            match &w.scales {
                Scales::Tensor(d) => {
                    let dots = dots(codes, &qt, 0..full);
                    for t in 0..T {
                        let tail: i32 = (full * TERNARY_GROUP..w.cols)
                            .map(|c| (get_code(codes, c) as i32 - 1) * qt[t][c] as i32)
                            .sum();
                        o[t] = (dots[t] - whole[t] + tail) as f32 * d / self.s[t0 + t];
                    }
                }
                Scales::Blocks(ds) => {
                    // Only TQ payloads have block scales: cols % 256 == 0, no tail.
                    let blocks = w.cols / TQ_BLOCK;
                    let mut acc = [0.0f32; T];
                    for b in 0..blocks {
                        let g = b * GROUPS_PER_BLOCK..(b + 1) * GROUPS_PER_BLOCK;
                        let dots = dots(codes, &qt, g.clone());
                        for t in 0..T {
                            acc[t] += (dots[t] - offset(t, g.clone())) as f32 * ds[r * blocks + b];
                        }
                    }
                    for t in 0..T {
                        o[t] = acc[t] / self.s[t0 + t];
                    }
                }
            }
        }
    }
}

#![allow(unsafe_code)]
//! The loop every instruction set's ternary product shares: rows in passes
//! of about an L1's bytes, tokens in tiles of up to [`TileKernel::TILE`]
//! over each pass, each row of the tile's tokens, the scalar tail past the
//! last whole group, and the rescale by the tensor's or each block's scale.
//! An instruction set supplies only its inner kernel ([`TileKernel`]): the
//! integer sums over whole 128-column groups of one packed row, and the
//! order it reads the activations in.
//!
//! Everything stays integer until the one rescale per row (or per block),
//! in the reference's order, which makes every variant bit-identical to
//! [`crate::reference::ternary_rows`].

use std::ops::Range;

use crate::reference::check_ternary_rows;
use crate::ternary::{get_code, Scales, TernaryMatrix, TERNARY_GROUP, TQ_BLOCK};

/// Bytes of packed rows one pass covers before every tile of tokens has
/// used them: a part of L2, so a batch reads each weight from memory once
/// and from L2 for every other tile.
const ROWS_BYTES_PER_PASS: usize = 256 << 10;
/// Bytes of one tile's activations a kernel reads over and over, row after
/// row of a pass: a part of L1, so those loads (far more than the loads of
/// codes) hit it. Wider rows are taken in column chunks of this size.
const TILE_Q_BYTES: usize = 32 << 10;
/// Groups per TQ block (per-block scales).
const GROUPS_PER_BLOCK: usize = TQ_BLOCK / TERNARY_GROUP;

/// An instruction set's inner kernel.
pub(crate) trait TileKernel {
    /// Its sums are Σ code·q, codes being weight + 1 (as AVX2's unsigned ×
    /// signed multiply needs), rather than Σ w·q: the driver takes Σ q back
    /// out.
    const SUMS_CODES: bool;
    /// Tokens that share one unpacked group (at most 8).
    const TILE: usize = 4;

    /// The activations in the order this kernel's sums read them, if not
    /// q's own (n rows of `cols`): built once per call, the tail past the
    /// last whole group left in place.
    fn arrange(_q: &[i8], _cols: usize) -> Option<Lines> {
        None
    }

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
    let arranged = K::arrange(q, w.cols);
    let qk = arranged.as_ref().map_or(q, |a| a.as_slice());
    // Rows in passes of part of an L2, every tile of tokens over each pass
    // before the next; an even count, for kernels that take rows in pairs.
    let per_pass = (ROWS_BYTES_PER_PASS / w.row_bytes.max(1)).next_multiple_of(2).max(2);
    let first = rows.start;
    let mut start = first;
    while start < rows.end {
        let pass = start..(start + per_pass).min(rows.end);
        let part = &mut out[(pass.start - first) * n..(pass.end - first) * n];
        for t0 in (0..n).step_by(K::TILE) {
            let tile = Tile { w, q, qk, s, gsum: gsum.as_deref(), t0, full };
            // SAFETY: the caller guarantees the kernel's features.
            unsafe {
                match (n - t0).min(K::TILE) {
                    8 => K::rows::<8>(&tile, pass.clone(), part),
                    7 => K::rows::<7>(&tile, pass.clone(), part),
                    6 => K::rows::<6>(&tile, pass.clone(), part),
                    5 => K::rows::<5>(&tile, pass.clone(), part),
                    4 => K::rows::<4>(&tile, pass.clone(), part),
                    3 => K::rows::<3>(&tile, pass.clone(), part),
                    2 => K::rows::<2>(&tile, pass.clone(), part),
                    _ => K::rows::<1>(&tile, pass.clone(), part),
                }
            }
        }
        start = pass.end;
    }
}

/// A cache line of bytes.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([i8; 64]);

/// Bytes that start on a cache line, so 64-byte loads at multiples of 64
/// never straddle two lines.
pub(crate) struct Lines {
    lines: Vec<Line>,
    len: usize,
}

impl Lines {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Lines {
        Lines { lines: vec![Line([0; 64]); len.div_ceil(64)], len }
    }

    /// A copy of `bytes`.
    pub fn copy_of(bytes: &[i8]) -> Lines {
        let mut lines = Lines::zeroed(bytes.len());
        lines.as_mut_slice().copy_from_slice(bytes);
        lines
    }

    pub fn as_slice(&self) -> &[i8] {
        // SAFETY: `lines` holds at least `len` initialised i8 in one
        // allocation (Line is repr(C) over [i8; 64], no padding).
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<i8>(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [i8] {
        // SAFETY: as in `as_slice`, borrowed mutably once.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<i8>(), self.len) }
    }
}

/// Tokens `t0..t0 + T` of one [`ternary_rows`] call.
pub(crate) struct Tile<'a> {
    w: &'a TernaryMatrix,
    q: &'a [i8],
    /// q as the kernel reads it ([`TileKernel::arrange`]).
    qk: &'a [i8],
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
        self.row_blocks::<T, 1>(rows, out, |codes, q, groups| [dots(codes[0], q, groups)])
    }

    /// [`Tile::rows`] with `dots` taking R rows at once, so each activation
    /// the kernel loads serves R rows. Past the end of an uneven range the
    /// last row stands in, its extra sums unused. Columns go in chunks of
    /// whole 256-column blocks whose activations fit [`TILE_Q_BYTES`], each
    /// over every row before the next: integer sums add up the same in any
    /// order, and per-block scales still apply in block order.
    #[inline(always)]
    pub fn row_blocks<const T: usize, const R: usize>(
        &self,
        rows: Range<usize>,
        out: &mut [f32],
        dots: impl Fn([&[u8]; R], &[&[i8]; T], Range<usize>) -> [[i32; T]; R],
    ) {
        let (w, n, t0, full) = (self.w, self.s.len(), self.t0, self.full);
        let qt: [&[i8]; T] = std::array::from_fn(|t| &self.q[(t0 + t) * w.cols..(t0 + t + 1) * w.cols]);
        let qk: [&[i8]; T] = std::array::from_fn(|t| &self.qk[(t0 + t) * w.cols..(t0 + t + 1) * w.cols]);
        // Σ q of token t over `groups`, which sums of codes carry.
        let offset = |t: usize, groups: Range<usize>| -> i32 {
            self.gsum.map_or(0, |gs| gs[(t0 + t) * full..(t0 + t + 1) * full][groups].iter().sum())
        };
        let chunk = (TILE_Q_BYTES / (T * TERNARY_GROUP)).max(GROUPS_PER_BLOCK) / GROUPS_PER_BLOCK * GROUPS_PER_BLOCK;
        let chunks = || (0..full).step_by(chunk).map(move |g| g..(g + chunk).min(full));
        // Each R rows of the range, the last row standing in past its end.
        let blocks_of_rows = || {
            (rows.start..rows.end).step_by(R).map(|r0| {
                let block: [usize; R] = std::array::from_fn(|k| (r0 + k).min(rows.end - 1));
                (block, (rows.end - r0).min(R))
            })
        };
        let at = |r: usize| (r - rows.start) * n + t0;
        match &w.scales {
            Scales::Tensor(d) => {
                let mut sums = vec![[0i32; T]; rows.len()];
                for groups in chunks() {
                    for (block, live) in blocks_of_rows() {
                        let dots = dots(block.map(|r| w.row_codes(r)), &qk, groups.clone());
                        for k in 0..live {
                            let sum = &mut sums[block[k] - rows.start];
                            for t in 0..T {
                                sum[t] += dots[k][t];
                            }
                        }
                    }
                }
                let whole: [i32; T] = std::array::from_fn(|t| offset(t, 0..full));
                let s: [f32; T] = std::array::from_fn(|t| self.s[t0 + t]);
                let has_tail = full * TERNARY_GROUP < w.cols;
                for (r, sum) in rows.clone().zip(&sums) {
                    let codes = w.row_codes(r);
                    let tail: [i32; T] = if has_tail {
                        std::array::from_fn(|t| {
                            (full * TERNARY_GROUP..w.cols)
                                .map(|c| (get_code(codes, c) as i32 - 1) * qt[t][c] as i32)
                                .sum()
                        })
                    } else {
                        [0; T]
                    };
                    // One lane per token: the compiler keeps this loop in
                    // vector registers (divides included), in the
                    // reference's order per element.
                    let o = &mut out[at(r)..at(r) + T];
                    for t in 0..T {
                        o[t] = (sum[t] - whole[t] + tail[t]) as f32 * d / s[t];
                    }
                }
            }
            Scales::Blocks(ds) => {
                // Only TQ payloads have block scales: cols % 256 == 0, no tail.
                let blocks = w.cols / TQ_BLOCK;
                let mut acc = vec![[0.0f32; T]; rows.len()];
                for groups in chunks() {
                    for (block, live) in blocks_of_rows() {
                        for g in groups.clone().step_by(GROUPS_PER_BLOCK) {
                            let (b, g) = (g / GROUPS_PER_BLOCK, g..g + GROUPS_PER_BLOCK);
                            let dots = dots(block.map(|r| w.row_codes(r)), &qk, g.clone());
                            for t in 0..T {
                                let off = offset(t, g.clone());
                                for k in 0..live {
                                    let r = block[k];
                                    acc[r - rows.start][t] += (dots[k][t] - off) as f32 * ds[r * blocks + b];
                                }
                            }
                        }
                    }
                }
                for (r, acc) in rows.clone().zip(&acc) {
                    let o = &mut out[at(r)..at(r) + T];
                    for t in 0..T {
                        o[t] = acc[t] / self.s[t0 + t];
                    }
                }
            }
        }
    }
}

#![allow(unsafe_code)]
//! AMX (x86_64): the batched ternary product on the tile unit.
//!
//! `tdpbusd` multiplies a tile of 16 × 64 unsigned bytes by a tile of
//! 64 × 16 signed bytes into 16 × 16 i32 sums: 16,384 multiply-adds in one
//! instruction, several times what the 512-bit `vpdpbusd` does per cycle
//! on the CPUs that have both.
//!
//! - A tiles: 16 weight rows' codes (weight + 1) over 64 columns, unpacked
//!   with AVX-512 from the packed layout, in the column order
//!   [`x86_64_avx512`](super::x86_64_avx512) reads activations in (per
//!   pair of groups, run j of the first group then run j of the second).
//! - B tiles: 16 tokens' activations over the same 64 columns, four bytes
//!   of each token per tile row (the tile unit's layout). They are built
//!   once per call and serve every matrix.
//! - Each task takes 32 rows at a time, their columns in chunks of 512:
//!   it unpacks the chunk's codes (16 KiB of A tiles, which stay in L1),
//!   then goes over the tokens 32 at a time, four tiles of sums (2 row
//!   tiles × 2 token tiles) with two A and two B loads per four products.
//!   The sums carry over from chunk to chunk in memory. The next 32 rows'
//!   codes are prefetched into L2 meanwhile.
//!
//! The sums are integers and the rescale is the reference's, element by
//! element, so the results are bit-identical to
//! [`crate::reference::ternary_rows`]. Matrices with per-block scales,
//! widths that are not whole pairs of groups, and fewer than
//! [`MIN_TOKENS`] tokens are left to the vector kernels.
//!
//! Linux gives a process the tile registers only when it asks
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); [`available`] asks once.

use crate::arch::driver::Lines;
use crate::pool::{self, Columns};
use crate::ternary::{TernaryMatrix, TERNARY_GROUP, TERNARY_GROUP_BYTES};
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

/// Rows of a tile, and tokens of a B tile.
const TILE: usize = 16;
/// Columns per tile product.
const STEP: usize = 64;
/// Bytes of one tile (16 rows of 64 bytes).
const TILE_BYTES: usize = TILE * STEP;
/// Columns of two groups: the packed rows' unit.
const PAIR: usize = 2 * TERNARY_GROUP;
/// Packed bytes of a pair of groups.
const PAIR_BYTES: usize = 2 * TERNARY_GROUP_BYTES;
/// Columns per run of one group.
const RUN: usize = TERNARY_GROUP / 4;
/// Rows each task unpacks at once: two A tiles.
const ROWS: usize = 2 * TILE;
/// Fewest tokens the tile unit takes: a B tile's tokens past n are zeros,
/// so a product costs about the same from 1 to 16 tokens. With 2560 × 6912
/// weights on two threads it took 181 µs at 4 tokens against the vector
/// kernel's 157, and 186 against 286 at 8.
pub const MIN_TOKENS: usize = 6;

/// Whether the CPU has AMX-TILE and AMX-INT8, the OS saves the tile state,
/// and this process has been given the tile registers.
fn tiles_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        let features = __cpuid_count(7, 0);
        let amx = features.edx >> 24 & 1 == 1 && features.edx >> 25 & 1 == 1;
        let osxsave = __cpuid(1).ecx >> 27 & 1 == 1;
        // SAFETY: OSXSAVE says xgetbv is available.
        amx && osxsave && unsafe { tile_state_enabled() } && request_tile_data()
    })
}

#[target_feature(enable = "xsave")]
fn tile_state_enabled() -> bool {
    // XCR0 bits 17 and 18: XTILECFG and XTILEDATA.
    // SAFETY: the caller checked OSXSAVE.
    unsafe { _xgetbv(0) >> 17 & 3 == 3 }
}

/// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): 0 when granted.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let ret: i64;
    // SAFETY: a plain system call; it reads no memory of ours.
    unsafe {
        asm!("syscall", inlateout("rax") ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM,
             in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// Whether the `amx` variant runs here: tiles and the AVX-512 set its
/// unpacking and every other product come from.
pub fn available() -> bool {
    crate::arch::x86_64_avx512::available() && tiles_granted()
}

/// Whether [`ternary_gemm_many`] takes these products.
fn takes(products: &[(&TernaryMatrix, &mut [f32])], n: usize) -> bool {
    n >= MIN_TOKENS
        && products.iter().all(|(w, _)| w.cols().is_multiple_of(PAIR) && w.tensor_scale().is_some())
        && available()
}

/// Several matrices of one width against q (n, cols), s (n,): each out
/// (n, its rows) = W @ q, split over the pool. Returns false, touching
/// nothing, when these products are not for the tile unit (see the module
/// notes); the caller then runs the vector kernels.
pub fn ternary_gemm_many(products: &mut [(&TernaryMatrix, &mut [f32])], q: &[i8], s: &[f32]) -> bool {
    let n = s.len();
    if !takes(products, n) {
        return false;
    }
    let cols = products[0].0.cols();
    let b = Activations::new(q, n, cols);
    // Tasks of whole pairs of A tiles.
    crate::for_each_row_task(products, cols * n, ROWS, &|w, rows, block| {
        // SAFETY: `takes` checked the tiles and AVX-512 are available.
        unsafe { rows_amx(w, &b, s, rows, block) }
    });
    true
}

/// q (n, cols) as B tiles, and each token's Σ q.
struct Activations {
    /// For each 16 tokens, for each 64-column step, one tile: row i holds
    /// four columns of each token, token j's at bytes 4j..4j + 4.
    tiles: Lines,
    steps: usize,
    /// Σ q of each token, which sums of codes carry.
    sums: Vec<i32>,
}

impl Activations {
    fn new(q: &[i8], n: usize, cols: usize) -> Activations {
        let steps = cols / STEP;
        let token_tiles = n.div_ceil(TILE);
        let mut tiles = Lines::zeroed(token_tiles * steps * TILE_BYTES);
        pool::global().for_each_chunk(tiles.as_mut_slice(), steps * TILE_BYTES, &|tt, part| {
            let tokens: Vec<&[i8]> = q.chunks_exact(cols).skip(tt * TILE).take(TILE).collect();
            // SAFETY: `available` (checked by the caller) includes AVX-512
            // F and BW.
            unsafe { token_tile(&tokens, part) }
        });
        let mut sums = vec![0i32; n];
        pool::global().for_each_chunk(&mut sums, TILE, &|tt, part| {
            for (j, sum) in part.iter_mut().enumerate() {
                let t = tt * TILE + j;
                // SAFETY: as above.
                *sum = unsafe { sum_of(&q[t * cols..(t + 1) * cols]) };
            }
        });
        Activations { tiles, steps, sums }
    }

    /// Token tile `tt`'s tile of step `step`.
    fn tile(&self, tt: usize, step: usize) -> *const u8 {
        self.tiles.as_slice()[(tt * self.steps + step) * TILE_BYTES..].as_ptr().cast()
    }
}

/// The B tiles of up to 16 tokens (rows of q), every step: tile row i
/// holds dword i of each token's step, token j's at bytes 4j..4j + 4.
/// Step 4p + r is run r of pair p's first group (dwords 0..8) then of its
/// second (8..16); tokens past the given ones are zeros.
#[target_feature(enable = "avx512f,avx512bw")]
fn token_tile(tokens: &[&[i8]], tiles: &mut [i8]) {
    for (step, tile) in tiles.chunks_exact_mut(TILE_BYTES).enumerate() {
        let (pair, run) = (step / 4, step % 4);
        let first = pair * PAIR + run * RUN;
        let rows: [__m512i; TILE] = std::array::from_fn(|j| match tokens.get(j) {
            // SAFETY: two 32-byte loads inside the token's row (its width
            // is whole pairs of groups).
            Some(qt) => unsafe {
                let lo = _mm256_loadu_si256(qt[first..first + RUN].as_ptr().cast());
                let hi = _mm256_loadu_si256(qt[first + TERNARY_GROUP..first + TERNARY_GROUP + RUN].as_ptr().cast());
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
            },
            None => _mm512_setzero_si512(),
        });
        for (i, v) in transpose_16x16(rows).into_iter().enumerate() {
            // SAFETY: 64 bytes of the 1024-byte tile.
            unsafe { _mm512_storeu_si512(tile[i * STEP..(i + 1) * STEP].as_mut_ptr().cast(), v) };
        }
    }
}

/// The transpose of 16 rows of 16 dwords: out[i] dword j = r[j] dword i.
#[target_feature(enable = "avx512f")]
fn transpose_16x16(r: [__m512i; 16]) -> [__m512i; 16] {
    // Within each 128-bit lane L, u[4k + e] = dword 4L + e of rows 4k..4k + 4.
    let t: [__m512i; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    let u: [__m512i; 16] = std::array::from_fn(|i| {
        let (k, e) = (i / 4, i % 4);
        let (a, b) = (t[4 * k + e / 2], t[4 * k + 2 + e / 2]);
        if e % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    // Then a 4 × 4 transpose of 128-bit lanes across u[e], u[4 + e], ...
    let mut out = [_mm512_setzero_si512(); 16];
    for e in 0..4 {
        let (a, b, c, d) = (u[e], u[4 + e], u[8 + e], u[12 + e]);
        let low = (_mm512_shuffle_i32x4::<0x44>(a, b), _mm512_shuffle_i32x4::<0x44>(c, d));
        let high = (_mm512_shuffle_i32x4::<0xEE>(a, b), _mm512_shuffle_i32x4::<0xEE>(c, d));
        out[e] = _mm512_shuffle_i32x4::<0x88>(low.0, low.1);
        out[4 + e] = _mm512_shuffle_i32x4::<0xDD>(low.0, low.1);
        out[8 + e] = _mm512_shuffle_i32x4::<0x88>(high.0, high.1);
        out[12 + e] = _mm512_shuffle_i32x4::<0xDD>(high.0, high.1);
    }
    out
}

/// Σ q.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn sum_of(q: &[i8]) -> i32 {
    let ones = _mm512_set1_epi8(1);
    let mut acc = _mm512_setzero_si512();
    let mut chunks = q.chunks_exact(64);
    for c in &mut chunks {
        // SAFETY: `c` is 64 bytes.
        acc = _mm512_dpbusd_epi32(acc, ones, unsafe { _mm512_loadu_si512(c.as_ptr().cast()) });
    }
    _mm512_reduce_add_epi32(acc) + chunks.remainder().iter().map(|&v| v as i32).sum::<i32>()
}

/// The tile register configuration: all eight tiles 16 rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    bytes_per_row: [STEP as u16, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [TILE as u8, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Pairs of groups unpacked at once: A tiles of 8 steps per row tile,
/// 16 KiB for both, which stay in L1 while every token tile uses them.
const CHUNK_PAIRS: usize = 2;
/// Steps per chunk.
const CHUNK: usize = 4 * CHUNK_PAIRS;

/// One tile of i32 sums, cache-line aligned for the tile loads and stores.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct SumTile([i32; TILE * TILE]);

thread_local! {
    /// A task's A tiles for one chunk (row tile 0's steps, then row tile
    /// 1's), and its sums, two tiles (row tiles 0 and 1) per token tile.
    static SCRATCH: RefCell<(Lines, Vec<SumTile>)> = RefCell::new((Lines::zeroed(2 * CHUNK * TILE_BYTES), Vec::new()));
}

/// Rows `rows` of W against every token into `block` (the rows' columns
/// of out (n, W's rows)).
///
/// # Safety
/// The CPU has AVX-512 F and BW, and this process the tile registers.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rows_amx(w: &TernaryMatrix, b: &Activations, s: &[f32], rows: Range<usize>, block: &mut Columns<'_, f32>) {
    let d = w.tensor_scale().expect("amx: a tensor scale (checked in takes)");
    let (n, steps) = (s.len(), b.steps);
    let token_tiles = n.div_ceil(TILE);
    SCRATCH.with_borrow_mut(|(a, sums)| {
        // SAFETY: the caller guarantees the tile registers; CONFIG is a
        // valid palette-1 configuration, aligned as ldtilecfg wants.
        unsafe { asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly)) };
        prefetch(w, rows.start..(rows.start + ROWS).min(rows.end), 0..steps / 4);
        for r0 in rows.clone().step_by(ROWS) {
            let live = (rows.end - r0).min(ROWS);
            sums.clear();
            sums.resize(2 * token_tiles, SumTile([0; TILE * TILE]));
            let c = |tt: usize, rt: usize| -> *mut i32 { sums[2 * tt + rt].0.as_ptr().cast_mut() };
            // Columns in chunks whose A tiles stay in L1, every token tile
            // over each chunk; the sums tiles carry over.
            for k0 in (0..steps).step_by(CHUNK) {
                let kc = CHUNK.min(steps - k0);
                let pairs = k0 / 4..(k0 + kc) / 4;
                unpack(w, r0..r0 + live, pairs.clone(), a.as_mut_slice());
                // The next rows' codes of this chunk, into L2 while these
                // compute: with few tokens the product is as fast as the
                // weights arrive.
                prefetch(w, (r0 + ROWS).min(w.rows())..(r0 + 2 * ROWS).min(w.rows()), pairs);
                let a_tiles: [*const u8; 2] = {
                    let a = a.as_slice();
                    [a.as_ptr().cast(), a[CHUNK * TILE_BYTES..].as_ptr().cast()]
                };
                let mut tt = 0;
                while tt < token_tiles {
                    // SAFETY: the A tiles hold kc steps from these
                    // pointers, the B tiles kc steps past k0, and each sums
                    // pointer one tile.
                    unsafe {
                        if tt + 1 < token_tiles {
                            let (b0, b1) = (b.tile(tt, k0), b.tile(tt + 1, k0));
                            dots_2x2(a_tiles, [b0, b1], kc, [c(tt, 0), c(tt + 1, 0), c(tt, 1), c(tt + 1, 1)]);
                            tt += 2;
                        } else {
                            dots_2x1(a_tiles, b.tile(tt, k0), kc, [c(tt, 0), c(tt, 1)]);
                            tt += 1;
                        }
                    }
                }
            }
            for tt in 0..token_tiles {
                let tokens = tt * TILE..(tt * TILE + TILE).min(n);
                for rt in 0..2 {
                    let r = r0 + rt * TILE;
                    if r < r0 + live {
                        let tile = &sums[2 * tt + rt].0;
                        rescale(tile, (r0 + live - r).min(TILE), r - rows.start, &b.sums, s, d, tokens.clone(), block);
                    }
                }
            }
        }
        // SAFETY: releases this thread's tile state, configured above.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    })
}

/// Asks for the codes of `rows` over the pairs of groups `pairs` to be
/// brought into L2.
#[target_feature(enable = "avx512f")]
fn prefetch(w: &TernaryMatrix, rows: Range<usize>, pairs: Range<usize>) {
    for r in rows {
        let codes = &w.row_codes(r)[pairs.start * PAIR_BYTES..pairs.end * PAIR_BYTES];
        for line in codes.chunks(64) {
            _mm_prefetch::<_MM_HINT_T1>(line.as_ptr().cast());
        }
    }
}

/// Codes of `rows` (at most 32; rows past them zero) over the pairs of
/// groups `pairs` into `a`: row tile k's step j at tile k · CHUNK + j,
/// row i of the tile at bytes 64i.
#[target_feature(enable = "avx512f,avx512bw")]
fn unpack(w: &TernaryMatrix, rows: Range<usize>, pairs: Range<usize>, a: &mut [i8]) {
    let low = _mm512_set1_epi8(0x03);
    let zeros = [0u8; PAIR_BYTES * CHUNK_PAIRS];
    for i in 0..ROWS {
        let (k, ri) = (i / TILE, i % TILE);
        let codes = if rows.start + i < rows.end {
            &w.row_codes(rows.start + i)[pairs.start * PAIR_BYTES..pairs.end * PAIR_BYTES]
        } else {
            &zeros[..pairs.len() * PAIR_BYTES]
        };
        for (p, packed) in codes.chunks_exact(PAIR_BYTES).enumerate() {
            // SAFETY: `packed` is 64 bytes, one load.
            let packed = unsafe { _mm512_loadu_si512(packed.as_ptr().cast()) };
            let runs = [
                _mm512_and_si512(packed, low),
                _mm512_and_si512(_mm512_srli_epi16::<2>(packed), low),
                _mm512_and_si512(_mm512_srli_epi16::<4>(packed), low),
                _mm512_and_si512(_mm512_srli_epi16::<6>(packed), low),
            ];
            for (run, v) in runs.into_iter().enumerate() {
                let at = (k * CHUNK + p * 4 + run) * TILE_BYTES + ri * STEP;
                let dst = &mut a[at..at + STEP];
                // SAFETY: `dst` is 64 writable bytes.
                unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), v) };
            }
        }
    }
}

/// Adds A_k·B_j over `steps` steps to the sums tiles at `c`, in the order
/// A0·B0, A0·B1, A1·B0, A1·B1.
///
/// # Safety
/// The tile registers are configured as [`CONFIG`]; each A and B pointer
/// holds `steps` tiles one after another, each `c` one tile of i32.
unsafe fn dots_2x2(a: [*const u8; 2], b: [*const u8; 2], steps: usize, c: [*mut i32; 4]) {
    // SAFETY: as the caller guarantees.
    unsafe {
        asm!(
            "tileloadd tmm0, [{c0} + {stride}]",
            "tileloadd tmm1, [{c1} + {stride}]",
            "tileloadd tmm2, [{c2} + {stride}]",
            "tileloadd tmm3, [{c3} + {stride}]",
            "2:",
            "tileloadd tmm4, [{a0} + {stride}]",
            "tileloadd tmm6, [{b0} + {stride}]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {stride}]",
            "tdpbusd tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {stride}]",
            "tdpbusd tmm2, tmm5, tmm6",
            "tdpbusd tmm3, tmm5, tmm7",
            "add {a0}, {tile}",
            "add {a1}, {tile}",
            "add {b0}, {tile}",
            "add {b1}, {tile}",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c0} + {stride}], tmm0",
            "tilestored [{c1} + {stride}], tmm1",
            "tilestored [{c2} + {stride}], tmm2",
            "tilestored [{c3} + {stride}], tmm3",
            a0 = inout(reg) a[0] => _,
            a1 = inout(reg) a[1] => _,
            b0 = inout(reg) b[0] => _,
            b1 = inout(reg) b[1] => _,
            steps = inout(reg) steps => _,
            c0 = in(reg) c[0],
            c1 = in(reg) c[1],
            c2 = in(reg) c[2],
            c3 = in(reg) c[3],
            stride = in(reg) STEP,
            tile = const TILE_BYTES,
            options(nostack),
        );
    }
}

/// [`dots_2x2`] for one token tile: A0·B, A1·B.
///
/// # Safety
/// As for [`dots_2x2`].
unsafe fn dots_2x1(a: [*const u8; 2], b: *const u8, steps: usize, c: [*mut i32; 2]) {
    // SAFETY: as the caller guarantees.
    unsafe {
        asm!(
            "tileloadd tmm0, [{c0} + {stride}]",
            "tileloadd tmm2, [{c1} + {stride}]",
            "2:",
            "tileloadd tmm4, [{a0} + {stride}]",
            "tileloadd tmm6, [{b} + {stride}]",
            "tdpbusd tmm0, tmm4, tmm6",
            "tileloadd tmm5, [{a1} + {stride}]",
            "tdpbusd tmm2, tmm5, tmm6",
            "add {a0}, {tile}",
            "add {a1}, {tile}",
            "add {b}, {tile}",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c0} + {stride}], tmm0",
            "tilestored [{c1} + {stride}], tmm2",
            a0 = inout(reg) a[0] => _,
            a1 = inout(reg) a[1] => _,
            b = inout(reg) b => _,
            steps = inout(reg) steps => _,
            c0 = in(reg) c[0],
            c1 = in(reg) c[1],
            stride = in(reg) STEP,
            tile = const TILE_BYTES,
            options(nostack),
        );
    }
}

/// One sums tile (16 rows × 16 tokens, row-major) into out: rows `live`
/// of it at column `col` of the block, tokens `tokens`, each
/// `(sum − Σ q) as f32 · d / s`, the reference's order.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
fn rescale(
    tile: &[i32],
    live: usize,
    col: usize,
    sums: &[i32],
    s: &[f32],
    d: f32,
    tokens: Range<usize>,
    block: &mut Columns<'_, f32>,
) {
    // Column j of the tile: elements j, j + 16, ...
    let index = _mm512_setr_epi32(0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240);
    let mask: __mmask16 = if live == TILE { !0 } else { (1u16 << live) - 1 };
    let t0 = tokens.start;
    for (j, row) in block.rows_mut(tokens).enumerate() {
        let t = t0 + j;
        let dst = &mut row[col..col + live];
        // SAFETY: the gather reads 16 i32 of the 256-element tile; the
        // masked store writes `live` floats of `dst`.
        unsafe {
            let v = _mm512_i32gather_epi32::<4>(index, tile[j..].as_ptr().cast());
            let v = _mm512_sub_epi32(v, _mm512_set1_epi32(sums[t]));
            let f = _mm512_div_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_set1_ps(d)), _mm512_set1_ps(s[t]));
            _mm512_mask_storeu_ps(dst.as_mut_ptr(), mask, f);
        }
    }
}

/// `iters` rounds of four independent `tdpbusd` on tiles that never leave
/// the registers (the tile unit's multiply-add limit, for `tern bench
/// --kernels`); returns the multiply-adds done, 0 where [`available`] is
/// false.
pub fn madd_loop(iters: u64) -> u64 {
    if !available() || iters == 0 {
        return 0;
    }
    // SAFETY: the tiles are available (above) and configured here before
    // use, then released; no memory is read but the configuration.
    unsafe {
        asm!("ldtilecfg [{}]", in(reg) &CONFIG, options(nostack, readonly));
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "tilezero tmm4",
            "tilezero tmm5",
            "tilezero tmm6",
            "tilezero tmm7",
            "2:",
            "tdpbusd tmm0, tmm4, tmm6",
            "tdpbusd tmm1, tmm4, tmm7",
            "tdpbusd tmm2, tmm5, tmm6",
            "tdpbusd tmm3, tmm5, tmm7",
            "dec {iters}",
            "jnz 2b",
            "tilerelease",
            iters = inout(reg) iters => _,
            options(nostack, nomem),
        );
    }
    iters * 4 * (TILE * TILE * STEP) as u64
}

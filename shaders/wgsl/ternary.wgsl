// The ternary product: W (rows, cols) ternary @ q (n, cols) int8 with
// per-token scales s (n,) -> out (n, out_stride) at columns
// row_offset + row, i.e. out[t, r] = (Σ_c w[r, c]·q[t, c]) · d / s[t].
//
// W is the kernels' layout (kernels/src/ternary.rs): each row padded to
// 128 columns, a 32-byte group holding four runs of 32 columns at bit
// offsets 0, 2, 4, 6, code = weight + 1. Word k of a row (bytes 4k..4k+3)
// therefore holds, at shift 2s, the codes of the four columns
// 128·(k/8) + 32s + 4·(k%8) + 0..3: exactly the activations' word
// 32·(k/8) + 8s + k%8 (a row of q has four times W's words). Σ (code - 1)·q = Σ code·q - Σ q, and a code is a
// valid int8, so one packed 4×int8 dot product covers four columns and the
// row sum of q (from quantize.wgsl) is taken off at the end. Integer sums
// are exact, as on the CPU.
//
// A workgroup computes ROWS rows × TOKENS tokens; its threads split the
// row's words and add their sums up in workgroup memory at the end.

struct Params {
    rows: u32,
    // words per row of W (q has 4·words)
    words: u32,
    n: u32,
    out_stride: u32,
    row_offset: u32,
    // scales per row when BLOCK_SCALES (one per 256 columns)
    blocks: u32,
    d: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> codes: array<u32>;
@group(0) @binding(2) var<storage, read> q: array<u32>;
@group(0) @binding(3) var<storage, read> s: array<f32>;
@group(0) @binding(4) var<storage, read> qsum: array<i32>;
@group(0) @binding(5) var<storage, read> block_scales: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

// The packed dot product (`dot4I8Packed`), or the same sum with plain
// integer operations, for drivers where the packed one is slow or wrong.
override PACKED_DOT: bool = true;
// One scale per 256 columns of each row instead of one per tensor.
override BLOCK_SCALES: bool = false;

const WG: u32 = 64u;
const ROWS: u32 = 4u;
const TOKENS: u32 = 4u;
const ACCS: u32 = ROWS * TOKENS;

var<workgroup> partial_i: array<i32, WG * ACCS>;
var<workgroup> partial_f: array<f32, WG * ACCS>;

fn dot4(codes4: u32, x4: u32) -> i32 {
    if PACKED_DOT {
        return dot4I8Packed(codes4, x4);
    }
    let x = bitcast<i32>(x4);
    var sum = 0i;
    for (var b = 0u; b < 4u; b++) {
        sum += i32(extractBits(codes4, 8u * b, 8u)) * extractBits(x, 8u * b, 8u);
    }
    return sum;
}

@compute @workgroup_size(WG)
fn ternary(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let row0 = wg.x * ROWS;
    let tok0 = wg.y * TOKENS;
    var acc_i: array<i32, ACCS>;
    var acc_f: array<f32, ACCS>;
    for (var k = li; k < p.words; k += WG) {
        let aw = 32u * (k / 8u) + k % 8u;
        var x: array<array<u32, 4>, TOKENS>;
        for (var t = 0u; t < TOKENS; t++) {
            if tok0 + t < p.n {
                for (var sh = 0u; sh < 4u; sh++) {
                    x[t][sh] = q[(tok0 + t) * 4u * p.words + aw + 8u * sh];
                }
            }
        }
        for (var r = 0u; r < ROWS; r++) {
            let row = row0 + r;
            if row >= p.rows {
                break;
            }
            let w = codes[row * p.words + k];
            for (var t = 0u; t < TOKENS; t++) {
                var sum = 0i;
                for (var sh = 0u; sh < 4u; sh++) {
                    let c = (w >> (2u * sh)) & 0x03030303u;
                    if BLOCK_SCALES {
                        // Each block's sum needs its own Σ q.
                        sum += dot4(c, x[t][sh]) - dot4(0x01010101u, x[t][sh]);
                    } else {
                        sum += dot4(c, x[t][sh]);
                    }
                }
                if BLOCK_SCALES {
                    acc_f[r * TOKENS + t] += f32(sum) * block_scales[row * p.blocks + k / 16u];
                } else {
                    acc_i[r * TOKENS + t] += sum;
                }
            }
        }
    }
    for (var a = 0u; a < ACCS; a++) {
        partial_i[a * WG + li] = acc_i[a];
        partial_f[a * WG + li] = acc_f[a];
    }
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        if li < w {
            for (var a = 0u; a < ACCS; a++) {
                partial_i[a * WG + li] += partial_i[a * WG + li + w];
                partial_f[a * WG + li] += partial_f[a * WG + li + w];
            }
        }
        workgroupBarrier();
    }
    if li < ACCS {
        let r = li / TOKENS;
        let t = li % TOKENS;
        let row = row0 + r;
        let tok = tok0 + t;
        if row < p.rows && tok < p.n {
            var y: f32;
            if BLOCK_SCALES {
                y = partial_f[li * WG] / s[tok];
            } else {
                y = f32(partial_i[li * WG] - qsum[tok]) * p.d / s[tok];
            }
            out[tok * p.out_stride + p.row_offset + row] = y;
        }
    }
}

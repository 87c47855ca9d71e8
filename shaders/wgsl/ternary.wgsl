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
// A workgroup computes 4 rows × 4 tokens, each thread a share of the
// row's words, in vectors whose lanes are the 4 tokens; rows and tokens
// past the end read the last one's memory and are not written. The
// threads' sums meet in workgroup memory behind one barrier.

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

var<workgroup> partial_i: array<array<vec4i, WG>, 4>;
var<workgroup> partial_f: array<array<vec4f, WG>, 4>;

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

// Σ code·q over one word of codes (16 columns) for the 4 tokens: xs[sh]
// holds each token's activation word for the codes at shift 2·sh.
fn word_dots(w: u32, x0: vec4u, x1: vec4u, x2: vec4u, x3: vec4u) -> vec4i {
    let m = 0x03030303u;
    let c0 = w & m;
    let c1 = (w >> 2u) & m;
    let c2 = (w >> 4u) & m;
    let c3 = (w >> 6u) & m;
    return vec4i(
        dot4(c0, x0.x) + dot4(c1, x1.x) + dot4(c2, x2.x) + dot4(c3, x3.x),
        dot4(c0, x0.y) + dot4(c1, x1.y) + dot4(c2, x2.y) + dot4(c3, x3.y),
        dot4(c0, x0.z) + dot4(c1, x1.z) + dot4(c2, x2.z) + dot4(c3, x3.z),
        dot4(c0, x0.w) + dot4(c1, x1.w) + dot4(c2, x2.w) + dot4(c3, x3.w),
    );
}

@compute @workgroup_size(WG)
fn ternary(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let row0 = wg.x * 4u;
    let last_row = p.rows - 1u;
    let rows = vec4u(row0, min(row0 + 1u, last_row), min(row0 + 2u, last_row), min(row0 + 3u, last_row));
    let tok0 = wg.y * 4u;
    let qw = 4u * p.words;
    let last_tok = p.n - 1u;
    let toks = vec4u(tok0, min(tok0 + 1u, last_tok), min(tok0 + 2u, last_tok), min(tok0 + 3u, last_tok)) * qw;
    var acc_i: array<vec4i, 4>;
    var acc_f: array<vec4f, 4>;
    for (var k = li; k < p.words; k += WG) {
        let a = 32u * (k / 8u) + k % 8u;
        let x0 = vec4u(q[toks.x + a], q[toks.y + a], q[toks.z + a], q[toks.w + a]);
        let x1 = vec4u(q[toks.x + a + 8u], q[toks.y + a + 8u], q[toks.z + a + 8u], q[toks.w + a + 8u]);
        let x2 = vec4u(q[toks.x + a + 16u], q[toks.y + a + 16u], q[toks.z + a + 16u], q[toks.w + a + 16u]);
        let x3 = vec4u(q[toks.x + a + 24u], q[toks.y + a + 24u], q[toks.z + a + 24u], q[toks.w + a + 24u]);
        let w0 = codes[rows.x * p.words + k];
        let w1 = codes[rows.y * p.words + k];
        let w2 = codes[rows.z * p.words + k];
        let w3 = codes[rows.w * p.words + k];
        if BLOCK_SCALES {
            // Each block's sum needs its own Σ q: Σ (code - 1)·q.
            let ones = word_dots(0x55555555u, x0, x1, x2, x3);
            let b = k / 16u;
            acc_f[0] += vec4f(word_dots(w0, x0, x1, x2, x3) - ones) * block_scales[rows.x * p.blocks + b];
            acc_f[1] += vec4f(word_dots(w1, x0, x1, x2, x3) - ones) * block_scales[rows.y * p.blocks + b];
            acc_f[2] += vec4f(word_dots(w2, x0, x1, x2, x3) - ones) * block_scales[rows.z * p.blocks + b];
            acc_f[3] += vec4f(word_dots(w3, x0, x1, x2, x3) - ones) * block_scales[rows.w * p.blocks + b];
        } else {
            acc_i[0] += word_dots(w0, x0, x1, x2, x3);
            acc_i[1] += word_dots(w1, x0, x1, x2, x3);
            acc_i[2] += word_dots(w2, x0, x1, x2, x3);
            acc_i[3] += word_dots(w3, x0, x1, x2, x3);
        }
    }
    for (var r = 0u; r < 4u; r++) {
        if BLOCK_SCALES {
            partial_f[r][li] = acc_f[r];
        } else {
            partial_i[r][li] = acc_i[r];
        }
    }
    workgroupBarrier();
    // Thread r adds up row r's sums for the 4 tokens.
    if li < 4u {
        let row = row0 + li;
        var sum_i = vec4i(0);
        var sum_f = vec4f(0.0);
        for (var j = 0u; j < WG; j++) {
            if BLOCK_SCALES {
                sum_f += partial_f[li][j];
            } else {
                sum_i += partial_i[li][j];
            }
        }
        for (var t = 0u; t < 4u; t++) {
            let tok = tok0 + t;
            if row < p.rows && tok < p.n {
                var y: f32;
                if BLOCK_SCALES {
                    y = sum_f[t] / s[tok];
                } else {
                    y = f32(sum_i[t] - qsum[tok]) * p.d / s[tok];
                }
                out[tok * p.out_stride + p.row_offset + row] = y;
            }
        }
    }
}

// Σ code·q over one word of codes (16 columns) for one token.
fn word_dot(w: u32, x: vec4u) -> i32 {
    let m = 0x03030303u;
    return dot4(w & m, x.x) + dot4((w >> 2u) & m, x.y) + dot4((w >> 4u) & m, x.z) + dot4((w >> 6u) & m, x.w);
}

var<workgroup> partial_one_i: array<array<i32, WG>, 4>;
var<workgroup> partial_one_f: array<array<f32, WG>, 4>;

// The same product for one token (a decode step): 4 rows a workgroup, no
// lanes spent on tokens that are not there.
@compute @workgroup_size(WG)
fn ternary_one(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let row0 = wg.x * 4u;
    let last_row = p.rows - 1u;
    let rows = vec4u(row0, min(row0 + 1u, last_row), min(row0 + 2u, last_row), min(row0 + 3u, last_row));
    var acc_i = vec4i(0);
    var acc_f = vec4f(0.0);
    for (var k = li; k < p.words; k += WG) {
        let a = 32u * (k / 8u) + k % 8u;
        let x = vec4u(q[a], q[a + 8u], q[a + 16u], q[a + 24u]);
        let dots = vec4i(
            word_dot(codes[rows.x * p.words + k], x),
            word_dot(codes[rows.y * p.words + k], x),
            word_dot(codes[rows.z * p.words + k], x),
            word_dot(codes[rows.w * p.words + k], x),
        );
        if BLOCK_SCALES {
            let b = k / 16u;
            let scales = vec4f(
                block_scales[rows.x * p.blocks + b],
                block_scales[rows.y * p.blocks + b],
                block_scales[rows.z * p.blocks + b],
                block_scales[rows.w * p.blocks + b],
            );
            acc_f += vec4f(dots - vec4i(word_dot(0x55555555u, x))) * scales;
        } else {
            acc_i += dots;
        }
    }
    for (var r = 0u; r < 4u; r++) {
        if BLOCK_SCALES {
            partial_one_f[r][li] = acc_f[r];
        } else {
            partial_one_i[r][li] = acc_i[r];
        }
    }
    workgroupBarrier();
    if li < 4u {
        let row = row0 + li;
        var sum_i = 0i;
        var sum_f = 0.0;
        for (var j = 0u; j < WG; j++) {
            if BLOCK_SCALES {
                sum_f += partial_one_f[li][j];
            } else {
                sum_i += partial_one_i[li][j];
            }
        }
        if row < p.rows {
            var y: f32;
            if BLOCK_SCALES {
                y = sum_f / s[0];
            } else {
                y = f32(sum_i - qsum[0]) * p.d / s[0];
            }
            out[p.row_offset + row] = y;
        }
    }
}

// The product for many tokens (prefill, batched decode), tiled in
// workgroup memory: a workgroup computes 32 rows × 32 tokens. For each
// 128-column group of the row, its threads load the tile's codes (32 rows
// × 8 words) and activations (32 tokens × 32 words) once, then each
// thread sums 4 rows × 4 tokens from workgroup memory.

const TILE: u32 = 32u;
var<workgroup> w_tile: array<u32, 256>;
var<workgroup> x_tile: array<u32, 1024>;

@compute @workgroup_size(WG)
fn ternary_tiled(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let row0 = wg.x * TILE;
    let tok0 = wg.y * TILE;
    // This thread's rows 4·rg.. and tokens 4·tg.. within the tile.
    let rg = li / 8u;
    let tg = li % 8u;
    let qw = 4u * p.words;
    var acc_i: array<vec4i, 4>;
    var acc_f: array<vec4f, 4>;
    for (var g = 0u; g < p.words / 8u; g++) {
        for (var j = 0u; j < 4u; j++) {
            let i = li + WG * j;
            let row = min(row0 + i / 8u, p.rows - 1u);
            w_tile[i] = codes[row * p.words + 8u * g + i % 8u];
        }
        for (var j = 0u; j < 16u; j++) {
            let i = li + WG * j;
            let tok = min(tok0 + i / 32u, p.n - 1u);
            x_tile[i] = q[tok * qw + 32u * g + i % 32u];
        }
        workgroupBarrier();
        let t = 4u * tg * 32u;
        for (var k = 0u; k < 8u; k++) {
            let x0 = vec4u(x_tile[t + k], x_tile[t + 32u + k], x_tile[t + 64u + k], x_tile[t + 96u + k]);
            let x1 = vec4u(x_tile[t + 8u + k], x_tile[t + 40u + k], x_tile[t + 72u + k], x_tile[t + 104u + k]);
            let x2 = vec4u(x_tile[t + 16u + k], x_tile[t + 48u + k], x_tile[t + 80u + k], x_tile[t + 112u + k]);
            let x3 = vec4u(x_tile[t + 24u + k], x_tile[t + 56u + k], x_tile[t + 88u + k], x_tile[t + 120u + k]);
            var ones = vec4i(0);
            if BLOCK_SCALES {
                ones = word_dots(0x55555555u, x0, x1, x2, x3);
            }
            for (var r = 0u; r < 4u; r++) {
                let dots = word_dots(w_tile[(4u * rg + r) * 8u + k], x0, x1, x2, x3);
                if BLOCK_SCALES {
                    let row = min(row0 + 4u * rg + r, p.rows - 1u);
                    // 256 columns a block: two groups.
                    acc_f[r] += vec4f(dots - ones) * block_scales[row * p.blocks + g / 2u];
                } else {
                    acc_i[r] += dots;
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        let row = row0 + 4u * rg + r;
        for (var i = 0u; i < 4u; i++) {
            let tok = tok0 + 4u * tg + i;
            if row < p.rows && tok < p.n {
                var y: f32;
                if BLOCK_SCALES {
                    y = acc_f[r][i] / s[tok];
                } else {
                    y = f32(acc_i[r][i] - qsum[tok]) * p.d / s[tok];
                }
                out[tok * p.out_stride + p.row_offset + row] = y;
            }
        }
    }
}

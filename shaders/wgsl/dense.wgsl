// Dense products for the output head: W (rows, cols) @ x (n, cols) ->
// out (n, out_stride) at columns row_offset + row, W as F32, as F16 (two
// halves a word) or as Q8_0 repacked into int8 words (four a word) with
// one f32 scale per 32 columns. A workgroup computes ROWS rows × TOKENS
// tokens; its threads split the columns.

struct Params {
    rows: u32,
    cols: u32,
    n: u32,
    out_stride: u32,
    row_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<f32>;
@group(0) @binding(3) var<storage, read> x: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
const ROWS: u32 = 4u;
const TOKENS: u32 = 4u;
const ACCS: u32 = ROWS * TOKENS;

var<workgroup> partial: array<f32, WG * ACCS>;

fn finish(acc: array<f32, ACCS>, li: u32, row0: u32, tok0: u32) {
    for (var a = 0u; a < ACCS; a++) {
        partial[a * WG + li] = acc[a];
    }
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if li < s {
            for (var a = 0u; a < ACCS; a++) {
                partial[a * WG + li] += partial[a * WG + li + s];
            }
        }
        workgroupBarrier();
    }
    if li < ACCS {
        let row = row0 + li / TOKENS;
        let tok = tok0 + li % TOKENS;
        if row < p.rows && tok < p.n {
            out[tok * p.out_stride + p.row_offset + row] = partial[li * WG];
        }
    }
}

@compute @workgroup_size(WG)
fn dense_f32(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let row0 = wg.x * ROWS;
    let tok0 = wg.y * TOKENS;
    var acc: array<f32, ACCS>;
    for (var c = li; c < p.cols; c += WG) {
        for (var r = 0u; r < ROWS; r++) {
            if row0 + r < p.rows {
                let wv = bitcast<f32>(w[(row0 + r) * p.cols + c]);
                for (var t = 0u; t < TOKENS; t++) {
                    if tok0 + t < p.n {
                        acc[r * TOKENS + t] += wv * x[(tok0 + t) * p.cols + c];
                    }
                }
            }
        }
    }
    finish(acc, li, row0, tok0);
}

@compute @workgroup_size(WG)
fn dense_f16(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let row0 = wg.x * ROWS;
    let tok0 = wg.y * TOKENS;
    let words = p.cols / 2u;
    var acc: array<f32, ACCS>;
    for (var k = li; k < words; k += WG) {
        var xs: array<vec2f, TOKENS>;
        for (var t = 0u; t < TOKENS; t++) {
            if tok0 + t < p.n {
                let at = (tok0 + t) * p.cols + 2u * k;
                xs[t] = vec2f(x[at], x[at + 1u]);
            }
        }
        for (var r = 0u; r < ROWS; r++) {
            if row0 + r < p.rows {
                let wv = unpack2x16float(w[(row0 + r) * words + k]);
                for (var t = 0u; t < TOKENS; t++) {
                    acc[r * TOKENS + t] += dot(wv, xs[t]);
                }
            }
        }
    }
    finish(acc, li, row0, tok0);
}

@compute @workgroup_size(WG)
fn dense_q8_0(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let row0 = wg.x * ROWS;
    let tok0 = wg.y * TOKENS;
    let words = p.cols / 4u;
    var acc: array<f32, ACCS>;
    for (var k = li; k < words; k += WG) {
        var xs: array<vec4f, TOKENS>;
        for (var t = 0u; t < TOKENS; t++) {
            if tok0 + t < p.n {
                let at = (tok0 + t) * p.cols + 4u * k;
                xs[t] = vec4f(x[at], x[at + 1u], x[at + 2u], x[at + 3u]);
            }
        }
        for (var r = 0u; r < ROWS; r++) {
            let row = row0 + r;
            if row < p.rows {
                let packed = bitcast<i32>(w[row * words + k]);
                let wv = vec4f(
                    f32(extractBits(packed, 0u, 8u)),
                    f32(extractBits(packed, 8u, 8u)),
                    f32(extractBits(packed, 16u, 8u)),
                    f32(extractBits(packed, 24u, 8u)),
                ) * scales[row * (p.cols / 32u) + k / 8u];
                for (var t = 0u; t < TOKENS; t++) {
                    acc[r * TOKENS + t] += dot(wv, xs[t]);
                }
            }
        }
    }
    finish(acc, li, row0, tok0);
}

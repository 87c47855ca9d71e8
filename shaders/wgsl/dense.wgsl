// Dense products for the output head: W (rows, cols) @ x (n, cols) ->
// out (n, out_stride) at columns row_offset + row, W as F32, as F16 (two
// halves a word) or as Q8_0 repacked into int8 words (four a word) with
// one f32 scale per 32 columns.
//
// A workgroup computes 4 rows × 4 tokens, each thread a share of the
// columns, in vectors whose lanes are the 4 tokens; rows and tokens past
// the end read the last one's memory and are not written. The threads'
// sums meet in workgroup memory behind one barrier.

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

var<workgroup> partial: array<array<vec4f, WG>, 4>;

struct Tile {
    rows: vec4u,
    // offsets of the 4 tokens' rows of x
    toks: vec4u,
}

fn tile(wg: vec3u) -> Tile {
    let row0 = wg.x * 4u;
    let last_row = p.rows - 1u;
    let tok0 = wg.y * 4u;
    let last_tok = p.n - 1u;
    return Tile(
        vec4u(row0, min(row0 + 1u, last_row), min(row0 + 2u, last_row), min(row0 + 3u, last_row)),
        vec4u(tok0, min(tok0 + 1u, last_tok), min(tok0 + 2u, last_tok), min(tok0 + 3u, last_tok)) * p.cols,
    );
}

// x at column c of the 4 tokens
fn xs(t: Tile, c: u32) -> vec4f {
    return vec4f(x[t.toks.x + c], x[t.toks.y + c], x[t.toks.z + c], x[t.toks.w + c]);
}

fn finish(acc: array<vec4f, 4>, li: u32, wg: vec3u) {
    for (var r = 0u; r < 4u; r++) {
        partial[r][li] = acc[r];
    }
    workgroupBarrier();
    if li < 4u {
        var sum = vec4f(0.0);
        for (var j = 0u; j < WG; j++) {
            sum += partial[li][j];
        }
        let row = wg.x * 4u + li;
        for (var t = 0u; t < 4u; t++) {
            let tok = wg.y * 4u + t;
            if row < p.rows && tok < p.n {
                out[tok * p.out_stride + p.row_offset + row] = sum[t];
            }
        }
    }
}

@compute @workgroup_size(WG)
fn dense_f32(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let t = tile(wg);
    var acc: array<vec4f, 4>;
    for (var c = li; c < p.cols; c += WG) {
        let xc = xs(t, c);
        acc[0] += bitcast<f32>(w[t.rows.x * p.cols + c]) * xc;
        acc[1] += bitcast<f32>(w[t.rows.y * p.cols + c]) * xc;
        acc[2] += bitcast<f32>(w[t.rows.z * p.cols + c]) * xc;
        acc[3] += bitcast<f32>(w[t.rows.w * p.cols + c]) * xc;
    }
    finish(acc, li, wg);
}

@compute @workgroup_size(WG)
fn dense_f16(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let t = tile(wg);
    let words = p.cols / 2u;
    var acc: array<vec4f, 4>;
    for (var k = li; k < words; k += WG) {
        let x0 = xs(t, 2u * k);
        let x1 = xs(t, 2u * k + 1u);
        let w0 = unpack2x16float(w[t.rows.x * words + k]);
        let w1 = unpack2x16float(w[t.rows.y * words + k]);
        let w2 = unpack2x16float(w[t.rows.z * words + k]);
        let w3 = unpack2x16float(w[t.rows.w * words + k]);
        acc[0] += w0.x * x0 + w0.y * x1;
        acc[1] += w1.x * x0 + w1.y * x1;
        acc[2] += w2.x * x0 + w2.y * x1;
        acc[3] += w3.x * x0 + w3.y * x1;
    }
    finish(acc, li, wg);
}

// The 4 int8 of a word as floats, times the block's scale.
fn q8(word: u32, scale: f32) -> vec4f {
    let v = bitcast<i32>(word);
    return vec4f(
        f32(extractBits(v, 0u, 8u)),
        f32(extractBits(v, 8u, 8u)),
        f32(extractBits(v, 16u, 8u)),
        f32(extractBits(v, 24u, 8u)),
    ) * scale;
}

@compute @workgroup_size(WG)
fn dense_q8_0(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let t = tile(wg);
    let words = p.cols / 4u;
    let blocks = p.cols / 32u;
    var acc: array<vec4f, 4>;
    for (var k = li; k < words; k += WG) {
        let c = 4u * k;
        let x0 = xs(t, c);
        let x1 = xs(t, c + 1u);
        let x2 = xs(t, c + 2u);
        let x3 = xs(t, c + 3u);
        let b = k / 8u;
        let w0 = q8(w[t.rows.x * words + k], scales[t.rows.x * blocks + b]);
        let w1 = q8(w[t.rows.y * words + k], scales[t.rows.y * blocks + b]);
        let w2 = q8(w[t.rows.z * words + k], scales[t.rows.z * blocks + b]);
        let w3 = q8(w[t.rows.w * words + k], scales[t.rows.w * blocks + b]);
        acc[0] += w0.x * x0 + w0.y * x1 + w0.z * x2 + w0.w * x3;
        acc[1] += w1.x * x0 + w1.y * x1 + w1.z * x2 + w1.w * x3;
        acc[2] += w2.x * x0 + w2.y * x1 + w2.z * x2 + w2.w * x3;
        acc[3] += w3.x * x0 + w3.y * x1 + w3.z * x2 + w3.w * x3;
    }
    finish(acc, li, wg);
}

// One token (a decode step): the 4 lanes are the 4 rows instead.

fn finish_one(acc: vec4f, li: u32, wg: vec3u) {
    partial[0][li] = acc;
    workgroupBarrier();
    if li == 0u {
        var sum = vec4f(0.0);
        for (var j = 0u; j < WG; j++) {
            sum += partial[0][j];
        }
        for (var r = 0u; r < 4u; r++) {
            let row = wg.x * 4u + r;
            if row < p.rows {
                out[p.row_offset + row] = sum[r];
            }
        }
    }
}

@compute @workgroup_size(WG)
fn dense_f16_one(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let rows = tile(wg).rows;
    let words = p.cols / 2u;
    var acc = vec4f(0.0);
    for (var k = li; k < words; k += WG) {
        let x = vec2f(x[2u * k], x[2u * k + 1u]);
        let w0 = unpack2x16float(w[rows.x * words + k]);
        let w1 = unpack2x16float(w[rows.y * words + k]);
        let w2 = unpack2x16float(w[rows.z * words + k]);
        let w3 = unpack2x16float(w[rows.w * words + k]);
        acc += vec4f(w0.x, w1.x, w2.x, w3.x) * x.x + vec4f(w0.y, w1.y, w2.y, w3.y) * x.y;
    }
    finish_one(acc, li, wg);
}

@compute @workgroup_size(WG)
fn dense_q8_0_one(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let rows = tile(wg).rows;
    let words = p.cols / 4u;
    let blocks = p.cols / 32u;
    var acc = vec4f(0.0);
    for (var k = li; k < words; k += WG) {
        let c = 4u * k;
        let x = vec4f(x[c], x[c + 1u], x[c + 2u], x[c + 3u]);
        let b = k / 8u;
        acc += vec4f(
            dot(q8(w[rows.x * words + k], scales[rows.x * blocks + b]), x),
            dot(q8(w[rows.y * words + k], scales[rows.y * blocks + b]), x),
            dot(q8(w[rows.z * words + k], scales[rows.z * blocks + b]), x),
            dot(q8(w[rows.w * words + k], scales[rows.w * blocks + b]), x),
        );
    }
    finish_one(acc, li, wg);
}

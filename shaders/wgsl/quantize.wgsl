// Per-row absmax int8 quantisation, the kernels' `quantize_row_i8`:
// s = 127 / max(max|x|, 1e-5), q = clamp(round_ties_even(x * s), -128, 127).
// Rows of q are packed four int8 to a word and padded with zeros to
// `q_words` words (the ternary weights' padded width), and each row's sum
// of q is kept for the ternary product (see ternary.wgsl).
// One workgroup per row. `norm_quantize` first takes the row's RMSNorm
// (the kernels' `rmsnorm`, with `weight` and `eps`), as every ternary
// product's input is a normed row: one dispatch instead of two, and the
// normed row never leaves the workgroup.

struct Params {
    cols: u32,
    // floats between rows of x
    x_stride: u32,
    // words per row of q
    q_words: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> q: array<u32>;
@group(0) @binding(3) var<storage, read_write> s: array<f32>;
@group(0) @binding(4) var<storage, read_write> qsum: array<i32>;
@group(0) @binding(5) var<storage, read> weight: array<f32>;

const WG: u32 = 256u;
var<workgroup> top: array<f32, WG>;
var<workgroup> sums: array<i32, WG>;

// The largest |v| of the workgroup's values, in every thread.
fn workgroup_max(v: f32, li: u32) -> f32 {
    top[li] = v;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        if li < w {
            top[li] = max(top[li], top[li + w]);
        }
        workgroupBarrier();
    }
    let m = top[0];
    workgroupBarrier();
    return m;
}

// The sum of the workgroup's values, in every thread.
fn workgroup_sum(v: f32, li: u32) -> f32 {
    top[li] = v;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        if li < w {
            top[li] += top[li + w];
        }
        workgroupBarrier();
    }
    let m = top[0];
    workgroupBarrier();
    return m;
}

// x[c] (normed when `inv` > 0) as the quantiser sees it.
fn value(base: u32, c: u32, inv: f32) -> f32 {
    if inv > 0.0 {
        return x[base + c] * inv * weight[c];
    }
    return x[base + c];
}

// Quantises the row at `base` (normed by `inv` when it is > 0) into row
// `row` of q, s and qsum.
fn quantize_row(row: u32, base: u32, inv: f32, li: u32) {
    var m = 0.0;
    for (var c = li; c < p.cols; c += WG) {
        m = max(m, abs(value(base, c, inv)));
    }
    let scale = 127.0 / max(workgroup_max(m, li), 1e-5);
    var sum = 0i;
    for (var k = li; k < p.q_words; k += WG) {
        var word = 0u;
        for (var b = 0u; b < 4u; b++) {
            let c = k * 4u + b;
            if c < p.cols {
                // WGSL's round() takes ties to even, as the reference does.
                let v = i32(clamp(round(value(base, c, inv) * scale), -128.0, 127.0));
                sum += v;
                word |= (u32(v) & 0xffu) << (8u * b);
            }
        }
        q[row * p.q_words + k] = word;
    }
    sums[li] = sum;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        if li < w {
            sums[li] += sums[li + w];
        }
        workgroupBarrier();
    }
    if li == 0u {
        s[row] = scale;
        qsum[row] = sums[0];
    }
}

@compute @workgroup_size(WG)
fn quantize(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    quantize_row(wg.x, wg.x * p.x_stride, 0.0, li);
}

@compute @workgroup_size(WG)
fn norm_quantize(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let base = wg.x * p.x_stride;
    var sq = 0.0;
    for (var c = li; c < p.cols; c += WG) {
        let v = x[base + c];
        sq += v * v;
    }
    let inv = 1.0 / sqrt(workgroup_sum(sq, li) / f32(p.cols) + p.eps);
    quantize_row(wg.x, base, inv, li);
}

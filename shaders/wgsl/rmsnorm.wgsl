// RMSNorm, the kernels' `rmsnorm`: out = x / sqrt(mean(x²) + eps) · weight,
// one workgroup per row.

struct Params {
    cols: u32,
    x_stride: u32,
    out_stride: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const WG: u32 = 256u;
var<workgroup> sums: array<f32, WG>;

@compute @workgroup_size(WG)
fn rmsnorm(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let row = wg.x;
    let base = row * p.x_stride;
    var sq = 0.0;
    for (var c = li; c < p.cols; c += WG) {
        let v = x[base + c];
        sq += v * v;
    }
    sums[li] = sq;
    workgroupBarrier();
    for (var w = WG / 2u; w > 0u; w >>= 1u) {
        if li < w {
            sums[li] += sums[li + w];
        }
        workgroupBarrier();
    }
    let inv = 1.0 / sqrt(sums[0] / f32(p.cols) + p.eps);
    for (var c = li; c < p.cols; c += WG) {
        out[row * p.out_stride + c] = x[base + c] * inv * weight[c];
    }
}

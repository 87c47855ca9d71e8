// Element-wise steps of a layer. Each thread takes one element; grids are
// two-dimensional so that long rows of many tokens stay within the
// 65,535-workgroup limit of one dimension.

struct Params {
    // elements (gates, add), or rows × heads × half (rope)
    len: u32,
    n_heads: u32,
    head_dim: u32,
    // rotated pairs per head: rot_dim / 2
    half: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;

const WG: u32 = 256u;

fn index(wg: vec3u, groups: vec3u, li: u32) -> u32 {
    return (wg.y * groups.x + wg.x) * WG + li;
}

// x = relu(a)² · b (BitNet b1.58's squared-ReLU gate; a = gate, b = up)
@compute @workgroup_size(WG)
fn relu2_gate(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) groups: vec3u, @builtin(local_invocation_index) li: u32) {
    let i = index(wg, groups, li);
    if i < p.len {
        let r = max(a[i], 0.0);
        x[i] = r * r * b[i];
    }
}

// x = silu(a) · b, silu(g) = g / (1 + e^-g)
@compute @workgroup_size(WG)
fn silu_gate(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) groups: vec3u, @builtin(local_invocation_index) li: u32) {
    let i = index(wg, groups, li);
    if i < p.len {
        let g = a[i];
        x[i] = g / (1.0 + exp(-g)) * b[i];
    }
}

// x += a: the residual add (b is unused)
@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) groups: vec3u, @builtin(local_invocation_index) li: u32) {
    let i = index(wg, groups, li);
    if i < p.len {
        x[i] += a[i];
    }
}

// NEOX (rotate-half) RoPE in place over x (rows, n_heads·head_dim): in each
// head, dims (i, i + half) turn by the angle whose cosine and sine are
// a[2(row·half + i)], a[2(row·half + i) + 1] (computed on the host in f64,
// as the kernels do). One thread per (row, head, i); b is unused.
@compute @workgroup_size(WG)
fn rope(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) groups: vec3u, @builtin(local_invocation_index) li: u32) {
    let j = index(wg, groups, li);
    if j < p.len {
        let i = j % p.half;
        let h = (j / p.half) % p.n_heads;
        let row = j / (p.half * p.n_heads);
        let at = row * p.n_heads * p.head_dim + h * p.head_dim + i;
        let cs = 2u * (row * p.half + i);
        let c = a[cs];
        let s = a[cs + 1u];
        let u = x[at];
        let v = x[at + p.half];
        x[at] = u * c - v * s;
        x[at + p.half] = u * s + v * c;
    }
}

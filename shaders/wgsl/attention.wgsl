// Keys and values into the paged KV memory, and causal attention over it.
//
// The memory of one layer holds blocks of 16 positions: position j of a
// sequence is slot table[j / 16]·16 + j % 16, a slot is one row of kv_dim
// floats. The host gives each row of the step its slot (kv_write) or its
// block table and how many positions it sees (attention).

struct Params {
    n_heads: u32,
    // query heads per kv head
    group: u32,
    head_dim: u32,
    kv_dim: u32,
    // kv_write: elements (rows · kv_dim)
    len: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// kv_write: (rows,) slot of each row; attention: (rows, 2): first entry of
// the row's block table in `tables`, positions it sees
@group(0) @binding(1) var<storage, read> row_info: array<u32>;
@group(0) @binding(2) var<storage, read> tables: array<u32>;
// kv_write: keys, then values (rows, kv_dim); attention: queries
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> v_in: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_mem: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_mem: array<f32>;
@group(0) @binding(7) var<storage, read_write> out: array<f32>;

const WG: u32 = 64u;
const BLOCK: u32 = 16u;
// head_dim up to 4·WG
const DIMS: u32 = 4u;

@compute @workgroup_size(WG)
fn kv_write(@builtin(workgroup_id) wg: vec3u, @builtin(num_workgroups) groups: vec3u, @builtin(local_invocation_index) li: u32) {
    let i = (wg.y * groups.x + wg.x) * WG + li;
    if i < p.len {
        let row = i / p.kv_dim;
        let at = row_info[row] * p.kv_dim + i % p.kv_dim;
        k_mem[at] = q[i];
        v_mem[at] = v_in[i];
    }
}

var<workgroup> seen: u32;
var<workgroup> scores: array<f32, WG>;
var<workgroup> slots: array<u32, WG>;

// One workgroup per (query head, row). Positions go by in chunks of WG:
// each thread scores one position, then every thread folds the chunk into
// its share of the output dims with a running maximum (online softmax).
@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wg: vec3u, @builtin(local_invocation_index) li: u32) {
    let h = wg.x;
    let row = wg.y;
    let hk = h / p.group;
    let q_at = row * p.n_heads * p.head_dim + h * p.head_dim;
    let table = row_info[2u * row];
    if li == 0u {
        seen = row_info[2u * row + 1u];
    }
    let len = workgroupUniformLoad(&seen);
    var m = -3.4e38;
    var l = 0.0;
    var acc: array<f32, DIMS>;
    for (var j0 = 0u; j0 < len; j0 += WG) {
        let j = j0 + li;
        var score = -3.4e38;
        if j < len {
            let slot = tables[table + j / BLOCK] * BLOCK + j % BLOCK;
            slots[li] = slot;
            let k_at = slot * p.kv_dim + hk * p.head_dim;
            var dot = 0.0;
            for (var d = 0u; d < p.head_dim; d++) {
                dot += q[q_at + d] * k_mem[k_at + d];
            }
            score = dot * p.scale;
        }
        scores[li] = score;
        workgroupBarrier();
        let used = min(WG, len - j0);
        var top = m;
        for (var jj = 0u; jj < used; jj++) {
            top = max(top, scores[jj]);
        }
        workgroupBarrier();
        if li < used {
            scores[li] = exp(scores[li] - top);
        }
        workgroupBarrier();
        let fade = exp(m - top);
        l *= fade;
        for (var i = 0u; i < DIMS; i++) {
            acc[i] *= fade;
        }
        for (var jj = 0u; jj < used; jj++) {
            let w = scores[jj];
            l += w;
            let v_at = slots[jj] * p.kv_dim + hk * p.head_dim;
            for (var i = 0u; i < DIMS; i++) {
                let d = li + i * WG;
                if d < p.head_dim {
                    acc[i] += w * v_mem[v_at + d];
                }
            }
        }
        m = top;
        workgroupBarrier();
    }
    for (var i = 0u; i < DIMS; i++) {
        let d = li + i * WG;
        if d < p.head_dim {
            out[q_at + d] = acc[i] / l;
        }
    }
}

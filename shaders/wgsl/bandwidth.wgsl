// Reads a whole buffer once, for the read bandwidth `tern bench --device
// gpu` rates the ternary product against. Thread i sums the vec4 words
// i, i + threads, …, and writes the sum so that no read can be dropped.

struct Params {
    len: u32,
    threads: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<vec4u>;
@group(0) @binding(2) var<storage, read_write> sums: array<u32>;

@compute @workgroup_size(256)
fn read_all(@builtin(global_invocation_id) id: vec3u) {
    var acc = vec4u(0u);
    for (var i = id.x; i < p.len; i += p.threads) {
        acc += data[i];
    }
    sums[id.x] = acc.x + acc.y + acc.z + acc.w;
}

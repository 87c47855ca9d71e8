//! The CPU backend's KV memory: keys and values of every layer, in blocks
//! of [`BLOCK_TOKENS`] positions; which sequence holds which block is the
//! scheduler's business ([`crate::kv::BlockPool`]).

use crate::kv::BLOCK_TOKENS;

/// f32 per 4 KiB page.
const PAGE_F32: usize = 1024;

/// Keys and values of `blocks` blocks for every layer.
pub(crate) struct KvMemory {
    /// k[layer]: (blocks, BLOCK_TOKENS, kv_dim)
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    kv_dim: usize,
    blocks: usize,
}

impl KvMemory {
    /// Room for `blocks` blocks of `layers` layers of `kv_dim`-wide keys and
    /// values. Memory is zeroed lazily by the OS, so an unused block costs
    /// address space, not RAM, and its first write a page fault each 4 KiB
    /// (under virtualisation, tens of microseconds for memory the guest
    /// never used). `prefault` takes those faults here instead, as llama.cpp
    /// does by clearing its cache at start.
    pub fn new(layers: usize, kv_dim: usize, blocks: usize, prefault: bool) -> Self {
        let per_layer = blocks * BLOCK_TOKENS * kv_dim;
        let zeroed = || {
            let mut v = vec![0.0f32; per_layer];
            if prefault {
                // One write per page; black_box keeps the compiler from
                // dropping stores of zero into memory it knows is zero.
                for x in v.iter_mut().step_by(PAGE_F32) {
                    *x = std::hint::black_box(0.0);
                }
            }
            v
        };
        Self { k: (0..layers).map(|_| zeroed()).collect(), v: (0..layers).map(|_| zeroed()).collect(), kv_dim, blocks }
    }

    /// Bytes of keys and values one block holds over every layer.
    pub fn block_bytes(layers: usize, kv_dim: usize) -> usize {
        2 * layers * BLOCK_TOKENS * kv_dim * std::mem::size_of::<f32>()
    }

    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Writes the key and value of position `pos` of the sequence holding
    /// `blocks`, for `layer`.
    pub fn write(&mut self, layer: usize, blocks: &[u32], pos: usize, k: &[f32], v: &[f32]) {
        let b = blocks[pos / BLOCK_TOKENS] as usize;
        let at = (b * BLOCK_TOKENS + pos % BLOCK_TOKENS) * self.kv_dim;
        self.k[layer][at..at + self.kv_dim].copy_from_slice(k);
        self.v[layer][at..at + self.kv_dim].copy_from_slice(v);
    }

    /// The key and value blocks of `blocks` for `layer`, each
    /// (BLOCK_TOKENS, kv_dim).
    pub fn layer_blocks(&self, layer: usize, blocks: &[u32]) -> (Vec<&[f32]>, Vec<&[f32]>) {
        fn pick<'a>(x: &'a [f32], blocks: &[u32], len: usize) -> Vec<&'a [f32]> {
            blocks.iter().map(|&b| &x[b as usize * len..(b as usize + 1) * len]).collect()
        }
        let len = BLOCK_TOKENS * self.kv_dim;
        (pick(&self.k[layer], blocks, len), pick(&self.v[layer], blocks, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_is_read_back_from_its_block_and_row() {
        for prefault in [false, true] {
            let mut kv = KvMemory::new(2, 4, 8, prefault);
            let blocks = [5, 2];
            for pos in 0..20 {
                kv.write(1, &blocks, pos, &[pos as f32; 4], &[-(pos as f32); 4]);
            }
            let (k, v) = kv.layer_blocks(1, &blocks);
            assert_eq!(k[1][4 * 3], 19.0); // position 16 + 3
            assert_eq!(v[0][4 * 5], -5.0);
            let (k0, _) = kv.layer_blocks(0, &blocks);
            assert_eq!(k0[0][4 * 5], 0.0, "layer 0 was not written");
        }
    }
}

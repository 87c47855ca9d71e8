//! The KV cache's bookkeeping: which sequence holds which block of a
//! model's KV memory, with blocks of identical prompt prefixes shared. The
//! keys and values themselves live in the compute backend's memory
//! ([`crate::model::ComputeBackend`]); this module only deals in block ids.
//!
//! 1. A [`BlockPool`] hands out `blocks` blocks of [`BLOCK_TOKENS`]
//!    positions; a sequence owns a [`SeqKv`], the list of its blocks in
//!    position order. [`BlockPool::grow`] gives a sequence blocks for new
//!    positions, or nothing at all when the pool is short, so the scheduler
//!    can wait or preempt instead of failing halfway.
//! 2. Prefix reuse: once a block is full, [`BlockPool::register`] files it
//!    under (its predecessor's identity, its tokens). A later sequence whose
//!    prompt starts with the same tokens takes those blocks by reference
//!    ([`BlockPool::share_prefix`]) instead of computing them. Shared blocks
//!    are full, and a sequence only writes positions after them, so nobody
//!    ever writes a shared block.
//! 3. [`BlockPool::release`] drops a sequence's references. A block nobody
//!    holds goes back to the free list, or, if it is filed for reuse, to an
//!    LRU of cached blocks that allocation evicts oldest first.

use std::collections::{BTreeMap, HashMap};

/// Positions one block holds.
pub const BLOCK_TOKENS: usize = 16;

/// What a filed block is known by: the identity of the block before it
/// (0 for the first) and its tokens. Identities are never reused, so a key
/// names exactly one prefix.
type BlockKey = (u64, [u32; BLOCK_TOKENS]);

/// The blocks of one sequence, in position order.
#[derive(Debug, Default)]
pub struct SeqKv {
    blocks: Vec<u32>,
    /// Leading blocks already filed for reuse (or found filed).
    filed: usize,
}

impl SeqKv {
    /// Its blocks, in position order.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Positions its blocks can hold.
    pub fn capacity(&self) -> usize {
        self.blocks.len() * BLOCK_TOKENS
    }
}

/// Block counts, for statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    pub total: u32,
    /// Held by at least one sequence.
    pub used: u32,
    /// Held by nobody but kept for prefix reuse.
    pub cached: u32,
}

/// Who holds each block of a model's KV memory, and the prefix index.
pub struct BlockPool {
    /// Sequences holding each block.
    refs: Vec<u32>,
    /// Identity of each block's current contents.
    ids: Vec<u64>,
    /// Key of each filed block.
    keys: Vec<Option<BlockKey>>,
    /// Filed blocks by key.
    filed: HashMap<BlockKey, u32>,
    /// Filed blocks nobody holds, by the tick they were released at.
    lru: BTreeMap<u64, u32>,
    /// Tick at which each block entered `lru`.
    lru_tick: Vec<u64>,
    free: Vec<u32>,
    next_id: u64,
    tick: u64,
    used: usize,
}

impl BlockPool {
    /// A pool of `blocks` blocks, all free.
    pub fn new(blocks: usize) -> Self {
        Self {
            refs: vec![0; blocks],
            ids: vec![0; blocks],
            keys: vec![None; blocks],
            filed: HashMap::new(),
            lru: BTreeMap::new(),
            lru_tick: vec![0; blocks],
            free: (0..blocks as u32).rev().collect(),
            next_id: 1,
            tick: 0,
            used: 0,
        }
    }

    pub fn total_blocks(&self) -> usize {
        self.refs.len()
    }

    /// Blocks a sequence could get now: free ones and cached ones.
    pub fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    pub fn usage(&self) -> KvUsage {
        KvUsage { total: self.refs.len() as u32, used: self.used as u32, cached: self.lru.len() as u32 }
    }

    /// Gives `seq` the filed blocks that hold the longest prefix of
    /// `tokens` made of whole blocks; returns the positions they hold.
    /// `seq` must hold no blocks yet.
    pub fn share_prefix(&mut self, seq: &mut SeqKv, tokens: &[u32]) -> usize {
        assert!(seq.blocks.is_empty(), "share_prefix: the sequence already holds blocks");
        let mut parent = 0;
        for chunk in tokens.chunks_exact(BLOCK_TOKENS) {
            let key = (parent, chunk.try_into().expect("chunks_exact gives whole blocks"));
            let Some(&b) = self.filed.get(&key) else { break };
            self.take(b);
            seq.blocks.push(b);
            parent = self.ids[b as usize];
        }
        seq.filed = seq.blocks.len();
        seq.capacity()
    }

    /// Makes `seq` hold at least `positions` positions; all or nothing:
    /// false (and no change) when the pool cannot supply the blocks.
    pub fn grow(&mut self, seq: &mut SeqKv, positions: usize) -> bool {
        let need = positions.div_ceil(BLOCK_TOKENS).saturating_sub(seq.blocks.len());
        if need > self.available() {
            return false;
        }
        for _ in 0..need {
            let b = self.allocate();
            seq.blocks.push(b);
        }
        true
    }

    /// Files every block of `seq` that `computed` positions fill, so later
    /// sequences can share them. `tokens` are the sequence's tokens from
    /// position 0.
    pub fn register(&mut self, seq: &mut SeqKv, tokens: &[u32], computed: usize) {
        let full = (computed / BLOCK_TOKENS).min(seq.blocks.len());
        while seq.filed < full {
            let i = seq.filed;
            let b = seq.blocks[i];
            let parent = if i == 0 { 0 } else { self.ids[seq.blocks[i - 1] as usize] };
            let chunk = &tokens[i * BLOCK_TOKENS..(i + 1) * BLOCK_TOKENS];
            let key = (parent, chunk.try_into().expect("a whole block of tokens"));
            // Another sequence may have filed the same prefix first: keep
            // that copy; this block stays private and is freed on release.
            if self.keys[b as usize].is_none() && !self.filed.contains_key(&key) {
                self.filed.insert(key, b);
                self.keys[b as usize] = Some(key);
            }
            seq.filed += 1;
        }
    }

    /// Drops every block reference of `seq`.
    pub fn release(&mut self, seq: &mut SeqKv) {
        for b in seq.blocks.drain(..) {
            let r = &mut self.refs[b as usize];
            *r -= 1;
            if *r > 0 {
                continue;
            }
            self.used -= 1;
            if self.keys[b as usize].is_some() {
                self.tick += 1;
                self.lru.insert(self.tick, b);
                self.lru_tick[b as usize] = self.tick;
            } else {
                self.free.push(b);
            }
        }
        seq.filed = 0;
    }

    /// Forgets every cached block (keeps the ones sequences hold).
    pub fn clear_cache(&mut self) {
        while let Some((_, b)) = self.lru.pop_first() {
            self.unfile(b);
            self.free.push(b);
        }
    }

    /// A block for new contents: a free one, else the least recently
    /// released cached one.
    fn allocate(&mut self) -> u32 {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.lru.pop_first().expect("allocate: checked against available()");
                self.unfile(b);
                b
            }
        };
        self.ids[b as usize] = self.next_id;
        self.next_id += 1;
        self.refs[b as usize] = 1;
        self.used += 1;
        b
    }

    /// Takes one more reference to a filed block.
    fn take(&mut self, b: u32) {
        let r = &mut self.refs[b as usize];
        if *r == 0 {
            self.lru.remove(&self.lru_tick[b as usize]);
            self.used += 1;
        }
        *r += 1;
    }

    fn unfile(&mut self, b: u32) {
        if let Some(key) = self.keys[b as usize].take() {
            self.filed.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn grow_is_all_or_nothing() {
        let mut pool = BlockPool::new(3);
        let mut a = SeqKv::default();
        assert!(pool.grow(&mut a, 33)); // 3 blocks
        let mut b = SeqKv::default();
        assert!(!pool.grow(&mut b, 1));
        assert_eq!(b.blocks().len(), 0);
        assert_eq!(pool.usage(), KvUsage { total: 3, used: 3, cached: 0 });
        pool.release(&mut a);
        assert_eq!(pool.usage(), KvUsage { total: 3, used: 0, cached: 0 });
        assert!(pool.grow(&mut b, 48));
    }

    #[test]
    fn filed_blocks_are_shared_by_a_later_sequence_with_the_same_prefix() {
        let mut pool = BlockPool::new(16);
        let prompt = tokens(50, 1);
        let mut a = SeqKv::default();
        assert_eq!(pool.share_prefix(&mut a, &prompt), 0);
        assert!(pool.grow(&mut a, 50));
        pool.register(&mut a, &prompt, 50);
        // Same 40 leading tokens, then different ones: two whole blocks match.
        let mut other = prompt[..40].to_vec();
        other.extend(tokens(20, 99));
        let mut b = SeqKv::default();
        assert_eq!(pool.share_prefix(&mut b, &other), 32);
        assert_eq!(b.blocks(), &a.blocks()[..2]);
        // While both hold them they are used once each, not twice.
        assert_eq!(pool.usage().used, 4);
        pool.release(&mut a);
        assert_eq!(pool.usage(), KvUsage { total: 16, used: 2, cached: 1 });
        pool.release(&mut b);
        assert_eq!(pool.usage(), KvUsage { total: 16, used: 0, cached: 3 });
        // A third sequence still finds them after everyone left.
        let mut c = SeqKv::default();
        assert_eq!(pool.share_prefix(&mut c, &prompt), 48);
    }

    #[test]
    fn a_prefix_differing_in_an_early_block_shares_nothing_after_it() {
        let mut pool = BlockPool::new(8);
        let prompt = tokens(48, 1);
        let mut a = SeqKv::default();
        assert!(pool.grow(&mut a, 48));
        pool.register(&mut a, &prompt, 48);
        let mut changed = prompt.clone();
        changed[3] += 1;
        let mut b = SeqKv::default();
        assert_eq!(pool.share_prefix(&mut b, &changed), 0);
        changed = prompt.clone();
        changed[20] += 1;
        let mut c = SeqKv::default();
        assert_eq!(pool.share_prefix(&mut c, &changed), 16);
    }

    #[test]
    fn cached_blocks_are_evicted_oldest_first_when_the_pool_is_short() {
        let mut pool = BlockPool::new(4);
        let (p, q) = (tokens(32, 1), tokens(32, 5));
        for prompt in [&p, &q] {
            let mut s = SeqKv::default();
            assert!(pool.grow(&mut s, 32));
            pool.register(&mut s, prompt, 32);
            pool.release(&mut s);
        }
        assert_eq!(pool.usage(), KvUsage { total: 4, used: 0, cached: 4 });
        let mut s = SeqKv::default();
        assert!(pool.grow(&mut s, 16)); // evicts p's first block
        let mut again = SeqKv::default();
        assert_eq!(pool.share_prefix(&mut again, &p), 0);
        assert_eq!(pool.share_prefix(&mut SeqKv::default(), &q), 32);
    }

    #[test]
    fn identical_blocks_filed_twice_keep_the_first_copy() {
        let mut pool = BlockPool::new(8);
        let prompt = tokens(16, 3);
        let (mut a, mut b) = (SeqKv::default(), SeqKv::default());
        assert!(pool.grow(&mut a, 16) && pool.grow(&mut b, 16));
        pool.register(&mut a, &prompt, 16);
        pool.register(&mut b, &prompt, 16);
        pool.release(&mut b);
        assert_eq!(pool.usage(), KvUsage { total: 8, used: 1, cached: 0 });
        let mut c = SeqKv::default();
        assert_eq!(pool.share_prefix(&mut c, &prompt), 16);
        assert_eq!(c.blocks(), a.blocks());
    }
}

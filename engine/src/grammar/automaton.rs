//! A grammar run over bytes, and the vocabulary tokens each of its states
//! allows.
//!
//! A state of the automaton is a set of stacks, as in llama.cpp's grammar
//! sampler: each stack lists where to go on in the grammar, the innermost
//! place on top, and every top expects a byte. Stacks are interned as
//! (position, parent) nodes and sets of them as numbered states, so the
//! automaton becomes a deterministic one built lazily: a transition, once
//! computed, is a table lookup. A rule ending in a reference to itself
//! (right recursion, which is how repetition is spelled out) returns to the
//! same state, so the states a generation visits repeat and the token set
//! of each is computed once and cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Elem, Grammar, GrammarError};
use crate::tokenizer::Tokenizer;

/// A state of an [`Automaton`].
pub type State = u32;

/// The empty stack: the text so far is complete.
const EMPTY: u32 = 0;
/// No transition yet.
const UNKNOWN: u32 = u32::MAX;
/// The byte is not allowed.
const DEAD: u32 = u32::MAX - 1;
/// Most states one automaton builds (each costs a 1 KiB transition row).
const MAX_STATES: usize = 1 << 17;
/// Most token sets kept per automaton before the cache starts over.
const MAX_MASKS: usize = 2048;
/// Most stacks one transition may open; a grammar so ambiguous that one
/// byte leads to more refuses that byte (the text stays in the grammar).
const MAX_STEP_WORK: usize = 1 << 16;
/// Most stacks one token set may open in all before its walk stops (the
/// tokens not reached yet stay refused), so no grammar holds the
/// scheduler for long.
const MAX_MASK_WORK: usize = 1 << 22;

/// The vocabulary as a trie of token bytes, in preorder, so that a walk can
/// skip every token that starts with a refused prefix.
#[derive(Debug)]
pub struct TokenTrie {
    byte: Vec<u8>,
    /// Depth of each node, 1 for a token's first byte.
    depth: Vec<u16>,
    /// The node after each node's subtree.
    skip: Vec<u32>,
    /// Tokens ending at node `i`: `ids[first[i]..first[i + 1]]`.
    first: Vec<u32>,
    ids: Vec<u32>,
    vocab: usize,
    end_ids: Vec<u32>,
    /// The token that is exactly each byte, where the vocabulary has one.
    byte_token: Vec<Option<u32>>,
    max_depth: usize,
}

impl TokenTrie {
    /// The trie of a tokenizer's text tokens (control tokens are never
    /// allowed under a grammar; end tokens are, once the text is complete).
    pub fn new(tokenizer: &Tokenizer) -> Self {
        let vocab = tokenizer.vocab_size();
        let tokens = (0..vocab as u32)
            .filter(|&id| !tokenizer.is_control(id) && !tokenizer.is_end(id))
            .map(|id| (tokenizer.token_bytes_ref(id).to_vec(), id));
        Self::from_tokens(vocab, tokens, tokenizer.end_ids())
    }

    /// The trie of `(bytes, id)` tokens out of a vocabulary of `vocab` ids.
    pub fn from_tokens(vocab: usize, tokens: impl IntoIterator<Item = (Vec<u8>, u32)>, end_ids: Vec<u32>) -> Self {
        let mut tokens: Vec<(Vec<u8>, u32)> = tokens.into_iter().filter(|(b, _)| !b.is_empty()).collect();
        tokens.sort_unstable();
        let mut t = Self {
            byte: Vec::new(),
            depth: Vec::new(),
            skip: Vec::new(),
            first: Vec::new(),
            ids: Vec::new(),
            vocab,
            end_ids,
            byte_token: vec![None; 256],
            max_depth: 0,
        };
        // The nodes of the current path, and the bytes they spell.
        let mut path: Vec<u32> = Vec::new();
        let mut spelled: &[u8] = &[];
        for (bytes, id) in &tokens {
            let common = spelled.iter().zip(bytes).take_while(|(a, b)| a == b).count().min(path.len());
            for node in path.drain(common..) {
                t.skip[node as usize] = t.byte.len() as u32;
            }
            for (d, &b) in bytes.iter().enumerate().skip(common) {
                path.push(t.byte.len() as u32);
                t.byte.push(b);
                t.depth.push(d as u16 + 1);
                t.skip.push(0);
                t.first.push(t.ids.len() as u32);
            }
            t.ids.push(*id);
            if let [b] = bytes[..] {
                t.byte_token[usize::from(b)].get_or_insert(*id);
            }
            t.max_depth = t.max_depth.max(bytes.len());
            spelled = bytes;
        }
        for node in path {
            t.skip[node as usize] = t.byte.len() as u32;
        }
        t.first.push(t.ids.len() as u32);
        t
    }

    fn tokens_at(&self, node: usize) -> &[u32] {
        &self.ids[self.first[node] as usize..self.first[node + 1] as usize]
    }
}

/// Which tokens may come next: one bit per vocabulary id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask(Vec<u64>);

impl Mask {
    pub fn allows(&self, id: u32) -> bool {
        self.0.get(id as usize / 64).is_some_and(|w| w >> (id % 64) & 1 == 1)
    }

    /// How many tokens it allows.
    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    fn set(&mut self, id: u32) {
        if let Some(w) = self.0.get_mut(id as usize / 64) {
            *w |= 1 << (id % 64);
        }
    }
}

/// A grammar run over a vocabulary; shared by every sequence that uses the
/// same grammar on the same model.
pub struct Automaton {
    grammar: Grammar,
    trie: Arc<TokenTrie>,
    lazy: Mutex<Lazy>,
}

#[derive(Default)]
struct Lazy {
    /// Stack nodes: (position, parent node); node 0 is the empty stack.
    nodes: Vec<(u32, u32)>,
    /// Fewest bytes that finish each node's stack.
    node_min: Vec<u32>,
    node_ids: HashMap<(u32, u32), u32>,
    /// States: sorted sets of nodes whose tops expect a byte (or the empty stack).
    sets: Vec<Box<[u32]>>,
    set_ids: HashMap<Box<[u32]>, u32>,
    /// `next[state * 256 + byte]`.
    next: Vec<u32>,
    masks: HashMap<State, Arc<Mask>>,
    start: State,
    /// Stacks opened since the count was last reset.
    work: usize,
}

impl Automaton {
    /// Fails only for a grammar so ambiguous that its first byte cannot be
    /// worked out within the limit.
    pub fn new(grammar: Grammar, trie: Arc<TokenTrie>) -> Result<Self, GrammarError> {
        let mut lazy = Lazy { nodes: vec![(0, 0)], node_min: vec![0], ..Default::default() };
        let mut out = Vec::new();
        for &alt in &grammar.rules[grammar.root as usize] {
            let n = lazy.node(&grammar, alt, EMPTY);
            lazy.expand(&grammar, n, &mut out);
        }
        if lazy.work > MAX_STEP_WORK {
            return Err(GrammarError("the grammar is too ambiguous: its start opens too many alternatives".into()));
        }
        lazy.start = lazy.intern(out);
        Ok(Self { grammar, trie, lazy: Mutex::new(lazy) })
    }

    fn lazy(&self) -> MutexGuard<'_, Lazy> {
        self.lazy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where text starts.
    pub fn start(&self) -> State {
        self.lazy().start
    }

    /// The state after `bytes`, or `None` if the grammar refuses them.
    pub fn advance(&self, state: State, bytes: &[u8]) -> Option<State> {
        let mut lazy = self.lazy();
        let mut s = state;
        for &b in bytes {
            s = lazy.step(&self.grammar, s, b);
            if s == DEAD {
                return None;
            }
        }
        Some(s)
    }

    /// The text so far is a whole sentence of the grammar.
    pub fn accepts(&self, state: State) -> bool {
        self.lazy().sets[state as usize].first() == Some(&EMPTY)
    }

    /// Some byte may still follow.
    pub fn can_continue(&self, state: State) -> bool {
        self.lazy().sets[state as usize].iter().any(|&n| n != EMPTY)
    }

    /// Fewest bytes that complete the text.
    pub fn bytes_to_finish(&self, state: State) -> u32 {
        let lazy = self.lazy();
        lazy.sets[state as usize].iter().map(|&n| lazy.node_min[n as usize]).min().unwrap_or(0)
    }

    /// The single-byte token of the next byte on a shortest way to a
    /// complete text (for a generation about to run out of tokens).
    pub fn finishing_token(&self, state: State) -> Option<u32> {
        let lazy = self.lazy();
        let set = &lazy.sets[state as usize];
        let &node = set.iter().filter(|&&n| n != EMPTY).min_by_key(|&&n| lazy.node_min[n as usize])?;
        let Elem::Bytes(bytes) = self.grammar.elems[lazy.nodes[node as usize].0 as usize] else { return None };
        self.trie.byte_token[usize::from(bytes.pick()?)]
    }

    /// The tokens that may follow `state`: those whose bytes the grammar
    /// takes, and the end tokens once the text is complete.
    pub fn mask(&self, state: State) -> Arc<Mask> {
        let mut lazy = self.lazy();
        if let Some(m) = lazy.masks.get(&state) {
            return m.clone();
        }
        let t = &*self.trie;
        let mut mask = Mask(vec![0; t.vocab.div_ceil(64)]);
        let mut work = 0;
        let mut at = vec![state; t.max_depth + 1];
        let mut i = 0;
        while i < t.byte.len() {
            let d = usize::from(t.depth[i]);
            let s = lazy.step(&self.grammar, at[d - 1], t.byte[i]);
            work += lazy.work;
            if work > MAX_MASK_WORK {
                tracing::warn!(
                    states = lazy.sets.len(),
                    "a grammar's token set took too long to compute; its walk stopped early"
                );
                break;
            }
            if s == DEAD {
                i = t.skip[i] as usize;
                continue;
            }
            at[d] = s;
            for &id in t.tokens_at(i) {
                mask.set(id);
            }
            i += 1;
        }
        if lazy.sets[state as usize].first() == Some(&EMPTY) {
            for &id in &t.end_ids {
                mask.set(id);
            }
        }
        if lazy.masks.len() >= MAX_MASKS {
            lazy.masks.clear();
        }
        let mask = Arc::new(mask);
        lazy.masks.insert(state, mask.clone());
        mask
    }

    /// How many states it has built.
    pub fn states(&self) -> usize {
        self.lazy().sets.len()
    }
}

impl Lazy {
    /// The node continuing at `pos` with `parent` below; an alternative's
    /// end is its parent (so right recursion does not grow the stack).
    fn node(&mut self, g: &Grammar, pos: u32, parent: u32) -> u32 {
        if g.elems[pos as usize] == Elem::End {
            return parent;
        }
        if let Some(&id) = self.node_ids.get(&(pos, parent)) {
            return id;
        }
        let id = self.nodes.len() as u32;
        self.nodes.push((pos, parent));
        self.node_min.push(g.min_len[pos as usize].saturating_add(self.node_min[parent as usize]));
        self.node_ids.insert((pos, parent), id);
        id
    }

    /// Adds to `out` the nodes `node` stands for once every rule on top is
    /// opened to its alternatives: each expects a byte, or is the empty stack.
    fn expand(&mut self, g: &Grammar, node: u32, out: &mut Vec<u32>) {
        self.work += 1;
        if self.work > MAX_STEP_WORK {
            return;
        }
        if node == EMPTY {
            out.push(EMPTY);
            return;
        }
        let (pos, parent) = self.nodes[node as usize];
        match g.elems[pos as usize] {
            Elem::Bytes(_) => out.push(node),
            Elem::Rule(r) => {
                let cont = self.node(g, pos + 1, parent);
                for &alt in &g.rules[r as usize] {
                    let n = self.node(g, alt, cont);
                    self.expand(g, n, out);
                }
            }
            Elem::End => unreachable!("a node never stands at an alternative's end"),
        }
    }

    fn intern(&mut self, mut set: Vec<u32>) -> State {
        if set.is_empty() {
            return DEAD;
        }
        set.sort_unstable();
        set.dedup();
        let set = set.into_boxed_slice();
        if let Some(&id) = self.set_ids.get(&set) {
            return id;
        }
        if self.sets.len() >= MAX_STATES {
            return DEAD;
        }
        let id = self.sets.len() as u32;
        self.sets.push(set.clone());
        self.set_ids.insert(set, id);
        self.next.resize(self.next.len() + 256, UNKNOWN);
        id
    }

    /// The state after byte `b`; `work` counts the stacks it opened.
    fn step(&mut self, g: &Grammar, state: State, b: u8) -> State {
        self.work = 0;
        let k = state as usize * 256 + usize::from(b);
        let known = self.next[k];
        if known != UNKNOWN {
            return known;
        }
        let mut out = Vec::new();
        for i in 0..self.sets[state as usize].len() {
            let node = self.sets[state as usize][i];
            if node == EMPTY {
                continue;
            }
            let (pos, parent) = self.nodes[node as usize];
            if let Elem::Bytes(set) = g.elems[pos as usize] {
                if set.contains(b) {
                    let n = self.node(g, pos + 1, parent);
                    self.expand(g, n, &mut out);
                }
            }
        }
        let s = if self.work > MAX_STEP_WORK { DEAD } else { self.intern(out) };
        self.next[k] = s;
        s
    }
}

impl Mask {
    /// A mask of `vocab` ids allowing `ids`.
    pub fn of(vocab: usize, ids: &[u32]) -> Self {
        let mut m = Self(vec![0; vocab.div_ceil(64)]);
        for &id in ids {
            m.set(id);
        }
        m
    }
}

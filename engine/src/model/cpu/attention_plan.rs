//! How one step's attention is split over the kernels' threads.
//!
//! Attention runs in pieces of consecutive rows of one item, about one per
//! thread for a long item and at most [`MAX_PIECE_ROWS`] rows each: every
//! cached key and value is then read once for all of a piece's queries.
//! When there are fewer pieces than threads (one decoding sequence), single
//! rows are split by kv heads instead.

use std::ops::Range;

use crate::model::backend::BatchItem;
use crate::model::config::ModelConfig;

/// Most rows of one sequence in one attention call: enough queries to reuse
/// each cached key many times while it is in cache, and a bounded scores
/// buffer (rows × group × positions) for a long prompt read at once.
pub(crate) const MAX_PIECE_ROWS: usize = 64;

/// One attention task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    /// The batch item whose rows these are.
    pub item: usize,
    /// Its first row among the step's rows.
    pub first: usize,
    /// Consecutive rows, from `first`.
    pub rows: usize,
    /// The kv heads (and their query heads) it covers.
    pub heads: Range<usize>,
}

/// The pieces of one step and where each one's output goes.
pub(crate) struct AttentionPlan {
    pub pieces: Vec<Piece>,
    /// End of each piece's output in the step's (n, q_dim) attention buffer.
    pub ends: Vec<usize>,
    q_dim: usize,
    /// Query heads per kv head times the head width: one kv head's span of
    /// a query row.
    head_span: usize,
}

impl AttentionPlan {
    /// The pieces of `items` (at least one with tokens) for `threads` threads.
    pub fn new(items: &[BatchItem], c: &ModelConfig, threads: usize) -> Self {
        let threads = threads.max(1);
        let mut pieces = Vec::new();
        let mut first = 0;
        for (item, it) in items.iter().enumerate() {
            let len = it.tokens.len();
            let per = len.div_ceil(threads).clamp(1, MAX_PIECE_ROWS);
            for at in (0..len).step_by(per) {
                pieces.push(Piece { item, first: first + at, rows: per.min(len - at), heads: 0..c.n_head_kv });
            }
            first += len;
        }
        if pieces.len() < threads {
            let split = threads.div_ceil(pieces.len()).min(c.n_head_kv);
            let per = c.n_head_kv.div_ceil(split);
            pieces = pieces
                .into_iter()
                .flat_map(|p| {
                    let starts: Vec<usize> = if p.rows == 1 { p.heads.clone().step_by(per).collect() } else { vec![0] };
                    starts.into_iter().map(move |h0| {
                        let heads = if p.rows == 1 { h0..(h0 + per).min(c.n_head_kv) } else { 0..c.n_head_kv };
                        Piece { heads, ..p.clone() }
                    })
                })
                .collect();
        }
        let mut plan =
            Self { pieces, ends: Vec::new(), q_dim: c.q_dim(), head_span: c.n_head / c.n_head_kv * c.head_dim };
        plan.ends = plan.pieces.iter().map(|p| plan.region(p).end).collect();
        plan
    }

    /// Where a piece's queries sit in the step's (n, q_dim) query buffer,
    /// and its outputs in the attention buffer: from its first row's first
    /// head to its last row's last head.
    pub fn region(&self, p: &Piece) -> Range<usize> {
        let at = p.first * self.q_dim + p.heads.start * self.head_span;
        at..at + (p.rows - 1) * self.q_dim + p.heads.len() * self.head_span
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::backend::Output;
    use crate::model::config::Activation;

    fn config(n_head: usize, n_head_kv: usize) -> ModelConfig {
        ModelConfig {
            architecture: "bitnet".into(),
            n_vocab: 16,
            n_embd: n_head * 8,
            n_layer: 1,
            n_head,
            n_head_kv,
            head_dim: 8,
            n_ff: 16,
            n_ctx: 512,
            rope_dim: 8,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            activation: Activation::Relu2,
        }
    }

    fn item(tokens: &[u32]) -> BatchItem<'_> {
        BatchItem { blocks: &[], pos: 0, tokens, output: Output::Nothing }
    }

    #[test]
    fn a_long_item_is_split_by_rows_and_the_pieces_cover_the_buffer() {
        let c = config(4, 2);
        let long = [0u32; 150];
        let short = [0u32; 3];
        let plan = AttentionPlan::new(&[item(&long), item(&short)], &c, 2);
        let rows: Vec<(usize, usize, usize)> = plan.pieces.iter().map(|p| (p.item, p.first, p.rows)).collect();
        // 150 rows over 2 threads is 75 per piece, capped at 64.
        assert_eq!(rows, vec![(0, 0, 64), (0, 64, 64), (0, 128, 22), (1, 150, 2), (1, 152, 1)]);
        assert!(plan.pieces.iter().all(|p| p.heads == (0..2)));
        assert_eq!(*plan.ends.last().unwrap(), 153 * c.q_dim());
        for p in &plan.pieces {
            assert_eq!(plan.region(p).len(), p.rows * c.q_dim());
        }
    }

    #[test]
    fn one_decoding_row_is_split_by_kv_heads() {
        let c = config(8, 4);
        let one = [7u32];
        let plan = AttentionPlan::new(&[item(&one)], &c, 2);
        let heads: Vec<Range<usize>> = plan.pieces.iter().map(|p| p.heads.clone()).collect();
        assert_eq!(heads, vec![0..2, 2..4]);
        let span = 2 * 8; // two query heads of width 8 per kv head
        assert_eq!(plan.ends, vec![2 * span, 4 * span]);
    }
}

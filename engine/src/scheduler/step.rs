//! One scheduler step: plan, execute, update.

use std::time::Instant;

use crate::handle::FinishReason;
use crate::model::{BatchItem, Output};
use crate::scheduler::plan::plan;
use crate::scheduler::seq::{After, Seq};
use crate::scheduler::{Mailbox, Scheduler};
use crate::stats::Stats;

/// One sequence's results of a step's forward pass: the logits of its last
/// token, or the hidden states of its rows.
type Rows = Option<Vec<f32>>;

impl Scheduler {
    /// Runs one step of every running sequence.
    pub(super) fn step(&mut self, mailbox: &Mailbox) {
        let stats = &mailbox.stats;
        self.retire_abandoned(stats);
        let demands: Vec<_> = self.running.iter().map(Seq::demand).collect();
        let mut tokens = plan(&demands, self.limits.step_tokens, self.limits.prefill_chunk);
        self.reserve(&mut tokens, mailbox);
        if tokens.iter().all(|&n| n == 0) {
            return;
        }
        Stats::add(&stats.steps, 1);
        let rows = self.execute(&tokens);
        self.update(&tokens, rows, stats);
    }

    /// Drops the sequences whose caller left and ends those whose deadline
    /// passed: out within this step.
    fn retire_abandoned(&mut self, stats: &Stats) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.running.len() {
            let seq = &mut self.running[i];
            let over = if seq.gone() {
                seq.count_gone(stats);
                true
            } else if seq.timed_out(now) {
                seq.finish(FinishReason::Timeout, true, stats);
                true
            } else {
                false
            };
            if over {
                let mut seq = self.running.remove(i);
                seq.model.model.blocks().release(&mut seq.kv);
            } else {
                i += 1;
            }
        }
    }

    /// Gives every planned sequence KV blocks for its new positions,
    /// preempting the most recently admitted sequences when a pool is short.
    fn reserve(&mut self, tokens: &mut Vec<usize>, mailbox: &Mailbox) {
        let stats = &mailbox.stats;
        let mut i = 0;
        while i < self.running.len() {
            if tokens[i] == 0 {
                i += 1;
                continue;
            }
            let need = self.running[i].computed + tokens[i];
            let seq = &mut self.running[i];
            if seq.model.model.blocks().grow(&mut seq.kv, need) {
                i += 1;
                continue;
            }
            let victim = if self.running.len() - 1 > i { self.running.len() - 1 } else { i };
            let mut seq = self.running.remove(victim);
            tokens.remove(victim);
            seq.model.model.blocks().release(&mut seq.kv);
            if victim == 0 {
                // Alone and still short: the pool cannot hold this sequence.
                tracing::warn!(positions = need, "the KV cache cannot hold one sequence; ending it");
                seq.finish(FinishReason::Length, true, stats);
                continue;
            }
            Stats::add(&stats.preempted, 1);
            tracing::debug!(id = seq.id, "preempted to free KV blocks");
            seq.restart();
            mailbox.queue().push_front(seq);
        }
    }

    /// One forward pass per model over its planned sequences; each
    /// sequence's share of the results (index-aligned with `running`).
    fn execute(&self, tokens: &[usize]) -> Vec<Rows> {
        let mut rows: Vec<Rows> = vec![None; self.running.len()];
        let mut models: Vec<&str> = self.running.iter().map(|s| s.model.info.id.as_str()).collect();
        models.sort_unstable();
        models.dedup();
        for id in models {
            let members: Vec<usize> =
                (0..self.running.len()).filter(|&i| tokens[i] > 0 && self.running[i].model.info.id == id).collect();
            let Some(&first) = members.first() else { continue };
            let items: Vec<BatchItem> = members
                .iter()
                .map(|&i| {
                    let s = &self.running[i];
                    let end = s.computed + tokens[i];
                    BatchItem {
                        blocks: s.kv.blocks(),
                        pos: s.computed,
                        tokens: &s.tokens[s.computed..end],
                        output: s.output(end),
                    }
                })
                .collect();
            let model = &self.running[first].model.model;
            let began = Instant::now();
            let out = model.forward(&items);
            tracing::trace!(
                sequences = items.len(),
                tokens = items.iter().map(|it| it.tokens.len()).sum::<usize>(),
                last_position = items.iter().map(|it| it.pos + it.tokens.len()).max().unwrap_or(0),
                ms = began.elapsed().as_secs_f64() * 1e3,
                "step"
            );
            let (vocab, d) = (model.config().n_vocab, model.config().n_embd);
            let (mut logit_row, mut hidden_row) = (0, 0);
            for (&i, item) in members.iter().zip(&items) {
                rows[i] = match item.output {
                    Output::LastLogits => {
                        logit_row += 1;
                        Some(out.logits[(logit_row - 1) * vocab..logit_row * vocab].to_vec())
                    }
                    Output::Hidden => {
                        let n = item.tokens.len();
                        hidden_row += n;
                        Some(out.hidden[(hidden_row - n) * d..hidden_row * d].to_vec())
                    }
                    Output::Nothing | Output::AllLogits => None,
                };
            }
        }
        rows
    }

    /// Advances every sequence past what it ran, files its full blocks,
    /// hands it its results, and retires the finished ones.
    fn update(&mut self, tokens: &[usize], rows: Vec<Rows>, stats: &Stats) {
        let mut next = Vec::with_capacity(self.running.len());
        for ((mut seq, &ran), rows) in self.running.drain(..).zip(tokens).zip(rows) {
            if ran > 0 {
                Stats::add(&stats.prompt_tokens, seq.prompt_share(ran) as u64);
                seq.computed += ran;
                seq.passed_over = 0;
                if seq.reuses_prefixes() {
                    seq.model.model.blocks().register(&mut seq.kv, &seq.tokens, seq.computed);
                }
            } else if seq.remaining() > 1 {
                seq.passed_over += 1;
            }
            match seq.take(rows.as_deref(), stats) {
                After::Running => next.push(seq),
                After::NextInput => {
                    seq.model.model.blocks().release(&mut seq.kv);
                    next.push(seq);
                }
                After::Ended => seq.model.model.blocks().release(&mut seq.kv),
            }
        }
        self.running = next;
    }
}

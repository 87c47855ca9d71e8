//! The scheduler thread: continuous batching over each model's KV blocks.
//!
//! Between steps, waiting sequences whose caller left or whose deadline
//! passed are dropped; running batch work gives its slot to interactive
//! work waiting for one (back to the front of its lane, its filed blocks
//! kept for a cheap restart); then waiting sequences are admitted in queue
//! order (interactive before batch, first come first served) while there is
//! a running slot and KV room for their prompt, after taking any cached
//! prefix blocks their prompt starts with. Each step then runs in three
//! parts (see [`step`]):
//! 1. **plan**: every decoding sequence gets one token, prompts share the
//!    rest of the budget ([`plan::plan`]), and each planned sequence gets
//!    KV blocks for its new positions, the most recently admitted being
//!    preempted (back to the front of the queue) when a pool is short;
//! 2. **execute**: one forward pass per model over every planned token;
//! 3. **update**: sequences advance, file their full blocks for prefix
//!    reuse, sample from their logits (or sum hidden states, for
//!    embeddings), and leave when done.
//!
//! Every op of the pass is per row, so a sequence's tokens are the same
//! whatever else shares its step.

mod plan;
mod queue;
mod seq;
mod step;

use std::sync::atomic::Ordering;
use std::sync::{Condvar, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

pub(crate) use queue::Queue;
pub(crate) use seq::{Guide, Seq, SeqSpec};

use crate::error::EngineError;
use crate::handle::FinishReason;
use crate::kv::BLOCK_TOKENS;
use crate::request::Priority;
use crate::stats::Stats;

/// How the scheduler is set up (from the engine's configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_running: usize,
    /// Tokens one step runs: decodes plus prompt chunks.
    pub step_tokens: usize,
    /// Most prompt tokens one step gives a prompt that cannot finish in it;
    /// a prompt whose rest fits the step's budget runs whole.
    pub prefill_chunk: usize,
}

/// What the engine and the scheduler thread share: the queue the engine
/// posts sequences to, the wakeup, and the statistics.
#[derive(Default)]
pub(crate) struct Mailbox {
    pub queue: Mutex<Queue>,
    pub wake: Condvar,
    pub stats: Stats,
}

impl Mailbox {
    pub fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) struct Scheduler {
    mailbox: Weak<Mailbox>,
    limits: Limits,
    /// Running sequences in admission order.
    running: Vec<Seq>,
}

impl Scheduler {
    pub fn new(mailbox: Weak<Mailbox>, limits: Limits) -> Self {
        Self { mailbox, limits, running: Vec::new() }
    }

    /// Runs until every engine handle is gone.
    pub fn run(mut self) {
        while let Some(mailbox) = self.mailbox.upgrade() {
            if !self.turn(&mailbox) {
                self.idle(&mailbox);
            }
        }
    }

    /// One turn of the loop: admission, then a step. Returns false, having
    /// done nothing, when nothing runs or waits.
    pub fn turn(&mut self, mailbox: &Mailbox) -> bool {
        {
            let mut queue = mailbox.queue();
            if let Some(error) = queue.closed.clone() {
                self.fail_all(&mut queue, &error, &mailbox.stats);
                self.publish(&queue, &mailbox.stats);
            }
            if self.running.is_empty() && queue.is_empty() {
                return false;
            }
            self.prune_queue(&mut queue, &mailbox.stats);
            self.admit(&mut queue, &mailbox.stats);
            self.publish(&queue, &mailbox.stats);
        }
        self.step(mailbox);
        let queue = mailbox.queue();
        self.publish(&queue, &mailbox.stats);
        true
    }

    /// Sleeps until work arrives, waking now and then to notice that every
    /// engine handle is gone.
    fn idle(&self, mailbox: &Mailbox) {
        let queue = mailbox.queue();
        if self.running.is_empty() && queue.is_empty() {
            drop(mailbox.wake.wait_timeout(queue, Duration::from_millis(200)));
        }
    }

    /// Ends every running and queued sequence with `error`, freeing its blocks.
    fn fail_all(&mut self, queue: &mut Queue, error: &EngineError, stats: &Stats) {
        let mut ended: Vec<Seq> = self.running.drain(..).collect();
        while let Some(seq) = queue.pop_front() {
            ended.push(seq);
        }
        for mut seq in ended {
            seq.fail(error, stats);
            seq.model.model.blocks().release(&mut seq.kv);
        }
    }

    /// Drops queued sequences whose caller left; ends those whose deadline passed.
    fn prune_queue(&mut self, queue: &mut Queue, stats: &Stats) {
        let now = Instant::now();
        queue.retain(|s| {
            if s.gone() {
                s.count_gone(stats);
                return false;
            }
            if s.timed_out(now) {
                s.finish(FinishReason::Timeout, false, stats);
                return false;
            }
            true
        });
    }

    /// Moves queued sequences to running while slots and KV room allow,
    /// after batch work made way for interactive work.
    fn admit(&mut self, queue: &mut Queue, stats: &Stats) {
        self.yield_batch_slots(queue, stats);
        while self.running.len() < self.limits.max_running.max(1) {
            let Some(mut seq) = queue.pop_front() else { break };
            let model = seq.model.clone();
            let mut pool = model.model.blocks();
            // The last token always runs, so its logits exist.
            let cached = if seq.reuses_prefixes() {
                pool.share_prefix(&mut seq.kv, &seq.tokens[..seq.tokens.len() - 1])
            } else {
                0
            };
            let need = seq.tokens.len().div_ceil(BLOCK_TOKENS) - seq.kv.blocks().len();
            // Keep a block per running sequence free for their next tokens.
            if need + self.running.len() > pool.available() && !self.running.is_empty() {
                pool.release(&mut seq.kv);
                queue.push_front(seq);
                break;
            }
            drop(pool);
            seq.computed = cached;
            seq.first_admitted(cached, stats);
            self.running.push(seq);
        }
    }

    /// Sends the most recently admitted running batch sequences back to
    /// their lane, one for each interactive sequence no free slot awaits,
    /// so that batch work never keeps someone watching waiting.
    fn yield_batch_slots(&mut self, queue: &mut Queue, stats: &Stats) {
        let free = self.limits.max_running.max(1).saturating_sub(self.running.len());
        for _ in free..queue.lane_len(Priority::Interactive) {
            let Some(i) = self.running.iter().rposition(|s| s.priority == Priority::Batch) else { break };
            let mut seq = self.running.remove(i);
            seq.model.model.blocks().release(&mut seq.kv);
            Stats::add(&stats.preempted, 1);
            tracing::debug!(id = seq.id, "batch work preempted for interactive work");
            seq.restart();
            queue.push_front(seq);
        }
    }

    /// Publishes the counts `status()` reports.
    fn publish(&self, queue: &Queue, stats: &Stats) {
        stats.running.store(self.running.len() as u32, Ordering::Relaxed);
        stats.waiting.store(queue.len() as u32, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;

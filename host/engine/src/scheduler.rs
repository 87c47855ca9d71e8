//! The scheduler thread: continuous batching over a shared KV pool.
//!
//! Every step:
//! 1. Waiting sequences whose client left or whose deadline passed are
//!    dropped; then waiting sequences are admitted in queue order
//!    (interactive before batch, first come first served) while there is a
//!    running slot and KV room for their prompt, after taking any cached
//!    prefix blocks their prompt starts with.
//! 2. A plan gives every decoding sequence one token and spends the rest of
//!    the step's token budget on prompts, shortest remaining first, so a
//!    short prompt never waits behind a long one. A prompt that cannot end
//!    in this step only gets tokens when no prompt ends in it, or when it
//!    has been passed over for [`STARVATION_STEPS`] steps.
//! 3. Each planned sequence gets KV blocks for its new positions; when the
//!    pool is short, the most recently admitted sequence is preempted (its
//!    blocks released, back to the front of its queue; it recomputes its
//!    tokens, often from the prefix cache, when readmitted).
//! 4. One forward pass per model runs every planned token; each sequence
//!    whose prompt is done samples its next token from its own logits.
//!    Every op of the pass is per row, so a sequence's tokens are the same
//!    whatever else shares its step.

use crate::engine::{EngineError, FinishReason, Finished, GenShared, LoadedModel, Priority, Usage};
use crate::kv::{KvPool, SeqKv, BLOCK_TOKENS};
use crate::model::{BatchItem, Logits};
use crate::sampler::Sampler;
use crate::stats::Stats;
use crate::tokenizer::Utf8Stream;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// Steps a prompt that cannot finish in one step may be passed over before
/// it gets a share of the budget anyway.
const STARVATION_STEPS: u32 = 4;

/// How the scheduler is set up (from the engine's configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_running: usize,
    /// Tokens one step runs: decodes plus prompt chunks.
    pub step_tokens: usize,
    /// Most prompt tokens one step gives a prompt that cannot finish in it;
    /// a prompt whose rest fits the step's budget runs whole.
    pub prefill_chunk: usize,
    /// Bytes of KV cache per model.
    pub kv_memory: usize,
}

/// A generation as the scheduler runs it.
pub(crate) struct Seq {
    pub id: u64,
    pub shared: Arc<GenShared>,
    pub model: Arc<LoadedModel>,
    pub priority: Priority,
    pub sampler: Sampler,
    pub utf8: Utf8Stream,
    pub stop: StopMatcher,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<u32>,
    pub n_prompt: usize,
    pub max_tokens: u32,
    pub generated: u32,
    pub deadline: Option<Instant>,
    pub admitted: Instant,
    /// KV blocks and how many positions of `tokens` they hold.
    pub kv: SeqKv,
    pub computed: usize,
    /// Prompt tokens found in the prefix cache at first admission.
    pub cached_tokens: Option<u32>,
    pub started: Option<Instant>,
    pub prompt_done: Option<Instant>,
    pub last_token: Option<Instant>,
    /// Consecutive steps its prompt was passed over.
    pub passed_over: u32,
}

impl Seq {
    fn usage(&self) -> Usage {
        let now = Instant::now();
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
        let started = self.started.unwrap_or(now);
        let done = self.prompt_done.unwrap_or(now);
        Usage {
            prompt_tokens: self.n_prompt as u32,
            completion_tokens: self.generated,
            cached_tokens: self.cached_tokens.unwrap_or(0),
            queue_ms: ms(self.admitted, started),
            prompt_ms: ms(started, done),
            generation_ms: ms(done, now),
        }
    }

    /// Ends the generation; `flush` releases text held back for UTF-8 or
    /// stop-string matching (not after a stop string, where it is cut off).
    fn finish(&mut self, reason: FinishReason, flush: bool, stats: &Stats) {
        let mut tail = String::new();
        if flush {
            let rest = self.utf8.flush();
            let (shown, _) = self.stop.push(&rest);
            tail = shown + &self.stop.flush();
        }
        let usage = self.usage();
        self.shared.update(|s| {
            s.append(&tail);
            s.finished.get_or_insert(Finished { reason, usage });
        });
        Stats::add(&stats.requests, 1);
        if matches!(reason, FinishReason::Cancelled | FinishReason::Timeout) {
            Stats::add(&stats.cancelled, 1);
        }
        let now = Instant::now();
        stats.observe(|l| l.request.observe(now - self.admitted));
        if let Some(started) = self.started {
            stats.record_service(now - started);
        }
    }

    fn gone(&self) -> bool {
        self.shared.cancelled.load(Ordering::Acquire)
    }

    fn timed_out(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Tokens of its prompt (or of its recomputation after preemption)
    /// still to run before it can sample.
    fn remaining(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// Takes the sampled `token`; returns false once the sequence is over.
    fn accept(&mut self, token: u32, stats: &Stats) -> bool {
        let now = Instant::now();
        match self.last_token {
            None => stats.observe(|l| l.time_to_first_token.observe(now - self.admitted)),
            Some(t) => stats.observe(|l| l.inter_token.observe(now - t)),
        }
        self.last_token = Some(now);
        self.prompt_done.get_or_insert(now);
        let tok = &self.model.tokenizer;
        if tok.is_end(token) {
            self.finish(FinishReason::Stop, true, stats);
            return false;
        }
        self.tokens.push(token);
        self.generated += 1;
        Stats::add(&stats.generated_tokens, 1);
        if !tok.is_control(token) {
            let text = self.utf8.push(&tok.token_bytes(token));
            let (shown, stopped) = self.stop.push(&text);
            if !shown.is_empty() {
                self.shared.update(|s| s.append(&shown));
            }
            if stopped {
                self.finish(FinishReason::Stop, false, stats);
                return false;
            }
        }
        let full = self.tokens.len() >= self.model.backend.config().n_ctx;
        if full || (self.max_tokens > 0 && self.generated >= self.max_tokens) {
            self.finish(FinishReason::Length, true, stats);
            return false;
        }
        true
    }
}

/// Holds back generated text that might be the start of a stop string.
pub(crate) struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// Adds text; returns what can be shown and whether a stop string appeared.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest tail that could still grow into a stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).rev().filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|prefix| self.held.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Sequences waiting to start, one queue per priority.
#[derive(Default)]
pub(crate) struct Queue {
    interactive: VecDeque<Seq>,
    batch: VecDeque<Seq>,
    /// Set by [`crate::Engine::abort_all`]: every generation, running or
    /// queued, ends with this error, and no new one is admitted.
    pub closed: Option<EngineError>,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.interactive.len() + self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push_back(&mut self, seq: Seq) {
        self.lane(seq.priority).push_back(seq);
    }

    fn push_front(&mut self, seq: Seq) {
        self.lane(seq.priority).push_front(seq);
    }

    fn lane(&mut self, p: Priority) -> &mut VecDeque<Seq> {
        match p {
            Priority::Interactive => &mut self.interactive,
            Priority::Batch => &mut self.batch,
        }
    }

    fn front(&self) -> Option<&Seq> {
        self.interactive.front().or(self.batch.front())
    }

    fn pop_front(&mut self) -> Option<Seq> {
        self.interactive.pop_front().or_else(|| self.batch.pop_front())
    }

    /// Sequences that start before the one with `id`, if it is queued.
    pub fn position(&self, id: u64) -> Option<usize> {
        self.interactive.iter().chain(&self.batch).position(|s| s.id == id)
    }

    fn retain(&mut self, mut keep: impl FnMut(&mut Seq) -> bool) {
        self.interactive.retain_mut(&mut keep);
        self.batch.retain_mut(&mut keep);
    }
}

/// What the scheduler shares with the engine handles.
pub(crate) struct Shared {
    pub queue: Mutex<Queue>,
    pub wake: Condvar,
    pub stats: Stats,
}

pub(crate) struct Scheduler {
    shared: Weak<Shared>,
    limits: Limits,
    /// Running sequences in admission order.
    running: Vec<Seq>,
    /// One KV pool per model id, made when the model first runs.
    pools: HashMap<String, KvPool>,
}

impl Scheduler {
    pub fn new(shared: Weak<Shared>, limits: Limits) -> Self {
        Self { shared, limits, running: Vec::new(), pools: HashMap::new() }
    }

    pub fn run(mut self) {
        loop {
            let Some(shared) = self.shared.upgrade() else { return };
            {
                let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(error) = queue.closed.clone() {
                    self.fail_all(&mut queue, &error, &shared.stats);
                }
                if self.running.is_empty() && queue.is_empty() {
                    // Idle: sleep until work arrives; wake now and then to
                    // notice that every engine handle is gone.
                    let wait = shared.wake.wait_timeout(queue, Duration::from_millis(200));
                    drop(wait);
                    continue;
                }
                self.prune_queue(&mut queue, &shared.stats);
                self.admit(&mut queue, &shared.stats);
                self.publish(&queue, &shared.stats);
            }
            self.step(&shared);
            let queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            self.publish(&queue, &shared.stats);
        }
    }

    /// Ends every running and queued sequence with `error`, freeing its blocks.
    fn fail_all(&mut self, queue: &mut Queue, error: &EngineError, stats: &Stats) {
        let mut ended: Vec<Seq> = self.running.drain(..).collect();
        while let Some(seq) = queue.pop_front() {
            ended.push(seq);
        }
        for mut seq in ended {
            seq.shared.update(|s| {
                s.error.get_or_insert_with(|| error.clone());
            });
            Stats::add(&stats.requests, 1);
            // A queued sequence may never have run: its model has no pool yet.
            if let Some(pool) = self.pools.get_mut(&seq.model.info.id) {
                pool.release(&mut seq.kv);
            }
        }
        self.publish(queue, stats);
    }

    /// Drops queued sequences whose client left; ends those whose deadline passed.
    fn prune_queue(&mut self, queue: &mut Queue, stats: &Stats) {
        let now = Instant::now();
        queue.retain(|s| {
            if s.gone() {
                Stats::add(&stats.cancelled, 1);
                Stats::add(&stats.requests, 1);
                return false;
            }
            if s.timed_out(now) {
                s.finish(FinishReason::Timeout, false, stats);
                return false;
            }
            true
        });
    }

    /// Moves queued sequences to running while slots and KV room allow.
    fn admit(&mut self, queue: &mut Queue, stats: &Stats) {
        while self.running.len() < self.limits.max_running.max(1) {
            let Some(next) = queue.front() else { break };
            let pool = pool_for(&mut self.pools, &next.model, self.limits.kv_memory);
            let mut seq = queue.pop_front().expect("front() was Some");
            // The last token always runs, so its logits exist.
            let shared = pool.share_prefix(&mut seq.kv, &seq.tokens[..seq.tokens.len() - 1]);
            let need = seq.tokens.len().div_ceil(BLOCK_TOKENS) - seq.kv.blocks().len();
            // Keep a block per running sequence free for their next tokens.
            if need + self.running.len() > pool.available() && !self.running.is_empty() {
                pool.release(&mut seq.kv);
                queue.push_front(seq);
                break;
            }
            seq.computed = shared;
            if seq.cached_tokens.is_none() {
                seq.cached_tokens = Some(shared as u32);
                if shared > 0 {
                    Stats::add(&stats.prefix_hits, 1);
                    Stats::add(&stats.cached_tokens, shared as u64);
                }
                let now = Instant::now();
                seq.started = Some(now);
                stats.observe(|l| l.queue_time.observe(now - seq.admitted));
            }
            self.running.push(seq);
        }
    }

    /// Runs one step of every running sequence.
    fn step(&mut self, shared: &Shared) {
        let stats = &shared.stats;
        let now = Instant::now();
        // Clients gone or deadlines passed: out within this step.
        let mut i = 0;
        while i < self.running.len() {
            let seq = &mut self.running[i];
            let over = if seq.gone() {
                Stats::add(&stats.cancelled, 1);
                Stats::add(&stats.requests, 1);
                true
            } else if seq.timed_out(now) {
                seq.finish(FinishReason::Timeout, true, stats);
                true
            } else {
                false
            };
            if over {
                let mut seq = self.running.remove(i);
                self.pool(&seq.model).release(&mut seq.kv);
            } else {
                i += 1;
            }
        }
        let mut plan = self.plan();
        self.reserve(&mut plan, shared);
        if plan.iter().all(|&n| n == 0) {
            return;
        }
        Stats::add(&stats.steps, 1);
        // One forward pass per model over its planned sequences.
        let mut models: Vec<String> = self.running.iter().map(|s| s.model.info.id.clone()).collect();
        models.sort();
        models.dedup();
        let mut sampled: Vec<Option<usize>> = vec![None; self.running.len()];
        let mut logits_of: Vec<Vec<f32>> = Vec::new();
        for id in &models {
            let members: Vec<usize> =
                (0..self.running.len()).filter(|&i| plan[i] > 0 && &self.running[i].model.info.id == id).collect();
            if members.is_empty() {
                continue;
            }
            let items: Vec<BatchItem> = members
                .iter()
                .map(|&i| {
                    let s = &self.running[i];
                    let end = s.computed + plan[i];
                    BatchItem {
                        blocks: s.kv.blocks(),
                        pos: s.computed,
                        tokens: &s.tokens[s.computed..end],
                        logits: if end == s.tokens.len() { Logits::Last } else { Logits::None },
                    }
                })
                .collect();
            let wants: Vec<bool> = items.iter().map(|it| it.logits == Logits::Last).collect();
            let model = self.running[members[0]].model.clone();
            let pool = self.pools.get_mut(id).expect("reserve() made the pool");
            let began = Instant::now();
            let logits = model.backend.forward_batch(pool, &items);
            tracing::trace!(
                sequences = items.len(),
                tokens = items.iter().map(|it| it.tokens.len()).sum::<usize>(),
                last_position = items.iter().map(|it| it.pos + it.tokens.len()).max().unwrap_or(0),
                ms = began.elapsed().as_secs_f64() * 1e3,
                "step"
            );
            let vocab = model.backend.config().n_vocab;
            let mut row = 0;
            for (&i, want) in members.iter().zip(wants) {
                if want {
                    sampled[i] = Some(logits_of.len());
                    logits_of.push(logits[row * vocab..(row + 1) * vocab].to_vec());
                    row += 1;
                }
            }
        }
        // Advance, sample, and retire finished sequences.
        let mut next = Vec::with_capacity(self.running.len());
        for (i, mut seq) in self.running.drain(..).enumerate() {
            let pool = self.pools.get_mut(&seq.model.info.id).expect("every running model has a pool");
            if plan[i] > 0 {
                let prompt_left = seq.n_prompt.saturating_sub(seq.computed);
                Stats::add(&stats.prompt_tokens, plan[i].min(prompt_left) as u64);
                seq.computed += plan[i];
                seq.passed_over = 0;
                pool.register(&mut seq.kv, &seq.tokens, seq.computed);
            } else if seq.remaining() > 1 {
                seq.passed_over += 1;
            }
            let alive = match sampled[i] {
                Some(r) => {
                    let token = seq.sampler.sample(&logits_of[r], &seq.tokens);
                    seq.accept(token, stats)
                }
                None => true,
            };
            if alive {
                next.push(seq);
            } else {
                pool.release(&mut seq.kv);
            }
        }
        self.running = next;
    }

    /// Tokens each running sequence runs this step (index-aligned).
    fn plan(&self) -> Vec<usize> {
        let mut plan = vec![0; self.running.len()];
        let mut left = self.limits.step_tokens.max(1);
        // Decoding sequences: one token each, always.
        for (i, s) in self.running.iter().enumerate() {
            if s.remaining() == 1 && s.computed > 0 {
                plan[i] = 1;
                left = left.saturating_sub(1);
            }
        }
        // Prompts: starved ones first, then interactive before batch,
        // shortest remaining first.
        let mut prompts: Vec<usize> = (0..self.running.len()).filter(|&i| plan[i] == 0).collect();
        prompts.sort_by_key(|&i| {
            let s = &self.running[i];
            (s.passed_over < STARVATION_STEPS, s.priority, s.remaining(), s.admitted)
        });
        let chunk = self.limits.prefill_chunk.max(1);
        let mut ends_here = false;
        for i in prompts {
            let s = &self.running[i];
            // A short prompt finishes in one step (and then holds the long
            // ones back): its first token does not wait for their chunks.
            let take = if s.remaining() <= left { s.remaining() } else { s.remaining().min(chunk).min(left) };
            if take == 0 {
                // A prompt always moves when the step would otherwise be empty.
                if plan.iter().all(|&n| n == 0) {
                    plan[i] = s.remaining().min(chunk);
                }
                break;
            }
            let ends = take == s.remaining();
            if !ends && ends_here && s.passed_over < STARVATION_STEPS {
                continue;
            }
            ends_here |= ends;
            plan[i] = take;
            left -= take;
        }
        plan
    }

    /// Gives every planned sequence KV blocks for its new positions,
    /// preempting the most recently admitted sequences when the pool is short.
    fn reserve(&mut self, plan: &mut Vec<usize>, shared: &Shared) {
        let stats = &shared.stats;
        let mut i = 0;
        while i < self.running.len() {
            if plan[i] == 0 {
                i += 1;
                continue;
            }
            let need = self.running[i].computed + plan[i];
            let model = self.running[i].model.clone();
            let pool = pool_for(&mut self.pools, &model, self.limits.kv_memory);
            if pool.grow(&mut self.running[i].kv, need) {
                i += 1;
                continue;
            }
            let victim = if self.running.len() - 1 > i { self.running.len() - 1 } else { i };
            let mut seq = self.running.remove(victim);
            plan.remove(victim);
            self.pool(&seq.model).release(&mut seq.kv);
            if victim == 0 {
                // Alone and still short: the pool cannot hold this sequence.
                tracing::warn!(positions = need, "the KV cache cannot hold one sequence; ending it");
                seq.finish(FinishReason::Length, true, stats);
                continue;
            }
            Stats::add(&stats.preempted, 1);
            tracing::debug!(generated = seq.generated, "preempted to free KV blocks");
            seq.computed = 0;
            seq.passed_over = 0;
            shared.queue.lock().unwrap_or_else(|p| p.into_inner()).push_front(seq);
        }
    }

    fn pool(&mut self, model: &LoadedModel) -> &mut KvPool {
        self.pools.get_mut(&model.info.id).expect("a sequence of this model ran before")
    }

    /// Publishes the counts `status()` reports.
    fn publish(&self, queue: &Queue, stats: &Stats) {
        stats.running.store(self.running.len() as u32, Ordering::Relaxed);
        stats.waiting.store(queue.len() as u32, Ordering::Relaxed);
        let (mut total, mut used, mut cached) = (0, 0, 0);
        for pool in self.pools.values() {
            let u = pool.usage();
            total += u.total;
            used += u.used;
            cached += u.cached;
        }
        stats.kv_total.store(total, Ordering::Relaxed);
        stats.kv_used.store(used, Ordering::Relaxed);
        stats.kv_cached.store(cached, Ordering::Relaxed);
    }
}

/// The KV pool of a model, made on first use with `kv_memory` bytes
/// (at least one full context).
fn pool_for<'a>(pools: &'a mut HashMap<String, KvPool>, model: &LoadedModel, kv_memory: usize) -> &'a mut KvPool {
    pools.entry(model.info.id.clone()).or_insert_with(|| {
        let c = model.backend.config();
        let per_block = KvPool::block_bytes(c.n_layer, c.kv_dim());
        let blocks = (kv_memory / per_block).max(c.n_ctx.div_ceil(BLOCK_TOKENS));
        tracing::info!(model = %model.info.id, blocks, block_tokens = BLOCK_TOKENS,
            mib = (blocks * per_block) >> 20, "KV pool");
        KvPool::new(c.n_layer, c.kv_dim(), blocks)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_matcher_holds_back_possible_prefix_and_cuts_at_stop() {
        let mut m = StopMatcher::new(vec!["\nUser:".into()]);
        assert_eq!(m.push("Hello"), ("Hello".into(), false));
        assert_eq!(m.push(" there\nUs"), (" there".into(), false));
        assert_eq!(m.push("er: hi"), ("".into(), true));
    }

    #[test]
    fn stop_matcher_releases_text_that_stops_matching() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN"), ("".into(), false));
        assert_eq!(m.push("D?"), ("".into(), true));
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("EN"), ("".into(), false));
        assert_eq!(m.push("ough"), ("ENough".into(), false));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn stop_matcher_is_safe_with_multibyte_stops() {
        let mut m = StopMatcher::new(vec!["日本".into()]);
        assert_eq!(m.push("a日"), ("a".into(), false));
        assert_eq!(m.push("x"), ("日x".into(), false));
    }
}

//! A sequence as the scheduler runs it: the tokens it runs, its KV blocks,
//! its clocks, and its task: a generation that samples and streams text,
//! or an embedding request that sums hidden states.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::error::EngineError;
use crate::grammar::automaton::{Automaton, State};
use crate::handle::{
    Embedding, EmbeddingSlot, FinishReason, Finished, GenerationSlot, TokenLogprob, TopLogprob, Usage,
};
use crate::kv::SeqKv;
use crate::loaded::LoadedModel;
use crate::model::Output;
use crate::request::Priority;
use crate::sampler::{self, Sampler, SamplingParams};
use crate::scheduler::plan::Demand;
use crate::stats::Stats;
use crate::text::TextOutput;

/// What the scheduler knows of a request before it runs.
pub(crate) struct SeqSpec {
    pub id: u64,
    pub model: Arc<LoadedModel>,
    pub priority: Priority,
    pub deadline: Option<Instant>,
}

/// A sequence in the queue or running.
pub(crate) struct Seq {
    pub id: u64,
    pub model: Arc<LoadedModel>,
    pub priority: Priority,
    /// What it runs: the prompt then the generated tokens, or the input
    /// being embedded.
    pub tokens: Vec<u32>,
    /// KV blocks, and how many positions of `tokens` they hold.
    pub kv: SeqKv,
    pub computed: usize,
    pub deadline: Option<Instant>,
    pub admitted: Instant,
    /// When it first started running.
    pub started: Option<Instant>,
    /// Consecutive steps its prompt was passed over.
    pub passed_over: u32,
    pub task: Task,
}

/// What a sequence is for.
pub(crate) enum Task {
    Generate(Box<GenerateTask>),
    Embed(EmbedTask),
}

/// A generation's own state.
pub(crate) struct GenerateTask {
    /// Top alternatives to report with each token's log-probability, if asked.
    logprobs: Option<u8>,
    slot: Arc<GenerationSlot>,
    sampler: Sampler,
    output: TextOutput,
    n_prompt: usize,
    max_tokens: u32,
    generated: u32,
    /// Prompt tokens found in the prefix cache at first admission.
    cached_tokens: Option<u32>,
    prompt_done: Option<Instant>,
    last_token: Option<Instant>,
    /// Where a constrained generation's text stands in its grammar.
    guide: Option<Guide>,
}

/// A constrained generation's automaton and its state in it.
pub(crate) struct Guide {
    automaton: Arc<Automaton>,
    state: State,
}

impl Guide {
    pub fn new(automaton: Arc<Automaton>) -> Self {
        let state = automaton.start();
        Self { automaton, state }
    }

    /// `token`, unless it leaves fewer than `budget - 1` tokens to finish
    /// the text: then the end, if the text is complete, else the next byte
    /// of the shortest finish (one byte per token, so a text that could
    /// finish in its budget always does).
    fn within_budget(&self, token: u32, budget: usize, tokenizer: &crate::tokenizer::Tokenizer) -> u32 {
        if tokenizer.is_end(token) {
            return token;
        }
        let a = &self.automaton;
        match a.advance(self.state, tokenizer.token_bytes_ref(token)) {
            Some(after) if (a.bytes_to_finish(after) as usize) < budget => token,
            // Complete already: end here rather than start what cannot finish.
            _ if a.accepts(self.state) => tokenizer.eos().or(tokenizer.eot()).unwrap_or(token),
            _ => a.finishing_token(self.state).unwrap_or(token),
        }
    }
}

/// An embedding request's own state: its inputs are embedded one after
/// another in this one sequence.
pub(crate) struct EmbedTask {
    slot: Arc<EmbeddingSlot>,
    /// Inputs after the one in `tokens`.
    rest: VecDeque<Vec<u32>>,
    done: Vec<Embedding>,
    /// Σ of the current input's hidden rows so far, per dimension.
    sum: Vec<f64>,
}

/// What became of a sequence after its share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    Running,
    /// Over: its blocks go back.
    Ended,
    /// It moved on to its next input: its blocks go back and it starts again.
    NextInput,
}

impl Seq {
    /// A generation of `prompt` (not empty) sampled with `sampling`.
    pub fn generation(
        spec: SeqSpec,
        prompt: Vec<u32>,
        sampling: SamplingParams,
        stop: Vec<String>,
        max_tokens: u32,
        slot: Arc<GenerationSlot>,
        guide: Option<Guide>,
    ) -> Self {
        let banned = if sampling.ignore_eos { spec.model.tokenizer.end_ids() } else { Vec::new() };
        let logprobs = sampling.logprobs;
        let task = Task::Generate(Box::new(GenerateTask {
            logprobs,
            slot,
            sampler: Sampler::banning(sampling, banned),
            output: TextOutput::new(stop),
            n_prompt: prompt.len(),
            max_tokens,
            generated: 0,
            cached_tokens: None,
            prompt_done: None,
            last_token: None,
            guide,
        }));
        Self::new(spec, prompt, task)
    }

    /// Embeddings of `inputs` (at least one, none empty).
    pub fn embedding(spec: SeqSpec, inputs: Vec<Vec<u32>>, slot: Arc<EmbeddingSlot>) -> Self {
        let mut rest: VecDeque<Vec<u32>> = inputs.into();
        let first = rest.pop_front().unwrap_or_default();
        let d = spec.model.model.config().n_embd;
        let task = Task::Embed(EmbedTask { slot, rest, done: Vec::new(), sum: vec![0.0; d] });
        Self::new(spec, first, task)
    }

    fn new(spec: SeqSpec, tokens: Vec<u32>, task: Task) -> Self {
        Self {
            id: spec.id,
            model: spec.model,
            priority: spec.priority,
            tokens,
            kv: SeqKv::default(),
            computed: 0,
            deadline: spec.deadline,
            admitted: Instant::now(),
            started: None,
            passed_over: 0,
            task,
        }
    }

    /// Its caller is gone (handle dropped, job cancelled).
    pub fn gone(&self) -> bool {
        match &self.task {
            Task::Generate(g) => g.slot.cancelled.load(Ordering::Acquire),
            Task::Embed(e) => e.slot.gone(),
        }
    }

    pub fn timed_out(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Tokens still to run before it can sample (or finish its input).
    pub fn remaining(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// Whether its blocks take part in prefix reuse: generations share and
    /// file them; an embedding needs every position's hidden state, so it
    /// computes them all.
    pub fn reuses_prefixes(&self) -> bool {
        matches!(self.task, Task::Generate(_))
    }

    /// Prompt tokens it counts as work, out of the `ran` just run.
    pub fn prompt_share(&self, ran: usize) -> usize {
        let prompt = match &self.task {
            Task::Generate(g) => g.n_prompt,
            Task::Embed(_) => self.tokens.len(),
        };
        ran.min(prompt.saturating_sub(self.computed))
    }

    /// What it asks of the next step.
    pub fn demand(&self) -> Demand {
        Demand {
            remaining: self.remaining(),
            decoding: self.remaining() == 1 && self.computed > 0,
            passed_over: self.passed_over,
            priority: self.priority,
            admitted: self.admitted,
        }
    }

    /// What a forward pass of its tokens up to `end` hands back for it.
    pub fn output(&self, end: usize) -> Output {
        match self.task {
            Task::Embed(_) => Output::Hidden,
            Task::Generate(_) if end == self.tokens.len() => Output::LastLogits,
            Task::Generate(_) => Output::Nothing,
        }
    }

    /// Bookkeeping of its first admission: `slot` positions came from the
    /// prefix cache.
    pub fn first_admitted(&mut self, slot: usize, stats: &Stats) {
        let Task::Generate(g) = &mut self.task else { return };
        if g.cached_tokens.is_some() {
            return;
        }
        g.cached_tokens = Some(slot as u32);
        if slot > 0 {
            Stats::add(&stats.prefix_hits, 1);
            Stats::add(&stats.cached_tokens, slot as u64);
        }
        let now = Instant::now();
        self.started = Some(now);
        stats.observe(|l| l.queue_time.observe(now - self.admitted));
    }

    /// Back to the start of its tokens after its blocks were taken away.
    pub fn restart(&mut self) {
        self.computed = 0;
        self.passed_over = 0;
        if let Task::Embed(e) = &mut self.task {
            e.sum.iter_mut().for_each(|s| *s = 0.0);
        }
    }

    /// Takes its share of a step's results: the logits of its last token
    /// (to sample from) or the hidden states of the rows it ran.
    pub fn take(&mut self, rows: Option<&[f32]>, stats: &Stats) -> After {
        match &mut self.task {
            Task::Generate(g) => {
                let Some(logits) = rows else { return After::Running };
                let tok = &self.model.tokenizer;
                let mask = g.guide.as_ref().map(|gd| gd.automaton.mask(gd.state));
                let mut token = g.sampler.sample(logits, &self.tokens, mask.as_deref());
                if let Some(gd) = &g.guide {
                    let room = self.model.model.config().n_ctx.saturating_sub(self.tokens.len());
                    let left = if g.max_tokens > 0 { g.max_tokens.saturating_sub(g.generated) as usize } else { room };
                    token = gd.within_budget(token, left.min(room), tok);
                }
                let logprob = g.logprobs.map(|top| {
                    let (logprob, top) = sampler::logprobs(logits, token, usize::from(top));
                    let top = top
                        .into_iter()
                        .map(|(id, logprob)| TopLogprob { id, bytes: tok.token_bytes(id), logprob })
                        .collect();
                    TokenLogprob { id: token, bytes: tok.token_bytes(token), logprob, top }
                });
                if self.accept(token, logprob, stats) {
                    After::Running
                } else {
                    After::Ended
                }
            }
            Task::Embed(e) => {
                let d = e.sum.len();
                for row in rows.unwrap_or_default().chunks_exact(d) {
                    e.sum.iter_mut().zip(row).for_each(|(s, &h)| *s += f64::from(h));
                }
                if self.computed < self.tokens.len() {
                    return After::Running;
                }
                // The mean's direction: the sum scaled to unit length.
                let norm = e.sum.iter().map(|v| v * v).sum::<f64>().sqrt();
                let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
                let vector = e.sum.iter().map(|v| (v * scale) as f32).collect();
                e.done.push(Embedding { vector, tokens: self.tokens.len() as u32 });
                match e.rest.pop_front() {
                    Some(next) => {
                        self.tokens = next;
                        self.restart();
                        After::NextInput
                    }
                    None => {
                        e.slot.finish(Ok(std::mem::take(&mut e.done)));
                        After::Ended
                    }
                }
            }
        }
    }

    /// Takes the sampled `token` (with its log-probability when asked for);
    /// returns false once the generation is over.
    fn accept(&mut self, token: u32, logprob: Option<TokenLogprob>, stats: &Stats) -> bool {
        let Task::Generate(g) = &mut self.task else { return false };
        let now = Instant::now();
        match g.last_token {
            None => stats.observe(|l| l.time_to_first_token.observe(now - self.admitted)),
            Some(t) => stats.observe(|l| l.inter_token.observe(now - t)),
        }
        g.last_token = Some(now);
        g.prompt_done.get_or_insert(now);
        let tok = &self.model.tokenizer;
        if tok.is_end(token) {
            self.finish(FinishReason::Stop, true, stats);
            return false;
        }
        self.tokens.push(token);
        g.generated += 1;
        Stats::add(&stats.generated_tokens, 1);
        if let Some(logprob) = logprob {
            g.slot.update(|s| s.logprobs.push(logprob));
        }
        if !tok.is_control(token) {
            let (shown, stopped) = g.output.push(&tok.token_bytes(token));
            if !shown.is_empty() {
                g.slot.update(|s| s.append(&shown));
            }
            if stopped {
                self.finish(FinishReason::Stop, false, stats);
                return false;
            }
        }
        if let Some(gd) = &mut g.guide {
            match gd.automaton.advance(gd.state, tok.token_bytes_ref(token)) {
                Some(next) => gd.state = next,
                None => tracing::warn!(token, "a constrained generation took a token its grammar refuses"),
            }
            // Complete, and nothing may follow: no need to ask for the end.
            if gd.automaton.accepts(gd.state) && !gd.automaton.can_continue(gd.state) {
                self.finish(FinishReason::Stop, true, stats);
                return false;
            }
        }
        let full = self.tokens.len() >= self.model.model.config().n_ctx;
        if full || (g.max_tokens > 0 && g.generated >= g.max_tokens) {
            self.finish(FinishReason::Length, true, stats);
            return false;
        }
        true
    }

    /// Ends it for `reason`; a generation with `flush` releases the text
    /// held back for UTF-8 or stop-string matching (not after a stop
    /// string, where it is cut off). An embedding ends with an error.
    pub fn finish(&mut self, reason: FinishReason, flush: bool, stats: &Stats) {
        let now = Instant::now();
        let g = match &mut self.task {
            Task::Generate(g) => g,
            Task::Embed(e) => {
                let why = match reason {
                    FinishReason::Timeout => "the embeddings did not finish within the deadline",
                    _ => "the embeddings could not be computed",
                };
                e.slot.finish(Err(EngineError::Overloaded(why.into())));
                return;
            }
        };
        let tail = if flush { g.output.flush() } else { String::new() };
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
        let started = self.started.unwrap_or(now);
        let done = g.prompt_done.unwrap_or(now);
        let usage = Usage {
            prompt_tokens: g.n_prompt as u32,
            completion_tokens: g.generated,
            cached_tokens: g.cached_tokens.unwrap_or(0),
            queue_ms: ms(self.admitted, started),
            prompt_ms: ms(started, done),
            generation_ms: ms(done, now),
        };
        g.slot.update(|s| {
            s.append(&tail);
            s.finished.get_or_insert(Finished { reason, usage });
        });
        Stats::add(&stats.requests, 1);
        if matches!(reason, FinishReason::Cancelled | FinishReason::Timeout) {
            Stats::add(&stats.cancelled, 1);
        }
        stats.observe(|l| l.request.observe(now - self.admitted));
        if let Some(started) = self.started {
            stats.record_service(now - started);
        }
    }

    /// Ends it with `error` (the engine is shutting down).
    pub fn fail(&mut self, error: &EngineError, stats: &Stats) {
        match &self.task {
            Task::Generate(g) => {
                g.slot.update(|s| {
                    s.error.get_or_insert_with(|| error.clone());
                });
                Stats::add(&stats.requests, 1);
            }
            Task::Embed(e) => e.slot.finish(Err(error.clone())),
        }
    }

    /// Counts a generation whose caller left (an embedding is not counted).
    pub fn count_gone(&self, stats: &Stats) {
        if let Task::Generate(_) = self.task {
            Stats::add(&stats.cancelled, 1);
            Stats::add(&stats.requests, 1);
        }
    }
}

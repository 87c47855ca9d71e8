//! The scheduler driven step by step against a fake compute backend: no
//! model file, no threads, and every forward pass it asks for on record.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::gguf::{GgmlType, GgufFile, Value};
use crate::handle::{EmbeddingSlot, Event, FinishReason, Generation, GenerationSlot, PendingEmbeddings};
use crate::kv::BLOCK_TOKENS;
use crate::loaded::{LoadedModel, ModelInfo};
use crate::model::{Activation, BatchItem, ComputeBackend, Forward, Model, ModelConfig, Output, WeightsSummary};
use crate::request::Priority;
use crate::sampler::SamplingParams;
use crate::scheduler::{Limits, Mailbox, Scheduler, Seq, SeqSpec};
use crate::tokenizer::{gpt2_byte_to_char, Tokenizer};

const VOCAB: usize = 258;
const BOS: u32 = 256;
const END: u32 = 257;
const WIDTH: usize = 4;

/// One item of one forward pass: (first position, tokens, what it wanted).
type Call = (usize, Vec<u32>, Output);

/// A backend that predicts the next letter of the alphabet after a letter
/// (`a` after anything else), and whose hidden state of a row is
/// `[pos + 1, token, 0, 0]`.
struct Fake {
    config: ModelConfig,
    blocks: usize,
    calls: Arc<Mutex<Vec<Vec<Call>>>>,
}

impl ComputeBackend for Fake {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn device(&self) -> String {
        "fake".into()
    }

    fn kv_blocks(&self) -> usize {
        self.blocks
    }

    fn forward(&self, items: &[BatchItem]) -> Forward {
        let mut out = Forward::default();
        for it in items {
            assert!(it.blocks.len() * BLOCK_TOKENS >= it.pos + it.tokens.len(), "no KV room");
            assert!(it.blocks.iter().all(|&b| (b as usize) < self.blocks), "block out of range");
            let rows = it.tokens.iter().enumerate().map(|(i, &t)| (it.pos + i, t));
            match it.output {
                Output::Nothing => {}
                Output::LastLogits => out.logits.extend(next_letter_logits(*it.tokens.last().unwrap())),
                Output::AllLogits => rows.for_each(|(_, t)| out.logits.extend(next_letter_logits(t))),
                Output::Hidden => rows.for_each(|(p, t)| out.hidden.extend([p as f32 + 1.0, t as f32, 0.0, 0.0])),
            }
        }
        let call = items.iter().map(|it| (it.pos, it.tokens.to_vec(), it.output)).collect();
        self.calls.lock().unwrap_or_else(PoisonError::into_inner).push(call);
        out
    }
}

fn next_letter_logits(token: u32) -> Vec<f32> {
    let next = if (u32::from(b'a')..u32::from(b'z')).contains(&token) { token + 1 } else { u32::from(b'a') };
    let mut row = vec![0.0; VOCAB];
    row[next as usize] = 1.0;
    row
}

/// A byte-level vocabulary: one token per byte, then BOS and END.
fn tokenizer() -> Tokenizer {
    let mut tokens: Vec<Value> = (0..=255u8).map(|b| Value::String(gpt2_byte_to_char(b).to_string())).collect();
    tokens.push(Value::String("<|begin_of_text|>".into()));
    tokens.push(Value::String("<|end_of_text|>".into()));
    let mut types = vec![Value::I32(1); 256];
    types.extend([Value::I32(3), Value::I32(3)]);
    let mut m = BTreeMap::new();
    m.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    m.insert("tokenizer.ggml.tokens".into(), Value::Array(tokens));
    m.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
    m.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(BOS));
    m.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(END));
    Tokenizer::from_gguf(&GgufFile::from_metadata(m)).expect("test vocabulary")
}

struct Bench {
    model: Arc<LoadedModel>,
    calls: Arc<Mutex<Vec<Vec<Call>>>>,
    mailbox: Arc<Mailbox>,
    scheduler: Scheduler,
    next_id: u64,
}

impl Bench {
    fn new(blocks: usize, limits: Limits) -> Self {
        let config = ModelConfig {
            architecture: "fake".into(),
            n_vocab: VOCAB,
            n_embd: WIDTH,
            n_layer: 1,
            n_head: 1,
            n_head_kv: 1,
            head_dim: WIDTH,
            n_ff: WIDTH,
            n_ctx: 256,
            rope_dim: WIDTH,
            rope_theta: 10_000.0,
            rms_eps: 1e-5,
            activation: Activation::Relu2,
        };
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fake = Fake { config, blocks, calls: calls.clone() };
        let summary =
            WeightsSummary { parameter_count: 0, ternary_type: GgmlType::TQ2_0, weight_bytes: 0, bytes_per_token: 0 };
        let info = ModelInfo {
            id: "fake".into(),
            architecture: "fake".into(),
            parameter_count: 0,
            context_length: 256,
            quantization: "TQ2_0".into(),
            size_bytes: 0,
            modified_at: 0,
            device: "fake".into(),
            device_memory_bytes: 0,
        };
        let model = Arc::new(LoadedModel::new(info, Model::on(Box::new(fake), summary), tokenizer()));
        let mailbox = Arc::new(Mailbox::default());
        let scheduler = Scheduler::new(Arc::downgrade(&mailbox), limits);
        Self { model, calls, mailbox, scheduler, next_id: 1 }
    }

    fn spec(&mut self, deadline: Option<Instant>) -> SeqSpec {
        self.next_id += 1;
        SeqSpec { id: self.next_id, model: self.model.clone(), priority: Priority::Interactive, deadline }
    }

    /// Queues a greedy generation of up to `max_tokens` after `prompt`.
    fn generate(&mut self, prompt: &str, max_tokens: u32) -> Generation {
        self.generate_until(prompt, max_tokens, None)
    }

    fn generate_until(&mut self, prompt: &str, max_tokens: u32, deadline: Option<Instant>) -> Generation {
        self.queue_generation(prompt, max_tokens, deadline, Priority::Interactive)
    }

    /// Queues a greedy batch-priority generation.
    fn generate_batch(&mut self, prompt: &str, max_tokens: u32) -> Generation {
        self.queue_generation(prompt, max_tokens, None, Priority::Batch)
    }

    fn queue_generation(
        &mut self,
        prompt: &str,
        max_tokens: u32,
        deadline: Option<Instant>,
        priority: Priority,
    ) -> Generation {
        let tokens: Vec<u32> = prompt.bytes().map(u32::from).collect();
        let slot = Arc::new(GenerationSlot::default());
        let sampling = SamplingParams { temperature: 0.0, ..SamplingParams::default() };
        let n = tokens.len() as u32;
        let spec = SeqSpec { priority, ..self.spec(deadline) };
        self.mailbox.queue().push_back(Seq::generation(spec, tokens, sampling, vec![], max_tokens, slot.clone(), None));
        Generation::new(slot, n)
    }

    /// Queues the embeddings of `inputs`.
    fn embed(&mut self, inputs: &[&str]) -> PendingEmbeddings {
        let ids = inputs.iter().map(|s| s.bytes().map(u32::from).collect()).collect();
        let slot = Arc::new(EmbeddingSlot::default());
        let spec = self.spec(None);
        self.mailbox.queue().push_back(Seq::embedding(spec, ids, slot.clone()));
        PendingEmbeddings(slot)
    }

    /// Runs one scheduler turn (admission and a step) and returns the
    /// forward passes it asked for.
    fn turn(&mut self) -> Vec<Vec<Call>> {
        self.scheduler.turn(&self.mailbox);
        std::mem::take(&mut *self.calls.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs turns until nothing is left to do.
    fn drain(&mut self) -> Vec<Vec<Call>> {
        let mut all = Vec::new();
        for _ in 0..1000 {
            if self.scheduler.running.is_empty() && self.mailbox.queue().is_empty() {
                return all;
            }
            all.extend(self.turn());
        }
        panic!("the scheduler never went idle");
    }

    fn used_blocks(&self) -> u32 {
        self.model.model.blocks().usage().used
    }
}

fn limits(max_running: usize, step_tokens: usize, prefill_chunk: usize) -> Limits {
    Limits { max_running, step_tokens, prefill_chunk }
}

/// A finished generation's text and finish reason.
fn result(g: &Generation) -> (String, FinishReason) {
    let mut text = String::new();
    loop {
        match g.next().expect("no error") {
            Event::Text(t) => text.push_str(&t),
            Event::Logprobs(_) => {}
            Event::Finished(f) => return (text, f.reason),
            Event::Pending => panic!("the generation has not finished"),
        }
    }
}

/// The error a generation ended with, after whatever text it had.
fn error_of(g: &Generation) -> crate::error::EngineError {
    loop {
        match g.next() {
            Ok(Event::Text(_)) => {}
            Ok(other) => panic!("expected an error, got {other:?}"),
            Err(e) => return e,
        }
    }
}

/// (first position, token count, output) of each item of a pass.
fn shape(pass: &[Call]) -> Vec<(usize, usize, Output)> {
    pass.iter().map(|(pos, tokens, output)| (*pos, tokens.len(), *output)).collect()
}

#[test]
fn a_short_prompt_runs_whole_while_a_long_one_waits_then_goes_in_chunks() {
    let mut b = Bench::new(64, limits(16, 64, 16));
    let long = b.generate(&"x".repeat(100), 2);
    let short = b.generate("hello", 3);
    let first = b.turn();
    // The short prompt ends in this step, so the long one is held back.
    assert_eq!(first.len(), 1);
    assert_eq!(shape(&first[0]), vec![(0, 5, Output::LastLogits)]);
    let second = b.turn();
    assert_eq!(shape(&second[0]), vec![(0, 16, Output::Nothing), (5, 1, Output::LastLogits)]);
    b.drain();
    assert_eq!(result(&short), ("pqr".into(), FinishReason::Length), "after o comes p");
    assert_eq!(result(&long), ("yz".into(), FinishReason::Length));
    assert_eq!(b.used_blocks(), 0, "every block went back");
}

#[test]
fn a_sequence_waits_for_a_running_slot() {
    let mut b = Bench::new(64, limits(1, 64, 16));
    let first = b.generate("abc", 2);
    let second = b.generate("xyz", 2);
    let passes = b.turn();
    assert_eq!(shape(&passes[0]), vec![(0, 3, Output::LastLogits)]);
    assert_eq!(b.mailbox.stats.waiting.load(std::sync::atomic::Ordering::Relaxed), 1);
    b.drain();
    assert_eq!(result(&first).0, "de");
    assert_eq!(result(&second).0, "ab", "z wraps to a");
}

#[test]
fn running_batch_work_makes_way_for_an_interactive_sequence_then_finishes_the_same() {
    let alone = {
        let mut b = Bench::new(64, limits(1, 64, 16));
        let g = b.generate_batch("abc", 30);
        b.drain();
        result(&g)
    };
    let mut b = Bench::new(64, limits(1, 64, 16));
    let batch = b.generate_batch("abc", 30);
    for _ in 0..5 {
        b.turn();
    }
    let interactive = b.generate("xyz", 2);
    let passes = b.turn();
    assert_eq!(shape(&passes[0]), vec![(0, 3, Output::LastLogits)], "only the interactive prompt runs");
    assert_eq!(b.mailbox.stats.preempted.load(std::sync::atomic::Ordering::Relaxed), 1);
    b.drain();
    assert_eq!(result(&interactive).0, "ab");
    assert_eq!(result(&batch), alone, "resumed after the interactive work, the same tokens");
    assert_eq!(b.used_blocks(), 0);
}

#[test]
fn interactive_work_never_preempts_interactive_work() {
    let mut b = Bench::new(64, limits(1, 64, 16));
    let first = b.generate("abc", 10);
    b.turn();
    let second = b.generate("xyz", 2);
    let passes = b.turn();
    assert_eq!(shape(&passes[0]), vec![(3, 1, Output::LastLogits)], "the first keeps decoding, alone");
    b.drain();
    assert_eq!(b.mailbox.stats.preempted.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(result(&first).0.len(), 10);
    assert_eq!(result(&second).0, "ab");
}

#[test]
fn a_later_prompt_starting_the_same_way_reuses_the_filed_blocks() {
    let mut b = Bench::new(64, limits(16, 64, 64));
    let prompt = "q".repeat(40);
    let a = b.generate(&prompt, 1);
    b.drain();
    assert_eq!(result(&a).0, "r");
    let later = format!("{}{}", &prompt[..33], "mmmmm");
    let g = b.generate(&later, 1);
    let passes = b.drain();
    // Two whole blocks (32 positions) came from the cache.
    assert_eq!(shape(&passes[0]), vec![(32, later.len() - 32, Output::LastLogits)]);
    assert_eq!(result(&g).0, "n");
    let stats = &b.mailbox.stats;
    assert_eq!(stats.prefix_hits.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats.cached_tokens.load(std::sync::atomic::Ordering::Relaxed), 32);
}

#[test]
fn a_short_pool_preempts_the_newest_sequence_which_then_finishes_the_same() {
    let alone = {
        let mut b = Bench::new(64, limits(16, 64, 16));
        let g = b.generate(&"c".repeat(20), 40);
        b.drain();
        result(&g)
    };
    // Six blocks: both 20-token prompts are admitted (two blocks each), but
    // both cannot grow to 60 positions.
    let mut b = Bench::new(6, limits(16, 64, 16));
    let first = b.generate(&"c".repeat(20), 40);
    let second = b.generate(&"c".repeat(20), 40);
    let passes = b.turn();
    assert_eq!(shape(&passes[0]).len(), 2, "both run at first");
    b.drain();
    let preempted = b.mailbox.stats.preempted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(preempted >= 1, "the pool ran short");
    assert_eq!(result(&first), alone);
    assert_eq!(result(&second), alone, "recomputed after preemption, the same tokens");
    assert_eq!(b.used_blocks(), 0);
}

#[test]
fn embeddings_run_in_prompt_chunks_and_give_each_input_its_unit_mean() {
    let mut b = Bench::new(64, limits(16, 16, 16));
    let pending = b.embed(&[&"e".repeat(40), "hi"]);
    let passes = b.drain();
    let shapes: Vec<_> = passes.iter().map(|p| shape(p)).collect();
    assert_eq!(
        shapes,
        vec![
            vec![(0, 16, Output::Hidden)],
            vec![(16, 16, Output::Hidden)],
            vec![(32, 8, Output::Hidden)],
            vec![(0, 2, Output::Hidden)],
        ],
        "one input after another, the long one in chunks"
    );
    let got = pending.wait().expect("embeddings");
    let unit = |sum: [f64; 2]| {
        let scale = 1.0 / (sum[0] * sum[0] + sum[1] * sum[1]).sqrt();
        vec![(sum[0] * scale) as f32, (sum[1] * scale) as f32, 0.0, 0.0]
    };
    // Σ (pos + 1) and Σ token over each input's rows.
    assert_eq!(got[0].vector, unit([(1..=40).sum::<u32>() as f64, 40.0 * f64::from(b'e')]));
    assert_eq!(got[0].tokens, 40);
    assert_eq!(got[1].vector, unit([3.0, f64::from(b'h') + f64::from(b'i')]));
    assert_eq!(b.used_blocks(), 0);
}

#[test]
fn embeddings_share_a_step_with_decoding_generations() {
    let mut b = Bench::new(64, limits(16, 64, 16));
    let g = b.generate("abc", 3);
    b.turn();
    let pending = b.embed(&["hello"]);
    let passes = b.turn();
    assert_eq!(shape(&passes[0]), vec![(3, 1, Output::LastLogits), (0, 5, Output::Hidden)]);
    b.drain();
    assert_eq!(pending.wait().unwrap().len(), 1);
    assert_eq!(result(&g).0, "def");
}

#[test]
fn a_dropped_generation_leaves_at_the_next_step_and_frees_its_blocks() {
    let mut b = Bench::new(64, limits(16, 64, 16));
    let g = b.generate("abc", 100);
    b.turn();
    assert!(b.used_blocks() > 0);
    drop(g);
    let passes = b.turn();
    assert!(passes.is_empty(), "nothing left to run");
    assert_eq!(b.used_blocks(), 0);
    assert_eq!(b.mailbox.stats.cancelled.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn a_dropped_embedding_request_stops_between_inputs() {
    let mut b = Bench::new(64, limits(16, 64, 16));
    let pending = b.embed(&["one", "two", "three"]);
    b.turn();
    drop(pending);
    let passes = b.drain();
    assert!(passes.is_empty(), "no input ran after the caller left");
    assert_eq!(b.used_blocks(), 0);
}

#[test]
fn a_passed_deadline_ends_a_generation_with_timeout() {
    let mut b = Bench::new(64, limits(16, 64, 16));
    let g = b.generate_until("abc", 100, Some(Instant::now() + Duration::from_millis(30)));
    b.turn();
    std::thread::sleep(Duration::from_millis(40));
    b.drain();
    assert_eq!(result(&g).1, FinishReason::Timeout);
    assert_eq!(b.used_blocks(), 0);
}

#[test]
fn closing_the_queue_fails_running_and_waiting_work_alike() {
    let mut b = Bench::new(64, limits(1, 64, 16));
    let running = b.generate("abc", 100);
    b.turn();
    let waiting = b.generate("xyz", 100);
    let pending = b.embed(&["hi"]);
    let error = crate::error::EngineError::Overloaded("shutting down".into());
    b.mailbox.queue().closed = Some(error.clone());
    b.scheduler.turn(&b.mailbox);
    assert_eq!(error_of(&running), error);
    assert_eq!(error_of(&waiting), error);
    assert_eq!(pending.wait(), Err(error));
    assert_eq!(b.used_blocks(), 0);
}

//! The engine: loaded models, admission, and the thread that runs them.
//!
//! 1. [`Engine::start`] returns at once and loads the models on a thread of
//!    its own, so the server can answer `/health` with "loading" meanwhile.
//! 2. [`Engine::generate`] tokenizes and validates on the caller's thread
//!    (cheap), then hands the sequence to the scheduler thread and returns a
//!    [`Generation`] handle; [`Engine::embed`] does the same for an
//!    embedding request and waits for its vectors.
//! 3. The scheduler thread ([`crate::scheduler`]) runs every admitted
//!    sequence in one batched forward pass per step, with KV blocks from
//!    each model's pool and prefix reuse; it drops a sequence within one
//!    step of its handle being dropped or its deadline passing. Where
//!    there are no threads, [`Engine::inline`] leaves the turns to its
//!    callers ([`Engine::turn`]).
//! 4. A [`Generation`] is read without blocking ([`Generation::next`]) and
//!    waited on either from async code ([`Generation::ready`]) or a plain
//!    thread ([`Generation::wait`]).
//! 5. Detached jobs ([`Engine::submit_job`]) are generations the engine
//!    itself holds ([`crate::jobs`]), so they outlive the request that
//!    started them; their state is read by id until they expire.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::error::EngineError;
use crate::handle::{Embedding, EmbeddingSlot, Generation, GenerationSlot, PendingEmbeddings};
use crate::jobs::{JobInfo, Jobs, NewJob};
use crate::kv::KvUsage;
use crate::loaded::{LoadedModel, ModelInfo};
use crate::model::{Device, LoadOptions};
use crate::request::{check_stops, GenerateRequest, Message, Priority, Prompt};
use crate::sampler::SamplingParams;
use crate::scheduler::{Guide, Limits, Mailbox, Scheduler, Seq, SeqSpec};
use crate::stats::{EngineStatus, Stats};
use crate::tokenizer::ChatMessage;

/// How the engine is set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// GGUF model files to serve; each is known by its file stem.
    pub models: Vec<PathBuf>,
    /// A HF `tokenizer.json` to use instead of the one in the GGUF.
    pub tokenizer: Option<PathBuf>,
    /// Sequences decoded together; more wait in the queue.
    pub max_running: usize,
    /// Sequences that may wait; more are refused as overloaded.
    pub max_queue: usize,
    /// Deadline of a generation that names none.
    pub default_timeout: Option<Duration>,
    /// Convert dense output heads to Q8_0 at load ([`LoadOptions::q8_0_head`]).
    pub q8_0_head: bool,
    /// Bytes of KV cache per model (at least one full context is kept).
    pub kv_memory: usize,
    /// Touch the KV cache's pages at load ([`LoadOptions::kv_prefault`]).
    pub kv_prefault: bool,
    /// The compute backend every model loads onto ([`LoadOptions::device`]).
    pub device: Device,
    /// Tokens one scheduler step runs: every decoding sequence's next token
    /// plus prompt chunks.
    pub step_tokens: usize,
    /// Most prompt tokens per step of a prompt that cannot finish within
    /// the step (one that fits the step's rest runs whole).
    pub prefill_chunk: usize,
    /// How long a finished job's result is kept.
    pub job_ttl: Duration,
    /// More names of the first model (llama-server's `--alias`): listed
    /// among the models and accepted in requests.
    pub aliases: Vec<String>,
    /// With one model served, any unknown name means it (as llama-server
    /// does); otherwise an unknown name is refused.
    pub accept_any_model: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            models: Vec::new(),
            tokenizer: None,
            max_running: 16,
            max_queue: 64,
            default_timeout: None,
            q8_0_head: false,
            kv_memory: 2 << 30,
            kv_prefault: false,
            device: Device::Cpu,
            step_tokens: 64,
            prefill_chunk: 16,
            job_ttl: Duration::from_secs(600),
            aliases: Vec::new(),
            accept_any_model: false,
        }
    }
}

struct Inner {
    config: EngineConfig,
    models: RwLock<Vec<Arc<LoadedModel>>>,
    ready: AtomicBool,
    load_error: Mutex<Option<String>>,
    mailbox: Arc<Mailbox>,
    jobs: Jobs,
    seed_counter: AtomicU64,
    seq_counter: AtomicU64,
    /// The scheduler of an engine its callers run ([`Engine::inline`]);
    /// `None` when it runs on a thread of its own.
    inline: Option<Mutex<Scheduler>>,
}

/// Who runs the scheduler.
enum Driver {
    /// A thread of the engine's own.
    Thread,
    /// The callers, one turn at a time ([`Engine::turn`]).
    Callers,
}

/// The inference engine. Cheap to clone; all clones share one scheduler.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl Engine {
    /// Starts loading `config.models` in the background and returns at once.
    pub fn start(config: EngineConfig) -> Self {
        let engine = Self::empty(config, Driver::Thread);
        let inner = engine.inner.clone();
        std::thread::Builder::new()
            .name("tern-load".into())
            .spawn(move || {
                let started = Instant::now();
                match load_all(&inner.config) {
                    Ok(models) => {
                        for m in &models {
                            tracing::info!(model = %m.info.id, architecture = %m.info.architecture,
                                quantization = %m.info.quantization, parameters = m.info.parameter_count,
                                context = m.info.context_length, "model loaded");
                        }
                        *inner.models.write().unwrap_or_else(PoisonError::into_inner) = models;
                        inner.ready.store(true, Ordering::Release);
                        tracing::info!(ms = started.elapsed().as_millis() as u64, "engine ready");
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "model loading failed");
                        *inner.load_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
                    }
                }
            })
            .expect("spawning the loader thread");
        engine
    }

    /// Loads `config.models` before returning.
    pub fn load(config: EngineConfig) -> Result<Self, EngineError> {
        let models = load_all(&config).map_err(EngineError::Internal)?;
        Ok(Self::with_models(config, models, Driver::Thread))
    }

    /// An engine over models already loaded (`config.models` is not read)
    /// that starts no thread: nothing runs until a caller calls
    /// [`Engine::turn`]. For targets without threads, such as the local
    /// adapter on wasm32; [`Engine::embed`] turns it itself.
    pub fn inline(config: EngineConfig, models: Vec<LoadedModel>) -> Result<Self, EngineError> {
        let models: Vec<Arc<LoadedModel>> = models.into_iter().map(Arc::new).collect();
        check_aliases(&config, &models).map_err(EngineError::InvalidRequest)?;
        Ok(Self::with_models(config, models, Driver::Callers))
    }

    /// Runs one scheduler turn (admission and one batched step) on the
    /// caller's thread, for an [`Engine::inline`] engine; returns whether
    /// there was work. An engine with a scheduler thread returns false.
    pub fn turn(&self) -> bool {
        let Some(scheduler) = &self.inner.inline else { return false };
        scheduler.lock().unwrap_or_else(PoisonError::into_inner).turn(&self.inner.mailbox)
    }

    fn with_models(config: EngineConfig, models: Vec<Arc<LoadedModel>>, driver: Driver) -> Self {
        let engine = Self::empty(config, driver);
        *engine.inner.models.write().unwrap_or_else(PoisonError::into_inner) = models;
        engine.inner.ready.store(true, Ordering::Release);
        engine
    }

    fn empty(config: EngineConfig, driver: Driver) -> Self {
        let mailbox = Arc::new(Mailbox::default());
        let limits = Limits {
            max_running: config.max_running,
            step_tokens: config.step_tokens,
            prefill_chunk: config.prefill_chunk,
        };
        let scheduler = Scheduler::new(Arc::downgrade(&mailbox), limits);
        let inline = match driver {
            Driver::Callers => Some(Mutex::new(scheduler)),
            Driver::Thread => {
                std::thread::Builder::new()
                    .name("tern-scheduler".into())
                    .spawn(move || scheduler.run())
                    .expect("spawning the scheduler thread");
                None
            }
        };
        let inner = Arc::new(Inner {
            jobs: Jobs::new(config.job_ttl),
            config,
            models: RwLock::new(Vec::new()),
            ready: AtomicBool::new(false),
            load_error: Mutex::new(None),
            mailbox,
            seed_counter: AtomicU64::new(0),
            seq_counter: AtomicU64::new(1),
            inline,
        });
        Self { inner }
    }

    /// Waits until the models are loaded (or loading failed).
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), EngineError> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status();
            if s.ready {
                return Ok(());
            }
            if let Some(e) = s.load_error {
                return Err(EngineError::Internal(e));
            }
            if Instant::now() > deadline {
                return Err(EngineError::Overloaded("the model is still loading".into()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The models served.
    pub fn models(&self) -> Vec<ModelInfo> {
        let loaded = self.loaded();
        let aliases = loaded.first().into_iter().flat_map(|first| {
            self.inner.config.aliases.iter().map(|alias| ModelInfo { id: alias.clone(), ..first.info.clone() })
        });
        loaded.iter().map(|m| m.info.clone()).chain(aliases).collect()
    }

    /// A loaded model by id.
    pub fn model(&self, id: &str) -> Result<Arc<LoadedModel>, EngineError> {
        if !self.inner.ready.load(Ordering::Acquire) {
            return Err(EngineError::Overloaded("the model is still loading".into()));
        }
        let loaded = self.loaded();
        if let Some(m) = loaded.iter().find(|m| m.info.id == id) {
            return Ok(m.clone());
        }
        let config = &self.inner.config;
        let first_by_name = config.aliases.iter().any(|a| a == id) || (config.accept_any_model && loaded.len() == 1);
        match loaded.first() {
            Some(first) if first_by_name => Ok(first.clone()),
            _ => Err(EngineError::UnknownModel(id.to_string())),
        }
    }

    fn loaded(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<LoadedModel>>> {
        self.inner.models.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Readiness and load.
    pub fn status(&self) -> EngineStatus {
        let kv = self.loaded().iter().map(|m| m.model.blocks().usage()).fold(KvUsage::default(), |a, u| KvUsage {
            total: a.total + u.total,
            used: a.used + u.used,
            cached: a.cached + u.cached,
        });
        EngineStatus {
            ready: self.inner.ready.load(Ordering::Acquire),
            load_error: self.inner.load_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            ..self.inner.mailbox.stats.snapshot(kv, self.inner.config.max_queue as u32)
        }
    }

    /// Token ids of plain text (no BOS).
    pub fn tokenize(&self, model: &str, text: &str) -> Result<Vec<u32>, EngineError> {
        Ok(self.model(model)?.tokenizer.encode_text(text))
    }

    /// Text of token ids.
    pub fn detokenize(&self, model: &str, tokens: &[u32]) -> Result<String, EngineError> {
        let m = self.model(model)?;
        check_ids(&m, tokens)?;
        Ok(m.tokenizer.decode(tokens))
    }

    /// A conversation rendered with the model's template, with the assistant's turn prompt.
    pub fn render_chat(&self, model: &str, messages: &[Message]) -> Result<String, EngineError> {
        let m = self.model(model)?;
        m.tokenizer.render_chat(&chat_messages(messages), true).map_err(|e| EngineError::InvalidRequest(e.to_string()))
    }

    /// Embeddings of `inputs`: the mean of each input's output-normed final
    /// hidden states (BOS included when the model asks for one), scaled to
    /// unit length. The inputs run one after another as one sequence of the
    /// scheduler, batched with other work, under the engine's deadline;
    /// this call blocks until the last one is done.
    pub fn embed(&self, model: &str, inputs: &[String]) -> Result<Vec<Embedding>, EngineError> {
        let m = self.model(model)?;
        let context = m.model.config().n_ctx;
        let mut ids = Vec::with_capacity(inputs.len());
        for (i, text) in inputs.iter().enumerate() {
            if text.is_empty() {
                return Err(EngineError::InvalidRequest(format!("input {i} is empty")));
            }
            let tokens = with_bos(&m, m.tokenizer.encode_text(text));
            if tokens.len() > context {
                return Err(EngineError::InvalidRequest(format!(
                    "input {i} has {} tokens, more than the context of {context}",
                    tokens.len()
                )));
            }
            ids.push(tokens);
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let slot = Arc::new(EmbeddingSlot::default());
        let pending = PendingEmbeddings(slot.clone());
        let spec = self.spec(m, Priority::Interactive, None);
        self.enqueue(Seq::embedding(spec, ids, slot))?;
        if self.inner.inline.is_none() {
            return pending.wait();
        }
        while self.turn() {
            if let Some(result) = pending.take() {
                return result;
            }
        }
        pending.take().unwrap_or_else(|| Err(EngineError::Internal("the scheduler went idle before embedding".into())))
    }

    /// Validates a request and queues its generation.
    pub fn generate(&self, req: GenerateRequest) -> Result<Generation, EngineError> {
        let (slot, _, prompt_tokens) = self.start_generation(req)?;
        Ok(Generation::new(slot, prompt_tokens))
    }

    /// Queues a generation the engine holds itself; returns its job id.
    /// `owner` is kept with it for the caller to check (see [`JobInfo`]).
    pub fn submit_job(&self, req: GenerateRequest, owner: Option<String>) -> Result<String, EngineError> {
        let model = req.model.clone();
        let (slot, seq, prompt_tokens) = self.start_generation(req)?;
        // 64 bits beside the sequence number: replicas sharing a job table
        // (over Redis) must not hand out the same id.
        let id = format!("job-{seq:x}{:016x}", fresh_seed(&self.inner.seed_counter));
        self.inner.jobs.insert(id.clone(), NewJob { model, owner, seq, slot, prompt_tokens });
        Ok(id)
    }

    /// A job's state and text; `None` if the id is unknown or expired.
    pub fn job_status(&self, id: &str) -> Option<JobInfo> {
        self.inner.jobs.info(id, &|seq| self.place(seq))
    }

    /// Cancels a job that has not finished; returns its state after.
    pub fn cancel_job(&self, id: &str) -> Option<JobInfo> {
        let info = self.inner.jobs.cancel(id, &|seq| self.place(seq));
        self.inner.mailbox.wake.notify_all();
        info
    }

    /// Where a queued sequence waits: its place and the time until it
    /// starts, the slots ahead of it turning over once per average
    /// generation time; `None` once it runs.
    fn place(&self, seq: u64) -> Option<(u32, Duration)> {
        let position = self.inner.mailbox.queue().position(seq)?;
        let service = Duration::from_micros(self.inner.mailbox.stats.service_us.load(Ordering::Relaxed));
        let rounds = (position / self.inner.config.max_running.max(1) + 1) as u32;
        Some((position as u32, service * rounds))
    }

    /// Validates a request and puts its sequence in the queue; returns its
    /// slot, sequence id and prompt length.
    fn start_generation(&self, req: GenerateRequest) -> Result<(Arc<GenerationSlot>, u64, u32), EngineError> {
        let m = self.model(&req.model)?;
        req.sampling.validate().map_err(EngineError::InvalidRequest)?;
        check_stops(&req.stop).map_err(EngineError::InvalidRequest)?;
        let guide = match &req.sampling.constraint {
            None => None,
            Some(c) => Some(Guide::new(m.automaton(c).map_err(|e| EngineError::InvalidRequest(e.0))?)),
        };
        let prompt = match &req.prompt {
            Prompt::Text(text) => with_bos(&m, m.tokenizer.encode_text(text)),
            Prompt::Chat(messages) => {
                if messages.is_empty() {
                    return Err(EngineError::InvalidRequest("messages must not be empty".into()));
                }
                m.tokenizer
                    .encode_chat(&chat_messages(messages), true)
                    .map_err(|e| EngineError::InvalidRequest(e.to_string()))?
            }
            Prompt::Tokens(ids) => {
                check_ids(&m, ids)?;
                ids.clone()
            }
        };
        if prompt.is_empty() {
            return Err(EngineError::InvalidRequest("the prompt is empty".into()));
        }
        let n_ctx = m.model.config().n_ctx;
        if prompt.len() >= n_ctx {
            return Err(EngineError::ContextOverflow {
                prompt_tokens: prompt.len() as u32,
                context_length: n_ctx as u32,
            });
        }
        let seed = req.seed.unwrap_or_else(|| fresh_seed(&self.inner.seed_counter));
        let slot = Arc::new(GenerationSlot::default());
        let prompt_tokens = prompt.len() as u32;
        let spec = self.spec(m, req.priority, req.timeout);
        let id = spec.id;
        let sampling = SamplingParams { seed, ..req.sampling };
        self.enqueue(Seq::generation(spec, prompt, sampling, req.stop, req.max_tokens, slot.clone(), guide))?;
        Ok((slot, id, prompt_tokens))
    }

    /// A fresh sequence of `model`, under `timeout` or the engine's default.
    fn spec(&self, model: Arc<LoadedModel>, priority: Priority, timeout: Option<Duration>) -> SeqSpec {
        let timeout = timeout.or(self.inner.config.default_timeout);
        SeqSpec {
            id: self.inner.seq_counter.fetch_add(1, Ordering::Relaxed),
            model,
            priority,
            deadline: timeout.map(|t| Instant::now() + t),
        }
    }

    /// Puts `seq` in the queue, unless the queue is full or closed.
    fn enqueue(&self, seq: Seq) -> Result<(), EngineError> {
        let mailbox = &self.inner.mailbox;
        let mut queue = mailbox.queue();
        if let Some(e) = &queue.closed {
            return Err(e.clone());
        }
        // Each priority has its own `max_queue` places, so queued batch work
        // never refuses an interactive request. A free running slot is a
        // place too: a sequence waits in the queue until the scheduler's
        // next turn admits it.
        let running = mailbox.stats.running.load(Ordering::Relaxed) as usize;
        let free_slots = self.inner.config.max_running.max(1).saturating_sub(running);
        if queue.lane_len(seq.priority) >= self.inner.config.max_queue + free_slots {
            Stats::add(&mailbox.stats.rejected, 1);
            return Err(EngineError::Overloaded(format!(
                "{} requests are already waiting; try again shortly",
                self.inner.config.max_queue
            )));
        }
        queue.push_back(seq);
        mailbox.stats.waiting.store(queue.len() as u32, Ordering::Relaxed);
        drop(queue);
        mailbox.wake.notify_all();
        Ok(())
    }

    /// Ends every running and queued generation with `error` (within one
    /// step) and refuses new ones with it: for shutting down once the
    /// grace period is over, so that each client gets a final error rather
    /// than a cut connection.
    pub fn abort_all(&self, error: EngineError) {
        let mailbox = &self.inner.mailbox;
        mailbox.queue().closed = Some(error);
        mailbox.wake.notify_all();
    }
}

fn load_all(config: &EngineConfig) -> Result<Vec<Arc<LoadedModel>>, String> {
    if config.models.is_empty() {
        return Err("no model file given".into());
    }
    let options = LoadOptions {
        q8_0_head: config.q8_0_head,
        kv_memory: config.kv_memory,
        kv_prefault: config.kv_prefault,
        device: config.device,
        ..LoadOptions::default()
    };
    let models: Vec<Arc<LoadedModel>> = config
        .models
        .iter()
        .map(|p| LoadedModel::load(p, config.tokenizer.as_deref(), &options).map(Arc::new))
        .collect::<Result<_, _>>()?;
    check_aliases(config, &models)?;
    Ok(models)
}

/// Refuses aliases that are empty, unprintable or a model's own name.
fn check_aliases(config: &EngineConfig, models: &[Arc<LoadedModel>]) -> Result<(), String> {
    for alias in &config.aliases {
        if alias.trim().is_empty() || alias.chars().any(char::is_control) {
            return Err(format!("the model alias {alias:?} is empty or has control characters"));
        }
        if models.iter().any(|m| &m.info.id == alias) {
            return Err(format!("the model alias {alias:?} is already a model's name"));
        }
    }
    Ok(())
}

/// `ids` after the model's BOS token, when the model asks for one.
fn with_bos(m: &LoadedModel, ids: Vec<u32>) -> Vec<u32> {
    match m.tokenizer.bos().filter(|_| m.tokenizer.add_bos()) {
        Some(bos) => std::iter::once(bos).chain(ids).collect(),
        None => ids,
    }
}

fn check_ids(m: &LoadedModel, ids: &[u32]) -> Result<(), EngineError> {
    let vocab = m.model.config().n_vocab;
    match ids.iter().find(|&&t| t as usize >= vocab) {
        Some(t) => Err(EngineError::InvalidRequest(format!("token id {t} is outside the vocabulary of {vocab}"))),
        None => Ok(()),
    }
}

fn chat_messages(messages: &[Message]) -> Vec<ChatMessage<'_>> {
    messages.iter().map(|m| ChatMessage { role: &m.role, content: &m.content }).collect()
}

fn fresh_seed(counter: &AtomicU64) -> u64 {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ counter.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}
